#!/usr/bin/env bash
# local-cluster.sh - a hamr cluster on 127.0.0.1 for trying things out.
#
#   deploy/local-cluster.sh up            install packages, build, start the sink and every
#                                         node, wait for a leader, send a test mail through
#                                         each node, print the leader
#   deploy/local-cluster.sh up --lb       the same behind HAProxy: HAProxy on 127.0.0.1:2500
#                                         (LB_PORT) sends to the nodes with PROXY v2 and checks
#                                         each node's /health/ready (http on 8100+N); the
#                                         nodes take SMTP only from HAProxy; test mail goes
#                                         through the balancer
#   deploy/local-cluster.sh down          stop everything started by "up" (HAProxy too)
#   deploy/local-cluster.sh status        hamrctl status of every node
#   deploy/local-cluster.sh kill ID       kill -9 node ID (to try failover by hand)
#   deploy/local-cluster.sh start ID      start node ID again (same data directory)
#   deploy/local-cluster.sh transfer [ID] move leadership (to node ID), print the new leader
#
# Owns run/ in the repository (configs, data directories, logs, pid files,
# the cluster's certificates in run/pki; keep it out of git). Raft, peer and
# control speak mutual TLS with run/pki (deploy/make-pki.sh: a CA, node-N, and
# operator-local for hamrctl over TCP). The recording sink (deploy/sink.py) listens on
# 127.0.0.1:2600 and writes into run/sink/; it is every node's relayhost.
# Node N listens for SMTP on 2524+N, raft on 7000+N, peer (forwarding to
# the leader) on 7200+N, control on 7100+N. NODES (default 3) sets the node
# count; every node is a voter. Use the same NODES for every command.
# With --lb the file run/lb marks the cluster as balanced (later "start ID"
# writes the same config), run/haproxy.cfg is HAProxy's config and
# run/haproxy.log its log; switching a running cluster between the two modes
# needs "down" first.
#
# "up" is idempotent: a process whose pid file names a live process of the
# right program is left alone. Packages are installed with apt-get only when
# missing (needs root); the build goes into build/ (RelWithDebInfo, no
# sanitizers; HAMR_BUILD overrides the directory) and runs only when hamrd or
# hamrctl is missing. Run by root, the nodes drop to the user HAMR_USER
# (default nobody): hamrd refuses to run as root. Exit status: 0 on success, 1 on any failure, 2 on bad
# usage.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${HAMR_RUN_DIR:-$REPO/run}
BUILD=${HAMR_BUILD:-$REPO/build}
NODES=${NODES:-3}
SINK_PORT=${SINK_PORT:-2600}
SMTP_BASE=2524
RAFT_BASE=7000
CONTROL_BASE=7100
PEER_BASE=7200
HTTP_BASE=8100
LB_PORT=${LB_PORT:-2500}
HAPROXY=/usr/sbin/haproxy
PYTHON=/usr/bin/python3
# Named one by one (apt-get runs with --no-install-recommends): swaks's --tls
# needs libnet-ssleay-perl and its SASL mechanisms libauthen-sasl-perl, which
# swaks only recommends; the README's examples use both.
PACKAGES=(cmake gcc libc6-dev make pkg-config libraft-dev liblz4-dev libuv1-dev libprotobuf-c-dev
          protobuf-c-compiler libssl-dev libcmocka-dev libinih-dev libc-ares-dev python3
          python3-aiosmtpd swaks libnet-ssleay-perl libauthen-sasl-perl openssl)

# lc_die - print a message and exit 1.
lc_die() {
    echo "local-cluster: $*" >&2
    exit 1
}

# lc_usage - the usage line on stderr; exit 2.
lc_usage() {
    echo "usage: $0 up [--lb]|down|status|kill ID|start ID|transfer [ID]   (NODES=$NODES)" >&2
    exit 2
}

# lc_install - apt-get install the packages that dpkg-query does not list as installed.
lc_install() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || lc_die "missing packages (${missing[*]}); run as root or install them"
    echo "local-cluster: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# lc_build - build hamrd and hamrctl into BUILD if either is missing.
lc_build() {
    if [ -x "$BUILD/hamrd" ] && [ -x "$BUILD/hamrctl" ]; then
        return 0
    fi
    echo "local-cluster: building into $BUILD"
    cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHAMR_SANITIZE=OFF
    cmake --build "$BUILD" -j2 --target hamrd hamrctl
}

# lc_running PIDFILE WORD - true if PIDFILE names a live process whose command line has WORD.
lc_running() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# lc_wait SECONDS WHAT COMMAND... - run COMMAND every 0.2 s until it succeeds, at most SECONDS.
lc_wait() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    lc_die "timed out after ${secs}s waiting for $what"
}

# lc_voters - "1@127.0.0.1:7001, 2@127.0.0.1:7002, ..." for NODES nodes.
lc_voters() {
    local i out=""
    for ((i = 1; i <= NODES; i++)); do
        out+="${out:+, }$i@127.0.0.1:$((RAFT_BASE + i))"
    done
    echo "$out"
}

# lc_check_id ID - die unless ID is a node number of this cluster.
lc_check_id() {
    if ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ] || [ "$1" -gt "$NODES" ]; then
        lc_die "no node \"$1\" (nodes are 1..$NODES)"
    fi
}

# lc_lb - true if the cluster runs behind HAProxy (up --lb).
lc_lb() {
    [ -e "$RUN/lb" ]
}

# lc_pki - run/pki: the cluster CA, a certificate for each node and one for
# the operator "local" (deploy/make-pki.sh), made once; node keys are given
# to the user the nodes run as.
lc_pki() {
    local i
    [ -e "$RUN/pki/ca.pem" ] || "$REPO/deploy/make-pki.sh" "$RUN/pki" ca >/dev/null
    [ -e "$RUN/pki/operator-local.pem" ] ||
        "$REPO/deploy/make-pki.sh" "$RUN/pki" operator local >/dev/null
    for ((i = 1; i <= NODES; i++)); do
        [ -e "$RUN/pki/node-$i.pem" ] || "$REPO/deploy/make-pki.sh" "$RUN/pki" node "$i" >/dev/null
        if [ "$(id -u)" -eq 0 ]; then
            chown "${HAMR_USER:-nobody}" "$RUN/pki/node-$i.key"
        fi
    done
}

# lc_write_config N - run/nodeN/hamr.conf.
lc_write_config() {
    local n=$1 dir="$RUN/node$1" peer="" http="" proxy="" user=""
    mkdir -p "$dir/data"
    # hamrd refuses to run as root: started by root, it drops to nobody.
    if [ "$(id -u)" -eq 0 ]; then
        user="user = ${HAMR_USER:-nobody}"
    fi
    peer="peer = 127.0.0.1:$((PEER_BASE + n))"
    # /health and /metrics on 8101-8103; HAProxy (--lb) checks /health/ready there.
    http="http = 127.0.0.1:$((HTTP_BASE + n))"
    if lc_lb; then
        # HAProxy connects from 127.0.0.1 with a PROXY v2 header.
        proxy=$'proxy_protocol = on\nproxy_networks = 127.0.0.1/32'
    fi
    cat >"$dir/hamr.conf" <<EOF
# Written by deploy/local-cluster.sh; see deploy/hamr.conf.example for every key.
[node]
id = $n
data_dir = $dir/data
hostname = relay$n.test
log_level = info
$user

[listen]
smtp = 127.0.0.1:$((SMTP_BASE + n))
raft = 127.0.0.1:$((RAFT_BASE + n))
control = 127.0.0.1:$((CONTROL_BASE + n))
$peer
$http

[cluster]
voters = $(lc_voters)
election_timeout = 1s
heartbeat = 100ms
# Small snapshots keep a laptop's disk free (the default 256M preallocates
# about 865 MB of log segments per node).
snapshot_bytes = 16M

[smtpd]
relay_networks = 127.0.0.0/8
relay_domains = example.com
message_size_limit = 10M
$proxy

[delivery]
relayhost = [127.0.0.1]:$SINK_PORT
retry_min = 5s
retry_max = 60s
queue_lifetime = 5d
lease_time = 30s
scan_interval = 200ms

[storage]
min_free = 16M

[cluster_tls]
# Raft, peer and control over mutual TLS with the certificates in run/pki.
ca_file = $RUN/pki/ca.pem
cert_file = $RUN/pki/node-$n.pem
key_file = $RUN/pki/node-$n.key
EOF
}

# lc_start_sink - the recording sink on SINK_PORT, unless it already runs.
lc_start_sink() {
    if lc_running "$RUN/sink.pid" sink.py; then
        echo "local-cluster: sink already running (pid $(cat "$RUN/sink.pid"))"
        return 0
    fi
    mkdir -p "$RUN/sink"
    : >"$RUN/sink.log"
    setsid "$PYTHON" "$REPO/deploy/sink.py" --listen "127.0.0.1:$SINK_PORT" --dir "$RUN/sink" \
        --log "$RUN/sink/sink.jsonl" >>"$RUN/sink.log" 2>&1 </dev/null &
    echo $! >"$RUN/sink.pid"
    lc_wait 15 "the sink to listen (see $RUN/sink.log)" grep -q "sink listening on" "$RUN/sink.log"
    echo "local-cluster: sink listening on 127.0.0.1:$SINK_PORT, writing into $RUN/sink/"
}

# lc_start_node N - hamrd for node N, unless it already runs.
lc_start_node() {
    local n=$1 pidfile="$RUN/node$1.pid"
    if lc_running "$pidfile" hamrd; then
        echo "local-cluster: node$n already running (pid $(cat "$pidfile"))"
        return 0
    fi
    lc_pki
    lc_write_config "$n"
    "$BUILD/hamrd" --check-config -c "$RUN/node$n/hamr.conf" >/dev/null ||
        lc_die "node$n: bad config $RUN/node$n/hamr.conf"
    setsid "$BUILD/hamrd" -c "$RUN/node$n/hamr.conf" >>"$RUN/node$n.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    echo "local-cluster: node$n started (pid $!, smtp 127.0.0.1:$((SMTP_BASE + n)), log $RUN/node$n.log)"
}

# lc_hint - how to reach the nodes with hamrctl by hand.
lc_hint() {
    echo "local-cluster: raft, peer and control use mutual TLS with $RUN/pki;" \
        "hamrctl -c $RUN/node1/hamr.conf status (the control socket), or" \
        "hamrctl -a 127.0.0.1:$((CONTROL_BASE + 1)) --cert $RUN/pki/operator-local.pem" \
        "--key $RUN/pki/operator-local.key --ca $RUN/pki/ca.pem status"
}

# lc_ctl N ARGS... - hamrctl against node N's control port, over TLS as operator "local".
lc_ctl() {
    local n=$1
    shift
    "$BUILD/hamrctl" -a "127.0.0.1:$((CONTROL_BASE + n))" --cert "$RUN/pki/operator-local.pem" \
        --key "$RUN/pki/operator-local.key" --ca "$RUN/pki/ca.pem" "$@"
}

# lc_leader - print the id of the leader that every reachable node names; false if none.
lc_leader() {
    local n json ids=()
    for ((n = 1; n <= NODES; n++)); do
        if json=$(lc_ctl "$n" --json status 2>/dev/null); then
            ids+=("$(printf '%s' "$json" | "$PYTHON" -c '
import json, sys
s = json.load(sys.stdin).get("status", {})
print(s.get("leader_id", 0) if s.get("state") in ("leader", "follower") else 0)')")
        fi
    done
    "$PYTHON" - "${ids[@]}" <<'PY'
import sys
ids = set(sys.argv[1:])
if len(ids) == 1 and "0" not in ids:
    print(ids.pop())
    sys.exit(0)
sys.exit(1)
PY
}

# lc_has_leader - true if every reachable node names the same leader.
lc_has_leader() {
    lc_leader >/dev/null
}

# lc_start_lb - HAProxy on LB_PORT in front of every node (as deploy/haproxy.cfg), unless
# it already runs; waits until it listens.
lc_start_lb() {
    local n servers=""
    if lc_running "$RUN/haproxy.pid" haproxy; then
        echo "local-cluster: haproxy already running (pid $(cat "$RUN/haproxy.pid"))"
        return 0
    fi
    for ((n = 1; n <= NODES; n++)); do
        servers+="    server node$n 127.0.0.1:$((SMTP_BASE + n)) check port $((HTTP_BASE + n))"$'\n'
    done
    cat >"$RUN/haproxy.cfg" <<EOF
# Written by deploy/local-cluster.sh up --lb; see deploy/haproxy.cfg for the reasons.
global
    maxconn 2000
    stats socket $RUN/haproxy.sock mode 600 level admin
    log stdout format raw local0
defaults
    mode tcp
    log global
    option tcplog
    retries 3
    option redispatch
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    timeout check 2s
frontend smtp
    bind 127.0.0.1:$LB_PORT
    default_backend hamr
backend hamr
    balance leastconn
    option httpchk GET /health/ready
    http-check expect status 200
    default-server send-proxy-v2 inter 1s fall 2 rise 2
$servers
EOF
    "$HAPROXY" -c -q -f "$RUN/haproxy.cfg" || lc_die "haproxy rejects $RUN/haproxy.cfg"
    setsid "$HAPROXY" -db -f "$RUN/haproxy.cfg" >>"$RUN/haproxy.log" 2>&1 </dev/null &
    echo $! >"$RUN/haproxy.pid"
    lc_wait 15 "haproxy to listen on 127.0.0.1:$LB_PORT (see $RUN/haproxy.log)" \
        bash -c "exec 3<>/dev/tcp/127.0.0.1/$LB_PORT"
    echo "local-cluster: haproxy on 127.0.0.1:$LB_PORT (pid $(cat "$RUN/haproxy.pid"), log $RUN/haproxy.log)"
}

# lc_send_test ID N [PORT] - one message with swaks through node N (or to PORT, e.g. the
# balancer), retrying 4xx and refused connections a few times.
lc_send_test() {
    local id=$1 n=$2 port=${3:-$((SMTP_BASE + $2))} i
    for ((i = 0; i < 40; i++)); do
        if swaks --server "127.0.0.1:$port" --to test@example.com \
            --from local-cluster@example.org --helo local-cluster.test \
            --header "X-Test-Id: $id" --header "Subject: hamr local-cluster test via node$n" \
            --body "Sent through node$n by deploy/local-cluster.sh at $(date -R)." \
            >"$RUN/swaks.log" 2>&1; then
            grep "queued as" "$RUN/swaks.log" || true
            return 0
        fi
        sleep 0.5
    done
    cat "$RUN/swaks.log" >&2
    lc_die "the test message through node$n was not accepted (see $RUN/node$n.log)"
}

# lc_landed ID - print the file the sink stored the message ID in; false if none yet.
lc_landed() {
    "$PYTHON" - "$RUN/sink/sink.jsonl" "$1" <<'PY'
import json, sys
try:
    lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
except OSError:
    sys.exit(1)
for line in lines:
    rec = json.loads(line)
    if rec.get("test_id") == sys.argv[2]:
        print(rec["file"])
        sys.exit(0)
sys.exit(1)
PY
}

lc_up() {
    local lb=$1 now n id file
    if [ "$lb" = yes ]; then
        PACKAGES+=(haproxy)
    fi
    lc_install
    lc_build
    mkdir -p "$RUN"
    now=no
    if lc_lb; then
        now=yes
    fi
    for ((n = 1; n <= NODES; n++)); do
        if [ "$lb" != "$now" ] && lc_running "$RUN/node$n.pid" hamrd; then
            lc_die "node$n runs with lb=$now, asked for lb=$lb; run \"$0 down\" first"
        fi
    done
    if [ "$lb" = yes ]; then
        : >"$RUN/lb"
    else
        rm -f "$RUN/lb"
    fi
    lc_start_sink
    for ((n = 1; n <= NODES; n++)); do
        lc_start_node "$n"
    done
    lc_wait 60 "a leader (see $RUN/node*.log)" lc_has_leader
    if lc_lb; then
        lc_start_lb
        # Nodes take SMTP only from HAProxy: send the test mail through it.
        for ((n = 1; n <= NODES; n++)); do
            id="local-cluster-$(date +%s)-$$-lb$n"
            lc_send_test "$id" "$n" "$LB_PORT"
            lc_wait 60 "the test message through the balancer to reach $RUN/sink/" lc_landed "$id"
            echo "local-cluster: test message $id (via haproxy) landed in $(lc_landed "$id")"
        done
        lc_status
        echo "local-cluster: leader is node$(lc_leader || echo "? (none agreed)");" \
            "send mail to 127.0.0.1:$LB_PORT"
        lc_hint
        return 0
    fi
    # Every node takes mail: followers forward it to the leader.
    for ((n = 1; n <= NODES; n++)); do
        id="local-cluster-$(date +%s)-$$-node$n"
        lc_send_test "$id" "$n"
        lc_wait 60 "the test message through node$n to reach $RUN/sink/" lc_landed "$id"
        file=$(lc_landed "$id")
        echo "local-cluster: test message $id (via node$n) landed in $file"
    done
    lc_status
    echo "local-cluster: leader is node$(lc_leader || echo "? (none agreed)")"
    lc_hint
}

# lc_kill N - kill -9 node N (no clean shutdown: for trying failover).
lc_kill() {
    local n=$1 pidfile="$RUN/node$1.pid" pid
    lc_check_id "$n"
    lc_running "$pidfile" hamrd || lc_die "node$n is not running"
    pid=$(cat "$pidfile")
    kill -KILL "$pid"
    rm -f "$pidfile"
    echo "local-cluster: node$n (pid $pid) killed with SIGKILL"
}

# lc_start N - start node N again on its data directory; wait until it names a leader.
lc_start() {
    local n=$1
    lc_check_id "$n"
    [ -x "$BUILD/hamrd" ] || lc_die "no $BUILD/hamrd: run \"$0 up\" first"
    mkdir -p "$RUN"
    lc_running "$RUN/sink.pid" sink.py || lc_start_sink
    lc_start_node "$n"
    lc_wait 60 "node$n to report a leader" lc_node_knows_leader "$n"
    echo "local-cluster: leader is node$(lc_leader || echo "? (none agreed)")"
}

# lc_node_knows_leader N - true if node N answers and names a leader.
lc_node_knows_leader() {
    lc_ctl "$1" --json status 2>/dev/null | grep -q '"leader_id" *: *[1-9]'
}

# lc_transfer [ID] - hamrctl transfer on the leader; print the new leader.
lc_transfer() {
    local leader
    [ -z "${1:-}" ] || lc_check_id "$1"
    leader=$(lc_leader) || lc_die "no agreed leader to transfer from"
    lc_ctl "$leader" transfer ${1:+"$1"}
    if [ -n "${1:-}" ]; then
        lc_wait 20 "node$1 to become leader" lc_is_leader "$1"
    fi
    lc_wait 20 "the nodes to agree on a leader" lc_has_leader
    echo "local-cluster: leader is node$(lc_leader)"
}

# lc_is_leader N - true if every reachable node names N as leader.
lc_is_leader() {
    [ "$(lc_leader)" = "$1" ]
}

# lc_stop PIDFILE WORD - SIGTERM, wait up to 20 s, then SIGKILL; remove the pid file.
lc_stop() {
    local pidfile=$1 word=$2 pid i
    if lc_running "$pidfile" "$word"; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid"
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "local-cluster: pid $pid ignored SIGTERM; killing" >&2
            kill -KILL "$pid"
        fi
        echo "local-cluster: stopped $(basename "$pidfile" .pid) (pid $pid)"
    fi
    rm -f "$pidfile"
}

lc_down() {
    local f
    [ -d "$RUN" ] || return 0
    for f in "$RUN"/node*.pid; do
        if [ -e "$f" ]; then
            lc_stop "$f" hamrd
        fi
    done
    lc_stop "$RUN/sink.pid" sink.py
    lc_stop "$RUN/haproxy.pid" haproxy
    rm -f "$RUN/lb"
}

lc_status() {
    local n rc=0
    for ((n = 1; n <= NODES; n++)); do
        echo "== node$n (smtp 127.0.0.1:$((SMTP_BASE + n)), control 127.0.0.1:$((CONTROL_BASE + n)))"
        if ! lc_running "$RUN/node$n.pid" hamrd; then
            echo "not running"
            rc=1
            continue
        fi
        lc_ctl "$n" status || rc=1
    done
    if lc_lb; then
        if lc_running "$RUN/haproxy.pid" haproxy; then
            echo "== haproxy: running (pid $(cat "$RUN/haproxy.pid")) on 127.0.0.1:$LB_PORT"
            "$PYTHON" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
data = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    data += c
lines = data.decode(errors="replace").splitlines()
cols = lines[0][2:].split(",") if lines else []
for line in lines[1:]:
    r = dict(zip(cols, line.split(",")))
    if r.get("pxname") == "hamr" and r.get("svname") not in ("FRONTEND", "BACKEND"):
        print("   %s %s (%s)" % (r["svname"], r.get("status"), r.get("check_status")))
' "$RUN/haproxy.sock" || echo "   (stats socket did not answer)"
        else
            echo "== haproxy: not running"
            rc=1
        fi
    fi
    if lc_running "$RUN/sink.pid" sink.py; then
        echo "== sink: running (pid $(cat "$RUN/sink.pid")), $(find "$RUN/sink" -name '*.eml' | wc -l) message(s) in $RUN/sink/"
    else
        echo "== sink: not running"
    fi
    return $rc
}

case "${1:-}" in
up)
    case "${2:-}" in
    "") lc_up no ;;
    --lb) lc_up yes ;;
    *) lc_usage ;;
    esac
    ;;
down) lc_down ;;
status) lc_status ;;
kill)
    [ $# -eq 2 ] || lc_usage
    lc_kill "$2"
    ;;
start)
    [ $# -eq 2 ] || lc_usage
    lc_start "$2"
    ;;
transfer)
    [ $# -le 2 ] || lc_usage
    lc_transfer "${2:-}"
    ;;
*) lc_usage ;;
esac
