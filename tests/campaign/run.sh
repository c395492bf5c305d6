#!/bin/sh
# run.sh - a seeded fault campaign over five hamr nodes in three zones (tests/campaign/README.md).
#
#   tests/campaign/run.sh [--minutes N] [--seed S] [--build DIR] [--rtt-min MS] [--rtt-max MS]
#                         [--faults KIND=WEIGHT,...] [--upgrade] [--keep]
#
# Prints the seed first: "run.sh --seed S" replays the same faults in the same order.
# Uses a Release build of hamrd, hamrctl and wan_delay in DIR (default
# build-campaign in the repository), configured and built there when missing.
# Needs root, ip and nft (network namespaces); exits 77 without them.
# --upgrade: every node starts on the hamrd of the previous release (PREVIOUS_RELEASE,
# built by previous.sh) and is upgraded to this build, one at a time, during the run.
# Exit status: 0 clean, 1 the checker found something (or the run failed), 77 skipped.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
minutes=5
seed=
build="$repo/build-campaign"
extra=
upgrade=

while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        --rtt-min|--rtt-max|--faults) extra="$extra $1 $2"; shift 2 ;;
        --keep) extra="$extra --keep"; shift ;;
        --upgrade) upgrade=1; shift ;;
        *) echo "usage: $0 [--minutes N] [--seed S] [--build DIR] [--rtt-min MS] [--rtt-max MS] [--faults KIND=WEIGHT,...] [--upgrade] [--keep]" >&2
           exit 2 ;;
    esac
done
[ -n "$seed" ] || seed=$(date +%s)
echo "campaign seed: $seed (replay: $0 --seed $seed --minutes $minutes$extra${upgrade:+ --upgrade})"

if [ "$(id -u)" -ne 0 ]; then
    echo "campaign: SKIP: needs root (network namespaces, nftables)"
    exit 77
fi
for tool in ip nft; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "campaign: SKIP: $tool is not installed"
        exit 77
    fi
done

if [ ! -x "$build/hamrd" ] || [ ! -x "$build/hamrctl" ] || [ ! -x "$build/tests/wan_delay" ]; then
    echo "campaign: building hamrd, hamrctl and wan_delay (Release) in $build"
    cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j2 --target hamrd hamrctl wan_delay
fi
type=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
if [ "$type" != "Release" ]; then
    echo "campaign: warning: $build is a '$type' build, not Release" >&2
fi

if [ -n "$upgrade" ]; then
    previous=$("$here/previous.sh" | tail -n 1)
    extra="$extra --upgrade-from $previous"
fi

export HAMRD="$build/hamrd" HAMRCTL="$build/hamrctl" WAN_DELAY="$build/tests/wan_delay"
export HAMR_SINK="$repo/deploy/sink.py" PYTHONDONTWRITEBYTECODE=1
# shellcheck disable=SC2086
exec /usr/bin/python3 "$here/campaign.py" --minutes "$minutes" --seed "$seed" $extra
