#!/usr/bin/env bash
# Runs the Trellis benchmark harness: builds the release `trellis` binary and the guest
# components, starts a real lattice, measures it against `wasmtime serve`, and writes
# BENCHMARKS.md and bench/results/latest.json.
#   bench/run.sh            full run (< 10 minutes)
#   bench/run.sh --quick    short run (< 2 minutes)
#   bench/run.sh --skip-anchor   without wasmtime serve (no ratios)
# The anchor (wasmtime-cli 48.0.8) is installed into $TRELLIS_BENCH_CACHE (default
# ~/.cache/trellis-bench) the first time; that takes tens of minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p trellis-bench >&2
exec "${CARGO_TARGET_DIR:-target}/release/trellis-bench" "$@"
