/*
 * test_relay_sched.c - what the leader's scheduler and hamrctl status decide
 * from the queue alone: a message whose body this node lacks gets no
 * delivery (the pick leaves it out, queue_sched.c) and holds back no newer
 * message of its next hop, yet still expires; and the state digest is left
 * out above a count of queued messages (relay_ctl_digest).
 *
 * The relay is relay_fixture's zeroed struct: a queue, no fetcher (asking
 * for a body is a no-op). A body goes missing as on a
 * node whose store lost it: the queue keeps bodies through body ops that
 * store nothing, and queue_body_lost marks one missing. The rest of a
 * scheduling round (the lease, raft) is covered by
 * integ_cluster_bodies_new_leader_lacks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/common.h"
#include "util/err.h"
#include "queue/queue.h"
#include "queue/queue_sched.h"
#include "node/config.h"
#include "node/relay_internal.h"
#include "queue_fixture.h"
#include "relay_fixture.h"

#define T0 1765000000000ull
#define TEST_MSGS 6

struct test_ctx {
    struct relay_fx *fx;
    uint64_t next_loc; /* the body ops' last location */
};

/* test_put - the body ops' put: nothing kept, a new location. */
static int test_put(void *arg,
                    const char *id,
                    const uint8_t *body,
                    size_t len,
                    const uint8_t sha[QUEUE_SHA256_LEN],
                    uint64_t *loc)
{
    struct test_ctx *c = arg;
    (void)id, (void)body, (void)len, (void)sha;
    *loc = ++c->next_loc;
    return 0;
}

static int test_locate(void *arg,
                       const char *id,
                       size_t len,
                       const uint8_t sha[QUEUE_SHA256_LEN],
                       uint64_t *loc)
{
    (void)arg, (void)id, (void)len, (void)sha, (void)loc;
    return HAMR_ENOTFOUND;
}

static void test_release(void *arg, const char *id, uint64_t loc)
{
    (void)arg, (void)id, (void)loc;
}

static long long test_read(void *arg, uint64_t loc, uint64_t off, uint8_t *buf, size_t n)
{
    (void)arg, (void)loc, (void)off, (void)buf, (void)n;
    return HAMR_EIO;
}

/* test_setup - a relay over an empty queue whose bodies go to the (empty) body ops. */
static int test_setup(void **state)
{
    struct test_ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fx = relay_fx_new();
    const struct queue_body_ops ops = {.arg = c,
                                       .put = test_put,
                                       .locate = test_locate,
                                       .release = test_release,
                                       .read = test_read};
    queue_set_body_ops(c->fx->r.queue, &ops);
    *state = c;
    return 0;
}

static int test_teardown(void **state)
{
    struct test_ctx *c = *state;
    c->fx = relay_fx_free(c->fx);
    free(c);
    return 0;
}

/* test_id - the queue id of message i. */
static const char *test_id(size_t i)
{
    static char ids[TEST_MSGS][8];
    snprintf(ids[i], sizeof(ids[i]), "M%zu", i);
    return ids[i];
}

/* test_enqueue - messages 0..n, one recipient each, all due at T0, expiring at expires; stored. */
static void test_enqueue_until(struct test_ctx *c, size_t n, uint64_t expires)
{
    for (size_t i = 0; i < n; i++) {
        struct fx_enq e = {
            .id = test_id(i), .sender = "s@x.test", .rcpts = {"r@y.test"}, .expires = expires};
        assert_int_equal(fx_enqueue(c->fx->r.queue, T0, &e).status, 0);
    }
    assert_int_equal(queue_bodies_missing(c->fx->r.queue), 0);
}

/* test_enqueue - messages 0..n, due at T0, expiring in an hour. */
static void test_enqueue(struct test_ctx *c, size_t n)
{
    test_enqueue_until(c, n, T0 + 3600000);
}

/* test_route - every recipient to one next hop. */
static int test_route(void *data, const char *rcpt, char *dest, size_t destlen)
{
    (void)data, (void)rcpt;
    hamr_strlcpy(dest, "[sink.test]:25", destlen);
    return 0;
}

/* test_pick - the leader's pick at T0 + 1 s, at most per_dest (0: any) to the one next hop. */
static int test_pick(struct test_ctx *c, unsigned per_dest, struct queue_work **work)
{
    struct queue_sched_limits lim = {.max_per_dest = per_dest, .max_items = 100, .self_node = 1};
    struct queue_route route = {.data = c, .dest = test_route};
    return queue_sched_pick(c->fx->r.queue, T0 + 1000, &lim, &route, work);
}

/* Rows: which of TEST_MSGS messages lack their body; per_dest; the deliveries the pick gives. */
static const struct {
    const char *label;
    bool lost[TEST_MSGS];
    unsigned per_dest;
    const char *want; /* the picked ids in order */
} test_pick_cases[] = {
    {"every body here", {false}, 0, "M0 M1 M2 M3 M4 M5"},
    {"the oldest lacks its body", {true}, 0, "M1 M2 M3 M4 M5"},
    {"two in the middle", {false, false, true, true}, 0, "M0 M1 M4 M5"},
    {"every body missing (a new leader after a snapshot)",
     {true, true, true, true, true, true},
     0,
     ""},
    /* The two oldest missing at a limit of two: the newer ones go, not held back. */
    {"the oldest missing at the next hop's limit", {true, true}, 2, "M2 M3"},
};

/* The pick gives no delivery of a message whose body is missing, and lets newer ones by. */
static void test_pick_leaves_missing(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof(test_pick_cases) / sizeof(test_pick_cases[0]); k++) {
        struct test_ctx *c;
        test_setup((void **)&c);
        test_enqueue(c, TEST_MSGS);
        size_t lost = 0;
        for (size_t i = 0; i < TEST_MSGS; i++) {
            if (!test_pick_cases[k].lost[i])
                continue;
            assert_int_equal(queue_body_lost(c->fx->r.queue, test_id(i)), 0);
            lost++;
        }
        assert_int_equal(queue_bodies_missing(c->fx->r.queue), lost);
        assert_int_equal(queue_sched_index_check(c->fx->r.queue), 0);
        struct queue_work *work = NULL;
        int n = test_pick(c, test_pick_cases[k].per_dest, &work);
        assert_true(n >= 0);
        char got[TEST_MSGS * (QUEUE_ID_MAX + 1)] = "";
        size_t used = 0;
        for (int w = 0; w < n && w < TEST_MSGS; w++) {
            assert_int_equal(work[w].kind, QUEUE_WORK_DELIVER);
            int k2 = snprintf(got + used, sizeof(got) - used, "%s%.8s", w ? " " : "",
                              work[w].queue_id);
            assert_true(k2 > 0 && (size_t)k2 < sizeof(got) - used);
            used += (size_t)k2;
        }
        if (strcmp(got, test_pick_cases[k].want) != 0)
            fail_msg("%s: picked \"%s\", want \"%s\"", test_pick_cases[k].label, got,
                     test_pick_cases[k].want);
        work = queue_work_free(work, (size_t)n);
        /* Fetched again: due like the others. */
        for (size_t i = 0; i < TEST_MSGS; i++)
            if (test_pick_cases[k].lost[i])
                assert_int_equal(queue_body_found(c->fx->r.queue, test_id(i), 1000 + i), 0);
        assert_int_equal(queue_sched_index_check(c->fx->r.queue), 0);
        n = test_pick(c, 0, &work);
        assert_int_equal(n, TEST_MSGS);
        work = queue_work_free(work, (size_t)n);
        test_teardown((void **)&c);
    }
}

/* An expiry needs no body: a message past its lifetime expires whether or not it has one. */
static void test_missing_still_expires(void **state)
{
    struct test_ctx *c = *state;
    test_enqueue_until(c, 2, T0 + 500);
    assert_int_equal(queue_body_lost(c->fx->r.queue, test_id(0)), 0);
    struct queue_work *work = NULL;
    int n = test_pick(c, 0, &work);
    assert_int_equal(n, 2);
    for (int w = 0; w < n; w++)
        assert_int_equal(work[w].kind, QUEUE_WORK_EXPIRE);
    queue_work_free(work, (size_t)n);
}

/* The digest up to the limit, the same as the queue's; none above it. */
static void test_digest_limit(void **state)
{
    struct test_ctx *c = *state;
    char want[65], got[65];
    relay_ctl_digest(c->fx->r.queue, 0, got); /* an empty queue is at any limit */
    queue_digest(c->fx->r.queue, want);
    assert_string_equal(got, want);
    test_enqueue(c, 3);
    queue_digest(c->fx->r.queue, want);
    assert_int_equal(strlen(want), 64);
    static const struct {
        size_t max;
        bool want_digest;
    } rows[] = {{0, false}, {2, false}, {3, true}, {4, true}, {RELAY_DIGEST_MAX_MESSAGES, true}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        memset(got, 'x', sizeof(got));
        relay_ctl_digest(c->fx->r.queue, rows[i].max, got);
        if (rows[i].want_digest)
            assert_string_equal(got, want);
        else
            assert_string_equal(got, "");
    }
}

/* The limit README and hamrctl's text state. */
static void test_digest_max(void **state)
{
    (void)state;
    assert_int_equal(RELAY_DIGEST_MAX_MESSAGES, 100000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_leaves_missing),
        cmocka_unit_test_setup_teardown(test_missing_still_expires, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_digest_limit, test_setup, test_teardown),
        cmocka_unit_test(test_digest_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
