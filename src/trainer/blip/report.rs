//! `trainer eval-captioner`'s report: BLEU-1..4 and CIDEr-D of the base and
//! the fine-tuned captioner side by side (a text table, `report.json`) and
//! `report.html` with sample thumbnails, both captions and the references,
//! and the training run's loss curves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::trainer::TrainerError;
use crate::trainer::cider::cider_d;
use crate::trainer::dataset::Sample;
use crate::trainer::eval::bleu;

/// Caption metrics of one model on one image set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CaptionScores {
    /// Corpus BLEU-1..4 (0..1).
    pub bleu: [f64; 4],
    /// CIDEr-D (coco-caption's, 0..10).
    pub cider_d: f64,
}

impl CaptionScores {
    /// Scores of `hypotheses` (one per image) against each image's references.
    pub fn of(hypotheses: &[String], references: &[Vec<String>]) -> Self {
        Self {
            bleu: bleu(hypotheses, references),
            cider_d: cider_d(hypotheses, references).score,
        }
    }
}

/// One row of the HTML's sample table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionSample {
    /// The image file, as the manifest names it (resolved).
    pub image: String,
    /// Thumbnail path relative to the report (None: not written).
    pub thumbnail: Option<String>,
    /// The base model's caption.
    pub base: String,
    /// The fine-tuned model's caption.
    pub tuned: String,
    /// The dataset's captions of the image.
    pub references: Vec<String>,
}

/// `report.json` of `trainer eval-captioner`.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionEvalReport {
    /// Base BLIP model directory.
    pub model: String,
    /// The fine-tuned captioner: an adapter or a model directory.
    pub tuned: String,
    /// "adapter" or "model".
    pub tuned_kind: String,
    /// Dataset path.
    pub data: String,
    /// Which images: "validation (fraction F, seed S)" or "all".
    pub split: String,
    /// Distinct images captioned.
    pub images: usize,
    /// Decoding: "greedy" or "beam search (N beams)", max new tokens, prompt.
    pub decoding: String,
    /// Metrics of the base model.
    pub base: CaptionScores,
    /// Metrics of the fine-tuned model.
    pub tuned_scores: CaptionScores,
    /// The first samples, for people.
    pub samples: Vec<CaptionSample>,
    /// Records left out as unreadable.
    pub skipped: Vec<String>,
}

/// The distinct images of `idx` (first occurrence, in order) and, for each,
/// its references: the captions of every sample of `samples` with that image.
pub fn images_and_references(samples: &[Sample], idx: &[usize]) -> (Vec<usize>, Vec<Vec<String>>) {
    let mut refs: BTreeMap<&Path, Vec<String>> = BTreeMap::new();
    for s in samples {
        let r = refs.entry(s.image.as_path()).or_default();
        if !r.contains(&s.caption) {
            r.push(s.caption.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    let images: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| seen.insert(samples[i].image.as_path()))
        .collect();
    let references = images
        .iter()
        .map(|&i| refs[samples[i].image.as_path()].clone())
        .collect();
    (images, references)
}

/// The side-by-side table for stdout.
pub fn table(r: &CaptionEvalReport) -> String {
    let mut t = format!(
        "{} images ({}), {}\n{:<10} {:>7} {:>7} {:>7} {:>7} {:>8}\n",
        r.images, r.split, r.decoding, "model", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"
    );
    for (name, s) in [("base", &r.base), ("tuned", &r.tuned_scores)] {
        let _ = writeln!(
            t,
            "{name:<10} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>8.4}",
            s.bleu[0], s.bleu[1], s.bleu[2], s.bleu[3], s.cider_d
        );
    }
    t
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `report.html`: the metrics, the loss curves (`loss_svg`, inline) and the
/// sample table (thumbnails linked relative to the HTML).
pub fn html(r: &CaptionEvalReport, loss_svg: Option<&str>) -> String {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Captioner evaluation</title>\n\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}\
         td.n{text-align:right}img{max-width:160px}.ref{color:#555}</style></head><body>\n\
         <h1>Captioner evaluation</h1>\n",
    );
    let _ = writeln!(
        h,
        "<p>Base <code>{}</code>, fine-tuned ({}) <code>{}</code>, data <code>{}</code>: \
         {} images ({}), {}.</p>",
        esc(&r.model),
        esc(&r.tuned_kind),
        esc(&r.tuned),
        esc(&r.data),
        r.images,
        esc(&r.split),
        esc(&r.decoding)
    );
    h.push_str(
        "<table><tr><th>model</th><th>BLEU-1</th><th>BLEU-2</th><th>BLEU-3</th>\
         <th>BLEU-4</th><th>CIDEr-D</th></tr>\n",
    );
    for (name, s) in [("base", &r.base), ("fine-tuned", &r.tuned_scores)] {
        let _ = write!(h, "<tr><td>{name}</td>");
        for v in s.bleu.iter().chain([&s.cider_d]) {
            let _ = write!(h, "<td class=\"n\">{v:.4}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    if let Some(svg) = loss_svg {
        let _ = writeln!(h, "<h2>Training loss</h2>\n{svg}");
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(
            h,
            "<p>{} records skipped as unreadable.</p>",
            r.skipped.len()
        );
    }
    let _ = writeln!(
        h,
        "<h2>Samples ({} of {})</h2>\n<table><tr><th>image</th><th>base</th>\
         <th>fine-tuned</th><th>reference(s)</th></tr>",
        r.samples.len(),
        r.images
    );
    for s in &r.samples {
        let name = Path::new(&s.image)
            .file_name()
            .map_or(s.image.clone(), |n| n.to_string_lossy().into_owned());
        h.push_str("<tr><td>");
        if let Some(t) = &s.thumbnail {
            let _ = write!(h, "<img src=\"{}\" alt=\"{}\"><br>", esc(t), esc(&name));
        }
        let _ = writeln!(
            h,
            "<span title=\"{}\">{}</span></td><td>{}</td><td>{}</td><td class=\"ref\">{}</td></tr>",
            esc(&s.image),
            esc(&name),
            esc(&s.base),
            esc(&s.tuned),
            s.references
                .iter()
                .map(|c| esc(c))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

/// Writes `rgb` (`side² × 3`, a dataset crop) as a JPEG at most `max` pixels
/// wide to `path`.
pub fn write_thumbnail(path: &Path, rgb: &[u8], side: u32, max: u32) -> Result<(), TrainerError> {
    let img = image::RgbImage::from_raw(side, side, rgb.to_vec())
        .ok_or_else(|| TrainerError::Config(format!("thumbnail: not {side}² RGB pixels")))?;
    let small = if side > max {
        image::imageops::thumbnail(&img, max, max)
    } else {
        img
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80)
        .encode_image(&small)
        .map_err(|e| TrainerError::Config(format!("thumbnail: {e}")))?;
    std::fs::write(path, bytes).map_err(|e| TrainerError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(image: &str, caption: &str) -> Sample {
        Sample {
            image: image.into(),
            caption: caption.into(),
            labels: BTreeMap::new(),
            origin: ("m.jsonl".into(), Some(1)),
        }
    }

    #[test]
    fn references_are_grouped_by_image() {
        let s = [
            sample("a.jpg", "a red car"),
            sample("b.jpg", "a road"),
            sample("a.jpg", "a car"),
        ];
        let (images, refs) = images_and_references(&s, &[2, 0, 1]);
        assert_eq!(images, vec![2, 1]);
        assert_eq!(refs[0], vec!["a red car", "a car"]);
        assert_eq!(refs[1], vec!["a road"]);
    }

    #[test]
    fn html_escapes_and_names_samples() {
        let scores = CaptionScores::of(&["a car".into()], &[vec!["a car".into()]]);
        let r = CaptionEvalReport {
            model: "m".into(),
            tuned: "t".into(),
            tuned_kind: "adapter".into(),
            data: "d".into(),
            split: "all".into(),
            images: 1,
            decoding: "greedy".into(),
            base: scores,
            tuned_scores: scores,
            samples: vec![CaptionSample {
                image: "/x/a<b>.jpg".into(),
                thumbnail: Some("thumbs/0.jpg".into()),
                base: "a & b".into(),
                tuned: "c".into(),
                references: vec!["r1".into(), "r2".into()],
            }],
            skipped: vec![],
        };
        let h = html(&r, Some("<svg></svg>"));
        assert!(h.contains("a&lt;b&gt;.jpg") && h.contains("a &amp; b"));
        assert!(h.contains("src=\"thumbs/0.jpg\"") && h.contains("r1<br>r2"));
        assert!(h.contains("<svg></svg>"));
        assert!(table(&r).contains("CIDEr-D"));
    }
}
