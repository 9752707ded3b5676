//! `roadrep fleet init|ingest|search|summary|serve` and `roadrep bench
//! fleet`: the binary's edge of [`roadrep::fleet`].

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use roadrep::fleet::db::Db;
use roadrep::fleet::search::{FleetSearchRequest, FleetSearchResponse, QueryEncoder};
use roadrep::fleet::summary::{FleetSummaryRequest, FleetSummaryResponse};
use roadrep::fleet::{FleetConfig, ingest, schema, serve};

use super::cli_fleet::{BenchFleetArgs, FleetCommand, FleetSearchArgs, FleetSummaryArgs};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(config_path: Option<&Path>, command: &FleetCommand) -> anyhow::Result<ExitCode> {
    let config = FleetConfig::load(config_path)?;
    match command {
        FleetCommand::Init => runtime()?.block_on(init(&config))?,
        FleetCommand::Ingest(args) => {
            let rt = runtime()?;
            if args.init {
                rt.block_on(init(&config))?;
            }
            rt.block_on(ingest::run(&config, shutdown_signal()))?;
        }
        FleetCommand::Search(args) => search(&config, args)?,
        FleetCommand::Summary(args) => summary(&config, args)?,
        FleetCommand::Serve => {
            let encoder = QueryEncoder::load(&config)?;
            runtime()?.block_on(serve::run(&config, encoder, shutdown_signal()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn init(config: &FleetConfig) -> anyhow::Result<()> {
    let db = Db::new(&config.postgres.url)?;
    let mut client = db.connect().await?;
    let (before, after) = schema::migrate(&mut client, &config.index)
        .await
        .map_err(|e| db.name(e))?;
    if before == after {
        eprintln!("fleet schema {after} is current ({})", db.target());
    } else {
        eprintln!("fleet schema {before} -> {after} ({})", db.target());
    }
    Ok(())
}

fn search(config: &FleetConfig, args: &FleetSearchArgs) -> anyhow::Result<()> {
    let req = FleetSearchRequest {
        q: Some(args.text.clone()),
        vehicle: (!args.vehicle.is_empty()).then(|| args.vehicle.join(",")),
        camera: (!args.camera.is_empty()).then(|| args.camera.join(",")),
        from: args.from.clone(),
        to: args.to.clone(),
        tag: (!args.tag.is_empty()).then(|| args.tag.join(",")),
        top: Some(args.top),
        exact: if args.exact {
            Some(true)
        } else {
            args.index.then_some(false)
        },
    };
    let filter = req.filter()?; // bad flags fail before any I/O
    let encoder = QueryEncoder::load(config)?;
    let query = encoder.embed(req.text()?)?;
    let db = Db::new(&config.postgres.url)?;
    let found = runtime()?.block_on(async {
        let mut client = db.connect().await?;
        roadrep::fleet::search::search_frames(
            &mut client,
            encoder.fingerprint(),
            &query,
            &filter,
            &config.index,
        )
        .await
        .map_err(|e| db.name(e))
    })?;
    if args.json {
        let response = FleetSearchResponse {
            model: encoder.fingerprint().to_string(),
            found,
        };
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else if found.hits.is_empty() {
        eprintln!("no matching frames");
    } else {
        for h in &found.hits {
            println!("{}", h.line());
        }
    }
    Ok(())
}

fn summary(config: &FleetConfig, args: &FleetSummaryArgs) -> anyhow::Result<()> {
    let req = FleetSummaryRequest {
        vehicle: Some(args.vehicle.clone()),
        camera: (!args.camera.is_empty()).then(|| args.camera.join(",")),
        from: args.from.clone(),
        to: args.to.clone(),
        q: args.caption.clone(),
        top: args.top,
    };
    let db = Db::new(&config.postgres.url)?;
    let segments = runtime()?.block_on(async {
        let client = db.connect().await?;
        roadrep::fleet::summary::summary(&client, &req)
            .await
            .map_err(|e| db.name(e))
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&FleetSummaryResponse { segments })?
        );
    } else if segments.is_empty() {
        eprintln!("no segments of {} in that range", args.vehicle);
    } else {
        for s in &segments {
            println!("{}", s.line);
        }
    }
    Ok(())
}

pub fn run_bench(config_path: Option<&Path>, args: &BenchFleetArgs) -> anyhow::Result<ExitCode> {
    let url = match &args.url {
        Some(u) => u.clone(),
        None => FleetConfig::load(config_path)?.postgres.url,
    };
    let settings = roadrep::bench::fleet::FleetBenchSettings {
        url,
        frames: args.frames,
        dim: args.dim,
        vehicles: args.vehicles.max(1),
        cameras: args.cameras.max(1),
        queries: args.queries.max(1),
        rare: args.rare,
        batch: args.batch.max(1),
        seed: args.seed,
        keep: args.keep,
        ef_search: args.ef_search.iter().map(|&e| e.clamp(1, 1000)).collect(),
        exact_below: args
            .exact_below
            .unwrap_or(roadrep::fleet::config::IndexConfig::default().exact_below),
    };
    let report = runtime()?.block_on(roadrep::bench::fleet::bench_fleet(&settings))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
