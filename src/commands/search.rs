//! `roadrep search`: through the daemon's API when it runs (sled admits one
//! process), else straight from the store.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use roadrep::api::{HitView, SearchResponse};
use roadrep::config::RoadrepConfig;
use roadrep::ingest::still;
use roadrep::models::RgbFrame;
use roadrep::search::{self, SearchRequest};
use roadrep::store::{Store, StoreError};

use crate::cli::SearchArgs;

pub fn run(config_path: Option<&Path>, args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let req = SearchRequest {
        q: args.text.clone(),
        min_score: args.min_score,
        top: Some(args.top),
        ..args.filter.to_request()
    };
    req.filter().map_err(|e| anyhow::anyhow!("{e}"))?; // bad flags fail before any I/O

    let hits = match via_api(&config.api.listen, &req, args.image.as_deref())? {
        Some(h) => h,
        None => direct(&config, args, &req)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
    } else if hits.hits.is_empty() {
        eprintln!("no matching frames");
    } else {
        for h in &hits.hits {
            let f = &h.frame;
            let tags: Vec<String> = f
                .tags
                .iter()
                .map(|(s, (c, _))| format!("{s}={c}"))
                .collect();
            println!(
                "{:.4}  {}  {}  {}@{:.2}s  {}",
                h.score,
                f.camera,
                f.time,
                f.source,
                f.pts_s,
                tags.join(" ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks a running daemon; `None` when nothing listens.
fn via_api(
    listen: &str,
    req: &SearchRequest,
    image: Option<&Path>,
) -> anyhow::Result<Option<SearchResponse>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_millis(500)))
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into();
    let query = serde_urlencoded(req);
    let result = match image {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("'{}'", path.display()))?;
            agent
                .post(format!("http://{listen}/api/search/image?{query}"))
                .send(&bytes[..])
        }
        None => agent
            .get(format!("http://{listen}/api/search?{query}"))
            .call(),
    };
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

pub(crate) fn serde_urlencoded<T: serde::Serialize>(req: &T) -> String {
    let v = serde_json::to_value(req).expect("a request serialises");
    let mut parts = Vec::new();
    for (k, v) in v.as_object().into_iter().flatten() {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        parts.push(format!("{k}={}", percent_encode(&s)));
    }
    parts.join("&")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// No daemon: open the store and the model here.
fn direct(
    config: &RoadrepConfig,
    args: &SearchArgs,
    req: &SearchRequest,
) -> anyhow::Result<SearchResponse> {
    let model = super::load_model(config)?;
    let path = args
        .store
        .clone()
        .unwrap_or_else(|| config.store.path.clone());
    anyhow::ensure!(
        path.exists(),
        "store '{}' does not exist (nothing replayed or recorded yet)",
        path.display()
    );
    let store = match Store::open(&path, model.fingerprint(), model.embed_dim()) {
        Err(StoreError::Locked { path }) => anyhow::bail!(
            "store '{}' is held by a running daemon, but its API at {} does not answer",
            path.display(),
            config.api.listen
        ),
        other => other?,
    };
    let found = match &args.image {
        Some(p) => {
            let img = still::decode_file(p)?;
            search::image_search(&store, &model, &RgbFrame::from_image(&img), req)
        }
        None => search::text_search(&store, &model, req),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(SearchResponse {
        hits: found.into_iter().map(HitView::from).collect(),
    })
}
