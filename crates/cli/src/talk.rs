//! `duplex talk`: a terminal client. Sends text (from the command line or
//! stdin, where `/pause`, `/resume`, `/stop` and `/quit` are commands),
//! collects the spoken reply, and writes it to a WAV file and/or plays it.
//! With `--mic FILE.wav` or `--say TEXT` it speaks instead: the file (or the
//! text said by the Piper voice) is streamed in real time as microphone
//! audio, and the conversation's events (transcript, reply) are shown.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context;
use duplex_orchestrator::protocol::{AudioFormat, Command, ServerMessage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::client::{Client, Event};

#[derive(Debug, Clone)]
pub struct TalkArgs {
    pub url: String,
    pub text: Option<String>,
    pub out: Option<PathBuf>,
    pub play: bool,
    /// Microphone audio to stream (mono 16-bit PCM at 8–48 kHz).
    pub mic: Option<Vec<i16>>,
    pub mic_rate_hz: u32,
}

/// A WAV file's first channel as 16-bit samples, with its rate.
pub fn read_wav(path: &std::path::Path) -> anyhow::Result<(Vec<i16>, u32)> {
    let mut reader = hound::WavReader::open(path).with_context(|| format!("reading {}", path.display()))?;
    let spec = reader.spec();
    anyhow::ensure!(
        spec.bits_per_sample == 16 && spec.sample_format == hound::SampleFormat::Int,
        "{}: 16-bit PCM WAV expected",
        path.display()
    );
    let channels = spec.channels.max(1) as usize;
    let samples: Vec<i16> = reader.samples::<i16>().step_by(channels).collect::<Result<_, _>>()?;
    Ok((samples, spec.sample_rate))
}

/// A player process fed raw PCM (aplay or paplay), if one is installed.
async fn spawn_player() -> Option<tokio::process::Child> {
    let candidates: [(&str, &[&str]); 2] = [
        ("aplay", &["-q", "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "1"]),
        ("paplay", &["--raw", "--format=s16le", "--rate=48000", "--channels=1"]),
    ];
    for (cmd, args) in candidates {
        if let Ok(child) = tokio::process::Command::new(cmd).args(args).stdin(Stdio::piped()).spawn() {
            return Some(child);
        }
    }
    eprintln!("--play: neither aplay nor paplay is installed; use --out FILE.wav instead");
    None
}

pub async fn run(args: TalkArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.url, AudioFormat::Binary).await?;
    let session = client.session_start().await?;
    eprintln!("connected: session {session}");
    let mut samples: Vec<i16> = Vec::new();
    let mut player = if args.play { spawn_player().await } else { None };

    let one_shot = args.text.is_some() || args.mic.is_some();
    if let Some(text) = &args.text {
        client.send_text(text, true).await?;
    } else if args.mic.is_none() {
        eprintln!("type text to speak; /pause /resume /stop /quit");
    }
    // Microphone audio (plus two seconds of silence so the turn ends), 20 ms a tick.
    let mut mic = args.mic.clone().unwrap_or_default();
    if !mic.is_empty() {
        mic.extend(vec![0; args.mic_rate_hz as usize * 2]);
    }
    let chunk = (args.mic_rate_hz as usize / 50).max(1);
    let mut mic_chunks = mic.chunks(chunk).enumerate();
    let mut mic_open = !mic.is_empty();
    let mut heard_reply = false;
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(20));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = !one_shot;
    loop {
        tokio::select! {
            _ = ticks.tick(), if mic_open => match mic_chunks.next() {
                Some((i, c)) => client.send_mic(args.mic_rate_hz, i as u64, c).await?,
                None => mic_open = false,
            },
            line = lines.next_line(), if stdin_open => {
                let Some(line) = line? else { stdin_open = false; continue };
                match line.trim() {
                    "" => {}
                    "/quit" => break,
                    "/pause" => client.control(Command::Pause).await?,
                    "/resume" => client.control(Command::Resume).await?,
                    "/stop" => client.control(Command::Stop).await?,
                    text => client.send_text(text, true).await?,
                }
            }
            event = client.next() => match event? {
                Event::Audio { pcm, .. } => {
                    if let Some(p) = player.as_mut().and_then(|p| p.stdin.as_mut()) {
                        let _ = p.write_all(&pcm).await;
                    }
                    samples.extend(duplex_audio::bytes_to_samples(&pcm));
                }
                Event::Message { message, .. } => {
                    match &message {
                        ServerMessage::UtteranceEnd { utterance_id, reason, frames } => {
                            eprintln!("utterance {utterance_id}: {} ({frames} frames, {} ms)", reason.as_str(), frames * 20);
                            if args.text.is_some() {
                                break;
                            }
                        }
                        ServerMessage::Transcript { text, .. } => eprintln!("you said: {text}"),
                        ServerMessage::Reply { text, .. } => {
                            heard_reply = true;
                            eprint!("{text}");
                        }
                        ServerMessage::Interrupted { heard, .. } => eprintln!("\n(interrupted after: {heard:?})"),
                        ServerMessage::State { state, .. } => {
                            if heard_reply {
                                eprintln!();
                            }
                            eprintln!("[{state}]");
                            // A spoken one-shot ends when the bot has answered and listens again.
                            if args.mic.is_some() && state == "listening" && heard_reply && !mic_open {
                                break;
                            }
                        }
                        ServerMessage::TurnMetrics { first_audio_ms: Some(ms), .. } => {
                            eprintln!("(first reply audio {ms:.0} ms after the end of your turn)");
                        }
                        ServerMessage::Error { code, message, .. } => eprintln!("error {}: {message}", code.as_str()),
                        ServerMessage::SessionEnd { reason, .. } => {
                            eprintln!("session ended: {reason}");
                            break;
                        }
                        ServerMessage::ControlAck { command, .. } => eprintln!("{command:?} acknowledged"),
                        _ => {}
                    }
                    std::io::stderr().flush().ok();
                }
                Event::Closed(code) => {
                    eprintln!("server closed the connection ({code:?})");
                    break;
                }
            }
        }
    }
    client.close().await;
    if let Some(mut p) = player {
        drop(p.stdin.take());
        let _ = p.wait().await;
    }
    if let Some(out) = &args.out {
        duplex_audio::write_wav(out, duplex_audio::SAMPLE_RATE_HZ, &samples).context("saving the reply")?;
        eprintln!("wrote {} ({:.2} s)", out.display(), samples.len() as f64 / duplex_audio::SAMPLE_RATE_HZ as f64);
    }
    Ok(())
}
