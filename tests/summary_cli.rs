//! `roadrep summary` and `roadrep segments` on the real dash-cam clip, with
//! the default config (tiny CLIP, tiny BLIP captions).

mod common;

use std::path::Path;
use std::process::Output;

fn roadrep(args: &[&str], dir: &Path) -> Output {
    common::roadrep(args, &dir.join("cache"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn summary_of_the_real_clip_lists_captioned_segments() {
    let Some(realdata) = common::realdata() else {
        eprintln!("skipped: ../shared/realdata is absent");
        return;
    };
    let clip = realdata.join("udacity_lanelines_p1/solidWhiteRight.mp4");
    let clip_s = clip.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store_s = store.to_str().unwrap();

    let o = roadrep(
        &["summary", clip_s, "--store", store_s, "--json"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let segments: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!segments.is_empty());
    assert_eq!(segments[0]["start_s"].as_f64(), Some(0.0));
    // 18 frames sampled at 2 fps cover 9 s (the clip's pts start a frame late).
    let last_end = segments.last().unwrap()["end_s"].as_f64().unwrap();
    assert!((last_end - 9.0).abs() < 0.1, "{last_end}");
    for w in segments.windows(2) {
        assert_eq!(w[0]["end_s"], w[1]["start_s"], "segments are contiguous");
    }
    for s in &segments {
        assert_eq!(s["caption_state"], "done", "{s}");
        let caption = s["caption"].as_str().unwrap();
        assert!(!caption.trim().is_empty());
        let line = s["line"].as_str().unwrap();
        assert!(line.starts_with("00:0"), "{line}");
        assert!(line.ends_with(&format!(": \"{caption}\"")), "{line}");
        assert_eq!(s["tags"].as_array().unwrap().len(), 4);
    }

    // Text form; the clip is not decoded again.
    let o = roadrep(&["summary", clip_s, "--store", store_s], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("already replayed"),
        "{}",
        text(&o.stderr)
    );
    let out = text(&o.stdout);
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap().starts_with(&format!("# {clip_s}")),
        "{out}"
    );
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), segments.len(), "{out}");
    assert_eq!(body[0], segments[0]["line"].as_str().unwrap());

    // Another spelling of the same file's path finds the same segments.
    let canonical = std::fs::canonicalize(&clip).unwrap();
    assert_ne!(canonical, clip, "the test path is not canonical");
    let o = roadrep(
        &[
            "summary",
            canonical.to_str().unwrap(),
            "--store",
            store_s,
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let again: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again, segments);

    // Captions are searchable by their words.
    let caption = segments[0]["caption"].as_str().unwrap();
    let word = caption
        .split_whitespace()
        .find(|w| w.len() > 3)
        .unwrap_or(caption.split_whitespace().next().unwrap());
    let o = roadrep(
        &["segments", "--store", store_s, "--caption", word, "--json"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let found: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        found.iter().any(|s| s["caption"] == segments[0]["caption"]),
        "{word}"
    );
    let o = roadrep(
        &[
            "segments",
            "--store",
            store_s,
            "--caption",
            "xylophone",
            "--json",
        ],
        dir.path(),
    );
    let found: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(found.is_empty());
}

#[test]
fn bad_summary_flags_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let o = roadrep(
        &[
            "summary",
            "--store",
            store.to_str().unwrap(),
            "--from",
            "yesterday",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("from") && e.lines().count() <= 2, "{e}");
}
