//! GStreamer ingest at the source level: timestamp sampling on a test
//! source, and newest-frame-wins with counted drops when the consumer of a
//! live source falls behind.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use roadrep::ingest::config::{RtspTransport, SourceKind};
use roadrep::ingest::source::{IngestError, SourceCounters, SourceEnd, SourceSpec, run_source};
use roadrep::models::ModelManifest;
use roadrep::pipeline::{FrameReceiver, IngestEvent, PipelineLoad, frame_channel};

fn spec(kind: SourceKind, fps: f64) -> SourceSpec {
    SourceSpec {
        stream: "cam".into(),
        kind,
        sample_fps: fps,
        rtsp_transport: RtspTransport::Tcp,
        latency_ms: 0,
        file_start_ns: None,
        decode: Default::default(),
        skip_decoders: Vec::new(),
    }
}

fn preprocessor() -> roadrep::models::ImagePreprocessor {
    let dir = common::tiny_model_dir();
    ModelManifest::read(&dir)
        .unwrap()
        .image_preprocessor(&dir)
        .unwrap()
}

/// Collects the pts of every frame sent until the senders are gone.
fn collect_pts(rx: FrameReceiver) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        rx.iter()
            .filter_map(|e| match e {
                IngestEvent::Frame(f) => Some(f.pts_ns),
                _ => None,
            })
            .collect()
    })
}

#[test]
fn a_non_live_test_source_is_sampled_by_timestamp_without_drops() {
    // 3 s at 30 fps, 5 fps kept: pts 0, 0.2, 0.4, ... (frames at k/30 s).
    let kind = SourceKind::Pipeline(
        "videotestsrc num-buffers=90 ! video/x-raw,width=160,height=120,framerate=30/1".into(),
    );
    let (tx, rx) = frame_channel(4, PipelineLoad::new());
    let consumer = collect_pts(rx);
    let counters = Arc::new(SourceCounters::default());
    let end = run_source(
        &spec(kind, 5.0),
        &preprocessor().into(),
        &tx,
        &AtomicBool::new(false),
        None,
        &counters,
    )
    .unwrap();
    drop(tx);
    assert_eq!(end, SourceEnd::Eos);
    let pts = consumer.join().unwrap();
    let want: Vec<u64> = (0..15u64).map(|k| (k * 6) * 1_000_000_000 / 30).collect();
    assert_eq!(pts, want);
    assert_eq!(counters.decoded.load(Ordering::Relaxed), 90);
    assert_eq!(counters.dropped(), 0);
}

#[test]
fn a_live_source_keeps_the_newest_frame_and_counts_drops_when_behind() {
    let kind = SourceKind::Pipeline(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1".into(),
    );
    let (tx, rx) = frame_channel(1, PipelineLoad::new());
    let counters = Arc::new(SourceCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // A slow consumer: 250 ms per frame, for 8 frames.
            let mut pts = Vec::new();
            for e in rx.iter() {
                if let IngestEvent::Frame(f) = e {
                    pts.push(f.pts_ns);
                    std::thread::sleep(Duration::from_millis(250));
                    if pts.len() == 8 {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            pts
        })
    };
    let end = run_source(
        &spec(kind, 30.0),
        &preprocessor().into(),
        &tx,
        &stop,
        None,
        &counters,
    )
    .unwrap();
    assert_eq!(end, SourceEnd::Stopped);
    drop(tx);
    let pts = consumer.join().unwrap();
    // Sampled at 30 fps but consumed at 4 fps: most frames were dropped, and
    // each delivered frame is recent (gaps ~250 ms, not 33 ms).
    assert!(counters.dropped() >= 20, "dropped {}", counters.dropped());
    let gaps: Vec<u64> = pts.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    assert!(gaps[2..].iter().all(|&g| g >= 150), "gaps in ms: {gaps:?}");
}

#[test]
fn unreachable_rtsp_and_bad_descriptions_are_named_errors() {
    let (tx, _rx) = frame_channel(1, PipelineLoad::new());
    let counters = Arc::new(SourceCounters::default());
    let rtsp = spec(SourceKind::Rtsp("rtsp://127.0.0.1:9/nothing".into()), 2.0);
    let e = run_source(
        &rtsp,
        &preprocessor().into(),
        &tx,
        &AtomicBool::new(false),
        None,
        &counters,
    )
    .unwrap_err();
    assert!(matches!(e, IngestError::Stream { .. }), "{e}");
    assert!(e.to_string().starts_with("stream 'cam': "), "{e}");
    let bad = spec(SourceKind::Pipeline("nosuchelement ! identity".into()), 2.0);
    let e = run_source(
        &bad,
        &preprocessor().into(),
        &tx,
        &AtomicBool::new(false),
        None,
        &counters,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("invalid source description 'nosuchelement ! identity'"),
        "{e}"
    );
}

#[test]
fn a_resumed_file_seeks_to_its_checkpoint_and_keeps_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    // 4 s at 25 fps, a keyframe every second.
    common::make_clip(&clip, 100, 25, 160, 120, "smpte");
    let run = |resume: Option<u64>| {
        let (tx, rx) = frame_channel(4, PipelineLoad::new());
        let consumer = collect_pts(rx);
        let counters = Arc::new(SourceCounters::default());
        let end = run_source(
            &spec(SourceKind::File(clip.clone()), 2.0),
            &preprocessor().into(),
            &tx,
            &AtomicBool::new(false),
            resume,
            &counters,
        )
        .unwrap();
        drop(tx);
        assert_eq!(end, SourceEnd::Eos);
        let decoded = counters.decoded.load(Ordering::Relaxed);
        let skipped = counters.skipped.load(Ordering::Relaxed);
        (consumer.join().unwrap(), decoded, decoded + skipped)
    };
    // Every frame is decoded or skipped before the decoder (not needed
    // for sampling).
    let (all, decoded_all, seen_all) = run(None);
    assert_eq!(seen_all, 100);
    assert!(decoded_all <= 100, "{decoded_all}");
    let after = 2_000_000_000;
    let (resumed, decoded, _) = run(Some(after));
    let want: Vec<u64> = all.into_iter().filter(|&p| p > after).collect();
    assert_eq!(
        resumed, want,
        "exactly the frames an uninterrupted run keeps"
    );
    // From the keyframe at 2 s: about half the clip is decoded, not all.
    assert!(decoded <= 52, "decoded {decoded} of 100 frames");
}
