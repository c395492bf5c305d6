/*
 * testlib_tls.h - two net/tls engines wired back to back, no sockets:
 * ciphertext moved between their BIOs a bounded number of rounds.
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_TLS_H
#define HAMR_TESTS_LIB_TESTLIB_TLS_H

#include "net/tls.h"

/* Handshake rounds at most. */
#define TESTLIB_TLS_ROUNDS 20

/* testlib_tls_pump - move the ciphertext from waits for to (fails the test if refused). */
void testlib_tls_pump(struct tls *from, struct tls *to);

/*
 * testlib_tls_handshake - both sides until both are done or one fails:
 * the client's last result, the server's in *srv_rc.
 */
int testlib_tls_handshake(struct tls *cli, struct tls *srv, int *srv_rc);

#endif
