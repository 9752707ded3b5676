//! Keyframe captions: the decoding loop and the low-priority worker that
//! drains the store's caption backlog. The BLIP model itself (vision
//! encoder, text decoder, WordPiece tokenizer over ONNX Runtime) lives
//! beside CLIP in [`crate::models::blip`].
//!
//! - [`decode`]: greedy and beam search with repetition penalty and a
//!   prompt prefix, step for step as transformers' `generate` does them.
//! - [`queue`]: the caption worker. It runs at a lower OS priority, waits
//!   while the inference worker has frames to embed, and never blocks it;
//!   the backlog lives in the store, so it survives restarts.
//! - [`stills`]: captions of image files in batches (`roadrep caption`,
//!   `trainer autocaption`).

pub mod decode;
pub mod queue;
pub mod stills;

use std::path::PathBuf;

use serde::Deserialize;

pub use decode::GenerationSettings;
pub use queue::{CaptionWorker, CaptionWorkerHandle};

use crate::models::{ImagePreprocessor, ModelError};

/// `[captions]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptionConfig {
    /// BLIP model directory (written by `models/export.py --blip`); unset:
    /// segments get no captions.
    pub model: Option<PathBuf>,
    /// Text every caption starts with (BLIP conditional captioning), e.g.
    /// "a picture of".
    pub prompt: Option<String>,
    /// Most tokens generated after the prompt.
    pub max_new_tokens: usize,
    /// 1 = greedy; more = beam search.
    pub num_beams: usize,
    /// > 1 discourages repeating tokens (1 = off).
    pub repetition_penalty: f32,
    /// Beam search: exponent of the length normalisation.
    pub length_penalty: f32,
    /// ONNX Runtime threads for the captioner (1 leaves the other cores to
    /// tagging).
    pub intra_threads: usize,
    /// Nice value of the caption thread (0-19; higher yields more to tagging).
    pub nice: i32,
    /// Most keyframes waiting for a caption (each is kept in the store at
    /// the captioner's input size, ~440 KB for BLIP-base); when full, the
    /// oldest jobs are dropped and counted, never frames.
    pub max_backlog: usize,
    /// Text decoder precision: `fp32` (reference) or `int8` (the derived
    /// `text_decoder.int8.onnx`: a cached step reads ~4x fewer weight
    /// bytes). The vision encoder stays fp32 either way.
    pub precision: CaptionPrecision,
    /// Keyframes the caption worker captions per model run (one
    /// vision-encoder run, one decoding loop): a cached decoder step reads
    /// all decoder weights whatever the rows, so rows share that read (see
    /// BENCHMARKS.md "BLIP captions"). Captions are the same as one at a
    /// time.
    pub batch_size: usize,
}

/// Which text decoder a BLIP captioner runs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CaptionPrecision {
    /// The fp32 export (reference numerics).
    #[default]
    Fp32,
    /// The INT8 dynamically quantized derivative (`python
    /// models/modeldir.py int8 DIR`): MatMul weights INT8, KV cache fp32.
    Int8,
}

impl Default for CaptionConfig {
    fn default() -> Self {
        Self {
            model: None,
            prompt: None,
            max_new_tokens: 20,
            num_beams: 1,
            repetition_penalty: 1.0,
            length_penalty: 1.0,
            intra_threads: 1,
            nice: 10,
            max_backlog: 500,
            precision: CaptionPrecision::Fp32,
            batch_size: 4,
        }
    }
}

impl CaptionConfig {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_new_tokens == 0 || self.max_new_tokens > 256 {
            return Err(format!(
                "captions.max_new_tokens {} must be in 1..=256",
                self.max_new_tokens
            ));
        }
        if self.num_beams == 0 || self.num_beams > 16 {
            return Err(format!(
                "captions.num_beams {} must be in 1..=16",
                self.num_beams
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(format!(
                "captions.repetition_penalty {} must be > 0",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return Err("captions.length_penalty must be finite".into());
        }
        if self.max_backlog == 0 {
            return Err("captions.max_backlog must be at least 1".into());
        }
        if self.batch_size == 0 || self.batch_size > 32 {
            return Err(format!(
                "captions.batch_size {} must be in 1..=32",
                self.batch_size
            ));
        }
        if !(0..=19).contains(&self.nice) {
            return Err(format!("captions.nice {} must be in 0..=19", self.nice));
        }
        Ok(())
    }

    /// The decoding settings.
    pub fn generation(&self) -> GenerationSettings {
        GenerationSettings {
            prompt: self.prompt.clone().filter(|p| !p.trim().is_empty()),
            max_new_tokens: self.max_new_tokens,
            num_beams: self.num_beams,
            repetition_penalty: self.repetition_penalty,
            length_penalty: self.length_penalty,
        }
    }
}

/// A generated caption.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Caption {
    /// Decoded text (special tokens removed; includes the prompt).
    pub text: String,
    /// Token ids as generated, prompt included.
    pub ids: Vec<u32>,
}

/// Why a caption could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The image is not what the model takes.
    #[error("caption image: {0}")]
    Image(String),
}

/// Something that captions images (BLIP, or a test double).
pub trait Captioner: Send + Sync {
    /// How frames are resized for it (the image the queue stores).
    fn preprocessor(&self) -> &ImagePreprocessor;
    /// Identity of the model (stored with each caption).
    fn fingerprint(&self) -> &str;
    /// Captions one resized image (packed RGB, `size`² × 3). `pace` is
    /// called before each model run; it may block to yield to tagging.
    fn caption(&self, rgb: &[u8], pace: &mut dyn FnMut()) -> Result<Caption, CaptionError>;
    /// Captions several resized images, in order; a captioner that can
    /// batches them into fewer model runs. Each caption is the one
    /// [`Captioner::caption`] gives the image alone.
    fn caption_batch(
        &self,
        images: &[&[u8]],
        pace: &mut dyn FnMut(),
    ) -> Result<Vec<Caption>, CaptionError> {
        images.iter().map(|rgb| self.caption(rgb, pace)).collect()
    }
}
