/*
 * testlib_pki.h - a cluster PKI for a test, in a fresh temporary directory,
 * made by deploy/make-pki.sh (so the tests run the script operators run).
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_PKI_H
#define HAMR_TESTS_LIB_TESTLIB_PKI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct testlib_pki {
    char dir[256];
};

/* testlib_pki_init - a new directory with a CA in it. false (logged) on failure. */
bool testlib_pki_init(struct testlib_pki *p);

/* testlib_pki_node - node-ID.pem/.key signed by p's CA, valid days (0: the script's default). */
bool testlib_pki_node(struct testlib_pki *p, uint64_t id, unsigned days);

/* testlib_pki_operator - operator-NAME.pem/.key signed by p's CA. */
bool testlib_pki_operator(struct testlib_pki *p, const char *name);

/* testlib_pki_path - "DIR/NAME" into out (NAME: "ca.pem", "node-2.key", ...); returns out. */
const char *testlib_pki_path(const struct testlib_pki *p, const char *name, char *out, size_t len);

/*
 * testlib_pki_time - notBefore (not_after false) or notAfter of the first
 * certificate in DIR/NAME, read with OpenSSL alone (a check on what hamr
 * reads); 0 (logged) if it cannot be read.
 */
time_t testlib_pki_time(const struct testlib_pki *p, const char *name, bool not_after);

/*
 * testlib_pki_operators - what the tests of an operators' listener use: p
 * with node 1 and operator NAME, other (another CA) with operator
 * "mallory", and both CAs in one file, both_ca (size len, in p's
 * directory), for a client of other's that trusts node 1. false (logged)
 * on failure.
 */
bool testlib_pki_operators(struct testlib_pki *p,
                           struct testlib_pki *other,
                           const char *name,
                           char *both_ca,
                           size_t len);

struct cluster_tls;

/* testlib_pki_load - a cluster_tls on these files (NULL on failure, logged). */
struct cluster_tls *testlib_pki_load(const char *ca, const char *cert, const char *key);

/* testlib_pki_cleanup - remove the directory and everything in it. */
void testlib_pki_cleanup(struct testlib_pki *p);

#endif
