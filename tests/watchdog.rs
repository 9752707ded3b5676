//! The systemd watchdog as systemd runs it: a notify socket, WATCHDOG_USEC,
//! and `roadrep run`. Pings go on while the inference worker shows life and
//! stop when it hangs (a fail point holds the model run), so systemd would
//! restart the service.
#![cfg(feature = "failpoints")]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Watchdog timeout given to the daemon: it pings every half of it.
const WATCHDOG: Duration = Duration::from_millis(1000);

struct Daemon {
    child: Child,
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(failpoints: Option<&str>) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 100, 25, 160, 120, "smpte");
    let config = dir.path().join("roadrep.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\ncache_dir = \"{cache}\"\n\
             [store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [[streams]]\nname = \"front\"\nsource = \"{clip}\"\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            cache = dir.path().join("cache").display(),
            store = dir.path().join("store").display(),
            clip = clip.display(),
        ),
    )
    .unwrap();
    let notify = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roadrep"));
    cmd.args(["-c", config.to_str().unwrap(), "run"])
        .current_dir(common::root())
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env("XDG_CACHE_HOME", dir.path())
        .env_remove("ROADREP_CONFIG")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match failpoints {
        Some(f) => cmd.env("FAILPOINTS", f),
        None => cmd.env_remove("FAILPOINTS"),
    };
    Daemon {
        child: cmd.spawn().unwrap(),
        socket,
        _dir: dir,
    }
}

/// The notifications received within `within`, with their arrival times.
fn notifications(d: &Daemon, within: Duration) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = d.socket.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).trim().to_string(),
            ));
        }
    }
    out
}

fn pings_after(events: &[(Instant, String)], t: Instant) -> usize {
    events
        .iter()
        .filter(|(at, m)| *at > t && m == "WATCHDOG=1")
        .count()
}

#[test]
fn pings_continue_while_the_worker_lives_and_stop_when_it_hangs() {
    // A healthy daemon: READY, then a ping every half period, for as long
    // as it runs (the clip is stored within the first second or so).
    let healthy = start(None);
    let events = notifications(&healthy, Duration::from_secs(6));
    assert!(
        events.iter().any(|(_, m)| m == "READY=1"),
        "no READY=1: {events:?}"
    );
    let late = events[0].0 + Duration::from_secs(3);
    assert!(
        pings_after(&events, late) >= 3,
        "a healthy worker keeps the pings going: {events:?}"
    );
    drop(healthy);

    // The first model run hangs for a minute: the pings stop within a
    // watchdog period while the process is still there, so systemd's
    // WatchdogSec would restart it.
    let mut hung = start(Some("pipeline::embed=sleep(60000)"));
    let events = notifications(&hung, Duration::from_secs(6));
    assert!(
        events.iter().any(|(_, m)| m == "READY=1"),
        "no READY=1: {events:?}"
    );
    assert!(hung.child.try_wait().unwrap().is_none(), "still running");
    let late = events[0].0 + Duration::from_secs(3);
    assert_eq!(
        pings_after(&events, late),
        0,
        "a hung worker must not be pinged for: {events:?}"
    );
}
