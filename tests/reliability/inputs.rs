//! The inputs of the bad-input table: files the rows write, and the
//! fixtures they share.

use std::path::{Path, PathBuf};

/// Shared fixtures: the directory, a good clip, a busy port.
pub struct Fx {
    pub dir: PathBuf,
    pub clip: PathBuf,
    pub busy_port: u16,
}

pub fn gst_to(pipeline: &str, out: &Path) {
    crate::common::gst(&format!("{pipeline} ! filesink location={}", out.display()));
}

pub fn raw_mkv(w: u32, h: u32, frames: u32, out: &Path) {
    gst_to(
        &format!(
            "videotestsrc num-buffers={frames} ! video/x-raw,width={w},height={h},framerate=25/1,format=RGB ! matroskamux"
        ),
        out,
    );
}

/// A picture with some structure (the tags of a flat one say little).
pub fn rgb(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

pub fn grey(w: u32, h: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 3 + y * 5) % 256) as u8]))
}

/// The grey picture as RGB: what a grey or 16-bit file must tag as.
pub fn grey_as_rgb(_: &Fx, p: &Path) {
    image::DynamicImage::ImageLuma8(grey(64, 48))
        .to_rgb8()
        .save(p)
        .unwrap();
}

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A valid PNG signature and IHDR claiming 100000x100000, then no data.
pub fn huge_png(_: &Fx, p: &Path) {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    std::fs::write(p, png).unwrap();
}

pub fn cmyk_jpeg(_: &Fx, p: &Path) {
    let (w, h) = (64usize, 48usize);
    let pixels: Vec<u8> = (0..w * h * 4).map(|i| ((i * 7) % 256) as u8).collect();
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width: w,
        pitch: w * 4,
        height: h,
        format: turbojpeg::PixelFormat::CMYK,
    };
    let jpeg = turbojpeg::compress(image, 90, turbojpeg::Subsamp::None).unwrap();
    std::fs::write(p, &*jpeg).unwrap();
}

pub fn zero(_: &Fx, p: &Path) {
    std::fs::write(p, b"").unwrap();
}

pub fn random(_: &Fx, p: &Path) {
    let bytes = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8);
    std::fs::write(p, bytes.collect::<Vec<_>>()).unwrap();
}

/// The first 30% of the clip: mp4mux writes the index last, so none is left.
pub fn cut_mp4(fx: &Fx, p: &Path) {
    let b = std::fs::read(&fx.clip).unwrap();
    std::fs::write(p, &b[..b.len() * 3 / 10]).unwrap();
}

pub fn audio_mp4(_: &Fx, p: &Path) {
    gst_to(
        "audiotestsrc num-buffers=40 ! audioconvert ! lamemp3enc ! mp4mux",
        p,
    );
}

/// The clip with its H.264 sample entry renamed: a codec nobody decodes.
pub fn unknown_codec(fx: &Fx, p: &Path) {
    let b = std::fs::read(&fx.clip).unwrap();
    assert!(b.windows(4).any(|w| w == b"avc1"), "an H.264 sample entry");
    std::fs::write(p, replace(&replace(&b, b"avc1", b"zzzz"), b"avcC", b"zzzC")).unwrap();
}

pub fn html(_: &Fx, p: &Path) {
    std::fs::write(p, "<html><body>404 Not Found</body></html>\n").unwrap();
}

pub fn gzip(_: &Fx, p: &Path) {
    std::fs::write(p, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x01\x00\x00\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00").unwrap();
}

pub fn directory(_: &Fx, p: &Path) {
    std::fs::create_dir(p).unwrap();
}

pub fn fifo(_: &Fx, p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a path of our own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

pub fn nothing(_: &Fx, _: &Path) {}

pub fn locked(fx: &Fx, p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(&fx.clip, p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o000)).unwrap();
}

pub fn png(_: &Fx, p: &Path) {
    rgb(64, 48)
        .save_with_format(p, image::ImageFormat::Png)
        .unwrap();
}

pub fn jpeg(_: &Fx, p: &Path) {
    rgb(64, 48)
        .save_with_format(p, image::ImageFormat::Jpeg)
        .unwrap();
}

pub fn cut_png(_: &Fx, p: &Path) {
    let mut b = Vec::new();
    let mut w = std::io::Cursor::new(&mut b);
    rgb(64, 48)
        .write_to(&mut w, image::ImageFormat::Png)
        .unwrap();
    std::fs::write(p, &b[..b.len() / 2]).unwrap();
}

pub fn text(_: &Fx, p: &Path) {
    std::fs::write(p, "not a picture\n").unwrap();
}

pub fn one_by_one(_: &Fx, p: &Path) {
    raw_mkv(1, 1, 13, p);
}

pub fn odd_size(_: &Fx, p: &Path) {
    raw_mkv(333, 201, 26, p);
}

pub fn huge_video(_: &Fx, p: &Path) {
    gst_to(
        "videotestsrc num-buffers=14 ! video/x-raw,width=4000,height=3000,framerate=25/1 \
         ! videoconvert ! x264enc speed-preset=ultrafast ! mp4mux",
        p,
    );
}

/// The grey picture with 16 bits per channel (v * 257: the same 8-bit values).
pub fn deep_png(_: &Fx, p: &Path) {
    let g = grey(64, 48);
    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(64, 48, |x, y| {
        let v = g.get_pixel(x, y).0[0] as u16 * 257;
        image::Rgb([v, v, v])
    });
    deep.save(p).unwrap();
}

pub fn grey_png(_: &Fx, p: &Path) {
    grey(64, 48).save(p).unwrap();
}

pub fn rgba_png(_: &Fx, p: &Path) {
    image::DynamicImage::ImageRgb8(rgb(64, 48))
        .to_rgba8()
        .save(p)
        .unwrap();
}

pub fn rgb_png(_: &Fx, p: &Path) {
    rgb(64, 48).save(p).unwrap();
}

pub fn dot_png(_: &Fx, p: &Path) {
    rgb(1, 1).save(p).unwrap();
}

impl Fx {
    /// `{dir}` and `{busy}` in a row's text.
    pub fn subst(&self, s: &str) -> String {
        s.replace("{dir}", self.dir.to_str().unwrap())
            .replace("{busy}", &self.busy_port.to_string())
    }
}

pub fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for i in 0..out.len().saturating_sub(from.len() - 1) {
        if &out[i..i + from.len()] == from {
            out[i..i + to.len()].copy_from_slice(to);
        }
    }
    out
}
