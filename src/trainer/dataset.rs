//! Training data: image-caption pairs from a manifest (CSV or JSONL), a
//! BDD100K label file ([`super::bdd100k`]) or class folders; image checks
//! with line numbers; the seeded train/val split; domain-safe augmentation.
//!
//! Manifest formats (paths relative to the manifest's folder):
//! ```text
//! image,caption,labels            # CSV with a header; labels optional,
//! img/0001.jpg,a red square,color=red;shape=square
//! {"image": "img/0001.jpg", "caption": "a red square", "labels": {"color": "red"}}   # JSONL
//! ```
//! `labels` map a label set name (as in `config/labels.toml`) to a class; they
//! feed the zero-shot accuracy of `trainer eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TrainerError;
use super::rng::SplitMix64;
use crate::ingest::still;
use crate::models::{ImagePreprocessor, RgbFrame};

/// One image-caption pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Image file.
    pub image: PathBuf,
    /// Caption (the positive text).
    pub caption: String,
    /// Label set name -> class, for zero-shot accuracy.
    pub labels: BTreeMap<String, String>,
    /// Where the record came from (`file`, 1-based line), for messages.
    pub origin: (PathBuf, Option<usize>),
}

/// What to do with a record whose image is missing or corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnBadRecord {
    /// Log it with its line number and go on without it.
    #[default]
    Skip,
    /// Stop with an error naming the line.
    Fail,
}

/// Dataset formats `--data` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DataFormat {
    /// From the path: a folder is class folders, `.csv`, `.jsonl`, `.json`
    /// (BDD100K labels).
    #[default]
    Auto,
    /// CSV manifest.
    Csv,
    /// JSON Lines manifest.
    Jsonl,
    /// BDD100K label JSON (images next to it or under `--images`).
    Bdd100k,
    /// One folder per class.
    Folders,
}

/// Reads samples in `format` from `path` (records only: images are checked
/// by [`load_images`]).
pub fn read_samples(
    path: &Path,
    format: DataFormat,
    images: Option<&Path>,
    class_templates: &[String],
) -> Result<Vec<Sample>, TrainerError> {
    let format = match format {
        DataFormat::Auto if path.is_dir() => DataFormat::Folders,
        DataFormat::Auto => match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => DataFormat::Csv,
            Some("jsonl") => DataFormat::Jsonl,
            Some("json") => DataFormat::Bdd100k,
            _ => {
                return Err(TrainerError::Dataset {
                    path: path.to_path_buf(),
                    line: None,
                    message: "cannot tell the format from the name: use --data-format".into(),
                });
            }
        },
        f => f,
    };
    match format {
        DataFormat::Csv => read_csv(path),
        DataFormat::Jsonl => read_jsonl(path),
        DataFormat::Bdd100k => super::bdd100k::read_bdd100k(path, images),
        DataFormat::Folders => read_class_folders(path, class_templates),
        DataFormat::Auto => unreachable!("resolved above"),
    }
}

fn base_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn read_text(path: &Path) -> Result<String, TrainerError> {
    std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))
}

/// Parses `set=class;set=class`.
fn parse_label_list(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label '{part}' is not set=class"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Reads a CSV manifest with a header naming `image` and `caption` columns
/// (and optionally `labels`).
pub fn read_csv(path: &Path) -> Result<Vec<Sample>, TrainerError> {
    let text = read_text(path)?;
    let dir = base_dir(path);
    let err = |line: Option<usize>, message: String| TrainerError::Dataset {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| err(Some(1), e.to_string()))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let image_col =
        col("image").ok_or_else(|| err(Some(1), "header has no 'image' column".into()))?;
    let caption_col =
        col("caption").ok_or_else(|| err(Some(1), "header has no 'caption' column".into()))?;
    let labels_col = col("labels");
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize);
            err(line, e.to_string())
        })?;
        let line = record.position().map(|p| p.line() as usize);
        let image = record.get(image_col).unwrap_or("").trim();
        let caption = record.get(caption_col).unwrap_or("").trim();
        if image.is_empty() || caption.is_empty() {
            return Err(err(line, "empty image or caption".into()));
        }
        let labels = match labels_col.and_then(|c| record.get(c)) {
            Some(s) => parse_label_list(s).map_err(|m| err(line, m))?,
            None => BTreeMap::new(),
        };
        out.push(Sample {
            image: dir.join(image),
            caption: caption.to_string(),
            labels,
            origin: (path.to_path_buf(), line),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    image: String,
    caption: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// `roadrep export-frames` names the frame's thumbnail URL; training
    /// reads the image itself.
    #[serde(default, rename = "thumbnail")]
    _thumbnail: Option<String>,
    /// `trainer autocaption` names the captioner's fingerprint.
    #[serde(default, rename = "model")]
    _model: Option<String>,
}

/// Reads a JSON Lines manifest (`{"image", "caption", "labels"?}` per line;
/// blank lines are ignored).
pub fn read_jsonl(path: &Path) -> Result<Vec<Sample>, TrainerError> {
    let text = read_text(path)?;
    let dir = base_dir(path);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: JsonRecord = serde_json::from_str(line).map_err(|e| TrainerError::Dataset {
            path: path.to_path_buf(),
            line: Some(i + 1),
            message: e.to_string(),
        })?;
        if r.image.trim().is_empty() || r.caption.trim().is_empty() {
            return Err(TrainerError::Dataset {
                path: path.to_path_buf(),
                line: Some(i + 1),
                message: "empty image or caption".into(),
            });
        }
        out.push(Sample {
            image: dir.join(r.image.trim()),
            caption: r.caption.trim().to_string(),
            labels: r.labels,
            origin: (path.to_path_buf(), Some(i + 1)),
        });
    }
    Ok(out)
}

/// Default prompt templates for class folders (`{}` = class name).
pub const DEFAULT_CLASS_TEMPLATES: [&str; 1] = ["a photo of a {}."];

/// One sub-folder per class under `root`; the caption is a template filled
/// with the class name (`_` and `-` read as spaces), templates taken in turn.
/// The label set is called `class`.
pub fn read_class_folders(root: &Path, templates: &[String]) -> Result<Vec<Sample>, TrainerError> {
    let templates: Vec<String> = if templates.is_empty() {
        DEFAULT_CLASS_TEMPLATES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        templates.to_vec()
    };
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| TrainerError::io(root, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    let mut out = Vec::new();
    for class_dir in classes {
        let class = class_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let phrase = class.replace(['_', '-'], " ");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .map_err(|e| TrainerError::io(&class_dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for (i, image) in files.into_iter().enumerate() {
            let caption = templates[i % templates.len()].replace("{}", &phrase);
            out.push(Sample {
                origin: (image.clone(), None),
                image,
                caption,
                labels: BTreeMap::from([("class".to_string(), class.clone())]),
            });
        }
    }
    if out.is_empty() {
        return Err(TrainerError::Dataset {
            path: root.to_path_buf(),
            line: None,
            message: "no class folder with files".into(),
        });
    }
    Ok(out)
}

/// Samples whose images decoded, with their resized and cropped RGB bytes
/// (`crop² × 3`, what [`ImagePreprocessor::resize_crop`] gives).
#[derive(Debug, Clone)]
pub struct LoadedDataset {
    /// The usable samples.
    pub samples: Vec<Sample>,
    /// Their cropped RGB pixels, same order.
    pub pixels: Vec<Vec<u8>>,
    /// Records left out (message with file and line), when skipping.
    pub skipped: Vec<String>,
}

/// Decodes and crops every image. A missing or corrupt image is an error
/// naming the record's line, returned or skipped according to `on_bad`.
pub fn load_images(
    samples: Vec<Sample>,
    pre: &ImagePreprocessor,
    on_bad: OnBadRecord,
) -> Result<LoadedDataset, TrainerError> {
    let mut out = LoadedDataset {
        samples: Vec::new(),
        pixels: Vec::new(),
        skipped: Vec::new(),
    };
    for sample in samples {
        // Decode errors already name the image; preprocessing errors do not.
        let decoded = still::decode_file(&sample.image)
            .map_err(|e| e.to_string())
            .and_then(|img| {
                pre.resize_crop(&RgbFrame::from_image(&img))
                    .map_err(|e| format!("'{}': {e}", sample.image.display()))
            });
        match decoded {
            Ok(pixels) => {
                out.samples.push(sample);
                out.pixels.push(pixels);
            }
            Err(message) => {
                let error = TrainerError::Dataset {
                    path: sample.origin.0.clone(),
                    line: sample.origin.1,
                    message,
                };
                match on_bad {
                    OnBadRecord::Fail => return Err(error),
                    OnBadRecord::Skip => {
                        tracing::warn!(%error, "Record skipped.");
                        out.skipped.push(error.to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Indices of a seeded split: `(train, val)`, with `val_fraction` of the
/// samples (at least one when there are two or more samples and the fraction
/// is positive) in validation.
pub fn split(n: usize, val_fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed ^ 0x5EED_5EED).shuffle(&mut idx);
    let mut n_val = (n as f32 * val_fraction).round() as usize;
    if val_fraction > 0.0 && n >= 2 {
        n_val = n_val.clamp(1, n - 1);
    }
    let val = idx.split_off(n - n_val.min(n));
    (idx, val)
}

/// Augmentations; all off by default. Horizontal flips are wrong for signs
/// and for driving-side cues, so they are opt-in.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Flip horizontally with probability 0.5.
    pub hflip: bool,
    /// Multiply brightness by a factor in `1 ± brightness`.
    pub brightness: f32,
}

/// Normalises cropped RGB bytes into `[3, crop, crop]` floats, with the
/// model's mean/std, applying `augment` when a generator is given.
pub fn to_chw(
    rgb: &[u8],
    pre: &ImagePreprocessor,
    augment: &AugmentConfig,
    rng: Option<&mut SplitMix64>,
) -> Vec<f32> {
    let crop = pre.crop_size as usize;
    let (mut flip, mut gain) = (false, 1.0f32);
    if let Some(rng) = rng {
        flip = augment.hflip && rng.next_f32() < 0.5;
        if augment.brightness > 0.0 {
            gain = 1.0 + (rng.next_f32() * 2.0 - 1.0) * augment.brightness;
        }
    }
    let mut out = vec![0f32; 3 * crop * crop];
    for c in 0..3 {
        let (mean, std) = (pre.mean[c], pre.std[c]);
        for y in 0..crop {
            for x in 0..crop {
                let sx = if flip { crop - 1 - x } else { x };
                let mut v = rgb[(y * crop + sx) * 3 + c] as f32;
                if gain != 1.0 {
                    v = (v * gain).round().clamp(0.0, 255.0);
                }
                // Same arithmetic as ImagePreprocessor::preprocess_into.
                out[c * crop * crop + y * crop + x] = (v / 255.0 - mean) / std;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (t1, v1) = split(50, 0.2, 3);
        let (t2, v2) = split(50, 0.2, 3);
        assert_eq!((t1.clone(), v1.clone()), (t2, v2));
        assert_eq!(v1.len(), 10);
        let mut all: Vec<usize> = t1.iter().chain(&v1).copied().collect();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        assert_ne!(split(50, 0.2, 4).1, v1);
        assert_eq!(split(5, 0.0, 1).1.len(), 0);
    }

    #[test]
    fn label_lists_parse() {
        let m = parse_label_list("color=red; shape = square").unwrap();
        assert_eq!(m["color"], "red");
        assert_eq!(m["shape"], "square");
        assert!(parse_label_list("red").is_err());
    }
}
