//! `roadrep bench precision`: the INT8 image encoder against the fp32 one on
//! the same images (real frames by default): how often each label set's top
//! class agrees, how far the scores and embeddings move, and what each
//! costs per image. The text side (class embeddings) is the same for both.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::ingest::still;
use crate::models::{ClipModel, ClipOptions, ImagePrecision, ModelError, OrtRuntime, RgbFrame};
use crate::tagging::{LabelSets, SceneTagger, SetScores, TextEmbeddingCache};

/// What `bench precision` compares.
#[derive(Debug, Clone)]
pub struct PrecisionBenchSettings {
    pub model_dir: PathBuf,
    /// Image files, or directories searched for `.jpg`, `.jpeg`, `.png`.
    pub inputs: Vec<PathBuf>,
    pub intra_threads: usize,
    /// Images per encoder run.
    pub batch: usize,
    /// Cache directory (class embeddings, verified model files).
    pub cache_dir: Option<PathBuf>,
}

/// Agreement of one label set.
#[derive(Debug, Clone, Serialize)]
pub struct SetAgreement {
    pub set: String,
    /// Images whose top class is the same with both encoders.
    pub agree: usize,
    pub images: usize,
    /// Mean |p_fp32 - p_int8| of the fp32 top class.
    pub mean_top_score_diff: f32,
    /// Images whose fp32 top class leads the runner-up by less than twice
    /// the largest change of a top class's probability seen: where a flip
    /// is within the quantisation noise.
    pub close_calls: usize,
}

/// Results of `bench precision`.
#[derive(Debug, Clone, Serialize)]
pub struct PrecisionReport {
    pub model: String,
    pub images: usize,
    /// Images that could not be read, with the reason.
    pub skipped: Vec<String>,
    pub sets: Vec<SetAgreement>,
    /// Images whose top class agrees in every set.
    pub all_sets_agree: usize,
    /// Cosine similarity of the two embeddings of an image: mean, lowest.
    pub embedding_cosine_mean: f32,
    pub embedding_cosine_min: f32,
    /// Encoder time per image (preprocessing excluded), ms.
    pub fp32_ms_per_image: f64,
    pub int8_ms_per_image: f64,
}

/// Errors of `bench precision`.
#[derive(Debug, thiserror::Error)]
pub enum PrecisionBenchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tagging(#[from] crate::tagging::TaggingError),
    #[error("'{path}': {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no images found in {0}")]
    NoImages(String),
}

/// Image files under `inputs`, sorted.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, PrecisionBenchError> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut out)?;
        } else if input.exists() {
            out.push(input.clone());
        } else {
            return Err(PrecisionBenchError::Io {
                path: input.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
    }
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PrecisionBenchError> {
    let io = |source| PrecisionBenchError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Embeds every image with both encoders and compares their tags.
pub fn bench_precision(
    settings: &PrecisionBenchSettings,
    labels: &LabelSets,
    runtime: &OrtRuntime,
) -> Result<PrecisionReport, PrecisionBenchError> {
    let images = collect_images(&settings.inputs)?;
    if images.is_empty() {
        let names: Vec<String> = settings
            .inputs
            .iter()
            .map(|p| format!("'{}'", p.display()))
            .collect();
        return Err(PrecisionBenchError::NoImages(names.join(", ")));
    }
    let options = |precision| ClipOptions {
        precision,
        intra_threads: settings.intra_threads,
        load_text_encoder: precision == ImagePrecision::Fp32,
        verified_files_dir: settings.cache_dir.clone(),
    };
    let dir = &settings.model_dir;
    let fp32 = ClipModel::load(dir, runtime, &options(ImagePrecision::Fp32))?;
    let int8 = ClipModel::load(dir, runtime, &options(ImagePrecision::Int8))?;
    let cache = settings.cache_dir.clone().map(TextEmbeddingCache::new);
    let tagger = SceneTagger::new(&fp32, labels, cache.as_ref())?;

    let mut skipped = Vec::new();
    let mut pairs: Vec<(Vec<SetScores>, Vec<SetScores>, f32)> = Vec::new();
    let (mut fp32_s, mut int8_s) = (0.0, 0.0);
    for chunk in images.chunks(settings.batch.max(1)) {
        let mut decoded = Vec::new();
        for path in chunk {
            match still::decode_file(path) {
                Ok(img) => decoded.push(img),
                Err(e) => skipped.push(format!("{e:#}")),
            }
        }
        if decoded.is_empty() {
            continue;
        }
        let frames: Vec<RgbFrame<'_>> = decoded.iter().map(RgbFrame::from_image).collect();
        let pixels = fp32.preprocess(&frames)?;
        let t = Instant::now();
        let a = fp32.get_image_features(pixels.view())?;
        fp32_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = int8.get_image_features(pixels.view())?;
        int8_s += t.elapsed().as_secs_f64();
        for (x, y) in a.rows().into_iter().zip(b.rows()) {
            let cos = x.dot(&y) / (x.dot(&x).sqrt() * y.dot(&y).sqrt());
            pairs.push((tagger.tag(x), tagger.tag(y), cos));
        }
    }
    let n = pairs.len();
    let sets = labels
        .sets
        .iter()
        .enumerate()
        .map(|(i, set)| agreement(&set.name, pairs.iter().map(|(a, b, _)| (&a[i], &b[i]))))
        .collect();
    let all_sets_agree = pairs
        .iter()
        .filter(|(a, b, _)| a.iter().zip(b).all(|(x, y)| x.top == y.top))
        .count();
    let cosines: Vec<f32> = pairs.iter().map(|p| p.2).collect();
    let per_image = |s: f64| if n == 0 { 0.0 } else { s * 1e3 / n as f64 };
    Ok(PrecisionReport {
        model: fp32.manifest().name.clone(),
        images: n,
        skipped,
        sets,
        all_sets_agree,
        embedding_cosine_mean: cosines.iter().sum::<f32>() / n.max(1) as f32,
        embedding_cosine_min: cosines.iter().copied().fold(f32::INFINITY, f32::min),
        fp32_ms_per_image: per_image(fp32_s),
        int8_ms_per_image: per_image(int8_s),
    })
}

fn agreement<'a>(
    set: &str,
    pairs: impl Iterator<Item = (&'a SetScores, &'a SetScores)>,
) -> SetAgreement {
    let pairs: Vec<_> = pairs.collect();
    let score = |s: &SetScores, class: &str| {
        s.scores
            .iter()
            .find(|(c, _)| c == class)
            .map_or(0.0, |(_, p)| *p)
    };
    let diffs: Vec<f32> = pairs
        .iter()
        .map(|(a, b)| (a.top_score - score(b, &a.top)).abs())
        .collect();
    let largest = diffs.iter().copied().fold(0.0, f32::max);
    let close_calls = pairs
        .iter()
        .filter(|(a, _)| {
            let runner_up = a
                .scores
                .iter()
                .filter(|(c, _)| *c != a.top)
                .map(|(_, p)| *p)
                .fold(0.0, f32::max);
            a.top_score - runner_up < 2.0 * largest
        })
        .count();
    SetAgreement {
        set: set.to_string(),
        agree: pairs.iter().filter(|(a, b)| a.top == b.top).count(),
        images: pairs.len(),
        mean_top_score_diff: diffs.iter().sum::<f32>() / diffs.len().max(1) as f32,
        close_calls,
    }
}

impl PrecisionReport {
    /// The report as a BENCHMARKS.md table.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "{} images, model {}: embeddings' cosine fp32 vs int8 mean {:.4}, lowest {:.4}; \
             image encoder {:.1} ms/image fp32, {:.1} ms/image int8 ({:.2}x); every set's top \
             class the same in {} of {} images.\n\n\
             | label set | top class agrees | mean change of the top class's probability | close calls |\n\
             |---|---:|---:|---:|\n",
            self.images,
            self.model,
            self.embedding_cosine_mean,
            self.embedding_cosine_min,
            self.fp32_ms_per_image,
            self.int8_ms_per_image,
            self.fp32_ms_per_image / self.int8_ms_per_image.max(1e-9),
            self.all_sets_agree,
            self.images,
        );
        for s in &self.sets {
            out.push_str(&format!(
                "| {} | {}/{} ({:.0}%) | {:.4} | {} |\n",
                s.set,
                s.agree,
                s.images,
                100.0 * s.agree as f64 / s.images.max(1) as f64,
                s.mean_top_score_diff,
                s.close_calls
            ));
        }
        for s in &self.skipped {
            out.push_str(&format!("\nskipped: {s}"));
        }
        out
    }
}
