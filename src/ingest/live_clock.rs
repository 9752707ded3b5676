//! Capture times of live frames (see the `source` module docs): the
//! sender's NTP time when the buffer carries one, else the pipeline clock,
//! and never a time at or before the previous one.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::source::now_ns;

/// NTP (1900) to Unix (1970) epoch, ns.
const NTP_UNIX_OFFSET_NS: i64 = 2_208_988_800 * 1_000_000_000;

/// Capture times of one run of a live source (see the module docs).
#[derive(Debug, Default)]
pub(super) struct LiveClock {
    /// Wall time of running time 0, ns since the epoch (set at the first
    /// frame stamped from the pipeline clock).
    zero_ns: Option<i64>,
    /// The last time given: times only increase.
    last_ns: Option<i64>,
}

impl LiveClock {
    /// The capture time of `sample`'s buffer, ns since the epoch.
    pub(super) fn stamp(&mut self, pipeline: &gst::Pipeline, sample: &gst::Sample) -> i64 {
        let t = sample
            .buffer()
            .and_then(sender_ntp_ns)
            .or_else(|| {
                let running = running_time_ns(sample)?;
                if self.zero_ns.is_none() {
                    self.zero_ns = clock_zero_ns(pipeline);
                }
                self.zero_ns?.checked_add(i64::try_from(running).ok()?)
            })
            // No clock (not playing): the arrival time is the best left.
            .unwrap_or_else(now_ns);
        let t = match self.last_ns {
            Some(last) if t <= last => last + 1,
            _ => t,
        };
        self.last_ns = Some(t);
        t
    }
}

/// The running time of a sample's buffer (its pts in the sink's segment).
fn running_time_ns(sample: &gst::Sample) -> Option<u64> {
    let pts = sample.buffer()?.pts()?;
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    Some(segment.to_running_time(pts)?.nseconds())
}

/// Wall time of running time 0 of a playing pipeline: a realtime reading
/// paired with a pipeline clock reading, plus the base time.
fn clock_zero_ns(pipeline: &gst::Pipeline) -> Option<i64> {
    let clock = pipeline.clock()?;
    let base = pipeline.base_time()?;
    let clock_now = clock.time().nseconds();
    let wall_now = now_ns();
    let since_base = i64::try_from(clock_now.checked_sub(base.nseconds())?).ok()?;
    Some(wall_now - since_base)
}

/// The sender's capture time of a buffer, when it carries an NTP
/// reference timestamp (ns since 1900) as rtspsrc adds for RFC 7273
/// clocks.
fn sender_ntp_ns(buffer: &gst::BufferRef) -> Option<i64> {
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| {
            m.reference()
                .structure(0)
                .is_some_and(|s| s.name() == "timestamp/x-ntp")
        })
        .and_then(|m| i64::try_from(m.timestamp().nseconds()).ok())
        .map(|ntp| ntp - NTP_UNIX_OFFSET_NS)
        .filter(|&t| t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_ntp_reference_timestamp_is_a_unix_time() {
        gst::init().unwrap();
        let unix_ns = 1_700_000_000_123_000_000i64;
        let mut buffer = gst::Buffer::new();
        let ntp = gst::ClockTime::from_nseconds((unix_ns + NTP_UNIX_OFFSET_NS) as u64);
        {
            let b = buffer.get_mut().unwrap();
            // Another clock's reference is not the sender's NTP time.
            gst::ReferenceTimestampMeta::add(
                b,
                &gst::Caps::new_empty_simple("timestamp/x-unix"),
                gst::ClockTime::from_seconds(5),
                None,
            );
            assert_eq!(sender_ntp_ns(b), None);
            gst::ReferenceTimestampMeta::add(
                b,
                &gst::Caps::builder("timestamp/x-ntp")
                    .field("host", "pool.ntp.org")
                    .build(),
                ntp,
                None,
            );
        }
        assert_eq!(sender_ntp_ns(&buffer), Some(unix_ns));
        // A sender time earlier than the last one given still increases.
        let mut clock = LiveClock {
            zero_ns: None,
            last_ns: Some(unix_ns + 1_000),
        };
        let sample = gst::Sample::builder().buffer(&buffer).build();
        let pipeline = gst::Pipeline::new();
        assert_eq!(clock.stamp(&pipeline, &sample), unix_ns + 1_001);
    }
}
