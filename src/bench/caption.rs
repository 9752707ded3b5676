//! `roadrep bench caption`: the cost of one caption next to the cost of its
//! vision encoder, and captions/s, with 1, 2, 4, 8 keyframes per model run,
//! measured in one process, for the fp32 and the INT8 text decoder side by
//! side; and how often the INT8 decoder's top-1 token agrees with fp32
//! along fp32's greedy captions.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::caption::{CaptionError, CaptionPrecision, GenerationSettings};
use crate::models::BlipCaptioner;
use crate::models::{ModelError, OrtRuntime};

/// The figures of one thread count, precision and batch size.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionBenchRow {
    /// Text decoder precision (the vision encoder is fp32).
    pub precision: CaptionPrecision,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
    /// Keyframes per model run (one vision-encoder run over all of them,
    /// then one decoder run per token for all of them).
    pub batch: usize,
    /// Vision encoder + cross-attention K/V, ms per image (run over
    /// `batch` images at once).
    pub vision_ms: f64,
    /// One decoder run (one token for each of `batch` rows, cache of the
    /// prompt and earlier tokens), ms.
    pub decoder_step_ms: f64,
    /// Tokens generated per caption (forced to `max_new_tokens`).
    pub tokens: usize,
    /// Whole caption (vision + prefill + steps), ms per caption.
    pub caption_ms: f64,
    /// Captions per second.
    pub captions_per_s: f64,
    /// Caption cost over vision encoder cost, per caption.
    pub caption_over_vision: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionBenchReport {
    /// Model name.
    pub model: String,
    /// Image side.
    pub image_size: u32,
    /// Image tokens the decoder attends to.
    pub image_tokens: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Model runs (batches) timed per configuration.
    pub runs: usize,
    /// Rows per thread count, precision and batch size.
    pub rows: Vec<CaptionBenchRow>,
    /// INT8 vs fp32 top-1 tokens (when both were measured).
    pub agreement: Option<TokenAgreement>,
}

/// INT8 decoder vs fp32 on the bench's images: fp32's greedy caption of
/// each (forced to `tokens` new tokens), and whether the INT8 decoder's
/// argmax at each position (same prefix, teacher-forced) is fp32's token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenAgreement {
    /// Images captioned.
    pub images: usize,
    /// Positions compared.
    pub tokens: usize,
    /// Positions whose INT8 argmax is fp32's token.
    pub agreeing: usize,
    /// Images whose free-running INT8 greedy caption equals fp32's.
    pub identical_captions: usize,
}

/// Images of the agreement check: generated patterns, `s`² RGB.
fn bench_images(s: usize) -> Vec<Vec<u8>> {
    let pattern = |f: &dyn Fn(usize, usize, usize) -> usize| -> Vec<u8> {
        (0..s * s * 3)
            .map(|i| (f(i / 3 / s, i / 3 % s, i % 3) % 256) as u8)
            .collect()
    };
    vec![
        (0..s * s * 3).map(|i| ((i * 37) % 251) as u8).collect(),
        pattern(&|y, x, c| (x * 255 / s) * (c == 0) as usize + (y * 255 / s) * (c == 2) as usize),
        pattern(&|y, x, c| {
            if (y / 32 + x / 32) % 2 == 0 {
                40 + 60 * c
            } else {
                220 - 50 * c
            }
        }),
        pattern(&|y, x, c| (y * 7 + x * 13 + c * 85) ^ (x * y / 97)),
    ]
}

/// The model directory `bench caption` uses by default.
pub fn default_caption_model() -> PathBuf {
    let full = PathBuf::from("models/blip-random-full");
    if full.join("manifest.toml").is_file() {
        full
    } else {
        PathBuf::from("models/blip-tiny")
    }
}

/// Measures, per thread count and decoder precision, `runs` model runs of
/// each batch size (generated images, captions forced to
/// `max_new_tokens`), then the INT8/fp32 token agreement (both measured).
#[allow(clippy::too_many_arguments)]
pub fn bench_caption(
    runtime: &OrtRuntime,
    dir: &Path,
    threads: &[usize],
    precisions: &[CaptionPrecision],
    batches: &[usize],
    runs: usize,
    max_new_tokens: usize,
    log: impl Fn(&str),
) -> Result<CaptionBenchReport, CaptionError> {
    let mut rows = Vec::new();
    let mut header = None;
    let configs = threads
        .iter()
        .flat_map(|&t| precisions.iter().map(move |&p| (t, p)));
    for (t, precision) in configs {
        let settings = GenerationSettings {
            max_new_tokens,
            ..Default::default()
        };
        let captioner = BlipCaptioner::load_with_precision(dir, runtime, t, settings, precision)?;
        let b = captioner.manifest().blip.clone();
        let s = captioner.manifest().preprocess.size as usize;
        header.get_or_insert((captioner.manifest().name.clone(), b.clone(), s));
        let images = bench_images(s);
        for &n in batches {
            let batch: Vec<&[u8]> = (0..n)
                .map(|i| images[i % images.len()].as_slice())
                .collect();
            let pixels = captioner.pixels_batch(&batch)?;
            // Warm-up (ORT allocates on the first runs of each shape).
            captioner.encode_image(&pixels)?;
            let started = Instant::now();
            for _ in 0..runs {
                captioner.encode_image(&pixels)?;
            }
            let vision_ms = started.elapsed().as_secs_f64() * 1e3 / (runs * n) as f64;

            let steps = captioner.decoder_steps(&pixels, max_new_tokens, runs)?;
            let started = Instant::now();
            for _ in 0..runs {
                captioner.caption_forced_batch(&pixels, max_new_tokens)?;
            }
            let caption_ms = started.elapsed().as_secs_f64() * 1e3 / (runs * n) as f64;
            log(&format!(
                "{precision:?}, {t} threads, {n} per run: vision {vision_ms:.1} ms/image, \
                 step {steps:.2} ms, caption {caption_ms:.1} ms/caption"
            ));
            rows.push(CaptionBenchRow {
                precision,
                threads: t,
                batch: n,
                vision_ms,
                decoder_step_ms: steps,
                tokens: max_new_tokens,
                caption_ms,
                captions_per_s: 1e3 / caption_ms,
                caption_over_vision: caption_ms / vision_ms,
            });
        }
    }
    let (model, b, s) = header.ok_or_else(|| {
        CaptionError::Model(ModelError::Manifest {
            path: dir.to_path_buf(),
            message: "no thread counts or precisions to measure".into(),
        })
    })?;
    let agreement = if precisions.contains(&CaptionPrecision::Fp32)
        && precisions.contains(&CaptionPrecision::Int8)
    {
        let t = threads.iter().copied().max().unwrap_or(1);
        Some(token_agreement(runtime, dir, t, max_new_tokens)?)
    } else {
        None
    };
    Ok(CaptionBenchReport {
        model,
        image_size: s as u32,
        image_tokens: b.num_image_tokens,
        layers: b.num_layers,
        runs,
        rows,
        agreement,
    })
}

/// [`TokenAgreement`] of `dir`'s INT8 decoder on [`bench_images`].
pub fn token_agreement(
    runtime: &OrtRuntime,
    dir: &Path,
    threads: usize,
    tokens: usize,
) -> Result<TokenAgreement, CaptionError> {
    let settings = GenerationSettings {
        max_new_tokens: tokens,
        ..Default::default()
    };
    let fp32 = BlipCaptioner::load_with_precision(
        dir,
        runtime,
        threads,
        settings.clone(),
        CaptionPrecision::Fp32,
    )?;
    let int8 = BlipCaptioner::load_with_precision(
        dir,
        runtime,
        threads,
        settings,
        CaptionPrecision::Int8,
    )?;
    let s = fp32.manifest().preprocess.size as usize;
    let images = bench_images(s);
    let (mut compared, mut agreeing, mut identical) = (0, 0, 0);
    for rgb in &images {
        let pixels = fp32.pixels(rgb)?;
        let reference = fp32.caption_forced(&pixels, tokens)?;
        let n = fp32.prompt_ids().len();
        let predicted = int8.argmax_along(&pixels, &reference)?;
        for (want, got) in reference[n..].iter().zip(&predicted[n - 1..]) {
            compared += 1;
            agreeing += usize::from(want == got);
        }
        identical += usize::from(int8.caption_forced(&pixels, tokens)? == reference);
    }
    Ok(TokenAgreement {
        images: images.len(),
        tokens: compared,
        agreeing,
        identical_captions: identical,
    })
}

impl CaptionBenchReport {
    /// Markdown table for BENCHMARKS.md: one line per thread count and
    /// batch size, the precisions side by side.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "model {} ({}x{} -> {} image tokens, {} decoder layers), {} model runs per row, {} tokens per caption\n\n",
            self.model,
            self.image_size,
            self.image_size,
            self.image_tokens,
            self.layers,
            self.runs,
            self.rows.first().map_or(0, |r| r.tokens)
        );
        let mut precisions: Vec<CaptionPrecision> = Vec::new();
        let mut keys: Vec<(usize, usize)> = Vec::new();
        for r in &self.rows {
            if !precisions.contains(&r.precision) {
                precisions.push(r.precision);
            }
            if !keys.contains(&(r.threads, r.batch)) {
                keys.push((r.threads, r.batch));
            }
        }
        out.push_str("| threads | keyframes per run |");
        let mut rule = String::from("|---:|---:|");
        for p in &precisions {
            let p = precision_name(*p);
            out.push_str(&format!(
                " {p}: vision ms/keyframe | {p}: decoder run ms | {p}: caption ms | {p}: caption / vision | {p}: captions/s |"
            ));
            rule.push_str("---:|---:|---:|---:|---:|");
        }
        out.push('\n');
        out.push_str(&rule);
        out.push('\n');
        for (t, n) in keys {
            out.push_str(&format!("| {t} | {n} |"));
            for p in &precisions {
                match self
                    .rows
                    .iter()
                    .find(|r| r.threads == t && r.batch == n && r.precision == *p)
                {
                    Some(r) => out.push_str(&format!(
                        " {:.1} | {:.2} | {:.1} | {:.2} | {:.2} |",
                        r.vision_ms,
                        r.decoder_step_ms,
                        r.caption_ms,
                        r.caption_over_vision,
                        r.captions_per_s
                    )),
                    None => out.push_str(" | | | | |"),
                }
            }
            out.push('\n');
        }
        if let Some(a) = &self.agreement {
            out.push_str(&format!(
                "\nint8 vs fp32 top-1 token along fp32's greedy captions of {} images: {}/{} ({:.1}%); identical free-running captions: {}/{}\n",
                a.images,
                a.agreeing,
                a.tokens,
                100.0 * a.agreeing as f64 / a.tokens.max(1) as f64,
                a.identical_captions,
                a.images
            ));
        }
        out
    }
}

fn precision_name(p: CaptionPrecision) -> &'static str {
    match p {
        CaptionPrecision::Fp32 => "fp32",
        CaptionPrecision::Int8 => "int8",
    }
}
