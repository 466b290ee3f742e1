//! After a spoken turn and a typed one, both services' `/metrics` hold every
//! metric docs/METRICS.md lists, and those this conversation exercises are
//! above zero.

use std::time::Duration;

use duplex_cli::client::Event;
use duplex_orchestrator::protocol::{AudioFormat, ClientMessage, ServerMessage};
use duplex_tests::speech::{silence, spoken, with_hearing};
use duplex_tests::*;

/// (metric, labelled) for each row of a table in docs/METRICS.md under `heading`.
fn documented(heading: &str) -> Vec<(String, bool)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/METRICS.md")).unwrap();
    let section = doc.split("\n## ").find(|s| s.starts_with(heading)).unwrap_or_else(|| panic!("section {heading}"));
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let (name, labels) = name.split_once('{').unwrap_or((name, ""));
            Some((name.to_string(), !labels.is_empty()))
        })
        .collect()
}

/// The value of a metric with no labels, or the sum of its series; a
/// histogram's count.
fn value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, v) = line.rsplit_once(' ')?;
        let metric = series.split('{').next().unwrap_or(series);
        if metric == name || metric == format!("{name}_count") {
            *found.get_or_insert(0.0) += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

fn check(text: &str, heading: &str, moved: &[&str]) {
    let docs = documented(heading);
    for (name, labelled) in &docs {
        // A labelled family appears once one of its series exists.
        assert!(*labelled || value(text, name).is_some(), "{heading}: {name} is documented but not served");
    }
    for name in moved {
        assert!(docs.iter().any(|(d, _)| d == name), "{heading}: {name} is served but not documented");
        let v = value(text, name).unwrap_or(0.0);
        assert!(v > 0.0, "{heading}: {name} is {v} after a conversation");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_report_a_conversation() {
    let stack = Stack::start(realtime_worker_config(), with_hearing).await;
    let mut c = stack.client(AudioFormat::Binary).await;
    // A spoken question, answered.
    let mut mic = silence(300, 16_000);
    mic.extend(spoken("What time is it?", 16_000));
    mic.extend(silence(1_500, 16_000));
    for (i, chunk) in mic.chunks(320).enumerate() {
        c.send_mic(16_000, i as u64, chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut listening = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    // Then a typed one; each ends back in listening.
    let mut typed = false;
    while listening < 2 {
        let ev = tokio::time::timeout_at(until, c.next()).await.expect("the turns end").unwrap();
        if let Event::Message { message: ServerMessage::State { state, .. }, .. } = ev
            && state == "listening"
        {
            listening += 1;
            if !typed {
                typed = true;
                c.send(&ClientMessage::UserText { text: "Thank you.".into() }).await.unwrap();
            }
        }
    }
    let orchestrator = http_get(&format!("http://{}/metrics", stack.orchestrator.addr)).await;
    check(
        &orchestrator,
        "Orchestrator",
        &[
            "duplex_sessions_active",
            "duplex_sessions_total",
            "duplex_frames_sent_total",
            "duplex_utterances_total",
            "duplex_first_audio_seconds",
            "duplex_vad_window_seconds",
            "duplex_turn_latency_seconds",
            "duplex_asr_seconds",
            "duplex_asr_guesses_total",
            "duplex_reply_first_text_seconds",
        ],
    );
    let addr = stack.worker.metrics_addr.expect("the worker serves metrics");
    let worker = http_get(&format!("http://{addr}/metrics")).await;
    check(
        &worker,
        "Worker",
        &[
            "duplex_worker_frames_sent_total",
            "duplex_worker_utterances_total",
            "duplex_worker_first_frame_seconds",
            "duplex_worker_sessions_active",
            "duplex_worker_models_resident",
        ],
    );
}
