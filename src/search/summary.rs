//! Clip and time-range summaries: stored segments as lines such as
//! `00:00-00:42 highway, clear, daytime: "a highway with cars driving on it"`.
//!
//! Shared by `roadrep segments`, `roadrep summary` and `/api/segments`.

use serde::{Deserialize, Serialize};

use crate::search::{SearchError, cameras, format_time, time_range};
use crate::segment::DominantTag;
use crate::store::{CaptionState, SegmentEntry, SegmentFilter};

/// Segments returned when `top` is not given.
pub const DEFAULT_SEGMENTS: usize = 1000;

/// Query of `/api/segments` (and the CLI's flags).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsRequest {
    /// Cameras, comma-separated; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// Earliest time: RFC 3339 or Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Latest time: RFC 3339 or Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Only segments of this source (the file path as replayed, or URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Words that must all be in the caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Most segments returned (default 1000, at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
    /// Segments of this rig's fused records instead of cameras'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rig: Option<String>,
}

impl SegmentsRequest {
    /// With `rig`: its segments (camera, source and caption filters do not
    /// apply to rigs).
    pub fn rig_views(
        &self,
        store: &crate::store::Store,
        config: &crate::segment::SegmenterConfig,
    ) -> Result<Option<Vec<SegmentView>>, SearchError> {
        let Some(rig) = &self.rig else {
            return Ok(None);
        };
        if self.camera.is_some() || self.source.is_some() || self.q.is_some() {
            return Err(SearchError::BadRequest(
                "rig: camera, source and caption words do not apply to rig segments".into(),
            ));
        }
        let filter = self.filter()?;
        let mut views =
            super::rig_summary::rig_segments(store, rig, filter.from_ns, filter.to_ns, config)?;
        views.truncate(filter.limit.unwrap_or(DEFAULT_SEGMENTS));
        Ok(Some(views))
    }

    /// The store filter; bad times are errors naming the field.
    pub fn filter(&self) -> Result<SegmentFilter, SearchError> {
        let (from_ns, to_ns) = time_range(&self.from, &self.to)?;
        Ok(SegmentFilter {
            streams: cameras(self.camera.as_deref()),
            from_ns,
            to_ns,
            caption_words: self.q.iter().cloned().collect(),
            source: self.source.clone(),
            limit: Some(crate::search::bounded_top(self.top, DEFAULT_SEGMENTS)?),
        })
    }
}

/// One segment as the API and CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentView {
    /// Camera.
    pub camera: String,
    /// Source (file path, URL).
    pub source: String,
    /// Start (RFC 3339).
    pub start: String,
    /// End, exclusive (RFC 3339).
    pub end: String,
    /// Start in seconds from the start of the summary (first segment of
    /// its camera and source in the answer).
    pub start_s: f64,
    /// End in seconds from the same origin.
    pub end_s: f64,
    /// Start pts in the source, seconds.
    pub start_pts_s: f64,
    /// Frames in the segment.
    pub frames: u32,
    /// Keyframe time (RFC 3339).
    pub keyframe: String,
    /// Keyframe pts in the source, seconds.
    pub keyframe_pts_s: f64,
    /// API path of the keyframe's thumbnail.
    #[serde(default)]
    pub keyframe_thumbnail: String,
    /// API path of the keyframe's larger picture, when one is stored (the
    /// web page shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyframe_image: Option<String>,
    /// Dominant class per label set, with its share of the time.
    pub tags: Vec<DominantTag>,
    /// Caption of the keyframe.
    pub caption: Option<String>,
    /// `done`, `pending`, `failed` or `none`.
    pub caption_state: String,
    /// The summary line.
    pub line: String,
}

/// Views of `segments` (in (camera, time) order), times relative to the
/// first segment of each (camera, source).
pub fn views(segments: &[SegmentEntry]) -> Vec<SegmentView> {
    let mut origins: Vec<((&str, &str), i64)> = Vec::new();
    segments
        .iter()
        .map(|e| {
            let r = &e.record;
            let key = (e.stream.as_str(), r.source_label.as_str());
            let origin = match origins.iter().find(|(k, _)| *k == key) {
                Some((_, o)) => *o,
                None => {
                    // The clip's own start when the first segment is its
                    // first: pts 0 is 00:00.
                    let o = r.start_ns - r.start_pts_ns as i64;
                    origins.push((key, o));
                    o
                }
            };
            let start_s = (r.start_ns - origin) as f64 / 1e9;
            let end_s = (r.end_ns - origin) as f64 / 1e9;
            let caption = r.caption.text().map(str::to_string);
            let mut view = SegmentView {
                camera: e.stream.clone(),
                source: r.source_label.clone(),
                start: format_time(r.start_ns),
                end: format_time(r.end_ns),
                start_s,
                end_s,
                start_pts_s: r.start_pts_ns as f64 / 1e9,
                frames: r.frames,
                keyframe: format_time(r.keyframe_ns),
                keyframe_pts_s: r.keyframe_pts_ns as f64 / 1e9,
                keyframe_thumbnail: crate::api::images::frame_url(
                    &e.stream,
                    r.keyframe_ns,
                    "thumb.jpg",
                ),
                keyframe_image: e.keyframe_picture.then(|| {
                    crate::api::images::frame_url(&e.stream, r.keyframe_ns, "keyframe.jpg")
                }),
                tags: r.tags.clone(),
                caption,
                caption_state: match &r.caption {
                    CaptionState::Done { .. } => "done",
                    CaptionState::Pending => "pending",
                    CaptionState::Failed { .. } => "failed",
                    CaptionState::None => "none",
                }
                .into(),
                line: String::new(),
            };
            view.line = summary_line(&view);
            view
        })
        .collect()
}

/// `mm:ss` (or `h:mm:ss` past an hour) of a non-negative offset.
pub fn clock(secs: f64) -> String {
    let t = secs.max(0.0).round() as u64;
    let (h, m, s) = (t / 3600, (t / 60) % 60, t % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

/// `00:00-00:42 highway, clear, daytime: "caption"`.
pub fn summary_line(v: &SegmentView) -> String {
    let tags: Vec<&str> = v.tags.iter().map(|t| t.class.as_str()).collect();
    let mut line = format!("{}-{}", clock(v.start_s), clock(v.end_s));
    if !tags.is_empty() {
        line.push(' ');
        line.push_str(&tags.join(", "));
    }
    match (&v.caption, v.caption_state.as_str()) {
        (Some(c), _) => line.push_str(&format!(": \"{c}\"")),
        (None, "pending") => line.push_str(": (caption pending)"),
        (None, "failed") => line.push_str(": (caption failed)"),
        _ => {}
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SegmentRecord;

    fn entry(start: f64, end: f64, caption: CaptionState) -> SegmentEntry {
        let base = 1_700_000_000_000_000_000i64;
        SegmentEntry {
            stream: "front".into(),
            keyframe_picture: false,
            record: SegmentRecord {
                start_ns: base + (start * 1e9) as i64,
                end_ns: base + (end * 1e9) as i64,
                start_pts_ns: (start * 1e9) as u64,
                source_label: "a.mp4".into(),
                source_id: "file:/a.mp4:1:1".into(),
                frames: 3,
                keyframe_ns: base,
                keyframe_pts_ns: 0,
                tags: vec![
                    DominantTag {
                        set: "scene".into(),
                        class: "highway".into(),
                        share: 0.8,
                    },
                    DominantTag {
                        set: "weather".into(),
                        class: "clear".into(),
                        share: 1.0,
                    },
                ],
                caption,
            },
        }
    }

    #[test]
    fn lines_read_like_a_summary() {
        let v = views(&[
            entry(
                0.0,
                42.0,
                CaptionState::Done {
                    text: "a highway with cars".into(),
                    model: "m".into(),
                },
            ),
            entry(42.0, 3725.0, CaptionState::Pending),
        ]);
        assert_eq!(
            v[0].line,
            "00:00-00:42 highway, clear: \"a highway with cars\""
        );
        assert_eq!(v[1].line, "00:42-1:02:05 highway, clear: (caption pending)");
        assert_eq!(v[1].start_s, 42.0);
    }

    #[test]
    fn bad_times_name_the_field() {
        let r = SegmentsRequest {
            from: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(r.filter().unwrap_err().to_string().contains("from"));
    }
}
