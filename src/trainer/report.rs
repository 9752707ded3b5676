//! Reports: JSON for machines, SVG plots for people (loss curves, metrics
//! before against after). SVG is written directly: two simple charts do not
//! justify a plotting dependency.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::TrainerError;
use super::eval::Metrics;
use super::train::HistoryPoint;

/// The `trainer eval` report.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Base model directory.
    pub model: String,
    /// Adapter directory, if one was evaluated.
    pub adapter: Option<String>,
    /// Dataset path.
    pub data: String,
    /// Records skipped as unreadable (file and line).
    pub skipped: Vec<String>,
    /// Metrics of the base model.
    pub before: Metrics,
    /// Metrics with the adapter.
    pub after: Option<Metrics>,
    /// BLEU-1..4 of `--captions` against the dataset's captions.
    pub bleu: Option<[f64; 4]>,
    /// CIDEr-D of `--captions` against the dataset's captions.
    pub cider: Option<f64>,
}

const W: f64 = 640.0;
const H: f64 = 360.0;
const PAD: f64 = 48.0;

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        W / 2.0,
        escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Training and validation loss against the optimizer step.
pub fn loss_curve_svg(history: &[HistoryPoint]) -> String {
    loss_curve_svg_titled(history, "Loss (symmetric InfoNCE)")
}

/// [`loss_curve_svg`] under another title (another loss).
pub fn loss_curve_svg_titled(history: &[HistoryPoint], title: &str) -> String {
    let mut svg = header(title);
    let train: Vec<(f64, f64)> = history
        .iter()
        .map(|p| (p.step as f64, p.train_loss as f64))
        .collect();
    let val: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|p| p.val_loss.map(|v| (p.step as f64, v as f64)))
        .collect();
    let all = train.iter().chain(&val);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.clone().map(|p| p.1).fold(f64::MIN, f64::max).max(1e-6);
    let y_min = all.map(|p| p.1).fold(f64::MAX, f64::min).min(y_max - 1e-6);
    let sx = |x: f64| PAD + x / x_max * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - (y - y_min) / (y_max - y_min) * (H - 2.0 * PAD);
    let _ = writeln!(
        svg,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step (max {x_max})</text>",
        W / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"8\" y=\"{}\">{y_max:.3}</text><text x=\"8\" y=\"{}\">{y_min:.3}</text>",
        PAD,
        H - PAD
    );
    for (points, color, label, y) in [
        (&train, "steelblue", "train", 40.0),
        (&val, "darkorange", "validation", 56.0),
    ] {
        if points.is_empty() {
            continue;
        }
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, yv) in points.iter().filter(|_| points.len() < 50) {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                sx(x),
                sy(yv)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{y}\" fill=\"{color}\">{label}</text>",
            W - PAD - 80.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Bars of recall@1 and zero-shot accuracies, before and after.
pub fn before_after_svg(before: &Metrics, after: Option<&Metrics>) -> String {
    let mut svg = header("Before / after");
    let mut rows: Vec<(String, f64, Option<f64>)> = vec![
        (
            "image→text R@1".into(),
            before.image_to_text.r1,
            after.map(|a| a.image_to_text.r1),
        ),
        (
            "text→image R@1".into(),
            before.text_to_image.r1,
            after.map(|a| a.text_to_image.r1),
        ),
        (
            "matched cosine".into(),
            before.matched_cosine_mean.max(0.0),
            after.map(|a| a.matched_cosine_mean.max(0.0)),
        ),
    ];
    for (set, z) in &before.zero_shot {
        rows.push((
            format!("zero-shot {set}"),
            z.accuracy,
            after.and_then(|a| a.zero_shot.get(set)).map(|z| z.accuracy),
        ));
    }
    let slot = (W - 2.0 * PAD) / rows.len() as f64;
    let bar = slot / 3.0;
    let sy = |v: f64| (H - 2.0 * PAD) * v.clamp(0.0, 1.0);
    for (i, (label, b, a)) in rows.iter().enumerate() {
        let x = PAD + i as f64 * slot + slot / 6.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"#999\"/>",
            H - PAD - sy(*b),
            sy(*b)
        );
        if let Some(a) = a {
            let _ = writeln!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"steelblue\"/>",
                x + bar,
                H - PAD - sy(*a),
                sy(*a)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            x + bar,
            H - PAD + 16.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"40\" fill=\"#999\">before</text><text x=\"{}\" y=\"56\" fill=\"steelblue\">after</text>",
        W - PAD - 60.0,
        W - PAD - 60.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// Writes text to `path`.
pub fn write_text(path: &Path, text: &str) -> Result<(), TrainerError> {
    std::fs::write(path, text).map_err(|e| TrainerError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_curve_is_svg_with_both_series() {
        let h = vec![
            HistoryPoint {
                step: 1,
                epoch: 0,
                train_loss: 2.0,
                val_loss: None,
                lr: 1e-3,
            },
            HistoryPoint {
                step: 2,
                epoch: 0,
                train_loss: 1.5,
                val_loss: Some(1.7),
                lr: 1e-3,
            },
        ];
        let svg = loss_curve_svg(&h);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("train") && svg.contains("validation"));
    }
}
