//! The caption worker: drains the store's caption backlog at low priority.
//!
//! The inference worker queues keyframes in the store (in the transaction
//! that closes their segment) and never waits for captions. This worker, on
//! its own thread at a higher nice value, takes the oldest job, captions it,
//! and writes the caption, its word index entries and the job's removal in
//! one transaction. Before every model run it waits until tagging is idle
//! (no queued frames, no batch running), so a backlog builds up under load
//! and is caught up when the load drops; jobs left at shutdown stay queued
//! for the next run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Captioner;
use crate::pipeline::{PipelineLoad, metrics};
use crate::store::{CaptionState, Store};

/// Totals of a worker run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CaptionTotals {
    /// Captions written.
    pub captioned: u64,
    /// Keyframes the captioner failed on.
    pub failed: u64,
    /// Seconds spent captioning.
    pub seconds: f64,
}

/// Spawns the caption worker.
pub struct CaptionWorker;

/// A running caption worker.
pub struct CaptionWorkerHandle {
    store: Store,
    stop: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: JoinHandle<CaptionTotals>,
}

struct Flags {
    stop: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    /// The pipeline whose tagging has priority.
    load: Arc<PipelineLoad>,
}

impl CaptionWorker {
    /// Starts captioning `store`'s backlog with `captioner` on a thread with
    /// nice value `nice` (Linux; elsewhere the default priority). Each model
    /// run waits until the pipeline behind `load` is idle.
    pub fn spawn(
        captioner: Arc<dyn Captioner>,
        store: Store,
        nice: i32,
        load: Arc<PipelineLoad>,
    ) -> CaptionWorkerHandle {
        let flags = Flags {
            stop: Arc::new(AtomicBool::new(false)),
            drain: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicU64::new(0)),
            load,
        };
        let handle = CaptionWorkerHandle {
            store: store.clone(),
            stop: flags.stop.clone(),
            drain: flags.drain.clone(),
            done: flags.done.clone(),
            thread: std::thread::Builder::new()
                .name("captions".into())
                .spawn(move || {
                    lower_priority(nice);
                    run(captioner.as_ref(), &store, &flags)
                })
                .expect("spawn the caption thread"),
        };
        ::metrics::gauge!(metrics::CAPTION_BACKLOG).set(handle.backlog() as f64);
        handle
    }
}

impl CaptionWorkerHandle {
    /// Keyframes waiting for a caption.
    pub fn backlog(&self) -> usize {
        self.store.caption_backlog()
    }

    /// Captions written so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Captions everything queued, then stops. `progress(done, backlog)` is
    /// called a few times a second meanwhile; `stop` ends the wait early
    /// (the rest stays queued).
    pub fn drain(self, stop: &AtomicBool, progress: &dyn Fn(u64, usize)) -> CaptionTotals {
        self.drain.store(true, Ordering::Relaxed);
        while !self.thread.is_finished() {
            if stop.load(Ordering::Relaxed) {
                self.stop.store(true, Ordering::Relaxed);
            }
            progress(self.done(), self.backlog());
            std::thread::sleep(Duration::from_millis(100));
        }
        progress(self.done(), self.backlog());
        self.join()
    }

    /// Stops after the caption in progress; the rest stays queued.
    pub fn stop(self) -> CaptionTotals {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(self) -> CaptionTotals {
        self.thread.join().unwrap_or_else(|_| {
            tracing::error!("The caption thread panicked; its backlog stays queued.");
            CaptionTotals::default()
        })
    }
}

fn run(captioner: &dyn Captioner, store: &Store, flags: &Flags) -> CaptionTotals {
    let mut totals = CaptionTotals::default();
    let size = captioner.preprocessor().crop_size;
    loop {
        if flags.stop.load(Ordering::Relaxed) {
            break;
        }
        let job = match store.next_caption_job() {
            Ok(Some(job)) => job,
            Ok(None) if flags.drain.load(Ordering::Relaxed) => break,
            Ok(None) => {
                store.wait_for_caption_job(Duration::from_millis(500));
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "Cannot read the caption queue; captions stop.");
                break;
            }
        };
        let (key, job) = job;
        let started = Instant::now();
        let mut pace = || wait_for_idle(&flags.load, &flags.stop);
        let state = if job.size != size {
            // Queued for another captioner (the model changed): the image is
            // at the wrong size, so this keyframe gets no caption.
            CaptionState::Failed {
                error: format!(
                    "keyframe queued at {}x{0}, the captioner takes {size}x{size}",
                    job.size
                ),
            }
        } else {
            match captioner.caption(&job.rgb, &mut pace) {
                Ok(c) => CaptionState::Done {
                    text: c.text,
                    model: captioner.fingerprint().to_string(),
                },
                Err(e) => CaptionState::Failed {
                    error: e.to_string(),
                },
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let outcome = match &state {
            CaptionState::Done { .. } => "ok",
            _ => "failed",
        };
        if let CaptionState::Failed { error } = &state {
            tracing::warn!(%error, stream_id = key.stream_id, ts_ns = key.ts_ns, "Caption failed.");
            totals.failed += 1;
        } else {
            totals.captioned += 1;
        }
        if let Err(error) = store.set_caption(&key, job.keyframe_ns, state) {
            tracing::error!(%error, "Cannot store a caption; captions stop.");
            break;
        }
        totals.seconds += secs;
        flags.done.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(metrics::CAPTIONS, "outcome" => outcome).increment(1);
        ::metrics::histogram!(metrics::CAPTION_SECONDS).record(secs);
        ::metrics::gauge!(metrics::CAPTION_BACKLOG).set(store.caption_backlog() as f64);
    }
    totals
}

/// Blocks while tagging has work (or until `stop`).
fn wait_for_idle(load: &PipelineLoad, stop: &AtomicBool) {
    while !load.is_idle() && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Raises this thread's nice value, so tagging wins the CPU when both run
/// (captions, search index training).
pub(crate) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id has no memory effects.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
            tracing::debug!(nice, "Cannot lower this thread's priority.");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
