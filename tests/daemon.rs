//! The daemon end to end: several streams at once, a broken one failing on
//! its own, and search through the HTTP API with each filter.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use roadrep::config::RoadrepConfig;
use roadrep::daemon::{DaemonError, DaemonParts, run};
use roadrep::models::{ClipModel, ClipOptions, ImagePrecision};
use roadrep::store::Store;
use roadrep::tagging::{LabelSets, SceneTagger};
use serde_json::Value;

fn get(addr: &str, path: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(format!("http://{addr}{path}")).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap())
}

fn hits(v: &Value) -> &Vec<Value> {
    v["hits"].as_array().unwrap()
}

/// A daemon running on its own thread.
struct Running {
    addr: String,
    store: Store,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    daemon: std::thread::JoinHandle<Result<roadrep::pipeline::PipelineTotals, DaemonError>>,
}

impl Running {
    fn stop(self) -> Result<roadrep::pipeline::PipelineTotals, DaemonError> {
        self.stop_tx.send(()).unwrap();
        self.daemon.join().unwrap()
    }
}

/// Loads the tiny model and starts the daemon with `config`.
fn start(config: RoadrepConfig) -> Running {
    let options = ClipOptions {
        precision: ImagePrecision::Fp32,
        intra_threads: 1,
        load_text_encoder: true,
        verified_files_dir: None,
    };
    let model = ClipModel::load(&config.models.clip, &common::runtime(), &options).unwrap();
    let labels = LabelSets::from_file(&config.tagging.labels).unwrap();
    let tagger = SceneTagger::new(&model, &labels, None).unwrap();
    let store = Store::open(&config.store.path, model.fingerprint(), model.embed_dim()).unwrap();
    let parts = DaemonParts {
        model: Arc::new(model),
        tagger: Arc::new(tagger),
        store: store.clone(),
        metrics: None,
        caption_preprocess: None,
        captioner: None,
        config_path: None,
        rig_fuser: None,
    };

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = std::thread::spawn(move || {
        rt.block_on(run(
            &config,
            parts,
            async {
                let _ = stop_rx.await;
            },
            Some(Box::new(move |addr| {
                addr_tx.send(addr.to_string()).unwrap()
            })),
        ))
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    Running {
        addr,
        store,
        stop_tx,
        daemon,
    }
}

#[test]
fn streams_land_together_a_broken_one_fails_alone_and_search_filters_work() {
    let dir = tempfile::tempdir().unwrap();
    let (front, rear, broken) = (
        dir.path().join("front.mp4"),
        dir.path().join("rear.mp4"),
        dir.path().join("broken.mp4"),
    );
    common::make_clip(&front, 100, 25, 320, 240, "smpte");
    common::make_clip(&rear, 100, 25, 320, 240, "snow");
    std::fs::write(&broken, vec![0x5au8; 50_000]).unwrap();
    let query_png = dir.path().join("query.png");
    common::gst(&format!(
        "videotestsrc pattern=smpte num-buffers=1 ! video/x-raw,width=320,height=240 ! videoconvert ! pngenc ! filesink location={}",
        query_png.display()
    ));

    let config_text = format!(
        "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\ncache_dir = \"{cache}\"\n\
         [store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[ingest]\nretry_initial_secs = 0.2\nretry_max_secs = 0.5\n\
         [[streams]]\nname = \"front\"\nsource = \"{front}\"\n[[streams]]\nname = \"rear\"\nsource = \"{rear}\"\n\
         [[streams]]\nname = \"broken\"\nsource = \"{broken}\"\n",
        model = common::tiny_model_dir().display(),
        labels = common::root().join("config/labels.toml").display(),
        cache = dir.path().join("cache").display(),
        store = dir.path().join("store").display(),
        front = front.display(),
        rear = rear.display(),
        broken = broken.display(),
    );
    let config_path = dir.path().join("roadrep.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let config = RoadrepConfig::from_file(&config_path).unwrap();

    let running = start(config);
    let (addr, store) = (running.addr.clone(), running.store.clone());

    // Both 4 s clips land (8 frames each at 2 fps) while "broken" retries.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, streams) = get(&addr, "/api/streams");
        let counts: Vec<(String, u64)> = serde_json::from_value(streams["frames"].clone()).unwrap();
        let n = |name: &str| counts.iter().find(|c| c.0 == name).map_or(0, |c| c.1);
        // The search index follows every stored frame (applied just
        // after each write's commit, so it may be a poll behind).
        let index = &streams["search_index"];
        if n("front") == 8 && n("rear") == 8 && index["frames"] == 16 {
            assert_eq!(index["state"], "ready", "{streams}");
            break;
        }
        assert!(Instant::now() < deadline, "streams did not land: {streams}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, health) = get(&addr, "/health");
    let state = |name: &str| {
        health["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(state("front")["state"], "finished");
    assert_eq!(state("rear")["state"], "finished");
    // Between attempts it is "retrying", during one "running": never finished.
    let broken_state = state("broken")["state"].as_str().unwrap().to_string();
    assert!(
        broken_state == "retrying" || broken_state == "running",
        "{broken_state}"
    );
    assert!(
        state("broken")["last_error"]
            .as_str()
            .unwrap()
            .contains("stream 'broken'")
    );

    // Text search, best first.
    let (status, all) = get(&addr, "/api/search?q=a%20dashcam%20photo&top=5");
    assert_eq!(status, 200, "{all}");
    let scores: Vec<f64> = hits(&all)
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 5);
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    // Camera filter.
    let (_, rear_only) = get(
        &addr,
        "/api/search?q=a%20dashcam%20photo&camera=rear&top=20",
    );
    assert_eq!(hits(&rear_only).len(), 8);
    assert!(hits(&rear_only).iter().all(|h| h["camera"] == "rear"));
    // Time filter: the front frames between 1 s and 2 s of the clip.
    let (_, listed) = get(&addr, "/api/frames?camera=front&top=100");
    let listed = listed.as_array().unwrap().clone();
    let t0 = listed[0]["ts_ns"].as_i64().unwrap();
    let (from, to) = (t0 + 1_000_000_000, t0 + 2_000_000_000);
    let rfc = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    };
    let (_, windowed) = get(
        &addr,
        &format!(
            "/api/search?q=road&camera=front&from={}&to={}&top=20",
            rfc(from),
            rfc(to)
        ),
    );
    let pts: Vec<f64> = hits(&windowed)
        .iter()
        .map(|h| h["pts_s"].as_f64().unwrap())
        .collect();
    assert_eq!(pts.len(), 3, "{pts:?}"); // 1.0, 1.52, 2.0
    // Tag filter: frames whose top weather class is the first frame's.
    let weather = listed[0]["tags"]["weather"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (_, tagged) = get(
        &addr,
        &format!("/api/search?q=road&tag=weather:{weather}&top=100"),
    );
    assert!(!hits(&tagged).is_empty());
    assert!(
        hits(&tagged)
            .iter()
            .all(|h| h["tags"]["weather"][0] == weather.as_str())
    );
    // Minimum score.
    let cut = scores[2];
    let (_, strict) = get(
        &addr,
        &format!("/api/search?q=a%20dashcam%20photo&top=5&min_score={cut}"),
    );
    assert!(
        hits(&strict).len() <= 3
            && hits(&strict)
                .iter()
                .all(|h| h["score"].as_f64().unwrap() >= cut)
    );
    // Errors name the problem.
    let (status, e) = get(&addr, "/api/search?q=x&camera=side");
    assert_eq!(
        (status, e["error"].as_str().unwrap()),
        (404, "unknown camera 'side'")
    );
    let (status, e) = get(&addr, "/api/search?q=x&tag=foggy");
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("tag 'foggy'"));
    // Timeline.
    let (status, tl) = get(&addr, "/api/timeline?camera=front&set=weather");
    assert_eq!(status, 200);
    assert_eq!(
        tl.as_array()
            .unwrap()
            .iter()
            .map(|r| r["frames"].as_u64().unwrap())
            .sum::<u64>(),
        8
    );

    // Segments: each finished 4 s clip is one scene; no captioner here.
    let deadline = Instant::now() + Duration::from_secs(20);
    let segments = loop {
        let (status, segs) = get(&addr, "/api/segments?camera=front");
        assert_eq!(status, 200);
        if !segs.as_array().unwrap().is_empty() || Instant::now() > deadline {
            break segs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let segments = segments.as_array().unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert_eq!(segments[0]["frames"], 8);
    assert_eq!(segments[0]["caption_state"], "none");
    assert_eq!(segments[0]["start_s"].as_f64(), Some(0.0));
    let (status, e) = get(&addr, "/api/segments?from=yesterday");
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("from"));
    {
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let text = agent
            .get(format!("http://{addr}/api/summary?camera=front"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert!(text.starts_with("00:00-00:04 "), "{text}");
        assert_eq!(text.lines().count(), 1);
    }

    // Image search: the smpte pattern finds the smpte camera.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let png = std::fs::read(&query_png).unwrap();
    let mut r = agent
        .post(format!("http://{addr}/api/search/image?top=3"))
        .send(&png[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let by_image: Value = r.body_mut().read_json().unwrap();
    assert_eq!(hits(&by_image)[0]["camera"], "front");
    assert!(
        hits(&by_image)[0]["score"].as_f64().unwrap() > 0.9,
        "{by_image}"
    );

    // Every route refuses the same bad values with a JSON 400 naming them
    // (they used to be clamped, or matched nothing with a 200).
    for (path, needle) in [
        ("/api/search?q=x&top=10001", "top must be at most 10000"),
        ("/api/frames?top=10001", "top must be at most 10000"),
        ("/api/segments?top=10001", "top must be at most 10000"),
        ("/api/search?q=x&tag=nope:x", "no label set 'nope'"),
        ("/api/frames?tag=weather:purple", "no class 'purple'"),
        ("/api/search?q=x&min_score=NaN", "min_score NaN"),
        (
            "/api/search?q=x&tag=weather:foggy&min_tag_score=2",
            "min_tag_score 2",
        ),
    ] {
        let (status, e) = get(&addr, path);
        assert_eq!(status, 400, "{path}: {e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{path}: {e}");
    }
    // Unknown routes, wrong methods and oversized bodies answer in JSON too.
    let (status, e) = get(&addr, "/api/nope");
    assert_eq!((status, e["error"].is_string()), (404, true), "{e}");
    let mut r = agent
        .post(format!("http://{addr}/api/search?q=x"))
        .send(&b""[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.body_mut().read_json::<Value>().unwrap()["error"].is_string());
    let mut r = agent
        .post(format!("http://{addr}/api/search/image"))
        .send(&vec![0u8; (32 << 20) + 1][..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert!(r.body_mut().read_json::<Value>().unwrap()["error"].is_string());

    let totals = running.stop().unwrap();
    assert_eq!(totals.frames, 16);
    drop(store);
}

#[test]
fn a_token_file_makes_every_request_present_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("secrets/api-token");
    let config_for = |listen: &str, token: bool| {
        let mut text = format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             [store]\npath = \"{store}\"\n[api]\nlisten = \"{listen}\"\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            store = dir.path().join("store").display(),
        );
        if token {
            text.push_str(&format!("token_file = \"{}\"\n", token_file.display()));
        }
        let path = dir.path().join("roadrep.toml");
        std::fs::write(&path, text).unwrap();
        path
    };

    // Reachable from other machines without a token: refused before
    // anything listens, in one line.
    let o = common::roadrep(
        &[
            "-c",
            config_for("0.0.0.0:0", false).to_str().unwrap(),
            "run",
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("api.listen '0.0.0.0:0'") && errors[0].contains("api.token_file"),
        "{err}"
    );

    // With a token file (created on first start, owner-only).
    let config = RoadrepConfig::from_file(&config_for("127.0.0.1:0", true)).unwrap();
    let running = start(config);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let call = |auth: Option<String>| {
        let mut r = agent.get(format!("http://{}/health", running.addr));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let mut resp = r.call().unwrap();
        let challenge = resp.headers().get("www-authenticate").is_some();
        let body: Value = resp.body_mut().read_json().unwrap();
        (resp.status().as_u16(), challenge, body)
    };
    let (status, challenge, body) = call(None);
    assert_eq!((status, challenge), (401, true), "{body}");
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
    assert_eq!(call(Some("Bearer wrong".into())).0, 401);
    let (status, _, body) = call(Some(format!("Bearer {}", token.trim())));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    running.stop().unwrap();
}

#[test]
fn idle_and_half_sent_connections_are_closed_and_cannot_starve_health() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roadrep.toml");
    std::fs::write(
        &path,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             [store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4\nheader_timeout_secs = 1\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            store = dir.path().join("store").display(),
        ),
    )
    .unwrap();
    let running = start(RoadrepConfig::from_file(&path).unwrap());
    let addr = running.addr.clone();

    // A request head that never ends is cut off after the timeout.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: roadrep\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 256];
    let closed = slow.read(&mut buf).is_ok();
    assert!(
        closed && t.elapsed() < Duration::from_secs(4),
        "a half-sent request holds its connection ({:?})",
        t.elapsed()
    );

    // A keep-alive connection idle after its request is closed too.
    let mut kept = std::net::TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /api/nope HTTP/1.1\r\nHost: roadrep\r\n\r\n")
        .unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    let t = Instant::now();
    let closed = matches!(kept.read(&mut buf), Ok(0));
    assert!(
        closed && t.elapsed() < Duration::from_secs(4),
        "an idle keep-alive holds its connection ({:?})",
        t.elapsed()
    );

    // As many idle sockets as the API holds: they time out, and /health
    // answers a new client soon after.
    let idle: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let t = Instant::now();
    let (status, body) = get(&addr, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(idle);
    running.stop().unwrap();
}
