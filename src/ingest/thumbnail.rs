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

    /// The JPEG thumbnail of `frame`.
    pub fn make(&self, frame: &RgbFrame<'_>) -> Result<Vec<u8>, String> {
        let (w, h) = self.size(frame.width, frame.height);
        let pixels = resize_rgb(frame, w, h).map_err(|e| e.to_string())?;
        encode_jpeg(&RgbFrame::packed(w, h, &pixels), THUMBNAIL_QUALITY)
    }
}

/// RGB (rows `stride` apart, as decoded) to JPEG (libjpeg-turbo), without
/// packing it first.
pub fn encode_jpeg(frame: &RgbFrame<'_>, quality: i32) -> Result<Vec<u8>, String> {
    let image = turbojpeg::Image {
        pixels: frame.data,
        width: frame.width as usize,
        pitch: frame.stride,
        height: frame.height as usize,
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
    fn a_thumbnail_is_a_jpeg_of_that_size() {
        let (w, h) = (640u32, 360u32);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let frame = RgbFrame::packed(w, h, &data);
        let jpeg = ThumbnailMaker::new(256).unwrap().make(&frame).unwrap();
        let header = turbojpeg::read_header(&jpeg).unwrap();
        assert_eq!((header.width, header.height), (256, 144));
    }
}
