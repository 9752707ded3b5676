//! The long-running daemon (`roadrep run`).
//!
//! Every configured stream runs its own GStreamer pipeline on its own
//! thread, supervised: a failure (file missing, RTSP server down, corrupt
//! data) is logged and retried with exponential backoff while the other
//! streams go on; a live source that ends is reconnected; a file that was
//! read to its end is finished (and skipped on the next start, thanks to its
//! checkpoint). All streams feed one bounded channel into the inference
//! worker; the HTTP API serves searches meanwhile.
//!
//! Shutdown (the `shutdown` future resolves, e.g. on SIGTERM): ingest stops
//! -> the inference worker stores its open batch -> the store flushes -> the
//! caption worker finishes its current caption (the backlog stays queued) ->
//! the API stops. systemd gets READY=1, watchdog pings while the inference
//! thread lives, and STOPPING=1.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::api::{ApiState, StreamStatus, router};
use crate::config::RoadrepConfig;
use crate::frame::IngestEvent;
use crate::infer::{InferenceTotals, InferenceWorker};
use crate::ingest::config::SourceKind;
use crate::ingest::source::{SourceCounters, SourceEnd, SourceSpec, run_source, source_identity};
use crate::models::ClipModel;
use crate::models::preprocess::FramePreprocessing;
use crate::store::Store;
use crate::tagging::SceneTagger;
use crate::telemetry;

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
    #[error("the inference worker stopped unexpectedly; see the log")]
    InferenceDied,
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
) -> Result<InferenceTotals, DaemonError> {
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

    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(RwLock::new(Vec::new()));
    let (tx, rx) = sync_channel::<IngestEvent>(config.ingest.queue_frames.max(1));
    let worker = InferenceWorker::new(
        parts.model.clone(),
        parts.tagger.clone(),
        parts.store.clone(),
        config.batcher.clone(),
    );
    let worker = if config.segments.enabled {
        worker.with_segments(config.segments.clone())
    } else {
        worker
    };
    let inference_alive = Arc::new(AtomicBool::new(true));
    let alive_flag = inference_alive.clone();
    let inference = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            // Cleared only by a panic (the guard drops while unwinding). A
            // normal return (every stream finished) leaves the API serving.
            struct Alive(Arc<AtomicBool>);
            impl Drop for Alive {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        self.0.store(false, Ordering::Relaxed);
                    }
                }
            }
            let _alive = Alive(alive_flag);
            worker.run(rx)
        })
        .expect("spawn the inference thread");

    let mut ingest_threads = Vec::new();
    for (index, stream) in config.streams.iter().enumerate() {
        let kind = stream.validate().map_err(DaemonError::Config)?;
        let spec = SourceSpec {
            stream: stream.name.as_str().into(),
            kind,
            sample_fps: stream.sample_fps.unwrap_or(config.ingest.sample_fps),
            rtsp_transport: stream.rtsp_transport,
            latency_ms: stream.latency_ms,
            file_start_ns: None,
        };
        statuses.write().expect("status lock").push(StreamStatus {
            name: stream.name.clone(),
            state: "starting".into(),
            last_error: None,
            frames: 0,
            dropped: 0,
            current: None,
        });
        let supervisor = Supervisor {
            spec,
            index,
            preprocessor: FramePreprocessing {
                clip: parts.model.preprocessor().clone(),
                caption: parts.caption_preprocess.clone(),
            },
            tx: tx.clone(),
            stop: stop.clone(),
            statuses: statuses.clone(),
            store: parts.store.clone(),
            retry_initial: Duration::from_secs_f64(config.ingest.retry_initial_secs.max(0.01)),
            retry_max: Duration::from_secs_f64(config.ingest.retry_max_secs.max(0.01)),
        };
        ingest_threads.push(
            std::thread::Builder::new()
                .name(format!("ingest-{}", stream.name))
                .spawn(move || supervisor.run())
                .expect("spawn an ingest thread"),
        );
    }
    drop(tx);
    let captions = parts.captioner.clone().map(|c| {
        crate::caption::CaptionWorker::spawn(c, parts.store.clone(), config.captions.nice)
    });

    let state = ApiState {
        store: parts.store.clone(),
        model: parts.model.clone(),
        metrics: parts.metrics,
        streams: statuses.clone(),
        limit: Arc::new(Semaphore::new(config.api.max_concurrent_requests.max(1))),
    };
    let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let graceful = async {
            let _ = api_stop_rx.await;
        };
        if let Err(error) = axum::serve(listener, router(state))
            .with_graceful_shutdown(graceful)
            .await
        {
            tracing::error!(%error, "HTTP API failed.");
        }
    });
    tracing::info!(%addr, streams = config.streams.len(), "roadrep is running.");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(cb) = on_ready {
        cb(addr);
    }
    let alive = inference_alive.clone();
    let watchdog = spawn_watchdog(stop.clone(), alive.clone());

    // Run until asked to stop, or until the inference worker dies (then
    // exit with an error so systemd restarts the service).
    let inference_died = async move {
        while alive.load(Ordering::Relaxed) {
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
        // Every sender is gone now: the worker stores its open batch and flushes.
        let totals = inference.join().unwrap_or_default();
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
        return Err(DaemonError::InferenceDied);
    }
    Ok(totals)
}

/// Pings the systemd watchdog (when systemd asked for it) while the
/// inference worker lives, until shutdown.
fn spawn_watchdog(
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()? / 2;
    Some(tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) && alive.load(Ordering::Relaxed) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(period).await;
        }
    }))
}

/// Runs one stream with retries.
struct Supervisor {
    spec: SourceSpec,
    index: usize,
    preprocessor: FramePreprocessing,
    tx: SyncSender<IngestEvent>,
    stop: Arc<AtomicBool>,
    statuses: Arc<RwLock<Vec<StreamStatus>>>,
    store: Store,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Supervisor {
    fn set_status(
        &self,
        state: &str,
        error: Option<String>,
        counters: Option<&Arc<SourceCounters>>,
    ) {
        if let Ok(mut s) = self.statuses.write()
            && let Some(st) = s.get_mut(self.index)
        {
            st.state = state.into();
            if error.is_some() {
                st.last_error = error;
            }
            if let Some(c) = counters {
                st.current = Some(c.clone());
            }
        }
        metrics::gauge!(telemetry::STREAM_UP, "stream" => self.spec.stream.to_string())
            .set(if state == "running" { 1.0 } else { 0.0 });
    }

    fn run(self) {
        let stream = self.spec.stream.to_string();
        let mut delay = self.retry_initial;
        while !self.stop.load(Ordering::Relaxed) {
            // Per attempt: a file that was missing has a new identity once it exists.
            let identity = source_identity(&self.spec.kind);
            // Files continue after their checkpoint; a finished file is done.
            // A checkpoint taken at another sample rate is not resumed: the
            // file is read again on this rate's grid.
            let interval = crate::ingest::sampler::FrameSampler::interval_ns(self.spec.sample_fps);
            let checkpoint = self.checkpoint(&identity).filter(|c| {
                let same = c.sample_interval_ns == 0 || c.sample_interval_ns == interval;
                if !same {
                    tracing::warn!(%stream, "Sample rate changed since the last run; reading the file again.");
                }
                same
            });
            let resume = match (&self.spec.kind, checkpoint) {
                (SourceKind::File(_), Some(c)) if c.complete => {
                    tracing::info!(%stream, "File already ingested.");
                    self.set_status("finished", None, None);
                    return;
                }
                (SourceKind::File(_), Some(c)) => c.last_pts_ns,
                _ => None,
            };
            let counters = Arc::new(SourceCounters::default());
            self.set_status("running", None, Some(&counters));
            let result = run_source(
                &self.spec,
                &self.preprocessor,
                &self.tx,
                &self.stop,
                resume,
                &counters,
            );
            let delivered = counters.delivered.load(Ordering::Relaxed);
            self.set_status("running", None, Some(&counters));
            match result {
                // A file, or a gst: description that is not live (a test
                // source, a filesrc), is done at its end; live ones reconnect.
                Ok(SourceEnd::Eos) if !counters.live.load(Ordering::Relaxed) => {
                    let _ = self.tx.send(IngestEvent::SourceEnded {
                        stream: self.spec.stream.clone(),
                        source: identity.clone().into(),
                        complete: true,
                    });
                    self.set_status("finished", None, Some(&counters));
                    return;
                }
                Ok(SourceEnd::Eos) => {
                    tracing::warn!(%stream, "Live source ended; reconnecting.");
                    self.set_status("retrying", Some("end of stream".into()), Some(&counters));
                }
                Ok(SourceEnd::Stopped) => {
                    if !self.stop.load(Ordering::Relaxed) {
                        // The inference worker is gone; the daemon notices and exits.
                        tracing::error!(%stream, "Inference stopped taking frames; stream stopped.");
                    }
                    self.set_status("stopped", None, Some(&counters));
                    return;
                }
                Err(error) => {
                    metrics::counter!(telemetry::SOURCE_ERRORS, "stream" => stream.clone())
                        .increment(1);
                    tracing::error!(%stream, %error, retry_in_secs = delay.as_secs_f64(), "Stream failed; retrying.");
                    self.set_status("retrying", Some(error.to_string()), Some(&counters));
                }
            }
            // A run that delivered frames was healthy: start backoff over.
            if delivered > 0 {
                delay = self.retry_initial;
            }
            if !self.sleep(delay) {
                break;
            }
            delay = (delay * 2).min(self.retry_max);
        }
        self.set_status("stopped", None, None);
    }

    fn checkpoint(&self, identity: &str) -> Option<crate::store::Checkpoint> {
        let id = self.store.stream_id(&self.spec.stream).ok()?;
        self.store.checkpoint(id, identity).ok().flatten()
    }

    /// Sleeps `d` unless stopped first; returns false when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        while std::time::Instant::now() < deadline {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(deadline - std::time::Instant::now()));
        }
        !self.stop.load(Ordering::Relaxed)
    }
}
