#!/usr/bin/env bash
# previous.sh - build hamrd and hamrctl of an earlier revision, for the rolling
# upgrade from the previous release to this one.
#
#   tests/campaign/previous.sh [REV]
#
# REV (default: the revision named in tests/campaign/PREVIOUS_RELEASE) is
# exported with git archive into CACHE/REV-ID/src and built there (Release,
# no tests), unless CACHE/REV-ID/build/hamrd is already there. CACHE is
# $HAMR_PREVIOUS_CACHE, default build-previous/ in the repository. On
# success the last line of stdout is the directory that holds hamrd and
# hamrctl; the build's own output goes to CACHE/REV-ID/build.log.
#
# Exit status: 0, 2 for a revision git does not know (e.g. a shallow clone),
# 1 when the build fails (the log's tail is printed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${HAMR_PREVIOUS_CACHE:-$ROOT/build-previous}
JOBS=${HAMR_JOBS:-2}

rev=${1:-}
if [[ -z "$rev" ]]; then
    rev=$(sed -n 's/^revision[[:space:]]*=[[:space:]]*//p' "$ROOT/tests/campaign/PREVIOUS_RELEASE")
fi
if ! id=$(git -C "$ROOT" rev-parse --verify --quiet "$rev^{commit}"); then
    echo "previous.sh: revision $rev is not in this repository (a shallow clone?)" >&2
    exit 2
fi
dir=$CACHE/$id
if [[ -x "$dir/build/hamrd" && -x "$dir/build/hamrctl" ]]; then
    echo "$dir/build"
    exit 0
fi
rm -rf "$dir"
mkdir -p "$dir/src"
git -C "$ROOT" archive "$id" | tar -x -C "$dir/src"
echo "previous.sh: building ${id:0:12} in $dir (log: $dir/build.log)" >&2
if ! { cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DHAMR_TESTS=OFF &&
       cmake --build "$dir/build" -j "$JOBS" --target hamrd hamrctl; } >"$dir/build.log" 2>&1; then
    tail -20 "$dir/build.log" >&2
    echo "previous.sh: the build of ${id:0:12} failed" >&2
    exit 1
fi
echo "$dir/build"
