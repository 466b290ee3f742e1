//! The real Piper voice (fetched by `just assets`) through the worker's gRPC
//! contract: plausible speech, numbers, STOP, concurrency, broken voices,
//! eviction and reload.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use duplex_proto::tts::{
    AudioFrame, ControlCommand, ControlRequest, EndReason, GetCapabilitiesRequest, ListModelsRequest, LoadModelRequest,
    StartSessionRequest, TextChunk,
};
use duplex_tests::*;
use duplex_tts::mock::MockConfig;
use duplex_worker::engines::EngineConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const VOICE: &str = "en_US-joe-medium";

fn assets() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/assets");
    assert!(
        dir.join("voices").join(VOICE).exists() && dir.join("onnxruntime").exists(),
        "the Piper voice and ONNX Runtime are missing from {}: run `just assets` (or `cargo run -p duplex-cli -- assets`)",
        dir.display()
    );
    dir
}

fn piper(model_id: &str, voice_dir: PathBuf) -> EngineConfig {
    serde_yaml::from_str(&format!(
        "engine: piper\nmodel_id: {model_id}\nvoice_dir: {}\nthreads: 1\n",
        voice_dir.display()
    ))
    .unwrap()
}

fn piper_worker() -> duplex_worker::Config {
    let assets = assets();
    let mut c = worker_config();
    c.onnxruntime_library = assets.join("onnxruntime/libonnxruntime.so.1.31.1");
    c.models.push(piper(VOICE, assets.join("voices").join(VOICE)));
    c.default_model = VOICE.into();
    c.preload = vec![VOICE.into()];
    c
}

type Client = duplex_proto::TtsServiceClient<tonic::transport::Channel>;

async fn start(c: &mut Client, id: &str, model: &str) {
    c.start_session(StartSessionRequest { session_id: id.into(), model_id: model.into(), ..Default::default() })
        .await
        .expect("StartSession");
}

async fn open(c: &mut Client, id: &str, text: &str) -> (mpsc::Sender<TextChunk>, tonic::Streaming<AudioFrame>) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(TextChunk { session_id: id.into(), text: text.into(), is_final: true, ..Default::default() })
        .await
        .unwrap();
    (tx, c.synthesize(ReceiverStream::new(rx)).await.expect("Synthesize").into_inner())
}

/// Frames to the next final (inclusive), with the time of the first.
async fn utterance(frames: &mut tonic::Streaming<AudioFrame>) -> (Vec<AudioFrame>, Instant) {
    let mut out: Vec<AudioFrame> = Vec::new();
    let mut first = None;
    loop {
        let f = tokio::time::timeout(Duration::from_secs(60), frames.message()).await.unwrap().unwrap().unwrap();
        first.get_or_insert_with(Instant::now);
        let last = f.is_final;
        out.push(f);
        if last {
            return (out, first.unwrap());
        }
    }
}

fn samples(frames: &[AudioFrame]) -> Vec<i16> {
    frames.iter().flat_map(|f| duplex_audio::bytes_to_samples(&f.audio_data)).collect()
}

fn seconds(frames: &[AudioFrame]) -> f64 {
    samples(frames).len() as f64 / 48_000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentence_is_plausible_48khz_speech() {
    let worker = duplex_worker::spawn(piper_worker()).await.unwrap();
    wait_serving(&worker.addr.to_string(), Duration::from_secs(60)).await;
    let mut c = grpc(worker.addr).await;
    start(&mut c, "s", "").await;
    let text = "The quick brown fox jumps over the lazy dog near the river bank.";
    let (_tx, mut frames) = open(&mut c, "s", text).await;
    let (got, _) = utterance(&mut frames).await;
    assert!(got.iter().all(|f| f.sample_rate == 48_000 && f.audio_data.len() == 1920));
    assert_eq!(got.last().unwrap().end_reason, EndReason::Completed as i32);
    let audio = samples(&got);
    let rms = duplex_audio::rms(&audio);
    assert!(rms > 0.02, "speech, not silence (rms {rms:.4})");
    // English TTS speaks about 15 characters of text a second.
    let predicted = text.len() as f64 / 15.0;
    let secs = seconds(&got);
    assert!((secs - predicted).abs() <= 0.3 * predicted, "{secs:.2} s vs about {predicted:.2} s predicted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_say_which_sentence_they_speak() {
    let worker = duplex_worker::spawn(piper_worker()).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "s", VOICE).await;
    let text = "Good morning. The weather is fine today. See you later.";
    let (_tx, mut frames) = open(&mut c, "s", text).await;
    let (got, _) = utterance(&mut frames).await;
    let mut offsets: Vec<u32> = got.iter().map(|f| f.text_offset).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "never back: {offsets:?}");
    offsets.dedup();
    // The first sentence may come in clauses; each later one starts where it is in the text.
    for sentence in ["The weather", "See you"] {
        let at = text.find(sentence).unwrap() as u32;
        assert!(offsets.contains(&at), "{sentence:?} at {at}: {offsets:?}");
    }
    assert_eq!(offsets[0], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_spoken() {
    let worker = duplex_worker::spawn(piper_worker()).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "s", VOICE).await;
    let (tx, mut frames) = open(&mut c, "s", "I have apples.").await;
    let plain = seconds(&utterance(&mut frames).await.0);
    tx.send(TextChunk {
        session_id: "s".into(),
        text: "I have 4,321 apples.".into(),
        is_final: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let with_number = seconds(&utterance(&mut frames).await.0);
    // "four thousand three hundred twenty-one" takes well over a second.
    assert!(with_number - plain > 1.0, "{plain:.2} s without, {with_number:.2} s with the number");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_mid_sentence_silences_the_client_at_once_and_the_session_speaks_again() {
    use duplex_cli::client::Event;
    use duplex_orchestrator::protocol::{AudioFormat, Command, EndReason as WsEnd, ServerMessage};
    let stack = Stack::start(piper_worker(), |_| {}).await;
    let mut ws = stack.client(AudioFormat::Binary).await;
    ws.send_text("This is a long sentence that should be interrupted before it ever gets to its end.", true)
        .await
        .unwrap();
    let mut heard = Heard::default();
    while heard.frames.len() < 10 {
        read_until(&mut ws, &mut heard, Duration::from_secs(30), |e| matches!(e, Event::Audio { .. })).await;
    }
    ws.control(Command::Stop).await.unwrap();
    read_until(&mut ws, &mut heard, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { message: ServerMessage::ControlAck { .. }, .. })
    })
    .await;
    let at_ack = heard.frames.len();
    assert!(heard.messages.iter().any(|m| matches!(m, ServerMessage::UtteranceEnd { reason: WsEnd::Stopped, .. })));
    read_for(&mut ws, &mut heard, Duration::from_millis(300)).await;
    assert_eq!(heard.frames.len(), at_ack, "no audio after STOP took effect");

    let mut again = Heard::default();
    ws.send_text("Hello again.", true).await.unwrap();
    read_until(&mut ws, &mut again, Duration::from_secs(30), is_utterance_end).await;
    assert!(matches!(again.messages.last(), Some(ServerMessage::UtteranceEnd { reason: WsEnd::Completed, .. })));
    assert!(again.frames.len() > 25, "{} frames", again.frames.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_at_the_worker_cuts_the_utterance_short() {
    let worker = duplex_worker::spawn(piper_worker()).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "s", VOICE).await;
    let text = "First a short clause, and then a long sentence that keeps going on and on. And another one after it.";
    let (tx, mut frames) = open(&mut c, "s", text).await;
    frames.message().await.unwrap().unwrap();
    c.control(ControlRequest { session_id: "s".into(), command: ControlCommand::Stop as i32, utterance_id: 0 })
        .await
        .unwrap();
    let (rest, _) = utterance(&mut frames).await;
    assert_eq!(rest.last().unwrap().end_reason, EndReason::Stopped as i32);
    // Streamed ahead of real time, some frames were already on the wire; far
    // from all of the ~6 s utterance.
    assert!(seconds(&rest) < 3.0, "{:.2} s after STOP", seconds(&rest));
    tx.send(TextChunk { session_id: "s".into(), text: "Hello again.".into(), is_final: true, ..Default::default() })
        .await
        .unwrap();
    let (got, _) = utterance(&mut frames).await;
    assert_eq!(got.last().unwrap().end_reason, EndReason::Completed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_synthesize_at_the_same_time() {
    let mut cfg = piper_worker();
    if let Some(EngineConfig::Piper(p)) = cfg.models.last_mut() {
        p.threads = 2;
    }
    let worker = duplex_worker::spawn(cfg).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "a", VOICE).await;
    start(&mut c, "b", VOICE).await;
    let text = "Both of us are talking at the same time, and neither waits for the other.";
    let (_ta, mut fa) = open(&mut c, "a", text).await;
    let (_tb, mut fb) = open(&mut c, "b", text).await;
    let (a, b) = tokio::join!(utterance(&mut fa), utterance(&mut fb));
    assert_eq!(a.0.last().unwrap().end_reason, EndReason::Completed as i32);
    assert_eq!(b.0.last().unwrap().end_reason, EndReason::Completed as i32);
    // Same text, same voice: both complete and about equally long.
    assert!((seconds(&a.0) - seconds(&b.0)).abs() < 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_voices_are_clear_errors_and_other_models_keep_serving() {
    let assets = assets();
    let broken = std::env::temp_dir().join(format!("duplex-broken-voice-{}", std::process::id()));
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("bad.onnx"), b"this is not an onnx model").unwrap();
    std::fs::copy(assets.join("voices").join(VOICE).join(format!("{VOICE}.onnx.json")), broken.join("bad.onnx.json"))
        .unwrap();
    let mut cfg = worker_config();
    cfg.onnxruntime_library = assets.join("onnxruntime/libonnxruntime.so.1.31.1");
    cfg.models.push(piper("corrupt", broken.clone()));
    cfg.models.push(piper("missing", broken.join("nowhere")));
    let worker = duplex_worker::spawn(cfg).await.unwrap();
    let mut c = grpc(worker.addr).await;

    let corrupt = c.load_model(LoadModelRequest { model_id: "corrupt".into(), preload_only: false }).await.unwrap_err();
    assert_eq!(corrupt.code(), Code::Unavailable);
    assert!(corrupt.message().contains("bad.onnx"), "{}", corrupt.message());
    let missing = c
        .start_session(StartSessionRequest { session_id: "m".into(), model_id: "missing".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unavailable);
    assert!(missing.message().contains("nowhere"), "{}", missing.message());

    start(&mut c, "ok", "mock").await;
    let (_tx, mut frames) = open(&mut c, "ok", "still fine").await;
    assert_eq!(utterance(&mut frames).await.0.last().unwrap().end_reason, EndReason::Completed as i32);
    std::fs::remove_dir_all(&broken).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_models_are_evicted_and_reload_on_demand() {
    let assets = assets();
    let mut cfg = worker_config(); // default: mock (pinned)
    cfg.onnxruntime_library = assets.join("onnxruntime/libonnxruntime.so.1.31.1");
    cfg.models.push(piper(VOICE, assets.join("voices").join(VOICE)));
    cfg.models.push(EngineConfig::Mock(MockConfig { model_id: "mock-b".into(), ..MockConfig::default() }));
    cfg.model_cache.max_resident = 2;
    cfg.model_cache.min_residency_ms = 0;
    cfg.model_cache.idle_ttl_ms = 400;
    cfg.model_cache.eviction_interval_ms = 50;
    let worker = duplex_worker::spawn(cfg).await.unwrap();
    wait_serving(&worker.addr.to_string(), Duration::from_secs(30)).await;
    let mut c = grpc(worker.addr).await;
    let resident = |c: &mut Client| {
        let mut c = c.clone();
        async move { c.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner().resident_models }
    };

    // A session holds the voice: it stays past its TTL.
    start(&mut c, "s", VOICE).await;
    assert_eq!(resident(&mut c).await, vec!["en_US-joe-medium", "mock"]);
    let models = c.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    let voice = models.iter().find(|m| m.model_id == VOICE).unwrap();
    assert_eq!(voice.family, "piper");
    assert_eq!(voice.metadata.get("sample_rate_hz").map(String::as_str), Some("22050"));
    assert!(voice.metadata.get("load_ms").is_some_and(|ms| ms.parse::<u64>().unwrap() > 0));
    assert!(voice.languages.contains(&"en-US".to_string()), "{:?}", voice.languages);
    // The cap: loading a third model while the voice is in use is refused.
    let full = c.load_model(LoadModelRequest { model_id: "mock-b".into(), preload_only: false }).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(resident(&mut c).await, vec!["en_US-joe-medium", "mock"], "in use: not evicted");

    // Idle now: LRU makes room for mock-b, and the TTL sweep would too.
    c.end_session(duplex_proto::tts::EndSessionRequest { session_id: "s".into() }).await.unwrap();
    c.load_model(LoadModelRequest { model_id: "mock-b".into(), preload_only: false }).await.unwrap();
    assert_eq!(resident(&mut c).await, vec!["mock", "mock-b"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(resident(&mut c).await, vec!["mock"], "idle mock-b unloaded by the TTL; the default stays");

    // Reload on demand, and it speaks.
    start(&mut c, "again", VOICE).await;
    let (_tx, mut frames) = open(&mut c, "again", "Back again.").await;
    assert_eq!(utterance(&mut frames).await.0.last().unwrap().end_reason, EndReason::Completed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_interrupts_the_inference_in_flight() {
    // One engine thread: the next utterance can only start once the stopped
    // one's inference has ended, so its first audio shows whether STOP
    // interrupted a long chunk (~1 s of compute) or waited for it.
    let worker = duplex_worker::spawn(piper_worker()).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "s", VOICE).await;
    let long = "Hi. This sentence goes on and on without a single break because it wants to keep the engine busy for \
                a long time while somebody else is already talking over it and expecting to be heard right away now.";
    let (tx, mut frames) = open(&mut c, "s", long).await;
    frames.message().await.unwrap().unwrap(); // "Hi." is out; the long chunk is being synthesized
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.control(ControlRequest { session_id: "s".into(), command: ControlCommand::Stop as i32, utterance_id: 0 })
        .await
        .unwrap();
    let (_, _) = utterance(&mut frames).await;
    let sent = Instant::now();
    tx.send(TextChunk { session_id: "s".into(), text: "Okay.".into(), is_final: true, ..Default::default() })
        .await
        .unwrap();
    let (_, first) = utterance(&mut frames).await;
    let waited = first - sent;
    assert!(waited < Duration::from_millis(500), "first audio after STOP took {waited:?}");
}
