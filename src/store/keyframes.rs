//! Pictures of the keyframe candidates of open segments (tree
//! `segment_keyframes`), and keyframe pictures of closed segments (tree
//! `keyframes`). The segmenter holds the candidates' pictures in memory; a
//! restart that rebuilds an open segment from its stored frames needs them
//! back to pick the same keyframe, caption the same pixels and keep the
//! same JPEG. They are written and deleted in the transaction of the batch
//! that makes the segmenter keep or drop them, so the tree always holds
//! what the open segment marker's segment held. PNG is lossless: a resumed
//! run queues exactly the bytes an uninterrupted one would have.

use std::collections::HashMap;
use std::sync::Arc;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, ImageFormat};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::keys::FrameKey;
use super::schema::{self, KeyframeCandidateImages, KeyframeImage};
use super::{SEGMENT_KEYFRAMES_TREE, Store, StoreError};
use crate::segment::KeyframeImages;

/// A change to `segment_keyframes`, written with a batch.
#[derive(Debug, Clone)]
pub struct KeyframeImageWrite {
    /// The frame the image belongs to.
    pub key: FrameKey,
    /// The stored value; `None` deletes it.
    value: Option<Vec<u8>>,
}

impl KeyframeImageWrite {
    /// Stores the pictures of frame `key`: the caption image (packed RGB,
    /// square) and the keyframe JPEG.
    pub fn store(key: FrameKey, images: &KeyframeImages) -> Result<Self, StoreError> {
        let caption = match &images.caption {
            Some(rgb) => Some(encode_png(rgb)?),
            None => None,
        };
        let value = KeyframeCandidateImages {
            caption,
            jpeg: images.jpeg.as_ref().map(|j| j.to_vec()),
        };
        Ok(Self {
            key,
            value: Some(schema::encode(&value)),
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

/// Writes or deletes the picture of a closed segment's keyframe (tree
/// `keyframes`) inside the batch transaction.
pub(super) fn write_keyframe(
    tree: &TransactionalTree,
    key: &FrameKey,
    jpeg: Option<&[u8]>,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    match jpeg {
        Some(jpeg) => tree.insert(&key.encode(), jpeg)?,
        None => tree.remove(&key.encode())?,
    };
    Ok(())
}

impl Store {
    /// The stored pictures of those of `keys` that have some.
    pub fn keyframe_images(
        &self,
        keys: impl IntoIterator<Item = FrameKey>,
    ) -> Result<HashMap<FrameKey, KeyframeImages>, StoreError> {
        let mut out = HashMap::new();
        for key in keys {
            let Some(v) = self
                .segment_keyframes
                .get(key.encode())
                .map_err(|e| self.err(e))?
            else {
                continue;
            };
            let stored: KeyframeCandidateImages = match schema::decode(SEGMENT_KEYFRAMES_TREE, &v) {
                Ok(images) => images,
                // Written before keyframe JPEGs: a caption image alone.
                Err(e) => KeyframeCandidateImages {
                    caption: Some(schema::decode(SEGMENT_KEYFRAMES_TREE, &v).map_err(|_| e)?),
                    jpeg: None,
                },
            };
            let caption = match &stored.caption {
                Some(image) => Some(Arc::from(decode_png(image)?)),
                None => None,
            };
            let jpeg = stored.jpeg.map(Arc::from);
            out.insert(key, KeyframeImages { caption, jpeg });
        }
        Ok(out)
    }

    /// The picture of the keyframe of a closed segment, if one was stored
    /// (`[store] keyframe_width` > 0 when it was made).
    pub fn keyframe_picture(&self, key: &FrameKey) -> Result<Option<sled::IVec>, StoreError> {
        self.keyframes.get(key.encode()).map_err(|e| self.err(e))
    }

    /// Whether a frame has a keyframe picture.
    pub fn has_keyframe_picture(&self, key: &FrameKey) -> Result<bool, StoreError> {
        self.keyframes
            .contains_key(key.encode())
            .map_err(|e| self.err(e))
    }
}

fn encode_png(rgb: &[u8]) -> Result<KeyframeImage, StoreError> {
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
    Ok(KeyframeImage { size, png })
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
