//! The store's side of the outbox: attaching it, the messages a write
//! queues, reading them in order and removing them once acknowledged.

use super::*;
use crate::store::{SegmentRecord, Store};

impl Store {
    /// Attaches the uplink's outbox: from now on writes queue messages for
    /// it. Counts what the outbox already holds.
    pub fn attach_outbox(&mut self, outbox: Arc<Outbox>) -> Result<(), StoreError> {
        let (mut depth, mut bytes) = (0, 0);
        for prefix in [FRAME_PREFIX, KEPT_PREFIX] {
            for kv in self.outbox.scan_prefix([prefix]) {
                let (_, v) = kv.map_err(|e| self.err(e))?;
                depth += 1;
                bytes += v.len() as u64;
            }
        }
        outbox.depth.store(depth as i64, Ordering::Relaxed);
        outbox.bytes.store(bytes as i64, Ordering::Relaxed);
        self.uplink = Some(outbox);
        Ok(())
    }

    /// The attached outbox.
    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.uplink.as_ref()
    }

    /// The messages a write queues (none without an outbox).
    pub(in crate::store) fn pending_messages(
        &self,
        frames: &[StoredFrame],
        segments: &SegmentWrites,
        rigs: &[RigWrite],
    ) -> Result<Vec<PendingMessage>, StoreError> {
        let Some(outbox) = &self.uplink else {
            return Ok(Vec::new());
        };
        let s = &outbox.settings;
        let mut out = Vec::new();
        if (s.frames && !frames.is_empty()) || !segments.closed.is_empty() {
            let cameras = self.stream_names()?;
            let camera = |id: u32| cameras.get(&id).cloned().unwrap_or_else(|| id.to_string());
            if s.frames {
                for f in frames {
                    out.push(PendingMessage::Frame(FrameMessage {
                        v: PAYLOAD_VERSION,
                        vehicle: s.vehicle.clone(),
                        seq: 0,
                        camera: camera(f.key.stream_id),
                        time_ns: f.key.ts_ns,
                        pts_ns: f.record.pts_ns,
                        source: f.record.source_label.clone(),
                        model: self.fingerprint.clone(),
                        embedding: wire::encode_embedding(&f.embedding),
                        tags: tags_of(&f.tags),
                    }));
                }
            }
            for NewSegment {
                stream_id, record, ..
            } in &segments.closed
            {
                out.push(PendingMessage::Segment(segment_message(
                    &s.vehicle,
                    &camera(*stream_id),
                    record,
                )));
            }
        }
        if !rigs.is_empty() {
            let names: HashMap<u32, String> = self.rigs()?.into_iter().collect();
            for r in rigs {
                let (present, absent): (Vec<_>, Vec<_>) =
                    r.record.views.iter().partition(|v| v.present);
                out.push(PendingMessage::Rig(RigMessage {
                    v: PAYLOAD_VERSION,
                    vehicle: s.vehicle.clone(),
                    seq: 0,
                    rig: names
                        .get(&r.rig_id)
                        .cloned()
                        .unwrap_or_else(|| r.rig_id.to_string()),
                    anchor_ns: r.record.anchor_ns,
                    anchor_role: r.record.anchor_role.clone(),
                    present: present.iter().map(|v| v.role.clone()).collect(),
                    absent: absent.iter().map(|v| v.role.clone()).collect(),
                    model: r.record.fusion_model.clone(),
                    embedding: wire::encode_embedding(&r.embedding),
                    tags: tags_of(&r.record.tags),
                }));
            }
        }
        Ok(out)
    }

    /// The captioned segment's message (none without an outbox).
    pub(in crate::store) fn caption_message(
        &self,
        stream_id: u32,
    ) -> Result<Option<impl Fn(&SegmentRecord) -> PendingMessage + use<>>, StoreError> {
        let Some(outbox) = &self.uplink else {
            return Ok(None);
        };
        let vehicle = outbox.settings.vehicle.clone();
        let camera = self
            .stream_names()?
            .remove(&stream_id)
            .unwrap_or_else(|| stream_id.to_string());
        Ok(Some(move |r: &SegmentRecord| {
            PendingMessage::Segment(segment_message(&vehicle, &camera, r))
        }))
    }

    /// After a committed write: counts what it queued and drops the oldest
    /// frame messages if the outbox is over its bound.
    pub(in crate::store) fn queued(&self, entries: u64, bytes: u64) -> Result<(), StoreError> {
        let Some(outbox) = &self.uplink else {
            return Ok(());
        };
        if entries > 0 {
            outbox.added(entries, bytes);
        }
        let max = outbox.settings.max_bytes;
        if outbox.bytes() <= max {
            return Ok(());
        }
        let (mut dropped, mut freed) = (0u64, 0u64);
        let over = outbox.bytes() - max;
        for kv in self.outbox.scan_prefix([FRAME_PREFIX]) {
            if freed >= over {
                break;
            }
            let (k, _) = kv.map_err(|e| self.err(e))?;
            // The publisher may have removed it (acknowledged) meanwhile.
            if let Some(v) = self.outbox.remove(&k).map_err(|e| self.unwritable(e))? {
                dropped += 1;
                freed += v.len() as u64;
            }
        }
        if dropped > 0 {
            outbox.removed(dropped, freed);
            self.outbox
                .fetch_and_update(DROPPED, |old| {
                    Some((old.map_or(0, be_u64) + dropped).to_be_bytes().to_vec())
                })
                .map_err(|e| self.unwritable(e))?;
            metrics::counter!(crate::pipeline::metrics::UPLINK_DROPPED).increment(dropped);
        }
        Ok(())
    }

    /// Up to `max` queued messages with a sequence number above `after`, in
    /// sequence order, with no gap a later call could fill: only numbers
    /// below the next sequence number read first are returned, so a
    /// message committed while the two classes are scanned (a frame below
    /// a segment just seen) is not passed over by a caller's cursor.
    pub fn outbox_after(&self, after: u64, max: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        // Queueing writes the entries and the next number in one
        // transaction, so every number below it is already visible.
        let next = self
            .outbox
            .get(NEXT_SEQ)
            .map_err(|e| self.err(e))?
            .map_or(1, |v| be_u64(&v));
        let mut out = Vec::new();
        if next <= after.saturating_add(1) {
            return Ok(out);
        }
        for prefix in [FRAME_PREFIX, KEPT_PREFIX] {
            let from = entry_key(prefix == FRAME_PREFIX, after.saturating_add(1));
            let to = entry_key(prefix == FRAME_PREFIX, next - 1);
            for kv in self.outbox.range(from..=to).take(max) {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                out.push(self.decode_entry(&k, &v)?);
            }
        }
        out.sort_by_key(|e| e.seq);
        out.truncate(max);
        Ok(out)
    }

    fn decode_entry(&self, k: &[u8], v: &[u8]) -> Result<OutboxEntry, StoreError> {
        let corrupt = |message: &str| StoreError::Corrupt {
            tree: OUTBOX_TREE.into(),
            message: message.into(),
        };
        if k.len() != 9 || v.len() < HEADER_LEN {
            return Err(corrupt("short entry"));
        }
        let kind = match v[0] {
            b'F' => MessageKind::Frame,
            b'S' => MessageKind::Segment,
            b'R' => MessageKind::Rig,
            b'T' => MessageKind::Status,
            _ => return Err(corrupt("unknown message kind")),
        };
        Ok(OutboxEntry {
            seq: be_u64(&k[1..]),
            kind,
            queued_ms: be_u64(&v[1..HEADER_LEN]),
            payload: v[HEADER_LEN..].to_vec(),
            frame: k[0] == FRAME_PREFIX,
        })
    }

    /// Removes acknowledged messages.
    pub fn outbox_acked(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        let (mut n, mut bytes) = (0, 0);
        for e in entries {
            if let Some(v) = self
                .outbox
                .remove(e.key())
                .map_err(|e| self.unwritable(e))?
            {
                n += 1;
                bytes += v.len() as u64;
            }
        }
        if let Some(outbox) = &self.uplink {
            outbox.removed(n, bytes);
        }
        Ok(())
    }

    /// When the oldest queued message was queued (ms since the Unix
    /// epoch); a cheap look at the first entry of each class.
    pub fn outbox_oldest_ms(&self) -> Result<Option<u64>, StoreError> {
        let mut oldest: Option<u64> = None;
        for prefix in [FRAME_PREFIX, KEPT_PREFIX] {
            if let Some(kv) = self.outbox.scan_prefix([prefix]).next() {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                let t = self.decode_entry(&k, &v)?.queued_ms;
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        Ok(oldest)
    }

    /// What the outbox holds (a scan of it).
    pub fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let mut stats = OutboxStats::default();
        let get = |k: &[u8]| -> Result<u64, StoreError> {
            Ok(self
                .outbox
                .get(k)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| be_u64(&v)))
        };
        stats.dropped = get(DROPPED)?;
        stats.next_seq = get(NEXT_SEQ)?.max(1);
        for prefix in [FRAME_PREFIX, KEPT_PREFIX] {
            for kv in self.outbox.scan_prefix([prefix]) {
                let (_, v) = kv.map_err(|e| self.err(e))?;
                stats.depth += 1;
                stats.bytes += v.len() as u64;
                if prefix == FRAME_PREFIX {
                    stats.frames += 1;
                }
            }
        }
        stats.oldest_ms = self.outbox_oldest_ms()?;
        Ok(stats)
    }
}
