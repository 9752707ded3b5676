//! `trainer merge-captioner`: folds a captioner adapter into a BLIP model
//! directory the daemon loads.
//!
//! Each adapted weight becomes `W + (α / r) · B A` in whichever graph holds
//! it: the text decoder's, or `vision_encoder.onnx` for the vision encoder
//! and the decoder's cross-attention key/value projections (the daemon
//! computes those once per image). A graph with no changed weight is copied
//! byte for byte ([`rewrite_initializers`](crate::trainer::merge::rewrite_initializers)),
//! so a zero adapter gives identical files and fingerprint. The manifest
//! gets the new sha256s and the BLIP fingerprint (graphs, tokenizer,
//! preprocessing), checked by the daemon's own verification.
//!
//! The base's INT8 text decoder would run the old weights, so it is neither
//! copied nor listed; `trainer merge-captioner --int8` derives a new one
//! (`models/modeldir.py int8 DIR`).

use std::path::Path;

use super::CandleBlip;
use crate::models::blip::{BlipManifest, roles};
use crate::models::manifest::MANIFEST_FILE;
use crate::trainer::TrainerError;
use crate::trainer::lora::LoraAdapter;
use crate::trainer::merge::{MergeOutcome, merge_onnx, write_manifest};

/// Writes `model`'s directory merged with `adapter` into `out_dir` as `name`.
pub fn merge_captioner(
    model: &CandleBlip,
    adapter: &LoraAdapter,
    out_dir: &Path,
    name: &str,
) -> Result<MergeOutcome, TrainerError> {
    let base_dir = &model.dir;
    let manifest = &model.manifest;
    if let (Ok(a), Ok(b)) = (base_dir.canonicalize(), out_dir.canonicalize())
        && a == b
    {
        return Err(TrainerError::Config(format!(
            "merge output '{}' is the base model directory",
            out_dir.display()
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainerError::io(out_dir, e))?;
    let mut changed = Vec::new();
    for role in [roles::VISION_ENCODER, roles::TEXT_DECODER] {
        let entry = manifest.file(base_dir, role)?;
        changed.extend(merge_onnx(
            &base_dir.join(&entry.path),
            &out_dir.join(&entry.path),
            adapter,
        )?);
    }
    for (role, entry) in &manifest.files {
        if role == roles::VISION_ENCODER
            || role == roles::TEXT_DECODER
            || role == roles::TEXT_DECODER_INT8
        {
            continue;
        }
        let src = base_dir.join(&entry.path);
        let dst = out_dir.join(&entry.path);
        std::fs::copy(&src, &dst).map_err(|e| TrainerError::io(&src, e))?;
    }
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
        (name, &source, "trainer merge-captioner"),
        |table| {
            if let Some(toml::Value::Table(files)) = table.get_mut("files") {
                files.remove(roles::TEXT_DECODER_INT8);
            }
        },
        |dir| {
            let path = dir.join(MANIFEST_FILE);
            let text = std::fs::read_to_string(&path).map_err(|e| TrainerError::io(&path, e))?;
            let m: BlipManifest = toml::from_str(&text).map_err(|e| TrainerError::Onnx {
                path: path.clone(),
                message: e.to_string(),
            })?;
            Ok(m.compute_fingerprint()?)
        },
    )?;
    // The daemon's own check: files, sha256s and fingerprint agree.
    BlipManifest::read_verified(out_dir)?;
    Ok(MergeOutcome {
        dir: out_dir.to_path_buf(),
        fingerprint,
        changed,
    })
}
