//! One encoder run over a batch: frames -> CLIP image embeddings -> zero-shot
//! tags. Pure computation; where the results go is the worker's business.

use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array4, Axis};

use super::frame::Frame;
use crate::models::{ClipModel, ModelError};
use crate::segment::SegmentFrame;
use crate::store::{FrameKey, FrameRecord, SetTag, StoredFrame, TagRecord};
use crate::tagging::SceneTagger;
use crate::tagging::score::{SetScores, l2_normalize};

/// A frame's embedding and tags.
#[derive(Debug, Clone)]
pub struct EmbeddedFrame {
    /// L2-normalised image embedding.
    pub embedding: Vec<f32>,
    /// Scores per label set, in label-file order.
    pub scores: Vec<SetScores>,
}

impl EmbeddedFrame {
    /// What the segmenter needs of this frame.
    pub fn segment_input(&self, frame: &Frame) -> SegmentFrame {
        SegmentFrame {
            ts_ns: frame.ts_ns,
            pts_ns: frame.pts_ns,
            duration_ns: frame.sample_interval_ns,
            embedding: self.embedding.clone().into(),
            tags: self
                .scores
                .iter()
                .map(|s| (s.set.clone(), s.top.clone()))
                .collect(),
            images: frame.keyframe_images.clone(),
        }
    }

    /// The store's record of this frame.
    pub fn into_stored(self, frame: &Frame, stream_id: u32) -> StoredFrame {
        StoredFrame {
            key: FrameKey {
                stream_id,
                ts_ns: frame.ts_ns,
            },
            record: FrameRecord {
                pts_ns: frame.pts_ns,
                wall_ns: frame.ts_ns,
                width: frame.width,
                height: frame.height,
                source_label: frame.source_label.to_string(),
            },
            embedding: self.embedding,
            thumbnail: frame.thumbnail.clone(),
            tags: TagRecord {
                sets: self.scores.into_iter().map(SetTag::from).collect(),
            },
        }
    }
}

/// The image encoder and the tagger.
pub struct FrameEmbedder {
    model: Arc<ClipModel>,
    tagger: Arc<SceneTagger>,
}

impl FrameEmbedder {
    /// An embedder over a loaded model and tagger.
    pub fn new(model: Arc<ClipModel>, tagger: Arc<SceneTagger>) -> Self {
        Self { model, tagger }
    }

    /// Embeds and tags `frames` in one encoder run; returns one result per
    /// frame, in order, and the seconds the encoder took.
    pub fn embed(&self, frames: &[Frame]) -> Result<(Vec<EmbeddedFrame>, f64), ModelError> {
        let preprocessor = self.model.preprocessor();
        let crop = preprocessor.crop_size as usize;
        let mut pixels = Array4::<f32>::zeros((frames.len(), 3, crop, crop));
        for (slot, frame) in pixels.axis_iter_mut(Axis(0)).zip(frames) {
            preprocessor.normalize_into(&frame.clip_crop, slot)?;
        }
        let started = Instant::now();
        let embeds = self.model.get_image_features(pixels.view())?;
        let secs = started.elapsed().as_secs_f64();
        let out = embeds
            .axis_iter(Axis(0))
            .map(|e| EmbeddedFrame {
                scores: self.tagger.tag(e),
                embedding: l2_normalize(e).to_vec(),
            })
            .collect();
        Ok((out, secs))
    }
}
