/*
 * queue_fixture.c - helpers shared by the queue unit tests: build protobuf
 * entries from small spec structs, frame them with proto_entry_pack, apply
 * them, and compare two queues field by field. Failures are cmocka
 * assertions.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util/err.h"
#include "queue_fixture.h"

const char *const fx_default_body =
    "Received: from client.test by mx.hamr.test\r\n"
    "From: <a@example.org>\r\n"
    "Subject: hello\r\n"
    "\r\n"
    "BODY-LINE-MARKER\r\n";

#define FX_REPORTER "mx.hamr.test"
#define FX_T0 1700000000000ull
#define FX_MIN (60ull * 1000)

/* ------------------------------------------------------------------------
 * Allocation failure on demand (linked with -Wl,--wrap=malloc,...)
 * ------------------------------------------------------------------------ */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);

static long fx_countdown = -1; /* -1: never fail */
static bool fx_failed;

/* fx_fail_now - count an allocation down; true when this one must fail. */
static bool fx_fail_now(void)
{
    if (fx_countdown < 0)
        return false;
    if (fx_countdown-- == 0) {
        fx_failed = true;
        return true;
    }
    return false;
}

/* __wrap_malloc - malloc, failing on demand. */
void *__wrap_malloc(size_t n)
{
    return fx_fail_now() ? NULL : __real_malloc(n);
}

/* __wrap_calloc - calloc, failing on demand. */
void *__wrap_calloc(size_t n, size_t size)
{
    return fx_fail_now() ? NULL : __real_calloc(n, size);
}

/* __wrap_realloc - realloc, failing on demand. */
void *__wrap_realloc(void *p, size_t n)
{
    return fx_fail_now() ? NULL : __real_realloc(p, n);
}

/* fx_fail_after - arm the failure countdown. */
void fx_fail_after(long n)
{
    fx_countdown = n;
    fx_failed = false;
}

/* fx_fail_off - disarm, report whether it fired. */
bool fx_fail_off(void)
{
    fx_countdown = -1;
    return fx_failed;
}
#define FX_DSN_TTL (5ull * 24 * 3600 * 1000)

/* fx_sha256 - SHA-256 through libcrypto. */
void fx_sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned len = 0;
    static const uint8_t empty[1];
    assert_int_equal(EVP_Digest(p ? p : empty, n, out, &len, EVP_sha256(), NULL), 1);
    assert_int_equal(len, 32);
}

/* fx_pack - frame an Entry. */
uint8_t *fx_pack(Hamr__Entry *e, uint64_t ts, size_t *len)
{
    uint8_t *out = NULL;
    e->timestamp_ms = ts;
    assert_int_equal(proto_entry_pack(e, NULL, &out, len), 0);
    return out;
}

/* fx_pack_enqueue - an Enqueue entry from a spec. */
uint8_t *fx_pack_enqueue(uint64_t ts, const struct fx_enq *s, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Enqueue enq = HAMR__ENQUEUE__INIT;
    char *rcpts[FX_MAX];
    size_t n = 0;
    while (n < FX_MAX && s->rcpts[n] != NULL) {
        rcpts[n] = (char *)s->rcpts[n];
        n++;
    }
    const char *body = s->body ? s->body : fx_default_body;
    uint8_t sha[32];
    if (s->bad_sha)
        fx_sha256("other bytes", 11, sha);
    else
        fx_sha256(body, strlen(body), sha);
    enq.queue_id = (char *)s->id;
    enq.sender = (char *)(s->sender ? s->sender : "");
    enq.n_rcpts = n;
    enq.rcpts = rcpts;
    enq.body.data = (uint8_t *)body;
    enq.body.len = strlen(body);
    enq.expires_at_ms = s->expires;
    enq.is_dsn = s->is_dsn;
    if (!s->no_sha) {
        enq.body_sha256.data = sha;
        enq.body_sha256.len = s->sha_len ? s->sha_len : 32;
    }
    enq.client_addr = (char *)(s->client_addr ? s->client_addr : "");
    enq.helo = (char *)(s->helo ? s->helo : "");
    enq.accepted_by = s->accepted_by;
    enq.body_8bit = s->body_8bit;
    enq.smtputf8 = s->smtputf8;
    enq.requiretls = s->requiretls;
    enq.tls_optional = s->tls_optional;
    enq.ret = s->ret;
    enq.envid = (char *)(s->envid ? s->envid : "");
    enq.n_notify = s->n_notify;
    enq.notify = (uint32_t *)s->notify;
    enq.n_orcpt = s->n_orcpt;
    enq.orcpt = (char **)s->orcpt;
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &enq;
    return fx_pack(&e, ts, len);
}

/* fx_pack_lease - a one-item Lease entry from a spec. */
uint8_t *fx_pack_lease(uint64_t ts, const struct fx_lease *s, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Lease l = HAMR__LEASE__INIT;
    Hamr__LeaseItem it = HAMR__LEASE_ITEM__INIT;
    Hamr__LeaseItem *items[1] = {&it};
    uint32_t idx[FX_MAX];
    memcpy(idx, s->idx, sizeof(idx));
    it.queue_id = (char *)s->id;
    it.n_rcpt_indexes = s->n;
    it.rcpt_indexes = idx;
    it.lease_id = s->lease_id;
    it.destination = (char *)(s->dest ? s->dest : "");
    l.node_id = s->node;
    l.term = s->term;
    l.expires_at_ms = s->expires;
    l.boot_id = (char *)(s->boot ? s->boot : "");
    l.n_items = 1;
    l.items = items;
    e.cmd_case = HAMR__ENTRY__CMD_LEASE;
    e.lease = &l;
    return fx_pack(&e, ts, len);
}

/* fx_pack_outcome - an Outcome entry from a spec. */
uint8_t *fx_pack_outcome(uint64_t ts, const struct fx_outcome *s, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Outcome o = HAMR__OUTCOME__INIT;
    Hamr__RcptResult rr[FX_MAX];
    Hamr__RcptResult *rrp[FX_MAX];
    for (size_t i = 0; i < s->n && i < FX_MAX; i++) {
        Hamr__RcptResult init = HAMR__RCPT_RESULT__INIT;
        rr[i] = init;
        rr[i].rcpt_index = s->res[i].idx;
        rr[i].status = s->res[i].status;
        rr[i].smtp_code = s->res[i].code;
        rr[i].diagnostic = (char *)(s->res[i].diag ? s->res[i].diag : "");
        rr[i].dsn_passed = s->res[i].dsn_passed;
        rrp[i] = &rr[i];
    }
    o.queue_id = (char *)s->id;
    o.lease_id = s->lease_id;
    o.n_results = s->n;
    o.results = rrp;
    o.next_attempt_ms = s->next_ms;
    o.reporter = (char *)(s->reporter ? s->reporter : FX_REPORTER);
    o.dsn_expires_at_ms = s->dsn_expires ? s->dsn_expires : ts + FX_DSN_TTL;
    o.remote = (char *)(s->remote ? s->remote : "");
    o.delay_warning_ms = s->delay_warning_ms;
    o.node_id = s->node;
    e.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
    e.outcome = &o;
    return fx_pack(&e, ts, len);
}

/* fx_pack_admin - an Admin entry with fixed reporter and DSN expiry. */
uint8_t *fx_pack_admin(uint64_t ts, Hamr__Admin__Op op, const char *id, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Admin a = HAMR__ADMIN__INIT;
    a.op = op;
    a.queue_id = (char *)id;
    a.reporter = (char *)FX_REPORTER;
    a.dsn_expires_at_ms = ts + FX_DSN_TTL;
    e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    e.admin = &a;
    return fx_pack(&e, ts, len);
}

/* fx_level_pack - a ClusterLevel entry. */
uint8_t *fx_level_pack(uint64_t ts, uint32_t level, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__ClusterLevel cl = HAMR__CLUSTER_LEVEL__INIT;
    cl.level = level;
    e.cmd_case = HAMR__ENTRY__CMD_CLUSTER_LEVEL;
    e.cluster_level = &cl;
    return fx_pack(&e, ts, len);
}

/* fx_rng_next - xorshift64*, seeded: the same sequence on every run. */
uint64_t fx_rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ull;
}

/* fx_random_entries - a mix of every entry kind over a small id space. */
void fx_random_entries(uint64_t seed, struct fx_bytes *out)
{
    uint64_t s = seed;
    uint64_t ts = FX_T0;
    const char *const senders[] = {"a@x.test", "", "b@y.test"};
    const char *const diags[] = {"5.1.1 unknown", "4.2.2 full", "", "oops\r\nX: y"};
    for (int i = 0; i < FX_RANDOM_OPS; i++) {
        /* About 5 min apart on average: 400 entries span the done-set TTL. */
        ts += fx_rng_next(&s) % (10 * FX_MIN);
        char id[16];
        snprintf(id, sizeof(id), "R%u", (unsigned)(fx_rng_next(&s) % FX_RANDOM_IDS));
        unsigned kind = (unsigned)(fx_rng_next(&s) % 10);
        if (kind < 3) {
            char body[64];
            snprintf(body, sizeof(body), "Subject: %s\r\n\r\nbody %d\r\n", id, i);
            struct fx_enq e = {.id = id,
                               .sender = senders[fx_rng_next(&s) % 3],
                               .rcpts = {"r0@a.test", "r1@b.test", "r2@a.test"},
                               .body = body,
                               .expires = ts + 60 * FX_MIN};
            if (fx_rng_next(&s) % 4 == 0)
                e.rcpts[2] = NULL;
            out[i].buf = fx_pack_enqueue(ts, &e, &out[i].len);
        } else if (kind < 5) {
            struct fx_lease l = {.node = 1 + fx_rng_next(&s) % 3,
                                 .term = 1 + (uint64_t)i / 100,
                                 .expires = ts + (fx_rng_next(&s) % 10) * FX_MIN,
                                 .boot = (fx_rng_next(&s) % 2) ? "b1" : "b2",
                                 .id = id,
                                 .idx = {0, 1, 2},
                                 .n = 1 + fx_rng_next(&s) % 3,
                                 .lease_id = 1 + fx_rng_next(&s) % 8,
                                 .dest = "d"};
            out[i].buf = fx_pack_lease(ts, &l, &out[i].len);
        } else if (kind < 8) {
            struct fx_outcome o = {.id = id,
                                   .lease_id = fx_rng_next(&s) % 9,
                                   .n = 1 + fx_rng_next(&s) % 2,
                                   .next_ms = ts + 5 * FX_MIN,
                                   .remote = "[192.0.2.1]:25"};
            o.res[0].idx = 0;
            o.res[1].idx = 1 + fx_rng_next(&s) % 2;
            for (size_t k = 0; k < o.n; k++) {
                o.res[k].status = (Hamr__RcptResult__Status)(fx_rng_next(&s) % 4);
                o.res[k].code = 400 + 100 * (fx_rng_next(&s) % 2) + 50;
                o.res[k].diag = diags[fx_rng_next(&s) % 4];
            }
            out[i].buf = fx_pack_outcome(ts, &o, &out[i].len);
        } else {
            Hamr__Admin__Op op = (Hamr__Admin__Op)(fx_rng_next(&s) % 5);
            out[i].buf = fx_pack_admin(ts, op, fx_rng_next(&s) % 5 == 0 ? "" : id, &out[i].len);
        }
    }
}

/* fx_apply - apply and free framed bytes. */
struct queue_apply_result fx_apply(struct queue *q, uint8_t *buf, size_t len)
{
    struct queue_apply_result res;
    int rv = queue_apply(q, buf, len, &res);
    free(buf);
    assert_int_equal(rv, 0);
    return res;
}

/* fx_enqueue - pack and apply an Enqueue. */
struct queue_apply_result fx_enqueue(struct queue *q, uint64_t ts, const struct fx_enq *s)
{
    size_t len;
    uint8_t *b = fx_pack_enqueue(ts, s, &len);
    return fx_apply(q, b, len);
}

/* fx_lease - pack and apply a Lease. */
struct queue_apply_result fx_lease(struct queue *q, uint64_t ts, const struct fx_lease *s)
{
    size_t len;
    uint8_t *b = fx_pack_lease(ts, s, &len);
    return fx_apply(q, b, len);
}

/* fx_outcome - pack and apply an Outcome. */
struct queue_apply_result fx_outcome(struct queue *q, uint64_t ts, const struct fx_outcome *s)
{
    size_t len;
    uint8_t *b = fx_pack_outcome(ts, s, &len);
    return fx_apply(q, b, len);
}

/* fx_admin - pack and apply an Admin. */
struct queue_apply_result fx_admin(struct queue *q, uint64_t ts, Hamr__Admin__Op op, const char *id)
{
    size_t len;
    uint8_t *b = fx_pack_admin(ts, op, id, &len);
    return fx_apply(q, b, len);
}

/* fx_level - pack and apply a ClusterLevel. */
struct queue_apply_result fx_level(struct queue *q, uint64_t ts, uint32_t level)
{
    size_t len;
    uint8_t *b = fx_level_pack(ts, level, &len);
    return fx_apply(q, b, len);
}

/* fx_rcpt - a recipient of a queued message. */
const struct queue_rcpt *fx_rcpt(const struct queue *q, const char *id, size_t i)
{
    const struct queue_msg *m = queue_find(q, id);
    assert_non_null(m);
    assert_true(i < m->n_rcpts);
    return &m->rcpts[i];
}

/* fx_count_dsn_cb - count DSNs. */
static int fx_count_dsn_cb(void *arg, const struct queue_msg *m)
{
    size_t *n = arg;
    *n += m->is_dsn;
    return 0;
}

/* fx_count_dsns - count queued DSNs. */
size_t fx_count_dsns(const struct queue *q)
{
    size_t n = 0;
    queue_foreach(q, fx_count_dsn_cb, &n);
    return n;
}

/* fx_snapshot_roundtrip - snapshot then restore into a new queue. */
struct queue *fx_snapshot_roundtrip(const struct queue *q)
{
    uint8_t *snap = NULL;
    size_t len = 0;
    assert_int_equal(queue_snapshot(q, NULL, &snap, &len), 0);
    struct queue *r = queue_new();
    assert_non_null(r);
    assert_int_equal(queue_restore(r, snap, len), 0);
    free(snap);
    return r;
}

/* fx_list - messages of a queue in order, for comparison. */
struct fx_list {
    const struct queue_msg *m[256];
    size_t n;
};

/* fx_list_cb - collect a message. */
static int fx_list_cb(void *arg, const struct queue_msg *m)
{
    struct fx_list *l = arg;
    assert_true(l->n < 256);
    l->m[l->n++] = m;
    return 0;
}

/* fx_str_eq - both NULL, or equal strings. */
static void fx_str_eq(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

/* fx_assert_same_msgs - compare two queues message by message. */
void fx_assert_same_msgs(const struct queue *a, const struct queue *b)
{
    struct fx_list la = {.n = 0}, lb = {.n = 0};
    queue_foreach(a, fx_list_cb, &la);
    queue_foreach(b, fx_list_cb, &lb);
    assert_int_equal(la.n, lb.n);
    for (size_t i = 0; i < la.n; i++) {
        const struct queue_msg *x = la.m[i], *y = lb.m[i];
        assert_string_equal(x->id, y->id);
        assert_ptr_equal(queue_find(b, x->id), y);
        assert_string_equal(x->sender, y->sender);
        assert_int_equal(x->n_rcpts, y->n_rcpts);
        assert_int_equal(x->body_len, y->body_len);
        if (x->body_len)
            assert_memory_equal(x->body, y->body, x->body_len);
        assert_int_equal(x->body_8bit, y->body_8bit);
        assert_int_equal(x->is_dsn, y->is_dsn);
        assert_int_equal(x->held, y->held);
        assert_int_equal(x->received_at_ms, y->received_at_ms);
        assert_int_equal(x->expires_at_ms, y->expires_at_ms);
        assert_string_equal(x->origin->client_addr, y->origin->client_addr);
        assert_string_equal(x->origin->helo, y->origin->helo);
        assert_int_equal(x->origin->accepted_by, y->origin->accepted_by);
        assert_int_equal(x->dsn_count, y->dsn_count);
        for (size_t k = 0; k < x->n_rcpts; k++) {
            const struct queue_rcpt *r = &x->rcpts[k], *s = &y->rcpts[k];
            assert_string_equal(r->addr, s->addr);
            assert_int_equal(r->state, s->state);
            assert_int_equal(r->attempts, s->attempts);
            assert_int_equal(r->next_attempt_ms, s->next_attempt_ms);
            fx_str_eq(queue_rcpt_tried(r)->error, queue_rcpt_tried(s)->error);
            assert_int_equal(queue_rcpt_lease(r)->id, queue_rcpt_lease(s)->id);
            assert_int_equal(queue_rcpt_lease(r)->node, queue_rcpt_lease(s)->node);
            assert_int_equal(queue_rcpt_lease(r)->term, queue_rcpt_lease(s)->term);
            assert_int_equal(queue_rcpt_lease(r)->expires_ms, queue_rcpt_lease(s)->expires_ms);
            fx_str_eq(queue_rcpt_lease(r)->boot_id, queue_rcpt_lease(s)->boot_id);
            fx_str_eq(queue_rcpt_lease(r)->dest, queue_rcpt_lease(s)->dest);
        }
    }
}
