/*
 * testlib_loop.c - bounded runs of a test's libuv loop under a guard timer
 * (see testlib_loop.h). Owns the guard timer of each struct testlib_loop;
 * exports testlib_loop_*. A wait that runs out fails the cmocka test; the
 * functions return nothing to check.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>

#include <uv.h>

#include "tests/lib/testlib_loop.h"

/* testlib_loop_guard_cb - the test took too long: every wait stops. */
static void testlib_loop_guard_cb(uv_timer_t *t)
{
    struct testlib_loop *w = t->data;
    w->expired = true;
}

/* testlib_loop_init - the guard timer on loop, not started. */
void testlib_loop_init(struct testlib_loop *w, uv_loop_t *loop, uint64_t guard_ms, int max_turns)
{
    w->loop = loop;
    w->guard_ms = guard_ms;
    w->max_turns = max_turns;
    w->expired = false;
    assert_int_equal(uv_timer_init(loop, &w->guard), 0);
    w->guard.data = w;
}

/* testlib_loop_start - init, with the guard running from now. */
void testlib_loop_start(struct testlib_loop *w, uv_loop_t *loop, uint64_t guard_ms, int max_turns)
{
    testlib_loop_init(w, loop, guard_ms, max_turns);
    testlib_loop_arm(w);
}

/* testlib_loop_arm - the guard fires guard_ms from now. */
void testlib_loop_arm(struct testlib_loop *w)
{
    w->expired = false;
    assert_int_equal(uv_timer_start(&w->guard, testlib_loop_guard_cb, w->guard_ms, 0), 0);
}

/* testlib_loop_disarm - the guard stops. */
void testlib_loop_disarm(struct testlib_loop *w)
{
    uv_timer_stop(&w->guard);
}

/* testlib_loop_close - stop the guard and close its handle (no close callback needed). */
void testlib_loop_close(struct testlib_loop *w)
{
    uv_timer_stop(&w->guard);
    if (!uv_is_closing((uv_handle_t *)&w->guard))
        uv_close((uv_handle_t *)&w->guard, NULL);
}

/* testlib_loop_turn - one turn unless a bound was reached. */
bool testlib_loop_turn(struct testlib_loop *w, int *turns)
{
    if (w->expired || *turns >= w->max_turns)
        return false;
    (*turns)++;
    uv_run(w->loop, UV_RUN_ONCE);
    return true;
}

/* testlib_loop_until_flag - turn until *flag or a bound. */
bool testlib_loop_until_flag(struct testlib_loop *w, const bool *flag)
{
    int turns = 0;
    while (!*flag && testlib_loop_turn(w, &turns))
        ;
    return *flag;
}

/* testlib_flag_cb - sets *(bool *)arg. */
void testlib_flag_cb(void *arg)
{
    *(bool *)arg = true;
}

/* testlib_loop_walk_cb - name a handle left open. */
static void testlib_loop_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    fprintf(stderr, "open handle: %s closing=%d\n", uv_handle_type_name(h->type), uv_is_closing(h));
}

/* testlib_loop_finish - run the loop dry and close it; name what stayed open. */
int testlib_loop_finish(uv_loop_t *loop)
{
    for (int i = 0; i < 100 && uv_loop_alive(loop); i++)
        uv_run(loop, UV_RUN_NOWAIT);
    int rv = uv_loop_close(loop);
    if (rv != 0)
        uv_walk(loop, testlib_loop_walk_cb, NULL);
    return rv;
}

/* testlib_loop_fail_expired - the guard fired while the test waited for what. */
void testlib_loop_fail_expired(const struct testlib_loop *w, const char *what)
{
    if (w->expired)
        fail_msg("guard fired waiting for %s", what);
}
