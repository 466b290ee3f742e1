//! The browser page in a real headless Chromium (WebDriver), with a WAV file
//! as its microphone, against an orchestrator and worker in this process:
//! it loads without errors, typed text is spoken and heard (measured in the
//! page after playback), speaking over the bot empties playback within
//! 100 ms of the server's `clear`, the spoken question appears as a
//! transcript with the bot's reply, and a dropped connection comes back
//! without reloading the page.

use std::time::Duration;

use duplex_tests::browser::{Browser, write_wav};
use duplex_tests::speech::{silence, spoken, with_hearing};
use duplex_tests::*;

const MIC_RATE: u32 = 48_000;
const LONG_TEXT: &str = "Hello! This is Duplex, speaking in real time from a worker. It goes on for a while, \
                         so that there is something to talk over: one sentence after another, at an easy pace.";

fn fake_mic(name: &str, question: &str) -> std::path::PathBuf {
    let mut pcm = silence(300, MIC_RATE);
    if !question.is_empty() {
        pcm.extend(spoken(question, MIC_RATE));
    }
    pcm.extend(silence(15_000, MIC_RATE)); // the file loops; nothing more is said in the test's time
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    write_wav(&path, &pcm, MIC_RATE);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_in_headless_chromium() {
    let mic = fake_mic("browser-question.wav", "What is the weather like in Paris today?");
    let stack = Stack::start(realtime_worker_config(), with_hearing).await;
    let b = Browser::start(&mic).await;
    b.goto(&format!("http://{}/", stack.orchestrator.addr)).await;
    b.wait_for("return window.duplex && window.duplex.stats.connected", Duration::from_secs(15)).await;
    b.wait_for("return document.querySelectorAll('#voice option').length > 1", Duration::from_secs(5)).await;

    // Typed words are a turn: the bot answers (the echo responder says them
    // back), and the page hears it play.
    b.type_into("#text", LONG_TEXT).await;
    b.click("#send").await;
    let audible =
        b.wait_for("const s = duplex.stats; return s.audibleMs > 400 && s.audibleMs", Duration::from_secs(20)).await;
    eprintln!("typed text audible for {audible} ms so far");

    // Speaking over it: the server clears, the page's playback is silent at once.
    b.click("#talk").await;
    let clear_ms =
        b.wait_for("const c = duplex.stats.clears; return c.length > 0 && c[0] + 0.001", Duration::from_secs(20)).await;
    let clear_ms = clear_ms.as_f64().unwrap();
    eprintln!("clear → silent output after {clear_ms:.1} ms");
    assert!(clear_ms <= 100.0, "playback emptied {clear_ms:.1} ms after the clear");

    // The question: the user's words and the bot's reply in the page, and the reply is heard.
    let before = b.eval("return duplex.stats.audibleMs").await.as_f64().unwrap();
    let typed = b.eval("return document.querySelector('#transcript li.user .text').textContent").await;
    assert_eq!(typed, LONG_TEXT, "the typed turn is in the transcript");
    let user = b
        .wait_for(
            "const u = document.querySelectorAll('#transcript li.user .text'); return u.length > 1 && u[1].textContent",
            Duration::from_secs(30),
        )
        .await;
    let user = user.as_str().unwrap().to_lowercase();
    assert!(user.contains("weather"), "transcript in the page: {user:?}");
    // The typed turn's reply is shown cut where it was interrupted; the question's reply follows.
    let cut = b.eval("return document.querySelector('#transcript li.bot .mark') !== null").await;
    assert_eq!(cut, true, "the interrupted reply is marked");
    let bot = b
        .wait_for(
            "const r = document.querySelectorAll('#transcript li.bot .text'); return r.length > 1 && r[1].textContent.includes('weather') && r[1].textContent",
            Duration::from_secs(20),
        )
        .await;
    assert!(bot.as_str().unwrap().starts_with("You said"), "reply in the page: {bot}");
    b.wait_for(&format!("return duplex.stats.audibleMs > {before} + 500"), Duration::from_secs(20)).await;
    let states = b.eval("return duplex.stats.statesSeen").await;
    for state in ["user_speaking", "thinking", "speaking"] {
        assert!(states.as_array().unwrap().iter().any(|s| s == state), "state {state} shown: {states}");
    }
    let latency = b
        .wait_for(
            "const l = document.getElementById('latency').textContent; return l.includes('after you stopped') && l",
            Duration::from_secs(5),
        )
        .await;
    eprintln!("latency readout: {latency}");

    let png = b.screenshot().await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("duplex-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    let errors = b.eval("return duplex.errors").await;
    assert_eq!(errors, serde_json::json!([]), "errors in the page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_shown_and_comes_back_without_a_reload() {
    let mic = fake_mic("browser-silence.wav", "");
    let stack = Stack::start(realtime_worker_config(), |_| {}).await;
    let b = Browser::start(&mic).await;
    b.goto(&format!("http://{}/", stack.orchestrator.addr)).await;
    b.wait_for("return window.duplex && window.duplex.stats.connected", Duration::from_secs(15)).await;
    b.eval("window.__sameDocument = true; return true").await;

    // The orchestrator goes away: the page says so in words.
    let addr = stack.orchestrator.addr;
    stack.orchestrator.shutdown.cancel();
    let shown = b
        .wait_for(
            "const e = document.getElementById('error'); return !e.hidden && e.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(shown.as_str().unwrap().contains("Reconnecting"), "{shown}");

    // It comes back on the same address: the page reconnects by itself.
    let mut config = orchestrator_config(&format!("grpc://{}", stack.worker.addr));
    config.transport.websocket.port = addr.port();
    let _again = loop {
        match duplex_orchestrator::spawn(config.clone()).await {
            Ok(h) => break h,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    b.wait_for("return duplex.stats.connected && duplex.stats.connections >= 2", Duration::from_secs(20)).await;
    assert_eq!(b.eval("return window.__sameDocument === true").await, true, "no reload");
    let hidden = b.eval("return document.getElementById('error').hidden").await;
    assert_eq!(hidden, true, "the error is gone once connected");
}

/// The screenshot in the README (`just screenshot`): the running demo (real
/// voice, local language model) at `DUPLEX_PAGE`, a typed question and a
/// spoken one; the page as the second answer is being spoken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a running demo; run by `just screenshot`"]
async fn screenshot_of_a_running_demo() {
    let page = std::env::var("DUPLEX_PAGE").unwrap_or_else(|_| "http://127.0.0.1:8080/".into());
    let out = std::env::var("DUPLEX_SCREENSHOT").unwrap_or_else(|_| "../docs/screenshot.png".into());
    let mic = fake_mic("browser-demo.wav", "What is the capital of France?");
    let b = Browser::start(&mic).await;
    b.goto(&page).await;
    b.wait_for("return window.duplex && window.duplex.stats.connected", Duration::from_secs(15)).await;
    b.type_into("#text", "Hello! Who are you?").await;
    b.click("#send").await;
    b.wait_for("return document.querySelectorAll('#transcript li.bot').length > 0", Duration::from_secs(30)).await;
    b.wait_for("return duplex.stats.state === 'listening'", Duration::from_secs(60)).await;
    b.click("#talk").await;
    b.wait_for(
        "const r = document.querySelectorAll('#transcript li.bot .text'); return r.length > 1 && r[1].textContent.length > 25",
        Duration::from_secs(60),
    )
    .await;
    // Its audio is playing (the turn's latencies come with its first frame).
    b.wait_for(
        "return document.getElementById('latency').textContent.includes('after you stopped')",
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::write(&out, b.screenshot().await).unwrap();
    eprintln!("wrote {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_over_webrtc_in_headless_chromium() {
    // The call takes a moment to connect and the typed turn to start
    // playing: the question comes 3 s into the microphone, over the bot.
    let mut pcm = silence(3_000, MIC_RATE);
    pcm.extend(spoken("What is the weather like in Paris today?", MIC_RATE));
    pcm.extend(silence(15_000, MIC_RATE));
    let mic = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-webrtc.wav");
    write_wav(&mic, &pcm, MIC_RATE);
    let stack = Stack::start(realtime_worker_config(), |c| {
        with_hearing(c);
        c.transport.webrtc.udp_bind = "127.0.0.1:0".into();
    })
    .await;
    let b = Browser::start(&mic).await;
    b.goto(&format!("http://{}/", stack.orchestrator.addr)).await;
    b.wait_for("return window.duplex && window.duplex.stats.connected", Duration::from_secs(15)).await;
    b.eval("document.getElementById('transport').value = 'webrtc'; return true").await;
    b.click("#talk").await;
    b.wait_for("return duplex.stats.rtc === 'connected'", Duration::from_secs(15)).await;

    // A typed turn over the data channel: the bot's answer plays from the call's track...
    b.type_into("#text", LONG_TEXT).await;
    b.click("#send").await;
    b.wait_for("return duplex.stats.audibleMs > 300", Duration::from_secs(20)).await;
    // ...until the question is spoken over it: the track falls silent at once.
    let clear_ms =
        b.wait_for("const c = duplex.stats.clears; return c.length > 0 && c[0] + 0.001", Duration::from_secs(20)).await;
    let clear_ms = clear_ms.as_f64().unwrap();
    eprintln!("WebRTC: clear → silent track after {clear_ms:.1} ms");
    assert!(clear_ms <= 100.0, "the bot's track went silent {clear_ms:.1} ms after the clear");

    let user = b
        .wait_for(
            "const u = [...document.querySelectorAll('#transcript li.user .text')].map(e => e.textContent)
               .find(t => t.toLowerCase().includes('weather')); return u || false",
            Duration::from_secs(30),
        )
        .await;
    assert!(user.as_str().unwrap().to_lowercase().contains("weather"), "transcript over WebRTC: {user}");
    let bot = b
        .wait_for(
            "const r = [...document.querySelectorAll('#transcript li.bot .text')].map(e => e.textContent)
               .find(t => t.includes('weather')); return r || false",
            Duration::from_secs(20),
        )
        .await;
    assert!(bot.as_str().unwrap().starts_with("You said"), "{bot}");
    // The reply is heard from the call's audio track.
    let before = b.eval("return duplex.stats.audibleMs").await.as_f64().unwrap();
    b.wait_for(&format!("return duplex.stats.audibleMs > {before} + 500"), Duration::from_secs(20)).await;
    let errors = b.eval("return duplex.errors").await;
    assert_eq!(errors, serde_json::json!([]), "errors in the page");
}

/// The page's LiveKit mode as far as it goes without a LiveKit server (none
/// can be installed here): the page gets a token from the orchestrator,
/// loads the livekit-client library from the asset cache, tries the room,
/// and says in words that the server cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_mode_says_when_the_livekit_server_is_unreachable() {
    let mic = fake_mic("browser-livekit.wav", "");
    let closed = free_port();
    let stack = Stack::start(worker_config(), |c| {
        c.transport.livekit = duplex_livekit::LiveKitConfig {
            url: format!("ws://127.0.0.1:{closed}"),
            api_key: "devkey".into(),
            api_secret: "a-dev-secret-of-at-least-32-characters".into(),
            client_library: duplex_tests::speech::assets().join("web/livekit-client.umd.js"),
            ..Default::default()
        };
    })
    .await;
    let b = Browser::start(&mic).await;
    b.goto(&format!("http://{}/", stack.orchestrator.addr)).await;
    b.wait_for("return window.duplex && window.duplex.stats.connected", Duration::from_secs(15)).await;
    b.eval("document.getElementById('transport').value = 'livekit'; return true").await;
    b.click("#talk").await;
    let error = b
        .wait_for(
            "const e = document.getElementById('error'); return !e.hidden && e.textContent.includes('LiveKit') && e.textContent",
            Duration::from_secs(30),
        )
        .await;
    let error = error.as_str().unwrap();
    assert!(error.contains(&format!("Could not reach the LiveKit server at ws://127.0.0.1:{closed}")), "{error}");
    assert_eq!(b.eval("return typeof window.LivekitClient.Room").await, "function", "the library loaded");
    assert_eq!(b.eval("return duplex.stats.livekit").await, "failed");
    assert_eq!(b.eval("return document.getElementById('talk').getAttribute('aria-pressed')").await, "false");
}
