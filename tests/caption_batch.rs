//! Several keyframes per decoder run give each keyframe the caption it gets
//! alone, on the committed tiny BLIP, fp32 and INT8, greedy and beam
//! search, with and without a prompt and repetition penalty. The parity
//! images' captions have different lengths (the road's greedy caption ends
//! after 5 tokens, the others run to 20), so images leave the batch while
//! others go on.

mod common;

use std::path::PathBuf;

use roadrep::caption::{CaptionPrecision, Captioner, GenerationSettings};
use roadrep::models::{BlipCaptioner, RgbFrame};

fn fixture() -> PathBuf {
    common::root().join("tests/fixtures/blip-tiny")
}

fn load(precision: CaptionPrecision, settings: GenerationSettings) -> BlipCaptioner {
    BlipCaptioner::load_with_precision(
        &common::root().join("models/blip-tiny"),
        &common::runtime(),
        1,
        settings,
        precision,
    )
    .unwrap_or_else(|e| panic!("load models/blip-tiny {precision:?}: {e}"))
}

fn resized(c: &BlipCaptioner, file: &str) -> Vec<u8> {
    let img = roadrep::ingest::still::decode_file(&fixture().join("images").join(file)).unwrap();
    c.preprocessor()
        .resize_crop(&RgbFrame::from_image(&img))
        .unwrap()
}

/// The parity images, one twice, in an order where the short caption
/// (road) finishes first among longer ones.
const IMAGES: [&str; 4] = [
    "gradient_320x240.png",
    "road_500x281.png",
    "night_224x400.png",
    "road_500x281.png",
];

fn settings(prompt: Option<&str>, num_beams: usize, repetition_penalty: f32) -> GenerationSettings {
    GenerationSettings {
        prompt: prompt.map(str::to_string),
        max_new_tokens: 20,
        num_beams,
        repetition_penalty,
        length_penalty: 1.0,
    }
}

fn check(precision: CaptionPrecision, num_beams: usize) {
    let mut lengths = Vec::new();
    for (prompt, penalty) in [(None, 1.0), (Some("a picture of"), 1.0), (None, 1.5)] {
        let s = settings(prompt, num_beams, penalty);
        let c = load(precision, s.clone());
        let images: Vec<Vec<u8>> = IMAGES.iter().map(|f| resized(&c, f)).collect();
        let alone: Vec<_> = images
            .iter()
            .map(|rgb| c.caption(rgb, &mut || {}).unwrap())
            .collect();
        for n in [2, IMAGES.len()] {
            let refs: Vec<&[u8]> = images[..n].iter().map(Vec::as_slice).collect();
            let mut runs = 0;
            let batch = c.caption_batch(&refs, &mut || runs += 1).unwrap();
            assert_eq!(batch, alone[..n], "{precision:?} {s:?}, {n} images");
            if num_beams == 1 {
                // One vision run, then one decoder run per token of the
                // longest caption (the last token needs none), for all.
                let longest = alone[..n].iter().map(|a| a.ids.len()).max().unwrap();
                let prompt_len = c.prompt_ids().len();
                assert_eq!(runs, 1 + longest - prompt_len, "{precision:?} {s:?}");
            }
        }
        lengths.extend(alone.iter().map(|a| a.ids.len()));
    }
    // Captions of different lengths (else no image left the batch early).
    assert!(
        lengths.iter().any(|&l| l != lengths[0]),
        "{precision:?} beams {num_beams}: {lengths:?}"
    );
}

#[test]
fn fp32_greedy_batches_caption_as_one_at_a_time() {
    check(CaptionPrecision::Fp32, 1);
}

#[test]
fn fp32_beam_batches_caption_as_one_at_a_time() {
    check(CaptionPrecision::Fp32, 3);
}

#[test]
fn int8_greedy_batches_caption_as_one_at_a_time() {
    check(CaptionPrecision::Int8, 1);
}

#[test]
fn int8_beam_batches_caption_as_one_at_a_time() {
    check(CaptionPrecision::Int8, 3);
}
