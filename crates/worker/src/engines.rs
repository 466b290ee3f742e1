//! The engines this worker can run, one tagged config variant per family,
//! and how each is built onto an engine host.

use duplex_tts::mock::{MockConfig, MockEngine};
use duplex_tts::{Engine, EngineHost, HostError};
use serde::{Deserialize, Serialize};

/// One model a worker can serve, chosen by `engine:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "snake_case", deny_unknown_fields)]
pub enum EngineConfig {
    Mock(MockConfig),
    /// A Piper voice on ONNX Runtime (feature `piper`).
    #[cfg(feature = "piper")]
    Piper(duplex_piper::PiperConfig),
    /// Kyutai's TTS model, sessions batched on one model (feature `kyutai`).
    #[cfg(feature = "kyutai")]
    Kyutai(crate::kyutai::KyutaiConfig),
}

impl EngineConfig {
    pub fn model_id(&self) -> &str {
        match self {
            EngineConfig::Mock(c) => &c.model_id,
            #[cfg(feature = "piper")]
            EngineConfig::Piper(c) => &c.model_id,
            #[cfg(feature = "kyutai")]
            EngineConfig::Kyutai(c) => &c.model_id,
        }
    }

    /// Languages the model speaks, as configured (Piper: from the voice's JSON;
    /// empty when that cannot be read).
    pub fn languages(&self) -> Vec<String> {
        match self {
            EngineConfig::Mock(c) => c.languages.clone(),
            #[cfg(feature = "piper")]
            EngineConfig::Piper(c) => c.voice().map(|v| v.languages()).unwrap_or_default(),
            #[cfg(feature = "kyutai")]
            EngineConfig::Kyutai(c) => c.languages.clone(),
        }
    }

    /// Engine family name, as ListModels reports it.
    pub fn family(&self) -> &'static str {
        match self {
            EngineConfig::Mock(_) => "mock",
            #[cfg(feature = "piper")]
            EngineConfig::Piper(_) => "piper",
            #[cfg(feature = "kyutai")]
            EngineConfig::Kyutai(_) => "kyutai",
        }
    }

    /// Builds the model on its threads and warms it. Blocking.
    pub fn start_host(&self) -> Result<EngineHost, HostError> {
        match self {
            EngineConfig::Mock(c) => {
                let cfg = c.clone();
                EngineHost::start(&c.model_id, c.threads, move || {
                    Ok(Box::new(MockEngine::new(cfg.clone())?) as Box<dyn Engine>)
                })
            }
            #[cfg(feature = "piper")]
            EngineConfig::Piper(c) => {
                let cfg = c.clone();
                EngineHost::start(&c.model_id, c.lanes(), move || {
                    Ok(Box::new(duplex_piper::PiperEngine::load(&cfg)?) as Box<dyn Engine>)
                })
            }
            #[cfg(feature = "kyutai")]
            EngineConfig::Kyutai(c) => {
                // One model for the whole worker; the host's lane only pumps its audio.
                let shared = crate::kyutai::Shared::load(c)?;
                let slots = shared.clone();
                let host = EngineHost::start(&c.model_id, 1, move || {
                    Ok(Box::new(crate::kyutai::KyutaiEngine(shared.clone())) as Box<dyn Engine>)
                })?;
                Ok(host.with_free_slots(std::sync::Arc::new(move || slots.free_slots())))
            }
        }
    }
}
