#!/usr/bin/env bash
# rolling-upgrade.sh - replace hamrd on every node of a cluster, one node at a time,
# without losing quorum and without refusing mail.
#
#   deploy/rolling-upgrade.sh [--force] [-f CLUSTER_FILE] NEW_HAMRD [NODE...]
#
#   --force       take a node down even when the quorum check (step 1) fails,
#                 after HAMR_CHECK_TIMEOUT, with a warning: the cluster may stop
#                 taking mail until the node is back
#   NEW_HAMRD     the new hamrd binary (it must run: "NEW_HAMRD --version" is tried first)
#   NODE          NAME=CONTROL[,HTTP], e.g. node1=10.0.1.11:7100,10.0.1.11:8101
#                 NAME is what %n stands for in the commands below (the systemd
#                 instance name); CONTROL is the node's [listen] control address
#                 (hamrctl -s); HTTP its [listen] http address (optional, see below)
#   CLUSTER_FILE  the same, one node per line as "NAME CONTROL [HTTP]"; blank lines
#                 and lines starting with # are ignored. Nodes from the file come
#                 first, then those on the command line; they are upgraded in that order.
#
# List every voter of the cluster: the quorum check asks each listed node, and
# a voter that is not listed counts as down. Each node is handled in turn:
#
#   1. quorum: every listed node is asked "hamrctl status"; a voter is healthy
#      when it answers, names the leader and has applied what the leader had
#      committed just before it was asked. If the healthy voters other than
#      this node are not more than half of all voters, stop here (retried up
#      to HAMR_CHECK_TIMEOUT seconds, for a node still catching up) unless
#      --force. It also warns when one zone ([node] zone, as hamrctl status
#      shows it) holds a majority of the voters: losing that zone while a node
#      is down loses quorum.
#   2. hamrctl drain: new SMTP sessions get 421 4.3.2, /health/ready says 503,
#      and a leader hands leadership to another voter. Wait (HAMR_DRAIN_TIMEOUT)
#      until another node leads and, with HTTP, until hamr_smtp_sessions_open
#      is 0; never less than HAMR_DRAIN_GRACE seconds, so that the balancer's
#      health check (inter 1s, fall 2 in deploy/haproxy.cfg) has taken the
#      node out before it stops.
#   3. HAMR_STOP_CMD; then wait until the control port no longer answers.
#   4. install: NEW_HAMRD is copied over HAMR_BIN (the old one is kept once as
#      HAMR_BIN.prev; the copy is renamed into place), or HAMR_INSTALL_CMD runs.
#      If HAMR_BIN already equals NEW_HAMRD nothing is copied (several nodes on
#      one host share HAMR_BIN, and the backup must stay the old binary).
#   5. HAMR_START_CMD; as soon as the node answers it is drained again (a
#      restarted node forgets draining) so that it gets no mail before it has
#      caught up: its applied index must reach the leader's commit index,
#      sampled once the node is back (HAMR_READY_TIMEOUT).
#   6. hamrctl undrain; with HTTP, wait until /health/ready says 200.
#
# Environment (defaults in brackets); %n in a command is replaced by NAME, %f
# by NEW_HAMRD; commands run with "sh -c":
#   HAMR_STOP_CMD      [systemctl stop hamrd@%n]
#   HAMR_START_CMD     [systemctl start hamrd@%n]
#   HAMR_INSTALL_CMD   [empty: copy NEW_HAMRD over HAMR_BIN on this host]; e.g.
#                      "scp %f %n:/usr/sbin/hamrd.new && ssh %n mv /usr/sbin/hamrd.new /usr/sbin/hamrd"
#   HAMR_BIN           [/usr/sbin/hamrd]
#   HAMRCTL            [hamrctl]
#   HAMRCTL_CERT, HAMRCTL_KEY, HAMRCTL_CA  an operator's certificate and key and the
#                      cluster CA (deploy/make-pki.sh DIR operator NAME): the TCP
#                      control ports take only mutual TLS with [cluster_tls]
#   HAMR_CHECK_TIMEOUT [30]  HAMR_DRAIN_TIMEOUT [60]  HAMR_DRAIN_GRACE [3]
#   HAMR_STOP_TIMEOUT  [60]  HAMR_READY_TIMEOUT [120]  (seconds)
#
# The control and HTTP listeners must be reachable from where this runs (a
# management network), and the stop/start commands must reach the nodes.
#
# Exit status: 0 every node upgraded; 1 a failure (nothing after it is done:
# the message says which node is in which state, and how to go back); 2 bad
# usage. Output: one line per step on stdout, errors on stderr.
#
# Security: node replies are printed only after Python's repr() or as numbers;
# names and addresses come from the operator.
set -euo pipefail

PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3
HAMRCTL=${HAMRCTL:-hamrctl}
HAMR_BIN=${HAMR_BIN:-/usr/sbin/hamrd}
HAMR_STOP_CMD=${HAMR_STOP_CMD:-systemctl stop hamrd@%n}
HAMR_START_CMD=${HAMR_START_CMD:-systemctl start hamrd@%n}
HAMR_INSTALL_CMD=${HAMR_INSTALL_CMD:-}
HAMR_CHECK_TIMEOUT=${HAMR_CHECK_TIMEOUT:-30}
HAMR_DRAIN_TIMEOUT=${HAMR_DRAIN_TIMEOUT:-60}
HAMR_DRAIN_GRACE=${HAMR_DRAIN_GRACE:-3}
HAMR_STOP_TIMEOUT=${HAMR_STOP_TIMEOUT:-60}
HAMR_READY_TIMEOUT=${HAMR_READY_TIMEOUT:-120}

NAMES=()
CONTROLS=()
HTTPS=()
STAGE="" # what the current node has been through, for the failure message

# The JSON and HTTP work, in Python (stdlib only). Subcommands:
#   status CONTROL        one line: id state leader_id term commit applied draining
#   quorum TARGET NAME=CONTROL...
#                         print "ok: ..." and exit 0 if the voters other than node
#                         TARGET that are healthy are more than half of all voters;
#                         a second line "zone warning: ..." if one zone holds a
#                         majority of the voters
#   sessions HTTP         hamr_smtp_sessions_open from /metrics
#   ready HTTP            exit 0 if /health/ready answers 200; print the answer
RU_PY='
import json, subprocess, sys, urllib.error, urllib.request

HAMRCTL = sys.argv[1]

def status(control):
    try:
        out = subprocess.run([HAMRCTL, "-s", control, "--json", "--timeout", "5", "status"],
                             capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout).get("status") or None
    except ValueError:
        return None

def num(s, key):
    try:
        return int(s.get(key) or 0)
    except (TypeError, ValueError):
        return 0

def http_get(addr, path):
    try:
        with urllib.request.urlopen("http://%s%s" % (addr, path), timeout=5) as r:
            return r.status, r.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(65536).decode("utf-8", "replace")
    except (OSError, ValueError) as e:
        return None, str(e)

cmd = sys.argv[2]
if cmd == "status":
    s = status(sys.argv[3])
    if s is None:
        sys.exit(1)
    state = str(s.get("state") or "unknown")
    print("%d %s %d %d %d %d %s" % (num(s, "id"), state if state.isalnum() else "unknown",
          num(s, "leader_id"), num(s, "term"), num(s, "commit_index"),
          num(s, "applied_index"), "yes" if s.get("draining") else "no"))
elif cmd == "quorum":
    target = sys.argv[3]
    nodes = [a.split("=", 1) for a in sys.argv[4:]]
    sts = {name: status(control) for name, control in nodes}
    leaders = [(num(s, "term"), name) for name, s in sts.items()
               if s and s.get("state") == "leader"]
    if not leaders:
        print("no listed node is the leader (answers: %s)"
              % ", ".join("%s=%s" % (n, "down" if s is None else repr(s.get("state")))
                          for n, s in sts.items()))
        sys.exit(1)
    lname = max(leaders)[1]
    # Ask the leader again now, then every other node: each must have applied
    # at least what the leader had committed before it was asked.
    ls = status(dict(nodes)[lname])
    if ls is None or ls.get("state") != "leader":
        print("the leader %s changed while asked" % lname)
        sys.exit(1)
    lid, commit = num(ls, "id"), num(ls, "commit_index")
    voters = sorted(num(m, "id") for m in ls.get("members") or [] if m.get("role") == "voter")
    by_id = {}
    for name, control in nodes:
        s = ls if name == lname else status(control)
        if s is not None:
            by_id[num(s, "id")] = (name, s)
    target_id = next((i for i, (n, _) in by_id.items() if n == target), None)
    healthy, why = [], []
    for v in voters:
        if v not in by_id:
            why.append("voter %d: not listed or not answering" % v)
            continue
        name, s = by_id[v]
        if s.get("state") not in ("leader", "follower") or num(s, "leader_id") != lid:
            why.append("%s: state %r, leader %d" % (name, s.get("state"), num(s, "leader_id")))
        elif num(s, "applied_index") < commit:
            why.append("%s: applied %d < leader commit %d" % (name, num(s, "applied_index"),
                                                              commit))
        elif v != target_id:
            healthy.append(name)
    msg = ("leader %s, %d voters, healthy without %s: %s%s"
           % (lname, len(voters), target, ", ".join(healthy) or "none",
              "; not healthy: " + "; ".join(why) if why else ""))
    # Zones as the leader knows them (util/zone.c zone_majority): a voter
    # without one counts among the voters, not for a zone.
    zones = {}
    for m in ls.get("members") or []:
        z = str(m.get("zone") or "")
        if m.get("role") == "voter" and z:
            zones[z] = zones.get(z, 0) + 1
    major = [(z, c) for z, c in sorted(zones.items()) if 2 * c > len(voters)]
    zmsg = ""
    if major:
        zmsg = ("zone warning: zone %r holds %d of the %d voters (%s): losing that zone "
                "loses quorum" % (major[0][0], major[0][1], len(voters),
                                  ", ".join("%r %d" % zc for zc in sorted(zones.items()))))
    if 2 * len(healthy) > len(voters):
        print("ok: " + msg)
        if zmsg:
            print(zmsg)
        sys.exit(0)
    print("no quorum without %s: %s" % (target, msg))
    if zmsg:
        print(zmsg)
    sys.exit(1)
elif cmd == "sessions":
    code, text = http_get(sys.argv[3], "/metrics")
    if code != 200:
        sys.exit(1)
    for line in text.splitlines():
        if line.startswith("hamr_smtp_sessions_open "):
            print(int(float(line.split()[1])))
            sys.exit(0)
    sys.exit(1)
elif cmd == "ready":
    code, text = http_get(sys.argv[3], "/health/ready")
    print("%s %r" % (code, text.strip()[:200]))
    sys.exit(0 if code == 200 else 1)
else:
    sys.exit(2)
'

# ru_say - one progress line.
ru_say() {
    echo "rolling-upgrade: $*"
}

# ru_die - the failure, what state the current node is in, and exit 1.
ru_die() {
    echo "rolling-upgrade: FAILED: $*" >&2
    if [ -n "$STAGE" ]; then
        echo "rolling-upgrade: node $CUR_NAME: $STAGE" >&2
    fi
    echo "rolling-upgrade: stopped; nodes after $CUR_NAME were not touched" >&2
    exit 1
}

# ru_usage - the usage line; exit 2.
ru_usage() {
    echo "usage: $0 [--force] [-f CLUSTER_FILE] NEW_HAMRD [NAME=CONTROL[,HTTP]...]" >&2
    exit 2
}

# ru_py ARGS... - the Python helper.
ru_py() {
    "$PYTHON" -c "$RU_PY" "$HAMRCTL" "$@"
}

# ru_add_node NAME CONTROL [HTTP] - append a node, checking its fields.
ru_add_node() {
    local name=$1 control=$2 http=${3:-} i
    [[ "$name" =~ ^[A-Za-z0-9_.@-]+$ ]] || { echo "bad node name \"$name\"" >&2; ru_usage; }
    [[ "$control" =~ ^[^[:space:]]+:[0-9]+$ ]] || {
        echo "bad control address \"$control\" for $name" >&2
        ru_usage
    }
    [ -z "$http" ] || [[ "$http" =~ ^[^[:space:]]+:[0-9]+$ ]] || {
        echo "bad http address \"$http\" for $name" >&2
        ru_usage
    }
    for ((i = 0; i < ${#NAMES[@]}; i++)); do
        [ "${NAMES[$i]}" != "$name" ] || { echo "node $name listed twice" >&2; ru_usage; }
    done
    NAMES+=("$name")
    CONTROLS+=("$control")
    HTTPS+=("$http")
}

# ru_read_file FILE - nodes from a cluster file.
ru_read_file() {
    local line name control http extra
    [ -r "$1" ] || { echo "cannot read cluster file $1" >&2; exit 2; }
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        read -r name control http extra <<<"$line" || true
        [ -n "${name:-}" ] || continue
        if [ -n "${extra:-}" ] || [ -z "${control:-}" ]; then
            echo "$1: bad line \"$line\" (want NAME CONTROL [HTTP])" >&2
            exit 2
        fi
        ru_add_node "$name" "$control" "${http:-}"
    done <"$1"
}

# ru_cmd TEMPLATE NAME - TEMPLATE with %n = NAME and %f = NEW_HAMRD, run with sh -c.
ru_cmd() {
    local cmd=$1
    cmd=${cmd//%n/$2}
    cmd=${cmd//%f/$NEW}
    ru_say "$2: running: $cmd"
    sh -c "$cmd"
}

# ru_wait SECONDS WHAT COMMAND... - run COMMAND every 0.5 s until it succeeds, at most SECONDS.
ru_wait() {
    local secs=$1 what=$2 end
    shift 2
    end=$((SECONDS + secs))
    while ! "$@" >/dev/null; do
        if [ "$SECONDS" -ge "$end" ]; then
            ru_die "timed out after ${secs}s waiting for $what"
        fi
        sleep 0.5
    done
}

# ru_status_of I - "id state leader term commit applied draining" of node I; false if down.
ru_status_of() {
    ru_py status "${CONTROLS[$1]}"
}

# ru_quorum_ok I - true if the cluster keeps a healthy majority of voters without node I.
ru_quorum_ok() {
    local i args=()
    for ((i = 0; i < ${#NAMES[@]}; i++)); do
        args+=("${NAMES[$i]}=${CONTROLS[$i]}")
    done
    QUORUM_MSG=$(ru_py quorum "${NAMES[$1]}" "${args[@]}") && return 0
    return 1
}

# ru_zone_warning - repeat the quorum check's zone warning, if any, on stderr.
ru_zone_warning() {
    local line
    while IFS= read -r line; do
        case $line in
        "zone warning: "*) echo "rolling-upgrade: WARNING: ${line#zone warning: }" >&2 ;;
        esac
    done <<<"${QUORUM_MSG:-}"
}

# ru_not_leader I - true once node I answers, is not the leader and names another leader.
ru_not_leader() {
    local line id state leader rest
    line=$(ru_status_of "$1") || return 1
    read -r id state leader rest <<<"$line"
    [ "$state" != "leader" ] && [ "$leader" != 0 ] && [ "$leader" != "$id" ]
}

# ru_sessions_done I - true when node I has no SMTP session open (HTTP only).
ru_sessions_done() {
    local n
    n=$(ru_py sessions "${HTTPS[$1]}") || return 1
    [ "$n" = 0 ]
}

# ru_down I - true once node I's control port does not answer.
ru_down() {
    ! ru_status_of "$1" >/dev/null 2>&1
}

# ru_knows_leader I - true once node I answers and names a leader.
ru_knows_leader() {
    local line id state leader rest
    line=$(ru_status_of "$1") || return 1
    read -r id state leader rest <<<"$line"
    [ "$leader" != 0 ] && { [ "$state" = leader ] || [ "$state" = follower ]; }
}

# ru_leader_commit - print the commit index of the node that leads (asked now); false if none.
ru_leader_commit() {
    local i line state commit
    for ((i = 0; i < ${#NAMES[@]}; i++)); do
        line=$(ru_status_of "$i" 2>/dev/null) || continue
        read -r _ state _ _ commit _ <<<"$line"
        if [ "$state" = leader ]; then
            echo "$commit"
            return 0
        fi
    done
    return 1
}

# ru_caught_up I TARGET - true once node I has applied TARGET.
ru_caught_up() {
    local line id state leader applied rest
    line=$(ru_status_of "$1") || return 1
    read -r id state leader _ _ applied rest <<<"$line"
    [ "$leader" != 0 ] && [ "$applied" -ge "$2" ]
}

# ru_ready I - true once node I's /health/ready says 200.
ru_ready() {
    ru_py ready "${HTTPS[$1]}" >/dev/null
}

# ru_ctl I VERB - hamrctl VERB sent to node I itself.
ru_ctl() {
    "$HAMRCTL" -s "${CONTROLS[$1]}" --timeout 30 "$2"
}

# ru_install NAME - put NEW over HAMR_BIN (backup once) or run HAMR_INSTALL_CMD.
ru_install() {
    local tmp
    if [ -n "$HAMR_INSTALL_CMD" ]; then
        ru_cmd "$HAMR_INSTALL_CMD" "$1" || ru_die "HAMR_INSTALL_CMD failed"
        return 0
    fi
    if [ -e "$HAMR_BIN" ] && cmp -s "$NEW" "$HAMR_BIN"; then
        ru_say "$1: $HAMR_BIN is already the new binary"
        return 0
    fi
    if [ -e "$HAMR_BIN" ] && [ ! -e "$HAMR_BIN.prev" ]; then
        cp -p "$HAMR_BIN" "$HAMR_BIN.prev" || ru_die "cannot back up $HAMR_BIN"
        ru_say "$1: old binary kept as $HAMR_BIN.prev"
    fi
    tmp="$HAMR_BIN.new.$$"
    if ! { cp "$NEW" "$tmp" && chmod 755 "$tmp" && mv -f "$tmp" "$HAMR_BIN"; }; then
        rm -f "$tmp"
        ru_die "cannot install $NEW as $HAMR_BIN"
    fi
    ru_say "$1: installed $NEW as $HAMR_BIN"
}

# ru_upgrade I - the six steps for node I.
ru_upgrade() {
    local i=$1 name=${NAMES[$1]} target t0
    CUR_NAME=$name
    STAGE=""
    ru_say "== $name (control ${CONTROLS[$i]}${HTTPS[$i]:+, http ${HTTPS[$i]}})"

    # 1. Quorum without this node.
    local end=$((SECONDS + HAMR_CHECK_TIMEOUT)) forced=0
    until ru_quorum_ok "$i"; do
        if [ "$SECONDS" -ge "$end" ]; then
            if [ "$FORCE" = 1 ]; then
                forced=1
                break
            fi
            ru_zone_warning
            QUORUM_MSG=${QUORUM_MSG:-no answer}
            ru_die "refusing to take $name down: ${QUORUM_MSG%%$'\n'*}" \
                "(--force takes it down anyway)"
        fi
        sleep 1
    done
    if [ "$forced" = 1 ]; then
        echo "rolling-upgrade: WARNING: taking $name down without quorum (--force):" \
            "${QUORUM_MSG%%$'\n'*}" >&2
    else
        ru_say "$name: quorum check ${QUORUM_MSG%%$'\n'*}"
    fi
    ru_zone_warning

    # 2. Drain.
    ru_ctl "$i" drain || ru_die "hamrctl drain failed on $name"
    STAGE="drained and still running; \"$HAMRCTL -s ${CONTROLS[$i]} undrain\" puts it back"
    t0=$SECONDS
    ru_wait "$HAMR_DRAIN_TIMEOUT" "$name to hand over leadership" ru_not_leader "$i"
    if [ -n "${HTTPS[$i]}" ]; then
        ru_wait "$HAMR_DRAIN_TIMEOUT" "$name's SMTP sessions to end" ru_sessions_done "$i"
    else
        ru_say "$name: no HTTP address: cannot count its sessions; waiting ${HAMR_DRAIN_GRACE}s"
    fi
    while [ $((SECONDS - t0)) -lt "$HAMR_DRAIN_GRACE" ]; do
        sleep 0.5
    done
    ru_say "$name: drained, not the leader"

    # 3. Stop.
    STAGE="being stopped with the old binary; start it with: ${HAMR_START_CMD//%n/$name}"
    ru_cmd "$HAMR_STOP_CMD" "$name" || ru_die "stop command failed for $name"
    ru_wait "$HAMR_STOP_TIMEOUT" "$name to stop answering on ${CONTROLS[$i]}" ru_down "$i"
    ru_say "$name: stopped"

    # 4. Install.
    STAGE="stopped; the binary may be half replaced (old one: $HAMR_BIN.prev)"
    ru_install "$name"

    # 5. Start, keep drained until caught up.
    STAGE="new binary installed, being started (old one: $HAMR_BIN.prev)"
    ru_cmd "$HAMR_START_CMD" "$name" || ru_die "start command failed for $name"
    ru_wait "$HAMR_READY_TIMEOUT" "$name to answer on ${CONTROLS[$i]}" ru_status_of "$i"
    ru_ctl "$i" drain >/dev/null || ru_die "hamrctl drain failed on $name after the start"
    STAGE="running the new binary, drained; \"$HAMRCTL -s ${CONTROLS[$i]} undrain\" puts it back"
    ru_wait "$HAMR_READY_TIMEOUT" "$name to know a leader" ru_knows_leader "$i"
    target=$(ru_leader_commit) || {
        ru_wait "$HAMR_READY_TIMEOUT" "a leader to answer" ru_leader_commit
        target=$(ru_leader_commit) || ru_die "no leader answers"
    }
    ru_wait "$HAMR_READY_TIMEOUT" "$name to apply up to index $target" ru_caught_up "$i" "$target"
    ru_say "$name: caught up (applied >= $target)"

    # 6. Undrain.
    ru_ctl "$i" undrain >/dev/null || ru_die "hamrctl undrain failed on $name"
    if [ -n "${HTTPS[$i]}" ]; then
        ru_wait "$HAMR_READY_TIMEOUT" "$name's /health/ready to say 200" ru_ready "$i"
    fi
    STAGE=""
    ru_say "$name: upgraded, undrained and ready"
}

FILE=""
FORCE=0
# --force is a long option, which getopts does not know: take it out first.
ARGS=()
for arg in "$@"; do
    if [ "$arg" = "--force" ]; then
        FORCE=1
    else
        ARGS+=("$arg")
    fi
done
set -- ${ARGS[@]+"${ARGS[@]}"}
while getopts "f:h" opt; do
    case $opt in
    f) FILE=$OPTARG ;;
    *) ru_usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || ru_usage
NEW=$1
shift
[ -n "$FILE" ] && ru_read_file "$FILE"
for arg in "$@"; do
    [[ "$arg" == *=* ]] || { echo "bad node \"$arg\" (want NAME=CONTROL[,HTTP])" >&2; ru_usage; }
    spec=${arg#*=}
    ru_add_node "${arg%%=*}" "${spec%%,*}" "$([[ "$spec" == *,* ]] && echo "${spec#*,}")"
done
[ "${#NAMES[@]}" -gt 0 ] || { echo "no nodes given" >&2; ru_usage; }
for n in "${HAMR_CHECK_TIMEOUT}" "${HAMR_DRAIN_TIMEOUT}" "${HAMR_DRAIN_GRACE}" \
    "${HAMR_STOP_TIMEOUT}" "${HAMR_READY_TIMEOUT}"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "timeouts are whole seconds, not \"$n\"" >&2; exit 2; }
done

CUR_NAME="(none)"
if [ ! -f "$NEW" ] || [ ! -x "$NEW" ]; then
    ru_die "$NEW is not an executable file"
fi
version=$("$NEW" --version 2>&1) || ru_die "$NEW --version failed: $version"
ru_say "new binary: $NEW ($version); installing as ${HAMR_INSTALL_CMD:-$HAMR_BIN}"
command -v "$HAMRCTL" >/dev/null || ru_die "no hamrctl ($HAMRCTL); set HAMRCTL"
for ((k = 0; k < ${#NAMES[@]}; k++)); do
    ru_upgrade "$k"
done
ru_say "done: ${#NAMES[@]} node(s) upgraded: ${NAMES[*]}"
