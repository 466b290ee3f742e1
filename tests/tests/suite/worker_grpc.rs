//! The worker's gRPC contract, exercised with a real tonic client the way the
//! predecessor's Python client uses it, plus the Duplex extensions.

use std::time::{Duration, Instant};

use duplex_proto::tts::{
    AudioFrame, ControlCommand, ControlRequest, EndReason, EndSessionRequest, GetCapabilitiesRequest,
    ListModelsRequest, LoadModelRequest, StartSessionRequest, TextChunk, UnloadModelRequest,
};
use duplex_tests::*;
use duplex_tts::mock::MockConfig;
use duplex_worker::engines::EngineConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn chunk(session: &str, text: &str, is_final: bool, seq: i64) -> TextChunk {
    TextChunk { session_id: session.into(), text: text.into(), is_final, sequence_number: seq, ..Default::default() }
}

async fn start(client: &mut duplex_proto::TtsServiceClient<tonic::transport::Channel>, id: &str) {
    let r = client
        .start_session(StartSessionRequest { session_id: id.into(), model_id: String::new(), ..Default::default() })
        .await
        .expect("StartSession")
        .into_inner();
    assert!(r.success);
    assert_eq!(r.sample_rate_hz, 48_000);
    assert_eq!(r.frame_duration_ms, 20);
}

/// Opens a stream whose text is fed through the returned sender.
async fn open(
    client: &mut duplex_proto::TtsServiceClient<tonic::transport::Channel>,
    first: TextChunk,
) -> (mpsc::Sender<TextChunk>, tonic::Streaming<AudioFrame>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let frames = client.synthesize(ReceiverStream::new(rx)).await.expect("Synthesize").into_inner();
    (tx, frames)
}

async fn next(frames: &mut tonic::Streaming<AudioFrame>) -> AudioFrame {
    tokio::time::timeout(Duration::from_secs(10), frames.message())
        .await
        .expect("a frame within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

/// Reads to the next is_final frame; returns the frames before it and it.
async fn to_final(frames: &mut tonic::Streaming<AudioFrame>) -> (Vec<AudioFrame>, AudioFrame) {
    let mut got = Vec::new();
    loop {
        let f = next(frames).await;
        if f.is_final {
            return (got, f);
        }
        got.push(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predecessor_style_stream_frames_then_exactly_one_final() {
    let worker = duplex_worker::spawn(worker_config()).await.unwrap();
    let mut client = grpc(worker.addr).await;
    start(&mut client, "py-1").await;
    // The predecessor's client: all chunks, the last with is_final, then half-close.
    let chunks = vec![chunk("py-1", "Hello there, ", false, 1), chunk("py-1", "general Kenobi.", true, 2)];
    let mut frames = client.synthesize(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    let mut all = Vec::new();
    while let Some(f) = frames.message().await.expect("stream ok") {
        all.push(f);
    }
    let text = "Hello there, general Kenobi.";
    assert_eq!(all.len() as u64, mock_frames(text), "every 20 ms of audio, the partial last one in the final frame");
    for (i, f) in all.iter().enumerate() {
        assert_eq!(f.sequence_number, i as i64 + 1, "contiguous from 1");
        assert_eq!(f.sample_rate, 48_000);
        assert_eq!(f.frame_duration_ms, 20);
        assert_eq!(f.session_id, "py-1");
        assert_eq!(f.audio_data.len(), 1920);
    }
    assert_eq!(all.iter().filter(|f| f.is_final).count(), 1);
    let last = all.last().unwrap();
    assert!(last.is_final);
    assert_eq!(last.end_reason, EndReason::Completed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_leaves_before_the_utterance_is_synthesized() {
    let worker = duplex_worker::spawn(realtime_worker_config()).await.unwrap();
    let mut client = grpc(worker.addr).await;
    start(&mut client, "s").await;
    let t0 = Instant::now();
    let text = "A sentence of about one second.";
    let (_tx, mut frames) = open(&mut client, chunk("s", text, true, 1)).await;
    let first = next(&mut frames).await;
    let first_at = t0.elapsed();
    assert!(!first.is_final);
    let (_, fin) = to_final(&mut frames).await;
    let total = t0.elapsed();
    let audio = Duration::from_millis(mock_frames(text) * 20);
    assert!(total >= audio.mul_f64(0.8), "real-time mock takes about the audio's length ({total:?} vs {audio:?})");
    assert!(first_at < total / 4, "first frame at {first_at:?} of {total:?}: streamed, not batched");
    assert_eq!(fin.end_reason, EndReason::Completed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_text_and_many_utterances_on_one_stream() {
    let worker = duplex_worker::spawn(worker_config()).await.unwrap();
    let mut client = grpc(worker.addr).await;
    start(&mut client, "s").await;
    let (tx, mut frames) = open(&mut client, chunk("s", "   ", true, 1)).await;
    let (before, fin) = to_final(&mut frames).await;
    assert!(before.is_empty(), "blanks alone say nothing");
    assert_eq!(fin.end_reason, EndReason::Empty as i32);
    tx.send(chunk("s", "", true, 2)).await.unwrap();
    let (before, fin) = to_final(&mut frames).await;
    assert!(before.is_empty());
    assert!(fin.audio_data.is_empty());
    assert_eq!(fin.end_reason, EndReason::Empty as i32);
    // Third utterance on the same stream: sequence numbers continue.
    tx.send(chunk("s", "ok", true, 3)).await.unwrap();
    let (before, fin) = to_final(&mut frames).await;
    assert_eq!(before.len() as u64 + 1, mock_frames("ok"));
    assert_eq!(fin.end_reason, EndReason::Completed as i32);
    assert_eq!(fin.utterance_id, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_and_the_worker_keeps_serving() {
    let mut cfg = worker_config();
    cfg.limits.max_text_chars = 50;
    cfg.limits.max_sessions = 3;
    let worker = duplex_worker::spawn(cfg).await.unwrap();
    let mut c = grpc(worker.addr).await;

    let missing = c.start_session(StartSessionRequest::default()).await;
    assert_eq!(missing.unwrap_err().code(), Code::InvalidArgument);
    let unknown_model = c
        .start_session(StartSessionRequest { session_id: "x".into(), model_id: "nope".into(), ..Default::default() })
        .await;
    assert_eq!(unknown_model.unwrap_err().code(), Code::NotFound);
    let bad_speed = c
        .start_session(StartSessionRequest {
            session_id: "x".into(),
            options: [("speed".to_string(), "fast".to_string())].into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_speed.unwrap_err().code(), Code::InvalidArgument);
    let bad_rate = c
        .start_session(StartSessionRequest { session_id: "x".into(), sample_rate_hz: 8000, ..Default::default() })
        .await;
    assert_eq!(bad_rate.unwrap_err().code(), Code::InvalidArgument);

    let ctl = |id: &str, command: i32| ControlRequest { session_id: id.into(), command, utterance_id: 0 };
    assert_eq!(c.control(ctl("ghost", 0)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.control(ctl("", 0)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        c.end_session(EndSessionRequest { session_id: "ghost".into() }).await.unwrap_err().code(),
        Code::NotFound
    );

    let no_session = c.synthesize(tokio_stream::iter(vec![chunk("ghost", "hi", true, 1)])).await;
    assert_eq!(no_session.unwrap_err().code(), Code::NotFound);
    let no_id = c.synthesize(tokio_stream::iter(vec![chunk("", "hi", true, 1)])).await;
    assert_eq!(no_id.unwrap_err().code(), Code::InvalidArgument);
    let empty = c.synthesize(tokio_stream::iter(Vec::<TextChunk>::new())).await;
    assert_eq!(empty.unwrap_err().code(), Code::InvalidArgument);

    start(&mut c, "s").await;
    assert_eq!(c.control(ctl("s", 42)).await.unwrap_err().code(), Code::InvalidArgument);
    // Over-long text: the utterance ends with an ERROR final frame, then the stream fails.
    let long = "a".repeat(51);
    let mut frames = c.synthesize(tokio_stream::iter(vec![chunk("s", &long, true, 1)])).await.unwrap().into_inner();
    let mut finals = Vec::new();
    let status = loop {
        match frames.message().await {
            Ok(Some(f)) if f.is_final => finals.push(f),
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].end_reason, EndReason::Error as i32);
    assert!(finals[0].error_message.contains("50 characters"), "{}", finals[0].error_message);

    // Capacity.
    start(&mut c, "s2").await;
    start(&mut c, "s3").await;
    let full = c.start_session(StartSessionRequest { session_id: "s4".into(), ..Default::default() }).await;
    assert_eq!(full.unwrap_err().code(), Code::ResourceExhausted);

    // Still serving: the same session speaks again.
    let (_tx, mut frames) = open(&mut c, chunk("s", "fine", true, 1)).await;
    let (_, fin) = to_final(&mut frames).await;
    assert_eq!(fin.end_reason, EndReason::Completed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_with_a_final_frame_and_the_session_speaks_again() {
    let worker = duplex_worker::spawn(realtime_worker_config()).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "s").await;
    let (tx, mut frames) =
        open(&mut c, chunk("s", "A rather long sentence that keeps going for a while.", true, 1)).await;
    for _ in 0..5 {
        assert!(!next(&mut frames).await.is_final);
    }
    let r = c.control(ControlRequest { session_id: "s".into(), command: ControlCommand::Stop as i32, utterance_id: 0 });
    assert!(r.await.unwrap().into_inner().success);
    let (after, fin) = to_final(&mut frames).await;
    assert!(after.len() <= 2, "at most a frame in flight after STOP, got {}", after.len());
    assert_eq!(fin.end_reason, EndReason::Stopped as i32);
    assert!(fin.audio_data.is_empty());
    // STOP is not sticky: the next utterance plays in full.
    tx.send(chunk("s", "Again.", true, 2)).await.unwrap();
    let (before, fin) = to_final(&mut frames).await;
    assert_eq!(before.len() as u64 + 1, mock_frames("Again."));
    assert_eq!(fin.end_reason, EndReason::Completed as i32);
    let seqs: Vec<i64> = before.iter().map(|f| f.sequence_number).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_that_overtakes_an_utterance_still_ends_it_once() {
    let worker = duplex_worker::spawn(worker_config()).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "s").await;
    let mut first = chunk("s", "one", true, 1);
    first.utterance_id = 1;
    let (tx, mut frames) = open(&mut c, first).await;
    let (_, fin) = to_final(&mut frames).await;
    assert_eq!(fin.end_reason, EndReason::Completed as i32);
    // STOP through utterance 2 arrives before utterance 2's text.
    c.control(ControlRequest { session_id: "s".into(), command: ControlCommand::Stop as i32, utterance_id: 2 })
        .await
        .unwrap();
    let mut late = chunk("s", "stale words", true, 2);
    late.utterance_id = 2;
    tx.send(late).await.unwrap();
    let (before, fin) = to_final(&mut frames).await;
    assert!(before.is_empty(), "a stopped utterance is not spoken");
    assert_eq!((fin.utterance_id, fin.end_reason), (2, EndReason::Stopped as i32));
    let mut fresh = chunk("s", "fresh", true, 3);
    fresh.utterance_id = 3;
    tx.send(fresh).await.unwrap();
    let (_, fin) = to_final(&mut frames).await;
    assert_eq!((fin.utterance_id, fin.end_reason), (3, EndReason::Completed as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_act_on_one_session_only_without_loss() {
    let worker = duplex_worker::spawn(realtime_worker_config()).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "a").await;
    start(&mut c, "b").await;
    let text = "Two sessions speak at the same time here.";
    let (_ta, mut fa) = open(&mut c, chunk("a", text, true, 1)).await;
    let (_tb, mut fb) = open(&mut c, chunk("b", text, true, 1)).await;
    let mut got_a = vec![next(&mut fa).await, next(&mut fa).await];
    next(&mut fb).await;

    let pause = ControlRequest { session_id: "a".into(), command: ControlCommand::Pause as i32, utterance_id: 0 };
    c.control(pause).await.unwrap();
    // Frames already on the wire may still arrive; then nothing.
    let mut late = 0;
    while let Ok(f) = tokio::time::timeout(Duration::from_millis(60), fa.message()).await {
        got_a.push(f.unwrap().unwrap());
        late += 1;
    }
    assert!(late <= 5, "{late} frames after PAUSE");
    assert!(tokio::time::timeout(Duration::from_millis(300), fa.message()).await.is_err(), "A is silent while paused");
    // B was not paused: about 300 ms of audio arrived meanwhile.
    let mut b_frames = 0;
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(200) {
        if tokio::time::timeout(Duration::from_millis(100), fb.message()).await.is_ok() {
            b_frames += 1;
        }
    }
    assert!(b_frames >= 4, "B kept speaking while A was paused ({b_frames} frames in 200 ms)");

    let resume = ControlRequest { session_id: "a".into(), command: ControlCommand::Resume as i32, utterance_id: 0 };
    c.control(resume).await.unwrap();
    let (rest, fin) = to_final(&mut fa).await;
    got_a.extend(rest);
    got_a.push(fin.clone());
    assert_eq!(fin.end_reason, EndReason::Completed as i32);
    assert_eq!(got_a.len() as u64, mock_frames(text), "no frame lost or repeated across the pause");
    assert!(got_a.windows(2).all(|w| w[1].sequence_number == w[0].sequence_number + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_waits_for_warm_up_and_reflection_lists_the_service() {
    let mut cfg = worker_config();
    // Warm-up synthesizes once; a slow first audio makes it take ~1 s.
    cfg.models = vec![EngineConfig::Mock(MockConfig { first_audio_latency_ms: 1_000, ..MockConfig::default() })];
    let worker = duplex_worker::spawn(cfg).await.unwrap();
    let ch =
        tonic::transport::Channel::from_shared(format!("http://{}", worker.addr)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let req = || tonic_health::pb::HealthCheckRequest { service: "tts.TTSService".into() };
    let before = health.check(req()).await.unwrap().into_inner().status;
    assert_eq!(before, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
    wait_serving(&worker.addr.to_string(), Duration::from_secs(10)).await;

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"tts.TTSService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_models_report_what_is_configured_and_loaded() {
    let mut cfg = worker_config();
    cfg.models.push(EngineConfig::Mock(MockConfig {
        model_id: "mock-fr".into(),
        languages: vec!["fr".into()],
        ..MockConfig::default()
    }));
    cfg.limits.max_sessions = 7;
    let worker = duplex_worker::spawn(cfg).await.unwrap();
    wait_serving(&worker.addr.to_string(), Duration::from_secs(10)).await;
    let mut c = grpc(worker.addr).await;

    let models = c.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    let find =
        |models: &[duplex_proto::tts::ModelInfo], id: &str| models.iter().find(|m| m.model_id == id).cloned().unwrap();
    assert!(find(&models, "mock").is_loaded);
    assert!(!find(&models, "mock-fr").is_loaded);
    assert_eq!(find(&models, "mock-fr").languages, vec!["fr"]);

    let caps = c.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.resident_models, vec!["mock"]);
    let cap = caps.capabilities.unwrap();
    assert!(cap.streaming);
    assert_eq!(cap.max_concurrent_sessions, 7);
    assert_eq!(cap.languages, vec!["en", "fr"]);

    let loaded = c.load_model(LoadModelRequest { model_id: "mock-fr".into(), preload_only: false }).await.unwrap();
    assert!(loaded.into_inner().success);
    let caps = c.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.resident_models, vec!["mock", "mock-fr"]);
    let unknown = c.load_model(LoadModelRequest { model_id: "nope".into(), preload_only: false }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    let un = c.unload_model(UnloadModelRequest { model_id: "mock-fr".into() }).await.unwrap().into_inner();
    assert!(un.success);
    let models = c.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    assert!(!find(&models, "mock-fr").is_loaded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_sessions_expire_but_streaming_ones_do_not() {
    let mut cfg = worker_config();
    cfg.limits.session_idle_timeout_ms = 200;
    let worker = duplex_worker::spawn(cfg).await.unwrap();
    let mut c = grpc(worker.addr).await;
    start(&mut c, "gone").await;
    start(&mut c, "busy").await;
    let (_tx, mut frames) = open(&mut c, chunk("busy", "hi", true, 1)).await;
    to_final(&mut frames).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pause =
        |id: &str| ControlRequest { session_id: id.into(), command: ControlCommand::Pause as i32, utterance_id: 0 };
    assert_eq!(c.control(pause("gone")).await.unwrap_err().code(), Code::NotFound);
    assert!(c.control(pause("busy")).await.is_ok(), "a session with an open stream stays");
}
