//! The caption worker: drains the store's caption backlog at low priority.
//!
//! The inference worker queues keyframes in the store (in the transaction
//! that closes their segment) and never waits for captions. This worker, on
//! its own thread at a higher nice value, takes the oldest jobs (up to
//! `[captions] batch_size`, captioned in one batch: one vision-encoder run
//! and one decoding loop), and writes each caption, its word index entries
//! and the job's removal in one transaction. Before every model run it waits until tagging is idle
//! (no queued frames, no batch running), so a backlog builds up under load
//! and is caught up when the load drops; jobs left at shutdown stay queued
//! for the next run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{CaptionError, Captioner};
use crate::pipeline::{PipelineLoad, metrics};
use crate::store::{CaptionJob, CaptionState, FrameKey, Store};

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
    /// Most jobs captioned per model run (`[captions] batch_size`).
    batch_size: usize,
}

impl CaptionWorker {
    /// Starts captioning `store`'s backlog with `captioner` on a thread with
    /// nice value `nice` (Linux; elsewhere the default priority), up to
    /// `batch_size` keyframes per model run (the oldest jobs). Each model run
    /// waits until the pipeline behind `load` is idle.
    pub fn spawn(
        captioner: Arc<dyn Captioner>,
        store: Store,
        nice: i32,
        batch_size: usize,
        load: Arc<PipelineLoad>,
    ) -> CaptionWorkerHandle {
        let flags = Flags {
            batch_size: batch_size.max(1),
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

    /// Stops after the batch in progress; the rest stays queued.
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
        let jobs = match store.next_caption_jobs(flags.batch_size) {
            Ok(jobs) if !jobs.is_empty() => jobs,
            Ok(_) if flags.drain.load(Ordering::Relaxed) => break,
            Ok(_) => {
                store.wait_for_caption_job(Duration::from_millis(500));
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "Cannot read the caption queue; captions stop.");
                break;
            }
        };
        let started = Instant::now();
        let mut pace = || wait_for_idle(&flags.load, &flags.stop);
        let states = caption_jobs(captioner, &jobs, size, &mut pace);
        // Each caption's share of the batch's time.
        let secs = started.elapsed().as_secs_f64() / jobs.len() as f64;
        for ((key, job), state) in jobs.iter().zip(states) {
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
            // The job leaves the queue in this transaction, with its caption.
            if let Err(error) = store.set_caption(key, job.keyframe_ns, state) {
                tracing::error!(%error, "Cannot store a caption; captions stop.");
                return totals;
            }
            totals.seconds += secs;
            flags.done.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(metrics::CAPTIONS, "outcome" => outcome).increment(1);
            ::metrics::histogram!(metrics::CAPTION_SECONDS).record(secs);
        }
        ::metrics::gauge!(metrics::CAPTION_BACKLOG).set(store.caption_backlog() as f64);
    }
    totals
}

/// The caption (or why none) of each job, in order: the jobs at the
/// captioner's size in one batch; if the batch fails, one at a time, so a
/// failure is pinned on the keyframe that causes it and the others still
/// get their captions.
fn caption_jobs(
    captioner: &dyn Captioner,
    jobs: &[(FrameKey, CaptionJob)],
    size: u32,
    pace: &mut dyn FnMut(),
) -> Vec<CaptionState> {
    let done = |text: String| CaptionState::Done {
        text,
        model: captioner.fingerprint().to_string(),
    };
    let failed = |e: CaptionError| CaptionState::Failed {
        error: e.to_string(),
    };
    let mut states: Vec<Option<CaptionState>> = jobs
        .iter()
        .map(|(_, job)| {
            // Queued for another captioner (the model changed): the image is
            // at the wrong size, so this keyframe gets no caption.
            (job.size != size).then(|| CaptionState::Failed {
                error: format!(
                    "keyframe queued at {}x{0}, the captioner takes {size}x{size}",
                    job.size
                ),
            })
        })
        .collect();
    let todo: Vec<usize> = (0..jobs.len()).filter(|&i| states[i].is_none()).collect();
    let images: Vec<&[u8]> = todo.iter().map(|&i| jobs[i].1.rgb.as_slice()).collect();
    match captioner.caption_batch(&images, pace) {
        Ok(captions) if captions.len() == todo.len() => {
            for (&i, c) in todo.iter().zip(captions) {
                states[i] = Some(done(c.text));
            }
        }
        result => {
            if let Err(error) = &result {
                tracing::debug!(%error, jobs = todo.len(), "Caption batch failed; captioning one at a time.");
            }
            for &i in &todo {
                states[i] = Some(match captioner.caption(&jobs[i].1.rgb, pace) {
                    Ok(c) => done(c.text),
                    Err(e) => failed(e),
                });
            }
        }
    }
    states
        .into_iter()
        .map(|s| s.expect("every job has a state"))
        .collect()
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
