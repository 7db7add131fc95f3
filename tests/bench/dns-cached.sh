#!/usr/bin/env bash
# Cached-answer benchmark: p2pdns side by side with unbound and dnsmasq.
#
# What it measures: how fast each resolver answers names it already holds in its cache. All
# three forward to the same local authoritative server (nsd, zone bench.test, NAMES A records
# with TTL 3600). A fourth row, p2pdns-p2p, measures cached .p2p answers: a second p2pdns daemon
# publishes n1.p2p ... nNAMES.p2p (same addresses) in the DHT, and the measured p2pdns, started
# after it with it as bootstrap peer, resolves them over the network, caches the signed records
# and is then timed on them with the publisher paused like nsd. Each resolver in turn is started alone, its cache is filled, and dnsperf then
# queries the same names in a loop for DURATION seconds. nsd is paused (SIGSTOP) during the
# timed pass, so every answer counted there came from the resolver's cache; a cache miss would
# show up as a lost query rather than as a silently slower figure.
#
# It is a benchmark, not a test: it prints figures and never fails on speed. It fails only when
# the setup does (a missing tool, a server that does not start or answers wrongly).
#
# Fairness: each server runs alone, pinned to one CPU (SERVER_CPU, default 0), and dnsperf to
# another (CLIENT_CPU, default 1). p2pdns sizes its tokio runtime from the CPUs it may use, so
# pinned it runs one worker thread, like `num-threads: 1` for unbound and single-threaded dnsmasq.
# The table reports the CPU time the server and dnsperf used, so one can see which side was the
# limit: on a small machine one dnsperf core can be the bottleneck for the fastest servers, and
# then their figures are lower bounds (see the note on CLIENTS and OUTSTANDING below). Other
# processes on the machine skew everything; the report measures them and warns.
# Results vary by 10-15 % from run to run on a shared VM; ROUNDS=3 gives the median of three.
#
# Run as root on Debian 12, from anywhere:   tests/bench/dns-cached.sh
# Prerequisites: apt-get install -y nsd unbound dnsmasq-base dnsperf bind9-dnsutils
#
# Environment:
#   DURATION=20       seconds of the timed dnsperf pass, per server
#   WARMUP=2          seconds of untimed load after the cache is filled, per server
#   CLIENTS=10        dnsperf -c: simulated clients (UDP sockets)
#   OUTSTANDING=100   dnsperf -q: queries in flight at once (the choice is explained below)
#   ROUNDS=1          measure every server this many times, in rotating order; the table then
#                     shows each server's median round and lists the qps of every round, and two
#                     more tables pool every round's queries per server and compare p2pdns with
#                     each reference round by round. On a VM whose steal time varies, many short
#                     rounds (ROUNDS=12 DURATION=5) compare latencies better than a few long ones.
#   NAMES=100         A records in the zone, queried in a cycle
#   SERVERS="p2pdns p2pdns-p2p unbound dnsmasq"   which resolvers to measure, in this order
#   SERVER_CPU=0 CLIENT_CPU=1          CPUs for the servers and for dnsperf
#   LATENCY=1         1: run dnsperf with -v and compute latency percentiles from its
#                     per-query lines; 0: only dnsperf's own average (slightly less client load)
#   RATE=0            0: as fast as the server answers (saturation, closed loop); N: dnsperf -Q N sends
#                     at most N queries a second (a user's load; compare latencies, not qps)
#   UNCACHED=0        1: every timed query asks a name never asked before (under a wildcard of the
#                     zone), so each one is forwarded to nsd, which then runs during the timed pass;
#                     not for p2pdns-p2p
#   SERVER_QUOTA=0    N (1-100): every server may use at most N % of its CPU (cgroup CPU bandwidth,
#                     10 ms period), the same budget for each, so that the server and not dnsperf
#                     is the limit at saturation and qps compares the servers directly ("same
#                     cores"); 0: no quota (the server's whole CPU; dnsperf may be the limit)
#   P2PDNS_BIN=path   use this p2pdns binary instead of `cargo build --release --locked`
#   KEEP_TMP=1        keep the temporary directory (configs, logs, dnsperf output)
#   WAIT_QUIET=60     before each timed pass, wait up to this many seconds for both CPUs to be
#                     idle (other processes, such as a build, would skew the figures); the report
#                     shows the background load and warns when it was above 5 %
#
# Everything listens on 127.0.0.1 high ports only; all processes and files are removed on exit,
# including on error or Ctrl-C. Apart from the cargo build, a run takes about
# (DURATION + WARMUP + 7) seconds per server and round, plus any wait for a quiet machine.

set -Eeuo pipefail

export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

DURATION=${DURATION:-20}
WARMUP=${WARMUP:-2}
# Load: 10 clients (UDP source ports) with 100 queries in flight in all. Chosen from a sweep on the
# 2-vCPU VM this was written on (-c/-q of 1/50, 4/100, 10/100, 10/200, 20/300, 20/500, 50/1000):
# - 100 in flight keep the server busy: p2pdns used 94-99 % of its core from 50 in flight on,
#   and more in flight raised latency (queueing, Little's law), not qps.
# - With 200 or more in flight, unbound and dnsmasq lost queries: their UDP socket keeps the
#   system's default receive buffer (net.core.rmem_default, 208 KiB, about 200 small datagrams
#   on loopback), so bursts overflow it (the kernel's UdpRcvbufErrors counted exactly the lost
#   queries), while p2pdns asks for 4 MiB. At 100 none of them loses anything, so the comparison
#   is about answering speed, not buffer sizes.
# - One dnsperf thread on one core tops out near 100k qps here; unbound and dnsmasq reach that,
#   so their figures are lower bounds (the "limit" column says so) - no setting changes that with
#   two cores, and -T 2 on the same core would only add contention.
CLIENTS=${CLIENTS:-10}
OUTSTANDING=${OUTSTANDING:-100}
NAMES=${NAMES:-100}
SERVERS=${SERVERS:-p2pdns p2pdns-p2p unbound dnsmasq}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
LATENCY=${LATENCY:-1}
KEEP_TMP=${KEEP_TMP:-0}
ROUNDS=${ROUNDS:-1}
WAIT_QUIET=${WAIT_QUIET:-60}
RATE=${RATE:-0}
UNCACHED=${UNCACHED:-0}
SERVER_QUOTA=${SERVER_QUOTA:-0}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

for var in SERVER_QUOTA RATE UNCACHED WAIT_QUIET ROUNDS DURATION WARMUP CLIENTS OUTSTANDING NAMES SERVER_CPU CLIENT_CPU LATENCY KEEP_TMP; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, not '${!var}'"
done
((SERVER_QUOTA <= 100)) || die "SERVER_QUOTA is a percentage of one CPU: 0 (none) to 100"
((DURATION >= 1 && ROUNDS >= 1)) || die "DURATION and ROUNDS must be at least 1"
((CLIENTS >= 1 && OUTSTANDING >= 1)) || die "CLIENTS and OUTSTANDING must be at least 1"
((NAMES >= 1 && NAMES <= 65000)) || die "NAMES must be between 1 and 65000"
for s in $SERVERS; do
    case $s in p2pdns | p2pdns-p2p | unbound | dnsmasq) ;; *) die "unknown server '$s' in SERVERS" ;; esac
done
if ((UNCACHED)) && [[ " $SERVERS " == *" p2pdns-p2p "* ]]; then
    die "UNCACHED=1 is for forwarded names: leave p2pdns-p2p out of SERVERS (the DHT's own benchmark is tests/integration/bench_dht.rs)"
fi

# --- prerequisites -----------------------------------------------------------------------------

missing=()
for tool in nsd unbound dnsmasq dnsperf dig taskset ss; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    printf '[bench] missing: %s\n' "${missing[*]}" >&2
    printf '[bench] install them with:\n  apt-get install -y nsd unbound dnsmasq-base dnsperf bind9-dnsutils\n' >&2
    exit 1
fi
((EUID == 0)) || log "warning: not running as root; the script is meant to run as root"
for cpu in "$SERVER_CPU" "$CLIENT_CPU"; do
    taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu (nproc: $(nproc)); set SERVER_CPU and CLIENT_CPU"
done
[[ $SERVER_CPU != "$CLIENT_CPU" ]] || log "warning: servers and dnsperf share CPU $SERVER_CPU; figures will be lower"

# shellcheck source=tests/bench/common.sh
source "$SCRIPT_DIR/common.sh"
if [[ -n ${P2PDNS_BIN:-} || " $SERVERS " == *" p2pdns"* ]]; then
    find_p2pdns
fi

# --- temporary directory, processes and cleanup ------------------------------------------------

start_workspace bench
((SERVER_QUOTA == 0)) || make_cpu_quota "$SERVER_QUOTA"

# Runs a client command (dnsperf, which bounds its own run time) in the background and waits for
# it: bash handles a signal only once a foreground command is done, but interrupts `wait` at
# once; cleanup then stops the client too.
run_client() { # stdout-file stderr-file command...
    local out=$1 err=$2 rc=0
    shift 2
    "$@" >"$out" 2>"$err" &
    PID[client]=$!
    wait "${PID[client]}" || rc=$?
    unset "PID[client]"
    return "$rc"
}

qname() { # the name of record $2 as server $1 is asked for it
    if [[ $1 == p2pdns-p2p ]]; then echo "n$2.p2p"; else echo "n$2.bench.test"; fi
}

expected_ip() { # the address of n$1.bench.test (and of n$1.p2p)
    echo "10.0.$(($1 / 256)).$(($1 % 256))"
}

# Waits until the server on $2 answers its first name correctly; $1 is its name in PID.
wait_ready() {
    local name=$1 port=$2 i answer first
    first=$(qname "$name" 1)
    for ((i = 0; i < 100; i++)); do
        kill -0 "${PID[$name]}" 2>/dev/null || {
            tail -n 20 "$WORK/$name.log" >&2 || true
            die "$name exited during startup (log above)"
        }
        answer=$(dig +short +tries=1 +time=1 @127.0.0.1 -p "$port" "$first" A 2>/dev/null || true)
        [[ $answer == "$(expected_ip 1)" ]] && return 0
        sleep 0.1
    done
    tail -n 20 "$WORK/$name.log" >&2 || true
    die "$name on port $port did not answer $first within 10 s (last answer: '${answer:-none}')"
}

# --- upstream: nsd with the bench.test zone ----------------------------------------------------

NSD_PORT=$(free_port)
mkdir -p "$WORK/nsd"
{
    printf '$ORIGIN bench.test.\n$TTL 3600\n'
    printf '@ IN SOA ns hostmaster 1 3600 600 86400 3600\n@ IN NS ns\nns IN A 127.0.0.1\n'
    for ((i = 1; i <= NAMES; i++)); do printf 'n%d IN A %s\n' "$i" "$(expected_ip "$i")"; done
    # The names of the uncached passes (UNCACHED=1), each asked once.
    printf '* IN A 10.255.255.1\n'
} >"$WORK/nsd/bench.test.zone"
cat >"$WORK/nsd/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$NSD_PORT
    port: $NSD_PORT
    username: ""
    zonesdir: "$WORK/nsd"
    database: ""
    pidfile: "$WORK/nsd/nsd.pid"
    xfrdfile: "$WORK/nsd/xfrd.state"
    zonelistfile: "$WORK/nsd/zone.list"
    logfile: "$WORK/nsd.log"
    server-count: 1
    verbosity: 0
    # No response rate limiting: at its default (200 answers a second per /24) nsd would answer
    # the uncached passes' flood of wildcard names with TC=1, and resolvers that retry those
    # over TCP would be measured on that.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "bench.test"
    zonefile: "bench.test.zone"
EOF
# nsd is idle during the timed passes (paused, in fact); it shares the servers' CPU so that it
# never takes time from dnsperf while caches are filled.
taskset -c "$SERVER_CPU" nsd -c "$WORK/nsd/nsd.conf" -d >>"$WORK/nsd.log" 2>&1 &
PID[nsd]=$!
wait_ready nsd "$NSD_PORT"
log "nsd answers on 127.0.0.1:$NSD_PORT ($NAMES names in bench.test)"

declare -A QUERIES=() # server -> its dnsperf query file
for s in $SERVERS; do
    QUERIES[$s]=$WORK/queries.$s.txt
    for ((i = 1; i <= NAMES; i++)); do printf '%s A\n' "$(qname "$s" "$i")"; done >"${QUERIES[$s]}"
done
# UNCACHED=1: names asked once each, more than a pass can send (dnsperf starts the file again
# at its end, and a name asked twice would be a cache hit): up to 80,000 a second at saturation.
unique_names() { # prefix count
    awk -v p="$1" -v n="$2" 'BEGIN { for (i = 1; i <= n; i++) printf "%s%d.bench.test A\n", p, i }'
}
if ((UNCACHED)); then
    per_second=$((RATE ? RATE * 12 / 10 + 100 : 80000))
    unique_names w "$((per_second * (WARMUP + 1)))" >"$WORK/warmup-unique.txt"
    unique_names u "$((per_second * DURATION))" >"$WORK/timed-unique.txt"
fi
timed_queries() { # server: the file of the timed pass (and of the warm-up with "warmup")
    if ((UNCACHED)); then
        [[ ${2:-} == warmup ]] && echo "$WORK/warmup-unique.txt" || echo "$WORK/timed-unique.txt"
    else
        echo "${QUERIES[$1]}"
    fi
}

# --- the resolvers -----------------------------------------------------------------------------

declare -A CMD=() PORT=()

start_p2pdns() {
    local port=$1 dir=$WORK/p2pdns
    mkdir -p "$dir/home" "$dir/data"
    # An explicit --config with the built-in defaults, so no /etc/p2pdns or ~/.config file applies.
    "$P2PDNS" config default >"$dir/p2pdns.toml"
    CMD[p2pdns]="env HOME=$dir/home $P2PDNS --config $dir/p2pdns.toml --data-dir $dir/data run --dns-listen 127.0.0.1:$port --upstream 127.0.0.1:$NSD_PORT -q"
    HOME=$dir/home taskset -c "$SERVER_CPU" env -u RUST_LOG -u P2PDNS_CONFIG -u P2PDNS_DATA_DIR \
        "$P2PDNS" --config "$dir/p2pdns.toml" --data-dir "$dir/data" \
        run --dns-listen "127.0.0.1:$port" --upstream "127.0.0.1:$NSD_PORT" -q \
        >>"$WORK/p2pdns.log" 2>&1 &
    PID[p2pdns]=$!
}

# The publisher: a p2pdns daemon that holds n1.p2p ... nNAMES.p2p. It is started, publishes
# every name (through its control socket, like a user would), and only then is the measured
# daemon started with it as bootstrap peer, so that each name really comes over the DHT.
start_publisher() {
    local dir=$WORK/publisher dns_port p2p_port i
    mkdir -p "$dir/home" "$dir/data"
    dns_port=$(free_port)
    p2p_port=$(free_port)
    # Built-in defaults but for the P2P node: loopback only, no mDNS.
    printf '[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/%s"]\nmdns = false\ndht_mode = "server"\n' \
        "$p2p_port" >"$dir/p2pdns.toml"
    HOME=$dir/home taskset -c "$SERVER_CPU" env -u RUST_LOG -u P2PDNS_CONFIG -u P2PDNS_DATA_DIR \
        "$P2PDNS" --config "$dir/p2pdns.toml" --data-dir "$dir/data" \
        run --dns-listen "127.0.0.1:$dns_port" -q >>"$WORK/publisher.log" 2>&1 &
    PID[publisher]=$!
    for ((i = 0; i < 100; i++)); do
        HOME=$dir/home "$P2PDNS" --data-dir "$dir/data" status >/dev/null 2>&1 && break
        kill -0 "${PID[publisher]}" 2>/dev/null || die "the publisher exited: $(tail -n 5 "$WORK/publisher.log")"
        sleep 0.1
    done
    for ((i = 1; i <= NAMES; i++)); do
        HOME=$dir/home "$P2PDNS" --data-dir "$dir/data" publish "n$i.p2p" A "$(expected_ip "$i")" --ttl 3600 \
            >/dev/null || die "publishing n$i.p2p failed"
    done
    PUBLISHER_ADDR=$(HOME=$dir/home "$P2PDNS" --data-dir "$dir/data" status |
        awk '$1 == "listening:" { print $2; exit }')
    [[ -n $PUBLISHER_ADDR ]] || die "the publisher shows no P2P address"
    log "publisher: $NAMES names published at $PUBLISHER_ADDR"
}

start_p2pdns-p2p() {
    local port=$1 dir=$WORK/p2pdns-p2p p2p_port
    [[ -n ${PID[publisher]:-} ]] || start_publisher
    mkdir -p "$dir/home" "$dir/data"
    p2p_port=$(free_port)
    # Built-in defaults but for the P2P node (loopback only, no mDNS), and the test addresses
    # are private (10.0.x.y): allow them in .p2p answers, as an intranet would.
    printf '[naming]\nallow_private_answers = ["p2p"]\n[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/%s"]\nmdns = false\ndht_mode = "server"\n' \
        "$p2p_port" >"$dir/p2pdns.toml"
    CMD[p2pdns-p2p]="env HOME=$dir/home $P2PDNS --config $dir/p2pdns.toml --data-dir $dir/data run --dns-listen 127.0.0.1:$port --bootstrap $PUBLISHER_ADDR -q"
    HOME=$dir/home taskset -c "$SERVER_CPU" env -u RUST_LOG -u P2PDNS_CONFIG -u P2PDNS_DATA_DIR \
        "$P2PDNS" --config "$dir/p2pdns.toml" --data-dir "$dir/data" \
        run --dns-listen "127.0.0.1:$port" --bootstrap "$PUBLISHER_ADDR" -q \
        >>"$WORK/p2pdns-p2p.log" 2>&1 &
    PID[p2pdns-p2p]=$!
}

start_unbound() {
    local port=$1 dir=$WORK/unbound
    mkdir -p "$dir"
    # Forward everything to nsd like the others; "iterator" only (no validator module), so no
    # DNSSEC work; test. is one of unbound's default local zones, hence "nodefault".
    {
        echo "server:"
        unbound_server_lines "$port" "$dir"
        cat <<EOF
    module-config: "iterator"
    domain-insecure: "bench.test"
    local-zone: "test." nodefault
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$NSD_PORT
EOF
    } >"$dir/unbound.conf"
    CMD[unbound]="unbound -d -c $dir/unbound.conf"
    taskset -c "$SERVER_CPU" unbound -d -c "$dir/unbound.conf" >>"$WORK/unbound.log" 2>&1 &
    PID[unbound]=$!
}

start_dnsmasq() {
    local port=$1 dir=$WORK/dnsmasq
    mkdir -p "$dir"
    local args=(--keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts
        --port="$port" --listen-address=127.0.0.1 --bind-interfaces
        --server="127.0.0.1#$NSD_PORT" --cache-size=10000 --user="$(id -un)"
        --pid-file="$dir/dnsmasq.pid" --log-facility=-)
    CMD[dnsmasq]="dnsmasq ${args[*]}"
    taskset -c "$SERVER_CPU" dnsmasq "${args[@]}" >>"$WORK/dnsmasq.log" 2>&1 &
    PID[dnsmasq]=$!
}

# --- measurement helpers -----------------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() { # utime + stime of all threads of pid $1
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) } # fields after "pid (comm) "; utime and stime are fields 14 and 15
    awk '{ print $12 + $13 }' <<<"$stat"
}

status_kib() { # field $2 (VmRSS, VmHWM, Threads) of /proc/$1/status, number only
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

cpu_sample() { # "busy total steal" jiffies of CPU $1 from /proc/stat (busy excludes idle, iowait, steal)
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9 }' /proc/stat
}

pct() { # 100 * ($1 - $2) / ($3 - $4), no decimals
    awk -v a="$1" -v b="$2" -v c="$3" -v d="$4" 'BEGIN { printf "%.0f", (c > d) ? 100 * (a - b) / (c - d) : 0 }'
}

background_load() { # "S/C": busy % of the server's and dnsperf's CPU over 1 s while the benchmark idles
    local sb0 st0 cb0 ct0 sb1 st1 cb1 ct1 _
    read -r sb0 st0 _ <<<"$(cpu_sample "$SERVER_CPU")"
    read -r cb0 ct0 _ <<<"$(cpu_sample "$CLIENT_CPU")"
    sleep 1
    read -r sb1 st1 _ <<<"$(cpu_sample "$SERVER_CPU")"
    read -r cb1 ct1 _ <<<"$(cpu_sample "$CLIENT_CPU")"
    echo "$(pct "$sb1" "$sb0" "$st1" "$st0")/$(pct "$cb1" "$cb0" "$ct1" "$ct0")"
}

stat_line() { # value after "$2:" in dnsperf output $1
    sed -n "s/^ *$2: *//p" "$1" | awk 'NR == 1' # awk reads all: no SIGPIPE upstream
}

DNSPERF_ARGS=(-s 127.0.0.1 -c "$CLIENTS" -q "$OUTSTANDING" -T 1 -t 2)
((LATENCY)) && DNSPERF_ARGS+=(-v)
((RATE == 0)) || DNSPERF_ARGS+=(-Q "$RATE")

declare -A R=() # "server,field" -> value

# "p50 p99 p99.9 average count" in ms over the per-query lines of the dnsperf -v outputs given
# ("> NOERROR n1.bench.test A 0.000123"; lost queries have no latency), from a histogram in 1 us
# steps; "- - - - 0" when there are none. dnsperf 2.10 has no histogram option of its own.
latency_stats() { # dnsperf-output...
    awk '
        $1 == ">" && $NF ~ /^[0-9]+\.[0-9]+$/ { us = int($NF * 1000000 + 0.5); h[us]++; n++; sum += us; if (us > max) max = us }
        END {
            if (n == 0) { print "- - - - 0"; exit }
            split("0.50 0.99 0.999", q, " "); k = 1; c = 0
            for (us = 0; us <= max && k <= 3; us++) {
                c += h[us]
                while (k <= 3 && c >= q[k] * n) { v[k] = us; k++ }
            }
            printf "%.3f %.3f %.3f %.3f %d\n", v[1] / 1000, v[2] / 1000, v[3] / 1000, sum / n / 1000, n
        }' "$@"
}

udp_rcvbuf_errors() { # the kernel's count of UDP datagrams dropped on a full receive buffer
    awk '$1 == "Udp:" && $2 != "InDatagrams" { print $6; exit }' /proc/net/snmp
}

measure() { # server round
    local name=$1 round=$2 k=$1.$2 port out err drops0 loglines0 t0 t1 answer i sb0 st0 ss0 cb0 ct0 cs0 sb1 st1 ss1 cb1 ct1 cs1
    port=$(free_port)
    PORT[$name]=$port
    loglines0=0
    [[ ! -f $WORK/$name.log ]] || loglines0=$(wc -l <"$WORK/$name.log")
    log "$name (round $round/$ROUNDS): starting on 127.0.0.1:$port (pinned to CPU $SERVER_CPU)"
    "start_$name" "$port"
    wait_ready "$name" "$port"
    ((SERVER_QUOTA == 0)) || limit_cpu "${PID[$name]}"

    # Fill the cache: every name once, then check a few answers.
    out=$WORK/$k.fill.txt
    run_client "$out" "$out.err" taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$port" -d "${QUERIES[$name]}" \
        -n 1 -q 10 -t 5 || die "$name: cache-fill pass failed: $(tail -n 5 "$out.err")"
    [[ $(stat_line "$out" "Queries completed") == "$NAMES "* ]] ||
        die "$name: cache-fill pass did not complete all $NAMES queries: $(stat_line "$out" "Queries completed")"
    for i in 1 $(((NAMES + 1) / 2)) "$NAMES"; do
        answer=$(dig +short +tries=1 +time=2 @127.0.0.1 -p "$port" "$(qname "$name" "$i")" A 2>&1 || true)
        [[ $answer == "$(expected_ip "$i")" ]] || die "$name: $(qname "$name" "$i") answered '$answer', expected $(expected_ip "$i")"
    done

    # The upstream (and the publisher) is paused from here on: only cached answers count.
    # Uncached, every timed answer comes from it.
    ((UNCACHED)) || kill -STOP "${PID[nsd]}"
    [[ -z ${PID[publisher]:-} ]] || kill -STOP "${PID[publisher]}"
    # Other processes on the machine (a build, say) would skew the figures: wait up to
    # WAIT_QUIET seconds for both CPUs to be idle, and record what was left.
    local waited=0 a b
    while :; do
        R[$k,bgbefore]=$(background_load)
        IFS=/ read -r a b <<<"${R[$k,bgbefore]}"
        ((a > 5 || b > 5)) || break
        ((waited < WAIT_QUIET)) || { log "$name: the CPUs are still busy (${R[$k,bgbefore]} %); measuring anyway"; break; }
        ((waited > 0)) || log "$name: waiting up to $WAIT_QUIET s for other processes to leave the CPUs idle (${R[$k,bgbefore]} % busy)"
        waited=$((waited + 1))
    done

    if ((WARMUP)); then
        run_client "$WORK/$k.warmup.txt" "$WORK/$k.warmup.err" taskset -c "$CLIENT_CPU" dnsperf \
            -s 127.0.0.1 -p "$port" -d "$(timed_queries "$name" warmup)" -c "$CLIENTS" -q "$OUTSTANDING" -T 1 -t 2 -l "$WARMUP" ||
            die "$name: warm-up pass failed: $(tail -n 5 "$WORK/$k.warmup.err")"
    fi

    log "$name: timed pass, $DURATION s"
    out=$WORK/$k.dnsperf.txt
    err=$WORK/$k.dnsperf.err
    drops0=$(udp_rcvbuf_errors)
    t0=$(cpu_ticks "${PID[$name]}")
    read -r sb0 st0 ss0 <<<"$(cpu_sample "$SERVER_CPU")"
    read -r cb0 ct0 cs0 <<<"$(cpu_sample "$CLIENT_CPU")"
    times >"$WORK/times.before" # CPU time of the children reaped so far (line 2), in this shell
    run_client "$out" "$err" taskset -c "$CLIENT_CPU" dnsperf "${DNSPERF_ARGS[@]}" -d "$(timed_queries "$name")" -p "$port" -l "$DURATION" ||
        die "$name: dnsperf failed: $(tail -n 5 "$err")"
    times >"$WORK/times.after"
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
        tail -n 20 "$WORK/$name.log" >&2 || true
        die "$name exited during the timed pass (log above)"
    fi
    t1=$(cpu_ticks "${PID[$name]}")
    read -r sb1 st1 ss1 <<<"$(cpu_sample "$SERVER_CPU")"
    read -r cb1 ct1 cs1 <<<"$(cpu_sample "$CLIENT_CPU")"
    R[$k,drops]=$(($(udp_rcvbuf_errors) - drops0))
    R[$k,srvbusy]=$(pct "$sb1" "$sb0" "$st1" "$st0")
    R[$k,clibusy]=$(pct "$cb1" "$cb0" "$ct1" "$ct0")
    R[$k,steal]="$(pct "$ss1" "$ss0" "$st1" "$st0")/$(pct "$cs1" "$cs0" "$ct1" "$ct0")"
    R[$k,rss]=$(status_kib "${PID[$name]}" VmRSS)
    R[$k,hwm]=$(status_kib "${PID[$name]}" VmHWM)
    R[$k,threads]=$(status_kib "${PID[$name]}" Threads)
    ((UNCACHED)) || kill -CONT "${PID[nsd]}"
    [[ -z ${PID[publisher]:-} ]] || kill -CONT "${PID[publisher]}"
    stop_pid "$name"
    stop_pid publisher
    R[$k,bgafter]=$(background_load)

    R[$k,sent]=$(stat_line "$out" "Queries sent")
    R[$k,completed]=$(stat_line "$out" "Queries completed" | awk '{ print $1 }')
    R[$k,lost]=$(stat_line "$out" "Queries lost" | awk '{ print $1 }')
    R[$k,lostpct]=$(stat_line "$out" "Queries lost" | sed -n 's/.*(\(.*\)%).*/\1/p')
    R[$k,qps]=$(stat_line "$out" "Queries per second" | awk '{ printf "%.0f", $1 }')
    R[$k,avg]=$(stat_line "$out" "Average Latency (s)" | awk '{ printf "%.3f", $1 * 1000 }')
    R[$k,max]=$(stat_line "$out" "Average Latency (s)" | sed -n 's/.*max \([0-9.]*\).*/\1/p' |
        awk '{ printf "%.3f", $1 * 1000 }')
    R[$k,rcodes]=$(stat_line "$out" "Response codes")
    R[$k,size]=$(stat_line "$out" "Average packet size")
    R[$k,runtime]=$(stat_line "$out" "Run time (s)")
    R[$k,srvcpu]=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v s="${R[$k,runtime]}" \
        'BEGIN { printf "%.0f", (b - a) / hz / s * 100 }')
    R[$k,ticks]=$((t1 - t0))
    R[$k,cpu_us]=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="${R[$k,completed]}" \
        'BEGIN { if (n > 0) printf "%.2f", (b - a) / hz / n * 1000000; else print "-" }')
    R[$k,clicpu]=$(awk -v s="${R[$k,runtime]}" '
        FNR == 2 { split($1, u, /[ms]/); split($2, y, /[ms]/); t[FILENAME] = u[1] * 60 + u[2] + y[1] * 60 + y[2] }
        END { printf "%.0f", (t[ARGV[2]] - t[ARGV[1]]) / s * 100 }' "$WORK/times.before" "$WORK/times.after")
    # CPU time on the two CPUs that neither the server nor dnsperf accounts for: other processes,
    # or accounting noise (a few %).
    R[$k,other]="$((R[$k,srvbusy] - R[$k,srvcpu]))/$((R[$k,clibusy] - R[$k,clicpu]))"
    if ((LATENCY)); then
        # A command substitution, not < <(...): bash reaps that at once, and the CPU time of a late
        # reaped child would be counted as dnsperf's in the next timed pass.
        read -r "R[$k,p50]" "R[$k,p99]" "R[$k,p999]" _ _ <<<"$(latency_stats "$out")"
    else
        R[$k,p50]=-
        R[$k,p99]=-
        R[$k,p999]=-
    fi
    R[$k,loglines]=$(($(wc -l <"$WORK/$name.log") - loglines0))
    log "$name: ${R[$k,qps]} qps, ${R[$k,lost]} lost"
}

for ((round = 1; round <= ROUNDS; round++)); do
    # Each round starts with the next server, so none is always first or last.
    order=($SERVERS)
    shift_by=$(((round - 1) % ${#order[@]}))
    order=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
    for s in "${order[@]}"; do measure "$s" "$round"; done
done
stop_pid nsd

# With several rounds, the table shows each server's median round by qps (the lower middle one
# for an even count); every round's qps is listed below it.
declare -A QPS_ROUNDS=()
for s in $SERVERS; do
    median=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${R[$s.$r,qps]} $r"; done |
        sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2) { print $2 }')
    for key in "${!R[@]}"; do
        [[ $key == "$s.$median,"* ]] && R[$s,${key#*,}]=${R[$key]}
    done
    QPS_ROUNDS[$s]=$(for ((r = 1; r <= ROUNDS; r++)); do printf '%s ' "${R[$s.$r,qps]}"; done)
    R[$s,round]=$median
done

# --- report ------------------------------------------------------------------------------------

version_of() {
    case $1 in
    p2pdns | p2pdns-p2p) "$P2PDNS" --version | awk 'NR == 1' ;; # not head: with pipefail, SIGPIPE would fail
    unbound) unbound -V 2>&1 | awk 'NR == 1 { sub(/^Version /, "unbound "); print }' ;;
    dnsmasq) dnsmasq --version | awk 'NR == 1' ;;
    esac
}

cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)

limit_of() { # which side held the figure back, from the CPU time of each process
    local server_full=90
    ((SERVER_QUOTA == 0)) || server_full=$((SERVER_QUOTA * 9 / 10))
    if ((${R[$1,clicpu]} >= 95 && ${R[$1,srvcpu]} >= server_full)); then
        echo "both"
    elif ((${R[$1,clicpu]} >= 95)); then
        echo "dnsperf"
    elif ((${R[$1,srvcpu]} >= server_full)); then
        echo "server"
    else
        echo "neither"
    fi
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

if ((RATE)); then load="at most $RATE queries a second (dnsperf -Q $RATE)"; else load="at saturation"; fi
echo
if ((UNCACHED)); then
    echo "## Uncached answers, $load: p2pdns vs unbound vs dnsmasq"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -sr), nproc $(nproc), CPU: ${cpu_model:-unknown}."
    echo "Each server alone on CPU $SERVER_CPU with nsd, dnsperf on CPU $CLIENT_CPU; every timed query a name never asked before"
    echo "(a wildcard A of nsd's zone), so every answer is forwarded; dnsperf -c $CLIENTS -q $OUTSTANDING -T 1 -l $DURATION after a ${WARMUP} s warm-up."
else
    echo "## Cached answers, $load: p2pdns (forwarded names, and .p2p names from the DHT) vs unbound vs dnsmasq"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -sr), nproc $(nproc), CPU: ${cpu_model:-unknown}."
    echo "Each server alone on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU; $NAMES cached A names queried in a cycle over UDP;"
    echo "dnsperf -c $CLIENTS -q $OUTSTANDING -T 1 -l $DURATION after a cache fill and a ${WARMUP} s warm-up; upstream nsd paused while timed."
fi
((ROUNDS == 1)) || echo "$ROUNDS rounds, servers in rotating order; each row is the server's median round by qps."
echo
echo "| server | sent | completed | lost | lost % | qps | avg latency ms | p99 latency ms | server CPU % | dnsperf CPU % | limit | VmRSS MiB | VmHWM MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
for s in $SERVERS; do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$s" "${R[$s,sent]}" "${R[$s,completed]}" "${R[$s,lost]}" "${R[$s,lostpct]}" "${R[$s,qps]}" \
        "${R[$s,avg]}" "${R[$s,p99]}" "${R[$s,srvcpu]}" "${R[$s,clicpu]}" "$(limit_of "$s")" \
        "$(mib "${R[$s,rss]}")" "$(mib "${R[$s,hwm]}")"
done
echo
if ((LATENCY)); then
    echo "Latency: average (and max, below) as dnsperf reports them; p50/p99/p99.9 computed by this script"
    echo "from dnsperf -v per-query latencies, 1 us resolution, completed queries only (dnsperf 2.10 has"
    echo "no latency histogram option). Closed loop: at saturation latency is mostly queueing (Little's law)."
else
    echo "Latency: average (and max, below) as dnsperf reports them; percentiles not computed (LATENCY=0)."
fi
echo "CPU %: CPU time of the server process (all threads) and of dnsperf over the timed pass, 100 = one core."
((SERVER_QUOTA == 0)) || echo "Each server was held to $SERVER_QUOTA % of its CPU (cgroup CPU bandwidth, 10 ms period): qps compares the servers at the same CPU budget."
echo "limit: server = the server used >= 90 % of its core (of its quota); dnsperf = dnsperf used >= 95 % of its core, so the"
echo "server's qps is a lower bound; both = both; neither = neither (idle time, or other processes: see below)."
echo "Memory: /proc/PID/status of the server right after the timed pass (VmHWM: peak since start)."
echo
ratio() { # $1 / $2 with two decimals, or - when either is missing
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
refs=()
for ref in unbound dnsmasq; do [[ " $SERVERS " == *" $ref "* ]] && refs+=("$ref"); done
if ((${#refs[@]})); then
    echo "Ratios (p2pdns / reference; qps: higher is better, latency and CPU per answer: lower is better):"
    echo
    echo "| server | vs | qps | avg latency | p99 latency | CPU per answer |"
    echo "|---|---|---:|---:|---:|---:|"
    for s in $SERVERS; do
        [[ $s == p2pdns* ]] || continue
        for ref in "${refs[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s |\n' "$s" "$ref" "$(ratio "${R[$s,qps]}" "${R[$ref,qps]}")" \
                "$(ratio "${R[$s,avg]}" "${R[$ref,avg]}")" "$(ratio "${R[$s,p99]}" "${R[$ref,p99]}")" \
                "$(ratio "${R[$s,cpu_us]}" "${R[$ref,cpu_us]}")"
        done
    done
    echo
    echo "CPU per answer (server's CPU time over the timed pass / answers, us, ${CLK_TCK} Hz ticks):$(for s in $SERVERS; do printf ' %s %s;' "$s" "${R[$s,cpu_us]}"; done)"
    echo
fi
# With several rounds, every round's queries pooled per server, and each round's pair compared:
# the rounds interleave the servers, so a spell of steal or background load in one part of the
# run weighs on each server alike, while a single round's figures move with it.
median_of() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
lower_in() { # server reference field: "W of N" rounds where the server's figure was lower
    local r wins=0 n=0
    for ((r = 1; r <= ROUNDS; r++)); do
        [[ ${R[$1.$r,$3]} != - && ${R[$2.$r,$3]} != - ]] || continue
        n=$((n + 1))
        awk -v a="${R[$1.$r,$3]}" -v b="${R[$2.$r,$3]}" 'BEGIN { exit !(a < b) }' && wins=$((wins + 1))
    done
    echo "$wins of $n"
}
ratios_of() { # server reference field: each round's server / reference, one per line
    local r
    for ((r = 1; r <= ROUNDS; r++)); do echo "$(ratio "${R[$1.$r,$3]}" "${R[$2.$r,$3]}")"; done | grep -v '^-$' || true
}
if ((ROUNDS > 1)); then
    echo "All $ROUNDS rounds pooled (every answered query of every round; CPU per answer: all CPU time / all answers):"
    echo
    echo "| server | answers | lost | avg latency ms | p50 ms | p99 ms | p99.9 ms | CPU per answer us |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for s in $SERVERS; do
        files=() answers=0 lost=0 ticks=0 weighted=0
        for ((r = 1; r <= ROUNDS; r++)); do
            files+=("$WORK/$s.$r.dnsperf.txt")
            answers=$((answers + R[$s.$r,completed]))
            lost=$((lost + R[$s.$r,lost]))
            ticks=$((ticks + R[$s.$r,ticks]))
            weighted=$(awk -v w="$weighted" -v a="${R[$s.$r,avg]}" -v n="${R[$s.$r,completed]}" 'BEGIN { print w + a * n }')
        done
        if ((LATENCY)); then
            read -r p50 p99 p999 _ _ <<<"$(latency_stats "${files[@]}")"
        else
            p50=- p99=- p999=-
        fi
        R[$s,pooled_avg]=$(awk -v w="$weighted" -v n="$answers" 'BEGIN { if (n > 0) printf "%.3f", w / n; else print "-" }')
        R[$s,pooled_p99]=$p99
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$s" "$answers" "$lost" "${R[$s,pooled_avg]}" "$p50" "$p99" "$p999" \
            "$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$answers" 'BEGIN { if (n > 0) printf "%.2f", t / hz / n * 1000000; else print "-" }')"
    done
    echo
    if ((${#refs[@]})); then
        echo "Round by round (p2pdns against each reference measured in the same round; a ratio below 1 means p2pdns"
        echo "was lower, which is better for latency; the median of the rounds' ratios, and in how many rounds p2pdns was lower):"
        echo
        echo "| server | vs | avg latency: lower in | median ratio | p99 latency: lower in | median ratio | qps: median ratio |"
        echo "|---|---|---:|---:|---:|---:|---:|"
        for s in $SERVERS; do
            [[ $s == p2pdns* ]] || continue
            for ref in "${refs[@]}"; do
                printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$s" "$ref" "$(lower_in "$s" "$ref" avg)" \
                    "$(ratios_of "$s" "$ref" avg | median_of)" "$(lower_in "$s" "$ref" p99)" \
                    "$(ratios_of "$s" "$ref" p99 | median_of)" "$(ratios_of "$s" "$ref" qps | median_of)"
            done
        done
        echo
    fi
fi
# One line per server for scripts (tests/bench/dns-speed.sh reads them); with several rounds, qps and
# CPU are the median round's and the latencies are pooled over all rounds.
for s in $SERVERS; do
    echo "RESULT cached=$((1 - UNCACHED)) rate=$RATE server=$s qps=${R[$s,qps]} avg_ms=${R[$s,pooled_avg]:-${R[$s,avg]}} p99_ms=${R[$s,pooled_p99]:-${R[$s,p99]}} cpu_pct=${R[$s,srvcpu]} cpu_us=${R[$s,cpu_us]} lost=${R[$s,lost]} rss_mib=$(mib "${R[$s,rss]}") quota=$SERVER_QUOTA"
done
echo
echo "Details:"
for s in $SERVERS; do
    echo "- $s: p50 ${R[$s,p50]} ms, p99.9 ${R[$s,p999]} ms, max ${R[$s,max]} ms;" \
        "CPU busy (/proc/stat, user+system+irq+softirq): server's CPU ${R[$s,srvbusy]} %, dnsperf's CPU ${R[$s,clibusy]} %;" \
        "steal (server/dnsperf CPU): ${R[$s,steal]} %; UDP receive-buffer drops (kernel, all sockets): ${R[$s,drops]};" \
        "threads: ${R[$s,threads]}; responses: ${R[$s,rcodes]}; packet size: ${R[$s,size]};" \
        "run time: ${R[$s,runtime]} s; log lines during the round: ${R[$s,loglines]}"
    ((ROUNDS == 1)) || echo "  per round: qps ${QPS_ROUNDS[$s]}(row: round ${R[$s,round]}); avg latency ms$(for ((r = 1; r <= ROUNDS; r++)); do printf ' %s' "${R[$s.$r,avg]}"; done); steal %$(for ((r = 1; r <= ROUNDS; r++)); do printf ' %s' "${R[$s.$r,steal]}"; done)"
done
busy=""
for s in $SERVERS; do
    for ((r = 1; r <= ROUNDS; r++)); do
        for when in before after; do
            IFS=/ read -r a b <<<"${R[$s.$r,bg$when]}"
            ((a <= 5 && b <= 5)) || busy+=" $s round $r, $when the timed pass: ${R[$s.$r,bg$when]} %;"
        done
        IFS=/ read -r a b <<<"${R[$s.$r,other]}"
        ((a <= 10 && b <= 10)) || busy+=" $s round $r, during the timed pass: ${R[$s.$r,other]} % not used by the server/dnsperf;"
    done
done
echo "- other use of the server/dnsperf CPU during the timed pass (CPU busy % minus the process's CPU %,"
echo "  a few % is accounting noise):$(for s in $SERVERS; do for ((r = 1; r <= ROUNDS; r++)); do printf ' %s %s;' "$s" "${R[$s.$r,other]}"; done; done)"
echo "- background load (busy % of the server/dnsperf CPU over 1 s while the benchmark idled, before and after"
echo "  each timed pass):$(for s in $SERVERS; do for ((r = 1; r <= ROUNDS; r++)); do printf ' %s %s, %s;' "$s" "${R[$s.$r,bgbefore]}" "${R[$s.$r,bgafter]}"; done; done)"
if [[ -n $busy ]]; then
    echo
    echo "WARNING: other processes were using the CPUs:${busy%;}."
    echo "The figures above are skewed by them; run again on a quiet machine."
fi
echo
echo "Versions:"
for s in $SERVERS; do echo "- $(version_of "$s")"; done
echo "- $(dnsperf -h 2>&1 | awk '/^Version/ && !seen { sub(/^Version/, "dnsperf"); print; seen = 1 }')"
echo "- $(nsd -v 2>&1 | awk 'NR == 1') (upstream)"
echo
echo "Reproduce (from the repository root):"
echo
printf '    SERVER_QUOTA=%s RATE=%s UNCACHED=%s ROUNDS=%s DURATION=%s WARMUP=%s CLIENTS=%s OUTSTANDING=%s NAMES=%s LATENCY=%s SERVER_CPU=%s CLIENT_CPU=%s SERVERS="%s" tests/bench/dns-cached.sh\n' \
    "$SERVER_QUOTA" "$RATE" "$UNCACHED" "$ROUNDS" "$DURATION" "$WARMUP" "$CLIENTS" "$OUTSTANDING" "$NAMES" "$LATENCY" "$SERVER_CPU" "$CLIENT_CPU" "$SERVERS"
echo
echo "Commands used (ports of the last round; \$TMP is the temporary directory):"
echo
echo "    taskset -c $CLIENT_CPU dnsperf ${DNSPERF_ARGS[*]} -d \$TMP/queries.SERVER.txt -p PORT -l $DURATION"
for s in $SERVERS; do echo "    taskset -c $SERVER_CPU ${CMD[$s]//$WORK/\$TMP}"; done

for s in $SERVERS; do
    if [[ -s $WORK/$s.log ]]; then
        echo
        echo "$s log, all rounds ($(wc -l <"$WORK/$s.log") lines; first 20):"
        echo
        head -n 20 "$WORK/$s.log" | awk '{ print "    " $0 }'
    fi
done
