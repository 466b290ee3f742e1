//! `duplex bench-gpu`: the Kyutai TTS model's step time per batch size
//! (`duplex_kyutai::bench`; the same benchmark as the lean `kyutai-bench`).

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct GpuBenchArgs {
    /// Where the random weights are written (once) and read.
    #[arg(long, default_value = ".cache/bench-gpu")]
    pub weights: PathBuf,
    /// `full` (tts-1.6b-en_fr shapes) or `tiny`.
    #[arg(long, default_value = "full")]
    pub size: String,
    #[arg(long, value_delimiter = ',', default_value = "1,8,16,32,64,128")]
    pub batches: Vec<usize>,
    /// Timed steps per batch (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// `cuda` (GPU 0) or `cpu`.
    #[arg(long, default_value = "cuda")]
    pub device: String,
}

pub fn run(args: GpuBenchArgs) -> anyhow::Result<()> {
    let GpuBenchArgs { weights, size, batches, steps, device } = args;
    duplex_kyutai::bench::run(duplex_kyutai::bench::BenchArgs { weights, size, batches, steps, device })
        .map_err(|e| anyhow::anyhow!("{e}"))
}
