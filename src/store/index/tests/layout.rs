//! The lists' layout: after a training each list's codes, scales and
//! streams are one block of its exact size; writes append to it; laying
//! the lists out again changes no hit; an index file of the old layout is
//! rebuilt, not misread.

use std::collections::BTreeMap;

use super::*;

/// Every held slot sits at its `pos_of` in its list (code, scale, stream),
/// its code is the one `vectors` quantise to, and each list's blocks hold
/// exactly its entries.
fn assert_consistent(ivf: &IvfIndex, vectors: &BTreeMap<FrameKey, Vec<f32>>) {
    let mut entries = 0;
    for (l, list) in ivf.lists().iter().enumerate() {
        let n = list.len();
        assert_eq!(
            (list.codes.len(), list.scales.len(), list.streams.len()),
            (n * DIM, n, n)
        );
        for (e, &slot) in list.slots.iter().enumerate() {
            let s = slot as usize;
            assert_eq!((ivf.list_of[s] as usize, ivf.pos_of[s] as usize), (l, e));
            assert_eq!(list.streams[e], ivf.keys[s].stream_id);
            let mut code = vec![0i8; DIM];
            let scale = codes::quantize(&vectors[&ivf.keys[s]], &mut code);
            assert_eq!(
                (list.code(e, DIM), list.scales[e]),
                (code.as_slice(), scale)
            );
        }
        entries += n;
    }
    assert_eq!(entries, ivf.len());
    assert_eq!(ivf.len(), vectors.len());
}

/// Whether every list is one block of its exact size (what a training
/// leaves), so a probe of a list reads `len * dim` consecutive bytes.
fn laid_out(ivf: &IvfIndex) -> bool {
    ivf.lists()
        .iter()
        .all(|l| l.codes.capacity() == l.codes.len() && l.slots.capacity() == l.slots.len())
}

/// The int8 top `k` over every held frame passing `keep`, as a full probe
/// must find it (ties to the higher slot).
fn int8_top(
    ivf: &IvfIndex,
    vectors: &BTreeMap<FrameKey, Vec<f32>>,
    q: &[f32],
    k: usize,
    keep: impl Fn(&FrameKey) -> bool,
) -> Vec<(FrameKey, f32)> {
    let mut q8 = vec![0i8; DIM];
    codes::quantize(q, &mut q8);
    let mut all: Vec<(f32, u32, FrameKey)> = ivf
        .by_key()
        .iter()
        .filter(|(key, _)| keep(key))
        .map(|(key, &slot)| {
            let mut code = vec![0i8; DIM];
            let scale = codes::quantize(&vectors[key], &mut code);
            (codes::dot(&q8, &code) as f32 * scale, slot, *key)
        })
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    all.iter()
        .take(k)
        .map(|&(score, _, key)| (key, score))
        .collect()
}

type Hits = Vec<Vec<(FrameKey, f32)>>;

/// Hits of every query under a few filters, probing by default and all lists.
fn all_hits(ivf: &IvfIndex, queries: &[Vec<f32>]) -> Hits {
    let filters = [
        SlotFilter::everything(),
        ivf.slot_filter(Some(vec![2]), None, None, &[], None)
            .unwrap(),
        ivf.slot_filter(Some(vec![1, 3]), Some(2_000_000), None, &[], None)
            .unwrap(),
        ivf.slot_filter(None, None, None, &[("weather".into(), "fog".into())], None)
            .unwrap(),
    ];
    let mut out = Vec::new();
    for q in queries {
        for f in &filters {
            for probe in [0, ivf.list_count()] {
                out.push(ivf.search(q, f, 20, probe).hits);
            }
        }
    }
    out
}

#[test]
fn training_lays_each_list_out_in_one_block_and_hits_do_not_depend_on_the_layout() {
    let v = clustered(ivf::TRAIN_MIN + 3000, 40, 20);
    let mut ivf = filled(&v);
    let mut vectors: BTreeMap<FrameKey, Vec<f32>> = v
        .iter()
        .enumerate()
        .map(|(i, e)| (key(i), e.clone()))
        .collect();
    let queries = clustered(12, 40, 21);
    assert_eq!(ivf.list_count(), 1);
    assert!(!laid_out(&ivf), "writes grow the one list in steps");
    train(&mut ivf);
    assert!(ivf.list_count() > 100);
    assert!(
        laid_out(&ivf),
        "a training leaves each list one exact block"
    );
    assert_consistent(&ivf, &vectors);

    // Writes after the training: overwrites that move frames to other
    // lists, new frames, removals (each a hole filled from the list's end).
    let others = clustered(2500, 40, 22);
    let t = tags("fog");
    let items: Vec<_> = others
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                key(if i < 800 { i * 7 } else { 200_000 + i }),
                e.as_slice(),
                &t,
            )
        })
        .collect();
    ivf.upsert(&items);
    for (k, e, _) in &items {
        vectors.insert(*k, e.to_vec());
    }
    for i in (0..3000).step_by(5) {
        assert_eq!(ivf.remove(&key(i)), vectors.remove(&key(i)).is_some());
    }
    assert!(!laid_out(&ivf), "writes appended to the lists");
    assert_consistent(&ivf, &vectors);
    // A full probe finds exactly the int8 top ten of the matching frames.
    for q in &queries {
        let all = ivf.search(q, &SlotFilter::everything(), 10, ivf.list_count());
        assert_eq!(all.hits, int8_top(&ivf, &vectors, q, 10, |_| true));
        let cam = ivf
            .slot_filter(Some(vec![2]), None, None, &[], None)
            .unwrap();
        let found = ivf.search(q, &cam, 10, ivf.list_count());
        assert_eq!(
            found.hits,
            int8_top(&ivf, &vectors, q, 10, |k| k.stream_id == 2)
        );
    }

    // Laying the same lists out again changes no hit, probing or not.
    let before = all_hits(&ivf, &queries);
    let assignment = ivf.list_of.clone();
    ivf.lay_out(assignment);
    assert!(laid_out(&ivf));
    assert_consistent(&ivf, &vectors);
    assert_eq!(all_hits(&ivf, &queries), before);

    // Nor does saving and loading it (the file keeps the layout).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.ivf");
    let meta = file::FileMeta {
        store_id: "s".into(),
        tree: "t".into(),
        watermark: 1,
    };
    file::write(&path, &meta, &ivf).unwrap();
    let (_, back) = file::read(&path).unwrap();
    assert!(laid_out(&back));
    assert_consistent(&back, &vectors);
    assert_eq!(all_hits(&back, &queries), before);
}

#[test]
fn an_index_file_of_the_old_layout_is_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let v = clustered(300, 4, 23);
    let queries = clustered(3, 4, 24);
    {
        let s = Store::open(&path, "fingerprint-a", DIM).unwrap();
        write_all(&s, &v, 0);
        s.save_index().unwrap();
    }
    let ivf_file = path.join(INDEX_DIR).join("fingerprint-a.ivf");
    let mut data = std::fs::read(&ivf_file).unwrap();
    assert_eq!(&data[..8], b"RRIVF\0\0\x02");
    // Version 1 kept codes in slot order: read as lists it would be garbage.
    data[7] = 1;
    std::fs::write(&ivf_file, &data).unwrap();
    let e = file::read(&ivf_file).err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let s = Store::open(&path, "fingerprint-a", DIM).unwrap();
    assert!(s.wait_for_index(Duration::from_secs(20)));
    assert_eq!(s.index_status().frames, 300);
    assert_same_as_exact(&s, &queries);
    drop(s);
    assert_eq!(
        &std::fs::read(&ivf_file).unwrap()[..8],
        b"RRIVF\0\0\x02",
        "saved again in the new layout"
    );
}
