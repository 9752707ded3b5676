//! The uplink's outbox: what is to be sent to the fleet, written in the same
//! transaction as the frames, segments and rig records it describes, and
//! removed only when the broker has acknowledged it.
//!
//! Tree `outbox`:
//! - `n` -> next sequence number (u64 BE); numbers are never reused
//! - `d` -> frame messages dropped because the outbox was full (u64 BE)
//! - `f` + seq -> a frame message (dropped oldest first when full)
//! - `k` + seq -> a message that is kept however full the outbox is
//!   (segments, captions, rig records)
//!
//! A value is the message kind (1 byte), the time it was queued (ms since
//! the Unix epoch, u64 BE) and the JSON payload of [`crate::uplink::message`]
//! with its sequence number in it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{NewSegment, RigWrite, StoreError, StoredFrame, segments::SegmentWrites};
use crate::uplink::message::{
    self as wire, FrameMessage, MessageKind, PAYLOAD_VERSION, RigMessage, SegmentMessage,
    SegmentTag, TagValue,
};

mod tree;

/// The `outbox` tree.
pub const OUTBOX_TREE: &str = "outbox";
const NEXT_SEQ: &[u8] = b"n";
const DROPPED: &[u8] = b"d";
const FRAME_PREFIX: u8 = b'f';
const KEPT_PREFIX: u8 = b'k';
const HEADER_LEN: usize = 9;

/// What the store needs to know to fill the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxSettings {
    /// Vehicle id (payloads name it).
    pub vehicle: String,
    /// Bound of the queued payloads in bytes; frame messages beyond it are
    /// dropped oldest first.
    pub max_bytes: u64,
    /// Whether frame messages are queued at all (segments always are).
    pub frames: bool,
}

/// The outbox of a store: its settings, counters and the signal that wakes
/// the publisher. Shared by the store (and its reopened successors) and the
/// publisher.
///
/// The counters are signed: a message is counted just after its write
/// commits, and the publisher may send it and count its removal first.
#[derive(Debug)]
pub struct Outbox {
    settings: OutboxSettings,
    depth: AtomicI64,
    bytes: AtomicI64,
    wake: tokio::sync::Notify,
}

impl Outbox {
    /// A new, not yet attached, outbox.
    pub fn new(settings: OutboxSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            depth: AtomicI64::new(0),
            bytes: AtomicI64::new(0),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Its settings.
    pub fn settings(&self) -> &OutboxSettings {
        &self.settings
    }

    /// Messages queued.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed).max(0) as u64
    }

    /// Resolves when something was queued since the last call.
    pub async fn queued(&self) {
        self.wake.notified().await
    }

    /// Queued payload bytes.
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    fn added(&self, entries: u64, bytes: u64) {
        self.depth.fetch_add(entries as i64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as i64, Ordering::Relaxed);
        self.wake.notify_one();
    }

    // Not clamped at zero: a removal counted before its addition must
    // still cancel it (a clamp left a sent message counted forever).
    fn removed(&self, entries: u64, bytes: u64) {
        self.depth.fetch_sub(entries as i64, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes as i64, Ordering::Relaxed);
    }
}

/// A queued message, read for sending.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// Sequence number.
    pub seq: u64,
    /// Its kind (the topic's last level).
    pub kind: MessageKind,
    /// When it was queued, ms since the Unix epoch.
    pub queued_ms: u64,
    /// JSON payload.
    pub payload: Vec<u8>,
    /// Whether it is a frame message (droppable).
    pub frame: bool,
}

impl OutboxEntry {
    fn key(&self) -> [u8; 9] {
        entry_key(self.frame, self.seq)
    }
}

/// What the outbox holds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxStats {
    /// Messages queued.
    pub depth: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Frame messages among them.
    pub frames: u64,
    /// When the oldest was queued (ms since the Unix epoch).
    pub oldest_ms: Option<u64>,
    /// Frame messages dropped because the outbox was full, ever.
    pub dropped: u64,
    /// The next sequence number.
    pub next_seq: u64,
}

/// A message to queue, before it has its number.
#[derive(Debug, Clone)]
pub(super) enum PendingMessage {
    Frame(FrameMessage),
    Segment(SegmentMessage),
    Rig(RigMessage),
}

impl PendingMessage {
    fn encode(&self, seq: u64, now_ms: u64) -> ([u8; 9], Vec<u8>) {
        let (frame, kind, payload) = match self {
            Self::Frame(m) => (
                true,
                MessageKind::Frame,
                json(&FrameMessage { seq, ..m.clone() }),
            ),
            Self::Segment(m) => (
                false,
                MessageKind::Segment,
                json(&SegmentMessage { seq, ..m.clone() }),
            ),
            Self::Rig(m) => (
                false,
                MessageKind::Rig,
                json(&RigMessage { seq, ..m.clone() }),
            ),
        };
        let mut value = Vec::with_capacity(HEADER_LEN + payload.len());
        value.push(kind_byte(kind));
        value.extend_from_slice(&now_ms.to_be_bytes());
        value.extend_from_slice(&payload);
        (entry_key(frame, seq), value)
    }
}

fn json<T: serde::Serialize>(m: &T) -> Vec<u8> {
    serde_json::to_vec(m).expect("messages serialize")
}

fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Frame => b'F',
        MessageKind::Segment => b'S',
        MessageKind::Rig => b'R',
        MessageKind::Status => b'T',
    }
}

fn entry_key(frame: bool, seq: u64) -> [u8; 9] {
    let mut k = [if frame { FRAME_PREFIX } else { KEPT_PREFIX }; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn be_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Queues `pending` inside a transaction. Returns (entries, bytes) added.
pub(super) fn write(
    pending: &[PendingMessage],
    t: &TransactionalTree,
    now_ms: u64,
) -> Result<(u64, u64), ConflictableTransactionError<StoreError>> {
    if pending.is_empty() {
        return Ok((0, 0));
    }
    let first = t.get(NEXT_SEQ)?.map_or(1, |v| be_u64(&v));
    let mut bytes = 0;
    for (seq, m) in (first..).zip(pending) {
        let (key, value) = m.encode(seq, now_ms);
        bytes += value.len() as u64;
        t.insert(&key, value)?;
    }
    t.insert(NEXT_SEQ, &(first + pending.len() as u64).to_be_bytes())?;
    Ok((pending.len() as u64, bytes))
}

fn tags_of(tags: &super::TagRecord) -> BTreeMap<String, TagValue> {
    tags.sets
        .iter()
        .map(|t| {
            (
                t.set.clone(),
                TagValue {
                    class: t.top.clone(),
                    score: t.score,
                },
            )
        })
        .collect()
}

/// The segment message of a segment record (`seq` is set when queued).
pub(super) fn segment_message(
    vehicle: &str,
    camera: &str,
    r: &super::SegmentRecord,
) -> SegmentMessage {
    let tags: Vec<SegmentTag> = r
        .tags
        .iter()
        .map(|t| SegmentTag {
            set: t.set.clone(),
            class: t.class.clone(),
            share: t.share,
        })
        .collect();
    let caption_state = match &r.caption {
        super::CaptionState::Done { .. } => "done",
        super::CaptionState::Pending => "pending",
        super::CaptionState::Failed { .. } => "failed",
        super::CaptionState::None => "none",
    };
    let mut summary = tags
        .iter()
        .map(|t| t.class.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(c) = r.caption.text() {
        summary.push_str(&format!(": \"{c}\""));
    }
    SegmentMessage {
        v: PAYLOAD_VERSION,
        vehicle: vehicle.to_string(),
        seq: 0,
        camera: camera.to_string(),
        start_ns: r.start_ns,
        end_ns: r.end_ns,
        frames: r.frames,
        keyframe_ns: r.keyframe_ns,
        source: r.source_label.clone(),
        tags,
        caption: r.caption.text().map(str::to_string),
        caption_state: caption_state.into(),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_counted_before_its_addition_still_cancels_it() {
        let outbox = Outbox::new(OutboxSettings {
            vehicle: "v1".into(),
            max_bytes: 1 << 20,
            frames: true,
        });
        outbox.added(2, 200);
        // The publisher sent and removed the next message before its
        // writer counted it.
        outbox.removed(3, 300);
        assert_eq!((outbox.depth(), outbox.bytes()), (0, 0));
        outbox.added(1, 100);
        assert_eq!((outbox.depth(), outbox.bytes()), (0, 0));
        outbox.added(1, 50);
        assert_eq!((outbox.depth(), outbox.bytes()), (1, 50));
    }
}
