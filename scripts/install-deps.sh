#!/usr/bin/env bash
# Installs what Trellis needs to build and test, skipping what is already there:
# nats-server, redis-server, docker-registry, apache2-utils and openssl (Debian packages), wrk
# for benchmarks, and the wasm32-wasip2 Rust target for guest components.
set -euo pipefail

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

# The OTLP/HTTP receiver the observability tests send telemetry to (PyPI, pinned).
if ! command -v oteltap >/dev/null 2>&1; then
  echo "installing oteltap (PyPI)"
  python3 -m pip install --quiet "oteltap==1.0.0"
fi
