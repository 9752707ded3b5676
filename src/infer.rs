//! The inference worker: batches frames from every stream, embeds them with
//! CLIP, tags them, and writes them to the store.
//!
//! It runs on its own OS thread (model runs are CPU-bound and must stay off
//! the async threads) and reads one bounded channel that every ingest
//! worker feeds. Each batch is stored in one transaction together with the
//! replay checkpoints of the sources it covers. When the channel closes the
//! worker flushes its open batch and the store, then returns its totals.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ndarray::{Array4, Axis};

use crate::batcher::{Batch, BatchAssembler, BatcherConfig};
use crate::frame::{Frame, IngestEvent};
use crate::models::ClipModel;
use crate::store::{
    Checkpoint, CheckpointUpdate, FrameKey, FrameRecord, SetTag, Store, StoredFrame, TagRecord,
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
    /// Time spent in the image encoder.
    pub inference_secs: f64,
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
        }
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
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, "Store flush failed at shutdown.");
        }
        self.totals
    }

    fn process(&mut self, batch: Batch<Frame>) {
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
                touched.push(key);
            }
            let scores = self.tagger.tag(embed);
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
                embedding: l2_normalize(embed).to_vec(),
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
        match self.store.write_batch(&stored, &checkpoints) {
            Ok(new) => {
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
            self.damaged.insert((f.stream.clone(), f.source.clone()));
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

    /// A source ended: mark it complete if it was read to its end without
    /// losing a batch, and forget its in-memory progress.
    fn end_source(&mut self, stream: &Arc<str>, source: &Arc<str>, complete: bool) {
        let key = (stream.clone(), source.clone());
        if self.damaged.remove(&key) {
            tracing::error!(%stream, %source, "Frames of this source were lost; it stays incomplete so a replay fills the gap.");
        } else if complete {
            self.mark_complete(stream, source);
        }
        self.progress.remove(&key);
    }

    fn mark_complete(&mut self, stream: &Arc<str>, source: &Arc<str>) {
        let update = match self.progress_of(stream, source) {
            Ok(p) => {
                p.checkpoint.complete = true;
                CheckpointUpdate {
                    stream_id: p.stream_id,
                    source: source.to_string(),
                    checkpoint: p.checkpoint.clone(),
                }
            }
            Err(error) => {
                tracing::error!(%error, %stream, "Cannot record the end of a source.");
                return;
            }
        };
        if let Err(error) = self.store.write_batch(&[], &[update]) {
            tracing::error!(%error, %stream, "Cannot record the end of a source.");
        }
    }
}
