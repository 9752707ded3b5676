//! Ingest: turning sources into sampled, preprocessed frames.
//!
//! - [`config`]: `[[streams]]` and `[ingest]` settings, source kinds.
//! - [`sampler`]: which frames to keep, by timestamp (pure).
//! - [`source`]: one GStreamer pipeline per source.
//! - [`still`]: still image files (`roadrep tag`, image search queries).

pub mod config;
pub mod sampler;
pub mod source;
pub mod still;
