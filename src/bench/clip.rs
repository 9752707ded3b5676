//! `roadrep bench clip`: the image encoder per precision and batch size,
//! and preprocessing of one frame.

use std::path::PathBuf;
use std::time::Duration;

use ndarray::Axis;
use serde::Serialize;

use super::{synthetic_frame, time_loop};
use crate::models::preprocess::CropResizer;
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
    /// Milliseconds to preprocess one frame of a stream (resize, crop,
    /// normalise) as the ingest and the embedder do: the resize weights
    /// kept for the frame size, normalised into a batch tensor's slot.
    pub preprocess_ms_per_frame: f64,
    /// Milliseconds to preprocess a lone frame (weights computed for it).
    pub preprocess_lone_ms_per_frame: f64,
    /// Encoder results in measuring order.
    pub encoder: Vec<EncoderResult>,
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
    let mut preprocess_lone_ms = f64::NAN;
    let mut model_name = String::new();
    let mut fingerprint = String::new();
    for &precision in &settings.precisions {
        let options = ClipOptions {
            precision,
            intra_threads: settings.intra_threads,
            load_text_encoder: false,
            verified_files_dir: None,
        };
        let model = ClipModel::load(&settings.model_dir, runtime, &options)?;
        model_name = model.manifest().name.clone();
        fingerprint = model.fingerprint()[..16].to_string();
        if preprocess_ms.is_none() {
            let pre = model.preprocessor();
            let crop = pre.crop_size as usize;
            let mut out = ndarray::Array3::<f32>::zeros((3, crop, crop));
            let (runs, elapsed) = time_loop(settings.min_time / 4, 20, || {
                pre.preprocess_into(&frame, out.view_mut())
                    .map_err(ModelError::from)
            })?;
            preprocess_lone_ms = elapsed.as_secs_f64() * 1e3 / runs as f64;
            let mut resizer = CropResizer::new(pre);
            let mut batch = ndarray::Array4::<f32>::zeros((8, 3, crop, crop));
            let mut slot = 0;
            let (runs, elapsed) = time_loop(settings.min_time / 4, 20, || {
                let rgb = resizer.resize_crop(&frame)?;
                slot = (slot + 1) % 8;
                pre.normalize_into(&rgb, batch.index_axis_mut(Axis(0), slot))
                    .map_err(ModelError::from)
            })?;
            let ms = elapsed.as_secs_f64() * 1e3 / runs as f64;
            progress(&format!(
                "preprocess {fw}x{fh}: {ms:.2} ms/frame of a stream, {preprocess_lone_ms:.2} ms a lone frame"
            ));
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
        preprocess_lone_ms_per_frame: preprocess_lone_ms,
        encoder,
    })
}

impl ClipBenchReport {
    /// Markdown table for `BENCHMARKS.md`, with ratios against fp32 batch 1.
    pub fn to_markdown(&self) -> String {
        let base = self.encoder.first().map_or(f64::NAN, |r| r.images_per_s);
        let mut s = format!(
            "model `{}` ({}), {} intra-op threads, preprocessing of a {}x{} frame: **{:.2} ms/frame** of a stream \
             (resize weights kept per frame size, normalised into the batch tensor), {:.2} ms for a lone frame\n\n",
            self.model,
            self.fingerprint,
            self.intra_threads,
            self.frame_size.0,
            self.frame_size.1,
            self.preprocess_ms_per_frame,
            self.preprocess_lone_ms_per_frame
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
