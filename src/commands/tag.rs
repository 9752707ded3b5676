//! `roadrep tag IMAGE...`: zero-shot scene tags of still images.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use roadrep::config::RoadrepConfig;
use roadrep::ingest::still;
use roadrep::models::{ClipModel, ClipOptions, RgbFrame};
use roadrep::tagging::{LabelSets, SceneTagger, SetScores, TextEmbeddingCache};
use serde::Serialize;

use super::cli::TagArgs;

/// One tagged image, as printed with `--json`.
#[derive(Debug, Serialize)]
struct TaggedImage {
    image: PathBuf,
    width: u32,
    height: u32,
    tags: serde_json::Map<String, serde_json::Value>,
}

pub fn run(config_path: Option<&Path>, args: &TagArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let model_dir = args
        .model
        .clone()
        .unwrap_or_else(|| config.models.clip.clone());
    let labels_path = args
        .labels
        .clone()
        .unwrap_or_else(|| config.tagging.labels.clone());
    let labels = LabelSets::from_file(&labels_path)?;
    let runtime = super::ort_runtime(&config)?;
    let options = ClipOptions {
        precision: args.precision.unwrap_or(config.models.precision),
        intra_threads: config.intra_threads(),
        load_text_encoder: true,
        verified_files_dir: (!args.no_cache).then(|| super::cache_dir(&config)),
    };
    let model = ClipModel::load(&model_dir, &runtime, &options)?;
    let cache = (!args.no_cache).then(|| TextEmbeddingCache::new(super::cache_dir(&config)));
    let tagger = SceneTagger::new(&model, &labels, cache.as_ref())?;
    tracing::info!(source = ?tagger.source(), model = %model.manifest().name, "Tagger ready.");

    let mut failed = 0usize;
    let mut results = Vec::new();
    let rig_views = args
        .rig
        .then(|| super::rig::still_views(&args.images))
        .transpose()?;
    let paths: Vec<PathBuf> = match &rig_views {
        Some(v) => v.iter().map(|v| v.path.clone()).collect(),
        None => args.images.clone(),
    };
    let mut embedded: Vec<(PathBuf, Vec<f32>)> = Vec::new();
    for chunk in paths.chunks(config.batcher.max_frames) {
        // Decode the chunk; a bad file is reported and skipped.
        let mut decoded = Vec::with_capacity(chunk.len());
        for path in chunk {
            match still::decode_file(path) {
                Ok(img) => decoded.push((path, img)),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    failed += 1;
                }
            }
        }
        if decoded.is_empty() {
            continue;
        }
        let frames: Vec<RgbFrame<'_>> = decoded
            .iter()
            .map(|(_, img)| RgbFrame::from_image(img))
            .collect();
        let embeds = model.embed_frames(&frames).context("embedding images")?;
        for ((path, img), embed) in decoded.iter().zip(embeds.rows()) {
            let scores = tagger.tag(embed);
            if args.rig {
                let e = roadrep::tagging::score::l2_normalize(embed);
                embedded.push((path.to_path_buf(), e.to_vec()));
                continue;
            }
            if args.json {
                results.push(to_json(path, img, &scores));
            } else {
                println!("{}", one_line(path, &scores));
            }
        }
    }
    if let Some(views) = rig_views {
        let fuser = super::load_fuser_for(&config, &model_dir, &model)?;
        let rig = super::tag_rig::StillRig::assemble(&config, &views, &embedded, &fuser, &tagger)?;
        rig.print(args.json)?;
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn one_line(path: &Path, scores: &[SetScores]) -> String {
    let tags: Vec<String> = scores
        .iter()
        .map(|s| format!("{}={} ({:.3})", s.set, s.top, s.top_score))
        .collect();
    format!("{}\t{}", path.display(), tags.join("  "))
}

fn to_json(path: &Path, img: &image::RgbImage, scores: &[SetScores]) -> TaggedImage {
    let mut tags = serde_json::Map::new();
    for s in scores {
        let all: serde_json::Map<String, serde_json::Value> = s
            .scores
            .iter()
            .map(|(c, p)| (c.clone(), serde_json::json!(p)))
            .collect();
        tags.insert(
            s.set.clone(),
            serde_json::json!({ "top": s.top, "score": s.top_score, "scores": all }),
        );
    }
    TaggedImage {
        image: path.to_path_buf(),
        width: img.width(),
        height: img.height(),
        tags,
    }
}
