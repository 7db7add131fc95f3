# Shared by the benchmark scripts in this directory (sourced, not run): the p2pdns binary to
# measure, the temporary directory, the processes started and their cleanup, free ports.
# The sourcing script defines log, die, REPO_ROOT and KEEP_TMP first.

# Sets P2PDNS: $P2PDNS_BIN when given, else a release build of this checkout.
find_p2pdns() {
    if [[ -n ${P2PDNS_BIN:-} ]]; then
        [[ -x $P2PDNS_BIN ]] || die "P2PDNS_BIN=$P2PDNS_BIN is not an executable"
        P2PDNS=$(cd "$(dirname "$P2PDNS_BIN")" && pwd)/$(basename "$P2PDNS_BIN")
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust or set P2PDNS_BIN"
    log "building p2pdns: cargo build --release --locked (in $REPO_ROOT)"
    (cd "$REPO_ROOT" && cargo build --release --locked) >&2 || die "cargo build failed (exit $?)"
    P2PDNS=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/p2pdns
    [[ $P2PDNS == /* ]] || P2PDNS=$REPO_ROOT/$P2PDNS
    [[ -x $P2PDNS ]] || die "build finished but $P2PDNS is missing"
}

# Makes the temporary directory WORK (named after $1) and arranges for every process in PID to
# be stopped and WORK removed (unless KEEP_TMP=1) however the script ends.
start_workspace() { # name
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/p2pdns-$1.XXXXXX")
    trap cleanup EXIT
    trap 'log "failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR
    trap 'log interrupted; exit 130' INT
    trap 'log terminated; exit 143' TERM
}
declare -A PID=() # name -> pid of every process we started and have not reaped yet

stop_pid() { # name: TERM, then KILL after 5 s
    local name=$1 pid=${PID[$1]:-} i
    [[ -n $pid ]] || return 0
    unset "PID[$name]"
    kill -CONT "$pid" 2>/dev/null || true # a paused server would not act on TERM
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    for name in "${!PID[@]}"; do stop_pid "$name"; done
    [[ -z ${QUOTA_DIR:-} ]] || rmdir "$QUOTA_DIR" 2>/dev/null || log "could not remove $QUOTA_DIR"
    if ((KEEP_TMP)); then
        log "kept $WORK"
    else
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}

# Makes QUOTA_DIR, a CPU cgroup (v2, or v1's cpu controller) whose processes together may use $1 %
# of one CPU, in 10 ms periods; cleanup removes it. `limit_cpu PID` moves a process (all its
# threads) into it.
make_cpu_quota() { # percent
    local quota=$(($1 * 100)) period=10000
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
            echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
            die "the cgroup v2 cpu controller is not available for a CPU quota"
        QUOTA_DIR=/sys/fs/cgroup/p2pdns-bench-$$
        mkdir "$QUOTA_DIR" || die "cannot make $QUOTA_DIR (run as root)"
        echo "$quota $period" >"$QUOTA_DIR/cpu.max"
    elif [[ -d /sys/fs/cgroup/cpu ]]; then
        QUOTA_DIR=/sys/fs/cgroup/cpu/p2pdns-bench-$$
        mkdir "$QUOTA_DIR" || die "cannot make $QUOTA_DIR (run as root)"
        echo "$period" >"$QUOTA_DIR/cpu.cfs_period_us"
        echo "$quota" >"$QUOTA_DIR/cpu.cfs_quota_us"
    else
        die "no cgroup CPU controller found for a CPU quota"
    fi
}

limit_cpu() { # pid
    echo "$1" >"$QUOTA_DIR/cgroup.procs" || die "cannot move process $1 into $QUOTA_DIR"
}

# A port free for both UDP and TCP on 127.0.0.1, below the ephemeral range, not handed out yet.
USED_PORTS=" "
free_port() {
    local port i
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $port "* ]] && continue
        if [[ -z $(ss -Hantu "sport = :$port") ]]; then
            USED_PORTS+="$port "
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# The server: lines every unbound of these benchmarks shares: one thread on 127.0.0.1:PORT, in
# the foreground, no chroot or logs of its own, loopback clients, loopback upstreams allowed.
unbound_server_lines() { # port dir
    cat <<EOF
    verbosity: 0
    num-threads: 1
    interface: 127.0.0.1@$1
    port: $1
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$2"
    pidfile: ""
    use-syslog: no
    logfile: ""
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
EOF
}

# Waits up to 10 s for the server on 127.0.0.1:PORT to answer NAME (default localhost.) with
# data; dies if it does not.
wait_answer() { # port [name]
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -n $(dig +short +time=1 +tries=1 -p "$1" @127.0.0.1 "${2:-localhost}" A 2>/dev/null) ]] && return 0
        sleep 0.1
    done
    die "no answer for ${2:-localhost} on port $1"
}
