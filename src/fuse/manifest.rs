//! `manifest.toml` and `config.json` of a fusion model directory.
//!
//! Written by `models/export.py --fusion` (models/fusion.py). The manifest
//! pins the files (sha256), the graph's tensors, the camera roles in slot
//! order and the fingerprint of the CLIP model whose embeddings it fuses;
//! `config.json` holds the architecture the trainer builds, and must agree
//! with the manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::models::ModelError;
use crate::models::manifest::{
    FileEntry, check_fingerprint, check_format_version, file_entry, fingerprint, read_toml,
    verify_files_with,
};
use crate::models::verified::VerifiedFiles;

/// The `kind` of a fusion model directory.
pub const KIND: &str = "fusion";

/// Roles of the files of a fusion model directory.
pub mod roles {
    /// `fusion.onnx`: view embeddings + presence mask -> fused embedding.
    pub const FUSION: &str = "fusion";
    /// `config.json`: the architecture (HF-style names).
    pub const CONFIG: &str = "config";
}

/// `manifest.toml` of a fusion directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionManifest {
    /// Manifest format version.
    pub format_version: u32,
    /// `"fusion"`.
    pub kind: String,
    /// Human name.
    pub name: String,
    /// Where the weights came from.
    pub source: String,
    /// Identity of the fusion model (see [`FusionManifest::compute_fingerprint`]).
    pub fingerprint: String,
    /// Roles, dimensions and the CLIP it was made for.
    pub fusion: FusionSection,
    /// Files by role.
    pub files: BTreeMap<String, FileEntry>,
}

/// `[fusion]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionSection {
    /// Dimension of the CLIP embeddings in and of the fused embedding out.
    pub embed_dim: usize,
    /// Camera roles in model slot order.
    pub roles: Vec<String>,
    /// Fingerprint of the CLIP model directory whose image embeddings it fuses.
    pub clip_fingerprint: String,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
}

/// `config.json`: the architecture. Unknown keys are allowed (HF configs
/// grow); the ones below must agree with the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct FusionConfig {
    /// `"rig_fusion"`.
    pub model_type: String,
    /// D: embedding and model width.
    pub hidden_size: usize,
    /// L: transformer layers.
    pub num_hidden_layers: usize,
    /// H: attention heads.
    pub num_attention_heads: usize,
    /// F: MLP width.
    pub intermediate_size: usize,
    /// V: role slots.
    pub num_roles: usize,
    /// Role names in slot order.
    pub roles: Vec<String>,
    /// LayerNorm epsilon (1e-5).
    pub layer_norm_eps: f64,
}

impl FusionManifest {
    /// Reads `dir/manifest.toml`, checks every file (sha256; files in
    /// `verified` unchanged since they were hashed are not hashed again),
    /// the fingerprint, and that `config.json` agrees with the manifest.
    pub fn read_verified(
        dir: &Path,
        verified: Option<&VerifiedFiles>,
    ) -> Result<(Self, FusionConfig), ModelError> {
        let (m, path): (Self, _) = read_toml(dir)?;
        let bad = |message: String| ModelError::Manifest {
            path: path.clone(),
            message,
        };
        if m.kind != KIND {
            return Err(bad(format!("kind '{}' is not a fusion model", m.kind)));
        }
        check_format_version(&path, m.format_version)?;
        let f = &m.fusion;
        if f.embed_dim == 0 || f.roles.is_empty() || f.clip_fingerprint.is_empty() {
            return Err(bad(
                "fusion needs embed_dim > 0, at least one role and a clip_fingerprint".into(),
            ));
        }
        if let Some(role) = duplicate(&f.roles) {
            return Err(bad(format!("fusion.roles lists '{role}' twice")));
        }
        verify_files_with(dir, &m.files, verified)?;
        check_fingerprint(dir, &m.fingerprint, &m.compute_fingerprint()?)?;
        let config = m.read_config(dir)?;
        Ok((m, config))
    }

    /// sha256 over the graph's and the config's sha256 (`role=sha256`
    /// lines, the CLIP scheme without preprocessing). Mirrors
    /// `write_manifest(..., preprocess=None, ...)` in `models/modeldir.py`.
    pub fn compute_fingerprint(&self) -> Result<String, ModelError> {
        fingerprint(&self.files, &[roles::FUSION, roles::CONFIG], "")
    }

    /// The entry of a file role.
    pub fn file(&self, dir: &Path, role: &str) -> Result<&FileEntry, ModelError> {
        file_entry(&self.files, dir, role)
    }

    /// Reads `config.json` (already verified) and checks it against `[fusion]`.
    fn read_config(&self, dir: &Path) -> Result<FusionConfig, ModelError> {
        let path: PathBuf = dir.join(&self.file(dir, roles::CONFIG)?.path);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::Io {
            path: path.clone(),
            source: e,
        })?;
        let bad = |message: String| ModelError::Manifest {
            path: path.clone(),
            message,
        };
        let c: FusionConfig =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid: {e}")))?;
        let f = &self.fusion;
        let mismatch = if c.model_type != "rig_fusion" {
            Some(format!("model_type '{}' is not rig_fusion", c.model_type))
        } else if c.hidden_size != f.embed_dim {
            Some(format!(
                "hidden_size {} but the manifest's embed_dim is {}",
                c.hidden_size, f.embed_dim
            ))
        } else if c.roles != f.roles || c.num_roles != f.roles.len() {
            Some(format!(
                "roles {:?} (num_roles {}) but the manifest's are {:?}",
                c.roles, c.num_roles, f.roles
            ))
        } else if c.num_hidden_layers != f.layers || c.num_attention_heads != f.heads {
            Some(format!(
                "{} layers, {} heads but the manifest says {}, {}",
                c.num_hidden_layers, c.num_attention_heads, f.layers, f.heads
            ))
        } else {
            None
        };
        match mismatch {
            Some(m) => Err(bad(m)),
            None => Ok(c),
        }
    }
}

fn duplicate(roles: &[String]) -> Option<&str> {
    roles
        .iter()
        .enumerate()
        .find(|(i, r)| roles[..*i].contains(r))
        .map(|(_, r)| r.as_str())
}
