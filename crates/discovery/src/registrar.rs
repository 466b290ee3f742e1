//! Worker registration: `SET worker:<name> <json> PX <ttl>` after warm-up and
//! on every heartbeat, `DEL` on shutdown. Redis being down never stops the
//! worker: the heartbeat keeps trying and the record reappears when Redis is
//! back; a worker that dies without deregistering disappears with its TTL.

use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::record::{WorkerRecord, worker_key};

/// Longest wait for one Redis operation; a slow Redis must not hold the heartbeat.
const REDIS_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// `registry:` in the worker config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `redis://host:6379`; empty = do not register (static routing).
    pub redis_url: String,
    /// Lifetime of the record without a heartbeat.
    pub ttl_ms: u64,
    pub heartbeat_ms: u64,
    /// The address others dial (`grpc://host:port`); empty = this host's name and port.
    pub advertise_addr: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { redis_url: String::new(), ttl_ms: 30_000, heartbeat_ms: 10_000, advertise_addr: String::new() }
    }
}

impl RegistryConfig {
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registry.redis_url {url:?}: {source}")]
    Url { url: String, source: redis::RedisError },
    #[error("registry: heartbeat_ms ({heartbeat_ms}) must be > 0 and below ttl_ms ({ttl_ms})")]
    Timing { heartbeat_ms: u64, ttl_ms: u64 },
}

/// The running registration. Dropping it stops the heartbeat without deleting
/// the record (it then expires with its TTL); call [`RegistrarHandle::deregister`].
#[derive(Debug)]
pub struct RegistrarHandle {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RegistrarHandle {
    /// Deletes the record and stops heartbeats (bounded by the Redis timeout).
    pub async fn deregister(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(REDIS_OP_TIMEOUT * 2, task).await;
        }
    }
}

impl Drop for RegistrarHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts registering `name`; `snapshot` builds the record each heartbeat.
pub fn spawn<F>(config: &RegistryConfig, name: &str, snapshot: F) -> Result<RegistrarHandle, RegistryError>
where
    F: Fn() -> WorkerRecord + Send + 'static,
{
    if config.heartbeat_ms == 0 || config.heartbeat_ms >= config.ttl_ms {
        return Err(RegistryError::Timing { heartbeat_ms: config.heartbeat_ms, ttl_ms: config.ttl_ms });
    }
    let client = redis::Client::open(config.redis_url.as_str())
        .map_err(|source| RegistryError::Url { url: config.redis_url.clone(), source })?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(client, worker_key(name), config.clone(), snapshot, stop.clone()));
    Ok(RegistrarHandle { stop, task: Some(task) })
}

async fn connect(client: &redis::Client) -> Option<ConnectionManager> {
    match tokio::time::timeout(REDIS_OP_TIMEOUT, ConnectionManager::new(client.clone())).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

async fn run<F>(client: redis::Client, key: String, config: RegistryConfig, snapshot: F, stop: CancellationToken)
where
    F: Fn() -> WorkerRecord + Send + 'static,
{
    let mut conn: Option<ConnectionManager> = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(config.heartbeat_ms));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut registered = false;
    let mut down_logged = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if conn.is_none() {
            conn = connect(&client).await;
        }
        let Some(c) = conn.as_mut() else {
            if !down_logged {
                tracing::warn!(key, "Redis unreachable; serving on and retrying every heartbeat");
                down_logged = true;
            }
            continue;
        };
        let json = serde_json::to_string(&snapshot()).expect("records serialize");
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(json).arg("PX").arg(config.ttl_ms);
        match tokio::time::timeout(REDIS_OP_TIMEOUT, set.query_async::<()>(c)).await {
            Ok(Ok(())) => {
                if !registered || down_logged {
                    tracing::info!(key, ttl_ms = config.ttl_ms, "registered in Redis");
                }
                registered = true;
                down_logged = false;
            }
            Ok(Err(e)) => {
                if !down_logged {
                    tracing::warn!(key, error = %e, "heartbeat failed; retrying");
                    down_logged = true;
                }
            }
            Err(_) => {
                if !down_logged {
                    tracing::warn!(key, "heartbeat timed out; reconnecting");
                    down_logged = true;
                }
                conn = None;
            }
        }
    }
    // Deregister so routing stops at once instead of after the TTL.
    if let Some(c) = conn.as_mut() {
        let mut del = redis::cmd("DEL");
        del.arg(&key);
        match tokio::time::timeout(REDIS_OP_TIMEOUT, del.query_async::<()>(c)).await {
            Ok(Ok(())) => tracing::info!(key, "deregistered from Redis"),
            _ => tracing::warn!(key, "could not deregister; the record expires with its TTL"),
        }
    }
}
