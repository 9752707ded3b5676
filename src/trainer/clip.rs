//! CLIP in candle, with its weights read from our ONNX initializers.
//!
//! - Paper: Radford et al., <https://arxiv.org/abs/2103.00020>.
//! - Reference: transformers `CLIPModel` (`get_image_features`,
//!   `get_text_features`), checkpoint `openai/clip-vit-base-patch32`;
//!   candle-transformers `models/clip` for the layer structure.
//! - Weights: the initializers of `image_encoder.onnx` and `text_encoder.onnx`
//!   (legacy exporter, opset 17), which keep the checkpoint's names. Only
//!   float32 initializers are read.
//!
//! Layers mirror HF: vision = patch conv + class token + positions,
//! `pre_layrnorm`, pre-norm encoder layers, `post_layernorm` on the class
//! token, `visual_projection`; text = token + position embeddings, causal
//! encoder, `final_layer_norm`, pooled at the first end-of-text token,
//! `text_projection`. Outputs are unnormalised, like the ONNX encoders.
//! Every op is a differentiable candle primitive (layer norm and softmax are
//! written out) so gradients reach the LoRA factors.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use serde::Deserialize;

use super::TrainerError;
use super::lora::LoraAdapter;
use super::rng::SplitMix64;
use crate::models::ModelManifest;
use crate::models::manifest::roles;

/// Role of `config.json` (the HF `CLIPConfig`) in a model manifest.
pub const CONFIG_ROLE: &str = "config";

/// HF `CLIPConfig` (the fields the forward pass needs).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    /// Joint embedding dimension.
    pub projection_dim: usize,
    /// Text tower.
    pub text_config: TowerConfig,
    /// Vision tower.
    pub vision_config: TowerConfig,
}

/// HF `CLIPTextConfig` / `CLIPVisionConfig` fields used here.
#[derive(Debug, Clone, Deserialize)]
pub struct TowerConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// `quick_gelu` (CLIP) or `gelu`.
    pub hidden_act: String,
    /// End-of-text token id (text tower only).
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Image side (vision tower only).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Patch side (vision tower only).
    #[serde(default)]
    pub patch_size: Option<usize>,
}

/// CLIP's end-of-text token in the OpenAI vocabulary.
const DEFAULT_EOS: u32 = 49407;

/// The frozen base weights: every float32 initializer of both encoders.
#[derive(Debug)]
pub struct BaseWeights {
    tensors: HashMap<String, Tensor>,
    origin: HashMap<String, PathBuf>,
    files: Vec<PathBuf>,
    device: Device,
}

/// Reads the float32 initializers of an ONNX file as `(name, tensor)`.
pub fn read_initializers(
    path: &Path,
    device: &Device,
) -> Result<Vec<(String, Tensor)>, TrainerError> {
    let model = candle_onnx::read_file(path).map_err(|e| TrainerError::Onnx {
        path: path.to_path_buf(),
        message: format!("cannot read ONNX: {e}"),
    })?;
    let mut graph = model.graph.ok_or_else(|| TrainerError::Onnx {
        path: path.to_path_buf(),
        message: "no graph".into(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    super::external::inline(&mut graph, dir).map_err(|message| TrainerError::Onnx {
        path: path.to_path_buf(),
        message,
    })?;
    let mut out = Vec::new();
    for init in &graph.initializer {
        if init.data_type != FLOAT {
            continue;
        }
        let values = float_values(init).map_err(|message| TrainerError::Onnx {
            path: path.to_path_buf(),
            message: format!("initializer '{}': {message}", init.name),
        })?;
        let dims: Vec<usize> = init.dims.iter().map(|&d| d as usize).collect();
        out.push((init.name.clone(), Tensor::from_vec(values, dims, device)?));
    }
    Ok(out)
}

/// ONNX `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;

/// The values of a float32 initializer (raw little-endian bytes or
/// `float_data`); external data must be read in first
/// ([`super::external::inline`]).
pub fn float_values(t: &candle_onnx::onnx::TensorProto) -> Result<Vec<f32>, String> {
    let n: usize = t.dims.iter().map(|&d| d as usize).product();
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else if !t.float_data.is_empty() {
        t.float_data.clone()
    } else if !t.external_data.is_empty() {
        return Err("external data is not supported".into());
    } else {
        Vec::new()
    };
    if values.len() != n {
        return Err(format!("{} values for shape {:?}", values.len(), t.dims));
    }
    Ok(values)
}

impl BaseWeights {
    /// Reads the initializers of the fp32 image and text encoders of `dir`.
    pub fn from_model_dir(
        dir: &Path,
        manifest: &ModelManifest,
        device: &Device,
    ) -> Result<Self, TrainerError> {
        let files = [roles::IMAGE_ENCODER, roles::TEXT_ENCODER]
            .iter()
            .map(|role| Ok(dir.join(&manifest.file(dir, role)?.path)))
            .collect::<Result<Vec<_>, TrainerError>>()?;
        Self::from_onnx_files(&files, device)
    }

    /// Reads the float32 initializers of `files` (a name in two files: the
    /// later one's).
    pub fn from_onnx_files(files: &[PathBuf], device: &Device) -> Result<Self, TrainerError> {
        let mut tensors = HashMap::new();
        let mut origin = HashMap::new();
        for path in files {
            for (name, t) in read_initializers(path, device)? {
                origin.insert(name.clone(), path.clone());
                tensors.insert(name, t);
            }
        }
        Ok(Self {
            tensors,
            origin,
            files: files.to_vec(),
            device: device.clone(),
        })
    }

    /// The initializer `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor, TrainerError> {
        self.tensors.get(name).ok_or_else(|| {
            let names: Vec<String> = self
                .files
                .iter()
                .map(|f| f.file_name().unwrap_or_default().to_string_lossy().into())
                .collect();
            TrainerError::Onnx {
                path: PathBuf::from(names.join(" / ")),
                message: format!(
                    "no initializer '{name}' (was the model exported with names kept?)"
                ),
            }
        })
    }

    /// The initializer `name`, if there is one.
    pub fn get_opt(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The ONNX file an initializer came from.
    pub fn origin(&self, name: &str) -> Option<&Path> {
        self.origin.get(name).map(PathBuf::as_path)
    }

    /// Linear layers (2-D `*.weight` that are not embeddings), as
    /// `(module path, (out, in))`, sorted by name.
    pub fn linear_modules(&self) -> Vec<(String, (usize, usize))> {
        let mut out: Vec<_> = self
            .tensors
            .iter()
            .filter(|(name, t)| {
                t.rank() == 2 && name.ends_with(".weight") && !name.contains("embedding")
            })
            .map(|(name, t)| {
                let module = name.trim_end_matches(".weight").to_string();
                (module, (t.dims()[0], t.dims()[1]))
            })
            .collect();
        out.sort();
        out
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// What a forward pass runs with: the adapter (if any) and, in training, the
/// generator for LoRA dropout.
#[derive(Default, Clone, Copy)]
pub struct Forward<'a> {
    /// LoRA adapters added to the base weights (unmerged).
    pub adapter: Option<&'a LoraAdapter>,
    /// Dropout randomness; `None` means evaluation (no dropout).
    pub dropout: Option<&'a RefCell<SplitMix64>>,
}

/// CLIP's two towers over frozen base weights.
#[derive(Debug)]
pub struct CandleClip {
    /// The HF configuration.
    pub config: ClipConfig,
    /// The frozen weights.
    pub base: BaseWeights,
    /// `logit_scale` of the manifest (`exp` already applied).
    pub logit_scale: f32,
    /// Token id the text tower pools at.
    pub eos_token_id: u32,
}

impl CandleClip {
    /// Loads a verified model directory on `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, TrainerError> {
        let manifest = ModelManifest::read_verified(dir)?;
        let config_path = dir.join(&manifest.file(dir, CONFIG_ROLE)?.path);
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| TrainerError::io(&config_path, e))?;
        let config: ClipConfig = serde_json::from_str(&text).map_err(|e| TrainerError::Onnx {
            path: config_path.clone(),
            message: format!("not a CLIPConfig: {e}"),
        })?;
        for (tower, c) in [
            ("text", &config.text_config),
            ("vision", &config.vision_config),
        ] {
            if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
                return Err(TrainerError::Onnx {
                    path: config_path,
                    message: format!(
                        "{tower}_config: hidden_size must be a multiple of num_attention_heads"
                    ),
                });
            }
            if !matches!(c.hidden_act.as_str(), "quick_gelu" | "gelu") {
                return Err(TrainerError::Onnx {
                    path: config_path,
                    message: format!(
                        "{tower}_config: hidden_act '{}' is not supported",
                        c.hidden_act
                    ),
                });
            }
        }
        if config.vision_config.patch_size == Some(0) {
            return Err(TrainerError::Onnx {
                path: config_path,
                message: "vision_config: patch_size must be positive".into(),
            });
        }
        let base = BaseWeights::from_model_dir(dir, &manifest, device)?;
        Ok(Self {
            eos_token_id: config.text_config.eos_token_id.unwrap_or(DEFAULT_EOS),
            config,
            base,
            logit_scale: manifest.clip.logit_scale,
        })
    }

    /// Image features of `[n, 3, size, size]` pixel values: `[n, projection_dim]`.
    pub fn get_image_features(
        &self,
        pixel_values: &Tensor,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        let c = &self.config.vision_config;
        let patch = c.patch_size.unwrap_or(32);
        let w = self
            .base
            .get("vision_model.embeddings.patch_embedding.weight")?;
        let h = c.hidden_size;
        let (b, ch, height, width) = pixel_values.dims4()?;
        if height % patch != 0 || width % patch != 0 || w.dims() != [h, ch, patch, patch] {
            return Err(TrainerError::Config(format!(
                "pixel_values {:?} do not fit patch embedding {:?}",
                pixel_values.dims(),
                w.dims()
            )));
        }
        // A convolution whose stride equals its kernel is a matmul over
        // non-overlapping patches; candle's CPU conv2d is several times slower.
        let (gh, gw) = (height / patch, width / patch);
        let cpp = ch * patch * patch;
        let patches = pixel_values
            .reshape((b, ch, gh, patch, gw, patch))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, cpp))?;
        let patches = frozen_matmul(&patches, &w.reshape((h, cpp))?)?.reshape((b, gh * gw, h))?;
        let cls = self
            .base
            .get("vision_model.embeddings.class_embedding")?
            .reshape((1, 1, h))?
            .broadcast_as((b, 1, h))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let x = x.broadcast_add(
            &self
                .base
                .get("vision_model.embeddings.position_embedding.weight")?
                .unsqueeze(0)?,
        )?;
        let x = self.layer_norm("vision_model.pre_layrnorm", &x, c.layer_norm_eps)?;
        let x = self.encoder("vision_model", c, x, None, fwd)?;
        let pooled = x.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.layer_norm("vision_model.post_layernorm", &pooled, c.layer_norm_eps)?;
        self.linear("visual_projection", &pooled, fwd)
    }

    /// Text features of `[n, seq]` u32 token ids: `[n, projection_dim]`.
    /// Each row must contain the end-of-text token; anything after it
    /// (padding) cannot change the result because attention is causal.
    pub fn get_text_features(
        &self,
        input_ids: &Tensor,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        let c = &self.config.text_config;
        let (b, t) = input_ids.dims2()?;
        let tok = self
            .base
            .get("text_model.embeddings.token_embedding.weight")?;
        let x = tok
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, c.hidden_size))?;
        let pos = self
            .base
            .get("text_model.embeddings.position_embedding.weight")?
            .narrow(0, 0, t)?;
        let x = x.broadcast_add(&pos.unsqueeze(0)?)?;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, t, t), self.base.device())?;
        let x = self.encoder("text_model", c, x, Some(&mask), fwd)?;
        let x = self.layer_norm("text_model.final_layer_norm", &x, c.layer_norm_eps)?;
        // Pool at the first end-of-text token of each row (HF with eos_token_id != 2).
        let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut rows = Vec::with_capacity(b);
        for (i, row) in ids.iter().enumerate() {
            let pos = row
                .iter()
                .position(|&id| id == self.eos_token_id)
                .unwrap_or(t - 1);
            rows.push((i * t + pos) as u32);
        }
        let rows = Tensor::from_vec(rows, b, self.base.device())?;
        let pooled = x.reshape((b * t, c.hidden_size))?.index_select(&rows, 0)?;
        self.linear("text_projection", &pooled, fwd)
    }

    fn encoder(
        &self,
        tower: &str,
        c: &TowerConfig,
        mut x: Tensor,
        mask: Option<&Tensor>,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        for i in 0..c.num_hidden_layers {
            let p = format!("{tower}.encoder.layers.{i}");
            let residual = x.clone();
            let h = self.layer_norm(&format!("{p}.layer_norm1"), &x, c.layer_norm_eps)?;
            let h = self.attention(
                &format!("{p}.self_attn"),
                &h,
                c.num_attention_heads,
                mask,
                fwd,
            )?;
            x = (residual + h)?;
            let residual = x.clone();
            let h = self.layer_norm(&format!("{p}.layer_norm2"), &x, c.layer_norm_eps)?;
            let h = self.linear(&format!("{p}.mlp.fc1"), &h, fwd)?;
            let h = activation(&h, &c.hidden_act)?;
            let h = self.linear(&format!("{p}.mlp.fc2"), &h, fwd)?;
            x = (residual + h)?;
        }
        Ok(x)
    }

    fn attention(
        &self,
        p: &str,
        x: &Tensor,
        heads: usize,
        mask: Option<&Tensor>,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        let (b, t, h) = x.dims3()?;
        let hd = h / heads;
        let split = |y: Tensor| -> Result<Tensor, TrainerError> {
            Ok(y.reshape((b, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split((self.linear(&format!("{p}.q_proj"), x, fwd)? * (hd as f64).powf(-0.5))?)?;
        let k = split(self.linear(&format!("{p}.k_proj"), x, fwd)?)?;
        let v = split(self.linear(&format!("{p}.v_proj"), x, fwd)?)?;
        let mut att = q.matmul(&k.t()?.contiguous()?)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = softmax_last(&att)?;
        let out = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        self.linear(&format!("{p}.out_proj"), &out, fwd)
    }

    /// `x Wᵀ + b` over the last dimension, plus the module's LoRA update.
    fn linear(&self, module: &str, x: &Tensor, fwd: Forward<'_>) -> Result<Tensor, TrainerError> {
        lora_linear(&self.base, module, x, fwd)
    }

    fn layer_norm(&self, module: &str, x: &Tensor, eps: f64) -> Result<Tensor, TrainerError> {
        let w = self.base.get(&format!("{module}.weight"))?;
        let b = self.base.get(&format!("{module}.bias"))?;
        Ok(layer_norm(x, w, b, eps)?)
    }
}

/// `x Wᵀ + b` over the last dimension of `x` with `module`'s frozen weight
/// and bias from `base`, plus the module's LoRA update
/// `(α / r) · dropout(x) Aᵀ Bᵀ` when `fwd` has an adapter for it.
pub fn lora_linear(
    base: &BaseWeights,
    module: &str,
    x: &Tensor,
    fwd: Forward<'_>,
) -> Result<Tensor, TrainerError> {
    let w = base.get(&format!("{module}.weight"))?;
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / in_dim.max(1);
    let x2 = x.reshape((rows, in_dim))?;
    let mut y = frozen_matmul(&x2, w)?;
    if let Some(bias) = base.tensors.get(&format!("{module}.bias")) {
        y = y.broadcast_add(bias)?;
    }
    if let Some(pair) = fwd.adapter.and_then(|a| a.pairs.get(module)) {
        let adapter = fwd.adapter.map(|a| &a.config);
        let (p, scale) = adapter.map_or((0.0, 1.0), |c| (c.lora_dropout, c.scaling()));
        let xin = match fwd.dropout {
            Some(rng) if p > 0.0 => {
                let mut rng = rng.borrow_mut();
                let keep = 1.0 / (1.0 - p);
                let mask: Vec<f32> = (0..x2.elem_count())
                    .map(|_| if rng.next_f32() < p { 0.0 } else { keep })
                    .collect();
                (x2 * Tensor::from_vec(mask, (rows, in_dim), x.device())?)?
            }
            _ => x2,
        };
        let update = xin
            .matmul(&pair.a.as_tensor().t()?)?
            .matmul(&pair.b.as_tensor().t()?)?;
        y = (y + (update * scale)?)?;
    }
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = w.dims()[0];
    }
    Ok(y.reshape(out_dims)?)
}

/// LayerNorm over the last dimension from differentiable primitives
/// (candle-nn's fused kernel has no backward pass).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(w)?.broadcast_add(b)
}

/// `x Wᵀ` for a frozen weight `W`.
///
/// candle's matmul backward always computes the gradient of both operands;
/// for a frozen weight that is a second matmul as large as the forward one,
/// thrown away. This op returns only the input's gradient, which cuts the
/// backward pass of a LoRA step by about a third. CPU only: elsewhere it is
/// the plain matmul.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return x.matmul(&w.t()?);
    }
    x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })
}

struct FrozenMatmul {
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("frozen-matmul: f32 input expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: contiguous input expected");
        };
        let x = Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        let (out, _) = y.storage_and_layout();
        match &*out {
            candle_core::Storage::Cpu(cpu) => Ok((cpu.clone(), shape)),
            _ => candle_core::bail!("frozen-matmul: CPU result expected"),
        }
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// Softmax over the last dimension from differentiable primitives
/// (candle-nn's fused kernel has no backward pass).
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

fn activation(x: &Tensor, act: &str) -> candle_core::Result<Tensor> {
    match act {
        // quick_gelu(x) = x * sigmoid(1.702 x), written with primitives.
        "quick_gelu" => {
            let s = ((x * -1.702)?.exp()? + 1.0)?.recip()?;
            x * s
        }
        _ => x.gelu_erf(),
    }
}

/// L2-normalises the rows of `[n, d]`.
pub fn normalize_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&(norm + 1e-12)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The custom op gives the plain matmul's values and input gradient.
    #[test]
    fn frozen_matmul_matches_matmul() {
        let mut rng = SplitMix64::new(5);
        let mut rand = |n: usize| (0..n).map(|_| rng.next_f32() - 0.5).collect::<Vec<f32>>();
        let x = Var::from_vec(rand(6 * 4), (6, 4), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(rand(3 * 4), (3, 4), &Device::Cpu).unwrap();
        let g = Tensor::from_vec(rand(6 * 3), (6, 3), &Device::Cpu).unwrap();
        let a = frozen_matmul(x.as_tensor(), &w).unwrap();
        let b = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let ga = (&a * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let diff = |p: &Tensor, q: &Tensor| {
            (p - q)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff(&a, &b) < 1e-6);
        assert!(
            diff(
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap()
            ) < 1e-6
        );
    }
}
