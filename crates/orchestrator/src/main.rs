//! `duplex-orchestrator`: the session server.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Duplex orchestrator (WebSocket on 8080, probes on 8081).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file; without it the built-in defaults are used.
    #[arg(long, short, env = "ORCHESTRATOR_CONFIG")]
    config: Option<PathBuf>,
    /// WebSocket port (overrides the config and ORCHESTRATOR_WS_PORT).
    #[arg(long)]
    port: Option<u16>,
    /// Worker address, e.g. grpc://localhost:7001 (overrides TTS_WORKER_ADDR).
    #[arg(long)]
    worker: Option<String>,
    /// Validate the config, print it and exit.
    #[arg(long)]
    check_config: bool,
    /// Health probe for containers: exit 0 if the local /ready answers 200.
    #[arg(long)]
    probe: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = duplex_orchestrator::Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(port) = args.port {
        config.transport.websocket.port = port;
    }
    if let Some(worker) = args.worker {
        config.routing.static_worker_addr = worker;
    }
    config.validate()?;
    if args.probe {
        return duplex_orchestrator::server::probe(config.transport.websocket.port).await;
    }
    if args.check_config {
        print!("{}", serde_yaml::to_string(&config)?);
        return Ok(());
    }
    let _telemetry = duplex_telemetry::init(&config.log, &config.traces, "duplex-orchestrator")?;
    let shutdown = duplex_telemetry::shutdown_on_signals();
    duplex_orchestrator::run(config, shutdown).await.context("orchestrator failed")
}
