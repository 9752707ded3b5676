//! `roadrep fleet ingest`: subscribes to what the vehicles publish and
//! writes it into PostgreSQL through the [`Writer`].
//!
//! Nothing is lost when this process dies: the MQTT session is persistent
//! (fixed client id, `clean_session = false`, QoS 1), and a message is
//! acknowledged to the broker only after the transaction holding it has
//! committed. Messages not yet acknowledged when the process is killed
//! are sent again by the broker when it reconnects, and land on `ON
//! CONFLICT` (see [`super::writer`]).
//!
//! Batches end at `ingest.max_batch` messages, `ingest.max_wait_ms` after
//! their first message, or `ingest.idle_ms` after the last one: the broker
//! sends at most its `max_inflight_messages` unacknowledged messages, so a
//! batch that waited for more would wait for ever.
//!
//! A message that does not decode (topic, payload) is logged with its
//! topic, counted and acknowledged: a poison message must not block the
//! stream. A database that cannot be reached is logged once, naming it,
//! and the batch (unacknowledged) is retried with backoff; so is the
//! broker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::FleetError;
use super::config::{BrokerConfig, FleetConfig};
use super::db::Db;
use super::writer::{Writer, Written};
use crate::uplink::message::{Message, MessageKind, TOPIC_ROOT};

/// Largest MQTT packet accepted (a frame with a 512-d embedding is ~2 KiB).
const MAX_PACKET_BYTES: usize = 1 << 20;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the running totals are logged.
const STATS_EVERY: Duration = Duration::from_secs(60);

/// Running totals of one ingest process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestStats {
    /// Transactions committed.
    pub batches: u64,
    /// Messages acknowledged.
    pub messages: u64,
    /// Rows written, per kind.
    pub frames: u64,
    pub segments: u64,
    pub rigs: u64,
    pub statuses: u64,
    /// Records already stored (redeliveries), skipped.
    pub duplicates: u64,
    /// Messages that did not decode or that the database refused.
    pub decode_errors: u64,
}

impl IngestStats {
    fn add(&mut self, w: &Written, messages: usize, decode_errors: u64) {
        self.batches += 1;
        self.messages += messages as u64;
        self.frames += w.frames;
        self.segments += w.segments;
        self.rigs += w.rigs;
        self.statuses += w.statuses;
        self.duplicates += w.duplicates;
        self.decode_errors += decode_errors + w.rejected.len() as u64;
        metrics::counter!("fleet_rows_written_total", "kind" => "frame").increment(w.frames);
        metrics::counter!("fleet_rows_written_total", "kind" => "segment").increment(w.segments);
        metrics::counter!("fleet_rows_written_total", "kind" => "rig").increment(w.rigs);
        metrics::counter!("fleet_rows_written_total", "kind" => "status").increment(w.statuses);
        metrics::counter!("fleet_duplicates_skipped_total").increment(w.duplicates);
        metrics::counter!("fleet_decode_errors_total")
            .increment(decode_errors + w.rejected.len() as u64);
    }

    fn log(&self, what: &str) {
        tracing::info!(
            batches = self.batches,
            messages = self.messages,
            frames = self.frames,
            segments = self.segments,
            rigs = self.rigs,
            statuses = self.statuses,
            duplicates = self.duplicates,
            decode_errors = self.decode_errors,
            "{what}"
        );
    }
}

/// The topic filters this process subscribes to.
pub fn topic_filters(broker: &BrokerConfig) -> Vec<String> {
    let prefix = match &broker.shared_group {
        Some(g) => format!("$share/{g}/"),
        None => String::new(),
    };
    broker
        .vehicles
        .iter()
        .flat_map(|v| {
            let prefix = &prefix;
            MessageKind::ALL
                .iter()
                .map(move |k| format!("{prefix}{TOPIC_ROOT}/{v}/{}", k.as_str()))
        })
        .collect()
}

/// MQTT options: persistent session, manual acknowledgements, TLS.
pub fn mqtt_options(broker: &BrokerConfig, channel: usize) -> Result<MqttOptions, FleetError> {
    let mut o = MqttOptions::new(&broker.client_id, &broker.host, broker.port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(broker.keep_alive_secs.max(5)))
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_request_channel_capacity(channel);
    if let Some(user) = &broker.username {
        o.set_credentials(user, broker.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &broker.tls {
        let bad = |message: String| FleetError::Broker {
            target: broker_target(broker),
            message,
        };
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| bad(format!("'{}': {e}", p.display())))
        };
        // rumqttc builds its rustls config with the process default
        // provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client_auth = match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: read(&tls.ca)?,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// `host:port` of the broker, as messages name it.
pub fn broker_target(broker: &BrokerConfig) -> String {
    format!(
        "{}://{}:{}",
        if broker.tls.is_some() {
            "mqtts"
        } else {
            "mqtt"
        },
        broker.host,
        broker.port
    )
}

/// Runs until `shutdown` resolves: the batch being written is finished
/// and acknowledged, the rest is left to the broker.
pub async fn run(
    config: &FleetConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<IngestStats, FleetError> {
    let db = Db::new(&config.postgres.url)?;
    let mut writer = Writer::new(db, config.index.clone());
    let max_batch = config.ingest.max_batch;
    let options = mqtt_options(&config.broker, 2 * max_batch + 16)?;
    let (client, eventloop) = AsyncClient::new(options, 2 * max_batch + 16);
    // Unbounded on purpose: the broker bounds it (at most its
    // max_inflight_messages unacknowledged messages per client), and a
    // bounded channel deadlocks: a full one stops the event loop, which
    // then stops draining the acknowledgements this loop waits to send.
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    let filters = topic_filters(&config.broker);
    let target = broker_target(&config.broker);
    let events = tokio::spawn(drive(eventloop, client.clone(), filters, target, tx));

    tokio::pin!(shutdown);
    // Told now rather than at the first message: a wrong url shows at once.
    let mut db_down = false;
    if let Err(error) = writer.connect().await {
        tracing::error!("{error}; retrying.");
        db_down = true;
    }
    let mut stats = IngestStats::default();
    let mut next_stats = Instant::now() + STATS_EVERY;
    let max_wait = Duration::from_millis(config.ingest.max_wait_ms);
    let idle = Duration::from_millis(config.ingest.idle_ms);
    'run: loop {
        let first = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => break },
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(next_stats) => {
                stats.log("Fleet ingest totals.");
                next_stats = Instant::now() + STATS_EVERY;
                continue;
            }
        };
        let deadline = Instant::now() + max_wait;
        let mut batch = vec![first];
        let mut stopping = false;
        while batch.len() < max_batch {
            let wake = deadline.min(Instant::now() + idle);
            tokio::select! {
                p = rx.recv() => match p { Some(p) => batch.push(p), None => break },
                () = tokio::time::sleep_until(wake) => break,
                () = &mut shutdown => { stopping = true; break }
            }
        }
        let (messages, bad) = decode(&batch);
        let written =
            match write_with_retry(&mut writer, &messages, &mut shutdown, &mut db_down).await {
                Some(w) => w,
                // Stopped while the database was away: nothing acknowledged,
                // the broker sends it again.
                None => break 'run,
            };
        for why in &written.rejected {
            tracing::warn!(error = %why, "Message refused by the database; acknowledged and dropped.");
        }
        for p in &batch {
            if client.ack(p).await.is_err() {
                break 'run;
            }
        }
        stats.add(&written, batch.len(), bad);
        tracing::debug!(
            messages = batch.len(),
            frames = written.frames,
            "Batch written."
        );
        if stopping {
            break;
        }
    }
    // Let the acknowledgements go out before the connection closes.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), events).await;
    stats.log("Fleet ingest stopped.");
    Ok(stats)
}

/// Decodes a batch; undecodable messages are logged and counted.
fn decode(batch: &[Publish]) -> (Vec<Message>, u64) {
    let mut bad = 0;
    let messages = batch
        .iter()
        .filter_map(|p| match Message::decode(&p.topic, &p.payload) {
            Ok(m) => Some(m),
            Err(error) => {
                bad += 1;
                tracing::warn!(topic = %p.topic, %error, "Undecodable message; acknowledged and dropped.");
                None
            }
        })
        .collect();
    (messages, bad)
}

/// Writes until it succeeds; `None` when `shutdown` came first. An
/// outage is logged once (`down` carries that across batches).
async fn write_with_retry(
    writer: &mut Writer,
    messages: &[Message],
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    down: &mut bool,
) -> Option<Written> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let attempt = tokio::select! {
            r = writer.write(messages) => r,
            () = shutdown.as_mut() => return None,
        };
        match attempt {
            Ok(w) => {
                if *down {
                    tracing::warn!(database = %writer.db().target(), "PostgreSQL reachable again.");
                    *down = false;
                }
                return Some(w);
            }
            Err(error) => {
                if !*down {
                    tracing::error!("{error}; retrying.");
                    *down = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = shutdown.as_mut() => return None,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Polls the MQTT connection: publishes go to the writer, the
/// subscriptions are renewed on every connection, and a broker that
/// cannot be reached is logged once and retried with backoff.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    target: String,
    tx: mpsc::UnboundedSender<Publish>,
) {
    let client = Arc::new(client);
    let mut backoff = Duration::from_millis(250);
    let mut down = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if down {
                    tracing::warn!(broker = %target, "Broker reachable again.");
                }
                tracing::info!(broker = %target, session_present = ack.session_present, "Connected to the broker.");
                down = false;
                backoff = Duration::from_millis(250);
                let subs = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(error) = client.try_subscribe_many(subs) {
                    tracing::error!(broker = %target, %error, "Subscribing failed.");
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(error) => {
                if !down {
                    tracing::error!("Broker {target} unreachable: {error}; retrying.");
                    down = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
