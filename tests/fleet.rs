//! The fleet side end to end, against a real mosquitto and PostgreSQL with
//! pgvector (tests/common/fleet.rs): `fleet init`, `fleet ingest` as a
//! process, hand-made messages of two vehicles published over MQTT, then
//! `fleet search` with each filter, `fleet summary`, the HTTP API; an
//! ingest SIGKILLed mid-stream loses nothing; unreachable servers are
//! named on one line.

mod common;
#[path = "fleet/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::fleet::{Broker, Postgres};
use roadrep::uplink::message::{
    MessageKind, PAYLOAD_VERSION, RigMessage, StatusMessage, encode_embedding, topic,
};
use support::*;

#[test]
fn ingest_search_summary_and_api_across_two_vehicles() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let mut broker = Broker::start();
    let url = pg.url();
    let config = write_config(dir.path(), broker.port, &url, "");
    let o = roadrep(&config, &["init"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = dir.path().join("ingest.log");
    let mut ingest = spawn(&config, &["ingest"], &log);

    let (q, fp) = (query_embedding(), fingerprint());
    let publisher = Publisher::new(broker.port, "test-vehicles");
    // Subscriptions are made once the ingest is connected: wait for them
    // by a status that must land.
    let status = |vehicle: &str, online| StatusMessage {
        v: PAYLOAD_VERSION,
        vehicle: vehicle.into(),
        online,
        time_ns: T0,
        streams: vec![],
        outbox_depth: 0,
        version: "test".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&url, "SELECT count(*) FROM vehicles WHERE online") == 0 {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        publisher.json("v1", MessageKind::Status, &status("v1", true));
        std::thread::sleep(Duration::from_millis(300));
    }
    for (i, f) in frames().iter().enumerate() {
        publisher.json(
            f.vehicle,
            MessageKind::Frame,
            &frame_message(f, &q, i as u64, &fp),
        );
    }
    // A duplicate, a poison message, segments (pending then captioned; a
    // late pending must not undo a caption), a rig record.
    publisher.json(
        "v1",
        MessageKind::Frame,
        &frame_message(&frames()[0], &q, 0, &fp),
    );
    publisher.send("v1", MessageKind::Frame, b"not json".to_vec());
    // Refused by the writer (wrong dimension for its model) and by
    // PostgreSQL (a NUL in text): set aside, the rest of the batch stored.
    let mut short = frame_message(&frames()[1], &q, 30, &fp);
    short.time_ns += 1;
    short.embedding = encode_embedding(&q[..16]);
    publisher.json("v2", MessageKind::Frame, &short);
    let mut nul = frame_message(&frames()[2], &q, 31, &fp);
    nul.camera = "re\u{0}ar".into();
    publisher.json("v1", MessageKind::Frame, &nul);
    publisher.json("v1", MessageKind::Segment, &segment("v1", T0, None, 10));
    publisher.json(
        "v1",
        MessageKind::Segment,
        &segment("v1", T0 + 42 * SEC, None, 11),
    );
    publisher.json(
        "v1",
        MessageKind::Segment,
        &segment("v1", T0, Some("a foggy highway"), 12),
    );
    publisher.json(
        "v2",
        MessageKind::Segment,
        &segment("v2", T0, Some("a city street"), 13),
    );
    publisher.json("v2", MessageKind::Segment, &segment("v2", T0, None, 9));
    let rig = RigMessage {
        v: PAYLOAD_VERSION,
        vehicle: "v1".into(),
        seq: 20,
        rig: "roof".into(),
        anchor_ns: T0,
        anchor_role: "front".into(),
        present: vec!["front".into(), "rear".into()],
        absent: vec!["left".into()],
        model: "fusion-test".into(),
        embedding: encode_embedding(&q),
        tags: BTreeMap::new(),
    };
    publisher.json("v1", MessageKind::Rig, &rig);
    wait_for(&url, "SELECT count(*) FROM frames", 6, "frames", &log);
    wait_for(&url, "SELECT count(*) FROM rigs", 1, "rigs", &log);
    wait_for(
        &url,
        "SELECT count(*) FROM segments WHERE caption_state = 'done'",
        2,
        "captioned segments",
        &log,
    );
    wait_for(&url, "SELECT count(*) FROM segments", 3, "segments", &log);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM vehicles WHERE id IN ('v1', 'v2')"
        ),
        2
    );
    let log_text = without_colours(&std::fs::read_to_string(&log).unwrap());
    assert!(log_text.contains("topic=roadrep/v1/frame"), "{log_text}");
    assert!(
        log_text.contains("embedding of 16 values, but model"),
        "{log_text}"
    );
    assert!(log_text.contains("v1 frame re"), "{log_text}");

    // Search with each filter, across both vehicles.
    let all = search(&config, dir.path(), &[]);
    assert_eq!(all, expected(|_| true));
    assert_eq!(
        search(&config, dir.path(), &["--vehicle", "v2"]),
        expected(|f| f.vehicle == "v2")
    );
    assert_eq!(
        search(&config, dir.path(), &["--camera", "rear"]),
        expected(|f| f.camera == "rear")
    );
    let (from, to) = (rfc3339(T0 + SEC), rfc3339(T0 + 3600 * SEC));
    assert_eq!(
        search(&config, dir.path(), &["--from", &from, "--to", &to]),
        expected(|f| f.time_ns >= T0 + SEC && f.time_ns <= T0 + 3600 * SEC)
    );
    assert_eq!(
        search(&config, dir.path(), &["--tag", "weather=foggy"]),
        expected(|f| f.weather == "foggy")
    );
    assert_eq!(
        search(
            &config,
            dir.path(),
            &[
                "--vehicle",
                "v1",
                "--vehicle",
                "v2",
                "--camera",
                "front",
                "--tag",
                "weather=foggy",
                "--tag",
                "scene=highway",
                "--to",
                &rfc3339(T0 + 10 * SEC)
            ]
        ),
        expected(|f| f.camera == "front" && f.weather == "foggy" && f.scene == "highway")
    );
    assert_eq!(
        search(&config, dir.path(), &["--top", "2"]),
        expected(|_| true)[..2]
    );
    assert_eq!(search(&config, dir.path(), &["--exact"]), all);
    // How each search ranked: by the index without a filter; a filter the
    // planner expects to keep few rows (`[index] exact_below`) scored
    // exactly unless the index is asked for; the same hits either way.
    let json = |config: &Path, args: &[&str]| -> serde_json::Value {
        let mut all = vec!["search", QUERY, "--json"];
        all.extend_from_slice(args);
        let o = roadrep(config, &all, dir.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let unfiltered = json(&config, &[]);
    assert_eq!(unfiltered["path"], "index", "{unfiltered}");
    assert!(unfiltered.get("estimated_rows").is_none(), "{unfiltered}");
    let by_vehicle = json(&config, &["--vehicle", "v1"]);
    assert_eq!(by_vehicle["path"], "exact", "{by_vehicle}");
    // The planner's guess for a table this small; below the threshold.
    let estimated = by_vehicle["estimated_rows"].as_u64().unwrap();
    assert!(estimated <= 50_000, "{by_vehicle}");
    assert_eq!(hits(&by_vehicle), expected(|f| f.vehicle == "v1"));
    let forced = json(&config, &["--vehicle", "v1", "--index"]);
    assert_eq!(forced["path"], "index", "{forced}");
    assert_eq!(hits(&forced), hits(&by_vehicle));
    assert_eq!(json(&config, &["--exact"])["path"], "exact");
    let never_exact = write_config(dir.path(), broker.port, &url, "[index]\nexact_below = 0\n");
    let by_vehicle = json(&never_exact, &["--vehicle", "v1"]);
    assert_eq!(by_vehicle["path"], "index", "{by_vehicle}");
    assert_eq!(hits(&by_vehicle), expected(|f| f.vehicle == "v1"));
    let o = roadrep(
        &config,
        &["search", QUERY, "--vehicle", "v1", "--top", "1"],
        dir.path(),
    );
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(
        line.starts_with("0.99") || line.starts_with("1.00"),
        "{line}"
    );
    assert!(
        line.contains("v1  front  2026-12-01T10:00:00.000Z  scene=highway weather=foggy"),
        "{line}"
    );

    // Summary: v1's segments in time order, the caption kept.
    let o = roadrep(&config, &["summary", "--vehicle", "v1"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "2026-12-01 10:00:00-10:00:42 front highway: \"a foggy highway\"\n\
         2026-12-01 10:00:42-10:01:24 front highway: (caption pending)\n"
    );
    let o = roadrep(
        &config,
        &["summary", "--vehicle", "v2", "--caption", "city"],
        dir.path(),
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "2026-12-01 10:00:00-10:00:42 front highway: \"a city street\"\n"
    );

    // SIGKILL mid-stream: what was not committed is redelivered.
    let publisher2 = Publisher::new(broker.port, "test-stream");
    let stream = std::thread::spawn({
        let (q, fp) = (q.clone(), fp.clone());
        move || {
            for i in 0..300i64 {
                let f = Frame {
                    vehicle: "v3",
                    camera: "front",
                    time_ns: T0 + 7200 * SEC + i * SEC / 2,
                    weather: "clear",
                    scene: "city",
                    sim: 0.1,
                };
                publisher2.json(
                    "v3",
                    MessageKind::Frame,
                    &frame_message(&f, &q, 100 + i as u64, &fp),
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            // Queued is not sent: keep the connection until the broker has all.
            publisher2.wait_acked(300);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&url, "SELECT count(*) FROM frames WHERE vehicle = 'v3'") < 30 {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(&mut ingest, libc::SIGKILL);
    let stored = count(&url, "SELECT count(*) FROM frames WHERE vehicle = 'v3'");
    assert!(
        stored < 300,
        "the kill came too late to test anything: {stored}"
    );
    stream.join().unwrap();
    let log2 = dir.path().join("ingest2.log");
    let mut ingest = spawn(&config, &["ingest"], &log2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&url, "SELECT count(*) FROM frames WHERE vehicle = 'v3'") < 300 {
        assert!(
            Instant::now() < deadline,
            "after the kill: {} of 300\nfirst ingest:\n{}\nsecond ingest:\n{}\nbroker:\n{}",
            count(&url, "SELECT count(*) FROM frames WHERE vehicle = 'v3'"),
            std::fs::read_to_string(&log).unwrap(),
            std::fs::read_to_string(&log2).unwrap(),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&url, "SELECT count(*) FROM frames"), 306);

    // The broker restarts: the ingest reconnects to its persisted session.
    broker.restart();
    let late = Publisher::new(broker.port, "test-after-restart");
    let f = Frame {
        vehicle: "v4",
        camera: "front",
        time_ns: T0,
        weather: "clear",
        scene: "city",
        sim: 0.2,
    };
    late.json("v4", MessageKind::Frame, &frame_message(&f, &q, 1, &fp));
    late.wait_acked(1);
    wait_for(
        &url,
        "SELECT count(*) FROM frames WHERE vehicle = 'v4'",
        1,
        "after a broker restart",
        &log2,
    );
    let text = without_colours(&std::fs::read_to_string(&log2).unwrap());
    assert!(text.contains("Broker reachable again."), "{text}");

    // The HTTP API answers the same.
    let serve_log = dir.path().join("serve.log");
    let mut serve = spawn(&config, &["serve"], &serve_log);
    let text = std::fs::read_to_string(&config).unwrap();
    let listen = text
        .split("listen = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let agent = common::api_agent();
    let get = |path: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match agent.get(format!("http://{listen}{path}")).call() {
                Ok(mut r) => {
                    let status = r.status().as_u16();
                    let body: serde_json::Value = r.body_mut().read_json().unwrap();
                    return (status, body);
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("{e}: {}", std::fs::read_to_string(&serve_log).unwrap()),
            }
        }
    };
    let (status, body) = get("/api/fleet/search?q=foggy%20highway%20at%20night&vehicle=v2");
    assert_eq!(status, 200, "{body}");
    assert_eq!(hits(&body), expected(|f| f.vehicle == "v2"));
    assert_eq!(body["path"], "exact", "{body}");
    let (_, body) = get("/api/fleet/search?q=foggy%20highway%20at%20night&vehicle=v2&exact=false");
    assert_eq!(hits(&body), expected(|f| f.vehicle == "v2"));
    assert_eq!(body["path"], "index", "{body}");
    let (status, body) =
        get("/api/fleet/search?q=foggy%20highway%20at%20night&tag=weather:foggy&camera=front");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        hits(&body),
        expected(|f| f.weather == "foggy" && f.camera == "front")
    );
    let (status, body) = get("/api/fleet/summary?vehicle=v1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["segments"].as_array().unwrap().len(), 2);
    assert_eq!(body["segments"][0]["caption"], "a foggy highway");
    let (status, body) = get("/api/fleet/search?q=x&from=yesterday");
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("from:"),
        "{body}"
    );
    let (status, body) = get("/api/fleet/search?q=x&colour=red");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");
    let (status, _) = get("/health");
    assert_eq!(status, 200);
    kill(&mut serve, libc::SIGTERM);
    kill(&mut ingest, libc::SIGTERM);
    drop(broker);
    drop(pg);
}

#[test]
fn unreachable_servers_are_named_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (pg_port, broker_port) = (common::free_port(), common::free_port());
    let url = format!("host=127.0.0.1 port={pg_port} user=fleet dbname=fleet");
    let config = write_config(dir.path(), broker_port, &url, "");
    let o = roadrep(&config, &["search", QUERY], dir.path());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "PostgreSQL host=127.0.0.1 port={pg_port} user=fleet dbname=fleet"
        )),
        "{err}"
    );
    let o = roadrep(&config, &["summary", "--vehicle", "v1"], dir.path());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("port={pg_port}")));

    // The ingest keeps trying both, naming each once.
    let log = dir.path().join("ingest.log");
    let mut ingest = spawn(&config, &["ingest"], &log);
    std::thread::sleep(Duration::from_secs(3));
    assert!(ingest.try_wait().unwrap().is_none(), "ingest gave up");
    kill(&mut ingest, libc::SIGTERM);
    let text = std::fs::read_to_string(&log).unwrap();
    let broker_lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(&format!(
                "Broker mqtt://127.0.0.1:{broker_port} unreachable"
            ))
        })
        .collect();
    assert_eq!(broker_lines.len(), 1, "{text}");
    let pg_lines = text
        .lines()
        .filter(|l| l.contains(&format!("port={pg_port}")))
        .count();
    assert_eq!(pg_lines, 1, "{text}");
}

#[test]
fn tls_broker_and_two_workers_sharing_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let (broker, tls) = Broker::start_tls();
    let url = pg.url();
    let tls_section = format!(
        "[broker.tls]\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let worker = |id: &str| {
        write_config(
            dir.path(),
            broker.port,
            &url,
            &format!("client_id = \"{id}\"\nshared_group = \"ingest\"\n{tls_section}"),
        )
    };
    let (c1, c2) = (worker("w1"), worker("w2"));
    let o = roadrep(&c1, &["init"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (l1, l2) = (dir.path().join("w1.log"), dir.path().join("w2.log"));
    let mut w1 = spawn(&c1, &["ingest"], &l1);
    let mut w2 = spawn(&c2, &["ingest"], &l2);
    let connected = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("Connected to the broker")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(connected(&l1) && connected(&l2)) {
        assert!(Instant::now() < deadline, "{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Subscriptions follow the connection: give them a moment.
    std::thread::sleep(Duration::from_millis(500));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut o = rumqttc::MqttOptions::new("tls-vehicle", "127.0.0.1", broker.port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: std::fs::read(&tls.ca).unwrap(),
            alpn: None,
            client_auth: Some((
                std::fs::read(&tls.client_cert).unwrap(),
                std::fs::read(&tls.client_key).unwrap(),
            )),
        },
    ));
    let (client, mut connection) = rumqttc::Client::new(o, 1000);
    let acked = Arc::new(AtomicUsize::new(0));
    let count_acks = acked.clone();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    count_acks.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
                _ => {}
            }
        }
    });
    let (q, fp) = (query_embedding(), fingerprint());
    for i in 0..200i64 {
        let f = Frame {
            vehicle: "v5",
            camera: "front",
            time_ns: T0 + i * SEC,
            weather: "clear",
            scene: "city",
            sim: 0.5,
        };
        let payload = serde_json::to_vec(&frame_message(&f, &q, i as u64, &fp)).unwrap();
        client
            .publish(
                topic("v5", MessageKind::Frame),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .unwrap();
    }
    wait_for(&url, "SELECT count(*) FROM frames", 200, "over TLS", &l1);
    kill(&mut w1, libc::SIGTERM);
    kill(&mut w2, libc::SIGTERM);
    // Each worker took a share (their totals are logged at the stop).
    for log in [&l1, &l2] {
        let text = without_colours(&std::fs::read_to_string(log).unwrap());
        let stopped = text
            .lines()
            .find(|l| l.contains("Fleet ingest stopped."))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string();
        let frames: u64 = stopped
            .split("frames=")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(frames > 0 && frames < 200, "{stopped}");
    }
    drop(client);
}
