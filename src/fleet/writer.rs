//! Decoded messages -> PostgreSQL, one transaction per batch.
//!
//! Rows go in as one multi-row `INSERT ... SELECT FROM UNNEST(arrays)` per
//! table, with `ON CONFLICT DO NOTHING` on the record's key, so a message
//! delivered twice (the broker redelivers what was not acknowledged) is
//! stored once. Segments are upserted instead: the captioned version of a
//! segment replaces the pending one, never the other way round. Rows are
//! sorted by key, so concurrent writers lock in the same order (no
//! deadlocks). Partitions and per-model indexes are created before the
//! rows that need them (see [`super::schema`]).
//!
//! A batch that the database refuses for its data (not for a lost
//! connection) is written again message by message, so one bad message is
//! set aside ([`Written::rejected`]) instead of blocking the stream.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use pgvector::HalfVector;
use serde_json::Value;
use tokio_postgres::Client;

use super::FleetError;
use super::config::{IndexConfig, PartitionSpan};
use super::db::Db;
use super::schema;
use crate::uplink::message::{
    FrameMessage, Message, RigMessage, SegmentMessage, StatusMessage, TagValue, decode_embedding,
};

/// What one batch wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    /// Frames inserted.
    pub frames: u64,
    /// Segments inserted or replaced by a captioned version.
    pub segments: u64,
    /// Rig records inserted.
    pub rigs: u64,
    /// Statuses applied.
    pub statuses: u64,
    /// Records already stored (redeliveries, duplicates), skipped.
    pub duplicates: u64,
    /// Messages refused, with why (bad embedding, dimension, data).
    pub rejected: Vec<String>,
}

impl Written {
    fn add(&mut self, o: Written) {
        self.frames += o.frames;
        self.segments += o.segments;
        self.rigs += o.rigs;
        self.statuses += o.statuses;
        self.duplicates += o.duplicates;
        self.rejected.extend(o.rejected);
    }
}

/// Writes batches to one database; reconnects after a lost connection.
pub struct Writer {
    db: Db,
    client: Option<Client>,
    index: IndexConfig,
    span: PartitionSpan,
    /// Partitions known to exist: (table, suffix).
    partitions: HashSet<(&'static str, String)>,
    /// Model fingerprint -> dimension on record.
    models: HashMap<String, usize>,
}

/// A frame or rig row's embedding, decoded and checked.
struct Embedded {
    vector: HalfVector,
    model: String,
}

impl Writer {
    /// A writer for `db`; connects on first use.
    pub fn new(db: Db, index: IndexConfig) -> Self {
        let span = index.partition;
        Self {
            db,
            client: None,
            index,
            span,
            partitions: HashSet::new(),
            models: HashMap::new(),
        }
    }

    /// The database written to.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Connects (if not connected) and checks the schema.
    pub async fn connect(&mut self) -> Result<(), FleetError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        let client = self.db.connect().await?;
        self.span = schema::check(&client).await.map_err(|e| self.db.name(e))?;
        self.client = Some(client);
        Ok(())
    }

    /// Writes `messages` in one transaction (falling back to one per
    /// message when the batch is refused for its data: SQLSTATE classes 22
    /// and 23). An error means nothing of it may be acknowledged: the
    /// caller retries later (a lost connection, but also a missing schema
    /// or a permission: an operator must act, and nothing is dropped).
    pub async fn write(&mut self, messages: &[Message]) -> Result<Written, FleetError> {
        let e = match self.write_all(messages).await {
            Ok(w) => return Ok(w),
            Err(e) if e.is_data() => e,
            Err(e) => return Err(self.fail(e)),
        };
        if messages.len() == 1 {
            return Ok(Written {
                rejected: vec![format!(
                    "{} {}: {e}",
                    messages[0].vehicle(),
                    describe(&messages[0])
                )],
                ..Default::default()
            });
        }
        tracing::warn!(database = %self.db.target(), error = %e,
            "Batch refused for its data; writing its messages one by one.");
        let mut total = Written::default();
        for m in messages {
            match self.write_all(std::slice::from_ref(m)).await {
                Ok(w) => total.add(w),
                Err(e) if e.is_data() => {
                    total
                        .rejected
                        .push(format!("{} {}: {e}", m.vehicle(), describe(m)))
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(total)
    }

    fn fail(&mut self, e: FleetError) -> FleetError {
        if e.is_connection() {
            self.client = None;
        }
        self.db.name(e)
    }

    async fn write_all(&mut self, messages: &[Message]) -> Result<Written, FleetError> {
        self.connect().await?;
        let mut out = Written::default();
        let mut frames: BTreeMap<(&str, &str, i64), (&FrameMessage, Embedded)> = BTreeMap::new();
        let mut rigs: BTreeMap<(&str, &str, i64), (&RigMessage, Embedded)> = BTreeMap::new();
        let mut segments: BTreeMap<(&str, &str, i64), &SegmentMessage> = BTreeMap::new();
        let mut statuses: Vec<&StatusMessage> = Vec::new();
        for m in messages {
            match m {
                Message::Frame(f) => match self.embedded(&f.model, &f.embedding).await? {
                    Ok(e) => {
                        if frames
                            .insert((&f.vehicle, &f.camera, f.time_ns), (f, e))
                            .is_some()
                        {
                            out.duplicates += 1;
                        }
                    }
                    Err(why) => out
                        .rejected
                        .push(format!("{} {}: {why}", f.vehicle, describe(m))),
                },
                Message::Rig(r) => match self.embedded(&r.model, &r.embedding).await? {
                    Ok(e) => {
                        if rigs
                            .insert((&r.vehicle, &r.rig, r.anchor_ns), (r, e))
                            .is_some()
                        {
                            out.duplicates += 1;
                        }
                    }
                    Err(why) => out
                        .rejected
                        .push(format!("{} {}: {why}", r.vehicle, describe(m))),
                },
                Message::Segment(s) => {
                    let key = (s.vehicle.as_str(), s.camera.as_str(), s.start_ns);
                    match segments.get(&key) {
                        Some(old) if segment_rank(old) >= segment_rank(s) => out.duplicates += 1,
                        Some(_) => {
                            out.duplicates += 1;
                            segments.insert(key, s);
                        }
                        None => {
                            segments.insert(key, s);
                        }
                    }
                }
                Message::Status(s) => statuses.push(s),
            }
        }
        let mut parts: Vec<(&'static str, i64)> = Vec::new();
        parts.extend(frames.keys().map(|k| ("frames", k.2)));
        parts.extend(segments.keys().map(|k| ("segments", k.2)));
        parts.extend(rigs.keys().map(|k| ("rigs", k.2)));
        self.ensure_partitions(&parts).await?;

        let client = self.client.as_mut().expect("connected above");
        let tx = client.transaction().await?;
        let mut vehicles: Vec<&str> = messages.iter().map(Message::vehicle).collect();
        vehicles.sort_unstable();
        vehicles.dedup();
        tx.execute(
            "INSERT INTO vehicles (id) SELECT unnest($1::text[]) \
             ON CONFLICT (id) DO UPDATE SET last_seen = now()",
            &[&vehicles],
        )
        .await?;
        if !frames.is_empty() {
            let n = insert_frames(&tx, frames.values()).await?;
            out.duplicates += frames.len() as u64 - n;
            out.frames += n;
        }
        if !segments.is_empty() {
            let n = upsert_segments(&tx, segments.values().copied()).await?;
            out.duplicates += segments.len() as u64 - n;
            out.segments += n;
        }
        if !rigs.is_empty() {
            let n = insert_rigs(&tx, rigs.values()).await?;
            out.duplicates += rigs.len() as u64 - n;
            out.rigs += n;
        }
        for s in statuses {
            out.statuses += apply_status(&tx, s).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Decodes an embedding and makes sure its model is known (index
    /// made). The inner error refuses this message only.
    async fn embedded(
        &mut self,
        model: &str,
        b64: &str,
    ) -> Result<Result<Embedded, String>, FleetError> {
        let values = match decode_embedding(b64) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if !schema::valid_model(model) {
            return Ok(Err(format!(
                "model fingerprint '{model}' is not a safe name"
            )));
        }
        let dim = match self.models.get(model) {
            Some(d) => *d,
            None => {
                let client = self.client.as_mut().expect("connected");
                let d = schema::ensure_model(client, model, values.len(), &self.index).await?;
                self.models.insert(model.to_string(), d);
                d
            }
        };
        if dim != values.len() {
            return Ok(Err(format!(
                "embedding of {} values, but model {model} has {dim}",
                values.len()
            )));
        }
        Ok(Ok(Embedded {
            vector: HalfVector::from(values),
            model: model.to_string(),
        }))
    }

    async fn ensure_partitions(
        &mut self,
        wanted: &[(&'static str, i64)],
    ) -> Result<(), FleetError> {
        let mut by_table: BTreeMap<&'static str, Vec<_>> = BTreeMap::new();
        for (table, ns) in wanted {
            let (suffix, from, to) = schema::partition_bounds(self.span, *ns);
            if self.partitions.contains(&(*table, suffix.clone())) {
                continue;
            }
            let list = by_table.entry(table).or_default();
            if !list.iter().any(|(s, _, _)| *s == suffix) {
                list.push((suffix, from, to));
            }
        }
        for (table, parts) in by_table {
            let client = self.client.as_mut().expect("connected");
            schema::ensure_partitions(client, table, &parts).await?;
            for (suffix, _, _) in parts {
                self.partitions.insert((table, suffix));
            }
        }
        Ok(())
    }
}

/// The partition column's value for a ns time: µs, rounded down (the key
/// keeps the ns).
pub fn timestamp(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(ns.div_euclid(1000)).expect("any i64 ns is in chrono's range")
}

/// Top class per set, and its score per set, as the two jsonb columns.
pub fn tag_columns(tags: &BTreeMap<String, TagValue>) -> (Value, Value) {
    let classes = tags
        .iter()
        .map(|(s, t)| (s.clone(), Value::from(t.class.clone())))
        .collect();
    let scores = tags
        .iter()
        .map(|(s, t)| (s.clone(), Value::from(t.score as f64)))
        .collect();
    (Value::Object(classes), Value::Object(scores))
}

/// Which version of a segment wins: a caption outcome over `pending`,
/// then the later one.
fn segment_rank(s: &SegmentMessage) -> (bool, u64) {
    (s.caption_state != "pending", s.seq)
}

fn describe(m: &Message) -> String {
    match m {
        Message::Frame(f) => format!("frame {} {}", f.camera, f.time_ns),
        Message::Segment(s) => format!("segment {} {}", s.camera, s.start_ns),
        Message::Rig(r) => format!("rig {} {}", r.rig, r.anchor_ns),
        Message::Status(_) => "status".into(),
    }
}

async fn insert_frames<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    rows: impl Iterator<Item = &'a (&'a FrameMessage, Embedded)>,
) -> Result<u64, FleetError> {
    let (mut vehicle, mut camera, mut time_ns, mut time, mut pts) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut source, mut model, mut tags, mut scores, mut emb, mut seq) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (f, e) in rows {
        vehicle.push(f.vehicle.as_str());
        camera.push(f.camera.as_str());
        time_ns.push(f.time_ns);
        time.push(timestamp(f.time_ns));
        pts.push(f.pts_ns.min(i64::MAX as u64) as i64);
        source.push(f.source.as_str());
        model.push(e.model.as_str());
        let (t, s) = tag_columns(&f.tags);
        tags.push(t);
        scores.push(s);
        emb.push(e.vector.clone());
        seq.push(f.seq.min(i64::MAX as u64) as i64);
    }
    Ok(tx
        .execute(
            "INSERT INTO frames (vehicle, camera, time_ns, time, pts_ns, source, model, tags, scores, embedding, seq) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::timestamptz[], $5::int8[], \
                                  $6::text[], $7::text[], $8::jsonb[], $9::jsonb[], $10::halfvec[], $11::int8[]) \
             ON CONFLICT DO NOTHING",
            &[&vehicle, &camera, &time_ns, &time, &pts, &source, &model, &tags, &scores, &emb, &seq],
        )
        .await?)
}

async fn upsert_segments<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    rows: impl Iterator<Item = &'a SegmentMessage>,
) -> Result<u64, FleetError> {
    let (mut vehicle, mut camera, mut start_ns, mut start, mut end_ns) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut frames, mut key_ns, mut source, mut tags, mut caption) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut state, mut summary, mut seq) = (vec![], vec![], vec![]);
    for s in rows {
        vehicle.push(s.vehicle.as_str());
        camera.push(s.camera.as_str());
        start_ns.push(s.start_ns);
        start.push(timestamp(s.start_ns));
        end_ns.push(s.end_ns);
        frames.push(s.frames.min(i32::MAX as u32) as i32);
        key_ns.push(s.keyframe_ns);
        source.push(s.source.as_str());
        tags.push(serde_json::to_value(&s.tags).expect("plain data"));
        caption.push(s.caption.as_deref());
        state.push(s.caption_state.as_str());
        summary.push(s.summary.as_str());
        seq.push(s.seq.min(i64::MAX as u64) as i64);
    }
    Ok(tx
        .execute(
            "INSERT INTO segments (vehicle, camera, start_ns, start_time, end_ns, frames, keyframe_ns, \
                                   source, tags, caption, caption_state, summary, seq) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::timestamptz[], $5::int8[], \
                                  $6::int4[], $7::int8[], $8::text[], $9::jsonb[], $10::text[], \
                                  $11::text[], $12::text[], $13::int8[]) \
             ON CONFLICT (vehicle, camera, start_ns, start_time) DO UPDATE SET \
                end_ns = EXCLUDED.end_ns, frames = EXCLUDED.frames, keyframe_ns = EXCLUDED.keyframe_ns, \
                source = EXCLUDED.source, tags = EXCLUDED.tags, caption = EXCLUDED.caption, \
                caption_state = EXCLUDED.caption_state, summary = EXCLUDED.summary, seq = EXCLUDED.seq \
             WHERE EXCLUDED.caption_state <> 'pending' \
               AND (segments.caption_state = 'pending' OR EXCLUDED.seq > segments.seq)",
            &[&vehicle, &camera, &start_ns, &start, &end_ns, &frames, &key_ns, &source, &tags,
              &caption, &state, &summary, &seq],
        )
        .await?)
}

async fn insert_rigs<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    rows: impl Iterator<Item = &'a (&'a RigMessage, Embedded)>,
) -> Result<u64, FleetError> {
    let (mut vehicle, mut rig, mut anchor_ns, mut anchor, mut role) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut present, mut absent, mut model, mut tags, mut scores, mut emb, mut seq) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (r, e) in rows {
        vehicle.push(r.vehicle.as_str());
        rig.push(r.rig.as_str());
        anchor_ns.push(r.anchor_ns);
        anchor.push(timestamp(r.anchor_ns));
        role.push(r.anchor_role.as_str());
        // Arrays of arrays do not unnest row by row: roles travel as jsonb.
        present.push(Value::from(r.present.clone()));
        absent.push(Value::from(r.absent.clone()));
        model.push(e.model.as_str());
        let (t, s) = tag_columns(&r.tags);
        tags.push(t);
        scores.push(s);
        emb.push(e.vector.clone());
        seq.push(r.seq.min(i64::MAX as u64) as i64);
    }
    Ok(tx
        .execute(
            "INSERT INTO rigs (vehicle, rig, anchor_ns, anchor_time, anchor_role, present, absent, \
                               model, tags, scores, embedding, seq) \
             SELECT v, r, a, t, ro, ARRAY(SELECT jsonb_array_elements_text(p)), \
                    ARRAY(SELECT jsonb_array_elements_text(ab)), m, tg, sc, e, s \
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::timestamptz[], $5::text[], \
                         $6::jsonb[], $7::jsonb[], $8::text[], $9::jsonb[], $10::jsonb[], \
                         $11::halfvec[], $12::int8[]) AS u(v, r, a, t, ro, p, ab, m, tg, sc, e, s) \
             ON CONFLICT DO NOTHING",
            &[
                &vehicle, &rig, &anchor_ns, &anchor, &role, &present, &absent, &model, &tags,
                &scores, &emb, &seq,
            ],
        )
        .await?)
}

/// Applies a status unless a newer one is on record (a last will, time 0,
/// always marks the vehicle offline and keeps the last status).
async fn apply_status(
    tx: &tokio_postgres::Transaction<'_>,
    s: &StatusMessage,
) -> Result<u64, FleetError> {
    let status = serde_json::to_value(s).expect("plain data");
    Ok(tx
        .execute(
            "UPDATE vehicles SET online = $2, last_seen = now(), \
                status = CASE WHEN $4::int8 = 0 THEN status ELSE $3::jsonb END, \
                status_time_ns = CASE WHEN $4::int8 = 0 THEN status_time_ns ELSE $4::int8 END \
             WHERE id = $1 AND ($4::int8 = 0 OR status_time_ns IS NULL OR status_time_ns <= $4::int8)",
            &[&s.vehicle, &s.online, &status, &s.time_ns],
        )
        .await?)
}
