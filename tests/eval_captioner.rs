//! `trainer eval-captioner` end to end on the tiny BLIP: both models'
//! metrics in report.json, an HTML naming every sample with thumbnails that
//! exist, identical models scoring the same.
#![cfg(feature = "trainer")]

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Two scenes of three images each (one image with two captions) and their
/// JSONL manifest.
fn write_scenes(dir: &Path) -> PathBuf {
    let mut manifest = String::new();
    for (s, (bg, caption)) in [
        ([200u8, 40, 40], "a red wall"),
        ([40, 40, 200], "a blue sky"),
    ]
    .iter()
    .enumerate()
    {
        for k in 0..3u32 {
            let img = image::RgbImage::from_fn(64, 64, |x, y| {
                image::Rgb(if (x + y + k * 5) % 16 < 4 {
                    [255, 255, 255]
                } else {
                    *bg
                })
            });
            let name = format!("scene{s}_{k}.png");
            img.save(dir.join(&name)).unwrap();
            manifest.push_str(&format!(
                "{{\"image\": \"{name}\", \"caption\": \"{caption}\"}}\n"
            ));
        }
    }
    manifest.push_str("{\"image\": \"scene0_0.png\", \"caption\": \"a wall in red\"}\n");
    let path = dir.join("captions.jsonl");
    std::fs::write(&path, manifest).unwrap();
    path
}

fn trainer(args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn scores(v: &Value) -> Vec<f64> {
    let mut s: Vec<f64> = v["bleu"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap())
        .collect();
    s.push(v["cider_d"].as_f64().unwrap());
    s
}

#[test]
fn eval_captioner_reports_both_models() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = write_scenes(tmp.path());
    let m = common::root().join("models/blip-tiny");
    let (m, data) = (m.to_str().unwrap(), manifest.to_str().unwrap());
    let run = tmp.path().join("run");
    trainer(&[
        "train-captioner",
        "--model",
        m,
        "--data",
        data,
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--val-fraction",
        "0.3",
        "--seed",
        "3",
        "--lr",
        "1e-2",
        "--quiet",
    ]);
    let rep = tmp.path().join("rep");
    let stdout = trainer(&[
        "eval-captioner",
        "--model",
        m,
        "--adapter",
        run.join("adapter").to_str().unwrap(),
        "--data",
        data,
        "--run",
        run.to_str().unwrap(),
        "--samples",
        "2",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("CIDEr-D") && stdout.contains("tuned"),
        "{stdout}"
    );
    // The run's split: 7 records, 2 held out (seed 3, fraction 0.3).
    assert!(stdout.contains("fraction 0.3, seed 3"), "{stdout}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["tuned_kind"], "adapter");
    for key in ["base", "tuned_scores"] {
        for s in scores(&json[key]) {
            assert!((0.0..=10.0).contains(&s), "{key}: {s}");
        }
    }
    let html = std::fs::read_to_string(rep.join("report.html")).unwrap();
    let samples = json["samples"].as_array().unwrap();
    assert!(!samples.is_empty() && samples.len() <= 2);
    for s in samples {
        let image = s["image"].as_str().unwrap();
        let name = Path::new(image).file_name().unwrap().to_str().unwrap();
        assert!(html.contains(name), "{name}");
        let thumb = s["thumbnail"].as_str().unwrap();
        assert!(html.contains(&format!("src=\"{thumb}\"")), "{thumb}");
        let bytes = std::fs::read(rep.join(thumb)).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "{thumb} is a JPEG");
        assert!(!s["references"].as_array().unwrap().is_empty());
    }
    assert!(html.contains("<svg") && html.contains("captioning cross-entropy"));

    // The same model on both sides scores the same, on every image.
    let rep2 = tmp.path().join("rep2");
    trainer(&[
        "eval-captioner",
        "--model",
        m,
        "--tuned",
        m,
        "--data",
        data,
        "--all",
        "--report",
        rep2.to_str().unwrap(),
    ]);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(rep2.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["images"], 6);
    assert_eq!(scores(&json["base"]), scores(&json["tuned_scores"]));
    let samples = json["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 6);
    // scene0_0.png has both of its captions as references.
    assert_eq!(samples[0]["references"].as_array().unwrap().len(), 2);
    for s in samples {
        assert_eq!(s["base"], s["tuned"]);
    }
}

/// Beam search goes through the daemon's ONNX captioner; it needs --tuned.
#[test]
fn beams_need_a_tuned_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = write_scenes(tmp.path());
    let m = common::root().join("models/blip-tiny");
    let (m, data) = (m.to_str().unwrap(), manifest.to_str().unwrap());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "eval-captioner",
            "--model",
            m,
            "--adapter",
            tmp.path().to_str().unwrap(),
            "--data",
            data,
            "--beams",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tuned"));
    let stdout = trainer(&[
        "eval-captioner",
        "--model",
        m,
        "--tuned",
        m,
        "--data",
        data,
        "--all",
        "--beams",
        "2",
    ]);
    assert!(stdout.contains("beam search, 2 beams"), "{stdout}");
}
