/*
 * testlib_resolver.c - a fake smtpc_resolver answering a scripted route
 * (see testlib_resolver.h). Owns its timer and itself, freed in the timer's
 * close callback; exports testlib_resolver_*. Misuse fails the cmocka test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/common.h"
#include "net/smtpc.h"
#include "tests/lib/testlib_resolver.h"

/* testlib_resolver_timer_cb - answer the pending resolve with the script. */
static void testlib_resolver_timer_cb(uv_timer_t *t)
{
    struct testlib_resolver *fr = t->data;
    assert_true(fr->pending);
    fr->pending = false;
    fr->answers++;
    fr->cb(fr->cb_arg, &fr->route);
}

/* testlib_resolver_resolve - smtpc_resolver.resolve: record, answer from a zero timer. */
static int testlib_resolver_resolve(void *data,
                                    const char *nexthop,
                                    uint16_t port,
                                    const struct smtpc_resolve_opts *opts,
                                    smtpc_route_cb cb,
                                    void *cb_arg,
                                    void **handle)
{
    struct testlib_resolver *fr = data;
    assert_false(fr->pending);
    fr->calls++;
    hamr_strlcpy(fr->nexthop, nexthop, sizeof(fr->nexthop));
    fr->port = port;
    fr->opts = *opts;
    fr->cb = cb;
    fr->cb_arg = cb_arg;
    fr->pending = true;
    *handle = fr;
    if (!fr->hold)
        uv_timer_start(&fr->timer, testlib_resolver_timer_cb, 0, 0);
    return 0;
}

/* testlib_resolver_cancel - smtpc_resolver.cancel: the answer never comes. */
static void testlib_resolver_cancel(void *data, void *handle)
{
    struct testlib_resolver *fr = data;
    assert_ptr_equal(handle, fr);
    assert_true(fr->pending);
    fr->pending = false;
    fr->cancels++;
    uv_timer_stop(&fr->timer);
}

/* testlib_resolver_new - OK route (mx_secure), no target, nothing held. */
struct testlib_resolver *testlib_resolver_new(uv_loop_t *loop)
{
    struct testlib_resolver *fr = calloc(1, sizeof(*fr));
    assert_non_null(fr);
    fr->r = (struct smtpc_resolver){
        .data = fr, .resolve = testlib_resolver_resolve, .cancel = testlib_resolver_cancel};
    assert_int_equal(uv_timer_init(loop, &fr->timer), 0);
    fr->timer.data = fr;
    fr->route.status = SMTPC_OK;
    fr->route.targets = fr->t;
    fr->route.mx_secure = true;
    return fr;
}

/* testlib_resolver_add - append a target. */
void testlib_resolver_add(struct testlib_resolver *fr,
                          const char *host,
                          const char *ip,
                          uint16_t port)
{
    assert_true(fr->route.n < TESTLIB_RESOLVER_TARGETS_MAX);
    struct smtpc_target *t = &fr->t[fr->route.n++];
    hamr_strlcpy(t->host, host, sizeof(t->host));
    if (strchr(ip, ':') != NULL)
        assert_int_equal(uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&t->addr), 0);
    else
        assert_int_equal(uv_ip4_addr(ip, port, (struct sockaddr_in *)&t->addr), 0);
}

/* testlib_resolver_fail - a route without targets. */
void testlib_resolver_fail(struct testlib_resolver *fr,
                           enum smtpc_status st,
                           unsigned code,
                           const char *text)
{
    fr->route.status = st;
    fr->route.code = code;
    hamr_strlcpy(fr->route.text, text, sizeof(fr->route.text));
    fr->route.n = 0;
}

/* testlib_resolver_closed_cb - the timer is closed: free the resolver. */
static void testlib_resolver_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

/* testlib_resolver_close - close the timer; the loop frees fr. */
void testlib_resolver_close(struct testlib_resolver *fr)
{
    uv_close((uv_handle_t *)&fr->timer, testlib_resolver_closed_cb);
}
