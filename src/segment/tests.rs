use super::*;

const STEP: u64 = 500_000_000; // 2 fps

/// A unit embedding near axis `scene` (dimension 8), nudged by `wiggle`.
fn embed(scene: usize, wiggle: f32) -> Arc<[f32]> {
    let mut v = [0.0f32; 8];
    v[scene] = 1.0;
    v[(scene + 1) % 8] = wiggle;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect::<Vec<_>>().into()
}

fn frame(i: usize, scene: usize, wiggle: f32, image: bool) -> SegmentFrame {
    SegmentFrame {
        ts_ns: i as i64 * STEP as i64,
        pts_ns: i as u64 * STEP,
        duration_ns: STEP,
        embedding: embed(scene, wiggle),
        tags: vec![("scene".into(), format!("s{scene}"))],
        images: if image {
            pictures(i as u8)
        } else {
            KeyframeImages::default()
        },
    }
}

/// Both pictures of frame `i`, each marked with `i`.
fn pictures(i: u8) -> KeyframeImages {
    KeyframeImages {
        caption: Some(vec![i; 3].into()),
        jpeg: Some(vec![0xff, 0xd8, i].into()),
    }
}

fn run(config: SegmenterConfig, scenes: &[usize]) -> Vec<ClosedSegment> {
    let mut s = Segmenter::new(config);
    let mut out = Vec::new();
    for (i, &scene) in scenes.iter().enumerate() {
        out.extend(s.push(frame(i, scene, (i % 3) as f32 * 0.05, true)));
    }
    out.extend(s.finish());
    out
}

fn bounds(segments: &[ClosedSegment]) -> Vec<(f64, f64)> {
    segments
        .iter()
        .map(|s| (s.start_ns as f64 / 1e9, s.end_ns as f64 / 1e9))
        .collect()
}

#[test]
fn distinct_scenes_give_one_segment_each_cut_at_the_first_changed_frame() {
    // 3 scenes of 10, 6 and 8 s at 2 fps.
    let scenes: Vec<usize> = [(0, 20), (3, 12), (5, 16)]
        .iter()
        .flat_map(|&(s, n)| std::iter::repeat_n(s, n))
        .collect();
    let segs = run(SegmenterConfig::default(), &scenes);
    assert_eq!(bounds(&segs), vec![(0.0, 10.0), (10.0, 16.0), (16.0, 24.0)]);
    assert_eq!(
        segs.iter().map(|s| s.frames).collect::<Vec<_>>(),
        [20, 12, 16]
    );
    assert_eq!(segs[1].tags[0].class, "s3");
    assert!((segs[1].tags[0].share - 1.0).abs() < 1e-6);
    // Keyframes lie inside their segments and carry the caption image.
    for s in &segs {
        assert!(s.keyframe_ns >= s.start_ns && s.keyframe_ns < s.end_ns);
        let img = s.images.caption.as_ref().expect("image kept");
        assert_eq!(img[0] as i64, s.keyframe_ns / STEP as i64);
        let jpeg = s.images.jpeg.as_ref().expect("keyframe JPEG kept");
        assert_eq!(jpeg[2], img[0], "both pictures are the keyframe's");
    }
}

#[test]
fn a_short_flash_does_not_cut_and_counts_in_the_tag_shares() {
    // 0.5 s of another scene inside 12 s: shorter than confirm_secs.
    let mut scenes = vec![0; 24];
    scenes[10] = 4;
    let segs = run(SegmenterConfig::default(), &scenes);
    assert_eq!(bounds(&segs), vec![(0.0, 12.0)]);
    let t = &segs[0].tags[0];
    assert_eq!(t.class, "s0");
    assert!((t.share - 23.0 / 24.0).abs() < 1e-6, "{t:?}");
}

#[test]
fn hysteresis_keeps_a_change_that_stays_above_the_keep_distance() {
    let config = SegmenterConfig {
        cut_distance: 0.5,
        keep_distance: 0.05,
        ..Default::default()
    };
    let mut s = Segmenter::new(config);
    let mut out = Vec::new();
    for i in 0..10 {
        out.extend(s.push(frame(i, 0, 0.0, false)));
    }
    // First changed frame clears cut_distance; the next ones only the
    // keep_distance (cos ~ 0.9): still one change, cut at its first frame.
    let far = SegmentFrame {
        embedding: embed(2, 0.0),
        ..frame(10, 2, 0.0, false)
    };
    out.extend(s.push(far));
    for i in 11..20 {
        let mut v = vec![0.0f32; 8];
        v[0] = 0.9;
        v[2] = 0.436;
        let f = SegmentFrame {
            embedding: v.into(),
            ..frame(i, 2, 0.0, false)
        };
        out.extend(s.push(f));
    }
    out.extend(s.finish());
    assert_eq!(bounds(&out), vec![(0.0, 5.0), (5.0, 10.0)]);
}

#[test]
fn changes_before_the_minimum_length_are_absorbed() {
    // Scene 1 lasts 1.5 s, less than min_segment_secs = 2: merged.
    let mut scenes = vec![0; 3];
    scenes.extend([1; 20]);
    let segs = run(SegmenterConfig::default(), &scenes);
    assert_eq!(bounds(&segs), vec![(0.0, 11.5)]);
}

#[test]
fn long_scenes_are_closed_at_the_maximum_length() {
    let config = SegmenterConfig {
        max_segment_secs: 4.0,
        ..Default::default()
    };
    let segs = run(config, &[0; 20]);
    assert_eq!(bounds(&segs), vec![(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]);
}

#[test]
fn a_change_at_the_very_end_becomes_a_segment_only_if_long_enough() {
    let mut scenes = vec![0; 20];
    scenes.extend([6; 4]); // 2 s: confirm and min length met
    assert_eq!(
        bounds(&run(SegmenterConfig::default(), &scenes)),
        vec![(0.0, 10.0), (10.0, 12.0)]
    );
}

#[test]
fn keyframe_pictures_are_thinned_together_to_the_configured_count() {
    let config = SegmenterConfig {
        max_keyframe_candidates: 4,
        ..Default::default()
    };
    let mut s = Segmenter::new(config);
    for i in 0..40 {
        assert!(s.push(frame(i, 0, 0.0, true)).is_empty());
    }
    let kept = s
        .open
        .members
        .iter()
        .filter(|m| m.images.caption.is_some())
        .count();
    assert!(kept <= 4, "{kept}");
    assert_eq!(s.kept_images().count(), kept);
    assert!(
        s.open
            .members
            .iter()
            .all(|m| m.images.caption.is_some() == m.images.jpeg.is_some())
    );
    // Spread over the whole segment, not bunched at its end.
    let with_image: Vec<usize> = s
        .open
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.images.caption.is_some())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(with_image.first(), Some(&0));
    assert!(
        with_image.iter().any(|&i| (10..30).contains(&i)),
        "{with_image:?}"
    );
    assert!(with_image.len() >= 3, "{with_image:?}");
    let seg = s.finish().remove(0);
    assert!(seg.images.caption.is_some() && seg.images.jpeg.is_some());
}

/// A drifting stream (deterministic pseudo-random walk between scenes).
fn drifting(seed: u64, n: usize) -> Vec<SegmentFrame> {
    let mut x = seed;
    let mut rnd = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as f32) / (1u64 << 31) as f32
    };
    let mut v = [1.0f32, 0.0, 0.0, 0.0];
    (0..n)
        .map(|i| {
            for c in v.iter_mut() {
                *c += (rnd() - 0.5) * 0.6;
            }
            let norm = v.iter().map(|c| c * c).sum::<f32>().sqrt();
            let e: Vec<f32> = v.iter().map(|c| c / norm).collect();
            SegmentFrame {
                ts_ns: i as i64 * STEP as i64,
                pts_ns: i as u64 * STEP,
                duration_ns: STEP,
                embedding: e.into(),
                tags: vec![("scene".into(), "x".into())],
                images: pictures(i as u8),
            }
        })
        .collect()
}

/// Bounds, keyframe and caption image of each segment.
type Summary = Vec<(i64, i64, i64, Option<Vec<u8>>)>;

fn summary(segments: &[ClosedSegment]) -> Summary {
    segments
        .iter()
        .map(|s| {
            let image = s.images.caption.as_ref().map(|i| i.to_vec());
            (s.start_ns, s.end_ns, s.keyframe_ns, image)
        })
        .collect()
}

#[test]
fn a_restart_anywhere_rebuilds_the_same_segments_and_keyframes() {
    let config = SegmenterConfig {
        cut_distance: 0.08,
        keep_distance: 0.04,
        // Few, so that images are thinned.
        max_keyframe_candidates: 3,
        ..Default::default()
    };
    let mut segments = 0;
    for seed in 0..40 {
        let frames = drifting(seed, 80);
        let mut whole = Segmenter::new(config.clone());
        let mut expected = Vec::new();
        for f in &frames {
            expected.extend(whole.push(f.clone()));
        }
        expected.extend(whole.finish());
        let expected = summary(&expected);
        segments += expected.len();
        for k in 1..frames.len() {
            // Run until frame k, "restart": keep only what the store has
            // (closed segments, stored frames, the open state, the images
            // the segmenter held).
            let mut before = Segmenter::new(config.clone());
            let mut got = Vec::new();
            for f in &frames[..k] {
                got.extend(before.push(f.clone()));
            }
            let state = before.open_state().unwrap();
            let held: HashMap<i64, KeyframeImages> = before
                .kept_images()
                .map(|(ts, image)| (ts, image.clone()))
                .collect();
            let mut after = Segmenter::new(config.clone());
            let stored = frames[..k]
                .iter()
                .filter(|f| f.ts_ns >= state.start_ns)
                .map(|f| SegmentFrame {
                    images: held.get(&f.ts_ns).cloned().unwrap_or_default(),
                    ..f.clone()
                });
            got.extend(after.restore(&state, stored));
            for f in &frames[k..] {
                got.extend(after.push(f.clone()));
            }
            got.extend(after.finish());
            assert_eq!(
                summary(&got),
                expected,
                "seed {seed}, restart after {k} frames"
            );
        }
    }
    assert!(segments > 120, "the walk must cut often: {segments}");
}

#[test]
fn invalid_thresholds_are_named() {
    let bad = SegmenterConfig {
        keep_distance: 0.5,
        cut_distance: 0.2,
        ..Default::default()
    };
    assert!(bad.validate().unwrap_err().contains("keep_distance"));
    assert!(SegmenterConfig::default().validate().is_ok());
}

#[test]
fn a_pause_in_the_frames_ends_the_segment() {
    let mut s = Segmenter::new(SegmenterConfig::default());
    let mut out = Vec::new();
    for i in 0..10 {
        out.extend(s.push(frame(i, 0, 0.0, false)));
    }
    // The same scene again after a 30 s outage.
    for i in 70..80 {
        out.extend(s.push(frame(i, 0, 0.0, false)));
    }
    out.extend(s.finish());
    assert_eq!(bounds(&out), vec![(0.0, 5.0), (35.0, 40.0)]);
}
