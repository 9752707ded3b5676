//! BLIP's vision encoder (HF `BlipVisionModel`): patch embedding (a strided
//! convolution, here a matmul over patches) + bias, class token, learned
//! positions, pre-norm encoder layers with a fused `qkv` projection, and
//! `post_layernorm` over every token: `image_embeds [n, T, Dv]`.

use candle_core::Tensor;

use super::CandleBlip;
use crate::trainer::TrainerError;
use crate::trainer::clip::{Forward, frozen_matmul, layer_norm, lora_linear, softmax_last};

const P: &str = "vision_model";

impl CandleBlip {
    /// `image_embeds [n, T, Dv]` of `pixel_values [n, 3, S, S]`.
    pub fn vision(&self, pixel_values: &Tensor, fwd: Forward<'_>) -> Result<Tensor, TrainerError> {
        let c = &self.config.vision_config;
        let (patch, h) = (c.patch_size, c.hidden_size);
        let w = self
            .base
            .get(&format!("{P}.embeddings.patch_embedding.weight"))?;
        let (b, ch, height, width) = pixel_values.dims4()?;
        if height != c.image_size || width != c.image_size || w.dims() != [h, ch, patch, patch] {
            return Err(TrainerError::Config(format!(
                "pixel_values {:?} do not fit the patch embedding {:?} at image size {}",
                pixel_values.dims(),
                w.dims(),
                c.image_size
            )));
        }
        let (gh, gw) = (height / patch, width / patch);
        let cpp = ch * patch * patch;
        let patches = pixel_values
            .reshape((b, ch, gh, patch, gw, patch))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, cpp))?;
        let patches = frozen_matmul(&patches, &w.reshape((h, cpp))?)?
            .broadcast_add(
                self.base
                    .get(&format!("{P}.embeddings.patch_embedding.bias"))?,
            )?
            .reshape((b, gh * gw, h))?;
        let cls = self
            .base
            .get(&format!("{P}.embeddings.class_embedding"))?
            .reshape((1, 1, h))?
            .broadcast_as((b, 1, h))?;
        let mut x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(
            &self
                .base
                .get(&format!("{P}.embeddings.position_embedding"))?
                .reshape((1, 1 + gh * gw, h))?,
        )?;
        for i in 0..c.num_hidden_layers {
            let p = format!("{P}.encoder.layers.{i}");
            let r = x.clone();
            let y = self.ln(&format!("{p}.layer_norm1"), &x, c.layer_norm_eps)?;
            let y = self.vision_attention(&format!("{p}.self_attn"), &y, fwd)?;
            x = (r + y)?;
            let r = x.clone();
            let y = self.ln(&format!("{p}.layer_norm2"), &x, c.layer_norm_eps)?;
            let y = lora_linear(&self.base, &format!("{p}.mlp.fc1"), &y, fwd)?.gelu_erf()?;
            let y = lora_linear(&self.base, &format!("{p}.mlp.fc2"), &y, fwd)?;
            x = (r + y)?;
        }
        self.ln(&format!("{P}.post_layernorm"), &x, c.layer_norm_eps)
    }

    /// HF `BlipAttention`: `qkv` as `[3, heads, head_dim]`, scaled dot
    /// product, `projection`.
    fn vision_attention(
        &self,
        p: &str,
        x: &Tensor,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        let heads = self.config.vision_config.num_attention_heads;
        let (b, t, h) = x.dims3()?;
        let hd = h / heads;
        let qkv = lora_linear(&self.base, &format!("{p}.qkv"), x, fwd)?
            .reshape((b, t, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * (hd as f64).powf(-0.5))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let att = softmax_last(&q.matmul(&k.t()?.contiguous()?)?)?;
        let out = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        lora_linear(&self.base, &format!("{p}.projection"), &out, fwd)
    }

    /// LayerNorm `module` (weight, bias) over the last dimension.
    pub(super) fn ln(&self, module: &str, x: &Tensor, eps: f64) -> Result<Tensor, TrainerError> {
        let w = self.base.get(&format!("{module}.weight"))?;
        let b = self.base.get(&format!("{module}.bias"))?;
        Ok(layer_norm(x, w, b, eps)?)
    }
}
