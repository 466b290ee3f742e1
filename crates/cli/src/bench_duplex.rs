//! `duplex bench-duplex`: the spoken conversation, measured.
//!
//! - VAD cost: Silero on 32 ms windows of real speech, per window;
//! - ASR: Whisper tiny.en on spoken sentences, time and real-time factor;
//! - turn latency: a worker (the Piper voice) and an orchestrator as child
//!   processes; a client streams spoken questions in real time as
//!   microphone audio and times the end of the speech in its input to the
//!   first reply audio frame it receives (so the VAD's end-of-turn silence,
//!   recognition, the reply and first TTS audio all count);
//! - barge-in: while a long reply plays, the client speaks over it and times
//!   the onset of that speech in its input to the `clear` event, and counts
//!   frames of the old reply arriving after it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use duplex_orchestrator::protocol::{AudioFormat, Command, ServerMessage};

use crate::bench::start_stack_with;
use crate::client::{Client, Event};
use crate::stats::Summary;
use crate::voice::{VOICE, speak, speech_bounds};

const RATE: u32 = 16_000;
const CHUNK: usize = RATE as usize / 50;

const QUESTIONS: &[&str] = &[
    "What is the weather like in Paris today?",
    "Can you set a timer for ten minutes?",
    "Who wrote the novel about the white whale?",
    "Turn off the lights in the kitchen.",
    "How far is the moon from the earth?",
];

#[derive(Debug, Clone)]
pub struct DuplexBenchArgs {
    pub assets: PathBuf,
    pub turns: usize,
    /// Parts to run: vad, asr, llm, conversation.
    pub parts: Vec<String>,
}

impl DuplexBenchArgs {
    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

fn vad_cost(args: &DuplexBenchArgs, speech: &[i16]) -> anyhow::Result<Summary> {
    duplex_onnx::init_runtime(&args.assets.join("onnxruntime/libonnxruntime.so.1.31.1"))?;
    let mut vad = duplex_speech::SileroVad::load(&args.assets.join("vad/silero_vad.onnx"))?;
    let mut state = duplex_speech::silero::StreamState::default();
    let samples: Vec<f32> = speech.iter().map(|s| *s as f32 / 32_768.0).collect();
    let mut us = Vec::new();
    for _ in 0..4 {
        for w in samples.chunks_exact(duplex_speech::WINDOW_SAMPLES) {
            let t = Instant::now();
            vad.probability(&mut state, w)?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(Summary::of(&mut us))
}

/// Sentences with pauses inside (commas, sentence ends), said as one turn.
const LONG_TURNS: &[&str] = &[
    "I would like to book a table, for four people, at eight tonight.",
    "First, open the front door. Then, turn on the light in the hall.",
    "Well, I am not sure. Maybe tomorrow, or maybe the day after that.",
    "The meeting moved to Tuesday. Can you tell the others, please?",
];

/// For each end-of-turn silence, how many of the long turns the detector
/// splits into more than one segment (VAD probabilities computed once).
fn endpointing(args: &DuplexBenchArgs, silences_ms: &[u32]) -> anyhow::Result<Vec<(u32, usize)>> {
    let mut vad = duplex_speech::SileroVad::load(&args.assets.join("vad/silero_vad.onnx"))?;
    let mut scored = Vec::new();
    for text in LONG_TURNS {
        let mut pcm = vec![0i16; RATE as usize / 2];
        pcm.extend(speak(&args.assets, text, RATE)?);
        pcm.extend(vec![0i16; RATE as usize * 2]);
        let samples: Vec<f32> = pcm.iter().map(|s| *s as f32 / 32_768.0).collect();
        let mut state = duplex_speech::silero::StreamState::default();
        let mut windows = Vec::new();
        for w in samples.chunks_exact(duplex_speech::WINDOW_SAMPLES) {
            windows.push((w.to_vec(), vad.probability(&mut state, w)?));
        }
        scored.push(windows);
    }
    Ok(silences_ms
        .iter()
        .map(|&ms| {
            let config = duplex_speech::VadConfig { min_silence_ms: ms, ..Default::default() };
            let split = scored
                .iter()
                .filter(|windows| {
                    let mut d = duplex_speech::Detector::new(config.clone());
                    let ends = windows
                        .iter()
                        .filter(|(w, p)| {
                            matches!(d.push(w, *p, false), Some(duplex_speech::VadEvent::SpeechEnd { .. }))
                        })
                        .count();
                    ends > 1
                })
                .count();
            (ms, split)
        })
        .collect())
}

/// Lower-case words of `text`.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// Time per turn, real-time factor and the share of the questions' words
/// found in the transcripts, with the encoder window fitted to the turn plus
/// `pad_ms` (0 = Whisper's full 30 s window).
fn asr(args: &DuplexBenchArgs, clips: &[Vec<i16>], pad_ms: u32) -> anyhow::Result<(Summary, Summary, f64, String)> {
    let config = duplex_asr::WhisperConfig {
        model_dir: args.assets.join("asr/whisper-tiny.en"),
        fitted_window_pad_ms: pad_ms,
        ..Default::default()
    };
    let mut r = duplex_asr::whisper::Recognizer::load(&config)?;
    let (mut ms, mut rtf) = (Vec::new(), Vec::new());
    let (mut encode, mut decode, mut tokens) = (Vec::new(), Vec::new(), 0);
    let (mut found, mut total) = (0, 0);
    for round in 0..2 {
        for (clip, question) in clips.iter().zip(QUESTIONS) {
            let audio: Vec<f32> = clip.iter().map(|s| *s as f32 / 32_768.0).collect();
            let t = Instant::now();
            let text = r.transcribe(&audio)?;
            let took = t.elapsed().as_secs_f64();
            ms.push(took * 1e3);
            encode.push(r.spent.encode.as_secs_f64() * 1e3);
            decode.push(r.spent.decode.as_secs_f64() * 1e3);
            tokens += r.spent.tokens;
            rtf.push(took / (audio.len() as f64 / RATE as f64));
            if round == 0 {
                let got = words(&text);
                let want = words(question);
                found += want.iter().filter(|w| got.contains(w)).count();
                total += want.len();
            }
        }
    }
    let split = format!(
        "encoder p50 {:.0} ms, decoder p50 {:.0} ms for {:.1} tokens on average",
        Summary::of(&mut encode).p50,
        Summary::of(&mut decode).p50,
        tokens as f64 / ms.len() as f64
    );
    Ok((Summary::of(&mut ms), Summary::of(&mut rtf), found as f64 / total as f64, split))
}

/// Time to the first token and tokens per second of the local model, on the
/// questions as text.
fn llm(args: &DuplexBenchArgs) -> anyhow::Result<(Summary, Summary)> {
    let config = duplex_reply::LocalConfig {
        model_path: args.assets.join("llm/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ..Default::default()
    };
    let mut g = duplex_reply::local::Generator::load(&config)?;
    let (mut first, mut rate) = (Vec::new(), Vec::new());
    for question in QUESTIONS.iter().chain(QUESTIONS) {
        let request = duplex_reply::Request {
            history: Vec::new(),
            user: question.to_string(),
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        let started = Instant::now();
        let mut first_at = None;
        let n = g.generate(&request, &mut |_| {
            first_at.get_or_insert_with(Instant::now);
            true
        })?;
        let took = started.elapsed().as_secs_f64();
        if let Some(at) = first_at {
            first.push((at - started).as_secs_f64() * 1e3);
            let after_first = took - (at - started).as_secs_f64();
            if n > 1 && after_first > 0.0 {
                rate.push((n - 1) as f64 / after_first);
            }
        }
    }
    Ok((Summary::of(&mut first), Summary::of(&mut rate)))
}

/// First token of each turn of a conversation (the questions in a row, each
/// with the exchanges before it as history), computing the whole prompt each
/// time and continuing from the previous turn's attention cache.
fn llm_conversation(args: &DuplexBenchArgs) -> anyhow::Result<Vec<(usize, f64, f64)>> {
    let config = duplex_reply::LocalConfig {
        model_path: args.assets.join("llm/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ..Default::default()
    };
    let mut g = duplex_reply::local::Generator::load(&config)?;
    let mut history: Vec<duplex_reply::Exchange> = Vec::new();
    let mut turns = Vec::new();
    for question in QUESTIONS {
        // First continuing from the cache the previous turn left, then the
        // whole prompt computed afresh; that reply (and cache) go on.
        let mut timed = [0.0; 2];
        let mut reply = String::new();
        for (i, whole) in [false, true].into_iter().enumerate() {
            if whole {
                g.forget();
            }
            let request = duplex_reply::Request {
                history: history.clone(),
                user: question.to_string(),
                cancel: tokio_util::sync::CancellationToken::new(),
            };
            let started = Instant::now();
            let mut first_at = None;
            reply.clear();
            g.generate(&request, &mut |piece| {
                first_at.get_or_insert_with(Instant::now);
                reply.push_str(&piece);
                true
            })?;
            timed[i] = first_at.map(|at| (at - started).as_secs_f64() * 1e3).unwrap_or(f64::NAN);
        }
        let (_, prompt) = g.last_prompt();
        turns.push((prompt, timed[1], timed[0]));
        history.push(duplex_reply::Exchange { user: question.to_string(), assistant: reply.trim().to_string() });
    }
    Ok(turns)
}

/// Streams `mic` in real time from `t0`, returning what arrived; stops
/// `after` the audio ends or when `done` holds.
async fn stream(
    c: &mut Client,
    mic: &[i16],
    sequence: &mut u64,
    after: Duration,
    mut on_event: impl FnMut(&Event, Instant) -> bool,
) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut chunks = mic.chunks(CHUNK);
    let mut ended: Option<tokio::time::Instant> = None;
    loop {
        let until = ended.map(|e| e + after).unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = ticks.tick(), if ended.is_none() => match chunks.next() {
                Some(chunk) => {
                    *sequence += 1;
                    c.send_mic(RATE, *sequence, chunk).await?;
                }
                None => ended = Some(tokio::time::Instant::now()),
            },
            ev = c.next() => {
                let ev = ev?;
                if let Event::Closed(_) = ev {
                    anyhow::bail!("the session closed");
                }
                if on_event(&ev, t0) {
                    return Ok(t0);
                }
            }
            _ = tokio::time::sleep_until(until) => anyhow::bail!("no answer within {after:?} after the audio"),
        }
    }
}

fn worker_yaml(assets: &std::path::Path) -> String {
    format!(
        "default_model: {VOICE}\npreload: [{VOICE}]\nonnxruntime_library: {lib}\nmodels:\n  - engine: piper\n    model_id: {VOICE}\n    voice_dir: {voice}\n    threads: 1\n",
        lib = assets.join("onnxruntime/libonnxruntime.so.1.31.1").display(),
        voice = assets.join("voices").join(VOICE).display(),
    )
}

pub async fn run(args: DuplexBenchArgs) -> anyhow::Result<()> {
    println!("duplex bench-duplex: {} turns, user speech by the Piper voice streamed in real time", args.turns);
    let clips: Vec<Vec<i16>> = QUESTIONS.iter().map(|q| speak(&args.assets, q, RATE)).collect::<Result<_, _>>()?;
    if args.runs("vad") {
        let vad = vad_cost(&args, &clips.concat())?;
        println!("VAD per 32 ms window (µs):          {vad}");
        for (ms, split) in endpointing(&args, &[160, 224, 288, 320, 416, 512])? {
            println!(
                "end of turn after {ms:3} ms of silence: {split} of {} multi-clause turns cut in two",
                LONG_TURNS.len()
            );
        }
    }
    if args.runs("asr") {
        let default_pad = duplex_asr::WhisperConfig::default().fitted_window_pad_ms;
        for pad in [0, 2_000, default_pad] {
            let (ms, rtf, words, split) = asr(&args, &clips, pad)?;
            let window = if pad == 0 { "full 30 s window".to_string() } else { format!("turn + {pad} ms window") };
            println!("ASR, {window:<22} per turn (ms): {ms}");
            println!("    real-time factor p50 {:.2}, words recognised {:.0} %, {split}", rtf.p50, words * 100.0);
        }
    }
    if args.runs("llm") {
        let (ttft, rate) = llm(&args)?;
        println!("local LLM, first token (ms):        {ttft}");
        println!("local LLM, tokens per second:       {rate}");
        for (turn, (prompt, whole, continued)) in llm_conversation(&args)?.iter().enumerate() {
            println!(
                "local LLM, turn {} of a conversation ({prompt:3} prompt tokens), first token: whole prompt {whole:4.0} ms, continued from the cache {continued:4.0} ms",
                turn + 1
            );
        }
    }
    if !args.runs("conversation") {
        return Ok(());
    }

    let worker = std::env::temp_dir().join(format!("duplex-bench-duplex-{}.yaml", std::process::id()));
    std::fs::write(&worker, worker_yaml(&args.assets))?;
    // Each responder twice in one run: recognition only at the end of the
    // turn (pause_ms 0), then started at a pause with the reply started
    // early (the defaults).
    let early = duplex_speech::VadConfig::default().pause_ms;
    for (responder, pause_ms) in [("echo", 0), ("echo", early), ("local", 0), ("local", early)] {
        let label = format!("{responder}, {}", if pause_ms == 0 { "at the end" } else { "early start" });
        let orchestrator =
            std::env::temp_dir().join(format!("duplex-bench-duplex-{responder}-{}.yaml", std::process::id()));
        std::fs::write(
            &orchestrator,
            format!(
                "conversation:\n  early_reply: {}\n  vad:\n    pause_ms: {pause_ms}\n  responder:\n    kind: {responder}\n",
                pause_ms > 0
            ),
        )?;
        let stack = start_stack_with(4, Some(&worker), Some(&orchestrator)).await?;
        // Barge-in is measured once, with the defaults.
        let barge_in = responder == "echo" && pause_ms > 0;
        let result = conversation(&args, &stack, &clips, barge_in).await;
        let _ = std::fs::remove_file(&orchestrator);
        let Turns { mut turn_ms, mut clear_ms, late_frames, parts } = result?;
        println!("[{label}] turn latency, end of speech → first reply audio (ms): {}", Summary::of(&mut turn_ms));
        println!(
            "[{label}]   p50 parts: VAD end of turn +{:.0} ms, then transcript +{:.0}, first reply text +{:.0}, first audio +{:.0}",
            median_of(&parts, 0),
            median_of(&parts, 1),
            median_of(&parts, 2),
            median_of(&parts, 3)
        );
        if !clear_ms.is_empty() {
            println!("[{label}] barge-in, speech onset in the input → clear (ms):     {}", Summary::of(&mut clear_ms));
            println!("[{label}] frames of the interrupted reply after its clear:      {late_frames}");
        }
    }
    let _ = std::fs::remove_file(&worker);
    println!(
        "(end of turn waits for {} ms of silence; barge-in needs {} ms of speech while the bot talks)",
        duplex_speech::VadConfig::default().min_silence_ms,
        duplex_speech::VadConfig::default().min_speech_ms_while_speaking
    );
    Ok(())
}

struct Turns {
    turn_ms: Vec<f64>,
    clear_ms: Vec<f64>,
    late_frames: usize,
    parts: Vec<[f64; 4]>,
}

/// Median of column `i` of `rows` (NaN skipped).
fn median_of(rows: &[[f64; 4]], i: usize) -> f64 {
    let mut v: Vec<f64> = rows.iter().map(|r| r[i]).filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    Summary::of(&mut v).p50
}

/// Turns against a running stack: turn latencies, and (with `barge_in`)
/// interruption timings and frames that came after a clear.
async fn conversation(
    args: &DuplexBenchArgs,
    stack: &crate::bench::Stack,
    clips: &[Vec<i16>],
    barge_in: bool,
) -> anyhow::Result<Turns> {
    let mut c = Client::connect(&stack.url, AudioFormat::Binary).await?;
    c.session_start().await?;
    let mut sequence = 0;
    let (mut turn_ms, mut clear_ms) = (Vec::new(), Vec::new());
    let mut late_frames = 0usize;
    // Per turn: the speech's end in the input → the VAD's end of turn, then
    // from that: transcript, first reply text, first reply audio.
    let mut parts: Vec<[f64; 4]> = Vec::new();
    for i in 0..args.turns {
        let clip = &clips[i % clips.len()];
        let (_, speech_end) = speech_bounds(clip, RATE).context("the clip has speech")?;
        let mut mic = vec![0i16; RATE as usize * 3 / 10];
        let end_at = Duration::from_secs_f64((mic.len() + speech_end) as f64 / RATE as f64);
        mic.extend(clip);
        mic.extend(vec![0i16; RATE as usize * 4]);
        let mut first_audio = None;
        let t0 = stream(&mut c, &mic, &mut sequence, Duration::from_secs(20), |ev, _| {
            match ev {
                Event::Message {
                    message: ServerMessage::TurnMetrics { transcript_ms, first_reply_text_ms, first_audio_ms, .. },
                    ..
                } => {
                    let ms = |v: &Option<f64>| v.unwrap_or(f64::NAN);
                    parts.push([f64::NAN, ms(transcript_ms), ms(first_reply_text_ms), ms(first_audio_ms)]);
                    // A model's reply can be long: it is stopped once it is heard.
                    return !barge_in;
                }
                Event::Audio { at, .. } if first_audio.is_none() => first_audio = Some(*at),
                Event::Message { message: ServerMessage::State { state, .. }, .. } if state == "listening" => {
                    return true;
                }
                Event::Message { message, .. } if std::env::var_os("DUPLEX_BENCH_TRACE").is_some() => {
                    eprintln!("trace: {message:?}");
                }
                _ => {}
            }
            false
        })
        .await?;
        let Some(first) = first_audio else {
            // The model chose to say nothing (an empty reply): not a latency.
            println!("turn {i}: no reply audio (empty reply)");
            continue;
        };
        turn_ms.push((first - (t0 + end_at)).as_secs_f64() * 1e3);
        let this_turn = parts.len() == turn_ms.len();
        if let Some(p) = parts.last_mut().filter(|_| this_turn) {
            // The VAD's decision came this long after the speech ended in the input.
            p[0] = turn_ms[turn_ms.len() - 1] - p[3];
        }
        if !barge_in {
            c.control(Command::Stop).await?;
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                let ev = tokio::time::timeout_at(until.into(), c.next()).await.context("STOP ends the reply")??;
                if let Event::Message { message: ServerMessage::State { state, .. }, .. } = ev
                    && state == "listening"
                {
                    break;
                }
            }
            continue;
        }

        // Barge-in: a long question, so the echoed reply is long; speak over it.
        let long = &clips[(i + 1) % clips.len()];
        let over = speak(&args.assets, "No, stop, that is enough.", RATE)?;
        let (onset, _) = speech_bounds(&over, RATE).context("speech")?;
        let mut mic = long.clone();
        mic.extend(vec![0i16; RATE as usize * 2]); // the reply starts meanwhile
        let over_at = Duration::from_secs_f64((mic.len() + onset) as f64 / RATE as f64);
        mic.extend(&over);
        mic.extend(vec![0i16; RATE as usize * 3]);
        let mut cleared: Option<(Instant, Vec<u64>)> = None;
        let mut replying = false;
        let t0 = stream(&mut c, &mic, &mut sequence, Duration::from_secs(20), |ev, _| {
            match ev {
                Event::Audio { utterance_id, .. } => {
                    replying = true;
                    if cleared.as_ref().is_some_and(|(_, ids)| ids.contains(utterance_id)) {
                        late_frames += 1;
                    }
                }
                Event::Message { message: ServerMessage::Clear { utterance_ids }, at } if cleared.is_none() => {
                    cleared = Some((*at, utterance_ids.clone()));
                }
                Event::Message { message: ServerMessage::State { state, .. }, .. }
                    if state == "listening" && cleared.is_some() =>
                {
                    return true;
                }
                _ => {}
            }
            false
        })
        .await?;
        anyhow::ensure!(replying, "the reply never started before the interruption");
        let (at, _) = cleared.context("no clear event")?;
        clear_ms.push((at - (t0 + over_at)).as_secs_f64() * 1e3);
    }
    Ok(Turns { turn_ms, clear_ms, late_frames, parts })
}
