//! One configured stream, supervised on its own thread: a failure (file
//! missing, RTSP server down, corrupt data) is logged and retried with
//! exponential backoff while the other streams go on; a live source that
//! ends is reconnected; a file read to its end is finished (and skipped on
//! the next start, thanks to its checkpoint). A decoder that fails (a
//! broken hardware decoder) is skipped from the next attempt on, which
//! then plugs the next decoder by rank: software in the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::status::{RetryReason, StatusSlot, StreamState, Transition};
use crate::ingest::source::{SourceCounters, SourceEnd, SourceSpec, run_source};
use crate::models::preprocess::FramePreprocessing;
use crate::pipeline::{FrameSender, IngestEvent, ResumePoint, SourceId, SourceKey, metrics};
use crate::store::Store;

/// Backoff between attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay (and the delay after a run that delivered frames).
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

/// Runs one stream with retries.
pub struct Supervisor {
    pub(super) spec: SourceSpec,
    pub(super) status: StatusSlot,
    pub(super) preprocessing: FramePreprocessing,
    pub(super) input: FrameSender,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) store: Store,
    pub(super) backoff: Backoff,
    /// See `ingest.max_file_attempts`.
    pub(super) max_file_attempts: u32,
}

impl Supervisor {
    /// Runs attempts until the stream finishes or shutdown.
    pub fn run(self) {
        let stream = self.spec.stream.to_string();
        let mut delay = self.backoff.initial;
        // Failed attempts in a row of a file read part way, none of which
        // got further.
        let mut stuck = 0u32;
        // This stream's spec, with the decoders that failed on it.
        let mut spec = self.spec.clone();
        while !self.stop.load(Ordering::Relaxed) {
            // Per attempt: a file that was missing has a new identity once it exists.
            let source_id = SourceId::of(&self.spec.kind);
            let resume = match self.resume_point(&source_id) {
                ResumePoint::Complete => {
                    tracing::info!(%stream, "File already ingested.");
                    self.status.to(StreamState::Finished, None);
                    return;
                }
                ResumePoint::OtherRate { .. } => {
                    tracing::warn!(%stream, "Sample rate changed since the last run; reading the file again.");
                    None
                }
                point => point.after_pts(),
            };
            let counters = Arc::new(SourceCounters::default());
            self.status.to(StreamState::Running, Some(&counters));
            let result = run_source(
                &spec,
                &self.preprocessing,
                &self.input,
                &self.stop,
                resume,
                &counters,
            );
            let delivered = counters.delivered.load(Ordering::Relaxed);
            self.status.to(StreamState::Running, Some(&counters));
            match result {
                // A file, or a gst: description that is not live (a test
                // source, a filesrc), is done at its end; live ones reconnect.
                Ok(end @ SourceEnd::Truncated { .. }) => {
                    let error = end.truncation_error(&stream).map(|e| e.to_string());
                    tracing::error!(%stream, error = error.as_deref().unwrap_or_default(), "File truncated; it is finished up to where its video ends.");
                    self.finish(source_id, &counters, error);
                    return;
                }
                Ok(SourceEnd::Eos) if !counters.live.load(Ordering::Relaxed) => {
                    self.finish(source_id, &counters, None);
                    return;
                }
                Ok(SourceEnd::Eos) => {
                    tracing::warn!(%stream, "Live source ended; reconnecting.");
                    self.retrying(RetryReason::EndOfStream, "end of stream".into(), &counters);
                }
                Ok(SourceEnd::Stopped) => {
                    if !self.stop.load(Ordering::Relaxed) {
                        // The inference worker is gone; the daemon notices and exits.
                        tracing::error!(%stream, "Inference stopped taking frames; stream stopped.");
                    }
                    self.status.to(StreamState::Stopped, Some(&counters));
                    return;
                }
                Err(error) => {
                    ::metrics::counter!(metrics::SOURCE_ERRORS, "stream" => stream.clone())
                        .increment(1);
                    stuck = if resume.is_some() && delivered == 0 {
                        stuck + 1
                    } else {
                        0
                    };
                    if stuck >= self.max_file_attempts {
                        let at = resume.unwrap_or_default() as f64 / 1e9;
                        let message = format!(
                            "{error}; gave up after {stuck} attempts that got no further: finished at {at:.2} s, the last frame that could be read"
                        );
                        tracing::error!(%stream, %message, "File finished at its last good frame.");
                        self.finish(source_id, &counters, Some(message));
                        return;
                    }
                    tracing::error!(%stream, %error, retry_in_secs = delay.as_secs_f64(), "Stream failed; retrying.");
                    let mut message = error.to_string();
                    if let Some(decoder) = counters.failed_decoder(&error) {
                        tracing::warn!(%stream, decoder, "The decoder failed; the next attempt plugs the next one by rank.");
                        message.push_str(&format!(
                            "; decoder {decoder} skipped from the next attempt on"
                        ));
                        spec.skip_decoders.push(decoder.to_string());
                    } else if counters.decoder.get().is_none() {
                        // Nothing decodes this stream without the skipped
                        // decoders (or it failed before one was plugged):
                        // they get another chance.
                        spec.skip_decoders.clear();
                    }
                    self.retrying(RetryReason::Error, message, &counters);
                }
            }
            // A run that delivered frames was healthy: start backoff over.
            if delivered > 0 {
                delay = self.backoff.initial;
            }
            if !self.sleep(delay) {
                break;
            }
            delay = (delay * 2).min(self.backoff.max);
        }
        self.status.to(StreamState::Stopped, None);
    }

    /// The source was read as far as it can be: its checkpoint is marked
    /// complete once its frames are stored.
    fn finish(&self, source_id: SourceId, counters: &Arc<SourceCounters>, error: Option<String>) {
        let _ = self.input.send(IngestEvent::SourceEnded {
            key: SourceKey {
                stream: self.spec.stream.clone(),
                source_id,
            },
            complete: true,
        });
        self.status.set(Transition {
            state: StreamState::Finished,
            reason: None,
            error,
            counters: Some(counters),
        });
    }

    fn retrying(&self, reason: RetryReason, error: String, counters: &Arc<SourceCounters>) {
        self.status.set(Transition {
            state: StreamState::Retrying,
            reason: Some(reason),
            error: Some(error),
            counters: Some(counters),
        });
    }

    /// Files continue after their checkpoint; a finished file is done. A
    /// store that cannot be read means starting over (keys are idempotent).
    /// Every stream is registered in the store on its first attempt, so
    /// `/api/streams` lists a camera that has not delivered a frame yet.
    fn resume_point(&self, source_id: &SourceId) -> ResumePoint {
        if let Err(error) = self.store.stream_id(&self.spec.stream) {
            tracing::warn!(stream = %self.spec.stream, %error, "Cannot register the stream in the store.");
        }
        ResumePoint::of(
            &self.store,
            &self.spec.stream,
            source_id,
            self.spec.sample_fps,
        )
        .unwrap_or(ResumePoint::Start)
    }

    /// Sleeps `d` unless stopped first; returns false when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
        }
        !self.stop.load(Ordering::Relaxed)
    }
}
