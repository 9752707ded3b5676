//! Which access units of a file the decoder needs, decided a group of
//! pictures (GOP) at a time before decoding.
//!
//! Sampling keeps the first frame at or after each grid step, and most
//! frames are never sampled. A picture has to be decoded only when it is
//! sampled or a sampled picture may depend on it. So the planner holds the
//! compressed units of a GOP (decode order) until the next keyframe shows
//! where it ends, runs the sampler over their presentation times, and lets
//! through:
//! - the sampled pictures;
//! - every reference picture up to the last sampled one in decode order
//!   (which of them a picture references is not read, so all are kept);
//! - every reference picture of the GOP when the next keyframe is not an
//!   IDR (an open GOP: the next one's leading pictures may reference them).
//!
//! Nothing else is decoded: non-reference pictures that are not sampled,
//! the reference pictures after the last sampled one of a closed GOP, and
//! whole GOPs without a sampled picture. The decoded frames keep the exact
//! pixels of a full decode, and the sampler downstream, which sees a
//! superset of the sampled frames, keeps exactly the frames it keeps on a
//! full decode.
//!
//! The same planning serves `fast` (non-reference pictures are never
//! candidates) and `keyframes` (only keyframes are, each decided alone).

use super::config::DecodeMode;
use super::sampler::FrameSampler;

/// Most units held for one GOP; a longer GOP is decoded whole from there
/// (a camera with a keyframe every few minutes must not pile up memory).
pub const MAX_HELD_UNITS: usize = 1024;

/// What an access unit is to the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// A keyframe; `idr`: nothing after it references what came before
    /// (H.264/H.265 IDR), so it closes the GOP before it.
    Key { idr: bool },
    /// A picture others may reference.
    Reference,
    /// A picture no other picture references.
    NonReference,
    /// Not a picture (parameter sets, SEI only) or unreadable: always
    /// sent, never sampled.
    Other,
}

/// One compressed access unit and what the planner needs of it.
#[derive(Debug)]
pub struct Unit<T> {
    /// What goes to the decoder (a `gst::Buffer`).
    pub payload: T,
    /// Presentation time, ns; none: the GOP is decoded whole.
    pub pts_ns: Option<u64>,
    pub kind: UnitKind,
}

/// Counts of what the planner decided, for `/health` and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PlanCounts {
    /// Units sent to the decoder.
    pub decoded: u64,
    /// Units dropped before the decoder.
    pub skipped: u64,
}

/// Decides, a GOP at a time, which units reach the decoder.
#[derive(Debug)]
pub struct GopPlanner<T> {
    mode: DecodeMode,
    /// The sampler's state over every picture seen (decoded or not).
    sampler: FrameSampler,
    held: Vec<Unit<T>>,
    /// The current GOP is sent as it comes (its start was not seen, it
    /// outgrew [`MAX_HELD_UNITS`], or the stream changed inside it); the
    /// presentation times of its candidates wait here for the sampler.
    passed_pts: Option<Vec<u64>>,
    /// Latest presentation time of the GOPs decided so far.
    last_pts: Option<u64>,
    /// GOPs still to send whole from the next keyframe on.
    whole_gops: usize,
    counts: PlanCounts,
}

impl<T> GopPlanner<T> {
    /// A planner for `mode` whose sampler starts where the downstream
    /// sampler starts (`FrameSampler::new` or `resume_after`).
    pub fn new(mode: DecodeMode, sampler: FrameSampler) -> Self {
        Self {
            mode,
            sampler,
            held: Vec::new(),
            // Until the first keyframe: nothing before it can be planned.
            passed_pts: Some(Vec::new()),
            last_pts: None,
            whole_gops: 0,
            counts: PlanCounts::default(),
        }
    }

    /// Sends the first `n` GOPs whole. A decoder that has decoded nothing
    /// yet has no output caps, and decodebin may wait for them before it
    /// lets the demuxer go on: holding the first GOP could stall a file
    /// with an audio track.
    pub fn with_whole_gops(mut self, n: usize) -> Self {
        self.whole_gops = n;
        self
    }

    pub fn counts(&self) -> PlanCounts {
        self.counts
    }

    /// Takes the next unit (decode order); returns what to send to the
    /// decoder now, in order.
    pub fn push(&mut self, unit: Unit<T>) -> Vec<T> {
        let mut out = Vec::new();
        if let UnitKind::Key { idr } = unit.kind {
            self.close_gop(idr, &mut out);
            self.passed_pts = match self.whole_gops {
                0 => None,
                n => {
                    self.whole_gops = n - 1;
                    Some(Vec::new())
                }
            };
        }
        match self.mode {
            DecodeMode::Keyframes => self.decide_keyframe(unit, &mut out),
            DecodeMode::Fast if unit.kind == UnitKind::NonReference => self.skip(),
            _ if self.passed_pts.is_some() => {
                self.note_passed(&unit);
                self.send(unit.payload, &mut out);
            }
            _ => {
                self.held.push(unit);
                if self.held.len() >= MAX_HELD_UNITS {
                    self.release_held(&mut out);
                }
            }
        }
        out
    }

    /// The end of the stream: decides the last GOP.
    pub fn finish(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        self.close_gop(true, &mut out);
        self.passed_pts = Some(Vec::new());
        out
    }

    /// Sends what is held as it is, and the rest of this GOP too (the
    /// stream changes here: new caps or segment).
    pub fn release(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        self.release_held(&mut out);
        out
    }

    /// A flush (seek): what is held is dropped; the sampler keeps its state
    /// as the downstream one does.
    pub fn flush(&mut self) {
        self.held.clear();
        self.passed_pts = Some(Vec::new());
    }

    fn send(&mut self, payload: T, out: &mut Vec<T>) {
        self.counts.decoded += 1;
        out.push(payload);
    }

    fn skip(&mut self) {
        self.counts.skipped += 1;
    }

    /// Whether `unit` may be sampled in this mode.
    fn candidate(&self, kind: UnitKind) -> bool {
        match self.mode {
            _ if kind == UnitKind::Other => false,
            DecodeMode::Exact => true,
            DecodeMode::Fast => kind != UnitKind::NonReference,
            DecodeMode::Keyframes => matches!(kind, UnitKind::Key { .. }),
        }
    }

    fn note_passed(&mut self, unit: &Unit<T>) {
        let candidate = self.candidate(unit.kind);
        if let (Some(pts), Some(passed), true) = (unit.pts_ns, self.passed_pts.as_mut(), candidate)
        {
            passed.push(pts);
        }
    }

    fn release_held(&mut self, out: &mut Vec<T>) {
        let held = std::mem::take(&mut self.held);
        self.passed_pts.get_or_insert_with(Vec::new);
        for unit in held {
            self.note_passed(&unit);
            self.send(unit.payload, out);
        }
    }

    /// Keyframes mode: each keyframe is decoded when the sampler takes it.
    fn decide_keyframe(&mut self, unit: Unit<T>, out: &mut Vec<T>) {
        let take = match (unit.kind, unit.pts_ns) {
            (UnitKind::Key { .. }, Some(pts)) => self.sampler.accept(pts),
            (UnitKind::Key { .. }, None) | (UnitKind::Other, _) => true,
            _ => false,
        };
        if take {
            self.send(unit.payload, out);
        } else {
            self.skip();
        }
    }

    /// Decides the GOP that a keyframe (`next_idr`: an IDR, or the end of
    /// the stream) closes.
    fn close_gop(&mut self, next_idr: bool, out: &mut Vec<T>) {
        if let Some(mut passed) = self.passed_pts.take() {
            // Sent whole: the sampler still has to see its pictures.
            passed.sort_unstable();
            for pts in passed {
                self.sampler.accept(pts);
                self.last_pts = self.last_pts.max(Some(pts));
            }
        }
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let mut candidates: Vec<(u64, usize)> = Vec::with_capacity(held.len());
        let mut plannable = true;
        for (i, unit) in held.iter().enumerate() {
            match unit.pts_ns {
                Some(pts) if self.candidate(unit.kind) => candidates.push((pts, i)),
                Some(_) => {}
                None => plannable = false,
            }
        }
        candidates.sort_unstable();
        // Presentation times must come after the GOPs before, or the
        // sampler here would not see pictures in the order it does below.
        if let (Some(&(first, _)), Some(last)) = (candidates.first(), self.last_pts) {
            plannable &= first > last;
        }
        let mut sampled = vec![false; held.len()];
        for &(pts, i) in &candidates {
            sampled[i] = self.sampler.accept(pts);
            self.last_pts = self.last_pts.max(Some(pts));
        }
        let last_sampled = sampled.iter().rposition(|&s| s);
        for (i, unit) in held.into_iter().enumerate() {
            let needed = !plannable
                || sampled[i]
                || unit.kind == UnitKind::Other
                || (self.mode != DecodeMode::Keyframes
                    && unit.kind != UnitKind::NonReference
                    && (!next_idr || last_sampled.is_some_and(|l| i < l)));
            if needed {
                self.send(unit.payload, out);
            } else {
                self.skip();
            }
        }
    }
}

#[cfg(test)]
#[path = "gop_tests.rs"]
mod tests;
