//! `trainer autocaption`: flags and the glue to
//! `roadrep::trainer::autocaption` (BLIP captions of an image set as a
//! training manifest).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use roadrep::caption::Captioner;
use roadrep::config::RoadrepConfig;
use roadrep::models::{BlipCaptioner, OrtRuntime};
use roadrep::trainer::autocaption::{self, Output};

/// `trainer autocaption`.
#[derive(Args)]
pub struct AutocaptionArgs {
    /// Caption the images under this folder (recursively, sorted by path).
    #[arg(
        long,
        required_unless_present = "manifest",
        conflicts_with = "manifest"
    )]
    images: Option<PathBuf>,
    /// Caption the images of a JSONL manifest (`"image"` relative to it;
    /// its `"labels"` are carried over), e.g. `roadrep export-frames`'s
    /// frames.jsonl.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Output JSONL (`{"image", "caption", "labels"?, "model"}`, images
    /// relative to its folder); an existing one is resumed.
    #[arg(long)]
    out: PathBuf,
    /// BLIP model directory [default: `[captions] model` of the roadrep config].
    #[arg(long)]
    model: Option<PathBuf>,
    /// roadrep config whose `[captions]` gives the defaults [default:
    /// $ROADREP_CONFIG, else config/roadrep.toml if present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Images per model run: one vision-encoder run and one decoding loop
    /// whose decoder runs advance all of them by a token (captions as one
    /// at a time; see BENCHMARKS.md "BLIP captions").
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Beam width (1 = greedy) [default: `[captions] num_beams`].
    #[arg(long)]
    beams: Option<usize>,
    /// Text every caption starts with [default: `[captions] prompt`].
    #[arg(long)]
    prompt: Option<String>,
    /// Most tokens after the prompt [default: `[captions] max_new_tokens`].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Try at most this many images the output lacks in this run (bad ones
    /// count; the rest wait for the next run).
    #[arg(long)]
    limit: Option<usize>,
    /// ONNX Runtime threads [default: `[models] intra_threads`, 0 = all cores].
    #[arg(long)]
    intra_threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: AutocaptionArgs) -> Result<()> {
    let config = RoadrepConfig::load(a.config.as_deref())?;
    let mut captions = config.captions.clone();
    if let Some(m) = &a.model {
        captions.model = Some(m.clone());
    }
    if let Some(b) = a.beams {
        captions.num_beams = b;
    }
    if let Some(p) = &a.prompt {
        captions.prompt = Some(p.clone());
    }
    if let Some(n) = a.max_new_tokens {
        captions.max_new_tokens = n;
    }
    captions.validate().map_err(anyhow::Error::msg)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let Some(dir) = &captions.model else {
        bail!("no captioner: pass --model BLIP_DIR or set [captions] model in the roadrep config");
    };
    let sources = match (&a.images, &a.manifest) {
        (Some(d), _) => autocaption::images_in_dir(d)?,
        (None, Some(m)) => autocaption::images_in_manifest(m)?,
        (None, None) => bail!("--images DIR or --manifest FILE"),
    };
    let runtime = OrtRuntime::load(config.models.ort_library.as_deref())?
        .with_spinning(config.models.ort_spinning);
    let threads = match a.intra_threads {
        Some(0) | None => config.intra_threads(),
        Some(n) => n,
    };
    let captioner = BlipCaptioner::load_with_precision(
        dir,
        &runtime,
        threads,
        captions.generation(),
        captions.precision,
    )
    .with_context(|| format!("captioner '{}'", dir.display()))?;
    let mut out = Output::open(&a.out, captioner.fingerprint())?;
    if out.cut_bytes > 0 {
        tracing::warn!(
            file = %a.out.display(),
            bytes = out.cut_bytes,
            "Cut off a torn last line (an interrupted run)."
        );
    }
    if out.other_models > 0 {
        tracing::warn!(
            lines = out.other_models,
            "The output has captions of another model; they are kept and those images captioned again."
        );
    }
    let todo = sources.iter().filter(|s| !out.is_done(&s.image)).count();
    let total = a.limit.map_or(todo, |l| l.min(todo));
    let bar = progress_bar(!a.quiet && std::io::stderr().is_terminal(), total as u64);
    let started = Instant::now();
    let summary = autocaption::run(
        &captioner,
        &sources,
        &mut out,
        a.batch,
        a.limit,
        || bar.inc(1),
        |e| bar.suspend(|| eprintln!("warning: skipped {e}")),
    )?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "captioned {} images in {secs:.1} s ({:.2} captions/s), {} already in '{}', {} bad skipped{}",
        summary.captioned,
        summary.captioned as f64 / secs.max(1e-9),
        summary.already,
        a.out.display(),
        summary.bad,
        if summary.left > 0 {
            format!(", {} left for the next run", summary.left)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn progress_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} images {per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}
