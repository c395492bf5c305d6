/*
 * test_queue_bodies.c - bodies kept through body ops (a node's store)
 * instead of in memory: Enqueue and DSNs put them, finished messages
 * release them exactly once, a failed put stops the apply, snapshots carry
 * body lengths from QUEUE_LEVEL_STORE and the bodies read back below it, a
 * restore shares, locates or marks missing, a failed restore gives back
 * what it took, and a queue with ops keeps the same state (digest) as one
 * keeping bodies in memory over any sequence of entries.
 *
 * The store here is a table in memory that counts every call and each
 * record's references, so a leak, an early or a double release shows.
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
#include "queue/queue.h"
#include "queue_fixture.h"

#define T0 1700000000000ull
#define MIN (60ull * 1000)
#define DELIVERED HAMR__RCPT_RESULT__STATUS__DELIVERED
#define BOUNCED HAMR__RCPT_RESULT__STATUS__BOUNCED
#define LOC_BASE 1000 /* the first record's location: 0 is never one */

/* ------------------------------------------------------------------------
 * The store
 * ------------------------------------------------------------------------ */

/* rec - one record: refs counts puts and locates not yet released. */
struct rec {
    char id[QUEUE_ID_MAX];
    uint8_t *bytes;
    size_t len;
    uint8_t sha[QUEUE_SHA256_LEN];
    unsigned refs;
    unsigned releases;
    bool lost; /* locate fails, read fails */
};

struct store {
    struct rec *r;
    size_t n, cap;
    unsigned puts, locates, releases, reads;
    bool fail_put;
    unsigned bad_releases; /* of a record with no reference left */
    unsigned dead_reads;   /* of a record with no reference left */
};

/* store_add - a new record with one reference; its location. */
static uint64_t store_add(struct store *s, const char *id, const void *bytes, size_t len)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->r = realloc(s->r, s->cap * sizeof(*s->r));
        assert_non_null(s->r);
    }
    struct rec *r = &s->r[s->n];
    memset(r, 0, sizeof(*r));
    hamr_strlcpy(r->id, id, sizeof(r->id));
    r->bytes = malloc(len ? len : 1);
    assert_non_null(r->bytes);
    memcpy(r->bytes, bytes, len);
    r->len = len;
    fx_sha256(bytes, len, r->sha);
    r->refs = 1;
    return LOC_BASE + s->n++;
}

/* store_rec - the record at loc (which must be one). */
static struct rec *store_rec(struct store *s, uint64_t loc)
{
    assert_true(loc >= LOC_BASE && loc < LOC_BASE + s->n);
    return &s->r[loc - LOC_BASE];
}

/* store_free - every record. */
static void store_free(struct store *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->r[i].bytes);
    free(s->r);
    memset(s, 0, sizeof(*s));
}

static int st_put(void *arg,
                  const char *id,
                  const uint8_t *body,
                  size_t len,
                  const uint8_t sha[QUEUE_SHA256_LEN],
                  uint64_t *loc)
{
    struct store *s = arg;
    s->puts++;
    if (s->fail_put)
        return HAMR_ENOSPACE;
    assert_true(len > 0);
    *loc = store_add(s, id, body, len);
    assert_memory_equal(store_rec(s, *loc)->sha, sha, QUEUE_SHA256_LEN);
    return 0;
}

static int st_locate(void *arg,
                     const char *id,
                     size_t len,
                     const uint8_t sha[QUEUE_SHA256_LEN],
                     uint64_t *loc)
{
    struct store *s = arg;
    s->locates++;
    for (size_t i = s->n; i-- > 0;) {
        struct rec *r = &s->r[i];
        if (!r->lost && strcmp(r->id, id) == 0 && r->len == len &&
            memcmp(r->sha, sha, QUEUE_SHA256_LEN) == 0) {
            r->refs++;
            *loc = LOC_BASE + i;
            return 0;
        }
    }
    return HAMR_ENOTFOUND;
}

static void st_release(void *arg, const char *id, uint64_t loc)
{
    struct store *s = arg;
    struct rec *r = store_rec(s, loc);
    assert_string_equal(r->id, id);
    s->releases++;
    r->releases++;
    if (r->refs == 0)
        s->bad_releases++;
    else
        r->refs--;
}

static long long st_read(void *arg, uint64_t loc, uint64_t off, uint8_t *buf, size_t n)
{
    struct store *s = arg;
    struct rec *r = store_rec(s, loc);
    s->reads++;
    if (r->refs == 0)
        s->dead_reads++;
    if (r->lost)
        return HAMR_EIO;
    if (off >= r->len)
        return 0;
    if (n > r->len - off)
        n = r->len - off;
    memcpy(buf, r->bytes + off, n);
    return (long long)n;
}

/* ops_queue - a new queue keeping bodies in s. */
static struct queue *ops_queue(struct store *s)
{
    struct queue *q = queue_new();
    assert_non_null(q);
    struct queue_body_ops ops = {
        .arg = s, .put = st_put, .locate = st_locate, .release = st_release, .read = st_read};
    queue_set_body_ops(q, &ops);
    return q;
}

/* stored - the record of id's body (queued, stored, not missing). */
static struct rec *stored(struct store *s, const struct queue *q, const char *id)
{
    const struct queue_msg *m = queue_find(q, id);
    assert_non_null(m);
    assert_null(queue_msg_body(m));
    assert_true(m->body_stored);
    assert_false(m->body_missing);
    struct rec *r = store_rec(s, m->body_loc);
    assert_string_equal(r->id, id);
    assert_int_equal(r->len, m->body_len);
    assert_memory_equal(r->sha, m->body_sha256, QUEUE_SHA256_LEN);
    return r;
}

struct live_walk {
    struct store *s;
    size_t stored;
};

/* live_cb - each stored body's record is referenced exactly once. */
static int live_cb(void *arg, const struct queue_msg *m)
{
    struct live_walk *w = arg;
    if (!m->body_stored)
        return 0;
    struct rec *r = store_rec(w->s, m->body_loc);
    assert_string_equal(r->id, m->id);
    if (r->refs != 1)
        fail_msg("%s: %u references to its record", m->id, r->refs);
    w->stored++;
    return 0;
}

/*
 * assert_live - the store's referenced records are exactly q's stored
 * bodies, one reference each; nothing was released or read after its
 * last reference went.
 */
static void assert_live(struct store *s, const struct queue *q)
{
    struct live_walk w = {.s = s};
    queue_foreach(q, live_cb, &w);
    size_t live = 0;
    for (size_t i = 0; i < s->n; i++)
        live += s->r[i].refs > 0;
    assert_int_equal(live, w.stored);
    assert_int_equal(s->bad_releases, 0);
    assert_int_equal(s->dead_reads, 0);
}

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

/* assert_same_digest - a and b are in the same replicated state. */
static void assert_same_digest(const struct queue *a, const struct queue *b)
{
    char da[65], db[65];
    queue_digest(a, da);
    queue_digest(b, db);
    assert_string_equal(da, db);
}

/* pair - the same entries applied to a queue with ops and one without. */
struct pair {
    struct store s;
    struct queue *ops;
    struct queue *mem;
};

static void pair_init(struct pair *p)
{
    memset(p, 0, sizeof(*p));
    p->ops = ops_queue(&p->s);
    p->mem = queue_new();
    assert_non_null(p->mem);
}

static void pair_free(struct pair *p)
{
    queue_free(p->ops);
    queue_free(p->mem);
    store_free(&p->s);
}

/* pair_apply - apply framed bytes to both (freed): same results, same digest. */
static struct queue_apply_result pair_apply(struct pair *p, uint8_t *buf, size_t len)
{
    struct queue_apply_result ro, rm;
    int rv = queue_apply(p->ops, buf, len, &ro);
    assert_int_equal(rv, 0);
    rv = queue_apply(p->mem, buf, len, &rm);
    free(buf);
    assert_int_equal(rv, 0);
    assert_int_equal(ro.status, rm.status);
    assert_int_equal(ro.duplicate, rm.duplicate);
    assert_int_equal(ro.dsn_generated, rm.dsn_generated);
    assert_int_equal(ro.finished, rm.finished);
    assert_same_digest(p->ops, p->mem);
    return ro;
}

static struct queue_apply_result pair_enqueue(struct pair *p, uint64_t ts, const struct fx_enq *e)
{
    size_t len;
    uint8_t *b = fx_pack_enqueue(ts, e, &len);
    return pair_apply(p, b, len);
}

static struct queue_apply_result pair_outcome(struct pair *p,
                                              uint64_t ts,
                                              const struct fx_outcome *o)
{
    size_t len;
    uint8_t *b = fx_pack_outcome(ts, o, &len);
    return pair_apply(p, b, len);
}

static struct queue_apply_result pair_admin(struct pair *p,
                                            uint64_t ts,
                                            Hamr__Admin__Op op,
                                            const char *id)
{
    size_t len;
    uint8_t *b = fx_pack_admin(ts, op, id, &len);
    return pair_apply(p, b, len);
}

/* lease_pack - lease recipients [0, n) of id under lease_id. */
static uint8_t *lease_pack(uint64_t ts, const char *id, uint64_t lease_id, size_t n, size_t *len)
{
    struct fx_lease l = {.node = 1,
                         .term = 1,
                         .expires = ts + 10 * MIN,
                         .boot = "boot",
                         .id = id,
                         .idx = {0, 1, 2, 3},
                         .n = n,
                         .lease_id = lease_id,
                         .dest = "[192.0.2.1]:25"};
    return fx_pack_lease(ts, &l, len);
}

/* pair_lease - lease recipients [0, n) of id under lease_id in both. */
static void pair_lease(struct pair *p, uint64_t ts, const char *id, uint64_t lease_id, size_t n)
{
    size_t len;
    uint8_t *b = lease_pack(ts, id, lease_id, n, &len);
    assert_int_equal(pair_apply(p, b, len).status, 0);
}

/* pair_level - raise the cluster level of both. */
static void pair_level(struct pair *p, uint64_t ts, uint32_t level)
{
    size_t len;
    uint8_t *b = fx_level_pack(ts, level, &len);
    assert_int_equal(pair_apply(p, b, len).status, 0);
}

/* enq - id from s@x.test to n recipients with this body (NULL: the default). */
static struct fx_enq enq(const char *id, const char *body, size_t n)
{
    struct fx_enq e = {.id = id,
                       .sender = "s@x.test",
                       .rcpts = {"r0@a.test", "r1@b.test", "r2@a.test", "r3@c.test"},
                       .body = body,
                       .expires = T0 + 24 * 60 * MIN};
    for (size_t i = n; i < FX_MAX; i++)
        e.rcpts[i] = NULL;
    return e;
}

/* body_of - a body of about size bytes, different for every tag. */
static char *body_of(const char *tag, size_t size)
{
    char *b = malloc(size + 128);
    assert_non_null(b);
    int n = snprintf(b, size + 128, "Subject: %s\r\nX-Tag: %s\r\n\r\n", tag, tag);
    while ((size_t)n < size)
        n += snprintf(b + n, size + 128 - (size_t)n, "%s line %d\r\n", tag, n);
    return b;
}

/* snap - a snapshot of q (must succeed). */
static uint8_t *snap(const struct queue *q, size_t *len)
{
    uint8_t *out = NULL;
    assert_int_equal(queue_snapshot(q, NULL, &out, len), 0);
    assert_non_null(out);
    return out;
}

/* bodies_cb - every message of a memory queue has the same body in the ops queue's store. */
struct bodies_walk {
    struct store *s;
    const struct queue *ops;
    size_t n;
};

static int bodies_cb(void *arg, const struct queue_msg *m)
{
    struct bodies_walk *w = arg;
    w->n++;
    if (m->body_len == 0)
        return 0;
    assert_non_null(queue_msg_body(m));
    struct rec *r = stored(w->s, w->ops, m->id);
    assert_int_equal(r->len, m->body_len);
    assert_memory_equal(r->bytes, queue_msg_body(m), m->body_len);
    return 0;
}

/* assert_same_bodies - ops (bodies in s) and mem hold the same messages with the same bodies. */
static void assert_same_bodies(struct store *s, const struct queue *ops, const struct queue *mem)
{
    struct bodies_walk w = {.s = s, .ops = ops};
    queue_foreach(mem, bodies_cb, &w);
    struct queue_stats so, sm;
    queue_get_stats(ops, &so);
    queue_get_stats(mem, &sm);
    assert_int_equal(w.n, sm.messages);
    assert_int_equal(so.messages, sm.messages);
    assert_int_equal(so.bytes, sm.bytes);
}

/* ------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------ */

/* An Enqueue puts the body in the store: nothing in memory, same digest as in memory. */
static void test_enqueue_puts(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    char *b1 = body_of("one", 3000);
    struct fx_enq e1 = enq("M1", b1, 2);
    assert_int_equal(pair_enqueue(&p, T0, &e1).status, 0);
    assert_int_equal(p.s.puts, 1);

    const struct queue_msg *m = queue_find(p.ops, "M1");
    assert_non_null(m);
    assert_null(queue_msg_body(m));
    assert_true(m->body_stored);
    assert_false(m->body_missing);
    assert_int_equal(m->body_len, strlen(b1));
    uint8_t sha[QUEUE_SHA256_LEN];
    fx_sha256(b1, strlen(b1), sha);
    assert_memory_equal(m->body_sha256, sha, sizeof(sha));
    struct rec *r = store_rec(&p.s, m->body_loc);
    assert_string_equal(r->id, "M1");
    assert_int_equal(r->len, strlen(b1));
    assert_memory_equal(r->bytes, b1, r->len);
    assert_int_equal(queue_bodies_missing(p.ops), 0);

    /* A second one; a duplicate puts nothing. */
    struct fx_enq e2 = enq("M2", NULL, 1);
    assert_int_equal(pair_enqueue(&p, T0 + 1, &e2).status, 0);
    assert_true(pair_enqueue(&p, T0 + 2, &e1).duplicate);
    assert_int_equal(p.s.puts, 2);
    assert_memory_equal(stored(&p.s, p.ops, "M2")->bytes, fx_default_body, strlen(fx_default_body));

    struct queue_stats st;
    queue_get_stats(p.ops, &st);
    assert_int_equal(st.messages, 2);
    assert_int_equal(st.bytes, strlen(b1) + strlen(fx_default_body));
    size_t n, bytes;
    queue_size(p.ops, &n, &bytes);
    assert_int_equal(bytes, st.bytes);
    assert_same_bodies(&p.s, p.ops, p.mem);
    assert_live(&p.s, p.ops);
    assert_int_equal(p.s.releases, 0);
    free(b1);
    pair_free(&p);
}

/* A put that fails fails the apply and changes nothing; the same entry applies afterwards. */
static void test_put_failure(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    struct fx_enq e1 = enq("M1", NULL, 2);
    pair_enqueue(&p, T0, &e1);
    char before[65], after[65];
    queue_digest(p.ops, before);
    struct queue_stats s0, s1;
    queue_get_stats(p.ops, &s0);

    p.s.fail_put = true;
    struct fx_enq e2 = enq("M2", NULL, 1);
    size_t len;
    uint8_t *b = fx_pack_enqueue(T0 + 1, &e2, &len);
    struct queue_apply_result res;
    assert_int_equal(queue_apply(p.ops, b, len, &res), HAMR_ENOSPACE);
    assert_int_equal(p.s.puts, 2);
    assert_null(queue_find(p.ops, "M2"));
    assert_false(queue_contains(p.ops, "M2"));
    queue_digest(p.ops, after);
    assert_string_equal(before, after);
    queue_get_stats(p.ops, &s1);
    assert_memory_equal(&s0, &s1, sizeof(s0));

    /* A bounce whose DSN cannot be kept: nothing happens, M1 keeps its lease and record. */
    size_t llen;
    uint8_t *lb = lease_pack(T0 + 2, "M1", 5, 2, &llen);
    p.s.fail_put = false;
    pair_apply(&p, lb, llen);
    queue_digest(p.ops, before);
    p.s.fail_put = true;
    struct fx_outcome o = {.id = "M1",
                           .lease_id = 5,
                           .n = 2,
                           .res = {{0, BOUNCED, 550, "no"}, {1, BOUNCED, 550, "no"}}};
    size_t olen;
    uint8_t *ob = fx_pack_outcome(T0 + 3, &o, &olen);
    assert_int_equal(queue_apply(p.ops, ob, olen, &res), HAMR_ENOSPACE);
    queue_digest(p.ops, after);
    assert_string_equal(before, after);
    assert_int_equal(fx_rcpt(p.ops, "M1", 0)->state, QUEUE_RCPT_LEASED);
    assert_int_equal(fx_count_dsns(p.ops), 0);
    assert_int_equal(p.s.releases, 0);
    assert_live(&p.s, p.ops);

    /* The store recovers: both entries apply as they do without ops. */
    p.s.fail_put = false;
    assert_int_equal(queue_apply(p.ops, b, len, &res), 0);
    assert_int_equal(queue_apply(p.mem, b, len, &res), 0);
    free(b);
    assert_int_equal(pair_apply(&p, ob, olen).dsn_generated, 1);
    assert_null(queue_find(p.ops, "M1"));
    assert_int_equal(store_rec(&p.s, LOC_BASE)->releases, 1);
    assert_same_bodies(&p.s, p.ops, p.mem);
    assert_live(&p.s, p.ops);
    pair_free(&p);
}

/* Delivered, deleted, bounced: each record is released once, when its message leaves. */
static void test_release_once(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    const char *ids[] = {"A", "B", "C", "D"};
    uint64_t loc[4];
    for (size_t i = 0; i < 4; i++) {
        struct fx_enq e = enq(ids[i], NULL, i == 3 ? 2 : 1);
        pair_enqueue(&p, T0 + i, &e);
        loc[i] = queue_find(p.ops, ids[i])->body_loc;
    }
    /* A delivered. */
    pair_lease(&p, T0 + 10, "A", 1, 1);
    struct fx_outcome oa = {.id = "A", .lease_id = 1, .n = 1, .res = {{0, DELIVERED, 250, "ok"}}};
    assert_int_equal(pair_outcome(&p, T0 + 11, &oa).finished, 1);
    assert_int_equal(store_rec(&p.s, loc[0])->releases, 1);
    assert_int_equal(p.s.releases, 1);
    /* B deleted. */
    assert_int_equal(pair_admin(&p, T0 + 12, HAMR__ADMIN__OP__DELETE, "B").finished, 1);
    assert_int_equal(store_rec(&p.s, loc[1])->releases, 1);
    assert_int_equal(p.s.releases, 2);
    /* C bounced by the administrator: released, its DSN put. */
    struct queue_apply_result r = pair_admin(&p, T0 + 13, HAMR__ADMIN__OP__BOUNCE, "C");
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.dsn_generated, 1);
    assert_int_equal(store_rec(&p.s, loc[2])->releases, 1);
    assert_int_equal(p.s.releases, 3);
    assert_int_equal(p.s.puts, 5);
    uint64_t dsn_c = stored(&p.s, p.ops, "C-B0") - p.s.r + LOC_BASE;
    /* D: one recipient delivered keeps the record, the other bounced releases it. */
    pair_lease(&p, T0 + 14, "D", 2, 2);
    struct fx_outcome od1 = {.id = "D", .lease_id = 2, .n = 1, .res = {{0, DELIVERED, 250, "ok"}}};
    assert_int_equal(pair_outcome(&p, T0 + 15, &od1).finished, 0);
    assert_int_equal(store_rec(&p.s, loc[3])->releases, 0);
    struct fx_outcome od2 = {.id = "D", .lease_id = 2, .n = 1, .res = {{1, BOUNCED, 550, "no"}}};
    r = pair_outcome(&p, T0 + 16, &od2);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.dsn_generated, 1);
    assert_int_equal(store_rec(&p.s, loc[3])->releases, 1);
    /* The DSN of C delivered: its own record goes. */
    pair_lease(&p, T0 + 17, "C-B0", 3, 1);
    struct fx_outcome oc = {
        .id = "C-B0", .lease_id = 3, .n = 1, .res = {{0, DELIVERED, 250, "ok"}}};
    assert_int_equal(pair_outcome(&p, T0 + 18, &oc).finished, 1);
    assert_int_equal(store_rec(&p.s, dsn_c)->releases, 1);
    /* Commands on what is gone release nothing more. */
    unsigned before = p.s.releases;
    assert_int_equal(pair_admin(&p, T0 + 19, HAMR__ADMIN__OP__DELETE, "A").status, HAMR_ENOTFOUND);
    assert_int_equal(pair_admin(&p, T0 + 20, HAMR__ADMIN__OP__BOUNCE, "C").status, HAMR_ENOTFOUND);
    assert_int_equal(pair_outcome(&p, T0 + 21, &od2).status, HAMR_ENOTFOUND);
    assert_true(
        pair_enqueue(&p, T0 + 22,
                     &(struct fx_enq){.id = "B", .sender = "s@x.test", .rcpts = {"r@y.test"}})
            .duplicate);
    assert_int_equal(p.s.releases, before);
    assert_int_equal(p.s.releases, 5);
    for (size_t i = 0; i < p.s.n; i++)
        assert_true(p.s.r[i].releases <= 1);
    /* Only D's DSN is left, with its record. */
    assert_non_null(queue_find(p.ops, "D-B0"));
    assert_live(&p.s, p.ops);
    assert_same_bodies(&p.s, p.ops, p.mem);
    /* Freeing the queue (a node stopping) releases nothing: the records stay for the next start. */
    queue_free(p.ops);
    p.ops = NULL;
    assert_int_equal(p.s.releases, 5);
    pair_free(&p);
}

/* A DSN quotes the original's headers read from the store, and is itself put there. */
static void test_dsn_from_store(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    struct fx_enq e = enq("M", NULL, 3);
    pair_enqueue(&p, T0, &e);
    pair_lease(&p, T0 + 1, "M", 9, 3);
    unsigned reads = p.s.reads;
    struct fx_outcome o = {.id = "M",
                           .lease_id = 9,
                           .n = 3,
                           .res = {{0, BOUNCED, 550, "5.1.1 unknown"},
                                   {1, DELIVERED, 250, "ok"},
                                   {2, BOUNCED, 552, "5.2.2 full"}},
                           .remote = "[192.0.2.1]:25"};
    struct queue_apply_result r = pair_outcome(&p, T0 + 2, &o);
    assert_int_equal(r.dsn_generated, 1);
    assert_int_equal(r.finished, 1);
    assert_int_equal(p.s.reads, reads + 1);

    const struct queue_msg *dm = queue_find(p.mem, "M-B0");
    assert_non_null(dm);
    assert_non_null(queue_msg_body(dm));
    struct rec *dr = stored(&p.s, p.ops, "M-B0");
    assert_int_equal(dr->len, dm->body_len);
    assert_memory_equal(dr->bytes, queue_msg_body(dm), dm->body_len);
    /* The headers are in it, the original's text is not. */
    char *text = strndup((const char *)dr->bytes, dr->len);
    assert_non_null(strstr(text, "Subject: hello"));
    assert_null(strstr(text, "BODY-LINE-MARKER"));
    free(text);
    assert_true(queue_find(p.ops, "M-B0")->is_dsn);

    /* An administrative bounce quotes from the store as well. */
    char *big = body_of("big", 9000);
    struct fx_enq e2 = enq("N", big, 2);
    pair_enqueue(&p, T0 + 3, &e2);
    reads = p.s.reads;
    assert_int_equal(pair_admin(&p, T0 + 4, HAMR__ADMIN__OP__BOUNCE, "N").dsn_generated, 1);
    assert_int_equal(p.s.reads, reads + 1);
    dm = queue_find(p.mem, "N-B0");
    dr = stored(&p.s, p.ops, "N-B0");
    assert_int_equal(dr->len, dm->body_len);
    assert_memory_equal(dr->bytes, queue_msg_body(dm), dm->body_len);
    assert_non_null(memmem(dr->bytes, dr->len, "X-Tag: big", 10));
    free(big);
    assert_same_bodies(&p.s, p.ops, p.mem);
    assert_live(&p.s, p.ops);
    pair_free(&p);
}

/* From QUEUE_LEVEL_STORE a snapshot has lengths, not bodies; a restore locates or marks missing. */
static void test_snapshot_store_level(void **state)
{
    (void)state;
    struct store s1 = {0}, s2 = {0};
    struct queue *q1 = ops_queue(&s1);
    assert_int_equal(fx_level(q1, T0, QUEUE_LEVEL_STORE).status, 0);
    assert_int_equal(queue_cluster_level(q1), QUEUE_LEVEL_STORE);
    const char *ids[] = {"A", "B", "C", "D", "E"};
    char *bodies[5];
    size_t sum = 0;
    for (size_t i = 0; i < 5; i++) {
        bodies[i] = body_of(ids[i], 4096);
        sum += strlen(bodies[i]);
        struct fx_enq e = enq(ids[i], bodies[i], 2);
        fx_enqueue(q1, T0 + 1 + i, &e);
    }
    size_t len;
    uint8_t *sn = snap(q1, &len);
    assert_true(len < sum / 10);
    assert_int_equal(s1.reads, 0);
    Hamr__Snapshot *u = NULL;
    assert_int_equal(proto_snapshot_unpack(sn, len, &u), 0);
    assert_int_equal(u->n_messages, 5);
    assert_int_equal(u->cluster_level, QUEUE_LEVEL_STORE);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(u->messages[i]->enqueue->body.len, 0);
        assert_int_equal(u->messages[i]->enqueue->body_len, strlen(bodies[i]));
    }
    hamr__snapshot__free_unpacked(u, NULL);

    /* The new node's store has A and C; B under other bytes; D lost; E not at all. */
    uint64_t la = store_add(&s2, "A", bodies[0], strlen(bodies[0]));
    uint64_t lc = store_add(&s2, "C", bodies[2], strlen(bodies[2]));
    store_add(&s2, "B", bodies[0], strlen(bodies[0]));
    uint64_t ld = store_add(&s2, "D", bodies[3], strlen(bodies[3]));
    store_rec(&s2, ld)->lost = true;
    for (size_t i = 0; i < s2.n; i++)
        s2.r[i].refs = 0; /* on disk, not yet claimed */
    struct queue *q2 = ops_queue(&s2);
    assert_int_equal(queue_restore(q2, sn, len), 0);
    free(sn);
    assert_same_digest(q1, q2);
    assert_int_equal(queue_cluster_level(q2), QUEUE_LEVEL_STORE);
    assert_int_equal(s2.locates, 5);
    assert_int_equal(s2.puts, 0);
    assert_int_equal(stored(&s2, q2, "A") - s2.r, la - LOC_BASE);
    assert_int_equal(stored(&s2, q2, "C") - s2.r, lc - LOC_BASE);
    for (size_t i = 0; i < 5; i++) {
        const struct queue_msg *m = queue_find(q2, ids[i]);
        bool have = i == 0 || i == 2;
        assert_int_equal(m->body_stored, have);
        assert_int_equal(m->body_missing, !have);
        assert_null(queue_msg_body(m));
        assert_int_equal(m->body_len, strlen(bodies[i]));
    }
    assert_int_equal(queue_bodies_missing(q2), 3);
    struct queue_stats st1, st2;
    queue_get_stats(q1, &st1);
    queue_get_stats(q2, &st2);
    assert_int_equal(st2.bytes, st1.bytes);
    assert_live(&s2, q2);

    /* A level-3 snapshot of a node that lacks bodies is still whole. */
    uint8_t *sn2 = snap(q2, &len);
    free(sn2);

    /* B fetched from a peer. */
    uint64_t lb = store_add(&s2, "B", bodies[1], strlen(bodies[1]));
    assert_int_equal(queue_body_found(q2, "B", lb), 0);
    assert_int_equal(queue_bodies_missing(q2), 2);
    assert_int_equal(queue_find(q2, "B")->body_loc, lb);
    stored(&s2, q2, "B");
    assert_int_equal(queue_body_found(q2, "nope", lb + 1), HAMR_ENOTFOUND);
    /* A's record turns out unreadable: released, A missing. */
    assert_int_equal(queue_body_lost(q2, "A"), 0);
    const struct queue_msg *ma = queue_find(q2, "A");
    assert_true(ma->body_missing);
    assert_false(ma->body_stored);
    assert_int_equal(store_rec(&s2, la)->releases, 1);
    assert_int_equal(queue_bodies_missing(q2), 3);
    assert_int_equal(queue_body_lost(q2, "nope"), HAMR_ENOTFOUND);
    /* None of it is replicated state. */
    assert_same_digest(q1, q2);
    assert_live(&s2, q2);

    for (size_t i = 0; i < 5; i++)
        free(bodies[i]);
    queue_free(q1);
    queue_free(q2);
    store_free(&s1);
    store_free(&s2);
}

/* refused_snapshot - buf (len bytes, copied) does not restore into q, which keeps its digest. */
static void refused_snapshot(struct queue *q, const uint8_t *buf, size_t len)
{
    char before[65], after[65];
    queue_digest(q, before);
    uint8_t *copy = malloc(len > 0 ? len : 1);
    assert_non_null(copy);
    memcpy(copy, buf, len);
    assert_int_equal(queue_restore(q, copy, len), HAMR_ECORRUPT);
    free(copy);
    queue_digest(q, after);
    assert_string_equal(before, after);
}

/*
 * test_snapshot_compressed - from QUEUE_LEVEL_SNAPZ a snapshot is the
 * compressed buffer (proto_frame.h: "HMSZ", the protobuf's length, LZ4
 * blocks of PROTO_SNAPZ_BLOCK): for 30,000 messages more than one block,
 * and far fewer bytes than the same state at QUEUE_LEVEL_SPREAD ("HMSN"),
 * which restores as well. A restore gives the same digest. Refused
 * (HAMR_ECORRUPT), the state kept: a block cut short, bytes after the last
 * block, a block of length 0, a length the blocks do not give (one more,
 * one less), one more than LZ4 could make of them.
 */
static void test_snapshot_compressed(void **state)
{
    (void)state;
    enum { N = 30000 };
    struct store s1 = {0}, s2 = {0};
    struct queue *q1 = ops_queue(&s1);
    assert_int_equal(fx_level(q1, T0, QUEUE_LEVEL_SPREAD).status, 0);
    char id[32];
    for (size_t i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "Z%06zu", i);
        struct fx_enq e = enq(id, NULL, 1 + i % 3);
        fx_enqueue(q1, T0 + 1 + i, &e);
    }
    size_t plain_len, len;
    uint8_t *plain = snap(q1, &plain_len);
    assert_memory_equal(plain, "HMSN", 4);
    struct queue *q2 = ops_queue(&s2);
    assert_int_equal(queue_restore(q2, plain, plain_len), 0);
    assert_same_digest(q1, q2);
    free(plain);

    assert_int_equal(fx_level(q1, T0 + N + 1, QUEUE_LEVEL_SNAPZ).status, 0);
    uint8_t *z = snap(q1, &len);
    assert_memory_equal(z, "HMSZ", 4);
    uint64_t raw = ((uint64_t)proto_u32_get(z + 4) << 32) | proto_u32_get(z + 8);
    assert_true(raw > PROTO_SNAPZ_BLOCK);  /* two blocks at least */
    assert_true(raw > plain_len - 4 - 64); /* the same state, its level one higher */
    assert_true(len < raw / 2);
    size_t first = proto_u32_get(z + 12);
    assert_true(12 + 4 + first < len); /* a second block follows */
    assert_int_equal(queue_restore(q2, z, len), 0);
    assert_same_digest(q1, q2);
    assert_int_equal(queue_cluster_level(q2), QUEUE_LEVEL_SNAPZ);

    refused_snapshot(q2, z, len - 1);            /* the last block cut short */
    refused_snapshot(q2, z, 12 + 4 + first + 2); /* the second block's length cut short */
    uint8_t *more = malloc(len + 8);
    assert_non_null(more);
    memcpy(more, z, len);
    memset(more + len, 0, 8);
    refused_snapshot(q2, more, len + 8); /* after the last block: a block of length 0 */
    more[len + 3] = 1;
    refused_snapshot(q2, more, len + 5); /* a block of one byte that is not LZ4's */
    memcpy(more, z, len);
    proto_u32_put(more + 8, (uint32_t)(raw + 1));
    refused_snapshot(q2, more, len);
    proto_u32_put(more + 8, (uint32_t)(raw - 1));
    refused_snapshot(q2, more, len);
    uint64_t huge = (uint64_t)(len - 12) * 255 + 1;
    proto_u32_put(more + 4, (uint32_t)(huge >> 32));
    proto_u32_put(more + 8, (uint32_t)huge);
    refused_snapshot(q2, more, len);
    refused_snapshot(q2, z, 11); /* not even the length */
    free(more);
    assert_same_digest(q1, q2);

    free(z);
    queue_free(q1);
    queue_free(q2);
    store_free(&s1);
    store_free(&s2);
}

/* Below QUEUE_LEVEL_STORE a snapshot carries every body, read back from the store. */
static void test_snapshot_below_store_level(void **state)
{
    (void)state;
    for (uint32_t level = 1; level < QUEUE_LEVEL_STORE; level++) {
        struct pair p;
        pair_init(&p);
        size_t len;
        pair_level(&p, T0, level);
        char *big = body_of("big", 5000);
        struct fx_enq ea = enq("A", big, 2), eb = enq("B", NULL, 1);
        pair_enqueue(&p, T0 + 1, &ea);
        pair_enqueue(&p, T0 + 2, &eb);
        assert_int_equal(pair_admin(&p, T0 + 3, HAMR__ADMIN__OP__BOUNCE, "B").dsn_generated, 1);
        unsigned reads = p.s.reads;
        uint8_t *so = snap(p.ops, &len);
        assert_int_equal(p.s.reads, reads + 2); /* A and B-B0 */
        /* Byte for byte the snapshot of the queue that keeps bodies in memory. */
        size_t mlen;
        uint8_t *sm = snap(p.mem, &mlen);
        assert_int_equal(len, mlen);
        assert_memory_equal(so, sm, len);
        free(sm);
        Hamr__Snapshot *u = NULL;
        assert_int_equal(proto_snapshot_unpack(so, len, &u), 0);
        assert_int_equal(u->n_messages, 2);
        for (size_t i = 0; i < u->n_messages; i++) {
            const Hamr__Enqueue *e = u->messages[i]->enqueue;
            struct rec *r = stored(&p.s, p.ops, e->queue_id);
            assert_int_equal(e->body.len, r->len);
            assert_memory_equal(e->body.data, r->bytes, r->len);
            assert_int_equal(e->body_len, 0);
        }
        hamr__snapshot__free_unpacked(u, NULL);
        /* A queue without ops takes it: same state, the bodies in memory. */
        struct queue *r = queue_new();
        assert_non_null(r);
        assert_int_equal(queue_restore(r, so, len), 0);
        free(so);
        assert_same_digest(p.ops, r);
        assert_same_bodies(&p.s, p.ops, r);
        assert_int_equal(queue_bodies_missing(r), 0);
        queue_free(r);

        /* A record that cannot be read, then a body this node lacks: no snapshot. */
        struct rec *ra = stored(&p.s, p.ops, "A");
        ra->lost = true;
        uint8_t *out = NULL;
        assert_int_equal(queue_snapshot(p.ops, NULL, &out, &len), HAMR_EIO);
        assert_null(out);
        ra->lost = false;
        assert_int_equal(queue_body_lost(p.ops, "A"), 0);
        assert_int_equal(queue_bodies_missing(p.ops), 1);
        assert_int_equal(ra->releases, 1);
        assert_int_equal(queue_snapshot(p.ops, NULL, &out, &len), HAMR_ENOTFOUND);
        assert_null(out);
        /* Once the level allows it, the snapshot goes without the body. */
        pair_level(&p, T0 + 4, QUEUE_LEVEL_STORE);
        out = snap(p.ops, &len);
        free(out);
        assert_live(&p.s, p.ops);
        free(big);
        pair_free(&p);
    }
}

/* A snapshot without bodies cannot go into a queue that keeps them in memory. */
static void test_metadata_snapshot_needs_ops(void **state)
{
    (void)state;
    struct store s = {0};
    struct queue *q = ops_queue(&s);
    assert_int_equal(fx_level(q, T0, QUEUE_LEVEL_STORE).status, 0);
    struct fx_enq ea = enq("A", NULL, 1), eb = enq("B", NULL, 2);
    fx_enqueue(q, T0 + 1, &ea);
    fx_enqueue(q, T0 + 2, &eb);
    size_t len;
    uint8_t *sn = snap(q, &len);

    struct queue *m = queue_new();
    assert_non_null(m);
    struct fx_enq eo = enq("OLD", NULL, 1);
    fx_enqueue(m, T0, &eo);
    char before[65], after[65];
    queue_digest(m, before);
    assert_int_equal(queue_restore(m, sn, len), HAMR_ECORRUPT);
    free(sn);
    queue_digest(m, after);
    assert_string_equal(before, after);
    assert_null(queue_find(m, "A"));
    const struct queue_msg *old = queue_find(m, "OLD");
    assert_non_null(old);
    assert_int_equal(old->body_len, strlen(fx_default_body));
    assert_memory_equal(queue_msg_body(old), fx_default_body, old->body_len);

    /* At the same level, a snapshot of a queue without ops has its bodies and goes in. */
    struct queue *plain = queue_new();
    assert_non_null(plain);
    assert_int_equal(fx_level(plain, T0, QUEUE_LEVEL_STORE).status, 0);
    fx_enqueue(plain, T0 + 1, &ea);
    fx_enqueue(plain, T0 + 2, &eb);
    sn = snap(plain, &len);
    assert_int_equal(queue_restore(m, sn, len), 0);
    free(sn);
    assert_same_digest(m, q);
    assert_int_equal(s.releases, 0);
    queue_free(plain);
    queue_free(m);
    queue_free(q);
    store_free(&s);
}

/*
 * mangle - snap with message i renamed to id, or (id NULL) replaced by a
 * copy of message i - 1.
 */
static uint8_t *mangle(const uint8_t *sn, size_t len, size_t i, const char *id, size_t *out_len)
{
    Hamr__Snapshot *u = NULL;
    assert_int_equal(proto_snapshot_unpack(sn, len, &u), 0);
    assert_true(i > 0 && i < u->n_messages);
    Hamr__QueuedMessage *was = u->messages[i];
    char *was_id = was->enqueue->queue_id;
    if (id != NULL)
        was->enqueue->queue_id = (char *)id;
    else
        u->messages[i] = u->messages[i - 1];
    uint8_t *out = NULL;
    assert_int_equal(proto_snapshot_pack(u, NULL, &out, out_len), 0);
    u->messages[i] = was;
    was->enqueue->queue_id = was_id;
    hamr__snapshot__free_unpacked(u, NULL);
    return out;
}

/* over - a queue in s with A, B, C; their records. */
static struct queue *over(struct store *s, uint64_t loc[3])
{
    struct queue *q = ops_queue(s);
    const char *ids[] = {"A", "B", "C"};
    for (size_t i = 0; i < 3; i++) {
        struct fx_enq e = enq(ids[i], NULL, 1);
        e.body = ids[i][0] == 'A' ? "Subject: a\r\n\r\na\r\n" : NULL;
        fx_enqueue(q, T0 + 1 + i, &e);
        loc[i] = queue_find(q, ids[i])->body_loc;
    }
    return q;
}

/*
 * source - a queue (with ops in sp when metadata) holding the given ids,
 * A and B as over() has them; D's body is written to s's disk (no reference)
 * when metadata, to be located there.
 */
static struct queue *source(struct store *s, struct store *sp, bool metadata, const char *ids)
{
    struct queue *q = metadata ? ops_queue(sp) : queue_new();
    assert_non_null(q);
    if (metadata)
        assert_int_equal(fx_level(q, T0, QUEUE_LEVEL_STORE).status, 0);
    for (size_t i = 0; ids[i] != '\0'; i++) {
        char id[2] = {ids[i], '\0'};
        struct fx_enq e = enq(id, NULL, 1);
        if (ids[i] == 'A')
            e.body = "Subject: a\r\n\r\na\r\n";
        if (ids[i] == 'D')
            e.body = "Subject: d\r\n\r\nd\r\n";
        fx_enqueue(q, T0 + 10 + i, &e);
    }
    if (metadata && strchr(ids, 'D') != NULL) {
        const char *d = "Subject: d\r\n\r\nd\r\n";
        store_rec(s, store_add(s, "D", d, strlen(d)))->refs = 0;
    }
    return q;
}

/* over_case - a queue in s with A, B, C (their records in loc), and a source of snapshots. */
struct over_case {
    struct store s, sp;
    uint64_t loc[3];
    struct queue *q;
    struct queue *src;
    char before[65]; /* q's digest */
};

static void over_init(struct over_case *c, bool metadata, const char *src_ids)
{
    memset(c, 0, sizeof(*c));
    c->q = over(&c->s, c->loc);
    queue_digest(c->q, c->before);
    c->src = source(&c->s, &c->sp, metadata, src_ids);
}

static void over_free(struct over_case *c)
{
    queue_free(c->src);
    queue_free(c->q);
    store_free(&c->s);
    store_free(&c->sp);
}

/* over_refused - q refuses src's snapshot mangled as mangle() does, and keeps its state. */
static void over_refused(struct over_case *c, size_t i, const char *id)
{
    size_t len, blen;
    uint8_t *sn = snap(c->src, &len);
    uint8_t *bad = mangle(sn, len, i, id, &blen);
    free(sn);
    assert_int_equal(queue_restore(c->q, bad, blen), HAMR_ECORRUPT);
    free(bad);
    char after[65];
    queue_digest(c->q, after);
    assert_string_equal(c->before, after);
    for (size_t k = 0; k < 3; k++) {
        struct rec *r = store_rec(&c->s, c->loc[k]);
        assert_int_equal(r->releases, 0);
        assert_int_equal(queue_find(c->q, r->id)->body_loc, c->loc[k]);
    }
    assert_live(&c->s, c->q);
}

/* Over an existing state: shared records stay, the old state's others go, new ones are kept. */
static void test_restore_over_state(void **state)
{
    (void)state;
    for (int metadata = 0; metadata < 2; metadata++) {
        struct over_case c;
        over_init(&c, metadata, "ABD");
        struct store *s = &c.s;
        unsigned puts = s->puts, locates = s->locates;
        size_t len;
        uint8_t *sn = snap(c.src, &len);
        assert_int_equal(queue_restore(c.q, sn, len), 0);
        free(sn);
        assert_same_digest(c.q, c.src);
        for (size_t i = 0; i < 2; i++) {
            struct rec *r = store_rec(s, c.loc[i]);
            assert_int_equal(queue_find(c.q, r->id)->body_loc, c.loc[i]);
            assert_int_equal(r->releases, 0);
            assert_int_equal(r->refs, 1);
        }
        assert_int_equal(store_rec(s, c.loc[2])->releases, 1);
        assert_null(queue_find(c.q, "C"));
        assert_int_equal(s->releases, 1);
        /* D put from the snapshot's bytes, or located on disk; A and B neither. */
        assert_int_equal(s->puts, puts + (metadata ? 0 : 1));
        assert_int_equal(s->locates, locates + (metadata ? 1 : 0));
        assert_memory_equal(stored(s, c.q, "D")->bytes, "Subject: d\r\n", 12);
        assert_int_equal(queue_bodies_missing(c.q), 0);
        assert_live(s, c.q);
        over_free(&c);
    }
}

/* A restore that fails half way gives back what it took and leaves the old state whole. */
static void test_restore_failure_gives_back(void **state)
{
    (void)state;
    for (int metadata = 0; metadata < 2; metadata++) {
        struct over_case c;
        over_init(&c, metadata, "DAXB");
        unsigned taken = c.s.puts + c.s.locates;
        over_refused(&c, 2, ""); /* X has no id */
        /* D was taken (put or located) before the bad id, and given back once. */
        assert_int_equal(c.s.puts + c.s.locates, taken + 1);
        assert_int_equal(c.s.releases, 1);
        struct rec *rd = &c.s.r[c.s.n - 1];
        assert_string_equal(rd->id, "D");
        assert_int_equal(rd->releases, 1);
        assert_int_equal(rd->refs, 0);
        over_free(&c);
    }
}

/*
 * A snapshot that repeats a message the old state holds: refused, and the
 * old state's record stays referenced (the repeat shares it; refusing the
 * repeat must not release it).
 */
static void test_restore_duplicate_keeps_shared(void **state)
{
    (void)state;
    for (int metadata = 0; metadata < 2; metadata++) {
        struct over_case c;
        over_init(&c, metadata, "AB");
        over_refused(&c, 1, NULL); /* A, A */
        assert_int_equal(c.s.releases, 0);
        /* A leaves: its record goes exactly once. */
        assert_int_equal(fx_admin(c.q, T0 + 20, HAMR__ADMIN__OP__DELETE, "A").finished, 1);
        assert_int_equal(store_rec(&c.s, c.loc[0])->releases, 1);
        assert_live(&c.s, c.q);
        over_free(&c);
    }
}

/* An empty body is kept nowhere and is never missing, before or after a restore. */
static void test_empty_body(void **state)
{
    (void)state;
    for (uint32_t level = 1; level <= QUEUE_LEVEL_STORE; level += QUEUE_LEVEL_STORE - 1) {
        struct pair p;
        pair_init(&p);
        size_t len;
        pair_level(&p, T0, level);
        struct fx_enq e = enq("E", "", 1), f = enq("F", NULL, 1);
        pair_enqueue(&p, T0 + 1, &e);
        pair_enqueue(&p, T0 + 2, &f);
        const struct queue_msg *m = queue_find(p.ops, "E");
        assert_int_equal(m->body_len, 0);
        assert_false(m->body_stored);
        assert_false(m->body_missing);
        assert_int_equal(p.s.puts, 1);

        uint8_t *so = snap(p.ops, &len);
        struct queue *r = ops_queue(&p.s);
        assert_int_equal(queue_restore(r, so, len), 0);
        free(so);
        assert_same_digest(p.ops, r);
        m = queue_find(r, "E");
        assert_non_null(m);
        assert_false(m->body_missing);
        assert_false(m->body_stored);
        assert_int_equal(queue_bodies_missing(r), 0);
        queue_free(r);

        struct queue *rm = fx_snapshot_roundtrip(p.mem);
        assert_false(queue_find(rm, "E")->body_missing);
        assert_int_equal(queue_bodies_missing(rm), 0);
        queue_free(rm);
        pair_free(&p);
    }
}

/* restart - the node stops and starts: nothing claimed, the state from its snapshot. */
static void restart(struct pair *p)
{
    size_t len;
    uint8_t *sn = snap(p->ops, &len);
    queue_free(p->ops);
    for (size_t i = 0; i < p->s.n; i++)
        p->s.r[i].refs = 0;
    p->ops = ops_queue(&p->s);
    assert_int_equal(queue_restore(p->ops, sn, len), 0);
    free(sn);
}

/* cross_restore - each queue restores a snapshot: its own, or the other's when it can. */
static void cross_restore(struct pair *p, bool cross)
{
    size_t lo, lm;
    uint8_t *so = snap(p->ops, &lo), *sm = snap(p->mem, &lm);
    bool ops_has_bodies = queue_cluster_level(p->ops) < QUEUE_LEVEL_STORE;
    assert_int_equal(queue_restore(p->ops, cross ? sm : so, cross ? lm : lo), 0);
    assert_int_equal(
        queue_restore(p->mem, cross && ops_has_bodies ? so : sm, cross && ops_has_bodies ? lo : lm),
        0);
    free(so);
    free(sm);
}

/* Any interleaving of entries and restores: same state as in memory, no leak, no early release. */
static void test_random_against_memory(void **state)
{
    (void)state;
    static const uint64_t seeds[] = {3, 0x5eed, 271828};
    for (size_t si = 0; si < HAMR_ARRAY_LEN(seeds); si++) {
        struct fx_bytes e[FX_RANDOM_OPS];
        fx_random_entries(seeds[si], e);
        uint64_t rs = seeds[si] * 7919 + 1;
        struct pair p;
        pair_init(&p);
        unsigned restores = 0;
        for (int i = 0; i < FX_RANDOM_OPS; i++) {
            pair_apply(&p, e[i].buf, e[i].len);
            if (i == FX_RANDOM_OPS / 2)
                pair_level(&p, T0, QUEUE_LEVEL_STORE);
            if (fx_rng_next(&rs) % 16 == 0) {
                unsigned kind = (unsigned)(fx_rng_next(&rs) % 3);
                if (kind == 2)
                    restart(&p);
                else
                    cross_restore(&p, kind == 1);
                restores++;
                assert_same_digest(p.ops, p.mem);
            }
            assert_live(&p.s, p.ops);
            assert_int_equal(queue_bodies_missing(p.ops), 0);
        }
        assert_true(restores > 10);
        assert_same_bodies(&p.s, p.ops, p.mem);
        assert_live(&p.s, p.ops);
        assert_true(p.s.releases > 0);
        pair_free(&p);
    }
}

/*
 * Write-behind: bodies stay in memory when they apply; queue_body_spill
 * puts the oldest first, by age or by bytes in memory, within its budget;
 * a message finished before then is never put; a snapshot carries the
 * bodies still in memory (level 3 too), and a restore puts them at once.
 */
static void test_write_behind(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    queue_free(p.ops);
    p.ops = queue_new();
    assert_non_null(p.ops);
    struct queue_body_ops ops = {.arg = &p.s,
                                 .put = st_put,
                                 .locate = st_locate,
                                 .release = st_release,
                                 .read = st_read,
                                 .write_behind = true};
    queue_set_body_ops(p.ops, &ops);
    pair_level(&p, T0, QUEUE_LEVEL_STORE);
    char *b[4];
    size_t total = 0;
    for (int i = 0; i < 4; i++) {
        char id[8];
        snprintf(id, sizeof(id), "W%d", i);
        b[i] = body_of(id, 1000 * (size_t)(i + 1));
        struct fx_enq e = enq(id, b[i], 1);
        assert_int_equal(pair_enqueue(&p, T0 + (uint64_t)i * 1000, &e).status, 0);
        total += strlen(b[i]);
    }
    assert_int_equal(p.s.puts, 0);
    assert_int_equal(queue_body_memory(p.ops), total);
    const struct queue_msg *m0 = queue_find(p.ops, "W0");
    assert_non_null(queue_msg_body(m0));
    assert_false(m0->body_stored);

    /* W0 finishes before it is written: never put. */
    /* lease 0 applies to a PENDING recipient */
    struct fx_outcome o = {.id = "W0", .lease_id = 0, .n = 1, .res = {{0, DELIVERED, 250, "ok"}}};
    assert_int_equal(pair_outcome(&p, T0 + 4000, &o).finished, 1);
    assert_int_equal(queue_body_memory(p.ops), total - strlen(b[0]));

    /* Nothing old enough and under the bytes: nothing put. */
    size_t put = 99;
    assert_int_equal(queue_body_spill(p.ops, T0 + 1500, 1000, total, total, &put), 0);
    assert_int_equal(put, 0);
    /* W1 (received T0+1000) is 1 s old at T0+2000, W2 is not. */
    assert_int_equal(queue_body_spill(p.ops, T0 + 2000, 1000, total, total, &put), 0);
    assert_int_equal(put, strlen(b[1]));
    assert_int_equal(p.s.puts, 1);
    assert_memory_equal(stored(&p.s, p.ops, "W1")->bytes, b[1], strlen(b[1]));
    assert_non_null(queue_msg_body(queue_find(p.ops, "W2")));

    /* A snapshot at level 3 carries W2 and W3 (in memory), not W1 (stored). */
    size_t len;
    uint8_t *sn = snap(p.ops, &len);
    assert_true(len > strlen(b[2]) + strlen(b[3]));
    assert_true(len < strlen(b[1]) + strlen(b[2]) + strlen(b[3]));
    struct store s2;
    memset(&s2, 0, sizeof(s2));
    (void)store_add(&s2, "W1", b[1], strlen(b[1])); /* as a restarted node's store has it */
    s2.r[0].refs = 0;
    struct queue *q2 = ops_queue(&s2);
    assert_int_equal(queue_restore(q2, sn, len), 0);
    assert_int_equal(queue_bodies_missing(q2), 0);
    assert_int_equal(queue_body_memory(q2), 0); /* a restore puts at once */
    assert_memory_equal(stored(&s2, q2, "W3")->bytes, b[3], strlen(b[3]));
    assert_same_digest(q2, p.ops);
    free(sn);
    queue_free(q2);
    store_free(&s2);

    /* By bytes: keep at most 0 bytes, but a budget of one body per call. */
    assert_int_equal(queue_body_spill(p.ops, T0, 60000, 0, 1, &put), 0);
    assert_int_equal(put, strlen(b[2]));
    assert_int_equal(queue_body_spill(p.ops, T0, 60000, 0, 1, &put), 0);
    assert_int_equal(put, strlen(b[3]));
    assert_int_equal(queue_body_memory(p.ops), 0);
    assert_int_equal(p.s.puts, 3);
    assert_same_bodies(&p.s, p.ops, p.mem);
    assert_live(&p.s, p.ops);

    /* A put that fails stops the spill and keeps the body in memory. */
    char *b4 = body_of("W4", 500);
    struct fx_enq e4 = enq("W4", b4, 1);
    assert_int_equal(pair_enqueue(&p, T0 + 5000, &e4).status, 0);
    p.s.fail_put = true;
    assert_int_not_equal(queue_body_spill(p.ops, T0 + 9000, 1000, 0, 1 << 20, &put), 0);
    assert_non_null(queue_msg_body(queue_find(p.ops, "W4")));
    assert_int_equal(queue_body_memory(p.ops), strlen(b4));
    p.s.fail_put = false;
    assert_int_equal(queue_body_spill(p.ops, T0 + 9000, 1000, 0, 1 << 20, &put), 0);
    assert_int_equal(queue_body_memory(p.ops), 0);
    assert_live(&p.s, p.ops);
    free(b4);
    for (int i = 0; i < 4; i++)
        free(b[i]);
    pair_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enqueue_puts),
        cmocka_unit_test(test_put_failure),
        cmocka_unit_test(test_release_once),
        cmocka_unit_test(test_dsn_from_store),
        cmocka_unit_test(test_snapshot_store_level),
        cmocka_unit_test(test_snapshot_below_store_level),
        cmocka_unit_test(test_snapshot_compressed),
        cmocka_unit_test(test_metadata_snapshot_needs_ops),
        cmocka_unit_test(test_restore_over_state),
        cmocka_unit_test(test_restore_failure_gives_back),
        cmocka_unit_test(test_restore_duplicate_keeps_shared),
        cmocka_unit_test(test_empty_body),
        cmocka_unit_test(test_random_against_memory),
        cmocka_unit_test(test_write_behind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
