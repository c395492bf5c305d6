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
# and, for each hamr case, one line per node: the deliveries it made during the
# case (its /metrics hamr_deliveries_total{outcome="delivered"}, before the load
# and after the drain), their share of the case's, and its CPU seconds over the
# same span; every node delivers from cluster level 6, so the three lines show
# how the work is spread.
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
# Shares its functions with bench/backlog.sh through bench/lib.sh.
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

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES="4K 64K"
SYSTEMS="hamr hamr-plain postfix"
OUTAGE=0
ROWS=()            # table rows, printed at the end
NODE_ROWS=()       # hamr: one row per node and case (deliveries and cpu), printed at the end
# Each node gets a [listen] http port: its /metrics counts the deliveries it made. Nothing
# asks it anything during the load.
HAMR_HTTP=1

# bench_usage - print usage and exit 2.
bench_usage() {
    bench_usage_lines 2,9
}

# bench_option OPTION [VALUE] - one of run.sh's own options (bench_parse); false if unknown.
bench_option() {
    BENCH_SHIFT=1
    case "$1" in
    -z) SIZES=${2:?}; BENCH_SHIFT=2 ;;
    --long) MESSAGES=50000 ;;
    -P) PIPELINING=1 ;;
    --target) TARGET=${2:?}; BENCH_SHIFT=2 ;;
    --scan-interval) SCAN_INTERVAL=${2:?}; BENCH_SHIFT=2 ;;
    --perf) PERF=1 ;;
    --outage) OUTAGE=1 ;;
    --postfix-tools) POSTFIX_TOOLS=1 ;;
    -h | --help) bench_usage ;;
    *) return 1 ;;
    esac
}

# bench_parse_args - options into the globals above.
bench_parse_args() {
    bench_parse bench_option bench_usage "$@"
    [[ $MESSAGES =~ ^[0-9]+$ && $MESSAGES -ge 1 ]] || bench_usage
    [[ $SESSIONS =~ ^[0-9]+$ && $SESSIONS -ge 1 ]] || bench_usage
    case "$TARGET" in auto | leader | spread) ;; *) bench_usage ;; esac
    for s in $SYSTEMS; do
        case "$s" in hamr | hamr-plain | postfix) ;; *) bench_usage ;; esac
    done
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

# hamr_case SIZE SYSTEM - one hamr case: cluster up, probe, load, drain, cluster down.
# SYSTEM is "hamr" (mutual TLS between the nodes) or "hamr-plain" (plain TCP).
hamr_case() {
    local size=$1 sys=$2
    local dir="$WORK/$sys-$size" i pids leader label base cpu0 cpu1 f
    local ncpu0=() ndel0=() ncon0=() ncpu=() ndel=() ncon=() total=0
    SINK_QUIT=$((MESSAGES + 2)) # --postfix-tools: the load and a probe through each follower
    hamr_cluster_start "$dir" "$sys"
    pids=("${HC_PIDS[@]}")
    leader=$HC_LEADER
    [ "$OUTAGE" -eq 1 ] || bench_sink_start "$dir" "$HC_SINK"
    hamr_pick_targets "$sys"
    label=$HC_LABEL
    if [ "$POSTFIX_TOOLS" -eq 1 ] && [ "$HC_PROBE_OK" -ne 2 ]; then
        bench_die "--postfix-tools needs both followers to take mail (smtp-sink counts to $SINK_QUIT)"
    fi
    [ "$OUTAGE" -eq 1 ] && label+=" (down)"
    if [ "$OUTAGE" -eq 1 ] || [ "$POSTFIX_TOOLS" -eq 1 ]; then
        # Counted with the rest: the sink is down, or smtp-sink reports only at its end.
        base=$HC_PROBE_OK
    else
        bench_wait 30 bench_sink_has "$dir" "$HC_PROBE_OK" || bench_die "probe messages not delivered"
        base=$(bench_sink_field "$dir" messages)
    fi
    for i in 0 1 2; do
        ndel0[i]=$(hamr_delivered "${HC_HTTP[i]}")
        ncon0[i]=$(hamr_connections "${HC_HTTP[i]}")
        ncpu0[i]=$(bench_cpu "${pids[i]}")
    done
    cpu0=$(bench_cpu "${pids[@]}")
    bench_perf_start "${pids[leader - 1]}" "$dir/perf.data"
    bench_say "$sys $size: leader is node$leader; load to ${HC_TARGETS[*]} ($HC_MODE)"
    bench_load "$dir" "$size" "${HC_TARGETS[@]}"
    if [ "$OUTAGE" -eq 1 ]; then
        bench_outage_end "$dir" "$HC_SINK" "$BUILD/hamrctl" -c "${HC_CONFS[leader - 1]}" flush
        bench_drain "$dir" "$base" "$OUTAGE_END"
    else
        bench_drain "$dir" "$base"
    fi
    bench_perf_stop "$dir/perf.data" "$sys leader, $size"
    cpu1=$(bench_cpu "${pids[@]}")
    for i in 0 1 2; do
        ncpu[i]=$(($(bench_cpu "${pids[i]}") - ncpu0[i]))
        ndel[i]=$(($(hamr_delivered "${HC_HTTP[i]}") - ndel0[i]))
        ncon[i]=$(($(hamr_connections "${HC_HTTP[i]}") - ncon0[i]))
        total=$((total + ndel[i]))
    done
    bench_row "$label" "$size" $((cpu1 - cpu0))
    for i in 0 1 2; do
        NODE_ROWS+=("$(printf '%-32s %5s %-14s %10s %6s %7s' "$label" "$size" \
            "node$((i + 1))$([ $((i + 1)) -eq "$leader" ] && echo " (leader)")" "${ndel[i]}" \
            "$([ "$total" -gt 0 ] && echo "$((100 * ndel[i] / total))%" || echo -)" \
            "$(bench_ticks_to_s "${ncpu[i]}")")")
        bench_say "$sys $size: node$((i + 1)) made ${ndel[i]} of $total deliveries over ${ncon[i]} connections, cpu $(bench_ticks_to_s "${ncpu[i]}") s"
    done
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
    postfix_start "$dir" "$smtp" "$sink"
    master=$PF_MASTER
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
    if [ "${#NODE_ROWS[@]}" -gt 0 ]; then
        echo
        printf '%-32s %5s %-14s %10s %6s %7s\n' system size node deliveries share "cpu s"
        for r in "${NODE_ROWS[@]}"; do
            echo "$r"
        done
        echo
        echo "deliveries: hamr_deliveries_total{outcome=\"delivered\"} on the node's /metrics, before the load"
        echo "and after the drain (probes not counted); share: of the three nodes' sum; cpu s: the node's"
        echo "hamrd over the same span. (leader): the leader when the cluster started."
    fi
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
