//! When lists are trained again: as soon as their count should grow by
//! [`ivf::LIST_GROWTH`] (so a growing store probes lists about as short as
//! a rebuild's), and again right after a training that writes outran.

use super::*;

#[test]
fn lists_are_trained_again_once_their_count_should_grow_by_a_sixteenth() {
    let v = clustered(30_000, 40, 21);
    let mut ivf = filled(&v[..18_000]);
    train(&mut ivf);
    // 2 x sqrt(18000) = 268 lists; 1.0625 x 268 = 284.75, which
    // 2 x sqrt(n) rounds up to from n = 20236.
    assert_eq!(ivf.list_count(), 268);
    let add = |ivf: &mut IvfIndex, range: std::ops::Range<usize>| {
        let t = tags("clear");
        let items: Vec<_> = range.map(|i| (key(i), v[i].as_slice(), &t)).collect();
        ivf.upsert(&items);
    };
    add(&mut ivf, 18_000..20_200);
    assert!(!ivf.needs_training(), "284 lists for 20200 frames: not yet");
    add(&mut ivf, 20_200..20_300);
    assert!(ivf.needs_training(), "285 lists for 20300 frames: due");
    train(&mut ivf);
    assert_eq!(ivf.list_count(), 285);
    assert!(!ivf.needs_training());
    // Frames written again (same keys) do not grow the index.
    add(&mut ivf, 0..20_300);
    assert!(!ivf.needs_training());
}

#[cfg(feature = "failpoints")]
#[test]
fn a_training_that_writes_outran_is_followed_by_the_next_at_once() {
    // Other tests' trainings in this process wait too; nothing else.
    fail::cfg("search-index::finish-training", "sleep(3000)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), "fingerprint-a", DIM).unwrap();
    let v = clustered(40_000, 40, 22);
    let frames: Vec<_> = v
        .iter()
        .enumerate()
        .map(|(i, e)| stored(&s, i, e, weather(i)))
        .collect();
    // The first write starts a training (346 lists for 30000 frames); the
    // second lands while it runs and makes the next one due (400 lists for
    // 40000), but no write comes after it to start that one.
    s.write_batch(&frames[..30_000], &[]).unwrap();
    s.write_batch(&frames[30_000..], &[]).unwrap();
    assert!(s.index_status().training, "the second write came during it");
    fail::remove("search-index::finish-training");
    assert!(s.wait_for_index(Duration::from_secs(120)));
    let status = s.index_status();
    assert_eq!(status.frames, 40_000);
    assert_eq!(
        status.lists,
        IvfIndex::lists_for(40_000),
        "trained for every frame written"
    );
}
