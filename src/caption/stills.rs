//! Captions of still image files (`roadrep caption`, `trainer
//! autocaption`): decoded, resized as the ingest keeps keyframes for the
//! captioner, and captioned `batch` at a time (one vision-encoder run and
//! one decoding loop per batch).

use std::path::{Path, PathBuf};

use super::{Caption, CaptionError, Captioner};
use crate::ingest::still::{self, StillImageError};
use crate::models::{BlipCaptioner, RgbFrame};

/// Why one file got no caption (the others still do).
#[derive(Debug, thiserror::Error)]
pub enum StillCaptionError {
    /// Unreadable, not an image, or too large.
    #[error(transparent)]
    Decode(#[from] StillImageError),
    /// The decoded image could not be resized for the captioner.
    #[error("'{path}': {message}")]
    Resize {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// A file made ready for the captioner: its resized RGB.
fn prepare(captioner: &BlipCaptioner, path: &Path) -> Result<Vec<u8>, StillCaptionError> {
    let img = still::decode_file(path)?;
    captioner
        .preprocessor()
        .resize_crop(&RgbFrame::from_image(&img))
        .map_err(|e| StillCaptionError::Resize {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Captions `paths` in order, `batch` images per model run, and
/// calls `each` once per path (in order) with its caption or why it has
/// none. A model failure stops the run and is returned.
pub fn caption_files<P: AsRef<Path>>(
    captioner: &BlipCaptioner,
    paths: &[P],
    batch: usize,
    mut each: impl FnMut(&Path, Result<Caption, StillCaptionError>),
) -> Result<(), CaptionError> {
    for chunk in paths.chunks(batch.max(1)) {
        let prepared: Vec<Result<Vec<u8>, StillCaptionError>> = chunk
            .iter()
            .map(|p| prepare(captioner, p.as_ref()))
            .collect();
        let good: Vec<&[u8]> = prepared
            .iter()
            .filter_map(|r| r.as_ref().ok().map(Vec::as_slice))
            .collect();
        let mut captions = captioner.caption_batch(&good, &mut || {})?.into_iter();
        for (path, prepared) in chunk.iter().zip(prepared) {
            match prepared {
                Ok(_) => {
                    let caption = captions.next().ok_or_else(|| {
                        CaptionError::Image("the captioner returned too few captions".into())
                    })?;
                    each(path.as_ref(), Ok(caption));
                }
                Err(e) => each(path.as_ref(), Err(e)),
            }
        }
    }
    Ok(())
}
