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

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TrainerError;
use super::dataset::AugmentConfig;
use super::lora::LoraConfig;

/// Everything a training run is configured with (saved next to its output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// LoRA hyper-parameters (PEFT names).
    pub lora: LoraConfig,
    /// Passes over the training split.
    pub epochs: usize,
    /// Pairs per micro-batch (the contrastive negatives come from it).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum_steps: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Final learning rate as a fraction of the peak (cosine floor).
    pub min_lr_ratio: f64,
    /// Linear warmup steps (optimizer steps).
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (not applied to the temperature).
    pub weight_decay: f64,
    /// Stop after this many optimizer steps in total, if set.
    pub max_steps: Option<usize>,
    /// Fraction of the samples held out for validation.
    pub val_fraction: f32,
    /// Seed of the split, shuffles, LoRA initialisation and dropout.
    pub seed: u64,
    /// Stop when the validation loss has not improved for this many epochs
    /// (0 = never stop early).
    pub early_stopping_patience: usize,
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
            epochs: 5,
            batch_size: 32,
            grad_accum_steps: 1,
            learning_rate: 1e-4,
            min_lr_ratio: 0.0,
            warmup_steps: 10,
            weight_decay: 0.01,
            max_steps: None,
            val_fraction: 0.1,
            seed: 0,
            early_stopping_patience: 3,
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
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        toml::from_str(&text).map_err(|e| {
            TrainerError::Config(format!(
                "'{}': {}",
                path.display(),
                crate::models::manifest::one_line(&e.to_string())
            ))
        })
    }

    /// Checks values a run cannot work with.
    pub fn validate(&self) -> Result<(), TrainerError> {
        self.lora.validate()?;
        let bad = |m: &str| Err(TrainerError::Config(m.into()));
        if self.batch_size < 2 {
            return bad("batch_size must be at least 2 (contrastive loss needs negatives)");
        }
        if self.grad_accum_steps == 0 || self.epochs == 0 || self.max_steps == Some(0) {
            return bad("epochs, grad_accum_steps and max_steps must be at least 1");
        }
        if self.learning_rate.is_nan()
            || self.learning_rate <= 0.0
            || !(0.0..=1.0).contains(&self.min_lr_ratio)
        {
            return bad("learning_rate must be > 0 and min_lr_ratio in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
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
        assert_eq!(c.epochs, 2);
        assert_eq!(c.lora.r, 4);
        assert_eq!(c.batch_size, 32);
        c.validate().unwrap();
        assert!(toml::from_str::<TrainConfig>("epoch = 2").is_err());
    }
}
