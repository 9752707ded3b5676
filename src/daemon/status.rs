//! What `/health` shows of each stream: its state, why it is retrying, and
//! the counters of its current run.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use crate::ingest::source::SourceCounters;
use crate::pipeline::metrics;

/// Where a stream's supervisor is (as gst-plugins-rs' fallbacksrc reports
/// its status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    /// Configured, not yet started.
    Starting,
    /// A run is delivering frames.
    Running,
    /// The last run ended; waiting to try again.
    Retrying,
    /// Done for good: a file read to its end (now or by an earlier run).
    Finished,
    /// Stopped by shutdown.
    Stopped,
    /// Waiting for the store to take writes again (disk full); started
    /// again, from its checkpoint, once it does.
    Paused,
}

/// Why a stream is retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryReason {
    /// The source failed (see `last_error`).
    Error,
    /// A live source ended its stream.
    EndOfStream,
}

/// Live state of one stream, shown by `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamStatus {
    /// Camera name.
    pub name: String,
    /// Its state.
    pub state: StreamState,
    /// Why it is retrying (while `state` is `retrying`).
    pub retry_reason: Option<RetryReason>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Frames delivered to inference by the current run.
    pub frames: u64,
    /// Frames dropped because inference was behind (live sources).
    pub dropped: u64,
    /// The video decoder of the current run and what it decodes
    /// (`ingest.decode`); `None` until one is plugged.
    pub decoder: Option<String>,
    /// Compressed frames of the current run dropped before the decoder
    /// (what sampling and `ingest.decode` do not need).
    pub skipped: u64,
    /// Counters of the current run, read when `/health` is asked.
    #[serde(skip)]
    pub current: Option<Arc<SourceCounters>>,
}

impl StreamStatus {
    /// A configured stream that has not started yet.
    pub fn starting(name: &str) -> Self {
        Self {
            name: name.to_string(),
            state: StreamState::Starting,
            retry_reason: None,
            last_error: None,
            frames: 0,
            dropped: 0,
            decoder: None,
            skipped: 0,
            current: None,
        }
    }

    /// The status with `frames`/`dropped` read from the current run.
    pub fn snapshot(&self) -> Self {
        let mut s = self.clone();
        if let Some(c) = &self.current {
            s.frames = c.delivered.load(Ordering::Relaxed);
            s.dropped = c.dropped();
            s.decoder = c.decoder.get().map(|d| d.description.clone());
            s.skipped = c.skipped.load(Ordering::Relaxed);
        }
        s
    }
}

/// The statuses of every stream, shared by the supervisors and the API.
pub type StreamStatuses = Arc<RwLock<Vec<StreamStatus>>>;

/// One stream's slot in [`StreamStatuses`], found by name (streams come
/// and go on reload).
pub struct StatusSlot {
    statuses: StreamStatuses,
    stream: String,
}

/// A change of a stream's state.
pub struct Transition<'a> {
    /// The new state.
    pub state: StreamState,
    /// Why it retries (`Retrying` only).
    pub reason: Option<RetryReason>,
    /// The error, kept as `last_error` until the next one.
    pub error: Option<String>,
    /// The counters of the run now current.
    pub counters: Option<&'a Arc<SourceCounters>>,
}

impl StatusSlot {
    /// The slot of `stream`, added as `starting` when it is new; a stream
    /// started again keeps its entry (and its last error).
    pub fn register(statuses: &StreamStatuses, stream: &str) -> Self {
        let mut all = statuses.write().unwrap_or_else(|p| p.into_inner());
        match all.iter_mut().find(|s| s.name == stream) {
            Some(s) => {
                s.state = StreamState::Starting;
                s.retry_reason = None;
                s.current = None;
            }
            None => all.push(StreamStatus::starting(stream)),
        }
        Self {
            statuses: statuses.clone(),
            stream: stream.to_string(),
        }
    }

    /// Removes a stream that is no longer configured.
    pub fn remove(statuses: &StreamStatuses, stream: &str) {
        let mut all = statuses.write().unwrap_or_else(|p| p.into_inner());
        all.retain(|s| s.name != stream);
        ::metrics::gauge!(metrics::STREAM_UP, "stream" => stream.to_string()).set(0.0);
    }

    /// Records a transition (and the `stream_up` gauge).
    pub fn set(&self, t: Transition<'_>) {
        if let Ok(mut s) = self.statuses.write()
            && let Some(st) = s.iter_mut().find(|st| st.name == self.stream)
        {
            st.state = t.state;
            st.retry_reason = t.reason;
            if t.error.is_some() {
                st.last_error = t.error;
            }
            if let Some(c) = t.counters {
                st.current = Some(c.clone());
            }
        }
        let up = if t.state == StreamState::Running {
            1.0
        } else {
            0.0
        };
        ::metrics::gauge!(metrics::STREAM_UP, "stream" => self.stream.clone()).set(up);
    }

    /// A transition to `state` with nothing else to say.
    pub fn to(&self, state: StreamState, counters: Option<&Arc<SourceCounters>>) {
        self.set(Transition {
            state,
            reason: None,
            error: None,
            counters,
        });
    }
}
