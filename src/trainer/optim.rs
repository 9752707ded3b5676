//! AdamW (Loshchilov & Hutter, <https://arxiv.org/abs/1711.05101>) and the
//! learning-rate schedule.
//!
//! Written here rather than taken from candle-nn because a resumable
//! checkpoint needs the moment estimates, which candle-nn's `AdamW` keeps
//! private.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::TrainerError;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (per unit learning rate).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW state for a fixed, ordered list of variables.
#[derive(Debug)]
pub struct AdamW {
    params: AdamWParams,
    /// Optimizer steps taken (bias correction).
    pub step: usize,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    decay: Vec<bool>,
}

impl AdamW {
    /// Zero moments for `vars`; `decay[i]` says whether variable `i` gets
    /// weight decay (not the temperature).
    pub fn new(vars: &[&Var], decay: Vec<bool>, params: AdamWParams) -> Result<Self, TrainerError> {
        let m = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>, _>>()?;
        let v = m.clone();
        Ok(Self {
            params,
            step: 0,
            m,
            v,
            decay,
        })
    }

    /// One update with learning rate `lr`; a variable without a gradient is
    /// left alone.
    pub fn step(
        &mut self,
        vars: &[&Var],
        grads: &[Option<Tensor>],
        lr: f64,
    ) -> Result<(), TrainerError> {
        self.step += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.step as i32);
        let bc2 = 1.0 - p.beta2.powi(self.step as i32);
        for (i, (var, grad)) in vars.iter().zip(grads).enumerate() {
            let Some(g) = grad else { continue };
            let m = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + p.eps)?)?;
            let mut theta = var.as_tensor().clone();
            if self.decay[i] {
                theta = (theta * (1.0 - lr * p.weight_decay))?;
            }
            var.set(&(theta - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments as named tensors (`optim.m.<name>`, `optim.v.<name>`).
    pub fn state(&self, names: &[String]) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            out.insert(format!("optim.m.{name}"), self.m[i].clone());
            out.insert(format!("optim.v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`]; `None` names a missing one.
    pub fn load_state(
        &mut self,
        names: &[String],
        tensors: &HashMap<String, Tensor>,
        step: usize,
    ) -> Result<(), String> {
        for (i, name) in names.iter().enumerate() {
            for (key, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let t = tensors
                    .get(&format!("optim.{key}.{name}"))
                    .ok_or_else(|| format!("optimizer state of '{name}' is missing"))?;
                if t.dims() != slot.dims() {
                    return Err(format!("optimizer state of '{name}' has the wrong shape"));
                }
                *slot = t.clone();
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warmup to `peak` over `warmup` steps, then cosine decay to
/// `peak * min_ratio` at `total` steps.
pub fn learning_rate(step: usize, warmup: usize, total: usize, peak: f64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup.min(step)) as f64 / span as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let lr = |s| learning_rate(s, 10, 110, 1e-3, 0.1);
        assert!((lr(0) - 1e-4).abs() < 1e-12);
        assert!((lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!((lr(60) - 0.55e-3).abs() < 1e-9);
        assert!((lr(110) - 1e-4).abs() < 1e-12);
        assert!(lr(200) >= 1e-4 - 1e-12);
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(&[&x], vec![false], AdamWParams::default()).unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(x.as_tensor()).cloned();
            opt.step(&[&x], &[g], 0.05).unwrap();
        }
        let v: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.abs() < 0.05), "{v:?}");
    }
}
