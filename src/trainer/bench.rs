//! Training throughput on synthetic batches (`trainer bench`), reported in
//! `BENCHMARKS.md`: one optimizer step = forward of both towers with LoRA,
//! symmetric InfoNCE, backward, AdamW update.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::TrainerError;
use super::clip::CandleClip;
use super::config::TrainConfig;
use super::dataset::{LoadedDataset, Sample};
use super::lora::{LoraAdapter, LoraConfig};
use super::optim::{AdamW, AdamWParams};
use super::rng::SplitMix64;
use super::tokens::ClipTokenizer;
use super::train::{Batcher, batch_loss};
use crate::models::ImagePreprocessor;

/// Colour names and RGB values of the synthetic set.
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [30, 180, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [235, 220, 40]),
    ("purple", [140, 40, 170]),
    ("orange", [245, 140, 20]),
    ("white", [245, 245, 245]),
    ("black", [15, 15, 15]),
];

/// `n` solid-colour crops captioned "a photo of a {colour} square", labelled
/// `color = {colour}`, cycling through [`COLOURS`].
pub fn synthetic_dataset(pre: &ImagePreprocessor, n: usize) -> LoadedDataset {
    let s = pre.crop_size as usize;
    let mut out = LoadedDataset {
        samples: Vec::with_capacity(n),
        pixels: Vec::with_capacity(n),
        skipped: Vec::new(),
    };
    for i in 0..n {
        let (name, rgb) = COLOURS[i % COLOURS.len()];
        out.pixels
            .push(rgb.iter().copied().cycle().take(s * s * 3).collect());
        out.samples.push(Sample {
            image: PathBuf::from(format!("synthetic/{i}.png")),
            caption: format!("a photo of a {name} square"),
            labels: BTreeMap::from([("color".to_string(), name.to_string())]),
            origin: (PathBuf::from("synthetic"), None),
        });
    }
    out
}

/// Timings of [`seconds_per_step`], in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimes {
    /// Forward of both towers with the adapter, no backward.
    pub forward: f64,
    /// Whole optimizer step (forward, loss, backward, AdamW).
    pub step: f64,
}

/// Seconds per optimizer step (batch of `batch_size` pairs, LoRA rank `r`),
/// averaged over `steps` steps after one untimed warm-up step, and the
/// forward pass alone for comparison.
pub fn seconds_per_step(
    model: &CandleClip,
    tokenizer: &ClipTokenizer,
    pre: &ImagePreprocessor,
    batch_size: usize,
    r: usize,
    steps: usize,
) -> Result<StepTimes, TrainerError> {
    let data = synthetic_dataset(pre, batch_size.max(2));
    let batcher = Batcher::new(&data, tokenizer, pre.clone(), model.base.device())?;
    let lora = LoraConfig {
        r,
        ..Default::default()
    };
    let adapter = LoraAdapter::new(lora, &model.base, model.logit_scale, 0)?;
    let named = adapter.named_vars();
    let vars: Vec<_> = named.iter().map(|(_, v)| *v).collect();
    let mut opt = AdamW::new(&vars, vec![true; vars.len()], AdamWParams::default())?;
    let cfg = TrainConfig::default();
    let rng = RefCell::new(SplitMix64::new(0));
    let idx: Vec<usize> = (0..batch_size.max(2)).collect();
    let mut step = || -> Result<(), TrainerError> {
        let loss = batch_loss(model, &adapter, &batcher, &idx, Some((&cfg, &rng)))?;
        let grads = loss.backward()?;
        let g: Vec<_> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect();
        opt.step(&vars, &g, 1e-4)
    };
    step()?;
    let started = Instant::now();
    for _ in 0..steps.max(1) {
        step()?;
    }
    let step_secs = started.elapsed().as_secs_f64() / steps.max(1) as f64;
    let fwd = super::clip::Forward {
        adapter: Some(&adapter),
        dropout: None,
    };
    let pixels = batcher.pixels(&idx, &Default::default(), None)?;
    let ids = batcher.ids(&idx)?;
    let started = Instant::now();
    for _ in 0..steps.max(1) {
        model.get_image_features(&pixels, fwd)?;
        model.get_text_features(&ids, fwd)?;
    }
    Ok(StepTimes {
        forward: started.elapsed().as_secs_f64() / steps.max(1) as f64,
        step: step_secs,
    })
}
