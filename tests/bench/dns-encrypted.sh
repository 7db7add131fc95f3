#!/usr/bin/env bash
# Encrypted-upstream benchmark: forwarded (uncached) queries through p2pdns to one upstream
# over plain UDP, over DNS over TLS (RFC 7858) and over DNS over HTTPS (RFC 8484), side by side.
#
# What it measures: the cost of the upstream transport. unbound is the upstream for all three
# rows: one process answering the zone bench.test (NAMES A records, local-data) on a UDP port,
# a TLS port and an HTTPS port (unbound's tls-port and https-port, with a certificate from a CA
# this script makes with openssl). p2pdns runs with its cache off (cache.max_entries = 0), so
# every query dnsperf sends it is forwarded; dnsperf cycles through the names. The table gives
# queries per second, latency and lost queries for each transport, and how many TCP
# connections p2pdns held to the upstream port at the end of the pass (pipelining: one).
#
# It is a benchmark, not a test: it prints figures and never fails on speed; it fails only when
# the setup does (a missing tool, a server that does not start or answers wrongly).
#
# Run as root on Debian 12, from anywhere:   tests/bench/dns-encrypted.sh
# Prerequisites: apt-get install -y unbound dnsperf bind9-dnsutils openssl iproute2
# (Debian's unbound is built with libnghttp2, which https-port needs: `unbound -V`.)
#
# Environment:
#   DURATION=10       seconds of the timed dnsperf pass, per transport
#   CLIENTS=10        dnsperf -c
#   OUTSTANDING=50    dnsperf -q: queries in flight at once
#   NAMES=5000        names in the zone, queried in a cycle (many, so that identical questions
#                     in flight, which p2pdns asks upstream once, stay rare)
#   TRANSPORTS="udp tls https"   which rows to measure, in this order
#   SERVER_CPU=0 CLIENT_CPU=1    CPUs for p2pdns and unbound, and for dnsperf
#   P2PDNS_BIN=path   use this p2pdns binary instead of `cargo build --release --locked`
#   KEEP_TMP=1        keep the temporary directory (configs, logs, dnsperf output)
#
# Everything listens on 127.0.0.1 high ports only; all processes and files are removed on exit.

set -Eeuo pipefail

export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-10}
OUTSTANDING=${OUTSTANDING:-50}
NAMES=${NAMES:-5000}
TRANSPORTS=${TRANSPORTS:-udp tls https}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[dns-encrypted] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# shellcheck source=tests/bench/common.sh
source "$SCRIPT_DIR/common.sh"

for tool in unbound dnsperf dig openssl ss taskset; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (see Prerequisites)"
done
unbound -V 2>/dev/null | grep -q nghttp2 || die "this unbound has no DNS over HTTPS (built without libnghttp2)"

find_p2pdns
start_workspace encrypted

# A CA and a certificate for dns.bench.test from it.
make_certificates() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=p2pdns bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=dns.bench.test" -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:dns.bench.test\n' >"$WORK/san.ext"
    openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
        -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null
}

UDP_PORT=$(free_port)
TLS_PORT=$(free_port)
HTTPS_PORT=$(free_port)
DNS_PORT=$(free_port)

start_unbound() {
    {
        printf 'server:\n'
        unbound_server_lines "$UDP_PORT" "$WORK"
        cat <<EOF
    interface: 127.0.0.1@$TLS_PORT
    interface: 127.0.0.1@$HTTPS_PORT
    tls-port: $TLS_PORT
    https-port: $HTTPS_PORT
    tls-service-key: "$WORK/server.key"
    tls-service-pem: "$WORK/server.pem"
    http-endpoint: "/dns-query"
    incoming-num-tcp: 100
    local-zone: "bench.test." static
EOF
        for ((i = 1; i <= NAMES; i++)); do
            printf '    local-data: "n%d.bench.test. 3600 IN A 192.0.2.%d"\n' "$i" $((i % 250 + 1))
        done
    } >"$WORK/unbound.conf"
    taskset -c "$SERVER_CPU" unbound -d -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 &
    PID[unbound]=$!
    wait_answer "$UDP_PORT" n1.bench.test
}

# p2pdns forwarding to unbound over $1, cache off.
start_p2pdns() { # transport
    local server
    case $1 in
    udp) server="\"127.0.0.1:$UDP_PORT\"" ;;
    tls) server="{ server = \"tls://127.0.0.1:$TLS_PORT#dns.bench.test\", ca_file = \"$WORK/ca.pem\" }" ;;
    https) server="{ server = \"https://127.0.0.1:$HTTPS_PORT/dns-query#dns.bench.test\", ca_file = \"$WORK/ca.pem\" }" ;;
    esac
    cat >"$WORK/p2pdns-$1.toml" <<EOF
[dns]
listen = ["127.0.0.1:$DNS_PORT"]
[upstream]
servers = [$server]
[cache]
max_entries = 0
[p2p]
enabled = false
EOF
    mkdir -p "$WORK/home"
    HOME=$WORK/home taskset -c "$SERVER_CPU" env -u RUST_LOG -u P2PDNS_CONFIG -u P2PDNS_DATA_DIR \
        "$P2PDNS" --config "$WORK/p2pdns-$1.toml" --data-dir "$WORK/data-$1" run \
        >"$WORK/p2pdns-$1.log" 2>&1 &
    PID[p2pdns]=$!
    wait_answer "$DNS_PORT" n1.bench.test
}

for ((i = 1; i <= NAMES; i++)); do printf 'n%d.bench.test A\n' "$i"; done >"$WORK/queries"

make_certificates
start_unbound
log "unbound on 127.0.0.1: UDP $UDP_PORT, TLS $TLS_PORT, HTTPS $HTTPS_PORT; $NAMES names"

declare -A QPS LAT LOST CONNS
for transport in $TRANSPORTS; do
    start_p2pdns "$transport"
    log "$transport: ${DURATION}s of dnsperf -c $CLIENTS -q $OUTSTANDING"
    taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$DNS_PORT" -d "$WORK/queries" \
        -c "$CLIENTS" -q "$OUTSTANDING" -l "$DURATION" -t 5 >"$WORK/dnsperf-$transport.txt" 2>&1
    case $transport in
    udp) port=$UDP_PORT ;;
    tls) port=$TLS_PORT ;;
    https) port=$HTTPS_PORT ;;
    esac
    CONNS[$transport]=$(ss -Htn state established "dport = :$port" | wc -l)
    QPS[$transport]=$(awk '/Queries per second/ {print $4}' "$WORK/dnsperf-$transport.txt")
    LAT[$transport]=$(awk '/Average Latency/ {printf "%.2f", $4 * 1000}' "$WORK/dnsperf-$transport.txt")
    LOST[$transport]=$(awk '/Queries lost/ {print $3 " " $4}' "$WORK/dnsperf-$transport.txt")
    stop_pid p2pdns
done

printf '\nforwarded (uncached) queries through p2pdns, upstream unbound on loopback\n'
printf '%-8s %12s %16s %18s %22s\n' transport "queries/s" "avg latency ms" "lost" "connections to upstream"
for transport in $TRANSPORTS; do
    printf '%-8s %12s %16s %18s %22s\n' "$transport" "${QPS[$transport]}" "${LAT[$transport]}" \
        "${LOST[$transport]}" "$([[ $transport == udp ]] && echo - || echo "${CONNS[$transport]}")"
done
printf '\n(dnsperf -c %s -q %s -l %s, %s names, p2pdns and unbound on CPU %s, dnsperf on CPU %s)\n' \
    "$CLIENTS" "$OUTSTANDING" "$DURATION" "$NAMES" "$SERVER_CPU" "$CLIENT_CPU"
