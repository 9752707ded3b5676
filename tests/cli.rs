//! `roadrep tag` as a user runs it: output, exit codes, one-line errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{copy_dir, realdata, root, tiny_model_dir};

const SETS: [&str; 4] = ["weather", "time_of_day", "scene", "road_surface"];

use common::roadrep;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fixture_images() -> Vec<String> {
    let dir = root().join("tests/fixtures/clip-tiny/images");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    v.sort();
    v
}

/// Asserts a failure with exactly one stderr line that mentions every needle.
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert!(
        !o.status.success(),
        "expected failure, got {:?}\n{}",
        o.status,
        stdout(o)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{err}");
    for n in needles {
        assert!(lines[0].contains(n), "'{}' should mention {n}", lines[0]);
    }
}

#[test]
fn tags_every_image_on_one_line_each() {
    let cache = tempfile::tempdir().unwrap();
    let images = fixture_images();
    let mut args = vec!["tag"];
    args.extend(images.iter().map(String::as_str));
    let o = roadrep(&args, cache.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), images.len(), "{out}");
    for (line, image) in lines.iter().zip(&images) {
        assert!(line.starts_with(image.as_str()), "{line}");
        for set in SETS {
            assert!(line.contains(&format!("{set}=")), "{line}");
        }
    }
}

#[test]
fn json_output_has_every_score_and_matches_the_reference() {
    let cache = tempfile::tempdir().unwrap();
    let images = fixture_images();
    let mut args = vec!["tag", "--json"];
    args.extend(images.iter().map(String::as_str));
    let o = roadrep(&args, cache.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let tagged: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/fixtures/clip-tiny/reference.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tagged.len(), images.len());
    for t in &tagged {
        let file = Path::new(t["image"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let want = reference["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(file))
            .unwrap();
        let tags = t["tags"].as_object().unwrap();
        assert_eq!(
            tags.keys().map(String::as_str).collect::<Vec<_>>(),
            SETS,
            "sets in label-file order"
        );
        for (set, v) in tags {
            let scores = v["scores"].as_object().unwrap();
            let sum: f64 = scores.values().map(|p| p.as_f64().unwrap()).sum();
            assert!((sum - 1.0).abs() < 1e-5, "{set} sums to {sum}");
            assert_eq!(v["top"], want["tags"][set]["top"], "{file} {set}");
        }
    }
}

#[test]
fn tags_all_six_realdata_frames() {
    let Some(realdata) = realdata() else {
        eprintln!("skipped: ../shared/realdata is absent");
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let mut frames: Vec<String> = std::fs::read_dir(realdata.join("bdd100k_yolop"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| p.display().to_string())
        .collect();
    frames.sort();
    assert_eq!(frames.len(), 6);
    let mut args = vec!["tag"];
    args.extend(frames.iter().map(String::as_str));
    let o = roadrep(&args, cache.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 6, "{}", stdout(&o));
}

#[test]
fn a_file_that_is_not_an_image_fails_alone() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.jpg");
    std::fs::write(&bad, "this is text, not a JPEG").unwrap();
    let good = fixture_images().remove(0);
    let o = roadrep(&["tag", bad.to_str().unwrap(), &good], cache.path());
    assert_one_line_error(&o, &["notes.jpg", "not an image"]);
    assert_eq!(
        stdout(&o).lines().count(),
        1,
        "the good image is still tagged"
    );
    assert!(stdout(&o).starts_with(&good));
}

/// Only the files a run uses are read: the text encoder is checked and
/// opened on its first use (a replay whose label embeddings are cached never
/// needs it), and the INT8 encoder only when it runs.
#[test]
fn the_text_encoder_opens_on_first_use_and_unused_encoders_are_not_read() {
    use roadrep::models::{ClipModel, ClipOptions, ImagePrecision};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&tiny_model_dir(), &model);
    for file in ["text_encoder.onnx", "image_encoder.int8.onnx"] {
        let path = model.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let options = |precision| ClipOptions {
        precision,
        intra_threads: 1,
        load_text_encoder: true,
        verified_files_dir: None,
    };
    let runtime = common::runtime();
    let clip = ClipModel::load(&model, &runtime, &options(ImagePrecision::Fp32)).unwrap();
    assert!(!clip.text_encoder_open());
    assert!(!clip.tokenize("a foggy road").unwrap().is_empty());
    let err = clip
        .get_text_features(&["a foggy road"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("text_encoder.onnx") && err.contains("does not match its manifest"),
        "{err}"
    );
    assert!(!clip.text_encoder_open());

    let err = ClipModel::load(&model, &runtime, &options(ImagePrecision::Int8))
        .unwrap_err()
        .to_string();
    assert!(err.contains("image_encoder.int8.onnx"), "{err}");

    std::fs::copy(
        tiny_model_dir().join("text_encoder.onnx"),
        model.join("text_encoder.onnx"),
    )
    .unwrap();

    // With a record of verified files: a file damaged after it was
    // recorded is still found out (its write changed its stamp).
    let cache = dir.path().join("cache");
    let recorded = ClipOptions {
        verified_files_dir: Some(cache.clone()),
        ..options(ImagePrecision::Fp32)
    };
    ClipModel::load(&model, &runtime, &recorded).unwrap();
    assert!(cache.join("verified-model-files.json").is_file());
    let encoder = model.join("image_encoder.onnx");
    let mut bytes = std::fs::read(&encoder).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&encoder, bytes).unwrap();
    let err = ClipModel::load(&model, &runtime, &recorded)
        .unwrap_err()
        .to_string();
    assert!(err.contains("image_encoder.onnx"), "{err}");
    std::fs::copy(tiny_model_dir().join("image_encoder.onnx"), &encoder).unwrap();
    let text = clip.get_text_features(&["a foggy road"]).unwrap();
    assert!(clip.text_encoder_open());
    let reference = common::load_tiny(ImagePrecision::Fp32)
        .get_text_features(&["a foggy road"])
        .unwrap();
    assert_eq!(text, reference);
}

#[test]
fn missing_or_corrupt_model_directories_are_named() {
    let cache = tempfile::tempdir().unwrap();
    let img = fixture_images().remove(0);
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("no-such-model");
    let o = roadrep(
        &["tag", "--model", missing.to_str().unwrap(), &img],
        cache.path(),
    );
    assert_one_line_error(&o, &["no-such-model", "does not exist"]);

    let corrupt = dir.path().join("corrupt");
    copy_dir(&tiny_model_dir(), &corrupt);
    let onnx = corrupt.join("image_encoder.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&onnx, bytes).unwrap();
    let o = roadrep(
        &["tag", "--model", corrupt.to_str().unwrap(), &img],
        cache.path(),
    );
    assert_one_line_error(&o, &["image_encoder.onnx", "does not match its manifest"]);

    let incomplete = dir.path().join("incomplete");
    copy_dir(&tiny_model_dir(), &incomplete);
    std::fs::remove_file(incomplete.join("tokenizer.json")).unwrap();
    let o = roadrep(
        &["tag", "--model", incomplete.to_str().unwrap(), &img],
        cache.path(),
    );
    assert_one_line_error(&o, &["tokenizer", "tokenizer.json", "missing"]);

    let no_manifest = dir.path().join("no-manifest");
    copy_dir(&tiny_model_dir(), &no_manifest);
    std::fs::remove_file(no_manifest.join("manifest.toml")).unwrap();
    let o = roadrep(
        &["tag", "--model", no_manifest.to_str().unwrap(), &img],
        cache.path(),
    );
    assert_one_line_error(&o, &["manifest.toml", "not found"]);
}

#[test]
fn a_manifest_that_disagrees_with_the_graph_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("renamed");
    copy_dir(&tiny_model_dir(), &model);
    let manifest = model.join("manifest.toml");
    let text =
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replacen("\"pixel_values\"", "\"pixels\"", 1);
    std::fs::write(&manifest, text).unwrap();
    let o = roadrep(
        &[
            "tag",
            "--model",
            model.to_str().unwrap(),
            &fixture_images()[0],
        ],
        cache.path(),
    );
    assert_one_line_error(&o, &["image_encoder.onnx", "pixel_values"]);
}

#[test]
fn a_label_set_with_an_empty_class_is_named() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.toml");
    std::fs::write(&labels, "[weather]\ntemplates = [\"a {} day\"]\n[weather.classes]\nclear = [\"clear\"]\nfoggy = []\n").unwrap();
    let o = roadrep(
        &[
            "tag",
            "--labels",
            labels.to_str().unwrap(),
            &fixture_images()[0],
        ],
        cache.path(),
    );
    assert_one_line_error(&o, &["labels.toml", "weather", "foggy", "empty"]);
}

#[test]
fn a_missing_onnxruntime_library_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(["tag", &fixture_images()[0]])
        .current_dir(root())
        .env("XDG_CACHE_HOME", cache.path())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_one_line_error(&o, &["/nonexistent/libonnxruntime.so", "onnxruntime"]);
}

#[test]
fn a_config_with_an_unknown_key_names_it() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roadrep.toml");
    std::fs::write(&config, "[models]\nclip = \"x\"\nbatch = 4\n").unwrap();
    let o = roadrep(
        &["-c", config.to_str().unwrap(), "tag", &fixture_images()[0]],
        cache.path(),
    );
    assert_one_line_error(&o, &["roadrep.toml", "batch"]);
}

#[test]
fn class_embeddings_are_cached_between_runs() {
    let cache = tempfile::tempdir().unwrap();
    let img = fixture_images().remove(0);
    let first = roadrep(&["tag", "--json", &img], cache.path());
    assert!(first.status.success(), "{}", stderr(&first));
    let mut entries: Vec<String> = std::fs::read_dir(cache.path().join("roadrep"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    // The class embeddings, and the record of the model files hashed.
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[0].starts_with("text-embeddings-"), "{entries:?}");
    assert_eq!(entries[1], "verified-model-files.json");
    let second = roadrep(&["tag", "--json", "-v", &img], cache.path());
    assert!(stderr(&second).contains("Cache"), "{}", stderr(&second));
    assert_eq!(stdout(&first), stdout(&second));
    let uncached = roadrep(&["tag", "--json", "--no-cache", "-v", &img], cache.path());
    assert!(
        stderr(&uncached).contains("Computed"),
        "{}",
        stderr(&uncached)
    );
}

/// `bench precision` tags every image with both image encoders and counts
/// where their top classes agree; a path that does not exist is named.
#[test]
fn bench_precision_compares_int8_with_fp32_on_every_image() {
    let cache = tempfile::tempdir().unwrap();
    let images = root().join("tests/fixtures/clip-tiny/images");
    let model = tiny_model_dir();
    let o = roadrep(
        &[
            "bench",
            "precision",
            "--json",
            "--model",
            model.to_str().unwrap(),
            images.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = fixture_images().len() as u64;
    assert_eq!(report["images"], n);
    let sets = report["sets"].as_array().unwrap();
    let names: Vec<&str> = sets.iter().map(|s| s["set"].as_str().unwrap()).collect();
    assert_eq!(names, SETS);
    for s in sets {
        assert_eq!(s["images"], n);
        assert!(s["agree"].as_u64().unwrap() <= n);
    }
    let cos = report["embedding_cosine_min"].as_f64().unwrap();
    assert!(cos > 0.99 && cos <= 1.0 + 1e-6, "{cos}");

    let o = roadrep(
        &[
            "bench",
            "precision",
            "--model",
            model.to_str().unwrap(),
            "no/such/dir",
        ],
        cache.path(),
    );
    assert_one_line_error(&o, &["no/such/dir"]);
}

/// `bench rig` times CLIP per view and fusion per record in one run and
/// replays a two-camera rig through the pipeline: every anchor frame gives
/// one record, and each record's assembly wait is counted.
#[test]
fn bench_rig_reports_fusion_next_to_clip_and_one_record_per_anchor_frame() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (front, back) = (dir.path().join("front.mp4"), dir.path().join("back.mp4"));
    common::make_clip(&front, 50, 25, 160, 120, "smpte");
    common::make_clip(&back, 50, 25, 160, 120, "snow");
    let model = tiny_model_dir();
    let fusion = root().join("models/fusion-tiny");
    let (front_arg, back_arg) = (
        format!("front={}", front.display()),
        format!("back={}", back.display()),
    );
    let o = roadrep(
        &[
            "bench",
            "rig",
            "--json",
            "--model",
            model.to_str().unwrap(),
            "--fusion",
            fusion.to_str().unwrap(),
            "--views",
            "3",
            "--records",
            "4",
            "--batch",
            "2",
            "--reps",
            "1",
            "--replay-runs",
            "1",
            "--clips",
            &front_arg,
            "--clips",
            &back_arg,
        ],
        cache.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let positive = |v: &serde_json::Value| v.as_f64().is_some_and(|x| x > 0.0);
    let b = &report["batches"][0];
    assert_eq!(b["batch"], 2);
    for key in [
        "clip_ms_per_view",
        "fusion_ms_per_record",
        "fusion_partial_ms_per_record",
    ] {
        assert!(positive(&b[key]["median"]), "{key}: {b}");
        assert!(b[key]["p95"].as_f64() >= b[key]["median"].as_f64(), "{b}");
    }
    assert!(positive(&b["fusion_over_clip"]), "{b}");
    let replays = report["replays"].as_array().unwrap();
    assert_eq!(replays.len(), 3);
    assert_eq!(replays[0]["warmup"], true);
    let (plain, rig) = (&replays[1], &replays[2]);
    assert_eq!(
        (plain["rig"].as_bool(), rig["rig"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(plain["records"], 0);
    // 2 s at 2 fps: 4 anchor frames, each one record.
    assert_eq!(rig["anchor_frames"], 4);
    assert_eq!(rig["records"], rig["anchor_frames"]);
    assert_eq!(rig["frames"], 8);
    assert_eq!(report["assembly_wait_ms"]["samples"], 4);
    assert!(positive(&rig["fusion_s"]), "{rig}");
    assert_eq!(plain["fusion_s"], 0.0);
    assert!(positive(&rig["secs"]) && positive(&report["rig_over_plain"]));
}
