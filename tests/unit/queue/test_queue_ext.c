/*
 * test_queue_ext.c - the envelope extensions in the replicated queue
 * (format 5, QUEUE_LEVEL_EXT): what an Enqueue keeps, the snapshot round
 * trip, the level gate, and the notices NOTIFY asks for - failures,
 * "relayed" success notices, one delay warning per message - with ORCPT,
 * ENVID, RET=FULL and SMTPUTF8 in the DSN they make.
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
#define SEC 1000ull
#define HOUR (3600ull * SEC)

#define BOUNCED HAMR__RCPT_RESULT__STATUS__BOUNCED
#define DEFERRED HAMR__RCPT_RESULT__STATUS__DEFERRED
#define DELIVERED HAMR__RCPT_RESULT__STATUS__DELIVERED

/* ext_queue - a queue at level (QUEUE_LEVEL_EXT or below). */
static struct queue *ext_queue(uint32_t level)
{
    struct queue *q = queue_new();
    assert_non_null(q);
    if (level > 1)
        assert_int_equal(fx_level(q, T0 - HOUR, level).status, 0);
    assert_int_equal(queue_cluster_level(q), level);
    return q;
}

/* dsn_text - the body of DSN id as a string (a copy to free), or NULL if there is none. */
static char *dsn_text(const struct queue *q, const char *id)
{
    const struct queue_msg *m = queue_find(q, id);
    if (m == NULL)
        return NULL;
    assert_true(m->is_dsn);
    char *s = malloc(m->body_len + 1);
    assert_non_null(s);
    memcpy(s, queue_msg_body(m), m->body_len);
    s[m->body_len] = '\0';
    return s;
}

/* three - an Enqueue of M to three recipients: a NOTIFY=NEVER, b NOTIFY=SUCCESS, c none. */
static struct fx_enq three(void)
{
    return (struct fx_enq){.id = "M",
                           .sender = "alice@example.org",
                           .rcpts = {"a@example.net", "b@example.net", "c@example.net"},
                           .expires = T0 + 100 * HOUR,
                           .notify = {QUEUE_NOTIFY_NEVER, QUEUE_NOTIFY_SUCCESS, 0},
                           .n_notify = 3,
                           .orcpt = {"", "rfc822;B@example.net", "rfc822;old-c@example.net"},
                           .n_orcpt = 3,
                           .envid = "QQ314159",
                           .ret = QUEUE_RET_HDRS};
}

/* test_kept_and_restored - every field lands in the message and survives a snapshot. */
static void test_kept_and_restored(void **state)
{
    (void)state;
    struct queue *q = ext_queue(QUEUE_LEVEL_EXT);
    struct fx_enq e = three();
    e.smtputf8 = true;
    e.tls_optional = true;
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    e.id = "R";
    e.requiretls = true;
    e.n_notify = e.n_orcpt = 0;
    e.envid = NULL;
    e.ret = 0;
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);

    const struct queue_msg *m = queue_find(q, "M");
    assert_non_null(m);
    assert_true(m->smtputf8);
    assert_false(m->requiretls);
    assert_true(m->tls_optional);
    assert_non_null(m->ext);
    assert_int_equal(m->ext->ret, QUEUE_RET_HDRS);
    assert_string_equal(m->ext->envid, "QQ314159");
    assert_int_equal(m->ext->notify[0], QUEUE_NOTIFY_NEVER);
    assert_int_equal(m->ext->notify[1], QUEUE_NOTIFY_SUCCESS);
    assert_int_equal(m->ext->notify[2], 0);
    assert_null(m->ext->orcpt[0]);
    assert_string_equal(m->ext->orcpt[1], "rfc822;B@example.net");
    /* REQUIRETLS overrides TLS-Required: No (RFC 8689 4.1); no DSN parameter, no ext. */
    const struct queue_msg *r = queue_find(q, "R");
    assert_true(r->requiretls);
    assert_false(r->tls_optional);
    assert_null(r->ext);

    /* A delay warning given, then the snapshot: all of it comes back. */
    struct fx_outcome o = {
        .id = "M",
        .res = {{.idx = 2, .status = DEFERRED, .code = 451, .diag = "4.3.0 busy"}},
        .n = 1,
        .next_ms = T0 + 5 * HOUR,
        .delay_warning_ms = HOUR};
    assert_int_equal(fx_outcome(q, T0 + 2 * HOUR, &o).status, 0);
    assert_true(queue_find(q, "M")->delay_warned);
    struct queue *n = fx_snapshot_roundtrip(q);
    fx_assert_same_msgs(q, n);
    const struct queue_msg *nm = queue_find(n, "M");
    assert_true(nm->smtputf8 && nm->tls_optional && nm->delay_warned);
    assert_non_null(nm->ext);
    assert_int_equal(nm->ext->ret, QUEUE_RET_HDRS);
    assert_string_equal(nm->ext->envid, "QQ314159");
    assert_int_equal(nm->ext->notify[1], QUEUE_NOTIFY_SUCCESS);
    assert_string_equal(nm->ext->orcpt[2], "rfc822;old-c@example.net");
    assert_null(nm->ext->orcpt[0]);
    assert_true(queue_find(n, "R")->requiretls);
    assert_null(queue_find(n, "R")->ext);
    /* The DSN of an SMTPUTF8 message to an ASCII sender needs no SMTPUTF8 itself. */
    assert_non_null(queue_find(n, "M-B0"));
    assert_false(queue_find(n, "M-B0")->smtputf8);
    char da[65], db[65];
    queue_digest(q, da);
    queue_digest(n, db);
    assert_string_equal(da, db);
    queue_free(n);
    queue_free(q);
}

/* test_below_level - below QUEUE_LEVEL_EXT the fields are ignored, as an older build would. */
static void test_below_level(void **state)
{
    (void)state;
    struct queue *q = ext_queue(QUEUE_LEVEL_EXT - 1);
    struct fx_enq e = three();
    e.smtputf8 = e.requiretls = true;
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    const struct queue_msg *m = queue_find(q, "M");
    assert_null(m->ext);
    assert_false(m->smtputf8 || m->requiretls);
    /* NOTIFY=NEVER is not honoured there: a bounce of a still gives a DSN. */
    struct fx_outcome o = {
        .id = "M", .res = {{.idx = 0, .status = BOUNCED, .code = 550, .diag = "5.1.1 no"}}, .n = 1};
    assert_int_equal(fx_outcome(q, T0 + SEC, &o).dsn_generated, 1);
    queue_free(q);
}

/* test_failure_notify - NEVER gets nothing, SUCCESS-only nothing, no NOTIFY the failure. */
static void test_failure_notify(void **state)
{
    (void)state;
    struct queue *q = ext_queue(QUEUE_LEVEL_EXT);
    struct fx_enq e = three();
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    struct fx_outcome o = {.id = "M",
                           .res = {{.idx = 0, .status = BOUNCED, .code = 550, .diag = "5.1.1 a"},
                                   {.idx = 1, .status = BOUNCED, .code = 550, .diag = "5.1.1 b"},
                                   {.idx = 2, .status = BOUNCED, .code = 550, .diag = "5.1.1 c"}},
                           .n = 3,
                           .remote = "mx.example.net"};
    struct queue_apply_result r = fx_outcome(q, T0 + SEC, &o);
    assert_int_equal(r.dsn_generated, 1);
    assert_int_equal(r.finished, 1);
    char *t = dsn_text(q, "M-B0");
    assert_non_null(t);
    assert_non_null(strstr(t, "Original-Envelope-Id: QQ314159\r\n"));
    assert_non_null(strstr(t,
                           "Original-Recipient: rfc822; old-c@example.net\r\n"
                           "Final-Recipient: rfc822; c@example.net\r\n"
                           "Action: failed\r\nStatus: 5.1.1\r\n"));
    assert_null(strstr(t, "a@example.net"));
    assert_null(strstr(t, "b@example.net"));
    assert_non_null(strstr(t, "Content-Type: text/rfc822-headers"));
    free(t);

    /* All NEVER: the message finishes without any DSN. */
    struct fx_enq n = {.id = "N",
                       .sender = "alice@example.org",
                       .rcpts = {"x@example.net"},
                       .notify = {QUEUE_NOTIFY_NEVER},
                       .n_notify = 1};
    assert_int_equal(fx_enqueue(q, T0, &n).status, 0);
    o.id = "N";
    o.n = 1;
    r = fx_outcome(q, T0 + SEC, &o);
    assert_int_equal(r.dsn_generated, 0);
    assert_int_equal(r.finished, 1);
    /* Admin BOUNCE follows NOTIFY too. */
    assert_int_equal(fx_enqueue(q, T0,
                                &(struct fx_enq){.id = "P",
                                                 .sender = "alice@example.org",
                                                 .rcpts = {"x@example.net"},
                                                 .notify = {QUEUE_NOTIFY_NEVER},
                                                 .n_notify = 1})
                         .status,
                     0);
    r = fx_admin(q, T0 + 2 * SEC, HAMR__ADMIN__OP__BOUNCE, "P");
    assert_int_equal(r.dsn_generated, 0);
    assert_int_equal(r.finished, 1);
    queue_free(q);
}

/* test_relayed - NOTIFY=SUCCESS to a next hop without DSN: one "relayed" notice; with DSN none. */
static void test_relayed(void **state)
{
    (void)state;
    struct queue *q = ext_queue(QUEUE_LEVEL_EXT);
    struct fx_enq e = three();
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    struct fx_outcome o = {.id = "M",
                           .res = {{.idx = 0, .status = DELIVERED, .code = 250, .diag = "ok"},
                                   {.idx = 1, .status = DELIVERED, .code = 250, .diag = "2.0.0 ok"},
                                   {.idx = 2, .status = DELIVERED, .code = 250, .diag = "ok"}},
                           .n = 3,
                           .remote = "mx.example.net"};
    struct queue_apply_result r = fx_outcome(q, T0 + SEC, &o);
    assert_int_equal(r.dsn_generated, 1);
    char *t = dsn_text(q, "M-B0");
    assert_non_null(t);
    assert_non_null(strstr(t, "Subject: Successful Mail Delivery Report\r\n"));
    assert_non_null(strstr(t,
                           "Original-Recipient: rfc822; B@example.net\r\n"
                           "Final-Recipient: rfc822; b@example.net\r\n"
                           "Action: relayed\r\nStatus: 2.0.0\r\n"
                           "Remote-MTA: dns; mx.example.net\r\n"));
    assert_null(strstr(t, "c@example.net"));
    free(t);

    /* The same where the next hop took NOTIFY: it owes the notice, not us. */
    e.id = "M2";
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    o.id = "M2";
    o.res[1].dsn_passed = true;
    r = fx_outcome(q, T0 + SEC, &o);
    assert_int_equal(r.dsn_generated, 0);
    assert_int_equal(r.finished, 1);
    queue_free(q);
}

/* test_delay_once - one delay warning per message, after delay_warning_ms, for who wants it. */
static void test_delay_once(void **state)
{
    (void)state;
    struct queue *q = ext_queue(QUEUE_LEVEL_EXT);
    struct fx_enq e = {
        .id = "D",
        .sender = "alice@example.org",
        .rcpts = {"a@example.net", "b@example.net", "c@example.net"},
        .expires = T0 + 100 * HOUR,
        .notify = {QUEUE_NOTIFY_FAILURE, QUEUE_NOTIFY_DELAY | QUEUE_NOTIFY_FAILURE, 0},
        .n_notify = 3};
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    struct fx_outcome o = {.id = "D",
                           .res = {{.idx = 0, .status = DEFERRED, .code = 451, .diag = "4.4.1 x"},
                                   {.idx = 1, .status = DEFERRED, .code = 451, .diag = "4.4.1 x"},
                                   {.idx = 2, .status = DEFERRED, .code = 421, .diag = "4.7.0 y"}},
                           .n = 3,
                           .next_ms = T0 + 10 * HOUR,
                           .delay_warning_ms = 4 * HOUR,
                           .remote = "mx.example.net"};
    /* Too early: nothing. */
    assert_int_equal(fx_outcome(q, T0 + HOUR, &o).dsn_generated, 0);
    assert_false(queue_find(q, "D")->delay_warned);
    /* Past the delay: one notice, for b (DELAY) and c (no NOTIFY), not a (FAILURE only). */
    assert_int_equal(fx_outcome(q, T0 + 5 * HOUR, &o).dsn_generated, 1);
    assert_true(queue_find(q, "D")->delay_warned);
    char *t = dsn_text(q, "D-B0");
    assert_non_null(t);
    assert_non_null(strstr(t, "Subject: Delayed Mail (still being retried)\r\n"));
    assert_non_null(strstr(t,
                           "Final-Recipient: rfc822; b@example.net\r\nAction: delayed\r\n"
                           "Status: 4.4.1\r\n"));
    assert_non_null(strstr(t,
                           "Final-Recipient: rfc822; c@example.net\r\nAction: delayed\r\n"
                           "Status: 4.7.0\r\n"));
    assert_non_null(strstr(t, "Will-Retry-Until: "));
    assert_null(strstr(t, "a@example.net"));
    free(t);
    /* Never twice, whatever comes next; a later bounce is still reported. */
    assert_int_equal(fx_outcome(q, T0 + 9 * HOUR, &o).dsn_generated, 0);
    o.res[0].status = BOUNCED;
    o.res[0].diag = "5.1.1 gone";
    o.n = 1;
    assert_int_equal(fx_outcome(q, T0 + 11 * HOUR, &o).dsn_generated, 1);
    assert_non_null(queue_find(q, "D-B1"));
    /* Without delay_warning_ms (0) nothing is ever owed. */
    e.id = "E";
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    o.id = "E";
    o.res[0].status = DEFERRED;
    o.n = 3;
    o.delay_warning_ms = 0;
    assert_int_equal(fx_outcome(q, T0 + 50 * HOUR, &o).dsn_generated, 0);
    queue_free(q);
}

/* test_ret_full_and_utf8 - RET=FULL returns the message; SMTPUTF8 keeps the addresses UTF-8. */
static void test_ret_full_and_utf8(void **state)
{
    (void)state;
    struct queue *q = ext_queue(QUEUE_LEVEL_EXT);
    struct fx_enq e = {.id = "F",
                       .sender = "\xc3\xa9l\xc3\xa8ve@example.org",
                       .rcpts = {"d\xc3\xa9st@example.net"},
                       .body = "Subject: hi\r\n\r\nthe body line\r\n",
                       .smtputf8 = true,
                       .ret = QUEUE_RET_FULL};
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    struct fx_outcome o = {
        .id = "F", .res = {{.idx = 0, .status = BOUNCED, .code = 550, .diag = "5.1.1 no"}}, .n = 1};
    assert_int_equal(fx_outcome(q, T0 + SEC, &o).dsn_generated, 1);
    char *t = dsn_text(q, "F-B0");
    assert_non_null(t);
    assert_non_null(strstr(t, "To: <\xc3\xa9l\xc3\xa8ve@example.org>\r\n"));
    assert_non_null(strstr(t, "Content-Type: message/global-delivery-status\r\n"));
    assert_non_null(strstr(t, "Final-Recipient: utf-8; d\xc3\xa9st@example.net\r\n"));
    assert_non_null(strstr(t, "Content-Type: message/global\r\n"));
    assert_non_null(strstr(t, "the body line\r\n"));
    assert_true(queue_find(q, "F-B0")->smtputf8); /* to a UTF-8 sender */
    assert_true(queue_find(q, "F-B0")->body_8bit);
    free(t);

    /* RET=HDRS, or no RET: the headers only. */
    e.id = "G";
    e.ret = QUEUE_RET_HDRS;
    e.smtputf8 = false;
    e.sender = "alice@example.org";
    e.rcpts[0] = "x@example.net";
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    o.id = "G";
    assert_int_equal(fx_outcome(q, T0 + SEC, &o).dsn_generated, 1);
    t = dsn_text(q, "G-B0");
    assert_non_null(strstr(t, "Content-Type: text/rfc822-headers\r\n"));
    assert_non_null(strstr(t, "Subject: hi\r\n"));
    assert_null(strstr(t, "the body line"));
    free(t);
    queue_free(q);
}

/* test_refused - counts that do not match the recipients, texts over their bounds. */
static void test_refused(void **state)
{
    (void)state;
    struct queue *q = ext_queue(QUEUE_LEVEL_EXT);
    struct fx_enq e = three();
    e.n_notify = 2;
    assert_int_equal(fx_enqueue(q, T0, &e).status, HAMR_EINVAL);
    e = three();
    e.n_orcpt = 1;
    assert_int_equal(fx_enqueue(q, T0, &e).status, HAMR_EINVAL);
    e = three();
    e.notify[0] = 0x10;
    assert_int_equal(fx_enqueue(q, T0, &e).status, HAMR_EINVAL);
    e = three();
    e.ret = 3;
    assert_int_equal(fx_enqueue(q, T0, &e).status, HAMR_EINVAL);
    char big[QUEUE_ENVID_MAX + 2];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    e = three();
    e.envid = big;
    assert_int_equal(fx_enqueue(q, T0, &e).status, HAMR_EINVAL);
    big[QUEUE_ENVID_MAX] = '\0';
    assert_int_equal(fx_enqueue(q, T0, &e).status, 0);
    assert_non_null(queue_find(q, "M"));
    assert_int_equal(strlen(queue_find(q, "M")->ext->envid), QUEUE_ENVID_MAX);
    queue_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kept_and_restored), cmocka_unit_test(test_below_level),
        cmocka_unit_test(test_failure_notify),    cmocka_unit_test(test_relayed),
        cmocka_unit_test(test_delay_once),        cmocka_unit_test(test_ret_full_and_utf8),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
