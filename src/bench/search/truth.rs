//! The exact top k of each query under each filter, from the generated
//! embeddings in memory: a matrix product picks candidates, which are then
//! scored and ordered exactly as the store's exact scan does (the same
//! summation, ties by key), so the two can be compared hit for hit.

use ndarray::ArrayView2;

use super::BenchFilter;
use super::data::FrameMeta;
use crate::store::index::cosine;

/// Rows per matrix product.
const ROWS: usize = 16_384;
/// Candidates kept past k before the exact scoring (the product's rounding
/// differs from the scan's by ~1e-7).
const MARGIN: usize = 10;

/// `[filter][query]` -> (frame, score) of the best `k`, best first.
pub fn top_k(
    embeddings: &[f32],
    dim: usize,
    queries: &[Vec<f32>],
    meta: &[FrameMeta],
    filters: &[BenchFilter],
    k: usize,
) -> Vec<Vec<Vec<(usize, f32)>>> {
    let nq = queries.len();
    let flat: Vec<f32> = queries.iter().flatten().copied().collect();
    let q = ArrayView2::from_shape((nq, dim), &flat).expect("queries are nq x dim");
    // Per filter and query: candidates (score, frame), worst first once full.
    let keep = k + MARGIN;
    let mut best: Vec<Vec<Vec<(f32, usize)>>> =
        vec![vec![Vec::with_capacity(keep + 1); nq]; filters.len()];
    for (c, chunk) in embeddings.chunks(ROWS * dim).enumerate() {
        let x = ArrayView2::from_shape((chunk.len() / dim, dim), chunk).expect("rows are n x dim");
        let scores = x.dot(&q.t());
        for (r, row) in scores.rows().into_iter().enumerate() {
            let i = c * ROWS + r;
            for (f, filter) in filters.iter().enumerate() {
                if !(filter.keeps)(&meta[i]) {
                    continue;
                }
                for (j, &s) in row.iter().enumerate() {
                    offer(&mut best[f][j], keep, s, i);
                }
            }
        }
    }
    best.into_iter()
        .map(|per_query| {
            per_query
                .into_iter()
                .zip(queries)
                .map(|(cands, query)| {
                    let mut exact: Vec<(usize, f32)> = cands
                        .into_iter()
                        .map(|(_, i)| (i, cosine(&embeddings[i * dim..(i + 1) * dim], query)))
                        .collect();
                    // Best first; ties by (camera, time), larger first, as
                    // the scan's heap orders (score, key).
                    exact.sort_by(|a, b| {
                        let key = |i: usize| (meta[i].camera, meta[i].step);
                        b.1.total_cmp(&a.1).then(key(b.0).cmp(&key(a.0)))
                    });
                    exact.truncate(k);
                    exact
                })
                .collect()
        })
        .collect()
}

/// Keeps the `keep` best (score, frame), sorted best first.
fn offer(list: &mut Vec<(f32, usize)>, keep: usize, score: f32, i: usize) {
    if list.len() == keep && list.last().is_some_and(|w| score <= w.0) {
        return;
    }
    let at = list.partition_point(|e| e.0 >= score);
    list.insert(at, (score, i));
    list.truncate(keep);
}
