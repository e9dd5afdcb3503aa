#!/usr/bin/env bash
# Starts a throw-away control plane for the end-to-end tests: a fresh data directory, two
# test users made with the CLI (their passwords are known to the tests), the demo's sample
# configuration, and the console on $E2E_LISTEN.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./target/debug/etc-shadow
data=${E2E_DATA_DIR:-$(mktemp -d -t etc-shadow-e2e.XXXXXX)}
rm -rf "$data" && mkdir -p "$data"
trap 'rm -rf "$data"' EXIT
listen=${E2E_LISTEN:-127.0.0.1:3011}
export ETC_SHADOW_DEMO_AGENT_LISTEN=${E2E_AGENT_LISTEN:-127.0.0.1:3111}
echo "e2e-editor-password" | $bin user add e2e-editor --role editor --password-stdin --data-dir "$data"
echo "e2e-approver-password" | $bin user add e2e-approver --role approver --password-stdin --data-dir "$data"
echo "e2e-viewer-password" | $bin user add e2e-viewer --role viewer --password-stdin --data-dir "$data"
echo "e2e-admin-password" | $bin user add e2e-admin --role admin --password-stdin --data-dir "$data"
# Short enough for one journey to outwait it; every other journey acts well within it.
export ETC_SHADOW_REAUTH_WINDOW=${E2E_REAUTH_WINDOW:-30s}
$bin demo --data-dir "$data" --listen "$listen" --site-root target/site-debug &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT INT TERM
wait $server
