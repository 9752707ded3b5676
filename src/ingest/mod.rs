//! Ingest: turning sources into RGB frames.
//!
//! - [`still`]: still image files (`roadrep tag`, image search queries).

pub mod still;
