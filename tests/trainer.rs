//! The trainer against the daemon's ONNX Runtime path: candle forward parity,
//! exact LoRA merges, and data loading errors with line numbers.
#![cfg(feature = "trainer")]

mod common;

use candle_core::{Device, Tensor};
use roadrep::models::{ClipModel, ClipOptions, ImagePrecision, ModelManifest, RgbFrame};
use roadrep::trainer::clip::{CandleClip, Forward, read_initializers};
use roadrep::trainer::dataset::{self, OnBadRecord};
use roadrep::trainer::lora::{LoraAdapter, LoraConfig};
use roadrep::trainer::merge::merge_into;
use roadrep::trainer::rng::SplitMix64;
use roadrep::trainer::tokens::ClipTokenizer;

const TOLERANCE: f32 = 1e-4;

/// Image and text embeddings, one row each.
type Embeds = (Vec<Vec<f32>>, Vec<Vec<f32>>);

const TEXTS: [&str; 4] = [
    "a photo of a cat",
    "a dashcam photo of a road at night.",
    "It is a night scene in rainy weather on a highway road. There are 3 cars.",
    "x",
];

fn fixture_images() -> Vec<image::RgbImage> {
    let dir = common::root().join("tests/fixtures/clip-tiny/images");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| image::open(p).unwrap().to_rgb8())
        .collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn rows(a: &ndarray::Array2<f32>) -> Vec<Vec<f32>> {
    a.outer_iter().map(|r| r.to_vec()).collect()
}

/// The float initializers of both encoders of `a` and `b` are the same,
/// bit for bit.
fn assert_same_initializers(a: &std::path::Path, b: &std::path::Path) {
    for file in ["image_encoder.onnx", "text_encoder.onnx"] {
        let x = read_initializers(&a.join(file), &Device::Cpu).unwrap();
        let y = read_initializers(&b.join(file), &Device::Cpu).unwrap();
        assert_eq!(x.len(), y.len());
        for ((nx, tx), (ny, ty)) in x.iter().zip(&y) {
            assert_eq!(nx, ny);
            let (vx, vy) = (
                tx.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                ty.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(
                vx.iter().zip(&vy).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{file}: {nx} differs"
            );
        }
    }
}

/// Stand-in for a trained adapter: every B random, large enough to move the
/// embeddings well beyond the tolerance.
fn randomise_b(adapter: &LoraAdapter, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for pair in adapter.pairs.values() {
        let n = pair.b.as_tensor().elem_count();
        let v: Vec<f32> = (0..n).map(|_| rng.next_f32() - 0.5).collect();
        pair.b
            .set(&Tensor::from_vec(v, pair.b.as_tensor().shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn load_ort(dir: &std::path::Path) -> ClipModel {
    let options = ClipOptions {
        precision: ImagePrecision::Fp32,
        intra_threads: 1,
        load_text_encoder: true,
        verified_files_dir: None,
    };
    ClipModel::load(dir, &common::runtime(), &options).expect("daemon loads the directory")
}

/// ORT and candle embeddings of the fixture images and [`TEXTS`].
fn both(
    ort_dir: &std::path::Path,
    candle: &CandleClip,
    adapter: Option<&LoraAdapter>,
) -> (Embeds, Embeds) {
    let ort = load_ort(ort_dir);
    let images = fixture_images();
    let frames: Vec<RgbFrame<'_>> = images.iter().map(RgbFrame::from_image).collect();
    let pixels = ort.preprocess(&frames).unwrap();
    let ort_img = rows(&ort.get_image_features(pixels.view()).unwrap());
    let ort_txt = rows(&ort.get_text_features(&TEXTS).unwrap());

    let fwd = Forward {
        adapter,
        dropout: None,
    };
    let px = Tensor::from_vec(
        pixels.iter().copied().collect::<Vec<f32>>(),
        pixels.shape(),
        &Device::Cpu,
    )
    .unwrap();
    let c_img = candle
        .get_image_features(&px, fwd)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let manifest = ModelManifest::read_verified(ort_dir).unwrap();
    let tok = ClipTokenizer::from_model_dir(ort_dir, &manifest).unwrap();
    // Token ids must match the daemon's tokenizer.
    for t in TEXTS {
        assert_eq!(tok.encode(t).unwrap(), ort.tokenize(t).unwrap(), "{t}");
    }
    let ids = tok.batch_texts(&TEXTS, &Device::Cpu).unwrap();
    let c_txt = candle
        .get_text_features(&ids, fwd)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    ((ort_img, ort_txt), (c_img, c_txt))
}

#[test]
fn candle_forward_matches_onnxruntime() {
    let dir = common::tiny_model_dir();
    let candle = CandleClip::load(&dir, &Device::Cpu).unwrap();
    let ((oi, ot), (ci, ct)) = both(&dir, &candle, None);
    let (di, dt) = (max_abs_diff(&oi, &ci), max_abs_diff(&ot, &ct));
    eprintln!("max abs diff: image {di:e}, text {dt:e}");
    assert!(di < TOLERANCE, "image max |diff| {di}");
    assert!(dt < TOLERANCE, "text max |diff| {dt}");
    // The embeddings are not trivially equal (e.g. all zero).
    assert!(oi[0].iter().any(|v| v.abs() > 1e-3));
    assert!(max_abs_diff(&oi[..1], &oi[1..2]) > 1e-3);
}

#[test]
fn zero_adapter_merge_is_bit_identical() {
    let dir = common::tiny_model_dir();
    let candle = CandleClip::load(&dir, &Device::Cpu).unwrap();
    // A fresh adapter has B = 0: its update is exactly zero.
    let adapter =
        LoraAdapter::new(LoraConfig::default(), &candle.base, candle.logit_scale, 1).unwrap();
    let out = tempfile::tempdir().unwrap();
    let merged_dir = out.path().join("merged");
    let outcome = merge_into(&dir, &adapter, &merged_dir, "clip-tiny-zero").unwrap();
    assert!(outcome.changed.is_empty(), "{:?}", outcome.changed);
    // Same bytes, so the same embedding space.
    for file in ["image_encoder.onnx", "text_encoder.onnx"] {
        assert!(
            std::fs::read(dir.join(file)).unwrap() == std::fs::read(merged_dir.join(file)).unwrap(),
            "{file} differs"
        );
    }
    let base_manifest = ModelManifest::read(&dir).unwrap();
    assert_eq!(outcome.fingerprint, base_manifest.fingerprint);
    assert_same_initializers(&dir, &merged_dir);
    let base = load_ort(&dir);
    let merged = load_ort(&merged_dir);
    let texts = ["a red square", "a photo of a road"];
    assert_eq!(
        base.get_text_features(&texts).unwrap(),
        merged.get_text_features(&texts).unwrap()
    );
    let images = fixture_images();
    let frames: Vec<RgbFrame<'_>> = images.iter().map(RgbFrame::from_image).collect();
    let px = base.preprocess(&frames).unwrap();
    assert_eq!(
        base.get_image_features(px.view()).unwrap(),
        merged.get_image_features(px.view()).unwrap()
    );
    assert_eq!(merged.logit_scale(), base.logit_scale());
    assert!(!merged.manifest().files.contains_key("image_encoder_int8"));
}

#[test]
fn trained_adapter_merge_matches_candle() {
    let dir = common::tiny_model_dir();
    let candle = CandleClip::load(&dir, &Device::Cpu).unwrap();
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..Default::default()
    };
    let adapter = LoraAdapter::new(config, &candle.base, candle.logit_scale, 2).unwrap();
    randomise_b(&adapter, 9);
    // Save and reload: the merge works from what is on disk.
    let out = tempfile::tempdir().unwrap();
    adapter.save(&out.path().join("adapter")).unwrap();
    let adapter = LoraAdapter::load(&out.path().join("adapter"), &candle.base).unwrap();
    let merged_dir = out.path().join("merged");
    let outcome = merge_into(&dir, &adapter, &merged_dir, "clip-tiny-lora").unwrap();
    assert_eq!(
        outcome.changed.len(),
        16,
        "4 projections x 2 layers x 2 towers"
    );
    let base_fp = ModelManifest::read(&dir).unwrap().fingerprint;
    assert_ne!(outcome.fingerprint, base_fp);

    let ((oi, ot), (ci, ct)) = both(&merged_dir, &candle, Some(&adapter));
    let (di, dt) = (max_abs_diff(&oi, &ci), max_abs_diff(&ot, &ct));
    eprintln!("max abs diff: image {di:e}, text {dt:e}");
    assert!(di < TOLERANCE, "image max |diff| {di}");
    assert!(dt < TOLERANCE, "text max |diff| {dt}");
    // ...and the adapter really changed the model.
    let (_, (bi, bt)) = both(&dir, &candle, None);
    assert!(max_abs_diff(&bi, &ci) > 1e-2);
    assert!(max_abs_diff(&bt, &ct) > 1e-2);

    // The optional INT8 variant of the merged model: derived by
    // models/modeldir.py, recorded in the manifest, same fingerprint, and it
    // approximates the merged fp32 encoder (not the base's).
    let python = common::root().join(".venv/bin/python");
    let status = std::process::Command::new(&python)
        .arg(common::root().join("models/modeldir.py"))
        .arg("int8")
        .arg(&merged_dir)
        .status()
        .expect("the .venv python (make setup)");
    assert!(status.success());
    let manifest = ModelManifest::read_verified(&merged_dir).unwrap();
    assert_eq!(manifest.fingerprint, outcome.fingerprint);
    let int8 = ClipModel::load(
        &merged_dir,
        &common::runtime(),
        &ClipOptions {
            precision: ImagePrecision::Int8,
            intra_threads: 1,
            load_text_encoder: false,
            verified_files_dir: None,
        },
    )
    .unwrap();
    let fp32 = load_ort(&merged_dir);
    let img = image::open(common::root().join("tests/fixtures/clip-tiny/images/road_1280x720.png"))
        .unwrap()
        .into_rgb8();
    let frame = roadrep::models::RgbFrame::from_image(&img);
    let (a, b) = (
        fp32.embed_frames(&[frame]).unwrap(),
        int8.embed_frames(&[frame]).unwrap(),
    );
    let base = load_ort(&dir).embed_frames(&[frame]).unwrap();
    let cos = |x: ndarray::ArrayView1<f32>, y: ndarray::ArrayView1<f32>| {
        x.dot(&y) / (x.dot(&x).sqrt() * y.dot(&y).sqrt())
    };
    assert!(
        cos(a.row(0), b.row(0)) > cos(base.row(0), b.row(0)),
        "INT8 follows the merged weights"
    );
    assert!(cos(a.row(0), b.row(0)) > 0.98);
}

fn write_png(path: &std::path::Path, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(64, 48, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

#[test]
fn bad_records_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_png(&d.join("ok.png"), [200, 10, 10]);
    std::fs::write(d.join("corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let jsonl = d.join("data.jsonl");
    std::fs::write(
        &jsonl,
        "{\"image\": \"ok.png\", \"caption\": \"a red square\", \"labels\": {\"color\": \"red\"}}\n\
         {\"image\": \"missing.png\", \"caption\": \"a blue square\"}\n\
         \n\
         {\"image\": \"corrupt.png\", \"caption\": \"a green square\"}\n",
    )
    .unwrap();
    let csv = d.join("data.csv");
    std::fs::write(
        &csv,
        "image,caption,labels\nmissing.png,a blue square,\nok.png,\"a red, square\",color=red\n",
    )
    .unwrap();
    let pre = ModelManifest::read(&common::tiny_model_dir())
        .unwrap()
        .image_preprocessor(&common::tiny_model_dir())
        .unwrap();
    let samples = dataset::read_samples(&jsonl, Default::default(), None, &[]).unwrap();
    assert_eq!(samples.len(), 3);
    let loaded = dataset::load_images(samples.clone(), &pre, OnBadRecord::Skip).unwrap();
    assert_eq!(loaded.samples.len(), 1);
    assert_eq!(loaded.samples[0].labels["color"], "red");
    assert_eq!(loaded.skipped.len(), 2);
    assert!(
        loaded.skipped[0].contains("data.jsonl' line 2"),
        "{}",
        loaded.skipped[0]
    );
    assert!(loaded.skipped[0].contains("missing.png"));
    assert!(
        loaded.skipped[1].contains("line 4"),
        "{}",
        loaded.skipped[1]
    );
    let err = dataset::load_images(samples, &pre, OnBadRecord::Fail).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");

    let samples = dataset::read_samples(&csv, Default::default(), None, &[]).unwrap();
    assert_eq!(samples[1].caption, "a red, square");
    let err = dataset::load_images(samples, &pre, OnBadRecord::Fail).unwrap_err();
    assert!(err.to_string().contains("data.csv' line 2"), "{err}");

    // A malformed record is an error naming its line.
    std::fs::write(
        &jsonl,
        "{\"image\": \"ok.png\", \"caption\": \"x\"}\n{\"image\": 3}\n",
    )
    .unwrap();
    let err = dataset::read_samples(&jsonl, Default::default(), None, &[]).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn bdd100k_labels_and_class_folders_give_captions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let labels = d.join("bdd100k_labels_images_val.json");
    std::fs::write(
        &labels,
        r#"[{"name": "b1.jpg",
             "attributes": {"weather": "rainy", "scene": "highway", "timeofday": "night"},
             "labels": [
               {"category": "car", "attributes": {"occluded": false, "truncated": false, "trafficLightColor": "none"}},
               {"category": "car", "attributes": {"occluded": false, "truncated": false, "trafficLightColor": "none"}},
               {"category": "car", "attributes": {"occluded": false, "truncated": false, "trafficLightColor": "none"}},
               {"category": "traffic light", "attributes": {"occluded": false, "truncated": false, "trafficLightColor": "yellow"}},
               {"category": "traffic light", "attributes": {"occluded": false, "truncated": false, "trafficLightColor": "red"}},
               {"category": "person", "attributes": {"occluded": false, "truncated": true, "trafficLightColor": "none"}},
               {"category": "drivable area", "poly2d": []}]},
            {"name": "b2.jpg",
             "attributes": {"weather": "clear", "scene": "city street", "timeofday": "daytime"},
             "labels": []}]"#,
    )
    .unwrap();
    let s = dataset::read_samples(&labels, Default::default(), Some(d), &[]).unwrap();
    assert_eq!(
        s[0].caption,
        "It is a night scene in rainy weather on a highway road. The traffic light is red. \
         There are 3 cars. There is one truncated pedestrian. There are 2 traffic lights."
    );
    assert_eq!(s[0].image, d.join("b1.jpg"));
    assert_eq!(s[0].labels["time_of_day"], "night");
    assert_eq!(
        s[1].caption,
        "It is a daytime scene in clear weather on a city street."
    );
    assert_eq!(s[1].labels["scene"], "city_street");

    let root = d.join("signs");
    for class in ["stop_sign", "speed-limit"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        write_png(&root.join(class).join("1.png"), [1, 2, 3]);
        write_png(&root.join(class).join("2.png"), [1, 2, 3]);
    }
    let templates = vec![
        "a photo of a {}.".to_string(),
        "a {} on the road.".to_string(),
    ];
    let s = dataset::read_samples(&root, Default::default(), None, &templates).unwrap();
    let captions: Vec<&str> = s.iter().map(|s| s.caption.as_str()).collect();
    assert_eq!(
        captions,
        [
            "a photo of a speed limit.",
            "a speed limit on the road.",
            "a photo of a stop sign.",
            "a stop sign on the road."
        ]
    );
    assert_eq!(s[0].labels["class"], "speed-limit");
}

/// Full-size exports keep the encoders' weights in `.onnx.data` files (ORT
/// then holds them once). Such a directory embeds exactly as the inline
/// one, the trainer reads the same weights, a merge writes the same layout,
/// and a damaged data file is named.
#[test]
fn external_weights_embed_train_and_merge_as_inline_ones() {
    let tiny = common::tiny_model_dir();
    let out = tempfile::tempdir().unwrap();
    let ext = out.path().join("external");
    common::copy_dir(&tiny, &ext);
    let status = std::process::Command::new(common::root().join(".venv/bin/python"))
        .arg(common::root().join("models/modeldir.py"))
        .arg("external")
        .arg(&ext)
        .status()
        .expect("the .venv python (make setup)");
    assert!(status.success());
    let manifest = ModelManifest::read_verified(&ext).unwrap();
    for (role, file) in [
        ("image_encoder_data", "image_encoder.onnx.data"),
        ("text_encoder_data", "text_encoder.onnx.data"),
    ] {
        assert_eq!(manifest.files[role].path, file);
        let (graph, data) = (
            std::fs::metadata(ext.join(file.trim_end_matches(".data"))).unwrap(),
            std::fs::metadata(ext.join(file)).unwrap(),
        );
        assert!(data.len() > graph.len(), "{file}: the weights moved");
    }
    assert_ne!(
        manifest.fingerprint,
        ModelManifest::read(&tiny).unwrap().fingerprint
    );

    // The daemon's runtime: the same embeddings, bit for bit.
    let images = fixture_images();
    let frames: Vec<RgbFrame<'_>> = images.iter().map(RgbFrame::from_image).collect();
    let (a, b) = (load_ort(&tiny), load_ort(&ext));
    assert_eq!(
        a.embed_frames(&frames).unwrap(),
        b.embed_frames(&frames).unwrap()
    );
    assert_eq!(
        a.get_text_features(&TEXTS).unwrap(),
        b.get_text_features(&TEXTS).unwrap()
    );
    // The trainer: the same initializers.
    assert_same_initializers(&tiny, &ext);

    // A merge writes the base's layout and the merged weights of the
    // inline base.
    let candle = CandleClip::load(&ext, &Device::Cpu).unwrap();
    let adapter =
        LoraAdapter::new(LoraConfig::default(), &candle.base, candle.logit_scale, 3).unwrap();
    randomise_b(&adapter, 5);
    let (merged_ext, merged_inline) = (out.path().join("m-ext"), out.path().join("m-inline"));
    let outcome = merge_into(&ext, &adapter, &merged_ext, "ext-lora").unwrap();
    merge_into(&tiny, &adapter, &merged_inline, "inline-lora").unwrap();
    assert!(!outcome.changed.is_empty());
    let merged_manifest = ModelManifest::read_verified(&merged_ext).unwrap();
    assert!(merged_manifest.files.contains_key("image_encoder_data"));
    let (x, y) = (load_ort(&merged_ext), load_ort(&merged_inline));
    assert_eq!(
        x.embed_frames(&frames).unwrap(),
        y.embed_frames(&frames).unwrap()
    );
    assert_ne!(
        x.embed_frames(&frames).unwrap(),
        b.embed_frames(&frames).unwrap()
    );

    // A damaged weights file is named when its encoder is opened.
    let data = ext.join("image_encoder.onnx.data");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let options = ClipOptions {
        precision: ImagePrecision::Fp32,
        intra_threads: 1,
        load_text_encoder: true,
        verified_files_dir: None,
    };
    let err = ClipModel::load(&ext, &common::runtime(), &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image_encoder.onnx.data") && err.contains("does not match its manifest"),
        "{err}"
    );
}
