#!/usr/bin/env bash
# backlog.sh - a large backlog in a 3-node hamr cluster (mutual TLS between the
# nodes, as bench/run.sh's "hamr") and in a stock Postfix, in one run: the
# next hop is down while the messages arrive, then comes back and the queue
# drains.
#
#   bench/backlog.sh [-m MESSAGES] [-z SIZE] [-c SESSIONS] [--postfix-messages M]
#                    [--only "hamr postfix"] [--snapshot-bytes SIZE]
#                    [--phase-timeout SECONDS] [--keep] [--rebuild]
#
# MESSAGES (default 1000000) of SIZE (default 4K) go to hamr over SESSIONS
# (default 20) SMTP sessions while the sink's port is closed, in 20 slices of
# MESSAGES/20, one bench/smtpload run per slice; Postfix gets M messages
# (default MESSAGES) the same way. Then, for hamr, with everything queued:
# one follower is restarted (SIGTERM, start, /health/ready 200) and the
# other one is stopped, its data_dir deleted, and started again (ready, no
# body missing, the leader's queue digest). Then the sink (bench/countsink.c)
# starts, the queue is flushed (hamrctl flush, postqueue -f) and the script
# waits until the sink has counted every accepted message.
#
# Prints, on stdout, figures only (no thresholds):
#   accepted msg/s over the first and the last 10 % (slices 1-2 and 19-20:
#   messages / the slices' smtpload seconds) and their ratio; p99 acceptance
#   latency over the whole run (every message's, from smtpload -l) and per
#   slice; VmRSS of each hamrd (of Postfix: the sum over its master and all
#   its children) at 0, 25, 50 and 100 % queued and the growth per queued
#   message; hamr's snapshots (the leader's "consensus event=snapshot" log
#   lines: bytes, view_ms, write_ms; the snapshot files in its data_dir);
#   the follower's restart-to-ready and the wiped follower's catch-up time;
#   the drain rate after the flush and the total time.
#
# The nodes log at info (for the snapshot lines), have [listen] http for
# /health/ready and no queue_max_messages limit (MESSAGES may pass hamrd's
# default of 1000000); everything else is bench/run.sh's configuration,
# written by bench/lib.sh.
#
# Owns: a work directory (mktemp under ${TMPDIR:-/tmp}, removed at the end
# unless --keep) and every process it starts, all stopped by the EXIT trap.
# Builds like bench/run.sh (bench/lib.sh: bench_prepare). Every wait has a
# deadline: each load slice, the restart, the catch-up and the drain
# --phase-timeout seconds (default 1800); passing one ends the run with a
# message saying which.
# Exit status: 0 when everything ran (whatever the figures), 1 on a failure
# or a deadline passed, 2 on bad usage.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MESSAGES=1000000
SIZE=4K
SYSTEMS="hamr postfix"
PF_MESSAGES=""     # --postfix-messages; empty: MESSAGES
PHASE_TIMEOUT=1800 # seconds for each phase
SLICES=20          # load slices: 25 % and 50 % fall on slice ends, 10 % is two slices
HAMR_LOG_LEVEL=info
HAMR_QUEUE_MAX=0
HAMR_HTTP=1

declare -A FIG=()  # figures by "SYSTEM:NAME", printed at the end

# backlog_usage - print usage and exit 2.
backlog_usage() {
    bench_usage_lines 7,9
}

# backlog_option OPTION [VALUE] - one of backlog.sh's own options (bench_parse); false if unknown.
backlog_option() {
    BENCH_SHIFT=2
    case "$1" in
    -z) SIZE=${2:?} ;;
    --postfix-messages) PF_MESSAGES=${2:?} ;;
    --snapshot-bytes) HAMR_SNAPSHOT_BYTES=${2:?} ;;
    --phase-timeout) PHASE_TIMEOUT=${2:?} ;;
    -h | --help) backlog_usage ;;
    *) return 1 ;;
    esac
}

# backlog_parse_args - options into the globals above.
backlog_parse_args() {
    local s
    bench_parse backlog_option backlog_usage "$@"
    PF_MESSAGES=${PF_MESSAGES:-$MESSAGES}
    [[ $MESSAGES =~ ^[0-9]+$ && $MESSAGES -ge $SLICES ]] || backlog_usage
    [[ $PF_MESSAGES =~ ^[0-9]+$ && $PF_MESSAGES -ge $SLICES ]] || backlog_usage
    [[ $SESSIONS =~ ^[0-9]+$ && $SESSIONS -ge 1 ]] || backlog_usage
    [[ $PHASE_TIMEOUT =~ ^[0-9]+$ && $PHASE_TIMEOUT -ge 10 ]] || backlog_usage
    [[ $SIZE =~ ^[0-9]+[KM]?$ ]] || backlog_usage
    for s in $SYSTEMS; do
        case "$s" in hamr | postfix) ;; *) backlog_usage ;; esac
    done
    LOAD_TIMEOUT=$PHASE_TIMEOUT
    DRAIN_TIMEOUT=$PHASE_TIMEOUT
}

# backlog_now - epoch seconds with nanoseconds.
backlog_now() {
    date +%s.%N
}

# backlog_since T0 - seconds since T0, 2 decimals.
backlog_since() {
    awk -v a="$1" -v b="$(backlog_now)" 'BEGIN { printf "%.2f", b - a }'
}

# backlog_rss PID... - the sum of VmRSS over the processes, in KiB (0 for one that is gone).
backlog_rss() {
    local pid kb=0 v
    for pid in "$@"; do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || v=0
        kb=$((kb + ${v:-0}))
    done
    echo "$kb"
}

# backlog_mib KIB - KiB as MiB, 1 decimal.
backlog_mib() {
    awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'
}

# backlog_load SYS DIR TOTAL RSS_FUNCTION TARGET... - TOTAL messages in SLICES smtpload runs
# into TARGETs; RSS_FUNCTION prints the RSS (KiB, "a/b/c" for several processes) and is called
# before the first slice and after the slices that end at 25, 50 and 100 %. Fills FIG.
backlog_load() {
    local sys=$1 dir=$2 total=$3 rss_fn=$4 k n ok bad=0 secs
    shift 4
    FIG[$sys:sent]=$total
    FIG[$sys:rss0]=$("$rss_fn")
    for ((k = 1; k <= SLICES; k++)); do
        n=$((total / SLICES))
        [ "$k" -eq "$SLICES" ] && n=$((total - n * (SLICES - 1)))
        mkdir -p "$dir/slice-$k"
        MESSAGES=$n bench_load "$dir/slice-$k" "$SIZE" "$@"
        [ "$(bench_field "$LOAD" status)" != timeout ] ||
            bench_die "$sys: load slice $k of $SLICES passed its deadline of ${PHASE_TIMEOUT}s"
        ok=$(bench_field "$LOAD" ok)
        bad=$((bad + n - ok))
        secs=$(bench_field "$LOAD" seconds)
        FIG[$sys:ok$k]=$ok
        FIG[$sys:sec$k]=$secs
        FIG[$sys:p99_$k]=$(bench_field "$LOAD" lat_p99_ms)
        case $((k * 4)) in
        "$SLICES") FIG[$sys:rss25]=$("$rss_fn") ;;
        $((SLICES * 2))) FIG[$sys:rss50]=$("$rss_fn") ;;
        esac
        bench_say "$sys: slice $k/$SLICES: $ok accepted in ${secs}s, p99 $(bench_field "$LOAD" lat_p99_ms) ms"
    done
    FIG[$sys:rss100]=$("$rss_fn")
    FIG[$sys:bad]=$bad
    FIG[$sys:loads]=$(backlog_seconds "$sys")
    FIG[$sys:first]=$(backlog_rate "$sys" 1 $((SLICES / 10)))
    FIG[$sys:last]=$(backlog_rate "$sys" $((SLICES - SLICES / 10 + 1)) "$SLICES")
    FIG[$sys:p99]=$(cat "$dir"/slice-*/latency.txt | awk '{ print $2 }' | sort -n |
        awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1; printf "%.2f", v[i] }')
}

# backlog_seconds SYS - the slices' smtpload seconds, summed.
backlog_seconds() {
    local k s=0
    for ((k = 1; k <= SLICES; k++)); do
        s=$(awk -v a="$s" -v b="${FIG[$1:sec$k]}" 'BEGIN { print a + b }')
    done
    awk -v s="$s" 'BEGIN { printf "%.1f", s }'
}

# backlog_rate SYS FROM TO - accepted msg/s over slices FROM..TO (their smtpload seconds).
backlog_rate() {
    local k n=0 s=0
    for ((k = $2; k <= $3; k++)); do
        n=$((n + ${FIG[$1:ok$k]}))
        s=$(awk -v a="$s" -v b="${FIG[$1:sec$k]}" 'BEGIN { print a + b }')
    done
    awk -v n="$n" -v s="$s" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'
}

# backlog_per_msg SYS - RSS growth from 0 to 100 % per queued message, bytes ("a/b/c").
backlog_per_msg() {
    local sys=$1 a b out="" i n
    read -r -a a <<<"${FIG[$sys:rss0]//\// }"
    read -r -a b <<<"${FIG[$sys:rss100]//\// }"
    n=$(backlog_accepted "$sys")
    for i in "${!a[@]}"; do
        out+="${out:+/}$(((b[i] - a[i]) * 1024 / n))"
    done
    echo "$out"
}

# backlog_accepted SYS - messages accepted over all slices.
backlog_accepted() {
    local k n=0
    for ((k = 1; k <= SLICES; k++)); do
        n=$((n + ${FIG[$1:ok$k]}))
    done
    echo "$n"
}

# backlog_mib_list KIB/KIB/... - the same list in MiB.
backlog_mib_list() {
    local v out=""
    for v in ${1//\// }; do
        out+="${out:+/}$(backlog_mib "$v")"
    done
    echo "$out"
}

# backlog_drain SYS DIR SINK_PORT COUNT FLUSH_COMMAND... - the next hop comes back: the sink
# starts, FLUSH_COMMAND runs, and the sink must count COUNT messages within PHASE_TIMEOUT.
# Fills FIG (drain rate and time, total).
backlog_drain() {
    local sys=$1 dir=$2 port=$3 n=$4
    shift 4
    bench_outage_end "$dir" "$port" "$@"
    LOAD="ok=$n"
    bench_drain "$dir" 0 "$OUTAGE_END"
    [ -z "$DRAINED" ] || bench_die "$sys: the sink counted $GOT of $n in the drain's ${PHASE_TIMEOUT}s"
    FIG[$sys:drain]=$RATE
    FIG[$sys:drains]=$E2E
    FIG[$sys:total]=$(awk -v a="${FIG[$sys:loads]}" -v b="$E2E" 'BEGIN { printf "%.1f", a + b }')
}

# ---------------------------------------------------------------------------
# hamr
# ---------------------------------------------------------------------------

# hamr_rss - VmRSS of the three nodes, KiB, "n1/n2/n3".
hamr_rss() {
    echo "$(backlog_rss "${HC_PIDS[0]}")/$(backlog_rss "${HC_PIDS[1]}")/$(backlog_rss "${HC_PIDS[2]}")"
}

# hamr_ready I - true if node I+1 answers 200 on /health/ready.
hamr_ready() {
    [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:${HC_HTTP[$1]}/health/ready")" = 200 ]
}

# hamr_status_field CONFIG KEY - one field of hamrctl --json status (0 if absent).
hamr_status_field() {
    "$BUILD/hamrctl" -c "$1" --json --timeout 2 status 2>/dev/null |
        "$PYTHON" -c 'import json, sys
d = json.load(sys.stdin)
print(d.get("status", d).get(sys.argv[1], 0))' "$2" 2>/dev/null
}

# hamr_caught_up I LEADER T0 - node I+1 is ready, misses no body and has the leader's queue
# digest at the same applied index (both asked at once: the leader keeps retrying the
# deferred messages, so its digest moves). Sets CU_READY, CU_BODIES, CU_DIGEST (seconds
# since T0 when each was first seen) and CU_TRIES (digest comparisons).
hamr_caught_up() {
    local f l
    if [ -z "$CU_READY" ]; then
        hamr_ready "$1" || return 1
        CU_READY=$(backlog_since "$3")
    fi
    if [ -z "$CU_BODIES" ]; then
        [ "$(hamr_status_field "${HC_CONFS[$1]}" bodies_missing)" = 0 ] || return 1
        CU_BODIES=$(backlog_since "$3")
    fi
    hamr_digest "${HC_CONFS[$1]}" >"$HC_DIR/digest.f" &
    hamr_digest "${HC_CONFS[$2 - 1]}" >"$HC_DIR/digest.l"
    wait $!
    f=$(cat "$HC_DIR/digest.f")
    l=$(cat "$HC_DIR/digest.l")
    CU_TRIES=$((CU_TRIES + 1))
    echo "$(backlog_since "$3") node$(($1 + 1)) $f leader $l" >>"$HC_DIR/digest.log"
    [ -n "$f" ] && [ "$f" = "$l" ] || return 1
    CU_DIGEST=$(backlog_since "$3")
}

# hamr_digest CONFIG - "APPLIED DIGEST" of one node.
hamr_digest() {
    "$BUILD/hamrctl" -c "$1" --json --timeout 2 status 2>/dev/null |
        "$PYTHON" -c 'import json, sys
d = json.load(sys.stdin)
d = d.get("status", d)
print(d.get("applied_index", ""), d.get("queue_digest", ""))' 2>/dev/null
}

# hamr_snapshots DIR LEADER - the leader's snapshot figures from its log and data_dir.
hamr_snapshots() {
    local log=$1/node$2.log stats files
    stats=$({ grep -a 'consensus event=snapshot ' "$log" || true; } | sed 's/.*event=snapshot //' | "$PYTHON" -c '
import re, statistics, sys
b, v, w = [], [], []
for line in sys.stdin:
    f = dict(re.findall(r"(\w+)=([0-9.]+)", line))
    if "bytes" in f: b.append(int(f["bytes"]))
    if "view_ms" in f: v.append(float(f["view_ms"]))
    if "write_ms" in f: w.append(float(f["write_ms"]))
def mm(x):
    return "%.1f / %.1f" % (max(x), statistics.median(x)) if x else "-"
print("%d|%s|%s|%s" % (len(b), max(b) if b else "-", mm(v), mm(w)))')
    IFS='|' read -r FIG["hamr:snaps"] FIG["hamr:snapbytes"] FIG["hamr:view"] FIG["hamr:write"] <<<"$stats"
    files=$(find "$1/node$2/data" -maxdepth 1 -name 'snapshot-*' ! -name '*.meta' -printf '%s\n' 2>/dev/null |
        sort -n | tail -1)
    FIG[hamr:snapfile]=${files:--}
}

# hamr_backlog - the hamr half of the run.
hamr_backlog() {
    local dir="$WORK/hamr" leader f1 f2 t0 n cfg
    hamr_cluster_start "$dir" hamr
    hamr_pick_targets hamr
    leader=$HC_LEADER
    FIG[hamr:label]=$HC_LABEL
    bench_say "hamr: leader is node$leader; $MESSAGES messages of $SIZE to ${HC_TARGETS[*]}, next hop down"
    backlog_load hamr "$dir" "$MESSAGES" hamr_rss "${HC_TARGETS[@]}"
    n=$(($(backlog_accepted hamr) + HC_PROBE_OK))
    FIG[hamr:queued]=$(hamr_status_field "${HC_CONFS[leader - 1]}" queue_messages)

    # The two followers, with everything queued.
    f1=$((leader % 3))
    f2=$(((leader + 1) % 3))
    bench_say "hamr: restarting node$((f1 + 1))"
    bench_stop_pid "${HC_PIDS[f1]}"
    bench_forget_pid "${HC_PIDS[f1]}"
    t0=$(backlog_now)
    hamr_node_start "$f1"
    bench_wait "$PHASE_TIMEOUT" hamr_ready "$f1" ||
        bench_die "hamr: node$((f1 + 1)) not ready ${PHASE_TIMEOUT}s after its restart"
    FIG[hamr:restart]=$(backlog_since "$t0")
    bench_say "hamr: wiping node$((f2 + 1))"
    bench_stop_pid "${HC_PIDS[f2]}"
    bench_forget_pid "${HC_PIDS[f2]}"
    cfg=${HC_CONFS[f2]}
    rm -rf "${cfg%/hamr.conf}/data"
    mkdir -p "${cfg%/hamr.conf}/data"
    CU_READY=""
    CU_BODIES=""
    CU_DIGEST=""
    CU_TRIES=0
    t0=$(backlog_now)
    hamr_node_start "$f2"
    bench_wait "$PHASE_TIMEOUT" hamr_caught_up "$f2" "$leader" "$t0" ||
        bench_die "hamr: wiped node$((f2 + 1)) not caught up ${PHASE_TIMEOUT}s after its start (ready after ${CU_READY:--} s, no body missing after ${CU_BODIES:--} s, digest compared $CU_TRIES times)"
    FIG[hamr:catchup]=$CU_DIGEST
    FIG[hamr:cu_ready]=$CU_READY
    FIG[hamr:cu_bodies]=$CU_BODIES
    FIG[hamr:cu_tries]=$CU_TRIES
    # The longest run of comparisons in which the node's applied index did not move.
    FIG[hamr:cu_held]=$(awk '$3 == "" { next }
        $3 != a { a = $3; t0 = $1 }
        $1 - t0 >= best { best = $1 - t0; bi = a; b0 = t0; b1 = $1 }
        END { if (bi != "") printf "%.1f s at index %s (from %.1f s to %.1f s)", best, bi, b0, b1 }' \
        "$dir/digest.log")
    FIG[hamr:rssafter]=$(hamr_rss)

    leader=$(hamr_find_leader "${HC_CONFS[@]}") || bench_die "hamr: no single leader before the flush"
    bench_say "hamr: next hop back, flushing through node$leader"
    backlog_drain hamr "$dir" "$HC_SINK" "$n" "$BUILD/hamrctl" -c "${HC_CONFS[leader - 1]}" flush
    hamr_snapshots "$dir" "$leader"
    for f1 in "${HC_PIDS[@]}" "$SINK_PID"; do
        bench_stop_pid "$f1"
        bench_forget_pid "$f1"
    done
}

# ---------------------------------------------------------------------------
# Postfix
# ---------------------------------------------------------------------------

# postfix_rss - VmRSS of the instance's master and all its children, summed, KiB.
postfix_rss() {
    # shellcheck disable=SC2046 # one argument per pid
    backlog_rss $(postfix_tree "$PF_MASTER")
}

# postfix_backlog - the Postfix half of the run.
postfix_backlog() {
    local dir="$WORK/postfix" ports
    mkdir -p "$dir"
    read -r -a ports <<<"$(bench_free_ports 2)"
    postfix_start "$dir" "${ports[0]}" "${ports[1]}"
    bench_say "postfix: $PF_MESSAGES messages of $SIZE to 127.0.0.1:${ports[0]}, next hop down"
    backlog_load postfix "$dir" "$PF_MESSAGES" postfix_rss "127.0.0.1:${ports[0]}"
    FIG[postfix:queued]=$(find "$dir/queue/deferred" "$dir/queue/active" "$dir/queue/incoming" \
        -type f 2>/dev/null | wc -l)
    bench_say "postfix: next hop back, postqueue -f"
    backlog_drain postfix "$dir" "${ports[1]}" "$(backlog_accepted postfix)" \
        postqueue -c "$dir/conf" -f
    bench_postfix_stop "$dir/conf"
    bench_stop_pid "$SINK_PID"
    bench_forget_pid "$SINK_PID"
}

# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

# backlog_fig SYS KEY - a figure, or "-" when that system did not run.
backlog_fig() {
    echo "${FIG[$1:$2]:--}"
}

# backlog_row NAME UNIT KEY [FILTER] - one line of the comparison table.
backlog_row() {
    local h p
    h=$(backlog_fig hamr "$3")
    p=$(backlog_fig postfix "$3")
    if [ -n "${4:-}" ]; then
        [ "$h" = - ] || h=$("$4" "$h")
        [ "$p" = - ] || p=$("$4" "$p")
    fi
    printf '%-44s %-7s %24s %14s\n' "$1" "$2" "$h" "$p"
}

# backlog_print - the tables on stdout.
backlog_print() {
    local sys k
    for sys in hamr postfix; do
        [ -n "${FIG[$sys:first]:-}" ] || continue
        FIG[$sys:ratio]=$(awk -v a="${FIG[$sys:first]}" -v b="${FIG[$sys:last]}" \
            'BEGIN { printf "%.0f", (a > 0 ? 100 * b / a : 0) }')
        FIG[$sys:permsg]=$(backlog_per_msg "$sys")
    done
    echo
    echo "hamr backlog benchmark: $SIZE messages, $SESSIONS sessions, next hop down during the load, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if [ "$PF_MESSAGES" -ne "$MESSAGES" ] && [[ " $SYSTEMS " == *" postfix "* ]]; then
        echo "Postfix ran with $PF_MESSAGES messages, hamr with $MESSAGES (--postfix-messages)."
    fi
    printf '%-44s %-7s %24s %14s\n' figure unit "hamr (node1/node2/node3)" "postfix"
    backlog_row "messages sent" msg sent
    backlog_row "queued after the load (hamr: + probes)" msg queued
    backlog_row "accepted, first 10 % (slices 1-2)" msg/s first
    backlog_row "accepted, last 10 % (slices 19-20)" msg/s last
    backlog_row "last 10 % / first 10 %" % ratio
    backlog_row "acceptance latency p99, whole run" ms p99
    backlog_row "refused or lost (non-250, failed, unsent)" msg bad
    backlog_row "RSS at 0 % queued" MiB rss0 backlog_mib_list
    backlog_row "RSS at 25 % queued" MiB rss25 backlog_mib_list
    backlog_row "RSS at 50 % queued" MiB rss50 backlog_mib_list
    backlog_row "RSS at 100 % queued" MiB rss100 backlog_mib_list
    backlog_row "RSS growth per queued message (0-100 %)" bytes permsg
    backlog_row "drain after the flush" msg/s drain
    backlog_row "drain time (flush to last delivery)" s drains
    backlog_row "load time (the slices' seconds, summed)" s loads
    backlog_row "total (load time + drain time)" s total
    if [ -n "${FIG[hamr:first]:-}" ]; then
        echo
        echo "hamr, with everything queued (${FIG[hamr:label]}):"
        printf '  %-58s %s\n' \
            "snapshots taken by the leader" "${FIG[hamr:snaps]} (snapshot_bytes ${HAMR_SNAPSHOT_BYTES:-default, 256M})" \
            "largest snapshot, bytes= in the leader's log" "${FIG[hamr:snapbytes]} bytes" \
            "largest snapshot file in the leader's data_dir" "${FIG[hamr:snapfile]} bytes" \
            "snapshot view_ms (loop stall of the fork), max / median" "${FIG[hamr:view]} ms" \
            "snapshot write_ms (child + read), max / median" "${FIG[hamr:write]} ms" \
            "follower restart (start to /health/ready 200)" "${FIG[hamr:restart]} s" \
            "wiped follower: start to /health/ready 200" "${FIG[hamr:cu_ready]} s" \
            "wiped follower: start to 0 bodies missing" "${FIG[hamr:cu_bodies]} s" \
            "wiped follower: start to the leader's digest (catch-up)" "${FIG[hamr:catchup]} s (${FIG[hamr:cu_tries]} comparisons)" \
            "wiped follower: applied index unchanged, longest" "${FIG[hamr:cu_held]:--}" \
            "RSS after the restart and the catch-up" "$(backlog_mib_list "${FIG[hamr:rssafter]}") MiB"
    fi
    echo
    echo "per slice (each 1/$SLICES of the messages, one smtpload run):"
    printf '%6s %10s %10s %10s %10s\n' slice "hamr msg/s" "p99 ms" "pfx msg/s" "p99 ms"
    for ((k = 1; k <= SLICES; k++)); do
        printf '%6s %10s %10s %10s %10s\n' "$k" "$(backlog_slice hamr "$k")" \
            "$(backlog_fig hamr "p99_$k")" "$(backlog_slice postfix "$k")" "$(backlog_fig postfix "p99_$k")"
    done
    echo
    echo "accepted msg/s: messages / smtpload's seconds (first MAIL to last reply) of the slices named."
    echo "p99: nearest rank over every accepted message's latency (final \".\" to its 250)."
    echo "RSS: VmRSS; Postfix's is the sum over master and its children (shared pages counted in each)."
    echo "hamr: mutual TLS between the nodes, nodes log at info, scan_interval $SCAN_INTERVAL, max_per_destination 20."
    for k in "${NOTES[@]}"; do
        echo "$k"
    done
}

# backlog_slice SYS K - accepted msg/s of slice K, or "-".
backlog_slice() {
    [ -n "${FIG[$1:ok$2]:-}" ] || { echo -; return; }
    awk -v n="${FIG[$1:ok$2]}" -v s="${FIG[$1:sec$2]}" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'
}

main() {
    local sys
    backlog_parse_args "$@"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    bench_prepare
    for sys in $SYSTEMS; do
        case "$sys" in
        hamr) hamr_backlog ;;
        postfix) postfix_backlog ;;
        esac
    done
    backlog_print
}

main "$@"
