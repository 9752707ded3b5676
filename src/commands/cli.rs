//! Command-line interface (clap structs only).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use roadrep::models::ImagePrecision;

/// Video tagging for driving footage: CLIP embeddings and zero-shot scene tags.
#[derive(Debug, Parser)]
#[command(name = "roadrep", version, about)]
pub struct Cli {
    /// Config file [default: $ROADREP_CONFIG, else config/roadrep.toml if present].
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (log shippers).
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: every configured stream, until SIGTERM/SIGINT.
    Run,
    /// Search stored frames by text or image, with filters.
    Search(SearchArgs),
    /// Print zero-shot scene tags of images.
    Tag(TagArgs),
    /// Caption still images with the BLIP captioner (`[captions]` decoding).
    Caption(CaptionArgs),
    /// Measure model throughput (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Replay recorded clips into the store (idempotent, resumable).
    Replay(ReplayArgs),
    /// List scene segments (time, camera, dominant tags, caption), with filters.
    Segments(SegmentsArgs),
    /// Summarise clips or a time range: one line per scene segment.
    /// Clips given as files are replayed first if not stored yet.
    Summary(SegmentsArgs),
    /// Export stored frames (JPEG + captions from their tags) as a training set.
    ExportFrames(ExportArgs),
    /// The fleet side: MQTT ingest into PostgreSQL/pgvector, search and
    /// summaries across vehicles (`-c` names a fleet.toml).
    #[command(subcommand)]
    Fleet(super::cli_fleet::FleetCommand),
    /// The fleet uplink (`[uplink]`): the outbox and the link to the broker.
    Uplink(UplinkArgs),
    /// Verify a model directory against its manifest.
    VerifyModel {
        /// Model directory.
        dir: PathBuf,
    },
}

/// `roadrep tag`
#[derive(Debug, Args)]
pub struct TagArgs {
    /// Image files (JPEG, PNG, BMP, WebP, TIFF, PNM); with --rig, ROLE=IMAGE
    /// or nuScenes names (<log>__<CAM_NAME>__<microseconds>.jpg).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The images are the views of one rig: print its record (views, their
    /// offsets to the anchor, fused tags) instead of one line per image.
    #[arg(long)]
    pub rig: bool,
    /// Print JSON (every score) instead of one line per image.
    #[arg(long)]
    pub json: bool,
    /// CLIP model directory [default: from the config].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Label sets file [default: from the config].
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Image encoder precision [default: from the config].
    #[arg(long, value_enum)]
    pub precision: Option<ImagePrecision>,
    /// Do not read or write the text-embedding cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// `roadrep caption`
#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// Image files (JPEG, PNG, BMP, WebP, TIFF, PNM).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Print JSON (text and token ids) instead of one line per image.
    #[arg(long)]
    pub json: bool,
    /// Beam width (1 = greedy) [default: `[captions] num_beams`].
    #[arg(long)]
    pub beams: Option<usize>,
    /// Text every caption starts with [default: `[captions] prompt`].
    #[arg(long)]
    pub prompt: Option<String>,
    /// Most tokens after the prompt [default: `[captions] max_new_tokens`].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// BLIP model directory [default: `[captions] model`].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Text decoder precision (int8 needs `python models/modeldir.py int8
    /// DIR`) [default: `[captions] precision`].
    #[arg(long, value_enum)]
    pub precision: Option<roadrep::caption::CaptionPrecision>,
    /// Images per model run: one vision-encoder run and one decoding loop
    /// whose decoder runs advance all of them by a token (captions as one
    /// at a time; see BENCHMARKS.md "BLIP captions").
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
}

/// `roadrep bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// CLIP image encoder images/s (fp32, INT8; several batch sizes) and preprocessing cost.
    Clip(BenchClipArgs),
    /// Replay of a 720p clip: end to end vs. decode-only and model-only, peak RSS, store size.
    Replay(BenchReplayArgs),
    /// BLIP caption cost next to its vision encoder, captions/s.
    Caption(BenchCaptionArgs),
    /// Search index vs. exact scan on generated embeddings: latency, recall@10, build time, memory.
    Search(BenchSearchArgs),
    /// INT8 vs fp32 image encoder on real images: top-class agreement per label set, cost.
    Precision(BenchPrecisionArgs),
    /// Rig records: fusion per record vs. CLIP of its views, assembly waits, replay with vs. without the rig.
    Rig(BenchRigArgs),
    /// Fleet index in PostgreSQL/pgvector: insert rows/s, HNSW build, filtered search latency and recall.
    Fleet(super::cli_fleet::BenchFleetArgs),
    /// Uplink bytes per frame and segment message; batch-write cost of the outbox.
    Uplink(BenchUplinkArgs),
}

/// `roadrep bench uplink`
#[derive(Debug, Args)]
pub struct BenchUplinkArgs {
    /// Frames written (with and without the outbox).
    #[arg(long, default_value_t = 20_000)]
    pub frames: usize,
    /// Embedding dimension (ViT-B/32: 512).
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    /// Frames per batch write.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// A segment closes every this many frames.
    #[arg(long, default_value_t = 60)]
    pub segment_every: usize,
    /// Vehicle id.
    #[arg(long, default_value = "truck-0042")]
    pub vehicle: String,
    /// Directory for the temporary stores [default: the system's temp dir].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep bench rig`
#[derive(Debug, Args)]
pub struct BenchRigArgs {
    /// CLIP model directory [default: models/clip-random-full if generated, else models/clip-tiny].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Fusion model directory made for that CLIP model [default: models/fusion-random-full with the full CLIP, else models/fusion-tiny].
    #[arg(long)]
    pub fusion: Option<PathBuf>,
    /// Views per record (the fusion model's first roles).
    #[arg(long, default_value_t = 6)]
    pub views: usize,
    /// Records per repetition.
    #[arg(long, default_value_t = 64)]
    pub records: usize,
    /// Batch sizes: frames per encoder run and records per fusion run.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    pub batch: Vec<usize>,
    /// Timed repetitions after a warm-up run (fusion: ten times as many).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Clips to replay as the rig, ROLE=FILE (repeatable; the first role is
    /// the anchor) [default: --rig-clips generated 1280x720 clips].
    #[arg(long)]
    pub clips: Vec<String>,
    /// Cameras of the generated rig (the fusion model's first roles).
    #[arg(long, default_value_t = 3)]
    pub rig_clips: usize,
    /// Length of generated clips, seconds (kept in target/ for later runs).
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
    /// Frames kept per second in the replays.
    #[arg(long, default_value_t = 2.0)]
    pub fps: f64,
    /// Replays of each kind, without and with the rig, alternating (after a warm-up replay).
    #[arg(long, default_value_t = 3)]
    pub replay_runs: usize,
    /// Image encoder precision.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: ImagePrecision,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep bench precision`
#[derive(Debug, Args)]
pub struct BenchPrecisionArgs {
    /// Model directory (with both image encoders) [default: models/clip-random-full if generated, else models/clip-tiny].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Label sets [default: the config's].
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Image files or directories (searched for .jpg, .jpeg, .png) [default: ../shared/realdata].
    pub images: Vec<PathBuf>,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep bench search`
#[derive(Debug, Args)]
pub struct BenchSearchArgs {
    /// Frames in the generated store.
    #[arg(long, default_value_t = 100_000)]
    pub frames: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    /// Cameras the frames are spread over (2 frames/s each).
    #[arg(long, default_value_t = 6)]
    pub cameras: usize,
    /// Queries of each kind (image-like, text-like).
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Share of the frames the time-range filter keeps.
    #[arg(long, default_value_t = 0.01)]
    pub filter_selectivity: f64,
    /// Queries of each kind also run through the exact scan (seconds each at 1M frames).
    #[arg(long, default_value_t = 3)]
    pub exact_queries: usize,
    /// Lists a search probes at least [default: [search] probe_lists, else about √lists].
    #[arg(long)]
    pub probe_lists: Option<usize>,
    /// Directory for the temporary store (removed at the end) [default: the system's temp dir].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seed of the generated embeddings and queries.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep bench caption`
#[derive(Debug, Args)]
pub struct BenchCaptionArgs {
    /// BLIP model directory [default: models/blip-random-full if generated, else models/blip-tiny].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Thread counts to compare (repeatable).
    #[arg(long, default_values_t = [1usize, 2])]
    pub threads: Vec<usize>,
    /// Text decoder precisions to measure side by side (int8 needs
    /// `python models/modeldir.py int8 DIR`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fp32,int8")]
    pub precision: Vec<roadrep::caption::CaptionPrecision>,
    /// Keyframes per model run to measure (`[captions] batch_size`).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub batch: Vec<usize>,
    /// Model runs (batches) timed per thread count, precision and batch
    /// size.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Tokens per caption (decoding never stops early here).
    #[arg(long, default_value_t = 20)]
    pub tokens: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep bench clip`
#[derive(Debug, Args)]
pub struct BenchClipArgs {
    /// Model directory [default: models/clip-random-full if generated, else models/clip-tiny].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Precisions to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fp32,int8")]
    pub precision: Vec<ImagePrecision>,
    /// Minimum seconds per configuration.
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    /// ONNX Runtime threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Source frame size for the preprocessing measurement, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720")]
    pub frame: String,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Video files (anything GStreamer's decodebin reads; audio is ignored);
    /// with --rig, ROLE=FILE, one per camera of the rig.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Replay one recording per camera of this rig together (files given
    /// as ROLE=FILE, the first role is the anchor unless [[rigs]] names
    /// one); frames are stored as camera RIG-ROLE unless a [[streams]]
    /// entry has that rig and role.
    #[arg(long)]
    pub rig: Option<String>,
    /// Camera name for all files [default: each file's name without extension].
    #[arg(long)]
    pub camera: Option<String>,
    /// Frames kept per second of video [default: ingest.sample_fps].
    #[arg(long)]
    pub fps: Option<f64>,
    /// Which frames are decoded [default: ingest.decode].
    #[arg(long, value_enum)]
    pub decode: Option<roadrep::ingest::config::DecodeMode>,
    /// Recording time of each file's start (RFC 3339 or Unix seconds);
    /// with --rig, ROLE=TIME, once per role [default: the file's modification
    /// time minus its duration; with --rig, first its creation time tag].
    #[arg(long)]
    pub start: Vec<String>,
    /// Store directory [default: store.path].
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// `roadrep uplink`
#[derive(Debug, Args)]
pub struct UplinkArgs {
    #[command(subcommand)]
    pub command: UplinkCommand,
}

/// `roadrep uplink ...`
#[derive(Debug, Subcommand)]
pub enum UplinkCommand {
    /// The link (from the running daemon) and what waits in the outbox.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send the outbox now (no daemon running); exit 1 if some is left.
    Send {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

/// `roadrep segments` / `roadrep summary`
#[derive(Debug, Args)]
pub struct SegmentsArgs {
    /// Clips: replayed first when not stored yet (as the one --camera
    /// given, else each file's name), then only their segments are shown
    /// (the daemon must not be running).
    pub files: Vec<PathBuf>,
    /// Which cameras and times.
    #[command(flatten)]
    pub range: RangeArgs,
    /// Words the caption must contain ("truck bridge").
    #[arg(long)]
    pub caption: Option<String>,
    /// Segments of this rig's fused records (scene changes of the whole
    /// rig), with the anchor camera's captions.
    #[arg(long, conflicts_with_all = ["files", "caption"])]
    pub rig: Option<String>,
    /// Most segments listed [default: 1000].
    #[arg(long)]
    pub top: Option<usize>,
    /// Frames kept per second when replaying files [default: ingest.sample_fps].
    #[arg(long)]
    pub fps: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory [default: store.path]; read directly when no daemon answers.
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// `roadrep search`
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for ("foggy highway at night").
    #[arg(required_unless_present = "image")]
    pub text: Option<String>,
    /// Search by an example image instead of text.
    #[arg(long, conflicts_with = "text")]
    pub image: Option<PathBuf>,
    /// Which frames.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Minimum similarity of a hit.
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Number of results.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Rank this rig's records (fused views) instead of frames.
    #[arg(long, conflicts_with = "image")]
    pub rig: Option<String>,
    /// With --rig: only records where these roles are present (comma-separated).
    #[arg(long, requires = "rig", value_delimiter = ',')]
    pub views: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Store directory [default: store.path]; read directly when no daemon answers.
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// `roadrep bench replay`
#[derive(Debug, Args)]
pub struct BenchReplayArgs {
    /// Model directory [default: models/clip-random-full if generated, else models/clip-tiny].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Clip to replay; generated (1280x720, 25 fps, H.264) when missing.
    #[arg(long, default_value = "target/bench-720p25.mp4")]
    pub clip: PathBuf,
    /// Length of a generated clip, seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
    /// Frames kept per second.
    #[arg(long, default_value_t = 2.0)]
    pub fps: f64,
    /// Which frames are decoded.
    #[arg(long, value_enum, default_value = "exact")]
    pub decode: roadrep::ingest::config::DecodeMode,
    /// Image encoder precision.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: ImagePrecision,
    /// Width of the stored thumbnails, 0 for none [default: store.thumbnail_width].
    #[arg(long)]
    pub thumbnail_width: Option<u32>,
    /// Width of keyframe pictures, made of every frame in the decode-only
    /// pass, 0 for none [default: store.keyframe_width].
    #[arg(long)]
    pub keyframe_width: Option<u32>,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// `roadrep export-frames`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output directory: CAMERA/TIME.jpg and frames.jsonl (the trainer's manifest format).
    #[arg(long)]
    pub out: PathBuf,
    /// Which frames.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Most frames exported.
    #[arg(long, default_value_t = 100_000)]
    pub limit: usize,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = 92, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub quality: i32,
    /// Store directory [default: store.path] (the daemon must not be running).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// Camera and time range, shared by every query command.
#[derive(Debug, Args)]
pub struct RangeArgs {
    /// Only these cameras (repeatable).
    #[arg(long)]
    pub camera: Vec<String>,
    /// Earliest time (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub from: Option<String>,
    /// Latest time (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub to: Option<String>,
}

impl RangeArgs {
    /// `--camera` as the API's comma-separated `camera` parameter.
    pub fn camera_param(&self) -> Option<String> {
        (!self.camera.is_empty()).then(|| self.camera.join(","))
    }
}

/// Frame filters shared by `search` and `export-frames`.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Which cameras and times.
    #[command(flatten)]
    pub range: RangeArgs,
    /// Only frames whose top class is this, as SET=CLASS (repeatable), e.g. weather=foggy.
    #[arg(long)]
    pub tag: Vec<String>,
    /// Minimum probability of each --tag.
    #[arg(long)]
    pub min_tag_score: Option<f32>,
}

impl FilterArgs {
    /// The filters as a search request (`--tag set=class` -> `set:class`).
    pub fn to_request(&self) -> roadrep::search::SearchRequest {
        let tags: Vec<String> = self.tag.iter().map(|t| t.replacen('=', ":", 1)).collect();
        roadrep::search::SearchRequest {
            camera: self.range.camera_param(),
            from: self.range.from.clone(),
            to: self.range.to.clone(),
            tag: (!tags.is_empty()).then(|| tags.join(",")),
            min_tag_score: self.min_tag_score,
            ..Default::default()
        }
    }
}
