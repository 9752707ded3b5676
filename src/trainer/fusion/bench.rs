//! Fusion training speed on random rigs (`trainer bench-fusion`).

use std::time::Instant;

use candle_core::Tensor;

use super::super::TrainerError;
use super::super::optim::{AdamW, AdamWParams};
use super::super::rng::SplitMix64;
use super::data::RigEmbeddings;
use super::model::RigFusion;
use super::train::{batch_loss, drop_views};

/// Seconds per optimizer step (forward, backward, AdamW) of a freshly
/// initialised model of `config`'s size on random rigs, `batch` per step,
/// after one untimed step; view dropout as in training.
pub fn seconds_per_step(
    config: &super::FusionConfig,
    batch: usize,
    steps: usize,
    device: &candle_core::Device,
) -> Result<f64, TrainerError> {
    let model = RigFusion::init(config.clone(), 0, device)?;
    let mut rng = SplitMix64::new(1);
    let mut random = |n: usize| (0..n).map(|_| rng.next_f32() - 0.5).collect::<Vec<f32>>();
    let samples = (0..batch)
        .map(|i| {
            let views = (0..config.v).map(|_| Some(random(config.d))).collect();
            (views, format!("rig {i}"))
        })
        .collect();
    let texts: Vec<Vec<f32>> = (0..batch).map(|_| random(config.d)).collect();
    let data = RigEmbeddings::from_parts(config.roles.clone(), config.d, samples, |_| {
        Ok(texts.clone())
    })?;
    let named = model.named_vars();
    let vars: Vec<_> = named.iter().map(|(_, v)| *v).collect();
    let mut opt = AdamW::new(&vars, vec![true; vars.len()], AdamWParams::default())?;
    let idx: Vec<usize> = (0..batch).collect();
    let mut dropout = SplitMix64::new(2);
    let mut started = Instant::now();
    for step in 0..=steps {
        if step == 1 {
            started = Instant::now();
        }
        let present = drop_views(&data, &idx, 0.3, &mut dropout);
        let loss = batch_loss(&model, &data, &idx, 14.0, Some(present))?;
        let grads = loss.backward()?;
        let grads: Vec<Option<Tensor>> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect();
        opt.step(&vars, &grads, 1e-4)?;
    }
    Ok(started.elapsed().as_secs_f64() / steps.max(1) as f64)
}
