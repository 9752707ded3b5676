//! Small JPEGs of stored frames (thumbnails) and larger ones of keyframe
//! candidates, made on the ingest thread from the frame it already
//! decoded, so search results and the web page can show what the camera
//! saw without decoding the video again.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::models::RgbFrame;

/// JPEG quality of thumbnails: a 256 px wide 720p road frame is a few KB.
pub const THUMBNAIL_QUALITY: i32 = 70;

/// JPEG quality of keyframe pictures: looked at larger, on their own.
pub const KEYFRAME_QUALITY: i32 = 80;

/// Makes a smaller JPEG of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbnailMaker {
    /// Width in pixels (a smaller frame keeps its own); the height follows
    /// the frame's aspect.
    pub width: u32,
    /// JPEG quality, 1..=100.
    pub quality: i32,
}

impl ThumbnailMaker {
    /// A maker for `width` px thumbnails; `None` for 0 (thumbnails off).
    pub fn new(width: u32) -> Option<Self> {
        (width > 0).then_some(Self {
            width,
            quality: THUMBNAIL_QUALITY,
        })
    }

    /// A maker for `width` px keyframe pictures; `None` for 0 (off).
    pub fn keyframe(width: u32) -> Option<Self> {
        (width > 0).then_some(Self {
            width,
            quality: KEYFRAME_QUALITY,
        })
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
        let pixels = resize(frame, w, h)?;
        encode_jpeg(&RgbFrame::packed(w, h, &pixels), self.quality)
    }
}

/// The JPEGs the ingest makes of one frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FramePictures {
    /// The keyframe picture, kept while the frame may become one.
    pub keyframe: Option<Vec<u8>>,
    /// The thumbnail, stored with the frame.
    pub thumbnail: Option<Vec<u8>>,
}

/// The keyframe picture and the thumbnail of a frame, each when its maker
/// is given. The frame is resized once: the thumbnail comes from the
/// keyframe picture's pixels when that is at least as wide (a quarter of
/// the work of resizing the whole frame again).
pub fn frame_pictures(
    frame: &RgbFrame<'_>,
    keyframe: Option<&ThumbnailMaker>,
    thumbnail: Option<&ThumbnailMaker>,
) -> Result<FramePictures, String> {
    let Some(keyframe) = keyframe else {
        return Ok(FramePictures {
            keyframe: None,
            thumbnail: thumbnail.map(|t| t.make(frame)).transpose()?,
        });
    };
    let (w, h) = keyframe.size(frame.width, frame.height);
    let pixels = resize(frame, w, h)?;
    let picture = RgbFrame::packed(w, h, &pixels);
    let thumb = match thumbnail {
        Some(t) if t.width <= w => Some(t.make(&picture)?),
        Some(t) => Some(t.make(frame)?),
        None => None,
    };
    Ok(FramePictures {
        keyframe: Some(encode_jpeg(&picture, keyframe.quality)?),
        thumbnail: thumb,
    })
}

/// `frame` resized to `width`x`height` (packed RGB) with a Catmull-Rom
/// (bicubic) filter. SIMD (fast_image_resize), not the Pillow-exact resize
/// the model inputs need: pictures are only looked at, and this is several
/// times faster on the ingest thread.
fn resize(frame: &RgbFrame<'_>, width: u32, height: u32) -> Result<Vec<u8>, String> {
    frame.check().map_err(|e| e.to_string())?;
    let row = frame.width as usize * 3;
    let packed: Vec<u8>;
    let data = if frame.stride == row {
        &frame.data[..row * frame.height as usize]
    } else {
        packed = frame
            .data
            .chunks(frame.stride)
            .take(frame.height as usize)
            .flat_map(|r| &r[..row])
            .copied()
            .collect();
        &packed
    };
    let src = ImageRef::new(frame.width, frame.height, data, PixelType::U8x3)
        .map_err(|e| format!("picture: {e}"))?;
    let mut dst = Image::new(width.max(1), height.max(1), PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| format!("picture: {e}"))?;
    Ok(dst.into_vec())
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
    fn keyframe_pictures_and_thumbnails_come_from_one_resize() {
        // A padded frame (stride > width * 3), as decoders hand them out.
        let (w, h, stride) = (1280u32, 720u32, 1280 * 3 + 64);
        let data: Vec<u8> = (0..stride * h as usize)
            .map(|i| ((i % stride) / 12 + i / stride / 6) as u8)
            .collect();
        let frame = RgbFrame {
            width: w,
            height: h,
            stride,
            data: &data,
        };
        let keyframe = ThumbnailMaker::keyframe(640).unwrap();
        let thumb = ThumbnailMaker::new(256).unwrap();
        let FramePictures {
            keyframe: picture,
            thumbnail: small,
        } = frame_pictures(&frame, Some(&keyframe), Some(&thumb)).unwrap();
        let size = |j: &[u8]| {
            let h = turbojpeg::read_header(j).unwrap();
            (h.width, h.height)
        };
        assert_eq!(size(&picture.unwrap()), (640, 360));
        let small = small.unwrap();
        assert_eq!(size(&small), (256, 144));
        // Close to a thumbnail made from the whole frame (a smooth image).
        let direct = thumb.make(&frame).unwrap();
        let pixels = |j: &[u8]| {
            turbojpeg::decompress(j, turbojpeg::PixelFormat::RGB)
                .unwrap()
                .pixels
        };
        let (a, b) = (pixels(&small), pixels(&direct));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / a.len() as f64;
        assert!(diff < 2.0, "{diff}");
        // Thumbnails alone, or neither.
        let only = frame_pictures(&frame, None, Some(&thumb)).unwrap();
        assert!(only.keyframe.is_none() && only.thumbnail.is_some());
        let none = frame_pictures(&frame, None, None).unwrap();
        assert_eq!(none, FramePictures::default());
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
