//! The process-wide ONNX Runtime environment, loaded from a shared library
//! at run time (`ort`'s `load-dynamic`: nothing is downloaded at build time).

use std::path::Path;
use std::sync::Mutex;

use ort::environment::Environment;

use crate::PiperError;

static RUNTIME: Mutex<Option<Environment>> = Mutex::new(None);

/// Loads `libonnxruntime` from `library` once per process; later calls are no-ops.
pub fn init_runtime(library: &Path) -> Result<(), PiperError> {
    let mut rt = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if rt.is_some() {
        return Ok(());
    }
    if !library.exists() {
        return Err(PiperError::Runtime(format!(
            "library {} not found; run `just assets` (or `duplex assets`) or set ORT_DYLIB_PATH",
            library.display()
        )));
    }
    let env = ort::init_from(library)
        .map_err(|e| PiperError::Runtime(format!("cannot load {}: {e}", library.display())))?
        .with_name("duplex")
        .build()
        .map_err(|e| PiperError::Runtime(e.to_string()))?;
    *rt = Some(env);
    Ok(())
}

pub(crate) fn environment() -> Result<Environment, PiperError> {
    RUNTIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| PiperError::Runtime("not initialised (the worker loads it from onnxruntime_library)".into()))
}
