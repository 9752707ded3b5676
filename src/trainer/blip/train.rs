//! `trainer train-captioner`: LoRA on BLIP with the teacher-forced
//! captioning loss ([`super::loss`]), over the image-caption datasets of
//! `trainer train` ([`crate::trainer::dataset`]).
//!
//! The loop pieces are `trainer train`'s: the [`Schedule`] (AdamW, warmup
//! and cosine decay, split, shuffles, early stopping on the validation
//! loss), [`Progress`] and [`Session`], and the checkpoints of
//! [`crate::trainer::train`] (every epoch end and every
//! `checkpoint_every_steps`; `--resume` continues exactly). The output
//! directory has the same layout: `adapter/` (best validation loss),
//! `checkpoint/`, `train_config.json`, `history.json`.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::CandleBlip;
use super::DEFAULT_TARGETS;
use super::loss::{CaptionIds, CaptionTokenizer};
use crate::trainer::TrainerError;
use crate::trainer::clip::Forward;
use crate::trainer::config::{Schedule, ScheduleDefaults};
use crate::trainer::dataset::{AugmentConfig, LoadedDataset, to_chw};
use crate::trainer::lora::{LoraAdapter, LoraConfig};
use crate::trainer::rng::SplitMix64;
use crate::trainer::train::{
    ADAPTER_DIR, CHECKPOINT_DIR, Progress, RunOptions, Session, TrainOutcome, resume_from,
    save_checkpoint, write_config,
};

/// `trainer train-captioner`'s [`ScheduleDefaults`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Captioner;

impl ScheduleDefaults for Captioner {
    fn schedule() -> Schedule<Self> {
        Schedule {
            epochs: 5,
            learning_rate: 1e-4,
            min_lr_ratio: 0.0,
            warmup_steps: 10,
            weight_decay: 0.01,
            max_steps: None,
            val_fraction: 0.1,
            seed: 0,
            early_stopping_patience: 3,
            defaults: PhantomData,
        }
    }
}

/// Everything a captioner run is configured with (TOML `--config`, saved
/// as `train_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptionTrainConfig {
    /// LoRA hyper-parameters (PEFT names); targets default to the text
    /// decoder's self- and cross-attention projections.
    pub lora: LoraConfig,
    /// Epochs, learning rate schedule, split, seed, early stopping.
    #[serde(flatten)]
    pub schedule: Schedule<Captioner>,
    /// Image-caption pairs per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum_steps: usize,
    /// Label smoothing of the loss (default: `text_config.label_smoothing`
    /// of the model's config.json, as transformers reads it).
    pub label_smoothing: Option<f64>,
    /// Text the captions follow (the daemon's `[caption] prompt`; not
    /// trained on).
    pub prompt: Option<String>,
    /// Longest decoder input in tokens (start token, prompt, caption, end).
    pub max_text_tokens: usize,
    /// Also checkpoint every this many optimizer steps (0 = epoch ends only).
    pub checkpoint_every_steps: usize,
    /// Image augmentation.
    pub augment: AugmentConfig,
}

impl Default for CaptionTrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig {
                target_modules: DEFAULT_TARGETS.map(String::from).to_vec(),
                ..Default::default()
            },
            schedule: Schedule::default(),
            batch_size: 8,
            grad_accum_steps: 1,
            label_smoothing: None,
            prompt: None,
            max_text_tokens: 40,
            checkpoint_every_steps: 100,
            augment: AugmentConfig::default(),
        }
    }
}

impl CaptionTrainConfig {
    /// Checks values a run cannot work with.
    pub fn validate(&self) -> Result<(), TrainerError> {
        self.lora.validate()?;
        let bad = |m: &str| Err(TrainerError::Config(m.into()));
        let s = &self.schedule;
        if self.batch_size == 0 || self.grad_accum_steps == 0 || s.epochs == 0 {
            return bad("batch_size, grad_accum_steps and epochs must be at least 1");
        }
        if s.max_steps == Some(0) {
            return bad("max_steps must be at least 1");
        }
        if s.learning_rate.is_nan()
            || s.learning_rate <= 0.0
            || !(0.0..=1.0).contains(&s.min_lr_ratio)
        {
            return bad("learning_rate must be > 0 and min_lr_ratio in [0, 1]");
        }
        if !(0.0..1.0).contains(&s.val_fraction) {
            return bad("val_fraction must be in [0, 1)");
        }
        if self
            .label_smoothing
            .is_some_and(|e| !(0.0..1.0).contains(&e))
        {
            return bad("label_smoothing must be in [0, 1)");
        }
        Ok(())
    }

    /// The label smoothing of the loss for `model`.
    pub fn smoothing(&self, model: &CandleBlip) -> f64 {
        self.label_smoothing
            .unwrap_or(model.config.text_config.label_smoothing)
    }
}

/// Resumable state of a captioner run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    #[serde(flatten)]
    run: Progress,
    best_val_loss: Option<f32>,
    config: CaptionTrainConfig,
}

/// A dataset's images and tokenised captions, ready for batches.
pub struct CaptionBatcher<'a> {
    /// The dataset.
    pub data: &'a LoadedDataset,
    /// Each sample's decoder input.
    pub captions: Vec<CaptionIds>,
    /// The tokenizer.
    pub tokenizer: &'a CaptionTokenizer,
    pre: crate::models::ImagePreprocessor,
    device: Device,
}

impl<'a> CaptionBatcher<'a> {
    /// Tokenises every caption once.
    pub fn new(
        model: &CandleBlip,
        data: &'a LoadedDataset,
        tokenizer: &'a CaptionTokenizer,
    ) -> Result<Self, TrainerError> {
        let captions = data
            .samples
            .iter()
            .map(|s| tokenizer.encode(&s.caption))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            data,
            captions,
            tokenizer,
            pre: model.preprocessor(),
            device: model.base.device().clone(),
        })
    }

    /// `[n, 3, S, S]` pixels of `idx`, augmented when `rng` is given.
    pub fn pixels(
        &self,
        idx: &[usize],
        augment: &AugmentConfig,
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

    /// The loss of the samples `idx` (training: `train` has the augmentation
    /// and the dropout stream) and their caption token count.
    pub fn loss(
        &self,
        model: &CandleBlip,
        adapter: &LoraAdapter,
        idx: &[usize],
        smoothing: f64,
        train: Option<(&AugmentConfig, &RefCell<SplitMix64>)>,
    ) -> Result<(Tensor, usize), TrainerError> {
        let pixels = match train {
            Some((augment, rng)) => self.pixels(idx, augment, Some(&mut rng.borrow_mut()))?,
            None => self.pixels(idx, &AugmentConfig::default(), None)?,
        };
        let rows: Vec<&CaptionIds> = idx.iter().map(|&i| &self.captions[i]).collect();
        let batch = self.tokenizer.batch(&rows);
        let fwd = Forward {
            adapter: Some(adapter),
            dropout: train.map(|(_, rng)| rng),
        };
        let loss = model.caption_loss(&pixels, &batch, smoothing, fwd)?;
        Ok((loss, batch.token_count()))
    }

    /// Mean loss per caption token over `idx`, without dropout or
    /// augmentation (`None` for no samples).
    pub fn mean_loss(
        &self,
        model: &CandleBlip,
        adapter: &LoraAdapter,
        idx: &[usize],
        batch_size: usize,
        smoothing: f64,
    ) -> Result<Option<f32>, TrainerError> {
        let (mut sum, mut n) = (0f64, 0usize);
        for chunk in idx.chunks(batch_size.max(1)) {
            let (loss, tokens) = self.loss(model, adapter, chunk, smoothing, None)?;
            sum += loss.to_scalar::<f32>()? as f64 * tokens as f64;
            n += tokens;
        }
        Ok((n > 0).then(|| (sum / n as f64) as f32))
    }

    /// Greedy captions of `idx` (the daemon's default decoding) with
    /// `adapter` (or the base model).
    pub fn captions(
        &self,
        model: &CandleBlip,
        adapter: Option<&LoraAdapter>,
        idx: &[usize],
        max_new_tokens: usize,
    ) -> Result<Vec<String>, TrainerError> {
        let prompt = self.tokenizer.prompt_ids()?;
        let fwd = Forward {
            adapter,
            dropout: None,
        };
        let mut out = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(8) {
            let pixels = self.pixels(chunk, &AugmentConfig::default(), None)?;
            for ids in model.greedy(&pixels, &prompt, max_new_tokens, fwd)? {
                out.push(self.tokenizer.decode(&ids)?);
            }
        }
        Ok(out)
    }
}

/// Trains a fresh captioner adapter (or resumes one) on `data`, writing
/// into `out_dir`. Returns the best adapter (the last one without a
/// validation split; where it stopped when interrupted).
pub fn train(
    model: &CandleBlip,
    tokenizer: &CaptionTokenizer,
    data: &LoadedDataset,
    cfg: &CaptionTrainConfig,
    out_dir: &Path,
    options: RunOptions,
) -> Result<(LoraAdapter, TrainOutcome), TrainerError> {
    cfg.validate()?;
    let batcher = CaptionBatcher::new(model, data, tokenizer)?;
    let (train_idx, val_idx) = cfg.schedule.split(data.samples.len(), "samples")?;
    write_config(out_dir, cfg)?;
    let smoothing = cfg.smoothing(model);

    let adapter =
        LoraAdapter::without_temperature(cfg.lora.clone(), &model.base, cfg.schedule.seed)?;
    let named = adapter.named_vars();
    let vars: Vec<_> = named.iter().map(|(_, v)| *v).collect();
    let mut opt = cfg.schedule.optimizer(&vars, vec![true; vars.len()])?;

    let micro_per_epoch = train_idx.len().div_ceil(cfg.batch_size);
    let total = cfg
        .schedule
        .total_steps(micro_per_epoch.div_ceil(cfg.grad_accum_steps));
    let ckpt_dir = out_dir.join(CHECKPOINT_DIR);
    let mut state = resume_from(options, &ckpt_dir, &named, &mut opt, cfg, |s: &RunState| {
        (&s.run, &s.config)
    })?
    .unwrap_or_else(|| RunState {
        run: Progress::new(cfg.schedule.seed ^ 0xB11F),
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
        let batches: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
        let mut acc = zero_grads();
        let (mut acc_loss, mut acc_n) = (0f32, 0usize);
        for (b, chunk) in batches.iter().enumerate().skip(skip) {
            if state.run.step >= total {
                break;
            }
            let (loss, _) = batcher.loss(
                model,
                &adapter,
                chunk,
                smoothing,
                Some((&cfg.augment, &rng)),
            )?;
            let grads = (&loss / cfg.grad_accum_steps as f64)?.backward()?;
            for (slot, var) in acc.iter_mut().zip(&vars) {
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
                let train_loss = acc_loss / acc_n as f32;
                session.step_done(&mut state.run, epoch, train_loss, lr);
                tracing::debug!(step = state.run.step, loss = train_loss, lr, "Step done.");
                acc = zero_grads();
                (acc_loss, acc_n) = (0.0, 0);
                let stop = session.should_stop(&state.run);
                let every = cfg.checkpoint_every_steps;
                if stop || (every > 0 && state.run.step.is_multiple_of(every)) {
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
        let val = batcher.mean_loss(model, &adapter, &val_idx, cfg.batch_size, smoothing)?;
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

/// Seconds per optimizer step on synthetic batches of `batch_size` (solid
/// colour images, template captions), LoRA rank `rank` on the default
/// targets; `steps` timed steps after one warm-up step.
pub fn seconds_per_step(
    model: &CandleBlip,
    batch_size: usize,
    rank: usize,
    steps: usize,
) -> Result<f64, TrainerError> {
    let pre = model.preprocessor();
    let data = crate::trainer::bench::synthetic_dataset(&pre, batch_size);
    let tokenizer = CaptionTokenizer::new(model, None, 40)?;
    let batcher = CaptionBatcher::new(model, &data, &tokenizer)?;
    let lora = LoraConfig {
        r: rank,
        target_modules: DEFAULT_TARGETS.map(String::from).to_vec(),
        ..Default::default()
    };
    let adapter = LoraAdapter::without_temperature(lora, &model.base, 0)?;
    let named = adapter.named_vars();
    let vars: Vec<_> = named.iter().map(|(_, v)| *v).collect();
    let schedule = Schedule::<Captioner>::default();
    let mut opt = schedule.optimizer(&vars, vec![true; vars.len()])?;
    let idx: Vec<usize> = (0..batch_size).collect();
    let rng = RefCell::new(SplitMix64::new(0));
    let mut step = || -> Result<(), TrainerError> {
        let (loss, _) = batcher.loss(
            model,
            &adapter,
            &idx,
            0.0,
            Some((&AugmentConfig::default(), &rng)),
        )?;
        let grads = loss.backward()?;
        let g: Vec<_> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect();
        opt.step(&vars, &g, 1e-4)
    };
    step()?;
    let started = std::time::Instant::now();
    for _ in 0..steps {
        step()?;
    }
    Ok(started.elapsed().as_secs_f64() / steps.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_are_flat_and_checked() {
        let c: CaptionTrainConfig = toml::from_str(
            "epochs = 2\nlearning_rate = 0.001\nlabel_smoothing = 0.1\nprompt = \"a picture of\"\n[lora]\nr = 4\nlora_alpha = 8.0\nlora_dropout = 0.0\ntarget_modules = [\"self.query\"]\n",
        )
        .unwrap();
        assert_eq!((c.schedule.epochs, c.lora.r), (2, 4));
        assert_eq!(c.label_smoothing, Some(0.1));
        assert_eq!(c.prompt.as_deref(), Some("a picture of"));
        assert_eq!(c.batch_size, 8);
        c.validate().unwrap();
        assert!(toml::from_str::<CaptionTrainConfig>("learn_temperature = true").is_err());
        let d = CaptionTrainConfig::default();
        assert_eq!(d.lora.r, 8);
        assert_eq!(d.lora.target_modules.len(), DEFAULT_TARGETS.len());
        assert!(
            CaptionTrainConfig {
                label_smoothing: Some(1.0),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
