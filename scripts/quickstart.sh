#!/usr/bin/env bash
# From a fresh clone to a running local lattice: installs what is missing, builds the guest
# components and `trellis`, starts nats-server (JetStream, state in a temp dir) and one host,
# and scales the hello component onto it. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash components/build.sh >/dev/null
cargo build --release -p trellis-cli
exec target/release/trellis up "$@" 2>/dev/null || true
