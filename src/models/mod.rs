//! Model layer: ONNX Runtime setup and the model directories roadrep runs.
//!
//! A model directory (written by `models/export.py`) holds ONNX files, a
//! `tokenizer.json`, the preprocessing settings and a `manifest.toml` with the
//! sha256 of every file. [`ClipModel::load`] (CLIP image/text encoders, in
//! [`clip`]) and [`BlipCaptioner::load`] (the BLIP captioner, in [`blip`])
//! verify the directory against
//! its manifest and the ONNX graphs against the recorded input/output names
//! and shapes before running anything.
//!
//! ONNX Runtime is loaded at run time (`ort` feature `load-dynamic`) from the
//! `onnxruntime` PyPI wheel that `make setup` installs; see [`runtime`].

pub mod blip;
pub mod clip;
pub mod manifest;
pub mod preprocess;
pub mod runtime;
pub mod verified;

use std::path::PathBuf;

pub use blip::BlipCaptioner;
pub use clip::{ClipModel, ClipOptions, ImagePrecision};
pub use manifest::ModelManifest;
pub use preprocess::{ImagePreprocessor, RgbFrame};
pub use runtime::OrtRuntime;

/// Errors of the model layer. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No onnxruntime library path was configured or found.
    #[error(
        "no onnxruntime library found: set ORT_DYLIB_PATH or [models] ort_library \
         (`make setup` installs it into .venv/ort/libonnxruntime.so)"
    )]
    RuntimeNotConfigured,
    /// The onnxruntime library could not be loaded.
    #[error("cannot load the onnxruntime library '{path}': {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },
    /// The model directory does not exist.
    #[error("model directory '{dir}' does not exist")]
    DirMissing { dir: PathBuf },
    /// `manifest.toml` is missing, unreadable or invalid.
    #[error("'{path}': {message}")]
    Manifest { path: PathBuf, message: String },
    /// A file listed in the manifest is missing.
    #[error("model directory '{dir}': {role} file '{path}' is missing")]
    FileMissing {
        dir: PathBuf,
        role: String,
        path: PathBuf,
    },
    /// A file does not match its recorded sha256.
    #[error(
        "'{path}' does not match its manifest (sha256 {actual}, expected {expected}): corrupt or modified, re-export it"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// An ONNX graph's inputs/outputs differ from the manifest.
    #[error("'{path}': {message}")]
    Signature { path: PathBuf, message: String },
    /// Reading a file failed.
    #[error("'{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// ONNX Runtime refused to load or run a model.
    #[error("'{path}': onnxruntime: {message}")]
    Ort { path: PathBuf, message: String },
    /// A rig fusion model made for another CLIP model than the one in use:
    /// its output would lie in another embedding space.
    #[error(
        "fusion model '{dir}' was made for CLIP {expected}, not for the CLIP model in use ({actual}): \
         export or train a fusion model for this CLIP"
    )]
    ClipMismatch {
        dir: PathBuf,
        expected: String,
        actual: String,
    },
    /// Input a model cannot run on (wrong dimension, no view present, ...).
    #[error("'{path}': {message}")]
    Input { path: PathBuf, message: String },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("'{path}': tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// An image could not be preprocessed.
    #[error("{0}")]
    Preprocess(#[from] preprocess::PreprocessError),
}
