//! Training the fusion model: symmetric InfoNCE between fused rig
//! embeddings and their caption embeddings at a fixed temperature (CLIP's
//! `logit_scale` from its manifest unless set), random view dropout, AdamW
//! with warmup and cosine decay (the CLIP trainer's [`AdamW`] and
//! schedule), early stopping on validation recall@1 (then loss), and
//! resumable checkpoints in the CLIP trainer's format.
//!
//! Output directory: `best.safetensors` (the best weights so far; the last
//! ones without a validation split), `checkpoint/` (weights, moments,
//! `state.json`, at every epoch end and where `stop_after_steps` stops),
//! `train_config.json`, `history.json`. Each epoch's order derives from
//! the seed and its number and the dropout stream is saved, so a resumed
//! run equals an uninterrupted one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::super::TrainerError;
use super::super::config::{Schedule, ScheduleDefaults, read_toml};
use super::super::rng::SplitMix64;
use super::super::train::{
    CHECKPOINT_DIR, HistoryPoint, Progress, RunOptions, Session, batches, diag_cross_entropy,
    resume_from, save_checkpoint, write_config,
};
use super::data::RigEmbeddings;
use super::eval::{fused_rows, text_to_rig};
use super::model::RigFusion;

/// Best weights of a run.
pub const BEST_FILE: &str = "best.safetensors";

/// Settings of a fusion training run (saved next to its output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FusionTrainConfig {
    /// Epochs, learning rate schedule, split, seed, early stopping (weight
    /// decay: not on the gate, norms or biases).
    #[serde(flatten)]
    pub schedule: Schedule<Fusion>,
    /// Rigs per batch (the negatives come from it).
    pub batch_size: usize,
    /// Probability of dropping each present view of a training rig (one
    /// view always stays).
    pub view_dropout: f32,
    /// Fixed `logit_scale` of the loss; `None`: the CLIP manifest's.
    pub logit_scale: Option<f32>,
}

impl Default for FusionTrainConfig {
    fn default() -> Self {
        Self {
            schedule: Schedule::default(),
            batch_size: 32,
            view_dropout: 0.3,
            logit_scale: None,
        }
    }
}

/// `trainer train-fusion`'s [`ScheduleDefaults`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fusion;

impl ScheduleDefaults for Fusion {
    fn schedule() -> Schedule<Self> {
        Schedule {
            epochs: 20,
            learning_rate: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 20,
            weight_decay: 0.01,
            max_steps: None,
            val_fraction: 0.1,
            seed: 0,
            early_stopping_patience: 5,
            defaults: PhantomData,
        }
    }
}

impl FusionTrainConfig {
    /// Reads settings from a TOML file (the field names above and those of
    /// [`Schedule`]; missing ones keep their defaults).
    pub fn from_file(path: &Path) -> Result<Self, TrainerError> {
        read_toml(path)
    }

    /// Refuses settings a run cannot use.
    pub fn validate(&self) -> Result<(), TrainerError> {
        let bad = |m: &str| Err(TrainerError::Config(m.into()));
        let s = &self.schedule;
        if self.batch_size < 2 {
            return bad("batch_size must be at least 2 (the negatives come from the batch)");
        }
        if s.epochs == 0 || s.max_steps == Some(0) {
            return bad("epochs and max_steps must be at least 1");
        }
        if s.learning_rate.is_nan() || s.learning_rate <= 0.0 {
            return bad("learning_rate must be positive");
        }
        if !(0.0..1.0).contains(&self.view_dropout) {
            return bad("view_dropout must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&s.val_fraction) {
            return bad("val_fraction must be in [0, 1)");
        }
        if self.logit_scale.is_some_and(|s| s.is_nan() || s <= 0.0) {
            return bad("logit_scale must be positive");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    #[serde(flatten)]
    run: Progress,
    best: Option<(f64, f32)>,
    config: FusionTrainConfig,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct FusionOutcome {
    /// Optimizer steps in total.
    pub steps: usize,
    /// Epochs finished.
    pub epochs: usize,
    /// Best validation (recall@1, loss).
    pub best: Option<(f64, f32)>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether `stop_after_steps` ended it.
    pub interrupted: bool,
    /// Loss curves.
    pub history: Vec<HistoryPoint>,
    /// Steps per second in this process.
    pub steps_per_sec: f64,
    /// Training / validation rigs.
    pub split: (usize, usize),
    /// Indices of the validation rigs.
    pub val_idx: Vec<usize>,
}

/// Presence of `idx` with each present view dropped with probability `p`,
/// never all of a rig's.
pub fn drop_views(data: &RigEmbeddings, idx: &[usize], p: f32, rng: &mut SplitMix64) -> Vec<f32> {
    let v = data.roles.len();
    let mut out = Vec::with_capacity(idx.len() * v);
    for &i in idx {
        let row = &data.present[i * v..(i + 1) * v];
        let mut kept: Vec<f32> = row
            .iter()
            .map(|&m| {
                if m > 0.0 && rng.next_f32() < p {
                    0.0
                } else {
                    m
                }
            })
            .collect();
        if kept.iter().all(|&m| m == 0.0) {
            let present: Vec<usize> = (0..v).filter(|&r| row[r] > 0.0).collect();
            if !present.is_empty() {
                kept[present[rng.below(present.len())]] = 1.0;
            }
        }
        out.extend(kept);
    }
    out
}

/// Symmetric InfoNCE of one batch; pairs that share a caption are not
/// negatives.
pub fn batch_loss(
    model: &RigFusion,
    data: &RigEmbeddings,
    idx: &[usize],
    scale: f64,
    present: Option<Vec<f32>>,
) -> Result<Tensor, TrainerError> {
    let device = model.device();
    let (x, m) = data.batch(idx, present, device)?;
    let fused = model.forward(&x, &m)?;
    let d = data.dim;
    let texts: Vec<f32> = idx
        .iter()
        .flat_map(|&i| data.texts[data.groups[i]].iter().copied())
        .collect();
    let texts = Tensor::from_vec(texts, (idx.len(), d), device)?;
    let n = idx.len();
    let mut mask = vec![0f32; n * n];
    for (a, &i) in idx.iter().enumerate() {
        for (b, &j) in idx.iter().enumerate() {
            if a != b && data.groups[i] == data.groups[j] {
                mask[a * n + b] = f32::NEG_INFINITY;
            }
        }
    }
    let logits = (fused.matmul(&texts.t()?)? * scale)?;
    let logits = (logits + Tensor::from_vec(mask, (n, n), device)?)?;
    Ok(((diag_cross_entropy(&logits)? + diag_cross_entropy(&logits.t()?)?)? * 0.5)?)
}

/// Validation recall@1 (text to rig) and mean loss, without dropout.
pub fn validate(
    model: &RigFusion,
    data: &RigEmbeddings,
    idx: &[usize],
    scale: f64,
    batch_size: usize,
) -> Result<Option<(f64, f32)>, TrainerError> {
    if idx.is_empty() {
        return Ok(None);
    }
    let (recall, _) = text_to_rig(data, idx, &fused_rows(model, data, idx, batch_size)?);
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in idx.chunks(batch_size).filter(|c| c.len() >= 2) {
        sum += batch_loss(model, data, chunk, scale, None)?.to_scalar::<f32>()? as f64
            * chunk.len() as f64;
        n += chunk.len();
    }
    let loss = if n > 0 {
        (sum / n as f64) as f32
    } else {
        f32::NAN
    };
    Ok(Some((recall.r1, loss)))
}

fn better(new: (f64, f32), old: Option<(f64, f32)>) -> bool {
    match old {
        None => true,
        Some((r, l)) => new.0 > r || (new.0 == r && new.1 < l),
    }
}

/// Trains `model` in place on `data` (resuming from `out_dir/checkpoint`
/// when asked); on return it holds the best weights (or, interrupted,
/// where the run stopped). `clip_logit_scale` is the default temperature.
pub fn train(
    model: &RigFusion,
    data: &RigEmbeddings,
    cfg: &FusionTrainConfig,
    clip_logit_scale: f32,
    out_dir: &Path,
    options: RunOptions,
) -> Result<FusionOutcome, TrainerError> {
    cfg.validate()?;
    if data.roles != model.config.roles || data.dim != model.config.d {
        return Err(TrainerError::Config(format!(
            "data of roles [{}] and width {} for a model of roles [{}] and width {}",
            data.roles.join(", "),
            data.dim,
            model.config.roles.join(", "),
            model.config.d
        )));
    }
    let scale = cfg.logit_scale.unwrap_or(clip_logit_scale) as f64;
    let (train_idx, val_idx) = cfg.schedule.split(data.len(), "rigs")?;
    write_config(out_dir, cfg)?;
    let named = model.named_vars();
    let vars: Vec<_> = named.iter().map(|(_, v)| *v).collect();
    // Decay on matrices only: not the gate, norms, biases or embeddings.
    let decay = named
        .iter()
        .map(|(n, v)| v.as_tensor().rank() == 2 && n.ends_with(".weight"))
        .collect();
    let mut opt = cfg.schedule.optimizer(&vars, decay)?;
    let total = cfg
        .schedule
        .total_steps(train_idx.len().div_ceil(cfg.batch_size));
    let ckpt_dir = out_dir.join(CHECKPOINT_DIR);
    let mut state = resume_from(options, &ckpt_dir, &named, &mut opt, cfg, |s: &RunState| {
        (&s.run, &s.config)
    })?
    .unwrap_or_else(|| RunState {
        run: Progress::new(cfg.schedule.seed ^ 0xF05E),
        best: None,
        config: cfg.clone(),
    });
    let best_path = out_dir.join(BEST_FILE);
    let save_best = || -> Result<(), TrainerError> {
        let tensors: HashMap<String, Tensor> = model
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_detached_tensor()))
            .collect();
        candle_core::safetensors::save(&tensors, &best_path).map_err(|e| TrainerError::Checkpoint {
            path: best_path.clone(),
            message: e.to_string(),
        })
    };
    let session = Session::start(&options, total, &state.run);
    let rng = RefCell::new(state.run.dropout_rng.clone());
    let (mut stopped_early, mut interrupted) = (false, false);
    'epochs: for epoch in state.run.next_epoch..cfg.schedule.epochs {
        let Some(skip) = state.run.begin_epoch(total) else {
            break;
        };
        let order = cfg.schedule.epoch_order(&train_idx, epoch);
        for (b, chunk) in batches(&order, cfg.batch_size)
            .into_iter()
            .enumerate()
            .skip(skip)
        {
            if state.run.step >= total {
                break;
            }
            let present = drop_views(data, chunk, cfg.view_dropout, &mut rng.borrow_mut());
            let loss = batch_loss(model, data, chunk, scale, Some(present))?;
            let grads = loss.backward()?;
            let grads: Vec<Option<Tensor>> = vars
                .iter()
                .map(|v| grads.get(v.as_tensor()).cloned())
                .collect();
            let lr = cfg.schedule.lr(state.run.step, total);
            opt.step(&vars, &grads, lr)?;
            session.step_done(&mut state.run, epoch, loss.to_scalar::<f32>()?, lr);
            if session.should_stop(&state.run) {
                state.run.hold(epoch, b + 1, &rng);
                save_checkpoint(&ckpt_dir, &named, &opt, &state)?;
                interrupted = true;
                break 'epochs;
            }
        }
        let val = validate(model, data, &val_idx, scale, cfg.batch_size)?;
        if state
            .run
            .end_epoch(epoch, val, |(_, loss)| loss, &mut state.best, better)
        {
            save_best()?;
        }
        tracing::info!(
            epoch = epoch + 1,
            step = state.run.step,
            val_recall_at_1 = val.map(|v| v.0),
            val_loss = val.map(|v| v.1),
            "Epoch done."
        );
        state.run.dropout_rng = rng.borrow().clone();
        save_checkpoint(&ckpt_dir, &named, &opt, &state)?;
        if cfg.schedule.patience_exhausted(state.run.bad_epochs) {
            tracing::info!(
                epoch = epoch + 1,
                "Early stop: validation stopped improving."
            );
            stopped_early = true;
            break;
        }
    }
    let steps_per_sec = session.finish(&state.run, out_dir)?;
    if !interrupted {
        load_best(model, &best_path)?;
    }
    Ok(FusionOutcome {
        steps: state.run.step,
        epochs: state.run.next_epoch,
        best: state.best,
        stopped_early,
        interrupted,
        history: state.run.history,
        steps_per_sec,
        split: (train_idx.len(), val_idx.len()),
        val_idx,
    })
}

/// Sets `model`'s weights from a `best.safetensors`.
pub fn load_best(model: &RigFusion, path: &Path) -> Result<(), TrainerError> {
    let fail = |message: String| TrainerError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let tensors =
        candle_core::safetensors::load(path, model.device()).map_err(|e| fail(e.to_string()))?;
    for (name, var) in model.named_vars() {
        let t = tensors
            .get(&name)
            .ok_or_else(|| fail(format!("tensor '{name}' is missing")))?;
        var.set(t)
            .map_err(|e| fail(format!("tensor '{name}': {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keep_the_fusion_defaults_and_keys() {
        let c: FusionTrainConfig = toml::from_str("epochs = 2\nview_dropout = 0.5\n").unwrap();
        let s = &c.schedule;
        assert_eq!((s.epochs, s.learning_rate, s.min_lr_ratio), (2, 1e-3, 0.1));
        assert_eq!((s.warmup_steps, s.early_stopping_patience), (20, 5));
        assert_eq!((c.batch_size, c.view_dropout), (32, 0.5));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["epochs"], 2);
        assert_eq!(
            serde_json::from_value::<FusionTrainConfig>(json).unwrap(),
            c
        );
        for bad in ["epoch = 2", "grad_accum_steps = 2"] {
            assert!(toml::from_str::<FusionTrainConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn view_dropout_keeps_a_view_of_every_rig() {
        let roles: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let samples = (0..50)
            .map(|i| {
                let views = (0..3)
                    .map(|r| (r <= i % 3).then(|| vec![1.0, 0.0]))
                    .collect();
                (views, format!("{i}"))
            })
            .collect();
        let data =
            RigEmbeddings::from_parts(roles, 2, samples, |c| Ok(vec![vec![1.0, 0.0]; c.len()]))
                .unwrap();
        let idx: Vec<usize> = (0..50).collect();
        let mut rng = SplitMix64::new(3);
        let (mut kept, mut had) = (0.0, 0.0);
        for _ in 0..20 {
            let m = drop_views(&data, &idx, 0.9, &mut rng);
            for (i, row) in m.chunks(3).enumerate() {
                assert!(row.iter().any(|&x| x > 0.0), "rig {i} lost every view");
                for (r, &x) in row.iter().enumerate() {
                    assert!(x <= data.present[i * 3 + r], "an absent view came back");
                }
                kept += row.iter().sum::<f32>();
            }
            had += data.present.iter().sum::<f32>();
        }
        // Mostly dropped, but never below one per rig.
        assert!(kept < 0.7 * had && kept >= 50.0 * 20.0, "{kept} of {had}");
    }
}
