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
//! Data flows top to bottom; each folder is one stage.
//! - [`config`]: `roadrep.toml`, one section per stage.
//! - [`ingest`]: GStreamer sources (files, RTSP, V4L2, any source bin) ->
//!   sampled, preprocessed frames; still images; frames decoded again by pts.
//! - [`pipeline`]: the frame path from the ingest threads to the store, in
//!   one place: the frame channel and its load/heartbeat handle, batching,
//!   the CLIP embedding and tags of a batch, the [`pipeline::SourceTracker`]
//!   (checkpoints, damaged sources, resume points), the segment tracker, and
//!   one store transaction per batch. Metric names live here too.
//! - [`models`]: ONNX Runtime setup, model directories and their manifests,
//!   reference-exact image preprocessing, the CLIP image/text encoders and
//!   the BLIP captioner.
//! - [`tagging`]: label sets, prompt ensembles, zero-shot scores (pure), and
//!   the on-disk cache of class text embeddings.
//! - [`segment`]: scene segmentation of a camera's embedding stream (pure):
//!   cuts, keyframes, dominant tags.
//! - [`fuse`]: multi-camera rigs: `[[rigs]]`, the assembler that joins the
//!   views of a rig close in time into rig records, and the fusion model
//!   that turns their CLIP embeddings into one.
//! - [`caption`]: keyframe captions: greedy/beam decoding and the
//!   low-priority worker that drains the store's caption backlog.
//! - [`store`]: sled trees, keys, versioned values, search scans.
//! - [`search`]: text/image queries with camera, time and tag filters;
//!   segments as summary lines; stored frames exported as a dataset.
//! - [`replay`], [`daemon`]: the two ways frames enter the pipeline
//!   (recorded clips; supervised live streams with the HTTP API).
//! - [`api`]: HTTP API (search, frames, timeline, health, metrics).
//! - [`uplink`]: the vehicle's outbox and its MQTT publisher; the wire
//!   contract with the fleet.
//! - [`fleet`]: the fleet side: MQTT ingest into PostgreSQL/pgvector
//!   (partitions, one HNSW index per model), search and summaries across
//!   vehicles, `roadrep fleet serve`.
//! - [`mod@bench`]: throughput measurements reported in `BENCHMARKS.md`.
//! - [`rng`]: a small seeded random generator (k-means, benchmarks, trainer).
//! - `trainer` (feature `trainer`, binary `trainer`): offline LoRA
//!   fine-tuning of CLIP in candle from our ONNX initializers, datasets
//!   (manifests, BDD100K labels, class folders), evaluation and reports, and
//!   merging the adapter back into a model directory the daemon loads.

pub mod api;
pub mod bench;
pub mod caption;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod fuse;
pub mod ingest;
pub mod models;
pub mod pipeline;
pub mod replay;
pub mod rng;
pub mod search;
pub mod segment;
pub mod store;
pub mod tagging;
#[cfg(feature = "trainer")]
pub mod trainer;
pub mod uplink;
