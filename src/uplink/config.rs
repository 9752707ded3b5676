//! `[uplink]`: where a vehicle ships what it found, and how much it keeps
//! while the link is down.

use std::path::PathBuf;

use serde::Deserialize;

/// CA bundle used for `tls = true` without `ca`: the system's (Debian's
/// ca-certificates), so a broker with a public certificate needs no file.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `[uplink]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The vehicle's id: the MQTT client id and the topic level
    /// (`roadrep/<vehicle>/...`).
    pub vehicle: String,
    /// The MQTT broker, `host:port`.
    pub broker: String,
    /// Username, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (prefer `password_file`).
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to the broker. On by itself when `ca` or a client certificate is
    /// set.
    #[serde(default)]
    pub tls: bool,
    /// CA certificate(s) (PEM) the broker's certificate must chain to;
    /// default the system bundle.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Bound of the outbox. When full, frame messages are dropped oldest
    /// first (counted); segment and rig messages are kept.
    #[serde(default = "default_max_outbox_mb")]
    pub max_outbox_mb: u64,
    /// Publish per-frame messages (embeddings, tags). Off: only segments,
    /// rigs and status.
    #[serde(default = "yes")]
    pub frames: bool,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Messages sent but not yet acknowledged, at most.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Longest wait between reconnection attempts, seconds (the wait
    /// doubles from 1 s up to this).
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// How often the retained status is refreshed, seconds.
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
    /// `roadrep replay`: how long to keep sending after the last clip
    /// before exiting (what is left stays in the outbox for the next run).
    #[serde(default = "default_drain")]
    pub drain_secs: u64,
}

fn yes() -> bool {
    true
}
fn default_max_outbox_mb() -> u64 {
    256
}
fn default_keep_alive() -> u64 {
    30
}
fn default_max_inflight() -> u16 {
    100
}
fn default_max_backoff() -> u64 {
    30
}
fn default_status_interval() -> u64 {
    60
}
fn default_drain() -> u64 {
    30
}

impl UplinkConfig {
    /// Checks values a broker would refuse later, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        super::message::check_vehicle_id(&self.vehicle)
            .map_err(|e| format!("uplink.vehicle: {e}"))?;
        self.host_port()?;
        if self.max_outbox_mb == 0 {
            return Err("uplink.max_outbox_mb must be at least 1".into());
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            return Err(format!(
                "uplink.keep_alive_secs {} must be in 5..=3600",
                self.keep_alive_secs
            ));
        }
        if self.max_inflight == 0 {
            return Err("uplink.max_inflight must be at least 1".into());
        }
        if self.max_backoff_secs == 0 || self.status_interval_secs == 0 {
            return Err(
                "uplink.max_backoff_secs and status_interval_secs must be at least 1".into(),
            );
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("uplink.client_cert and uplink.client_key go together".into());
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err("uplink: set password or password_file, not both".into());
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Err("uplink: a password needs uplink.username".into());
        }
        Ok(())
    }

    /// The broker's host and port.
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let bad = || {
            format!(
                "uplink.broker '{}' must be host:port (like mqtt.example.com:8883)",
                self.broker
            )
        };
        let (host, port) = self.broker.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok((host.to_string(), port))
    }

    /// Whether the link is TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls || self.ca.is_some() || self.client_cert.is_some()
    }

    /// Resolves relative paths against the config file's directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in [
            &mut self.password_file,
            &mut self.ca,
            &mut self.client_cert,
            &mut self.client_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The outbox settings the store needs.
    pub fn outbox(&self) -> crate::store::OutboxSettings {
        crate::store::OutboxSettings {
            vehicle: self.vehicle.clone(),
            max_bytes: self.max_outbox_mb.saturating_mul(1 << 20),
            frames: self.frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<UplinkConfig, String> {
        let c: UplinkConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_bad_values_name_the_field() {
        let c = parse("vehicle = \"v7\"\nbroker = \"127.0.0.1:1883\"\n").unwrap();
        assert_eq!(c.host_port().unwrap(), ("127.0.0.1".into(), 1883));
        assert!(!c.uses_tls() && c.frames && c.max_outbox_mb == 256);
        for (text, field) in [
            ("vehicle = \"v/7\"\nbroker = \"h:1\"\n", "uplink.vehicle"),
            (
                "vehicle = \"v7\"\nbroker = \"nohost\"\n",
                "uplink.broker 'nohost'",
            ),
            (
                "vehicle = \"v7\"\nbroker = \"h:1\"\nmax_outbox_mb = 0\n",
                "uplink.max_outbox_mb",
            ),
            (
                "vehicle = \"v7\"\nbroker = \"h:1\"\nclient_cert = \"c.pem\"\n",
                "client_key",
            ),
            (
                "vehicle = \"v7\"\nbroker = \"h:1\"\npassword = \"p\"\n",
                "username",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(field), "{e}");
        }
        let c = parse("vehicle = \"v7\"\nbroker = \"h:8883\"\nca = \"ca.pem\"\n").unwrap();
        assert!(c.uses_tls());
    }
}
