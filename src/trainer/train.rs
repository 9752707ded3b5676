//! The training loop: symmetric InfoNCE over image-caption batches, AdamW
//! with warmup and cosine decay, gradient accumulation, early stopping on
//! the validation loss, and per-epoch resumable checkpoints.
//!
//! Output directory:
//! - `adapter/`: the best adapter so far (lowest validation loss; the last
//!   one without a validation split), PEFT layout.
//! - `checkpoint/`: adapter + optimizer moments + `state.json`, written at
//!   the end of every epoch and every `checkpoint_every_steps` optimizer
//!   steps; `--resume` continues from there with the same shuffles (each
//!   epoch's order is derived from the seed and its number) and the same
//!   dropout/augmentation stream, so a resumed run equals an uninterrupted
//!   one.
//! - `train_config.json`, `history.json`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{D, Device, Tensor, Var};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TrainerError;
use super::clip::{CandleClip, Forward, normalize_rows};
use super::config::TrainConfig;
use super::dataset::{LoadedDataset, to_chw};
use super::lora::{LOGIT_SCALE, LoraAdapter};
use super::optim::AdamW;
use super::rng::SplitMix64;
use super::tokens::ClipTokenizer;

/// Adapter sub-directory of a run.
pub const ADAPTER_DIR: &str = "adapter";
/// Checkpoint sub-directory of a run.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "state.json";
const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// One point of the loss curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Optimizer step after which it was measured.
    pub step: usize,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training loss of the step's micro-batches.
    pub train_loss: f32,
    /// Validation loss (end of epoch only).
    pub val_loss: Option<f32>,
    /// Learning rate of the step.
    pub lr: f64,
}

/// Resumable state saved at the end of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    #[serde(flatten)]
    run: Progress,
    best_val_loss: Option<f32>,
    config: TrainConfig,
}

/// Where a run stands: the part of a checkpoint's state both trainers share
/// (`#[serde(flatten)]`-ed into theirs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// The epoch in progress or to start.
    pub next_epoch: usize,
    /// First batch of `next_epoch` still to run (mid-epoch checkpoints).
    #[serde(default)]
    pub next_batch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Epochs since validation last improved.
    pub bad_epochs: usize,
    /// The stream of dropout (and augmentation) draws.
    pub dropout_rng: SplitMix64,
    /// Loss curves.
    pub history: Vec<HistoryPoint>,
}

impl Progress {
    /// A run not started yet, its dropout stream seeded with `dropout_seed`.
    pub fn new(dropout_seed: u64) -> Self {
        Self {
            next_epoch: 0,
            next_batch: 0,
            step: 0,
            bad_epochs: 0,
            dropout_rng: SplitMix64::new(dropout_seed),
            history: Vec::new(),
        }
    }

    /// The batch the next epoch starts at (only a resumed one starts
    /// part-way), or `None` when the `total` steps are done.
    pub fn begin_epoch(&mut self, total: usize) -> Option<usize> {
        let skip = std::mem::take(&mut self.next_batch);
        (self.step < total || skip > 0).then_some(skip)
    }

    /// Marks the position a mid-epoch checkpoint resumes from: `next_batch`
    /// of `epoch`, with the dropout stream as `rng` has it.
    pub fn hold(&mut self, epoch: usize, next_batch: usize, rng: &RefCell<SplitMix64>) {
        self.next_epoch = epoch;
        self.next_batch = next_batch;
        self.dropout_rng = rng.borrow().clone();
    }

    /// Books the validation result `val` of `epoch` (`None`: no validation
    /// split) against `best`, as `better` compares them; `val_loss` is its
    /// loss for the history. Returns whether the weights are the ones to
    /// keep (a new best, or always without validation).
    pub fn end_epoch<B: Copy>(
        &mut self,
        epoch: usize,
        val: Option<B>,
        val_loss: impl Fn(B) -> f32,
        best: &mut Option<B>,
        better: impl Fn(B, Option<B>) -> bool,
    ) -> bool {
        if let (Some(v), Some(last)) = (val, self.history.last_mut()) {
            last.val_loss = Some(val_loss(v));
        }
        self.next_epoch = epoch + 1;
        match val {
            Some(v) if better(v, *best) => {
                *best = Some(v);
                self.bad_epochs = 0;
                true
            }
            Some(_) => {
                self.bad_epochs += 1;
                false
            }
            None => true,
        }
    }
}

/// A run in this process: its progress bar, clock and step budget.
pub struct Session {
    bar: indicatif::ProgressBar,
    started: Instant,
    steps_at_start: usize,
    stop_after_steps: Option<usize>,
}

impl Session {
    /// Starts the clock and the bar (at `run`'s step of `total`).
    pub fn start(options: &RunOptions, total: usize, run: &Progress) -> Self {
        Self {
            bar: progress_bar(options.show_progress, total as u64, run.step as u64),
            started: Instant::now(),
            steps_at_start: run.step,
            stop_after_steps: options.stop_after_steps,
        }
    }

    /// Books an optimizer step of `epoch` at learning rate `lr`.
    pub fn step_done(&self, run: &mut Progress, epoch: usize, train_loss: f32, lr: f64) {
        run.step += 1;
        run.history.push(HistoryPoint {
            step: run.step,
            epoch,
            train_loss,
            val_loss: None,
            lr,
        });
        self.bar
            .set_message(format!("epoch {} loss {train_loss:.4}", epoch + 1));
        self.bar.inc(1);
    }

    /// Whether this process has run its `stop_after_steps`.
    pub fn should_stop(&self, run: &Progress) -> bool {
        self.stop_after_steps
            .is_some_and(|n| run.step - self.steps_at_start >= n)
    }

    /// Clears the bar and writes `history.json`; returns the optimizer
    /// steps per second of this process.
    pub fn finish(self, run: &Progress, out_dir: &Path) -> Result<f64, TrainerError> {
        self.bar.finish_and_clear();
        let elapsed = self.started.elapsed().as_secs_f64();
        write_json(&out_dir.join("history.json"), &run.history)?;
        Ok((run.step - self.steps_at_start) as f64 / elapsed.max(1e-9))
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    /// Optimizer steps in total (including resumed ones).
    pub steps: usize,
    /// Epochs finished.
    pub epochs: usize,
    /// Best validation loss, if there was a validation split.
    pub best_val_loss: Option<f32>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether `stop_after_steps` ended it before the schedule did.
    pub interrupted: bool,
    /// Loss curves.
    pub history: Vec<HistoryPoint>,
    /// Optimizer steps per second in this process (wall clock).
    pub steps_per_sec: f64,
    /// Training samples / validation samples.
    pub split: (usize, usize),
}

/// Images and token ids of a dataset, ready for batches.
pub struct Batcher<'a> {
    data: &'a LoadedDataset,
    tokens: Vec<Vec<u32>>,
    /// Group id per sample: equal captions share one.
    pub groups: Vec<usize>,
    tokenizer: &'a ClipTokenizer,
    pre: crate::models::ImagePreprocessor,
    device: Device,
}

impl<'a> Batcher<'a> {
    /// Tokenises every caption once.
    pub fn new(
        data: &'a LoadedDataset,
        tokenizer: &'a ClipTokenizer,
        pre: crate::models::ImagePreprocessor,
        device: &Device,
    ) -> Result<Self, TrainerError> {
        let tokens = data
            .samples
            .iter()
            .map(|s| tokenizer.encode(&s.caption))
            .collect::<Result<_, _>>()?;
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let groups = data
            .samples
            .iter()
            .map(|s| {
                let n = ids.len();
                *ids.entry(s.caption.as_str()).or_insert(n)
            })
            .collect();
        Ok(Self {
            data,
            tokens,
            groups,
            tokenizer,
            pre,
            device: device.clone(),
        })
    }

    /// `[n, 3, s, s]` pixels of `idx`, augmented when `rng` is given.
    pub fn pixels(
        &self,
        idx: &[usize],
        augment: &super::dataset::AugmentConfig,
        mut rng: Option<&mut SplitMix64>,
    ) -> Result<Tensor, TrainerError> {
        let s = self.pre.crop_size as usize;
        let mut flat = Vec::with_capacity(idx.len() * 3 * s * s);
        for &i in idx {
            flat.extend(to_chw(
                &self.data.pixels[i],
                &self.pre,
                augment,
                rng.as_deref_mut(),
            ));
        }
        Ok(Tensor::from_vec(flat, (idx.len(), 3, s, s), &self.device)?)
    }

    /// `[n, seq]` token ids of `idx`.
    pub fn ids(&self, idx: &[usize]) -> Result<Tensor, TrainerError> {
        let rows: Vec<&[u32]> = idx.iter().map(|&i| self.tokens[i].as_slice()).collect();
        self.tokenizer.batch(&rows, &self.device)
    }

    /// `[n, n]` additive mask: `-inf` where two different samples share a
    /// caption. Template captions repeat (BDD100K, class folders); such pairs
    /// are not negatives.
    pub fn duplicate_mask(&self, idx: &[usize]) -> Result<Tensor, TrainerError> {
        let n = idx.len();
        let mut m = vec![0f32; n * n];
        for (a, &i) in idx.iter().enumerate() {
            for (b, &j) in idx.iter().enumerate() {
                if a != b && self.groups[i] == self.groups[j] {
                    m[a * n + b] = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Tensor::from_vec(m, (n, n), &self.device)?)
    }
}

/// Symmetric InfoNCE (CLIP's loss) of one batch.
pub fn batch_loss(
    model: &CandleClip,
    adapter: &LoraAdapter,
    batcher: &Batcher<'_>,
    idx: &[usize],
    train: Option<(&TrainConfig, &RefCell<SplitMix64>)>,
) -> Result<Tensor, TrainerError> {
    let fwd = Forward {
        adapter: Some(adapter),
        dropout: train.map(|(_, rng)| rng),
    };
    let pixels = match train {
        Some((cfg, rng)) => batcher.pixels(idx, &cfg.augment, Some(&mut rng.borrow_mut()))?,
        None => batcher.pixels(idx, &Default::default(), None)?,
    };
    let img = normalize_rows(&model.get_image_features(&pixels, fwd)?)?;
    let txt = normalize_rows(&model.get_text_features(&batcher.ids(idx)?, fwd)?)?;
    let scale = adapter.temperature()?.as_tensor().exp()?;
    let logits = img.matmul(&txt.t()?)?.broadcast_mul(&scale)?;
    let logits = (logits + batcher.duplicate_mask(idx)?)?;
    let loss = ((diag_cross_entropy(&logits)? + diag_cross_entropy(&logits.t()?)?)? * 0.5)?;
    Ok(loss)
}

/// Mean cross-entropy of rows whose target is the diagonal.
pub fn diag_cross_entropy(logits: &Tensor) -> candle_core::Result<Tensor> {
    let n = logits.dims()[0];
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    // Picked by index: `logits * eye` would be NaN where a masked -inf meets a 0.
    let diag = logits.contiguous()?.flatten_all()?.index_select(
        &Tensor::from_vec(
            (0..n as u32).map(|i| i * n as u32 + i).collect::<Vec<_>>(),
            n,
            logits.device(),
        )?,
        0,
    )?;
    (lse.squeeze(1)? - diag)?.mean_all()
}

/// Mean loss over `idx` in batches, without dropout or augmentation.
pub fn mean_loss(
    model: &CandleClip,
    adapter: &LoraAdapter,
    batcher: &Batcher<'_>,
    idx: &[usize],
    batch_size: usize,
) -> Result<Option<f32>, TrainerError> {
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in idx.chunks(batch_size) {
        if chunk.len() < 2 {
            continue;
        }
        let loss = batch_loss(model, adapter, batcher, chunk, None)?.to_scalar::<f32>()?;
        sum += loss as f64 * chunk.len() as f64;
        n += chunk.len();
    }
    Ok((n > 0).then(|| (sum / n as f64) as f32))
}

/// How a run behaves (not part of what it trains).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Continue from `out_dir/checkpoint` if there is one.
    pub resume: bool,
    /// Draw a progress bar.
    pub show_progress: bool,
    /// Leave after this many optimizer steps in this process, with a
    /// checkpoint (a time-boxed run; a later `resume` finishes the schedule).
    pub stop_after_steps: Option<usize>,
}

/// Trains a fresh adapter (or resumes one) on `data`, writing into `out_dir`.
pub fn train(
    model: &CandleClip,
    tokenizer: &ClipTokenizer,
    pre: &crate::models::ImagePreprocessor,
    data: &LoadedDataset,
    cfg: &TrainConfig,
    out_dir: &Path,
    options: RunOptions,
) -> Result<(LoraAdapter, TrainOutcome), TrainerError> {
    cfg.validate()?;
    let device = model.base.device().clone();
    let batcher = Batcher::new(data, tokenizer, pre.clone(), &device)?;
    let (train_idx, val_idx) = cfg.schedule.split(data.samples.len(), "samples")?;
    write_config(out_dir, cfg)?;

    let adapter = LoraAdapter::new(
        cfg.lora.clone(),
        &model.base,
        model.logit_scale,
        cfg.schedule.seed,
    )?;
    let named = adapter.named_vars();
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let vars: Vec<_> = named.iter().map(|(_, v)| *v).collect();
    let decay: Vec<bool> = names.iter().map(|n| n != LOGIT_SCALE).collect();
    let mut opt = cfg.schedule.optimizer(&vars, decay)?;

    let micro_per_epoch = train_idx.len().div_ceil(cfg.batch_size);
    let total = cfg
        .schedule
        .total_steps(micro_per_epoch.div_ceil(cfg.grad_accum_steps));
    let ckpt_dir = out_dir.join(CHECKPOINT_DIR);
    let mut state = resume_from(options, &ckpt_dir, &named, &mut opt, cfg, |s: &RunState| {
        (&s.run, &s.config)
    })?
    .unwrap_or_else(|| RunState {
        run: Progress::new(cfg.schedule.seed ^ 0xD80F),
        best_val_loss: None,
        config: cfg.clone(),
    });

    let session = Session::start(&options, total, &state.run);
    let rng = RefCell::new(state.run.dropout_rng.clone());
    let (mut stopped_early, mut interrupted) = (false, false);
    let zero_grads = || vec![None::<Tensor>; vars.len()];
    'epochs: for epoch in state.run.next_epoch..cfg.schedule.epochs {
        let Some(skip) = state.run.begin_epoch(total) else {
            break;
        };
        let order = cfg.schedule.epoch_order(&train_idx, epoch);
        let batches = batches(&order, cfg.batch_size);
        let mut acc = zero_grads();
        let (mut acc_loss, mut acc_n) = (0f32, 0usize);
        for (b, chunk) in batches.iter().enumerate().skip(skip) {
            if state.run.step >= total {
                break;
            }
            let loss = batch_loss(model, &adapter, &batcher, chunk, Some((cfg, &rng)))?;
            let grads = (&loss / cfg.grad_accum_steps as f64)?.backward()?;
            for (slot, var) in acc.iter_mut().zip(&vars) {
                if !cfg.learn_temperature && var.as_tensor().rank() == 0 {
                    continue;
                }
                if let Some(g) = grads.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(prev) => (prev + g)?,
                        None => g.clone(),
                    });
                }
            }
            acc_loss += loss.to_scalar::<f32>()?;
            acc_n += 1;
            if acc_n == cfg.grad_accum_steps || b + 1 == batches.len() {
                let lr = cfg.schedule.lr(state.run.step, total);
                opt.step(&vars, &acc, lr)?;
                clamp_temperature(&adapter, cfg.max_logit_scale)?;
                let train_loss = acc_loss / acc_n as f32;
                session.step_done(&mut state.run, epoch, train_loss, lr);
                tracing::debug!(step = state.run.step, loss = train_loss, lr, "Step done.");
                acc = zero_grads();
                (acc_loss, acc_n) = (0.0, 0);
                let stop = session.should_stop(&state.run);
                let every = cfg.checkpoint_every_steps;
                if stop || (every > 0 && state.run.step.is_multiple_of(every)) {
                    // After an optimizer step nothing is accumulated, so
                    // the batch index is all a resume needs.
                    state.run.hold(epoch, b + 1, &rng);
                    save_checkpoint(&ckpt_dir, &named, &opt, &state)?;
                    state.run.next_batch = 0;
                }
                if stop {
                    interrupted = true;
                    break 'epochs;
                }
            }
        }
        let val = mean_loss(model, &adapter, &batcher, &val_idx, cfg.batch_size)?;
        let better = |v: f32, best: Option<f32>| best.is_none_or(|b| v < b);
        if state
            .run
            .end_epoch(epoch, val, |v| v, &mut state.best_val_loss, better)
        {
            adapter.save(&out_dir.join(ADAPTER_DIR))?;
        }
        tracing::info!(epoch = epoch + 1, step = state.run.step, val_loss = ?val, "Epoch done.");
        state.run.dropout_rng = rng.borrow().clone();
        save_checkpoint(&ckpt_dir, &named, &opt, &state)?;
        if session.should_stop(&state.run) {
            interrupted = true;
            break 'epochs;
        }
        if cfg.schedule.patience_exhausted(state.run.bad_epochs) {
            tracing::info!(
                epoch = epoch + 1,
                "Early stop: the validation loss stopped improving."
            );
            stopped_early = true;
            break 'epochs;
        }
    }
    let steps_per_sec = session.finish(&state.run, out_dir)?;
    // The best adapter is the result (the last one without validation); an
    // interrupted run may not have one yet and returns where it stopped.
    let result = if interrupted {
        adapter
    } else {
        LoraAdapter::load(&out_dir.join(ADAPTER_DIR), &model.base)?
    };
    let outcome = TrainOutcome {
        steps: state.run.step,
        epochs: state.run.next_epoch,
        best_val_loss: state.best_val_loss,
        stopped_early,
        interrupted,
        history: state.run.history,
        steps_per_sec,
        split: (train_idx.len(), val_idx.len()),
    };
    Ok((result, outcome))
}

/// The training batches of an epoch's `order`: `batch_size` items each,
/// a last one of fewer than 2 dropped (no negatives).
pub fn batches(order: &[usize], batch_size: usize) -> Vec<&[usize]> {
    order.chunks(batch_size).filter(|c| c.len() >= 2).collect()
}

/// Creates `out_dir` and writes the run's settings into it
/// (`train_config.json`).
pub fn write_config<C: Serialize>(out_dir: &Path, cfg: &C) -> Result<(), TrainerError> {
    std::fs::create_dir_all(out_dir).map_err(|e| TrainerError::io(out_dir, e))?;
    write_json(&out_dir.join("train_config.json"), cfg)
}

/// The state of the checkpoint in `dir`, with `vars` and `opt` restored
/// from it, when `options.resume` and there is one; `parts` reads a state's
/// progress and settings (a warning where they differ from `cfg`).
pub fn resume_from<S: DeserializeOwned, C: PartialEq>(
    options: RunOptions,
    dir: &Path,
    vars: &[(String, &Var)],
    opt: &mut AdamW,
    cfg: &C,
    parts: impl Fn(&S) -> (&Progress, &C),
) -> Result<Option<S>, TrainerError> {
    if !options.resume || !has_checkpoint(dir) {
        return Ok(None);
    }
    let state = load_checkpoint(dir, vars, opt, |s: &S| parts(s).0.step)?;
    let (run, config) = parts(&state);
    if config != cfg {
        tracing::warn!(
            "The checkpoint was written with other settings; continuing with the current ones."
        );
    }
    tracing::info!(
        epoch = run.next_epoch,
        step = run.step,
        "Resumed from checkpoint."
    );
    Ok(Some(state))
}

fn clamp_temperature(adapter: &LoraAdapter, max_scale: f32) -> Result<(), TrainerError> {
    let t = adapter.temperature()?;
    let v = t.as_tensor().to_scalar::<f32>()?;
    if v > max_scale.ln() {
        t.set(&Tensor::new(max_scale.ln(), t.device())?)?;
    }
    Ok(())
}

/// A progress bar over optimizer steps (hidden unless `show`).
pub fn progress_bar(show: bool, total: u64, done: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} steps {per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_position(done);
    bar
}

/// Writes `value` as pretty JSON.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), TrainerError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainerError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(|e| TrainerError::io(path, e))
}

/// Writes variables, optimizer moments and then `state` to a checkpoint
/// directory (shared with `trainer train-fusion`).
pub fn save_checkpoint<S: Serialize>(
    dir: &Path,
    vars: &[(String, &Var)],
    opt: &AdamW,
    state: &S,
) -> Result<(), TrainerError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    let mut tensors = opt.state(&names);
    for (name, var) in vars {
        tensors.insert(name.clone(), var.as_detached_tensor());
    }
    let path = dir.join(CHECKPOINT_FILE);
    candle_core::safetensors::save(&tensors, &path).map_err(|e| TrainerError::Checkpoint {
        path,
        message: e.to_string(),
    })?;
    // The state file last: a checkpoint without it is never resumed from.
    write_json(&dir.join(STATE_FILE), state)
}

/// Whether `dir` holds a complete checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}

/// Restores what [`save_checkpoint`] wrote into `vars` and `opt`; `step`
/// reads the optimizer step count from the state.
pub fn load_checkpoint<S: DeserializeOwned>(
    dir: &Path,
    vars: &[(String, &Var)],
    opt: &mut AdamW,
    step: impl Fn(&S) -> usize,
) -> Result<S, TrainerError> {
    let state_path = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&state_path).map_err(|e| TrainerError::io(&state_path, e))?;
    let state: S = serde_json::from_str(&text).map_err(|e| TrainerError::Checkpoint {
        path: state_path.clone(),
        message: e.to_string(),
    })?;
    let path = dir.join(CHECKPOINT_FILE);
    let fail = |message: String| TrainerError::Checkpoint {
        path: path.clone(),
        message,
    };
    let device = vars
        .first()
        .map_or(Device::Cpu, |(_, v)| v.device().clone());
    let tensors =
        candle_core::safetensors::load(&path, &device).map_err(|e| fail(e.to_string()))?;
    for (name, var) in vars {
        let t = tensors
            .get(name)
            .ok_or_else(|| fail(format!("tensor '{name}' is missing")))?;
        var.set(t)
            .map_err(|e| fail(format!("tensor '{name}': {e}")))?;
    }
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    opt.load_state(&names, &tensors, step(&state))
        .map_err(fail)?;
    Ok(state)
}
