//! `RigFusion` in candle: the architecture of `models/fusion.py`, with the
//! same initializer names, every parameter a trainable [`Var`].
//!
//! ```text
//! h = x + role_embedding; key_bias = (1 - m) * -1e9 on the keys
//! per layer (pre-norm): h += out_proj(attn(norm1(h))); h += fc2(gelu(fc1(norm2(h))))
//! p = pool_norm(h); w = softmax(p·pool_query / sqrt(D) + (1 - m) * -1e9)
//! fused = normalize(mean of present x + tanh(gate) * pool_proj(Σ w p))
//! ```
//! With `gate = 0` (untrained) the result is the normalised mean of the
//! present views. Layer norm and softmax are written from differentiable
//! primitives ([`layer_norm`], [`softmax_last`]): candle-nn's fused kernels
//! have no backward pass.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};

use super::super::TrainerError;
use super::super::clip::{layer_norm, read_initializers, softmax_last};
use super::super::merge::rewrite_initializers;
use super::super::rng::SplitMix64;
use super::dir::FusionConfig;

/// LayerNorm epsilon (PyTorch's default).
const LN_EPS: f64 = 1e-5;
/// Additive bias that removes an absent view from a softmax.
const ABSENT: f64 = -1e9;

/// Initializer names and shapes of a model of `c`'s size, in a fixed order.
pub fn parameter_shapes(c: &FusionConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f) = (c.d, c.f);
    let mut out = vec![("role_embedding".to_string(), vec![c.v, d])];
    for l in 0..c.l {
        let p = format!("layers.{l}");
        for norm in ["norm1", "norm2"] {
            out.push((format!("{p}.{norm}.weight"), vec![d]));
            out.push((format!("{p}.{norm}.bias"), vec![d]));
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{p}.attn.{proj}.weight"), vec![d, d]));
            out.push((format!("{p}.attn.{proj}.bias"), vec![d]));
        }
        out.push((format!("{p}.mlp.fc1.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.fc1.bias"), vec![f]));
        out.push((format!("{p}.mlp.fc2.weight"), vec![d, f]));
        out.push((format!("{p}.mlp.fc2.bias"), vec![d]));
    }
    for (name, shape) in [
        ("pool_norm.weight", vec![d]),
        ("pool_norm.bias", vec![d]),
        ("pool_query", vec![d]),
        ("pool_proj.weight", vec![d, d]),
        ("pool_proj.bias", vec![d]),
        ("gate", vec![1]),
    ] {
        out.push((name.to_string(), shape));
    }
    out
}

/// The fusion model with trainable weights.
#[derive(Debug)]
pub struct RigFusion {
    /// Sizes and roles.
    pub config: FusionConfig,
    vars: Vec<(String, Var)>,
    index: HashMap<String, usize>,
}

impl RigFusion {
    /// A model from named tensors; every parameter of the architecture must
    /// be there with its shape (others are ignored).
    pub fn from_tensors(
        config: FusionConfig,
        mut tensors: HashMap<String, Tensor>,
    ) -> Result<Self, String> {
        config.validate()?;
        let mut vars = Vec::new();
        for (name, shape) in parameter_shapes(&config) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| format!("no initializer '{name}'"))?;
            if t.dims() != shape.as_slice() {
                return Err(format!(
                    "initializer '{name}' has shape {:?}, expected {shape:?}",
                    t.dims()
                ));
            }
            let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
            vars.push((name, Var::from_tensor(&t).map_err(|e| e.to_string())?));
        }
        let index = vars
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        Ok(Self {
            config,
            vars,
            index,
        })
    }

    /// Reads the initializers of a `fusion.onnx`.
    pub fn from_onnx(
        path: &Path,
        config: FusionConfig,
        device: &Device,
    ) -> Result<Self, TrainerError> {
        let tensors = read_initializers(path, device)?.into_iter().collect();
        Self::from_tensors(config, tensors).map_err(|message| TrainerError::Onnx {
            path: path.to_path_buf(),
            message,
        })
    }

    /// A freshly initialised model, as `models/fusion.py` initialises one:
    /// linear weights uniform in ±1/√fan_in with zero biases, layer norms
    /// 1/0, role embeddings and the pooling query ~0.02 in scale, gate 0.
    pub fn init(config: FusionConfig, seed: u64, device: &Device) -> Result<Self, TrainerError> {
        let mut rng = SplitMix64::new(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes(&config) {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm1.weight")
                || name.ends_with("norm2.weight")
                || name == "pool_norm.weight"
            {
                vec![1.0; n]
            } else if name.ends_with(".bias") || name == "gate" {
                vec![0.0; n]
            } else if name.ends_with(".weight") {
                let bound = 1.0 / (shape[1] as f32).sqrt();
                (0..n)
                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                    .collect()
            } else {
                (0..n)
                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * 0.035)
                    .collect()
            };
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        Self::from_tensors(config, tensors).map_err(TrainerError::Config)
    }

    /// Parameters by name, in [`parameter_shapes`] order.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        self.vars.iter().map(|(n, v)| (n.clone(), v)).collect()
    }

    /// The parameter `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor, TrainerError> {
        self.index
            .get(name)
            .map(|&i| self.vars[i].1.as_tensor())
            .ok_or_else(|| TrainerError::Config(format!("no fusion parameter '{name}'")))
    }

    /// Sets the parameter `name` (tests, resume).
    pub fn set(&self, name: &str, value: &Tensor) -> Result<(), TrainerError> {
        let i = self
            .index
            .get(name)
            .ok_or_else(|| TrainerError::Config(format!("no fusion parameter '{name}'")))?;
        Ok(self.vars[*i].1.set(value)?)
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.vars[0].1.device()
    }

    /// `x Wᵀ + b` over the last dimension.
    fn linear(&self, module: &str, x: &Tensor) -> Result<Tensor, TrainerError> {
        let w = self.get(&format!("{module}.weight"))?;
        let b = self.get(&format!("{module}.bias"))?;
        let mut dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&1);
        let rows = x.elem_count() / in_dim.max(1);
        let y = x
            .reshape((rows, in_dim))?
            .matmul(&w.t()?)?
            .broadcast_add(b)?;
        if let Some(last) = dims.last_mut() {
            *last = w.dims()[0];
        }
        Ok(y.reshape(dims)?)
    }

    fn norm(&self, module: &str, x: &Tensor) -> Result<Tensor, TrainerError> {
        let w = self.get(&format!("{module}.weight"))?;
        let b = self.get(&format!("{module}.bias"))?;
        Ok(layer_norm(x, w, b, LN_EPS)?)
    }

    fn attention(&self, p: &str, x: &Tensor, key_bias: &Tensor) -> Result<Tensor, TrainerError> {
        let (b, v, d) = x.dims3()?;
        let heads = self.config.h;
        let hd = d / heads;
        let split = |y: Tensor| -> Result<Tensor, TrainerError> {
            Ok(y.reshape((b, v, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.linear(&format!("{p}.q_proj"), x)?)?;
        let k = split(self.linear(&format!("{p}.k_proj"), x)?)?;
        let val = split(self.linear(&format!("{p}.v_proj"), x)?)?;
        let s = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
        let att = softmax_last(&s.broadcast_add(key_bias)?)?;
        let out = att.matmul(&val)?.transpose(1, 2)?.reshape((b, v, d))?;
        self.linear(&format!("{p}.out_proj"), &out)
    }

    /// Fused embeddings `[B, D]` (unit length) of view embeddings
    /// `[B, V, D]` with presence `[B, V]` (1 present, 0 absent; each row
    /// needs a present view).
    pub fn forward(&self, x: &Tensor, present: &Tensor) -> Result<Tensor, TrainerError> {
        let (b, v, d) = x.dims3()?;
        if v != self.config.v || d != self.config.d || present.dims() != [b, v] {
            return Err(TrainerError::Config(format!(
                "fusion input {:?} with presence {:?} does not fit V={} D={}",
                x.dims(),
                present.dims(),
                self.config.v,
                self.config.d
            )));
        }
        let absent_bias = ((1.0 - present)? * ABSENT)?;
        let key_bias = absent_bias.reshape((b, 1, 1, v))?;
        let mut h = x.broadcast_add(&self.get("role_embedding")?.unsqueeze(0)?)?;
        for l in 0..self.config.l {
            let p = format!("layers.{l}");
            let a = self.norm(&format!("{p}.norm1"), &h)?;
            h = (&h + self.attention(&format!("{p}.attn"), &a, &key_bias)?)?;
            let a = self.norm(&format!("{p}.norm2"), &h)?;
            let a = self.linear(&format!("{p}.mlp.fc1"), &a)?.gelu_erf()?;
            h = (&h + self.linear(&format!("{p}.mlp.fc2"), &a)?)?;
        }
        let p = self.norm("pool_norm", &h)?;
        let query = self.get("pool_query")?.reshape((d, 1))?;
        let scores = p.reshape((b * v, d))?.matmul(&query)?.reshape((b, v))?;
        let w = softmax_last(&((scores / (d as f64).sqrt())? + absent_bias)?)?;
        let pooled = w.unsqueeze(1)?.matmul(&p)?.squeeze(1)?;
        let pooled = self.linear("pool_proj", &pooled)?;
        let gate = self.get("gate")?.tanh()?;
        let fused = (mean_of_views(x, present)? + pooled.broadcast_mul(&gate)?)?;
        Ok(normalize(&fused)?)
    }
}

/// Mean of the present views `[B, D]` (not normalised).
pub fn mean_of_views(x: &Tensor, present: &Tensor) -> candle_core::Result<Tensor> {
    let count = present.sum_keepdim(D::Minus1)?.clamp(1.0, f64::INFINITY)?;
    present
        .unsqueeze(1)?
        .matmul(x)?
        .squeeze(1)?
        .broadcast_div(&count)
}

/// Rows scaled to unit length (`F.normalize`: the norm clamped at 1e-12).
pub fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norm)
}

/// Copies `base_onnx` to `out_onnx` with `model`'s weights in its
/// initializers; returns the names that changed.
pub fn write_weights(
    model: &RigFusion,
    base_onnx: &Path,
    out_onnx: &Path,
) -> Result<Vec<String>, TrainerError> {
    let mut values = HashMap::new();
    for (name, var) in model.named_vars() {
        let v: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
        values.insert(name, v);
    }
    let mut seen = 0usize;
    let changed = rewrite_initializers(base_onnx, out_onnx, |name, _| {
        let v = values.get(name).cloned();
        seen += usize::from(v.is_some());
        Ok(v)
    })?;
    if seen != values.len() {
        return Err(TrainerError::Onnx {
            path: base_onnx.to_path_buf(),
            message: format!(
                "{} of the model's {} parameters are initializers of the graph",
                seen,
                values.len()
            ),
        });
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(b: usize, c: &FusionConfig, seed: u64) -> (Tensor, Tensor) {
        let mut rng = SplitMix64::new(seed);
        let x: Vec<f32> = (0..b * c.v * c.d).map(|_| rng.next_f32() - 0.5).collect();
        // Row i lacks views i % V and (i + 2) % V.
        let m: Vec<f32> = (0..b * c.v)
            .map(|k| {
                let (i, r) = (k / c.v, k % c.v);
                if r == i % c.v || r == (i + 2) % c.v {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        (
            Tensor::from_vec(x, (b, c.v, c.d), &Device::Cpu).unwrap(),
            Tensor::from_vec(m, (b, c.v), &Device::Cpu).unwrap(),
        )
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn untrained_model_is_the_normalised_mean() {
        let c = FusionConfig::tiny();
        let model = RigFusion::init(c.clone(), 1, &Device::Cpu).unwrap();
        let (x, m) = inputs(5, &c, 2);
        let fused = model.forward(&x, &m).unwrap();
        let mean = normalize(&mean_of_views(&x, &m).unwrap()).unwrap();
        assert!(max_diff(&fused, &mean) < 1e-6);
        // An absent view's values do not matter.
        let noise = Tensor::ones_like(&x).unwrap();
        let absent = (1.0 - &m).unwrap().unsqueeze(2).unwrap();
        let x2 = (&x + noise.broadcast_mul(&absent).unwrap()).unwrap();
        model
            .set("gate", &Tensor::new(&[0.7f32], &Device::Cpu).unwrap())
            .unwrap();
        let a = model.forward(&x, &m).unwrap();
        let b = model.forward(&x2, &m).unwrap();
        assert!(max_diff(&a, &b) < 1e-5, "{}", max_diff(&a, &b));
    }

    /// With the gate open every parameter gets a gradient (layer norm and
    /// softmax are differentiable here; candle-nn's fused ones are not).
    #[test]
    fn every_parameter_gets_a_gradient() {
        let c = FusionConfig {
            l: 2,
            ..FusionConfig::tiny()
        };
        let model = RigFusion::init(c.clone(), 3, &Device::Cpu).unwrap();
        model
            .set("gate", &Tensor::new(&[0.5f32], &Device::Cpu).unwrap())
            .unwrap();
        let (x, m) = inputs(4, &c, 4);
        let target = Tensor::from_vec(
            (0..4 * c.d)
                .map(|i| ((i * 7) % 11) as f32 - 5.0)
                .collect::<Vec<_>>(),
            (4, c.d),
            &Device::Cpu,
        )
        .unwrap();
        let loss = (model.forward(&x, &m).unwrap() * target)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in model.named_vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }
}
