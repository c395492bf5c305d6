# lib.sh - what bench/run.sh and bench/backlog.sh share; sourced, not run.
#
# Defaults of the globals both scripts use (a script sets its own values
# after sourcing this file, before calling anything here), the clean-up that
# stops every process a script started (bench_cleanup, for its EXIT trap),
# the build of hamrd/hamrctl and of the bench programs (bench_prepare), the
# sinks (bench/countsink.c, or Postfix's smtp-sink), the load
# (bench/smtpload.c, or Postfix's smtp-source), a 3-node hamr cluster on
# 127.0.0.1 with its PKI (hamr_cluster_start, hamr_pick_targets) and one
# stock Postfix instance (postfix_start).
#
# Owns nothing by itself: the caller's work directory (WORK) and the
# processes listed in STARTED_PIDS and POSTFIX_CONFS, which bench_cleanup
# stops. Prints progress on stderr only.

# shellcheck shell=bash
# shellcheck disable=SC2034 # the globals are read by the scripts that source this file

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${HAMR_BUILD:-$REPO/build-release}
PYTHON=/usr/bin/python3
MESSAGES=5000
SESSIONS=20
PIPELINING=0
TARGET=auto
SCAN_INTERVAL=200ms
PERF=0
POSTFIX_TOOLS=0
SINK_QUIT=0 # --postfix-tools: messages after which smtp-sink exits
KEEP=0
REBUILD=0
LOAD_TIMEOUT=1800 # seconds for one load run
DRAIN_TIMEOUT=900 # seconds for the sink to count everything after the load
CLK_TCK=$(getconf CLK_TCK)
HAMR_LOG_LEVEL=warn      # [node] log_level of the cluster's nodes
HAMR_SNAPSHOT_BYTES=""   # [cluster] snapshot_bytes; empty: hamrd's default
HAMR_QUEUE_MAX=""        # [storage] queue_max_messages; empty: hamrd's default
HAMR_HTTP=0              # 1: each node gets a [listen] http port (/health/ready)

STARTED_PIDS=()    # processes to stop at exit (hamrd, countsink, perf)
POSTFIX_CONFS=()   # postfix config directories to stop at exit
WORK=""
PKI=""             # the cluster PKI (hamr), made by the first cluster that needs it
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

# bench_reap PID WHAT - wait up to 20 s for PID to end, then SIGKILL it (saying so, WHAT
# naming it).
bench_reap() {
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.2
    done
    bench_say "$2; killing it"
    kill -KILL "$1" 2>/dev/null || true
}

# bench_usage_lines FIRST,LAST - those lines of the running script's header comment (its
# usage) on stderr; exit 2.
bench_usage_lines() {
    sed -n "$1p" "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# bench_parse OPTION_FUNCTION USAGE_FUNCTION ARGS... - every option in ARGS into the globals:
# the common ones (bench_common_option), the script's own with OPTION_FUNCTION OPTION [VALUE]
# (it sets BENCH_SHIFT like bench_common_option and is false for an option it does not know),
# USAGE_FUNCTION for an unknown one.
bench_parse() {
    local fn=$1 usage=$2
    shift 2
    while [ $# -gt 0 ]; do
        if ! bench_common_option "$@" && ! "$fn" "$@"; then
            echo "$(basename "$0"): unknown option $1" >&2
            "$usage"
        fi
        shift "$BENCH_SHIFT"
    done
}

# bench_common_option OPTION [VALUE] - the options both scripts take (-m, -c, --only, --keep,
# --rebuild) into their globals; sets BENCH_SHIFT to the arguments it used; false if OPTION is
# not one of them.
bench_common_option() {
    BENCH_SHIFT=2
    case "$1" in
    -m) MESSAGES=${2:?} ;;
    -c) SESSIONS=${2:?} ;;
    --only) SYSTEMS=${2:?} ;;
    --keep) KEEP=1; BENCH_SHIFT=1 ;;
    --rebuild) REBUILD=1; BENCH_SHIFT=1 ;;
    *) return 1 ;;
    esac
}

# bench_stop_pid PID - SIGTERM, wait up to 20 s, then SIGKILL.
bench_stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    bench_reap "$pid" "pid $pid ignored SIGTERM"
}

# bench_postfix_stop CONF - stop the Postfix instance of CONF and wait for its master.
bench_postfix_stop() {
    local conf=$1 pidfile pid
    pidfile=$(postconf -c "$conf" -h queue_directory 2>/dev/null)/pid/master.pid
    [ -f "$pidfile" ] || return 0
    pid=$(tr -d ' \n' <"$pidfile")
    postfix -c "$conf" stop >/dev/null 2>&1 || true
    bench_reap "$pid" "postfix master $pid still running"
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

# bench_wait SECONDS COMMAND... - run COMMAND every 0.1 s until it succeeds, at most SECONDS
# of wall time and SECONDS*10 tries (COMMAND runs in this shell: it may set globals); false
# when either runs out.
bench_wait() {
    local end=$((SECONDS + $1)) max=$(($1 * 10)) i
    shift
    for ((i = 0; i < max && SECONDS < end; i++)); do
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
        # shellcheck disable=SC2086 # one word per field
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

# hamr_write_config DIR N VOTERS SMTP RAFT CONTROL PEER SINK TLS [HTTP] - DIR/nodeN/hamr.conf;
# TLS is "tls" (the PKI's files for node N) or "plain"; HTTP, if given, the [listen] http port.
# HAMR_LOG_LEVEL, HAMR_SNAPSHOT_BYTES and HAMR_QUEUE_MAX set the lines of the same names.
hamr_write_config() {
    local dir=$1/node$2 peer_line="" user_line="" tls_lines http_line=""
    mkdir -p "$dir/data"
    # hamrd refuses to run as root: started by root, it drops to nobody.
    [ "$(id -u)" -eq 0 ] && user_line="user = nobody"
    [ -n "$7" ] && peer_line="peer = 127.0.0.1:$7"
    [ -n "${10:-}" ] && http_line="http = 127.0.0.1:${10}"
    if [ "$9" = tls ]; then
        tls_lines="ca_file = $PKI/ca.pem
cert_file = $PKI/node-$2.pem
key_file = $PKI/node-$2.key"
    else
        tls_lines="plaintext = yes"
    fi
    cat >"$dir/hamr.conf" <<EOF
# Written by bench/$(basename "$0").
[node]
id = $2
data_dir = $dir/data
hostname = bench$2.test
log_level = $HAMR_LOG_LEVEL
$user_line

[listen]
smtp = 127.0.0.1:$4
raft = 127.0.0.1:$5
control = 127.0.0.1:$6
$peer_line
$http_line

[cluster]
voters = $3
election_timeout = 1s
heartbeat = 100ms
${HAMR_SNAPSHOT_BYTES:+snapshot_bytes = $HAMR_SNAPSHOT_BYTES}

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
${HAMR_QUEUE_MAX:+queue_max_messages = $HAMR_QUEUE_MAX}

[cluster_tls]
$tls_lines
EOF
}

# hamr_delivered PORT - hamr_deliveries_total{outcome="delivered"} on the /metrics of the node
# whose [listen] http is 127.0.0.1:PORT (HAMR_HTTP=1): the deliveries it made since it started
# (0 if it cannot be asked).
hamr_delivered() {
    [ -n "$1" ] || { echo 0; return; }
    curl -s -m 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk '$1 == "hamr_deliveries_total{outcome=\"delivered\"}" { n = $2 } END { printf "%d\n", n }'
}

# hamr_connections PORT - hamr_delivery_connections_total on that node's /metrics: the
# connections it opened to next hops since it started (0 if it cannot be asked, or an older
# build without the counter).
hamr_connections() {
    [ -n "$1" ] || { echo 0; return; }
    curl -s -m 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk '$1 == "hamr_delivery_connections_total" { n = $2 } END { printf "%d\n", n }'
}

# hamr_peer_supported DIR - true if this hamrd takes [listen] peer (followers forward).
hamr_peer_supported() {
    local ports
    ports=$(bench_free_ports 2)
    mkdir -p "$1/probe"
    # shellcheck disable=SC2086 # the two ports, one word each
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

# hamr_clock_known CONFIGS... - true once every node knows the cluster time (or the cluster is
# below level 6, which has none): until then a node answers MAIL with 451.
hamr_clock_known() {
    local p
    for p in "$@"; do
        "$BUILD/hamrctl" -c "$p" --json --timeout 2 status 2>/dev/null |
            "$PYTHON" -c 'import json, sys
d = json.load(sys.stdin)
s = d.get("status", d)
level = int(s.get("clusterLevel", s.get("cluster_level", 0)) or 0)
sys.exit(0 if s.get("clockKnown", s.get("clock_known")) or level < 6 else 1)' 2>/dev/null || return 1
    done
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

# hamr_node_start I - start node I+1 (0..2) of the cluster hamr_cluster_start made, its
# output appended to HC_DIR/nodeI+1.log; sets HC_PIDS[I].
hamr_node_start() {
    local i=$1
    "$BUILD/hamrd" -c "${HC_CONFS[i]}" >>"$HC_DIR/node$((i + 1)).log" 2>&1 </dev/null &
    HC_PIDS[i]=$!
    STARTED_PIDS+=($!)
}

# hamr_cluster_start DIR SYSTEM - three voters in DIR, started, and a leader elected. SYSTEM
# is "hamr" (mutual TLS between the nodes) or "hamr-plain" (plain TCP). Sets HC_DIR,
# HC_CONFS, HC_PIDS, HC_SMTP, HC_HTTP (ports; empty unless HAMR_HTTP=1), HC_SINK (the
# relayhost's port; the caller starts the sink) and HC_LEADER (1..3).
hamr_cluster_start() {
    local dir=$1 sys=$2 ports i voters="" raft=() ctl=() peer=() tls=plain
    HC_DIR=$dir
    HC_CONFS=()
    HC_PIDS=()
    HC_SMTP=()
    HC_HTTP=("" "" "")
    mkdir -p "$dir"
    if [ "$sys" = hamr ]; then
        hamr_pki
        tls=tls
    fi
    read -r -a ports <<<"$(bench_free_ports 16)"
    HC_SINK=${ports[0]}
    for i in 0 1 2; do
        HC_SMTP+=("${ports[1 + i]}")
        raft+=("${ports[4 + i]}")
        ctl+=("${ports[7 + i]}")
        peer+=("${ports[10 + i]}")
        [ "$HAMR_HTTP" -eq 1 ] && HC_HTTP[i]=${ports[13 + i]}
        voters+="${voters:+, }$((i + 1))@127.0.0.1:${raft[i]}"
        HC_CONFS+=("$dir/node$((i + 1))/hamr.conf")
    done
    hamr_peer_supported "$dir" || peer=("" "" "")
    for i in 0 1 2; do
        hamr_write_config "$dir" $((i + 1)) "$voters" "${HC_SMTP[i]}" "${raft[i]}" "${ctl[i]}" \
            "${peer[i]}" "$HC_SINK" "$tls" "${HC_HTTP[i]}"
        "$BUILD/hamrd" --check-config -c "${HC_CONFS[i]}" >/dev/null ||
            bench_die "bad config ${HC_CONFS[i]}"
    done
    for i in 0 1 2; do
        hamr_node_start "$i"
    done
    bench_wait 60 hamr_find_leader "${HC_CONFS[@]}" ||
        bench_die "no leader in 60 s (see $dir/node*.log)"
    HC_LEADER=$(hamr_find_leader "${HC_CONFS[@]}") || bench_die "leadership changed during start-up"
    # A follower takes mail once it knows the cluster time, a report or two after the
    # election: probed before, it would answer 451 and the load would go to the leader only.
    bench_wait 30 hamr_clock_known "${HC_CONFS[@]}" ||
        bench_say "$sys: a node does not know the cluster time after 30 s (see $dir/node*.log)"
}

# hamr_pick_targets SYSTEM - where the load goes: one probe message to each follower of the
# cluster hamr_cluster_start made; if both take it (they forward to the leader) and TARGET is
# not "leader", all three SMTP ports, else the leader's. Sets HC_TARGETS, HC_MODE ("spread"
# or "leader"), HC_PROBE_OK (probe messages accepted) and HC_LABEL.
hamr_pick_targets() {
    local sys=$1 i
    HC_MODE=leader
    HC_PROBE_OK=0
    HC_TARGETS=()
    if [ "$TARGET" != leader ]; then
        HC_MODE=spread
        for i in 0 1 2; do
            [ $((i + 1)) -eq "$HC_LEADER" ] && continue
            if "$BUILD/bench/smtpload" -s "127.0.0.1:${HC_SMTP[i]}" -c 1 -m 1 -t 30 -v \
                >>"$HC_DIR/probe.log" 2>&1; then
                HC_PROBE_OK=$((HC_PROBE_OK + 1))
            else
                HC_MODE=leader
            fi
        done
    fi
    if [ "$TARGET" = spread ] && [ "$HC_MODE" = leader ]; then
        NOTES+=("$sys: --target spread asked for, but a follower refused mail: sent to the leader only")
    fi
    if [ "$HC_MODE" = spread ]; then
        for i in 0 1 2; do HC_TARGETS+=("127.0.0.1:${HC_SMTP[i]}"); done
        HC_LABEL="$sys 3 nodes, all 3"
    else
        HC_TARGETS=("127.0.0.1:${HC_SMTP[HC_LEADER - 1]}")
        HC_LABEL="$sys 3 nodes, leader only"
    fi
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
# Written by bench/$(basename "$0"): a stock Postfix relay for the benchmark.
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


# postfix_start DIR SMTP_PORT SINK_PORT - a Postfix instance in DIR (postfix_setup), started
# and answering on SMTP_PORT; sets PF_MASTER (its master's pid).
postfix_start() {
    local dir=$1
    postfix_setup "$dir" "$2" "$3"
    postfix -c "$dir/conf" check >/dev/null 2>&1 ||
        bench_die "postfix check failed for $dir/conf (see $dir/maillog)"
    POSTFIX_CONFS+=("$dir/conf")
    postfix -c "$dir/conf" start >/dev/null 2>&1 ||
        bench_die "postfix did not start (see $dir/maillog)"
    bench_wait 30 postfix_banner "$2" || bench_die "postfix does not answer on $2"
    PF_MASTER=$(tr -d ' \n' <"$dir/queue/pid/master.pid")
}
