//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod fleet;

use std::path::{Path, PathBuf};

use roadrep::models::{ClipModel, ClipOptions, ImagePrecision, OrtRuntime};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed tiny CLIP model.
pub fn tiny_model_dir() -> PathBuf {
    root().join("models/clip-tiny")
}

/// `../shared/realdata` if present (tests using it skip otherwise).
pub fn realdata() -> Option<PathBuf> {
    let p = root().join("../shared/realdata");
    p.is_dir().then_some(p)
}

/// The onnxruntime library `make setup` installs (cargo sets ORT_DYLIB_PATH).
pub fn runtime() -> OrtRuntime {
    OrtRuntime::load(None).expect("onnxruntime: run `make setup` (ORT_DYLIB_PATH)")
}

pub fn load_tiny(precision: ImagePrecision) -> ClipModel {
    let options = ClipOptions {
        precision,
        intra_threads: 1,
        load_text_encoder: true,
        verified_files_dir: None,
    };
    ClipModel::load(&tiny_model_dir(), &runtime(), &options).expect("load models/clip-tiny")
}

/// Copies a directory tree (model directories are flat).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Runs `gst-launch-1.0 -q ARGS` (whitespace-separated) and asserts success.
pub fn gst(args: &str) {
    let status = std::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(args.split_whitespace())
        .status()
        .expect("gst-launch-1.0 (make setup installs gstreamer1.0-tools)");
    assert!(status.success(), "gst-launch-1.0 {args}");
}

/// Writes an H.264 MP4 test clip: `frames` frames of a videotestsrc
/// `pattern` at `fps`, `width`x`height`, starting at pts 0 (no B-frames).
pub fn make_clip(path: &Path, frames: u32, fps: u32, width: u32, height: u32, pattern: &str) {
    gst(&format!(
        "videotestsrc pattern={pattern} num-buffers={frames} ! video/x-raw,width={width},height={height},framerate={fps}/1 \
         ! videoconvert ! x264enc speed-preset=ultrafast key-int-max=25 ! mp4mux ! filesink location={}",
        path.display()
    ));
}

/// Runs the roadrep binary from the repo root with an isolated cache
/// directory and no config from the environment.
pub fn roadrep(args: &[&str], cache: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(args)
        .current_dir(root())
        .env("XDG_CACHE_HOME", cache)
        .env_remove("ROADREP_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run roadrep")
}

/// An H.264 clip of scenes (test patterns) `secs` long each, 320x240 at
/// 25 fps: something for the segmenter to cut.
pub fn scene_clip(path: &Path, patterns: &[&str], secs: u32) {
    let caps = "video/x-raw,width=320,height=240,framerate=25/1";
    let mut args = format!(
        "concat name=c ! videoconvert ! x264enc speed-preset=ultrafast key-int-max=25 ! mp4mux ! filesink location={}",
        path.display()
    );
    for p in patterns {
        args.push_str(&format!(
            " videotestsrc pattern={p} num-buffers={} ! {caps} ! c.",
            secs * 25
        ));
    }
    gst(&args);
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `roadrep -c CONFIG run` from the repo root, with its cache in `cache`
/// and no config or log level from the environment; output discarded (the
/// caller may change that, add variables, then spawn).
pub fn daemon(config: &Path, cache: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_roadrep"));
    c.args(["-c", config.to_str().unwrap(), "run"])
        .current_dir(root())
        .env("XDG_CACHE_HOME", cache)
        .env_remove("ROADREP_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// An HTTP client that hands back error statuses as responses.
pub fn api_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Writes `dir/roadrep.toml` for a daemon on the tiny model with its store
/// in `dir/store`, its API on `port` and one file stream `front` reading
/// `clip`; `ingest` holds `[ingest]` settings (`key = value` lines).
pub fn file_stream_config(dir: &Path, port: u16, clip: &Path, ingest: &str) -> PathBuf {
    let config = dir.join("roadrep.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             [store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
             [ingest]\n{ingest}\n[[streams]]\nname = \"front\"\nsource = \"{clip}\"\n",
            model = tiny_model_dir().display(),
            labels = root().join("config/labels.toml").display(),
            store = dir.join("store").display(),
            clip = clip.display(),
        ),
    )
    .unwrap();
    config
}

/// Polls the daemon's `/health` on `port` until its first stream is
/// finished (at most a minute); returns that stream's status and each
/// distinct `last_error` seen on the way.
pub fn wait_until_finished(port: u16) -> (serde_json::Value, Vec<String>) {
    let agent = api_agent();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut errors: Vec<String> = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        let Ok(mut r) = agent.get(format!("http://127.0.0.1:{port}/health")).call() else {
            continue;
        };
        let health: serde_json::Value = r.body_mut().read_json().unwrap();
        let stream = health["streams"][0].clone();
        if let Some(e) = stream["last_error"].as_str()
            && !errors.iter().any(|seen| seen == e)
        {
            errors.push(e.to_string());
        }
        if stream["state"] == "finished" {
            return (stream, errors);
        }
    }
}

/// Stops a daemon with SIGTERM (what was stored is flushed first) and
/// checks it exits cleanly.
pub fn terminate(daemon: &mut std::process::Child) {
    let term = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(daemon.wait().unwrap().success());
}

/// Checks the store in `dir/store` holds exactly `frames` frames, all of
/// stream `front`, and that `clip`'s checkpoint says it is done.
pub fn assert_file_finished_with(dir: &Path, clip: &Path, frames: u64) {
    let store = roadrep::store::Store::open(&dir.join("store"), "any", 4).unwrap();
    assert_eq!(
        store.stats().unwrap().frames,
        vec![("front".to_string(), frames)]
    );
    let id = store.stream_id("front").unwrap();
    let kind = roadrep::ingest::config::SourceKind::File(clip.to_path_buf());
    let source = roadrep::pipeline::SourceId::of(&kind);
    let checkpoint = store.checkpoint(id, source.as_str()).unwrap().unwrap();
    assert!(checkpoint.complete, "{checkpoint:?}");
}
