//! Real-time playout: a bounded queue of frames and the pacing schedule that
//! releases them against a monotonic clock with a small look-ahead.
//!
//! Pure logic (no I/O, time passed in), so pause, stop and underrun behaviour
//! is unit-tested directly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use duplex_audio::FRAME_DURATION;

use crate::protocol::EndReason;

/// One entry of the playout queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// 20 ms of audio; `text_offset` is where the sentence it speaks begins
    /// in the utterance's text (characters).
    Audio { utterance_id: u64, pcm: Vec<u8>, last: bool, text_offset: usize },
    /// The utterance's end; released as soon as the audio before it is sent.
    End { utterance_id: u64, reason: EndReason, error: Option<String> },
}

impl Entry {
    pub fn utterance_id(&self) -> u64 {
        match self {
            Entry::Audio { utterance_id, .. } | Entry::End { utterance_id, .. } => *utterance_id,
        }
    }
}

#[derive(Debug)]
pub struct Playout {
    queue: VecDeque<Entry>,
    capacity: usize,
    lookahead: u32,
    paused: bool,
    /// Start of the current run of back-to-back audio and frames sent in it.
    anchor: Option<(Instant, u32)>,
}

impl Playout {
    /// `capacity`: audio frames held before the worker stream stops being read.
    /// `lookahead`: frames sent ahead of real time (the client's buffer).
    pub fn new(capacity: usize, lookahead: u32) -> Self {
        Self {
            queue: VecDeque::with_capacity(capacity + 4),
            capacity: capacity.max(1),
            lookahead,
            paused: false,
            anchor: None,
        }
    }

    pub fn has_room(&self) -> bool {
        self.queue.len() < self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn push(&mut self, entry: Entry) {
        self.queue.push_back(entry);
    }

    /// When the head of the queue is due; `None` while paused or empty.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        if self.paused {
            return None;
        }
        match self.queue.front()? {
            Entry::End { .. } => Some(now),
            Entry::Audio { .. } => match self.anchor {
                None => Some(now),
                Some((start, sent)) => {
                    let due = start + FRAME_DURATION * sent.saturating_sub(self.lookahead);
                    // Late by more than a frame: the stream ran dry (underrun) or
                    // a new utterance starts after silence; pace from now again.
                    if now > due + FRAME_DURATION { Some(now) } else { Some(due) }
                }
            },
        }
    }

    /// Takes the head if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        let due = self.next_due(now)?;
        if due > now {
            return None;
        }
        let entry = self.queue.pop_front()?;
        if matches!(entry, Entry::Audio { .. }) {
            self.anchor = match self.anchor {
                Some((start, sent))
                    if now <= start + FRAME_DURATION * sent.saturating_sub(self.lookahead) + FRAME_DURATION =>
                {
                    Some((start, sent + 1))
                }
                _ => Some((now, 1)),
            };
        }
        Some(entry)
    }

    pub fn pause(&mut self) {
        self.paused = true;
        self.anchor = None;
    }

    pub fn resume(&mut self) {
        self.paused = false;
        self.anchor = None;
    }

    /// Drops every queued entry of utterances up to `through`; returns how many audio frames went.
    pub fn discard_through(&mut self, through: u64) -> usize {
        let before = self.queue.iter().filter(|e| matches!(e, Entry::Audio { .. })).count();
        self.queue.retain(|e| e.utterance_id() > through);
        self.anchor = None;
        before - self.queue.iter().filter(|e| matches!(e, Entry::Audio { .. })).count()
    }

    /// Drops the queued audio of `utterance_id` that speaks text from
    /// `text_offset` on (a worker failed there; another says it again).
    /// Returns how many frames went.
    pub fn discard_from(&mut self, utterance_id: u64, text_offset: usize) -> usize {
        let before = self.queue.len();
        self.queue.retain(|e| {
            !matches!(e, Entry::Audio { utterance_id: u, text_offset: at, .. } if *u == utterance_id && *at >= text_offset)
        });
        before - self.queue.len()
    }

    /// Audio buffered ahead of the client, as a duration (for logs and metrics).
    pub fn buffered(&self) -> Duration {
        FRAME_DURATION * self.queue.iter().filter(|e| matches!(e, Entry::Audio { .. })).count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(u: u64) -> Entry {
        at(u, 0)
    }

    fn at(u: u64, text_offset: usize) -> Entry {
        Entry::Audio { utterance_id: u, pcm: vec![0; 4], last: false, text_offset }
    }

    fn drain_at(p: &mut Playout, now: Instant) -> usize {
        std::iter::from_fn(|| p.pop_due(now)).count()
    }

    #[test]
    fn paces_one_frame_per_20ms_after_the_lookahead() {
        let mut p = Playout::new(100, 2);
        for _ in 0..10 {
            p.push(audio(1));
        }
        let t0 = Instant::now();
        // Look-ahead: the first 3 frames (0, 1, 2) are due at once.
        assert_eq!(drain_at(&mut p, t0), 3);
        assert_eq!(p.next_due(t0), Some(t0 + FRAME_DURATION));
        assert_eq!(drain_at(&mut p, t0 + FRAME_DURATION), 1);
        assert_eq!(drain_at(&mut p, t0 + FRAME_DURATION * 3), 2);
        assert_eq!(p.next_due(t0), Some(t0 + FRAME_DURATION * 4));
    }

    #[test]
    fn pause_holds_everything_and_resume_continues_without_loss() {
        let mut p = Playout::new(100, 0);
        for _ in 0..3 {
            p.push(audio(1));
        }
        let t0 = Instant::now();
        assert_eq!(drain_at(&mut p, t0), 1);
        p.pause();
        assert_eq!(p.next_due(t0 + FRAME_DURATION * 10), None);
        assert_eq!(drain_at(&mut p, t0 + FRAME_DURATION * 10), 0);
        p.resume();
        let t1 = t0 + FRAME_DURATION * 20;
        assert_eq!(drain_at(&mut p, t1), 1);
        assert_eq!(drain_at(&mut p, t1 + FRAME_DURATION), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn underrun_re_anchors_instead_of_bursting() {
        let mut p = Playout::new(100, 0);
        let t0 = Instant::now();
        p.push(audio(1));
        assert_eq!(drain_at(&mut p, t0), 1);
        // The worker was late by 200 ms; then three frames arrive together.
        for _ in 0..3 {
            p.push(audio(1));
        }
        let late = t0 + Duration::from_millis(200);
        assert_eq!(drain_at(&mut p, late), 1, "only one frame at once, not a burst");
        assert_eq!(p.next_due(late), Some(late + FRAME_DURATION));
    }

    #[test]
    fn discard_drops_only_stopped_utterances_and_ends_are_immediate() {
        let mut p = Playout::new(100, 0);
        p.push(audio(1));
        p.push(audio(1));
        p.push(audio(2));
        p.push(Entry::End { utterance_id: 2, reason: EndReason::Completed, error: None });
        assert_eq!(p.discard_through(1), 2);
        let t0 = Instant::now();
        assert!(matches!(p.pop_due(t0), Some(Entry::Audio { utterance_id: 2, .. })));
        // The End needs no air time: it is due as soon as the audio before it went.
        assert!(matches!(p.pop_due(t0), Some(Entry::End { utterance_id: 2, .. })));
        assert!(p.is_empty());
    }

    #[test]
    fn discard_from_drops_one_utterances_audio_from_a_sentence_on() {
        let mut p = Playout::new(100, 0);
        for e in [at(1, 0), at(1, 12), at(1, 12), at(2, 0), at(1, 30)] {
            p.push(e);
        }
        assert_eq!(p.discard_from(1, 12), 3);
        let t0 = Instant::now();
        assert_eq!(p.pop_due(t0), Some(at(1, 0)));
        assert_eq!(p.pop_due(t0 + FRAME_DURATION), Some(at(2, 0)));
        assert!(p.is_empty());
    }
}
