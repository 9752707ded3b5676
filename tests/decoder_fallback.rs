//! A decoder that fails (as a broken hardware decoder does) is skipped on
//! the stream's next attempt, which plugs the next decoder by rank: a fail
//! point breaks `vp8dec` (primary rank), and the clip is read through
//! `avdec_vp8` (marginal) with every frame stored once.
#![cfg(feature = "failpoints")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_failing_decoder_falls_back_to_the_next_by_rank_without_losing_frames() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.webm");
    // 4 s at 25 fps: frames sampled at 0, 0.5, ... 3.5 s.
    common::gst(&format!(
        "videotestsrc pattern=smpte num-buffers=100 ! video/x-raw,width=160,height=120,framerate=25/1 \
         ! videoconvert ! vp8enc keyframe-max-dist=25 deadline=1 ! webmmux ! filesink location={}",
        clip.display()
    ));
    let port = common::free_port();
    let config = dir.path().join("roadrep.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             [store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
             [ingest]\nretry_initial_secs = 0.2\nretry_max_secs = 0.4\n\
             [[streams]]\nname = \"front\"\nsource = \"{clip}\"\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            store = dir.path().join("store").display(),
            clip = clip.display(),
        ),
    )
    .unwrap();
    let mut daemon = common::daemon(&config, dir.path())
        .env("FAILPOINTS", "ingest::decoder_fails=return(vp8dec)")
        .spawn()
        .unwrap();
    let agent = common::api_agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut errors = Vec::new();
    let front = loop {
        assert!(Instant::now() < deadline, "the stream never finished");
        std::thread::sleep(Duration::from_millis(50));
        let Ok(mut r) = agent.get(format!("http://127.0.0.1:{port}/health")).call() else {
            continue;
        };
        let health: serde_json::Value = r.body_mut().read_json().unwrap();
        let front = health["streams"][0].clone();
        if let Some(e) = front["last_error"].as_str()
            && !errors.iter().any(|seen| seen == e)
        {
            errors.push(e.to_string());
        }
        if front["state"] == "finished" {
            break front;
        }
    };
    let term = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(daemon.wait().unwrap().success());

    // The next attempt plugged the next decoder by rank and read the clip.
    let decoder = front["decoder"].as_str().unwrap_or_default();
    assert!(decoder.starts_with("avdec_vp8"), "{front}");
    // The failure it retried after names the decoder and what became of it.
    let error = front["last_error"].as_str().unwrap_or_default();
    errors.push(error.to_string());
    for e in &errors {
        assert!(
            e.contains("vp8dec0: ")
                && e.ends_with("; decoder vp8dec skipped from the next attempt on"),
            "{e}"
        );
    }
    let store = roadrep::store::Store::open(&dir.path().join("store"), "any", 4).unwrap();
    assert_eq!(
        store.stats().unwrap().frames,
        vec![("front".to_string(), 8)]
    );
    let id = store.stream_id("front").unwrap();
    let source = roadrep::pipeline::SourceId::of(&roadrep::ingest::config::SourceKind::File(clip));
    let checkpoint = store.checkpoint(id, source.as_str()).unwrap().unwrap();
    assert!(checkpoint.complete, "{checkpoint:?}");
}
