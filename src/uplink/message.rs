//! The wire contract between a vehicle and the fleet: MQTT topics and the
//! JSON payloads published on them.
//!
//! Topics are `roadrep/<vehicle>/<kind>` (see [`MessageKind`]). Every
//! payload names its vehicle and carries the outbox sequence number it was
//! sent under, so a consumer is idempotent on `(vehicle, seq)` as well as
//! on the record's own key (camera and time). A segment is published when it
//! closes and again when its caption is done, under the same key: the
//! consumer keeps the captioned version.
//!
//! Embeddings travel as base64 of little-endian IEEE f16 (pgvector's
//! `halfvec`): 1 KiB of values for a 512-d CLIP embedding, with the model
//! fingerprint so embeddings of different models are never compared.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// First level of every topic.
pub const TOPIC_ROOT: &str = "roadrep";
/// Version of the payloads below; bumped on an incompatible change.
pub const PAYLOAD_VERSION: u32 = 1;

/// What a message describes; the last level of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A stored frame ([`FrameMessage`]).
    Frame,
    /// A closed segment, or its caption once done ([`SegmentMessage`]).
    Segment,
    /// A rig record ([`RigMessage`]).
    Rig,
    /// The vehicle's retained status and last will ([`StatusMessage`]).
    Status,
}

impl MessageKind {
    /// All kinds, in topic order.
    pub const ALL: [MessageKind; 4] = [Self::Frame, Self::Segment, Self::Rig, Self::Status];

    /// The topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Frame => "frame",
            Self::Segment => "segment",
            Self::Rig => "rig",
            Self::Status => "status",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Errors of the wire format.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// A vehicle id that cannot be a topic level.
    #[error(
        "vehicle id '{0}' cannot be an MQTT topic level (use letters, digits, '-', '_', '.'; at most 64)"
    )]
    VehicleId(String),
    /// A topic outside `roadrep/<vehicle>/<kind>`.
    #[error("topic '{0}' is not roadrep/<vehicle>/<frame|segment|rig|status>")]
    Topic(String),
    /// A payload that does not parse.
    #[error("{topic}: bad payload: {source}")]
    Payload {
        topic: String,
        #[source]
        source: serde_json::Error,
    },
    /// An embedding that is not base64 of f16 values.
    #[error("bad embedding: {0}")]
    Embedding(String),
}

/// Checks that `id` can be a vehicle id (a client id and a topic level).
pub fn check_vehicle_id(id: &str) -> Result<(), MessageError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(MessageError::VehicleId(id.to_string()))
    }
}

/// `roadrep/<vehicle>/<kind>`.
pub fn topic(vehicle: &str, kind: MessageKind) -> String {
    format!("{TOPIC_ROOT}/{vehicle}/{}", kind.as_str())
}

/// The vehicle and kind of a topic.
pub fn parse_topic(topic: &str) -> Result<(&str, MessageKind), MessageError> {
    let bad = || MessageError::Topic(topic.to_string());
    let mut parts = topic.split('/');
    let (Some(TOPIC_ROOT), Some(vehicle), Some(kind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    check_vehicle_id(vehicle).map_err(|_| bad())?;
    Ok((vehicle, MessageKind::parse(kind).ok_or_else(bad)?))
}

/// The top class of one label set and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagValue {
    /// Class on top.
    pub class: String,
    /// Its probability.
    pub score: f32,
}

/// One stored frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameMessage {
    /// [`PAYLOAD_VERSION`].
    pub v: u32,
    /// Vehicle id.
    pub vehicle: String,
    /// Outbox sequence number.
    pub seq: u64,
    /// Camera (stream name).
    pub camera: String,
    /// Frame time, ns since the Unix epoch (with the camera, the key).
    pub time_ns: i64,
    /// Presentation time in its source, ns.
    pub pts_ns: u64,
    /// Source (file path or URL).
    pub source: String,
    /// Fingerprint of the CLIP model of `embedding`.
    pub model: String,
    /// Base64 of the L2-normalised embedding as f16 LE ([`encode_embedding`]).
    pub embedding: String,
    /// Top class per label set.
    pub tags: BTreeMap<String, TagValue>,
}

/// A segment's dominant class of one label set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentTag {
    /// Label set.
    pub set: String,
    /// Class on top for the longest time.
    pub class: String,
    /// Its share of the segment's time, 0..=1.
    pub share: f32,
}

/// A closed segment (and, again under its key, once captioned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMessage {
    /// [`PAYLOAD_VERSION`].
    pub v: u32,
    /// Vehicle id.
    pub vehicle: String,
    /// Outbox sequence number.
    pub seq: u64,
    /// Camera.
    pub camera: String,
    /// First frame time, ns since the Unix epoch (with the camera, the key).
    pub start_ns: i64,
    /// End (exclusive), ns.
    pub end_ns: i64,
    /// Frames in the segment.
    pub frames: u32,
    /// Keyframe time, ns.
    pub keyframe_ns: i64,
    /// Source (file path or URL).
    pub source: String,
    /// Dominant tags.
    pub tags: Vec<SegmentTag>,
    /// The caption once done.
    pub caption: Option<String>,
    /// `pending`, `done`, `failed` or `none`.
    pub caption_state: String,
    /// Tags and caption as one line: `highway, clear, daytime: "caption"`.
    pub summary: String,
}

/// A rig record: one moment of a camera rig, fused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RigMessage {
    /// [`PAYLOAD_VERSION`].
    pub v: u32,
    /// Vehicle id.
    pub vehicle: String,
    /// Outbox sequence number.
    pub seq: u64,
    /// Rig name.
    pub rig: String,
    /// Anchor frame time, ns (with the rig, the key).
    pub anchor_ns: i64,
    /// Anchor role.
    pub anchor_role: String,
    /// Roles with a frame.
    pub present: Vec<String>,
    /// Roles without one.
    pub absent: Vec<String>,
    /// Fingerprint of what fused `embedding`.
    pub model: String,
    /// Base64 f16 fused embedding.
    pub embedding: String,
    /// Top class per label set of the fused embedding.
    pub tags: BTreeMap<String, TagValue>,
}

/// One stream in a [`StatusMessage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Stream name.
    pub name: String,
    /// Its state (`running`, `retrying`, `stopped`, ...).
    pub state: String,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// The retained status of a vehicle; its last will says `online: false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// [`PAYLOAD_VERSION`].
    pub v: u32,
    /// Vehicle id.
    pub vehicle: String,
    /// False in the last will (link lost) and on a clean stop.
    pub online: bool,
    /// When it was made, ns since the Unix epoch (0 in the last will).
    pub time_ns: i64,
    /// Streams and their state.
    pub streams: Vec<StreamStatus>,
    /// Messages waiting in the outbox.
    pub outbox_depth: u64,
    /// The daemon's version.
    pub version: String,
}

/// A decoded payload of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A frame.
    Frame(FrameMessage),
    /// A segment.
    Segment(SegmentMessage),
    /// A rig record.
    Rig(RigMessage),
    /// A status.
    Status(StatusMessage),
}

impl Message {
    /// Decodes the payload of a message received on `topic`. The vehicle is
    /// the topic's (a payload naming another is refused).
    pub fn decode(topic: &str, payload: &[u8]) -> Result<Self, MessageError> {
        let (vehicle, kind) = parse_topic(topic)?;
        let bad = |source| MessageError::Payload {
            topic: topic.to_string(),
            source,
        };
        let message = match kind {
            MessageKind::Frame => Self::Frame(serde_json::from_slice(payload).map_err(bad)?),
            MessageKind::Segment => Self::Segment(serde_json::from_slice(payload).map_err(bad)?),
            MessageKind::Rig => Self::Rig(serde_json::from_slice(payload).map_err(bad)?),
            MessageKind::Status => Self::Status(serde_json::from_slice(payload).map_err(bad)?),
        };
        if message.vehicle() != vehicle {
            return Err(MessageError::Topic(format!(
                "{topic} (payload names vehicle '{}')",
                message.vehicle()
            )));
        }
        Ok(message)
    }

    /// The vehicle it comes from.
    pub fn vehicle(&self) -> &str {
        match self {
            Self::Frame(m) => &m.vehicle,
            Self::Segment(m) => &m.vehicle,
            Self::Rig(m) => &m.vehicle,
            Self::Status(m) => &m.vehicle,
        }
    }
}

/// Base64 of `v` as f16 little-endian.
pub fn encode_embedding(v: &[f32]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Inverse of [`encode_embedding`].
pub fn decode_embedding(s: &str) -> Result<Vec<half::f16>, MessageError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| MessageError::Embedding(e.to_string()))?;
    if bytes.len() % 2 != 0 || bytes.is_empty() {
        return Err(MessageError::Embedding(format!(
            "{} bytes is not a whole number of f16 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_bad_ones_are_named() {
        let t = topic("truck-7", MessageKind::Segment);
        assert_eq!(t, "roadrep/truck-7/segment");
        assert_eq!(parse_topic(&t).unwrap(), ("truck-7", MessageKind::Segment));
        for bad in [
            "roadrep/a/b",
            "other/a/frame",
            "roadrep/a/frame/x",
            "roadrep/+/frame",
        ] {
            let e = parse_topic(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert!(check_vehicle_id("v/1").is_err() && check_vehicle_id("").is_err());
    }

    #[test]
    fn embeddings_travel_as_f16_and_payloads_name_their_vehicle() {
        let v = [0.5f32, -0.25, 0.1];
        let back = decode_embedding(&encode_embedding(&v)).unwrap();
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b.to_f32()).abs() < 1e-3);
        }
        assert!(decode_embedding("AAA").is_err());
        let status = StatusMessage {
            v: PAYLOAD_VERSION,
            vehicle: "v1".into(),
            online: true,
            time_ns: 1,
            streams: vec![],
            outbox_depth: 0,
            version: "x".into(),
        };
        let bytes = serde_json::to_vec(&status).unwrap();
        assert_eq!(
            Message::decode("roadrep/v1/status", &bytes).unwrap(),
            Message::Status(status)
        );
        let e = Message::decode("roadrep/v2/status", &bytes).unwrap_err();
        assert!(e.to_string().contains("v1"), "{e}");
        let e = Message::decode("roadrep/v1/frame", b"{}").unwrap_err();
        assert!(e.to_string().starts_with("roadrep/v1/frame"), "{e}");
    }
}
