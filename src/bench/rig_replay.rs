//! `bench rig`, second part: the same clips replayed through the pipeline
//! without and with the rig; the rig metrics are read through an
//! in-process metrics recorder (the one `roadrep run` exports is not
//! installed here).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

use super::rig::RigBenchSettings;
use crate::fuse::config::{RigConfig, RigLayout, RigRole};
use crate::fuse::fuser::RigFuser;
use crate::fuse::model::FusionModel;
use crate::models::ClipModel;
use crate::pipeline::{Pipeline, PipelineParts, PipelineSettings, RigSetup, metrics};
use crate::replay::rig::{RigReplaySettings, RigViewFile, replay_rig};
use crate::replay::{FileReport, ReplayProgress};
use crate::tagging::SceneTagger;

/// One replay of the clips.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRun {
    /// The warm-up run, left out of the medians.
    pub warmup: bool,
    /// Whether the rig was assembled.
    pub rig: bool,
    /// Wall time from pipeline start to everything stored, seconds.
    pub secs: f64,
    /// Frames stored.
    pub frames: u64,
    /// Frames of the anchor role's clip.
    pub anchor_frames: u64,
    /// Rig records written.
    pub records: u64,
    /// Of those, records with a view absent.
    pub partial_records: u64,
    /// Time the worker spent fusing and tagging them
    /// (`roadrep_rig_fusion_seconds`, summed), seconds.
    pub fusion_s: f64,
}

/// The replays and what they recorded.
pub(super) struct Replays {
    /// ROLE, FILE; the first role is the anchor.
    pub clips: Vec<(String, PathBuf)>,
    /// In the order run, the warm-up first.
    pub runs: Vec<ReplayRun>,
    /// Every record's assembly wait (rig runs), ms.
    pub waits: Vec<f64>,
}

/// A warm-up replay without the rig, then `replay_runs` without and with
/// it, alternating.
pub(super) fn run_replays(
    model: &Arc<ClipModel>,
    tagger: &Arc<SceneTagger>,
    fusion: &Arc<FusionModel>,
    settings: &RigBenchSettings,
    progress: &mut impl FnMut(&str),
) -> Result<Replays, String> {
    let sink = metrics_sink()?;
    let clips = replay_clips(settings, fusion.roles(), progress)?;
    let layout = RigLayout::new(
        &RigConfig {
            name: "bench".into(),
            anchor: None,
            tolerance_ms: None,
            max_wait_ms: 500,
        },
        clips
            .iter()
            .map(|(role, _)| RigRole {
                role: role.clone(),
                camera: format!("bench-{role}"),
            })
            .collect(),
        (1e9 / settings.sample_fps) as u64,
        false,
    )?;
    let fuser = RigFuser::Model(fusion.clone());
    fuser.check_roles(&layout)?;
    let mut replays = Vec::new();
    let mut waits = Vec::new();
    // A warm-up replay (GStreamer's plugins, the decoders' first use) first.
    for i in 0..settings.replay_runs.max(1) * 2 + 1 {
        let (warmup, rig) = (i == 0, i % 2 == 0 && i > 0);
        sink.reset();
        let run = replay_once(model, tagger, settings, &clips, &layout, &fuser, rig)?;
        let run = ReplayRun {
            warmup,
            records: sink.records.load(Ordering::Relaxed),
            partial_records: sink.partial.load(Ordering::Relaxed),
            fusion_s: *sink.fusion_secs.lock().unwrap_or_else(|p| p.into_inner()),
            ..run
        };
        waits.extend(sink.take_waits());
        progress(&format!(
            "replay {}: {} frames in {:.2} s, {} rig records",
            if warmup {
                "(warm-up)"
            } else if rig {
                "with the rig"
            } else {
                "without"
            },
            run.frames,
            run.secs,
            run.records
        ));
        replays.push(run);
    }
    Ok(Replays {
        clips,
        runs: replays,
        waits,
    })
}

/// The given clips, or one generated clip per role.
fn replay_clips(
    settings: &RigBenchSettings,
    roles: &[String],
    progress: &mut impl FnMut(&str),
) -> Result<Vec<(String, PathBuf)>, String> {
    if !settings.clips.is_empty() {
        return Ok(settings.clips.clone());
    }
    if settings.generate_roles == 0 || settings.generate_roles > roles.len() {
        return Err(format!(
            "--rig-clips {}: the fusion model has {} roles",
            settings.generate_roles,
            roles.len()
        ));
    }
    const PATTERNS: [&str; 6] = ["ball", "smpte", "pinwheel", "spokes", "zone-plate", "snow"];
    roles[..settings.generate_roles]
        .iter()
        .zip(PATTERNS)
        .map(|(role, pattern)| {
            let path = PathBuf::from(format!(
                "target/bench-rig-{role}-{}s.mp4",
                settings.generate_secs
            ));
            if !path.is_file() {
                progress(&format!("generating {} ({pattern})", path.display()));
                super::generate_clip_pattern(&path, settings.generate_secs, pattern)?;
            }
            Ok((role.clone(), path))
        })
        .collect()
}

/// One replay of every clip at once into a fresh store.
fn replay_once(
    model: &Arc<ClipModel>,
    tagger: &Arc<SceneTagger>,
    settings: &RigBenchSettings,
    clips: &[(String, PathBuf)],
    layout: &RigLayout,
    fuser: &RigFuser,
    rig: bool,
) -> Result<ReplayRun, String> {
    let tmp = std::env::temp_dir().join(format!("roadrep-bench-rig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let store = crate::store::Store::open(&tmp, model.fingerprint(), model.embed_dim())
        .map_err(|e| e.to_string())?;
    // Recordings started together, each camera a little later than the last.
    let start_ns = 1_700_000_000_000_000_000i64;
    let views: Vec<RigViewFile> = clips
        .iter()
        .zip(&layout.roles)
        .enumerate()
        .map(|(i, ((role, file), r))| RigViewFile {
            role: role.clone(),
            camera: r.camera.clone(),
            file: file.clone(),
            start_ns: Some(start_ns + i as i64 * 13_000_000),
        })
        .collect();
    let start = Instant::now();
    let pipeline = Pipeline::start(
        PipelineParts {
            model: model.clone(),
            tagger: tagger.clone(),
            store: store.clone(),
        },
        &PipelineSettings {
            queue_frames: 32,
            batcher: settings.batcher.clone(),
            segments: None,
            caption_preprocess: None,
            max_caption_backlog: 1,
            thumbnail_width: 0,
            keyframe_width: 0,
            rigs: rig.then(|| RigSetup {
                layouts: vec![layout.clone()],
                fuser: fuser.clone(),
                status: Default::default(),
            }),
        },
        Arc::new(AtomicBool::new(false)),
    );
    let replay_settings = RigReplaySettings {
        views,
        sample_fps: settings.sample_fps,
        decode: crate::ingest::config::DecodeMode::Exact,
    };
    let report = replay_rig(pipeline, &replay_settings, &Quiet).map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&tmp);
    if let Some(f) = report.files.iter().find(|f| f.error.is_some()) {
        return Err(format!(
            "{}: {}",
            f.file.display(),
            f.error.as_ref().unwrap()
        ));
    }
    if !report.all_ok() {
        return Err(format!("replay failed: {:?}", report.totals));
    }
    Ok(ReplayRun {
        warmup: false,
        rig,
        secs,
        frames: report.totals.frames,
        anchor_frames: report.files.first().map_or(0, |f| f.frames),
        records: 0,
        partial_records: 0,
        fusion_s: 0.0,
    })
}

struct Quiet;
impl ReplayProgress for Quiet {
    fn file_started(&self, _: &Path, _: &str, _: Option<u64>) {}
    fn tick(&self, _: u64, _: u64, _: u64) {}
    fn file_finished(&self, _: &FileReport) {}
}

/// What the in-process recorder keeps of the rig metrics.
#[derive(Default)]
struct RigSink {
    waits: Mutex<Vec<f64>>,
    /// Fusing and tagging in the worker, summed, seconds.
    fusion_secs: Mutex<f64>,
    records: AtomicU64,
    partial: AtomicU64,
}

impl RigSink {
    fn reset(&self) {
        self.take_waits();
        *self.fusion_secs.lock().unwrap_or_else(|p| p.into_inner()) = 0.0;
        self.records.store(0, Ordering::Relaxed);
        self.partial.store(0, Ordering::Relaxed);
    }

    /// Waits recorded since the last take, ms.
    fn take_waits(&self) -> Vec<f64> {
        let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *w)
            .into_iter()
            .map(|s| s * 1e3)
            .collect()
    }
}

struct Waits(Arc<RigSink>);
impl ::metrics::HistogramFn for Waits {
    fn record(&self, value: f64) {
        self.0
            .waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(value);
    }
}

struct FusionSecs(Arc<RigSink>);
impl ::metrics::HistogramFn for FusionSecs {
    fn record(&self, value: f64) {
        *self.0.fusion_secs.lock().unwrap_or_else(|p| p.into_inner()) += value;
    }
}

/// A recorder that keeps the rig's record count, partial count and
/// assembly waits, and drops every other metric.
struct SinkRecorder(Arc<RigSink>);
impl ::metrics::Recorder for SinkRecorder {
    fn describe_counter(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }
    fn register_counter(
        &self,
        key: &::metrics::Key,
        _: &::metrics::Metadata<'_>,
    ) -> ::metrics::Counter {
        let sink = self.0.clone();
        match key.name() {
            metrics::RIG_RECORDS => ::metrics::Counter::from_arc(Arc::new(CounterOf(sink, false))),
            metrics::RIG_PARTIAL_RECORDS => {
                ::metrics::Counter::from_arc(Arc::new(CounterOf(sink, true)))
            }
            _ => ::metrics::Counter::noop(),
        }
    }
    fn register_gauge(&self, _: &::metrics::Key, _: &::metrics::Metadata<'_>) -> ::metrics::Gauge {
        ::metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &::metrics::Key,
        _: &::metrics::Metadata<'_>,
    ) -> ::metrics::Histogram {
        match key.name() {
            metrics::RIG_ASSEMBLY_SECONDS => {
                ::metrics::Histogram::from_arc(Arc::new(Waits(self.0.clone())))
            }
            metrics::RIG_FUSION_SECONDS => {
                ::metrics::Histogram::from_arc(Arc::new(FusionSecs(self.0.clone())))
            }
            _ => ::metrics::Histogram::noop(),
        }
    }
}

struct CounterOf(Arc<RigSink>, bool);
impl ::metrics::CounterFn for CounterOf {
    fn increment(&self, value: u64) {
        let c = if self.1 {
            &self.0.partial
        } else {
            &self.0.records
        };
        c.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        let c = if self.1 {
            &self.0.partial
        } else {
            &self.0.records
        };
        c.fetch_max(value, Ordering::Relaxed);
    }
}

/// The process's rig metrics sink, installing its recorder the first time.
fn metrics_sink() -> Result<Arc<RigSink>, String> {
    static SINK: OnceLock<Result<Arc<RigSink>, String>> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = Arc::new(RigSink::default());
        ::metrics::set_global_recorder(SinkRecorder(sink.clone()))
            .map(|()| sink)
            .map_err(|_| "another metrics recorder is installed in this process".to_string())
    })
    .clone()
}
