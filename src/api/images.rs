//! Pictures of stored frames: the thumbnail stored with each frame, the
//! larger picture stored with each segment's keyframe, and the full frame
//! decoded again from its source file while it exists.
//! Both carry an ETag (a hash of the bytes) and answer `If-None-Match`
//! with 304, so a page scrolling back and forth fetches each once.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

use super::{ApiError, ApiState};
use crate::ingest::frames_at::decode_frames_at;
use crate::ingest::thumbnail::encode_jpeg;
use crate::search::export::source_file;
use crate::store::{FrameKey, Store};

/// JPEG quality of full frames decoded again.
const FULL_FRAME_QUALITY: i32 = 90;

/// The API path of a frame's picture (`thumb.jpg`, `image.jpg`), or of
/// the frame itself when `file` is empty.
pub fn frame_url(camera: &str, ts_ns: i64, file: &str) -> String {
    let base = format!("/api/frames/{}/{ts_ns}", percent_encode(camera));
    if file.is_empty() {
        base
    } else {
        format!("{base}/{file}")
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (a path
/// segment or a query value).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn not_found(message: String) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message,
    }
}

/// The stored frame `camera`/`ts_ns`.
pub(super) fn frame_key(store: &Store, camera: &str, ts_ns: &str) -> Result<FrameKey, ApiError> {
    let ts_ns: i64 = ts_ns.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "frame time '{ts_ns}': expected nanoseconds since the epoch (ts_ns)"
        ))
    })?;
    let stream_id = store
        .known_stream_id(camera)?
        .ok_or_else(|| not_found(format!("unknown camera '{camera}'")))?;
    Ok(FrameKey { stream_id, ts_ns })
}

/// A JPEG with its ETag; 304 when the client has it already.
fn jpeg_response(headers: &HeaderMap, bytes: Vec<u8>) -> Response {
    let digest = sha2::Sha256::digest(&bytes);
    let etag = format!("\"{}\"", hex::encode(&digest[..12]));
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag = HeaderValue::from_str(&etag).expect("hex is a valid header value");
    let cache = HeaderValue::from_static("private, max-age=3600");
    if cached {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /api/frames/{camera}/{ts_ns}/thumb.jpg`: the stored thumbnail.
pub async fn thumbnail(
    State(state): State<ApiState>,
    Path((camera, ts_ns)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = state.store.get()?;
    let jpeg = super::routes::blocking(&state, move || {
        let key = frame_key(&store, &camera, &ts_ns)?;
        store.thumbnail(&key)?.ok_or_else(|| {
            not_found(format!(
                "no thumbnail of {camera} at {ts_ns} (no such frame, or stored with [store] thumbnail_width = 0)"
            ))
        })
    })
    .await?;
    Ok(jpeg_response(&headers, jpeg.to_vec()))
}

/// `GET /api/frames/{camera}/{ts_ns}/keyframe.jpg`: the stored picture of
/// a segment's keyframe.
pub async fn keyframe(
    State(state): State<ApiState>,
    Path((camera, ts_ns)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = state.store.get()?;
    let jpeg = super::routes::blocking(&state, move || {
        let key = frame_key(&store, &camera, &ts_ns)?;
        store.keyframe_picture(&key)?.ok_or_else(|| {
            not_found(format!(
                "no keyframe picture of {camera} at {ts_ns} (not the keyframe of a closed segment, or stored with [store] keyframe_width = 0)"
            ))
        })
    })
    .await?;
    Ok(jpeg_response(&headers, jpeg.to_vec()))
}

/// `GET /api/frames/{camera}/{ts_ns}/image.jpg`: the full frame, decoded
/// again from its source file (404 when the file is gone or changed, or
/// the source was live).
pub async fn full_frame(
    State(state): State<ApiState>,
    Path((camera, ts_ns)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = state.store.get()?;
    let jpeg = super::routes::blocking(&state, move || {
        let key = frame_key(&store, &camera, &ts_ns)?;
        let entry = store
            .frame(&key)?
            .ok_or_else(|| not_found(format!("no frame of {camera} at {ts_ns}")))?;
        let label = &entry.record.source_label;
        let path = source_file(&store, &camera, label)?.ok_or_else(|| {
            not_found(format!(
                "the source of this frame, '{label}', is not a file that still exists unchanged"
            ))
        })?;
        let pts = entry.record.pts_ns;
        let mut jpeg = None;
        decode_frames_at(&camera, &path, &[pts], |_, rgb| {
            jpeg = Some(encode_jpeg(rgb, FULL_FRAME_QUALITY)?);
            Ok(())
        })
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        })?;
        jpeg.ok_or_else(|| not_found(format!("'{label}' has no frame at pts {pts} ns any more")))
    })
    .await?;
    Ok(jpeg_response(&headers, jpeg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_names_are_escaped_in_urls() {
        assert_eq!(
            frame_url("front", 5, "thumb.jpg"),
            "/api/frames/front/5/thumb.jpg"
        );
        assert_eq!(
            frame_url("car 1/front", -5, "image.jpg"),
            "/api/frames/car%201%2Ffront/-5/image.jpg"
        );
    }
}
