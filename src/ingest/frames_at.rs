//! Decoding chosen frames of a file again, by pts (the frame export).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::config::{DecodeMode, RtspTransport, SourceKind};
use super::gst::{
    PipelineGuard, build_pipeline, first_bus_error, init_gstreamer, pipeline_ends, pop_error,
    with_rgb,
};
use super::source::{IngestError, SourceSpec, seek_to_resume};
use crate::models::RgbFrame;

/// Wanted frames further into the file than this are reached by a seek.
const SEEK_AFTER_NS: u64 = 2_000_000_000;

/// Decodes a video file once and hands `visit` the RGB frames whose pts is
/// in `pts_ns` (sorted), e.g. to export stored frames. Other frames are
/// dropped before colour conversion. Returns how many were found.
pub fn decode_frames_at(
    stream: &str,
    path: &std::path::Path,
    pts_ns: &[u64],
    mut visit: impl FnMut(u64, &RgbFrame<'_>) -> Result<(), String>,
) -> Result<usize, IngestError> {
    init_gstreamer()?;
    let spec = SourceSpec {
        stream: stream.into(),
        kind: SourceKind::File(path.to_path_buf()),
        sample_fps: 1.0,
        rtsp_transport: RtspTransport::Tcp,
        latency_ms: 0,
        file_start_ns: None,
        decode: DecodeMode::Exact,
        skip_decoders: Vec::new(),
    };
    let err = |element: &str, message: String| IngestError::Stream {
        stream: stream.into(),
        element: element.into(),
        message,
    };
    std::fs::File::open(path).map_err(|e| IngestError::Open {
        stream: stream.into(),
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let pipeline = build_pipeline(&spec, None, None).map_err(|e| err("pipeline", e))?;
    let (convert, sink) = pipeline_ends(&pipeline);
    let wanted: Arc<Vec<u64>> = Arc::new(pts_ns.to_vec());
    let probe_wanted = wanted.clone();
    // Frames far into the file: seek to the keyframe before the first one
    // instead of decoding everything before it. The seek needs a preroll,
    // whose frame passes the probe.
    let seek_to = wanted.first().copied().filter(|&p| p > SEEK_AFTER_NS);
    let prerolling = Arc::new(AtomicBool::new(seek_to.is_some()));
    let probe_prerolling = prerolling.clone();
    convert
        .static_pad("sink")
        .expect("videoconvert has a sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if probe_prerolling.load(Ordering::Relaxed) {
                return gst::PadProbeReturn::Ok;
            }
            let keep = info
                .buffer()
                .and_then(|b| b.pts())
                .is_some_and(|p| probe_wanted.binary_search(&p.nseconds()).is_ok());
            if keep {
                gst::PadProbeReturn::Ok
            } else {
                gst::PadProbeReturn::Handled
            }
        });
    let _guard = PipelineGuard(pipeline.clone());
    if let Some(pts) = seek_to {
        seek_to_resume(&pipeline, pts, &prerolling, stream);
    }
    pipeline.set_state(gst::State::Playing).map_err(|_| {
        first_bus_error(&pipeline, stream)
            .unwrap_or_else(|| err("pipeline", "failed to start".into()))
    })?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let mut found = 0;
    loop {
        if let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            // The preroll frame of a seek that failed, and frames the
            // probe let through before the seek: not asked for.
            let pts = sample.buffer().and_then(|b| b.pts()).map(|p| p.nseconds());
            if pts.is_none_or(|p| wanted.binary_search(&p).is_err()) {
                continue;
            }
            // The sample's own errors name the appsink; the visitor's, the export.
            with_rgb(&sample, |pts, rgb| Ok(visit(pts, rgb)))
                .map_err(|e| err("appsink", e))?
                .map_err(|e| err("export", e))?;
            found += 1;
            if found == wanted.len() {
                break;
            }
        } else if sink.is_eos() {
            break;
        }
        if let Some(e) = pop_error(&bus, stream) {
            return Err(e);
        }
    }
    Ok(found)
}
