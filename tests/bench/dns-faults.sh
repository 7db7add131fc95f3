#!/usr/bin/env bash
# Forwarding-fault comparison: p2pdns side by side with unbound and dnsmasq (issue 11).
#
# What it shows: how each resolver answers when its upstream misbehaves in the ways issue 11
# lists (kinds 1-6 and 8; kind 7 is .p2p-only and kind 9 is configuration, both left out). All
# three forward every name to tests/bench/faulty_upstream.py, a scripted upstream that picks its
# fault from the query name (x.edns-formerr.example. is refused with FORMERR when the query
# carries EDNS, and so on; `faulty_upstream.py list` prints them all). Each resolver has its own
# copy of the upstream, so its query log tells what that resolver sent (the script reads it for
# "was it forwarded", "was it cached", "what flags went upstream"). Every name is asked with dig,
# and each row prints, per resolver, the verdict against what the issue expects (PASS / FAIL, or
# "-" where the issue leaves a choice or the row only shows a behaviour), the RCODE, the flags
# that matter and the records.
#
# The resolvers are restarted for every group of rows, so no cache or learned upstream state
# (EDNS support, a server marked down) carries over from one group to the next: each EDNS
# upstream, each record type of kind 4 and each undecodable answer of kind 5 has a group of its
# own, so a row shows that fault and not the after-effects of the row before. Within a group each
# row uses its own names. The three resolvers run at once, each on its own port.
#
# It is a report, not a test: it prints a table and exits 0 whatever the verdicts. It fails only
# when the setup does (a missing tool, a resolver that does not start or answer a plain name).
#
# Run as root on Debian 12, from anywhere:   tests/bench/dns-faults.sh
# Prerequisites: apt-get install -y unbound dnsmasq-base bind9-dnsutils python3
# (written against unbound 1.17.1, dnsmasq 2.90 and dig 9.18.49 from Debian 12; the report prints
# the versions it ran with)
#
# Environment:
#   P2PDNS_BIN=path   use this p2pdns binary instead of `cargo build --release --locked`
#   RESOLVERS="unbound dnsmasq p2pdns"   which resolvers to compare, in this column order
#   ONLY="..."        run only these groups of rows (default: all; names in GROUP_LIST below,
#                     e.g. ONLY="edns-formerr dnssec")
#   DIG_TIME=2        dig +time: seconds a client waits for an answer (one try)
#   DROP_TIME=5       dig +time for the rows whose upstream drops EDNS queries, so a resolver
#                     that falls back to plain queries after timeouts has the time to do it
#   KEEP_TMP=1        keep the temporary directory (configs, logs, dig output, upstream logs)
#
# Resolver set-up: unbound with `forward-zone: "."` to the upstream and its default modules
# (validator iterator) but no trust anchor, so nothing is validated and no DNSSEC proof is
# fetched; dnsmasq with --no-resolv --no-hosts --server; p2pdns with `run --config` (listen,
# upstream, [p2p] enabled = false, data_dir in the temporary directory). Everything else is each
# resolver's default. Everything listens on 127.0.0.1 high ports only; all processes and files
# are removed on exit, including on error or Ctrl-C. A run takes about 30 s.

set -Eeuo pipefail

export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
UPSTREAM_PY=$SCRIPT_DIR/faulty_upstream.py

RESOLVERS=${RESOLVERS:-unbound dnsmasq p2pdns}
DIG_TIME=${DIG_TIME:-2}
DROP_TIME=${DROP_TIME:-5}
KEEP_TMP=${KEEP_TMP:-0}
GROUP_LIST=(edns-formerr edns-notimp edns-drop edns-strict dnssec special
    rdata-unknown-empty rdata-unknown-bytes rdata-null-empty rdata-apl-empty rdata-txt-empty
    rdata-caa-odd rdata-caa-critical rdata-https-unknown-key
    cname-negative mismatch bad-rdlen bad-pointer bad-count)
GROUP_ORDER="${GROUP_LIST[*]}"
GROUPS_RUN=${ONLY:-$GROUP_ORDER}

log() { printf '[faults] %s\n' "$*" >&2; }
die() { printf '[faults] error: %s\n' "$*" >&2; exit 1; }

for var in DIG_TIME DROP_TIME KEEP_TMP; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, not '${!var}'"
done
((DIG_TIME >= 1 && DROP_TIME >= 1)) || die "DIG_TIME and DROP_TIME must be at least 1"
for r in $RESOLVERS; do
    case $r in unbound | dnsmasq | p2pdns) ;; *) die "unknown resolver '$r' in RESOLVERS" ;; esac
done
for g in $GROUPS_RUN; do
    [[ " $GROUP_ORDER " == *" $g "* ]] || die "unknown group '$g' in ONLY (groups: $GROUP_ORDER)"
done

# --- prerequisites -----------------------------------------------------------------------------

missing=()
for tool in dig python3 ss; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
for r in unbound dnsmasq; do
    [[ " $RESOLVERS " != *" $r "* ]] || command -v "$r" >/dev/null 2>&1 || missing+=("$r")
done
if ((${#missing[@]})); then
    printf '[faults] missing: %s\n' "${missing[*]}" >&2
    printf '[faults] install them with:\n  apt-get install -y unbound dnsmasq-base bind9-dnsutils python3\n' >&2
    exit 1
fi
((EUID == 0)) || log "warning: not running as root; the script is meant to run as root"
[[ -r $UPSTREAM_PY ]] || die "$UPSTREAM_PY is missing"

# shellcheck source=tests/bench/common.sh
source "$SCRIPT_DIR/common.sh"
if [[ " $RESOLVERS " == *" p2pdns "* ]]; then
    find_p2pdns
fi

# --- temporary directory, processes and cleanup ------------------------------------------------

start_workspace faults
mkdir -p "$WORK/res" "$WORK/out"

# --- the upstreams: one faulty_upstream.py per resolver ----------------------------------------

declare -A UPORT=() PORT=() CMD=()

for r in $RESOLVERS; do
    UPORT[$r]=$(free_port)
    python3 "$UPSTREAM_PY" serve --listen "127.0.0.1:${UPORT[$r]}" --log "$WORK/upstream-$r.log" \
        2>>"$WORK/upstream-$r.err" &
    PID[upstream-$r]=$!
done
for r in $RESOLVERS; do
    for ((i = 0; i < 50; i++)); do
        [[ $(dig +short +time=1 +tries=1 @127.0.0.1 -p "${UPORT[$r]}" ready.probe.example A 2>/dev/null) == 192.0.2.1 ]] && break
        kill -0 "${PID[upstream-$r]}" 2>/dev/null || die "the upstream for $r exited: $(tail -n 5 "$WORK/upstream-$r.err")"
        sleep 0.1
    done
    ((i < 50)) || die "the upstream for $r on port ${UPORT[$r]} does not answer"
done
log "upstreams answer on 127.0.0.1:$(for r in $RESOLVERS; do printf '%s (%s) ' "${UPORT[$r]}" "$r"; done)"

# --- the resolvers -----------------------------------------------------------------------------

start_unbound() { # port upstream-port
    local dir=$WORK/unbound
    mkdir -p "$dir"
    {
        echo "server:"
        unbound_server_lines "$1" "$dir"
        cat <<EOF
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$2
EOF
    } >"$dir/unbound.conf"
    CMD[unbound]="unbound -d -c $dir/unbound.conf"
    unbound -d -c "$dir/unbound.conf" >>"$WORK/unbound.log" 2>&1 &
    PID[unbound]=$!
}

start_dnsmasq() { # port upstream-port
    local dir=$WORK/dnsmasq
    mkdir -p "$dir"
    local args=(--keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts
        --port="$1" --listen-address=127.0.0.1 --bind-interfaces
        --server="127.0.0.1#$2" --user="$(id -un)"
        --pid-file="$dir/dnsmasq.pid" --log-facility=-)
    CMD[dnsmasq]="dnsmasq ${args[*]}"
    dnsmasq "${args[@]}" >>"$WORK/dnsmasq.log" 2>&1 &
    PID[dnsmasq]=$!
}

start_p2pdns() { # port upstream-port
    local dir=$WORK/p2pdns
    rm -rf "$dir"
    mkdir -p "$dir/home" "$dir/data"
    cat >"$dir/p2pdns.toml" <<EOF
data_dir = "$dir/data"
[dns]
listen = ["127.0.0.1:$1"]
[upstream]
servers = ["127.0.0.1:$2"]
[p2p]
enabled = false
EOF
    CMD[p2pdns]="$P2PDNS run --config $dir/p2pdns.toml -q"
    HOME=$dir/home env -u RUST_LOG -u P2PDNS_CONFIG -u P2PDNS_DATA_DIR \
        "$P2PDNS" run --config "$dir/p2pdns.toml" -q >>"$WORK/p2pdns.log" 2>&1 &
    PID[p2pdns]=$!
}

# Waits until resolver $1 answers a plain name (any answer at all: the upstream's A).
wait_ready() {
    local r=$1 i answer=""
    for ((i = 0; i < 100; i++)); do
        kill -0 "${PID[$r]}" 2>/dev/null || {
            tail -n 20 "$WORK/$r.log" >&2 || true
            die "$r exited during startup (log above)"
        }
        answer=$(dig +short +tries=1 +time=1 @127.0.0.1 -p "${PORT[$r]}" "ready$i.probe.example" A 2>/dev/null || true)
        [[ $answer == 192.0.2.1 ]] && return 0
        sleep 0.1
    done
    tail -n 20 "$WORK/$r.log" >&2 || true
    die "$r on port ${PORT[$r]} did not answer ready.probe.example within 10 s (last answer: '${answer:-none}')"
}

version_of() {
    case $1 in
    p2pdns) # not head: with pipefail, SIGPIPE would fail
        printf '%s (%s, modified %s)\n' "$("$P2PDNS" --version | awk 'NR == 1')" "$P2PDNS" \
            "$(date -u -r "$P2PDNS" '+%Y-%m-%d %H:%M UTC')" ;;
    unbound) unbound -V 2>&1 | awk 'NR == 1 { sub(/^Version /, "unbound "); print }' ;;
    dnsmasq) dnsmasq --version | awk 'NR == 1 { print $1 " " $3 }' ;;
    esac
}

# --- asking and reading answers (these run in one worker per resolver) ------------------------

R="" RPORT="" # the worker's resolver and its port

# ask TAG NAME TYPE [dig options]: asks the worker's resolver, keeps dig's output in
# $WORK/out/$R/TAG and reads it into RC (status, or TIMEOUT/MALFORMED/ERROR), FLAGS, EDE, AN and
# NS (the answer and authority records, one "owner ttl class type rdata" line each) and QNAME.
ask() {
    local tag=$1 qname=$2 qtype=$3 out
    shift 3
    out=$WORK/out/$R/$tag
    QNAME=${qname,,}
    [[ $QNAME == *. ]] || QNAME+=.
    dig @127.0.0.1 -p "$RPORT" +time="$DIG_TIME" +tries=1 +noall +comments +answer +authority \
        "$@" "$qname" "$qtype" >"$out" 2>&1 || true
    RC=$(awk '
        /status: / { match($0, /status: [A-Z0-9]+/); s = substr($0, RSTART + 8, RLENGTH - 8) }
        /timed out/ { t = 1 }
        # parse failures dig reports itself, not an EDE text that says "malformed"
        /^;; (Got bad packet|Warning: Message parser reports malformed)/ { m = 1 }
        END {
            if (m) print "MALFORMED" (s != "" ? "(" s ")" : "")
            else if (s != "") print s
            else if (t) print "TIMEOUT"
            else print "ERROR"
        }' "$out")
    FLAGS=$(awk '/^;; flags:/ { sub(/^;; flags: */, ""); sub(/;.*/, ""); print; exit }' "$out")
    EDE=$(awk '/^; EDE: / {
        code = $3; text = $0; sub(/^; EDE: [0-9]+ /, "", text)
        if (match(text, /\): \(.*\)$/)) text = substr(text, RSTART + 4, RLENGTH - 5)
        else { gsub(/^\(|\)$/, "", text) }
        printf "%sEDE %s: %s", sep, code, text; sep = "; " }' "$out")
    AN=$(section ANSWER "$out")
    NS=$(section AUTHORITY "$out")
}

section() { # NAME file: the records of that section, tabs squeezed to single spaces
    awk -v want=";; $1 SECTION:" '
        $0 == want { on = 1; next }
        /^;; [A-Z]+ SECTION:/ || /^$/ { on = 0 }
        on && !/^;/ { $1 = $1; print }' "$2"
}

has_flag() { [[ " $FLAGS " == *" $1 "* ]]; }

# The records of an RR list ($1) of type $2, as "owner rdata" lines.
rrs_of() { awk -v t="$2" '$4 == t { o = tolower($1); $1 = $2 = $3 = $4 = ""; sub(/^ +/, ""); print o, $0 }' <<<"$1"; }

# One short description of the last answer: rcode, aa/ad/tc, EDE, then each record (owner shown
# only when it is not the question's name; long RDATA cut).
summary() {
    local s=$RC f line owner ttl type rdata
    for f in aa ad tc; do has_flag "$f" && s+=" $f"; done
    [[ -z $EDE ]] || s+=" ($EDE)"
    while read -r owner ttl _ type rdata; do
        [[ -n $owner ]] || continue
        ((${#rdata} <= 34)) || rdata="${rdata:0:32}.."
        owner=${owner,,}
        [[ $owner == "$QNAME" ]] && owner="" || owner="${owner%%.example.}: "
        s+=", $owner$type $rdata"
    done <<<"$AN"
    while read -r owner ttl _ type rdata; do
        [[ -n $owner ]] || continue
        s+=", auth $type ttl $ttl"
    done <<<"$NS"
    echo "$s"
}

# The upstream's log of the worker's resolver: how many queries for NAME (and TYPE) it got.
upcount() {
    local n
    n=$(awk -v q="${1,,}" -v t="${2:-}" '$2 == q && (t == "" || $3 == t) { n++ } END { print n + 0 }' \
        "$WORK/upstream-$R.log")
    echo "$n"
}
upchain() { # queries of TYPE $2 for NAME $1 or a name under it (the CNAME targets here)
    awk -v q="${1,,}" -v t="$2" '($2 == q || substr($2, length($2) - length(q)) == "." q) && $3 == t { n++ }
        END { print n + 0 }' "$WORK/upstream-$R.log"
}
upfirst() { # the first upstream log line for NAME, without the transport and name
    awk -v q="${1,,}" '$2 == q { $1 = $2 = ""; sub(/^ +/, ""); print; exit }' "$WORK/upstream-$R.log"
}

# put ROW VERDICT TEXT: this worker's cell of a row. On a row that states p2pdns's choice (or a
# behaviour the RFCs leave open), only p2pdns is judged; the others show "-".
put() {
    local verdict=$2
    if [[ ${OPEN[$1]:-} == p2pdns && $R != p2pdns ]]; then verdict="-"; fi
    [[ ${OPEN[$1]:-} != all ]] || verdict="-"
    printf '%s %s\n' "$verdict" "$3" >"$WORK/res/$1.$R"
}
judge() { if "$@"; then echo PASS; else echo FAIL; fi; }

# --- the rows ----------------------------------------------------------------------------------

ROWS=()
declare -A TITLE=() EXPECT=() OPEN=()
row() { # ID "scenario" "expected" [open: "p2pdns" = only p2pdns judged, "all" = nobody judged]
    ROWS+=("$1")
    TITLE[$1]=$2
    EXPECT[$1]=$3
    OPEN[$1]=${4:-}
}

# Kind 1: EDNS.
row 1a "EDNS: upstream FORMERR (no OPT) to OPT queries; client with EDNS" "NOERROR A 192.0.2.1 (retried without EDNS)"
row 1b "same upstream, client +noedns" "NOERROR A 192.0.2.1"
row 1c "same upstream, a second name after 1a: first query upstream" "sent without OPT (no-EDNS remembered)"
row 1d "EDNS: upstream NOTIMP (no OPT) to OPT queries; client with EDNS" "NOERROR A 192.0.2.1"
row 1e "EDNS: upstream drops OPT queries (client waits ${DROP_TIME} s)" "none (Flag Day 2019: a timeout is not an EDNS signal)" all
row 1f "same upstream, an ordinary name right after 1e" "NOERROR A 192.0.2.1 (one name's timeouts do not take the upstream out)" all
row 1g "EDNS: upstream FORMERRs (with OPT) queries with unknown EDNS options" "NOERROR A 192.0.2.1 (nothing added upstream makes it fail)"
row 1h "same upstream, client sends option 65002 (dig +ednsopt)" "NOERROR A 192.0.2.1 (options are hop-by-hop: not forwarded)"

# Kind 2: DNSSEC bits.
row 2a "DNSSEC: dig +dnssec +cd, upstream echoes what it got" "CD=1 and DO=1 reach the upstream"
row 2b "DNSSEC: plain dig (no +cd), upstream echoes what it got" "CD=0 reaches the upstream (DO shown)"
row 2c "DNSSEC: dig +cd; upstream SERVFAILs CD=0, answers CD=1" "NOERROR A 192.0.2.2"
row 2d "same name right after 2c, without +cd" "SERVFAIL (CD=1 answer cached apart)"
row 2e "another name of that upstream, first without +cd" "SERVFAIL (the upstream's answer)"
row 2f "same name right after 2e, with +cd" "NOERROR A 192.0.2.2 (CD=0 failure cached apart)"
row 2g "DNSSEC: upstream sets AD; dig +dnssec" "AD passed (p2pdns; a forwarder that does not trust upstream AD clears it)" p2pdns
row 2h "same name right after 2g (cached), dig +noadflag (no DO, no AD)" "AD clear"
row 2i "same name, plain dig (AD=1 in the query, no DO)" "AD passed (p2pdns; or cleared, as 2g)" p2pdns

# Kind 3: special-use names (upstream answers every name outside example. with 198.51.100.53).
row 3a "special: localhost A" "NOERROR A 127.0.0.1, not forwarded"
row 3b "special: foo.localhost AAAA" "NOERROR AAAA ::1, not forwarded"
row 3c "special: foo.localhost A" "NOERROR A 127.0.0.1, not forwarded"
row 3d "special: 1.0.0.127.in-addr.arpa PTR" "NOERROR PTR localhost., not forwarded"
row 3e "special: x.onion A" "NXDOMAIN, not forwarded"
row 3f "special: x.invalid A" "NXDOMAIN, not forwarded"
row 3g "special: _dns.resolver.arpa SVCB" "not forwarded (NXDOMAIN or NODATA)"
row 3h "special: router.home.arpa A" "forwarded (p2pdns's choice: the home router answers it)" p2pdns
row 3i "special: 1.1.168.192.in-addr.arpa PTR (RFC 6303 private)" "forwarded (p2pdns's choice)" p2pdns
row 3j "special: x.test A" "forwarded (p2pdns's choice; RFC 6761 asks recursive servers for NXDOMAIN)" p2pdns
row 3k "special: FOO.LocalHost A (case)" "NOERROR A 127.0.0.1, not forwarded"

# Kind 4: records passed through (dig +unknownformat shows RDATA as \# LEN HEX).
declare -A RDATA_ROW=([4a]=unknown-empty [4b]=unknown-bytes [4c]=null-empty [4d]=apl-empty
    [4e]=txt-empty [4f]=caa-odd [4g]=caa-critical [4h]=https-unknown-key)
row 4a "RDATA: TYPE65280, zero-length RDATA" "NOERROR, the same bytes (\\# 0)"
row 4b "RDATA: TYPE65280, 5 bytes with NULs" "NOERROR, the same bytes"
row 4c "RDATA: NULL (10), empty" "NOERROR, the same bytes (\\# 0)"
row 4d "RDATA: APL (42), empty (no items)" "NOERROR, the same bytes (\\# 0)"
row 4e "RDATA: TXT with one empty string" "NOERROR, the same bytes (\\# 1 00)"
row 4f "RDATA: CAA tag 'Issue', value with NUL/0xff/quote" "NOERROR, the same bytes"
row 4g "RDATA: CAA critical flag, unknown tag, empty value" "NOERROR, the same bytes"
row 4h "RDATA: HTTPS with alpn and unknown key65000" "NOERROR, the same bytes"
row 4i "RDATA: 4a asked again" "the same bytes from the cache (upstream asked once)"

# Kind 5: one undecodable answer (right ID and question), asked twice, then an ordinary name.
row 5a "undecodable: RDLENGTH past the end (asked twice)" "SERVFAIL, not blamed on a timeout (no EDE 22)"
row 5b "an ordinary name right after 5a" "NOERROR A 192.0.2.1 (upstream still in service)"
row 5c "undecodable: owner name is a pointer loop (asked twice)" "SERVFAIL, no EDE 22"
row 5d "an ordinary name right after 5c" "NOERROR A 192.0.2.1"
row 5e "undecodable: ANCOUNT 2, one record present (asked twice)" "SERVFAIL, no EDE 22"
row 5f "an ordinary name right after 5e" "NOERROR A 192.0.2.1"

# Kind 6: negative answers after a CNAME (CNAME TTL 3600, SOA TTL 3600 MINIMUM 2).
row 6a "CNAME to a name without AAAA (NODATA): AAAA" "NOERROR, CNAME, SOA in authority"
row 6b "same, asked again at once" "from the cache (upstream asked once), SOA still there"
row 6c "same, asked again 3 s later" "upstream asked again for the alias or the target (negative TTL min(3600, 2) = 2 s)"
row 6d "CNAME to a name that does not exist: AAAA" "NXDOMAIN, CNAME, SOA in authority"
row 6e "same, asked again at once" "from the cache (upstream asked once), SOA still there"
row 6f "same, asked again 3 s later" "upstream asked again (negative TTL 2 s)"

# Kind 8: an answer must answer the question.
row 8a "mismatch: AAAA asked, upstream answers an A record" "no A record handed out (SERVFAIL, or NOERROR without it)"
row 8b "same AAAA asked again" "no A record (not cached as the AAAA answer)"
row 8c "mismatch: answer holds only a record for another name" "that record not handed out (SERVFAIL, or NOERROR without it)"
row 8d "mismatch: right A plus A for www.<x>.bank.example." "A 192.0.2.8 only, the unrelated record removed"
row 8e "then www.<x>.bank.example. A asked directly" "the upstream's 192.0.2.1 (injected 203.0.113.66 not cached)"
row 8f "control: CNAME chain with the target's A in one answer" "NOERROR CNAME + A 192.0.2.7 (chain kept)"
row 8g "mismatch: right name and type, class CH" "that record not handed out (SERVFAIL, or NOERROR without it)"
row 8h "control: right answer, owner name in upper case" "NOERROR A 192.0.2.1 (names compare case-insensitively)"

# --- the groups: each runs once per resolver, in a worker with R and RPORT set -----------------

# Predicates on the last answer.
is_a() { [[ $RC == NOERROR ]] && grep -qx "$QNAME $1" <<<"$(rrs_of "$AN" A)"; }
has_rr() { [[ $RC == NOERROR ]] && grep -qx "$QNAME $2" <<<"$(rrs_of "$AN" "$1")"; }
answered() { [[ $RC != TIMEOUT && $RC != MALFORMED* && $RC != ERROR ]]; }
soa_in_ns() { grep -q ' SOA ' <<<"$NS"; }
cname_in_an() { [[ -n $(rrs_of "$AN" CNAME) ]]; }
not_forwarded() { (($(upcount "$QNAME") == 0)); }
forwarded_note() { if not_forwarded; then echo "not forwarded"; else echo "forwarded"; fi; }
opts_seen() { upfirst "$QNAME" | awk '{ print $8 }'; } # "opts=..." of the first upstream query

group_edns-formerr() {
    local v first
    ask 1a q1a.edns-formerr.example A
    put 1a "$(judge is_a 192.0.2.1)" "$(summary)"
    ask 1b q1b.edns-formerr.example A +noedns
    put 1b "$(judge is_a 192.0.2.1)" "$(summary)"
    ask 1c q1c.edns-formerr.example A
    first=$(upfirst "$QNAME")
    v=FAIL && [[ $first == *" edns=0 "* ]] && v=PASS
    put 1c "$v" "$(awk '{ print $5 }' <<<"$first"); client got $(summary)"
}

group_edns-notimp() {
    ask 1d q1d.edns-notimp.example A
    put 1d "$(judge is_a 192.0.2.1)" "$(summary)"
}

group_edns-drop() {
    ask 1e q1e.edns-drop.example A +time="$DROP_TIME"
    put 1e "$(judge is_a 192.0.2.1)" "$(summary); upstream asked $(upcount "$QNAME")x"
    ask 1f q1f.probe.example A
    put 1f "$(judge is_a 192.0.2.1)" "$(summary)"
}

group_edns-strict() {
    ask 1g q1g.edns-strict.example A
    put 1g "$(judge is_a 192.0.2.1)" "$(summary); upstream saw $(opts_seen)"
    ask 1h q1h.edns-strict.example A +ednsopt=65002:abcd
    put 1h "$(judge is_a 192.0.2.1)" "$(summary); upstream saw $(opts_seen)"
}

txt_of() { rrs_of "$AN" TXT | awk 'NR == 1 { $1 = ""; sub(/^ +/, ""); gsub(/"/, ""); print }'; }

group_dnssec() {
    local v seen
    ask 2a q2a.flags-echo.example TXT +dnssec +cd
    seen=$(txt_of)
    v=FAIL && [[ $seen == *"cd=1 "*"do=1 "* ]] && v=PASS
    put 2a "$v" "$RC, upstream saw: ${seen:-nothing}"
    ask 2b q2b.flags-echo.example TXT
    seen=$(txt_of)
    v=FAIL && [[ $seen == *"cd=0 "* ]] && v=PASS
    put 2b "$v" "$RC, upstream saw: ${seen:-nothing}"
    ask 2c q2c.cd-only.example A +cd
    put 2c "$(judge is_a 192.0.2.2)" "$(summary)"
    ask 2d q2c.cd-only.example A
    put 2d "$(judge test "$RC" = SERVFAIL)" "$(summary)"
    ask 2e q2e.cd-only.example A
    put 2e "$(judge test "$RC" = SERVFAIL)" "$(summary)"
    ask 2f q2e.cd-only.example A +cd
    put 2f "$(judge is_a 192.0.2.2)" "$(summary)"
    ask 2g q2g.ad-set.example A +dnssec
    put 2g "$(judge has_flag ad)" "$(summary)"
    ask 2h q2g.ad-set.example A +noadflag
    v=FAIL && [[ $RC == NOERROR ]] && ! has_flag ad && v=PASS
    put 2h "$v" "$(summary)"
    ask 2i q2g.ad-set.example A
    put 2i "$(judge has_flag ad)" "$(summary)"
}

# special ROW NAME TYPE RCODE [RR-TYPE RDATA]: a special-use name answered here, never forwarded.
special() {
    local v=FAIL
    ask "$1" "$2" "$3"
    if [[ $RC == "$4" ]] && not_forwarded; then
        if (($# == 4)) || has_rr "$5" "$6"; then v=PASS; fi
    fi
    put "$1" "$v" "$(summary); $(forwarded_note)"
}

group_special() {
    local v
    special 3a localhost A NOERROR A 127.0.0.1
    special 3b foo.localhost AAAA NOERROR AAAA ::1
    special 3c foo.localhost A NOERROR A 127.0.0.1
    special 3d 1.0.0.127.in-addr.arpa PTR NOERROR PTR localhost.
    special 3e x.onion A NXDOMAIN
    special 3f x.invalid A NXDOMAIN
    ask 3g _dns.resolver.arpa SVCB
    v=FAIL && { [[ $RC == NXDOMAIN ]] || [[ $RC == NOERROR && -z $AN ]]; } && not_forwarded && v=PASS
    put 3g "$v" "$(summary); $(forwarded_note)"
    ask 3h router.home.arpa A
    put 3h "$(judge is_a 198.51.100.53)" "$(summary); $(forwarded_note)"
    ask 3i 1.1.168.192.in-addr.arpa PTR
    put 3i "$(judge has_rr PTR public.example.)" "$(summary); $(forwarded_note)"
    ask 3j x.test A
    put 3j "$(judge is_a 198.51.100.53)" "$(summary); $(forwarded_note)"
    special 3k FOO.LocalHost A NOERROR A 127.0.0.1
}

# unknown_rdata TYPE MNEMONIC: the answer's records of that type as "\# LEN HEX" (dig
# +unknownformat), the spaces inside the hex removed, one per line.
unknown_rdata() {
    awk -v t="TYPE$1" -v m="$2" '$4 == t || $4 == m { $1 = $2 = $3 = $4 = ""; sub(/^ +/, "");
        len = $2; $1 = $2 = ""; gsub(/ /, ""); print "\\# " len (len > 0 ? " " : "") $0 }' <<<"$AN"
}

# rdata_row ROW: one record-passthrough row (4i, the cached copy, goes with 4a). Each runs in a
# group of its own, so that what one answer does to a resolver (an upstream rested after answers
# it could not read) does not show up in the next row.
rdata_row() {
    local id=$1 scenario type hex want got mnemonic v
    scenario=${RDATA_ROW[$id]}
    read -r type hex < <(python3 "$UPSTREAM_PY" rdata "$scenario")
    want="\\# $((${#hex} / 2))${hex:+ $hex}"
    case $type in 10) mnemonic=NULL ;; 16) mnemonic=TXT ;; 42) mnemonic=APL ;; 65) mnemonic=HTTPS ;; 257) mnemonic=CAA ;; *) mnemonic=TYPE$type ;; esac
    ask "$id" "q$id.$scenario.example" "TYPE$type" +unknownformat
    got=$(unknown_rdata "$type" "$mnemonic")
    v=FAIL && [[ $RC == NOERROR && $got == "$want" ]] && v=PASS
    put "$id" "$v" "$RC${got:+, $got}${EDE:+ ($EDE)}"
    [[ $id == 4a ]] || return 0
    ask 4i "q$id.$scenario.example" "TYPE$type" +unknownformat
    got=$(unknown_rdata "$type" "$mnemonic")
    v=FAIL && [[ $RC == NOERROR && $got == "$want" ]] && (($(upcount "$QNAME") == 1)) && v=PASS
    put 4i "$v" "$RC${got:+, $got}; upstream asked $(upcount "$QNAME")x"
}
for id in "${!RDATA_ROW[@]}"; do eval "group_rdata-${RDATA_ROW[$id]}() { rdata_row $id; }"; done

# negative ROW-FIRST ROW-AGAIN NAME RCODE: a CNAME to a negative answer, asked twice at once.
negative() {
    local v n
    ask "$1" "$3" AAAA
    v=FAIL && [[ $RC == "$4" ]] && cname_in_an && soa_in_ns && v=PASS
    put "$1" "$v" "$(summary)"
    ask "$2" "$3" AAAA
    n=$(upcount "$QNAME" 28)
    v=FAIL && [[ $RC == "$4" ]] && soa_in_ns && ((n == 1)) && v=PASS
    put "$2" "$v" "$(summary); upstream asked ${n}x"
}
# expired ROW NAME: asked again after its negative TTL, the upstream must see the alias or target.
expired() {
    local v n
    ask "$1" "$2" AAAA
    n=$(upchain "$QNAME" 28)
    v=FAIL && ((n >= 2)) && v=PASS
    put "$1" "$v" "$(summary); alias+target asked ${n}x in all"
}

group_cname-negative() {
    negative 6a 6b q6a.cname-nodata.example NOERROR
    negative 6d 6e q6d.cname-nxdomain.example NXDOMAIN
    sleep 3
    expired 6c q6a.cname-nodata.example
    expired 6f q6d.cname-nxdomain.example
}

# no_answer_rr: the answer section is empty (or has no record of TYPE $1) and dig could read it.
no_answer_rr() { answered && [[ -z $(if (($#)); then rrs_of "$AN" "$1"; else echo "$AN"; fi) ]]; }

group_mismatch() {
    local v
    ask 8a q8a.wrong-type.example AAAA
    put 8a "$(judge no_answer_rr A)" "$(summary)"
    ask 8b q8a.wrong-type.example AAAA
    put 8b "$(judge no_answer_rr A)" "$(summary)"
    ask 8c q8c.wrong-owner.example A
    put 8c "$(judge no_answer_rr)" "$(summary)"
    ask 8d q8d.extra-rr.example A
    v=FAIL && is_a 192.0.2.8 && (($(wc -l <<<"$AN") == 1)) && v=PASS
    put 8d "$v" "$(summary)"
    ask 8e www.q8d.bank.example A
    put 8e "$(judge is_a 192.0.2.1)" "$(summary)"
    ask 8f q8f.cname-nodata.example A
    v=FAIL && cname_in_an && grep -q " 192.0.2.7$" <<<"$(rrs_of "$AN" A)" && v=PASS
    put 8f "$v" "$(summary)"
    ask 8g q8g.wrong-class.example A
    put 8g "$(judge no_answer_rr)" "$(summary)"
    ask 8h q8h.case-flip.example A
    put 8h "$(judge is_a 192.0.2.1)" "$(summary)"
}

undecodable() { # scenario bad-row next-row
    local v
    ask "$2-1" "q$2.$1.example" A
    ask "$2" "q$2.$1.example" A
    v=FAIL && [[ $RC == SERVFAIL && $EDE != *"EDE 22:"* ]] && v=PASS
    put "$2" "$v" "$(summary); upstream asked $(upcount "$QNAME")x"
    ask "$3" "q$3.probe.example" A
    put "$3" "$(judge is_a 192.0.2.1)" "$(summary)"
}
group_bad-rdlen() { undecodable bad-rdlen 5a 5b; }
group_bad-pointer() { undecodable bad-pointer 5c 5d; }
group_bad-count() { undecodable bad-count 5e 5f; }

# Starts every resolver afresh, runs group $1 in one worker per resolver (all at once), stops them.
run_group() {
    local g=$1 r
    for r in $RESOLVERS; do
        PORT[$r]=$(free_port)
        "start_$r" "${PORT[$r]}" "${UPORT[$r]}"
    done
    for r in $RESOLVERS; do wait_ready "$r"; done
    for r in $RESOLVERS; do
        mkdir -p "$WORK/out/$r"
        (
            trap - EXIT INT TERM ERR
            set +e
            R=$r RPORT=${PORT[$r]} "group_$g"
        ) &
        PID[worker-$r]=$!
    done
    for r in $RESOLVERS; do
        wait "${PID[worker-$r]}" || log "the $g rows for $r ended with status $?"
        unset "PID[worker-$r]"
    done
    for r in $RESOLVERS; do stop_pid "$r"; done
}

T0=$SECONDS
for g in $GROUP_ORDER; do
    [[ " $GROUPS_RUN " == *" $g "* ]] || continue
    log "group $g"
    run_group "$g"
done
ELAPSED=$((SECONDS - T0))

# --- report ------------------------------------------------------------------------------------

declare -A PASSES=() FAILS=()
echo
echo "Forwarding faults of issue 11: what each resolver answers when its upstream misbehaves"
echo "($(date -u +%Y-%m-%d), $ELAPSED s; every name asked with dig +time=$DIG_TIME +tries=1 over UDP)."
echo
header="| row | scenario | expected |"
rule="|---|---|---|"
for r in $RESOLVERS; do
    header+=" $r |"
    rule+="---|"
    PASSES[$r]=0
    FAILS[$r]=0
done
echo "$header"
echo "$rule"
for id in "${ROWS[@]}"; do
    ran=0
    for r in $RESOLVERS; do [[ ! -e $WORK/res/$id.$r ]] || ran=1; done
    ((ran)) || continue
    line="| $id | ${TITLE[$id]} | ${EXPECT[$id]} |"
    for r in $RESOLVERS; do
        cell=$(cat "$WORK/res/$id.$r" 2>/dev/null || echo "? no result")
        case $cell in PASS*) PASSES[$r]=$((PASSES[$r] + 1)) ;; FAIL*) FAILS[$r]=$((FAILS[$r] + 1)) ;; esac
        line+=" ${cell//|/\\|} |"
    done
    echo "$line"
done
echo
printf 'Verdicts:'
for r in $RESOLVERS; do printf ' %s %d PASS / %d FAIL;' "$r" "${PASSES[$r]}" "${FAILS[$r]}"; done
echo
echo
echo "PASS/FAIL: against the \"expected\" column, which is what issue 11 asks of p2pdns. \"-\": not"
echo "judged, because the row states p2pdns's own documented choice (3h-3j) or a behaviour the RFCs"
echo "leave open (1e, 1f; 2g, 2i for unbound and dnsmasq); the cell still shows what happened. A cell reads: RCODE (or"
echo "TIMEOUT when dig got nothing in time, MALFORMED when dig could not parse what it got), the"
echo "flags aa/ad/tc when set, Extended DNS Errors, then the records (owner shown when it is not the"
echo "name asked; \"auth\" = authority section), then what the resolver's upstream log says."
echo
echo "Versions:"
for r in $RESOLVERS; do echo "- $(version_of "$r")"; done
echo "- $(dig -v 2>&1 | awk 'NR == 1')"
echo
echo "Upstream: tests/bench/faulty_upstream.py (one per resolver); the scenarios:"
echo
python3 "$UPSTREAM_PY" list | awk '{ print "    " $0 }'
echo
echo "Reproduce (from the repository root):"
echo
printf '    %s%sDIG_TIME=%s DROP_TIME=%s RESOLVERS="%s" tests/bench/dns-faults.sh\n' \
    "${P2PDNS_BIN:+P2PDNS_BIN=$P2PDNS_BIN }" "${ONLY:+ONLY=\"$ONLY\" }" "$DIG_TIME" "$DROP_TIME" "$RESOLVERS"
echo
echo "Commands used (ports of the last group; \$TMP is the temporary directory):"
echo
for r in $RESOLVERS; do echo "    ${CMD[$r]//$WORK/\$TMP}"; done
for r in $RESOLVERS; do
    if [[ -s $WORK/$r.log ]]; then
        echo
        echo "$r log, all groups ($(wc -l <"$WORK/$r.log") lines; first 10):"
        echo
        awk 'NR <= 10 { print "    " $0 }' "$WORK/$r.log"
    fi
done
