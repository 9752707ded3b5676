//! `roadrep bench caption`: the cost of one caption next to the cost of its
//! vision encoder, and captions/s, measured in one process.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::caption::{CaptionError, GenerationSettings};
use crate::models::BlipCaptioner;
use crate::models::{ModelError, OrtRuntime};

/// One thread count's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionBenchRow {
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
    /// Vision encoder + cross-attention K/V, ms per image.
    pub vision_ms: f64,
    /// Cross-attention K/V alone is part of `vision_ms`; one decoder step
    /// (one token, cache of the prompt and earlier tokens), ms.
    pub decoder_step_ms: f64,
    /// Tokens generated per caption (forced to `max_new_tokens`).
    pub tokens: usize,
    /// Whole caption (vision + prefill + steps), ms.
    pub caption_ms: f64,
    /// Captions per second.
    pub captions_per_s: f64,
    /// Caption cost over vision encoder cost.
    pub caption_over_vision: f64,
    /// A 3-beam caption (stops at the end token or `tokens`), ms.
    pub beam3_ms: f64,
    /// Tokens the 3-beam caption generated.
    pub beam3_tokens: usize,
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
    /// Captions timed per configuration.
    pub runs: usize,
    /// Rows per thread count.
    pub rows: Vec<CaptionBenchRow>,
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

/// Measures `runs` captions of a generated image per thread count.
pub fn bench_caption(
    runtime: &OrtRuntime,
    dir: &Path,
    threads: &[usize],
    runs: usize,
    max_new_tokens: usize,
    log: impl Fn(&str),
) -> Result<CaptionBenchReport, CaptionError> {
    let mut rows = Vec::new();
    let mut header = None;
    for &t in threads {
        let settings = GenerationSettings {
            max_new_tokens,
            ..Default::default()
        };
        let captioner = BlipCaptioner::load(dir, runtime, t, settings)?;
        let b = captioner.manifest().blip.clone();
        let s = captioner.manifest().preprocess.size as usize;
        header.get_or_insert((captioner.manifest().name.clone(), b.clone(), s));
        let rgb: Vec<u8> = (0..s * s * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let pixels = captioner.pixels(&rgb)?;
        // Warm-up (ORT allocates on the first runs).
        captioner.encode_image(&pixels)?;
        let started = Instant::now();
        for _ in 0..runs {
            captioner.encode_image(&pixels)?;
        }
        let vision_ms = started.elapsed().as_secs_f64() * 1e3 / runs as f64;

        let steps = captioner.decoder_steps(&pixels, max_new_tokens, runs.max(1))?;
        let started = Instant::now();
        for _ in 0..runs {
            captioner.caption_forced(&pixels, max_new_tokens)?;
        }
        let caption_ms = started.elapsed().as_secs_f64() * 1e3 / runs as f64;

        let beam = GenerationSettings {
            num_beams: 3,
            max_new_tokens,
            ..Default::default()
        };
        let prompt = captioner.prompt_ids().to_vec();
        let started = Instant::now();
        let mut beam3_tokens = 0;
        for _ in 0..runs {
            let c = captioner.caption_with(&pixels, &beam, &prompt, &mut || {})?;
            beam3_tokens = c.ids.len() - prompt.len();
        }
        let beam3_ms = started.elapsed().as_secs_f64() * 1e3 / runs as f64;
        let row = CaptionBenchRow {
            threads: t,
            vision_ms,
            decoder_step_ms: steps,
            tokens: max_new_tokens,
            caption_ms,
            captions_per_s: 1e3 / caption_ms,
            caption_over_vision: caption_ms / vision_ms,
            beam3_ms,
            beam3_tokens,
        };
        log(&format!(
            "{t} threads: vision {vision_ms:.1} ms, step {steps:.2} ms, caption {caption_ms:.1} ms"
        ));
        rows.push(row);
    }
    let (model, b, s) = header.ok_or_else(|| {
        CaptionError::Model(ModelError::Manifest {
            path: dir.to_path_buf(),
            message: "no thread counts to measure".into(),
        })
    })?;
    Ok(CaptionBenchReport {
        model,
        image_size: s as u32,
        image_tokens: b.num_image_tokens,
        layers: b.num_layers,
        runs,
        rows,
    })
}

impl CaptionBenchReport {
    /// Markdown table for BENCHMARKS.md.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "model {} ({}x{} -> {} image tokens, {} decoder layers), {} captions per row, {} tokens each\n\n",
            self.model,
            self.image_size,
            self.image_size,
            self.image_tokens,
            self.layers,
            self.runs,
            self.rows.first().map_or(0, |r| r.tokens)
        );
        out.push_str("| threads | vision encoder + cross K/V (ms) | decoder step (ms) | caption (ms) | caption / vision | captions/s | 3-beam caption (ms, tokens) |\n|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} | {:.1} ({}) |\n",
                r.threads,
                r.vision_ms,
                r.decoder_step_ms,
                r.caption_ms,
                r.caption_over_vision,
                r.captions_per_s,
                r.beam3_ms,
                r.beam3_tokens
            ));
        }
        out
    }
}
