//! The orchestrator's view of the registry: a periodic `SCAN worker:*` +
//! `MGET`, kept in memory so selection never waits on Redis. With Redis down
//! the last view stays in use and the watcher retries every interval.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::record::{WORKER_KEY_PREFIX, WorkerRecord};

const REDIS_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest view; cheap to clone and read.
#[derive(Debug, Clone, Default)]
pub struct View(Arc<RwLock<Vec<WorkerRecord>>>);

impl View {
    pub fn workers(&self) -> Vec<WorkerRecord> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, workers: Vec<WorkerRecord>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = workers;
    }
}

/// Starts watching; the returned view fills after the first scan.
pub fn watch(redis_url: &str, every: Duration, stop: CancellationToken) -> Result<View, redis::RedisError> {
    let client = redis::Client::open(redis_url)?;
    let view = View::default();
    tokio::spawn(run(client, every, view.clone(), stop));
    Ok(view)
}

async fn scan(conn: &mut ConnectionManager) -> redis::RedisResult<Vec<WorkerRecord>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{WORKER_KEY_PREFIX}*"))
            .arg("COUNT")
            .arg(200)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
    let mut workers: Vec<WorkerRecord> = values
        .into_iter()
        .flatten()
        .filter_map(|json| match serde_json::from_str(&json) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable worker record");
                None
            }
        })
        .collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(workers)
}

async fn run(client: redis::Client, every: Duration, view: View, stop: CancellationToken) {
    let mut conn: Option<ConnectionManager> = None;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_logged = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if conn.is_none() {
            conn = tokio::time::timeout(REDIS_OP_TIMEOUT, ConnectionManager::new(client.clone()))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let result = match conn.as_mut() {
            Some(c) => tokio::time::timeout(REDIS_OP_TIMEOUT, scan(c)).await.ok(),
            None => None,
        };
        match result {
            Some(Ok(workers)) => {
                if down_logged {
                    tracing::info!(workers = workers.len(), "registry reachable again");
                    down_logged = false;
                }
                view.set(workers);
            }
            failed => {
                let redis_error = matches!(failed, Some(Err(_)));
                if !down_logged {
                    let why = match failed {
                        Some(Err(e)) => e.to_string(),
                        _ => "unreachable or slow".into(),
                    };
                    tracing::warn!(why, "registry scan failed; routing with the last view");
                    down_logged = true;
                }
                // A timeout may have left the connection mid-reply: start over.
                if !redis_error {
                    conn = None;
                }
            }
        }
    }
}
