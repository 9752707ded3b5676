//! Rig records (see `fuse`): one tree, `rigs`, with three kinds of keys,
//! so a record and its fused embedding go into the batch transaction as
//! one tree (sled's transactions take at most 14):
//! - `I` name -> rig id (u32 BE), the rig registry;
//! - `R` [`FrameKey`] (rig id, anchor time) -> [`RigRecord`];
//! - `E` fusion fingerprint (16 bytes) [`FrameKey`] -> fused embedding
//!   (f32 LE). One key space per fusion model: fused embeddings of another
//!   model are never compared with it.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::keys::{FRAME_KEY_LEN, FrameKey};
use super::schema::{self, TagRecord};
use super::{Store, StoreError};
use crate::store::query::OrdF32;

/// The `rigs` tree.
pub const RIGS_TREE: &str = "rigs";
const ID_PREFIX: u8 = b'I';
const RECORD_PREFIX: u8 = b'R';
const EMBEDDING_PREFIX: u8 = b'E';
const META_NEXT_RIG_ID: &[u8] = b"next_rig_id";
/// Bytes of a fusion fingerprint kept in keys.
const FUSION_KEY_LEN: usize = 16;

/// One rig record: the views of a rig at one anchor time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RigRecord {
    /// The anchor frame's time (the key's time).
    pub anchor_ns: i64,
    /// The anchor role.
    pub anchor_role: String,
    /// Every role of the rig, present or absent.
    pub views: Vec<RigView>,
    /// Fingerprint of what fused the embedding: a fusion model, or the
    /// mean of the views (see `fuse::RigFuser`).
    pub fusion_model: String,
    /// Zero-shot tags of the fused embedding.
    pub tags: TagRecord,
}

impl RigRecord {
    /// Roles present.
    pub fn present_roles(&self) -> impl Iterator<Item = &str> {
        self.views
            .iter()
            .filter(|v| v.present)
            .map(|v| v.role.as_str())
    }
}

/// One view of a rig record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RigView {
    /// Role.
    pub role: String,
    /// Camera (stream name).
    pub camera: String,
    /// Whether a frame of this role joined the record.
    pub present: bool,
    /// The frame's time, ns (0 when absent).
    pub ts_ns: i64,
    /// The frame's pts in its source, ns (0 when absent).
    pub pts_ns: u64,
    /// The frame's time minus the anchor's, ms (0 when absent).
    pub offset_ms: f64,
}

/// A rig record to store with a batch.
#[derive(Debug, Clone)]
pub struct RigWrite {
    /// Rig id ([`Store::rig_id`]).
    pub rig_id: u32,
    /// The record.
    pub record: RigRecord,
    /// The fused, L2-normalised embedding.
    pub embedding: Vec<f32>,
}

fn record_key(rig_id: u32, anchor_ns: i64) -> [u8; 1 + FRAME_KEY_LEN] {
    let mut k = [RECORD_PREFIX; 1 + FRAME_KEY_LEN];
    k[1..].copy_from_slice(
        &FrameKey {
            stream_id: rig_id,
            ts_ns: anchor_ns,
        }
        .encode(),
    );
    k
}

fn fusion_prefix(fusion: &str) -> Vec<u8> {
    let mut k = vec![EMBEDDING_PREFIX];
    let mut id = [b'_'; FUSION_KEY_LEN];
    let fp = &fusion.as_bytes()[..fusion.len().min(FUSION_KEY_LEN)];
    id[..fp.len()].copy_from_slice(fp);
    k.extend_from_slice(&id);
    k
}

fn embedding_key(fusion: &str, rig_id: u32, anchor_ns: i64) -> Vec<u8> {
    let mut k = fusion_prefix(fusion);
    k.extend_from_slice(
        &FrameKey {
            stream_id: rig_id,
            ts_ns: anchor_ns,
        }
        .encode(),
    );
    k
}

/// Writes rig records inside the batch transaction.
pub(super) fn write(
    rigs: &[RigWrite],
    tree: &TransactionalTree,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for w in rigs {
        let at = w.record.anchor_ns;
        tree.insert(&record_key(w.rig_id, at)[..], schema::encode(&w.record))?;
        tree.insert(
            embedding_key(&w.record.fusion_model, w.rig_id, at),
            schema::encode_embedding(&w.embedding),
        )?;
    }
    Ok(())
}

/// Which rig records a query wants.
#[derive(Debug, Clone, Default)]
pub struct RigFilter {
    /// Earliest anchor time, ns (inclusive).
    pub from_ns: Option<i64>,
    /// Latest anchor time, ns (inclusive).
    pub to_ns: Option<i64>,
    /// Roles that must be present.
    pub views: Vec<String>,
    /// `(set, class)` pairs that must be the fused embedding's top class.
    pub tags: Vec<(String, String)>,
    /// Minimum probability of each tag in `tags`.
    pub min_tag_score: Option<f32>,
}

impl RigFilter {
    fn accepts(&self, r: &RigRecord) -> bool {
        self.views
            .iter()
            .all(|role| r.present_roles().any(|p| p == role))
            && self.tags.iter().all(|(set, class)| {
                r.tags.get(set).is_some_and(|t| {
                    &t.top == class && self.min_tag_score.is_none_or(|m| t.score >= m)
                })
            })
    }
}

/// One rig search result.
#[derive(Debug, Clone, Serialize)]
pub struct RigHit {
    /// Cosine similarity of the fused embedding to the query.
    pub score: f32,
    /// Rig name.
    pub rig: String,
    /// The record.
    #[serde(flatten)]
    pub record: RigRecord,
}

impl Store {
    /// The id of a rig, created on first use.
    pub fn rig_id(&self, name: &str) -> Result<u32, StoreError> {
        let mut key = vec![ID_PREFIX];
        key.extend_from_slice(name.as_bytes());
        if let Some(v) = self.rigs.get(&key).map_err(|e| self.err(e))? {
            return Ok(u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4])));
        }
        let id = self.next_id(META_NEXT_RIG_ID)?;
        // A racing creator of the same name wins; its id is read back.
        match self
            .rigs
            .compare_and_swap(&key, None as Option<&[u8]>, Some(&id.to_be_bytes()[..]))
            .map_err(|e| self.err(e))?
        {
            Ok(()) => Ok(id),
            Err(cas) => Ok(cas.current.map_or(id, |v| {
                u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]))
            })),
        }
    }

    /// Every rig the store knows: (id, name), by name.
    pub fn rigs(&self) -> Result<Vec<(u32, String)>, StoreError> {
        self.rigs
            .scan_prefix([ID_PREFIX])
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                let id = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]));
                Ok((id, String::from_utf8_lossy(&k[1..]).into_owned()))
            })
            .collect()
    }

    /// The id of a rig the store knows; unknown: an error naming it.
    pub fn known_rig(&self, name: &str) -> Result<u32, StoreError> {
        let rigs = self.rigs()?;
        rigs.iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                let known: Vec<&str> = rigs.iter().map(|(_, n)| n.as_str()).collect();
                StoreError::UnknownRig {
                    name: name.to_string(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                }
            })
    }

    /// A rig's records with anchor times in the filter's range, in time
    /// order (other filters are not applied).
    pub fn rig_records(
        &self,
        rig_id: u32,
        from_ns: Option<i64>,
        to_ns: Option<i64>,
    ) -> Result<Vec<RigRecord>, StoreError> {
        let lo = record_key(rig_id, from_ns.unwrap_or(i64::MIN));
        let hi = record_key(rig_id, to_ns.unwrap_or(i64::MAX));
        self.rigs
            .range(lo..=hi)
            .map(|kv| {
                let (_, v) = kv.map_err(|e| self.err(e))?;
                schema::decode(RIGS_TREE, &v)
            })
            .collect()
    }

    /// The newest record's anchor time of a rig.
    pub fn last_rig_record_ns(&self, rig_id: u32) -> Result<Option<i64>, StoreError> {
        let lo = record_key(rig_id, i64::MIN);
        let hi = record_key(rig_id, i64::MAX);
        Ok(self
            .rigs
            .range(lo..=hi)
            .next_back()
            .transpose()
            .map_err(|e| self.err(e))?
            .and_then(|(k, _)| FrameKey::decode(&k[1..]))
            .map(|k| k.ts_ns))
    }

    /// The fused embedding of one record.
    pub fn rig_embedding(
        &self,
        fusion: &str,
        rig_id: u32,
        anchor_ns: i64,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        Ok(self
            .rigs
            .get(embedding_key(fusion, rig_id, anchor_ns))
            .map_err(|e| self.err(e))?
            .map(|v| schema::decode_embedding(&v)))
    }

    /// Rig records ranked by cosine similarity of their fused embedding
    /// (of model `fusion`) to `query`: an exact scan of the rig's time
    /// range (a rig has one record per anchor frame, a fraction of the
    /// frames).
    pub fn search_rigs(
        &self,
        rig: &str,
        fusion: &str,
        query: &[f32],
        filter: &RigFilter,
        top: usize,
    ) -> Result<Vec<RigHit>, StoreError> {
        let rig_id = self.known_rig(rig)?;
        let mut prefix = fusion_prefix(fusion);
        let lo = {
            let mut k = prefix.clone();
            k.extend_from_slice(
                &FrameKey {
                    stream_id: rig_id,
                    ts_ns: filter.from_ns.unwrap_or(i64::MIN),
                }
                .encode(),
            );
            k
        };
        prefix.extend_from_slice(
            &FrameKey {
                stream_id: rig_id,
                ts_ns: filter.to_ns.unwrap_or(i64::MAX),
            }
            .encode(),
        );
        let hi = prefix;
        let mut heap = std::collections::BinaryHeap::new();
        for kv in self.rigs.range(lo..=hi) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let e = schema::decode_embedding(&v);
            if e.len() != query.len() {
                return Err(StoreError::Dimension {
                    expected: e.len(),
                    actual: query.len(),
                });
            }
            let score: f32 = e.iter().zip(query).map(|(a, b)| a * b).sum();
            let Some(key) = FrameKey::decode(&k[1 + FUSION_KEY_LEN..]) else {
                continue;
            };
            // Filters read the record only for candidates that would rank.
            if heap.len() >= top
                && heap.peek().is_some_and(
                    |std::cmp::Reverse((OrdF32(s), _)): &std::cmp::Reverse<(OrdF32, i64)>| {
                        *s >= score
                    },
                )
            {
                continue;
            }
            let Some(record) = self
                .rigs
                .get(record_key(rig_id, key.ts_ns))
                .map_err(|e| self.err(e))?
            else {
                continue;
            };
            let record: RigRecord = schema::decode(RIGS_TREE, &record)?;
            if !filter.accepts(&record) {
                continue;
            }
            heap.push(std::cmp::Reverse((OrdF32(score), key.ts_ns)));
            if heap.len() > top {
                heap.pop();
            }
        }
        let mut ranked: Vec<(f32, i64)> = heap
            .into_iter()
            .map(|std::cmp::Reverse((OrdF32(s), t))| (s, t))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked
            .into_iter()
            .filter_map(|(score, ts)| {
                self.rigs
                    .get(record_key(rig_id, ts))
                    .map_err(|e| self.err(e))
                    .and_then(|v| {
                        v.map(|v| schema::decode::<RigRecord>(RIGS_TREE, &v))
                            .transpose()
                    })
                    .transpose()
                    .map(|r| {
                        r.map(|record| RigHit {
                            score,
                            rig: rig.to_string(),
                            record,
                        })
                    })
            })
            .collect()
    }
}

/// A stored frame as a rig view (what a restarted assembler is fed).
#[derive(Debug, Clone)]
pub struct StoredView {
    /// The frame.
    pub key: FrameKey,
    /// Its pts, ns.
    pub pts_ns: u64,
    /// Its image embedding.
    pub embedding: Vec<f32>,
}

impl Store {
    /// A camera's stored frames after `after_ns` (exclusive), oldest first,
    /// at most `limit`.
    pub fn views_after(
        &self,
        stream_id: u32,
        after_ns: i64,
        limit: usize,
    ) -> Result<Vec<StoredView>, StoreError> {
        let mut out = Vec::new();
        if after_ns == i64::MAX {
            return Ok(out);
        }
        for kv in self
            .frames
            .range(FrameKey::range(stream_id, after_ns + 1, i64::MAX))
            .take(limit)
        {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let Some(key) = FrameKey::decode(&k) else {
                continue;
            };
            let record: schema::FrameRecord = schema::decode(super::FRAMES_TREE, &v)?;
            if let Some(embedding) = self.embedding(&key)? {
                out.push(StoredView {
                    key,
                    pts_ns: record.pts_ns,
                    embedding,
                });
            }
        }
        Ok(out)
    }

    /// The newest stored frame's time of a camera.
    pub fn newest_frame_ns(&self, stream_id: u32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .frames
            .range(FrameKey::range(stream_id, i64::MIN, i64::MAX))
            .next_back()
            .transpose()
            .map_err(|e| self.err(e))?
            .and_then(|(k, _)| FrameKey::decode(&k))
            .map(|k| k.ts_ns))
    }
}
