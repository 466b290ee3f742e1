# Duplex recipes. `./dev <recipe>` runs them on a machine without just.
set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Build and run the demo: orchestrator + worker with the Piper voice, http://localhost:8080 (Ctrl-C stops).
demo: deps
    @echo "demo: building (release; the first build takes a few minutes)"
    cargo build --release -p duplex-cli --bin duplex
    cargo run --quiet --release -p duplex-cli --bin duplex -- assets
    cargo run --quiet --release -p duplex-cli --bin duplex -- demo

# The README's screenshot: the demo's page in headless Chromium mid-conversation (docs/screenshot.png).
screenshot: deps assets
    cargo build --release -p duplex-cli --bin duplex
    scripts/screenshot

# Every test: format, lint, the compose file's schema, unit and integration tests (real voice included), predecessor-client compatibility.
test: deps assets fmt-check lint compose-check deny test-rust test-compat fuzz-smoke

# System packages the build needs (espeak-ng for the Piper engine), installed with apt when missing.
deps:
    scripts/install-deps

# Fetch and verify the ONNX Runtime library and the en_US-joe-medium voice into .cache/assets.
assets: deps
    cargo build -p duplex-cli --bin duplex
    cargo run --quiet -p duplex-cli --bin duplex -- assets

# Unit and integration tests (cargo-nextest when installed, else cargo test).
test-rust:
    if cargo nextest --version >/dev/null 2>&1; then \
      cargo nextest run --workspace --no-fail-fast; \
    else \
      cargo test --workspace --no-fail-fast; \
    fi

# Cross-process suite: real worker processes (SIGKILL/SIGSTOP/SIGTERM), WebSocket and gRPC clients.
test-integration:
    if cargo nextest --version >/dev/null 2>&1; then \
      cargo nextest run -p duplex-tests --no-fail-fast; \
    else \
      cargo test -p duplex-tests --no-fail-fast; \
    fi

# LiveKit tests against a real LiveKit server: `docker compose up -d livekit` on this host, or set
# LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET. Without a server the end-to-end test fails here
# (in `just test` it is skipped, with a message, when LIVEKIT_URL is unset).
# The fault-injection suite alone (also part of `just test`): workers SIGKILLed and
# SIGSTOPped mid-utterance and SIGTERMed, Redis restarted, clients that stop reading,
# go silent or never finish a request or TLS handshake, floods, the server's shutdown.
test-faults: deps assets
    cargo nextest run -p duplex-tests --no-fail-fast -E 'test(/^(processes|failover|faults)::/) | test(/flood|shutdown_tells|idle_session/)'

test-livekit: assets
    LIVEKIT_URL="${LIVEKIT_URL:-ws://127.0.0.1:7880}" \
    LIVEKIT_API_KEY="${LIVEKIT_API_KEY:-devkey}" \
    LIVEKIT_API_SECRET="${LIVEKIT_API_SECRET:-duplex-dev-secret-change-me-0123456789}" \
      cargo test -p duplex-tests --test suite livekit -- --nocapture --test-threads 1

# docker-compose.yml against the Compose Specification schema, every profile (no Docker engine needed).
compose-check:
    scripts/compose-check

# The predecessor's Python gRPC client against our worker.
test-compat:
    scripts/compat-test

# Benchmark the mock stack: first audio, control-to-silence, jitter (e.g. `just bench --sessions 1,10`).
bench *ARGS: deps
    cargo build --release -p duplex-cli -p duplex-worker -p duplex-orchestrator
    cargo run --quiet --release -p duplex-cli --bin duplex -- bench {{ARGS}}

# Supply chain (deny.toml): licences, duplicate versions, sources; advisories where reachable.
deny:
    scripts/deny

# Fuzz TARGET (ws_text, ws_binary, segmenter, config; all) for SECONDS each; crashes in fuzz/artifacts.
fuzz TARGET="all" SECONDS="300":
    scripts/fuzz {{TARGET}} {{SECONDS}}

# The short fuzz run of `just test`: the WebSocket codec and the segmenter, 10 s each.
fuzz-smoke:
    scripts/fuzz ci 10

# Soak: MINUTES of conversations on the mock stack; memory, descriptors, tasks and latency over time.
soak MINUTES="10" *ARGS: deps
    cargo build --release -p duplex-cli -p duplex-worker -p duplex-orchestrator
    cargo run --quiet --release -p duplex-cli --bin duplex -- soak --minutes {{MINUTES}} {{ARGS}}

# Benchmark the Piper voice: real-time factor, first audio, concurrent real-time sessions.
bench-tts *ARGS: deps
    cargo build --release -p duplex-cli -p duplex-worker -p duplex-orchestrator
    cargo run --quiet --release -p duplex-cli --bin duplex -- assets
    cargo run --quiet --release -p duplex-cli --bin duplex -- bench-tts {{ARGS}}

# Benchmark routing: selection (with the affinity lookup), registry scans, dead-worker detection, failover (needs Redis; REDIS_URL).
bench-routing: deps
    cargo build --release -p duplex-cli -p duplex-worker -p duplex-orchestrator
    cargo run --quiet --release -p duplex-cli --bin duplex -- bench-routing

# Benchmark the spoken conversation: VAD, ASR, turn latency, barge-in (real voice as the user).
bench-duplex *ARGS: assets
    cargo build --release -p duplex-cli -p duplex-worker -p duplex-orchestrator
    cargo run --quiet --release -p duplex-cli --bin duplex -- bench-duplex {{ARGS}}

# The Kyutai TTS model's step time per batch size on random weights of its shapes (GPU: run
# target-cuda/release/kyutai-bench on the GPU machine; `--device cpu --size tiny` runs anywhere).
bench-gpu *ARGS:
    cargo build --release -p duplex-cli
    cargo run --quiet --release -p duplex-cli --bin duplex -- bench-gpu {{ARGS}}

# CUDA builds of kyutai-bench and duplex-worker (Kyutai TTS on the GPU), CUDA 13.0 toolkit from PyPI, into target-cuda/.
build-cuda:
    scripts/build-cuda

# Opus encode and decode cost per 20 ms frame on real speech, then the CPU of 1/10/25 whole WebRTC calls.
bench-webrtc: assets
    cargo build --release -p duplex-cli
    cargo run --quiet --release -p duplex-cli --bin duplex -- bench-webrtc

# Speak text through a running demo and save it (`just talk "Hello" out.wav`).
talk TEXT OUT="reply.wav":
    cargo run --quiet -p duplex-cli --bin duplex -- talk "{{TEXT}}" --out "{{OUT}}"

# Validate configs/*.yaml.
check-config:
    cargo run --quiet -p duplex-cli --bin duplex -- check-config

# Run the worker alone (port 7001).
worker: assets
    cargo run --release -p duplex-worker -- --config configs/worker.yaml

# Run the orchestrator alone (port 8080, worker at TTS_WORKER_ADDR or the config).
orchestrator:
    cargo run --release -p duplex-orchestrator -- --config configs/orchestrator.yaml

fmt:
    cargo fmt --all

fmt-check:
    cargo fmt --all --check

lint:
    cargo clippy --workspace --all-targets -- -D warnings
