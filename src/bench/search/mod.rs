//! `roadrep bench search`: the search index against the exact scan on a
//! store of generated embeddings (see [`data`]), in one process.
//!
//! The frames go into a temporary store through `Store::write_batch`, as
//! the pipeline writes them (the index follows every write and trains its
//! lists again in the background as it grows); a share of them also into a
//! store without index, for what the index costs a write. Then queries run
//! with no filter and with three filters: a narrow time range (the given
//! selectivity), one camera, one tag class. Recall@10 is against the exact
//! top ten, computed from the generated embeddings (generated again after
//! the writes, a chunk at a time) and checked against `Store::search_exact`
//! (the exact scan the API ran before) on a few queries. The same queries run again after the index is rebuilt from
//! the store (its file deleted), which is also the index a fresh training
//! on all frames gives.

pub mod data;
mod report;
#[cfg(test)]
mod tests;
mod truth;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::peak_rss_bytes;
use crate::store::{
    FrameFilter, FrameKey, FrameRecord, IndexMode, SearchConfig, SearchMethod, SearchPath, SetTag,
    Store, StoredFrame, TagRecord,
};
use data::{FrameMeta, Generator};

/// Model fingerprint of the generated store (names its trees and index).
const MODEL: &str = "bench-search-synthetic";
/// Frames per store write (a long pipeline batch).
const WRITE_BATCH: usize = 1024;
/// Frames also written to a store without index, to compare.
const OVERHEAD_FRAMES: usize = 50_000;
/// Time between frames of a camera (2 frames/s).
const STEP_NS: i64 = 500_000_000;
const START_NS: i64 = 1_767_225_600_000_000_000;
const TOP: usize = 10;
const INDEX_WAIT: Duration = Duration::from_secs(3600);

/// What `bench search` measures.
#[derive(Debug, Clone)]
pub struct SearchBenchSettings {
    pub frames: usize,
    pub dim: usize,
    pub cameras: usize,
    /// Queries per kind (image, text).
    pub queries: usize,
    /// Share of frames the time-range filter keeps.
    pub filter_selectivity: f64,
    /// Queries per kind and filter also run through the exact scan.
    pub exact_queries: usize,
    /// `[search] probe_lists` (0: default).
    pub probe_lists: usize,
    /// Where the temporary stores go (removed at the end).
    pub dir: PathBuf,
    pub seed: u64,
}

/// Results of `bench search`.
#[derive(Debug, Clone, Serialize)]
pub struct SearchBenchReport {
    pub frames: usize,
    pub dim: usize,
    pub cameras: usize,
    pub queries_per_kind: usize,
    pub probe_lists: usize,
    /// Store writes with the index, frames/s.
    pub write_frames_per_s: f64,
    /// The first frames' writes: with the index / without, seconds.
    pub overhead_frames: usize,
    pub overhead_with_index_s: f64,
    pub overhead_without_index_s: f64,
    /// Opening the store with its saved index (load + catch-up), seconds.
    pub load_s: f64,
    /// Rebuilding the index from the store (read, train, assign, save).
    pub rebuild_s: f64,
    pub index_file_bytes: u64,
    pub index_memory_bytes: usize,
    pub store_disk_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Lists as written (trained in steps while growing) and rebuilt.
    pub lists_written: usize,
    pub lists_rebuilt: usize,
    pub rows: Vec<QueryRow>,
    pub exact: Vec<ExactRow>,
}

/// Latency and recall of one kind of query under one filter.
#[derive(Debug, Clone, Serialize)]
pub struct QueryRow {
    /// "written" (the index writes left) or "rebuilt".
    pub index: &'static str,
    pub kind: &'static str,
    pub filter: String,
    /// Share of frames the filter keeps.
    pub selectivity: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Median time in the index (the rest re-ranks with the stored
    /// embeddings and reads the hits' records).
    pub index_p50_ms: f64,
    pub recall_at_10: f64,
    /// Queries that scored all the filter's frames (the rest probed).
    pub flat: usize,
    /// Mean int8 codes scored per query.
    pub scored: f64,
}

/// The exact scan on a few queries.
#[derive(Debug, Clone, Serialize)]
pub struct ExactRow {
    pub filter: String,
    pub queries: usize,
    pub p50_ms: f64,
    /// Its top ten equal the ground truth from the generated embeddings, for every query.
    pub matches_truth: bool,
}

/// The filters measured: name, store filter, which frames it keeps.
pub(crate) struct BenchFilter {
    pub name: String,
    pub filter: FrameFilter,
    pub keeps: Box<dyn Fn(&FrameMeta) -> bool + Send + Sync>,
    /// Share of the frames it keeps.
    pub kept: f64,
}

/// Generates the store, measures, removes it.
pub fn bench_search(
    settings: &SearchBenchSettings,
    mut progress: impl FnMut(&str),
) -> Result<SearchBenchReport, String> {
    let s = settings;
    if s.frames == 0 || s.cameras == 0 || s.dim == 0 || s.queries == 0 {
        return Err("frames, cameras, dim and queries must be at least 1".into());
    }
    let _ = std::fs::remove_dir_all(&s.dir);
    let main_path = s.dir.join("store");
    let search = SearchConfig {
        index: IndexMode::Auto,
        probe_lists: s.probe_lists,
    };
    let open = |path: &std::path::Path, search: &SearchConfig| {
        Store::open_with_index(path, MODEL, s.dim, search).map_err(|e| e.to_string())
    };
    let store = open(&main_path, &search)?;
    let plain = open(
        &s.dir.join("no-index"),
        &SearchConfig {
            index: IndexMode::Exact,
            probe_lists: 0,
        },
    )?;
    let stream_ids: Vec<u32> = (0..s.cameras)
        .map(|c| store.stream_id(&camera(c)).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    for c in 0..s.cameras {
        plain.stream_id(&camera(c)).map_err(|e| e.to_string())?;
    }

    progress(&format!(
        "writing {} frames of {} dimensions",
        s.frames, s.dim
    ));
    let mut generator = Generator::new(s.dim, s.cameras, s.seed);
    let mut e = vec![0f32; s.dim];
    let mut meta = Vec::with_capacity(s.frames);
    let (mut write_time, mut with_index, mut without_index) = (Duration::ZERO, 0.0, 0.0);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut i = 0;
    while i < s.frames {
        batch.clear();
        while batch.len() < WRITE_BATCH && i < s.frames {
            let m = next_frame(&mut generator, s.cameras, i, &mut e);
            batch.push(stored_frame(stream_ids[m.camera as usize], &m, &e));
            meta.push(m);
            i += 1;
        }
        let t = Instant::now();
        store.write_batch(&batch, &[]).map_err(|e| e.to_string())?;
        let secs = t.elapsed();
        write_time += secs;
        if i <= OVERHEAD_FRAMES.max(WRITE_BATCH) {
            with_index += secs.as_secs_f64();
            let t = Instant::now();
            plain.write_batch(&batch, &[]).map_err(|e| e.to_string())?;
            without_index += t.elapsed().as_secs_f64();
        }
        if i % (s.frames / 10).max(WRITE_BATCH) < WRITE_BATCH {
            progress(&format!(
                "{i} frames, {:.0} frames/s",
                i as f64 / write_time.as_secs_f64()
            ));
        }
    }
    let overhead_frames = s.frames.min(OVERHEAD_FRAMES.max(WRITE_BATCH));
    drop(plain);
    let _ = std::fs::remove_dir_all(s.dir.join("no-index"));
    store.flush().map_err(|e| e.to_string())?;
    progress("waiting for the index's background training");
    store.wait_for_index(INDEX_WAIT);
    store.save_index().map_err(|e| e.to_string())?;
    let lists_written = store.index_status().lists;

    let filters = filters(s, &meta);
    let mut queries: Vec<(&'static str, Vec<Vec<f32>>)> = vec![
        (
            "image",
            (0..s.queries).map(|_| generator.image_query()).collect(),
        ),
        (
            "text",
            (0..s.queries).map(|_| generator.text_query()).collect(),
        ),
    ];
    progress("exact top ten (the frames generated again)");
    let truths = exact_top(s, &queries, &meta, &filters);
    let key_of = |i: usize| (camera(meta[i].camera as usize), ts_of(meta[i].step));

    progress("queries (index as written)");
    let mut rows = run_queries(&store, "written", &queries, &filters, &truths, &key_of)?;

    progress("exact scans");
    let mut exact = Vec::new();
    for (f, filter) in filters.iter().enumerate().filter(|(f, _)| *f < 2) {
        let (mut times, mut same) = (Vec::new(), true);
        for (k, (_, qs)) in queries.iter().enumerate() {
            for (q, query) in qs.iter().enumerate().take(s.exact_queries) {
                let t = Instant::now();
                let hits = store
                    .search_exact(query, &filter.filter, TOP, None)
                    .map_err(|e| e.to_string())?;
                times.push(t.elapsed());
                let got: Vec<_> = hits
                    .iter()
                    .map(|h| (h.frame.stream.clone(), h.frame.ts_ns))
                    .collect();
                let want: Vec<_> = truths[k][f][q].iter().map(|&(i, _)| key_of(i)).collect();
                same &= got == want;
            }
        }
        exact.push(ExactRow {
            filter: filter.name.clone(),
            queries: times.len(),
            p50_ms: percentile_ms(&mut times, 0.5),
            matches_truth: same,
        });
    }

    let index_file = store.index_file().to_path_buf();
    drop(store);
    progress("reopening with the saved index");
    let t = Instant::now();
    let store = open(&main_path, &search)?;
    store.wait_for_index(INDEX_WAIT);
    let load_s = t.elapsed().as_secs_f64();
    // The written lists again, as a restarted daemon has them (each list
    // read from the file at its exact size, after the exact scans read
    // every embedding): what of the gap to a rebuild is the lists.
    progress("queries (index as written, reopened)");
    rows.extend(run_queries(
        &store, "reopened", &queries, &filters, &truths, &key_of,
    )?);
    drop(store);
    progress("rebuilding the index from the store");
    std::fs::remove_file(&index_file).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let store = open(&main_path, &search)?;
    store.wait_for_index(INDEX_WAIT);
    let rebuild_s = t.elapsed().as_secs_f64();
    let status = store.index_status();
    progress("queries (rebuilt index)");
    rows.extend(run_queries(
        &store, "rebuilt", &queries, &filters, &truths, &key_of,
    )?);
    queries.clear();
    let report = SearchBenchReport {
        frames: s.frames,
        dim: s.dim,
        cameras: s.cameras,
        queries_per_kind: s.queries,
        probe_lists: s.probe_lists,
        write_frames_per_s: s.frames as f64 / write_time.as_secs_f64(),
        overhead_frames,
        overhead_with_index_s: with_index,
        overhead_without_index_s: without_index,
        load_s,
        rebuild_s,
        index_file_bytes: status.file_bytes,
        index_memory_bytes: status.memory_bytes,
        store_disk_bytes: store.stats().map_err(|e| e.to_string())?.disk_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        lists_written,
        lists_rebuilt: status.lists,
        rows,
        exact,
    };
    drop(store);
    let _ = std::fs::remove_dir_all(&s.dir);
    Ok(report)
}

/// Frame `i` of the generated store (cameras take turns), into `out`.
fn next_frame(generator: &mut Generator, cameras: usize, i: usize, out: &mut [f32]) -> FrameMeta {
    let c = i % cameras;
    let scene = generator.frame(c, out);
    FrameMeta {
        camera: c as u32,
        step: (i / cameras) as u32,
        scene,
    }
}

/// Per kind of query: the exact top ten, from the frames generated again
/// in the same order (the generator is deterministic in its seed), so no
/// more than a chunk of them is ever held.
fn exact_top(
    s: &SearchBenchSettings,
    queries: &[(&'static str, Vec<Vec<f32>>)],
    meta: &[FrameMeta],
    filters: &[BenchFilter],
) -> Vec<KindTruth> {
    let mut generator = Generator::new(s.dim, s.cameras, s.seed);
    let mut scans: Vec<_> = queries
        .iter()
        .map(|(_, qs)| truth::TruthScan::new(s.dim, qs, filters.len(), TOP))
        .collect();
    let mut chunk = vec![0f32; truth::ROWS * s.dim];
    for first in (0..s.frames).step_by(truth::ROWS) {
        let rows = truth::ROWS.min(s.frames - first);
        for (r, out) in chunk.chunks_exact_mut(s.dim).take(rows).enumerate() {
            next_frame(&mut generator, s.cameras, first + r, out);
        }
        for scan in &mut scans {
            scan.add(first, &chunk[..rows * s.dim], meta, filters);
        }
    }
    scans.into_iter().map(|scan| scan.finish(meta)).collect()
}

fn camera(c: usize) -> String {
    format!("cam{c}")
}

fn ts_of(step: u32) -> i64 {
    START_NS + i64::from(step) * STEP_NS
}

fn stored_frame(stream_id: u32, m: &FrameMeta, embedding: &[f32]) -> StoredFrame {
    let ts_ns = ts_of(m.step);
    StoredFrame {
        key: FrameKey { stream_id, ts_ns },
        record: FrameRecord {
            pts_ns: (ts_ns - START_NS) as u64,
            wall_ns: ts_ns,
            width: 1280,
            height: 720,
            source_label: "synthetic".into(),
        },
        embedding: embedding.to_vec(),
        tags: TagRecord {
            sets: vec![SetTag {
                set: "scene".into(),
                top: format!("s{}", m.scene as usize % data::TAG_CLASSES),
                score: 0.9,
                scores: Vec::new(),
            }],
        },
        thumbnail: None,
    }
}

/// No filter, a time range keeping `filter_selectivity` of the frames, one
/// camera, one tag class.
fn filters(s: &SearchBenchSettings, meta: &[FrameMeta]) -> Vec<BenchFilter> {
    let steps = meta.last().map_or(1, |m| m.step + 1);
    let width = ((f64::from(steps) * s.filter_selectivity).round() as u32).max(1);
    let from = (steps - width.min(steps)) / 2;
    let to = from + width - 1;
    let mut filters = vec![
        BenchFilter {
            name: "none".into(),
            filter: FrameFilter::default(),
            keeps: Box::new(|_| true),
            kept: 0.0,
        },
        BenchFilter {
            name: format!(
                "time range ({:.1}% of the time)",
                100.0 * s.filter_selectivity
            ),
            filter: FrameFilter {
                from_ns: Some(ts_of(from)),
                to_ns: Some(ts_of(to)),
                ..Default::default()
            },
            keeps: Box::new(move |m| m.step >= from && m.step <= to),
            kept: 0.0,
        },
        BenchFilter {
            name: format!("camera (1 of {})", s.cameras),
            filter: FrameFilter {
                streams: Some(vec![camera(0)]),
                ..Default::default()
            },
            keeps: Box::new(|m| m.camera == 0),
            kept: 0.0,
        },
        BenchFilter {
            name: format!("tag (1 of {} classes)", data::TAG_CLASSES),
            filter: FrameFilter {
                tags: vec![("scene".into(), "s3".into())],
                ..Default::default()
            },
            keeps: Box::new(|m| m.scene as usize % data::TAG_CLASSES == 3),
            kept: 0.0,
        },
    ];
    for f in &mut filters {
        f.kept = meta.iter().filter(|m| (f.keeps)(m)).count() as f64 / meta.len().max(1) as f64;
    }
    filters
}

/// Per filter, per query: the exact top ten (frame, score).
type KindTruth = truth::TopK;
type Truths = [KindTruth];

fn run_queries(
    store: &Store,
    index: &'static str,
    queries: &[(&'static str, Vec<Vec<f32>>)],
    filters: &[BenchFilter],
    truths: &Truths,
    key_of: &dyn Fn(usize) -> (String, i64),
) -> Result<Vec<QueryRow>, String> {
    let mut rows = Vec::new();
    for (k, (kind, qs)) in queries.iter().enumerate() {
        for (f, filter) in filters.iter().enumerate() {
            // Warm the caches a real server has warm.
            for q in qs.iter().take(5) {
                store
                    .search(q, &filter.filter, TOP, None)
                    .map_err(|e| e.to_string())?;
            }
            let (mut times, mut recall, mut flat, mut scored) = (Vec::new(), 0.0, 0, 0);
            let mut index_times = Vec::new();
            for (q, query) in qs.iter().enumerate() {
                let t = Instant::now();
                let found = store
                    .search_with(query, &filter.filter, TOP, None, SearchMethod::Auto)
                    .map_err(|e| e.to_string())?;
                times.push(t.elapsed());
                index_times.push(found.index_time);
                match found.path {
                    SearchPath::Index { plan, scored: n } => {
                        flat += usize::from(plan == crate::store::index::Plan::Flat);
                        scored += n;
                    }
                    SearchPath::Exact => return Err("the index was not used".into()),
                }
                let truth: Vec<_> = truths[k][f][q].iter().map(|&(i, _)| key_of(i)).collect();
                let hit = truth
                    .iter()
                    .filter(|t| {
                        found
                            .hits
                            .iter()
                            .any(|h| h.frame.stream == t.0 && h.frame.ts_ns == t.1)
                    })
                    .count();
                recall += hit as f64 / truth.len().max(1) as f64;
            }
            rows.push(QueryRow {
                index,
                kind,
                filter: filter.name.clone(),
                selectivity: filter.kept,
                p50_ms: percentile_ms(&mut times, 0.5),
                p95_ms: percentile_ms(&mut times, 0.95),
                index_p50_ms: percentile_ms(&mut index_times, 0.5),
                recall_at_10: recall / qs.len() as f64,
                flat,
                scored: scored as f64 / qs.len() as f64,
            });
        }
    }
    Ok(rows)
}

fn percentile_ms(times: &mut [Duration], p: f64) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    times.sort();
    let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
    times[i].as_secs_f64() * 1e3
}
