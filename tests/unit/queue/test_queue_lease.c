/*
 * test_queue_lease.c - leases to any node (format 6, QUEUE_LEVEL_SPREAD):
 * LeaseRenew extends only the holder's live leases and never shortens one,
 * is refused below the level, and the lease hook tells the holder of what
 * it was granted and renewed, and every node of a lease that lapsed.
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
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue_fixture.h"

#define T0 1700000000000ull
#define SEC 1000ull
#define HOUR (3600ull * SEC)
#define DEFERRED HAMR__RCPT_RESULT__STATUS__DEFERRED
#define DELIVERED HAMR__RCPT_RESULT__STATUS__DELIVERED
#define EXPIRED HAMR__RCPT_RESULT__STATUS__EXPIRED

/* spread_queue - a queue at level with message M to a and b, both pending. */
static struct queue *spread_queue(uint32_t level)
{
    struct queue *q = queue_new();
    assert_non_null(q);
    assert_int_equal(fx_level(q, T0 - HOUR, level).status, 0);
    struct fx_enq e = {.id = "M",
                       .sender = "s@example.org",
                       .rcpts = {"a@example.net", "b@example.net"},
                       .expires = T0 + 100 * HOUR};
    fx_enqueue(q, T0, &e);
    return q;
}

/* lease_ab - lease both recipients of M to node under boot until T0 + 30 s. */
static struct queue_apply_result lease_ab(struct queue *q,
                                          uint64_t ts,
                                          uint64_t node,
                                          const char *boot,
                                          uint64_t lease_id)
{
    struct fx_lease l = {.node = node,
                         .term = 1,
                         .expires = ts + 30 * SEC,
                         .boot = boot,
                         .id = "M",
                         .idx = {0, 1},
                         .n = 2,
                         .lease_id = lease_id,
                         .dest = "[127.0.0.1]:25"};
    return fx_lease(q, ts, &l);
}

/* renew - apply a LeaseRenew of (M, lease_id) for node/boot; the apply result. */
static struct queue_apply_result renew(struct queue *q,
                                       uint64_t ts,
                                       uint64_t node,
                                       const char *boot,
                                       uint64_t lease_id,
                                       uint64_t until,
                                       uint64_t asked)
{
    struct queue_entry_renew_item it = {.queue_id = "M", .lease_id = lease_id};
    struct queue_entry_lease_renew_args a = {.node_id = node,
                                             .boot_id = boot,
                                             .expires_at_ms = until,
                                             .asked_mono_ms = asked,
                                             .items = &it,
                                             .n_items = 1};
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(queue_entry_lease_renew(&a, ts, NULL, &buf, &len), 0);
    return fx_apply(q, buf, len);
}

struct hook_log {
    int granted, renewed, lapsed, ended;
    uint64_t ended_node;
    uint64_t lease_id, expires, asked, old_lease, old_node, new_node;
    char id[64], dest[64], rcpt[64];
};

static void hook_granted(void *arg,
                         const char *id,
                         uint64_t lease_id,
                         const char *dest,
                         uint64_t expires)
{
    struct hook_log *h = arg;
    h->granted++;
    h->lease_id = lease_id;
    h->expires = expires;
    hamr_strlcpy(h->id, id, sizeof(h->id));
    hamr_strlcpy(h->dest, dest, sizeof(h->dest));
}

static void hook_renewed(void *arg,
                         const char *id,
                         uint64_t lease_id,
                         uint64_t expires,
                         uint64_t asked)
{
    struct hook_log *h = arg;
    h->renewed++;
    h->lease_id = lease_id;
    h->expires = expires;
    h->asked = asked;
    hamr_strlcpy(h->id, id, sizeof(h->id));
}

static void hook_ended(void *arg, uint64_t node)
{
    struct hook_log *h = arg;
    h->ended++;
    h->ended_node = node;
}

static void hook_lapsed(void *arg,
                        const char *id,
                        const char *rcpt,
                        uint64_t old_lease,
                        uint64_t old_node,
                        uint64_t new_lease,
                        uint64_t new_node)
{
    struct hook_log *h = arg;
    h->lapsed++;
    h->old_lease = old_lease;
    h->old_node = old_node;
    h->lease_id = new_lease;
    h->new_node = new_node;
    hamr_strlcpy(h->id, id, sizeof(h->id));
    hamr_strlcpy(h->rcpt, rcpt, sizeof(h->rcpt));
}

/* hooked - set a hook for node 2, boot "b2", logging into h. */
static void hooked(struct queue *q, struct hook_log *h)
{
    memset(h, 0, sizeof(*h));
    struct queue_lease_hook hk = {.arg = h,
                                  .node_id = 2,
                                  .boot_id = "b2",
                                  .granted = hook_granted,
                                  .renewed = hook_renewed,
                                  .ended = hook_ended,
                                  .lapsed = hook_lapsed};
    queue_set_lease_hook(q, &hk);
}

/* test_renew_extends - the holder's live lease runs to the new end; the digest follows. */
static void test_renew_extends(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    lease_ab(q, T0 + SEC, 2, "b2", 7);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->expires_ms, T0 + 31 * SEC);
    assert_int_equal(renew(q, T0 + 10 * SEC, 2, "b2", 7, T0 + 40 * SEC, 555).status, 0);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->expires_ms, T0 + 40 * SEC);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 1))->expires_ms, T0 + 40 * SEC);
    /* Past the old end the recipients are not leasable by another node. */
    lease_ab(q, T0 + 35 * SEC, 3, "b3", 8);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->id, 7);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->node, 2);
    /* The renewal is in the snapshot. */
    struct queue *r = fx_snapshot_roundtrip(q);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(r, "M", 1))->expires_ms, T0 + 40 * SEC);
    queue_free(r);
    /* Past the renewed end they are. */
    lease_ab(q, T0 + 41 * SEC, 3, "b3", 8);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->id, 8);
    queue_free(q);
}

/* test_renew_never_shortens - an older renewal applied late moves no end back. */
static void test_renew_never_shortens(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    lease_ab(q, T0 + SEC, 2, "b2", 7);
    renew(q, T0 + 2 * SEC, 2, "b2", 7, T0 + 50 * SEC, 1);
    renew(q, T0 + 3 * SEC, 2, "b2", 7, T0 + 20 * SEC, 2);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->expires_ms, T0 + 50 * SEC);
    queue_free(q);
}

/* test_renew_not_holder - another node, another boot, or a replaced lease: nothing moves. */
static void test_renew_not_holder(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    lease_ab(q, T0 + SEC, 2, "b2", 7);
    renew(q, T0 + 2 * SEC, 3, "b2", 7, T0 + HOUR, 1);     /* not the holder */
    renew(q, T0 + 2 * SEC, 2, "b2-old", 7, T0 + HOUR, 1); /* an older process */
    renew(q, T0 + 2 * SEC, 2, "b2", 6, T0 + HOUR, 1);     /* another lease */
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->expires_ms, T0 + 31 * SEC);
    /* A delivered recipient is not LEASED any more: the renewal leaves it alone. */
    struct fx_outcome o = {
        .id = "M", .lease_id = 7, .res = {{.idx = 0, .status = DELIVERED}}, .n = 1, .node = 2};
    fx_outcome(q, T0 + 3 * SEC, &o);
    renew(q, T0 + 4 * SEC, 2, "b2", 7, T0 + HOUR, 1);
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_DELIVERED);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 1))->expires_ms, T0 + HOUR);
    queue_free(q);
}

/*
 * test_outcome_only_from_holder - from QUEUE_LEVEL_SPREAD a result under a
 * lease applies only when the holder reports it; below it, as before.
 */
static void test_outcome_only_from_holder(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    lease_ab(q, T0 + SEC, 2, "b2", 7);
    struct fx_outcome o = {
        .id = "M",
        .lease_id = 7,
        .res = {{.idx = 0, .status = DELIVERED}, {.idx = 1, .status = DELIVERED}},
        .n = 2,
        .node = 3};
    fx_outcome(q, T0 + 2 * SEC, &o); /* node 3 does not hold lease 7 */
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_LEASED);
    assert_int_equal(fx_rcpt(q, "M", 1)->state, QUEUE_RCPT_LEASED);
    o.node = 0; /* nobody named */
    fx_outcome(q, T0 + 3 * SEC, &o);
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_LEASED);
    o.node = 2;
    fx_outcome(q, T0 + 4 * SEC, &o);
    assert_null(queue_find(q, "M")); /* both delivered: the message is done */
    queue_free(q);
    /* Below the level the node is not looked at, as an older build does. */
    q = spread_queue(QUEUE_LEVEL_EXT);
    lease_ab(q, T0 + SEC, 2, "b2", 7);
    o.node = 3;
    fx_outcome(q, T0 + 2 * SEC, &o);
    assert_null(queue_find(q, "M"));
    queue_free(q);
}

/* test_renew_below_level - below QUEUE_LEVEL_SPREAD the kind is refused, as an older build would.
 */
static void test_renew_below_level(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_EXT);
    lease_ab(q, T0 + SEC, 2, "b2", 7);
    assert_int_equal(renew(q, T0 + 2 * SEC, 2, "b2", 7, T0 + HOUR, 1).status, HAMR_EVERSION);
    assert_int_equal(queue_rcpt_lease(fx_rcpt(q, "M", 0))->expires_ms, T0 + 31 * SEC);
    /* A build of format 5 does not know the kind at all: it stops at the entry. */
    queue_set_format_max(q, QUEUE_LEVEL_EXT);
    struct queue_entry_renew_item it = {.queue_id = "M", .lease_id = 7};
    struct queue_entry_lease_renew_args a = {
        .node_id = 2, .boot_id = "b2", .expires_at_ms = T0 + HOUR, .items = &it, .n_items = 1};
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(queue_entry_lease_renew(&a, T0 + 3 * SEC, NULL, &buf, &len), 0);
    struct queue_apply_result res;
    assert_int_equal(queue_apply(q, buf, len, &res), HAMR_EVERSION);
    free(buf);
    queue_free(q);
}

/* test_hook_granted_renewed - the holder hears of its own leases only. */
static void test_hook_granted_renewed(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    struct hook_log h;
    hooked(q, &h);
    lease_ab(q, T0 + SEC, 3, "b3", 5); /* another node's */
    assert_int_equal(h.granted, 0);
    struct fx_outcome o = {.id = "M",
                           .lease_id = 5,
                           .res = {{.idx = 0, .status = DEFERRED}, {.idx = 1, .status = DEFERRED}},
                           .n = 2,
                           .next_ms = T0 + 2 * SEC,
                           .node = 3};
    fx_outcome(q, T0 + 2 * SEC, &o);
    lease_ab(q, T0 + 3 * SEC, 2, "b1", 6); /* our node, an older process */
    assert_int_equal(h.granted, 0);
    o.lease_id = 6;
    o.node = 2;
    fx_outcome(q, T0 + 4 * SEC, &o);
    lease_ab(q, T0 + 5 * SEC, 2, "b2", 7);
    assert_int_equal(h.granted, 1);
    assert_int_equal(h.lease_id, 7);
    assert_int_equal(h.expires, T0 + 35 * SEC);
    assert_string_equal(h.id, "M");
    assert_string_equal(h.dest, "[127.0.0.1]:25");
    /* Applying the same Lease again grants nothing new. */
    lease_ab(q, T0 + 6 * SEC, 2, "b2", 7);
    assert_int_equal(h.granted, 1);
    renew(q, T0 + 10 * SEC, 2, "b2", 7, T0 + 50 * SEC, 4242);
    assert_int_equal(h.renewed, 1);
    assert_int_equal(h.expires, T0 + 50 * SEC);
    assert_int_equal(h.asked, 4242);
    renew(q, T0 + 10 * SEC, 2, "b2", 99, T0 + 60 * SEC, 4243); /* not a lease of ours */
    assert_int_equal(h.renewed, 1);
    assert_int_equal(h.lapsed, 0);
    queue_free(q);
}

/* test_hook_ended - an Outcome that ends a lease tells every node whose it was, once. */
static void test_hook_ended(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    struct hook_log h;
    hooked(q, &h);
    lease_ab(q, T0 + SEC, 3, "b3", 5);
    struct fx_outcome o = {.id = "M",
                           .lease_id = 5,
                           .res = {{.idx = 0, .status = DEFERRED}, {.idx = 1, .status = DEFERRED}},
                           .n = 2,
                           .next_ms = T0 + 2 * SEC,
                           .node = 3};
    fx_outcome(q, T0 + 2 * SEC, &o);
    assert_int_equal(h.ended, 1);
    assert_int_equal(h.ended_node, 3);
    fx_outcome(q, T0 + 3 * SEC, &o); /* again: the lease is over, nothing ends */
    assert_int_equal(h.ended, 1);
    queue_free(q);
}

/* test_hook_kept_by_restore - a snapshot installed (or loaded at start) keeps the node's hook. */
static void test_hook_kept_by_restore(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    struct hook_log h;
    hooked(q, &h);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(queue_snapshot(q, NULL, &buf, &len), 0);
    assert_int_equal(queue_restore(q, buf, len), 0);
    free(buf);
    lease_ab(q, T0 + SEC, 2, "b2", 7);
    assert_int_equal(h.granted, 1);
    assert_int_equal(h.lease_id, 7);
    queue_free(q);
}

/* assert_lapsed - h heard both recipients a and b taken from old_lease of old_node. */
static void assert_lapsed(const struct hook_log *h,
                          uint64_t old_lease,
                          uint64_t old_node,
                          uint64_t new_lease,
                          uint64_t new_node)
{
    assert_int_equal(h->lapsed, 2); /* a and b */
    assert_int_equal(h->old_lease, old_lease);
    assert_int_equal(h->old_node, old_node);
    assert_int_equal(h->lease_id, new_lease);
    assert_int_equal(h->new_node, new_node);
}

/* test_hook_lapsed - a lease run out without an Outcome and taken over: every node hears. */
static void test_hook_lapsed(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    struct hook_log h;
    hooked(q, &h);
    lease_ab(q, T0 + SEC, 3, "b3", 5);
    lease_ab(q, T0 + 20 * SEC, 1, "b1", 6); /* before the end: not taken */
    assert_int_equal(h.lapsed, 0);
    lease_ab(q, T0 + 40 * SEC, 1, "b1", 6);
    assert_lapsed(&h, 5, 3, 6, 1);
    assert_string_equal(h.rcpt, "b@example.net");
    queue_free(q);
}

/*
 * test_hook_lapsed_expired - a lease run out and then ended by an expiry
 * without a lease (the message's lifetime passed): every node hears, with
 * new lease 0, since the holder may have delivered what the sender is told
 * failed. A live lease is not ended by it, and nothing is heard.
 */
static void test_hook_lapsed_expired(void **state)
{
    (void)state;
    struct queue *q = spread_queue(QUEUE_LEVEL_SPREAD);
    struct hook_log h;
    hooked(q, &h);
    lease_ab(q, T0 + SEC, 3, "b3", 5); /* ends at T0 + 31 s */
    struct fx_outcome o = {.id = "M",
                           .res = {{.idx = 0, .status = EXPIRED}, {.idx = 1, .status = EXPIRED}},
                           .n = 2,
                           .node = 1};
    fx_outcome(q, T0 + 20 * SEC, &o); /* lease 5 still live: not for an expiry */
    assert_int_equal(fx_rcpt(q, "M", 0)->state, QUEUE_RCPT_LEASED);
    assert_int_equal(h.lapsed, 0);
    fx_outcome(q, T0 + 40 * SEC, &o);
    assert_lapsed(&h, 5, 3, 0, 0);
    assert_null(queue_find(q, "M")); /* both expired: the message is done */
    queue_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_renew_extends),
        cmocka_unit_test(test_renew_never_shortens),
        cmocka_unit_test(test_renew_not_holder),
        cmocka_unit_test(test_renew_below_level),
        cmocka_unit_test(test_hook_granted_renewed),
        cmocka_unit_test(test_hook_lapsed),
        cmocka_unit_test(test_hook_lapsed_expired),
        cmocka_unit_test(test_outcome_only_from_holder),
        cmocka_unit_test(test_hook_kept_by_restore),
        cmocka_unit_test(test_hook_ended),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
