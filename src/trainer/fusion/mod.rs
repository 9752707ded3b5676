//! Training and evaluation of the rig fusion model (design §6): per-camera
//! CLIP image embeddings of a multi-camera rig joined into one embedding in
//! CLIP's joint space.
//!
//! - [`model`]: `RigFusion` in candle, weights read from (and written back
//!   into) the initializers of a fusion directory's `fusion.onnx`; every
//!   parameter trains (the model is small, no LoRA).
//! - [`data`]: the rig manifest (JSONL, one rig per line) and the frozen CLIP
//!   embeddings of its images and captions, computed once with the daemon's
//!   ONNX encoders and cached on disk ([`cache`]).
//! - [`train`]: symmetric InfoNCE between fused embeddings and caption
//!   embeddings, random view dropout, AdamW with warmup + cosine, early
//!   stopping on validation recall@1, exact resume.
//! - [`eval`]: text-to-rig recall of the fused embedding against the mean of
//!   the views and the anchor view alone.
//!
//! Usage:
//! ```text
//! trainer train-fusion --clip models/clip-tiny --fusion models/fusion-tiny \
//!     --data rigs.jsonl --out runs/f          # writes runs/f/model
//! trainer eval-fusion --clip models/clip-tiny --fusion runs/f/model \
//!     --data rigs.jsonl --report runs/f/eval.json
//! ```

pub mod bench;
pub mod cache;
pub mod data;
pub mod dir;
pub mod eval;
pub mod model;
pub mod train;

pub use dir::{FusionConfig, FusionDir};
pub use model::RigFusion;
