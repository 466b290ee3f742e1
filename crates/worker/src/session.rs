//! Per-session state: the model and parameters chosen at StartSession, and the
//! controls (pause, stop watermark, close) that act on this session only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duplex_tts::{EngineHost, JobHandle, SynthesisParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub model: Arc<EngineHost>,
    pub params: SynthesisParams,
    paused: watch::Sender<bool>,
    /// Utterances with an id at or below this are stopped.
    stopped_through: watch::Sender<u64>,
    /// Highest utterance id received on this session.
    last_seen: AtomicU64,
    /// Jobs still synthesizing, so pause and stop reach the engine too.
    live: Mutex<BTreeMap<u64, JobHandle>>,
    streaming: AtomicBool,
    /// Last call or stream end, for expiring abandoned sessions.
    last_active: Mutex<Instant>,
    /// Cancelled by EndSession, replacement or shutdown.
    pub closed: CancellationToken,
}

impl Session {
    pub fn new(id: String, model: Arc<EngineHost>, params: SynthesisParams, parent: &CancellationToken) -> Self {
        Self {
            id,
            model,
            params,
            paused: watch::Sender::new(false),
            stopped_through: watch::Sender::new(0),
            last_seen: AtomicU64::new(0),
            live: Mutex::default(),
            streaming: AtomicBool::new(false),
            last_active: Mutex::new(Instant::now()),
            closed: parent.child_token(),
        }
    }

    pub fn subscribe_paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    pub fn subscribe_stops(&self) -> watch::Receiver<u64> {
        self.stopped_through.subscribe()
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn is_stopped(&self, utterance_id: u64) -> bool {
        utterance_id <= *self.stopped_through.borrow()
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    pub fn note_seen(&self, utterance_id: u64) {
        self.last_seen.fetch_max(utterance_id, Ordering::Relaxed);
    }

    pub fn pause(&self) {
        self.set_paused(true);
    }

    pub fn resume(&self) {
        self.set_paused(false);
    }

    fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
        for job in self.live.lock().expect("session lock").values() {
            job.set_paused(paused);
        }
    }

    /// Stops utterances up to `through` (0 = all received so far) and clears
    /// a pause, so the next text plays. Returns the new watermark.
    pub fn stop(&self, through: u64) -> u64 {
        let mark = if through == 0 { self.last_seen() } else { through };
        self.stopped_through.send_modify(|w| *w = (*w).max(mark));
        let mark = *self.stopped_through.borrow();
        let mut live = self.live.lock().expect("session lock");
        let keep = live.split_off(&(mark + 1));
        for job in std::mem::replace(&mut *live, keep).into_values() {
            job.cancel();
        }
        drop(live);
        self.set_paused(false);
        mark
    }

    pub fn register(&self, utterance_id: u64, job: JobHandle) {
        if self.is_paused() {
            job.set_paused(true);
        }
        self.live.lock().expect("session lock").insert(utterance_id, job);
    }

    pub fn unregister(&self, utterance_id: u64) {
        self.live.lock().expect("session lock").remove(&utterance_id);
    }

    pub fn touch(&self) {
        *self.last_active.lock().expect("session lock") = Instant::now();
    }

    /// Idle: no stream open and no call for `timeout`.
    fn is_abandoned(&self, timeout: Duration) -> bool {
        !self.streaming.load(Ordering::Acquire) && self.last_active.lock().expect("session lock").elapsed() > timeout
    }

    /// Claims the session's single Synthesize stream; released when the guard drops.
    pub fn claim_stream(self: &Arc<Self>) -> Option<StreamGuard> {
        (!self.streaming.swap(true, Ordering::AcqRel)).then(|| StreamGuard(self.clone()))
    }
}

/// Held by the stream that owns a session's output.
#[derive(Debug)]
pub struct StreamGuard(Arc<Session>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.streaming.store(false, Ordering::Release);
    }
}

/// All open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map.lock().expect("sessions lock").get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts, closing any session with the same id (a client restarting it).
    /// Fails with the current count when `max` sessions are open.
    pub fn insert(&self, session: Arc<Session>, max: usize) -> Result<(), usize> {
        let mut map = self.map.lock().expect("sessions lock");
        if !map.contains_key(&session.id) && map.len() >= max {
            return Err(map.len());
        }
        if let Some(old) = map.insert(session.id.clone(), session) {
            tracing::warn!(session_id = %old.id, "session restarted; closing the previous one");
            old.closed.cancel();
        }
        Ok(())
    }

    /// Ends sessions idle longer than `timeout`; returns how many.
    pub fn expire(&self, timeout: Duration) -> usize {
        let mut map = self.map.lock().expect("sessions lock");
        let before = map.len();
        map.retain(|id, s| {
            let keep = !s.is_abandoned(timeout);
            if !keep {
                tracing::info!(session_id = %id, "session expired: no stream or call for {timeout:?}");
                s.closed.cancel();
            }
            keep
        });
        before - map.len()
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        let removed = self.map.lock().expect("sessions lock").remove(id);
        if let Some(s) = &removed {
            s.closed.cancel();
        }
        removed
    }
}
