//! The index proper, in memory and free of sled: the int8 code of every
//! embedding of one model, its frame key and tags, in inverted lists (the
//! cells of spherical k-means). A search scores the lists nearest the query
//! (see `plan`); the store re-ranks what it finds with the exact embeddings.
//!
//! Embeddings live in slots. A frame written again keeps its slot (replay
//! is idempotent); a removed frame's slot is reused. A slot's key and tags
//! are per slot; its code, scale and stream id sit in its list's blocks
//! (see `lists`), at `pos_of[slot]`. Writes append to their list; a
//! training lays every list out again at its exact size.
//! Below [`TRAIN_MIN`] embeddings there is one list and no centroids: a
//! scan of everything is as fast as probing. From there the lists are
//! trained again whenever their count should grow by a sixteenth, or the
//! index has doubled (see [`IvfIndex::needs_training`]: the lists written
//! stay close to those a rebuild trains), in the background
//! (`begin_training` .. `finish_training`): writes go on meanwhile and the
//! slots they touch are assigned again at the end.

use std::collections::BTreeMap;
use std::ops::Range;

use super::codes;
use super::kmeans;
use super::lists::List;
use super::tags::TagTable;
use crate::store::{FrameKey, TagRecord};

/// `list_of` of a free slot.
pub const NO_LIST: u32 = u32::MAX;
/// Embeddings before lists are trained (a scan of this many int8 codes
/// takes about a millisecond).
pub const TRAIN_MIN: usize = 16_384;
/// Most lists: assigning N embeddings costs N x lists x dim operations.
pub const MAX_LISTS: usize = 2048;
/// Lists are trained again when [`IvfIndex::lists_for`] the held
/// embeddings exceeds their count by this factor: about every 13% of
/// growth. A training costs n x lists (n^1.5), so all of them together
/// cost about 6x the last one (1.5x when doubling), and a store never has
/// more than 6% fewer lists than a rebuild would give it. At 1M frames
/// (`bench search`) 1.125 left 1812 lists, 1.0625 1893-1966, a rebuild
/// 2000; reopened, the lists as written searched as fast as a rebuild's.
pub const LIST_GROWTH: f64 = 1.0625;
/// Training rows per list (k-means on a sample: the cells do not need
/// every embedding).
const SAMPLE_PER_LIST: usize = 32;

/// The in-memory index of one model's embeddings.
#[derive(Debug, Clone)]
pub struct IvfIndex {
    pub(super) dim: usize,
    /// Per slot: its frame.
    pub(super) keys: Vec<FrameKey>,
    /// Per slot: its list, or [`NO_LIST`] when free.
    pub(super) list_of: Vec<u32>,
    /// Per held slot: its entry in its list.
    pub(super) pos_of: Vec<u32>,
    /// Per slot: top class of each label set.
    pub(super) tags: TagTable,
    /// `list * dim ..`: unit centroids; empty while untrained (one list).
    pub(super) centroids: Vec<f32>,
    /// Embeddings the lists were trained on (0: untrained).
    pub(super) trained_for: usize,
    lists: Vec<List>,
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
            keys: Vec::new(),
            list_of: Vec::new(),
            pos_of: Vec::new(),
            tags: TagTable::default(),
            centroids: Vec::new(),
            trained_for: 0,
            lists: vec![List::default()],
            by_key: BTreeMap::new(),
            streams: BTreeMap::new(),
            free: Vec::new(),
            moved: None,
        }
    }

    /// An index from its stored arrays (see `file`): per slot its key,
    /// list and tags; per list its entries (their streams are filled in
    /// here). Key map and free slots are derived. Errors say what does not
    /// fit.
    pub fn from_parts(
        dim: usize,
        keys: Vec<FrameKey>,
        list_of: Vec<u32>,
        tags: TagTable,
        centroids: Vec<f32>,
        trained_for: usize,
        mut lists: Vec<List>,
    ) -> Result<Self, String> {
        let n = keys.len();
        if dim == 0 || list_of.len() != n || tags.rows != n {
            return Err(format!("arrays do not fit {n} slots"));
        }
        if !centroids.len().is_multiple_of(dim) || lists.len() != (centroids.len() / dim).max(1) {
            return Err("centroids do not fit the lists".into());
        }
        let mut pos_of = vec![NO_LIST; n];
        for (l, list) in lists.iter_mut().enumerate() {
            let e = list.len();
            if list.codes.len() != e * dim || list.scales.len() != e {
                return Err(format!("list {l}'s arrays do not fit {e} entries"));
            }
            list.streams.clear();
            for (p, &slot) in list.slots.iter().enumerate() {
                let s = slot as usize;
                if list_of.get(s) != Some(&(l as u32)) || pos_of[s] != NO_LIST {
                    return Err(format!("slot {slot} does not belong in list {l}"));
                }
                pos_of[s] = p as u32;
                list.streams.push(keys[s].stream_id);
            }
        }
        let mut index = Self {
            dim,
            keys,
            list_of,
            pos_of,
            tags,
            centroids,
            trained_for,
            lists,
            ..Self::new(dim)
        };
        for slot in 0..n {
            let key = index.keys[slot];
            if index.list_of[slot] == NO_LIST {
                index.free.push(slot as u32);
            } else if index.pos_of[slot] == NO_LIST {
                return Err(format!("slot {slot} is in no list"));
            } else {
                if index.by_key.insert(key, slot as u32).is_some() {
                    return Err(format!("frame {key:?} in two slots"));
                }
                *index.streams.entry(key.stream_id).or_default() += 1;
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
        self.lists.iter().map(List::memory_bytes).sum::<usize>()
            + n * (std::mem::size_of::<FrameKey>() + 4 + 4)
            + self.tags.class.len() * 6
            + self.centroids.len() * 4
            + self.by_key.len() * (std::mem::size_of::<FrameKey>() + 4) * 3 / 2
    }

    /// Stores (or replaces) the embeddings and tags of frames.
    pub fn upsert(&mut self, frames: &[(FrameKey, &[f32], &TagRecord)]) {
        let lists = self.nearest_lists(frames.iter().map(|f| f.1));
        let mut code = vec![0i8; self.dim];
        for (&(key, embedding, tags), list) in frames.iter().zip(lists) {
            let scale = codes::quantize(embedding, &mut code);
            self.put(key, &code, scale, tags, list);
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
        self.unlist(slot);
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

    fn put(&mut self, key: FrameKey, code: &[i8], scale: f32, tags: &TagRecord, list: u32) {
        let slot = match self.by_key.get(&key) {
            Some(&slot) if self.list_of[slot as usize] == list => {
                // Same list: the entry keeps its place.
                let s = slot as usize;
                self.lists[list as usize].set(self.pos_of[s] as usize, code, scale);
                slot
            }
            Some(&slot) => {
                self.unlist(slot);
                self.enlist(slot, key.stream_id, code, scale, list);
                slot
            }
            None => {
                let slot = self.allocate(key);
                self.enlist(slot, key.stream_id, code, scale, list);
                slot
            }
        };
        self.tags.set_row(slot as usize, tags);
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
                self.list_of.push(NO_LIST);
                self.pos_of.push(NO_LIST);
                self.tags.resize(slot + 1);
                slot as u32
            }
        };
        self.keys[slot as usize] = key;
        self.by_key.insert(key, slot);
        *self.streams.entry(key.stream_id).or_default() += 1;
        slot
    }

    /// Appends a free slot's entry to `list`.
    fn enlist(&mut self, slot: u32, stream: u32, code: &[i8], scale: f32, list: u32) {
        let s = slot as usize;
        self.pos_of[s] = self.lists[list as usize].push(slot, stream, code, scale);
        self.list_of[s] = list;
    }

    /// Takes a held slot's entry out of its list (the slot is then free).
    fn unlist(&mut self, slot: u32) {
        let s = slot as usize;
        let (list, pos) = (self.list_of[s], self.pos_of[s]);
        if let Some(l) = self.lists.get_mut(list as usize)
            && let Some(moved) = l.swap_remove(pos as usize, self.dim)
        {
            self.pos_of[moved as usize] = pos;
        }
        self.list_of[s] = NO_LIST;
        self.pos_of[s] = NO_LIST;
    }

    fn nearest_lists<'a>(&self, embeddings: impl Iterator<Item = &'a [f32]>) -> Vec<u32> {
        let rows: Vec<f32> = embeddings.flat_map(|e| e.iter().copied()).collect();
        if self.centroids.is_empty() {
            return vec![0; rows.len() / self.dim];
        }
        kmeans::nearest(&rows, &self.centroids, self.dim)
    }

    /// Code of a held slot.
    pub(super) fn code(&self, slot: usize) -> &[i8] {
        self.lists[self.list_of[slot] as usize].code(self.pos_of[slot] as usize, self.dim)
    }

    /// Scale of a held slot's code.
    pub(super) fn scale(&self, slot: usize) -> f32 {
        self.lists[self.list_of[slot] as usize].scales[self.pos_of[slot] as usize]
    }

    pub(super) fn lists(&self) -> &[List] {
        &self.lists
    }

    pub(super) fn by_key(&self) -> &BTreeMap<FrameKey, u32> {
        &self.by_key
    }

    pub(super) fn stream_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.streams.keys().copied()
    }

    /// Whether the lists should be trained (again): enough embeddings, and
    /// either the list count [`IvfIndex::lists_for`] them has grown by
    /// [`LIST_GROWTH`] (lists grown too long make every probe score more
    /// codes: at 1M frames, lists trained at half that scored 1.5x the
    /// codes of a rebuild) or, once that count is capped, the index has
    /// doubled (so the centroids follow what is stored).
    pub fn needs_training(&self) -> bool {
        // Untrained: one list, and `lists_for(TRAIN_MIN)` is 256.
        let n = self.len();
        let grown = Self::lists_for(n) as f64 >= self.list_count() as f64 * LIST_GROWTH;
        n >= TRAIN_MIN && (grown || n >= 2 * self.trained_for)
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
            codes::dequantize(self.code(s), self.scale(s), row);
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
            if self.list_of[s] != NO_LIST {
                codes::dequantize(self.code(s), self.scale(s), row);
            }
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
        // Free slots (removed meanwhile) are left out below.
        again.retain(|&s| self.list_of[s] != NO_LIST);
        let mut rows = vec![0f32; again.len() * self.dim];
        for (row, &s) in rows.chunks_exact_mut(self.dim).zip(&again) {
            codes::dequantize(self.code(s), self.scale(s), row);
        }
        for (&s, l) in again
            .iter()
            .zip(kmeans::nearest(&rows, &centroids, self.dim))
        {
            assignment[s] = l;
        }
        self.centroids = centroids;
        self.lay_out(assignment);
        self.trained_for = self.len();
    }

    /// Moves every held slot's entry to its list in `assignment` (one per
    /// slot; [`NO_LIST`] for free slots), each list one block of its exact
    /// size. The old lists are freed one by one as they are read (a copy
    /// of the codes, 0.5 GB at a million frames, under the write lock,
    /// once per training).
    pub(super) fn lay_out(&mut self, assignment: Vec<u32>) {
        let lists = (self.centroids.len() / self.dim).max(1);
        let mut sizes = vec![0usize; lists];
        for (s, &l) in assignment.iter().enumerate() {
            if self.list_of[s] != NO_LIST {
                sizes[l as usize] += 1;
            }
        }
        let mut new: Vec<List> = sizes
            .iter()
            .map(|&n| List::with_capacity(n, self.dim))
            .collect();
        for old in std::mem::take(&mut self.lists) {
            for (e, &slot) in old.slots.iter().enumerate() {
                let (s, l) = (slot as usize, assignment[slot as usize]);
                self.pos_of[s] = new[l as usize].push(
                    slot,
                    old.streams[e],
                    old.code(e, self.dim),
                    old.scales[e],
                );
                self.list_of[s] = l;
            }
        }
        self.lists = new;
    }

    /// Gives up a training (the slots written are no longer remembered).
    pub fn abort_training(&mut self) {
        self.moved = None;
    }
}
