//! The rig fusion model over ONNX Runtime.
//!
//! - Design: design.md §6; the same idea as the gated pooling over six views
//!   of EM-VLM4AD, with attention pooling as in Set Transformer's PMA (Lee et
//!   al., <https://arxiv.org/abs/1810.00825>).
//! - Reference: `RigFusion` in `models/fusion.py` (PyTorch); no pretrained
//!   checkpoint: the trainer makes them.
//! - Export: `models/export.py --fusion`, ONNX opset 17, legacy exporter
//!   (initializer names are the parameter names).
//!
//! Per-view CLIP image embeddings plus learned role embeddings go through a
//! shallow pre-norm transformer whose attention ignores absent views, are
//! pooled by attention over the present views, and added through a
//! `tanh(gate)` residual to the mean of the present views. The gate starts
//! at 0, so an untrained model gives exactly [`mean_of_views`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::{Array2, Array3, Ix2};
use ort::session::Session;
use ort::value::TensorRef;

use super::manifest::{FusionConfig, FusionManifest, roles};
use crate::models::clip::open_checked;
use crate::models::verified::VerifiedFiles;
use crate::models::{ModelError, OrtRuntime};

/// Input: `[batch, roles, embed_dim]` float32, L2-normalised CLIP image
/// embeddings; absent slots may hold anything finite (we write zeros).
pub const VIEW_EMBEDDINGS: &str = "view_embeddings";
/// Input: `[batch, roles]` float32, 1 for a present view, 0 for an absent one.
pub const VIEW_PRESENT: &str = "view_present";
/// Output: `[batch, embed_dim]` float32, L2-normalised.
pub const FUSED_EMBEDDING: &str = "fused_embedding";

/// Records per ONNX Runtime run: bounds the input tensor (64 x 6 x 512
/// floats = 786 kB) while amortising the per-run overhead.
pub const MAX_BATCH: usize = 64;

/// How to open a fusion model directory.
#[derive(Debug, Clone)]
pub struct FusionOptions {
    /// ONNX Runtime intra-op threads of the session.
    pub intra_threads: usize,
    /// Cache directory whose record of verified files spares hashing files
    /// unchanged since (`crate::models::verified`); `None`: hash every open.
    pub verified_files_dir: Option<PathBuf>,
}

impl Default for FusionOptions {
    /// One thread: the model is small (4.5 M parameters at D = 512) and runs
    /// beside the CLIP encoder, which has the cores.
    fn default() -> Self {
        Self {
            intra_threads: 1,
            verified_files_dir: None,
        }
    }
}

/// A loaded fusion model directory. `Send + Sync`: runs on the one session
/// are serialised behind a mutex.
pub struct FusionModel {
    dir: PathBuf,
    manifest: FusionManifest,
    config: FusionConfig,
    path: PathBuf,
    session: Mutex<Session>,
}

impl std::fmt::Debug for FusionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusionModel")
            .field("dir", &self.dir)
            .field("name", &self.manifest.name)
            .field("roles", &self.manifest.fusion.roles)
            .finish()
    }
}

impl FusionModel {
    /// Verifies `dir` against its manifest and opens its session, on the
    /// process's ONNX Runtime (the one already loaded, else the library
    /// `$ORT_DYLIB_PATH` or `make setup` names; see [`OrtRuntime::load`]).
    pub fn open(dir: &Path, options: &FusionOptions) -> Result<Self, ModelError> {
        Self::open_with(dir, &OrtRuntime::load(None)?, options)
    }

    /// As [`FusionModel::open`], on a given runtime.
    pub fn open_with(
        dir: &Path,
        runtime: &OrtRuntime,
        options: &FusionOptions,
    ) -> Result<Self, ModelError> {
        let verified = options
            .verified_files_dir
            .as_deref()
            .map(VerifiedFiles::open);
        let (manifest, config) = FusionManifest::read_verified(dir, verified.as_ref())?;
        let v = manifest.fusion.roles.len() as i64;
        let d = manifest.fusion.embed_dim as i64;
        let (path, session) = open_checked(
            runtime,
            dir,
            manifest.file(dir, roles::FUSION)?,
            options.intra_threads,
            &[
                (VIEW_EMBEDDINGS, "float32", vec![None, Some(v), Some(d)]),
                (VIEW_PRESENT, "float32", vec![None, Some(v)]),
            ],
            &[(FUSED_EMBEDDING, "float32", vec![None, Some(d)])],
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            config,
            path,
            session: Mutex::new(session),
        })
    }

    /// Errors (naming both fingerprints and the directory) if this model was
    /// made for another CLIP model: its output would be in another space.
    pub fn check_clip(&self, clip_fingerprint: &str) -> Result<(), ModelError> {
        let expected = &self.manifest.fusion.clip_fingerprint;
        if expected.eq_ignore_ascii_case(clip_fingerprint) {
            return Ok(());
        }
        Err(ModelError::ClipMismatch {
            dir: self.dir.clone(),
            expected: expected.clone(),
            actual: clip_fingerprint.to_string(),
        })
    }

    /// Camera roles in model slot order.
    pub fn roles(&self) -> &[String] {
        &self.manifest.fusion.roles
    }

    /// The slot of a role, if the model has it.
    pub fn role_slot(&self, role: &str) -> Option<usize> {
        self.roles().iter().position(|r| r == role)
    }

    /// Dimension of the view embeddings in and the fused embedding out.
    pub fn embed_dim(&self) -> usize {
        self.manifest.fusion.embed_dim
    }

    /// Identity of this fusion model.
    pub fn fingerprint(&self) -> &str {
        &self.manifest.fingerprint
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &FusionManifest {
        &self.manifest
    }

    /// The architecture (`config.json`).
    pub fn config(&self) -> &FusionConfig {
        &self.config
    }

    /// One fused, L2-normalised embedding per record; `records[i][slot]` is
    /// the view in model role slot `slot` (`len == roles().len()`), `None`
    /// = absent. Every record is checked before anything runs; runs in
    /// chunks of at most [`MAX_BATCH`] records.
    pub fn fuse(&self, records: &[Vec<Option<&[f32]>>]) -> Result<Vec<Vec<f32>>, ModelError> {
        for (i, record) in records.iter().enumerate() {
            self.check_record(i, record)?;
        }
        let mut out = Vec::with_capacity(records.len());
        for chunk in records.chunks(MAX_BATCH) {
            out.extend(self.run(chunk)?);
        }
        Ok(out)
    }

    fn check_record(&self, i: usize, record: &[Option<&[f32]>]) -> Result<(), ModelError> {
        let fail = |message: String| ModelError::Input {
            path: self.path.clone(),
            message: format!("record {i}: {message}"),
        };
        let roles = self.roles();
        if record.len() != roles.len() {
            return Err(fail(format!(
                "{} view slots, the model has {} ({})",
                record.len(),
                roles.len(),
                roles.join(", ")
            )));
        }
        if record.iter().all(Option::is_none) {
            return Err(fail("no view present".into()));
        }
        for (slot, view) in record.iter().enumerate() {
            if let Some(view) = view
                && view.len() != self.embed_dim()
            {
                return Err(fail(format!(
                    "the {} view has {} values, expected {}",
                    roles[slot],
                    view.len(),
                    self.embed_dim()
                )));
            }
        }
        Ok(())
    }

    /// One ONNX Runtime run over checked records.
    fn run(&self, records: &[Vec<Option<&[f32]>>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _span = tracing::trace_span!("fusion", batch = records.len()).entered();
        let (v, d) = (self.roles().len(), self.embed_dim());
        // Absent slots are zeros: finite, and masked inside the graph anyway.
        let mut views = Array3::<f32>::zeros((records.len(), v, d));
        let mut present = Array2::<f32>::zeros((records.len(), v));
        for (i, record) in records.iter().enumerate() {
            for (slot, view) in record.iter().enumerate() {
                if let Some(view) = view {
                    views
                        .slice_mut(ndarray::s![i, slot, ..])
                        .assign(&ndarray::ArrayView1::from(*view));
                    present[[i, slot]] = 1.0;
                }
            }
        }
        let err = |e: ort::Error| ModelError::Ort {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let views_in = TensorRef::from_array_view(views.view()).map_err(err)?;
        let present_in = TensorRef::from_array_view(present.view()).map_err(err)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![VIEW_EMBEDDINGS => views_in, VIEW_PRESENT => present_in])
            .map_err(err)?;
        let fused = outputs[FUSED_EMBEDDING]
            .try_extract_array::<f32>()
            .map_err(err)?
            .into_dimensionality::<Ix2>()
            .map_err(|e| ModelError::Ort {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        if fused.shape() != [records.len(), d] {
            return Err(ModelError::Ort {
                path: self.path.clone(),
                message: format!(
                    "output shape {:?}, expected [{}, {d}]",
                    fused.shape(),
                    records.len()
                ),
            });
        }
        Ok(fused.rows().into_iter().map(|r| r.to_vec()).collect())
    }
}

/// The normalised mean of the present views: what an untrained fusion model
/// gives (the fallback when no fusion model is configured). `None` if no
/// view is present or the present views differ in length.
pub fn mean_of_views(views: &[Option<&[f32]>]) -> Option<Vec<f32>> {
    let mut present = views.iter().flatten();
    let first = present.next()?;
    let mut sum = first.to_vec();
    for view in present {
        if view.len() != sum.len() {
            return None;
        }
        sum.iter_mut().zip(view.iter()).for_each(|(s, x)| *s += x);
    }
    // The graph divides by the count first; after normalising the two agree.
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|x| *x /= norm);
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_views_normalises_the_present_views_only() {
        let a = [1.0f32, 0.0, 0.0];
        let b = [0.0f32, 1.0, 0.0];
        let m = mean_of_views(&[Some(&a), None, Some(&b)]).unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            m.iter().zip([h, h, 0.0]).all(|(x, y)| (x - y).abs() < 1e-7),
            "{m:?}"
        );
        assert_eq!(mean_of_views(&[Some(&a)]).unwrap(), a.to_vec());
        assert_eq!(mean_of_views(&[None, None]), None);
        assert_eq!(mean_of_views(&[]), None);
        assert_eq!(mean_of_views(&[Some(&a), Some(&a[..2])]), None);
        // Opposite views cancel: no NaN, a zero vector.
        let c = [-1.0f32, 0.0, 0.0];
        assert_eq!(mean_of_views(&[Some(&a), Some(&c)]).unwrap(), vec![0.0; 3]);
    }
}
