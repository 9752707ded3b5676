//! Live frame times come from the pipeline clock (issue 14, finding 7): a
//! live source whose streaming stalls (as a process stopped with SIGSTOP)
//! and then delivers its backlog at once keeps the frames' capture times,
//! spaced by their pts, instead of times squeezed into the arrival window.
//!
//! Its own test binary: the fail point is global to the process.
#![cfg(feature = "failpoints")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use roadrep::ingest::config::{RtspTransport, SourceKind};
use roadrep::ingest::source::{SourceCounters, SourceEnd, SourceSpec, now_ns, run_source};
use roadrep::models::ModelManifest;
use roadrep::pipeline::{IngestEvent, PipelineLoad, frame_channel};

/// The streaming thread stalls this long once (after 5 buffers).
const STALL_MS: u64 = 3000;

#[test]
fn a_live_backlog_after_a_stall_keeps_its_capture_times() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("ingest::stall", &format!("5*off->1*sleep({STALL_MS})->off")).unwrap();

    // 10 fps live, 2 fps kept: frames 500 ms apart by pts.
    let spec = SourceSpec {
        stream: "live".into(),
        kind: SourceKind::Pipeline(
            "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=10/1".into(),
        ),
        sample_fps: 2.0,
        rtsp_transport: RtspTransport::Tcp,
        latency_ms: 0,
        file_start_ns: None,
        decode: Default::default(),
        skip_decoders: Vec::new(),
    };
    let dir = common::tiny_model_dir();
    let preprocessor = ModelManifest::read(&dir)
        .unwrap()
        .image_preprocessor(&dir)
        .unwrap();
    // Enough room that the consumer never holds the source back: only
    // the stall does.
    let (tx, rx) = frame_channel(64, PipelineLoad::new());
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            // (pts, ts, arrival): arrival in ns since the epoch.
            let mut frames = Vec::new();
            for e in rx.iter() {
                if let IngestEvent::Frame(f) = e {
                    frames.push((f.pts_ns as i64, f.ts_ns, now_ns()));
                }
                if started.elapsed() > Duration::from_millis(STALL_MS + 4000) {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            frames
        })
    };
    let counters = Arc::new(SourceCounters::default());
    let end = run_source(&spec, &preprocessor.into(), &tx, &stop, None, &counters).unwrap();
    assert_eq!(end, SourceEnd::Stopped);
    drop(tx);
    let frames = consumer.join().unwrap();
    assert!(frames.len() >= 8, "{} frames", frames.len());

    let ms = |ns: i64| ns as f64 / 1e6;
    let table: String = frames
        .windows(2)
        .map(|w| {
            format!(
                "pts +{:.0} ms, time +{:.1} ms, arrived +{:.1} ms\n",
                ms(w[1].0 - w[0].0),
                ms(w[1].1 - w[0].1),
                ms(w[1].2 - w[0].2)
            )
        })
        .collect();
    // The stall happened, and a backlog came at once: two frames 500 ms
    // apart by pts that arrived much closer together.
    assert!(
        frames
            .windows(2)
            .any(|w| w[1].0 - w[0].0 >= 400_000_000 && w[1].2 - w[0].2 < 250_000_000),
        "no backlog was delivered after the stall:\n{table}"
    );
    // Times are spaced as the pts are, across the stall (not squeezed
    // into the arrival window), and strictly increase.
    for w in frames.windows(2) {
        let (dpts, dts) = (w[1].0 - w[0].0, w[1].1 - w[0].1);
        assert!(dts > 0, "times must increase:\n{table}");
        assert!(
            (dts - dpts).abs() < 5_000_000,
            "time steps differ from pts steps:\n{table}"
        );
    }
    // Capture times are real times: never after the frame arrived, and the
    // first frame was captured a moment before it arrived.
    assert!(frames.iter().all(|f| f.1 <= f.2), "{frames:?}");
    assert!(frames[0].2 - frames[0].1 < 1_000_000_000, "{frames:?}");
}
