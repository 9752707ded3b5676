//! Training settings: a TOML file (`--config`), overridden by flags.
//!
//! ```toml
//! epochs = 10
//! batch_size = 32
//! learning_rate = 1e-4
//! [lora]
//! r = 8
//! lora_alpha = 16
//! target_modules = ["q_proj", "k_proj", "v_proj", "out_proj"]
//! [augment]
//! hflip = false       # never for traffic signs
//! ```

use std::marker::PhantomData;
use std::path::Path;

use candle_core::Var;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TrainerError;
use super::dataset::{AugmentConfig, split};
use super::lora::LoraConfig;
use super::optim::{AdamW, AdamWParams, learning_rate};
use super::rng::SplitMix64;

/// The settings both trainers share (`trainer train` and `trainer
/// train-fusion`), `#[serde(flatten)]`-ed into their configs: the keys stand
/// at the top level of either TOML file. `D` is the trainer, whose
/// [`ScheduleDefaults`] fill the keys a file leaves out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Schedule<D> {
    /// Passes over the training split.
    pub epochs: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Final learning rate as a fraction of the peak (cosine floor).
    pub min_lr_ratio: f64,
    /// Linear warmup steps (optimizer steps).
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (where the trainer's `decay` mask says).
    pub weight_decay: f64,
    /// Stop after this many optimizer steps in total, if set.
    pub max_steps: Option<usize>,
    /// Fraction of the data (samples, rigs) held out for validation.
    pub val_fraction: f32,
    /// Seed of the split, shuffles and every random draw of the run.
    pub seed: u64,
    /// Stop when validation (CLIP: the loss; fusion: recall@1, ties: loss)
    /// has not improved for this many epochs (0 = never stop early).
    pub early_stopping_patience: usize,
    /// Whose defaults (no data).
    #[serde(skip)]
    pub defaults: PhantomData<D>,
}

/// A trainer's defaults of the [`Schedule`] settings.
pub trait ScheduleDefaults: Sized {
    /// The settings a config file leaves out.
    fn schedule() -> Schedule<Self>;
}

impl<D: ScheduleDefaults> Default for Schedule<D> {
    fn default() -> Self {
        D::schedule()
    }
}

/// `trainer train`'s [`ScheduleDefaults`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Clip;

impl ScheduleDefaults for Clip {
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

impl<D> Schedule<D> {
    /// Optimizer steps of the whole run: `epochs` of `steps_per_epoch`,
    /// capped at `max_steps`.
    pub fn total_steps(&self, steps_per_epoch: usize) -> usize {
        let total = self.epochs * steps_per_epoch;
        self.max_steps.map_or(total, |max| total.min(max))
    }

    /// Learning rate of optimizer step `step` of `total` (warmup, cosine).
    pub fn lr(&self, step: usize, total: usize) -> f64 {
        learning_rate(
            step,
            self.warmup_steps,
            total,
            self.learning_rate,
            self.min_lr_ratio,
        )
    }

    /// Training and validation indices of `n` items (`what`: their name in
    /// the error when fewer than 2 would train).
    pub fn split(&self, n: usize, what: &str) -> Result<(Vec<usize>, Vec<usize>), TrainerError> {
        let (train, val) = split(n, self.val_fraction, self.seed);
        if train.len() < 2 {
            return Err(TrainerError::Config(format!(
                "{} training {what}: at least 2 are needed",
                train.len()
            )));
        }
        Ok((train, val))
    }

    /// `train_idx` in the order of `epoch`, a function of the seed and the
    /// epoch alone (so a resumed run shuffles as an uninterrupted one).
    pub fn epoch_order(&self, train_idx: &[usize], epoch: usize) -> Vec<usize> {
        let mut order = train_idx.to_vec();
        SplitMix64::new(self.seed.wrapping_add(epoch as u64).wrapping_mul(0x9E37))
            .shuffle(&mut order);
        order
    }

    /// AdamW over `vars` with this weight decay where `decay` says.
    pub fn optimizer(&self, vars: &[&Var], decay: Vec<bool>) -> Result<AdamW, TrainerError> {
        AdamW::new(
            vars,
            decay,
            AdamWParams {
                weight_decay: self.weight_decay,
                ..Default::default()
            },
        )
    }

    /// Whether `bad_epochs` without improvement end the run.
    pub fn patience_exhausted(&self, bad_epochs: usize) -> bool {
        self.early_stopping_patience > 0 && bad_epochs >= self.early_stopping_patience
    }
}

/// Reads a TOML settings file (either trainer's config).
pub fn read_toml<C: DeserializeOwned>(path: &Path) -> Result<C, TrainerError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    toml::from_str(&text).map_err(|e| {
        TrainerError::Config(format!(
            "'{}': {}",
            path.display(),
            crate::models::manifest::one_line(&e.to_string())
        ))
    })
}

/// Everything a training run is configured with (saved next to its output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// LoRA hyper-parameters (PEFT names).
    pub lora: LoraConfig,
    /// Epochs, learning rate schedule, split, seed, early stopping (weight
    /// decay: not applied to the temperature).
    #[serde(flatten)]
    pub schedule: Schedule<Clip>,
    /// Pairs per micro-batch (the contrastive negatives come from it).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum_steps: usize,
    /// Train the temperature (`logit_scale`) with the adapters.
    pub learn_temperature: bool,
    /// Upper bound of `logit_scale` (CLIP clamps at 100).
    pub max_logit_scale: f32,
    /// Also checkpoint every this many optimizer steps (0 = at epoch ends
    /// only).
    pub checkpoint_every_steps: usize,
    /// Image augmentation.
    pub augment: AugmentConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            schedule: Schedule::default(),
            batch_size: 32,
            grad_accum_steps: 1,
            learn_temperature: true,
            max_logit_scale: 100.0,
            checkpoint_every_steps: 100,
            augment: AugmentConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, TrainerError> {
        read_toml(path)
    }

    /// Checks values a run cannot work with.
    pub fn validate(&self) -> Result<(), TrainerError> {
        self.lora.validate()?;
        let bad = |m: &str| Err(TrainerError::Config(m.into()));
        if self.batch_size < 2 {
            return bad("batch_size must be at least 2 (contrastive loss needs negatives)");
        }
        if self.grad_accum_steps == 0
            || self.schedule.epochs == 0
            || self.schedule.max_steps == Some(0)
        {
            return bad("epochs, grad_accum_steps and max_steps must be at least 1");
        }
        if self.schedule.learning_rate.is_nan()
            || self.schedule.learning_rate <= 0.0
            || !(0.0..=1.0).contains(&self.schedule.min_lr_ratio)
        {
            return bad("learning_rate must be > 0 and min_lr_ratio in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.schedule.val_fraction) {
            return bad("val_fraction must be in [0, 1)");
        }
        if self.max_logit_scale.is_nan() || self.max_logit_scale <= 1.0 {
            return bad("max_logit_scale must be > 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c: TrainConfig = toml::from_str("epochs = 2\n[lora]\nr = 4\nlora_alpha = 8.0\nlora_dropout = 0.1\ntarget_modules = [\"q_proj\"]\n").unwrap();
        assert_eq!(c.schedule.epochs, 2);
        assert_eq!(c.lora.r, 4);
        assert_eq!(c.batch_size, 32);
        c.validate().unwrap();
        assert!(toml::from_str::<TrainConfig>("epoch = 2").is_err());
    }

    #[test]
    fn flattened_schedule_keeps_the_clip_defaults_and_keys() {
        let c: TrainConfig = toml::from_str("learning_rate = 0.5\nbatch_size = 4\n").unwrap();
        let want = TrainConfig {
            schedule: Schedule {
                learning_rate: 0.5,
                ..Default::default()
            },
            batch_size: 4,
            ..Default::default()
        };
        assert_eq!(c, want);
        assert_eq!((c.schedule.epochs, c.schedule.warmup_steps), (5, 10));
        assert_eq!(c.schedule.early_stopping_patience, 3);
        // The JSON next to a run has the keys at the top level, and reads back.
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["learning_rate"], 0.5);
        assert!(json.get("schedule").is_none());
        assert_eq!(serde_json::from_value::<TrainConfig>(json).unwrap(), c);
        assert!(toml::from_str::<TrainConfig>("view_dropout = 0.1").is_err());
    }
}
