//! BLIP captioning in candle, with its weights read from our ONNX
//! initializers, for LoRA fine-tuning (`trainer train-captioner`).
//!
//! - Paper: Li et al., *BLIP: Bootstrapping Language-Image Pre-training*
//!   (<https://arxiv.org/abs/2201.12086>).
//! - Reference: transformers `BlipForConditionalGeneration` (vision model,
//!   `BlipTextLMHeadModel`), checkpoint `Salesforce/blip-image-captioning-base`.
//! - Weights: the float32 initializers of `vision_encoder.onnx` and
//!   `text_decoder.onnx` (`models/blip.py`), which keep the checkpoint's
//!   names. The decoder's cross-attention key/value projections live in
//!   `vision_encoder.onnx` (the daemon computes them once per image); the LM
//!   head's output weight is tied to the word embeddings.
//!
//! [`vision`] is the ViT (pre-norm, fused `qkv`, `post_layernorm` over every
//! token), [`decoder`] the BERT decoder (post-norm, causal self-attention,
//! cross-attention over the image tokens, MLM head). Every op is a
//! differentiable candle primitive (layer norm and softmax written out, see
//! [`super::clip`]) so gradients reach the LoRA factors. [`loss`] is the
//! teacher-forced captioning loss, [`train`] the loop, [`merge`] folds an
//! adapter back into a model directory the daemon loads.

pub mod decoder;
pub mod loss;
pub mod merge;
pub mod report;
pub mod train;
pub mod vision;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::TrainerError;
use super::clip::{BaseWeights, Forward};
use crate::models::ImagePreprocessor;
use crate::models::blip::{BlipManifest, roles};

/// Role of `config.json` (the HF `BlipConfig`) in a BLIP manifest.
pub const CONFIG_ROLE: &str = "config";

/// LoRA targets of a captioner by default: the text decoder's self- and
/// cross-attention projections (PEFT suffixes; add `self_attn.qkv` and
/// `self_attn.projection` for the vision encoder).
pub const DEFAULT_TARGETS: [&str; 5] = [
    "self.query",
    "self.key",
    "self.value",
    "attention.output.dense",
    "crossattention.output.dense",
];

/// HF `BlipConfig` (the fields the forward pass needs).
#[derive(Debug, Clone, Deserialize)]
pub struct BlipConfig {
    /// Text decoder.
    pub text_config: TextConfig,
    /// Vision encoder.
    pub vision_config: VisionConfig,
}

/// HF `BlipTextConfig` fields used here.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    /// Width.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Only `gelu`.
    pub hidden_act: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Label smoothing of the loss (transformers reads it from here).
    #[serde(default)]
    pub label_smoothing: f64,
}

/// HF `BlipVisionConfig` fields used here.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    /// Width.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Only `gelu`.
    pub hidden_act: String,
    /// Input side.
    pub image_size: usize,
    /// Patch side.
    pub patch_size: usize,
}

/// BLIP over frozen base weights.
#[derive(Debug)]
pub struct CandleBlip {
    /// The HF configuration.
    pub config: BlipConfig,
    /// The verified manifest.
    pub manifest: BlipManifest,
    /// The frozen weights of both graphs.
    pub base: BaseWeights,
    /// The model directory.
    pub dir: PathBuf,
}

impl CandleBlip {
    /// Loads a verified BLIP model directory on `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, TrainerError> {
        let manifest = BlipManifest::read_verified(dir)?;
        let config_path = dir.join(&manifest.file(dir, CONFIG_ROLE)?.path);
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| TrainerError::io(&config_path, e))?;
        let config: BlipConfig = serde_json::from_str(&text).map_err(|e| TrainerError::Onnx {
            path: config_path.clone(),
            message: format!("not a BlipConfig: {e}"),
        })?;
        let bad = |message: String| TrainerError::Onnx {
            path: config_path.clone(),
            message,
        };
        let (t, v) = (&config.text_config, &config.vision_config);
        for (tower, heads, hidden, act) in [
            ("text", t.num_attention_heads, t.hidden_size, &t.hidden_act),
            (
                "vision",
                v.num_attention_heads,
                v.hidden_size,
                &v.hidden_act,
            ),
        ] {
            if heads == 0 || hidden % heads != 0 {
                return Err(bad(format!(
                    "{tower}_config: hidden_size must be a multiple of num_attention_heads"
                )));
            }
            if act != "gelu" {
                return Err(bad(format!(
                    "{tower}_config: hidden_act '{act}' is not supported"
                )));
            }
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 {
            return Err(bad(
                "vision_config: image_size must be a multiple of patch_size".into(),
            ));
        }
        let b = &manifest.blip;
        if b.hidden_size != t.hidden_size
            || b.num_layers != t.num_hidden_layers
            || b.num_heads != t.num_attention_heads
            || b.vocab_size != t.vocab_size
            || b.image_size as usize != v.image_size
        {
            return Err(bad(
                "config.json does not match the manifest's [blip] table".into(),
            ));
        }
        let files = [roles::VISION_ENCODER, roles::TEXT_DECODER]
            .iter()
            .map(|role| Ok(dir.join(&manifest.file(dir, role)?.path)))
            .collect::<Result<Vec<_>, TrainerError>>()?;
        let base = BaseWeights::from_onnx_files(&files, device)?;
        Ok(Self {
            config,
            manifest,
            base,
            dir: dir.to_path_buf(),
        })
    }

    /// The image preprocessing of the model directory (what the daemon uses).
    pub fn preprocessor(&self) -> ImagePreprocessor {
        self.manifest.image_preprocessor()
    }

    /// Logits `[n, seq, V]` of every position of `input_ids [n, seq]` over
    /// the images `pixel_values [n, 3, S, S]` (teacher forcing).
    pub fn logits(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        let image = self.vision(pixel_values, fwd)?;
        let h = self.decoder_hidden(input_ids, &image, fwd)?;
        self.lm_head(&h, fwd)
    }

    /// Greedy captions (as the daemon decodes with the default settings):
    /// from `prompt_ids`, the arg-max token until `[SEP]` or `max_new_tokens`.
    /// Returns every row's ids, prompt included.
    pub fn greedy(
        &self,
        pixel_values: &Tensor,
        prompt_ids: &[u32],
        max_new_tokens: usize,
        fwd: Forward<'_>,
    ) -> Result<Vec<Vec<u32>>, TrainerError> {
        let image = self.vision(pixel_values, fwd)?;
        let n = image.dims()[0];
        let sep = self.manifest.blip.sep_token_id;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let img = image.narrow(0, i, 1)?;
            let mut seq = prompt_ids.to_vec();
            for _ in 0..max_new_tokens {
                let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), img.device())?;
                let h = self.decoder_hidden(&ids, &img, fwd)?;
                let last = h.narrow(1, seq.len() - 1, 1)?;
                let logits: Vec<f32> = self.lm_head(&last, fwd)?.flatten_all()?.to_vec1()?;
                let next = crate::caption::decode::argmax(&logits);
                seq.push(next);
                if next == sep {
                    break;
                }
            }
            out.push(seq);
        }
        Ok(out)
    }
}
