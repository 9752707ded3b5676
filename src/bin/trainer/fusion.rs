//! `trainer train-fusion` and `trainer eval-fusion`: flags and the glue to
//! `roadrep::trainer::fusion`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::Args;
use roadrep::models::{ClipModel, ClipOptions, ImagePrecision, OrtRuntime};
use roadrep::trainer::dataset::{OnBadRecord, split};
use roadrep::trainer::fusion::cache::{EmbeddingCache, default_cache_dir};
use roadrep::trainer::fusion::data::{RigEmbeddings, embed_rigs, read_rigs};
use roadrep::trainer::fusion::train::{self as fusion_train, FusionTrainConfig};
use roadrep::trainer::fusion::{FusionDir, RigFusion, dir, eval};
use roadrep::trainer::train::write_json;

use super::{RunArgs, read_config, set, stopped_early, trained, write_loss_curve};

/// Inputs both commands share.
#[derive(Args)]
pub struct FusionInputs {
    /// CLIP model directory whose embeddings the fusion model joins.
    #[arg(long)]
    clip: PathBuf,
    /// Fusion model directory (models/export.py --fusion, or a trained one).
    #[arg(long)]
    fusion: PathBuf,
    /// Rig manifest: JSONL, `{"views": {"front": "a.jpg", ...}, "caption": "..."}`.
    #[arg(long)]
    data: PathBuf,
    /// Embedding cache folder (default: $XDG_CACHE_HOME or ~/.cache,
    /// roadrep/fusion-embeddings).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Keep nothing on disk: embed every image again.
    #[arg(long, conflicts_with = "cache")]
    no_cache: bool,
    /// What to do with a rig whose image is missing or corrupt.
    #[arg(long, value_enum, default_value = "skip")]
    on_bad_record: OnBadRecord,
    /// ONNX Runtime threads of the CLIP encoders.
    #[arg(long)]
    intra_threads: Option<usize>,
}

/// `trainer train-fusion`.
#[derive(Args)]
pub struct TrainFusionArgs {
    #[command(flatten)]
    inputs: FusionInputs,
    /// Output directory: model/ (the fusion directory), checkpoint/,
    /// best.safetensors, history.json, loss.svg, eval.json.
    #[arg(long)]
    out: PathBuf,
    /// Name of the written model (default: the base's name + "-trained").
    #[arg(long)]
    name: Option<String>,
    /// TOML settings file (the field names of `FusionTrainConfig` and its
    /// `Schedule`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Rigs per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Probability of dropping each present view of a training rig.
    #[arg(long)]
    view_dropout: Option<f32>,
    /// Fixed logit scale of the loss (default: the CLIP manifest's).
    #[arg(long)]
    logit_scale: Option<f32>,
}

/// `trainer eval-fusion`.
#[derive(Args)]
pub struct EvalFusionArgs {
    #[command(flatten)]
    inputs: FusionInputs,
    /// Anchor role (default: each rig's first present role in model order).
    #[arg(long)]
    anchor: Option<String>,
    /// Validation fraction of the split to evaluate (as trained with).
    #[arg(long, default_value_t = FusionTrainConfig::default().schedule.val_fraction)]
    val_fraction: f32,
    /// Seed of the split (as trained with).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate every rig, not only the held-out split.
    #[arg(long)]
    all: bool,
    /// JSON report path.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// The fusion directory, its model and the embedded rigs.
struct Loaded {
    dir: FusionDir,
    model: RigFusion,
    data: RigEmbeddings,
    logit_scale: f32,
}

fn load(inputs: &FusionInputs, device: &Device) -> Result<Loaded> {
    let runtime = OrtRuntime::load(None)?;
    let options = ClipOptions {
        precision: ImagePrecision::Fp32,
        intra_threads: inputs
            .intra_threads
            .unwrap_or(ClipOptions::default().intra_threads),
        load_text_encoder: true,
        verified_files_dir: None,
    };
    let clip = ClipModel::load(&inputs.clip, &runtime, &options)?;
    let dir = FusionDir::open(&inputs.fusion)?;
    dir.check_clip(clip.fingerprint())?;
    if dir.config.d != clip.embed_dim() {
        bail!(
            "fusion width {} is not the CLIP embedding width {}",
            dir.config.d,
            clip.embed_dim()
        );
    }
    let model = RigFusion::from_onnx(&dir.onnx, dir.config.clone(), device)?;
    let roles = dir.config.roles.clone();
    let records = read_rigs(&inputs.data, &roles)?;
    let cache_dir = if inputs.no_cache {
        None
    } else {
        inputs.cache.clone().or_else(default_cache_dir)
    };
    let mut cache =
        EmbeddingCache::open(cache_dir.as_deref(), clip.fingerprint(), clip.embed_dim())?;
    let cached = cache.len();
    let data = embed_rigs(&clip, &records, &roles, &mut cache, inputs.on_bad_record)?;
    tracing::info!(
        rigs = data.len(),
        skipped = data.skipped.len(),
        captions = data.captions.len(),
        cached,
        embedded = cache.len() - cached,
        "Rigs embedded."
    );
    if data.len() < 2 {
        bail!("'{}': fewer than 2 usable rigs", inputs.data.display());
    }
    Ok(Loaded {
        dir,
        model,
        data,
        logit_scale: clip.logit_scale(),
    })
}

/// `trainer train-fusion`.
pub fn run_train(a: TrainFusionArgs, device: &Device) -> Result<()> {
    let mut cfg: FusionTrainConfig = read_config(a.config.as_deref())?;
    a.run.apply(&mut cfg.schedule);
    set(&mut cfg.batch_size, a.batch_size);
    set(&mut cfg.view_dropout, a.view_dropout);
    cfg.logit_scale = a.logit_scale.or(cfg.logit_scale);
    // Bad settings fail before any image is read.
    cfg.validate()?;
    let l = load(&a.inputs, device)?;
    let (_, val) = split(l.data.len(), cfg.schedule.val_fraction, cfg.schedule.seed);
    let before = eval::evaluate(&l.model, &l.data, &val, None, cfg.batch_size)?;
    let outcome = fusion_train::train(
        &l.model,
        &l.data,
        &cfg,
        l.logit_scale,
        &a.out,
        a.run.options(),
    )?;
    write_loss_curve(&a.out, &outcome.history)?;
    let base_name = l.dir.manifest.name.clone();
    let name = a.name.unwrap_or_else(|| format!("{base_name}-trained"));
    let source = format!(
        "{base_name} ({}) trained by `trainer train-fusion` on {} ({} rigs, {} steps)",
        &l.dir.manifest.fingerprint[..l.dir.manifest.fingerprint.len().min(12)],
        a.inputs.data.display(),
        outcome.split.0,
        outcome.steps
    );
    let written = dir::write_dir(&l.dir, &l.model, &a.out.join("model"), &name, &source)?;
    let after = eval::evaluate(&l.model, &l.data, &val, None, cfg.batch_size)?;
    write_json(
        &a.out.join("eval.json"),
        &serde_json::json!({ "before": before, "after": after, "split": outcome.split }),
    )?;
    println!(
        "{}{}; model in {} (fingerprint {})",
        trained(outcome.steps, outcome.epochs, outcome.steps_per_sec, 1),
        stopped_early(outcome.stopped_early),
        written.dir.display(),
        written.fingerprint
    );
    println!("held-out before:\n{}", eval::table(&before));
    println!("held-out after:\n{}", eval::table(&after));
    Ok(())
}

/// `trainer eval-fusion`.
pub fn run_eval(a: EvalFusionArgs, device: &Device) -> Result<()> {
    let l = load(&a.inputs, device)?;
    let idx: Vec<usize> = if a.all {
        (0..l.data.len()).collect()
    } else {
        split(l.data.len(), a.val_fraction, a.seed).1
    };
    if idx.is_empty() {
        bail!("the held-out split is empty: raise --val-fraction or pass --all");
    }
    let metrics = eval::evaluate(&l.model, &l.data, &idx, a.anchor.as_deref(), 64)?;
    print!("{}", eval::table(&metrics));
    if let Some(path) = &a.report {
        let report = serde_json::json!({
            "clip": a.inputs.clip.display().to_string(),
            "fusion": a.inputs.fusion.display().to_string(),
            "fusion_fingerprint": l.dir.manifest.fingerprint,
            "data": a.inputs.data.display().to_string(),
            "split": if a.all { "all".to_string() } else { format!("val {} seed {}", a.val_fraction, a.seed) },
            "skipped": l.data.skipped,
            "metrics": metrics,
        });
        write_json(path, &report).with_context(|| format!("--report '{}'", path.display()))?;
    }
    Ok(())
}

/// `trainer bench-fusion`: sizes default to the full model.
#[derive(Args)]
pub struct BenchFusionArgs {
    /// Embedding width D.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Transformer layers L.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention heads H.
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Feed-forward width F.
    #[arg(long, default_value_t = 1024)]
    ff: usize,
    /// Rigs per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 20)]
    steps: usize,
}

/// `trainer bench-fusion`.
pub fn run_bench(a: BenchFusionArgs, device: &Device) -> Result<()> {
    let config = roadrep::trainer::fusion::FusionConfig {
        d: a.dim,
        l: a.layers,
        h: a.heads,
        f: a.ff,
        ..roadrep::trainer::fusion::FusionConfig::tiny()
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let s =
        roadrep::trainer::fusion::bench::seconds_per_step(&config, a.batch_size, a.steps, device)?;
    println!(
        "fusion D={} V={} L={} H={} F={}, batch {}: {:.2} ms/step, {:.1} steps/s, {:.0} rigs/s",
        config.d,
        config.v,
        config.l,
        config.h,
        config.f,
        a.batch_size,
        s * 1e3,
        1.0 / s,
        a.batch_size as f64 / s
    );
    Ok(())
}
