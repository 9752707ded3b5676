//! Replay checkpoints: the one place that decides where a source resumes,
//! what its checkpoint says after each stored batch, and when it is done.
//!
//! Rules:
//! - A checkpoint (last stored pts, frame count, sampling interval,
//!   complete) is written in the same transaction as the frames it covers,
//!   so after a crash it never claims frames that are not stored.
//! - A file resumes after its checkpoint's pts; a complete file is skipped;
//!   a checkpoint taken at another sampling rate is not resumed (the file
//!   would mix two sampling grids). Live sources always start afresh.
//! - A file that lost a batch in this run is **damaged**: its checkpoint
//!   stays before the hole and it is never marked complete, so the next
//!   replay fills the gap. A live source cannot be replayed: the lost
//!   frames are just a gap.

use std::collections::{HashMap, HashSet};

use super::frame::{Frame, SourceId, SourceKey};
use crate::ingest::sampler::FrameSampler;
use crate::store::{Checkpoint, CheckpointUpdate, Store, StoreError};

/// Where a source starts, read from its stored checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePoint {
    /// Nothing stored yet (or a live source): from the start.
    Start,
    /// An earlier run stopped: after this pts.
    After {
        /// Last stored pts, ns.
        pts_ns: u64,
    },
    /// An earlier run read it to its end: nothing to do.
    Complete,
    /// Stored at another sampling interval: resuming would mix two grids.
    OtherRate {
        /// The interval the stored frames were sampled at, ns.
        stored_interval_ns: u64,
    },
}

impl ResumePoint {
    /// The resume point of `source` of `stream` when sampled at `sample_fps`.
    pub fn of(
        store: &Store,
        stream: &str,
        source: &SourceId,
        sample_fps: f64,
    ) -> Result<Self, StoreError> {
        if !source.resumes() {
            return Ok(Self::Start);
        }
        let checkpoint = store.checkpoint(store.stream_id(stream)?, source.as_str())?;
        Ok(Self::from_checkpoint(
            checkpoint.as_ref(),
            FrameSampler::interval_ns(sample_fps),
        ))
    }

    fn from_checkpoint(checkpoint: Option<&Checkpoint>, interval_ns: u64) -> Self {
        match checkpoint {
            None => Self::Start,
            Some(c) if c.sample_interval_ns != 0 && c.sample_interval_ns != interval_ns => {
                Self::OtherRate {
                    stored_interval_ns: c.sample_interval_ns,
                }
            }
            Some(c) if c.complete => Self::Complete,
            Some(c) => c
                .last_pts_ns
                .map_or(Self::Start, |pts_ns| Self::After { pts_ns }),
        }
    }

    /// The pts to resume after, if any.
    pub fn after_pts(self) -> Option<u64> {
        match self {
            Self::After { pts_ns } => Some(pts_ns),
            _ => None,
        }
    }
}

/// How a source's end is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnding {
    /// It lost frames in this run: it stays incomplete, its segment is
    /// rebuilt by the replay that fills the gap.
    Damaged,
    /// Its open segment closes; `complete` also marks the checkpoint done
    /// (a file read to its end). Live sources always close.
    Close {
        /// Mark the checkpoint complete.
        complete: bool,
    },
    /// A file stopped early: its open segment stays in the store for the
    /// next run.
    Suspend,
}

/// Where a source stands, as its checkpoint knows it.
#[derive(Debug, Clone, Copy)]
pub struct SourcePosition {
    /// The source's stream id.
    pub stream_id: u32,
    /// Frames after this pts are not stored yet (files; `None`: live).
    pub resume_pts: Option<u64>,
    /// Sampling interval, ns (a frame's duration; 0: unknown).
    pub interval_ns: u64,
}

/// Checkpoint state of one (stream, source) while the worker runs.
struct SourceProgress {
    stream_id: u32,
    checkpoint: Checkpoint,
}

/// The checkpoints of the sources a worker has seen.
pub struct SourceTracker {
    store: Store,
    progress: HashMap<SourceKey, SourceProgress>,
    damaged: HashSet<SourceKey>,
}

impl SourceTracker {
    /// A tracker that reads checkpoints from `store` on first use.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            progress: HashMap::new(),
            damaged: HashSet::new(),
        }
    }

    /// Counts a frame that will be stored into its source's checkpoint;
    /// returns its stream id.
    pub fn record(&mut self, frame: &Frame) -> Result<u32, StoreError> {
        let p = self.progress_of(&frame.source_key())?;
        let c = &mut p.checkpoint;
        c.sample_interval_ns = frame.sample_interval_ns;
        c.last_pts_ns = Some(c.last_pts_ns.map_or(frame.pts_ns, |l| l.max(frame.pts_ns)));
        c.frames += 1;
        Ok(p.stream_id)
    }

    /// Where `key` stands: its stream id, and for a file the last stored
    /// pts (frames after it are not stored yet).
    pub fn position(&mut self, key: &SourceKey) -> Result<SourcePosition, StoreError> {
        let p = self.progress_of(key)?;
        Ok(SourcePosition {
            stream_id: p.stream_id,
            resume_pts: p.checkpoint.last_pts_ns.filter(|_| key.source_id.resumes()),
            interval_ns: p.checkpoint.sample_interval_ns,
        })
    }

    /// The checkpoints to write with a batch that touched `keys`. Damaged
    /// sources' checkpoints stay where they were.
    pub fn updates<'k>(&self, keys: impl Iterator<Item = &'k SourceKey>) -> Vec<CheckpointUpdate> {
        keys.filter(|k| !self.damaged.contains(*k))
            .filter_map(|k| self.progress.get(k).map(|p| update(k, p)))
            .collect()
    }

    /// A frame of `key` was lost. A file is damaged (see the module doc);
    /// a live source just has a gap.
    pub fn lost_frame(&mut self, key: &SourceKey) {
        if key.source_id.resumes() {
            self.damaged.insert(key.clone());
        }
    }

    /// Whether `key` lost frames in this run.
    pub fn is_damaged(&self, key: &SourceKey) -> bool {
        self.damaged.contains(key)
    }

    /// A source ended: how to record it. Forgets the source.
    pub fn end(&mut self, key: &SourceKey, complete: bool) -> SourceEnding {
        if self.damaged.remove(key) {
            tracing::error!(stream = %key.stream, source = %key.source_id, "Frames of this source were lost; it stays incomplete so a replay fills the gap.");
            SourceEnding::Damaged
        } else if complete || !key.source_id.resumes() {
            SourceEnding::Close { complete }
        } else {
            SourceEnding::Suspend
        }
    }

    /// Marks a source's checkpoint complete; returns the update to write.
    pub fn complete(&mut self, key: &SourceKey) -> Result<CheckpointUpdate, StoreError> {
        let p = self.progress_of(key)?;
        p.checkpoint.complete = true;
        Ok(update(key, p))
    }

    /// Forgets a source (after its end was written).
    pub fn forget(&mut self, key: &SourceKey) {
        self.progress.remove(key);
    }

    fn progress_of(&mut self, key: &SourceKey) -> Result<&mut SourceProgress, StoreError> {
        if !self.progress.contains_key(key) {
            let stream_id = self.store.stream_id(&key.stream)?;
            let checkpoint = self
                .store
                .checkpoint(stream_id, key.source_id.as_str())?
                .unwrap_or(Checkpoint {
                    last_pts_ns: None,
                    frames: 0,
                    complete: false,
                    sample_interval_ns: 0,
                });
            self.progress.insert(
                key.clone(),
                SourceProgress {
                    stream_id,
                    checkpoint,
                },
            );
        }
        Ok(self.progress.get_mut(key).expect("inserted above"))
    }
}

fn update(key: &SourceKey, p: &SourceProgress) -> CheckpointUpdate {
    CheckpointUpdate {
        stream_id: p.stream_id,
        source_id: key.source_id.to_string(),
        checkpoint: p.checkpoint.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(last: Option<u64>, complete: bool, interval: u64) -> Checkpoint {
        Checkpoint {
            last_pts_ns: last,
            frames: 3,
            complete,
            sample_interval_ns: interval,
        }
    }

    #[test]
    fn resume_points_follow_the_checkpoint_rules() {
        let half = 500_000_000;
        assert_eq!(ResumePoint::from_checkpoint(None, half), ResumePoint::Start);
        assert_eq!(
            ResumePoint::from_checkpoint(Some(&checkpoint(Some(7), false, half)), half),
            ResumePoint::After { pts_ns: 7 }
        );
        assert_eq!(
            ResumePoint::from_checkpoint(Some(&checkpoint(Some(7), true, half)), half),
            ResumePoint::Complete
        );
        // Another rate wins over complete: the file is read again (daemon)
        // or refused (replay), never skipped as done at the wrong rate.
        assert_eq!(
            ResumePoint::from_checkpoint(Some(&checkpoint(Some(7), true, half)), half / 2),
            ResumePoint::OtherRate {
                stored_interval_ns: half
            }
        );
        // Checkpoints from before the interval was recorded resume.
        assert_eq!(
            ResumePoint::from_checkpoint(Some(&checkpoint(Some(7), false, 0)), half),
            ResumePoint::After { pts_ns: 7 }
        );
    }
}
