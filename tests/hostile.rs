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

fn replay_one(file: &std::path::Path, dir: &std::path::Path) -> (std::process::Output, u64) {
    let store = dir.join("store");
    let o = common::roadrep(
        &[
            "replay",
            file.to_str().unwrap(),
            "--camera",
            "cam",
            "--fps",
            "2",
            "--store",
            store.to_str().unwrap(),
        ],
        dir,
    );
    let s = roadrep::store::Store::open(&store, "any", 4).unwrap();
    let stored = s.stats().unwrap().frames.iter().map(|(_, n)| n).sum();
    (o, stored)
}

fn error_lines(o: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_picture_renamed_mp4_and_an_audio_only_file_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    for (name, pipeline, says) in [
        (
            "frame.mp4",
            "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=48 ! videoconvert ! pngenc",
            "is a PNG image, not a video",
        ),
        (
            "sound.wav",
            "audiotestsrc num-buffers=40 ! audioconvert ! wavenc",
            "no video stream",
        ),
    ] {
        let file = dir.path().join(name);
        common::gst(&format!(
            "{pipeline} ! filesink location={}",
            file.display()
        ));
        let (o, stored) = replay_one(&file, dir.path());
        assert!(!o.status.success(), "{name}");
        assert_eq!(stored, 0, "{name}");
        let errors = error_lines(&o);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(name) && errors[0].contains(says),
            "{errors:?}"
        );
    }
}

#[test]
fn a_truncated_recording_keeps_its_frames_and_says_it_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.mp4");
    // faststart: the index comes first, as in dash-cam recordings, so the
    // first part of the file still plays.
    common::gst(&format!(
        "videotestsrc pattern=smpte num-buffers=200 ! video/x-raw,width=320,height=240,framerate=25/1 \
         ! videoconvert ! x264enc speed-preset=ultrafast key-int-max=25 ! mp4mux faststart=true ! filesink location={}",
        whole.display()
    ));
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 10]).unwrap();
    let (o, stored) = replay_one(&cut, dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(stored > 0 && stored < 16, "{stored} of 16 frames\n{err}");
    let errors = error_lines(&o);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("cut.mp4") && errors[0].contains("of the file's 8.00 s (truncated"),
        "{errors:?}"
    );
    // Done up to where it ends: a second replay has nothing to do.
    let (o, again) = replay_one(&cut, dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(again, stored);
}

#[test]
fn frames_replayed_by_a_relative_path_export_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    std::fs::create_dir(&clips).unwrap();
    common::make_clip(&clips.join("clip.mp4"), 50, 25, 160, 120, "smpte");
    let store = dir.path().join("store");
    // Replayed from inside `clips/`, by its bare name.
    let o = Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(["-c", root().join("config/roadrep.toml").to_str().unwrap()])
        .args([
            "replay", "clip.mp4", "--camera", "cam", "--fps", "2", "--store",
        ])
        .arg(&store)
        .current_dir(&clips)
        .env("XDG_CACHE_HOME", dir.path())
        .env_remove("ROADREP_CONFIG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Exported from the repository root, where `clip.mp4` means nothing.
    let out = dir.path().join("out");
    let o = common::roadrep(
        &[
            "export-frames",
            "--store",
            store.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = std::fs::read_to_string(out.join("frames.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        4,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_bad_stream_stops_the_daemon_before_it_starts_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roadrep.toml");
    std::fs::write(
        &config,
        "[api]\nlisten = \"127.0.0.1:0\"\n[[streams]]\nname = \"front\"\nsource = \"ftp://camera/stream\"\n",
    )
    .unwrap();
    let o = common::roadrep(&["-c", config.to_str().unwrap(), "run"], dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("roadrep.toml")
            && lines[0].contains("streams[0]")
            && lines[0].contains("stream 'front': unsupported scheme 'ftp://'"),
        "{err}"
    );
}
