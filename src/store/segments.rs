//! Segments, the caption backlog and the caption word index.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::keys::{self, FrameKey};
use super::schema::{
    self, CaptionJob, CaptionState, FrameRecord, OpenSegmentRecord, SegmentRecord, TagRecord,
};
use super::{
    CAPTION_QUEUE_TREE, SEGMENT_OPEN_TREE, SEGMENTS_TREE, Store, StoreError, StreamRecord,
    TAGS_TREE,
};

/// A segment closed by a batch.
#[derive(Debug, Clone)]
pub struct NewSegment {
    /// Its stream.
    pub stream_id: u32,
    /// The record (caption `Pending` when `caption_image` is set).
    pub record: SegmentRecord,
    /// Keyframe to caption.
    pub caption_image: Option<CaptionJob>,
    /// The keyframe's picture (JPEG), when keyframe pictures are on.
    pub keyframe_jpeg: Option<std::sync::Arc<[u8]>>,
}

/// The open segment of a (stream, source); `None` clears it.
#[derive(Debug, Clone)]
pub struct OpenMarker {
    /// Stream id.
    pub stream_id: u32,
    /// Source identity.
    pub source_id: String,
    /// The open segment.
    pub open: Option<OpenSegmentRecord>,
}

/// Segment changes written with a batch.
#[derive(Debug, Clone, Default)]
pub struct SegmentWrites {
    /// Closed segments.
    pub closed: Vec<NewSegment>,
    /// Open-segment markers.
    pub open: Vec<OpenMarker>,
    /// Pictures of keyframe candidates kept or dropped.
    pub keyframes: Vec<super::KeyframeImageWrite>,
}

impl SegmentWrites {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.is_empty() && self.keyframes.is_empty()
    }
}

/// Which segments a query returns.
#[derive(Debug, Clone, Default)]
pub struct SegmentFilter {
    /// Stream names; `None` = all.
    pub streams: Option<Vec<String>>,
    /// Segments ending at or after this time, ns.
    pub from_ns: Option<i64>,
    /// Segments starting at or before this time, ns.
    pub to_ns: Option<i64>,
    /// Words that must all occur in the caption.
    pub caption_words: Vec<String>,
    /// Only segments from this source: its label (path as replayed, URL)
    /// or its identity.
    pub source: Option<String>,
    /// At most this many segments.
    pub limit: Option<usize>,
}

/// A segment with its stream name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentEntry {
    /// Stream (camera) name.
    pub stream: String,
    /// The segment.
    #[serde(flatten)]
    pub record: SegmentRecord,
    /// A picture of its keyframe is stored.
    pub keyframe_picture: bool,
}

/// A stored frame with everything the segmenter needs.
#[derive(Debug, Clone)]
pub struct StoredFrameData {
    /// Key.
    pub key: FrameKey,
    /// Metadata.
    pub record: FrameRecord,
    /// Tags.
    pub tags: TagRecord,
    /// Normalised embedding (current model).
    pub embedding: Vec<f32>,
}

/// Wakes the captioner when jobs are queued (a counter and a condvar).
#[derive(Debug, Default)]
pub(super) struct CaptionSignal {
    generation: Mutex<u64>,
    cond: Condvar,
}

impl CaptionSignal {
    pub(super) fn notify(&self) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cond.notify_all();
    }

    fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |g| *g == seen)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    fn current(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Words of a caption as indexed and searched: lowercase alphanumeric runs,
/// without a few function words that every caption has.
pub fn caption_words(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "a", "an", "the", "of", "on", "in", "with", "and", "is", "are", "to", "at", "it", "its",
        "there",
    ];
    let mut words = BTreeSet::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = w.to_lowercase();
        if !STOP.contains(&w.as_str()) {
            words.insert(w);
        }
    }
    words.into_iter().collect()
}

fn caption_index_key(word: &str, key: &FrameKey) -> Vec<u8> {
    let mut k = caption_index_prefix(word);
    k.extend_from_slice(&key.encode());
    k
}

fn caption_index_prefix(word: &str) -> Vec<u8> {
    let mut k = word.as_bytes().to_vec();
    k.push(0);
    k
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Writes closed segments (queueing their captions) and open markers inside
/// the batch transaction.
pub(super) fn write_segments(
    writes: &SegmentWrites,
    seg_t: &TransactionalTree,
    open_t: &TransactionalTree,
    queue_t: &TransactionalTree,
    words_t: &TransactionalTree,
    pictures_t: &TransactionalTree,
) -> TxResult<i64> {
    // Change of the caption backlog, applied once the transaction commits.
    let mut queued = 0i64;
    for s in &writes.closed {
        let key = FrameKey {
            stream_id: s.stream_id,
            ts_ns: s.record.start_ns,
        }
        .encode();
        let keyframe = FrameKey {
            stream_id: s.stream_id,
            ts_ns: s.record.keyframe_ns,
        };
        // A replay without keyframe pictures keeps the earlier one.
        if let Some(jpeg) = &s.keyframe_jpeg {
            super::keyframes::write_keyframe(pictures_t, &keyframe, Some(jpeg))?;
        }
        // The same segment closed again (a replay of a clip after its
        // checkpoint was lost) keeps the caption it already has.
        if let Some(old) = seg_t.get(key)? {
            let old: SegmentRecord =
                schema::decode(SEGMENTS_TREE, &old).map_err(ConflictableTransactionError::Abort)?;
            if old.keyframe_ns != s.record.keyframe_ns {
                let old_keyframe = FrameKey {
                    ts_ns: old.keyframe_ns,
                    ..keyframe
                };
                super::keyframes::write_keyframe(pictures_t, &old_keyframe, None)?;
            }
            if old.keyframe_ns == s.record.keyframe_ns
                && old.end_ns == s.record.end_ns
                && matches!(old.caption, CaptionState::Done { .. })
            {
                continue;
            }
            // Replaced: its old caption's words no longer apply.
            if let Some(text) = old.caption.text() {
                let segment = FrameKey::decode(&key).expect("a key we encoded");
                for w in caption_words(text) {
                    words_t.remove(caption_index_key(&w, &segment))?;
                }
            }
        }
        seg_t.insert(&key, schema::encode(&s.record))?;
        match &s.caption_image {
            Some(job) => {
                if queue_t.insert(&key, schema::encode(job))?.is_none() {
                    queued += 1;
                }
            }
            None => {
                if queue_t.remove(&key)?.is_some() {
                    queued -= 1;
                }
            }
        };
    }
    for m in &writes.open {
        let k = keys::checkpoint_key(m.stream_id, &m.source_id);
        match &m.open {
            Some(o) => open_t.insert(k, schema::encode(o))?,
            None => open_t.remove(k)?,
        };
    }
    Ok(queued)
}

impl Store {
    /// The open segment of `source` on `stream_id`, if one was being
    /// built when the last run stopped.
    pub fn open_segment(
        &self,
        stream_id: u32,
        source: &str,
    ) -> Result<Option<OpenSegmentRecord>, StoreError> {
        self.segment_open
            .get(keys::checkpoint_key(stream_id, source))
            .map_err(|e| self.err(e))?
            .map(|v| schema::decode(SEGMENT_OPEN_TREE, &v))
            .transpose()
    }

    /// Stored frames of a stream with times in `[from_ns, until_ns)` that
    /// came from `source` (label), with tags and embeddings, in time order.
    pub fn frames_between(
        &self,
        stream_id: u32,
        from_ns: i64,
        until_ns: i64,
        source: &str,
    ) -> Result<Vec<StoredFrameData>, StoreError> {
        let mut out = Vec::new();
        if until_ns <= from_ns {
            return Ok(out);
        }
        for kv in self
            .frames
            .range(FrameKey::range(stream_id, from_ns, until_ns - 1))
        {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let Some(key) = FrameKey::decode(&k) else {
                continue;
            };
            let record: FrameRecord = schema::decode(super::FRAMES_TREE, &v)?;
            if record.source_label != source {
                continue;
            }
            let Some(embedding) = self.embedding(&key)? else {
                continue;
            };
            let tags = match self.tags.get(k).map_err(|e| self.err(e))? {
                Some(t) => schema::decode(TAGS_TREE, &t)?,
                None => TagRecord { sets: Vec::new() },
            };
            out.push(StoredFrameData {
                key,
                record,
                tags,
                embedding,
            });
        }
        Ok(out)
    }

    /// Segments passing `filter`, in (stream, time) order.
    pub fn segments(&self, filter: &SegmentFilter) -> Result<Vec<SegmentEntry>, StoreError> {
        let streams: Vec<StreamRecord> = match &filter.streams {
            None => self.streams()?,
            Some(names) => {
                let all = self.streams()?;
                names
                    .iter()
                    .map(|n| {
                        all.iter()
                            .find(|s| &s.name == n)
                            .cloned()
                            .ok_or_else(|| StoreError::UnknownStream(n.clone()))
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let words: Vec<String> = filter
            .caption_words
            .iter()
            .flat_map(|w| caption_words(w))
            .collect();
        let with_words = if words.is_empty() {
            // Only stop words ("the"): they are not indexed, nothing matches.
            if filter.caption_words.iter().any(|w| !w.trim().is_empty()) {
                return Ok(Vec::new());
            }
            None
        } else {
            Some(self.keys_with_words(&words)?)
        };
        let limit = filter.limit.unwrap_or(usize::MAX);
        let from = filter.from_ns.unwrap_or(i64::MIN);
        let to = filter.to_ns.unwrap_or(i64::MAX);
        let mut out = Vec::new();
        for stream in streams {
            for kv in self
                .segments
                .range(FrameKey::range(stream.id, i64::MIN, to))
            {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                if with_words.as_ref().is_some_and(|w| !w.contains(k.as_ref())) {
                    continue;
                }
                let record: SegmentRecord = schema::decode(SEGMENTS_TREE, &v)?;
                if record.end_ns < from
                    || filter
                        .source
                        .as_ref()
                        .is_some_and(|s| s != &record.source_label && s != &record.source_id)
                {
                    continue;
                }
                let keyframe = FrameKey {
                    stream_id: stream.id,
                    ts_ns: record.keyframe_ns,
                };
                out.push(SegmentEntry {
                    stream: stream.name.clone(),
                    keyframe_picture: self.has_keyframe_picture(&keyframe)?,
                    record,
                });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Segment keys whose caption has every word.
    fn keys_with_words(&self, words: &[String]) -> Result<BTreeSet<Vec<u8>>, StoreError> {
        let mut result: Option<BTreeSet<Vec<u8>>> = None;
        for w in words {
            let prefix = caption_index_prefix(w);
            let mut keys = BTreeSet::new();
            for kv in self.caption_index.scan_prefix(&prefix) {
                let (k, _) = kv.map_err(|e| self.err(e))?;
                keys.insert(k[prefix.len()..].to_vec());
            }
            result = Some(match result {
                None => keys,
                Some(r) => r.intersection(&keys).cloned().collect(),
            });
        }
        Ok(result.unwrap_or_default())
    }

    /// Number of keyframes waiting for a caption (a counter kept with the
    /// queue, not a scan).
    pub fn caption_backlog(&self) -> usize {
        self.caption_backlog.load(Ordering::Relaxed).max(0) as usize
    }

    pub(super) fn add_caption_backlog(&self, delta: i64) {
        self.caption_backlog.fetch_add(delta, Ordering::Relaxed);
    }

    /// Drops the oldest queued caption jobs (lowest stream id, then time)
    /// until at most `keep` remain; their segments get a `Failed` caption
    /// that says why. Returns how many were dropped. Frames are never
    /// touched.
    pub fn trim_caption_backlog(&self, keep: usize) -> Result<usize, StoreError> {
        let mut dropped = 0;
        while self.caption_backlog() > keep {
            let Some((key, job)) = self.next_caption_job()? else {
                break;
            };
            let reason = CaptionState::Failed {
                error: format!("dropped: the caption backlog was full ({keep} keyframes)"),
            };
            self.set_caption(&key, job.keyframe_ns, reason)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// The oldest queued caption job (by stream, then time).
    pub fn next_caption_job(&self) -> Result<Option<(FrameKey, CaptionJob)>, StoreError> {
        let Some((k, v)) = self.caption_queue.first().map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let key = FrameKey::decode(&k).ok_or_else(|| StoreError::Corrupt {
            tree: CAPTION_QUEUE_TREE.into(),
            message: "bad key".into(),
        })?;
        Ok(Some((key, schema::decode(CAPTION_QUEUE_TREE, &v)?)))
    }

    /// The `n` oldest queued caption jobs (by stream, then time); they stay
    /// queued until [`Store::set_caption`] stores their captions.
    pub fn next_caption_jobs(&self, n: usize) -> Result<Vec<(FrameKey, CaptionJob)>, StoreError> {
        let mut jobs = Vec::with_capacity(n.min(64));
        for kv in self.caption_queue.iter().take(n) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let key = FrameKey::decode(&k).ok_or_else(|| StoreError::Corrupt {
                tree: CAPTION_QUEUE_TREE.into(),
                message: "bad key".into(),
            })?;
            jobs.push((key, schema::decode(CAPTION_QUEUE_TREE, &v)?));
        }
        Ok(jobs)
    }

    /// Waits up to `timeout` for a caption job to be queued (returns at
    /// once if one is).
    pub fn wait_for_caption_job(&self, timeout: Duration) {
        let seen = self.caption_signal.current();
        if !self.caption_queue.is_empty() {
            return;
        }
        self.caption_signal.wait(seen, timeout);
    }

    /// Stores the caption of a segment's keyframe `keyframe_ns`, indexes
    /// its words and removes the job from the queue, in one transaction.
    /// Nothing happens if the segment was closed again meanwhile with
    /// another keyframe: its new job stays queued.
    pub fn set_caption(
        &self,
        segment: &FrameKey,
        keyframe_ns: i64,
        state: CaptionState,
    ) -> Result<(), StoreError> {
        let key = segment.encode();
        let message = self.caption_message(segment.stream_id)?;
        let now_ms = super::outbox::now_ms();
        // Ok((true, ..)): the job left the queue; then what was queued for
        // the uplink.
        let result = (
            &self.segments,
            &self.caption_queue,
            &self.caption_index,
            &self.outbox,
        )
            .transaction(|(seg_t, queue_t, index_t, outbox_t)| {
                if let Some(job) = queue_t.get(key)? {
                    let job: CaptionJob = schema::decode(CAPTION_QUEUE_TREE, &job)
                        .map_err(ConflictableTransactionError::Abort)?;
                    if job.keyframe_ns != keyframe_ns {
                        return Ok((false, (0, 0)));
                    }
                }
                let removed = queue_t.remove(&key)?.is_some();
                let Some(v) = seg_t.get(key)? else {
                    return Ok((removed, (0, 0)));
                };
                let mut record: SegmentRecord = schema::decode(SEGMENTS_TREE, &v)
                    .map_err(ConflictableTransactionError::Abort)?;
                if record.keyframe_ns != keyframe_ns {
                    return Ok((removed, (0, 0)));
                }
                if let Some(old) = record.caption.text() {
                    for w in caption_words(old) {
                        index_t.remove(caption_index_key(&w, segment))?;
                    }
                }
                if let Some(text) = state.text() {
                    for w in caption_words(text) {
                        index_t.insert(caption_index_key(&w, segment), &[])?;
                    }
                }
                record.caption = state.clone();
                seg_t.insert(&key, schema::encode(&record))?;
                let sent = match &message {
                    Some(m) => super::outbox::write(&[m(&record)], outbox_t, now_ms)?,
                    None => (0, 0),
                };
                Ok((removed, sent))
            });
        match result {
            Ok((removed, (messages, bytes))) => {
                if removed {
                    self.add_caption_backlog(-1);
                }
                self.queued(messages, bytes)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.err(e)),
        }
    }
}
