#!/usr/bin/env bash
# From a fresh clone to a local lattice serving the hello app: installs what is missing
# (nats-server, the wasm32-wasip2 target), builds the guest components and `trellis`, then runs
# `trellis up --deploy manifests/hello.yaml`: NATS with JetStream, one host and the reconciler,
# with the app deployed. It prints the URL to curl; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "building the guest components and trellis (the first build takes several minutes)"
bash components/build.sh >/dev/null
cargo build --release -p trellis-cli
exec cargo run --quiet --release -p trellis-cli -- up --deploy manifests/hello.yaml "$@"
