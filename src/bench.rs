//! Throughput measurements for `BENCHMARKS.md` (`roadrep bench clip`).
//!
//! Everything a report compares is measured in the same process, one
//! configuration after the other, so ratios (INT8 vs fp32, batch 8 vs 1,
//! preprocessing vs inference) hold on the machine they ran on even when
//! absolute numbers drift between machines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::models::{ClipModel, ClipOptions, ImagePrecision, ModelError, OrtRuntime, RgbFrame};

/// What `bench clip` measures.
#[derive(Debug, Clone)]
pub struct ClipBenchSettings {
    /// Model directory.
    pub model_dir: PathBuf,
    /// Precisions to compare.
    pub precisions: Vec<ImagePrecision>,
    /// Batch sizes to compare.
    pub batch_sizes: Vec<usize>,
    /// Minimum measuring time per configuration.
    pub min_time: Duration,
    /// ONNX Runtime intra-op threads.
    pub intra_threads: usize,
    /// Frame size for the preprocessing measurement.
    pub frame_size: (u32, u32),
}

/// One measured encoder configuration.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderResult {
    /// Precision of the image encoder.
    pub precision: ImagePrecision,
    /// Images per run.
    pub batch: usize,
    /// Model runs measured.
    pub runs: usize,
    /// Images per second (model only, preprocessed input).
    pub images_per_s: f64,
    /// Mean milliseconds per run.
    pub ms_per_run: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct ClipBenchReport {
    /// Model name from the manifest.
    pub model: String,
    /// Model fingerprint (first 16 hex digits).
    pub fingerprint: String,
    /// Intra-op threads used.
    pub intra_threads: usize,
    /// Source frame size preprocessed.
    pub frame_size: (u32, u32),
    /// Milliseconds to preprocess one frame (resize, crop, normalise).
    pub preprocess_ms_per_frame: f64,
    /// Encoder results in measuring order.
    pub encoder: Vec<EncoderResult>,
}

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
fn time_loop(
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

/// Measures preprocessing and the image encoder in every configuration.
pub fn bench_clip(
    runtime: &OrtRuntime,
    settings: &ClipBenchSettings,
    mut progress: impl FnMut(&str),
) -> Result<ClipBenchReport, ModelError> {
    let (fw, fh) = settings.frame_size;
    let frame_data = synthetic_frame(fw, fh);
    let frame = RgbFrame::packed(fw, fh, &frame_data);

    let mut encoder = Vec::new();
    let mut preprocess_ms = None;
    let mut model_name = String::new();
    let mut fingerprint = String::new();
    for &precision in &settings.precisions {
        let options = ClipOptions {
            precision,
            intra_threads: settings.intra_threads,
            load_text_encoder: false,
        };
        let model = ClipModel::load(&settings.model_dir, runtime, &options)?;
        model_name = model.manifest().name.clone();
        fingerprint = model.fingerprint()[..16].to_string();
        if preprocess_ms.is_none() {
            let crop = model.preprocessor().crop_size as usize;
            let mut out = ndarray::Array3::<f32>::zeros((3, crop, crop));
            let (runs, elapsed) = time_loop(settings.min_time / 2, 20, || {
                model
                    .preprocessor()
                    .preprocess_into(&frame, out.view_mut())
                    .map_err(ModelError::from)
            })?;
            let ms = elapsed.as_secs_f64() * 1e3 / runs as f64;
            progress(&format!("preprocess {fw}x{fh}: {ms:.2} ms/frame"));
            preprocess_ms = Some(ms);
        }
        for &batch in &settings.batch_sizes {
            let frames = vec![frame; batch];
            let pixels = model.preprocess(&frames)?;
            model.get_image_features(pixels.view())?; // warm-up: first run allocates
            let (runs, elapsed) = time_loop(settings.min_time, 3, || {
                model.get_image_features(pixels.view()).map(|_| ())
            })?;
            let secs = elapsed.as_secs_f64();
            let r = EncoderResult {
                precision,
                batch,
                runs,
                images_per_s: (runs * batch) as f64 / secs,
                ms_per_run: secs * 1e3 / runs as f64,
            };
            progress(&format!(
                "{precision:?} batch {batch}: {:.1} img/s",
                r.images_per_s
            ));
            encoder.push(r);
        }
    }
    Ok(ClipBenchReport {
        model: model_name,
        fingerprint,
        intra_threads: settings.intra_threads,
        frame_size: settings.frame_size,
        preprocess_ms_per_frame: preprocess_ms.unwrap_or(f64::NAN),
        encoder,
    })
}

impl ClipBenchReport {
    /// Markdown table for `BENCHMARKS.md`, with ratios against fp32 batch 1.
    pub fn to_markdown(&self) -> String {
        let base = self.encoder.first().map_or(f64::NAN, |r| r.images_per_s);
        let mut s = format!(
            "model `{}` ({}), {} intra-op threads, preprocessing of a {}x{} frame: **{:.2} ms/frame**\n\n",
            self.model,
            self.fingerprint,
            self.intra_threads,
            self.frame_size.0,
            self.frame_size.1,
            self.preprocess_ms_per_frame
        );
        s.push_str("| precision | batch | images/s | ms/run | vs first row | preprocessing share of per-image time |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|\n");
        for r in &self.encoder {
            let per_image_ms = 1e3 / r.images_per_s;
            let share = self.preprocess_ms_per_frame
                / (self.preprocess_ms_per_frame + per_image_ms)
                * 100.0;
            s.push_str(&format!(
                "| {:?} | {} | {:.1} | {:.1} | {:.2}x | {:.1}% |\n",
                r.precision,
                r.batch,
                r.images_per_s,
                r.ms_per_run,
                r.images_per_s / base,
                share
            ));
        }
        s
    }
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

/// What `bench replay` measures.
#[derive(Debug, Clone)]
pub struct ReplayBenchSettings {
    /// The clip (generated when missing).
    pub clip: PathBuf,
    /// Clip length when generating, seconds at 25 fps, 1280x720.
    pub generate_secs: u32,
    /// Frames kept per second.
    pub sample_fps: f64,
    /// Batching.
    pub batcher: crate::batcher::BatcherConfig,
}

/// Results of `bench replay`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayBenchReport {
    /// Model name.
    pub model: String,
    /// Image encoder precision.
    pub precision: ImagePrecision,
    /// Clip and its sampled frames.
    pub clip: String,
    /// Frames kept by the sampler.
    pub frames: u64,
    /// End-to-end replay into a fresh store, seconds.
    pub end_to_end_s: f64,
    /// GStreamer decode + sampling + RGB + preprocessing, frames discarded, seconds.
    pub decode_only_s: f64,
    /// The same number of frames through the image encoder, seconds.
    pub model_only_s: f64,
    /// Peak resident memory after the end-to-end run (model loaded), bytes.
    pub peak_rss_bytes: u64,
    /// sled's size on disk divided by frames.
    pub store_disk_bytes_per_frame: f64,
}

/// Generates a 1280x720 25 fps H.264 clip with moving content.
pub fn generate_clip(path: &Path, secs: u32) -> Result<(), String> {
    crate::ingest::source::init_gstreamer().map_err(|e| e.to_string())?;
    use gstreamer::prelude::*;
    let desc = format!(
        "videotestsrc pattern=ball num-buffers={} ! video/x-raw,width=1280,height=720,framerate=25/1 \
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

/// End-to-end replay vs. its parts, in one process.
pub fn bench_replay(
    model: std::sync::Arc<ClipModel>,
    tagger: std::sync::Arc<crate::tagging::SceneTagger>,
    settings: &ReplayBenchSettings,
    mut progress: impl FnMut(&str),
) -> Result<ReplayBenchReport, String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    if !settings.clip.is_file() {
        progress(&format!(
            "generating {} ({} s, 1280x720, 25 fps)",
            settings.clip.display(),
            settings.generate_secs
        ));
        generate_clip(&settings.clip, settings.generate_secs)?;
    }
    let tmp = std::env::temp_dir().join(format!("roadrep-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);

    // 1. End to end, into a fresh store.
    let store = crate::store::Store::open(&tmp, model.fingerprint(), model.embed_dim())
        .map_err(|e| e.to_string())?;
    let replay_settings = crate::replay::ReplaySettings {
        files: vec![settings.clip.clone()],
        camera: Some("bench".into()),
        sample_fps: settings.sample_fps,
        file_start_ns: Some(0),
        queue_frames: 32,
        batcher: settings.batcher.clone(),
        segments: None,
        caption_preprocess: None,
    };
    struct Quiet;
    impl crate::replay::ReplayProgress for Quiet {
        fn file_started(&self, _: &Path, _: &str, _: Option<u64>) {}
        fn tick(&self, _: u64, _: u64, _: u64) {}
        fn file_finished(&self, _: &crate::replay::FileReport) {}
    }
    let start = Instant::now();
    let report = crate::replay::replay(
        model.clone(),
        tagger,
        store.clone(),
        &replay_settings,
        Arc::new(AtomicBool::new(false)),
        &Quiet,
    )
    .map_err(|e| e.to_string())?;
    let end_to_end_s = start.elapsed().as_secs_f64();
    if let Some(e) = report.files.iter().find_map(|f| f.error.as_ref()) {
        return Err(e.to_string());
    }
    let frames = report.totals.frames;
    let peak_rss = peak_rss_bytes();
    store.flush().map_err(|e| e.to_string())?;
    let disk = store.stats().map_err(|e| e.to_string())?.disk_bytes;
    drop(store);
    let _ = std::fs::remove_dir_all(&tmp);
    progress(&format!(
        "end to end: {frames} frames in {end_to_end_s:.2} s"
    ));

    // 2. Decode only: the same source, frames discarded.
    let spec = crate::ingest::source::SourceSpec {
        stream: "bench".into(),
        kind: crate::ingest::config::SourceKind::File(settings.clip.clone()),
        sample_fps: settings.sample_fps,
        rtsp_transport: crate::ingest::config::RtspTransport::Tcp,
        latency_ms: 0,
        file_start_ns: Some(0),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(32);
    let drain = std::thread::spawn(move || rx.iter().count());
    let counters = Arc::new(crate::ingest::source::SourceCounters::default());
    let start = Instant::now();
    crate::ingest::source::run_source(
        &spec,
        &model.preprocessor().clone().into(),
        &tx,
        &AtomicBool::new(false),
        None,
        &counters,
    )
    .map_err(|e| e.to_string())?;
    let decode_only_s = start.elapsed().as_secs_f64();
    drop(tx);
    let _ = drain.join();
    progress(&format!(
        "decode only: {} frames in {decode_only_s:.2} s",
        counters.delivered.load(Ordering::Relaxed)
    ));

    // 3. Model only: as many frames through the encoder, in full batches.
    let crop = model.preprocessor().crop_size as usize;
    let data = synthetic_frame(1280, 720);
    let mut one = ndarray::Array3::<f32>::zeros((3, crop, crop));
    model
        .preprocessor()
        .preprocess_into(&RgbFrame::packed(1280, 720, &data), one.view_mut())
        .map_err(|e| e.to_string())?;
    let batch = settings.batcher.max_frames.max(1);
    let pixels =
        ndarray::Array4::from_shape_fn((batch, 3, crop, crop), |(_, c, y, x)| one[[c, y, x]]);
    let start = Instant::now();
    let mut done = 0u64;
    while done < frames {
        let n = batch.min((frames - done) as usize);
        model
            .get_image_features(pixels.slice(ndarray::s![..n, .., .., ..]))
            .map_err(|e| e.to_string())?;
        done += n as u64;
    }
    let model_only_s = start.elapsed().as_secs_f64();
    progress(&format!(
        "model only: {frames} frames in {model_only_s:.2} s"
    ));

    Ok(ReplayBenchReport {
        model: model.manifest().name.clone(),
        precision: model.precision(),
        clip: settings.clip.display().to_string(),
        frames,
        end_to_end_s,
        decode_only_s,
        model_only_s,
        peak_rss_bytes: peak_rss,
        store_disk_bytes_per_frame: disk as f64 / frames.max(1) as f64,
    })
}

impl ReplayBenchReport {
    /// Markdown for `BENCHMARKS.md`.
    pub fn to_markdown(&self) -> String {
        let sum = self.decode_only_s + self.model_only_s;
        format!(
            "model `{}` ({:?}), clip `{}`, {} frames kept\n\n\
             | measure | seconds | frames/s |\n|---|---:|---:|\n\
             | decode only (GStreamer -> sampled RGB -> preprocessed) | {:.2} | {:.1} |\n\
             | model only (image encoder, same frames) | {:.2} | {:.1} |\n\
             | decode + model (sum) | {:.2} | {:.1} |\n\
             | **end to end replay** (decode, batch, encode, tag, store) | **{:.2}** | **{:.1}** |\n\n\
             end to end / (decode + model) = **{:.2}** (target <= 1.1; below 1 where decode and inference overlap)\n\n\
             peak RSS {:.0} MiB; store on disk {:.0} bytes/frame\n",
            self.model,
            self.precision,
            self.clip,
            self.frames,
            self.decode_only_s,
            self.frames as f64 / self.decode_only_s,
            self.model_only_s,
            self.frames as f64 / self.model_only_s,
            sum,
            self.frames as f64 / sum,
            self.end_to_end_s,
            self.frames as f64 / self.end_to_end_s,
            self.end_to_end_s / sum,
            self.peak_rss_bytes as f64 / (1 << 20) as f64,
            self.store_disk_bytes_per_frame,
        )
    }
}
