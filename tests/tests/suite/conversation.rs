//! The spoken side of a session, driven by real speech (the Piper voice)
//! streamed in real time as microphone audio: barge-in over the bot's audio,
//! the `clear` event, silence that never triggers anything.

use std::time::{Duration, Instant};

use duplex_cli::client::{Client, Event};
use duplex_orchestrator::protocol::{AudioFormat, EndReason, ServerMessage};
use duplex_tests::speech::{silence, spoken, with_hearing};
use duplex_tests::*;

const RATE: u32 = 16_000;
/// 20 ms of microphone audio at RATE.
const CHUNK: usize = RATE as usize / 50;

/// What the client saw, with arrival times.
#[derive(Debug, Default)]
struct Seen {
    /// (utterance, arrival)
    frames: Vec<(u64, Instant)>,
    messages: Vec<(ServerMessage, Instant)>,
}

impl Seen {
    fn first(&self, pred: impl Fn(&ServerMessage) -> bool) -> Option<(usize, Instant)> {
        self.messages.iter().enumerate().find(|(_, (m, _))| pred(m)).map(|(i, (_, at))| (i, *at))
    }
}

/// Streams `mic` in real time (20 ms chunks) while reading what arrives;
/// reads on for `after` once all is sent.
async fn converse(c: &mut Client, mic: &[i16], after: Duration) -> Seen {
    converse_until(c, mic, after, |_| false).await
}

/// Like `converse`, but also returns as soon as `done` holds for a message
/// received after the microphone audio was all sent (or the wait ends).
async fn converse_until(c: &mut Client, mic: &[i16], after: Duration, done: impl Fn(&ServerMessage) -> bool) -> Seen {
    let mut seen = Seen::default();
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut chunks = mic.chunks(CHUNK).enumerate();
    let mut done_at: Option<tokio::time::Instant> = None;
    loop {
        let until = done_at.map(|d| d + after);
        tokio::select! {
            _ = ticks.tick(), if done_at.is_none() => match chunks.next() {
                Some((i, chunk)) => c.send_mic(RATE, i as u64, chunk).await.unwrap(),
                None => done_at = Some(tokio::time::Instant::now()),
            },
            ev = c.next() => match ev.unwrap() {
                Event::Audio { utterance_id, at, .. } => seen.frames.push((utterance_id, at)),
                Event::Message { message, at } => {
                    let stop = done_at.is_some() && done(&message);
                    seen.messages.push((message, at));
                    if stop {
                        return seen;
                    }
                }
                Event::Closed(code) => panic!("closed {code:?}"),
            },
            _ = tokio::time::sleep_until(until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))), if until.is_some() => return seen,
        }
    }
}

async fn stack() -> Stack {
    Stack::start(realtime_worker_config(), with_hearing).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaking_over_the_bot_stops_it_and_clears_the_client() {
    let stack = stack().await;
    let mut c = stack.client(AudioFormat::Binary).await;
    c.send_text("This is a long answer that the user will not let me finish, because they talk over it.", true)
        .await
        .unwrap();
    let speech = spoken("Wait, stop please.", RATE);
    let mut mic = silence(1_500, RATE); // the bot speaks alone for a while
    let speech_starts = Duration::from_millis(1_500);
    mic.extend(&speech);
    mic.extend(silence(800, RATE));
    let started = Instant::now();
    let seen = converse(&mut c, &mic, Duration::from_millis(500)).await;

    let (clear_at, cleared) = seen
        .first(|m| matches!(m, ServerMessage::Clear { .. }))
        .map(|(i, at)| (at, seen.messages[i].0.clone()))
        .expect("a clear event");
    let ServerMessage::Clear { utterance_ids } = cleared else { unreachable!() };
    assert_eq!(utterance_ids, vec![1]);
    // The bot was talking before, and not one frame of it came after the clear.
    assert!(seen.frames.iter().any(|(u, at)| *u == 1 && *at < clear_at));
    assert!(!seen.frames.iter().any(|(u, at)| *u == 1 && *at > clear_at), "audio after clear");
    let reaction = clear_at - started - speech_starts;
    eprintln!("clear {reaction:?} after the speech began in the input");
    assert!(reaction < Duration::from_millis(1_000), "stopped {reaction:?} after the speech began");
    // The utterance ended as stopped, and the state went to the user.
    assert!(
        seen.messages
            .iter()
            .any(|(m, _)| matches!(m, ServerMessage::UtteranceEnd { utterance_id: 1, reason: EndReason::Stopped, .. }))
    );
    assert!(
        seen.messages.iter().any(|(m, _)| matches!(m, ServerMessage::State { state, .. } if state == "user_speaking"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_never_interrupts_or_starts_a_turn() {
    let stack = stack().await;
    let mut c = stack.client(AudioFormat::Binary).await;
    c.send_text("A short answer that plays to its end.", true).await.unwrap();
    let seen = converse(&mut c, &silence(3_500, RATE), Duration::from_millis(300)).await;
    assert!(
        !seen.messages.iter().any(|(m, _)| matches!(m, ServerMessage::Clear { .. } | ServerMessage::State { .. })),
        "{:?}",
        seen.messages
    );
    assert!(
        seen.messages.iter().any(|(m, _)| matches!(
            m,
            ServerMessage::UtteranceEnd { utterance_id: 1, reason: EndReason::Completed, .. }
        ))
    );
    assert_eq!(seen.frames.len() as u64, mock_frames("A short answer that plays to its end."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microphone_input_is_refused_clearly_when_off_or_malformed() {
    // No VAD model configured: mic audio gets an error, the session goes on.
    let deaf = Stack::start(worker_config(), |c| c.conversation.vad_model = "".into()).await;
    let mut c = deaf.client(AudioFormat::Binary).await;
    c.send_mic(RATE, 0, &silence(20, RATE)).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(5), is_error).await;
    let Some(ServerMessage::Error { message, .. }) = heard.messages.last() else { unreachable!() };
    assert!(message.contains("microphone input is off"), "{message}");
    c.send_text("still here", true).await.unwrap();
    read_until(&mut c, &mut heard, Duration::from_secs(5), is_utterance_end).await;

    // With hearing on: an unsupported rate and an oversized chunk are refused.
    let stack = stack().await;
    let mut c = stack.client(AudioFormat::Binary).await;
    c.send_mic(11_025, 0, &[0; 220]).await.unwrap();
    c.send_mic(RATE, 1, &[0; 4_000]).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(5), is_error).await;
    read_until(&mut c, &mut heard, Duration::from_secs(5), is_error).await;
    let errors: Vec<String> = heard
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Error { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert!(errors[0].contains("11025"), "{errors:?}");
    assert!(errors[1].contains("samples in one message"), "{errors:?}");
}

fn texts(seen: &Seen, pick: impl Fn(&ServerMessage) -> Option<String>) -> Vec<String> {
    seen.messages.iter().filter_map(|(m, _)| pick(m)).collect()
}

fn states(seen: &Seen) -> Vec<String> {
    texts(seen, |m| match m {
        ServerMessage::State { state, .. } => Some(state.clone()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_question_gets_a_transcript_a_reply_and_its_audio() {
    let stack = stack().await;
    let mut c = stack.client(AudioFormat::Json).await;
    let mut mic = silence(500, RATE);
    mic.extend(spoken("What is the weather like in Paris today?", RATE));
    mic.extend(silence(1_000, RATE));
    let seen = converse_until(
        &mut c,
        &mic,
        Duration::from_secs(20),
        |m| matches!(m, ServerMessage::State { state, .. } if state == "listening"),
    )
    .await;
    let transcript = texts(&seen, |m| match m {
        ServerMessage::Transcript { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(transcript.len(), 1, "{:?}", seen.messages);
    // Most of the words (tiny.en sometimes hears "pairs" for "Paris").
    let heard = transcript[0].to_lowercase();
    let want = ["what", "is", "the", "weather", "like", "in", "paris", "today"];
    let found = want.iter().filter(|w| heard.split(|c: char| !c.is_alphanumeric()).any(|h| h == **w)).count();
    assert!(found >= 6 && heard.contains("weather"), "{heard:?}");
    let reply = texts(&seen, |m| match m {
        ServerMessage::Reply { text, .. } => Some(text.clone()),
        _ => None,
    })
    .concat();
    assert_eq!(reply, format!("You said: {}", transcript[0]));
    assert_eq!(states(&seen), ["user_speaking", "thinking", "speaking", "listening"]);
    // The reply was spoken: its utterance's frames all arrived and it completed.
    let reply_frames = seen.frames.iter().filter(|(u, _)| *u == 1).count() as u64;
    assert_eq!(reply_frames, mock_frames(&reply));
    assert!(
        seen.messages.iter().any(|(m, _)| matches!(
            m,
            ServerMessage::UtteranceEnd { utterance_id: 1, reason: EndReason::Completed, .. }
        ))
    );
    let metrics = seen.messages.iter().find_map(|(m, _)| match m {
        ServerMessage::TurnMetrics { transcript_ms, first_audio_ms, .. } => Some((*transcript_ms, *first_audio_ms)),
        _ => None,
    });
    let (Some(asr_ms), Some(audio_ms)) = metrics.expect("turn metrics") else { panic!("{metrics:?}") };
    eprintln!(
        "transcript after {asr_ms:.0} ms, first reply audio after {audio_ms:.0} ms (from the VAD's end of speech)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backchannel_over_the_reply_does_not_end_it() {
    let stack = stack().await;
    let mut c = stack.client(AudioFormat::Json).await;
    // A question, then "okay" while the (long) echoed reply plays.
    let question = "Tell me everything you know about the long history of the city of Rome please.";
    let mut mic = silence(300, RATE);
    mic.extend(spoken(question, RATE));
    mic.extend(silence(3_500, RATE));
    mic.extend(spoken("Okay.", RATE));
    mic.extend(silence(1_000, RATE));
    let seen = converse_until(
        &mut c,
        &mic,
        Duration::from_secs(30),
        |m| matches!(m, ServerMessage::State { state, .. } if state == "listening"),
    )
    .await;
    let resumed = seen.messages.iter().any(|(m, _)| matches!(m, ServerMessage::Resumed { turn: 1, .. }));
    let transcripts = texts(&seen, |m| match m {
        ServerMessage::Transcript { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert!(resumed, "transcripts {transcripts:?}, states {:?}", states(&seen));
    assert!(!seen.messages.iter().any(|(m, _)| matches!(m, ServerMessage::Interrupted { .. })));
    // The reply went on in a new utterance after the clear, and finished.
    assert!(seen.messages.iter().any(|(m, _)| matches!(m, ServerMessage::Clear { .. })));
    assert!(
        seen.messages.iter().any(|(m, _)| matches!(
            m,
            ServerMessage::UtteranceEnd { utterance_id: 2, reason: EndReason::Completed, .. }
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_language_model_answers_a_spoken_question() {
    let stack = Stack::start(realtime_worker_config(), duplex_tests::speech::with_local_llm).await;
    let mut c = stack.client(AudioFormat::Json).await;
    let mut mic = silence(300, RATE);
    mic.extend(spoken("What is the capital of France?", RATE));
    mic.extend(silence(1_000, RATE));
    let seen = converse_until(
        &mut c,
        &mic,
        Duration::from_secs(40),
        |m| matches!(m, ServerMessage::State { state, .. } if state == "listening"),
    )
    .await;
    let reply = texts(&seen, |m| match m {
        ServerMessage::Reply { text, .. } => Some(text.clone()),
        _ => None,
    });
    let whole = reply.concat();
    eprintln!("reply in {} pieces: {whole:?}", reply.len());
    assert!(reply.len() > 2, "streamed in pieces");
    assert!(whole.split_whitespace().count() >= 3, "{whole:?}");
    assert!(!whole.starts_with("You said"), "not the echo");
    let frames = seen.frames.iter().filter(|(u, _)| *u == 1).count() as u64;
    assert_eq!(frames, mock_frames(&whole), "the whole reply was spoken");
}

/// A counter's value in the orchestrator's /metrics (0 when absent).
async fn metric(stack: &Stack, name_and_labels: &str) -> f64 {
    let text = http_get(&format!("http://{}/metrics", stack.orchestrator.addr)).await;
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_compatible_server_answers_a_spoken_question() {
    use duplex_tests::chat::{ChatServer, Script};
    let server = ChatServer::start(Script::Reply {
        pieces: vec!["It is ".into(), "sunny ".into(), "in Paris.".into()],
        every: Duration::from_millis(20),
    })
    .await;
    let url = server.url.clone();
    let stack = Stack::start(realtime_worker_config(), move |c| {
        with_hearing(c);
        c.conversation.responder = duplex_orchestrator::config::ResponderConfig::Openai(duplex_reply::OpenAiConfig {
            url,
            model: "test-model".into(),
            ..Default::default()
        });
    })
    .await;
    let mut c = stack.client(AudioFormat::Json).await;
    let mut mic = silence(300, RATE);
    mic.extend(spoken("What is the weather like in Paris today?", RATE));
    mic.extend(silence(1_000, RATE));
    let seen = converse_until(
        &mut c,
        &mic,
        Duration::from_secs(20),
        |m| matches!(m, ServerMessage::State { state, .. } if state == "listening"),
    )
    .await;
    let transcript = texts(&seen, |m| match m {
        ServerMessage::Transcript { text, .. } => Some(text.clone()),
        _ => None,
    });
    let reply = texts(&seen, |m| match m {
        ServerMessage::Reply { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(reply, ["It is ", "sunny ", "in Paris."], "the server's pieces, in order");
    let frames = seen.frames.iter().filter(|(u, _)| *u == 1).count() as u64;
    assert_eq!(frames, mock_frames(&reply.concat()), "the whole reply was spoken");
    // Asked once (an early reply, if one was started, was the one used), with the transcript.
    let asked = server.asked();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let messages = asked[0].body["messages"].as_array().unwrap().clone();
    assert_eq!(messages.last().unwrap()["content"].as_str(), Some(transcript[0].as_str()));
    assert_eq!(asked[0].body["model"], "test-model");
    assert!(metric(&stack, "duplex_asr_guesses_total{fate=\"used\"}").await >= 1.0, "the pause's transcript was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_inside_a_sentence_does_not_end_the_turn() {
    let stack = stack().await;
    let mut c = stack.client(AudioFormat::Json).await;
    // A 200 ms gap: long enough to start recognition early, short of the end of turn.
    let mut mic = silence(300, RATE);
    mic.extend(spoken("What is the weather", RATE));
    mic.extend(silence(200, RATE));
    mic.extend(spoken("like in Paris today?", RATE));
    mic.extend(silence(1_000, RATE));
    let seen = converse_until(
        &mut c,
        &mic,
        Duration::from_secs(20),
        |m| matches!(m, ServerMessage::State { state, .. } if state == "listening"),
    )
    .await;
    let transcript = texts(&seen, |m| match m {
        ServerMessage::Transcript { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(transcript.len(), 1, "one turn: {transcript:?}");
    let heard = transcript[0].to_lowercase();
    assert!(heard.contains("weather") && heard.contains("today"), "both halves: {heard:?}");
    let reply = texts(&seen, |m| match m {
        ServerMessage::Reply { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(reply.concat(), format!("You said: {}", transcript[0]), "the reply answers the whole sentence");
    assert!(metric(&stack, "duplex_asr_guesses_total{fate=\"withdrawn\"}").await >= 1.0, "the gap's guess was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_turn_is_answered_and_spoken() {
    use duplex_orchestrator::protocol::ClientMessage;
    let stack = Stack::start(realtime_worker_config(), |_| {}).await;
    let mut c = stack.client(AudioFormat::Json).await;
    c.send(&ClientMessage::UserText { text: "Is it raining?".into() }).await.unwrap();
    let seen = converse_until(
        &mut c,
        &[],
        Duration::from_secs(10),
        |m| matches!(m, ServerMessage::State { state, .. } if state == "listening"),
    )
    .await;
    let transcript = texts(&seen, |m| match m {
        ServerMessage::Transcript { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(transcript, ["Is it raining?"]);
    let reply = texts(&seen, |m| match m {
        ServerMessage::Reply { text, .. } => Some(text.clone()),
        _ => None,
    })
    .concat();
    assert_eq!(reply, "You said: Is it raining?");
    let frames = seen.frames.iter().filter(|(u, _)| *u == 1).count() as u64;
    assert_eq!(frames, mock_frames(&reply), "the reply was spoken");
    // Empty typed text is refused; the session goes on.
    c.send(&ClientMessage::UserText { text: "  ".into() }).await.unwrap();
    let seen = converse_until(&mut c, &[], Duration::from_secs(5), |m| matches!(m, ServerMessage::Error { .. })).await;
    assert!(seen.messages.iter().any(|(m, _)| matches!(m, ServerMessage::Error { .. })));
}
