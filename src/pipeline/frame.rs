//! The currency between stages: a sampled, preprocessed frame, and the
//! identity of the source it came from.

use std::fmt;
use std::sync::Arc;

use crate::ingest::config::SourceKind;

/// Identity of a source, the key of its replay checkpoint: a file is the
/// same source while its canonical path, size and modification time are the
/// same (`file:<path>:<size>:<mtime ns>`); a live source is its URL, device
/// or description. Not for display: see [`Frame::source_label`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(Arc<str>);

impl SourceId {
    /// The identity of `kind` as it is now (a file's size and mtime are
    /// read, so a file that changed is a new source).
    pub fn of(kind: &SourceKind) -> Self {
        let id = match kind {
            SourceKind::File(p) => {
                let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                let meta = std::fs::metadata(&abs).ok();
                let size = meta.as_ref().map_or(0, |m| m.len());
                let mtime = meta
                    .and_then(|m| m.modified().ok())
                    .map_or(0, crate::ingest::source::system_time_ns);
                format!("file:{}:{size}:{mtime}", abs.display())
            }
            SourceKind::Rtsp(u) => u.clone(),
            SourceKind::V4l2(d) => format!("v4l2:{}", d.display()),
            SourceKind::Pipeline(d) => format!("gst:{d}"),
        };
        Self(id.into())
    }

    /// An identity read back from the store.
    pub fn from_stored(id: &str) -> Self {
        Self(id.into())
    }

    /// Whether the source resumes from its checkpoint after a restart:
    /// files do; live sources (RTSP, V4L2, pipelines) start afresh.
    pub fn resumes(&self) -> bool {
        self.0.starts_with("file:")
    }

    /// The identity as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A file source's canonical path (`None` for live sources).
    pub fn file_path(&self) -> Option<std::path::PathBuf> {
        let rest = self.0.strip_prefix("file:")?;
        // `<path>:<size>:<mtime>`: the path itself may contain ':'.
        let mut parts = rest.rsplitn(3, ':');
        let (_mtime, _size, path) = (parts.next()?, parts.next()?, parts.next()?);
        Some(path.into())
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Human-readable name of a source (path, URL, device), stored with its
/// frames and segments.
pub fn source_label(kind: &SourceKind) -> Arc<str> {
    match kind {
        SourceKind::File(p) => p.display().to_string().into(),
        SourceKind::Rtsp(u) => u.as_str().into(),
        SourceKind::V4l2(d) => d.display().to_string().into(),
        SourceKind::Pipeline(d) => d.as_str().into(),
    }
}

/// One sampled video frame, preprocessed for the image encoder.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Stream (camera) name.
    pub stream: Arc<str>,
    /// Identity of the source (checkpoint key).
    pub source_id: SourceId,
    /// Human-readable source (path, URL), stored with the frame.
    pub source_label: Arc<str>,
    /// Presentation timestamp in the source, ns.
    pub pts_ns: u64,
    /// The sampling grid step this frame was kept on, ns.
    pub sample_interval_ns: u64,
    /// Frame time, ns since the Unix epoch: capture time for live sources,
    /// the file's base time + pts for files.
    pub ts_ns: i64,
    /// Decoded width.
    pub width: u32,
    /// Decoded height.
    pub height: u32,
    /// The CLIP input before normalisation: the resized center crop, packed
    /// RGB (`crop`² × 3 bytes). Resized on the ingest thread so it overlaps
    /// with inference; the embedder normalises it straight into its slot of
    /// the batch tensor, and it waits in the queues at a quarter of the f32
    /// tensor's size.
    pub clip_crop: Vec<u8>,
    /// Pictures kept in case this frame becomes its segment's keyframe:
    /// the captioner's input (when captioning is on) and the keyframe JPEG
    /// (when `[store] keyframe_width` > 0).
    pub keyframe_images: crate::segment::KeyframeImages,
    /// The stored thumbnail (JPEG), unless thumbnails are off.
    pub thumbnail: Option<Arc<[u8]>>,
}

impl Frame {
    /// The (stream, source) this frame belongs to.
    pub fn source_key(&self) -> SourceKey {
        SourceKey {
            stream: self.stream.clone(),
            source_id: self.source_id.clone(),
        }
    }
}

/// One source of one stream: the unit checkpoints and segments are kept per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// Stream (camera) name.
    pub stream: Arc<str>,
    /// Source identity.
    pub source_id: SourceId,
}

/// What an ingest worker sends downstream, in order per stream.
#[derive(Debug)]
pub enum IngestEvent {
    /// A sampled frame.
    Frame(Frame),
    /// A source ended: after its last frame, so its checkpoint can be
    /// marked complete once those frames are stored.
    SourceEnded {
        /// The (stream, source) that ended.
        key: SourceKey,
        /// Read to its end (EOS) rather than stopped or failed.
        complete: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_identity_gives_its_path_back_even_with_colons_in_it() {
        let id = SourceId::from_stored("file:/data/cam:front/a.mp4:1234:1700000000000000000");
        assert_eq!(
            id.file_path().unwrap(),
            std::path::Path::new("/data/cam:front/a.mp4")
        );
        assert!(id.resumes());
        let live = SourceId::from_stored("rtsp://10.0.0.2/stream");
        assert_eq!(live.file_path(), None);
        assert!(!live.resumes());
    }
}
