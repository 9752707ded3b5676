//! The running part of the daemon: one pipeline, a supervised ingest
//! thread per stream, and the caption worker. Started at launch and again
//! after the store comes back from a failed write; stopped at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::DaemonSettings;
use super::status::{StatusSlot, StreamStatuses};
use super::supervisor::Supervisor;
use crate::caption::{CaptionWorker, CaptionWorkerHandle, Captioner};
use crate::ingest::config::{SourceKind, StreamConfig};
use crate::ingest::source::SourceSpec;
use crate::models::ClipModel;
use crate::pipeline::{
    IngestEvent, Pipeline, PipelineLoad, PipelineParts, PipelineTotals, SourceId, SourceKey,
    WorkerDied,
};
use crate::store::Store;
use crate::tagging::SceneTagger;

/// The models every start of the streams shares.
pub struct StreamModels {
    /// CLIP.
    pub model: Arc<ClipModel>,
    /// The label sets' tagger.
    pub tagger: Arc<SceneTagger>,
    /// The captioner, when captions are on.
    pub captioner: Option<Arc<dyn Captioner>>,
}

/// One configured stream, checked.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// Its entry in the config.
    pub config: StreamConfig,
    /// What it reads.
    pub kind: SourceKind,
}

/// Why the running streams ended on their own.
#[derive(Debug)]
pub enum RunEnd {
    /// The inference worker panicked: nothing would be stored.
    WorkerDied,
    /// The store refused a write (disk full): the worker stopped.
    StoreUnwritable(String),
}

/// The pipeline, its ingest threads and the caption worker.
pub struct RunningStreams {
    pipeline: Pipeline,
    /// Per stream: its plan, its own stop flag and its thread.
    ingest: Vec<(StreamPlan, Arc<AtomicBool>, JoinHandle<()>)>,
    captions: Option<CaptionWorkerHandle>,
    stop: Arc<AtomicBool>,
}

impl RunningStreams {
    /// Starts the pipeline on `store` and every stream of `plans`.
    pub fn start(
        plans: &[StreamPlan],
        parts: &StreamModels,
        settings: &DaemonSettings,
        store: Store,
        statuses: &StreamStatuses,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pipeline = Pipeline::start(
            PipelineParts {
                model: parts.model.clone(),
                tagger: parts.tagger.clone(),
                store: store.clone(),
            },
            &settings.pipeline,
            stop.clone(),
        );
        let captions = parts.captioner.clone().map(|c| {
            CaptionWorker::spawn(
                c,
                store.clone(),
                settings.caption_nice,
                settings.caption_batch_size,
                pipeline.load(),
            )
        });
        // The pipeline stays open to new streams (reload), so the worker
        // runs until stop, idling when every file has finished.
        let mut running = Self {
            pipeline,
            ingest: Vec::new(),
            captions,
            stop,
        };
        for plan in plans {
            running.add_stream(plan, settings, &store, statuses);
        }
        running
    }

    /// Starts one stream's supervised ingest thread.
    pub fn add_stream(
        &mut self,
        plan: &StreamPlan,
        settings: &DaemonSettings,
        store: &Store,
        statuses: &StreamStatuses,
    ) {
        let stream = &plan.config;
        // Each stream has its own stop flag: reload stops one.
        let own_stop = Arc::new(AtomicBool::new(false));
        let supervisor = Supervisor {
            spec: SourceSpec {
                stream: stream.name.as_str().into(),
                kind: plan.kind.clone(),
                sample_fps: stream.sample_fps.unwrap_or(settings.sample_fps),
                rtsp_transport: stream.rtsp_transport,
                latency_ms: stream.latency_ms,
                file_start_ns: None,
                decode: stream.decode.unwrap_or(settings.decode),
                skip_decoders: Vec::new(),
            },
            status: StatusSlot::register(statuses, &stream.name),
            preprocessing: self.pipeline.preprocessing().clone(),
            input: self.pipeline.input(),
            stop: own_stop.clone(),
            store: store.clone(),
            backoff: settings.backoff,
            max_file_attempts: settings.max_file_attempts,
        };
        let handle = std::thread::Builder::new()
            .name(format!("ingest-{}", stream.name))
            .spawn(move || supervisor.run())
            .expect("spawn an ingest thread");
        self.ingest.push((plan.clone(), own_stop, handle));
    }

    /// Stops one stream and waits for its thread; its frames in flight are
    /// stored. The worker then ends the source: a live one closes its open
    /// segment, a file keeps its checkpoint to go on when it comes back.
    pub fn remove_stream(&mut self, plan: &StreamPlan) {
        let name = &plan.config.name;
        let Some(i) = self
            .ingest
            .iter()
            .position(|(p, _, _)| &p.config.name == name)
        else {
            return;
        };
        let (running, stop, handle) = self.ingest.remove(i);
        stop.store(true, Ordering::Relaxed);
        let _ = handle.join();
        let _ = self.pipeline.input().send(IngestEvent::SourceEnded {
            key: SourceKey {
                stream: name.as_str().into(),
                source_id: SourceId::of(&running.kind),
            },
            complete: false,
        });
    }

    /// The pipeline's load (watchdog, liveness).
    pub fn load(&self) -> Arc<PipelineLoad> {
        self.pipeline.load()
    }

    /// Resolves when the worker dies or the store refuses a write.
    pub async fn ended(&self) -> RunEnd {
        let load = self.pipeline.load();
        loop {
            if !load.worker_alive() {
                return RunEnd::WorkerDied;
            }
            if let Some(error) = load.store_failure() {
                return RunEnd::StoreUnwritable(error);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops ingest, lets the worker store its open batch and flush, stops
    /// the caption worker (its backlog stays queued); returns the totals.
    /// Blocking: call it on a blocking thread.
    pub fn stop(self) -> Result<PipelineTotals, WorkerDied> {
        self.stop.store(true, Ordering::Relaxed);
        for (_, stop, _) in &self.ingest {
            stop.store(true, Ordering::Relaxed);
        }
        for (_, _, t) in self.ingest {
            let _ = t.join();
        }
        // Every other sender is gone now: the worker stores its open batch
        // and flushes.
        let totals = self.pipeline.finish();
        if let Some(c) = self.captions {
            let left = c.backlog();
            let done = c.stop();
            tracing::info!(captioned = done.captioned, left, "Caption worker stopped.");
        }
        totals
    }
}
