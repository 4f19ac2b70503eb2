#!/usr/bin/env bash
# Builds every guest component of this workspace for wasm32-wasip2 and prints the paths of the .wasm files.
set -euo pipefail
cd "$(dirname "$0")"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2 >&2
fi
# The guest workspace keeps its own target dir (the shared CARGO_TARGET_DIR, or a target-dir in
# a cargo config file, is for the host workspace): the paths below and the tests rely on it.
unset CARGO_TARGET_DIR
cargo build --release --target wasm32-wasip2 --target-dir target >&2
for wasm in target/wasm32-wasip2/release/*.wasm; do
    echo "$(pwd)/${wasm}"
done
