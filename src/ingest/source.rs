//! One source run: decode, sample, convert, preprocess, send to the
//! pipeline (the GStreamer graph is in [`super::gst`]).
//!
//! Unsampled frames are dropped before colour conversion, so conversion
//! and preprocessing cost only the kept frames.
//!
//! Frame times: a file's frame is its start time + pts. A live source's
//! frame is stamped with when it was captured, not when it reached the
//! appsink: the sender's NTP time when the buffer carries one (a
//! `timestamp/x-ntp` reference timestamp meta, which rtspsrc adds for
//! servers that signal an RFC 7273 clock), else the pipeline clock: wall
//! time of running time 0 (a realtime reading paired with the pipeline
//! clock at the first frame, plus the base time) + the buffer's running
//! time. A backlog delivered at once after a stall keeps its capture times,
//! and times of one run are strictly increasing. A non-live `gst:`
//! description (a test source run as fast as it decodes) has no capture
//! time and is stamped on arrival.
//!
//! Files are read as fast as the consumer takes frames: the appsink holds
//! two frames and blocks, which back-pressures the decoder. Live sources run
//! in real time: the appsink keeps only the newest frame, so when inference
//! falls behind the newest frame wins, and every frame that was sampled but
//! never delivered is counted as dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::config::{DecodeMode, RtspTransport, SourceKind};
use super::decode_plan::PlanStart;
use super::gst::{
    PipelineGuard, build_pipeline, first_bus_error, has_live_source, init_gstreamer, pipeline_ends,
    pop_error, with_rgb,
};
use super::live_clock::LiveClock;
use super::sampler::FrameSampler;
use crate::models::RgbFrame;
use crate::models::preprocess::{FramePreprocessing, FrameResizers};
use crate::pipeline::frame::source_label;
use crate::pipeline::metrics;
use crate::pipeline::{Frame, FrameSender, IngestEvent, SourceId};

/// Errors of one source. All name the stream.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// GStreamer itself could not start.
    #[error("GStreamer: {0}")]
    Init(String),
    /// The source cannot be opened (missing file, bad device path).
    #[error("stream '{stream}': cannot open '{what}': {reason}")]
    Open {
        stream: String,
        what: String,
        reason: String,
    },
    /// The source's replay checkpoint conflicts with this run.
    #[error("stream '{stream}': {message}")]
    Checkpoint { stream: String, message: String },
    /// A file's video ended well before its declared duration.
    #[error(
        "stream '{stream}': the video ends at {:.2} s of the file's {:.2} s (truncated or damaged); the frames before are stored",
        *video_end_ns as f64 / 1e9,
        *duration_ns as f64 / 1e9
    )]
    Truncated {
        stream: String,
        video_end_ns: u64,
        duration_ns: u64,
    },
    /// The pipeline failed while running (corrupt data, unknown codec,
    /// unreachable server). `element` is the GStreamer element path.
    #[error("stream '{stream}': {element}: {message}")]
    Stream {
        stream: String,
        element: String,
        message: String,
    },
}

/// What to read and how.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Stream (camera) name.
    pub stream: Arc<str>,
    /// The source.
    pub kind: SourceKind,
    /// Frames kept per second of video.
    pub sample_fps: f64,
    /// RTSP transport.
    pub rtsp_transport: RtspTransport,
    /// RTSP latency.
    pub latency_ms: u32,
    /// Base time of a file's pts 0, ns since the epoch; unset: the file's
    /// modification time.
    pub file_start_ns: Option<i64>,
    /// Which frames are decoded.
    pub decode: DecodeMode,
    /// Decoders (element factory names) this run must not plug: the
    /// supervisor adds one that failed on this stream, so the next attempt
    /// falls back to the next decoder by rank, software in the end.
    pub skip_decoders: Vec<String>,
}

/// How a source run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// End of stream: a file was read to its end, or a live source closed.
    Eos,
    /// Shutdown was requested, or the consumer went away.
    Stopped,
    /// A file's video ended well before the duration its container
    /// declares (a truncated or damaged recording): what could be decoded
    /// was delivered, and reading it again would give nothing more.
    Truncated {
        /// End of the last decoded frame, ns.
        video_end_ns: u64,
        /// The container's duration, ns.
        duration_ns: u64,
    },
}

impl SourceEnd {
    /// Whether the source was read as far as it can be.
    pub fn is_end_of_data(self) -> bool {
        matches!(self, Self::Eos | Self::Truncated { .. })
    }

    /// The error to report for a truncated file (its frames are kept).
    pub fn truncation_error(self, stream: &str) -> Option<IngestError> {
        match self {
            Self::Truncated {
                video_end_ns,
                duration_ns,
            } => Some(IngestError::Truncated {
                stream: stream.to_string(),
                video_end_ns,
                duration_ns,
            }),
            _ => None,
        }
    }
}

/// Counters of one source run.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Frames decoded (reached the sampler).
    pub decoded: AtomicU64,
    /// Frames the sampler kept.
    pub sampled: AtomicU64,
    /// Frames delivered downstream.
    pub delivered: AtomicU64,
    /// Last delivered pts (progress).
    pub last_pts_ns: AtomicU64,
    /// End (pts + duration) of the last decoded frame, ns.
    pub decoded_end_ns: AtomicU64,
    /// Access units dropped before the decoder (decode modes, planning).
    pub skipped: AtomicU64,
    /// The running pipeline is live (decided when it starts).
    pub live: AtomicBool,
    /// The video decoder GStreamer plugged (highest rank first: hardware
    /// where the machine has one).
    pub decoder: std::sync::OnceLock<PluggedDecoder>,
}

/// The video decoder a run plugged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluggedDecoder {
    /// Element name (what its bus errors name).
    pub element: String,
    /// Element factory name (`vah264dec`, `avdec_h264`).
    pub factory: String,
    /// What the decode mode made of it, for `/health`
    /// (`avdec_h264, sampled frames and their references`).
    pub description: String,
}

impl SourceCounters {
    /// Sampled frames the consumer never got (live sources behind). A
    /// file or other non-live source waits for the consumer and never
    /// drops: what it sampled and has not delivered yet is in flight.
    pub fn dropped(&self) -> u64 {
        if !self.live.load(Ordering::Relaxed) {
            return 0;
        }
        self.sampled
            .load(Ordering::Relaxed)
            .saturating_sub(self.delivered.load(Ordering::Relaxed))
    }

    /// The factory of this run's decoder when `error` came from it.
    pub fn failed_decoder(&self, error: &IngestError) -> Option<&str> {
        let IngestError::Stream { element, .. } = error else {
            return None;
        };
        let plugged = self.decoder.get()?;
        (plugged.element == *element).then_some(plugged.factory.as_str())
    }
}

/// `t` as ns since the Unix epoch (negative before it).
pub fn system_time_ns(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// Wall-clock now, ns since the epoch.
pub fn now_ns() -> i64 {
    system_time_ns(std::time::SystemTime::now())
}

/// Runs a source once, until EOS, an error, or `stop`. Frames after
/// `resume_after_pts` (a replay checkpoint) only are delivered.
pub fn run_source(
    spec: &SourceSpec,
    preprocessor: &FramePreprocessing,
    tx: &FrameSender,
    stop: &AtomicBool,
    resume_after_pts: Option<u64>,
    counters: &Arc<SourceCounters>,
) -> Result<SourceEnd, IngestError> {
    init_gstreamer()?;
    let stream = spec.stream.to_string();
    let open_err = |what: &dyn std::fmt::Display, reason: String| IngestError::Open {
        stream: stream.clone(),
        what: what.to_string(),
        reason,
    };
    let mut file_base_ns = match &spec.kind {
        SourceKind::File(p) => {
            let meta = std::fs::metadata(p).map_err(|e| open_err(&p.display(), e.to_string()))?;
            if !meta.is_file() {
                return Err(open_err(&p.display(), "not a regular file".into()));
            }
            std::fs::File::open(p).map_err(|e| open_err(&p.display(), e.to_string()))?;
            Some(
                spec.file_start_ns
                    .unwrap_or_else(|| meta.modified().map_or(0, system_time_ns)),
            )
        }
        SourceKind::V4l2(d) if !d.exists() => {
            return Err(open_err(&d.display(), "no such device".into()));
        }
        _ => None,
    };

    if let SourceKind::File(p) = &spec.kind
        && let Some(format) = still_image_format(p)
    {
        return Err(open_err(
            &p.display(),
            format!("is a {format} image, not a video (tag still images with `roadrep tag`)"),
        ));
    }
    // Sampling on decoded buffers, before conversion.
    let sampler_start = match resume_after_pts {
        Some(pts) => FrameSampler::resume_after(spec.sample_fps, pts),
        None => FrameSampler::new(spec.sample_fps),
    };
    // A resumed file seeks to its checkpoint instead of decoding from the
    // start. Seeking needs a prerolled pipeline, so the first decoded frame
    // passes unsampled to preroll the sink; the flushing seek discards it.
    let resume_seek = match (&spec.kind, resume_after_pts) {
        (SourceKind::File(_), Some(pts)) if pts > 0 => Some(pts),
        _ => None,
    };
    let prerolling = Arc::new(AtomicBool::new(resume_seek.is_some()));
    // Files decode only what sampling needs. Live sources do not: that
    // waits for the end of each GOP, seconds of latency.
    let plan = matches!(spec.kind, SourceKind::File(_)).then(|| PlanStart {
        sampler: sampler_start.clone(),
        prerolling: prerolling.clone(),
    });
    let pipeline =
        build_pipeline(spec, Some(counters.clone()), plan).map_err(|e| IngestError::Stream {
            stream: stream.clone(),
            element: "pipeline".into(),
            message: e,
        })?;
    let (convert, sink) = pipeline_ends(&pipeline);
    // Live sources run in real time: keep only the newest frame when
    // inference is behind. Others (files, non-live test sources) wait.
    let live = match spec.kind {
        SourceKind::File(_) => false,
        SourceKind::Rtsp(_) | SourceKind::V4l2(_) => true,
        SourceKind::Pipeline(_) => has_live_source(&pipeline),
    };
    counters.live.store(live, Ordering::Relaxed);
    sink.set_max_buffers(if live { 1 } else { 2 });
    sink.set_drop(live);

    let sampler = Arc::new(Mutex::new(sampler_start));
    let probe_prerolling = prerolling.clone();
    let probe_counters = counters.clone();
    let probe_sampler = sampler.clone();
    let sink_pad = convert
        .static_pad("sink")
        .expect("videoconvert has a sink pad");
    // Unsampled buffers are consumed with `Handled`, not `Drop`: gstreamer-rs
    // takes the buffer out of the probe info, and GStreamer 1.22 would then
    // unref the NULL it leaves behind (a CRITICAL) on `Drop`.
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let counters = &probe_counters;
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        if probe_prerolling.load(Ordering::Relaxed) {
            return gst::PadProbeReturn::Ok;
        }
        // Reliability tests: the streaming thread stalls, as a process
        // stopped with SIGSTOP (`FAILPOINTS=ingest::stall=5*off->1*sleep(MS)`).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("ingest::stall");
        let keep = buffer.pts().is_some_and(|pts| {
            counters.decoded.fetch_add(1, Ordering::Relaxed);
            let end = pts + buffer.duration().unwrap_or(gst::ClockTime::ZERO);
            counters
                .decoded_end_ns
                .fetch_max(end.nseconds(), Ordering::Relaxed);
            probe_sampler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .accept(pts.nseconds())
        });
        if keep {
            counters.sampled.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        } else {
            gst::PadProbeReturn::Handled
        }
    });

    let guard = PipelineGuard(pipeline.clone());
    if let Some(pts) = resume_seek {
        seek_to_resume(&pipeline, pts, &prerolling, &stream);
    }
    pipeline.set_state(gst::State::Playing).map_err(|_| {
        first_bus_error(&pipeline, &stream).unwrap_or_else(|| IngestError::Stream {
            stream: stream.clone(),
            element: "pipeline".into(),
            message: "failed to start".into(),
        })
    })?;

    let source = SourceId::of(&spec.kind);
    let label = source_label(&spec.kind);
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let mut reported_drops = 0u64;
    let mut resizers = preprocessor.resizers();
    let mut live_clock = LiveClock::default();
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            break SourceEnd::Stopped;
        }
        if let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            let pts = sample.buffer().and_then(|b| b.pts()).map(|p| p.nseconds());
            if resume_after_pts.is_some_and(|r| pts.is_some_and(|p| p <= r)) {
                // The preroll frame of a resume whose seek failed: stored already.
                continue;
            }
            // Reliability tests: a file whose data is corrupt from a pts on
            // (`FAILPOINTS=ingest::corrupt_from_pts=return(NS)`).
            #[cfg(feature = "failpoints")]
            if let Some(Some(from)) = fail::eval("ingest::corrupt_from_pts", |arg| {
                arg.and_then(|a| a.parse::<u64>().ok())
            }) && pts.is_some_and(|p| p >= from)
            {
                return Err(IngestError::Stream {
                    stream: stream.clone(),
                    element: "decode".into(),
                    message: "corrupt data (injected)".into(),
                });
            }
            // Reliability tests: a run stopped right before a pts, as a
            // kill after the batch holding the frame before it leaves the
            // store (`FAILPOINTS=ingest::stop_at_pts=return(NS)`).
            #[cfg(feature = "failpoints")]
            if let Some(Some(at)) = fail::eval("ingest::stop_at_pts", |arg| {
                arg.and_then(|a| a.parse::<u64>().ok())
            }) && pts.is_some_and(|p| p >= at)
            {
                break SourceEnd::Stopped;
            }
            if file_base_ns.is_some()
                && spec.file_start_ns.is_none()
                && counters.delivered.load(Ordering::Relaxed) == 0
            {
                // A recording's mtime is when it ended: its start is mtime -
                // duration (known once the first frame is out).
                if let Some(d) = pipeline.query_duration::<gst::ClockTime>() {
                    file_base_ns = file_base_ns.map(|b| b.saturating_sub(d.nseconds() as i64));
                }
            }
            let live_ns =
                (live && file_base_ns.is_none()).then(|| live_clock.stamp(&pipeline, &sample));
            let frame = with_rgb(&sample, |pts_ns, rgb| {
                let origin = FrameOrigin {
                    spec,
                    source: &source,
                    label: &label,
                    file_base_ns,
                    live_ns,
                };
                to_frame(pts_ns, rgb, preprocessor, &mut resizers, &origin)
            })
            .map_err(|message| IngestError::Stream {
                stream: stream.clone(),
                element: "appsink".into(),
                message,
            })?;
            let pts = frame.pts_ns;
            if tx.send(IngestEvent::Frame(frame)).is_err() {
                break SourceEnd::Stopped;
            }
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            counters.last_pts_ns.store(pts, Ordering::Relaxed);
            ::metrics::counter!(metrics::FRAMES_IN, "stream" => stream.clone()).increment(1);
        } else if sink.is_eos() {
            if !video_linked(&pipeline) {
                return Err(no_video(&stream));
            }
            break match (&spec.kind, pipeline.query_duration::<gst::ClockTime>()) {
                (SourceKind::File(_), Some(d)) => truncation(
                    counters.decoded_end_ns.load(Ordering::Relaxed),
                    d.nseconds(),
                ),
                _ => SourceEnd::Eos,
            };
        }
        if let Some(err) = pop_error(&bus, &stream) {
            // A demuxer with only audio pads fails with a generic flow error.
            return Err(if only_other_streams(&pipeline) {
                no_video(&stream)
            } else {
                err
            });
        }
        // At most one sampled frame may sit in the appsink; more is a drop.
        let dropped = counters.dropped().saturating_sub(1);
        if live && dropped > reported_drops {
            ::metrics::counter!(metrics::FRAMES_DROPPED, "stream" => stream.clone(), "reason" => "behind")
                .increment(dropped - reported_drops);
            reported_drops = dropped;
        }
    };
    drop(guard);
    Ok(end)
}

/// Prerolls `pipeline` and seeks to the keyframe at or before `pts_ns`, so
/// decoding starts near a resume point; the sampler (resumed after
/// `pts_ns`) keeps exactly the frames an uninterrupted run would. If the
/// pipeline cannot preroll or seek, it plays from the start (slower, same
/// frames).
pub(super) fn seek_to_resume(
    pipeline: &gst::Pipeline,
    pts_ns: u64,
    prerolling: &AtomicBool,
    stream: &str,
) {
    let prerolled = pipeline.set_state(gst::State::Paused).is_ok()
        && pipeline.state(gst::ClockTime::from_seconds(30)).0.is_ok();
    prerolling.store(false, Ordering::Relaxed);
    let flags = gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE;
    let seeked = prerolled
        && pipeline
            .seek_simple(flags, gst::ClockTime::from_nseconds(pts_ns))
            .is_ok();
    if !seeked {
        tracing::warn!(
            stream,
            "Cannot seek to the resume point; decoding from the start."
        );
    }
}

/// Whether a video pad reached the converter (decodebin links the first
/// video stream; audio-only files and unknown video codecs link none).
fn video_linked(pipeline: &gst::Pipeline) -> bool {
    pipeline
        .by_name("convert")
        .and_then(|c| c.static_pad("sink"))
        .is_some_and(|p| p.is_linked())
}

/// The decoder found streams, but no video among them (audio only).
fn only_other_streams(pipeline: &gst::Pipeline) -> bool {
    !video_linked(pipeline)
        && pipeline
            .by_name("decode")
            .is_some_and(|d| !d.src_pads().is_empty())
}

fn no_video(stream: &str) -> IngestError {
    IngestError::Stream {
        stream: stream.to_string(),
        element: "decode".into(),
        message:
            "no video stream (audio only, or a video codec without an installed GStreamer decoder)"
                .into(),
    }
}

/// How a file that reached EOS ended: truncated when its video stops more
/// than max(1 s, 10%) before the declared duration (an audio track a
/// little longer than the video is normal).
fn truncation(video_end_ns: u64, duration_ns: u64) -> SourceEnd {
    let slack = (duration_ns / 10).max(1_000_000_000);
    if video_end_ns.saturating_add(slack) < duration_ns {
        SourceEnd::Truncated {
            video_end_ns,
            duration_ns,
        }
    } else {
        SourceEnd::Eos
    }
}

/// The still-image format of a file, sniffed from its first bytes: such a
/// file would decode as a one-frame "clip".
fn still_image_format(path: &std::path::Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 12];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let head = &head[..n];
    let h = |magic: &[u8]| head.starts_with(magic);
    Some(if h(b"\x89PNG\r\n\x1a\n") {
        "PNG"
    } else if h(&[0xff, 0xd8, 0xff]) {
        "JPEG"
    } else if h(b"GIF8") {
        "GIF"
    } else if h(b"RIFF") && head.get(8..12) == Some(b"WEBP") {
        "WebP"
    } else if h(b"II*\0") || h(b"MM\0*") {
        "TIFF"
    } else {
        return None;
    })
}

/// Where a source's frames come from and how they are stamped.
struct FrameOrigin<'a> {
    spec: &'a SourceSpec,
    source: &'a SourceId,
    label: &'a Arc<str>,
    /// A file's time of pts 0; `None`: not a file.
    file_base_ns: Option<i64>,
    /// A live source's capture time of this frame (see [`LiveClock`]);
    /// `None` with no `file_base_ns`: stamped on arrival.
    live_ns: Option<i64>,
}

fn to_frame(
    pts_ns: u64,
    rgb: &RgbFrame<'_>,
    preprocessor: &FramePreprocessing,
    resizers: &mut FrameResizers,
    origin: &FrameOrigin<'_>,
) -> Result<Frame, String> {
    let clip_crop = resizers.clip.resize_crop(rgb).map_err(|e| e.to_string())?;
    let caption = match &mut resizers.caption {
        Some(r) => Some(r.resize_crop(rgb).map_err(|e| e.to_string())?.into()),
        None => None,
    };
    let pictures = crate::ingest::thumbnail::frame_pictures(
        rgb,
        preprocessor.keyframe.as_ref(),
        preprocessor.thumbnail.as_ref(),
    )?;
    let jpeg = pictures.keyframe.map(Into::into);
    let thumbnail = pictures.thumbnail.map(Into::into);
    let ts_ns = match origin.file_base_ns {
        // Keys hold i64 ns: a saturated time would make frames overwrite
        // each other, so a time past 2262-04-11 is an error.
        Some(base) => i64::try_from(pts_ns)
            .ok()
            .and_then(|pts| base.checked_add(pts))
            .ok_or_else(|| {
                format!(
                    "frame time out of range: start + pts {:.3} s passes 2262-04-11, the last time the store can hold",
                    pts_ns as f64 / 1e9
                )
            })?,
        None => origin.live_ns.unwrap_or_else(now_ns),
    };
    Ok(Frame {
        stream: origin.spec.stream.clone(),
        source_id: origin.source.clone(),
        source_label: origin.label.clone(),
        pts_ns,
        ts_ns,
        width: rgb.width,
        height: rgb.height,
        clip_crop,
        keyframe_images: crate::segment::KeyframeImages { caption, jpeg },
        thumbnail,
        sample_interval_ns: FrameSampler::interval_ns(origin.spec.sample_fps),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_sources_count_drops() {
        let c = SourceCounters::default();
        c.sampled.store(5, Ordering::Relaxed);
        c.delivered.store(3, Ordering::Relaxed);
        // A file waits for the consumer: two frames are in flight, not lost.
        assert_eq!(c.dropped(), 0);
        c.live.store(true, Ordering::Relaxed);
        assert_eq!(c.dropped(), 2);
    }

    #[test]
    fn a_video_ending_well_before_its_duration_is_truncated() {
        let s = 1_000_000_000;
        assert_eq!(truncation(20 * s, 20 * s), SourceEnd::Eos);
        // An audio track 0.8 s longer than the video is normal.
        assert_eq!(truncation(19 * s + s / 5, 20 * s), SourceEnd::Eos);
        assert_eq!(
            truncation(6 * s, 20 * s),
            SourceEnd::Truncated {
                video_end_ns: 6 * s,
                duration_ns: 20 * s
            }
        );
    }
}
