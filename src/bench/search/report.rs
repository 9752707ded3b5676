//! `bench search`'s report as BENCHMARKS.md tables.

use super::{SearchBenchReport, TOP};

impl SearchBenchReport {
    /// The report as BENCHMARKS.md tables.
    pub fn to_markdown(&self) -> String {
        let mb = |b: f64| b / 1e6;
        let mut out = format!(
            "### {} frames, {} dimensions, {} cameras\n\n\
             | | |\n|---|---|\n\
             | store writes with the index | {:.0} frames/s |\n\
             | first {} frames: writes with / without the index | {:.2} s / {:.2} s |\n\
             | index lists: as written / rebuilt | {} / {} |\n\
             | open with the saved index | {:.2} s |\n\
             | rebuild from the store (read, train, assign, save) | {:.1} s |\n\
             | index file | {:.0} MB |\n\
             | index in memory | {:.0} MB |\n\
             | store on disk | {:.0} MB |\n\
             | peak RSS of the benchmark | {:.0} MB |\n\n",
            self.frames,
            self.dim,
            self.cameras,
            self.write_frames_per_s,
            self.overhead_frames,
            self.overhead_with_index_s,
            self.overhead_without_index_s,
            self.lists_written,
            self.lists_rebuilt,
            self.load_s,
            self.rebuild_s,
            mb(self.index_file_bytes as f64),
            mb(self.index_memory_bytes as f64),
            mb(self.store_disk_bytes as f64),
            mb(self.peak_rss_bytes as f64),
        );
        out.push_str(&format!(
            "Top {TOP}, {} queries of each kind, probe_lists {}:\n\n\
             | index | queries | filter | kept | p50 ms | p95 ms | index p50 ms | recall@10 | scored all matches | codes scored |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            self.queries_per_kind,
            if self.probe_lists == 0 { "default".to_string() } else { self.probe_lists.to_string() },
        ));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {:.1}% | {:.2} | {:.2} | {:.2} | {:.3} | {}/{} | {:.0} |\n",
                r.index,
                r.kind,
                r.filter,
                100.0 * r.selectivity,
                r.p50_ms,
                r.p95_ms,
                r.index_p50_ms,
                r.recall_at_10,
                r.flat,
                self.queries_per_kind,
                r.scored
            ));
        }
        out.push_str("\nThe exact scan (`Store::search_exact`) on a few of the same queries:\n\n| filter | queries | p50 ms | same top ten as the generated truth |\n|---|---|---|---|\n");
        for e in &self.exact {
            out.push_str(&format!(
                "| {} | {} | {:.1} | {} |\n",
                e.filter,
                e.queries,
                e.p50_ms,
                if e.matches_truth { "yes" } else { "no" }
            ));
        }
        out
    }
}
