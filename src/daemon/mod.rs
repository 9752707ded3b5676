//! The long-running daemon (`roadrep run`).
//!
//! Every configured stream runs its own GStreamer pipeline on its own
//! thread, under a [`supervisor::Supervisor`] (retries with backoff). All
//! streams feed one [`Pipeline`](crate::pipeline::Pipeline); the HTTP API
//! serves searches meanwhile.
//!
//! - [`streams`]: the pipeline, the ingest threads and the caption worker,
//!   started and stopped as one.
//! - [`supervisor`]: one stream's attempts, resume and backoff.
//! - [`status`]: stream states and retry reasons shown by `/health`.
//! - [`store_slot`]: the store, closed after a failed write (disk full) and
//!   reopened when writes reach the disk again.
//! - [`reload`]: `SIGHUP` / `POST /api/reload` apply `[[streams]]` changes.
//!
//! When the store refuses a write, the streams stop (files keep their
//! checkpoints, live cameras lose the time), `/health` says `degraded`,
//! and the store is tried again with backoff; once a probe write reaches
//! the disk, the streams start again from their checkpoints.
//!
//! Shutdown (the `shutdown` future resolves, e.g. on SIGTERM): ingest stops
//! -> the inference worker stores its open batch -> the store flushes -> the
//! caption worker finishes its current caption (the backlog stays queued) ->
//! the API stops. systemd gets READY=1, watchdog pings while the inference
//! worker shows life (or while waiting for the disk), and STOPPING=1.

pub mod reload;
pub mod status;
pub mod store_slot;
pub mod streams;
pub mod supervisor;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

pub use reload::{ReloadReport, ReloadRequest};
pub use status::{RetryReason, StreamState, StreamStatus, StreamStatuses};
pub use store_slot::{StoreHealth, StoreSlot, StoreUnavailable};

use crate::api::auth::{self, ApiToken};
use crate::api::{ApiState, router};
use crate::config::RoadrepConfig;
use crate::ingest::config::StreamConfig;
use crate::models::{ClipModel, ImagePreprocessor};
use crate::pipeline::{PipelineLoad, PipelineSettings, PipelineTotals, WorkerDied};
use crate::store::Store;
use crate::tagging::SceneTagger;
use reload::{StreamChange, reload_streams};
use status::StatusSlot;
use streams::{RunEnd, RunningStreams, StreamModels, StreamPlan};
use supervisor::Backoff;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The API address could not be bound.
    #[error("api.listen '{addr}': {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A stream entry is invalid.
    #[error("{0}")]
    Config(String),
    /// The inference worker stopped (a panic): nothing would be stored.
    #[error(transparent)]
    InferenceDied(#[from] WorkerDied),
    /// Stopped while the store could not be written.
    #[error("stopped while the store could not be written: {0}")]
    StoreUnwritable(String),
}

/// What the daemon runs on.
pub struct DaemonParts {
    /// The model.
    pub model: Arc<ClipModel>,
    /// The tagger.
    pub tagger: Arc<SceneTagger>,
    /// The store. The daemon owns it from here: after a failed write it is
    /// closed and reopened, which needs every other handle dropped.
    pub store: Store,
    /// Prometheus renderer for `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// The captioner's input size, when captioning is on.
    pub caption_preprocess: Option<ImagePreprocessor>,
    /// The captioner (its worker drains the store's caption backlog).
    pub captioner: Option<Arc<dyn crate::caption::Captioner>>,
    /// What fuses rig records; `None`: the mean of the views.
    pub rig_fuser: Option<crate::fuse::fuser::RigFuser>,
    /// The config file `SIGHUP` and `POST /api/reload` re-read.
    pub config_path: Option<PathBuf>,
}

/// Called once the API is listening (tests learn the bound port).
pub type OnReady = Box<dyn FnOnce(std::net::SocketAddr) + Send>;

/// What the running streams are started with (from the config).
pub struct DaemonSettings {
    /// The pipeline's settings.
    pub pipeline: PipelineSettings,
    /// `[ingest] sample_fps`, for streams that set none.
    pub sample_fps: f64,
    /// `[ingest] decode`, for streams that set none.
    pub decode: crate::ingest::config::DecodeMode,
    /// Retry delays of failing streams.
    pub backoff: Backoff,
    /// See `ingest.max_file_attempts`.
    pub max_file_attempts: u32,
    /// Nice value of the caption worker.
    pub caption_nice: i32,
    /// Keyframes the caption worker captions per model run.
    pub caption_batch_size: usize,
}

impl DaemonSettings {
    /// The settings of `config`.
    pub fn of(config: &RoadrepConfig, caption_preprocess: Option<ImagePreprocessor>) -> Self {
        Self {
            pipeline: PipelineSettings {
                queue_frames: config.ingest.queue_frames,
                batcher: config.batcher.clone(),
                segments: config.segments.enabled.then(|| config.segments.clone()),
                caption_preprocess,
                max_caption_backlog: config.captions.max_backlog,
                thumbnail_width: config.store.thumbnail_width,
                keyframe_width: config.store.keyframe_width,
                rigs: None,
            },
            sample_fps: config.ingest.sample_fps,
            decode: config.ingest.decode,
            backoff: Backoff {
                initial: Duration::from_secs_f64(config.ingest.retry_initial_secs.max(0.01)),
                max: Duration::from_secs_f64(config.ingest.retry_max_secs.max(0.01)),
            },
            max_file_attempts: config.ingest.max_file_attempts.max(1),
            caption_nice: config.captions.nice,
            caption_batch_size: config.captions.batch_size,
        }
    }
}

/// Checks every stream entry; the first bad one is the error.
pub fn plan_streams(streams: &[StreamConfig]) -> Result<Vec<StreamPlan>, DaemonError> {
    let mut plans: Vec<StreamPlan> = Vec::with_capacity(streams.len());
    for s in streams {
        let kind = s.validate().map_err(DaemonError::Config)?;
        if plans.iter().any(|p| p.config.name == s.name) {
            return Err(DaemonError::Config(format!(
                "stream '{}' is configured twice",
                s.name
            )));
        }
        plans.push(StreamPlan {
            config: s.clone(),
            kind,
        });
    }
    Ok(plans)
}

/// How often a closed store is tried again, and how long the daemon waits
/// at most between tries.
const STORE_RETRY: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// Runs until `shutdown` resolves, then drains and flushes.
pub async fn run(
    config: &RoadrepConfig,
    parts: DaemonParts,
    shutdown: impl Future<Output = ()>,
    on_ready: Option<OnReady>,
) -> Result<PipelineTotals, DaemonError> {
    let token = api_token(config)?;
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: config.api.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.api.listen.clone(),
        source,
    })?;
    // Every stream is checked before any thread starts.
    let mut plans = plan_streams(&config.streams)?;
    let mut settings = DaemonSettings::of(config, parts.caption_preprocess.clone());
    let layouts = config.rig_layouts().map_err(DaemonError::Config)?;
    let rig_status = crate::pipeline::rigs::RigStatusBoard::default();
    if !layouts.is_empty() {
        let fuser = parts.rig_fuser.clone().unwrap_or_else(|| {
            crate::fuse::fuser::RigFuser::mean_of_views(parts.model.fingerprint())
        });
        for layout in &layouts {
            fuser.check_roles(layout).map_err(DaemonError::Config)?;
        }
        tracing::info!(rigs = layouts.len(), fuser = %fuser.describe(), "Rigs assembled.");
        settings.pipeline.rigs = Some(crate::pipeline::RigSetup {
            layouts,
            fuser,
            status: rig_status.clone(),
        });
    }
    let DaemonParts {
        model,
        tagger,
        store,
        metrics,
        captioner,
        config_path,
        ..
    } = parts;
    let models = StreamModels {
        model: model.clone(),
        tagger: tagger.clone(),
        captioner,
    };
    let mut store = store;
    let uplink = match &config.uplink {
        Some(c) => {
            let link =
                crate::uplink::LinkBoard::new(c).map_err(|e| DaemonError::Config(e.to_string()))?;
            store
                .attach_outbox(link.outbox().clone())
                .map_err(|e| DaemonError::Config(e.to_string()))?;
            Some(link)
        }
        None => None,
    };
    // From here the slot holds the only long-lived store handle.
    let store = Arc::new(StoreSlot::new(
        store,
        model.fingerprint(),
        model.embed_dim(),
        config.search,
    ));
    let statuses: StreamStatuses = Arc::new(RwLock::new(Vec::new()));
    let (reload_tx, mut reloads) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let state = ApiState {
        store: store.clone(),
        model,
        tagger,
        metrics,
        streams: statuses.clone(),
        limit: Arc::new(Semaphore::new(config.api.max_concurrent_requests.max(1))),
        token,
        reload: Some(reload_tx.clone()),
        segmenter: config.segments.clone(),
        rigs: rig_status,
        uplink: uplink.clone(),
    };
    let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = crate::api::server::ConnectionLimits {
        max_connections: config.api.max_connections,
        header_timeout: Duration::from_secs_f64(config.api.header_timeout_secs),
    };
    let server = tokio::spawn(async move {
        let graceful = async {
            let _ = api_stop_rx.await;
        };
        crate::api::server::serve(listener, router(state), limits, graceful).await;
    });
    let hangups = spawn_hangup_listener(reload_tx);
    let publisher = uplink.map(|link| {
        crate::uplink::RunningUplink::start(
            link,
            store.clone(),
            crate::uplink::task::daemon_streams(statuses.clone()),
        )
    });

    let mut running = Some(start_streams(
        &plans, &models, &settings, &store, &statuses,
    )?);
    tracing::info!(%addr, streams = plans.len(), "roadrep is running.");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(cb) = on_ready {
        cb(addr);
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut totals = PipelineTotals::default();
    let mut died = false;
    while let Some(current) = running.as_mut() {
        let watchdog = spawn_watchdog(current.load());
        let event = tokio::select! {
            _ = &mut shutdown => DaemonEvent::Shutdown,
            end = current.ended() => DaemonEvent::Ended(end),
            Some(request) = reloads.recv() => DaemonEvent::Reload(request),
        };
        if let Some(w) = watchdog {
            w.abort();
        }
        match event {
            DaemonEvent::Reload(request) => {
                // Stopping a stream joins its thread: off the async threads'
                // hot path, but on this task (the loop waits for it anyway).
                let result =
                    tokio::task::block_in_place(|| {
                        reload_streams(config_path.as_deref(), config, &mut plans, |change| {
                            match change {
                                StreamChange::Add(plan) => {
                                    if let Ok(handle) = store.get() {
                                        current.add_stream(plan, &settings, &handle, &statuses);
                                    }
                                }
                                StreamChange::Remove(plan) => {
                                    current.remove_stream(plan);
                                    StatusSlot::remove(&statuses, &plan.config.name);
                                }
                            }
                        })
                    });
                let _ = request.reply.send(result);
            }
            DaemonEvent::Shutdown => break,
            DaemonEvent::Ended(RunEnd::WorkerDied) => {
                died = true;
                break;
            }
            DaemonEvent::Ended(RunEnd::StoreUnwritable(error)) => {
                tracing::error!(%error, "The store cannot be written: streams paused until it can.");
                ::metrics::counter!(crate::pipeline::metrics::STORE_FAILURES).increment(1);
                totals.add(stop_streams(running.take()).await);
                // Streams say why they stopped before /health says degraded.
                pause_streams(&statuses, &plans, &error);
                store.close_unwritable(error.clone());
                let wait = StoreWait {
                    store: &store,
                    config_path: config_path.as_deref(),
                    config,
                    statuses: &statuses,
                };
                if wait.run(shutdown.as_mut(), &mut reloads, &mut plans).await {
                    tracing::warn!(
                        "The store takes writes again: streams resume from their checkpoints."
                    );
                    running = Some(start_streams(
                        &plans, &models, &settings, &store, &statuses,
                    )?);
                }
            }
        }
    }
    tracing::info!("Shutting down: stopping ingest.");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    totals.add(stop_streams(running.take()).await);
    if let Some(p) = publisher {
        p.stop().await;
    }
    if let Some(h) = hangups {
        h.abort();
    }
    let _ = api_stop_tx.send(());
    let _ = server.await;
    tracing::info!(frames = totals.frames, "Stopped.");
    if died {
        return Err(WorkerDied.into());
    }
    if let Some(error) = store.health().error {
        return Err(DaemonError::StoreUnwritable(error));
    }
    Ok(totals)
}

/// What woke the daemon's loop.
enum DaemonEvent {
    Shutdown,
    Ended(RunEnd),
    Reload(ReloadRequest),
}

fn start_streams(
    plans: &[StreamPlan],
    models: &StreamModels,
    settings: &DaemonSettings,
    store: &StoreSlot,
    statuses: &StreamStatuses,
) -> Result<RunningStreams, DaemonError> {
    let handle = store
        .get()
        .map_err(|e| DaemonError::StoreUnwritable(e.to_string()))?;
    Ok(RunningStreams::start(
        plans, models, settings, handle, statuses,
    ))
}

/// Stops the running streams on a blocking thread; their totals.
async fn stop_streams(running: Option<RunningStreams>) -> PipelineTotals {
    let Some(running) = running else {
        return PipelineTotals::default();
    };
    tokio::task::spawn_blocking(move || running.stop().unwrap_or_default())
        .await
        .unwrap_or_default()
}

/// Every stream shows why it is not running.
fn pause_streams(statuses: &StreamStatuses, plans: &[StreamPlan], error: &str) {
    for plan in plans {
        StatusSlot::register(statuses, &plan.config.name).set(status::Transition {
            state: StreamState::Paused,
            reason: None,
            error: Some(format!("store cannot be written: {error}")),
            counters: None,
        });
    }
}

/// Waiting for a closed store to take writes again.
struct StoreWait<'a> {
    store: &'a Arc<StoreSlot>,
    config_path: Option<&'a Path>,
    config: &'a RoadrepConfig,
    statuses: &'a StreamStatuses,
}

impl StoreWait<'_> {
    /// Tries to reopen the store with backoff until a probe write reaches
    /// the disk (true) or shutdown (false). The watchdog is pinged
    /// meanwhile: the daemon is alive and serving `/health`, and a restart
    /// would not bring the disk space back. Reloads change the streams
    /// that will start.
    async fn run(
        &self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        reloads: &mut tokio::sync::mpsc::Receiver<ReloadRequest>,
        plans: &mut Vec<StreamPlan>,
    ) -> bool {
        let mut delay = STORE_RETRY.initial;
        let mut next_try = Instant::now() + delay;
        let ping = sd_notify::watchdog_enabled().map_or(Duration::from_secs(1), |p| p / 2);
        loop {
            let tick =
                tokio::time::sleep(ping.min(next_try.saturating_duration_since(Instant::now())));
            tokio::select! {
                _ = shutdown.as_mut() => return false,
                Some(request) = reloads.recv() => {
                    let result = reload_streams(self.config_path, self.config, plans, |change| {
                        if let StreamChange::Remove(plan) = change {
                            StatusSlot::remove(self.statuses, &plan.config.name);
                        }
                    });
                    let _ = request.reply.send(result);
                    continue;
                }
                _ = tick => {}
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            if Instant::now() < next_try {
                continue;
            }
            let slot = self.store.clone();
            match tokio::task::spawn_blocking(move || slot.try_reopen().map(drop)).await {
                Ok(Ok(())) => return true,
                Ok(Err(error)) => {
                    tracing::warn!(%error, retry_in_secs = delay.as_secs_f64(), "The store still cannot be written.");
                }
                Err(error) => tracing::error!(%error, "Reopening the store failed."),
            }
            delay = (delay * 2).min(STORE_RETRY.max);
            next_try = Instant::now() + delay;
        }
    }
}

/// `SIGHUP` asks for a reload (as most daemons do).
fn spawn_hangup_listener(
    reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "Cannot listen for SIGHUP; reload with POST /api/reload.");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let (reply, outcome) = tokio::sync::oneshot::channel();
            if reloads.send(ReloadRequest { reply }).await.is_err() {
                return;
            }
            match outcome.await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::error!(%error, "Reload on SIGHUP failed; the running streams are unchanged.")
                }
                Err(_) => {}
            }
        }
    }))
}

/// The API's bearer token: required when the API is reachable from other
/// machines; created on first start when its file is missing.
fn api_token(config: &RoadrepConfig) -> Result<Option<ApiToken>, DaemonError> {
    let listen = &config.api.listen;
    let Some(path) = &config.api.token_file else {
        if auth::reachable_from_outside(listen) {
            return Err(DaemonError::Config(format!(
                "api.listen '{listen}' is reachable from other machines: set api.token_file (a bearer token file the API will require; it is created when missing)"
            )));
        }
        return Ok(None);
    };
    let (token, created) =
        ApiToken::read_or_create(path).map_err(|e| DaemonError::Config(e.to_string()))?;
    if created {
        tracing::warn!(path = %path.display(), "Created a new API bearer token; clients send it as 'Authorization: Bearer <token>'.");
    }
    Ok(Some(token))
}

/// Pings the systemd watchdog (when systemd asked for it) every
/// `WatchdogSec/2` while the inference worker is responsive: it finished a
/// batch or waited idle within that time. A hung model run or store write
/// withholds the pings, so systemd restarts the service.
fn spawn_watchdog(load: Arc<PipelineLoad>) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()? / 2;
    Some(tokio::spawn(async move {
        let mut withheld = false;
        while load.worker_alive() {
            if load.worker_responsive(period) {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                withheld = false;
            } else if !withheld {
                tracing::error!(
                    silent_secs = load.since_heartbeat().as_secs_f64(),
                    "The inference worker shows no life; watchdog pings withheld."
                );
                withheld = true;
            }
            tokio::time::sleep(period).await;
        }
    }))
}
