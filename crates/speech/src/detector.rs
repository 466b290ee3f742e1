//! Speech segmentation from per-window speech probabilities.
//!
//! Quiet → (enough windows at or above the start threshold) → Speaking →
//! (enough windows below the stop threshold) → Quiet. Between the two
//! thresholds a window keeps the current state (hysteresis). The audio of a
//! segment starts `preroll_ms` before its first speech window, so ASR hears
//! the onset the decision needed time to confirm. While the bot is speaking
//! the start rule is stricter (its own voice may leak into the microphone).
//!
//! Time is counted in windows of the stream (32 ms each), so the rules are
//! tested with probabilities alone.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{WINDOW_MS, WINDOW_SAMPLES};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VadConfig {
    /// A window at or above this speech probability counts as speech.
    pub start_threshold: f32,
    /// A window below this counts as silence; between the two, the state holds.
    pub stop_threshold: f32,
    /// Speech must last this long before it is reported (clicks and short
    /// noises are not).
    pub min_speech_ms: u32,
    /// Silence this long ends a segment (the end of the user's turn).
    pub min_silence_ms: u32,
    /// Audio kept from before the first speech window.
    pub preroll_ms: u32,
    /// Start threshold while the bot is speaking.
    pub start_threshold_while_speaking: f32,
    /// Minimum speech while the bot is speaking.
    pub min_speech_ms_while_speaking: u32,
    /// A segment is cut here even if the speech goes on.
    pub max_speech_ms: u32,
    /// After this much silence inside a segment the detector reports a
    /// [`VadEvent::Pause`] with the audio so far, so recognition can start
    /// before the end-of-turn silence has passed (0: never). Should be well
    /// below `min_silence_ms`.
    pub pause_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            start_threshold: 0.5,
            stop_threshold: 0.35,
            min_speech_ms: 96,
            // `just bench-duplex`: 288 ms is the shortest silence that cut
            // none of its multi-clause turns in two; one window of margin.
            min_silence_ms: 320,
            preroll_ms: 256,
            // Barge-in within 150 ms of the onset needs the decision by ~100 ms;
            // echo is left to the client's echo cancellation and the threshold.
            start_threshold_while_speaking: 0.7,
            min_speech_ms_while_speaking: 96,
            max_speech_ms: 30_000,
            // `just bench-duplex`: recognition (~260 ms) started one window
            // into the silence is done about when the turn ends.
            pause_ms: 32,
        }
    }
}

impl VadConfig {
    pub fn validate(&self) -> Result<(), String> {
        let probability = |v: f32| (0.0..=1.0).contains(&v);
        if !probability(self.start_threshold)
            || !probability(self.stop_threshold)
            || !probability(self.start_threshold_while_speaking)
        {
            return Err("vad thresholds must be within 0..=1".into());
        }
        if self.stop_threshold > self.start_threshold {
            return Err("vad.stop_threshold must not exceed vad.start_threshold".into());
        }
        if self.min_silence_ms == 0 || self.max_speech_ms < self.min_speech_ms.max(self.min_speech_ms_while_speaking) {
            return Err("vad.min_silence_ms must be > 0 and vad.max_speech_ms above the minimum speech".into());
        }
        if self.pause_ms >= self.min_silence_ms {
            return Err("vad.pause_ms must be below vad.min_silence_ms (0 turns it off)".into());
        }
        Ok(())
    }
}

/// What the detector reports.
#[derive(Debug, Clone, PartialEq)]
pub enum VadEvent {
    /// Speech confirmed. `onset_ms`: stream time its first window began;
    /// `decided_ms`: stream time of the window that confirmed it.
    SpeechStart { onset_ms: u64, decided_ms: u64 },
    /// The segment is over: its audio at 16 kHz from the pre-roll on, and how
    /// long the speech itself lasted (first speech window to last).
    SpeechEnd { audio: Vec<f32>, speech_ms: u64, ended_ms: u64 },
    /// The speech paused (`pause_ms` of silence) and may be over: the
    /// segment's audio so far. A `SpeechEnd` with the same `ended_ms`
    /// confirms it; `Resumed` withdraws it.
    Pause { audio: Vec<f32>, ended_ms: u64 },
    /// Speech came back after a `Pause`: the segment goes on.
    Resumed,
}

#[derive(Debug)]
enum State {
    Quiet {
        /// Consecutive speech windows so far.
        run: u32,
    },
    Speaking {
        onset_ms: u64,
        /// Stream time just after the last speech window.
        last_speech_ms: u64,
        silence_run: u32,
        /// A `Pause` was reported for the current silence.
        paused: bool,
    },
}

#[derive(Debug)]
pub struct Detector {
    config: VadConfig,
    state: State,
    /// Recent windows while quiet: pre-roll plus the run being confirmed.
    recent: VecDeque<Vec<f32>>,
    segment: Vec<f32>,
    /// Windows seen so far.
    windows: u64,
}

fn windows_for(ms: u32) -> u32 {
    ms.div_ceil(WINDOW_MS).max(1)
}

impl Detector {
    pub fn new(config: VadConfig) -> Self {
        Self { config, state: State::Quiet { run: 0 }, recent: VecDeque::new(), segment: Vec::new(), windows: 0 }
    }

    pub fn is_speaking(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// Feeds one window and its speech probability; `bot_speaking` selects
    /// the stricter start rule.
    pub fn push(&mut self, window: &[f32], probability: f32, bot_speaking: bool) -> Option<VadEvent> {
        debug_assert_eq!(window.len(), WINDOW_SAMPLES);
        self.windows += 1;
        let end_ms = self.windows * WINDOW_MS as u64;
        let c = &self.config;
        match &mut self.state {
            State::Quiet { run } => {
                let (threshold, min_speech) = if bot_speaking {
                    (c.start_threshold_while_speaking, c.min_speech_ms_while_speaking)
                } else {
                    (c.start_threshold, c.min_speech_ms)
                };
                *run = if probability >= threshold { *run + 1 } else { 0 };
                self.recent.push_back(window.to_vec());
                let keep = (windows_for(c.preroll_ms) + windows_for(min_speech.max(c.min_speech_ms))) as usize;
                while self.recent.len() > keep {
                    self.recent.pop_front();
                }
                if *run >= windows_for(min_speech) {
                    let onset_ms = end_ms - *run as u64 * WINDOW_MS as u64;
                    // Pre-roll: the windows before the run, at most preroll_ms of them.
                    let before = self.recent.len() - *run as usize;
                    let skip = before.saturating_sub(windows_for(c.preroll_ms) as usize);
                    self.segment = self.recent.drain(..).skip(skip).flatten().collect();
                    self.state = State::Speaking { onset_ms, last_speech_ms: end_ms, silence_run: 0, paused: false };
                    return Some(VadEvent::SpeechStart { onset_ms, decided_ms: end_ms });
                }
                None
            }
            State::Speaking { onset_ms, last_speech_ms, silence_run, paused } => {
                self.segment.extend_from_slice(window);
                if probability < c.stop_threshold {
                    *silence_run += 1;
                } else {
                    *silence_run = 0;
                    *last_speech_ms = end_ms;
                    if std::mem::take(paused) {
                        return Some(VadEvent::Resumed);
                    }
                }
                let silence_done = *silence_run >= windows_for(c.min_silence_ms);
                let too_long = end_ms - *onset_ms >= c.max_speech_ms as u64;
                if !(silence_done || too_long) {
                    if c.pause_ms > 0 && !*paused && *silence_run == windows_for(c.pause_ms) {
                        *paused = true;
                        let ended_ms = *last_speech_ms;
                        let audio = trimmed(&self.segment, end_ms - ended_ms, c.preroll_ms).to_vec();
                        return Some(VadEvent::Pause { audio, ended_ms });
                    }
                    return None;
                }
                let speech_ms = *last_speech_ms - *onset_ms;
                let ended_ms = *last_speech_ms;
                let keep = trimmed(&self.segment, end_ms - ended_ms, c.preroll_ms).len();
                self.segment.truncate(keep);
                let audio = std::mem::take(&mut self.segment);
                self.state = State::Quiet { run: 0 };
                Some(VadEvent::SpeechEnd { audio, speech_ms, ended_ms })
            }
        }
    }
}

/// `segment` without the part of its `trailing_ms` of silence beyond a
/// pre-roll's worth.
fn trimmed(segment: &[f32], trailing_ms: u64, preroll_ms: u32) -> &[f32] {
    let trailing = trailing_ms as usize * WINDOW_SAMPLES / WINDOW_MS as usize;
    let keep_trailing = windows_for(preroll_ms) as usize * WINDOW_SAMPLES;
    let cut = trailing.saturating_sub(keep_trailing).min(segment.len());
    &segment[..segment.len() - cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds probabilities; returns (window index, event) for each event.
    fn run(d: &mut Detector, probs: &[f32], bot_speaking: bool) -> Vec<(usize, VadEvent)> {
        let mut out = Vec::new();
        for (i, p) in probs.iter().enumerate() {
            let window = vec![*p; WINDOW_SAMPLES]; // the sample value marks the window
            if let Some(e) = d.push(&window, *p, bot_speaking) {
                out.push((i, e));
            }
        }
        out
    }

    fn cfg() -> VadConfig {
        VadConfig {
            min_speech_ms: 96,
            min_silence_ms: 320,
            preroll_ms: 64,
            start_threshold_while_speaking: 0.7,
            min_speech_ms_while_speaking: 160,
            pause_ms: 0,
            ..VadConfig::default()
        }
    }

    #[test]
    fn speech_starts_after_the_minimum_and_ends_after_the_silence() {
        let mut d = Detector::new(cfg());
        // 5 quiet windows, 10 of speech, 12 of silence.
        let mut probs = vec![0.05; 5];
        probs.extend([0.9; 10]);
        probs.extend([0.1; 12]);
        let events = run(&mut d, &probs, false);
        assert_eq!(events.len(), 2, "{events:?}");
        // Started at window 5 (160 ms), confirmed after 3 windows.
        assert_eq!(events[0], (7, VadEvent::SpeechStart { onset_ms: 160, decided_ms: 256 }));
        let (at, VadEvent::SpeechEnd { audio, speech_ms, ended_ms }) = &events[1] else { panic!() };
        assert_eq!((*speech_ms, *ended_ms), (320, 480));
        // Ended after 10 silent windows (320 ms).
        assert_eq!(*at, 24);
        // Audio: 2 pre-roll windows, 10 speech windows, 2 of the trailing silence kept.
        assert_eq!(audio.len(), 14 * WINDOW_SAMPLES);
        assert_eq!(audio[0], 0.05);
        assert_eq!(audio[2 * WINDOW_SAMPLES], 0.9);
    }

    #[test]
    fn short_bursts_and_silence_never_start_speech() {
        let mut d = Detector::new(cfg());
        let mut probs = vec![0.0; 50];
        probs.extend([0.9, 0.9, 0.1, 0.9, 0.2, 0.9, 0.9, 0.3]);
        assert!(run(&mut d, &probs, false).is_empty());
    }

    #[test]
    fn hysteresis_holds_speech_between_the_thresholds() {
        let mut d = Detector::new(cfg());
        let mut probs = vec![0.9; 4];
        probs.extend([0.4; 30]); // below start, above stop: still speech
        assert_eq!(run(&mut d, &probs, false).len(), 1, "started, not ended");
        assert!(d.is_speaking());
    }

    #[test]
    fn while_the_bot_speaks_the_start_is_stricter() {
        let mut d = Detector::new(cfg());
        let probs = [0.6; 20];
        assert!(run(&mut d, &probs, true).is_empty(), "0.6 is echo-level while speaking");
        let probs = [0.8; 4];
        assert!(run(&mut d, &probs, true).is_empty(), "128 ms < 160 ms while speaking");
        let events = run(&mut d, &[0.8; 2], true);
        assert!(matches!(events[..], [(_, VadEvent::SpeechStart { .. })]));
    }

    #[test]
    fn long_speech_is_cut_at_the_maximum() {
        let mut d = Detector::new(VadConfig { max_speech_ms: 640, ..cfg() });
        let events = run(&mut d, &[0.9; 40], false);
        assert!(matches!(events[1], (_, VadEvent::SpeechEnd { .. })), "{events:?}");
        assert!(matches!(events[2], (_, VadEvent::SpeechStart { .. })), "speech goes on: a new segment");
    }

    #[test]
    fn a_pause_is_reported_then_confirmed_or_withdrawn() {
        let mut d = Detector::new(VadConfig { pause_ms: 64, ..cfg() });
        // Speech, a 96 ms gap, speech again, then the end.
        let mut probs = vec![0.9; 5];
        probs.extend([0.1; 3]);
        probs.extend([0.9; 5]);
        probs.extend([0.1; 12]);
        let events = run(&mut d, &probs, false);
        let kinds: Vec<(usize, &str)> = events
            .iter()
            .map(|(i, e)| {
                let kind = match e {
                    VadEvent::SpeechStart { .. } => "start",
                    VadEvent::Pause { .. } => "pause",
                    VadEvent::Resumed => "resumed",
                    VadEvent::SpeechEnd { .. } => "end",
                };
                (*i, kind)
            })
            .collect();
        assert_eq!(kinds, [(2, "start"), (6, "pause"), (8, "resumed"), (14, "pause"), (22, "end")]);
        let (VadEvent::Pause { audio: guess, ended_ms: a }, VadEvent::SpeechEnd { audio, ended_ms: b, .. }) =
            (&events[3].1, &events[4].1)
        else {
            panic!()
        };
        assert_eq!(a, b, "the end confirms the second pause");
        // The pause's audio is the segment so far: all the speech, two silent windows.
        assert_eq!(guess.len(), 15 * WINDOW_SAMPLES);
        assert_eq!(&audio[..guess.len()], &guess[..]);
    }

    #[test]
    fn the_config_is_checked() {
        assert!(VadConfig::default().validate().is_ok());
        assert!(VadConfig { stop_threshold: 0.9, ..VadConfig::default() }.validate().is_err());
        assert!(VadConfig { start_threshold: 1.5, ..VadConfig::default() }.validate().is_err());
        assert!(VadConfig { pause_ms: 320, ..VadConfig::default() }.validate().is_err());
    }
}
