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

use super::cli::SearchArgs;
use super::client;

pub fn run(config_path: Option<&Path>, args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let req = SearchRequest {
        q: args.text.clone(),
        min_score: args.min_score,
        top: Some(args.top),
        rig: args.rig.clone(),
        views: (!args.views.is_empty()).then(|| args.views.join(",")),
        ..args.filter.to_request()
    };
    req.filter().map_err(|e| anyhow::anyhow!("{e}"))?; // bad flags fail before any I/O

    let auth = client::authorization(&config)?;
    if req.rig.is_some() {
        req.rig_filter().map_err(|e| anyhow::anyhow!("{e}"))?;
        return super::search_rig::run(&config, args, &req, auth.as_deref());
    }
    let hits = match via_api(
        &config.api.listen,
        auth.as_deref(),
        &req,
        args.image.as_deref(),
    )? {
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
    auth: Option<&str>,
    req: &SearchRequest,
    image: Option<&Path>,
) -> anyhow::Result<Option<SearchResponse>> {
    let agent = client::agent(std::time::Duration::from_secs(120));
    let query = client::query_string(req);
    let result = match image {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("'{}'", path.display()))?;
            let mut r = agent.post(format!("http://{listen}/api/search/image?{query}"));
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.send(&bytes[..])
        }
        None => {
            let mut r = agent.get(format!("http://{listen}/api/search?{query}"));
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
    };
    client::answer(listen, result)
}

/// No daemon: open the store and the model here.
fn direct(
    config: &RoadrepConfig,
    args: &SearchArgs,
    req: &SearchRequest,
) -> anyhow::Result<SearchResponse> {
    let model = super::load_model(config)?;
    let store = client::open_store(
        config,
        args.store.as_deref(),
        model.fingerprint(),
        model.embed_dim(),
    )?;
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
