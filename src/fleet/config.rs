//! `fleet.toml`: where the fleet side reads from (the MQTT broker), writes
//! to (PostgreSQL with pgvector), how it indexes, and the CLIP model that
//! embeds text queries. Unknown fields are refused, naming the file and
//! the field, as in `roadrep.toml`. Relative paths resolve against the
//! file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

/// Config file read when no `-c` is given and it exists.
pub const DEFAULT_FLEET_CONFIG: &str = "config/fleet.toml";

/// The whole fleet configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The MQTT broker the vehicles publish to.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// The PostgreSQL database.
    pub postgres: PostgresConfig,
    /// Ingest batching.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Partitions and vector indexes.
    #[serde(default)]
    pub index: IndexConfig,
    /// The CLIP model that embeds text queries (the vehicles' model).
    #[serde(default)]
    pub model: ModelConfig,
    /// `roadrep fleet serve`.
    #[serde(default)]
    pub serve: ServeConfig,
}

/// `[broker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port (1883 plain, 8883 TLS by convention).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Client id: fixed, because the broker keeps the persistent session
    /// (subscriptions, unacknowledged messages) under it. Each ingest
    /// process needs its own.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (with `username`).
    #[serde(default)]
    pub password: Option<String>,
    /// TLS; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Shared-subscription group: several ingest processes with the same
    /// group split the stream (`$share/<group>/roadrep/+/<kind>`).
    #[serde(default)]
    pub shared_group: Option<String>,
    /// Vehicles this process subscribes to (topic levels, `+` for all).
    /// Another way to split the stream between processes.
    #[serde(default = "default_vehicles")]
    pub vehicles: Vec<String>,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
}

/// `[broker.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) that signed the broker's certificate.
    pub ca: PathBuf,
    /// Client certificate (PEM), for brokers that require one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its key (PEM, PKCS#8 or RSA).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// `[postgres]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq connection string: `host=db.example port=5432 user=fleet
    /// dbname=fleet password=...` (or a `postgresql://` URL).
    pub url: String,
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Most messages per PostgreSQL transaction. The broker sends at most
    /// its `max_inflight_messages` unacknowledged messages to a client
    /// (mosquitto: 20), and messages are acknowledged only after their
    /// transaction commits: set that limit at least this high.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest a message waits for its batch to fill, ms.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// A batch is written once no message came for this long, ms (the
    /// broker holds back the rest until it sees acknowledgements).
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
}

/// How time partitions are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionSpan {
    /// One partition per UTC day.
    Day,
    /// One per ISO week (Monday 00:00 UTC).
    Week,
}

/// `[index]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Time partition of frames, segments and rig records.
    #[serde(default = "default_partition")]
    pub partition: PartitionSpan,
    /// HNSW graph degree.
    #[serde(default = "default_m")]
    pub m: u32,
    /// HNSW candidates while building.
    #[serde(default = "default_ef_construction")]
    pub ef_construction: u32,
    /// HNSW candidates while searching (at least `top` is used).
    #[serde(default = "default_ef_search")]
    pub ef_search: u32,
    /// Most index entries an iterative scan visits before giving up on a
    /// selective filter (pgvector `hnsw.max_scan_tuples`).
    #[serde(default = "default_max_scan_tuples")]
    pub max_scan_tuples: u32,
    /// A filtered search the planner expects to keep at most this many
    /// rows scores them all instead of walking the index: exact, and at
    /// 1M frames faster than the index below ~50k rows (0: never).
    #[serde(default = "default_exact_below")]
    pub exact_below: u64,
}

/// `[model]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// CLIP model directory (only its text encoder runs here).
    #[serde(default = "default_model_dir")]
    pub dir: PathBuf,
    /// onnxruntime library [default: $ORT_DYLIB_PATH, then the usual places].
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
}

/// `[serve]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address the fleet HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Searches run at once (each runs the text encoder and a query).
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: usize,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "roadrep-fleet".into()
}
fn default_vehicles() -> Vec<String> {
    vec!["+".into()]
}
fn default_keep_alive() -> u64 {
    30
}
fn default_max_batch() -> usize {
    500
}
fn default_max_wait_ms() -> u64 {
    200
}
fn default_idle_ms() -> u64 {
    20
}
fn default_partition() -> PartitionSpan {
    PartitionSpan::Day
}
fn default_m() -> u32 {
    16
}
fn default_ef_construction() -> u32 {
    64
}
/// pgvector's most: at 1M frames text-like queries found 0.51 of the exact
/// top ten at 100, 0.72 at 400, 0.88 at 1000, still 10x faster than the
/// exact scan (BENCHMARKS.md, "Fleet index").
fn default_ef_search() -> u32 {
    1000
}
fn default_max_scan_tuples() -> u32 {
    20_000
}
/// At 1M frames one vehicle's 50k rows scored exactly took 43 ms p50, the
/// index 55 ms at recall 0.88 (BENCHMARKS.md, "Fleet index").
fn default_exact_below() -> u64 {
    50_000
}
fn default_model_dir() -> PathBuf {
    PathBuf::from("models/clip-tiny")
}
fn default_listen() -> String {
    "127.0.0.1:8480".into()
}
fn default_concurrency() -> usize {
    4
}

impl Default for BrokerConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [broker] field has a default")
    }
}
impl Default for IngestConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [ingest] field has a default")
    }
}
impl Default for IndexConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [index] field has a default")
    }
}
impl Default for ModelConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [model] field has a default")
    }
}
impl Default for ServeConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [serve] field has a default")
    }
}

impl FleetConfig {
    /// Reads `path` (else `config/fleet.toml`), resolving relative paths
    /// against its directory.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let path = explicit.unwrap_or(Path::new(DEFAULT_FLEET_CONFIG));
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let config: Self = toml::from_str(text)
            .map_err(|e| invalid(crate::models::manifest::one_line(&e.to_string())))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let b = &self.broker;
        if b.client_id.is_empty() || b.client_id.len() > 64 {
            return Err("broker.client_id must be 1 to 64 characters".into());
        }
        if let Some(g) = &b.shared_group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            return Err(format!(
                "broker.shared_group '{g}' must be a non-empty name without '/', '+', '#'"
            ));
        }
        if b.vehicles.is_empty() {
            return Err("broker.vehicles must name at least one vehicle (or \"+\")".into());
        }
        for v in &b.vehicles {
            if v != "+" && crate::uplink::message::check_vehicle_id(v).is_err() {
                return Err(format!(
                    "broker.vehicles: '{v}' is not a vehicle id or \"+\""
                ));
            }
        }
        if b.password.is_some() && b.username.is_none() {
            return Err("broker.password needs broker.username".into());
        }
        if let Some(t) = &b.tls
            && t.client_cert.is_some() != t.client_key.is_some()
        {
            return Err("broker.tls: client_cert and client_key go together".into());
        }
        let i = &self.ingest;
        if i.max_batch == 0 || i.max_batch > 65_535 {
            return Err("ingest.max_batch must be in 1..=65535".into());
        }
        if i.max_wait_ms == 0 || i.idle_ms == 0 {
            return Err("ingest.max_wait_ms and ingest.idle_ms must be at least 1".into());
        }
        let x = &self.index;
        if !(2..=100).contains(&x.m) {
            return Err(format!("index.m {} must be in 2..=100", x.m));
        }
        if !(4..=1000).contains(&x.ef_construction) || x.ef_construction < 2 * x.m {
            return Err(format!(
                "index.ef_construction {} must be in 4..=1000 and at least 2 x m",
                x.ef_construction
            ));
        }
        if !(1..=1000).contains(&x.ef_search) {
            return Err(format!(
                "index.ef_search {} must be in 1..=1000",
                x.ef_search
            ));
        }
        if x.max_scan_tuples == 0 {
            return Err("index.max_scan_tuples must be at least 1".into());
        }
        if self.serve.max_concurrent_requests == 0 {
            return Err("serve.max_concurrent_requests must be at least 1".into());
        }
        if self.postgres.url.trim().is_empty() {
            return Err("postgres.url must not be empty".into());
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.model.dir);
        if let Some(l) = &mut self.model.ort_library {
            fix(l);
        }
        if let Some(t) = &mut self.broker.tls {
            fix(&mut t.ca);
            t.client_cert.iter_mut().for_each(fix);
            t.client_key.iter_mut().for_each(fix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_name_the_file_and_field() {
        let e = FleetConfig::parse(
            Path::new("f.toml"),
            "[postgres]\nurl = \"host=x\"\n[broker]\nhots = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config 'f.toml'") && e.contains("hots"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = FleetConfig::parse(
            Path::new("f.toml"),
            "[postgres]\nurl = \"x\"\n[broker]\nshared_group = \"a/b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shared_group"), "{e}");
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleet.toml");
        let c = FleetConfig::load(Some(&path)).unwrap();
        assert_eq!(c.index.partition, PartitionSpan::Day);
        assert!(c.model.dir.join("manifest.toml").exists());
    }
}
