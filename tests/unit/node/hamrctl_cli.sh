#!/bin/bash
# hamrctl_cli.sh HAMRCTL CONTROL_FAKE - the hamrctl command line: usage errors
# (exit 2), an unreachable node (exit 1), text/JSON output and error answers
# against control_fake, a canned control port; the control socket (-s, and
# -c with no address; a socket hamrctl may not open); a TCP port with TLS
# (operator certificate by flags and environment, and the clear errors for
# no certificate, a node's, another CA's, a wrong --ca, a certificate on a
# plaintext port); the redirect of an admin verb to "[::1]:PORT" (and the
# unbracketed form older nodes publish) over TLS, from TCP and from the socket;
# status's cluster TLS line and JSON: plaintext, a 10-day certificate at a
# known time (days and notAfter from the file), and a node too old to say.
set -u

HAMRCTL=$(realpath "$1")
FAKE=$(realpath "$2")
MKPKI=$(realpath "$(dirname "$0")/../../../deploy/make-pki.sh")
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/hamr-test-hamrctl-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
failures=0

# expect NAME WANT_RC WANT_STDERR_SUBSTRING WANT_STDOUT_SUBSTRING -- ARGS...
expect() {
    local name=$1 want_rc=$2 want_err=$3 want_out=$4
    shift 5
    timeout 20 "$HAMRCTL" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    local ok=1
    [ "$rc" -eq "$want_rc" ] || ok=0
    if [ -n "$want_err" ] && ! grep -qF -- "$want_err" "$TMP/err"; then ok=0; fi
    if [ -n "$want_out" ] && ! grep -qF -- "$want_out" "$TMP/out"; then ok=0; fi
    if [ $ok -eq 1 ]; then
        echo "ok   $name"
    else
        echo "FAIL $name: rc=$rc (want $want_rc)"
        echo "  stderr: $(cat "$TMP/err")"
        echo "  stdout: $(head -c 2000 "$TMP/out")"
        failures=$((failures + 1))
    fi
}

# --- usage errors: exit 2, nothing is sent -----------------------------------
expect "unknown verb" 2 'hamrctl: unknown command "frob" (see hamrctl help)' "" -- frob
expect "missing argument" 2 "usage: hamrctl [options] show ID" "" -- show
expect "extra argument" 2 "usage: hamrctl [options] status" "" -- status now
expect "two ids to hold" 2 "usage: hamrctl [options] hold ID" "" -- hold A B
expect "bad queue id" 2 'hamrctl: not a queue id: "a/b"' "" -- hold a/b
expect "bad node id" 2 'hamrctl: not a node id: "0"' "" -- promote 0
expect "bad add address" 2 'hamrctl: not an IPV4:PORT or [IPV6]:PORT address: "node4"' "" -- add 4 node4
expect "add ipv6 unbracketed" 2 'hamrctl: not an IPV4:PORT or [IPV6]:PORT address: "::1:7004"' "" -- add 4 ::1:7004
expect "add ipv4 bracketed" 2 'hamrctl: not an IPV4:PORT or [IPV6]:PORT address: "[127.0.0.1]:7004"' "" -- add 4 '[127.0.0.1]:7004'
expect "add bad zone" 2 "hamrctl: --zone: not 1 to 63 letters, digits, '.', '_' or '-': \"dc/1\"" "" -- add 4 127.0.0.1:7004 --zone dc/1
expect "add zone without value" 2 "usage: hamrctl [options] add NODE IP:PORT [--zone ZONE] [--force]" "" -- add 4 127.0.0.1:7004 --zone
expect "add unknown option" 2 "usage: hamrctl [options] add NODE IP:PORT [--zone ZONE] [--force]" "" -- add 4 127.0.0.1:7004 --forse
expect "bad queue filter" 2 'hamrctl: unknown queue filter "--color"' "" -- queue --color red
expect "bad state filter" 2 'hamrctl: --state: bad value "sleeping"' "" -- queue --state sleeping
expect "bad duration filter" 2 'hamrctl: --older-than: bad value "1 week"' "" -- queue --older-than "1 week"
expect "filter without value" 2 "hamrctl: --to needs a value" "" -- queue --to
expect "limit zero" 2 'hamrctl: --limit: bad value "0"' "" -- queue --limit 0
expect "limit above the cap" 2 'hamrctl: --limit: bad value "10001"' "" -- queue --limit 10001
expect "limit not a number" 2 'hamrctl: --limit: bad value "5x"' "" -- queue --limit 5x
expect "after a bad id" 2 'hamrctl: --after: bad value "a/b"' "" -- queue --after a/b
expect "unknown option" 2 'hamrctl: unknown option "-x"' "" -- -x status
expect "bad timeout" 2 "hamrctl: --timeout: not 1..3600 seconds" "" -- --timeout 0 status
expect "bad -a" 2 'hamrctl: -a: not HOST:PORT: "localhost"' "" -- -a localhost status
expect "-s and -a" 2 "hamrctl: give one of -s, -a and -c" "" -- -s /x.sock -a 127.0.0.1:1 status
expect "cert alone" 2 "hamrctl: --cert, --key and --ca (or HAMRCTL_CERT, HAMRCTL_KEY, HAMRCTL_CA) go together" "" \
    -- --cert /x.pem status
expect "no verb" 2 "usage: hamrctl" "" --
expect "help" 0 "" "hamrctl [-s SOCKET | -a HOST:PORT | -c CONFIG] [--cert FILE --key FILE --ca FILE]" -- help

# --- unreachable node: exit 1 ------------------------------------------------
closed_port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
expect "unreachable" 1 "hamrctl: cannot connect to 127.0.0.1:$closed_port: Connection refused" "" \
    -- -s "127.0.0.1:$closed_port" status
printf '[node]\nid = 1\ndata_dir = %s/nodata\n[cluster_tls]\nplaintext = yes\n[listen]\nraft = 127.0.0.1:7001\ncontrol = 127.0.0.1:%s\n' \
    "$TMP" "$closed_port" >"$TMP/closed.conf"
expect "unreachable via -c (socket)" 1 \
    "hamrctl: cannot connect to control socket $TMP/nodata/control.sock: No such file or directory (is hamrd running" \
    "" -- -c "$TMP/closed.conf" status
printf 'control_socket =\n' >>"$TMP/closed.conf"
expect "unreachable via -c (TCP)" 1 "cannot connect to 127.0.0.1:$closed_port" "" -- -c "$TMP/closed.conf" status
expect "unreachable -s" 1 "hamrctl: cannot connect to control socket $TMP/none.sock: No such file or directory" "" \
    -- -s "$TMP/none.sock" status
printf '[node]\nid = 1\nbogus = 2\n' >"$TMP/bad.conf"
expect "bad config" 1 "hamrctl: $TMP/bad.conf:3: unknown key \"bogus\" in [node]" "" -- -c "$TMP/bad.conf" status

# --- against the canned control port -------------------------------------------
coproc FAKE_PROC { exec timeout 60 "$FAKE"; }
fake_pid=$FAKE_PROC_PID
port=""
read -r -t 10 port <&"${FAKE_PROC[0]}"
if [ -z "$port" ]; then
    echo "FAIL control_fake did not start"
    exit 1
fi
S=(-s "127.0.0.1:$port")

expect "status" 0 "" "node:        1 (leader)" -- "${S[@]}" status
expect "status members" 0 "" "             3 127.0.0.1:7003 voter" -- "${S[@]}" status
expect "status member zone" 0 "" "             3 127.0.0.1:7003 voter zone dc2" -- "${S[@]}" status
expect "status zone" 0 "" "zone:        dc1" -- "${S[@]}" status
expect "status zones" 0 "" \
    "zones:       dc1 2, dc2 1 (voters); warning: zone dc1 holds 2 of 3 voters, losing it loses quorum" \
    -- "${S[@]}" status
expect "status queue" 0 "" "queue:       2 messages (0 held), 3 recipients pending, 0 leased, 4.0 KiB" \
    -- "${S[@]}" status
expect "status plaintext" 0 "" "cluster tls: off (plaintext)" -- "${S[@]}" status
expect "queue table" 0 "" "-- 3 Kbytes in 2 messages." -- "${S[@]}" queue --state deferred --older-than 1h
expect "queue held mark" 0 "" "Q2BBBB!" -- "${S[@]}" queue
expect "queue escapes" 0 "" "(451 4.7.1 greylisted ?[31m)" -- "${S[@]}" queue
expect "queue first page" 0 "" "(more: hamrctl queue --state all --limit 1 --after Q1AAAA)" \
    -- "${S[@]}" queue --state all --limit 1
expect "queue last page" 0 "" "Q2BBBB!" -- "${S[@]}" queue --limit 1 --after Q1AAAA
"$HAMRCTL" "${S[@]}" queue --limit 1 --after Q1AAAA >"$TMP/out" 2>&1
if ! grep -q "more:" "$TMP/out" && ! grep -q "Q1AAAA" "$TMP/out"; then
    echo "ok   queue last page: no more line"
else
    echo "FAIL queue last page: $(cat "$TMP/out")"
    failures=$((failures + 1))
fi
expect "show" 0 "" "    state: deferred, attempts: 2, next attempt:" -- "${S[@]}" show Q1AAAA
expect "show headers" 0 "" "  Subject: hello" -- "${S[@]}" show Q1AAAA
expect "show tls" 0 "" "    tls: verify TLSv1.3 TLS_AES_256_GCM_SHA384 (verified)?[0m" -- "${S[@]}" show Q1AAAA
expect "hold" 0 "" "hold ok Q1AAAA" -- "${S[@]}" hold Q1AAAA
expect "flush all" 0 "" "flush ok" -- "${S[@]}" flush
expect "add" 0 "" "add ok 4 127.0.0.1:7004" -- "${S[@]}" add 4 127.0.0.1:7004
expect "add ipv6" 0 "" "add ok 5 [2001:db8::5]:7005" -- "${S[@]}" add 5 '[2001:db8::5]:7005'
expect "add zone force" 0 "" "add ok 4 127.0.0.1:7004 --zone dc3 --force" \
    -- "${S[@]}" add 4 127.0.0.1:7004 --zone dc3 --force
expect "error answer" 1 "hamrctl: no such message: MISSING" "" -- "${S[@]}" delete MISSING
expect "version" 0 "" "hamrctl " -- "${S[@]}" version
printf '[node]\nid = 1\ndata_dir = /tmp\n[cluster_tls]\nplaintext = yes\n[listen]\nraft = 127.0.0.1:7001\ncontrol = 0.0.0.0:%s\ncontrol_socket =\n' \
    "$port" >"$TMP/fake.conf"
expect "via -c (TCP)" 0 "" "node:        1 (leader)" -- -c "$TMP/fake.conf" status
expect "-s HOST:PORT is TCP" 0 "" "node:        1 (leader)" -- -s "127.0.0.1:$port" status

"$HAMRCTL" "${S[@]}" --json status >"$TMP/json" 2>"$TMP/err"
if [ $? -eq 0 ] && $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["status"]["members"][2]["address"]=="127.0.0.1:7003", d; assert d["status"]["free_bytes"]==10737418240; assert d["status"]["cluster_tls"]["plaintext"] is True, d' "$TMP/json"; then
    echo "ok   json status"
else
    echo "FAIL json status: $(cat "$TMP/json" "$TMP/err")"
    failures=$((failures + 1))
fi
"$HAMRCTL" "${S[@]}" status --json >"$TMP/json" 2>"$TMP/err"
if [ $? -eq 0 ] && $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["status"]["id"]==1, d' "$TMP/json"; then
    echo "ok   json after the verb"
else
    echo "FAIL json after the verb: $(cat "$TMP/json" "$TMP/err")"
    failures=$((failures + 1))
fi
"$HAMRCTL" "${S[@]}" --json queue >"$TMP/json" 2>"$TMP/err"
if [ $? -eq 0 ] && $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); e=d["entries"]; assert len(e)==2 and e[0]["rcpts"][0]["last_error"].endswith("\x1b[31m"), d' "$TMP/json"; then
    echo "ok   json queue"
else
    echo "FAIL json queue: $(cat "$TMP/json" "$TMP/err")"
    failures=$((failures + 1))
fi
"$HAMRCTL" "${S[@]}" --json queue --limit 1 >"$TMP/json" 2>"$TMP/err"
if [ $? -eq 0 ] && $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["entries"])==1 and d["next_after"]=="Q1AAAA", d' "$TMP/json"; then
    echo "ok   json queue page"
else
    echo "FAIL json queue page: $(cat "$TMP/json" "$TMP/err")"
    failures=$((failures + 1))
fi

"$HAMRCTL" "${S[@]}" --json show Q1AAAA >"$TMP/json" 2>"$TMP/err"
if [ $? -eq 0 ] && $PY -c 'import json,sys; r=json.load(open(sys.argv[1]))["entries"][0]["rcpts"]; assert r[0]["tls_policy"]=="verify" and r[0]["tls"].startswith("TLSv1.3 ") and r[1]["tls_policy"]=="", r' "$TMP/json"; then
    echo "ok   json show tls"
else
    echo "FAIL json show tls: $(cat "$TMP/json" "$TMP/err")"
    failures=$((failures + 1))
fi
# A recipient without a TLS policy (never attempted, or an older node) gets no tls line.
if "$HAMRCTL" "${S[@]}" show Q1AAAA 2>/dev/null | grep -A3 '^  carol@example.net$' | grep -q 'tls:'; then
    echo "FAIL show tls: a tls line for a recipient without a policy"
    failures=$((failures + 1))
else
    echo "ok   show no tls line without a policy"
fi

# Closing its stdin ends control_fake.
exec {FAKE_PROC[1]}>&-
wait "$fake_pid"

# start_fake NAME ARGS... - control_fake ARGS in the background; its port in
# ${NAME}_port; it runs until stop_fakes closes its stdin.
fake_fds=()
fake_pids=()
start_fake() {
    local name=$1 fd i
    shift
    mkfifo "$TMP/$name.in"
    timeout 60 "$FAKE" "$@" <"$TMP/$name.in" >"$TMP/$name.port" 2>"$TMP/$name.err" &
    fake_pids+=($!)
    exec {fd}>"$TMP/$name.in"
    fake_fds+=("$fd")
    for ((i = 0; i < 100; i++)); do
        [ -s "$TMP/$name.port" ] && break
        sleep 0.1
    done
    if ! [ -s "$TMP/$name.port" ]; then
        echo "FAIL control_fake $name did not start: $(cat "$TMP/$name.err")"
        exit 1
    fi
    printf -v "${name}_port" '%s' "$(head -1 "$TMP/$name.port")"
}
stop_fakes() {
    local fd
    for fd in "${fake_fds[@]}"; do exec {fd}>&-; done
    wait "${fake_pids[@]}"
}

# --- the control socket --------------------------------------------------------
mkdir -p "$TMP/sockdata"
start_fake unix --socket "$TMP/sockdata/control.sock"
printf '[node]\nid = 1\ndata_dir = %s/sockdata\n[cluster_tls]\nplaintext = yes\n[listen]\nraft = 127.0.0.1:7001\ncontrol = 127.0.0.1:%s\n' \
    "$TMP" "$closed_port" >"$TMP/sock.conf"
expect "socket via -c" 0 "" "node:        1 (leader)" -- -c "$TMP/sock.conf" status
expect "socket via -s" 0 "" "hold ok Q1AAAA" -- -s "$TMP/sockdata/control.sock" hold Q1AAAA
# (in this shell, not a subshell, so that a failure is counted)
cd "$TMP" && expect "socket via -s, relative" 0 "" "hold ok Q1AAAA" -- -s "sockdata/control.sock" hold Q1AAAA
cd "$TMP/sockdata" && expect "socket via -s, no slash" 0 "" "node:        1" -- -s control.sock status
cd /
mode=$(stat -c %a "$TMP/sockdata/control.sock")
if [ "$mode" = 660 ]; then echo "ok   socket mode 0660"; else
    echo "FAIL socket mode: $mode"
    failures=$((failures + 1))
fi
if [ "$(id -u)" -eq 0 ]; then
    chmod 755 "$TMP" "$TMP/sockdata"
    if setpriv --reuid=nobody --regid=nogroup --clear-groups "$HAMRCTL" -s "$TMP/sockdata/control.sock" status \
        >"$TMP/out" 2>"$TMP/err"; then
        echo "FAIL socket permission: nobody may use a 0660 root socket"
        failures=$((failures + 1))
    elif grep -qF "hamrctl: cannot connect to control socket $TMP/sockdata/control.sock: Permission denied (root and members of the group of hamrd's account may use it)" "$TMP/err"; then
        echo "ok   socket permission denied"
    else
        echo "FAIL socket permission denied: $(cat "$TMP/err")"
        failures=$((failures + 1))
    fi
else
    echo "skip socket permission denied (needs root)"
fi

# --- TLS: a cluster PKI, fakes with node 1's certificate -------------------------
PKI=$TMP/pki
{ "$MKPKI" "$PKI" ca && "$MKPKI" "$PKI" node 1 && "$MKPKI" "$PKI" operator alice &&
    "$MKPKI" "$TMP/pki2" ca && "$MKPKI" "$TMP/pki2" operator mallory; } >/dev/null ||
    { echo "FAIL make-pki.sh"; exit 1; }
cat "$PKI/ca.pem" "$TMP/pki2/ca.pem" >"$TMP/both-ca.pem"
NODE_TLS=(--tls "$PKI/ca.pem" "$PKI/node-1.pem" "$PKI/node-1.key")
OP=(--cert "$PKI/operator-alice.pem" --key "$PKI/operator-alice.key" --ca "$PKI/ca.pem")
# B: the "leader" on [::1]; A names it bracketed, C as older nodes did (unbracketed).
start_fake B --host ::1 "${NODE_TLS[@]}"
start_fake A "${NODE_TLS[@]}" --leader "[::1]:$B_port" --socket "$TMP/a.sock"
start_fake C "${NODE_TLS[@]}" --leader "::1:$B_port"
start_fake P --leader "[::1]:$B_port"
# Q: a TLS port whose certificate is an operator's, not a node's.
"$MKPKI" "$PKI" operator bob >/dev/null || { echo "FAIL make-pki.sh"; exit 1; }
start_fake Q --tls "$PKI/ca.pem" "$PKI/operator-bob.pem" "$PKI/operator-bob.key"
A=(-a "127.0.0.1:$A_port")

expect "tls operator" 0 "" "node:        1 (leader)" -- "${A[@]}" "${OP[@]}" status
HAMRCTL_CERT=$PKI/operator-alice.pem HAMRCTL_KEY=$PKI/operator-alice.key HAMRCTL_CA=$PKI/ca.pem \
    expect "tls operator from the environment" 0 "" "hold ok Q1AAAA via $A_port" -- "${A[@]}" hold Q1AAAA
expect "tls no certificate" 1 \
    "hamrctl: this control port takes TLS with an operator certificate of the cluster CA (hamrctl --cert, --key and --ca" \
    "" -- "${A[@]}" status
expect "tls another CA" 1 "hamrctl: 127.0.0.1:$A_port refused the TLS connection: " "" \
    -- "${A[@]}" --cert "$TMP/pki2/operator-mallory.pem" --key "$TMP/pki2/operator-mallory.key" \
    --ca "$TMP/both-ca.pem" status
expect "tls wrong --ca" 1 "hamrctl: TLS handshake with 127.0.0.1:$A_port failed: " "" \
    -- "${A[@]}" --cert "$TMP/pki2/operator-mallory.pem" --key "$TMP/pki2/operator-mallory.key" \
    --ca "$TMP/pki2/ca.pem" status
expect "tls node certificate" 1 "hamrctl: $PKI/node-1.pem is node 1's certificate; a control port takes an operator's" \
    "" -- "${A[@]}" --cert "$PKI/node-1.pem" --key "$PKI/node-1.key" --ca "$PKI/ca.pem" status
expect "tls certificate on a plaintext port" 1 \
    "hamrctl: 127.0.0.1:$P_port closed the connection during the TLS handshake (is its control port in plaintext?" \
    "" -- -a "127.0.0.1:$P_port" "${OP[@]}" status
expect "tls server not a node" 1 \
    "hamrctl: 127.0.0.1:$Q_port presented a certificate of the cluster CA that names no node (hamr:node:ID)" \
    "" -- -a "127.0.0.1:$Q_port" "${OP[@]}" status
expect "redirect to [::1] over TLS" 0 "" "transfer ok 2 via $B_port" -- "${A[@]}" "${OP[@]}" transfer 2
expect "redirect from the socket over TLS" 0 "" "transfer ok 2 via $B_port" -- -s "$TMP/a.sock" "${OP[@]}" transfer 2
expect "redirect from the socket, no certificate" 1 "hamrctl: this control port takes TLS" "" \
    -- -s "$TMP/a.sock" transfer 2
expect "redirect, unbracketed v6" 0 "" "transfer ok 2 via $B_port" -- -a "127.0.0.1:$C_port" "${OP[@]}" transfer 2

# --- status: cluster TLS, days left and notAfter ---------------------------------
# cert_time FILE startdate|enddate - the certificate's notBefore/notAfter, Unix seconds.
cert_time() {
    date -u -d "$(openssl x509 -noout "-$2" -in "$1" | cut -d= -f2)" +%s
}
HAMR_PKI_DAYS=10 "$MKPKI" "$PKI" node 3 >/dev/null || { echo "FAIL make-pki.sh"; exit 1; }
n3_begin=$(cert_time "$PKI/node-3.pem" startdate)
n3_end=$(cert_time "$PKI/node-3.pem" enddate)
ca_end=$(cert_time "$PKI/ca.pem" enddate)
now=$((n3_begin + 1)) # one second in: 9 whole days left
ca_days=$(((ca_end - now) / 86400))
start_fake D --socket "$TMP/d.sock" --tls "$PKI/ca.pem" "$PKI/node-3.pem" "$PKI/node-3.key" --now "$now"
start_fake E --socket "$TMP/e.sock" --tls "$PKI/ca.pem" "$PKI/node-3.pem" "$PKI/node-3.key" \
    --now "$n3_begin"
start_fake O --socket "$TMP/o.sock" --old
expect "status cluster tls" 0 "" \
    "cluster tls: node:3, certificate expires in 9 days (renew soon), CA in $ca_days days" \
    -- -s "$TMP/d.sock" status
expect "status cluster tls, 10 days" 0 "" \
    "cluster tls: node:3, certificate expires in 10 days (renew soon), CA in $ca_days days" \
    -- -s "$TMP/e.sock" status
"$HAMRCTL" -s "$TMP/d.sock" --json status >"$TMP/json" 2>"$TMP/err"
if [ $? -eq 0 ] && $PY -c 'import json,sys; t=json.load(open(sys.argv[1]))["status"]["cluster_tls"]; w={"plaintext": False, "identity": "node:3", "cert_days_left": 9, "ca_days_left": int(sys.argv[4]), "cert_not_after": int(sys.argv[2]), "ca_not_after": int(sys.argv[3]), "reloads": 0}; assert t==w, (t, w)' \
    "$TMP/json" "$n3_end" "$ca_end" "$ca_days"; then
    echo "ok   json status cluster tls"
else
    echo "FAIL json status cluster tls: $(cat "$TMP/json" "$TMP/err")"
    failures=$((failures + 1))
fi
# A node older than the field says nothing of it: no line, null in JSON.
if "$HAMRCTL" -s "$TMP/o.sock" status >"$TMP/out" 2>"$TMP/err" && grep -q '^draining:' "$TMP/out" &&
    ! grep -q 'cluster tls' "$TMP/out" &&
    "$HAMRCTL" -s "$TMP/o.sock" --json status >"$TMP/json" 2>>"$TMP/err" &&
    $PY -c 'import json,sys; assert json.load(open(sys.argv[1]))["status"].get("cluster_tls") is None' "$TMP/json"; then
    echo "ok   status of an older node"
else
    echo "FAIL status of an older node: $(cat "$TMP/out" "$TMP/json" "$TMP/err")"
    failures=$((failures + 1))
fi
stop_fakes

if [ $failures -ne 0 ]; then
    echo "$failures failure(s)"
    exit 1
fi
echo "all passed"
