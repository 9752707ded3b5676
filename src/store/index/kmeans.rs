//! Spherical k-means (cosine similarity): the cells of the inverted lists.
//! Scores of many rows against all centroids are one matrix product
//! (ndarray's, which picks AVX/FMA kernels at run time).

use ndarray::ArrayView2;

use crate::rng::SplitMix64;

/// Rows scored against the centroids per matrix product (bounds the score
/// matrix to `ROWS_PER_PRODUCT x lists` floats).
const ROWS_PER_PRODUCT: usize = 1024;

/// Index of the centroid with the largest dot product, per row of `rows`
/// (`dim` floats each); the first on ties.
pub fn nearest(rows: &[f32], centroids: &[f32], dim: usize) -> Vec<u32> {
    let k = centroids.len() / dim;
    let mut out = Vec::with_capacity(rows.len() / dim);
    if k == 0 {
        out.resize(rows.len() / dim, 0);
        return out;
    }
    let c = ArrayView2::from_shape((k, dim), centroids).expect("centroids are k x dim");
    for chunk in rows.chunks(ROWS_PER_PRODUCT * dim) {
        let x = ArrayView2::from_shape((chunk.len() / dim, dim), chunk).expect("rows are n x dim");
        let scores = x.dot(&c.t());
        for row in scores.rows() {
            let mut best = (0, f32::NEG_INFINITY);
            for (i, &s) in row.iter().enumerate() {
                if s > best.1 {
                    best = (i, s);
                }
            }
            out.push(best.0 as u32);
        }
    }
    out
}

/// `k` unit centroids of the rows of `sample` after `iterations` rounds of
/// spherical k-means, started from distinct sample rows. `None` when
/// `keep_going` says stop (checked once per round).
pub fn train(
    sample: &[f32],
    dim: usize,
    k: usize,
    iterations: usize,
    seed: u64,
    keep_going: &dyn Fn() -> bool,
) -> Option<Vec<f32>> {
    let n = sample.len() / dim;
    let k = k.min(n).max(1);
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut centroids: Vec<f32> = order[..k.min(n)]
        .iter()
        .flat_map(|&i| sample[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    if n == 0 {
        return Some(vec![0.0; dim]);
    }
    for _ in 0..iterations {
        let assignment = nearest(sample, &centroids, dim);
        let mut sums = vec![0f32; k * dim];
        let mut counts = vec![0usize; k];
        for (row, &c) in sample.chunks_exact(dim).zip(&assignment) {
            let c = c as usize;
            counts[c] += 1;
            for (s, x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                *s += x;
            }
        }
        for c in 0..k {
            let sum = &mut sums[c * dim..(c + 1) * dim];
            if counts[c] == 0 {
                // An empty cell restarts at a random row: cells stay useful.
                let r = rng.below(n);
                sum.copy_from_slice(&sample[r * dim..(r + 1) * dim]);
            }
            normalize(sum);
        }
        centroids = sums;
        if !keep_going() {
            return None;
        }
    }
    Some(centroids)
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
