//! Pillow's 8-bit bicubic resample (`Resample.c`), step for step, over only
//! the output window a caller keeps.
//!
//! A [`ResizePlan`] holds the filter weights of one input size. A stream's
//! frames all have one size, so the ingest keeps its plan and
//! reuses it instead of computing the weights again for every frame.

use super::RgbFrame;

/// Fixed-point precision of Pillow's 8-bit resample (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// Support of the bicubic filter (a = -0.5) at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

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
#[derive(Debug)]
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

    /// Vertical pass of output row `oy`: `row(j)` is the `j`-th source row
    /// of its window, `dst` the output row (every byte an independent sample).
    fn apply_column<'a>(&self, oy: usize, row: impl Fn(usize) -> &'a [u8], dst: &mut [u8]) {
        let (start, len) = self.bounds[oy];
        let k = &self.kernel(oy)[..len];
        for (x, d) in dst.iter_mut().enumerate() {
            let mut acc: i32 = 1 << (PRECISION_BITS - 1);
            for (j, &kj) in k.iter().enumerate() {
                acc += row(start + j)[x] as i32 * kj;
            }
            *d = clip8(acc);
        }
    }
}

/// How Pillow's separable bicubic resize of a `width`x`height` image to
/// `resized` runs, keeping the output window at `origin` of size `window`:
/// the filter weights of both passes and their order.
#[derive(Debug)]
pub(super) struct ResizePlan {
    /// Input size the weights are for.
    input: (usize, usize),
    /// Output window's top-left corner in the resized image.
    origin: (usize, usize),
    /// Output window size.
    window: (usize, usize),
    horiz: Coefficients,
    vert: Coefficients,
    need_horizontal: bool,
    need_vertical: bool,
    vertical_first: bool,
}

impl ResizePlan {
    pub(super) fn new(
        (w, h): (usize, usize),
        (rw, rh): (usize, usize),
        origin: (usize, usize),
        window: (usize, usize),
    ) -> Self {
        let (left, top) = origin;
        let (out_w, out_h) = window;
        Self {
            input: (w, h),
            origin,
            window,
            horiz: Coefficients::new(w, rw, left, out_w),
            vert: Coefficients::new(h, rh, top, out_h),
            need_horizontal: rw != w,
            need_vertical: rh != h,
            // Pillow (13 here) runs the vertical pass first when the height
            // shrinks by more than twice as much as the width; the two
            // orders round the intermediate image differently, so follow it.
            vertical_first: h > rh && (h as i64 - rh as i64) > (w as i64 - rw as i64) * 2,
        }
    }

    /// The input size these weights are for.
    pub(super) fn input(&self) -> (usize, usize) {
        self.input
    }

    /// Bytes of the packed-RGB output window.
    pub(super) fn output_len(&self) -> usize {
        self.window.0 * self.window.1 * 3
    }

    /// Resizes `frame` (of the plan's input size) into `out` (packed RGB,
    /// [`Self::output_len`] bytes); `scratch` holds the intermediate rows
    /// and keeps its capacity for the next frame.
    pub(super) fn run(&self, frame: &RgbFrame<'_>, scratch: &mut Vec<u8>, out: &mut [u8]) {
        debug_assert_eq!((frame.width as usize, frame.height as usize), self.input);
        debug_assert_eq!(out.len(), self.output_len());
        if self.vertical_first {
            self.run_vertical_first(frame, scratch, out);
        } else {
            self.run_horizontal_first(frame, scratch, out);
        }
    }

    fn run_vertical_first(&self, frame: &RgbFrame<'_>, tmp: &mut Vec<u8>, out: &mut [u8]) {
        let (left, _) = self.origin;
        let (out_w, out_h) = self.window;
        // Pass 1 (vertical) over only the source columns pass 2 reads.
        let (first_col, last_col) = if self.need_horizontal {
            self.horiz.source_span()
        } else {
            (left, left + out_w)
        };
        let tmp_w = (last_col - first_col) * 3;
        tmp.clear();
        tmp.resize(out_h * tmp_w, 0);
        for (oy, dst) in tmp.chunks_exact_mut(tmp_w).enumerate() {
            let row = |y: usize| &frame.row(y)[first_col * 3..];
            self.vert.apply_column(oy, row, dst);
        }
        // Pass 2 (horizontal).
        for (src, dst) in tmp.chunks_exact(tmp_w).zip(out.chunks_exact_mut(out_w * 3)) {
            if self.need_horizontal {
                self.horiz.apply_row_from(src, first_col, dst);
            } else {
                let skip = (left - first_col) * 3;
                dst.copy_from_slice(&src[skip..skip + out_w * 3]);
            }
        }
    }

    fn run_horizontal_first(&self, frame: &RgbFrame<'_>, tmp: &mut Vec<u8>, out: &mut [u8]) {
        let (left, top) = self.origin;
        let row_len = self.window.0 * 3;
        // Pass 1 (horizontal) over only the source rows the vertical pass reads.
        let (first_row, last_row) = self.vert.source_span();
        tmp.clear();
        tmp.resize((last_row - first_row) * row_len, 0);
        for (dst, sy) in tmp.chunks_exact_mut(row_len).zip(first_row..last_row) {
            let src = frame.row(sy);
            if self.need_horizontal {
                self.horiz.apply_row_from(src, 0, dst);
            } else {
                dst.copy_from_slice(&src[left * 3..left * 3 + row_len]);
            }
        }
        // Pass 2 (vertical).
        let tmp: &[u8] = tmp;
        let row = |y: usize| &tmp[(y - first_row) * row_len..];
        for (oy, dst) in out.chunks_exact_mut(row_len).enumerate() {
            if self.need_vertical {
                self.vert.apply_column(oy, row, dst);
            } else {
                dst.copy_from_slice(&row(top + oy)[..row_len]);
            }
        }
    }
}
