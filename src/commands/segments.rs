//! `roadrep segments` and `roadrep summary`: scene segments of clips or a
//! time range. Through the daemon's API when it runs, else from the store;
//! clips given as files are replayed first (idempotent: stored clips are
//! not decoded again).

use std::path::Path;
use std::process::ExitCode;

use roadrep::config::RoadrepConfig;
use roadrep::search::summary::{SegmentView, SegmentsRequest, views};
use roadrep::store::Store;

use super::cli::{ReplayArgs, SegmentsArgs};
use super::client;

/// How segments are printed.
#[derive(Debug, Clone, Copy)]
pub enum Style {
    /// One row per segment with every field.
    Table,
    /// `00:00-00:42 highway, clear, daytime: "caption"`, per clip.
    Summary,
}

pub fn run(
    config_path: Option<&Path>,
    args: &SegmentsArgs,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let base = SegmentsRequest {
        camera: args.range.camera_param(),
        from: args.range.from.clone(),
        to: args.range.to.clone(),
        source: None,
        q: args.caption.clone(),
        top: args.top,
        rig: args.rig.clone(),
    };
    base.filter().map_err(|e| anyhow::anyhow!("{e}"))?;

    let mut groups: Vec<(Option<String>, Vec<SegmentView>)> = Vec::new();
    let mut ok = true;
    if args.files.is_empty() {
        // An explicit --store is read directly, never a daemon's store.
        let from_api = match &args.store {
            Some(_) => None,
            None => via_api(
                &config.api.listen,
                client::authorization(&config)?.as_deref(),
                &base,
            )?,
        };
        let segments = match from_api {
            Some(s) => s,
            None => {
                let store = open_store(&config, args)?;
                match base
                    .rig_views(&store, &config.segments)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                {
                    Some(v) => v,
                    None => views(&store.segments(&base.filter()?)?),
                }
            }
        };
        groups.push((None, segments));
    } else {
        anyhow::ensure!(
            args.range.camera.len() <= 1,
            "give at most one --camera when summarising files"
        );
        let replay_args = ReplayArgs {
            files: args.files.clone(),
            camera: args.range.camera.first().cloned(),
            fps: args.fps,
            decode: None,
            start: Vec::new(),
            rig: None,
            store: args.store.clone(),
        };
        let (report, store) = super::replay::replay_clips(&config, &replay_args)?;
        ok = report.all_ok();
        for f in &report.files {
            if f.error.is_some() {
                continue;
            }
            // By identity (canonical path, size, mtime): the clip may have
            // been replayed under another spelling of its path.
            let identity = roadrep::pipeline::SourceId::of(
                &roadrep::ingest::config::SourceKind::File(f.file.clone()),
            )
            .to_string();
            let req = SegmentsRequest {
                camera: Some(f.camera.clone()),
                source: Some(identity),
                ..base.clone()
            };
            groups.push((
                Some(f.file.display().to_string()),
                views(&store.segments(&req.filter()?)?),
            ));
        }
    }

    if args.json {
        let all: Vec<&SegmentView> = groups.iter().flat_map(|(_, v)| v).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for (file, segments) in &groups {
            print_group(file.as_deref(), segments, style);
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_group(file: Option<&str>, segments: &[SegmentView], style: Style) {
    if segments.is_empty() {
        eprintln!(
            "{}no segments",
            file.map_or(String::new(), |f| format!("{f}: "))
        );
        return;
    }
    let mut current: Option<(&str, &str)> = None;
    for s in segments {
        let key = (s.camera.as_str(), s.source.as_str());
        if current != Some(key) {
            current = Some(key);
            println!("# {} ({}), from {}", s.source, s.camera, s.start);
        }
        match style {
            Style::Summary => println!("{}", s.line),
            Style::Table => {
                let tags: Vec<String> = s
                    .tags
                    .iter()
                    .map(|t| format!("{}={}({:.0}%)", t.set, t.class, t.share * 100.0))
                    .collect();
                println!(
                    "{}  {}  {:>4} frames  keyframe {:.2}s  {}  {}",
                    s.start,
                    s.end,
                    s.frames,
                    s.keyframe_pts_s,
                    tags.join(" "),
                    s.caption
                        .as_deref()
                        .map_or_else(|| format!("({})", s.caption_state), |c| format!("\"{c}\""))
                );
            }
        }
    }
}

/// Asks a running daemon; `None` when nothing listens.
fn via_api(
    listen: &str,
    auth: Option<&str>,
    req: &SegmentsRequest,
) -> anyhow::Result<Option<Vec<SegmentView>>> {
    let url = format!("http://{listen}/api/segments?{}", client::query_string(req));
    let mut request = client::agent(std::time::Duration::from_secs(60)).get(&url);
    if let Some(a) = auth {
        request = request.header("Authorization", a);
    }
    client::answer(listen, request.call())
}

/// Opens the store read-side (the CLIP fingerprint names its embedding tree).
fn open_store(config: &RoadrepConfig, args: &SegmentsArgs) -> anyhow::Result<Store> {
    let manifest = roadrep::models::ModelManifest::read(&config.models.clip)?;
    client::open_store(
        config,
        args.store.as_deref(),
        &manifest.fingerprint,
        manifest.clip.embed_dim,
    )
}
