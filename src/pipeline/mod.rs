//! The frame path, in one place: from the ingest threads' frames to the
//! store.
//!
//! ```text
//! ingest threads --FrameSender--> one bounded queue per stream
//!   --(round robin)--> Worker (own thread)
//!                        |- BatchAssembler   batch.rs
//!                        |- FrameEmbedder    embed.rs (CLIP + tags)
//!                        |- SourceTracker    sources.rs (checkpoints, resume)
//!                        |- SegmentTracker   segments.rs
//!                        |- RigTracker       rigs.rs (rig records, fusion)
//!                        '- Store::write     one transaction per batch
//! PipelineLoad (load.rs): queued frames, running batch, heartbeat, stored
//!   frames, shared by handle with ingest, the caption worker and the daemon.
//! ```
//!
//! `roadrep run`, `roadrep replay` and the benchmarks all start it the same
//! way, with [`Pipeline::start`], feed it through [`Pipeline::input`] and
//! end it with [`Pipeline::finish`]. Ingest checks the pipeline's shutdown
//! flag; the worker stops when the last sender is gone, after storing what
//! it holds.

pub mod batch;
pub mod embed;
pub mod frame;
pub mod load;
pub mod metrics;
pub mod rigs;
pub mod segments;
pub mod sources;
mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

pub use batch::BatcherConfig;
pub use frame::{Frame, IngestEvent, SourceId, SourceKey};
pub use load::{FrameReceiver, FrameSender, PipelineClosed, PipelineLoad, frame_channel};
pub use sources::{ResumePoint, SourceTracker};
pub use worker::PipelineTotals;

use crate::models::ClipModel;
use crate::models::preprocess::FramePreprocessing;
use crate::segment::SegmenterConfig;
use crate::store::Store;
use crate::tagging::SceneTagger;

/// What the pipeline runs on.
#[derive(Clone)]
pub struct PipelineParts {
    /// The CLIP model.
    pub model: Arc<ClipModel>,
    /// The zero-shot tagger.
    pub tagger: Arc<SceneTagger>,
    /// The store.
    pub store: Store,
}

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Frames queued between ingest and the worker.
    pub queue_frames: usize,
    /// Batching.
    pub batcher: BatcherConfig,
    /// Scene segmentation; `None`: off.
    pub segments: Option<SegmenterConfig>,
    /// The captioner's input size, when captioning is on: frames keep a
    /// resized copy so their segment's keyframe can be captioned.
    pub caption_preprocess: Option<crate::models::ImagePreprocessor>,
    /// Most keyframes queued for captions; the oldest beyond it are dropped.
    pub max_caption_backlog: usize,
    /// Width of the thumbnail stored with each frame; 0: none.
    pub thumbnail_width: u32,
    /// Width of the picture kept of each segment's keyframe; 0: none.
    pub keyframe_width: u32,
    /// Multi-camera rigs and their fuser; `None`: no rigs.
    pub rigs: Option<RigSetup>,
}

/// The rigs a pipeline assembles, and what fuses their views.
#[derive(Debug, Clone)]
pub struct RigSetup {
    /// The rigs.
    pub layouts: Vec<crate::fuse::config::RigLayout>,
    /// Fusion model or mean of the views.
    pub fuser: crate::fuse::fuser::RigFuser,
    /// Where the rigs' counters are published (`/health`).
    pub status: rigs::RigStatusBoard,
}

/// A running pipeline.
pub struct Pipeline {
    /// The pipeline's own sender; `None` once sealed.
    input: Option<FrameSender>,
    load: Arc<PipelineLoad>,
    preprocessing: FramePreprocessing,
    store: Store,
    shutdown: Arc<AtomicBool>,
    worker: JoinHandle<PipelineTotals>,
}

/// The worker thread panicked: what it held is lost (the store keeps what
/// it wrote; checkpoints never claim more).
#[derive(Debug, thiserror::Error)]
#[error("the inference worker stopped unexpectedly; see the log")]
pub struct WorkerDied;

impl Pipeline {
    /// Starts the worker thread. Ingest stops when `shutdown` is set.
    pub fn start(
        parts: PipelineParts,
        settings: &PipelineSettings,
        shutdown: Arc<AtomicBool>,
    ) -> Self {
        let load = PipelineLoad::new();
        let (input, rx) = frame_channel(settings.queue_frames, load.clone());
        let preprocessing = FramePreprocessing {
            clip: parts.model.preprocessor().clone(),
            caption: settings.caption_preprocess.clone(),
            thumbnail: crate::ingest::thumbnail::ThumbnailMaker::new(settings.thumbnail_width),
            // Keyframes come from segments.
            keyframe: settings.segments.as_ref().and_then(|_| {
                crate::ingest::thumbnail::ThumbnailMaker::keyframe(settings.keyframe_width)
            }),
        };
        let store = parts.store.clone();
        let rigs = settings.rigs.clone().and_then(|setup| {
            let mut seeded = Vec::new();
            let started = rigs::RigTracker::start(
                setup,
                parts.tagger.clone(),
                &parts.store,
                &mut seeded,
            )
            .and_then(|tracker| {
                // Records a restart completes from stored frames.
                if !seeded.is_empty() {
                    parts.store.write(&[], &[], &Default::default(), &seeded)?;
                }
                Ok(tracker)
            });
            match started {
                Ok(t) => Some(t),
                Err(error) => {
                    tracing::error!(%error, "Cannot start the rig assemblers; rig records are not written.");
                    None
                }
            }
        });
        let worker = worker::Worker {
            rigs,
            embedder: embed::FrameEmbedder::new(parts.model, parts.tagger),
            sources: SourceTracker::new(parts.store.clone()),
            segments: settings
                .segments
                .clone()
                .map(|c| segments::SegmentTracker::new(parts.store.clone(), c)),
            store: parts.store,
            load: load.clone(),
            max_caption_backlog: settings.max_caption_backlog,
            totals: PipelineTotals::default(),
        };
        let assembler = batch::BatchAssembler::new(&settings.batcher);
        let worker_load = load.clone();
        let worker = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                // Marks the pipeline dead if the worker unwinds.
                struct Alive(Arc<PipelineLoad>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        if std::thread::panicking() {
                            self.0.worker_died();
                        }
                    }
                }
                let _alive = Alive(worker_load);
                worker.run(rx, assembler)
            })
            .expect("spawn the inference thread");
        Self {
            input: Some(input),
            load,
            preprocessing,
            store,
            shutdown,
            worker,
        }
    }

    /// A sender for an ingest thread.
    ///
    /// # Panics
    /// After [`Pipeline::seal`]: no new source may join then.
    pub fn input(&self) -> FrameSender {
        self.input.clone().expect("Pipeline::input after seal")
    }

    /// No new senders: the worker drains, closes live segments and flushes
    /// as soon as the ingest threads' senders are gone (all streams
    /// finished), without waiting for [`Pipeline::finish`].
    pub fn seal(&mut self) {
        self.input = None;
    }

    /// The load handle (caption pacing, progress, liveness).
    pub fn load(&self) -> Arc<PipelineLoad> {
        self.load.clone()
    }

    /// How ingest preprocesses frames for this pipeline's models.
    pub fn preprocessing(&self) -> &FramePreprocessing {
        &self.preprocessing
    }

    /// The store the worker writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The shutdown flag ingest threads watch.
    pub fn shutdown(&self) -> &Arc<AtomicBool> {
        &self.shutdown
    }

    /// Waits for the worker to store everything sent so far, once every
    /// other sender is dropped; returns its totals.
    pub fn finish(self) -> Result<PipelineTotals, WorkerDied> {
        drop(self.input);
        self.worker.join().map_err(|_| WorkerDied)
    }
}
