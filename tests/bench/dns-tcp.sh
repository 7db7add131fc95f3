#!/usr/bin/env bash
# Hostile TCP clients: p2pdns beside unbound (issue 15, kind 1).
#
# What it shows, for each resolver in turn (each started alone, under `ulimit -Sn NOFILE`):
# - idle: IDLE TCP connections opened and held without a byte sent; while they are held, whether
#   a new TCP client, a UDP client and a forwarded (p2pdns) name are answered, the resolver's
#   RSS, its open descriptors and the CPU it burns (an accept loop that spins shows here);
# - pipeline: PIPE connections sending `localhost. A` queries for PIPE_SECS seconds without ever
#   reading an answer; the largest RSS seen meanwhile, whether others are answered at the end,
#   and the RSS once the clients have left.
# p2pdns forwards to the unbound instance of the run (zone bench.test, answered locally by it);
# unbound answers bench.test itself. It is a report, not a test: it prints figures and exits 0;
# it fails only when the setup does.
#
# Run as root on Debian 12, from anywhere:   tests/bench/dns-tcp.sh
# Prerequisites: apt-get install -y unbound bind9-dnsutils python3
#
# Environment:
#   P2PDNS_BIN=path   the p2pdns binary (default: a release build of this checkout; a debug
#                     binary works and uses more memory per task, so say which was measured)
#   NOFILE=1024       soft descriptor limit each resolver starts under (p2pdns raises its own
#                     soft limit to the hard one at start; unbound does what it does)
#   IDLE=1100 HOLD=8  idle connections and how long they are held, in seconds
#   SOURCES=1         loopback addresses the idle connections come from in turn (127.0.0.1,
#                     127.0.0.2, ...): more than one reaches the total cap, not the per-client one
#   PIPE=20 PIPE_SECS=10   pipelining connections and for how long they send
#   SERVERS="p2pdns unbound"   which resolvers, in this order
#   KEEP_TMP=1        keep the temporary directory (configs, logs)

set -Eeuo pipefail

export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
CLIENTS_PY=$SCRIPT_DIR/tcp_clients.py

NOFILE=${NOFILE:-1024}
IDLE=${IDLE:-1100}
HOLD=${HOLD:-8}
SOURCES=${SOURCES:-1}
PIPE=${PIPE:-20}
PIPE_SECS=${PIPE_SECS:-10}
SERVERS=${SERVERS:-p2pdns unbound}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[tcp] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
# shellcheck source=common.sh
source "$SCRIPT_DIR/common.sh"

for tool in unbound dig python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install -y unbound bind9-dnsutils python3)"
done
[[ " $SERVERS " == *" p2pdns "* ]] && find_p2pdns
start_workspace tcp
UNBOUND_PORT=$(free_port)
P2PDNS_PORT=$(free_port)

start_unbound() {
    local dir=$WORK/unbound
    mkdir -p "$dir"
    {
        echo "server:"
        unbound_server_lines "$UNBOUND_PORT" "$dir"
        echo '    local-zone: "bench.test." static'
        echo '    local-data: "www.bench.test. 3600 IN A 192.0.2.80"'
    } >"$dir/unbound.conf"
    (ulimit -Sn "$NOFILE" && exec unbound -d -c "$dir/unbound.conf") >>"$WORK/unbound.log" 2>&1 &
    PID[unbound]=$!
}

start_p2pdns() {
    local dir=$WORK/p2pdns
    mkdir -p "$dir"
    cat >"$dir/p2pdns.toml" <<EOF
data_dir = "$dir/data"
[dns]
listen = ["127.0.0.1:$P2PDNS_PORT"]
[upstream]
servers = ["127.0.0.1:$UNBOUND_PORT"]
[p2p]
enabled = false
EOF
    (ulimit -Sn "$NOFILE" && exec "$P2PDNS" run --config "$dir/p2pdns.toml") >>"$WORK/p2pdns.log" 2>&1 &
    PID[p2pdns]=$!
}

port_of() { if [[ $1 == p2pdns ]]; then echo "$P2PDNS_PORT"; else echo "$UNBOUND_PORT"; fi; }

rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# "yes"/"no" for each of: a new TCP client, a UDP client, www.bench.test (forwarded by p2pdns).
probes() { # port
    local tcp=no udp=no fwd=no
    [[ -n $(dig +short +tcp +time=2 +tries=1 -p "$1" @127.0.0.1 localhost A 2>/dev/null) ]] && tcp=yes
    [[ -n $(dig +short +notcp +time=2 +tries=1 -p "$1" @127.0.0.1 localhost A 2>/dev/null) ]] && udp=yes
    [[ -n $(dig +short +time=2 +tries=1 -p "$1" @127.0.0.1 www.bench.test A 2>/dev/null) ]] && fwd=yes
    echo "tcp=$tcp udp=$udp forwarded=$fwd"
}

idle_round() { # name
    local pid=${PID[$1]} port client before cpu0 cpu1 hz
    port=$(port_of "$1")
    hz=$(getconf CLK_TCK)
    before=$(rss_mib "$pid")
    python3 "$CLIENTS_PY" idle 127.0.0.1 "$port" "$IDLE" "$HOLD" "$SOURCES" >"$WORK/idle-$1.out" &
    client=$!
    sleep 3
    cpu0=$(cpu_ticks "$pid")
    sleep 2
    cpu1=$(cpu_ticks "$pid")
    printf '%-8s idle %5d: rss %s -> %s MiB, fds %s, cpu %s%% while held, %s\n' "$1" "$IDLE" \
        "$before" "$(rss_mib "$pid")" "$(fds "$pid")" "$(((cpu1 - cpu0) * 100 / (2 * hz)))" \
        "$(probes "$port")"
    wait "$client"
    sleep 1
    printf '%-8s idle %5d: clients saw %s; rss after %s MiB, %s\n' "$1" "$IDLE" \
        "$(cat "$WORK/idle-$1.out")" "$(rss_mib "$pid")" "$(probes "$port")"
}

pipeline_round() { # name
    local pid=${PID[$1]} port client peak=0 rss
    port=$(port_of "$1")
    python3 "$CLIENTS_PY" pipeline 127.0.0.1 "$port" "$PIPE" "$PIPE_SECS" >"$WORK/pipe-$1.out" &
    client=$!
    while kill -0 "$client" 2>/dev/null; do
        rss=$(rss_mib "$pid")
        awk -v a="$rss" -v b="$peak" 'BEGIN { exit !(a > b) }' && peak=$rss
        sleep 0.5
    done
    wait "$client"
    printf '%-8s pipeline %d x %ss: %s; peak rss %s MiB\n' "$1" "$PIPE" "$PIPE_SECS" \
        "$(cat "$WORK/pipe-$1.out")" "$peak"
    sleep 3
    printf '%-8s pipeline: rss %s MiB 3 s after the clients left, %s\n' "$1" "$(rss_mib "$pid")" \
        "$(probes "$port")"
}

log "NOFILE=$NOFILE IDLE=$IDLE from $SOURCES address(es), PIPE=$PIPE x ${PIPE_SECS}s; $(unbound -V 2>&1 | head -1)"
[[ -n ${P2PDNS:-} ]] && log "p2pdns: $P2PDNS"
start_unbound
wait_answer "$UNBOUND_PORT"
for server in $SERVERS; do
    [[ $server == p2pdns ]] && start_p2pdns && wait_answer "$P2PDNS_PORT"
    idle_round "$server"
    pipeline_round "$server"
done
