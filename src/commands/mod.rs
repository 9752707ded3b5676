//! Subcommand implementations (the binary's edge: anyhow errors with context).

pub mod bench;
pub mod tag;

use std::path::Path;
use std::process::ExitCode;

use roadrep::models::ModelManifest;

/// `roadrep verify-model DIR`
pub fn verify_model(dir: &Path) -> anyhow::Result<ExitCode> {
    let m = ModelManifest::read_verified(dir)?;
    println!(
        "{}: ok ({}, {} files, fingerprint {})",
        dir.display(),
        m.source,
        m.files.len(),
        m.fingerprint
    );
    Ok(ExitCode::SUCCESS)
}
