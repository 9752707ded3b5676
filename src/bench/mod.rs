//! Throughput measurements for `BENCHMARKS.md` (`roadrep bench ...`).
//!
//! Everything a report compares is measured in the same process, one
//! configuration after the other, so ratios (INT8 vs fp32, batch 8 vs 1,
//! preprocessing vs inference) hold on the machine they ran on even when
//! absolute numbers drift between machines.
//!
//! - [`clip`]: the image encoder per precision and batch size, and
//!   preprocessing.
//! - [`replay`]: end-to-end replay of a 720p clip against decode alone and
//!   the model alone.
//! - [`caption`]: one BLIP caption against its vision encoder, captions/s.
//! - [`precision`]: the INT8 image encoder's tags against fp32's on real
//!   frames: top-class agreement per label set.
//! - [`search`]: the search index against the exact scan on generated
//!   embeddings: latency, recall@10, build and load times, memory.
//! - [`rig`]: the fusion model per rig record next to the CLIP cost of its
//!   views, and what rig assembly adds to a replay (waits, throughput).
//! - [`uplink`]: bytes per uplink message, and the outbox's cost to the
//!   batch write.

pub mod caption;
pub mod clip;
pub mod fleet;
pub mod precision;
pub mod replay;
pub mod rig;
mod rig_replay;
pub mod search;
pub mod uplink;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::models::ModelError;

pub use clip::{ClipBenchReport, ClipBenchSettings, bench_clip};
pub use replay::{ReplayBenchReport, ReplayBenchSettings, bench_replay};

/// A deterministic synthetic RGB frame (gradients plus texture).
pub fn synthetic_frame(width: u32, height: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            data.push((x * 255 / width.max(1)) as u8);
            data.push((y * 255 / height.max(1)) as u8);
            data.push(((x ^ y) & 0xff) as u8);
        }
    }
    data
}

/// Runs `f` until `min_time` has passed (at least `min_runs` times) and
/// returns (runs, elapsed).
pub(crate) fn time_loop(
    min_time: Duration,
    min_runs: usize,
    mut f: impl FnMut() -> Result<(), ModelError>,
) -> Result<(usize, Duration), ModelError> {
    let start = Instant::now();
    let mut runs = 0;
    while runs < min_runs || start.elapsed() < min_time {
        f()?;
        runs += 1;
    }
    Ok((runs, start.elapsed()))
}

/// Default model for benchmarks: the full-size random model if generated.
pub fn default_bench_model() -> PathBuf {
    let full = Path::new("models/clip-random-full");
    if full.join("manifest.toml").is_file() {
        full.to_path_buf()
    } else {
        PathBuf::from("models/clip-tiny")
    }
}

/// Generates a 1280x720 25 fps H.264 clip with moving content.
pub fn generate_clip(path: &Path, secs: u32) -> Result<(), String> {
    generate_clip_pattern(path, secs, "ball")
}

/// [`generate_clip`] with another `videotestsrc` pattern.
pub fn generate_clip_pattern(path: &Path, secs: u32, pattern: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::ingest::gst::init_gstreamer().map_err(|e| e.to_string())?;
    use gstreamer::prelude::*;
    let desc = format!(
        "videotestsrc pattern={pattern} num-buffers={} ! video/x-raw,width=1280,height=720,framerate=25/1 \
         ! videoconvert ! x264enc speed-preset=veryfast ! mp4mux ! filesink location=\"{}\"",
        secs * 25,
        path.display()
    );
    let pipeline = gstreamer::parse::launch(&desc).map_err(|e| e.to_string())?;
    pipeline
        .set_state(gstreamer::State::Playing)
        .map_err(|e| e.to_string())?;
    let bus = pipeline.bus().ok_or("no bus")?;
    let result = match bus.timed_pop_filtered(
        None,
        &[gstreamer::MessageType::Eos, gstreamer::MessageType::Error],
    ) {
        Some(m) if m.type_() == gstreamer::MessageType::Eos => Ok(()),
        Some(m) => Err(format!("{m:?}")),
        None => Err("no message".into()),
    };
    let _ = pipeline.set_state(gstreamer::State::Null);
    result
}

/// Peak resident set size of this process (VmHWM), bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
