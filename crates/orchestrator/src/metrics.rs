//! Prometheus metrics of the orchestrator (names documented in docs/METRICS.md).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub sessions_active: IntGauge,
    /// Tokio tasks alive in the process (read at each scrape; the soak watches it).
    runtime_tasks: IntGauge,
    pub sessions_total: IntCounter,
    pub sessions_rejected: IntCounter,
    pub frames_sent: IntCounter,
    pub utterances: IntCounterVec,
    pub errors: IntCounterVec,
    /// Text received → first audio frame written to the client socket.
    pub first_audio: Histogram,
    /// Control message received → applied (playout halted / flushed).
    pub control: HistogramVec,
    /// Sessions whose unfinished text moved to another worker.
    pub failovers: IntCounter,
    /// Compute time of one 32 ms VAD window.
    pub vad_window: Histogram,
    /// VAD decided the user speaks → the bot's audio stopped (playout flushed).
    pub barge_in: Histogram,
    /// Barge-ins that turned out not to be speech (the reply resumed).
    pub false_barge_ins: IntCounter,
    /// End of the user's speech (VAD decision) → first reply audio frame sent.
    pub turn_latency: Histogram,
    /// Speech recognition time per user turn.
    pub asr: Histogram,
    /// Reply requested → first reply text.
    pub reply_first_text: Histogram,
    /// Transcripts guessed at a pause, by fate: `used` (the turn ended there)
    /// or `withdrawn` (the speech went on).
    pub guesses: IntCounterVec,
}

fn seconds_buckets() -> Vec<f64> {
    vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("duplex".into()), None).expect("valid prefix");
        let sessions_active = IntGauge::new("sessions_active", "WebSocket sessions open now").expect("metric");
        let runtime_tasks = IntGauge::new("runtime_tasks", "Tokio tasks alive in the process").expect("metric");
        let sessions_total = IntCounter::new("sessions_total", "WebSocket sessions accepted").expect("metric");
        let sessions_rejected =
            IntCounter::new("sessions_rejected_total", "WebSocket sessions refused with BUSY").expect("metric");
        let frames_sent = IntCounter::new("frames_sent_total", "20 ms audio frames sent to clients").expect("metric");
        let utterances = IntCounterVec::new(Opts::new("utterances_total", "Utterances ended, by reason"), &["reason"])
            .expect("metric");
        let errors = IntCounterVec::new(Opts::new("errors_total", "Error events sent to clients, by code"), &["code"])
            .expect("metric");
        let first_audio = Histogram::with_opts(
            HistogramOpts::new("first_audio_seconds", "Text received to first audio frame sent")
                .buckets(seconds_buckets()),
        )
        .expect("metric");
        let control = HistogramVec::new(
            HistogramOpts::new("control_seconds", "Control message received to playout changed")
                .buckets(seconds_buckets()),
            &["command"],
        )
        .expect("metric");
        let failovers = IntCounter::new(
            "failovers_total",
            "Times a session's unfinished utterances moved to another worker after its worker failed",
        )
        .expect("metric");
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(seconds_buckets())).expect("metric")
        };
        let vad_window = Histogram::with_opts(
            HistogramOpts::new("vad_window_seconds", "Compute time of one 32 ms VAD window")
                .buckets(vec![0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005]),
        )
        .expect("metric");
        let barge_in = histogram("barge_in_seconds", "VAD decided the user speaks to the bot's audio stopped");
        let false_barge_ins =
            IntCounter::new("false_barge_ins_total", "Barge-ins that were not speech; the reply resumed")
                .expect("metric");
        let turn_latency =
            histogram("turn_latency_seconds", "End of the user's speech (VAD decision) to the first reply audio sent");
        let asr = histogram("asr_seconds", "Speech recognition time per user turn");
        let reply_first_text = histogram("reply_first_text_seconds", "Reply requested to its first text");
        let guesses = IntCounterVec::new(
            Opts::new("asr_guesses_total", "Transcripts started at a pause in the speech, by fate (used, withdrawn)"),
            &["fate"],
        )
        .expect("metric");
        for c in [
            Box::new(sessions_active.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(runtime_tasks.clone()),
            Box::new(sessions_total.clone()),
            Box::new(sessions_rejected.clone()),
            Box::new(frames_sent.clone()),
            Box::new(utterances.clone()),
            Box::new(errors.clone()),
            Box::new(first_audio.clone()),
            Box::new(control.clone()),
            Box::new(failovers.clone()),
            Box::new(vad_window.clone()),
            Box::new(barge_in.clone()),
            Box::new(false_barge_ins.clone()),
            Box::new(turn_latency.clone()),
            Box::new(asr.clone()),
            Box::new(reply_first_text.clone()),
            Box::new(guesses.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            sessions_active,
            runtime_tasks,
            sessions_total,
            sessions_rejected,
            frames_sent,
            utterances,
            errors,
            first_audio,
            control,
            failovers,
            vad_window,
            barge_in,
            false_barge_ins,
            turn_latency,
            asr,
            reply_first_text,
            guesses,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks.set(runtime.metrics().num_alive_tasks() as i64);
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encode metrics");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
