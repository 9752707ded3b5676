//! Zero-shot scoring: cosine similarities to class embeddings, softmax per set.
//!
//! Pure functions over embeddings, no model runs: the class embeddings come
//! from [`super::TextEmbeddingCache`] or the text encoder.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::labels::{LabelSet, LabelSets};

/// L2-normalises a vector (a zero vector stays zero).
pub fn l2_normalize(v: ArrayView1<'_, f32>) -> Array1<f32> {
    let norm = v.dot(&v).sqrt();
    if norm > 0.0 {
        v.mapv(|x| x / norm)
    } else {
        v.to_owned()
    }
}

/// L2-normalises each row.
pub fn l2_normalize_rows(m: ArrayView2<'_, f32>) -> Array2<f32> {
    let mut out = m.to_owned();
    for mut row in out.axis_iter_mut(Axis(0)) {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|x| x / norm);
        }
    }
    out
}

/// Class embedding of a prompt ensemble: mean of the normalised prompt
/// embeddings, renormalised (CLIP paper, §3.1.4).
pub fn ensemble(prompt_embeds: ArrayView2<'_, f32>) -> Array1<f32> {
    let normed = l2_normalize_rows(prompt_embeds);
    let mean = normed
        .mean_axis(Axis(0))
        .expect("an ensemble has at least one prompt");
    l2_normalize(mean.view())
}

/// Numerically stable softmax, accumulated in f64.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// Class embeddings of every label set, ready to score images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassEmbeddings {
    /// Per set, in label-file order.
    pub sets: Vec<SetEmbeddings>,
}

/// Normalised class embeddings of one set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetEmbeddings {
    /// Set name.
    pub name: String,
    /// Class names, in order.
    pub classes: Vec<String>,
    /// One normalised embedding per class (`classes.len()` × dim).
    pub embeddings: Vec<Vec<f32>>,
}

impl ClassEmbeddings {
    /// Builds class embeddings from label sets and a prompt embedder.
    /// `embed` gets all prompts of one class and returns `[n, dim]`.
    pub fn build<E>(
        labels: &LabelSets,
        mut embed: impl FnMut(&[&str]) -> Result<Array2<f32>, E>,
    ) -> Result<Self, E> {
        let mut sets = Vec::with_capacity(labels.sets.len());
        for set in &labels.sets {
            sets.push(Self::build_set(set, &mut embed)?);
        }
        Ok(Self { sets })
    }

    fn build_set<E>(
        set: &LabelSet,
        embed: &mut impl FnMut(&[&str]) -> Result<Array2<f32>, E>,
    ) -> Result<SetEmbeddings, E> {
        let mut embeddings = Vec::with_capacity(set.classes.len());
        for class in &set.classes {
            let prompts = set.class_prompts(class);
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            embeddings.push(ensemble(embed(&refs)?.view()).to_vec());
        }
        Ok(SetEmbeddings {
            name: set.name.clone(),
            classes: set.classes.iter().map(|c| c.name.clone()).collect(),
            embeddings,
        })
    }
}

/// Scores of one label set for one image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetScores {
    /// Set name (`weather`).
    pub set: String,
    /// Highest-scoring class.
    pub top: String,
    /// Probability of the top class.
    pub top_score: f32,
    /// `(class, probability)` for every class, in label-file order; sums to 1.
    pub scores: Vec<(String, f32)>,
}

/// Scores an image embedding against every label set:
/// `softmax(logit_scale * cos(image, class))` within each set.
pub fn score_image(
    image_embed: ArrayView1<'_, f32>,
    classes: &ClassEmbeddings,
    logit_scale: f32,
) -> Vec<SetScores> {
    let image = l2_normalize(image_embed);
    classes
        .sets
        .iter()
        .map(|set| {
            let logits: Vec<f32> = set
                .embeddings
                .iter()
                .map(|c| logit_scale * c.iter().zip(image.iter()).map(|(a, b)| a * b).sum::<f32>())
                .collect();
            let probs = softmax(&logits);
            let (best, &top_score) = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .expect("a label set has at least two classes");
            SetScores {
                set: set.name.clone(),
                top: set.classes[best].clone(),
                top_score,
                scores: set.classes.iter().cloned().zip(probs).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 999.0, 0.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[0] > p[1] && p[1] > p[2]);
        assert!((p[0] / p[1] - std::f32::consts::E).abs() < 1e-3);
    }

    #[test]
    fn ensemble_is_the_normalised_mean_of_normalised_prompts() {
        let e = ensemble(array![[2.0f32, 0.0], [0.0, 10.0]].view());
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((e[0] - s).abs() < 1e-6 && (e[1] - s).abs() < 1e-6);
    }

    #[test]
    fn picks_the_closest_class_and_scales_by_logit_scale() {
        let classes = ClassEmbeddings {
            sets: vec![SetEmbeddings {
                name: "axis".into(),
                classes: vec!["x".into(), "y".into()],
                embeddings: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            }],
        };
        let s = score_image(array![3.0f32, 1.0].view(), &classes, 100.0);
        assert_eq!(s[0].top, "x");
        let cos_x = 3.0 / 10f32.sqrt();
        let cos_y = 1.0 / 10f32.sqrt();
        let expect = 1.0 / (1.0 + (100.0 * (cos_y - cos_x)).exp());
        assert!((s[0].top_score - expect).abs() < 1e-6);
        let flat = score_image(array![3.0f32, 1.0].view(), &classes, 1.0);
        assert!(flat[0].top_score < s[0].top_score);
    }
}
