//! CIDEr-D (Vedantam et al., *CIDEr: Consensus-based Image Description
//! Evaluation*, CVPR 2015), computed as the coco-caption reference code
//! does it (`cider_scorer.py`, the CIDEr-D variant by its author):
//!
//! - words: lower case, punctuation removed ([`super::eval::words`], what
//!   the PTB tokenizer step leaves of plain English);
//! - n-grams of 1..=4 words; each sentence becomes one vector per n of
//!   `term count × (ln(images) − ln(max(1, df)))`, where `df` counts the
//!   images among whose references the n-gram occurs (the references of the
//!   whole test set; an n-gram no reference has gets `df` 1);
//! - similarity per n: `Σ min(hyp, ref) · ref / (|hyp| · |ref|)` (the
//!   clipping of CIDEr-D), times the Gaussian length penalty
//!   `exp(−δ² / 2σ²)`, σ = 6, where δ is the difference of the sentences'
//!   *bigram* counts (the reference code counts the entries of n-gram index
//!   1 as the length: `if n == 1: length += term_freq`; kept so scores
//!   match);
//! - per image: mean over n of the sum over references, divided by the
//!   number of references, × 10; the corpus score is the mean over images.
//!
//! With a single image every reference n-gram has `df` = 1 = the image
//! count, so every weight is 0 and the score is 0, as in the reference.

use std::collections::{BTreeMap, HashMap};

use super::eval::words;

const N: usize = 4;
const SIGMA: f64 = 6.0;

/// CIDEr-D of a test set.
#[derive(Debug, Clone, PartialEq)]
pub struct CiderD {
    /// Mean over images.
    pub score: f64,
    /// Per image, in input order.
    pub per_image: Vec<f64>,
}

// Ordered maps: sums run in the same order every time, so equal inputs
// give bit-identical scores.
type Counts = BTreeMap<Vec<String>, usize>;

fn counts(sentence: &str) -> Counts {
    let w = words(sentence);
    let mut c = Counts::new();
    for n in 1..=N {
        for g in w.windows(n) {
            *c.entry(g.to_vec()).or_insert(0) += 1;
        }
    }
    c
}

/// A sentence's tf-idf vectors (one per n), their norms and its length
/// (bigram count, see the module notes).
struct Vector {
    weights: [BTreeMap<Vec<String>, f64>; N],
    norms: [f64; N],
    length: f64,
}

fn vector(c: &Counts, df: &HashMap<&Vec<String>, usize>, log_images: f64) -> Vector {
    let mut weights: [BTreeMap<Vec<String>, f64>; N] = Default::default();
    let mut norms = [0.0; N];
    let mut length = 0.0;
    for (g, &tf) in c {
        let n = g.len() - 1;
        let idf = log_images - (df.get(g).copied().unwrap_or(0).max(1) as f64).ln();
        let w = tf as f64 * idf;
        weights[n].insert(g.clone(), w);
        norms[n] += w * w;
        if n == 1 {
            length += tf as f64;
        }
    }
    Vector {
        weights,
        norms: norms.map(f64::sqrt),
        length,
    }
}

fn similarity(hyp: &Vector, reference: &Vector) -> [f64; N] {
    let delta = hyp.length - reference.length;
    let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
    std::array::from_fn(|n| {
        let mut val = 0.0;
        for (g, &h) in &hyp.weights[n] {
            let r = reference.weights[n].get(g).copied().unwrap_or(0.0);
            val += h.min(r) * r;
        }
        if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            val /= hyp.norms[n] * reference.norms[n];
        }
        val * penalty
    })
}

/// CIDEr-D of `hypotheses[i]` against `references[i]` (several per image);
/// document frequencies come from all of `references`. An image without
/// references scores 0; an empty test set scores 0.
pub fn cider_d(hypotheses: &[String], references: &[Vec<String>]) -> CiderD {
    let refs: Vec<Vec<Counts>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| counts(r)).collect())
        .collect();
    let mut df: HashMap<&Vec<String>, usize> = HashMap::new();
    for rs in &refs {
        let mut seen: Vec<&Vec<String>> = rs.iter().flat_map(|c| c.keys()).collect();
        seen.sort();
        seen.dedup();
        for g in seen {
            *df.entry(g).or_insert(0) += 1;
        }
    }
    let log_images = (refs.len().max(1) as f64).ln();
    let per_image: Vec<f64> = hypotheses
        .iter()
        .zip(&refs)
        .map(|(h, rs)| {
            if rs.is_empty() {
                return 0.0;
            }
            let hv = vector(&counts(h), &df, log_images);
            let sum: f64 = rs
                .iter()
                .map(|r| {
                    similarity(&hv, &vector(r, &df, log_images))
                        .iter()
                        .sum::<f64>()
                })
                .sum();
            sum / N as f64 / rs.len() as f64 * 10.0
        })
        .collect();
    let score = if per_image.is_empty() {
        0.0
    } else {
        per_image.iter().sum::<f64>() / per_image.len() as f64
    };
    CiderD { score, per_image }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Three images; ln(3) = 1.0986123, ln(1.5) = 0.4054651.
    /// df: "a" occurs in the references of images 1 and 2 (df 2, weight
    /// ln3 − ln2 = ln1.5); every other reference n-gram has df 1 (weight
    /// ln3); n-grams no reference has ("cat cat", "blue") weigh ln3 too.
    #[test]
    fn hand_computed_three_images() {
        let hyps = s(&["A cat, cat.", "a car", "blue"]);
        let refs = vec![s(&["a cat", "a dog"]), s(&["a car"]), s(&["the sky"])];
        let c = cider_d(&hyps, &refs);
        let (l3, l15) = (3f64.ln(), 1.5f64.ln());
        // Image 1, hyp "a cat cat": 1-grams a: ln1.5, cat: 2·ln3;
        // 2-grams "a cat": ln3, "cat cat": ln3; length 2 bigrams.
        // vs "a cat" (1 bigram, δ = 1, penalty e^(−1/72) = 0.9862071):
        //   n=1: (ln1.5·ln1.5 + min(2ln3, ln3)·ln3) / (√(ln²1.5 + 4ln²3) · √(ln²1.5 + ln²3))
        //      = √(0.1644020 + 1.2069490) / √(0.1644020 + 4.8277958)
        //      = 1.1710469 / 2.2343227 = 0.5241172   (clipping: cat counts ln3, not 2ln3)
        //   n=2: ln3·ln3 / (√2·ln3 · ln3) = 0.7071068;  n=3,4: 0
        // vs "a dog": n=1: ln²1.5 / (2.2343227 · 1.1710469) = 0.0628329; others 0
        // score = (0.5241172 + 0.7071068 + 0.0628329) / 4 · 0.9862071 / 2 refs · 10
        //       = 0.3235142 · 0.9862071 · 5 = 1.5952601
        let n1 = (l15 * l15 + l3 * l3).sqrt() / (l15 * l15 + 4.0 * l3 * l3).sqrt();
        let n1_dog =
            l15 * l15 / ((l15 * l15 + 4.0 * l3 * l3).sqrt() * (l15 * l15 + l3 * l3).sqrt());
        let p = (-1.0f64 / 72.0).exp();
        let image1 = (n1 + 0.5f64.sqrt() + n1_dog) / 4.0 * p / 2.0 * 10.0;
        assert!((image1 - 1.5952601).abs() < 1e-6, "{image1}");
        assert!((c.per_image[0] - image1).abs() < 1e-12, "{c:?}");
        // Image 2, hyp = ref "a car": cosine 1 for n=1,2, nothing for
        // 3,4, same length: (1 + 1 + 0 + 0) / 4 · 10 = 5.
        assert!((c.per_image[1] - 5.0).abs() < 1e-12, "{c:?}");
        // Image 3: no shared n-gram: 0.
        assert_eq!(c.per_image[2], 0.0);
        // Mean: (1.5952601 + 5 + 0) / 3 = 2.1984200.
        assert!((c.score - 2.1984200).abs() < 1e-6, "{c:?}");
    }

    #[test]
    fn length_penalty_counts_bigrams() {
        // Hyp "a b c d e" vs ref "a b" in a two-image set: δ = 4 − 1 = 3
        // bigrams, penalty e^(−9/72). All weights ln2 (df 1 or 0):
        // n=1: 2·ln²2 / (√5·ln2 · √2·ln2) = 2/√10; n=2: ln²2 / (2ln2 · ln2) = 1/2.
        let c = cider_d(&s(&["a b c d e", "x"]), &[s(&["a b"]), s(&["y"])]);
        let want = (2.0 / 10f64.sqrt() + 0.5) / 4.0 * (-9.0f64 / 72.0).exp() * 10.0;
        assert!((c.per_image[0] - want).abs() < 1e-12, "{c:?} {want}");
    }

    #[test]
    fn edge_cases() {
        // Empty hypothesis: zero vectors, score 0 (no NaN).
        let c = cider_d(&s(&["", "a car"]), &[s(&["a dog"]), s(&["a car"])]);
        assert_eq!(c.per_image[0], 0.0);
        assert!(c.score.is_finite());
        // A single image: every idf is ln1 − ln1 = 0, so the score is 0
        // even for a perfect caption (as in the reference code).
        let c = cider_d(&s(&["a red car"]), &[s(&["a red car"])]);
        assert_eq!(c.score, 0.0);
        // A single reference per image, perfect captions of ≥ 4 words:
        // cosine 1 for every n, same length: 10.
        let c = cider_d(
            &s(&["a red car on a road", "two people on a bridge"]),
            &[s(&["A red car on a road."]), s(&["two people on a bridge"])],
        );
        for v in &c.per_image {
            assert!((v - 10.0).abs() < 1e-12, "{c:?}");
        }
        // No references, empty set.
        assert_eq!(cider_d(&s(&["a"]), &[vec![]]).per_image, vec![0.0]);
        assert_eq!(cider_d(&[], &[]).score, 0.0);
    }
}
