//! `trainer train-captioner`, `trainer merge-captioner` and `trainer
//! bench-captioner`: flags and the glue to `roadrep::trainer::blip`.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use roadrep::trainer::blip::CandleBlip;
use roadrep::trainer::blip::loss::CaptionTokenizer;
use roadrep::trainer::blip::merge::merge_captioner;
use roadrep::trainer::blip::train::{self as cap_train, CaptionBatcher, CaptionTrainConfig};
use roadrep::trainer::eval;
use roadrep::trainer::lora::LoraAdapter;
use roadrep::trainer::train::{ADAPTER_DIR, write_json};

use super::{
    DataArgs, RunArgs, folder_name, load_data, read_config, set, stopped_early, trained,
    write_loss_curve,
};

/// LoRA targets of the vision encoder (`--vision`).
const VISION_TARGETS: [&str; 2] = ["self_attn.qkv", "self_attn.projection"];

/// `trainer train-captioner`.
#[derive(Args)]
pub struct TrainCaptionerArgs {
    /// Base BLIP model directory (models/export.py --blip).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Output directory (adapter/, checkpoint/, history.json, loss.svg).
    #[arg(long)]
    out: PathBuf,
    /// TOML settings file (the field names of `CaptionTrainConfig` and its
    /// `Schedule`); flags override it.
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
    /// LoRA `target_modules` (comma-separated PEFT suffixes; default: the
    /// text decoder's self.query,self.key,self.value,attention.output.dense,
    /// crossattention.output.dense).
    #[arg(long, value_delimiter = ',')]
    target_modules: Option<Vec<String>>,
    /// Also adapt the vision encoder (self_attn.qkv, self_attn.projection).
    #[arg(long)]
    vision: bool,
    #[command(flatten)]
    run: RunArgs,
    /// Image-caption pairs per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Checkpoint every N optimizer steps too (0 = at epoch ends only).
    #[arg(long)]
    checkpoint_every_steps: Option<usize>,
    /// Label smoothing (default: the model config's, as transformers).
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Prompt the captions follow (as the daemon's [caption] prompt).
    #[arg(long)]
    prompt: Option<String>,
    /// Allow horizontal flips (never for signs).
    #[arg(long)]
    hflip: bool,
    /// Greedy-caption the validation split before and after, and print BLEU.
    #[arg(long)]
    bleu: bool,
    /// Also write the merged model directory to out/model.
    #[arg(long)]
    merge: bool,
}

/// `trainer merge-captioner`.
#[derive(Args)]
pub struct MergeCaptionerArgs {
    /// Base BLIP model directory.
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
    /// Also derive the merged directory's INT8 text decoder
    /// (`models/modeldir.py int8`, Python with onnxruntime).
    #[arg(long)]
    int8: bool,
}

/// `trainer bench-captioner`.
#[derive(Args)]
pub struct BenchCaptionerArgs {
    /// BLIP model directory (e.g. models/blip-random-full for BLIP-base).
    #[arg(long)]
    model: PathBuf,
    /// Timed optimizer steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Image-caption pairs per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
}

/// `trainer train-captioner`.
pub fn run_train(a: TrainCaptionerArgs, device: &Device) -> Result<()> {
    let mut cfg: CaptionTrainConfig = read_config(a.config.as_deref())?;
    a.run.apply(&mut cfg.schedule);
    set(&mut cfg.lora.r, a.rank);
    set(&mut cfg.lora.lora_alpha, a.alpha);
    set(&mut cfg.lora.lora_dropout, a.dropout);
    set(&mut cfg.lora.target_modules, a.target_modules);
    if a.vision {
        for t in VISION_TARGETS {
            if !cfg.lora.target_modules.iter().any(|m| m == t) {
                cfg.lora.target_modules.push(t.to_string());
            }
        }
    }
    set(&mut cfg.batch_size, a.batch_size);
    set(&mut cfg.grad_accum_steps, a.grad_accum);
    set(&mut cfg.checkpoint_every_steps, a.checkpoint_every_steps);
    cfg.label_smoothing = a.label_smoothing.or(cfg.label_smoothing);
    cfg.prompt = a.prompt.or(cfg.prompt);
    cfg.augment.hflip |= a.hflip;
    cfg.lora.base_model_name_or_path = a.model.display().to_string();
    // Bad settings fail before the dataset is read.
    cfg.validate()?;

    let model = CandleBlip::load(&a.model, device)?;
    let tokenizer = CaptionTokenizer::new(&model, cfg.prompt.as_deref(), cfg.max_text_tokens)?;
    let data = load_data(&a.data, &model.preprocessor())?;
    tracing::info!(samples = data.samples.len(), "Dataset loaded.");
    let (_, val) = cfg.schedule.split(data.samples.len(), "samples")?;
    let batcher = CaptionBatcher::new(&model, &data, &tokenizer)?;
    let bleu = |adapter: Option<&LoraAdapter>| -> Result<f64> {
        let hyps = batcher.captions(&model, adapter, &val, 20)?;
        let refs: Vec<Vec<String>> = val
            .iter()
            .map(|&i| vec![data.samples[i].caption.clone()])
            .collect();
        Ok(eval::bleu(&hyps, &refs)[3])
    };
    let before = if a.bleu && !val.is_empty() {
        Some(bleu(None)?)
    } else {
        None
    };
    let (adapter, outcome) =
        cap_train::train(&model, &tokenizer, &data, &cfg, &a.out, a.run.options())?;
    write_loss_curve(&a.out, &outcome.history)?;
    println!(
        "{}, best val loss {:?}{}; adapter in {}",
        trained(outcome.steps, outcome.epochs, outcome.steps_per_sec, 2),
        outcome.best_val_loss,
        stopped_early(outcome.stopped_early),
        a.out.join(ADAPTER_DIR).display()
    );
    if let Some(before) = before {
        let after = bleu(Some(&adapter))?;
        write_json(
            &a.out.join("eval.json"),
            &serde_json::json!({ "val_bleu4_before": before, "val_bleu4_after": after, "split": outcome.split }),
        )?;
        println!("validation BLEU-4 (greedy): before {before:.4}, after {after:.4}");
    }
    if a.merge {
        let out = a.out.join("model");
        let name = format!("{}-lora", model.manifest.name);
        let merged = merge_captioner(&model, &adapter, &out, &name)?;
        println!(
            "merged model in {} (fingerprint {})",
            merged.dir.display(),
            merged.fingerprint
        );
    }
    Ok(())
}

/// `trainer merge-captioner`.
pub fn run_merge(a: MergeCaptionerArgs, device: &Device) -> Result<()> {
    let model = CandleBlip::load(&a.model, device)?;
    let adapter = LoraAdapter::load(&a.adapter, &model.base)?;
    let name = a.name.unwrap_or_else(|| folder_name(&a.out));
    let outcome = merge_captioner(&model, &adapter, &a.out, &name)?;
    println!(
        "merged {} initializers into {} (fingerprint {})",
        outcome.changed.len(),
        outcome.dir.display(),
        outcome.fingerprint
    );
    if a.int8 {
        crate::derive_int8(&outcome.dir)?;
    }
    Ok(())
}

/// `trainer bench-captioner`.
pub fn run_bench(a: BenchCaptionerArgs, device: &Device) -> Result<()> {
    let model = CandleBlip::load(&a.model, device)?;
    let s = cap_train::seconds_per_step(&model, a.batch_size, a.rank, a.steps)?;
    println!(
        "{}: batch {}, LoRA r={} on the decoder's self/cross attention, {} timed steps: \
         {:.3} s/step, {:.3} steps/s, {:.2} pairs/s",
        model.manifest.name,
        a.batch_size,
        a.rank,
        a.steps,
        s,
        1.0 / s,
        a.batch_size as f64 / s
    );
    Ok(())
}
