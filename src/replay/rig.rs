//! `roadrep replay --rig NAME ROLE=FILE...`: one recording per camera of a
//! rig, replayed together so the rig assembler sees their frames side by
//! side. Each file's pts 0 is placed at its recording start: `--start
//! ROLE=TIME`, else the container's creation time tag, else modification
//! time minus duration. Idempotent and resumable like single-camera
//! replay: each file keeps its own checkpoint, and rig records depend only
//! on frame times.

use std::path::PathBuf;

use super::{FileJob, FileReport, ReplayProgress, ReplayReport, finish, replay_file};
use crate::ingest::config::{DecodeMode, SourceKind};
use crate::ingest::probe::probe_file;
use crate::pipeline::{IngestEvent, Pipeline, SourceId, SourceKey};
use crate::store::StoreError;

/// One camera of the rig and its recording.
#[derive(Debug, Clone)]
pub struct RigViewFile {
    /// Role in the rig.
    pub role: String,
    /// Camera (stream) name its frames are stored under.
    pub camera: String,
    /// The recording.
    pub file: PathBuf,
    /// Time of its pts 0, ns since the epoch; unset: from the file.
    pub start_ns: Option<i64>,
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct RigReplaySettings {
    /// One file per role.
    pub views: Vec<RigViewFile>,
    /// Frames kept per second of video.
    pub sample_fps: f64,
    /// Which frames are decoded.
    pub decode: DecodeMode,
}

/// Replays every view's file at once into `pipeline` (which assembles the
/// rig), then finishes it. A file that cannot be read fails on its own:
/// its role is absent from the records, the other views are stored.
pub fn replay_rig(
    pipeline: Pipeline,
    settings: &RigReplaySettings,
    progress: &dyn ReplayProgress,
) -> Result<ReplayReport, StoreError> {
    let tx = pipeline.input();
    let results: Vec<Result<FileReport, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = settings
            .views
            .iter()
            .map(|view| {
                let (tx, pipeline) = (tx.clone(), &pipeline);
                scope.spawn(move || {
                    let start = match view.start_ns {
                        Some(s) => Ok(s),
                        None => {
                            probe_file(&view.file, &view.camera).map(|p| p.start_ns().unwrap_or(0))
                        }
                    };
                    let start = match start {
                        Ok(s) => s,
                        Err(error) => {
                            // The role ends at once: records stop waiting for it.
                            let source_id = SourceId::of(&SourceKind::File(view.file.clone()));
                            let _ = tx.send(IngestEvent::SourceEnded {
                                key: SourceKey {
                                    stream: view.camera.as_str().into(),
                                    source_id,
                                },
                                complete: false,
                            });
                            let report = FileReport {
                                file: view.file.clone(),
                                camera: view.camera.clone(),
                                frames: 0,
                                decoded: 0,
                                skipped: 0,
                                resumed_after_pts_ns: None,
                                already_complete: false,
                                error: Some(error),
                            };
                            progress.file_finished(&report);
                            return Ok(report);
                        }
                    };
                    let job = FileJob {
                        file: view.file.clone(),
                        camera: view.camera.clone(),
                        sample_fps: settings.sample_fps,
                        decode: settings.decode,
                        file_start_ns: Some(start),
                    };
                    replay_file(pipeline, &tx, &job, progress)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    drop(tx);
    let mut reports = Vec::new();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(report) => reports.push(report),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let report = finish(pipeline, reports);
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
