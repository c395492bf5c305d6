#!/usr/bin/env bash
# check.sh - check every shipped deployment file: "hamrd --check-config" on each
# deploy/hamr.conf.example and deploy/examples/*/*.conf, "haproxy -c" on deploy/haproxy.cfg and
# "systemd-analyze verify" on deploy/hamrd@.service (each tool only when
# installed; a missing one is reported as skipped).
#
#   deploy/examples/check.sh HAMRD
#
# Exit status: 0 all checked files are good, 1 a file failed, 2 bad usage.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -x "$1" ]; then
    echo "usage: $0 HAMRD" >&2
    exit 2
fi
HAMRD=$1
DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rc=0
n=0

for f in "$DEPLOY"/hamr.conf.example "$DEPLOY"/examples/*/*.conf; do
    if out=$("$HAMRD" --check-config -c "$f" 2>&1); then
        n=$((n + 1))
    else
        echo "FAIL $f: $out" >&2
        rc=1
    fi
done
[ "$n" -gt 0 ] || [ "$rc" -ne 0 ] || { echo "FAIL no example configs found" >&2; exit 1; }
echo "check: $n example config(s) ok"

if [ -x /usr/sbin/haproxy ]; then
    if out=$(/usr/sbin/haproxy -c -f "$DEPLOY/haproxy.cfg" 2>&1); then
        echo "check: haproxy.cfg ok"
    else
        echo "FAIL $DEPLOY/haproxy.cfg: $out" >&2
        rc=1
    fi
else
    echo "check: haproxy not installed: haproxy.cfg skipped"
fi

if command -v systemd-analyze >/dev/null; then
    # Verified with the built hamrd in place of /usr/sbin/hamrd (not installed here);
    # any output is a complaint.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    sed "s#/usr/sbin/hamrd#$(realpath "$HAMRD")#g" "$DEPLOY/hamrd@.service" >"$tmp/hamrd@.service"
    out=$(cd "$tmp" && timeout 60 systemd-analyze verify "$tmp/hamrd@node1.service" 2>&1) || true
    if [ -z "$out" ]; then
        echo "check: hamrd@.service ok"
    else
        echo "FAIL $DEPLOY/hamrd@.service: $out" >&2
        rc=1
    fi
else
    echo "check: systemd-analyze not installed: hamrd@.service skipped"
fi
exit $rc
