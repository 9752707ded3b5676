//! The rig assembler: joins the sampled frames of a rig's cameras into rig
//! records (pure; the pipeline feeds it and stores what it emits).
//!
//! Each anchor frame opens a record. Every other role contributes its
//! sampled frame nearest to the anchor's time within the tolerance, or is
//! absent: a view is never invented. A record is emitted as soon as every
//! other role is *resolved* for it: its newest frame is at or after the
//! anchor time (frames of one camera arrive in time order, so no nearer
//! one can come), or its source ended. That makes a replay's records depend
//! only on the frames' times, not on how fast each file decodes: a resumed
//! replay gives the same records as an uninterrupted one. Live rigs also
//! have a deadline (`max_wait`), so a camera that stalls without ending
//! never blocks the others; a frame that arrives after its record was
//! written is counted as late (it is still stored as a frame).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::config::RigLayout;

/// Frames a role may hold while it waits for anchor frames (a camera far
/// ahead of the anchor); the oldest beyond it are dropped, counted.
pub const MAX_BUFFERED_FRAMES: usize = 4096;
/// Records that may wait for their views; the oldest beyond it are
/// written with the views they have.
pub const MAX_PENDING_RECORDS: usize = 4096;
/// Emitted records remembered to recognise late frames.
const LATE_WINDOW: usize = 64;

/// A sampled, embedded frame of one role.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewFrame {
    /// Store id of its camera.
    pub stream_id: u32,
    /// Frame time, ns since the epoch (the frame key's time).
    pub ts_ns: i64,
    /// Pts in its source, ns.
    pub pts_ns: u64,
    /// Its L2-normalised CLIP image embedding.
    pub embedding: Arc<[f32]>,
}

/// Why a record was written when it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordClose {
    /// Every role is present.
    Complete,
    /// Every missing role has moved past the anchor time (or ended).
    ViewsPassed,
    /// A live record waited `max_wait` for its views.
    Deadline,
    /// The pipeline is ending, or too many records were waiting.
    Flush,
}

/// One assembled rig record, ready to be fused and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AssembledRig {
    /// The anchor frame's time: the record's time.
    pub anchor_ns: i64,
    /// Per role of the layout, in its order: the matched frame or absent.
    pub views: Vec<Option<ViewFrame>>,
    /// Why it was written.
    pub closed_by: RecordClose,
    /// How long it waited for its views after its anchor frame came.
    pub waited: std::time::Duration,
}

impl AssembledRig {
    /// Whether a role is missing.
    pub fn is_partial(&self) -> bool {
        self.views.iter().any(Option::is_none)
    }
}

/// What the assembler has done so far.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RigCounters {
    /// Records emitted.
    pub records: u64,
    /// Of those, records with a role missing.
    pub partial: u64,
    /// Per role: records it was missing from.
    pub missing: Vec<u64>,
    /// Frames that arrived after the record they would have joined.
    pub late: u64,
    /// Frames dropped from a full buffer.
    pub overflow: u64,
}

#[derive(Debug, Default)]
struct RoleState {
    /// Frames not yet too old for any future anchor, in time order.
    frames: VecDeque<ViewFrame>,
    /// Newest frame time seen.
    watermark: Option<i64>,
    /// The role's source ended: it delivers nothing until a new frame.
    ended: bool,
}

/// The assembler of one rig.
#[derive(Debug)]
pub struct RigAssembler {
    layout: Arc<RigLayout>,
    roles: Vec<RoleState>,
    /// Anchor frames waiting for their views, with their arrival.
    pending: VecDeque<(ViewFrame, Instant)>,
    /// Recently emitted records: anchor time and each role's frame time.
    emitted: VecDeque<(i64, Vec<Option<i64>>)>,
    counters: RigCounters,
}

impl RigAssembler {
    /// An empty assembler for `layout`.
    pub fn new(layout: Arc<RigLayout>) -> Self {
        let n = layout.roles.len();
        Self {
            roles: (0..n).map(|_| RoleState::default()).collect(),
            counters: RigCounters {
                missing: vec![0; n],
                ..Default::default()
            },
            layout,
            pending: VecDeque::new(),
            emitted: VecDeque::new(),
        }
    }

    /// The rig.
    pub fn layout(&self) -> &Arc<RigLayout> {
        &self.layout
    }

    /// What it has done so far.
    pub fn counters(&self) -> &RigCounters {
        &self.counters
    }

    /// Records waiting for their views.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Time of the oldest waiting record.
    pub fn oldest_pending_ns(&self) -> Option<i64> {
        self.pending.front().map(|(f, _)| f.ts_ns)
    }

    /// A frame of `role`; returns the records it completes.
    pub fn push(&mut self, role: usize, frame: ViewFrame, now: Instant) -> Vec<AssembledRig> {
        let mut out = Vec::new();
        let anchor = self.layout.anchor;
        let state = &mut self.roles[role];
        state.ended = false;
        if role == anchor {
            if state.watermark.is_some_and(|w| frame.ts_ns <= w) {
                // The anchor went back in time (another recording): what
                // waits belongs to the old one.
                self.flush_into(now, &mut out);
            }
            self.pending.push_back((frame.clone(), now));
        } else {
            if self.is_late(role, frame.ts_ns) {
                self.counters.late += 1;
            }
            let frames = &mut self.roles[role].frames;
            let at = frames.partition_point(|f| f.ts_ns <= frame.ts_ns);
            frames.insert(at, frame.clone());
            if frames.len() > MAX_BUFFERED_FRAMES {
                frames.pop_front();
                self.counters.overflow += 1;
            }
        }
        let state = &mut self.roles[role];
        state.watermark = Some(state.watermark.map_or(frame.ts_ns, |w| w.max(frame.ts_ns)));
        while self.pending.len() > MAX_PENDING_RECORDS {
            self.emit_front(RecordClose::Flush, now, &mut out);
        }
        self.emit_ready(now, &mut out);
        out
    }

    /// `role`'s source ended: records stop waiting for it.
    pub fn role_ended(&mut self, role: usize, now: Instant) -> Vec<AssembledRig> {
        self.roles[role].ended = true;
        let mut out = Vec::new();
        self.emit_ready(now, &mut out);
        out
    }

    /// Records whose deadline passed (live rigs only).
    pub fn poll(&mut self, now: Instant) -> Vec<AssembledRig> {
        let mut out = Vec::new();
        self.emit_ready(now, &mut out);
        out
    }

    /// Every waiting record, with the views it has (the pipeline ends).
    pub fn finish(&mut self) -> Vec<AssembledRig> {
        let mut out = Vec::new();
        self.flush_into(Instant::now(), &mut out);
        out
    }

    /// When the oldest waiting record of a live rig is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (_, arrived) = self.pending.front()?;
        self.layout.live.then(|| *arrived + self.layout.max_wait)
    }

    fn flush_into(&mut self, now: Instant, out: &mut Vec<AssembledRig>) {
        while !self.pending.is_empty() {
            self.emit_front(RecordClose::Flush, now, out);
        }
    }

    fn emit_ready(&mut self, now: Instant, out: &mut Vec<AssembledRig>) {
        while let Some((front, arrived)) = self.pending.front() {
            let at = front.ts_ns;
            let resolved = self.roles.iter().enumerate().all(|(r, s)| {
                r == self.layout.anchor || s.ended || s.watermark.is_some_and(|w| w >= at)
            });
            if resolved {
                self.emit_front(RecordClose::ViewsPassed, now, out);
            } else if self.layout.live && now.duration_since(*arrived) >= self.layout.max_wait {
                self.emit_front(RecordClose::Deadline, now, out);
            } else {
                break;
            }
        }
        self.prune();
    }

    fn emit_front(&mut self, reason: RecordClose, now: Instant, out: &mut Vec<AssembledRig>) {
        let Some((anchor_frame, arrived)) = self.pending.pop_front() else {
            return;
        };
        let at = anchor_frame.ts_ns;
        let tolerance = self.layout.tolerance_ns;
        let views: Vec<Option<ViewFrame>> = self
            .roles
            .iter()
            .enumerate()
            .map(|(r, s)| {
                if r == self.layout.anchor {
                    return Some(anchor_frame.clone());
                }
                // Nearest within the tolerance; the earlier of two equals.
                s.frames
                    .iter()
                    .filter(|f| (f.ts_ns - at).abs() <= tolerance)
                    .min_by_key(|f| ((f.ts_ns - at).abs(), f.ts_ns))
                    .cloned()
            })
            .collect();
        let complete = views.iter().all(Option::is_some);
        self.counters.records += 1;
        if !complete {
            self.counters.partial += 1;
        }
        for (r, v) in views.iter().enumerate() {
            if v.is_none() {
                self.counters.missing[r] += 1;
            }
        }
        self.emitted.push_back((
            at,
            views.iter().map(|v| v.as_ref().map(|f| f.ts_ns)).collect(),
        ));
        if self.emitted.len() > LATE_WINDOW {
            self.emitted.pop_front();
        }
        out.push(AssembledRig {
            anchor_ns: at,
            views,
            closed_by: if complete {
                RecordClose::Complete
            } else {
                reason
            },
            waited: now.saturating_duration_since(arrived),
        });
    }

    /// Drops frames no future anchor can match: anchors arrive in time
    /// order, so none comes before the oldest waiting one (or the newest
    /// anchor seen).
    fn prune(&mut self) {
        let floor = match self.pending.front() {
            Some((f, _)) => f.ts_ns,
            None => match self.roles[self.layout.anchor].watermark {
                Some(w) => w,
                None => return,
            },
        } - self.layout.tolerance_ns;
        for (r, s) in self.roles.iter_mut().enumerate() {
            if r == self.layout.anchor {
                continue;
            }
            while s.frames.front().is_some_and(|f| f.ts_ns < floor) {
                s.frames.pop_front();
            }
        }
    }

    /// Whether a frame of `role` at `ts` would have joined a record already
    /// written, in place of an absent or farther view.
    fn is_late(&self, role: usize, ts: i64) -> bool {
        self.emitted.iter().any(|(at, views)| {
            let gap = (ts - at).abs();
            gap <= self.layout.tolerance_ns && views[role].is_none_or(|t| (t - at).abs() > gap)
        })
    }
}

#[cfg(test)]
#[path = "assembler_tests.rs"]
mod tests;
