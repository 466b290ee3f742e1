//! Silero VAD (the PyPI `silero-vad` package's `silero_vad.onnx`, opset 16)
//! on ONNX Runtime. Per 512-sample window at 16 kHz the model takes the
//! window with the previous 64 samples in front (`input` [1, 576]), its
//! recurrent `state` [2, 1, 128] and `sr`, and returns the speech
//! probability and the next state. One model serves many streams: each
//! stream keeps its own [`StreamState`].

use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;

use crate::{MODEL_RATE_HZ, WINDOW_SAMPLES};

/// Samples of the previous window the model sees in front of each window.
const CONTEXT_SAMPLES: usize = 64;
const STATE_LEN: usize = 2 * 128;

#[derive(Debug, thiserror::Error)]
pub enum SileroError {
    #[error(transparent)]
    Runtime(#[from] duplex_onnx::RuntimeError),
    #[error("Silero VAD model {path}: {message}")]
    Load { path: String, message: String },
    #[error("Silero VAD inference: {0}")]
    Inference(String),
}

/// One stream's recurrent state and context.
#[derive(Debug, Clone)]
pub struct StreamState {
    state: Vec<f32>,
    context: [f32; CONTEXT_SAMPLES],
}

impl Default for StreamState {
    fn default() -> Self {
        Self { state: vec![0.0; STATE_LEN], context: [0.0; CONTEXT_SAMPLES] }
    }
}

/// A loaded model. Not shared across threads: each hearing thread loads its own.
pub struct SileroVad {
    session: Session,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad").finish()
    }
}

impl SileroVad {
    /// Loads `silero_vad.onnx` (ONNX Runtime must be initialised). Blocking.
    pub fn load(path: &Path) -> Result<Self, SileroError> {
        let env = duplex_onnx::environment()?;
        let fail = |e: ort::Error| SileroError::Load { path: path.display().to_string(), message: e.to_string() };
        let fail_builder = |e: ort::Error<ort::session::builder::SessionBuilder>| fail(e.into());
        if !path.exists() {
            return Err(SileroError::Load {
                path: path.display().to_string(),
                message: "not found; run `just assets` (or `duplex assets`)".into(),
            });
        }
        let session = Session::builder(&env)
            .map_err(fail)?
            .with_intra_threads(1)
            .map_err(fail_builder)?
            .commit_from_file(path)
            .map_err(fail)?;
        Ok(Self { session })
    }

    /// Speech probability of one 512-sample window (16 kHz, -1.0..=1.0).
    pub fn probability(&mut self, stream: &mut StreamState, window: &[f32]) -> Result<f32, SileroError> {
        debug_assert_eq!(window.len(), WINDOW_SAMPLES);
        let err = |e: ort::Error| SileroError::Inference(e.to_string());
        let mut input = Vec::with_capacity(CONTEXT_SAMPLES + WINDOW_SAMPLES);
        input.extend_from_slice(&stream.context);
        input.extend_from_slice(window);
        let inputs = ort::inputs![
            "input" => Tensor::from_array((vec![1i64, input.len() as i64], input)).map_err(err)?,
            "state" => Tensor::from_array((vec![2i64, 1, 128], stream.state.clone())).map_err(err)?,
            "sr" => Tensor::from_array((Vec::<i64>::new(), vec![MODEL_RATE_HZ as i64])).map_err(err)?,
        ];
        let outputs = self.session.run(inputs).map_err(err)?;
        let (_, prob) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        let (_, state) = outputs[1].try_extract_tensor::<f32>().map_err(err)?;
        let p = prob.first().copied().ok_or_else(|| SileroError::Inference("empty output".into()))?;
        stream.state.copy_from_slice(&state[..STATE_LEN]);
        stream.context.copy_from_slice(&window[WINDOW_SAMPLES - CONTEXT_SAMPLES..]);
        Ok(p)
    }
}
