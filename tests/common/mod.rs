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
