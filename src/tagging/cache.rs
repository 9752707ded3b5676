//! On-disk cache of class text embeddings.
//!
//! Embedding every prompt of every label set costs a text-encoder run per
//! prompt (about a hundred for the shipped labels). The result depends only
//! on the model's embedding space and the label file's content, so it is
//! keyed by the model fingerprint and the sha256 of the file, and reused
//! across starts. Writes go through a temporary file and a rename, so a
//! crash never leaves a half-written entry.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::TaggingError;
use super::score::ClassEmbeddings;

/// Bumped when the cached format or the ensembling rule changes.
const CACHE_VERSION: u32 = 1;

/// Directory of cached class embeddings.
#[derive(Debug, Clone)]
pub struct TextEmbeddingCache {
    dir: PathBuf,
}

impl TextEmbeddingCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$XDG_CACHE_HOME/roadrep` or `~/.cache/roadrep`, else a temp dir.
    pub fn default_dir() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("roadrep");
        }
        if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(h).join(".cache").join("roadrep");
        }
        std::env::temp_dir().join("roadrep-cache")
    }

    /// The file an entry lives in.
    pub fn entry_path(&self, model_fingerprint: &str, labels_source: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(format!(
            "v{CACHE_VERSION}\nmodel={model_fingerprint}\nlabels="
        ));
        h.update(labels_source.as_bytes());
        self.dir.join(format!(
            "text-embeddings-{}.json",
            &hex::encode(h.finalize())[..32]
        ))
    }

    /// A cached entry, if present and readable. A corrupt entry is treated
    /// as missing (and overwritten by the next store).
    pub fn load(&self, model_fingerprint: &str, labels_source: &str) -> Option<ClassEmbeddings> {
        let path = self.entry_path(model_fingerprint, labels_source);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "Ignoring corrupt text-embedding cache entry.");
                None
            }
        }
    }

    /// Stores an entry atomically.
    pub fn store(
        &self,
        model_fingerprint: &str,
        labels_source: &str,
        value: &ClassEmbeddings,
    ) -> Result<PathBuf, TaggingError> {
        let path = self.entry_path(model_fingerprint, labels_source);
        let io = |p: &Path, e: std::io::Error| TaggingError::Cache {
            path: p.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let json = serde_json::to_vec(value).map_err(|e| TaggingError::Cache {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, json).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tagging::score::SetEmbeddings;

    fn value() -> ClassEmbeddings {
        ClassEmbeddings {
            sets: vec![SetEmbeddings {
                name: "s".into(),
                classes: vec!["a".into()],
                embeddings: vec![vec![0.5, -0.25]],
            }],
        }
    }

    #[test]
    fn round_trips_and_keys_on_model_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TextEmbeddingCache::new(dir.path());
        assert!(cache.load("fp1", "labels").is_none());
        cache.store("fp1", "labels", &value()).unwrap();
        assert_eq!(cache.load("fp1", "labels"), Some(value()));
        assert!(
            cache.load("fp2", "labels").is_none(),
            "another model must miss"
        );
        assert!(
            cache.load("fp1", "labels changed").is_none(),
            "edited labels must miss"
        );
    }

    #[test]
    fn corrupt_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TextEmbeddingCache::new(dir.path());
        let path = cache.store("fp", "l", &value()).unwrap();
        std::fs::write(&path, b"{ truncated").unwrap();
        assert!(cache.load("fp", "l").is_none());
    }
}
