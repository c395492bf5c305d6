/*
 * test_queue_entry.c - the entry encoders (queue/queue_entry.h): each kind,
 * applied through queue_apply, gives the state its arguments describe; the
 * bytes are those of the same entry built by hand; an Enqueue whose body
 * changed after encoding is refused by the SHA-256 check; the caller's
 * allocator holds the packed entry; and a failed allocation returns
 * HAMR_ENOMEM having leaked nothing (the sanitizer build checks leaks).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue_fixture.h"

#define T0 1700000000000ull
#define MIN (60ull * 1000)
#define BODY "Subject: hi\r\n\r\nBODY-MARKER\r\n"

static const char *const rcpts[] = {"r0@one.test", "r1@two.test", "r2@one.test"};

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

/* apply - apply a packed entry (freed here), assert it decoded, return the result. */
static struct queue_apply_result apply(struct queue *q, int rv, uint8_t *buf, size_t len)
{
    assert_int_equal(rv, 0);
    assert_int_equal(len % PROTO_ENTRY_ALIGN, 0);
    return fx_apply(q, buf, len);
}

/* msg_args - "M" from a@example.org to the three rcpts, with every field set. */
static struct queue_entry_enqueue_args msg_args(void)
{
    return (struct queue_entry_enqueue_args){
        .queue_id = "M",
        .sender = "a@example.org",
        .rcpts = rcpts,
        .n_rcpts = 3,
        .body = (const uint8_t *)BODY,
        .body_len = strlen(BODY),
        .body_8bit = true,
        .expires_at_ms = T0 + 5 * MIN,
        .client_addr = "192.0.2.1",
        .helo = "client.test",
        .accepted_by = 7,
    };
}

/* enqueue_m - apply msg_args at T0. */
static void enqueue_m(struct queue *q)
{
    struct queue_entry_enqueue_args a = msg_args();
    uint8_t *b;
    size_t len;
    int rv = queue_entry_enqueue(&a, T0, NULL, &b, &len);
    struct queue_apply_result res = apply(q, rv, b, len);
    assert_int_equal(res.status, 0);
    assert_false(res.duplicate);
}

/* lease_m - lease recipients 0 and 2 of M under lease 11 at T0 + 1. */
static void lease_m(struct queue *q)
{
    static const uint32_t idx[] = {0, 2};
    struct queue_entry_lease_item item = {
        .queue_id = "M", .rcpt_indexes = idx, .n_rcpts = 2, .lease_id = 11, .destination = "one"};
    struct queue_entry_lease_args a = {.node_id = 3,
                                       .term = 4,
                                       .expires_at_ms = T0 + 2 * MIN,
                                       .boot_id = "boot-a",
                                       .items = &item,
                                       .n_items = 1};
    uint8_t *b;
    size_t len;
    int rv = queue_entry_lease(&a, T0 + 1, NULL, &b, &len);
    assert_int_equal(apply(q, rv, b, len).status, 0);
}

static void test_enqueue(void **state)
{
    struct queue *q = *state;
    enqueue_m(q);
    const struct queue_msg *m = queue_find(q, "M");
    assert_non_null(m);
    assert_string_equal(m->sender, "a@example.org");
    assert_int_equal(m->n_rcpts, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(m->rcpts[i].addr, rcpts[i]);
        assert_int_equal(m->rcpts[i].state, QUEUE_RCPT_PENDING);
        assert_int_equal(m->rcpts[i].next_attempt_ms, T0);
    }
    assert_int_equal(m->body_len, strlen(BODY));
    assert_memory_equal(queue_msg_body(m), BODY, strlen(BODY));
    assert_true(m->body_8bit);
    assert_false(m->is_dsn);
    assert_int_equal(m->received_at_ms, T0);
    assert_int_equal(m->expires_at_ms, T0 + 5 * MIN);
    assert_string_equal(m->origin->client_addr, "192.0.2.1");
    assert_string_equal(m->origin->helo, "client.test");
    assert_int_equal(m->origin->accepted_by, 7);
}

/* The encoder writes the bytes of the same entry built field by field. */
static void test_enqueue_same_bytes(void **state)
{
    (void)state;
    struct queue_entry_enqueue_args a = msg_args();
    struct fx_enq s = {.id = "M",
                       .sender = "a@example.org",
                       .rcpts = {rcpts[0], rcpts[1], rcpts[2]},
                       .body = BODY,
                       .expires = T0 + 5 * MIN,
                       .client_addr = "192.0.2.1",
                       .helo = "client.test",
                       .accepted_by = 7,
                       .body_8bit = true};
    uint8_t *got, *want;
    size_t got_len, want_len;
    assert_int_equal(queue_entry_enqueue(&a, T0, NULL, &got, &got_len), 0);
    want = fx_pack_enqueue(T0, &s, &want_len);
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
    free(got);
    free(want);
}

/* An empty body (NULL, 0) and a DSN: the SHA-256 of no bytes is accepted. */
static void test_enqueue_empty_body_dsn(void **state)
{
    struct queue *q = *state;
    struct queue_entry_enqueue_args a = {
        .queue_id = "D-B0", .rcpts = rcpts, .n_rcpts = 1, .is_dsn = true};
    uint8_t *b;
    size_t len;
    int rv = queue_entry_enqueue(&a, T0, NULL, &b, &len);
    assert_int_equal(apply(q, rv, b, len).status, 0);
    const struct queue_msg *m = queue_find(q, "D-B0");
    assert_non_null(m);
    assert_true(m->is_dsn);
    assert_string_equal(m->sender, "");
    assert_int_equal(m->body_len, 0);
}

/* A body changed after encoding no longer matches body_sha256: refused, nothing queued. */
static void test_enqueue_body_changed(void **state)
{
    struct queue *q = *state;
    struct queue_entry_enqueue_args a = msg_args();
    uint8_t *b;
    size_t len;
    assert_int_equal(queue_entry_enqueue(&a, T0, NULL, &b, &len), 0);
    uint8_t *p = memmem(b, len, "BODY-MARKER", 11);
    assert_non_null(p);
    p[0] = 'X';
    struct queue_apply_result res = fx_apply(q, b, len);
    assert_int_equal(res.status, HAMR_ECORRUPT);
    assert_null(queue_find(q, "M"));
    assert_false(queue_contains(q, "M"));
}

static void test_lease(void **state)
{
    struct queue *q = *state;
    enqueue_m(q);
    lease_m(q);
    for (size_t i = 0; i < 3; i++) {
        const struct queue_rcpt *r = fx_rcpt(q, "M", i);
        if (i == 1) {
            assert_int_equal(r->state, QUEUE_RCPT_PENDING);
            continue;
        }
        assert_int_equal(r->state, QUEUE_RCPT_LEASED);
        assert_int_equal(queue_rcpt_lease(r)->id, 11);
        assert_int_equal(queue_rcpt_lease(r)->node, 3);
        assert_int_equal(queue_rcpt_lease(r)->term, 4);
        assert_int_equal(queue_rcpt_lease(r)->expires_ms, T0 + 2 * MIN);
        assert_string_equal(queue_rcpt_lease(r)->boot_id, "boot-a");
        assert_string_equal(queue_rcpt_lease(r)->dest, "one");
    }
}

/* Delivered, deferred and bounced under the lease, at cluster level 2 (TLS fields kept). */
static void test_outcome(void **state)
{
    struct queue *q = *state;
    queue_set_format_max(q, QUEUE_LEVEL_TLS);
    uint8_t *b;
    size_t len;
    int rv = queue_entry_cluster_level(QUEUE_LEVEL_TLS, T0, NULL, &b, &len);
    assert_int_equal(apply(q, rv, b, len).status, 0);
    enqueue_m(q);
    lease_m(q);
    /* Recipient 1 is not under lease 11: its result is fenced off. */
    const struct queue_entry_result results[] = {
        {.rcpt_index = 0,
         .status = QUEUE_ENTRY_DEFERRED,
         .smtp_code = 451,
         .diagnostic = "try later",
         .tls_policy = "may",
         .tls = "TLSv1.3"},
        {.rcpt_index = 2, .status = QUEUE_ENTRY_BOUNCED, .smtp_code = 550, .diagnostic = "no"},
        {.rcpt_index = 1, .status = QUEUE_ENTRY_DELIVERED},
    };
    struct queue_entry_outcome_args a = {.queue_id = "M",
                                         .lease_id = 11,
                                         .results = results,
                                         .n_results = 3,
                                         .next_attempt_ms = T0 + 3 * MIN,
                                         .reporter = "mx.hamr.test",
                                         .dsn_expires_at_ms = T0 + 9 * MIN,
                                         .remote = "mx.one.test"};
    rv = queue_entry_outcome(&a, T0 + 2, NULL, &b, &len);
    struct queue_apply_result res = apply(q, rv, b, len);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.dsn_generated, 1);
    const struct queue_rcpt *r0 = fx_rcpt(q, "M", 0);
    assert_int_equal(r0->state, QUEUE_RCPT_PENDING);
    assert_int_equal(r0->attempts, 1);
    assert_int_equal(r0->next_attempt_ms, T0 + 3 * MIN);
    assert_string_equal(queue_rcpt_tried(r0)->error, "451 try later");
    assert_string_equal(queue_rcpt_tried(r0)->tls_policy, "may");
    assert_string_equal(queue_rcpt_tried(r0)->tls, "TLSv1.3");
    assert_int_equal(fx_rcpt(q, "M", 1)->state, QUEUE_RCPT_PENDING);
    const struct queue_rcpt *r2 = fx_rcpt(q, "M", 2);
    assert_int_equal(r2->state, QUEUE_RCPT_BOUNCED);
    assert_string_equal(queue_rcpt_tried(r2)->error, "550 no");
    assert_null(queue_rcpt_tried(r2)->tls_policy);
    const struct queue_msg *dsn = queue_find(q, "M-B0");
    assert_non_null(dsn);
    assert_true(dsn->is_dsn);
    assert_int_equal(dsn->expires_at_ms, T0 + 9 * MIN);
    assert_string_equal(dsn->rcpts[0].addr, "a@example.org");
    assert_non_null(memmem(queue_msg_body(dsn), dsn->body_len, "mx.hamr.test", 12));
}

/* An Outcome with lease id 0 (expiry) for PENDING recipients; the message finishes. */
static void test_outcome_expire(void **state)
{
    struct queue *q = *state;
    enqueue_m(q);
    const struct queue_entry_result results[] = {
        {.rcpt_index = 0, .status = QUEUE_ENTRY_EXPIRED, .diagnostic = "expired"},
        {.rcpt_index = 1, .status = QUEUE_ENTRY_EXPIRED, .diagnostic = "expired"},
        {.rcpt_index = 2, .status = QUEUE_ENTRY_EXPIRED, .diagnostic = "expired"},
    };
    struct queue_entry_outcome_args a = {
        .queue_id = "M", .results = results, .n_results = 3, .reporter = "mx.hamr.test"};
    uint8_t *b;
    size_t len;
    int rv = queue_entry_outcome(&a, T0 + 6 * MIN, NULL, &b, &len);
    struct queue_apply_result res = apply(q, rv, b, len);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.finished, 1);
    assert_int_equal(res.dsn_generated, 1);
    assert_null(queue_find(q, "M"));
    assert_true(queue_contains(q, "M"));
}

/* Admin: each operation's effect on M, from a fresh queue. */
static void test_admin(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        enum queue_entry_admin_op op;
        const char *id;
        int want_status;
        bool want_held;
        bool want_gone;
        unsigned want_dsn;
    } cases[] = {
        {.label = "hold", .op = QUEUE_ENTRY_ADMIN_HOLD, .id = "M", .want_held = true},
        {.label = "release", .op = QUEUE_ENTRY_ADMIN_RELEASE, .id = "M"},
        {.label = "flush all", .op = QUEUE_ENTRY_ADMIN_FLUSH, .id = ""},
        {.label = "flush one", .op = QUEUE_ENTRY_ADMIN_FLUSH, .id = "M"},
        {.label = "delete", .op = QUEUE_ENTRY_ADMIN_DELETE, .id = "M", .want_gone = true},
        {.label = "bounce",
         .op = QUEUE_ENTRY_ADMIN_BOUNCE,
         .id = "M",
         .want_gone = true,
         .want_dsn = 1},
        {.label = "unknown id",
         .op = QUEUE_ENTRY_ADMIN_HOLD,
         .id = "nope",
         .want_status = HAMR_ENOTFOUND},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("case %s\n", cases[i].label);
        struct queue *q = queue_new();
        assert_non_null(q);
        struct queue_entry_enqueue_args a = msg_args();
        a.body = NULL;
        a.body_len = 0;
        uint8_t *b;
        size_t len;
        int rv = queue_entry_enqueue(&a, T0 + 10 * MIN, NULL, &b, &len);
        assert_int_equal(apply(q, rv, b, len).status, 0);
        if (cases[i].op == QUEUE_ENTRY_ADMIN_RELEASE) {
            rv = queue_entry_admin(QUEUE_ENTRY_ADMIN_HOLD, "M", NULL, 0, T0 + 10 * MIN, NULL, &b,
                                   &len);
            apply(q, rv, b, len);
            assert_true(queue_find(q, "M")->held);
        }
        rv = queue_entry_admin(cases[i].op, cases[i].id, "mx.hamr.test", T0 + 20 * MIN,
                               T0 + 11 * MIN, NULL, &b, &len);
        struct queue_apply_result res = apply(q, rv, b, len);
        assert_int_equal(res.status, cases[i].want_status);
        assert_int_equal(res.dsn_generated, cases[i].want_dsn);
        const struct queue_msg *m = queue_find(q, "M");
        if (cases[i].want_gone) {
            assert_null(m);
        } else {
            assert_non_null(m);
            assert_int_equal(m->held, cases[i].want_held);
            bool flushed = cases[i].op == QUEUE_ENTRY_ADMIN_FLUSH;
            assert_int_equal(m->rcpts[0].next_attempt_ms, flushed ? T0 + 11 * MIN : T0 + 10 * MIN);
        }
        if (cases[i].want_dsn)
            assert_int_equal(queue_find(q, "M-B0")->expires_at_ms, T0 + 20 * MIN);
        queue_free(q);
    }
}

static void test_node_info(void **state)
{
    struct queue *q = *state;
    struct queue_entry_node_info_args a = {.node_id = 2,
                                           .peer_address = "127.0.0.1:7001",
                                           .control_address = "127.0.0.1:7002",
                                           .version = "0.1.0",
                                           .format_version_max = 2,
                                           .draining = true};
    uint8_t *b;
    size_t len;
    int rv = queue_entry_node_info(&a, T0, NULL, &b, &len);
    assert_int_equal(apply(q, rv, b, len).status, 0);
    const struct queue_node *n = queue_node_find(q, 2);
    assert_non_null(n);
    assert_string_equal(n->peer_address, "127.0.0.1:7001");
    assert_string_equal(n->control_address, "127.0.0.1:7002");
    assert_string_equal(n->version, "0.1.0");
    assert_int_equal(n->format_version_max, 2);
    assert_true(n->draining);
}

/* ClusterLevel raises the level; one above this build's format is refused. */
static void test_cluster_level(void **state)
{
    struct queue *q = *state;
    queue_set_format_max(q, 2);
    uint8_t *b;
    size_t len;
    int rv = queue_entry_cluster_level(2, T0, NULL, &b, &len);
    assert_int_equal(apply(q, rv, b, len).status, 0);
    assert_int_equal(queue_cluster_level(q), 2);
    rv = queue_entry_cluster_level(3, T0, NULL, &b, &len);
    assert_int_equal(apply(q, rv, b, len).status, HAMR_EVERSION);
    assert_int_equal(queue_cluster_level(q), 2);
}

/* The entry is packed into the caller's allocator (as into raft's buffer on the leader). */
static size_t counted;
static void *counting_alloc(size_t n)
{
    counted++;
    return malloc(n);
}

static void test_allocator(void **state)
{
    struct queue *q = *state;
    struct queue_entry_enqueue_args a = msg_args();
    uint8_t *b;
    size_t len;
    counted = 0;
    int rv = queue_entry_enqueue(&a, T0, counting_alloc, &b, &len);
    assert_int_equal(counted, 1);
    assert_int_equal(apply(q, rv, b, len).status, 0);
}

/* encode - one encoder call, with the arguments of the tests above. */
static int encode(size_t kind, uint8_t **b, size_t *len)
{
    static const uint32_t idx[] = {0, 2};
    static const struct queue_entry_lease_item item = {
        .queue_id = "M", .rcpt_indexes = idx, .n_rcpts = 2, .lease_id = 11, .destination = "one"};
    static const struct queue_entry_result results[] = {
        {.rcpt_index = 0, .status = QUEUE_ENTRY_DELIVERED},
        {.rcpt_index = 2, .status = QUEUE_ENTRY_BOUNCED, .smtp_code = 550, .diagnostic = "no"},
    };
    struct queue_entry_enqueue_args enq = msg_args();
    struct queue_entry_lease_args lease = {
        .node_id = 3, .term = 4, .expires_at_ms = T0, .boot_id = "b", .items = &item, .n_items = 1};
    struct queue_entry_outcome_args oc = {
        .queue_id = "M", .lease_id = 11, .results = results, .n_results = 2, .reporter = "r"};
    struct queue_entry_node_info_args ni = {.node_id = 2, .peer_address = "a", .version = "v"};
    switch (kind) {
        case 0:
            return queue_entry_enqueue(&enq, T0, NULL, b, len);
        case 1:
            return queue_entry_lease(&lease, T0, NULL, b, len);
        case 2:
            return queue_entry_outcome(&oc, T0, NULL, b, len);
        case 3:
            return queue_entry_admin(QUEUE_ENTRY_ADMIN_BOUNCE, "M", "r", T0, T0, NULL, b, len);
        case 4:
            return queue_entry_node_info(&ni, T0, NULL, b, len);
        default:
            return queue_entry_cluster_level(2, T0, NULL, b, len);
    }
}

/* Every allocation of every encoder fails in turn: HAMR_ENOMEM, nothing leaked, no output. */
static void test_alloc_failures(void **state)
{
    (void)state;
    static const char *const labels[] = {"enqueue", "lease",     "outcome",
                                         "admin",   "node info", "cluster level"};
    for (size_t kind = 0; kind < 6; kind++) {
        print_message("case %s\n", labels[kind]);
        unsigned failures = 0;
        for (long n = 0;; n++) {
            assert_true(n < 100);
            uint8_t *b = NULL;
            size_t len = 0;
            fx_fail_after(n);
            int rv = encode(kind, &b, &len);
            bool failed = fx_fail_off();
            if (rv != 0) {
                assert_int_equal(rv, HAMR_ENOMEM);
                assert_null(b);
                failures++;
                continue;
            }
            assert_false(failed);
            assert_non_null(b);
            free(b);
            break;
        }
        /* Every encoder allocates at least the packed buffer. */
        assert_true(failures > 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_enqueue, setup, teardown),
        cmocka_unit_test(test_enqueue_same_bytes),
        cmocka_unit_test_setup_teardown(test_enqueue_empty_body_dsn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enqueue_body_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outcome, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outcome_expire, setup, teardown),
        cmocka_unit_test(test_admin),
        cmocka_unit_test_setup_teardown(test_node_info, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_level, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocator, setup, teardown),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
