//! CLIP image and text encoders over ONNX Runtime.
//!
//! - Paper: Radford et al., *Learning Transferable Visual Models From Natural
//!   Language Supervision* (<https://arxiv.org/abs/2103.00020>).
//! - Reference: transformers `CLIPModel.get_image_features` /
//!   `get_text_features`; checkpoint `openai/clip-vit-base-patch32`.
//! - Export: `models/export.py`, ONNX opset 17, legacy exporter (initializer
//!   names kept). Outputs are the projected, *unnormalised* features, exactly
//!   what `get_*_features` return; callers normalise.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{Array2, Array4, ArrayView4, Axis, Ix2};
use ort::session::Session;
use ort::value::TensorRef;
use tokenizers::{Tokenizer, TruncationParams};

use super::manifest::{Dim, FileEntry, ModelManifest, TensorSpec, roles};
use super::preprocess::{CropResizer, ImagePreprocessor, RgbFrame};
use super::verified::VerifiedFiles;
use super::{ModelError, OrtRuntime};

/// Image encoder input: `[batch, 3, crop, crop]` float32.
pub const PIXEL_VALUES: &str = "pixel_values";
/// Image encoder output: `[batch, embed_dim]` float32.
pub const IMAGE_EMBEDS: &str = "image_embeds";
/// Text encoder input: `[batch, sequence]` int64 token ids.
pub const INPUT_IDS: &str = "input_ids";
/// Text encoder input: `[batch, sequence]` int64, 1 for real tokens.
pub const ATTENTION_MASK: &str = "attention_mask";
/// Text encoder output: `[batch, embed_dim]` float32.
pub const TEXT_EMBEDS: &str = "text_embeds";

/// CLIP's end-of-text token, also its padding token.
const END_OF_TEXT: &str = "<|endoftext|>";

/// Which image encoder file to run.
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
pub enum ImagePrecision {
    /// The fp32 export (reference numerics).
    #[default]
    Fp32,
    /// The INT8 dynamically quantized derivative (faster on CPU, approximate).
    Int8,
}

/// How to open a CLIP model directory.
#[derive(Debug, Clone)]
pub struct ClipOptions {
    /// Image encoder precision.
    pub precision: ImagePrecision,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Whether the text encoder may be used (false: image-only workers).
    /// It is opened on first use either way: a replay whose label
    /// embeddings are cached never needs its ~300 MB.
    pub load_text_encoder: bool,
    /// Cache directory whose record of verified files spares hashing files
    /// unchanged since ([`super::verified`]); `None`: hash every start.
    pub verified_files_dir: Option<PathBuf>,
}

impl Default for ClipOptions {
    fn default() -> Self {
        Self {
            precision: ImagePrecision::Fp32,
            intra_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_text_encoder: true,
            verified_files_dir: None,
        }
    }
}

/// A loaded CLIP model directory: both encoders, tokenizer, preprocessing.
///
/// Sessions sit behind mutexes so one model serves several threads; runs on
/// one session are serialised (ONNX Runtime already uses all intra threads).
pub struct ClipModel {
    dir: PathBuf,
    manifest: ModelManifest,
    preprocessor: ImagePreprocessor,
    image_path: PathBuf,
    image: Mutex<Session>,
    text: Option<TextEncoder>,
    precision: ImagePrecision,
    verified: Option<VerifiedFiles>,
}

/// The tokenizer (read at load) and the text encoder's session (opened on
/// first use).
struct TextEncoder {
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    pad_id: i64,
    session: OnceLock<TextSession>,
    /// Held while the session is opened, so two first uses open it once.
    opening: Mutex<()>,
    runtime: OrtRuntime,
    intra_threads: usize,
}

struct TextSession {
    path: PathBuf,
    session: Mutex<Session>,
}

impl std::fmt::Debug for ClipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipModel")
            .field("dir", &self.dir)
            .field("name", &self.manifest.name)
            .field("precision", &self.precision)
            .finish()
    }
}

impl ClipModel {
    /// Verifies `dir` against its manifest and opens its sessions.
    pub fn load(
        dir: &Path,
        runtime: &OrtRuntime,
        options: &ClipOptions,
    ) -> Result<Self, ModelError> {
        // The image encoder not used and the text encoder (checked when it
        // is opened) are not hashed now.
        let unused_image: &[&str] = match options.precision {
            ImagePrecision::Fp32 => &[roles::IMAGE_ENCODER_INT8],
            ImagePrecision::Int8 => &[roles::IMAGE_ENCODER, roles::IMAGE_ENCODER_DATA],
        };
        let deferred = [
            unused_image,
            &[roles::TEXT_ENCODER, roles::TEXT_ENCODER_DATA],
        ]
        .concat();
        let verified = options
            .verified_files_dir
            .as_deref()
            .map(VerifiedFiles::open);
        let manifest = ModelManifest::read_verified_except(dir, &deferred, verified.as_ref())?;
        if manifest.kind != "clip" {
            return Err(ModelError::Manifest {
                path: dir.join(super::manifest::MANIFEST_FILE),
                message: format!("kind '{}' is not a CLIP model", manifest.kind),
            });
        }
        let preprocessor = manifest.image_preprocessor(dir)?;
        let crop = preprocessor.crop_size as i64;
        let dim = manifest.clip.embed_dim as i64;

        let image_role = match options.precision {
            ImagePrecision::Fp32 => roles::IMAGE_ENCODER,
            ImagePrecision::Int8 => roles::IMAGE_ENCODER_INT8,
        };
        let (image_path, image) = open_checked(
            runtime,
            dir,
            manifest.file(dir, image_role)?,
            options.intra_threads,
            &[(
                PIXEL_VALUES,
                "float32",
                vec![None, Some(3), Some(crop), Some(crop)],
            )],
            &[(IMAGE_EMBEDS, "float32", vec![None, Some(dim)])],
        )?;

        let text = if options.load_text_encoder {
            // Listed, or the first text query would be the one to say so.
            manifest.file(dir, roles::TEXT_ENCODER)?;
            let tokenizer_path = dir.join(&manifest.file(dir, roles::TOKENIZER)?.path);
            let (tokenizer, eos) = load_tokenizer(&tokenizer_path, manifest.clip.context_length)?;
            Some(TextEncoder {
                tokenizer,
                tokenizer_path,
                pad_id: eos as i64,
                session: OnceLock::new(),
                opening: Mutex::new(()),
                runtime: runtime.clone(),
                intra_threads: options.intra_threads,
            })
        } else {
            None
        };

        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            preprocessor,
            image_path,
            image: Mutex::new(image),
            text,
            precision: options.precision,
            verified,
        })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// Identity of this model's embedding space.
    pub fn fingerprint(&self) -> &str {
        &self.manifest.fingerprint
    }

    /// Dimension of the joint embedding space.
    pub fn embed_dim(&self) -> usize {
        self.manifest.clip.embed_dim
    }

    /// Multiplier of cosine similarities (CLIP's `logit_scale.exp()`).
    pub fn logit_scale(&self) -> f32 {
        self.manifest.clip.logit_scale
    }

    /// Which image encoder runs.
    pub fn precision(&self) -> ImagePrecision {
        self.precision
    }

    /// The model's image preprocessing.
    pub fn preprocessor(&self) -> &ImagePreprocessor {
        &self.preprocessor
    }

    /// Preprocesses frames into one `[n, 3, crop, crop]` batch.
    pub fn preprocess(&self, frames: &[RgbFrame<'_>]) -> Result<Array4<f32>, ModelError> {
        let crop = self.preprocessor.crop_size as usize;
        let mut batch = Array4::<f32>::zeros((frames.len(), 3, crop, crop));
        // Frames of one size share the resize weights.
        let mut resizer = CropResizer::new(&self.preprocessor);
        for (frame, out) in frames.iter().zip(batch.axis_iter_mut(Axis(0))) {
            let rgb = resizer.resize_crop(frame)?;
            self.preprocessor.normalize_into(&rgb, out)?;
        }
        Ok(batch)
    }

    /// Image features of a preprocessed batch: `[n, embed_dim]`, unnormalised.
    pub fn get_image_features(
        &self,
        pixel_values: ArrayView4<'_, f32>,
    ) -> Result<Array2<f32>, ModelError> {
        let _span = tracing::trace_span!("clip_image", batch = pixel_values.shape()[0]).entered();
        if pixel_values.shape()[0] == 0 {
            return Ok(Array2::zeros((0, self.embed_dim())));
        }
        let err = |e: ort::Error| ModelError::Ort {
            path: self.image_path.clone(),
            message: e.to_string(),
        };
        let input = TensorRef::from_array_view(pixel_values).map_err(err)?;
        let mut session = self.image.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![PIXEL_VALUES => input])
            .map_err(err)?;
        let embeds = outputs[IMAGE_EMBEDS]
            .try_extract_array::<f32>()
            .map_err(err)?;
        embeds
            .into_dimensionality::<Ix2>()
            .map(|a| a.to_owned())
            .map_err(|e| ModelError::Ort {
                path: self.image_path.clone(),
                message: e.to_string(),
            })
    }

    /// Preprocesses and embeds frames: `[n, embed_dim]`, unnormalised.
    pub fn embed_frames(&self, frames: &[RgbFrame<'_>]) -> Result<Array2<f32>, ModelError> {
        let batch = self.preprocess(frames)?;
        self.get_image_features(batch.view())
    }

    /// Token ids (with start/end tokens, truncated to the context length).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let t = self.text_encoder()?;
        let enc = t
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer {
                path: t.tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text features: `[n, embed_dim]`, unnormalised. Texts are padded to the
    /// longest in the batch; CLIP pools at the end token, so padding does not
    /// change the result.
    pub fn get_text_features(&self, texts: &[&str]) -> Result<Array2<f32>, ModelError> {
        let _span = tracing::trace_span!("clip_text", batch = texts.len()).entered();
        let t = self.text_encoder()?;
        if texts.is_empty() {
            return Ok(Array2::zeros((0, self.embed_dim())));
        }
        let s = self.text_session(t)?;
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|s| self.tokenize(s))
            .collect::<Result<_, _>>()?;
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut input_ids = Array2::<i64>::from_elem((ids.len(), len), t.pad_id);
        let mut mask = Array2::<i64>::zeros((ids.len(), len));
        for (i, row) in ids.iter().enumerate() {
            for (j, &id) in row.iter().enumerate() {
                input_ids[[i, j]] = id as i64;
                mask[[i, j]] = 1;
            }
        }
        let err = |e: ort::Error| ModelError::Ort {
            path: s.path.clone(),
            message: e.to_string(),
        };
        let ids_in = TensorRef::from_array_view(input_ids.view()).map_err(err)?;
        let mask_in = TensorRef::from_array_view(mask.view()).map_err(err)?;
        let mut session = s.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![INPUT_IDS => ids_in, ATTENTION_MASK => mask_in])
            .map_err(err)?;
        let embeds = outputs[TEXT_EMBEDS]
            .try_extract_array::<f32>()
            .map_err(err)?;
        embeds
            .into_dimensionality::<Ix2>()
            .map(|a| a.to_owned())
            .map_err(|e| ModelError::Ort {
                path: s.path.clone(),
                message: e.to_string(),
            })
    }

    /// Whether the text encoder's session is open (it opens on first use).
    pub fn text_encoder_open(&self) -> bool {
        self.text
            .as_ref()
            .is_some_and(|t| t.session.get().is_some())
    }

    /// The text encoder's session: checked against the manifest and opened
    /// on first use.
    fn text_session<'a>(&self, t: &'a TextEncoder) -> Result<&'a TextSession, ModelError> {
        if let Some(s) = t.session.get() {
            return Ok(s);
        }
        let _opening = t.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = t.session.get() {
            return Ok(s);
        }
        self.manifest
            .verify_role(&self.dir, roles::TEXT_ENCODER, self.verified.as_ref())?;
        let (path, session) = open_checked(
            &t.runtime,
            &self.dir,
            self.manifest.file(&self.dir, roles::TEXT_ENCODER)?,
            t.intra_threads,
            &[
                (INPUT_IDS, "int64", vec![None, None]),
                (ATTENTION_MASK, "int64", vec![None, None]),
            ],
            &[(
                TEXT_EMBEDS,
                "float32",
                vec![None, Some(self.embed_dim() as i64)],
            )],
        )?;
        tracing::debug!(path = %path.display(), "text encoder opened");
        Ok(t.session.get_or_init(|| TextSession {
            path,
            session: Mutex::new(session),
        }))
    }

    fn text_encoder(&self) -> Result<&TextEncoder, ModelError> {
        self.text.as_ref().ok_or_else(|| ModelError::Manifest {
            path: self.dir.clone(),
            message: "text encoder not loaded (load_text_encoder = false)".into(),
        })
    }
}

/// Loads `tokenizer.json` with CLIP's truncation (the end token is kept).
/// Returns the tokenizer and its end-of-text id (CLIP's pad token too).
/// The trainer shares it, so both tokenise identically.
pub fn load_tokenizer(path: &Path, context_length: usize) -> Result<(Tokenizer, u32), ModelError> {
    let err = |message: String| ModelError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: context_length,
            ..Default::default()
        }))
        .map_err(|e| err(e.to_string()))?;
    tokenizer.with_padding(None);
    let eos = tokenizer
        .token_to_id(END_OF_TEXT)
        .ok_or_else(|| err(format!("no {END_OF_TEXT} token")))?;
    Ok((tokenizer, eos))
}

/// Opens the ONNX file of `entry` and checks its graph against the
/// manifest and the expected tensors; returns its path and session.
pub(crate) fn open_checked(
    runtime: &OrtRuntime,
    dir: &Path,
    entry: &FileEntry,
    intra_threads: usize,
    inputs: &[Expected<'_>],
    outputs: &[Expected<'_>],
) -> Result<(PathBuf, Session), ModelError> {
    let path = dir.join(&entry.path);
    let session = runtime.session(&path, intra_threads)?;
    check_signature(&path, entry, &session, inputs, outputs)?;
    Ok((path, session))
}

/// Expected tensor: name, dtype, dims (`None` = dynamic).
pub(crate) type Expected<'a> = (&'a str, &'a str, Vec<Option<i64>>);

/// Checks the session's graph against the manifest, and the manifest against
/// the contract this code was written for.
fn check_signature(
    path: &Path,
    entry: &FileEntry,
    session: &Session,
    inputs: &[Expected<'_>],
    outputs: &[Expected<'_>],
) -> Result<(), ModelError> {
    let fail = |message: String| ModelError::Signature {
        path: path.to_path_buf(),
        message,
    };
    let check = |kind: &str,
                 specs: &[TensorSpec],
                 outlets: &[ort::value::Outlet],
                 expected: &[Expected<'_>]| {
        for (name, dtype, dims) in expected {
            let spec = specs
                .iter()
                .find(|s| s.name == *name)
                .ok_or_else(|| fail(format!("manifest lists no {kind} '{name}'")))?;
            let outlet = outlets.iter().find(|o| o.name() == *name).ok_or_else(|| {
                fail(format!(
                    "graph has no {kind} '{name}' (manifest and file disagree)"
                ))
            })?;
            let graph_shape: Vec<i64> = outlet
                .dtype()
                .tensor_shape()
                .map(|s| s.to_vec())
                .unwrap_or_default();
            let manifest_shape: Vec<Option<i64>> = spec
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Some(*n),
                    Dim::Symbolic(_) => None,
                })
                .collect();
            if spec.dtype != *dtype {
                return Err(fail(format!(
                    "{kind} '{name}' is {} in the manifest, expected {dtype}",
                    spec.dtype
                )));
            }
            let graph_dtype = outlet
                .dtype()
                .tensor_type()
                .map(|t| t.to_string())
                .unwrap_or_default();
            let dtype_short = if *dtype == "float32" { "f32" } else { "i64" };
            if graph_dtype != dtype_short {
                return Err(fail(format!(
                    "{kind} '{name}' is {graph_dtype} in the graph, expected {dtype}"
                )));
            }
            let graph_dims: Vec<Option<i64>> =
                graph_shape.iter().map(|&d| (d >= 0).then_some(d)).collect();
            if graph_dims != manifest_shape {
                return Err(fail(format!(
                    "{kind} '{name}' has shape {} in the graph but {} in the manifest",
                    fmt_dims(&graph_dims),
                    fmt_dims(&manifest_shape)
                )));
            }
            if manifest_shape.len() != dims.len()
                || manifest_shape
                    .iter()
                    .zip(dims)
                    .any(|(m, e)| e.is_some() && m != e)
            {
                return Err(fail(format!(
                    "{kind} '{name}' has shape {}, expected {}",
                    fmt_dims(&manifest_shape),
                    fmt_dims(dims)
                )));
            }
        }
        Ok(())
    };
    check("input", &entry.inputs, session.inputs(), inputs)?;
    check("output", &entry.outputs, session.outputs(), outputs)
}

fn fmt_dims(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".into(), |n| n.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}
