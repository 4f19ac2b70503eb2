#!/usr/bin/env bash
# Runs every test: installs what is missing, builds the guest components and the `trellis`
# binary the end-to-end tests drive, then runs the workspace's tests against real nats-server
# processes.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash components/build.sh >/dev/null
# --all-targets resolves features exactly as `cargo test` does, so nothing is compiled twice.
cargo build --workspace --all-targets
cargo test --workspace "$@"
