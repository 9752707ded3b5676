//! Rig segments: scene segments over a rig's fused embeddings, computed when
//! asked from the stored rig records (the segmenter is deterministic, so
//! the same records always give the same segments), with the dominant
//! fused tags and the caption of the anchor camera's segment that holds
//! the rig segment's keyframe.

use std::sync::Arc;

use super::summary::{SegmentView, summary_line};
use super::{SearchError, format_time};
use crate::segment::{KeyframeImages, SegmentFrame, Segmenter, SegmenterConfig};
use crate::store::{CaptionState, RigRecord, SegmentFilter, Store};

/// Segments of rig `rig`'s records anchored in `[from_ns, to_ns]`, as
/// summary views (camera = the rig; thumbnails are the anchor camera's).
pub fn rig_segments(
    store: &Store,
    rig: &str,
    from_ns: Option<i64>,
    to_ns: Option<i64>,
    config: &SegmenterConfig,
) -> Result<Vec<SegmentView>, SearchError> {
    let rig_id = store.known_rig(rig)?;
    let records = store.rig_records(rig_id, from_ns, to_ns)?;
    let Some(first) = records.first() else {
        return Ok(Vec::new());
    };
    let anchor_camera = anchor_camera(first);
    // The sampling interval: the median gap between records.
    let mut gaps: Vec<i64> = records
        .windows(2)
        .map(|w| w[1].anchor_ns - w[0].anchor_ns)
        .filter(|g| *g > 0)
        .collect();
    gaps.sort_unstable();
    let interval = gaps.get(gaps.len() / 2).copied().unwrap_or(500_000_000) as u64;
    let mut segmenter = Segmenter::new(config.clone());
    let mut closed = Vec::new();
    let mut pts_of = std::collections::HashMap::new();
    for r in &records {
        let Some(embedding) = store.rig_embedding(&r.fusion_model, rig_id, r.anchor_ns)? else {
            continue;
        };
        let pts = r
            .views
            .iter()
            .find(|v| v.role == r.anchor_role)
            .map_or(0, |v| v.pts_ns);
        pts_of.insert(r.anchor_ns, pts);
        closed.extend(
            segmenter.push(SegmentFrame {
                ts_ns: r.anchor_ns,
                pts_ns: pts,
                duration_ns: interval,
                embedding: Arc::from(embedding),
                tags: r
                    .tags
                    .sets
                    .iter()
                    .map(|t| (t.set.clone(), t.top.clone()))
                    .collect(),
                images: KeyframeImages::default(),
            }),
        );
    }
    closed.extend(segmenter.finish());
    let origin = closed
        .first()
        .map_or(0, |s| s.start_ns - s.start_pts_ns as i64);
    closed
        .into_iter()
        .map(|s| {
            let (caption, state) = anchor_caption(store, &anchor_camera, s.keyframe_ns)?;
            let mut view = SegmentView {
                camera: rig.to_string(),
                source: format!("rig {rig} (anchor {anchor_camera})"),
                start: format_time(s.start_ns),
                end: format_time(s.end_ns),
                start_s: (s.start_ns - origin) as f64 / 1e9,
                end_s: (s.end_ns - origin) as f64 / 1e9,
                start_pts_s: s.start_pts_ns as f64 / 1e9,
                frames: s.frames,
                keyframe: format_time(s.keyframe_ns),
                keyframe_pts_s: pts_of.get(&s.keyframe_ns).copied().unwrap_or(0) as f64 / 1e9,
                keyframe_thumbnail: crate::api::images::frame_url(
                    &anchor_camera,
                    s.keyframe_ns,
                    "thumb.jpg",
                ),
                keyframe_image: None,
                tags: s.tags,
                caption,
                caption_state: state.into(),
                line: String::new(),
            };
            view.line = summary_line(&view);
            Ok(view)
        })
        .collect()
}

fn anchor_camera(r: &RigRecord) -> String {
    r.views
        .iter()
        .find(|v| v.role == r.anchor_role)
        .map_or_else(String::new, |v| v.camera.clone())
}

/// The caption of the anchor camera's segment holding `keyframe_ns`.
fn anchor_caption(
    store: &Store,
    camera: &str,
    keyframe_ns: i64,
) -> Result<(Option<String>, &'static str), SearchError> {
    let segments = store.segments(&SegmentFilter {
        streams: Some(vec![camera.to_string()]),
        from_ns: Some(keyframe_ns),
        to_ns: Some(keyframe_ns),
        ..Default::default()
    });
    let segments = match segments {
        Ok(s) => s,
        // The anchor camera may be unknown to an older store: no caption.
        Err(crate::store::StoreError::UnknownStream(_)) => return Ok((None, "none")),
        Err(e) => return Err(e.into()),
    };
    let Some(seg) = segments
        .iter()
        .find(|s| s.record.start_ns <= keyframe_ns && keyframe_ns < s.record.end_ns)
    else {
        return Ok((None, "none"));
    };
    Ok(match &seg.record.caption {
        CaptionState::Done { text, .. } => (Some(text.clone()), "done"),
        CaptionState::Pending => (None, "pending"),
        CaptionState::Failed { .. } => (None, "failed"),
        CaptionState::None => (None, "none"),
    })
}
