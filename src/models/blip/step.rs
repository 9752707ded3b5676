//! The text decoder's state over one decoding loop: the images' cross K/V,
//! which rows decode which image, and the self-attention cache. It runs
//! `text_decoder.onnx` (or its INT8 derivative) one step at a time for
//! [`crate::caption::decode`].

use std::borrow::Cow;
use std::path::Path;

use ndarray::{Array2, ArrayD, Axis, IxDyn};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use super::{BlipSection, CROSS_KV, INPUT_IDS, LOGITS, PAST, PRESENT};
use crate::caption::CaptionError;
use crate::caption::decode::StepModel;
use crate::models::ModelError;

/// The decoder state of one decoding loop: the images' cross K/V and the
/// growing self-attention cache of every row.
pub(super) struct DecoderState<'a, S: std::ops::DerefMut<Target = Session>> {
    session: S,
    path: &'a Path,
    /// `[L, 2, images, H, T, Dh]`.
    cross_kv: ArrayD<f32>,
    /// The graph's per-layer cross K/V inputs (`cross_k.0`, `cross_v.0`,
    /// `cross_k.1`, ...) when it takes them so (the derived INT8 decoder);
    /// `None`: one `cross_kv` input.
    cross_inputs: Option<&'a [String]>,
    /// Image of each decoder row (index on `cross_kv`'s batch axis); empty
    /// before the first call, whose rows are the images in order.
    row_image: Vec<usize>,
    /// `cross_kv` gathered per row, when the rows are neither the images
    /// in order nor all of one single image (whose cross K/V the graph
    /// broadcasts): beams of several images, or images left after others
    /// finished. Rebuilt only when the row-to-image map changes.
    gathered: Option<ArrayD<f32>>,
    past: Option<ArrayD<f32>>,
    shape: &'a BlipSection,
}

impl<'a, S: std::ops::DerefMut<Target = Session>> DecoderState<'a, S> {
    /// A state before the first step: `cross_kv` `[L, 2, images, H, T, Dh]`.
    pub(super) fn new(
        session: S,
        path: &'a Path,
        cross_kv: ArrayD<f32>,
        cross_inputs: Option<&'a [String]>,
        shape: &'a BlipSection,
    ) -> Self {
        Self {
            session,
            path,
            cross_kv,
            cross_inputs,
            row_image: Vec::new(),
            gathered: None,
            past: None,
            shape,
        }
    }
}

/// Names of the per-layer cross K/V inputs of a decoder with `layers`
/// layers (models/modeldir.py `split_cross_kv_input`), layer by layer, K
/// then V.
pub(super) fn cross_input_names(layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|i| [format!("cross_k.{i}"), format!("cross_v.{i}")])
        .collect()
}

/// The cross K/V to feed for the current rows (`row_image` is filled with
/// the images in order on the first call).
fn cross_for_rows<'c>(
    cross_kv: &'c ArrayD<f32>,
    row_image: &mut Vec<usize>,
    gathered: &'c mut Option<ArrayD<f32>>,
    rows: usize,
) -> &'c ArrayD<f32> {
    if row_image.is_empty() {
        *row_image = (0..rows).collect();
    }
    let images = cross_kv.shape()[2];
    let in_order = row_image.iter().copied().eq(0..images);
    let one_image = images == 1 && row_image.iter().all(|&i| i == 0);
    if in_order || one_image {
        return cross_kv;
    }
    gathered.get_or_insert_with(|| {
        // Standard layout: the graph inputs are views of it.
        let picked = cross_kv.select(Axis(2), row_image);
        if picked.is_standard_layout() {
            picked
        } else {
            picked.as_standard_layout().into_owned()
        }
    })
}

impl<S: std::ops::DerefMut<Target = Session>> StepModel for DecoderState<'_, S> {
    fn forward(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, CaptionError> {
        let path = self.path;
        let err = |e: ort::Error| ModelError::Ort {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let n = rows.len();
        let new = rows.first().map_or(0, |r| r.len());
        let mut ids = Array2::<i64>::zeros((n, new));
        for (i, row) in rows.iter().enumerate() {
            for (j, &t) in row.iter().enumerate() {
                ids[[i, j]] = t as i64;
            }
        }
        let past = match self.past.take() {
            Some(p) => p,
            None => ArrayD::zeros(IxDyn(&[
                self.shape.num_layers,
                2,
                n,
                self.shape.num_heads,
                0,
                self.shape.head_dim,
            ])),
        };
        let outputs = {
            let ids_in = TensorRef::from_array_view(ids.view()).map_err(err)?;
            let past_in = TensorRef::from_array_view(past.view()).map_err(err)?;
            let cross = cross_for_rows(&self.cross_kv, &mut self.row_image, &mut self.gathered, n);
            let mut inputs = ort::inputs![INPUT_IDS => ids_in, PAST => past_in];
            match self.cross_inputs {
                // Views of the one buffer, layer by layer: nothing is copied.
                Some(names) => {
                    for (k, name) in names.iter().enumerate() {
                        let view = cross
                            .index_axis(Axis(0), k / 2)
                            .index_axis_move(Axis(0), k % 2);
                        let value = TensorRef::from_array_view(view).map_err(err)?;
                        inputs.push((Cow::from(name.as_str()), SessionInputValue::from(value)));
                    }
                }
                None => {
                    let value = TensorRef::from_array_view(cross.view()).map_err(err)?;
                    inputs.push((Cow::from(CROSS_KV), SessionInputValue::from(value)));
                }
            }
            self.session.run(inputs).map_err(err)?
        };
        let logits = outputs[LOGITS].try_extract_array::<f32>().map_err(err)?;
        let rows_out = logits
            .axis_iter(Axis(0))
            .map(|r| r.iter().copied().collect())
            .collect();
        self.past = Some(
            outputs[PRESENT]
                .try_extract_array::<f32>()
                .map_err(err)?
                .as_standard_layout()
                .into_owned(),
        );
        Ok(rows_out)
    }

    fn select(&mut self, from: &[usize]) -> Result<(), CaptionError> {
        let row_image: Vec<usize> = from
            .iter()
            .map(|&r| self.row_image.get(r).copied().unwrap_or(r))
            .collect();
        if row_image != self.row_image {
            self.row_image = row_image;
            self.gathered = None;
        }
        if let Some(past) = &self.past {
            // `select` copies; only a non-standard result needs a second copy.
            let picked = past.select(Axis(2), from);
            self.past = Some(if picked.is_standard_layout() {
                picked
            } else {
                picked.as_standard_layout().into_owned()
            });
        }
        Ok(())
    }
}
