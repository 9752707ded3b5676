//! Folding a LoRA adapter into the base ONNX files: a new model directory.
//!
//! Each adapted weight becomes `W + (α / r) · B A`; the rest of the graph is
//! decoded and re-encoded unchanged (prost, candle-onnx's ONNX types).
//! Weights whose update is exactly zero are not touched (adding `+0.0` would
//! turn `-0.0` into `+0.0`), and a file with no changed weight is copied
//! byte for byte, because prost's re-encoding is equivalent but not
//! byte-identical. So a zero adapter leaves the model bit-identical: same
//! files, same sha256s, same fingerprint. The directory gets the base's tokenizer and
//! configs, and a manifest with the new sha256s and fingerprint, computed by
//! the same code the daemon verifies with ([`ModelManifest`]).
//!
//! The base's INT8 image encoder would silently run the old weights, so it
//! is dropped from the merged manifest. A new one is derived with
//! onnxruntime's Python quantizer, which has no Rust counterpart:
//! `trainer merge --int8` runs `models/modeldir.py int8 DIR`.

use std::path::{Path, PathBuf};

use prost::Message;

use super::TrainerError;
use super::clip::{FLOAT, float_values};
use super::lora::LoraAdapter;
use crate::models::ModelManifest;
use crate::models::manifest::{MANIFEST_FILE, roles, sha256_file};

/// What a merge wrote.
#[derive(Debug, Clone)]
pub struct MergeOutcome {
    /// The new model directory.
    pub dir: PathBuf,
    /// Its fingerprint (a new embedding space unless the adapter is zero).
    pub fingerprint: String,
    /// Initializers that changed.
    pub changed: Vec<String>,
}

/// Writes `base_dir` merged with `adapter` into `out_dir` under `name`.
pub fn merge_into(
    base_dir: &Path,
    adapter: &LoraAdapter,
    out_dir: &Path,
    name: &str,
) -> Result<MergeOutcome, TrainerError> {
    let manifest = ModelManifest::read_verified(base_dir)?;
    if same_dir(base_dir, out_dir) {
        return Err(TrainerError::Config(format!(
            "merge output '{}' is the base model directory",
            out_dir.display()
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainerError::io(out_dir, e))?;
    let mut changed = Vec::new();
    for role in [roles::IMAGE_ENCODER, roles::TEXT_ENCODER] {
        let entry = manifest.file(base_dir, role)?;
        let src = base_dir.join(&entry.path);
        let dst = out_dir.join(&entry.path);
        changed.extend(merge_onnx(&src, &dst, adapter)?);
    }
    for (role, entry) in &manifest.files {
        // The encoders and their external weights are written above; the
        // INT8 file is not valid for merged weights.
        if role == roles::IMAGE_ENCODER
            || role == roles::TEXT_ENCODER
            || role == roles::IMAGE_ENCODER_DATA
            || role == roles::TEXT_ENCODER_DATA
            || role == roles::IMAGE_ENCODER_INT8
        {
            continue;
        }
        let src = base_dir.join(&entry.path);
        let dst = out_dir.join(&entry.path);
        std::fs::copy(&src, &dst).map_err(|e| TrainerError::io(&src, e))?;
    }
    // An untrained temperature keeps the base's value verbatim: exp(ln(x))
    // may differ from x in the last bit.
    let logit_scale = match &adapter.log_logit_scale {
        Some(t) => {
            let log_scale = t.as_tensor().to_scalar::<f32>()?;
            if log_scale.to_bits() == manifest.clip.logit_scale.ln().to_bits() {
                manifest.clip.logit_scale
            } else {
                log_scale.exp()
            }
        }
        None => manifest.clip.logit_scale,
    };
    let source = format!(
        "{} ({}) + LoRA r={} alpha={} on {}",
        manifest.name,
        &manifest.fingerprint[..manifest.fingerprint.len().min(12)],
        adapter.config.r,
        adapter.config.lora_alpha,
        adapter.config.target_modules.join(",")
    );
    let fingerprint = write_manifest(
        base_dir,
        out_dir,
        (name, &source, "trainer merge"),
        |table| {
            if let Some(toml::Value::Table(clip)) = table.get_mut("clip") {
                clip.insert("logit_scale".into(), toml::Value::Float(logit_scale as f64));
            }
            if let Some(toml::Value::Table(files)) = table.get_mut("files") {
                files.remove(roles::IMAGE_ENCODER_INT8);
            }
        },
        |dir| Ok(ModelManifest::read(dir)?.compute_fingerprint()?),
    )?;
    // The daemon's own check: files, sha256s and fingerprint agree.
    ModelManifest::read_verified(out_dir)?;
    Ok(MergeOutcome {
        dir: out_dir.to_path_buf(),
        fingerprint,
        changed,
    })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Rewrites one ONNX file with merged weights; returns the changed names.
pub(crate) fn merge_onnx(
    src: &Path,
    dst: &Path,
    adapter: &LoraAdapter,
) -> Result<Vec<String>, TrainerError> {
    rewrite_initializers(src, dst, |name, base| {
        let Some(module) = name.strip_suffix(".weight") else {
            return Ok(None);
        };
        let Some(delta) = adapter.delta(module)? else {
            return Ok(None);
        };
        let delta: Vec<f32> = delta.flatten_all()?.to_vec1()?;
        if delta.len() != base.len() {
            return Err(TrainerError::Onnx {
                path: src.to_path_buf(),
                message: format!(
                    "adapter of '{module}' has {} values, the initializer {}",
                    delta.len(),
                    base.len()
                ),
            });
        }
        // A zero update leaves the weight alone: `-0.0 + 0.0` is `+0.0`.
        if delta.iter().all(|&d| d == 0.0) {
            return Ok(None);
        }
        Ok(Some(base.iter().zip(&delta).map(|(w, d)| w + d).collect()))
    })
}

/// Copies the ONNX file `src` to `dst`, replacing the float32
/// initializers for which `new_values(name, current)` returns values (of
/// the same count). Returns the names that changed.
///
/// Values equal bit for bit to the old ones are not a change, and a file
/// with no change is copied byte for byte, because prost's re-encoding is
/// equivalent but not byte-identical. Weights stay in the source's layout:
/// inline, or in the same external data files beside the graph.
pub fn rewrite_initializers(
    src: &Path,
    dst: &Path,
    mut new_values: impl FnMut(&str, &[f32]) -> Result<Option<Vec<f32>>, TrainerError>,
) -> Result<Vec<String>, TrainerError> {
    let onnx_err = |message: String| TrainerError::Onnx {
        path: src.to_path_buf(),
        message,
    };
    let mut model =
        candle_onnx::read_file(src).map_err(|e| onnx_err(format!("cannot read ONNX: {e}")))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| onnx_err("no graph".into()))?;
    let src_dir = src.parent().unwrap_or(Path::new("."));
    let external = super::external::inline(graph, src_dir).map_err(onnx_err)?;
    let mut changed = Vec::new();
    for init in graph.initializer.iter_mut() {
        if init.data_type != FLOAT {
            continue;
        }
        let base = float_values(init)
            .map_err(|m| onnx_err(format!("initializer '{}': {m}", init.name)))?;
        let Some(new) = new_values(&init.name, &base)? else {
            continue;
        };
        if new.len() != base.len() {
            return Err(onnx_err(format!(
                "initializer '{}': {} new values for {}",
                init.name,
                new.len(),
                base.len()
            )));
        }
        if new
            .iter()
            .zip(&base)
            .all(|(a, b)| a.to_bits() == b.to_bits())
        {
            continue;
        }
        let mut raw = Vec::with_capacity(new.len() * 4);
        for w in &new {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        init.raw_data = raw;
        init.float_data.clear();
        changed.push(init.name.clone());
    }
    let dst_dir = dst.parent().unwrap_or(Path::new("."));
    if changed.is_empty() {
        let mut files: Vec<&str> = external.iter().map(|(_, l)| l.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        for file in files {
            let from = src_dir.join(file);
            std::fs::copy(&from, dst_dir.join(file)).map_err(|e| TrainerError::io(&from, e))?;
        }
        std::fs::copy(src, dst).map_err(|e| TrainerError::io(src, e))?;
        return Ok(changed);
    }
    if let Some(graph) = model.graph.as_mut() {
        super::external::externalize(graph, dst_dir, &external).map_err(|message| {
            TrainerError::Onnx {
                path: dst.to_path_buf(),
                message,
            }
        })?;
    }
    std::fs::write(dst, model.encode_to_vec()).map_err(|e| TrainerError::io(dst, e))?;
    Ok(changed)
}

/// Writes `out_dir/manifest.toml` from the base's, with the new name and
/// source (`named`: name, source, the command that wrote it), what `edit`
/// changes, the sha256 of every file in `out_dir` and the fingerprint
/// `fingerprint` computes from the written manifest's directory. Returns the
/// fingerprint.
pub(crate) fn write_manifest(
    base_dir: &Path,
    out_dir: &Path,
    (name, source, command): (&str, &str, &str),
    edit: impl FnOnce(&mut toml::Table),
    fingerprint: impl Fn(&Path) -> Result<String, TrainerError>,
) -> Result<String, TrainerError> {
    let base_path = base_dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&base_path).map_err(|e| TrainerError::io(&base_path, e))?;
    let bad = |message: String| TrainerError::Onnx {
        path: base_path.clone(),
        message,
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    table.insert("name".into(), name.into());
    table.insert("source".into(), source.into());
    edit(&mut table);
    let files = match table.get_mut("files") {
        Some(toml::Value::Table(files)) => files,
        _ => return Err(bad("no [files] table".into())),
    };
    for (_, entry) in files.iter_mut() {
        let toml::Value::Table(entry) = entry else {
            continue;
        };
        let Some(rel) = entry
            .get("path")
            .and_then(|p| p.as_str())
            .map(str::to_string)
        else {
            continue;
        };
        let path = out_dir.join(&rel);
        let sha = sha256_file(&path).map_err(|e| TrainerError::io(&path, e))?;
        entry.insert("sha256".into(), sha.into());
    }
    let out_path = out_dir.join(MANIFEST_FILE);
    let write = |table: &toml::Table| -> Result<(), TrainerError> {
        let body = toml::to_string(table).map_err(|e| bad(e.to_string()))?;
        let text = format!(
            "# roadrep model directory manifest; written by `{command}`, do not edit by hand.\n{body}"
        );
        std::fs::write(&out_path, text).map_err(|e| TrainerError::io(&out_path, e))
    };
    // The fingerprint is a function of the other fields: write, compute, rewrite.
    table.insert("fingerprint".into(), "".into());
    write(&table)?;
    let fingerprint = fingerprint(out_dir)?;
    table.insert("fingerprint".into(), fingerprint.clone().into());
    write(&table)?;
    Ok(fingerprint)
}
