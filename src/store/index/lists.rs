//! One inverted list's members, stored with the list: their slots, int8
//! codes, scales and stream ids, each in one contiguous block. A probe of
//! a list so reads its codes sequentially; with the codes in slot order
//! (write order, cameras interleaved) a probe's codes were scattered over
//! the whole index, which cost twice as much per code at a million frames.
//!
//! Entries are unordered: a removal moves the last entry into the hole.

/// Members of one list, entry `e` at `e` (codes at `e * dim ..`).
#[derive(Debug, Clone, Default)]
pub struct List {
    /// Each entry's slot (its key and tags are per slot).
    pub(super) slots: Vec<u32>,
    pub(super) codes: Vec<i8>,
    pub(super) scales: Vec<f32>,
    /// Each entry's stream id, so a camera filter reads it beside the code.
    pub(super) streams: Vec<u32>,
}

/// A full list grows by this fraction of its length (not Vec's doubling,
/// which would leave up to half of every list's block unused after a
/// training lays the lists out at their exact sizes).
const GROWTH_DIVISOR: usize = 4;
/// ... and by at least this many entries.
const MIN_GROWTH: usize = 16;

impl List {
    /// An empty list with room for `n` entries of `dim` values.
    pub fn with_capacity(n: usize, dim: usize) -> Self {
        Self {
            slots: Vec::with_capacity(n),
            codes: Vec::with_capacity(n * dim),
            scales: Vec::with_capacity(n),
            streams: Vec::with_capacity(n),
        }
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Code of entry `e`.
    pub fn code(&self, e: usize, dim: usize) -> &[i8] {
        &self.codes[e * dim..(e + 1) * dim]
    }

    /// Appends an entry; returns its position.
    pub fn push(&mut self, slot: u32, stream: u32, code: &[i8], scale: f32) -> u32 {
        let n = self.slots.len();
        if n == self.slots.capacity() {
            let more = (n / GROWTH_DIVISOR).max(MIN_GROWTH);
            self.slots.reserve_exact(more);
            self.codes.reserve_exact(more * code.len());
            self.scales.reserve_exact(more);
            self.streams.reserve_exact(more);
        }
        self.slots.push(slot);
        self.codes.extend_from_slice(code);
        self.scales.push(scale);
        self.streams.push(stream);
        n as u32
    }

    /// Replaces entry `e`'s code and scale.
    pub fn set(&mut self, e: usize, code: &[i8], scale: f32) {
        let dim = code.len();
        self.codes[e * dim..(e + 1) * dim].copy_from_slice(code);
        self.scales[e] = scale;
    }

    /// Removes entry `e` (the last entry takes its place); returns the slot
    /// now at `e`, if one moved there.
    pub fn swap_remove(&mut self, e: usize, dim: usize) -> Option<u32> {
        let last = self.slots.len() - 1;
        if e != last {
            self.codes
                .copy_within(last * dim..(last + 1) * dim, e * dim);
        }
        self.codes.truncate(last * dim);
        self.slots.swap_remove(e);
        self.scales.swap_remove(e);
        self.streams.swap_remove(e);
        (e != last).then(|| self.slots[e])
    }

    /// Bytes its blocks take (capacity, not length).
    pub fn memory_bytes(&self) -> usize {
        self.codes.capacity()
            + (self.slots.capacity() + self.scales.capacity() + self.streams.capacity()) * 4
    }
}
