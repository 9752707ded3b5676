//! Kill -9 and SIGTERM at random points: a replay killed at 20 points and
//! the daemon with three streams end with the store an uninterrupted
//! replay leaves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use roadrep::store::{Checkpoint, FrameFilter, FrameKey, SegmentFilter};

use crate::{Rng, open_store, output_within, roadrep, scene_clip, wait_until, write_config};

const KILLS: usize = 20;
const START: &str = "2026-01-02T03:04:05Z";

type Frame = (String, i64, u64, u32, u32);
type Segment = (String, i64, i64, u64, u32, String, Vec<String>);

/// What the comparisons look at in a store.
struct Contents {
    /// (camera, time, pts, width, height), in store order.
    frames: Vec<Frame>,
    embeddings: Vec<Vec<f32>>,
    /// The top class of each label set, per frame.
    tags: Vec<Vec<String>>,
    /// (camera, start, end, start pts, frames, source, dominant classes).
    segments: Vec<Segment>,
    /// Keyframe time of each segment.
    keyframes: Vec<i64>,
    /// (camera, source, checkpoint).
    checkpoints: Vec<(String, String, Checkpoint)>,
}

fn contents(path: &Path) -> Contents {
    let store = open_store(path);
    let entries = store.frames(&FrameFilter::default(), usize::MAX).unwrap();
    let embeddings = entries
        .iter()
        .map(|f| {
            let key = FrameKey {
                stream_id: store.stream_id(&f.stream).unwrap(),
                ts_ns: f.ts_ns,
            };
            store
                .embedding(&key)
                .unwrap()
                .expect("every frame has an embedding")
        })
        .collect();
    let segments = store.segments(&SegmentFilter::default()).unwrap();
    let mut checkpoints = Vec::new();
    for s in store.streams().unwrap() {
        for source in store.source_ids(&s.name).unwrap() {
            let c = store.checkpoint(s.id, &source).unwrap().unwrap();
            checkpoints.push((s.name.clone(), source, c));
        }
    }
    Contents {
        frames: entries
            .iter()
            .map(|f| {
                let r = &f.record;
                (f.stream.clone(), f.ts_ns, r.pts_ns, r.width, r.height)
            })
            .collect(),
        embeddings,
        tags: entries
            .iter()
            .map(|f| f.tags.iter().map(|t| t.top.clone()).collect())
            .collect(),
        keyframes: segments.iter().map(|s| s.record.keyframe_ns).collect(),
        segments: segments
            .into_iter()
            .map(|s| {
                let r = s.record;
                let tags = r.tags.iter().map(|t| t.class.clone()).collect();
                (
                    s.stream,
                    r.start_ns,
                    r.end_ns,
                    r.start_pts_ns,
                    r.frames,
                    r.source_id,
                    tags,
                )
            })
            .collect(),
        checkpoints,
    }
}

/// Asserts `got` holds what `reference` does: no frame lost, none twice,
/// the same embeddings, tags, segments and checkpoints.
fn assert_same(reference: &Contents, got: &Contents, what: &str) {
    let key = |f: &Frame| (f.0.clone(), f.1, f.2);
    let want: BTreeSet<_> = reference.frames.iter().map(key).collect();
    let have: BTreeSet<_> = got.frames.iter().map(key).collect();
    let lost = want.difference(&have).count();
    let extra = have.difference(&want).count();
    // Keys are (camera, time): a frame stored again under another time is a
    // duplicate only its pts gives away.
    let pts: BTreeSet<_> = got.frames.iter().map(|f| (&f.0, f.2)).collect();
    let duplicated = got.frames.len() - pts.len();
    assert_eq!(
        (lost, extra, duplicated),
        (0, 0, 0),
        "{what}: frames lost, unexpected, duplicated"
    );
    assert_eq!(got.frames, reference.frames, "{what}: frames");
    for (i, (a, b)) in reference.embeddings.iter().zip(&got.embeddings).enumerate() {
        assert_eq!(a, b, "{what}: embedding of frame {:?}", reference.frames[i]);
    }
    assert_eq!(got.tags, reference.tags, "{what}: tags");
    assert_eq!(got.segments, reference.segments, "{what}: segments");
    // Keyframes match here (no captioner in these configs); the keyframe
    // and caption of a segment open at a kill with captions on is the
    // separate fix README "Not covered yet" tracks.
    assert_eq!(
        got.keyframes, reference.keyframes,
        "{what}: segment keyframes"
    );
    assert_eq!(
        got.checkpoints, reference.checkpoints,
        "{what}: checkpoints"
    );
}

fn frames_in(store: &Path) -> usize {
    open_store(store)
        .stats()
        .unwrap()
        .frames
        .iter()
        .map(|(_, n)| *n as usize)
        .sum()
}

#[test]
fn a_replay_killed_at_20_random_points_resumes_to_the_uninterrupted_store() {
    let _serial = crate::serial();
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("scenes.mp4");
    let patterns = [
        "smpte",
        "ball",
        "checkers-8",
        "pinwheel",
        "spokes",
        "zone-plate",
    ];
    scene_clip(&clip, &patterns, 3);
    let config = write_config(dir.path(), "roadrep.toml", &dir.path().join("unused"), &[]);
    let replay = |store: &Path| {
        let clip = clip.to_str().unwrap();
        let store = store.to_str().unwrap();
        let args = [
            "replay", clip, "--camera", "cam", "--fps", "4", "--start", START,
        ];
        let mut c = roadrep(&config, &args);
        c.args(["--store", store]);
        c
    };
    let to_end = |store: &Path| {
        let o = output_within(replay(store), Duration::from_secs(120));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && !err.contains("panicked"), "{err}");
    };

    let reference_store = dir.path().join("reference");
    to_end(&reference_store);
    let reference = contents(&reference_store);
    // 18 s at 4 fps; a cut per scene change (the comparison needs some).
    assert_eq!(reference.frames.len(), 72);
    assert!(reference.segments.len() >= 4, "{:?}", reference.segments);
    // Timed on a second run (the text embeddings are cached by now), which
    // must give the same store.
    let t0 = Instant::now();
    to_end(&dir.path().join("timed"));
    let mut run_time = t0.elapsed();
    assert_same(
        &reference,
        &contents(&dir.path().join("timed")),
        "second run",
    );

    // One kill point in each twentieth of an uninterrupted run, in random
    // order: start (model loading), middle and end (last batch, segment
    // close) are all hit.
    let mut rng = Rng::from_env("replay kill points");
    let mut points: Vec<f64> = (0..KILLS)
        .map(|i| (i as f64 + rng.unit()) / KILLS as f64)
        .collect();
    for i in (1..points.len()).rev() {
        points.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    // A chain is one store killed and resumed until a run ends by itself;
    // then it is compared and a fresh chain takes the kill point.
    let (mut chain, mut kills) = (0, 0);
    let mut store = dir.path().join("chain0");
    for point in &points {
        for _ in 0..3 {
            let fresh = !store.exists();
            let delay = run_time.mul_f64(*point);
            let started = Instant::now();
            let mut child = replay(&store)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if let Some(status) = wait_until(&mut child, started + delay) {
                assert!(status.success(), "chain {chain}: {status:?}");
                // A whole run outpaced the timed one (the machine's load
                // varies): the points scale to this run.
                if fresh {
                    run_time = run_time.min(started.elapsed());
                }
                assert_same(&reference, &contents(&store), &format!("chain {chain}"));
                chain += 1;
                store = dir.path().join(format!("chain{chain}"));
                continue;
            }
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            eprintln!(
                "kill {kills}: {delay:.2?} into a run of chain {chain}, {} of 72 frames stored",
                if store.exists() { frames_in(&store) } else { 0 }
            );
            break;
        }
    }
    to_end(&store);
    assert_same(&reference, &contents(&store), &format!("chain {chain}"));
    eprintln!(
        "{kills} kills over {} chains, uninterrupted run {run_time:.2?}",
        chain + 1
    );
    // A point is missed only when runs outpace the timed one three times.
    assert!(
        kills >= KILLS * 3 / 4,
        "only {kills} of {KILLS} kill points hit a running replay"
    );
}

/// A port free now (the daemon binds it a moment later).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut r = agent
        .get(format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    r.body_mut().read_json().ok()
}

/// Polls the daemon's API until `done` says so; panics after a minute or
/// if the daemon exits.
fn poll(daemon: &mut Child, port: u16, path: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            panic!("the daemon exited while waiting for {path}: {status:?}");
        }
        if get_json(port, path).is_some_and(|v| done(&v)) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never got there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(daemon: &Child, sig: libc::c_int) {
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(daemon.id() as libc::pid_t, sig) }, 0);
}

/// Sends SIGTERM and asserts the daemon exits 0 (its clean shutdown).
fn terminate(mut daemon: Child, log: &Path) {
    signal(&daemon, libc::SIGTERM);
    let status = wait_until(&mut daemon, Instant::now() + Duration::from_secs(30));
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "SIGTERM: {log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn the_daemon_killed_or_stopped_part_way_resumes_its_three_streams_without_loss() {
    let _serial = crate::serial();
    let dir = tempfile::tempdir().unwrap();
    let names = ["front", "rear", "side"];
    let clips: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.path().join(format!("{n}.mp4")))
        .collect();
    for (clip, pattern) in clips.iter().zip(["smpte", "ball", "snow"]) {
        common_clip(clip, pattern);
    }
    // The reference: the three files replayed (camera = file name, time =
    // mtime - duration, as the daemon stamps files).
    let reference_store = dir.path().join("reference");
    let config = write_config(dir.path(), "replay.toml", &reference_store, &[]);
    let mut args = vec!["replay", "--fps", "2"];
    args.extend(clips.iter().map(|c| c.to_str().unwrap()));
    let o = output_within(roadrep(&config, &args), Duration::from_secs(120));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = contents(&reference_store);
    let total = reference.frames.len();
    assert_eq!(total, 3 * 24);

    let mut rng = Rng::from_env("daemon stop points");
    for (how, sig) in [("SIGKILL", libc::SIGKILL), ("SIGTERM", libc::SIGTERM)] {
        let store = dir.path().join(how);
        let port = free_port();
        let listen = format!("listen = \"127.0.0.1:{port}\"");
        let streams: Vec<String> = names
            .iter()
            .zip(&clips)
            .map(|(n, c)| format!("name = \"{n}\"\nsource = \"{}\"", c.display()))
            .collect();
        let mut overrides = vec![("api", listen.as_str())];
        overrides.extend(streams.iter().map(|s| ("streams", s.as_str())));
        let config = write_config(dir.path(), &format!("{how}.toml"), &store, &overrides);
        let log = dir.path().join(format!("{how}.log"));
        let start = || {
            let log = std::fs::File::options()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            roadrep(&config, &["run"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        };
        let stored = |v: &serde_json::Value| -> usize {
            let counts: Vec<(String, usize)> =
                serde_json::from_value(v["frames"].clone()).unwrap_or_default();
            counts.iter().map(|c| c.1).sum()
        };
        // Stopped once a random share (up to two thirds) of the frames is in.
        let at = 1 + (rng.unit() * (total * 2 / 3) as f64) as usize;
        let mut daemon = start();
        poll(&mut daemon, port, "/api/streams", |v| stored(v) >= at);
        signal(&daemon, sig);
        let status = wait_until(&mut daemon, Instant::now() + Duration::from_secs(30));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if sig == libc::SIGTERM {
            assert_eq!(status.and_then(|s| s.code()), Some(0), "{text}");
        } else {
            assert!(status.is_some(), "SIGKILL did not end it");
        }
        let partial = frames_in(&store);
        eprintln!("{how} at {at}+ frames stored: {partial} of {total} in the store");
        assert!(
            partial < total,
            "{how}: the store was complete before the stop, not part-way"
        );

        // Restarted, it finishes every stream; SIGTERM then exits 0.
        let mut daemon = start();
        poll(&mut daemon, port, "/health", |v| {
            v["streams"]
                .as_array()
                .is_some_and(|s| s.len() == 3 && s.iter().all(|s| s["state"] == "finished"))
        });
        terminate(daemon, &log);
        assert_same(&reference, &contents(&store), how);
    }
}

/// 12 s at 25 fps, 320x240: 24 frames at 2 fps.
fn common_clip(path: &Path, pattern: &str) {
    crate::common::make_clip(path, 300, 25, 320, 240, pattern);
}
