//! The index proper, in memory and free of sled: the int8 code of every
//! embedding of one model, its frame key and tags, in inverted lists (the
//! cells of spherical k-means). A search scores the lists nearest the query
//! (see `plan`); the store re-ranks what it finds with the exact embeddings.
//!
//! Embeddings live in slots. A frame written again keeps its slot (replay
//! is idempotent); a removed frame's slot is reused. Lists hold slot ids.
//! Below [`TRAIN_MIN`] embeddings there is one list and no centroids: a
//! scan of everything is as fast as probing. From there the lists are
//! trained again whenever the index has doubled since the last training
//! (so the lists written stay close to those a rebuild trains; all the
//! trainings together cost about twice the last one), in the background
//! (`begin_training` .. `finish_training`): writes go on meanwhile and the
//! slots they touch are assigned again at the end.

use std::collections::BTreeMap;
use std::ops::Range;

use super::codes;
use super::kmeans;
use super::tags::TagTable;
use crate::store::{FrameKey, TagRecord};

/// `list_of` of a free slot.
pub const NO_LIST: u32 = u32::MAX;
/// Embeddings before lists are trained (a scan of this many int8 codes
/// takes about a millisecond).
pub const TRAIN_MIN: usize = 16_384;
/// Most lists: assigning N embeddings costs N x lists x dim operations.
pub const MAX_LISTS: usize = 2048;
/// Training rows per list (k-means on a sample: the cells do not need
/// every embedding).
const SAMPLE_PER_LIST: usize = 32;

/// The in-memory index of one model's embeddings.
#[derive(Debug, Clone)]
pub struct IvfIndex {
    pub(super) dim: usize,
    /// `slot * dim ..`: int8 code of the slot's embedding.
    pub(super) codes: Vec<i8>,
    /// Per slot: the scale of its code.
    pub(super) scales: Vec<f32>,
    /// Per slot: its frame.
    pub(super) keys: Vec<FrameKey>,
    /// Per slot: its stream id, a quarter of `keys`' size, so a camera
    /// filter checked on every frame a probe reads stays in cache.
    pub(super) stream_of: Vec<u32>,
    /// Per slot: its list, or [`NO_LIST`] when free.
    pub(super) list_of: Vec<u32>,
    /// Per slot: top class of each label set.
    pub(super) tags: TagTable,
    /// `list * dim ..`: unit centroids; empty while untrained (one list).
    pub(super) centroids: Vec<f32>,
    /// Embeddings the lists were trained on (0: untrained).
    pub(super) trained_for: usize,
    lists: Vec<Vec<u32>>,
    by_key: BTreeMap<FrameKey, u32>,
    /// Live slots per stream id.
    streams: BTreeMap<u32, usize>,
    free: Vec<u32>,
    /// Slots written since `begin_training` (assigned again at the end).
    moved: Option<Vec<u32>>,
}

/// What a background training needs from the index.
#[derive(Debug)]
pub struct TrainingStart {
    /// Sample rows (dequantised codes), `dim` floats each.
    pub sample: Vec<f32>,
    /// Lists to train.
    pub lists: usize,
    /// Slots when it started (`assign` them in ranges).
    pub slots: usize,
}

impl IvfIndex {
    /// An empty, untrained index.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            codes: Vec::new(),
            scales: Vec::new(),
            keys: Vec::new(),
            stream_of: Vec::new(),
            list_of: Vec::new(),
            tags: TagTable::default(),
            centroids: Vec::new(),
            trained_for: 0,
            lists: vec![Vec::new()],
            by_key: BTreeMap::new(),
            streams: BTreeMap::new(),
            free: Vec::new(),
            moved: None,
        }
    }

    /// An index from its stored arrays (see `file`); lists, keys and free
    /// slots are derived. Errors say which array does not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        dim: usize,
        codes: Vec<i8>,
        scales: Vec<f32>,
        keys: Vec<FrameKey>,
        list_of: Vec<u32>,
        tags: TagTable,
        centroids: Vec<f32>,
        trained_for: usize,
    ) -> Result<Self, String> {
        let n = keys.len();
        let lists = (centroids.len() / dim.max(1)).max(1);
        if dim == 0 || codes.len() != n * dim || scales.len() != n || list_of.len() != n {
            return Err(format!("arrays do not fit {n} slots of {dim} values"));
        }
        if !centroids.len().is_multiple_of(dim) || tags.rows != n {
            return Err("centroids or tag rows do not fit".into());
        }
        if let Some(l) = list_of
            .iter()
            .find(|&&l| l != NO_LIST && l as usize >= lists)
        {
            return Err(format!("list {l} of {lists}"));
        }
        let mut index = Self {
            dim,
            codes,
            scales,
            stream_of: keys.iter().map(|k| k.stream_id).collect(),
            keys,
            list_of,
            tags,
            centroids,
            trained_for,
            ..Self::new(dim)
        };
        index.lists = vec![Vec::new(); lists];
        for slot in 0..n {
            let key = index.keys[slot];
            match index.list_of[slot] {
                NO_LIST => index.free.push(slot as u32),
                l => {
                    if index.by_key.insert(key, slot as u32).is_some() {
                        return Err(format!("frame {key:?} in two slots"));
                    }
                    index.lists[l as usize].push(slot as u32);
                    *index.streams.entry(key.stream_id).or_default() += 1;
                }
            }
        }
        // Reuse the lowest free slots first, as a fresh index would.
        index.free.reverse();
        Ok(index)
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeddings held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Slots (held and free).
    pub fn slots(&self) -> usize {
        self.keys.len()
    }

    /// Inverted lists (1 while untrained).
    pub fn list_count(&self) -> usize {
        self.lists.len()
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &FrameKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Memory the arrays take, bytes (what the index file holds, plus the
    /// key map).
    pub fn memory_bytes(&self) -> usize {
        let n = self.slots();
        self.codes.len()
            + n * (4 + std::mem::size_of::<FrameKey>() + 4 + 4 + 4)
            + self.tags.class.len() * 6
            + self.centroids.len() * 4
            + self.by_key.len() * (std::mem::size_of::<FrameKey>() + 4) * 3 / 2
    }

    /// Stores (or replaces) the embeddings and tags of frames.
    pub fn upsert(&mut self, frames: &[(FrameKey, &[f32], &TagRecord)]) {
        let lists = self.nearest_lists(frames.iter().map(|f| f.1));
        for (&(key, embedding, tags), list) in frames.iter().zip(lists) {
            self.put(key, embedding, tags, list);
        }
    }

    /// Stores the frames not held yet (a rebuild: writes that happened
    /// since the rebuild read a frame are newer and stay). Returns how many.
    pub fn insert_absent(&mut self, frames: &[(FrameKey, &[f32], &TagRecord)]) -> usize {
        let absent: Vec<_> = frames
            .iter()
            .filter(|f| !self.by_key.contains_key(&f.0))
            .copied()
            .collect();
        self.upsert(&absent);
        absent.len()
    }

    /// Forgets a frame; false if it was not held.
    pub fn remove(&mut self, key: &FrameKey) -> bool {
        let Some(slot) = self.by_key.remove(key) else {
            return false;
        };
        let s = slot as usize;
        self.unlist(slot, self.list_of[s]);
        self.list_of[s] = NO_LIST;
        self.tags.clear_row(s);
        self.free.push(slot);
        if let Some(n) = self.streams.get_mut(&key.stream_id) {
            *n -= 1;
            if *n == 0 {
                self.streams.remove(&key.stream_id);
            }
        }
        if let Some(moved) = &mut self.moved {
            moved.push(slot);
        }
        true
    }

    fn put(&mut self, key: FrameKey, embedding: &[f32], tags: &TagRecord, list: u32) {
        let slot = match self.by_key.get(&key) {
            Some(&slot) => {
                let old = self.list_of[slot as usize];
                if old != list {
                    self.unlist(slot, old);
                    self.lists[list as usize].push(slot);
                }
                slot
            }
            None => {
                let slot = self.allocate(key);
                self.lists[list as usize].push(slot);
                slot
            }
        };
        let s = slot as usize;
        self.list_of[s] = list;
        self.scales[s] =
            codes::quantize(embedding, &mut self.codes[s * self.dim..(s + 1) * self.dim]);
        self.tags.set_row(s, tags);
        if let Some(moved) = &mut self.moved {
            moved.push(slot);
        }
    }

    fn allocate(&mut self, key: FrameKey) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.keys.len();
                self.keys.push(key);
                self.stream_of.push(key.stream_id);
                self.codes.resize((slot + 1) * self.dim, 0);
                self.scales.push(0.0);
                self.list_of.push(NO_LIST);
                self.tags.resize(slot + 1);
                slot as u32
            }
        };
        self.keys[slot as usize] = key;
        self.stream_of[slot as usize] = key.stream_id;
        self.by_key.insert(key, slot);
        *self.streams.entry(key.stream_id).or_default() += 1;
        slot
    }

    fn unlist(&mut self, slot: u32, list: u32) {
        if let Some(l) = self.lists.get_mut(list as usize)
            && let Some(p) = l.iter().position(|&s| s == slot)
        {
            l.swap_remove(p);
        }
    }

    fn nearest_lists<'a>(&self, embeddings: impl Iterator<Item = &'a [f32]>) -> Vec<u32> {
        let rows: Vec<f32> = embeddings.flat_map(|e| e.iter().copied()).collect();
        if self.centroids.is_empty() {
            return vec![0; rows.len() / self.dim];
        }
        kmeans::nearest(&rows, &self.centroids, self.dim)
    }

    pub(super) fn code(&self, slot: usize) -> &[i8] {
        &self.codes[slot * self.dim..(slot + 1) * self.dim]
    }

    pub(super) fn lists(&self) -> &[Vec<u32>] {
        &self.lists
    }

    pub(super) fn by_key(&self) -> &BTreeMap<FrameKey, u32> {
        &self.by_key
    }

    pub(super) fn stream_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.streams.keys().copied()
    }

    /// Whether the lists should be trained (again): enough embeddings, and
    /// twice those of the last training.
    pub fn needs_training(&self) -> bool {
        self.len() >= TRAIN_MIN && self.len() >= 2 * self.trained_for
    }

    /// Lists for `n` embeddings: about 2√n (lists of about √n / 2).
    pub fn lists_for(n: usize) -> usize {
        ((2.0 * (n as f64).sqrt()).round() as usize).clamp(1, MAX_LISTS)
    }

    /// Starts a training: a sample of the held embeddings, and from now on
    /// the slots written are remembered for [`IvfIndex::finish_training`].
    pub fn begin_training(&mut self) -> TrainingStart {
        self.moved = Some(Vec::new());
        let lists = Self::lists_for(self.len());
        let live: Vec<usize> = (0..self.slots())
            .filter(|&s| self.list_of[s] != NO_LIST)
            .collect();
        let want = (lists * SAMPLE_PER_LIST).min(live.len());
        let mut sample = vec![0f32; want * self.dim];
        for (i, row) in sample.chunks_exact_mut(self.dim).enumerate() {
            // Evenly spread over the slots (so over the store's history).
            let s = live[i * live.len() / want.max(1)];
            codes::dequantize(self.code(s), self.scales[s], row);
        }
        TrainingStart {
            sample,
            lists,
            slots: self.slots(),
        }
    }

    /// The nearest of `centroids` for the slots in `range` ([`NO_LIST`]
    /// for free slots). Called in ranges so writers get in between.
    pub fn assign(&self, centroids: &[f32], range: Range<usize>) -> Vec<u32> {
        let range = range.start..range.end.min(self.slots());
        let mut rows = vec![0f32; range.len() * self.dim];
        for (row, s) in rows.chunks_exact_mut(self.dim).zip(range.clone()) {
            codes::dequantize(self.code(s), self.scales[s], row);
        }
        let mut lists = kmeans::nearest(&rows, centroids, self.dim);
        for (l, s) in lists.iter_mut().zip(range) {
            if self.list_of[s] == NO_LIST {
                *l = NO_LIST;
            }
        }
        lists
    }

    /// Installs trained lists: `assignment` holds the list of each slot
    /// that existed at `begin_training`; slots written since are assigned
    /// here.
    pub fn finish_training(&mut self, centroids: Vec<f32>, mut assignment: Vec<u32>) {
        let moved = self.moved.take().unwrap_or_default();
        let from = assignment.len();
        assignment.resize(self.slots(), NO_LIST);
        let mut again: Vec<usize> = moved.into_iter().map(|s| s as usize).collect();
        again.extend(from..self.slots());
        again.sort_unstable();
        again.dedup();
        let mut rows = vec![0f32; again.len() * self.dim];
        for (row, &s) in rows.chunks_exact_mut(self.dim).zip(&again) {
            codes::dequantize(self.code(s), self.scales[s], row);
        }
        for (&s, l) in again
            .iter()
            .zip(kmeans::nearest(&rows, &centroids, self.dim))
        {
            assignment[s] = l;
        }
        let lists = centroids.len() / self.dim;
        self.lists = vec![Vec::new(); lists];
        for (s, l) in assignment.iter_mut().enumerate() {
            if self.list_of[s] == NO_LIST {
                *l = NO_LIST;
            } else {
                self.lists[*l as usize].push(s as u32);
            }
        }
        self.list_of = assignment;
        self.centroids = centroids;
        self.trained_for = self.len();
    }

    /// Gives up a training (the slots written are no longer remembered).
    pub fn abort_training(&mut self) {
        self.moved = None;
    }
}
