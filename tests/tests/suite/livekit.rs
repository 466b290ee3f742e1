//! LiveKit without a LiveKit server (none can be installed here): a stand-in
//! SFU in the test speaks LiveKit's signal protocol (protobuf over a
//! WebSocket, the messages built from `livekit-protocol`) and runs two real
//! WebRTC peers like the server does — it offers the user's microphone to our
//! agent on the subscriber connection and answers the agent's publisher
//! offer. The agent is the real one (`livekit-signaling`'s client, our media),
//! sent into the room by `POST /livekit/join`; its session is the ordinary
//! one. What the stand-in cannot show: that a real server accepts our SDP,
//! trickle and data packets — `just test-livekit` runs against one.

use std::time::Duration;

use duplex_livekit::LiveKitConfig;
use duplex_livekit::token::Tokens;
use duplex_orchestrator::protocol::ServerMessage;
use duplex_rtc::caller::Caller;
use duplex_rtc::peer::{CallConfig, Inbound};
use duplex_tests::speech::{silence, spoken, with_hearing};
use duplex_tests::*;
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Request;
use proto::signal_response::Message as Response;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request as Upgrade, Response as Accepted};

const ROOM: &str = "lobby";

fn livekit_config(url: &str) -> LiveKitConfig {
    LiveKitConfig {
        url: url.into(),
        api_key: "devkey".into(),
        api_secret: "a-dev-secret-of-at-least-32-characters".into(),
        empty_room_grace_ms: 500,
        udp_bind: "127.0.0.1:0".into(),
        ..Default::default()
    }
}

/// What the stand-in SFU saw.
#[derive(Debug)]
enum Seen {
    /// The `Authorization` the agent connected with, and the query.
    Connected { authorization: String, query: String },
    /// Decoded audio of the agent's voice track.
    Voice(Vec<i16>),
    /// A message of the agent's on its data channel (decoded user packet).
    Said(String),
    /// The agent asked to leave.
    Left,
}

fn response(message: Response) -> Message {
    Message::Binary(proto::SignalResponse { message: Some(message) }.encode_to_vec().into())
}

fn participant(
    sid: &str,
    identity: &str,
    kind: proto::participant_info::Kind,
    state: proto::participant_info::State,
) -> proto::ParticipantInfo {
    proto::ParticipantInfo {
        sid: sid.into(),
        identity: identity.into(),
        kind: kind as i32,
        state: state as i32,
        ..Default::default()
    }
}

/// Serves one agent connection like a LiveKit server would, with "alice" in
/// the room speaking `question`, typing "Thank you." after the first reply and
/// leaving once told to (`alice_leaves`).
// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn stand_in_sfu(
    listener: TcpListener,
    question: Vec<i16>,
    seen: mpsc::Sender<Seen>,
    mut alice_leaves: mpsc::Receiver<()>,
    mut alice_types: mpsc::Receiver<()>,
) {
    use proto::participant_info::{Kind, State};
    let (tcp, _) = listener.accept().await.unwrap();
    let (mut authorization, mut query) = (String::new(), String::new());
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Upgrade, resp: Accepted| {
        authorization = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        query = req.uri().query().unwrap_or_default().to_string();
        assert_eq!(req.uri().path(), "/rtc");
        Ok(resp)
    })
    .await
    .unwrap();
    seen.send(Seen::Connected { authorization, query }).await.unwrap();
    let alice = participant("PA_alice", "alice", Kind::Standard, State::Active);
    ws.send(response(Response::Join(proto::JoinResponse {
        room: Some(proto::Room { sid: "RM_1".into(), name: ROOM.into(), ..Default::default() }),
        participant: Some(participant("PA_agent", "duplex-agent", Kind::Agent, State::Joined)),
        other_participants: vec![alice.clone()],
        server_version: "stand-in".into(),
        // What a LiveKit server sends by default.
        ping_interval: 5,
        ping_timeout: 15,
        ..Default::default()
    })))
    .await
    .unwrap();

    // Alice's microphone, offered on the agent's subscriber connection with
    // the server's `_reliable` data channel.
    let (alice_mic, offer) = Caller::offer_with_channel("_reliable").await.unwrap();
    let alice_mic = std::sync::Arc::new(alice_mic);
    ws.send(response(Response::Offer(proto::SessionDescription {
        r#type: "offer".into(),
        sdp: offer,
        id: 1,
        ..Default::default()
    })))
    .await
    .unwrap();

    let mut publisher_call = None;
    loop {
        let next = tokio::select! {
            next = ws.next() => next,
            Some(()) = alice_leaves.recv() => {
                let gone = participant("PA_alice", "alice", Kind::Standard, State::Disconnected);
                ws.send(response(Response::Update(proto::ParticipantUpdate { participants: vec![gone] }))).await.unwrap();
                continue;
            }
            Some(()) = alice_types.recv() => {
                let text = r#"{"type":"user_text","text":"Thank you."}"#;
                alice_mic.send_bytes(&duplex_livekit::data::encode(text)).await.unwrap();
                continue;
            }
        };
        let Some(Ok(Message::Binary(bytes))) = next else { break };
        let Some(request) = proto::SignalRequest::decode(bytes.as_ref()).unwrap().message else { continue };
        match request {
            Request::Answer(answer) => {
                let mic = alice_mic.clone();
                let pcm = question.clone();
                tokio::spawn(async move {
                    mic.connect(&answer.sdp).await.unwrap();
                    for frame in pcm.chunks_exact(960) {
                        mic.send_audio(frame).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            }
            Request::AddTrack(track) => {
                assert_eq!(track.r#type, proto::TrackType::Audio as i32);
                ws.send(response(Response::TrackPublished(proto::TrackPublishedResponse {
                    cid: track.cid.clone(),
                    track: Some(proto::TrackInfo {
                        sid: "TR_voice".into(),
                        name: track.name,
                        r#type: track.r#type,
                        ..Default::default()
                    }),
                })))
                .await
                .unwrap();
            }
            Request::Offer(offer) => {
                let call = duplex_rtc::peer::answer(&offer.sdp, &CallConfig::default()).await.unwrap();
                ws.send(response(Response::Answer(proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp: call.answer.clone(),
                    ..Default::default()
                })))
                .await
                .unwrap();
                let (_, mut inbound, _, _, hangup) = call.into_parts();
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Some(item) = inbound.recv().await {
                        let event = match item {
                            Inbound::Audio(pcm) => Seen::Voice(pcm),
                            Inbound::Bytes(bytes) => match duplex_livekit::data::decode(&bytes) {
                                Some(text) => Seen::Said(text),
                                None => continue,
                            },
                            Inbound::Text(_) => continue,
                        };
                        if seen.send(event).await.is_err() {
                            break;
                        }
                    }
                    hangup.close().await;
                });
                publisher_call = Some(());
            }
            Request::PingReq(ping) => {
                let pong = proto::Pong { last_ping_timestamp: ping.timestamp, timestamp: ping.timestamp };
                ws.send(response(Response::PongResp(pong))).await.unwrap();
            }
            Request::Leave(_) => {
                let _ = seen.send(Seen::Left).await;
                break;
            }
            _ => {}
        }
    }
    assert!(publisher_call.is_some(), "the agent never offered its voice");
    alice_mic.hang_up().await;
}

/// Keeps the transcripts and replies of a data message; true when it says
/// the bot went back to listening after having replied.
fn note(messages: &mut Vec<ServerMessage>, text: &str) -> bool {
    let msg: ServerMessage = serde_json::from_str(text).unwrap();
    let now_listening = matches!(&msg, ServerMessage::State { state, .. } if state == "listening");
    if matches!(&msg, ServerMessage::Reply { .. } | ServerMessage::Transcript { .. }) {
        messages.push(msg);
    }
    now_listening && messages.iter().any(|m| matches!(m, ServerMessage::Reply { .. }))
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_joins_a_room_hears_alice_answers_and_leaves_when_she_goes() {
    let sfu = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", sfu.local_addr().unwrap());
    let stack = Stack::start(realtime_worker_config(), |c| {
        with_hearing(c);
        c.transport.livekit = livekit_config(&url);
    })
    .await;
    let mut question = silence(300, 48_000);
    question.extend(spoken("What is the weather like in Paris today?", 48_000));
    question.extend(silence(1_200, 48_000));
    let (seen_tx, mut seen) = mpsc::channel(4_096);
    let (leave_tx, leave_rx) = mpsc::channel(1);
    let (type_tx, type_rx) = mpsc::channel(1);
    let sfu = tokio::spawn(stand_in_sfu(sfu, question, seen_tx, leave_rx, type_rx));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let join = http
        .post(format!("http://{}/livekit/join", stack.orchestrator.addr))
        .json(&serde_json::json!({ "room": ROOM }))
        .send()
        .await
        .unwrap();
    assert_eq!(join.status(), 202, "{:?}", join.text().await);
    // A second agent is not sent into the same room.
    let again = http
        .post(format!("http://{}/livekit/join", stack.orchestrator.addr))
        .json(&serde_json::json!({ "room": ROOM }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    let (mut messages, mut voice) = (Vec::new(), Vec::new());
    let mut connected = None;
    let mut listening = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut left = false;
    loop {
        let Ok(Some(event)) = tokio::time::timeout_at(until, seen.recv()).await else { break };
        match event {
            Seen::Connected { authorization, query } => connected = Some((authorization, query)),
            Seen::Voice(pcm) => voice.extend(pcm),
            Seen::Said(text) => {
                if note(&mut messages, &text) {
                    listening += 1;
                    if listening == 1 {
                        type_tx.send(()).await.unwrap();
                    } else if listening == 2 {
                        leave_tx.send(()).await.unwrap();
                    }
                }
            }
            Seen::Left => {
                left = true;
                break;
            }
        }
    }

    // The agent connected with a token for this room, of kind agent.
    let (authorization, query) = connected.expect("the agent connected");
    let token = authorization.strip_prefix("Bearer ").expect("a bearer token");
    let claims = Tokens::new(&livekit_config(&url)).unwrap().verify(token).unwrap();
    assert_eq!(
        (claims.video.room.as_str(), claims.sub.as_str(), claims.kind.as_str()),
        (ROOM, "duplex-agent", "agent")
    );
    assert!(query.contains("protocol=16") && query.contains("auto_subscribe=1"), "{query}");

    // Alice's spoken question and typed thanks were heard and answered.
    let transcripts = transcripts(&messages);
    assert!(transcripts.first().is_some_and(|t| t.contains("weather")), "{messages:?}");
    assert!(transcripts.iter().any(|t| t == "thank you."), "{transcripts:?}");
    let reply = reply_text(&messages);
    assert!(reply.starts_with("You said"), "{reply:?}");
    assert!(voice.len() > 48_000, "{} samples of the agent's voice", voice.len());
    assert!(rms(&voice) > 500.0, "the agent's voice came over its track");

    // Alice left: the agent left the room after its grace and its session ended.
    assert!(left, "the agent did not leave the empty room");
    sfu.await.unwrap();
    wait_no_sessions(stack.orchestrator.addr, "the room").await;
}

#[tokio::test]
async fn tokens_are_minted_for_valid_names_in_allowed_rooms_only() {
    let stack = Stack::start(worker_config(), |c| {
        c.transport.livekit =
            LiveKitConfig { allowed_rooms: vec!["support-*".into()], ..livekit_config("ws://lk.example:7880") };
    })
    .await;
    let base = format!("http://{}/livekit/token", stack.orchestrator.addr);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let get = |q: &str| reqwest::get(format!("{base}?{q}"));
    let ok: serde_json::Value = get("room=support-3&identity=alice").await.unwrap().json().await.unwrap();
    assert_eq!(ok["url"], "ws://lk.example:7880");
    assert_eq!(ok["ttl_s"], 600);
    let tokens = Tokens::new(&livekit_config("ws://x")).unwrap();
    let claims = tokens.verify(ok["token"].as_str().unwrap()).unwrap();
    assert_eq!((claims.video.room.as_str(), claims.sub.as_str()), ("support-3", "alice"));

    let refused = get("room=admin&identity=alice").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("allowed_rooms"));
    assert_eq!(get("room=support-3&identity=al%20ice").await.unwrap().status(), 400);
    assert_eq!(get("room=support-3").await.unwrap().status(), 400);

    // LiveKit's signed webhook: a user joining a room sends the agent (which
    // then fails to reach this made-up server: 502 says so); the agent's own
    // join is not a reason to send it again.
    let webhook = |body: &'static str, secret: &str| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body.as_bytes()));
        let jwt =
            livekit_api::access_token::AccessToken::with_api_key("devkey", secret).with_sha256(&hash).to_jwt().unwrap();
        reqwest::Client::new()
            .post(format!("http://{}/livekit/webhook", stack.orchestrator.addr))
            .header("Authorization", jwt)
            .body(body)
            .send()
    };
    let secret = livekit_config("").api_secret;
    let joined = r#"{"event":"participant_joined","room":{"name":"support-3"},"participant":{"identity":"alice"}}"#;
    let sent = webhook(joined, &secret).await.unwrap();
    assert_eq!(sent.status(), 502);
    assert!(sent.text().await.unwrap().contains("could not join room \"support-3\""));
    let own = r#"{"event":"participant_joined","room":{"name":"support-3"},"participant":{"identity":"duplex-agent"}}"#;
    assert_eq!(webhook(own, &secret).await.unwrap().status(), 200);
    let forged = webhook(joined, "another-secret-of-at-least-32-characters").await.unwrap();
    assert_eq!(forged.status(), 401);
    // A webhook without LiveKit's signature is refused.
    let hook = reqwest::Client::new()
        .post(format!("http://{}/livekit/webhook", stack.orchestrator.addr))
        .header("Authorization", "Bearer not-a-token")
        .body(r#"{"event":"participant_joined","room":{"name":"support-3"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 401);
}

#[tokio::test]
async fn without_livekit_configured_the_endpoints_say_so() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::get(format!("http://{}/livekit/token?room=a&identity=b", stack.orchestrator.addr)).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("LiveKit is not configured"));
}

/// Against a real LiveKit server, when `LIVEKIT_URL`, `LIVEKIT_API_KEY` and
/// `LIVEKIT_API_SECRET` say where (`just test-livekit` sets the compose dev
/// server's). "alice" is our own participant code with a user token: she
/// speaks the question on her track and types on the data channel; the agent
/// is sent in by `POST /livekit/join`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_real_livekit_server() {
    let (Ok(url), Ok(api_key), Ok(api_secret)) =
        (std::env::var("LIVEKIT_URL"), std::env::var("LIVEKIT_API_KEY"), std::env::var("LIVEKIT_API_SECRET"))
    else {
        eprintln!(
            "SKIPPED: no LiveKit server (set LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET or run `just test-livekit`)"
        );
        return;
    };
    let config =
        LiveKitConfig { url: url.clone(), api_key, api_secret, empty_room_grace_ms: 2_000, ..Default::default() };
    let stack = Stack::start(realtime_worker_config(), |c| {
        with_hearing(c);
        c.transport.livekit = config.clone();
    })
    .await;
    let room = format!("duplex-test-{}", std::process::id());
    let alice_token = Tokens::new(&config).unwrap().for_user(&room, "alice").unwrap();
    let alice_config = duplex_livekit::agent::AgentConfig {
        udp_bind: "0.0.0.0:0".into(),
        opus_bitrate_bps: 32_000,
        // Alice stays whoever else is there.
        empty_room_grace: Duration::from_secs(3_600),
    };
    let mut alice =
        duplex_livekit::agent::join(&url, &alice_token, &alice_config, &Default::default()).await.expect("alice joins");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let join = reqwest::Client::new()
        .post(format!("http://{}/livekit/join", stack.orchestrator.addr))
        .json(&serde_json::json!({ "room": room }))
        .send()
        .await
        .unwrap();
    assert_eq!(join.status(), 202, "{:?}", join.text().await);

    let mut question = silence(1_000, 48_000);
    question.extend(spoken("What is the weather like in Paris today?", 48_000));
    question.extend(silence(1_200, 48_000));
    let speaker = alice.outbound.clone();
    tokio::spawn(async move {
        for frame in question.chunks_exact(960) {
            let _ = speaker.send(duplex_livekit::Outbound::Audio(frame.to_vec())).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (mut messages, mut voice) = (Vec::new(), Vec::new());
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut typed = false;
    loop {
        let Ok(Some(item)) = tokio::time::timeout_at(until, alice.inbound.recv()).await else { break };
        match item {
            Inbound::Audio(pcm) => voice.extend(pcm),
            Inbound::Bytes(_) => {}
            Inbound::Text(text) => {
                if note(&mut messages, &text) {
                    if typed {
                        break;
                    }
                    typed = true;
                    let text = r#"{"type":"user_text","text":"Thank you."}"#.to_string();
                    alice.outbound.send(duplex_livekit::Outbound::Text(text)).await.unwrap();
                }
            }
        }
    }
    let transcripts = transcripts(&messages);
    assert!(transcripts.first().is_some_and(|t| t.contains("weather")), "{messages:?}");
    assert!(transcripts.iter().any(|t| t == "thank you."), "{transcripts:?}");
    assert!(rms(&voice) > 500.0 && voice.len() > 48_000, "the agent's voice reached alice");

    // Alice leaves; the agent follows after its grace and its session ends.
    alice.ended.cancel();
    let _ = alice.gone.await;
    wait_no_sessions(stack.orchestrator.addr, "the empty room").await;
}
