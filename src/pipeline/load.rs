//! How busy the pipeline is, shared by handle with whoever needs to know:
//! ingest counts frames in, the worker counts them out and marks its
//! batches, the caption worker yields while tagging has work, and the
//! daemon reads the worker's heartbeat.
//!
//! The frame channel is built here too, because its ends keep the count:
//! one bounded queue per stream, taken round robin (see [`FrameSender`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Condvar, Mutex};
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
    /// Set when a store write failed (disk full): the worker stopped.
    store_failure: Mutex<Option<String>>,
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
            store_failure: Mutex::new(None),
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

    /// Why the worker stopped storing, if the store refused a write.
    pub fn store_failure(&self) -> Option<String> {
        self.store_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn store_failed(&self, error: String) {
        *self.store_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
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

/// One bounded queue per stream, taken round robin, so a file replaying at
/// full speed cannot starve a live camera: each stream waits only for its
/// own queue, and the worker takes one event from each non-empty queue in
/// turn. Events of one stream stay in order.
#[derive(Debug)]
struct FrameQueues {
    state: Mutex<QueueState>,
    /// Signalled when an event is queued or the last sender leaves.
    queued: Condvar,
    /// Signalled when an event is taken or the receiver leaves.
    taken: Condvar,
    /// Events per stream.
    capacity: usize,
    load: Arc<PipelineLoad>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Per stream, in order of first use.
    streams: Vec<(Arc<str>, VecDeque<IngestEvent>)>,
    /// Where the next round-robin turn starts.
    next: usize,
    senders: usize,
    receiver: bool,
}

impl QueueState {
    fn queue_of(&mut self, stream: &Arc<str>) -> &mut VecDeque<IngestEvent> {
        let i = match self.streams.iter().position(|(s, _)| s == stream) {
            Some(i) => i,
            None => {
                self.streams.push((stream.clone(), VecDeque::new()));
                self.streams.len() - 1
            }
        };
        &mut self.streams[i].1
    }

    /// The next event, round robin over the streams.
    fn take(&mut self) -> Option<IngestEvent> {
        let n = self.streams.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if let Some(event) = self.streams[i].1.pop_front() {
                self.next = (i + 1) % n;
                return Some(event);
            }
        }
        None
    }
}

fn stream_of(event: &IngestEvent) -> &Arc<str> {
    match event {
        IngestEvent::Frame(f) => &f.stream,
        IngestEvent::SourceEnded { key, .. } => &key.stream,
    }
}

fn lock(q: &FrameQueues) -> std::sync::MutexGuard<'_, QueueState> {
    q.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The ingest end of the frame channel (one per ingest thread; clones
/// share the queues).
#[derive(Debug)]
pub struct FrameSender {
    queues: Arc<FrameQueues>,
}

impl Clone for FrameSender {
    fn clone(&self) -> Self {
        lock(&self.queues).senders += 1;
        Self {
            queues: self.queues.clone(),
        }
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        let mut state = lock(&self.queues);
        state.senders -= 1;
        if state.senders == 0 {
            self.queues.queued.notify_all();
        }
    }
}

impl FrameSender {
    /// Queues an event on its stream's queue, blocking while that queue is
    /// full.
    pub fn send(&self, event: IngestEvent) -> Result<(), PipelineClosed> {
        let q = &self.queues;
        let frame = matches!(event, IngestEvent::Frame(_));
        let stream = stream_of(&event).clone();
        let mut state = lock(q);
        loop {
            if !state.receiver {
                return Err(PipelineClosed);
            }
            if state.queue_of(&stream).len() < q.capacity {
                break;
            }
            state = q.taken.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.queue_of(&stream).push_back(event);
        drop(state);
        q.queued.notify_one();
        if frame {
            let queued = q.load.queued.fetch_add(1, Ordering::Relaxed) + 1;
            ::metrics::gauge!(metrics::QUEUE_DEPTH).set(queued as f64);
        }
        Ok(())
    }
}

/// The worker's end of the frame channel.
#[derive(Debug)]
pub struct FrameReceiver {
    queues: Arc<FrameQueues>,
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        lock(&self.queues).receiver = false;
        self.queues.taken.notify_all();
    }
}

impl FrameReceiver {
    /// The next event (round robin over streams) within `timeout`;
    /// `Disconnected` once every sender is gone and the queues are empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<IngestEvent, RecvTimeoutError> {
        let q = &self.queues;
        let deadline = Instant::now() + timeout;
        let mut state = lock(q);
        loop {
            if let Some(event) = state.take() {
                drop(state);
                q.taken.notify_all();
                self.taken(&event);
                return Ok(event);
            }
            if state.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            state = q
                .queued
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Stops taking events: senders get [`PipelineClosed`] from now on.
    /// Returns how many queued frames were thrown away.
    pub fn close(&self) -> u64 {
        let mut state = lock(&self.queues);
        state.receiver = false;
        let mut frames = 0;
        for (_, queue) in &mut state.streams {
            frames += queue
                .drain(..)
                .filter(|e| matches!(e, IngestEvent::Frame(_)))
                .count() as u64;
        }
        drop(state);
        self.queues.taken.notify_all();
        let queued = self
            .queues
            .load
            .queued
            .fetch_sub(frames as i64, Ordering::Relaxed)
            - frames as i64;
        ::metrics::gauge!(metrics::QUEUE_DEPTH).set(queued.max(0) as f64);
        frames
    }

    /// Every event until all senders are gone.
    pub fn iter(&self) -> impl Iterator<Item = IngestEvent> + '_ {
        std::iter::from_fn(move || {
            loop {
                match self.recv_timeout(Duration::from_secs(3600)) {
                    Ok(event) => return Some(event),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return None,
                }
            }
        })
    }

    fn taken(&self, event: &IngestEvent) {
        if matches!(event, IngestEvent::Frame(_)) {
            let queued = self.queues.load.queued.fetch_sub(1, Ordering::Relaxed) - 1;
            ::metrics::gauge!(metrics::QUEUE_DEPTH).set(queued.max(0) as f64);
        }
    }
}

/// A frame channel with a bounded queue of `capacity` events per stream,
/// whose ends count queued frames into `load`.
pub fn frame_channel(capacity: usize, load: Arc<PipelineLoad>) -> (FrameSender, FrameReceiver) {
    let queues = Arc::new(FrameQueues {
        state: Mutex::new(QueueState {
            senders: 1,
            receiver: true,
            ..Default::default()
        }),
        queued: Condvar::new(),
        taken: Condvar::new(),
        capacity: capacity.max(1),
        load,
    });
    (
        FrameSender {
            queues: queues.clone(),
        },
        FrameReceiver { queues },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::frame::{Frame, SourceId};

    fn frame(stream: &str, pts_ns: u64) -> IngestEvent {
        IngestEvent::Frame(Frame {
            stream: stream.into(),
            source_id: SourceId::from_stored(stream),
            source_label: stream.into(),
            pts_ns,
            sample_interval_ns: 1,
            ts_ns: pts_ns as i64,
            width: 1,
            height: 1,
            clip_crop: Vec::new(),
            keyframe_images: Default::default(),
            thumbnail: None,
        })
    }

    fn pts(event: &IngestEvent) -> (String, u64) {
        match event {
            IngestEvent::Frame(f) => (f.stream.to_string(), f.pts_ns),
            IngestEvent::SourceEnded { .. } => unreachable!(),
        }
    }

    #[test]
    fn a_flooding_file_does_not_hold_up_a_live_stream() {
        let (tx, rx) = frame_channel(16, PipelineLoad::new());
        let epoch = Instant::now();
        // Frames carry the time they were sent (in `ts_ns`).
        let stamped = move |stream: &str, i: u64| {
            let mut e = frame(stream, i);
            if let IngestEvent::Frame(f) = &mut e {
                f.ts_ns = epoch.elapsed().as_nanos() as i64;
            }
            e
        };
        // The file sends as fast as its queue takes it.
        let file_tx = tx.clone();
        let file = std::thread::spawn(move || {
            for i in 0..1000 {
                if file_tx.send(stamped("file", i)).is_err() {
                    break;
                }
            }
        });
        // The live camera sends a frame every 30 ms: less than its fair
        // share of the worker (half of 100 events/s).
        let live_tx = tx.clone();
        let live = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            for i in 0..20 {
                live_tx.send(stamped("live", i)).unwrap();
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        drop(tx);
        // A worker that takes an event every 10 ms: far behind the file.
        let mut got: Vec<(String, u64)> = Vec::new();
        let mut worst = Duration::ZERO;
        while got.iter().filter(|(s, _)| s == "live").count() < 20 {
            let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            if let IngestEvent::Frame(f) = &e
                && &*f.stream == "live"
            {
                let sent = Duration::from_nanos(f.ts_ns as u64);
                worst = worst.max(epoch.elapsed().saturating_sub(sent));
            }
            got.push(pts(&e));
            std::thread::sleep(Duration::from_millis(10));
        }
        live.join().unwrap();
        drop(rx);
        file.join().unwrap();
        // Behind one shared queue of 16, each live frame would wait ~160 ms
        // (and its camera's appsink drop frames meanwhile).
        assert!(
            worst < Duration::from_millis(80),
            "live frames waited {worst:?}"
        );
        // Each stream's events stay in order.
        for name in ["file", "live"] {
            let seq: Vec<u64> = got.iter().filter(|(s, _)| s == name).map(|e| e.1).collect();
            assert!(seq.windows(2).all(|w| w[0] < w[1]), "{name}: {seq:?}");
        }
    }

    #[test]
    fn the_receiver_sees_the_end_once_every_sender_is_gone_and_drained() {
        let (tx, rx) = frame_channel(4, PipelineLoad::new());
        let tx2 = tx.clone();
        tx.send(frame("a", 1)).unwrap();
        drop(tx);
        tx2.send(frame("b", 2)).unwrap();
        drop(tx2);
        let all: Vec<(String, u64)> = rx.iter().map(|e| pts(&e)).collect();
        assert_eq!(all, vec![("a".into(), 1), ("b".into(), 2)]);
        let (tx, rx) = frame_channel(4, PipelineLoad::new());
        drop(rx);
        assert_eq!(tx.send(frame("a", 1)), Err(PipelineClosed));
    }

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
