//! What an H.264/H.265 access unit is to the decoder (an IDR or other
//! keyframe, a picture others reference or not), read from its NAL unit
//! headers before decoding: the decode planner (`gop`) and `decode =
//! "fast"` drop what no sampled picture needs, so the frames that are
//! decoded have exactly the pixels a full decode gives them. (libav's own
//! `skip-frame` setting, as GStreamer 1.22 exposes it, skips nothing.)

pub use super::gop::UnitKind;

/// The codecs whose access units can be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 / AVC.
    H264,
    /// H.265 / HEVC.
    H265,
}

/// How NAL units are delimited in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Annex B start codes (`00 00 01`).
    ByteStream,
    /// Each unit prefixed with its big-endian length of this many bytes
    /// (`avc`/`hvc1` in MP4).
    LengthPrefixed(usize),
}

impl Framing {
    /// The framing of `video/x-h264` / `video/x-h265` caps fields:
    /// `stream-format` and, for length-prefixed formats, the length size
    /// from `codec_data` (avcC byte 4; hvcC byte 21).
    pub fn from_caps(codec: Codec, stream_format: &str, codec_data: Option<&[u8]>) -> Self {
        let at = match codec {
            Codec::H264 => 4,
            Codec::H265 => 21,
        };
        match stream_format {
            "avc" | "avc3" | "hvc1" | "hev1" => {
                let size = codec_data
                    .and_then(|d| d.get(at))
                    .map_or(4, |b| usize::from(b & 3) + 1);
                Self::LengthPrefixed(size)
            }
            _ => Self::ByteStream,
        }
    }
}

/// The NAL units of one buffer (without their start codes or lengths).
fn units(data: &[u8], framing: Framing) -> Vec<&[u8]> {
    match framing {
        Framing::LengthPrefixed(size) => {
            let mut out = Vec::new();
            let mut rest = data;
            while rest.len() >= size {
                let len = rest[..size]
                    .iter()
                    .fold(0usize, |n, &b| (n << 8) | usize::from(b));
                let Some(unit) = rest.get(size..size + len) else {
                    break;
                };
                out.push(unit);
                rest = &rest[size + len..];
            }
            out
        }
        Framing::ByteStream => {
            let mut starts = Vec::new();
            let mut i = 0;
            while i + 3 <= data.len() {
                if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                    starts.push(i + 3);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            starts
                .iter()
                .enumerate()
                .map(|(k, &s)| {
                    let end = starts.get(k + 1).map_or(data.len(), |&n| n - 3);
                    // A 4-byte start code leaves a zero before the next.
                    let mut unit = &data[s..end];
                    while let [head @ .., 0] = unit {
                        unit = head;
                    }
                    unit
                })
                .collect()
        }
    }
}

/// Whether the access unit in `data` is a picture no other picture
/// references: it has slices, and every one is marked non-reference
/// (H.264 `nal_ref_idc` 0; H.265 a sub-layer non-reference type). Anything
/// unreadable counts as referenced, so it is decoded.
pub fn is_non_reference(data: &[u8], codec: Codec, framing: Framing) -> bool {
    unit_kind(data, codec, framing, false) == UnitKind::NonReference
}

/// What the access unit in `data` is to the decoder; `key`: the container
/// marks it a keyframe (sync sample), which is an IDR when one of its
/// slices is (H.264 type 5; H.265 `IDR_W_RADL`, `IDR_N_LP`).
pub fn unit_kind(data: &[u8], codec: Codec, framing: Framing, key: bool) -> UnitKind {
    let (mut slices, mut referenced, mut idr) = (0, false, false);
    for unit in units(data, framing) {
        let Some(&header) = unit.first() else {
            continue;
        };
        match codec {
            Codec::H264 => {
                let kind = header & 0x1f;
                if kind == 1 || kind == 5 {
                    slices += 1;
                    referenced |= header & 0x60 != 0;
                    idr |= kind == 5;
                }
            }
            Codec::H265 => {
                let kind = (header >> 1) & 0x3f;
                if kind < 32 {
                    slices += 1;
                    // Types 0..=14 even: TRAIL_N, TSA_N, STSA_N, RADL_N,
                    // RASL_N and reserved non-reference types.
                    referenced |= kind > 14 || kind % 2 == 1;
                    idr |= kind == 19 || kind == 20;
                }
            }
        }
    }
    match (key, slices, referenced) {
        (_, 0, _) => UnitKind::Other,
        (true, _, _) => UnitKind::Key { idr },
        (false, _, true) => UnitKind::Reference,
        (false, _, false) => UnitKind::NonReference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H.264 slice NAL unit with `ref_idc` and type.
    fn h264(ref_idc: u8, kind: u8) -> Vec<u8> {
        vec![(ref_idc << 5) | kind, 0x88, 0x84, 0x21]
    }

    fn length_prefixed(units: &[Vec<u8>]) -> Vec<u8> {
        units
            .iter()
            .flat_map(|u| {
                let mut v = (u.len() as u32).to_be_bytes().to_vec();
                v.extend(u);
                v
            })
            .collect()
    }

    fn byte_stream(units: &[Vec<u8>]) -> Vec<u8> {
        units
            .iter()
            .flat_map(|u| [&[0u8, 0, 0, 1][..], u].concat())
            .collect()
    }

    #[test]
    fn h264_pictures_are_non_reference_only_when_every_slice_says_so() {
        let sei = vec![6u8, 5, 1];
        let b = [sei.clone(), h264(0, 1), h264(0, 1)];
        let p = [h264(2, 1)];
        let idr = [vec![0x67u8, 0x64], vec![0x68u8, 0xee], h264(3, 5)];
        let mixed = [h264(0, 1), h264(1, 1)];
        for framing in [Framing::LengthPrefixed(4), Framing::ByteStream] {
            let make = |u: &[Vec<u8>]| match framing {
                Framing::ByteStream => byte_stream(u),
                _ => length_prefixed(u),
            };
            assert!(is_non_reference(&make(&b), Codec::H264, framing));
            assert!(!is_non_reference(&make(&p), Codec::H264, framing));
            assert!(!is_non_reference(&make(&idr), Codec::H264, framing));
            assert!(!is_non_reference(&make(&mixed), Codec::H264, framing));
            // No slice at all (parameter sets only): kept.
            assert!(!is_non_reference(
                &make(std::slice::from_ref(&sei)),
                Codec::H264,
                framing
            ));
        }
        // Garbage and truncation: kept.
        assert!(!is_non_reference(
            &[0xff; 7],
            Codec::H264,
            Framing::LengthPrefixed(4)
        ));
        assert!(!is_non_reference(&[], Codec::H264, Framing::ByteStream));
    }

    #[test]
    fn h265_sub_layer_non_reference_types_are_skipped() {
        let unit = |kind: u8| vec![kind << 1, 1, 0xaf];
        let framing = Framing::LengthPrefixed(4);
        for kind in [0u8, 2, 8] {
            assert!(is_non_reference(
                &length_prefixed(&[unit(kind)]),
                Codec::H265,
                framing
            ));
        }
        for kind in [1u8, 9, 19, 21] {
            assert!(!is_non_reference(
                &length_prefixed(&[unit(kind)]),
                Codec::H265,
                framing
            ));
        }
    }

    #[test]
    fn keyframes_are_idr_only_when_a_slice_says_so() {
        let framing = Framing::LengthPrefixed(4);
        let idr = length_prefixed(&[vec![0x67u8, 0x64], h264(3, 5)]);
        let recovery_point = length_prefixed(&[h264(3, 1)]);
        assert_eq!(
            unit_kind(&idr, Codec::H264, framing, true),
            UnitKind::Key { idr: true }
        );
        assert_eq!(
            unit_kind(&recovery_point, Codec::H264, framing, true),
            UnitKind::Key { idr: false }
        );
        assert_eq!(
            unit_kind(&recovery_point, Codec::H264, framing, false),
            UnitKind::Reference
        );
        let hevc = |kind: u8| length_prefixed(&[vec![kind << 1, 1, 0xaf]]);
        assert_eq!(
            unit_kind(&hevc(19), Codec::H265, framing, true),
            UnitKind::Key { idr: true }
        );
        // CRA: an open GOP may follow.
        assert_eq!(
            unit_kind(&hevc(21), Codec::H265, framing, true),
            UnitKind::Key { idr: false }
        );
        // Parameter sets alone are no picture, whatever the container says.
        let sps = length_prefixed(&[vec![0x67u8, 0x64]]);
        for key in [false, true] {
            assert_eq!(unit_kind(&sps, Codec::H264, framing, key), UnitKind::Other);
        }
    }

    #[test]
    fn framing_comes_from_the_caps() {
        let avcc = [1u8, 0x64, 0, 0x1f, 0xfd];
        assert_eq!(
            Framing::from_caps(Codec::H264, "avc", Some(&avcc)),
            Framing::LengthPrefixed(2)
        );
        assert_eq!(
            Framing::from_caps(Codec::H264, "byte-stream", None),
            Framing::ByteStream
        );
    }
}
