//! Rig samples and their frozen CLIP embeddings.
//!
//! Manifest (JSONL, image paths relative to its folder; a role may be
//! missing, an unknown role is an error):
//! ```text
//! {"views": {"front": "r1/front.jpg", "back": "r1/back.jpg"}, "caption": "..."}
//! ```
//! CLIP stays frozen, so every image and caption is embedded once with the
//! daemon's ONNX encoders and kept in a [`EmbeddingCache`], keyed by the
//! image's path, size and modification time (a caption by its text). An
//! epoch then costs only the fusion model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::super::TrainerError;
use super::super::dataset::OnBadRecord;
use super::cache::EmbeddingCache;
use crate::ingest::still;
use crate::models::{ClipModel, RgbFrame};

/// One rig sample of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct RigRecord {
    /// Image per role.
    pub views: BTreeMap<String, PathBuf>,
    /// The caption of the whole rig.
    pub caption: String,
    /// Manifest and 1-based line.
    pub origin: (PathBuf, usize),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    views: BTreeMap<String, String>,
    caption: String,
}

/// Reads a rig manifest; `roles` are the model's (any other is an error).
pub fn read_rigs(path: &Path, roles: &[String]) -> Result<Vec<RigRecord>, TrainerError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| TrainerError::Dataset {
            path: path.to_path_buf(),
            line: Some(i + 1),
            message,
        };
        let r: Line = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        if r.caption.trim().is_empty() {
            return Err(err("empty caption".into()));
        }
        if r.views.is_empty() {
            return Err(err("no views".into()));
        }
        let mut views = BTreeMap::new();
        for (role, image) in r.views {
            if !roles.contains(&role) {
                return Err(err(format!(
                    "role '{role}' is not one of the model's ({})",
                    roles.join(", ")
                )));
            }
            if image.trim().is_empty() {
                return Err(err(format!("role '{role}' has an empty path")));
            }
            views.insert(role, dir.join(image.trim()));
        }
        out.push(RigRecord {
            views,
            caption: r.caption.trim().to_string(),
            origin: (path.to_path_buf(), i + 1),
        });
    }
    Ok(out)
}

/// Embeddings of usable rigs: per sample `V` views of `D` values (zeros
/// where absent), presence, caption group; per group its text embedding.
/// Every embedding is L2-normalised, as the daemon stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct RigEmbeddings {
    /// Roles in model order.
    pub roles: Vec<String>,
    /// Embedding width.
    pub dim: usize,
    /// `[n, V, D]` row-major.
    pub views: Vec<f32>,
    /// `[n, V]`: 1 present, 0 absent.
    pub present: Vec<f32>,
    /// Caption group per sample (equal captions share one).
    pub groups: Vec<usize>,
    /// Caption per group.
    pub captions: Vec<String>,
    /// `[groups, D]` caption embeddings.
    pub texts: Vec<Vec<f32>>,
    /// Records left out (message with file and line).
    pub skipped: Vec<String>,
}

impl RigEmbeddings {
    /// Samples.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The view embedding of sample `i`, role `r`, if present.
    pub fn view(&self, i: usize, r: usize) -> Option<&[f32]> {
        let v = self.roles.len();
        (self.present[i * v + r] > 0.0)
            .then(|| &self.views[(i * v + r) * self.dim..(i * v + r + 1) * self.dim])
    }

    /// `[n, V, D]` views and `[n, V]` presence of samples `idx`; `present`
    /// replaces the presence (view dropout), absent views read as zeros.
    pub fn batch(
        &self,
        idx: &[usize],
        present: Option<Vec<f32>>,
        device: &candle_core::Device,
    ) -> Result<(candle_core::Tensor, candle_core::Tensor), TrainerError> {
        let (v, d) = (self.roles.len(), self.dim);
        let m = present.unwrap_or_else(|| {
            idx.iter()
                .flat_map(|&i| self.present[i * v..(i + 1) * v].iter().copied())
                .collect()
        });
        let mut x = Vec::with_capacity(idx.len() * v * d);
        for (b, &i) in idx.iter().enumerate() {
            for r in 0..v {
                if m[b * v + r] > 0.0 {
                    x.extend_from_slice(&self.views[(i * v + r) * d..(i * v + r + 1) * d]);
                } else {
                    x.extend(std::iter::repeat_n(0.0, d));
                }
            }
        }
        Ok((
            candle_core::Tensor::from_vec(x, (idx.len(), v, d), device)?,
            candle_core::Tensor::from_vec(m, (idx.len(), v), device)?,
        ))
    }

    /// Groups samples from per-sample views (`None` = absent) and captions;
    /// `text` embeds a caption (already normalised or not: rows are
    /// normalised here).
    pub fn from_parts(
        roles: Vec<String>,
        dim: usize,
        samples: Vec<(Vec<Option<Vec<f32>>>, String)>,
        mut text: impl FnMut(&[String]) -> Result<Vec<Vec<f32>>, TrainerError>,
    ) -> Result<Self, TrainerError> {
        let v = roles.len();
        let mut out = Self {
            roles,
            dim,
            views: Vec::with_capacity(samples.len() * v * dim),
            present: Vec::with_capacity(samples.len() * v),
            groups: Vec::new(),
            captions: Vec::new(),
            texts: Vec::new(),
            skipped: Vec::new(),
        };
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (views, caption) in samples {
            for e in views {
                match e {
                    Some(e) => {
                        out.views.extend(l2_normalised(&e));
                        out.present.push(1.0);
                    }
                    None => {
                        out.views.extend(std::iter::repeat_n(0.0, dim));
                        out.present.push(0.0);
                    }
                }
            }
            let n = ids.len();
            let g = *ids.entry(caption.clone()).or_insert_with(|| {
                out.captions.push(caption);
                n
            });
            out.groups.push(g);
        }
        out.texts = text(&out.captions)?
            .iter()
            .map(|t| l2_normalised(t))
            .collect();
        Ok(out)
    }
}

fn l2_normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

/// Cache key of an image: its canonical path, size and modification time
/// (a rewritten file is embedded again).
fn image_key(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let canonical = path.canonicalize()?;
    Ok(format!(
        "img\0{}\0{}\0{mtime}",
        canonical.display(),
        meta.len()
    ))
}

/// Images embedded per ONNX run.
const IMAGE_BATCH: usize = 16;

/// Embeds every rig of `records` (images and captions) with `clip`, through
/// `cache`. A rig with a missing or corrupt image is an error naming its
/// line, returned or skipped according to `on_bad`.
pub fn embed_rigs(
    clip: &ClipModel,
    records: &[RigRecord],
    roles: &[String],
    cache: &mut EmbeddingCache,
    on_bad: OnBadRecord,
) -> Result<RigEmbeddings, TrainerError> {
    let dim = clip.embed_dim();
    // Per record: role -> cache key, or why its image is unusable.
    let mut keys: Vec<BTreeMap<String, Result<String, String>>> = Vec::new();
    let mut todo: Vec<(String, &Path)> = Vec::new();
    let mut queued = std::collections::HashSet::new();
    for rec in records {
        let mut k = BTreeMap::new();
        for (role, path) in &rec.views {
            let key = image_key(path).map_err(|e| format!("'{}': {e}", path.display()));
            if let Ok(key) = &key
                && cache.get(key).is_none()
                && queued.insert(key.clone())
            {
                todo.push((key.clone(), path));
            }
            k.insert(role.clone(), key);
        }
        keys.push(k);
    }
    let mut failed: HashMap<String, String> = HashMap::new();
    let total = todo.len();
    for (n, chunk) in todo.chunks(IMAGE_BATCH).enumerate() {
        let mut images = Vec::new();
        let mut batch_keys = Vec::new();
        for (key, path) in chunk {
            match still::decode_file(path) {
                Ok(img) => {
                    images.push(img);
                    batch_keys.push(key.clone());
                }
                Err(e) => {
                    failed.insert(key.clone(), e.to_string());
                }
            }
        }
        let frames: Vec<RgbFrame<'_>> = images.iter().map(RgbFrame::from_image).collect();
        let emb = clip.embed_frames(&frames)?;
        for (key, row) in batch_keys.into_iter().zip(emb.rows()) {
            cache.put(key, row.to_vec())?;
        }
        tracing::debug!(
            done = ((n + 1) * IMAGE_BATCH).min(total),
            total,
            "Images embedded."
        );
    }
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    for (rec, k) in records.iter().zip(&keys) {
        let mut views = Vec::with_capacity(roles.len());
        let mut problem = None;
        for role in roles {
            views.push(match k.get(role) {
                None => None,
                Some(Err(e)) => {
                    problem.get_or_insert_with(|| e.clone());
                    None
                }
                Some(Ok(key)) => match (cache.get(key), failed.get(key)) {
                    (Some(e), _) => Some(e.clone()),
                    (None, e) => {
                        problem.get_or_insert_with(|| {
                            e.cloned().unwrap_or_else(|| "image not embedded".into())
                        });
                        None
                    }
                },
            });
        }
        if let Some(message) = problem {
            let error = TrainerError::Dataset {
                path: rec.origin.0.clone(),
                line: Some(rec.origin.1),
                message,
            };
            match on_bad {
                OnBadRecord::Fail => return Err(error),
                OnBadRecord::Skip => {
                    tracing::warn!(%error, "Rig skipped.");
                    skipped.push(error.to_string());
                    continue;
                }
            }
        }
        samples.push((views, rec.caption.clone()));
    }
    let mut out = RigEmbeddings::from_parts(roles.to_vec(), dim, samples, |captions| {
        embed_texts(clip, captions, cache)
    })?;
    out.skipped = skipped;
    Ok(out)
}

/// Caption embeddings through the cache.
fn embed_texts(
    clip: &ClipModel,
    captions: &[String],
    cache: &mut EmbeddingCache,
) -> Result<Vec<Vec<f32>>, TrainerError> {
    let key = |c: &str| format!("txt\0{c}");
    let missing: Vec<&str> = captions
        .iter()
        .filter(|c| cache.get(&key(c)).is_none())
        .map(String::as_str)
        .collect();
    for chunk in missing.chunks(64) {
        let emb = clip.get_text_features(chunk)?;
        for (c, row) in chunk.iter().zip(emb.rows()) {
            cache.put(key(c), row.to_vec())?;
        }
    }
    captions
        .iter()
        .map(|c| {
            cache
                .get(&key(c))
                .cloned()
                .ok_or_else(|| TrainerError::Config(format!("caption '{c}' was not embedded")))
        })
        .collect()
}
