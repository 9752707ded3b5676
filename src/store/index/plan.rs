//! Searching the index: which embeddings a query scores, and how.
//!
//! Filters (cameras, time range, tags) are checked on every embedding
//! scored, so they never let a non-matching frame through. What they cost
//! in recall depends on the plan, picked from the filter's estimated
//! selectivity:
//! - `Flat`: the filter matches few frames (at most `FLAT_FACTOR` times
//!   what probing would score, and at least [`FLAT_MIN`]): score all of
//!   them. Cameras and time ranges are found through the key map, other
//!   filters by checking every slot. Nothing is missed but what int8
//!   rounding reorders, which the exact re-ranking repairs.
//! - `Probe`: score the lists whose centroids are nearest the query until
//!   `probe` lists are done and as many matching frames were scored as an
//!   unfiltered probe scores. A filter that matches few frames near the
//!   query so goes on to further lists instead of returning fewer or worse
//!   hits.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::codes;
use super::ivf::{IvfIndex, NO_LIST};
use super::lists::List;
use super::tags::TagCondition;
use crate::store::FrameKey;
use crate::store::query::OrdF32;

/// Below this many matching frames a filtered search scores them all.
pub const FLAT_MIN: usize = 16_384;
/// A filtered search scores all its matches while they are at most this
/// many times what probing would score.
const FLAT_FACTOR: usize = 4;
/// A filtered probe scores this many times the matches an unfiltered one
/// scores.
const FILTERED_PROBE_FACTOR: usize = 2;
/// Slots sampled to estimate a filter's selectivity.
const SELECTIVITY_SAMPLE: usize = 2048;

/// A frame filter in the index's ids.
#[derive(Debug, Clone, Default)]
pub struct SlotFilter {
    /// Stream ids (sorted); `None`: all.
    pub streams: Option<Vec<u32>>,
    /// Inclusive time range, ns.
    pub from_ns: i64,
    pub to_ns: i64,
    /// Top classes every match has.
    pub tags: Vec<TagCondition>,
    /// Minimum score of each tag.
    pub min_tag_score: Option<f32>,
}

impl SlotFilter {
    /// Matches every frame.
    pub fn everything() -> Self {
        Self {
            from_ns: i64::MIN,
            to_ns: i64::MAX,
            ..Self::default()
        }
    }

    fn is_everything(&self) -> bool {
        self.streams.is_none()
            && self.from_ns == i64::MIN
            && self.to_ns == i64::MAX
            && self.tags.is_empty()
    }

    fn has_key_range(&self) -> bool {
        self.streams.is_some() || self.from_ns != i64::MIN || self.to_ns != i64::MAX
    }

    /// Whether a slot is held and passes (cameras from its key).
    fn matches(&self, index: &IvfIndex, slot: usize) -> bool {
        index.list_of[slot] != NO_LIST
            && self
                .streams
                .as_ref()
                .is_none_or(|s| s.binary_search(&index.keys[slot].stream_id).is_ok())
            && self.matches_time_and_tags(index, slot)
    }

    /// [`SlotFilter::matches`] for entry `e` of a list (so held): cameras
    /// come from the list's stream ids, read beside its codes.
    fn matches_entry(&self, index: &IvfIndex, list: &List, e: usize) -> bool {
        self.streams
            .as_ref()
            .is_none_or(|s| s.binary_search(&list.streams[e]).is_ok())
            && self.matches_time_and_tags(index, list.slots[e] as usize)
    }

    /// The key is read only when the filter has a time range (each read is
    /// a cache miss at a million frames).
    fn matches_time_and_tags(&self, index: &IvfIndex, slot: usize) -> bool {
        let has_time = self.from_ns != i64::MIN || self.to_ns != i64::MAX;
        (!has_time || {
            let ts = index.keys[slot].ts_ns;
            ts >= self.from_ns && ts <= self.to_ns
        }) && index.tags.matches(slot, &self.tags, self.min_tag_score)
    }
}

/// How a search went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// Every matching frame scored.
    Flat,
    /// The nearest lists scored.
    Probe,
}

/// What a search found: frames with approximate scores, best first.
#[derive(Debug, Clone)]
pub struct Candidates {
    pub hits: Vec<(FrameKey, f32)>,
    pub plan: Plan,
    /// Embeddings scored (all of them matching the filter).
    pub scored: usize,
}

impl IvfIndex {
    /// Lists probed by default: about √lists (so about n^¾ embeddings are
    /// scored of n).
    pub fn default_probe(&self) -> usize {
        ((self.list_count() as f64).sqrt().ceil() as usize).max(1)
    }

    /// A filter in ids; `None` when a tag names a class no frame has
    /// (nothing matches).
    pub fn slot_filter(
        &self,
        streams: Option<Vec<u32>>,
        from_ns: Option<i64>,
        to_ns: Option<i64>,
        tags: &[(String, String)],
        min_tag_score: Option<f32>,
    ) -> Option<SlotFilter> {
        let tags = tags
            .iter()
            .map(|(set, class)| self.tags.condition(set, class))
            .collect::<Option<Vec<_>>>()?;
        Some(SlotFilter {
            streams: streams.map(|mut s| {
                s.sort_unstable();
                s
            }),
            from_ns: from_ns.unwrap_or(i64::MIN),
            to_ns: to_ns.unwrap_or(i64::MAX),
            tags,
            min_tag_score,
        })
    }

    /// The `want` best frames passing `filter` by approximate score,
    /// probing at least `probe` lists (0: [`IvfIndex::default_probe`]).
    pub fn search(
        &self,
        query: &[f32],
        filter: &SlotFilter,
        want: usize,
        probe: usize,
    ) -> Candidates {
        let mut q = vec![0i8; self.dim];
        codes::quantize(query, &mut q);
        let mut top = TopK::new(want);
        let probe = match probe {
            0 => self.default_probe(),
            n => n.min(self.list_count()),
        };
        let live = self.len();
        let probed = live * probe / self.list_count();
        let flat_max = FLAT_MIN.max(FLAT_FACTOR * probed);
        if filter.has_key_range()
            && let Some(slots) = self.key_range_slots(filter, flat_max)
        {
            let mut scored = 0;
            for &s in &slots {
                if filter.matches(self, s as usize) {
                    scored += 1;
                    top.offer(self.score(&q, s as usize), s);
                }
            }
            return self.candidates(top, Plan::Flat, scored);
        }
        let selectivity = if filter.is_everything() {
            1.0
        } else {
            self.selectivity(filter)
        };
        if selectivity * (live as f64) <= flat_max as f64 {
            let scored = (0..self.list_count())
                .map(|l| self.scan(&q, l, filter, &mut top))
                .sum();
            return self.candidates(top, Plan::Flat, scored);
        }
        // As many matching frames as the unfiltered probe scores (and at
        // least what was asked for). Scaling this down by the selectivity
        // loses recall when the filter correlates with the embeddings (a
        // camera's frames sit in its own lists, which a query from another
        // camera ranks low): the best matches lie beyond the first lists.
        // Twice that under a filter: the matches are spread over more lists,
        // so the lists that hold the best ones are ranked less reliably.
        let target = if filter.is_everything() {
            probed
        } else {
            FILTERED_PROBE_FACTOR * probed
        }
        .max(want);
        let mut scored = 0;
        for (i, list) in self.lists_by_score(query).into_iter().enumerate() {
            scored += self.scan(&q, list, filter, &mut top);
            if i + 1 >= probe && scored >= target {
                break;
            }
        }
        self.candidates(top, Plan::Probe, scored)
    }

    /// Offers the entries of list `l` passing `filter`, in the order they
    /// are stored (one sequential pass over its blocks); returns how many.
    fn scan(&self, q: &[i8], l: usize, filter: &SlotFilter, top: &mut TopK) -> usize {
        let list = &self.lists()[l];
        let everything = filter.is_everything();
        let mut scored = 0;
        for e in 0..list.len() {
            if everything || filter.matches_entry(self, list, e) {
                scored += 1;
                let score = codes::dot(q, list.code(e, self.dim)) as f32 * list.scales[e];
                top.offer(score, list.slots[e]);
            }
        }
        scored
    }

    fn score(&self, q: &[i8], slot: usize) -> f32 {
        codes::dot(q, self.code(slot)) as f32 * self.scale(slot)
    }

    /// The slots of the filter's cameras and time range, or `None` when
    /// there are more than `limit`.
    fn key_range_slots(&self, filter: &SlotFilter, limit: usize) -> Option<Vec<u32>> {
        let streams: Vec<u32> = match &filter.streams {
            Some(s) => s.clone(),
            None => self.stream_ids().collect(),
        };
        let mut out = Vec::new();
        for stream_id in streams {
            let (from, to) = (
                FrameKey {
                    stream_id,
                    ts_ns: filter.from_ns,
                },
                FrameKey {
                    stream_id,
                    ts_ns: filter.to_ns,
                },
            );
            for (_, &slot) in self.by_key().range(from..=to) {
                if out.len() == limit {
                    return None;
                }
                out.push(slot);
            }
        }
        Some(out)
    }

    /// Share of held frames passing `filter`, from an even sample of slots.
    fn selectivity(&self, filter: &SlotFilter) -> f64 {
        let n = self.slots();
        let step = (n / SELECTIVITY_SAMPLE).max(1);
        let (mut live, mut matched) = (0usize, 0usize);
        for s in (0..n).step_by(step) {
            if self.list_of[s] != NO_LIST {
                live += 1;
                matched += usize::from(filter.matches(self, s));
            }
        }
        if live == 0 {
            return 1.0;
        }
        matched as f64 / live as f64
    }

    /// List ids, nearest centroid first.
    fn lists_by_score(&self, query: &[f32]) -> Vec<usize> {
        if self.centroids.is_empty() {
            return vec![0];
        }
        let scores: Vec<f32> = self
            .centroids
            .chunks_exact(self.dim)
            .map(|c| codes::cosine(c, query))
            .collect();
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order
    }

    fn candidates(&self, top: TopK, plan: Plan, scored: usize) -> Candidates {
        Candidates {
            hits: top
                .into_sorted()
                .into_iter()
                .map(|(score, s)| (self.keys[s as usize], score))
                .collect(),
            plan,
            scored,
        }
    }
}

/// The best `k` (score, slot) pairs offered.
struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<(OrdF32, u32)>>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    fn offer(&mut self, score: f32, slot: u32) {
        if self.k == 0 || !score.is_finite() {
            return;
        }
        // Ties go to the higher slot, so the hits do not depend on the
        // order entries are scanned in (which a training's layout changes).
        if self.heap.len() == self.k
            && self
                .heap
                .peek()
                .is_some_and(|Reverse((min, min_slot))| (score, slot) <= (min.0, *min_slot))
        {
            return;
        }
        self.heap.push(Reverse((OrdF32(score), slot)));
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }

    /// Best first.
    fn into_sorted(self) -> Vec<(f32, u32)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse((s, slot))| (s.0, slot))
            .collect()
    }
}
