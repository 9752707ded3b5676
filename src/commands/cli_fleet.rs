//! Command-line interface of `roadrep fleet ...` and `roadrep bench fleet`
//! (clap structs only). For these commands `-c` names a `fleet.toml`.

use clap::{Args, Subcommand};

/// `roadrep fleet ...`
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Create or migrate the PostgreSQL schema.
    Init,
    /// Subscribe to the vehicles' topics and write into PostgreSQL, until SIGTERM/SIGINT.
    Ingest(FleetIngestArgs),
    /// Search frames of every vehicle by text, with filters.
    Search(FleetSearchArgs),
    /// One vehicle's segments as lines, in time order.
    Summary(FleetSummaryArgs),
    /// Serve /api/fleet/search and /api/fleet/summary over HTTP.
    Serve,
}

/// `roadrep fleet ingest`
#[derive(Debug, Args)]
pub struct FleetIngestArgs {
    /// Create or migrate the schema first.
    #[arg(long)]
    pub init: bool,
}

/// `roadrep fleet search`
#[derive(Debug, Args)]
pub struct FleetSearchArgs {
    /// What to look for ("foggy highway at night").
    pub text: String,
    /// Only these vehicles (repeatable).
    #[arg(long)]
    pub vehicle: Vec<String>,
    /// Only these cameras (repeatable).
    #[arg(long)]
    pub camera: Vec<String>,
    /// Earliest time (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub from: Option<String>,
    /// Latest time (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub to: Option<String>,
    /// Only frames whose top class is this, as SET=CLASS (repeatable).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Number of results.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Exact scan instead of the HNSW index (for recall measurements).
    #[arg(long, conflicts_with = "index")]
    pub exact: bool,
    /// The HNSW index even for a filter that `[index] exact_below` would
    /// scan exactly.
    #[arg(long)]
    pub index: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep fleet summary`
#[derive(Debug, Args)]
pub struct FleetSummaryArgs {
    /// The vehicle.
    #[arg(long)]
    pub vehicle: String,
    /// Only these cameras (repeatable).
    #[arg(long)]
    pub camera: Vec<String>,
    /// Earliest segment start (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub from: Option<String>,
    /// Latest segment start (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub to: Option<String>,
    /// Words the caption must contain.
    #[arg(long)]
    pub caption: Option<String>,
    /// Most segments.
    #[arg(long)]
    pub top: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep bench fleet`
#[derive(Debug, Args)]
pub struct BenchFleetArgs {
    /// PostgreSQL conninfo [default: `[postgres] url` of the fleet.toml given with -c].
    #[arg(long)]
    pub url: Option<String>,
    /// Frame rows generated.
    #[arg(long, default_value_t = 1_000_000)]
    pub frames: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    /// Vehicles the frames are spread over.
    #[arg(long, default_value_t = 20)]
    pub vehicles: usize,
    /// Cameras per vehicle.
    #[arg(long, default_value_t = 3)]
    pub cameras: usize,
    /// Queries of each kind (no filter, rare tag, one vehicle).
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
    /// Share of frames with the rare tag.
    #[arg(long, default_value_t = 0.01)]
    pub rare: f64,
    /// Rows per insert transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// HNSW candidate list sizes to measure (pgvector hnsw.ef_search, at most 1000).
    #[arg(long, value_delimiter = ',', default_value = "100,400,1000")]
    pub ef_search: Vec<u32>,
    /// `[index] exact_below` of the searches measured (0: always the index)
    /// [default: the config's default].
    #[arg(long)]
    pub exact_below: Option<u64>,
    /// Keep the generated rows (default: delete them at the end).
    #[arg(long)]
    pub keep: bool,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}
