#!/usr/bin/env bash
# run.sh - build hamr's libFuzzer targets and run each for a while.
#
# Usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
#   SECONDS  run time per target (default 20), passed as -max_total_time
#   TARGET   run only these (smtpd_reader smtpd_session smtpd_proxy smtpd_auth
#            smtpc_reply smtpc_body dns_parse mta_sts dkim queue_apply queue_restore
#            config consensus_wire); default: all
#
# On a fresh Debian 12 (as root) it installs clang 14, its libFuzzer runtime
# and the build dependencies when dpkg-query says one is missing. It then
# configures tests/fuzz as its own CMake project in build-fuzz/ with clang
# (the main build uses gcc) and builds every target with -j2.
#
# Each target runs on a fresh copy of its committed seeds (tests/fuzz/corpus/
# NAME), so the committed corpus never grows; new inputs are kept in
# build-fuzz/work/NAME until the next run. Reproducers of crashes, leaks,
# timeouts and out-of-memory go to build-fuzz/artifacts/NAME/. hamr's own
# log lines are discarded (-close_fd_mask=2); libFuzzer's and the
# sanitizers' reports are kept, one log per target in build-fuzz/logs/.
#
# Environment: HAMR_FUZZ_BUILD (build directory, default build-fuzz),
# HAMR_JOBS (build parallelism, default 2), HAMR_FUZZ_JOBS (targets run at
# once, default HAMR_JOBS; each target still runs SECONDS and gets a core of
# its own as long as this is at most the number of cores), HAMR_FUZZ_ARGS
# (extra libFuzzer flags, e.g. "-max_len=65536").
# Exit status: non-zero if installing or building fails or any target
# crashed; each failure prints its reproducer and how to re-run it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SECONDS_PER_TARGET=${1:-20}
shift || true
ALL_TARGETS=(smtpd_reader smtpd_session smtpd_proxy smtpd_auth smtpc_reply smtpc_body
             dns_parse mta_sts dkim queue_apply queue_restore config consensus_wire)
if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
BUILD_DIR=${HAMR_FUZZ_BUILD:-build-fuzz}
JOBS=${HAMR_JOBS:-2}
PACKAGES=(clang libclang-rt-14-dev cmake make pkg-config libc6-dev libuv1-dev libprotobuf-c-dev
          protobuf-c-compiler libssl-dev libinih-dev libraft-dev liblz4-dev)

case "$SECONDS_PER_TARGET" in
    '' | *[!0-9]*)
        echo "usage: $0 [SECONDS] [TARGET...]" >&2
        exit 2
        ;;
esac

# fuzz_missing_packages - print the packages of PACKAGES that are not installed.
fuzz_missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            echo "$p"
        fi
    done
}

# fuzz_install - apt-get install what is missing (needs root).
fuzz_install() {
    local missing
    mapfile -t missing < <(fuzz_missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "fuzz/run.sh: missing packages (${missing[*]}) and not root: install them first" >&2
        return 1
    fi
    echo "fuzz/run.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# fuzz_build - configure with clang and build every target.
fuzz_build() {
    local cc
    cc=$(command -v clang || command -v clang-14)
    cmake -S tests/fuzz -B "$BUILD_DIR" -DCMAKE_C_COMPILER="$cc" >/dev/null
    cmake --build "$BUILD_DIR" -j"$JOBS" --target fuzzers
}

# fuzz_run_one NAME - run one target on a copy of its seeds; 0 if nothing was found.
fuzz_run_one() {
    local name=$1
    local bin="$BUILD_DIR/fuzz_$name"
    local seeds="tests/fuzz/corpus/$name"
    local work="$BUILD_DIR/work/$name"
    local artifacts="$BUILD_DIR/artifacts/$name"
    local log="$BUILD_DIR/logs/$name.log"
    if [ ! -x "$bin" ]; then
        echo "fuzz/run.sh: no target $name" >&2
        return 1
    fi
    rm -rf "$work"
    mkdir -p "$work" "$artifacts" "$(dirname "$log")"
    if [ -d "$seeds" ]; then
        cp -r "$seeds/." "$work/"
    fi
    local rc=0
    # shellcheck disable=SC2086 # HAMR_FUZZ_ARGS is a list of flags
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$bin" "$work" \
        -max_total_time="$SECONDS_PER_TARGET" \
        -rss_limit_mb=2048 \
        -timeout=10 \
        -close_fd_mask=2 \
        -print_final_stats=1 \
        -artifact_prefix="$artifacts/" \
        ${HAMR_FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    local stats
    stats=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)' "$log" | tail -1 || true)
    local execs
    execs=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)
    printf '%-15s %s exec/s(avg)=%s\n' "$name" "${stats:-(no stats)}" "${execs:-?}"
    if [ "$rc" -ne 0 ]; then
        local repro
        repro=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //' || true)
        echo "fuzz/run.sh: $name FAILED (exit $rc); log: $log" >&2
        grep -E 'ERROR: |SUMMARY: |property failed|assertion failed' "$log" | head -5 >&2 || true
        if [ -n "$repro" ]; then
            echo "fuzz/run.sh: reproducer: $repro" >&2
            echo "fuzz/run.sh: re-run with: $bin $repro" >&2
        fi
        return 1
    fi
    return 0
}

fuzz_install
fuzz_build

# Targets run FUZZ_JOBS at a time (each is one process on one core, so on the
# 2-core CI machine two at a time give each the same SECONDS_PER_TARGET of a
# whole core as one at a time did, in half the wall time). Each target's
# summary goes to a file and is printed in the order of TARGETS once it ends.
FUZZ_JOBS=${HAMR_FUZZ_JOBS:-$JOBS}
case "$FUZZ_JOBS" in
    '' | *[!0-9]* | 0)
        echo "fuzz/run.sh: HAMR_FUZZ_JOBS must be a number > 0: $FUZZ_JOBS" >&2
        exit 2
        ;;
esac
mkdir -p "$BUILD_DIR/logs"
summaries=$(mktemp -d)
trap 'rm -rf "$summaries"' EXIT
pids=()
for t in "${TARGETS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$FUZZ_JOBS" ]; do
        wait -n || true
    done
    fuzz_run_one "$t" >"$summaries/$t.out" 2>"$summaries/$t.err" &
    pids+=("$!")
done
failed=()
for i in "${!TARGETS[@]}"; do
    t=${TARGETS[$i]}
    rc=0
    wait "${pids[$i]}" || rc=$?
    cat "$summaries/$t.out"
    cat "$summaries/$t.err" >&2
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz/run.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz/run.sh: all ${#TARGETS[@]} targets ran ${SECONDS_PER_TARGET}s each without a finding"
