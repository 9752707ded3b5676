//! HTTP API (axum), bound to localhost by default.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | liveness, streams and their state |
//! | `GET /metrics` | Prometheus metrics |
//! | `GET /api/search?q=...` | text search; filters below |
//! | `POST /api/search/image` | image search; body = image file bytes |
//! | `GET /` , `GET /assets/{file}` | the web page (no token needed: it holds no data) |
//! | `GET /api/labels` | the label sets and their classes |
//! | `GET /api/frames` | frames in (camera, time) order |
//! | `GET /api/frames/{camera}/{ts_ns}` | one frame: every set's scores, its segment, neighbours |
//! | `GET /api/frames/{camera}/{ts_ns}/thumb.jpg` | a frame's stored thumbnail |
//! | `GET /api/frames/{camera}/{ts_ns}/keyframe.jpg` | a segment keyframe's stored picture |
//! | `GET /api/frames/{camera}/{ts_ns}/image.jpg` | the full frame, decoded again from its file |
//! | `GET /api/timeline?camera=..&set=..` | runs of one label set's top class |
//! | `GET /api/streams` | cameras, frame counts, store size |
//! | `POST /api/reload` | re-read the config's `[[streams]]` (as `SIGHUP`) |
//!
//! Filters (query string): `camera=a,b`, `from`, `to` (RFC 3339 or Unix
//! seconds), `tag=set:class,...`, `min_tag_score`, `min_score`, `top`.
//! Searches run the text or image encoder on blocking threads, at most
//! `api.max_concurrent_requests` at once.

pub mod auth;
mod detail;
mod error;
pub mod images;
mod page;
pub mod routes;
pub mod server;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

pub use error::ApiError;
pub use routes::{FrameView, HitView, SearchResponse};

use crate::models::ClipModel;

/// Shared handler state.
#[derive(Clone)]
pub struct ApiState {
    /// The store (closed while it cannot be written: 503).
    pub store: Arc<crate::daemon::StoreSlot>,
    /// Model for query embeddings.
    pub model: Arc<ClipModel>,
    /// The label sets tag filters must name.
    pub tagger: Arc<crate::tagging::SceneTagger>,
    /// Prometheus renderer, if metrics are installed.
    pub metrics: Option<PrometheusHandle>,
    /// Stream states, updated by the daemon.
    pub streams: crate::daemon::StreamStatuses,
    /// Bounds concurrent model runs from requests.
    pub limit: Arc<Semaphore>,
    /// When set, every request must carry it (see [`auth`]).
    pub token: Option<auth::ApiToken>,
    /// The rigs' counters, published by the worker.
    pub rigs: crate::pipeline::rigs::RigStatusBoard,
    /// `[segments]`, for rig segments computed when asked.
    pub segmenter: crate::segment::SegmenterConfig,
    /// Where `POST /api/reload` asks the daemon to re-read its config.
    pub reload: Option<tokio::sync::mpsc::Sender<crate::daemon::ReloadRequest>>,
    /// The uplink, when `[uplink]` is set.
    pub uplink: Option<Arc<crate::uplink::LinkBoard>>,
}

/// Image uploads read at once: each body (up to 32 MiB) is buffered, so
/// they wait for a slot *before* their body is read.
pub const MAX_UPLOADS: usize = 2;

/// Largest request body (a query image).
pub const MAX_UPLOAD_BYTES: usize = 32 << 20;

/// Largest query image decoded (25 megapixels, 5000x5000; bigger than any
/// camera frame): with [`MAX_UPLOADS`] this bounds what uploads can hold
/// at once to about 2 x (32 MiB body + 25 Mpx x 11 bytes) in the worst
/// case (16-bit RGBA PNG), far less for JPEG (3 bytes a pixel).
pub const MAX_UPLOAD_PIXELS: u64 = 25_000_000;

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let token = state.token.clone();
    let router = Router::new()
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/api/search", get(routes::text_search))
        .route(
            "/api/search/image",
            post(routes::image_search).route_layer(axum::middleware::from_fn_with_state(
                Arc::new(Semaphore::new(MAX_UPLOADS)),
                routes::one_of_few_uploads,
            )),
        )
        .route("/api/labels", get(detail::labels))
        .route("/api/frames", get(routes::frames))
        .route("/api/frames/{camera}/{ts_ns}", get(detail::frame))
        .route(
            "/api/frames/{camera}/{ts_ns}/thumb.jpg",
            get(images::thumbnail),
        )
        .route(
            "/api/frames/{camera}/{ts_ns}/keyframe.jpg",
            get(images::keyframe),
        )
        .route(
            "/api/frames/{camera}/{ts_ns}/image.jpg",
            get(images::full_frame),
        )
        .route("/api/timeline", get(routes::timeline))
        .route("/api/streams", get(routes::streams))
        .route("/api/segments", get(routes::segments))
        .route("/api/summary", get(routes::summary))
        .route("/api/reload", post(routes::reload))
        .route("/api/uplink", get(routes::uplink))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .with_state(state);
    let router = match token {
        Some(t) => router.layer(axum::middleware::from_fn_with_state(t, auth::require_token)),
        None => router,
    };
    // Outside the token layer: the page holds no data and asks for the token.
    Router::new()
        .route("/", get(page::index))
        .route("/assets/{file}", get(page::asset))
        .merge(router)
}
