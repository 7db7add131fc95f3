#!/usr/bin/env bash
# An upstream that flaps under a flood (issue 15, newcomer finding A): how many log lines say
# that it was rested or answers again.
#
# p2pdns forwards to tests/bench/slow_upstream.py (answers after 1.2 s, drops one query in
# four) with upstream.timeout_ms = 1000 and no cache, while dnsperf sends QPS queries a second
# for distinct names for SECS seconds. Each try times out, then its late answer comes: before
# the rests backed off, the upstream went from rested to answering and back about every
# millisecond, with a log line each time. It is a report, not a test: it prints the counts and
# exits 0; it fails only when the setup does.
#
# Run from anywhere:   tests/bench/upstream-flap.sh
# Prerequisites: apt-get install -y dnsperf python3
#
# Environment:
#   P2PDNS_BIN=path   the p2pdns binary (default: a release build of this checkout)
#   QPS=2000 SECS=120 the flood
#   KEEP_TMP=1        keep the temporary directory (config, log)

set -Eeuo pipefail

export LC_ALL=C
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
QPS=${QPS:-2000}
SECS=${SECS:-120}
KEEP_TMP=${KEEP_TMP:-0}

log() { echo "upstream-flap: $*" >&2; }
die() {
    log "$*"
    exit 1
}
# shellcheck source=tests/bench/common.sh
source "$SCRIPT_DIR/common.sh"

command -v dnsperf >/dev/null || die "dnsperf not found: apt-get install -y dnsperf"
find_p2pdns
start_workspace upstream-flap

dns_port=$(free_port)
up_port=$(free_port)
python3 "$SCRIPT_DIR/slow_upstream.py" "$up_port" &
PID[upstream]=$!
cat >"$WORK/p2pdns.toml" <<CONF
[p2p]
enabled = false
[dns]
listen = ["127.0.0.1:$dns_port"]
max_inflight = 65536
[upstream]
servers = ["127.0.0.1:$up_port"]
timeout_ms = 1000
query_timeout_ms = 4000
[cache]
max_entries = 0
CONF
"$P2PDNS" --config "$WORK/p2pdns.toml" --data-dir "$WORK/data" run 2>"$WORK/log" &
PID[p2pdns]=$!
sleep 1
for ((i = 0; i < QPS * SECS; i++)); do echo "n$i.flap.example A"; done >"$WORK/queries"
log "flooding with $QPS queries a second for $SECS s"
dnsperf -s 127.0.0.1 -p "$dns_port" -d "$WORK/queries" -l "$SECS" -Q "$QPS" -q 8000 -c 4 -t 5 \
    >"$WORK/dnsperf" 2>&1 || die "dnsperf failed: $(tail -3 "$WORK/dnsperf")"
stop_pid p2pdns
echo "binary:                 $P2PDNS"
echo "flood:                  $QPS queries/s for $SECS s ($(grep -oP 'Queries sent:\s+\K\d+' "$WORK/dnsperf") sent)"
echo "'not answering' lines:  $(grep -c 'upstream is not answering' "$WORK/log" || true)"
echo "'answers again' lines:  $(grep -c 'upstream answers again' "$WORK/log" || true)"
echo "summaries of them:      $(grep -c 'kind="upstream rested or back"' "$WORK/log" || true)"
echo "log lines in all:       $(wc -l <"$WORK/log")"
