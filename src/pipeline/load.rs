//! How busy the pipeline is, shared by handle with whoever needs to know:
//! ingest counts frames in, the worker counts them out and marks its
//! batches, the caption worker yields while tagging has work, and the
//! daemon reads the worker's heartbeat.
//!
//! The frame channel is built here too, because its ends keep the count:
//! the std channel does not expose its length.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use super::frame::IngestEvent;
use super::metrics;

/// Load and liveness of one pipeline.
#[derive(Debug)]
pub struct PipelineLoad {
    /// Frames sent into the channel and not yet taken out.
    queued: AtomicI64,
    /// Batches being embedded right now.
    busy: AtomicI64,
    /// Frames stored so far (progress displays).
    stored: AtomicU64,
    /// When the worker last showed life, ms after `epoch`.
    heartbeat_ms: AtomicU64,
    /// Cleared when the worker thread panics.
    alive: AtomicBool,
    /// Set when the worker returned (every sender gone): not hung, done.
    finished: AtomicBool,
    epoch: Instant,
}

impl Default for PipelineLoad {
    fn default() -> Self {
        Self {
            queued: AtomicI64::new(0),
            busy: AtomicI64::new(0),
            stored: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(0),
            alive: AtomicBool::new(true),
            finished: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }
}

impl PipelineLoad {
    /// A new, idle load.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether tagging has nothing to do: no queued frames, no batch
    /// running. The captioner only runs then.
    pub fn is_idle(&self) -> bool {
        self.queued.load(Ordering::Relaxed) <= 0 && self.busy.load(Ordering::Relaxed) <= 0
    }

    /// Frames waiting between ingest and the worker.
    pub fn queued_frames(&self) -> u64 {
        self.queued.load(Ordering::Relaxed).max(0) as u64
    }

    /// Frames the worker has stored.
    pub fn stored_frames(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Time since the worker last finished a batch or waited idle.
    pub fn since_heartbeat(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// Whether the worker thread is alive (false after a panic).
    pub fn worker_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Whether the worker shows life: it finished a batch or waited idle
    /// within `within`, or it returned normally. A hung model run or store
    /// write stops the heartbeat; a panic makes this false for good.
    pub fn worker_responsive(&self, within: Duration) -> bool {
        self.worker_alive()
            && (self.finished.load(Ordering::Relaxed) || self.since_heartbeat() <= within)
    }

    pub(super) fn worker_finished(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    pub(super) fn beat(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(now, Ordering::Relaxed);
    }

    pub(super) fn add_stored(&self, n: u64) {
        self.stored.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn worker_died(&self) {
        self.alive.store(false, Ordering::Relaxed);
    }

    /// Marks a batch as running until the guard drops.
    pub(super) fn batch_running(&self) -> BatchRunning<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        BatchRunning(self)
    }
}

/// A running batch (see [`PipelineLoad::batch_running`]).
pub(super) struct BatchRunning<'a>(&'a PipelineLoad);

impl Drop for BatchRunning<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.beat();
    }
}

/// The receiving end is gone: the pipeline stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineClosed;

/// The ingest end of the frame channel.
#[derive(Debug, Clone)]
pub struct FrameSender {
    tx: SyncSender<IngestEvent>,
    load: Arc<PipelineLoad>,
}

impl FrameSender {
    /// Sends an event, blocking while the channel is full.
    pub fn send(&self, event: IngestEvent) -> Result<(), PipelineClosed> {
        let frame = matches!(event, IngestEvent::Frame(_));
        self.tx.send(event).map_err(|_| PipelineClosed)?;
        if frame {
            let queued = self.load.queued.fetch_add(1, Ordering::Relaxed) + 1;
            ::metrics::gauge!(metrics::QUEUE_DEPTH).set(queued as f64);
        }
        Ok(())
    }
}

/// The worker's end of the frame channel.
#[derive(Debug)]
pub struct FrameReceiver {
    rx: Receiver<IngestEvent>,
    load: Arc<PipelineLoad>,
}

impl FrameReceiver {
    /// The next event within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<IngestEvent, RecvTimeoutError> {
        let event = self.rx.recv_timeout(timeout)?;
        self.taken(&event);
        Ok(event)
    }

    /// Every event until all senders are gone.
    pub fn iter(&self) -> impl Iterator<Item = IngestEvent> + '_ {
        self.rx.iter().inspect(|e| self.taken(e))
    }

    fn taken(&self, event: &IngestEvent) {
        if matches!(event, IngestEvent::Frame(_)) {
            let queued = self.load.queued.fetch_sub(1, Ordering::Relaxed) - 1;
            ::metrics::gauge!(metrics::QUEUE_DEPTH).set(queued.max(0) as f64);
        }
    }
}

/// A bounded frame channel whose ends count into `load`.
pub fn frame_channel(capacity: usize, load: Arc<PipelineLoad>) -> (FrameSender, FrameReceiver) {
    let (tx, rx) = sync_channel(capacity.max(1));
    (
        FrameSender {
            tx,
            load: load.clone(),
        },
        FrameReceiver { rx, load },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_stops_beating_is_not_responsive() {
        let load = PipelineLoad::new();
        let within = Duration::from_millis(80);
        load.beat();
        assert!(load.worker_responsive(within));
        // A hung batch: no beat for longer than `within`.
        let running = load.batch_running();
        std::thread::sleep(Duration::from_millis(120));
        assert!(!load.worker_responsive(within));
        // The batch ends: its guard beats.
        drop(running);
        assert!(load.worker_responsive(within));
        // A worker that returned is done, not hung, however long ago.
        load.worker_finished();
        std::thread::sleep(Duration::from_millis(120));
        assert!(load.worker_responsive(within));
        // A panic is never responsive.
        load.worker_died();
        assert!(!load.worker_responsive(within));
    }
}
