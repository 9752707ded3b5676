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

use ndarray::ArrayViewMut3;

/// Fixed-point precision of Pillow's 8-bit resample (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// Support of the bicubic filter (a = -0.5) at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

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

    /// The resized and center-cropped RGB image (`crop_size`² × 3 bytes, packed),
    /// bit-identical to PIL's `resize(BICUBIC)` followed by the center crop.
    pub fn resize_crop(&self, frame: &RgbFrame<'_>) -> Result<Vec<u8>, PreprocessError> {
        frame.check()?;
        let crop = self.crop_size as usize;
        let (rw, rh) = self.resized_size(frame.width, frame.height);
        let (rw, rh) = (rw as usize, rh as usize);
        // Where the crop window sits in the resized image. transformers pads
        // instead when the image is smaller than the crop; with shortest_edge
        // >= crop_size (every CLIP config) that never happens.
        let top = rh.saturating_sub(crop) / 2;
        let left = rw.saturating_sub(crop) / 2;
        let out_w = crop.min(rw);
        let out_h = crop.min(rh);

        Ok(resize_window(frame, (rw, rh), (left, top), (out_w, out_h)))
    }

    /// Preprocesses one frame into `out` (`[3, crop, crop]`, channels first).
    pub fn preprocess_into(
        &self,
        frame: &RgbFrame<'_>,
        mut out: ArrayViewMut3<'_, f32>,
    ) -> Result<(), PreprocessError> {
        let crop = self.crop_size as usize;
        if out.shape() != [3, crop, crop] {
            return Err(PreprocessError::OutputShape {
                actual: out.shape().to_vec(),
                crop: self.crop_size,
            });
        }
        let rgb = self.resize_crop(frame)?;
        // transformers: x / 255 then (x - mean) / std, in f32.
        for c in 0..3 {
            let (mean, std) = (self.mean[c], self.std[c]);
            let mut plane = out.index_axis_mut(ndarray::Axis(0), c);
            for (i, v) in plane.iter_mut().enumerate() {
                *v = (rgb[i * 3 + c] as f32 / 255.0 - mean) / std;
            }
        }
        Ok(())
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

/// Saturating conversion of a fixed-point accumulator to u8 (Pillow `clip8`).
/// Accumulators are i32 as in Pillow: |weights| sum to < 2 and pixels are
/// < 256, so `255 * 2 * 2^22` cannot overflow.
fn clip8(acc: i32) -> u8 {
    let v = acc >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

/// Keys cubic convolution kernel with a = -0.5 (Pillow `bicubic_filter`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter weights for the output samples `first..first + count`
/// of a 1-D resize from `in_size` to `out_size` (Pillow `precompute_coeffs`
/// followed by `normalize_coeffs_8bpc`).
struct Coefficients {
    /// Per output sample: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Taps per output sample (`ksize` in Pillow), row-major.
    ksize: usize,
    weights: Vec<i32>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize, first: usize, count: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(count);
        let mut weights = vec![0i32; count * ksize];
        let mut k = vec![0f64; ksize];
        for (i, xx) in (first..first + count).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // Pillow truncates `center ± support + 0.5` with a C cast.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[i * ksize..(i + 1) * ksize];
            for x in 0..xmax {
                let w = if ww != 0.0 { k[x] / ww } else { k[x] };
                let fixed = w * (1u64 << PRECISION_BITS) as f64;
                row[x] = if w < 0.0 {
                    (-0.5 + fixed) as i32
                } else {
                    (0.5 + fixed) as i32
                };
            }
            bounds.push((xmin, xmax));
        }
        Self {
            bounds,
            ksize,
            weights,
        }
    }

    fn kernel(&self, i: usize) -> &[i32] {
        &self.weights[i * self.ksize..(i + 1) * self.ksize]
    }

    /// Source indices `[first, last)` any output sample reads.
    fn source_span(&self) -> (usize, usize) {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let last = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        (first, last)
    }

    /// Horizontal pass over one packed RGB row.
    fn apply_row(&self, src: &[u8], dst: &mut [u8]) {
        self.apply_row_from(src, 0, dst);
    }

    /// Horizontal pass over a row whose first pixel is source column `offset`.
    fn apply_row_from(&self, src: &[u8], offset: usize, dst: &mut [u8]) {
        for (i, &(start, len)) in self.bounds.iter().enumerate() {
            let start = start - offset;
            let k = &self.kernel(i)[..len];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            let taps = &src[start * 3..(start + len) * 3];
            for (p, &kj) in taps.chunks_exact(3).zip(k) {
                acc[0] += p[0] as i32 * kj;
                acc[1] += p[1] as i32 * kj;
                acc[2] += p[2] as i32 * kj;
            }
            dst[i * 3] = clip8(acc[0]);
            dst[i * 3 + 1] = clip8(acc[1]);
            dst[i * 3 + 2] = clip8(acc[2]);
        }
    }
}

/// Pillow's separable bicubic resize of `frame` to `rw`x`rh`, keeping the
/// `out_w`x`out_h` window at (`left`, `top`) of the result (packed RGB).
fn resize_window(
    frame: &RgbFrame<'_>,
    (rw, rh): (usize, usize),
    (left, top): (usize, usize),
    (out_w, out_h): (usize, usize),
) -> Vec<u8> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let horiz = Coefficients::new(w, rw, left, out_w);
    let vert = Coefficients::new(h, rh, top, out_h);

    let need_horizontal = rw != w;
    let need_vertical = rh != h;
    // Pillow (13 here) runs the vertical pass first when the height shrinks
    // by more than twice as much as the width; the two orders round the
    // intermediate image differently, so follow it.
    let vertical_first = h > rh && (h as i64 - rh as i64) > (w as i64 - rw as i64) * 2;
    let mut out = vec![0u8; out_h * out_w * 3];
    if vertical_first {
        // Pass 1 (vertical) over only the source columns pass 2 reads.
        let (first_col, last_col) = if need_horizontal {
            horiz.source_span()
        } else {
            (left, left + out_w)
        };
        let tmp_w = last_col - first_col;
        let mut tmp = vec![0u8; out_h * tmp_w * 3];
        for oy in 0..out_h {
            let dst = &mut tmp[oy * tmp_w * 3..(oy + 1) * tmp_w * 3];
            let (start, len) = vert.bounds[oy];
            let k = vert.kernel(oy);
            for (x, d) in dst.iter_mut().enumerate() {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (j, &kj) in k[..len].iter().enumerate() {
                    acc += frame.row(start + j)[first_col * 3 + x] as i32 * kj;
                }
                *d = clip8(acc);
            }
        }
        // Pass 2 (horizontal).
        for oy in 0..out_h {
            let src = &tmp[oy * tmp_w * 3..(oy + 1) * tmp_w * 3];
            let dst = &mut out[oy * out_w * 3..(oy + 1) * out_w * 3];
            if need_horizontal {
                horiz.apply_row_from(src, first_col, dst);
            } else {
                dst.copy_from_slice(&src[(left - first_col) * 3..(left - first_col + out_w) * 3]);
            }
        }
        return out;
    }

    // Pass 1 (horizontal) over only the source rows the vertical pass reads.
    let (first_row, last_row) = vert.source_span();
    let tmp_rows = last_row - first_row;
    let mut tmp = vec![0u8; tmp_rows * out_w * 3];
    for (ty, sy) in (first_row..last_row).enumerate() {
        let src = frame.row(sy);
        let dst = &mut tmp[ty * out_w * 3..(ty + 1) * out_w * 3];
        if need_horizontal {
            horiz.apply_row(src, dst);
        } else {
            dst.copy_from_slice(&src[left * 3..(left + out_w) * 3]);
        }
    }

    // Pass 2 (vertical).
    for oy in 0..out_h {
        let dst = &mut out[oy * out_w * 3..(oy + 1) * out_w * 3];
        if need_vertical {
            let (start, len) = vert.bounds[oy];
            let k = vert.kernel(oy);
            for (x, d) in dst.iter_mut().enumerate() {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (j, &kj) in k[..len].iter().enumerate() {
                    acc += tmp[(start + j - first_row) * out_w * 3 + x] as i32 * kj;
                }
                *d = clip8(acc);
            }
        } else {
            let sy = top + oy - first_row;
            dst.copy_from_slice(&tmp[sy * out_w * 3..(sy + 1) * out_w * 3]);
        }
    }
    out
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
    Ok(resize_window(frame, (w, h), (0, 0), (w, h)))
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
}
