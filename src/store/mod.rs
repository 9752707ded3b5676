//! The embedded store (sled): frames, embeddings, tags, streams, replay
//! checkpoints and metadata.
//!
//! Trees (names are the `*_TREE` constants):
//! - `frames`: [`FrameKey`] -> [`FrameRecord`]
//! - `embeddings/<fingerprint>`: [`FrameKey`] -> normalised f32 LE. One tree
//!   per model fingerprint: embeddings of different models live in different
//!   spaces and are never compared; a new model starts a new tree (reindex).
//! - `tags`: [`FrameKey`] -> [`TagRecord`]
//! - `tag_index`: `set\0class\0FrameKey` -> top score, for tag filters
//! - `streams`: name -> [`StreamRecord`]
//! - `checkpoints`: stream id + source -> [`Checkpoint`]
//! - `meta`: schema version, models seen, the store's id and how far each
//!   model's `embedding_log` is pruned (see [`index`])
//! - `segments`: [`FrameKey`] of the first frame -> [`SegmentRecord`]
//! - `segment_open`: stream id + source -> start of its open segment (what a
//!   restart rebuilds the segmenter from)
//! - `thumbnails`: [`FrameKey`] -> JPEG thumbnail of the frame (written
//!   with it; see `[store] thumbnail_width`)
//! - `segment_keyframes`: [`FrameKey`] -> [`KeyframeCandidateImages`], the
//!   pictures (caption image, keyframe JPEG) of open segments' keyframe
//!   candidates (at most `max_keyframe_candidates` per open segment, plus a
//!   pending change's frames), so a rebuilt segment picks the same
//!   keyframe; deleted when the segmenter drops them or the segment
//!   closes. Added in schema 1 without a version change: an older store
//!   opens with the tree empty (or holding a bare [`KeyframeImage`]).
//! - `keyframes`: [`FrameKey`] of a segment's keyframe -> its JPEG (see
//!   `[store] keyframe_width`), written with the segment.
//! - `caption_queue`: segment key -> [`CaptionJob`] (keyframe pixels), the
//!   persistent backlog of the captioner
//! - `caption_index`: `word\0segment key`, for caption word search
//! - `embedding_log/<fingerprint>`: log sequence number -> [`FrameKey`] of
//!   each embedding written, until the search index file has it (see
//!   [`index`]; the file lives in `search-index/` inside the store's
//!   directory)
//! - `rigs`: rig registry, rig records and their fused embeddings (see
//!   [`rigs`])
//! - `outbox`: the uplink's messages until the broker acknowledges them
//!   (see [`outbox`])
//!
//! A batch of frames and the checkpoint that covers them are written in one
//! transaction, so after a crash the checkpoint never claims frames that are
//! not stored, and a resumed replay neither skips nor duplicates frames.
//! Segments closed by a batch, the open-segment markers and their keyframe
//! candidates' images go in the same transaction, and so do the uplink
//! messages that describe them.
//! Writing a frame that exists replaces it (replay is idempotent).

mod disk;
pub mod index;
mod keyframes;
pub mod keys;
pub mod outbox;
mod query;
pub mod rigs;
pub mod schema;
mod segments;
mod thumbnails;
mod write;

use std::path::{Path, PathBuf};

pub use index::{IndexMode, IndexState, IndexStatus, SearchConfig};
pub use keyframes::KeyframeImageWrite;
pub use keys::FrameKey;
pub use outbox::{Outbox, OutboxEntry, OutboxSettings, OutboxStats};
pub use query::{
    FrameEntry, FrameFilter, SearchHit, SearchMethod, SearchOutcome, SearchPath, StoreStats,
};
pub use rigs::{RigFilter, RigHit, RigRecord, RigView, RigWrite};
pub use schema::{
    CaptionJob, CaptionState, Checkpoint, FrameRecord, KeyframeCandidateImages, KeyframeImage,
    OpenSegmentRecord, SegmentRecord, SetTag, StreamRecord, TagRecord,
};
pub use segments::{
    NewSegment, OpenMarker, SegmentEntry, SegmentFilter, SegmentWrites, StoredFrameData,
};

/// `frames` tree.
pub const FRAMES_TREE: &str = "frames";
/// `tags` tree.
pub const TAGS_TREE: &str = "tags";
/// `tag_index` tree.
pub const TAG_INDEX_TREE: &str = "tag_index";
/// `streams` tree.
pub const STREAMS_TREE: &str = "streams";
/// `checkpoints` tree.
pub const CHECKPOINTS_TREE: &str = "checkpoints";
/// `meta` tree.
pub const META_TREE: &str = "meta";
/// `segments` tree.
pub const SEGMENTS_TREE: &str = "segments";
/// `segment_open` tree.
pub const SEGMENT_OPEN_TREE: &str = "segment_open";
/// `thumbnails` tree.
pub const THUMBNAILS_TREE: &str = "thumbnails";
/// `segment_keyframes` tree.
pub const SEGMENT_KEYFRAMES_TREE: &str = "segment_keyframes";
/// `keyframes` tree.
pub const KEYFRAMES_TREE: &str = "keyframes";
/// `caption_queue` tree.
pub const CAPTION_QUEUE_TREE: &str = "caption_queue";
/// `caption_index` tree.
pub const CAPTION_INDEX_TREE: &str = "caption_index";
/// Prefix of the per-model embedding trees.
pub const EMBEDDINGS_TREE_PREFIX: &str = "embeddings/";

const META_SCHEMA: &[u8] = b"schema_version";
const META_NEXT_STREAM_ID: &[u8] = b"next_stream_id";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store (sled allows one).
    #[error(
        "store '{path}' is in use by another process (a running daemon?): query it through its HTTP API"
    )]
    Locked { path: PathBuf },
    /// sled failed.
    #[error("store '{path}': {message}")]
    Sled { path: PathBuf, message: String },
    /// A write did not reach the disk (disk full, I/O error). sled keeps
    /// the error: every later write fails until the store is reopened.
    #[error("store '{path}' cannot be written: {message}")]
    Unwritable { path: PathBuf, message: String },
    /// A value could not be decoded.
    #[error("store tree '{tree}': corrupt value: {message}")]
    Corrupt { tree: String, message: String },
    /// The store was written by an incompatible version.
    #[error("store '{path}' has schema version {found}, this build reads {expected}")]
    Schema {
        path: PathBuf,
        found: u8,
        expected: u8,
    },
    /// A query named a stream the store has never seen.
    #[error("unknown camera '{0}'")]
    UnknownStream(String),
    /// A search with a model whose embeddings the store does not hold.
    #[error(
        "store '{path}' holds no embeddings of model {fingerprint}; it holds embeddings of: {held} (search with that model, or replay the clips with this one to index them)"
    )]
    NoEmbeddings {
        path: PathBuf,
        fingerprint: String,
        held: String,
    },
    /// A query named a rig the store has never seen.
    #[error("unknown rig '{name}' (rigs in the store: {known})")]
    UnknownRig { name: String, known: String },
    /// A keyframe image that cannot be stored.
    #[error("keyframe image: {0}")]
    KeyframeImage(String),
    /// An embedding of the wrong dimension.
    #[error("embedding has {actual} values, the store's model has {expected}")]
    Dimension { expected: usize, actual: usize },
}

/// Everything stored for one frame.
#[derive(Debug, Clone)]
pub struct StoredFrame {
    /// Where it goes.
    pub key: FrameKey,
    /// Metadata.
    pub record: FrameRecord,
    /// L2-normalised image embedding.
    pub embedding: Vec<f32>,
    /// Zero-shot tags.
    pub tags: TagRecord,
    /// Its thumbnail (JPEG), if made.
    pub thumbnail: Option<std::sync::Arc<[u8]>>,
}

/// A checkpoint to write with a batch.
#[derive(Debug, Clone)]
pub struct CheckpointUpdate {
    /// Stream id.
    pub stream_id: u32,
    /// Source identity (see `pipeline::SourceId`).
    pub source_id: String,
    /// New progress.
    pub checkpoint: Checkpoint,
}

#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    frames: sled::Tree,
    tags: sled::Tree,
    tag_index: sled::Tree,
    streams: sled::Tree,
    checkpoints: sled::Tree,
    embeddings: sled::Tree,
    segments: sled::Tree,
    segment_open: sled::Tree,
    segment_keyframes: sled::Tree,
    keyframes: sled::Tree,
    thumbnails: sled::Tree,
    caption_queue: sled::Tree,
    caption_index: sled::Tree,
    embedding_log: sled::Tree,
    rigs: sled::Tree,
    outbox: sled::Tree,
    /// The uplink's outbox, when attached ([`Store::attach_outbox`]).
    uplink: Option<std::sync::Arc<Outbox>>,
    /// Fingerprint of the store's CLIP model.
    fingerprint: String,
    /// The approximate search index of `embeddings`.
    index: std::sync::Arc<index::SearchIndex>,
    /// Wakes the captioner when a job is queued.
    caption_signal: std::sync::Arc<segments::CaptionSignal>,
    /// Jobs in `caption_queue` (counted once at open, then kept).
    caption_backlog: std::sync::Arc<std::sync::atomic::AtomicI64>,
    embed_dim: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store at `path` for a model, with its search
    /// index (`[search] index = "auto"`).
    pub fn open(
        path: &Path,
        model_fingerprint: &str,
        embed_dim: usize,
    ) -> Result<Self, StoreError> {
        Self::open_with_index(path, model_fingerprint, embed_dim, &SearchConfig::default())
    }

    /// [`Store::open`] with the search index as `[search]` says.
    pub fn open_with_index(
        path: &Path,
        model_fingerprint: &str,
        embed_dim: usize,
        search: &SearchConfig,
    ) -> Result<Self, StoreError> {
        // A process that just closed the store (or sled's flusher thread in
        // this one) can hold its lock for a moment: retry briefly.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .flush_every_ms(Some(500))
                .open()
                .map_err(|e| open_error(path, e))
            {
                Err(StoreError::Locked { .. }) if attempts < 40 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let sled_err = |e: sled::Error| StoreError::Sled {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let meta = db.open_tree(META_TREE).map_err(sled_err)?;
        match meta.get(META_SCHEMA).map_err(sled_err)? {
            Some(v) if v.as_ref() != [schema::SCHEMA_VERSION] => {
                return Err(StoreError::Schema {
                    path: path.to_path_buf(),
                    found: v.first().copied().unwrap_or(0),
                    expected: schema::SCHEMA_VERSION,
                });
            }
            Some(_) => {}
            None => {
                meta.insert(META_SCHEMA, &[schema::SCHEMA_VERSION])
                    .map_err(sled_err)?;
            }
        }
        let fp_key = format!("model/{model_fingerprint}");
        meta.insert(fp_key.as_bytes(), &(embed_dim as u32).to_be_bytes())
            .map_err(sled_err)?;
        let tree = |name: &str| db.open_tree(name).map_err(sled_err);
        let model = &model_fingerprint[..model_fingerprint.len().min(16)];
        let embeddings = tree(&format!("{EMBEDDINGS_TREE_PREFIX}{model}"))?;
        let tags = tree(TAGS_TREE)?;
        let embedding_log = tree(&format!("{}{model}", index::EMBEDDING_LOG_TREE_PREFIX))?;
        let index = index::SearchIndex::open(
            path,
            model,
            embed_dim,
            search,
            index::IndexTrees {
                db: db.clone(),
                embeddings: embeddings.clone(),
                tags: tags.clone(),
                log: embedding_log.clone(),
                meta,
            },
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            frames: tree(FRAMES_TREE)?,
            tags,
            tag_index: tree(TAG_INDEX_TREE)?,
            streams: tree(STREAMS_TREE)?,
            checkpoints: tree(CHECKPOINTS_TREE)?,
            segments: tree(SEGMENTS_TREE)?,
            segment_open: tree(SEGMENT_OPEN_TREE)?,
            segment_keyframes: tree(SEGMENT_KEYFRAMES_TREE)?,
            keyframes: tree(KEYFRAMES_TREE)?,
            thumbnails: tree(THUMBNAILS_TREE)?,
            caption_queue: tree(CAPTION_QUEUE_TREE)?,
            caption_index: tree(CAPTION_INDEX_TREE)?,
            embedding_log,
            rigs: tree(rigs::RIGS_TREE)?,
            outbox: tree(outbox::OUTBOX_TREE)?,
            uplink: None,
            fingerprint: model_fingerprint.to_string(),
            index,
            caption_signal: Default::default(),
            caption_backlog: Default::default(),
            embeddings,
            embed_dim,
            db,
        }
        .with_counted_backlog())
    }

    fn with_counted_backlog(self) -> Self {
        self.add_caption_backlog(self.caption_queue.len() as i64);
        self
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The next id of a counter in `meta` (ids start at 1).
    fn next_id(&self, counter: &[u8]) -> Result<u32, StoreError> {
        let meta = self.db.open_tree(META_TREE).map_err(|e| self.err(e))?;
        let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or([0; 4]));
        Ok(meta
            .update_and_fetch(counter, |old| {
                Some(old.map_or(1u32, |b| be(b) + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.err(e))?
            .map_or(1, |b| be(&b)))
    }

    /// The id of a stream, created on first use.
    pub fn stream_id(&self, name: &str) -> Result<u32, StoreError> {
        if let Some(v) = self.streams.get(name.as_bytes()).map_err(|e| self.err(e))? {
            return Ok(schema::decode::<StreamRecord>(STREAMS_TREE, &v)?.id);
        }
        // A racing creator of the same name loses the compare-and-swap and
        // reads the winner's id.
        let id = self.next_id(META_NEXT_STREAM_ID)?;
        let record = StreamRecord {
            id,
            name: name.to_string(),
        };
        match self
            .streams
            .compare_and_swap(
                name.as_bytes(),
                None as Option<&[u8]>,
                Some(schema::encode(&record)),
            )
            .map_err(|e| self.err(e))?
        {
            Ok(()) => Ok(id),
            Err(cas) => Ok(schema::decode::<StreamRecord>(
                STREAMS_TREE,
                &cas.current.unwrap_or_default(),
            )?
            .id),
        }
    }

    /// All streams.
    pub fn streams(&self) -> Result<Vec<StreamRecord>, StoreError> {
        self.streams
            .iter()
            .map(|kv| {
                let (_, v) = kv.map_err(|e| self.err(e))?;
                schema::decode(STREAMS_TREE, &v)
            })
            .collect()
    }

    fn stream_names(&self) -> Result<std::collections::HashMap<u32, String>, StoreError> {
        Ok(self
            .streams()?
            .into_iter()
            .map(|s| (s.id, s.name))
            .collect())
    }

    /// Replay progress of `source` on `stream_id`.
    pub fn checkpoint(
        &self,
        stream_id: u32,
        source: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        self.checkpoints
            .get(keys::checkpoint_key(stream_id, source))
            .map_err(|e| self.err(e))?
            .map(|v| schema::decode(CHECKPOINTS_TREE, &v))
            .transpose()
    }

    /// The source identities with a checkpoint on `stream` (unknown stream:
    /// none).
    pub fn source_ids(&self, stream: &str) -> Result<Vec<String>, StoreError> {
        let Some(id) = self.streams()?.into_iter().find(|s| s.name == stream) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for kv in self.checkpoints.scan_prefix(id.id.to_be_bytes()) {
            let (k, _) = kv.map_err(|e| self.err(e))?;
            out.push(String::from_utf8_lossy(&k[4..]).into_owned());
        }
        Ok(out)
    }
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    let msg = e.to_string();
    // sled reports a held lock as an I/O error ("could not acquire lock").
    if msg.contains("lock") || msg.contains("WouldBlock") || msg.contains("temporarily unavailable")
    {
        StoreError::Locked {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Sled {
            path: path.to_path_buf(),
            message: msg,
        }
    }
}

#[cfg(test)]
mod tests;
