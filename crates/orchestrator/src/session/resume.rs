//! Failover: when a session's worker dies or stops answering, what it had
//! not yet said moves to another worker, from the start of the sentence it
//! was speaking (workers stamp every frame with that sentence's text offset).
//! Sentences the client already received whole are not said again.

use duplex_proto::tts::TextChunk;

use super::{Flow, Session};
use crate::link::Link;
use crate::protocol::{EndReason, ErrorCode};

impl Session {
    /// Opens a stream on a worker chosen by the pool with `first`, then `backlog`.
    pub(super) fn open_link(&mut self, first: TextChunk, backlog: Vec<TextChunk>) {
        let (pool, id, route) = (self.state.pool.clone(), self.id.clone(), self.route.clone());
        let open = Box::pin(async move { pool.open(&id, first, &route).await });
        self.link = Link::Opening { open, backlog };
    }

    /// The worker stream broke or stalled: the worker is skipped by routing
    /// until it heartbeats again, its session there is ended (a stalled worker
    /// may still hold it), and the session goes on elsewhere.
    pub(super) fn worker_failed(&mut self, why: &str) -> Flow {
        let addr = match std::mem::replace(&mut self.link, Link::Down) {
            Link::Up(stream) => {
                self.state.pool.mark_down(&stream.worker);
                let addr = stream.worker.addr.clone();
                self.link = Link::Up(stream);
                self.end_worker_session();
                addr
            }
            _ => self.state.pool.describe(),
        };
        tracing::warn!(worker = %addr, why, "worker stream failed");
        self.fail_over(&format!("TTS worker {addr} unavailable: {why}"))
    }

    /// Sends every utterance the worker had not finished to a new worker: the
    /// text from the sentence its last frame spoke (audio of that sentence
    /// still queued here is dropped, since it will be said again whole).
    /// An utterance that already moved `routing.max_failovers` times, or one
    /// on a static worker (there is no other), ends with WORKER_UNAVAILABLE.
    pub(super) fn fail_over(&mut self, why: &str) -> Flow {
        let max = self.state.config.routing.max_failovers;
        let owed: Vec<u64> = self.active.iter().filter(|(_, u)| !u.synthesized).map(|(id, _)| *id).collect();
        if owed.is_empty() {
            return Flow::Continue; // between turns: the next text opens a new stream
        }
        if !self.state.pool.fails_over() || owed.iter().any(|id| self.active[id].failovers >= max) {
            return self.fail_owed(ErrorCode::WorkerUnavailable, why);
        }
        let mut chunks = Vec::with_capacity(owed.len());
        for id in owed {
            let u = self.active.get_mut(&id).expect("owed utterances are active");
            u.failovers += 1;
            let dropped = self.playout.discard_from(id, u.resume_at);
            u.base = u.resume_at;
            let text: String = u.text.chars().skip(u.base).collect();
            u.span.in_scope(|| {
                tracing::info!(from_char = u.base, dropped_frames = dropped, "utterance resumes elsewhere")
            });
            self.chunk_sequence += 1;
            chunks.push(TextChunk {
                session_id: self.id.clone(),
                text,
                is_final: u.text_final,
                sequence_number: self.chunk_sequence,
                utterance_id: id,
                traceparent: duplex_telemetry::propagation::traceparent(&u.span),
            });
        }
        self.state.metrics.failovers.inc();
        let first = chunks.remove(0);
        self.open_link(first, chunks);
        Flow::Continue
    }

    /// Ends every utterance the worker had not finished with `error` and
    /// tells the client why; audio already received still plays.
    pub(super) fn fail_owed(&mut self, code: ErrorCode, message: &str) -> Flow {
        let owed: Vec<u64> = self.active.iter().filter(|(_, u)| !u.synthesized).map(|(id, _)| *id).collect();
        if self.open_utterance.is_some_and(|id| owed.contains(&id)) {
            self.open_utterance = None;
        }
        for id in owed {
            self.playout.discard_from(id, 0);
            let u = self.active.remove(&id).expect("owed utterances are active");
            if let Flow::End(r) = self.end_utterance(id, u, EndReason::Error) {
                return Flow::End(r);
            }
        }
        self.error(code, message)
    }
}
