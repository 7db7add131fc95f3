#!/usr/bin/env bash
# The whole speed picture in one run: p2pdns beside unbound and dnsmasq, cached and uncached, at
# saturation and at a user's load (a fixed 2,000 queries a second), then idle. It runs
# tests/bench/dns-cached.sh four times (see there for what each pass does and how fairly) and
# tests/bench/idle.sh once, keeps their full reports, and prints one table of the figures and the
# p2pdns/reference ratios.
#
# It is a benchmark, not a test: it never fails on the figures.
#
# Run as root on Debian 12, from anywhere:   tests/bench/dns-speed.sh
# Prerequisites: apt-get install -y nsd unbound dnsmasq-base dnsperf bind9-dnsutils iproute2
#
# Environment (passed on to the two scripts):
#   DURATION=20   seconds of each timed dnsperf pass
#   RATE=2000     the fixed rate of the "user's load" passes, queries a second
#   ROUNDS=1      rounds of each dns-cached.sh pass (qps and CPU: the median round; latency: all rounds pooled)
#   IDLE_SECS=60  seconds the idle servers are watched (0: no idle pass)
#   P2PDNS_BIN=path   use this p2pdns binary instead of `cargo build --release --locked`
#   OUT=dir       keep the four reports and the idle one there (default: a temporary directory,
#                 removed at the end)
#
# A run takes about 4 x 3 x (DURATION + 10) seconds plus 4 x (IDLE_SECS + 12): 10 minutes with
# the defaults.

set -Eeuo pipefail
export LC_ALL=C

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
DURATION=${DURATION:-20}
RATE=${RATE:-2000}
ROUNDS=${ROUNDS:-1}
IDLE_SECS=${IDLE_SECS:-60}

log() { printf '[speed] %s\n' "$*" >&2; }
die() { printf '[speed] error: %s\n' "$*" >&2; exit 1; }
for var in DURATION RATE ROUNDS IDLE_SECS; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, not '${!var}'"
done
((RATE >= 1)) || die "RATE must be at least 1"

if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
else
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/p2pdns-speed.XXXXXX")
    trap 'rm -rf -- "$OUT"' EXIT
fi
if [[ -z ${P2PDNS_BIN:-} ]]; then
    log "building p2pdns: cargo build --release --locked"
    (cd "$REPO_ROOT" && cargo build --release --locked) >&2
    P2PDNS_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/p2pdns
fi
export P2PDNS_BIN DURATION ROUNDS

passes=("cached 0" "uncached 0" "cached $RATE" "uncached $RATE")
for pass in "${passes[@]}"; do
    read -r kind rate <<<"$pass"
    servers="p2pdns unbound dnsmasq"
    [[ $kind == uncached ]] || servers="p2pdns p2pdns-p2p unbound dnsmasq"
    log "pass: $kind, $( ((rate)) && echo "$rate queries a second" || echo "saturation")"
    RATE=$rate UNCACHED=$([[ $kind == uncached ]] && echo 1 || echo 0) SERVERS=$servers \
        "$SCRIPT_DIR/dns-cached.sh" >"$OUT/$kind-$rate.md" 2>"$OUT/$kind-$rate.log" ||
        die "dns-cached.sh failed; its log: $OUT/$kind-$rate.log (set OUT to keep it)"
done
if ((IDLE_SECS)); then
    log "pass: idle, $IDLE_SECS s per server"
    SECS=$IDLE_SECS "$SCRIPT_DIR/idle.sh" >"$OUT/idle.md" 2>"$OUT/idle.log" ||
        die "idle.sh failed; its log: $OUT/idle.log"
fi

# RESULT cached=1 rate=0 server=p2pdns qps=... avg_ms=... p99_ms=... cpu_pct=... cpu_us=... lost=... rss_mib=...
results=$(cat "$OUT"/cached-*.md "$OUT"/uncached-*.md | grep '^RESULT ')
field() { # line key
    tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"
}
echo
echo "## p2pdns, unbound and dnsmasq: cached and uncached, at saturation and at $RATE queries a second"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -sr), nproc $(nproc); $("$P2PDNS_BIN" --version | awk 'NR == 1')."
echo "Each figure from tests/bench/dns-cached.sh (server on one CPU, dnsperf on the other, UDP, 10 clients,"
echo "100 queries in flight at most); DURATION=$DURATION s per pass, ROUNDS=$ROUNDS."
echo
echo "| answers | load | server | qps | avg ms | p99 ms | CPU per answer us | lost | RSS MiB | qps vs unbound | avg vs unbound | p99 vs unbound | avg vs dnsmasq | p99 vs dnsmasq |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
while read -r line; do
    cached=$(field "$line" cached)
    rate=$(field "$line" rate)
    server=$(field "$line" server)
    ref() { # server key
        grep " cached=$cached rate=$rate server=$1 " <<<"$results" | head -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"
    }
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$( ((cached)) && echo cached || echo uncached)" "$( ((rate)) && echo "$rate/s" || echo saturation)" "$server" \
        "$(field "$line" qps)" "$(field "$line" avg_ms)" "$(field "$line" p99_ms)" "$(field "$line" cpu_us)" \
        "$(field "$line" lost)" "$(field "$line" rss_mib)" \
        "$(ratio "$(field "$line" qps)" "$(ref unbound qps)")" "$(ratio "$(field "$line" avg_ms)" "$(ref unbound avg_ms)")" \
        "$(ratio "$(field "$line" p99_ms)" "$(ref unbound p99_ms)")" "$(ratio "$(field "$line" avg_ms)" "$(ref dnsmasq avg_ms)")" \
        "$(ratio "$(field "$line" p99_ms)" "$(ref dnsmasq p99_ms)")"
done <<<"$results"
echo
echo "At a fixed rate every server answers the same queries: compare latency and CPU, not qps."
for report in "$OUT"/cached-*.md "$OUT"/uncached-*.md; do
    grep -q '^WARNING: other processes' "$report" && echo "WARNING: $(basename "$report" .md): other processes were using the CPUs; see its report."
done
if ((IDLE_SECS)); then
    echo
    sed -n '/^| server/,/^$/p' "$OUT/idle.md" | sed '$d'
    echo "(idle: $IDLE_SECS s per server, alone in a network namespace; tests/bench/idle.sh)"
fi
echo
echo "Reproduce (from the repository root):"
echo
echo "    DURATION=$DURATION RATE=$RATE ROUNDS=$ROUNDS IDLE_SECS=$IDLE_SECS tests/bench/dns-speed.sh"
echo
echo "The four full reports: $OUT/{cached,uncached}-{0,$RATE}.md$([[ $OUT == "${TMPDIR:-/tmp}/p2pdns-speed."* ]] && echo " (removed at exit; set OUT=dir to keep them)")"
