//! `roadrep caption IMAGE...`: one caption per image, in order, with the
//! committed tiny BLIP (`[captions] model` of config/roadrep.toml, or
//! `--model`); batched captions equal one-by-one ones; a non-image is one
//! error line and the others are still captioned.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn lines(out: &std::process::Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (path, caption) = l.split_once('\t').expect("PATH\\tCAPTION");
            (path.to_string(), caption.to_string())
        })
        .collect()
}

fn args<'a>(head: &[&'a str], images: &'a [PathBuf]) -> Vec<&'a str> {
    let mut a = head.to_vec();
    a.extend(images.iter().map(|p| p.to_str().unwrap()));
    a
}

#[test]
fn real_frames_get_one_caption_each_in_order() {
    let Some(realdata) = common::realdata() else {
        eprintln!("skipped: no ../shared/realdata");
        return;
    };
    let mut images: Vec<PathBuf> = std::fs::read_dir(realdata.join("bdd100k_yolop"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    images.sort();
    // Not sorted on the command line: output order is argument order.
    images.reverse();
    assert_eq!(images.len(), 6);
    let cache = tempfile::tempdir().unwrap();

    let out = common::roadrep(&args(&["caption"], &images), cache.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = lines(&out);
    assert_eq!(plain.len(), 6, "{plain:?}");
    for ((path, caption), image) in plain.iter().zip(&images) {
        assert_eq!(Path::new(path), image);
        assert!(!caption.trim().is_empty(), "{path}");
    }

    let out = common::roadrep(&args(&["caption", "--json"], &images), cache.path());
    assert!(out.status.success());
    let json: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.len(), 6);
    for (j, (path, caption)) in json.iter().zip(&plain) {
        assert_eq!(j["image"].as_str().unwrap(), path);
        assert_eq!(j["caption"].as_str().unwrap(), caption);
        assert!(!j["ids"].as_array().unwrap().is_empty());
    }

    // One vision-encoder run for all six equals six runs of one.
    let out = common::roadrep(
        &args(
            &["caption", "--batch", "6", "--model", "models/blip-tiny"],
            &images,
        ),
        cache.path(),
    );
    assert!(out.status.success());
    assert_eq!(lines(&out), plain);
}

#[test]
fn a_non_image_is_one_error_line_and_the_others_are_captioned() {
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for (i, rgb) in [[200u8, 30, 30], [30, 30, 200]].iter().enumerate() {
        let p = dir.path().join(format!("frame{i}.png"));
        image::RgbImage::from_pixel(160, 90, image::Rgb(*rgb))
            .save(&p)
            .unwrap();
        images.push(p);
    }
    let notes = dir.path().join("notes.jpg");
    std::fs::write(&notes, "not a picture").unwrap();
    images.insert(1, notes);

    let out = common::roadrep(
        &args(&["caption", "--beams", "2", "--batch", "4"], &images),
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("notes.jpg"), "{stderr}");
    let plain = lines(&out);
    assert_eq!(plain.len(), 2, "{plain:?}");
    assert!(plain[0].0.ends_with("frame0.png") && plain[1].0.ends_with("frame1.png"));

    // Settings are checked before any model is loaded, naming the field.
    let out = common::roadrep(
        &args(&["caption", "--beams", "0"], &images[..1]),
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("num_beams"));
}

/// `--precision int8` runs the tiny model's INT8 text decoder (its captions
/// against fp32's: tests/caption_int8.rs).
#[test]
fn precision_int8_flag_loads_the_int8_decoder() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("frame.png");
    image::RgbImage::from_pixel(160, 90, image::Rgb([200, 30, 30]))
        .save(&p)
        .unwrap();
    let images = vec![p];
    let fp32 = common::roadrep(
        &args(&["caption", "--precision", "fp32"], &images),
        dir.path(),
    );
    let int8 = common::roadrep(
        &args(&["caption", "--precision", "int8"], &images),
        dir.path(),
    );
    assert!(
        int8.status.success(),
        "{}",
        String::from_utf8_lossy(&int8.stderr)
    );
    assert_eq!(lines(&int8).len(), 1);
    eprintln!("fp32 {:?} int8 {:?}", lines(&fp32), lines(&int8));
}
