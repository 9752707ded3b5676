//! The web page: plain HTML, CSS and JavaScript modules compiled into the
//! binary, so it needs no build step, no network and no files at run time.
//! It holds no data, so it is served without the API token; everything it
//! shows comes from `/api/...` calls that carry it.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `(name, content type, bytes)` of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css", include_str!("style.css")),
    ("app.js", JS, include_str!("app.js")),
    ("api.js", JS, include_str!("api.js")),
    ("search.js", JS, include_str!("search.js")),
    ("frame.js", JS, include_str!("frame.js")),
    ("timeline.js", JS, include_str!("timeline.js")),
    ("summary.js", JS, include_str!("summary.js")),
    ("streams.js", JS, include_str!("streams.js")),
];

const JS: &str = "text/javascript";

/// Only our own scripts and styles; images from the API come as blobs.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

fn page_response(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the page.
pub async fn index() -> Response {
    page_response("text/html; charset=utf-8", include_str!("index.html"))
}

/// `GET /assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page_response(content_type, body),
        None => super::ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no asset '{file}'"),
        }
        .into_response(),
    }
}
