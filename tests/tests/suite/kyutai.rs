//! The Kyutai engine served by a real worker over gRPC, on tiny random
//! weights written in the real formats (model, Mimi codec, SentencePiece
//! tokenizer, voice file): an utterance streams 48 kHz frames and completes;
//! with every slot taken, StartSession is RESOURCE_EXHAUSTED at once (and an
//! utterance of a session opened earlier ends with a "busy" error); the
//! registry record advertises the free slots.

use std::time::Duration;

use duplex_kyutai::codec;
use duplex_kyutai::moshi_candle::{DType, Device, Tensor};
use duplex_kyutai::tokenizer::{ModelProto, Piece};
use duplex_kyutai::{Config, weights};
use duplex_proto::tts::{AudioFrame, EndReason, StartSessionRequest, TextChunk};
use duplex_tests::hub::HubServer;
use duplex_tests::*;
use duplex_worker::engines::EngineConfig;
use duplex_worker::kyutai::KyutaiConfig;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MODEL: &str = "kyutai-tiny";

const VOICE: &str = "expresso/alice.wav";
const VOICE_SUFFIX: &str = ".1e68beda@240.safetensors";

/// Everything the engine loads, tiny and random, in Kyutai's release layout:
/// `dir/release` (config.json naming the checkpoint, codec and tokenizer)
/// and `dir/voices`.
fn write_release(dir: &std::path::Path) {
    let config = Config::tiny();
    let release = dir.join("release");
    weights::write_random(&config, &release, 9).unwrap();
    std::fs::rename(release.join("model.safetensors"), release.join("dsm_tts_tiny.safetensors")).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release.join("config.json")).unwrap()).unwrap();
    json["moshi_name"] = "dsm_tts_tiny.safetensors".into();
    json["mimi_name"] = "mimi_tiny.safetensors".into();
    json["tokenizer_name"] = "spm_tiny.model".into();
    std::fs::write(release.join("config.json"), json.to_string()).unwrap();
    codec::write_random(codec::tiny_config(config.dep_q, config.card), &release.join("mimi_tiny.safetensors")).unwrap();
    let mut pieces: Vec<Piece> = ["<unk>", "<s>", "</s>"]
        .iter()
        .zip([2, 3, 3])
        .map(|(p, kind)| Piece { piece: Some(p.to_string()), score: Some(0.0), kind: Some(kind) })
        .collect();
    for (i, p) in
        ["▁", "▁hello", "▁there", "▁friend", "e", "h", "l", "o", "r", "t", "f", "i", "n", "d"].iter().enumerate()
    {
        pieces.push(Piece { piece: Some(p.to_string()), score: Some(-(i as f32)), kind: Some(1) });
    }
    std::fs::write(release.join("spm_tiny.model"), ModelProto { pieces }.encode_to_vec()).unwrap();
    let voice = dir.join("voices").join(format!("{VOICE}{VOICE_SUFFIX}"));
    std::fs::create_dir_all(voice.parent().unwrap()).unwrap();
    let c = &config.conditioning;
    let wavs = Tensor::ones((1, c.voice_dim, c.voice_frames / 5), DType::F32, &Device::Cpu).unwrap();
    duplex_kyutai::moshi_candle::safetensors::save(
        &std::collections::HashMap::from([("speaker_wavs".to_string(), wavs)]),
        voice,
    )
    .unwrap();
}

/// The engine's config for the release written in `dir`.
fn fixture(dir: &std::path::Path) -> KyutaiConfig {
    write_release(dir);
    KyutaiConfig {
        model_id: MODEL.into(),
        model_dir: dir.join("release").display().to_string(),
        codec: None,
        tokenizer: None,
        voices_dir: dir.join("voices").display().to_string(),
        voices: Vec::new(),
        voice_suffix: VOICE_SUFFIX.into(),
        hf_endpoint: None,
        hf_cache_dir: None,
        default_voice: VOICE.into(),
        slots: 1,
        device: "cpu".into(),
        codec_shape: "tiny".into(),
        languages: vec!["en".into()],
        temperature: 0.6,
        top_k: 8,
        audio_delay_steps: 3,
        cfg_bin: 2,
    }
}

async fn worker(dir: &std::path::Path) -> duplex_worker::Handle {
    worker_with(dir, |_| {}).await
}

async fn worker_with(dir: &std::path::Path, tweak: impl FnOnce(&mut duplex_worker::Config)) -> duplex_worker::Handle {
    serve(fixture(dir), tweak).await
}

/// A worker whose one (default, preloaded) model is `model`.
fn serving(model: KyutaiConfig) -> duplex_worker::Config {
    let mut config = worker_config();
    config.models = vec![EngineConfig::Kyutai(model)];
    config.default_model = MODEL.into();
    config.preload = vec![MODEL.into()];
    config
}

async fn serve(model: KyutaiConfig, tweak: impl FnOnce(&mut duplex_worker::Config)) -> duplex_worker::Handle {
    let mut config = serving(model);
    tweak(&mut config);
    let worker = duplex_worker::spawn(config).await.expect("worker starts");
    wait_serving(&worker.addr.to_string(), Duration::from_secs(60)).await;
    worker
}

async fn stop(worker: duplex_worker::Handle) {
    worker.shutdown.cancel();
    worker.join.await.unwrap().unwrap();
}

/// Why a worker whose default model is `model` does not start.
async fn load_error(model: KyutaiConfig) -> String {
    let worker = duplex_worker::spawn(serving(model)).await.expect("binds");
    let ended = tokio::time::timeout(Duration::from_secs(60), worker.join).await.expect("the worker gives up");
    ended.unwrap().expect_err("the load fails").to_string()
}

async fn start(
    client: &mut duplex_proto::TtsServiceClient<tonic::transport::Channel>,
    session: &str,
) -> Result<(), tonic::Status> {
    let request = StartSessionRequest { session_id: session.into(), model_id: MODEL.into(), ..Default::default() };
    client.start_session(request).await.map(|r| assert!(r.into_inner().success))
}

async fn speak(
    client: &mut duplex_proto::TtsServiceClient<tonic::transport::Channel>,
    session: &str,
    text: &str,
    finished: bool,
) -> (mpsc::Sender<TextChunk>, tonic::Streaming<AudioFrame>) {
    start(client, session).await.expect("StartSession");
    utter(client, session, text, finished).await
}

async fn utter(
    client: &mut duplex_proto::TtsServiceClient<tonic::transport::Channel>,
    session: &str,
    text: &str,
    finished: bool,
) -> (mpsc::Sender<TextChunk>, tonic::Streaming<AudioFrame>) {
    let (tx, rx) = mpsc::channel(16);
    let chunk = TextChunk {
        session_id: session.into(),
        text: text.into(),
        is_final: finished,
        sequence_number: 1,
        ..Default::default()
    };
    tx.send(chunk).await.unwrap();
    let frames = client.synthesize(ReceiverStream::new(rx)).await.expect("Synthesize").into_inner();
    (tx, frames)
}

async fn to_final(frames: &mut tonic::Streaming<AudioFrame>) -> (Vec<AudioFrame>, AudioFrame) {
    let mut got = Vec::new();
    loop {
        let f = tokio::time::timeout(Duration::from_secs(30), frames.message()).await.unwrap().unwrap().unwrap();
        if f.is_final {
            return (got, f);
        }
        got.push(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_utterance_streams_48_khz_frames_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(dir.path()).await;
    let mut client = grpc(worker.addr).await;
    let (_tx, mut frames) = speak(&mut client, "k1", "hello there friend", true).await;
    let (audio, last) = to_final(&mut frames).await;
    assert_eq!(last.end_reason, EndReason::Completed as i32, "{}", last.error_message);
    assert!(audio.len() >= 8, "{} frames", audio.len());
    assert!(audio.iter().all(|f| f.sample_rate == 48_000 && f.frame_duration_ms == 20 && f.audio_data.len() == 1920));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_slot_taken_sessions_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let worker = worker_with(dir.path(), |c| {
        c.name = "gpu-0".into();
        c.registry.redis_url = redis.url();
        c.registry.heartbeat_ms = 100;
    })
    .await;
    let mut client = grpc(worker.addr).await;
    let mut conn = redis.connection().await;
    let free_slots = async |conn: &mut redis::aio::MultiplexedConnection| -> Option<f64> {
        let json: Option<String> = redis::AsyncCommands::get(conn, "worker:gpu-0").await.unwrap();
        let record: serde_json::Value = serde_json::from_str(&json?).unwrap();
        record["metrics"]["free_slots"].as_f64()
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while free_slots(&mut conn).await != Some(1.0) {
        assert!(std::time::Instant::now() < until, "the record advertises one free slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A session opened while the slot is free; then the slot is taken by an
    // utterance whose text is still coming.
    start(&mut client, "early").await.unwrap();
    let (_held, mut first) = speak(&mut client, "k1", "hello there ", false).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), first.message()).await.unwrap().unwrap();
    let started = std::time::Instant::now();
    let refused = start(&mut client, "k2").await.expect_err("no slot: refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("every slot"), "{}", refused.message());
    // The earlier session's utterance cannot get a slot either: it ends at once.
    let (_tx, mut second) = utter(&mut client, "early", "hello", true).await;
    let (_, last) = to_final(&mut second).await;
    assert_eq!(last.end_reason, EndReason::Error as i32);
    assert!(last.error_message.contains("busy"), "{}", last.error_message);
    assert!(started.elapsed() < Duration::from_secs(2), "refused in {:?}", started.elapsed());
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while free_slots(&mut conn).await != Some(0.0) {
        assert!(std::time::Instant::now() < until, "the record advertises no free slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The release and a voice fetched from (stand-in) Hugging Face repos into
/// the cache, then served; a second worker loads from the cache alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_and_voices_are_fetched_from_a_hugging_face_repo() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(repos.join("kyutai")).unwrap();
    write_release(&repos.join("kyutai"));
    std::fs::rename(repos.join("kyutai/release"), repos.join("kyutai/tts-tiny")).unwrap();
    std::fs::rename(repos.join("kyutai/voices"), repos.join("kyutai/tts-voices")).unwrap();
    let hub = HubServer::start(repos).await;
    let cache = dir.path().join("hf-cache");
    let hosted = KyutaiConfig {
        model_dir: "hf://kyutai/tts-tiny".into(),
        voices_dir: "hf://kyutai/tts-voices".into(),
        hf_endpoint: Some(hub.url.clone()),
        hf_cache_dir: Some(cache.clone()),
        ..fixture(&dir.path().join("unused"))
    };
    let worker = serve(hosted.clone(), |_| {}).await;
    assert_eq!(hub.served(), 5, "config, checkpoint, codec, tokenizer and the voice");
    let mut client = grpc(worker.addr).await;
    let (_tx, mut frames) = speak(&mut client, "k1", "hello there", true).await;
    let (audio, last) = to_final(&mut frames).await;
    assert_eq!(last.end_reason, EndReason::Completed as i32, "{}", last.error_message);
    assert!(!audio.is_empty());
    stop(worker).await;

    // Offline: everything comes from the cache.
    drop(hub);
    stop(serve(hosted.clone(), |_| {}).await).await;

    // A voice the repo lacks: the load fails naming it.
    let hub = HubServer::start(dir.path().join("repos")).await;
    let missing =
        KyutaiConfig { voices: vec!["expresso/nobody.wav".into()], hf_endpoint: Some(hub.url.clone()), ..hosted };
    let err = load_error(missing).await;
    assert!(err.contains("expresso/nobody.wav") && err.contains("kyutai/tts-voices"), "{err}");
}

/// Without the files, the error says which file is missing and where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_release_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture(dir.path());
    std::fs::remove_file(dir.path().join("release/mimi_tiny.safetensors")).unwrap();
    let err = load_error(model).await;
    assert!(err.contains("mimi_tiny.safetensors") && err.contains("mimi_name"), "{err}");
}
