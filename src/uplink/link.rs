//! The link to the broker as the rest of the daemon sees it: its state,
//! counters and the report `/api/uplink` and `roadrep uplink status` show.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, Transport};
use serde::{Deserialize, Serialize};

use super::config::UplinkConfig;
use super::message::{self, MessageKind};
use crate::pipeline::metrics as m;
use crate::store::{Outbox, OutboxStats, Store};

/// Errors setting up the uplink.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// A file the config names cannot be read.
    #[error("{field} '{path}': {source}")]
    File {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value the broker client refuses.
    #[error("uplink: {0}")]
    Config(String),
}

/// The link's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    /// Connecting (first attempt, or again after a backoff).
    Connecting,
    /// Connected since (RFC 3339).
    Connected { since: String },
    /// Down: the last error, since when (RFC 3339).
    Down { error: String, since: String },
    /// The publisher has stopped.
    Stopped,
}

/// What `/api/uplink` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkReport {
    /// Vehicle id.
    pub vehicle: String,
    /// Broker `host:port`.
    pub broker: String,
    /// TLS or not.
    pub tls: bool,
    /// The link.
    pub link: LinkState,
    /// Messages acknowledged by the broker since start.
    pub sent: u64,
    /// Connections after the first since start.
    pub reconnects: u64,
    /// The outbox.
    pub outbox: OutboxStats,
    /// Age of the oldest unsent message, seconds.
    pub oldest_unsent_secs: Option<f64>,
}

/// Shared by the publisher and whoever reports on it.
#[derive(Debug)]
pub struct LinkBoard {
    config: UplinkConfig,
    options: MqttOptions,
    outbox: Arc<Outbox>,
    state: Mutex<LinkState>,
    sent: AtomicU64,
    reconnects: AtomicU64,
    /// Set when a session connected; taken when it ends.
    was_connected: AtomicBool,
}

impl LinkBoard {
    /// Checks the settings (reads password and TLS files) and makes the
    /// outbox the store attaches.
    pub fn new(config: &UplinkConfig) -> Result<Arc<Self>, UplinkError> {
        config.validate().map_err(UplinkError::Config)?;
        let (host, port) = config.host_port().map_err(UplinkError::Config)?;
        let mut options = MqttOptions::new(&config.vehicle, host, port);
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
            .set_clean_session(true)
            .set_inflight(config.max_inflight)
            // Frames are ~2 KiB; leave room for large rig records.
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_last_will(LastWill::new(
                message::topic(&config.vehicle, MessageKind::Status),
                super::publisher::status_payload(&config.vehicle, false, Vec::new(), 0),
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(user) = &config.username {
            let password = match (&config.password, &config.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|source| UplinkError::File {
                        field: "uplink.password_file",
                        path: path.clone(),
                        source,
                    })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                (None, None) => String::new(),
            };
            options.set_credentials(user, password);
        }
        if config.uses_tls() {
            options.set_transport(Transport::Tls(super::publisher::tls_files(config)?));
        }
        Ok(Arc::new(Self {
            outbox: Outbox::new(config.outbox()),
            config: config.clone(),
            options,
            state: Mutex::new(LinkState::Connecting),
            sent: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            was_connected: AtomicBool::new(false),
        }))
    }

    /// The settings.
    pub fn config(&self) -> &UplinkConfig {
        &self.config
    }

    pub(super) fn options(&self) -> &MqttOptions {
        &self.options
    }

    /// The outbox the store attaches ([`Store::attach_outbox`]).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Messages waiting.
    pub fn depth(&self) -> u64 {
        self.outbox.depth()
    }

    fn set(&self, s: LinkState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The link's state.
    pub fn state(&self) -> LinkState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn connecting(&self) {
        if !matches!(self.state(), LinkState::Down { .. }) {
            self.set(LinkState::Connecting);
        }
    }

    pub(super) fn connected(&self) {
        self.was_connected.store(true, Ordering::Relaxed);
        metrics::gauge!(m::UPLINK_CONNECTED).set(1.0);
        self.set(LinkState::Connected { since: now() });
    }

    pub(super) fn take_connected_flag(&self) -> bool {
        self.was_connected.swap(false, Ordering::Relaxed)
    }

    pub(super) fn down(&self, error: String) {
        metrics::gauge!(m::UPLINK_CONNECTED).set(0.0);
        let since = match self.state() {
            LinkState::Down { since, .. } => since,
            _ => now(),
        };
        self.set(LinkState::Down { error, since });
    }

    pub(super) fn stopped(&self) {
        metrics::gauge!(m::UPLINK_CONNECTED).set(0.0);
        self.set(LinkState::Stopped);
    }

    pub(super) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Outbox depth and oldest-unsent gauges.
    pub(super) fn update_gauges(&self, store: Option<&Store>) {
        metrics::gauge!(m::UPLINK_OUTBOX_DEPTH).set(self.depth() as f64);
        if let Some(store) = store {
            let age = store
                .outbox_oldest_ms()
                .ok()
                .flatten()
                .map_or(0.0, age_secs);
            metrics::gauge!(m::UPLINK_OLDEST_AGE).set(age);
        }
    }

    /// The report (scans the outbox).
    pub fn report(&self, store: Option<&Store>) -> UplinkReport {
        let outbox = store
            .and_then(|s| s.outbox_stats().ok())
            .unwrap_or_default();
        report(
            &self.config,
            self.state(),
            self.sent.load(Ordering::Relaxed),
            self.reconnects.load(Ordering::Relaxed),
            outbox,
        )
    }
}

/// A report from its parts (also for a store read without a daemon).
pub fn report(
    config: &UplinkConfig,
    link: LinkState,
    sent: u64,
    reconnects: u64,
    outbox: OutboxStats,
) -> UplinkReport {
    UplinkReport {
        vehicle: config.vehicle.clone(),
        broker: config.broker.clone(),
        tls: config.uses_tls(),
        link,
        sent,
        reconnects,
        oldest_unsent_secs: outbox.oldest_ms.map(age_secs),
        outbox,
    }
}

fn age_secs(ms: u64) -> f64 {
    let now = crate::ingest::source::now_ns() / 1_000_000;
    (now.saturating_sub(ms as i64)).max(0) as f64 / 1000.0
}

fn now() -> String {
    crate::search::format_time(crate::ingest::source::now_ns())
}
