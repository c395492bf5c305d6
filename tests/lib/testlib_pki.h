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

/* testlib_pki_cleanup - remove the directory and everything in it. */
void testlib_pki_cleanup(struct testlib_pki *p);

#endif
