//! `roadrep bench clip|replay|caption|search|precision|rig`: figures for BENCHMARKS.md.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use roadrep::bench::{ClipBenchSettings, bench_clip, default_bench_model};
use roadrep::config::RoadrepConfig;

use super::cli::{
    BenchCaptionArgs, BenchClipArgs, BenchPrecisionArgs, BenchReplayArgs, BenchRigArgs,
    BenchSearchArgs, BenchUplinkArgs,
};

pub fn run_clip(config_path: Option<&Path>, args: &BenchClipArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let runtime = super::ort_runtime(&config)?;
    let frame_size =
        parse_size(&args.frame).with_context(|| format!("--frame '{}'", args.frame))?;
    if args.batch.contains(&0) {
        anyhow::bail!("--batch: batch sizes must be at least 1");
    }
    let settings = ClipBenchSettings {
        model_dir: args.model.clone().unwrap_or_else(default_bench_model),
        precisions: args.precision.clone(),
        batch_sizes: args.batch.clone(),
        min_time: Duration::from_secs_f64(args.seconds.max(0.0)),
        intra_threads: args.threads.unwrap_or_else(|| config.intra_threads()),
        frame_size,
    };
    eprintln!("benchmarking {} ...", settings.model_dir.display());
    let report = bench_clip(&runtime, &settings, |line| eprintln!("  {line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = s.split_once('x').context("expected WIDTHxHEIGHT")?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    anyhow::ensure!(w > 0 && h > 0, "width and height must be positive");
    Ok((w, h))
}

pub fn run_replay(config_path: Option<&Path>, args: &BenchReplayArgs) -> anyhow::Result<ExitCode> {
    let mut config = RoadrepConfig::load(config_path)?;
    config.models.clip = args.model.clone().unwrap_or_else(default_bench_model);
    config.models.precision = args.precision;
    let parts = super::load_parts(
        &config,
        &std::env::temp_dir().join(format!("roadrep-bench-open-{}", std::process::id())),
    )?;
    drop(parts.store);
    let settings = roadrep::bench::ReplayBenchSettings {
        clip: args.clip.clone(),
        generate_secs: args.seconds,
        sample_fps: args.fps,
        decode: args.decode,
        batcher: config.batcher.clone(),
        thumbnail_width: args.thumbnail_width.unwrap_or(config.store.thumbnail_width),
        keyframe_width: args.keyframe_width.unwrap_or(config.store.keyframe_width),
    };
    eprintln!(
        "benchmarking replay with {} ...",
        config.models.clip.display()
    );
    let report =
        roadrep::bench::bench_replay(parts.model, parts.tagger, &settings, |l| eprintln!("  {l}"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("roadrep-bench-open-{}", std::process::id())),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_caption(
    config_path: Option<&Path>,
    args: &BenchCaptionArgs,
) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let runtime = super::ort_runtime(&config)?;
    anyhow::ensure!(
        args.runs > 0 && args.tokens > 0 && !args.threads.contains(&0) && !args.batch.contains(&0),
        "--runs, --tokens, --threads and --batch must be at least 1"
    );
    let dir = args
        .model
        .clone()
        .unwrap_or_else(roadrep::bench::caption::default_caption_model);
    eprintln!("benchmarking {} ...", dir.display());
    let report = roadrep::bench::caption::bench_caption(
        &runtime,
        &dir,
        &args.threads,
        &args.precision,
        &args.batch,
        args.runs,
        args.tokens,
        |line| eprintln!("  {line}"),
    )
    .with_context(|| format!("'{}'", dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_search(config_path: Option<&Path>, args: &BenchSearchArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    anyhow::ensure!(
        args.frames > 0 && args.dim > 0 && args.cameras > 0 && args.queries > 0,
        "--frames, --dim, --cameras and --queries must be at least 1"
    );
    anyhow::ensure!(
        args.filter_selectivity > 0.0 && args.filter_selectivity <= 1.0,
        "--filter-selectivity must be in (0, 1]"
    );
    let settings = roadrep::bench::search::SearchBenchSettings {
        frames: args.frames,
        dim: args.dim,
        cameras: args.cameras,
        queries: args.queries,
        filter_selectivity: args.filter_selectivity,
        exact_queries: args.exact_queries,
        probe_lists: args.probe_lists.unwrap_or(config.search.probe_lists),
        dir: args.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("roadrep-bench-search-{}", std::process::id()))
        }),
        seed: args.seed,
    };
    let report = roadrep::bench::search::bench_search(&settings, |l| eprintln!("  {l}"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_precision(
    config_path: Option<&Path>,
    args: &BenchPrecisionArgs,
) -> anyhow::Result<ExitCode> {
    use roadrep::bench::precision::{PrecisionBenchSettings, bench_precision};
    let config = RoadrepConfig::load(config_path)?;
    let labels_path = args.labels.as_ref().unwrap_or(&config.tagging.labels);
    let labels = roadrep::tagging::LabelSets::from_file(labels_path)?;
    let inputs = if args.images.is_empty() {
        vec![std::path::PathBuf::from("../shared/realdata")]
    } else {
        args.images.clone()
    };
    let settings = PrecisionBenchSettings {
        model_dir: args.model.clone().unwrap_or_else(default_bench_model),
        inputs,
        intra_threads: config.intra_threads(),
        batch: config.batcher.max_frames,
        cache_dir: Some(super::cache_dir(&config)),
    };
    let runtime = super::ort_runtime(&config)?;
    let report = bench_precision(&settings, &labels, &runtime)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.to_markdown());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_rig(config_path: Option<&Path>, args: &BenchRigArgs) -> anyhow::Result<ExitCode> {
    let mut config = RoadrepConfig::load(config_path)?;
    config.models.clip = args.model.clone().unwrap_or_else(default_bench_model);
    config.models.precision = args.precision;
    anyhow::ensure!(
        args.fps > 0.0 && args.fps <= 120.0,
        "--fps must be in (0, 120]"
    );
    let fusion_dir = args.fusion.clone().unwrap_or_else(|| {
        let full = config.models.clip.ends_with("clip-random-full");
        std::path::PathBuf::from(if full {
            "models/fusion-random-full"
        } else {
            "models/fusion-tiny"
        })
    });
    let clips = args
        .clips
        .iter()
        .map(|c| {
            let (role, file) = c
                .split_once('=')
                .with_context(|| format!("--clips '{c}': expected ROLE=FILE"))?;
            Ok((role.to_string(), std::path::PathBuf::from(file)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let open_dir =
        std::env::temp_dir().join(format!("roadrep-bench-rig-open-{}", std::process::id()));
    let parts = super::load_parts(&config, &open_dir)?;
    drop(parts.store);
    let _ = std::fs::remove_dir_all(&open_dir);
    let runtime = super::ort_runtime(&config)?;
    // As the pipeline opens it (`load_fuser`): one intra-op thread.
    let fusion = roadrep::fuse::FusionModel::open_with(
        &fusion_dir,
        &runtime,
        &roadrep::fuse::FusionOptions {
            intra_threads: 1,
            verified_files_dir: Some(super::cache_dir(&config)),
        },
    )
    .with_context(|| format!("--fusion '{}'", fusion_dir.display()))?;
    let settings = roadrep::bench::rig::RigBenchSettings {
        views: args.views,
        records: args.records,
        batch_sizes: args.batch.clone(),
        reps: args.reps,
        clips,
        generate_roles: args.rig_clips,
        generate_secs: args.seconds,
        sample_fps: args.fps,
        replay_runs: args.replay_runs,
        batcher: config.batcher.clone(),
    };
    eprintln!(
        "benchmarking rig records with {} and {} ...",
        config.models.clip.display(),
        fusion_dir.display()
    );
    let report = roadrep::bench::rig::bench_rig(
        parts.model,
        parts.tagger,
        std::sync::Arc::new(fusion),
        &settings,
        |l| eprintln!("  {l}"),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_uplink(config_path: Option<&Path>, args: &BenchUplinkArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    anyhow::ensure!(
        args.frames > 0 && args.dim > 0,
        "--frames and --dim must be at least 1"
    );
    roadrep::uplink::message::check_vehicle_id(&args.vehicle)?;
    let settings = roadrep::bench::uplink::UplinkBenchSettings {
        frames: args.frames,
        dim: args.dim,
        batch: args.batch,
        segment_every: args.segment_every,
        vehicle: args.vehicle.clone(),
        dir: args.dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let labels = roadrep::tagging::LabelSets::from_file(&config.tagging.labels)?;
    let report = roadrep::bench::uplink::bench_uplink(&settings, &labels)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", roadrep::bench::uplink::markdown(&report));
    }
    Ok(ExitCode::SUCCESS)
}
