/*
 * test_smtpc.c - the SMTP client pool against a scripted SMTP server on the
 * same libuv loop (127.0.0.1, port 0).
 *
 * The server answers every command with a default reply unless the test set
 * an override for a command prefix, records every byte it received, and
 * counts connections, messages and end-of-connection events. Each test runs
 * the loop with a bounded number of UV_RUN_ONCE iterations under a watchdog
 * timer, and teardown checks that the loop closes with no handle left.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netdb.h>

#include <uv.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtpc.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_nexthop.h"
#include "tests/lib/testlib_resolver.h"
#include "tests/lib/testlib_smtpc.h"

/* The EHLO reply without PIPELINING and 8BITMIME. */
static const char srv_ehlo_plain[] = "250-test.example\r\n250 SIZE 1000000\r\n";

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

/* result - what one delivery callback reported. */
struct result {
    int calls;
    size_t n;
    struct smtpc_rcpt_result r[4];
    char remote[128];
    char host[SMTPC_HOST_MAX + 1];
    unsigned n_tried;
    enum smtpc_tls_state tls_state;
};

/* setup - the client fixture against a next hop. */
static int setup(void **state)
{
    struct testlib_smtpc *f = testlib_smtpc_new(NULL);
    f->cfg.max_conns_per_dest = 10;
    f->cfg.max_msgs_per_conn = 100;
    *state = f;
    return 0;
}

/* done_cb - copy the result; it is only valid during the callback. */
static void done_cb(void *arg, const struct smtpc_result *res)
{
    struct result *r = arg;
    r->calls++;
    r->n = res->n_rcpts;
    assert_true(res->n_rcpts <= 4);
    memcpy(r->r, res->rcpts, res->n_rcpts * sizeof(res->rcpts[0]));
    hamr_strlcpy(r->remote, res->remote, sizeof(r->remote));
    hamr_strlcpy(r->host, res->host, sizeof(r->host));
    r->n_tried = res->n_tried;
    r->tls_state = res->tls_state;
}

/* deliver - queue m to the test server; the callback must not run yet. */
static void deliver(struct testlib_smtpc *f, const struct smtpc_msg *m, struct result *r)
{
    assert_int_equal(smtpc_pool_deliver(f->pool, "127.0.0.1", f->srv.port, m, done_cb, r), 0);
    assert_int_equal(r->calls, 0);
}

static const char *const rcpts3[] = {"a@x.test", "b@x.test", "c@x.test"};
static const char body_std[] = "Subject: t\r\n\r\n.hidden\r\nline\r\n.\r\nend";
static const char body_std_wire[] = "Subject: t\r\n\r\n..hidden\r\nline\r\n..\r\nend\r\n.\r\n";

static struct smtpc_msg msg_std(size_t n_rcpts)
{
    return (struct smtpc_msg){.sender = "s@y.test",
                              .rcpts = rcpts3,
                              .n_rcpts = n_rcpts,
                              .body = (const uint8_t *)body_std,
                              .body_len = sizeof(body_std) - 1,
                              .body_8bit = false};
}

/* assert_all - every recipient has status st and code. */
static void assert_all(const struct result *r, size_t n, enum smtpc_status st, unsigned code)
{
    assert_int_equal(r->calls, 1);
    assert_int_equal(r->n, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(r->r[i].status, st);
        assert_int_equal(r->r[i].code, code);
    }
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

/* test_happy_pipelining - the exact bytes sent with PIPELINING, SIZE and 8BITMIME. */
static void test_happy_pipelining(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(2);
    m.body_8bit = true;
    struct result r = {0};
    deliver(f, &m, &r);
    assert_int_equal(smtpc_pool_active(f->pool), 1);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 2, SMTPC_OK, 250);
    assert_string_equal(r.r[0].text, "2.0.0 queued");
    char remote[64];
    snprintf(remote, sizeof(remote), "127.0.0.1:%u", f->srv.port);
    assert_string_equal(r.remote, remote);
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED);
    assert_int_equal(smtpc_pool_active(f->pool), 0);

    char want[512];
    int n = snprintf(want, sizeof(want),
                     "EHLO client.test\r\n"
                     "MAIL FROM:<s@y.test> SIZE=%zu BODY=8BITMIME\r\n"
                     "RCPT TO:<a@x.test>\r\n"
                     "RCPT TO:<b@x.test>\r\n"
                     "DATA\r\n%s",
                     m.body_len, body_std_wire);
    assert_int_equal(f->srv.rx.len, (size_t)n);
    assert_memory_equal(f->srv.rx.data, want, (size_t)n);
    assert_true(f->srv.n_pipelined > 0);
    assert_int_equal(f->srv.n_messages, 1);
}

/* test_no_pipelining - one command per round trip, no BODY= without 8BITMIME. */
static void test_no_pipelining(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_plain;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(3);
    m.body_8bit = true; /* sent anyway, without BODY= */
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 3, SMTPC_OK, 250);
    char want[512];
    int n = snprintf(want, sizeof(want),
                     "EHLO client.test\r\n"
                     "MAIL FROM:<s@y.test> SIZE=%zu\r\n"
                     "RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n"
                     "DATA\r\n%s",
                     m.body_len, body_std_wire);
    assert_int_equal(f->srv.rx.len, (size_t)n);
    assert_memory_equal(f->srv.rx.data, want, (size_t)n);
    assert_int_equal(f->srv.n_pipelined, 0);
}

/* test_helo_fallback - 5xx to EHLO: HELO, then no extensions at all. */
static void test_helo_fallback(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_nexthop_override(&f->srv, "EHLO", "502 5.5.2 what\r\n", 0);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_true(testlib_nexthop_received(&f->srv, "HELO client.test\r\nMAIL FROM:<s@y.test>\r\n"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED); /* HELO: no extensions */
}

/* test_bare_line_ends - bare LF and bare CR in the stored body go out as CRLF. */
static void test_bare_line_ends(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    static const char body[] = "a\nb\rc\r\n.\n.\r.d";
    struct smtpc_msg m = msg_std(1);
    m.body = (const uint8_t *)body;
    m.body_len = sizeof(body) - 1;
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_true(
        testlib_nexthop_received(&f->srv, "DATA\r\na\r\nb\r\nc\r\n..\r\n..\r\n..d\r\n.\r\n"));
    for (size_t i = 0; i < f->srv.rx.len; i++) {
        if (f->srv.rx.data[i] == '\r')
            assert_true(i + 1 < f->srv.rx.len && f->srv.rx.data[i + 1] == '\n');
        if (f->srv.rx.data[i] == '\n')
            assert_true(i > 0 && f->srv.rx.data[i - 1] == '\r');
    }
}

/*
 * Reply scenarios on one message to three recipients: an override on the
 * server, the status and code expected per recipient, and what must or must
 * not have reached the server.
 */
struct reply_case {
    const char *label;
    bool pipelining;
    const char *prefix[2];
    const char *reply[2];
    size_t reply_len[2];
    enum smtpc_status want[3];
    unsigned want_code[3];
    const char *want_text;         /* in every recipient's text, or NULL */
    int want_body;                 /* the body reached the server: 1, 0, or -1 (either) */
    const char *want_sent;         /* must have been received, or NULL */
    enum smtpc_tls_state want_tls; /* the result's tls_state (no STARTTLS offered) */
};

static const struct reply_case reply_cases[] = {
    {"one rcpt 550",
     true,
     {"RCPT TO:<b@"},
     {"550 5.1.1 no such user\r\n"},
     {0},
     {SMTPC_OK, SMTPC_PERM, SMTPC_OK},
     {250, 550, 250},
     NULL,
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"one rcpt 550 unpipelined",
     false,
     {"RCPT TO:<b@"},
     {"550 5.1.1 no such user\r\n"},
     {0},
     {SMTPC_OK, SMTPC_PERM, SMTPC_OK},
     {250, 550, 250},
     NULL,
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"rcpt 450",
     true,
     {"RCPT TO:<a@"},
     {"450 4.2.0 greylisted\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_OK, SMTPC_OK},
     {450, 250, 250},
     NULL,
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"552 after dot",
     true,
     {"."},
     {"552 5.3.4 too big\r\n"},
     {0},
     {SMTPC_PERM, SMTPC_PERM, SMTPC_PERM},
     {552, 552, 552},
     "too big",
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"451 to MAIL",
     true,
     {"MAIL"},
     {"451 4.3.0 try later\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {451, 451, 451},
     "try later",
     false,
     "RSET\r\n",
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"451 to MAIL unpipelined",
     false,
     {"MAIL"},
     {"451 4.3.0 try later\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {451, 451, 451},
     "try later",
     false,
     "RSET\r\n",
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"no rcpt accepted",
     true,
     {"RCPT"},
     {"550 5.1.1 no\r\n"},
     {0},
     {SMTPC_PERM, SMTPC_PERM, SMTPC_PERM},
     {550, 550, 550},
     NULL,
     false,
     "RSET\r\n",
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"no rcpt accepted unpipelined",
     false,
     {"RCPT"},
     {"550 5.1.1 no\r\n"},
     {0},
     {SMTPC_PERM, SMTPC_PERM, SMTPC_PERM},
     {550, 550, 550},
     NULL,
     false,
     "RSET\r\n",
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"354 though no rcpt accepted",
     true,
     {"RCPT", "DATA"},
     {"550 5.1.1 no\r\n", "354 go\r\n"},
     {0, 0},
     {SMTPC_PERM, SMTPC_PERM, SMTPC_PERM},
     {550, 550, 550},
     NULL,
     false,
     "DATA\r\n.\r\n",
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"DATA 554",
     true,
     {"DATA"},
     {"554 5.7.1 no\r\n"},
     {0},
     {SMTPC_PERM, SMTPC_PERM, SMTPC_PERM},
     {554, 554, 554},
     NULL,
     false,
     "RSET\r\n",
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"greeting 554",
     true,
     {"<greeting>"},
     {"554 5.7.1 go away\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {554, 554, 554},
     "go away",
     false,
     NULL,
     SMTPC_TLS_STATE_REFUSED_BEFORE_EHLO},
    {"421 to EHLO",
     true,
     {"EHLO"},
     {"421 4.3.2 closing\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {421, 421, 421},
     "closing",
     false,
     NULL,
     SMTPC_TLS_STATE_REFUSED_BEFORE_EHLO},
    {"close before dot reply",
     true,
     {"."},
     {"!close"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {0, 0, 0},
     "lost connection",
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"timeout on DATA",
     true,
     {"DATA"},
     {"!none"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {0, 0, 0},
     "timeout waiting for reply to DATA",
     false,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"dot 2x9",
     true,
     {"."},
     {"2x9 ok\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {0, 0, 0},
     "malformed",
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"dot mixed codes",
     true,
     {"."},
     {"250-ok\r\n251 ok\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {0, 0, 0},
     "malformed",
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"dot NUL",
     true,
     {"."},
     {"250 o\0k\r\n"},
     {9},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {0, 0, 0},
     "malformed",
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"dot 354",
     true,
     {"."},
     {"354 again\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {354, 354, 354},
     "protocol error",
     true,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"250 pushed with 354",
     true,
     {"DATA"},
     {"354 go\r\n250 2.0.0 queued\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {0, 0, 0},
     "unexpected reply",
     -1,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"extra reply to MAIL unpipelined",
     false,
     {"MAIL"},
     {"250 ok\r\n250 ok\r\n"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {0, 0, 0},
     "unexpected reply",
     false,
     NULL,
     SMTPC_TLS_STATE_NOT_OFFERED},
    {"HELO refused",
     true,
     {"EHLO", "HELO"},
     {"502 5.5.2 what\r\n", "550 5.7.1 go away\r\n"},
     {0, 0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {550, 550, 550},
     "go away",
     false,
     NULL,
     SMTPC_TLS_STATE_REFUSED_BEFORE_EHLO},
    {"close instead of greeting",
     true,
     {"<greeting>"},
     {"!close"},
     {0},
     {SMTPC_TEMP, SMTPC_TEMP, SMTPC_TEMP},
     {0, 0, 0},
     "lost connection",
     false,
     NULL,
     SMTPC_TLS_STATE_NO_CONNECTION},
};

/* run_reply_case - one scenario on a fresh fixture. */
static void run_reply_case(const struct reply_case *tc)
{
    void *state = NULL;
    setup(&state);
    struct testlib_smtpc *f = state;
    f->cfg.command_timeout_ms = 100;
    if (!tc->pipelining)
        f->srv.ehlo = srv_ehlo_plain;
    for (size_t i = 0; i < 2 && tc->prefix[i] != NULL; i++)
        testlib_nexthop_override(&f->srv, tc->prefix[i], tc->reply[i], tc->reply_len[i]);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(3);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    print_message("case: %s\n", tc->label);
    assert_int_equal(r.n, 3);
    for (size_t i = 0; i < 3; i++) {
        if (r.r[i].status != tc->want[i] || r.r[i].code != tc->want_code[i])
            fail_msg("%s: rcpt %zu status %d code %u (%s), want %d %u", tc->label, i, r.r[i].status,
                     r.r[i].code, r.r[i].text, tc->want[i], tc->want_code[i]);
        if (tc->want_text != NULL && strstr(r.r[i].text, tc->want_text) == NULL)
            fail_msg("%s: rcpt %zu text \"%s\" lacks \"%s\"", tc->label, i, r.r[i].text,
                     tc->want_text);
    }
    if (r.tls_state != tc->want_tls)
        fail_msg("%s: tls_state %d, want %d", tc->label, r.tls_state, tc->want_tls);
    /* Let any RSET reach the server before looking at what it received. */
    if (tc->want_sent != NULL)
        TESTLIB_LOOP_UNTIL(&f->run, testlib_nexthop_received(&f->srv, tc->want_sent));
    if (tc->want_body >= 0 &&
        testlib_nexthop_received(&f->srv, "..hidden\r\n") != (tc->want_body == 1))
        fail_msg("%s: body %s the server", tc->label, tc->want_body ? "did not reach" : "reached");
    assert_int_equal(smtpc_pool_active(f->pool), 0);
    testlib_smtpc_teardown(&state);
}

/* test_reply_cases - the table above. */
static void test_reply_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(reply_cases) / sizeof(reply_cases[0]); i++)
        run_reply_case(&reply_cases[i]);
}

/* test_malformed_long - 101 continuation lines, a 5000-byte line: TEMP, never OK. */
static void test_malformed_long(void **state)
{
    (void)state;
    struct buf many, wide;
    buf_init(&many, 0);
    buf_init(&wide, 0);
    for (int i = 0; i < 101; i++)
        assert_int_equal(buf_append(&many, "250-more\r\n", 10), 0);
    assert_int_equal(buf_append(&many, "250 done\r\n", 10), 0);
    assert_int_equal(buf_append(&wide, "250 ", 4), 0);
    for (int i = 0; i < 5000; i++)
        assert_int_equal(buf_append(&wide, "x", 1), 0);
    assert_int_equal(buf_append(&wide, "\r\n", 2), 0);
    const struct buf *replies[] = {&many, &wide};
    const char *where[] = {".", "EHLO"};
    for (size_t w = 0; w < 2; w++) {
        for (size_t i = 0; i < 2; i++) {
            void *st = NULL;
            setup(&st);
            struct testlib_smtpc *f = st;
            testlib_nexthop_override(&f->srv, where[w], (const char *)replies[i]->data,
                                     replies[i]->len);
            testlib_smtpc_pool_start(f);
            struct smtpc_msg m = msg_std(2);
            struct result r = {0};
            deliver(f, &m, &r);
            TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
            assert_all(&r, 2, SMTPC_TEMP, 0);
            assert_non_null(strstr(r.r[0].text, "malformed"));
            /* A malformed EHLO reply ends the attempt before any session. */
            assert_int_equal(r.tls_state,
                             w == 0 ? SMTPC_TLS_STATE_NOT_OFFERED : SMTPC_TLS_STATE_NO_CONNECTION);
            testlib_smtpc_teardown(&st);
        }
    }
    buf_free(&many);
    buf_free(&wide);
}

/* test_connect_refused - a closed port: TEMP with "connect" in the text. */
static void test_connect_refused(void **state)
{
    struct testlib_smtpc *f = *state;
    /* A port that was free a moment ago. */
    uv_tcp_t t;
    assert_int_equal(uv_tcp_init(&f->loop, &t), 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&t, (const struct sockaddr *)&a, 0), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len), 0);
    uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);

    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(2);
    struct result r = {0};
    assert_int_equal(smtpc_pool_deliver(f->pool, "127.0.0.1", port, &m, done_cb, &r), 0);
    assert_int_equal(r.calls, 0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 2, SMTPC_TEMP, 0);
    assert_non_null(strstr(r.r[0].text, "connect to 127.0.0.1:"));
    assert_non_null(strstr(r.r[1].text, "refused"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NO_CONNECTION);
}

/* test_hostname - a name goes through uv_getaddrinfo; localhost reaches 127.0.0.1. */
static void test_hostname(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r = {0};
    assert_int_equal(smtpc_pool_deliver(f->pool, "localhost", f->srv.port, &m, done_cb, &r), 0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    /* Where localhost is ::1 first, that address refuses and 127.0.0.1 is tried next. */
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_int_equal(strncmp(r.remote, "127.0.0.1:", 10), 0);
    assert_string_equal(r.host, "localhost");
}

/* test_size_exceeded - SIZE offered and the body is larger: 552 PERM, nothing sent. */
static void test_size_exceeded(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = "250-test.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n";
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(2);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 2, SMTPC_PERM, 552);
    assert_false(testlib_nexthop_received(&f->srv, "MAIL"));
}

/* The EHLO reply with PIPELINING, SIZE and DSN; and with SMTPUTF8 as well. */
static const char srv_ehlo_dsn[] =
    "250-test.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 DSN\r\n";
static const char srv_ehlo_dsn_utf8[] =
    "250-test.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-DSN\r\n250 SMTPUTF8\r\n";

/*
 * The DSN parameters of msg_dsn's recipients: NOTIFY and an ORCPT that
 * needs xtext; NEVER alone; and an ORCPT of type utf-8 (with U+00FC).
 */
static const struct smtp_dsn_rcpt dsn_rcpts[] = {
    {SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE, "rfc822;a+x=y@x.test"},
    {SMTP_NOTIFY_NEVER, NULL},
    {0, "utf-8;c\xc3\xbc@x.test"},
};

/* msg_dsn - msg_std to three recipients with RET=FULL, an ENVID that needs xtext, dsn_rcpts. */
static struct smtpc_msg msg_dsn(void)
{
    struct smtpc_msg m = msg_std(3);
    m.ret = SMTP_RET_FULL;
    m.envid = "id+1=2 x";
    m.rcpt_dsn = dsn_rcpts;
    return m;
}

/* assert_received_exactly - the server read exactly the commands want, then the body. */
static void assert_received_exactly(const struct testlib_smtpc *f, const char *want)
{
    char all[2048];
    int n = snprintf(all, sizeof(all), "%s%s", want, body_std_wire);
    assert_true(n > 0 && (size_t)n < sizeof(all));
    if (f->srv.rx.len != (size_t)n || memcmp(f->srv.rx.data, all, (size_t)n) != 0)
        fail_msg("received \"%.*s\"", (int)f->srv.rx.len, (const char *)f->srv.rx.data);
}

/*
 * test_dsn_offered - DSN offered: RET=, ENVID= and NOTIFY=, ORCPT= in
 * xtext, exactly; the utf-8 ORCPT left out without SMTPUTF8; dsn_passed
 * for the recipients taken, not for the refused one.
 */
static void test_dsn_offered(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_dsn;
    testlib_nexthop_override(&f->srv, "RCPT TO:<b@", "550 5.1.1 no such user\r\n", 0);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_dsn();
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    char want[1024];
    snprintf(want, sizeof(want),
             "EHLO client.test\r\n"
             "MAIL FROM:<s@y.test> SIZE=%zu RET=FULL ENVID=id+2B1+3D2+20x\r\n"
             "RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bx+3Dy@x.test\r\n"
             "RCPT TO:<b@x.test> NOTIFY=NEVER\r\n"
             "RCPT TO:<c@x.test>\r\n"
             "DATA\r\n",
             m.body_len);
    assert_received_exactly(f, want);
    assert_int_equal(r.r[0].status, SMTPC_OK);
    assert_int_equal(r.r[1].status, SMTPC_PERM);
    assert_int_equal(r.r[2].status, SMTPC_OK);
    assert_true(r.r[0].dsn_passed);
    assert_false(r.r[1].dsn_passed);
    assert_true(r.r[2].dsn_passed);
}

/* test_dsn_unpipelined - the same parameters on RCPT commands sent one at a time. */
static void test_dsn_unpipelined(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = "250-test.example\r\n250 DSN\r\n";
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_dsn();
    m.ret = SMTP_RET_HDRS;
    m.envid = NULL;
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 3, SMTPC_OK, 250);
    assert_received_exactly(f,
                            "EHLO client.test\r\n"
                            "MAIL FROM:<s@y.test> RET=HDRS\r\n"
                            "RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE "
                            "ORCPT=rfc822;a+2Bx+3Dy@x.test\r\n"
                            "RCPT TO:<b@x.test> NOTIFY=NEVER\r\n"
                            "RCPT TO:<c@x.test>\r\n"
                            "DATA\r\n");
    for (size_t i = 0; i < 3; i++)
        assert_true(r.r[i].dsn_passed);
}

/* test_dsn_not_offered - no DSN: none of its parameters, and no dsn_passed. */
static void test_dsn_not_offered(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_dsn();
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 3, SMTPC_OK, 250);
    char want[512];
    snprintf(want, sizeof(want),
             "EHLO client.test\r\n"
             "MAIL FROM:<s@y.test> SIZE=%zu\r\n"
             "RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n"
             "DATA\r\n",
             m.body_len);
    assert_received_exactly(f, want);
    for (size_t i = 0; i < 3; i++)
        assert_false(r.r[i].dsn_passed);
}

/* test_dsn_dot_refused - DSN offered, the message refused after the dot: no dsn_passed. */
static void test_dsn_dot_refused(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_dsn;
    testlib_nexthop_override(&f->srv, ".", "451 4.3.0 try later\r\n", 0);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_dsn();
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 3, SMTPC_TEMP, 451);
    for (size_t i = 0; i < 3; i++)
        assert_false(r.r[i].dsn_passed);
}

/* test_smtputf8_offered - SMTPUTF8 on MAIL, and the utf-8 ORCPT as it is. */
static void test_smtputf8_offered(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_dsn_utf8;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_dsn();
    m.smtputf8 = true;
    m.body_8bit = true; /* no 8BITMIME offered: no BODY= */
    m.ret = SMTP_RET_UNSET;
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 3, SMTPC_OK, 250);
    char want[1024];
    snprintf(want, sizeof(want),
             "EHLO client.test\r\n"
             "MAIL FROM:<s@y.test> SIZE=%zu SMTPUTF8 ENVID=id+2B1+3D2+20x\r\n"
             "RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bx+3Dy@x.test\r\n"
             "RCPT TO:<b@x.test> NOTIFY=NEVER\r\n"
             "RCPT TO:<c@x.test> ORCPT=utf-8;c\xc3\xbc@x.test\r\n"
             "DATA\r\n",
             m.body_len);
    assert_received_exactly(f, want);
}

/*
 * test_dsn_orcpt_unsafe - an ORCPT with a CR, LF or space never reaches
 * the command line as it is: encoded (rfc822) or left out (utf-8).
 */
static void test_dsn_orcpt_unsafe(void **state)
{
    static const struct smtp_dsn_rcpt unsafe[] = {
        {0, "rfc822;a\r\nRSET"},
        {0, "utf-8;b\r\nRSET"},
        {0, "utf-8;c d@x.test"},
    };
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_dsn_utf8;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(3);
    m.smtputf8 = true;
    m.rcpt_dsn = unsafe;
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 3, SMTPC_OK, 250);
    char want[1024];
    snprintf(want, sizeof(want),
             "EHLO client.test\r\n"
             "MAIL FROM:<s@y.test> SIZE=%zu SMTPUTF8\r\n"
             "RCPT TO:<a@x.test> ORCPT=rfc822;a+0D+0ARSET\r\n"
             "RCPT TO:<b@x.test>\r\n"
             "RCPT TO:<c@x.test>\r\n"
             "DATA\r\n",
             m.body_len);
    assert_received_exactly(f, want);
}

/* test_smtputf8_8bitmime - SMTPUTF8 after BODY=8BITMIME, DSN not offered. */
static void test_smtputf8_8bitmime(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = "250-test.example\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n";
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    m.smtputf8 = true;
    m.body_8bit = true;
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_received_exactly(f,
                            "EHLO client.test\r\n"
                            "MAIL FROM:<s@y.test> BODY=8BITMIME SMTPUTF8\r\n"
                            "RCPT TO:<a@x.test>\r\n"
                            "DATA\r\n");
}

/*
 * test_smtputf8_not_offered - no SMTPUTF8: every recipient fails for good
 * with 5.6.7 and no reply code, no MAIL; the connection carries the next
 * message.
 */
static void test_smtputf8_not_offered(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_dsn;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(2);
    m.smtputf8 = true;
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 2, SMTPC_PERM, 0);
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(r.r[i].text,
                            "5.6.7 SMTPUTF8 is required, but was not offered by host "
                            "127.0.0.1[127.0.0.1]");
        assert_false(r.r[i].dsn_passed);
    }
    assert_false(testlib_nexthop_received(&f->srv, "MAIL"));
    struct smtpc_msg m2 = msg_std(1);
    struct result r2 = {0};
    deliver(f, &m2, &r2);
    TESTLIB_LOOP_UNTIL(&f->run, r2.calls == 1);
    assert_all(&r2, 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(f->srv.n_messages, 1);
}

/* test_reuse - two messages one after the other share one connection, no RSET. */
static void test_reuse(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r1 = {0}, r2 = {0};
    deliver(f, &m, &r1);
    TESTLIB_LOOP_UNTIL(&f->run, r1.calls == 1);
    deliver(f, &m, &r2);
    TESTLIB_LOOP_UNTIL(&f->run, r2.calls == 1);
    assert_all(&r1, 1, SMTPC_OK, 250);
    assert_all(&r2, 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(f->srv.n_messages, 2);
    assert_false(testlib_nexthop_received(&f->srv, "RSET"));
}

/* test_reuse_after_failure - RSET after a failed transaction, then the next one. */
static void test_reuse_after_failure(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_nexthop_override(&f->srv, "MAIL FROM:<bad@", "550 5.7.1 not you\r\n", 0);
    f->cfg.max_conns_per_dest = 1; /* the second job waits for the RSET to finish */
    testlib_smtpc_pool_start(f);
    struct smtpc_msg bad = msg_std(1);
    bad.sender = "bad@y.test";
    struct smtpc_msg good = msg_std(1);
    struct result r1 = {0}, r2 = {0};
    deliver(f, &bad, &r1);
    TESTLIB_LOOP_UNTIL(&f->run, r1.calls == 1);
    deliver(f, &good, &r2);
    TESTLIB_LOOP_UNTIL(&f->run, r2.calls == 1);
    assert_all(&r1, 1, SMTPC_PERM, 550);
    assert_all(&r2, 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 1);
    assert_true(testlib_nexthop_received(&f->srv, "RSET\r\nMAIL FROM:<s@y.test>"));
}

/* test_serialised - max_conns_per_dest 1 and three jobs: one connection, all delivered. */
static void test_serialised(void **state)
{
    struct testlib_smtpc *f = *state;
    f->cfg.max_conns_per_dest = 1;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(2);
    struct result r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        deliver(f, &m, &r[i]);
    assert_int_equal(smtpc_pool_active(f->pool), 3);
    TESTLIB_LOOP_UNTIL(&f->run, r[0].calls + r[1].calls + r[2].calls == 3);
    for (int i = 0; i < 3; i++)
        assert_all(&r[i], 2, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(f->srv.n_messages, 3);
    assert_int_equal(smtpc_pool_active(f->pool), 0);
}

/* test_parallel - three jobs with room for three connections use three. */
static void test_parallel(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        deliver(f, &m, &r[i]);
    TESTLIB_LOOP_UNTIL(&f->run, r[0].calls + r[1].calls + r[2].calls == 3);
    for (int i = 0; i < 3; i++)
        assert_all(&r[i], 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 3);
}

/* group_deliver_hold - queue m to the test server in group "G" (4 deliveries a connection). */
static void group_deliver_hold(struct testlib_smtpc *f,
                               const struct smtpc_msg *m,
                               const char *const *patterns,
                               unsigned hold_ms,
                               struct result *r)
{
    struct smtpc_delivery dv = {.host = "127.0.0.1",
                                .port = f->srv.port,
                                .mx_patterns = patterns,
                                .n_mx_patterns = patterns != NULL ? 1 : 0,
                                .group = "G",
                                .group_per_conn = 4,
                                .group_hold_ms = hold_ms};
    assert_int_equal(smtpc_pool_deliver_to(f->pool, &dv, m, done_cb, r), 0);
}

/* group_deliver - group_deliver_hold without a look back: the cap counts what runs now. */
static void group_deliver(struct testlib_smtpc *f,
                          const struct smtpc_msg *m,
                          const char *const *patterns,
                          struct result *r)
{
    group_deliver_hold(f, m, patterns, 0, r);
}

/* group_peak - the most connections of group "G" seen at each loop turn until n results. */
static unsigned group_peak(struct testlib_smtpc *f, struct result *r, size_t n)
{
    unsigned peak = 0;
    for (int turns = 0; turns < f->run.max_turns && !f->run.expired; turns++) {
        unsigned now = smtpc_pool_group_conns(f->pool, "G");
        peak = now > peak ? now : peak;
        int calls = 0;
        for (size_t i = 0; i < n; i++)
            calls += r[i].calls;
        if ((size_t)calls == n)
            return peak;
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    fail_msg("deliveries did not finish");
    return 0;
}

/*
 * test_group_cap - nine deliveries of a group with four a connection: at
 * most three connections (max_conns_per_dest would allow ten), each closed
 * as soon as the deliveries left no longer need it, none left idle.
 */
static void test_group_cap(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r[9] = {{0}};
    for (int i = 0; i < 9; i++)
        group_deliver(f, &m, NULL, &r[i]);
    assert_true(group_peak(f, r, 9) <= 3);
    for (int i = 0; i < 9; i++)
        assert_all(&r[i], 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 3);
    assert_int_equal(f->srv.n_messages, 9);
    TESTLIB_LOOP_UNTIL(&f->run, f->srv.n_eof == 3); /* the cap fell to 0: no idle connection */
    assert_int_equal(smtpc_pool_group_conns(f->pool, "G"), 0);
}

/*
 * test_group_hold - with group_hold_ms the cap counts the most deliveries
 * of the last while: five deliveries open two connections, which stay
 * idle once they are done and carry the next five; once the look back
 * has passed with nothing to do, both close.
 */
static void test_group_hold(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r[10] = {{0}};
    for (int i = 0; i < 5; i++)
        group_deliver_hold(f, &m, NULL, 200, &r[i]);
    assert_true(group_peak(f, r, 5) <= 2);
    assert_int_equal(f->srv.n_accepted, 2);
    assert_int_equal(smtpc_pool_group_conns(f->pool, "G"), 2); /* kept, idle */
    for (int i = 5; i < 10; i++)
        group_deliver_hold(f, &m, NULL, 200, &r[i]);
    assert_true(group_peak(f, r + 5, 5) <= 2);
    for (int i = 0; i < 10; i++)
        assert_all(&r[i], 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 2); /* the same two connections */
    assert_int_equal(f->srv.n_messages, 10);
    TESTLIB_LOOP_UNTIL(&f->run, f->srv.n_eof == 2); /* the look back passed: both go */
    assert_int_equal(smtpc_pool_group_conns(f->pool, "G"), 0);
}

/*
 * test_group_variants - two variants of one group (different MTA-STS
 * patterns keep their connections apart) share its cap: with four
 * deliveries, one connection at a time; the first variant's connection
 * goes when only the other has mail waiting, and the other's then opens.
 */
static void test_group_variants(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    static const char *const pat[] = {"*.x.test"};
    struct smtpc_msg m = msg_std(1);
    struct result r[4] = {{0}};
    group_deliver(f, &m, pat, &r[0]);
    for (int i = 1; i < 4; i++)
        group_deliver(f, &m, NULL, &r[i]);
    assert_int_equal(group_peak(f, r, 4), 1);
    for (int i = 0; i < 4; i++)
        assert_all(&r[i], 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 2);
    TESTLIB_LOOP_UNTIL(&f->run, f->srv.n_eof == 2);
}

/* test_max_msgs_per_conn - after max_msgs_per_conn messages: QUIT and a new connection. */
static void test_max_msgs_per_conn(void **state)
{
    struct testlib_smtpc *f = *state;
    f->cfg.max_conns_per_dest = 1;
    f->cfg.max_msgs_per_conn = 2;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        deliver(f, &m, &r[i]);
    TESTLIB_LOOP_UNTIL(&f->run, r[0].calls + r[1].calls + r[2].calls == 3);
    for (int i = 0; i < 3; i++)
        assert_all(&r[i], 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 2);
    assert_true(testlib_nexthop_received(&f->srv, "QUIT\r\n"));
}

/* test_idle_timeout - an idle connection says QUIT and closes. */
static void test_idle_timeout(void **state)
{
    struct testlib_smtpc *f = *state;
    f->cfg.idle_timeout_ms = 20;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    TESTLIB_LOOP_UNTIL(&f->run, f->srv.n_eof == 1);
    assert_true(testlib_nexthop_received(&f->srv, ".\r\nQUIT\r\n"));
    assert_null(f->srv.conns);
    /* The destination is still usable: a new connection. */
    struct result r2 = {0};
    deliver(f, &m, &r2);
    TESTLIB_LOOP_UNTIL(&f->run, r2.calls == 1);
    assert_all(&r2, 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 2);
}

/* test_close_queued - pool close with jobs queued: each callback once, TEMP "shutdown". */
static void test_close_queued(void **state)
{
    struct testlib_smtpc *f = *state;
    f->cfg.max_conns_per_dest = 1;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(2);
    struct result r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        deliver(f, &m, &r[i]);
    smtpc_pool_close(f->pool, testlib_smtpc_pool_closed_cb, f);
    for (int i = 0; i < 3; i++) {
        assert_all(&r[i], 2, SMTPC_TEMP, 0);
        assert_string_equal(r[i].r[0].text, "shutdown");
        assert_int_equal(r[i].tls_state, SMTPC_TLS_STATE_NO_CONNECTION);
    }
    assert_false(f->pool_closed); /* closed_cb runs later, from the loop */
    assert_int_equal(smtpc_pool_deliver(f->pool, "127.0.0.1", f->srv.port, &m, done_cb, &r[0]),
                     HAMR_ESHUTDOWN);
    TESTLIB_LOOP_UNTIL(&f->run, f->pool_closed);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r[i].calls, 1);
}

/* test_close_running - pool close with one job running and two queued. */
static void test_close_running(void **state)
{
    struct testlib_smtpc *f = *state;
    f->cfg.max_conns_per_dest = 1;
    testlib_nexthop_override(&f->srv, "DATA", "!none", 0);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        deliver(f, &m, &r[i]);
    TESTLIB_LOOP_UNTIL(&f->run, testlib_nexthop_received(&f->srv, "DATA\r\n"));
    assert_int_equal(r[0].calls, 0);
    smtpc_pool_close(f->pool, testlib_smtpc_pool_closed_cb, f);
    TESTLIB_LOOP_UNTIL(&f->run, f->pool_closed);
    for (int i = 0; i < 3; i++) {
        assert_all(&r[i], 1, SMTPC_TEMP, 0);
        assert_string_equal(r[i].r[0].text, "shutdown");
    }
}

/* close_from_cb - a callback that closes the pool. */
struct close_from_cb {
    struct testlib_smtpc *f;
    struct result r;
};

static void close_from_cb_done(void *arg, const struct smtpc_result *res)
{
    struct close_from_cb *c = arg;
    done_cb(&c->r, res);
    smtpc_pool_close(c->f->pool, testlib_smtpc_pool_closed_cb, c->f);
}

/* test_close_from_callback - closing the pool inside a delivery callback is safe. */
static void test_close_from_callback(void **state)
{
    struct testlib_smtpc *f = *state;
    f->cfg.max_conns_per_dest = 1;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct close_from_cb c = {.f = f};
    struct result r2 = {0};
    assert_int_equal(
        smtpc_pool_deliver(f->pool, "127.0.0.1", f->srv.port, &m, close_from_cb_done, &c), 0);
    deliver(f, &m, &r2);
    TESTLIB_LOOP_UNTIL(&f->run, f->pool_closed);
    assert_all(&c.r, 1, SMTPC_OK, 250);
    assert_all(&r2, 1, SMTPC_TEMP, 0);
    assert_string_equal(r2.r[0].text, "shutdown");
}

/* test_invalid - bad arguments are refused and the callback never runs. */
static void test_invalid(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    static const char *const bad_rcpt[] = {"a@x.test\r\nRSET"};
    static const char *const angle_rcpt[] = {"a@x.test>"};
    static const char *const empty_rcpt[] = {""};
    struct smtpc_msg ok = msg_std(1);
    struct smtpc_msg msgs[5] = {ok, ok, ok, ok, ok};
    msgs[0].rcpts = bad_rcpt;
    msgs[1].rcpts = angle_rcpt;
    msgs[2].rcpts = empty_rcpt;
    msgs[3].sender = "s@y\n";
    msgs[4].n_rcpts = 0;
    struct result r = {0};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(
            smtpc_pool_deliver(f->pool, "127.0.0.1", f->srv.port, &msgs[i], done_cb, &r),
            HAMR_EINVAL);
    assert_int_equal(smtpc_pool_deliver(f->pool, "", f->srv.port, &ok, done_cb, &r), HAMR_EINVAL);
    assert_int_equal(smtpc_pool_deliver(f->pool, "127.0.0.1", 0, &ok, done_cb, &r), HAMR_EINVAL);
    assert_int_equal(smtpc_pool_deliver(f->pool, "a b", 25, &ok, done_cb, &r), HAMR_EINVAL);
    assert_int_equal(smtpc_pool_active(f->pool), 0);
    for (int i = 0; i < 5; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(r.calls, 0);
    assert_int_equal(f->srv.n_accepted, 0);
}

/* test_null_sender - MAIL FROM:<> for bounces. */
static void test_null_sender(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    m.sender = "";
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_true(testlib_nexthop_received(&f->srv, "MAIL FROM:<> SIZE="));
}

/* test_large_body - a body over several 64 KiB chunks arrives whole and stuffed. */
static void test_large_body(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    size_t len = 300 * 1024;
    uint8_t *body = malloc(len);
    assert_non_null(body);
    for (size_t i = 0; i < len; i++)
        body[i] = (i % 100 == 99) ? '\n' : (i % 100 == 0 ? '.' : 'a');
    struct smtpc_msg m = msg_std(1);
    m.body = body;
    m.body_len = len;
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    /* Each 100-byte input line became "." + line + CRLF: 102 bytes. */
    size_t lines = len / 100;
    assert_true(testlib_nexthop_received(&f->srv, "\r\n..aaa"));
    assert_int_equal(f->srv.n_messages, 1);
    const char *data_start = NULL;
    for (size_t i = 0; i + 6 <= f->srv.rx.len; i++) {
        if (memcmp(f->srv.rx.data + i, "DATA\r\n", 6) == 0) {
            data_start = (const char *)f->srv.rx.data + i + 6;
            break;
        }
    }
    assert_non_null(data_start);
    size_t body_wire = f->srv.rx.len - (size_t)(data_start - (const char *)f->srv.rx.data);
    assert_int_equal(body_wire, lines * 102 + 3);
    free(body);
}

/* ------------------------------------------------------------------------ */
/* Bodies from a source, chunk after chunk                                  */
/* ------------------------------------------------------------------------ */

/*
 * fake_source - a body handed out chunk bytes at a time, each answer from
 * a zero timer on the test loop (never inside read), each chunk in a fresh
 * allocation freed at the next (ASan catches a client that keeps one).
 * fail_at: the read (from 0) that fails with fail_status, -1 for none;
 * sync_fail: read returns it at once; hold: never answer (the test ends
 * the attempt and expects a cancel). Freed by fake_source_close.
 */
struct fake_source {
    struct smtpc_source src;
    uv_timer_t timer;
    const uint8_t *body;
    size_t len, pos, chunk;
    int fail_at;
    int fail_status;
    int sync_fail;
    bool hold;
    int reads, answers, cancels;
    bool withdraw; /* smtpc_source.withdrawn says so */
    int withdrawn_asked;
    bool pending;
    smtpc_source_cb cb;
    void *cb_arg;
    uint8_t *piece;
};

static void fake_source_timer_cb(uv_timer_t *t)
{
    struct fake_source *fs = t->data;
    assert_true(fs->pending);
    fs->pending = false;
    fs->answers++;
    free(fs->piece);
    fs->piece = NULL;
    if (fs->reads - 1 == fs->fail_at) {
        fs->cb(fs->cb_arg, fs->fail_status, NULL, 0, false);
        return;
    }
    size_t n = fs->len - fs->pos < fs->chunk ? fs->len - fs->pos : fs->chunk;
    fs->piece = malloc(n + 1);
    assert_non_null(fs->piece);
    memcpy(fs->piece, fs->body + fs->pos, n);
    fs->pos += n;
    fs->cb(fs->cb_arg, 0, fs->piece, n, fs->pos == fs->len);
}

static int fake_source_read(void *data, smtpc_source_cb cb, void *cb_arg)
{
    struct fake_source *fs = data;
    assert_false(fs->pending);
    fs->reads++;
    if (fs->sync_fail != 0)
        return fs->sync_fail;
    fs->pending = true;
    fs->cb = cb;
    fs->cb_arg = cb_arg;
    if (!fs->hold)
        uv_timer_start(&fs->timer, fake_source_timer_cb, 0, 0);
    return 0;
}

static void fake_source_cancel(void *data)
{
    struct fake_source *fs = data;
    assert_true(fs->pending);
    fs->pending = false;
    fs->cancels++;
    uv_timer_stop(&fs->timer);
}

/* fake_source_new - a source over body (len, borrowed) on f's loop. */
static struct fake_source *fake_source_new(struct testlib_smtpc *f,
                                           const void *body,
                                           size_t len,
                                           size_t chunk)
{
    struct fake_source *fs = calloc(1, sizeof(*fs));
    assert_non_null(fs);
    uv_timer_init(&f->loop, &fs->timer);
    fs->timer.data = fs;
    fs->body = body;
    fs->len = len;
    fs->chunk = chunk;
    fs->fail_at = -1;
    fs->src =
        (struct smtpc_source){.data = fs, .read = fake_source_read, .cancel = fake_source_cancel};
    return fs;
}

static void fake_source_closed_cb(uv_handle_t *h)
{
    struct fake_source *fs = h->data;
    free(fs->piece);
    free(fs);
}

/* fake_source_close - no chunk may be outstanding; freed once the timer has closed. */
static void fake_source_close(struct fake_source *fs)
{
    assert_false(fs->pending);
    uv_close((uv_handle_t *)&fs->timer, fake_source_closed_cb);
}

/* msg_source - msg_std(n_rcpts) with its body from fs. */
static struct smtpc_msg msg_source(size_t n_rcpts, struct fake_source *fs)
{
    struct smtpc_msg m = msg_std(n_rcpts);
    m.body = NULL;
    m.body_len = fs->len;
    m.source = &fs->src;
    return m;
}

/* fake_source_withdrawn - smtpc_source.withdrawn: what the test set. */
static bool fake_source_withdrawn(void *data)
{
    struct fake_source *fs = data;
    fs->withdrawn_asked++;
    return fs->withdraw;
}

/*
 * test_source_withdrawn - a delivery queued behind another (one connection)
 * whose source says it is withdrawn before it gets the connection ends
 * without a word to the next hop, TEMP "withdrawn before it started"; the
 * next one is delivered.
 */
static void test_source_withdrawn(void **state)
{
    struct testlib_smtpc *f = *state;
    f->cfg.max_conns_per_dest = 1;
    testlib_smtpc_pool_start(f);
    size_t body_len = sizeof(body_std) - 1;
    struct fake_source *fs[3];
    struct smtpc_msg m[3];
    struct result r[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        fs[i] = fake_source_new(f, body_std, body_len, 1000);
        fs[i]->src.withdrawn = fake_source_withdrawn;
        m[i] = msg_source(1, fs[i]);
        deliver(f, &m[i], &r[i]);
    }
    fs[1]->withdraw = true;
    TESTLIB_LOOP_UNTIL(&f->run, r[0].calls + r[1].calls + r[2].calls == 3);
    assert_all(&r[0], 1, SMTPC_OK, 250);
    assert_all(&r[1], 1, SMTPC_TEMP, 0);
    assert_string_equal(r[1].r[0].text, "withdrawn before it started");
    assert_int_equal(fs[1]->reads, 0);
    assert_true(fs[1]->withdrawn_asked > 0);
    assert_all(&r[2], 1, SMTPC_OK, 250);
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(f->srv.n_messages, 2);
    for (int i = 0; i < 3; i++)
        fake_source_close(fs[i]);
}

/* data_of - what the next hop read after the first "DATA\r\n" (NULL if none), and its length. */
static const char *data_of(const struct testlib_smtpc *f, size_t *len)
{
    for (size_t i = 0; i + 6 <= f->srv.rx.len; i++) {
        if (memcmp(f->srv.rx.data + i, "DATA\r\n", 6) == 0) {
            *len = f->srv.rx.len - i - 6;
            return (const char *)f->srv.rx.data + i + 6;
        }
    }
    return NULL;
}

/* test_source_chunks - the body from a source, in chunks of any size: the same bytes on the wire.
 */
static void test_source_chunks(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    static const size_t chunks[] = {1, 2, 3, 5, 13, 1000};
    size_t body_len = sizeof(body_std) - 1;
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        struct fake_source *fs = fake_source_new(f, body_std, body_len, chunks[c]);
        struct smtpc_msg m = msg_source(1, fs);
        struct result r = {0};
        size_t rx0 = f->srv.rx.len;
        deliver(f, &m, &r);
        TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
        assert_all(&r, 1, SMTPC_OK, 250);
        assert_int_equal(f->srv.n_messages, c + 1);
        assert_int_equal(fs->reads, (int)((body_len + chunks[c] - 1) / chunks[c]));
        assert_int_equal(fs->cancels, 0);
        /* this message's bytes end with its body's wire form */
        size_t wire = sizeof(body_std_wire) - 1;
        assert_true(f->srv.rx.len - rx0 > wire);
        assert_memory_equal(f->srv.rx.data + f->srv.rx.len - wire, body_std_wire, wire);
        fake_source_close(fs);
    }
}

/*
 * test_source_fails - a source that fails at its first, a middle or its
 * last chunk (as a SHA-256 that does not match at the end would), or whose
 * read fails at once: the final dot is never sent, the connection is
 * dropped, every recipient is SMTPC_TEMP; the next message goes through on
 * a new connection.
 */
static void test_source_fails(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    size_t len = 10000;
    char *body = malloc(len);
    assert_non_null(body);
    for (size_t i = 0; i < len; i++)
        body[i] = i % 50 == 49 ? '\n' : i % 50 == 0 ? '.' : 'b';
    static const struct {
        int fail_at; /* 1000-byte chunks: 9 is the last */
        int sync_fail;
    } cases[] = {{0, 0}, {3, 0}, {9, 0}, {0, HAMR_ENOMEM}};
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        int fail_at = cases[k].fail_at;
        struct fake_source *fs = fake_source_new(f, body, len, 1000);
        fs->fail_at = fail_at;
        fs->fail_status = HAMR_ECORRUPT;
        fs->sync_fail = cases[k].sync_fail;
        struct smtpc_msg m = msg_source(2, fs);
        struct result r = {0};
        unsigned eof0 = f->srv.n_eof, msgs0 = f->srv.n_messages;
        deliver(f, &m, &r);
        TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
        assert_all(&r, 2, SMTPC_TEMP, 0);
        assert_non_null(strstr(r.r[0].text, "dropped before the end of data"));
        assert_int_equal(fs->reads, fail_at + 1);
        assert_int_equal(fs->answers, cases[k].sync_fail != 0 ? 0 : fail_at + 1);
        assert_int_equal(fs->cancels, 0);
        TESTLIB_LOOP_UNTIL(&f->run, f->srv.n_eof == eof0 + 1);
        assert_int_equal(f->srv.n_messages, msgs0);
        size_t dlen = 0;
        const char *d = data_of(f, &dlen);
        assert_non_null(d);
        /* What went out is the chunks before the failed one, and no end of data. */
        assert_true(dlen < 5 || memcmp(d + dlen - 5, "\r\n.\r\n", 5) != 0);
        assert_int_equal(dlen, (size_t)fail_at * 1000 / 50 * 52);
        fake_source_close(fs);
        /* The pool goes on: a good message on a fresh connection. */
        buf_reset(&f->srv.rx);
        struct smtpc_msg ok = msg_std(1);
        struct result r2 = {0};
        deliver(f, &ok, &r2);
        TESTLIB_LOOP_UNTIL(&f->run, r2.calls == 1);
        assert_all(&r2, 1, SMTPC_OK, 250);
        assert_int_equal(f->srv.n_messages, msgs0 + 1);
        buf_reset(&f->srv.rx);
    }
    free(body);
}

/* test_source_cancel - the pool closes while a chunk is awaited: cancelled once, never answered. */
static void test_source_cancel(void **state)
{
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    struct fake_source *fs = fake_source_new(f, body_std, sizeof(body_std) - 1, 4);
    fs->hold = true;
    struct smtpc_msg m = msg_source(1, fs);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, fs->pending);
    smtpc_pool_close(f->pool, testlib_smtpc_pool_closed_cb, f);
    assert_all(&r, 1, SMTPC_TEMP, 0);
    assert_string_equal(r.r[0].text, "shutdown");
    assert_int_equal(fs->cancels, 1);
    TESTLIB_LOOP_UNTIL(&f->run, f->pool_closed);
    assert_int_equal(fs->answers, 0);
    assert_int_equal(f->srv.n_messages, 0);
    fake_source_close(fs);
}

/* ------------------------------------------------------------------------ */
/* Next hops with several addresses                                         */
/* ------------------------------------------------------------------------ */

/*
 * multi - the client fixture with a fake resolver in its configuration and
 * a second next hop, other, that a test may start on any loopback address.
 * f->srv (127.0.0.1) is the next hop that takes the mail.
 */
struct multi {
    struct testlib_smtpc *f;
    struct testlib_resolver *fr;
    struct testlib_nexthop other;
    bool other_started;
};

static int setup_multi(void **state)
{
    struct multi *mf = calloc(1, sizeof(*mf));
    assert_non_null(mf);
    mf->f = testlib_smtpc_new(NULL);
    mf->fr = testlib_resolver_new(&mf->f->loop);
    mf->f->cfg.resolver = &mf->fr->r;
    *state = mf;
    return 0;
}

/* multi_other - start the second next hop on ip, port 0. */
static struct testlib_nexthop *multi_other(struct multi *mf, const char *ip)
{
    testlib_nexthop_start_on(&mf->other, &mf->f->loop, NULL, ip, 0);
    mf->other_started = true;
    return &mf->other;
}

/* teardown_multi - the pool closes first (a pending resolve is cancelled), then everything. */
static int teardown_multi(void **state)
{
    struct multi *mf = *state;
    if (mf->other_started)
        testlib_nexthop_stop(&mf->other);
    testlib_resolver_close(mf->fr); /* freed by the loop, after the pool's close */
    testlib_smtpc_free(mf->f);
    if (mf->other_started) {
        assert_true(mf->other.listener_closed);
        assert_null(mf->other.conns);
        testlib_nexthop_free(&mf->other);
    }
    free(mf);
    *state = NULL;
    return 0;
}

/* deliver_via - queue m to "example.test" (the fake resolver's to answer) at f->srv's port. */
static void deliver_via(struct multi *mf, const struct smtpc_msg *m, struct result *r)
{
    struct testlib_smtpc *f = mf->f;
    assert_int_equal(smtpc_pool_deliver(f->pool, "example.test", f->srv.port, m, done_cb, r), 0);
    assert_int_equal(r->calls, 0);
}

/* run_via - start the pool, deliver msg_std(n_rcpts) with deliver_via, wait for the callback. */
static void run_via(struct multi *mf, size_t n_rcpts, struct result *r)
{
    struct testlib_smtpc *f = mf->f;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(n_rcpts);
    deliver_via(mf, &m, r);
    TESTLIB_LOOP_UNTIL(&f->run, r->calls == 1);
}

/* assert_delivered_by_srv - r is OK 250 from f->srv, reached as host at the n_tried-th target. */
static void assert_delivered_by_srv(struct multi *mf,
                                    const struct result *r,
                                    const char *host,
                                    unsigned n_tried)
{
    char remote[64];
    snprintf(remote, sizeof(remote), "127.0.0.1:%u", mf->f->srv.port);
    assert_all(r, 1, SMTPC_OK, 250);
    assert_string_equal(r->remote, remote);
    assert_string_equal(r->host, host);
    assert_int_equal(r->n_tried, n_tried);
    assert_int_equal(mf->f->srv.n_messages, 1);
    assert_int_equal(mf->fr->calls, 1);
    assert_string_equal(mf->fr->nexthop, "example.test");
    assert_int_equal(mf->fr->port, mf->f->srv.port);
}

/* test_next_after_refused - nothing listens at the first address: the second takes the mail. */
static void test_next_after_refused(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.3", f->srv.port);
    testlib_resolver_add(mf->fr, "mx2.example.test", "127.0.0.1", f->srv.port);
    struct result r = {0};
    run_via(mf, 1, &r);
    assert_delivered_by_srv(mf, &r, "mx2.example.test", 2);
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED);
    assert_int_equal(f->srv.n_accepted, 1);
}

/* greeting_case - how the first address refuses before EHLO is accepted. */
struct greeting_case {
    const char *label;
    const char *prefix; /* the line answered by reply on the first address */
    const char *reply;
    uint64_t connect_timeout_ms; /* 0: the fixture's */
};

/*
 * test_next_after_greeting - a refused greeting (421, 554), a greeting that
 * never comes, a refused EHLO (4xx) and HELO, a 421 to EHLO, a connection
 * lost after the greeting: the second address takes the mail.
 */
static void test_next_after_greeting(void **state)
{
    (void)state;
    static const struct greeting_case cases[] = {
        {"421 greeting", "<greeting>", "421 4.3.2 busy\r\n", 0},
        {"554 greeting", "<greeting>", "554 5.7.1 go away\r\n", 0},
        {"no greeting", "<greeting>", "!none", 100},
        {"450 to EHLO", "EHLO", "450 4.7.1 later\r\n", 0},
        {"421 to EHLO", "EHLO", "421 4.3.2 closing\r\n", 0},
        {"EOF after EHLO", "EHLO", "!close", 0},
        {"HELO refused", "HELO", "550 5.7.1 no\r\n", 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        void *st = NULL;
        setup_multi(&st);
        struct multi *mf = st;
        struct testlib_smtpc *f = mf->f;
        struct testlib_nexthop *bad = multi_other(mf, "127.0.0.2");
        if (strcmp(cases[i].prefix, "HELO") == 0)
            testlib_nexthop_override(bad, "EHLO", "502 5.5.2 what\r\n", 0);
        testlib_nexthop_override(bad, cases[i].prefix, cases[i].reply, 0);
        if (cases[i].connect_timeout_ms > 0)
            f->cfg.connect_timeout_ms = cases[i].connect_timeout_ms;
        testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.2", bad->port);
        testlib_resolver_add(mf->fr, "mx2.example.test", "127.0.0.1", f->srv.port);
        struct result r = {0};
        run_via(mf, 1, &r);
        print_message("case %s\n", cases[i].label);
        assert_delivered_by_srv(mf, &r, "mx2.example.test", 2);
        assert_int_equal(bad->n_accepted, 1);
        assert_int_equal(bad->n_mail_plain, 0);
        teardown_multi(&st);
    }
}

/* test_rcpt_perm_stays - a 5xx to RCPT on the first address is the answer: no second address. */
static void test_rcpt_perm_stays(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    struct testlib_nexthop *other = multi_other(mf, "127.0.0.2");
    testlib_nexthop_override(&f->srv, "RCPT", "550 5.1.1 no such user\r\n", 0);
    testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.1", f->srv.port);
    testlib_resolver_add(mf->fr, "mx2.example.test", "127.0.0.2", other->port);
    struct result r = {0};
    run_via(mf, 1, &r);
    assert_all(&r, 1, SMTPC_PERM, 550);
    assert_string_equal(r.host, "mx1.example.test");
    assert_int_equal(r.n_tried, 1);
    assert_int_equal(other->n_accepted, 0);
}

/* test_mail_temp_stays - a 4xx to MAIL, after EHLO: deferred, no second address. */
static void test_mail_temp_stays(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    struct testlib_nexthop *other = multi_other(mf, "127.0.0.2");
    testlib_nexthop_override(&f->srv, "MAIL", "451 4.3.0 later\r\n", 0);
    testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.1", f->srv.port);
    testlib_resolver_add(mf->fr, "mx2.example.test", "127.0.0.2", other->port);
    struct result r = {0};
    run_via(mf, 1, &r);
    assert_all(&r, 1, SMTPC_TEMP, 451);
    assert_int_equal(r.n_tried, 1);
    assert_int_equal(other->n_accepted, 0);
}

/* test_address_limit - address_limit 1: the refused first address is the last one tried. */
static void test_address_limit(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    f->cfg.address_limit = 1;
    testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.3", f->srv.port);
    testlib_resolver_add(mf->fr, "mx2.example.test", "127.0.0.1", f->srv.port);
    struct result r = {0};
    run_via(mf, 2, &r);
    assert_all(&r, 2, SMTPC_TEMP, 0);
    assert_non_null(strstr(r.r[0].text, "connect to 127.0.0.3:"));
    assert_string_equal(r.host, "mx1.example.test");
    assert_non_null(strstr(r.remote, "127.0.0.3:"));
    assert_int_equal(r.n_tried, 1);
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NO_CONNECTION);
    assert_int_equal(f->srv.n_accepted, 0);
}

/*
 * test_session_limit - session_limit 1: a refused connect is no session, so
 * the second address is tried; its 421 greeting is one, so the third is not.
 */
static void test_session_limit(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    f->cfg.session_limit = 1;
    struct testlib_nexthop *bad = multi_other(mf, "127.0.0.2");
    testlib_nexthop_override(bad, "<greeting>", "421 4.3.2 busy\r\n", 0);
    testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.3", f->srv.port);
    testlib_resolver_add(mf->fr, "mx2.example.test", "127.0.0.2", bad->port);
    testlib_resolver_add(mf->fr, "mx3.example.test", "127.0.0.1", f->srv.port);
    struct result r = {0};
    run_via(mf, 1, &r);
    assert_all(&r, 1, SMTPC_TEMP, 421);
    assert_string_equal(r.r[0].text, "4.3.2 busy");
    assert_string_equal(r.host, "mx2.example.test");
    assert_int_equal(r.n_tried, 2);
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_REFUSED_BEFORE_EHLO);
    assert_int_equal(bad->n_accepted, 1);
    assert_int_equal(f->srv.n_accepted, 0);
}

/* test_all_refused - every address refuses: the last one's error, every address tried. */
static void test_all_refused(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    struct testlib_nexthop *bad = multi_other(mf, "127.0.0.2");
    testlib_nexthop_override(bad, "<greeting>", "554 5.7.1 go away\r\n", 0);
    testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.2", bad->port);
    testlib_resolver_add(mf->fr, "mx2.example.test", "127.0.0.3", f->srv.port);
    struct result r = {0};
    run_via(mf, 1, &r);
    assert_all(&r, 1, SMTPC_TEMP, 0);
    assert_non_null(strstr(r.r[0].text, "connect to 127.0.0.3:"));
    assert_string_equal(r.host, "mx2.example.test");
    assert_int_equal(r.n_tried, 2);
    assert_int_equal(bad->n_accepted, 1);
}

/*
 * test_move_on_within_conns - max_conns_per_dest 1: the job moves on within
 * the one connection allowed, and the next job reuses that connection
 * without a new resolve.
 */
static void test_move_on_within_conns(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    f->cfg.max_conns_per_dest = 1;
    testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.3", f->srv.port);
    testlib_resolver_add(mf->fr, "mx2.example.test", "127.0.0.1", f->srv.port);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r[2] = {{0}};
    deliver_via(mf, &m, &r[0]);
    deliver_via(mf, &m, &r[1]);
    TESTLIB_LOOP_UNTIL(&f->run, r[0].calls + r[1].calls == 2);
    assert_all(&r[0], 1, SMTPC_OK, 250);
    assert_all(&r[1], 1, SMTPC_OK, 250);
    assert_string_equal(r[1].host, "mx2.example.test");
    assert_int_equal(r[0].n_tried, 2);
    assert_int_equal(r[1].n_tried, 1); /* the connection it was given */
    assert_int_equal(mf->fr->calls, 1);
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(f->srv.n_messages, 2);
}

/* route_case - a route that decides the delivery without a connection. */
struct route_case {
    enum smtpc_status status;
    unsigned code;
    const char *text;
};

/* test_route_fails - TEMP and PERM routes: every recipient gets them, nothing connects. */
static void test_route_fails(void **state)
{
    (void)state;
    static const struct route_case cases[] = {
        {SMTPC_PERM, 556, "5.1.10 example.test does not accept mail (nullMX)"},
        {SMTPC_TEMP, 451, "4.4.3 example.test: DNS lookup failed, try again"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        void *st = NULL;
        setup_multi(&st);
        struct multi *mf = st;
        struct testlib_smtpc *f = mf->f;
        testlib_resolver_fail(mf->fr, cases[i].status, cases[i].code, cases[i].text);
        struct result r = {0};
        run_via(mf, 3, &r);
        assert_all(&r, 3, cases[i].status, cases[i].code);
        for (size_t k = 0; k < 3; k++)
            assert_string_equal(r.r[k].text, cases[i].text);
        assert_string_equal(r.remote, "");
        assert_string_equal(r.host, "");
        assert_int_equal(r.n_tried, 0);
        assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NO_CONNECTION);
        assert_int_equal(f->srv.n_accepted, 0);
        assert_int_equal(smtpc_pool_active(f->pool), 0);
        teardown_multi(&st);
    }
}

/* test_resolver_cancel - the pool closes while the resolver owes its answer: cancelled, once. */
static void test_resolver_cancel(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    mf->fr->hold = true;
    testlib_resolver_add(mf->fr, "mx1.example.test", "127.0.0.1", f->srv.port);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r = {0};
    deliver_via(mf, &m, &r);
    /*
     * Non-blocking turns: a blocking one would wait in poll, after the kick
     * called resolve, for the client's connect deadline, which cancels.
     */
    for (int i = 0; i < 100 && mf->fr->calls == 0; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(mf->fr->calls, 1);
    assert_true(mf->fr->pending);
    smtpc_pool_close(f->pool, testlib_smtpc_pool_closed_cb, f);
    assert_all(&r, 1, SMTPC_TEMP, 0);
    assert_string_equal(r.r[0].text, "shutdown");
    assert_int_equal(mf->fr->cancels, 1);
    assert_false(mf->fr->pending);
    TESTLIB_LOOP_UNTIL(&f->run, f->pool_closed);
    assert_int_equal(r.calls, 1);
    assert_int_equal(mf->fr->answers, 0);
    assert_int_equal(f->srv.n_accepted, 0);
}

/* test_resolver_timeout - the resolver never answers: the connect timeout, and a cancel. */
static void test_resolver_timeout(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    f->cfg.connect_timeout_ms = 50;
    mf->fr->hold = true;
    struct result r = {0};
    run_via(mf, 1, &r);
    assert_all(&r, 1, SMTPC_TEMP, 0);
    assert_string_equal(r.r[0].text, "timeout resolving host");
    assert_int_equal(r.n_tried, 0);
    assert_int_equal(mf->fr->cancels, 1);
    assert_int_equal(mf->fr->answers, 0);
}

/*
 * test_hostname_addresses - no resolver: every address getaddrinfo gives
 * for "localhost" is tried in order. The next hop listens on the last of
 * them only, so each one before it refuses (with one address, it is the
 * only try).
 */
static void test_hostname_addresses(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    f->cfg.resolver = NULL;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    assert_int_equal(getaddrinfo("localhost", "25", &hints, &res), 0);
    char last[64] = "";
    unsigned n = 0;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, last, sizeof(last));
        else
            uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, last, sizeof(last));
        n++;
    }
    freeaddrinfo(res);
    assert_true(n >= 1 && n <= 5);
    struct testlib_nexthop *srv = multi_other(mf, last);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r = {0};
    assert_int_equal(smtpc_pool_deliver(f->pool, "localhost", srv->port, &m, done_cb, &r), 0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_string_equal(r.host, "localhost");
    assert_int_equal(r.n_tried, n);
    char remote[128];
    snprintf(remote, sizeof(remote), strchr(last, ':') ? "[%s]:%u" : "%s:%u", last, srv->port);
    assert_string_equal(r.remote, remote);
    assert_int_equal(srv->n_messages, 1);
    assert_int_equal(mf->fr->calls, 0);
}

/* test_literals - no resolver: IP literals, bare or in brackets, are their own one target. */
static void test_literals(void **state)
{
    struct multi *mf = *state;
    struct testlib_smtpc *f = mf->f;
    f->cfg.resolver = NULL;
    struct testlib_nexthop *srv6 = multi_other(mf, "::1");
    testlib_smtpc_pool_start(f);
    const struct {
        const char *nexthop;
        const char *host;
        const char *ip;
        uint16_t port;
    } cases[] = {
        {"127.0.0.1", "127.0.0.1", "127.0.0.1", f->srv.port},
        {"[127.0.0.1]", "127.0.0.1", "127.0.0.1", f->srv.port},
        {"::1", "::1", "[::1]", srv6->port},
        {"[::1]", "::1", "[::1]", srv6->port},
        {"[IPv6:::1]", "::1", "[::1]", srv6->port},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct smtpc_msg m = msg_std(1);
        struct result r = {0};
        assert_int_equal(
            smtpc_pool_deliver(f->pool, cases[i].nexthop, cases[i].port, &m, done_cb, &r), 0);
        TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
        print_message("case %s\n", cases[i].nexthop);
        assert_all(&r, 1, SMTPC_OK, 250);
        assert_string_equal(r.host, cases[i].host);
        char remote[128];
        snprintf(remote, sizeof(remote), "%s:%u", cases[i].ip, cases[i].port);
        assert_string_equal(r.remote, remote);
        assert_int_equal(r.n_tried, 1);
    }
    assert_int_equal(f->srv.n_messages, 2);
    assert_int_equal(srv6->n_messages, 3);
}

/* ------------------------------------------------------------------------ */
/* CHUNKING: the body by BDAT                                               */
/* ------------------------------------------------------------------------ */

static const char srv_ehlo_chunking[] =
    "250-test.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-DSN\r\n250 CHUNKING\r\n";
static const char srv_ehlo_chunking_unpipelined[] = "250-test.example\r\n250 CHUNKING\r\n";
/* body_std as BDAT sends it: no dot-stuffing, no final dot. */
static const char body_std_bdat[] = "Subject: t\r\n\r\n.hidden\r\nline\r\n.\r\nend\r\n";

/* assert_bdat_body - the next hop read exactly want (len octets) in BDAT chunks, and no DATA. */
static void assert_bdat_body(const struct testlib_smtpc *f, const void *want, size_t len)
{
    assert_int_equal(f->srv.bdat_body.len, len);
    if (len > 0)
        assert_memory_equal(f->srv.bdat_body.data, want, len);
    assert_false(testlib_nexthop_received(&f->srv, "DATA\r\n"));
    assert_true(testlib_nexthop_received(&f->srv, " LAST\r\n"));
}

/*
 * test_chunking_pipelined - CHUNKING and PIPELINING: MAIL and RCPTs in one
 * write, then one "BDAT n LAST" with the body as it is (lines that start
 * with '.' too); DSN offered, so the recipients are dsn_passed.
 */
static void test_chunking_pipelined(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_chunking;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(2);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 2, SMTPC_OK, 250);
    assert_string_equal(r.r[0].text, "2.0.0 queued");
    assert_true(r.r[0].dsn_passed && r.r[1].dsn_passed);
    char want[512];
    int n = snprintf(want, sizeof(want),
                     "EHLO client.test\r\n"
                     "MAIL FROM:<s@y.test> SIZE=%zu\r\n"
                     "RCPT TO:<a@x.test>\r\n"
                     "RCPT TO:<b@x.test>\r\n"
                     "BDAT %zu LAST\r\n%s",
                     m.body_len, sizeof(body_std_bdat) - 1, body_std_bdat);
    assert_int_equal(f->srv.rx.len, (size_t)n);
    assert_memory_equal(f->srv.rx.data, want, (size_t)n);
    assert_bdat_body(f, body_std_bdat, sizeof(body_std_bdat) - 1);
    assert_true(f->srv.n_pipelined > 0);
    assert_int_equal(f->srv.n_messages, 1);
    assert_int_equal(f->srv.n_bdat, 1);
}

/* test_chunking_unpipelined - CHUNKING alone: one command per round trip, then BDAT. */
static void test_chunking_unpipelined(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_chunking_unpipelined;
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(1);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_false(r.r[0].dsn_passed);
    char want[512];
    int n = snprintf(want, sizeof(want),
                     "EHLO client.test\r\n"
                     "MAIL FROM:<s@y.test>\r\n"
                     "RCPT TO:<a@x.test>\r\n"
                     "BDAT %zu LAST\r\n%s",
                     sizeof(body_std_bdat) - 1, body_std_bdat);
    assert_int_equal(f->srv.rx.len, (size_t)n);
    assert_memory_equal(f->srv.rx.data, want, (size_t)n);
    assert_int_equal(f->srv.n_pipelined, 0);
}

/* test_chunking_empty - an empty body, whole or from a source: "BDAT 0 LAST" alone. */
static void test_chunking_empty(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_chunking;
    testlib_smtpc_pool_start(f);
    for (int from_source = 0; from_source < 2; from_source++) {
        struct fake_source *fs = fake_source_new(f, "", 0, 1024);
        struct smtpc_msg m = from_source ? msg_source(1, fs) : msg_std(1);
        if (!from_source) {
            m.body = (const uint8_t *)"";
            m.body_len = 0;
        }
        struct result r = {0};
        size_t rx0 = f->srv.rx.len;
        deliver(f, &m, &r);
        TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
        assert_all(&r, 1, SMTPC_OK, 250);
        static const char tail[] = "RCPT TO:<a@x.test>\r\nBDAT 0 LAST\r\n";
        assert_true(f->srv.rx.len - rx0 >= sizeof(tail) - 1);
        assert_memory_equal(f->srv.rx.data + f->srv.rx.len - (sizeof(tail) - 1), tail,
                            sizeof(tail) - 1);
        assert_int_equal(fs->reads, from_source);
        fake_source_close(fs);
    }
    assert_bdat_body(f, "", 0);
    assert_int_equal(f->srv.n_messages, 2);
    assert_int_equal(f->srv.n_bdat, 2);
}

/*
 * chunking_large - a body of lines that start with '.' and end in a bare
 * LF, over four 64 KiB chunks of a source: every octet arrives in BDAT
 * chunks as it is (CRLF for the LF), the last one LAST.
 */
static void chunking_large(struct testlib_smtpc *f, const char *ehlo)
{
    f->srv.ehlo = ehlo;
    testlib_smtpc_pool_start(f);
    size_t len = 200 * 1024, lines = len / 100;
    uint8_t *body = malloc(len), *want = malloc(lines * 101);
    assert_non_null(body);
    assert_non_null(want);
    for (size_t i = 0; i < len; i++)
        body[i] = (i % 100 == 99) ? '\n' : (i % 100 == 0 ? '.' : 'a');
    for (size_t l = 0; l < lines; l++) {
        memcpy(want + l * 101, body + l * 100, 99);
        memcpy(want + l * 101 + 99, "\r\n", 2);
    }
    struct fake_source *fs = fake_source_new(f, body, len, 64 * 1024);
    struct smtpc_msg m = msg_source(1, fs);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_bdat_body(f, want, lines * 101);
    assert_int_equal(fs->reads, 4);
    assert_true(f->srv.n_bdat >= 4);
    assert_int_equal(f->srv.n_messages, 1);
    fake_source_close(fs);
    free(want);
    free(body);
}

static void test_chunking_large_pipelined(void **state)
{
    chunking_large(*state, srv_ehlo_chunking);
}

static void test_chunking_large_unpipelined(void **state)
{
    chunking_large(*state, srv_ehlo_chunking_unpipelined);
    struct testlib_smtpc *f = *state;
    assert_int_equal(f->srv.n_pipelined, 0);
}

/* test_chunking_one_chunk - a body of exactly one 64 KiB source chunk, in CRLF lines: as it is. */
static void test_chunking_one_chunk(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_chunking;
    testlib_smtpc_pool_start(f);
    size_t len = 64 * 1024;
    uint8_t *body = malloc(len);
    assert_non_null(body);
    for (size_t i = 0; i < len; i++)
        body[i] = i % 64 == 62 ? '\r' : i % 64 == 63 ? '\n' : i % 64 == 0 ? '.' : 'b';
    struct fake_source *fs = fake_source_new(f, body, len, len);
    struct smtpc_msg m = msg_source(1, fs);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 1, SMTPC_OK, 250);
    assert_bdat_body(f, body, len);
    assert_int_equal(fs->reads, 1);
    assert_true(f->srv.n_bdat >= 1 && f->srv.n_bdat <= 2);
    fake_source_close(fs);
    free(body);
}

/*
 * test_chunking_refused - a 4xx to the first of several pipelined BDAT
 * chunks decides the message; no BDAT follows the replies still owed,
 * then RSET, and the connection carries the next message.
 */
static void test_chunking_refused(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_chunking;
    testlib_nexthop_override(&f->srv, "BDAT", "452 4.3.1 full\r\n", 0);
    f->cfg.max_conns_per_dest = 1; /* the next message waits for the RSET */
    testlib_smtpc_pool_start(f);
    size_t len = 200 * 1024;
    uint8_t *body = malloc(len);
    assert_non_null(body);
    memset(body, 'x', len);
    struct fake_source *fs = fake_source_new(f, body, len, 64 * 1024);
    struct smtpc_msg m = msg_source(2, fs);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 2, SMTPC_TEMP, 452);
    assert_false(r.r[0].dsn_passed);
    assert_false(fs->pending);
    assert_false(testlib_nexthop_received(&f->srv, " LAST\r\n"));
    fake_source_close(fs);
    free(body);
    f->srv.n_ov = 0;
    struct smtpc_msg m2 = msg_std(1);
    struct result r2 = {0};
    deliver(f, &m2, &r2);
    TESTLIB_LOOP_UNTIL(&f->run, r2.calls == 1);
    assert_all(&r2, 1, SMTPC_OK, 250);
    assert_true(testlib_nexthop_received(&f->srv, "RSET\r\n"));
    assert_int_equal(f->srv.n_accepted, 1);
}

/* test_chunking_no_rcpt - no recipient accepted: no BDAT at all, RSET. */
static void test_chunking_no_rcpt(void **state)
{
    struct testlib_smtpc *f = *state;
    f->srv.ehlo = srv_ehlo_chunking;
    testlib_nexthop_override(&f->srv, "RCPT", "550 5.1.1 no\r\n", 0);
    testlib_smtpc_pool_start(f);
    struct smtpc_msg m = msg_std(2);
    struct result r = {0};
    deliver(f, &m, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_all(&r, 2, SMTPC_PERM, 550);
    TESTLIB_LOOP_UNTIL(&f->run, testlib_nexthop_received(&f->srv, "RSET\r\n"));
    assert_int_equal(f->srv.n_bdat, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_happy_pipelining, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_no_pipelining, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_helo_fallback, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_bare_line_ends, setup, testlib_smtpc_teardown),
        cmocka_unit_test(test_reply_cases),
        cmocka_unit_test(test_malformed_long),
        cmocka_unit_test_setup_teardown(test_connect_refused, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_hostname, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_size_exceeded, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_dsn_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_dsn_unpipelined, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_dsn_not_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_dsn_dot_refused, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_smtputf8_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_dsn_orcpt_unsafe, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_smtputf8_8bitmime, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_smtputf8_not_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_reuse, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_reuse_after_failure, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_serialised, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_parallel, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_group_cap, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_group_variants, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_group_hold, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_max_msgs_per_conn, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_close_queued, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_close_running, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_close_from_callback, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_invalid, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_null_sender, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_large_body, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_source_chunks, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_source_withdrawn, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_source_fails, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_source_cancel, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_chunking_pipelined, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_chunking_unpipelined, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_chunking_empty, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_chunking_large_pipelined, setup,
                                        testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_chunking_large_unpipelined, setup,
                                        testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_chunking_one_chunk, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_chunking_refused, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_chunking_no_rcpt, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_next_after_refused, setup_multi, teardown_multi),
        cmocka_unit_test(test_next_after_greeting),
        cmocka_unit_test_setup_teardown(test_rcpt_perm_stays, setup_multi, teardown_multi),
        cmocka_unit_test_setup_teardown(test_mail_temp_stays, setup_multi, teardown_multi),
        cmocka_unit_test_setup_teardown(test_address_limit, setup_multi, teardown_multi),
        cmocka_unit_test_setup_teardown(test_session_limit, setup_multi, teardown_multi),
        cmocka_unit_test_setup_teardown(test_all_refused, setup_multi, teardown_multi),
        cmocka_unit_test_setup_teardown(test_move_on_within_conns, setup_multi, teardown_multi),
        cmocka_unit_test(test_route_fails),
        cmocka_unit_test_setup_teardown(test_resolver_cancel, setup_multi, teardown_multi),
        cmocka_unit_test_setup_teardown(test_resolver_timeout, setup_multi, teardown_multi),
        cmocka_unit_test_setup_teardown(test_hostname_addresses, setup_multi, teardown_multi),
        cmocka_unit_test_setup_teardown(test_literals, setup_multi, teardown_multi),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
