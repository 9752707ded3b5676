//! The fleet test harness itself: a real PostgreSQL with pgvector and a
//! real mosquitto (plain and TLS), started on loopback ports
//! (tests/common/fleet.rs).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::fleet::{Broker, Postgres};
use half::f16;
use pgvector::HalfVector;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn postgres_has_pgvector_halfvec_and_hnsw() {
    let pg = Postgres::start();
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}\n{}", pg.url(), pg.log()));
    tokio::spawn(connection);

    client
        .batch_execute("CREATE EXTENSION vector")
        .await
        .unwrap();
    let version: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(
        parts[0] > 0 || parts[1] >= 8,
        "pgvector {version}, need >= 0.8"
    );
    let server: String = client
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    assert!(server.starts_with("18"), "PostgreSQL {server}, want 18");

    client
        .batch_execute(
            "CREATE TABLE clips (id bigserial PRIMARY KEY, embedding halfvec(3) NOT NULL)",
        )
        .await
        .unwrap();
    let v = HalfVector::from_f32_slice(&[1.0, -2.5, 0.125]);
    let id: i64 = client
        .query_one(
            "INSERT INTO clips (embedding) VALUES ($1) RETURNING id",
            &[&v],
        )
        .await
        .unwrap()
        .get(0);
    let back: HalfVector = client
        .query_one("SELECT embedding FROM clips WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        back.to_vec(),
        [1.0f32, -2.5, 0.125].map(f16::from_f32).to_vec()
    );

    for i in 0..200 {
        let x = i as f32 / 200.0;
        let v = HalfVector::from_f32_slice(&[x, 1.0 - x, (x * 7.0).sin()]);
        client
            .execute("INSERT INTO clips (embedding) VALUES ($1)", &[&v])
            .await
            .unwrap();
    }
    client
        .batch_execute("CREATE INDEX clips_hnsw ON clips USING hnsw (embedding halfvec_cosine_ops)")
        .await
        .unwrap();
    client
        // ef_search above the row count: the walk sees every row, so the
        // exact match (an outlier here) is found whatever the random graph.
        .batch_execute(
            "SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = 400; SET enable_seqscan = off",
        )
        .await
        .unwrap();
    let q = HalfVector::from_f32_slice(&[1.0, -2.5, 0.125]);
    let plan: Vec<String> = client
        .query(
            "EXPLAIN SELECT id FROM clips ORDER BY embedding <=> $1 LIMIT 5",
            &[&q],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("clips_hnsw")),
        "HNSW index not used: {plan:#?}"
    );
    // relaxed_order may return neighbours slightly out of order.
    let nearest: Vec<i64> = client
        .query(
            "SELECT id FROM clips ORDER BY embedding <=> $1 LIMIT 5",
            &[&q],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(nearest.contains(&id), "{id} not in {nearest:?}");
}

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// Polls until the broker's ConnAck; returns session_present.
async fn connack(events: &mut EventLoop, broker: &Broker) -> bool {
    loop {
        match timeout(STEP, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => return ack.session_present,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connect: {e}\n{}", broker.log()),
            Err(_) => panic!("no ConnAck within {STEP:?}\n{}", broker.log()),
        }
    }
}

/// Polls until `done` says so for an event.
async fn poll_until(events: &mut EventLoop, broker: &Broker, mut done: impl FnMut(&Event) -> bool) {
    loop {
        match timeout(STEP, events.poll()).await {
            Ok(Ok(event)) => {
                if done(&event) {
                    return;
                }
            }
            Ok(Err(e)) => panic!("mqtt: {e}\n{}", broker.log()),
            Err(_) => panic!("stalled for {STEP:?}\n{}", broker.log()),
        }
    }
}

/// Disconnects cleanly (the session stays when clean_session is off).
async fn disconnect(client: &AsyncClient, events: &mut EventLoop, broker: &Broker) {
    client.disconnect().await.unwrap();
    loop {
        match timeout(STEP, events.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("disconnect stalled\n{}", broker.log()),
        }
    }
}

/// More than mosquitto's default max_queued_messages (1000): the queue of
/// an offline persistent session must hold them all, across a restart.
const QUEUED: usize = 1500;

#[tokio::test]
async fn broker_keeps_offline_session_queue_across_restart() {
    let mut broker = Broker::start();
    let topic = "roadrep/test/uplink";

    // A persistent session with a QoS 1 subscription, then offline.
    let mut o = options("fleet-subscriber", broker.port);
    o.set_clean_session(false);
    let (sub, mut sub_events) = AsyncClient::new(o.clone(), 10);
    assert!(!connack(&mut sub_events, &broker).await);
    sub.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    poll_until(&mut sub_events, &broker, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
    disconnect(&sub, &mut sub_events, &broker).await;
    drop((sub, sub_events));

    // QoS 1 messages while it is away, all acknowledged by the broker.
    let (publisher, mut pub_events) = AsyncClient::new(options("fleet-publisher", broker.port), 10);
    connack(&mut pub_events, &broker).await;
    let sender = publisher.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..QUEUED {
            sender
                .publish(topic, QoS::AtLeastOnce, false, format!("message {i}"))
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    poll_until(&mut pub_events, &broker, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acked += 1;
        }
        acked == QUEUED
    })
    .await;
    publishing.await.unwrap();
    disconnect(&publisher, &mut pub_events, &broker).await;

    broker.stop();
    assert!(!broker.is_running());
    broker.restart();
    assert!(broker.is_running());

    // Back online: the session is there and every message arrives.
    let (sub, mut sub_events) = AsyncClient::new(o, 10);
    assert!(
        connack(&mut sub_events, &broker).await,
        "session not persisted\n{}",
        broker.log()
    );
    let mut got = BTreeSet::new();
    poll_until(&mut sub_events, &broker, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            assert_eq!(p.topic, topic);
            got.insert(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        got.len() == QUEUED
    })
    .await;
    let want: BTreeSet<String> = (0..QUEUED).map(|i| format!("message {i}")).collect();
    assert_eq!(got, want);
    disconnect(&sub, &mut sub_events, &broker).await;
}

#[tokio::test]
async fn tls_broker_requires_client_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (broker, files) = Broker::start_tls();
    let ca = std::fs::read(&files.ca).unwrap();
    let cert = std::fs::read(&files.client_cert).unwrap();
    let key = std::fs::read(&files.client_key).unwrap();

    let mut o = options("fleet-tls-ok", broker.port);
    o.set_transport(Transport::tls(ca.clone(), Some((cert, key)), None));
    let (client, mut events) = AsyncClient::new(o, 10);
    connack(&mut events, &broker).await;
    disconnect(&client, &mut events, &broker).await;

    let mut o = options("fleet-tls-anonymous", broker.port);
    o.set_transport(Transport::tls(ca, None, None));
    let (_client, mut events) = AsyncClient::new(o, 10);
    loop {
        match timeout(STEP, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                panic!("TLS broker accepted a client without a certificate")
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => panic!("no answer within {STEP:?}\n{}", broker.log()),
        }
    }
}
