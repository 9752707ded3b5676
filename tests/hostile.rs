//! Inputs and situations a hostile world brings (the reliability probe's
//! findings): readers that go away, times the store cannot hold.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::root;

/// Runs roadrep with stdout closed before it writes; returns its status
/// and stderr.
fn with_closed_stdout(
    args: &[&str],
    cache: &std::path::Path,
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(args)
        .current_dir(root())
        .env("XDG_CACHE_HOME", cache)
        .env_remove("ROADREP_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader hangs up at once (`| head -c0`): every write is EPIPE.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), err)
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_instead_of_panicking() {
    use std::os::unix::process::ExitStatusExt;
    let cache = tempfile::tempdir().unwrap();
    let image = root().join("tests/fixtures/clip-tiny/images");
    let image = std::fs::read_dir(image)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let clip = cache.path().join("clip.mp4");
    common::make_clip(&clip, 50, 25, 160, 120, "smpte");
    let store = cache.path().join("store");
    let store = store.to_str().unwrap();
    let o = common::roadrep(
        &[
            "replay",
            clip.to_str().unwrap(),
            "--fps",
            "2",
            "--store",
            store,
        ],
        cache.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for args in [
        vec!["tag", "--json", image.to_str().unwrap()],
        vec!["segments", "--json", "--store", store],
        vec!["search", "--json", "--store", store, "a road"],
    ] {
        let (status, err) = with_closed_stdout(&args, cache.path());
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(status.code(), Some(101), "{args:?}: {err}");
        // Killed by SIGPIPE as Unix tools are, or done before it mattered.
        assert!(
            status.signal() == Some(libc::SIGPIPE) || status.success(),
            "{args:?}: {status:?} {err}"
        );
    }
}

#[test]
fn a_start_time_the_store_cannot_hold_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 50, 25, 160, 120, "smpte");
    let store = dir.path().join("store");
    // 0.85 s before the last nanosecond an i64 holds: 2 s of video pass it.
    let o = common::roadrep(
        &[
            "replay",
            clip.to_str().unwrap(),
            "--camera",
            "cam",
            "--fps",
            "2",
            "--start",
            "2262-04-11T23:47:16Z",
            "--store",
            store.to_str().unwrap(),
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("stream 'cam'") && err.contains("out of range"),
        "{err}"
    );
    let s = roadrep::store::Store::open(&store, "any", 4).unwrap();
    let stored: u64 = s.stats().unwrap().frames.iter().map(|(_, n)| n).sum();
    // Frames before the limit may be stored; none was stamped with a
    // saturated time (they would all share one key).
    let frames = s
        .frames(&roadrep::store::FrameFilter::default(), 100)
        .unwrap();
    assert_eq!(frames.len() as u64, stored);
    let mut times: Vec<i64> = frames.iter().map(|f| f.ts_ns).collect();
    times.dedup();
    assert_eq!(times.len(), frames.len(), "distinct times");
    assert!(times.iter().all(|&t| t < i64::MAX), "{times:?}");
}
