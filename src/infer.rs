//! The inference worker: batches frames from every stream, embeds them with
//! CLIP, tags them, and writes them to the store.
//!
//! It runs on its own OS thread (model runs are CPU-bound and must stay off
//! the async threads) and reads one bounded channel that every ingest
//! worker feeds. Each batch is stored in one transaction together with the
//! replay checkpoints of the sources it covers. With segmentation on, each
//! (stream, source) also runs a [`Segmenter`]; the segments a batch closes,
//! with their keyframes queued for the captioner, go in the same
//! transaction. Captioning itself runs elsewhere (see `caption`): this
//! worker never waits for it. When the channel closes the worker flushes
//! its open batch and the store, then returns its totals.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ndarray::{Array4, Axis};

use crate::batcher::{Batch, BatchAssembler, BatcherConfig};
use crate::frame::{Frame, IngestEvent};
use crate::ingest::source::is_resumable;
use crate::models::ClipModel;
use crate::segment::{ClosedSegment, SegmentFrame, Segmenter, SegmenterConfig};
use crate::store::{
    CaptionJob, CaptionState, Checkpoint, CheckpointUpdate, FrameKey, FrameRecord, NewSegment,
    OpenMarker, OpenSegmentRecord, SegmentRecord, SegmentWrites, SetTag, Store, StoredFrame,
    TagRecord,
};
use crate::tagging::SceneTagger;
use crate::tagging::score::l2_normalize;
use crate::telemetry;

/// Totals of a worker run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct InferenceTotals {
    /// Frames embedded and stored.
    pub frames: u64,
    /// Of those, frames whose key was new in the store.
    pub new_frames: u64,
    /// Frames lost to model or store errors.
    pub failed: u64,
    /// Encoder batches run.
    pub batches: u64,
    /// Scene segments closed.
    pub segments: u64,
    /// Time spent in the image encoder.
    pub inference_secs: f64,
}

/// The segmenter of one (stream, source) and the label its records carry.
struct SourceSegments {
    segmenter: Segmenter,
    label: Arc<str>,
}

/// Checkpoint state of one (stream, source) while a worker runs.
struct SourceProgress {
    stream_id: u32,
    checkpoint: Checkpoint,
}

/// Embeds, tags and stores frames.
pub struct InferenceWorker {
    model: Arc<ClipModel>,
    tagger: Arc<SceneTagger>,
    store: Store,
    batcher: BatcherConfig,
    progress: HashMap<(Arc<str>, Arc<str>), SourceProgress>,
    /// Sources that lost a batch in this run: their checkpoint must not move
    /// past the hole, so it is frozen and never marked complete; the next
    /// replay resumes before the gap and fills it.
    damaged: std::collections::HashSet<(Arc<str>, Arc<str>)>,
    totals: InferenceTotals,
    stored: Option<Arc<AtomicU64>>,
    segmenting: Option<SegmenterConfig>,
    segmenters: HashMap<(Arc<str>, Arc<str>), SourceSegments>,
    /// Segments closed while rebuilding, written with the next write.
    rebuilt: Vec<NewSegment>,
}

impl InferenceWorker {
    /// A worker over a loaded model, tagger and store.
    pub fn new(
        model: Arc<ClipModel>,
        tagger: Arc<SceneTagger>,
        store: Store,
        batcher: BatcherConfig,
    ) -> Self {
        Self {
            model,
            tagger,
            store,
            batcher,
            progress: HashMap::new(),
            damaged: Default::default(),
            totals: InferenceTotals::default(),
            stored: None,
            segmenting: None,
            segmenters: HashMap::new(),
            rebuilt: Vec::new(),
        }
    }

    /// Also cuts every (stream, source) into scene segments.
    pub fn with_segments(mut self, config: SegmenterConfig) -> Self {
        self.segmenting = Some(config);
        self
    }

    /// Also counts stored frames into `counter` (progress display).
    pub fn with_stored_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.stored = Some(counter);
        self
    }

    /// Runs until every sender is gone, then flushes; returns the totals.
    pub fn run(mut self, rx: Receiver<IngestEvent>) -> InferenceTotals {
        let mut assembler: BatchAssembler<Frame> = BatchAssembler::new(&self.batcher);
        loop {
            let timeout = assembler
                .deadline()
                .map_or(Duration::from_millis(500), |d| {
                    d.saturating_duration_since(Instant::now())
                });
            match rx.recv_timeout(timeout) {
                Ok(IngestEvent::Frame(frame)) => {
                    let queued = telemetry::QUEUED_FRAMES.fetch_sub(1, Ordering::Relaxed) - 1;
                    metrics::gauge!(telemetry::QUEUE_DEPTH).set(queued.max(0) as f64);
                    if let Some(batch) = assembler.push(frame, Instant::now()) {
                        self.process(batch);
                    }
                }
                Ok(IngestEvent::SourceEnded {
                    stream,
                    source,
                    complete,
                }) => {
                    // The source's last frames go out before its checkpoint says complete.
                    if let Some(batch) = assembler.drain() {
                        self.process(batch);
                    }
                    self.end_source(&stream, &source, complete);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(batch) = assembler.poll(Instant::now()) {
                        self.process(batch);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(batch) = assembler.drain() {
            self.process(batch);
        }
        self.close_live_sources();
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, "Store flush failed at shutdown.");
        }
        self.totals
    }

    fn process(&mut self, batch: Batch<Frame>) {
        // Tells the captioner to hold off while a batch runs.
        struct Busy;
        impl Drop for Busy {
            fn drop(&mut self) {
                telemetry::INFERENCE_BUSY.fetch_sub(1, Ordering::Relaxed);
            }
        }
        telemetry::INFERENCE_BUSY.fetch_add(1, Ordering::Relaxed);
        let _busy = Busy;
        let n = batch.items.len();
        metrics::histogram!(telemetry::BATCH_SIZE).record(n as f64);
        metrics::counter!(telemetry::BATCHES_FLUSHED, "reason" => batch.reason.as_str())
            .increment(1);
        let crop = self.model.preprocessor().crop_size as usize;
        let mut pixels = Array4::<f32>::zeros((n, 3, crop, crop));
        for (mut slot, frame) in pixels.axis_iter_mut(Axis(0)).zip(&batch.items) {
            slot.assign(&frame.pixels);
        }
        let started = Instant::now();
        let embeds = match self.model.get_image_features(pixels.view()) {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, frames = n, "Image encoder failed; batch dropped.");
                self.fail_batch(&batch.items, "inference_error");
                return;
            }
        };
        let secs = started.elapsed().as_secs_f64();
        metrics::histogram!(telemetry::INFERENCE_SECONDS).record(secs);
        self.totals.inference_secs += secs;
        self.totals.batches += 1;

        let mut stored = Vec::with_capacity(n);
        let mut segment_input = Vec::new();
        let mut touched: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        for (frame, embed) in batch.items.iter().zip(embeds.axis_iter(Axis(0))) {
            let stream_id = match self.progress_of(&frame.stream, &frame.source) {
                Ok(p) => {
                    p.checkpoint.sample_interval_ns = frame.sample_interval_ns;
                    p.checkpoint.last_pts_ns = Some(
                        p.checkpoint
                            .last_pts_ns
                            .map_or(frame.pts_ns, |l| l.max(frame.pts_ns)),
                    );
                    p.checkpoint.frames += 1;
                    p.stream_id
                }
                Err(error) => {
                    tracing::error!(%error, stream = %frame.stream, "Cannot resolve stream; frame dropped.");
                    continue;
                }
            };
            let key = (frame.stream.clone(), frame.source.clone());
            if !touched.contains(&key) {
                touched.push(key.clone());
            }
            let scores = self.tagger.tag(embed);
            let embedding = l2_normalize(embed).to_vec();
            if self.segmenting.is_some() && !self.damaged.contains(&key) {
                segment_input.push((
                    stream_id,
                    frame,
                    SegmentFrame {
                        ts_ns: frame.ts_ns,
                        pts_ns: frame.pts_ns,
                        duration_ns: frame.sample_interval_ns,
                        embedding: embedding.clone().into(),
                        tags: scores
                            .iter()
                            .map(|s| (s.set.clone(), s.top.clone()))
                            .collect(),
                        caption_image: frame.caption_image.clone(),
                    },
                ));
            }
            stored.push(StoredFrame {
                key: FrameKey {
                    stream_id,
                    ts_ns: frame.ts_ns,
                },
                record: FrameRecord {
                    pts_ns: frame.pts_ns,
                    wall_ns: frame.ts_ns,
                    width: frame.width,
                    height: frame.height,
                    source: frame.source_label.to_string(),
                },
                embedding,
                tags: TagRecord {
                    sets: scores
                        .into_iter()
                        .map(|s| SetTag {
                            set: s.set,
                            top: s.top,
                            score: s.top_score,
                            scores: s.scores,
                        })
                        .collect(),
                },
            });
        }
        let checkpoints: Vec<CheckpointUpdate> = touched
            .iter()
            .filter(|k| !self.damaged.contains(*k))
            .filter_map(|k| {
                self.progress.get(k).map(|p| CheckpointUpdate {
                    stream_id: p.stream_id,
                    source: k.1.to_string(),
                    checkpoint: p.checkpoint.clone(),
                })
            })
            .collect();
        let mut segments = SegmentWrites::default();
        for (stream_id, frame, input) in segment_input {
            let key = (frame.stream.clone(), frame.source.clone());
            let label = frame.source_label.clone();
            if let Some(seg) = self.segmenter(
                &key,
                stream_id,
                Some(label.clone()),
                frame.ts_ns,
                input.duration_ns,
            ) {
                for closed in seg.push(input) {
                    segments
                        .closed
                        .push(new_segment(stream_id, &label, &key.1, closed));
                }
            }
        }
        segments.closed.splice(0..0, self.rebuilt.drain(..));
        for key in &touched {
            if let (Some(s), Some(p)) = (self.segmenters.get(key), self.progress.get(key)) {
                segments.open.push(OpenMarker {
                    stream_id: p.stream_id,
                    source: key.1.to_string(),
                    open: s.segmenter.open_state().map(|state| OpenSegmentRecord {
                        state,
                        label: s.label.to_string(),
                    }),
                });
            }
        }
        match self.store.write(&stored, &checkpoints, &segments) {
            Ok(new) => {
                self.totals.segments += segments.closed.len() as u64;
                metrics::counter!(telemetry::SEGMENTS).increment(segments.closed.len() as u64);
                self.totals.frames += stored.len() as u64;
                if let Some(c) = &self.stored {
                    c.fetch_add(stored.len() as u64, Ordering::Relaxed);
                }
                self.totals.new_frames += new as u64;
                for frame in &batch.items {
                    metrics::counter!(telemetry::FRAMES_STORED, "stream" => frame.stream.to_string()).increment(1);
                }
            }
            Err(error) => {
                tracing::error!(%error, frames = n, "Store write failed; batch dropped.");
                self.fail_batch(&batch.items, "store_error");
            }
        }
    }

    fn fail_batch(&mut self, frames: &[Frame], reason: &'static str) {
        self.totals.failed += frames.len() as u64;
        for f in frames {
            let key = (f.stream.clone(), f.source.clone());
            // A file's checkpoint freezes before the hole and its segments
            // are rebuilt by the replay that fills it. A live source cannot
            // be replayed: its segmenter restarts from the store (the lost
            // frames are a gap) and segmentation goes on.
            if is_resumable(&f.source) {
                self.damaged.insert(key.clone());
            }
            self.segmenters.remove(&key);
            metrics::counter!(telemetry::FRAMES_DROPPED, "stream" => f.stream.to_string(), "reason" => reason).increment(1);
        }
    }

    fn progress_of(
        &mut self,
        stream: &Arc<str>,
        source: &Arc<str>,
    ) -> Result<&mut SourceProgress, crate::store::StoreError> {
        let key = (stream.clone(), source.clone());
        if !self.progress.contains_key(&key) {
            let stream_id = self.store.stream_id(stream)?;
            let checkpoint = self
                .store
                .checkpoint(stream_id, source)?
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
        Ok(self.progress.get_mut(&key).expect("inserted above"))
    }

    /// A source ended. A file read to its end without losing a batch is
    /// marked complete and its last segment closed; a file stopped early
    /// keeps its open segment in the store for the next run. A live source
    /// closes its segment whenever it ends (it never resumes).
    fn end_source(&mut self, stream: &Arc<str>, source: &Arc<str>, complete: bool) {
        let key = (stream.clone(), source.clone());
        if self.damaged.remove(&key) {
            tracing::error!(%stream, %source, "Frames of this source were lost; it stays incomplete so a replay fills the gap.");
            self.segmenters.remove(&key);
        } else if complete || !is_resumable(source) {
            self.close_source(&key, complete);
        } else {
            self.segmenters.remove(&key);
        }
        self.progress.remove(&key);
    }

    /// Closes the open segment of a source (rebuilt from the store when
    /// this run saw none of its frames) and, if `complete`, marks its
    /// checkpoint complete, in one write.
    fn close_source(&mut self, key: &(Arc<str>, Arc<str>), complete: bool) {
        let (stream, source) = key;
        let (stream_id, interval, update) = match self.progress_of(stream, source) {
            Ok(p) => {
                if complete {
                    p.checkpoint.complete = true;
                }
                (
                    p.stream_id,
                    p.checkpoint.sample_interval_ns,
                    complete.then(|| CheckpointUpdate {
                        stream_id: p.stream_id,
                        source: source.to_string(),
                        checkpoint: p.checkpoint.clone(),
                    }),
                )
            }
            Err(error) => {
                tracing::error!(%error, %stream, "Cannot record the end of a source.");
                return;
            }
        };
        let mut segments = SegmentWrites::default();
        if self.segmenting.is_some() {
            // A resume that delivered no frames still has to close the
            // segment the previous run left open.
            self.segmenter(key, stream_id, None, i64::MAX, interval);
            if let Some(SourceSegments {
                mut segmenter,
                label,
            }) = self.segmenters.remove(key)
            {
                for closed in segmenter.finish() {
                    segments
                        .closed
                        .push(new_segment(stream_id, &label, source, closed));
                }
                segments.open.push(OpenMarker {
                    stream_id,
                    source: source.to_string(),
                    open: None,
                });
            }
            segments.closed.splice(0..0, self.rebuilt.drain(..));
        }
        let updates: Vec<CheckpointUpdate> = update.into_iter().collect();
        if updates.is_empty() && segments.is_empty() {
            return;
        }
        match self.store.write(&[], &updates, &segments) {
            Ok(_) => self.totals.segments += segments.closed.len() as u64,
            Err(error) => {
                tracing::error!(%error, %stream, "Cannot record the end of a source.")
            }
        }
    }

    /// At shutdown: live sources close their segments (files keep theirs
    /// open in the store, to go on when replayed again).
    fn close_live_sources(&mut self) {
        let live: Vec<_> = self
            .segmenters
            .keys()
            .filter(|k| !is_resumable(&k.1))
            .cloned()
            .collect();
        for key in live {
            self.close_source(&key, false);
        }
    }
}

impl InferenceWorker {
    /// The segmenter of a (stream, source); on first use it is rebuilt
    /// from the stored frames of the segment a previous run left open, so an
    /// interrupted scene goes on instead of being cut at the restart.
    /// `label` is the source's label (`None`: the one stored with the open
    /// segment, if any); `until_ns` bounds the frames read back.
    fn segmenter(
        &mut self,
        key: &(Arc<str>, Arc<str>),
        stream_id: u32,
        label: Option<Arc<str>>,
        until_ns: i64,
        interval_ns: u64,
    ) -> Option<&mut Segmenter> {
        let config = self.segmenting.clone()?;
        if !self.segmenters.contains_key(key) {
            let mut seg = Segmenter::new(config);
            let label = match self.rebuild(&mut seg, key, stream_id, until_ns, interval_ns) {
                Ok(Some((n, stored_label, closed))) => {
                    tracing::info!(stream = %key.0, frames = n, "Open segment rebuilt from the store.");
                    let label = label.unwrap_or(stored_label);
                    for c in closed {
                        self.rebuilt.push(new_segment(stream_id, &label, &key.1, c));
                    }
                    Some(label)
                }
                Ok(None) => label,
                Err(error) => {
                    tracing::warn!(%error, stream = %key.0, "Cannot rebuild the open segment; a new one starts here.");
                    label
                }
            };
            let label = label?;
            self.segmenters.insert(
                key.clone(),
                SourceSegments {
                    segmenter: seg,
                    label,
                },
            );
        }
        self.segmenters.get_mut(key).map(|s| &mut s.segmenter)
    }

    /// Feeds the stored frames of the open segment back into `seg` (files:
    /// up to their checkpoint). Returns how many, the stored label, and
    /// what they closed; `None` when no segment was left open.
    #[allow(clippy::type_complexity)]
    fn rebuild(
        &self,
        seg: &mut Segmenter,
        key: &(Arc<str>, Arc<str>),
        stream_id: u32,
        until_ns: i64,
        interval_ns: u64,
    ) -> Result<Option<(usize, Arc<str>, Vec<ClosedSegment>)>, crate::store::StoreError> {
        let Some(open) = self.store.open_segment(stream_id, &key.1)? else {
            return Ok(None);
        };
        let resume_pts = if is_resumable(&key.1) {
            self.progress
                .get(key)
                .and_then(|p| p.checkpoint.last_pts_ns)
        } else {
            None
        };
        let frames: Vec<SegmentFrame> = self
            .store
            .frames_between(stream_id, open.state.start_ns, until_ns, &open.label)?
            .into_iter()
            .take_while(|f| resume_pts.is_none_or(|p| f.record.pts_ns <= p))
            .map(|f| SegmentFrame {
                ts_ns: f.key.ts_ns,
                pts_ns: f.record.pts_ns,
                duration_ns: interval_ns,
                embedding: f.embedding.into(),
                tags: f.tags.sets.into_iter().map(|t| (t.set, t.top)).collect(),
                caption_image: None,
            })
            .collect();
        let n = frames.len();
        let closed = seg.restore(&open.state, frames);
        Ok(Some((n, open.label.as_str().into(), closed)))
    }
}

/// The store record of a closed segment, its keyframe queued for a caption.
fn new_segment(stream_id: u32, label: &str, source_id: &str, closed: ClosedSegment) -> NewSegment {
    let caption_image = closed.caption_image.as_ref().map(|rgb| CaptionJob {
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
            source: label.to_string(),
            source_id: source_id.to_string(),
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
    }
}
