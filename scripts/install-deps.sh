#!/usr/bin/env bash
# Installs what Trellis needs to build and test, skipping what is already there:
# nats-server, redis-server, docker-registry, apache2-utils, openssl and chromium (Debian
# packages), wrk for benchmarks, and the wasm32-wasip2 Rust target for guest components.
#
#   scripts/install-deps.sh          # what the build and the tests need
#   scripts/install-deps.sh --edge   # also the edge toolchain (docs/edge-binaries.md): musl-tools,
#                                    # Debian's aarch64 cross gcc and libc, qemu-user-static, and
#                                    # the x86_64/aarch64 musl and aarch64 gnu Rust targets
set -euo pipefail

edge=false
for arg in "$@"; do
  case "$arg" in
    --edge) edge=true ;;
    *) echo "unknown argument: $arg (known: --edge)" >&2; exit 2 ;;
  esac
done

need_apt=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need_apt+=(redis-server)
# The OCI registry the distribution tests push to and pull from (CNCF distribution), and
# htpasswd for its basic-auth setup.
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || [ -x /usr/bin/htpasswd ] || need_apt+=(apache2-utils)
# The NATS TLS tests make a throwaway CA with the openssl CLI.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The benchmark harness drives HTTP load with wrk (the header above always promised it).
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
# The dashboard's browser tests drive headless Chromium (integration/tests/dashboard.rs).
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ "$edge" = true ]; then
  command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_apt+=(gcc-aarch64-linux-gnu)
  [ -f /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need_apt+=(libc6-dev-arm64-cross)
  command -v qemu-aarch64-static >/dev/null 2>&1 || need_apt+=(qemu-user-static)
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "installing ${need_apt[*]} (Debian packages)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "installing the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2
fi

if [ "$edge" = true ]; then
  installed_targets="$(rustup target list --installed 2>/dev/null || true)"
  for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl aarch64-unknown-linux-gnu; do
    if ! grep -qx "$target" <<<"$installed_targets"; then
      echo "installing the $target Rust target"
      rustup target add "$target"
    fi
  done
fi

# The OTLP/HTTP receiver the observability tests send telemetry to (PyPI, pinned).
if ! command -v oteltap >/dev/null 2>&1; then
  echo "installing oteltap (PyPI)"
  python3 -m pip install --quiet "oteltap==1.0.0"
fi
