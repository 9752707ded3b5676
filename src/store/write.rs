//! The batch write: frames, checkpoints, segments, rig records and the
//! uplink messages describing them, in one transaction.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    CheckpointUpdate, RigWrite, SegmentWrites, Store, StoreError, StoredFrame, TAGS_TREE,
    TagRecord, keyframes, keys, outbox, rigs, schema, segments,
};

impl Store {
    /// Writes frames and checkpoints in one transaction. Returns how many
    /// frames were new (the rest replaced identical keys).
    pub fn write_batch(
        &self,
        frames: &[StoredFrame],
        checkpoints: &[CheckpointUpdate],
    ) -> Result<usize, StoreError> {
        self.write(frames, checkpoints, &SegmentWrites::default(), &[])
    }

    /// [`Store::write_batch`] plus the segments the batch closed, the
    /// open-segment markers and the rig records it completed, all in one
    /// transaction; with an outbox attached, their uplink messages too.
    pub fn write(
        &self,
        frames: &[StoredFrame],
        checkpoints: &[CheckpointUpdate],
        segments: &SegmentWrites,
        rigs: &[RigWrite],
    ) -> Result<usize, StoreError> {
        for f in frames {
            if f.embedding.len() != self.embed_dim {
                return Err(StoreError::Dimension {
                    expected: self.embed_dim,
                    actual: f.embedding.len(),
                });
            }
        }
        let messages = self.pending_messages(frames, segments, rigs)?;
        let now_ms = outbox::now_ms();
        // One write at a time from here to its frames being in the search
        // index, so the index applies writes in their log order.
        let mut order = self.index.lock_writes();
        let first_seq = order.next_seq;
        let logged = self.index.enabled();
        // More trees than sled's tuple impls take (14): a slice, in this order.
        let trees = [
            &self.frames,
            &self.embeddings,
            &self.tags,
            &self.tag_index,
            &self.checkpoints,
            &self.segments,
            &self.segment_open,
            &self.caption_queue,
            &self.caption_index,
            &self.segment_keyframes,
            &self.thumbnails,
            &self.keyframes,
            &self.embedding_log,
            &self.rigs,
            &self.outbox,
        ];
        let result = trees[..].transaction(|t| {
            let [
                frames_t,
                emb_t,
                tags_t,
                index_t,
                ckpt_t,
                seg_t,
                open_t,
                queue_t,
                words_t,
                kf_t,
                thumbs_t,
                pictures_t,
                log_t,
                rigs_t,
                outbox_t,
            ] = &t[..]
            else {
                unreachable!("one view per tree")
            };
            let mut new = 0;
            for (seq, f) in (first_seq..).zip(frames) {
                let key = f.key.encode();
                if logged {
                    log_t.insert(&seq.to_be_bytes(), &key)?;
                }
                if frames_t.insert(&key, schema::encode(&f.record))?.is_none() {
                    new += 1;
                }
                emb_t.insert(&key, schema::encode_embedding(&f.embedding))?;
                // A replay without thumbnails keeps the earlier one.
                if let Some(jpeg) = &f.thumbnail {
                    thumbs_t.insert(&key, jpeg.as_ref())?;
                }
                // Replace the index entries of earlier tags of this frame.
                if let Some(old) = tags_t.insert(&key, schema::encode(&f.tags))? {
                    let old: TagRecord = schema::decode(TAGS_TREE, &old)
                        .map_err(ConflictableTransactionError::Abort)?;
                    for t in &old.sets {
                        index_t.remove(keys::tag_index_key(&t.set, &t.top, &f.key))?;
                    }
                }
                for t in &f.tags.sets {
                    index_t.insert(
                        keys::tag_index_key(&t.set, &t.top, &f.key),
                        &t.score.to_be_bytes(),
                    )?;
                }
            }
            for c in checkpoints {
                ckpt_t.insert(
                    keys::checkpoint_key(c.stream_id, &c.source_id),
                    schema::encode(&c.checkpoint),
                )?;
            }
            let queued =
                segments::write_segments(segments, seg_t, open_t, queue_t, words_t, pictures_t)?;
            keyframes::write(&segments.keyframes, kf_t)?;
            rigs::write(rigs, rigs_t)?;
            let sent = outbox::write(&messages, outbox_t, now_ms)?;
            Ok((new, queued, sent))
        });
        match result {
            Ok((n, queued, (messages, bytes))) => {
                if logged {
                    order.next_seq += frames.len() as u64;
                }
                let save = self.index.applied(&mut order, frames);
                drop(order);
                if save {
                    self.index.save()?;
                }
                self.add_caption_backlog(queued);
                if segments.closed.iter().any(|s| s.caption_image.is_some()) {
                    self.caption_signal.notify();
                }
                self.queued(messages, bytes)?;
                Ok(n)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.unwritable(e)),
        }
    }
}
