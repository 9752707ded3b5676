//! Helpers of tests/fleet.rs: hand-made messages with known similarity to
//! the query, a QoS 1 publisher, configs, processes, SQL counts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use roadrep::models::ImagePrecision;
use roadrep::uplink::message::{
    FrameMessage, MessageKind, PAYLOAD_VERSION, SegmentMessage, SegmentTag, TagValue,
    encode_embedding, topic,
};

pub const QUERY: &str = "foggy highway at night";
/// 2026-12-01T10:00:00Z.
pub const T0: i64 = 1_796_119_200_000_000_000;
pub const SEC: i64 = 1_000_000_000;

pub fn fingerprint() -> String {
    crate::common::load_tiny(ImagePrecision::Fp32)
        .fingerprint()
        .to_string()
}

/// The query's text embedding, as `fleet search` computes it.
pub fn query_embedding() -> Vec<f32> {
    let model = crate::common::load_tiny(ImagePrecision::Fp32);
    let e = model.get_text_features(&[QUERY]).unwrap();
    let v: Vec<f32> = e.row(0).to_vec();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// A unit vector whose cosine with `q` is `sim` (the rest orthogonal).
pub fn with_similarity(q: &[f32], sim: f32, seed: usize) -> Vec<f32> {
    let mut r: Vec<f32> = (0..q.len())
        .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let dot: f32 = r.iter().zip(q).map(|(a, b)| a * b).sum();
    r.iter_mut().zip(q).for_each(|(a, b)| *a -= dot * b);
    let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
    let o = (1.0 - sim * sim).max(0.0).sqrt();
    q.iter().zip(&r).map(|(a, b)| sim * a + o * b / n).collect()
}

pub struct Frame {
    pub vehicle: &'static str,
    pub camera: &'static str,
    pub time_ns: i64,
    pub weather: &'static str,
    pub scene: &'static str,
    pub sim: f32,
}

/// The frames of both vehicles, most similar to the query first.
pub fn frames() -> Vec<Frame> {
    let f = |vehicle, camera, time_ns, weather, scene, sim| Frame {
        vehicle,
        camera,
        time_ns,
        weather,
        scene,
        sim,
    };
    vec![
        f("v1", "front", T0, "foggy", "highway", 1.0),
        f("v2", "front", T0 + 2 * SEC, "foggy", "highway", 0.95),
        f("v1", "rear", T0 + SEC, "clear", "highway", 0.9),
        f("v2", "rear", T0 + 86_400 * SEC, "rainy", "rural", 0.85),
        f("v1", "front", T0 + 3600 * SEC, "foggy", "city", 0.8),
        f("v2", "front", T0 + 3 * SEC, "clear", "city", 0.7),
    ]
}

pub fn frame_message(f: &Frame, q: &[f32], seq: u64, fp: &str) -> FrameMessage {
    let tag = |c: &str| TagValue {
        class: c.into(),
        score: 0.9,
    };
    FrameMessage {
        v: PAYLOAD_VERSION,
        vehicle: f.vehicle.into(),
        seq,
        camera: f.camera.into(),
        time_ns: f.time_ns,
        pts_ns: (f.time_ns - T0) as u64,
        source: format!("/data/{}.mp4", f.camera),
        model: fp.into(),
        embedding: encode_embedding(&with_similarity(q, f.sim, seq as usize)),
        tags: BTreeMap::from([
            ("weather".to_string(), tag(f.weather)),
            ("scene".to_string(), tag(f.scene)),
        ]),
    }
}

pub fn segment(vehicle: &str, start_ns: i64, caption: Option<&str>, seq: u64) -> SegmentMessage {
    let state = if caption.is_some() { "done" } else { "pending" };
    let tags = vec![SegmentTag {
        set: "scene".into(),
        class: "highway".into(),
        share: 1.0,
    }];
    let summary = match caption {
        Some(c) => format!("highway: \"{c}\""),
        None => "highway: (caption pending)".into(),
    };
    SegmentMessage {
        v: PAYLOAD_VERSION,
        vehicle: vehicle.into(),
        seq,
        camera: "front".into(),
        start_ns,
        end_ns: start_ns + 42 * SEC,
        frames: 84,
        keyframe_ns: start_ns,
        source: "/data/front.mp4".into(),
        tags,
        caption: caption.map(str::to_string),
        caption_state: state.into(),
        summary,
    }
}

/// A publisher (QoS 1) on the broker; its connection runs in a thread,
/// counting the broker's acknowledgements.
pub struct Publisher {
    client: rumqttc::Client,
    acked: Arc<AtomicUsize>,
}

impl Publisher {
    pub fn new(port: u16, id: &str) -> Self {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = rumqttc::Client::new(o, 1000);
        let acked = Arc::new(AtomicUsize::new(0));
        let count = acked.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    _ => {}
                }
            }
        });
        Self { client, acked }
    }

    /// Waits until the broker has acknowledged `n` messages in all.
    pub fn wait_acked(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.acked.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the broker acknowledged {} of {n}",
                self.acked.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn send(&self, vehicle: &str, kind: MessageKind, payload: Vec<u8>) {
        self.client
            .publish(
                topic(vehicle, kind),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .unwrap();
    }

    pub fn json<T: serde::Serialize>(&self, vehicle: &str, kind: MessageKind, m: &T) {
        self.send(vehicle, kind, serde_json::to_vec(m).unwrap());
    }
}

pub fn write_config(dir: &Path, broker_port: u16, pg_url: &str, extra: &str) -> PathBuf {
    static CONFIGS: AtomicUsize = AtomicUsize::new(0);
    let n = CONFIGS.fetch_add(1, Ordering::SeqCst);
    let path = dir.join(format!("fleet-{n}.toml"));
    let listen = format!("127.0.0.1:{}", crate::common::free_port());
    let client_id = if extra.contains("client_id") {
        String::new()
    } else {
        format!("client_id = \"fleet-test-{broker_port}\"\n")
    };
    std::fs::write(
        &path,
        format!(
            "[broker]\nport = {broker_port}\n{client_id}{extra}\n\
             [postgres]\nurl = \"{pg_url}\"\n\
             [ingest]\nmax_batch = 20\n\
             [model]\ndir = \"{}\"\n\
             [serve]\nlisten = \"{listen}\"\n",
            crate::common::tiny_model_dir().display()
        ),
    )
    .unwrap();
    path
}

pub fn roadrep(config: &Path, args: &[&str], dir: &Path) -> Output {
    let mut all = vec!["-c", config.to_str().unwrap(), "fleet"];
    all.extend_from_slice(args);
    crate::common::roadrep(&all, &dir.join("cache"))
}

pub fn spawn(config: &Path, args: &[&str], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(["-v", "-c", config.to_str().unwrap(), "fleet"])
        .args(args)
        .current_dir(crate::common::root())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

pub fn kill(child: &mut Child, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let _ = child.wait();
}

/// One value of a SQL query (an i64 count).
pub fn count(url: &str, sql: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
    })
}

pub fn wait_for(url: &str, sql: &str, want: i64, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(url, sql);
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} rows, expected {want}\ningest log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `fleet search QUERY ARGS --json` -> (vehicle, camera, time_ns) in rank order.
pub fn search(config: &Path, dir: &Path, args: &[&str]) -> Vec<(String, String, i64)> {
    let mut all = vec!["search", QUERY, "--json"];
    all.extend_from_slice(args);
    let o = roadrep(config, &all, dir);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    hits(&serde_json::from_slice(&o.stdout).unwrap())
}

pub fn hits(v: &serde_json::Value) -> Vec<(String, String, i64)> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["vehicle"].as_str().unwrap().to_string(),
                h["camera"].as_str().unwrap().to_string(),
                h["time_ns"].as_i64().unwrap(),
            )
        })
        .collect()
}

pub fn expected(keep: impl Fn(&Frame) -> bool) -> Vec<(String, String, i64)> {
    frames()
        .iter()
        .filter(|f| keep(f))
        .map(|f| (f.vehicle.to_string(), f.camera.to_string(), f.time_ns))
        .collect()
}

pub fn rfc3339(ns: i64) -> String {
    roadrep::search::format_time(ns)
}

/// Log text without ANSI colour codes (the log colours its fields).
pub fn without_colours(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
