//! Zero-shot scene tags from CLIP embeddings.
//!
//! Label sets (`config/labels.toml`, see [`labels`]) name groups of
//! mutually exclusive classes (weather, time of day, scene, road surface).
//! Each class is described by several prompts whose text embeddings are
//! averaged (prompt ensemble). An image's scores within a set are the softmax
//! of `logit_scale * cosine(image, class)`; each set reports its top class
//! and every score. Class embeddings are computed once per model fingerprint
//! and label-file content, and cached on disk ([`cache`]).

pub mod cache;
pub mod labels;
pub mod score;

use std::path::PathBuf;

use ndarray::ArrayView1;

pub use cache::TextEmbeddingCache;
pub use labels::{LabelClass, LabelSet, LabelSets};
pub use score::{ClassEmbeddings, SetScores};

use crate::models::{ClipModel, ModelError};

/// Errors of the tagging stage.
#[derive(Debug, thiserror::Error)]
pub enum TaggingError {
    /// The labels file is unreadable or invalid.
    #[error("'{path}': {message}")]
    Labels { path: PathBuf, message: String },
    /// The text-embedding cache could not be written.
    #[error("text-embedding cache '{path}': {message}")]
    Cache { path: PathBuf, message: String },
    /// The text encoder failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Where a tagger's class embeddings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassEmbeddingSource {
    /// Read from the on-disk cache.
    Cache,
    /// Computed with the text encoder (and stored in the cache).
    Computed,
}

/// Scores image embeddings against label sets.
#[derive(Debug, Clone)]
pub struct SceneTagger {
    classes: ClassEmbeddings,
    logit_scale: f32,
    model_fingerprint: String,
    source: ClassEmbeddingSource,
}

impl SceneTagger {
    /// Builds the tagger for `model`, reading class embeddings from `cache`
    /// when an entry for this model and label file exists.
    pub fn new(
        model: &ClipModel,
        labels: &LabelSets,
        cache: Option<&TextEmbeddingCache>,
    ) -> Result<Self, TaggingError> {
        let fingerprint = model.fingerprint().to_string();
        let cached = cache.and_then(|c| c.load(&fingerprint, &labels.source));
        if let Some(classes) = cached.filter(|c| c.sets.len() == labels.sets.len()) {
            tracing::debug!(labels = %labels.path.display(), "Class embeddings read from cache.");
            return Ok(Self::from_parts(
                classes,
                model.logit_scale(),
                fingerprint,
                ClassEmbeddingSource::Cache,
            ));
        }
        let classes = ClassEmbeddings::build(labels, |prompts| model.get_text_features(prompts))?;
        if let Some(cache) = cache {
            // A read-only cache directory only costs a recomputation next time.
            if let Err(error) = cache.store(&fingerprint, &labels.source, &classes) {
                tracing::warn!(%error, "Could not store class embeddings.");
            }
        }
        Ok(Self::from_parts(
            classes,
            model.logit_scale(),
            fingerprint,
            ClassEmbeddingSource::Computed,
        ))
    }

    /// A tagger over given class embeddings (tests, custom pipelines).
    pub fn from_parts(
        classes: ClassEmbeddings,
        logit_scale: f32,
        model_fingerprint: String,
        source: ClassEmbeddingSource,
    ) -> Self {
        Self {
            classes,
            logit_scale,
            model_fingerprint,
            source,
        }
    }

    /// Scores of every label set for one image embedding.
    pub fn tag(&self, image_embed: ArrayView1<'_, f32>) -> Vec<SetScores> {
        score::score_image(image_embed, &self.classes, self.logit_scale)
    }

    /// The class embeddings in use.
    pub fn class_embeddings(&self) -> &ClassEmbeddings {
        &self.classes
    }

    /// Fingerprint of the model whose embedding space the classes live in.
    pub fn model_fingerprint(&self) -> &str {
        &self.model_fingerprint
    }

    /// Whether the class embeddings came from the cache.
    pub fn source(&self) -> ClassEmbeddingSource {
        self.source
    }
}
