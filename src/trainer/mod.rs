//! Offline LoRA fine-tuning of CLIP (feature `trainer`, binary `trainer`).
//!
//! The base weights are the initializers of our own ONNX exports
//! (`models/export.py` keeps the Hugging Face names, e.g.
//! `vision_model.encoder.layers.0.self_attn.q_proj.weight`), so the trainer
//! needs no PyTorch checkpoint: [`clip`] rebuilds the CLIP towers in candle
//! from them, [`lora`] adds low-rank adapters (PEFT names) on the attention
//! projections, [`train`] fits them with a symmetric InfoNCE loss, and
//! [`merge`] folds them back into the initializers and writes a model
//! directory the daemon loads as it is (new sha256s and fingerprint).
//! [`fusion`] trains the rig fusion model on frozen CLIP embeddings;
//! [`blip`] fine-tunes a BLIP captioner the same way (candle BLIP from the
//! ONNX initializers, teacher-forced captioning loss, merge).
//!
//! Usage:
//! ```text
//! trainer inspect --model models/clip-tiny
//! trainer train --model models/clip-tiny --data data/train.jsonl --out runs/a
//! trainer eval --model models/clip-tiny --adapter runs/a/adapter \
//!     --data data/val.jsonl --labels config/labels.toml --report runs/a/eval.json
//! trainer merge --model models/clip-tiny --adapter runs/a/adapter --out models/clip-tiny-ft
//! trainer train-fusion --clip models/clip-tiny --fusion models/fusion-tiny \
//!     --data rigs.jsonl --out runs/f                 # see [`fusion`]
//! trainer train-captioner --model models/blip-tiny --data data/train.jsonl \
//!     --out runs/c --merge                            # see [`blip`]
//! trainer merge-captioner --model models/blip-tiny --adapter runs/c/adapter \
//!     --out models/blip-tiny-ft
//! ```

pub mod autocaption;
pub mod bdd100k;
pub mod bench;
pub mod blip;
pub mod cider;
pub mod clip;
pub mod config;
pub mod dataset;
pub mod eval;
pub mod external;
pub mod fusion;
pub mod lora;
pub mod merge;
pub mod optim;
pub mod report;
pub use crate::rng;
pub mod tokens;
pub mod train;

use std::path::PathBuf;

use crate::models::ModelError;

/// Errors of the trainer. Variants about files name the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// Reading or writing a file failed.
    #[error("'{path}': {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An ONNX file is unreadable or lacks an expected initializer.
    #[error("'{path}': {message}")]
    Onnx {
        /// The ONNX file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A dataset file or one of its records is invalid.
    #[error("{}: {message}", fmt_location(path, *line))]
    Dataset {
        /// The manifest, label file or image.
        path: PathBuf,
        /// 1-based line of the record, where there is one.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An adapter or checkpoint directory is unreadable or inconsistent.
    #[error("'{path}': {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer failed.
    #[error("'{path}': tokenizer: {message}")]
    Tokenizer {
        /// `tokenizer.json`.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A tensor operation failed (a shape bug or an out-of-memory).
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The model directory is invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn fmt_location(path: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("'{}' line {line}", path.display()),
        None => format!("'{}'", path.display()),
    }
}

impl TrainerError {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
