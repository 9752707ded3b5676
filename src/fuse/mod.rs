//! Rigs: multi-camera records and the fusion model.
//!
//! A rig is a set of cameras of one vehicle (front, back, sides). The
//! anchor camera's sampled frames define the rig's times; each other role
//! joins with its nearest sampled frame within a tolerance ([`assembler`];
//! [`config`] lays rigs out from `[[rigs]]` and `[[streams]]`). A rig
//! record holds one view per role, each possibly absent.
//! [`model::FusionModel`] joins the present views' CLIP image embeddings
//! into one embedding in CLIP's joint space; without a fusion model,
//! [`model::mean_of_views`] gives what an untrained one does ([`fuser`]).
//! [`names`] reads role and time from nuScenes-style file names.

pub mod assembler;
pub mod config;
pub mod fuser;
pub mod manifest;
pub mod model;
pub mod names;

pub use manifest::FusionManifest;
pub use model::{FusionModel, FusionOptions, mean_of_views};
