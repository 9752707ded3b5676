//! An RTSP server that goes away and comes back (issue 14): the daemon
//! binary reads a real RTSP server (gst-rtsp-server, `tests/rtsp_server.py`)
//! and a second live stream. The server is killed for an outage and started
//! again on the same port:
//!
//! - `/health` shows the RTSP stream `retrying` with its error during the
//!   outage and `running` after, reconnected within the backoff;
//! - `/metrics` shows the outage (`roadrep_stream_up` 0, source errors);
//! - the other stream goes on storing frames throughout;
//! - no frame of the RTSP camera is stamped inside the outage, and its open
//!   segment ends at the gap (a new one starts after it).
//!
//! The outage lasts 30 s, long enough for the retry delay to reach its cap
//! (`RETRY_MAX_SECS`) and stay there for several attempts.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roadrep::ingest::source::now_ns;
use roadrep::store::{FrameFilter, SegmentFilter, Store};
use serde_json::Value;

const OUTAGE: Duration = Duration::from_secs(30);
const RETRY_MAX_SECS: f64 = 2.0;
/// A pause in a stream's frames longer than this ends its segment.
const MAX_GAP_SECS: f64 = 3.0;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a child process (its own, by pid) when dropped.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the RTSP server on `port` and waits until it listens.
fn rtsp_server(port: u16) -> Killed {
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| !p.starts_with('/') || Path::new(p).exists())
        .unwrap();
    let mut child = Command::new(python)
        .arg(common::root().join("tests/rtsp_server.py"))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (make setup installs python3-gi and gir1.2-gst-rtsp-server-1.0)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the RTSP server did not start");
    Killed(child)
}

struct Daemon {
    child: Killed,
    port: u16,
    log: std::path::PathBuf,
    agent: ureq::Agent,
}

impl Daemon {
    fn get(&self, path: &str) -> Option<String> {
        let mut r = self
            .agent
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .call()
            .ok()?;
        r.body_mut().read_to_string().ok()
    }

    fn json(&self, path: &str) -> Option<Value> {
        serde_json::from_str(&self.get(path)?).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/health` entry of `stream`.
    fn stream(&self, stream: &str) -> Option<Value> {
        let h = self.json("/health")?;
        h["streams"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == stream)
            .cloned()
    }

    /// Polls `/health` until `done` holds for `stream`'s entry.
    fn wait_for(&self, what: &str, stream: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.stream(stream).filter(|s| done(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{stream} never {what}: {:?}\n{}",
                self.json("/health"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Times (ns) of the stored frames of `camera`, in order.
    fn frame_times(&self, camera: &str) -> Vec<i64> {
        let v = self
            .json(&format!("/api/frames?camera={camera}&top=10000"))
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|f| f["ts_ns"].as_i64().unwrap())
            .collect()
    }

    /// A metric's value for `stream` (0 when absent).
    fn metric(&self, name: &str, stream: &str) -> f64 {
        let text = self.get("/metrics").unwrap_or_default();
        let prefix = format!("{name}{{stream=\"{stream}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

#[test]
fn an_rtsp_server_that_goes_away_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (rtsp_port, api_port) = (free_port(), free_port());
    let store = dir.path().join("store");
    let config = dir.path().join("roadrep.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n\
             [tagging]\nlabels = \"{labels}\"\ncache_dir = \"{cache}\"\n\
             [ingest]\nsample_fps = 2\nretry_initial_secs = 0.5\nretry_max_secs = {RETRY_MAX_SECS}\n\
             [segments]\ncut_distance = 0.005\nkeep_distance = 0.003\nconfirm_secs = 1.0\n\
             min_segment_secs = 2.0\nmax_gap_secs = {MAX_GAP_SECS}\n\
             [store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [[streams]]\nname = \"cam\"\nsource = \"rtsp://127.0.0.1:{rtsp_port}/cam\"\nlatency_ms = 100\n\
             [[streams]]\nname = \"other\"\n\
             source = \"gst:videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=10/1\"\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            cache = dir.path().display(),
            store = store.display(),
        ),
    )
    .unwrap();

    let server = rtsp_server(rtsp_port);
    let log = dir.path().join("daemon.log");
    let daemon = Daemon {
        child: Killed(
            Command::new(env!("CARGO_BIN_EXE_roadrep"))
                .arg("-c")
                .arg(&config)
                .arg("run")
                .current_dir(common::root())
                .env("XDG_CACHE_HOME", dir.path())
                .env_remove("ROADREP_CONFIG")
                .env_remove("RUST_LOG")
                .env_remove("FAILPOINTS")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        ),
        port: api_port,
        log,
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into(),
    };

    // Both streams store frames.
    daemon.wait_for("ran", "cam", |s| {
        s["state"] == "running" && s["frames"].as_u64() >= Some(4)
    });
    daemon.wait_for("ran", "other", |s| s["frames"].as_u64() >= Some(4));
    let errors_before = daemon.metric("roadrep_source_errors_total", "cam");
    assert_eq!(daemon.metric("roadrep_stream_up", "cam"), 1.0);

    // The server goes away.
    let outage_start = now_ns();
    drop(server);
    let retrying = daemon.wait_for("retried", "cam", |s| s["state"] == "retrying");
    assert!(
        retrying["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{retrying}"
    );
    eprintln!("during the outage: {retrying}");
    let other_before = daemon.stream("other").unwrap()["frames"].as_u64().unwrap();
    let until = Instant::now() + OUTAGE.saturating_sub(Duration::from_millis(500));
    while Instant::now() < until {
        // Never `running` with frames while the server is down.
        let s = daemon.stream("cam").unwrap();
        assert!(
            !(s["state"] == "running" && s["frames"].as_u64() > Some(0)),
            "{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The outage shows in the metrics: the stream is down and its failed
    // reconnects are counted.
    assert_eq!(daemon.metric("roadrep_stream_up", "cam"), 0.0);
    let errors_during = daemon.metric("roadrep_source_errors_total", "cam");
    assert!(
        errors_during >= errors_before + 2.0,
        "source errors {errors_before} -> {errors_during}"
    );
    let during = daemon.stream("cam").unwrap();
    assert_eq!(during["state"], "retrying", "{during}");
    assert!(during["last_error"].as_str().is_some(), "{during}");
    eprintln!("{:.0} s into the outage: {during}", OUTAGE.as_secs_f64());
    // The other stream went on meanwhile.
    let other_after = daemon.stream("other").unwrap()["frames"].as_u64().unwrap();
    assert_eq!(daemon.stream("other").unwrap()["state"], "running");
    assert!(
        other_after >= other_before + 10,
        "other: {other_before} -> {other_after} frames during the outage"
    );

    // The server comes back on the same port: the stream reconnects within
    // the backoff (one retry delay, plus connecting and the first frame).
    let _server = rtsp_server(rtsp_port);
    let outage_end = now_ns();
    let back = Instant::now();
    daemon.wait_for("reconnected", "cam", |s| {
        s["state"] == "running" && s["frames"].as_u64() > Some(0)
    });
    let reconnect = back.elapsed();
    eprintln!(
        "reconnected {:.2} s after the server came back",
        reconnect.as_secs_f64()
    );
    assert!(
        reconnect.as_secs_f64() < RETRY_MAX_SECS + 3.0,
        "reconnected after {reconnect:?}"
    );
    assert_eq!(daemon.metric("roadrep_stream_up", "cam"), 1.0);
    // A few frames after the gap, then look at what was stored.
    daemon.wait_for("ran again", "cam", |s| s["frames"].as_u64() >= Some(4));
    let cam = daemon.frame_times("cam");
    let other = daemon.frame_times("other");

    // No frame of the camera is stamped inside the outage; frames before
    // and after it are stored, strictly increasing.
    let inside: Vec<_> = cam
        .iter()
        .filter(|&&t| t > outage_start && t < outage_end)
        .collect();
    assert!(inside.is_empty(), "frames inside the outage: {inside:?}");
    assert!(cam.windows(2).all(|w| w[0] < w[1]));
    let last_before = *cam.iter().rfind(|&&t| t <= outage_start).unwrap();
    let first_after = *cam.iter().find(|&&t| t >= outage_end).unwrap();
    // The other stream has frames throughout the outage.
    let other_inside = other
        .iter()
        .filter(|&&t| t > outage_start && t < outage_end)
        .count();
    assert!(other_inside >= 10, "{other_inside} frames of other");

    // Stop the daemon (SIGTERM) and read its segments from the store.
    let pid = daemon.child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut child = daemon.child;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let store = Store::open(&store, "any", 4).unwrap();
    let segments: Vec<(i64, i64)> = store
        .segments(&SegmentFilter {
            streams: Some(vec!["cam".into()]),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|s| (s.record.start_ns, s.record.end_ns))
        .collect();
    // The segment open at the outage ends with the last frame before it
    // (end exclusive: that frame + one sample interval), and another one
    // starts with the first frame after it.
    let interval = 500_000_000;
    assert!(
        segments
            .iter()
            .any(|&(_, end)| end > last_before && end <= last_before + interval),
        "no segment ends at the gap ({last_before}): {segments:?}"
    );
    assert!(
        segments.iter().any(|&(start, _)| start == first_after),
        "no segment starts after the gap ({first_after}): {segments:?}"
    );
    assert!(
        segments
            .iter()
            .all(|&(start, end)| end <= outage_start + interval || start >= outage_end),
        "a segment spans the outage [{outage_start}, {outage_end}]: {segments:?}"
    );
    let stored = store
        .frames(
            &FrameFilter {
                streams: Some(vec!["cam".into()]),
                ..Default::default()
            },
            100_000,
        )
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|f| f.ts_ns <= outage_start || f.ts_ns >= outage_end)
    );
}
