/*
 * test_dns.c - net/dns, the resolver, against the fake DNS server of
 * tests/lib/testlib_dns on 127.0.0.1, all on one loop per test.
 *
 * The cache's clock is the test's (dns_set_clock): TTLs are checked by
 * moving it, not by waiting. Waits run the loop until a condition holds,
 * bounded by testlib_loop's guard; the only real-time wait is c-ares's own
 * timeout (200 ms here). A 5 ms tick makes every UV_RUN_ONCE turn return:
 * libuv 1.44 runs due timers before it polls, so a cache hit called back
 * from the resolver's zero timer would otherwise leave the turn blocked in
 * poll until the guard. Teardown closes the resolver and the server and
 * fails if the loop still has a handle.
 *
 * Covers: each record type parsed (MX preferences and hosts, the null MX,
 * A and AAAA with TTLs, TXT strings joined, TLSA fields and data, records
 * behind a CNAME); the four status classes (NXDOMAIN, NODATA, SERVFAIL and
 * REFUSED as TEMPFAIL, a timeout); AD passed on and asked for (AD and EDNS0
 * in the query); the cache (the smallest TTL, a second query answered
 * without the server, an expired entry asked again, negative answers for
 * the SOA's TTL, TEMPFAIL never kept, the bounds in entries and bytes); identical queries
 * in flight sent once; cancel (in flight and after a cache hit) calls
 * nothing; close calls every waiting query back once as cancelled, then
 * nothing, also when a callback closes; servers c-ares cannot read are
 * refused; hostile names refused before any query; malformed answers (cut
 * short, lying counts, a compression loop, a bad MX host) as TEMPFAIL;
 * a truncated UDP answer (TC) asked again over TCP and its records all
 * kept, two such queries on one connection; an answer over 512 octets
 * taken over UDP thanks to EDNS0, and one over our EDNS0 size asked again
 * over TCP although TC was not set; a TCP answer that never comes (the
 * connection closed) or never ends (cut short) as TEMPFAIL in bounded time.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/err.h"
#include "net/dns.h"
#include "tests/lib/testlib_dns.h"
#include "tests/lib/testlib_loop.h"

#define TEST_GUARD_MS 5000
#define TEST_TURNS 10000
#define TEST_TLSA_SHA256 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

/*
 * Runs of AAAA records for the large answers: TEST_AAAA8(1) is 2001:db8::10
 * to 2001:db8::17. Each record is 28 octets (a 2-octet pointer as owner),
 * so 24 make a 698-octet message and 48 one of 1371.
 */
/* Kept by hand: clang-format 14 splits a macro that expands to a braced initializer. */
/* clang-format off */
#define TEST_AAAA(n) {DNS_TYPE_AAAA, 300, "2001:db8::" #n}
#define TEST_AAAA8(p) \
    TEST_AAAA(p##0), TEST_AAAA(p##1), TEST_AAAA(p##2), TEST_AAAA(p##3), \
    TEST_AAAA(p##4), TEST_AAAA(p##5), TEST_AAAA(p##6), TEST_AAAA(p##7)
/* clang-format on */
#define TEST_BIG_N 24
#define TEST_HUGE_N 48
/* c-ares's rule for a UDP answer without EDNS0 (RFC 1035 4.2.1), and our EDNS0 size (net/dns.c). */
#define TEST_UDP_PLAIN_MAX 512
#define TEST_EDNS_SIZE 1232

/* The fake server's zone: one row per question the tests ask. */
static const struct testlib_dns_row test_zone[] = {
    {"mx.test", DNS_TYPE_MX,
     .an = {{DNS_TYPE_MX, 300, "20 mx2.mx.test"},
            {DNS_TYPE_MX, 200, "10 mx1.mx.test"},
            {DNS_TYPE_MX, 400, "30 MX3.Mx.Test"}}},
    {"null.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "0 ."}}},
    {"a.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 60, "192.0.2.1"}, {DNS_TYPE_A, 90, "192.0.2.2"}}},
    {"a.test", DNS_TYPE_AAAA, .an = {{DNS_TYPE_AAAA, 120, "2001:db8::25"}}},
    {"txt.test", DNS_TYPE_TXT, .an = {{DNS_TYPE_TXT, 300, "v=spf1 |ip4:192.0.2.0/24| -all"}}},
    {"_25._tcp.mx1.mx.test", DNS_TYPE_TLSA, .ad = true,
     .an = {{DNS_TYPE_TLSA, 300, "3 1 1 " TEST_TLSA_SHA256}, {DNS_TYPE_TLSA, 300, "2 0 0 "}}},
    {"nx.test", DNS_TYPE_MX, .rcode = 3, .ns = {{TESTLIB_DNS_SOA, 3600, "300"}}},
    {"nodata.test", DNS_TYPE_MX, .ns = {{TESTLIB_DNS_SOA, 120, "900"}}},
    {"nosoa.test", DNS_TYPE_MX, .rcode = 3},
    {"fail.test", DNS_TYPE_A, .rcode = 2},
    {"refused.test", DNS_TYPE_A, .rcode = 5},
    {"silent.test", DNS_TYPE_A, .spoil = TESTLIB_DNS_SILENT},
    {"ad.test", DNS_TYPE_A, .ad = true, .an = {{DNS_TYPE_A, 300, "192.0.2.7"}}},
    {"cname.test", DNS_TYPE_A,
     .an = {{TESTLIB_DNS_CNAME, 30, "a.test"}, {DNS_TYPE_A, 300, "192.0.2.9"}}},
    {"cut.test", DNS_TYPE_MX, .spoil = TESTLIB_DNS_CUT,
     .an = {{DNS_TYPE_MX, 300, "10 mx.cut.test"}}},
    {"lying.test", DNS_TYPE_MX, .spoil = TESTLIB_DNS_LYING,
     .an = {{DNS_TYPE_MX, 300, "10 mx.lying.test"}}},
    {"loop.test", DNS_TYPE_MX, .spoil = TESTLIB_DNS_LOOP,
     .an = {{DNS_TYPE_MX, 300, "10 mx.loop.test"}}},
    {"badmx.test", DNS_TYPE_MX, .an = {{DNS_TYPE_MX, 300, "10 b@d.test"}}},
    {"other.test", DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "192.0.2.3"}}},
    {"tc.test", DNS_TYPE_MX, .spoil = TESTLIB_DNS_TC_UDP,
     .an = {{DNS_TYPE_MX, 300, "10 mx1.tc.test"},
            {DNS_TYPE_MX, 300, "20 mx2.tc.test"},
            {DNS_TYPE_MX, 250, "30 mx3.tc.test"},
            {DNS_TYPE_MX, 300, "40 mx4.tc.test"}}},
    {"tc.test", DNS_TYPE_A, .spoil = TESTLIB_DNS_TC_UDP,
     .an = {{DNS_TYPE_A, 300, "192.0.2.11"},
            {DNS_TYPE_A, 300, "192.0.2.12"},
            {DNS_TYPE_A, 300, "192.0.2.13"}}},
    {"tc.test", DNS_TYPE_AAAA, .spoil = TESTLIB_DNS_TC_UDP,
     .an = {{DNS_TYPE_AAAA, 300, "2001:db8::11"}, {DNS_TYPE_AAAA, 300, "2001:db8::12"}}},
    {"tcclose.test", DNS_TYPE_A, .spoil = TESTLIB_DNS_TC_TCP_CLOSE,
     .an = {{DNS_TYPE_A, 300, "192.0.2.21"}, {DNS_TYPE_A, 300, "192.0.2.22"}}},
    {"tccut.test", DNS_TYPE_A, .spoil = TESTLIB_DNS_TC_TCP_CUT,
     .an = {{DNS_TYPE_A, 300, "192.0.2.31"}, {DNS_TYPE_A, 300, "192.0.2.32"}}},
    {"big.test", DNS_TYPE_AAAA, .an = {TEST_AAAA8(1), TEST_AAAA8(2), TEST_AAAA8(3)}},
    {"huge.test", DNS_TYPE_AAAA,
     .an = {TEST_AAAA8(1), TEST_AAAA8(2), TEST_AAAA8(3), TEST_AAAA8(4), TEST_AAAA8(5),
            TEST_AAAA8(6)}},
};

/* test_got - what one callback received, copied out of the borrowed result. */
struct test_got {
    unsigned calls;
    struct dns_result res; /* res.u is not valid after the call: use the copies */
    struct dns_mx mx[4];
    struct dns_addr addr[TESTLIB_DNS_RRS_MAX];
    char txt[256];
    size_t txt_len;
    struct dns_tlsa tlsa[2];
    uint8_t tlsa_data[2][64];
    bool null_mx;
};

struct fixture {
    uv_loop_t loop;
    struct testlib_loop w;
    uv_timer_t tick;
    struct testlib_dns srv;
    struct dns_config cfg;
    struct dns *r;
    uint64_t now_ms;
    bool closed;
};

/* test_clock - the cache's clock: only the test moves it. */
static uint64_t test_clock(void *arg)
{
    return ((struct fixture *)arg)->now_ms;
}

/* test_got_cb - copy res into the struct test_got at arg. */
static void test_got_cb(void *arg, const struct dns_result *res)
{
    struct test_got *g = arg;
    g->calls++;
    g->res = *res;
    g->null_mx = dns_result_null_mx(res);
    for (size_t i = 0; i < res->n; i++) {
        if (res->type == DNS_TYPE_MX && i < 4)
            g->mx[i] = res->u.mx[i];
        if ((res->type == DNS_TYPE_A || res->type == DNS_TYPE_AAAA) && i < TESTLIB_DNS_RRS_MAX)
            g->addr[i] = res->u.addr[i];
        if (res->type == DNS_TYPE_TXT && i == 0 && res->u.txt[0].len < sizeof(g->txt)) {
            memcpy(g->txt, res->u.txt[0].text, res->u.txt[0].len + 1);
            g->txt_len = res->u.txt[0].len;
        }
        if (res->type == DNS_TYPE_TLSA && i < 2 && res->u.tlsa[i].len <= 64) {
            g->tlsa[i] = res->u.tlsa[i];
            memcpy(g->tlsa_data[i], res->u.tlsa[i].data, res->u.tlsa[i].len);
        }
    }
}

/* test_new_resolver - f->r on the fake server with f->cfg and the test's clock. */
static void test_new_resolver(struct fixture *f)
{
    assert_int_equal(dns_new(&f->loop, &f->cfg, &f->r), 0);
    dns_set_clock(f->r, test_clock, f);
}

/* test_reopen - close the resolver and make a new one with f->cfg as the test changed it. */
static void test_reopen(struct fixture *f)
{
    dns_close(f->r, testlib_flag_cb, &f->closed);
    TESTLIB_LOOP_WAIT(&f->w, f->closed);
    f->closed = false;
    test_new_resolver(f);
}

/* test_tick_cb - nothing: the tick only ends each loop turn. */
static void test_tick_cb(uv_timer_t *t)
{
}

/* setup - loop, guard, tick, fake server, and a resolver with a 200 ms, one-try timeout. */
static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    testlib_loop_init(&f->w, &f->loop, TEST_GUARD_MS, TEST_TURNS);
    assert_int_equal(uv_timer_init(&f->loop, &f->tick), 0);
    assert_int_equal(uv_timer_start(&f->tick, test_tick_cb, 5, 5), 0);
    testlib_dns_start(&f->srv, &f->loop, test_zone, sizeof(test_zone) / sizeof(test_zone[0]));
    dns_config_default(&f->cfg);
    snprintf(f->cfg.servers, sizeof(f->cfg.servers), "%s", f->srv.servers);
    f->cfg.timeout_ms = 200;
    f->cfg.tries = 1;
    f->now_ms = 1000000;
    test_new_resolver(f);
    *state = f;
    return 0;
}

/* teardown - close what is open; the loop must end with no handle. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->r && !f->closed) {
        dns_close(f->r, testlib_flag_cb, &f->closed);
        TESTLIB_LOOP_WAIT(&f->w, f->closed);
    }
    testlib_dns_close(&f->srv);
    uv_close((uv_handle_t *)&f->tick, NULL);
    testlib_loop_close(&f->w);
    assert_int_equal(testlib_loop_finish(&f->loop), 0);
    free(f);
    return 0;
}

/* test_ask - query name for type and wait for its one callback, into g. */
static void test_ask(struct fixture *f, const char *name, enum dns_type type, struct test_got *g)
{
    memset(g, 0, sizeof(*g));
    assert_int_equal(dns_query(f->r, name, type, test_got_cb, g, NULL), 0);
    assert_int_equal(g->calls, 0); /* never from inside dns_query */
    TESTLIB_LOOP_WAIT(&f->w, g->calls > 0);
    assert_int_equal(g->calls, 1);
}

/* test_ask_ok - test_ask, and the answer must be DNS_OK with n records and that ttl. */
static void test_ask_ok(struct fixture *f,
                        const char *name,
                        enum dns_type type,
                        struct test_got *g,
                        size_t n,
                        uint32_t ttl)
{
    test_ask(f, name, type, g);
    assert_int_equal(g->res.status, DNS_OK);
    assert_int_equal(g->res.n, n);
    assert_int_equal(g->res.ttl, ttl);
}

/* mx_records - preferences and hosts as sent (case kept), the smallest TTL. */
static void mx_records(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_ask_ok(f, "mx.test", DNS_TYPE_MX, &g, 3, 200);
    assert_false(g.res.ad);
    assert_false(g.res.cached);
    assert_int_equal(g.mx[0].pref, 20);
    assert_string_equal(g.mx[0].host, "mx2.mx.test");
    assert_int_equal(g.mx[1].pref, 10);
    assert_string_equal(g.mx[1].host, "mx1.mx.test");
    assert_int_equal(g.mx[2].pref, 30);
    assert_string_equal(g.mx[2].host, "MX3.Mx.Test");
    assert_false(g.null_mx);
    /* Our query asked for AD (RFC 6840 5.7) and carried EDNS0. */
    assert_true(f->srv.last_ad);
    assert_true(f->srv.last_edns);
}

/* null_mx - RFC 7505: one MX, preference 0, host "" and recognised. */
static void null_mx(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_ask_ok(f, "null.test.", DNS_TYPE_MX, &g, 1, 300);
    assert_int_equal(g.mx[0].pref, 0);
    assert_string_equal(g.mx[0].host, "");
    assert_true(g.null_mx);
}

/* test_want_addr - record i of g is text (an IPv4 or IPv6 literal) with ttl. */
static void test_want_addr(const struct test_got *g, size_t i, const char *text, uint32_t ttl)
{
    uint8_t want[16];
    int family = strchr(text, ':') ? AF_INET6 : AF_INET;
    assert_int_equal(g->addr[i].family, family);
    assert_int_equal(inet_pton(family, text, want), 1);
    assert_memory_equal(g->addr[i].addr, want, family == AF_INET ? 4 : 16);
    assert_int_equal(g->addr[i].ttl, ttl);
}

/* addresses - A and AAAA with each record's TTL. */
static void addresses(void **state)
{
    struct fixture *f = *state;
    struct test_got g;

    test_ask_ok(f, "A.TEST", DNS_TYPE_A, &g, 2, 60);
    test_want_addr(&g, 0, "192.0.2.1", 60);
    test_want_addr(&g, 1, "192.0.2.2", 90);

    test_ask_ok(f, "a.test", DNS_TYPE_AAAA, &g, 1, 120);
    test_want_addr(&g, 0, "2001:db8::25", 120);

    /* Behind a CNAME: the target's records, the CNAME's smaller TTL. */
    test_ask_ok(f, "cname.test", DNS_TYPE_A, &g, 1, 30);
    test_want_addr(&g, 0, "192.0.2.9", 300);
}

/* txt_and_tlsa - TXT strings joined; TLSA fields and data; AD passed on. */
static void txt_and_tlsa(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    uint8_t want[32];

    test_ask_ok(f, "txt.test", DNS_TYPE_TXT, &g, 1, 300);
    assert_string_equal(g.txt, "v=spf1 ip4:192.0.2.0/24 -all");
    assert_int_equal(g.txt_len, strlen("v=spf1 ip4:192.0.2.0/24 -all"));

    test_ask_ok(f, "_25._tcp.mx1.mx.test", DNS_TYPE_TLSA, &g, 2, 300);
    assert_true(g.res.ad);
    assert_int_equal(g.tlsa[0].usage, 3);
    assert_int_equal(g.tlsa[0].selector, 1);
    assert_int_equal(g.tlsa[0].mtype, 1);
    assert_int_equal(g.tlsa[0].len, 32);
    for (int i = 0; i < 32; i++)
        want[i] = (uint8_t)(((i % 16) << 4) | (i % 16));
    assert_memory_equal(g.tlsa_data[0], want, 32);
    assert_int_equal(g.tlsa[1].usage, 2);
    assert_int_equal(g.tlsa[1].selector, 0);
    assert_int_equal(g.tlsa[1].mtype, 0);
    assert_int_equal(g.tlsa[1].len, 0);

    test_ask(f, "ad.test", DNS_TYPE_A, &g);
    assert_true(g.res.ad);
    test_ask(f, "other.test", DNS_TYPE_A, &g);
    assert_false(g.res.ad);
}

/* test_status_case - one row of the status table. */
struct test_status_case {
    const char *label;
    const char *name;
    enum dns_type type;
    enum dns_status want;
    int want_err;
    uint32_t want_ttl;
    unsigned want_queries_after_two; /* the server's count once asked twice */
};

/* status_classes - each answer's class, its TTL, and whether a second query reached the server. */
static void status_classes(void **state)
{
    static const struct test_status_case cases[] = {
        {"nxdomain", "nx.test", DNS_TYPE_MX, DNS_NXDOMAIN, 0, 300, 1},
        {"nodata: the SOA's TTL is the smaller", "nodata.test", DNS_TYPE_MX, DNS_NODATA, 0, 120, 1},
        {"nxdomain without SOA: the lower bound", "nosoa.test", DNS_TYPE_MX, DNS_NXDOMAIN, 0, 60,
         1},
        {"servfail", "fail.test", DNS_TYPE_A, DNS_TEMPFAIL, HAMR_ECONNECT, 0, 2},
        {"refused", "refused.test", DNS_TYPE_A, DNS_TEMPFAIL, HAMR_ECONNECT, 0, 2},
        {"timeout", "silent.test", DNS_TYPE_A, DNS_TEMPFAIL, HAMR_ETIMEDOUT, 0, 2},
        {"cut short", "cut.test", DNS_TYPE_MX, DNS_TEMPFAIL, HAMR_EPROTO, 0, 2},
        {"lying count", "lying.test", DNS_TYPE_MX, DNS_TEMPFAIL, HAMR_EPROTO, 0, 2},
        {"compression loop", "loop.test", DNS_TYPE_MX, DNS_TEMPFAIL, HAMR_EPROTO, 0, 2},
        {"MX host no host name", "badmx.test", DNS_TYPE_MX, DNS_TEMPFAIL, HAMR_EPROTO, 0, 2},
    };
    struct fixture *f = *state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct test_status_case *c = &cases[i];
        struct test_got g;
        print_message("case: %s\n", c->label);
        test_ask(f, c->name, c->type, &g);
        assert_int_equal(g.res.status, c->want);
        assert_int_equal(g.res.err, c->want_err);
        assert_int_equal(g.res.ttl, c->want_ttl);
        assert_int_equal(g.res.n, 0);
        if (c->want == DNS_TEMPFAIL)
            assert_true(g.res.why[0] != '\0');
        test_ask(f, c->name, c->type, &g);
        assert_int_equal(g.res.status, c->want);
        assert_int_equal(g.res.cached, c->want_queries_after_two == 1);
        assert_int_equal(testlib_dns_count(&f->srv, c->name, c->type), c->want_queries_after_two);
    }
}

/* cache_ttl - within the TTL from the cache, TTL counting down; past it, asked again. */
static void cache_ttl(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_ask(f, "mx.test", DNS_TYPE_MX, &g);
    assert_int_equal(dns_cache_entries(f->r), 1);

    f->now_ms += 199 * 1000;
    test_ask(f, "mx.test", DNS_TYPE_MX, &g);
    assert_true(g.res.cached);
    assert_int_equal(g.res.ttl, 1);
    assert_int_equal(g.res.n, 3);
    assert_string_equal(g.mx[1].host, "mx1.mx.test");
    assert_int_equal(testlib_dns_count(&f->srv, "mx.test", DNS_TYPE_MX), 1);

    f->now_ms += 1000;
    test_ask(f, "mx.test", DNS_TYPE_MX, &g);
    assert_false(g.res.cached);
    assert_int_equal(g.res.ttl, 200);
    assert_int_equal(testlib_dns_count(&f->srv, "mx.test", DNS_TYPE_MX), 2);

    /* The counters behind /metrics: three answers, one from the cache, two sent. */
    struct dns_stats st;
    dns_get_stats(f->r, &st);
    assert_int_equal(st.answers[DNS_OK], 3);
    assert_int_equal(st.answers[DNS_TEMPFAIL], 0);
    assert_int_equal(st.cache_hits, 1);
    assert_int_equal(st.sent, 2);
}

/* negative_ttl - NXDOMAIN held for the SOA minimum (300 s), not beyond. */
static void negative_ttl(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_ask(f, "nx.test", DNS_TYPE_MX, &g);
    f->now_ms += 299 * 1000;
    test_ask(f, "nx.test", DNS_TYPE_MX, &g);
    assert_true(g.res.cached);
    assert_int_equal(g.res.status, DNS_NXDOMAIN);
    assert_int_equal(testlib_dns_count(&f->srv, "nx.test", DNS_TYPE_MX), 1);
    f->now_ms += 1000;
    test_ask(f, "nx.test", DNS_TYPE_MX, &g);
    assert_false(g.res.cached);
    assert_int_equal(testlib_dns_count(&f->srv, "nx.test", DNS_TYPE_MX), 2);
    struct dns_stats st;
    dns_get_stats(f->r, &st);
    assert_int_equal(st.answers[DNS_NXDOMAIN], 3);
    assert_int_equal(st.answers[DNS_OK], 0);
}

/* ttl_bounds - the configured maximum caps a long TTL, the minimum lifts a short one. */
static void ttl_bounds(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    f->cfg.ttl_min = 100;
    f->cfg.ttl_max = 250;
    f->cfg.negative_ttl_max = 200;
    test_reopen(f);
    test_ask(f, "a.test", DNS_TYPE_A, &g); /* 60 s */
    assert_int_equal(g.res.ttl, 100);
    test_ask(f, "ad.test", DNS_TYPE_A, &g); /* 300 s */
    assert_int_equal(g.res.ttl, 250);
    test_ask(f, "nx.test", DNS_TYPE_MX, &g); /* 300 s */
    assert_int_equal(g.res.ttl, 200);
}

/* cache_bound - cache_size 2: the least recently used goes first; cache_max_bytes holds too. */
static void cache_bound(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    f->cfg.cache_size = 2;
    test_reopen(f);
    test_ask(f, "a.test", DNS_TYPE_A, &g);
    test_ask(f, "ad.test", DNS_TYPE_A, &g);
    test_ask(f, "a.test", DNS_TYPE_A, &g); /* a.test used last: ad.test goes next */
    assert_true(g.res.cached);
    test_ask(f, "other.test", DNS_TYPE_A, &g);
    assert_int_equal(dns_cache_entries(f->r), 2);
    test_ask(f, "a.test", DNS_TYPE_A, &g);
    assert_true(g.res.cached);
    test_ask(f, "ad.test", DNS_TYPE_A, &g);
    assert_false(g.res.cached);
    assert_int_equal(testlib_dns_count(&f->srv, "ad.test", DNS_TYPE_A), 2);
    assert_int_equal(testlib_dns_count(&f->srv, "a.test", DNS_TYPE_A), 1);

    /* The byte bound: an answer larger than it is handed out, then dropped. */
    f->cfg.cache_max_bytes = 1;
    test_reopen(f);
    test_ask(f, "mx.test", DNS_TYPE_MX, &g);
    assert_int_equal(g.res.n, 3);
    assert_int_equal(dns_cache_entries(f->r), 0);
    test_ask(f, "mx.test", DNS_TYPE_MX, &g);
    assert_false(g.res.cached);
    assert_int_equal(testlib_dns_count(&f->srv, "mx.test", DNS_TYPE_MX), 2);
}

/* shared_flight - three identical queries at once: one DNS query, three callbacks. */
static void shared_flight(void **state)
{
    struct fixture *f = *state;
    struct test_got g[3];
    memset(g, 0, sizeof(g));
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            dns_query(f->r, i == 1 ? "A.test." : "a.test", DNS_TYPE_A, test_got_cb, &g[i], NULL),
            0);
    TESTLIB_LOOP_WAIT(&f->w, g[0].calls && g[1].calls && g[2].calls);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(g[i].calls, 1);
        assert_int_equal(g[i].res.status, DNS_OK);
        assert_int_equal(g[i].res.n, 2);
        assert_false(g[i].res.cached);
    }
    assert_int_equal(testlib_dns_count(&f->srv, "a.test", DNS_TYPE_A), 1);
}

/* cancel - a cancelled query is never called back, in flight or after a cache hit. */
static void cancel(void **state)
{
    struct fixture *f = *state;
    struct test_got gone, kept;
    struct dns_query *q;
    memset(&gone, 0, sizeof(gone));
    memset(&kept, 0, sizeof(kept));

    assert_int_equal(dns_query(f->r, "mx.test", DNS_TYPE_MX, test_got_cb, &gone, &q), 0);
    assert_int_equal(dns_query(f->r, "mx.test", DNS_TYPE_MX, test_got_cb, &kept, NULL), 0);
    dns_cancel(q);
    TESTLIB_LOOP_WAIT(&f->w, kept.calls > 0);
    assert_int_equal(gone.calls, 0);

    /* A cache hit waits on the ready list: cancel it there. */
    memset(&kept, 0, sizeof(kept));
    assert_int_equal(dns_query(f->r, "mx.test", DNS_TYPE_MX, test_got_cb, &gone, &q), 0);
    assert_int_equal(dns_query(f->r, "mx.test", DNS_TYPE_MX, test_got_cb, &kept, NULL), 0);
    dns_cancel(q);
    TESTLIB_LOOP_WAIT(&f->w, kept.calls > 0);
    assert_true(kept.res.cached);
    assert_int_equal(gone.calls, 0);

    /* Every query of a fetch cancelled: the answer is still cached when it comes. */
    assert_int_equal(dns_query(f->r, "other.test", DNS_TYPE_A, test_got_cb, &gone, &q), 0);
    dns_cancel(q);
    TESTLIB_LOOP_WAIT(&f->w, dns_cache_entries(f->r) == 2);
    assert_int_equal(gone.calls, 0);
}

/* close_in_flight - close calls each waiting query back once, cancelled; nothing after. */
static void close_in_flight(void **state)
{
    struct fixture *f = *state;
    struct test_got waiting, ready;
    memset(&waiting, 0, sizeof(waiting));
    memset(&ready, 0, sizeof(ready));

    test_ask(f, "a.test", DNS_TYPE_A, &ready);
    assert_int_equal(dns_query(f->r, "silent.test", DNS_TYPE_A, test_got_cb, &waiting, NULL), 0);
    TESTLIB_LOOP_WAIT(&f->w, testlib_dns_count(&f->srv, "silent.test", DNS_TYPE_A) == 1);
    memset(&ready, 0, sizeof(ready));
    assert_int_equal(dns_query(f->r, "a.test", DNS_TYPE_A, test_got_cb, &ready, NULL), 0);

    dns_close(f->r, testlib_flag_cb, &f->closed);
    assert_int_equal(waiting.calls, 1);
    assert_int_equal(waiting.res.status, DNS_TEMPFAIL);
    assert_int_equal(waiting.res.err, HAMR_ECANCELED);
    assert_int_equal(ready.calls, 1);
    assert_int_equal(ready.res.err, HAMR_ECANCELED);
    assert_int_equal(dns_query(f->r, "a.test", DNS_TYPE_A, test_got_cb, &ready, NULL),
                     HAMR_ESHUTDOWN);
    dns_close(f->r, NULL, NULL); /* a second close does nothing */
    TESTLIB_LOOP_WAIT(&f->w, f->closed);
    assert_int_equal(waiting.calls, 1);
    assert_int_equal(ready.calls, 1);
    f->r = NULL;
}

/* test_closer - a caller whose callback closes the resolver. */
struct test_closer {
    struct fixture *f;
    struct test_got got;
};

/* test_closer_cb - record the answer, then close the resolver from inside the callback. */
static void test_closer_cb(void *arg, const struct dns_result *res)
{
    struct test_closer *c = arg;
    test_got_cb(&c->got, res);
    dns_close(c->f->r, testlib_flag_cb, &c->f->closed);
}

/* close_from_callback - the first answer closes: the next, ready too, comes back cancelled, once.
 */
static void close_from_callback(void **state)
{
    struct fixture *f = *state;
    struct test_closer first = {.f = f};
    struct test_got second;
    memset(&second, 0, sizeof(second));

    assert_int_equal(dns_query(f->r, "a.test", DNS_TYPE_A, test_closer_cb, &first, NULL), 0);
    assert_int_equal(dns_query(f->r, "a.test", DNS_TYPE_A, test_got_cb, &second, NULL), 0);
    TESTLIB_LOOP_WAIT(&f->w, f->closed);
    assert_int_equal(first.got.calls, 1);
    assert_int_equal(first.got.res.status, DNS_OK);
    assert_int_equal(second.calls, 1);
    assert_int_equal(second.res.status, DNS_TEMPFAIL);
    assert_int_equal(second.res.err, HAMR_ECANCELED);
    f->r = NULL;
}

/* bad_config - servers c-ares cannot read, and no tries, are refused. */
static void bad_config(void **state)
{
    struct fixture *f = *state;
    struct dns_config cfg = f->cfg;
    struct dns *r = (struct dns *)&cfg; /* must be set to NULL on failure */

    snprintf(cfg.servers, sizeof(cfg.servers), "not an address");
    assert_int_equal(dns_new(&f->loop, &cfg, &r), HAMR_EINVAL);
    assert_null(r);
    cfg = f->cfg;
    cfg.tries = 0;
    assert_int_equal(dns_new(&f->loop, &cfg, &r), HAMR_EINVAL);
    assert_null(r);
    /* An explicit list with IPv6 and ports is read. */
    cfg = f->cfg;
    snprintf(cfg.servers, sizeof(cfg.servers), "%s, [::1]:5353", f->srv.servers);
    assert_int_equal(dns_new(&f->loop, &cfg, &r), 0);
    bool closed = false;
    dns_close(r, testlib_flag_cb, &closed);
    TESTLIB_LOOP_WAIT(&f->w, closed);
}

/* hostile_names - refused before any query, the callback never runs. */
static void hostile_names(void **state)
{
    struct fixture *f = *state;
    char label64[70], long_name[300], ok_name[300];
    memset(label64, 'a', 64);
    label64[64] = '\0';
    /* 254 characters: three labels of 63, one of 62, and their dots. */
    snprintf(long_name, sizeof(long_name), "%.63s.%.63s.%.63s.%.62s", label64, label64, label64,
             label64);
    assert_int_equal(strlen(long_name), 254);
    const char *bad[] = {"",         ".",        "..",      "a..test", ".a.test",
                         "a.test..", label64,    long_name, "a test",  "a\x80.test",
                         "a/b.test", "a\\.test", "*.test"};
    struct test_got g;
    memset(&g, 0, sizeof(g));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        print_message("name: \"%s\"\n", bad[i]);
        assert_int_equal(dns_query(f->r, bad[i], DNS_TYPE_MX, test_got_cb, &g, NULL), HAMR_EINVAL);
    }
    assert_int_equal(dns_query(f->r, "a.test", (enum dns_type)99, test_got_cb, &g, NULL),
                     HAMR_EINVAL);
    /* The longest allowed: 253 characters, labels of 63. */
    snprintf(ok_name, sizeof(ok_name), "%.63s.%.63s.%.63s.%.61s", label64, label64, label64,
             label64);
    assert_int_equal(strlen(ok_name), 253);
    assert_int_equal(dns_query(f->r, ok_name, DNS_TYPE_MX, test_got_cb, &g, NULL), 0);
    TESTLIB_LOOP_WAIT(&f->w, g.calls > 0);
    assert_int_equal(g.res.status, DNS_TEMPFAIL); /* the fake refuses names it has no row for */
    assert_int_equal(f->srv.queries, 1);
}

/* test_want_aaaa_run - records 0..n of g are TEST_AAAA8(1), TEST_AAAA8(2), ... in order. */
static void test_want_aaaa_run(const struct test_got *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char text[32];
        snprintf(text, sizeof(text), "2001:db8::%zu", 10 * (i / 8 + 1) + i % 8);
        test_want_addr(g, i, text, 300);
    }
}

/*
 * tcp_fallback - TC over UDP: c-ares asks again over TCP, on the same
 * address and port, and the TCP answer's records all come back. Two such
 * queries at once share one connection (RFC 7766 section 6.2.1).
 */
static void tcp_fallback(void **state)
{
    struct fixture *f = *state;
    struct test_got g;

    test_ask_ok(f, "tc.test", DNS_TYPE_MX, &g, 4, 250);
    for (unsigned i = 0; i < 4; i++) {
        char host[32];
        snprintf(host, sizeof(host), "mx%u.tc.test", i + 1);
        assert_int_equal(g.mx[i].pref, 10 * (i + 1));
        assert_string_equal(g.mx[i].host, host);
    }
    assert_int_equal(f->srv.queries, 2);
    assert_int_equal(f->srv.tcp_queries, 1);
    assert_int_equal(f->srv.tcp_accepted, 1);
    assert_int_equal(testlib_dns_count(&f->srv, "tc.test", DNS_TYPE_MX), 2);
    assert_int_equal(testlib_dns_tcp_count(&f->srv, "tc.test", DNS_TYPE_MX), 1);
    /* The TCP query is the UDP one again: EDNS0 and AD still asked for. */
    assert_true(f->srv.last_tcp);
    assert_true(f->srv.last_edns);
    assert_true(f->srv.last_ad);

    /*
     * Both UDP answers come back truncated in one loop turn: c-ares queues
     * both TCP queries on the one connection it opens to the server (1.18
     * closes it again once no query is left, so the MX lookup's is gone).
     */
    struct test_got a, aaaa;
    memset(&a, 0, sizeof(a));
    memset(&aaaa, 0, sizeof(aaaa));
    assert_int_equal(dns_query(f->r, "tc.test", DNS_TYPE_A, test_got_cb, &a, NULL), 0);
    assert_int_equal(dns_query(f->r, "tc.test", DNS_TYPE_AAAA, test_got_cb, &aaaa, NULL), 0);
    TESTLIB_LOOP_WAIT(&f->w, a.calls > 0 && aaaa.calls > 0);
    assert_int_equal(a.res.status, DNS_OK);
    assert_int_equal(a.res.n, 3);
    test_want_addr(&a, 0, "192.0.2.11", 300);
    test_want_addr(&a, 2, "192.0.2.13", 300);
    assert_int_equal(aaaa.res.status, DNS_OK);
    assert_int_equal(aaaa.res.n, 2);
    test_want_addr(&aaaa, 1, "2001:db8::12", 300);
    assert_int_equal(testlib_dns_tcp_count(&f->srv, "tc.test", DNS_TYPE_A), 1);
    assert_int_equal(testlib_dns_tcp_count(&f->srv, "tc.test", DNS_TYPE_AAAA), 1);
    assert_int_equal(f->srv.tcp_queries, 3);
    assert_int_equal(f->srv.tcp_accepted, 2);
}

/*
 * big_answer - over 512 octets over UDP: taken as it is, since our EDNS0
 * OPT offers 1232 (RFC 6891 section 6.2.5) and c-ares checks the size
 * against ednspsz, not 512. Over 1232 with TC clear: c-ares 1.18 treats
 * the answer as truncated all the same (process_answer: "tc || alen >
 * packetsz") and asks again over TCP, where the records all arrive.
 */
static void big_answer(void **state)
{
    struct fixture *f = *state;
    struct test_got g;

    test_ask_ok(f, "big.test", DNS_TYPE_AAAA, &g, TEST_BIG_N, 300);
    test_want_aaaa_run(&g, TEST_BIG_N);
    assert_true(f->srv.last_edns);
    assert_false(f->srv.last_tcp);
    assert_true(f->srv.last_len > TEST_UDP_PLAIN_MAX);
    assert_true(f->srv.last_len <= TEST_EDNS_SIZE);
    assert_int_equal(f->srv.tcp_queries, 0);
    assert_int_equal(testlib_dns_count(&f->srv, "big.test", DNS_TYPE_AAAA), 1);

    test_ask_ok(f, "huge.test", DNS_TYPE_AAAA, &g, TEST_HUGE_N, 300);
    test_want_aaaa_run(&g, TEST_HUGE_N);
    assert_true(f->srv.last_tcp);
    assert_true(f->srv.last_len > TEST_EDNS_SIZE);
    assert_int_equal(testlib_dns_count(&f->srv, "huge.test", DNS_TYPE_AAAA), 2);
    assert_int_equal(testlib_dns_tcp_count(&f->srv, "huge.test", DNS_TYPE_AAAA), 1);
}

/* test_broken_case - a TCP retry that goes wrong, and how c-ares 1.18 ends it. */
struct test_broken_case {
    const char *label;
    const char *name;
    int want_err;
    bool want_full_timeout; /* the lookup waits out the resolver's timeout */
};

/*
 * tcp_fallback_broken - TC over UDP, then no whole answer over TCP: TEMPFAIL
 * (never cached), within a bound set by the resolver's 200 ms timeout. The
 * two ways c-ares 1.18 ends it differ: a connection the server closes is a
 * server error (handle_error: the query moves on, and with one server and
 * one try it ends at once as ARES_ECONNREFUSED, HAMR_ECONNECT); an answer
 * cut short on an open connection waits for the rest until the TCP try's
 * own timeout (ARES_ETIMEOUT; the timeout restarts when the query goes
 * over TCP, so the lookup takes a little more than one timeout).
 */
static void tcp_fallback_broken(void **state)
{
    static const struct test_broken_case cases[] = {
        {"closed without an answer", "tcclose.test", HAMR_ECONNECT, false},
        {"answer cut short, connection left open", "tccut.test", HAMR_ETIMEDOUT, true},
    };
    struct fixture *f = *state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct test_broken_case *c = &cases[i];
        struct test_got g;
        print_message("case: %s\n", c->label);
        uint64_t t0 = uv_hrtime();
        test_ask(f, c->name, DNS_TYPE_A, &g);
        uint64_t took_ms = (uv_hrtime() - t0) / 1000000;
        assert_int_equal(g.res.status, DNS_TEMPFAIL);
        assert_int_equal(g.res.err, c->want_err);
        assert_int_equal(g.res.n, 0);
        assert_true(g.res.why[0] != '\0');
        assert_true(took_ms < 5 * f->cfg.timeout_ms);
        if (c->want_full_timeout)
            assert_true(took_ms >= f->cfg.timeout_ms);
        assert_int_equal(testlib_dns_count(&f->srv, c->name, DNS_TYPE_A), 2);
        assert_int_equal(testlib_dns_tcp_count(&f->srv, c->name, DNS_TYPE_A), 1);
    }
    assert_int_equal(dns_cache_entries(f->r), 0);
}

/* test_client - a bare TCP client of the fake server, for its framing. */
struct test_client {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t writes[3];
    bool connected;
    unsigned written;
    size_t len;
    uint8_t in[512];
};

/* test_client_connect_cb - connected (or not: the test fails on the flag). */
static void test_client_connect_cb(uv_connect_t *req, int status)
{
    struct test_client *c = req->data;
    c->connected = status == 0;
}

/* test_client_write_cb - one write done. */
static void test_client_write_cb(uv_write_t *req, int status)
{
    struct test_client *c = req->data;
    assert_int_equal(status, 0);
    c->written++;
}

/* test_client_alloc_cb - the free end of the client's buffer. */
static void test_client_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct test_client *c = h->data;
    *buf = uv_buf_init((char *)c->in + c->len, (unsigned)(sizeof(c->in) - c->len));
}

/* test_client_read_cb - keep what comes; the server does not close first. */
static void test_client_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct test_client *c = st->data;
    assert_true(nread >= 0);
    c->len += (size_t)nread;
}

/* test_client_write - n octets of p as write number i (p must outlive the write). */
static void test_client_write(struct test_client *c, unsigned i, const uint8_t *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    c->writes[i].data = c;
    assert_int_equal(uv_write(&c->writes[i], (uv_stream_t *)&c->tcp, &b, 1, test_client_write_cb),
                     0);
}

/* test_query_frame - a length-prefixed query for name's A records with id into b; its length. */
static size_t test_query_frame(uint8_t *b, size_t size, unsigned id, const char *name)
{
    size_t n = 2;
    const uint8_t header[12] = {id >> 8, id & 0xFF, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    memcpy(b + n, header, sizeof(header));
    n += sizeof(header);
    while (*name) {
        size_t l = strcspn(name, ".");
        assert_true(n + 1 + l + 5 < size);
        b[n++] = (uint8_t)l;
        memcpy(b + n, name, l);
        n += l;
        name += l + (name[l] == '.');
    }
    const uint8_t tail[5] = {0, 0, DNS_TYPE_A, 0, 1}; /* root, type A, class IN */
    memcpy(b + n, tail, sizeof(tail));
    n += sizeof(tail);
    b[0] = (uint8_t)((n - 2) >> 8);
    b[1] = (uint8_t)(n - 2);
    return n;
}

/*
 * fake_server_tcp_framing - the fake server itself (c-ares writes each
 * query whole, so the tests above never split one): a query split across
 * reads, and a read holding the end of one and the start of the next, are
 * answered in order, each with its length prefix (RFC 1035 4.2.2).
 */
static void fake_server_tcp_framing(void **state)
{
    struct fixture *f = *state;
    struct test_client c;
    struct sockaddr_in sin;
    uint8_t q[128];
    memset(&c, 0, sizeof(c));
    size_t n1 = test_query_frame(q, sizeof(q), 0x1234, "other.test");
    size_t n2 = test_query_frame(q + n1, sizeof(q) - n1, 0x1235, "a.test");

    assert_int_equal(uv_ip4_addr("127.0.0.1", atoi(strchr(f->srv.servers, ':') + 1), &sin), 0);
    assert_int_equal(uv_tcp_init(&f->loop, &c.tcp), 0);
    c.tcp.data = c.connect.data = &c;
    assert_int_equal(
        uv_tcp_connect(&c.connect, &c.tcp, (const struct sockaddr *)&sin, test_client_connect_cb),
        0);
    TESTLIB_LOOP_WAIT(&f->w, c.connected);
    assert_int_equal(
        uv_read_start((uv_stream_t *)&c.tcp, test_client_alloc_cb, test_client_read_cb), 0);

    /* One octet of the first frame's length, alone in the server's read. */
    test_client_write(&c, 0, q, 1);
    TESTLIB_LOOP_WAIT(&f->w, f->srv.conns[0].used && f->srv.conns[0].len == 1);
    /* The rest of the first frame and 5 octets of the second. */
    test_client_write(&c, 1, q + 1, n1 - 1 + 5);
    TESTLIB_LOOP_WAIT(&f->w, f->srv.tcp_queries == 1 && f->srv.conns[0].len == 5);
    test_client_write(&c, 2, q + n1 + 5, n2 - 5);
    TESTLIB_LOOP_WAIT(&f->w, f->srv.tcp_queries == 2);
    assert_int_equal(f->srv.tcp_accepted, 1);

    /* Two answers, in order: other.test (1 A record), then a.test (2). */
    size_t at = 0;
    for (unsigned i = 0; i < 2; i++) {
        TESTLIB_LOOP_WAIT(
            &f->w, c.len >= at + 2 && c.len >= at + 2 + ((size_t)c.in[at] << 8 | c.in[at + 1]));
        const uint8_t *m = c.in + at + 2;
        assert_int_equal(m[0] << 8 | m[1], 0x1234 + i); /* ID */
        assert_int_equal(m[3] & 0x0F, 0);               /* NOERROR */
        assert_int_equal(m[2] & 0x02, 0);               /* no TC over TCP */
        assert_int_equal(m[6] << 8 | m[7], i + 1);      /* ANCOUNT */
        at += 2 + ((size_t)c.in[at] << 8 | c.in[at + 1]);
    }
    assert_int_equal(c.len, at);
    assert_int_equal(c.written, 3);
    uv_close((uv_handle_t *)&c.tcp, NULL);
    /* The server sees EOF and closes its end. */
    TESTLIB_LOOP_WAIT(&f->w, !f->srv.conns[0].used);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(mx_records, setup, teardown),
        cmocka_unit_test_setup_teardown(null_mx, setup, teardown),
        cmocka_unit_test_setup_teardown(addresses, setup, teardown),
        cmocka_unit_test_setup_teardown(txt_and_tlsa, setup, teardown),
        cmocka_unit_test_setup_teardown(status_classes, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_ttl, setup, teardown),
        cmocka_unit_test_setup_teardown(negative_ttl, setup, teardown),
        cmocka_unit_test_setup_teardown(ttl_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(shared_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(close_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(close_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_config, setup, teardown),
        cmocka_unit_test_setup_teardown(hostile_names, setup, teardown),
        cmocka_unit_test_setup_teardown(tcp_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(big_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(tcp_fallback_broken, setup, teardown),
        cmocka_unit_test_setup_teardown(fake_server_tcp_framing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
