//! `roadrep replay` on clips the tests generate with GStreamer, and on the
//! real dash-cam clip when `../shared/realdata` is present.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use roadrep::models::ModelManifest;
use roadrep::store::{FrameEntry, FrameFilter, Store};

fn replay_cmd(files: &[&Path], store: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roadrep"));
    c.arg("replay")
        .args(files)
        .arg("--store")
        .arg(store)
        .args(extra)
        .current_dir(common::root());
    c.env("XDG_CACHE_HOME", store.parent().unwrap().join("cache"))
        .env_remove("ROADREP_CONFIG");
    c
}

fn replay(files: &[&Path], store: &Path, extra: &[&str]) -> Output {
    replay_cmd(files, store, extra).output().unwrap()
}

fn open_store(path: &Path) -> Store {
    let m = ModelManifest::read(&common::tiny_model_dir()).unwrap();
    Store::open(path, &m.fingerprint, m.clip.embed_dim).unwrap()
}

fn frames(store: &Path, camera: &str) -> Vec<FrameEntry> {
    let s = open_store(store);
    let filter = FrameFilter {
        streams: Some(vec![camera.into()]),
        ..Default::default()
    };
    s.frames(&filter, usize::MAX).unwrap()
}

const START: &str = "2026-01-02T03:04:05Z";
const START_NS: i64 = 1_767_323_045_000_000_000;

#[test]
fn two_fps_replay_stores_the_expected_frames_once() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("ten_seconds.mp4");
    common::make_clip(&clip, 250, 25, 320, 240, "smpte");
    let store = dir.path().join("store");

    let o = replay(
        &[&clip],
        &store,
        &["--camera", "front", "--fps", "2", "--start", START],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stored = frames(&store, "front");
    // 25 fps for 10 s at 2 fps: one frame per half-second cell, the first at
    // or after each cell start: 0, 0.52, 1.0, 1.52, ... 9.52 s.
    let want: Vec<u64> = (0..20u64)
        .map(|k| if k % 2 == 0 { k * 500 } else { k * 500 + 20 } * 1_000_000)
        .collect();
    let pts: Vec<u64> = stored.iter().map(|f| f.record.pts_ns).collect();
    assert_eq!(pts, want);
    for f in &stored {
        assert_eq!(
            f.ts_ns,
            START_NS + f.record.pts_ns as i64,
            "time = --start + pts"
        );
        assert_eq!((f.record.width, f.record.height), (320, 240));
        assert_eq!(f.tags.len(), 4, "every label set tagged");
    }
    assert!(stored.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));

    // Again: nothing new.
    let o = replay(
        &[&clip],
        &store,
        &["--camera", "front", "--fps", "2", "--start", START],
    );
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already replayed"));
    assert_eq!(frames(&store, "front").len(), 20);

    // At another rate: refused with the rate it was replayed at, store unchanged.
    let o = replay(
        &[&clip],
        &store,
        &["--camera", "front", "--fps", "5", "--start", START],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("stream 'front': already replayed at 2 fps"),
        "{err}"
    );
    assert_eq!(frames(&store, "front").len(), 20);
}

#[test]
fn a_bad_file_fails_alone_and_the_exit_code_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mp4");
    common::make_clip(&good, 50, 25, 160, 120, "ball");
    let garbage = dir.path().join("garbage.mp4");
    std::fs::write(
        &garbage,
        (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let missing = dir.path().join("missing.mp4");
    let store = dir.path().join("store");
    let o = replay(&[&garbage, &missing, &good], &store, &["--fps", "2"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 2, "{err}");
    assert!(
        errors[0].contains("stream 'garbage'") && errors[0].contains("type of stream"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("missing.mp4") && errors[1].contains("No such file"),
        "{}",
        errors[1]
    );
    assert_eq!(frames(&store, "good").len(), 4, "the good clip still lands");
}

#[test]
fn a_killed_replay_resumes_to_the_same_store_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("long.mp4");
    // 60 s at 25 fps, 640x360: long enough to kill midway.
    common::make_clip(&clip, 1500, 25, 640, 360, "snow");
    let args = ["--camera", "cam", "--fps", "2", "--start", START];

    let whole = dir.path().join("whole");
    assert!(replay(&[&clip], &whole, &args).status.success());
    let reference = frames(&whole, "cam");
    assert_eq!(reference.len(), 120);

    let killed = dir.path().join("killed");
    let mut child = replay_cmd(&[&clip], &killed, &args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill once some frames are stored (progress lines go to stderr).
    let stderr = child.stderr.take().unwrap();
    let mut seen = 0;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        if let Some(n) = line
            .split(", ")
            .find_map(|p| p.strip_suffix(" stored"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            seen = n;
            if n >= 10 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = frames(&killed, "cam").len();
    assert!(
        seen >= 10 && partial < 120,
        "killed after {seen} stored, store holds {partial}"
    );

    let o = replay(&[&clip], &killed, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("resum"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let resumed = frames(&killed, "cam");
    let key = |f: &FrameEntry| (f.ts_ns, f.record.pts_ns);
    assert_eq!(
        resumed.iter().map(key).collect::<Vec<_>>(),
        reference.iter().map(key).collect::<Vec<_>>()
    );
    let (a, b) = (open_store(&whole), open_store(&killed));
    let id_a = a.stream_id("cam").unwrap();
    let id_b = b.stream_id("cam").unwrap();
    for f in &reference {
        let ea = a
            .embedding(&roadrep::store::FrameKey {
                stream_id: id_a,
                ts_ns: f.ts_ns,
            })
            .unwrap()
            .unwrap();
        let eb = b
            .embedding(&roadrep::store::FrameKey {
                stream_id: id_b,
                ts_ns: f.ts_ns,
            })
            .unwrap()
            .unwrap();
        let d = ea
            .iter()
            .zip(&eb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "embedding of {} differs by {d}", f.ts_ns);
    }
}

#[test]
fn the_real_dashcam_clip_with_audio_replays() {
    let Some(realdata) = common::realdata() else {
        eprintln!("skipped: ../shared/realdata is absent");
        return;
    };
    let clip: PathBuf = realdata.join("udacity_lanelines_p1/solidWhiteRight.mp4");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let o = replay(&[&clip], &store, &["--camera", "front", "--fps", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 221 frames at 25 fps = 0 .. 8.8 s: cells 0 .. 17 at 2 fps.
    let stored = frames(&store, "front");
    assert_eq!(stored.len(), 18);
    assert_eq!(
        (stored[0].record.width, stored[0].record.height),
        (960, 540)
    );
    assert!(
        stored
            .windows(2)
            .all(|w| w[0].record.pts_ns < w[1].record.pts_ns)
    );
}

#[test]
fn a_batch_that_cannot_be_stored_leaves_its_clip_incomplete() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use roadrep::models::{ClipModel, ClipOptions, ImagePrecision};
    use roadrep::pipeline::{Pipeline, PipelineParts, PipelineSettings};
    use roadrep::replay::{ReplayProgress, ReplaySettings};
    use roadrep::tagging::{LabelSets, SceneTagger};

    struct Quiet;
    impl ReplayProgress for Quiet {
        fn file_started(&self, _: &Path, _: &str, _: Option<u64>) {}
        fn tick(&self, _: u64, _: u64, _: u64) {}
        fn file_finished(&self, _: &roadrep::replay::FileReport) {}
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 50, 25, 160, 120, "smpte");
    let options = ClipOptions {
        precision: ImagePrecision::Fp32,
        intra_threads: 1,
        load_text_encoder: true,
        verified_files_dir: None,
    };
    let model = ClipModel::load(&common::tiny_model_dir(), &common::runtime(), &options).unwrap();
    let labels = LabelSets::from_file(&common::root().join("config/labels.toml")).unwrap();
    let tagger = SceneTagger::new(&model, &labels, None).unwrap();
    // A store that refuses every embedding (wrong dimension): each batch fails.
    let store = Store::open(
        &dir.path().join("store"),
        model.fingerprint(),
        model.embed_dim() + 1,
    )
    .unwrap();
    let settings = ReplaySettings {
        files: vec![clip.clone()],
        camera: Some("cam".into()),
        sample_fps: 2.0,
        file_start_ns: None,
        decode: Default::default(),
    };
    let pipeline = Pipeline::start(
        PipelineParts {
            model: Arc::new(model),
            tagger: Arc::new(tagger),
            store: store.clone(),
        },
        &PipelineSettings {
            queue_frames: 4,
            batcher: Default::default(),
            segments: None,
            caption_preprocess: None,
            max_caption_backlog: 1,
            thumbnail_width: 256,
            keyframe_width: 0,
            rigs: None,
        },
        Arc::new(AtomicBool::new(false)),
    );
    let report = roadrep::replay::replay(pipeline, &settings, &Quiet).unwrap();
    assert_eq!(report.totals.failed, 4);
    assert!(!report.all_ok(), "lost frames fail the run");
    let id = store.stream_id("cam").unwrap();
    let identity =
        roadrep::pipeline::SourceId::of(&roadrep::ingest::config::SourceKind::File(clip));
    let checkpoint = store.checkpoint(id, identity.as_str()).unwrap();
    assert!(
        checkpoint
            .as_ref()
            .is_none_or(|c| !c.complete && c.last_pts_ns.is_none()),
        "{checkpoint:?}"
    );
}

#[test]
fn stored_frames_export_as_an_image_caption_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 100, 25, 320, 240, "smpte");
    let store = dir.path().join("store");
    assert!(
        replay(&[&clip], &store, &["--camera", "front", "--fps", "2"])
            .status
            .success()
    );
    let out = dir.path().join("dataset");
    let o = Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(["export-frames", "--camera", "front", "--store"])
        .arg(&store)
        .arg("--out")
        .arg(&out)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stored = frames(&store, "front");
    let lines: Vec<roadrep::search::export::ExportRecord> =
        std::fs::read_to_string(out.join("frames.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(lines.len(), stored.len());
    assert_eq!(lines.len(), 8);
    for (rec, f) in lines.iter().zip(&stored) {
        assert_eq!(rec.image, format!("front/{}.jpg", f.ts_ns));
        let img = roadrep::ingest::still::decode_file(&out.join(&rec.image)).unwrap();
        assert_eq!(img.dimensions(), (320, 240));
        assert_eq!(
            rec.caption,
            roadrep::search::export::caption_from_tags(&f.tags)
        );
        assert_eq!(rec.labels.len(), 4);
        assert_eq!(
            rec.labels["weather"],
            f.tags.iter().find(|t| t.set == "weather").unwrap().top
        );
    }
    // The exported image is the frame that was embedded: its embedding is
    // close to the stored one (JPEG round trip aside).
    let m = ModelManifest::read(&common::tiny_model_dir()).unwrap();
    let model = roadrep::models::ClipModel::load(
        &common::tiny_model_dir(),
        &common::runtime(),
        &Default::default(),
    )
    .unwrap();
    let s = Store::open(&store, &m.fingerprint, m.clip.embed_dim).unwrap();
    let id = s.stream_id("front").unwrap();
    for (rec, f) in lines.iter().zip(&stored).take(3) {
        let img = roadrep::ingest::still::decode_file(&out.join(&rec.image)).unwrap();
        let e = model
            .embed_frames(&[roadrep::models::RgbFrame::from_image(&img)])
            .unwrap();
        let e = roadrep::tagging::score::l2_normalize(e.row(0));
        let stored_e = s
            .embedding(&roadrep::store::FrameKey {
                stream_id: id,
                ts_ns: f.ts_ns,
            })
            .unwrap()
            .unwrap();
        let cos: f32 = e.iter().zip(&stored_e).map(|(a, b)| a * b).sum();
        assert!(cos > 0.99, "{} cos {cos}", rec.image);
    }
    #[cfg(feature = "trainer")]
    {
        let samples = roadrep::trainer::dataset::read_jsonl(&out.join("frames.jsonl")).unwrap();
        assert_eq!(samples.len(), 8, "the trainer reads the export");
    }
}
