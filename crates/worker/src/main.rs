//! `duplex-worker`: the TTS worker process.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Duplex TTS worker (gRPC, default port 7001).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file; without it the built-in defaults are used.
    #[arg(long, short, env = "WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Port to listen on (overrides the config and WORKER_PORT).
    #[arg(long)]
    port: Option<u16>,
    /// Validate the config, print it and exit.
    #[arg(long)]
    check_config: bool,
    /// Health probe for containers: exit 0 if the local worker is SERVING.
    #[arg(long)]
    probe: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = duplex_worker::Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(port) = args.port {
        config.grpc.port = port;
    }
    if args.probe {
        return duplex_worker::probe(config.grpc.port).await;
    }
    if args.check_config {
        print!("{}", serde_yaml::to_string(&config)?);
        return Ok(());
    }
    let _telemetry = duplex_telemetry::init(&config.log, &config.traces, "duplex-worker")?;
    let shutdown = duplex_telemetry::shutdown_on_signals();
    duplex_worker::run(config, shutdown).await.context("worker failed")
}
