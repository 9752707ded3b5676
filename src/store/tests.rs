//! Store behaviour: idempotent writes, filters, search order, checkpoints.

use super::*;
use crate::segment::KeyframeImages;
use image::ImageEncoder;

const DIM: usize = 4;

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("db"), "fingerprint-a", DIM).unwrap()
}

fn unit(v: [f32; DIM]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn frame(store: &Store, stream: &str, ts_ns: i64, emb: [f32; DIM], weather: &str) -> StoredFrame {
    StoredFrame {
        key: FrameKey {
            stream_id: store.stream_id(stream).unwrap(),
            ts_ns,
        },
        record: FrameRecord {
            pts_ns: ts_ns as u64,
            wall_ns: ts_ns,
            width: 64,
            height: 32,
            source_label: "clip.mp4".into(),
        },
        embedding: unit(emb),
        thumbnail: None,
        tags: TagRecord {
            sets: vec![SetTag {
                set: "weather".into(),
                top: weather.into(),
                score: 0.8,
                scores: vec![(weather.into(), 0.8), ("other".into(), 0.2)],
            }],
        },
    }
}

#[test]
fn rewriting_a_frame_stores_it_once_and_reindexes_its_tags() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let f = frame(&s, "front", 10, [1.0, 0.0, 0.0, 0.0], "clear");
    assert_eq!(s.write_batch(std::slice::from_ref(&f), &[]).unwrap(), 1);
    assert_eq!(
        s.write_batch(std::slice::from_ref(&f), &[]).unwrap(),
        0,
        "same key is not new"
    );
    let mut retagged = f.clone();
    retagged.tags.sets[0].top = "foggy".into();
    s.write_batch(&[retagged], &[]).unwrap();
    let all = s.frames(&FrameFilter::default(), 100).unwrap();
    assert_eq!(all.len(), 1);
    let clear = FrameFilter {
        tags: vec![("weather".into(), "clear".into())],
        ..Default::default()
    };
    assert!(
        s.frames(&clear, 100).unwrap().is_empty(),
        "stale index entry removed"
    );
    let foggy = FrameFilter {
        tags: vec![("weather".into(), "foggy".into())],
        ..Default::default()
    };
    assert_eq!(s.frames(&foggy, 100).unwrap().len(), 1);
}

#[test]
fn filters_by_stream_time_and_tag_and_search_ranks_by_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let frames = vec![
        frame(&s, "front", 100, [1.0, 0.0, 0.0, 0.0], "clear"),
        frame(&s, "front", 200, [0.9, 0.1, 0.0, 0.0], "foggy"),
        frame(&s, "front", 300, [0.0, 1.0, 0.0, 0.0], "foggy"),
        frame(&s, "rear", 150, [1.0, 0.05, 0.0, 0.0], "foggy"),
    ];
    s.write_batch(&frames, &[]).unwrap();

    let q = unit([1.0, 0.0, 0.0, 0.0]);
    let hits = s.search(&q, &FrameFilter::default(), 3, None).unwrap();
    let order: Vec<(String, i64)> = hits
        .iter()
        .map(|h| (h.frame.stream.clone(), h.frame.ts_ns))
        .collect();
    assert_eq!(
        order,
        [
            ("front".into(), 100),
            ("rear".into(), 150),
            ("front".into(), 200)
        ]
    );
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    let front_only = FrameFilter {
        streams: Some(vec!["front".into()]),
        ..Default::default()
    };
    assert!(
        s.search(&q, &front_only, 10, None)
            .unwrap()
            .iter()
            .all(|h| h.frame.stream == "front")
    );
    let window = FrameFilter {
        from_ns: Some(150),
        to_ns: Some(250),
        ..Default::default()
    };
    let ts: Vec<i64> = s
        .frames(&window, 10)
        .unwrap()
        .iter()
        .map(|f| f.ts_ns)
        .collect();
    assert_eq!(ts, [200, 150], "per stream, in time order");
    let foggy_front = FrameFilter {
        streams: Some(vec!["front".into()]),
        tags: vec![("weather".into(), "foggy".into())],
        ..Default::default()
    };
    let ts: Vec<i64> = s
        .search(&q, &foggy_front, 10, None)
        .unwrap()
        .iter()
        .map(|h| h.frame.ts_ns)
        .collect();
    assert_eq!(ts, [200, 300]);
    let strict = s
        .search(&q, &FrameFilter::default(), 10, Some(0.995))
        .unwrap();
    assert_eq!(strict.len(), 2, "min_score keeps only near matches");
    let tag_score = FrameFilter {
        tags: vec![("weather".into(), "foggy".into())],
        min_tag_score: Some(0.9),
        ..Default::default()
    };
    assert!(s.frames(&tag_score, 10).unwrap().is_empty());

    let unknown = FrameFilter {
        streams: Some(vec!["side".into()]),
        ..Default::default()
    };
    assert_eq!(
        s.frames(&unknown, 10).unwrap_err().to_string(),
        "unknown camera 'side'"
    );
    assert!(
        s.search(&[1.0], &FrameFilter::default(), 1, None).is_err(),
        "wrong query dimension"
    );
}

#[test]
fn checkpoints_and_frames_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        let f = frame(&s, "front", 5, [0.0, 0.0, 1.0, 0.0], "clear");
        let ckpt = CheckpointUpdate {
            stream_id: f.key.stream_id,
            source_id: "file:/a.mp4:1:2".into(),
            checkpoint: Checkpoint {
                last_pts_ns: Some(5),
                frames: 1,
                complete: false,
                sample_interval_ns: 500_000_000,
            },
        };
        s.write_batch(&[f], &[ckpt]).unwrap();
        s.flush().unwrap();
    }
    let s = open(dir.path());
    let id = s.stream_id("front").unwrap();
    assert_eq!(id, 1);
    assert_eq!(s.stream_id("rear").unwrap(), 2);
    let c = s.checkpoint(id, "file:/a.mp4:1:2").unwrap().unwrap();
    assert_eq!((c.last_pts_ns, c.frames, c.complete), (Some(5), 1, false));
    assert_eq!(
        s.stats().unwrap().frames,
        vec![("front".to_string(), 1), ("rear".to_string(), 0)]
    );
}

#[test]
fn another_model_does_not_see_these_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.write_batch(&[frame(&s, "front", 1, [1.0, 0.0, 0.0, 0.0], "clear")], &[])
            .unwrap();
    }
    let other = Store::open(&dir.path().join("db"), "fingerprint-b", DIM).unwrap();
    assert_eq!(
        other.frames(&FrameFilter::default(), 10).unwrap().len(),
        1,
        "frames are shared"
    );
    // Zero hits would look like "nothing matches": the search says which
    // models the store holds instead.
    let e = other
        .search(
            &unit([1.0, 0.0, 0.0, 0.0]),
            &FrameFilter::default(),
            10,
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no embeddings of model fingerprint-b")
            && e.contains("holds embeddings of: fingerprint-a"),
        "{e}"
    );
    // An empty store has nothing to search: no error.
    let empty = Store::open(&dir.path().join("empty"), "fingerprint-b", DIM).unwrap();
    let q = unit([1.0, 0.0, 0.0, 0.0]);
    assert!(
        empty
            .search(&q, &FrameFilter::default(), 10, None)
            .unwrap()
            .is_empty()
    );
}

fn segment(stream_id: u32, start: i64, keyframe: i64, caption: CaptionState) -> NewSegment {
    NewSegment {
        stream_id,
        record: SegmentRecord {
            start_ns: start,
            end_ns: start + 10,
            start_pts_ns: 0,
            source_label: "clip.mp4".into(),
            source_id: "file:/clip.mp4:1:1".into(),
            frames: 2,
            keyframe_ns: keyframe,
            keyframe_pts_ns: 0,
            tags: Vec::new(),
            caption,
        },
        caption_image: Some(CaptionJob {
            keyframe_ns: keyframe,
            size: 1,
            rgb: vec![0; 3],
        }),
        keyframe_jpeg: None,
    }
}

#[test]
fn captions_apply_only_to_the_keyframe_they_were_made_for_and_stale_words_go() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let id = s.stream_id("front").unwrap();
    let key = FrameKey {
        stream_id: id,
        ts_ns: 100,
    };
    let write = |seg: NewSegment| {
        s.write(
            &[],
            &[],
            &SegmentWrites {
                closed: vec![seg],
                ..Default::default()
            },
            &[],
        )
        .unwrap()
    };
    let done = |text: &str| CaptionState::Done {
        text: text.into(),
        model: "m".into(),
    };
    let words = |q: &str| {
        s.segments(&SegmentFilter {
            caption_words: vec![q.into()],
            ..Default::default()
        })
        .unwrap()
        .len()
    };
    write(segment(id, 100, 103, CaptionState::Pending));
    s.set_caption(&key, 103, done("a truck on a bridge"))
        .unwrap();
    assert_eq!(words("truck bridge"), 1);
    assert_eq!(s.caption_backlog(), 0);

    // Closed again with another keyframe: the old caption's words go, and
    // a caption made for the old keyframe no longer applies.
    write(segment(id, 100, 105, CaptionState::Pending));
    assert_eq!(words("truck"), 0);
    s.set_caption(&key, 103, done("a stale caption")).unwrap();
    assert_eq!(
        s.caption_backlog(),
        1,
        "the new keyframe's job stays queued"
    );
    assert_eq!(words("stale"), 0);
    s.set_caption(&key, 105, done("a bus in the rain")).unwrap();
    assert_eq!(words("bus rain"), 1);
    assert_eq!(words("the"), 0, "stop words alone match nothing");
    assert_eq!(s.caption_backlog(), 0);
}

#[test]
fn the_caption_backlog_is_counted_without_a_scan_and_trimmed_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let closed = |segs: Vec<NewSegment>| SegmentWrites {
        closed: segs,
        ..Default::default()
    };
    {
        let s = open(dir.path());
        let id = s.stream_id("front").unwrap();
        for start in [100, 200, 300] {
            s.write(
                &[],
                &[],
                &closed(vec![segment(id, start, start + 1, CaptionState::Pending)]),
                &[],
            )
            .unwrap();
        }
        // The same segment closed again replaces its job: still three.
        s.write(
            &[],
            &[],
            &closed(vec![segment(id, 200, 202, CaptionState::Pending)]),
            &[],
        )
        .unwrap();
        assert_eq!(s.caption_backlog(), 3);
    }
    // Counted once at open, then kept.
    let s = open(dir.path());
    assert_eq!(s.caption_backlog(), 3);
    assert_eq!(s.trim_caption_backlog(1).unwrap(), 2);
    assert_eq!(s.caption_backlog(), 1);
    let states: Vec<(i64, CaptionState)> = s
        .segments(&SegmentFilter::default())
        .unwrap()
        .into_iter()
        .map(|e| (e.record.start_ns, e.record.caption))
        .collect();
    let dropped = |c: &CaptionState| matches!(c, CaptionState::Failed { error } if error.contains("backlog was full"));
    assert!(dropped(&states[0].1) && dropped(&states[1].1), "{states:?}");
    assert_eq!(states[2], (300, CaptionState::Pending), "the newest stays");
    assert_eq!(s.next_caption_job().unwrap().unwrap().0.ts_ns, 300);
}

#[test]
fn keyframe_candidate_images_come_back_bit_exact_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let f = frame(&store, "cam", 5, [1.0, 0.0, 0.0, 0.0], "clear");
    // A noisy 16x16 image: PNG must keep every byte.
    let rgb: Vec<u8> = (0..16 * 16 * 3).map(|i| (i * 37 % 251) as u8).collect();
    let images = KeyframeImages {
        caption: Some(rgb.clone().into()),
        jpeg: Some(vec![0xff, 0xd8, 7].into()),
    };
    let writes = SegmentWrites {
        keyframes: vec![KeyframeImageWrite::store(f.key, &images).unwrap()],
        ..Default::default()
    };
    store
        .write(std::slice::from_ref(&f), &[], &writes, &[])
        .unwrap();
    let back = store.keyframe_images([f.key]).unwrap();
    assert_eq!(back.get(&f.key), Some(&images));
    let odd = KeyframeImages {
        caption: Some(rgb[1..].into()),
        jpeg: None,
    };
    assert!(KeyframeImageWrite::store(f.key, &odd).is_err());

    let writes = SegmentWrites {
        keyframes: vec![KeyframeImageWrite::remove(f.key)],
        ..Default::default()
    };
    store.write(&[], &[], &writes, &[]).unwrap();
    assert!(store.keyframe_images([f.key]).unwrap().is_empty());
}

#[test]
fn caption_images_stored_before_keyframe_jpegs_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let f = frame(&store, "cam", 5, [1.0, 0.0, 0.0, 0.0], "clear");
    let rgb: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 11 % 256) as u8).collect();
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, 8, 8, image::ExtendedColorType::Rgb8)
        .unwrap();
    // The value as the previous build wrote it: the caption image alone.
    let legacy = schema::encode(&KeyframeImage { size: 8, png });
    store
        .segment_keyframes
        .insert(f.key.encode(), legacy)
        .unwrap();
    let back = store
        .keyframe_images([f.key])
        .unwrap()
        .remove(&f.key)
        .unwrap();
    assert_eq!(back.caption.as_deref(), Some(rgb.as_slice()));
    assert_eq!(back.jpeg, None);
}

#[test]
fn a_closed_segment_keeps_its_keyframe_picture_and_a_replaced_one_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let id = s.stream_id("front").unwrap();
    let key = |ts_ns| FrameKey {
        stream_id: id,
        ts_ns,
    };
    let with_picture = |keyframe: i64, jpeg: Option<&[u8]>| SegmentWrites {
        closed: vec![NewSegment {
            keyframe_jpeg: jpeg.map(Into::into),
            ..segment(id, 100, keyframe, CaptionState::None)
        }],
        ..Default::default()
    };
    s.write(&[], &[], &with_picture(105, Some(b"one")), &[])
        .unwrap();
    assert_eq!(
        s.keyframe_picture(&key(105)).unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert!(s.has_keyframe_picture(&key(105)).unwrap());
    // Closed again without pictures (keyframe_width = 0): the picture stays.
    s.write(&[], &[], &with_picture(105, None), &[]).unwrap();
    assert!(s.has_keyframe_picture(&key(105)).unwrap());
    // Closed again with another keyframe: the old picture goes.
    s.write(&[], &[], &with_picture(107, Some(b"two")), &[])
        .unwrap();
    assert!(!s.has_keyframe_picture(&key(105)).unwrap());
    assert_eq!(
        s.keyframe_picture(&key(107)).unwrap().as_deref(),
        Some(&b"two"[..])
    );
}
