//! Exporting stored frames as an image-caption dataset (`roadrep
//! export-frames`), the trainer's JSONL manifest format.
//!
//! The store keeps embeddings and tags, not pixels: each frame is decoded
//! again from its source file at its stored pts (the exact frame that was
//! embedded) and written as JPEG. Its caption and labels come from its
//! zero-shot tags. Frames of live sources (RTSP, cameras) have no file to
//! decode again and are counted as skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ingest::config::SourceKind;
use crate::ingest::frames_at::decode_frames_at;
use crate::pipeline::SourceId;
use crate::store::{FrameEntry, FrameFilter, SetTag, Store, StoreError};

/// File name of the manifest in the output directory.
pub const MANIFEST: &str = "frames.jsonl";

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error("'{path}': {message}")]
    Write { path: PathBuf, message: String },
}

/// What an export did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExportReport {
    /// Frames written.
    pub written: u64,
    /// Frames whose source is not a readable file (live sources, moved files).
    pub skipped: u64,
    /// Per-source errors (file, message).
    pub errors: Vec<(String, String)>,
}

/// One line of the manifest.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ExportRecord {
    /// Image path, relative to the manifest.
    pub image: String,
    /// Caption built from the tags.
    pub caption: String,
    /// Top class per label set.
    pub labels: BTreeMap<String, String>,
    /// API path of the frame's stored thumbnail (served by `roadrep run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
}

/// A caption from tags: "a dashcam photo: weather foggy, time of day night, ...".
pub fn caption_from_tags(tags: &[SetTag]) -> String {
    let parts: Vec<String> = tags
        .iter()
        .map(|t| format!("{} {}", t.set.replace('_', " "), t.top.replace('_', " ")))
        .collect();
    if parts.is_empty() {
        "a dashcam photo".into()
    } else {
        format!("a dashcam photo: {}", parts.join(", "))
    }
}

/// The file a stored frame's source label names, found through the
/// stream's checkpoint identities (canonical paths), so a clip replayed by
/// a relative path from another directory is found from anywhere. A file
/// that changed since (size or mtime) is not the one that was replayed:
/// `None`, as for live sources and files that are gone.
pub fn source_file(
    store: &Store,
    stream: &str,
    label: &str,
) -> Result<Option<PathBuf>, StoreError> {
    let label_path = Path::new(label);
    let matches: Vec<SourceId> = store
        .source_ids(stream)?
        .iter()
        .map(|id| SourceId::from_stored(id))
        .filter(|id| {
            id.file_path()
                .is_some_and(|p| p == label_path || p.ends_with(label_path))
        })
        .collect();
    let current = |p: &Path| SourceId::of(&SourceKind::File(p.to_path_buf()));
    Ok(match matches.as_slice() {
        [id] => id.file_path().filter(|p| p.is_file() && current(p) == *id),
        // None known, or several files end in this label: the label itself,
        // if it is a file (and one of them, when several).
        _ => {
            let known = matches.is_empty() || matches.contains(&current(label_path));
            (label_path.is_file() && known).then(|| label_path.to_path_buf())
        }
    })
}

/// Exports the frames passing `filter` (at most `limit`) into `out`.
pub fn export_frames(
    store: &Store,
    filter: &FrameFilter,
    limit: usize,
    out: &Path,
    quality: i32,
) -> Result<ExportReport, ExportError> {
    let write_err = |path: &Path, e: &dyn std::fmt::Display| ExportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| write_err(out, &e))?;
    // Group by (source file, stream), pts sorted, so each file decodes once.
    let mut by_source: BTreeMap<(String, String), Vec<FrameEntry>> = BTreeMap::new();
    for f in store.frames(filter, limit)? {
        by_source
            .entry((f.record.source_label.clone(), f.stream.clone()))
            .or_default()
            .push(f);
    }
    let manifest_path = out.join(MANIFEST);
    let mut manifest = std::io::BufWriter::new(
        std::fs::File::create(&manifest_path).map_err(|e| write_err(&manifest_path, &e))?,
    );
    let mut report = ExportReport::default();
    for ((source, stream), mut frames) in by_source {
        let Some(path) = source_file(store, &stream, &source)? else {
            report.skipped += frames.len() as u64;
            continue;
        };
        let path = path.as_path();
        frames.sort_by_key(|f| f.record.pts_ns);
        let pts: Vec<u64> = frames.iter().map(|f| f.record.pts_ns).collect();
        let dir = out.join(&stream);
        std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, &e))?;
        let mut lines = Vec::new();
        let result = decode_frames_at(&stream, path, &pts, |p, rgb| {
            let Ok(i) = pts.binary_search(&p) else {
                return Ok(());
            };
            let f = &frames[i];
            let name = format!("{}/{}.jpg", stream, f.ts_ns);
            let image = turbojpeg::Image {
                pixels: rgb.data,
                width: rgb.width as usize,
                pitch: rgb.stride,
                height: rgb.height as usize,
                format: turbojpeg::PixelFormat::RGB,
            };
            let jpeg = turbojpeg::compress(image, quality, turbojpeg::Subsamp::Sub2x2)
                .map_err(|e| e.to_string())?;
            std::fs::write(out.join(&name), &jpeg[..]).map_err(|e| format!("{name}: {e}"))?;
            let record = ExportRecord {
                image: name,
                caption: caption_from_tags(&f.tags),
                thumbnail: f
                    .thumbnail
                    .then(|| crate::api::images::frame_url(&f.stream, f.ts_ns, "thumb.jpg")),
                labels: f
                    .tags
                    .iter()
                    .map(|t| (t.set.clone(), t.top.clone()))
                    .collect(),
            };
            lines.push(serde_json::to_string(&record).map_err(|e| e.to_string())?);
            Ok(())
        });
        match result {
            Ok(found) => {
                report.written += found as u64;
                report.skipped += (frames.len() - found) as u64;
            }
            Err(e) => {
                report.skipped += (frames.len() - lines.len()) as u64;
                report.written += lines.len() as u64;
                report.errors.push((source.clone(), e.to_string()));
            }
        }
        for line in lines {
            writeln!(manifest, "{line}").map_err(|e| write_err(&manifest_path, &e))?;
        }
    }
    manifest
        .flush()
        .map_err(|e| write_err(&manifest_path, &e))?;
    Ok(report)
}
