//! The models this worker can serve and the ones it has resident.
//!
//! Loading builds an [`EngineHost`] (engine threads, warm-up) off the async
//! runtime; concurrent requests for a model share one load. Residency is
//! bounded: at most `max_resident` models, idle ones (no session holds them)
//! evicted least-recently-used first, and any idle past `idle_ttl_ms` unloaded
//! by the periodic sweep. The default model is never evicted. Unloading drops
//! the registry's reference: sessions still using the model keep it until they
//! end, then its threads exit and its memory is freed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duplex_tts::{EngineHost, HostError, ModelDescriptor};
use serde::{Deserialize, Serialize};

use crate::engines::EngineConfig;

/// Residency policy (`model_cache:` in the worker config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelCache {
    /// Models resident at once.
    pub max_resident: usize,
    /// An idle model unused this long is unloaded.
    pub idle_ttl_ms: u64,
    /// A model loaded less than this long ago is not evicted by the TTL sweep.
    pub min_residency_ms: u64,
    pub eviction_interval_ms: u64,
}

impl Default for ModelCache {
    fn default() -> Self {
        Self { max_resident: 3, idle_ttl_ms: 600_000, min_residency_ms: 120_000, eviction_interval_ms: 30_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {0:?} is not configured on this worker")]
    Unknown(String),
    #[error("model {model:?} failed to load: {source}")]
    Load { model: String, source: HostError },
    #[error("cannot load {model:?}: all {resident} resident models are in use (model_cache.max_resident)")]
    Full { model: String, resident: usize },
}

#[derive(Debug)]
struct Resident {
    host: Arc<EngineHost>,
    loaded_at: Instant,
    last_used: Instant,
    load_time: Duration,
}

impl Resident {
    /// A session holds it (the registry's own reference is one).
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.host) > 1 || self.host.active_jobs() > 0
    }
}

/// What ListModels reports about a resident model.
#[derive(Debug, Clone)]
pub struct ResidentInfo {
    pub descriptor: ModelDescriptor,
    pub load_time: Duration,
    pub in_use: bool,
}

#[derive(Debug)]
pub struct Models {
    configs: Vec<EngineConfig>,
    cache: ModelCache,
    /// Never evicted.
    pinned: String,
    resident: Mutex<BTreeMap<String, Resident>>,
    /// Serialises loads (one at a time, as a GPU or a small CPU wants), and
    /// makes a second request for a model wait for the first load of it.
    load_lock: tokio::sync::Mutex<()>,
}

impl Models {
    pub fn new(configs: Vec<EngineConfig>, cache: ModelCache, pinned: String) -> Self {
        Self { configs, cache, pinned, resident: Mutex::default(), load_lock: tokio::sync::Mutex::new(()) }
    }

    pub fn configs(&self) -> &[EngineConfig] {
        &self.configs
    }

    fn config(&self, model_id: &str) -> Result<&EngineConfig, ModelError> {
        self.configs.iter().find(|c| c.model_id() == model_id).ok_or_else(|| ModelError::Unknown(model_id.into()))
    }

    /// A resident model, marked as just used.
    pub fn get_loaded(&self, model_id: &str) -> Option<Arc<EngineHost>> {
        let mut resident = self.resident.lock().expect("models lock");
        let r = resident.get_mut(model_id)?;
        r.last_used = Instant::now();
        Some(r.host.clone())
    }

    pub fn resident(&self) -> BTreeMap<String, ResidentInfo> {
        let resident = self.resident.lock().expect("models lock");
        resident
            .iter()
            .map(|(id, r)| {
                let info = ResidentInfo {
                    descriptor: r.host.descriptor().clone(),
                    load_time: r.load_time,
                    in_use: r.in_use(),
                };
                (id.clone(), info)
            })
            .collect()
    }

    /// Measured real-time factor over the resident models (0 until measured).
    pub fn rtf(&self) -> f64 {
        let resident = self.resident.lock().expect("models lock");
        resident.values().map(|r| r.host.rtf()).fold(0.0, f64::max)
    }

    /// Sessions the resident batched models can still take, summed; `None`
    /// when none of them has a fixed number.
    pub fn free_slots(&self) -> Option<usize> {
        let resident = self.resident.lock().expect("models lock");
        resident.values().filter_map(|r| r.host.free_slots()).reduce(|a, b| a + b)
    }

    pub fn active_jobs(&self) -> usize {
        self.resident.lock().expect("models lock").values().map(|r| r.host.active_jobs()).sum()
    }

    /// Returns the model, loading it first if needed; the duration is zero
    /// when it was already resident.
    pub async fn load(&self, model_id: &str) -> Result<(Arc<EngineHost>, Duration), ModelError> {
        let config = self.config(model_id)?.clone();
        if let Some(host) = self.get_loaded(model_id) {
            return Ok((host, Duration::ZERO));
        }
        let _guard = self.load_lock.lock().await;
        if let Some(host) = self.get_loaded(model_id) {
            return Ok((host, Duration::ZERO)); // loaded while we waited
        }
        self.make_room(model_id)?;
        let (host, took) = self.build(config).await?;
        self.insert(model_id, host.clone(), took);
        Ok((host, took))
    }

    /// Replaces a model with a freshly built instance (RELOAD).
    pub async fn reload(&self, model_id: &str) -> Result<(Arc<EngineHost>, Duration), ModelError> {
        let config = self.config(model_id)?.clone();
        let _guard = self.load_lock.lock().await;
        let (host, took) = self.build(config).await?;
        self.insert(model_id, host.clone(), took);
        Ok((host, took))
    }

    /// Drops the registry's reference; false if it was not resident.
    pub fn unload(&self, model_id: &str) -> Result<bool, ModelError> {
        self.config(model_id)?;
        Ok(self.resident.lock().expect("models lock").remove(model_id).is_some())
    }

    /// Unloads idle models past their TTL; returns their ids.
    pub fn evict_expired(&self) -> Vec<String> {
        let ttl = Duration::from_millis(self.cache.idle_ttl_ms);
        let min = Duration::from_millis(self.cache.min_residency_ms);
        let mut resident = self.resident.lock().expect("models lock");
        let expired: Vec<String> = resident
            .iter()
            .filter(|(id, r)| {
                **id != self.pinned && !r.in_use() && r.last_used.elapsed() > ttl && r.loaded_at.elapsed() > min
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            resident.remove(id);
            tracing::info!(model = %id, "model unloaded: idle past its TTL");
        }
        expired
    }

    fn insert(&self, model_id: &str, host: Arc<EngineHost>, load_time: Duration) {
        let now = Instant::now();
        let r = Resident { host, loaded_at: now, last_used: now, load_time };
        self.resident.lock().expect("models lock").insert(model_id.to_string(), r);
    }

    /// Evicts the least recently used idle model if the cap is reached.
    fn make_room(&self, model_id: &str) -> Result<(), ModelError> {
        let mut resident = self.resident.lock().expect("models lock");
        if resident.len() < self.cache.max_resident.max(1) {
            return Ok(());
        }
        let victim = resident
            .iter()
            .filter(|(id, r)| **id != self.pinned && !r.in_use())
            .min_by_key(|(_, r)| r.last_used)
            .map(|(id, _)| id.clone());
        match victim {
            Some(id) => {
                resident.remove(&id);
                tracing::info!(model = %id, to_make_room_for = model_id, "model evicted (least recently used)");
                Ok(())
            }
            None => Err(ModelError::Full { model: model_id.to_string(), resident: resident.len() }),
        }
    }

    async fn build(&self, config: EngineConfig) -> Result<(Arc<EngineHost>, Duration), ModelError> {
        let model = config.model_id().to_string();
        let started = Instant::now();
        // Building warms the engine: seconds of blocking work for real models.
        let result = tokio::task::spawn_blocking(move || config.start_host())
            .await
            .map_err(|e| ModelError::Load { model: model.clone(), source: HostError::LaneGone(e.to_string()) })?;
        let host = result.map_err(|source| ModelError::Load { model: model.clone(), source })?;
        let took = started.elapsed();
        tracing::info!(model = %model, load_ms = took.as_millis() as u64, "model loaded");
        Ok((Arc::new(host), took.max(Duration::from_micros(1))))
    }
}
