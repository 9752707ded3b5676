//! Cross-stream batching: frames from every stream share encoder runs.
//!
//! Which frames go into which batch: frames join the open batch in arrival
//! order, whatever their stream. The batch is flushed when it holds
//! `max_frames` frames (`Full`), when its oldest frame has waited
//! `max_wait_ms` (`Timeout`), or when a source ends or the pipeline drains
//! (`Drain`), so a file's last frames never wait for a partner. A flushed
//! batch records its reason for telemetry.
//!
//! ```toml
//! [batcher]
//! max_frames = 8
//! max_wait_ms = 200
//! ```
//!
//! The assembler is pure: time is passed in, so tests need no clock.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[batcher]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatcherConfig {
    /// Largest batch.
    #[serde(default = "default_max_frames")]
    pub max_frames: usize,
    /// Longest a frame waits for the batch to fill.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
}

fn default_max_frames() -> usize {
    8
}
fn default_max_wait_ms() -> u64 {
    200
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_frames: default_max_frames(),
            max_wait_ms: default_max_wait_ms(),
        }
    }
}

/// Why a batch was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// It reached `max_frames`.
    Full,
    /// Its oldest frame waited `max_wait_ms`.
    Timeout,
    /// A source ended or the pipeline is draining.
    Drain,
}

impl FlushReason {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Timeout => "timeout",
            Self::Drain => "drain",
        }
    }
}

/// A flushed batch.
#[derive(Debug)]
pub struct Batch<T> {
    /// Items in arrival order.
    pub items: Vec<T>,
    /// Why it was flushed.
    pub reason: FlushReason,
}

/// Collects items into batches.
#[derive(Debug)]
pub struct BatchAssembler<T> {
    max_frames: usize,
    max_wait: Duration,
    items: Vec<T>,
    oldest: Option<Instant>,
}

impl<T> BatchAssembler<T> {
    /// An assembler with the given limits (`max_frames` >= 1).
    pub fn new(config: &BatcherConfig) -> Self {
        let max_frames = config.max_frames.max(1);
        Self {
            max_frames,
            max_wait: Duration::from_millis(config.max_wait_ms),
            items: Vec::with_capacity(max_frames),
            oldest: None,
        }
    }

    /// Adds an item that arrived at `now`; returns the batch if now full.
    pub fn push(&mut self, item: T, now: Instant) -> Option<Batch<T>> {
        if self.items.is_empty() {
            self.oldest = Some(now);
        }
        self.items.push(item);
        (self.items.len() >= self.max_frames).then(|| self.take(FlushReason::Full))
    }

    /// When the open batch times out, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.max_wait)
    }

    /// Flushes the open batch if its deadline has passed at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<Batch<T>> {
        match self.deadline() {
            Some(d) if now >= d => Some(self.take(FlushReason::Timeout)),
            _ => None,
        }
    }

    /// Flushes whatever is open (source end, shutdown).
    pub fn drain(&mut self) -> Option<Batch<T>> {
        (!self.items.is_empty()).then(|| self.take(FlushReason::Drain))
    }

    /// Items in the open batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no batch is open.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn take(&mut self, reason: FlushReason) -> Batch<T> {
        self.oldest = None;
        Batch {
            items: std::mem::replace(&mut self.items, Vec::with_capacity(self.max_frames)),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assembler(max_frames: usize, max_wait_ms: u64) -> BatchAssembler<u32> {
        BatchAssembler::new(&BatcherConfig {
            max_frames,
            max_wait_ms,
        })
    }

    #[test]
    fn flushes_when_full() {
        let t0 = Instant::now();
        let mut a = assembler(3, 1000);
        assert!(a.push(1, t0).is_none());
        assert!(a.push(2, t0).is_none());
        let b = a.push(3, t0).unwrap();
        assert_eq!((b.items, b.reason), (vec![1, 2, 3], FlushReason::Full));
        assert!(a.is_empty() && a.deadline().is_none());
    }

    #[test]
    fn flushes_on_timeout_measured_from_the_oldest_frame() {
        let t0 = Instant::now();
        let mut a = assembler(8, 200);
        a.push(1, t0);
        a.push(2, t0 + Duration::from_millis(150));
        assert_eq!(a.deadline(), Some(t0 + Duration::from_millis(200)));
        assert!(a.poll(t0 + Duration::from_millis(199)).is_none());
        let b = a.poll(t0 + Duration::from_millis(200)).unwrap();
        assert_eq!((b.items, b.reason), (vec![1, 2], FlushReason::Timeout));
        // The next batch's clock starts at its own first frame.
        a.push(3, t0 + Duration::from_millis(500));
        assert_eq!(a.deadline(), Some(t0 + Duration::from_millis(700)));
    }

    #[test]
    fn drain_flushes_partial_batches_only() {
        let mut a = assembler(8, 200);
        assert!(a.drain().is_none());
        a.push(7, Instant::now());
        let b = a.drain().unwrap();
        assert_eq!((b.items, b.reason), (vec![7], FlushReason::Drain));
    }
}
