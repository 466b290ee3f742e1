//! The mock engine: deterministic, speech-like audio without a model.
//!
//! Each letter or digit becomes a short voiced "syllable" (a tone with a
//! harmonic, a pitch that depends on the character and its place in the word,
//! and a soft attack and release); spaces are short gaps and punctuation longer
//! pauses (only after speech: blanks alone say nothing), so the output has
//! the rhythm of speech. The same text always gives
//! the same samples. `first_audio_latency_ms` and `realtime_factor` make it
//! behave like a slow model when a test or benchmark needs one.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineError, ModelDescriptor, Step, Synthesis, SynthesisParams};

/// Output rate of the mock: the wire rate, so no resampling is involved.
const SAMPLE_RATE_HZ: u32 = duplex_audio::SAMPLE_RATE_HZ;
/// Samples produced per step: one frame, so cancellation is checked every 20 ms of audio.
const STEP_SAMPLES: usize = duplex_audio::FRAME_SAMPLES;
/// Attack and release of each syllable, to avoid clicks.
const EDGE_MS: f32 = 5.0;
/// Peak amplitude (about -8 dBFS).
const AMPLITUDE: f32 = 0.4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    pub model_id: String,
    pub languages: Vec<String>,
    /// Audio per letter at speed 1.0 (about 13 characters per second).
    pub ms_per_char: u32,
    /// Simulated model latency before the first audio of an utterance.
    pub first_audio_latency_ms: u32,
    /// Compute time per second of audio (0 = as fast as possible, 0.1 = ten times real time).
    pub realtime_factor: f32,
    /// Host threads for this model.
    pub threads: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            model_id: "mock".into(),
            languages: vec!["en".into()],
            ms_per_char: 75,
            first_audio_latency_ms: 0,
            realtime_factor: 0.0,
            threads: 1,
        }
    }
}

pub struct MockEngine {
    config: MockConfig,
    descriptor: ModelDescriptor,
}

impl MockEngine {
    pub fn new(config: MockConfig) -> Result<Self, EngineError> {
        if config.ms_per_char == 0 {
            return Err(EngineError::InvalidOption { name: "ms_per_char", reason: "must be > 0".into() });
        }
        if !(config.realtime_factor >= 0.0 && config.realtime_factor.is_finite()) {
            return Err(EngineError::InvalidOption {
                name: "realtime_factor",
                reason: format!("must be a finite number >= 0, got {}", config.realtime_factor),
            });
        }
        let metadata = BTreeMap::from([
            ("ms_per_char".to_string(), config.ms_per_char.to_string()),
            ("first_audio_latency_ms".to_string(), config.first_audio_latency_ms.to_string()),
            ("realtime_factor".to_string(), config.realtime_factor.to_string()),
            ("sample_rate_hz".to_string(), SAMPLE_RATE_HZ.to_string()),
        ]);
        let descriptor = ModelDescriptor {
            model_id: config.model_id.clone(),
            family: "mock".into(),
            languages: config.languages.clone(),
            sample_rate_hz: SAMPLE_RATE_HZ,
            metadata,
        };
        Ok(Self { config, descriptor })
    }
}

impl Engine for MockEngine {
    fn descriptor(&self) -> &ModelDescriptor {
        &self.descriptor
    }

    fn start(&mut self, params: &SynthesisParams) -> Result<Box<dyn Synthesis>, EngineError> {
        if !(params.speed > 0.0 && params.speed.is_finite()) {
            return Err(EngineError::InvalidOption {
                name: "speed",
                reason: format!("must be > 0, got {}", params.speed),
            });
        }
        if let Some(v) = params.voice.as_ref().filter(|v| *v != "default") {
            return Err(EngineError::VoiceNotFound(v.clone()));
        }
        let samples_per_char =
            (self.config.ms_per_char as f32 / params.speed * SAMPLE_RATE_HZ as f32 / 1000.0) as usize;
        Ok(Box::new(MockSynthesis {
            samples_per_char: samples_per_char.max(1),
            latency: Duration::from_millis(self.config.first_audio_latency_ms as u64),
            rtf: self.config.realtime_factor,
            started: None,
            next_at: None,
            segments: Vec::new(),
            seg_index: 0,
            seg_offset: 0,
            word_pos: 0,
            phase: 0.0,
            text_done: false,
            chars_pushed: 0,
            boundary: Boundary::Start,
            marks: VecDeque::new(),
        }))
    }
}

/// One character's worth of sound.
#[derive(Debug, Clone, Copy)]
enum Segment {
    Voiced { f0: f32, len: usize },
    Silence { len: usize },
}

impl Segment {
    fn len(self) -> usize {
        match self {
            Segment::Voiced { len, .. } | Segment::Silence { len } => len,
        }
    }
}

struct MockSynthesis {
    samples_per_char: usize,
    latency: Duration,
    rtf: f32,
    started: Option<Instant>,
    /// Earliest time of the next step (simulated compute time).
    next_at: Option<Instant>,
    segments: Vec<Segment>,
    seg_index: usize,
    seg_offset: usize,
    /// Position of the next letter within its word (changes the pitch).
    word_pos: usize,
    phase: f32,
    text_done: bool,
    /// Characters pushed so far.
    chars_pushed: usize,
    boundary: Boundary,
    /// Segment indexes where a sentence or clause starts, with the text offset
    /// of its first character (said as `Step::Speaking` before its audio).
    marks: VecDeque<(usize, usize)>,
}

/// Where the next letter stands relative to sentence and clause ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Boundary {
    /// It starts a sentence or clause.
    Start,
    /// Punctuation came; a blank next makes the letter after it a start.
    Punctuation,
    Inside,
}

impl MockSynthesis {
    fn segment_for(&mut self, c: char) -> Option<Segment> {
        let n = self.samples_per_char;
        if c.is_alphanumeric() {
            // Deterministic pitch contour: 110-230 Hz from the character, falling over the word.
            let code = c.to_lowercase().next().unwrap_or(c) as u32;
            let f0 = 110.0 + (code.wrapping_mul(37) % 120) as f32 - (self.word_pos.min(8) as f32 * 4.0);
            self.word_pos += 1;
            Some(Segment::Voiced { f0, len: n })
        } else if !matches!(self.segments.last(), Some(Segment::Voiced { .. })) {
            // Pauses only follow speech: leading blanks and runs of them say nothing.
            None
        } else if c.is_whitespace() {
            self.word_pos = 0;
            Some(Segment::Silence { len: n / 2 })
        } else if matches!(c, '.' | '!' | '?' | ';' | ':' | ',') {
            self.word_pos = 0;
            let factor = if c == ',' { 2 } else { 4 };
            Some(Segment::Silence { len: n * factor })
        } else {
            None
        }
    }

    fn render(&mut self, out: &mut Vec<f32>, seg: Segment, from: usize, count: usize) {
        match seg {
            Segment::Silence { .. } => out.extend(std::iter::repeat_n(0.0, count)),
            Segment::Voiced { f0, len } => {
                let edge = (EDGE_MS * SAMPLE_RATE_HZ as f32 / 1000.0).min(len as f32 / 2.0);
                let step = 2.0 * std::f32::consts::PI * f0 / SAMPLE_RATE_HZ as f32;
                for i in from..from + count {
                    let env = (i as f32 / edge).min((len - i) as f32 / edge).min(1.0);
                    let s = self.phase.sin() + 0.35 * (2.0 * self.phase).sin();
                    out.push(s * env * AMPLITUDE / 1.35);
                    self.phase = (self.phase + step) % (2.0 * std::f32::consts::PI);
                }
            }
        }
    }
}

impl Synthesis for MockSynthesis {
    fn push_text(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_alphanumeric() && self.boundary == Boundary::Start {
                self.marks.push_back((self.segments.len(), self.chars_pushed));
            }
            self.boundary = match c {
                '.' | '!' | '?' | ',' | ';' | ':' => Boundary::Punctuation,
                '\n' => Boundary::Start,
                c if c.is_whitespace() && self.boundary != Boundary::Inside => Boundary::Start,
                _ if c.is_alphanumeric() => Boundary::Inside,
                _ => self.boundary,
            };
            self.chars_pushed += 1;
            if let Some(seg) = self.segment_for(c) {
                self.segments.push(seg);
            }
        }
    }

    fn finish_text(&mut self) {
        self.text_done = true;
    }

    fn step(&mut self, now: Instant) -> Result<Step, EngineError> {
        let started = *self.started.get_or_insert(now);
        if let Some(at) = self.next_at.or(Some(started + self.latency)).filter(|at| *at > now) {
            return Ok(Step::NotBefore(at));
        }
        let mut out = Vec::with_capacity(STEP_SAMPLES);
        while out.len() < STEP_SAMPLES && self.seg_index < self.segments.len() {
            if self.seg_offset == 0 && self.marks.front().is_some_and(|&(at, _)| at == self.seg_index) {
                if !out.is_empty() {
                    break; // the audio so far first, the mark next step
                }
                let (_, text_offset) = self.marks.pop_front().expect("checked");
                return Ok(Step::Speaking { text_offset });
            }
            let seg = self.segments[self.seg_index];
            let take = (seg.len() - self.seg_offset).min(STEP_SAMPLES - out.len());
            self.render(&mut out, seg, self.seg_offset, take);
            self.seg_offset += take;
            if self.seg_offset == seg.len() {
                self.seg_index += 1;
                self.seg_offset = 0;
            }
        }
        if out.is_empty() {
            return Ok(if self.text_done { Step::Done } else { Step::NeedText });
        }
        let compute = Duration::from_secs_f32(self.rtf * out.len() as f32 / SAMPLE_RATE_HZ as f32);
        self.next_at = Some(now + compute);
        Ok(Step::Audio(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audio of `text`, and where each sentence or clause began in it
    /// (text offset, sample index).
    fn run_marked(engine: &mut MockEngine, text: &str) -> (Vec<f32>, Vec<(usize, usize)>) {
        let mut s = engine.start(&SynthesisParams::default()).unwrap();
        s.push_text(text);
        s.finish_text();
        let (mut all, mut marks) = (Vec::new(), Vec::new());
        loop {
            match s.step(Instant::now()).unwrap() {
                Step::Audio(a) => all.extend(a),
                Step::Speaking { text_offset } => marks.push((text_offset, all.len())),
                Step::Done => return (all, marks),
                Step::NotBefore(t) => std::thread::sleep(t - Instant::now()),
                Step::NeedText => panic!("text was finished"),
            }
        }
    }

    fn run(engine: &mut MockEngine, text: &str) -> Vec<f32> {
        run_marked(engine, text).0
    }

    #[test]
    fn says_where_each_sentence_and_clause_starts() {
        let mut e = MockEngine::new(MockConfig::default()).unwrap();
        let (_, marks) = run_marked(&mut e, "Hello world. Next one, here; 3.14 is pi!");
        let offsets: Vec<usize> = marks.iter().map(|m| m.0).collect();
        assert_eq!(offsets, vec![0, 13, 23, 29]);
        let per_char = 75 * 48;
        // "Hello world." = 10 letters, a blank (half), a stop (4x).
        assert_eq!(marks[1].1, 10 * per_char + per_char / 2 + 4 * per_char);
    }

    #[test]
    fn deterministic_and_proportional_to_text() {
        let mut e = MockEngine::new(MockConfig::default()).unwrap();
        let a = run(&mut e, "Hello world.");
        let b = run(&mut e, "Hello world.");
        assert_eq!(a, b);
        let per_char = 75 * 48;
        // 10 letters, one space (half), a full stop (4x).
        assert_eq!(a.len(), 10 * per_char + per_char / 2 + 4 * per_char);
        let rms = (a.iter().map(|s| s * s).sum::<f32>() / a.len() as f32).sqrt();
        assert!(rms > 0.05, "voiced audio is audible");
        assert!(run(&mut e, "  ").is_empty(), "blanks alone say nothing");
        assert!(run(&mut e, "").is_empty());
        // Runs of blanks collapse to one pause; a blank after punctuation adds nothing.
        assert_eq!(run(&mut e, "a.  b").len(), run(&mut e, "a. b").len());
        assert_eq!(run(&mut e, "a. b").len(), run(&mut e, "a.b").len());
    }

    #[test]
    fn streams_text_in_pieces() {
        let mut e = MockEngine::new(MockConfig::default()).unwrap();
        let mut s = e.start(&SynthesisParams::default()).unwrap();
        assert_eq!(s.step(Instant::now()).unwrap(), Step::NeedText);
        s.push_text("a");
        assert_eq!(s.step(Instant::now()).unwrap(), Step::Speaking { text_offset: 0 });
        assert!(matches!(s.step(Instant::now()).unwrap(), Step::Audio(_)));
        s.finish_text();
        while let Step::Audio(_) = s.step(Instant::now()).unwrap() {}
        assert_eq!(s.step(Instant::now()).unwrap(), Step::Done);
    }

    #[test]
    fn latency_and_speed_are_honoured() {
        let cfg = MockConfig { first_audio_latency_ms: 50, ..MockConfig::default() };
        let mut e = MockEngine::new(cfg).unwrap();
        let mut s = e.start(&SynthesisParams { speed: 2.0, voice: None }).unwrap();
        s.push_text("ab");
        s.finish_text();
        let t0 = Instant::now();
        assert!(matches!(s.step(t0).unwrap(), Step::NotBefore(t) if t >= t0 + Duration::from_millis(50)));
        let mut total = 0;
        let later = t0 + Duration::from_millis(60);
        assert_eq!(s.step(later).unwrap(), Step::Speaking { text_offset: 0 });
        while let Step::Audio(a) = s.step(later).unwrap() {
            total += a.len();
        }
        assert_eq!(total, 2 * 75 * 48 / 2);
        assert!(e.start(&SynthesisParams { speed: 0.0, voice: None }).is_err());
        assert!(matches!(
            e.start(&SynthesisParams { speed: 1.0, voice: Some("nobody".into()) }),
            Err(EngineError::VoiceNotFound(_))
        ));
    }
}
