//! The whole recipe, each step checked: a clip -> `roadrep replay` ->
//! `roadrep export-frames` -> `trainer autocaption` (tiny BLIP) ->
//! `trainer train` (tiny CLIP, a few steps, on the auto-captions) ->
//! `trainer eval` (with BLEU and CIDEr-D of the auto-captions against the
//! tag captions).
#![cfg(feature = "trainer")]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn run(exe: &str, args: &[&str], cache: &Path) -> String {
    let o: Output = Command::new(exe)
        .args(args)
        .current_dir(common::root())
        .env("XDG_CACHE_HOME", cache)
        .env_remove("ROADREP_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("{exe}: {e}"));
    assert!(
        o.status.success(),
        "{exe} {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn clip_to_replay_to_export_to_autocaption_to_train_to_eval() {
    let roadrep = env!("CARGO_BIN_EXE_roadrep");
    let trainer = env!("CARGO_BIN_EXE_trainer");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    // 1. A clip of two scenes, 4 s, replayed at 2 fps: 8 stored frames.
    let clip = dir.path().join("front.mp4");
    common::scene_clip(&clip, &["smpte", "ball"], 2);
    run(
        roadrep,
        &[
            "replay",
            &p("front.mp4"),
            "--store",
            &p("store"),
            "--camera",
            "front",
            "--fps",
            "2",
        ],
        &cache,
    );

    // 2. Stored frames -> JPEGs + frames.jsonl (captions from the tags).
    run(
        roadrep,
        &[
            "export-frames",
            "--store",
            &p("store"),
            "--camera",
            "front",
            "--out",
            &p("dataset"),
        ],
        &cache,
    );
    let frames = lines(&dir.path().join("dataset/frames.jsonl"));
    assert_eq!(frames.len(), 8);
    let jpegs = std::fs::read_dir(dir.path().join("dataset/front"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "jpg")
        })
        .count();
    assert_eq!(jpegs, 8);

    // 3. BLIP captions of the exported frames, labels carried over.
    let stdout = run(
        trainer,
        &[
            "autocaption",
            "--manifest",
            &p("dataset/frames.jsonl"),
            "--out",
            &p("dataset/auto.jsonl"),
            "--model",
            "models/blip-tiny",
        ],
        &cache,
    );
    assert!(stdout.contains("captioned 8 images"), "{stdout}");
    let auto = lines(&dir.path().join("dataset/auto.jsonl"));
    assert_eq!(auto.len(), 8);
    for (a, f) in auto.iter().zip(&frames) {
        assert_eq!(a["image"], f["image"]);
        assert_eq!(a["labels"], f["labels"]);
        assert!(!a["caption"].as_str().unwrap().is_empty());
    }

    // 4. LoRA on the tiny CLIP, a few steps, on the auto-captions.
    run(
        trainer,
        &[
            "train",
            "--model",
            "models/clip-tiny",
            "--data",
            &p("dataset/auto.jsonl"),
            "--out",
            &p("run"),
            "--batch-size",
            "4",
            "--max-steps",
            "3",
            "--epochs",
            "3",
            "--quiet",
        ],
        &cache,
    );
    let adapter = dir.path().join("run/adapter");
    assert!(adapter.join("adapter_model.safetensors").is_file());

    // 5. Eval: the adapter against the base on the exported frames, and the
    //    auto-captions scored against the tag captions.
    run(
        trainer,
        &[
            "eval",
            "--model",
            "models/clip-tiny",
            "--adapter",
            &p("run/adapter"),
            "--data",
            &p("dataset/frames.jsonl"),
            "--labels",
            "config/labels.toml",
            "--captions",
            &p("dataset/auto.jsonl"),
            "--report",
            &p("run/eval.json"),
        ],
        &cache,
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/eval.json")).unwrap()).unwrap();
    assert!(
        report["after"]["image_to_text"]["r1"].is_number(),
        "{report}"
    );
    assert_eq!(report["bleu"].as_array().unwrap().len(), 4);
    let cider = report["cider"].as_f64().unwrap();
    assert!(cider.is_finite() && cider >= 0.0, "{report}");
    assert!(dir.path().join("run/eval.svg").is_file());
}
