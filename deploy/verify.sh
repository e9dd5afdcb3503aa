#!/usr/bin/env bash
# Checks the systemd units in deploy/ with `systemd-analyze verify`.
#
#   deploy/verify.sh [CONTROL_PLANE_BINARY] [AGENT_BINARY]
#
# The binaries default to target/debug/etc-shadow and target/debug/etc-shadow-agent.
# systemd-analyze checks that ExecStart's program exists and is executable, so the units
# are copied to a temporary directory with /usr/local/bin/... replaced by these binaries.
# Fails when systemd-analyze exits non-zero or prints any line naming one of our units (an
# unknown or misspelt option, a bad value, a missing program). Lines about other units
# (some machines have broken ones of their own) are shown but do not count.
# Works without systemd running as PID 1 (a container, a build machine).
set -euo pipefail

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
control_binary=${1:-target/debug/etc-shadow}
agent_binary=${2:-target/debug/etc-shadow-agent}

if ! command -v systemd-analyze >/dev/null; then
  echo "verify.sh: systemd-analyze is missing (Debian package: systemd)" >&2
  exit 1
fi

# An absolute path without blanks: it is written into ExecStart as it is.
resolve() {
  local binary=$1 path
  if [[ ! -f $binary || ! -x $binary ]]; then
    echo "verify.sh: $binary is not an executable file (build it first)" >&2
    exit 1
  fi
  path=$(realpath "$binary")
  if [[ $path =~ [[:space:]] ]]; then
    echo "verify.sh: $path contains a blank; give a path without one" >&2
    exit 1
  fi
  printf '%s\n' "$path"
}
control_binary=$(resolve "$control_binary")
agent_binary=$(resolve "$agent_binary")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies unit $1 into $work with ExecStart's program $2 replaced by $3; exactly one
# ExecStart must start with it, so a renamed program cannot make the check pass unseen.
rewrite() {
  local unit=$1 installed=$2 real=$3 line rewritten=0
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == "ExecStart=$installed "* || $line == "ExecStart=$installed" ]]; then
      line="ExecStart=$real${line#"ExecStart=$installed"}"
      rewritten=$((rewritten + 1))
    fi
    printf '%s\n' "$line"
  done <"$deploy/$unit" >"$work/$unit"
  if ((rewritten != 1)); then
    echo "verify.sh: $unit: expected one ExecStart=$installed, found $rewritten" >&2
    exit 1
  fi
}
rewrite etc-shadow.service /usr/local/bin/etc-shadow "$control_binary"
rewrite etc-shadow-agent.service /usr/local/bin/etc-shadow-agent "$agent_binary"

units=(etc-shadow.service etc-shadow-agent.service)
status=0
# --man=no: no man page to look up. SYSTEMD_LOG_LEVEL=info: a quieter level set by the
# caller would hide the very warnings this check is about.
output=$(SYSTEMD_LOG_LEVEL=info systemd-analyze verify --man=no "${units[@]/#/$work/}" 2>&1) || status=$?
[[ -n $output ]] && printf '%s\n' "$output"

# Our units' lines: their file path or their unit name (etc-shadow.service is not a
# substring of etc-shadow-agent.service, so each name is matched on its own).
ours=$(grep -F -e "$work/" -e etc-shadow.service -e etc-shadow-agent.service <<<"$output" || true)
if ((status != 0)) || [[ -n $ours ]]; then
  echo "verify.sh: FAILED (systemd-analyze exit status $status)" >&2
  [[ -n $ours ]] && printf 'about our units:\n%s\n' "$ours" >&2
  exit 1
fi
echo "verify.sh: ${units[*]} pass systemd-analyze verify"
