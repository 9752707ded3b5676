//! The fleet loss test (issue 12): two vehicles tag clips while the broker
//! is stopped for a while and restarted; one vehicle's daemon is killed
//! with SIGKILL and restarted, and so is the fleet ingest. Afterwards the
//! fleet index holds exactly the frames and segments of both local stores,
//! none twice.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{Broker, Postgres, vehicle_config};
use roadrep::store::Store;

const START: &str = "2026-11-30T08:00:00Z";

fn fleet_config(dir: &Path, broker_port: u16, pg: &Postgres) -> PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            "[broker]\nhost = \"127.0.0.1\"\nport = {broker_port}\nclient_id = \"fleet-loss-test\"\n\
             [postgres]\nurl = \"{}\"\n[model]\ndir = \"{}\"\n",
            pg.url(),
            common::tiny_model_dir().display()
        ),
    )
    .unwrap();
    path
}

fn roadrep_cmd(args: &[&str], cache: &Path, log: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roadrep"));
    c.args(args)
        .current_dir(common::root())
        .env("XDG_CACHE_HOME", cache)
        .env_remove("ROADREP_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    c
}

fn kill9(child: &mut Child) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
}

fn terminate(child: &mut Child) {
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("did not stop on SIGTERM");
}

fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut r = common::api_agent()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    r.body_mut().read_json().ok()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

type Keys = (BTreeSet<(String, i64)>, BTreeSet<(String, i64)>);

/// (camera, time) of every stored frame and (camera, start) of every
/// segment of a local store.
fn local_keys(store: &Path) -> Keys {
    let m = roadrep::models::ModelManifest::read(&common::tiny_model_dir()).unwrap();
    let s = Store::open(store, &m.fingerprint, m.clip.embed_dim).unwrap();
    let frames = s
        .frames(&Default::default(), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|f| (f.stream, f.ts_ns))
        .collect();
    let segments = s
        .segments(&Default::default())
        .unwrap()
        .into_iter()
        .map(|e| (e.stream, e.record.start_ns))
        .collect();
    (frames, segments)
}

/// The same keys of one vehicle in the fleet index, and the row counts
/// (which would exceed the key counts if anything were stored twice).
fn fleet_keys(rt: &tokio::runtime::Runtime, pg: &Postgres, vehicle: &str) -> (Keys, usize, usize) {
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT camera, time_ns FROM frames WHERE vehicle = $1",
                &[&vehicle],
            )
            .await
            .unwrap();
        let frames: BTreeSet<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let frame_rows = rows.len();
        let rows = client
            .query(
                "SELECT camera, start_ns FROM segments WHERE vehicle = $1",
                &[&vehicle],
            )
            .await
            .unwrap();
        let segments: BTreeSet<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        ((frames, segments), frame_rows, rows.len())
    })
}

fn frame_count(rt: &tokio::runtime::Runtime, pg: &Postgres) -> i64 {
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query_one("SELECT count(*) FROM frames", &[])
            .await
            .unwrap()
            .get(0)
    })
}

#[test]
fn two_vehicles_lose_nothing_through_broker_daemon_and_ingest_failures() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut broker = Broker::start();
    let pg = Postgres::start();
    let cache = dir.path().join("cache");
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let clip_a = dir.path().join("a.mp4");
    let clip_b = dir.path().join("b.mp4");
    common::scene_clip(&clip_a, &["smpte", "ball", "snow"], 5);
    common::scene_clip(&clip_b, &["snow", "smpte", "pinwheel", "ball"], 5);

    // The fleet's persistent session exists before the vehicles publish.
    let fleet = fleet_config(dir.path(), broker.port, &pg);
    let fleet_s = fleet.to_str().unwrap();
    let ingest = || {
        roadrep_cmd(
            &["-v", "-c", fleet_s, "fleet", "ingest", "--init"],
            &cache,
            &log("ingest"),
        )
        .spawn()
        .unwrap()
    };
    let mut ingest_run = ingest();
    wait_for("the fleet schema", Duration::from_secs(30), || {
        std::fs::read_to_string(log("ingest")).is_ok_and(|l| l.contains("Connected to the broker"))
    });
    // Its SUBSCRIBE follows the CONNACK.
    std::thread::sleep(Duration::from_secs(1));

    // The broker goes down; both vehicles tag locally meanwhile.
    broker.stop();
    let v1 = vehicle_config(dir.path(), "v1", broker.port, "", "drain_secs = 90\n");
    let mut replay_v1 = roadrep_cmd(
        &[
            "-c",
            v1.to_str().unwrap(),
            "replay",
            clip_a.to_str().unwrap(),
            "--camera",
            "front",
            "--start",
            START,
        ],
        &cache,
        &log("v1"),
    )
    .spawn()
    .unwrap();
    let api_port = common::free_port();
    let v2 = vehicle_config(
        dir.path(),
        "v2",
        broker.port,
        &format!(
            "[[streams]]\nname = \"rear\"\nsource = \"{}\"\n",
            clip_b.display()
        ),
        "drain_secs = 90\n",
    );
    let text = std::fs::read_to_string(&v2)
        .unwrap()
        .replace("127.0.0.1:8470", &format!("127.0.0.1:{api_port}"));
    std::fs::write(&v2, text).unwrap();
    let daemon = || {
        roadrep_cmd(&["-c", v2.to_str().unwrap(), "run"], &cache, &log("v2"))
            .spawn()
            .unwrap()
    };
    let stored = |port| {
        get_json(port, "/api/streams")
            .and_then(|v| v["frames"].as_array().cloned())
            .map_or(0, |a| a.iter().filter_map(|c| c[1].as_u64()).sum::<u64>())
    };
    let mut daemon_run = daemon();
    wait_for("v2's first frames", Duration::from_secs(60), || {
        stored(api_port) >= 6
    });
    kill9(&mut daemon_run);
    let mut daemon_run = daemon();

    // Back up while both still send; the ingest dies once mid-stream.
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    wait_for(
        "the first rows in the fleet index",
        Duration::from_secs(60),
        || frame_count(&rt, &pg) > 0,
    );
    kill9(&mut ingest_run);
    std::thread::sleep(Duration::from_secs(1));
    let mut ingest_run = ingest();

    // v2's file finishes and its outbox empties; v1's replay drains and exits.
    wait_for("v2's stream to finish", Duration::from_secs(120), || {
        get_json(api_port, "/health").is_some_and(|v| {
            v["streams"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["state"] == "finished"))
        })
    });
    wait_for("v2's outbox to empty", Duration::from_secs(120), || {
        get_json(api_port, "/api/uplink").is_some_and(|v| v["outbox"]["depth"] == 0)
    });
    let status = replay_v1.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(log("v1")).unwrap()
    );
    let v1_log = std::fs::read_to_string(log("v1")).unwrap();
    assert!(v1_log.contains("outbox empty"), "{v1_log}");
    // The last captions come after the last frames: wait for v2's to be sent.
    std::thread::sleep(Duration::from_secs(2));
    wait_for("v2's outbox to stay empty", Duration::from_secs(60), || {
        get_json(api_port, "/api/uplink").is_some_and(|v| v["outbox"]["depth"] == 0)
    });
    terminate(&mut daemon_run);

    let expected = [
        ("v1", local_keys(&dir.path().join("v1.sled"))),
        ("v2", local_keys(&dir.path().join("v2.sled"))),
    ];
    for (vehicle, (frames, segments)) in &expected {
        assert!(
            frames.len() >= 20 && segments.len() >= 2,
            "{vehicle}: too little stored"
        );
        let mut last = None;
        wait_for(
            &format!("{vehicle} in the fleet index"),
            Duration::from_secs(60),
            || {
                let got = fleet_keys(&rt, &pg, vehicle);
                let done = got.0.0 == *frames && got.0.1 == *segments;
                last = Some(got);
                done
            },
        );
        let ((_, _), frame_rows, segment_rows) = last.unwrap();
        assert_eq!(frame_rows, frames.len(), "{vehicle}: a frame stored twice");
        assert_eq!(
            segment_rows,
            segments.len(),
            "{vehicle}: a segment stored twice"
        );
    }
    terminate(&mut ingest_run);
    let ingest_log = std::fs::read_to_string(log("ingest")).unwrap();
    assert!(!ingest_log.contains("panicked"), "{ingest_log}");
}
