//! What turns a rig record's views into one embedding: the fusion model
//! made for the CLIP model, or, without one, the mean of the views (what
//! an untrained fusion model gives anyway).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::config::RigLayout;
use super::model::{FusionModel, FusionOptions, mean_of_views};
use crate::models::ModelError;

/// The fuser of the rigs.
#[derive(Clone)]
pub enum RigFuser {
    /// A fusion model directory.
    Model(Arc<FusionModel>),
    /// The normalised mean of the present views.
    MeanOfViews {
        /// `sha256("mean-of-views\n" + CLIP fingerprint)`: fused embeddings
        /// of each CLIP model live apart.
        fingerprint: String,
    },
}

impl std::fmt::Debug for RigFuser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl RigFuser {
    /// The mean of the views, for embeddings of CLIP model `clip`.
    pub fn mean_of_views(clip: &str) -> Self {
        let mut h = Sha256::new();
        h.update(format!("mean-of-views\n{clip}"));
        Self::MeanOfViews {
            fingerprint: hex::encode(h.finalize()),
        }
    }

    /// The fuser `[models] fusion` names (an error if it does not load or
    /// was made for another CLIP model); unset: a fusion model directory
    /// beside the CLIP one (`fusion-*`) made for it, else the mean of the
    /// views.
    pub fn load(
        configured: Option<&Path>,
        clip_dir: &Path,
        clip_fingerprint: &str,
        options: &FusionOptions,
    ) -> Result<Self, ModelError> {
        if let Some(dir) = configured {
            let model = FusionModel::open(dir, options)?;
            model.check_clip(clip_fingerprint)?;
            return Ok(Self::Model(Arc::new(model)));
        }
        for dir in sibling_fusion_dirs(clip_dir) {
            match FusionModel::open(&dir, options) {
                Ok(m) if m.check_clip(clip_fingerprint).is_ok() => {
                    return Ok(Self::Model(Arc::new(m)));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, dir = %dir.display(), "Not a usable fusion model.");
                }
            }
        }
        Ok(Self::mean_of_views(clip_fingerprint))
    }

    /// Fingerprint stored with fused embeddings.
    pub fn fingerprint(&self) -> &str {
        match self {
            Self::Model(m) => m.fingerprint(),
            Self::MeanOfViews { fingerprint } => fingerprint,
        }
    }

    /// For logs and `/health`.
    pub fn describe(&self) -> String {
        match self {
            Self::Model(m) => format!("fusion model {}", m.dir().display()),
            Self::MeanOfViews { .. } => "mean of the views (no fusion model)".into(),
        }
    }

    /// A role's slot in the fusion model (its canonical order); `None`
    /// without a model or for a role it lacks.
    pub fn slot_of(&self, role: &str) -> Option<usize> {
        match self {
            Self::Model(m) => m.role_slot(role),
            Self::MeanOfViews { .. } => None,
        }
    }

    /// Every role of `layout` must have a slot in the fusion model.
    pub fn check_roles(&self, layout: &RigLayout) -> Result<(), String> {
        let Self::Model(m) = self else {
            return Ok(());
        };
        for r in &layout.roles {
            if m.role_slot(&r.role).is_none() {
                return Err(format!(
                    "rig '{}': role '{}' has no slot in fusion model {} (its roles: {})",
                    layout.name,
                    r.role,
                    m.dir().display(),
                    m.roles().join(", ")
                ));
            }
        }
        Ok(())
    }

    /// One fused embedding per record; `records[i][r]` is role `r` of
    /// `layout` (None: absent). Records without any view are refused by
    /// the model.
    pub fn fuse(
        &self,
        layout: &RigLayout,
        records: &[Vec<Option<&[f32]>>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        match self {
            Self::MeanOfViews { .. } => Ok(records
                .iter()
                .map(|views| mean_of_views(views).unwrap_or_default())
                .collect()),
            Self::Model(m) => {
                let slots: Vec<Option<usize>> =
                    layout.roles.iter().map(|r| m.role_slot(&r.role)).collect();
                let by_slot: Vec<Vec<Option<&[f32]>>> = records
                    .iter()
                    .map(|views| {
                        let mut s = vec![None; m.roles().len()];
                        for (view, slot) in views.iter().zip(&slots) {
                            if let Some(slot) = slot {
                                s[*slot] = *view;
                            }
                        }
                        s
                    })
                    .collect();
                m.fuse(&by_slot)
            }
        }
    }
}

/// `fusion-*` directories beside `clip_dir`, by name.
fn sibling_fusion_dirs(clip_dir: &Path) -> Vec<PathBuf> {
    let Some(parent) = clip_dir.parent() else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fusion-"))
                && p.join("manifest.toml").is_file()
        })
        .collect();
    dirs.sort();
    dirs
}
