//! The worker loop: frames from the channel -> batches -> embeddings and
//! tags -> checkpoints and segments -> one store transaction per batch.
//!
//! It runs on its own OS thread (model runs are CPU-bound and must stay off
//! the async threads). Captioning runs elsewhere (see `caption`): this
//! worker never waits for it. When every sender is gone the worker flushes
//! its open batch and the store, then returns its totals.

use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use super::batch::{Batch, BatchAssembler};
use super::embed::FrameEmbedder;
use super::frame::{Frame, IngestEvent, SourceKey};
use super::load::{FrameReceiver, PipelineLoad};
use super::metrics;
use super::rigs::RigTracker;
use super::segments::SegmentTracker;
use super::sources::{SourceEnding, SourceTracker};
use crate::fuse::assembler::ViewFrame;
use crate::store::{RigWrite, SegmentWrites, Store, StoreError};

/// Totals of a pipeline run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PipelineTotals {
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
    /// Caption jobs dropped because the backlog was full.
    pub caption_jobs_dropped: u64,
    /// Set when the store refused a write (disk full, I/O error): the
    /// worker stopped at that batch. Frames counted in `frames` before it
    /// may not all be on disk (sled writes behind); reopen the store to
    /// know what is.
    pub store_failure: Option<String>,
}

impl PipelineTotals {
    /// Adds the totals of a later run (the daemon restarts its pipeline
    /// after the store comes back).
    pub fn add(&mut self, later: PipelineTotals) {
        self.frames += later.frames;
        self.new_frames += later.new_frames;
        self.failed += later.failed;
        self.batches += later.batches;
        self.segments += later.segments;
        self.inference_secs += later.inference_secs;
        self.caption_jobs_dropped += later.caption_jobs_dropped;
        if later.store_failure.is_some() {
            self.store_failure = later.store_failure;
        }
    }
}

/// Why frames were lost (a metric label).
#[derive(Debug, Clone, Copy)]
enum LossReason {
    Inference,
    Store,
}

impl LossReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Inference => "inference_error",
            Self::Store => "store_error",
        }
    }
}

/// Embeds, tags and stores frames.
pub(super) struct Worker {
    pub(super) embedder: FrameEmbedder,
    pub(super) store: Store,
    pub(super) sources: SourceTracker,
    pub(super) segments: Option<SegmentTracker>,
    pub(super) rigs: Option<RigTracker>,
    pub(super) load: Arc<PipelineLoad>,
    pub(super) max_caption_backlog: usize,
    pub(super) totals: PipelineTotals,
}

impl Worker {
    /// Runs until every sender is gone, then flushes; returns the totals.
    pub(super) fn run(
        mut self,
        rx: FrameReceiver,
        mut assembler: BatchAssembler<Frame>,
    ) -> PipelineTotals {
        loop {
            let deadline = match (assembler.deadline(), self.rig_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = deadline.map_or(Duration::from_millis(500), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(timeout) {
                Ok(IngestEvent::Frame(frame)) => {
                    if let Some(batch) = assembler.push(frame, Instant::now()) {
                        self.process(batch);
                    }
                }
                Ok(IngestEvent::SourceEnded { key, complete }) => {
                    // The source's last frames go out before its checkpoint says complete.
                    if let Some(batch) = assembler.drain() {
                        self.process(batch);
                    }
                    self.end_source(&key, complete);
                    self.rig_event(|rigs, out| rigs.source_ended(&key.stream, Instant::now(), out));
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.load.beat();
                    if let Some(batch) = assembler.poll(Instant::now()) {
                        self.process(batch);
                    }
                    self.rig_event(|rigs, out| rigs.poll(Instant::now(), out));
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.totals.store_failure.is_some() {
                return self.stop_unwritable(&rx, assembler);
            }
        }
        if let Some(batch) = assembler.drain() {
            self.process(batch);
        }
        self.rig_event(|rigs, out| rigs.finish(out));
        // Live sources close their segments; files keep theirs open in the
        // store, to go on when replayed again.
        if let Some(segments) = &self.segments {
            for key in segments.live_sources() {
                self.close_source(&key, false);
            }
        }
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, "Store flush failed at shutdown.");
            self.store_failed(&error);
        }
        self.load.worker_finished();
        self.totals
    }

    /// When a live rig record is due.
    fn rig_deadline(&self) -> Option<Instant> {
        self.rigs.as_ref().and_then(RigTracker::next_deadline)
    }

    /// Rig records emitted outside a batch (a source ended, a deadline,
    /// the end), written on their own.
    fn rig_event(&mut self, event: impl FnOnce(&mut RigTracker, &mut Vec<super::rigs::Emitted>)) {
        let Some(rigs) = &mut self.rigs else {
            return;
        };
        let mut emitted = Vec::new();
        event(rigs, &mut emitted);
        if emitted.is_empty() {
            return;
        }
        let writes: Vec<RigWrite> = rigs.writes(emitted);
        if let Err(error) = self
            .store
            .write(&[], &[], &SegmentWrites::default(), &writes)
        {
            tracing::error!(%error, records = writes.len(), "Cannot store rig records.");
            self.store_failed(&error);
        }
    }

    /// The store refused a write: sled keeps failing until it is reopened,
    /// so the worker stops at once instead of decoding and dropping the
    /// rest. Ingest sees the pipeline closed; what is queued is counted.
    fn stop_unwritable(
        mut self,
        rx: &FrameReceiver,
        mut assembler: BatchAssembler<Frame>,
    ) -> PipelineTotals {
        let mut lost = rx.close();
        if let Some(batch) = assembler.drain() {
            lost += batch.items.len() as u64;
        }
        self.totals.failed += lost;
        tracing::error!(
            error = self.totals.store_failure.as_deref().unwrap_or_default(),
            frames_not_stored = lost,
            "The store cannot be written; the pipeline stopped."
        );
        self.load.worker_finished();
        self.totals
    }

    fn store_failed(&mut self, error: &StoreError) {
        if matches!(error, StoreError::Unwritable { .. }) && self.totals.store_failure.is_none() {
            self.totals.store_failure = Some(error.to_string());
            self.load.store_failed(error.to_string());
        }
    }

    fn process(&mut self, batch: Batch<Frame>) {
        // Tells the captioner to hold off while a batch runs.
        let load = self.load.clone();
        let _running = load.batch_running();
        let n = batch.items.len();
        ::metrics::histogram!(metrics::BATCH_SIZE).record(n as f64);
        ::metrics::counter!(metrics::BATCHES_FLUSHED, "reason" => batch.reason.as_str())
            .increment(1);
        // Reliability tests hang or fail the model run here.
        fail::fail_point!("pipeline::embed");
        let (embedded, secs) = match self.embedder.embed(&batch.items) {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, frames = n, "Image encoder failed; batch dropped.");
                self.fail_batch(&batch.items, LossReason::Inference);
                return;
            }
        };
        ::metrics::histogram!(metrics::INFERENCE_SECONDS).record(secs);
        self.totals.inference_secs += secs;
        self.totals.batches += 1;

        let mut stored = Vec::with_capacity(n);
        let mut segment_input = Vec::new();
        let mut touched: Vec<(SourceKey, u32)> = Vec::new();
        let mut rig_records = Vec::new();
        for (frame, embedded) in batch.items.iter().zip(embedded) {
            let stream_id = match self.sources.record(frame) {
                Ok(id) => id,
                Err(error) => {
                    tracing::error!(%error, stream = %frame.stream, "Cannot resolve stream; frame dropped.");
                    continue;
                }
            };
            let key = frame.source_key();
            if !touched.iter().any(|(k, _)| k == &key) {
                touched.push((key.clone(), stream_id));
            }
            if self.segments.is_some() && !self.sources.is_damaged(&key) {
                segment_input.push((key, frame, embedded.segment_input(frame)));
            }
            let stored_frame = embedded.into_stored(frame, stream_id);
            if let Some(rigs) = &mut self.rigs
                && rigs.has_camera(&frame.stream)
            {
                let view = ViewFrame {
                    stream_id,
                    ts_ns: frame.ts_ns,
                    pts_ns: frame.pts_ns,
                    embedding: stored_frame.embedding.clone().into(),
                };
                rigs.push(&frame.stream, view, Instant::now(), &mut rig_records);
            }
            stored.push(stored_frame);
        }
        let rig_writes = self
            .rigs
            .as_ref()
            .map_or_else(Vec::new, |r| r.writes(rig_records));
        let checkpoints = self.sources.updates(touched.iter().map(|(k, _)| k));
        let mut writes = SegmentWrites::default();
        if let Some(segments) = &mut self.segments {
            for (key, frame, input) in segment_input {
                // Recorded above: the position is in memory.
                let Ok(at) = self.sources.position(&key) else {
                    continue;
                };
                segments.push(&key, &frame.source_label, at, input, &mut writes);
            }
            segments.finish_writes(&touched, &mut writes);
        }
        match self
            .store
            .write(&stored, &checkpoints, &writes, &rig_writes)
        {
            Ok(new) => {
                self.totals.segments += writes.closed.len() as u64;
                ::metrics::counter!(metrics::SEGMENTS).increment(writes.closed.len() as u64);
                self.totals.frames += stored.len() as u64;
                self.load.add_stored(stored.len() as u64);
                self.totals.new_frames += new as u64;
                for frame in &batch.items {
                    ::metrics::counter!(metrics::FRAMES_STORED, "stream" => frame.stream.to_string()).increment(1);
                }
                if writes.closed.iter().any(|s| s.caption_image.is_some()) {
                    self.bound_caption_backlog();
                }
            }
            Err(error) => {
                tracing::error!(%error, frames = n, "Store write failed; batch dropped.");
                self.fail_batch(&batch.items, LossReason::Store);
                self.store_failed(&error);
            }
        }
    }

    /// A captioner far behind (or none running) must not fill the disk:
    /// the oldest jobs go, counted; frames and segments stay.
    fn bound_caption_backlog(&mut self) {
        match self.store.trim_caption_backlog(self.max_caption_backlog) {
            Ok(0) => {}
            Ok(n) => {
                self.totals.caption_jobs_dropped += n as u64;
                ::metrics::counter!(metrics::CAPTION_JOBS_DROPPED).increment(n as u64);
                tracing::warn!(
                    dropped = n,
                    max = self.max_caption_backlog,
                    "Caption backlog full; the oldest keyframes were dropped."
                );
            }
            Err(error) => tracing::error!(%error, "Cannot trim the caption backlog."),
        }
    }

    fn fail_batch(&mut self, frames: &[Frame], reason: LossReason) {
        self.totals.failed += frames.len() as u64;
        for f in frames {
            let key = f.source_key();
            // A file's segments are rebuilt by the replay that fills the
            // hole. A live source's segmenter restarts from the store (the
            // lost frames are a gap) and segmentation goes on.
            self.sources.lost_frame(&key);
            if let Some(segments) = &mut self.segments {
                segments.forget(&key);
            }
            ::metrics::counter!(metrics::FRAMES_DROPPED, "stream" => f.stream.to_string(), "reason" => reason.as_str()).increment(1);
        }
    }

    /// A source ended: recorded as [`SourceTracker::end`] decides.
    fn end_source(&mut self, key: &SourceKey, complete: bool) {
        match self.sources.end(key, complete) {
            SourceEnding::Close { complete } => self.close_source(key, complete),
            SourceEnding::Damaged | SourceEnding::Suspend => {
                if let Some(segments) = &mut self.segments {
                    segments.forget(key);
                }
            }
        }
        self.sources.forget(key);
        // A source's end is a natural point to make its frames durable (and
        // to learn early that the disk refuses them).
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, stream = %key.stream, "Store flush failed at the end of a source.");
            self.store_failed(&error);
        }
    }

    /// Closes the open segment of a source and, if `complete`, marks its
    /// checkpoint complete, in one write.
    fn close_source(&mut self, key: &SourceKey, complete: bool) {
        let stream = &key.stream;
        let ending = self.sources.position(key).and_then(|at| {
            let update = complete.then(|| self.sources.complete(key)).transpose()?;
            Ok((at, update))
        });
        let (at, update) = match ending {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, %stream, "Cannot record the end of a source.");
                return;
            }
        };
        let writes = match &mut self.segments {
            Some(segments) => segments.close(key, at),
            None => SegmentWrites::default(),
        };
        let updates: Vec<_> = update.into_iter().collect();
        if updates.is_empty() && writes.is_empty() {
            return;
        }
        match self.store.write(&[], &updates, &writes, &[]) {
            Ok(_) => {
                self.totals.segments += writes.closed.len() as u64;
                if writes.closed.iter().any(|s| s.caption_image.is_some()) {
                    self.bound_caption_backlog();
                }
            }
            Err(error) => {
                tracing::error!(%error, %stream, "Cannot record the end of a source.");
                self.store_failed(&error);
            }
        }
    }
}
