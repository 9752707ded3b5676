//! A live rig in the daemon: two test cameras and a third whose RTSP server
//! does not exist. Records are written with the dead camera absent (it
//! never blocks the others), `/health` counts them, and the API searches
//! and summarises the rig.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn live(name: &str, role: &str, source: &str) -> String {
    format!(
        "[[streams]]\nname = \"{name}\"\nrig = \"car1\"\nrole = \"{role}\"\nsample_fps = 4.0\nsource = \"{source}\"\n"
    )
}

fn camera(pattern: &str) -> String {
    format!(
        "gst:videotestsrc is-live=true pattern={pattern} ! video/x-raw,width=160,height=120,framerate=10/1"
    )
}

#[test]
fn a_dead_camera_never_blocks_a_live_rig() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // Nothing listens on a port just freed: the RTSP camera keeps failing.
    let dead_port = common::free_port();
    let config = dir.path().join("roadrep.toml");
    let text = format!(
        "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
         cache_dir = \"{cache}\"\n[store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
         [batcher]\nmax_wait_ms = 50\n[ingest]\nretry_initial_secs = 0.2\nretry_max_secs = 0.5\n\
         {front}{back}{left}\n[[rigs]]\nname = \"car1\"\nanchor = \"front\"\ntolerance_ms = 300\nmax_wait_ms = 400\n",
        model = common::tiny_model_dir().display(),
        labels = common::root().join("config/labels.toml").display(),
        cache = dir.path().display(),
        store = dir.path().join("store").display(),
        front = live("car1-front", "front", &camera("smpte")),
        back = live("car1-back", "back", &camera("ball")),
        left = live(
            "car1-left",
            "front_left",
            &format!("rtsp://127.0.0.1:{dead_port}/none")
        ),
    );
    std::fs::write(&config, text).unwrap();
    let mut daemon = common::daemon(&config, dir.path()).spawn().unwrap();
    let agent = common::api_agent();
    let get = |path: &str| -> Option<Value> {
        let mut r = agent
            .get(format!("http://127.0.0.1:{port}{path}"))
            .call()
            .ok()?;
        r.body_mut().read_json().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let rig = loop {
        let rig = get("/health").and_then(|h| h["rigs"].get(0).cloned());
        if let Some(r) = rig
            .as_ref()
            .filter(|r| r["counters"]["records"].as_u64() >= Some(8))
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no rig records: {:?}",
            get("/health")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rig["rig"], "car1");
    assert_eq!(
        rig["roles"],
        serde_json::json!(["front", "back", "front_left"])
    );
    let c = &rig["counters"];
    let records = c["records"].as_u64().unwrap();
    // The dead camera is missing from every record; the live ones are in
    // (but perhaps the first, before the back camera's first frame).
    assert_eq!(c["missing"][2].as_u64(), Some(records), "{rig:#}");
    assert_eq!(c["partial"].as_u64(), Some(records));
    assert!(c["missing"][1].as_u64().unwrap() <= 1, "{rig:#}");
    assert_eq!(c["missing"][0].as_u64(), Some(0));

    let hits = get("/api/search?rig=car1&q=a+test+pattern&top=5&views=front,back").unwrap();
    let hits = hits["rig_hits"].as_array().unwrap();
    assert_eq!(hits.len(), 5, "{hits:#?}");
    for h in hits {
        let views = h["views"].as_array().unwrap();
        assert_eq!(views[0]["present"], true);
        assert_eq!(views[1]["present"], true);
        assert!(views[1]["offset_ms"].as_f64().unwrap().abs() <= 300.0);
        assert_eq!(views[2]["present"], false);
        assert_eq!(
            views[0]["tags"].as_array().unwrap().len(),
            4,
            "per-view tags"
        );
    }
    let none = get("/api/search?rig=car1&q=x&views=front_left").unwrap();
    assert_eq!(none["rig_hits"].as_array().map(Vec::len), Some(0));
    let bad = get("/api/search?rig=car9&q=x").unwrap();
    assert!(
        bad["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown rig 'car9'"),
        "{bad}"
    );
    let segments = get("/api/segments?rig=car1").unwrap();
    assert!(!segments.as_array().unwrap().is_empty(), "{segments}");

    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status}");
}
