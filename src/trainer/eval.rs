//! Evaluation: retrieval recall@k both ways, zero-shot accuracy per label
//! set, the mean cosine of matched pairs and its spread (the RoadRep metric),
//! and BLEU-1..4 of captions against references.
//!
//! Captions that repeat (template captions) form one gallery entry: an image
//! retrieves its caption when any copy ranks in the top k, and a caption
//! retrieves any of its images.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::TrainerError;
use super::clip::{CandleClip, Forward, normalize_rows};
use super::lora::LoraAdapter;
use super::tokens::ClipTokenizer;
use super::train::Batcher;
use crate::tagging::LabelSets;
use crate::tagging::score::ensemble;

/// Recall at 1, 5 and 10.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Recall {
    /// Fraction of queries whose match ranks first.
    pub r1: f64,
    /// ... in the top 5.
    pub r5: f64,
    /// ... in the top 10.
    pub r10: f64,
}

/// Zero-shot result of one label set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ZeroShot {
    /// Images whose top class is their label.
    pub correct: usize,
    /// Images with a label in this set.
    pub total: usize,
    /// `correct / total`.
    pub accuracy: f64,
}

/// Every metric of one model on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Images evaluated.
    pub samples: usize,
    /// Distinct captions (the text gallery).
    pub captions: usize,
    /// Image -> caption retrieval.
    pub image_to_text: Recall,
    /// Caption -> image retrieval.
    pub text_to_image: Recall,
    /// Mean cosine of each image with its own caption.
    pub matched_cosine_mean: f64,
    /// Standard deviation of those cosines.
    pub matched_cosine_std: f64,
    /// Per label set (sets without labelled images are left out).
    pub zero_shot: BTreeMap<String, ZeroShot>,
}

/// Embeddings, one row per item.
pub type Rows = Vec<Vec<f32>>;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fraction of queries (rows of `scores`) whose best positive ranks within
/// the top `k` (ties count in the query's favour).
pub fn recall_at_k(scores: &[Vec<f32>], positive: impl Fn(usize, usize) -> bool, k: usize) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let hits = scores
        .iter()
        .enumerate()
        .filter(|(q, row)| {
            let best = row
                .iter()
                .enumerate()
                .filter(|(g, _)| positive(*q, *g))
                .map(|(_, s)| *s)
                .fold(f32::NEG_INFINITY, f32::max);
            best > f32::NEG_INFINITY && row.iter().filter(|&&s| s > best).count() < k
        })
        .count();
    hits as f64 / scores.len() as f64
}

/// Mean and population standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Retrieval and cosine metrics from normalised embeddings: `images[i]`
/// belongs to caption group `groups[i]`, `texts[g]` is group `g`'s caption.
pub fn retrieval_metrics(
    images: &[Vec<f32>],
    texts: &[Vec<f32>],
    groups: &[usize],
) -> (Recall, Recall, f64, f64) {
    let i2t: Vec<Vec<f32>> = images
        .iter()
        .map(|im| texts.iter().map(|t| dot(im, t)).collect())
        .collect();
    let t2i: Vec<Vec<f32>> = (0..texts.len())
        .map(|g| i2t.iter().map(|row| row[g]).collect())
        .collect();
    let recall = |scores: &[Vec<f32>], pos: &dyn Fn(usize, usize) -> bool| Recall {
        r1: recall_at_k(scores, pos, 1),
        r5: recall_at_k(scores, pos, 5),
        r10: recall_at_k(scores, pos, 10),
    };
    let a = recall(&i2t, &|q, g| groups[q] == g);
    let b = recall(&t2i, &|g, i| groups[i] == g);
    let cos: Vec<f64> = images
        .iter()
        .zip(groups)
        .map(|(im, &g)| dot(im, &texts[g]) as f64)
        .collect();
    let (mean, std) = mean_std(&cos);
    (a, b, mean, std)
}

/// Normalised image embeddings of every sample and text embeddings of every
/// caption group.
pub fn embed(
    model: &CandleClip,
    adapter: Option<&LoraAdapter>,
    batcher: &Batcher<'_>,
    batch_size: usize,
) -> Result<(Rows, Rows), TrainerError> {
    let fwd = Forward {
        adapter,
        dropout: None,
    };
    let n = batcher.groups.len();
    let idx: Vec<usize> = (0..n).collect();
    let mut images = Vec::with_capacity(n);
    for chunk in idx.chunks(batch_size.max(1)) {
        let px = batcher.pixels(chunk, &Default::default(), None)?;
        images.extend(normalize_rows(&model.get_image_features(&px, fwd)?)?.to_vec2::<f32>()?);
    }
    let n_groups = batcher.groups.iter().max().map_or(0, |m| m + 1);
    let mut first = vec![usize::MAX; n_groups];
    for (i, &g) in batcher.groups.iter().enumerate() {
        if first[g] == usize::MAX {
            first[g] = i;
        }
    }
    let mut texts = Vec::with_capacity(n_groups);
    for chunk in first.chunks(batch_size.max(1)) {
        let ids = batcher.ids(chunk)?;
        texts.extend(normalize_rows(&model.get_text_features(&ids, fwd)?)?.to_vec2::<f32>()?);
    }
    Ok((images, texts))
}

/// Zero-shot accuracy of normalised image embeddings against label sets,
/// for the samples that carry a label of the set. Class embeddings are
/// prompt ensembles, as the daemon's tagger builds them.
pub fn zero_shot(
    model: &CandleClip,
    adapter: Option<&LoraAdapter>,
    tokenizer: &ClipTokenizer,
    labels: &LabelSets,
    images: &[Vec<f32>],
    sample_labels: &[&BTreeMap<String, String>],
) -> Result<BTreeMap<String, ZeroShot>, TrainerError> {
    let fwd = Forward {
        adapter,
        dropout: None,
    };
    let device = model.base.device();
    let mut out = BTreeMap::new();
    for set in &labels.sets {
        let labelled: Vec<(usize, usize)> = sample_labels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let class = l.get(&set.name)?;
                let c = set.classes.iter().position(|c| &c.name == class)?;
                Some((i, c))
            })
            .collect();
        if labelled.is_empty() {
            continue;
        }
        let mut classes = Vec::with_capacity(set.classes.len());
        for class in &set.classes {
            let prompts = set.class_prompts(class);
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            let emb = model.get_text_features(&tokenizer.batch_texts(&refs, device)?, fwd)?;
            let rows = emb.to_vec2::<f32>()?;
            if rows.is_empty() {
                return Err(TrainerError::Config(format!(
                    "label set '{}': class '{}' has no prompts",
                    set.name, class.name
                )));
            }
            let arr =
                ndarray::Array2::from_shape_fn((rows.len(), rows[0].len()), |(i, j)| rows[i][j]);
            classes.push(ensemble(arr.view()).to_vec());
        }
        let correct = labelled
            .iter()
            .filter(|(i, c)| {
                let scores: Vec<f32> = classes.iter().map(|e| dot(&images[*i], e)).collect();
                let best = scores
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (k, &s)| if s > b.1 { (k, s) } else { b },
                    );
                best.0 == *c
            })
            .count();
        out.insert(
            set.name.clone(),
            ZeroShot {
                correct,
                total: labelled.len(),
                accuracy: correct as f64 / labelled.len() as f64,
            },
        );
    }
    Ok(out)
}

/// All metrics of `model` (+ `adapter`) on a dataset.
pub fn evaluate(
    model: &CandleClip,
    adapter: Option<&LoraAdapter>,
    tokenizer: &ClipTokenizer,
    batcher: &Batcher<'_>,
    sample_labels: &[&BTreeMap<String, String>],
    labels: Option<&LabelSets>,
    batch_size: usize,
) -> Result<Metrics, TrainerError> {
    let (images, texts) = embed(model, adapter, batcher, batch_size)?;
    let (image_to_text, text_to_image, mean, std) =
        retrieval_metrics(&images, &texts, &batcher.groups);
    let zero_shot = match labels {
        Some(l) => zero_shot(model, adapter, tokenizer, l, &images, sample_labels)?,
        None => BTreeMap::new(),
    };
    Ok(Metrics {
        samples: images.len(),
        captions: texts.len(),
        image_to_text,
        text_to_image,
        matched_cosine_mean: mean,
        matched_cosine_std: std,
        zero_shot,
    })
}

/// Lower-cased words without surrounding punctuation.
pub fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn ngrams(w: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if w.len() >= n {
        for g in w.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus BLEU-1..4 (Papineni et al. 2002): clipped n-gram precisions over
/// all hypotheses, geometric mean with uniform weights up to n, brevity
/// penalty against the closest reference length; no smoothing.
pub fn bleu(hypotheses: &[String], references: &[Vec<String>]) -> [f64; 4] {
    let mut matched = [0usize; 4];
    let mut total = [0usize; 4];
    let (mut hyp_len, mut ref_len) = (0usize, 0usize);
    for (hyp, refs) in hypotheses.iter().zip(references) {
        let h = words(hyp);
        let rs: Vec<Vec<String>> = refs.iter().map(|r| words(r)).collect();
        hyp_len += h.len();
        ref_len += rs
            .iter()
            .map(Vec::len)
            .min_by_key(|&l| (l.abs_diff(h.len()), l))
            .unwrap_or(0);
        for n in 1..=4 {
            let hc = ngrams(&h, n);
            let mut max_ref: HashMap<&[String], usize> = HashMap::new();
            for r in &rs {
                for (g, c) in ngrams(r, n) {
                    let e = max_ref.entry(g).or_insert(0);
                    *e = (*e).max(c);
                }
            }
            for (g, c) in &hc {
                matched[n - 1] += (*c).min(max_ref.get(g).copied().unwrap_or(0));
                total[n - 1] += c;
            }
        }
    }
    let bp = if hyp_len == 0 {
        0.0
    } else if hyp_len >= ref_len {
        1.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    };
    let mut out = [0.0; 4];
    for n in 1..=4 {
        let logs: Vec<f64> = (0..n)
            .map(|i| {
                if total[i] == 0 || matched[i] == 0 {
                    f64::NEG_INFINITY
                } else {
                    (matched[i] as f64 / total[i] as f64).ln()
                }
            })
            .collect();
        let mean = logs.iter().sum::<f64>() / n as f64;
        out[n - 1] = bp * mean.exp();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_ranks() {
        let scores = vec![
            vec![0.9, 0.1, 0.2],
            vec![0.5, 0.4, 0.3],
            vec![0.1, 0.2, 0.3],
        ];
        let pos = |q: usize, g: usize| q == g;
        assert!((recall_at_k(&scores, pos, 1) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(recall_at_k(&scores, pos, 2), 1.0);
    }

    #[test]
    fn retrieval_with_shared_captions() {
        let images = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0]];
        let texts = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let (i2t, t2i, mean, std) = retrieval_metrics(&images, &texts, &[0, 0, 1]);
        assert_eq!(i2t.r1, 1.0);
        assert_eq!(t2i.r1, 1.0);
        assert!((mean - 1.0).abs() < 1e-9 && std.abs() < 1e-9);
        let (i2t, ..) = retrieval_metrics(&images, &texts, &[1, 1, 0]);
        assert_eq!(i2t.r1, 0.0);
        assert_eq!(i2t.r5, 1.0);
    }

    #[test]
    fn bleu_of_identity_and_known_value() {
        let refs = vec![vec!["the cat is on the mat".to_string()]];
        let b = bleu(&["The cat is on the mat.".to_string()], &refs);
        for v in b {
            assert!((v - 1.0).abs() < 1e-12);
        }
        // Papineni's example: "the the the the the the the" vs two references.
        let refs = vec![vec![
            "the cat is on the mat".to_string(),
            "there is a cat on the mat".to_string(),
        ]];
        let b = bleu(&["the the the the the the the".to_string()], &refs);
        assert!((b[0] - 2.0 / 7.0).abs() < 1e-12, "{b:?}");
        assert_eq!(b[1], 0.0);
        // Brevity penalty: "the cat" against "the cat is on the mat".
        let b = bleu(
            &["the cat".to_string()],
            &[vec!["the cat is on the mat".to_string()]],
        );
        assert!((b[0] - (1.0f64 - 3.0).exp()).abs() < 1e-12);
    }
}
