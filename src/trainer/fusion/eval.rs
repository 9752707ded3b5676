//! Text-to-rig retrieval: for each distinct caption of the evaluated
//! samples, where do its rigs rank among all of them? Three rig embeddings
//! are compared: the fusion model's, the normalised mean of the present
//! views (what an untrained model gives), and the anchor view alone.

use std::collections::HashMap;

use serde::Serialize;

use super::super::TrainerError;
use super::super::eval::{Recall, Rows, retrieval_metrics};
use super::data::RigEmbeddings;
use super::model::RigFusion;

/// Text-to-rig recall of the three embeddings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FusionMetrics {
    /// Rigs evaluated.
    pub samples: usize,
    /// Distinct captions (the queries).
    pub captions: usize,
    /// The fusion model.
    pub fused: Recall,
    /// Normalised mean of the present views.
    pub mean: Recall,
    /// The anchor view alone.
    pub anchor: Recall,
    /// The anchor role asked for (`None`: each rig's first present role in
    /// model order).
    pub anchor_role: Option<String>,
}

/// Fused embeddings of samples `idx`, in batches.
pub fn fused_rows(
    model: &RigFusion,
    data: &RigEmbeddings,
    idx: &[usize],
    batch_size: usize,
) -> Result<Rows, TrainerError> {
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, m) = data.batch(chunk, None, model.device())?;
        out.extend(model.forward(&x, &m)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / n).collect()
}

/// Normalised mean of the present views of samples `idx`.
pub fn mean_rows(data: &RigEmbeddings, idx: &[usize]) -> Rows {
    idx.iter()
        .map(|&i| {
            let mut sum = vec![0f32; data.dim];
            let mut n = 0f32;
            for r in 0..data.roles.len() {
                if let Some(e) = data.view(i, r) {
                    sum.iter_mut().zip(e).for_each(|(s, x)| *s += x);
                    n += 1.0;
                }
            }
            unit(sum.into_iter().map(|s| s / n.max(1.0)).collect())
        })
        .collect()
}

/// The anchor view of samples `idx`: role `anchor` where the rig has it,
/// else its first present role in model order.
pub fn anchor_rows(data: &RigEmbeddings, idx: &[usize], anchor: Option<usize>) -> Rows {
    idx.iter()
        .map(|&i| {
            let first = (0..data.roles.len()).find_map(|r| data.view(i, r));
            let e = anchor.and_then(|r| data.view(i, r)).or(first);
            e.map_or_else(|| vec![0.0; data.dim], |e| unit(e.to_vec()))
        })
        .collect()
}

/// Text-to-rig recall of `rows` (one per sample of `idx`).
pub fn text_to_rig(data: &RigEmbeddings, idx: &[usize], rows: &[Vec<f32>]) -> (Recall, usize) {
    // The gallery's captions only, renumbered.
    let mut local: HashMap<usize, usize> = HashMap::new();
    let mut texts = Vec::new();
    let groups: Vec<usize> = idx
        .iter()
        .map(|&i| {
            let g = data.groups[i];
            *local.entry(g).or_insert_with(|| {
                texts.push(data.texts[g].clone());
                texts.len() - 1
            })
        })
        .collect();
    let (_, t2i, _, _) = retrieval_metrics(rows, &texts, &groups);
    (t2i, texts.len())
}

/// All three recalls on samples `idx`.
pub fn evaluate(
    model: &RigFusion,
    data: &RigEmbeddings,
    idx: &[usize],
    anchor: Option<&str>,
    batch_size: usize,
) -> Result<FusionMetrics, TrainerError> {
    let anchor_index = match anchor {
        Some(role) => Some(model.config.role_index(role).ok_or_else(|| {
            TrainerError::Config(format!(
                "anchor '{role}' is not one of the model's roles ({})",
                model.config.roles.join(", ")
            ))
        })?),
        None => None,
    };
    let (fused, captions) = text_to_rig(data, idx, &fused_rows(model, data, idx, batch_size)?);
    let (mean, _) = text_to_rig(data, idx, &mean_rows(data, idx));
    let (anchor_recall, _) = text_to_rig(data, idx, &anchor_rows(data, idx, anchor_index));
    Ok(FusionMetrics {
        samples: idx.len(),
        captions,
        fused,
        mean,
        anchor: anchor_recall,
        anchor_role: anchor.map(str::to_string),
    })
}

/// The metrics as a table.
pub fn table(m: &FusionMetrics) -> String {
    let mut s = format!(
        "text -> rig, {} rigs, {} captions\n{:<24} {:>6} {:>6} {:>6}\n",
        m.samples, m.captions, "embedding", "R@1", "R@5", "R@10"
    );
    let anchor = format!(
        "anchor ({})",
        m.anchor_role.as_deref().unwrap_or("first present")
    );
    for (name, r) in [
        ("fused", &m.fused),
        ("mean", &m.mean),
        (anchor.as_str(), &m.anchor),
    ] {
        s.push_str(&format!(
            "{name:<24} {:>6.3} {:>6.3} {:>6.3}\n",
            r.r1, r.r5, r.r10
        ));
    }
    s
}
