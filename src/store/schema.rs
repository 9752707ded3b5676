//! Stored value types. Every value is one schema-version byte followed by
//! its postcard encoding, so a later version can read (or migrate) older
//! values instead of misreading them.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;

/// Version of the value encodings and tree layout.
pub const SCHEMA_VERSION: u8 = 1;

/// One stored frame's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    /// Presentation timestamp in the source, ns.
    pub pts_ns: u64,
    /// Wall-clock time, ns since the Unix epoch (equals the key time).
    pub wall_ns: i64,
    /// Decoded frame width.
    pub width: u32,
    /// Decoded frame height.
    pub height: u32,
    /// Human-readable source the frame came from (file path, URL, device).
    pub source_label: String,
}

/// Zero-shot tags of one frame: per label set, its top class and scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagRecord {
    /// One entry per label set, in label-file order.
    pub sets: Vec<SetTag>,
}

/// Tags of one label set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetTag {
    /// Label set name.
    pub set: String,
    /// Top class.
    pub top: String,
    /// Probability of the top class.
    pub score: f32,
    /// (class, probability) for every class.
    pub scores: Vec<(String, f32)>,
}

impl From<crate::tagging::SetScores> for SetTag {
    fn from(s: crate::tagging::SetScores) -> Self {
        Self {
            set: s.set,
            top: s.top,
            score: s.top_score,
            scores: s.scores,
        }
    }
}

impl TagRecord {
    /// The tag of a set, if tagged.
    pub fn get(&self, set: &str) -> Option<&SetTag> {
        self.sets.iter().find(|s| s.set == set)
    }
}

/// A stream (camera) known to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Id used in keys.
    pub id: u32,
    /// Name (camera id in the config, or `--camera`).
    pub name: String,
}

/// Replay progress of one source on one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Pts of the last frame stored, ns.
    pub last_pts_ns: Option<u64>,
    /// Frames stored so far.
    pub frames: u64,
    /// The source was read to its end.
    pub complete: bool,
    /// Sampling interval the frames were kept at (ns); a replay at another
    /// rate would mix two sampling grids.
    pub sample_interval_ns: u64,
}

/// One scene segment of a camera (see `segment`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// First frame time, ns (equals the key time).
    pub start_ns: i64,
    /// End time (exclusive), ns.
    pub end_ns: i64,
    /// Pts of the first frame in its source, ns.
    pub start_pts_ns: u64,
    /// Human-readable source of the segment's frames (path as given, URL).
    pub source_label: String,
    /// Its identity (canonical path, size, mtime for files; see `ingest`).
    pub source_id: String,
    /// Frames in the segment.
    pub frames: u32,
    /// Keyframe (most central frame) time, ns.
    pub keyframe_ns: i64,
    /// Keyframe pts, ns.
    pub keyframe_pts_ns: u64,
    /// Dominant class per label set and its share of the time.
    pub tags: Vec<crate::segment::DominantTag>,
    /// The keyframe's caption.
    pub caption: CaptionState,
}

/// Where a segment's caption stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CaptionState {
    /// Queued for the captioner.
    Pending,
    /// Captioned.
    Done {
        /// The caption.
        text: String,
        /// Fingerprint of the captioner model.
        model: String,
    },
    /// The captioner failed on this keyframe.
    Failed {
        /// Why.
        error: String,
    },
    /// No caption: captioning was off, or no keyframe image was kept (a
    /// segment rebuilt after a restart).
    None,
}

impl CaptionState {
    /// The caption text, if captioned.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Done { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// The open segment of a (stream, source) when its last batch was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSegmentRecord {
    /// How to rebuild it.
    pub state: crate::segment::OpenState,
    /// Source label of its frames (as stored in their records).
    pub label: String,
}

/// A queued caption: the keyframe, already resized for the captioner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionJob {
    /// Keyframe time, ns: a caption applies only while the segment still
    /// has this keyframe.
    pub keyframe_ns: i64,
    /// Side of the square image.
    pub size: u32,
    /// Packed RGB, `size * size * 3` bytes.
    pub rgb: Vec<u8>,
}

/// The caption image of a keyframe candidate of an open segment (see
/// `store::keyframes`); before keyframe JPEGs, the whole stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyframeImage {
    /// Side of the square image.
    pub size: u32,
    /// The packed RGB pixels as a PNG (lossless).
    pub png: Vec<u8>,
}

/// The pictures of a keyframe candidate of an open segment (see
/// `store::keyframes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyframeCandidateImages {
    /// Captioner input.
    pub caption: Option<KeyframeImage>,
    /// Keyframe picture (JPEG).
    pub jpeg: Option<Vec<u8>>,
}

/// Encodes a value with the schema version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![SCHEMA_VERSION];
    // postcard only fails on writer errors, and a Vec never fails.
    out.extend(postcard::to_stdvec(value).expect("postcard encoding into a Vec"));
    out
}

/// Decodes a value, checking its schema version.
pub fn decode<T: DeserializeOwned>(tree: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&SCHEMA_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt {
                tree: tree.to_string(),
                message: e.to_string(),
            })
        }
        Some((v, _)) => Err(StoreError::Corrupt {
            tree: tree.to_string(),
            message: format!("value of schema version {v}, this build reads {SCHEMA_VERSION}"),
        }),
        None => Err(StoreError::Corrupt {
            tree: tree.to_string(),
            message: "empty value".into(),
        }),
    }
}

/// Embedding bytes: little-endian f32s.
pub fn encode_embedding(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Inverse of [`encode_embedding`].
pub fn decode_embedding(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_foreign_versions_are_refused() {
        let r = FrameRecord {
            pts_ns: 5,
            wall_ns: -3,
            width: 640,
            height: 360,
            source_label: "a.mp4".into(),
        };
        let bytes = encode(&r);
        assert_eq!(decode::<FrameRecord>("frames", &bytes).unwrap(), r);
        let mut future = bytes.clone();
        future[0] = SCHEMA_VERSION + 1;
        let e = decode::<FrameRecord>("frames", &future)
            .unwrap_err()
            .to_string();
        assert!(e.contains("frames") && e.contains("schema version"), "{e}");
        assert_eq!(
            decode_embedding(&encode_embedding(&[1.5, -0.25])),
            vec![1.5, -0.25]
        );
    }
}
