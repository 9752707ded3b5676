//! What a recording says about its own time: its duration and the
//! container's creation time tag (MP4/MOV `mvhd`, Matroska `DateUTC`), read
//! by prerolling it (`filesrc ! decodebin ! fakesink`) without decoding
//! more than a frame. Rig replay aligns its cameras' files with it.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::gst::init_gstreamer;
use super::source::{IngestError, system_time_ns};

/// A recording's own time figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileProbe {
    /// Duration, ns, when the container knows it.
    pub duration_ns: Option<u64>,
    /// Creation time tag, ns since the epoch.
    pub created_ns: Option<i64>,
    /// Modification time, ns since the epoch.
    pub modified_ns: Option<i64>,
}

impl FileProbe {
    /// When pts 0 was recorded: the creation time tag, else modification
    /// time minus duration (a recorder writes the file until it ends).
    pub fn start_ns(&self) -> Option<i64> {
        self.created_ns.or_else(|| {
            self.modified_ns
                .map(|m| m.saturating_sub(self.duration_ns.unwrap_or(0) as i64))
        })
    }
}

/// How long a preroll may take (a broken file may never finish one).
const PREROLL_TIMEOUT: Duration = Duration::from_secs(20);

/// Prerolls `path` and reads its duration and tags; `stream` names it in
/// errors.
pub fn probe_file(path: &Path, stream: &str) -> Result<FileProbe, IngestError> {
    init_gstreamer()?;
    let open_err = |reason: String| IngestError::Open {
        stream: stream.to_string(),
        what: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| open_err(e.to_string()))?;
    if !meta.is_file() {
        return Err(open_err("not a regular file".into()));
    }
    let modified_ns = meta.modified().ok().map(system_time_ns);
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .map_err(|e| open_err(e.to_string()))?;
    let decode = gst::ElementFactory::make("decodebin")
        .build()
        .map_err(|e| open_err(e.to_string()))?;
    pipeline
        .add_many([&src, &decode])
        .map_err(|e| open_err(e.to_string()))?;
    src.link(&decode).map_err(|e| open_err(e.to_string()))?;
    let bin = pipeline.downgrade();
    decode.connect_pad_added(move |_, pad| {
        // Every pad to a fakesink, so the preroll completes.
        let Some(bin) = bin.upgrade() else { return };
        let Ok(sink) = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .build()
        else {
            return;
        };
        if bin.add(&sink).is_ok() {
            let _ = sink.sync_state_with_parent();
            if let Some(sinkpad) = sink.static_pad("sink") {
                let _ = pad.link(&sinkpad);
            }
        }
    });
    let result = preroll(&pipeline, path, stream);
    let _ = pipeline.set_state(gst::State::Null);
    let (created_ns, duration_ns) = result?;
    Ok(FileProbe {
        duration_ns,
        created_ns,
        modified_ns,
    })
}

/// Prerolls; returns (creation time tag, duration).
fn preroll(
    pipeline: &gst::Pipeline,
    path: &Path,
    stream: &str,
) -> Result<(Option<i64>, Option<u64>), IngestError> {
    let fail = |message: String| IngestError::Open {
        stream: stream.to_string(),
        what: path.display().to_string(),
        reason: message,
    };
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|_| fail("cannot be read (GStreamer refused to open it)".into()))?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let deadline = std::time::Instant::now() + PREROLL_TIMEOUT;
    let mut created = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(fail("no picture within 20 s".into()));
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Tag(t) => {
                if created.is_none()
                    && let Some(dt) = t.tags().get::<gst::tags::DateTime>()
                {
                    created = to_unix_ns(&dt.get());
                }
            }
            gst::MessageView::Error(e) => {
                return Err(fail(e.error().to_string()));
            }
            gst::MessageView::AsyncDone(_) => break,
            _ => {}
        }
    }
    let duration = pipeline
        .query_duration::<gst::ClockTime>()
        .map(|d| d.nseconds());
    Ok((created, duration))
}

fn to_unix_ns(dt: &gst::DateTime) -> Option<i64> {
    // A date without a time of day is no recording start.
    if !dt.has_time() {
        return None;
    }
    let g = dt.to_g_date_time().ok()?;
    Some(g.to_unix() * 1_000_000_000 + i64::from(g.microsecond()) * 1000)
}
