//! The models this worker can serve and the ones it has loaded.
//!
//! Loading builds an [`EngineHost`] (engine threads, warm-up) off the async
//! runtime. Unloading drops the registry's reference: sessions still using the
//! model keep it until they end, then its threads exit and its memory is freed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duplex_tts::{EngineHost, HostError, ModelDescriptor};

use crate::engines::EngineConfig;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {0:?} is not configured on this worker")]
    Unknown(String),
    #[error("model {model:?} failed to load: {source}")]
    Load { model: String, source: HostError },
}

#[derive(Debug)]
pub struct Models {
    configs: Vec<EngineConfig>,
    loaded: Mutex<BTreeMap<String, Arc<EngineHost>>>,
    /// Serialises loads so two requests don't build the same model twice.
    load_lock: tokio::sync::Mutex<()>,
}

impl Models {
    pub fn new(configs: Vec<EngineConfig>) -> Self {
        Self { configs, loaded: Mutex::default(), load_lock: tokio::sync::Mutex::new(()) }
    }

    pub fn configs(&self) -> &[EngineConfig] {
        &self.configs
    }

    fn config(&self, model_id: &str) -> Result<&EngineConfig, ModelError> {
        self.configs.iter().find(|c| c.model_id() == model_id).ok_or_else(|| ModelError::Unknown(model_id.into()))
    }

    pub fn get_loaded(&self, model_id: &str) -> Option<Arc<EngineHost>> {
        self.loaded.lock().expect("models lock").get(model_id).cloned()
    }

    /// Descriptors of loaded models, by id.
    pub fn loaded(&self) -> BTreeMap<String, ModelDescriptor> {
        let loaded = self.loaded.lock().expect("models lock");
        loaded.iter().map(|(id, h)| (id.clone(), h.descriptor().clone())).collect()
    }

    pub fn active_jobs(&self) -> usize {
        self.loaded.lock().expect("models lock").values().map(|h| h.active_jobs()).sum()
    }

    /// Returns the loaded model, loading it first if needed; the duration is
    /// zero when it was already resident.
    pub async fn load(&self, model_id: &str) -> Result<(Arc<EngineHost>, Duration), ModelError> {
        let config = self.config(model_id)?.clone();
        let _guard = self.load_lock.lock().await;
        if let Some(host) = self.get_loaded(model_id) {
            return Ok((host, Duration::ZERO));
        }
        let started = Instant::now();
        let host = self.build(config).await?;
        self.loaded.lock().expect("models lock").insert(model_id.to_string(), host.clone());
        Ok((host, started.elapsed()))
    }

    /// Replaces a model with a freshly built instance (RELOAD).
    pub async fn reload(&self, model_id: &str) -> Result<(Arc<EngineHost>, Duration), ModelError> {
        let config = self.config(model_id)?.clone();
        let _guard = self.load_lock.lock().await;
        let started = Instant::now();
        let host = self.build(config).await?;
        self.loaded.lock().expect("models lock").insert(model_id.to_string(), host.clone());
        Ok((host, started.elapsed()))
    }

    /// Drops the registry's reference; false if it was not loaded.
    pub fn unload(&self, model_id: &str) -> Result<bool, ModelError> {
        self.config(model_id)?;
        Ok(self.loaded.lock().expect("models lock").remove(model_id).is_some())
    }

    async fn build(&self, config: EngineConfig) -> Result<Arc<EngineHost>, ModelError> {
        let model = config.model_id().to_string();
        let started = Instant::now();
        // Building warms the engine: seconds of blocking work for real models.
        let result = tokio::task::spawn_blocking(move || config.start_host())
            .await
            .map_err(|e| ModelError::Load { model: model.clone(), source: HostError::LaneGone(e.to_string()) })?;
        let host = result.map_err(|source| ModelError::Load { model: model.clone(), source })?;
        tracing::info!(model = %model, load_ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Arc::new(host))
    }
}
