//! GStreamer plumbing shared by the sources and the frame export: the
//! decode pipeline, its ends, bus errors, and RGB views of samples.
//!
//! ```text
//! uridecodebin (file, rtsp) | v4l2src ! decodebin | <gst description> ! decodebin
//!   -> [probe on videoconvert's sink pad: the caller drops what it skips]
//!   -> videoconvert -> video/x-raw,format=RGB -> appsink
//! ```
//! Non-video pads (audio) are left unlinked: demuxers go on while at least
//! one pad is linked.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::config::{DecodeMode, RtspTransport, SourceKind};
use super::decode_plan::{PlanStart, UnitReader, inspectable_codec, plan_decoding};
use super::nal;
use super::source::{IngestError, PluggedDecoder, SourceCounters, SourceSpec};
use crate::models::RgbFrame;

/// Initialises GStreamer once per process.
pub fn init_gstreamer() -> Result<(), IngestError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(IngestError::Init)
}

/// Whether any source element of the pipeline is live (cameras, network,
/// `is-live=true` test sources).
pub(super) fn has_live_source(pipeline: &gst::Pipeline) -> bool {
    pipeline
        .iterate_recurse()
        .into_iter()
        .flatten()
        .filter_map(|e| e.downcast::<gstreamer_base::BaseSrc>().ok())
        .any(|src| gstreamer_base::prelude::BaseSrcExt::is_live(&src))
}

/// Sets the pipeline to NULL when dropped (error paths included).
pub(super) struct PipelineGuard(pub(super) gst::Pipeline);
impl Drop for PipelineGuard {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// The converter (whose sink pad gets the sampling probe) and the appsink
/// of a pipeline made by [`build_pipeline`].
pub(super) fn pipeline_ends(pipeline: &gst::Pipeline) -> (gst::Element, gst_app::AppSink) {
    let convert = pipeline
        .by_name("convert")
        .expect("built with a convert element");
    let sink = pipeline
        .by_name("sink")
        .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
        .expect("built with an appsink");
    (convert, sink)
}

/// The decode pipeline of `spec`; `counters` learn which decoder it plugs.
/// `plan`: files decode only what sampling needs (see `decode_plan`).
pub(super) fn build_pipeline(
    spec: &SourceSpec,
    counters: Option<Arc<SourceCounters>>,
    plan: Option<PlanStart>,
) -> Result<gst::Pipeline, String> {
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
                    // Sender capture times (NTP) on the buffers, where the
                    // server signals an RFC 7273 clock (see `source`).
                    if src.has_property("add-reference-timestamp-meta") {
                        src.set_property("add-reference-timestamp-meta", true);
                    }
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
    if !spec.skip_decoders.is_empty() {
        skip_factories(&decoder, spec.skip_decoders.clone())?;
    }
    let (stream, mode) = (spec.stream.clone(), spec.decode);
    pipeline.connect_deep_element_added(move |_, _, element| {
        if is_video_decoder(element) {
            #[cfg(feature = "failpoints")]
            inject_decoder_failure(element);
            let description =
                set_decode_mode(element, mode, &stream, plan.clone(), counters.clone());
            if let Some(c) = &counters {
                let _ = c.decoder.set(PluggedDecoder {
                    element: element.name().to_string(),
                    factory: element
                        .factory()
                        .map(|f| f.name().to_string())
                        .unwrap_or_default(),
                    description,
                });
            }
        }
    });
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

/// Makes `bin` (decodebin, uridecodebin) pass over the element factories
/// named in `skip` when it plugs decoders, trying the next by rank instead.
fn skip_factories(bin: &gst::Element, skip: Vec<String>) -> Result<(), String> {
    // The signal's return type, registered with decodebin's class.
    let result = gst::glib::Type::from_name("GstAutoplugSelectResult")
        .ok_or("GStreamer's decodebin has no GstAutoplugSelectResult type")?;
    let value = move |nick: &str| {
        gst::glib::EnumClass::with_type(result)
            .and_then(|c| c.to_value_by_nick(nick))
            .expect("GstAutoplugSelectResult has 'try' and 'skip'")
    };
    value("skip"); // fail here, not in a streaming thread
    bin.connect("autoplug-select", false, move |args| {
        let factory = args
            .get(3)
            .and_then(|v| v.get::<gst::ElementFactory>().ok());
        let skipped = factory.is_some_and(|f| skip.iter().any(|s| s.as_str() == f.name()));
        Some(value(if skipped { "skip" } else { "try" }))
    });
    Ok(())
}

/// Reliability tests: a decoder fails on its first buffer
/// (`FAILPOINTS=ingest::decoder_fails=return(FACTORY)`), as a broken
/// hardware decoder would.
#[cfg(feature = "failpoints")]
fn inject_decoder_failure(decoder: &gst::Element) {
    let factory = decoder.factory().map(|f| f.name().to_string());
    let named = fail::eval("ingest::decoder_fails", |arg| arg).flatten();
    if named.is_none() || named != factory {
        return;
    }
    let Some(pad) = decoder.static_pad("sink") else {
        return;
    };
    let decoder = decoder.downgrade();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(d) = decoder.upgrade() {
            gst::element_error!(d, gst::StreamError::Decode, ["decoder failure (injected)"]);
        }
        // What a failing decoder returns upstream: the stream stops.
        info.flow_res = Err(gst::FlowError::Error);
        gst::PadProbeReturn::Handled
    });
}

/// Whether `element` (plugged by decodebin) decodes video.
fn is_video_decoder(element: &gst::Element) -> bool {
    element.factory().is_some_and(|f| {
        let klass = f.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or_default();
        klass.contains("Decoder") && klass.contains("Video")
    })
}

/// Makes a video decoder decode only the frames `mode` (and, with `plan`,
/// sampling) needs; returns what it decodes, for `/health`
/// (`avdec_h264, sampled frames and their references`).
fn set_decode_mode(
    decoder: &gst::Element,
    mode: DecodeMode,
    stream: &str,
    plan: Option<PlanStart>,
    counters: Option<Arc<SourceCounters>>,
) -> String {
    let factory = decoder
        .factory()
        .map_or_else(|| "decoder".to_string(), |f| f.name().to_string());
    tracing::debug!(stream, decoder = factory, ?mode, "Video decoder plugged.");
    let Some(pad) = decoder.static_pad("sink") else {
        return factory;
    };
    let inspectable = inspectable_codec(&pad.pad_template_caps()).is_some();
    match (mode, plan) {
        // Keyframes are told apart in any codec.
        (DecodeMode::Keyframes, Some(start)) => {
            plan_decoding(&pad, mode, start, counters);
            format!("{factory}, sampled keyframes only")
        }
        (DecodeMode::Keyframes, None) => {
            // Frames that depend on others never reach the decoder.
            pad.add_probe(gst::PadProbeType::BUFFER, |_, info| match info.buffer() {
                Some(b) if b.flags().contains(gst::BufferFlags::DELTA_UNIT) => {
                    gst::PadProbeReturn::Handled
                }
                _ => gst::PadProbeReturn::Ok,
            });
            format!("{factory}, keyframes only")
        }
        (_, Some(start)) if inspectable => {
            plan_decoding(&pad, mode, start, counters);
            match mode {
                DecodeMode::Fast => {
                    format!("{factory}, sampled reference frames and their references")
                }
                _ => format!("{factory}, sampled frames and their references"),
            }
        }
        (DecodeMode::Fast, _) if inspectable => {
            skip_non_reference(&pad);
            format!("{factory}, non-reference frames skipped")
        }
        (DecodeMode::Fast, _) => {
            tracing::warn!(
                stream,
                decoder = factory,
                "decode = \"fast\": only H.264 and H.265 pictures can be skipped; every frame is decoded."
            );
            format!("{factory}, every frame (not H.264/H.265)")
        }
        (DecodeMode::Exact, _) => factory,
    }
}

/// Drops, before the decoder, the access units no other picture
/// references: the pictures that are decoded come out as in a full decode.
/// (Sources without a plan: live ones, which cannot wait for a GOP's end.)
fn skip_non_reference(pad: &gst::Pad) {
    let reader = Mutex::new(UnitReader::default());
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let current = reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current(pad);
        let Some((codec, framing)) = current else {
            return gst::PadProbeReturn::Ok;
        };
        match buffer.map_readable() {
            Ok(map) if nal::is_non_reference(&map, codec, framing) => gst::PadProbeReturn::Handled,
            _ => gst::PadProbeReturn::Ok,
        }
    });
}

/// Calls `visit` with an RGB view of an appsink sample and its pts.
pub(super) fn with_rgb<T>(
    sample: &gst::Sample,
    visit: impl FnOnce(u64, &RgbFrame<'_>) -> Result<T, String>,
) -> Result<T, String> {
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
    visit(pts_ns, &rgb)
}

pub(super) fn pop_error(bus: &gst::Bus, stream: &str) -> Option<IngestError> {
    let mut warning: Option<String> = None;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Warning]) {
        match msg.view() {
            gst::MessageView::Error(e) => {
                let element = msg
                    .src()
                    .map_or_else(|| "pipeline".into(), |s| s.name().to_string());
                if let Some(details) = e.debug() {
                    tracing::debug!(stream, details = %details, "GStreamer error details.");
                }
                // decodebin's error only says "missing a plug-in"; its
                // warning before says for what type ('text/html' for a web
                // page saved as .mp4), which is what the user needs.
                let message = match warning.take() {
                    Some(w) if e.error().matches(gst::CoreError::MissingPlugin) => format!(
                        "{} (not a video any installed GStreamer plugin decodes)",
                        w.trim_end_matches('.')
                    ),
                    _ => e.error().to_string(),
                };
                return Some(IngestError::Stream {
                    stream: stream.to_string(),
                    element,
                    message,
                });
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(stream, warning = %w.error(), "GStreamer warning.");
                warning = Some(w.error().to_string());
            }
            _ => {}
        }
    }
    None
}

pub(super) fn first_bus_error(pipeline: &gst::Pipeline, stream: &str) -> Option<IngestError> {
    let bus = pipeline.bus()?;
    // Errors during a failed state change are posted right away.
    std::thread::sleep(Duration::from_millis(10));
    pop_error(&bus, stream)
}
