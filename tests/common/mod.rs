//! Shared helpers of the integration tests.
#![allow(dead_code)]

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
