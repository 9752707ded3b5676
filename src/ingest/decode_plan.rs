//! The decoder's door for files: a probe on the video decoder's sink pad
//! that feeds each compressed access unit to a [`GopPlanner`] and sends on
//! only what sampling needs (see `gop`).
//!
//! Held units are sent from inside the probe with `gst_pad_chain` on the
//! same pad (the streaming thread holds its recursive stream lock); a flag
//! lets those through the probe untouched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::config::DecodeMode;
use super::gop::{GopPlanner, Unit, UnitKind};
use super::nal::{self, Codec, Framing};
use super::sampler::FrameSampler;
use super::source::SourceCounters;

/// Where the planner of a file starts: the sampler as the source's own
/// sampler starts, and the flag set while the pipeline prerolls for a
/// resume seek (everything passes then; the seek flushes it).
#[derive(Debug, Clone)]
pub(super) struct PlanStart {
    pub sampler: FrameSampler,
    pub prerolling: Arc<AtomicBool>,
}

/// How to read the units on a pad, read again only when its caps change.
#[derive(Default)]
pub(super) struct UnitReader(Option<(gst::Caps, Option<(Codec, Framing)>)>);

impl UnitReader {
    /// The codec and framing of the pad's current caps, if [`nal`] can
    /// read its units.
    pub(super) fn current(&mut self, pad: &gst::Pad) -> Option<(Codec, Framing)> {
        if let Some(caps) = pad.current_caps()
            && self
                .0
                .as_ref()
                .is_none_or(|(c, _)| c.as_ptr() != caps.as_ptr())
        {
            let reader = unit_reader(&caps);
            self.0 = Some((caps, reader));
        }
        self.0.as_ref().and_then(|(_, r)| *r)
    }
}

struct PlanState {
    planner: GopPlanner<gst::Buffer>,
    reader: UnitReader,
}

/// The codec of `caps` whose access units [`nal`] can read.
pub(super) fn inspectable_codec(caps: &gst::CapsRef) -> Option<Codec> {
    caps.iter().find_map(|s| match s.name().as_str() {
        "video/x-h264" => Some(Codec::H264),
        "video/x-h265" => Some(Codec::H265),
        _ => None,
    })
}

/// How to read the units under `caps` (codec and framing), if they can be.
fn unit_reader(caps: &gst::CapsRef) -> Option<(Codec, Framing)> {
    let codec = inspectable_codec(caps)?;
    let s = caps.structure(0)?;
    let format = s.get::<&str>("stream-format").unwrap_or("byte-stream");
    let data = s.get::<gst::Buffer>("codec_data").ok();
    let data = data.as_ref().and_then(|b| b.map_readable().ok());
    Some((codec, Framing::from_caps(codec, format, data.as_deref())))
}

/// Installs the planner on `pad` (a video decoder's sink pad).
pub(super) fn plan_decoding(
    pad: &gst::Pad,
    mode: DecodeMode,
    start: PlanStart,
    counters: Option<Arc<SourceCounters>>,
) {
    let state = Mutex::new(PlanState {
        planner: GopPlanner::new(mode, start.sampler).with_whole_gops(1),
        reader: UnitReader::default(),
    });
    let releasing = AtomicBool::new(false);
    let prerolling = start.prerolling;
    let types = gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM;
    pad.add_probe(types, move |pad, info| {
        if releasing.load(Ordering::Relaxed) || prerolling.load(Ordering::Relaxed) {
            return gst::PadProbeReturn::Ok;
        }
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let send = if let Some(event) = info.event() {
            match event.view() {
                gst::EventView::Eos(_) => state.planner.finish(),
                gst::EventView::FlushStop(_) => {
                    state.planner.flush();
                    Vec::new()
                }
                // Tags may come anywhere; other serialized events (caps,
                // segment, gap) must follow the units before them.
                gst::EventView::Tag(_) => Vec::new(),
                _ if event.is_serialized() => state.planner.release(),
                _ => Vec::new(),
            }
        } else if let Some(buffer) = info.take_buffer() {
            let unit = read_unit(state.reader.current(pad), buffer);
            if let (Some(c), Some(pts)) = (&counters, unit.pts_ns) {
                // The video reaches this far, decoded or not (truncation).
                let end = pts + unit.payload.duration().map_or(0, |d| d.nseconds());
                c.decoded_end_ns.fetch_max(end, Ordering::Relaxed);
            }
            state.planner.push(unit)
        } else {
            return gst::PadProbeReturn::Ok;
        };
        if let Some(c) = &counters {
            c.skipped
                .store(state.planner.counts().skipped, Ordering::Relaxed);
        }
        drop(state);
        let is_buffer = info.event().is_none();
        releasing.store(true, Ordering::Relaxed);
        let mut flow = Ok(gst::FlowSuccess::Ok);
        for buffer in send {
            flow = pad.chain(buffer);
            if flow.is_err() {
                break;
            }
        }
        releasing.store(false, Ordering::Relaxed);
        if is_buffer {
            // The probe took the buffer: it was sent above, or held, or
            // skipped; upstream learns how the decoder took what was sent.
            info.flow_res = flow;
            gst::PadProbeReturn::Handled
        } else {
            gst::PadProbeReturn::Ok
        }
    });
}

/// The planner's view of `buffer`, read with `reader` (the pad's caps).
fn read_unit(reader: Option<(Codec, Framing)>, buffer: gst::Buffer) -> Unit<gst::Buffer> {
    let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
    let kind = match reader {
        Some((codec, framing)) => match buffer.map_readable() {
            Ok(map) => nal::unit_kind(&map, codec, framing, key),
            Err(_) => UnitKind::Other,
        },
        // Other codecs: only keyframes are told apart (keyframes mode).
        None if key => UnitKind::Key { idr: false },
        None => UnitKind::Reference,
    };
    Unit {
        pts_ns: buffer.pts().map(|p| p.nseconds()),
        kind,
        payload: buffer,
    }
}
