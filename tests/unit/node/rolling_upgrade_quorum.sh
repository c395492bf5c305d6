#!/bin/bash
# rolling_upgrade_quorum.sh - deploy/rolling-upgrade.sh's first step against a
# fake hamrctl with canned "status --json" answers: it refuses to take a node
# down when the other healthy voters are not a majority (exit 1, saying that
# --force would), --force takes it down anyway with a warning, and a zone that
# holds a majority of the voters is warned about either way. The fake refuses
# "drain", so every run stops right after the first step.
set -u

SCRIPT=$(realpath "$(dirname "$0")/../../../deploy/rolling-upgrade.sh")
TMP=$(mktemp -d /tmp/hamr-test-rolling-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
failures=0

# The fake hamrctl: -s CONTROL ... status prints $TMP/CONTROL.json (exit 1 if
# there is none: the node is down); any other verb fails.
cat >"$TMP/hamrctl" <<'FAKE'
#!/bin/bash
control=$2
for a in "$@"; do last=$a; done
if [ "$last" = status ] && [ -f "$FAKE_DIR/$control.json" ]; then
    cat "$FAKE_DIR/$control.json"
    exit 0
fi
echo "hamrctl: $last refused by the fake" >&2
exit 1
FAKE
printf '#!/bin/sh\necho "hamrd 9.9.9"\n' >"$TMP/hamrd-new"
chmod +x "$TMP/hamrctl" "$TMP/hamrd-new"

MEMBERS='[{"id": 1, "role": "voter", "zone": "dc1"}, {"id": 2, "role": "voter", "zone": "dc1"},
          {"id": 3, "role": "voter", "zone": "dc2"}]'
# node ID STATE - write node ID's status (control 127.0.0.1:900ID).
node() {
    cat >"$TMP/127.0.0.1:900$1.json" <<JSON
{"status": {"id": $1, "state": "$2", "leader_id": 1, "term": 3, "commit_index": 10,
            "applied_index": 10, "draining": false, "members": $MEMBERS}}
JSON
}

# expect NAME WANT_RC WANT_STDERR... -- ARGS...: every WANT_STDERR is in stderr.
expect() {
    local name=$1 want_rc=$2
    shift 2
    local wants=()
    while [ "$1" != -- ]; do
        wants+=("$1")
        shift
    done
    shift
    FAKE_DIR=$TMP HAMRCTL=$TMP/hamrctl HAMR_CHECK_TIMEOUT=0 timeout 60 bash "$SCRIPT" "$@" \
        "$TMP/hamrd-new" n1=127.0.0.1:9001 n2=127.0.0.1:9002 n3=127.0.0.1:9003 \
        >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$? ok=1 w
    [ "$rc" -eq "$want_rc" ] || ok=0
    for w in "${wants[@]}"; do
        grep -qF -- "$w" "$TMP/err" "$TMP/out" || ok=0
    done
    if [ $ok -eq 1 ]; then
        echo "ok   $name"
    else
        echo "FAIL $name: rc=$rc (want $want_rc)"
        echo "  stdout: $(cat "$TMP/out")"
        echo "  stderr: $(cat "$TMP/err")"
        failures=$((failures + 1))
    fi
}

node 1 leader
node 3 follower
# Node 2 is down: without node 1 only node 3 of 3 voters is healthy.
expect "no quorum: refused" 1 "refusing to take n1 down: no quorum without n1" \
    "(--force takes it down anyway)" \
    "WARNING: zone 'dc1' holds 2 of the 3 voters ('dc1' 2, 'dc2' 1): losing that zone loses quorum" --
if grep -q "running:" "$TMP/out"; then
    echo "FAIL no quorum: a command ran"
    failures=$((failures + 1))
fi
expect "no quorum: --force" 1 "WARNING: taking n1 down without quorum (--force): no quorum without n1" \
    "hamrctl drain failed on n1" -- --force
node 2 follower
expect "quorum: zone warning" 1 "quorum check ok: leader n1, 3 voters, healthy without n1: n2, n3" \
    "WARNING: zone 'dc1' holds 2 of the 3 voters" "hamrctl drain failed on n1" --
MEMBERS='[{"id": 1, "role": "voter", "zone": "dc1"}, {"id": 2, "role": "voter", "zone": "dc2"},
          {"id": 3, "role": "voter"}]'
node 1 leader
node 2 follower
node 3 follower
expect "quorum: no zone warning" 1 "quorum check ok" "hamrctl drain failed on n1" --
if grep -q "WARNING" "$TMP/err"; then
    echo "FAIL no zone warning: $(cat "$TMP/err")"
    failures=$((failures + 1))
fi
expect "usage shows --force" 2 "usage: " "[--force]" -- --bogus-only
[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
