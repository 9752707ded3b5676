//! Background work on the index: rebuilding it from the store, training
//! its lists. One thread per job, at a lower priority than tagging (the
//! old lists, or the exact scan, serve searches meanwhile). A job holds
//! the index only weakly, and lets go of it between steps, so a store
//! being closed is not kept open: the job notices and ends.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{IndexTrees, SearchIndex, kmeans};
use crate::store::{FrameKey, TAGS_TREE, TagRecord, schema};

/// Frames read from the store per step of a rebuild or catch-up.
pub const BATCH: usize = 4096;
/// Slots assigned to the new lists per step of a training (writers wait
/// for one step at most: ~0.1 s with 2048 lists).
const ASSIGN_STEP: usize = 4096;
/// k-means rounds (the cells barely move after a few).
const KMEANS_ROUNDS: usize = 8;
const KMEANS_SEED: u64 = 0x5EA2C4;
/// Nice value of the job's thread (as the captioner's).
const NICE: i32 = 10;

/// What a background thread does.
#[derive(Debug, Clone, Copy)]
pub enum Job {
    /// Fill the index from the store, train its lists, save it.
    Build,
    /// Train the lists again (the index has grown), save it.
    Train,
}

impl SearchIndex {
    /// Runs `job` on its own thread.
    pub(super) fn spawn(&self, job: Job) {
        let this = self.this.clone();
        self.jobs.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("search-index".into())
            .spawn(move || {
                crate::caption::queue::lower_priority(NICE);
                run(job, &this);
                if let Some(index) = this.upgrade() {
                    index.jobs.fetch_sub(1, Ordering::SeqCst);
                }
            });
        if let Err(error) = spawned {
            self.jobs.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(%error, "Cannot start the search index thread; searches scan exactly.");
        }
    }
}

fn run(job: Job, this: &Weak<SearchIndex>) {
    let started = Instant::now();
    let outcome = match job {
        Job::Build => build(this),
        Job::Train => train_until_done(this),
    };
    // `None`: the store was closed, or the job failed (logged where it did).
    if outcome.is_none() {
        return;
    }
    let Some(index) = this.upgrade() else {
        return;
    };
    let status = index.status();
    tracing::info!(
        ?job,
        frames = status.frames,
        lists = status.lists,
        secs = started.elapsed().as_secs_f64(),
        "Search index ready."
    );
    if let Err(error) = index.save() {
        tracing::error!(%error, "Cannot save the search index.");
    }
}

/// Fills the index from the store's embeddings, then trains it.
fn build(this: &Weak<SearchIndex>) -> Option<()> {
    let (trees, dim) = {
        let index = this.upgrade()?;
        (index.trees.clone(), index.dim)
    };
    let mut keys = Vec::with_capacity(BATCH);
    let flush = |keys: &mut Vec<FrameKey>| -> Option<()> {
        let (present, _) = match read_frames(&trees, keys, dim) {
            Ok(f) => f,
            Err(error) => {
                tracing::error!(%error, "Cannot read the store to rebuild the search index; searches scan exactly.");
                return None;
            }
        };
        let frames: Vec<_> = present
            .iter()
            .map(|(k, e, t)| (*k, e.as_slice(), t))
            .collect();
        let index = this.upgrade()?;
        let mut live = index.live_mut();
        live.as_mut()?.ivf.insert_absent(&frames);
        keys.clear();
        Some(())
    };
    for kv in trees.embeddings.iter().keys() {
        let k = match kv {
            Ok(k) => k,
            Err(error) => {
                tracing::error!(%error, "Cannot read the store to rebuild the search index; searches scan exactly.");
                return None;
            }
        };
        keys.extend(FrameKey::decode(&k));
        if keys.len() == BATCH {
            flush(&mut keys)?;
        }
    }
    flush(&mut keys)?;
    let needs_training = {
        let index = this.upgrade()?;
        let live = index.live();
        live.as_ref()?.ivf.needs_training()
    };
    if needs_training {
        train_until_done(this)?;
    }
    let index = this.upgrade()?;
    let mut live = index.live_mut();
    let l = live.as_mut()?;
    l.ready = true;
    l.training = false;
    Some(())
}

/// Trains until no training is due: writes that came in meanwhile (a bulk
/// load outruns a training at a million frames) may call for the next one
/// at once, and no write may come to start it.
fn train_until_done(this: &Weak<SearchIndex>) -> Option<()> {
    while train(this)? {}
    Some(())
}

/// Trains the lists on a sample and assigns every slot, in steps; returns
/// whether another training is due already (then `training` stays set, so
/// no writer starts one beside it).
fn train(this: &Weak<SearchIndex>) -> Option<bool> {
    let (start, dim) = {
        let index = this.upgrade()?;
        let mut live = index.live_mut();
        let l = live.as_mut()?;
        l.training = true;
        (l.ivf.begin_training(), index.dim)
    };
    let keep_going = || this.strong_count() > 0;
    let centroids = kmeans::train(
        &start.sample,
        dim,
        start.lists,
        KMEANS_ROUNDS,
        KMEANS_SEED,
        &keep_going,
    )?;
    drop(start.sample);
    let mut assignment = Vec::with_capacity(start.slots);
    for from in (0..start.slots).step_by(ASSIGN_STEP) {
        let index = this.upgrade()?;
        let live = index.live();
        let to = (from + ASSIGN_STEP).min(start.slots);
        assignment.extend(live.as_ref()?.ivf.assign(&centroids, from..to));
    }
    // Tests: writes land before the training ends, as they do under a
    // bulk load at a million frames.
    #[cfg(feature = "failpoints")]
    fail::fail_point!("search-index::finish-training");
    let index = this.upgrade()?;
    let mut live = index.live_mut();
    let l = live.as_mut()?;
    l.ivf.finish_training(centroids, assignment);
    l.training = l.ivf.needs_training();
    Some(l.training)
}

/// Embeddings and tags of `keys`: (held frames, keys without an embedding).
#[allow(clippy::type_complexity)]
pub fn read_frames(
    trees: &IndexTrees,
    keys: &[FrameKey],
    dim: usize,
) -> Result<(Vec<(FrameKey, Vec<f32>, TagRecord)>, Vec<FrameKey>), sled::Error> {
    let mut present = Vec::with_capacity(keys.len());
    let mut gone = Vec::new();
    for key in keys {
        let k = key.encode();
        match trees.embeddings.get(k)? {
            Some(e) if e.len() == dim * 4 => {
                // Tags that do not decode leave the frame untagged here.
                let tags = trees
                    .tags
                    .get(k)?
                    .and_then(|t| schema::decode::<TagRecord>(TAGS_TREE, &t).ok())
                    .unwrap_or(TagRecord { sets: Vec::new() });
                present.push((*key, schema::decode_embedding(&e), tags));
            }
            // An embedding of another size was never written by this
            // model: leave it out.
            Some(_) => {}
            None => gone.push(*key),
        }
    }
    Ok((present, gone))
}
