//! Ingest: turning sources into sampled, preprocessed frames.
//!
//! - [`config`]: `[[streams]]` and `[ingest]` settings, source kinds.
//! - [`sampler`]: which frames to keep, by timestamp (pure).
//! - [`gop`]: which compressed units of a file the decoder needs for
//!   them (pure); `decode_plan` installs it at the decoder's sink pad.
//! - [`nal`]: what an H.264/H.265 unit is (keyframe, IDR, reference).
//! - [`gst`]: the GStreamer decode graph, bus errors, RGB views of samples.
//! - [`source`]: one run of one source into the pipeline.
//! - [`probe`]: a recording's duration and creation time tag.
//! - [`frames_at`]: chosen frames of a file decoded again (frame export).
//! - [`still`]: still image files (`roadrep tag`, image search queries).

pub mod config;
mod decode_plan;
pub mod frames_at;
pub mod gop;
pub mod gst;
mod live_clock;
pub mod nal;
pub mod probe;
pub mod sampler;
pub mod source;
pub mod still;
pub mod thumbnail;
