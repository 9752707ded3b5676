//! What the web page needs beyond search: the label sets (for its tag
//! filters) and one frame in full (every set's scores, its segment, its
//! neighbours).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::routes::{FrameView, blocking};
use super::{ApiError, ApiState};
use crate::search::summary::{SegmentView, views};
use crate::store::{FrameFilter, SegmentFilter};

/// One label set and its classes, in label-file order.
#[derive(Debug, Serialize)]
pub struct LabelSetView {
    /// Set name (`weather`).
    pub set: String,
    /// Its classes.
    pub classes: Vec<String>,
}

/// `GET /api/labels`: the label sets tag filters may name.
pub async fn labels(State(state): State<ApiState>) -> Json<Vec<LabelSetView>> {
    Json(
        state
            .tagger
            .class_embeddings()
            .sets
            .iter()
            .map(|s| LabelSetView {
                set: s.name.clone(),
                classes: s.classes.clone(),
            })
            .collect(),
    )
}

/// One label set's scores of a frame.
#[derive(Debug, Serialize)]
pub struct SetScoresView {
    /// Set name.
    pub set: String,
    /// Top class.
    pub top: String,
    /// `(class, probability)` for every class, as stored.
    pub scores: Vec<(String, f32)>,
}

/// `GET /api/frames/{camera}/{ts_ns}`.
#[derive(Debug, Serialize)]
pub struct FrameDetail {
    /// The frame as lists show it.
    #[serde(flatten)]
    pub frame: FrameView,
    /// Every label set's scores.
    pub scores: Vec<SetScoresView>,
    /// The scene segment it belongs to, once one is stored.
    pub segment: Option<SegmentView>,
    /// Up to [`NEIGHBOURS`] frames before and after it, in time order.
    pub neighbours: Vec<FrameView>,
}

/// Neighbours shown on each side.
pub const NEIGHBOURS: usize = 3;

/// How far to look for neighbours: sampled frames are far closer.
const NEIGHBOUR_WINDOW_NS: i64 = 120_000_000_000;

pub async fn frame(
    State(state): State<ApiState>,
    Path((camera, ts_ns)): Path<(String, String)>,
) -> Result<Json<FrameDetail>, ApiError> {
    let store = state.store.get()?;
    let detail = blocking(&state, move || {
        let key = super::images::frame_key(&store, &camera, &ts_ns)?;
        let entry = store.frame(&key)?.ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no frame of {camera} at {ts_ns}"),
        })?;
        let ts = entry.ts_ns;
        let scores = entry
            .tags
            .iter()
            .map(|t| SetScoresView {
                set: t.set.clone(),
                top: t.top.clone(),
                scores: t.scores.clone(),
            })
            .collect();
        let window = |from_ns, to_ns| FrameFilter {
            streams: Some(vec![camera.clone()]),
            from_ns: Some(from_ns),
            to_ns: Some(to_ns),
            ..Default::default()
        };
        // Before: the last few of a window (frames come in time order).
        let before = store.frames(
            &window(ts.saturating_sub(NEIGHBOUR_WINDOW_NS), ts - 1),
            1000,
        )?;
        let after = store.frames(
            &window(ts + 1, ts.saturating_add(NEIGHBOUR_WINDOW_NS)),
            NEIGHBOURS,
        )?;
        let skip = before.len().saturating_sub(NEIGHBOURS);
        let neighbours = before
            .into_iter()
            .skip(skip)
            .chain(after)
            .map(FrameView::from)
            .collect();
        let segment = store.segments(&SegmentFilter {
            streams: Some(vec![camera.clone()]),
            from_ns: Some(ts),
            to_ns: Some(ts),
            limit: Some(1),
            ..Default::default()
        })?;
        Ok(FrameDetail {
            frame: FrameView::from(entry),
            scores,
            segment: views(&segment).into_iter().next(),
            neighbours,
        })
    })
    .await?;
    Ok(Json(detail))
}
