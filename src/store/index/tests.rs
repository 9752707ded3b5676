//! The index alone (recall, filters, overwrites, training during writes,
//! its file) and with the store (same hits as the exact scan, caught up
//! after a reopen, rebuilt without its file).

use super::*;
use crate::rng::SplitMix64;
use crate::store::{FrameFilter, FrameRecord, SearchMethod, SetTag, Store};

mod layout;
mod training;

const DIM: usize = 32;

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    kmeans::normalize(&mut v);
    v
}

fn gaussian(rng: &mut SplitMix64) -> f32 {
    // Box-Muller.
    let (u, v) = (rng.next_f32().max(1e-7), rng.next_f32());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// `n` unit vectors around `clusters` centres (what frames of a few
/// scenes look like), deterministic in `seed`; the centres depend on
/// `clusters` only, so queries can come from the same scenes.
fn clustered(n: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SplitMix64::new(clusters as u64);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| unit((0..DIM).map(|_| gaussian(&mut rng)).collect()))
        .collect();
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let c = &centres[rng.below(clusters)];
            unit(c.iter().map(|x| x + 0.15 * gaussian(&mut rng)).collect())
        })
        .collect()
}

fn key(i: usize) -> FrameKey {
    FrameKey {
        stream_id: 1 + (i % 3) as u32,
        ts_ns: i as i64 * 1_000,
    }
}

fn tags(class: &str) -> TagRecord {
    TagRecord {
        sets: vec![SetTag {
            set: "weather".into(),
            top: class.into(),
            score: 0.9,
            scores: Vec::new(),
        }],
    }
}

fn weather(i: usize) -> &'static str {
    ["clear", "rain", "fog", "snow"][i % 4]
}

fn filled(vectors: &[Vec<f32>]) -> IvfIndex {
    let mut ivf = IvfIndex::new(DIM);
    let t: Vec<TagRecord> = (0..vectors.len()).map(|i| tags(weather(i))).collect();
    let items: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (key(i), v.as_slice(), &t[i]))
        .collect();
    ivf.upsert(&items);
    ivf
}

fn train(ivf: &mut IvfIndex) {
    let start = ivf.begin_training();
    let c = kmeans::train(&start.sample, DIM, start.lists, 8, 1, &|| true).unwrap();
    let a = ivf.assign(&c, 0..start.slots);
    ivf.finish_training(c, a);
}

/// Keys of the `k` best of `vectors` for `q` passing `keep`, exactly.
fn exact(vectors: &[Vec<f32>], q: &[f32], k: usize, keep: impl Fn(usize) -> bool) -> Vec<FrameKey> {
    let mut scored: Vec<(f32, usize)> = (0..vectors.len())
        .filter(|&i| keep(i))
        .map(|i| (cosine(&vectors[i], q), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.iter().take(k).map(|&(_, i)| key(i)).collect()
}

fn recall(found: &Candidates, truth: &[FrameKey]) -> f64 {
    let hits = truth
        .iter()
        .filter(|k| found.hits.iter().any(|(f, _)| f == *k))
        .count();
    hits as f64 / truth.len().max(1) as f64
}

#[test]
fn int8_codes_keep_dot_products_within_a_few_thousandths() {
    let v = clustered(200, 5, 1);
    for pair in v.chunks_exact(2) {
        let (mut a, mut b) = (vec![0i8; DIM], vec![0i8; DIM]);
        let (sa, sb) = (
            codes::quantize(&pair[0], &mut a),
            codes::quantize(&pair[1], &mut b),
        );
        let approx = codes::dot(&a, &b) as f32 * sa * sb;
        assert!((approx - cosine(&pair[0], &pair[1])).abs() < 0.01);
    }
    let mut zero = vec![1i8; DIM];
    assert_eq!(codes::quantize(&[0.0; DIM], &mut zero), 0.0);
    assert!(zero.iter().all(|&c| c == 0));
}

#[test]
fn an_untrained_index_finds_the_exact_top_10() {
    let v = clustered(2000, 8, 2);
    let ivf = filled(&v);
    assert_eq!(ivf.list_count(), 1);
    for q in clustered(20, 8, 3) {
        let found = ivf.search(&q, &SlotFilter::everything(), 42, 0);
        assert_eq!(recall(&found, &exact(&v, &q, 10, |_| true)), 1.0);
    }
}

#[test]
fn trained_lists_keep_recall_and_filters_return_only_matches() {
    let v = clustered(ivf::TRAIN_MIN + 2000, 40, 4);
    let mut ivf = filled(&v);
    assert!(ivf.needs_training());
    train(&mut ivf);
    assert!(ivf.list_count() > 100 && !ivf.needs_training());
    let queries = clustered(30, 40, 5);
    let mut total = 0.0;
    for q in &queries {
        let found = ivf.search(q, &SlotFilter::everything(), 42, 0);
        assert_eq!(found.plan, Plan::Probe);
        assert!(found.scored < v.len() / 2, "probing scores a part");
        total += recall(&found, &exact(&v, q, 10, |_| true));
    }
    assert!(total / queries.len() as f64 >= 0.95, "recall {total}");

    // Camera + time (key range), and a tag (selectivity), each exact.
    let cam = ivf
        .slot_filter(Some(vec![2]), Some(0), Some(3_000_000), &[], None)
        .unwrap();
    let fog = ivf
        .slot_filter(None, None, None, &[("weather".into(), "fog".into())], None)
        .unwrap();
    for q in &queries[..5] {
        let found = ivf.search(q, &cam, 42, 0);
        assert_eq!(found.plan, Plan::Flat);
        let truth = exact(&v, q, 10, |i| {
            key(i).stream_id == 2 && key(i).ts_ns <= 3_000_000
        });
        assert_eq!(recall(&found, &truth), 1.0);
        assert!(
            found
                .hits
                .iter()
                .all(|(k, _)| k.stream_id == 2 && k.ts_ns <= 3_000_000)
        );

        let found = ivf.search(q, &fog, 42, 0);
        let truth = exact(&v, q, 10, |i| weather(i) == "fog");
        assert!(recall(&found, &truth) >= 0.9);
        assert!(
            found
                .hits
                .iter()
                .all(|(k, _)| weather(k.ts_ns as usize / 1000) == "fog")
        );
    }
    assert!(
        ivf.slot_filter(None, None, None, &[("weather".into(), "hail".into())], None)
            .is_none(),
        "an unknown class matches nothing"
    );
    let strict = ivf
        .slot_filter(
            None,
            None,
            None,
            &[("weather".into(), "fog".into())],
            Some(0.95),
        )
        .unwrap();
    assert!(ivf.search(&queries[0], &strict, 10, 0).hits.is_empty());
}

#[test]
fn writing_a_frame_again_replaces_it_and_removed_slots_are_reused() {
    let v = clustered(500, 4, 6);
    let mut ivf = filled(&v);
    let target = unit((0..DIM).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect());
    let t = tags("fog");
    ivf.upsert(&[(key(7), target.as_slice(), &t)]);
    assert_eq!(ivf.len(), 500);
    let found = ivf.search(&target, &SlotFilter::everything(), 1, 0);
    assert_eq!(found.hits[0].0, key(7));
    assert!(found.hits[0].1 > 0.99);
    let fog = ivf
        .slot_filter(None, None, None, &[("weather".into(), "fog".into())], None)
        .unwrap();
    assert!(
        ivf.search(&target, &fog, 500, 0)
            .hits
            .iter()
            .any(|(k, _)| *k == key(7))
    );

    assert!(ivf.remove(&key(7)));
    assert!(!ivf.remove(&key(7)));
    assert_eq!(ivf.len(), 499);
    assert!(
        ivf.search(&target, &SlotFilter::everything(), 500, 0)
            .hits
            .iter()
            .all(|(k, _)| *k != key(7))
    );
    let slots = ivf.slots();
    let other_camera = FrameKey {
        stream_id: 9,
        ts_ns: 1,
    };
    ivf.upsert(&[(other_camera, target.as_slice(), &t)]);
    assert_eq!(ivf.slots(), slots, "the free slot is reused");
    // A camera filter sees the slot's new camera, not the old one's.
    let camera = |id: u32| {
        ivf.slot_filter(Some(vec![id]), None, None, &[], None)
            .unwrap()
    };
    let hits = |f: &SlotFilter| ivf.search(&target, f, 500, ivf.list_count()).hits;
    assert_eq!(
        hits(&camera(9)),
        vec![(other_camera, hits(&camera(9))[0].1)]
    );
    assert!(
        hits(&camera(key(7).stream_id))
            .iter()
            .all(|(k, _)| *k != other_camera)
    );
}

#[test]
fn writes_during_a_training_end_up_in_the_right_lists() {
    let v = clustered(ivf::TRAIN_MIN + 500, 20, 7);
    let mut ivf = filled(&v);
    let start = ivf.begin_training();
    let c = kmeans::train(&start.sample, DIM, start.lists, 8, 1, &|| true).unwrap();
    let half = ivf.assign(&c, 0..start.slots / 2);
    // Meanwhile: frames overwritten, removed, added.
    let extra = clustered(300, 20, 8);
    let t = tags("rain");
    let items: Vec<_> = extra
        .iter()
        .enumerate()
        .map(|(i, e)| (key(if i < 100 { i } else { 100_000 + i }), e.as_slice(), &t))
        .collect();
    ivf.upsert(&items);
    for i in 200..250 {
        ivf.remove(&key(i));
    }
    let mut assignment = half;
    assignment.extend(ivf.assign(&c, start.slots / 2..start.slots));
    ivf.finish_training(c.clone(), assignment);
    // Every held slot sits in exactly the list nearest its code.
    let mut seen = vec![0u32; ivf.slots()];
    for (l, list) in ivf.lists().iter().enumerate() {
        for &s in &list.slots {
            seen[s as usize] += 1;
            assert_eq!(ivf.list_of[s as usize] as usize, l);
        }
    }
    for (s, &seen) in seen.iter().enumerate() {
        let held = ivf.list_of[s] != ivf::NO_LIST;
        assert_eq!(seen, u32::from(held));
        if held {
            assert_eq!(ivf.assign(&c, s..s + 1)[0], ivf.list_of[s]);
        }
    }
    assert_eq!(ivf.len(), v.len() + 200 - 50);
}

#[test]
fn the_file_round_trips_and_damage_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.ivf");
    let v = clustered(ivf::TRAIN_MIN + 100, 10, 9);
    let mut ivf = filled(&v);
    train(&mut ivf);
    ivf.remove(&key(3));
    let meta = file::FileMeta {
        store_id: "s".into(),
        tree: "t".into(),
        watermark: 42,
    };
    let bytes = file::write(&path, &meta, &ivf).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    let (m, back) = file::read(&path).unwrap();
    assert_eq!(m, meta);
    assert_eq!(back.len(), ivf.len());
    let q = &v[0];
    let a = ivf.search(q, &SlotFilter::everything(), 20, 0).hits;
    let b = back.search(q, &SlotFilter::everything(), 20, 0).hits;
    assert_eq!(a, b);

    let mut data = std::fs::read(&path).unwrap();
    let n = data.len();
    data[n / 2] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let e = file::read(&path).err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    std::fs::write(&path, &data[..n - 10]).unwrap();
    assert!(file::read(&path).is_err());
}

#[test]
fn a_new_label_set_widens_the_tag_rows() {
    let mut t = tags::TagTable::default();
    t.resize(2);
    t.set_row(0, &tags("fog"));
    let mut both = tags("rain");
    both.sets.push(SetTag {
        set: "scene".into(),
        top: "city".into(),
        score: 0.7,
        scores: Vec::new(),
    });
    t.set_row(1, &both);
    let fog = t.condition("weather", "fog").unwrap();
    let city = t.condition("scene", "city").unwrap();
    assert!(t.matches(0, &[fog], None));
    assert!(!t.matches(0, &[city], None));
    assert!(t.matches(1, &[city], Some(0.7)));
    assert!(!t.matches(1, &[city], Some(0.71)));
}

// --- with the store -------------------------------------------------------

fn stored(store: &Store, i: usize, e: &[f32], class: &str) -> StoredFrame {
    let stream = ["front", "rear", "left"][i % 3];
    StoredFrame {
        key: FrameKey {
            stream_id: store.stream_id(stream).unwrap(),
            ts_ns: i as i64 * 1_000,
        },
        record: FrameRecord {
            pts_ns: i as u64,
            wall_ns: i as i64 * 1_000,
            width: 8,
            height: 8,
            source_label: "clip.mp4".into(),
        },
        embedding: e.to_vec(),
        tags: tags(class),
        thumbnail: None,
    }
}

fn write_all(store: &Store, v: &[Vec<f32>], from: usize) {
    let frames: Vec<_> = v
        .iter()
        .enumerate()
        .map(|(i, e)| stored(store, from + i, e, weather(from + i)))
        .collect();
    for batch in frames.chunks(64) {
        store.write_batch(batch, &[]).unwrap();
    }
}

fn filters() -> Vec<FrameFilter> {
    vec![
        FrameFilter::default(),
        FrameFilter {
            streams: Some(vec!["rear".into()]),
            from_ns: Some(100_000),
            ..Default::default()
        },
        FrameFilter {
            tags: vec![("weather".into(), "fog".into())],
            min_tag_score: Some(0.5),
            ..Default::default()
        },
    ]
}

/// Index hits equal exact hits for a few queries and filters.
fn assert_same_as_exact(store: &Store, queries: &[Vec<f32>]) {
    for q in queries {
        for f in filters() {
            let index = store
                .search_with(q, &f, 10, None, SearchMethod::Auto)
                .unwrap();
            assert!(matches!(index.path, crate::store::SearchPath::Index { .. }));
            let exact = store.search_exact(q, &f, 10, None).unwrap();
            let keys = |h: &[crate::store::SearchHit]| {
                h.iter()
                    .map(|h| (h.frame.stream.clone(), h.frame.ts_ns, h.score))
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(&index.hits), keys(&exact), "filter {f:?}");
        }
    }
}

#[test]
fn store_searches_match_the_exact_scan_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let v = clustered(600, 6, 10);
    let queries = clustered(4, 6, 11);
    {
        let s = Store::open(&path, "fingerprint-a", DIM).unwrap();
        assert_eq!(s.index_status().state, IndexState::Ready);
        write_all(&s, &v[..400], 0);
        s.flush().unwrap();
        assert!(s.index_file().is_file(), "flush saved the index");
        // Written after the save: only the log has them.
        write_all(&s, &v[400..], 400);
        let mut moved = stored(&s, 5, &queries[0], "fog");
        moved.embedding = queries[0].clone();
        s.write_batch(&[moved], &[]).unwrap();
        assert_same_as_exact(&s, &queries);
    }
    let s = Store::open(&path, "fingerprint-a", DIM).unwrap();
    let status = s.index_status();
    assert_eq!((status.state, status.frames), (IndexState::Ready, 600));
    assert_eq!(status.unsaved, 201, "caught up from the log");
    assert_same_as_exact(&s, &queries);
    let top = s
        .search(&queries[0], &FrameFilter::default(), 1, None)
        .unwrap();
    assert_eq!(
        top[0].frame.ts_ns, 5_000,
        "the overwritten embedding is found"
    );
    s.flush().unwrap();
    assert_eq!(s.index_status().unsaved, 0);
    assert_eq!(s.embedding_log.len(), 0, "the log is pruned after a save");
}

#[test]
fn a_missing_or_foreign_index_file_is_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let v = clustered(300, 4, 12);
    let queries = clustered(3, 4, 13);
    for p in [&a, &b] {
        let s = Store::open(p, "fingerprint-a", DIM).unwrap();
        write_all(&s, &v, 0);
        s.save_index().unwrap();
    }
    let file = |p: &std::path::Path| p.join(INDEX_DIR).join("fingerprint-a.ivf");
    // Another store's file (same model, same frames) is not taken.
    std::fs::copy(file(&b), file(&a)).unwrap();
    let s = Store::open(&a, "fingerprint-a", DIM).unwrap();
    assert!(s.wait_for_index(Duration::from_secs(20)));
    assert_eq!(s.index_status().frames, 300);
    assert_same_as_exact(&s, &queries);
    drop(s);
    std::fs::remove_file(file(&a)).unwrap();
    let s = Store::open(&a, "fingerprint-a", DIM).unwrap();
    assert!(s.wait_for_index(Duration::from_secs(20)));
    assert!(file(&a).is_file(), "a rebuilt index is saved");
    assert_same_as_exact(&s, &queries);
}

#[test]
fn exact_mode_keeps_no_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let v = clustered(50, 2, 14);
    {
        let s = Store::open(&path, "fingerprint-a", DIM).unwrap();
        write_all(&s, &v, 0);
        s.save_index().unwrap();
        assert!(s.index_file().is_file());
    }
    let exact = SearchConfig {
        index: IndexMode::Exact,
        probe_lists: 0,
    };
    let s = Store::open_with_index(&path, "fingerprint-a", DIM, &exact).unwrap();
    assert_eq!(s.index_status().state, IndexState::Off);
    assert!(
        !s.index_file().exists(),
        "a file it would let go stale is removed"
    );
    write_all(&s, &v[..10], 100);
    assert_eq!(s.embedding_log.len(), 0, "nothing logged");
    let found = s
        .search_with(&v[0], &FrameFilter::default(), 3, None, SearchMethod::Auto)
        .unwrap();
    assert_eq!(found.path, crate::store::SearchPath::Exact);
}
