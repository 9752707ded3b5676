//! A file the daemon can read only part of (a fail point makes its data
//! corrupt from 2 s on): retried while attempts get further, then finished
//! at its last good frame instead of being decoded again forever.
#![cfg(feature = "failpoints")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_file_with_a_corrupt_tail_is_finished_at_its_last_good_frame() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 100, 25, 160, 120, "smpte");
    let port = common::free_port();
    let config = dir.path().join("roadrep.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             [store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
             [ingest]\nretry_initial_secs = 0.2\nretry_max_secs = 0.4\nmax_file_attempts = 3\n\
             [[streams]]\nname = \"front\"\nsource = \"{clip}\"\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            store = dir.path().join("store").display(),
            clip = clip.display(),
        ),
    )
    .unwrap();
    let mut daemon = common::daemon(&config, dir.path())
        .env("FAILPOINTS", "ingest::corrupt_from_pts=return(2000000000)")
        .spawn()
        .unwrap();
    let agent = common::api_agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    let front = loop {
        assert!(Instant::now() < deadline, "the stream never finished");
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut r) = agent.get(format!("http://127.0.0.1:{port}/health")).call() else {
            continue;
        };
        let health: serde_json::Value = r.body_mut().read_json().unwrap();
        let front = health["streams"][0].clone();
        if front["state"] == "finished" {
            break front;
        }
    };
    // SIGTERM: what was stored is flushed before the daemon exits.
    let term = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(daemon.wait().unwrap().success());
    let error = front["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("corrupt data") && error.contains("gave up after 3 attempts"),
        "{front}"
    );
    // 0, 0.5, 1.0 and 1.5 s were readable; the checkpoint says done.
    let store = roadrep::store::Store::open(&dir.path().join("store"), "any", 4).unwrap();
    assert_eq!(
        store.stats().unwrap().frames,
        vec![("front".to_string(), 4)]
    );
    let id = store.stream_id("front").unwrap();
    let source = roadrep::pipeline::SourceId::of(&roadrep::ingest::config::SourceKind::File(clip));
    let checkpoint = store.checkpoint(id, source.as_str()).unwrap().unwrap();
    assert!(checkpoint.complete, "{checkpoint:?}");
}
