/*
 * test_mx.c - net/mx, MX routing as an smtpc_resolver, on net/dns against
 * the fake DNS server of tests/lib/testlib_dns on 127.0.0.1, all on one
 * loop per test.
 *
 * Waits run the loop until a condition holds, bounded by testlib_loop's
 * guard; the only real-time waits are c-ares's timeout (200 ms here) and
 * the bounded turns after a cancel, where nothing must happen. A 5 ms tick
 * makes every UV_RUN_ONCE turn return (see test_dns.c). Teardown frees the
 * router, closes the resolver and the server, and fails if the loop still
 * has a handle.
 *
 * Covers: MX sorted by preference; equal preferences in both orders over
 * runs; hosts named twice kept once; the implicit MX (NODATA); the null
 * MX (PERM 5.1.10); NXDOMAIN (PERM 5.4.4) and SERVFAIL (TEMP 4.4.3) on
 * MX; an MX host without address skipped; no address at all, PERM or
 * TEMP by the hosts' lookups; the loop check by name (any case, at the
 * best preference: 5.4.6, no address lookup; behind a better host: that
 * host only) and by address (MX, "[name]", a literal); "[name]" without
 * MX lookup; literals, bare and bracketed, IPv4 and IPv6, with the port;
 * next hops refused (callback never run); address_limit and
 * address_preference; an address behind two hosts once; inet_protocols ipv4 (no AAAA asked) and
 * ipv6 (a v4 literal refused); an MX host behind a CNAME; cancel (in flight, during host lookups,
 * and a literal before its turn); mx_free calling back what is pending with TEMP "4.4.3 shutdown",
 * from inside it. DANE (opts->dane): TLSA asked only then, only under a
 * validated MX and validated host addresses; usable records kept (PKIX
 * usages left out); NODATA, insecure answers: no DANE; a TLSA SERVFAIL
 * leaves the host out (alone: TEMP 4.7.5); "[name]" by its addresses, a
 * literal never; an untrusted resolver (or trust_ad) decides. The route's
 * mx_secure: a validated MX answer or NODATA, "[name]" and literals, with
 * DANE or without; not an answer without AD, nor one of an untrusted
 * resolver.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/err.h"
#include "net/dns.h"
#include "net/mx.h"
#include "net/smtpc.h"
#include "tests/lib/testlib_dns.h"
#include "tests/lib/testlib_loop.h"

#define TEST_GUARD_MS 5000
#define TEST_TURNS 10000
#define TEST_PORT 2525
#define TEST_TARGETS_MAX 16

/* An empty answer with the zone's SOA: NODATA. */
#define TEST_NODATA .ns = {{TESTLIB_DNS_SOA, 300, "300"}}

/* The fake server's zone. Every question mx may ask has a row: an unlisted one gets REFUSED. */
static const struct testlib_dns_row test_zone[] = {
    /* Hosts. */
    {"a.host.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "192.0.2.1"}}},
    {"a.host.test", DNS_TYPE_AAAA, TEST_NODATA},
    {"b.host.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "192.0.2.2"}}},
    {"b.host.test", DNS_TYPE_AAAA, .an = {{DNS_TYPE_AAAA, 300, "2001:db8::2"}}},
    {"c.host.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "192.0.2.3"}}},
    {"c.host.test", DNS_TYPE_AAAA, TEST_NODATA},
    {"gone.host.test", DNS_TYPE_A, .rcode = 3, TEST_NODATA},
    {"gone.host.test", DNS_TYPE_AAAA, .rcode = 3, TEST_NODATA},
    {"fail.host.test", DNS_TYPE_A, .rcode = 2},
    {"fail.host.test", DNS_TYPE_AAAA, .rcode = 2},
    {"me.host.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "192.0.2.99"}}},
    {"me.host.test", DNS_TYPE_AAAA, TEST_NODATA},
    {"many.host.test", DNS_TYPE_A,
     .an = {{DNS_TYPE_A, 300, "192.0.2.11"},
            {DNS_TYPE_A, 300, "192.0.2.12"},
            {DNS_TYPE_A, 300, "192.0.2.13"},
            {DNS_TYPE_A, 300, "192.0.2.14"}}},
    {"many.host.test", DNS_TYPE_AAAA,
     .an = {{DNS_TYPE_AAAA, 300, "2001:db8::11"},
            {DNS_TYPE_AAAA, 300, "2001:db8::12"},
            {DNS_TYPE_AAAA, 300, "2001:db8::13"}}},
    {"alias.host.test", DNS_TYPE_A,
     .an = {{TESTLIB_DNS_CNAME, 300, "a.host.test"}, {DNS_TYPE_A, 300, "192.0.2.1"}}},
    {"alias.host.test", DNS_TYPE_AAAA, TEST_NODATA},
    {"silent.host.test", DNS_TYPE_A, .spoil = TESTLIB_DNS_SILENT},
    {"silent.host.test", DNS_TYPE_AAAA, .spoil = TESTLIB_DNS_SILENT},
    /* If a.host.test were asked for MX ("[a.host.test]" must not be), it would go to b. */
    {"a.host.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "10 b.host.test"}}},
    /* Domains. */
    {"order.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "20 b.host.test"},
            {DNS_TYPE_MX, 300, "10 a.host.test"},
            {DNS_TYPE_MX, 300, "30 c.host.test"}}},
    {"equal.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "10 a.host.test"}, {DNS_TYPE_MX, 300, "10 c.host.test"}}},
    {"dup.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "30 b.host.test"},
            {DNS_TYPE_MX, 300, "10 a.host.test"},
            {DNS_TYPE_MX, 300, "20 A.Host.Test"}}},
    {"implicit.test", DNS_TYPE_MX, TEST_NODATA},
    {"implicit.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "192.0.2.10"}}},
    {"implicit.test", DNS_TYPE_AAAA, TEST_NODATA},
    {"null.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "0 ."}}},
    {"nx.test", DNS_TYPE_MX, .rcode = 3, TEST_NODATA},
    {"fail.test", DNS_TYPE_MX, .rcode = 2},
    {"dead.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "10 gone.host.test"}, {DNS_TYPE_MX, 300, "20 b.host.test"}}},
    {"noaddr.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "10 gone.host.test"}}},
    {"tempaddr.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "10 fail.host.test"}, {DNS_TYPE_MX, 300, "20 gone.host.test"}}},
    {"loop.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "20 c.host.test"}, {DNS_TYPE_MX, 300, "10 RELAY.Self.Test"}}},
    {"better.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "20 b.host.test"},
            {DNS_TYPE_MX, 300, "10 relay.self.test"},
            {DNS_TYPE_MX, 300, "5 a.host.test"},
            {DNS_TYPE_MX, 300, "10 c.host.test"}}},
    {"selfaddr.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "10 me.host.test"}, {DNS_TYPE_MX, 300, "20 b.host.test"}}},
    {"selfaddr2.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "10 a.host.test"},
            {DNS_TYPE_MX, 300, "20 me.host.test"},
            {DNS_TYPE_MX, 300, "30 b.host.test"}}},
    {"many.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "10 many.host.test"}}},
    {"cname.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "10 alias.host.test"}}},
    {"shared.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "20 alias.host.test"}, {DNS_TYPE_MX, 300, "10 a.host.test"}}},
    {"slow.test", DNS_TYPE_MX, .spoil = TESTLIB_DNS_SILENT},
    {"slowhost.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "10 silent.host.test"}}},
    /* DANE: validated (ad) and insecure hosts, TLSA at port TEST_PORT. */
    {"d1.host.test", DNS_TYPE_A, .ad = true, .an = {{DNS_TYPE_A, 300, "192.0.2.41"}}},
    {"d1.host.test", DNS_TYPE_AAAA, .ad = true, TEST_NODATA},
    {"_2525._tcp.d1.host.test", DNS_TYPE_TLSA, .ad = true,
     .an = {{DNS_TYPE_TLSA, 300,
             "3 1 1 0101010101010101010101010101010101010101010101010101010101010101"},
            {DNS_TYPE_TLSA, 300,
             "1 1 1 0202020202020202020202020202020202020202020202020202020202020202"},
            {DNS_TYPE_TLSA, 300,
             "2 0 1 0202020202020202020202020202020202020202020202020202020202020202"}}},
    {"d2.host.test", DNS_TYPE_A, .ad = true, .an = {{DNS_TYPE_A, 300, "192.0.2.42"}}},
    {"d2.host.test", DNS_TYPE_AAAA, .ad = true, TEST_NODATA},
    {"_2525._tcp.d2.host.test", DNS_TYPE_TLSA, .ad = true, TEST_NODATA},
    {"d3.host.test", DNS_TYPE_A, .ad = true, .an = {{DNS_TYPE_A, 300, "192.0.2.43"}}},
    {"d3.host.test", DNS_TYPE_AAAA, .ad = true, TEST_NODATA},
    {"_2525._tcp.d3.host.test", DNS_TYPE_TLSA, .rcode = 2},
    {"d4.host.test", DNS_TYPE_A, .ad = true, .an = {{DNS_TYPE_A, 300, "192.0.2.44"}}},
    {"d4.host.test", DNS_TYPE_AAAA, .ad = true, TEST_NODATA},
    {"_2525._tcp.d4.host.test", DNS_TYPE_TLSA,
     .an = {{DNS_TYPE_TLSA, 300,
             "3 1 1 0101010101010101010101010101010101010101010101010101010101010101"}}},
    {"d5.host.test", DNS_TYPE_A, .ad = true, .an = {{DNS_TYPE_A, 300, "192.0.2.45"}}},
    {"d5.host.test", DNS_TYPE_AAAA, .ad = true, TEST_NODATA},
    {"_2525._tcp.d5.host.test", DNS_TYPE_TLSA, .ad = true,
     .an = {{DNS_TYPE_TLSA, 300,
             "1 1 1 0101010101010101010101010101010101010101010101010101010101010101"}}},
    {"i1.host.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "192.0.2.46"}}},
    {"i1.host.test", DNS_TYPE_AAAA, TEST_NODATA},
    {"_2525._tcp.i1.host.test", DNS_TYPE_TLSA, .ad = true,
     .an = {{DNS_TYPE_TLSA, 300,
             "3 1 1 0101010101010101010101010101010101010101010101010101010101010101"}}},
    {"dane.test", DNS_TYPE_MX, .ad = true,
     .an = {{DNS_TYPE_MX, 300, "10 d1.host.test"},
            {DNS_TYPE_MX, 300, "20 d2.host.test"},
            {DNS_TYPE_MX, 300, "30 i1.host.test"},
            {DNS_TYPE_MX, 300, "40 d4.host.test"},
            {DNS_TYPE_MX, 300, "50 d5.host.test"}}},
    {"insecure.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "10 d1.host.test"}}},
    {"tlsafail.test", DNS_TYPE_MX, .ad = true,
     .an = {{DNS_TYPE_MX, 300, "10 d3.host.test"}, {DNS_TYPE_MX, 300, "20 d2.host.test"}}},
    {"tlsafailall.test", DNS_TYPE_MX, .ad = true, .an = {{DNS_TYPE_MX, 300, "10 d3.host.test"}}},
    /* A validated NODATA: the implicit MX, secure. */
    {"implicitsec.test", DNS_TYPE_MX, .ad = true, TEST_NODATA},
    {"implicitsec.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "192.0.2.20"}}},
    {"implicitsec.test", DNS_TYPE_AAAA, TEST_NODATA},
};

/* The options of a resolve: no DANE (the default path), and DANE. */
static const struct smtpc_resolve_opts test_no_opts = {.dane = false};
static const struct smtpc_resolve_opts test_dane_opts = {.dane = true};

/* test_got - what one route callback received, copied out of the borrowed route. */
struct test_got {
    unsigned calls;
    struct smtpc_route route; /* route.targets is not valid after the call: use t */
    struct smtpc_target t[TEST_TARGETS_MAX];
};

struct fixture {
    uv_loop_t loop;
    struct testlib_loop w;
    uv_timer_t tick;
    uv_timer_t wait; /* a real-time bound for "nothing happens" */
    struct testlib_dns srv;
    struct dns *r;
    struct mx_config cfg;
    struct mx *m;
    bool closed;
};

/* test_got_cb - copy route into the struct test_got at arg. */
static void test_got_cb(void *arg, const struct smtpc_route *route)
{
    struct test_got *g = arg;
    g->calls++;
    g->route = *route;
    g->route.targets = NULL;
    assert_true(route->n <= TEST_TARGETS_MAX);
    assert_true(route->n == 0 || route->targets != NULL);
    for (size_t i = 0; i < route->n; i++)
        g->t[i] = route->targets[i];
}

/* test_tick_cb - nothing: the tick only ends each loop turn. */
static void test_tick_cb(uv_timer_t *t)
{
}

/* test_wait_cb - the bound of test_idle has passed. */
static void test_wait_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* test_idle - run the loop for ms of real time (bounded by the guard), e.g. past c-ares's timeout.
 */
static void test_idle(struct fixture *f, uint64_t ms)
{
    bool done = false;
    f->wait.data = &done;
    assert_int_equal(uv_timer_start(&f->wait, test_wait_cb, ms, 0), 0);
    TESTLIB_LOOP_WAIT(&f->w, done);
}

/* test_mx_new - a new router with f->cfg (the old one freed). */
static void test_mx_new(struct fixture *f)
{
    mx_free(f->m);
    f->m = NULL;
    assert_int_equal(mx_new(f->r, &f->cfg, &f->m), 0);
}

/* test_addr - text as a struct dns_addr. */
static struct dns_addr test_addr(const char *text)
{
    struct dns_addr a;
    memset(&a, 0, sizeof(a));
    a.family = strchr(text, ':') ? AF_INET6 : AF_INET;
    assert_int_equal(inet_pton(a.family, text, a.addr), 1);
    return a;
}

/*
 * setup - loop, guard, tick, fake server, a resolver with a 200 ms,
 * one-try timeout, and a router: this cluster is relay.self.test,
 * 192.0.2.99 and 2001:db8::99; IPv4 first, so that orders are fixed.
 */
static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct dns_config dcfg;
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    testlib_loop_init(&f->w, &f->loop, TEST_GUARD_MS, TEST_TURNS);
    assert_int_equal(uv_timer_init(&f->loop, &f->tick), 0);
    assert_int_equal(uv_timer_start(&f->tick, test_tick_cb, 5, 5), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->wait), 0);
    testlib_dns_start(&f->srv, &f->loop, test_zone, sizeof(test_zone) / sizeof(test_zone[0]));
    dns_config_default(&dcfg);
    snprintf(dcfg.servers, sizeof(dcfg.servers), "%s", f->srv.servers);
    dcfg.timeout_ms = 200;
    dcfg.tries = 1;
    assert_int_equal(dns_new(&f->loop, &dcfg, &f->r), 0);
    f->cfg.address_limit = 10;
    f->cfg.inet_protocols = MX_INET_ALL;
    f->cfg.address_preference = MX_PREF_IPV4;
    snprintf(f->cfg.self_names[0], sizeof(f->cfg.self_names[0]), "relay.self.test");
    snprintf(f->cfg.self_names[1], sizeof(f->cfg.self_names[1]), "Other.Self.Test.");
    f->cfg.n_self_names = 2;
    f->cfg.self_addrs[0] = test_addr("192.0.2.99");
    f->cfg.self_addrs[1] = test_addr("2001:db8::99");
    f->cfg.n_self_addrs = 2;
    test_mx_new(f);
    *state = f;
    return 0;
}

/* teardown - free the router, close the resolver; the loop must end with no handle. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    mx_free(f->m);
    dns_close(f->r, testlib_flag_cb, &f->closed);
    TESTLIB_LOOP_WAIT(&f->w, f->closed);
    testlib_dns_close(&f->srv);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_close((uv_handle_t *)&f->wait, NULL);
    testlib_loop_close(&f->w);
    assert_int_equal(testlib_loop_finish(&f->loop), 0);
    free(f);
    return 0;
}

/* test_route_opts - resolve nexthop with opts and wait for its one callback, into g. */
static void test_route_opts(struct fixture *f,
                            const char *nexthop,
                            const struct smtpc_resolve_opts *opts,
                            struct test_got *g)
{
    const struct smtpc_resolver *res = mx_resolver(f->m);
    void *handle = NULL;
    memset(g, 0, sizeof(*g));
    assert_int_equal(res->resolve(res->data, nexthop, TEST_PORT, opts, test_got_cb, g, &handle), 0);
    assert_non_null(handle);
    assert_int_equal(g->calls, 0); /* never from inside resolve */
    TESTLIB_LOOP_WAIT(&f->w, g->calls > 0);
    assert_int_equal(g->calls, 1);
}

/* test_route - resolve nexthop without DANE and wait for its one callback, into g. */
static void test_route(struct fixture *f, const char *nexthop, struct test_got *g)
{
    test_route_opts(f, nexthop, &test_no_opts, g);
}

/* test_want_target - target i of g is host at text (an IPv4 or IPv6 literal), TEST_PORT. */
static void test_want_target(const struct test_got *g, size_t i, const char *host, const char *text)
{
    struct dns_addr want = test_addr(text);
    const struct smtpc_target *t = &g->t[i];
    assert_true(i < g->route.n);
    assert_string_equal(t->host, host);
    assert_int_equal(t->addr.ss_family, want.family);
    if (want.family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&t->addr;
        assert_int_equal(ntohs(sin->sin_port), TEST_PORT);
        assert_memory_equal(&sin->sin_addr, want.addr, 4);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&t->addr;
        assert_int_equal(ntohs(sin6->sin6_port), TEST_PORT);
        assert_memory_equal(&sin6->sin6_addr, want.addr, 16);
    }
}

/* test_want_fail - g is status with code, its text starting with text; no target. */
static void test_want_fail(const struct test_got *g,
                           enum smtpc_status status,
                           unsigned code,
                           const char *text)
{
    assert_int_equal(g->route.status, status);
    assert_int_equal(g->route.code, code);
    assert_int_equal(g->route.n, 0);
    if (strncmp(g->route.text, text, strlen(text)) != 0)
        fail_msg("text \"%s\" does not start with \"%s\"", g->route.text, text);
}

/* mx_order - hosts by preference whatever the answer's order; each host's IPv4 first. */
static void mx_order(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "order.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 4);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
    test_want_target(&g, 1, "b.host.test", "192.0.2.2");
    test_want_target(&g, 2, "b.host.test", "2001:db8::2");
    test_want_target(&g, 3, "c.host.test", "192.0.2.3");

    /* Upper case and a trailing dot: the same domain (served from the cache now). */
    test_route(f, "ORDER.Test.", &g);
    assert_int_equal(g.route.n, 4);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
    assert_int_equal(testlib_dns_count(&f->srv, "order.test", DNS_TYPE_MX), 1);
}

/*
 * sts_patterns - MTA-STS enforce (opts->mx_patterns): MX hosts matching no
 * pattern are left out before their addresses are asked; none matching is
 * TEMP 4.7.5, and so is an implicit MX the patterns do not name; "[name]"
 * and literals ignore the patterns.
 */
static void sts_patterns(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    static const char *const only_b[] = {"b.host.test"};
    static const char *const wild[] = {"*.host.test"};
    static const char *const other[] = {"mx.elsewhere.test", "*.elsewhere.test"};
    struct smtpc_resolve_opts opts = {.mx_patterns = only_b, .n_mx_patterns = 1};

    test_route_opts(f, "order.test", &opts, &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 2);
    test_want_target(&g, 0, "b.host.test", "192.0.2.2");
    test_want_target(&g, 1, "b.host.test", "2001:db8::2");
    assert_int_equal(testlib_dns_count(&f->srv, "a.host.test", DNS_TYPE_A), 0);

    opts = (struct smtpc_resolve_opts){.mx_patterns = wild, .n_mx_patterns = 1};
    test_route_opts(f, "order.test", &opts, &g);
    assert_int_equal(g.route.n, 4);

    opts = (struct smtpc_resolve_opts){.mx_patterns = other, .n_mx_patterns = 2};
    test_route_opts(f, "order.test", &opts, &g);
    test_want_fail(&g, SMTPC_TEMP, 451, "4.7.5 MTA-STS: no MX host of order.test matches");
    test_route_opts(f, "implicit.test", &opts, &g);
    test_want_fail(&g, SMTPC_TEMP, 451, "4.7.5 MTA-STS: no MX host of implicit.test matches");

    test_route_opts(f, "[a.host.test]", &opts, &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
}

/* mx_equal_shuffled - equal preferences: both hosts every time, each of them first in some runs. */
static void mx_equal_shuffled(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    unsigned a_first = 0, c_first = 0;
    for (int i = 0; i < 40; i++) {
        test_route(f, "equal.test", &g);
        assert_int_equal(g.route.status, SMTPC_OK);
        assert_int_equal(g.route.n, 2);
        bool a0 = strcmp(g.t[0].host, "a.host.test") == 0;
        test_want_target(&g, a0 ? 0 : 1, "a.host.test", "192.0.2.1");
        test_want_target(&g, a0 ? 1 : 0, "c.host.test", "192.0.2.3");
        a_first += a0;
        c_first += !a0;
    }
    /* Either count 0 by chance: 2^-39. */
    assert_true(a_first > 0);
    assert_true(c_first > 0);
}

/* mx_duplicates - a host named twice (any case) is tried once, at its best preference. */
static void mx_duplicates(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "dup.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 3);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
    test_want_target(&g, 1, "b.host.test", "192.0.2.2");
    test_want_target(&g, 2, "b.host.test", "2001:db8::2");
    assert_int_equal(testlib_dns_count(&f->srv, "a.host.test", DNS_TYPE_A), 1);
}

/* mx_implicit - no MX (NODATA): the domain's own addresses, as its own host. */
static void mx_implicit(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "implicit.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "implicit.test", "192.0.2.10");
}

/* test_fail_case - one row of the failure table. */
struct test_fail_case {
    const char *label;
    const char *nexthop;
    enum smtpc_status status;
    unsigned code;
    const char *text; /* the start of the text */
};

/* mx_failures - the outcomes without a target, each with its code and enhanced status. */
static void mx_failures(void **state)
{
    static const struct test_fail_case cases[] = {
        {"null MX", "null.test", SMTPC_PERM, 556,
         "5.1.10 recipient domain null.test does not accept mail (null MX, RFC 7505)"},
        {"nxdomain", "nx.test", SMTPC_PERM, 550,
         "5.4.4 Host or domain name not found. Name service error for name=nx.test type=MX: "
         "Host not found"},
        {"servfail", "fail.test", SMTPC_TEMP, 451,
         "4.4.3 Host or domain name not found. Name service error for name=fail.test type=MX: "
         "Host not found, try again"},
        {"no host has an address", "noaddr.test", SMTPC_PERM, 550,
         "5.4.4 Host or domain name not found. Name service error for name=gone.host.test "
         "type=A: Host not found"},
        {"a host lookup failed for now", "tempaddr.test", SMTPC_TEMP, 451,
         "4.4.3 Host or domain name not found. Name service error for name=fail.host.test "
         "type=A: Host not found, try again"},
        {"a bracketed name that does not exist", "[gone.host.test]", SMTPC_PERM, 550,
         "5.4.4 Host or domain name not found"},
    };
    struct fixture *f = *state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct test_got g;
        print_message("case: %s\n", cases[i].label);
        test_route(f, cases[i].nexthop, &g);
        test_want_fail(&g, cases[i].status, cases[i].code, cases[i].text);
    }
}

/* mx_dead_host - the better MX host has no address: skipped, the next one used. */
static void mx_dead_host(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "dead.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 2);
    test_want_target(&g, 0, "b.host.test", "192.0.2.2");
    test_want_target(&g, 1, "b.host.test", "2001:db8::2");
    assert_int_equal(testlib_dns_count(&f->srv, "gone.host.test", DNS_TYPE_A), 1);
}

/* mx_loop_by_name - a self name (any case) at the best preference: 5.4.6, and no address asked. */
static void mx_loop_by_name(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "loop.test", &g);
    test_want_fail(&g, SMTPC_PERM, 550, "5.4.6 mail for loop.test loops back to myself");
    assert_int_equal(testlib_dns_count(&f->srv, "c.host.test", DNS_TYPE_A), 0);
    assert_int_equal(testlib_dns_count(&f->srv, "c.host.test", DNS_TYPE_AAAA), 0);
}

/* mx_loop_better_kept - hosts preferred over the self one are kept, the rest (equal too) dropped.
 */
static void mx_loop_better_kept(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "better.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
    /* c (10, as the self host) and b (20) were never looked up. */
    assert_int_equal(testlib_dns_count(&f->srv, "c.host.test", DNS_TYPE_A), 0);
    assert_int_equal(testlib_dns_count(&f->srv, "b.host.test", DNS_TYPE_A), 0);
}

/* mx_loop_by_address - an MX host whose address is ours is self: a loop, or the list cut there. */
static void mx_loop_by_address(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "selfaddr.test", &g);
    test_want_fail(&g, SMTPC_PERM, 550, "5.4.6 mail for selfaddr.test loops back to myself");

    test_route(f, "selfaddr2.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
}

/* bracketed_name - "[name]": its addresses, no MX lookup, and no loop check (as Postfix). */
static void bracketed_name(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "[a.host.test]", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
    assert_int_equal(testlib_dns_count(&f->srv, "a.host.test", DNS_TYPE_MX), 0);

    test_route(f, "[B.Host.Test.]", &g);
    assert_int_equal(g.route.n, 2);
    test_want_target(&g, 0, "b.host.test", "192.0.2.2");

    /* Our own address (a content filter on this host, say) is where the operator said to go. */
    test_route(f, "[me.host.test]", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    test_want_target(&g, 0, "me.host.test", "192.0.2.99");
}

/* test_literal_case - one row of the literal table. */
struct test_literal_case {
    const char *nexthop;
    const char *host;
    const char *addr;
};

/* literals - an address, bare or bracketed, is itself: no query; ours too (no loop check). */
static void literals(void **state)
{
    static const struct test_literal_case cases[] = {
        {"192.0.2.1", "192.0.2.1", "192.0.2.1"},
        {"[192.0.2.1]", "192.0.2.1", "192.0.2.1"},
        {"[2001:db8::1]", "2001:db8::1", "2001:db8::1"},
        {"::1", "::1", "::1"},
        {"[IPv6:2001:db8::5]", "2001:db8::5", "2001:db8::5"},
    };
    struct fixture *f = *state;
    struct test_got g;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("case: %s\n", cases[i].nexthop);
        test_route(f, cases[i].nexthop, &g);
        assert_int_equal(g.route.status, SMTPC_OK);
        assert_int_equal(g.route.n, 1);
        test_want_target(&g, 0, cases[i].host, cases[i].addr);
    }
    test_route(f, "[192.0.2.99]", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    test_want_target(&g, 0, "192.0.2.99", "192.0.2.99");
    assert_int_equal(f->srv.queries, 0);
}

/* bad_nexthops - refused by resolve: HAMR_EINVAL, and the callback never runs. */
static void bad_nexthops(void **state)
{
    static const char *const bad[] = {
        "",          "[]",         "[a.host.test", "a.host.test]", "a..test",
        "bad name!", "[IPv6:zzz]", "IPv6:::1",     "a.[b].test",   "[[a.host.test]]",
    };
    struct fixture *f = *state;
    const struct smtpc_resolver *res = mx_resolver(f->m);
    struct test_got g;
    memset(&g, 0, sizeof(g));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        void *handle = NULL;
        print_message("case: \"%s\"\n", bad[i]);
        assert_int_equal(
            res->resolve(res->data, bad[i], TEST_PORT, &test_no_opts, test_got_cb, &g, &handle),
            HAMR_EINVAL);
    }
    test_idle(f, 20);
    assert_int_equal(g.calls, 0);
    assert_int_equal(f->srv.queries, 0);
}

/* address_limit - targets cut at address_limit; address_preference picks which family goes first.
 */
static void address_limit(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    f->cfg.address_limit = 3;
    f->cfg.address_preference = MX_PREF_IPV6;
    test_mx_new(f);
    test_route(f, "many.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(g.t[i].addr.ss_family, AF_INET6);

    /* ANY: all seven, in some order; 0 is the default limit, 5. */
    f->cfg.address_limit = 0;
    f->cfg.address_preference = MX_PREF_ANY;
    test_mx_new(f);
    test_route(f, "many.test", &g);
    assert_int_equal(g.route.n, 5);
    f->cfg.address_limit = 10;
    test_mx_new(f);
    test_route(f, "many.test", &g);
    assert_int_equal(g.route.n, 7);
    unsigned v4 = 0, v6 = 0;
    for (size_t i = 0; i < g.route.n; i++) {
        assert_string_equal(g.t[i].host, "many.host.test");
        v4 += g.t[i].addr.ss_family == AF_INET;
        v6 += g.t[i].addr.ss_family == AF_INET6;
    }
    assert_int_equal(v4, 4);
    assert_int_equal(v6, 3);
}

/* inet_protocols - ipv4: no AAAA asked, only IPv4 targets; ipv6: an IPv4 literal refused. */
static void inet_protocols(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    f->cfg.inet_protocols = MX_INET_IPV4;
    test_mx_new(f);
    test_route(f, "order.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 3);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
    test_want_target(&g, 1, "b.host.test", "192.0.2.2");
    test_want_target(&g, 2, "c.host.test", "192.0.2.3");
    assert_int_equal(testlib_dns_count(&f->srv, "b.host.test", DNS_TYPE_AAAA), 0);
    assert_int_equal(testlib_dns_count(&f->srv, "a.host.test", DNS_TYPE_AAAA), 0);

    f->cfg.inet_protocols = MX_INET_IPV6;
    test_mx_new(f);
    test_route(f, "[192.0.2.1]", &g);
    test_want_fail(&g, SMTPC_PERM, 550, "5.4.4 ");
    test_route(f, "order.test", &g); /* only b has an AAAA */
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "b.host.test", "2001:db8::2");
}

/* cname_host - an MX host behind a CNAME: the target's address, under the MX host's name. */
static void cname_host(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "cname.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "alias.host.test", "192.0.2.1");
}

/* shared_address - an address behind two MX hosts is one target, under the better host. */
static void shared_address(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "shared.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "a.host.test", "192.0.2.1");
}

/* cancel - in flight, during the host lookups, and a literal before its turn: no callback, ever. */
static void cancel(void **state)
{
    struct fixture *f = *state;
    const struct smtpc_resolver *res = mx_resolver(f->m);
    struct test_got g[3];
    void *h[3] = {NULL, NULL, NULL};
    memset(g, 0, sizeof(g));
    assert_int_equal(
        res->resolve(res->data, "slow.test", TEST_PORT, &test_no_opts, test_got_cb, &g[0], &h[0]),
        0);
    assert_int_equal(res->resolve(res->data, "slowhost.test", TEST_PORT, &test_no_opts, test_got_cb,
                                  &g[1], &h[1]),
                     0);
    assert_int_equal(
        res->resolve(res->data, "192.0.2.1", TEST_PORT, &test_no_opts, test_got_cb, &g[2], &h[2]),
        0);
    res->cancel(res->data, h[2]);
    TESTLIB_LOOP_WAIT(&f->w, testlib_dns_count(&f->srv, "slow.test", DNS_TYPE_MX) > 0 &&
                                 testlib_dns_count(&f->srv, "silent.host.test", DNS_TYPE_A) > 0);
    res->cancel(res->data, h[0]);
    res->cancel(res->data, h[1]);
    test_idle(f, 400); /* past c-ares's 200 ms timeout */
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(g[i].calls, 0);
}

/* free_pending - mx_free calls back every pending route with TEMP 4.4.3, from inside, once. */
static void free_pending(void **state)
{
    struct fixture *f = *state;
    const struct smtpc_resolver *res = mx_resolver(f->m);
    struct test_got g[3];
    void *h[3] = {NULL, NULL, NULL};
    memset(g, 0, sizeof(g));
    assert_int_equal(
        res->resolve(res->data, "slow.test", TEST_PORT, &test_no_opts, test_got_cb, &g[0], &h[0]),
        0);
    assert_int_equal(res->resolve(res->data, "slowhost.test", TEST_PORT, &test_no_opts, test_got_cb,
                                  &g[1], &h[1]),
                     0);
    TESTLIB_LOOP_WAIT(&f->w, testlib_dns_count(&f->srv, "silent.host.test", DNS_TYPE_A) > 0);
    assert_int_equal(
        res->resolve(res->data, "192.0.2.1", TEST_PORT, &test_no_opts, test_got_cb, &g[2], &h[2]),
        0);
    mx_free(f->m);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(g[i].calls, 1);
        test_want_fail(&g[i], SMTPC_TEMP, 451, "4.4.3 shutdown");
    }
    /* Closing: resolve refused until m is gone (on the loop's next turn). */
    void *late = NULL;
    assert_int_equal(
        res->resolve(res->data, "a.host.test", TEST_PORT, &test_no_opts, test_got_cb, &g[0], &late),
        HAMR_ESHUTDOWN);
    f->m = NULL;
    test_idle(f, 400);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(g[i].calls, 1);
}

/* test_free_cb - a route callback that frees the router (f at arg) from inside. */
static void test_free_cb(void *arg, const struct smtpc_route *route)
{
    struct fixture *f = arg;
    assert_int_equal(route->status, SMTPC_OK);
    f->closed = true; /* borrowed as "called" until teardown */
    mx_free(f->m);
    f->m = NULL;
}

/* free_from_callback - mx_free in a callback: the route after it on the ready list is shut down. */
static void free_from_callback(void **state)
{
    struct fixture *f = *state;
    const struct smtpc_resolver *res = mx_resolver(f->m);
    struct test_got g;
    void *h[2] = {NULL, NULL};
    memset(&g, 0, sizeof(g));
    assert_int_equal(
        res->resolve(res->data, "192.0.2.1", TEST_PORT, &test_no_opts, test_free_cb, f, &h[0]), 0);
    assert_int_equal(
        res->resolve(res->data, "192.0.2.2", TEST_PORT, &test_no_opts, test_got_cb, &g, &h[1]), 0);
    TESTLIB_LOOP_WAIT(&f->w, f->closed);
    f->closed = false;
    assert_int_equal(g.calls, 1);
    test_want_fail(&g, SMTPC_TEMP, 451, "4.4.3 shutdown");
    test_idle(f, 20);
    assert_int_equal(g.calls, 1);
}

/* test_tlsa_count - TLSA queries for host at TEST_PORT. */
static unsigned test_tlsa_count(const struct fixture *f, const char *host)
{
    char name[300];
    snprintf(name, sizeof(name), "_%u._tcp.%s", (unsigned)TEST_PORT, host);
    return testlib_dns_count(&f->srv, name, DNS_TYPE_TLSA);
}

/*
 * dane_secure_mx - a validated MX: a host with validated TLSA records is
 * DANE-required with the usable ones (3 1 1 and 2 0 1; PKIX-EE 1 left
 * out); TLSA NODATA, an insecure host address (no TLSA query at all) and
 * insecure TLSA records are no DANE; only unusable records (PKIX) is DANE
 * with none (TLS mandatory, unauthenticated).
 */
static void dane_secure_mx(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route_opts(f, "dane.test", &test_dane_opts, &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 5);
    test_want_target(&g, 0, "d1.host.test", "192.0.2.41");
    assert_true(g.t[0].dane);
    assert_int_equal(g.t[0].n_tlsa, 2);
    assert_int_equal(g.t[0].tlsa[0].usage, 3);
    assert_int_equal(g.t[0].tlsa[0].selector, 1);
    assert_int_equal(g.t[0].tlsa[0].mtype, 1);
    assert_int_equal(g.t[0].tlsa[0].len, 32);
    assert_int_equal(g.t[0].tlsa[0].data[0], 0x01);
    assert_int_equal(g.t[0].tlsa[1].usage, 2);
    assert_int_equal(g.t[0].tlsa[1].selector, 0);
    assert_int_equal(g.t[0].tlsa[1].data[31], 0x02);
    test_want_target(&g, 1, "d2.host.test", "192.0.2.42");
    assert_false(g.t[1].dane); /* TLSA NODATA */
    test_want_target(&g, 2, "i1.host.test", "192.0.2.46");
    assert_false(g.t[2].dane); /* its address was not validated */
    assert_int_equal(test_tlsa_count(f, "i1.host.test"), 0);
    test_want_target(&g, 3, "d4.host.test", "192.0.2.44");
    assert_false(g.t[3].dane); /* TLSA records without AD */
    test_want_target(&g, 4, "d5.host.test", "192.0.2.45");
    assert_true(g.t[4].dane);
    assert_int_equal(g.t[4].n_tlsa, 0);
    assert_int_equal(test_tlsa_count(f, "d1.host.test"), 1);

    /* "[name]": DANE by the host's own validated addresses. */
    test_route_opts(f, "[d1.host.test]", &test_dane_opts, &g);
    assert_int_equal(g.route.n, 1);
    assert_true(g.t[0].dane);
    assert_int_equal(g.t[0].n_tlsa, 2);
    /* A literal: never. */
    test_route_opts(f, "[192.0.2.41]", &test_dane_opts, &g);
    assert_int_equal(g.route.n, 1);
    assert_false(g.t[0].dane);
}

/* dane_off - without opts->dane: no TLSA query, no target DANE (the default path). */
static void dane_off(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route(f, "dane.test", &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 5);
    for (size_t i = 0; i < g.route.n; i++)
        assert_false(g.t[i].dane);
    assert_int_equal(test_tlsa_count(f, "d1.host.test"), 0);
    assert_int_equal(test_tlsa_count(f, "d2.host.test"), 0);
}

/* dane_insecure_mx - an MX answer without AD: no DANE for any of its hosts, no TLSA query. */
static void dane_insecure_mx(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route_opts(f, "insecure.test", &test_dane_opts, &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "d1.host.test", "192.0.2.41");
    assert_false(g.t[0].dane);
    assert_int_equal(test_tlsa_count(f, "d1.host.test"), 0);
}

/*
 * dane_tlsa_servfail - a TLSA lookup that fails leaves its host out, never
 * a plaintext fallback; when it was the only host: TEMP 4.7.5, marked.
 */
static void dane_tlsa_servfail(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_route_opts(f, "tlsafail.test", &test_dane_opts, &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 1);
    test_want_target(&g, 0, "d2.host.test", "192.0.2.42");
    assert_false(g.t[0].dane);
    assert_true(test_tlsa_count(f, "d3.host.test") >= 1);

    test_route_opts(f, "tlsafailall.test", &test_dane_opts, &g);
    test_want_fail(&g, SMTPC_TEMP, 450, "4.7.5 TLSA lookup error for _2525._tcp.d3.host.test");
    assert_true(g.route.dane_unusable);
}

/*
 * dane_untrusted - a resolver that is not all on this host: AD not
 * trusted, so no TLSA query and no DANE; trust_ad says otherwise.
 */
static void dane_untrusted(void **state)
{
    struct fixture *f = *state;
    struct dns_config dcfg;
    struct test_got g;
    assert_true(dns_ad_trusted(f->r)); /* 127.0.0.1 */
    mx_free(f->m);
    f->m = NULL;
    dns_close(f->r, testlib_flag_cb, &f->closed);
    TESTLIB_LOOP_WAIT(&f->w, f->closed);
    f->closed = false;
    dns_config_default(&dcfg);
    /* The second server is never asked while the first answers (no rotation). */
    snprintf(dcfg.servers, sizeof(dcfg.servers), "%s,192.0.2.53:53", f->srv.servers);
    dcfg.timeout_ms = 200;
    dcfg.tries = 1;
    assert_int_equal(dns_new(&f->loop, &dcfg, &f->r), 0);
    assert_false(dns_ad_trusted(f->r));
    test_mx_new(f);
    test_route_opts(f, "dane.test", &test_dane_opts, &g);
    assert_int_equal(g.route.status, SMTPC_OK);
    assert_int_equal(g.route.n, 5);
    for (size_t i = 0; i < g.route.n; i++)
        assert_false(g.t[i].dane);
    assert_int_equal(test_tlsa_count(f, "d1.host.test"), 0);
    assert_false(g.route.mx_secure); /* its AD proves nothing either */
    test_route(f, "[d1.host.test]", &g);
    assert_true(g.route.mx_secure); /* no MX lookup */

    mx_free(f->m);
    f->m = NULL;
    dns_close(f->r, testlib_flag_cb, &f->closed);
    TESTLIB_LOOP_WAIT(&f->w, f->closed);
    f->closed = false;
    dcfg.trust_ad = true;
    assert_int_equal(dns_new(&f->loop, &dcfg, &f->r), 0);
    assert_true(dns_ad_trusted(f->r));
    test_mx_new(f);
    test_route_opts(f, "dane.test", &test_dane_opts, &g);
    assert_true(g.t[0].dane);
    assert_true(g.route.mx_secure);
}

/*
 * mx_secure - the route says whether its MX lookup was protected (RFC 8689
 * 4.2.1), DANE asked or not: a validated MX answer or NODATA from a
 * trusted resolver, "[name]" and literals (no MX lookup) are; answers
 * without AD are not.
 */
static void mx_secure(void **state)
{
    static const struct {
        const char *nexthop;
        bool secure;
    } cases[] = {
        {"dane.test", true},        /* MX with AD */
        {"implicitsec.test", true}, /* NODATA with AD: the implicit MX */
        {"insecure.test", false},   /* MX without AD */
        {"order.test", false},      /* likewise */
        {"implicit.test", false},   /* NODATA without AD */
        {"[a.host.test]", true},    /* named by the operator */
        {"[192.0.2.1]", true},      /* literals */
        {"192.0.2.1", true},        /* bare */
        {"[IPv6:2001:db8::1]", true},
    };
    struct fixture *f = *state;
    struct test_got g;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("case: %s\n", cases[i].nexthop);
        test_route(f, cases[i].nexthop, &g);
        assert_int_equal(g.route.status, SMTPC_OK);
        assert_int_equal(g.route.mx_secure, cases[i].secure);
        test_route_opts(f, cases[i].nexthop, &test_dane_opts, &g);
        assert_int_equal(g.route.status, SMTPC_OK);
        assert_int_equal(g.route.mx_secure, cases[i].secure);
    }
    test_route(f, "implicitsec.test", &g);
    test_want_target(&g, 0, "implicitsec.test", "192.0.2.20");
}

/* bad_config - counts and enums out of range refused. */
static void bad_config(void **state)
{
    struct fixture *f = *state;
    struct mx *m = NULL;
    struct mx_config cfg = f->cfg;
    cfg.n_self_names = MX_SELF_MAX + 1;
    assert_int_equal(mx_new(f->r, &cfg, &m), HAMR_EINVAL);
    assert_null(m);
    cfg = f->cfg;
    cfg.inet_protocols = (enum mx_inet)7;
    assert_int_equal(mx_new(f->r, &cfg, &m), HAMR_EINVAL);
    cfg = f->cfg;
    cfg.self_addrs[0].family = 0;
    assert_int_equal(mx_new(f->r, &cfg, &m), HAMR_EINVAL);
    mx_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(mx_order, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_equal_shuffled, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_duplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_implicit, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_dead_host, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_loop_by_name, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_loop_better_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_loop_by_address, setup, teardown),
        cmocka_unit_test_setup_teardown(bracketed_name, setup, teardown),
        cmocka_unit_test_setup_teardown(literals, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_nexthops, setup, teardown),
        cmocka_unit_test_setup_teardown(address_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(inet_protocols, setup, teardown),
        cmocka_unit_test_setup_teardown(cname_host, setup, teardown),
        cmocka_unit_test_setup_teardown(shared_address, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(free_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(free_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_config, setup, teardown),
        cmocka_unit_test_setup_teardown(dane_secure_mx, setup, teardown),
        cmocka_unit_test_setup_teardown(dane_off, setup, teardown),
        cmocka_unit_test_setup_teardown(dane_insecure_mx, setup, teardown),
        cmocka_unit_test_setup_teardown(dane_tlsa_servfail, setup, teardown),
        cmocka_unit_test_setup_teardown(dane_untrusted, setup, teardown),
        cmocka_unit_test_setup_teardown(sts_patterns, setup, teardown),
        cmocka_unit_test_setup_teardown(mx_secure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
