//! The long-running daemon (`roadrep run`).
//!
//! Every configured stream runs its own GStreamer pipeline on its own
//! thread, under a [`supervisor::Supervisor`] (retries with backoff). All
//! streams feed one [`Pipeline`]; the HTTP API serves searches meanwhile.
//!
//! - [`supervisor`]: one stream's attempts, resume and backoff.
//! - [`status`]: stream states and retry reasons shown by `/health`.
//!
//! Shutdown (the `shutdown` future resolves, e.g. on SIGTERM): ingest stops
//! -> the inference worker stores its open batch -> the store flushes -> the
//! caption worker finishes its current caption (the backlog stays queued) ->
//! the API stops. systemd gets READY=1, watchdog pings while the inference
//! worker lives, and STOPPING=1.

pub mod status;
pub mod supervisor;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

pub use status::{RetryReason, StreamState, StreamStatus, StreamStatuses};

use crate::api::auth::{self, ApiToken};
use crate::api::{ApiState, router};
use crate::config::RoadrepConfig;
use crate::ingest::source::SourceSpec;
use crate::models::ClipModel;
use crate::pipeline::{
    Pipeline, PipelineLoad, PipelineParts, PipelineSettings, PipelineTotals, WorkerDied,
};
use crate::store::Store;
use crate::tagging::SceneTagger;
use status::StatusSlot;
use supervisor::{Backoff, Supervisor};

/// Errors that stop the daemon from starting.
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
}

/// What the daemon runs on.
pub struct DaemonParts {
    /// The model.
    pub model: Arc<ClipModel>,
    /// The tagger.
    pub tagger: Arc<SceneTagger>,
    /// The store.
    pub store: Store,
    /// Prometheus renderer for `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// The captioner's input size, when captioning is on.
    pub caption_preprocess: Option<crate::models::ImagePreprocessor>,
    /// The captioner (its worker drains the store's caption backlog).
    pub captioner: Option<Arc<dyn crate::caption::Captioner>>,
}

/// Called once the API is listening (tests learn the bound port).
pub type OnReady = Box<dyn FnOnce(std::net::SocketAddr) + Send>;

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
    let kinds = config
        .streams
        .iter()
        .map(|s| s.validate().map_err(DaemonError::Config))
        .collect::<Result<Vec<_>, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut pipeline = Pipeline::start(
        PipelineParts {
            model: parts.model.clone(),
            tagger: parts.tagger.clone(),
            store: parts.store.clone(),
        },
        &PipelineSettings {
            queue_frames: config.ingest.queue_frames,
            batcher: config.batcher.clone(),
            segments: config.segments.enabled.then(|| config.segments.clone()),
            caption_preprocess: parts.caption_preprocess.clone(),
            max_caption_backlog: config.captions.max_backlog,
        },
        stop.clone(),
    );
    let load = pipeline.load();
    let statuses: StreamStatuses = Arc::new(RwLock::new(Vec::new()));
    let backoff = Backoff {
        initial: Duration::from_secs_f64(config.ingest.retry_initial_secs.max(0.01)),
        max: Duration::from_secs_f64(config.ingest.retry_max_secs.max(0.01)),
    };
    let mut ingest_threads = Vec::new();
    for (stream, kind) in config.streams.iter().zip(kinds) {
        let supervisor = Supervisor {
            spec: SourceSpec {
                stream: stream.name.as_str().into(),
                kind,
                sample_fps: stream.sample_fps.unwrap_or(config.ingest.sample_fps),
                rtsp_transport: stream.rtsp_transport,
                latency_ms: stream.latency_ms,
                file_start_ns: None,
            },
            status: StatusSlot::register(&statuses, &stream.name),
            preprocessing: pipeline.preprocessing().clone(),
            input: pipeline.input(),
            stop: stop.clone(),
            store: parts.store.clone(),
            backoff,
            max_file_attempts: config.ingest.max_file_attempts.max(1),
        };
        ingest_threads.push(
            std::thread::Builder::new()
                .name(format!("ingest-{}", stream.name))
                .spawn(move || supervisor.run())
                .expect("spawn an ingest thread"),
        );
    }
    // When every stream has finished, the worker stores what it holds and
    // flushes while the API keeps serving.
    pipeline.seal();
    let captions = parts.captioner.clone().map(|c| {
        crate::caption::CaptionWorker::spawn(
            c,
            parts.store.clone(),
            config.captions.nice,
            load.clone(),
        )
    });

    let state = ApiState {
        store: parts.store.clone(),
        model: parts.model.clone(),
        tagger: parts.tagger.clone(),
        metrics: parts.metrics,
        streams: statuses.clone(),
        limit: Arc::new(Semaphore::new(config.api.max_concurrent_requests.max(1))),
        token,
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
    tracing::info!(%addr, streams = config.streams.len(), "roadrep is running.");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(cb) = on_ready {
        cb(addr);
    }
    let watchdog = spawn_watchdog(stop.clone(), load.clone());

    // Run until asked to stop, or until the inference worker dies (then
    // exit with an error so systemd restarts the service).
    let worker_load = load.clone();
    let inference_died = async move {
        while worker_load.worker_alive() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let died = tokio::select! {
        _ = shutdown => false,
        _ = inference_died => true,
    };
    tracing::info!("Shutting down: stopping ingest.");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.store(true, Ordering::Relaxed);
    let totals = tokio::task::spawn_blocking(move || {
        for t in ingest_threads {
            let _ = t.join();
        }
        // Every other sender is gone now: the worker stores its open batch
        // and flushes.
        let totals = pipeline.finish().unwrap_or_default();
        // Captions left queued are made on the next start.
        if let Some(c) = captions {
            let left = c.backlog();
            let done = c.stop();
            tracing::info!(captioned = done.captioned, left, "Caption worker stopped.");
        }
        totals
    })
    .await
    .unwrap_or_default();
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = api_stop_tx.send(());
    let _ = server.await;
    tracing::info!(frames = totals.frames, "Stopped.");
    if died {
        return Err(WorkerDied.into());
    }
    Ok(totals)
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
fn spawn_watchdog(
    stop: Arc<AtomicBool>,
    load: Arc<PipelineLoad>,
) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()? / 2;
    Some(tokio::spawn(async move {
        let mut withheld = false;
        while !stop.load(Ordering::Relaxed) && load.worker_alive() {
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
