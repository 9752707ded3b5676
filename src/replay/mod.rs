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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ingest::config::{RtspTransport, SourceKind};
use crate::ingest::source::{IngestError, SourceCounters, SourceEnd, SourceSpec, run_source};
use crate::pipeline::{
    IngestEvent, Pipeline, PipelineTotals, ResumePoint, SourceId, SourceKey, WorkerDied,
};
use crate::store::StoreError;

pub mod rig;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// Clips, in order.
    pub files: Vec<PathBuf>,
    /// Camera name for every file; unset: each file's stem.
    pub camera: Option<String>,
    /// Frames kept per second of video.
    pub sample_fps: f64,
    /// Which frames are decoded.
    pub decode: crate::ingest::config::DecodeMode,
    /// Time of pts 0 for every file, ns since the epoch; unset: each file's
    /// modification time.
    pub file_start_ns: Option<i64>,
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
    /// Pictures the decoder produced in this run (sampled or not).
    pub decoded: u64,
    /// Compressed frames never decoded (the decode mode and the GOP plan).
    pub skipped: u64,
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
    pub totals: PipelineTotals,
}

impl ReplayReport {
    /// Whether every file was read and every frame stored.
    pub fn all_ok(&self) -> bool {
        self.files.iter().all(|f| f.error.is_none())
            && self.totals.failed == 0
            && self.totals.store_failure.is_none()
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

/// Replays `settings.files` into `pipeline`, then finishes it. The
/// pipeline's shutdown flag ends the run early (the checkpoint keeps what
/// was stored).
pub fn replay(
    pipeline: Pipeline,
    settings: &ReplaySettings,
    progress: &dyn ReplayProgress,
) -> Result<ReplayReport, StoreError> {
    let store = pipeline.store().clone();
    if settings.file_start_ns.is_some() && settings.files.len() > 1 && settings.camera.is_some() {
        // Frame keys are (camera, start + pts): one start for several clips
        // of one camera would make them overwrite each other.
        return Err(StoreError::Sled {
            path: store.path().to_path_buf(),
            message: "--start applies to one clip per camera: replay the clips one at a time"
                .into(),
        });
    }
    let stop = pipeline.shutdown().clone();
    let load = pipeline.load();
    let tx = pipeline.input();
    let mut reports = Vec::new();
    for file in &settings.files {
        // A store that refused a write refuses every later one: stop.
        if stop.load(Ordering::Relaxed) || load.store_failure().is_some() {
            break;
        }
        let job = FileJob {
            file: file.clone(),
            camera: settings
                .camera
                .clone()
                .unwrap_or_else(|| default_camera(file)),
            sample_fps: settings.sample_fps,
            decode: settings.decode,
            file_start_ns: settings.file_start_ns,
        };
        reports.push(replay_file(&pipeline, &tx, &job, progress)?);
    }
    drop(tx);
    Ok(finish(pipeline, reports))
}

/// Waits for the worker to store what it holds; the report.
pub(crate) fn finish(pipeline: Pipeline, files: Vec<FileReport>) -> ReplayReport {
    let totals = pipeline.finish().unwrap_or_else(|WorkerDied| {
        tracing::error!("The inference thread panicked.");
        PipelineTotals {
            failed: u64::MAX,
            ..Default::default()
        }
    });
    ReplayReport { files, totals }
}

/// One file to replay as one camera.
#[derive(Debug, Clone)]
pub(crate) struct FileJob {
    pub file: PathBuf,
    pub camera: String,
    pub sample_fps: f64,
    pub decode: crate::ingest::config::DecodeMode,
    /// Time of pts 0; unset: the file's modification time minus duration.
    pub file_start_ns: Option<i64>,
}

/// Replays one file into the pipeline (resuming after its checkpoint),
/// then tells the worker it ended.
pub(crate) fn replay_file(
    pipeline: &Pipeline,
    tx: &crate::pipeline::FrameSender,
    job: &FileJob,
    progress: &dyn ReplayProgress,
) -> Result<FileReport, StoreError> {
    let store = pipeline.store();
    let stop = pipeline.shutdown();
    let load = pipeline.load();
    let (file, camera) = (&job.file, &job.camera);
    let kind = SourceKind::File(file.clone());
    let source_id = SourceId::of(&kind);
    let resume = ResumePoint::of(store, camera, &source_id, job.sample_fps)?;
    let mut report = FileReport {
        file: file.clone(),
        camera: camera.clone(),
        frames: 0,
        decoded: 0,
        skipped: 0,
        resumed_after_pts_ns: resume.after_pts(),
        already_complete: resume == ResumePoint::Complete,
        error: None,
    };
    if let ResumePoint::OtherRate { stored_interval_ns } = resume {
        let fps = 1e9 / stored_interval_ns as f64;
        report.error = Some(IngestError::Checkpoint {
            stream: camera.clone(),
            message: format!(
                "already replayed at {fps} fps; replay it with --fps {fps}, or under another --camera to sample it at {} fps",
                job.sample_fps
            ),
        });
    }
    if report.already_complete || report.error.is_some() {
        progress.file_finished(&report);
        return Ok(report);
    }
    progress.file_started(file, camera, report.resumed_after_pts_ns);
    let spec = SourceSpec {
        stream: camera.as_str().into(),
        kind,
        sample_fps: job.sample_fps,
        rtsp_transport: RtspTransport::Tcp,
        latency_ms: 0,
        file_start_ns: job.file_start_ns,
        decode: job.decode,
        skip_decoders: Vec::new(),
    };
    let counters = Arc::new(SourceCounters::default());
    let result: Mutex<Option<Result<SourceEnd, IngestError>>> = Mutex::new(None);
    std::thread::scope(|scope| {
        let ingest = scope.spawn(|| {
            let r = run_source(
                &spec,
                pipeline.preprocessing(),
                tx,
                stop,
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
                load.stored_frames(),
            );
        }
    });
    report.frames = counters.delivered.load(Ordering::Relaxed);
    report.decoded = counters.decoded.load(Ordering::Relaxed);
    report.skipped = counters.skipped.load(Ordering::Relaxed);
    let outcome = result.into_inner().unwrap_or_else(|p| p.into_inner());
    // A truncated file is done too: reading it again gives nothing
    // more; the report says what is missing.
    let complete = matches!(outcome, Some(Ok(end)) if end.is_end_of_data());
    match outcome {
        Some(Err(e)) => report.error = Some(e),
        Some(Ok(end)) => report.error = end.truncation_error(camera),
        None => {}
    }
    let _ = tx.send(IngestEvent::SourceEnded {
        key: SourceKey {
            stream: spec.stream.clone(),
            source_id,
        },
        complete,
    });
    progress.file_finished(&report);
    Ok(report)
}
