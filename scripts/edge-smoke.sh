#!/usr/bin/env bash
# Proves an arm64 `trellis` runs: under qemu-user (Debian's qemu-user-static) it prints its
# version, then `trellis host` joins a real nats-server (JetStream on, a free loopback port,
# a temporary store) and serves the hello component over HTTP. A native `trellis` runs the
# reconciler (`trellis wadm`) and deploys manifests/hello.yaml (rewritten to a free HTTP port
# and an absolute path to http_hello.wasm); the script then curls the app and checks that the
# host serving it reports hostcore.arch=aarch64.
#
#   scripts/edge-smoke.sh [--arm64 PATH] [--native PATH] [--precompile-with PATH]
#
# --arm64   the aarch64 binary [default: $CARGO_TARGET_DIR/aarch64-unknown-linux-musl/edge/trellis,
#           else the aarch64-unknown-linux-gnu one]
# --native  a trellis that runs on this machine for the reconciler and the CLI [default: the
#           x86_64 musl edge binary, else release, else debug in $CARGO_TARGET_DIR]
# --precompile-with  a trellis with the compiler and `trellis compile` (branch edge-compile; an
#           aarch64 one runs under qemu) that compiles
#           hello ahead of time (`trellis compile`) into the host's cache directory: for an
#           --arm64 binary built without the compiler (runtime only, docs/edge-binaries.md)
#
# Everything runs in a temporary directory and is stopped on exit. Exits non-zero on failure.
# An --arm64 binary built for this machine's architecture runs directly, without qemu (to check
# the script, or the x86_64 musl binary).
# Under qemu wasmtime compiles the component for aarch64 with cranelift, emulated: slow, so the
# waits are long (EDGE_SMOKE_TIMEOUT seconds each, default 240).
# Under qemu the host runs with an address-space limit (EDGE_SMOKE_ULIMIT_V_KIB, default 2 GiB,
# as `ulimit -v` takes it): without one, the pooling allocator reserves address space for up to
# 1000 instances (terabytes), and qemu-user tracks every page of a guest mapping, which takes
# minutes of system time and stalls the machine. With a limit the host allocates instances on
# demand with small reservations, as on a small device (integration/tests/small_device.rs).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
timeout_secs="${EDGE_SMOKE_TIMEOUT:-240}"
ulimit_v_kib="${EDGE_SMOKE_ULIMIT_V_KIB:-2097152}"

arm64=""
native=""
precompile_with=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arm64) [ $# -ge 2 ] || { echo "--arm64 needs a path" >&2; exit 2; }; arm64="$2"; shift 2 ;;
    --native) [ $# -ge 2 ] || { echo "--native needs a path" >&2; exit 2; }; native="$2"; shift 2 ;;
    --precompile-with) [ $# -ge 2 ] || { echo "--precompile-with needs a path" >&2; exit 2; }
      precompile_with="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

first_existing() {
  for candidate in "$@"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}
if [ -z "$arm64" ]; then
  arm64=$(first_existing "$target_dir/aarch64-unknown-linux-musl/edge/trellis" \
    "$target_dir/aarch64-unknown-linux-gnu/edge/trellis") || {
    echo "no arm64 trellis in $target_dir: build it with scripts/build-edge.sh, or pass --arm64" >&2
    exit 1
  }
fi
if [ -z "$native" ]; then
  native=$(first_existing "$target_dir/x86_64-unknown-linux-musl/edge/trellis" \
    "$target_dir/release/trellis" "$target_dir/debug/trellis") || {
    echo "no native trellis in $target_dir: build one, or pass --native" >&2
    exit 1
  }
fi
qemu=$(command -v qemu-aarch64-static || true)
nats_server=$(command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true)
[ -n "$qemu" ] || { echo "qemu-aarch64-static is missing: scripts/install-deps.sh --edge" >&2; exit 1; }
[ -n "$nats_server" ] || { echo "nats-server is missing: scripts/install-deps.sh" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "curl is missing" >&2; exit 1; }

hello_wasm="$repo/components/target/wasm32-wasip2/release/http_hello.wasm"
if [ ! -f "$hello_wasm" ]; then
  echo "building the guest components (components/build.sh)" >&2
  "$repo/components/build.sh" >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/trellis-edge-smoke.XXXXXX")
pids=()
cleanup() {
  status=$?
  # TERM first (the host drains and stops its provider), KILL whatever still runs after 20 s.
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for _ in $(seq 200); do
    alive=false
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=true
    done
    [ "$alive" = true ] || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*.log; do
      [ -f "$log" ] || continue
      echo "---- $(basename "$log") (last 40 lines)" >&2
      tail -n 40 "$log" >&2
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
now() { date +%s; }
started=$(now)
step() { echo "[$(( $(now) - started ))s] $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# A trellis that any process (the host's provider children included) can exec: without
# binfmt_misc the kernel cannot run an aarch64 ELF itself, so the wrapper names qemu.
wrapper="$work/trellis-arm64"
if readelf -h "$arm64" 2>/dev/null | grep -q 'AArch64'; then
  arch=aarch64
  runner="$(basename "$qemu")"
  printf '#!/bin/sh\nulimit -v %s\nexec %q %q "$@"\n' "$ulimit_v_kib" "$qemu" "$arm64" >"$wrapper"
else
  arch=$(uname -m)
  runner="no emulation"
  printf '#!/bin/sh\nexec %q "$@"\n' "$arm64" >"$wrapper"
fi
chmod +x "$wrapper"

if [ -n "$precompile_with" ]; then
  if readelf -h "$precompile_with" 2>/dev/null | grep -q 'AArch64'; then
    compiler=("$qemu" "$precompile_with")
    # Code for a host under the wrapper's address-space limit (its memories are reserved
    # differently, see above).
    compile_limit=(--address-space-limit-mb "$(( ulimit_v_kib / 1024 ))")
  else
    compiler=("$precompile_with")
    compile_limit=()
  fi
  step "compiling hello ahead of time: ${compiler[*]} compile"
  "${compiler[@]}" compile "$hello_wasm" -o "$work/cache/" ${compile_limit[@]+"${compile_limit[@]}"} || fail "trellis compile"
fi

step "host binary: $arm64 ($(stat -c %s "$arm64") bytes)"
step "native binary: $native"
version=$("$wrapper" --version) || fail "the arm64 trellis --version"
step "$arch, $runner: $version"

nats_port=$(free_port)
http_port=$(free_port)
lattice="edge-smoke-$$"
nats_url="nats://127.0.0.1:$nats_port"
# A lattice of our own: no NATS credentials or settings of the caller's environment leak in.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^TRELLIS_' || true)
export TRELLIS_DATA_DIR="$work/data"
export TRELLIS_NATS_URL="$nats_url" TRELLIS_LATTICE="$lattice"

mkdir -p "$work/jetstream"
"$nats_server" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/jetstream" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null || fail "nats-server did not start"
step "nats-server on $nats_url (JetStream in $work/jetstream)"

"$native" wadm >"$work/wadm.log" 2>&1 &
pids+=($!)
# Its own compiled-code cache: never the user's, and nothing compiled by an earlier run.
TRELLIS_PROVIDER_EXE="$wrapper" "$wrapper" host --allow-file-load --label edge-smoke=arm64 \
  --cache-dir "$work/cache" \
  >"$work/host-arm64.log" 2>&1 &
pids+=($!)
step "reconciler (native) and $arch host ($runner) started"

deadline=$(( $(now) + timeout_secs ))
until hosts=$(timeout 30 "$native" get hosts --output json 2>/dev/null) && grep -q "\"$arch\"" <<<"$hosts"; do
  [ "$(now)" -lt "$deadline" ] || fail "no $arch host joined the lattice in ${timeout_secs}s"
  sleep 1
done
step "the host joined: $(grep -o '"hostcore.arch": *"[a-z0-9_]*"' <<<"$hosts" | head -n 1)"

sed -e "s|file://\.\./components/target/wasm32-wasip2/release/http_hello.wasm|file://$hello_wasm|" \
  -e "s|127\.0\.0\.1:8080|127.0.0.1:$http_port|" "$repo/manifests/hello.yaml" >"$work/hello.yaml"
grep -q "file://$hello_wasm" "$work/hello.yaml" || fail "manifests/hello.yaml no longer has the image path this script rewrites"
grep -q "127.0.0.1:$http_port" "$work/hello.yaml" || fail "manifests/hello.yaml no longer has the address this script rewrites"
"$native" app deploy "$work/hello.yaml" --wait-secs "$timeout_secs" >"$work/deploy.log" 2>&1 ||
  fail "app deploy: $(cat "$work/deploy.log")"
step "hello deployed"

deadline=$(( $(now) + timeout_secs ))
until body=$(curl -fsS --max-time 30 "http://127.0.0.1:$http_port/" 2>/dev/null) && [ -n "$body" ]; do
  [ "$(now)" -lt "$deadline" ] || fail "http://127.0.0.1:$http_port/ did not answer in ${timeout_secs}s"
  sleep 1
done
step "GET http://127.0.0.1:$http_port/ -> $body"

inventory=$(timeout 30 "$native" get inventory --output json) || fail "get inventory"
grep -q "$arch" <<<"$inventory" || fail "the inventory names no $arch host: $inventory"
grep -q 'http-hello\|http_hello' <<<"$inventory" || fail "the inventory lists no hello component: $inventory"
step "the $arch host runs hello and the HTTP server provider: edge smoke test passed"
