//! Prometheus metrics of the orchestrator (names documented in docs/METRICS.md).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub sessions_active: IntGauge,
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
}

fn seconds_buckets() -> Vec<f64> {
    vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("duplex".into()), None).expect("valid prefix");
        let sessions_active = IntGauge::new("sessions_active", "WebSocket sessions open now").expect("metric");
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
        for c in [
            Box::new(sessions_active.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sessions_total.clone()),
            Box::new(sessions_rejected.clone()),
            Box::new(frames_sent.clone()),
            Box::new(utterances.clone()),
            Box::new(errors.clone()),
            Box::new(first_audio.clone()),
            Box::new(control.clone()),
            Box::new(failovers.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            sessions_active,
            sessions_total,
            sessions_rejected,
            frames_sent,
            utterances,
            errors,
            first_audio,
            control,
            failovers,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
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
