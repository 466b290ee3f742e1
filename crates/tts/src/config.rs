//! Engine configuration, one tagged variant per engine family.

use serde::{Deserialize, Serialize};

use crate::mock::MockConfig;

/// One model a worker can serve, chosen by `engine:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "snake_case", deny_unknown_fields)]
pub enum EngineConfig {
    Mock(MockConfig),
}

impl EngineConfig {
    pub fn model_id(&self) -> &str {
        match self {
            EngineConfig::Mock(c) => &c.model_id,
        }
    }

    /// Languages the model speaks, as configured.
    pub fn languages(&self) -> &[String] {
        match self {
            EngineConfig::Mock(c) => &c.languages,
        }
    }

    /// Engine family name, as ListModels reports it.
    pub fn family(&self) -> &'static str {
        match self {
            EngineConfig::Mock(_) => "mock",
        }
    }

    /// Threads the host runs this model on.
    pub fn threads(&self) -> usize {
        match self {
            EngineConfig::Mock(c) => c.threads.max(1),
        }
    }

    /// Builds one engine instance (one per host thread).
    pub fn build(&self) -> Result<Box<dyn crate::Engine>, crate::EngineError> {
        match self {
            EngineConfig::Mock(c) => Ok(Box::new(crate::mock::MockEngine::new(c.clone())?)),
        }
    }
}
