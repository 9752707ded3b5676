//! Caption parity with transformers for the committed tiny BLIP.
//!
//! `models/export.py --blip --tiny --reference-out tests/fixtures/blip-tiny`
//! wrote `reference.json`: WordPiece token ids and decoded texts, resized
//! pixels (PIL), first-step logits, and the captions transformers'
//! `generate` makes (greedy, prompt, repetition penalty, beam search).

mod common;

use std::path::PathBuf;

use roadrep::caption::{Captioner, GenerationSettings};
use roadrep::models::BlipCaptioner;
use roadrep::models::RgbFrame;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture() -> PathBuf {
    common::root().join("tests/fixtures/blip-tiny")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).unwrap()
}

fn captioner() -> BlipCaptioner {
    BlipCaptioner::load(
        &common::root().join("models/blip-tiny"),
        &common::runtime(),
        1,
        GenerationSettings::default(),
    )
    .expect("load models/blip-tiny")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The resized image of a fixture, as the ingest keeps it for captions.
fn resized(c: &BlipCaptioner, file: &str) -> Vec<u8> {
    let img = roadrep::ingest::still::decode_file(&fixture().join(file)).unwrap();
    c.preprocessor()
        .resize_crop(&RgbFrame::from_image(&img))
        .unwrap()
}

#[test]
fn fixtures_belong_to_the_committed_model() {
    let r = reference();
    assert_eq!(
        r["fingerprint"].as_str().unwrap(),
        captioner().manifest().fingerprint
    );
}

#[test]
fn wordpiece_ids_and_decoded_text_match_transformers() {
    let c = captioner();
    let r = reference();
    let probes = r["tokenizer"].as_array().unwrap();
    assert!(probes.len() >= 10);
    for p in probes {
        let text = p["text"].as_str().unwrap();
        assert_eq!(c.tokenize(text).unwrap(), ids(&p["ids"]), "{text:?}");
    }
    for d in r["decode"].as_array().unwrap() {
        assert_eq!(
            c.decode(&ids(&d["ids"])).unwrap(),
            d["text"].as_str().unwrap(),
            "{:?}",
            d["ids"]
        );
    }
}

#[test]
fn resized_pixels_are_identical_to_pil() {
    let c = captioner();
    let r = reference();
    for img in r["images"].as_array().unwrap() {
        let file = img["file"].as_str().unwrap();
        let rgb = resized(&c, file);
        assert_eq!(
            hex::encode(Sha256::digest(&rgb)),
            img["resized_sha256"].as_str().unwrap(),
            "{file}"
        );
        let pixels = c.pixels(&rgb).unwrap();
        for s in img["pixel_samples"].as_array().unwrap() {
            let s: Vec<f64> = s
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = pixels[[0, s[0] as usize, s[1] as usize, s[2] as usize]];
            assert!((got as f64 - s[3]).abs() < 1e-5, "{file} {s:?}: {got}");
        }
    }
}

#[test]
fn first_step_logits_match_transformers() {
    let c = captioner();
    let r = reference();
    for case in r["first_step"].as_array().unwrap() {
        let file = case["image"].as_str().unwrap();
        let pixels = c.pixels(&resized(&c, file)).unwrap();
        let prompt = ids(&case["input_ids"]);
        let logits = c.first_step_logits(&pixels, &prompt).unwrap();
        for pair in case["top"].as_array().unwrap() {
            let id = pair[0].as_u64().unwrap() as usize;
            let want = pair[1].as_f64().unwrap() as f32;
            assert!(
                (logits[id] - want).abs() < 1e-4,
                "{file} token {id}: {} vs {want}",
                logits[id]
            );
        }
    }
}

#[test]
fn captions_are_identical_to_transformers_generate() {
    let c = captioner();
    let r = reference();
    let cases = r["captions"].as_array().unwrap();
    assert!(cases.iter().any(|k| k["num_beams"].as_u64() == Some(1)));
    for case in cases {
        let file = case["image"].as_str().unwrap();
        let prompt = case["prompt"].as_str();
        let settings = GenerationSettings {
            prompt: prompt.map(str::to_string),
            max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
            num_beams: case["num_beams"].as_u64().unwrap() as usize,
            repetition_penalty: case["repetition_penalty"].as_f64().unwrap() as f32,
            length_penalty: r["generation"]["length_penalty"].as_f64().unwrap_or(1.0) as f32,
        };
        let pixels = c.pixels(&resized(&c, file)).unwrap();
        let prompt_ids = c.prompt_ids_for(prompt).unwrap();
        let got = c
            .caption_with(&pixels, &settings, &prompt_ids, &mut || {})
            .unwrap();
        assert_eq!(got.ids, ids(&case["ids"]), "{file} {settings:?}");
        assert_eq!(
            got.text,
            case["text"].as_str().unwrap(),
            "{file} {settings:?}"
        );
    }
}
