//! BLIP captioner over ONNX Runtime.
//!
//! - Paper: Li et al., *BLIP: Bootstrapping Language-Image Pre-training*
//!   (<https://arxiv.org/abs/2201.12086>).
//! - Reference: transformers `BlipForConditionalGeneration.generate`;
//!   checkpoint `Salesforce/blip-image-captioning-base`.
//! - Export: `models/export.py --blip`. Two graphs:
//!   - `vision_encoder.onnx`: `pixel_values [n,3,S,S]` -> `image_embeds`
//!     and `cross_kv [L,2,n,H,T,Dh]`, the text decoder's cross-attention
//!     keys/values over the image tokens, computed once per image;
//!   - `text_decoder.onnx`: `input_ids [n,new]`, `past_self_kv
//!     [L,2,n,H,past,Dh]`, `cross_kv` (batch 1 broadcasts over beams) ->
//!     `logits [n,V]` of the last position, `present_self_kv`;
//!   - optionally `text_decoder.int8.onnx` (role `text_decoder_int8`,
//!     `python models/modeldir.py int8 DIR`): the same step with INT8
//!     MatMul weights and activations quantized per row, taking the cross
//!     K/V as one input per layer and K/V (`cross_k.0`, `cross_v.0`, ...:
//!     views of the vision encoder's one `cross_kv` buffer, where the
//!     single input cost two full copies per step inside the graph),
//!     loaded with [`CaptionPrecision::Int8`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::{Array4, ArrayD, Axis};
use ort::session::Session;
use ort::value::TensorRef;
use tokenizers::Tokenizer;

mod batch;
mod manifest;
mod step;

pub use manifest::{BlipManifest, BlipPreprocess, BlipSection, roles};

use crate::caption::decode::{GenerationSettings, StepModel};
use crate::caption::{Caption, CaptionError, CaptionPrecision, Captioner};
use crate::models::clip::{PIXEL_VALUES, open_checked};
use crate::models::manifest::MANIFEST_FILE;
use crate::models::preprocess::{ImagePreprocessor, RgbFrame};
use crate::models::{ModelError, OrtRuntime};
use step::DecoderState;

const CROSS_KV: &str = "cross_kv";
const INPUT_IDS: &str = "input_ids";
const PAST: &str = "past_self_kv";
const PRESENT: &str = "present_self_kv";
const LOGITS: &str = "logits";
const IMAGE_EMBEDS: &str = "image_embeds";

/// A loaded BLIP captioner.
pub struct BlipCaptioner {
    dir: PathBuf,
    manifest: BlipManifest,
    preprocessor: ImagePreprocessor,
    vision_path: PathBuf,
    vision: Mutex<Session>,
    decoder_path: PathBuf,
    decoder: Mutex<Session>,
    /// The decoder's per-layer cross K/V inputs, when it has them (the
    /// derived INT8 decoder: `step::cross_input_names`).
    cross_inputs: Option<Vec<String>>,
    precision: CaptionPrecision,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    settings: GenerationSettings,
    prompt_ids: Vec<u32>,
}

impl std::fmt::Debug for BlipCaptioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlipCaptioner")
            .field("dir", &self.dir)
            .field("precision", &self.precision)
            .finish()
    }
}

impl BlipCaptioner {
    /// Verifies `dir` and opens both graphs (fp32) with `intra_threads`
    /// threads.
    pub fn load(
        dir: &Path,
        runtime: &OrtRuntime,
        intra_threads: usize,
        settings: GenerationSettings,
    ) -> Result<Self, ModelError> {
        Self::load_with_precision(
            dir,
            runtime,
            intra_threads,
            settings,
            CaptionPrecision::Fp32,
        )
    }

    /// As [`BlipCaptioner::load`], with the text decoder of `precision`
    /// (the vision encoder is fp32 either way). INT8 needs the derived
    /// `text_decoder_int8` file; a directory without it is refused with the
    /// command that derives it.
    pub fn load_with_precision(
        dir: &Path,
        runtime: &OrtRuntime,
        intra_threads: usize,
        settings: GenerationSettings,
        precision: CaptionPrecision,
    ) -> Result<Self, ModelError> {
        // The decoder not used is not hashed.
        let (decoder_role, unused) = match precision {
            CaptionPrecision::Fp32 => (roles::TEXT_DECODER, roles::TEXT_DECODER_INT8),
            CaptionPrecision::Int8 => (roles::TEXT_DECODER_INT8, roles::TEXT_DECODER),
        };
        let manifest = BlipManifest::read_verified_except(dir, &[unused])?;
        if !manifest.files.contains_key(decoder_role) {
            return Err(ModelError::Manifest {
                path: dir.join(MANIFEST_FILE),
                message: format!(
                    "captions precision int8: '{}' has no INT8 text decoder ([files.{decoder_role}]); \
                     derive it with `python models/modeldir.py int8 {}`",
                    dir.display(),
                    dir.display()
                ),
            });
        }
        let b = &manifest.blip;
        let preprocessor = manifest.image_preprocessor();
        let s = manifest.preprocess.size as i64;
        let (l, h, t, d) = (
            b.num_layers as i64,
            b.num_heads as i64,
            b.num_image_tokens as i64,
            b.head_dim as i64,
        );

        let (vision_path, vision) = open_checked(
            runtime,
            dir,
            manifest.file(dir, roles::VISION_ENCODER)?,
            intra_threads,
            &[(
                PIXEL_VALUES,
                "float32",
                vec![None, Some(3), Some(s), Some(s)],
            )],
            &[
                (
                    IMAGE_EMBEDS,
                    "float32",
                    vec![None, Some(t), Some(b.vision_hidden_size as i64)],
                ),
                (
                    CROSS_KV,
                    "float32",
                    vec![Some(l), Some(2), None, Some(h), Some(t), Some(d)],
                ),
            ],
        )?;
        // The derived INT8 decoder takes cross K/V per layer (no copies per
        // step); the fp32 export one `cross_kv`.
        let decoder_entry = manifest.file(dir, decoder_role)?;
        let split_names = step::cross_input_names(b.num_layers);
        let cross_inputs = decoder_entry
            .inputs
            .iter()
            .any(|i| i.name == split_names[0])
            .then_some(split_names);
        let mut decoder_inputs = vec![
            (INPUT_IDS, "int64", vec![None, None]),
            (
                PAST,
                "float32",
                vec![Some(l), Some(2), None, Some(h), None, Some(d)],
            ),
        ];
        match &cross_inputs {
            Some(names) => decoder_inputs.extend(
                names
                    .iter()
                    .map(|n| (n.as_str(), "float32", vec![None, Some(h), Some(t), Some(d)])),
            ),
            None => decoder_inputs.push((
                CROSS_KV,
                "float32",
                vec![Some(l), Some(2), None, Some(h), Some(t), Some(d)],
            )),
        }
        let (decoder_path, decoder) = open_checked(
            runtime,
            dir,
            decoder_entry,
            intra_threads,
            &decoder_inputs,
            &[
                (LOGITS, "float32", vec![None, Some(b.vocab_size as i64)]),
                (
                    PRESENT,
                    "float32",
                    vec![Some(l), Some(2), None, Some(h), None, Some(d)],
                ),
            ],
        )?;
        let tokenizer_path = dir.join(&manifest.file(dir, roles::TOKENIZER)?.path);
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let mut captioner = Self {
            dir: dir.to_path_buf(),
            manifest,
            preprocessor,
            vision_path,
            vision: Mutex::new(vision),
            decoder_path,
            decoder: Mutex::new(decoder),
            cross_inputs,
            precision,
            tokenizer,
            tokenizer_path,
            settings: GenerationSettings::default(),
            prompt_ids: Vec::new(),
        };
        captioner.set_generation(settings)?;
        Ok(captioner)
    }

    /// Changes the decoding settings (prompt included).
    pub fn set_generation(&mut self, settings: GenerationSettings) -> Result<(), ModelError> {
        let b = &self.manifest.blip;
        let ids = self.prompt_ids_for(settings.prompt.as_deref())?;
        if ids.len() + settings.max_new_tokens > b.max_positions {
            return Err(ModelError::Manifest {
                path: self.dir.join(MANIFEST_FILE),
                message: format!(
                    "prompt ({} tokens) + max_new_tokens {} exceed the model's {} positions",
                    ids.len(),
                    settings.max_new_tokens,
                    b.max_positions
                ),
            });
        }
        self.prompt_ids = ids;
        self.settings = settings;
        Ok(())
    }

    /// Decoder input for a prompt, as BLIP's processor and `generate` make
    /// it: `[CLS] prompt [SEP]` with the decoder start token in place of
    /// `[CLS]` and the final `[SEP]` dropped; no prompt: the start token.
    pub fn prompt_ids_for(&self, prompt: Option<&str>) -> Result<Vec<u32>, ModelError> {
        let b = &self.manifest.blip;
        let mut ids = match prompt {
            Some(p) => self.tokenize(p)?,
            None => vec![b.bos_token_id, b.sep_token_id],
        };
        if let Some(first) = ids.first_mut() {
            *first = b.bos_token_id;
        }
        ids.pop();
        if ids.is_empty() {
            ids.push(b.bos_token_id);
        }
        Ok(ids)
    }

    /// Which text decoder runs.
    pub fn precision(&self) -> CaptionPrecision {
        self.precision
    }

    /// The manifest.
    pub fn manifest(&self) -> &BlipManifest {
        &self.manifest
    }

    /// Decoder input the captions start from (start token + prompt).
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Token ids of a text, with `[CLS]` and `[SEP]`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                path: self.tokenizer_path.clone(),
                message: e.to_string(),
            })
    }

    /// Text of token ids, special tokens removed.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.tokenizer_path.clone(),
                message: e.to_string(),
            })
    }

    /// Normalised pixels of one resized image: `[1, 3, S, S]`.
    pub fn pixels(&self, rgb: &[u8]) -> Result<Array4<f32>, CaptionError> {
        let s = self.preprocessor.crop_size as usize;
        if rgb.len() != s * s * 3 {
            return Err(CaptionError::Image(format!(
                "{} bytes, expected a {s}x{s} RGB image",
                rgb.len()
            )));
        }
        let mut out = Array4::<f32>::zeros((1, 3, s, s));
        self.preprocessor
            .preprocess_into(
                &RgbFrame::packed(s as u32, s as u32, rgb),
                out.index_axis_mut(Axis(0), 0),
            )
            .map_err(ModelError::from)?;
        Ok(out)
    }

    /// Runs the vision encoder: the decoder's cross-attention keys/values
    /// `[L, 2, n, H, T, Dh]`.
    pub fn encode_image(&self, pixel_values: &Array4<f32>) -> Result<ArrayD<f32>, ModelError> {
        let err = |e: ort::Error| ModelError::Ort {
            path: self.vision_path.clone(),
            message: e.to_string(),
        };
        let input = TensorRef::from_array_view(pixel_values.view()).map_err(err)?;
        let mut session = self.vision.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![PIXEL_VALUES => input])
            .map_err(err)?;
        Ok(outputs[CROSS_KV]
            .try_extract_array::<f32>()
            .map_err(err)?
            .as_standard_layout()
            .into_owned())
    }

    /// Captions preprocessed pixels `[1, 3, S, S]` with the configured
    /// decoding.
    pub fn caption_pixels(
        &self,
        pixel_values: &Array4<f32>,
        pace: &mut dyn FnMut(),
    ) -> Result<Caption, CaptionError> {
        self.caption_with(pixel_values, &self.settings, &self.prompt_ids, pace)
    }

    /// Captions with explicit settings and decoder prompt ids.
    pub fn caption_with(
        &self,
        pixel_values: &Array4<f32>,
        settings: &GenerationSettings,
        prompt_ids: &[u32],
        pace: &mut dyn FnMut(),
    ) -> Result<Caption, CaptionError> {
        self.caption_batch_with(pixel_values, settings, prompt_ids, pace)?
            .pop()
            .ok_or_else(|| CaptionError::Image("no image to caption".into()))
    }

    /// Logits of the last prompt position at the first step (parity tests).
    pub fn first_step_logits(
        &self,
        pixel_values: &Array4<f32>,
        prompt_ids: &[u32],
    ) -> Result<Vec<f32>, CaptionError> {
        let cross_kv = self.encode_image(pixel_values)?;
        let mut state = self.state(cross_kv);
        Ok(state.forward(&[prompt_ids])?.swap_remove(0))
    }
}

/// Benchmark helpers: fixed-length decoding (random weights end captions
/// at arbitrary lengths, so `generate` alone would not time `n` tokens).
impl BlipCaptioner {
    fn state(&self, cross_kv: ArrayD<f32>) -> DecoderState<'_, std::sync::MutexGuard<'_, Session>> {
        DecoderState::new(
            self.decoder.lock().unwrap_or_else(|p| p.into_inner()),
            &self.decoder_path,
            cross_kv,
            self.cross_inputs.as_deref(),
            &self.manifest.blip,
        )
    }

    /// A greedy caption of exactly `tokens` new tokens (end token ignored).
    pub fn caption_forced(
        &self,
        pixel_values: &Array4<f32>,
        tokens: usize,
    ) -> Result<Vec<u32>, CaptionError> {
        self.caption_forced_batch(pixel_values, tokens)?
            .pop()
            .ok_or_else(|| CaptionError::Image("no image to caption".into()))
    }

    /// The decoder's argmax after each position of `ids` (prompt
    /// included), teacher-forced: `out[i]` is the token it would put after
    /// `ids[..=i]`, for `i >= prompt length - 1` (earlier entries: 0).
    pub fn argmax_along(
        &self,
        pixel_values: &Array4<f32>,
        ids: &[u32],
    ) -> Result<Vec<u32>, CaptionError> {
        let n = self.prompt_ids.len().min(ids.len());
        let mut state = self.state(self.encode_image(pixel_values)?);
        let mut out = vec![0; n.saturating_sub(1)];
        let mut logits = state.forward(&[&ids[..n]])?.swap_remove(0);
        out.push(crate::caption::decode::argmax(&logits));
        for &t in &ids[n..] {
            logits = state.forward(&[&[t]])?.swap_remove(0);
            out.push(crate::caption::decode::argmax(&logits));
        }
        Ok(out)
    }

    /// Mean milliseconds of one decoder step (one new token for each of
    /// the `n` images of `pixel_values`) over `tokens`-token captions,
    /// after the prefill; repeated `runs` times.
    pub fn decoder_steps(
        &self,
        pixel_values: &Array4<f32>,
        tokens: usize,
        runs: usize,
    ) -> Result<f64, CaptionError> {
        let cross_kv = self.encode_image(pixel_values)?;
        let prompts = vec![self.prompt_ids.as_slice(); pixel_values.shape()[0]];
        let mut total = 0.0;
        let mut steps = 0usize;
        for _ in 0..runs {
            let mut state = self.state(cross_kv.clone());
            let mut logits = state.forward(&prompts)?;
            let started = std::time::Instant::now();
            for _ in 1..tokens {
                let next: Vec<[u32; 1]> = logits
                    .iter()
                    .map(|l| [crate::caption::decode::argmax(l)])
                    .collect();
                let rows: Vec<&[u32]> = next.iter().map(|r| r.as_slice()).collect();
                logits = state.forward(&rows)?;
                steps += 1;
            }
            total += started.elapsed().as_secs_f64();
        }
        Ok(total * 1e3 / steps.max(1) as f64)
    }
}

impl Captioner for BlipCaptioner {
    fn preprocessor(&self) -> &ImagePreprocessor {
        &self.preprocessor
    }

    fn fingerprint(&self) -> &str {
        &self.manifest.fingerprint
    }

    fn caption(&self, rgb: &[u8], pace: &mut dyn FnMut()) -> Result<Caption, CaptionError> {
        let pixels = self.pixels(rgb)?;
        self.caption_pixels(&pixels, pace)
    }

    fn caption_batch(
        &self,
        images: &[&[u8]],
        pace: &mut dyn FnMut(),
    ) -> Result<Vec<Caption>, CaptionError> {
        let pixels = self.pixels_batch(images)?;
        self.caption_batch_with(&pixels, &self.settings, &self.prompt_ids, pace)
    }
}
