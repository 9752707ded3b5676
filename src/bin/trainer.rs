//! `trainer`: offline LoRA fine-tuning of roadrep's CLIP model directories
//! (feature `trainer`). Thin: parses flags, sets up logs, calls
//! `roadrep::trainer`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use roadrep::models::ModelManifest;
use roadrep::tagging::LabelSets;
use roadrep::trainer::clip::CandleClip;
use roadrep::trainer::config::{Schedule, TrainConfig, read_toml};
use roadrep::trainer::dataset::{self, DataFormat, LoadedDataset, OnBadRecord};
use roadrep::trainer::lora::LoraAdapter;
use roadrep::trainer::report::{self, EvalReport};
use roadrep::trainer::tokens::ClipTokenizer;
use roadrep::trainer::train::{self, Batcher, HistoryPoint, RunOptions};
use roadrep::trainer::{eval, merge};
use serde::de::DeserializeOwned;

#[path = "trainer/autocaption.rs"]
mod autocaption;
#[path = "trainer/captioner.rs"]
mod captioner;
#[path = "trainer/eval_captioner.rs"]
mod eval_captioner;
#[path = "trainer/fusion.rs"]
mod fusion;

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "LoRA fine-tuning of roadrep CLIP and BLIP models (candle, CPU)"
)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info`, `roadrep=debug`.
    #[arg(long, default_value = "info,ort=warn", global = true)]
    log: String,
    /// Compute device.
    #[arg(long, value_enum, default_value = "cpu", global = true)]
    device: DeviceKind,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceKind {
    Cpu,
    /// Needs a build of candle with its `cuda` feature (not enabled here).
    Cuda,
}

#[derive(Subcommand)]
enum Command {
    /// List the linear layers of a model and which ones LoRA targets.
    Inspect {
        /// Model directory (manifest.toml, ONNX files).
        #[arg(long)]
        model: PathBuf,
        /// Module name suffixes to target.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "q_proj,k_proj,v_proj,out_proj"
        )]
        target_modules: Vec<String>,
    },
    /// Train a LoRA adapter; optionally write the merged model directory.
    Train(TrainArgs),
    /// Evaluate a model (and an adapter against it) on a labelled dataset.
    Eval(EvalArgs),
    /// Fold an adapter into a new model directory the daemon loads.
    Merge {
        /// Base model directory.
        #[arg(long)]
        model: PathBuf,
        /// Adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// Output model directory.
        #[arg(long)]
        out: PathBuf,
        /// Name recorded in the new manifest (default: the folder name).
        #[arg(long)]
        name: Option<String>,
        /// Also derive the INT8 image encoder (runs models/modeldir.py with
        /// onnxruntime's quantizer; `make setup` installs it in .venv).
        #[arg(long)]
        int8: bool,
    },
    /// BLIP-caption an image set into a training manifest (JSONL; resumable).
    Autocaption(autocaption::AutocaptionArgs),
    /// Train a LoRA adapter of a BLIP captioner on image-caption pairs.
    TrainCaptioner(captioner::TrainCaptionerArgs),
    /// Fold a captioner adapter into a BLIP model directory the daemon loads.
    MergeCaptioner(captioner::MergeCaptionerArgs),
    /// Captioner training steps per second on synthetic batches.
    BenchCaptioner(captioner::BenchCaptionerArgs),
    /// BLEU-1..4 and CIDEr-D of the base and the fine-tuned captioner on the
    /// held-out split; report.json and report.html.
    EvalCaptioner(eval_captioner::EvalCaptionerArgs),
    /// Train a rig fusion model on captioned multi-camera rigs (CLIP frozen).
    TrainFusion(fusion::TrainFusionArgs),
    /// Text-to-rig recall of a fusion model against the mean of the views
    /// and the anchor view alone.
    EvalFusion(fusion::EvalFusionArgs),
    /// Fusion training steps per second on random rigs (full size by default).
    BenchFusion(fusion::BenchFusionArgs),
    /// Training steps per second on synthetic batches (no data needed).
    Bench {
        /// Model directory.
        #[arg(long)]
        model: PathBuf,
        /// Timed optimizer steps (after one warm-up step).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Pairs per batch.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// LoRA rank.
        #[arg(long, default_value_t = 8)]
        rank: usize,
    },
}

#[derive(Args)]
struct DataArgs {
    /// Dataset: CSV/JSONL manifest, BDD100K label JSON, or a class-folder root.
    #[arg(long)]
    data: PathBuf,
    /// Dataset format.
    #[arg(long, value_enum, default_value = "auto")]
    data_format: DataFormat,
    /// Image folder of a BDD100K label file (default: the file's folder).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Caption templates for class folders (`{}` = class name); repeatable.
    #[arg(long = "class-template")]
    class_templates: Vec<String>,
    /// What to do with a record whose image is missing or corrupt.
    #[arg(long, value_enum, default_value = "skip")]
    on_bad_record: OnBadRecord,
}

#[derive(Args)]
struct TrainArgs {
    /// Base model directory.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Output directory (adapter/, checkpoint/, history.json, loss.svg).
    #[arg(long)]
    out: PathBuf,
    /// TOML settings file (see `roadrep::trainer::config`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// LoRA rank `r`.
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA `lora_alpha`.
    #[arg(long)]
    alpha: Option<f64>,
    /// LoRA `lora_dropout`.
    #[arg(long)]
    dropout: Option<f32>,
    /// LoRA `target_modules` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    target_modules: Option<Vec<String>>,
    #[command(flatten)]
    run: RunArgs,
    /// Pairs per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Checkpoint every N optimizer steps too (0 = at epoch ends only).
    #[arg(long)]
    checkpoint_every_steps: Option<usize>,
    /// Allow horizontal flips (never for signs).
    #[arg(long)]
    hflip: bool,
    /// Also write the merged model directory to out/model.
    #[arg(long)]
    merge: bool,
}

/// Flags both training commands share: the [`Schedule`] settings (they
/// override the --config file) and how the run behaves.
#[derive(Args)]
struct RunArgs {
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Warmup steps.
    #[arg(long)]
    warmup: Option<usize>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Validation fraction.
    #[arg(long)]
    val_fraction: Option<f32>,
    /// Seed of the split, shuffles and every random draw of the run.
    #[arg(long)]
    seed: Option<u64>,
    /// Early-stopping patience in epochs (0 = off).
    #[arg(long)]
    patience: Option<usize>,
    /// Continue from out/checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl RunArgs {
    /// Overrides the settings these flags give.
    fn apply<D>(&self, s: &mut Schedule<D>) {
        set(&mut s.epochs, self.epochs);
        set(&mut s.learning_rate, self.lr);
        set(&mut s.warmup_steps, self.warmup);
        s.max_steps = self.max_steps.or(s.max_steps);
        set(&mut s.val_fraction, self.val_fraction);
        set(&mut s.seed, self.seed);
        set(&mut s.early_stopping_patience, self.patience);
    }

    /// How the run behaves (no step budget: it runs its schedule).
    fn options(&self) -> RunOptions {
        RunOptions {
            resume: self.resume,
            show_progress: !self.quiet,
            stop_after_steps: None,
        }
    }
}

/// The settings of the --config file (a `TrainConfig`, a
/// `FusionTrainConfig`), or the defaults without one.
fn read_config<C: DeserializeOwned + Default>(path: Option<&Path>) -> Result<C> {
    Ok(path.map(read_toml).transpose()?.unwrap_or_default())
}

/// `out/loss.svg`: the loss curves of a run.
fn write_loss_curve(out: &Path, history: &[HistoryPoint]) -> Result<()> {
    report::write_text(&out.join("loss.svg"), &report::loss_curve_svg(history))?;
    Ok(())
}

/// `*field = value` where a flag gave one.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// The start of a training command's last line: "trained N steps in M
/// epochs (R steps/s)", R with `decimals` decimals.
fn trained(steps: usize, epochs: usize, steps_per_sec: f64, decimals: usize) -> String {
    format!("trained {steps} steps in {epochs} epochs ({steps_per_sec:.decimals$} steps/s)")
}

/// ", stopped early" where early stopping ended the run.
fn stopped_early(stopped: bool) -> &'static str {
    if stopped { ", stopped early" } else { "" }
}

#[derive(Args)]
struct EvalArgs {
    /// Base model directory.
    #[arg(long)]
    model: PathBuf,
    /// Adapter to compare against the base.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Label sets for zero-shot accuracy (e.g. config/labels.toml).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// JSONL of generated captions (`{"image", "caption"}`, e.g. from
    /// `autocaption`) for BLEU-1..4 and CIDEr-D against the dataset's captions.
    #[arg(long)]
    captions: Option<PathBuf>,
    /// JSON report path.
    #[arg(long)]
    report: PathBuf,
    /// SVG plot of before/after metrics (default: next to the report).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Batch size of the forward passes.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: `{:#}` joins the context chain (no backtrace dump).
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let device = match cli.device {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Cuda => Device::new_cuda(0).context("--device cuda")?,
    };
    match cli.command {
        Command::Inspect {
            model,
            target_modules,
        } => inspect(&model, &target_modules, &device),
        Command::Train(args) => run_train(args, &device),
        Command::Eval(args) => run_eval(args, &device),
        Command::Merge {
            model,
            adapter,
            out,
            name,
            int8,
        } => {
            let clip = CandleClip::load(&model, &device)?;
            let adapter = LoraAdapter::load(&adapter, &clip.base)?;
            let name = name.unwrap_or_else(|| folder_name(&out));
            let outcome = merge::merge_into(&model, &adapter, &out, &name)?;
            println!(
                "merged {} initializers into {} (fingerprint {})",
                outcome.changed.len(),
                outcome.dir.display(),
                outcome.fingerprint
            );
            if int8 {
                derive_int8(&outcome.dir)?;
            }
            Ok(())
        }
        Command::Autocaption(args) => autocaption::run(args),
        Command::TrainCaptioner(args) => captioner::run_train(args, &device),
        Command::MergeCaptioner(args) => captioner::run_merge(args, &device),
        Command::BenchCaptioner(args) => captioner::run_bench(args, &device),
        Command::EvalCaptioner(args) => eval_captioner::run(args, &device),
        Command::TrainFusion(args) => fusion::run_train(args, &device),
        Command::EvalFusion(args) => fusion::run_eval(args, &device),
        Command::BenchFusion(args) => fusion::run_bench(args, &device),
        Command::Bench {
            model,
            steps,
            batch_size,
            rank,
        } => bench(&model, steps, batch_size, rank, &device),
    }
}

fn folder_name(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("merged")
        .to_string()
}

fn inspect(model: &Path, targets: &[String], device: &Device) -> Result<()> {
    let clip = CandleClip::load(model, device)?;
    let config = roadrep::trainer::lora::LoraConfig {
        target_modules: targets.to_vec(),
        ..Default::default()
    };
    let mut lora_params = 0usize;
    for (module, (out, inp)) in clip.base.linear_modules() {
        let hit = config.targets(&module);
        if hit {
            lora_params += config.r * (out + inp);
        }
        let file = clip
            .base
            .origin(&format!("{module}.weight"))
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        println!(
            "{} {module}.weight [{out}, {inp}] ({file})",
            if hit { "LoRA" } else { "    " }
        );
    }
    println!("trainable parameters at r={}: {lora_params}", config.r);
    Ok(())
}

fn load_data(args: &DataArgs, pre: &roadrep::models::ImagePreprocessor) -> Result<LoadedDataset> {
    let samples = dataset::read_samples(
        &args.data,
        args.data_format,
        args.images.as_deref(),
        &args.class_templates,
    )?;
    let loaded = dataset::load_images(samples, pre, args.on_bad_record)?;
    if !loaded.skipped.is_empty() {
        tracing::warn!(count = loaded.skipped.len(), "Records skipped.");
    }
    if loaded.samples.is_empty() {
        bail!("'{}': no usable records", args.data.display());
    }
    Ok(loaded)
}

fn run_train(a: TrainArgs, device: &Device) -> Result<()> {
    let mut cfg: TrainConfig = read_config(a.config.as_deref())?;
    a.run.apply(&mut cfg.schedule);
    set(&mut cfg.lora.r, a.rank);
    set(&mut cfg.lora.lora_alpha, a.alpha);
    set(&mut cfg.lora.lora_dropout, a.dropout);
    set(&mut cfg.lora.target_modules, a.target_modules);
    set(&mut cfg.batch_size, a.batch_size);
    set(&mut cfg.grad_accum_steps, a.grad_accum);
    set(&mut cfg.checkpoint_every_steps, a.checkpoint_every_steps);
    cfg.augment.hflip |= a.hflip;
    cfg.lora.base_model_name_or_path = a.model.display().to_string();
    // Bad settings fail before the dataset is read.
    cfg.validate()?;

    let manifest = ModelManifest::read_verified(&a.model)?;
    let pre = manifest.image_preprocessor(&a.model)?;
    let tokenizer = ClipTokenizer::from_model_dir(&a.model, &manifest)?;
    let clip = CandleClip::load(&a.model, device)?;
    let data = load_data(&a.data, &pre)?;
    tracing::info!(samples = data.samples.len(), "Dataset loaded.");
    let (adapter, outcome) = train::train(
        &clip,
        &tokenizer,
        &pre,
        &data,
        &cfg,
        &a.out,
        a.run.options(),
    )?;
    write_loss_curve(&a.out, &outcome.history)?;
    println!(
        "{}, best val loss {:?}{}; adapter in {}",
        trained(outcome.steps, outcome.epochs, outcome.steps_per_sec, 2),
        outcome.best_val_loss,
        stopped_early(outcome.stopped_early),
        a.out.join(train::ADAPTER_DIR).display()
    );
    if a.merge {
        let out = a.out.join("model");
        let name = format!("{}-lora", manifest.name);
        let merged = merge::merge_into(&a.model, &adapter, &out, &name)?;
        println!(
            "merged model in {} (fingerprint {})",
            merged.dir.display(),
            merged.fingerprint
        );
    }
    Ok(())
}

fn run_eval(a: EvalArgs, device: &Device) -> Result<()> {
    let manifest = ModelManifest::read_verified(&a.model)?;
    let pre = manifest.image_preprocessor(&a.model)?;
    let tokenizer = ClipTokenizer::from_model_dir(&a.model, &manifest)?;
    let clip = CandleClip::load(&a.model, device)?;
    let adapter = match &a.adapter {
        Some(p) => Some(LoraAdapter::load(p, &clip.base)?),
        None => None,
    };
    let data = load_data(&a.data, &pre)?;
    let labels = match &a.labels {
        Some(p) => Some(LabelSets::from_file(p)?),
        None => None,
    };
    let batcher = Batcher::new(&data, &tokenizer, pre.clone(), device)?;
    let sample_labels: Vec<_> = data.samples.iter().map(|s| &s.labels).collect();
    let run = |adapter: Option<&LoraAdapter>| {
        eval::evaluate(
            &clip,
            adapter,
            &tokenizer,
            &batcher,
            &sample_labels,
            labels.as_ref(),
            a.batch_size,
        )
    };
    let before = run(None)?;
    let after = match &adapter {
        Some(ad) => Some(run(Some(ad))?),
        None => None,
    };
    let (bleu, cider) = match &a.captions {
        Some(p) => {
            let (b, c) = caption_scores(p, &data)?;
            (Some(b), Some(c))
        }
        None => (None, None),
    };
    let report = EvalReport {
        model: a.model.display().to_string(),
        adapter: a.adapter.as_ref().map(|p| p.display().to_string()),
        data: a.data.data.display().to_string(),
        skipped: data.skipped.clone(),
        before,
        after,
        bleu,
        cider,
    };
    train::write_json(&a.report, &report)?;
    let plot = a.plot.unwrap_or_else(|| a.report.with_extension("svg"));
    report::write_text(
        &plot,
        &report::before_after_svg(&report.before, report.after.as_ref()),
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// BLEU-1..4 and CIDEr-D of generated captions against every dataset
/// caption of the same image.
fn caption_scores(path: &Path, data: &LoadedDataset) -> Result<([f64; 4], f64)> {
    #[derive(serde::Deserialize)]
    struct Line {
        image: String,
        caption: String,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("'{}'", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let (mut hyps, mut refs) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let l: Line = serde_json::from_str(line)
            .with_context(|| format!("'{}' line {}", path.display(), i + 1))?;
        let image = base.join(&l.image);
        let r: Vec<String> = data
            .samples
            .iter()
            .filter(|s| s.image == image)
            .map(|s| s.caption.clone())
            .collect();
        if r.is_empty() {
            bail!(
                "'{}' line {}: image '{}' is not in the dataset",
                path.display(),
                i + 1,
                l.image
            );
        }
        hyps.push(l.caption);
        refs.push(r);
    }
    let cider = roadrep::trainer::cider::cider_d(&hyps, &refs).score;
    Ok((eval::bleu(&hyps, &refs), cider))
}

fn bench(
    model: &Path,
    steps: usize,
    batch_size: usize,
    rank: usize,
    device: &Device,
) -> Result<()> {
    let manifest = ModelManifest::read_verified(model)?;
    let pre = manifest.image_preprocessor(model)?;
    let tokenizer = ClipTokenizer::from_model_dir(model, &manifest)?;
    let clip = CandleClip::load(model, device)?;
    let t = roadrep::trainer::bench::seconds_per_step(
        &clip, &tokenizer, &pre, batch_size, rank, steps,
    )?;
    println!(
        "{}: batch {batch_size}, LoRA r={rank} on q/k/v/out of both towers, {steps} timed steps: \
         {:.3} s/step, {:.3} steps/s, {:.2} pairs/s; forward alone {:.3} s ({:.2} pairs/s)",
        manifest.name,
        t.step,
        1.0 / t.step,
        batch_size as f64 / t.step,
        t.forward,
        batch_size as f64 / t.forward
    );
    Ok(())
}

/// Derives the INT8 graph of a merged directory (CLIP:
/// `image_encoder.int8.onnx`; BLIP: `text_decoder.int8.onnx`) with
/// onnxruntime's dynamic quantizer (Python-only), through
/// `models/modeldir.py`. The interpreter is `$ROADREP_PYTHON`, else the
/// project's `.venv`, else `python3`.
fn derive_int8(dir: &std::path::Path) -> anyhow::Result<()> {
    let python = std::env::var_os("ROADREP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let venv = PathBuf::from(".venv/bin/python");
            if venv.is_file() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
    let script = std::env::var_os("ROADREP_MODELDIR_SCRIPT")
        .map_or_else(|| PathBuf::from("models/modeldir.py"), PathBuf::from);
    let status = std::process::Command::new(&python)
        .arg(&script)
        .arg("int8")
        .arg(dir)
        .status()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    anyhow::ensure!(
        status.success(),
        "INT8 derivation of '{}' failed ({status})",
        dir.display()
    );
    Ok(())
}
