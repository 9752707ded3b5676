//! `trainer autocaption`: BLIP captions of an image set, written as the
//! JSONL manifest `trainer train` reads (`{"image", "caption", "labels"?,
//! "model"}`, image paths relative to the output file's folder, `model` =
//! the captioner's fingerprint).
//!
//! Resumable: every line is written whole and flushed as soon as its
//! caption exists, so a killed run loses at most the line in progress; the
//! next run cuts a torn last line off, skips the images the file already
//! has from the same model and appends the rest.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainerError;
use crate::caption::stills::{self, StillCaptionError};
use crate::caption::{CaptionError, Captioner};
use crate::models::BlipCaptioner;

/// Extensions of the images `--images DIR` takes (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 10] = [
    "jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "ppm", "pgm", "pnm",
];

/// One image to caption, with the labels its manifest gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The file.
    pub image: PathBuf,
    /// Labels carried over from an input manifest.
    pub labels: BTreeMap<String, String>,
}

/// One line of the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Image path relative to the output file's folder.
    pub image: String,
    /// The generated caption.
    pub caption: String,
    /// Labels from the input manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Fingerprint of the captioner.
    pub model: String,
}

/// The images under `dir` (recursively), sorted by path.
pub fn images_in_dir(dir: &Path) -> Result<Vec<Source>, TrainerError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| TrainerError::io(&d, e))? {
            let path = entry.map_err(|e| TrainerError::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(Source {
                    image: path,
                    labels: BTreeMap::new(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(out)
}

/// The images of a JSONL manifest (`"image"` relative to it, `"labels"`
/// kept, other fields ignored), each once, in file order.
pub fn images_in_manifest(path: &Path) -> Result<Vec<Source>, TrainerError> {
    #[derive(Deserialize)]
    struct Line {
        image: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line).map_err(|e| TrainerError::Dataset {
            path: path.to_path_buf(),
            line: Some(i + 1),
            message: e.to_string(),
        })?;
        let image = base.join(l.image.trim());
        if seen.insert(image.clone()) {
            out.push(Source {
                image,
                labels: l.labels,
            });
        }
    }
    Ok(out)
}

/// `path` relative to the directory `base` (both made absolute, symlinks
/// resolved where the file exists), `/`-separated.
pub fn relative_to(base: &Path, path: &Path) -> String {
    let absolute = |p: &Path| {
        p.canonicalize()
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let (base, path) = (absolute(base), absolute(path));
    let b: Vec<Component> = base.components().collect();
    let p: Vec<Component> = path.components().collect();
    let common = b.iter().zip(&p).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".into(); b.len() - common];
    parts.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// The output manifest, opened for appending.
pub struct Output {
    path: PathBuf,
    dir: PathBuf,
    file: std::fs::File,
    model: String,
    done: HashSet<String>,
    /// Lines of this model already in the file.
    pub kept: usize,
    /// Lines of other models (kept; their images are captioned again).
    pub other_models: usize,
    /// Bytes of a torn last line that were cut off.
    pub cut_bytes: u64,
}

impl Output {
    /// Opens (or creates) `path` for the captioner `model`: cuts a torn
    /// last line off and notes which images are done.
    pub fn open(path: &Path, model: &str) -> Result<Self, TrainerError> {
        let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| TrainerError::io(&dir, e))?;
        let (mut done, mut kept, mut other_models, mut cut_bytes) = (HashSet::new(), 0, 0, 0);
        if path.exists() {
            let bytes = std::fs::read(path).map_err(|e| TrainerError::io(path, e))?;
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < bytes.len() {
                cut_bytes = (bytes.len() - whole) as u64;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| TrainerError::io(path, e))?;
                f.set_len(whole as u64)
                    .map_err(|e| TrainerError::io(path, e))?;
            }
            let text = String::from_utf8_lossy(&bytes[..whole]);
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let r: Record = serde_json::from_str(line).map_err(|e| TrainerError::Dataset {
                    path: path.to_path_buf(),
                    line: Some(i + 1),
                    message: e.to_string(),
                })?;
                if r.model == model {
                    done.insert(r.image);
                    kept += 1;
                } else {
                    other_models += 1;
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainerError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            file,
            model: model.to_string(),
            done,
            kept,
            other_models,
            cut_bytes,
        })
    }

    /// How `image` is named in the file.
    pub fn name_of(&self, image: &Path) -> String {
        relative_to(&self.dir, image)
    }

    /// Whether the file has a caption of `image` by this model.
    pub fn is_done(&self, image: &Path) -> bool {
        self.done.contains(&self.name_of(image))
    }

    /// Appends one line, whole, and flushes it.
    pub fn append(&mut self, source: &Source, caption: String) -> Result<(), TrainerError> {
        let record = Record {
            image: self.name_of(&source.image),
            caption,
            labels: source.labels.clone(),
            model: self.model.clone(),
        };
        let mut line = serde_json::to_string(&record).map_err(|e| TrainerError::Dataset {
            path: self.path.clone(),
            line: None,
            message: e.to_string(),
        })?;
        line.push('\n');
        // One write per line: a kill tears at most this line.
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainerError::io(&self.path, e))?;
        self.done.insert(record.image);
        Ok(())
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Lines written now.
    pub captioned: usize,
    /// Images the file already had from this model.
    pub already: usize,
    /// Images that could not be read (each reported through `on_bad`).
    pub bad: usize,
    /// Images left for a later run by `limit`.
    pub left: usize,
}

/// Captions the `sources` the output lacks, trying at most `limit` of them,
/// `batch` per model run, appending each line as it comes;
/// `on_caption` runs after each line, `on_bad` for each unreadable image.
pub fn run(
    captioner: &BlipCaptioner,
    sources: &[Source],
    out: &mut Output,
    batch: usize,
    limit: Option<usize>,
    mut on_caption: impl FnMut(),
    mut on_bad: impl FnMut(&StillCaptionError),
) -> Result<Summary, TrainerError> {
    if out.model != captioner.fingerprint() {
        return Err(TrainerError::Config(format!(
            "'{}' was opened for model {}, not {}",
            out.path.display(),
            out.model,
            captioner.fingerprint()
        )));
    }
    let mut summary = Summary::default();
    let mut todo: Vec<&Source> = Vec::new();
    let mut queued = HashSet::new();
    for s in sources {
        let name = out.name_of(&s.image);
        if out.done.contains(&name) {
            summary.already += 1;
        } else if queued.insert(name) {
            todo.push(s);
        }
    }
    if let Some(limit) = limit.filter(|&l| l < todo.len()) {
        summary.left = todo.len() - limit;
        todo.truncate(limit);
    }
    let paths: Vec<&Path> = todo.iter().map(|s| s.image.as_path()).collect();
    let mut failure: Option<TrainerError> = None;
    let mut next = todo.iter();
    let result = stills::caption_files(captioner, &paths, batch, |_, r| {
        let Some(source) = next.next() else { return };
        if failure.is_some() {
            return;
        }
        match r {
            Ok(c) => match out.append(source, c.text) {
                Ok(()) => {
                    summary.captioned += 1;
                    on_caption();
                }
                Err(e) => failure = Some(e),
            },
            Err(e) => {
                summary.bad += 1;
                on_bad(&e);
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    result.map_err(|e| match e {
        CaptionError::Model(m) => TrainerError::Model(m),
        other => TrainerError::Config(other.to_string()),
    })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::create_dir_all(root.join("img/a")).unwrap();
        std::fs::write(root.join("img/a/x.jpg"), b"").unwrap();
        assert_eq!(
            relative_to(&root.join("out"), &root.join("img/a/x.jpg")),
            "../img/a/x.jpg"
        );
        assert_eq!(
            relative_to(&root.join("img"), &root.join("img/a/x.jpg")),
            "a/x.jpg"
        );
        // A missing file is named lexically.
        assert_eq!(
            relative_to(&root.join("img"), &root.join("img/a/gone.png")),
            "a/gone.png"
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_and_done_images_are_known() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.jsonl");
        std::fs::write(
            &path,
            "{\"image\":\"a.jpg\",\"caption\":\"x\",\"model\":\"m1\"}\n\
             {\"image\":\"b.jpg\",\"caption\":\"y\",\"model\":\"m2\"}\n\
             {\"image\":\"c.jpg\",\"capt",
        )
        .unwrap();
        let mut out = Output::open(&path, "m1").unwrap();
        assert_eq!((out.kept, out.other_models, out.cut_bytes), (1, 1, 22));
        assert!(out.is_done(&d.path().join("a.jpg")));
        assert!(!out.is_done(&d.path().join("b.jpg")));
        let source = Source {
            image: d.path().join("c.jpg"),
            labels: BTreeMap::from([("weather".into(), "rainy".into())]),
        };
        out.append(&source, "a road".into()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with(
            "{\"image\":\"c.jpg\",\"caption\":\"a road\",\"labels\":{\"weather\":\"rainy\"},\"model\":\"m1\"}\n"
        ));
    }
}
