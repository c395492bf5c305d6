/*
 * testlib_smtpc.h - the fixture of the outbound SMTP client tests: a fresh
 * loop with its bounded waits (testlib_loop), a scripted next hop on it
 * (testlib_nexthop) and an SMTP client pool (net/smtpc) started once the
 * test has adjusted the configuration. Freeing it closes the pool and the
 * next hop and fails the test if the loop still has a handle open.
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_SMTPC_H
#define HAMR_TESTS_LIB_TESTLIB_SMTPC_H

#include <stdbool.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "net/smtpc.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_nexthop.h"

#define TESTLIB_SMTPC_GUARD_MS 5000
#define TESTLIB_SMTPC_TURNS_MAX 100000

struct testlib_smtpc {
    uv_loop_t loop;
    struct testlib_loop run; /* the watchdog and the bounded waits */
    struct testlib_nexthop srv;
    struct smtpc_config cfg; /* the test may change it before testlib_smtpc_pool_start */
    struct smtpc_pool *pool;
    bool pool_closed;
};

/*
 * testlib_smtpc_new - the fixture, its next hop listening (ctx as in
 * testlib_nexthop_start, borrowed), cfg at short timeouts, no pool yet.
 */
struct testlib_smtpc *testlib_smtpc_new(SSL_CTX *ctx);

/* testlib_smtpc_pool_start - the pool on f->cfg. */
void testlib_smtpc_pool_start(struct testlib_smtpc *f);

/* testlib_smtpc_pool_closed_cb - smtpc_pool_close's callback: sets pool_closed (arg is f). */
void testlib_smtpc_pool_closed_cb(void *arg);

/* testlib_smtpc_free - close the pool and the next hop, run the loop dry, close it, free f. */
void testlib_smtpc_free(struct testlib_smtpc *f);

/* testlib_smtpc_teardown - cmocka's teardown: testlib_smtpc_free(*state). Returns 0. */
int testlib_smtpc_teardown(void **state);

#endif
