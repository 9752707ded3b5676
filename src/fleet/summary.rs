//! `roadrep fleet summary`: one vehicle's segments in time order, as lines
//! `2026-12-01 14:02:10-14:02:52 front highway, clear, daytime: "caption"`.
//! Captions are searchable by words (`q`, PostgreSQL full text search on
//! the segments' generated `caption_words`).

use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use super::FleetError;
use super::writer::timestamp;
use crate::search::{bounded_top, format_time};

/// Segments returned when `top` is not given.
pub const DEFAULT_SEGMENTS: usize = 1000;

/// A summary as the CLI and `/api/fleet/summary` take it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSummaryRequest {
    /// The vehicle (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<String>,
    /// Cameras, comma-separated; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// Segments starting at or after this (RFC 3339 or Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Segments starting at or before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Words the caption must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Most segments (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
}

/// One segment of the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSegment {
    pub vehicle: String,
    pub camera: String,
    /// Start (RFC 3339).
    pub start: String,
    /// End, exclusive (RFC 3339).
    pub end: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub frames: i32,
    pub source: String,
    /// Dominant tags as the vehicle sent them (`[{set, class, share}]`).
    pub tags: serde_json::Value,
    pub caption: Option<String>,
    /// `pending`, `done`, `failed` or `none`.
    pub caption_state: String,
    /// The line shown.
    pub line: String,
}

/// `/api/fleet/summary`'s answer (and `--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSummaryResponse {
    pub segments: Vec<FleetSegment>,
}

/// `2026-12-01 14:02:10-14:02:52 front <summary>`, UTC.
pub fn line(camera: &str, start_ns: i64, end_ns: i64, summary: &str) -> String {
    let start = chrono::DateTime::from_timestamp_nanos(start_ns);
    let end = chrono::DateTime::from_timestamp_nanos(end_ns);
    format!(
        "{}-{} {camera} {summary}",
        start.format("%Y-%m-%d %H:%M:%S"),
        end.format("%H:%M:%S")
    )
}

/// The segments of one vehicle in (start, camera) order.
pub async fn summary(
    client: &tokio_postgres::Client,
    req: &FleetSummaryRequest,
) -> Result<Vec<FleetSegment>, FleetError> {
    let vehicle = req
        .vehicle
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| FleetError::BadRequest("vehicle: a vehicle is required".into()))?;
    crate::uplink::message::check_vehicle_id(vehicle)
        .map_err(|e| FleetError::BadRequest(format!("vehicle: {e}")))?;
    let bad = |e: crate::search::SearchError| FleetError::BadRequest(e.to_string());
    let (from, to) = crate::search::time_range(&req.from, &req.to).map_err(bad)?;
    let top = bounded_top(req.top, DEFAULT_SEGMENTS).map_err(bad)?;
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(vehicle.to_string())];
    let mut wheres = vec!["vehicle = $1".to_string()];
    let mut push = |sql: &str, p: Box<dyn ToSql + Sync + Send>| {
        params.push(p);
        wheres.push(sql.replace('?', &format!("${}", params.len())));
    };
    if let Some(c) = crate::search::cameras(req.camera.as_deref()) {
        push("camera = ANY(?::text[])", Box::new(c));
    }
    if let Some(f) = from {
        push("start_time >= ?::timestamptz", Box::new(timestamp(f)));
        push("start_ns >= ?::int8", Box::new(f));
    }
    if let Some(t) = to {
        push("start_time <= ?::timestamptz", Box::new(timestamp(t)));
        push("start_ns <= ?::int8", Box::new(t));
    }
    if let Some(q) = req.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        push(
            "caption_words @@ plainto_tsquery('english', ?::text)",
            Box::new(q.to_string()),
        );
    }
    let sql = format!(
        "SELECT vehicle, camera, start_ns, end_ns, frames, source, tags, caption, caption_state, summary \
         FROM segments WHERE {} ORDER BY start_ns, camera LIMIT {top}",
        wheres.join(" AND ")
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
    let rows = client.query(&sql, &refs).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (camera, start_ns, end_ns): (String, i64, i64) = (r.get(1), r.get(2), r.get(3));
            let summary: String = r.get(9);
            FleetSegment {
                line: line(&camera, start_ns, end_ns, &summary),
                vehicle: r.get(0),
                camera,
                start: format_time(start_ns),
                end: format_time(end_ns),
                start_ns,
                end_ns,
                frames: r.get(4),
                source: r.get(5),
                tags: r.get(6),
                caption: r.get(7),
                caption_state: r.get(8),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_the_day_and_times() {
        let start = 1_796_220_000_000_000_000 + 130_000_000_000; // 14:02:10
        assert_eq!(
            line(
                "front",
                start,
                start + 42_000_000_000,
                "highway, clear: \"a road\""
            ),
            "2026-12-02 14:02:10-14:02:52 front highway, clear: \"a road\""
        );
    }
}
