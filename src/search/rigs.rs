//! Rig search: a text query ranks a rig's records by their fused
//! embedding (in CLIP's space, so the same text encoder applies), with
//! time, fused-tag and view filters. Each hit lists its views with their
//! own tags.

use serde::{Deserialize, Serialize};

use super::{SearchError, SearchRequest, cameras, format_time};
use crate::models::ClipModel;
use crate::store::{FrameKey, RigFilter, RigHit, Store};
use crate::tagging::score::l2_normalize;

/// One view of a hit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RigViewHit {
    /// Role.
    pub role: String,
    /// Camera.
    pub camera: String,
    /// Whether a frame of this role is in the record.
    pub present: bool,
    /// Frame time (RFC 3339), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Frame time, ns, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ns: Option<i64>,
    /// Frame time minus the anchor's, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<f64>,
    /// The frame's own tags: set -> (class, probability).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, (String, f32))>,
}

/// One rig hit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RigHitView {
    /// Cosine similarity of the fused embedding.
    pub score: f32,
    /// Rig.
    pub rig: String,
    /// Anchor time (RFC 3339).
    pub time: String,
    /// Anchor time, ns.
    pub ts_ns: i64,
    /// Anchor role.
    pub anchor: String,
    /// Tags of the fused embedding: set -> (class, probability).
    pub tags: Vec<(String, (String, f32))>,
    /// Fingerprint of what fused the views.
    pub fusion_model: String,
    /// Every role, present or absent.
    pub views: Vec<RigViewHit>,
}

/// `/api/search?rig=...` (and `roadrep search --rig`).
#[derive(Debug, Serialize, Deserialize)]
pub struct RigSearchResponse {
    /// Best first.
    pub rig_hits: Vec<RigHitView>,
}

impl SearchRequest {
    /// The rig filter this request describes (`camera` does not apply).
    pub fn rig_filter(&self) -> Result<RigFilter, SearchError> {
        if self.camera.is_some() {
            return Err(SearchError::BadRequest(
                "camera does not apply to a rig search: use views=front,back".into(),
            ));
        }
        let frame = self.filter()?;
        Ok(RigFilter {
            from_ns: frame.from_ns,
            to_ns: frame.to_ns,
            views: cameras(self.views.as_deref()).unwrap_or_default(),
            tags: frame.tags,
            min_tag_score: frame.min_tag_score,
        })
    }
}

/// Ranks the records of `req.rig` by the text query `req.q`, with the
/// fusion model of the rig's newest record.
pub fn rig_text_search(
    store: &Store,
    model: &ClipModel,
    req: &SearchRequest,
) -> Result<Vec<RigHitView>, SearchError> {
    let rig = req
        .rig
        .as_deref()
        .ok_or_else(|| SearchError::BadRequest("rig: a rig name is required".into()))?;
    let q = req.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let q = q.ok_or_else(|| SearchError::BadRequest("q: a text query is required".into()))?;
    let (filter, top) = (req.rig_filter()?, req.top()?);
    let rig_id = store.known_rig(rig)?;
    let Some(newest) = store.last_rig_record_ns(rig_id)? else {
        return Ok(Vec::new());
    };
    let fusion = store
        .rig_records(rig_id, Some(newest), Some(newest))?
        .pop()
        .map(|r| r.fusion_model)
        .unwrap_or_default();
    let embed = model.get_text_features(&[q])?;
    let query = l2_normalize(embed.row(0));
    let hits = store.search_rigs(
        rig,
        &fusion,
        query.as_slice().expect("contiguous"),
        &filter,
        top,
    )?;
    let streams = store.streams()?;
    hits.into_iter()
        .filter(|h| req.min_score.is_none_or(|m| h.score >= m))
        .map(|h| view(store, &streams, h))
        .collect()
}

fn tag_pairs(tags: &[crate::store::SetTag]) -> Vec<(String, (String, f32))> {
    tags.iter()
        .map(|t| (t.set.clone(), (t.top.clone(), t.score)))
        .collect()
}

fn view(
    store: &Store,
    streams: &[crate::store::StreamRecord],
    h: RigHit,
) -> Result<RigHitView, SearchError> {
    let mut views = Vec::with_capacity(h.record.views.len());
    for v in &h.record.views {
        let tags = match streams.iter().find(|s| s.name == v.camera) {
            Some(s) if v.present => store
                .frame(&FrameKey {
                    stream_id: s.id,
                    ts_ns: v.ts_ns,
                })?
                .map(|f| tag_pairs(&f.tags))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        views.push(RigViewHit {
            role: v.role.clone(),
            camera: v.camera.clone(),
            present: v.present,
            time: v.present.then(|| format_time(v.ts_ns)),
            ts_ns: v.present.then_some(v.ts_ns),
            offset_ms: v.present.then_some(v.offset_ms),
            tags,
        });
    }
    Ok(RigHitView {
        score: h.score,
        rig: h.rig,
        time: format_time(h.record.anchor_ns),
        ts_ns: h.record.anchor_ns,
        anchor: h.record.anchor_role,
        tags: tag_pairs(&h.record.tags.sets),
        fusion_model: h.record.fusion_model,
        views,
    })
}
