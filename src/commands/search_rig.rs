//! `roadrep search --rig NAME TEXT`: a rig's records ranked by their fused
//! embedding, through the daemon's API when it runs, else from the store.

use std::process::ExitCode;

use roadrep::config::RoadrepConfig;
use roadrep::search::SearchRequest;
use roadrep::search::rigs::{RigSearchResponse, rig_text_search};

use super::cli::SearchArgs;
use super::client;

pub fn run(
    config: &RoadrepConfig,
    args: &SearchArgs,
    req: &SearchRequest,
    auth: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let listen = &config.api.listen;
    let agent = client::agent(std::time::Duration::from_secs(120));
    let mut r = agent.get(format!(
        "http://{listen}/api/search?{}",
        client::query_string(req)
    ));
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    let found: RigSearchResponse = match client::answer(listen, r.call())? {
        Some(h) => h,
        None => {
            let model = super::load_model(config)?;
            let store = client::open_store(
                config,
                args.store.as_deref(),
                model.fingerprint(),
                model.embed_dim(),
            )?;
            RigSearchResponse {
                rig_hits: rig_text_search(&store, &model, req)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            }
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(ExitCode::SUCCESS);
    }
    if found.rig_hits.is_empty() {
        eprintln!("no matching rig records");
    }
    for h in &found.rig_hits {
        let tags: Vec<String> = h
            .tags
            .iter()
            .map(|(s, (c, _))| format!("{s}={c}"))
            .collect();
        let present = h.views.iter().filter(|v| v.present).count();
        println!(
            "{:.4}  {}  {}  {present}/{} views  {}",
            h.score,
            h.rig,
            h.time,
            h.views.len(),
            tags.join(" ")
        );
        for v in &h.views {
            match v.offset_ms {
                Some(off) => {
                    let tags: Vec<String> = v
                        .tags
                        .iter()
                        .map(|(s, (c, _))| format!("{s}={c}"))
                        .collect();
                    println!(
                        "    {:<12} {:+7.1} ms  {}  {}",
                        v.role,
                        off,
                        v.camera,
                        tags.join(" ")
                    );
                }
                None => println!("    {:<12} absent", v.role),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
