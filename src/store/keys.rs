//! Key encodings. Every key sorts by (stream, time) in big-endian order, so a
//! camera's time range is one range scan.

/// Length of a [`FrameKey`] in bytes.
pub const FRAME_KEY_LEN: usize = 12;

/// Identifies one stored frame: stream id and timestamp (ns since the Unix
/// epoch for live sources, recording time + pts for files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameKey {
    /// Stream (camera) id, assigned by the store.
    pub stream_id: u32,
    /// Frame time in ns.
    pub ts_ns: i64,
}

impl FrameKey {
    /// 4 bytes stream id + 8 bytes time with the sign bit flipped (so
    /// negative times sort before positive ones), both big-endian.
    pub fn encode(&self) -> [u8; FRAME_KEY_LEN] {
        let mut k = [0u8; FRAME_KEY_LEN];
        k[..4].copy_from_slice(&self.stream_id.to_be_bytes());
        k[4..].copy_from_slice(&((self.ts_ns as u64) ^ (1 << 63)).to_be_bytes());
        k
    }

    /// Inverse of [`FrameKey::encode`]; `None` for a key of the wrong length.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != FRAME_KEY_LEN {
            return None;
        }
        let stream_id = u32::from_be_bytes(bytes[..4].try_into().ok()?);
        let ts = u64::from_be_bytes(bytes[4..].try_into().ok()?) ^ (1 << 63);
        Some(Self {
            stream_id,
            ts_ns: ts as i64,
        })
    }

    /// Inclusive key range of a stream's frames in `[from_ns, to_ns]`.
    pub fn range(
        stream_id: u32,
        from_ns: i64,
        to_ns: i64,
    ) -> std::ops::RangeInclusive<[u8; FRAME_KEY_LEN]> {
        FrameKey {
            stream_id,
            ts_ns: from_ns,
        }
        .encode()..=FrameKey {
            stream_id,
            ts_ns: to_ns,
        }
        .encode()
    }
}

/// Tag-index key: `set \0 class \0 frame-key`, so one (set, class) is a
/// prefix scan and, within it, frames sort by (stream, time).
pub fn tag_index_key(set: &str, class: &str, frame: &FrameKey) -> Vec<u8> {
    let mut k = tag_index_prefix(set, class);
    k.extend_from_slice(&frame.encode());
    k
}

/// Prefix of all index entries of one (set, class).
pub fn tag_index_prefix(set: &str, class: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(set.len() + class.len() + 2 + FRAME_KEY_LEN);
    k.extend_from_slice(set.as_bytes());
    k.push(0);
    k.extend_from_slice(class.as_bytes());
    k.push(0);
    k
}

/// Checkpoint key: stream id + source identity.
pub fn checkpoint_key(stream_id: u32, source: &str) -> Vec<u8> {
    let mut k = stream_id.to_be_bytes().to_vec();
    k.extend_from_slice(source.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_stream_then_time_including_negative_times() {
        let keys = [
            FrameKey {
                stream_id: 1,
                ts_ns: -5,
            },
            FrameKey {
                stream_id: 1,
                ts_ns: 0,
            },
            FrameKey {
                stream_id: 1,
                ts_ns: 7,
            },
            FrameKey {
                stream_id: 1,
                ts_ns: i64::MAX,
            },
            FrameKey {
                stream_id: 2,
                ts_ns: i64::MIN,
            },
        ];
        for w in keys.windows(2) {
            assert!(w[0].encode() < w[1].encode(), "{:?} < {:?}", w[0], w[1]);
        }
        for k in keys {
            assert_eq!(FrameKey::decode(&k.encode()), Some(k));
        }
        assert_eq!(FrameKey::decode(&[0; 5]), None);
    }

    #[test]
    fn tag_index_prefixes_do_not_collide() {
        let f = FrameKey {
            stream_id: 3,
            ts_ns: 9,
        };
        assert!(
            tag_index_key("weather", "clear", &f)
                .starts_with(&tag_index_prefix("weather", "clear"))
        );
        assert!(
            !tag_index_key("weather", "clear_night", &f)
                .starts_with(&tag_index_prefix("weather", "clear"))
        );
    }
}
