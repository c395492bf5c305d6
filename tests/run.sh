#!/usr/bin/env bash
# run.sh - the one command that runs every hamr test, locally and in CI.
#
# On a fresh Debian 12 (as root) it installs the build and test packages,
# then configures build-test/ with ASan+UBSan, builds with -j2 and runs the
# whole ctest suite (labels "unit" and "integration"). Packages are installed
# only when dpkg-query says one is missing, so a second run goes straight to
# the build. Extra arguments go to ctest (e.g. tests/run.sh -L unit).
#
# Environment: HAMR_TEST_BUILD (build directory, default build-test),
# HAMR_JOBS (build parallelism, default 2: the CI machine has 2 cores).
# Exit status: non-zero if installing, configuring, building or any test fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_DIR=${HAMR_TEST_BUILD:-build-test}
JOBS=${HAMR_JOBS:-2}
# postfix is only for /usr/sbin/smtp-sink and smtp-source; its service stays unconfigured.
# nftables (and iproute2's ip netns) cut nodes apart in the cluster partition tests;
# haproxy is the load balancer of the balancer and rolling-upgrade tests.
PACKAGES=(cmake gcc libc6-dev make pkg-config libraft-dev liblz4-dev libuv1-dev libprotobuf-c-dev
          protobuf-c-compiler libssl-dev libcmocka-dev libinih-dev python3 python3-aiosmtpd
          swaks postfix nftables iproute2 haproxy sslscan)

# run_sh_missing_packages - print the packages of PACKAGES that are not installed.
run_sh_missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            echo "$p"
        fi
    done
}

# run_sh_install - apt-get install what is missing (needs root).
run_sh_install() {
    local missing
    mapfile -t missing < <(run_sh_missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "run.sh: all packages present"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "run.sh: missing packages (${missing[*]}) and not root: install them first" >&2
        return 1
    fi
    echo "run.sh: installing ${missing[*]}"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

run_sh_install

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

cmake -S . -B "$BUILD_DIR" -DHAMR_SANITIZE=ON -DHAMR_TESTS=ON
cmake --build "$BUILD_DIR" -j"$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure "$@"

# Every parser of untrusted input under libFuzzer (clang) for a bounded time,
# from the committed seed corpora; any crash fails the run.
if [ "$#" -eq 0 ]; then
    tests/fuzz/run.sh "${HAMR_FUZZ_SECONDS:-20}"
fi
