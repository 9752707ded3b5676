//! `trainer eval-captioner`: the held-out split (train-captioner's) captioned
//! by the base and the fine-tuned captioner; BLEU-1..4 and CIDEr-D side by
//! side, `report.json` and `report.html` (thumbnails, captions, references,
//! the run's loss curves).
//!
//! Greedy decoding (the default) runs in candle: the base model, and the
//! fine-tuned one as the base with `--adapter` applied (or `--tuned`, a
//! merged directory, loaded the same way). `--beams N > 1` decodes through
//! the daemon's `BlipCaptioner` (ONNX) instead and so needs `--tuned`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::Args;
use roadrep::caption::GenerationSettings;
use roadrep::caption::stills::caption_files;
use roadrep::models::{BlipCaptioner, OrtRuntime};
use roadrep::trainer::blip::CandleBlip;
use roadrep::trainer::blip::loss::CaptionTokenizer;
use roadrep::trainer::blip::report::{
    self as cap_report, CaptionEvalReport, CaptionSample, CaptionScores,
};
use roadrep::trainer::blip::train::{CaptionBatcher, CaptionTrainConfig};
use roadrep::trainer::lora::LoraAdapter;
use roadrep::trainer::report::{loss_curve_svg_titled, write_text};
use roadrep::trainer::train::{HistoryPoint, write_json};

use super::{DataArgs, load_data};

/// `trainer eval-captioner`.
#[derive(Args)]
pub struct EvalCaptionerArgs {
    /// Base BLIP model directory.
    #[arg(long)]
    model: PathBuf,
    /// Captioner adapter (train-captioner's out/adapter), applied in candle.
    #[arg(long, required_unless_present = "tuned", conflicts_with = "tuned")]
    adapter: Option<PathBuf>,
    /// Fine-tuned (merged) BLIP model directory instead of an adapter.
    #[arg(long)]
    tuned: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// The train-captioner output directory: its train_config.json gives the
    /// split (unless --val-fraction/--seed/--all) and its history.json the
    /// loss curves of the HTML.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Validation fraction of the split [default: the run's, else 0.1].
    #[arg(long, conflicts_with = "all")]
    val_fraction: Option<f32>,
    /// Seed of the split [default: the run's, else 0].
    #[arg(long, conflicts_with = "all")]
    seed: Option<u64>,
    /// Caption every image, not the held-out split.
    #[arg(long)]
    all: bool,
    /// Sample images in the HTML.
    #[arg(long, default_value_t = 16)]
    samples: usize,
    /// Report folder (report.json, report.html, thumbs/).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Beam width (1 = greedy, in candle; more: the daemon's ONNX decoder,
    /// which needs --tuned).
    #[arg(long, default_value_t = 1)]
    beams: usize,
    /// Most tokens after the prompt.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// Text every caption starts with [default: the run's prompt].
    #[arg(long)]
    prompt: Option<String>,
}

/// Thumbnail width in pixels.
const THUMB: u32 = 160;

/// `trainer eval-captioner`.
pub fn run(a: EvalCaptionerArgs, device: &Device) -> Result<()> {
    if a.beams == 0 || a.max_new_tokens == 0 {
        bail!("--beams and --max-new-tokens must be at least 1");
    }
    if a.beams > 1 && a.tuned.is_none() {
        bail!(
            "--beams > 1 decodes with the daemon's ONNX captioner: pass --tuned (trainer merge-captioner writes one)"
        );
    }
    let run_cfg: Option<CaptionTrainConfig> = a
        .run
        .as_ref()
        .map(|r| -> Result<CaptionTrainConfig> {
            let p = r.join("train_config.json");
            let text = std::fs::read_to_string(&p).with_context(|| format!("'{}'", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("'{}'", p.display()))
        })
        .transpose()?;
    let mut cfg = run_cfg.unwrap_or_default();
    if let Some(f) = a.val_fraction {
        cfg.schedule.val_fraction = f;
    }
    if let Some(s) = a.seed {
        cfg.schedule.seed = s;
    }
    cfg.prompt = a.prompt.clone().or(cfg.prompt);

    let model = CandleBlip::load(&a.model, device)?;
    let tokenizer = CaptionTokenizer::new(&model, cfg.prompt.as_deref(), cfg.max_text_tokens)?;
    let data = load_data(&a.data, &model.preprocessor())?;
    let (idx, split) = if a.all {
        ((0..data.samples.len()).collect(), "all".to_string())
    } else {
        let (_, val) = cfg.schedule.split(data.samples.len(), "samples")?;
        let s = format!(
            "validation: fraction {}, seed {}",
            cfg.schedule.val_fraction, cfg.schedule.seed
        );
        (val, s)
    };
    let (images, references) = cap_report::images_and_references(&data.samples, &idx);
    if images.is_empty() {
        bail!("no images to caption ({split}); try --all");
    }
    tracing::info!(images = images.len(), "Captioning.");

    let (base, tuned, tuned_name, tuned_kind) = if a.beams == 1 {
        let batcher = CaptionBatcher::new(&model, &data, &tokenizer)?;
        let base = batcher.captions(&model, None, &images, a.max_new_tokens)?;
        match (&a.adapter, &a.tuned) {
            (Some(dir), _) => {
                let adapter = LoraAdapter::load(dir, &model.base)?;
                let t = batcher.captions(&model, Some(&adapter), &images, a.max_new_tokens)?;
                (base, t, dir, "adapter")
            }
            (None, Some(dir)) => {
                let tuned_model = CandleBlip::load(dir, device)?;
                let t = batcher.captions(&tuned_model, None, &images, a.max_new_tokens)?;
                (base, t, dir, "model")
            }
            (None, None) => bail!("--adapter DIR or --tuned BLIP_DIR"),
        }
    } else {
        let dir = a.tuned.as_ref().expect("checked above");
        let settings = GenerationSettings {
            prompt: cfg.prompt.clone(),
            max_new_tokens: a.max_new_tokens,
            num_beams: a.beams,
            ..Default::default()
        };
        let paths: Vec<&Path> = images
            .iter()
            .map(|&i| data.samples[i].image.as_path())
            .collect();
        let base = onnx_captions(&a.model, &paths, &settings)?;
        let tuned = onnx_captions(dir, &paths, &settings)?;
        (base, tuned, dir, "model")
    };

    let decoding = format!(
        "{}, max {} new tokens{}",
        if a.beams == 1 {
            "greedy (candle)".to_string()
        } else {
            format!("beam search, {} beams (ONNX)", a.beams)
        },
        a.max_new_tokens,
        cfg.prompt
            .as_ref()
            .map_or(String::new(), |p| format!(", prompt \"{p}\""))
    );
    let mut report = CaptionEvalReport {
        model: a.model.display().to_string(),
        tuned: tuned_name.display().to_string(),
        tuned_kind: tuned_kind.into(),
        data: a.data.data.display().to_string(),
        split,
        images: images.len(),
        decoding,
        base: CaptionScores::of(&base, &references),
        tuned_scores: CaptionScores::of(&tuned, &references),
        samples: Vec::new(),
        skipped: data.skipped.clone(),
    };
    print!("{}", cap_report::table(&report));
    let Some(out) = &a.report else {
        return Ok(());
    };
    let thumbs = out.join("thumbs");
    std::fs::create_dir_all(&thumbs).with_context(|| format!("'{}'", thumbs.display()))?;
    let side = model.preprocessor().crop_size;
    for (k, &i) in images.iter().enumerate().take(a.samples) {
        let name = format!("thumbs/{k:03}.jpg");
        cap_report::write_thumbnail(&out.join(&name), &data.pixels[i], side, THUMB)?;
        report.samples.push(CaptionSample {
            image: data.samples[i].image.display().to_string(),
            thumbnail: Some(name),
            base: base[k].clone(),
            tuned: tuned[k].clone(),
            references: references[k].clone(),
        });
    }
    let loss_svg = match &a.run {
        Some(r) => {
            let p = r.join("history.json");
            let text = std::fs::read_to_string(&p).with_context(|| format!("'{}'", p.display()))?;
            let history: Vec<HistoryPoint> =
                serde_json::from_str(&text).with_context(|| format!("'{}'", p.display()))?;
            Some(loss_curve_svg_titled(
                &history,
                "Loss (captioning cross-entropy)",
            ))
        }
        None => None,
    };
    write_json(&out.join("report.json"), &report)?;
    write_text(
        &out.join("report.html"),
        &cap_report::html(&report, loss_svg.as_deref()),
    )?;
    println!("report in {}", out.join("report.html").display());
    Ok(())
}

/// Captions of `paths` by the BLIP directory `dir` through the daemon's
/// ONNX captioner.
fn onnx_captions(
    dir: &Path,
    paths: &[&Path],
    settings: &GenerationSettings,
) -> Result<Vec<String>> {
    let runtime = OrtRuntime::load(None)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let captioner = BlipCaptioner::load(dir, &runtime, threads, settings.clone())
        .with_context(|| format!("captioner '{}'", dir.display()))?;
    let mut out = Vec::with_capacity(paths.len());
    let mut failed = None;
    caption_files(&captioner, paths, 1, |p, r| match r {
        Ok(c) => out.push(c.text),
        Err(e) => {
            failed.get_or_insert_with(|| format!("'{}': {e}", p.display()));
        }
    })?;
    if let Some(e) = failed {
        bail!("{e}");
    }
    Ok(out)
}
