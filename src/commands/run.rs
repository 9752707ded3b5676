//! `roadrep run`: the daemon, until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use roadrep::config::RoadrepConfig;
use roadrep::daemon::{DaemonParts, run as run_daemon};

pub fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    if config.streams.is_empty() {
        tracing::warn!("No [[streams]] configured: serving the store only.");
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let parts = super::load_parts(&config, &config.store.path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let caption_preprocess = parts.caption_preprocess(&config);
    let rig_fuser = if config.rig_layouts().is_ok_and(|r| !r.is_empty()) {
        Some(super::load_fuser(&config, &parts.model)?)
    } else {
        None
    };
    let totals = runtime.block_on(async {
        let parts = DaemonParts {
            model: parts.model,
            tagger: parts.tagger,
            store: parts.store,
            metrics: Some(metrics),
            caption_preprocess,
            captioner: parts
                .captioner
                .map(|c| c as Arc<dyn roadrep::caption::Captioner>),
            config_path: RoadrepConfig::file_to_load(config_path),
            rig_fuser,
        };
        run_daemon(&config, parts, shutdown_signal(), None).await
    })?;
    eprintln!("roadrep: stopped after storing {} frames", totals.frames);
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
