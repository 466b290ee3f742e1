//! Session affinity: `routing:affinity:<session_id>` names the worker a
//! session last streamed from, so a client that reconnects with its session
//! id lands there again (its model is warm, its voice is the same build).
//!
//! Routing never waits long on it: a lookup is bounded by a short timeout and
//! an unreachable Redis reads as "no affinity"; the connection is retried
//! with backoff in the background of later calls.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

/// Key prefix of affinity records.
pub const AFFINITY_KEY_PREFIX: &str = "routing:affinity:";
/// Longest a lookup or update may take before routing goes on without it.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// First and longest wait between connection attempts while Redis is down.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(8);

pub fn affinity_key(session_id: &str) -> String {
    format!("{AFFINITY_KEY_PREFIX}{session_id}")
}

enum Conn {
    Up(ConnectionManager),
    /// Not connected; the next attempt is allowed at `retry_at`.
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
}

/// Reads and writes affinity records; cheap to share behind an `Arc`.
pub struct Affinity {
    client: redis::Client,
    ttl: Duration,
    conn: tokio::sync::Mutex<Conn>,
    /// Logged once per outage.
    warned: Mutex<bool>,
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity").field("ttl", &self.ttl).finish()
    }
}

impl Affinity {
    /// `ttl`: how long after a session's last stream its record is kept.
    pub fn new(redis_url: &str, ttl: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(redis_url)?,
            ttl,
            conn: tokio::sync::Mutex::new(Conn::Down { retry_at: Instant::now(), backoff: RETRY_MIN }),
            warned: Mutex::new(false),
        })
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let mut conn = self.conn.lock().await;
        match &*conn {
            Conn::Up(c) => return Some(c.clone()),
            Conn::Down { retry_at, .. } if Instant::now() < *retry_at => return None,
            Conn::Down { .. } => {}
        }
        match tokio::time::timeout(OP_TIMEOUT, ConnectionManager::new(self.client.clone())).await {
            Ok(Ok(c)) => {
                *conn = Conn::Up(c.clone());
                Some(c)
            }
            failed => {
                let backoff = match &*conn {
                    Conn::Down { backoff, .. } => *backoff,
                    Conn::Up(_) => RETRY_MIN,
                };
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                self.warn(&why);
                *conn = Conn::Down { retry_at: Instant::now() + backoff, backoff: (backoff * 2).min(RETRY_MAX) };
                None
            }
        }
    }

    fn warn(&self, why: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if !*warned {
            tracing::warn!(why, "affinity records unavailable; routing without them");
            *warned = true;
        }
    }

    fn recovered(&self) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if *warned {
            tracing::info!("affinity records reachable again");
            *warned = false;
        }
    }

    /// The worker `session_id` last used, if recorded and Redis answers in time.
    pub async fn get(&self, session_id: &str) -> Option<String> {
        let mut conn = self.connection().await?;
        let mut get = redis::cmd("GET");
        get.arg(affinity_key(session_id));
        match tokio::time::timeout(OP_TIMEOUT, get.query_async::<Option<String>>(&mut conn)).await {
            Ok(Ok(name)) => {
                self.recovered();
                name
            }
            Ok(Err(e)) => {
                self.warn(&e.to_string());
                None
            }
            Err(_) => {
                self.warn("lookup timed out");
                None
            }
        }
    }

    /// Records that `session_id` streams from `worker` (refreshing the TTL).
    pub async fn set(&self, session_id: &str, worker: &str) {
        let Some(mut conn) = self.connection().await else { return };
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut set = redis::cmd("SET");
        set.arg(affinity_key(session_id)).arg(worker).arg("PX").arg(ttl_ms);
        match tokio::time::timeout(OP_TIMEOUT, set.exec_async(&mut conn)).await {
            Ok(Ok(())) => self.recovered(),
            Ok(Err(e)) => self.warn(&e.to_string()),
            Err(_) => self.warn("update timed out"),
        }
    }
}
