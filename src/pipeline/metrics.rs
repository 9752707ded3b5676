//! Metric names of the frame path and the stages around it.
//!
//! Metrics go through the `metrics` facade; the daemon installs a
//! Prometheus recorder and serves it at `/metrics`. Without a recorder
//! (tests, one-shot commands) the macros are no-ops.

/// Counter: frames delivered by ingest, label `stream`.
pub const FRAMES_IN: &str = "roadrep_frames_in_total";
/// Counter: frames sampled but dropped, labels `stream`, `reason`.
pub const FRAMES_DROPPED: &str = "roadrep_frames_dropped_total";
/// Counter: frames written to the store (new keys), label `stream`.
pub const FRAMES_STORED: &str = "roadrep_frames_stored_total";
/// Histogram: frames per encoder batch.
pub const BATCH_SIZE: &str = "roadrep_batch_frames";
/// Counter: batches flushed, label `reason` (`full`, `timeout`, `drain`).
pub const BATCHES_FLUSHED: &str = "roadrep_batches_flushed_total";
/// Histogram: image encoder run time per batch, seconds.
pub const INFERENCE_SECONDS: &str = "roadrep_inference_seconds";
/// Gauge: frames waiting between ingest and inference.
pub const QUEUE_DEPTH: &str = "roadrep_queue_frames";

/// Counter: captions written, label `outcome` (`ok`, `failed`).
pub const CAPTIONS: &str = "roadrep_captions_total";
/// Counter: caption jobs dropped because the backlog was full.
pub const CAPTION_JOBS_DROPPED: &str = "roadrep_caption_jobs_dropped_total";
/// Gauge: keyframes waiting for a caption.
pub const CAPTION_BACKLOG: &str = "roadrep_caption_backlog";
/// Histogram: seconds per caption.
pub const CAPTION_SECONDS: &str = "roadrep_caption_seconds";
/// Counter: scene segments closed.
pub const SEGMENTS: &str = "roadrep_segments_total";
/// Counter: source failures, labels `stream`.
pub const SOURCE_ERRORS: &str = "roadrep_source_errors_total";
/// Gauge: 1 while a stream is running, label `stream`.
pub const STREAM_UP: &str = "roadrep_stream_up";
/// Times the store refused a write (disk full) and the streams stopped.
pub const STORE_FAILURES: &str = "roadrep_store_failures_total";
/// 1 while the store takes writes, 0 while it is closed after a failure.
pub const STORE_WRITABLE: &str = "roadrep_store_writable";

/// Counter: rig records written, label `rig`.
pub const RIG_RECORDS: &str = "roadrep_rig_records_total";
/// Counter: rig records written with a view missing, label `rig`.
pub const RIG_PARTIAL_RECORDS: &str = "roadrep_rig_partial_records_total";
/// Counter: views missing from rig records, labels `rig`, `role`.
pub const RIG_VIEWS_MISSING: &str = "roadrep_rig_views_missing_total";
/// Counter: frames that came after the rig record they would have joined,
/// labels `rig`, `role`.
pub const RIG_LATE_FRAMES: &str = "roadrep_rig_late_frames_total";
/// Histogram: |time offset| of a present view to its anchor frame, seconds.
pub const RIG_VIEW_SKEW: &str = "roadrep_rig_view_skew_seconds";
/// Histogram: how long a rig record waited for its views after its
/// embedded anchor frame reached the assembler (before its batch is
/// written), seconds.
pub const RIG_ASSEMBLY_SECONDS: &str = "roadrep_rig_assembly_seconds";
/// Histogram: time to fuse and tag one run of a rig's records (one run
/// per rig per batch that completes records), seconds.
pub const RIG_FUSION_SECONDS: &str = "roadrep_rig_fusion_seconds";
/// Counter: rig records lost to a fusion model error, label `rig`.
pub const RIG_RECORDS_FAILED: &str = "roadrep_rig_records_failed_total";
/// Counter: frame messages dropped from the uplink's outbox because it
/// was full (`[uplink] max_outbox_mb`).
pub const UPLINK_DROPPED: &str = "roadrep_uplink_dropped_total";
/// Gauge: messages in the uplink's outbox.
pub const UPLINK_OUTBOX_DEPTH: &str = "roadrep_uplink_outbox_messages";
/// Gauge: age of the oldest unsent message, seconds (0 when empty).
pub const UPLINK_OLDEST_AGE: &str = "roadrep_uplink_oldest_unsent_seconds";
/// Counter: messages the broker acknowledged, label `kind`.
pub const UPLINK_SENT: &str = "roadrep_uplink_sent_total";
/// Counter: connections to the broker made after the first.
pub const UPLINK_RECONNECTS: &str = "roadrep_uplink_reconnects_total";
/// Gauge: 1 while connected to the broker.
pub const UPLINK_CONNECTED: &str = "roadrep_uplink_connected";
