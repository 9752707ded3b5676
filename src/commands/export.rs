//! `roadrep export-frames`: stored frames as an image-caption dataset.

use std::path::Path;
use std::process::ExitCode;

use roadrep::config::RoadrepConfig;
use roadrep::models::ModelManifest;
use roadrep::store::Store;

use super::cli::ExportArgs;

pub fn run(config_path: Option<&Path>, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let filter = args
        .filter
        .to_request()
        .filter()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = args
        .store
        .clone()
        .unwrap_or_else(|| config.store.path.clone());
    anyhow::ensure!(path.exists(), "store '{}' does not exist", path.display());
    // Only frames are read: the manifest's fingerprint opens the right trees.
    let manifest = ModelManifest::read(&config.models.clip)?;
    let store = Store::open_with_index(
        &path,
        &manifest.fingerprint,
        manifest.clip.embed_dim,
        &config.search,
    )?;
    let report = roadrep::search::export::export_frames(
        &store,
        &filter,
        args.limit,
        &args.out,
        args.quality,
    )?;
    for (source, error) in &report.errors {
        eprintln!("error: {source}: {error}");
    }
    eprintln!(
        "exported {} frames to {} ({} skipped: source not a readable file)",
        report.written,
        args.out.join(roadrep::search::export::MANIFEST).display(),
        report.skipped
    );
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
