//! The web page, driven in headless chromium through chromedriver: search
//! with thumbnails and a tag filter, the frame view, the timeline, the
//! summary, the streams view with a broken stream, and the token form.
//! Screenshots land in `target/web-page/`; with
//! `ROADREP_UPDATE_SCREENSHOTS=1` the search and timeline ones are copied
//! to `docs/` for the README.

mod common;
#[path = "web_page/webdriver.rs"]
mod webdriver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use webdriver::{Browser, ENTER, ESCAPE};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, port: u16, extra_api: &str) -> PathBuf {
    let path = dir.join(format!("roadrep-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             cache_dir = \"{cache}\"\n[ingest]\nsample_fps = 2\nretry_initial_secs = 0.2\nretry_max_secs = 0.5\n\
             [store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n{extra_api}\
             [[streams]]\nname = \"broken\"\nsource = \"{missing}\"\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            cache = dir.display(),
            store = dir.join("store").display(),
            missing = dir.join("missing.mp4").display(),
        ),
    )
    .unwrap();
    path
}

fn replay(dir: &Path, config: &Path, clip: &Path, start: &str) {
    let out = common::roadrep(
        &[
            "-c",
            config.to_str().unwrap(),
            "replay",
            "--camera",
            "front",
            "--start",
            start,
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

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn status(port: u16, path: &str) -> u16 {
    agent()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .call()
        .unwrap()
        .status()
        .as_u16()
}

/// The daemon serving `config`; killed on drop.
struct Daemon(Child);

impl Daemon {
    fn start(dir: &Path, config: &Path, port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_roadrep"))
            .args(["-c", config.to_str().unwrap(), "run"])
            .current_dir(common::root())
            .env("XDG_CACHE_HOME", dir)
            .env_remove("ROADREP_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Self(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while agent()
            .get(format!("http://127.0.0.1:{port}/"))
            .call()
            .is_err()
        {
            assert!(Instant::now() < deadline, "the daemon never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("web-page")
}

/// Script: `n` (or, when `n` is None, any number > 0) images under `css`,
/// every one loaded.
fn images_loaded(css: &str, n: Option<usize>) -> String {
    let count = n.map_or("imgs.length > 0".to_string(), |n| {
        format!("imgs.length === {n}")
    });
    format!(
        "const imgs = [...document.querySelectorAll('{css}')]; \
         return {count} && imgs.every(i => i.complete && i.naturalWidth > 0);"
    )
}

/// A `(set, class)` that is the top class of some frames but not all, and
/// how many frames it has.
fn narrowing_tag(port: u16) -> (String, String, usize, usize) {
    let frames: Value = agent()
        .get(format!("http://127.0.0.1:{port}/api/frames?top=100"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let frames = frames.as_array().unwrap();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in frames {
        for (set, top) in f["tags"].as_object().unwrap() {
            let class = top[0].as_str().unwrap().to_string();
            *counts.entry((set.clone(), class)).or_default() += 1;
        }
    }
    let ((set, class), n) = counts
        .into_iter()
        .filter(|(_, n)| *n < frames.len())
        .max_by_key(|(_, n)| *n)
        .expect("some label set tells the two clips apart");
    (set, class, n, frames.len())
}

#[test]
fn the_page_searches_shows_frames_timeline_summary_streams_and_asks_for_the_token() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let clip = |name: &str| dir.path().join(format!("{name}.mp4"));
    let (ball, white, bars) = (clip("ball"), clip("white"), clip("bars"));
    common::make_clip(&ball, 125, 25, 640, 360, "ball");
    // The tiny model tags a white picture a parking lot, the ball residential.
    common::make_clip(&white, 125, 25, 640, 360, "white");
    // Colour bars, tagged as the ball: the screenshots show pictures.
    common::make_clip(&bars, 125, 25, 640, 360, "smpte");
    let port = free_port();
    let config = config(dir.path(), port, "");
    replay(dir.path(), &config, &ball, "2026-11-20T08:00:00Z");
    replay(dir.path(), &config, &white, "2026-11-20T08:01:00Z");
    replay(dir.path(), &config, &bars, "2026-11-20T08:02:00Z");
    let daemon = Daemon::start(dir.path(), &config, port);
    let (set, class, tagged, total) = narrowing_tag(port);
    let browser = Browser::start(free_port());
    let page = format!("http://127.0.0.1:{port}/");
    let shots = shots();

    // Search: a text query shows every frame with its thumbnail loaded.
    browser.goto(&page);
    browser.wait_until(
        "the tag filters",
        20,
        "return document.querySelectorAll('#f-tags select').length > 0",
    );
    browser.send_keys("#q", "a road");
    browser.click("#search-go");
    // Scored hits: the text search's, not the frame list shown first.
    browser.wait_until(
        "search results with thumbnails",
        30,
        &format!(
            "return document.querySelectorAll('#results .score').length === {total} && (() => {{ {} }})()",
            images_loaded("#results .hit img", Some(total))
        ),
    );
    assert!(
        browser
            .eval("return document.querySelector('#results .hit .score').textContent")
            .as_str()
            .unwrap()
            .starts_with(['0', '-']),
        "hits show their score"
    );
    browser.screenshot(&shots.join("search-text.png"));

    // A tag filter narrows them.
    browser.click(&format!(
        "#f-tags select[data-set='{set}'] option[value='{set}:{class}']"
    ));
    browser.wait_until(
        "the tag filter",
        30,
        &images_loaded("#results .hit img", Some(tagged)),
    );
    browser.screenshot(&shots.join("search.png"));

    // Keyboard: Enter on a result opens the frame (larger picture, score
    // bars, neighbours); Escape closes it.
    browser.send_keys("#results .hit", ENTER);
    browser.wait_until(
        "the frame view",
        30,
        "const d = document.getElementById('frame-dialog'); \
         return d.open && document.querySelectorAll('#frame-body .bar').length > 5 && \
         document.querySelector('#frame-body .segment-line') !== null",
    );
    browser.wait_until(
        "the frame's pictures",
        30,
        &images_loaded("#frame-body img", None),
    );
    let width = browser.eval("return document.querySelector('#frame-body img.large').naturalWidth");
    assert_eq!(width, 640, "the full frame, not the thumbnail");
    browser.screenshot(&shots.join("frame.png"));
    browser.send_keys("#frame-close", ESCAPE);
    browser.wait_until(
        "the frame view to close",
        10,
        "return !document.getElementById('frame-dialog').open",
    );

    // Timeline: strips coloured by class, segments with keyframes.
    browser.click("nav a[data-view='timeline']");
    browser.wait_until(
        "the timeline",
        30,
        &format!(
            "return document.querySelectorAll('#strips .strip-row').length >= 3 && \
             document.querySelectorAll('#strips .run').length >= 3 && (() => {{ {} }})()",
            images_loaded("#segments img", None)
        ),
    );
    browser.screenshot(&shots.join("timeline.png"));
    // Zoomed to a minute, then panned.
    browser.click("#t-zoom option[value='60']");
    browser.wait_until(
        "a one-minute window",
        10,
        "return /08:0[01]:\\d\\d(\\.\\d+)? – /.test(document.getElementById('timeline-range').textContent)",
    );

    // Summary: one line per segment, each with its keyframe.
    browser.click("nav a[data-view='summary']");
    browser.wait_until(
        "the summary",
        30,
        &format!(
            "const lines = [...document.querySelectorAll('.summary-line .line')]; \
             return lines.length >= 2 && lines[0].textContent.startsWith('00:00-') && (() => {{ {} }})()",
            images_loaded(".summary-line img", None)
        ),
    );
    browser.screenshot(&shots.join("summary.png"));

    // Streams: the broken stream's error.
    browser.click("nav a[data-view='streams']");
    browser.wait_until(
        "the broken stream's error",
        30,
        "const e = document.querySelector('tr[data-stream=\"broken\"] .last-error'); \
         return e !== null && e.textContent.length > 0",
    );
    browser.screenshot(&shots.join("streams.png"));

    // A phone-sized window: one column, no horizontal scrolling.
    browser.set_window(390, 844);
    browser.click("nav a[data-view='search']");
    browser.wait_until(
        "the phone layout",
        10,
        "return document.documentElement.scrollWidth <= window.innerWidth",
    );
    browser.screenshot(&shots.join("search-phone.png"));
    browser.set_window(1366, 768);
    drop(daemon);

    // With a token: the page loads without it, the API needs it, and the
    // page works once it is typed in.
    let token = "page-test-token-0123456789";
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let port = free_port();
    let config = self::config(
        dir.path(),
        port,
        &format!("token_file = \"{}\"\n", token_file.display()),
    );
    let _daemon = Daemon::start(dir.path(), &config, port);
    assert_eq!(status(port, "/"), 200);
    assert_eq!(status(port, "/assets/app.js"), 200);
    for path in [
        "/api/search?q=road",
        "/api/labels",
        "/health",
        "/api/frames",
    ] {
        assert_eq!(status(port, path), 401, "{path}");
    }
    browser.goto(&format!("http://127.0.0.1:{port}/"));
    browser.wait_until(
        "the token form",
        20,
        "return document.getElementById('token-dialog').open",
    );
    browser.screenshot(&shots.join("token.png"));
    browser.send_keys("#token-input", token);
    browser.click("#token-submit");
    browser.wait_until(
        "the page after the token",
        20,
        "return document.querySelectorAll('#f-tags select').length > 0",
    );
    browser.send_keys("#q", "a road");
    browser.click("#search-go");
    browser.wait_until(
        "search results behind the token",
        30,
        &images_loaded("#results .hit img", Some(total)),
    );
    assert_eq!(
        browser.eval("return document.getElementById('token-dialog').open"),
        false
    );

    if std::env::var_os("ROADREP_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        let docs = common::root().join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        for name in ["search.png", "timeline.png"] {
            std::fs::copy(shots.join(name), docs.join(format!("web-{name}"))).unwrap();
        }
    }
    eprintln!("web page test: {:.1} s", started.elapsed().as_secs_f64());
}
