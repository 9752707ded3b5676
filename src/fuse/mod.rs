//! Rigs: multi-camera records and the fusion model.
//!
//! A rig record holds one view per camera role (front, front_left, ...),
//! each possibly absent. [`model::FusionModel`] joins the present views' CLIP
//! image embeddings into one embedding in CLIP's joint space; without a
//! fusion model, [`model::mean_of_views`] gives what an untrained one does.

pub mod manifest;
pub mod model;

pub use manifest::FusionManifest;
pub use model::{FusionModel, FusionOptions, mean_of_views};
