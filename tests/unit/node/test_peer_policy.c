/*
 * test_peer_policy.c - what a leader takes from another node over the peer
 * channel (node/peer_policy.c): each kind of entry, from the node it names
 * and from another, against a real queue holding a leased message; and what
 * any node may read (a body fetch).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/err.h"
#include "proto/hamr.pb-c.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "node/peer_policy.h"

static const struct peer_policy_limits lim = {
    .self = 1,
    .message_size_limit = 1000,
    .recipient_limit = 3,
};

static char *rcpts2[] = {"a@example.com", "b@example.com"};

/* apply - pack-and-apply helper: one encoded entry into q. */
static void apply(struct queue *q, uint8_t *buf, size_t len)
{
    struct queue_apply_result res;
    assert_int_equal(queue_apply(q, buf, len, &res), 0);
    assert_int_equal(res.status, 0);
    free(buf);
}

/* queue_with_lease - Q1 with two recipients, recipient 0 leased to node 2 under lease 77. */
static struct queue *queue_with_lease(void)
{
    struct queue *q = queue_new();
    assert_non_null(q);
    const char *rc[] = {"a@example.com", "b@example.com"};
    struct queue_entry_enqueue_args m = {
        .queue_id = "Q1",
        .sender = "s@example.org",
        .rcpts = rc,
        .n_rcpts = 2,
        .body = (const uint8_t *)"x\r\n",
        .body_len = 3,
        .expires_at_ms = 1000000,
        .accepted_by = 2,
    };
    uint8_t *buf;
    size_t len;
    assert_int_equal(queue_entry_enqueue(&m, 1000, NULL, &buf, &len), 0);
    apply(q, buf, len);
    uint32_t idx = 0;
    struct queue_entry_lease_item it = {
        .queue_id = "Q1", .rcpt_indexes = &idx, .n_rcpts = 1, .lease_id = 77, .destination = "d"};
    struct queue_entry_lease_args l = {.node_id = 2,
                                       .term = 3,
                                       .expires_at_ms = 900000,
                                       .boot_id = "b",
                                       .items = &it,
                                       .n_items = 1};
    assert_int_equal(queue_entry_lease(&l, 1001, NULL, &buf, &len), 0);
    apply(q, buf, len);
    return q;
}

static void test_enqueue(void **state)
{
    (void)state;
    uint8_t body[1100] = {0};
    Hamr__Enqueue m = HAMR__ENQUEUE__INIT;
    m.queue_id = "Q9";
    m.sender = "";
    m.rcpts = rcpts2;
    m.n_rcpts = 2;
    m.body.data = body;
    m.body.len = 10;
    m.accepted_by = 2;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &m;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_OK);
    assert_int_equal(peer_policy_check(&e, 3, NULL, &lim), PEER_POLICY_IDENTITY);
    assert_int_equal(peer_policy_check(&e, 1, NULL, &lim), PEER_POLICY_IDENTITY); /* as us */
    assert_int_equal(peer_policy_check(&e, 0, NULL, &lim), PEER_POLICY_IDENTITY);
    m.body.len = 1000 + PEER_POLICY_HEADER_ROOM; /* our Received: fits */
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_OK);
    m.body.len++;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_SIZE);
    m.body.len = 10;
    m.is_dsn = true; /* DSNs are made inside apply, never forwarded */
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_ENVELOPE);
    m.is_dsn = false;
    m.n_rcpts = 0;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_ENVELOPE);
    char *many[] = {"a@x", "b@x", "c@x", "d@x"};
    m.rcpts = many;
    m.n_rcpts = 4;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_ENVELOPE);
    char *empty[] = {"a@x", ""};
    m.rcpts = empty;
    m.n_rcpts = 2;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_ENVELOPE);
    m.rcpts = rcpts2;
    m.queue_id = "";
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_ENVELOPE);
}

static void test_node_info(void **state)
{
    (void)state;
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    ni.node_id = 2;
    ni.peer_address = "127.0.0.1:7202";
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    e.node_info = &ni;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_OK);
    assert_int_equal(peer_policy_check(&e, 3, NULL, &lim), PEER_POLICY_IDENTITY);
    ni.node_id = 1; /* the leader's own entry, from someone else */
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_IDENTITY);
}

static void test_outcome(void **state)
{
    (void)state;
    struct queue *q = queue_with_lease();
    Hamr__RcptResult r0 = HAMR__RCPT_RESULT__INIT, r1 = HAMR__RCPT_RESULT__INIT;
    r0.rcpt_index = 0;
    r1.rcpt_index = 1;
    Hamr__RcptResult *results[] = {&r0, &r1};
    Hamr__Outcome o = HAMR__OUTCOME__INIT;
    o.queue_id = "Q1";
    o.lease_id = 77;
    o.results = results;
    o.n_results = 1;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
    e.outcome = &o;
    assert_int_equal(peer_policy_check(&e, 2, q, &lim), PEER_POLICY_OK);
    assert_int_equal(peer_policy_check(&e, 3, q, &lim), PEER_POLICY_LEASE); /* not its lease */
    o.n_results = 2; /* recipient 1 is not leased */
    assert_int_equal(peer_policy_check(&e, 2, q, &lim), PEER_POLICY_LEASE);
    o.n_results = 1;
    o.lease_id = 78;
    assert_int_equal(peer_policy_check(&e, 2, q, &lim), PEER_POLICY_LEASE);
    o.lease_id = 0; /* "mark pending recipients done": the leader's own scheduler only */
    assert_int_equal(peer_policy_check(&e, 2, q, &lim), PEER_POLICY_LEASE);
    o.lease_id = 77;
    r0.rcpt_index = 9;
    assert_int_equal(peer_policy_check(&e, 2, q, &lim), PEER_POLICY_LEASE);
    r0.rcpt_index = 0;
    o.queue_id = "Q2";
    assert_int_equal(peer_policy_check(&e, 2, q, &lim), PEER_POLICY_LEASE);
    queue_free(q);
}

/*
 * A StsPolicy (the MTA-STS policy a node's fetch brought) from any node once
 * every node delivers (cluster level 6); before, only the leader delivers,
 * so only it writes one.
 */
static void test_sts_policy(void **state)
{
    (void)state;
    struct queue *q = queue_new();
    assert_non_null(q);
    Hamr__StsPolicy p = HAMR__STS_POLICY__INIT;
    p.domain = "example.com";
    p.id = "20261208";
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_STS_POLICY;
    e.sts_policy = &p;
    assert_int_equal(peer_policy_check(&e, 2, q, &lim), PEER_POLICY_KIND);
    for (uint32_t level = 2; level <= QUEUE_LEVEL_SPREAD; level++) {
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(queue_entry_cluster_level(level, 1000 + level, NULL, &buf, &len), 0);
        apply(q, buf, len);
        assert_int_equal(peer_policy_check(&e, 2, q, &lim),
                         level >= QUEUE_LEVEL_SPREAD ? PEER_POLICY_OK : PEER_POLICY_KIND);
    }
    assert_int_equal(peer_policy_check(&e, 1, q, &lim), PEER_POLICY_IDENTITY); /* as the leader */
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_KIND);
    queue_free(q);
}

/* Admin, Lease and ClusterLevel never come from another node. */
static void test_kinds(void **state)
{
    (void)state;
    Hamr__Admin a = HAMR__ADMIN__INIT;
    Hamr__Lease l = HAMR__LEASE__INIT;
    Hamr__ClusterLevel c = HAMR__CLUSTER_LEVEL__INIT;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    e.admin = &a;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_KIND);
    e.cmd_case = HAMR__ENTRY__CMD_LEASE;
    e.lease = &l;
    l.node_id = 2;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_KIND);
    e.cmd_case = HAMR__ENTRY__CMD_CLUSTER_LEVEL;
    e.cluster_level = &c;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_KIND);
    e.cmd_case = HAMR__ENTRY__CMD__NOT_SET;
    assert_int_equal(peer_policy_check(&e, 2, NULL, &lim), PEER_POLICY_KIND);
    assert_string_equal(peer_policy_reason_name(PEER_POLICY_LEASE), "lease");
    assert_string_equal(peer_policy_reason_name(PEER_POLICY_REASONS), "unknown");
}

/*
 * A fetch only reads: any node that names itself may ask, the leader's own
 * id included; the request's bounds are checked. Table: label, caller,
 * queue id, max, the reason expected.
 */
static void test_fetch(void **state)
{
    (void)state;
    char longest[QUEUE_ID_MAX], too_long[QUEUE_ID_MAX + 1];
    memset(longest, 'a', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    memset(too_long, 'a', sizeof(too_long) - 1);
    too_long[sizeof(too_long) - 1] = '\0';
    const struct {
        const char *label;
        uint64_t from;
        const char *id;
        uint32_t max;
        enum peer_policy_reason want;
    } cases[] = {
        {"another node", 2, "Q1", 1024 * 1024, PEER_POLICY_OK},
        {"as this node", 1, "Q1", 1, PEER_POLICY_OK},
        {"over the chunk size (capped by the server)", 3, "Q1", UINT32_MAX, PEER_POLICY_OK},
        {"longest id", 2, longest, 10, PEER_POLICY_OK},
        {"no caller", 0, "Q1", 10, PEER_POLICY_IDENTITY},
        {"no id", 2, NULL, 10, PEER_POLICY_ENVELOPE},
        {"empty id", 2, "", 10, PEER_POLICY_ENVELOPE},
        {"id too long", 2, too_long, 10, PEER_POLICY_ENVELOPE},
        {"max 0", 2, "Q1", 0, PEER_POLICY_SIZE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Hamr__PeerFetch fr = HAMR__PEER_FETCH__INIT;
        fr.queue_id = (char *)cases[i].id;
        fr.offset = 5;
        fr.max = cases[i].max;
        enum peer_policy_reason got = peer_policy_fetch(&fr, cases[i].from);
        if (got != cases[i].want)
            fail_msg("%s: got %s, want %s", cases[i].label, peer_policy_reason_name(got),
                     peer_policy_reason_name(cases[i].want));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enqueue),    cmocka_unit_test(test_node_info),
        cmocka_unit_test(test_outcome),    cmocka_unit_test(test_kinds),
        cmocka_unit_test(test_sts_policy), cmocka_unit_test(test_fetch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
