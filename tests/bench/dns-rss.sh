#!/usr/bin/env bash
# Memory under floods: p2pdns beside unbound (issue 15, "RSS under each attack").
#
# What it shows: for each flood KIND and each resolver, a fresh resolver process is started,
# asked one name (its idle RSS is read then), flooded for FLOOD_SECS seconds, and left alone for
# SETTLE seconds. It prints the resident set (VmRSS of /proc/PID/status) idle, at its peak
# (VmHWM, the kernel's high-water mark), 5 s after the flood and SETTLE s after it, the anonymous
# memory then (smaps_rollup), what the flood client reported, and how many of PROBES queries for
# a name asked once before the flood were answered during it. Memory that stays high SETTLE s
# after the flood is either live data (a cache that is full: bounded by its config) or freed
# memory the allocator keeps; the gap between p2pdns and unbound is what a user sees.
#
# The kinds (KINDS, in this order by default):
#   udp-cached    dnsperf over UDP, NAMES names already cached, as fast as the resolver answers
#   udp-random    dnsperf over UDP, random names under bench.test, each a cache miss: forwarded,
#                 answered (the upstream answers every name) and cached until the cache is full
#   tcp-random    the same over TCP, TCP_CLIENTS connections (under dns.tcp_max_per_client)
#   tcp-pipeline  PIPE connections sending queries for the flood's length without reading any
#                 answer (tests/bench/tcp_clients.py pipeline)
#   tcp-idle      IDLE connections opened and held for the flood's length without a byte sent
#   p2p-random    random .p2p names at P2P_QPS queries a second; p2pdns runs its P2P node,
#                 bootstrapped from a publisher daemon that holds real.p2p, with a stalled peer
#                 (a third daemon, SIGSTOPped once it joined) in the network, so lookups of the
#                 random names go to the DHT and some wait on the stalled peer; unbound forwards
#                 them to the upstream, which answers NXDOMAIN (its p2p. zone is empty). The
#                 probe name is real.p2p for p2pdns.
# Both resolvers forward to one upstream, an unbound of this run answering every name under
# bench.test (local-zone redirect) with an A record of TTL 3600. The measured unbound is a plain
# forwarding resolver with its default caches ("iterator" module, one thread: the setting the
# other benchmarks of this directory use); p2pdns runs with its defaults but for the addresses.
#
# It is a report, not a test: it prints figures and exits 0; it fails only when the setup does.
#
# Run as root on Debian 12, from anywhere:   tests/bench/dns-rss.sh
# Prerequisites: apt-get install -y unbound dnsperf bind9-dnsutils python3
# A run takes about (FLOOD_SECS + SETTLE + 10) s per kind and resolver: 17 minutes by default.
#
# Environment:
#   P2PDNS_BIN=path    the p2pdns binary (default: a release build of this checkout)
#   KINDS="udp-cached udp-random tcp-random tcp-pipeline tcp-idle p2p-random"
#   SERVERS="p2pdns unbound"   which resolvers, in this order
#   FLOOD_SECS=20 SETTLE=60    the flood's length and how long after it RSS is read again
#   CLIENTS=100 OUTSTANDING=5000   dnsperf -c and -q of the UDP floods
#   TCP_CLIENTS=50     dnsperf -c of tcp-random (each client is one connection)
#   PIPE=20 IDLE=1100  connections of tcp-pipeline and tcp-idle
#   P2P_QPS=5000       dnsperf -Q of p2p-random
#   NAMES=100 RANDOM_NAMES=500000   names of the cached and of the random floods
#   PROBES=10          probe queries during each flood (one every FLOOD_SECS/PROBES s)
#   P2PDNS_DNS='max_inflight = 128'   lines added to p2pdns's [dns] section (to see what a
#                      bound changes)
#   KEEP_TMP=1         keep the temporary directory (configs, logs, client output)
#
# Everything listens on 127.0.0.1 high ports only; every process and file is removed on exit,
# including on error or Ctrl-C.

set -Eeuo pipefail

export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
CLIENTS_PY=$SCRIPT_DIR/tcp_clients.py

KINDS=${KINDS:-udp-cached udp-random tcp-random tcp-pipeline tcp-idle p2p-random}
SERVERS=${SERVERS:-p2pdns unbound}
FLOOD_SECS=${FLOOD_SECS:-20}
SETTLE=${SETTLE:-60}
CLIENTS=${CLIENTS:-100}
OUTSTANDING=${OUTSTANDING:-5000}
TCP_CLIENTS=${TCP_CLIENTS:-50}
PIPE=${PIPE:-20}
IDLE=${IDLE:-1100}
P2P_QPS=${P2P_QPS:-5000}
NAMES=${NAMES:-100}
RANDOM_NAMES=${RANDOM_NAMES:-500000}
PROBES=${PROBES:-10}
P2PDNS_DNS=${P2PDNS_DNS:-}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[rss] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
# shellcheck source=common.sh
source "$SCRIPT_DIR/common.sh"

for var in FLOOD_SECS SETTLE CLIENTS OUTSTANDING TCP_CLIENTS PIPE IDLE P2P_QPS NAMES RANDOM_NAMES PROBES; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer, not '${!var}'"
done
((SETTLE >= 5)) || die "SETTLE must be at least 5"
for kind in $KINDS; do
    case $kind in udp-cached | udp-random | tcp-random | tcp-pipeline | tcp-idle | p2p-random) ;;
    *) die "unknown kind '$kind' in KINDS" ;; esac
done
for server in $SERVERS; do
    case $server in p2pdns | unbound) ;; *) die "unknown server '$server' in SERVERS" ;; esac
done
for tool in unbound dnsperf dig python3 ss; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install -y unbound dnsperf bind9-dnsutils python3)"
done
[[ " $SERVERS " == *" p2pdns "* ]] && find_p2pdns
start_workspace rss

# --- query files and the upstream --------------------------------------------------------------

for ((i = 1; i <= NAMES; i++)); do echo "n$i.bench.test A"; done >"$WORK/cached.txt"
# Random 12-letter labels, seeded: every run floods with the same names.
random_names() { # suffix
    awk -v n="$RANDOM_NAMES" -v suffix="$1" 'BEGIN {
        srand(15)
        for (i = 0; i < n; i++) {
            label = ""
            for (j = 0; j < 12; j++) label = label sprintf("%c", 97 + int(rand() * 26))
            print label "." suffix " A"
        }
    }'
}
random_names bench.test >"$WORK/random.txt"
random_names p2p >"$WORK/p2p.txt"

# Writes $1/unbound.conf: an unbound on port $2 with the server: lines given after.
unbound_conf() { # dir port server-lines...
    local dir=$1 port=$2 line
    shift 2
    mkdir -p "$dir"
    {
        echo "server:"
        unbound_server_lines "$port" "$dir"
        for line in "$@"; do echo "    $line"; done
        printf 'remote-control:\n    control-enable: no\n'
    } >"$dir/unbound.conf"
}

UPSTREAM_PORT=$(free_port)
# so-rcvbuf: room for the bursts of forwarded queries: a dropped query would time out in a
# resolver and show as its loss, not the flood's.
unbound_conf "$WORK/upstream" "$UPSTREAM_PORT" 'so-rcvbuf: 4m' \
    'local-zone: "bench.test." redirect' 'local-data: "bench.test. 3600 IN A 192.0.2.80"' \
    'local-zone: "p2p." static' 'local-data: "p2p. 3600 IN SOA ns.p2p. hostmaster.p2p. 1 3600 600 86400 60"'
unbound -d -c "$WORK/upstream/unbound.conf" >>"$WORK/upstream.log" 2>&1 &
PID[upstream]=$!

wait_answer "$UPSTREAM_PORT" n1.bench.test

# --- the P2P network of p2p-random -------------------------------------------------------------

# A p2pdns daemon that is not measured: name, then extra `run` arguments. Its P2P address is
# put in PEER_ADDR once its control socket answers.
start_peer() { # name run-args...
    local name=$1 dir=$WORK/$1 i
    shift
    mkdir -p "$dir/home" "$dir/data"
    printf '[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/%s"]\nmdns = false\ndht_mode = "server"\n' \
        "$(free_port)" >"$dir/p2pdns.toml"
    HOME=$dir/home "$P2PDNS" --config "$dir/p2pdns.toml" --data-dir "$dir/data" \
        run --dns-listen "127.0.0.1:$(free_port)" -q "$@" >>"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    for ((i = 0; i < 100; i++)); do
        PEER_ADDR=$(HOME=$dir/home "$P2PDNS" --data-dir "$dir/data" status 2>/dev/null |
            awk '$1 == "listening:" { print $2; exit }') && [[ -n $PEER_ADDR ]] && return 0
        kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited: $(tail -n 5 "$WORK/$name.log")"
        sleep 0.1
    done
    die "$name shows no P2P address"
}

start_network() {
    start_peer publisher
    PUBLISHER_ADDR=$PEER_ADDR
    HOME=$WORK/publisher/home "$P2PDNS" --data-dir "$WORK/publisher/data" \
        publish real.p2p A 192.0.2.7 --ttl 3600 >/dev/null || die "publishing real.p2p failed"
    start_peer stalled --bootstrap "$PUBLISHER_ADDR"
    # Joined once the publisher has it in its routing table; then it stops answering anything.
    local i
    for ((i = 0; i < 100; i++)); do
        HOME=$WORK/publisher/home "$P2PDNS" --data-dir "$WORK/publisher/data" status |
            grep -Eq '^peers: +[1-9]' && break
        sleep 0.1
    done
    kill -STOP "${PID[stalled]}"
    log "P2P network: publisher $PUBLISHER_ADDR holds real.p2p; a stalled peer is in its routing table"
}

# --- the measured resolvers --------------------------------------------------------------------

start_p2pdns() { # port kind
    local dir=$WORK/p2pdns
    rm -rf "$dir" && mkdir -p "$dir/home"
    {
        echo "data_dir = \"$dir/data\""
        echo "[dns]"
        echo "listen = [\"127.0.0.1:$1\"]"
        [[ -z $P2PDNS_DNS ]] || echo "$P2PDNS_DNS"
        echo "[upstream]"
        echo "servers = [\"127.0.0.1:$UPSTREAM_PORT\"]"
        echo "[p2p]"
        if [[ $2 == p2p-random ]]; then
            echo "listen = [\"/ip4/127.0.0.1/tcp/$(free_port)\"]"
            echo "mdns = false"
            echo "bootstrap = [\"$PUBLISHER_ADDR\"]"
        else
            echo "enabled = false"
        fi
    } >"$dir/p2pdns.toml"
    HOME=$dir/home "$P2PDNS" run --config "$dir/p2pdns.toml" >>"$WORK/p2pdns.log" 2>&1 &
    PID[p2pdns]=$!
}

start_unbound() { # port kind
    local dir=$WORK/unbound
    unbound_conf "$dir" "$1" 'module-config: "iterator"' 'local-zone: "test." nodefault'
    printf 'forward-zone:\n    name: "."\n    forward-addr: 127.0.0.1@%s\n' "$UPSTREAM_PORT" \
        >>"$dir/unbound.conf"
    unbound -d -c "$dir/unbound.conf" >>"$WORK/unbound.log" 2>&1 &
    PID[unbound]=$!
}

# --- one flood ---------------------------------------------------------------------------------

mib() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/${3:-status}"; }

# Starts the flood of kind $1 on port $2 in the background (PID[flood]), its report to $3.
start_flood() { # kind port out
    local dnsperf=(dnsperf -s 127.0.0.1 -p "$2" -l "$FLOOD_SECS" -t 2)
    case $1 in
    udp-cached) "${dnsperf[@]}" -c "$CLIENTS" -q "$OUTSTANDING" -d "$WORK/cached.txt" ;;
    udp-random) "${dnsperf[@]}" -c "$CLIENTS" -q "$OUTSTANDING" -d "$WORK/random.txt" ;;
    tcp-random) "${dnsperf[@]}" -m tcp -c "$TCP_CLIENTS" -q "$OUTSTANDING" -d "$WORK/random.txt" ;;
    p2p-random) "${dnsperf[@]}" -c "$CLIENTS" -q "$OUTSTANDING" -Q "$P2P_QPS" -d "$WORK/p2p.txt" ;;
    tcp-pipeline) python3 "$CLIENTS_PY" pipeline 127.0.0.1 "$2" "$PIPE" "$FLOOD_SECS" ;;
    tcp-idle) python3 "$CLIENTS_PY" idle 127.0.0.1 "$2" "$IDLE" "$FLOOD_SECS" ;;
    esac >"$3" 2>&1 &
    PID[flood]=$!
}

flood_summary() { # kind out
    case $1 in
    tcp-pipeline | tcp-idle) cat "$2" ;;
    *) awk '/Queries completed:/ { done = $3 } /Queries lost:/ { lost = $3 }
            /Queries per second:/ { qps = $4 }
            END { printf "answered=%s lost=%s qps=%.0f\n", done, lost, qps }' "$2" ;;
    esac
}

round() { # kind server
    local kind=$1 server=$2 port pid probe idle answered=0 i out=$WORK/$1.$2.out
    port=$(free_port)
    "start_$server" "$port" "$kind"
    pid=${PID[$server]}
    probe=n1.bench.test
    [[ $kind == p2p-random && $server == p2pdns ]] && probe=real.p2p
    wait_answer "$port" "$probe"
    # The cached flood's names are in the cache before it starts, as the probe name is.
    [[ $kind != udp-cached ]] || dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/cached.txt" -n 1 -q 10 >/dev/null
    sleep 1
    idle=$(mib "$pid" VmRSS)
    start_flood "$kind" "$port" "$out"
    for ((i = 0; i < PROBES; i++)); do
        sleep "$(awk -v s="$FLOOD_SECS" -v n="$PROBES" 'BEGIN { print s / n / 2 }')"
        [[ -n $(dig +short +time=1 +tries=1 -p "$port" @127.0.0.1 "$probe" A 2>/dev/null) ]] &&
            answered=$((answered + 1))
    done
    wait "${PID[flood]}" || true
    unset "PID[flood]"
    kill -0 "$pid" 2>/dev/null || die "$server exited during the $kind flood: $(tail -n 5 "$WORK/$server.log")"
    local peak after5
    peak=$(mib "$pid" VmHWM)
    sleep 5
    after5=$(mib "$pid" VmRSS)
    sleep $((SETTLE - 5))
    printf '%-12s %-8s %7s %7s %7s %7s %7s   %2d/%-2d  %s\n' "$kind" "$server" "$idle" "$peak" \
        "$after5" "$(mib "$pid" VmRSS)" "$(mib "$pid" Anonymous smaps_rollup)" "$answered" "$PROBES" \
        "$(flood_summary "$kind" "$out")"
    stop_pid "$server"
}

# --- the run -----------------------------------------------------------------------------------

echo "## RSS under floods: p2pdns beside unbound (MiB; flood ${FLOOD_SECS} s, read again ${SETTLE} s after)"
echo "p2pdns: ${P2PDNS:-not run} ($("${P2PDNS:-true}" --version 2>/dev/null | awk 'NR == 1'))"
echo "unbound: $(unbound -V 2>&1 | awk 'NR == 1'); $(nproc) CPUs; $(ldd --version | awk 'NR == 1')"
echo "reproduce: KINDS=\"$KINDS\" SERVERS=\"$SERVERS\" FLOOD_SECS=$FLOOD_SECS SETTLE=$SETTLE CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING $0"
if [[ " $KINDS " == *" p2p-random "* && " $SERVERS " == *" p2pdns "* ]]; then
    start_network
fi
printf '%-12s %-8s %7s %7s %7s %7s %7s   %-5s  %s\n' kind server idle peak +5s "+${SETTLE}s" anon \
    probes "flood client"
for kind in $KINDS; do
    for server in $SERVERS; do
        round "$kind" "$server"
    done
done
