//! Test support: start a worker and an orchestrator on port 0, real gRPC and
//! WebSocket clients, and helpers to read frames until an utterance ends.

use std::time::{Duration, Instant};

use duplex_cli::client::{Client, Event};
use duplex_orchestrator::protocol::{AudioFormat, EndReason, ServerMessage};
use duplex_proto::TtsServiceClient;
use duplex_tts::mock::MockConfig;
use duplex_worker::engines::EngineConfig;
use tonic::transport::Channel;

pub use duplex_cli::client;

pub mod browser;
pub mod chat;
pub mod hub;
pub mod pki;
pub mod routing;
pub mod speech;

/// A worker config on 127.0.0.1:0 with the default mock.
pub fn worker_config() -> duplex_worker::Config {
    let mut c = duplex_worker::Config::default();
    c.grpc.host = "127.0.0.1".into();
    c.grpc.port = 0;
    c.metrics.host = "127.0.0.1".into();
    c.metrics.port = 0;
    c.shutdown_grace_ms = 1_000;
    c
}

/// A worker config whose mock synthesizes in real time (1 s of compute per
/// second of audio), so frames trickle out as a slow model's would.
pub fn realtime_worker_config() -> duplex_worker::Config {
    let mut c = worker_config();
    c.models = vec![EngineConfig::Mock(MockConfig { realtime_factor: 1.0, ..MockConfig::default() })];
    c
}

pub fn orchestrator_config(worker: &str) -> duplex_orchestrator::Config {
    let mut c = duplex_orchestrator::Config::default();
    c.transport.websocket.host = "127.0.0.1".into();
    c.transport.websocket.port = 0;
    c.health.enabled = false;
    c.routing.static_worker_addr = worker.to_string();
    c
}

/// The body of a plain HTTP GET (metrics, health).
pub async fn http_get(url: &str) -> String {
    // reqwest is built without a default TLS provider; the process needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(url).await.expect("GET").text().await.expect("body")
}

/// A worker and an orchestrator in this process.
#[derive(Debug)]
pub struct Stack {
    pub worker: duplex_worker::Handle,
    pub orchestrator: duplex_orchestrator::Handle,
}

impl Stack {
    pub async fn start(worker: duplex_worker::Config, tweak: impl FnOnce(&mut duplex_orchestrator::Config)) -> Self {
        let worker = duplex_worker::spawn(worker).await.expect("worker starts");
        // Real voices take seconds to warm; tests start talking once it is ready.
        wait_serving(&worker.addr.to_string(), Duration::from_secs(60)).await;
        let mut oc = orchestrator_config(&format!("grpc://{}", worker.addr));
        tweak(&mut oc);
        let orchestrator = duplex_orchestrator::spawn(oc).await.expect("orchestrator starts");
        Self { worker, orchestrator }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.orchestrator.addr)
    }

    pub async fn client(&self, format: AudioFormat) -> Client {
        let mut c = Client::connect(&self.url(), format).await.expect("connects");
        c.session_start().await.expect("session_start");
        c
    }
}

pub async fn grpc(addr: std::net::SocketAddr) -> TtsServiceClient<Channel> {
    TtsServiceClient::connect(format!("http://{addr}")).await.expect("gRPC connects")
}

/// Frames and messages read from a session.
#[derive(Debug, Default)]
pub struct Heard {
    /// (sequence, utterance, bytes, arrival)
    pub frames: Vec<(u64, u64, usize, Instant)>,
    pub messages: Vec<ServerMessage>,
}

impl Heard {
    pub fn sequences_contiguous(&self) -> bool {
        self.frames.windows(2).all(|w| w[1].0 == w[0].0 + 1)
    }

    /// How each utterance heard so far ended, in order.
    pub fn end_reasons(&self) -> Vec<EndReason> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::UtteranceEnd { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }
}

/// Reads until `stop` says so (or the timeout, which fails the test).
pub async fn read_until(
    client: &mut Client,
    heard: &mut Heard,
    timeout: Duration,
    mut stop: impl FnMut(&Event) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ev = tokio::time::timeout_at(deadline, client.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; heard {} frames, messages {:?}", heard.frames.len(), heard.messages))
            .expect("socket ok");
        let done = stop(&ev);
        match ev {
            Event::Audio { utterance_id, sequence, pcm, at, .. } => {
                heard.frames.push((sequence, utterance_id, pcm.len(), at))
            }
            Event::Message { message, .. } => heard.messages.push(message),
            Event::Closed(code) => panic!("closed ({code:?}) after {:?}", heard.messages),
        }
        if done {
            return;
        }
    }
}

/// Reads whatever arrives within `window`.
pub async fn read_for(client: &mut Client, heard: &mut Heard, window: Duration) {
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(ev) = tokio::time::timeout_at(deadline, client.next()).await {
        match ev.expect("socket ok") {
            Event::Audio { utterance_id, sequence, pcm, at, .. } => {
                heard.frames.push((sequence, utterance_id, pcm.len(), at))
            }
            Event::Message { message, .. } => heard.messages.push(message),
            Event::Closed(_) => return,
        }
    }
}

pub fn is_utterance_end(ev: &Event) -> bool {
    matches!(ev, Event::Message { message: ServerMessage::UtteranceEnd { .. }, .. })
}

pub fn is_error(ev: &Event) -> bool {
    matches!(ev, Event::Message { message: ServerMessage::Error { .. }, .. })
}

/// Frames the mock (75 ms per letter; after speech, half that for a blank,
/// 4x for . ! ? ; :, 2x for a comma; runs of pauses collapse) produces for
/// `text` at speed 1, counting a partial last frame.
pub fn mock_frames(text: &str) -> u64 {
    let per_char = 75 * 48; // samples
    let mut after_speech = false;
    let mut samples = 0;
    for c in text.chars() {
        let (len, voiced) = if c.is_alphanumeric() {
            (per_char, true)
        } else if !after_speech {
            (0, false)
        } else if c.is_whitespace() {
            (per_char / 2, false)
        } else if matches!(c, '.' | '!' | '?' | ';' | ':') {
            (4 * per_char, false)
        } else if c == ',' {
            (2 * per_char, false)
        } else {
            continue;
        };
        samples += len;
        after_speech = voiced;
    }
    (samples as usize).div_ceil(duplex_audio::FRAME_SAMPLES) as u64
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until the gRPC health of `service` at `addr` is SERVING.
pub async fn wait_serving(addr: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
            let req = tonic_health::pb::HealthCheckRequest { service: "tts.TTSService".into() };
            if let Ok(r) = h.check(req).await
                && r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "worker at {addr} not SERVING within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `redis-server` of our own on a free port (tests must not share the
/// machine's Redis); killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self { port: free_port(), child: None };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts it again on the same port (empty: it keeps nothing).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.expect("redis connects")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real worker process on 127.0.0.1:`port`, killed on drop. `bin` is the
/// test's `env!("CARGO_BIN_EXE_duplex-test-worker")` (only integration tests
/// see it); `config_yaml`, when given, is written to a file the worker reads.
pub fn worker_process(bin: &str, port: u16, config_yaml: Option<&str>, env: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(bin);
    if let Some(yaml) = config_yaml {
        let path = std::env::temp_dir().join(format!("duplex-test-worker-{port}.yaml"));
        std::fs::write(&path, yaml).expect("write the worker config");
        cmd.arg("--config").arg(path);
    }
    cmd.args(["--port", &port.to_string()])
        .env("WORKER_HOST", "127.0.0.1")
        .env("WORKER_METRICS_PORT", "0")
        .env("LOG_LEVEL", "warn")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts")
}

/// Waits (up to 20 s) until the orchestrator at `addr` has no session open
/// (`duplex_sessions_active 0`); `what` says whose session should have ended.
pub async fn wait_no_sessions(addr: std::net::SocketAddr, what: &str) {
    let metrics = format!("http://{addr}/metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = http_get(&metrics).await;
        let active =
            text.lines().find_map(|l| l.strip_prefix("duplex_sessions_active ")).unwrap_or("1").trim().to_string();
        if active == "0" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the session outlived {what} ({active} active)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The user transcripts among `messages`, lowercased.
pub fn transcripts(messages: &[ServerMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Transcript { text, .. } => Some(text.to_lowercase()),
            _ => None,
        })
        .collect()
}

/// The bot's reply text among `messages`, joined.
pub fn reply_text(messages: &[ServerMessage]) -> String {
    messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Reply { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}
