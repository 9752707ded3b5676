//! One GStreamer pipeline per source: decode, sample, convert, preprocess.
//!
//! ```text
//! uridecodebin (file, rtsp) | v4l2src ! decodebin | <gst description> ! decodebin
//!   -> [probe: drop frames the sampler does not keep]
//!   -> videoconvert -> video/x-raw,format=RGB -> appsink
//! ```
//! Unsampled frames are dropped before colour conversion, so conversion
//! and preprocessing cost only the kept frames. Non-video pads (audio) are
//! left unlinked: demuxers go on while at least one pad is linked.
//!
//! Files are read as fast as the consumer takes frames: the appsink holds
//! two frames and blocks, which back-pressures the decoder. Live sources run
//! in real time: the appsink keeps only the newest frame, so when inference
//! falls behind the newest frame wins, and every frame that was sampled but
//! never delivered is counted as dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::config::{RtspTransport, SourceKind};
use super::sampler::FrameSampler;
use crate::frame::{Frame, IngestEvent};
use crate::models::RgbFrame;
use crate::models::preprocess::FramePreprocessing;
use crate::telemetry;

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
}

/// How a source run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// End of stream: a file was read to its end, or a live source closed.
    Eos,
    /// Shutdown was requested, or the consumer went away.
    Stopped,
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
    /// The running pipeline is live (decided when it starts).
    pub live: AtomicBool,
}

impl SourceCounters {
    /// Sampled frames the consumer never got (live sources behind).
    pub fn dropped(&self) -> u64 {
        self.sampled
            .load(Ordering::Relaxed)
            .saturating_sub(self.delivered.load(Ordering::Relaxed))
    }
}

/// Initialises GStreamer once per process.
pub fn init_gstreamer() -> Result<(), IngestError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(IngestError::Init)
}

/// Identity of a source for replay checkpoints: a file is the same source
/// while its path, size and modification time are the same.
pub fn source_identity(kind: &SourceKind) -> String {
    match kind {
        SourceKind::File(p) => {
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            let meta = std::fs::metadata(&abs).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta
                .and_then(|m| m.modified().ok())
                .map_or(0, system_time_ns);
            format!("file:{}:{size}:{mtime}", abs.display())
        }
        SourceKind::Rtsp(u) => u.clone(),
        SourceKind::V4l2(d) => format!("v4l2:{}", d.display()),
        SourceKind::Pipeline(d) => format!("gst:{d}"),
    }
}

/// Whether a source identity is a file's: files resume from their replay
/// checkpoint; live sources (RTSP, V4L2, pipelines) start afresh.
pub fn is_resumable(identity: &str) -> bool {
    identity.starts_with("file:")
}

fn source_label(kind: &SourceKind) -> String {
    match kind {
        SourceKind::File(p) => p.display().to_string(),
        SourceKind::Rtsp(u) => u.clone(),
        SourceKind::V4l2(d) => d.display().to_string(),
        SourceKind::Pipeline(d) => d.clone(),
    }
}

fn system_time_ns(t: std::time::SystemTime) -> i64 {
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
    tx: &SyncSender<IngestEvent>,
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

    let pipeline = build_pipeline(spec).map_err(|e| IngestError::Stream {
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

    // Sampling on decoded buffers, before conversion.
    let sampler = Arc::new(Mutex::new(match resume_after_pts {
        Some(pts) => FrameSampler::resume_after(spec.sample_fps, pts),
        None => FrameSampler::new(spec.sample_fps),
    }));
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
        let keep = buffer.pts().is_some_and(|pts| {
            counters.decoded.fetch_add(1, Ordering::Relaxed);
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
    pipeline.set_state(gst::State::Playing).map_err(|_| {
        first_bus_error(&pipeline, &stream).unwrap_or_else(|| IngestError::Stream {
            stream: stream.clone(),
            element: "pipeline".into(),
            message: "failed to start".into(),
        })
    })?;

    let source: Arc<str> = source_identity(&spec.kind).into();
    let label: Arc<str> = source_label(&spec.kind).into();
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let mut reported_drops = 0u64;
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            break SourceEnd::Stopped;
        }
        if let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
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
            let frame =
                match sample_to_frame(&sample, spec, preprocessor, file_base_ns, &source, &label) {
                    Ok(f) => f,
                    Err(message) => {
                        return Err(IngestError::Stream {
                            stream: stream.clone(),
                            element: "appsink".into(),
                            message,
                        });
                    }
                };
            let pts = frame.pts_ns;
            if tx.send(IngestEvent::Frame(frame)).is_err() {
                break SourceEnd::Stopped;
            }
            let queued = telemetry::QUEUED_FRAMES.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::gauge!(telemetry::QUEUE_DEPTH).set(queued as f64);
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            counters.last_pts_ns.store(pts, Ordering::Relaxed);
            metrics::counter!(telemetry::FRAMES_IN, "stream" => stream.clone()).increment(1);
        } else if sink.is_eos() {
            break SourceEnd::Eos;
        }
        if let Some(err) = pop_error(&bus, &stream) {
            return Err(err);
        }
        // At most one sampled frame may sit in the appsink; more is a drop.
        let dropped = counters.dropped().saturating_sub(1);
        if live && dropped > reported_drops {
            metrics::counter!(telemetry::FRAMES_DROPPED, "stream" => stream.clone(), "reason" => "behind")
                .increment(dropped - reported_drops);
            reported_drops = dropped;
        }
    };
    drop(guard);
    Ok(end)
}

/// Whether any source element of the pipeline is live (cameras, network,
/// `is-live=true` test sources).
fn has_live_source(pipeline: &gst::Pipeline) -> bool {
    pipeline
        .iterate_recurse()
        .into_iter()
        .flatten()
        .filter_map(|e| e.downcast::<gstreamer_base::BaseSrc>().ok())
        .any(|src| gstreamer_base::prelude::BaseSrcExt::is_live(&src))
}

/// Sets the pipeline to NULL when dropped (error paths included).
struct PipelineGuard(gst::Pipeline);
impl Drop for PipelineGuard {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// The converter (whose sink pad gets the sampling probe) and the appsink
/// of a pipeline made by [`build_pipeline`].
fn pipeline_ends(pipeline: &gst::Pipeline) -> (gst::Element, gst_app::AppSink) {
    let convert = pipeline
        .by_name("convert")
        .expect("built with a convert element");
    let sink = pipeline
        .by_name("sink")
        .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
        .expect("built with an appsink");
    (convert, sink)
}

fn build_pipeline(spec: &SourceSpec) -> Result<gst::Pipeline, String> {
    let make = |factory: &str, name: Option<&str>| {
        let mut b = gst::ElementFactory::make(factory);
        if let Some(n) = name {
            b = b.name(n);
        }
        b.build().map_err(|_| {
            format!("GStreamer element '{factory}' is missing (install the GStreamer plugins)")
        })
    };
    let pipeline = gst::Pipeline::with_name(&format!("stream-{}", spec.stream));
    let convert = make("videoconvert", Some("convert"))?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .build();
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", &caps)
        .build()
        .map_err(|e| e.to_string())?;
    let sink = gst_app::AppSink::builder().name("sink").sync(false).build();
    pipeline
        .add_many([&convert, &filter, sink.upcast_ref()])
        .map_err(|e| e.to_string())?;
    gst::Element::link_many([&convert, &filter, sink.upcast_ref()]).map_err(|e| e.to_string())?;

    // The decoding element whose first video pad feeds videoconvert.
    let decoder = match &spec.kind {
        SourceKind::File(p) => {
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            let uri = gst::glib::filename_to_uri(&abs, None).map_err(|e| e.to_string())?;
            let d = make("uridecodebin", Some("decode"))?;
            d.set_property("uri", uri.as_str());
            pipeline.add(&d).map_err(|e| e.to_string())?;
            d
        }
        SourceKind::Rtsp(url) => {
            let d = make("uridecodebin", Some("decode"))?;
            d.set_property("uri", url.as_str());
            let (transport, latency) = (spec.rtsp_transport, spec.latency_ms);
            d.connect("source-setup", false, move |args| {
                if let Some(src) = args.get(1).and_then(|v| v.get::<gst::Element>().ok())
                    && src.has_property("protocols")
                {
                    let protocols = match transport {
                        RtspTransport::Tcp => "tcp",
                        RtspTransport::Udp => "udp",
                    };
                    src.set_property_from_str("protocols", protocols);
                    src.set_property("latency", latency);
                }
                None
            });
            pipeline.add(&d).map_err(|e| e.to_string())?;
            d
        }
        SourceKind::V4l2(dev) => {
            let src = make("v4l2src", Some("src"))?;
            src.set_property("device", dev.display().to_string());
            let d = make("decodebin", Some("decode"))?;
            pipeline.add_many([&src, &d]).map_err(|e| e.to_string())?;
            src.link(&d).map_err(|e| e.to_string())?;
            d
        }
        SourceKind::Pipeline(desc) => {
            // A trailing queue lets the description end in caps (which the
            // parser only accepts between elements) and decouples the source.
            let bin = gst::parse::bin_from_description(&format!("{desc} ! queue"), true)
                .map_err(|e| format!("invalid source description '{desc}': {e}"))?;
            let d = make("decodebin", Some("decode"))?;
            pipeline
                .add_many([bin.upcast_ref(), &d])
                .map_err(|e| e.to_string())?;
            bin.link(&d).map_err(|e| e.to_string())?;
            d
        }
    };
    let convert_weak = convert.downgrade();
    decoder.connect_pad_added(move |_, pad| {
        let Some(convert) = convert_weak.upgrade() else {
            return;
        };
        let sink_pad = convert
            .static_pad("sink")
            .expect("videoconvert has a sink pad");
        if sink_pad.is_linked() {
            return; // only the first video stream of a source
        }
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let is_video = caps
            .structure(0)
            .is_some_and(|s| s.name().starts_with("video/"));
        if is_video {
            let _ = pad.link(&sink_pad);
        }
    });
    Ok(pipeline)
}

fn sample_to_frame(
    sample: &gst::Sample,
    spec: &SourceSpec,
    preprocessor: &FramePreprocessing,
    file_base_ns: Option<i64>,
    source: &Arc<str>,
    label: &Arc<str>,
) -> Result<Frame, String> {
    let caps = sample.caps().ok_or("sample without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps)
        .map_err(|e| format!("unexpected caps {caps}: {e}"))?;
    if info.format() != gst_video::VideoFormat::Rgb {
        return Err(format!("appsink got {:?}, expected RGB", info.format()));
    }
    let buffer = sample.buffer().ok_or("sample without buffer")?;
    let pts_ns = buffer.pts().map_or(0, |p| p.nseconds());
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    let rgb = RgbFrame {
        width: info.width(),
        height: info.height(),
        stride: info.stride()[0] as usize,
        data: map.as_slice(),
    };
    let crop = preprocessor.clip.crop_size as usize;
    let mut pixels = ndarray::Array3::<f32>::zeros((3, crop, crop));
    preprocessor
        .clip
        .preprocess_into(&rgb, pixels.view_mut())
        .map_err(|e| e.to_string())?;
    let caption_image = match &preprocessor.caption {
        Some(p) => Some(p.resize_crop(&rgb).map_err(|e| e.to_string())?.into()),
        None => None,
    };
    let ts_ns = match file_base_ns {
        Some(base) => base.saturating_add(pts_ns as i64),
        None => now_ns(),
    };
    Ok(Frame {
        stream: spec.stream.clone(),
        source: source.clone(),
        source_label: label.clone(),
        pts_ns,
        ts_ns,
        width: info.width(),
        height: info.height(),
        pixels,
        caption_image,
        sample_interval_ns: FrameSampler::interval_ns(spec.sample_fps),
    })
}

fn pop_error(bus: &gst::Bus, stream: &str) -> Option<IngestError> {
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Warning]) {
        match msg.view() {
            gst::MessageView::Error(e) => {
                let element = msg
                    .src()
                    .map_or_else(|| "pipeline".into(), |s| s.name().to_string());
                if let Some(details) = e.debug() {
                    tracing::debug!(stream, details = %details, "GStreamer error details.");
                }
                return Some(IngestError::Stream {
                    stream: stream.to_string(),
                    element,
                    message: e.error().to_string(),
                });
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(stream, warning = %w.error(), "GStreamer warning.");
            }
            _ => {}
        }
    }
    None
}

fn first_bus_error(pipeline: &gst::Pipeline, stream: &str) -> Option<IngestError> {
    let bus = pipeline.bus()?;
    // Errors during a failed state change are posted right away.
    std::thread::sleep(Duration::from_millis(10));
    pop_error(&bus, stream)
}

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
    let pipeline = build_pipeline(&spec).map_err(|e| err("pipeline", e))?;
    let (convert, sink) = pipeline_ends(&pipeline);
    let wanted: Arc<Vec<u64>> = Arc::new(pts_ns.to_vec());
    let probe_wanted = wanted.clone();
    convert
        .static_pad("sink")
        .expect("videoconvert has a sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
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
    pipeline.set_state(gst::State::Playing).map_err(|_| {
        first_bus_error(&pipeline, stream)
            .unwrap_or_else(|| err("pipeline", "failed to start".into()))
    })?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let mut found = 0;
    loop {
        if let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            let caps = sample
                .caps()
                .ok_or_else(|| err("appsink", "sample without caps".into()))?;
            let info =
                gst_video::VideoInfo::from_caps(caps).map_err(|e| err("appsink", e.to_string()))?;
            let buffer = sample
                .buffer()
                .ok_or_else(|| err("appsink", "sample without buffer".into()))?;
            let pts = buffer.pts().map_or(0, |p| p.nseconds());
            let map = buffer
                .map_readable()
                .map_err(|e| err("appsink", e.to_string()))?;
            let rgb = RgbFrame {
                width: info.width(),
                height: info.height(),
                stride: info.stride()[0] as usize,
                data: map.as_slice(),
            };
            visit(pts, &rgb).map_err(|e| err("export", e))?;
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
