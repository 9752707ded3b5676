//! Scene segments of every (stream, source) the worker sees.
//!
//! Each source has its own [`Segmenter`]. On first use it is rebuilt from
//! the stored frames of the segment a previous run left open, so an
//! interrupted scene goes on instead of being cut at the restart. The
//! segments a batch closes, their keyframes queued for the captioner, and
//! each source's open-segment marker are written in the batch's
//! transaction, with the pictures its segmenter holds (caption images and
//! JPEGs of keyframe candidates): a rebuild gets them back and picks the
//! same keyframe.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::frame::SourceKey;
use super::sources::SourcePosition;
use crate::segment::{ClosedSegment, SegmentFrame, Segmenter, SegmenterConfig};
use crate::store::{
    CaptionJob, CaptionState, FrameKey, KeyframeImageWrite, NewSegment, OpenMarker,
    OpenSegmentRecord, SegmentRecord, SegmentWrites, Store, StoreError,
};

/// The segmenter of one (stream, source) and the label its records carry.
struct SourceSegments {
    segmenter: Segmenter,
    label: Arc<str>,
    /// Frame times of its candidates' pictures in the store (once the pending
    /// write commits; a failed write forgets the whole segmenter).
    stored_images: BTreeSet<i64>,
}

/// An open segment read back from the store.
struct Rebuilt {
    frames: usize,
    label: Arc<str>,
    closed: Vec<ClosedSegment>,
    /// Times of the stored pictures of its frames.
    images: BTreeSet<i64>,
}

/// The segmenters of the sources a worker has seen.
pub struct SegmentTracker {
    store: Store,
    config: SegmenterConfig,
    segmenters: HashMap<SourceKey, SourceSegments>,
    /// Segments closed while rebuilding, written with the next write.
    rebuilt: Vec<NewSegment>,
}

impl SegmentTracker {
    /// A tracker that cuts with `config`.
    pub fn new(store: Store, config: SegmenterConfig) -> Self {
        Self {
            store,
            config,
            segmenters: HashMap::new(),
            rebuilt: Vec::new(),
        }
    }

    /// Feeds one stored frame of `key` (labelled `label`); what it closes
    /// goes into `writes`.
    pub fn push(
        &mut self,
        key: &SourceKey,
        label: &Arc<str>,
        at: SourcePosition,
        frame: SegmentFrame,
        writes: &mut SegmentWrites,
    ) {
        let ts_ns = frame.ts_ns;
        if let Some(seg) = self.segmenter(key, Some(label.clone()), at, ts_ns) {
            for closed in seg.push(frame) {
                writes
                    .closed
                    .push(new_segment(at.stream_id, label, key, closed));
            }
        }
    }

    /// Adds the segments closed by rebuilds (first, they are older) and the
    /// open-segment markers of `touched` sources to `writes`.
    pub fn finish_writes(&mut self, touched: &[(SourceKey, u32)], writes: &mut SegmentWrites) {
        writes.closed.splice(0..0, self.rebuilt.drain(..));
        for (key, stream_id) in touched {
            if let Some(s) = self.segmenters.get_mut(key) {
                sync_images(s, *stream_id, &mut writes.keyframes);
                writes.open.push(OpenMarker {
                    stream_id: *stream_id,
                    source_id: key.source_id.to_string(),
                    open: s.segmenter.open_state().map(|state| OpenSegmentRecord {
                        state,
                        label: s.label.to_string(),
                    }),
                });
            }
        }
    }

    /// Closes the open segment of `key` (rebuilt from the store when this
    /// run saw none of its frames, e.g. a resume that delivered nothing).
    pub fn close(&mut self, key: &SourceKey, at: SourcePosition) -> SegmentWrites {
        let mut writes = SegmentWrites::default();
        self.segmenter(key, None, at, i64::MAX);
        if let Some(SourceSegments {
            mut segmenter,
            label,
            stored_images,
        }) = self.segmenters.remove(key)
        {
            // The closed segments carry their keyframe's pictures.
            writes
                .keyframes
                .extend(stored_images.into_iter().map(|ts_ns| {
                    KeyframeImageWrite::remove(FrameKey {
                        stream_id: at.stream_id,
                        ts_ns,
                    })
                }));
            for closed in segmenter.finish() {
                writes
                    .closed
                    .push(new_segment(at.stream_id, &label, key, closed));
            }
            writes.open.push(OpenMarker {
                stream_id: at.stream_id,
                source_id: key.source_id.to_string(),
                open: None,
            });
        }
        writes.closed.splice(0..0, self.rebuilt.drain(..));
        writes
    }

    /// Forgets a source's segmenter: its open segment stays in the store
    /// and is rebuilt when the source comes back.
    pub fn forget(&mut self, key: &SourceKey) {
        self.segmenters.remove(key);
    }

    /// Live sources with a segmenter (they close theirs at shutdown).
    pub fn live_sources(&self) -> Vec<SourceKey> {
        self.segmenters
            .keys()
            .filter(|k| !k.source_id.resumes())
            .cloned()
            .collect()
    }

    /// The segmenter of `key`, rebuilt on first use. `label` is the
    /// source's label (`None`: the one stored with the open segment, if
    /// any); `until_ns` bounds the frames read back.
    fn segmenter(
        &mut self,
        key: &SourceKey,
        label: Option<Arc<str>>,
        at: SourcePosition,
        until_ns: i64,
    ) -> Option<&mut Segmenter> {
        if !self.segmenters.contains_key(key) {
            let mut seg = Segmenter::new(self.config.clone());
            let mut stored_images = BTreeSet::new();
            let label = match self.rebuild(&mut seg, key, at, until_ns) {
                Ok(Some(r)) => {
                    tracing::info!(stream = %key.stream, frames = r.frames, images = r.images.len(), "Open segment rebuilt from the store.");
                    let label = label.unwrap_or(r.label);
                    for c in r.closed {
                        self.rebuilt.push(new_segment(at.stream_id, &label, key, c));
                    }
                    stored_images = r.images;
                    Some(label)
                }
                Ok(None) => label,
                Err(error) => {
                    tracing::warn!(%error, stream = %key.stream, "Cannot rebuild the open segment; a new one starts here.");
                    label
                }
            };
            self.segmenters.insert(
                key.clone(),
                SourceSegments {
                    segmenter: seg,
                    label: label?,
                    stored_images,
                },
            );
        }
        self.segmenters.get_mut(key).map(|s| &mut s.segmenter)
    }

    /// Feeds the stored frames of the open segment, with their stored
    /// pictures, back into `seg` (files: up to their checkpoint);
    /// `None` when no segment was left open.
    fn rebuild(
        &self,
        seg: &mut Segmenter,
        key: &SourceKey,
        at: SourcePosition,
        until_ns: i64,
    ) -> Result<Option<Rebuilt>, StoreError> {
        let Some(open) = self
            .store
            .open_segment(at.stream_id, key.source_id.as_str())?
        else {
            return Ok(None);
        };
        let stored =
            self.store
                .frames_between(at.stream_id, open.state.start_ns, until_ns, &open.label)?;
        // Images of frames past the checkpoint too: the tracker deletes
        // those its segmenter does not hold again.
        let mut images = self.store.keyframe_images(stored.iter().map(|f| f.key))?;
        let image_times = images.keys().map(|k| k.ts_ns).collect();
        let frames: Vec<SegmentFrame> = stored
            .into_iter()
            .take_while(|f| at.resume_pts.is_none_or(|p| f.record.pts_ns <= p))
            .map(|f| SegmentFrame {
                ts_ns: f.key.ts_ns,
                pts_ns: f.record.pts_ns,
                duration_ns: at.interval_ns,
                embedding: f.embedding.into(),
                tags: f.tags.sets.into_iter().map(|t| (t.set, t.top)).collect(),
                images: images.remove(&f.key).unwrap_or_default(),
            })
            .collect();
        Ok(Some(Rebuilt {
            frames: frames.len(),
            closed: seg.restore(&open.state, frames),
            label: open.label.as_str().into(),
            images: image_times,
        }))
    }
}

/// Brings the store's candidate pictures of `s` in line with those its
/// segmenter holds: new ones stored, dropped ones (thinned, or of a
/// segment that closed) deleted.
fn sync_images(s: &mut SourceSegments, stream_id: u32, writes: &mut Vec<KeyframeImageWrite>) {
    let key = |ts_ns| FrameKey { stream_id, ts_ns };
    let mut held = BTreeSet::new();
    for (ts_ns, images) in s.segmenter.kept_images() {
        if s.stored_images.contains(&ts_ns) {
            held.insert(ts_ns);
            continue;
        }
        match KeyframeImageWrite::store(key(ts_ns), images) {
            Ok(w) => {
                writes.push(w);
                held.insert(ts_ns);
            }
            // Only a rebuild after a restart misses it.
            Err(error) => tracing::warn!(%error, "Cannot store a keyframe candidate's image."),
        }
    }
    let dropped = s.stored_images.difference(&held);
    writes.extend(dropped.map(|&ts| KeyframeImageWrite::remove(key(ts))));
    s.stored_images = held;
}

/// The store record of a closed segment, its keyframe queued for a caption.
fn new_segment(stream_id: u32, label: &str, key: &SourceKey, closed: ClosedSegment) -> NewSegment {
    let caption_image = closed.images.caption.as_ref().map(|rgb| CaptionJob {
        keyframe_ns: closed.keyframe_ns,
        size: ((rgb.len() / 3) as f64).sqrt().round() as u32,
        rgb: rgb.to_vec(),
    });
    NewSegment {
        stream_id,
        record: SegmentRecord {
            start_ns: closed.start_ns,
            end_ns: closed.end_ns,
            start_pts_ns: closed.start_pts_ns,
            source_label: label.to_string(),
            source_id: key.source_id.to_string(),
            frames: closed.frames,
            keyframe_ns: closed.keyframe_ns,
            keyframe_pts_ns: closed.keyframe_pts_ns,
            tags: closed.tags,
            caption: if caption_image.is_some() {
                CaptionState::Pending
            } else {
                CaptionState::None
            },
        },
        caption_image,
        keyframe_jpeg: closed.images.jpeg,
    }
}
