//! `roadrep caption IMAGE...`: BLIP captions of still images, decoded as
//! the daemon's `[captions]` settings say (flags override them).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use roadrep::caption::stills;
use roadrep::config::RoadrepConfig;
use roadrep::models::BlipCaptioner;
use serde::Serialize;

use super::cli::CaptionArgs;

/// One captioned image, as printed with `--json`.
#[derive(Debug, Serialize)]
struct CaptionedImage {
    image: PathBuf,
    caption: String,
    ids: Vec<u32>,
}

pub fn run(config_path: Option<&Path>, args: &CaptionArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let mut captions = config.captions.clone();
    if let Some(model) = &args.model {
        captions.model = Some(model.clone());
    }
    if let Some(beams) = args.beams {
        captions.num_beams = beams;
    }
    if let Some(prompt) = &args.prompt {
        captions.prompt = Some(prompt.clone());
    }
    if let Some(n) = args.max_new_tokens {
        captions.max_new_tokens = n;
    }
    if let Some(p) = args.precision {
        captions.precision = p;
    }
    captions.validate().map_err(anyhow::Error::msg)?;
    let Some(dir) = &captions.model else {
        bail!("no captioner: set [captions] model in the config or pass --model DIR");
    };
    let runtime = super::ort_runtime(&config)?;
    // A one-shot command has the machine to itself: every configured thread.
    let captioner = BlipCaptioner::load_with_precision(
        dir,
        &runtime,
        config.intra_threads(),
        captions.generation(),
        captions.precision,
    )
    .with_context(|| format!("captioner '{}'", dir.display()))?;

    let mut failed = 0usize;
    let mut results = Vec::new();
    stills::caption_files(&captioner, &args.images, args.batch, |path, r| match r {
        Ok(c) if args.json => results.push(CaptionedImage {
            image: path.to_path_buf(),
            caption: c.text,
            ids: c.ids,
        }),
        Ok(c) => println!("{}\t{}", path.display(), c.text),
        Err(e) => {
            eprintln!("error: {e}");
            failed += 1;
        }
    })
    .context("captioning")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
