//! Small JPEGs of stored frames, made on the ingest thread from the frame
//! it already decoded, so search results and the web page can show what
//! the camera saw without decoding the video again.

use crate::models::RgbFrame;
use crate::models::preprocess::resize_rgb;

/// JPEG quality of thumbnails: a 256 px wide 720p road frame is a few KB.
pub const THUMBNAIL_QUALITY: i32 = 70;

/// Makes the thumbnail of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbnailMaker {
    /// Width in pixels (a smaller frame keeps its own); the height follows
    /// the frame's aspect.
    pub width: u32,
}

impl ThumbnailMaker {
    /// A maker for `width` px thumbnails; `None` for 0 (thumbnails off).
    pub fn new(width: u32) -> Option<Self> {
        (width > 0).then_some(Self { width })
    }

    /// The size of `frame`'s thumbnail.
    pub fn size(&self, width: u32, height: u32) -> (u32, u32) {
        let w = self.width.min(width).max(1);
        let h = (u64::from(height) * u64::from(w) / u64::from(width.max(1))).max(1);
        (w, h as u32)
    }

    /// The JPEG thumbnail of `frame`: an integer box reduction to at most
    /// twice the thumbnail's size first (as Pillow's `thumbnail` does with
    /// `reducing_gap`), then the bicubic resize, which costs in proportion
    /// to its input.
    pub fn make(&self, frame: &RgbFrame<'_>) -> Result<Vec<u8>, String> {
        let (w, h) = self.size(frame.width, frame.height);
        let k = (frame.width / (2 * w)).min(frame.height / (2 * h)).max(1);
        let pixels = if k > 1 {
            let (rw, rh, reduced) = box_reduce(frame, k);
            resize_rgb(&RgbFrame::packed(rw, rh, &reduced), w, h)
        } else {
            resize_rgb(frame, w, h)
        }
        .map_err(|e| e.to_string())?;
        encode_jpeg(&pixels, w, h, THUMBNAIL_QUALITY)
    }
}

/// `frame` shrunk by `k` in both directions, each output pixel the mean of
/// a `k`x`k` block (the last partial row and column are left out).
fn box_reduce(frame: &RgbFrame<'_>, k: u32) -> (u32, u32, Vec<u8>) {
    let (w, h) = (frame.width / k, frame.height / k);
    let k = k as usize;
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    let mut sums = vec![0u32; w as usize * 3];
    let half = (k * k / 2) as u32;
    for oy in 0..h as usize {
        sums.iter_mut().for_each(|s| *s = 0);
        for y in oy * k..(oy + 1) * k {
            let row = &frame.data[y * frame.stride..y * frame.stride + w as usize * k * 3];
            for (ox, px) in row.chunks_exact(k * 3).enumerate() {
                for (i, v) in px.iter().enumerate() {
                    sums[ox * 3 + i % 3] += u32::from(*v);
                }
            }
        }
        out.extend(sums.iter().map(|s| ((s + half) / (k * k) as u32) as u8));
    }
    (w, h, out)
}

/// Packed RGB to JPEG (libjpeg-turbo).
pub fn encode_jpeg(
    pixels: &[u8],
    width: u32,
    height: u32,
    quality: i32,
) -> Result<Vec<u8>, String> {
    let image = turbojpeg::Image {
        pixels,
        width: width as usize,
        pitch: width as usize * 3,
        height: height as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, quality, turbojpeg::Subsamp::Sub2x2)
        .map(|jpeg| jpeg.to_vec())
        .map_err(|e| format!("thumbnail: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_keep_the_aspect_and_never_enlarge() {
        let t = ThumbnailMaker::new(256).unwrap();
        assert_eq!(t.size(1280, 720), (256, 144));
        assert_eq!(t.size(160, 120), (160, 120));
        assert_eq!(t.size(4000, 1), (256, 1));
        assert!(ThumbnailMaker::new(0).is_none());
    }

    #[test]
    fn a_box_reduction_averages_each_block() {
        // 4x2, two blocks of 2x2: (0,2,4,6)+... per channel.
        let data: Vec<u8> = (0..4 * 2 * 3).map(|i| i as u8 * 2).collect();
        let (w, h, out) = box_reduce(&RgbFrame::packed(4, 2, &data), 2);
        assert_eq!((w, h), (2, 1));
        // Block 0: pixels (0,0),(1,0),(0,1),(1,1): red = 0, 6, 24, 30 -> 15.
        assert_eq!(out[0], 15);
        assert_eq!(out[3], 27);
    }

    #[test]
    fn a_thumbnail_is_a_jpeg_of_that_size() {
        let (w, h) = (640u32, 360u32);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let frame = RgbFrame::packed(w, h, &data);
        let jpeg = ThumbnailMaker::new(256).unwrap().make(&frame).unwrap();
        let header = turbojpeg::read_header(&jpeg).unwrap();
        assert_eq!((header.width, header.height), (256, 144));
    }
}
