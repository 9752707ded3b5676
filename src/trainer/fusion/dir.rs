//! A fusion model directory (`models/export.py --fusion`): `fusion.onnx`,
//! `config.json` (sizes and roles) and `manifest.toml` (`kind = "fusion"`,
//! `[fusion]` with `embed_dim`, `roles`, `clip_fingerprint`, `layers`,
//! `heads`; `[files.fusion]`, `[files.config]`).
//!
//! The manifest is read as a TOML table, not a typed struct, so fields the
//! trainer does not use pass through a rewrite unchanged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::TrainerError;
use crate::models::ModelError;
use crate::models::manifest::{FileEntry, MANIFEST_FILE, sha256_file, verify_files};

/// Manifest role of `fusion.onnx`.
pub const FUSION_ROLE: &str = "fusion";
/// Manifest role of `config.json`.
pub const CONFIG_ROLE: &str = "config";
/// The roles a fusion fingerprint covers, in order.
const FINGERPRINT_ROLES: [&str; 2] = [FUSION_ROLE, CONFIG_ROLE];

/// `config.json` of a fusion directory, in `models/fusion.py`'s names
/// (`D, V, L, H, F` are accepted too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionConfig {
    /// Embedding width (CLIP's joint space).
    #[serde(rename = "hidden_size", alias = "D")]
    pub d: usize,
    /// Number of view roles.
    #[serde(rename = "num_roles", alias = "V")]
    pub v: usize,
    /// Transformer layers.
    #[serde(rename = "num_hidden_layers", alias = "L")]
    pub l: usize,
    /// Attention heads.
    #[serde(rename = "num_attention_heads", alias = "H")]
    pub h: usize,
    /// Feed-forward width.
    #[serde(rename = "intermediate_size", alias = "F")]
    pub f: usize,
    /// View roles in model order (`front`, `front_left`, ...).
    pub roles: Vec<String>,
}

impl FusionConfig {
    /// The sizes of `models/fusion-tiny` with the six standard roles.
    pub fn tiny() -> Self {
        Self {
            d: 32,
            v: 6,
            l: 1,
            h: 2,
            f: 64,
            roles: [
                "front",
                "front_left",
                "front_right",
                "back",
                "back_left",
                "back_right",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    /// Refuses sizes the forward pass cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        if self.d == 0 || self.h == 0 || !self.d.is_multiple_of(self.h) {
            return Err(format!(
                "D={} must be a positive multiple of H={}",
                self.d, self.h
            ));
        }
        if self.v == 0 || self.roles.len() != self.v {
            return Err(format!("{} roles for V={}", self.roles.len(), self.v));
        }
        Ok(())
    }

    /// Index of `role` in model order.
    pub fn role_index(&self, role: &str) -> Option<usize> {
        self.roles.iter().position(|r| r == role)
    }
}

/// A verified fusion directory.
#[derive(Debug, Clone)]
pub struct FusionDir {
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest as written.
    pub table: toml::Table,
    /// Sizes and roles.
    pub config: FusionConfig,
    /// `fusion.onnx`.
    pub onnx: PathBuf,
    /// `[fusion] clip_fingerprint`: the CLIP space it was built for.
    pub clip_fingerprint: String,
    /// `fingerprint` of the manifest.
    pub fingerprint: String,
}

fn manifest_error(dir: &Path, message: String) -> TrainerError {
    TrainerError::Model(ModelError::Manifest {
        path: dir.join(MANIFEST_FILE),
        message,
    })
}

fn files_of(
    dir: &Path,
    table: &toml::Table,
) -> Result<std::collections::BTreeMap<String, FileEntry>, TrainerError> {
    let files = table
        .get("files")
        .cloned()
        .ok_or_else(|| manifest_error(dir, "no [files] table".into()))?;
    files
        .try_into()
        .map_err(|e: toml::de::Error| manifest_error(dir, format!("[files]: {e}")))
}

/// The fingerprint of a fusion manifest: sha256 over the `role=sha256`
/// lines of `fusion` and `config` (`models/modeldir.py`'s scheme; a model
/// that takes no images has no preprocessing lines).
pub fn compute_fingerprint(dir: &Path, table: &toml::Table) -> Result<String, TrainerError> {
    use sha2::{Digest, Sha256};
    let files = files_of(dir, table)?;
    let mut h = Sha256::new();
    for role in FINGERPRINT_ROLES {
        let entry = files
            .get(role)
            .ok_or_else(|| manifest_error(dir, format!("no [files.{role}] entry")))?;
        h.update(format!("{role}={}\n", entry.sha256.to_ascii_lowercase()));
    }
    Ok(hex::encode(h.finalize()))
}

fn clip_fingerprint(dir: &Path, table: &toml::Table) -> Result<String, TrainerError> {
    table
        .get("fusion")
        .and_then(|f| f.get("clip_fingerprint"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| manifest_error(dir, "no [fusion] clip_fingerprint".into()))
}

impl FusionDir {
    /// Reads `dir/manifest.toml`, checks every file's sha256 and the
    /// fingerprint, and reads `config.json`.
    pub fn open(dir: &Path) -> Result<Self, TrainerError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainerError::io(&path, e))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| manifest_error(dir, e.to_string()))?;
        let kind = table.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind != "fusion" {
            return Err(manifest_error(
                dir,
                format!("kind '{kind}' is not a fusion model"),
            ));
        }
        let files = files_of(dir, &table)?;
        verify_files(dir, &files)?;
        let recorded = table
            .get("fingerprint")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let computed = compute_fingerprint(dir, &table)?;
        if recorded != computed {
            return Err(manifest_error(
                dir,
                format!("fingerprint {recorded} does not match its files ({computed})"),
            ));
        }
        let entry = |role: &str| {
            files
                .get(role)
                .map(|e| dir.join(&e.path))
                .ok_or_else(|| manifest_error(dir, format!("no [files.{role}] entry")))
        };
        let config_path = entry(CONFIG_ROLE)?;
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| TrainerError::io(&config_path, e))?;
        let bad_config = |message: String| TrainerError::Onnx {
            path: config_path.clone(),
            message,
        };
        let config: FusionConfig = serde_json::from_str(&text)
            .map_err(|e| bad_config(format!("not a fusion config: {e}")))?;
        config.validate().map_err(bad_config)?;
        Ok(Self {
            onnx: entry(FUSION_ROLE)?,
            clip_fingerprint: clip_fingerprint(dir, &table)?,
            fingerprint: recorded,
            dir: dir.to_path_buf(),
            table,
            config,
        })
    }

    /// Refuses a fusion model built for another CLIP space.
    pub fn check_clip(&self, clip_fingerprint: &str) -> Result<(), TrainerError> {
        if self.clip_fingerprint == clip_fingerprint {
            return Ok(());
        }
        Err(TrainerError::Config(format!(
            "fusion model '{}' was built for CLIP {}, not {clip_fingerprint}",
            self.dir.display(),
            self.clip_fingerprint
        )))
    }
}

/// Writes `out_dir/manifest.toml` from `base`'s table with a new name and
/// source, the sha256s of the files now in `out_dir`, and the fingerprint.
/// Returns the fingerprint.
pub fn write_manifest(
    base: &FusionDir,
    out_dir: &Path,
    name: &str,
    source: &str,
) -> Result<String, TrainerError> {
    let mut table = base.table.clone();
    table.insert("name".into(), name.into());
    table.insert("source".into(), source.into());
    let Some(toml::Value::Table(files)) = table.get_mut("files") else {
        return Err(manifest_error(&base.dir, "no [files] table".into()));
    };
    for (_, entry) in files.iter_mut() {
        let toml::Value::Table(entry) = entry else {
            continue;
        };
        let Some(rel) = entry.get("path").and_then(|p| p.as_str()).map(String::from) else {
            continue;
        };
        let path = out_dir.join(&rel);
        let sha = sha256_file(&path).map_err(|e| TrainerError::io(&path, e))?;
        entry.insert("sha256".into(), sha.into());
    }
    let fingerprint = compute_fingerprint(out_dir, &table)?;
    table.insert("fingerprint".into(), fingerprint.clone().into());
    let out_path = out_dir.join(MANIFEST_FILE);
    let body = toml::to_string(&table).map_err(|e| manifest_error(out_dir, e.to_string()))?;
    let text = format!(
        "# roadrep model directory manifest; written by `trainer train-fusion`, do not edit by hand.\n{body}"
    );
    std::fs::write(&out_path, text).map_err(|e| TrainerError::io(&out_path, e))?;
    Ok(fingerprint)
}

/// What [`write_dir`] wrote.
#[derive(Debug, Clone)]
pub struct WrittenDir {
    /// The new fusion directory.
    pub dir: PathBuf,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Initializers that changed.
    pub changed: Vec<String>,
}

/// Writes a fusion directory with `model`'s weights: `base`'s `fusion.onnx`
/// with new initializers, its other files copied, a manifest with the new
/// sha256s and fingerprint (the same `clip_fingerprint`). Checked by
/// reading it back.
pub fn write_dir(
    base: &FusionDir,
    model: &super::RigFusion,
    out_dir: &Path,
    name: &str,
    source: &str,
) -> Result<WrittenDir, TrainerError> {
    if let (Ok(a), Ok(b)) = (base.dir.canonicalize(), out_dir.canonicalize())
        && a == b
    {
        return Err(TrainerError::Config(format!(
            "output '{}' is the base fusion directory",
            out_dir.display()
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainerError::io(out_dir, e))?;
    let files = files_of(&base.dir, &base.table)?;
    let mut changed = Vec::new();
    for (role, entry) in &files {
        let src = base.dir.join(&entry.path);
        let dst = out_dir.join(&entry.path);
        if role == FUSION_ROLE {
            changed = super::model::write_weights(model, &src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| TrainerError::io(&src, e))?;
        }
    }
    let fingerprint = write_manifest(base, out_dir, name, source)?;
    FusionDir::open(out_dir)?;
    Ok(WrittenDir {
        dir: out_dir.to_path_buf(),
        fingerprint,
        changed,
    })
}
