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
# HAMR_JOBS (build parallelism, default 2: the CI machine has 2 cores),
# HAMR_TEST_JOBS (ctest -j, default HAMR_JOBS: unit tests and the integration
# tests that are not cluster tests run side by side; a cluster test (RUN_SERIAL)
# always runs alone, and tests that share a fixed resource hold a RESOURCE_LOCK).
# The fuzzers run HAMR_JOBS at a time (tests/fuzz/run.sh, HAMR_FUZZ_JOBS).
# Exit status: non-zero if installing, configuring, building or any test fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_DIR=${HAMR_TEST_BUILD:-build-test}
JOBS=${HAMR_JOBS:-2}
TEST_JOBS=${HAMR_TEST_JOBS:-$JOBS}
# Every package is named here: apt-get runs with --no-install-recommends, so
# nothing may come in as a mere recommendation of another package.
# postfix gives /usr/sbin/smtp-sink and smtp-source, and the private receiving Postfix
# instances of tests/integration/postfixlab.py (own config and queue under the test's
# temporary directory); the system's Postfix service stays unconfigured.
# nftables (and iproute2's ip netns) cut nodes apart in the cluster partition tests;
# haproxy is the load balancer of the balancer and rolling-upgrade tests; swaks's
# --tls needs libnet-ssleay-perl and its SASL mechanisms beyond PLAIN, LOGIN and
# CRAM-MD5 libauthen-sasl-perl (swaks only recommends both); the openssl command makes
# the test certificates; e2fsprogs, util-linux and mount make the small loop
# disks of the disk-full tests; curl is the README's way to scrape /metrics over TLS;
# nsd serves the zones of the MX routing tests (its service stays unstarted); the DANE test
# signs a zone with ldnsutils (ldns-keygen, ldns-signzone) and validates it with unbound.
# The DKIM test verifies every signed message twice: python3-dkim (python3-nacl, which it
# depends on, does Ed25519) and opendkim-tools' opendkim-testmsg.
# libfaketime (and its faketime command) steps one node's wall clock in the clock tests.
# python3-matplotlib draws a fault campaign's run (tests/campaign/plot.py, the README's
# "Fault campaign"; the campaign itself needs nothing more than the cluster tests).
PACKAGES=(cmake gcc libc6-dev make pkg-config libraft-dev liblz4-dev libuv1-dev libprotobuf-c-dev
          protobuf-c-compiler libssl-dev libcmocka-dev libinih-dev libc-ares-dev python3
          python3-aiosmtpd swaks libnet-ssleay-perl libauthen-sasl-perl openssl curl
          postfix nftables iproute2 haproxy sslscan e2fsprogs util-linux mount nsd unbound
          ldnsutils python3-dkim python3-nacl opendkim-tools faketime
          libfaketime python3-matplotlib)

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

# run_sh_need WHAT PACKAGE CMD... - run CMD quietly; if it fails, record
# "WHAT (PACKAGE)" as missing.
run_sh_need() {
    local what=$1 pkg=$2
    shift 2
    if ! "$@" >/dev/null 2>&1; then
        RUN_SH_UNABLE+=("$what (Debian package $pkg)")
    fi
}

# run_sh_swaks_has FEATURE - true if "swaks --support" lists FEATURE as supported.
# (Read whole first: grep -q stopping early would break swaks's pipe under pipefail.)
run_sh_swaks_has() {
    local support
    support=$(swaks --support 2>&1) || true
    grep -qx "=== $1 supported" <<<"$support"
}

# run_sh_check_tools - check that every outside tool the tests drive can do
# what they ask of it, before any test runs; stop naming what is missing.
run_sh_check_tools() {
    RUN_SH_UNABLE=()
    run_sh_need "swaks" swaks command -v swaks
    run_sh_need "swaks --tls" libnet-ssleay-perl run_sh_swaks_has "TLS"
    run_sh_need "swaks --auth PLAIN" swaks run_sh_swaks_has "Basic AUTH"
    run_sh_need "swaks --auth DIGEST-MD5" libauthen-sasl-perl run_sh_swaks_has "AUTH DIGEST-MD5"
    run_sh_need "openssl req and s_client" openssl openssl version
    run_sh_need "sslscan --starttls-smtp" sslscan sh -c 'sslscan --help 2>&1 | grep -q -- --starttls-smtp'
    run_sh_need "smtp-sink and smtp-source" postfix test -x /usr/sbin/smtp-sink -a -x /usr/sbin/smtp-source
    run_sh_need "a private Postfix (master, smtpd, virtual)" postfix sh -c 'd=$(/usr/sbin/postconf -dh daemon_directory) && test -x "$d/master" -a -x "$d/smtpd" -a -x "$d/virtual" && getent passwd postfix >/dev/null && getent group postdrop >/dev/null'
    run_sh_need "haproxy" haproxy /usr/sbin/haproxy -v
    run_sh_need "nft" nftables sh -c 'command -v nft || test -x /usr/sbin/nft'
    run_sh_need "ip netns" iproute2 ip netns list
    run_sh_need "mkfs.ext4" e2fsprogs sh -c 'command -v mkfs.ext4 || test -x /usr/sbin/mkfs.ext4 || test -x /sbin/mkfs.ext4'
    run_sh_need "fallocate" util-linux sh -c 'command -v fallocate'
    run_sh_need "mount" mount sh -c 'command -v mount'
    run_sh_need "libfaketime (libfaketimeMT.so.1)" libfaketime sh -c 'ls /usr/lib/*/faketime/libfaketimeMT.so.1'
    run_sh_need "python3 aiosmtpd" python3-aiosmtpd /usr/bin/python3 -c 'import aiosmtpd.controller'
    if [ "${#RUN_SH_UNABLE[@]}" -gt 0 ]; then
        echo "run.sh: the tests need tools that are missing or lack a part:" >&2
        printf '  %s\n' "${RUN_SH_UNABLE[@]}" >&2
        echo "run.sh: install them (apt-get install --no-install-recommends PACKAGE) and run again" >&2
        return 1
    fi
    echo "run.sh: every tool the tests drive is present"
}

run_sh_install
run_sh_check_tools

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

cmake -S . -B "$BUILD_DIR" -DHAMR_SANITIZE=ON -DHAMR_TESTS=ON
cmake --build "$BUILD_DIR" -j"$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$TEST_JOBS" "$@"

# Every parser of untrusted input under libFuzzer (clang) for a bounded time,
# from the committed seed corpora; any crash fails the run.
if [ "$#" -eq 0 ]; then
    tests/fuzz/run.sh "${HAMR_FUZZ_SECONDS:-20}"
fi
