//! What the uplink costs a vehicle: bytes per frame and per segment on the
//! MQTT link, and how much queueing them in the store transaction slows
//! the batch write. Frames are generated (unit embeddings of the model's
//! dimension, every label set of a labels file tagged, a segment every
//! `segment_every` frames with a typical caption).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::rng::SplitMix64;
use crate::store::{
    CaptionState, FrameKey, FrameRecord, NewSegment, OutboxSettings, SegmentRecord, SegmentWrites,
    SetTag, Store, StoreError, StoredFrame, TagRecord,
};
use crate::tagging::LabelSets;
use crate::uplink::message::{MessageKind, topic};

/// What to generate.
#[derive(Debug, Clone)]
pub struct UplinkBenchSettings {
    /// Frames written (each way).
    pub frames: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Frames per batch write.
    pub batch: usize,
    /// A segment closes every this many frames.
    pub segment_every: usize,
    /// Vehicle id (its length is in every topic and payload).
    pub vehicle: String,
    /// Where the temporary stores go.
    pub dir: PathBuf,
}

/// Mean sizes of one kind of message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageSize {
    /// Messages measured.
    pub messages: usize,
    /// JSON payload, bytes.
    pub payload: f64,
    /// The MQTT 3.1.1 PUBLISH (QoS 1) on the wire plus its PUBACK, bytes
    /// (before TLS and TCP/IP headers).
    pub on_the_wire: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct UplinkBenchReport {
    /// Embedding dimension.
    pub dim: usize,
    /// Label sets per frame.
    pub label_sets: usize,
    /// Frame messages.
    pub frame: MessageSize,
    /// Segment messages at close (caption pending).
    pub segment: MessageSize,
    /// Segment messages again once captioned.
    pub captioned_segment: MessageSize,
    /// Frames/s of the batch write without an outbox.
    pub write_fps_without: f64,
    /// Frames/s of the batch write with the outbox.
    pub write_fps_with: f64,
}

/// Bytes of a QoS 1 PUBLISH of `payload` on `topic`, plus its PUBACK.
pub fn publish_bytes(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining + 4
}

fn sizes(entries: &[(MessageKind, usize)], kind: MessageKind, vehicle: &str) -> MessageSize {
    let of_kind: Vec<usize> = entries
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, n)| *n)
        .collect();
    let n = of_kind.len().max(1) as f64;
    let t = topic(vehicle, kind);
    MessageSize {
        messages: of_kind.len(),
        payload: of_kind.iter().sum::<usize>() as f64 / n,
        on_the_wire: of_kind.iter().map(|p| publish_bytes(&t, *p)).sum::<usize>() as f64 / n,
    }
}

/// Runs the benchmark; `labels` name the tags' sets and classes.
pub fn bench_uplink(
    s: &UplinkBenchSettings,
    labels: &LabelSets,
) -> Result<UplinkBenchReport, StoreError> {
    let (frames, segments) = generate(s, labels);
    let dir = tempdir(&s.dir)?;
    let without = write_all(&dir.join("plain.sled"), s, &frames, &segments, None)?;
    let with_store = dir.join("outbox.sled");
    let with = write_all(&with_store, s, &frames, &segments, Some(&s.vehicle))?;
    // Read back what was queued, then caption every segment.
    let mut store = Store::open(&with_store, "bench", s.dim)?;
    store.attach_outbox(crate::store::Outbox::new(settings(&s.vehicle)))?;
    let mut entries: Vec<(MessageKind, usize)> = Vec::new();
    let mut seen = 0;
    loop {
        let batch = store.outbox_after(seen, 10_000)?;
        let Some(last) = batch.last() else { break };
        seen = last.seq;
        entries.extend(batch.iter().map(|e| (e.kind, e.payload.len())));
    }
    let cam = store.stream_id("front")?;
    let queued = seen;
    for seg in &segments {
        store.set_caption(
            &FrameKey {
                stream_id: cam,
                ts_ns: seg.record.start_ns,
            },
            seg.record.keyframe_ns,
            CaptionState::Done {
                text: "a car driving down a highway on a foggy day with trees on the side".into(),
                model: "blip".into(),
            },
        )?;
    }
    let captioned: Vec<(MessageKind, usize)> = store
        .outbox_after(queued, 100_000)?
        .iter()
        .map(|e| (e.kind, e.payload.len()))
        .collect();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(UplinkBenchReport {
        dim: s.dim,
        label_sets: labels.sets.len(),
        frame: sizes(&entries, MessageKind::Frame, &s.vehicle),
        segment: sizes(&entries, MessageKind::Segment, &s.vehicle),
        captioned_segment: sizes(&captioned, MessageKind::Segment, &s.vehicle),
        write_fps_without: without,
        write_fps_with: with,
    })
}

fn settings(vehicle: &str) -> OutboxSettings {
    OutboxSettings {
        vehicle: vehicle.to_string(),
        max_bytes: u64::MAX,
        frames: true,
    }
}

fn tempdir(base: &Path) -> Result<PathBuf, StoreError> {
    let dir = base.join(format!("roadrep-bench-uplink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::Sled {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    Ok(dir)
}

/// Generated frames (stream id filled in at write time) and segments.
fn generate(s: &UplinkBenchSettings, labels: &LabelSets) -> (Vec<StoredFrame>, Vec<NewSegment>) {
    let mut rng = SplitMix64::new(7);
    let t0 = 1_780_000_000_000_000_000i64;
    let step = 500_000_000i64;
    let mut frames = Vec::with_capacity(s.frames);
    for i in 0..s.frames {
        let mut e: Vec<f32> = (0..s.dim).map(|_| rng.next_f32() - 0.5).collect();
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        e.iter_mut().for_each(|x| *x /= norm);
        let sets = labels
            .sets
            .iter()
            .map(|set| {
                let scores: Vec<(String, f32)> = set
                    .classes
                    .iter()
                    .map(|c| (c.name.clone(), rng.next_f32()))
                    .collect();
                let (top, score) = scores
                    .iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .cloned()
                    .unwrap_or_default();
                SetTag {
                    set: set.name.clone(),
                    top,
                    score,
                    scores,
                }
            })
            .collect();
        frames.push(StoredFrame {
            key: FrameKey {
                stream_id: 0,
                ts_ns: t0 + i as i64 * step,
            },
            record: FrameRecord {
                pts_ns: (i as i64 * step) as u64,
                wall_ns: t0 + i as i64 * step,
                width: 1280,
                height: 720,
                source_label: "/var/lib/roadrep/clips/2026-12-01/front-0800.mp4".into(),
            },
            embedding: e,
            tags: TagRecord { sets },
            thumbnail: None,
        });
    }
    let segments = (0..s.frames / s.segment_every.max(1))
        .map(|k| {
            let start = t0 + (k * s.segment_every) as i64 * step;
            let tags = labels
                .sets
                .iter()
                .take(4)
                .map(|set| crate::segment::DominantTag {
                    set: set.name.clone(),
                    class: set.classes[0].name.clone(),
                    share: 0.8,
                })
                .collect();
            NewSegment {
                stream_id: 0,
                record: SegmentRecord {
                    start_ns: start,
                    end_ns: start + s.segment_every as i64 * step,
                    start_pts_ns: 0,
                    source_label: "/var/lib/roadrep/clips/2026-12-01/front-0800.mp4".into(),
                    source_id: "file".into(),
                    frames: s.segment_every as u32,
                    keyframe_ns: start + step,
                    keyframe_pts_ns: step as u64,
                    tags,
                    caption: CaptionState::Pending,
                },
                caption_image: None,
                keyframe_jpeg: None,
            }
        })
        .collect();
    (frames, segments)
}

/// Writes everything in batches; frames/s.
fn write_all(
    path: &Path,
    s: &UplinkBenchSettings,
    frames: &[StoredFrame],
    segments: &[NewSegment],
    vehicle: Option<&str>,
) -> Result<f64, StoreError> {
    let mut store = Store::open(path, "bench", s.dim)?;
    if let Some(v) = vehicle {
        store.attach_outbox(crate::store::Outbox::new(settings(v)))?;
    }
    let cam = store.stream_id("front")?;
    let start = Instant::now();
    let mut next_segment = 0;
    for chunk in frames.chunks(s.batch.max(1)) {
        let batch: Vec<StoredFrame> = chunk
            .iter()
            .map(|f| StoredFrame {
                key: FrameKey {
                    stream_id: cam,
                    ..f.key
                },
                ..f.clone()
            })
            .collect();
        let last = batch.last().map_or(i64::MIN, |f| f.key.ts_ns);
        let mut writes = SegmentWrites::default();
        while next_segment < segments.len() && segments[next_segment].record.end_ns <= last {
            writes.closed.push(NewSegment {
                stream_id: cam,
                ..segments[next_segment].clone()
            });
            next_segment += 1;
        }
        store.write(&batch, &[], &writes, &[])?;
    }
    store.flush()?;
    Ok(frames.len() as f64 / start.elapsed().as_secs_f64())
}

/// The report as Markdown.
pub fn markdown(r: &UplinkBenchReport) -> String {
    let row = |name: &str, m: &MessageSize| {
        format!(
            "| {name} | {} | {:.0} | {:.0} |\n",
            m.messages, m.payload, m.on_the_wire
        )
    };
    let mut out = format!(
        "Embeddings {}-d (f16, base64), {} label sets per frame.\n\n| message | count | JSON payload (bytes) | MQTT PUBLISH + PUBACK (bytes) |\n|---|---:|---:|---:|\n",
        r.dim, r.label_sets
    );
    out.push_str(&row("frame", &r.frame));
    out.push_str(&row("segment (closed, caption pending)", &r.segment));
    out.push_str(&row("segment (captioned)", &r.captioned_segment));
    out.push_str(&format!(
        "\nBatch write: {:.0} frames/s without the outbox, {:.0} frames/s with it ({:.2}x).\n",
        r.write_fps_without,
        r.write_fps_with,
        r.write_fps_with / r.write_fps_without
    ));
    out
}
