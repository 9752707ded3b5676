//! Decoding still images to packed RGB8.
//!
//! JPEG goes through libjpeg-turbo (the `turbojpeg` crate), the decoder PIL
//! uses: pure-Rust decoders differ from it by a few grey levels on ~6% of
//! pixels (IDCT and chroma upsampling), which would break parity with the
//! reference preprocessing. Other formats (PNG, BMP, WebP, TIFF, PNM) are
//! lossless, so any correct decoder gives the same pixels; they go through
//! the `image` crate. EXIF orientation is not applied, as in the reference.

use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};

/// Why a file could not be decoded. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum StillImageError {
    /// The file could not be read.
    #[error("'{path}': {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a known image format.
    #[error("'{path}': not an image (unrecognised format)")]
    NotAnImage { path: PathBuf },
    /// The image is corrupt or truncated.
    #[error("'{path}': cannot decode {format} image: {message}")]
    Corrupt {
        path: PathBuf,
        format: String,
        message: String,
    },
}

/// Largest image decoded (100 megapixels).
pub const MAX_PIXELS: u64 = 100_000_000;

/// Reads and decodes an image file to RGB8.
pub fn decode_file(path: &Path) -> Result<RgbImage, StillImageError> {
    let bytes = std::fs::read(path).map_err(|source| StillImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &bytes)
}

/// Decodes image bytes to RGB8; `path` is only used in messages.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<RgbImage, StillImageError> {
    decode_limited(path, bytes, MAX_PIXELS)
}

/// [`decode`] refusing images over `max_pixels` before anything is
/// allocated for them: a few KB of PNG can claim 100 megapixels, and
/// decoding it takes up to 11 bytes a pixel (16-bit RGBA, then RGB8).
pub fn decode_limited(
    path: &Path,
    bytes: &[u8],
    max_pixels: u64,
) -> Result<RgbImage, StillImageError> {
    let format = image::guess_format(bytes).map_err(|_| StillImageError::NotAnImage {
        path: path.to_path_buf(),
    })?;
    let corrupt = |message: String| StillImageError::Corrupt {
        path: path.to_path_buf(),
        format: format!("{format:?}").to_uppercase(),
        message,
    };
    if format == ImageFormat::Jpeg {
        // The header's size decides the allocation: refuse absurd ones before
        // decoding (the image crate applies a similar limit to other formats).
        if let Ok(h) = turbojpeg::read_header(bytes)
            && (h.width as u64) * (h.height as u64) > max_pixels
        {
            return Err(corrupt(format!(
                "{}x{} is larger than {max_pixels} pixels",
                h.width, h.height
            )));
        }
        match turbojpeg::decompress(bytes, turbojpeg::PixelFormat::RGB) {
            Ok(img) => {
                return packed_rgb(img).ok_or_else(|| corrupt("unexpected decoder output".into()));
            }
            // libjpeg-turbo cannot convert CMYK/YCCK to RGB; the image crate can.
            Err(e) if is_cmyk(bytes) => {
                tracing::debug!(error = %e, "CMYK JPEG, decoding with the image crate.")
            }
            Err(e) => return Err(corrupt(e.to_string())),
        }
    }
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|e| corrupt(e.to_string()))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(corrupt(format!(
            "{w}x{h} is larger than {max_pixels} pixels"
        )));
    }
    reader()
        .decode()
        .map(|i| i.into_rgb8())
        .map_err(|e| corrupt(e.to_string()))
}

fn is_cmyk(bytes: &[u8]) -> bool {
    turbojpeg::read_header(bytes).is_ok_and(|h| {
        h.colorspace == turbojpeg::Colorspace::CMYK || h.colorspace == turbojpeg::Colorspace::YCCK
    })
}

/// Drops row padding, if any.
fn packed_rgb(img: turbojpeg::Image<Vec<u8>>) -> Option<RgbImage> {
    let row = img.width * 3;
    let data = if img.pitch == row {
        img.pixels
    } else {
        img.pixels
            .chunks(img.pitch)
            .flat_map(|r| &r[..row])
            .copied()
            .collect()
    };
    RgbImage::from_raw(img.width as u32, img.height as u32, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_images_and_truncated_jpegs_naming_the_file() {
        let e = decode(Path::new("notes.txt"), b"hello world, not an image").unwrap_err();
        assert_eq!(
            e.to_string(),
            "'notes.txt': not an image (unrecognised format)"
        );

        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]));
        let raw = turbojpeg::Image {
            pixels: img.as_raw().as_slice(),
            width: 64,
            pitch: 64 * 3,
            height: 48,
            format: turbojpeg::PixelFormat::RGB,
        };
        let jpeg = turbojpeg::compress(raw, 90, turbojpeg::Subsamp::Sub2x2).unwrap();
        let ok = decode(Path::new("a.jpg"), &jpeg).unwrap();
        assert_eq!(ok.dimensions(), (64, 48));
        let e = decode(Path::new("cut.jpg"), &jpeg[..jpeg.len() / 3]).unwrap_err();
        assert!(matches!(e, StillImageError::Corrupt { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("'cut.jpg': cannot decode JPEG image"),
            "{e}"
        );
    }

    #[test]
    fn png_round_trips_exactly() {
        let img = RgbImage::from_fn(33, 17, |x, y| image::Rgb([x as u8, y as u8, (x * y) as u8]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        assert_eq!(decode(Path::new("a.png"), &png).unwrap(), img);
    }
}
