//! Captions of several images per vision-encoder run.

use ndarray::{Array4, Axis};
use ort::value::TensorRef;

use super::{BlipCaptioner, CROSS_KV};
use crate::caption::decode::generate;
use crate::caption::{Caption, CaptionError};
use crate::models::ModelError;
use crate::models::clip::PIXEL_VALUES;

impl BlipCaptioner {
    /// Captions several resized images (packed RGB, `size`² × 3 each) with
    /// one vision-encoder run over all of them; the decoding loop then runs
    /// per image (its cache and stopping point are per image).
    pub fn caption_batch(&self, images: &[&[u8]]) -> Result<Vec<Caption>, CaptionError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.preprocessor.crop_size as usize;
        let mut pixels = Array4::<f32>::zeros((images.len(), 3, s, s));
        for (i, rgb) in images.iter().enumerate() {
            pixels
                .index_axis_mut(Axis(0), i)
                .assign(&self.pixels(rgb)?.index_axis(Axis(0), 0));
        }
        let err = |e: ort::Error| ModelError::Ort {
            path: self.vision_path.clone(),
            message: e.to_string(),
        };
        let input = TensorRef::from_array_view(pixels.view()).map_err(err)?;
        let mut session = self.vision.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![PIXEL_VALUES => input])
            .map_err(err)?;
        // [L, 2, n, H, T, Dh]: image `i` is index `i` of axis 2. Each image's
        // slice is copied out only while it is decoded (BLIP-base: 85 MB an
        // image), not the whole batch at once.
        let cross_kv = outputs[CROSS_KV].try_extract_array::<f32>().map_err(err)?;
        let mut out = Vec::with_capacity(images.len());
        for i in 0..images.len() {
            let one = cross_kv
                .index_axis(Axis(2), i)
                .insert_axis(Axis(2))
                .as_standard_layout()
                .into_owned();
            let mut state = self.state(one);
            let ids = generate(
                &mut state,
                &self.prompt_ids,
                self.manifest.blip.sep_token_id,
                &self.settings,
                &mut || {},
            )?;
            out.push(Caption {
                text: self.decode(&ids)?,
                ids,
            });
        }
        Ok(out)
    }
}
