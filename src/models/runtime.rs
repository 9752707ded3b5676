//! Loading ONNX Runtime and creating sessions.
//!
//! The library is the `libonnxruntime.so` of the `onnxruntime==1.31.1` PyPI
//! wheel (design.md §1). It can be loaded once per process, so the
//! environment lives in a process-wide cell; every model shares it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use super::ModelError;

/// Environment variable naming the onnxruntime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

static RUNTIME: OnceLock<Result<OrtRuntime, String>> = OnceLock::new();

/// A loaded ONNX Runtime, shared by all models of the process, and how
/// sessions opened through this handle run.
#[derive(Clone)]
pub struct OrtRuntime {
    env: Arc<Environment>,
    library: PathBuf,
    /// Whether idle compute threads spin waiting for work (see
    /// [`OrtRuntime::with_spinning`]).
    spinning: bool,
}

impl std::fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRuntime")
            .field("library", &self.library)
            .field("spinning", &self.spinning)
            .finish()
    }
}

impl OrtRuntime {
    /// Loads onnxruntime from `configured`, else `$ORT_DYLIB_PATH`, else the
    /// places `make setup` and the container image install it.
    /// A second call returns the runtime the first one loaded.
    pub fn load(configured: Option<&Path>) -> Result<Self, ModelError> {
        if let Some(Ok(rt)) = RUNTIME.get() {
            return Ok(rt.clone());
        }
        let path = resolve_library(configured)?;
        if !path.is_file() {
            return Err(ModelError::RuntimeLoad {
                path,
                reason: "file not found".into(),
            });
        }
        let result = RUNTIME.get_or_init(|| {
            let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
            let env = builder
                .with_name("roadrep")
                .build()
                .map_err(|e| e.to_string())?;
            Ok(OrtRuntime {
                spinning: false,
                env: Arc::new(env),
                library: path.clone(),
            })
        });
        match result {
            Ok(rt) => Ok(rt.clone()),
            Err(reason) => Err(ModelError::RuntimeLoad {
                path,
                reason: reason.clone(),
            }),
        }
    }

    /// This handle, opening sessions whose idle compute threads spin
    /// (`true`) or sleep (`false`, the default) between operators. Spinning
    /// shaves a little latency off a model that has the cores to itself;
    /// in the daemon the decoder, the other models and the store share
    /// them, and a spinning thread takes their time.
    pub fn with_spinning(mut self, spinning: bool) -> Self {
        self.spinning = spinning;
        self
    }

    /// Path of the loaded library.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Opens an ONNX file as a session with `intra_threads` compute threads.
    pub fn session(&self, model: &Path, intra_threads: usize) -> Result<Session, ModelError> {
        let ort_err = |e: ort::Error| ModelError::Ort {
            path: model.to_path_buf(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(&self.env)
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ort_err(e.into()))?
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| ort_err(e.into()))?
            .with_intra_op_spinning(self.spinning)
            .map_err(|e| ort_err(e.into()))?;
        builder.commit_from_file(model).map_err(ort_err)
    }
}

/// Where to look for the library, in order of precedence.
fn resolve_library(configured: Option<&Path>) -> Result<PathBuf, ModelError> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from(".venv/ort/libonnxruntime.so")];
    // target/{debug,release}/roadrep -> the checkout's .venv.
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            candidates.push(dir.join(".venv/ort/libonnxruntime.so"));
        }
    }
    candidates.push(PathBuf::from("/usr/lib/roadrep/libonnxruntime.so"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(ModelError::RuntimeNotConfigured)
}
