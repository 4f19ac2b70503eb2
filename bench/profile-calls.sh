#!/usr/bin/env bash
# Leaves a two-host lattice running for profiling component-to-component calls by hand:
# demo-caller on host A (HTTP on 127.0.0.1:18080), demo-callee on host B, NATS on :14222.
#   bench/profile-calls.sh          start (after `cargo build --release -p trellis-cli` and
#                                   `components/build.sh`)
#   wrk -t1 -c1 -d10s --latency 'http://127.0.0.1:18080/bench?n=100'   # per call = p50 / 100
#   perf record -g -p "$(cat "$RUN_DIR/b.pid")" -- sleep 5             # the callee's host
#   bench/profile-calls.sh stop
# Extra host flags for host A go in $HOST_A_FLAGS (e.g. --disable-colocation).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${RUN_DIR:-${TMPDIR:-/tmp}/trellis-profile-calls}"
stop() {
    for p in a b nats; do
        [ -f "$RUN_DIR/$p.pid" ] && kill "$(cat "$RUN_DIR/$p.pid")" 2>/dev/null || true
    done
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi
stop
T="${CARGO_TARGET_DIR:-target}/release/trellis"
G="$PWD/components/target/wasm32-wasip2/release"
[ -x "$T" ] || { echo "build first: cargo build --release -p trellis-cli" >&2; exit 1; }
[ -f "$G/demo_caller.wasm" ] || { echo "build the guests first: components/build.sh" >&2; exit 1; }
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR/js"
nats-server -a 127.0.0.1 -p 14222 -js -sd "$RUN_DIR/js" >"$RUN_DIR/nats.log" 2>&1 &
echo $! >"$RUN_DIR/nats.pid"
export TRELLIS_NATS_URL=nats://127.0.0.1:14222 TRELLIS_LATTICE=profile
for _ in $(seq 50); do "$T" get hosts >/dev/null 2>&1 && break; sleep 0.1; done
# shellcheck disable=SC2086
"$T" host --allow-file-load --label role=a ${HOST_A_FLAGS:-} >"$RUN_DIR/a.log" 2>&1 &
echo $! >"$RUN_DIR/a.pid"
"$T" host --allow-file-load --label role=b >"$RUN_DIR/b.log" 2>&1 &
echo $! >"$RUN_DIR/b.pid"
host_with() {
    "$T" get hosts -o json | python3 -c 'import json,sys
print(next((h["id"] for h in json.load(sys.stdin) if h.get("labels",{}).get("role")==sys.argv[1]), ""))' "$1"
}
for _ in $(seq 100); do
    A=$(host_with a); B=$(host_with b)
    [ -n "$A" ] && [ -n "$B" ] && break
    sleep 0.1
done
"$T" scale component --count 32 "$B" "file://$G/demo_callee.wasm" callee
"$T" scale component --count 32 "$A" "file://$G/demo_caller.wasm" caller
"$T" link put --interface inventory caller callee trellis:demo
"$T" config put http-addr address=127.0.0.1:18080
"$T" start provider trellis+builtin://http-server http "$A"
"$T" link put --interface incoming-handler --source-config http-addr http caller wasi:http
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ && exit 0; sleep 0.1; done
echo "the caller never answered; logs in $RUN_DIR" >&2
exit 1
