//! Streams at run time: `SIGHUP` or `POST /api/reload` re-reads the config
//! file; added streams start, removed ones stop (a live one closes its open
//! segment), changed ones restart, and untouched ones go on undisturbed.
//! Only `[[streams]]` is applied; other sections need a restart (the
//! reload says which changed).

use std::path::Path;

use super::streams::StreamPlan;
use super::{DaemonError, plan_streams};
use crate::config::RoadrepConfig;

/// A reload asked for by a signal or the API; the daemon answers on
/// `reply`.
#[derive(Debug)]
pub struct ReloadRequest {
    /// Where the outcome goes (dropped: nobody is waiting).
    pub reply: tokio::sync::oneshot::Sender<Result<ReloadReport, String>>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    /// Streams started.
    pub added: Vec<String>,
    /// Streams stopped.
    pub removed: Vec<String>,
    /// Streams whose entry changed: stopped and started again.
    pub restarted: Vec<String>,
    /// Streams left running as they were.
    pub unchanged: Vec<String>,
    /// Settings outside `[[streams]]` that differ from the running ones
    /// (they take effect on the next start).
    pub need_restart: Vec<String>,
}

/// One change to the running streams.
#[derive(Debug)]
pub enum StreamChange<'a> {
    /// Start a new stream.
    Add(&'a StreamPlan),
    /// Stop a stream that is no longer configured.
    Remove(&'a StreamPlan),
}

/// Re-reads the config at `path`, applies the stream changes through
/// `apply` (removals first), and makes `plans` the new set. A config that
/// does not load or check changes nothing.
pub fn reload_streams(
    path: Option<&Path>,
    running_config: &RoadrepConfig,
    plans: &mut Vec<StreamPlan>,
    mut apply: impl FnMut(StreamChange<'_>),
) -> Result<ReloadReport, String> {
    let path = path.ok_or("the daemon was started without a config file to re-read")?;
    let config = RoadrepConfig::load(Some(path)).map_err(|e| format!("{e:#}"))?;
    let new_plans = plan_streams(&config.streams).map_err(|e: DaemonError| e.to_string())?;
    let mut report = ReloadReport {
        need_restart: changed_sections(running_config, &config),
        ..Default::default()
    };
    for old in plans.iter() {
        match new_plans.iter().find(|p| p.config.name == old.config.name) {
            None => {
                apply(StreamChange::Remove(old));
                report.removed.push(old.config.name.clone());
            }
            Some(new) if new.config != old.config => {
                apply(StreamChange::Remove(old));
                report.restarted.push(old.config.name.clone());
            }
            Some(_) => report.unchanged.push(old.config.name.clone()),
        }
    }
    for new in &new_plans {
        let old = plans.iter().find(|p| p.config.name == new.config.name);
        if old.is_none_or(|o| o.config != new.config) {
            apply(StreamChange::Add(new));
            if old.is_none() {
                report.added.push(new.config.name.clone());
            }
        }
    }
    *plans = new_plans;
    tracing::info!(
        added = ?report.added,
        removed = ?report.removed,
        restarted = ?report.restarted,
        need_restart = ?report.need_restart,
        "Config reloaded."
    );
    Ok(report)
}

/// Sections other than `[[streams]]` whose values changed.
fn changed_sections(running: &RoadrepConfig, new: &RoadrepConfig) -> Vec<String> {
    let section = |c: &RoadrepConfig| -> Vec<(&'static str, String)> {
        vec![
            ("models", format!("{:?}", c.models)),
            ("tagging", format!("{:?}", c.tagging)),
            ("ingest", format!("{:?}", c.ingest)),
            ("batcher", format!("{:?}", c.batcher)),
            ("segments", format!("{:?}", c.segments)),
            ("captions", format!("{:?}", c.captions)),
            ("store", format!("{:?}", c.store)),
            ("api", format!("{:?}", c.api)),
            ("rigs", format!("{:?}", c.rig_layouts())),
        ]
    };
    section(running)
        .into_iter()
        .zip(section(new))
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.to_string())
        .collect()
}
