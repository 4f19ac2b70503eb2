#!/usr/bin/env bash
# Builds the `trellis` binary for edge devices with the `edge` cargo profile (see
# docs/edge-binaries.md): a static x86_64 musl binary and an arm64 one cross-compiled with
# Debian's aarch64 toolchain. Prints each binary's path and size, and fails when one is
# 30 MB (30,000,000 bytes) or more.
#
#   scripts/build-edge.sh                                   # the default targets below
#   scripts/build-edge.sh --target aarch64-unknown-linux-gnu
#   scripts/build-edge.sh --profile release --target x86_64-unknown-linux-musl
#
# Needs the cross toolchain and the Rust targets: `scripts/install-deps.sh --edge`.
# Binaries land in $CARGO_TARGET_DIR (default ./target)/<triple>/<profile>/trellis.
set -euo pipefail
cd "$(dirname "$0")/.."

budget_bytes=30000000
profile=edge
targets=()
cargo_extra=()
usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --target TRIPLE (repeatable), --profile NAME (default edge),"
  echo "         --features LIST, --no-default-features (passed to cargo)"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || { usage >&2; exit 2; }; targets+=("$2"); shift 2 ;;
    --target=*) targets+=("${1#--target=}"); shift ;;
    --profile) [ $# -ge 2 ] || { usage >&2; exit 2; }; profile="$2"; shift 2 ;;
    --features) [ $# -ge 2 ] || { usage >&2; exit 2; }; cargo_extra+=(--features "$2"); shift 2 ;;
    --no-default-features) cargo_extra+=(--no-default-features); shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
fi

# Cross linkers and C compilers (ring, zstd-sys and wasmtime's fiber code build C): Debian's
# aarch64-linux-gnu-gcc for both arm64 targets. For musl, rustc links its own self-contained
# musl crt objects and libc.a, so the glibc cross gcc only drives the link.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
# musl-gcc (musl-tools) compiles the C for the x86_64 musl target against musl's headers.
export CC_x86_64_unknown_linux_musl=musl-gcc

installed_targets="$(rustup target list --installed 2>/dev/null || true)"
missing=()
for target in "${targets[@]}"; do
  grep -qx "$target" <<<"$installed_targets" || missing+=("rust target $target")
  case "$target" in
    aarch64-*) command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=("aarch64-linux-gnu-gcc") ;;
    x86_64-*-musl) command -v musl-gcc >/dev/null 2>&1 || missing+=("musl-gcc") ;;
  esac
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "install them with: scripts/install-deps.sh --edge" >&2
  exit 1
fi

target_dir="${CARGO_TARGET_DIR:-target}"
status=0
report=()
for target in "${targets[@]}"; do
  echo "building trellis: --profile $profile --target $target ${cargo_extra[*]}" >&2
  started=$(date +%s)
  cargo build -p trellis-cli --bin trellis --locked --profile "$profile" --target "$target" \
    ${cargo_extra[@]+"${cargo_extra[@]}"}
  took=$(( $(date +%s) - started ))
  binary="$target_dir/$target/$profile/trellis"
  bytes=$(stat -c %s "$binary")
  mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f MB (%.1f MiB)", b / 1e6, b / 1048576 }')
  linkage="dynamically linked"
  if command -v readelf >/dev/null 2>&1 && ! readelf -l "$binary" 2>/dev/null | grep -q 'INTERP'; then
    linkage="static (no ELF interpreter)"
  fi
  verdict="ok"
  if [ "$bytes" -ge "$budget_bytes" ]; then
    verdict="OVER the $budget_bytes-byte budget"
    status=1
  fi
  report+=("$binary  $bytes bytes = $mb, $linkage, built in ${took}s: $verdict")
done
printf '%s\n' "${report[@]}"
exit "$status"
