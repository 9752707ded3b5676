//! Decode modes on an H.264 clip with B-frames: `exact` decodes the
//! sampled frames and their references, `fast` the sampled reference
//! frames and theirs (never a non-reference B-frame), `keyframes` the
//! sampled keyframes. Each sampled frame is the first candidate at or
//! after its step, and has exactly the pixels a full decode gives it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use roadrep::ingest::config::{DecodeMode, RtspTransport, SourceKind};
use roadrep::ingest::frames_at::decode_frames_at;
use roadrep::ingest::source::{SourceCounters, SourceEnd, SourceSpec, run_source};
use roadrep::models::{ImagePreprocessor, ModelManifest};
use roadrep::pipeline::{IngestEvent, PipelineLoad, frame_channel};

const FRAME_NS: u64 = 40_000_000; // 25 fps

/// 10 s at 25 fps, 2 B-frames between references, a keyframe every 1 s.
fn clip_with_b_frames(path: &Path) {
    common::gst(&format!(
        "videotestsrc pattern=ball num-buffers=250 ! video/x-raw,width=320,height=240,framerate=25/1 \
         ! videoconvert ! x264enc speed-preset=superfast bframes=2 b-adapt=false key-int-max=25 \
         ! video/x-h264,profile=high ! mp4mux ! filesink location={}",
        path.display()
    ));
}

fn preprocessor() -> ImagePreprocessor {
    let dir = common::tiny_model_dir();
    ModelManifest::read(&dir)
        .unwrap()
        .image_preprocessor(&dir)
        .unwrap()
}

/// The sampled frames (pts, CLIP input) of `clip` in `mode`, and how many
/// frames were decoded (checking what the counters say of the decoder).
fn sample(clip: &Path, fps: f64, mode: DecodeMode) -> (Vec<(u64, Vec<u8>)>, u64) {
    let spec = SourceSpec {
        stream: "cam".into(),
        kind: SourceKind::File(clip.to_path_buf()),
        sample_fps: fps,
        rtsp_transport: RtspTransport::Tcp,
        latency_ms: 0,
        file_start_ns: Some(0),
        decode: mode,
        skip_decoders: Vec::new(),
    };
    let (tx, rx) = frame_channel(4, PipelineLoad::new());
    let consumer = std::thread::spawn(move || {
        rx.iter()
            .filter_map(|e| match e {
                IngestEvent::Frame(f) => Some((f.pts_ns, f.clip_crop)),
                _ => None,
            })
            .collect::<Vec<_>>()
    });
    let counters = Arc::new(SourceCounters::default());
    let end = run_source(
        &spec,
        &preprocessor().into(),
        &tx,
        &AtomicBool::new(false),
        None,
        &counters,
    )
    .unwrap();
    drop(tx);
    assert_eq!(end, SourceEnd::Eos, "{mode:?}");
    let frames = consumer.join().unwrap();
    let decoder = counters
        .decoder
        .get()
        .map(|d| d.description.clone())
        .unwrap_or_default();
    let want = match mode {
        DecodeMode::Exact => "avdec_h264, sampled frames and their references",
        DecodeMode::Fast => "avdec_h264, sampled reference frames and their references",
        DecodeMode::Keyframes => "avdec_h264, sampled keyframes only",
    };
    assert_eq!(decoder, want, "what /health reports");
    let decoded = counters.decoded.load(Ordering::Relaxed);
    let skipped = counters.skipped.load(Ordering::Relaxed);
    assert_eq!(
        decoded + skipped,
        250,
        "{mode:?}: every frame decoded or skipped"
    );
    (frames, decoded)
}

/// Every frame's CLIP input equals the one of an exact decode at its pts.
fn assert_exact_pixels(clip: &Path, frames: &[(u64, Vec<u8>)], mode: DecodeMode) {
    let p = preprocessor();
    let pts: Vec<u64> = frames.iter().map(|(p, _)| *p).collect();
    let mut exact = Vec::new();
    let found = decode_frames_at("cam", clip, &pts, |pts, rgb| {
        exact.push((pts, p.resize_crop(rgb).map_err(|e| e.to_string())?));
        Ok(())
    })
    .unwrap();
    assert_eq!(found, frames.len());
    for ((pts, got), (exact_pts, want)) in frames.iter().zip(&exact) {
        assert_eq!(pts, exact_pts);
        let diff = got.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(
            got.len() == want.len() && diff == Some(0),
            "{mode:?}: frame at {pts} ns differs from an exact decode by {diff:?} grey levels"
        );
    }
}

#[test]
fn exact_fast_and_keyframes_decode_less_and_sample_the_same_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("bframes.mp4");
    clip_with_b_frames(&clip);
    // Exact: each 0.5 s step gets the first frame at or after it. (With
    // B-frames, mp4mux starts the pts at the reordering delay: frames lie
    // at `offset + n * 40 ms`.) Only those frames and the reference
    // pictures before them in their GOP are decoded (the first GOP whole).
    // Each whole second's step lands on the last frames of a 1 s GOP here,
    // so every reference picture is needed; what is left out are the
    // unsampled non-reference B-frames (54 of 250).
    let (exact, decoded) = sample(&clip, 2.0, DecodeMode::Exact);
    assert!((180..=210).contains(&decoded), "decoded {decoded} of 250");
    let offset = exact[0].0;
    assert!(offset < 4 * FRAME_NS, "{offset}");
    let frame_times: Vec<u64> = (0..250).map(|n| offset + n * FRAME_NS).collect();
    let first_at_or_after = |times: &[u64], step: u64| times.iter().copied().find(|&t| t >= step);
    let steps = |every_ns: u64| {
        (0..=10_000_000_000 / every_ns)
            .filter_map(|k| first_at_or_after(&frame_times, k * every_ns))
            .collect::<Vec<u64>>()
    };
    let want = steps(500_000_000);
    let pts: Vec<u64> = exact.iter().map(|(p, _)| *p).collect();
    assert_eq!(pts, want);
    assert_exact_pixels(&clip, &exact, DecodeMode::Exact);

    // Exact at one frame every 2 s: GOPs without a step are not decoded;
    // the others up to their sampled frame.
    let (sparse, decoded) = sample(&clip, 0.5, DecodeMode::Exact);
    assert!(decoded <= 5 * 25, "decoded {decoded} of 250");
    let pts: Vec<u64> = sparse.iter().map(|(p, _)| *p).collect();
    assert_eq!(pts, steps(2_000_000_000));
    assert_exact_pixels(&clip, &sparse, DecodeMode::Exact);

    // Fast: the non-reference B-frames (one in three: x264 makes the other
    // B-frame of each pair a reference) are never decoded; each step gets
    // the first reference frame at or after it, at most one frame later
    // than the exact mode's, with the same pixels as an exact decode of
    // that frame. Fewer frames than exact are decoded.
    let (fast, fast_decoded) = sample(&clip, 2.0, DecodeMode::Fast);
    let (_, exact_decoded) = sample(&clip, 2.0, DecodeMode::Exact);
    assert!(
        fast_decoded < exact_decoded,
        "fast {fast_decoded}, exact {exact_decoded}"
    );
    assert_eq!(fast.len(), want.len());
    for ((pts, _), exact_pts) in fast.iter().zip(&want) {
        assert!(
            pts >= exact_pts && *pts <= exact_pts + FRAME_NS,
            "fast {pts} vs exact {exact_pts}"
        );
    }
    assert!(
        fast.iter().zip(&want).any(|((p, _), e)| p != e),
        "some steps land on a skipped frame in exact mode"
    );
    assert_exact_pixels(&clip, &fast, DecodeMode::Fast);

    // Keyframes (one a second) at one frame every 2 s: the keyframes
    // after 0, 2, 4, 6 and 8 s, the only frames decoded.
    let (key, decoded) = sample(&clip, 0.5, DecodeMode::Keyframes);
    assert_eq!(decoded, 5);
    let pts: Vec<u64> = key.iter().map(|(p, _)| *p).collect();
    let keyframes: Vec<u64> = (0..5u64).map(|k| offset + k * 2_000_000_000).collect();
    assert_eq!(pts, keyframes);
    assert_exact_pixels(&clip, &key, DecodeMode::Keyframes);
}

/// A file with an audio track and 4 s GOPs: the planner holds a GOP of
/// video while the demuxer goes on with the audio, and the exact mode
/// still samples every step.
#[test]
fn exact_mode_with_an_audio_track_and_long_gops_samples_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("av.mp4");
    common::gst(&format!(
        "videotestsrc pattern=ball num-buffers=250 ! video/x-raw,width=320,height=240,framerate=25/1 \
         ! videoconvert ! x264enc speed-preset=superfast bframes=2 key-int-max=100 \
         ! video/x-h264,profile=high ! mp4mux name=mux ! filesink location={} \
         audiotestsrc num-buffers=430 ! audioconvert ! lamemp3enc ! mux.",
        clip.display()
    ));
    let (frames, decoded) = sample(&clip, 2.0, DecodeMode::Exact);
    let offset = frames[0].0;
    let pts: Vec<u64> = frames.iter().map(|(p, _)| *p).collect();
    let frame_times: Vec<u64> = (0..250).map(|n| offset + n * FRAME_NS).collect();
    let want: Vec<u64> = (0..=20u64)
        .filter_map(|k| frame_times.iter().copied().find(|&t| t >= k * 500_000_000))
        .collect();
    assert_eq!(pts, want);
    assert!(decoded < 250, "decoded {decoded}");
    assert_exact_pixels(&clip, &frames, DecodeMode::Exact);
}
