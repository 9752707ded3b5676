//! The rig stage of the worker: embedded frames of rig cameras -> rig
//! assemblers -> fused, tagged rig records, written with the batch that
//! completed them.
//!
//! After a restart the assemblers are fed again from the store: each
//! role's frames after the rig's newest record (minus the tolerance), so
//! records whose views were stored but which were not yet written are
//! written now, the same as an uninterrupted run would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::metrics;
use crate::fuse::assembler::{AssembledRig, RigAssembler, ViewFrame};
use crate::fuse::config::RigLayout;
use crate::fuse::fuser::RigFuser;
use crate::store::{RigRecord, RigView, RigWrite, SetTag, Store, StoreError, TagRecord};
use crate::tagging::SceneTagger;

/// How far back a rig without records is fed from the store at start.
const SEED_WINDOW_NS: i64 = 600_000_000_000;
/// Most frames per role fed from the store at start.
const SEED_MAX_FRAMES: usize = 4096;

/// A record emitted by one rig's assembler.
pub(super) type Emitted = (usize, AssembledRig);

/// How one rig is doing (`/health`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RigStatus {
    /// Rig name.
    pub rig: String,
    /// Anchor role.
    pub anchor: String,
    /// Roles, in order (`counters.missing` follows it).
    pub roles: Vec<String>,
    /// What fuses its records.
    pub fusion: String,
    /// Records written, partial, views missing per role, late frames.
    pub counters: crate::fuse::assembler::RigCounters,
    /// Records waiting for their views.
    pub pending: usize,
}

/// The rigs' statuses, shared by the worker (writer) and the API.
pub type RigStatusBoard = Arc<std::sync::RwLock<Vec<RigStatus>>>;

/// Every rig's assembler, and how their records are fused and tagged.
pub struct RigTracker {
    assemblers: Vec<RigAssembler>,
    rig_ids: Vec<u32>,
    /// Camera -> (rig, role).
    by_camera: HashMap<String, (usize, usize)>,
    fuser: RigFuser,
    tagger: Arc<SceneTagger>,
    /// Counts already turned into metrics, per rig: late frames.
    late_seen: Vec<u64>,
    /// Where the statuses are published.
    board: RigStatusBoard,
}

impl RigTracker {
    /// Assemblers for `layouts`, fed with what the store holds since each
    /// rig's newest record; the records that feeding completes go into
    /// `out`.
    pub fn start(
        setup: super::RigSetup,
        tagger: Arc<SceneTagger>,
        store: &Store,
        out: &mut Vec<RigWrite>,
    ) -> Result<Self, StoreError> {
        let super::RigSetup {
            layouts,
            fuser,
            status: board,
        } = setup;
        let mut tracker = Self {
            board,
            rig_ids: Vec::new(),
            by_camera: HashMap::new(),
            late_seen: vec![0; layouts.len()],
            assemblers: Vec::new(),
            fuser,
            tagger,
        };
        for (i, layout) in layouts.into_iter().enumerate() {
            tracker.rig_ids.push(store.rig_id(&layout.name)?);
            for (r, role) in layout.roles.iter().enumerate() {
                tracker.by_camera.insert(role.camera.clone(), (i, r));
            }
            tracker.assemblers.push(RigAssembler::new(Arc::new(layout)));
        }
        let mut emitted = Vec::new();
        for i in 0..tracker.assemblers.len() {
            tracker.seed(i, store, &mut emitted)?;
        }
        out.extend(tracker.writes(emitted));
        tracker.publish();
        Ok(tracker)
    }

    /// Publishes every rig's counters.
    fn publish(&self) {
        let statuses = self
            .assemblers
            .iter()
            .map(|a| {
                let layout = a.layout();
                RigStatus {
                    rig: layout.name.clone(),
                    anchor: layout.anchor_role().to_string(),
                    roles: layout.roles.iter().map(|r| r.role.clone()).collect(),
                    fusion: self.fuser.describe(),
                    counters: a.counters().clone(),
                    pending: a.pending(),
                }
            })
            .collect();
        if let Ok(mut board) = self.board.write() {
            *board = statuses;
        }
    }

    /// Whether a camera belongs to a rig.
    pub fn has_camera(&self, camera: &str) -> bool {
        self.by_camera.contains_key(camera)
    }

    fn seed(&mut self, i: usize, store: &Store, out: &mut Vec<Emitted>) -> Result<(), StoreError> {
        let layout = self.assemblers[i].layout().clone();
        let streams = store.streams()?;
        let id_of = |camera: &str| streams.iter().find(|s| s.name == camera).map(|s| s.id);
        let anchor_id = id_of(&layout.roles[layout.anchor].camera);
        let after = match store.last_rig_record_ns(self.rig_ids[i])? {
            Some(t) => t,
            None => match anchor_id
                .map(|id| store.newest_frame_ns(id))
                .transpose()?
                .flatten()
            {
                Some(newest) => newest.saturating_sub(SEED_WINDOW_NS),
                None => return Ok(()),
            },
        };
        let now = Instant::now();
        for (r, role) in layout.roles.iter().enumerate() {
            let Some(id) = id_of(&role.camera) else {
                continue;
            };
            let from = if r == layout.anchor {
                after
            } else {
                after.saturating_sub(layout.tolerance_ns + 1)
            };
            for v in store.views_after(id, from, SEED_MAX_FRAMES)? {
                let frame = ViewFrame {
                    stream_id: id,
                    ts_ns: v.key.ts_ns,
                    pts_ns: v.pts_ns,
                    embedding: v.embedding.into(),
                };
                out.extend(
                    self.assemblers[i]
                        .push(r, frame, now)
                        .into_iter()
                        .map(|a| (i, a)),
                );
            }
        }
        Ok(())
    }

    /// A stored frame of `camera`.
    pub(super) fn push(
        &mut self,
        camera: &str,
        frame: ViewFrame,
        now: Instant,
        out: &mut Vec<Emitted>,
    ) {
        let Some(&(i, r)) = self.by_camera.get(camera) else {
            return;
        };
        out.extend(
            self.assemblers[i]
                .push(r, frame, now)
                .into_iter()
                .map(|a| (i, a)),
        );
        let late = self.assemblers[i].counters().late;
        if late > self.late_seen[i] {
            let layout = self.assemblers[i].layout();
            ::metrics::counter!(metrics::RIG_LATE_FRAMES, "rig" => layout.name.clone(), "role" => layout.roles[r].role.clone())
                .increment(late - self.late_seen[i]);
            self.late_seen[i] = late;
        }
    }

    /// `camera`'s source ended.
    pub(super) fn source_ended(&mut self, camera: &str, now: Instant, out: &mut Vec<Emitted>) {
        if let Some(&(i, r)) = self.by_camera.get(camera) {
            out.extend(
                self.assemblers[i]
                    .role_ended(r, now)
                    .into_iter()
                    .map(|a| (i, a)),
            );
        }
    }

    /// Live records whose deadline passed.
    pub(super) fn poll(&mut self, now: Instant, out: &mut Vec<Emitted>) {
        for (i, a) in self.assemblers.iter_mut().enumerate() {
            out.extend(a.poll(now).into_iter().map(|r| (i, r)));
        }
    }

    /// Every waiting record (the pipeline ends).
    pub(super) fn finish(&mut self, out: &mut Vec<Emitted>) {
        for (i, a) in self.assemblers.iter_mut().enumerate() {
            out.extend(a.finish().into_iter().map(|r| (i, r)));
        }
    }

    /// When the oldest waiting live record is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.assemblers
            .iter()
            .filter_map(RigAssembler::next_deadline)
            .min()
    }

    /// Fuses and tags emitted records into store writes (one model run
    /// per rig); records of a failed run are lost, counted.
    pub(super) fn writes(&self, emitted: Vec<Emitted>) -> Vec<RigWrite> {
        let mut out = Vec::with_capacity(emitted.len());
        for (i, assembler) in self.assemblers.iter().enumerate() {
            let records: Vec<&AssembledRig> = emitted
                .iter()
                .filter(|(r, _)| *r == i)
                .map(|(_, a)| a)
                .collect();
            if records.is_empty() {
                continue;
            }
            let started = Instant::now();
            let layout = assembler.layout();
            let views: Vec<Vec<Option<&[f32]>>> = records
                .iter()
                .map(|a| {
                    a.views
                        .iter()
                        .map(|v| v.as_ref().map(|f| &*f.embedding))
                        .collect()
                })
                .collect();
            let fused = match self.fuser.fuse(layout, &views) {
                Ok(f) => f,
                Err(error) => {
                    tracing::error!(%error, rig = %layout.name, records = records.len(), "Fusion failed; rig records dropped.");
                    ::metrics::counter!(metrics::RIG_RECORDS_FAILED, "rig" => layout.name.clone())
                        .increment(records.len() as u64);
                    continue;
                }
            };
            for (a, embedding) in records.into_iter().zip(fused) {
                self.observe(layout, a);
                out.push(RigWrite {
                    rig_id: self.rig_ids[i],
                    record: self.record(layout, a, &embedding),
                    embedding,
                });
            }
            ::metrics::histogram!(metrics::RIG_FUSION_SECONDS)
                .record(started.elapsed().as_secs_f64());
        }
        self.publish();
        out
    }

    fn record(&self, layout: &RigLayout, a: &AssembledRig, fused: &[f32]) -> RigRecord {
        let scores = self.tagger.tag(ndarray::ArrayView1::from(fused));
        RigRecord {
            anchor_ns: a.anchor_ns,
            anchor_role: layout.anchor_role().to_string(),
            views: layout
                .roles
                .iter()
                .zip(&a.views)
                .map(|(role, v)| RigView {
                    role: role.role.clone(),
                    camera: role.camera.clone(),
                    present: v.is_some(),
                    ts_ns: v.as_ref().map_or(0, |f| f.ts_ns),
                    pts_ns: v.as_ref().map_or(0, |f| f.pts_ns),
                    offset_ms: v
                        .as_ref()
                        .map_or(0.0, |f| (f.ts_ns - a.anchor_ns) as f64 / 1e6),
                })
                .collect(),
            fusion_model: self.fuser.fingerprint().to_string(),
            tags: TagRecord {
                sets: scores.into_iter().map(SetTag::from).collect(),
            },
        }
    }

    fn observe(&self, layout: &RigLayout, a: &AssembledRig) {
        let rig = layout.name.clone();
        ::metrics::counter!(metrics::RIG_RECORDS, "rig" => rig.clone()).increment(1);
        ::metrics::histogram!(metrics::RIG_ASSEMBLY_SECONDS).record(a.waited.as_secs_f64());
        if a.is_partial() {
            ::metrics::counter!(metrics::RIG_PARTIAL_RECORDS, "rig" => rig.clone()).increment(1);
        }
        for (role, v) in layout.roles.iter().zip(&a.views) {
            match v {
                Some(f) => ::metrics::histogram!(metrics::RIG_VIEW_SKEW)
                    .record((f.ts_ns - a.anchor_ns).unsigned_abs() as f64 / 1e9),
                None => ::metrics::counter!(metrics::RIG_VIEWS_MISSING, "rig" => rig.clone(), "role" => role.role.clone())
                    .increment(1),
            }
        }
    }
}
