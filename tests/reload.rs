//! Streams at run time: `SIGHUP` and `POST /api/reload` re-read the
//! config; added streams start, removed ones stop and close their open
//! segment, changed ones restart, untouched ones are not interrupted, and
//! a config that does not load changes nothing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A live test camera (real time, 10 fps).
fn live(name: &str, pattern: &str, fps: f64) -> String {
    format!(
        "[[streams]]\nname = \"{name}\"\nsample_fps = {fps}\nsource = \"gst:videotestsrc is-live=true pattern={pattern} ! video/x-raw,width=160,height=120,framerate=10/1\"\n"
    )
}

fn write_config(path: &Path, dir: &Path, port: u16, streams: &[String]) {
    let text = format!(
        "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
         cache_dir = \"{cache}\"\n[store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
         [batcher]\nmax_wait_ms = 50\n{streams}",
        model = common::tiny_model_dir().display(),
        labels = common::root().join("config/labels.toml").display(),
        cache = dir.display(),
        store = dir.join("store").display(),
        streams = streams.concat(),
    );
    std::fs::write(path, text).unwrap();
}

struct Api {
    agent: ureq::Agent,
    base: String,
}

impl Api {
    fn get(&self, path: &str) -> Option<Value> {
        let mut r = self.agent.get(format!("{}{path}", self.base)).call().ok()?;
        r.body_mut().read_json().ok()
    }

    fn reload(&self) -> (u16, Value) {
        let mut r = self
            .agent
            .post(format!("{}/api/reload", self.base))
            .send_empty()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_json().unwrap())
    }

    /// Polls `/health` until `done` holds.
    fn wait_health(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(h) = self.get("/health").filter(|h| done(h)) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "never {what}: {:?}",
                self.get("/health")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn stream<'a>(health: &'a Value, name: &str) -> Option<&'a Value> {
    health["streams"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

fn names(health: &Value) -> Vec<String> {
    let mut n: Vec<String> = health["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

fn frames(health: &Value, name: &str) -> u64 {
    stream(health, name).map_or(0, |s| s["frames"].as_u64().unwrap_or(0))
}

fn running_with(health: &Value, name: &str, min_frames: u64) -> bool {
    stream(health, name).is_some_and(|s| s["state"] == "running")
        && frames(health, name) >= min_frames
}

#[test]
fn streams_change_at_run_time_without_interrupting_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("roadrep.toml");
    let (front, rear, side) = (
        live("front", "smpte", 4.0),
        live("rear", "snow", 4.0),
        live("side", "ball", 4.0),
    );
    write_config(&config, dir.path(), port, &[front.clone(), rear.clone()]);
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(["-c", config.to_str().unwrap(), "run"])
        .current_dir(common::root())
        .env("XDG_CACHE_HOME", dir.path())
        .env_remove("ROADREP_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let api = Api {
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into(),
        base: format!("http://127.0.0.1:{port}"),
    };
    api.wait_health("both running", |h| {
        running_with(h, "front", 4) && running_with(h, "rear", 4)
    });
    let no_rear_segments = api.get("/api/segments?camera=rear").unwrap();
    assert_eq!(no_rear_segments.as_array().map(Vec::len), Some(0));

    // SIGHUP: rear removed, side added, front untouched.
    write_config(&config, dir.path(), port, &[front.clone(), side.clone()]);
    let before = frames(&api.get("/health").unwrap(), "front");
    let hup = Command::new("kill")
        .args(["-HUP", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let after = api.wait_health("side running, rear gone", |h| {
        names(h) == ["front", "side"] && running_with(h, "side", 2)
    });
    // The untouched stream's run went on (a restart starts its count at 0).
    assert!(frames(&after, "front") > before, "{after}");
    assert_eq!(stream(&after, "front").unwrap()["state"], "running");
    // The removed live camera's open segment was closed and stored.
    let rear_segments = api.get("/api/segments?camera=rear").unwrap();
    assert_eq!(
        rear_segments.as_array().map(Vec::len),
        Some(1),
        "{rear_segments}"
    );

    // A config that does not load: 400 naming the file, nothing changes.
    std::fs::write(&config, "[[streams]\nname = ").unwrap();
    let (status, body) = api.reload();
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("roadrep.toml"), "{error}");
    let unchanged = api.get("/health").unwrap();
    assert_eq!(names(&unchanged), ["front", "side"]);
    assert!(frames(&unchanged, "front") >= frames(&after, "front"));

    // A stream whose entry changed restarts; the others are unchanged.
    let slower_front = live("front", "smpte", 2.0);
    write_config(&config, dir.path(), port, &[slower_front, side.clone()]);
    let running_front = frames(&api.get("/health").unwrap(), "front");
    let (status, report) = api.reload();
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["restarted"],
        serde_json::json!(["front"]),
        "{report}"
    );
    assert_eq!(report["unchanged"], serde_json::json!(["side"]), "{report}");
    assert_eq!(report["added"], serde_json::json!([]), "{report}");
    assert_eq!(report["removed"], serde_json::json!([]), "{report}");
    let restarted = api.get("/health").unwrap();
    assert!(frames(&restarted, "front") < running_front, "{restarted}");
    api.wait_health("front running again", |h| running_with(h, "front", 1));

    let term = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = daemon.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
