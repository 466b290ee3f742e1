//! `duplex talk`: a terminal client. Sends text (from the command line or
//! stdin, where `/pause`, `/resume`, `/stop` and `/quit` are commands),
//! collects the spoken reply, and writes it to a WAV file and/or plays it.

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

    let one_shot = args.text.is_some();
    if let Some(text) = &args.text {
        client.send_text(text, true).await?;
    } else {
        eprintln!("type text to speak; /pause /resume /stop /quit");
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = !one_shot;
    loop {
        tokio::select! {
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
                            if one_shot {
                                break;
                            }
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
