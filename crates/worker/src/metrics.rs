//! Prometheus metrics of the worker, on a port of their own
//! (`metrics.port`, 9464 by default; names in docs/METRICS.md). Counters and
//! histograms are kept as synthesis goes; gauges are read from the worker's
//! state at each scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::State;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub frames_sent: IntCounter,
    /// Utterances ended, by reason (completed, stopped, empty, error).
    pub utterances: IntCounterVec,
    /// An utterance's first text received → its first audio frame sent.
    pub first_frame: Histogram,
    sessions_active: IntGauge,
    runtime_tasks: IntGauge,
    jobs_active: IntGauge,
    models_resident: IntGauge,
    rtf: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("duplex_worker".into()), None).expect("valid prefix");
        let frames_sent =
            IntCounter::new("frames_sent_total", "20 ms audio frames sent to orchestrators").expect("metric");
        let utterances = IntCounterVec::new(Opts::new("utterances_total", "Utterances ended, by reason"), &["reason"])
            .expect("metric");
        let first_frame = Histogram::with_opts(
            HistogramOpts::new("first_frame_seconds", "An utterance's first text received to its first frame sent")
                .buckets(vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]),
        )
        .expect("metric");
        let sessions_active = IntGauge::new("sessions_active", "Sessions open on this worker").expect("metric");
        let runtime_tasks = IntGauge::new("runtime_tasks", "Tokio tasks alive in the process").expect("metric");
        let jobs_active = IntGauge::new("jobs_active", "Utterances being synthesized now").expect("metric");
        let models_resident = IntGauge::new("models_resident", "Models loaded now").expect("metric");
        let rtf = Gauge::new("rtf", "Measured real-time factor (engine time / audio time), worst resident model")
            .expect("metric");
        for c in [
            Box::new(frames_sent.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(utterances.clone()),
            Box::new(first_frame.clone()),
            Box::new(sessions_active.clone()),
            Box::new(runtime_tasks.clone()),
            Box::new(jobs_active.clone()),
            Box::new(models_resident.clone()),
            Box::new(rtf.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            frames_sent,
            utterances,
            first_frame,
            sessions_active,
            runtime_tasks,
            jobs_active,
            models_resident,
            rtf,
        }
    }

    /// Utterances ended, all reasons.
    pub fn utterances_total(&self) -> u64 {
        ["completed", "stopped", "empty", "error"].iter().map(|r| self.utterances.with_label_values(&[r]).get()).sum()
    }

    /// The text exposition format, gauges read from `state` now.
    pub fn render(&self, state: &State) -> String {
        self.sessions_active.set(state.sessions.len() as i64);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks.set(runtime.metrics().num_alive_tasks() as i64);
        }
        self.jobs_active.set(state.models.active_jobs() as i64);
        self.models_resident.set(state.models.resident().len() as i64);
        self.rtf.set(state.models.rtf());
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encode metrics");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}

async fn scrape(AxumState(state): AxumState<Arc<State>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&state))
}

/// Serves `/metrics` on `listener` until `stop`.
pub fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "worker metrics listening");
    let app = Router::new().route("/metrics", get(scrape)).with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    })
}
