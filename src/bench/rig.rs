//! `roadrep bench rig`: what a rig record costs, in one process.
//!
//! 1. The CLIP image encoder per view (generated 1280x720 frames,
//!    preprocessed in batches as the pipeline does) and the fusion model
//!    per record, on records built from those embeddings (all views
//!    present, and some absent): their ratio is the fusion share of a
//!    record's cost.
//! 2. A replay of one clip per role through the real pipeline with the rig
//!    set up, against the same clips replayed without it: the throughput
//!    cost of assembly and fusion, and how long each record waited for its
//!    views after its anchor frame came (`roadrep_rig_assembly_seconds`,
//!    read through an in-process metrics recorder).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

pub use super::rig_replay::ReplayRun;
use super::rig_replay::{Replays, run_replays};
use super::synthetic_frame;
use crate::fuse::model::FusionModel;
use crate::models::{ClipModel, RgbFrame};
use crate::tagging::SceneTagger;

/// Distinct generated frames the encoder cycles through.
const FRAME_POOL: usize = 12;
/// Fusion runs are ~1000x shorter than CLIP runs: this many more repetitions.
const FUSION_REPS_FACTOR: usize = 10;

/// What `bench rig` measures.
#[derive(Debug, Clone)]
pub struct RigBenchSettings {
    /// Views per record (the first roles of the fusion model).
    pub views: usize,
    /// Records per repetition.
    pub records: usize,
    /// Batch sizes (frames per encoder run, records per fusion run).
    pub batch_sizes: Vec<usize>,
    /// Timed repetitions after one warm-up run (fusion: ten times as many).
    pub reps: usize,
    /// ROLE=FILE clips for the replay; empty: `generate_roles` clips are generated.
    pub clips: Vec<(String, PathBuf)>,
    /// Roles to generate clips for when `clips` is empty.
    pub generate_roles: usize,
    /// Length of generated clips, seconds (1280x720, 25 fps).
    pub generate_secs: u32,
    /// Frames kept per second in the replay.
    pub sample_fps: f64,
    /// Replays of each kind (without, then with the rig, alternating),
    /// after one warm-up replay without.
    pub replay_runs: usize,
    /// Batching of the pipeline.
    pub batcher: crate::pipeline::BatcherConfig,
}

/// Median and 95th percentile of timed runs, milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Millis {
    /// Median.
    pub median: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// Samples.
    pub samples: usize,
}

impl Millis {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len().max(1));
            ms.get(rank - 1).copied().unwrap_or(f64::NAN)
        };
        Self {
            median: at(0.5),
            p95: at(0.95),
            samples: ms.len(),
        }
    }
}

/// One batch size: CLIP per view, fusion per record, their ratio.
#[derive(Debug, Clone, Serialize)]
pub struct RigBatchResult {
    /// Frames per encoder run and records per fusion run.
    pub batch: usize,
    /// Preprocessing (resize, crop, normalise) per view, ms.
    pub preprocess_ms_per_view: Millis,
    /// Image encoder per view, ms.
    pub clip_ms_per_view: Millis,
    /// Fusion per record, every view present, ms.
    pub fusion_ms_per_record: Millis,
    /// Fusion per record with some views absent, ms.
    pub fusion_partial_ms_per_record: Millis,
    /// fusion per record / (CLIP per view x views), medians.
    pub fusion_over_clip: f64,
    /// The same for the records with absent views (present views only).
    pub fusion_partial_over_clip: f64,
}

/// Results of `bench rig`.
#[derive(Debug, Clone, Serialize)]
pub struct RigBenchReport {
    /// CLIP model name and fingerprint (16 hex digits).
    pub model: String,
    /// Image encoder precision.
    pub precision: crate::models::ImagePrecision,
    /// Fusion model name and fingerprint (16 hex digits).
    pub fusion: String,
    /// Views per record.
    pub views: usize,
    /// Records per repetition.
    pub records: usize,
    /// Present views per record with some absent, mean.
    pub partial_views_mean: f64,
    /// Per batch size.
    pub batches: Vec<RigBatchResult>,
    /// Replayed clips, ROLE=FILE (the first role is the anchor).
    pub clips: Vec<String>,
    /// Frames kept per second in the replays.
    pub sample_fps: f64,
    /// Replays, in the order run.
    pub replays: Vec<ReplayRun>,
    /// Median replay time with the rig / without, same clips.
    pub rig_over_plain: f64,
    /// Each replay with the rig / the one without just before it.
    pub rig_over_plain_paired: Vec<f64>,
    /// Fusing and tagging records in the worker / replay time, median of
    /// the runs with the rig.
    pub fusion_share_of_replay: f64,
    /// Fusing and tagging in the worker per record, ms (all rig runs).
    pub fusion_ms_per_record_in_pipeline: f64,
    /// How long each record waited for its views after its anchor frame, ms.
    pub assembly_wait_ms: Millis,
    /// Longest wait, ms.
    pub assembly_wait_max_ms: f64,
    /// Mean wait, ms.
    pub assembly_wait_mean_ms: f64,
    /// Records that waited at all (over 1 ms): their anchor frame came
    /// before another role's frame at or after its time.
    pub assembly_waited_records: usize,
}

/// Runs both parts.
pub fn bench_rig(
    model: Arc<ClipModel>,
    tagger: Arc<SceneTagger>,
    fusion: Arc<FusionModel>,
    settings: &RigBenchSettings,
    mut progress: impl FnMut(&str),
) -> Result<RigBenchReport, String> {
    let slots = fusion.roles().len();
    if settings.views == 0 || settings.views > slots {
        return Err(format!(
            "--views {}: the fusion model has {slots} roles",
            settings.views
        ));
    }
    if settings.records == 0 || settings.reps == 0 || settings.batch_sizes.contains(&0) {
        return Err("--records, --reps and --batch must be at least 1".into());
    }
    fusion
        .check_clip(model.fingerprint())
        .map_err(|e| e.to_string())?;
    let (records, views) = (settings.records, settings.views);
    let pool: Vec<Vec<u8>> = (0..FRAME_POOL).map(varied_frame).collect();
    let mut batches = Vec::new();
    let mut partial_views_mean = 0.0;
    for &batch in &settings.batch_sizes {
        // CLIP: every view of every record, in full batches.
        let images = (records * views).div_ceil(batch) * batch;
        let frames_of = |from: usize| -> Vec<RgbFrame<'_>> {
            (from..from + batch)
                .map(|k| RgbFrame::packed(1280, 720, &pool[k % FRAME_POOL]))
                .collect()
        };
        let run = |from: usize| -> Result<(f64, f64, ndarray::Array2<f32>), String> {
            let frames = frames_of(from);
            let t = Instant::now();
            let pixels = model.preprocess(&frames).map_err(|e| e.to_string())?;
            let pre = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let emb = model
                .get_image_features(pixels.view())
                .map_err(|e| e.to_string())?;
            Ok((pre, t.elapsed().as_secs_f64(), emb))
        };
        run(0)?; // warm-up: the first run allocates
        let (mut pre_ms, mut clip_ms, mut embeddings) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..settings.reps {
            for from in (0..images).step_by(batch) {
                let (pre, enc, emb) = run(from)?;
                pre_ms.push(pre * 1e3 / batch as f64);
                clip_ms.push(enc * 1e3 / batch as f64);
                if rep == 0 {
                    embeddings.extend(emb.rows().into_iter().map(|r| r.to_vec()));
                }
            }
        }
        let clip = Millis::of(clip_ms);
        progress(&format!(
            "batch {batch}: CLIP {:.2} ms/view (p95 {:.2})",
            clip.median, clip.p95
        ));
        // Fusion: records of those embeddings, full and with views absent.
        let record = |r: usize, absent: &[usize]| -> Vec<Option<&[f32]>> {
            (0..slots)
                .map(|s| {
                    (s < views && !absent.contains(&s))
                        .then(|| embeddings[r * views + s].as_slice())
                })
                .collect()
        };
        let full: Vec<_> = (0..records).map(|r| record(r, &[])).collect();
        let partial: Vec<_> = (0..records)
            .map(|r| record(r, &absent_views(r, views)))
            .collect();
        let present: usize = partial.iter().map(|v| v.iter().flatten().count()).sum();
        partial_views_mean = present as f64 / records as f64;
        let time_fusion = |set: &[Vec<Option<&[f32]>>]| -> Result<Millis, String> {
            fusion
                .fuse(&set[..batch.min(set.len())])
                .map_err(|e| e.to_string())?;
            let mut ms = Vec::new();
            for _ in 0..settings.reps * FUSION_REPS_FACTOR {
                for chunk in set.chunks(batch) {
                    let t = Instant::now();
                    fusion.fuse(chunk).map_err(|e| e.to_string())?;
                    ms.push(t.elapsed().as_secs_f64() * 1e3 / chunk.len() as f64);
                }
            }
            Ok(Millis::of(ms))
        };
        let fused = time_fusion(&full)?;
        let fused_partial = time_fusion(&partial)?;
        progress(&format!(
            "batch {batch}: fusion {:.3} ms/record (p95 {:.3}), {:.3} with views absent",
            fused.median, fused.p95, fused_partial.median
        ));
        batches.push(RigBatchResult {
            batch,
            preprocess_ms_per_view: Millis::of(pre_ms),
            clip_ms_per_view: clip,
            fusion_ms_per_record: fused,
            fusion_partial_ms_per_record: fused_partial,
            fusion_over_clip: fused.median / (clip.median * views as f64),
            fusion_partial_over_clip: fused_partial.median / (clip.median * partial_views_mean),
        });
    }

    let Replays { clips, runs, waits } =
        run_replays(&model, &tagger, &fusion, settings, &mut progress)?;
    let median_secs = |rig: bool| {
        let secs: Vec<f64> = runs
            .iter()
            .filter(|r| r.rig == rig && !r.warmup)
            .map(|r| r.secs)
            .collect();
        Millis::of(secs).median
    };
    let counted: Vec<&ReplayRun> = runs.iter().filter(|r| !r.warmup).collect();
    let paired = counted
        .windows(2)
        .filter(|w| !w[0].rig && w[1].rig)
        .map(|w| w[1].secs / w[0].secs)
        .collect();
    let with_rig = || counted.iter().filter(|r| r.rig);
    let fusion_share = Millis::of(with_rig().map(|r| r.fusion_s / r.secs).collect()).median;
    let fusion_per_record = with_rig().map(|r| r.fusion_s).sum::<f64>() * 1e3
        / with_rig().map(|r| r.records).sum::<u64>().max(1) as f64;
    let wait_max = waits.iter().copied().fold(0.0, f64::max);
    let wait_mean = waits.iter().sum::<f64>() / waits.len().max(1) as f64;
    let waited = waits.iter().filter(|&&w| w > 1.0).count();
    Ok(RigBenchReport {
        model: format!("{} ({})", model.manifest().name, &model.fingerprint()[..16]),
        precision: model.precision(),
        fusion: format!(
            "{} ({})",
            fusion.manifest().name,
            &fusion.fingerprint()[..16]
        ),
        views,
        records,
        partial_views_mean,
        batches,
        clips: clips
            .iter()
            .map(|(r, p)| format!("{r}={}", p.display()))
            .collect(),
        sample_fps: settings.sample_fps,
        rig_over_plain: median_secs(true) / median_secs(false),
        rig_over_plain_paired: paired,
        fusion_share_of_replay: fusion_share,
        fusion_ms_per_record_in_pipeline: fusion_per_record,
        replays: runs,
        assembly_wait_ms: Millis::of(waits),
        assembly_wait_max_ms: wait_max,
        assembly_wait_mean_ms: wait_mean,
        assembly_waited_records: waited,
    })
}

/// Generated frame `i`: the synthetic frame, shifted per `i`.
fn varied_frame(i: usize) -> Vec<u8> {
    let mut data = synthetic_frame(1280, 720);
    data.iter_mut()
        .for_each(|b| *b = b.wrapping_add((i * 37) as u8));
    data
}

/// Views left out of record `r` in the partial set: 1 to half of them,
/// never all.
fn absent_views(r: usize, views: usize) -> Vec<usize> {
    if views < 2 {
        return Vec::new();
    }
    let n = 1 + r % (views / 2).max(1);
    (0..n).map(|k| (r + k * 2 + 1) % views).collect()
}

impl RigBenchReport {
    /// Markdown for `BENCHMARKS.md`.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "CLIP `{}` ({:?}), fusion `{}`; {} views per record ({:.1} in the records with views absent), {} records per repetition\n\n\
             | batch | preprocess ms/view | CLIP ms/view (p95) | CLIP x {} views, ms | fusion ms/record (p95) | fusion / CLIP of its views | views absent: fusion ms/record (p95) | fusion / CLIP of its views |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.model,
            self.precision,
            self.fusion,
            self.views,
            self.partial_views_mean,
            self.records,
            self.views
        );
        for b in &self.batches {
            s.push_str(&format!(
                "| {} | {:.2} | {:.2} ({:.2}) | {:.1} | {:.3} ({:.3}) | {:.2}% | {:.3} ({:.3}) | {:.2}% |\n",
                b.batch,
                b.preprocess_ms_per_view.median,
                b.clip_ms_per_view.median,
                b.clip_ms_per_view.p95,
                b.clip_ms_per_view.median * self.views as f64,
                b.fusion_ms_per_record.median,
                b.fusion_ms_per_record.p95,
                b.fusion_over_clip * 100.0,
                b.fusion_partial_ms_per_record.median,
                b.fusion_partial_ms_per_record.p95,
                b.fusion_partial_over_clip * 100.0,
            ));
        }
        s.push_str(&format!(
            "\nreplay of {} at {} fps, one pipeline per run, fresh store each:\n\n\
             | run | rig | seconds | frames | anchor frames | rig records (partial) | fusing + tagging in the worker, ms |\n|---:|---|---:|---:|---:|---:|---:|\n",
            self.clips.join(" "),
            self.sample_fps
        ));
        for (i, r) in self.replays.iter().enumerate() {
            s.push_str(&format!(
                "| {} | {} | {:.2} | {} | {} | {} ({}) | {:.1} |\n",
                i + 1,
                match (r.warmup, r.rig) {
                    (true, _) => "no (warm-up, not counted)",
                    (_, true) => "yes",
                    _ => "no",
                },
                r.secs,
                r.frames,
                r.anchor_frames,
                r.records,
                r.partial_records,
                r.fusion_s * 1e3
            ));
        }
        s.push_str(&format!(
            "\nwith the rig / without (median seconds) = **{:.3}** (each rig run / the run before it: {}); \
             fusing + tagging in the worker: **{:.2}%** of the replay time, {:.2} ms per record\n\n\
             a record waited for its views after its anchor frame: \
             median **{:.2} ms**, p95 **{:.2} ms**, mean {:.1} ms, max {:.1} ms; {} of {} records waited over 1 ms\n",
            self.rig_over_plain,
            self.rig_over_plain_paired
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.fusion_share_of_replay * 100.0,
            self.fusion_ms_per_record_in_pipeline,
            self.assembly_wait_ms.median,
            self.assembly_wait_ms.p95,
            self.assembly_wait_mean_ms,
            self.assembly_wait_max_ms,
            self.assembly_waited_records,
            self.assembly_wait_ms.samples
        ));
        s
    }
}
