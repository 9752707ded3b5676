//! Caption images of the keyframe candidates of open segments (tree
//! `segment_keyframes`). The segmenter holds them in memory; a restart
//! that rebuilds an open segment from its stored frames needs them back to
//! pick the same keyframe and caption the same pixels. They are written
//! and deleted in the transaction of the batch that makes the segmenter
//! keep or drop them, so the tree always holds what the open segment
//! marker's segment held. PNG is lossless: a resumed run queues exactly the
//! bytes an uninterrupted one would have.

use std::collections::HashMap;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, ImageFormat};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::keys::FrameKey;
use super::schema::{self, KeyframeImage};
use super::{SEGMENT_KEYFRAMES_TREE, Store, StoreError};

/// A change to `segment_keyframes`, written with a batch.
#[derive(Debug, Clone)]
pub struct KeyframeImageWrite {
    /// The frame the image belongs to.
    pub key: FrameKey,
    /// The stored value; `None` deletes it.
    value: Option<Vec<u8>>,
}

impl KeyframeImageWrite {
    /// Stores the caption image `rgb` (packed RGB, square) of frame `key`.
    pub fn store(key: FrameKey, rgb: &[u8]) -> Result<Self, StoreError> {
        let size = ((rgb.len() / 3) as f64).sqrt().round() as u32;
        if (size as usize).pow(2) * 3 != rgb.len() {
            return Err(StoreError::KeyframeImage(format!(
                "{} bytes are not a square RGB image",
                rgb.len()
            )));
        }
        let mut png = Vec::new();
        // Fast: the worker encodes every kept candidate between batches.
        PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
            .write_image(rgb, size, size, ExtendedColorType::Rgb8)
            .map_err(|e| StoreError::KeyframeImage(e.to_string()))?;
        Ok(Self {
            key,
            value: Some(schema::encode(&KeyframeImage { size, png })),
        })
    }

    /// Deletes the image of frame `key`.
    pub fn remove(key: FrameKey) -> Self {
        Self { key, value: None }
    }
}

/// Applies `writes` inside the batch transaction.
pub(super) fn write(
    writes: &[KeyframeImageWrite],
    tree: &TransactionalTree,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for w in writes {
        let key = w.key.encode();
        match &w.value {
            Some(v) => tree.insert(&key, v.as_slice())?,
            None => tree.remove(&key)?,
        };
    }
    Ok(())
}

impl Store {
    /// The stored caption images (packed RGB) of those of `keys` that
    /// have one.
    pub fn keyframe_images(
        &self,
        keys: impl IntoIterator<Item = FrameKey>,
    ) -> Result<HashMap<FrameKey, Vec<u8>>, StoreError> {
        let mut out = HashMap::new();
        for key in keys {
            let Some(v) = self
                .segment_keyframes
                .get(key.encode())
                .map_err(|e| self.err(e))?
            else {
                continue;
            };
            let image: KeyframeImage = schema::decode(SEGMENT_KEYFRAMES_TREE, &v)?;
            out.insert(key, decode_png(&image)?);
        }
        Ok(out)
    }
}

fn decode_png(image: &KeyframeImage) -> Result<Vec<u8>, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        tree: SEGMENT_KEYFRAMES_TREE.into(),
        message,
    };
    let rgb = image::load_from_memory_with_format(&image.png, ImageFormat::Png)
        .map_err(|e| corrupt(e.to_string()))?
        .into_rgb8();
    if rgb.dimensions() != (image.size, image.size) {
        return Err(corrupt(format!(
            "a {:?} image, {} stored",
            rgb.dimensions(),
            image.size
        )));
    }
    Ok(rgb.into_raw())
}
