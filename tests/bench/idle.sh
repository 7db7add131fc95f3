#!/usr/bin/env bash
# Idle cost: how often an idle resolver wakes up and how much CPU it uses, p2pdns beside unbound
# and dnsmasq.
#
# What it measures: each server is started alone in a network namespace of its own (only a
# loopback link: no peer, no query, no traffic from the machine), left SETTLE seconds to start
# up, then watched for SECS seconds: the context switches of all its threads (voluntary and
# involuntary, /proc/PID/task/*/status: each one a wake-up or a preemption) and its CPU time
# (/proc/PID/stat utime + stime, in clock ticks). p2pdns is measured twice: with `--upstream`
# (a fixed upstream list) and following /etc/resolv.conf (watched with inotify), both with its
# P2P node on and no peer to talk to; and a third time (p2pdns-peer) in a quiet network: an
# introduction server in the same namespace (not measured) is its bootstrap peer, its relay and
# its STUN server, so the node pays for what it does with a peer and nothing to ask (pings,
# relay reservation renewals, reconnections, the DHT's periodic refresh every 5 minutes: set
# SECS=300 to see one). The upstream named in every configuration is 127.0.0.53, which nothing in
# the namespace answers: nothing is asked anyway.
#
# It is a benchmark, not a test: it prints figures and never fails on them; it fails only when
# the setup does.
#
# Run as root on Debian 12, from anywhere:   tests/bench/idle.sh
# Prerequisites: apt-get install -y unbound dnsmasq-base iproute2
#
# Environment:
#   SECS=60        seconds watched per server
#   SETTLE=10      seconds after start before watching
#   SERVERS="p2pdns p2pdns-resolvconf p2pdns-peer unbound dnsmasq"
#   P2PDNS_BIN=path   use this p2pdns binary instead of `cargo build --release --locked`
#   KEEP_TMP=1     keep the temporary directory
#
# Everything runs inside namespaces this script creates and deletes, including on error or
# Ctrl-C. A run takes about (SETTLE + SECS + 2) seconds per server.

set -Eeuo pipefail

export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
export REPO_ROOT

SECS=${SECS:-60}
SETTLE=${SETTLE:-10}
SERVERS=${SERVERS:-p2pdns p2pdns-resolvconf p2pdns-peer unbound dnsmasq}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[idle] %s\n' "$*" >&2; }
die() { printf '[idle] error: %s\n' "$*" >&2; exit 1; }

for var in SECS SETTLE KEEP_TMP; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, not '${!var}'"
done
((SECS >= 1)) || die "SECS must be at least 1"
for s in $SERVERS; do
    case $s in p2pdns | p2pdns-resolvconf | p2pdns-peer | unbound | dnsmasq) ;; *) die "unknown server '$s' in SERVERS" ;; esac
done
((EUID == 0)) || die "network namespaces need root"
for tool in ip unbound dnsmasq; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool: apt-get install -y unbound dnsmasq-base iproute2"
done

# shellcheck source=tests/bench/common.sh
source "$SCRIPT_DIR/common.sh"
if [[ " $SERVERS " == *" p2pdns"* ]]; then
    find_p2pdns
fi
start_workspace idle

NETNS=()
remove_namespaces() {
    local ns
    for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap 'remove_namespaces; cleanup' EXIT

# The p2pdns configuration: the embedded defaults, with the upstream given here.
start_p2pdns() { # netns dir extra-args...
    local ns=$1 dir=$2
    shift 2
    ip netns exec "$ns" env HOME="$dir/home" "$P2PDNS" --data-dir "$dir/data" run \
        --dns-listen 127.0.0.1:53 "$@" -q >>"$dir/log" 2>&1 &
    echo $!
}

# The quiet network of p2pdns-peer: an introduction server on the namespace's loopback (P2P on
# TCP and QUIC 4747, STUN on 3478). Sets BOOTSTRAP to its addresses (the --bootstrap arguments)
# once it logs them.
start_intro() { # netns dir
    local ns=$1 dir=$2 i addrs
    mkdir -p "$dir"
    printf '[p2p]\nmdns = false\nnat_probe_private_addresses = true\n' >"$dir/intro.toml"
    ip netns exec "$ns" env HOME="$dir" RUST_LOG=info "$P2PDNS" --config "$dir/intro.toml" --data-dir "$dir/data" \
        intro --p2p-listen /ip4/127.0.0.1/tcp/4747 --external-addr /ip4/127.0.0.1/tcp/4747 \
        --p2p-listen /ip4/127.0.0.1/udp/4747/quic-v1 --external-addr /ip4/127.0.0.1/udp/4747/quic-v1 \
        --stun-listen 127.0.0.1:3478 >>"$dir/log" 2>&1 &
    PID[intro]=$!
    for ((i = 0; i < 100; i++)); do
        addrs=$(sed -n 's/.*nodes join with --bootstrap.*addr=\([^ ]*\).*/\1/p' "$dir/log")
        if (($(wc -w <<<"$addrs") >= 2)); then
            BOOTSTRAP=()
            for addr in $addrs; do BOOTSTRAP+=(--bootstrap "$addr"); done
            return 0
        fi
        kill -0 "${PID[intro]}" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$dir/log" >&2
    die "the introduction server did not start (log above)"
}

start_server() { # name netns dir: prints the pid
    local name=$1 ns=$2 dir=$3
    mkdir -p "$dir"
    case $name in
    p2pdns) start_p2pdns "$ns" "$dir" --upstream 127.0.0.53 ;;
    p2pdns-peer)
        # The embedded defaults (TCP and QUIC on a port of its own) but mDNS, which has no one
        # to find on a loopback link.
        printf '[p2p]\nmdns = false\n' >"$dir/p2pdns.toml"
        start_p2pdns "$ns" "$dir" --config "$dir/p2pdns.toml" --upstream 127.0.0.53 "${BOOTSTRAP[@]}"
        ;;
    p2pdns-resolvconf)
        printf 'nameserver 127.0.0.53\n' >"$dir/resolv.conf"
        printf '[upstream]\nresolv_conf = "%s"\n' "$dir/resolv.conf" >"$dir/p2pdns.toml"
        start_p2pdns "$ns" "$dir" --config "$dir/p2pdns.toml"
        ;;
    unbound)
        {
            echo "server:"
            unbound_server_lines 53 "$dir"
            printf '    module-config: "iterator"\nremote-control:\n    control-enable: no\n'
            printf 'forward-zone:\n    name: "."\n    forward-addr: 127.0.0.53\n'
        } >"$dir/unbound.conf"
        ip netns exec "$ns" unbound -d -c "$dir/unbound.conf" >>"$dir/log" 2>&1 &
        echo $!
        ;;
    dnsmasq)
        ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
            --port=53 --listen-address=127.0.0.1 --bind-interfaces --server=127.0.0.53 \
            --user="$(id -un)" --pid-file="$dir/dnsmasq.pid" --log-facility=- >>"$dir/log" 2>&1 &
        echo $!
        ;;
    esac
}

switches() { # pid: context switches of all its threads so far
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}

ticks() { # pid: utime + stime of all its threads, in clock ticks
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

per_thread() { # pid: "comm switches" per thread name
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" \
            "$(awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }' "$t/status")"
    done | awk '{ a[$1] += $2 } END { for (k in a) print k, a[k] }' | sort
}

declare -A WAKE=() CPU=() THREADS=()
for name in $SERVERS; do
    ns=p2pdns-idle-$$-$name
    ip netns add "$ns"
    NETNS+=("$ns")
    ip netns exec "$ns" ip link set lo up
    dir=$WORK/$name
    [[ $name != p2pdns-peer ]] || start_intro "$ns" "$dir/intro"
    pid=$(start_server "$name" "$ns" "$dir")
    PID[$name]=$pid
    log "$name: started (pid $pid) in namespace $ns; settling $SETTLE s"
    sleep "$SETTLE"
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/log" >&2; die "$name exited (log above)"; }
    per_thread "$pid" >"$dir/threads.before"
    s0=$(switches "$pid")
    c0=$(ticks "$pid")
    log "$name: watching $SECS s"
    sleep "$SECS"
    s1=$(switches "$pid")
    c1=$(ticks "$pid")
    per_thread "$pid" >"$dir/threads.after"
    WAKE[$name]=$(awk -v a="$s0" -v b="$s1" -v s="$SECS" 'BEGIN { printf "%.2f", (b - a) / s }')
    CPU[$name]=$((c1 - c0))
    THREADS[$name]=$(join "$dir/threads.before" "$dir/threads.after" |
        awk '$3 > $2 { printf "%s%s %d", sep, $1, $3 - $2; sep = ", " }')
    stop_pid "$name"
    stop_pid intro
    ip netns del "$ns"
done

echo
echo "## Idle cost: p2pdns vs unbound vs dnsmasq"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -sr), nproc $(nproc)."
echo "Each server alone in a network namespace of its own (loopback only), no query, no peer but"
echo "p2pdns-peer's: an introduction server beside it (not measured);"
echo "watched for $SECS s after $SETTLE s of start-up. Clock ticks: $(getconf CLK_TCK) a second."
echo
echo "| server | wake-ups a second | wake-ups a minute | CPU ticks in $SECS s |"
echo "|---|---:|---:|---:|"
for name in $SERVERS; do
    printf '| %s | %s | %s | %s |\n' "$name" "${WAKE[$name]}" \
        "$(awk -v w="${WAKE[$name]}" 'BEGIN { printf "%.0f", w * 60 }')" "${CPU[$name]}"
done
echo
echo "Wake-ups: voluntary and involuntary context switches of all the server's threads."
echo "p2pdns: --upstream 127.0.0.53; p2pdns-resolvconf: the upstreams of a resolv.conf it watches."
echo
echo "Threads that woke (name, context switches in $SECS s):"
for name in $SERVERS; do echo "- $name: ${THREADS[$name]:-none}"; done
echo
echo "Reproduce (from the repository root):"
echo
printf '    SECS=%s SETTLE=%s SERVERS="%s" tests/bench/idle.sh\n' "$SECS" "$SETTLE" "$SERVERS"
