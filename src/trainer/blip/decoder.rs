//! BLIP's text decoder (HF `BlipTextLMHeadModel`): word + absolute position
//! embeddings and LayerNorm, post-norm BERT layers (causal self-attention,
//! cross-attention over the image tokens, GELU MLP), and the MLM head
//! (dense, GELU, LayerNorm, then the tied word embeddings + bias).
//!
//! Padding is on the right, so the causal mask alone keeps real tokens from
//! seeing it (transformers' attention mask changes nothing there); the loss
//! ignores padded positions.

use candle_core::{DType, Tensor};

use super::CandleBlip;
use crate::trainer::TrainerError;
use crate::trainer::clip::{Forward, frozen_matmul, lora_linear, softmax_last};

const P: &str = "text_decoder.bert";

impl CandleBlip {
    /// Last hidden states `[n, seq, D]` of `input_ids [n, seq]` (u32) over
    /// `image_embeds [n, T, Dv]`.
    pub fn decoder_hidden(
        &self,
        input_ids: &Tensor,
        image_embeds: &Tensor,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        let c = &self.config.text_config;
        let (b, t) = input_ids.dims2()?;
        let words = self
            .base
            .get(&format!("{P}.embeddings.word_embeddings.weight"))?;
        let x = words
            .index_select(&input_ids.to_dtype(DType::U32)?.flatten_all()?, 0)?
            .reshape((b, t, c.hidden_size))?;
        let pos = self
            .base
            .get(&format!("{P}.embeddings.position_embeddings.weight"))?
            .narrow(0, 0, t)?;
        let x = x.broadcast_add(&pos.unsqueeze(0)?)?;
        let mut x = self.ln(&format!("{P}.embeddings.LayerNorm"), &x, c.layer_norm_eps)?;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, t, t), x.device())?;
        for i in 0..c.num_hidden_layers {
            let p = format!("{P}.encoder.layer.{i}");
            let a = self.text_attention(&format!("{p}.attention"), &x, &x, Some(&mask), fwd)?;
            let a =
                self.text_attention(&format!("{p}.crossattention"), &a, image_embeds, None, fwd)?;
            let y =
                lora_linear(&self.base, &format!("{p}.intermediate.dense"), &a, fwd)?.gelu_erf()?;
            let y = lora_linear(&self.base, &format!("{p}.output.dense"), &y, fwd)?;
            x = self.ln(
                &format!("{p}.output.LayerNorm"),
                &(y + a)?,
                c.layer_norm_eps,
            )?;
        }
        Ok(x)
    }

    /// HF `BlipTextAttention`: queries from `x`, keys and values from `kv`
    /// (`x` itself, or the image tokens), `(q kᵀ) / √Dh` + mask, softmax,
    /// then `output.dense` and `LayerNorm(· + x)`.
    fn text_attention(
        &self,
        p: &str,
        x: &Tensor,
        kv: &Tensor,
        mask: Option<&Tensor>,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        let c = &self.config.text_config;
        let heads = c.num_attention_heads;
        let (b, t, h) = x.dims3()?;
        let hd = h / heads;
        let split = |y: Tensor| -> Result<Tensor, TrainerError> {
            let s = y.dims()[1];
            Ok(y.reshape((b, s, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(lora_linear(&self.base, &format!("{p}.self.query"), x, fwd)?)?;
        let k = split(lora_linear(&self.base, &format!("{p}.self.key"), kv, fwd)?)?;
        let v = split(lora_linear(
            &self.base,
            &format!("{p}.self.value"),
            kv,
            fwd,
        )?)?;
        let mut att = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let ctx = softmax_last(&att)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, h))?;
        let y = lora_linear(&self.base, &format!("{p}.output.dense"), &ctx, fwd)?;
        self.ln(
            &format!("{p}.output.LayerNorm"),
            &(y + x)?,
            c.layer_norm_eps,
        )
    }

    /// The MLM head: logits `[.., V]` of hidden states `[.., D]`.
    pub fn lm_head(&self, h: &Tensor, fwd: Forward<'_>) -> Result<Tensor, TrainerError> {
        let c = &self.config.text_config;
        let p = "text_decoder.cls.predictions";
        let y = lora_linear(&self.base, &format!("{p}.transform.dense"), h, fwd)?.gelu_erf()?;
        let y = self.ln(&format!("{p}.transform.LayerNorm"), &y, c.layer_norm_eps)?;
        let dims = y.dims().to_vec();
        let rows = y.elem_count() / c.hidden_size;
        let words = self
            .base
            .get(&format!("{P}.embeddings.word_embeddings.weight"))?;
        let logits = frozen_matmul(&y.reshape((rows, c.hidden_size))?, words)?
            .broadcast_add(self.base.get(&format!("{p}.bias"))?)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = c.vocab_size;
        }
        Ok(logits.reshape(out)?)
    }
}
