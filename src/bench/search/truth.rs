//! The exact top k of each query under each filter, from the generated
//! embeddings as they stream past (regenerated after the store is written:
//! at 10M frames they would take 20 GB to hold): a matrix product picks
//! candidates, which are then scored and ordered exactly as the store's
//! exact scan does (the same summation, ties by key), so the two can be
//! compared hit for hit.

use ndarray::{Array2, ArrayView2};

use super::BenchFilter;
use super::data::FrameMeta;
use crate::store::index::cosine;

/// Rows per matrix product.
pub const ROWS: usize = 16_384;
/// Candidates kept past k before the exact ordering (the product's rounding
/// differs from the scan's by ~1e-7).
const MARGIN: usize = 10;

/// `[filter][query]` -> (frame, score) of the best `k`, best first.
pub type TopK = Vec<Vec<Vec<(usize, f32)>>>;

/// A candidate: the product's score, the frame, its exact score.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    product: f32,
    frame: usize,
    exact: f32,
}

/// The running top k of a set of queries, fed the frames in order.
pub struct TruthScan<'q> {
    dim: usize,
    k: usize,
    queries: &'q [Vec<f32>],
    /// `queries x dim`, for the product.
    matrix: Array2<f32>,
    /// Per filter and query: candidates, best product first.
    best: Vec<Vec<Vec<Candidate>>>,
}

impl<'q> TruthScan<'q> {
    pub fn new(dim: usize, queries: &'q [Vec<f32>], filters: usize, k: usize) -> Self {
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let matrix =
            Array2::from_shape_vec((queries.len(), dim), flat).expect("queries are nq x dim");
        let best = vec![vec![Vec::with_capacity(k + MARGIN + 1); queries.len()]; filters];
        Self {
            dim,
            k,
            queries,
            matrix,
            best,
        }
    }

    /// Offers `rows` (`dim` floats each), frames `first..`, under `filters`.
    pub fn add(&mut self, first: usize, rows: &[f32], meta: &[FrameMeta], filters: &[BenchFilter]) {
        let dim = self.dim;
        let keep = self.k + MARGIN;
        let x = ArrayView2::from_shape((rows.len() / dim, dim), rows).expect("rows are n x dim");
        let scores = x.dot(&self.matrix.t());
        for (r, row) in scores.rows().into_iter().enumerate() {
            let i = first + r;
            let embedding = &rows[r * dim..(r + 1) * dim];
            for (f, filter) in filters.iter().enumerate() {
                if !(filter.keeps)(&meta[i]) {
                    continue;
                }
                for (j, &s) in row.iter().enumerate() {
                    let list = &mut self.best[f][j];
                    if list.len() == keep && list.last().is_some_and(|w| s <= w.product) {
                        continue;
                    }
                    let at = list.partition_point(|e| e.product >= s);
                    let exact = cosine(embedding, &self.queries[j]);
                    list.insert(
                        at,
                        Candidate {
                            product: s,
                            frame: i,
                            exact,
                        },
                    );
                    list.truncate(keep);
                }
            }
        }
    }

    /// The exact top k, ordered as the scan orders them.
    pub fn finish(self, meta: &[FrameMeta]) -> TopK {
        let k = self.k;
        self.best
            .into_iter()
            .map(|per_query| {
                per_query
                    .into_iter()
                    .map(|cands| {
                        let mut exact: Vec<(usize, f32)> =
                            cands.into_iter().map(|c| (c.frame, c.exact)).collect();
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
}
