//! The process-wide ONNX Runtime environment, loaded from a shared library
//! at run time (`ort`'s `load-dynamic`: nothing is downloaded at build time).
//! Every model on ONNX Runtime (Piper voices, Silero VAD) shares it.

use std::path::Path;
use std::sync::Mutex;

pub use ort;
use ort::environment::Environment;

static RUNTIME: Mutex<Option<Environment>> = Mutex::new(None);

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library {0} not found; run `just assets` (or `duplex assets`) or set ORT_DYLIB_PATH")]
    Missing(String),
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: String, message: String },
    #[error("ONNX Runtime is not initialised (load it from the configured onnxruntime_library first)")]
    NotInitialised,
}

/// Loads `libonnxruntime` from `library` once per process; later calls are no-ops.
pub fn init_runtime(library: &Path) -> Result<(), RuntimeError> {
    let mut rt = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if rt.is_some() {
        return Ok(());
    }
    if !library.exists() {
        return Err(RuntimeError::Missing(library.display().to_string()));
    }
    let load = |message: String| RuntimeError::Load { path: library.display().to_string(), message };
    let env = ort::init_from(library)
        .map_err(|e| load(e.to_string()))?
        .with_name("duplex")
        .build()
        .map_err(|e| load(e.to_string()))?;
    *rt = Some(env);
    Ok(())
}

/// The environment sessions are built in.
pub fn environment() -> Result<Environment, RuntimeError> {
    RUNTIME.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or(RuntimeError::NotInitialised)
}
