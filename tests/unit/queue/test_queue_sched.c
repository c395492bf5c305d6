/*
 * test_queue_sched.c - the scheduling policy: which recipients are due,
 * grouping by destination, the per-destination limit, NOROUTE and EXPIRE
 * work, ordering, max_items, the backoff table, and the scheduler's index
 * (a deferred backlog is not walked; random histories give the same picks
 * as a walk over every message; running out of memory while it grows), and
 * suspended destinations.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "queue/internal.h"
#include "queue/queue.h"
#include "queue/queue_sched.h"
#include "queue_fixture.h"

#define T0 1700000000000ull
#define MIN (60ull * 1000)
#define DEFERRED HAMR__RCPT_RESULT__STATUS__DEFERRED
#define DELIVERED HAMR__RCPT_RESULT__STATUS__DELIVERED

/* Route: the domain of the address as "[domain]:25"; "noroute.test" has none. */
static int route_calls;

static int route_by_domain(void *data, const char *rcpt, char *dest, size_t destlen)
{
    (void)data;
    route_calls++;
    const char *at = strrchr(rcpt, '@');
    if (at == NULL || strcmp(at + 1, "noroute.test") == 0)
        return -1;
    snprintf(dest, destlen, "[%s]:25", at + 1);
    return 0;
}

static const struct queue_route route = {.data = NULL, .dest = route_by_domain};

static int setup(void **state)
{
    route_calls = 0;
    *state = queue_new();
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    queue_free(*state);
    return 0;
}

/* pick - run the scheduler with the given limits. */
static int pick(const struct queue *q,
                uint64_t now,
                unsigned per_dest,
                size_t max_items,
                struct queue_work **w)
{
    struct queue_sched_limits lim = {.max_per_dest = per_dest,
                                     .max_items = max_items,
                                     .self_node = 1,
                                     .self_boot_id = "boot-now"};
    int n = queue_sched_pick(q, now, &lim, &route, w);
    assert_true(n >= 0);
    return n;
}

/* enq - a message from s@src.test to the given recipients at ts. */
static void enq(struct queue *q,
                uint64_t ts,
                const char *id,
                const char *r0,
                const char *r1,
                const char *r2,
                uint64_t expires)
{
    struct fx_enq e = {.id = id, .sender = "s@src.test", .rcpts = {r0, r1, r2}, .expires = expires};
    assert_int_equal(fx_enqueue(q, ts, &e).status, 0);
}

/* defer - defer recipient i of id until next. */
static void defer(struct queue *q, uint64_t ts, const char *id, uint32_t i, uint64_t next)
{
    struct fx_outcome o = {.id = id, .n = 1, .res = {{i, DEFERRED, 451, "later"}}, .next_ms = next};
    assert_int_equal(fx_outcome(q, ts, &o).status, 0);
}

/* lease - lease recipient i of id to node/boot until expires, for dest. */
static void lease(struct queue *q,
                  uint64_t ts,
                  const char *id,
                  uint32_t i,
                  uint64_t node,
                  const char *boot,
                  uint64_t expires,
                  uint64_t lease_id,
                  const char *dest)
{
    struct fx_lease l = {.node = node,
                         .term = 1,
                         .expires = expires,
                         .boot = boot,
                         .id = id,
                         .idx = {i},
                         .n = 1,
                         .lease_id = lease_id,
                         .dest = dest};
    assert_int_equal(fx_lease(q, ts, &l).status, 0);
}

/* ------------------------------------------------------------------------ */

/* Table: whether one recipient is due. */
static void test_due_table(void **state)
{
    (void)state;
    enum setup {
        PENDING_NOW,
        DEFERRED_LATER,
        LEASED_LIVE,
        LEASED_LAPSED,
        LEASED_DEAD_BOOT,
        LEASED_SELF_LIVE,
        DELIVERED_DONE,
        HELD
    };
    static const struct {
        const char *label;
        enum setup setup;
        uint64_t now; /* relative to T0 */
        bool want_due;
    } cases[] = {
        {"pending, due now", PENDING_NOW, 0, true},
        {"pending, due in the past", PENDING_NOW, 5 * MIN, true},
        {"deferred, before its time", DEFERRED_LATER, 9 * MIN, false},
        {"deferred, at its time", DEFERRED_LATER, 10 * MIN, true},
        {"leased, live", LEASED_LIVE, 4 * MIN, false},
        {"leased, lapsed", LEASED_LAPSED, 5 * MIN, true},
        {"leased by this node, old boot", LEASED_DEAD_BOOT, 1 * MIN, true},
        {"leased by this node, this boot", LEASED_SELF_LIVE, 1 * MIN, false},
        {"delivered", DELIVERED_DONE, 1 * MIN, false},
        {"held", HELD, 1 * MIN, false},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue *q = queue_new();
        enq(q, T0, "A", "x@one.test", "y@one.test", NULL, 0);
        switch (cases[i].setup) {
            case PENDING_NOW:
                break;
            case DEFERRED_LATER:
                defer(q, T0, "A", 0, T0 + 10 * MIN);
                break;
            case LEASED_LIVE:
                lease(q, T0, "A", 0, 2, "b", T0 + 5 * MIN, 1, "[one.test]:25");
                break;
            case LEASED_LAPSED:
                lease(q, T0, "A", 0, 2, "b", T0 + 5 * MIN, 1, "[one.test]:25");
                break;
            case LEASED_DEAD_BOOT:
                lease(q, T0, "A", 0, 1, "boot-old", T0 + 5 * MIN, 1, "[one.test]:25");
                break;
            case LEASED_SELF_LIVE:
                lease(q, T0, "A", 0, 1, "boot-now", T0 + 5 * MIN, 1, "[one.test]:25");
                break;
            case DELIVERED_DONE: {
                struct fx_outcome o = {.id = "A", .n = 1, .res = {{0, DELIVERED, 250, ""}}};
                fx_outcome(q, T0, &o);
                break;
            }
            case HELD:
                fx_admin(q, T0, HAMR__ADMIN__OP__HOLD, "A");
                break;
        }
        /* Recipient 1 is put out of the way: deferred for a long time. */
        if (cases[i].setup != HELD)
            defer(q, T0, "A", 1, T0 + 1000 * MIN);
        struct queue_work *w = NULL;
        int n = pick(q, T0 + cases[i].now, 10, 10, &w);
        bool due = n == 1 && w[0].n_rcpts == 1 && w[0].rcpt_indexes[0] == 0;
        if (due != cases[i].want_due || (!due && n != 0))
            fail_msg("%s: %d items", cases[i].label, n);
        if (due) {
            assert_int_equal(w[0].kind, QUEUE_WORK_DELIVER);
            assert_string_equal(w[0].queue_id, "A");
            assert_string_equal(w[0].dest, "[one.test]:25");
        }
        queue_work_free(w, (size_t)n);
        assert_int_equal(queue_sched_index_check(q), 0);
        queue_free(q);
    }
}

static void test_group_by_destination(void **state)
{
    struct queue *q = *state;
    enq(q, T0, "A", "a1@one.test", "a2@two.test", "a3@one.test", 0);
    enq(q, T0, "B", "b1@one.test", NULL, NULL, 0);
    struct queue_work *w = NULL;
    int n = pick(q, T0, 10, 10, &w);
    assert_int_equal(n, 3);
    /* Same time: acceptance order, then recipient order within the message. */
    assert_string_equal(w[0].queue_id, "A");
    assert_string_equal(w[0].dest, "[one.test]:25");
    assert_int_equal(w[0].n_rcpts, 2);
    assert_int_equal(w[0].rcpt_indexes[0], 0);
    assert_int_equal(w[0].rcpt_indexes[1], 2);
    assert_string_equal(w[1].queue_id, "A");
    assert_string_equal(w[1].dest, "[two.test]:25");
    assert_int_equal(w[1].n_rcpts, 1);
    assert_int_equal(w[1].rcpt_indexes[0], 1);
    assert_string_equal(w[2].queue_id, "B");
    assert_string_equal(w[2].dest, "[one.test]:25");
    for (int i = 0; i < n; i++)
        assert_int_equal(w[i].kind, QUEUE_WORK_DELIVER);
    queue_work_free(w, (size_t)n);
}

/* Table: the per-destination limit counts live leases of distinct messages. */
static void test_per_destination_limit(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        unsigned max_per_dest;
        int existing;         /* messages already leased to [one.test]:25 */
        bool existing_dead;   /* those leases belong to a dead boot of this node */
        bool existing_lapsed; /* those leases have lapsed */
        int want_one;         /* items for [one.test]:25 (dead or lapsed leases are
                                 due again, and take the first slots themselves) */
    } cases[] = {
        {"room for two", 2, 0, false, false, 2},
        {"no limit", 0, 0, false, false, 4},
        {"one live lease", 2, 1, false, false, 1},
        {"full", 2, 2, false, false, 0},
        {"dead leases do not count", 2, 2, true, false, 2},
        {"lapsed leases do not count", 2, 2, false, true, 2},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue *q = queue_new();
        /* Two recipients of one message leased to one destination count once. */
        enq(q, T0, "L0", "a@one.test", "b@one.test", NULL, 0);
        enq(q, T0, "L1", "a@one.test", NULL, NULL, 0);
        enq(q, T0, "F0", "a@one.test", NULL, NULL, 0);
        enq(q, T0, "F1", "a@one.test", NULL, NULL, 0);
        enq(q, T0, "F2", "a@one.test", NULL, NULL, 0);
        enq(q, T0, "F3", "a@one.test", NULL, NULL, 0);
        enq(q, T0, "T", "a@two.test", NULL, NULL, 0);
        const char *boot = cases[i].existing_dead ? "boot-old" : "other";
        uint64_t node = cases[i].existing_dead ? 1 : 2;
        uint64_t exp = cases[i].existing_lapsed ? T0 + MIN : T0 + 100 * MIN;
        for (int k = 0; k < 2; k++) {
            const char *id = k == 0 ? "L0" : "L1";
            if (k < cases[i].existing) {
                lease(q, T0, id, 0, node, boot, exp, 10 + (uint64_t)k, "[one.test]:25");
                if (k == 0)
                    lease(q, T0, id, 1, node, boot, exp, 10, "[one.test]:25");
            } else {
                /* Not a candidate: deferred out of the way. */
                defer(q, T0, id, 0, T0 + 1000 * MIN);
                if (k == 0)
                    defer(q, T0, id, 1, T0 + 1000 * MIN);
            }
        }
        struct queue_work *w = NULL;
        int n = pick(q, T0 + 2 * MIN, cases[i].max_per_dest, 100, &w);
        int one = 0, two = 0;
        for (int k = 0; k < n; k++) {
            if (strcmp(w[k].dest, "[one.test]:25") == 0)
                one++;
            if (strcmp(w[k].dest, "[two.test]:25") == 0)
                two++;
        }
        if (one != cases[i].want_one)
            fail_msg("%s: %d items for one.test", cases[i].label, one);
        /* Another destination is not affected. */
        assert_int_equal(two, 1);
        queue_work_free(w, (size_t)n);
        assert_int_equal(queue_sched_index_check(q), 0);
        queue_free(q);
    }
}

static void test_noroute_and_expire(void **state)
{
    struct queue *q = *state;
    enq(q, T0, "N", "a@noroute.test", "b@one.test", NULL, 0);
    enq(q, T0, "X", "a@one.test", "b@noroute.test", "c@one.test", T0 + 10 * MIN);
    enq(q, T0, "Z", "a@one.test", NULL, NULL, 0); /* expires_at 0: never */
    /* X's recipient 2 is under a lease that lapses at +5 min. */
    lease(q, T0, "X", 2, 2, "b", T0 + 5 * MIN, 9, "[one.test]:25");

    route_calls = 0;
    struct queue_work *w = NULL;
    int n = pick(q, T0 + 20 * MIN, 10, 10, &w);
    assert_int_equal(n, 4);
    assert_int_equal(w[0].kind, QUEUE_WORK_NOROUTE);
    assert_string_equal(w[0].queue_id, "N");
    assert_string_equal(w[0].dest, "");
    assert_int_equal(w[0].n_rcpts, 1);
    assert_int_equal(w[0].rcpt_indexes[0], 0);
    assert_int_equal(w[1].kind, QUEUE_WORK_DELIVER);
    assert_string_equal(w[1].queue_id, "N");
    assert_int_equal(w[2].kind, QUEUE_WORK_EXPIRE);
    assert_string_equal(w[2].queue_id, "X");
    assert_int_equal(w[2].n_rcpts, 3);
    assert_string_equal(w[2].dest, "");
    assert_int_equal(w[3].kind, QUEUE_WORK_DELIVER);
    assert_string_equal(w[3].queue_id, "Z");
    /* No route lookups for the expired message, one per domain for the rest. */
    assert_int_equal(route_calls, 2);
    queue_work_free(w, (size_t)n);

    /* Before its expiry X is delivered normally, except the leased recipient. */
    n = pick(q, T0 + 1 * MIN, 10, 10, &w);
    int expire = 0, x_items = 0;
    for (int k = 0; k < n; k++) {
        expire += w[k].kind == QUEUE_WORK_EXPIRE;
        if (strcmp(w[k].queue_id, "X") == 0) {
            x_items++;
            for (size_t r = 0; r < w[k].n_rcpts; r++)
                assert_int_not_equal(w[k].rcpt_indexes[r], 2);
        }
    }
    assert_int_equal(expire, 0);
    assert_int_equal(x_items, 2); /* one.test and a NOROUTE item */
    queue_work_free(w, (size_t)n);

    /* The EXPIRE item, turned into an Outcome with lease_id 0, expires all three. */
    struct fx_outcome o = {.id = "X",
                           .lease_id = 0,
                           .n = 3,
                           .res = {{0, HAMR__RCPT_RESULT__STATUS__EXPIRED, 0, "expired"},
                                   {1, HAMR__RCPT_RESULT__STATUS__EXPIRED, 0, "expired"},
                                   {2, HAMR__RCPT_RESULT__STATUS__EXPIRED, 0, "expired"}}};
    struct queue_apply_result r = fx_outcome(q, T0 + 20 * MIN, &o);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.dsn_generated, 1);
    assert_null(queue_find(q, "X"));
}

/* A live lease of a dead boot on an expired message is left until it lapses. */
static void test_expire_waits_for_dead_lease(void **state)
{
    struct queue *q = *state;
    enq(q, T0, "X", "a@one.test", NULL, NULL, T0 + MIN);
    lease(q, T0, "X", 0, 1, "boot-old", T0 + 10 * MIN, 3, "[one.test]:25");
    struct queue_work *w = NULL;
    int n = pick(q, T0 + 5 * MIN, 10, 10, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
    n = pick(q, T0 + 10 * MIN, 10, 10, &w);
    assert_int_equal(n, 1);
    assert_int_equal(w[0].kind, QUEUE_WORK_EXPIRE);
    queue_work_free(w, (size_t)n);
}

static void test_order_by_next_attempt(void **state)
{
    struct queue *q = *state;
    enq(q, T0, "A", "a@one.test", NULL, NULL, 0);
    enq(q, T0 + 1, "B", "b@two.test", NULL, NULL, 0);
    enq(q, T0 + 2, "C", "c@three.test", NULL, NULL, 0);
    enq(q, T0 + 3, "D", "d@four.test", NULL, NULL, 0);
    defer(q, T0 + 5, "A", 0, T0 + 50 * MIN);
    defer(q, T0 + 5, "B", 0, T0 + 30 * MIN);
    defer(q, T0 + 5, "D", 0, T0 + 30 * MIN);
    struct queue_work *w = NULL;
    int n = pick(q, T0 + 60 * MIN, 10, 10, &w);
    assert_int_equal(n, 4);
    static const char *const want[] = {"C", "B", "D", "A"};
    for (int i = 0; i < 4; i++)
        assert_string_equal(w[i].queue_id, want[i]);
    queue_work_free(w, (size_t)n);

    /* max_items takes the oldest due first. */
    static const struct {
        size_t max_items;
        int want_n;
    } limits[] = {{1, 1}, {2, 2}, {3, 3}, {4, 4}, {100, 4}, {0, 4}};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(limits); i++) {
        n = pick(q, T0 + 60 * MIN, 10, limits[i].max_items, &w);
        assert_int_equal(n, limits[i].want_n);
        for (int k = 0; k < n; k++)
            assert_string_equal(w[k].queue_id, want[k]);
        queue_work_free(w, (size_t)n);
    }
}

/* Picked work, once leased, is not picked again; released when the lease lapses. */
static void test_pick_lease_cycle(void **state)
{
    struct queue *q = *state;
    enq(q, T0, "A", "a@one.test", "b@two.test", NULL, 0);
    struct queue_work *w = NULL;
    int n = pick(q, T0, 10, 10, &w);
    assert_int_equal(n, 2);
    for (int i = 0; i < n; i++) {
        struct fx_lease l = {.node = 1,
                             .term = 1,
                             .expires = T0 + 5 * MIN,
                             .boot = "boot-now",
                             .id = w[i].queue_id,
                             .n = w[i].n_rcpts,
                             .lease_id = 100 + (uint64_t)i,
                             .dest = w[i].dest};
        memcpy(l.idx, w[i].rcpt_indexes, w[i].n_rcpts * sizeof(uint32_t));
        fx_lease(q, T0 + 1, &l);
    }
    queue_work_free(w, (size_t)n);
    n = pick(q, T0 + 2, 10, 10, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
    /* With a limit of 1 per destination, the live leases block new work there. */
    enq(q, T0 + 3, "B", "c@one.test", NULL, NULL, 0);
    n = pick(q, T0 + 4, 1, 10, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
    n = pick(q, T0 + 5 * MIN, 1, 10, &w);
    assert_int_equal(n, 2); /* A's two recipients lapsed; B waits behind A for one.test */
    assert_string_equal(w[0].queue_id, "A");
    assert_string_equal(w[1].queue_id, "A");
    queue_work_free(w, (size_t)n);
}

/*
 * test_backlog_not_walked - 500 messages deferred for an hour cost nothing:
 * a pick for a new message routes only its recipient, and the backlog comes
 * back, whole, once its retry time is reached.
 */
static void test_backlog_not_walked(void **state)
{
    struct queue *q = *state;
    char id[32];
    for (int i = 0; i < 500; i++) {
        snprintf(id, sizeof(id), "D%03d", i);
        enq(q, T0, id, "x@down.test", NULL, NULL, 0);
        defer(q, T0 + 1, id, 0, T0 + 60 * MIN);
    }
    enq(q, T0 + 2, "NEW", "y@up.test", NULL, NULL, 0);
    struct queue_work *w = NULL;
    route_calls = 0;
    int n = pick(q, T0 + 3, 0, 0, &w);
    assert_int_equal(n, 1);
    assert_string_equal(w[0].queue_id, "NEW");
    assert_int_equal(route_calls, 1);
    queue_work_free(w, (size_t)n);

    n = pick(q, T0 + 60 * MIN, 0, 0, &w);
    assert_int_equal(n, 501);
    assert_string_equal(w[0].queue_id, "NEW"); /* due first (T0 + 2) */
    assert_string_equal(w[1].queue_id, "D000");
    assert_string_equal(w[500].queue_id, "D499");
    queue_work_free(w, (size_t)n);
}

/* rnd - xorshift64, deterministic per test. */
static uint64_t rnd_state = 88172645463325252ull;
static uint64_t rnd(uint64_t n)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state % n;
}

/*
 * The policy written the plain way, as an oracle: every message in
 * acceptance order, every due recipient routed and grouped, every group
 * sorted, then taken in order within the limits (queue_sched.h).
 */
struct ref_group {
    enum queue_work_kind kind;
    uint64_t first_ms, seq, made;
    char id[QUEUE_ID_MAX];
    char dest[QUEUE_DEST_MAX];
    uint32_t idx[FX_MAX];
    size_t n;
};

struct ref_ctx {
    uint64_t now;
    unsigned per_dest;
    struct ref_group g[4096];
    size_t n;
    char dest[1024][QUEUE_DEST_MAX]; /* live leases: one entry per (message, destination) */
    size_t n_dest;
};

static bool ref_dead(const struct queue_rcpt *r)
{
    return queue_rcpt_lease(r)->node == 1 &&
           strcmp(queue_rcpt_lease(r)->boot_id ? queue_rcpt_lease(r)->boot_id : "", "boot-now") !=
               0;
}

static int ref_count_cb(void *arg, const struct queue_msg *m)
{
    struct ref_ctx *x = arg;
    size_t first = x->n_dest;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        if (r->state != QUEUE_RCPT_LEASED || queue_rcpt_lease(r)->expires_ms <= x->now ||
            ref_dead(r))
            continue;
        const char *d = queue_rcpt_lease(r)->dest ? queue_rcpt_lease(r)->dest : "";
        bool seen = false;
        for (size_t k = first; k < x->n_dest; k++)
            seen |= strcmp(x->dest[k], d) == 0;
        if (!seen) {
            assert_true(x->n_dest < 1024);
            hamr_strlcpy(x->dest[x->n_dest++], d, QUEUE_DEST_MAX);
        }
    }
    return 0;
}

static void ref_add(struct ref_ctx *x,
                    size_t first,
                    const struct queue_msg *m,
                    enum queue_work_kind kind,
                    const char *dest,
                    uint32_t i)
{
    struct ref_group *g = NULL;
    for (size_t k = first; k < x->n && g == NULL; k++)
        if (x->g[k].kind == kind && strcmp(x->g[k].dest, dest) == 0)
            g = &x->g[k];
    if (g == NULL) {
        assert_true(x->n < 4096);
        g = &x->g[x->n];
        memset(g, 0, sizeof(*g));
        g->kind = kind;
        g->first_ms = UINT64_MAX;
        g->seq = queue_msg_item(m)->seq;
        g->made = x->n++;
        hamr_strlcpy(g->id, m->id, sizeof(g->id));
        hamr_strlcpy(g->dest, dest, sizeof(g->dest));
    }
    g->idx[g->n++] = i;
    if (m->rcpts[i].next_attempt_ms < g->first_ms)
        g->first_ms = m->rcpts[i].next_attempt_ms;
}

static int ref_collect_cb(void *arg, const struct queue_msg *m)
{
    struct ref_ctx *x = arg;
    if (m->held)
        return 0;
    size_t first = x->n;
    bool expired = m->expires_at_ms != 0 && x->now >= m->expires_at_ms;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        bool due = r->state == QUEUE_RCPT_PENDING && r->next_attempt_ms <= x->now;
        bool lapsed = r->state == QUEUE_RCPT_LEASED && queue_rcpt_lease(r)->expires_ms <= x->now;
        bool dead = r->state == QUEUE_RCPT_LEASED && !lapsed && ref_dead(r);
        if (!due && !lapsed && !dead)
            continue;
        char dest[QUEUE_DEST_MAX];
        if (expired) {
            if (due || lapsed)
                ref_add(x, first, m, QUEUE_WORK_EXPIRE, "", (uint32_t)i);
        } else if (route_by_domain(NULL, r->addr, dest, sizeof(dest)) != 0) {
            if (due || lapsed)
                ref_add(x, first, m, QUEUE_WORK_NOROUTE, "", (uint32_t)i);
        } else {
            ref_add(x, first, m, QUEUE_WORK_DELIVER, dest, (uint32_t)i);
        }
    }
    return 0;
}

static int ref_order(const void *a, const void *b)
{
    const struct ref_group *x = a, *y = b;
    if (x->first_ms != y->first_ms)
        return x->first_ms < y->first_ms ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    return x->made < y->made ? -1 : (x->made > y->made);
}

/* ref_pick_matches - the oracle's pick equals queue_sched_pick's. */
static void ref_pick_matches(const struct queue *q,
                             uint64_t now,
                             unsigned per_dest,
                             size_t max_items)
{
    static struct ref_ctx x;
    memset(&x, 0, sizeof(x));
    x.now = now;
    x.per_dest = per_dest;
    queue_foreach(q, ref_count_cb, &x);
    queue_foreach(q, ref_collect_cb, &x);
    qsort(x.g, x.n, sizeof(x.g[0]), ref_order);
    struct queue_work *w = NULL;
    int n = pick(q, now, per_dest, max_items, &w);
    size_t k = 0;
    for (size_t i = 0; i < x.n && (max_items == 0 || k < max_items); i++) {
        const struct ref_group *g = &x.g[i];
        if (g->kind == QUEUE_WORK_DELIVER) {
            unsigned c = 0;
            for (size_t d = 0; d < x.n_dest; d++)
                c += strcmp(x.dest[d], g->dest) == 0;
            if (per_dest != 0 && c >= per_dest)
                continue;
            assert_true(x.n_dest < 1024);
            hamr_strlcpy(x.dest[x.n_dest++], g->dest, QUEUE_DEST_MAX);
        }
        assert_true((int)k < n);
        assert_int_equal(w[k].kind, g->kind);
        assert_string_equal(w[k].queue_id, g->id);
        assert_string_equal(w[k].dest, g->dest);
        assert_int_equal(w[k].n_rcpts, g->n);
        assert_memory_equal(w[k].rcpt_indexes, g->idx, g->n * sizeof(uint32_t));
        k++;
    }
    assert_int_equal(n, (int)k);
    queue_work_free(w, (size_t)n);
}

/* same_picks - the pick with the scheduler index and the one walking every message agree. */
static void same_picks(struct queue *q, uint64_t now, unsigned per_dest, size_t max_items)
{
    struct queue_work *a = NULL, *b = NULL;
    queue_set_sched_index(q, true);
    int na = pick(q, now, per_dest, max_items, &a);
    queue_set_sched_index(q, false);
    int nb = pick(q, now, per_dest, max_items, &b);
    queue_set_sched_index(q, true);
    assert_int_equal(na, nb);
    for (int i = 0; i < na; i++) {
        assert_int_equal(a[i].kind, b[i].kind);
        assert_string_equal(a[i].queue_id, b[i].queue_id);
        assert_string_equal(a[i].dest, b[i].dest);
        assert_int_equal(a[i].n_rcpts, b[i].n_rcpts);
        assert_memory_equal(a[i].rcpt_indexes, b[i].rcpt_indexes, a[i].n_rcpts * sizeof(uint32_t));
    }
    queue_work_free(a, (size_t)na);
    queue_work_free(b, (size_t)nb);
}

/*
 * test_index_matches_full_walk - 3000 random steps (enqueue, lease, every
 * kind of outcome, hold, release, flush, bounce, delete, a restore from a
 * snapshot, time moving on): after each, the indexes match the state, the
 * pick from them equals the pick from a walk over the whole queue, and both
 * equal the policy written the plain way (ref_pick_matches), with and
 * without limits.
 */
static void test_index_matches_full_walk(void **state)
{
    struct queue *q = *state;
    static const char *const domains[] = {"a.test", "b.test", "c.test", "noroute.test"};
    uint64_t now = T0, lease_id = 1;
    char id[32], rcpt[4][48];
    int next_id = 0;
    for (int step = 0; step < 3000; step++) {
        now += rnd(20000);
        snprintf(id, sizeof(id), "M%04d", next_id > 0 ? (int)rnd((uint64_t)next_id) : 0);
        switch (rnd(12)) {
            case 0:
            case 1:
            case 2: { /* a new message with one to three recipients */
                snprintf(id, sizeof(id), "M%04d", next_id++);
                for (int i = 0; i < 3; i++)
                    snprintf(rcpt[i], sizeof(rcpt[i]), "u%d@%s", i, domains[rnd(4)]);
                size_t n = 1 + rnd(3);
                uint64_t expires = rnd(4) == 0 ? now + rnd(5 * MIN) : 0;
                enq(q, now, id, rcpt[0], n > 1 ? rcpt[1] : NULL, n > 2 ? rcpt[2] : NULL, expires);
                break;
            }
            case 3:
            case 4: { /* what the leader would do: lease what a pick returns */
                struct queue_work *w = NULL;
                int n = pick(q, now, 2, 5, &w);
                for (int i = 0; i < n; i++) {
                    if (w[i].kind != QUEUE_WORK_DELIVER)
                        continue;
                    struct fx_lease l = {.node = 1 + rnd(2),
                                         .term = 1,
                                         .expires = now + rnd(2 * MIN),
                                         .boot = rnd(3) == 0 ? "boot-old" : "boot-now",
                                         .id = w[i].queue_id,
                                         .n = w[i].n_rcpts,
                                         .lease_id = lease_id++,
                                         .dest = w[i].dest};
                    memcpy(l.idx, w[i].rcpt_indexes, w[i].n_rcpts * sizeof(uint32_t));
                    fx_lease(q, now, &l);
                }
                queue_work_free(w, (size_t)n);
                break;
            }
            case 5:
            case 6: { /* an outcome for whatever recipient 0 holds (lease 0: expiry) */
                const struct queue_msg *m = queue_find(q, id);
                if (m == NULL)
                    break;
                static const Hamr__RcptResult__Status st[] = {
                    HAMR__RCPT_RESULT__STATUS__DELIVERED, HAMR__RCPT_RESULT__STATUS__DEFERRED,
                    HAMR__RCPT_RESULT__STATUS__BOUNCED, HAMR__RCPT_RESULT__STATUS__EXPIRED};
                uint32_t ri = (uint32_t)rnd(m->n_rcpts);
                uint64_t lid = m->rcpts[ri].state == QUEUE_RCPT_LEASED
                                   ? queue_rcpt_lease(&m->rcpts[ri])->id
                                   : 0;
                struct fx_outcome o = {.id = id,
                                       .lease_id = lid,
                                       .n = 1,
                                       .res = {{ri, st[rnd(4)], 451, "x"}},
                                       .next_ms = now + rnd(3 * MIN),
                                       .reporter = "mx.test",
                                       .dsn_expires = now + 60 * MIN};
                fx_outcome(q, now, &o);
                break;
            }
            case 7:
                if (queue_find(q, id) != NULL)
                    fx_admin(q, now, rnd(2) ? HAMR__ADMIN__OP__HOLD : HAMR__ADMIN__OP__RELEASE, id);
                break;
            case 8:
                fx_admin(q, now, HAMR__ADMIN__OP__FLUSH, rnd(4) == 0 ? "" : id);
                break;
            case 9:
                if (queue_find(q, id) != NULL)
                    fx_admin(q, now, rnd(2) ? HAMR__ADMIN__OP__BOUNCE : HAMR__ADMIN__OP__DELETE,
                             id);
                break;
            case 10:
                if (rnd(20) == 0) { /* a follower installing a snapshot */
                    struct queue *r = fx_snapshot_roundtrip(q);
                    queue_free(q);
                    q = r;
                    *state = q;
                }
                break;
            default:
                break;
        }
        assert_int_equal(queue_sched_index_check(q), 0);
        same_picks(q, now, 0, 0);
        same_picks(q, now, 2, 7);
        ref_pick_matches(q, now, 0, 0);
        ref_pick_matches(q, now, 1, 3);
        ref_pick_matches(q, now + rnd(3 * MIN), 2, 0);
        ref_pick_matches(q, now, 3, 2);
        same_picks(q, now + rnd(3 * MIN), 1, 0);
    }
}

/* An administrative bounce of a message with one recipient still out on a lease. */
static void test_index_after_admin_bounce(void **state)
{
    struct queue *q = *state;
    enq(q, T0, "A", "a@one.test", "b@two.test", NULL, 0);
    lease(q, T0 + 1, "A", 0, 1, "boot-now", T0 + 10 * MIN, 7, "[one.test]:25");
    fx_admin(q, T0 + 2, HAMR__ADMIN__OP__BOUNCE, "A");
    assert_int_equal(fx_rcpt(q, "A", 1)->state, QUEUE_RCPT_BOUNCED);
    assert_int_equal(queue_sched_index_check(q), 0);
    struct queue_work *w = NULL;
    int n = pick(q, T0 + 3, 0, 0, &w);
    assert_int_equal(n, 1); /* the DSN to s@src.test; A waits for its lease */
    assert_string_not_equal(w[0].queue_id, "A");
    queue_work_free(w, (size_t)n);
    n = pick(q, T0 + 10 * MIN, 0, 0, &w);
    assert_int_equal(n, 2);
    queue_work_free(w, (size_t)n);
}

/*
 * test_heap_out_of_memory - wherever an Enqueue runs out of memory (the
 * scheduler's heap growing included), the message is either refused with
 * the queue unchanged or queued and found by the next pick.
 */
/* ------------------------------------------------------------------------
 * The domain index: a pick that stops at what it can hand out
 * ------------------------------------------------------------------------ */

/* pick_ids - the queue ids a pick returned, space-separated, into out. */
static void pick_ids(struct queue_work *w, int n, char *out, size_t outlen)
{
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        size_t len = strlen(out);
        snprintf(out + len, outlen - len, "%s%s", i ? " " : "", w[i].queue_id);
    }
}

/* expect_pick - the ids of a pick (in order), and the same with the index off. */
static void expect_pick(struct queue *q,
                        uint64_t now,
                        unsigned per_dest,
                        size_t max_items,
                        const char *want)
{
    struct queue_work *w = NULL;
    int n = pick(q, now, per_dest, max_items, &w);
    char got[1024];
    pick_ids(w, n, got, sizeof(got));
    queue_work_free(w, (size_t)n);
    assert_string_equal(got, want);
    same_picks(q, now, per_dest, max_items);
    assert_int_equal(queue_sched_index_check(q), 0);
}

/*
 * 50 domains with 40 due messages each, one domain at its limit: every
 * other domain gets its two oldest, the full one nothing; with max_items
 * the oldest groups win whatever their domain.
 */
static void test_domain_fair_share(void **state)
{
    struct queue *q = *state;
    char id[32], rcpt[48];
    for (int i = 0; i < 40 * 50; i++) {
        snprintf(id, sizeof(id), "M%04d", i);
        snprintf(rcpt, sizeof(rcpt), "u@d%02d.test", i % 50);
        enq(q, T0 + (uint64_t)i, id, rcpt, NULL, NULL, 0);
    }
    lease(q, T0 + 5000, "M0000", 0, 2, "other", T0 + 60 * MIN, 1, "[d00.test]:25");
    lease(q, T0 + 5000, "M0050", 0, 2, "other", T0 + 60 * MIN, 2, "[d00.test]:25");
    struct queue_work *w = NULL;
    int n = pick(q, T0 + MIN, 2, 0, &w);
    assert_int_equal(n, 49 * 2);
    int per[50] = {0};
    for (int i = 0; i < n; i++) {
        int m = atoi(w[i].queue_id + 1), d = atoi(w[i].dest + 2);
        assert_int_equal(m % 50, d);
        assert_true(m / 50 < 2); /* the two oldest of the domain */
        per[d]++;
    }
    assert_int_equal(per[0], 0);
    for (int d = 1; d < 50; d++)
        assert_int_equal(per[d], 2);
    queue_work_free(w, (size_t)n);
    same_picks(q, T0 + MIN, 2, 0);
    expect_pick(q, T0 + MIN, 2, 5, "M0001 M0002 M0003 M0004 M0005");
    expect_pick(q, T0 + MIN, 1, 3, "M0001 M0002 M0003");
}

/* One domain: a held message is passed over, lapsed leases come back first. */
static void test_domain_lapsed_and_held(void **state)
{
    struct queue *q = *state;
    char id[32];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "M%03d", i);
        enq(q, T0 + (uint64_t)i, id, "u@one.test", NULL, NULL, 0);
    }
    lease(q, T0 + 300, "M000", 0, 2, "other", T0 + MIN, 1, "[one.test]:25");
    lease(q, T0 + 300, "M001", 0, 2, "other", T0 + MIN, 2, "[one.test]:25");
    fx_admin(q, T0 + 301, HAMR__ADMIN__OP__HOLD, "M002");
    expect_pick(q, T0 + 302, 4, 0, "M003 M004");
    expect_pick(q, T0 + 302, 2, 0, "");
    expect_pick(q, T0 + MIN, 4, 0, "M000 M001 M003 M004");
    fx_admin(q, T0 + MIN, HAMR__ADMIN__OP__RELEASE, "M002");
    expect_pick(q, T0 + MIN, 4, 0, "M000 M001 M002 M003");
    /* A deferred message goes behind the ones due now, and is not due before its time. */
    defer(q, T0 + MIN, "M003", 0, T0 + 2 * MIN);
    expect_pick(q, T0 + MIN, 4, 0, "M000 M001 M002 M004");
    expect_pick(q, T0 + 2 * MIN, 4, 0, "M000 M001 M002 M004");
    expect_pick(q, T0 + 2 * MIN, 0, 6, "M000 M001 M002 M004 M005 M006");
}

/* A destination at its limit still has its expired messages expired. */
static void test_domain_expiry_at_full_dest(void **state)
{
    struct queue *q = *state;
    char id[32];
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof(id), "M%03d", i);
        enq(q, T0 + (uint64_t)i, id, "u@one.test", NULL, NULL, i == 150 ? T0 + MIN : 0);
    }
    lease(q, T0 + 400, "M000", 0, 2, "other", T0 + 60 * MIN, 1, "[one.test]:25");
    lease(q, T0 + 400, "M001", 0, 2, "other", T0 + 60 * MIN, 2, "[one.test]:25");
    expect_pick(q, T0 + MIN - 1, 2, 0, "");
    struct queue_work *w = NULL;
    int n = pick(q, T0 + MIN, 2, 0, &w);
    assert_int_equal(n, 1);
    assert_int_equal(w[0].kind, QUEUE_WORK_EXPIRE);
    assert_string_equal(w[0].queue_id, "M150");
    queue_work_free(w, (size_t)n);
    same_picks(q, T0 + MIN, 2, 0);
    /* Room again: the expiry first (it is the oldest due), then the oldest. */
    expect_pick(q, T0 + MIN, 3, 0, "M002 M150");
}

/* Route limits: "[two.test]:25" may have two_max leased messages (0: suspended); calls counted. */
static int dest_max_calls, two_max;

static int dest_max_two(void *data, const char *dest)
{
    (void)data;
    dest_max_calls++;
    return strcmp(dest, "[two.test]:25") == 0 ? two_max : -1;
}

/*
 * A suspended destination (dest_max 0) gets no DELIVER work, others theirs;
 * its expired recipients still expire. The same with the index and walking
 * every message, and the index asks once per destination and pick. A
 * destination on probation (dest_max 1) gets one message, the oldest due.
 */
static void test_suspended_destination(void **state)
{
    struct queue *q = *state;
    enq(q, T0, "A", "a@one.test", "b@two.test", NULL, 0);
    enq(q, T0 + 1, "B", "c@two.test", NULL, NULL, 0);
    enq(q, T0 + 2, "C", "d@two.test", NULL, NULL, T0 + MIN);
    enq(q, T0 + 3, "D", "e@one.test", NULL, NULL, 0);
    const struct queue_route lim_route = {
        .data = NULL, .dest = route_by_domain, .dest_max = dest_max_two};
    struct queue_sched_limits lim = {
        .max_per_dest = 10, .max_items = 0, .self_node = 1, .self_boot_id = "boot-now"};
    two_max = 0;
    for (int indexed = 1; indexed >= 0; indexed--) {
        queue_set_sched_index(q, indexed != 0);
        for (int late = 0; late <= 1; late++) {
            struct queue_work *w = NULL;
            dest_max_calls = 0;
            int n = queue_sched_pick(q, late ? T0 + MIN : T0 + 10, &lim, &lim_route, &w);
            /* Early: A's and D's one.test recipients. Late: C has expired too. */
            assert_int_equal(n, late ? 3 : 2);
            for (int i = 0; i < n; i++) {
                if (w[i].kind == QUEUE_WORK_DELIVER) {
                    assert_string_equal(w[i].dest, "[one.test]:25");
                    assert_int_equal(w[i].n_rcpts, 1);
                } else {
                    assert_int_equal(w[i].kind, QUEUE_WORK_EXPIRE);
                    assert_string_equal(w[i].queue_id, "C");
                }
            }
            if (indexed)
                assert_int_equal(dest_max_calls, 2); /* one.test's and two.test's next hops */
            queue_work_free(w, (size_t)n);
        }
    }
    /* On probation: one message for two.test, the oldest due (A's second recipient). */
    two_max = 1;
    for (int indexed = 1; indexed >= 0; indexed--) {
        queue_set_sched_index(q, indexed != 0);
        struct queue_work *w = NULL;
        int n = queue_sched_pick(q, T0 + 10, &lim, &lim_route, &w);
        int two = 0;
        for (int i = 0; i < n; i++) {
            if (strcmp(w[i].dest, "[two.test]:25") != 0)
                continue;
            two++;
            assert_string_equal(w[i].queue_id, "A");
            assert_int_equal(w[i].rcpt_indexes[0], 1);
        }
        assert_int_equal(two, 1);
        assert_int_equal(n, 3); /* A and D to one.test, A to two.test */
        queue_work_free(w, (size_t)n);
    }
    /* Without the callback, two.test gets its work. */
    queue_set_sched_index(q, true);
    struct queue_work *w = NULL;
    int n = queue_sched_pick(q, T0 + 10, &lim, &route, &w);
    assert_int_equal(n, 5); /* A twice (two next hops), B, C, D */
    queue_work_free(w, (size_t)n);
}

/* Route: x.test and y.test share one next hop; other domains as route_by_domain. */
static int route_shared(void *data, const char *rcpt, char *dest, size_t destlen)
{
    const char *at = strrchr(rcpt, '@');
    if (at != NULL && (strcmp(at + 1, "x.test") == 0 || strcmp(at + 1, "y.test") == 0)) {
        snprintf(dest, destlen, "[mx.test]:25");
        return 0;
    }
    return route_by_domain(data, rcpt, dest, destlen);
}

/* Two domains, one destination: one item per message, the domains' heaps merged in order. */
static void test_domains_share_destination(void **state)
{
    struct queue *q = *state;
    enq(q, T0, "A", "a@x.test", "b@y.test", "c@z.test", 0);
    enq(q, T0 + 1, "B", "a@y.test", NULL, NULL, 0);
    enq(q, T0 + 2, "C", "a@x.test", NULL, NULL, 0);
    enq(q, T0 + 3, "D", "a@y.test", "b@x.test", NULL, 0);
    defer(q, T0 + 4, "A", 0, T0 + MIN); /* A's x.test recipient later: y.test still due */
    const struct queue_route shared = {.data = NULL, .dest = route_shared};
    for (int on = 1; on >= 0; on--) {
        queue_set_sched_index(q, on);
        for (unsigned per = 0; per <= 4; per++) {
            struct queue_sched_limits lim = {.max_per_dest = per, .self_node = 1};
            struct queue_work *w = NULL;
            int n = queue_sched_pick(q, T0 + 10, &lim, &shared, &w);
            char got[256];
            pick_ids(w, n, got, sizeof(got));
            /* z.test always; mx.test: A (only b@y.test), B, C, D (both) in order,
             * each once (0: no limit). */
            static const char *const want[] = {"A A B C D", "A A", "A A B", "A A B C", "A A B C D"};
            assert_string_equal(got, want[per]);
            for (int i = 0; i < n; i++) {
                if (strcmp(w[i].queue_id, "D") == 0)
                    assert_int_equal(w[i].n_rcpts, 2);
                if (strcmp(w[i].queue_id, "A") == 0 && strcmp(w[i].dest, "[mx.test]:25") == 0) {
                    assert_int_equal(w[i].n_rcpts, 1);
                    assert_int_equal(w[i].rcpt_indexes[0], 1);
                }
            }
            queue_work_free(w, (size_t)n);
        }
    }
    queue_set_sched_index(q, true);
    assert_int_equal(queue_sched_index_check(q), 0);
}

/*
 * A pick costs what it hands out: 5000 due messages for a destination with
 * two free slots and 5000 for one at its limit are picked within 100
 * allocations, where a walk over the due messages makes a group (an
 * allocation) for each message of the free destination and runs out.
 */
static void test_domain_pick_costs_what_it_picks(void **state)
{
    struct queue *q = *state;
    char id[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(id, sizeof(id), "M%05d", i);
        enq(q, T0 + (uint64_t)i, id, i % 2 ? "u@two.test" : "u@one.test", NULL, NULL, 0);
    }
    lease(q, T0 + MIN, "M00001", 0, 2, "other", T0 + 60 * MIN, 1, "[two.test]:25");
    lease(q, T0 + MIN, "M00003", 0, 2, "other", T0 + 60 * MIN, 2, "[two.test]:25");
    struct queue_sched_limits lim = {.max_per_dest = 2, .max_items = 256, .self_node = 1};
    for (int on = 1; on >= 0; on--) {
        queue_set_sched_index(q, on);
        struct queue_work *w = NULL;
        fx_fail_after(100);
        int n = queue_sched_pick(q, T0 + MIN, &lim, &route, &w);
        bool failed = fx_fail_off();
        if (on) {
            assert_false(failed);
            assert_int_equal(n, 2);
            assert_string_equal(w[0].queue_id, "M00000");
            assert_string_equal(w[1].queue_id, "M00002");
        } else {
            assert_int_equal(n, HAMR_ENOMEM);
        }
        queue_work_free(w, n > 0 ? (size_t)n : 0);
    }
    queue_set_sched_index(q, true);
}

static void test_heap_out_of_memory(void **state)
{
    (void)state;
    for (long k = 0; k < 40; k++) {
        struct queue *q = queue_new();
        assert_non_null(q);
        char id[32];
        /* 63 messages: the next one makes the heap grow (64 -> 128). */
        for (int i = 0; i < 63; i++) {
            snprintf(id, sizeof(id), "P%02d", i);
            enq(q, T0, id, "a@one.test", NULL, NULL, 0);
            defer(q, T0, id, 0, T0 + 60 * MIN);
        }
        enq(q, T0, "P63", "a@one.test", NULL, NULL, 0);
        struct fx_enq e = {.id = "LAST", .sender = "s@src.test", .rcpts = {"b@two.test"}};
        size_t len;
        uint8_t *buf = fx_pack_enqueue(T0 + 1, &e, &len);
        struct queue_apply_result res;
        fx_fail_after(k);
        int rv = queue_apply(q, buf, len, &res);
        fx_fail_off();
        free(buf);
        struct queue_work *w = NULL;
        int n = pick(q, T0 + 2, 0, 0, &w);
        if (rv == 0 && res.status == 0) {
            assert_int_equal(n, 2);
            assert_string_equal(w[1].queue_id, "LAST");
        } else {
            assert_int_equal(n, 1);
            assert_null(queue_find(q, "LAST"));
        }
        assert_string_equal(w[0].queue_id, "P63");
        queue_work_free(w, (size_t)n);
        /* Later changes still reach the pick. */
        defer(q, T0 + 3, "P63", 0, T0 + 5 * MIN);
        n = pick(q, T0 + 4, 0, 0, &w);
        assert_int_equal(n, rv == 0 && res.status == 0 ? 1 : 0);
        queue_work_free(w, (size_t)n);
        n = pick(q, T0 + 60 * MIN, 0, 0, &w);
        assert_int_equal(n, rv == 0 && res.status == 0 ? 65 : 64);
        queue_work_free(w, (size_t)n);
        assert_int_equal(queue_sched_index_check(q), 0);
        queue_free(q);
    }
}

static void test_bad_arguments(void **state)
{
    struct queue *q = *state;
    struct queue_sched_limits lim = {.max_per_dest = 1, .max_items = 1};
    struct queue_route none = {.data = NULL, .dest = NULL};
    struct queue_work *w = NULL;
    assert_int_equal(queue_sched_pick(q, T0, &lim, &none, &w), HAMR_EINVAL);
    assert_int_equal(queue_sched_pick(q, T0, NULL, &route, &w), HAMR_EINVAL);
    /* An empty queue gives no work; self_boot_id may be NULL. */
    assert_int_equal(queue_sched_pick(q, T0, &lim, &route, &w), 0);
    queue_work_free(w, 0);
    assert_null(queue_work_free(NULL, 0));
}

static void test_backoff_table(void **state)
{
    (void)state;
    static const struct {
        uint32_t attempts;
        uint64_t min, max, want;
    } cases[] = {
        {0, 300000, 4000000, 300000},
        {1, 300000, 4000000, 600000},
        {2, 300000, 4000000, 1200000},
        {3, 300000, 4000000, 2400000},
        {4, 300000, 4000000, 4000000},
        {5, 300000, 4000000, 4000000},
        {63, 300000, 4000000, 4000000},
        {64, 1, UINT64_MAX, UINT64_MAX},
        {63, 1, UINT64_MAX, 1ull << 63},
        {1000, 1, UINT64_MAX, UINT64_MAX},
        {UINT32_MAX, 300000, 4000000, 4000000},
        {UINT32_MAX, 0, 4000000, 0},
        {0, 5000, 1000, 1000},
        {3, 1000, 1000, 1000},
        {10, 1, 1024, 1024},
        {9, 1, 1024, 512},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        uint64_t got = queue_sched_backoff(cases[i].attempts, cases[i].min, cases[i].max);
        if (got != cases[i].want)
            fail_msg("case %zu: %llu, want %llu", i, (unsigned long long)got,
                     (unsigned long long)cases[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_due_table),
        cmocka_unit_test_setup_teardown(test_group_by_destination, setup, teardown),
        cmocka_unit_test(test_per_destination_limit),
        cmocka_unit_test_setup_teardown(test_noroute_and_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expire_waits_for_dead_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_by_next_attempt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pick_lease_cycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backlog_not_walked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_matches_full_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_after_admin_bounce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_domain_fair_share, setup, teardown),
        cmocka_unit_test_setup_teardown(test_domain_lapsed_and_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_domain_expiry_at_full_dest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_domains_share_destination, setup, teardown),
        cmocka_unit_test_setup_teardown(test_suspended_destination, setup, teardown),
        cmocka_unit_test_setup_teardown(test_domain_pick_costs_what_it_picks, setup, teardown),
        cmocka_unit_test(test_heap_out_of_memory),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        cmocka_unit_test(test_backoff_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
