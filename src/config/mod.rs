//! `roadrep.toml`: what the pipeline runs (models, labels). One section per
//! stage; runtime behaviour (log format, verbosity) is a CLI flag instead.
//!
//! Relative paths in a config file are resolved against the file's own
//! directory, so `roadrep -c /etc/roadrep/roadrep.toml` works from anywhere.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ingest::config::{IngestConfig, StreamConfig};
use crate::models::ImagePrecision;
use crate::pipeline::BatcherConfig;

/// Config file read when no `-c` is given and it exists.
pub const DEFAULT_CONFIG: &str = "config/roadrep.toml";

/// Errors reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config '{path}': {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Unknown key, wrong type, bad value: the message names the field.
    #[error("config '{path}': {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoadrepConfig {
    /// Model directories and ONNX Runtime.
    #[serde(default)]
    pub models: ModelsConfig,
    /// Zero-shot tagging.
    #[serde(default)]
    pub tagging: TaggingConfig,
    /// Defaults for every stream.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Cross-stream batching.
    #[serde(default)]
    pub batcher: BatcherConfig,
    /// The embedded store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Vector search: the approximate index.
    #[serde(default)]
    pub search: crate::store::SearchConfig,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Scene segmentation.
    #[serde(default)]
    pub segments: crate::segment::SegmenterConfig,
    /// Keyframe captions.
    #[serde(default)]
    pub captions: crate::caption::CaptionConfig,
    /// Cameras the daemon runs.
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    /// Multi-camera rigs (`[[rigs]]`); the streams name their rig and role.
    #[serde(default)]
    pub rigs: Vec<crate::fuse::config::RigConfig>,
    /// Shipping to the fleet over MQTT (none: local only).
    #[serde(default)]
    pub uplink: Option<crate::uplink::config::UplinkConfig>,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// sled database directory.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Width of the JPEG thumbnail stored with every frame (its height
    /// follows the frame); 0: none.
    #[serde(default = "default_thumbnail_width")]
    pub thumbnail_width: u32,
    /// Width of the larger JPEG kept for each segment's keyframe (the
    /// timeline and summaries show it); 0: none.
    #[serde(default = "default_keyframe_width")]
    pub keyframe_width: u32,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("data/roadrep.sled")
}

fn default_thumbnail_width() -> u32 {
    256
}

fn default_keyframe_width() -> u32 {
    640
}

/// Widest thumbnail or keyframe picture (full frames come from the source).
pub const MAX_THUMBNAIL_WIDTH: u32 = 1920;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            thumbnail_width: default_thumbnail_width(),
            keyframe_width: default_keyframe_width(),
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP API listens on (localhost only by default).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Most requests served at once (searches run the text encoder).
    #[serde(default = "default_api_concurrency")]
    pub max_concurrent_requests: usize,
    /// File holding the bearer token every request must carry (created
    /// with a random token, mode 0600, when missing). Required when
    /// `listen` is not a loopback address.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Client connections held at once (more wait in the kernel's backlog).
    #[serde(default = "default_api_connections")]
    pub max_connections: usize,
    /// Seconds a connection may take to send a request head, or stay idle
    /// between requests, before it is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: f64,
}

fn default_listen() -> String {
    "127.0.0.1:8470".into()
}
fn default_api_connections() -> usize {
    256
}
fn default_header_timeout() -> f64 {
    10.0
}
fn default_api_concurrency() -> usize {
    16
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_concurrent_requests: default_api_concurrency(),
            token_file: None,
            max_connections: default_api_connections(),
            header_timeout_secs: default_header_timeout(),
        }
    }
}

/// `[models]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// CLIP model directory (written by `models/export.py`).
    #[serde(default = "default_clip_dir")]
    pub clip: PathBuf,
    /// onnxruntime shared library; unset: `$ORT_DYLIB_PATH`, then `.venv/ort`.
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// Image encoder precision: `fp32` (reference) or `int8` (faster on CPU).
    #[serde(default)]
    pub precision: ImagePrecision,
    /// ONNX Runtime threads per model; 0 = all cores.
    #[serde(default)]
    pub intra_threads: usize,
    /// Whether ONNX Runtime's idle compute threads spin waiting for the
    /// next operator instead of sleeping. Off: the decoder, the captioner
    /// and the store share the cores with the models, and a spinning
    /// thread takes their time.
    #[serde(default)]
    pub ort_spinning: bool,
    /// Rig fusion model directory (`models/export.py --fusion`), made for
    /// the CLIP model above. Unset: `models/fusion-tiny` when it belongs to
    /// that CLIP model, else rigs fuse to the mean of their views.
    #[serde(default)]
    pub fusion: Option<PathBuf>,
}

/// `[tagging]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaggingConfig {
    /// Label sets file.
    #[serde(default = "default_labels")]
    pub labels: PathBuf,
    /// Directory for cached text embeddings; unset: `$XDG_CACHE_HOME/roadrep`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

fn default_clip_dir() -> PathBuf {
    PathBuf::from("models/clip-tiny")
}
fn default_labels() -> PathBuf {
    PathBuf::from("config/labels.toml")
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            clip: default_clip_dir(),
            ort_library: None,
            precision: ImagePrecision::Fp32,
            intra_threads: 0,
            ort_spinning: false,
            fusion: None,
        }
    }
}

impl Default for TaggingConfig {
    fn default() -> Self {
        Self {
            labels: default_labels(),
            cache_dir: None,
        }
    }
}

/// Most ONNX Runtime threads a model may be given.
pub const MAX_THREADS: usize = 256;

impl RoadrepConfig {
    /// Reads a config file and resolves its relative paths.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let config: Self = toml::from_str(text)
            .map_err(|e| invalid(crate::models::manifest::one_line(&e.to_string())))?;
        if config.batcher.max_frames == 0 {
            return Err(invalid("batcher.max_frames must be at least 1".into()));
        }
        config.segments.validate().map_err(&invalid)?;
        config.captions.validate().map_err(&invalid)?;
        if !(config.ingest.sample_fps > 0.0 && config.ingest.sample_fps <= 120.0) {
            return Err(invalid(format!(
                "ingest.sample_fps {} must be in (0, 120]",
                config.ingest.sample_fps
            )));
        }
        for (name, v) in [
            (
                "ingest.retry_initial_secs",
                config.ingest.retry_initial_secs,
            ),
            ("ingest.retry_max_secs", config.ingest.retry_max_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(invalid(format!("{name} {v} must be in (0, 86400]")));
            }
        }
        // More threads than any box has cores only costs memory (each ONNX
        // Runtime thread keeps its own scratch buffers).
        if config.models.intra_threads > MAX_THREADS {
            return Err(invalid(format!(
                "models.intra_threads {} must be in 0..={MAX_THREADS} (0 = all cores)",
                config.models.intra_threads
            )));
        }
        if config.captions.intra_threads == 0 || config.captions.intra_threads > MAX_THREADS {
            return Err(invalid(format!(
                "captions.intra_threads {} must be in 1..={MAX_THREADS}",
                config.captions.intra_threads
            )));
        }
        // Checked here, not at bind time: a value that is no address at all
        // would otherwise be reported as "reachable from other machines".
        if !is_host_port(&config.api.listen) {
            return Err(invalid(format!(
                "api.listen '{}' must be host:port (like 127.0.0.1:8470)",
                config.api.listen
            )));
        }
        if config.api.max_connections == 0 {
            return Err(invalid("api.max_connections must be at least 1".into()));
        }
        let t = config.api.header_timeout_secs;
        if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
            return Err(invalid(format!(
                "api.header_timeout_secs {t} must be in (0, 3600]"
            )));
        }
        if config.ingest.queue_frames == 0 {
            return Err(invalid("ingest.queue_frames must be at least 1".into()));
        }
        for (name, width) in [
            ("store.thumbnail_width", config.store.thumbnail_width),
            ("store.keyframe_width", config.store.keyframe_width),
        ] {
            if width > MAX_THUMBNAIL_WIDTH {
                return Err(invalid(format!(
                    "{name} {width} must be in 0..={MAX_THUMBNAIL_WIDTH} (0 = none)"
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, stream) in config.streams.iter().enumerate() {
            stream
                .validate()
                .map_err(|e| invalid(format!("streams[{i}]: {e}")))?;
            if !names.insert(stream.name.as_str()) {
                return Err(invalid(format!(
                    "streams[{i}]: duplicate stream name '{}'",
                    stream.name
                )));
            }
        }
        config.rig_layouts().map_err(&invalid)?;
        if let Some(uplink) = &config.uplink {
            uplink.validate().map_err(&invalid)?;
        }
        Ok(config)
    }

    /// The rigs the streams form (`[[rigs]]` plus the streams' rig and role).
    pub fn rig_layouts(&self) -> Result<Vec<crate::fuse::config::RigLayout>, String> {
        crate::fuse::config::resolve_rigs(&self.rigs, &self.streams, self.ingest.sample_fps)
    }

    /// `-c PATH`, else `$ROADREP_CONFIG`, else `config/roadrep.toml` if
    /// present, else built-in defaults (paths relative to the working dir).
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        match Self::file_to_load(explicit) {
            Some(p) => Self::from_file(&p),
            None => Ok(Self::default()),
        }
    }

    /// The file [`RoadrepConfig::load`] reads: `explicit`, else
    /// `$ROADREP_CONFIG`, else the default file if it exists.
    pub fn file_to_load(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("ROADREP_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let default = Path::new(DEFAULT_CONFIG);
        default.is_file().then(|| default.to_path_buf())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.models.clip);
        if let Some(p) = self.models.fusion.as_mut() {
            fix(p);
        }
        if let Some(p) = self.api.token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.models.ort_library.as_mut() {
            fix(p);
        }
        fix(&mut self.tagging.labels);
        if let Some(p) = self.captions.model.as_mut() {
            fix(p);
        }
        fix(&mut self.store.path);
        for stream in &mut self.streams {
            // Relative file sources are relative to the config file too.
            if let Ok(crate::ingest::config::SourceKind::File(p)) =
                crate::ingest::config::SourceKind::parse(&stream.source)
                && p.is_relative()
            {
                stream.source = base.join(p).display().to_string();
            }
        }
        if let Some(p) = self.tagging.cache_dir.as_mut() {
            fix(p);
        }
        if let Some(uplink) = self.uplink.as_mut() {
            uplink.resolve_paths(base);
        }
    }

    /// ONNX Runtime threads to use: the configured number, or all cores.
    pub fn intra_threads(&self) -> usize {
        match self.models.intra_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// `IP:port`, `[IPv6]:port` or `name:port`.
fn is_host_port(listen: &str) -> bool {
    listen.parse::<std::net::SocketAddr>().is_ok()
        || listen.rsplit_once(':').is_some_and(|(host, port)| {
            port.parse::<u16>().is_ok()
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_must_be_an_address() {
        for ok in ["127.0.0.1:0", "[::1]:8470", "localhost:8470", "0.0.0.0:80"] {
            let text = format!("[api]\nlisten = \"{ok}\"\n");
            assert!(
                RoadrepConfig::parse(Path::new("r.toml"), &text).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "nonsense",
            "127.0.0.1",
            ":8470",
            "host:port",
            "127.0.0.1:99999",
        ] {
            let text = format!("[api]\nlisten = \"{bad}\"\n");
            let e = RoadrepConfig::parse(Path::new("r.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("api.listen '{bad}' must be host:port")),
                "{e}"
            );
        }
    }

    #[test]
    fn thread_counts_are_bounded() {
        for (text, field) in [
            (
                "[models]\nintra_threads = 100000\n",
                "models.intra_threads 100000",
            ),
            (
                "[captions]\nintra_threads = 0\n",
                "captions.intra_threads 0",
            ),
            (
                "[captions]\nintra_threads = 300\n",
                "captions.intra_threads 300",
            ),
        ] {
            let e = RoadrepConfig::parse(Path::new("r.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("r.toml") && e.contains(field), "{e}");
        }
        let ok = RoadrepConfig::parse(Path::new("r.toml"), "[models]\nintra_threads = 256\n");
        assert!(ok.is_ok());
    }

    #[test]
    fn unknown_key_and_wrong_type_name_the_field() {
        let e = RoadrepConfig::parse(Path::new("r.toml"), "[models]\nclipp = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml") && e.contains("clipp"), "{e}");
        let e = RoadrepConfig::parse(Path::new("r.toml"), "[models]\nintra_threads = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("intra_threads"), "{e}");
        let e = RoadrepConfig::parse(Path::new("r.toml"), "[models]\nprecision = \"fp16\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fp16"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn ort_spinning_is_off_unless_asked_for() {
        let parse = |text: &str| RoadrepConfig::parse(Path::new("r.toml"), text);
        assert!(!parse("").unwrap().models.ort_spinning);
        assert!(
            parse("[models]\nort_spinning = true\n")
                .unwrap()
                .models
                .ort_spinning
        );
        let e = parse("[models]\nort_spinning = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml") && e.contains("ort_spinning"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roadrep.toml");
        std::fs::write(
            &path,
            "[models]\nclip = \"../m/clip\"\n[tagging]\nlabels = \"/abs/labels.toml\"\n",
        )
        .unwrap();
        let c = RoadrepConfig::from_file(&path).unwrap();
        assert_eq!(c.models.clip, dir.path().join("../m/clip"));
        assert_eq!(c.tagging.labels, PathBuf::from("/abs/labels.toml"));
    }

    #[test]
    fn shipped_config_parses() {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/roadrep.toml"));
        let c = RoadrepConfig::from_file(p).unwrap();
        assert!(
            c.models.clip.join("manifest.toml").is_file(),
            "{:?}",
            c.models.clip
        );
        assert!(c.tagging.labels.is_file());
    }
}
