//! Pictures of stored frames: every frame keeps a small JPEG thumbnail,
//! each segment's keyframe a larger one; searches, segments and exports
//! name their URLs, the API serves them (with an ETag) and decodes the full
//! frame again from its file.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A config storing thumbnails `thumbnail_width` wide, and keyframe
/// pictures at the default width unless `keyframe_width` says otherwise.
fn config(
    dir: &Path,
    port: u16,
    thumbnail_width: u32,
    keyframe_width: Option<u32>,
) -> std::path::PathBuf {
    let path = dir.join(format!("roadrep-{thumbnail_width}.toml"));
    std::fs::write(
        &path,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             cache_dir = \"{cache}\"\n[ingest]\nsample_fps = 2\n[store]\npath = \"{store}\"\n\
             thumbnail_width = {thumbnail_width}\n{keyframe}[api]\nlisten = \"127.0.0.1:{port}\"\n",
            keyframe = keyframe_width
                .map(|w| format!("keyframe_width = {w}\n"))
                .unwrap_or_default(),
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            cache = dir.display(),
            store = dir.join(format!("store-{thumbnail_width}")).display(),
        ),
    )
    .unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replays `clip` with `config` as camera "front cam".
fn replay(dir: &Path, config: &Path, clip: &Path) {
    let out = common::roadrep(
        &[
            "-c",
            config.to_str().unwrap(),
            "replay",
            "--camera",
            "front cam",
            "--start",
            "2026-11-20T08:00:00Z",
            clip.to_str().unwrap(),
        ],
        dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serves the store of `config`.
fn serve(dir: &Path, config: &Path, port: u16) -> Child {
    let daemon = Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(["-c", config.to_str().unwrap(), "run"])
        .current_dir(common::root())
        .env("XDG_CACHE_HOME", dir)
        .env_remove("ROADREP_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(format!("http://127.0.0.1:{port}/health"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

fn get(agent: &ureq::Agent, port: u16, path: &str, etag: Option<&str>) -> Reply {
    let mut req = agent.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(e) = etag {
        req = req.header("If-None-Match", e);
    }
    let mut r = req.call().unwrap();
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.body_mut().read_to_vec().unwrap(),
    }
}

#[test]
fn frames_keep_thumbnails_that_the_api_serves_with_the_full_frame() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("front.mp4");
    common::make_clip(&clip, 250, 25, 640, 360, "ball");
    let port = free_port();
    let config = config(dir.path(), port, 256, None);
    replay(dir.path(), &config, &clip);

    // export-frames names each frame's thumbnail; the trainer still reads
    // the manifest.
    let export = dir.path().join("export");
    let out = common::roadrep(
        &[
            "-c",
            config.to_str().unwrap(),
            "export-frames",
            "--out",
            export.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = export.join("frames.jsonl");
    let lines: Vec<Value> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20, "10 s at 2 fps");
    for l in &lines {
        let thumb = l["thumbnail"].as_str().unwrap();
        assert!(
            thumb.starts_with("/api/frames/front%20cam/") && thumb.ends_with("/thumb.jpg"),
            "{l}"
        );
    }
    #[cfg(feature = "trainer")]
    assert_eq!(
        roadrep::trainer::dataset::read_jsonl(&manifest)
            .unwrap()
            .len(),
        20
    );

    let mut daemon = serve(dir.path(), &config, port);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();

    // Search results carry the thumbnail and image URLs.
    let r = get(&agent, port, "/api/search?q=a%20road&top=10", None);
    assert_eq!(r.status, 200);
    let hits: Value = serde_json::from_slice(&r.body).unwrap();
    let hits = hits["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 10);
    let hit = &hits[0];
    let ts_ns = hit["ts_ns"].as_i64().unwrap();
    let thumb = hit["thumbnail"].as_str().unwrap();
    assert_eq!(thumb, format!("/api/frames/front%20cam/{ts_ns}/thumb.jpg"));

    // The thumbnail: a 256x144 JPEG of a few KB, cacheable.
    let r = get(&agent, port, thumb, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "image/jpeg");
    let header = turbojpeg::read_header(&r.body).unwrap();
    assert_eq!((header.width, header.height), (256, 144));
    assert!(r.body.len() < 16 << 10, "{} bytes", r.body.len());
    let etag = r.headers["etag"].to_str().unwrap().to_string();
    let again = get(&agent, port, thumb, Some(&etag));
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // The full frame, decoded again from the file at that frame's pts (8 s
    // in: reached by a seek): the clip's size, and it matches its own
    // thumbnail better than the other frames' (the ball moves).
    let frames: Value =
        serde_json::from_slice(&get(&agent, port, "/api/frames?top=100", None).body).unwrap();
    let frames = frames.as_array().unwrap();
    // The frame nearest a pts, seconds.
    let at = |t: f64| {
        frames
            .iter()
            .min_by(|a, b| {
                let d = |f: &&Value| (f["pts_s"].as_f64().unwrap() - t).abs();
                d(a).total_cmp(&d(b))
            })
            .unwrap()
    };
    let (late, other) = (at(8.0), at(7.5));
    assert_ne!(late["ts_ns"], other["ts_ns"]);
    let r = get(&agent, port, late["image"].as_str().unwrap(), None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let full = turbojpeg::decompress(&r.body, turbojpeg::PixelFormat::RGB).unwrap();
    assert_eq!((full.width, full.height), (640, 360));
    let small = roadrep::models::preprocess::resize_rgb(
        &roadrep::models::RgbFrame::packed(640, 360, &full.pixels),
        256,
        144,
    )
    .unwrap();
    let thumb_of = |f: &Value| {
        let body = get(&agent, port, f["thumbnail"].as_str().unwrap(), None).body;
        turbojpeg::decompress(&body, turbojpeg::PixelFormat::RGB)
            .unwrap()
            .pixels
    };
    let diff = |thumb: &[u8]| -> f64 {
        small
            .iter()
            .zip(thumb)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / small.len() as f64
    };
    let (own, neighbour) = (diff(&thumb_of(late)), diff(&thumb_of(other)));
    assert!(
        own < 4.0 && own < neighbour,
        "own {own:.2}, neighbour {neighbour:.2}"
    );

    // Each segment's keyframe keeps a larger picture: the frame's own size
    // here (640 px, the default width, never enlarged), closer to the full
    // frame than its thumbnail can be.
    let segments: Value =
        serde_json::from_slice(&get(&agent, port, "/api/segments", None).body).unwrap();
    let segments = segments.as_array().unwrap();
    assert!(!segments.is_empty());
    for seg in segments {
        let url = seg["keyframe_image"].as_str().unwrap();
        assert!(url.ends_with("/keyframe.jpg"), "{seg}");
        let r = get(&agent, port, url, None);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.headers["content-type"], "image/jpeg");
        let etag = r.headers["etag"].to_str().unwrap().to_string();
        assert_eq!(get(&agent, port, url, Some(&etag)).status, 304);
        let picture = turbojpeg::decompress(&r.body, turbojpeg::PixelFormat::RGB).unwrap();
        assert_eq!((picture.width, picture.height), (640, 360));
        let frame_url = url.trim_end_matches("/keyframe.jpg");
        let frame: Value =
            serde_json::from_slice(&get(&agent, port, frame_url, None).body).unwrap();
        assert_eq!(frame["keyframe"].as_str(), Some(url), "{frame}");
        let full = get(&agent, port, frame["image"].as_str().unwrap(), None);
        let full = turbojpeg::decompress(&full.body, turbojpeg::PixelFormat::RGB).unwrap();
        let diff = full
            .pixels
            .iter()
            .zip(&picture.pixels)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / full.pixels.len() as f64;
        assert!(diff < 3.0, "keyframe picture vs full frame: {diff:.2}");
    }
    // Frames that are no keyframe have none.
    let keyframes: Vec<&str> = segments
        .iter()
        .map(|s| s["keyframe_image"].as_str().unwrap())
        .collect();
    let plain = frames
        .iter()
        .find(|f| f.get("keyframe").is_none())
        .expect("a frame that is no keyframe");
    let plain_url = format!("{}/keyframe.jpg", plain["url"].as_str().unwrap());
    assert!(!keyframes.contains(&plain_url.as_str()));
    let r = get(&agent, port, &plain_url, None);
    assert_eq!(r.status, 404);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("not the keyframe"),
        "{body}"
    );

    // Unknown frames, cameras and times: JSON errors.
    for (path, status) in [
        (
            format!("/api/frames/front%20cam/{}/thumb.jpg", ts_ns + 1),
            404,
        ),
        (format!("/api/frames/rear/{ts_ns}/thumb.jpg"), 404),
        (
            "/api/frames/front%20cam/yesterday/thumb.jpg".to_string(),
            400,
        ),
        (
            format!("/api/frames/front%20cam/{}/image.jpg", ts_ns + 1),
            404,
        ),
    ] {
        let r = get(&agent, port, &path, None);
        assert_eq!(r.status, status, "{path}");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }

    // A file changed since it was replayed is not that frame's source.
    std::fs::write(&clip, b"replaced").unwrap();
    let r = get(&agent, port, late["image"].as_str().unwrap(), None);
    assert_eq!(r.status, 404);
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn widths_zero_store_no_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("front.mp4");
    common::make_clip(&clip, 25, 25, 320, 240, "ball");
    let port = free_port();
    let config = config(dir.path(), port, 0, Some(0));
    replay(dir.path(), &config, &clip);
    let mut daemon = serve(dir.path(), &config, port);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = get(&agent, port, "/api/frames", None);
    let frames: Value = serde_json::from_slice(&r.body).unwrap();
    let frame = &frames.as_array().unwrap()[0];
    assert!(frame.get("thumbnail").is_none(), "{frame}");
    let ts_ns = frame["ts_ns"].as_i64().unwrap();
    let r = get(
        &agent,
        port,
        &format!("/api/frames/front%20cam/{ts_ns}/thumb.jpg"),
        None,
    );
    assert_eq!(r.status, 404);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("thumbnail_width = 0"),
        "{body}"
    );
    // No keyframe pictures either.
    let segments: Value =
        serde_json::from_slice(&get(&agent, port, "/api/segments", None).body).unwrap();
    let segment = &segments.as_array().unwrap()[0];
    assert!(segment.get("keyframe_image").is_none(), "{segment}");
    assert!(frame.get("keyframe").is_none(), "{frame}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}
