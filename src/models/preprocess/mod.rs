//! Image preprocessing for CLIP-style encoders, identical to the reference.
//!
//! The reference is transformers' `CLIPImageProcessorPil` (and OpenAI's CLIP):
//! resize so the shortest edge is `shortest_edge` with PIL's bicubic filter on
//! 8-bit RGB, center crop `crop_size`, scale to [0, 1], normalise with the
//! model's mean/std, channels first.
//!
//! PIL resizes in fixed point and rounds to `u8` after each of its two passes
//! (horizontal, then vertical). A float resize differs from it by up to a few
//! grey levels, i.e. up to ~0.05 after normalisation, far above the 1e-4 the
//! parity tests demand; so the resample below follows Pillow's `Resample.c`
//! step for step. Only the cropped window is computed: every output pixel
//! depends only on its own filter window, so this equals resize-then-crop.
//!
//! The ingest keeps a [`CropResizer`] per stream (the filter weights of its
//! frame size) and hands on the 8-bit crop; the embedder normalises the
//! crops of a batch straight into the batch tensor
//! ([`ImagePreprocessor::normalize_into`]).

use ndarray::ArrayViewMut3;

mod resample;

use resample::ResizePlan;

/// A borrowed packed-RGB image (3 bytes per pixel, rows `stride` bytes apart).
#[derive(Debug, Clone, Copy)]
pub struct RgbFrame<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes from one row to the next (at least `3 * width`).
    pub stride: usize,
    /// Pixel data, `stride * height` bytes (the last row may be shorter).
    pub data: &'a [u8],
}

impl<'a> RgbFrame<'a> {
    /// Wraps a tightly packed RGB buffer.
    pub fn packed(width: u32, height: u32, data: &'a [u8]) -> Self {
        Self {
            width,
            height,
            stride: width as usize * 3,
            data,
        }
    }

    /// Wraps an `image` crate RGB buffer.
    pub fn from_image(img: &'a image::RgbImage) -> Self {
        Self::packed(img.width(), img.height(), img.as_raw())
    }

    fn row(&self, y: usize) -> &'a [u8] {
        &self.data[y * self.stride..y * self.stride + self.width as usize * 3]
    }

    /// An error naming the frame's layout unless it is well formed.
    pub fn check(&self) -> Result<(), PreprocessError> {
        if self.is_well_formed() {
            return Ok(());
        }
        Err(PreprocessError::MalformedFrame {
            width: self.width,
            height: self.height,
            stride: self.stride,
            len: self.data.len(),
        })
    }

    fn is_well_formed(&self) -> bool {
        let (w, h) = (self.width as usize, self.height as usize);
        w > 0 && h > 0 && self.stride >= w * 3 && self.data.len() >= self.stride * (h - 1) + w * 3
    }
}

/// Resampling filter named in a model's preprocessing config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// PIL `BICUBIC` (Keys cubic, a = -0.5, antialiased when shrinking).
    Bicubic,
}

/// Preprocessing settings of one model (from its `manifest.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePreprocessor {
    /// Target length of the shorter image side after resizing.
    pub shortest_edge: u32,
    /// Side of the square center crop fed to the model.
    pub crop_size: u32,
    /// Resize both sides straight to `crop_size`, ignoring the aspect ratio
    /// (BLIP), instead of shortest edge + center crop (CLIP).
    pub stretch: bool,
    /// Resampling filter.
    pub resample: Resample,
    /// Per-channel mean (RGB), applied after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
}

/// Why an image could not be preprocessed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PreprocessError {
    /// The frame's size, stride and buffer length disagree, or it is empty.
    #[error("malformed RGB frame {width}x{height} (stride {stride}, {len} bytes)")]
    MalformedFrame {
        width: u32,
        height: u32,
        stride: usize,
        len: usize,
    },
    /// The output tensor does not have shape `[3, crop_size, crop_size]`.
    #[error("output tensor has shape {actual:?}, expected [3, {crop}, {crop}]")]
    OutputShape { actual: Vec<usize>, crop: u32 },
    /// A crop handed to [`ImagePreprocessor::normalize_into`] is not
    /// `crop_size`² packed RGB pixels.
    #[error("crop has {len} bytes, expected {crop}x{crop}x3")]
    CropLength { len: usize, crop: u32 },
}

impl ImagePreprocessor {
    /// The size `(width, height)` the image is resized to before cropping,
    /// computed as transformers does (`int(short * long / short_side)`).
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        if self.stretch {
            return (self.crop_size, self.crop_size);
        }
        let s = self.shortest_edge as u64;
        let (w, h) = (width as u64, height as u64);
        if w <= h {
            (s as u32, (s * h / w) as u32)
        } else {
            ((s * w / h) as u32, s as u32)
        }
    }

    /// How a `width`x`height` frame is resized and cropped.
    fn plan(&self, width: u32, height: u32) -> ResizePlan {
        let crop = self.crop_size as usize;
        let (rw, rh) = self.resized_size(width, height);
        let (rw, rh) = (rw as usize, rh as usize);
        // Where the crop window sits in the resized image. transformers pads
        // instead when the image is smaller than the crop; with shortest_edge
        // >= crop_size (every CLIP config) that never happens.
        let top = rh.saturating_sub(crop) / 2;
        let left = rw.saturating_sub(crop) / 2;
        ResizePlan::new(
            (width as usize, height as usize),
            (rw, rh),
            (left, top),
            (crop.min(rw), crop.min(rh)),
        )
    }

    /// The resized and center-cropped RGB image (`crop_size`² × 3 bytes, packed),
    /// bit-identical to PIL's `resize(BICUBIC)` followed by the center crop.
    /// A stream of frames is cheaper through a [`CropResizer`].
    pub fn resize_crop(&self, frame: &RgbFrame<'_>) -> Result<Vec<u8>, PreprocessError> {
        CropResizer::new(self).resize_crop(frame)
    }

    /// Preprocesses one frame into `out` (`[3, crop, crop]`, channels first).
    pub fn preprocess_into(
        &self,
        frame: &RgbFrame<'_>,
        out: ArrayViewMut3<'_, f32>,
    ) -> Result<(), PreprocessError> {
        self.check_output(&out)?;
        self.normalize_into(&self.resize_crop(frame)?, out)
    }

    /// Scales a packed-RGB crop (what [`Self::resize_crop`] gives) to
    /// [0, 1] and normalises it into `out` (`[3, crop, crop]`, channels
    /// first): the step that writes into a batch tensor's slot.
    pub fn normalize_into(
        &self,
        rgb: &[u8],
        mut out: ArrayViewMut3<'_, f32>,
    ) -> Result<(), PreprocessError> {
        self.check_output(&out)?;
        let crop = self.crop_size as usize;
        if rgb.len() != crop * crop * 3 {
            return Err(PreprocessError::CropLength {
                len: rgb.len(),
                crop: self.crop_size,
            });
        }
        // transformers: x / 255 then (x - mean) / std, in f32; a table of
        // the 256 values per channel gives the same floats.
        let mut table = [[0f32; 256]; 3];
        for (c, t) in table.iter_mut().enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            for (v, x) in t.iter_mut().enumerate() {
                *x = (v as f32 / 255.0 - mean) / std;
            }
        }
        for (c, t) in table.iter().enumerate() {
            let mut plane = out.index_axis_mut(ndarray::Axis(0), c);
            let pixels = rgb.chunks_exact(3);
            match plane.as_slice_mut() {
                Some(dst) => dst
                    .iter_mut()
                    .zip(pixels)
                    .for_each(|(d, p)| *d = t[p[c] as usize]),
                None => plane
                    .iter_mut()
                    .zip(pixels)
                    .for_each(|(d, p)| *d = t[p[c] as usize]),
            }
        }
        Ok(())
    }

    fn check_output(&self, out: &ArrayViewMut3<'_, f32>) -> Result<(), PreprocessError> {
        let crop = self.crop_size as usize;
        if out.shape() == [3, crop, crop] {
            return Ok(());
        }
        Err(PreprocessError::OutputShape {
            actual: out.shape().to_vec(),
            crop: self.crop_size,
        })
    }
}

/// Resizes and crops a stream's frames for one model: keeps the filter
/// weights of the last frame size (computed again only when the size
/// changes) and the buffer of the intermediate rows. Run-time state of one
/// ingest thread; the settings stay in the [`ImagePreprocessor`].
#[derive(Debug)]
pub struct CropResizer {
    preprocessor: ImagePreprocessor,
    plan: Option<ResizePlan>,
    scratch: Vec<u8>,
}

impl CropResizer {
    /// A resizer for `preprocessor`'s model, with no frame size seen yet.
    pub fn new(preprocessor: &ImagePreprocessor) -> Self {
        Self {
            preprocessor: preprocessor.clone(),
            plan: None,
            scratch: Vec::new(),
        }
    }

    /// What [`ImagePreprocessor::resize_crop`] gives, bit for bit.
    pub fn resize_crop(&mut self, frame: &RgbFrame<'_>) -> Result<Vec<u8>, PreprocessError> {
        frame.check()?;
        let size = (frame.width as usize, frame.height as usize);
        let plan = match &mut self.plan {
            Some(plan) if plan.input() == size => plan,
            slot => slot.insert(self.preprocessor.plan(frame.width, frame.height)),
        };
        let mut out = vec![0u8; plan.output_len()];
        plan.run(frame, &mut self.scratch, &mut out);
        Ok(out)
    }
}

/// What the ingest makes of each sampled frame: the CLIP input, the
/// captioner's resized image when captioning is on, the thumbnail and the
/// keyframe picture.
#[derive(Debug, Clone, PartialEq)]
pub struct FramePreprocessing {
    /// CLIP image encoder input.
    pub clip: ImagePreprocessor,
    /// Captioner input (kept as packed RGB; normalised when captioned).
    pub caption: Option<ImagePreprocessor>,
    /// The stored thumbnail; `None`: none.
    pub thumbnail: Option<crate::ingest::thumbnail::ThumbnailMaker>,
    /// The keyframe picture each frame keeps while it may become its
    /// segment's keyframe; `None`: none (or no segments).
    pub keyframe: Option<crate::ingest::thumbnail::ThumbnailMaker>,
}

impl FramePreprocessing {
    /// The resizers one ingest thread keeps for its frames.
    pub fn resizers(&self) -> FrameResizers {
        FrameResizers {
            clip: CropResizer::new(&self.clip),
            caption: self.caption.as_ref().map(CropResizer::new),
        }
    }
}

/// An ingest thread's [`CropResizer`]s: the CLIP input's and, when
/// captioning is on, the captioner's.
#[derive(Debug)]
pub struct FrameResizers {
    /// CLIP image encoder input.
    pub clip: CropResizer,
    /// Captioner input.
    pub caption: Option<CropResizer>,
}

impl From<ImagePreprocessor> for FramePreprocessing {
    fn from(clip: ImagePreprocessor) -> Self {
        Self {
            clip,
            caption: None,
            thumbnail: None,
            keyframe: None,
        }
    }
}

/// `frame` resized to `width`x`height` (packed RGB), as Pillow's bicubic
/// `resize` would: thumbnails.
pub fn resize_rgb(
    frame: &RgbFrame<'_>,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, PreprocessError> {
    frame.check()?;
    let (w, h) = (width.max(1) as usize, height.max(1) as usize);
    let input = (frame.width as usize, frame.height as usize);
    let plan = ResizePlan::new(input, (w, h), (0, 0), (w, h));
    let mut out = vec![0u8; plan.output_len()];
    plan.run(frame, &mut Vec::new(), &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::excessive_precision)] // the values as published by OpenAI
    fn clip() -> ImagePreprocessor {
        ImagePreprocessor {
            stretch: false,
            shortest_edge: 224,
            crop_size: 224,
            resample: Resample::Bicubic,
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.26862954, 0.26130258, 0.27577711],
        }
    }

    #[test]
    fn resized_size_follows_transformers_truncation() {
        let p = clip();
        assert_eq!(p.resized_size(1280, 720), (398, 224));
        assert_eq!(p.resized_size(97, 131), (224, 302));
        assert_eq!(p.resized_size(300, 300), (224, 224));
        assert_eq!(p.resized_size(960, 540), (398, 224));
    }

    #[test]
    fn same_size_image_passes_through_unchanged() {
        let data: Vec<u8> = (0..224 * 224 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let out = clip()
            .resize_crop(&RgbFrame::packed(224, 224, &data))
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn uniform_image_stays_uniform_at_any_scale() {
        for (w, h) in [(1280, 720), (50, 70), (225, 224), (1000, 2000)] {
            let data = vec![77u8; w * h * 3];
            let out = clip()
                .resize_crop(&RgbFrame::packed(w as u32, h as u32, &data))
                .unwrap();
            assert_eq!(out.len(), 224 * 224 * 3);
            assert!(out.iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn stride_padding_is_ignored() {
        let (w, h) = (300usize, 200usize);
        let packed: Vec<u8> = (0..w * h * 3).map(|i| (i % 256) as u8).collect();
        let stride = w * 3 + 16;
        let mut padded = vec![0xAAu8; stride * h];
        for y in 0..h {
            padded[y * stride..y * stride + w * 3]
                .copy_from_slice(&packed[y * w * 3..(y + 1) * w * 3]);
        }
        let p = clip();
        let a = p
            .resize_crop(&RgbFrame::packed(w as u32, h as u32, &packed))
            .unwrap();
        let b = p
            .resize_crop(&RgbFrame {
                width: w as u32,
                height: h as u32,
                stride,
                data: &padded,
            })
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let p = clip();
        assert!(matches!(
            p.resize_crop(&RgbFrame::packed(10, 10, &[0u8; 299])),
            Err(PreprocessError::MalformedFrame { .. })
        ));
        assert!(p.resize_crop(&RgbFrame::packed(0, 10, &[])).is_err());
    }

    #[test]
    fn normalisation_uses_mean_and_std() {
        let data = vec![255u8; 224 * 224 * 3];
        let mut out = ndarray::Array3::<f32>::zeros((3, 224, 224));
        let p = clip();
        p.preprocess_into(&RgbFrame::packed(224, 224, &data), out.view_mut())
            .unwrap();
        for c in 0..3 {
            let expect = (1.0 - p.mean[c]) / p.std[c];
            assert!((out[[c, 100, 100]] - expect).abs() < 1e-6);
        }
        let mut wrong = ndarray::Array3::<f32>::zeros((3, 200, 224));
        assert!(
            p.preprocess_into(&RgbFrame::packed(224, 224, &data), wrong.view_mut())
                .is_err()
        );
    }

    #[test]
    fn a_resizer_keeps_its_weights_per_size_and_gives_the_same_bytes() {
        let p = clip();
        let mut resizer = CropResizer::new(&p);
        // 720p, a portrait size that runs the vertical pass first, a size
        // that needs no horizontal pass, then 720p again.
        for (w, h) in [(1280, 720), (300, 2000), (224, 600), (1280, 720)] {
            let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 31 % 253) as u8).collect();
            let frame = RgbFrame::packed(w as u32, h as u32, &data);
            let fresh = p.resize_crop(&frame).unwrap();
            assert_eq!(resizer.resize_crop(&frame).unwrap(), fresh, "{w}x{h}");
            assert_eq!(resizer.resize_crop(&frame).unwrap(), fresh, "{w}x{h} again");
        }
        assert!(
            resizer
                .resize_crop(&RgbFrame::packed(4, 4, &[0; 5]))
                .is_err()
        );
    }

    #[test]
    fn normalising_a_crop_equals_preprocessing_the_frame() {
        let p = clip();
        let data: Vec<u8> = (0..640 * 360 * 3).map(|i| (i * 13 % 256) as u8).collect();
        let frame = RgbFrame::packed(640, 360, &data);
        let mut direct = ndarray::Array3::<f32>::zeros((3, 224, 224));
        p.preprocess_into(&frame, direct.view_mut()).unwrap();
        let crop = CropResizer::new(&p).resize_crop(&frame).unwrap();
        let mut batch = ndarray::Array4::<f32>::zeros((2, 3, 224, 224));
        p.normalize_into(&crop, batch.index_axis_mut(ndarray::Axis(0), 1))
            .unwrap();
        assert_eq!(batch.index_axis(ndarray::Axis(0), 1), direct);
        let short = &crop[..crop.len() - 3];
        let err = p.normalize_into(short, direct.view_mut()).unwrap_err();
        assert_eq!(err.to_string(), "crop has 150525 bytes, expected 224x224x3");
    }
}
