//! Many sessions on one model: each session holds a slot of the batch, and
//! one OS thread steps every slot together (the model is never touched from
//! anywhere else). A session streams words in as the reply is written and
//! gets 80 ms chunks of 24 kHz audio out; cancelling it (or dropping it)
//! frees its slot at the next step. With every slot taken, opening a session
//! fails at once with [`EngineError::Busy`] so routing can go elsewhere.
//!
//! Per step and slot: the text machine picks the text token to feed, the
//! backbone and the depth transformer give the step's codebooks, and once the
//! audio delay has passed, the codebooks of one frame (undone from the
//! per-codebook delays) are decoded to audio. A slot whose listener has
//! not taken its audio waits (it is masked out of the step) rather than
//! queueing without bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moshi::candle::Tensor;

use crate::codec::Codec;
use crate::machine::{Machine, MachineConfig, TextTokens};
use crate::{Model, Sampler};

/// Words waiting for the model per session (a reply's worth).
const WORD_QUEUE: usize = 256;
/// Audio chunks (80 ms each) a session may have waiting: 0.64 s. Full = the
/// slot sits out steps until its listener catches up.
const AUDIO_QUEUE: usize = 8;
/// Sessions opening at once.
const COMMAND_QUEUE: usize = 64;
/// How long the idle thread waits for work before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("every slot of the batch is in use")]
    Busy,
    #[error("the model thread has stopped")]
    Stopped,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Steps between a word's text and its audio (16 for tts-1.6b).
    pub audio_delay: usize,
    /// Steps generated after the last word's audio is due.
    pub final_padding: usize,
    /// The guidance bin of the `cfg` conditioner.
    pub cfg_bin: u32,
    pub machine: MachineConfig,
    pub text_sampler: Sampler,
    pub audio_sampler: Sampler,
}

/// What a session receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// 80 ms of 24 kHz audio.
    Audio(Vec<f32>),
    /// The utterance is complete.
    End,
    /// The model failed; the session is over.
    Failed(String),
}

enum Input {
    Word(Vec<u32>),
    Close,
}

struct Open {
    slot: usize,
    voice: Tensor,
    input: Receiver<Input>,
    output: SyncSender<Chunk>,
    cancel: Arc<AtomicBool>,
}

/// A session's hold on a slot. Dropping it cancels the session.
pub struct Stream {
    pub slot: usize,
    input: SyncSender<Input>,
    pub audio: Receiver<Chunk>,
    cancel: Arc<AtomicBool>,
}

impl Stream {
    /// Queues a word's tokens. `false` if the session is over.
    pub fn push_word(&self, tokens: Vec<u32>) -> bool {
        self.input.send(Input::Word(tokens)).is_ok()
    }

    /// No more words: the utterance ends after the queued ones.
    pub fn close(&self) {
        let _ = self.input.send(Input::Close);
    }

    /// Stops the session; its slot is free at the next step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The model thread and the slots it serves.
pub struct Engine {
    commands: SyncSender<Open>,
    taken: Arc<Mutex<Vec<bool>>>,
    batch: usize,
}

/// One slot's session on the model thread.
struct Session {
    machine: Machine,
    input: Receiver<Input>,
    output: SyncSender<Chunk>,
    cancel: Arc<AtomicBool>,
    /// The text token to feed at the next step.
    text: i64,
    /// Audio tokens to feed (last step's output; -1 while the stream has not started).
    audio: Vec<i64>,
    /// Recent steps' codebooks, newest last, to undo the per-codebook delays.
    recent: VecDeque<Vec<u32>>,
    step: usize,
    /// Chunks the listener had no room for yet, in order.
    pending: VecDeque<Chunk>,
    /// The utterance is complete: nothing more is generated.
    finished: bool,
}

impl Session {
    /// Hands waiting chunks to the listener, oldest first, as far as it has room.
    fn deliver(&mut self) {
        while let Some(chunk) = self.pending.pop_front() {
            match self.output.try_send(chunk) {
                Ok(()) => {}
                Err(TrySendError::Full(chunk)) => {
                    self.pending.push_front(chunk);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.cancel.store(true, Ordering::SeqCst);
                    self.pending.clear();
                    return;
                }
            }
        }
    }
}

impl Engine {
    /// Starts the model thread with `model` (its batch is the slot count) and `codec`.
    pub fn spawn(model: Model, codec: Codec, config: EngineConfig) -> std::io::Result<Self> {
        let batch = model.batch();
        let (commands, commands_rx) = sync_channel(COMMAND_QUEUE);
        let taken = Arc::new(Mutex::new(vec![false; batch]));
        let thread_taken = taken.clone();
        std::thread::Builder::new().name("kyutai-tts".into()).spawn(move || {
            run(model, codec, config, commands_rx, thread_taken);
        })?;
        Ok(Self { commands, taken, batch })
    }

    /// Slots free now (advertised in the worker's registration).
    pub fn free_slots(&self) -> usize {
        self.taken.lock().expect("slots lock").iter().filter(|t| !**t).count()
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Takes a free slot for a session speaking with `voice` (frames × voice_dim).
    pub fn open(&self, voice: Tensor) -> Result<Stream, EngineError> {
        let slot = {
            let mut taken = self.taken.lock().expect("slots lock");
            let slot = taken.iter().position(|t| !t).ok_or(EngineError::Busy)?;
            taken[slot] = true;
            slot
        };
        let (input, input_rx) = sync_channel(WORD_QUEUE);
        let (output, audio) = sync_channel(AUDIO_QUEUE);
        let cancel = Arc::new(AtomicBool::new(false));
        let open = Open { slot, voice, input: input_rx, output, cancel: cancel.clone() };
        if self.commands.send(open).is_err() {
            return Err(EngineError::Stopped);
        }
        Ok(Stream { slot, input, audio, cancel })
    }
}

/// One frame's codebooks from the last `max delay + 1` steps' outputs
/// (oldest first): codebook k of the frame came out `delays[k]` steps after
/// its first codebooks, i.e. at `recent[delays[k]]`.
fn undelay(recent: &VecDeque<Vec<u32>>, delays: &[usize]) -> Vec<u32> {
    delays.iter().enumerate().map(|(k, &d)| recent[d][k]).collect()
}

fn release(slot: usize, taken: &Mutex<Vec<bool>>) {
    taken.lock().expect("slots lock")[slot] = false;
}

fn run(
    mut model: Model,
    mut codec: Codec,
    mut config: EngineConfig,
    commands: Receiver<Open>,
    taken: Arc<Mutex<Vec<bool>>>,
) {
    let c = model.config().clone();
    let ids = TextTokens::for_text_card(c.text_card);
    let max_delay = c.delays.iter().skip(1).copied().max().unwrap_or(0);
    let mut sessions: Vec<Option<Session>> = (0..model.batch()).map(|_| None).collect();
    loop {
        // New sessions; with nothing to do, wait for one.
        let idle = sessions.iter().all(Option::is_none);
        let next = if idle { commands.recv_timeout(IDLE_WAIT).ok() } else { commands.try_recv().ok() };
        if let Some(open) = next {
            let result = model.reset_slot(open.slot, &open.voice);
            codec.reset_slot(open.slot);
            match result {
                Ok(()) => {
                    sessions[open.slot] = Some(Session {
                        machine: Machine::new(ids, config.machine),
                        input: open.input,
                        output: open.output,
                        cancel: open.cancel,
                        text: c.text_card as i64,
                        audio: vec![-1; c.n_q],
                        recent: VecDeque::new(),
                        step: 0,
                        pending: VecDeque::new(),
                        finished: false,
                    });
                }
                Err(e) => {
                    let _ = open.output.try_send(Chunk::Failed(e.to_string()));
                    release(open.slot, &taken);
                }
            }
            continue;
        }
        if idle && matches!(commands.try_recv(), Err(TryRecvError::Disconnected)) {
            return;
        }
        // Cancelled sessions go; words come in; full listeners sit this step out.
        let mut active = vec![false; sessions.len()];
        for (slot, entry) in sessions.iter_mut().enumerate() {
            let Some(s) = entry else { continue };
            if s.cancel.load(Ordering::SeqCst) {
                *entry = None;
                release(slot, &taken);
                continue;
            }
            while let Ok(input) = s.input.try_recv() {
                match input {
                    Input::Word(tokens) => s.machine.push_word(&tokens),
                    Input::Close => s.machine.close(),
                }
            }
            s.deliver();
            if s.finished && s.pending.is_empty() {
                *entry = None;
                release(slot, &taken);
                continue;
            }
            active[slot] = s.pending.is_empty() && !s.finished;
        }
        if !active.iter().any(|a| *a) {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let text: Vec<i64> = sessions.iter().map(|s| s.as_ref().map_or(-1, |s| s.text)).collect();
        let audio: Vec<Vec<i64>> =
            sessions.iter().map(|s| s.as_ref().map_or_else(|| vec![-1; c.n_q], |s| s.audio.clone())).collect();
        let cfg = vec![config.cfg_bin; sessions.len()];
        let outcome = model.backbone_masked(&text, &audio, &cfg, &active).and_then(|(logits, hidden)| {
            let predicted = config.text_sampler.sample(&logits)?;
            let mut fed = text.clone();
            for (slot, s) in sessions.iter_mut().enumerate() {
                if let (Some(s), true) = (s, active[slot]) {
                    fed[slot] = s.machine.next(s.step, predicted[slot] as i64);
                }
            }
            let codes = model.depformer(&hidden, &fed, &mut config.audio_sampler)?;
            Ok((fed, codes))
        });
        let (fed, codes) = match outcome {
            Ok(out) => out,
            Err(e) => {
                for (slot, entry) in sessions.iter_mut().enumerate() {
                    if let Some(s) = entry.take() {
                        let _ = s.output.try_send(Chunk::Failed(e.to_string()));
                        release(slot, &taken);
                    }
                }
                continue;
            }
        };
        for (slot, entry) in sessions.iter_mut().enumerate() {
            let Some(s) = entry.as_mut().filter(|_| active[slot]) else { continue };
            let step = s.step;
            s.step += 1;
            s.text = fed[slot];
            // The step's codebooks feed the next step once their stream has started.
            s.audio = codes[slot]
                .iter()
                .enumerate()
                .map(|(k, &t)| if step >= config.audio_delay + c.delays[k + 1] { t as i64 } else { -1 })
                .collect();
            s.recent.push_back(codes[slot].clone());
            if s.recent.len() > max_delay + 1 {
                s.recent.pop_front();
            }
            let mut chunk = None;
            if step >= config.audio_delay + max_delay && s.recent.len() == max_delay + 1 {
                let frame = undelay(&s.recent, &c.delays[1..=c.dep_q]);
                chunk = Some(match codec.decode(slot, &frame) {
                    Ok(pcm) => Chunk::Audio(pcm),
                    Err(e) => Chunk::Failed(e.to_string()),
                });
            }
            let done = s
                .machine
                .end_step()
                .is_some_and(|end| step >= end + config.audio_delay + max_delay + config.final_padding);
            s.pending.extend(chunk);
            if done {
                s.pending.push_back(Chunk::End);
                s.finished = true;
            }
            s.deliver();
            if s.finished && s.pending.is_empty() {
                *entry = None;
                release(slot, &taken);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_takes_each_codebook_from_the_step_its_delay_says() {
        // Steps t-2, t-1, t; codebook 0 undelayed, codebooks 1 and 2 two steps late.
        let recent: VecDeque<Vec<u32>> = vec![vec![10, 11, 12], vec![20, 21, 22], vec![30, 31, 32]].into();
        // The frame whose first codebook came out at t-2: its others came out at t.
        assert_eq!(undelay(&recent, &[0, 2, 2]), vec![10, 31, 32]);
        assert_eq!(undelay(&recent, &[0, 1, 2]), vec![10, 21, 32]);
    }
}
