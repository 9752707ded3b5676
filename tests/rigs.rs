//! Multi-camera rigs end to end: still images (nuScenes), `replay --rig`
//! of generated clips (exact record counts, offsets, a missing camera),
//! and a rig replay killed with SIGKILL and resumed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// 2024-05-01T10:00:00Z.
const T0: &str = "1714557600";

fn ok(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Every rig record of `rig`, as `roadrep search --rig` lists them, by time:
/// (anchor ns, per role (role, present, offset ms)).
/// (role, present, offset ms) of one view.
type ViewSummary = (String, bool, Option<f64>);

fn records(store: &Path, rig: &str, cache: &Path) -> Vec<(i64, Vec<ViewSummary>)> {
    let out = common::roadrep(
        &[
            "search",
            "--rig",
            rig,
            "a road",
            "--top",
            "10000",
            "--json",
            "--store",
            store.to_str().unwrap(),
        ],
        cache,
    );
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    let mut recs: Vec<_> = v["rig_hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let views = h["views"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        v["role"].as_str().unwrap().to_string(),
                        v["present"].as_bool().unwrap(),
                        v["offset_ms"].as_f64(),
                    )
                })
                .collect();
            (h["ts_ns"].as_i64().unwrap(), views)
        })
        .collect();
    recs.sort_by_key(|r| r.0);
    recs
}

/// `roadrep replay --rig car1 ROLE=FILE... --start ROLE=TIME... --store STORE`.
fn rig_replay_args(views: &[(&str, &Path)], starts: &[(&str, &str)], store: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec!["replay".into(), "--rig".into(), "car1".into()];
    args.extend(
        views
            .iter()
            .map(|(role, file)| format!("{role}={}", file.display())),
    );
    for (role, time) in starts {
        args.push("--start".into());
        args.push(format!("{role}={time}"));
    }
    args.push("--store".into());
    args.push(store.display().to_string());
    args
}

fn rig_replay(
    views: &[(&str, &Path)],
    starts: &[(&str, &str)],
    store: &Path,
    cache: &Path,
) -> Output {
    let args = rig_replay_args(views, starts, store);
    common::roadrep(&args.iter().map(String::as_str).collect::<Vec<_>>(), cache)
}

/// The `error:` lines of a run that must have failed.
fn error_lines(out: &Output) -> Vec<String> {
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn nuscenes_keyframe_is_one_record_of_six_views() {
    let Some(real) = common::realdata() else {
        eprintln!("skipped: ../shared/realdata is absent");
        return;
    };
    let dir = real.join("nuscenes_6cam_mmdet3d");
    let mut images: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".jpg"))
        .collect();
    images.sort();
    assert_eq!(images.len(), 7);
    let cache = tempfile::tempdir().unwrap();
    let mut args = vec!["tag", "--rig", "--json"];
    args.extend(images.iter().map(String::as_str));
    let v: Value = serde_json::from_str(&ok(&common::roadrep(&args, cache.path()))).unwrap();
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{v:#}");
    let r = &records[0];
    assert_eq!(r["anchor"], "front");
    assert_eq!(r["anchor_ns"], 1_532_402_927_612_460_000i64);
    assert_eq!(r["views_present"], 6);
    let offset = |role: &str| {
        r["views"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["role"] == role)
            .and_then(|v| v["offset_ms"].as_f64())
            .unwrap()
    };
    // From the names' microseconds.
    assert!((offset("back_left") - 34.963).abs() < 1e-6);
    assert!((offset("front_left") + 7.616).abs() < 1e-6);
    assert_eq!(offset("front"), 0.0);
    // The CAM_BACK_LEFT frame of another log is not in the record.
    let not_matched = v["not_matched"].as_array().unwrap();
    assert_eq!(not_matched.len(), 1);
    assert!(
        not_matched[0][0]
            .as_str()
            .unwrap()
            .contains("tests__n015-2018-07-18")
    );
    assert!(r["fused_tags"].as_array().unwrap().len() >= 4);
    assert!(
        r["fusion"].as_str().unwrap().contains("fusion-tiny"),
        "{r:#}"
    );
}

#[test]
fn replayed_rig_gives_one_record_per_anchor_sample_and_a_missing_camera_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (front, back) = (dir.path().join("front.mp4"), dir.path().join("back.mp4"));
    // 4 s each at 25 fps: 8 samples at 2 fps.
    common::make_clip(&front, 100, 25, 320, 240, "smpte");
    common::make_clip(&back, 100, 25, 320, 240, "ball");
    let store = dir.path().join("store");
    let back_start = "1714557600.1"; // 100 ms after the front camera
    let missing = dir.path().join("left.mp4");
    let out = rig_replay(
        &[("front", &front), ("back", &back), ("front_left", &missing)],
        &[("front", T0), ("back", back_start), ("front_left", T0)],
        &store,
        &cache,
    );
    let errors = error_lines(&out);
    assert_eq!(
        errors.len(),
        1,
        "a missing file fails the replay: {errors:?}"
    );
    assert!(errors[0].contains("left.mp4"), "{errors:?}");
    let recs = records(&store, "car1", &cache);
    assert_eq!(recs.len(), 8, "{recs:?}");
    for (i, (ts, views)) in recs.iter().enumerate() {
        // Each 500 ms step takes the first 25 fps frame at or after it.
        let step_ns = i as i64 * 500_000_000;
        let sampled_ns = (step_ns + 39_999_999) / 40_000_000 * 40_000_000;
        assert_eq!(*ts, 1_714_557_600_000_000_000 + sampled_ns);
        assert_eq!(views[0], ("front".into(), true, Some(0.0)));
        assert_eq!(views[1], ("back".into(), true, Some(100.0)));
        assert_eq!(views[2], ("front_left".into(), false, None));
    }
    // Replaying again changes nothing.
    let again = rig_replay(
        &[("front", &front), ("back", &back)],
        &[("front", T0), ("back", back_start)],
        &store,
        &cache,
    );
    ok(&again);
    assert_eq!(records(&store, "car1", &cache), recs);
}

#[test]
fn a_killed_rig_replay_resumes_to_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (front, back) = (dir.path().join("front.mp4"), dir.path().join("back.mp4"));
    // 40 s each: 80 samples per camera, long enough to kill mid-way.
    common::make_clip(&front, 1000, 25, 320, 240, "smpte");
    common::make_clip(&back, 1000, 25, 320, 240, "ball");
    let views: [(&str, &Path); 2] = [("front", &front), ("back", &back)];
    let starts = [("front", T0), ("back", "1714557600.13")];
    let reference = dir.path().join("reference");
    ok(&rig_replay(&views, &starts, &reference, &cache));
    let expected = records(&reference, "car1", &cache);
    assert_eq!(expected.len(), 80);

    let store = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(rig_replay_args(&views, &starts, &store))
        .current_dir(common::root())
        .env("XDG_CACHE_HOME", &cache)
        .env_remove("ROADREP_CONFIG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut killed = false;
    for line in stderr.lines() {
        let line = line.unwrap();
        // "replay: 12.0 s of video, 300 frames decoded, 40 stored"
        let stored: Option<u64> = line
            .strip_suffix(" stored")
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok());
        if stored.is_some_and(|n| n >= 40) {
            child.kill().unwrap();
            killed = true;
            break;
        }
    }
    child.wait().unwrap();
    assert!(killed, "the replay ended before it could be killed");
    ok(&rig_replay(&views, &starts, &store, &cache));
    assert_eq!(records(&store, "car1", &cache), expected);
}

#[test]
fn rig_summary_segments_the_fused_records_with_the_anchor_captions() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (front, back) = (dir.path().join("front.mp4"), dir.path().join("back.mp4"));
    // Both cameras change scene at 4 s and 8 s.
    common::scene_clip(&front, &["smpte", "ball", "checkers-8"], 4);
    common::scene_clip(&back, &["pinwheel", "checkers-8", "smpte"], 4);
    let store = dir.path().join("store");
    let store_s = store.to_str().unwrap();
    ok(&rig_replay(
        &[("front", &front), ("back", &back)],
        &[("front", T0), ("back", T0)],
        &store,
        &cache,
    ));
    let out = common::roadrep(
        &["summary", "--rig", "car1", "--json", "--store", store_s],
        &cache,
    );
    let segments: Vec<Value> = serde_json::from_str(&ok(&out)).unwrap();
    assert!(segments.len() >= 3, "{segments:#?}");
    assert_eq!(segments[0]["start_s"].as_f64(), Some(0.0));
    for w in segments.windows(2) {
        assert_eq!(w[0]["end_s"], w[1]["start_s"], "segments are contiguous");
    }
    // Cuts at the scene changes (within a sample).
    let starts: Vec<f64> = segments
        .iter()
        .map(|s| s["start_s"].as_f64().unwrap())
        .collect();
    for change in [4.0, 8.0] {
        assert!(
            starts.iter().any(|s| (s - change).abs() <= 0.6),
            "{starts:?}"
        );
    }
    // Each caption is the anchor camera's segment caption at the keyframe.
    let front_segments: Vec<Value> = serde_json::from_str(&ok(&common::roadrep(
        &[
            "segments",
            "--camera",
            "car1-front",
            "--json",
            "--store",
            store_s,
        ],
        &cache,
    )))
    .unwrap();
    for s in &segments {
        assert_eq!(s["camera"], "car1");
        let kf = s["keyframe"].as_str().unwrap();
        let holder = front_segments
            .iter()
            .find(|f| f["start"].as_str().unwrap() <= kf && kf < f["end"].as_str().unwrap())
            .expect("an anchor segment holds the keyframe");
        assert_eq!(s["caption"], holder["caption"], "{s:#}");
        assert_eq!(s["tags"].as_array().unwrap().len(), 4);
    }
    // The text form: one line per segment.
    let text = ok(&common::roadrep(
        &["summary", "--rig", "car1", "--store", store_s],
        &cache,
    ));
    assert_eq!(
        text.lines().filter(|l| l.starts_with("00:")).count(),
        segments.len(),
        "{text}"
    );
}

#[test]
fn verify_model_checks_every_kind_of_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for (model, kind_says) in [
        ("models/clip-tiny", "random tiny CLIP"),
        ("models/blip-tiny", "random tiny BLIP"),
        ("models/fusion-tiny", "for CLIP a6d6254112105860"),
    ] {
        let out = ok(&common::roadrep(&["verify-model", model], &cache));
        assert!(out.contains(": ok (") && out.contains(kind_says), "{out}");
    }
    // A damaged fusion model is refused, naming the file.
    let copy = dir.path().join("fusion");
    common::copy_dir(&common::root().join("models/fusion-tiny"), &copy);
    let onnx = copy.join("fusion.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&onnx, bytes).unwrap();
    let out = common::roadrep(&["verify-model", copy.to_str().unwrap()], &cache);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fusion.onnx"), "{stderr}");
}

/// Sets the MP4 `mvhd` creation time (seconds since 1970) of a clip.
fn set_creation_time(path: &Path, unix_secs: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(4).position(|w| w == b"mvhd").unwrap();
    assert_eq!(bytes[at + 4], 0, "version 0 mvhd");
    // Seconds since 1904.
    let qt = unix_secs + 2_082_844_800;
    bytes[at + 8..at + 12].copy_from_slice(&qt.to_be_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn rig_files_align_on_their_creation_time_and_a_corrupt_camera_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (front, back) = (dir.path().join("front.mp4"), dir.path().join("back.mp4"));
    common::make_clip(&front, 100, 25, 320, 240, "smpte");
    common::make_clip(&back, 100, 25, 320, 240, "ball");
    // The back camera started recording one second after the front one.
    set_creation_time(&front, 1_714_557_600);
    set_creation_time(&back, 1_714_557_601);
    let corrupt = dir.path().join("left.mp4");
    std::fs::write(&corrupt, vec![0x5a; 50_000]).unwrap();
    let store = dir.path().join("store");
    let out = rig_replay(
        &[("front", &front), ("back", &back), ("front_left", &corrupt)],
        &[],
        &store,
        &cache,
    );
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("left.mp4"), "{errors:?}");
    let recs = records(&store, "car1", &cache);
    assert_eq!(recs.len(), 8, "{recs:?}");
    assert_eq!(
        recs[0].0, 1_714_557_600_000_000_000,
        "pts 0 at the creation time"
    );
    for (i, (_, views)) in recs.iter().enumerate() {
        // No back frame before 1 s; then one at most a sample step away.
        assert_eq!(views[1].1, i >= 2, "record {i}: {views:?}");
        if let Some(off) = views[1].2 {
            assert!(off.abs() <= 40.0, "record {i}: {views:?}");
        }
        assert!(!views[2].1, "the corrupt camera is absent");
    }
}
