//! Stream configuration (`[[streams]]` in roadrep.toml).
//!
//! ```toml
//! [[streams]]
//! name = "front"
//! source = "rtsp://10.0.0.5/stream1"   # or file:///clips/a.mp4, v4l2:///dev/video0,
//!                                       # or "gst:videotestsrc is-live=true"
//! rtsp_transport = "tcp"
//! latency_ms = 200
//! ```

use std::path::PathBuf;

use serde::Deserialize;

/// One configured camera.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Camera name: stored with every frame, used in search filters.
    pub name: String,
    /// `file://PATH` (or a plain path), `rtsp://...`, `v4l2://DEVICE`, or
    /// `gst:DESCRIPTION` (any GStreamer source bin producing video).
    pub source: String,
    /// Frames kept per second of video; unset: `[ingest] sample_fps`.
    #[serde(default)]
    pub sample_fps: Option<f64>,
    /// RTSP lower transport: `tcp` (default, works through NAT) or `udp`.
    #[serde(default)]
    pub rtsp_transport: RtspTransport,
    /// RTSP jitter-buffer latency.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u32,
    /// Which frames are decoded; unset: `[ingest] decode`.
    #[serde(default)]
    pub decode: Option<DecodeMode>,
    /// The multi-camera rig this camera belongs to (see `fuse::config`).
    #[serde(default)]
    pub rig: Option<String>,
    /// Its role in the rig (`front`, `back`, ...).
    #[serde(default)]
    pub role: Option<String>,
}

/// Which frames the decoder decodes (`[ingest] decode`). Sampling keeps
/// the first *decoded* frame at or after each step, so the modes differ
/// in which frames can be sampled, and in decoding work.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// Each step gets the first frame at or after it. Files decode only
    /// those frames and the frames they may reference (see `ingest::gop`);
    /// live sources decode every frame.
    #[default]
    Exact,
    /// Pictures no other picture references (most B-frames) are not
    /// decoded (H.264, H.265): each step gets the first decoded frame at
    /// or after it, at most the run of skipped frames later (40 ms with
    /// x264's 2 B-frames at 25 fps), with the pixels a full decode gives it.
    Fast,
    /// Keyframes only: each step gets the first keyframe at or after it,
    /// so with an interval shorter than the keyframe spacing some steps
    /// get none. For sampling every GOP or less often.
    Keyframes,
}

/// RTSP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// Interleaved over the RTSP TCP connection.
    #[default]
    Tcp,
    /// RTP over UDP.
    Udp,
}

fn default_latency_ms() -> u32 {
    200
}

/// `[ingest]`: defaults for every stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Frames kept per second of video.
    #[serde(default = "default_fps")]
    pub sample_fps: f64,
    /// Capacity of each stream's queue between ingest and inference, in
    /// frames (the worker takes the streams round robin).
    #[serde(default = "default_queue")]
    pub queue_frames: usize,
    /// First retry delay after a stream fails.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_secs: f64,
    /// Longest retry delay (the delay doubles up to this).
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: f64,
    /// Failed attempts in a row, none delivering a frame, after which a
    /// file that was read part way (a corrupt tail) is finished at its
    /// last stored frame instead of being retried forever.
    #[serde(default = "default_file_attempts")]
    pub max_file_attempts: u32,
    /// Which frames are decoded (see [`DecodeMode`]).
    #[serde(default)]
    pub decode: DecodeMode,
}

fn default_fps() -> f64 {
    2.0
}
fn default_queue() -> usize {
    32
}
fn default_file_attempts() -> u32 {
    3
}
fn default_retry_initial() -> f64 {
    1.0
}
fn default_retry_max() -> f64 {
    30.0
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            sample_fps: default_fps(),
            queue_frames: default_queue(),
            retry_initial_secs: default_retry_initial(),
            retry_max_secs: default_retry_max(),
            max_file_attempts: default_file_attempts(),
            decode: DecodeMode::default(),
        }
    }
}

/// A parsed `source`.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// A video file.
    File(PathBuf),
    /// An RTSP URL.
    Rtsp(String),
    /// A V4L2 device.
    V4l2(PathBuf),
    /// A GStreamer source description.
    Pipeline(String),
}

impl SourceKind {
    /// Parses a `source` string; the error says what is accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("source is empty".into());
        }
        if let Some(p) = s.strip_prefix("file://") {
            return Ok(Self::File(PathBuf::from(p)));
        }
        if s.starts_with("rtsp://") || s.starts_with("rtsps://") {
            return Ok(Self::Rtsp(s.to_string()));
        }
        if let Some(d) = s.strip_prefix("v4l2://") {
            return Ok(Self::V4l2(PathBuf::from(d)));
        }
        if let Some(d) = s.strip_prefix("gst:") {
            return Ok(Self::Pipeline(d.trim().to_string()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unsupported scheme '{scheme}://' (file://, rtsp://, v4l2://, gst:)"
            ));
        }
        Ok(Self::File(PathBuf::from(s)))
    }

    /// Whether the source is expected to run in real time (reconnected when
    /// it ends). A `gst:` description counts as live; at run time the
    /// pipeline itself decides whether it drops frames (see `source`).
    pub fn is_live(&self) -> bool {
        !matches!(self, Self::File(_))
    }
}

impl StreamConfig {
    /// Checks the values a type cannot express.
    pub fn validate(&self) -> Result<SourceKind, String> {
        if self.name.trim().is_empty() {
            return Err("stream name is empty".into());
        }
        if let Some(fps) = self.sample_fps
            && !(fps > 0.0 && fps <= 120.0)
        {
            return Err(format!(
                "stream '{}': sample_fps {fps} must be in (0, 120]",
                self.name
            ));
        }
        SourceKind::parse(&self.source).map_err(|e| format!("stream '{}': {e}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_source_kind() {
        assert_eq!(
            SourceKind::parse("file:///a/b.mp4"),
            Ok(SourceKind::File("/a/b.mp4".into()))
        );
        assert_eq!(
            SourceKind::parse("clips/b.mp4"),
            Ok(SourceKind::File("clips/b.mp4".into()))
        );
        assert_eq!(
            SourceKind::parse("rtsp://h/s"),
            Ok(SourceKind::Rtsp("rtsp://h/s".into()))
        );
        assert_eq!(
            SourceKind::parse("v4l2:///dev/video2"),
            Ok(SourceKind::V4l2("/dev/video2".into()))
        );
        assert_eq!(
            SourceKind::parse("gst: videotestsrc is-live=true"),
            Ok(SourceKind::Pipeline("videotestsrc is-live=true".into()))
        );
        assert!(
            SourceKind::parse("http://x/y")
                .unwrap_err()
                .contains("http://")
        );
        assert!(SourceKind::parse(" ").is_err());
    }
}
