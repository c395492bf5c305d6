#!/usr/bin/env bash
# run.sh - throughput and latency of a 3-node hamr cluster, with mutual TLS
# between its nodes and with plain TCP, against a stock single Postfix relay
# on this machine, in one run.
#
#   bench/run.sh [-m MESSAGES] [-c SESSIONS] [-z "4K 64K"] [--long] [-P]
#                [--only "hamr hamr-plain postfix"] [--target auto|leader|spread]
#                [--scan-interval DUR] [--outage] [--postfix-tools] [--perf] [--keep]
#                [--rebuild]
#
# Systems (all three by default; --only names some, in the order to run them):
#   hamr         raft, peer and control channels in mutual TLS 1.3 (the
#                default): a PKI made in the work directory by
#                deploy/make-pki.sh (a CA and nodes 1-3), [cluster_tls] in
#                each node's config
#   hamr-plain   the same cluster with those channels in plain TCP
#                ([cluster_tls] plaintext = yes, a lab's setting)
#   postfix      one stock Postfix
#
# For every system and message size it starts a fresh relay and a fresh
# counting sink (bench/countsink.c) on 127.0.0.1, sends MESSAGES messages
# over SESSIONS concurrent SMTP sessions with bench/smtpload.c, waits
# (bounded) until the sink has counted every accepted message, and stops
# everything again. It prints one table:
#   msg/s e2e    accepted messages / (sink's last receipt - first MAIL sent)
#   accept/s     accepted messages / (last reply - first MAIL), client side
#   p50/p99 ms   time from writing the final "." to reading its reply (250s)
#   non-250      messages refused (any reply but 250) or lost with the connection
#   cpu s        CPU seconds of the relay's processes during the case
#
# --postfix-tools: the load comes from Postfix's smtp-source (one per target,
# sessions and messages split between them, -d: messages follow each other
# on a session) and the sink is Postfix's smtp-sink (-M: it exits after the
# last message, and that moment ends "seconds"). smtp-source reports no
# per-message latency, so p50/p99 are "-"; accept/s is messages / the
# smtp-source run's wall time. The default tools measure the same things
# plus the latency of every message.
#
# --outage: the next hop is down while the load runs (the sink's port is
# reserved but nothing listens: connection refused), so every message is
# deferred and the queue grows; accept/s and latency are measured during
# that. Then the sink starts, the queue is flushed (hamrctl flush, postqueue
# -f) and "seconds" and "msg/s" run from that moment to the last message
# counted: how fast the backlog drains once the next hop is back.
#
# hamr, hamr-plain: 3 voters with their own configs and data directories in
# the work directory; [delivery] relayhost is the sink, max_per_destination
# 20; hamrctl reaches each node through its control socket (no certificate
# in either mode). Started as root, hamrd drops to nobody, which owns the
# node keys. The load goes to all three SMTP ports when a follower takes
# mail (it forwards to the leader), else to the leader alone; the table
# says which. SMTP itself is plain in both: only the channels between the
# nodes differ. Postfix: the Debian package's binaries with their own config
# directory and queue directory, master.cf as shipped (chroot off) with
# smtpd on a free port, relayhost the sink, default queue settings and
# concurrency limits.
#
# Owns: a work directory (mktemp under ${TMPDIR:-/tmp}, with the PKI in its
# pki/; removed at the end unless --keep) and every process it starts, all
# stopped by the EXIT trap.
# Builds hamrd/hamrctl (Release, no sanitizers) into HAMR_BUILD (default
# build-release/) when they are missing or with --rebuild, and the two bench
# programs into HAMR_BUILD/bench/. Installs postfix with apt-get (debconf
# "No configuration") when /usr/sbin/postfix is missing.
# Exit status: 0 when every case ran (whatever the figures), 1 on a failure
# to set up, 2 on bad usage.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${HAMR_BUILD:-$REPO/build-release}
PYTHON=/usr/bin/python3
MESSAGES=5000
SESSIONS=20
SIZES="4K 64K"
SYSTEMS="hamr hamr-plain postfix"
PIPELINING=0
TARGET=auto
SCAN_INTERVAL=200ms
PERF=0
OUTAGE=0
POSTFIX_TOOLS=0
SINK_QUIT=0 # --postfix-tools: messages after which smtp-sink exits
KEEP=0
REBUILD=0
LOAD_TIMEOUT=1800 # seconds for one load run
DRAIN_TIMEOUT=900 # seconds for the sink to count everything after the load
CLK_TCK=$(getconf CLK_TCK)

STARTED_PIDS=()    # processes to stop at exit (hamrd, countsink, perf)
POSTFIX_CONFS=()   # postfix config directories to stop at exit
WORK=""
PKI=""             # the cluster PKI (hamr), made by the first case that needs it
ROWS=()            # table rows, printed at the end
NOTES=()           # lines printed under the table

# bench_die - print a message and exit 1 (the trap cleans up).
bench_die() {
    echo "bench: $*" >&2
    exit 1
}

# bench_say - one progress line on stderr.
bench_say() {
    echo "bench: $*" >&2
}

# bench_usage - print usage and exit 2.
bench_usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# bench_parse_args - options into the globals above.
bench_parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
        -m) MESSAGES=${2:?}; shift ;;
        -c) SESSIONS=${2:?}; shift ;;
        -z) SIZES=${2:?}; shift ;;
        --long) MESSAGES=50000 ;;
        -P) PIPELINING=1 ;;
        --only) SYSTEMS=${2:?}; shift ;;
        --target) TARGET=${2:?}; shift ;;
        --scan-interval) SCAN_INTERVAL=${2:?}; shift ;;
        --perf) PERF=1 ;;
        --outage) OUTAGE=1 ;;
        --postfix-tools) POSTFIX_TOOLS=1 ;;
        --keep) KEEP=1 ;;
        --rebuild) REBUILD=1 ;;
        -h | --help) bench_usage ;;
        *) echo "bench: unknown option $1" >&2; bench_usage ;;
        esac
        shift
    done
    [[ $MESSAGES =~ ^[0-9]+$ && $MESSAGES -ge 1 ]] || bench_usage
    [[ $SESSIONS =~ ^[0-9]+$ && $SESSIONS -ge 1 ]] || bench_usage
    case "$TARGET" in auto | leader | spread) ;; *) bench_usage ;; esac
    for s in $SYSTEMS; do
        case "$s" in hamr | hamr-plain | postfix) ;; *) bench_usage ;; esac
    done
}

# bench_stop_pid PID - SIGTERM, wait up to 20 s, then SIGKILL.
bench_stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    bench_say "pid $pid ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# bench_postfix_stop CONF - stop the Postfix instance of CONF and wait for its master.
bench_postfix_stop() {
    local conf=$1 pidfile pid i
    pidfile=$(postconf -c "$conf" -h queue_directory 2>/dev/null)/pid/master.pid
    [ -f "$pidfile" ] || return 0
    pid=$(tr -d ' \n' <"$pidfile")
    postfix -c "$conf" stop >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    bench_say "postfix master $pid still running; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# bench_cleanup - EXIT trap: stop everything started, remove the work directory.
bench_cleanup() {
    local pid conf
    for pid in "${STARTED_PIDS[@]}"; do
        bench_stop_pid "$pid"
    done
    for conf in "${POSTFIX_CONFS[@]}"; do
        bench_postfix_stop "$conf"
    done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP" -eq 1 ]; then
            bench_say "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
}

# bench_forget_pid PID - drop PID from the list the trap stops.
bench_forget_pid() {
    local p keep=()
    for p in "${STARTED_PIDS[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    STARTED_PIDS=("${keep[@]}")
}

# bench_free_ports N - N distinct free TCP ports on 127.0.0.1, one line.
bench_free_ports() {
    "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# bench_wait SECONDS COMMAND... - run COMMAND every 0.1 s until it succeeds; false on timeout.
bench_wait() {
    local secs=$1 i
    shift
    for ((i = 0; i < secs * 10; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# bench_prepare - packages, the hamr build, the bench programs, the work directory.
bench_prepare() {
    if [ ! -x /usr/sbin/postfix ] || [ ! -x /usr/sbin/postconf ]; then
        [ "$(id -u)" -eq 0 ] || bench_die "postfix is not installed; run as root or install it"
        bench_say "installing postfix (debconf: No configuration)"
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix
    fi
    [ "$(id -u)" -eq 0 ] || bench_die "run as root: a Postfix instance needs it"
    if [ "$REBUILD" -eq 1 ] || [ ! -x "$BUILD/hamrd" ] || [ ! -x "$BUILD/hamrctl" ]; then
        bench_say "building hamrd and hamrctl (Release) into $BUILD"
        cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DHAMR_SANITIZE=OFF \
            -DHAMR_TESTS=OFF >/dev/null
        cmake --build "$BUILD" -j2 --target hamrd hamrctl >/dev/null
    fi
    mkdir -p "$BUILD/bench"
    local flags=(-O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow
                 -Wstrict-prototypes -Wformat=2 -Wimplicit-fallthrough)
    cc "${flags[@]}" -o "$BUILD/bench/smtpload" "$REPO/bench/smtpload.c"
    cc "${flags[@]}" -o "$BUILD/bench/countsink" "$REPO/bench/countsink.c"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/hamr-bench.XXXXXX")
    chmod 755 "$WORK" # Postfix daemons run as "postfix" and must reach their queue.
    if [ "$PERF" -eq 1 ] && ! command -v perf >/dev/null; then
        bench_say "perf not found; --perf ignored"
        PERF=0
    fi
}

# bench_port_open PORT - true if something accepts connections on 127.0.0.1:PORT.
bench_port_open() {
    "$PYTHON" -c 'import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' "$1" 2>/dev/null
}

# bench_smtp_sink_start DIR PORT - Postfix's smtp-sink on PORT, exiting after SINK_QUIT
# messages; DIR/sink.status gets "messages=N last=EPOCH" when it has; sets SINK_PID.
bench_smtp_sink_start() {
    local dir=$1 port=$2
    "$PYTHON" - "$dir/sink.status" "$SINK_QUIT" "$port" >"$dir/sink.log" 2>&1 </dev/null <<'PY' &
import os, subprocess, sys, time
status, quit_count, port = sys.argv[1], sys.argv[2], sys.argv[3]
rc = subprocess.call(["/usr/sbin/smtp-sink", "-u", "nobody", "-M", quit_count,
                      "127.0.0.1:" + port, "256"])
if rc == 0:
    with open(status + ".tmp", "w") as f:
        f.write("messages=%s first=0 last=%.6f\n" % (quit_count, time.time()))
    os.rename(status + ".tmp", status)
sys.exit(rc)
PY
    SINK_PID=$!
    STARTED_PIDS+=("$SINK_PID")
    bench_wait 10 bench_port_open "$port" || bench_die "smtp-sink did not start (see $dir/sink.log)"
}

# bench_sink_start DIR PORT - a fresh sink on PORT writing DIR/sink.status; sets SINK_PID.
bench_sink_start() {
    local dir=$1 port=$2
    if [ "$POSTFIX_TOOLS" -eq 1 ]; then
        bench_smtp_sink_start "$dir" "$port"
        return
    fi
    "$BUILD/bench/countsink" -l "127.0.0.1:$port" -o "$dir/sink.status" -t 7200 \
        -c 500 2>"$dir/sink.log" </dev/null &
    SINK_PID=$!
    STARTED_PIDS+=("$SINK_PID")
    bench_wait 10 grep -q "countsink listening" "$dir/sink.log" ||
        bench_die "countsink did not start (see $dir/sink.log)"
}

# bench_sink_field DIR KEY - one field of the sink's status file.
bench_sink_field() {
    sed -n "s/.*\\b$2=\\([0-9.]*\\).*/\\1/p" "$1/sink.status"
}

# bench_sink_has DIR COUNT - true once the sink counted at least COUNT messages.
bench_sink_has() {
    local n
    n=$(bench_sink_field "$1" messages)
    [ -n "$n" ] && [ "$n" -ge "$2" ]
}

# bench_cpu PID... - CPU seconds (user+system, plus reaped children) of the processes.
bench_cpu() {
    local pid ticks=0 f
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        # Fields after the ")" of the command name: utime is 12th, cstime 15th.
        f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        set -- $f
        ticks=$((ticks + ${12} + ${13} + ${14} + ${15}))
    done
    echo "$ticks"
}

# bench_ticks_to_s TICKS - clock ticks as seconds with 2 decimals.
bench_ticks_to_s() {
    awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'
}

# bench_field LINE KEY - value of KEY=VALUE in an smtpload summary line.
bench_field() {
    sed -n "s/.*\\b$2=\\([^ ]*\\).*/\\1/p" <<<"$1"
}

# bench_perf_start PID FILE - sample PID with call graphs into FILE; sets PERF_PID.
bench_perf_start() {
    PERF_PID=""
    [ "$PERF" -eq 1 ] || return 0
    perf record -q -F 499 -g -p "$1" -o "$2" >/dev/null 2>&1 &
    PERF_PID=$!
    STARTED_PIDS+=("$PERF_PID")
}

# bench_perf_stop FILE LABEL - stop the sampler, keep the top of the report as a note.
bench_perf_stop() {
    [ -n "${PERF_PID:-}" ] || return 0
    kill -INT "$PERF_PID" 2>/dev/null || true
    bench_wait 30 bash -c "! kill -0 $PERF_PID" || bench_stop_pid "$PERF_PID"
    bench_forget_pid "$PERF_PID"
    PERF_PID=""
    if [ -s "$1" ]; then
        perf report -i "$1" --stdio --no-children --sort dso,symbol --percent-limit 2 \
            -g none 2>/dev/null | grep -E '^ +[0-9.]+%' | sed 's/[ -]*$//' | head -12 >"$1.top" ||
            true
        NOTES+=("perf, $2 (self time, symbols over 2%):")
        while IFS= read -r line; do
            NOTES+=("    $line")
        done <"$1.top"
    fi
}

# bench_bytes SIZE - "4K" as 4096, "1M" as 1048576, "500" as 500.
bench_bytes() {
    case "$1" in
    *K) echo $((${1%K} * 1024)) ;;
    *M) echo $((${1%M} * 1024 * 1024)) ;;
    *) echo "$1" ;;
    esac
}

# bench_load_smtp_source DIR SIZE TARGETS... - one smtp-source per target; sets LOAD to a
# summary line in smtpload's keys (no latency: "-").
bench_load_smtp_source() {
    local dir=$1 size=$2 n i pids=() fails=0 t0 t1 s m
    shift 2
    n=$#
    t0=$(date +%s.%N)
    i=0
    for t in "$@"; do
        s=$((SESSIONS / n + (i < SESSIONS % n ? 1 : 0)))
        m=$((MESSAGES / n + (i < MESSAGES % n ? 1 : 0)))
        /usr/sbin/smtp-source -d -s "$s" -m "$m" -l "$(bench_bytes "$size")" \
            -f bench@example.org -t sink@example.com "$t" >>"$dir/smtpload.log" 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    for i in "${pids[@]}"; do
        wait "$i" || fails=$((fails + 1))
    done
    t1=$(date +%s.%N)
    LOAD=$(awk -v m="$MESSAGES" -v f="$fails" -v a="$t0" -v b="$t1" 'BEGIN {
        printf "ok=%d non250=0 failed=%d unsent=0 start=%.6f end=%.6f seconds=%.3f accept_rate=%.1f lat_p50_ms=- lat_p99_ms=- tool=smtp-source\n",
            m, f, a, b, b - a, m / (b - a) }')
    [ "$fails" -eq 0 ] || NOTES+=("$fails smtp-source process(es) failed (see $dir/smtpload.log)")
    echo "$LOAD" >>"$dir/smtpload.log"
}

# bench_load DIR SIZE TARGETS... - run smtpload; sets LOAD (its summary line).
bench_load() {
    local dir=$1 size=$2 t args=()
    if [ "$POSTFIX_TOOLS" -eq 1 ]; then
        bench_load_smtp_source "$@"
        return
    fi
    shift 2
    for t in "$@"; do
        args+=(-s "$t")
    done
    [ "$PIPELINING" -eq 1 ] && args+=(-P)
    LOAD=$("$BUILD/bench/smtpload" "${args[@]}" -c "$SESSIONS" -m "$MESSAGES" -z "$size" \
        -t "$LOAD_TIMEOUT" -l "$dir/latency.txt" -v 2>"$dir/smtpload.log") || true
    [ -n "$LOAD" ] || bench_die "smtpload failed (see $dir/smtpload.log)"
    echo "$LOAD" >>"$dir/smtpload.log"
}

# bench_drain DIR BASE [FROM] - wait for the sink to count every accepted message; sets
# GOT, E2E, RATE. The time runs from the first MAIL, or from FROM (epoch seconds) if given.
bench_drain() {
    local dir=$1 base=$2 ok start last
    ok=$(bench_field "$LOAD" ok)
    start=${3:-$(bench_field "$LOAD" start)}
    DRAINED=""
    if ! bench_wait "$DRAIN_TIMEOUT" bench_sink_has "$dir" $((base + ok)); then
        DRAINED="*"
        NOTES+=("* the sink had not counted every accepted message after ${DRAIN_TIMEOUT}s")
    fi
    GOT=$(($(bench_sink_field "$dir" messages) - base))
    last=$(bench_sink_field "$dir" last)
    E2E=$(awk -v a="$start" -v b="$last" 'BEGIN { printf "%.2f", b - a }')
    RATE=$(awk -v n="$GOT" -v s="$E2E" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
}

# bench_outage_end DIR SINK_PORT FLUSH_COMMAND... - the next hop comes back: start the sink,
# flush the relay's queue; sets OUTAGE_END (epoch seconds when the sink was started).
bench_outage_end() {
    local dir=$1 port=$2
    shift 2
    OUTAGE_END=$(date +%s.%N)
    bench_sink_start "$dir" "$port"
    "$@" >>"$dir/flush.log" 2>&1 || bench_say "flush failed: $* (see $dir/flush.log)"
}

# bench_row SYSTEM SIZE CPU_TICKS - one table row from LOAD and the bench_drain results.
bench_row() {
    local bad
    bad=$(($(bench_field "$LOAD" non250) + $(bench_field "$LOAD" failed) + $(bench_field "$LOAD" unsent)))
    ROWS+=("$(printf '%-32s %5s %9s %9s %8s %9s %9s %8s %8s %8s %7s' \
        "$1" "$2" "$MESSAGES" "$GOT" "$E2E" "$RATE$DRAINED" \
        "$(bench_field "$LOAD" accept_rate | cut -d. -f1)" \
        "$(bench_field "$LOAD" lat_p50_ms)" "$(bench_field "$LOAD" lat_p99_ms)" \
        "$bad" "$(bench_ticks_to_s "$3")")")
    bench_say "$1 $2: $LOAD"
    bench_say "$1 $2: sink counted $GOT in $E2E s, relay cpu $(bench_ticks_to_s "$3") s"
}

# ---------------------------------------------------------------------------
# hamr: three voters.
# ---------------------------------------------------------------------------

# hamr_pki - the cluster PKI in WORK/pki, once per run: a CA and nodes 1-3; sets PKI.
# Every case's cluster has the ids 1-3, so every case uses the same certificates.
hamr_pki() {
    local i
    [ -z "$PKI" ] || return 0
    mkdir -p "$WORK/pki"
    "$REPO/deploy/make-pki.sh" "$WORK/pki" ca >/dev/null || bench_die "make-pki.sh: no CA"
    for i in 1 2 3; do
        "$REPO/deploy/make-pki.sh" "$WORK/pki" node "$i" 127.0.0.1 >/dev/null ||
            bench_die "make-pki.sh: no certificate for node $i"
        # hamrd reads its key after dropping to nobody (and again on reload); mode stays 0600.
        [ "$(id -u)" -eq 0 ] && chown nobody "$WORK/pki/node-$i.key"
    done
    PKI=$WORK/pki
}

# hamr_write_config DIR N VOTERS SMTP RAFT CONTROL PEER SINK TLS - DIR/nodeN/hamr.conf;
# TLS is "tls" (the PKI's files for node N) or "plain".
hamr_write_config() {
    local dir=$1/node$2 peer_line="" user_line="" tls_lines
    mkdir -p "$dir/data"
    # hamrd refuses to run as root: started by root, it drops to nobody.
    [ "$(id -u)" -eq 0 ] && user_line="user = nobody"
    [ -n "$7" ] && peer_line="peer = 127.0.0.1:$7"
    if [ "$9" = tls ]; then
        tls_lines="ca_file = $PKI/ca.pem
cert_file = $PKI/node-$2.pem
key_file = $PKI/node-$2.key"
    else
        tls_lines="plaintext = yes"
    fi
    cat >"$dir/hamr.conf" <<EOF
# Written by bench/run.sh.
[node]
id = $2
data_dir = $dir/data
hostname = bench$2.test
log_level = warn
$user_line

[listen]
smtp = 127.0.0.1:$4
raft = 127.0.0.1:$5
control = 127.0.0.1:$6
$peer_line

[cluster]
voters = $3
election_timeout = 1s
heartbeat = 100ms

[smtpd]
relay_networks = 127.0.0.0/8
max_sessions = 1000
client_connection_limit = 0

[delivery]
relayhost = [127.0.0.1]:$8
max_per_destination = 20
scan_interval = $SCAN_INTERVAL
retry_min = 5s
retry_max = 60s

[storage]
min_free = 16M

[cluster_tls]
$tls_lines
EOF
}

# hamr_peer_supported DIR - true if this hamrd takes [listen] peer (followers forward).
hamr_peer_supported() {
    local ports
    ports=$(bench_free_ports 2)
    mkdir -p "$1/probe"
    printf '[node]\nid = 1\ndata_dir = %s\n[listen]\nraft = 127.0.0.1:%s\npeer = 127.0.0.1:%s\n[cluster_tls]\nplaintext = yes\n' \
        "$1/probe/data" ${ports} >"$1/probe/hamr.conf"
    "$BUILD/hamrd" --check-config -c "$1/probe/hamr.conf" >/dev/null 2>&1
}

# hamr_state CONFIG - "leader", "follower", ... of one node, or nothing. hamrctl -c goes
# through the node's control socket: no certificate, whatever [cluster_tls] says.
hamr_state() {
    "$BUILD/hamrctl" -c "$1" --json --timeout 2 status 2>/dev/null |
        "$PYTHON" -c 'import json, sys
d = json.load(sys.stdin)
print(str(d.get("status", d).get("state", "")).lower())' 2>/dev/null
}

# hamr_find_leader CONFIGS... - print the index (1..) of the single leader; false if none.
hamr_find_leader() {
    local i=0 p n=0 who=""
    for p in "$@"; do
        i=$((i + 1))
        if [ "$(hamr_state "$p")" = leader ]; then
            n=$((n + 1))
            who=$i
        fi
    done
    [ "$n" -eq 1 ] && echo "$who"
}

# hamr_case SIZE SYSTEM - one hamr case: cluster up, probe, load, drain, cluster down.
# SYSTEM is "hamr" (mutual TLS between the nodes) or "hamr-plain" (plain TCP).
hamr_case() {
    local size=$1 sys=$2
    local dir="$WORK/$sys-$size" ports sink i voters="" pids=() smtp=() raft=() ctl=()
    local peer=() confs=() leader targets=() mode base probe_ok=0 cpu0 cpu1 f label tls=plain
    mkdir -p "$dir"
    if [ "$sys" = hamr ]; then
        hamr_pki
        tls=tls
    fi
    read -r -a ports <<<"$(bench_free_ports 13)"
    sink=${ports[0]}
    for i in 0 1 2; do
        smtp+=("${ports[1 + i]}")
        raft+=("${ports[4 + i]}")
        ctl+=("${ports[7 + i]}")
        peer+=("${ports[10 + i]}")
        voters+="${voters:+, }$((i + 1))@127.0.0.1:${raft[i]}"
        confs+=("$dir/node$((i + 1))/hamr.conf")
    done
    hamr_peer_supported "$dir" || peer=("" "" "")
    SINK_QUIT=$((MESSAGES + 2)) # --postfix-tools: the load and a probe through each follower
    [ "$OUTAGE" -eq 1 ] || bench_sink_start "$dir" "$sink"
    for i in 0 1 2; do
        hamr_write_config "$dir" $((i + 1)) "$voters" "${smtp[i]}" "${raft[i]}" "${ctl[i]}" \
            "${peer[i]}" "$sink" "$tls"
        "$BUILD/hamrd" --check-config -c "${confs[i]}" >/dev/null ||
            bench_die "bad config ${confs[i]}"
    done
    for i in 0 1 2; do
        "$BUILD/hamrd" -c "${confs[i]}" >"$dir/node$((i + 1)).log" 2>&1 </dev/null &
        pids+=($!)
        STARTED_PIDS+=($!)
    done
    bench_wait 60 hamr_find_leader "${confs[@]}" || bench_die "no leader in 60 s (see $dir/node*.log)"
    leader=$(hamr_find_leader "${confs[@]}") || bench_die "leadership changed during start-up"
    # Which nodes take mail: probe every follower with one message.
    mode=leader
    if [ "$TARGET" != leader ]; then
        mode=spread
        for i in 0 1 2; do
            [ $((i + 1)) -eq "$leader" ] && continue
            if "$BUILD/bench/smtpload" -s "127.0.0.1:${smtp[i]}" -c 1 -m 1 -t 30 -v \
                >>"$dir/probe.log" 2>&1; then
                probe_ok=$((probe_ok + 1))
            else
                mode=leader
            fi
        done
    fi
    if [ "$TARGET" = spread ] && [ "$mode" = leader ]; then
        NOTES+=("$sys: --target spread asked for, but a follower refused mail: sent to the leader only")
    fi
    if [ "$mode" = spread ]; then
        for i in 0 1 2; do targets+=("127.0.0.1:${smtp[i]}"); done
        label="$sys 3 nodes, all 3"
    else
        targets=("127.0.0.1:${smtp[leader - 1]}")
        label="$sys 3 nodes, leader only"
    fi
    if [ "$POSTFIX_TOOLS" -eq 1 ] && [ "$probe_ok" -ne 2 ]; then
        bench_die "--postfix-tools needs both followers to take mail (smtp-sink counts to $SINK_QUIT)"
    fi
    [ "$OUTAGE" -eq 1 ] && label+=" (down)"
    if [ "$OUTAGE" -eq 1 ] || [ "$POSTFIX_TOOLS" -eq 1 ]; then
        # Counted with the rest: the sink is down, or smtp-sink reports only at its end.
        base=$probe_ok
    else
        bench_wait 30 bench_sink_has "$dir" "$probe_ok" || bench_die "probe messages not delivered"
        base=$(bench_sink_field "$dir" messages)
    fi
    cpu0=$(bench_cpu "${pids[@]}")
    bench_perf_start "${pids[leader - 1]}" "$dir/perf.data"
    bench_say "$sys $size: leader is node$leader; load to ${targets[*]} ($mode)"
    bench_load "$dir" "$size" "${targets[@]}"
    if [ "$OUTAGE" -eq 1 ]; then
        bench_outage_end "$dir" "$sink" "$BUILD/hamrctl" -c "${confs[leader - 1]}" flush
        bench_drain "$dir" "$base" "$OUTAGE_END"
    else
        bench_drain "$dir" "$base"
    fi
    bench_perf_stop "$dir/perf.data" "$sys leader, $size"
    cpu1=$(bench_cpu "${pids[@]}")
    bench_row "$label" "$size" $((cpu1 - cpu0))
    f=""
    for i in 0 1 2; do
        f+=" node$((i + 1))$([ $((i + 1)) -eq "$leader" ] && echo "(leader)")=$(bench_ticks_to_s "$(bench_cpu "${pids[i]}")")s"
    done
    NOTES+=("$sys $size cpu per node (whole life):$f")
    for i in "${pids[@]}" "$SINK_PID"; do
        bench_stop_pid "$i"
        bench_forget_pid "$i"
    done
}

# ---------------------------------------------------------------------------
# Postfix: one stock instance.
# ---------------------------------------------------------------------------

# postfix_tree PID - PID and all its descendants, one line.
postfix_tree() {
    local out=$1 c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        out+=" $(postfix_tree "$c")"
    done
    echo "$out"
}

# postfix_setup DIR SMTP_PORT SINK_PORT - config and queue directories for one instance.
postfix_setup() {
    local dir=$1 conf=$1/conf
    # data_directory is left for Postfix to create: it must be owned by "postfix".
    mkdir -p "$conf" "$dir/queue"
    cat >"$conf/main.cf" <<EOF
# Written by bench/run.sh: a stock Postfix relay for the benchmark.
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.example.net
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$3
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
EOF
    cp /usr/share/postfix/master.cf.dist "$conf/master.cf"
    postconf -c "$conf" -F '*/*/chroot = n'
    postconf -c "$conf" -M# smtp/inet
    postconf -c "$conf" -Me "127.0.0.1:$2/inet=127.0.0.1:$2 inet n - n - - smtpd"
}

# postfix_banner PORT - true if an SMTP server answers 220 on PORT.
postfix_banner() {
    "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
ok = s.recv(512).startswith(b"220")
s.sendall(b"QUIT\r\n")
s.close()
sys.exit(0 if ok else 1)
PY
}

# postfix_case SIZE - one Postfix case: instance up, load, drain, instance down.
postfix_case() {
    local size=$1
    local dir="$WORK/postfix-$size" ports smtp sink master cpu0 cpu1 conc
    mkdir -p "$dir"
    read -r -a ports <<<"$(bench_free_ports 2)"
    smtp=${ports[0]}
    sink=${ports[1]}
    SINK_QUIT=$MESSAGES
    [ "$OUTAGE" -eq 1 ] || bench_sink_start "$dir" "$sink"
    postfix_setup "$dir" "$smtp" "$sink"
    postfix -c "$dir/conf" check >/dev/null 2>&1 ||
        bench_die "postfix check failed for $dir/conf (see $dir/maillog)"
    POSTFIX_CONFS+=("$dir/conf")
    postfix -c "$dir/conf" start >/dev/null 2>&1 ||
        bench_die "postfix did not start (see $dir/maillog)"
    bench_wait 30 postfix_banner "$smtp" || bench_die "postfix does not answer on $smtp"
    master=$(tr -d ' \n' <"$dir/queue/pid/master.pid")
    conc=$(postconf -c "$dir/conf" -h smtp_destination_concurrency_limit)
    conc=${conc//\$default_destination_concurrency_limit/$(postconf -c "$dir/conf" -h default_destination_concurrency_limit)}
    # shellcheck disable=SC2046 # one argument per pid
    cpu0=$(bench_cpu $(postfix_tree "$master"))
    bench_say "postfix $size: smtpd on 127.0.0.1:$smtp, relayhost [127.0.0.1]:$sink"
    bench_load "$dir" "$size" "127.0.0.1:$smtp"
    if [ "$OUTAGE" -eq 1 ]; then
        bench_outage_end "$dir" "$sink" postqueue -c "$dir/conf" -f
        bench_drain "$dir" 0 "$OUTAGE_END"
    else
        bench_drain "$dir" 0
    fi
    # shellcheck disable=SC2046 # one argument per pid
    cpu1=$(bench_cpu $(postfix_tree "$master"))
    bench_row "postfix 1 node$([ "$OUTAGE" -eq 1 ] && echo " (down)")" "$size" $((cpu1 - cpu0))
    NOTES+=("postfix $size: smtp_destination_concurrency_limit=$conc, queue/process limits default, chroot off")
    bench_postfix_stop "$dir/conf"
    bench_stop_pid "$SINK_PID"
    bench_forget_pid "$SINK_PID"
}

# bench_print - the table and the notes on stdout.
bench_print() {
    local r n
    echo
    echo "hamr benchmark: $MESSAGES messages per case, $SESSIONS sessions, pipelining $([ "$PIPELINING" -eq 1 ] && echo on || echo off), $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '%-32s %5s %9s %9s %8s %9s %9s %8s %8s %8s %7s\n' system size messages delivered \
        seconds "msg/s e2e" accept/s "p50 ms" "p99 ms" non-250 "cpu s"
    for r in "${ROWS[@]}"; do
        echo "$r"
    done
    echo
    if [ "$OUTAGE" -eq 1 ]; then
        echo "(down): next hop down during the load; accept/s and latency with the queue growing; seconds, msg/s:"
        echo "from the sink's start and the queue flush to the last message counted (the backlog draining)."
    else
        echo "seconds: first MAIL sent to last message counted by the sink; latency: final \".\" to its reply."
    fi
    [ "$POSTFIX_TOOLS" -eq 1 ] &&
        echo "load: Postfix's smtp-source (no per-message latency: p50/p99 \"-\"); sink: Postfix's smtp-sink."
    echo "hamr: scan_interval $SCAN_INTERVAL, max_per_destination 20; cpu s: all relay processes."
    echo "hamr: raft, peer and control between the nodes in mutual TLS 1.3; hamr-plain: in plain TCP."
    for n in "${NOTES[@]}"; do
        echo "$n"
    done
}

main() {
    local sys size
    bench_parse_args "$@"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    bench_prepare
    for size in $SIZES; do
        for sys in $SYSTEMS; do
            case "$sys" in
            hamr | hamr-plain) hamr_case "$size" "$sys" ;;
            postfix) postfix_case "$size" ;;
            esac
        done
    done
    bench_print
}

main "$@"
