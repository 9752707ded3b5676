//! A full disk, for real: the store lives on a small tmpfs mounted in a
//! private mount namespace (`unshare --mount` as root; as another user, in
//! a user namespace of its own where those are allowed), which a script
//! grows when the test says so.
//!
//! - replay: stops at the first failed write, says so in one line with
//!   what is on disk, and a rerun once there is space completes the clip
//!   with exactly the frames of an uninterrupted replay;
//! - daemon: `/health` says `degraded` while the store cannot be written,
//!   the streams pause, and once space returns the store reopens and the
//!   streams finish from their checkpoints, losing and doubling nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roadrep::store::{FrameFilter, SegmentFilter, Store};

/// Frames of the test clip (25 fps, all kept): enough to fill 1 MiB of
/// store part way through.
const CLIP_FRAMES: u32 = 600;

struct Fixture {
    dir: tempfile::TempDir,
    clip: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("front.mp4");
        common::make_clip(&clip, CLIP_FRAMES, 25, 160, 120, "ball");
        std::fs::create_dir(dir.path().join("disk")).unwrap();
        Self { dir, clip }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config storing into `store`; with `port`, an API and the clip as
    /// stream `front`.
    fn config(&self, name: &str, store: &Path, port: Option<u16>) -> PathBuf {
        let mut text = format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             cache_dir = \"{cache}\"\n[ingest]\nsample_fps = 25\nretry_initial_secs = 0.2\n\
             retry_max_secs = 1\n[store]\npath = \"{store}\"\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            cache = self.dir.path().display(),
            store = store.display(),
        );
        if let Some(port) = port {
            text += &format!(
                "[api]\nlisten = \"127.0.0.1:{port}\"\n[[streams]]\nname = \"front\"\nsource = \"{}\"\n",
                self.clip.display()
            );
        }
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `script` with `$DISK` a 1 MiB tmpfs of its own and `$GROW`
    /// a file whose appearance makes the script's `grow` function wait
    /// for it and then enlarge the tmpfs to 64 MiB.
    fn spawn_on_small_disk(&self, script: &str) -> Child {
        let prelude = format!(
            "set -u\nDISK={disk}\nGROW={grow}\nROADREP={bin}\n\
             mount -t tmpfs -o size=1m roadrep-test \"$DISK\" || exit 90\n\
             grow() {{ while [ ! -e \"$GROW\" ]; do sleep 0.1; done; mount -o remount,size=64m \"$DISK\"; }}\n",
            disk = self.path("disk").display(),
            grow = self.path("grow").display(),
            bin = env!("CARGO_BIN_EXE_roadrep"),
        );
        // Root needs no user namespace, and may not make one inside a
        // chroot (as on a fresh build root). There `/` is no mount point,
        // so its propagation cannot be made private either: the mounts stay
        // in the namespace anyway where the host's are private.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let private_ok = || {
            Command::new("unshare")
                .args(["--mount", "true"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let namespaces: &[&str] = if !root {
            &["--map-root-user", "--mount"]
        } else if private_ok() {
            &["--mount"]
        } else {
            &["--mount", "--propagation", "unchanged"]
        };
        Command::new("unshare")
            .args(namespaces)
            .args(["sh", "-c"])
            .arg(prelude + script)
            .current_dir(common::root())
            .env("XDG_CACHE_HOME", self.dir.path())
            .env_remove("ROADREP_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) runs the store on a tmpfs of its own")
    }

    /// Replays the clip into a store of its own: what an uninterrupted run
    /// keeps.
    fn reference(&self) -> Store {
        let store = self.path("reference");
        let config = self.config("reference.toml", &store, None);
        let out = common::roadrep(
            &[
                "-c",
                config.to_str().unwrap(),
                "replay",
                "--camera",
                "front",
                self.clip.to_str().unwrap(),
            ],
            self.dir.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Store::open(&store, "any", 4).unwrap()
    }
}

/// Every stored frame's (time, pts), in order.
fn frames(store: &Store) -> Vec<(i64, u64)> {
    store
        .frames(&FrameFilter::default(), 100_000)
        .unwrap()
        .into_iter()
        .map(|f| (f.ts_ns, f.record.pts_ns))
        .collect()
}

fn segment_bounds(store: &Store) -> Vec<(i64, i64, u32)> {
    store
        .segments(&SegmentFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| (s.record.start_ns, s.record.end_ns, s.record.frames))
        .collect()
}

fn wait_output(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_ne!(
        code, 90,
        "cannot mount a tmpfs in a private namespace: {stderr}"
    );
    assert!(
        !stderr.contains("unshare:"),
        "cannot make a private mount namespace: {stderr}"
    );
    (code, stdout, stderr)
}

#[test]
fn replay_on_a_full_disk_stops_says_what_is_on_disk_and_completes_later() {
    let fx = Fixture::new();
    let store = fx.path("disk/store");
    let config = fx.config("small.toml", &store, None);
    let (config, clip) = (config.display(), fx.clip.display());
    // First run on the small disk; then the disk grows, what is on disk is
    // copied out (the tmpfs dies with the namespace), and a rerun resumes.
    let script = format!(
        "\"$ROADREP\" -c {config} replay --camera front {clip} 2> {first}; echo $? > {rc}\n\
         cp -a \"$DISK/store\" {after_failure}\n\
         touch \"$GROW\"; grow\n\
         \"$ROADREP\" -c {config} replay --camera front {clip} 2> {second} || exit 91\n\
         cp -a \"$DISK/store\" {done}\n",
        first = fx.path("first.log").display(),
        second = fx.path("second.log").display(),
        rc = fx.path("first.rc").display(),
        after_failure = fx.path("after-failure").display(),
        done = fx.path("done").display(),
    );
    let reference = fx.reference();
    let (code, _, stderr) = wait_output(fx.spawn_on_small_disk(&script));
    let first = std::fs::read_to_string(fx.path("first.log")).unwrap();
    assert_eq!(
        code,
        0,
        "second run failed:\n{stderr}\n{}",
        std::fs::read_to_string(fx.path("second.log")).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(fx.path("first.rc")).unwrap().trim(),
        "1",
        "{first}"
    );

    // One error line: the store, the reason, what to do, what is on disk.
    let errors: Vec<_> = first.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{first}");
    let error = errors[0];
    assert!(
        error.contains("cannot be written")
            && error.contains("No space left on device")
            && error.contains("stopped at the first failed write")
            && error.contains("resumes after the last frame on disk"),
        "{error}"
    );
    // It stopped at the first failure instead of decoding and dropping the
    // rest batch after batch.
    assert_eq!(first.matches("Store write failed").count(), 1, "{first}");
    assert!(!first.contains("panicked"), "{first}");

    // What it said is on disk is what a reopened store holds: a prefix of
    // the reference, with its checkpoint.
    let held = frames(&Store::open(&fx.path("after-failure"), "any", 4).unwrap());
    let expected = frames(&reference);
    assert_eq!(expected.len(), CLIP_FRAMES as usize);
    assert!(
        !held.is_empty() && held.len() < expected.len(),
        "{} of {}",
        held.len(),
        expected.len()
    );
    assert_eq!(held[..], expected[..held.len()]);
    // On a disk still full sled cannot reopen the store to count; when it
    // can, the count is exact.
    assert!(
        error.contains(&format!("{clip} {} frames", held.len()))
            || error.contains("cannot reopen the store to see what is on disk"),
        "{error} (the store holds {})",
        held.len()
    );

    // With space again the rerun completes: every frame once, same
    // segments as the uninterrupted run.
    let second = std::fs::read_to_string(fx.path("second.log")).unwrap();
    assert!(second.contains("resuming after"), "{second}");
    let done = Store::open(&fx.path("done"), "any", 4).unwrap();
    assert_eq!(frames(&done), expected);
    assert_eq!(segment_bounds(&done), segment_bounds(&reference));
}

#[test]
fn the_daemon_says_degraded_while_the_disk_is_full_and_recovers_when_space_returns() {
    let fx = Fixture::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = fx.path("disk/store");
    let config = fx.config("daemon.toml", &store, Some(port));
    let script = format!(
        "\"$ROADREP\" -c {config} run 2> {log} & pid=$!\n\
         echo $pid > {pidfile}\n\
         grow\n\
         wait $pid; echo $? > {rc}\n\
         cp -a \"$DISK/store\" {done}\n",
        config = config.display(),
        log = fx.path("daemon.log").display(),
        pidfile = fx.path("daemon.pid").display(),
        rc = fx.path("daemon.rc").display(),
        done = fx.path("done").display(),
    );
    let reference = fx.reference();
    let child = fx.spawn_on_small_disk(&script);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let health = || -> Option<serde_json::Value> {
        let mut r = agent
            .get(format!("http://127.0.0.1:{port}/health"))
            .call()
            .ok()?;
        r.body_mut().read_json().ok()
    };
    let log = || std::fs::read_to_string(fx.path("daemon.log")).unwrap_or_default();
    let wait_for = |what: &str, done: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(h) = health().filter(|h| done(h)) {
                return h;
            }
            assert!(Instant::now() < deadline, "never {what}:\n{}", log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let degraded = wait_for("degraded", &|h| h["status"] == "degraded");
    assert_eq!(degraded["store"]["writable"], false, "{degraded}");
    let reason = degraded["store"]["error"].as_str().unwrap_or_default();
    assert!(reason.contains("No space left on device"), "{degraded}");
    assert_eq!(degraded["streams"][0]["state"], "paused", "{degraded}");
    // Searches say why they cannot run (503), instead of hanging or 500.
    let mut r = agent
        .get(format!("http://127.0.0.1:{port}/api/frames"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.body_mut().read_json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("No space left"),
        "{body}"
    );
    // Still paused a while later: nothing pretends to store meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    let still = health().unwrap();
    assert_eq!(still["status"], "degraded", "{still}");
    assert!(
        still["store"]["reopen_attempts"].as_u64().unwrap() >= 1,
        "{still}"
    );

    // Space returns: the store reopens, the stream goes on from its
    // checkpoint and finishes.
    std::fs::write(fx.path("grow"), "").unwrap();
    let finished = wait_for("finished", &|h| {
        h["status"] == "ok" && h["streams"][0]["state"] == "finished"
    });
    assert_eq!(finished["store"]["writable"], true, "{finished}");
    let pid = std::fs::read_to_string(fx.path("daemon.pid")).unwrap();
    assert!(
        Command::new("kill")
            .args(["-TERM", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    let (code, _, stderr) = wait_output(child);
    assert_eq!(code, 0, "{stderr}");
    let log = log();
    assert_eq!(
        std::fs::read_to_string(fx.path("daemon.rc"))
            .unwrap()
            .trim(),
        "0",
        "{log}"
    );
    assert!(
        log.contains("streams resume from their checkpoints"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    let done = Store::open(&fx.path("done"), "any", 4).unwrap();
    assert_eq!(frames(&done), frames(&reference), "lost or doubled frames");
}
