//! Approximate vector search over one model's embeddings (`[search] index
//! = "auto"`): int8 codes in inverted lists (IVF), the exact embeddings
//! re-ranking what it finds. Why this and not a graph index (HNSW):
//! - building it is a k-means on a sample and one matrix product per
//!   embedding, about a minute for a million frames on two cores, in the
//!   background; a graph costs a neighbour search per insertion;
//! - filters are checked on each scored embedding, and a selective filter
//!   scores all its matches (see `plan`): a graph walk finds few matches
//!   under a selective filter;
//! - one byte per dimension, plus ~40 bytes per frame; nothing outside Rust.
//!
//! How it stays in step with the store, which is the truth:
//! - every `Store::write` also writes, in its transaction, one entry per
//!   frame to the tree `embedding_log/<model>` (sequence number -> frame
//!   key), then applies the frames to the index in memory, in commit order;
//! - the index is saved to `<store>/search-index/<model>.ivf` (sled only
//!   touches its own files there) with the last sequence number it holds,
//!   after sled has flushed; the log is then pruned up to it;
//! - on open the file is loaded and the log after its sequence number is
//!   applied (the frames' embeddings and tags are read again), so a kill
//!   between a commit and a save loses nothing from search. A missing,
//!   damaged or stale file (another store, another model, a log pruned past
//!   it, a sequence the store never reached) is rebuilt from the store in
//!   the background; until then searches run the exact scan.

mod build;
mod codes;
mod file;
mod ivf;
mod kmeans;
mod lists;
mod plan;
mod tags;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use codes::cosine;
pub use ivf::IvfIndex;
pub use plan::{Candidates, Plan, SlotFilter};

use super::{FrameKey, StoreError, StoredFrame, TagRecord};

/// Directory of the index files inside the store directory.
pub const INDEX_DIR: &str = "search-index";
/// Prefix of the per-model write-log trees.
pub const EMBEDDING_LOG_TREE_PREFIX: &str = "embedding_log/";
const META_STORE_ID: &[u8] = b"store_id";
const META_PRUNED_PREFIX: &str = "index_log_pruned/";
/// A write saves the index once this many frames are unsaved and they are
/// a tenth of the index (so the catch-up after a kill stays short).
const SAVE_AFTER_WRITES: usize = 10_000;

/// `[search] index`: how searches find their hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexMode {
    /// The approximate index (exact scan while it is being built).
    #[default]
    Auto,
    /// No index: every search scans the embeddings of its filter's frames.
    Exact,
}

/// `[search]` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// `"auto"`: the approximate index; `"exact"`: none.
    pub index: IndexMode,
    /// Lists a search scores at least (0: about √lists, ~0.95 recall@10).
    /// More: better recall, slower searches.
    pub probe_lists: usize,
}

/// What the index is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    /// `index = "exact"`.
    Off,
    /// Being rebuilt from the store; searches scan exactly meanwhile.
    Building,
    /// Serving searches.
    Ready,
}

/// The index's state and size.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStatus {
    pub state: IndexState,
    /// Frames it holds.
    pub frames: usize,
    /// Inverted lists (1 below a few ten thousand frames).
    pub lists: usize,
    /// Lists are being trained again in the background.
    pub training: bool,
    /// Memory it takes, bytes.
    pub memory_bytes: usize,
    /// Size of the file last saved, bytes.
    pub file_bytes: u64,
    /// Frames written since that save.
    pub unsaved: usize,
}

/// The sled handles the index reads.
#[derive(Clone)]
pub(super) struct IndexTrees {
    pub db: sled::Db,
    pub embeddings: sled::Tree,
    pub tags: sled::Tree,
    pub log: sled::Tree,
    pub meta: sled::Tree,
}

pub(super) struct Live {
    pub ivf: IvfIndex,
    /// Holds every stored embedding (else a rebuild is filling it).
    pub ready: bool,
    /// A background training of the lists runs.
    pub training: bool,
}

/// Store writes in commit order (held from a write's log sequence number
/// to its frames being in the index).
pub(super) struct WriteOrder {
    /// Sequence number of the next frame written.
    pub next_seq: u64,
    /// Frames applied since the last save.
    unsaved: usize,
}

/// The index of one store and model, shared by the store's handles.
pub(super) struct SearchIndex {
    store: PathBuf,
    file: PathBuf,
    store_id: String,
    tree: String,
    dim: usize,
    probe_lists: usize,
    pruned_key: Vec<u8>,
    pub(super) trees: IndexTrees,
    /// `None` with `index = "exact"`.
    pub(super) live: RwLock<Option<Live>>,
    writes: Mutex<WriteOrder>,
    file_bytes: AtomicU64,
    /// Background jobs running.
    jobs: AtomicUsize,
    /// For background work, which must not keep the store open.
    this: Weak<SearchIndex>,
}

fn sled_err(path: &Path) -> impl Fn(sled::Error) -> StoreError + '_ {
    move |e| StoreError::Sled {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl SearchIndex {
    /// Opens the index of `trees.embeddings` in the store at `store`:
    /// loads and catches up its file, or starts a rebuild.
    pub fn open(
        store: &Path,
        model: &str,
        dim: usize,
        config: &SearchConfig,
        trees: IndexTrees,
    ) -> Result<Arc<Self>, StoreError> {
        let err = sled_err(store);
        let store_id = match trees.meta.get(META_STORE_ID).map_err(&err)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = new_store_id();
                trees
                    .meta
                    .insert(META_STORE_ID, id.as_bytes())
                    .map_err(&err)?;
                id
            }
        };
        let pruned_key = format!("{META_PRUNED_PREFIX}{model}").into_bytes();
        let pruned = read_seq(trees.meta.get(&pruned_key).map_err(&err)?);
        let last_logged = read_seq(trees.log.last().map_err(&err)?.map(|(k, _)| k));
        let next_seq = pruned.max(last_logged) + 1;
        let file = store.join(INDEX_DIR).join(format!("{model}.ivf"));
        let tree = String::from_utf8_lossy(&trees.embeddings.name()).into_owned();
        let index = Arc::new_cyclic(|this| Self {
            store: store.to_path_buf(),
            file,
            store_id,
            tree,
            dim,
            probe_lists: config.probe_lists,
            pruned_key,
            trees,
            live: RwLock::new(None),
            writes: Mutex::new(WriteOrder {
                next_seq,
                unsaved: 0,
            }),
            file_bytes: AtomicU64::new(0),
            jobs: AtomicUsize::new(0),
            this: this.clone(),
        });
        if config.index == IndexMode::Exact {
            // Writes from now on are not logged: an old file would be stale.
            match std::fs::remove_file(&index.file) {
                Ok(()) => {
                    tracing::info!(file = %index.file.display(), "Search index removed ([search] index = \"exact\").")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%error, file = %index.file.display(), "Cannot remove the search index.")
                }
            }
            return Ok(index);
        }
        let _ = std::fs::remove_file(index.file.with_extension("ivf.tmp"));
        let empty = index.trees.embeddings.is_empty();
        match index.load(pruned, next_seq) {
            // Nothing to index (a new store, or a model new to it).
            Err(_) if empty => {
                *index.live_mut() = Some(Live {
                    ivf: IvfIndex::new(dim),
                    ready: true,
                    training: false,
                });
            }
            Ok(ivf) => {
                let caught_up = index.catch_up(ivf)?;
                if caught_up > 0 {
                    tracing::info!(frames = caught_up, "Search index caught up with the store.");
                }
            }
            Err(why) => {
                if why.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(reason = %why, file = %index.file.display(), "Search index unusable; rebuilding it from the store.");
                }
                *index.live_mut() = Some(Live {
                    ivf: IvfIndex::new(dim),
                    ready: false,
                    training: false,
                });
                index.spawn(build::Job::Build);
            }
        }
        Ok(index)
    }

    fn load(&self, pruned: u64, next_seq: u64) -> std::io::Result<(IvfIndex, u64)> {
        let (meta, ivf) = file::read(&self.file)?;
        let stale = |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        if meta.store_id != self.store_id || meta.tree != self.tree {
            return stale(format!(
                "made for store {} tree {}",
                meta.store_id, meta.tree
            ));
        }
        if ivf.dim() != self.dim {
            return stale(format!(
                "{} dimensions, the model has {}",
                ivf.dim(),
                self.dim
            ));
        }
        if meta.watermark < pruned || meta.watermark >= next_seq {
            return stale(format!(
                "covers writes up to {}, the store's log holds {pruned}..{next_seq}",
                meta.watermark
            ));
        }
        self.file_bytes
            .store(std::fs::metadata(&self.file)?.len(), Ordering::Relaxed);
        Ok((ivf, meta.watermark))
    }

    /// Applies the writes logged after the file's watermark; returns how
    /// many frames.
    fn catch_up(&self, (mut ivf, watermark): (IvfIndex, u64)) -> Result<usize, StoreError> {
        let err = sled_err(&self.store);
        let mut keys = std::collections::BTreeSet::new();
        for kv in self.trees.log.range((watermark + 1).to_be_bytes()..) {
            let (_, v) = kv.map_err(&err)?;
            keys.extend(FrameKey::decode(&v));
        }
        let keys: Vec<FrameKey> = keys.into_iter().collect();
        for chunk in keys.chunks(build::BATCH) {
            let (present, gone) = build::read_frames(&self.trees, chunk, self.dim).map_err(&err)?;
            let frames: Vec<_> = present
                .iter()
                .map(|(k, e, t)| (*k, e.as_slice(), t))
                .collect();
            ivf.upsert(&frames);
            for key in gone {
                ivf.remove(&key);
            }
        }
        let needs_training = ivf.needs_training();
        *self.live_mut() = Some(Live {
            ivf,
            ready: true,
            training: needs_training,
        });
        self.lock_writes().unsaved = keys.len();
        if needs_training {
            self.spawn(build::Job::Train);
        }
        Ok(keys.len())
    }

    pub(super) fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, Option<Live>> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn live(&self) -> std::sync::RwLockReadGuard<'_, Option<Live>> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether writes are logged and applied (`index = "auto"`).
    pub fn enabled(&self) -> bool {
        self.live().is_some()
    }

    /// Serialises store writes; see [`WriteOrder`].
    pub fn lock_writes(&self) -> MutexGuard<'_, WriteOrder> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies committed frames (their log entries end before
    /// `order.next_seq`); returns whether a save is due.
    pub fn applied(&self, order: &mut WriteOrder, frames: &[StoredFrame]) -> bool {
        let mut live = self.live_mut();
        let Some(l) = live.as_mut() else {
            return false;
        };
        let items: Vec<(FrameKey, &[f32], &TagRecord)> = frames
            .iter()
            .map(|f| (f.key, f.embedding.as_slice(), &f.tags))
            .collect();
        l.ivf.upsert(&items);
        order.unsaved += frames.len();
        if l.ready && !l.training && l.ivf.needs_training() {
            l.training = true;
            self.spawn(build::Job::Train);
        }
        l.ready && order.unsaved >= SAVE_AFTER_WRITES.max(l.ivf.len() / 10)
    }

    /// Saves the index when frames written since the last save are a tenth
    /// of it (or it is small): what `Store::flush` calls.
    pub fn save_if_worthwhile(&self) -> Result<(), StoreError> {
        let due = {
            let order = self.lock_writes();
            let live = self.live();
            live.as_ref().is_some_and(|l| {
                l.ready && order.unsaved > 0 && order.unsaved >= (l.ivf.len() / 10).max(1)
            })
        };
        if due { self.save() } else { Ok(()) }
    }

    /// Flushes the store, writes the index file and prunes the log. Failing
    /// to write the file is logged, not returned: the log keeps what it
    /// lacks.
    pub fn save(&self) -> Result<(), StoreError> {
        let mut order = self.lock_writes();
        // What the file claims must be on disk in the store first.
        self.trees
            .db
            .flush()
            .map_err(|e| super::disk::unwritable(&self.store, e))?;
        let live = self.live();
        let Some(l) = live.as_ref().filter(|l| l.ready) else {
            return Ok(());
        };
        let meta = file::FileMeta {
            store_id: self.store_id.clone(),
            tree: self.tree.clone(),
            watermark: order.next_seq - 1,
        };
        let started = Instant::now();
        match file::write(&self.file, &meta, &l.ivf) {
            Ok(bytes) => {
                order.unsaved = 0;
                self.file_bytes.store(bytes, Ordering::Relaxed);
                tracing::debug!(
                    bytes,
                    frames = l.ivf.len(),
                    secs = started.elapsed().as_secs_f64(),
                    "Search index saved."
                );
            }
            Err(error) => {
                tracing::warn!(%error, file = %self.file.display(), "Cannot save the search index; the store's log keeps what it lacks.");
                return Ok(());
            }
        }
        drop(live);
        drop(order);
        self.prune(meta.watermark)
            .map_err(|e| super::disk::unwritable(&self.store, e))
    }

    /// Removes log entries up to `watermark` (the saved file has them).
    fn prune(&self, watermark: u64) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for kv in self.trees.log.range(..=watermark.to_be_bytes()) {
            batch.remove(kv?.0);
            any = true;
        }
        if any {
            self.trees.log.apply_batch(batch)?;
            self.trees
                .meta
                .insert(&self.pruned_key, &watermark.to_be_bytes())?;
        }
        Ok(())
    }

    /// `want` candidates for a search, or `None` when the index cannot
    /// answer (off, or being rebuilt).
    pub fn search(
        &self,
        query: &[f32],
        filter: impl FnOnce(&IvfIndex) -> Option<SlotFilter>,
        want: usize,
    ) -> Option<Candidates> {
        let live = self.live();
        let l = live.as_ref().filter(|l| l.ready)?;
        Some(match filter(&l.ivf) {
            Some(f) => l.ivf.search(query, &f, want, self.probe_lists),
            None => Candidates {
                hits: Vec::new(),
                plan: Plan::Flat,
                scored: 0,
            },
        })
    }

    /// State and size.
    pub fn status(&self) -> IndexStatus {
        let unsaved = self.lock_writes().unsaved;
        let live = self.live();
        let (state, frames, lists, training, memory_bytes) = match live.as_ref() {
            None => (IndexState::Off, 0, 0, false, 0),
            Some(l) => (
                if l.ready {
                    IndexState::Ready
                } else {
                    IndexState::Building
                },
                l.ivf.len(),
                l.ivf.list_count(),
                l.training,
                l.ivf.memory_bytes(),
            ),
        };
        IndexStatus {
            state,
            frames,
            lists,
            training,
            memory_bytes,
            file_bytes: self.file_bytes.load(Ordering::Relaxed),
            unsaved,
        }
    }

    /// Waits until the index is ready and no background job (rebuild,
    /// training, the save after them) runs, or `timeout` passes; returns
    /// whether it is.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = self.jobs.load(Ordering::SeqCst) == 0
                && self.live().as_ref().is_none_or(|l| l.ready && !l.training);
            if idle {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Where the index file is.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// A sequence number from a big-endian key or value (0 when absent).
fn read_seq(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// A random id for a new store (std's hasher keys are random per process).
fn new_store_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new();
    let mut h = random.build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}
