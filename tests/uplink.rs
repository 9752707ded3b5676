//! The vehicle side of the fleet uplink: the outbox in the store (order,
//! bound, restart), and replays that publish to a real broker (mosquitto)
//! or keep everything while it is down.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::fleet::vehicle_config;
use roadrep::store::{
    CaptionState, FrameKey, FrameRecord, NewSegment, OutboxSettings, SegmentRecord, SegmentWrites,
    SetTag, Store, StoredFrame, TagRecord,
};
use roadrep::uplink::message::{Message, MessageKind, decode_embedding};

fn frame(stream_id: u32, ts_ns: i64, x: f32) -> StoredFrame {
    StoredFrame {
        key: FrameKey { stream_id, ts_ns },
        record: FrameRecord {
            pts_ns: ts_ns as u64,
            wall_ns: ts_ns,
            width: 32,
            height: 32,
            source_label: "a.mp4".into(),
        },
        embedding: vec![x, 0.0, 0.0, (1.0 - x * x).max(0.0).sqrt()],
        tags: TagRecord {
            sets: vec![SetTag {
                set: "weather".into(),
                top: "foggy".into(),
                score: 0.75,
                scores: vec![("foggy".into(), 0.75), ("clear".into(), 0.25)],
            }],
        },
        thumbnail: None,
    }
}

fn segment(stream_id: u32, start_ns: i64) -> NewSegment {
    NewSegment {
        stream_id,
        record: SegmentRecord {
            start_ns,
            end_ns: start_ns + 5,
            start_pts_ns: 0,
            source_label: "a.mp4".into(),
            source_id: "file:a".into(),
            frames: 5,
            keyframe_ns: start_ns + 2,
            keyframe_pts_ns: 2,
            tags: vec![],
            caption: CaptionState::None,
        },
        caption_image: None,
        keyframe_jpeg: None,
    }
}

fn open_with_outbox(path: &Path, max_bytes: u64) -> Store {
    let mut store = Store::open(path, "fp-test", 4).unwrap();
    let outbox = roadrep::store::Outbox::new(OutboxSettings {
        vehicle: "v1".into(),
        max_bytes,
        frames: true,
    });
    store.attach_outbox(outbox).unwrap();
    store
}

#[test]
fn outbox_is_written_with_the_batch_in_sequence_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sled");
    let store = open_with_outbox(&path, 1 << 20);
    let cam = store.stream_id("front").unwrap();
    let frames: Vec<_> = (0..5)
        .map(|i| frame(cam, 1_000 + i, 0.1 * i as f32))
        .collect();
    let segments = SegmentWrites {
        closed: vec![segment(cam, 1_000)],
        ..Default::default()
    };
    store.write(&frames, &[], &segments, &[]).unwrap();
    let entries = store.outbox_after(0, 100).unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(&kinds[..5], &[MessageKind::Frame; 5]);
    assert_eq!(kinds[5], MessageKind::Segment);
    // Payloads decode as the fleet reads them, numbered as queued.
    let Message::Frame(f) = Message::decode("roadrep/v1/frame", &entries[2].payload).unwrap()
    else {
        panic!("a frame message")
    };
    assert_eq!((f.seq, f.camera.as_str(), f.time_ns), (3, "front", 1_002));
    assert_eq!(f.model, "fp-test");
    assert_eq!(f.tags["weather"].class, "foggy");
    let e = decode_embedding(&f.embedding).unwrap();
    assert!((e[0].to_f32() - 0.2).abs() < 1e-3 && e.len() == 4);
    let Message::Segment(s) = Message::decode("roadrep/v1/segment", &entries[5].payload).unwrap()
    else {
        panic!("a segment message")
    };
    assert_eq!(
        (s.seq, s.start_ns, s.caption_state.as_str()),
        (6, 1_000, "none")
    );

    // Acknowledged messages leave; the rest survive a reopen and the
    // numbering goes on after the highest number ever given.
    store.outbox_acked(&entries[..2]).unwrap();
    drop(store);
    let store = open_with_outbox(&path, 1 << 20);
    assert_eq!(store.outbox().unwrap().depth(), 4);
    let left: Vec<u64> = store
        .outbox_after(0, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![3, 4, 5, 6]);
    assert_eq!(store.outbox_after(4, 1).unwrap()[0].seq, 5);
    store
        .write(
            &[frame(cam, 2_000, 0.5)],
            &[],
            &SegmentWrites::default(),
            &[],
        )
        .unwrap();
    let stats = store.outbox_stats().unwrap();
    assert_eq!((stats.depth, stats.frames, stats.next_seq), (5, 4, 8));
    assert!(stats.oldest_ms.is_some());
}

#[test]
fn a_reader_following_the_outbox_by_sequence_number_misses_nothing_written_meanwhile() {
    // Each write queues a frame and a segment in one transaction; the
    // publisher reads after its cursor while writes go on. A frame
    // committed between the scans of the two classes must not be passed
    // over (a vehicle's replay once left one message behind this way).
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_outbox(&dir.path().join("s.sled"), 1 << 30);
    let cam = store.stream_id("front").unwrap();
    const WRITES: i64 = 3_000;
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..WRITES {
                let segments = SegmentWrites {
                    closed: vec![segment(cam, 10 * i)],
                    ..Default::default()
                };
                store
                    .write(&[frame(cam, 10 * i, 0.1)], &[], &segments, &[])
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut follow = |seen: &mut Vec<u64>| {
        for e in store.outbox_after(cursor, 64).unwrap() {
            cursor = e.seq;
            seen.push(e.seq);
        }
    };
    while !writer.is_finished() {
        follow(&mut seen);
    }
    writer.join().unwrap();
    follow(&mut seen);
    follow(&mut seen);
    let expected: Vec<u64> = (1..=2 * WRITES as u64).collect();
    let missed: Vec<u64> = expected
        .iter()
        .filter(|s| seen.binary_search(s).is_err())
        .copied()
        .collect();
    assert!(
        missed.is_empty(),
        "passed over {} messages, first {:?}",
        missed.len(),
        &missed[..missed.len().min(10)]
    );
    assert_eq!(seen, expected);
}

#[test]
fn a_full_outbox_drops_frame_messages_oldest_first_and_keeps_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Sizes of one frame and one segment entry.
    let store = open_with_outbox(&dir.path().join("measure.sled"), 1 << 20);
    let cam = store.stream_id("front").unwrap();
    store
        .write(&[frame(cam, 1, 0.1)], &[], &SegmentWrites::default(), &[])
        .unwrap();
    let frame_bytes = store.outbox_stats().unwrap().bytes;
    let segments = SegmentWrites {
        closed: vec![segment(cam, 1)],
        ..Default::default()
    };
    store.write(&[], &[], &segments, &[]).unwrap();
    let segment_bytes = store.outbox_stats().unwrap().bytes - frame_bytes;
    drop(store);

    let bound = 3 * frame_bytes + frame_bytes / 2;
    let store = open_with_outbox(&dir.path().join("s.sled"), bound);
    let cam = store.stream_id("front").unwrap();
    for i in 0..10 {
        store
            .write(&[frame(cam, i, 0.1)], &[], &SegmentWrites::default(), &[])
            .unwrap();
    }
    let frames = |store: &Store| -> Vec<u64> {
        let entries = store.outbox_after(0, 100).unwrap();
        entries.iter().filter(|e| e.frame).map(|e| e.seq).collect()
    };
    assert_eq!(frames(&store), vec![8, 9, 10], "the newest three fit");
    assert_eq!(store.outbox_stats().unwrap().dropped, 7);
    // Segments are kept however full: frames make room, oldest first.
    let segments = SegmentWrites {
        closed: vec![segment(cam, 0), segment(cam, 5)],
        ..Default::default()
    };
    store.write(&[], &[], &segments, &[]).unwrap();
    let room = bound.saturating_sub(2 * segment_bytes) / frame_bytes;
    let left = frames(&store);
    assert_eq!(left.len() as u64, room.min(3), "{left:?}");
    assert!(left.iter().all(|s| *s > 10 - left.len() as u64));
    let kept = store.outbox_after(0, 100).unwrap();
    assert_eq!(kept.iter().filter(|e| !e.frame).count(), 2);
    assert_eq!(
        store.outbox_stats().unwrap().dropped,
        10 - left.len() as u64
    );
}

/// (topic, payload) of every message received, shared with the thread.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A QoS 1 subscriber collecting every message under `roadrep/#` until
/// dropped.
struct Collector {
    messages: Received,
}

impl Collector {
    fn start(port: u16) -> Self {
        let mut options = rumqttc::MqttOptions::new("collector", "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        client
            .subscribe("roadrep/#", rumqttc::QoS::AtLeastOnce)
            .unwrap();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        sink.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        // Subscribed before anything is published.
        std::thread::sleep(Duration::from_millis(500));
        Self { messages }
    }

    fn decoded(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(t, p)| Message::decode(t, p).unwrap())
            .collect()
    }
}

fn replay(config: &Path, clip: &Path, cache: &Path) -> std::process::Output {
    let o = common::roadrep(
        &[
            "-c",
            config.to_str().unwrap(),
            "replay",
            clip.to_str().unwrap(),
            "--camera",
            "front",
            "--start",
            "2026-11-30T08:00:00Z",
        ],
        cache,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn stored_counts(config: &Path) -> (usize, usize) {
    let c = roadrep::config::RoadrepConfig::from_file(config).unwrap();
    let m = roadrep::models::ModelManifest::read(&common::tiny_model_dir()).unwrap();
    let s = Store::open(&c.store.path, &m.fingerprint, m.clip.embed_dim).unwrap();
    let frames = s
        .stats()
        .unwrap()
        .frames
        .iter()
        .map(|(_, n)| *n as usize)
        .sum();
    let segments = s.segments(&Default::default()).unwrap().len();
    (frames, segments)
}

#[test]
fn a_replay_publishes_every_frame_and_segment_once_the_broker_answers() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("scenes.mp4");
    common::scene_clip(&clip, &["smpte", "ball", "snow"], 4);
    let mut broker = common::fleet::Broker::start();
    let collector = Collector::start(broker.port);
    let config = vehicle_config(dir.path(), "v1", broker.port, "", "drain_secs = 20\n");
    let cache = dir.path().join("cache");

    // The broker is down for the first replay: tagging goes on, one line
    // names the broker, everything waits in the outbox.
    broker.stop();
    let o = replay(&config, &clip, &cache);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let unreachable: Vec<_> = stderr
        .lines()
        .filter(|l| {
            l.contains(&format!("127.0.0.1:{}", broker.port)) && l.contains("cannot be reached")
        })
        .collect();
    assert_eq!(unreachable.len(), 1, "{stderr}");
    assert!(stderr.contains("wait in the outbox"), "{stderr}");
    let (frames, segments) = stored_counts(&config);
    assert!(
        frames >= 20 && segments >= 2,
        "{frames} frames, {segments} segments"
    );
    let status = common::roadrep(
        &["-c", config.to_str().unwrap(), "uplink", "status", "--json"],
        &cache,
    );
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let depth = report["outbox"]["depth"].as_u64().unwrap();
    assert!(depth as usize >= frames + segments, "{report}");

    // Back up: `uplink send` empties the outbox into the broker.
    broker.restart();
    let o = common::roadrep(
        &[
            "-c",
            config.to_str().unwrap(),
            "uplink",
            "send",
            "--timeout-secs",
            "30",
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_secs(1));
    let messages = collector.decoded();
    let mut frame_keys = BTreeMap::new();
    let mut segment_keys = BTreeMap::new();
    for m in &messages {
        match m {
            Message::Frame(f) => *frame_keys.entry((f.camera.clone(), f.time_ns)).or_insert(0) += 1,
            Message::Segment(s) => {
                segment_keys.insert((s.camera.clone(), s.start_ns), s.caption_state.clone());
            }
            _ => {}
        }
    }
    assert_eq!(frame_keys.len(), frames, "every stored frame arrived");
    assert_eq!(segment_keys.len(), segments, "every segment arrived");
    assert!(
        segment_keys.values().all(|s| s == "done"),
        "captions followed their segments: {segment_keys:?}"
    );
    let status = common::roadrep(
        &["-c", config.to_str().unwrap(), "uplink", "status", "--json"],
        &cache,
    );
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["outbox"]["depth"], 0, "{report}");
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, Message::Status(s) if !s.online)),
        "a clean stop says offline"
    );
}

#[test]
fn tls_with_a_client_certificate_delivers_and_without_one_keeps_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("short.mp4");
    common::scene_clip(&clip, &["smpte"], 3);
    let (broker, tls) = common::fleet::Broker::start_tls();
    let cache = dir.path().join("cache");
    let status = |config: &Path| -> serde_json::Value {
        let o = common::roadrep(
            &["-c", config.to_str().unwrap(), "uplink", "status", "--json"],
            &cache,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // The broker's certificate is for 127.0.0.1, signed by the test CA.
    let with_cert = vehicle_config(
        dir.path(),
        "tls-ok",
        broker.port,
        "",
        &format!(
            "drain_secs = 20\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            tls.ca.display(),
            tls.client_cert.display(),
            tls.client_key.display()
        ),
    );
    let o = replay(&with_cert, &clip, &cache);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("outbox empty"), "{stderr}");
    let report = status(&with_cert);
    assert_eq!(report["tls"], true);
    assert_eq!(report["outbox"]["depth"], 0, "{report}");

    // Nothing will get through: do not wait long for it.
    let without = vehicle_config(
        dir.path(),
        "tls-nocert",
        broker.port,
        "",
        &format!("drain_secs = 3\nca = \"{}\"\n", tls.ca.display()),
    );
    let o = replay(&without, &clip, &cache);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("cannot be reached") && stderr.contains("wait in the outbox"),
        "{stderr}"
    );
    let report = status(&without);
    assert!(report["outbox"]["depth"].as_u64().unwrap() > 0, "{report}");

    // A CA file that does not exist is one line naming the field and path.
    let bad = vehicle_config(
        dir.path(),
        "tls-bad",
        broker.port,
        "",
        "ca = \"/nonexistent/ca.pem\"\n",
    );
    let o = common::roadrep(
        &[
            "-c",
            bad.to_str().unwrap(),
            "replay",
            clip.to_str().unwrap(),
        ],
        &cache,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("uplink.ca '/nonexistent/ca.pem'"),
        "{stderr}"
    );
}
