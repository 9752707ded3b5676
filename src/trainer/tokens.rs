//! CLIP tokenisation for the trainer: the model directory's `tokenizer.json`,
//! truncated to the context length like [`crate::models::ClipModel`], rows
//! padded with the end-of-text token (the pooling position is the first one,
//! so padding changes nothing).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::TrainerError;
use crate::models::ModelManifest;
use crate::models::clip::load_tokenizer;
use crate::models::manifest::roles;

/// A model directory's tokenizer.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    eos: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` of a model directory.
    pub fn from_model_dir(dir: &Path, manifest: &ModelManifest) -> Result<Self, TrainerError> {
        let path = dir.join(&manifest.file(dir, roles::TOKENIZER)?.path);
        let (tokenizer, eos) = load_tokenizer(&path, manifest.clip.context_length)?;
        Ok(Self {
            tokenizer,
            path,
            eos,
        })
    }

    /// Token ids of one text, with start and end tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TrainerError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| TrainerError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `[n, longest]` u32 ids of pre-tokenised rows, padded with end-of-text.
    pub fn batch(&self, rows: &[&[u32]], device: &Device) -> Result<Tensor, TrainerError> {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
        let mut flat = Vec::with_capacity(rows.len() * len);
        for row in rows {
            flat.extend_from_slice(row);
            flat.extend(std::iter::repeat_n(self.eos, len - row.len()));
        }
        Ok(Tensor::from_vec(flat, (rows.len(), len), device)?)
    }

    /// Tokenises and batches texts.
    pub fn batch_texts(&self, texts: &[&str], device: &Device) -> Result<Tensor, TrainerError> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<_, _>>()?;
        let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        self.batch(&rows, device)
    }
}
