#!/usr/bin/env bash
# The foreign implementation of the p2pdns protocol (tests/foreign/README.md): installs its locked
# npm packages, checks every vector of docs/protocol-vectors.json, then runs the end-to-end test
# against the daemon at $P2PDNS_BIN (default: target/debug/p2pdns, or $CARGO_TARGET_DIR/debug/p2pdns;
# a relative path is taken from the repository's root).
#
#   tests/foreign/run.sh
#   P2PDNS_BIN=/path/to/p2pdns tests/foreign/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export P2PDNS_BIN="${P2PDNS_BIN:-${CARGO_TARGET_DIR:-target}/debug/p2pdns}"

for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || { echo "tests/foreign: $tool is not installed" >&2; exit 1; }
done
echo "tests/foreign: node $(node --version), npm $(npm --version)"
npm ci --no-audit --no-fund --loglevel=error >/dev/null

node vectors.js

# e2e.js kills what it started, also on a timeout or a signal; should it be killed itself, the
# trap ends the daemons it listed ("PID DIR" lines), by process id, once it has checked that the
# process still runs on that temporary directory, and removes the directory.
pids="$(mktemp)"
leftovers() {
    while read -r pid dir; do
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/"; then
            echo "tests/foreign: killing left-over p2pdns process $pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        case "$dir" in */p2pdns-foreign-*) [ ! -d "$dir" ] || { sleep 0.2; rm -rf "$dir"; } ;; esac
    done <"$pids"
    rm -f "$pids"
}
trap leftovers EXIT
E2E_PID_FILE="$pids" timeout -k 10 150 node e2e.js
