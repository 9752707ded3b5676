//! The fleet's PostgreSQL schema: created and migrated by `roadrep fleet
//! init` (or `fleet ingest --init`), versioned in `fleet_schema`.
//!
//! - `vehicles`: one row per vehicle, its last status.
//! - `frames`, `segments`, `rigs`: partitioned by time (one partition per
//!   day or week, see [`partition_bounds`]), keyed by the vehicle and the
//!   record's own key with its ns time. `timestamptz` has µs resolution,
//!   so the key keeps the ns time and the partition column beside it.
//! - `models`: the embedding models seen; each gets a partial HNSW index
//!   on the partitioned parent ([`model_index_sql`]), created when its
//!   fingerprint first arrives, before any of its rows.
//!
//! Everything that creates objects takes an advisory lock first, so
//! several ingest processes (or `init`s) may race.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use sha2::Digest;
use tokio_postgres::GenericClient;

use super::FleetError;
use super::config::{IndexConfig, PartitionSpan};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 1;

/// Advisory lock key held while the schema, partitions or indexes change.
const DDL_LOCK: i64 = 0x726f_6164_7265_7031; // "roadrep1"

/// Migrations, index = version - 1.
const MIGRATIONS: &[&str] = &[V1];

const V1: &str = r#"
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE fleet_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE vehicles (
    id text PRIMARY KEY,
    online boolean NOT NULL DEFAULT false,
    status jsonb,
    status_time_ns bigint,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models (
    fingerprint text PRIMARY KEY,
    dim integer NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE frames (
    vehicle text NOT NULL,
    camera text NOT NULL,
    time_ns bigint NOT NULL,
    time timestamptz NOT NULL,
    pts_ns bigint NOT NULL,
    source text NOT NULL,
    model text NOT NULL,
    tags jsonb NOT NULL,
    scores jsonb NOT NULL,
    embedding halfvec NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (vehicle, camera, time_ns, time)
) PARTITION BY RANGE (time);
-- `tags @> '{"weather":"foggy"}'`: lets the planner pick an exact scan
-- of a few matching rows over the vector index.
CREATE INDEX frames_tags ON frames USING gin (tags jsonb_path_ops);
CREATE INDEX frames_time ON frames (time);

CREATE TABLE segments (
    vehicle text NOT NULL,
    camera text NOT NULL,
    start_ns bigint NOT NULL,
    start_time timestamptz NOT NULL,
    end_ns bigint NOT NULL,
    frames integer NOT NULL,
    keyframe_ns bigint NOT NULL,
    source text NOT NULL,
    tags jsonb NOT NULL,
    caption text,
    caption_state text NOT NULL,
    summary text NOT NULL,
    seq bigint NOT NULL,
    caption_words tsvector
        GENERATED ALWAYS AS (to_tsvector('english', coalesce(caption, ''))) STORED,
    PRIMARY KEY (vehicle, camera, start_ns, start_time)
) PARTITION BY RANGE (start_time);
CREATE INDEX segments_caption_words ON segments USING gin (caption_words);

CREATE TABLE rigs (
    vehicle text NOT NULL,
    rig text NOT NULL,
    anchor_ns bigint NOT NULL,
    anchor_time timestamptz NOT NULL,
    anchor_role text NOT NULL,
    present text[] NOT NULL,
    absent text[] NOT NULL,
    model text NOT NULL,
    tags jsonb NOT NULL,
    scores jsonb NOT NULL,
    embedding halfvec NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (vehicle, rig, anchor_ns, anchor_time)
) PARTITION BY RANGE (anchor_time);
"#;

/// The partitioned tables and their partition columns.
pub const PARTITIONED: [(&str, &str); 3] = [
    ("frames", "time"),
    ("segments", "start_time"),
    ("rigs", "anchor_time"),
];

/// Tables whose rows carry an embedding (one HNSW index per model each).
pub const EMBEDDED: [&str; 2] = ["frames", "rigs"];

/// Creates or migrates the schema to [`SCHEMA_VERSION`]; records the
/// partition span on first creation. Returns (version before, after).
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    index: &IndexConfig,
) -> Result<(i32, i32), FleetError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS fleet_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let before: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM fleet_schema", &[])
        .await?
        .get(0);
    if before > SCHEMA_VERSION {
        return Err(FleetError::Schema(format!(
            "the database has fleet schema version {before}, newer than this build's {SCHEMA_VERSION}; upgrade roadrep"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(before as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO fleet_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO fleet_meta (key, value) VALUES ('partition', $1) ON CONFLICT DO NOTHING",
        &[&span_name(index.partition)],
    )
    .await?;
    tx.commit().await?;
    Ok((before, SCHEMA_VERSION))
}

/// Checks the schema is current and returns the partition span it was
/// created with (which wins over the config: partitions must not overlap).
pub async fn check(client: &impl GenericClient) -> Result<PartitionSpan, FleetError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('fleet_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    let version: i32 = if exists {
        client
            .query_one("SELECT coalesce(max(version), 0) FROM fleet_schema", &[])
            .await?
            .get(0)
    } else {
        0
    };
    if version != SCHEMA_VERSION {
        return Err(FleetError::Schema(format!(
            "fleet schema version {version}, this build needs {SCHEMA_VERSION}: run `roadrep fleet init`"
        )));
    }
    let span: String = client
        .query_one("SELECT value FROM fleet_meta WHERE key = 'partition'", &[])
        .await?
        .get(0);
    match span.as_str() {
        "week" => Ok(PartitionSpan::Week),
        _ => Ok(PartitionSpan::Day),
    }
}

fn span_name(span: PartitionSpan) -> &'static str {
    match span {
        PartitionSpan::Day => "day",
        PartitionSpan::Week => "week",
    }
}

/// The partition holding `ns`: its name suffix and [start, end) bounds.
pub fn partition_bounds(span: PartitionSpan, ns: i64) -> (String, DateTime<Utc>, DateTime<Utc>) {
    let t = DateTime::from_timestamp_nanos(ns);
    let day: NaiveDate = t.date_naive();
    let (start, len, tag) = match span {
        PartitionSpan::Day => (day, 1, 'd'),
        PartitionSpan::Week => (
            day - Duration::days(day.weekday().num_days_from_monday() as i64),
            7,
            'w',
        ),
    };
    let from = start.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let suffix = format!("{tag}{}", start.format("%Y%m%d"));
    (suffix, from, from + Duration::days(len))
}

/// Creates the partitions of `table` for `starts` (partition starts as
/// returned by [`partition_bounds`]) if missing. Safe against other
/// processes doing the same.
pub async fn ensure_partitions(
    client: &mut tokio_postgres::Client,
    table: &str,
    parts: &[(String, DateTime<Utc>, DateTime<Utc>)],
) -> Result<(), FleetError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await?;
    for (suffix, from, to) in parts {
        // Bounds are our own timestamps, the name our own digits: no
        // outside text reaches this statement.
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table}_{suffix} PARTITION OF {table} \
             FOR VALUES FROM ('{}') TO ('{}')",
            from.to_rfc3339(),
            to.to_rfc3339()
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Whether `fp` can be written into SQL as a literal (the partial index
/// and the queries that must match it use the fingerprint literally).
pub fn valid_model(fp: &str) -> bool {
    !fp.is_empty()
        && fp.len() <= 128
        && fp
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Name of the HNSW index of `fp` on `table`: a digest, since a sha256
/// fingerprint alone would pass PostgreSQL's 63-byte identifier limit.
pub fn model_index_name(table: &str, fp: &str) -> String {
    let digest = sha2::Sha256::digest(fp.as_bytes());
    format!("{table}_hnsw_{}", &hex::encode(digest)[..16])
}

/// The expression an index and its queries share: the embedding cast to
/// the model's dimension (HNSW needs a fixed one).
pub fn embedding_expr(dim: usize) -> String {
    format!("(embedding::halfvec({dim}))")
}

/// `CREATE INDEX` of the HNSW index of model `fp` (checked with
/// [`valid_model`]) on `table`.
pub fn model_index_sql(table: &str, fp: &str, dim: usize, index: &IndexConfig) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} USING hnsw ({} halfvec_cosine_ops) \
         WITH (m = {}, ef_construction = {}) WHERE model = '{fp}'",
        model_index_name(table, fp),
        embedding_expr(dim),
        index.m,
        index.ef_construction
    )
}

/// Records model `fp` with its dimension and creates its HNSW indexes if
/// new. Returns the dimension on record (which may differ from `dim`: the
/// caller refuses such rows).
pub async fn ensure_model(
    client: &mut tokio_postgres::Client,
    fp: &str,
    dim: usize,
    index: &IndexConfig,
) -> Result<usize, FleetError> {
    if !valid_model(fp) {
        return Err(FleetError::Schema(format!(
            "model fingerprint '{fp}' has characters other than letters, digits, '-', '_', '.', ':'"
        )));
    }
    if let Some(row) = client
        .query_opt("SELECT dim FROM models WHERE fingerprint = $1", &[&fp])
        .await?
    {
        return Ok(row.get::<_, i32>(0) as usize);
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await?;
    tx.execute(
        "INSERT INTO models (fingerprint, dim) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&fp, &(dim as i32)],
    )
    .await?;
    let on_record: i32 = tx
        .query_one("SELECT dim FROM models WHERE fingerprint = $1", &[&fp])
        .await?
        .get(0);
    for table in EMBEDDED {
        tx.batch_execute(&model_index_sql(table, fp, on_record as usize, index))
            .await?;
    }
    tx.commit().await?;
    Ok(on_record as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_utc_days_or_iso_weeks() {
        // 2026-12-02 (a Wednesday) 14:00 UTC.
        let ns = 1_796_220_000_000_000_000;
        let (s, from, to) = partition_bounds(PartitionSpan::Day, ns);
        assert_eq!(s, "d20261202");
        assert_eq!(from.to_rfc3339(), "2026-12-02T00:00:00+00:00");
        assert_eq!(to.to_rfc3339(), "2026-12-03T00:00:00+00:00");
        let (s, from, to) = partition_bounds(PartitionSpan::Week, ns);
        assert_eq!(s, "w20261130");
        assert_eq!(from.to_rfc3339(), "2026-11-30T00:00:00+00:00");
        assert_eq!(to.to_rfc3339(), "2026-12-07T00:00:00+00:00");
    }

    #[test]
    fn model_literals_are_checked_and_index_names_fit() {
        let fp = "a6d6254112105860bd7e30208bd2ff6c96f15fd16ffc82df23c7e9dd0c50824c";
        assert!(valid_model(fp));
        assert!(!valid_model("x'; DROP TABLE frames; --"));
        assert!(!valid_model(""));
        let name = model_index_name("frames", fp);
        assert!(name.len() <= 63 && name.starts_with("frames_hnsw_"));
        let sql = model_index_sql("frames", fp, 512, &IndexConfig::default());
        assert!(
            sql.contains("(embedding::halfvec(512)) halfvec_cosine_ops"),
            "{sql}"
        );
        assert!(sql.ends_with(&format!("WHERE model = '{fp}'")), "{sql}");
    }
}
