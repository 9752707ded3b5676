//! Reading frames back: filtered scans in (camera, time) order, vector
//! search over one model's embeddings, store statistics.

use std::collections::BinaryHeap;

use super::index::{self, IndexStatus, Plan};
use super::{
    EMBEDDINGS_TREE_PREFIX, FRAMES_TREE, FrameKey, FrameRecord, SetTag, Store, StoreError,
    TAGS_TREE, TagRecord, keys, schema,
};

/// Candidates the index finds for the exact re-ranking of `top_k` hits:
/// int8 rounding moves scores by ~1e-3, so a margin past `top_k` catches
/// the hits it pushes just out of it.
fn rerank_candidates(top_k: usize) -> usize {
    top_k.saturating_mul(2).saturating_add(32)
}

/// How [`Store::search_with`] finds hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMethod {
    /// The search index when ready, else the exact scan.
    Auto,
    /// The exact scan.
    Exact,
}

/// How a search went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum SearchPath {
    /// Every embedding passing the filter scored.
    Exact,
    /// The index: its plan and how many int8 codes it scored.
    Index { plan: Plan, scored: usize },
}

/// Hits and how they were found.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub hits: Vec<SearchHit>,
    pub path: SearchPath,
    /// Time spent in the index (the rest re-ranks and reads the hits).
    pub index_time: std::time::Duration,
}

/// Which frames a query looks at.
#[derive(Debug, Clone, Default)]
pub struct FrameFilter {
    /// Stream names; `None` = all.
    pub streams: Option<Vec<String>>,
    /// Earliest frame time, ns (inclusive).
    pub from_ns: Option<i64>,
    /// Latest frame time, ns (inclusive).
    pub to_ns: Option<i64>,
    /// `(set, class)` pairs that must all be the frame's top class.
    pub tags: Vec<(String, String)>,
    /// Minimum probability of each tag in `tags`.
    pub min_tag_score: Option<f32>,
}

/// A frame with its metadata, as returned by queries.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FrameEntry {
    /// Stream name.
    pub stream: String,
    /// Frame time, ns.
    pub ts_ns: i64,
    /// Metadata.
    pub record: FrameRecord,
    /// Tags (empty if none stored).
    pub tags: Vec<SetTag>,
    /// A thumbnail is stored.
    pub thumbnail: bool,
    /// A keyframe picture is stored (the frame is a segment's keyframe).
    pub keyframe: bool,
}

/// One search result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchHit {
    /// Cosine similarity to the query.
    pub score: f32,
    /// The frame.
    #[serde(flatten)]
    pub frame: FrameEntry,
}

/// Store size figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStats {
    /// Frames per stream.
    pub frames: Vec<(String, u64)>,
    /// Bytes sled uses on disk.
    pub disk_bytes: u64,
}

/// The typed store.
impl Store {
    /// Resolves a filter's streams to `(id, name)`; unknown names are errors.
    fn filter_streams(&self, filter: &FrameFilter) -> Result<Vec<(u32, String)>, StoreError> {
        let all = self.streams()?;
        match &filter.streams {
            None => Ok(all.into_iter().map(|s| (s.id, s.name)).collect()),
            Some(names) => names
                .iter()
                .map(|n| {
                    all.iter()
                        .find(|s| &s.name == n)
                        .map(|s| (s.id, s.name.clone()))
                        .ok_or_else(|| StoreError::UnknownStream(n.clone()))
                })
                .collect(),
        }
    }

    /// Calls `visit` for every frame key that passes `filter`, in
    /// (stream, time) order per stream. `visit` returns false to stop.
    fn scan(
        &self,
        filter: &FrameFilter,
        mut visit: impl FnMut(FrameKey) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let from = filter.from_ns.unwrap_or(i64::MIN);
        let to = filter.to_ns.unwrap_or(i64::MAX);
        for (id, _) in self.filter_streams(filter)? {
            let range = FrameKey::range(id, from, to);
            if let Some((set, class)) = filter.tags.first() {
                // The first tag filter drives the scan through the index.
                let prefix = keys::tag_index_prefix(set, class);
                let mut start = prefix.clone();
                start.extend_from_slice(range.start());
                let mut end = prefix.clone();
                end.extend_from_slice(range.end());
                for kv in self.tag_index.range(start..=end) {
                    let (k, score) = kv.map_err(|e| self.err(e))?;
                    let Some(key) = FrameKey::decode(&k[prefix.len()..]) else {
                        continue;
                    };
                    let score = f32::from_be_bytes(score.as_ref().try_into().unwrap_or([0; 4]));
                    if filter.min_tag_score.is_some_and(|m| score < m)
                        || !self.other_tags_match(&key, filter)?
                    {
                        continue;
                    }
                    if !visit(key)? {
                        return Ok(());
                    }
                }
            } else {
                for kv in self.frames.range(range) {
                    let (k, _) = kv.map_err(|e| self.err(e))?;
                    let Some(key) = FrameKey::decode(&k) else {
                        continue;
                    };
                    if !visit(key)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn other_tags_match(&self, key: &FrameKey, filter: &FrameFilter) -> Result<bool, StoreError> {
        if filter.tags.len() < 2 {
            return Ok(true);
        }
        let tags = self.tags_of(key)?;
        Ok(filter.tags[1..].iter().all(|(set, class)| {
            tags.get(set).is_some_and(|t| {
                &t.top == class && filter.min_tag_score.is_none_or(|m| t.score >= m)
            })
        }))
    }

    fn tags_of(&self, key: &FrameKey) -> Result<TagRecord, StoreError> {
        match self.tags.get(key.encode()).map_err(|e| self.err(e))? {
            Some(v) => schema::decode(TAGS_TREE, &v),
            None => Ok(TagRecord { sets: Vec::new() }),
        }
    }

    /// One stored frame.
    pub fn frame(&self, key: &FrameKey) -> Result<Option<FrameEntry>, StoreError> {
        self.entry(key, &self.stream_names()?)
    }

    fn entry(
        &self,
        key: &FrameKey,
        names: &std::collections::HashMap<u32, String>,
    ) -> Result<Option<FrameEntry>, StoreError> {
        let Some(v) = self.frames.get(key.encode()).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        Ok(Some(FrameEntry {
            stream: names.get(&key.stream_id).cloned().unwrap_or_default(),
            ts_ns: key.ts_ns,
            record: schema::decode(FRAMES_TREE, &v)?,
            tags: self.tags_of(key)?.sets,
            thumbnail: self.has_thumbnail(key)?,
            keyframe: self.has_keyframe_picture(key)?,
        }))
    }

    /// Frames passing `filter`, in (stream, time) order, at most `limit`.
    pub fn frames(
        &self,
        filter: &FrameFilter,
        limit: usize,
    ) -> Result<Vec<FrameEntry>, StoreError> {
        let mut out = Vec::new();
        if limit > 0 {
            self.for_each_frame(filter, |e| {
                out.push(e);
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    /// Streams the frames passing `filter` to `visit` in (stream, time)
    /// order, without collecting them; `visit` returns false to stop.
    pub fn for_each_frame(
        &self,
        filter: &FrameFilter,
        mut visit: impl FnMut(FrameEntry) -> bool,
    ) -> Result<(), StoreError> {
        let names = self.stream_names()?;
        self.scan(filter, |key| match self.entry(&key, &names)? {
            Some(e) => Ok(visit(e)),
            None => Ok(true),
        })
    }

    /// The `top_k` frames most similar to `query` (normalised) among those
    /// passing `filter`, best first; only scores >= `min_score`. Uses the
    /// search index when it is ready, else scans exactly.
    pub fn search(
        &self,
        query: &[f32],
        filter: &FrameFilter,
        top_k: usize,
        min_score: Option<f32>,
    ) -> Result<Vec<SearchHit>, StoreError> {
        Ok(self
            .search_with(query, filter, top_k, min_score, SearchMethod::Auto)?
            .hits)
    }

    /// [`Store::search`], saying how it searched; `SearchMethod::Exact`
    /// scans every embedding the filter passes.
    pub fn search_with(
        &self,
        query: &[f32],
        filter: &FrameFilter,
        top_k: usize,
        min_score: Option<f32>,
        method: SearchMethod,
    ) -> Result<SearchOutcome, StoreError> {
        if query.len() != self.embed_dim {
            return Err(StoreError::Dimension {
                expected: self.embed_dim,
                actual: query.len(),
            });
        }
        self.check_indexed()?;
        let started = std::time::Instant::now();
        let found = match method {
            SearchMethod::Exact => None,
            SearchMethod::Auto => {
                let streams = match &filter.streams {
                    None => None,
                    Some(_) => Some(self.filter_streams(filter)?.iter().map(|s| s.0).collect()),
                };
                self.index.search(
                    query,
                    |ivf| {
                        ivf.slot_filter(
                            streams,
                            filter.from_ns,
                            filter.to_ns,
                            &filter.tags,
                            filter.min_tag_score,
                        )
                    },
                    rerank_candidates(top_k),
                )
            }
        };
        let Some(found) = found else {
            return Ok(SearchOutcome {
                hits: self.search_exact(query, filter, top_k, min_score)?,
                path: SearchPath::Exact,
                index_time: std::time::Duration::ZERO,
            });
        };
        let index_time = started.elapsed();
        // The index's scores are approximate: rank its candidates by the
        // stored embeddings, as the exact scan does.
        let mut best = Vec::with_capacity(found.hits.len());
        for (key, _) in &found.hits {
            if let Some(e) = self.embeddings.get(key.encode()).map_err(|e| self.err(e))? {
                let score = index::cosine(&schema::decode_embedding(&e), query);
                if score.is_finite() && min_score.is_none_or(|m| score >= m) {
                    best.push((OrdF32(score), *key));
                }
            }
        }
        best.sort_unstable_by(|a, b| b.cmp(a));
        best.truncate(top_k);
        Ok(SearchOutcome {
            hits: self.hits(best)?,
            path: SearchPath::Index {
                plan: found.plan,
                scored: found.scored,
            },
            index_time,
        })
    }

    /// [`Store::search`] by scanning every embedding `filter` passes.
    pub fn search_exact(
        &self,
        query: &[f32],
        filter: &FrameFilter,
        top_k: usize,
        min_score: Option<f32>,
    ) -> Result<Vec<SearchHit>, StoreError> {
        // Min-heap of the best `top_k` (score, key) so far.
        let mut heap: BinaryHeap<std::cmp::Reverse<(OrdF32, FrameKey)>> =
            BinaryHeap::with_capacity(top_k + 1);
        self.scan(filter, |key| {
            let Some(e) = self.embeddings.get(key.encode()).map_err(|e| self.err(e))? else {
                return Ok(true);
            };
            let score = index::cosine(&schema::decode_embedding(&e), query);
            // A non-finite score (corrupt embedding) would sort first: skip it.
            if score.is_finite() && min_score.is_none_or(|m| score >= m) {
                heap.push(std::cmp::Reverse((OrdF32(score), key)));
                if heap.len() > top_k {
                    heap.pop();
                }
            }
            Ok(true)
        })?;
        let best = heap.into_sorted_vec().into_iter().map(|r| r.0).collect();
        self.hits(best)
    }

    /// Search hits of (score, frame), best first.
    fn hits(&self, best: Vec<(OrdF32, FrameKey)>) -> Result<Vec<SearchHit>, StoreError> {
        let names = self.stream_names()?;
        let mut hits = Vec::with_capacity(best.len());
        for (OrdF32(score), key) in best {
            if let Some(frame) = self.entry(&key, &names)? {
                hits.push(SearchHit { score, frame });
            }
        }
        Ok(hits)
    }

    /// The search index's state and size.
    pub fn index_status(&self) -> IndexStatus {
        self.index.status()
    }

    /// Waits until the search index is built and not training (or
    /// `timeout` passes); returns whether it is.
    pub fn wait_for_index(&self, timeout: std::time::Duration) -> bool {
        self.index.wait_idle(timeout)
    }

    /// Saves the search index now (after flushing the store).
    pub fn save_index(&self) -> Result<(), StoreError> {
        self.index.save()
    }

    /// The search index file.
    pub fn index_file(&self) -> &std::path::Path {
        self.index.file()
    }

    /// Frames stored, but none embedded by this store's model: a search
    /// would find nothing, so say which models the store does hold.
    fn check_indexed(&self) -> Result<(), StoreError> {
        if !self.embeddings.is_empty() || self.frames.is_empty() {
            return Ok(());
        }
        let model_of = |name: &[u8]| {
            String::from_utf8_lossy(name)
                .strip_prefix(EMBEDDINGS_TREE_PREFIX)
                .map(str::to_string)
        };
        let mut held = Vec::new();
        for name in self.db.tree_names() {
            let Some(model) = model_of(&name) else {
                continue;
            };
            let tree = self.db.open_tree(&name).map_err(|e| self.err(e))?;
            if !tree.is_empty() {
                held.push(model);
            }
        }
        Err(StoreError::NoEmbeddings {
            path: self.path.clone(),
            fingerprint: model_of(&self.embeddings.name()).unwrap_or_default(),
            held: if held.is_empty() {
                "none".into()
            } else {
                held.join(", ")
            },
        })
    }

    /// The stored embedding of a frame (current model).
    pub fn embedding(&self, key: &FrameKey) -> Result<Option<Vec<f32>>, StoreError> {
        Ok(self
            .embeddings
            .get(key.encode())
            .map_err(|e| self.err(e))?
            .map(|v| schema::decode_embedding(&v)))
    }

    /// Frame counts per stream and bytes on disk.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut frames = Vec::new();
        for s in self.streams()? {
            let n = self
                .frames
                .range(FrameKey::range(s.id, i64::MIN, i64::MAX))
                .count() as u64;
            frames.push((s.name, n));
        }
        Ok(StoreStats {
            frames,
            disk_bytes: self.db.size_on_disk().map_err(|e| self.err(e))?,
        })
    }
}

/// Total order on scores for the heaps (scores are finite here); the
/// search index's top-k uses it too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OrdF32(pub f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
