//! `roadrep bench fleet`: the fleet index in a running PostgreSQL with
//! pgvector.
//!
//! Frames are generated as `bench search` generates them (see
//! [`super::search::data`]: 256 scene types, segments of 20-200 frames, so
//! neighbours exist as on real footage), spread over vehicles, cameras
//! and seven days (seven partitions), with a rare tag (`weather=foggy`,
//! `rare` of the frames) for a selective filter. They go in as
//! [`FrameMessage`]s through the ingest's [`Writer`] (rows/s, with the
//! HNSW index absent), then the model's HNSW index is built (build time),
//! then more rows go in with the index in place (rows/s with index
//! maintenance). Queries (text-like, [`Generator::text_query`]) run through
//! [`search_frames`] with no filter, with the rare tag and with one
//! vehicle: p50/p95 latency, and recall@10 against the exact scan of the
//! same filter.
//!
//! The rows are written under a model fingerprint and vehicles of their
//! own and deleted at the end (unless `keep`).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::search::data::Generator;
use crate::fleet::FleetError;
use crate::fleet::config::IndexConfig;
use crate::fleet::db::Db;
use crate::fleet::schema;
use crate::fleet::search::{FleetFilter, FleetSearchPath, search_frames};
use crate::fleet::writer::Writer;
use crate::rng::SplitMix64;
use crate::uplink::message::{FrameMessage, Message, PAYLOAD_VERSION, TagValue, encode_embedding};

/// 2000-01-03, a Monday: far from real footage, so the bench's partitions
/// are its own.
const START_NS: i64 = 946_857_600_000_000_000;
const DAYS: i64 = 7;
const STEP_NS: i64 = 500_000_000;
const TOP: usize = 10;
const SCENE_TAGS: [&str; 8] = [
    "highway",
    "city",
    "suburb",
    "rural",
    "tunnel",
    "bridge",
    "parking",
    "intersection",
];

/// What `bench fleet` measures.
#[derive(Debug, Clone)]
pub struct FleetBenchSettings {
    pub url: String,
    pub frames: usize,
    pub dim: usize,
    pub vehicles: usize,
    pub cameras: usize,
    pub queries: usize,
    pub rare: f64,
    pub batch: usize,
    pub seed: u64,
    pub keep: bool,
    /// `hnsw.ef_search` values to measure (each query runs with each).
    pub ef_search: Vec<u32>,
    /// `[index] exact_below` of the searches measured.
    pub exact_below: u64,
}

/// One kind of query's results.
#[derive(Debug, Clone, Serialize)]
pub struct QueryStats {
    pub filter: String,
    /// `hnsw.ef_search` of these queries.
    pub ef_search: u32,
    pub queries: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub exact_p50_ms: f64,
    pub recall_at_10: f64,
    /// Queries that returned fewer than 10 hits with the index.
    pub short_answers: usize,
    /// Queries scanned exactly (`exact_below`: a selective filter).
    pub exact_path: usize,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct FleetBenchReport {
    pub frames: usize,
    pub dim: usize,
    pub vehicles: usize,
    pub cameras: usize,
    pub rare_share: f64,
    pub insert_rows_per_s: f64,
    pub index_build_s: f64,
    pub indexed_insert_rows: usize,
    pub indexed_insert_rows_per_s: f64,
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub queries: Vec<QueryStats>,
    pub postgres: String,
}

impl FleetBenchReport {
    /// Markdown for BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{} frames ({}-d halfvec, {} vehicles x {} cameras, 7 day partitions, rare tag {:.1}%), {}\n\n",
            self.frames,
            self.dim,
            self.vehicles,
            self.cameras,
            self.rare_share * 100.0,
            self.postgres
        );
        s += "| step | result |\n|---|---|\n";
        s += &format!(
            "| insert through the ingest writer, no HNSW index | {:.0} rows/s |\n",
            self.insert_rows_per_s
        );
        s += &format!(
            "| HNSW build (m 16, ef_construction 64) | {:.1} s |\n",
            self.index_build_s
        );
        s += &format!(
            "| insert {} more rows, index maintained | {:.0} rows/s |\n",
            self.indexed_insert_rows, self.indexed_insert_rows_per_s
        );
        s += &format!(
            "| table / HNSW index size | {:.0} MiB / {:.0} MiB |\n\n",
            self.table_bytes as f64 / 1048576.0,
            self.index_bytes as f64 / 1048576.0
        );
        s += "| filter | ef_search | queries | scanned exactly | p50 | p95 | exact scan p50 | recall@10 | < 10 hits |\n|---|---|---|---|---|---|---|---|---|\n";
        for q in &self.queries {
            s += &format!(
                "| {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.3} | {} |\n",
                q.filter,
                q.ef_search,
                q.queries,
                q.exact_path,
                q.p50_ms,
                q.p95_ms,
                q.exact_p50_ms,
                q.recall_at_10,
                q.short_answers
            );
        }
        s
    }
}

fn frame_message(
    i: usize,
    s: &FleetBenchSettings,
    generator: &mut Generator,
    rng: &mut SplitMix64,
    model: &str,
    embedding: &mut [f32],
) -> Message {
    let streams = s.vehicles * s.cameras;
    let stream = i % streams;
    let step = (i / streams) as i64;
    let per_day = (s.frames.div_ceil(streams) as i64 + DAYS - 1) / DAYS;
    let time_ns = START_NS + (step / per_day) * 86_400_000_000_000 + (step % per_day) * STEP_NS;
    let scene = generator.frame(stream, embedding) as usize;
    let weather = if (rng.next_f32() as f64) < s.rare {
        "foggy"
    } else {
        "clear"
    };
    let tags = BTreeMap::from([
        (
            "scene".to_string(),
            TagValue {
                class: SCENE_TAGS[scene % 8].into(),
                score: 0.8,
            },
        ),
        (
            "weather".to_string(),
            TagValue {
                class: weather.into(),
                score: 0.9,
            },
        ),
    ]);
    Message::Frame(FrameMessage {
        v: PAYLOAD_VERSION,
        vehicle: format!("bench-v{}", stream / s.cameras),
        seq: i as u64,
        camera: format!("cam{}", stream % s.cameras),
        time_ns,
        pts_ns: (step % per_day) as u64 * STEP_NS as u64,
        source: "bench".into(),
        model: model.into(),
        embedding: encode_embedding(embedding),
        tags,
    })
}

/// Writes frames `range` through the writer; returns rows/s.
async fn load(
    writer: &mut Writer,
    range: std::ops::Range<usize>,
    s: &FleetBenchSettings,
    generator: &mut Generator,
    rng: &mut SplitMix64,
    model: &str,
) -> Result<f64, FleetError> {
    let mut embedding = vec![0f32; s.dim];
    let start = Instant::now();
    let n = range.len();
    let mut batch = Vec::with_capacity(s.batch);
    for i in range {
        batch.push(frame_message(i, s, generator, rng, model, &mut embedding));
        if batch.len() == s.batch {
            writer.write(&batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        writer.write(&batch).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Runs the benchmark.
pub async fn bench_fleet(s: &FleetBenchSettings) -> Result<FleetBenchReport, FleetError> {
    let db = Db::new(&s.url)?;
    let mut client = db.connect().await?;
    let index = IndexConfig {
        exact_below: s.exact_below,
        ..IndexConfig::default()
    };
    schema::migrate(&mut client, &index)
        .await
        .map_err(|e| db.name(e))?;
    let model = format!("bench-fleet-{}-{}", s.seed, s.dim);
    let postgres: String = client.query_one("SELECT version()", &[]).await?.get(0);
    let postgres = postgres
        .split(" on ")
        .next()
        .unwrap_or_default()
        .to_string();
    cleanup(&client, &model).await?;
    // Known model without its index: the writer then skips creating it,
    // so the bulk load runs without HNSW maintenance and the build is timed.
    client
        .execute(
            "INSERT INTO models (fingerprint, dim) VALUES ($1, $2)",
            &[&model, &(s.dim as i32)],
        )
        .await?;
    let mut generator = Generator::new(s.dim, s.vehicles * s.cameras, s.seed);
    let mut rng = SplitMix64::new(s.seed ^ 0x5eed);
    let mut writer = Writer::new(db.clone(), index.clone());
    let bulk = s.frames - (s.frames / 10).min(20_000);
    let insert_rate = load(&mut writer, 0..bulk, s, &mut generator, &mut rng, &model).await?;
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "SET maintenance_work_mem = '2GB'; SET max_parallel_maintenance_workers = 2; {}; ANALYZE frames",
            schema::model_index_sql("frames", &model, s.dim, &index)
        ))
        .await
        .map_err(|e| db.error(e))?;
    let index_build_s = started.elapsed().as_secs_f64();
    let indexed_rate = load(
        &mut writer,
        bulk..s.frames,
        s,
        &mut generator,
        &mut rng,
        &model,
    )
    .await?;
    let (table_bytes, index_bytes): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT coalesce(sum(pg_table_size(c.oid)), 0)::int8, \
                        coalesce(sum(pg_relation_size(i.indexrelid)), 0)::int8 \
                 FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid \
                 LEFT JOIN pg_index i ON i.indrelid = c.oid \
                   AND pg_get_indexdef(i.indexrelid) LIKE '%' || $1 || '%' \
                 WHERE h.inhparent = 'frames'::regclass",
                &[&model],
            )
            .await?;
        (r.get(0), r.get(1))
    };

    let kinds: Vec<(String, FleetFilter)> = vec![
        (
            "none".into(),
            FleetFilter {
                top: TOP,
                ..Default::default()
            },
        ),
        (
            format!("weather=foggy ({:.1}%)", s.rare * 100.0),
            FleetFilter {
                top: TOP,
                tags: vec![("weather".into(), "foggy".into())],
                ..Default::default()
            },
        ),
        (
            format!("one vehicle ({:.1}%)", 100.0 / s.vehicles as f64),
            FleetFilter {
                top: TOP,
                vehicles: Some(vec!["bench-v0".into()]),
                ..Default::default()
            },
        ),
    ];
    let mut queries = Vec::new();
    for (name, filter) in kinds {
        // The same queries for every ef_search; the exact top ten once.
        let qs: Vec<Vec<f32>> = (0..s.queries).map(|_| generator.text_query()).collect();
        let exact_filter = FleetFilter {
            path: Some(FleetSearchPath::Exact),
            ..filter.clone()
        };
        let key =
            |h: &crate::fleet::search::FleetHit| (h.vehicle.clone(), h.camera.clone(), h.time_ns);
        let mut truths = Vec::new();
        let mut exact_times = Vec::new();
        for q in &qs {
            let t = Instant::now();
            let exact = search_frames(&mut client, &model, q, &exact_filter, &index).await?;
            exact_times.push(t.elapsed().as_secs_f64() * 1e3);
            truths.push(exact.hits.iter().map(key).collect::<HashSet<_>>());
        }
        let exact_p50_ms = percentile(&mut exact_times, 0.5);
        for &ef in &s.ef_search {
            let index = IndexConfig {
                ef_search: ef,
                ..index.clone()
            };
            let mut times = Vec::new();
            let (mut found, mut short, mut exact_path) = (0usize, 0usize, 0usize);
            for (q, truth) in qs.iter().zip(&truths) {
                let t = Instant::now();
                let ann = search_frames(&mut client, &model, q, &filter, &index).await?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
                found += ann.hits.iter().filter(|h| truth.contains(&key(h))).count();
                short += usize::from(ann.hits.len() < TOP);
                exact_path += usize::from(ann.path == FleetSearchPath::Exact);
            }
            queries.push(QueryStats {
                filter: name.clone(),
                ef_search: ef,
                queries: s.queries,
                p50_ms: percentile(&mut times, 0.5),
                p95_ms: percentile(&mut times, 0.95),
                exact_p50_ms,
                recall_at_10: found as f64 / (s.queries * TOP) as f64,
                short_answers: short,
                exact_path,
            });
        }
    }
    if !s.keep {
        cleanup(&client, &model).await?;
    }
    Ok(FleetBenchReport {
        frames: s.frames,
        dim: s.dim,
        vehicles: s.vehicles,
        cameras: s.cameras,
        rare_share: s.rare,
        insert_rows_per_s: insert_rate,
        index_build_s,
        indexed_insert_rows: s.frames - bulk,
        indexed_insert_rows_per_s: indexed_rate,
        table_bytes,
        index_bytes,
        queries,
        postgres,
    })
}

/// Removes the bench's rows, index, model and vehicles, and its
/// partitions once empty.
async fn cleanup(client: &tokio_postgres::Client, model: &str) -> Result<(), FleetError> {
    client
        .execute("DELETE FROM frames WHERE model = $1", &[&model])
        .await?;
    for table in schema::EMBEDDED {
        client
            .batch_execute(&format!(
                "DROP INDEX IF EXISTS {}",
                schema::model_index_name(table, model)
            ))
            .await?;
    }
    client
        .execute("DELETE FROM models WHERE fingerprint = $1", &[&model])
        .await?;
    client
        .execute("DELETE FROM vehicles WHERE id LIKE 'bench-v%'", &[])
        .await?;
    use crate::fleet::config::PartitionSpan;
    for (span, day) in [PartitionSpan::Day, PartitionSpan::Week]
        .into_iter()
        .flat_map(|s| (0..DAYS).map(move |d| (s, d)))
    {
        let (suffix, _, _) = schema::partition_bounds(span, START_NS + day * 86_400_000_000_000);
        let name = format!("frames_{suffix}");
        let empty: Option<bool> = client
            .query_opt(
                &format!("SELECT NOT EXISTS (SELECT 1 FROM {name}) WHERE to_regclass('{name}') IS NOT NULL"),
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if empty == Some(true) {
            client.batch_execute(&format!("DROP TABLE {name}")).await?;
        }
    }
    Ok(())
}
