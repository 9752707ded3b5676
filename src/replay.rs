//! Replay of recorded clips into the store (`roadrep replay`).
//!
//! Files are decoded one after another on an ingest thread while the
//! inference worker embeds, tags and stores the previous frames, so decoding
//! and inference overlap. Replay is:
//! - idempotent: frame keys are (camera, file time + pts), so replaying a
//!   clip again rewrites the same keys, and a clip whose checkpoint says
//!   complete is skipped;
//! - resumable: every stored batch carries its source's checkpoint (last
//!   pts) in the same transaction, so after a kill the next run continues
//!   after the last stored frame: no gaps, no duplicates.
//!
//! A file that cannot be read fails on its own; the others go on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::batcher::BatcherConfig;
use crate::frame::IngestEvent;
use crate::infer::{InferenceTotals, InferenceWorker};
use crate::ingest::config::{RtspTransport, SourceKind};
use crate::ingest::source::{
    IngestError, SourceCounters, SourceEnd, SourceSpec, run_source, source_identity,
};
use crate::models::preprocess::FramePreprocessing;
use crate::models::{ClipModel, ImagePreprocessor};
use crate::segment::SegmenterConfig;
use crate::store::{Store, StoreError};
use crate::tagging::SceneTagger;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// Clips, in order.
    pub files: Vec<PathBuf>,
    /// Camera name for every file; unset: each file's stem.
    pub camera: Option<String>,
    /// Frames kept per second of video.
    pub sample_fps: f64,
    /// Time of pts 0 for every file, ns since the epoch; unset: each file's
    /// modification time.
    pub file_start_ns: Option<i64>,
    /// Frames queued between decoding and inference.
    pub queue_frames: usize,
    /// Batching.
    pub batcher: BatcherConfig,
    /// Scene segmentation; `None`: off.
    pub segments: Option<SegmenterConfig>,
    /// The captioner's input size, when captioning is on: frames keep a
    /// resized copy so their segment's keyframe can be captioned.
    pub caption_preprocess: Option<ImagePreprocessor>,
}

/// How one file went.
#[derive(Debug)]
pub struct FileReport {
    /// The clip.
    pub file: PathBuf,
    /// Its camera.
    pub camera: String,
    /// Frames decoded and delivered in this run.
    pub frames: u64,
    /// Pts the run resumed after (an earlier run was interrupted).
    pub resumed_after_pts_ns: Option<u64>,
    /// Skipped: an earlier run completed it.
    pub already_complete: bool,
    /// Error, if the file failed.
    pub error: Option<IngestError>,
}

/// The whole run.
#[derive(Debug)]
pub struct ReplayReport {
    /// Per file, in order.
    pub files: Vec<FileReport>,
    /// Inference and store totals.
    pub totals: InferenceTotals,
}

impl ReplayReport {
    /// Whether every file was read and every frame stored.
    pub fn all_ok(&self) -> bool {
        self.files.iter().all(|f| f.error.is_none()) && self.totals.failed == 0
    }
}

/// Progress callbacks (the CLI draws bars from them).
pub trait ReplayProgress: Send + Sync {
    /// A file starts.
    fn file_started(&self, file: &std::path::Path, camera: &str, resumed_after_pts_ns: Option<u64>);
    /// Periodic: frames delivered, last pts, frames stored by the worker.
    fn tick(&self, delivered: u64, last_pts_ns: u64, stored_total: u64);
    /// A file ended.
    fn file_finished(&self, report: &FileReport);
}

/// Camera name of a file when none is given: its stem.
pub fn default_camera(file: &std::path::Path) -> String {
    file.file_stem()
        .map_or_else(|| "camera".into(), |s| s.to_string_lossy().into_owned())
}

/// Replays `settings.files` into `store`. `stop` ends the run early (the
/// checkpoint keeps what was stored).
pub fn replay(
    model: Arc<ClipModel>,
    tagger: Arc<SceneTagger>,
    store: Store,
    settings: &ReplaySettings,
    stop: Arc<AtomicBool>,
    progress: &dyn ReplayProgress,
) -> Result<ReplayReport, StoreError> {
    if settings.file_start_ns.is_some() && settings.files.len() > 1 && settings.camera.is_some() {
        // Frame keys are (camera, start + pts): one start for several clips
        // of one camera would make them overwrite each other.
        return Err(StoreError::Sled {
            path: store.path().to_path_buf(),
            message: "--start applies to one clip per camera: replay the clips one at a time"
                .into(),
        });
    }
    let (tx, rx) = sync_channel::<IngestEvent>(settings.queue_frames.max(1));
    let stored = Arc::new(AtomicU64::new(0));
    let worker = InferenceWorker::new(
        model.clone(),
        tagger,
        store.clone(),
        settings.batcher.clone(),
    )
    .with_stored_counter(stored.clone());
    let worker = match &settings.segments {
        Some(config) => worker.with_segments(config.clone()),
        None => worker,
    };
    let worker = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || worker.run(rx))
        .expect("spawn the inference thread");

    let preprocessor = FramePreprocessing {
        clip: model.preprocessor().clone(),
        caption: settings.caption_preprocess.clone(),
    };
    let mut reports = Vec::new();
    for file in &settings.files {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let camera = settings
            .camera
            .clone()
            .unwrap_or_else(|| default_camera(file));
        let kind = SourceKind::File(file.clone());
        let identity = source_identity(&kind);
        let checkpoint = store.checkpoint(store.stream_id(&camera)?, &identity)?;
        let mut report = FileReport {
            file: file.clone(),
            camera: camera.clone(),
            frames: 0,
            resumed_after_pts_ns: checkpoint.as_ref().and_then(|c| c.last_pts_ns),
            already_complete: checkpoint.as_ref().is_some_and(|c| c.complete),
            error: None,
        };
        let interval = crate::ingest::sampler::FrameSampler::interval_ns(settings.sample_fps);
        if let Some(c) = checkpoint
            .as_ref()
            .filter(|c| c.sample_interval_ns != 0 && c.sample_interval_ns != interval)
        {
            let fps = 1e9 / c.sample_interval_ns as f64;
            report.already_complete = false;
            report.error = Some(IngestError::Checkpoint {
                stream: camera.clone(),
                message: format!(
                    "already replayed at {fps} fps; replay it with --fps {fps}, or under another --camera to sample it at {} fps",
                    settings.sample_fps
                ),
            });
            progress.file_finished(&report);
            reports.push(report);
            continue;
        }
        if report.already_complete {
            progress.file_finished(&report);
            reports.push(report);
            continue;
        }
        progress.file_started(file, &camera, report.resumed_after_pts_ns);
        let spec = SourceSpec {
            stream: camera.as_str().into(),
            kind,
            sample_fps: settings.sample_fps,
            rtsp_transport: RtspTransport::Tcp,
            latency_ms: 0,
            file_start_ns: settings.file_start_ns,
        };
        let counters = Arc::new(SourceCounters::default());
        let result: Mutex<Option<Result<SourceEnd, IngestError>>> = Mutex::new(None);
        std::thread::scope(|scope| {
            let ingest = scope.spawn(|| {
                let r = run_source(
                    &spec,
                    &preprocessor,
                    &tx,
                    &stop,
                    report.resumed_after_pts_ns,
                    &counters,
                );
                *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
            // Short polls: the end of a file should not wait for a tick.
            let mut ticks = 0u32;
            while !ingest.is_finished() {
                std::thread::sleep(Duration::from_millis(20));
                ticks += 1;
                if !ticks.is_multiple_of(10) {
                    continue;
                }
                progress.tick(
                    counters.delivered.load(Ordering::Relaxed),
                    counters.last_pts_ns.load(Ordering::Relaxed),
                    stored.load(Ordering::Relaxed),
                );
            }
        });
        report.frames = counters.delivered.load(Ordering::Relaxed);
        let outcome = result.into_inner().unwrap_or_else(|p| p.into_inner());
        let complete = matches!(outcome, Some(Ok(SourceEnd::Eos)));
        if let Some(Err(e)) = outcome {
            report.error = Some(e);
        }
        let _ = tx.send(IngestEvent::SourceEnded {
            stream: spec.stream.clone(),
            source: identity.into(),
            complete,
        });
        progress.file_finished(&report);
        reports.push(report);
    }
    drop(tx);
    let totals = worker.join().unwrap_or_else(|_| {
        tracing::error!("The inference thread panicked.");
        InferenceTotals {
            failed: u64::MAX,
            ..Default::default()
        }
    });
    Ok(ReplayReport {
        files: reports,
        totals,
    })
}
