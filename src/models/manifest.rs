//! `manifest.toml`: what a model directory contains, and its verification.
//!
//! `models/export.py` writes the manifest; the daemon refuses a directory
//! whose files are missing, differ from their recorded sha256, or whose
//! recorded fingerprint does not match the files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ModelError;
use super::preprocess::{ImagePreprocessor, Resample};
use super::verified::VerifiedFiles;

/// File name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The manifest format this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// Roles of the files a CLIP model directory holds.
pub mod roles {
    /// fp32 image encoder (source of truth, names kept).
    pub const IMAGE_ENCODER: &str = "image_encoder";
    /// INT8 image encoder derived from the fp32 one.
    pub const IMAGE_ENCODER_INT8: &str = "image_encoder_int8";
    /// fp32 text encoder.
    pub const TEXT_ENCODER: &str = "text_encoder";
    /// `tokenizer.json` for the `tokenizers` crate.
    pub const TOKENIZER: &str = "tokenizer";
    /// Weights of the fp32 image encoder, where they are ONNX external data
    /// (`image_encoder.onnx.data`: ORT then holds them once, not twice).
    pub const IMAGE_ENCODER_DATA: &str = "image_encoder_data";
    /// Weights of the fp32 text encoder, where they are external data.
    pub const TEXT_ENCODER_DATA: &str = "text_encoder_data";

    /// The external weights' role of an encoder's role.
    pub fn data_of(role: &str) -> Option<&'static str> {
        match role {
            IMAGE_ENCODER => Some(IMAGE_ENCODER_DATA),
            TEXT_ENCODER => Some(TEXT_ENCODER_DATA),
            _ => None,
        }
    }
}

/// The parsed `manifest.toml` of a model directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Manifest format version (see [`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Model family; `"clip"` for now.
    pub kind: String,
    /// Human name, e.g. `clip-tiny`.
    pub name: String,
    /// Where the weights came from (checkpoint name or "random ...").
    pub source: String,
    /// Identity of the embedding space (see [`ModelManifest::compute_fingerprint`]).
    pub fingerprint: String,
    /// CLIP-specific settings.
    pub clip: ClipSection,
    /// Image preprocessing contract.
    pub preprocess: PreprocessSection,
    /// Files by role.
    pub files: BTreeMap<String, FileEntry>,
}

/// `[clip]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipSection {
    /// Dimension of the joint embedding space.
    pub embed_dim: usize,
    /// `exp(logit_scale)` of the checkpoint: multiplies cosine similarities.
    pub logit_scale: f32,
    /// Maximum token sequence length of the text encoder.
    pub context_length: usize,
}

/// `[preprocess]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    /// Shorter side after resizing.
    pub shortest_edge: u32,
    /// Square crop side.
    pub crop_size: u32,
    /// Resampling filter name; only `"bicubic"` is supported.
    pub resample: String,
    /// Per-channel mean (f64: the fingerprint formats the values as written).
    pub mean: [f64; 3],
    /// Per-channel std.
    pub std: [f64; 3],
}

/// One file of the directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the model directory.
    pub path: String,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
    /// ONNX graph inputs (ONNX files only).
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    /// ONNX graph outputs (ONNX files only).
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
}

/// Name, element type and shape of an ONNX input or output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type, e.g. `float32`, `int64`.
    pub dtype: String,
    /// Dimensions: a number, or a symbolic name for a dynamic axis.
    pub shape: Vec<Dim>,
}

/// A tensor dimension: fixed or symbolic (dynamic).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Dim {
    /// Fixed size.
    Fixed(i64),
    /// Dynamic axis with this name.
    Symbolic(String),
}

impl ModelManifest {
    /// Reads and parses `dir/manifest.toml` (no file checks).
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let (manifest, path): (Self, _) = read_toml(dir)?;
        check_format_version(&path, manifest.format_version)?;
        Ok(manifest)
    }

    /// Reads the manifest and checks every listed file: present, sha256
    /// equal, and a fingerprint that matches the files.
    pub fn read_verified(dir: &Path) -> Result<Self, ModelError> {
        Self::read_verified_except(dir, &[], None)
    }

    /// As [`ModelManifest::read_verified`], but leaves the files of the
    /// `deferred` roles unread: large encoders this run may never open
    /// (hashing a ViT-B/32 directory's ~700 MB took ~3 s of every start).
    /// Check one with [`ModelManifest::verify_role`] before opening it.
    /// Files in `verified` unchanged since they were hashed are not hashed
    /// again.
    pub fn read_verified_except(
        dir: &Path,
        deferred: &[&str],
        verified: Option<&VerifiedFiles>,
    ) -> Result<Self, ModelError> {
        let manifest = Self::read(dir)?;
        for (role, entry) in &manifest.files {
            if !deferred.contains(&role.as_str()) {
                verify_file(dir, role, entry, verified)?;
            }
        }
        check_fingerprint(dir, &manifest.fingerprint, &manifest.compute_fingerprint()?)?;
        Ok(manifest)
    }

    /// Checks the file of one role, and its external weights where it has
    /// them: present and sha256 equal.
    pub fn verify_role(
        &self,
        dir: &Path,
        role: &str,
        verified: Option<&VerifiedFiles>,
    ) -> Result<(), ModelError> {
        verify_file(dir, role, self.file(dir, role)?, verified)?;
        if let Some(data) = roles::data_of(role)
            && let Some(entry) = self.files.get(data)
        {
            verify_file(dir, data, entry, verified)?;
        }
        Ok(())
    }

    /// The entry for a file role, or an error naming the manifest.
    pub fn file(&self, dir: &Path, role: &str) -> Result<&FileEntry, ModelError> {
        file_entry(&self.files, dir, role)
    }

    /// Fingerprint of the embedding space: sha256 over the fp32 encoders', the
    /// tokenizer's sha256 (then the encoders' external weights, where they
    /// have them) and the preprocessing settings. Derived files (INT8) are
    /// left out on purpose. Mirrors `fingerprint()` in `models/modeldir.py`.
    pub fn compute_fingerprint(&self) -> Result<String, ModelError> {
        let p = &self.preprocess;
        let mut covered = vec![roles::IMAGE_ENCODER, roles::TEXT_ENCODER, roles::TOKENIZER];
        covered.extend(
            [roles::IMAGE_ENCODER_DATA, roles::TEXT_ENCODER_DATA]
                .into_iter()
                .filter(|r| self.files.contains_key(*r)),
        );
        fingerprint(
            &self.files,
            &covered,
            &format!(
                "shortest_edge={}\ncrop_size={}\nresample={}\nmean={}\nstd={}\n",
                p.shortest_edge,
                p.crop_size,
                p.resample,
                float_list(&p.mean),
                float_list(&p.std)
            ),
        )
    }

    /// The image preprocessing this model was trained with.
    pub fn image_preprocessor(&self, dir: &Path) -> Result<ImagePreprocessor, ModelError> {
        let p = &self.preprocess;
        let resample = match p.resample.as_str() {
            "bicubic" => Resample::Bicubic,
            other => {
                return Err(ModelError::Manifest {
                    path: dir.join(MANIFEST_FILE),
                    message: format!(
                        "preprocess.resample '{other}' is not supported (expected 'bicubic')"
                    ),
                });
            }
        };
        if p.crop_size == 0 || p.shortest_edge < p.crop_size || p.std.iter().any(|s| *s <= 0.0) {
            return Err(ModelError::Manifest {
                path: dir.join(MANIFEST_FILE),
                message: "preprocess needs crop_size > 0, shortest_edge >= crop_size and std > 0"
                    .into(),
            });
        }
        Ok(ImagePreprocessor {
            shortest_edge: p.shortest_edge,
            crop_size: p.crop_size,
            stretch: false,
            resample,
            mean: p.mean.map(|x| x as f32),
            std: p.std.map(|x| x as f32),
        })
    }
}

/// Reads `dir/manifest.toml` as `T`; returns it and the manifest's path.
/// A missing directory, an unreadable file and invalid TOML are errors
/// naming them.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Result<(T, PathBuf), ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::DirMissing {
            dir: dir.to_path_buf(),
        });
    }
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Manifest {
        path: path.clone(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "file not found".into()
        } else {
            e.to_string()
        },
    })?;
    let value = toml::from_str(&text).map_err(|e| ModelError::Manifest {
        path: path.clone(),
        message: one_line(&e.to_string()),
    })?;
    Ok((value, path))
}

/// Refuses a manifest of another format version.
pub(crate) fn check_format_version(path: &Path, version: u32) -> Result<(), ModelError> {
    if version == FORMAT_VERSION {
        return Ok(());
    }
    Err(ModelError::Manifest {
        path: path.to_path_buf(),
        message: format!("format_version {version} is not supported (expected {FORMAT_VERSION})"),
    })
}

/// The entry for a file role, or an error naming the manifest.
pub(crate) fn file_entry<'a>(
    files: &'a BTreeMap<String, FileEntry>,
    dir: &Path,
    role: &str,
) -> Result<&'a FileEntry, ModelError> {
    files.get(role).ok_or_else(|| ModelError::Manifest {
        path: dir.join(MANIFEST_FILE),
        message: format!("no [files.{role}] entry"),
    })
}

/// A model directory's fingerprint: sha256 over `role=sha256` lines of the
/// files that define the model, then its preprocessing lines. Mirrors
/// `fingerprint()` in `models/export.py` and `models/blip.py`.
pub(crate) fn fingerprint(
    files: &BTreeMap<String, FileEntry>,
    roles: &[&str],
    preprocess: &str,
) -> Result<String, ModelError> {
    let mut h = Sha256::new();
    for role in roles {
        let entry = file_entry(files, Path::new(""), role)?;
        h.update(format!("{role}={}\n", entry.sha256.to_ascii_lowercase()));
    }
    h.update(preprocess);
    Ok(hex::encode(h.finalize()))
}

/// Per-channel values as the fingerprint writes them (`%.8f`, commas).
pub(crate) fn float_list(v: &[f64; 3]) -> String {
    v.iter()
        .map(|x| format!("{x:.8}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Refuses a manifest whose recorded fingerprint is not its files'.
pub(crate) fn check_fingerprint(
    dir: &Path,
    recorded: &str,
    computed: &str,
) -> Result<(), ModelError> {
    if recorded == computed {
        return Ok(());
    }
    Err(ModelError::Manifest {
        path: dir.join(MANIFEST_FILE),
        message: format!("fingerprint {recorded} does not match its files ({computed})"),
    })
}

/// Checks that every listed file is present and matches its sha256.
pub fn verify_files(dir: &Path, files: &BTreeMap<String, FileEntry>) -> Result<(), ModelError> {
    verify_files_with(dir, files, None)
}

/// As [`verify_files`]; files in `verified` unchanged since they were
/// hashed are not hashed again.
pub fn verify_files_with(
    dir: &Path,
    files: &BTreeMap<String, FileEntry>,
    verified: Option<&VerifiedFiles>,
) -> Result<(), ModelError> {
    for (role, entry) in files {
        verify_file(dir, role, entry, verified)?;
    }
    Ok(())
}

fn verify_file(
    dir: &Path,
    role: &str,
    entry: &FileEntry,
    verified: Option<&VerifiedFiles>,
) -> Result<(), ModelError> {
    let path = dir.join(&entry.path);
    if verified.is_some_and(|v| v.is_verified(&path, &entry.sha256)) {
        return Ok(());
    }
    let actual = sha256_file(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::FileMissing {
                dir: dir.to_path_buf(),
                role: role.to_string(),
                path: path.clone(),
            }
        } else {
            ModelError::Io {
                path: path.clone(),
                source: e,
            }
        }
    })?;
    if !actual.eq_ignore_ascii_case(&entry.sha256) {
        return Err(ModelError::Checksum {
            path,
            expected: entry.sha256.clone(),
            actual,
        });
    }
    if let Some(v) = verified {
        v.record(&path, &actual);
    }
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Collapses a multi-line parser message (toml's carets) into one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
