/*
 * testlib_smtpc.c - the fixture of the outbound SMTP client tests (see
 * testlib_smtpc.h). Owns the loop, the guard, the next hop and the pool of
 * each fixture; exports testlib_smtpc_*. Failures fail the cmocka test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "util/common.h"
#include "util/log.h"
#include "net/smtpc.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_nexthop.h"
#include "tests/lib/testlib_smtpc.h"

/* testlib_smtpc_new - loop, guard, next hop and configuration. */
struct testlib_smtpc *testlib_smtpc_new(SSL_CTX *ctx)
{
    struct testlib_smtpc *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    log_set_level(LOG_LEVEL_WARN);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    testlib_loop_start(&f->run, &f->loop, TESTLIB_SMTPC_GUARD_MS, TESTLIB_SMTPC_TURNS_MAX);
    testlib_nexthop_start(&f->srv, &f->loop, ctx);
    hamr_strlcpy(f->cfg.helo_name, "client.test", sizeof(f->cfg.helo_name));
    f->cfg.connect_timeout_ms = 2000;
    f->cfg.command_timeout_ms = 2000;
    f->cfg.data_done_timeout_ms = 2000;
    f->cfg.idle_timeout_ms = 2000;
    return f;
}

/* testlib_smtpc_pool_start - the pool, after the test adjusted f->cfg. */
void testlib_smtpc_pool_start(struct testlib_smtpc *f)
{
    f->pool = smtpc_pool_new(&f->loop, &f->cfg);
    assert_non_null(f->pool);
}

/* testlib_smtpc_pool_closed_cb - the pool finished closing. */
void testlib_smtpc_pool_closed_cb(void *arg)
{
    struct testlib_smtpc *f = arg;
    f->pool_closed = true;
}

/* testlib_smtpc_free - close everything; no handle may be left on the loop. */
void testlib_smtpc_free(struct testlib_smtpc *f)
{
    if (f->pool != NULL && !f->pool_closed)
        smtpc_pool_close(f->pool, testlib_smtpc_pool_closed_cb, f);
    testlib_nexthop_stop(&f->srv);
    testlib_loop_close(&f->run);
    for (int i = 0; i < 1000 && uv_loop_alive(&f->loop); i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(f->pool == NULL || f->pool_closed);
    assert_null(f->srv.conns);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    testlib_nexthop_free(&f->srv);
    free(f);
}

/* testlib_smtpc_teardown - free the fixture setup left in *state. */
int testlib_smtpc_teardown(void **state)
{
    testlib_smtpc_free(*state);
    *state = NULL;
    return 0;
}
