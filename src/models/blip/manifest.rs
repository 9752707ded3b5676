//! `manifest.toml` of a BLIP model directory: its files, their roles, the
//! decoder's shapes and the preprocessing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::models::ModelError;
use crate::models::manifest::{
    FileEntry, check_fingerprint, check_format_version, file_entry, fingerprint, float_list,
    read_toml, verify_files,
};
use crate::models::preprocess::{ImagePreprocessor, Resample};

/// Roles of the files of a BLIP model directory.
pub mod roles {
    /// Vision encoder (+ cross-attention keys/values).
    pub const VISION_ENCODER: &str = "vision_encoder";
    /// Text decoder with a self-attention cache.
    pub const TEXT_DECODER: &str = "text_decoder";
    /// INT8 text decoder derived from the fp32 one (`models/modeldir.py
    /// int8`); not part of the fingerprint.
    pub const TEXT_DECODER_INT8: &str = "text_decoder_int8";
    /// WordPiece `tokenizer.json`.
    pub const TOKENIZER: &str = "tokenizer";
}

/// `manifest.toml` of a BLIP directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlipManifest {
    /// Manifest format version.
    pub format_version: u32,
    /// `"blip"`.
    pub kind: String,
    /// Human name.
    pub name: String,
    /// Where the weights came from.
    pub source: String,
    /// Identity of the captioner (see [`BlipManifest::compute_fingerprint`]).
    pub fingerprint: String,
    /// Architecture and special tokens.
    pub blip: BlipSection,
    /// Image preprocessing (resize to `size`², no crop).
    pub preprocess: BlipPreprocess,
    /// Files by role.
    pub files: BTreeMap<String, FileEntry>,
}

/// `[blip]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlipSection {
    /// Input side.
    pub image_size: u32,
    /// Image tokens (1 + patches).
    pub num_image_tokens: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Decoder hidden size.
    pub hidden_size: usize,
    /// Vision encoder hidden size (`image_embeds` width).
    pub vision_hidden_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Position embeddings (longest sequence).
    pub max_positions: usize,
    /// Decoder start token (`[DEC]`).
    pub bos_token_id: u32,
    /// End of caption (`[SEP]`).
    pub sep_token_id: u32,
    /// Padding.
    pub pad_token_id: u32,
}

/// `[preprocess]` of a BLIP directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlipPreprocess {
    /// Square side both image sides are resized to.
    pub size: u32,
    /// Only `bicubic`.
    pub resample: String,
    /// Per-channel mean.
    pub mean: [f64; 3],
    /// Per-channel std.
    pub std: [f64; 3],
}

impl BlipManifest {
    /// Reads `dir/manifest.toml` and checks the files and fingerprint.
    pub fn read_verified(dir: &Path) -> Result<Self, ModelError> {
        Self::read_verified_except(dir, &[])
    }

    /// As [`BlipManifest::read_verified`], without hashing the files of the
    /// `deferred` roles (a decoder that will not be opened).
    pub fn read_verified_except(dir: &Path, deferred: &[&str]) -> Result<Self, ModelError> {
        let (m, path): (Self, _) = read_toml(dir)?;
        let bad = |message: String| ModelError::Manifest {
            path: path.clone(),
            message,
        };
        if m.kind != "blip" {
            return Err(bad(format!("kind '{}' is not a BLIP captioner", m.kind)));
        }
        check_format_version(&path, m.format_version)?;
        if m.preprocess.resample != "bicubic" {
            return Err(bad(format!(
                "preprocess.resample '{}' is not supported (expected 'bicubic')",
                m.preprocess.resample
            )));
        }
        if m.preprocess.size == 0 || m.preprocess.std.iter().any(|s| *s <= 0.0) {
            return Err(bad("preprocess needs size > 0 and std > 0".into()));
        }
        let checked: BTreeMap<String, FileEntry> = m
            .files
            .iter()
            .filter(|(role, _)| !deferred.contains(&role.as_str()))
            .map(|(role, e)| (role.clone(), e.clone()))
            .collect();
        verify_files(dir, &checked)?;
        check_fingerprint(dir, &m.fingerprint, &m.compute_fingerprint()?)?;
        Ok(m)
    }

    /// sha256 over the graphs', the tokenizer's sha256 and the
    /// preprocessing (the CLIP scheme, with `size` for the resize). The
    /// derived INT8 decoder is left out, as CLIP's INT8 encoder is.
    pub fn compute_fingerprint(&self) -> Result<String, ModelError> {
        let p = &self.preprocess;
        fingerprint(
            &self.files,
            &[roles::VISION_ENCODER, roles::TEXT_DECODER, roles::TOKENIZER],
            &format!(
                "size={}\nresample={}\nmean={}\nstd={}\n",
                p.size,
                p.resample,
                float_list(&p.mean),
                float_list(&p.std)
            ),
        )
    }

    /// The preprocessing: both sides resized to `size` (bicubic, no crop),
    /// then normalised.
    pub fn image_preprocessor(&self) -> ImagePreprocessor {
        let p = &self.preprocess;
        ImagePreprocessor {
            shortest_edge: p.size,
            crop_size: p.size,
            stretch: true,
            resample: Resample::Bicubic,
            mean: p.mean.map(|x| x as f32),
            std: p.std.map(|x| x as f32),
        }
    }

    /// The entry of a file role.
    pub fn file(&self, dir: &Path, role: &str) -> Result<&FileEntry, ModelError> {
        file_entry(&self.files, dir, role)
    }
}
