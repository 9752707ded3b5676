//! The currency between stages: a sampled, preprocessed frame.

use std::sync::Arc;

use ndarray::Array3;

/// One sampled video frame, preprocessed for the image encoder.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Stream (camera) name.
    pub stream: Arc<str>,
    /// Source identity (for replay checkpoints): path + size + mtime of a
    /// file, or the URL of a live source.
    pub source: Arc<str>,
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
    /// `[3, crop, crop]` normalised pixels (preprocessed on the ingest thread
    /// so it overlaps with inference).
    pub pixels: Array3<f32>,
    /// The captioner's input (packed RGB, resized), when captioning is on:
    /// kept so the segment's keyframe can be captioned later.
    pub caption_image: Option<Arc<[u8]>>,
}

/// What an ingest worker sends downstream, in order per stream.
#[derive(Debug)]
pub enum IngestEvent {
    /// A sampled frame.
    Frame(Frame),
    /// A source ended: after its last frame, so its checkpoint can be
    /// marked complete once those frames are stored.
    SourceEnded {
        /// Stream name.
        stream: Arc<str>,
        /// Source identity.
        source: Arc<str>,
        /// Read to its end (EOS) rather than stopped or failed.
        complete: bool,
    },
}
