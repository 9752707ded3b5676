//! roadrep: a video-tagging daemon for driving footage.
//!
//! Frames from dash-cams and multi-camera rigs are embedded with CLIP,
//! tagged zero-shot from label sets (weather, time of day, scene, road
//! surface), and made searchable. Models are ONNX files run with ONNX
//! Runtime; a model directory carries a manifest that pins its files,
//! tensor names and preprocessing, so numerics match the reference
//! implementation (transformers) exactly.
//!
//! # Layout
//! Data flows top to bottom:
//! - [`config`]: `roadrep.toml`, one section per stage.
//! - [`frame`]: the [`frame::Frame`] passed between stages.
//! - [`ingest`]: GStreamer sources (files, RTSP, V4L2, any source bin) ->
//!   sampled, preprocessed frames; still images.
//! - [`batcher`]: cross-stream batches (max frames, max wait).
//! - [`models`]: ONNX Runtime setup, model directories and their manifests,
//!   reference-exact image preprocessing, the CLIP image/text encoders.
//! - [`tagging`]: label sets, prompt ensembles, zero-shot scores (pure), and
//!   the on-disk cache of class text embeddings.
//! - [`infer`]: the inference worker: batch -> CLIP -> tags -> segments ->
//!   store.
//! - [`segment`]: scene segmentation of a camera's embedding stream (pure):
//!   cuts, keyframes, dominant tags.
//! - [`caption`]: BLIP keyframe captions: the model, greedy/beam decoding,
//!   and the low-priority worker that drains the store's caption backlog.
//! - [`summary`]: segments as summary lines (API and CLI).
//! - [`store`]: sled trees, keys, versioned values, search scans.
//! - [`replay`], [`daemon`]: the two ways frames flow (recorded clips, live).
//! - [`search`]: text/image queries with camera, time and tag filters.
//! - [`api`]: HTTP API (search, frames, timeline, health, metrics).
//! - [`export`]: stored frames -> image-caption dataset (trainer input).
//! - [`telemetry`]: metric names.
//! - [`bench`]: throughput measurements reported in `BENCHMARKS.md`.
//! - `trainer` (feature `trainer`, binary `trainer`): offline LoRA
//!   fine-tuning of CLIP in candle from our ONNX initializers, datasets
//!   (manifests, BDD100K labels, class folders), evaluation and reports, and
//!   merging the adapter back into a model directory the daemon loads.

pub mod api;
pub mod batcher;
pub mod bench;
pub mod caption;
pub mod config;
pub mod daemon;
pub mod export;
pub mod frame;
pub mod infer;
pub mod ingest;
pub mod models;
pub mod replay;
pub mod search;
pub mod segment;
pub mod store;
pub mod summary;
pub mod tagging;
pub mod telemetry;
#[cfg(feature = "trainer")]
pub mod trainer;
