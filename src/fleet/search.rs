//! `roadrep fleet search`: a text query embedded with the vehicles' CLIP
//! model, ranked by cosine distance in pgvector across vehicles, with
//! filters in SQL.
//!
//! The ranking uses the model's partial HNSW index: the query repeats its
//! expression (`embedding::halfvec(D) <=> $1`) and its predicate (`model =
//! '<fingerprint>'` as a literal, checked by [`schema::valid_model`]), so
//! the planner can match them. With a selective filter (a rare tag, one
//! vehicle) a plain HNSW scan would stop after `ef_search` candidates and
//! return fewer than `top` hits; pgvector's iterative scan
//! (`hnsw.iterative_scan = relaxed_order`) goes on until `top` rows pass
//! the filter or `hnsw.max_scan_tuples` entries were visited. Relaxed
//! order means rows come back nearly sorted: they are sorted again here.
//! `exact` orders by a different expression (no index matches it): the
//! exact scan recall is measured against. A filter the planner expects to
//! keep at most `[index] exact_below` rows (one vehicle, a rare tag) is
//! scanned exactly unless the index is asked for: HNSW is then slower and
//! misses hits (at 1M frames, one vehicle: 55 ms at recall 0.88 against
//! 43 ms exact), and the planner, which costs the index scan by
//! `ef_search`, does not see it.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgvector::HalfVector;
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use super::FleetError;
use super::config::{FleetConfig, IndexConfig};
use super::schema;
use super::writer::timestamp;
use crate::models::{ClipModel, ClipOptions, OrtRuntime};
use crate::search::{SearchRequest, bounded_top, format_time};

/// A fleet search as the CLI and `/api/fleet/search` take it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSearchRequest {
    /// What to look for ("foggy highway at night").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Vehicles, comma-separated; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<String>,
    /// Cameras, comma-separated; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// Earliest time (RFC 3339 or Unix seconds), inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Latest time, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `set:class` (or `set=class`), comma-separated; all must be the
    /// frame's top class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Results wanted (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
    /// `true`: exact scan; `false`: the index; absent: the index unless
    /// the filter is selective (`[index] exact_below`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
}

/// How a search ranked the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetSearchPath {
    /// By the HNSW index's expression (iterative scan; the planner may
    /// still sort a few rows itself).
    Index,
    /// Every matching row scored.
    Exact,
}

/// The filters of a request, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetFilter {
    pub vehicles: Option<Vec<String>>,
    pub cameras: Option<Vec<String>>,
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    pub tags: Vec<(String, String)>,
    pub top: usize,
    /// `None`: the index unless the filter is selective.
    pub path: Option<FleetSearchPath>,
}

impl FleetSearchRequest {
    /// The text query, trimmed; an error names `q` when it is missing.
    pub fn text(&self) -> Result<&str, FleetError> {
        self.q
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .ok_or_else(|| FleetError::BadRequest("q: a text query is required".into()))
    }

    /// Checks every filter; errors name the parameter.
    pub fn filter(&self) -> Result<FleetFilter, FleetError> {
        // The local search's parsing: same time formats, same tag syntax.
        let local = SearchRequest {
            camera: self.camera.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            tag: self.tag.clone(),
            ..Default::default()
        };
        let bad = |e: crate::search::SearchError| FleetError::BadRequest(e.to_string());
        let f = local.filter().map_err(bad)?;
        let vehicles = crate::search::cameras(self.vehicle.as_deref());
        for v in vehicles.iter().flatten() {
            crate::uplink::message::check_vehicle_id(v)
                .map_err(|e| FleetError::BadRequest(format!("vehicle: {e}")))?;
        }
        Ok(FleetFilter {
            vehicles,
            cameras: f.streams,
            from_ns: f.from_ns,
            to_ns: f.to_ns,
            tags: f.tags,
            top: bounded_top(self.top, crate::search::DEFAULT_TOP).map_err(bad)?,
            path: self.exact.map(|exact| {
                if exact {
                    FleetSearchPath::Exact
                } else {
                    FleetSearchPath::Index
                }
            }),
        })
    }
}

/// One frame found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetHit {
    /// Cosine similarity to the query.
    pub score: f32,
    pub vehicle: String,
    pub camera: String,
    /// Frame time (RFC 3339, ms).
    pub time: String,
    /// Frame time, ns since the epoch.
    pub time_ns: i64,
    /// Presentation time in its source, seconds.
    pub pts_s: f64,
    /// Source file or URL on the vehicle.
    pub source: String,
    /// Top class per label set.
    pub tags: BTreeMap<String, String>,
}

/// `/api/fleet/search`'s answer (and `--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSearchResponse {
    /// Fingerprint of the model the query was embedded with.
    pub model: String,
    #[serde(flatten)]
    pub found: FleetSearchOutcome,
}

/// What [`search_frames`] found, and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSearchOutcome {
    pub hits: Vec<FleetHit>,
    pub path: FleetSearchPath,
    /// Rows the planner expected the filter to keep (when it was asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<u64>,
}

impl FleetHit {
    /// `0.9123  v7  front  2026-12-01T14:02:10.500Z  scene=highway weather=foggy`.
    pub fn line(&self) -> String {
        let tags: Vec<String> = self.tags.iter().map(|(s, c)| format!("{s}={c}")).collect();
        format!(
            "{:.4}  {}  {}  {}  {}",
            self.score,
            self.vehicle,
            self.camera,
            self.time,
            tags.join(" ")
        )
    }
}

/// The text side of the vehicles' CLIP model.
#[derive(Clone)]
pub struct QueryEncoder {
    model: Arc<ClipModel>,
}

impl QueryEncoder {
    /// Loads `[model] dir` (verified against its manifest).
    pub fn load(config: &FleetConfig) -> Result<Self, FleetError> {
        let runtime = OrtRuntime::load(config.model.ort_library.as_deref())?;
        let options = ClipOptions {
            intra_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            ..Default::default()
        };
        Ok(Self {
            model: Arc::new(ClipModel::load(&config.model.dir, &runtime, &options)?),
        })
    }

    /// The model's fingerprint: only its embeddings are searched.
    pub fn fingerprint(&self) -> &str {
        self.model.fingerprint()
    }

    /// The L2-normalised text embedding of `text` (blocking: runs the model).
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, FleetError> {
        let e = self.model.get_text_features(&[text])?;
        Ok(crate::tagging::score::l2_normalize(e.row(0)).to_vec())
    }
}

/// Ranks the frames of model `fp` by cosine similarity to `query`.
pub async fn search_frames(
    client: &mut tokio_postgres::Client,
    fp: &str,
    query: &[f32],
    filter: &FleetFilter,
    index: &IndexConfig,
) -> Result<FleetSearchOutcome, FleetError> {
    if !schema::valid_model(fp) {
        return Err(FleetError::BadRequest(format!(
            "model fingerprint '{fp}' is not a safe name"
        )));
    }
    let dim = query.len();
    let q = HalfVector::from_f32_slice(query);
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(q)];
    let mut wheres = vec![format!("model = '{fp}'")];
    let mut push = |sql: &str, p: Box<dyn ToSql + Sync + Send>| {
        params.push(p);
        wheres.push(sql.replace('?', &format!("${}", params.len())));
    };
    if let Some(v) = &filter.vehicles {
        push("vehicle = ANY(?::text[])", Box::new(v.clone()));
    }
    if let Some(c) = &filter.cameras {
        push("camera = ANY(?::text[])", Box::new(c.clone()));
    }
    if let Some(from) = filter.from_ns {
        // The partition column prunes partitions; the ns column is exact.
        push("time >= ?::timestamptz", Box::new(timestamp(from)));
        push("time_ns >= ?::int8", Box::new(from));
    }
    if let Some(to) = filter.to_ns {
        push("time <= ?::timestamptz", Box::new(timestamp(to)));
        push("time_ns <= ?::int8", Box::new(to));
    }
    if !filter.tags.is_empty() {
        let tags: serde_json::Map<String, serde_json::Value> = filter
            .tags
            .iter()
            .map(|(s, c)| (s.clone(), serde_json::Value::from(c.clone())))
            .collect();
        push(
            "tags @> ?::jsonb",
            Box::new(serde_json::Value::Object(tags)),
        );
    }
    // The model's predicate, and each filter's.
    let filtered = wheres.len() > 1;
    let wheres = wheres.join(" AND ");
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
    let tx = client.transaction().await?;
    let (path, estimated_rows) = match filter.path {
        Some(path) => (path, None),
        None if filtered && index.exact_below > 0 => {
            let rows = estimate_rows(&tx, &wheres, &refs).await?;
            let path = if rows <= index.exact_below {
                FleetSearchPath::Exact
            } else {
                FleetSearchPath::Index
            };
            (path, Some(rows))
        }
        None => (FleetSearchPath::Index, None),
    };
    // The exact scan orders by a different expression, which no index has.
    let order = match path {
        FleetSearchPath::Exact => "embedding <=> $1".to_string(),
        FleetSearchPath::Index => format!("{} <=> $1::halfvec({dim})", schema::embedding_expr(dim)),
    };
    let sql = format!(
        "SELECT vehicle, camera, time_ns, pts_ns, source, tags, ({order})::float8 AS distance \
         FROM frames WHERE {wheres} ORDER BY {order} LIMIT {}",
        filter.top
    );
    // Numbers only (validated config and a bounded top), never outside text.
    tx.batch_execute(&format!(
        "SET LOCAL hnsw.iterative_scan = relaxed_order; \
         SET LOCAL hnsw.ef_search = {}; SET LOCAL hnsw.max_scan_tuples = {}",
        index.ef_search.max(filter.top.min(1000) as u32),
        index.max_scan_tuples
    ))
    .await?;
    let rows = tx.query(&sql, &refs).await?;
    tx.commit().await?;
    let mut hits: Vec<FleetHit> = rows
        .iter()
        .map(|r| {
            let time_ns: i64 = r.get(2);
            let tags: serde_json::Value = r.get(5);
            let distance: f64 = r.get(6);
            FleetHit {
                score: (1.0 - distance) as f32,
                vehicle: r.get(0),
                camera: r.get(1),
                time: format_time(time_ns),
                time_ns,
                pts_s: r.get::<_, i64>(3) as f64 / 1e9,
                source: r.get(4),
                tags: tag_map(&tags),
            }
        })
        .collect();
    hits.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then_with(|| {
            (&a.vehicle, &a.camera, a.time_ns).cmp(&(&b.vehicle, &b.camera, b.time_ns))
        })
    });
    Ok(FleetSearchOutcome {
        hits,
        path,
        estimated_rows,
    })
}

/// Rows the planner expects `wheres` to keep (its statistics, no scan).
async fn estimate_rows(
    tx: &tokio_postgres::Transaction<'_>,
    wheres: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, FleetError> {
    // $1 (the query) is in no filter; naming it keeps one parameter list.
    let sql = format!(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM frames WHERE {wheres} AND $1::halfvec IS NOT NULL"
    );
    let row = tx.query_one(&sql, params).await?;
    let plan: serde_json::Value = row.get(0);
    Ok(plan[0]["Plan"]["Plan Rows"]
        .as_f64()
        .unwrap_or(f64::MAX)
        .max(0.0) as u64)
}

/// `{"weather": "foggy"}` as a map (other values are skipped).
pub fn tag_map(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_reuse_the_local_syntax_and_name_bad_parameters() {
        let r = FleetSearchRequest {
            vehicle: Some("v1, v2".into()),
            camera: Some("front".into()),
            from: Some("2026-12-01T00:00:00Z".into()),
            to: Some("1796169600".into()),
            tag: Some("weather=foggy,scene:highway".into()),
            top: Some(20),
            ..Default::default()
        };
        let f = r.filter().unwrap();
        assert_eq!(f.vehicles, Some(vec!["v1".into(), "v2".into()]));
        assert_eq!(f.tags.len(), 2);
        assert_eq!(f.from_ns, Some(1_796_083_200_000_000_000));
        assert_eq!(f.top, 20);
        let bad = FleetSearchRequest {
            vehicle: Some("a/b".into()),
            ..Default::default()
        };
        assert!(
            bad.filter()
                .unwrap_err()
                .to_string()
                .starts_with("vehicle:")
        );
        let bad = FleetSearchRequest {
            from: Some("soon".into()),
            ..Default::default()
        };
        assert!(bad.filter().unwrap_err().to_string().starts_with("from:"));
        assert!(FleetSearchRequest::default().text().is_err());
    }
}
