//! `roadrep bench replay`: end-to-end replay of a 720p clip into a fresh
//! store against its parts (decode alone, the model alone), in one process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::{generate_clip, peak_rss_bytes, synthetic_frame};
use crate::ingest::thumbnail::ThumbnailMaker;
use crate::models::{ClipModel, ImagePrecision, RgbFrame};
use crate::pipeline::{Pipeline, PipelineLoad, PipelineParts, PipelineSettings, frame_channel};
use crate::replay::{FileReport, ReplayProgress, ReplaySettings, replay};
use crate::tagging::SceneTagger;

/// What `bench replay` measures.
#[derive(Debug, Clone)]
pub struct ReplayBenchSettings {
    /// The clip (generated when missing).
    pub clip: PathBuf,
    /// Clip length when generating, seconds at 25 fps, 1280x720.
    pub generate_secs: u32,
    /// Frames kept per second.
    pub sample_fps: f64,
    /// Which frames are decoded.
    pub decode: crate::ingest::config::DecodeMode,
    /// Batching.
    pub batcher: crate::pipeline::BatcherConfig,
    /// Width of the stored thumbnails; 0: none.
    pub thumbnail_width: u32,
    /// Width of keyframe pictures (made of every frame while it may become
    /// a keyframe; measured in the decode-only pass); 0: none.
    pub keyframe_width: u32,
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
    /// Width of the stored thumbnails (0: none).
    pub thumbnail_width: u32,
    /// Mean size of a stored thumbnail (JPEG), bytes.
    pub thumbnail_bytes: f64,
    /// Making one thumbnail of a 1280x720 frame (resize + JPEG), ms.
    pub thumbnail_ms: f64,
    /// Width of keyframe pictures (0: none).
    pub keyframe_width: u32,
    /// Mean size of a keyframe picture (JPEG) of the clip's frames, bytes.
    pub keyframe_bytes: f64,
}

/// End-to-end replay vs. its parts, in one process.
pub fn bench_replay(
    model: Arc<ClipModel>,
    tagger: Arc<SceneTagger>,
    settings: &ReplayBenchSettings,
    mut progress: impl FnMut(&str),
) -> Result<ReplayBenchReport, String> {
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
    let replay_settings = ReplaySettings {
        files: vec![settings.clip.clone()],
        camera: Some("bench".into()),
        sample_fps: settings.sample_fps,
        file_start_ns: Some(0),
        decode: settings.decode,
    };
    struct Quiet;
    impl ReplayProgress for Quiet {
        fn file_started(&self, _: &Path, _: &str, _: Option<u64>) {}
        fn tick(&self, _: u64, _: u64, _: u64) {}
        fn file_finished(&self, _: &FileReport) {}
    }
    let start = Instant::now();
    let pipeline = Pipeline::start(
        PipelineParts {
            model: model.clone(),
            tagger,
            store: store.clone(),
        },
        &PipelineSettings {
            queue_frames: 32,
            batcher: settings.batcher.clone(),
            segments: None,
            caption_preprocess: None,
            max_caption_backlog: 1,
            thumbnail_width: settings.thumbnail_width,
            keyframe_width: 0,
            rigs: None,
        },
        Arc::new(AtomicBool::new(false)),
    );
    let report = replay(pipeline, &replay_settings, &Quiet).map_err(|e| e.to_string())?;
    let end_to_end_s = start.elapsed().as_secs_f64();
    if let Some(e) = report.files.iter().find_map(|f| f.error.as_ref()) {
        return Err(e.to_string());
    }
    let frames = report.totals.frames;
    let peak_rss = peak_rss_bytes();
    store.flush().map_err(|e| e.to_string())?;
    let disk = store.stats().map_err(|e| e.to_string())?.disk_bytes;
    let (thumbs, thumb_bytes) = store.thumbnail_bytes().map_err(|e| e.to_string())?;
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
        decode: settings.decode,
        skip_decoders: Vec::new(),
    };
    let (tx, rx) = frame_channel(32, PipelineLoad::new());
    // Frames and the bytes of their keyframe pictures.
    let drain = std::thread::spawn(move || {
        rx.iter()
            .fold((0u64, 0u64), |(n, bytes), event| match event {
                crate::pipeline::IngestEvent::Frame(f) => {
                    let jpeg = f.keyframe_images.jpeg.map_or(0, |j| j.len() as u64);
                    (n + 1, bytes + jpeg)
                }
                _ => (n, bytes),
            })
    });
    let counters = Arc::new(crate::ingest::source::SourceCounters::default());
    let start = Instant::now();
    let preprocessing = crate::models::preprocess::FramePreprocessing {
        thumbnail: ThumbnailMaker::new(settings.thumbnail_width),
        keyframe: ThumbnailMaker::keyframe(settings.keyframe_width),
        ..model.preprocessor().clone().into()
    };
    crate::ingest::source::run_source(
        &spec,
        &preprocessing,
        &tx,
        &AtomicBool::new(false),
        None,
        &counters,
    )
    .map_err(|e| e.to_string())?;
    let decode_only_s = start.elapsed().as_secs_f64();
    drop(tx);
    let (drained, keyframe_bytes) = drain.join().unwrap_or_default();
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
        thumbnail_width: settings.thumbnail_width,
        thumbnail_bytes: thumb_bytes as f64 / thumbs.max(1) as f64,
        thumbnail_ms: thumbnail_ms(settings.thumbnail_width)?,
        keyframe_width: settings.keyframe_width,
        keyframe_bytes: keyframe_bytes as f64 / drained.max(1) as f64,
    })
}

/// Time to make one thumbnail of a 1280x720 frame (the ingest's cost per
/// stored frame), ms; 0 when thumbnails are off.
fn thumbnail_ms(width: u32) -> Result<f64, String> {
    let Some(maker) = ThumbnailMaker::new(width) else {
        return Ok(0.0);
    };
    let data = synthetic_frame(1280, 720);
    let frame = RgbFrame::packed(1280, 720, &data);
    const RUNS: u32 = 50;
    let start = Instant::now();
    for _ in 0..RUNS {
        maker.make(&frame)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / f64::from(RUNS))
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
             peak RSS {:.0} MiB; store on disk {:.0} bytes/frame; thumbnails {} px wide: {:.0} bytes each, {:.2} ms each to make (1280x720); \
             keyframe pictures {} px wide (decode only): {:.0} bytes each\n",
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
            self.thumbnail_width,
            self.thumbnail_bytes,
            self.thumbnail_ms,
            self.keyframe_width,
            self.keyframe_bytes,
        )
    }
}
