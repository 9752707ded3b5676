//! `trainer autocaption`: BLIP captions of an image set as a training
//! manifest, resumable (`--limit`, a torn last line), bad images named and
//! skipped.
#![cfg(feature = "trainer")]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(common::root())
        .env_remove("ROADREP_CONFIG")
        .output()
        .expect("run trainer")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn resumes_without_duplicates_and_skips_a_bad_image() {
    const N: usize = 7;
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    for i in 0..N {
        let folder = if i % 2 == 0 {
            images.clone()
        } else {
            images.join("sub")
        };
        let shade = (i * 30) as u8;
        image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([shade, (x * 4) as u8, (y * 5) as u8])
        })
        .save(folder.join(format!("img{i}.png")))
        .unwrap();
    }
    std::fs::write(images.join("broken.jpg"), "no image here").unwrap();
    let out = dir.path().join("out/captions.jsonl");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "autocaption",
            "--images",
            images.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            "models/blip-tiny",
            "--batch",
            "3",
        ];
        a.extend_from_slice(extra);
        trainer(&a)
    };

    // --limit counts the images tried: broken.jpg sorts first and takes
    // one of the three.
    let first = run(&["--limit", "3"]);
    let stdout = ok(&first);
    assert!(stdout.contains("captioned 2 images"), "{stdout}");
    assert!(stdout.contains("1 bad skipped"), "{stdout}");
    assert!(stdout.contains("5 left for the next run"), "{stdout}");
    assert_eq!(records(&out).len(), 2);

    // A run killed mid-line leaves a torn line: the next run cuts it off.
    let mut text = std::fs::read_to_string(&out).unwrap();
    text.push_str("{\"image\": \"../images/img5.png\", \"capt");
    std::fs::write(&out, text).unwrap();

    let second = run(&[]);
    let stdout = ok(&second);
    assert!(
        stdout.contains(&format!("captioned {} images", N - 2)),
        "{stdout}"
    );
    assert!(stdout.contains("2 already in"), "{stdout}");
    assert!(stdout.contains("1 bad skipped"), "{stdout}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("broken.jpg") && stderr.contains("not an image"),
        "{stderr}"
    );

    let recs = records(&out);
    assert_eq!(recs.len(), N);
    let fingerprint = roadrep::models::blip::BlipManifest::read_verified(
        &common::root().join("models/blip-tiny"),
    )
    .unwrap()
    .fingerprint;
    let mut seen = HashSet::new();
    for r in &recs {
        let image = r["image"].as_str().unwrap();
        assert!(image.starts_with("../images/"), "{r}");
        assert!(out.parent().unwrap().join(image).is_file(), "{r}");
        assert!(seen.insert(image.to_string()), "twice: {image}");
        assert!(!r["caption"].as_str().unwrap().trim().is_empty());
        assert_eq!(r["model"].as_str().unwrap(), fingerprint);
    }

    // Nothing left: a third run writes nothing.
    let stdout = ok(&run(&["--quiet"]));
    assert!(stdout.contains("captioned 0 images"), "{stdout}");
    assert_eq!(records(&out).len(), N);

    // The output is a manifest `trainer train` reads.
    let samples = roadrep::trainer::dataset::read_jsonl(&out).unwrap();
    assert_eq!(samples.len(), N);
}
