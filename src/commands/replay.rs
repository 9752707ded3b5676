//! `roadrep replay FILE...`: recorded clips into the store, with progress.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use indicatif::{ProgressBar, ProgressStyle};
use roadrep::caption::{CaptionWorker, Captioner};
use roadrep::config::RoadrepConfig;
use roadrep::ingest::config::SourceKind;
use roadrep::pipeline::{Pipeline, PipelineSettings, SourceId};
use roadrep::replay::{FileReport, ReplayProgress, ReplaySettings, replay};
use roadrep::store::Store;

use super::cli::ReplayArgs;

pub fn run(config_path: Option<&Path>, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let (report, _) = replay_clips(&config, args)?;
    Ok(if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Replays `args.files` (tagging, segments, then the caption backlog) and
/// prints how it went; returns the report and the open store.
pub fn replay_clips(
    config: &RoadrepConfig,
    args: &ReplayArgs,
) -> anyhow::Result<(roadrep::replay::ReplayReport, Store)> {
    let store_path = args
        .store
        .clone()
        .unwrap_or_else(|| config.store.path.clone());
    let sample_fps = args.fps.unwrap_or(config.ingest.sample_fps);
    anyhow::ensure!(
        sample_fps > 0.0 && sample_fps <= 120.0,
        "--fps must be in (0, 120]"
    );
    let decode = args.decode.unwrap_or(config.ingest.decode);
    // A rig's files and layout are checked before anything is loaded.
    let rig = args
        .rig
        .as_deref()
        .map(|name| super::rig::replay_plan(config, name, args, sample_fps))
        .transpose()?;
    let mut parts = super::load_parts(config, &store_path)?;
    // Attached before the pipeline takes its store handle, so its writes
    // queue their messages.
    let uplink = match &config.uplink {
        Some(u) => Some(super::uplink::ReplayUplink::start(
            u,
            &mut parts.store,
            args.camera.iter().cloned().collect(),
        )?),
        None => None,
    };
    let rigs = match &rig {
        Some(plan) => {
            let fuser = super::load_fuser(config, &parts.model)?;
            fuser
                .check_roles(&plan.layout)
                .map_err(|e| anyhow::anyhow!("--rig: {e}"))?;
            eprintln!(
                "replay: rig '{}' fused by {}",
                plan.layout.name,
                fuser.describe()
            );
            Some(roadrep::pipeline::RigSetup {
                layouts: vec![plan.layout.clone()],
                fuser,
                status: Default::default(),
            })
        }
        None => None,
    };
    anyhow::ensure!(
        args.start.len() <= 1 || rig.is_some(),
        "--start is given {} times: once per replay (or ROLE=TIME per role with --rig)",
        args.start.len()
    );
    let settings = ReplaySettings {
        files: args.files.clone(),
        camera: args.camera.clone(),
        sample_fps,
        decode,
        file_start_ns: args
            .start
            .first()
            .filter(|_| rig.is_none())
            .map(|s| roadrep::search::parse_time(s))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--start: {e}"))?,
    };
    // SIGINT/SIGTERM stop after the frames in flight are stored.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal exits at once (exit code 130).
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let progress = Progress::new();
    let pipeline = Pipeline::start(
        parts.pipeline_parts(),
        &PipelineSettings {
            queue_frames: config.ingest.queue_frames,
            batcher: config.batcher.clone(),
            segments: config.segments.enabled.then(|| config.segments.clone()),
            caption_preprocess: parts.caption_preprocess(config),
            max_caption_backlog: config.captions.max_backlog,
            thumbnail_width: config.store.thumbnail_width,
            keyframe_width: config.store.keyframe_width,
            rigs,
        },
        stop.clone(),
    );
    // Captions run alongside, whenever tagging is idle; what is left is
    // caught up after the last frame.
    let captions = parts.captioner.clone().map(|c| {
        CaptionWorker::spawn(
            c as Arc<dyn Captioner>,
            parts.store.clone(),
            config.captions.nice,
            config.captions.batch_size,
            pipeline.load(),
        )
    });
    let report = match &rig {
        Some(plan) => roadrep::replay::rig::replay_rig(
            pipeline,
            &roadrep::replay::rig::RigReplaySettings {
                views: plan.views.clone(),
                sample_fps,
                decode,
            },
            &progress,
        )?,
        None => replay(pipeline, &settings, &progress)?,
    };
    progress.bar.finish_and_clear();
    if let Some(failure) = &report.totals.store_failure {
        // Nothing more can be written; what is on disk is only known by
        // reopening the store (sled writes behind, so frames counted as
        // stored in memory may not have reached the disk).
        if let Some(c) = captions {
            c.stop();
        }
        let (fingerprint, dim) = (
            parts.model.fingerprint().to_string(),
            parts.model.embed_dim(),
        );
        drop(parts);
        let on_disk = match Store::open_with_index(&store_path, &fingerprint, dim, &config.search) {
            Ok(store) => on_disk(&store, &report),
            Err(e) => format!("cannot reopen the store to see what is on disk ({e})"),
        };
        anyhow::bail!(
            "{failure}; replay stopped at the first failed write. On disk: {on_disk}. Replay the same files again once there is space: it resumes after the last frame on disk"
        );
    }
    if let Some(c) = captions {
        let backlog = c.backlog();
        if backlog > 0 {
            eprintln!("replay: captioning {backlog} keyframes");
        }
        let plain = progress.plain;
        let bar = &if plain {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        let totals = c.drain(&stop, &|done, left| {
            if plain {
                return;
            }
            bar.set_message(format!("{done} captioned, {left} left"));
            bar.tick();
        });
        bar.finish_and_clear();
        if totals.captioned + totals.failed > 0 {
            eprintln!(
                "replay: {} captions ({} failed), {:.1} s in the captioner",
                totals.captioned, totals.failed, totals.seconds
            );
        }
    }
    for f in &report.files {
        match &f.error {
            Some(e) => eprintln!("error: {}: {e}", f.file.display()),
            None => eprintln!("{}", describe(f)),
        }
    }
    if report.totals.failed > 0 {
        eprintln!(
            "error: {} frames could not be stored (see the log); replay again to fill the gap",
            report.totals.failed
        );
    }
    eprintln!(
        "replay: {} frames stored ({} new), {} segments, {} batches, {:.1} s in the image encoder",
        report.totals.frames,
        report.totals.new_frames,
        report.totals.segments,
        report.totals.batches,
        report.totals.inference_secs
    );
    if let (Some(u), Some(c)) = (uplink, &config.uplink) {
        u.finish(std::time::Duration::from_secs(c.drain_secs), &stop);
    }
    Ok((report, parts.store))
}

/// What the store holds of each replayed file (its checkpoint), read from
/// a store reopened after a failed write.
fn on_disk(store: &Store, report: &roadrep::replay::ReplayReport) -> String {
    let lines: Vec<String> = report
        .files
        .iter()
        .map(|f| {
            let source = SourceId::of(&SourceKind::File(f.file.clone()));
            let checkpoint = store
                .stream_id(&f.camera)
                .and_then(|id| store.checkpoint(id, source.as_str()));
            match checkpoint {
                Ok(Some(c)) => format!(
                    "{} {} frames (to {:.2} s)",
                    f.file.display(),
                    c.frames,
                    c.last_pts_ns.unwrap_or(0) as f64 / 1e9
                ),
                Ok(None) => format!("{} none", f.file.display()),
                Err(e) => format!("{} unknown ({e})", f.file.display()),
            }
        })
        .collect();
    lines.join(", ")
}

fn describe(f: &FileReport) -> String {
    let file = f.file.display();
    if f.already_complete {
        return format!(
            "{file}: already replayed for camera '{}', nothing to do",
            f.camera
        );
    }
    let resumed = f.resumed_after_pts_ns.map_or(String::new(), |p| {
        format!(", resumed after {:.2} s", p as f64 / 1e9)
    });
    // What the decode mode saved: pictures decoded, frames never decoded.
    format!(
        "{file}: {} frames for camera '{}'{resumed} ({} pictures decoded, {} never decoded)",
        f.frames, f.camera, f.decoded, f.skipped
    )
}

/// A spinner on a terminal; plain progress lines otherwise (logs, tests).
struct Progress {
    bar: ProgressBar,
    plain: bool,
    last_stored: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Self {
        let plain = !std::io::stderr().is_terminal();
        let bar = if plain {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                .expect("valid template"),
        );
        Self {
            bar,
            plain,
            last_stored: 0.into(),
        }
    }
}

impl ReplayProgress for Progress {
    fn file_started(&self, file: &Path, camera: &str, resumed: Option<u64>) {
        self.bar
            .set_prefix(format!("{} ({camera})", file.display()));
        if let Some(p) = resumed {
            let line = format!("{}: resuming after {:.2} s", file.display(), p as f64 / 1e9);
            // A hidden bar (not a terminal) prints nothing.
            if self.plain {
                eprintln!("{line}");
            } else {
                self.bar.println(line);
            }
        }
    }

    fn tick(&self, delivered: u64, last_pts_ns: u64, stored_total: u64) {
        let msg = format!(
            "{:.1} s of video, {delivered} frames decoded, {stored_total} stored",
            last_pts_ns as f64 / 1e9
        );
        if self.plain {
            let last = self
                .last_stored
                .swap(stored_total, std::sync::atomic::Ordering::Relaxed);
            if last != stored_total {
                eprintln!("replay: {msg}");
            }
        } else {
            self.bar.set_message(msg);
            self.bar.tick();
        }
    }

    fn file_finished(&self, _report: &FileReport) {}
}
