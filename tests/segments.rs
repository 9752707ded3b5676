//! Scene segments and keyframe captions through the replay pipeline: exact
//! segment counts and cut times on a generated multi-scene clip, restart
//! without changing the segments, and a captioner that never delays tagging.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use roadrep::caption::{Caption, CaptionError, CaptionWorker, Captioner};
use roadrep::models::{ImagePrecision, ImagePreprocessor, preprocess::Resample};
use roadrep::pipeline::{Pipeline, PipelineLoad, PipelineParts, PipelineSettings};
use roadrep::replay::{FileReport, ReplayProgress, ReplaySettings, replay};
use roadrep::segment::SegmenterConfig;
use roadrep::store::{CaptionState, SegmentEntry, SegmentFilter, Store};
use roadrep::tagging::{LabelSets, SceneTagger};

/// (pattern, seconds) of the generated clip; cuts at 6, 10 and 15 s.
const SCENES: [(&str, u32); 4] = [
    ("smpte", 6),
    ("ball", 4),
    ("checkers-8", 5),
    ("pinwheel", 7),
];
const FPS: u32 = 10;

/// The scenes joined into one H.264 clip (GStreamer's `concat`).
fn scene_clip(path: &Path) {
    let caps = format!("video/x-raw,width=320,height=240,framerate={FPS}/1");
    let mut args = format!(
        "concat name=c ! videoconvert ! x264enc speed-preset=ultrafast key-int-max={FPS} ! mp4mux ! filesink location={}",
        path.display()
    );
    for (pattern, secs) in SCENES {
        args.push_str(&format!(
            " videotestsrc pattern={pattern} num-buffers={} ! {caps} ! c.",
            secs * FPS
        ));
    }
    common::gst(&args);
}

/// Thresholds for the tiny random CLIP: its embeddings of different test
/// patterns are only ~0.01-0.1 apart (a real CLIP's are far more).
fn tiny_segments() -> SegmenterConfig {
    SegmenterConfig {
        cut_distance: 0.005,
        keep_distance: 0.003,
        ..Default::default()
    }
}

struct Quiet;
impl ReplayProgress for Quiet {
    fn file_started(&self, _: &Path, _: &str, _: Option<u64>) {}
    fn tick(&self, _: u64, _: u64, _: u64) {}
    fn file_finished(&self, _: &FileReport) {}
}

/// Sets `stop` once `after` frames are stored.
struct StopAfter {
    after: u64,
    stop: Arc<AtomicBool>,
}
impl ReplayProgress for StopAfter {
    fn file_started(&self, _: &Path, _: &str, _: Option<u64>) {}
    fn tick(&self, _: u64, _: u64, stored: u64) {
        if stored >= self.after {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
    fn file_finished(&self, _: &FileReport) {}
}

struct Models {
    model: Arc<roadrep::models::ClipModel>,
    tagger: Arc<SceneTagger>,
}

fn pipeline() -> Models {
    let model = common::load_tiny(ImagePrecision::Fp32);
    let labels = LabelSets::from_file(&common::root().join("config/labels.toml")).unwrap();
    let tagger = SceneTagger::new(&model, &labels, None).unwrap();
    Models {
        model: Arc::new(model),
        tagger: Arc::new(tagger),
    }
}

struct Settings {
    replay: ReplaySettings,
    pipeline: PipelineSettings,
}

fn settings(clip: &Path, caption: Option<ImagePreprocessor>) -> Settings {
    Settings {
        replay: ReplaySettings {
            files: vec![clip.to_path_buf()],
            camera: Some("cam".into()),
            sample_fps: 2.0,
            file_start_ns: Some(0),
            decode: Default::default(),
        },
        pipeline: PipelineSettings {
            queue_frames: 4,
            batcher: Default::default(),
            segments: Some(tiny_segments()),
            caption_preprocess: caption,
            max_caption_backlog: 500,
            thumbnail_width: 0,
            keyframe_width: 160,
            rigs: None,
        },
    }
}

fn open(p: &Models, dir: &Path) -> Store {
    Store::open(dir, p.model.fingerprint(), p.model.embed_dim()).unwrap()
}

fn run(p: &Models, store: &Store, s: &Settings, progress: &dyn ReplayProgress) -> bool {
    let stop = Arc::new(AtomicBool::new(false));
    run_with(p, store, s, stop, progress)
}

fn run_with(
    p: &Models,
    store: &Store,
    s: &Settings,
    stop: Arc<AtomicBool>,
    progress: &dyn ReplayProgress,
) -> bool {
    let parts = PipelineParts {
        model: p.model.clone(),
        tagger: p.tagger.clone(),
        store: store.clone(),
    };
    let pipeline = Pipeline::start(parts, &s.pipeline, stop);
    replay(pipeline, &s.replay, progress).unwrap().all_ok()
}

fn bounds(segments: &[SegmentEntry]) -> Vec<(f64, f64)> {
    segments
        .iter()
        .map(|s| (s.record.start_ns as f64 / 1e9, s.record.end_ns as f64 / 1e9))
        .collect()
}

fn clip_in(dir: &Path) -> PathBuf {
    let clip = dir.join("scenes.mp4");
    scene_clip(&clip);
    clip
}

#[test]
fn a_clip_of_n_scenes_gives_n_segments_cut_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_in(dir.path());
    let p = pipeline();
    let store = open(&p, &dir.path().join("store"));
    assert!(run(&p, &store, &settings(&clip, None), &Quiet));

    let segments = store.segments(&SegmentFilter::default()).unwrap();
    let b = bounds(&segments);
    assert_eq!(b.len(), SCENES.len(), "{b:?}");
    let mut cut = 0.0;
    for ((start, end), (_, secs)) in b.iter().zip(SCENES) {
        assert!(
            (start - cut).abs() <= 1.0,
            "segment {start}..{end}, true cut {cut}"
        );
        cut += secs as f64;
        assert!(
            (end - cut).abs() <= 1.0,
            "segment {start}..{end}, true end {cut}"
        );
    }
    for s in &segments {
        let r = &s.record;
        assert!(r.keyframe_ns >= r.start_ns && r.keyframe_ns < r.end_ns);
        assert_eq!(r.frames as i64, (r.end_ns - r.start_ns) / 500_000_000);
        assert_eq!(r.caption, CaptionState::None, "no captioner configured");
        assert_eq!(r.tags.len(), 4, "one dominant tag per label set");
        assert!(r.tags.iter().all(|t| t.share > 0.0 && t.share <= 1.0));
    }
    // Segments follow each other without gaps or overlaps.
    for w in b.windows(2) {
        assert_eq!(w[0].1, w[1].0);
    }
    // A second replay of the complete clip changes nothing.
    assert!(run(&p, &store, &settings(&clip, None), &Quiet));
    assert_eq!(
        bounds(&store.segments(&SegmentFilter::default()).unwrap()),
        b
    );
}

#[test]
fn an_interrupted_replay_resumes_into_the_same_segments() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_in(dir.path());
    let p = pipeline();

    let whole = open(&p, &dir.path().join("whole"));
    assert!(run(&p, &whole, &settings(&clip, None), &Quiet));
    let expected = bounds(&whole.segments(&SegmentFilter::default()).unwrap());
    drop(whole);

    // Stop mid-scene (the second scene runs from 6 to 10 s: ~16 frames in).
    let store = open(&p, &dir.path().join("resumed"));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = StopAfter {
        after: 16,
        stop: stop.clone(),
    };
    run_with(&p, &store, &settings(&clip, None), stop, &progress);
    let partial = store.segments(&SegmentFilter::default()).unwrap();
    assert!(
        partial.len() < expected.len(),
        "stopped early: {:?}",
        bounds(&partial)
    );
    assert!(run(&p, &store, &settings(&clip, None), &Quiet));
    assert_eq!(
        bounds(&store.segments(&SegmentFilter::default()).unwrap()),
        expected,
        "the open segment is rebuilt from the store, not cut at the restart"
    );
}

/// `roadrep replay` of `clip` into `store` with the shipped config (the
/// tiny CLIP's thresholds, captions by the committed `models/blip-tiny`),
/// under the fail points `failpoints`.
#[cfg(feature = "failpoints")]
fn replay_bin(clip: &Path, store: &Path, failpoints: Option<&str>) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_roadrep"));
    c.args(["-c", "config/roadrep.toml", "replay"])
        .arg(clip)
        .args(["--camera", "cam", "--fps", "2", "--start", "0", "--store"])
        .arg(store)
        .current_dir(common::root())
        .env("XDG_CACHE_HOME", store.with_extension("cache"))
        .env_remove("ROADREP_CONFIG")
        .env_remove("RUST_LOG");
    match failpoints {
        Some(f) => c.env("FAILPOINTS", f),
        None => c.env_remove("FAILPOINTS"),
    };
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every segment of a store, keyframe and caption included, with the
/// keyframe's stored picture.
#[cfg(feature = "failpoints")]
fn stored_segments(store: &Path) -> Vec<(roadrep::store::SegmentRecord, Option<Vec<u8>>)> {
    let m = roadrep::models::ModelManifest::read(&common::tiny_model_dir()).unwrap();
    let s = Store::open(store, &m.fingerprint, m.clip.embed_dim).unwrap();
    let cam = s.known_stream_id("cam").unwrap().unwrap();
    let segments = s.segments(&SegmentFilter::default()).unwrap();
    segments
        .into_iter()
        .map(|e| {
            let key = roadrep::store::FrameKey {
                stream_id: cam,
                ts_ns: e.record.keyframe_ns,
            };
            let picture = s.keyframe_picture(&key).unwrap().map(|p| p.to_vec());
            (e.record, picture)
        })
        .collect()
}

#[cfg(feature = "failpoints")]
#[test]
fn a_replay_stopped_in_an_open_segment_resumes_with_the_same_keyframes_captions_and_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_in(dir.path());
    let whole = dir.path().join("whole");
    replay_bin(&clip, &whole, None);
    let expected = stored_segments(&whole);
    assert_eq!(expected.len(), SCENES.len());
    assert!(
        expected
            .iter()
            .all(|(s, picture)| s.caption.text().is_some() && picture.is_some()),
        "{expected:?}"
    );

    // Stopped right before a frame: the store as a kill after the batch of
    // the frame before leaves it. At 9 s the second scene (6-10 s) is open
    // with most of its frames; at 10.5 s the change to the third one is
    // still a candidate (its first frame, 10 s, is that scene's keyframe).
    for stop_ns in [9_000_000_000i64, 10_500_000_000] {
        let resumed = dir.path().join(format!("resumed-{stop_ns}"));
        let stop = format!("ingest::stop_at_pts=return({stop_ns})");
        replay_bin(&clip, &resumed, Some(&stop));
        let partial = stored_segments(&resumed);
        assert_eq!(partial[..], expected[..partial.len()]);
        let (open, _) = &expected[partial.len()];
        assert!(
            open.keyframe_ns < stop_ns,
            "the stop lands in a segment whose keyframe was stored before it: {open:?}"
        );

        replay_bin(&clip, &resumed, None);
        assert_eq!(
            stored_segments(&resumed),
            expected,
            "stopped at {stop_ns} ns: the open segment is rebuilt with its keyframe candidates' pictures, so the same keyframes, captions and keyframe pictures"
        );
    }
}

/// A captioner that blocks until released, then names the keyframe by its
/// mean brightness.
struct BlockedCaptioner {
    pre: ImagePreprocessor,
    released: Mutex<bool>,
    cond: std::sync::Condvar,
    started: AtomicU64,
}

impl BlockedCaptioner {
    fn new() -> Self {
        Self {
            pre: ImagePreprocessor {
                shortest_edge: 32,
                crop_size: 32,
                stretch: true,
                resample: Resample::Bicubic,
                mean: [0.5; 3],
                std: [0.5; 3],
            },
            released: Mutex::new(false),
            cond: Default::default(),
            started: AtomicU64::new(0),
        }
    }

    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.cond.notify_all();
    }
}

impl Captioner for BlockedCaptioner {
    fn preprocessor(&self) -> &ImagePreprocessor {
        &self.pre
    }
    fn fingerprint(&self) -> &str {
        "blocked-test-captioner"
    }
    fn caption(&self, rgb: &[u8], pace: &mut dyn FnMut()) -> Result<Caption, CaptionError> {
        self.started.fetch_add(1, Ordering::Relaxed);
        let mut released = self.released.lock().unwrap();
        while !*released {
            released = self.cond.wait(released).unwrap();
        }
        pace();
        assert_eq!(
            rgb.len(),
            32 * 32 * 3,
            "keyframes are queued at the captioner's size"
        );
        let mean = rgb.iter().map(|&v| v as u64).sum::<u64>() / rgb.len() as u64;
        Ok(Caption {
            text: format!("a test pattern of brightness {mean}"),
            ids: Vec::new(),
        })
    }
}

#[test]
fn a_stuck_captioner_never_delays_tagging_and_its_backlog_is_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_in(dir.path());
    let p = pipeline();
    let store = open(&p, &dir.path().join("store"));
    let captioner = Arc::new(BlockedCaptioner::new());
    // Its own load handle: the stuck captioner must not hold tagging back
    // whatever the pipeline's load says.
    let worker = CaptionWorker::spawn(captioner.clone(), store.clone(), 10, 4, PipelineLoad::new());

    // Every frame is tagged and stored while the captioner is stuck.
    let s = settings(&clip, Some(captioner.pre.clone()));
    assert!(run(&p, &store, &s, &Quiet));
    let frames = store.stats().unwrap().frames;
    assert_eq!(frames, vec![("cam".to_string(), 44)]);
    let segments = store.segments(&SegmentFilter::default()).unwrap();
    assert_eq!(segments.len(), SCENES.len());
    assert!(worker.done() == 0, "nothing captioned yet");
    assert!(
        segments
            .iter()
            .all(|s| s.record.caption == CaptionState::Pending)
    );
    assert!(
        worker.backlog() >= SCENES.len() - 1,
        "keyframes wait in the store's queue"
    );

    // Released, it catches up with the whole backlog.
    captioner.release();
    let totals = worker.drain(&AtomicBool::new(false), &|_, _| {});
    assert_eq!(totals.captioned, SCENES.len() as u64);
    assert_eq!(store.caption_backlog(), 0);
    let segments = store.segments(&SegmentFilter::default()).unwrap();
    for s in &segments {
        let text = s.record.caption.text().expect("captioned");
        assert!(text.starts_with("a test pattern of brightness"), "{text}");
    }
    // Captions are searchable by their words.
    let first = segments[0].record.caption.text().unwrap().to_string();
    let word = first.rsplit(' ').next().unwrap().to_string();
    let found = store
        .segments(&SegmentFilter {
            caption_words: vec![format!("pattern {word}")],
            ..Default::default()
        })
        .unwrap();
    assert!(
        !found.is_empty()
            && found
                .iter()
                .all(|s| s.record.caption.text().unwrap().ends_with(&word))
    );
    let none = store
        .segments(&SegmentFilter {
            caption_words: vec!["zebra".into()],
            ..Default::default()
        })
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn a_full_caption_backlog_drops_the_oldest_keyframes_never_frames() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_in(dir.path());
    let p = pipeline();
    let store = open(&p, &dir.path().join("store"));
    // No captioner runs: every closed segment queues a keyframe.
    let mut s = settings(&clip, Some(BlockedCaptioner::new().pre.clone()));
    s.pipeline.max_caption_backlog = 2;
    assert!(run(&p, &store, &s, &Quiet));
    assert_eq!(store.stats().unwrap().frames, vec![("cam".to_string(), 44)]);
    assert_eq!(store.caption_backlog(), 2);
    let segments = store.segments(&SegmentFilter::default()).unwrap();
    assert_eq!(segments.len(), SCENES.len());
    let states: Vec<&CaptionState> = segments.iter().map(|s| &s.record.caption).collect();
    assert!(
        states[..2].iter().all(
            |c| matches!(c, CaptionState::Failed { error } if error.contains("backlog was full"))
        ),
        "the oldest go: {states:?}"
    );
    assert!(
        states[2..].iter().all(|c| **c == CaptionState::Pending),
        "{states:?}"
    );
}

/// A captioner whose batches fail as a whole (as a model run can) and whose
/// first single caption fails too: the worker must fall back to one at a
/// time and pin the failure on that one keyframe.
struct FlakyCaptioner {
    pre: ImagePreprocessor,
    batches: Mutex<Vec<usize>>,
    singles: AtomicU64,
}

impl Captioner for FlakyCaptioner {
    fn preprocessor(&self) -> &ImagePreprocessor {
        &self.pre
    }
    fn fingerprint(&self) -> &str {
        "flaky-test-captioner"
    }
    fn caption(&self, _: &[u8], _: &mut dyn FnMut()) -> Result<Caption, CaptionError> {
        if self.singles.fetch_add(1, Ordering::Relaxed) == 0 {
            return Err(CaptionError::Image("first single caption fails".into()));
        }
        Ok(Caption {
            text: "a caption".into(),
            ids: Vec::new(),
        })
    }
    fn caption_batch(
        &self,
        images: &[&[u8]],
        _: &mut dyn FnMut(),
    ) -> Result<Vec<Caption>, CaptionError> {
        self.batches.lock().unwrap().push(images.len());
        Err(CaptionError::Image("the batch failed".into()))
    }
}

#[test]
fn the_caption_worker_batches_jobs_and_pins_a_failure_on_its_keyframe() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_in(dir.path());
    let p = pipeline();
    let store = open(&p, &dir.path().join("store"));
    let pre = BlockedCaptioner::new().pre.clone();
    // No worker yet: every closed segment queues its keyframe.
    assert!(run(&p, &store, &settings(&clip, Some(pre.clone())), &Quiet));
    assert_eq!(store.caption_backlog(), SCENES.len());

    let captioner = Arc::new(FlakyCaptioner {
        pre,
        batches: Mutex::new(Vec::new()),
        singles: AtomicU64::new(0),
    });
    let worker = CaptionWorker::spawn(captioner.clone(), store.clone(), 10, 3, PipelineLoad::new());
    let totals = worker.drain(&AtomicBool::new(false), &|_, _| {});
    // Batches of at most 3, oldest first: 3, then 1.
    assert_eq!(*captioner.batches.lock().unwrap(), [3, 1]);
    assert_eq!((totals.captioned, totals.failed), (3, 1));
    assert_eq!(store.caption_backlog(), 0, "every job left the queue");
    let states: Vec<CaptionState> = store
        .segments(&SegmentFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| s.record.caption)
        .collect();
    assert!(
        matches!(&states[0], CaptionState::Failed { error } if error.contains("first single caption fails")),
        "{states:?}"
    );
    assert!(
        states[1..].iter().all(|s| s.text() == Some("a caption")),
        "{states:?}"
    );
}
