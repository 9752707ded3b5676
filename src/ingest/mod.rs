//! Ingest: turning sources into sampled, preprocessed frames.
//!
//! - [`config`]: `[[streams]]` and `[ingest]` settings, source kinds.
//! - [`sampler`]: which frames to keep, by timestamp (pure).
//! - [`gst`]: the GStreamer decode graph, bus errors, RGB views of samples.
//! - [`source`]: one run of one source into the pipeline.
//! - [`probe`]: a recording's duration and creation time tag.
//! - [`frames_at`]: chosen frames of a file decoded again (frame export).
//! - [`still`]: still image files (`roadrep tag`, image search queries).

pub mod config;
pub mod frames_at;
pub mod gst;
mod live_clock;
pub mod nal;
pub mod probe;
pub mod sampler;
pub mod source;
pub mod still;
pub mod thumbnail;
