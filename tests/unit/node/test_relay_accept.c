/*
 * test_relay_accept.c - the queue limits at MAIL (relay_sink_check_mail):
 * a queue at queue_max_messages or queue_max_bytes refuses with 452 4.3.1
 * and says the queue is full; the disk guard's 452 keeps its own text; a
 * leader known within the last election timeout will do (relay_leader_lately).
 *
 * The relay is a zeroed struct with only what the refusals read (config,
 * queue, disk guard). A queue below its limits goes on to ask raft for a
 * leader, which needs a running node: that side is covered by queue_full's
 * tests in tests/unit/queue and by integ_cluster_queue_limit.
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
#include "net/smtpd_reply.h"
#include "node/config.h"
#include "node/relay_internal.h"
#include "queue_fixture.h"
#include "relay_fixture.h"

#define T0 1765000000000ull

/* test_enqueue - one message of body (the fixture's default when NULL). */
static void test_enqueue(struct relay_fx *c, const char *id, const char *body)
{
    struct fx_enq e = {
        .id = id, .sender = "s@x.test", .rcpts = {"r@y.test"}, .body = body, .expires = T0 + 60000};
    assert_int_equal(fx_enqueue(c->r.queue, T0, &e).status, 0);
}

/* test_reply - the line a session sends for err. */
static const char *test_reply(int err)
{
    static char line[256];
    smtpd_reply_format(smtpd_reply_for_error(err), "mx.hamr.test", line, sizeof(line));
    return line;
}

/* One limit per row: the queue holds two 10-byte messages. */
static const struct {
    const char *label;
    uint64_t max_messages, max_bytes;     /* at the limit */
    uint64_t below_messages, below_bytes; /* the limits one higher */
} test_limit_cases[] = {
    {"queue_max_messages", 2, 0, 3, 0},
    {"queue_max_bytes", 0, 20, 0, 21},
    {"both, messages reached", 2, 21, 3, 21},
};

/*
 * test_limits - at a limit MAIL gets 452 4.3.1 and the queue-full text; with
 * the limit one higher the same queue is not full (queue_full, without the
 * raft side).
 */
static void test_limits(void **state)
{
    struct relay_fx *c = *state;
    test_enqueue(c, "A", "0123456789");
    test_enqueue(c, "B", "0123456789");
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_limit_cases); i++) {
        c->cfg.queue_max_messages = test_limit_cases[i].max_messages;
        c->cfg.queue_max_bytes = test_limit_cases[i].max_bytes;
        int rc = relay_sink_check_mail(&c->r);
        if (rc != HAMR_EQUEUEFULL)
            fail_msg("%s: got %s", test_limit_cases[i].label, hamr_errname(rc));
        assert_string_equal(test_reply(rc),
                            "452 4.3.1 Insufficient system storage: mail queue full\r\n");
        c->cfg.queue_max_messages = test_limit_cases[i].below_messages;
        c->cfg.queue_max_bytes = test_limit_cases[i].below_bytes;
        if (queue_full(c->r.queue, c->cfg.queue_max_messages, c->cfg.queue_max_bytes))
            fail_msg("%s: full with the limit one higher", test_limit_cases[i].label);
    }
}

/* Draining outranks a full queue (421 and close), a full queue nothing else. */
static void test_order(void **state)
{
    struct relay_fx *c = *state;
    c->cfg.queue_max_messages = 1;
    test_enqueue(c, "A", NULL);
    c->r.draining = true;
    assert_int_equal(relay_sink_check_mail(&c->r), HAMR_EDRAINING);
    c->r.draining = false;
    c->r.disk.soft = 1; /* free_bytes 0: below the soft limit */
    assert_int_equal(relay_sink_check_mail(&c->r), HAMR_ENOSPACE);
    assert_string_equal(test_reply(HAMR_ENOSPACE), "452 4.3.1 Insufficient system storage\r\n");
    c->r.disk.soft = 0;
    assert_int_equal(relay_sink_check_mail(&c->r), HAMR_EQUEUEFULL);
}

/*
 * test_leader_lately - MAIL without a leader known: taken within an
 * election timeout of the last time one was (the submit waits for the next
 * one), refused (451) after it, and before one was ever known.
 */
static void test_leader_lately(void **state)
{
    struct relay_fx *c = *state;
    c->cfg.election_timeout_ms = 1000;
    assert_false(relay_leader_lately(&c->r, 0, 5000)); /* never known */
    assert_true(relay_leader_lately(&c->r, 2, 5000));
    assert_int_equal(c->r.accept.leader_seen, 5000);
    assert_true(relay_leader_lately(&c->r, 0, 5400));
    assert_true(relay_leader_lately(&c->r, 0, 6000));
    assert_false(relay_leader_lately(&c->r, 0, 6001));
    assert_true(relay_leader_lately(&c->r, 3, 9000)); /* a new one */
    assert_true(relay_leader_lately(&c->r, 0, 9999));
    assert_false(relay_leader_lately(&c->r, 0, 10001));
    assert_string_equal(test_reply(HAMR_ENOQUORUM),
                        "451 4.3.0 Error: queue not available, try again later\r\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_limits, relay_fx_setup, relay_fx_teardown),
        cmocka_unit_test_setup_teardown(test_order, relay_fx_setup, relay_fx_teardown),
        cmocka_unit_test_setup_teardown(test_leader_lately, relay_fx_setup, relay_fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
