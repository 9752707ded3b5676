//! Scene segmentation of one camera's embedding stream (pure, no I/O).
//!
//! A segment is a run of frames close to its own running centroid. Each
//! frame's cosine distance to the centroid of the open segment decides:
//! - below `cut_distance`: the frame belongs to the segment;
//! - above it: a *candidate* change starts. It becomes a cut only if it lasts
//!   `confirm_secs` with every frame still above `keep_distance` (the lower
//!   threshold: hysteresis), so a passing truck or a flash does not cut;
//!   otherwise its frames fold back into the segment.
//!
//! Cuts that would leave a segment shorter than `min_segment_secs` are not
//! made (the short scene joins the next one), and a segment longer than `max_segment_secs` is closed anyway, so a
//! parked car still gets fresh captions. The keyframe of a closed segment is
//! its most central frame: the one closest to the final centroid. Its
//! pictures (caption input, keyframe JPEG) come from the most central frame
//! that still holds them (they are thinned, not all kept, to bound memory). Which frames keep an image
//! depends only on their place in the segment, so a restart that gets back
//! the kept images (see [`Segmenter::kept_images`]) picks the same one.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

/// `[segments]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmenterConfig {
    /// Cut streams into segments at all.
    pub enabled: bool,
    /// Cosine distance to the segment centroid above which a frame looks
    /// like another scene.
    pub cut_distance: f32,
    /// A candidate change is dropped as soon as a frame comes back below
    /// this distance (must be <= `cut_distance`).
    pub keep_distance: f32,
    /// How long a change must last to cut, seconds.
    pub confirm_secs: f64,
    /// Shortest segment, seconds.
    pub min_segment_secs: f64,
    /// Longest segment, seconds (bounds the memory an open segment holds).
    pub max_segment_secs: f64,
    /// A pause in the frames longer than this (a camera offline, a gap
    /// between clips) ends the segment, seconds; 0 = never.
    pub max_gap_secs: f64,
    /// Keyframe candidates that keep their pictures per open segment (a
    /// caption image is ~440 KB for BLIP-base, a keyframe JPEG ~40 KB);
    /// beyond it every other one is dropped.
    pub max_keyframe_candidates: usize,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cut_distance: 0.15,
            keep_distance: 0.10,
            confirm_secs: 1.0,
            min_segment_secs: 2.0,
            max_segment_secs: 600.0,
            max_gap_secs: 10.0,
            max_keyframe_candidates: 24,
        }
    }
}

impl SegmenterConfig {
    /// Checks the thresholds; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.cut_distance > 0.0 && self.cut_distance <= 2.0) {
            return Err(format!(
                "segments.cut_distance {} must be in (0, 2]",
                self.cut_distance
            ));
        }
        if !(self.keep_distance >= 0.0 && self.keep_distance <= self.cut_distance) {
            return Err(format!(
                "segments.keep_distance {} must be in [0, cut_distance]",
                self.keep_distance
            ));
        }
        for (name, v) in [
            ("segments.confirm_secs", self.confirm_secs),
            ("segments.min_segment_secs", self.min_segment_secs),
            ("segments.max_segment_secs", self.max_segment_secs),
            ("segments.max_gap_secs", self.max_gap_secs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} {v} must be a finite number >= 0"));
            }
        }
        if !(self.max_segment_secs > 0.0
            && self.max_segment_secs <= 86_400.0
            && self.max_segment_secs >= self.min_segment_secs)
        {
            return Err(format!(
                "segments.max_segment_secs {} must be in [min_segment_secs, 86400]",
                self.max_segment_secs
            ));
        }
        Ok(())
    }
}

/// One frame as the segmenter sees it.
#[derive(Debug, Clone)]
pub struct SegmentFrame {
    /// Frame time, ns (the store key).
    pub ts_ns: i64,
    /// Pts in the source, ns.
    pub pts_ns: u64,
    /// Time this frame stands for (the sampling interval), ns.
    pub duration_ns: u64,
    /// L2-normalised image embedding.
    pub embedding: Arc<[f32]>,
    /// Top class per label set: `(set, class)`.
    pub tags: Vec<(String, String)>,
    /// Pictures kept in case it becomes the keyframe.
    pub images: KeyframeImages,
}

/// The pictures a keyframe candidate keeps until its segment closes. Both
/// are thinned together (see `max_keyframe_candidates`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyframeImages {
    /// Captioner input (packed RGB, square at the captioner's size), when
    /// captioning is on.
    pub caption: Option<Arc<[u8]>>,
    /// The keyframe picture (JPEG, `[store] keyframe_width`), when on.
    pub jpeg: Option<Arc<[u8]>>,
}

impl KeyframeImages {
    /// Neither picture is kept.
    pub fn is_empty(&self) -> bool {
        self.caption.is_none() && self.jpeg.is_none()
    }
}

/// The dominant class of one label set over a segment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DominantTag {
    /// Label set.
    pub set: String,
    /// Class that was on top for the longest time.
    pub class: String,
    /// Its share of the segment's time, 0..=1.
    pub share: f32,
}

/// A finished segment.
#[derive(Debug, Clone)]
pub struct ClosedSegment {
    /// First frame time, ns.
    pub start_ns: i64,
    /// End (exclusive): the next segment's start, or last frame + its duration.
    pub end_ns: i64,
    /// Pts of the first frame, ns.
    pub start_pts_ns: u64,
    /// Frames in the segment.
    pub frames: u32,
    /// Keyframe time and pts, ns.
    pub keyframe_ns: i64,
    /// Keyframe pts, ns.
    pub keyframe_pts_ns: u64,
    /// Dominant class per label set, in first-seen set order.
    pub tags: Vec<DominantTag>,
    /// The keyframe's pictures (to caption and to show), if kept.
    pub images: KeyframeImages,
}

/// What a restart needs to rebuild the open segment exactly from its stored
/// frames: the frames up to `seed_until_ns` entered it in bulk (a confirmed
/// change, decided with frames that came before them), and only frames from
/// `centroid_from_ns` on count in its centroid (a too-short scene that was
/// absorbed does not). Every later frame is decided again, identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenState {
    /// First frame time, ns.
    pub start_ns: i64,
    /// Last frame that entered without a decision, ns.
    pub seed_until_ns: i64,
    /// First frame that counts in the centroid, ns.
    pub centroid_from_ns: i64,
}

/// Frames of the open segment, with running sums.
#[derive(Debug, Default)]
struct OpenSegment {
    members: Vec<SegmentFrame>,
    /// Sum of member embeddings (un-normalised centroid).
    sum: Vec<f64>,
    /// Per set, time each class was on top, ns.
    tag_time: Vec<(String, HashMap<String, u64>)>,
    /// Only members whose index is a multiple of this keep their image.
    image_stride: usize,
    seed_until_ns: i64,
    centroid_from_ns: i64,
}

impl OpenSegment {
    fn start_ns(&self) -> Option<i64> {
        self.members.first().map(|m| m.ts_ns)
    }

    fn push(&mut self, frame: SegmentFrame, max_images: usize) {
        self.push_member(frame, max_images, true);
    }

    /// Adds a frame; `in_centroid` false keeps it out of the centroid.
    fn push_member(&mut self, mut frame: SegmentFrame, max_images: usize, in_centroid: bool) {
        if self.members.is_empty() {
            self.seed_until_ns = frame.ts_ns;
            self.centroid_from_ns = frame.ts_ns;
        }
        if self.sum.is_empty() {
            self.sum = vec![0.0; frame.embedding.len()];
        }
        if in_centroid {
            for (s, x) in self.sum.iter_mut().zip(frame.embedding.iter()) {
                *s += *x as f64;
            }
        }
        let stride = self.image_stride.max(1);
        if !self.members.len().is_multiple_of(stride) {
            frame.images = KeyframeImages::default();
        }
        for (set, class) in &frame.tags {
            let slot = match self.tag_time.iter().position(|(s, _)| s == set) {
                Some(i) => i,
                None => {
                    self.tag_time.push((set.clone(), HashMap::new()));
                    self.tag_time.len() - 1
                }
            };
            *self.tag_time[slot].1.entry(class.clone()).or_default() += frame.duration_ns;
        }
        self.members.push(frame);
        // The stride follows the member count, not the images that came in:
        // a rebuild that gets back only the kept images (the others were
        // dropped) ends with the same stride and the same images.
        if self.members.len().div_ceil(stride) > max_images.max(1) {
            self.thin_images();
        }
    }

    /// Doubles the image stride: the kept images stay evenly spread over
    /// the whole segment.
    fn thin_images(&mut self) {
        self.image_stride = self.image_stride.max(1) * 2;
        let stride = self.image_stride;
        for (i, m) in self.members.iter_mut().enumerate() {
            if !i.is_multiple_of(stride) {
                m.images = KeyframeImages::default();
            }
        }
    }

    /// Cosine distance of `e` to the normalised centroid.
    fn distance(&self, e: &[f32]) -> f32 {
        let norm = self.sum.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        let dot: f64 = self.sum.iter().zip(e).map(|(s, x)| s * *x as f64).sum();
        (1.0 - dot / norm) as f32
    }

    fn close(self, end_ns: i64) -> ClosedSegment {
        let first = &self.members[0];
        let total: u64 = self.members.iter().map(|m| m.duration_ns).sum();
        // The most central frame that kept an image is both keyframe and
        // captioned frame; without images, the most central frame.
        let distances: Vec<f32> = self
            .members
            .iter()
            .map(|m| self.distance(&m.embedding))
            .collect();
        let most_central = |with_image: bool| {
            (0..self.members.len())
                .filter(|&i| !with_image || !self.members[i].images.is_empty())
                .min_by(|&a, &b| distances[a].total_cmp(&distances[b]))
        };
        let key = most_central(true)
            .or_else(|| most_central(false))
            .expect("a closed segment has members");
        let tags = self
            .tag_time
            .iter()
            .filter_map(|(set, times)| {
                let (class, t) = times
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
                Some(DominantTag {
                    set: set.clone(),
                    class: class.clone(),
                    share: if total > 0 {
                        *t as f32 / total as f32
                    } else {
                        0.0
                    },
                })
            })
            .collect();
        ClosedSegment {
            start_ns: first.ts_ns,
            end_ns,
            start_pts_ns: first.pts_ns,
            frames: self.members.len() as u32,
            keyframe_ns: self.members[key].ts_ns,
            keyframe_pts_ns: self.members[key].pts_ns,
            tags,
            images: self.members[key].images.clone(),
        }
    }

    fn end_after_last(&self) -> i64 {
        self.members
            .last()
            .map_or(0, |m| m.ts_ns + m.duration_ns as i64)
    }
}

/// Cuts one camera's frames (in time order) into segments.
#[derive(Debug)]
pub struct Segmenter {
    config: SegmenterConfig,
    open: OpenSegment,
    /// Frames of a change not yet confirmed.
    candidate: Vec<SegmentFrame>,
}

impl Segmenter {
    /// A segmenter with no open segment.
    pub fn new(config: SegmenterConfig) -> Self {
        Self {
            config,
            open: OpenSegment::default(),
            candidate: Vec::new(),
        }
    }

    /// The open segment, as a restart rebuilds it (see [`OpenState`]).
    pub fn open_state(&self) -> Option<OpenState> {
        Some(OpenState {
            start_ns: self.open.start_ns()?,
            seed_until_ns: self.open.seed_until_ns,
            centroid_from_ns: self.open.centroid_from_ns,
        })
    }

    /// The pictures held (keyframe candidates of the open segment and
    /// frames of a pending change), by frame time: what a restart needs back
    /// to pick the same keyframe.
    pub fn kept_images(&self) -> impl Iterator<Item = (i64, &KeyframeImages)> {
        self.open
            .members
            .iter()
            .chain(&self.candidate)
            .filter(|m| !m.images.is_empty())
            .map(|m| (m.ts_ns, &m.images))
    }

    /// Rebuilds the open segment of `state` from its stored frames (in time
    /// order, from `state.start_ns`): frames up to the seed enter as they
    /// did, later ones are decided again. Frames carry the images
    /// [`Segmenter::kept_images`] listed then, so the same ones are
    /// kept. Returns what they close (nothing, when the frames are those
    /// the state was taken from).
    pub fn restore(
        &mut self,
        state: &OpenState,
        frames: impl IntoIterator<Item = SegmentFrame>,
    ) -> Vec<ClosedSegment> {
        let max_images = self.config.max_keyframe_candidates;
        let mut closed = Vec::new();
        for f in frames {
            if f.ts_ns <= state.seed_until_ns && self.candidate.is_empty() {
                let in_centroid = f.ts_ns >= state.centroid_from_ns;
                self.open.push_member(f, max_images, in_centroid);
                self.open.seed_until_ns = state.seed_until_ns;
                self.open.centroid_from_ns = state.centroid_from_ns;
            } else {
                closed.extend(self.push(f));
            }
        }
        closed
    }

    /// Feeds the next frame; returns the segments it closed (usually none,
    /// one at a cut, up to two after a pause).
    pub fn push(&mut self, frame: SegmentFrame) -> Vec<ClosedSegment> {
        let last_end = self
            .candidate
            .last()
            .or(self.open.members.last())
            .map(|m| m.ts_ns + m.duration_ns as i64);
        if let Some(end) = last_end
            && self.config.max_gap_secs > 0.0
            && (frame.ts_ns - end) as f64 / 1e9 > self.config.max_gap_secs
        {
            let mut closed = self.finish();
            closed.extend(self.push_one(frame));
            return closed;
        }
        self.push_one(frame).into_iter().collect()
    }

    fn push_one(&mut self, frame: SegmentFrame) -> Option<ClosedSegment> {
        let max_images = self.config.max_keyframe_candidates;
        let Some(start) = self.open.start_ns() else {
            self.open.push(frame, max_images);
            return None;
        };
        let secs = |from: i64, to: i64| (to - from) as f64 / 1e9;
        let max = self.config.max_segment_secs;
        if max > 0.0 && self.candidate.is_empty() && secs(start, frame.ts_ns) >= max {
            return Some(self.cut_at(frame));
        }
        let d = self.open.distance(&frame.embedding);
        if self.candidate.is_empty() {
            if d > self.config.cut_distance {
                self.candidate.push(frame);
                return self.confirm();
            }
            self.open.push(frame, max_images);
            return None;
        }
        if d > self.config.keep_distance {
            self.candidate.push(frame);
            self.confirm()
        } else {
            // The change did not last: its frames were this scene after all.
            for f in std::mem::take(&mut self.candidate) {
                self.open.push(f, max_images);
            }
            self.open.push(frame, max_images);
            None
        }
    }

    /// How long the candidate change has lasted, seconds.
    fn candidate_secs(&self) -> f64 {
        match (self.candidate.first(), self.candidate.last()) {
            (Some(first), Some(last)) => {
                (last.ts_ns + last.duration_ns as i64 - first.ts_ns) as f64 / 1e9
            }
            _ => 0.0,
        }
    }

    /// Cuts if the candidate has lasted long enough.
    fn confirm(&mut self) -> Option<ClosedSegment> {
        if self.candidate_secs() + 1e-9 < self.config.confirm_secs {
            return None;
        }
        self.cut_candidate()
    }

    /// Closes the open segment where the candidate starts, unless that would
    /// leave it shorter than `min_segment_secs`: then it absorbs the change.
    fn cut_candidate(&mut self) -> Option<ClosedSegment> {
        let frames = std::mem::take(&mut self.candidate);
        let cut = frames.first()?.ts_ns;
        let start = self.open.start_ns()?;
        if ((cut - start) as f64 / 1e9) + 1e-9 < self.config.min_segment_secs {
            // Too short to stand alone: its frames join the new scene, whose
            // centroid alone decides from here on.
            self.open.sum.iter_mut().for_each(|s| *s = 0.0);
            self.seed(frames);
            return None;
        }
        let closed = std::mem::take(&mut self.open).close(cut);
        self.seed(frames);
        Some(closed)
    }

    /// Frames of a confirmed change enter the open segment without a
    /// decision; a restart must replay them the same way.
    fn seed(&mut self, frames: Vec<SegmentFrame>) {
        let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
            return;
        };
        let (from, until) = (first.ts_ns, last.ts_ns);
        for f in frames {
            self.open.push(f, self.config.max_keyframe_candidates);
        }
        self.open.centroid_from_ns = from;
        self.open.seed_until_ns = until;
    }

    fn cut_at(&mut self, frame: SegmentFrame) -> ClosedSegment {
        let closed = std::mem::take(&mut self.open).close(frame.ts_ns);
        self.open.push(frame, self.config.max_keyframe_candidates);
        closed
    }

    /// The stream ended: closes the open segment. A change still pending
    /// becomes its own segment if it lasted `confirm_secs` and
    /// `min_segment_secs`, else it folds into the open one.
    pub fn finish(&mut self) -> Vec<ClosedSegment> {
        let mut out = Vec::new();
        let lasted = self.candidate_secs() + 1e-9;
        if lasted >= self.config.confirm_secs.max(self.config.min_segment_secs) {
            out.extend(self.cut_candidate());
        }
        for f in std::mem::take(&mut self.candidate) {
            self.open.push(f, self.config.max_keyframe_candidates);
        }
        if self.open.start_ns().is_some() {
            let end = self.open.end_after_last();
            out.push(std::mem::take(&mut self.open).close(end));
        }
        out
    }
}

#[cfg(test)]
mod tests;
