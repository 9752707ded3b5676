//! Captions of several images per model run: one vision-encoder run over
//! all of them, then one decoding loop whose every decoder run advances all
//! unfinished images by one token ([`generate_batch`]).
//!
//! Why it pays: a cached decoder step is a matrix-vector product per row
//! that reads every decoder weight (BLIP-base: ~0.5 GB fp32, ~0.12 GB
//! INT8), so it is memory-bound; further rows share that read. What stays
//! per row is the attention over the image's 577 cross K/V rows.
//!
//! Captions are the ones each image gets alone: every row of the decoder
//! graph is computed independently of the others (attention is per row,
//! matrix products are row by row, the INT8 decoder quantizes activations
//! per row; `tests/caption_batch.rs` checks it on the tiny model).

use ndarray::{Array4, Axis};

use super::BlipCaptioner;
use crate::caption::decode::{GenerationSettings, generate_batch};
use crate::caption::{Caption, CaptionError};

impl BlipCaptioner {
    /// Normalised pixels of several resized images (packed RGB, `size`² ×
    /// 3 each): `[n, 3, S, S]`.
    pub fn pixels_batch(&self, images: &[&[u8]]) -> Result<Array4<f32>, CaptionError> {
        let s = self.preprocessor.crop_size as usize;
        let mut pixels = Array4::<f32>::zeros((images.len(), 3, s, s));
        for (i, rgb) in images.iter().enumerate() {
            pixels
                .index_axis_mut(Axis(0), i)
                .assign(&self.pixels(rgb)?.index_axis(Axis(0), 0));
        }
        Ok(pixels)
    }

    /// Captions preprocessed pixels `[n, 3, S, S]` with explicit settings
    /// and decoder prompt ids: one vision-encoder run, then one decoding
    /// loop for all `n`. `pace` is called before every model run.
    pub fn caption_batch_with(
        &self,
        pixel_values: &Array4<f32>,
        settings: &GenerationSettings,
        prompt_ids: &[u32],
        pace: &mut dyn FnMut(),
    ) -> Result<Vec<Caption>, CaptionError> {
        let n = pixel_values.shape()[0];
        if n == 0 {
            return Ok(Vec::new());
        }
        pace();
        let cross_kv = self.encode_image(pixel_values)?;
        let mut state = self.state(cross_kv);
        let all = generate_batch(
            &mut state,
            n,
            prompt_ids,
            self.manifest.blip.sep_token_id,
            settings,
            pace,
        )?;
        all.into_iter()
            .map(|ids| {
                Ok(Caption {
                    text: self.decode(&ids)?,
                    ids,
                })
            })
            .collect()
    }

    /// Greedy captions of exactly `tokens` new tokens each (end token
    /// ignored), `n` images per decoder run (benchmarks: random weights
    /// end captions at arbitrary lengths).
    pub fn caption_forced_batch(
        &self,
        pixel_values: &Array4<f32>,
        tokens: usize,
    ) -> Result<Vec<Vec<u32>>, CaptionError> {
        let settings = GenerationSettings {
            max_new_tokens: tokens,
            ..Default::default()
        };
        let n = pixel_values.shape()[0];
        let mut state = self.state(self.encode_image(pixel_values)?);
        // An end token no vocabulary has: decoding runs to `tokens`.
        generate_batch(
            &mut state,
            n,
            &self.prompt_ids,
            u32::MAX,
            &settings,
            &mut || {},
        )
    }
}
