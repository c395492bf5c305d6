/*
 * test_queue.c - the replicated queue state machine: every entry kind, the
 * refusals, fencing, DSN generation, the done set, snapshots and the digest,
 * determinism over a long pseudo-random entry sequence, the node directory
 * (NodeInfo entries: insert, replace, order, refusals, snapshot and digest),
 * and the cluster feature level (ClusterLevel entries: raise, no-ops,
 * refusal above the build's format, snapshot, old snapshots, and the level
 * the leader may propose for a set of voters), and the outbound TLS of each
 * recipient's last attempt (format 2: set by Outcome from its level on, kept
 * through snapshots and the digest, ignored below the level, empty in old
 * entries), and the shared copies of repeated texts.
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
#include "proto/proto_frame.h"
#include "queue/internal.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue_fixture.h"

#define T0 1700000000000ull
#define MIN (60ull * 1000)
#define DELIVERED HAMR__RCPT_RESULT__STATUS__DELIVERED
#define DEFERRED HAMR__RCPT_RESULT__STATUS__DEFERRED
#define BOUNCED HAMR__RCPT_RESULT__STATUS__BOUNCED
#define EXPIRED HAMR__RCPT_RESULT__STATUS__EXPIRED

static int setup(void **state)
{
    *state = queue_new();
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    queue_free(*state);
    return 0;
}

/* digest_of - the queue's digest as a string to compare. */
static void digest_of(const struct queue *q, char hex[65])
{
    queue_digest(q, hex);
    assert_int_equal(strlen(hex), 64);
}

/* one_msg - enqueue "M" from a@example.org to three recipients at T0. */
static void one_msg(struct queue *q, const char *sender)
{
    struct fx_enq e = {.id = "M",
                       .sender = sender,
                       .rcpts = {"r0@one.test", "r1@two.test", "r2@one.test"},
                       .expires = T0 + 5 * 24 * 60 * MIN};
    struct queue_apply_result r = fx_enqueue(q, T0, &e);
    assert_int_equal(r.status, 0);
    assert_false(r.duplicate);
}

/* lease_all - lease the given indexes of id under lease_id to node 1 until T0 + 10 min. */
static struct queue_apply_result lease_idx(struct queue *q,
                                           uint64_t ts,
                                           const char *id,
                                           uint64_t lease_id,
                                           uint32_t i0,
                                           int n)
{
    struct fx_lease l = {.node = 1,
                         .term = 3,
                         .expires = ts + 10 * MIN,
                         .boot = "boot-a",
                         .id = id,
                         .n = (size_t)n,
                         .lease_id = lease_id,
                         .dest = "[10.0.0.1]:25"};
    for (int i = 0; i < n; i++)
        l.idx[i] = i0 + (uint32_t)i;
    return fx_lease(q, ts, &l);
}

/* tls_res - one result with its TLS fields; NULL fields are left out (an older writer). */
struct tls_res {
    uint32_t idx;
    Hamr__RcptResult__Status status;
    const char *policy;
    const char *tls;
};

/* tls_outcome_pack - a framed Outcome of up to FX_MAX results with TLS fields at ts. */
static uint8_t *tls_outcome_pack(uint64_t ts,
                                 const char *id,
                                 uint64_t lease_id,
                                 const struct tls_res *res,
                                 size_t n,
                                 size_t *len)
{
    Hamr__RcptResult rr[FX_MAX];
    Hamr__RcptResult *rrp[FX_MAX];
    assert_true(n <= FX_MAX);
    for (size_t i = 0; i < n; i++) {
        hamr__rcpt_result__init(&rr[i]);
        rr[i].rcpt_index = res[i].idx;
        rr[i].status = res[i].status;
        rr[i].smtp_code = res[i].status == DELIVERED ? 250 : 451;
        rr[i].diagnostic = "text";
        if (res[i].policy != NULL)
            rr[i].tls_policy = (char *)res[i].policy;
        if (res[i].tls != NULL)
            rr[i].tls = (char *)res[i].tls;
        rrp[i] = &rr[i];
    }
    Hamr__Outcome o = HAMR__OUTCOME__INIT;
    o.queue_id = (char *)id;
    o.lease_id = lease_id;
    o.n_results = n;
    o.results = rrp;
    o.next_attempt_ms = ts + MIN;
    o.reporter = "mx.test";
    o.dsn_expires_at_ms = ts + 24 * 60 * MIN;
    o.remote = "[10.0.0.1]:25";
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
    e.outcome = &o;
    return fx_pack(&e, ts, len);
}

/* tls_outcome - pack and apply; the command must take effect. */
static void tls_outcome(struct queue *q,
                        uint64_t ts,
                        uint64_t lease_id,
                        const struct tls_res *res,
                        size_t n)
{
    size_t len;
    uint8_t *b = tls_outcome_pack(ts, "M", lease_id, res, n, &len);
    assert_int_equal(fx_apply(q, b, len).status, 0);
}

/* assert_tls - recipient i of M has these TLS fields (NULL: none). */
static void assert_tls(const struct queue *q, size_t i, const char *policy, const char *tls)
{
    const struct queue_rcpt *r = fx_rcpt(q, "M", i);
    if (policy == NULL) {
        assert_null(queue_rcpt_tried(r)->tls_policy);
    } else {
        assert_non_null(queue_rcpt_tried(r)->tls_policy);
        assert_string_equal(queue_rcpt_tried(r)->tls_policy, policy);
    }
    if (tls == NULL) {
        assert_null(queue_rcpt_tried(r)->tls);
    } else {
        assert_non_null(queue_rcpt_tried(r)->tls);
        assert_string_equal(queue_rcpt_tried(r)->tls, tls);
    }
}

#define TLS_V13 "TLSv1.3 TLS_AES_256_GCM_SHA384 (verified)"
#define TLS_PLAIN "none (plaintext: no STARTTLS)"
#define TLS_NOT_OFFERED "none (deferred: STARTTLS not offered)"

/*
 * Equal texts of different messages are one shared copy (queue_str.c):
 * sender, client address, HELO, last error, lease boot id and destination;
 * what attempts left is one shared record per distinct three texts, and a
 * lease is a recipient's own only while it is LEASED; every copy is freed
 * once its last holder goes, through outcomes, snapshots and queue_free.
 */
static void test_shared_texts(void **state)
{
    (void)state;
    size_t base = queue_str_count();
    size_t trio_base = queue_trio_count();
    struct queue *q = queue_new();
    assert_non_null(q);
    const char *ids[] = {"A", "B", "C"};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(ids); i++) {
        char sender[32];
        snprintf(sender, sizeof(sender), "s%s@example.org", i == 2 ? "x" : ""); /* C differs */
        struct fx_enq e = {.id = ids[i],
                           .sender = sender,
                           .rcpts = {"r@one.test"},
                           .client_addr = "192.0.2.1",
                           .helo = "mx.example.org",
                           .expires = T0 + 5 * 24 * 60 * MIN};
        assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
        struct fx_lease l = {.node = 1,
                             .term = 3,
                             .expires = T0 + 10 * MIN,
                             .boot = "boot-a",
                             .id = ids[i],
                             .n = 1,
                             .lease_id = 10 + i,
                             .dest = "[10.0.0.1]:25"};
        assert_int_equal(fx_lease(q, T0 + 1, &l).status, 0);
    }
    const struct queue_msg *a = queue_find(q, "A"), *b = queue_find(q, "B"),
                           *c = queue_find(q, "C");
    assert_ptr_equal(a->sender, b->sender);
    assert_ptr_not_equal(a->sender, c->sender);
    assert_string_equal(c->sender, "sx@example.org");
    assert_ptr_equal(a->origin->client_addr, c->origin->client_addr);
    assert_ptr_equal(a->origin->helo, b->origin->helo);
    assert_ptr_equal(queue_rcpt_lease(&a->rcpts[0])->boot_id,
                     queue_rcpt_lease(&c->rcpts[0])->boot_id);
    assert_ptr_equal(queue_rcpt_lease(&a->rcpts[0])->dest, queue_rcpt_lease(&b->rcpts[0])->dest);
    /* Each leased recipient has a lease of its own; nothing was tried yet. */
    assert_true(a->rcpts[0].has_lease);
    assert_ptr_not_equal(a->rcpts[0].lt.lease, b->rcpts[0].lt.lease);
    assert_ptr_equal(queue_rcpt_tried(&a->rcpts[0]), &queue_tried_none);
    /* The three share one record of where they came from. */
    assert_ptr_equal(a->origin, c->origin);
    assert_int_equal(queue_trio_count() - trio_base, 1);
    /* The id and the address are the item's own. */
    assert_ptr_not_equal(a->rcpts[0].addr, b->rcpts[0].addr);
    assert_string_equal(a->id, "A");
    for (size_t i = 0; i < HAMR_ARRAY_LEN(ids); i++) {
        struct fx_outcome o = {.id = ids[i],
                               .lease_id = 10 + i,
                               .n = 1,
                               .res = {{0, DEFERRED, 451, "try later"}},
                               .next_ms = T0 + 60 * MIN};
        assert_int_equal(fx_outcome(q, T0 + 2, &o).status, 0);
    }
    a = queue_find(q, "A");
    c = queue_find(q, "C");
    assert_string_equal(queue_rcpt_tried(&a->rcpts[0])->error, "451 try later");
    assert_ptr_equal(queue_rcpt_tried(&a->rcpts[0])->error, queue_rcpt_tried(&c->rcpts[0])->error);
    assert_null(queue_rcpt_lease(&a->rcpts[0])->boot_id);
    /* The outcome ended the leases; the three deferrals share one record of what was tried. */
    assert_false(a->rcpts[0].has_lease);
    assert_false(c->rcpts[0].has_lease);
    assert_ptr_equal(queue_rcpt_tried(&a->rcpts[0]), queue_rcpt_tried(&c->rcpts[0]));
    assert_int_equal(queue_trio_count() - trio_base, 2);
    /* Two senders, client, HELO, the error: five texts; the lease's are gone. */
    assert_int_equal(queue_str_count() - base, 5);
    struct queue *r = fx_snapshot_roundtrip(q);
    fx_assert_same_msgs(q, r);
    assert_ptr_equal(queue_find(r, "A")->sender, a->sender);
    assert_ptr_equal(queue_rcpt_tried(&queue_find(r, "A")->rcpts[0]),
                     queue_rcpt_tried(&a->rcpts[0]));
    assert_false(queue_find(r, "A")->rcpts[0].has_lease);
    assert_ptr_equal(queue_find(r, "A")->origin, a->origin);
    assert_int_equal(queue_str_count() - base, 5);
    assert_int_equal(queue_trio_count() - trio_base, 2);
    queue_free(q);
    assert_int_equal(queue_str_count() - base, 5);
    queue_free(r);
    assert_int_equal(queue_str_count(), base);
    assert_int_equal(queue_trio_count(), trio_base);
}

/* ------------------------------------------------------------------------ */

static void test_enqueue_and_find(void **state)
{
    struct queue *q = *state;
    struct fx_enq e = {.id = "Q1",
                       .sender = "a@example.org",
                       .rcpts = {"b@example.net", "c@example.net"},
                       .expires = T0 + 1000,
                       .client_addr = "192.0.2.7",
                       .helo = "client.test",
                       .accepted_by = 2,
                       .body_8bit = true};
    struct queue_apply_result r = fx_enqueue(q, T0, &e);
    assert_int_equal(r.status, 0);
    assert_false(r.duplicate);
    assert_int_equal(r.dsn_generated, 0);

    const struct queue_msg *m = queue_find(q, "Q1");
    assert_non_null(m);
    assert_string_equal(m->id, "Q1");
    assert_string_equal(m->sender, "a@example.org");
    assert_int_equal(m->n_rcpts, 2);
    assert_string_equal(m->rcpts[0].addr, "b@example.net");
    assert_string_equal(m->rcpts[1].addr, "c@example.net");
    assert_int_equal(m->body_len, strlen(fx_default_body));
    assert_memory_equal(queue_msg_body(m), fx_default_body, m->body_len);
    assert_int_equal(m->received_at_ms, T0);
    assert_int_equal(m->expires_at_ms, T0 + 1000);
    assert_string_equal(m->origin->client_addr, "192.0.2.7");
    assert_string_equal(m->origin->helo, "client.test");
    assert_int_equal(m->origin->accepted_by, 2);
    assert_true(m->body_8bit);
    assert_false(m->is_dsn);
    assert_false(m->held);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(m->rcpts[i].state, QUEUE_RCPT_PENDING);
        assert_int_equal(m->rcpts[i].next_attempt_ms, T0);
        assert_int_equal(m->rcpts[i].attempts, 0);
        assert_null(queue_rcpt_tried(&m->rcpts[i])->error);
    }
    assert_true(queue_contains(q, "Q1"));
    assert_false(queue_contains(q, "Q2"));
    assert_null(queue_find(q, "Q2"));

    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.messages, 1);
    assert_int_equal(st.rcpts_pending, 2);
    assert_int_equal(st.rcpts_leased, 0);
    assert_int_equal(st.bytes, strlen(fx_default_body));
    assert_int_equal(st.applied, 1);
}

/* Many messages: lookups stay right while the hash table grows; order is kept. */
static int order_cb(void *arg, const struct queue_msg *m)
{
    int *next = arg;
    char want[16];
    snprintf(want, sizeof(want), "id%d", *next);
    assert_string_equal(m->id, want);
    (*next)++;
    return 0;
}

static void test_many_messages_order(void **state)
{
    struct queue *q = *state;
    for (int i = 0; i < 300; i++) {
        char id[16];
        snprintf(id, sizeof(id), "id%d", i);
        struct fx_enq e = {.id = id, .sender = "s@x.test", .rcpts = {"r@y.test"}};
        assert_int_equal(fx_enqueue(q, T0 + (uint64_t)i, &e).status, 0);
    }
    for (int i = 0; i < 300; i++) {
        char id[16];
        snprintf(id, sizeof(id), "id%d", i);
        assert_non_null(queue_find(q, id));
    }
    int next = 0;
    queue_foreach(q, order_cb, &next);
    assert_int_equal(next, 300);
    /* Remove every other message; the rest stay findable and ordered. */
    for (int i = 0; i < 300; i += 2) {
        char id[16];
        snprintf(id, sizeof(id), "id%d", i);
        assert_int_equal(fx_admin(q, T0 + 1000, HAMR__ADMIN__OP__DELETE, id).finished, 1);
    }
    for (int i = 0; i < 300; i++) {
        char id[16];
        snprintf(id, sizeof(id), "id%d", i);
        assert_true((queue_find(q, id) != NULL) == (i % 2 == 1));
        assert_true(queue_contains(q, id));
    }
}

/* seq_cb - the ids in acceptance order, and seq rising along it. */
struct seq_walk {
    const char *want[4000];
    size_t n;
    uint64_t last_seq;
};

static int seq_cb(void *arg, const struct queue_msg *m)
{
    struct seq_walk *w = arg;
    assert_true(w->n < HAMR_ARRAY_LEN(w->want));
    assert_string_equal(m->id, w->want[w->n]);
    assert_true(queue_msg_item(m)->seq > w->last_seq);
    w->last_seq = queue_msg_item(m)->seq;
    w->n++;
    return 0;
}

/*
 * The message table keeps the acceptance order through holes, their
 * compaction (which renumbers seq) and its shrinking, and an entry that
 * needs a compaction it cannot allocate is refused whole.
 */
static void test_table_holes_and_compaction(void **state)
{
    struct queue *q = *state;
    static char ids[4000][16];
    struct seq_walk *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    for (int i = 0; i < 3000; i++) {
        snprintf(ids[i], sizeof(ids[i]), "t%d", i);
        struct fx_enq e = {.id = ids[i], .sender = "s@x.test", .rcpts = {"r@y.test"}};
        assert_int_equal(fx_enqueue(q, T0 + (uint64_t)i, &e).status, 0);
    }
    /* Two thirds leave, the newest first, until the holes are enough for
     * the next entry to compact: without memory for it, that entry is
     * refused and changes nothing. */
    int i = 2999;
    for (; i >= 0; i--) {
        if (i % 3 == 0)
            continue;
        assert_int_equal(fx_admin(q, T0 + 5000, HAMR__ADMIN__OP__DELETE, ids[i]).finished, 1);
        if (q->olen - q->mcount > q->mcount + QUEUE_HASH_MIN)
            break;
    }
    assert_true(i > 0);
    size_t olen = q->olen, mcount = q->mcount;
    struct fx_enq e0 = {.id = "u0", .sender = "s@x.test", .rcpts = {"r@y.test"}};
    size_t len;
    uint8_t *b = fx_pack_enqueue(T0 + 6000, &e0, &len);
    fx_fail_after(0);
    struct queue_apply_result res;
    assert_int_equal(queue_apply(q, b, len, &res), HAMR_ENOMEM);
    free(b);
    assert_true(fx_fail_off());
    assert_null(queue_find(q, "u0"));
    assert_int_equal(q->olen, olen);
    assert_int_equal(q->mcount, mcount);
    for (i--; i >= 0; i--)
        if (i % 3 != 0)
            assert_int_equal(fx_admin(q, T0 + 5000, HAMR__ADMIN__OP__DELETE, ids[i]).finished, 1);
    for (i = 0; i < 3000; i++)
        assert_true((queue_find(q, ids[i]) != NULL) == (i % 3 == 0));
    for (i = 3000; i < 4000; i++) {
        snprintf(ids[i], sizeof(ids[i]), "u%d", i - 3000);
        struct fx_enq e = {.id = ids[i], .sender = "s@x.test", .rcpts = {"r@y.test"}};
        assert_int_equal(fx_enqueue(q, T0 + 6000 + (uint64_t)i, &e).status, 0);
    }
    assert_int_equal(q->mcount, 2000);
    assert_true(q->olen - q->mcount <= q->mcount + QUEUE_HASH_MIN); /* holes are compacted */
    for (i = 0; i < 4000; i++)
        if (i >= 3000 || i % 3 == 0)
            w->want[w->n++] = ids[i];
    size_t n = w->n;
    w->n = 0;
    queue_foreach(q, seq_cb, w);
    assert_int_equal(w->n, n);
    assert_int_equal(queue_sched_index_check(q), 0); /* heaps keyed on seq still in order */
    /* Paging goes on from any id, across what was compacted. */
    w->n = 0;
    w->last_seq = 0;
    for (size_t k = 0; k < n; k++)
        if (strcmp(w->want[k], "t1500") == 0)
            memmove(&w->want[0], &w->want[k + 1], (n - k - 1) * sizeof(w->want[0])), n -= k + 1;
    assert_int_equal(queue_foreach_after(q, "t1500", seq_cb, w), 0);
    assert_int_equal(w->n, n);
    /* All leave; the tables shrink with the next entry. */
    size_t big = q->ocap;
    for (i = 0; i < 4000; i++)
        if (queue_find(q, ids[i]) != NULL)
            assert_int_equal(fx_admin(q, T0 + 9000, HAMR__ADMIN__OP__DELETE, ids[i]).finished, 1);
    assert_int_equal(q->olen, 0);
    for (i = 0; i < 200; i++) {
        char id[16];
        snprintf(id, sizeof(id), "v%d", i);
        struct fx_enq e = {.id = id, .sender = "s@x.test", .rcpts = {"r@y.test"}};
        assert_int_equal(fx_enqueue(q, T0 + 9000, &e).status, 0);
    }
    for (i = 0; i < 200; i += 2) {
        char id[16];
        snprintf(id, sizeof(id), "v%d", i);
        assert_int_equal(fx_admin(q, T0 + 9001, HAMR__ADMIN__OP__DELETE, id).finished, 1);
    }
    struct fx_enq e1 = {.id = "w", .sender = "s@x.test", .rcpts = {"r@y.test"}};
    assert_int_equal(fx_enqueue(q, T0 + 9002, &e1).status, 0);
    assert_true(q->ocap < big);
    assert_non_null(queue_find(q, "v199"));
    assert_null(queue_find(q, "v198"));
    assert_int_equal(queue_sched_index_check(q), 0);
    free(w);
}

/* Stop early when the callback says so. */
static int stop_cb(void *arg, const struct queue_msg *m)
{
    (void)m;
    int *n = arg;
    return ++*n == 2;
}

static void test_foreach_stops(void **state)
{
    struct queue *q = *state;
    for (int i = 0; i < 5; i++) {
        char id[8];
        snprintf(id, sizeof(id), "F%d", i);
        struct fx_enq e = {.id = id, .sender = "s@x.test", .rcpts = {"r@y.test"}};
        fx_enqueue(q, T0, &e);
    }
    int n = 0;
    queue_foreach(q, stop_cb, &n);
    assert_int_equal(n, 2);
}

/* after_cb - record the ids queue_foreach_after visits, in order. */
struct after_seen {
    char ids[8][QUEUE_ID_MAX];
    size_t n;
};

static int after_cb(void *arg, const struct queue_msg *m)
{
    struct after_seen *a = arg;
    assert_true(a->n < HAMR_ARRAY_LEN(a->ids));
    snprintf(a->ids[a->n++], sizeof(a->ids[0]), "%s", m->id);
    return 0;
}

/* queue_foreach_after: from the start, after an id, after the last; a gone id is ENOTFOUND. */
static void test_foreach_after(void **state)
{
    struct queue *q = *state;
    for (int i = 0; i < 5; i++) {
        char id[8];
        snprintf(id, sizeof(id), "P%d", i);
        struct fx_enq e = {.id = id, .sender = "s@x.test", .rcpts = {"r@y.test"}};
        fx_enqueue(q, T0 + (uint64_t)i, &e);
    }
    fx_admin(q, T0 + 10, HAMR__ADMIN__OP__DELETE, "P2");
    static const struct {
        const char *label, *after;
        int want_rv;
        const char *want[5];
    } cases[] = {
        {"from the start", NULL, 0, {"P0", "P1", "P3", "P4"}},
        {"empty is the start", "", 0, {"P0", "P1", "P3", "P4"}},
        {"after the first", "P0", 0, {"P1", "P3", "P4"}},
        {"skips a deleted one", "P1", 0, {"P3", "P4"}},
        {"after the last", "P4", 0, {NULL}},
        {"gone", "P2", HAMR_ENOTFOUND, {NULL}},
        {"never queued", "nope", HAMR_ENOTFOUND, {NULL}},
    };
    for (size_t c = 0; c < HAMR_ARRAY_LEN(cases); c++) {
        struct after_seen a = {.n = 0};
        print_message("case: %s\n", cases[c].label);
        assert_int_equal(queue_foreach_after(q, cases[c].after, after_cb, &a), cases[c].want_rv);
        size_t k = 0;
        for (; k < HAMR_ARRAY_LEN(cases[c].want) && cases[c].want[k] != NULL; k++) {
            assert_true(k < a.n);
            assert_string_equal(a.ids[k], cases[c].want[k]);
        }
        assert_int_equal(a.n, k);
    }
    /* It stops when the callback says so, as queue_foreach does. */
    int n = 0;
    assert_int_equal(queue_foreach_after(q, "P0", stop_cb, &n), 0);
    assert_int_equal(n, 2);
}

/* Table: Enqueue validation. */
static void test_enqueue_validation(void **state)
{
    (void)state;
    static const char id51[] = "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij1";
    static const char id52[] = "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij12";
    static const char id63[] = "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij123";
    static const struct {
        const char *label;
        struct fx_enq e;
        int want_status;
        bool want_queued;
    } cases[] = {
        {"plain", {.id = "A", .sender = "s@x", .rcpts = {"r@y"}}, 0, true},
        {"null sender", {.id = "A", .sender = "", .rcpts = {"r@y"}}, 0, true},
        {"no sha", {.id = "A", .sender = "s@x", .rcpts = {"r@y"}, .no_sha = true}, 0, true},
        {"empty body", {.id = "A", .sender = "s@x", .rcpts = {"r@y"}, .body = ""}, 0, true},
        {"51-char id", {.id = id51, .sender = "s@x", .rcpts = {"r@y"}}, 0, true},
        {"52-char id", {.id = id52, .sender = "s@x", .rcpts = {"r@y"}}, HAMR_EINVAL, false},
        {"63-char dsn id", {.id = id63, .rcpts = {"r@y"}, .is_dsn = true}, 0, true},
        {"empty id", {.id = "", .sender = "s@x", .rcpts = {"r@y"}}, HAMR_EINVAL, false},
        {"no rcpts", {.id = "A", .sender = "s@x"}, HAMR_EINVAL, false},
        {"sha mismatch",
         {.id = "A", .sender = "s@x", .rcpts = {"r@y"}, .bad_sha = true},
         HAMR_ECORRUPT,
         false},
        {"sha length 31",
         {.id = "A", .sender = "s@x", .rcpts = {"r@y"}, .sha_len = 31},
         HAMR_EINVAL,
         false},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue *q = queue_new();
        assert_non_null(q);
        struct queue_apply_result r = fx_enqueue(q, T0, &cases[i].e);
        if (r.status != cases[i].want_status)
            fail_msg("%s: status %d, want %d", cases[i].label, r.status, cases[i].want_status);
        assert_int_equal(queue_find(q, cases[i].e.id) != NULL, cases[i].want_queued);
        struct queue_stats st;
        queue_get_stats(q, &st);
        assert_int_equal(st.messages, cases[i].want_queued ? 1 : 0);
        /* A refused command still counts as applied. */
        assert_int_equal(st.applied, 1);
        queue_free(q);
    }
}

static void test_enqueue_duplicate(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    char before[65], after[65];
    digest_of(q, before);
    /* Same id, other content: a no-op. */
    struct fx_enq again = {.id = "M", .sender = "x@y", .rcpts = {"z@w"}, .body = "X: y\r\n\r\n"};
    struct queue_apply_result r = fx_enqueue(q, T0 + 5, &again);
    assert_true(r.duplicate);
    assert_int_equal(r.status, 0);
    const struct queue_msg *m = queue_find(q, "M");
    assert_string_equal(m->sender, "a@example.org");
    assert_int_equal(m->n_rcpts, 3);
    assert_int_equal(m->received_at_ms, T0);

    /* Finished: still a duplicate while in the done set. */
    lease_idx(q, T0 + 1, "M", 7, 0, 3);
    struct fx_outcome o = {
        .id = "M",
        .lease_id = 7,
        .n = 3,
        .res = {{0, DELIVERED, 250, "ok"}, {1, DELIVERED, 250, "ok"}, {2, DELIVERED, 250, "ok"}}};
    r = fx_outcome(q, T0 + 2, &o);
    assert_int_equal(r.finished, 1);
    assert_null(queue_find(q, "M"));
    assert_true(queue_contains(q, "M"));
    r = fx_enqueue(q, T0 + 3, &again);
    assert_true(r.duplicate);
    assert_null(queue_find(q, "M"));
    digest_of(q, after);
    assert_string_not_equal(before, after);
}

/* frame_by_hand - "HAMR", length, protobuf, zero padding: keeps format_version as set. */
static size_t frame_by_hand(const Hamr__Entry *e, uint8_t *out)
{
    memcpy(out, "HAMR", 4);
    size_t n = hamr__entry__pack(e, out + 8);
    proto_u32_put(out + 4, (uint32_t)n);
    size_t total = (8 + n + 7) / 8 * 8;
    memset(out + 8 + n, 0, total - 8 - n);
    return total;
}

/* Table: entries that cannot be decoded leave everything unchanged. */
static void test_decode_errors(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    char before[65], after[65];
    digest_of(q, before);

    /* A valid Admin entry packed by hand so that the version can be changed. */
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Admin a = HAMR__ADMIN__INIT;
    a.op = HAMR__ADMIN__OP__HOLD;
    a.queue_id = "M";
    e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    e.admin = &a;
    e.timestamp_ms = T0 + 1;
    uint8_t v2[256], nocmd[256], v0[256];
    e.format_version = PROTO_FORMAT_VERSION_MAX + 1;
    size_t v2_len = frame_by_hand(&e, v2);
    e.format_version = 0;
    size_t v0_len = frame_by_hand(&e, v0);
    e.format_version = 1;
    e.cmd_case = HAMR__ENTRY__CMD__NOT_SET;
    size_t nocmd_len = frame_by_hand(&e, nocmd);

    size_t good_len;
    uint8_t *good = fx_pack_admin(T0 + 1, HAMR__ADMIN__OP__HOLD, "M", &good_len);
    uint8_t wrong_magic[256];
    memcpy(wrong_magic, good, good_len);
    wrong_magic[0] = 'X';
    static const uint8_t garbage[] = {'H',  'A',  'M',  'R',  0,    0,    0,    8,
                                      0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0xff, 0xff};
    /* A frame with padding, one padding byte set: must be refused. */
    uint8_t bad_pad[256];
    e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    size_t bad_pad_len = frame_by_hand(&e, bad_pad);
    if (bad_pad_len == 8 + proto_u32_get(bad_pad + 4)) {
        a.queue_id = "MM"; /* one byte more: now there is padding */
        bad_pad_len = frame_by_hand(&e, bad_pad);
    }
    assert_true(bad_pad_len > 8 + proto_u32_get(bad_pad + 4));
    bad_pad[bad_pad_len - 1] = 1;
    uint8_t long_len[256];
    memcpy(long_len, good, good_len);
    proto_u32_put(long_len + 4, (uint32_t)good_len);
    /*
     * An Entry of format 1 whose only command is oneof field 18, a kind this
     * build does not know (a newer writer): format_version 1 (08 01), then
     * field 18 as an empty length-delimited value (92 01 00), padded to 8.
     * (Field 16 is StsPolicy, format 4: test_queue_sts.c; 17 LeaseRenew,
     * format 6: test_queue_lease.c.)
     */
    static const uint8_t kind18[] = {'H',  'A',  'M',  'R',  0,    0, 0, 5,
                                     0x08, 0x01, 0x92, 0x01, 0x00, 0, 0, 0};

    const struct {
        const char *label;
        const uint8_t *buf;
        size_t len;
        int want;
    } cases[] = {
        {"empty", (const uint8_t *)"", 0, HAMR_ECORRUPT},
        {"short", (const uint8_t *)"HAM", 3, HAMR_ECORRUPT},
        {"wrong magic", wrong_magic, good_len, HAMR_ECORRUPT},
        {"garbage protobuf", garbage, sizeof(garbage), HAMR_ECORRUPT},
        {"truncated", good, good_len - 3, HAMR_ECORRUPT},
        {"truncated by 8", good, good_len - 8, HAMR_ECORRUPT},
        {"non-zero padding", bad_pad, bad_pad_len, HAMR_ECORRUPT},
        {"length past the end", long_len, good_len, HAMR_ECORRUPT},
        {"format_version above this build's", v2, v2_len, HAMR_EVERSION},
        {"format_version 0", v0, v0_len, HAMR_EVERSION},
        {"no cmd", nocmd, nocmd_len, HAMR_EVERSION},
        {"unknown kind (field 18)", kind18, sizeof(kind18), HAMR_EVERSION},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue_apply_result res;
        int rv = queue_apply(q, cases[i].buf, cases[i].len, &res);
        if (rv != cases[i].want)
            fail_msg("%s: got %d want %d", cases[i].label, rv, cases[i].want);
        digest_of(q, after);
        assert_string_equal(before, after);
        assert_false(queue_find(q, "M")->held);
    }
    /* The intact entry does apply. */
    fx_apply(q, good, good_len);
    assert_true(queue_find(q, "M")->held);
}

static void test_lease_then_delivered(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    struct queue_apply_result r = lease_idx(q, T0 + 10, "M", 42, 0, 3);
    assert_int_equal(r.status, 0);
    for (size_t i = 0; i < 3; i++) {
        const struct queue_rcpt *rc = fx_rcpt(q, "M", i);
        assert_int_equal(rc->state, QUEUE_RCPT_LEASED);
        assert_int_equal(queue_rcpt_lease(rc)->id, 42);
        assert_int_equal(queue_rcpt_lease(rc)->node, 1);
        assert_int_equal(queue_rcpt_lease(rc)->term, 3);
        assert_int_equal(queue_rcpt_lease(rc)->expires_ms, T0 + 10 + 10 * MIN);
        assert_string_equal(queue_rcpt_lease(rc)->boot_id, "boot-a");
        assert_string_equal(queue_rcpt_lease(rc)->dest, "[10.0.0.1]:25");
    }
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.rcpts_leased, 3);
    assert_int_equal(st.rcpts_pending, 0);

    struct fx_outcome o = {.id = "M",
                           .lease_id = 42,
                           .n = 2,
                           .res = {{0, DELIVERED, 250, "ok"}, {1, DELIVERED, 250, "ok"}}};
    r = fx_outcome(q, T0 + 20, &o);
    assert_int_equal(r.finished, 0);
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_DELIVERED);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->id, 0);
    assert_null(queue_rcpt_lease(fx_rcpt(q, "M", 0))->boot_id);
    assert_int_equal(fx_rcpt(q, "M", 2)->state, QUEUE_RCPT_LEASED);
    struct fx_outcome o2 = {.id = "M", .lease_id = 42, .n = 1, .res = {{2, DELIVERED, 250, ""}}};
    r = fx_outcome(q, T0 + 30, &o2);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.dsn_generated, 0);
    assert_null(queue_find(q, "M"));
    assert_true(queue_contains(q, "M"));
    assert_int_equal(fx_count_dsns(q), 0);
    queue_get_stats(q, &st);
    assert_int_equal(st.messages, 0);
    assert_int_equal(st.applied, 4);
}

/* size_walk_cb - add one message's body to the walk's sum. */
static int size_walk_cb(void *arg, const struct queue_msg *m)
{
    size_t *sum = arg;
    *sum += m->body_len;
    return 0;
}

/* assert_size - queue_size says n messages and bytes, and a walk agrees. */
static void assert_size(const struct queue *q, size_t n, size_t bytes)
{
    size_t messages = 0, b = 0, walked = 0;
    queue_size(q, &messages, &b);
    queue_foreach(q, size_walk_cb, &walked);
    assert_int_equal(messages, n);
    assert_int_equal(b, bytes);
    assert_int_equal(walked, bytes);
}

/* enqueue_body - one message to one recipient with this body, expiring in a minute. */
static struct queue_apply_result enqueue_body(struct queue *q,
                                              uint64_t ts,
                                              const char *id,
                                              const char *body)
{
    struct fx_enq e = {
        .id = id, .sender = "s@x.test", .rcpts = {"r@y.test"}, .body = body, .expires = T0 + MIN};
    return fx_enqueue(q, ts, &e);
}

/*
 * queue_size counts without a walk: Enqueue adds a body, a duplicate adds
 * nothing, finished and deleted messages take theirs away, and a restored
 * snapshot counts the same.
 */
static void test_size_counter(void **state)
{
    struct queue *q = *state;
    assert_size(q, 0, 0);
    const char *a = "0123456789\r\n", *b = "Subject: b\r\n\r\nhello, queue\r\n";
    size_t la = strlen(a), lb = strlen(b);
    assert_int_equal(enqueue_body(q, T0, "A", a).status, 0);
    assert_size(q, 1, la);
    assert_int_equal(enqueue_body(q, T0 + 1, "B", b).status, 0);
    assert_size(q, 2, la + lb);
    assert_true(enqueue_body(q, T0 + 2, "A", a).duplicate);
    assert_size(q, 2, la + lb);

    struct queue *r = fx_snapshot_roundtrip(q);
    assert_size(r, 2, la + lb);
    queue_free(r);

    assert_int_equal(fx_admin(q, T0 + 3, HAMR__ADMIN__OP__DELETE, "A").finished, 1);
    assert_size(q, 1, lb);
    lease_idx(q, T0 + 4, "B", 7, 0, 1);
    struct fx_outcome o = {.id = "B", .lease_id = 7, .n = 1, .res = {{0, DELIVERED, 250, "ok"}}};
    assert_int_equal(fx_outcome(q, T0 + 5, &o).finished, 1);
    assert_size(q, 0, 0);
}

/* queue_full: at a limit is full, one below is not; 0 is no limit; either limit alone. */
static void test_full(void **state)
{
    struct queue *q = *state;
    assert_false(queue_full(q, 0, 0));
    assert_false(queue_full(q, 1, 1));
    assert_int_equal(enqueue_body(q, T0, "A", "0123456789").status, 0);
    assert_int_equal(enqueue_body(q, T0, "B", "01234").status, 0);
    /* Two messages of 15 bytes. */
    assert_true(queue_full(q, 2, 0));
    assert_true(queue_full(q, 1, 0));
    assert_false(queue_full(q, 3, 0));
    assert_true(queue_full(q, 0, 15));
    assert_true(queue_full(q, 0, 14));
    assert_false(queue_full(q, 0, 16));
    assert_false(queue_full(q, 0, 0));
    assert_true(queue_full(q, 3, 15));
    assert_true(queue_full(q, 2, 16));
    assert_false(queue_full(q, 3, 16));
    assert_int_equal(fx_admin(q, T0 + 1, HAMR__ADMIN__OP__DELETE, "A").finished, 1);
    assert_false(queue_full(q, 2, 0));
    assert_false(queue_full(q, 0, 6));
    assert_true(queue_full(q, 0, 5));
}

/* Fencing: a result counts only under the lease the recipient holds now. */
static void test_outcome_fencing(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    lease_idx(q, T0 + 1, "M", 100, 0, 1);
    /* The lease lapses; a new lease 101 takes the recipient over. */
    lease_idx(q, T0 + 1 + 10 * MIN, "M", 101, 0, 1);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->id, 101);

    const struct {
        const char *label;
        uint64_t lease_id;
        Hamr__RcptResult__Status status;
        enum queue_rcpt_state want;
    } cases[] = {
        {"stale lease delivered", 100, DELIVERED, QUEUE_RCPT_LEASED},
        {"stale lease bounced", 100, BOUNCED, QUEUE_RCPT_LEASED},
        {"no lease while leased", 0, EXPIRED, QUEUE_RCPT_LEASED},
        {"unknown lease", 999, DELIVERED, QUEUE_RCPT_LEASED},
        {"current lease", 101, DEFERRED, QUEUE_RCPT_PENDING},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct fx_outcome o = {.id = "M",
                               .lease_id = cases[i].lease_id,
                               .n = 1,
                               .res = {{0, cases[i].status, 450, "busy"}},
                               .next_ms = T0 + 60 * MIN};
        struct queue_apply_result r = fx_outcome(q, T0 + 11 * MIN, &o);
        assert_int_equal(r.status, 0);
        assert_int_equal(r.dsn_generated, 0);
        if (fx_rcpt(q, "M", 0)->state != cases[i].want)
            fail_msg("%s: state %d", cases[i].label, fx_rcpt(q, "M", 0)->state);
    }
    assert_int_equal(fx_rcpt(q, "M", 0)->attempts, 1);
    assert_int_equal(fx_count_dsns(q), 0);
}

static void test_expiry_outcome_dsn(void **state)
{
    struct queue *q = *state;
    struct fx_enq e = {
        .id = "E", .sender = "a@example.org", .rcpts = {"x@far.test"}, .expires = T0 + MIN};
    fx_enqueue(q, T0, &e);
    struct fx_outcome o = {.id = "E",
                           .lease_id = 0,
                           .n = 1,
                           .res = {{0, EXPIRED, 0, "connection refused"}},
                           .dsn_expires = T0 + 99 * MIN};
    struct queue_apply_result r = fx_outcome(q, T0 + 2 * MIN, &o);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.dsn_generated, 1);
    assert_int_equal(r.finished, 1);
    assert_null(queue_find(q, "E"));
    assert_true(queue_contains(q, "E"));
    const struct queue_msg *d = queue_find(q, "E-B0");
    assert_non_null(d);
    assert_true(d->is_dsn);
    assert_string_equal(d->sender, "");
    assert_int_equal(d->n_rcpts, 1);
    assert_string_equal(d->rcpts[0].addr, "a@example.org");
    assert_int_equal(d->rcpts[0].state, QUEUE_RCPT_PENDING);
    assert_int_equal(d->rcpts[0].next_attempt_ms, T0 + 2 * MIN);
    assert_int_equal(d->received_at_ms, T0 + 2 * MIN);
    assert_int_equal(d->expires_at_ms, T0 + 99 * MIN);
    assert_int_equal(d->origin->accepted_by, 0);
    char *body = strndup((const char *)queue_msg_body(d), d->body_len);
    assert_non_null(strstr(body, "Status: 4.4.7\r\n"));
    assert_non_null(strstr(body, "Final-Recipient: rfc822; x@far.test\r\n"));
    assert_non_null(strstr(body, "To: <a@example.org>\r\n"));
    free(body);
    assert_int_equal(fx_count_dsns(q), 1);
}

static void test_deferred(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    for (uint32_t round = 1; round <= 3; round++) {
        uint64_t ts = T0 + round * 100 * MIN;
        lease_idx(q, ts, "M", 10 + round, 1, 1);
        struct fx_outcome o = {.id = "M",
                               .lease_id = 10 + round,
                               .n = 1,
                               .res = {{1, DEFERRED, 451, "4.7.1 try again later"}},
                               .next_ms = ts + round * MIN};
        struct queue_apply_result r = fx_outcome(q, ts + 1, &o);
        assert_int_equal(r.status, 0);
        const struct queue_rcpt *rc = fx_rcpt(q, "M", 1);
        assert_int_equal(rc->state, QUEUE_RCPT_PENDING);
        assert_int_equal(rc->attempts, round);
        assert_int_equal(rc->next_attempt_ms, ts + round * MIN);
        assert_string_equal(queue_rcpt_tried(rc)->error, "451 4.7.1 try again later");
        assert_int_equal(queue_rcpt_lease(rc)->id, 0);
        assert_null(queue_rcpt_lease(rc)->dest);
    }
    assert_int_equal(fx_rcpt(q, "M", 0)->attempts, 0);
    assert_int_equal(fx_count_dsns(q), 0);
}

/* Diagnostics from the network are made printable and bounded. */
static void test_error_text_sanitised(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    char long_diag[3000];
    memset(long_diag, 'x', sizeof(long_diag) - 1);
    long_diag[sizeof(long_diag) - 1] = '\0';
    struct fx_outcome o = {
        .id = "M",
        .lease_id = 0,
        .n = 2,
        .res = {{0, DEFERRED, 0, "bad\r\nBcc: evil\x01\xc3\xa9"}, {1, DEFERRED, 421, long_diag}},
        .next_ms = T0 + MIN};
    fx_outcome(q, T0 + 1, &o);
    const char *e0 = queue_rcpt_tried(fx_rcpt(q, "M", 0))->error;
    assert_string_equal(e0, "bad??Bcc: evil???");
    const char *e1 = queue_rcpt_tried(fx_rcpt(q, "M", 1))->error;
    assert_true(strlen(e1) < 512);
    assert_memory_equal(e1, "421 xxx", 7);
}

/* One Outcome: delivered, deferred and bounced; one DSN for the bounced one only. */
static void test_mixed_outcome(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    lease_idx(q, T0 + 1, "M", 5, 0, 3);
    struct fx_outcome o = {.id = "M",
                           .lease_id = 5,
                           .n = 3,
                           .res = {{0, DELIVERED, 250, "2.0.0 ok"},
                                   {1, DEFERRED, 451, "4.3.0 later"},
                                   {2, BOUNCED, 550, "5.1.1 no such user"}},
                           .next_ms = T0 + 30 * MIN,
                           .remote = "[10.0.0.1]:25"};
    struct queue_apply_result r = fx_outcome(q, T0 + 2, &o);
    assert_int_equal(r.dsn_generated, 1);
    assert_int_equal(r.finished, 0);
    const struct queue_msg *m = queue_find(q, "M");
    assert_non_null(m);
    assert_int_equal(m->dsn_count, 1);
    assert_int_equal(m->rcpts[0].state, QUEUE_RCPT_DELIVERED);
    assert_int_equal(m->rcpts[1].state, QUEUE_RCPT_PENDING);
    assert_int_equal(m->rcpts[2].state, QUEUE_RCPT_BOUNCED);
    assert_string_equal(queue_rcpt_tried(&m->rcpts[2])->error, "550 5.1.1 no such user");
    const struct queue_msg *d = queue_find(q, "M-B0");
    assert_non_null(d);
    char *body = strndup((const char *)queue_msg_body(d), d->body_len);
    assert_non_null(strstr(body, "Final-Recipient: rfc822; r2@one.test\r\n"));
    assert_null(strstr(body, "Final-Recipient: rfc822; r0@one.test"));
    assert_null(strstr(body, "Final-Recipient: rfc822; r1@two.test"));
    assert_non_null(strstr(body, "Status: 5.1.1\r\n"));
    assert_non_null(strstr(body, "Remote-MTA: dns; [10.0.0.1]:25\r\n"));
    assert_non_null(strstr(body, "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
    free(body);

    /* The deferred one is delivered later: the message finishes, no second DSN. */
    lease_idx(q, T0 + 31 * MIN, "M", 6, 1, 1);
    struct fx_outcome o2 = {.id = "M", .lease_id = 6, .n = 1, .res = {{1, DELIVERED, 250, ""}}};
    r = fx_outcome(q, T0 + 32 * MIN, &o2);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.dsn_generated, 0);
    assert_null(queue_find(q, "M"));
    assert_int_equal(fx_count_dsns(q), 1);
}

/* Table: when a failure owes a DSN. */
static void test_dsn_rules(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *sender;
        bool is_dsn;
        Hamr__RcptResult__Status status;
        unsigned want_dsn;
    } cases[] = {
        {"bounce, sender", "a@x.test", false, BOUNCED, 1},
        {"expire, sender", "a@x.test", false, EXPIRED, 1},
        {"deferred", "a@x.test", false, DEFERRED, 0},
        {"delivered", "a@x.test", false, DELIVERED, 0},
        {"bounce, null sender", "", false, BOUNCED, 0},
        {"expire, null sender", "", false, EXPIRED, 0},
        {"bounce of a DSN", "", true, BOUNCED, 0},
        {"bounce of a DSN with a sender", "a@x.test", true, BOUNCED, 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue *q = queue_new();
        struct fx_enq e = {
            .id = "D", .sender = cases[i].sender, .rcpts = {"r@y.test"}, .is_dsn = cases[i].is_dsn};
        fx_enqueue(q, T0, &e);
        struct fx_outcome o = {
            .id = "D", .n = 1, .res = {{0, cases[i].status, 550, "no"}}, .next_ms = T0 + MIN};
        struct queue_apply_result r = fx_outcome(q, T0 + 1, &o);
        if (r.dsn_generated != cases[i].want_dsn ||
            fx_count_dsns(q) !=
                cases[i].want_dsn + (cases[i].is_dsn && cases[i].status == DEFERRED))
            fail_msg("%s: dsn %u", cases[i].label, r.dsn_generated);
        queue_free(q);
    }
}

/* A bounced DSN is not bounced again: the chain stops after one. */
static void test_dsn_of_dsn(void **state)
{
    struct queue *q = *state;
    struct fx_enq e = {.id = "N", .sender = "a@x.test", .rcpts = {"r@y.test"}};
    fx_enqueue(q, T0, &e);
    struct fx_outcome o = {.id = "N", .n = 1, .res = {{0, BOUNCED, 550, "5.1.1 unknown"}}};
    assert_int_equal(fx_outcome(q, T0 + 1, &o).dsn_generated, 1);
    struct fx_outcome od = {.id = "N-B0", .n = 1, .res = {{0, BOUNCED, 550, "5.1.1 unknown"}}};
    struct queue_apply_result r = fx_outcome(q, T0 + 2, &od);
    assert_int_equal(r.dsn_generated, 0);
    assert_int_equal(r.finished, 1);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.messages, 0);
}

/* A DSN id already taken is skipped: ids stay unique. */
static void test_dsn_id_collision(void **state)
{
    struct queue *q = *state;
    struct fx_enq taken = {.id = "C-B0", .sender = "", .rcpts = {"r@y.test"}, .is_dsn = true};
    fx_enqueue(q, T0, &taken);
    struct fx_enq e = {.id = "C", .sender = "a@x.test", .rcpts = {"r1@y.test", "r2@y.test"}};
    fx_enqueue(q, T0, &e);
    struct fx_outcome o = {.id = "C", .n = 1, .res = {{0, BOUNCED, 550, "no"}}};
    assert_int_equal(fx_outcome(q, T0 + 1, &o).dsn_generated, 1);
    assert_non_null(queue_find(q, "C-B1"));
    assert_int_equal(queue_find(q, "C")->dsn_count, 2);
    struct fx_outcome o2 = {.id = "C", .n = 1, .res = {{1, BOUNCED, 550, "no"}}};
    assert_int_equal(fx_outcome(q, T0 + 2, &o2).dsn_generated, 1);
    assert_non_null(queue_find(q, "C-B2"));
    assert_int_equal(fx_count_dsns(q), 3);
}

/* Table: which recipients a Lease takes, by state and time. */
static void test_lease_eligibility(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        uint64_t first_node; /* 0: no first lease */
        const char *first_boot;
        uint64_t first_expires; /* relative to T0 */
        bool final;             /* deliver it first */
        bool held;
        uint64_t node;
        const char *boot;
        uint64_t at; /* relative to T0 */
        bool want_taken;
    } cases[] = {
        {"pending", 0, NULL, 0, false, false, 1, "b", 1, true},
        {"pending at enqueue time", 0, NULL, 0, false, false, 1, "b", 0, true},
        {"lease live, other node", 2, "x", 100, false, false, 1, "b", 99, false},
        {"lease lapsed at its expiry", 2, "x", 100, false, false, 1, "b", 100, true},
        {"lease lapsed later", 2, "x", 100, false, false, 1, "b", 500, true},
        {"same node, same boot", 1, "b", 100, false, false, 1, "b", 50, false},
        {"same node, other boot", 1, "old", 100, false, false, 1, "b", 50, true},
        {"same node, no boot before", 1, "", 100, false, false, 1, "b", 50, true},
        {"final", 0, NULL, 0, true, false, 1, "b", 50, false},
        {"held", 0, NULL, 0, false, true, 1, "b", 50, false},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue *q = queue_new();
        struct fx_enq e = {.id = "L", .sender = "a@x", .rcpts = {"r@y", "s@y"}};
        fx_enqueue(q, T0, &e);
        if (cases[i].first_node) {
            struct fx_lease l = {.node = cases[i].first_node,
                                 .term = 1,
                                 .expires = T0 + cases[i].first_expires,
                                 .boot = cases[i].first_boot,
                                 .id = "L",
                                 .idx = {0},
                                 .n = 1,
                                 .lease_id = 1,
                                 .dest = "d1"};
            fx_lease(q, T0, &l);
        }
        if (cases[i].final) {
            struct fx_outcome o = {.id = "L", .n = 1, .res = {{0, DELIVERED, 250, ""}}};
            fx_outcome(q, T0, &o);
        }
        if (cases[i].held)
            fx_admin(q, T0, HAMR__ADMIN__OP__HOLD, "L");
        struct fx_lease l = {.node = cases[i].node,
                             .term = 2,
                             .expires = T0 + 1000,
                             .boot = cases[i].boot,
                             .id = "L",
                             .idx = {0},
                             .n = 1,
                             .lease_id = 2,
                             .dest = "d2"};
        struct queue_apply_result r = fx_lease(q, T0 + cases[i].at, &l);
        assert_int_equal(r.status, 0);
        const struct queue_rcpt *rc = fx_rcpt(q, "L", 0);
        bool taken = rc->state == QUEUE_RCPT_LEASED && queue_rcpt_lease(rc)->id == 2;
        if (taken != cases[i].want_taken)
            fail_msg("%s: taken %d", cases[i].label, taken);
        if (taken) {
            assert_int_equal(queue_rcpt_lease(rc)->node, cases[i].node);
            assert_int_equal(queue_rcpt_lease(rc)->term, 2);
            assert_string_equal(queue_rcpt_lease(rc)->dest, "d2");
            assert_string_equal(queue_rcpt_lease(rc)->boot_id, cases[i].boot);
        }
        /* The other recipient was not in the lease. */
        assert_int_equal(fx_rcpt(q, "L", 1)->state, QUEUE_RCPT_PENDING);
        queue_free(q);
    }
}

/* Refused leases change nothing; items of one Lease stand on their own. */
static void test_lease_refusals(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    struct fx_enq e2 = {.id = "M2", .sender = "a@x", .rcpts = {"r@y"}};
    fx_enqueue(q, T0, &e2);
    char before[65], after[65];

    struct fx_lease unknown = {
        .node = 1, .expires = T0 + MIN, .id = "nope", .idx = {0}, .n = 1, .lease_id = 9};
    assert_int_equal(fx_lease(q, T0 + 1, &unknown).status, HAMR_ENOTFOUND);

    digest_of(q, before);
    struct fx_lease bad_idx = {
        .node = 1, .expires = T0 + MIN, .id = "M", .idx = {0, 3}, .n = 2, .lease_id = 9};
    assert_int_equal(fx_lease(q, T0 + 1, &bad_idx).status, HAMR_EINVAL);
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_PENDING);
    struct fx_lease zero = {
        .node = 1, .expires = T0 + MIN, .id = "M", .idx = {0}, .n = 1, .lease_id = 0};
    assert_int_equal(fx_lease(q, T0 + 1, &zero).status, HAMR_EINVAL);
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_PENDING);
    digest_of(q, after);
    /* Only the applied counter moved. */
    assert_string_not_equal(before, after);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.rcpts_leased, 0);

    /* Two items, the first refers to a gone message: the second still applies. */
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Lease l = HAMR__LEASE__INIT;
    Hamr__LeaseItem i1 = HAMR__LEASE_ITEM__INIT, i2 = HAMR__LEASE_ITEM__INIT;
    uint32_t idx1[] = {0}, idx2[] = {0, 0};
    i1.queue_id = "gone";
    i1.n_rcpt_indexes = 1;
    i1.rcpt_indexes = idx1;
    i1.lease_id = 20;
    i2.queue_id = "M2";
    i2.n_rcpt_indexes = 2; /* a repeated index is leased once */
    i2.rcpt_indexes = idx2;
    i2.lease_id = 21;
    i2.destination = "dx";
    Hamr__LeaseItem *items[] = {&i1, &i2};
    l.node_id = 4;
    l.expires_at_ms = T0 + MIN;
    l.boot_id = "bb";
    l.n_items = 2;
    l.items = items;
    e.cmd_case = HAMR__ENTRY__CMD_LEASE;
    e.lease = &l;
    size_t len;
    uint8_t *b = fx_pack(&e, T0 + 2, &len);
    struct queue_apply_result r = fx_apply(q, b, len);
    assert_int_equal(r.status, HAMR_ENOTFOUND);
    assert_int_equal(fx_rcpt(q, "M2", 0)->state, QUEUE_RCPT_LEASED);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M2", 0))->id, 21);
    assert_string_equal(queue_rcpt_lease(fx_rcpt(q, "M2", 0))->dest, "dx");
}

/* Table: refused outcomes change no recipient. */
static void test_outcome_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        struct fx_outcome o;
        int want;
    } cases[] = {
        {"unknown id", {.id = "nope", .n = 1, .res = {{0, DELIVERED, 250, ""}}}, HAMR_ENOTFOUND},
        {"index out of range",
         {.id = "M", .n = 2, .res = {{0, DELIVERED, 250, ""}, {3, DELIVERED, 250, ""}}},
         HAMR_EINVAL},
        {"index repeated",
         {.id = "M", .n = 2, .res = {{1, BOUNCED, 550, ""}, {1, DELIVERED, 250, ""}}},
         HAMR_EINVAL},
        {"unknown status",
         {.id = "M", .n = 1, .res = {{0, (Hamr__RcptResult__Status)9, 0, ""}}},
         HAMR_EINVAL},
        {"empty results", {.id = "M", .n = 0}, 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue *q = queue_new();
        one_msg(q, "a@example.org");
        struct queue_apply_result r = fx_outcome(q, T0 + 1, &cases[i].o);
        if (r.status != cases[i].want)
            fail_msg("%s: status %d", cases[i].label, r.status);
        for (size_t k = 0; k < 3; k++)
            assert_int_equal(fx_rcpt(q, "M", k)->state, QUEUE_RCPT_PENDING);
        assert_int_equal(r.dsn_generated, 0);
        assert_int_equal(fx_count_dsns(q), 0);
        queue_free(q);
    }
}

static void test_hold_release(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    assert_int_equal(fx_admin(q, T0 + 1, HAMR__ADMIN__OP__HOLD, "M").status, 0);
    assert_true(queue_find(q, "M")->held);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.held, 1);
    /* Not leased while held. */
    assert_int_equal(lease_idx(q, T0 + 2, "M", 3, 0, 3).status, 0);
    queue_get_stats(q, &st);
    assert_int_equal(st.rcpts_leased, 0);
    assert_int_equal(fx_admin(q, T0 + 3, HAMR__ADMIN__OP__RELEASE, "M").status, 0);
    assert_false(queue_find(q, "M")->held);
    lease_idx(q, T0 + 4, "M", 4, 0, 3);
    queue_get_stats(q, &st);
    assert_int_equal(st.rcpts_leased, 3);
    assert_int_equal(st.held, 0);
    assert_int_equal(fx_admin(q, T0 + 5, HAMR__ADMIN__OP__HOLD, "zz").status, HAMR_ENOTFOUND);
    assert_int_equal(fx_admin(q, T0 + 5, HAMR__ADMIN__OP__RELEASE, "zz").status, HAMR_ENOTFOUND);
}

static void test_flush(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    struct fx_enq e2 = {.id = "M2", .sender = "a@x", .rcpts = {"r@y"}};
    fx_enqueue(q, T0, &e2);
    /* Defer everything far into the future; lease M's rcpt 2. */
    struct fx_outcome o = {.id = "M",
                           .n = 2,
                           .res = {{0, DEFERRED, 451, ""}, {1, DEFERRED, 451, ""}},
                           .next_ms = T0 + 1000 * MIN};
    fx_outcome(q, T0 + 1, &o);
    struct fx_outcome o2 = {
        .id = "M2", .n = 1, .res = {{0, DEFERRED, 451, ""}}, .next_ms = T0 + 1000 * MIN};
    fx_outcome(q, T0 + 1, &o2);
    lease_idx(q, T0 + 2, "M", 8, 2, 1);

    assert_int_equal(fx_admin(q, T0 + 10, HAMR__ADMIN__OP__FLUSH, "M").status, 0);
    assert_int_equal(fx_rcpt(q, "M", 0)->next_attempt_ms, T0 + 10);
    assert_int_equal(fx_rcpt(q, "M", 1)->next_attempt_ms, T0 + 10);
    assert_int_equal(fx_rcpt(q, "M", 2)->state, QUEUE_RCPT_LEASED);
    assert_int_equal(fx_rcpt(q, "M2", 0)->next_attempt_ms, T0 + 1000 * MIN);

    assert_int_equal(fx_admin(q, T0 + 20, HAMR__ADMIN__OP__FLUSH, "").status, 0);
    assert_int_equal(fx_rcpt(q, "M", 0)->next_attempt_ms, T0 + 20);
    assert_int_equal(fx_rcpt(q, "M2", 0)->next_attempt_ms, T0 + 20);
    assert_int_equal(fx_rcpt(q, "M", 0)->attempts, 1);
    assert_int_equal(fx_admin(q, T0 + 20, HAMR__ADMIN__OP__FLUSH, "zz").status, HAMR_ENOTFOUND);
}

static void test_delete(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    lease_idx(q, T0 + 1, "M", 5, 0, 1);
    struct queue_apply_result r = fx_admin(q, T0 + 2, HAMR__ADMIN__OP__DELETE, "M");
    assert_int_equal(r.status, 0);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.dsn_generated, 0);
    assert_null(queue_find(q, "M"));
    assert_true(queue_contains(q, "M"));
    assert_int_equal(fx_count_dsns(q), 0);
    /* The lease holder's outcome arrives too late. */
    struct fx_outcome o = {.id = "M", .lease_id = 5, .n = 1, .res = {{0, DELIVERED, 250, ""}}};
    assert_int_equal(fx_outcome(q, T0 + 3, &o).status, HAMR_ENOTFOUND);
    struct fx_enq e = {.id = "M", .sender = "a@x", .rcpts = {"r@y"}};
    assert_true(fx_enqueue(q, T0 + 4, &e).duplicate);
    assert_int_equal(fx_admin(q, T0 + 5, HAMR__ADMIN__OP__DELETE, "M").status, HAMR_ENOTFOUND);
}

static void test_admin_bounce(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    lease_idx(q, T0 + 1, "M", 5, 1, 1);
    struct queue_apply_result r = fx_admin(q, T0 + 2, HAMR__ADMIN__OP__BOUNCE, "M");
    assert_int_equal(r.status, 0);
    assert_int_equal(r.dsn_generated, 1);
    assert_int_equal(r.finished, 0);
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_BOUNCED);
    assert_string_equal(queue_rcpt_tried(fx_rcpt(q, "M", 0))->error,
                        "bounced by the administrator");
    assert_int_equal(fx_rcpt(q, "M", 1)->state, QUEUE_RCPT_LEASED);
    assert_int_equal(fx_rcpt(q, "M", 2)->state, QUEUE_RCPT_BOUNCED);
    const struct queue_msg *d = queue_find(q, "M-B0");
    assert_non_null(d);
    char *body = strndup((const char *)queue_msg_body(d), d->body_len);
    assert_non_null(strstr(body, "Final-Recipient: rfc822; r0@one.test\r\n"));
    assert_non_null(strstr(body, "Final-Recipient: rfc822; r2@one.test\r\n"));
    assert_null(strstr(body, "Final-Recipient: rfc822; r1@two.test"));
    assert_non_null(strstr(body, "Reporting-MTA: dns; mx.hamr.test\r\n"));
    free(body);
    /* Again: nothing pending, nothing happens. */
    r = fx_admin(q, T0 + 3, HAMR__ADMIN__OP__BOUNCE, "M");
    assert_int_equal(r.dsn_generated, 0);
    /* The leased one finishes: the message leaves. */
    struct fx_outcome o = {.id = "M", .lease_id = 5, .n = 1, .res = {{1, DELIVERED, 250, ""}}};
    assert_int_equal(fx_outcome(q, T0 + 4, &o).finished, 1);
    assert_null(queue_find(q, "M"));

    /* A bounce that fails every recipient finishes the message at once. */
    struct fx_enq e = {.id = "Z", .sender = "", .rcpts = {"r@y"}};
    fx_enqueue(q, T0 + 5, &e);
    r = fx_admin(q, T0 + 6, HAMR__ADMIN__OP__BOUNCE, "Z");
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.dsn_generated, 0); /* null sender */
    assert_int_equal(fx_admin(q, T0 + 7, HAMR__ADMIN__OP__BOUNCE, "Z").status, HAMR_ENOTFOUND);
    assert_int_equal(fx_count_dsns(q), 1);
}

static void test_done_pruning(void **state)
{
    struct queue *q = *state;
    struct fx_enq e = {.id = "P", .sender = "a@x", .rcpts = {"r@y"}};
    fx_enqueue(q, T0, &e);
    fx_admin(q, T0 + 100, HAMR__ADMIN__OP__DELETE, "P");
    struct fx_enq e2 = {.id = "P2", .sender = "a@x", .rcpts = {"r@y"}};
    fx_enqueue(q, T0 + 200, &e2);
    fx_admin(q, T0 + 200, HAMR__ADMIN__OP__DELETE, "P2");

    const struct {
        uint64_t at;
        bool want_p, want_p2;
    } steps[] = {
        {T0 + 100 + QUEUE_DONE_TTL_MS - 1, true, true},
        {T0 + 100 + QUEUE_DONE_TTL_MS, false, true},
        {T0 + 200 + QUEUE_DONE_TTL_MS - 1, false, true},
        {T0 + 200 + QUEUE_DONE_TTL_MS, false, false},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(steps); i++) {
        /* Any entry prunes; a flush of nothing will do. */
        fx_admin(q, steps[i].at, HAMR__ADMIN__OP__FLUSH, "");
        assert_int_equal(queue_contains(q, "P"), steps[i].want_p);
        assert_int_equal(queue_contains(q, "P2"), steps[i].want_p2);
    }
    /* An older timestamp does not bring them back, and the id is free again. */
    fx_admin(q, T0, HAMR__ADMIN__OP__FLUSH, "");
    assert_false(queue_contains(q, "P"));
    assert_false(fx_enqueue(q, T0 + 300 + QUEUE_DONE_TTL_MS, &e).duplicate);
    assert_non_null(queue_find(q, "P"));
}

/* build_varied - a queue with every kind of state in it. */
static void build_varied(struct queue *q)
{
    one_msg(q, "a@example.org");
    struct fx_enq e2 = {.id = "H",
                        .sender = "b@x",
                        .rcpts = {"r@y"},
                        .client_addr = "::1",
                        .helo = "h.test",
                        .accepted_by = 3,
                        .body_8bit = true,
                        .body = "Subject: \xc3\xa9\r\n\r\nbody\r\n"};
    fx_enqueue(q, T0 + 1, &e2);
    fx_admin(q, T0 + 2, HAMR__ADMIN__OP__HOLD, "H");
    lease_idx(q, T0 + 3, "M", 77, 0, 2);
    struct fx_outcome o = {
        .id = "M",
        .lease_id = 77,
        .n = 2,
        .res = {{0, DEFERRED, 451, "4.4.1 later"}, {1, BOUNCED, 550, "5.1.1 nope"}},
        .next_ms = T0 + 40 * MIN};
    fx_outcome(q, T0 + 4, &o);
    lease_idx(q, T0 + 5, "M", 78, 2, 1);
    struct fx_enq e3 = {.id = "G", .sender = "c@x", .rcpts = {"r@y"}};
    fx_enqueue(q, T0 + 6, &e3);
    fx_admin(q, T0 + 7, HAMR__ADMIN__OP__DELETE, "G");
}

static void test_snapshot_restore(void **state)
{
    struct queue *q = *state;
    build_varied(q);
    char d1[65], d2[65];
    digest_of(q, d1);
    struct queue *r = fx_snapshot_roundtrip(q);
    digest_of(r, d2);
    assert_string_equal(d1, d2);
    fx_assert_same_msgs(q, r);
    assert_true(queue_contains(r, "G"));
    assert_null(queue_find(r, "G"));
    struct queue_stats s1, s2;
    queue_get_stats(q, &s1);
    queue_get_stats(r, &s2);
    assert_memory_equal(&s1, &s2, sizeof(s1));

    /* Both go on identically. */
    struct fx_outcome o = {.id = "M", .lease_id = 78, .n = 1, .res = {{2, BOUNCED, 550, "x"}}};
    assert_int_equal(fx_outcome(q, T0 + 9, &o).dsn_generated, 1);
    assert_int_equal(fx_outcome(r, T0 + 9, &o).dsn_generated, 1);
    digest_of(q, d1);
    digest_of(r, d2);
    assert_string_equal(d1, d2);
    fx_assert_same_msgs(q, r);

    /* Restoring into a non-empty queue replaces its state entirely. */
    struct queue *other = queue_new();
    struct fx_enq e = {.id = "OTHER", .sender = "o@x", .rcpts = {"r@y"}};
    fx_enqueue(other, T0, &e);
    uint8_t *snap;
    size_t len;
    assert_int_equal(queue_snapshot(q, NULL, &snap, &len), 0);
    assert_int_equal(queue_restore(other, snap, len), 0);
    free(snap);
    assert_null(queue_find(other, "OTHER"));
    assert_false(queue_contains(other, "OTHER"));
    digest_of(other, d2);
    assert_string_equal(d1, d2);
    queue_free(other);
    queue_free(r);

    /* An empty queue round-trips too. */
    struct queue *empty = queue_new();
    struct queue *empty2 = fx_snapshot_roundtrip(empty);
    digest_of(empty, d1);
    digest_of(empty2, d2);
    assert_string_equal(d1, d2);
    queue_free(empty);
    queue_free(empty2);
}

/* Hand-made snapshots with one defect each. */
static uint8_t *bad_snapshot(int defect, size_t *len)
{
    static const char body[] = "Subject: x\r\n\r\nbody\r\n";
    uint8_t sha[32];
    fx_sha256(body, strlen(body), sha);
    char *rcpts[] = {"r@y"};
    Hamr__Enqueue e1 = HAMR__ENQUEUE__INIT, e2 = HAMR__ENQUEUE__INIT;
    Hamr__RcptState rs = HAMR__RCPT_STATE__INIT;
    Hamr__RcptState *rsp[] = {&rs};
    Hamr__QueuedMessage m1 = HAMR__QUEUED_MESSAGE__INIT, m2 = HAMR__QUEUED_MESSAGE__INIT;
    Hamr__QueuedMessage *ms[] = {&m1, &m2};
    Hamr__DoneId d = HAMR__DONE_ID__INIT;
    Hamr__DoneId *ds[] = {&d};
    Hamr__Snapshot s = HAMR__SNAPSHOT__INIT;
    e1.queue_id = "S1";
    e1.sender = "a@x";
    e1.n_rcpts = 1;
    e1.rcpts = rcpts;
    e1.body.data = (uint8_t *)body;
    e1.body.len = strlen(body);
    e1.body_sha256.data = sha;
    e1.body_sha256.len = 32;
    e2 = e1;
    e2.queue_id = "S2";
    rs.addr = "r@y";
    m1.enqueue = &e1;
    m1.n_rcpts = 1;
    m1.rcpts = rsp;
    m2 = m1;
    m2.enqueue = &e2;
    d.queue_id = "S3";
    s.n_messages = 2;
    s.messages = ms;
    s.n_done = 1;
    s.done = ds;
    uint8_t bad_sha[32] = {0};
    switch (defect) {
        case 0: /* none */
            break;
        case 1:
            e2.queue_id = "S1"; /* duplicate id */
            break;
        case 2:
            e2.body_sha256.data = bad_sha; /* body does not match */
            break;
        case 3:
            m2.n_rcpts = 0; /* rcpt states missing */
            break;
        case 4:
            rs.state = (Hamr__RcptState__State)7; /* unknown state */
            break;
        case 5:
            d.queue_id = "S1"; /* done id also queued */
            break;
        case 6:
            e2.queue_id = ""; /* empty id */
            break;
        case 7:
            m2.enqueue = NULL; /* no envelope */
            break;
        case 8:
            rs.addr = "other@y"; /* state of another recipient */
            break;
        case 9:
            e2.body_sha256.len = 0;
            break;
    }
    uint8_t *out;
    assert_int_equal(proto_snapshot_pack(&s, NULL, &out, len), 0);
    return out;
}

static void test_restore_garbage(void **state)
{
    struct queue *q = *state;
    build_varied(q);
    char before[65], after[65];
    digest_of(q, before);

    size_t good_len;
    uint8_t *good = bad_snapshot(0, &good_len);
    uint8_t v2[512];
    memcpy(v2, good, good_len);
    /* Field 1 (format_version) is the first byte after the magic: 0x08, value 0x01. */
    assert_int_equal(v2[4], 0x08);
    assert_int_equal(v2[5], 0x01);
    v2[5] = 0x02;
    static const uint8_t junk[] = {'H', 'M', 'S', 'N', 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};

    const struct {
        const char *label;
        const uint8_t *buf;
        size_t len;
        int want;
    } raw[] = {
        {"empty", (const uint8_t *)"", 0, HAMR_ECORRUPT},
        {"entry magic", (const uint8_t *)"HAMR", 4, HAMR_ECORRUPT},
        {"junk", junk, sizeof(junk), HAMR_ECORRUPT},
        {"truncated", good, good_len - 5, HAMR_ECORRUPT},
        {"version 2", v2, good_len, HAMR_EVERSION},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(raw); i++) {
        int rv = queue_restore(q, raw[i].buf, raw[i].len);
        if (rv != raw[i].want)
            fail_msg("%s: %d", raw[i].label, rv);
        digest_of(q, after);
        assert_string_equal(before, after);
    }
    for (int defect = 1; defect <= 9; defect++) {
        size_t len;
        uint8_t *b = bad_snapshot(defect, &len);
        int rv = queue_restore(q, b, len);
        free(b);
        if (rv != HAMR_ECORRUPT)
            fail_msg("defect %d: %d", defect, rv);
        digest_of(q, after);
        assert_string_equal(before, after);
        assert_non_null(queue_find(q, "M"));
    }
    /* The defect-free one restores. */
    assert_int_equal(queue_restore(q, good, good_len), 0);
    free(good);
    assert_non_null(queue_find(q, "S1"));
    assert_non_null(queue_find(q, "S2"));
    assert_true(queue_contains(q, "S3"));
    assert_null(queue_find(q, "M"));
}

static void test_digest_format(void **state)
{
    struct queue *q = *state;
    char hex[65], hex2[65];
    queue_digest(q, hex);
    assert_int_equal(strlen(hex), 64);
    for (size_t i = 0; i < 64; i++)
        assert_non_null(strchr("0123456789abcdef", hex[i]));
    assert_string_not_equal(hex,
                            "0000000000000000000000000000000000000000000000000000000000000000");
    one_msg(q, "a@example.org");
    queue_digest(q, hex2);
    assert_string_not_equal(hex, hex2);
    /* Digests ignore nothing that matters: holding changes it. */
    fx_admin(q, T0 + 1, HAMR__ADMIN__OP__HOLD, "M");
    queue_digest(q, hex);
    assert_string_not_equal(hex, hex2);
}

/* ------------------------------------------------------------------------
 * Determinism over a long pseudo-random sequence
 * ------------------------------------------------------------------------ */

/* feed - apply entries [from, to) and return how many were refused. */
static unsigned feed(struct queue *q, const struct fx_bytes *e, int from, int to)
{
    unsigned refused = 0;
    for (int i = from; i < to; i++) {
        struct queue_apply_result res;
        assert_int_equal(queue_apply(q, e[i].buf, e[i].len, &res), 0);
        refused += res.status != 0;
    }
    return refused;
}

static void test_replay_determinism(void **state)
{
    (void)state;
    static const uint64_t seeds[] = {1, 0x9e3779b97f4a7c15ull, 424242};
    for (size_t si = 0; si < HAMR_ARRAY_LEN(seeds); si++) {
        struct fx_bytes e[FX_RANDOM_OPS];
        fx_random_entries(seeds[si], e);
        struct queue *a = queue_new(), *b = queue_new();
        unsigned ra = feed(a, e, 0, FX_RANDOM_OPS / 2);
        unsigned rb = feed(b, e, 0, FX_RANDOM_OPS / 2);
        assert_int_equal(ra, rb);
        /* Mid-way snapshot into a third queue. */
        uint8_t *snap;
        size_t len;
        assert_int_equal(queue_snapshot(a, NULL, &snap, &len), 0);
        struct queue *c = queue_new();
        assert_int_equal(queue_restore(c, snap, len), 0);
        free(snap);
        ra += feed(a, e, FX_RANDOM_OPS / 2, FX_RANDOM_OPS);
        rb += feed(b, e, FX_RANDOM_OPS / 2, FX_RANDOM_OPS);
        feed(c, e, FX_RANDOM_OPS / 2, FX_RANDOM_OPS);
        char da[65], db[65], dc[65];
        digest_of(a, da);
        digest_of(b, db);
        digest_of(c, dc);
        assert_string_equal(da, db);
        assert_string_equal(da, dc);
        fx_assert_same_msgs(a, b);
        fx_assert_same_msgs(a, c);
        /* The sequence exercised the interesting paths. */
        struct queue_stats st;
        queue_get_stats(a, &st);
        assert_int_equal(st.applied, FX_RANDOM_OPS);
        assert_true(ra > 0);
        assert_true(ra < FX_RANDOM_OPS);

        /* A different order gives a different state. */
        struct queue *d = queue_new();
        feed(d, e, FX_RANDOM_OPS / 2, FX_RANDOM_OPS);
        char dd[65];
        digest_of(d, dd);
        assert_string_not_equal(da, dd);
        for (int i = 0; i < FX_RANDOM_OPS; i++)
            free(e[i].buf);
        queue_free(a);
        queue_free(b);
        queue_free(c);
        queue_free(d);
    }
}

/* stats_walk_cb - the status counts the slow way, one message at a time. */
static int stats_walk_cb(void *arg, const struct queue_msg *m)
{
    struct queue_stats *w = arg;
    w->messages++;
    w->held += m->held;
    w->bytes += m->body_len;
    bool active = false, deferred = false, live = false;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        w->rcpts_pending += r->state == QUEUE_RCPT_PENDING;
        w->rcpts_leased += r->state == QUEUE_RCPT_LEASED;
        if (r->state != QUEUE_RCPT_PENDING && r->state != QUEUE_RCPT_LEASED)
            continue;
        live = true;
        active |= r->state == QUEUE_RCPT_LEASED;
        deferred |= r->state == QUEUE_RCPT_PENDING && r->attempts > 0;
        if (m->held)
            w->stage_rcpts[QUEUE_STAGE_HELD]++;
        else if (r->state == QUEUE_RCPT_LEASED)
            w->stage_rcpts[QUEUE_STAGE_ACTIVE]++;
        else
            w->stage_rcpts[r->attempts > 0 ? QUEUE_STAGE_DEFERRED : QUEUE_STAGE_PENDING]++;
    }
    /* A message shows its most advanced live recipient: held, active, deferred, pending. */
    if (m->held && live)
        w->stage_msgs[QUEUE_STAGE_HELD]++;
    else if (active)
        w->stage_msgs[QUEUE_STAGE_ACTIVE]++;
    else if (deferred)
        w->stage_msgs[QUEUE_STAGE_DEFERRED]++;
    else
        w->stage_msgs[QUEUE_STAGE_PENDING]++;
    return 0;
}

/* assert_stats_match_walk - queue_get_stats (kept counts) equals a full walk. */
static void assert_stats_match_walk(const struct queue *q)
{
    struct queue_stats st, w = {0};
    queue_get_stats(q, &st);
    queue_foreach(q, stats_walk_cb, &w);
    assert_int_equal(st.messages, w.messages);
    assert_int_equal(st.held, w.held);
    assert_int_equal(st.bytes, w.bytes);
    assert_int_equal(st.rcpts_pending, w.rcpts_pending);
    assert_int_equal(st.rcpts_leased, w.rcpts_leased);
    for (int i = 0; i < QUEUE_STAGES; i++) {
        assert_int_equal(st.stage_msgs[i], w.stage_msgs[i]);
        assert_int_equal(st.stage_rcpts[i], w.stage_rcpts[i]);
    }
}

/*
 * The status counts are kept on every apply (enqueue, lease, outcome, DSN,
 * hold, release, flush, bounce, delete, expiry) and by a restore, which
 * also replaces whatever the queue held before; after each step they equal
 * a walk, and they leave the digest alone.
 */
static void test_stats_counts_kept(void **state)
{
    (void)state;
    static const uint64_t seeds[] = {7, 0x9e3779b97f4a7c15ull};
    for (size_t si = 0; si < HAMR_ARRAY_LEN(seeds); si++) {
        struct fx_bytes e[FX_RANDOM_OPS];
        fx_random_entries(seeds[si], e);
        struct queue *a = queue_new(), *c = queue_new();
        struct queue_stats most = {0};
        for (int i = 0; i < FX_RANDOM_OPS; i++) {
            feed(a, e, i, i + 1);
            assert_stats_match_walk(a);
            struct queue_stats st;
            queue_get_stats(a, &st);
            most.held = st.held > most.held ? st.held : most.held;
            most.rcpts_leased =
                st.rcpts_leased > most.rcpts_leased ? st.rcpts_leased : most.rcpts_leased;
            if (i % 40 != 39)
                continue;
            /* c holds an older state: the restore must not add to it. */
            uint8_t *snap;
            size_t len;
            assert_int_equal(queue_snapshot(a, NULL, &snap, &len), 0);
            assert_int_equal(queue_restore(c, snap, len), 0);
            free(snap);
            assert_stats_match_walk(c);
            char da[65], dc[65];
            digest_of(a, da);
            digest_of(c, dc);
            assert_string_equal(da, dc);
        }
        /* The mix held and leased something at some point. */
        assert_true(most.held > 0);
        assert_true(most.rcpts_leased > 0);
        for (int i = 0; i < FX_RANDOM_OPS; i++)
            free(e[i].buf);
        queue_free(a);
        queue_free(c);
    }
}

/* DSNs appear in the random run and never for a null sender or a DSN. */
static int dsn_check_cb(void *arg, const struct queue_msg *m)
{
    unsigned *n = arg;
    if (m->is_dsn) {
        (*n)++;
        assert_string_equal(m->sender, "");
        assert_int_equal(m->n_rcpts, 1);
        assert_string_not_equal(m->rcpts[0].addr, "");
        assert_non_null(strstr(m->id, "-B"));
    }
    return 0;
}

static void test_replay_dsn_invariants(void **state)
{
    (void)state;
    struct fx_bytes e[FX_RANDOM_OPS];
    fx_random_entries(7, e);
    struct queue *q = queue_new();
    unsigned dsns = 0;
    for (int i = 0; i < FX_RANDOM_OPS; i++) {
        struct queue_apply_result res;
        assert_int_equal(queue_apply(q, e[i].buf, e[i].len, &res), 0);
        assert_true(res.dsn_generated <= 1);
        dsns += res.dsn_generated;
        free(e[i].buf);
    }
    unsigned queued = 0;
    queue_foreach(q, dsn_check_cb, &queued);
    assert_true(dsns > 0);
    assert_true(queued <= dsns);
    queue_free(q);
}

/* ------------------------------------------------------------------------
 * Allocation failures: every command is all or nothing, nothing leaks
 * ------------------------------------------------------------------------ */

/* fault_prep - three messages, one of them leased, one finished. */
static void fault_prep(struct queue *q)
{
    assert_int_equal(fx_level(q, T0 - 1, QUEUE_LEVEL_TLS).status, 0);
    one_msg(q, "a@example.org");
    struct fx_enq e2 = {.id = "M2", .sender = "b@x.test", .rcpts = {"r@y.test", "s@y.test"}};
    fx_enqueue(q, T0, &e2);
    struct fx_enq e3 = {.id = "M3", .sender = "c@x.test", .rcpts = {"r@y.test"}};
    fx_enqueue(q, T0, &e3);
    fx_admin(q, T0, HAMR__ADMIN__OP__DELETE, "M3");
    lease_idx(q, T0 + 1, "M", 5, 0, 3);
}

static uint8_t *fault_enqueue(size_t *len)
{
    struct fx_enq e = {.id = "NEW",
                       .sender = "n@x.test",
                       .rcpts = {"a@b.test", "c@d.test"},
                       .client_addr = "192.0.2.1",
                       .helo = "h"};
    return fx_pack_enqueue(T0 + 2, &e, len);
}

static uint8_t *fault_lease(size_t *len)
{
    struct fx_lease l = {.node = 2,
                         .term = 1,
                         .expires = T0 + MIN,
                         .boot = "bb",
                         .id = "M2",
                         .idx = {0, 1},
                         .n = 2,
                         .lease_id = 9,
                         .dest = "[d]:25"};
    return fx_pack_lease(T0 + 2, &l, len);
}

static uint8_t *fault_outcome_mixed(size_t *len)
{
    struct fx_outcome o = {.id = "M",
                           .lease_id = 5,
                           .n = 3,
                           .res = {{0, DELIVERED, 250, ""},
                                   {1, DEFERRED, 451, "4.3.0 later"},
                                   {2, BOUNCED, 550, "5.1.1 no"}},
                           .next_ms = T0 + MIN,
                           .remote = "[r]:25"};
    return fx_pack_outcome(T0 + 2, &o, len);
}

static uint8_t *fault_outcome_final(size_t *len)
{
    struct fx_outcome o = {.id = "M",
                           .lease_id = 5,
                           .n = 3,
                           .res = {{0, BOUNCED, 550, "5.1.1 no"},
                                   {1, EXPIRED, 451, "4.4.1 slow"},
                                   {2, BOUNCED, 550, "5.1.1 no"}}};
    return fx_pack_outcome(T0 + 2, &o, len);
}

static uint8_t *fault_outcome_tls(size_t *len)
{
    const struct tls_res r[] = {{0, DELIVERED, "may", TLS_PLAIN},
                                {1, DEFERRED, "verify", TLS_V13},
                                {2, BOUNCED, "encrypt", "none (bounced: no TLS session)"}};
    return tls_outcome_pack(T0 + 2, "M", 5, r, HAMR_ARRAY_LEN(r), len);
}

static uint8_t *fault_admin_bounce(size_t *len)
{
    return fx_pack_admin(T0 + 2, HAMR__ADMIN__OP__BOUNCE, "M2", len);
}

static uint8_t *fault_admin_delete(size_t *len)
{
    return fx_pack_admin(T0 + 2, HAMR__ADMIN__OP__DELETE, "M2", len);
}

static void test_apply_alloc_failures(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        uint8_t *(*make)(size_t *len);
        unsigned want_dsn, want_finished;
        const char *want_present; /* queued after success */
        const char *want_absent;  /* not queued after success */
    } cases[] = {
        {"enqueue", fault_enqueue, 0, 0, "NEW", NULL},
        {"lease", fault_lease, 0, 0, "M2", NULL},
        {"outcome, mixed", fault_outcome_mixed, 1, 0, "M-B0", NULL},
        {"outcome, final", fault_outcome_final, 1, 1, "M-B0", "M"},
        {"outcome, with TLS", fault_outcome_tls, 1, 0, "M-B0", NULL},
        {"admin bounce", fault_admin_bounce, 1, 1, "M2-B0", "M2"},
        {"admin delete", fault_admin_delete, 0, 1, NULL, "M2"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        unsigned failures = 0;
        for (long n = 0;; n++) {
            assert_true(n < 1000);
            struct queue *q = queue_new();
            fault_prep(q);
            char before[65], after[65];
            digest_of(q, before);
            size_t len;
            uint8_t *b = cases[i].make(&len);
            struct queue_apply_result res;
            fx_fail_after(n);
            int rv = queue_apply(q, b, len, &res);
            bool failed = fx_fail_off();
            free(b);
            digest_of(q, after);
            if (rv != 0) {
                if (rv != HAMR_ENOMEM)
                    fail_msg("%s, failure %ld: %d", cases[i].label, n, rv);
                assert_string_equal(before, after);
                failures++;
                queue_free(q);
                continue;
            }
            /* Success, possibly with an absorbed failure: the whole effect. */
            assert_int_equal(res.status, 0);
            assert_int_equal(res.dsn_generated, cases[i].want_dsn);
            assert_int_equal(res.finished, cases[i].want_finished);
            if (cases[i].want_present)
                assert_non_null(queue_find(q, cases[i].want_present));
            if (cases[i].want_absent)
                assert_null(queue_find(q, cases[i].want_absent));
            queue_free(q);
            if (!failed)
                break;
        }
        /* Every case allocates, so some runs failed. */
        assert_true(failures > 0);
    }
}

static void test_snapshot_alloc_failures(void **state)
{
    (void)state;
    struct queue *src = queue_new();
    build_varied(src);
    char want[65];
    digest_of(src, want);
    for (long n = 0;; n++) {
        assert_true(n < 1000);
        uint8_t *snap = NULL;
        size_t len = 0;
        fx_fail_after(n);
        int rv = queue_snapshot(src, NULL, &snap, &len);
        bool failed = fx_fail_off();
        if (rv != 0) {
            assert_int_equal(rv, HAMR_ENOMEM);
            continue;
        }
        /* Restore under failures into a queue with its own state. */
        struct queue *dst = queue_new();
        fault_prep(dst);
        char before[65], got[65];
        digest_of(dst, before);
        fx_fail_after(n);
        rv = queue_restore(dst, snap, len);
        bool failed2 = fx_fail_off();
        digest_of(dst, got);
        if (rv != 0) {
            assert_int_equal(rv, HAMR_ENOMEM);
            assert_string_equal(got, before);
        } else {
            assert_string_equal(got, want);
        }
        /* The digest itself: the right value, or zeros when it could not be computed. */
        char d[65];
        fx_fail_after(n);
        queue_digest(src, d);
        fx_fail_off();
        assert_true(strcmp(d, want) == 0 ||
                    strcmp(d, "0000000000000000000000000000000000000000000000000000000000000000") ==
                        0);
        free(snap);
        queue_free(dst);
        if (!failed && !failed2)
            break;
    }
    queue_free(src);
}

/* ------------------------------------------------------------------------
 * The node directory (NodeInfo entries)
 * ------------------------------------------------------------------------ */

/* fx_node - the fields of one NodeInfo entry. */
struct fx_node {
    uint64_t id;
    const char *peer;
    const char *control;
    const char *version;
    uint32_t fmax;
};

/* node_apply - apply a NodeInfo entry at ts; returns the result (queue_apply must succeed). */
static struct queue_apply_result node_apply(struct queue *q, uint64_t ts, const struct fx_node *n)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    ni.node_id = n->id;
    ni.peer_address = (char *)n->peer;
    ni.control_address = (char *)n->control;
    ni.version = (char *)n->version;
    ni.format_version_max = n->fmax;
    e.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    e.node_info = &ni;
    size_t len;
    uint8_t *b = fx_pack(&e, ts, &len);
    return fx_apply(q, b, len);
}

/* node_assert - the directory entry of n->id holds exactly n's fields. */
static void node_assert(const struct queue *q, const struct fx_node *n)
{
    const struct queue_node *got = queue_node_find(q, n->id);
    assert_non_null(got);
    assert_int_equal(got->node_id, n->id);
    assert_string_equal(got->peer_address, n->peer);
    assert_string_equal(got->control_address, n->control);
    assert_string_equal(got->version, n->version);
    assert_int_equal(got->format_version_max, n->fmax);
}

/* node_ids - the directory's node ids in list order, as text ("1,2,3"). */
static void node_ids(const struct queue *q, char *out, size_t cap)
{
    const struct queue_node *list = NULL;
    size_t n = queue_node_list(q, &list);
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(out + used, cap - used, "%s%llu", i ? "," : "",
                         (unsigned long long)list[i].node_id);
        assert_true(w > 0 && (size_t)w < cap - used);
        used += (size_t)w;
    }
}

static const struct fx_node node_a = {3, "10.0.0.3:7101", "127.0.0.1:7201", "hamr 0.1.0", 1};
static const struct fx_node node_b = {1, "10.0.0.1:7101", "127.0.0.1:7201", "hamr 0.1.0", 1};
static const struct fx_node node_c = {2, "10.0.0.2:7101", "127.0.0.1:7201", "hamr 0.1.1", 2};

/* Insert in any order, list sorted by node id, replace in place, find. */
static void test_node_insert_replace_order(void **state)
{
    struct queue *q = *state;
    const struct queue_node *list = NULL;
    char ids[256];
    assert_int_equal(queue_node_list(q, &list), 0);
    assert_null(queue_node_find(q, 1));

    static const struct {
        const struct fx_node *n;
        const char *want_ids;
    } inserts[] = {
        {&node_a, "3"},
        {&node_b, "1,3"},
        {&node_c, "1,2,3"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(inserts); i++) {
        struct queue_apply_result r = node_apply(q, T0 + i, inserts[i].n);
        assert_int_equal(r.status, 0);
        assert_false(r.duplicate);
        node_ids(q, ids, sizeof(ids));
        assert_string_equal(ids, inserts[i].want_ids);
        node_assert(q, inserts[i].n);
    }
    assert_null(queue_node_find(q, 4));
    assert_null(queue_node_find(q, 0));

    /* Node 2 moves and upgrades: replaced in place, every field, nothing added. */
    struct fx_node moved = {2, "10.9.9.2:8101", "10.9.9.2:8201", "hamr 0.2.0", 3};
    assert_int_equal(node_apply(q, T0 + 10, &moved).status, 0);
    node_ids(q, ids, sizeof(ids));
    assert_string_equal(ids, "1,2,3");
    node_assert(q, &moved);
    node_assert(q, &node_a);
    node_assert(q, &node_b);

    /* Replacing with empty strings clears the old values (no leftovers). */
    struct fx_node blank = {2, "", "", "", 0};
    assert_int_equal(node_apply(q, T0 + 11, &blank).status, 0);
    node_assert(q, &blank);

    /* The largest node id sorts last; an id between others lands between them. */
    struct fx_node big = {UINT64_MAX, "10.0.0.9:1", "10.0.0.9:2", "v", 1};
    struct fx_node mid = {1ull << 40, "10.0.0.8:1", "10.0.0.8:2", "v", 1};
    assert_int_equal(node_apply(q, T0 + 12, &big).status, 0);
    assert_int_equal(node_apply(q, T0 + 13, &mid).status, 0);
    node_ids(q, ids, sizeof(ids));
    assert_string_equal(ids, "1,2,3,1099511627776,18446744073709551615");
    node_assert(q, &big);

    /* NodeInfo entries are counted as applied like any other. */
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.applied, 7);
    assert_int_equal(st.messages, 0);
}

/* Table: refused NodeInfo values set res.status and leave the directory alone. */
static void test_node_refusals(void **state)
{
    (void)state;
    static const char addr63[] = "1234567890123456789012345678901234567890123456789012345678:7101";
    static const char addr64[] = "12345678901234567890123456789012345678901234567890123456789:7101";
    static const char ver31[] = "hamr-01234567890123456789012345";
    static const char ver32[] = "hamr-012345678901234567890123456";
    static const struct {
        const char *label;
        struct fx_node n;
        int want_status;
    } cases[] = {
        {"node id 0", {0, "10.0.0.1:7101", "127.0.0.1:7201", "v", 1}, HAMR_EINVAL},
        {"peer address 64 chars", {5, addr64, "127.0.0.1:7201", "v", 1}, HAMR_EINVAL},
        {"control address 64 chars", {5, "10.0.0.1:7101", addr64, "v", 1}, HAMR_EINVAL},
        {"version 32 chars", {5, "10.0.0.1:7101", "127.0.0.1:7201", ver32, 1}, HAMR_EINVAL},
        {"newline in peer", {5, "10.0.0.1:7101\n", "127.0.0.1:7201", "v", 1}, HAMR_EINVAL},
        {"CR in control", {5, "10.0.0.1:7101", "127.0.0.1\r:7201", "v", 1}, HAMR_EINVAL},
        {"ESC in version", {5, "10.0.0.1:7101", "127.0.0.1:7201", "v\x1b[2J", 1}, HAMR_EINVAL},
        {"DEL in peer", {5, "10.0.0.1\x7f:7101", "127.0.0.1:7201", "v", 1}, HAMR_EINVAL},
        {"8-bit byte in peer", {5, "10.0.0.1\xc3\xa9:7101", "127.0.0.1:7201", "v", 1}, HAMR_EINVAL},
        {"tab in version", {5, "10.0.0.1:7101", "127.0.0.1:7201", "v\t1", 1}, HAMR_EINVAL},
        {"replace node 1 with a bad address",
         {1, "10.0.0.1:7101\x01", "127.0.0.1:7201", "v", 1},
         HAMR_EINVAL},
        /* The limits themselves are accepted. */
        {"peer address 63 chars", {5, addr63, "127.0.0.1:7201", "v", 1}, 0},
        {"control address 63 chars", {5, "10.0.0.1:7101", addr63, "v", 1}, 0},
        {"version 31 chars", {5, "10.0.0.1:7101", "127.0.0.1:7201", ver31, 1}, 0},
        {"space and punctuation", {5, "[::1]:7101", "127.0.0.1:7201", "hamr 1.0 (x~y)", 1}, 0},
    };
    assert_int_equal(strlen(addr63), QUEUE_ADDR_MAX - 1);
    assert_int_equal(strlen(addr64), QUEUE_ADDR_MAX);
    assert_int_equal(strlen(ver31), sizeof(((struct queue_node *)0)->version) - 1);
    assert_int_equal(strlen(ver32), sizeof(((struct queue_node *)0)->version));
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        /* q takes the case; ref gets a refused Admin at the same time instead. */
        struct queue *q = queue_new();
        struct queue *ref = queue_new();
        assert_non_null(q);
        assert_non_null(ref);
        one_msg(q, "a@example.org");
        one_msg(ref, "a@example.org");
        assert_int_equal(node_apply(q, T0 + 1, &node_b).status, 0);
        assert_int_equal(node_apply(ref, T0 + 1, &node_b).status, 0);
        char ids_before[256], ids_after[256];
        node_ids(q, ids_before, sizeof(ids_before));

        struct queue_apply_result r = node_apply(q, T0 + 2, &cases[i].n);
        if (r.status != cases[i].want_status)
            fail_msg("%s: status %d, want %d", cases[i].label, r.status, cases[i].want_status);
        node_ids(q, ids_after, sizeof(ids_after));
        if (cases[i].want_status == 0) {
            node_assert(q, &cases[i].n);
            assert_string_equal(ids_after, "1,5");
        } else {
            /* Nothing of the entry is stored, and node 1 keeps its values. */
            assert_string_equal(ids_after, ids_before);
            node_assert(q, &node_b);
            if (cases[i].n.id != 1)
                assert_null(queue_node_find(q, cases[i].n.id));
            /*
             * Only the applied counter and the newest timestamp moved: the
             * digest equals that of a queue where another refused entry was
             * applied at the same time.
             */
            assert_int_equal(fx_admin(ref, T0 + 2, HAMR__ADMIN__OP__HOLD, "nope").status,
                             HAMR_ENOTFOUND);
            char d1[65], d2[65];
            digest_of(q, d1);
            digest_of(ref, d2);
            if (strcmp(d1, d2) != 0)
                fail_msg("%s: state changed by a refused entry", cases[i].label);
        }
        struct queue_stats st;
        queue_get_stats(q, &st);
        assert_int_equal(st.applied, 3);
        assert_int_equal(st.messages, 1);
        queue_free(q);
        queue_free(ref);
    }
}

/* The directory holds QUEUE_NODES_MAX nodes; one more is refused, replacing still works. */
static void test_node_directory_full(void **state)
{
    struct queue *q = *state;
    char peer[QUEUE_ADDR_MAX];
    for (uint64_t id = QUEUE_NODES_MAX; id >= 1; id--) {
        snprintf(peer, sizeof(peer), "10.0.%u.%u:7101", (unsigned)(id / 256), (unsigned)(id % 256));
        struct fx_node n = {id, peer, "127.0.0.1:7201", "v1", 1};
        assert_int_equal(node_apply(q, T0 + id, &n).status, 0);
    }
    const struct queue_node *list = NULL;
    assert_int_equal(queue_node_list(q, &list), QUEUE_NODES_MAX);
    for (size_t i = 0; i < QUEUE_NODES_MAX; i++)
        assert_int_equal(list[i].node_id, i + 1);
    char before[65], after[65];
    digest_of(q, before);

    struct fx_node extra = {QUEUE_NODES_MAX + 1, "10.1.0.1:7101", "127.0.0.1:7201", "v1", 1};
    assert_int_equal(node_apply(q, T0 + 100, &extra).status, HAMR_ETOOBIG);
    assert_int_equal(queue_node_list(q, &list), QUEUE_NODES_MAX);
    assert_null(queue_node_find(q, extra.id));
    digest_of(q, after);
    /* Only the applied counter and the timestamp moved. */
    assert_string_not_equal(before, after);

    struct fx_node again = {7, "10.7.7.7:7101", "127.0.0.1:7201", "v2", 2};
    assert_int_equal(node_apply(q, T0 + 101, &again).status, 0);
    assert_int_equal(queue_node_list(q, &list), QUEUE_NODES_MAX);
    node_assert(q, &again);
}

/* Snapshot then restore keeps the directory and the digest, and replaces the old one. */
static void test_node_snapshot_restore(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    assert_int_equal(node_apply(q, T0 + 1, &node_a).status, 0);
    assert_int_equal(node_apply(q, T0 + 2, &node_b).status, 0);
    assert_int_equal(node_apply(q, T0 + 3, &node_c).status, 0);
    char d1[65], d2[65];
    digest_of(q, d1);

    struct queue *r = fx_snapshot_roundtrip(q);
    digest_of(r, d2);
    assert_string_equal(d1, d2);
    const struct queue_node *l1 = NULL, *l2 = NULL;
    size_t n1 = queue_node_list(q, &l1);
    size_t n2 = queue_node_list(r, &l2);
    assert_int_equal(n1, 3);
    assert_int_equal(n2, 3);
    assert_memory_equal(l1, l2, n1 * sizeof(*l1));
    node_assert(r, &node_a);
    node_assert(r, &node_b);
    node_assert(r, &node_c);
    fx_assert_same_msgs(q, r);

    /* Both go on identically: a replacement applied to each. */
    struct fx_node moved = {1, "10.5.5.5:7101", "10.5.5.5:7201", "hamr 0.3", 1};
    assert_int_equal(node_apply(q, T0 + 4, &moved).status, 0);
    assert_int_equal(node_apply(r, T0 + 4, &moved).status, 0);
    digest_of(q, d1);
    digest_of(r, d2);
    assert_string_equal(d1, d2);
    queue_free(r);

    /* Restoring replaces a directory wholesale: entries not in the snapshot go. */
    uint8_t *snap = NULL;
    size_t len = 0;
    struct queue *empty = queue_new();
    assert_non_null(empty);
    assert_int_equal(queue_snapshot(empty, NULL, &snap, &len), 0);
    assert_int_equal(queue_restore(q, snap, len), 0);
    free(snap);
    assert_int_equal(queue_node_list(q, &l1), 0);
    assert_null(queue_node_find(q, 1));
    digest_of(q, d1);
    digest_of(empty, d2);
    assert_string_equal(d1, d2);
    queue_free(empty);
}

/* test_node_draining - the draining flag is kept, replaced, snapshotted and digested. */
static void test_node_draining(void **state)
{
    struct queue *q = *state;
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    ni.node_id = 2;
    ni.peer_address = "10.0.0.2:7201";
    ni.control_address = "10.0.0.2:7101";
    ni.version = "hamr 0.1.0";
    ni.format_version_max = 1;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    e.node_info = &ni;
    size_t len;
    uint8_t *b = fx_pack(&e, T0, &len);
    assert_int_equal(fx_apply(q, b, len).status, 0);
    assert_false(queue_node_find(q, 2)->draining);
    char before[65], after[65];
    digest_of(q, before);

    ni.draining = true;
    b = fx_pack(&e, T0 + 1, &len);
    assert_int_equal(fx_apply(q, b, len).status, 0);
    assert_true(queue_node_find(q, 2)->draining);
    digest_of(q, after);
    assert_string_not_equal(before, after);

    uint8_t *snap = NULL;
    size_t slen = 0;
    assert_int_equal(queue_snapshot(q, NULL, &snap, &slen), 0);
    struct queue *r = queue_new();
    assert_non_null(r);
    assert_int_equal(queue_restore(r, snap, slen), 0);
    free(snap);
    assert_true(queue_node_find(r, 2)->draining);
    char restored[65];
    digest_of(r, restored);
    assert_string_equal(after, restored);
    queue_free(r);

    ni.draining = false; /* undrain */
    b = fx_pack(&e, T0 + 2, &len);
    assert_int_equal(fx_apply(q, b, len).status, 0);
    assert_false(queue_node_find(q, 2)->draining);
}

/* Table: the digest covers every directory field, and only the directory differs here. */
static void test_node_digest(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        struct fx_node n;
        bool want_same;
    } cases[] = {
        {"identical", {2, "10.0.0.2:7101", "127.0.0.1:7201", "hamr 0.1.1", 2}, true},
        {"other node id", {4, "10.0.0.2:7101", "127.0.0.1:7201", "hamr 0.1.1", 2}, false},
        {"other peer", {2, "10.0.0.2:7102", "127.0.0.1:7201", "hamr 0.1.1", 2}, false},
        {"other control", {2, "10.0.0.2:7101", "127.0.0.1:7202", "hamr 0.1.1", 2}, false},
        {"other version", {2, "10.0.0.2:7101", "127.0.0.1:7201", "hamr 0.1.2", 2}, false},
        {"other format", {2, "10.0.0.2:7101", "127.0.0.1:7201", "hamr 0.1.1", 3}, false},
    };
    struct queue *base = queue_new();
    assert_non_null(base);
    one_msg(base, "a@example.org");
    assert_int_equal(node_apply(base, T0 + 1, &node_c).status, 0);
    char want[65];
    digest_of(base, want);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue *q = queue_new();
        assert_non_null(q);
        one_msg(q, "a@example.org");
        assert_int_equal(node_apply(q, T0 + 1, &cases[i].n).status, 0);
        char got[65];
        digest_of(q, got);
        if ((strcmp(got, want) == 0) != cases[i].want_same)
            fail_msg("%s: digest %s", cases[i].label, cases[i].want_same ? "differs" : "same");
        queue_free(q);
    }

    /* A change of the directory alone changes the digest, and undoing it restores it. */
    char d0[65], d1[65], d2[65];
    struct queue *x = queue_new();
    struct queue *y = queue_new();
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(node_apply(x, T0, &node_a).status, 0);
    assert_int_equal(node_apply(y, T0, &node_a).status, 0);
    digest_of(x, d0);
    struct fx_node moved = node_a;
    moved.peer = "10.0.0.33:7101";
    assert_int_equal(node_apply(x, T0 + 1, &moved).status, 0);
    assert_int_equal(node_apply(y, T0 + 1, &node_a).status, 0);
    digest_of(x, d1);
    digest_of(y, d2);
    assert_string_not_equal(d0, d1);
    assert_string_not_equal(d1, d2);
    assert_int_equal(node_apply(x, T0 + 2, &node_a).status, 0);
    assert_int_equal(node_apply(y, T0 + 2, &node_a).status, 0);
    digest_of(x, d1);
    digest_of(y, d2);
    assert_string_equal(d1, d2);
    queue_free(x);
    queue_free(y);
    queue_free(base);
}

/* ------------------------------------------------------------------------
 * The cluster feature level (ClusterLevel entries)
 * ------------------------------------------------------------------------ */

/* refused_admin - an entry that changes nothing but the counter and the timestamp. */
static void refused_admin(struct queue *q, uint64_t ts)
{
    assert_int_equal(fx_admin(q, ts, HAMR__ADMIN__OP__HOLD, "nope").status, HAMR_ENOTFOUND);
}

/* With this build's format: level 1 at the start, the format accepted, one above refused. */
static void test_cluster_level_build_format(void **state)
{
    struct queue *q = *state;
    assert_int_equal(queue_cluster_level(q), 1);
    one_msg(q, "a@example.org");
    assert_int_equal(queue_cluster_level(q), 1);

    /* The entry decodes: ClusterLevel is a kind of format 1. */
    size_t len;
    uint8_t *b = fx_level_pack(T0 + 1, PROTO_FORMAT_VERSION_MAX, &len);
    Hamr__Entry *e = NULL;
    assert_int_equal(proto_entry_unpack(b, len, &e), 0);
    assert_int_equal(e->format_version, 1);
    assert_int_equal(e->cmd_case, HAMR__ENTRY__CMD_CLUSTER_LEVEL);
    assert_int_equal(e->cluster_level->level, PROTO_FORMAT_VERSION_MAX);
    hamr__entry__free_unpacked(e, NULL);
    assert_int_equal(fx_apply(q, b, len).status, 0);
    assert_int_equal(queue_cluster_level(q), PROTO_FORMAT_VERSION_MAX);

    /* One above the build's format: refused, not fatal, level kept. */
    struct queue_apply_result r = fx_level(q, T0 + 2, PROTO_FORMAT_VERSION_MAX + 1);
    assert_int_equal(r.status, HAMR_EVERSION);
    assert_false(r.duplicate);
    assert_int_equal(queue_cluster_level(q), PROTO_FORMAT_VERSION_MAX);
    assert_int_equal(fx_level(q, T0 + 3, UINT32_MAX).status, HAMR_EVERSION);
    assert_int_equal(queue_cluster_level(q), PROTO_FORMAT_VERSION_MAX);

    /* The queue goes on: the message is still there and commands apply. */
    assert_int_equal(fx_admin(q, T0 + 4, HAMR__ADMIN__OP__HOLD, "M").status, 0);
    assert_true(queue_find(q, "M")->held);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.applied, 5);
}

/*
 * Table: a sequence of ClusterLevel entries on a queue playing a build of
 * format 3. Every step's status and level; and the state equals that of a
 * reference queue that applied the same raises but, for every other step, a
 * refused Admin at the same time: no-ops and refusals change nothing else.
 */
static void test_cluster_level_sequence(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        uint32_t level;
        int want_status;
        uint32_t want_level;
    } steps[] = {
        {"level 0 is a no-op", 0, 0, 1},
        {"level 1 is a no-op", 1, 0, 1},
        {"raise to 2", 2, 0, 2},
        {"equal", 2, 0, 2},
        {"lower", 1, 0, 2},
        {"zero after a raise", 0, 0, 2},
        {"above the format", 4, HAMR_EVERSION, 2},
        {"far above the format", UINT32_MAX, HAMR_EVERSION, 2},
        {"raise to the format", 3, 0, 3},
        {"lower again", 2, 0, 3},
        {"still above the format", 4, HAMR_EVERSION, 3},
    };
    struct queue *q = queue_new();
    struct queue *ref = queue_new();
    assert_non_null(q);
    assert_non_null(ref);
    queue_set_format_max(q, 3);
    queue_set_format_max(ref, 3);
    one_msg(q, "a@example.org");
    one_msg(ref, "a@example.org");
    assert_int_equal(queue_cluster_level(q), 1);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(steps); i++) {
        uint64_t ts = T0 + 1 + i;
        uint32_t was = queue_cluster_level(q);
        char before[65], d1[65], d2[65];
        digest_of(q, before);
        struct queue_apply_result r = fx_level(q, ts, steps[i].level);
        if (r.status != steps[i].want_status)
            fail_msg("%s: status %d, want %d", steps[i].label, r.status, steps[i].want_status);
        if (queue_cluster_level(q) != steps[i].want_level)
            fail_msg("%s: level %u, want %u", steps[i].label, queue_cluster_level(q),
                     steps[i].want_level);
        assert_int_equal(r.dsn_generated, 0);
        assert_int_equal(r.finished, 0);
        if (steps[i].want_level != was)
            assert_int_equal(fx_level(ref, ts, steps[i].level).status, 0);
        else
            refused_admin(ref, ts);
        assert_int_equal(queue_cluster_level(ref), steps[i].want_level);
        digest_of(q, d1);
        digest_of(ref, d2);
        if (strcmp(d1, d2) != 0)
            fail_msg("%s: state differs from the reference", steps[i].label);
        assert_string_not_equal(before, d1); /* the counter moved in every case */
        assert_non_null(queue_find(q, "M"));
    }
    queue_free(q);
    queue_free(ref);
}

/* snapshot_level - the cluster_level field of q's encoded snapshot. */
static uint32_t snapshot_level(const struct queue *q)
{
    uint8_t *snap = NULL;
    size_t len = 0;
    assert_int_equal(queue_snapshot(q, NULL, &snap, &len), 0);
    Hamr__Snapshot *s = NULL;
    assert_int_equal(proto_snapshot_unpack(snap, len, &s), 0);
    uint32_t level = s->cluster_level;
    hamr__snapshot__free_unpacked(s, NULL);
    free(snap);
    return level;
}

/* Snapshot, restore and digest carry the level; a build of a lower format refuses the snapshot. */
static void test_cluster_level_snapshot(void **state)
{
    (void)state;
    struct queue *q = queue_new();
    assert_non_null(q);
    queue_set_format_max(q, 3);
    build_varied(q);
    assert_int_equal(node_apply(q, T0 + 8, &node_c).status, 0);

    /* Level 1 is left out of the encoding (an older build writes the same bytes). */
    assert_int_equal(snapshot_level(q), 0);
    char level1[65], d1[65], d2[65];
    digest_of(q, level1);

    /* The digest covers the level: only the level differs from level1's state... */
    struct queue *same = fx_snapshot_roundtrip(q);
    assert_int_equal(fx_level(q, T0 + 9, 3).status, 0);
    refused_admin(same, T0 + 9);
    digest_of(q, d1);
    digest_of(same, d2);
    assert_string_not_equal(d1, d2);
    queue_free(same);
    assert_int_equal(snapshot_level(q), 3);

    /* Round trip into a queue of the same format keeps the level and the digest. */
    uint8_t *snap = NULL;
    size_t len = 0;
    assert_int_equal(queue_snapshot(q, NULL, &snap, &len), 0);
    struct queue *r = queue_new();
    assert_non_null(r);
    queue_set_format_max(r, 3);
    assert_int_equal(queue_restore(r, snap, len), 0);
    assert_int_equal(queue_cluster_level(r), 3);
    digest_of(r, d2);
    assert_string_equal(d1, d2);
    fx_assert_same_msgs(q, r);
    /* Both go on identically: a lower level stays a no-op after the restore. */
    assert_int_equal(fx_level(q, T0 + 10, 2).status, 0);
    assert_int_equal(fx_level(r, T0 + 10, 2).status, 0);
    assert_int_equal(queue_cluster_level(r), 3);
    digest_of(q, d1);
    digest_of(r, d2);
    assert_string_equal(d1, d2);

    /* A build of a lower format refuses the snapshot and keeps its state. */
    struct queue *old = queue_new();
    assert_non_null(old);
    queue_set_format_max(old, 2);
    one_msg(old, "a@example.org");
    char old_before[65], old_after[65];
    digest_of(old, old_before);
    assert_int_equal(queue_restore(old, snap, len), HAMR_EVERSION);
    digest_of(old, old_after);
    assert_string_equal(old_before, old_after);
    assert_int_equal(queue_cluster_level(old), 1);
    assert_non_null(queue_find(old, "M"));
    /* So does this build with its own format, when that is below 3. */
    struct queue *plain = queue_new();
    assert_non_null(plain);
    assert_int_equal(queue_restore(plain, snap, len),
                     PROTO_FORMAT_VERSION_MAX >= 3 ? 0 : HAMR_EVERSION);
    free(snap);
    queue_free(plain);
    queue_free(old);

    /* Restoring a level-1 snapshot brings the level back to 1, and keeps the format. */
    struct queue *low = queue_new();
    assert_non_null(low);
    assert_int_equal(queue_snapshot(low, NULL, &snap, &len), 0);
    assert_int_equal(queue_restore(r, snap, len), 0);
    free(snap);
    assert_int_equal(queue_cluster_level(r), 1);
    digest_of(r, d1);
    digest_of(low, d2);
    assert_string_equal(d1, d2);
    assert_int_equal(fx_level(r, T0 + 11, 3).status, 0);
    assert_int_equal(queue_cluster_level(r), 3);
    queue_free(low);
    queue_free(r);
    queue_free(q);
}

/* zone_apply - apply a NodeInfo of node 2 with zone (packed by queue_entry_node_info). */
static struct queue_apply_result zone_apply(struct queue *q, uint64_t ts, const char *zone)
{
    const struct queue_entry_node_info_args a = {
        .node_id = 2,
        .peer_address = "10.0.0.2:7201",
        .control_address = "10.0.0.2:7101",
        .version = "hamr 0.1.0",
        .format_version_max = QUEUE_LEVEL_SPREAD,
        .zone = zone,
    };
    uint8_t *b;
    size_t len;
    assert_int_equal(queue_entry_node_info(&a, ts, malloc, &b, &len), 0);
    return fx_apply(q, b, len);
}

/*
 * NodeInfo.zone is ignored below QUEUE_LEVEL_SPREAD (state and digest those
 * of a build without the field), kept and checked from it on, and carried
 * by snapshots; a snapshot below the level has its zones ignored.
 */
static void test_node_zone(void **state)
{
    (void)state;
    struct queue *q = queue_new(), *ref = queue_new();
    assert_non_null(q);
    assert_non_null(ref);
    queue_set_format_max(q, QUEUE_LEVEL_SPREAD);
    queue_set_format_max(ref, QUEUE_LEVEL_SPREAD);
    char d1[65], d2[65];

    /* Below the level: neither kept nor checked; the digest is that without a zone. */
    assert_int_equal(fx_level(q, T0, QUEUE_LEVEL_SPREAD - 1).status, 0);
    assert_int_equal(fx_level(ref, T0, QUEUE_LEVEL_SPREAD - 1).status, 0);
    assert_int_equal(zone_apply(q, T0 + 1, "dc1").status, 0);
    assert_int_equal(zone_apply(ref, T0 + 1, NULL).status, 0);
    assert_string_equal(queue_node_find(q, 2)->zone, "");
    digest_of(q, d1);
    digest_of(ref, d2);
    assert_string_equal(d1, d2);
    assert_int_equal(zone_apply(q, T0 + 2, "not a zone").status, 0);
    assert_int_equal(zone_apply(ref, T0 + 2, NULL).status, 0);
    digest_of(q, d1);
    digest_of(ref, d2);
    assert_string_equal(d1, d2);

    /* From the level on: kept, part of the digest, and a bad one is refused. */
    assert_int_equal(fx_level(q, T0 + 3, QUEUE_LEVEL_SPREAD).status, 0);
    assert_int_equal(fx_level(ref, T0 + 3, QUEUE_LEVEL_SPREAD).status, 0);
    assert_int_equal(zone_apply(q, T0 + 4, "dc1").status, 0);
    assert_int_equal(zone_apply(ref, T0 + 4, NULL).status, 0);
    assert_string_equal(queue_node_find(q, 2)->zone, "dc1");
    assert_string_equal(queue_node_find(ref, 2)->zone, "");
    digest_of(q, d1);
    digest_of(ref, d2);
    assert_string_not_equal(d1, d2);
    assert_int_equal(zone_apply(q, T0 + 5, "dc/1").status, HAMR_EINVAL);
    assert_string_equal(queue_node_find(q, 2)->zone, "dc1");

    /* Snapshot round trip keeps it, and the digest. */
    struct queue *r = fx_snapshot_roundtrip(q);
    assert_string_equal(queue_node_find(r, 2)->zone, "dc1");
    digest_of(q, d1);
    digest_of(r, d2);
    assert_string_equal(d1, d2);
    queue_free(r);

    /* A snapshot below the level: its zones are ignored (not refused). */
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    ni.node_id = 3;
    ni.peer_address = "10.0.0.3:7201";
    ni.control_address = "10.0.0.3:7101";
    ni.version = "hamr 0.1.0";
    ni.zone = "dc2";
    Hamr__NodeInfo *nip[] = {&ni};
    Hamr__Snapshot s = HAMR__SNAPSHOT__INIT;
    s.applied = 7;
    s.last_timestamp_ms = T0;
    s.cluster_level = QUEUE_LEVEL_SPREAD - 1;
    s.n_nodes = 1;
    s.nodes = nip;
    uint8_t *snap;
    size_t len;
    assert_int_equal(proto_snapshot_pack(&s, NULL, &snap, &len), 0);
    r = queue_new();
    assert_non_null(r);
    queue_set_format_max(r, QUEUE_LEVEL_SPREAD);
    assert_int_equal(queue_restore(r, snap, len), 0);
    free(snap);
    assert_string_equal(queue_node_find(r, 3)->zone, "");
    queue_free(r);
    /* At the level a bad zone makes the snapshot corrupt. */
    s.cluster_level = QUEUE_LEVEL_SPREAD;
    ni.zone = "dc 2";
    assert_int_equal(proto_snapshot_pack(&s, NULL, &snap, &len), 0);
    r = queue_new();
    assert_non_null(r);
    queue_set_format_max(r, QUEUE_LEVEL_SPREAD);
    assert_int_equal(queue_restore(r, snap, len), HAMR_ECORRUPT);
    free(snap);
    queue_free(r);

    queue_free(ref);
    queue_free(q);
}

/* level_snapshot - a hand-made snapshot without messages, its cluster_level field as given. */
static uint8_t *level_snapshot(uint32_t level, size_t *len)
{
    Hamr__Snapshot s = HAMR__SNAPSHOT__INIT;
    s.applied = 7;
    s.last_timestamp_ms = T0;
    s.cluster_level = level;
    uint8_t *out;
    assert_int_equal(proto_snapshot_pack(&s, NULL, &out, len), 0);
    return out;
}

/* Table: snapshots written without the field (older builds) restore at level 1. */
static void test_cluster_level_old_snapshot(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        uint32_t field;
        int want_rv;
        uint32_t want_level;
    } cases[] = {
        {"absent (older build)", 0, 0, 1},
        {"1 written out", 1, 0, 1},
        {"2", 2, 0, 2},
        {"above the format", 3, HAMR_EVERSION, 2},
    };
    char absent_digest[65];
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        /* A queue of format 2 at level 2 with a message, so a restore visibly replaces it. */
        struct queue *q = queue_new();
        assert_non_null(q);
        queue_set_format_max(q, 2);
        one_msg(q, "a@example.org");
        assert_int_equal(fx_level(q, T0 + 1, 2).status, 0);
        size_t len;
        uint8_t *snap = level_snapshot(cases[i].field, &len);
        int rv = queue_restore(q, snap, len);
        free(snap);
        if (rv != cases[i].want_rv)
            fail_msg("%s: restore %d, want %d", cases[i].label, rv, cases[i].want_rv);
        if (queue_cluster_level(q) != cases[i].want_level)
            fail_msg("%s: level %u, want %u", cases[i].label, queue_cluster_level(q),
                     cases[i].want_level);
        if (rv == 0) {
            assert_null(queue_find(q, "M"));
            struct queue_stats st;
            queue_get_stats(q, &st);
            assert_int_equal(st.applied, 7);
        } else {
            assert_non_null(queue_find(q, "M"));
        }
        char d[65];
        digest_of(q, d);
        if (i == 0)
            memcpy(absent_digest, d, sizeof(d));
        /* Level 1 written out or left out: the same state, the same digest. */
        if (cases[i].want_rv == 0 && (cases[i].want_level == 1) != (strcmp(d, absent_digest) == 0))
            fail_msg("%s: digest %s", cases[i].label,
                     cases[i].want_level == 1 ? "differs from absent" : "equals absent");
        queue_free(q);
    }

    /* The older snapshot used elsewhere in this file (bad_snapshot 0) has no level either. */
    struct queue *q = queue_new();
    assert_non_null(q);
    queue_set_format_max(q, 3);
    assert_int_equal(fx_level(q, T0, 3).status, 0);
    size_t len;
    uint8_t *snap = bad_snapshot(0, &len);
    assert_int_equal(queue_restore(q, snap, len), 0);
    free(snap);
    assert_int_equal(queue_cluster_level(q), 1);
    assert_non_null(queue_find(q, "S1"));
    queue_free(q);
}

/* Table: the level the leader may propose for a set of voters. */
static void test_cluster_level_possible(void **state)
{
    struct queue *q = *state;
    /* Node 1 of format 2, node 2 of format 3, node 3 reported none (0), node 4 of format 1. */
    static const struct fx_node dir[] = {
        {1, "10.0.0.1:7101", "127.0.0.1:7201", "hamr 0.2", 2},
        {2, "10.0.0.2:7101", "127.0.0.1:7201", "hamr 0.3", 3},
        {3, "10.0.0.3:7101", "127.0.0.1:7201", "hamr 0.0", 0},
        {4, "10.0.0.4:7101", "127.0.0.1:7201", "hamr 0.1", 1},
    };
    static const struct {
        const char *label;
        uint64_t voters[FX_MAX];
        size_t n;
        uint32_t want;
    } cases[] = {
        {"no voters", {0}, 0, 0},
        {"one voter", {2}, 1, 3},
        {"all reported, mixed versions", {1, 2}, 2, 2},
        {"order does not matter", {2, 1}, 2, 2},
        {"one of an older format", {1, 2, 4}, 3, 1},
        {"one missing", {1, 2, 9}, 3, 0},
        {"missing first", {9, 1, 2}, 3, 0},
        {"node id 0 is never in the directory", {0}, 1, 0},
        {"a voter reporting format 0", {2, 3}, 2, 0},
        {"a voter listed twice", {2, 2}, 2, 3},
        {"all four", {1, 2, 3, 4}, 4, 0},
    };
    uint64_t none[] = {1, 2};
    assert_int_equal(queue_cluster_level_possible(q, none, 2), 0); /* empty directory */
    for (size_t i = 0; i < HAMR_ARRAY_LEN(dir); i++)
        assert_int_equal(node_apply(q, T0 + i, &dir[i]).status, 0);
    char before[65], after[65];
    digest_of(q, before);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        uint32_t got = queue_cluster_level_possible(q, cases[i].voters, cases[i].n);
        if (got != cases[i].want)
            fail_msg("%s: %u, want %u", cases[i].label, got, cases[i].want);
    }
    /* Pure: the state did not change. */
    digest_of(q, after);
    assert_string_equal(before, after);
    assert_int_equal(queue_cluster_level(q), 1);

    /* Node 4 upgrades (its NodeInfo is replaced): the minimum rises with it. */
    uint64_t three[] = {1, 2, 4};
    struct fx_node up = dir[3];
    up.version = "hamr 0.3";
    up.fmax = 3;
    assert_int_equal(node_apply(q, T0 + 10, &up).status, 0);
    assert_int_equal(queue_cluster_level_possible(q, three, 3), 2);
}

/* ------------------------------------------------------------------------
 * The outbound TLS of the last attempt (RcptResult/RcptState tls_policy, tls)
 * ------------------------------------------------------------------------ */

/*
 * At the TLS level, each result that names a policy sets the recipient's
 * fields whatever its status; one without (an older writer, expiry) keeps the
 * last attempt's values; a fenced-off result changes nothing.
 */
static void test_tls_outcome_fields(void **state)
{
    struct queue *q = *state;
    assert_int_equal(fx_level(q, T0 - 1, QUEUE_LEVEL_TLS).status, 0);
    one_msg(q, "a@example.org");
    for (size_t i = 0; i < 3; i++)
        assert_tls(q, i, NULL, NULL);

    /* Attempt 1: r0 deferred (verify), r1 delivered in plaintext (may), r2 from an older writer. */
    assert_int_equal(lease_idx(q, T0 + 1, "M", 11, 0, 3).status, 0);
    const struct tls_res a1[] = {{0, DEFERRED, "verify", TLS_V13},
                                 {1, DELIVERED, "may", TLS_PLAIN},
                                 {2, DEFERRED, NULL, NULL}};
    tls_outcome(q, T0 + 2, 11, a1, HAMR_ARRAY_LEN(a1));
    assert_tls(q, 0, "verify", TLS_V13);
    assert_tls(q, 1, "may", TLS_PLAIN);
    assert_tls(q, 2, NULL, NULL);
    assert_int_equal(fx_rcpt(q, "M", 1)->state, QUEUE_RCPT_DELIVERED);

    /* Attempt 2: new values replace the old; a policy without a TLS text clears it. */
    assert_int_equal(lease_idx(q, T0 + MIN + 3, "M", 12, 0, 1).status, 0);
    assert_int_equal(lease_idx(q, T0 + MIN + 3, "M", 13, 2, 1).status, 0);
    const struct tls_res a2[] = {{0, DEFERRED, "encrypt", TLS_NOT_OFFERED}};
    tls_outcome(q, T0 + MIN + 4, 12, a2, 1);
    const struct tls_res a3[] = {{2, DEFERRED, "may", NULL}};
    tls_outcome(q, T0 + MIN + 4, 13, a3, 1);
    assert_tls(q, 0, "encrypt", TLS_NOT_OFFERED);
    assert_tls(q, 2, "may", NULL);

    /* Fencing: a result under a lease the recipient does not hold leaves it alone. */
    const struct tls_res stale[] = {{0, DEFERRED, "verify", TLS_V13}};
    tls_outcome(q, T0 + MIN + 5, 11, stale, 1);
    assert_tls(q, 0, "encrypt", TLS_NOT_OFFERED);

    /* Expiry (no lease, no attempt, no policy): the last attempt's TLS stays visible. */
    const struct tls_res expiry[] = {{0, EXPIRED, NULL, NULL}};
    tls_outcome(q, T0 + 3 * MIN, 0, expiry, 1);
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_EXPIRED);
    assert_tls(q, 0, "encrypt", TLS_NOT_OFFERED);
}

/* Untrusted text from the log: reduced to printable ASCII and cut to the bounds. */
static void test_tls_text_bounded(void **state)
{
    struct queue *q = *state;
    assert_int_equal(fx_level(q, T0 - 1, QUEUE_LEVEL_TLS).status, 0);
    one_msg(q, "a@example.org");
    static char long_tls[1000], long_policy[100];
    memset(long_tls, 'x', sizeof(long_tls) - 1);
    long_tls[sizeof(long_tls) - 1] = '\0';
    memset(long_policy, 'p', sizeof(long_policy) - 1);
    long_policy[sizeof(long_policy) - 1] = '\0';
    static const struct {
        const char *label;
        const char *policy, *tls;
        size_t want_policy_len, want_tls_len;
        const char *want_policy, *want_tls; /* NULL: only the length is checked */
    } cases[] = {
        {"escapes", "ve\x1b[31mrify", "TLS\r\nv1.3\x7f \xc3\xa9", 11, 13, "ve?[31mrify",
         "TLS??v1.3? ??"},
        {"long", long_policy, long_tls, QUEUE_TLS_POLICY_MAX - 1, QUEUE_TLS_MAX - 1, NULL, NULL},
        {"exact", "may", TLS_PLAIN, 3, sizeof(TLS_PLAIN) - 1, "may", TLS_PLAIN},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        uint64_t ts = T0 + (i + 1) * MIN;
        assert_int_equal(lease_idx(q, ts, "M", 20 + i, 0, 1).status, 0);
        const struct tls_res r[] = {{0, DEFERRED, cases[i].policy, cases[i].tls}};
        tls_outcome(q, ts + 1, 20 + i, r, 1);
        const struct queue_rcpt *rc = fx_rcpt(q, "M", 0);
        if (strlen(queue_rcpt_tried(rc)->tls_policy) != cases[i].want_policy_len ||
            strlen(queue_rcpt_tried(rc)->tls) != cases[i].want_tls_len)
            fail_msg("%s: lengths %zu/%zu", cases[i].label,
                     strlen(queue_rcpt_tried(rc)->tls_policy), strlen(queue_rcpt_tried(rc)->tls));
        if (cases[i].want_policy != NULL &&
            strcmp(queue_rcpt_tried(rc)->tls_policy, cases[i].want_policy) != 0)
            fail_msg("%s: policy \"%s\"", cases[i].label, queue_rcpt_tried(rc)->tls_policy);
        if (cases[i].want_tls != NULL && strcmp(queue_rcpt_tried(rc)->tls, cases[i].want_tls) != 0)
            fail_msg("%s: tls \"%s\"", cases[i].label, queue_rcpt_tried(rc)->tls);
        for (const char *c = queue_rcpt_tried(rc)->tls; *c; c++)
            assert_true(*c >= 0x20 && *c < 0x7f);
    }
}

/*
 * Below the TLS level (a cluster with a node of an older build) the fields
 * are ignored: the state and its digest are those of an older build that
 * applied the same entry without knowing them.
 */
static void test_tls_below_level_ignored(void **state)
{
    (void)state;
    struct queue *q = queue_new();
    struct queue *older = queue_new();
    queue_set_format_max(older, 1); /* an older build: it never raises the level */
    struct queue *qs[] = {q, older};
    for (size_t k = 0; k < 2; k++) {
        one_msg(qs[k], "a@example.org");
        assert_int_equal(lease_idx(qs[k], T0 + 1, "M", 7, 0, 3).status, 0);
    }
    assert_int_equal(queue_cluster_level(q), 1);
    const struct tls_res with[] = {{0, DEFERRED, "verify", TLS_V13},
                                   {1, DELIVERED, "may", TLS_PLAIN}};
    const struct tls_res without[] = {{0, DEFERRED, NULL, NULL}, {1, DELIVERED, NULL, NULL}};
    tls_outcome(q, T0 + 2, 7, with, 2);
    tls_outcome(older, T0 + 2, 7, without, 2);
    assert_tls(q, 0, NULL, NULL);
    assert_tls(q, 1, NULL, NULL);
    char d1[65], d2[65];
    digest_of(q, d1);
    digest_of(older, d2);
    assert_string_equal(d1, d2);

    /* Once the level is raised, the same kind of entry takes effect. */
    assert_int_equal(fx_level(q, T0 + 3, QUEUE_LEVEL_TLS).status, 0);
    assert_int_equal(queue_cluster_level(q), QUEUE_LEVEL_TLS);
    assert_int_equal(lease_idx(q, T0 + MIN + 4, "M", 8, 0, 1).status, 0);
    tls_outcome(q, T0 + MIN + 5, 8, with, 1);
    assert_tls(q, 0, "verify", TLS_V13);
    queue_free(q);
    queue_free(older);
}

/* snapshot_rcpt_tls - tls_policy and tls of recipient i of message 0 in q's encoded snapshot. */
static void snapshot_rcpt_tls(const struct queue *q, size_t i, char *policy, char *tls, size_t cap)
{
    uint8_t *snap;
    size_t len;
    assert_int_equal(queue_snapshot(q, NULL, &snap, &len), 0);
    Hamr__Snapshot *s = NULL;
    assert_int_equal(proto_snapshot_unpack(snap, len, &s), 0);
    free(snap);
    assert_true(s->n_messages >= 1 && s->messages[0]->n_rcpts > i);
    hamr_strlcpy(policy, s->messages[0]->rcpts[i]->tls_policy, cap);
    hamr_strlcpy(tls, s->messages[0]->rcpts[i]->tls, cap);
    hamr__snapshot__free_unpacked(s, NULL);
}

/* The fields are in the snapshot and the digest; restore brings them back. */
static void test_tls_snapshot_digest(void **state)
{
    struct queue *q = *state;
    assert_int_equal(fx_level(q, T0 - 1, QUEUE_LEVEL_TLS).status, 0);
    one_msg(q, "a@example.org");
    assert_int_equal(lease_idx(q, T0 + 1, "M", 7, 0, 3).status, 0);
    const struct tls_res a[] = {{0, DEFERRED, "verify", TLS_V13},
                                {1, DEFERRED, "may", TLS_PLAIN},
                                {2, DEFERRED, NULL, NULL}};
    tls_outcome(q, T0 + 2, 7, a, HAMR_ARRAY_LEN(a));

    char policy[QUEUE_TLS_MAX], tls[QUEUE_TLS_MAX];
    snapshot_rcpt_tls(q, 0, policy, tls, sizeof(policy));
    assert_string_equal(policy, "verify");
    assert_string_equal(tls, TLS_V13);
    snapshot_rcpt_tls(q, 2, policy, tls, sizeof(policy));
    assert_string_equal(policy, "");
    assert_string_equal(tls, "");

    struct queue *r = fx_snapshot_roundtrip(q);
    for (size_t i = 0; i < 3; i++) {
        const struct queue_rcpt *x = fx_rcpt(q, "M", i), *y = fx_rcpt(r, "M", i);
        assert_true((queue_rcpt_tried(x)->tls_policy == NULL) ==
                    (queue_rcpt_tried(y)->tls_policy == NULL));
        assert_true((queue_rcpt_tried(x)->tls == NULL) == (queue_rcpt_tried(y)->tls == NULL));
        if (queue_rcpt_tried(x)->tls_policy != NULL)
            assert_string_equal(queue_rcpt_tried(x)->tls_policy, queue_rcpt_tried(y)->tls_policy);
        if (queue_rcpt_tried(x)->tls != NULL)
            assert_string_equal(queue_rcpt_tried(x)->tls, queue_rcpt_tried(y)->tls);
    }
    char d1[65], d2[65];
    digest_of(q, d1);
    digest_of(r, d2);
    assert_string_equal(d1, d2);

    /* The digest covers each field: the same history with other TLS values differs. */
    static const struct tls_res variants[][1] = {
        {{0, DEFERRED, "encrypt", TLS_V13}},
        {{0, DEFERRED, "verify", "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384 (verified)"}},
        {{0, DEFERRED, NULL, NULL}},
    };
    for (size_t v = 0; v < HAMR_ARRAY_LEN(variants); v++) {
        struct queue *o = queue_new();
        assert_int_equal(fx_level(o, T0 - 1, QUEUE_LEVEL_TLS).status, 0);
        one_msg(o, "a@example.org");
        assert_int_equal(lease_idx(o, T0 + 1, "M", 7, 0, 3).status, 0);
        struct tls_res b[3] = {variants[v][0], a[1], a[2]};
        tls_outcome(o, T0 + 2, 7, b, 3);
        digest_of(o, d2);
        if (strcmp(d1, d2) == 0)
            fail_msg("variant %zu: same digest", v);
        queue_free(o);
    }
    queue_free(r);
}

/*
 * Entries and snapshots from before format 2 decode with the fields empty:
 * an Outcome and a snapshot written without them, and a RcptResult encoded
 * byte by byte as format 1 wrote it.
 */
static void test_tls_old_entries(void **state)
{
    struct queue *q = *state;
    one_msg(q, "a@example.org");
    assert_int_equal(lease_idx(q, T0 + 1, "M", 7, 0, 1).status, 0);
    struct fx_outcome o = {.id = "M", .lease_id = 7, .n = 1, .res = {{0, DEFERRED, 451, "later"}}};
    size_t len;
    uint8_t *b = fx_pack_outcome(T0 + 2, &o, &len);
    Hamr__Entry *e = NULL;
    assert_int_equal(proto_entry_unpack(b, len, &e), 0);
    assert_string_equal(e->outcome->results[0]->tls_policy, "");
    assert_string_equal(e->outcome->results[0]->tls, "");
    hamr__entry__free_unpacked(e, NULL);
    assert_int_equal(fx_level(q, T0 + 2, QUEUE_LEVEL_TLS).status, 0);
    assert_int_equal(fx_apply(q, b, len).status, 0);
    assert_tls(q, 0, NULL, NULL);
    assert_int_equal(fx_rcpt(q, "M", 0)->attempts, 1);

    /* A snapshot of that state has neither field and restores to none. */
    struct queue *r = fx_snapshot_roundtrip(q);
    assert_tls(r, 0, NULL, NULL);
    queue_free(r);

    /* RcptResult{rcpt_index 1, status DEFERRED, smtp_code 451, diagnostic "x"}. */
    static const uint8_t v1[] = {0x08, 0x01, 0x10, 0x01, 0x18, 0xc3, 0x03, 0x22, 0x01, 'x'};
    Hamr__RcptResult *rr = hamr__rcpt_result__unpack(NULL, sizeof(v1), v1);
    assert_non_null(rr);
    assert_int_equal(rr->rcpt_index, 1);
    assert_int_equal(rr->smtp_code, 451);
    assert_string_equal(rr->tls_policy, "");
    assert_string_equal(rr->tls, "");
    hamr__rcpt_result__free_unpacked(rr, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_enqueue_and_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_messages_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_holes_and_compaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreach_stops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreach_after, setup, teardown),
        cmocka_unit_test(test_enqueue_validation),
        cmocka_unit_test_setup_teardown(test_enqueue_duplicate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decode_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_then_delivered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outcome_fencing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry_outcome_dsn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_text_sanitised, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mixed_outcome, setup, teardown),
        cmocka_unit_test(test_dsn_rules),
        cmocka_unit_test_setup_teardown(test_dsn_of_dsn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dsn_id_collision, setup, teardown),
        cmocka_unit_test(test_lease_eligibility),
        cmocka_unit_test_setup_teardown(test_lease_refusals, setup, teardown),
        cmocka_unit_test(test_outcome_refusals),
        cmocka_unit_test_setup_teardown(test_hold_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_bounce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_pruning, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_restore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digest_format, setup, teardown),
        cmocka_unit_test(test_replay_determinism),
        cmocka_unit_test(test_replay_dsn_invariants),
        cmocka_unit_test(test_stats_counts_kept),
        cmocka_unit_test(test_apply_alloc_failures),
        cmocka_unit_test(test_snapshot_alloc_failures),
        cmocka_unit_test_setup_teardown(test_node_insert_replace_order, setup, teardown),
        cmocka_unit_test(test_node_refusals),
        cmocka_unit_test_setup_teardown(test_node_directory_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_snapshot_restore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_draining, setup, teardown),
        cmocka_unit_test(test_node_digest),
        cmocka_unit_test_setup_teardown(test_cluster_level_build_format, setup, teardown),
        cmocka_unit_test(test_cluster_level_sequence),
        cmocka_unit_test(test_cluster_level_snapshot),
        cmocka_unit_test(test_cluster_level_old_snapshot),
        cmocka_unit_test(test_node_zone),
        cmocka_unit_test_setup_teardown(test_cluster_level_possible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_outcome_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_text_bounded, setup, teardown),
        cmocka_unit_test(test_tls_below_level_ignored),
        cmocka_unit_test_setup_teardown(test_tls_snapshot_digest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_old_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_counter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full, setup, teardown),
        cmocka_unit_test(test_shared_texts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
