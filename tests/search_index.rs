//! The search index across a killed replay and a deleted index file: the
//! store opened afterwards searches through the index (caught up from the
//! store's log, or rebuilt) and finds what the exact scan finds.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roadrep::models::ModelManifest;
use roadrep::store::{
    FrameFilter, FrameKey, IndexState, SearchHit, SearchMethod, SearchPath, Store,
};

/// Tiny CLIP, no captions, 2 frames/s.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("roadrep.toml");
    let text = format!(
        "[models]\nclip = \"{}\"\nintra_threads = 1\n\
         [tagging]\nlabels = \"{}\"\ncache_dir = \"{}\"\n",
        common::tiny_model_dir().display(),
        common::root().join("config/labels.toml").display(),
        dir.join("cache").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn replay(config: &Path, clip: &Path, camera: &str, store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roadrep"));
    c.arg("-c")
        .arg(config)
        .arg("replay")
        .arg(clip)
        .args(["--camera", camera, "--fps", "4", "--store"])
        .arg(store)
        .current_dir(common::root())
        .env_remove("ROADREP_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("FAILPOINTS")
        .stdin(Stdio::null());
    c
}

fn open(store: &Path) -> Store {
    let m = ModelManifest::read(&common::tiny_model_dir()).unwrap();
    // The replay just ended: sled's lock may linger a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(store, &m.fingerprint, m.clip.embed_dim) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Kills `child` (SIGKILL) once its progress says frames were stored.
fn kill_after_frames_stored(mut child: Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        let stored = line
            .strip_suffix(" stored")
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        if stored.is_some_and(|n| n > 0) {
            // With the fail point the replay sleeps before its next batch:
            // give the batch that was just reported a moment to commit.
            std::thread::sleep(Duration::from_millis(300));
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    seen
}

/// Queries: stored embeddings of some frames, nudged, and their negations.
fn queries(store: &Store) -> Vec<Vec<f32>> {
    let frames = store.frames(&FrameFilter::default(), usize::MAX).unwrap();
    let mut out = Vec::new();
    for (i, f) in frames
        .iter()
        .enumerate()
        .step_by(frames.len().div_ceil(5).max(1))
    {
        let key = FrameKey {
            stream_id: store.stream_id(&f.stream).unwrap(),
            ts_ns: f.ts_ns,
        };
        let mut q = store.embedding(&key).unwrap().unwrap();
        let d = i % q.len();
        q[d] += 0.3;
        let n = q.iter().map(|x| x * x).sum::<f32>().sqrt();
        q.iter_mut().for_each(|x| *x /= n);
        out.push(q.iter().map(|x| -x).collect());
        out.push(q);
    }
    out
}

/// No filter, one camera, the middle third of the stored times.
fn filters(store: &Store) -> Vec<FrameFilter> {
    let times: Vec<i64> = store
        .frames(&FrameFilter::default(), usize::MAX)
        .unwrap()
        .iter()
        .map(|f| f.ts_ns)
        .collect();
    let (min, max) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    let third = (max - min) / 3;
    vec![
        FrameFilter::default(),
        FrameFilter {
            streams: Some(vec!["rear".into()]),
            ..Default::default()
        },
        FrameFilter {
            from_ns: Some(min + third),
            to_ns: Some(max - third),
            ..Default::default()
        },
    ]
}

type Hits = Vec<(String, i64, f32)>;

fn keys(hits: &[SearchHit]) -> Hits {
    hits.iter()
        .map(|h| (h.frame.stream.clone(), h.frame.ts_ns, h.score))
        .collect()
}

/// Every query under every filter through the index, checked against the
/// exact scan; returns the hits.
fn searched_through_the_index(store: &Store, queries: &[Vec<f32>]) -> Vec<Hits> {
    let mut all = Vec::new();
    for q in queries {
        for f in filters(store) {
            let found = store
                .search_with(q, &f, 5, None, SearchMethod::Auto)
                .unwrap();
            assert!(
                matches!(found.path, SearchPath::Index { .. }),
                "{:?}",
                found.path
            );
            let exact = store.search_exact(q, &f, 5, None).unwrap();
            assert_eq!(keys(&found.hits), keys(&exact), "filter {f:?}");
            all.push(keys(&found.hits));
        }
    }
    all
}

fn stored_frames(store: &Store) -> usize {
    store
        .stats()
        .unwrap()
        .frames
        .iter()
        .map(|f| f.1 as usize)
        .sum()
}

#[test]
fn a_killed_replay_and_a_deleted_index_file_leave_searches_as_exact_as_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store_dir = dir.path().join("store");
    let (front, rear) = (dir.path().join("front.mp4"), dir.path().join("rear.mp4"));
    common::make_clip(&front, 100, 25, 160, 120, "ball");
    common::make_clip(&rear, 500, 25, 160, 120, "smpte");

    // A whole replay: its end flushes the store and saves the index.
    let o = replay(&config, &front, "front", &store_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index_file = {
        let s = open(&store_dir);
        let status = s.index_status();
        assert_eq!((status.state, status.unsaved), (IndexState::Ready, 0));
        assert_eq!(status.frames, 16);
        s.index_file().to_path_buf()
    };
    assert!(index_file.is_file());
    let saved = std::fs::read(&index_file).unwrap();

    // A replay killed after some batches are stored: they are in the
    // store's log, not in the index file.
    let mut c = replay(&config, &rear, "rear", &store_dir);
    if cfg!(feature = "failpoints") {
        // Two batches go through, the third waits: the kill lands between
        // commits and any index save.
        c.env("FAILPOINTS", "pipeline::embed=2*off->sleep(60000)");
    }
    let child = c
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let out = kill_after_frames_stored(child);

    let s = open(&store_dir);
    let status = s.index_status();
    let total = stored_frames(&s);
    assert!(total > 16, "the killed replay stored frames: {out}");
    // Loaded (and caught up) at open, no rebuild.
    assert_eq!(status.state, IndexState::Ready);
    assert_eq!(status.frames, total);
    if cfg!(feature = "failpoints") {
        // Without the fail point the replay can outrun the kill.
        assert!(total < 16 + 80, "the kill came before the end: {total}");
        assert_eq!(std::fs::read(&index_file).unwrap(), saved, "{out}");
        assert_eq!(status.unsaved, total - 16, "caught up from the log");
    }
    let queries = queries(&s);
    let before = searched_through_the_index(&s, &queries);
    drop(s);

    // The index file deleted: rebuilt from the store, same results.
    std::fs::remove_file(&index_file).unwrap();
    let s = open(&store_dir);
    assert!(s.wait_for_index(Duration::from_secs(30)));
    assert_eq!(s.index_status().frames, total);
    assert!(index_file.is_file(), "the rebuilt index is saved");
    assert_eq!(searched_through_the_index(&s, &queries), before);
    drop(s);

    // The replay resumed to its end: the index has every frame.
    let o = replay(&config, &rear, "rear", &store_dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = open(&store_dir);
    assert_eq!(s.index_status().state, IndexState::Ready);
    assert_eq!(stored_frames(&s), 16 + 80);
    assert_eq!(s.index_status().frames, 16 + 80);
    searched_through_the_index(&s, &queries);
}
