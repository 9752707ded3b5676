//! A fusion model directory (`models/export.py --fusion`): `fusion.onnx`,
//! `config.json` and `manifest.toml` (`kind = "fusion"`). Read and
//! fingerprinted with the daemon's [`FusionManifest`]; rewritten as a TOML
//! table (as `trainer merge` rewrites a CLIP manifest), so fields the
//! trainer does not use pass through unchanged.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::super::TrainerError;
use crate::fuse::FusionManifest;
use crate::fuse::manifest::roles;
use crate::models::ModelError;
use crate::models::manifest::{MANIFEST_FILE, sha256_file};

/// The sizes the candle model is built with (`config.json`'s
/// `hidden_size`, `num_roles`, `num_hidden_layers`, `num_attention_heads`,
/// `intermediate_size`, `roles`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FusionConfig {
    /// Embedding width D (CLIP's joint space).
    pub d: usize,
    /// Number of view roles V.
    pub v: usize,
    /// Transformer layers L.
    pub l: usize,
    /// Attention heads H.
    pub h: usize,
    /// Feed-forward width F.
    pub f: usize,
    /// View roles in model order (`front`, `front_left`, ...).
    pub roles: Vec<String>,
}

impl From<&crate::fuse::manifest::FusionConfig> for FusionConfig {
    fn from(c: &crate::fuse::manifest::FusionConfig) -> Self {
        Self {
            d: c.hidden_size,
            v: c.num_roles,
            l: c.num_hidden_layers,
            h: c.num_attention_heads,
            f: c.intermediate_size,
            roles: c.roles.clone(),
        }
    }
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
    /// Its manifest.
    pub manifest: FusionManifest,
    /// Its manifest as written.
    pub table: toml::Table,
    /// Sizes and roles.
    pub config: FusionConfig,
    /// `fusion.onnx`.
    pub onnx: PathBuf,
}

fn manifest_error(dir: &Path, message: String) -> TrainerError {
    TrainerError::Model(ModelError::Manifest {
        path: dir.join(MANIFEST_FILE),
        message,
    })
}

/// The fingerprint of a manifest table, by the daemon's rule
/// ([`FusionManifest::compute_fingerprint`]).
fn compute_fingerprint(dir: &Path, table: &toml::Table) -> Result<String, TrainerError> {
    let m: FusionManifest = table
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| manifest_error(dir, e.to_string()))?;
    Ok(m.compute_fingerprint()?)
}

impl FusionDir {
    /// Reads and verifies `dir` as the daemon does (files, fingerprint,
    /// `config.json` against the manifest).
    pub fn open(dir: &Path) -> Result<Self, TrainerError> {
        let (manifest, config) = FusionManifest::read_verified(dir, None)?;
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainerError::io(&path, e))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| manifest_error(dir, e.to_string()))?;
        let config = FusionConfig::from(&config);
        config
            .validate()
            .map_err(|m| manifest_error(dir, format!("config.json: {m}")))?;
        Ok(Self {
            onnx: dir.join(&manifest.file(dir, roles::FUSION)?.path),
            dir: dir.to_path_buf(),
            manifest,
            table,
            config,
        })
    }

    /// `[fusion] clip_fingerprint`: the CLIP space it was made for.
    pub fn clip_fingerprint(&self) -> &str {
        &self.manifest.fusion.clip_fingerprint
    }

    /// Refuses a fusion model made for another CLIP space (the daemon's
    /// error, naming both fingerprints).
    pub fn check_clip(&self, clip_fingerprint: &str) -> Result<(), TrainerError> {
        let expected = self.clip_fingerprint();
        if expected.eq_ignore_ascii_case(clip_fingerprint) {
            return Ok(());
        }
        Err(ModelError::ClipMismatch {
            dir: self.dir.clone(),
            expected: expected.to_string(),
            actual: clip_fingerprint.to_string(),
        }
        .into())
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
    let mut changed = Vec::new();
    for (role, entry) in &base.manifest.files {
        let src = base.dir.join(&entry.path);
        let dst = out_dir.join(&entry.path);
        if role == roles::FUSION {
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
