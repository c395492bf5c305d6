/*
 * testlib_resolver.h - a fake smtpc_resolver for the outbound SMTP client
 * tests: it answers a scripted route from a zero timer on the test's loop
 * (never inside resolve), records what it was asked, holds its answer back
 * when told (for cancel) and counts answers and cancels. One resolve may be
 * outstanding at a time; a second fails the cmocka test.
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_RESOLVER_H
#define HAMR_TESTS_LIB_TESTLIB_RESOLVER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "net/smtpc.h"

#define TESTLIB_RESOLVER_TARGETS_MAX 4

struct testlib_resolver {
    struct smtpc_resolver r; /* what the pool's configuration points at */
    uv_timer_t timer;
    /*
     * The script: an OK route with no target until the test adds some, and
     * mx_secure (a validated MX answer) until the test clears it.
     */
    struct smtpc_route route; /* targets point at t */
    struct smtpc_target t[TESTLIB_RESOLVER_TARGETS_MAX];
    bool hold; /* never answer */
    /* What it saw. */
    bool pending; /* a resolve waits for its answer */
    smtpc_route_cb cb;
    void *cb_arg;
    int calls, answers, cancels;
    char nexthop[SMTPC_HOST_MAX + 1]; /* of the last resolve */
    uint16_t port;
    struct smtpc_resolve_opts opts; /* of the last resolve */
};

/* testlib_resolver_new - a resolver on loop (borrowed); freed by testlib_resolver_close. */
struct testlib_resolver *testlib_resolver_new(uv_loop_t *loop);

/* testlib_resolver_add - one more target of the route: host (copied), at ip:port. */
void testlib_resolver_add(struct testlib_resolver *fr,
                          const char *host,
                          const char *ip,
                          uint16_t port);

/* testlib_resolver_fail - the route decides every recipient: st, code and text (copied). */
void testlib_resolver_fail(struct testlib_resolver *fr,
                           enum smtpc_status st,
                           unsigned code,
                           const char *text);

/*
 * testlib_resolver_close - free fr once its timer has closed; a pool that
 * uses fr may still cancel until the loop runs again.
 */
void testlib_resolver_close(struct testlib_resolver *fr);

#endif
