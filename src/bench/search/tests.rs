//! The ground truth streamed from regenerated frames is the truth of the
//! frames stored.

use super::data::{FrameMeta, Generator};
use super::*;

fn settings(dir: &std::path::Path) -> SearchBenchSettings {
    SearchBenchSettings {
        frames: 3000,
        dim: 32,
        cameras: 3,
        queries: 6,
        filter_selectivity: 0.05,
        exact_queries: 3,
        probe_lists: 0,
        dir: dir.join("bench"),
        seed: 7,
    }
}

#[test]
fn the_exact_scan_of_the_written_store_agrees_with_the_regenerated_truth() {
    let dir = tempfile::tempdir().unwrap();
    let report = bench_search(&settings(dir.path()), |_| {}).unwrap();
    assert_eq!(report.exact.len(), 2);
    for row in &report.exact {
        assert_eq!(row.queries, 6, "{row:?}");
        assert!(row.matches_truth, "{row:?}");
    }
    // Written, reopened, rebuilt: two kinds, four filters.
    assert_eq!(report.rows.len(), 3 * 2 * 4);
    for row in &report.rows {
        assert!(row.recall_at_10 >= 0.9, "{row:?}");
    }
    assert!(!dir.path().join("bench").exists(), "the stores are removed");
}

#[test]
fn truth_fed_in_uneven_chunks_is_the_full_sort() {
    let (dim, cameras, n) = (16, 2, 1000);
    let mut generator = Generator::new(dim, cameras, 3);
    let mut rows = vec![0f32; n * dim];
    let meta: Vec<FrameMeta> = rows
        .chunks_exact_mut(dim)
        .enumerate()
        .map(|(i, e)| next_frame(&mut generator, cameras, i, e))
        .collect();
    let queries: Vec<Vec<f32>> = (0..4).map(|_| generator.image_query()).collect();
    let filters = [
        BenchFilter {
            name: "all".into(),
            filter: FrameFilter::default(),
            keeps: Box::new(|_| true),
            kept: 1.0,
        },
        BenchFilter {
            name: "camera 1".into(),
            filter: FrameFilter::default(),
            keeps: Box::new(|m| m.camera == 1),
            kept: 0.5,
        },
    ];
    let mut scan = truth::TruthScan::new(dim, &queries, filters.len(), TOP);
    let mut first = 0;
    for len in [1, 333, 7, 500, 159] {
        scan.add(
            first,
            &rows[first * dim..(first + len) * dim],
            &meta,
            &filters,
        );
        first += len;
    }
    assert_eq!(first, n);
    let got = scan.finish(&meta);
    for (f, filter) in filters.iter().enumerate() {
        for (q, query) in queries.iter().enumerate() {
            let mut all: Vec<(usize, f32)> = (0..n)
                .filter(|&i| (filter.keeps)(&meta[i]))
                .map(|i| {
                    (
                        i,
                        crate::store::index::cosine(&rows[i * dim..(i + 1) * dim], query),
                    )
                })
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1));
            let want: Vec<usize> = all.iter().take(TOP).map(|h| h.0).collect();
            let have: Vec<usize> = got[f][q].iter().map(|h| h.0).collect();
            assert_eq!(have, want, "filter {f}, query {q}");
        }
    }
}
