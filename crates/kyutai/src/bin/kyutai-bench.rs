//! The GPU benchmark without the rest of Duplex (no Opus, espeak or ONNX
//! Runtime libraries needed where it runs):
//! `kyutai-bench [--device cuda|cpu] [--size full|tiny] [--batches 1,8,64] [--steps 20] [--weights DIR]`.

fn main() {
    let mut args = duplex_kyutai::bench::BenchArgs::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--device" => args.device = value,
            "--size" => args.size = value,
            "--weights" => args.weights = value.into(),
            "--steps" => args.steps = value.parse().unwrap_or(args.steps),
            "--batches" => args.batches = value.split(',').filter_map(|b| b.trim().parse().ok()).collect(),
            other => {
                eprintln!("kyutai-bench: unknown flag {other:?} (--device, --size, --weights, --steps, --batches)");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = duplex_kyutai::bench::run(args) {
        eprintln!("kyutai-bench: {e}");
        std::process::exit(1);
    }
}
