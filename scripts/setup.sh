#!/usr/bin/env bash
# Installs what building etc-shadow needs and skips what is already there.
#   scripts/setup.sh          toolchain for building and running the console
#   scripts/setup.sh --test   the same, plus Chromium and the Playwright test runner
#   scripts/setup.sh --fuzz   cargo-fuzz only (libFuzzer builds with the C++ compiler)
#   scripts/setup.sh --bench  the first, plus what `make bench` needs: etcd (the peer it is
#                             measured against)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
[ "${1:-}" = "--test" ] && want_test=true
want_bench=false
[ "${1:-}" = "--bench" ] && want_bench=true

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "${1:-}" = "--fuzz" ]; then
  # Stable Rust runs cargo-fuzz with `--sanitizer none` (no -Z flags): coverage-guided
  # libFuzzer finds panics, hangs and memory blow-ups, not what only ASan would see.
  if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (about 2 minutes)"
    cargo install cargo-fuzz --locked
  fi
  say "ready to fuzz"
  exit 0
fi

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root for: $*" >&2; exit 1
  fi
}

# Debian packages, installed only when their command is missing.
apt_install() {
  local command=$1; shift
  if ! command -v "$command" >/dev/null; then
    say "installing $* from Debian packages"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
  fi
}

# The etcd client (etcd shadows) generates its gRPC code with protoc when it is built.
apt_install protoc protobuf-compiler

if $want_bench; then
  # etcd is the peer the benchmark is measured against (a 3-member cluster it starts on
  # loopback).
  apt_install etcd etcd-server
  apt_install etcdctl etcd-client
fi

# The toolchain in rust-toolchain.toml (rustup installs it on first use) and its wasm target.
rustup show active-toolchain >/dev/null
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# The console's assets are precompressed with brotli (and gzip) when they are built.
apt_install brotli brotli

# wasm-bindgen-cli must match the wasm-bindgen library in Cargo.lock exactly.
bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qF " $bindgen_version"; then
  say "installing wasm-bindgen-cli $bindgen_version"
  cargo install wasm-bindgen-cli --version "$bindgen_version"
fi

# wasm-opt from binaryen 132 (Debian's is too old for current wasm features).
if ! wasm-opt --version 2>/dev/null | grep -qE 'version[ _]1(3[2-9]|[4-9][0-9])'; then
  say "installing wasm-opt (npm binaryen@132)"
  as_root npm install -g binaryen@132
fi

if $want_test; then
  # The etcd shadows' tests start 3-member clusters on loopback and read them with
  # etcdctl; etcd is also the benchmark's peer.
  apt_install etcd etcd-server
  apt_install etcdctl etcd-client
fi

if $want_test || $want_bench; then
  # The integration suite runs again over PostgreSQL, and the benchmark compares it with
  # SQLite (scripts/with-postgres starts a throwaway server on loopback); the package's
  # cluster is not used.
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    say "installing PostgreSQL from Debian packages"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
  fi
fi

if $want_test; then
  if [ ! -x /usr/bin/chromium ]; then
    say "installing Chromium from Debian packages"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
  fi
  # The tests back up a database with the sqlite3 shell and time nothing else with it.
  if ! command -v sqlite3 >/dev/null; then
    say "installing sqlite3 from Debian packages"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y sqlite3
  fi
  # The deployment units are checked with systemd-analyze (no running systemd needed).
  if ! command -v systemd-analyze >/dev/null; then
    say "installing systemd-analyze (Debian package systemd)"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y systemd
  fi
  if [ ! -x end2end/node_modules/.bin/playwright ] || [ end2end/package-lock.json -nt end2end/node_modules/.package-lock.json ]; then
    say "installing the Playwright test runner (without its browser download)"
    (cd end2end && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
  fi
fi
say "ready"
