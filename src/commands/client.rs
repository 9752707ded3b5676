//! How query commands reach the data: a running daemon's HTTP API (sled
//! admits one process), else the store itself.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use roadrep::config::RoadrepConfig;
use roadrep::store::{Store, StoreError};

/// The `Authorization` header value for the daemon's API, when the config
/// names a token file that exists (the daemon creates it).
pub fn authorization(config: &RoadrepConfig) -> anyhow::Result<Option<String>> {
    match &config.api.token_file {
        Some(p) if p.exists() => Ok(Some(roadrep::api::auth::ApiToken::read(p)?.header_value())),
        _ => Ok(None),
    }
}

/// An HTTP client for the daemon's API at `listen`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_millis(500)))
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The daemon's answer: `None` when nothing listens, its `{"error"}` as a
/// one-line error, else the parsed body.
pub fn answer<T: serde::de::DeserializeOwned>(
    listen: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> anyhow::Result<Option<T>> {
    let mut resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(None);
        }
        Err(ureq::Error::ConnectionFailed) => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("daemon at {listen}: {e}")),
    };
    let status = resp.status();
    let body: serde_json::Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("daemon at {listen}: bad response"))?;
    if !status.is_success() {
        let msg = body["error"].as_str().unwrap_or("request failed");
        anyhow::bail!("{msg}");
    }
    Ok(Some(
        serde_json::from_value(body).context("daemon response")?,
    ))
}

/// A request as a query string.
pub fn query_string<T: serde::Serialize>(req: &T) -> String {
    let v = serde_json::to_value(req).expect("a request serialises");
    let mut parts = Vec::new();
    for (k, v) in v.as_object().into_iter().flatten() {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        parts.push(format!("{k}={}", roadrep::api::images::percent_encode(&s)));
    }
    parts.join("&")
}

/// Opens the store at `path` (default `store.path`) when no daemon
/// answered, for the model `fingerprint`.
pub fn open_store(
    config: &RoadrepConfig,
    path: Option<&Path>,
    fingerprint: &str,
    embed_dim: usize,
) -> anyhow::Result<Store> {
    let path = path.unwrap_or(&config.store.path);
    anyhow::ensure!(
        path.exists(),
        "store '{}' does not exist (nothing replayed or recorded yet)",
        path.display()
    );
    match Store::open_with_index(path, fingerprint, embed_dim, &config.search) {
        Err(StoreError::Locked { path }) => anyhow::bail!(
            "store '{}' is held by a running daemon, but its API at {} does not answer",
            path.display(),
            config.api.listen
        ),
        other => Ok(other?),
    }
}
