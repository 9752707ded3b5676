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
//! - [`ingest`]: sources to RGB frames (still images for now).
//! - [`models`]: ONNX Runtime setup, model directories and their manifests,
//!   reference-exact image preprocessing, the CLIP image/text encoders.
//! - [`tagging`]: label sets, prompt ensembles, zero-shot scores (pure), and
//!   the on-disk cache of class text embeddings.
//! - [`bench`]: throughput measurements reported in `BENCHMARKS.md`.
//! - `trainer` (feature `trainer`, binary `trainer`): offline LoRA
//!   fine-tuning of CLIP in candle from our ONNX initializers, datasets
//!   (manifests, BDD100K labels, class folders), evaluation and reports, and
//!   merging the adapter back into a model directory the daemon loads.

pub mod bench;
pub mod config;
pub mod ingest;
pub mod models;
pub mod tagging;
#[cfg(feature = "trainer")]
pub mod trainer;
