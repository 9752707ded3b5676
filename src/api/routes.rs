//! Handlers. Model runs and store scans go to blocking threads.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::ingest::still;
use crate::models::RgbFrame;
use crate::search::{self, SearchRequest};
use crate::store::{FrameEntry, FrameFilter, SearchHit};

/// A query string that does not parse: 400 with the parser's message.
fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request(e.body_text())
}

/// Runs blocking work under the request limit.
pub(super) async fn blocking<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = state
        .limit
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "shutting down".into(),
        })?;
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("worker failed: {e}"),
    })?
}

pub async fn health(State(state): State<ApiState>) -> impl IntoResponse {
    let streams: Vec<_> = state
        .streams
        .read()
        .map(|s| s.iter().map(|st| st.snapshot()).collect())
        .unwrap_or_default();
    let store = state.store.health();
    let rigs = state.rigs.read().map(|r| r.clone()).unwrap_or_default();
    ::metrics::gauge!(crate::pipeline::metrics::STORE_WRITABLE)
        .set(f64::from(u8::from(store.writable)));
    // Degraded: alive and answering, but what the cameras see is not being
    // stored.
    let status = if store.writable { "ok" } else { "degraded" };
    Json(serde_json::json!({
        "status": status,
        "model": state.model.manifest().name,
        "fingerprint": state.model.fingerprint(),
        "store": store,
        "streams": streams,
        "rigs": rigs,
    }))
}

/// `POST /api/reload`: the daemon re-reads its config's `[[streams]]`
/// (as on `SIGHUP`) and says what changed; a config that does not load
/// changes nothing (400 with the reason).
pub async fn reload(
    State(state): State<ApiState>,
) -> Result<Json<crate::daemon::ReloadReport>, ApiError> {
    let unavailable = |message: &str| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: message.into(),
    };
    let reloads = state
        .reload
        .as_ref()
        .ok_or_else(|| unavailable("reload is not available here"))?;
    let (reply, outcome) = tokio::sync::oneshot::channel();
    reloads
        .send(crate::daemon::ReloadRequest { reply })
        .await
        .map_err(|_| unavailable("shutting down"))?;
    let report = outcome
        .await
        .map_err(|_| unavailable("shutting down"))?
        .map_err(ApiError::bad_request)?;
    Ok(Json(report))
}

pub async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let handle = state.metrics.as_ref().ok_or(ApiError {
        status: StatusCode::NOT_FOUND,
        message: "metrics are off".into(),
    })?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    ))
}

/// Search results as returned by the API.
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchResponse {
    /// Best first.
    pub hits: Vec<HitView>,
}

/// One hit: its similarity and the frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct HitView {
    /// Cosine similarity.
    pub score: f32,
    /// The frame.
    #[serde(flatten)]
    pub frame: FrameView,
}

impl From<SearchHit> for HitView {
    fn from(h: SearchHit) -> Self {
        Self {
            score: h.score,
            frame: FrameView::from(h.frame),
        }
    }
}

/// A frame as listed by the API.
#[derive(Debug, Serialize, Deserialize)]
pub struct FrameView {
    /// Camera.
    pub camera: String,
    /// Frame time (RFC 3339, UTC).
    pub time: String,
    /// Frame time, ns since the epoch.
    pub ts_ns: i64,
    /// Pts in the source, seconds.
    pub pts_s: f64,
    /// Source file or URL.
    pub source: String,
    /// Top class and its probability per label set.
    pub tags: std::collections::BTreeMap<String, (String, f32)>,
    /// API path of the frame itself (`GET` it for every set's scores);
    /// a string because `ts_ns` does not fit a JavaScript number.
    #[serde(default)]
    pub url: String,
    /// API path of its thumbnail (JPEG), when one is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
    /// API path of the full frame, decoded again from its source file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// API path of its keyframe picture, when it is a segment's keyframe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyframe: Option<String>,
}

impl From<FrameEntry> for FrameView {
    fn from(f: FrameEntry) -> Self {
        let url = |file: &str| super::images::frame_url(&f.stream, f.ts_ns, file);
        Self {
            url: url(""),
            thumbnail: f.thumbnail.then(|| url("thumb.jpg")),
            keyframe: f.keyframe.then(|| url("keyframe.jpg")),
            // Only a file can be decoded again.
            image: matches!(
                crate::ingest::config::SourceKind::parse(&f.record.source_label),
                Ok(crate::ingest::config::SourceKind::File(_))
            )
            .then(|| url("image.jpg")),
            camera: f.stream.clone(),
            time: search::format_time(f.ts_ns),
            ts_ns: f.ts_ns,
            pts_s: f.record.pts_ns as f64 / 1e9,
            source: f.record.source_label,
            tags: f
                .tags
                .into_iter()
                .map(|t| (t.set, (t.top, t.score)))
                .collect(),
        }
    }
}

pub async fn text_search(
    State(state): State<ApiState>,
    req: Result<Query<SearchRequest>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Query(req) = req.map_err(query_error)?;
    req.check_labels(state.tagger.class_embeddings())?;
    let s = state.clone();
    let store = state.store.get()?;
    if req.rig.is_some() {
        // `rig=`: the rig's records, ranked by their fused embedding.
        let hits = blocking(&state, move || {
            Ok(search::rigs::rig_text_search(&store, &s.model, &req)?)
        })
        .await?;
        return Ok(Json(search::rigs::RigSearchResponse { rig_hits: hits }).into_response());
    }
    let hits = blocking(&state, move || {
        Ok(search::text_search(&store, &s.model, &req)?)
    })
    .await?;
    Ok(Json(SearchResponse {
        hits: hits.into_iter().map(HitView::from).collect(),
    })
    .into_response())
}

pub async fn image_search(
    State(state): State<ApiState>,
    req: Result<Query<SearchRequest>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<SearchResponse>, ApiError> {
    let Query(req) = req.map_err(query_error)?;
    let body = read_upload(&headers, body, super::MAX_UPLOAD_BYTES).await?;
    req.check_labels(state.tagger.class_embeddings())?;
    if body.is_empty() {
        return Err(ApiError::bad_request("body: send the query image's bytes"));
    }
    let s = state.clone();
    let store = state.store.get()?;
    let hits = blocking(&state, move || {
        let img = still::decode_limited(
            std::path::Path::new("request body"),
            &body,
            super::MAX_UPLOAD_PIXELS,
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(search::image_search(
            &store,
            &s.model,
            &RgbFrame::from_image(&img),
            &req,
        )?)
    })
    .await?;
    Ok(Json(SearchResponse {
        hits: hits.into_iter().map(HitView::from).collect(),
    }))
}

pub async fn frames(
    State(state): State<ApiState>,
    req: Result<Query<SearchRequest>, QueryRejection>,
) -> Result<Json<Vec<FrameView>>, ApiError> {
    let Query(req) = req.map_err(query_error)?;
    let limit = search::bounded_top(req.top, 100)?;
    req.check_labels(state.tagger.class_embeddings())?;
    let filter = req.filter()?;
    let store = state.store.get()?;
    let frames = blocking(&state, move || Ok(store.frames(&filter, limit)?)).await?;
    Ok(Json(frames.into_iter().map(FrameView::from).collect()))
}

/// `/api/timeline` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// Camera (required).
    pub camera: String,
    /// Label set (required), e.g. `weather`.
    pub set: String,
    /// Earliest time.
    pub from: Option<String>,
    /// Latest time.
    pub to: Option<String>,
}

/// A run of consecutive frames with the same top class.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TimelineRun {
    /// Class.
    pub class: String,
    /// First frame time (RFC 3339).
    pub start: String,
    /// Last frame time (RFC 3339).
    pub end: String,
    /// Frames in the run.
    pub frames: u64,
    /// Mean probability of the class over the run.
    pub mean_score: f32,
}

pub async fn timeline(
    State(state): State<ApiState>,
    q: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<Vec<TimelineRun>>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let req = SearchRequest {
        camera: Some(q.camera.clone()),
        from: q.from,
        to: q.to,
        ..Default::default()
    };
    let filter: FrameFilter = req.filter()?;
    let store = state.store.get()?;
    let set = q.set.clone();
    let runs = blocking(&state, move || {
        // Streamed: memory grows with the number of runs, not of frames.
        let mut runs: Vec<(String, i64, i64, u64, f32)> = Vec::new();
        let (mut any_frame, mut seen_set) = (false, false);
        store.for_each_frame(&filter, |f| {
            any_frame = true;
            if let Some(t) = f.tags.iter().find(|t| t.set == set) {
                seen_set = true;
                match runs.last_mut() {
                    Some(r) if r.0 == t.top => {
                        r.2 = f.ts_ns;
                        r.3 += 1;
                        r.4 += t.score;
                    }
                    _ => runs.push((t.top.clone(), f.ts_ns, f.ts_ns, 1, t.score)),
                }
            }
            true
        })?;
        let seen_set = seen_set || !any_frame;
        if !seen_set {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("set '{set}': no such label set in the stored tags"),
            });
        }
        Ok(runs
            .into_iter()
            .map(|(class, a, b, n, sum)| TimelineRun {
                class,
                start: search::format_time(a),
                end: search::format_time(b),
                frames: n,
                mean_score: sum / n as f32,
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(runs))
}

pub async fn streams(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let store = state.store.get()?;
    let backlog = store.caption_backlog();
    let index = store.index_status();
    let stats = blocking(&state, move || Ok(store.stats()?)).await?;
    // Flattened: the stats' own fields stay where clients read them.
    Ok(Json(serde_json::json!({
        "frames": stats.frames,
        "disk_bytes": stats.disk_bytes,
        "caption_backlog": backlog,
        "search_index": index,
    })))
}

/// `/api/segments`: scene segments (camera, time, source, caption words).
pub async fn segments(
    State(state): State<ApiState>,
    req: Result<Query<crate::search::summary::SegmentsRequest>, QueryRejection>,
) -> Result<Json<Vec<crate::search::summary::SegmentView>>, ApiError> {
    let Query(req) = req.map_err(query_error)?;
    let filter = req.filter()?;
    let store = state.store.get()?;
    let segmenter = state.segmenter.clone();
    let views = blocking(&state, move || {
        if let Some(views) = req.rig_views(&store, &segmenter)? {
            return Ok(views);
        }
        Ok(crate::search::summary::views(&store.segments(&filter)?))
    })
    .await?;
    Ok(Json(views))
}

/// `/api/summary`: the same segments as text, one line each.
pub async fn summary(
    State(state): State<ApiState>,
    req: Result<Query<crate::search::summary::SegmentsRequest>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(views) = segments(State(state), req).await?;
    let text: String = views.iter().map(|v| format!("{}\n", v.line)).collect();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// Reads an upload into one buffer sized from its `Content-Length`, so a
/// body costs its size once (collecting chunks and then joining them
/// costs it twice or more). Over `limit`: 413.
async fn read_upload(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("body: larger than {limit} bytes"),
    };
    // A declared size over the limit is still read up to the limit before
    // the 413: a client that sends its whole body before reading the
    // answer would otherwise get a broken pipe instead of the reason.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Holds one of the few upload slots while a request's body is read and
/// handled, so concurrent uploads cannot buffer unbounded memory.
pub async fn one_of_few_uploads(
    State(slots): State<std::sync::Arc<tokio::sync::Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Ok(_slot) = slots.acquire_owned().await else {
        return ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "shutting down".into(),
        }
        .into_response();
    };
    next.run(request).await
}

/// Unknown routes: 404 in JSON.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route {}", uri.path()),
    }
}

/// A known route with the wrong method: 405 in JSON.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{method} is not allowed on {}", uri.path()),
    }
}

/// `/api/uplink`: the link to the broker and the outbox (404 without
/// `[uplink]`).
pub async fn uplink(
    State(state): State<ApiState>,
) -> Result<Json<crate::uplink::UplinkReport>, ApiError> {
    let Some(link) = state.uplink.clone() else {
        return Err(ApiError {
            status: axum::http::StatusCode::NOT_FOUND,
            message: "no [uplink] in the daemon's config".into(),
        });
    };
    let store = state.store.get().ok();
    let report = blocking(&state, move || Ok(link.report(store.as_ref()))).await?;
    Ok(Json(report))
}
