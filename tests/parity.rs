//! Numerical parity with the reference implementation (transformers).
//!
//! `models/export.py --tiny --reference-out tests/fixtures/clip-tiny` wrote
//! `reference.json`: token ids from OpenAI's original BPE tokenizer, and
//! preprocessing, embeddings and zero-shot tags computed by transformers
//! (`CLIPImageProcessorPil`, `CLIPModel`) for the committed tiny model.

mod common;

use std::path::PathBuf;

use ndarray::Axis;
use roadrep::models::{ImagePrecision, RgbFrame};
use roadrep::tagging::{ClassEmbeddingSource, LabelSets, SceneTagger, TextEmbeddingCache};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    model_fingerprint: String,
    labels_sha256: String,
    tokens: Vec<TokenRef>,
    text_embeds: Vec<TextRef>,
    images: Vec<ImageRef>,
}

#[derive(Deserialize)]
struct TokenRef {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct TextRef {
    text: String,
    embeds: Vec<f32>,
}

#[derive(Deserialize)]
struct ImageRef {
    file: String,
    source: String,
    original_size: [u32; 2],
    resized_size: [u32; 2],
    crop_rgb_sha256: String,
    pixel_sum: f64,
    pixel_sample_stride: usize,
    pixel_sample: Vec<f32>,
    image_embeds: Vec<f32>,
    tags: serde_json::Map<String, serde_json::Value>,
}

fn reference() -> Reference {
    let path = common::root().join("tests/fixtures/clip-tiny/reference.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Where a reference image lives; `None` for realdata that is absent here.
fn image_path(r: &ImageRef) -> Option<PathBuf> {
    match r.source.as_str() {
        "generated" => Some(
            common::root()
                .join("tests/fixtures/clip-tiny")
                .join(&r.file),
        ),
        "realdata" => common::realdata().map(|d| d.join(&r.file)),
        other => panic!("unknown source {other}"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fixtures_belong_to_the_committed_model_and_labels() {
    let r = reference();
    let model = common::load_tiny(ImagePrecision::Fp32);
    assert_eq!(
        model.fingerprint(),
        r.model_fingerprint,
        "re-run `make fixtures`"
    );
    let labels = std::fs::read(common::root().join("config/labels.toml")).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&labels)),
        r.labels_sha256,
        "labels changed: re-run `make fixtures`"
    );
}

#[test]
fn token_ids_are_identical_to_openai_clip() {
    let r = reference();
    let model = common::load_tiny(ImagePrecision::Fp32);
    assert!(r.tokens.len() > 100);
    for t in &r.tokens {
        assert_eq!(
            model.tokenize(&t.text).unwrap(),
            t.ids,
            "tokens of {:?}",
            t.text
        );
    }
    // The design's anchor example.
    assert_eq!(
        model.tokenize("a photo of a cat").unwrap(),
        [49406, 320, 1125, 539, 320, 2368, 49407]
    );
}

#[test]
fn long_text_is_truncated_to_the_context_length_keeping_the_end_token() {
    let model = common::load_tiny(ImagePrecision::Fp32);
    let long = "road ".repeat(200);
    let ids = model.tokenize(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(*ids.last().unwrap(), 49407);
    assert_eq!(model.get_text_features(&[&long]).unwrap().shape(), [1, 32]);
}

#[test]
fn text_embeddings_match_transformers() {
    let r = reference();
    let model = common::load_tiny(ImagePrecision::Fp32);
    let texts: Vec<&str> = r.text_embeds.iter().map(|t| t.text.as_str()).collect();
    // Batched (padded to the longest prompt) and one at a time must agree.
    let batched = model.get_text_features(&texts).unwrap();
    for (row, t) in batched.axis_iter(Axis(0)).zip(&r.text_embeds) {
        let d = max_abs_diff(row.as_slice().unwrap(), &t.embeds);
        assert!(d < TOLERANCE, "{:?}: max diff {d}", t.text);
    }
    let single = model.get_text_features(&texts[..1]).unwrap();
    assert!(max_abs_diff(single.row(0).as_slice().unwrap(), &r.text_embeds[0].embeds) < TOLERANCE);
}

#[test]
fn preprocessing_and_image_embeddings_match_transformers() {
    let r = reference();
    let model = common::load_tiny(ImagePrecision::Fp32);
    let (mut checked, mut skipped) = (0, 0);
    for im in &r.images {
        let Some(path) = image_path(im) else {
            skipped += 1;
            continue;
        };
        let img = roadrep::ingest::still::decode_file(&path).unwrap();
        assert_eq!([img.width(), img.height()], im.original_size, "{}", im.file);
        let frame = RgbFrame::from_image(&img);
        let pre = model.preprocessor();
        let (rw, rh) = pre.resized_size(img.width(), img.height());
        assert_eq!([rw, rh], im.resized_size, "{}", im.file);

        // The uint8 crop is bit-identical to PIL's resize + center crop.
        let crop = pre.resize_crop(&frame).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&crop)),
            im.crop_rgb_sha256,
            "{}: resize/crop differs from PIL",
            im.file
        );

        // The normalised tensor matches CLIPImageProcessorPil.
        let pixels = model.preprocess(&[frame]).unwrap();
        let flat = pixels.as_slice().unwrap();
        let sample: Vec<f32> = flat
            .iter()
            .step_by(im.pixel_sample_stride)
            .copied()
            .collect();
        assert!(
            max_abs_diff(&sample, &im.pixel_sample) < TOLERANCE,
            "{}",
            im.file
        );
        let sum: f64 = flat.iter().map(|&v| v as f64).sum();
        assert!(
            (sum - im.pixel_sum).abs() < 1e-3 * flat.len() as f64 * 1e-3,
            "{}: sum {sum} vs {}",
            im.file,
            im.pixel_sum
        );

        let embeds = model.get_image_features(pixels.view()).unwrap();
        let d = max_abs_diff(embeds.row(0).as_slice().unwrap(), &im.image_embeds);
        assert!(d < TOLERANCE, "{}: embedding max diff {d}", im.file);
        checked += 1;
    }
    assert!(checked >= 4, "generated images must always be checked");
    if skipped > 0 {
        eprintln!("skipped {skipped} realdata images: ../shared/realdata is absent");
    }
}

#[test]
fn batched_image_embeddings_equal_single_runs() {
    let r = reference();
    let model = common::load_tiny(ImagePrecision::Fp32);
    let imgs: Vec<image::RgbImage> = r
        .images
        .iter()
        .filter(|i| i.source == "generated")
        .map(|i| image::open(image_path(i).unwrap()).unwrap().into_rgb8())
        .collect();
    let frames: Vec<RgbFrame<'_>> = imgs.iter().map(RgbFrame::from_image).collect();
    let batch = model.embed_frames(&frames).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let one = model.embed_frames(std::slice::from_ref(f)).unwrap();
        assert!(
            max_abs_diff(
                one.row(0).as_slice().unwrap(),
                batch.row(i).as_slice().unwrap()
            ) < 1e-5
        );
    }
}

#[test]
fn zero_shot_tags_match_the_reference_and_use_the_cache() {
    let r = reference();
    let model = common::load_tiny(ImagePrecision::Fp32);
    let labels = LabelSets::from_file(&common::root().join("config/labels.toml")).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = TextEmbeddingCache::new(cache_dir.path());
    let tagger = SceneTagger::new(&model, &labels, Some(&cache)).unwrap();
    assert_eq!(tagger.source(), ClassEmbeddingSource::Computed);
    let cached = SceneTagger::new(&model, &labels, Some(&cache)).unwrap();
    assert_eq!(cached.source(), ClassEmbeddingSource::Cache);
    assert_eq!(cached.class_embeddings(), tagger.class_embeddings());

    for im in &r.images {
        let embed = ndarray::Array1::from(im.image_embeds.clone());
        let scores = tagger.tag(embed.view());
        assert_eq!(scores.len(), im.tags.len());
        for s in &scores {
            let want = &im.tags[&s.set];
            assert_eq!(
                s.top,
                want["top"].as_str().unwrap(),
                "{} {}",
                im.file,
                s.set
            );
            let want_scores = want["scores"].as_object().unwrap();
            assert_eq!(s.scores.len(), want_scores.len());
            for ((class, p), (want_class, want_p)) in s.scores.iter().zip(want_scores) {
                assert_eq!(class, want_class, "class order");
                let d = (p - want_p.as_f64().unwrap() as f32).abs();
                assert!(
                    d < TOLERANCE,
                    "{} {}/{class}: {p} vs {want_p}",
                    im.file,
                    s.set
                );
            }
        }
    }
}

#[test]
fn int8_encoder_approximates_fp32() {
    let r = reference();
    let fp32 = common::load_tiny(ImagePrecision::Fp32);
    let int8 = common::load_tiny(ImagePrecision::Int8);
    assert_eq!(int8.precision(), ImagePrecision::Int8);
    assert_eq!(
        int8.fingerprint(),
        fp32.fingerprint(),
        "INT8 lives in the same embedding space"
    );
    let im = r.images.iter().find(|i| i.source == "generated").unwrap();
    let img = image::open(image_path(im).unwrap()).unwrap().into_rgb8();
    let a = fp32.embed_frames(&[RgbFrame::from_image(&img)]).unwrap();
    let b = int8.embed_frames(&[RgbFrame::from_image(&img)]).unwrap();
    let (a, b) = (a.row(0), b.row(0));
    let cos = a.dot(&b) / (a.dot(&a).sqrt() * b.dot(&b).sqrt());
    assert!(cos > 0.98, "cosine fp32 vs int8 = {cos}");
    assert!(
        max_abs_diff(a.as_slice().unwrap(), b.as_slice().unwrap()) > 0.0,
        "INT8 file must differ from fp32"
    );
}
