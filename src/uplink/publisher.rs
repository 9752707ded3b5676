//! The publisher: sends the outbox to the broker (QoS 1) and removes each
//! message when the broker acknowledges it.
//!
//! Each connection is a fresh MQTT session (clean session): after a drop
//! everything still in the outbox is sent again from its start, so a
//! message whose acknowledgement was lost may arrive twice. The fleet side
//! is idempotent on the record's key, so that costs bytes, not duplicates.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};

use super::link::{LinkBoard, UplinkError};
use super::message::{self, MessageKind, StatusMessage, StreamStatus};
use crate::pipeline::metrics as m;
use crate::store::{OutboxEntry, Store};

/// Where the publisher finds the store: the daemon's slot (closed while
/// the disk is full) or a plain handle.
pub trait StoreSource: Send + Sync {
    /// The open store, if any.
    fn store(&self) -> Option<Store>;
}

impl StoreSource for Store {
    fn store(&self) -> Option<Store> {
        Some(self.clone())
    }
}

impl StoreSource for crate::daemon::StoreSlot {
    fn store(&self) -> Option<Store> {
        self.get().ok()
    }
}

/// The streams and their state, for the status message.
pub type StreamReport = Arc<dyn Fn() -> Vec<StreamStatus> + Send + Sync>;

/// Acknowledged messages are removed from the store in runs of this many
/// (or every [`ACK_FLUSH`]).
const ACK_RUN: usize = 64;
const ACK_FLUSH: Duration = Duration::from_millis(100);

/// How a connection ended.
enum SessionEnd {
    Stopped,
    Lost(String),
}

/// Runs until `stop` turns true: connects, sends, reconnects with backoff.
pub async fn run(
    link: Arc<LinkBoard>,
    stores: Arc<dyn StoreSource>,
    streams: StreamReport,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let config = link.config().clone();
    let max_backoff = Duration::from_secs(config.max_backoff_secs);
    let mut backoff = Duration::from_secs(1);
    let mut outage_logged = false;
    let mut connections = 0u64;
    loop {
        if *stop.borrow() {
            break;
        }
        link.connecting();
        let end = session(&link, &*stores, &streams, &mut stop, &mut connections).await;
        match end {
            SessionEnd::Stopped => break,
            SessionEnd::Lost(error) => {
                let connected_before = link.take_connected_flag();
                if connected_before {
                    backoff = Duration::from_secs(1);
                    outage_logged = false;
                }
                if !outage_logged {
                    // One line per outage: the link may stay down for hours.
                    tracing::warn!(
                        "uplink: MQTT broker {} cannot be reached: {error}; tagging goes on locally, messages wait in the outbox",
                        config.broker
                    );
                    outage_logged = true;
                } else {
                    tracing::debug!(broker = %config.broker, %error, "uplink: still down");
                }
                link.down(error);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    link.stopped();
}

/// The retained status payload.
pub(super) fn status_payload(
    vehicle: &str,
    online: bool,
    streams: Vec<StreamStatus>,
    depth: u64,
) -> Vec<u8> {
    serde_json::to_vec(&StatusMessage {
        v: message::PAYLOAD_VERSION,
        vehicle: vehicle.to_string(),
        online,
        time_ns: if online {
            crate::ingest::source::now_ns()
        } else {
            0
        },
        streams,
        outbox_depth: depth,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .expect("status serializes")
}

async fn session(
    link: &LinkBoard,
    stores: &dyn StoreSource,
    streams: &StreamReport,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    connections: &mut u64,
) -> SessionEnd {
    let config = link.config();
    let window = config.max_inflight as usize;
    let (client, mut events) = AsyncClient::new(link.options().clone(), window + 8);
    // Until the broker accepts the connection.
    loop {
        let polled = tokio::select! {
            p = events.poll() => p,
            _ = stop.changed() => return SessionEnd::Stopped,
        };
        match polled {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                if ack.code == rumqttc::ConnectReturnCode::Success {
                    break;
                }
                return SessionEnd::Lost(format!("connection refused: {:?}", ack.code));
            }
            Ok(_) => {}
            Err(e) => return SessionEnd::Lost(e.to_string()),
        }
    }
    *connections += 1;
    if *connections > 1 {
        metrics::counter!(m::UPLINK_RECONNECTS).increment(1);
        link.reconnected();
    }
    let depth = link.depth();
    tracing::info!(broker = %config.broker, vehicle = %config.vehicle, waiting = depth, "uplink: connected");
    link.connected();
    let status_topic = message::topic(&config.vehicle, MessageKind::Status);
    // Requests in the order rumqttc will number them (None: a status).
    let mut order: VecDeque<Option<OutboxEntry>> = VecDeque::new();
    let mut inflight: HashMap<u16, OutboxEntry> = HashMap::new();
    let mut acked: Vec<OutboxEntry> = Vec::new();
    let publish_status = |order: &mut VecDeque<Option<OutboxEntry>>, online: bool| {
        let payload = status_payload(&config.vehicle, online, streams(), link.depth());
        if client
            .try_publish(&status_topic, QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            order.push_back(None);
        }
    };
    publish_status(&mut order, true);
    let mut status_tick = tokio::time::interval(Duration::from_secs(config.status_interval_secs));
    status_tick.tick().await;
    let mut ack_tick = tokio::time::interval(ACK_FLUSH);
    // Highest sequence number handed to the client in this session.
    let mut cursor = 0u64;
    let mut maybe_more = true;
    loop {
        let room = window.saturating_sub(order.len() + inflight.len());
        if room > 0
            && maybe_more
            && let Some(store) = stores.store()
        {
            match store.outbox_after(cursor, room) {
                Ok(batch) => {
                    maybe_more = batch.len() == room;
                    for mut e in batch {
                        let topic = message::topic(&config.vehicle, e.kind);
                        // The entry is kept only to be acknowledged: its
                        // payload moves into the request (a failed one is
                        // read again from the store).
                        let payload = std::mem::take(&mut e.payload);
                        if client
                            .try_publish(topic, QoS::AtLeastOnce, false, payload)
                            .is_err()
                        {
                            maybe_more = true;
                            break;
                        }
                        cursor = e.seq;
                        order.push_back(Some(e));
                    }
                }
                Err(e) => tracing::warn!("uplink: reading the outbox: {e}"),
            }
        }
        let window_full = window <= order.len() + inflight.len();
        tokio::select! {
            polled = events.poll() => match polled {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => match order.pop_front() {
                    Some(Some(e)) => {
                        inflight.insert(pkid, e);
                    }
                    Some(None) => {}
                    None => {
                        flush_acks(link, stores, &mut acked);
                        return SessionEnd::Lost("publish order lost (internal)".into());
                    }
                },
                Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                    if let Some(e) = inflight.remove(&ack.pkid) {
                        acked.push(e);
                        if acked.len() >= ACK_RUN {
                            flush_acks(link, stores, &mut acked);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    flush_acks(link, stores, &mut acked);
                    return SessionEnd::Lost(e.to_string());
                }
            },
            _ = link.outbox().queued(), if !window_full => maybe_more = true,
            _ = ack_tick.tick() => {
                flush_acks(link, stores, &mut acked);
                // Entries dropped or acknowledged behind the cursor leave
                // room: look again now and then.
                maybe_more = true;
            }
            _ = status_tick.tick() => {
                publish_status(&mut order, true);
                link.update_gauges(stores.store().as_ref());
            }
            _ = stop.changed() => {
                flush_acks(link, stores, &mut acked);
                // A clean stop sends no last will: say offline ourselves.
                publish_status(&mut order, false);
                let _ = client.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(ev) = events.poll().await {
                        if let Event::Incoming(Incoming::PubAck(ack)) = ev
                            && let Some(e) = inflight.remove(&ack.pkid)
                        {
                            acked.push(e);
                        }
                    }
                })
                .await;
                flush_acks(link, stores, &mut acked);
                return SessionEnd::Stopped;
            }
        }
    }
}

fn flush_acks(link: &LinkBoard, stores: &dyn StoreSource, acked: &mut Vec<OutboxEntry>) {
    if acked.is_empty() {
        return;
    }
    let Some(store) = stores.store() else {
        // Sent again after the store reopens: the fleet side is idempotent.
        acked.clear();
        return;
    };
    match store.outbox_acked(acked) {
        Ok(()) => {
            for e in acked.iter() {
                metrics::counter!(m::UPLINK_SENT, "kind" => e.kind.as_str()).increment(1);
            }
            link.sent(acked.len() as u64);
        }
        Err(e) => tracing::warn!("uplink: removing sent messages from the outbox: {e}"),
    }
    acked.clear();
    link.update_gauges(Some(&store));
}

/// Waits until the outbox is empty or `timeout` passes; returns what is
/// left.
pub async fn drain(link: &LinkBoard, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let depth = link.depth();
        if depth == 0 || tokio::time::Instant::now() >= deadline {
            return depth;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the files the TLS settings name, failing with the field and path.
pub(super) fn tls_files(
    config: &super::config::UplinkConfig,
) -> Result<rumqttc::TlsConfiguration, UplinkError> {
    let read = |field: &'static str, p: &std::path::Path| {
        std::fs::read(p).map_err(|source| UplinkError::File {
            field,
            path: p.to_path_buf(),
            source,
        })
    };
    let ca_path = config
        .ca
        .clone()
        .unwrap_or_else(|| super::config::SYSTEM_CA_BUNDLE.into());
    let ca = read("uplink.ca", &ca_path)?;
    let client_auth = match (&config.client_cert, &config.client_key) {
        (Some(c), Some(k)) => Some((
            read("uplink.client_cert", c)?,
            read("uplink.client_key", k)?,
        )),
        _ => None,
    };
    // rumqttc builds its rustls config on the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })
}
