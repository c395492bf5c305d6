/*
 * test_smtpd_session.c - whole SMTP dialogues against net/smtpd_session with
 * no socket: a fake transport records every reply and pause/resume/close
 * call, and a fake sink records submitted envelopes and calls back only when
 * the test steps it (never from inside submit), with 0 or any HAMR_E* code.
 *
 * Covers: greeting and EHLO keywords, the happy path with the queue id in
 * the 250 and the Received: header, RFC 2920 pipelining and pausing while a
 * submit is pending, early talkers, body pipelined before 354, order and
 * syntax errors, ESMTP parameters, size/recipient/hop/header limits, relay
 * control including the nmap smtp-open-relay forms (SECURITY.md S12),
 * max_errors, timeouts, cross-protocol input, check_mail and submit failure
 * mapping, disconnect during a pending submit, RSET, QUIT, output
 * high-water mark and server shutdown. Slow clients (SECURITY.md S14), on
 * the fake transport's clock: the minimum DATA rate cuts a client that
 * trickles (each read inside data_timeout) with 421 4.4.2 and submits
 * nothing, whether its deadline timer fires or its next octet comes late,
 * and never cuts a client at the rate; stress mode caps the waits that
 * start while the transport says it is under load, and only those.
 * The relay recipient map (SECURITY.md S20): 550 5.1.1 for unknown
 * recipients of outside clients, source routes stripped, relay clients
 * unchecked, the reject counted, a mixed transaction delivered to its
 * known recipients only, and a reload seen by a live session.
 * CHUNKING (SECURITY.md S22): BDAT in one or many chunks, pipelined and
 * split into 1-octet reads, the same message as by DATA, BDAT 0 LAST,
 * out of order (chunk read and dropped, nothing of it run), mixed with
 * DATA, bad sizes (501 and close), over the size limit, content checks
 * and the data rate.
 * Envelope extensions (SECURITY.md S11, S24): SMTPUTF8 and DSN in EHLO as
 * the sink's ext_ok says (at EHLO and at MAIL), REQUIRETLS only inside
 * TLS; SMTPUTF8, RET, ENVID, REQUIRETLS, NOTIFY and ORCPT landing in the
 * envelope (rcpt_dsn parallel to the recipients, NULL when none gave
 * any), each malformed value, each repeat, each refused when not offered;
 * ENVID and ORCPT at their longest, on lines over 512 octets; UTF-8
 * paths with and without SMTPUTF8, malformed UTF-8, U-labels under the
 * relay rules and the recipient map.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtp_addr.h"
#include "net/smtpd.h"
#include "net/smtpd_rcptmap.h"
#include "net/smtpd_reader.h"
#include "net/smtpd_session.h"
#include "tests/lib/testlib_session_io.h"

/* ------------------------------------------------------------------ */
/* Fake sink                                                           */
/* ------------------------------------------------------------------ */

#define FAKE_MAX_MSGS 4

struct fake_msg {
    char id[SMTPD_QUEUE_ID_MAX];
    char client_addr[64];
    char helo[300];
    char sender[300];
    char **rcpts;
    size_t n_rcpts;
    uint8_t *body;
    size_t body_len;
    bool body_8bit;
    bool smtputf8, requiretls;
    uint8_t ret;
    char *envid;     /* NULL when the envelope had none */
    bool has_dsn;    /* rcpt_dsn was not NULL */
    uint8_t *notify; /* n_rcpts entries, when has_dsn */
    char **orcpt;    /* n_rcpts entries (each may be NULL), when has_dsn */
};

struct fake_sink {
    bool ext_hook; /* give the session an ext_ok (else NULL: always yes) */
    bool ext_no;   /* what ext_ok answers: no */
    int ext_asks;  /* ext_ok calls */
    int check_mail_rc;
    int submit_rc; /* returned by submit itself; the callback then never runs */
    int status;    /* what the callback reports */
    int ids;
    int submits;
    int callbacks;
    const struct smtpd_envelope *pending_env;
    smtpd_sink_cb cb;
    void *cb_arg;
    struct fake_msg msgs[FAKE_MAX_MSGS];
    size_t n_msgs;
};

/* fake_sink_new_id - HAMRQ0001, HAMRQ0002, ... */
static int fake_sink_new_id(void *data, char *id, size_t idlen)
{
    struct fake_sink *k = data;
    snprintf(id, idlen, "HAMRQ%04d", ++k->ids);
    return 0;
}

/* fake_sink_check_mail - the answer the test set. */
static int fake_sink_check_mail(void *data)
{
    struct fake_sink *k = data;
    return k->check_mail_rc;
}

/* fake_sink_ext_ok - the answer the test set. */
static bool fake_sink_ext_ok(void *data)
{
    struct fake_sink *k = data;
    k->ext_asks++;
    return !k->ext_no;
}

/* fake_sink_copy_ext - the envelope extensions of env into m. */
static void fake_sink_copy_ext(struct fake_msg *m, const struct smtpd_envelope *env)
{
    m->smtputf8 = env->smtputf8;
    m->requiretls = env->requiretls;
    m->ret = env->ret;
    m->envid = env->envid != NULL ? strdup(env->envid) : NULL;
    m->has_dsn = env->rcpt_dsn != NULL;
    if (!m->has_dsn)
        return;
    m->notify = calloc(env->n_rcpts, 1);
    m->orcpt = calloc(env->n_rcpts, sizeof(char *));
    for (size_t i = 0; i < env->n_rcpts; i++) {
        m->notify[i] = env->rcpt_dsn[i].notify;
        if (env->rcpt_dsn[i].orcpt != NULL)
            m->orcpt[i] = strdup(env->rcpt_dsn[i].orcpt);
    }
}

/* fake_sink_submit - copy the envelope and hold the callback for fake_sink_step(). */
static int fake_sink_submit(void *data,
                            const struct smtpd_envelope *env,
                            smtpd_sink_cb cb,
                            void *arg)
{
    struct fake_sink *k = data;
    k->submits++;
    assert_null(k->cb); /* one submit at a time per session */
    if (k->submit_rc != 0)
        return k->submit_rc;
    assert_true(k->n_msgs < FAKE_MAX_MSGS);
    struct fake_msg *m = &k->msgs[k->n_msgs++];
    hamr_strlcpy(m->id, env->queue_id, sizeof(m->id));
    hamr_strlcpy(m->client_addr, env->client_addr, sizeof(m->client_addr));
    hamr_strlcpy(m->helo, env->helo, sizeof(m->helo));
    hamr_strlcpy(m->sender, env->sender, sizeof(m->sender));
    m->n_rcpts = env->n_rcpts;
    m->rcpts = calloc(env->n_rcpts, sizeof(char *));
    for (size_t i = 0; i < env->n_rcpts; i++)
        m->rcpts[i] = strdup(env->rcpts[i]);
    m->body = malloc(env->body_len + 1);
    memcpy(m->body, env->body, env->body_len);
    m->body[env->body_len] = '\0';
    m->body_len = env->body_len;
    m->body_8bit = env->body_8bit;
    fake_sink_copy_ext(m, env);
    k->pending_env = env;
    k->cb = cb;
    k->cb_arg = arg;
    return 0;
}

/*
 * fake_sink_step - deliver the pending callback with k->status. The
 * envelope is borrowed until now: check it is still intact first (ASan
 * reports it if it was freed early).
 */
static void fake_sink_step(struct fake_sink *k)
{
    assert_non_null(k->cb);
    const struct fake_msg *m = &k->msgs[k->n_msgs - 1];
    assert_int_equal(k->pending_env->body_len, m->body_len);
    assert_memory_equal(k->pending_env->body, m->body, m->body_len);
    assert_string_equal(k->pending_env->queue_id, m->id);
    smtpd_sink_cb cb = k->cb;
    void *arg = k->cb_arg;
    k->cb = NULL;
    k->pending_env = NULL;
    k->callbacks++;
    cb(arg, k->status);
}

/* fake_sink_free - release the recorded messages. */
static void fake_sink_free(struct fake_sink *k)
{
    for (size_t i = 0; i < k->n_msgs; i++) {
        for (size_t j = 0; j < k->msgs[i].n_rcpts; j++) {
            free(k->msgs[i].rcpts[j]);
            if (k->msgs[i].orcpt != NULL)
                free(k->msgs[i].orcpt[j]);
        }
        free(k->msgs[i].rcpts);
        free(k->msgs[i].body);
        free(k->msgs[i].envid);
        free(k->msgs[i].notify);
        free(k->msgs[i].orcpt);
    }
}

/* ------------------------------------------------------------------ */
/* Harness                                                             */
/* ------------------------------------------------------------------ */

struct harness {
    bool offer_tls; /* the transport can do STARTTLS (testlib_session_io_starttls) */
    struct smtpd_policy policy;
    struct smtpd_cidr nets[2];
    char *domains[2];
    struct testlib_session_io io;
    struct fake_sink sink;
    struct smtpd_session *s;
};

#define TEST_OUTSIDE "192.0.2.1"
#define TEST_INSIDE "10.1.2.3"

/* test_policy - the defaults of smtpd.h, with hamr.test as our domain; a recording transport. */
static void test_policy(struct harness *h)
{
    assert_int_equal(testlib_session_io_init(&h->io, true), 0);
    struct smtpd_policy *p = &h->policy;
    memset(p, 0, sizeof(*p));
    hamr_strlcpy(p->hostname, "mx.hamr.test", sizeof(p->hostname));
    h->nets[0] = (struct smtpd_cidr){.family = AF_INET, .addr = {10}, .prefix = 8};
    h->nets[1] = (struct smtpd_cidr){.family = AF_INET6, .prefix = 128};
    h->nets[1].addr[15] = 1; /* ::1 */
    h->domains[0] = "hamr.test";
    h->domains[1] = ".sub.hamr.test";
    p->relay_networks = h->nets;
    p->n_relay_networks = 2;
    p->relay_domains = h->domains;
    p->n_relay_domains = 2;
    p->message_size_limit = 10 * 1024 * 1024;
    p->recipient_limit = 1000;
    p->header_size_limit = 100 * 1024;
    p->hopcount_limit = 50;
    p->max_errors = 20;
    p->command_timeout_ms = 300000;
    p->data_timeout_ms = 200000;
}

/* test_start - a session for client; the policy may be changed before. */
static void test_start(struct harness *h, const char *client)
{
    struct smtpd_session_io io = testlib_session_io_ops(&h->io);
    io.write_queued = testlib_session_io_write_queued;
    io.now = testlib_session_io_now;
    io.stressed = testlib_session_io_stressed;
    if (h->offer_tls)
        io.starttls = testlib_session_io_starttls;
    struct smtpd_sink sink = {
        .data = &h->sink,
        .new_id = fake_sink_new_id,
        .check_mail = fake_sink_check_mail,
        .ext_ok = h->sink.ext_hook ? fake_sink_ext_ok : NULL,
        .submit = fake_sink_submit,
    };
    assert_int_equal(smtpd_session_new(&h->policy, &sink, &io, client, &h->s), 0);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_CONNECTED);
}

/* test_setup - a harness with the default policy. */
static int test_setup(void **state)
{
    struct harness *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    test_policy(h);
    *state = h;
    return 0;
}

/* test_teardown - free the session (and any held submit) and the harness. */
static int test_teardown(void **state)
{
    struct harness *h = *state;
    if (h->s != NULL) {
        h->io.released = true;
        h->s = smtpd_session_free(h->s);
    }
    /* A submit still held would be a leak under ASan: release it. */
    if (h->sink.cb != NULL)
        fake_sink_step(&h->sink);
    fake_sink_free(&h->sink);
    testlib_session_io_free(&h->io);
    free(h);
    return 0;
}

/* test_send - input text to the session. */
static void test_send(struct harness *h, const char *text)
{
    smtpd_session_input(h->s, text, strlen(text));
}

/* test_take - the output since the last take, as a string. */
static const char *test_take(struct harness *h)
{
    return testlib_session_io_take(&h->io);
}

/* test_codes - the reply codes since the last take, "250 250 354" (last line of each reply). */
static const char *test_codes(struct harness *h)
{
    static char codes[1 << 14];
    const char *p = test_take(h);
    size_t n = 0;
    codes[0] = '\0';
    while (*p) {
        const char *eol = strstr(p, "\r\n");
        assert_non_null(eol);
        if (eol - p >= 4 && p[3] == ' ')
            n += (size_t)snprintf(codes + n, sizeof(codes) - n, "%s%.3s", n ? " " : "", p);
        p = eol + 2;
    }
    return codes;
}

/* test_expect - the output since the last take is exactly want. */
#define test_expect(h, want) assert_string_equal(test_take(h), want)

/* test_ehlo - greet and EHLO; output discarded. */
static void test_ehlo(struct harness *h, const char *client)
{
    test_start(h, client);
    smtpd_session_greet(h->s);
    test_send(h, "EHLO client.example\r\n");
    test_take(h);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_READY);
}

/* test_transaction - MAIL, one RCPT, DATA, body; then the sink is stepped. */
static void test_transaction(struct harness *h, const char *rcpt, const char *body)
{
    char cmd[512];
    test_send(h, "MAIL FROM:<sender@example.org>\r\n");
    snprintf(cmd, sizeof(cmd), "RCPT TO:<%s>\r\n", rcpt);
    test_send(h, cmd);
    test_send(h, "DATA\r\n");
    assert_string_equal(test_codes(h), "250 250 354");
    test_send(h, body);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

/*
 * test_greeting_and_ehlo - 220, then the EHLO keywords: CHUNKING, SMTPUTF8
 * and DSN (no ext_ok: always yes), no STARTTLS, AUTH or REQUIRETLS.
 */
static void test_greeting_and_ehlo(void **state)
{
    struct harness *h = *state;

    test_start(h, TEST_OUTSIDE);
    assert_int_equal(h->io.timer_sets, 0);
    smtpd_session_greet(h->s);
    test_expect(h, "220 mx.hamr.test ESMTP hamr\r\n");
    assert_int_equal(h->io.timer_ms, 300000);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_GREETED);
    test_send(h, "EHLO client.example\r\n");
    test_expect(h,
                "250-mx.hamr.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n"
                "250-CHUNKING\r\n250-SMTPUTF8\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n");
    test_send(h, "HELO again.example\r\n");
    test_expect(h, "250 mx.hamr.test\r\n");
    test_send(h, "EHLO\r\n");
    test_expect(h, "501 5.5.4 Syntax: EHLO hostname\r\n");
    test_send(h, "NOOP\r\nVRFY someone\r\nHELP\r\nVRFY\r\nRSET\r\n");
    assert_string_equal(test_codes(h), "250 252 214 501 250");
    test_send(h, "noop\r\nQuit\r\n");
    test_expect(h, "250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_CLOSING);
    assert_string_equal(smtpd_state_name(SMTPD_STATE_COMMITTING), "COMMITTING");
}

/* test_happy_path - 250 queued as <id> only after the sink said 0; body identical. */
static void test_happy_path(void **state)
{
    struct harness *h = *state;
    static const char data[] = "Subject: hi\r\n\r\nHello\r\n..dot line\r\n.\r\n";
    static const char want_body[] = "Subject: hi\r\n\r\nHello\r\n.dot line\r\n";

    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<sender@example.org> BODY=8BITMIME SIZE=100\r\n");
    test_expect(h, "250 2.1.0 Ok\r\n");
    test_send(h, "RCPT TO:<user@hamr.test>\r\n");
    test_expect(h, "250 2.1.5 Ok\r\n");
    test_send(h, "DATA\r\n");
    test_expect(h, "354 End data with <CR><LF>.<CR><LF>\r\n");
    assert_int_equal(h->io.timer_ms, 200000); /* data_timeout_ms */
    test_send(h, data);
    /* Committing: no reply yet, reading paused, no client deadline. */
    test_expect(h, "");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_COMMITTING);
    assert_true(smtpd_session_submit_pending(h->s));
    assert_int_equal(h->io.pauses, 1);
    assert_true(h->io.paused);
    assert_int_equal(h->io.timer_ms, 0);
    assert_int_equal(smtpd_session_timeout_ms(h->s), 0);
    smtpd_session_timeout(h->s); /* ignored while committing */
    test_expect(h, "");

    const struct fake_msg *m = &h->sink.msgs[0];
    assert_int_equal(h->sink.submits, 1);
    assert_string_equal(m->id, "HAMRQ0001");
    assert_string_equal(m->sender, "sender@example.org");
    assert_string_equal(m->client_addr, TEST_OUTSIDE);
    assert_string_equal(m->helo, "client.example");
    assert_int_equal(m->n_rcpts, 1);
    assert_string_equal(m->rcpts[0], "user@hamr.test");
    assert_true(m->body_8bit);
    assert_false(m->smtputf8);
    assert_false(m->requiretls);
    assert_int_equal(m->ret, SMTP_RET_UNSET);
    assert_null(m->envid);
    assert_false(m->has_dsn);

    /* Received: first, then the un-stuffed data byte for byte. */
    static const char head[] =
        "Received: from client.example (192.0.2.1)\r\n"
        "\tby mx.hamr.test (hamr) with ESMTP id HAMRQ0001\r\n"
        "\tfor <user@hamr.test>; ";
    assert_true(m->body_len > sizeof(head) - 1 + sizeof(want_body) - 1);
    assert_memory_equal(m->body, head, sizeof(head) - 1);
    const char *hdr_end = strstr((const char *)m->body, " +0000\r\n");
    assert_non_null(hdr_end);
    const char *rest = hdr_end + 8;
    assert_string_equal(rest, want_body);
    assert_int_equal(m->body_len, (size_t)(rest - (const char *)m->body) + sizeof(want_body) - 1);

    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_READY);
    assert_int_equal(h->io.resumes, 1);
    assert_false(h->io.paused);
    assert_int_equal(h->io.timer_ms, 300000);
}

/* body_after_received - the message text after our Received: header. */
static const char *body_after_received(const struct fake_msg *m)
{
    const char *hdr_end = strstr((const char *)m->body, " +0000\r\n");
    assert_non_null(hdr_end);
    return hdr_end + 8;
}

/*
 * test_messages_in_one_session - a long message, then a short one, then a
 * long one again on the same connection (the body buffer is kept between
 * transactions): each body arrives exactly, nothing of the one before.
 */
static void test_messages_in_one_session(void **state)
{
    struct harness *h = *state;
    static char longer[20000];
    size_t n = 0;
    for (int i = 0; n + 80 < sizeof(longer) - 8; i++)
        n += (size_t)snprintf(longer + n, sizeof(longer) - n, "line %05d %s\r\n", i,
                              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    const char *texts[] = {longer, "short\r\n", longer};

    test_ehlo(h, TEST_OUTSIDE);
    for (size_t k = 0; k < 3; k++) {
        test_transaction(h, "user@hamr.test", texts[k]);
        test_send(h, ".\r\n");
        assert_int_equal(h->sink.submits, (int)k + 1);
        const struct fake_msg *m = &h->sink.msgs[k];
        assert_string_equal(body_after_received(m), texts[k]);
        fake_sink_step(&h->sink);
        assert_string_equal(test_codes(h), "250");
    }
}

/* test_pipelining - RFC 2920: replies in order; commands after the dot wait for the commit. */
static void test_pipelining(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    test_send(h,
              "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@hamr.test>\r\n"
              "RCPT TO:<c@x.sub.hamr.test>\r\nDATA\r\n");
    test_expect(h,
                "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                "354 End data with <CR><LF>.<CR><LF>\r\n");
    /* Body, dot and the next transaction in one read. */
    test_send(h,
              "Subject: 1\r\n\r\none\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<d@hamr.test>"
              "\r\nDATA\r\n");
    test_expect(h, "");
    assert_int_equal(h->io.pauses, 1);
    /* More input while paused is held, not parsed. */
    test_send(h, "NOOP\r\n");
    test_expect(h, "");
    assert_int_equal(h->sink.msgs[0].n_rcpts, 2);
    assert_null(strstr((const char *)h->sink.msgs[0].body, "\tfor <")); /* two recipients */
    fake_sink_step(&h->sink);
    /* The DATA was not the last of its read (NOOP followed): desync. */
    test_expect(h,
                "250 2.0.0 Ok: queued as HAMRQ0001\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                "554 5.5.0 Error: SMTP protocol synchronization\r\n");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(h->sink.submits, 1);
}

/* test_pipelining_quit_after_dot - QUIT after the dot in the same read is answered after 250. */
static void test_pipelining_quit_after_dot(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<>\r\nRCPT TO:<b@hamr.test>\r\nDATA\r\n");
    assert_string_equal(test_codes(h), "250 250 354");
    test_send(h, "x\r\n.\r\nQUIT\r\n");
    test_expect(h, "");
    assert_true(h->io.paused);
    assert_string_equal(h->sink.msgs[0].sender, "");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n221 2.0.0 Bye\r\n");
    assert_int_equal(h->io.pauses, 1);
    assert_int_equal(h->io.resumes, 0); /* closed before reading would resume */
    assert_int_equal(h->io.closes, 1);
}

/* test_early_talker - input before the greeting: 554 5.5.0 and close. */
static void test_early_talker(void **state)
{
    struct harness *h = *state;

    test_start(h, TEST_OUTSIDE);
    test_send(h, "EHLO fast.example\r\n");
    test_expect(h, "554 5.5.0 Error: SMTP protocol synchronization\r\n");
    assert_int_equal(h->io.closes, 1);
    smtpd_session_greet(h->s);
    test_send(h, "QUIT\r\n");
    test_expect(h, "");
}

/* test_body_before_354 - body pipelined behind DATA: 554 5.5.0, nothing queued (S5). */
static void test_body_before_354(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    test_send(h,
              "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@hamr.test>\r\nDATA\r\n"
              "Subject: evil\r\n\r\nevil\r\n.\r\n");
    test_expect(h,
                "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                "554 5.5.0 Error: SMTP protocol synchronization\r\n");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(h->sink.submits, 0);
    assert_int_equal(h->sink.ids, 0);
}

/* Order and syntax: one command after EHLO (or after MAIL) and the reply it gets. */
static const struct {
    const char *label;
    bool after_mail;
    const char *cmd;
    const char *want;
} test_reply_cases[] = {
    {"RCPT before MAIL", false, "RCPT TO:<a@hamr.test>", "503 5.5.1 Error: need MAIL command"},
    {"DATA before MAIL", false, "DATA", "503 5.5.1 Error: need MAIL command"},
    {"DATA before RCPT", true, "DATA", "503 5.5.1 Error: need RCPT command"},
    {"nested MAIL", true, "MAIL FROM:<a@b.example>", "503 5.5.1 Error: nested MAIL command"},
    {"no bracket end", false, "MAIL FROM:<a@b.example", "501 5.1.7 Bad sender address syntax"},
    {"no brackets", false, "MAIL FROM:a@b.example", "501 5.1.7 Bad sender address syntax"},
    {"no bracket start", true, "RCPT TO:a@hamr.test>", "501 5.1.3 Bad recipient address syntax"},
    {"double brackets", true, "RCPT TO:<<a@hamr.test>>", "501 5.1.3 Bad recipient address syntax"},
    {"null rcpt", true, "RCPT TO:<>", "501 5.1.3 Bad recipient address syntax"},
    {"no FROM:", false, "MAIL <a@b.example>", "501 5.1.7 Bad sender address syntax"},
    {"MAIL no arg", false, "MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>"},
    {"double dot", true, "RCPT TO:<a..b@hamr.test>", "501 5.1.3 Bad recipient address syntax"},
    {"trailing dot", true, "RCPT TO:<a.@hamr.test>", "501 5.1.3 Bad recipient address syntax"},
    {"domain hyphen", true, "RCPT TO:<a@-x.hamr.test>", "501 5.1.3 Bad recipient address syntax"},
    {"domain dot end", true, "RCPT TO:<a@hamr.test.>", "501 5.1.3 Bad recipient address syntax"},
    {"no local part", true, "RCPT TO:<@hamr.test>", "501 5.1.3 Bad recipient address syntax"},
    {"bad literal", true, "RCPT TO:<a@[300.1.1.1]>", "501 5.1.3 Bad recipient address syntax"},
    {"space in path", true, "RCPT TO:<a b@hamr.test>", "501 5.1.3 Bad recipient address syntax"},
    {"double at", true, "RCPT TO:<a@b@hamr.test>", "501 5.1.3 Bad recipient address syntax"},
    {"bad source route", true, "RCPT TO:<@a:@b:x@hamr.test>",
     "501 5.1.3 Bad recipient address syntax"},
    {"unquoted specials", true, "RCPT TO:<a\"b@hamr.test>",
     "501 5.1.3 Bad recipient address syntax"},
    {"utf8", false, "MAIL FROM:<\xc3\xbc@b.example>",
     "553 5.6.7 Must declare SMTPUTF8 to send unicode address"},
    {"unknown MAIL param", false, "MAIL FROM:<a@b.example> FOO=BAR",
     "555 5.5.4 Unsupported option: FOO"},
    {"SMTPUTF8 param", false, "MAIL FROM:<a@b.example> SMTPUTF8", "250 2.1.0 Ok"},
    /* AUTH= is taken only where AUTH is offered (inside TLS, test_smtpd_tls). */
    {"AUTH param, AUTH not offered", false, "MAIL FROM:<a@b.example> AUTH=<>",
     "555 5.5.4 Unsupported option: AUTH"},
    {"RCPT param", true, "RCPT TO:<a@hamr.test> X-FOO=1", "555 5.5.4 Unsupported option: X-FOO"},
    {"bad BODY", false, "MAIL FROM:<a@b.example> BODY=9BIT", "501 5.5.4 Bad BODY parameter syntax"},
    {"bad SIZE", false, "MAIL FROM:<a@b.example> SIZE=12x", "501 5.5.4 Bad SIZE parameter syntax"},
    {"huge SIZE", false, "MAIL FROM:<a@b.example> SIZE=99999999999999999999999",
     "501 5.5.4 Bad SIZE parameter syntax"},
    {"SIZE over limit", false, "MAIL FROM:<a@b.example> SIZE=999999999",
     "552 5.3.4 Message size exceeds fixed limit"},
    {"DATA with arg", true, "DATA now", "501 5.5.4 Syntax: DATA"},
    {"unknown command", false, "XYZZY", "502 5.5.2 Error: command not recognized"},
    {"garbage", false, "\x01\x02\x03", "500 5.5.2 Error: bad syntax"},
    {"digits", false, "123 abc", "500 5.5.2 Error: bad syntax"},
    {"empty line", false, "", "500 5.5.2 Error: bad syntax"},
    {"bare LF", false, "NOOP\nQUIT", "500 5.5.2 Error: bare <LF> received"},
    /* SECURITY.md S11: a command line must be well-formed UTF-8; EHLO names are ASCII. */
    {"overlong 2-octet", false, "MAIL FROM:<\xc0\xaf@b.example>",
     "500 5.5.2 Error: bad UTF-8 syntax"},
    {"overlong 3-octet", false, "MAIL FROM:<\xe0\x80\xaf@b.example> SMTPUTF8",
     "500 5.5.2 Error: bad UTF-8 syntax"},
    {"surrogate", true, "RCPT TO:<\xed\xa0\x80@hamr.test>", "500 5.5.2 Error: bad UTF-8 syntax"},
    {"above U+10FFFF", false, "MAIL FROM:<\xf4\x90\x80\x80@b.example>",
     "500 5.5.2 Error: bad UTF-8 syntax"},
    {"truncated sequence", false, "MAIL FROM:<a@b.example\xc3>",
     "500 5.5.2 Error: bad UTF-8 syntax"},
    {"lone continuation", false, "NOOP \x80", "500 5.5.2 Error: bad UTF-8 syntax"},
    {"4-octet UTF-8", false, "MAIL FROM:<\xf0\x9f\x98\x80@b.example>",
     "553 5.6.7 Must declare SMTPUTF8 to send unicode address"},
    {"8-bit EHLO", false, "EHLO h\xc3\xa9llo.example", "501 5.5.4 Syntax: EHLO hostname"},
    {"bad UTF-8 EHLO", false, "EHLO \xc0\xaf.example", "500 5.5.2 Error: bad UTF-8 syntax"},
    {"8-bit HELO", false, "HELO \xc3\xa9", "501 5.5.4 Syntax: HELO hostname"},
    {"bare CR", false, "NOOP\rQUIT", "500 5.5.2 Error: bare <CR> received"},
    /* Accepted forms. */
    {"source route", true, "RCPT TO:<@a.example,@b.example:x@hamr.test>", "250 2.1.5 Ok"},
    {"quoted local", true, "RCPT TO:<\"a b\\\"c\"@hamr.test>", "250 2.1.5 Ok"},
    {"space after colon", false, "MAIL FROM: <a@b.example>", "250 2.1.0 Ok"},
    {"lower case", false, "mail from:<a@b.example> body=7bit", "250 2.1.0 Ok"},
    {"trailing space", false, "MAIL FROM:<a@b.example>  ", "250 2.1.0 Ok"},
    {"literal sender", false, "MAIL FROM:<a@[IPv6:::1]>", "250 2.1.0 Ok"},
};

/* test_reply_table - each case in a fresh session. */
static void test_reply_table(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_reply_cases); i++) {
        struct harness *h = calloc(1, sizeof(*h));
        assert_non_null(h);
        test_policy(h);
        test_ehlo(h, TEST_OUTSIDE);
        if (test_reply_cases[i].after_mail) {
            test_send(h, "MAIL FROM:<a@b.example>\r\n");
            test_expect(h, "250 2.1.0 Ok\r\n");
        }
        char line[1024], want[1024];
        snprintf(line, sizeof(line), "%s\r\n", test_reply_cases[i].cmd);
        snprintf(want, sizeof(want), "%s\r\n", test_reply_cases[i].want);
        test_send(h, line);
        const char *got = test_take(h);
        if (strcmp(got, want) != 0)
            fail_msg("%s: got \"%s\" want \"%s\"", test_reply_cases[i].label, got, want);
        void *p = h;
        test_teardown(&p);
    }
}

/* test_rcpt_len - test_send "RCPT TO:<local@domain>" with generated parts; the reply code. */
static const char *test_rcpt_len(struct harness *h, size_t local, size_t domain)
{
    char line[1200];
    size_t n = (size_t)snprintf(line, sizeof(line), "RCPT TO:<");
    memset(line + n, 'l', local);
    n += local;
    line[n++] = '@';
    for (size_t i = 0; i < domain; i++)
        line[n++] = (i % 10 == 9 && i + 1 < domain) ? '.' : 'd';
    n += (size_t)snprintf(line + n, sizeof(line) - n, ">\r\n");
    smtpd_session_input(h->s, line, n);
    return test_codes(h);
}

/* test_length_limits - RFC 5321 4.5.3.1: local part 64, domain 255, path 256 with <>. */
static void test_length_limits(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_INSIDE);
    test_send(h, "MAIL FROM:<a@b.example>\r\n");
    test_take(h);
    assert_string_equal(test_rcpt_len(h, 64, 20), "250");
    assert_string_equal(test_rcpt_len(h, 65, 20), "501");
    assert_string_equal(test_rcpt_len(h, 1, 250), "250");
    assert_string_equal(test_rcpt_len(h, 1, 256), "501");
    assert_string_equal(test_rcpt_len(h, 64, 189), "250"); /* <64@189> is 256 octets */
    assert_string_equal(test_rcpt_len(h, 64, 190), "501");
}

/*
 * test_line_mail - "MAIL FROM:<aaa...>" padded to len octets with its CRLF;
 * the reply.
 */
static const char *test_line_mail(struct harness *h, size_t len)
{
    char *line = malloc(len);
    assert_non_null(line);
    assert_true(len > 14);
    memcpy(line, "MAIL FROM:<", 11);
    memset(line + 11, 'a', len - 14);
    memcpy(line + len - 3, ">\r\n", 3);
    smtpd_session_input(h->s, line, len);
    free(line);
    return test_take(h);
}

/*
 * test_line_too_long - command lines of up to SMTPD_READER_LINE_MAX (2048)
 * octets with CRLF are read (RFC 3461 raises RFC 5321's 512; Postfix's
 * line_length_limit): the 2048-octet MAIL gets the path's syntax reply.
 * One octet more is 500 5.5.2, counted; the tail of the line is not run as
 * a command (S6).
 */
static void test_line_too_long(void **state)
{
    struct harness *h = *state;
    enum { LONG = SMTPD_READER_LINE_MAX + 500 };
    char line[LONG + 8];

    assert_int_equal(SMTPD_READER_LINE_MAX, 2048);
    test_ehlo(h, TEST_OUTSIDE);
    assert_string_equal(test_line_mail(h, 512), "501 5.1.7 Bad sender address syntax\r\n");
    assert_string_equal(test_line_mail(h, 600), "501 5.1.7 Bad sender address syntax\r\n");
    assert_string_equal(test_line_mail(h, SMTPD_READER_LINE_MAX),
                        "501 5.1.7 Bad sender address syntax\r\n");
    assert_string_equal(test_line_mail(h, SMTPD_READER_LINE_MAX + 1),
                        "500 5.5.2 Error: line too long\r\n");
    test_send(h, "MAIL FROM:<a@b.example>\r\n");
    test_expect(h, "250 2.1.0 Ok\r\n");
    memset(line, 'A', LONG);
    memcpy(line + LONG, " RSET\r\n", 8);
    test_send(h, line);
    test_expect(h, "500 5.5.2 Error: line too long\r\n");
    /* RSET did not run: the transaction is still open. */
    test_send(h, "RCPT TO:<a@hamr.test>\r\n");
    test_expect(h, "250 2.1.5 Ok\r\n");
    /* Three 501s and two 500s were counted: the next error is the sixth. */
    h->policy.max_errors = 6;
    test_send(h, "FOO\r\n");
    assert_string_equal(test_codes(h), "502 421");
}

/*
 * <postmaster> with no domain (RFC 5321 4.5.1) is taken from any client,
 * in any case, and goes to postmaster@hostname, or to [smtpd] postmaster.
 */
static void test_postmaster(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<PostMaster>\r\n");
    assert_string_equal(test_codes(h), "250 250 250");
    test_send(h, "RSET\r\n");
    test_take(h);
    test_transaction(h, "postmaster", "hi\r\n.\r\n");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
    assert_int_equal(h->sink.msgs[0].n_rcpts, 1);
    assert_string_equal(h->sink.msgs[0].rcpts[0], "postmaster@mx.hamr.test");

    struct harness *h2 = calloc(1, sizeof(*h2));
    assert_non_null(h2);
    test_policy(h2);
    hamr_strlcpy(h2->policy.postmaster, "abuse-desk@ops.example", sizeof(h2->policy.postmaster));
    test_ehlo(h2, TEST_OUTSIDE);
    test_transaction(h2, "postmaster", "hi\r\n.\r\n");
    fake_sink_step(&h2->sink);
    test_expect(h2, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
    assert_string_equal(h2->sink.msgs[0].rcpts[0], "abuse-desk@ops.example");
    void *p = h2;
    test_teardown(&p);
}

/* test_rset_clears - RSET drops sender and recipients. */
static void test_rset_clears(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<old@example.org>\r\nRCPT TO:<old@hamr.test>\r\nRSET\r\nDATA\r\n");
    assert_string_equal(test_codes(h), "250 250 250 503");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_READY);
    test_transaction(h, "new@hamr.test", "hi\r\n.\r\n");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
    assert_string_equal(h->sink.msgs[0].sender, "sender@example.org");
    assert_int_equal(h->sink.msgs[0].n_rcpts, 1);
    assert_string_equal(h->sink.msgs[0].rcpts[0], "new@hamr.test");
    /* MAIL before HELO is an order error too. */
    struct harness *h2 = calloc(1, sizeof(*h2));
    test_policy(h2);
    test_start(h2, TEST_OUTSIDE);
    smtpd_session_greet(h2->s);
    test_take(h2);
    test_send(h2, "MAIL FROM:<a@b.example>\r\n");
    test_expect(h2, "503 5.5.1 Error: send HELO/EHLO first\r\n");
    void *p = h2;
    test_teardown(&p);
}

/* test_helo_received - HELO gives "with SMTP"; the helo is escaped in Received:. */
static void test_helo_received(void **state)
{
    struct harness *h = *state;

    test_start(h, TEST_INSIDE);
    smtpd_session_greet(h->s);
    test_send(h, "HELO odd\x7f\x01name\r\n");
    test_expect(h, "220 mx.hamr.test ESMTP hamr\r\n250 mx.hamr.test\r\n");
    test_transaction(h, "x@elsewhere.example", "b\r\n.\r\n");
    static const char head[] =
        "Received: from odd??name (10.1.2.3)\r\n"
        "\tby mx.hamr.test (hamr) with SMTP id HAMRQ0001\r\n"
        "\tfor <x@elsewhere.example>; ";
    assert_memory_equal(h->sink.msgs[0].body, head, sizeof(head) - 1);
    assert_string_equal(h->sink.msgs[0].helo, "odd??name");
    fake_sink_step(&h->sink);
}

/* test_size_mid_data - over message_size_limit without SIZE: 552 after the dot, nothing queued. */
static void test_size_mid_data(void **state)
{
    struct harness *h = *state;
    char body[4096];
    size_t n = 0;

    h->policy.message_size_limit = 1000;
    test_ehlo(h, TEST_OUTSIDE);
    for (int i = 0; i < 100; i++)
        n += (size_t)snprintf(body + n, sizeof(body) - n, "line of text %04d\r\n", i);
    snprintf(body + n, sizeof(body) - n, ".\r\n");
    test_transaction(h, "a@hamr.test", body);
    test_expect(h, "552 5.3.4 Message size exceeds fixed limit\r\n");
    assert_int_equal(h->sink.submits, 0);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_READY);
    /* The session goes on. */
    test_transaction(h, "a@hamr.test", "small\r\n.\r\n");
    assert_int_equal(h->sink.submits, 1);
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0002\r\n");
}

/* Rejected bodies: the checks at end of DATA, in order. */
static const struct {
    const char *label;
    const char *body;
    size_t len;
    const char *want;
} test_body_cases[] = {
#define T(label, body, want)                \
    {                                       \
        label, body, sizeof(body) - 1, want \
    }
    T("bare LF", "a\n.\nMAIL FROM:<s@x>\r\n.\r\n", "550 5.5.2 Error: bare <LF> received"),
    T("bare CR", "a\r.\r\nb\r\n.\r\n", "550 5.5.2 Error: bare <CR> received"),
    T("NUL", "a\r\n\0.\r\nb\r\n.\r\n", "554 5.6.0 Message contains NUL characters"),
    T("bare LF wins over NUL", "\0a\nb\r\n.\r\n", "550 5.5.2 Error: bare <LF> received"),
#undef T
};

/* test_body_rejects - smuggling forms and NULs reject the message; the session goes on. */
static void test_body_rejects(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_body_cases); i++) {
        struct harness *h = calloc(1, sizeof(*h));
        test_policy(h);
        test_ehlo(h, TEST_OUTSIDE);
        test_transaction(h, "a@hamr.test", "");
        smtpd_session_input(h->s, test_body_cases[i].body, test_body_cases[i].len);
        char want[256];
        snprintf(want, sizeof(want), "%s\r\n", test_body_cases[i].want);
        const char *got = test_take(h);
        if (strcmp(got, want) != 0)
            fail_msg("%s: got \"%s\"", test_body_cases[i].label, got);
        assert_int_equal(h->sink.submits, 0);
        test_send(h, "NOOP\r\n");
        test_expect(h, "250 2.0.0 Ok\r\n");
        void *p = h;
        test_teardown(&p);
    }
}

/* test_header_limit - a header block over header_size_limit: 552 5.3.4. */
static void test_header_limit(void **state)
{
    struct harness *h = *state;
    char body[2048];

    h->policy.header_size_limit = 100;
    test_ehlo(h, TEST_OUTSIDE);
    size_t n = (size_t)snprintf(body, sizeof(body), "Subject: ");
    memset(body + n, 'x', 200);
    n += 200;
    snprintf(body + n, sizeof(body) - n, "\r\n\r\nbody\r\n.\r\n");
    test_transaction(h, "a@hamr.test", body);
    test_expect(h, "552 5.3.4 Message header size exceeds limit\r\n");
    assert_int_equal(h->sink.submits, 0);
}

/* test_hop_count - 50 Received: with limit 50 is 554 5.4.6; 49 is accepted (S13). */
static void test_hop_count(void **state)
{
    struct harness *h = *state;
    char body[4096];

    for (int hops = 50; hops >= 49; hops--) {
        size_t n = 0;
        for (int i = 0; i < hops; i++)
            n += (size_t)snprintf(body + n, sizeof(body) - n, "Received: from h%d by x\r\n", i);
        snprintf(body + n, sizeof(body) - n, "\r\nloop\r\n.\r\n");
        if (h->s == NULL)
            test_ehlo(h, TEST_OUTSIDE);
        test_transaction(h, "a@hamr.test", body);
        if (hops == 50) {
            test_expect(h, "554 5.4.6 Too many hops\r\n");
            assert_int_equal(h->sink.submits, 0);
        } else {
            assert_int_equal(h->sink.submits, 1);
            fake_sink_step(&h->sink);
            test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0002\r\n");
        }
    }
}

/* test_too_many_recipients - 1001 RCPTs: the last gets 452 4.5.3; 1000 are submitted (S9). */
static void test_too_many_recipients(void **state)
{
    struct harness *h = *state;
    size_t cap = 1001 * 40 + 64, n = 0;
    char *in = malloc(cap);

    assert_non_null(in);
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<a@b.example>\r\n");
    test_take(h);
    for (int i = 0; i < 1001; i++)
        n += (size_t)snprintf(in + n, cap - n, "RCPT TO:<r%d@hamr.test>\r\n", i);
    smtpd_session_input(h->s, in, n);
    free(in);
    const char *codes = test_codes(h);
    assert_int_equal(strlen(codes), 1001 * 4 - 1);
    for (int i = 0; i < 1000; i++)
        assert_memory_equal(codes + i * 4, "250", 3);
    assert_string_equal(codes + 1000 * 4, "452");
    test_send(h, "RCPT TO:<more@hamr.test>\r\n");
    test_expect(h, "452 4.5.3 Error: too many recipients\r\n");
    test_send(h, "DATA\r\n");
    test_expect(h, "354 End data with <CR><LF>.<CR><LF>\r\n");
    test_send(h, "x\r\n.\r\n");
    assert_int_equal(h->sink.msgs[0].n_rcpts, 1000);
    assert_string_equal(h->sink.msgs[0].rcpts[999], "r999@hamr.test");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
}

/* test_relay_denied - outside client, outside domain: 554 5.7.1 <rcpt>: Relay access denied. */
static void test_relay_denied(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<a@b.example>\r\n");
    test_take(h);
    test_send(h, "RCPT TO:<x@victim.example>\r\n");
    test_expect(h, "554 5.7.1 <x@victim.example>: Relay access denied\r\n");
    test_send(h, "RCPT TO:<x@sub.hamr.test>\r\n"); /* ".sub.hamr.test" is subdomains only */
    test_expect(h, "554 5.7.1 <x@sub.hamr.test>: Relay access denied\r\n");
    test_send(h, "RCPT TO:<x@hamr.test.evil.example>\r\n");
    test_expect(h, "554 5.7.1 <x@hamr.test.evil.example>: Relay access denied\r\n");
    test_send(h, "RCPT TO:<x@evilhamr.test>\r\n");
    test_expect(h, "554 5.7.1 <x@evilhamr.test>: Relay access denied\r\n");
    test_send(h, "RCPT TO:<postmaster@victim.example>\r\n");
    test_expect(h, "554 5.7.1 <postmaster@victim.example>: Relay access denied\r\n");
    test_send(h, "RCPT TO:<@hamr.test:x@victim.example>\r\n");
    test_expect(h, "554 5.7.1 <x@victim.example>: Relay access denied\r\n");
    test_send(h, "RCPT TO:<x@HAMR.TEST>\r\nRCPT TO:<x@deep.x.sub.hamr.test>\r\n");
    test_expect(h, "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n");
    test_send(h, "DATA\r\n");
    test_take(h);
    test_send(h, "x\r\n.\r\n");
    assert_int_equal(h->sink.msgs[0].n_rcpts, 2);
    fake_sink_step(&h->sink);
}

/*
 * The 16 forms of nmap's smtp-open-relay.nse, with hamr.test as "our
 * domain" and 192.0.2.10 as our address: none may be accepted from outside.
 */
static const struct {
    const char *from;
    const char *to;
    const char *want; /* 554: parsed and refused; 501: not a mailbox at all */
} test_nmap_forms[] = {
    {"<>", "<relaytest@nmap.scanme.org>", "554"},
    {"<antispam@nmap.scanme.org>", "<relaytest@nmap.scanme.org>", "554"},
    {"<antispam@hamr.test>", "<relaytest@nmap.scanme.org>", "554"},
    {"<antispam@[192.0.2.10]>", "<relaytest@nmap.scanme.org>", "554"},
    {"<antispam@[192.0.2.10]>", "<relaytest%nmap.scanme.org@[192.0.2.10]>", "554"},
    {"<antispam@[192.0.2.10]>", "<relaytest%nmap.scanme.org@hamr.test>", "554"},
    {"<antispam@[192.0.2.10]>", "<\"relaytest@nmap.scanme.org\">", "501"},
    {"<antispam@[192.0.2.10]>", "<\"relaytest%nmap.scanme.org\">", "501"},
    {"<antispam@[192.0.2.10]>", "<relaytest@nmap.scanme.org@[192.0.2.10]>", "501"},
    {"<antispam@[192.0.2.10]>", "<\"relaytest@nmap.scanme.org\"@[192.0.2.10]>", "554"},
    {"<antispam@[192.0.2.10]>", "<relaytest@nmap.scanme.org@hamr.test>", "501"},
    {"<antispam@[192.0.2.10]>", "<@[192.0.2.10]:relaytest@nmap.scanme.org>", "554"},
    {"<antispam@[192.0.2.10]>", "<@hamr.test:relaytest@nmap.scanme.org>", "554"},
    {"<antispam@[192.0.2.10]>", "<nmap.scanme.org!relaytest>", "501"},
    {"<antispam@[192.0.2.10]>", "<nmap.scanme.org!relaytest@[192.0.2.10]>", "554"},
    {"<antispam@[192.0.2.10]>", "<nmap.scanme.org!relaytest@hamr.test>", "554"},
    /* Further routed forms at our own domain (S12). */
    {"<a@b.example>", "<\"x@victim.example\"@hamr.test>", "554"},
    {"<a@b.example>", "<x%victim.example@hamr.test>", "554"},
    {"<a@b.example>", "<victim.example!x@hamr.test>", "554"},
    {"<a@b.example>", "<\"x\\@victim.example\"@hamr.test>", "554"},
    {"<a@b.example>", "<x@victim.example@hamr.test>", "501"},
};

/* test_nmap_open_relay - every form fails from outside; routed forms with 554 5.7.1. */
static void test_nmap_open_relay(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_nmap_forms); i++) {
        struct harness *h = calloc(1, sizeof(*h));
        char line[512];
        test_policy(h);
        test_ehlo(h, TEST_OUTSIDE);
        snprintf(line, sizeof(line), "MAIL FROM:%s\r\n", test_nmap_forms[i].from);
        test_send(h, line);
        test_expect(h, "250 2.1.0 Ok\r\n");
        snprintf(line, sizeof(line), "RCPT TO:%s\r\n", test_nmap_forms[i].to);
        test_send(h, line);
        const char *got = test_take(h);
        char want[600];
        if (strcmp(test_nmap_forms[i].want, "554") == 0)
            snprintf(want, sizeof(want), "554 5.7.1 %s: Relay access denied\r\n",
                     test_nmap_forms[i].to);
        else
            snprintf(want, sizeof(want), "501 5.1.3 Bad recipient address syntax\r\n");
        /* A source route is stripped before the relay decision and the reply. */
        const char *colon = strchr(test_nmap_forms[i].to, ':');
        if (test_nmap_forms[i].to[1] == '@' && colon != NULL)
            snprintf(want, sizeof(want), "554 5.7.1 <%s: Relay access denied\r\n", colon + 1);
        if (strcmp(got, want) != 0)
            fail_msg("form %zu %s: got \"%s\" want \"%s\"", i, test_nmap_forms[i].to, got, want);
        test_send(h, "DATA\r\n");
        test_expect(h, "503 5.5.1 Error: need RCPT command\r\n");
        assert_int_equal(h->sink.submits, 0);
        void *p = h;
        test_teardown(&p);
    }
}

/* test_relay_networks - inside clients relay anywhere; routed forms are taken literally. */
static void test_relay_networks(void **state)
{
    static const char *const clients[] = {TEST_INSIDE, "::1", "::ffff:10.9.9.9"};

    for (size_t c = 0; c < HAMR_ARRAY_LEN(clients); c++) {
        struct harness *h = calloc(1, sizeof(*h));
        test_policy(h);
        test_ehlo(h, clients[c]);
        test_send(h,
                  "MAIL FROM:<a@b.example>\r\n"
                  "RCPT TO:<x@victim.example>\r\n"
                  "RCPT TO:<relaytest%nmap.scanme.org@hamr.test>\r\n"
                  "RCPT TO:<\"x@victim.example\"@hamr.test>\r\n"
                  "RCPT TO:<u@[192.0.2.7]>\r\n"
                  "RCPT TO:<Postmaster>\r\n"
                  "DATA\r\n");
        assert_string_equal(test_codes(h), "250 250 250 250 250 250 354");
        test_send(h, "x\r\n.\r\n");
        const struct fake_msg *m = &h->sink.msgs[0];
        assert_int_equal(m->n_rcpts, 5);
        assert_string_equal(m->rcpts[1], "relaytest%nmap.scanme.org@hamr.test");
        assert_string_equal(m->rcpts[2], "\"x@victim.example\"@hamr.test");
        assert_string_equal(m->rcpts[4], "postmaster@mx.hamr.test"); /* RFC 5321 4.5.1 */
        fake_sink_step(&h->sink);
        void *p = h;
        test_teardown(&p);
    }
}

/* test_max_errors - at max_errors: 421 4.7.0 too many errors, and close. */
static void test_max_errors(void **state)
{
    struct harness *h = *state;

    h->policy.max_errors = 3;
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "XYZZY\r\nFOO\r\nBAR\r\nNOOP\r\n");
    test_expect(h,
                "502 5.5.2 Error: command not recognized\r\n"
                "502 5.5.2 Error: command not recognized\r\n"
                "502 5.5.2 Error: command not recognized\r\n"
                "421 4.7.0 mx.hamr.test Error: too many errors\r\n");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_CLOSING);
    test_send(h, "NOOP\r\n");
    test_expect(h, "");
}

/*
 * test_junk_commands - past junk_command_limit, each NOOP, RSET, VRFY, HELP
 * and empty non-LAST BDAT chunk still gets its reply but counts toward
 * max_errors, until 421; commands that move mail do not count.
 */
static void test_junk_commands(void **state)
{
    struct harness *h = *state;

    h->policy.max_errors = 3;
    h->policy.junk_command_limit = 4;
    test_ehlo(h, TEST_OUTSIDE);
    /* MAIL and RCPT are not junk: the four junk commands are still free. */
    test_send(h,
              "NOOP\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\nHELP\r\n"
              "VRFY x\r\n");
    assert_string_equal(test_codes(h), "250 250 250 214 252");
    assert_int_equal(h->io.closes, 0);
    /* The fourth junk command is free, the fifth and sixth count, BDAT 0 the seventh. */
    test_send(h, "BDAT 0\r\nNOOP\r\nRSET\r\n");
    assert_string_equal(test_codes(h), "250 250 250");
    assert_int_equal(h->io.closes, 0);
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\nBDAT 0\r\n");
    test_expect(h,
                "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 0 octets received\r\n"
                "421 4.7.0 mx.hamr.test Error: too many errors\r\n");
    assert_int_equal(h->io.closes, 1);
}

/* test_junk_reset - the count starts again after each accepted message. */
static void test_junk_reset(void **state)
{
    struct harness *h = *state;

    h->policy.max_errors = 1;
    h->policy.junk_command_limit = 2;
    test_ehlo(h, TEST_OUTSIDE);
    for (int i = 0; i < 3; i++) {
        test_send(h,
                  "RSET\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\n"
                  "DATA\r\n");
        assert_string_equal(test_codes(h), "250 250 250 250 354");
        test_send(h, "Subject: x\r\n\r\nbody\r\n.\r\n");
        fake_sink_step(&h->sink);
        assert_string_equal(test_codes(h), "250");
        assert_int_equal(h->io.closes, 0);
    }
    test_send(h, "RSET\r\nNOOP\r\nNOOP\r\n");
    assert_string_equal(test_codes(h), "250 250 250 421"); /* the third still gets its 250 */
    assert_int_equal(h->io.closes, 1);
}

/* test_junk_default - junk_command_limit 0 means 100. */
static void test_junk_default(void **state)
{
    struct harness *h = *state;
    char many[101 * 6 + 1];

    h->policy.max_errors = 1;
    h->policy.junk_command_limit = 0;
    test_ehlo(h, TEST_OUTSIDE);
    for (int i = 0; i < 100; i++)
        memcpy(many + 6 * i, "NOOP\r\n", 6);
    many[600] = '\0';
    test_send(h, many);
    assert_int_equal(h->io.closes, 0);
    test_take(h);
    test_send(h, "NOOP\r\n");
    test_expect(h, "250 2.0.0 Ok\r\n421 4.7.0 mx.hamr.test Error: too many errors\r\n");
    assert_int_equal(h->io.closes, 1);
}

/* test_timeout - the deadline per state, and 421 4.4.2 when it passes. */
static void test_timeout(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    assert_int_equal(smtpd_session_timeout_ms(h->s), 300000);
    assert_int_equal(h->io.timer_ms, 300000);
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\nDATA\r\n");
    test_take(h);
    assert_int_equal(smtpd_session_timeout_ms(h->s), 200000);
    test_send(h, "partial body");
    assert_int_equal(h->io.timer_ms, 200000);
    smtpd_session_timeout(h->s);
    test_expect(h, "421 4.4.2 mx.hamr.test Error: timeout exceeded\r\n");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(h->io.timer_ms, 0);
    assert_int_equal(h->sink.submits, 0);
}

/*
 * test_command_trickle - a command line trickling in does not move its
 * deadline (one command_timeout after the last reply); a reply does.
 */
static void test_command_trickle(void **state)
{
    struct harness *h = *state;
    h->io.now = 0;
    test_ehlo(h, TEST_OUTSIDE);
    assert_int_equal(h->io.timer_ms, 300000);
    h->io.now = 100000;
    test_send(h, "NO");
    assert_int_equal(h->io.timer_ms, 200000);
    h->io.now = 290000;
    test_send(h, "OP");
    assert_int_equal(h->io.timer_ms, 10000);
    h->io.now = 295000;
    test_send(h, "\r\n"); /* complete in time: the reply starts a new request */
    test_expect(h, "250 2.0.0 Ok\r\n");
    assert_int_equal(h->io.timer_ms, 300000);
    h->io.now = 595000;
    test_send(h, "RSE"); /* due now: the timer fires at once */
    assert_int_equal(h->io.timer_ms, 1);
    smtpd_session_timeout(h->s);
    test_expect(h, "421 4.4.2 mx.hamr.test Error: timeout exceeded\r\n");
    assert_int_equal(h->io.closes, 1);
}

/* test_data_phase - EHLO, MAIL, RCPT, DATA at clock 0; the 354 taken. */
static void test_data_phase(struct harness *h)
{
    h->io.now = 0;
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\nDATA\r\n");
    assert_string_equal(test_codes(h), "250 250 354");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_DATA);
}

/*
 * test_min_data_rate_timer - 500 B/s, data_timeout 200 s: one octet every
 * 9 s keeps each read in time, but the phase deadline (354 + 200 s + 2 ms
 * per octet) shrinks the timer until it fires: 421 4.4.2, nothing submitted.
 */
static void test_min_data_rate_timer(void **state)
{
    struct harness *h = *state;
    h->policy.min_data_rate = 500;
    test_data_phase(h);
    assert_int_equal(h->io.timer_ms, 200000); /* 354 + data_timeout */
    for (uint64_t k = 1; k <= 22; k++) {
        h->io.now = 9000 * k;
        test_send(h, "x");
        uint64_t deadline = 200000 + 2 * k;
        uint64_t want = deadline - h->io.now < 200000 ? deadline - h->io.now : 200000;
        if (h->io.timer_ms != want || smtpd_session_timeout_ms(h->s) != want)
            fail_msg("after octet %llu: timer %llu, want %llu", (unsigned long long)k,
                     (unsigned long long)h->io.timer_ms, (unsigned long long)want);
    }
    assert_int_equal(h->io.timer_ms, 2044); /* 200044 - 198000 */
    test_expect(h, "");
    h->io.now = 200044; /* the timer fires */
    smtpd_session_timeout(h->s);
    test_expect(h, "421 4.4.2 mx.hamr.test Error: timeout exceeded\r\n");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_CLOSING);
    assert_int_equal(h->sink.submits, 0);
}

/*
 * test_min_data_rate_late_input - input that arrives after the phase
 * deadline (before the timer ran) is not looked at, even if it ends DATA.
 */
static void test_min_data_rate_late_input(void **state)
{
    struct harness *h = *state;
    h->policy.min_data_rate = 500;
    test_data_phase(h);
    h->io.now = 100000;
    test_send(h, "Subject: slow\r\n\r\n"); /* 17 octets: deadline 200034 */
    assert_int_equal(h->io.timer_ms, 100034);
    h->io.now = 200034;
    test_send(h, "body\r\n.\r\n");
    test_expect(h, "421 4.4.2 mx.hamr.test Error: timeout exceeded\r\n");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(h->sink.submits, 0);
}

/*
 * test_min_data_rate_at_rate - 5000 octets every 10 s is exactly 500 B/s:
 * after 400 s (twice data_timeout) the deadline is still data_timeout away,
 * and the message is submitted and queued.
 */
static void test_min_data_rate_at_rate(void **state)
{
    struct harness *h = *state;
    char chunk[5001];
    for (size_t i = 0; i < 5000; i += 100) {
        memset(chunk + i, 'a', 98);
        chunk[i + 98] = '\r';
        chunk[i + 99] = '\n';
    }
    chunk[5000] = '\0';
    h->policy.min_data_rate = 500;
    test_data_phase(h);
    for (uint64_t k = 0; k < 40; k++) {
        h->io.now = 10000 * k;
        test_send(h, chunk);
        assert_int_equal(h->io.timer_ms, 200000);
    }
    h->io.now = 400000;
    test_send(h, ".\r\n");
    test_expect(h, "");
    assert_int_equal(h->sink.submits, 1);
    assert_int_equal(h->sink.msgs[0].body_len - (strstr((char *)h->sink.msgs[0].body, "aaa") -
                                                 (char *)h->sink.msgs[0].body),
                     40 * 5000);
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
    assert_int_equal(h->io.closes, 0);
}

/* test_min_data_rate_off - with 0 only the per-read data_timeout applies. */
static void test_min_data_rate_off(void **state)
{
    struct harness *h = *state;
    test_data_phase(h);
    for (uint64_t k = 1; k <= 100; k++) {
        h->io.now = 9000 * k;
        test_send(h, "x");
        assert_int_equal(h->io.timer_ms, 200000);
    }
    test_send(h, "\r\n.\r\n");
    assert_int_equal(h->sink.submits, 1);
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
}

/*
 * test_stress_timeouts - under load every wait that starts is capped at
 * stress_timeout (command and DATA, and the DATA phase deadline with it);
 * a wait that started before keeps its time; without load, or with no
 * stress_timeout, the configured timeouts apply again.
 */
static void test_stress_timeouts(void **state)
{
    struct harness *h = *state;
    h->policy.stress_timeout_ms = 10000;
    test_ehlo(h, TEST_OUTSIDE);
    assert_int_equal(h->io.timer_ms, 300000);
    h->io.stressed = true;
    int sets = h->io.timer_sets;
    assert_int_equal(smtpd_session_timeout_ms(h->s), 10000);
    assert_int_equal(h->io.timer_sets, sets); /* the running wait is not touched */
    test_send(h, "NOOP\r\n");
    assert_string_equal(test_codes(h), "250");
    assert_int_equal(h->io.timer_ms, 10000);
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\nDATA\r\n");
    assert_string_equal(test_codes(h), "250 250 354");
    assert_int_equal(h->io.timer_ms, 10000); /* data_timeout 200 s capped */
    h->io.stressed = false;
    test_send(h, "x");
    assert_int_equal(h->io.timer_ms, 200000);
    test_send(h, "\r\n.\r\n");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
    assert_int_equal(h->io.timer_ms, 300000);

    /* With the minimum DATA rate, the phase deadline uses the capped timeout too. */
    h->policy.min_data_rate = 500;
    h->io.now = 1000;
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\nDATA\r\n");
    assert_string_equal(test_codes(h), "250 250 354");
    h->io.stressed = true;
    h->io.now = 6000;
    test_send(h, "x"); /* deadline 1000 + 10000 + 2 */
    assert_int_equal(h->io.timer_ms, 5002);
    h->io.now = 11002;
    smtpd_session_timeout(h->s);
    test_expect(h, "421 4.4.2 mx.hamr.test Error: timeout exceeded\r\n");
    assert_int_equal(h->sink.submits, 1);
}

/* test_stress_off - stress_timeout 0: load changes nothing. */
static void test_stress_off(void **state)
{
    struct harness *h = *state;
    h->io.stressed = true;
    test_ehlo(h, TEST_OUTSIDE);
    assert_int_equal(h->io.timer_ms, 300000);
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\nDATA\r\n");
    test_take(h);
    assert_int_equal(h->io.timer_ms, 200000);
}

/* test_http - cross-protocol input: 221 2.7.0 and close (S19). */
static void test_http(void **state)
{
    static const char *const inputs[] = {
        "GET / HTTP/1.1\r\nHost: mx.hamr.test\r\n\r\n",
        "POST /form HTTP/1.0\r\n",
        "CONNECT mx.hamr.test:25 HTTP/1.1\r\n",
        "Host: mx.hamr.test\r\n",
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(inputs); i++) {
        struct harness *h = calloc(1, sizeof(*h));
        test_policy(h);
        test_ehlo(h, TEST_OUTSIDE);
        test_send(h, inputs[i]);
        test_expect(h, "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n");
        assert_int_equal(h->io.closes, 1);
        void *p = h;
        test_teardown(&p);
    }
}

/* check_mail failures and their replies. */
static const struct {
    int err;
    const char *want;
    bool closes;
} test_check_mail_cases[] = {
    {HAMR_ENOSPACE, "452 4.3.1 Insufficient system storage\r\n", false},
    {HAMR_EQUEUEFULL, "452 4.3.1 Insufficient system storage: mail queue full\r\n", false},
    {HAMR_ENOQUORUM, "451 4.3.0 Error: queue not available, try again later\r\n", false},
    {HAMR_EDRAINING, "421 4.3.2 mx.hamr.test Service not available, draining\r\n", true},
};

/* test_check_mail - the sink refuses at MAIL. */
static void test_check_mail(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_check_mail_cases); i++) {
        struct harness *h = calloc(1, sizeof(*h));
        test_policy(h);
        test_ehlo(h, TEST_OUTSIDE);
        h->sink.check_mail_rc = test_check_mail_cases[i].err;
        test_send(h, "MAIL FROM:<a@b.example>\r\n");
        test_expect(h, test_check_mail_cases[i].want);
        assert_int_equal(h->io.closes, test_check_mail_cases[i].closes ? 1 : 0);
        if (!test_check_mail_cases[i].closes) {
            test_send(h, "RCPT TO:<a@hamr.test>\r\n");
            test_expect(h, "503 5.5.1 Error: need MAIL command\r\n");
            h->sink.check_mail_rc = 0;
            test_send(h, "MAIL FROM:<a@b.example>\r\n");
            test_expect(h, "250 2.1.0 Ok\r\n");
        }
        void *p = h;
        test_teardown(&p);
    }
}

/* Submit outcomes: the callback status (or submit's own error) and the reply. */
static const struct {
    int err;
    const char *want;
    bool closes;
} test_submit_cases[] = {
    {HAMR_ENOTLEADER, "451 4.3.0 Error: queue not available, try again later\r\n", false},
    {HAMR_ELEADERSHIPLOST, "451 4.3.0 Error: queue not available, try again later\r\n", false},
    {HAMR_ETIMEDOUT, "451 4.3.0 Error: queue not available, try again later\r\n", false},
    {HAMR_ENOQUORUM, "451 4.3.0 Error: queue not available, try again later\r\n", false},
    {HAMR_EBUSY, "451 4.3.0 Error: queue not available, try again later\r\n", false},
    {HAMR_ECORRUPT, "451 4.3.0 Error: queue not available, try again later\r\n", false},
    {HAMR_EIO, "451 4.3.0 Error: queue not available, try again later\r\n", false},
    {HAMR_ENOSPACE, "452 4.3.1 Insufficient system storage\r\n", false},
    {HAMR_ESHUTDOWN, "421 4.3.2 mx.hamr.test Service not available, shutting down\r\n", true},
    {HAMR_EDRAINING, "421 4.3.2 mx.hamr.test Service not available, draining\r\n", true},
};

/* test_submit_failures - never 250 unless the status is 0; async and sync failures alike. */
static void test_submit_failures(void **state)
{
    for (int sync = 0; sync <= 1; sync++) {
        for (size_t i = 0; i < HAMR_ARRAY_LEN(test_submit_cases); i++) {
            struct harness *h = calloc(1, sizeof(*h));
            test_policy(h);
            test_ehlo(h, TEST_OUTSIDE);
            if (sync)
                h->sink.submit_rc = test_submit_cases[i].err;
            else
                h->sink.status = test_submit_cases[i].err;
            test_transaction(h, "a@hamr.test", "x\r\n.\r\nNOOP\r\n");
            if (!sync) {
                test_expect(h, "");
                assert_true(h->io.paused);
                fake_sink_step(&h->sink);
            } else {
                assert_null(h->sink.cb);
            }
            const char *got = test_take(h);
            size_t wl = strlen(test_submit_cases[i].want);
            if (strncmp(got, test_submit_cases[i].want, wl) != 0)
                fail_msg("%s sync=%d: got \"%s\"", hamr_errname(test_submit_cases[i].err), sync,
                         got);
            if (test_submit_cases[i].closes) {
                assert_int_equal(h->io.closes, 1);
                assert_string_equal(got + wl, "");
            } else {
                assert_string_equal(got + wl, "250 2.0.0 Ok\r\n"); /* the pipelined NOOP */
                assert_int_equal(h->io.closes, 0);
                assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_READY);
                assert_false(h->io.paused);
            }
            void *p = h;
            test_teardown(&p);
        }
    }
}

/* test_observer_count - counts for the node's metrics: every 4xx/5xx, nothing else. */
struct test_observed {
    int codes[8];
    int n;
};

static void test_observe_reply(void *data, int code)
{
    struct test_observed *o = data;
    if (o->n < 8)
        o->codes[o->n] = code;
    o->n++;
}

/* test_observer - the policy's observer sees each 4xx/5xx reply code once, and no 2xx/3xx. */
static void test_observer(void **state)
{
    struct harness *h = *state;
    struct test_observed o = {0};
    h->policy.observer.data = &o;
    h->policy.observer.reply = test_observe_reply;
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h,
              "FROB\r\nNOOP\r\nRCPT TO:<a@hamr.test>\r\nMAIL FROM:<a@b.example>\r\n"
              "RCPT TO:<x@elsewhere.example>\r\n");
    assert_string_equal(test_codes(h), "502 250 503 250 554");
    assert_int_equal(o.n, 3);
    assert_int_equal(o.codes[0], 502);
    assert_int_equal(o.codes[1], 503);
    assert_int_equal(o.codes[2], 554);
}

/* test_submit_in_doubt - an unknown outcome: no reply at all, the connection closes. */
static void test_submit_in_doubt(void **state)
{
    struct harness *h = calloc(1, sizeof(*h));
    test_policy(h);
    test_ehlo(h, TEST_OUTSIDE);
    h->sink.status = HAMR_EINDOUBT;
    test_transaction(h, "a@hamr.test", "x\r\n.\r\nNOOP\r\n");
    test_expect(h, "");
    fake_sink_step(&h->sink);
    /* Neither 250 nor 4xx for the message, and the pipelined NOOP is not run. */
    assert_string_equal(test_take(h), "");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_CLOSING);
    void *p = h;
    test_teardown(&p);
    (void)state;
}

/* test_disconnect_while_committing - the session outlives its transport until the callback. */
static void test_disconnect_while_committing(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    test_transaction(h, "a@hamr.test", "x\r\n.\r\nQUIT\r\n");
    assert_true(smtpd_session_submit_pending(h->s));
    /* The client goes away: the owner lets go of the session. */
    h->io.released = true;
    h->s = smtpd_session_free(h->s);
    assert_null(h->s);
    /* The sink still holds the envelope; it must be intact, and the callback frees the session. */
    fake_sink_step(&h->sink);
    assert_int_equal(h->sink.callbacks, 1);
    test_expect(h, "");
}

/* test_output_high_water - reading pauses while output is over the mark, then resumes. */
static void test_output_high_water(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    h->io.queued = SMTPD_SESSION_OUT_HIGH + 1;
    test_send(h, "NOOP\r\nNOOP\r\nNOOP\r\n");
    test_expect(h, "250 2.0.0 Ok\r\n");
    assert_true(h->io.paused);
    h->io.queued = SMTPD_SESSION_OUT_LOW + 1;
    smtpd_session_write_done(h->s);
    test_expect(h, "");
    h->io.queued = 0;
    smtpd_session_write_done(h->s);
    test_expect(h, "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n");
    assert_false(h->io.paused);
    assert_int_equal(h->io.pauses, 1);
    assert_int_equal(h->io.resumes, 1);
}

/* test_input_bound - held input beyond SMTPD_SESSION_INPUT_MAX: 421 and close. */
static void test_input_bound(void **state)
{
    struct harness *h = *state;
    size_t n = SMTPD_SESSION_INPUT_MAX / 6 + 10;
    char *in = malloc(n * 6);

    test_ehlo(h, TEST_OUTSIDE);
    test_transaction(h, "a@hamr.test", "x\r\n.\r\n");
    assert_true(h->io.paused);
    for (size_t i = 0; i < n; i++)
        memcpy(in + i * 6, "NOOP\r\n", 6);
    smtpd_session_input(h->s, in, n * 6);
    free(in);
    test_expect(h, "421 4.7.0 mx.hamr.test Error: too much pipelined input\r\n");
    assert_int_equal(h->io.closes, 1);
    /* The submit is still pending; its callback must find a live session. */
    fake_sink_step(&h->sink);
    test_expect(h, "");
}

/* test_shutdown - idle: 421 at once; committing: after the reply to the message. */
static void test_shutdown(void **state)
{
    struct harness *h = *state;

    test_ehlo(h, TEST_OUTSIDE);
    test_transaction(h, "a@hamr.test", "x\r\n.\r\n");
    smtpd_session_shutdown(h->s);
    test_expect(h, "");
    assert_int_equal(h->io.closes, 0);
    fake_sink_step(&h->sink);
    test_expect(h,
                "250 2.0.0 Ok: queued as HAMRQ0001\r\n"
                "421 4.3.2 mx.hamr.test Service not available, shutting down\r\n");
    assert_int_equal(h->io.closes, 1);

    struct harness *h2 = calloc(1, sizeof(*h2));
    test_policy(h2);
    test_ehlo(h2, TEST_OUTSIDE);
    smtpd_session_shutdown(h2->s);
    test_expect(h2, "421 4.3.2 mx.hamr.test Service not available, shutting down\r\n");
    assert_int_equal(h2->io.closes, 1);
    void *p = h2;
    test_teardown(&p);
}

/* test_byte_by_byte - a whole dialogue fed one octet at a time gives the same replies. */
static void test_byte_by_byte(void **state)
{
    struct harness *h = *state;
    static const char dialogue[] =
        "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n"
        "RCPT TO:<a@hamr.test>\r\n";
    static const char body[] = "Subject: x\r\n\r\n..a\r\n.\r\n";

    test_start(h, TEST_OUTSIDE);
    smtpd_session_greet(h->s);
    for (size_t i = 0; i < sizeof(dialogue) - 1; i++)
        smtpd_session_input(h->s, dialogue + i, 1);
    smtpd_session_input(h->s, "DATA\r\n", 6);
    assert_string_equal(test_codes(h), "220 250 250 250 354");
    for (size_t i = 0; i < sizeof(body) - 1; i++)
        smtpd_session_input(h->s, body + i, 1);
    assert_int_equal(h->sink.submits, 1);
    assert_non_null(strstr((const char *)h->sink.msgs[0].body, "\r\n\r\n.a\r\n"));
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
}

/* ------------------------------------------------------------------ */
/* CHUNKING / BDAT (RFC 3030, SECURITY.md S22)                         */
/* ------------------------------------------------------------------ */

/* test_bdat - "BDAT <len of data>[ LAST]\r\n" then data[0..len) in one write. */
static void test_bdat(struct harness *h, const char *data, size_t len, bool last)
{
    char buf[4096];
    int n = snprintf(buf, sizeof(buf), "BDAT %zu%s\r\n", len, last ? " LAST" : "");
    assert_true(n > 0 && (size_t)n + len <= sizeof(buf));
    memcpy(buf + n, data, len);
    smtpd_session_input(h->s, buf, (size_t)n + len);
}

/* test_bdat_rcpt - EHLO, MAIL, RCPT; replies taken. */
static void test_bdat_rcpt(struct harness *h)
{
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\n");
    assert_string_equal(test_codes(h), "250 250");
}

/*
 * test_bdat_single - EHLO offers CHUNKING (not BINARYMIME); one LAST chunk
 * is the message byte for byte (no unstuffing: "..x" stays, a lone "."
 * line and CRLF.CRLF are data), after the same Received: as DATA; the
 * 250 comes from the sink's commit; BODY=8BITMIME is passed on. A message
 * whose last line lacks CRLF gets one.
 */
static void test_bdat_single(void **state)
{
    struct harness *h = *state;
    static const char msg[] = "Subject: chunk\r\n\r\n..x\r\n.\r\nend\r\n.\r\n";

    test_start(h, TEST_OUTSIDE);
    smtpd_session_greet(h->s);
    test_take(h);
    test_send(h, "EHLO client.example\r\n");
    const char *ehlo = test_take(h);
    assert_non_null(strstr(ehlo, "250-CHUNKING\r\n"));
    assert_null(strstr(ehlo, "BINARYMIME"));
    test_send(h, "MAIL FROM:<sender@example.org> BODY=8BITMIME\r\nRCPT TO:<user@hamr.test>\r\n");
    assert_string_equal(test_codes(h), "250 250");
    test_bdat(h, msg, sizeof(msg) - 1, true);
    test_expect(h, "");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_COMMITTING);
    assert_int_equal(h->sink.submits, 1);
    const struct fake_msg *m = &h->sink.msgs[0];
    assert_true(m->body_8bit);
    assert_string_equal(m->sender, "sender@example.org");
    assert_string_equal(m->rcpts[0], "user@hamr.test");
    static const char head[] =
        "Received: from client.example (192.0.2.1)\r\n"
        "\tby mx.hamr.test (hamr) with ESMTP id HAMRQ0001\r\n"
        "\tfor <user@hamr.test>; ";
    assert_memory_equal(m->body, head, sizeof(head) - 1);
    assert_string_equal(body_after_received(m), msg);
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_READY);
    /* A last line without CRLF gets one, as the same text sent with DATA has it. */
    test_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\n");
    test_take(h);
    test_bdat(h, "Subject: y\r\n\r\nno end", 20, true);
    assert_int_equal(h->sink.submits, 2);
    assert_string_equal(body_after_received(&h->sink.msgs[1]), "Subject: y\r\n\r\nno end\r\n");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0002\r\n");
}

/*
 * test_bdat_same_as_data - a message sent with DATA (stuffed) and the same
 * message with BDAT in three chunks (a CRLF split between two) reach the
 * sink with the same octets after Received:.
 */
static void test_bdat_same_as_data(void **state)
{
    struct harness *h = *state;
    static const char msg[] = "From: a@b\r\nSubject: same\r\n\r\n.lead\r\nline 2\r\n";
    static const char stuffed[] = "From: a@b\r\nSubject: same\r\n\r\n..lead\r\nline 2\r\n.\r\n";

    test_ehlo(h, TEST_OUTSIDE);
    test_transaction(h, "user@hamr.test", stuffed);
    assert_int_equal(h->sink.submits, 1);
    fake_sink_step(&h->sink);
    assert_string_equal(test_codes(h), "250");
    test_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\n");
    assert_string_equal(test_codes(h), "250 250");
    size_t cut1 = 12, cut2 = 34; /* msg[34] is the LF of ".lead\r\n" */
    assert_int_equal(msg[cut2 - 1], '\r');
    test_bdat(h, msg, cut1, false);
    test_expect(h, "250 2.0.0 12 octets received\r\n");
    test_bdat(h, msg + cut1, cut2 - cut1, false);
    test_expect(h, "250 2.0.0 22 octets received\r\n");
    test_bdat(h, msg + cut2, sizeof(msg) - 1 - cut2, true);
    assert_int_equal(h->sink.submits, 2);
    assert_string_equal(body_after_received(&h->sink.msgs[0]), msg);
    assert_string_equal(body_after_received(&h->sink.msgs[1]), msg);
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0002\r\n");
}

/* test_bdat_zero_last - "BDAT 0 LAST" ends a message; alone it makes one of our Received: only. */
static void test_bdat_zero_last(void **state)
{
    struct harness *h = *state;

    test_bdat_rcpt(h);
    test_bdat(h, "hello\r\n", 7, false);
    test_expect(h, "250 2.0.0 7 octets received\r\n");
    test_send(h, "BDAT 0 LAST\r\n");
    assert_int_equal(h->sink.submits, 1);
    assert_string_equal(body_after_received(&h->sink.msgs[0]), "hello\r\n");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
    test_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\nbdat 0 last\r\n");
    assert_string_equal(test_codes(h), "250 250");
    assert_int_equal(h->sink.submits, 2);
    assert_string_equal(body_after_received(&h->sink.msgs[1]), "");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0002\r\n");
}

/*
 * test_bdat_pipelined - MAIL, RCPT, two BDATs with their octets and a NOOP
 * in one write (RFC 3030 allows it): the octets after "BDAT n\r\n" are
 * data, the line after them a command, answered after the commit.
 */
static void test_bdat_pipelined(void **state)
{
    struct harness *h = *state;
    static const char in[] =
        "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\n"
        "BDAT 12\r\nRSET\r\nQUIT\r\nBDAT 6 LAST\r\nNOOP\r\nNOOP\r\n";

    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, in);
    test_expect(h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 12 octets received\r\n");
    assert_int_equal(h->sink.submits, 1);
    assert_string_equal(body_after_received(&h->sink.msgs[0]), "RSET\r\nQUIT\r\nNOOP\r\n");
    assert_true(h->io.paused);
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n250 2.0.0 Ok\r\n");
    assert_int_equal(h->io.closes, 0);
}

/*
 * test_bdat_split - commands and chunks one octet per write, the CRLF
 * ending the header block split between two chunks: one message, the
 * chunk octets never parsed as commands, the NOOP after them answered.
 */
static void test_bdat_split(void **state)
{
    struct harness *h = *state;
    static const char in[] = "BDAT 13\r\nSubject: x\r\n\rBDAT 7 LAST\r\n\nbody\r\nNOOP\r\n";

    test_bdat_rcpt(h);
    for (size_t i = 0; i < sizeof(in) - 1; i++) {
        smtpd_session_input(h->s, in + i, 1);
        if (i == 9)
            assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_BDAT);
    }
    assert_int_equal(h->sink.submits, 1);
    assert_string_equal(body_after_received(&h->sink.msgs[0]), "Subject: x\r\n\r\nbody\r\n");
    fake_sink_step(&h->sink);
    assert_string_equal(test_codes(h), "250 250 250");
}

/*
 * test_bdat_out_of_order - BDAT before EHLO, before MAIL, before RCPT:
 * the chunk is read and dropped, then 503 5.5.1; what it held ("RSET",
 * "MAIL FROM") never runs as a command (smuggling, SECURITY.md S22); the
 * transaction that follows works.
 */
static void test_bdat_out_of_order(void **state)
{
    struct harness *h = *state;
    static const char evil[] = "RSET\r\nMAIL FROM:<x@evil.example>\r\nRCPT TO:<v@hamr.test>\r\n";

    test_start(h, TEST_OUTSIDE);
    smtpd_session_greet(h->s);
    test_take(h);
    test_bdat(h, evil, sizeof(evil) - 1, false);
    test_expect(h, "503 5.5.1 Error: send HELO/EHLO first\r\n");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_GREETED);
    test_send(h, "EHLO client.example\r\n");
    test_take(h);
    test_bdat(h, evil, sizeof(evil) - 1, true);
    test_expect(h, "503 5.5.1 Error: need MAIL command\r\n");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_READY);
    test_send(h, "MAIL FROM:<sender@example.org>\r\n");
    test_take(h);
    test_bdat(h, evil, sizeof(evil) - 1, true);
    test_expect(h, "503 5.5.1 Error: need RCPT command\r\n");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_MAIL);
    assert_int_equal(h->sink.ids, 0);
    test_send(h, "RCPT TO:<user@hamr.test>\r\n");
    test_take(h);
    test_bdat(h, "Subject: ok\r\n\r\nok\r\n", 19, true);
    assert_int_equal(h->sink.submits, 1);
    assert_string_equal(h->sink.msgs[0].sender, "sender@example.org");
    assert_int_equal(h->sink.msgs[0].n_rcpts, 1);
    assert_string_equal(body_after_received(&h->sink.msgs[0]), "Subject: ok\r\n\r\nok\r\n");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
}

/*
 * test_bdat_mixing - after a BDAT chunk DATA and RCPT are 503 5.5.1 (RFC
 * 3030 2); RSET drops the half message and a DATA transaction then works.
 */
static void test_bdat_mixing(void **state)
{
    struct harness *h = *state;

    test_bdat_rcpt(h);
    test_bdat(h, "part one\r\n", 10, false);
    test_take(h);
    test_send(h, "DATA\r\nRCPT TO:<other@hamr.test>\r\n");
    test_expect(h, "503 5.5.1 Error: BDAT in progress\r\n503 5.5.1 Error: BDAT in progress\r\n");
    test_send(h, "RSET\r\n");
    test_take(h);
    test_transaction(h, "user@hamr.test", "data\r\n.\r\n");
    assert_int_equal(h->sink.submits, 1);
    assert_string_equal(body_after_received(&h->sink.msgs[0]), "data\r\n");
    fake_sink_step(&h->sink);
    assert_string_equal(test_codes(h), "250");
}

/*
 * test_bdat_bad_size - a chunk-size that is not 1*DIGIT within 20 digits
 * and 64 bits, odd spaces, anything after LAST, a BDAT line with a bare LF
 * or over 512 octets (one of 700, which the reader passes, and one over
 * SMTPD_READER_LINE_MAX, which it refuses): 501 5.5.4 and close (where
 * the chunk ends is unknown); the octets behind it are never run.
 */
static void test_bdat_bad_size(void **state)
{
    struct harness *h = *state;
    static const char *const bad[] = {
        "BDAT\r\n",
        "BDAT x\r\n",
        "BDAT +5\r\n",
        "BDAT -5\r\n",
        "BDAT  5\r\n",
        "BDAT 5 \r\n",
        "BDAT 5  LAST\r\n",
        "BDAT 5 LASTX\r\n",
        "BDAT 5 FIRST\r\n",
        "BDAT 0x10\r\n",
        "BDAT 123456789012345678901\r\n",
        "BDAT 18446744073709551616\r\n",
        "BDAT 5\nRSET\r\n",
        "BDAT 5\rRSET\r\n",
        "BDAT 5\xff\r\n",
        "BDAT 5 L\xc3\xa4ST\r\n",
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad); i++) {
        test_bdat_rcpt(h);
        char in[256];
        snprintf(in, sizeof(in), "%sNOOP\r\n", bad[i]);
        test_send(h, in);
        if (strcmp(test_take(h), "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n") != 0)
            fail_msg("%s: no 501", bad[i]);
        assert_int_equal(h->io.closes, 1);
        assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_CLOSING);
        h->io.released = true;
        h->s = smtpd_session_free(h->s);
        testlib_session_io_free(&h->io);
        assert_int_equal(testlib_session_io_init(&h->io, true), 0);
    }
    test_bdat_rcpt(h);
    smtpd_session_input(h->s, "BDAT 5\0\r\nNOOP\r\n", 15);
    test_expect(h, "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n");
    assert_int_equal(h->io.closes, 1);
    h->io.released = true;
    h->s = smtpd_session_free(h->s);
    testlib_session_io_free(&h->io);
    assert_int_equal(testlib_session_io_init(&h->io, true), 0);
    static const size_t longs[] = {700, SMTPD_READER_LINE_MAX + 100};
    char longline[SMTPD_READER_LINE_MAX + 100];
    for (size_t i = 0; i < HAMR_ARRAY_LEN(longs); i++) {
        size_t len = longs[i];
        memset(longline, '9', len);
        memcpy(longline, "BDAT ", 5);
        memcpy(longline + len - 7, " LAST\r\n", 7);
        if (i > 0) {
            h->io.released = true;
            h->s = smtpd_session_free(h->s);
            testlib_session_io_free(&h->io);
            assert_int_equal(testlib_session_io_init(&h->io, true), 0);
        }
        test_bdat_rcpt(h);
        smtpd_session_input(h->s, longline, len);
        smtpd_session_input(h->s, "NOOP\r\n", 6);
        test_expect(h, "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n");
        assert_int_equal(h->io.closes, 1);
    }
    assert_int_equal(h->sink.submits, 0);
}

/*
 * test_bdat_over_limit - chunks past message_size_limit are read to their
 * end and dropped, later chunks still get 250, and the LAST one 552 5.3.4
 * (as DATA, SECURITY.md S8): nothing queued, the session goes on. A
 * chunk-size near 2^64 is read as far as it goes: the count never wraps.
 */
static void test_bdat_over_limit(void **state)
{
    struct harness *h = *state;
    char part[600];
    memset(part, 'a', sizeof(part));
    memcpy(part + sizeof(part) - 2, "\r\n", 2);

    h->policy.message_size_limit = 1000;
    test_bdat_rcpt(h);
    test_bdat(h, part, sizeof(part), false);
    test_bdat(h, part, sizeof(part), false);
    test_bdat(h, part, sizeof(part), true);
    test_expect(h,
                "250 2.0.0 600 octets received\r\n250 2.0.0 600 octets received\r\n"
                "552 5.3.4 Message size exceeds fixed limit\r\n");
    assert_int_equal(h->sink.submits, 0);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_READY);
    test_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\n");
    test_take(h);
    test_bdat(h, part, sizeof(part), true);
    assert_int_equal(h->sink.submits, 1);
    fake_sink_step(&h->sink);
    assert_string_equal(test_codes(h), "250");
    test_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\n");
    test_take(h);
    test_send(h, "BDAT 18446744073709551615 LAST\r\n");
    for (int i = 0; i < 10; i++)
        smtpd_session_input(h->s, part, sizeof(part));
    test_expect(h, "");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_BDAT);
    assert_int_equal(h->sink.submits, 1);
}

/*
 * test_bdat_content_checks - the DATA checks after the LAST chunk: bare
 * LF, bare CR (also one that ends the message), NUL, header size, hops;
 * nothing queued.
 */
static void test_bdat_content_checks(void **state)
{
    struct harness *h = *state;
    static const struct {
        const char *data;
        size_t len;
        const char *reply;
    } cases[] = {
        {"a\nb\r\n", 5, "550 5.5.2 Error: bare <LF> received\r\n"},
        {"a\rb\r\n", 5, "550 5.5.2 Error: bare <CR> received\r\n"},
        {"a\r\nb\r", 5, "550 5.5.2 Error: bare <CR> received\r\n"},
        {"a\0b\r\n", 5, "554 5.6.0 Message contains NUL characters\r\n"},
    };
    test_bdat_rcpt(h);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        if (i > 0) {
            test_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\n");
            test_take(h);
        }
        test_bdat(h, cases[i].data, cases[i].len, true);
        test_expect(h, cases[i].reply);
    }
    char hops[2048];
    size_t n = 0;
    for (int i = 0; i < 50; i++)
        n += (size_t)snprintf(hops + n, sizeof(hops) - n, "Received: hop %d\r\n", i);
    test_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@hamr.test>\r\n");
    test_take(h);
    test_bdat(h, hops, n / 2, false);
    test_bdat(h, hops + n / 2, n - n / 2, true);
    assert_string_equal(test_codes(h), "250 554");
    assert_int_equal(h->sink.submits, 0);
}

/*
 * test_bdat_data_rate - a chunk is read under data_timeout and
 * min_data_rate, each chunk from its own BDAT: a trickle is cut with
 * 421 4.4.2 and nothing is submitted.
 */
static void test_bdat_data_rate(void **state)
{
    struct harness *h = *state;
    h->policy.min_data_rate = 500;
    h->io.now = 0;
    test_bdat_rcpt(h);
    test_send(h, "BDAT 100\r\n");
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_BDAT);
    assert_int_equal(h->io.timer_ms, 200000);
    h->io.now = 150000;
    test_send(h, "x");
    assert_int_equal(h->io.timer_ms, 50002); /* 2 ms for the octet */
    h->io.now = 200002;
    smtpd_session_timeout(h->s);
    test_expect(h, "421 4.4.2 mx.hamr.test Error: timeout exceeded\r\n");
    assert_int_equal(h->sink.submits, 0);
}

/* ------------------------------------------------------------------ */
/* Relay recipient map (SECURITY.md S20)                               */
/* ------------------------------------------------------------------ */

/* test_rcptmap_write - write text to path (a fresh temporary file when path holds the template). */
static void test_rcptmap_write(char *path, const char *text)
{
    int fd = strstr(path, "XXXXXX") != NULL ? mkstemp(path) : open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(close(fd), 0);
}

/* test_rcptmap_new - a map loaded from text; the file stays at path for reloads. */
static struct smtpd_rcptmap *test_rcptmap_new(char *path, const char *text)
{
    struct smtpd_rcptmap *m = NULL;
    char err[512];
    test_rcptmap_write(path, text);
    if (smtpd_rcptmap_new(path, &m, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    return m;
}

/* test_rcptmap_done - free the session (which borrows the map), then the map and its file. */
static void test_rcptmap_done(struct harness *h, struct smtpd_rcptmap *m, const char *path)
{
    h->io.released = true;
    h->s = smtpd_session_free(h->s);
    smtpd_rcptmap_free(m);
    unlink(path);
}

#define TEST_RCPTMAP_TEMPLATE "/tmp/hamr-test-session-rcptmap-XXXXXX"
#define TEST_UNKNOWN(rcpt) "550 5.1.1 " rcpt ": Recipient address rejected: User unknown\r\n"

static const char test_rcptmap_text[] =
    "# recipients at hamr.test\n"
    "Known@hamr.test\n"
    "other@hamr.test\n"
    "@deep.sub.hamr.test\n";

/* Each RCPT from an outside client against test_rcptmap_text. */
static const struct {
    const char *rcpt;
    const char *want;
} test_rcptmap_cases[] = {
    {"<nobody@hamr.test>", TEST_UNKNOWN("<nobody@hamr.test>")},
    {"<known@hamr.test>", "250 2.1.5 Ok\r\n"},
    {"<KNOWN@HAMR.TEST>", "250 2.1.5 Ok\r\n"},
    {"<\"known\"@hamr.test>", "250 2.1.5 Ok\r\n"},
    {"<knowN@hamr.test>", "250 2.1.5 Ok\r\n"},
    {"<know@hamr.test>", TEST_UNKNOWN("<know@hamr.test>")},
    {"<\"x y\"@hamr.test>", TEST_UNKNOWN("<\"x y\"@hamr.test>")},
    /* The source route is stripped: the final address is looked up and shown. */
    {"<@relay.example:nobody@hamr.test>", TEST_UNKNOWN("<nobody@hamr.test>")},
    {"<@a.example,@b.example:other@hamr.test>", "250 2.1.5 Ok\r\n"},
    /* The wildcard covers its domain, not its other subdomains. */
    {"<anyone@deep.sub.hamr.test>", "250 2.1.5 Ok\r\n"},
    {"<anyone@x.sub.hamr.test>", TEST_UNKNOWN("<anyone@x.sub.hamr.test>")},
    /* The relay decision comes first and is unchanged. */
    {"<known@victim.example>", "554 5.7.1 <known@victim.example>: Relay access denied\r\n"},
    {"<known%victim.example@hamr.test>",
     "554 5.7.1 <known%victim.example@hamr.test>: Relay access denied\r\n"},
};

/* test_rcptmap_rcpt - outside clients: listed recipients 250, unknown ones 550 5.1.1. */
static void test_rcptmap_rcpt(void **state)
{
    struct harness *h = *state;
    char path[] = TEST_RCPTMAP_TEMPLATE, line[512];
    struct smtpd_rcptmap *m = test_rcptmap_new(path, test_rcptmap_text);

    h->policy.rcptmap = m;
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<a@b.example>\r\n");
    test_expect(h, "250 2.1.0 Ok\r\n");
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_rcptmap_cases); i++) {
        snprintf(line, sizeof(line), "RCPT TO:%s\r\n", test_rcptmap_cases[i].rcpt);
        test_send(h, line);
        const char *got = test_take(h);
        if (strcmp(got, test_rcptmap_cases[i].want) != 0)
            fail_msg("%s: got \"%s\" want \"%s\"", test_rcptmap_cases[i].rcpt, got,
                     test_rcptmap_cases[i].want);
    }
    assert_int_equal(h->io.closes, 0);
    test_rcptmap_done(h, m, path);
}

/* test_rcptmap_mixed - one good and one bad recipient: the message goes to the good one only. */
static void test_rcptmap_mixed(void **state)
{
    struct harness *h = *state;
    char path[] = TEST_RCPTMAP_TEMPLATE;
    struct smtpd_rcptmap *m = test_rcptmap_new(path, test_rcptmap_text);

    h->policy.rcptmap = m;
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h,
              "MAIL FROM:<sender@b.example>\r\n"
              "RCPT TO:<ghost@hamr.test>\r\n"
              "RCPT TO:<Known@hamr.test>\r\n"
              "RCPT TO:<spectre@hamr.test>\r\n"
              "DATA\r\n");
    char want[1024];
    snprintf(want, sizeof(want),
             "250 2.1.0 Ok\r\n%s250 2.1.5 Ok\r\n%s354 End data with <CR><LF>.<CR><LF>\r\n",
             TEST_UNKNOWN("<ghost@hamr.test>"), TEST_UNKNOWN("<spectre@hamr.test>"));
    test_expect(h, want);
    test_send(h, "Subject: t\r\n\r\nhello\r\n.\r\n");
    assert_int_equal(h->sink.submits, 1);
    const struct fake_msg *msg = &h->sink.msgs[0];
    assert_string_equal(msg->sender, "sender@b.example");
    assert_int_equal(msg->n_rcpts, 1);
    assert_string_equal(msg->rcpts[0], "Known@hamr.test"); /* as the client wrote it */
    assert_non_null(strstr((const char *)msg->body, "for <Known@hamr.test>"));
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");

    /* Only unknown recipients: DATA has nothing to send to. */
    test_send(h, "MAIL FROM:<sender@b.example>\r\nRCPT TO:<ghost@hamr.test>\r\nDATA\r\n");
    assert_string_equal(test_codes(h), "250 550 503");
    assert_int_equal(h->sink.submits, 1);
    test_rcptmap_done(h, m, path);
}

/*
 * test_rcptmap_unchecked - relay networks may send anywhere except to our
 * unknown users; with no map, our relay domains take any recipient.
 */
static void test_rcptmap_unchecked(void **state)
{
    static const char *const clients[] = {TEST_INSIDE, "::1", "::ffff:10.9.9.9"};
    char path[] = TEST_RCPTMAP_TEMPLATE;
    struct smtpd_rcptmap *m = test_rcptmap_new(path, test_rcptmap_text);
    (void)state;

    for (size_t c = 0; c <= HAMR_ARRAY_LEN(clients); c++) {
        struct harness *h = calloc(1, sizeof(*h));
        assert_non_null(h);
        test_policy(h);
        /* The last round: an outside client with the map off. */
        bool off = c == HAMR_ARRAY_LEN(clients);
        h->policy.rcptmap = off ? NULL : m;
        test_ehlo(h, off ? TEST_OUTSIDE : clients[c]);
        test_send(h,
                  "MAIL FROM:<a@b.example>\r\n"
                  "RCPT TO:<ghost@hamr.test>\r\n"
                  "RCPT TO:<anyone@x.sub.hamr.test>\r\n"
                  "RCPT TO:<someone@elsewhere.example>\r\n"
                  "DATA\r\n");
        /* A relay client may send anywhere, but not to our unknown users. */
        assert_string_equal(test_codes(h), off ? "250 250 250 554 354" : "250 550 550 250 354");
        test_send(h, "x\r\n.\r\n");
        assert_int_equal(h->sink.msgs[0].n_rcpts, off ? 2 : 1);
        fake_sink_step(&h->sink);
        void *p = h;
        test_teardown(&p);
    }
    smtpd_rcptmap_free(m);
    unlink(path);
}

/* test_rcptmap_errors - each 550 5.1.1 counts toward max_errors; a known recipient still passes. */
static void test_rcptmap_errors(void **state)
{
    struct harness *h = *state;
    char path[] = TEST_RCPTMAP_TEMPLATE;
    struct smtpd_rcptmap *m = test_rcptmap_new(path, test_rcptmap_text);

    h->policy.rcptmap = m;
    h->policy.max_errors = 3;
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h,
              "MAIL FROM:<a@b.example>\r\n"
              "RCPT TO:<u1@hamr.test>\r\n"
              "RCPT TO:<u2@hamr.test>\r\n"
              "RCPT TO:<known@hamr.test>\r\n");
    assert_string_equal(test_codes(h), "250 550 550 250");
    assert_int_equal(h->io.closes, 0);
    test_send(h, "RCPT TO:<u3@hamr.test>\r\n");
    test_expect(h,
                TEST_UNKNOWN("<u3@hamr.test>") "421 4.7.0 mx.hamr.test Error: too many errors\r\n");
    assert_int_equal(h->io.closes, 1);
    assert_int_equal(h->sink.submits, 0);
    test_rcptmap_done(h, m, path);
}

/* test_rcptmap_reload - a session borrows the map: a reload changes its next answer. */
static void test_rcptmap_reload(void **state)
{
    struct harness *h = *state;
    char path[] = TEST_RCPTMAP_TEMPLATE, err[512];
    struct smtpd_rcptmap *m = test_rcptmap_new(path, test_rcptmap_text);

    h->policy.rcptmap = m;
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<newcomer@hamr.test>\r\n");
    assert_string_equal(test_codes(h), "250 550");
    test_rcptmap_write(path, "newcomer@hamr.test\n");
    assert_int_equal(smtpd_rcptmap_reload(m, err, sizeof(err)), 0);
    test_send(h, "RCPT TO:<newcomer@hamr.test>\r\nRCPT TO:<known@hamr.test>\r\n");
    assert_string_equal(test_codes(h), "250 550");
    /* A bad file keeps the table in use. */
    test_rcptmap_write(path, "newcomer@hamr.test\nbad line\n");
    assert_int_equal(smtpd_rcptmap_reload(m, err, sizeof(err)), HAMR_EINVAL);
    test_send(h, "RCPT TO:<NEWCOMER@hamr.test>\r\n");
    assert_string_equal(test_codes(h), "250");
    test_rcptmap_done(h, m, path);
}

/* ------------------------------------------------------------------ */
/* Envelope extensions: SMTPUTF8, DSN, REQUIRETLS (SECURITY.md S24)    */
/* ------------------------------------------------------------------ */

/* test_ext_tls - greeted, STARTTLS, EHLO inside TLS; output discarded. */
static void test_ext_tls(struct harness *h, const char *client)
{
    h->offer_tls = true;
    test_ehlo(h, client);
    test_send(h, "STARTTLS\r\n");
    test_expect(h, "220 2.0.0 Ready to start TLS\r\n");
    test_send(h, "EHLO client.example\r\n");
    test_take(h);
    assert_true(smtpd_session_tls(h->s));
}

/*
 * test_ext_ehlo - SMTPUTF8 and DSN while ext_ok says yes (asked at each
 * EHLO), REQUIRETLS only inside TLS as well; none of them while it says no.
 */
static void test_ext_ehlo(void **state)
{
    struct harness *h = *state;
    static const char base[] =
        "250-mx.hamr.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n"
        "250-8BITMIME\r\n250-CHUNKING\r\n";

    h->sink.ext_hook = true;
    h->offer_tls = true;
    test_start(h, TEST_OUTSIDE);
    smtpd_session_greet(h->s);
    test_take(h);
    test_send(h, "EHLO client.example\r\n");
    char want[1024];
    snprintf(want, sizeof(want), "%s%s", base,
             "250-SMTPUTF8\r\n250-DSN\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n");
    test_expect(h, want);
    assert_int_equal(h->sink.ext_asks, 1);
    h->sink.ext_no = true;
    test_send(h, "EHLO client.example\r\n");
    snprintf(want, sizeof(want), "%s%s", base, "250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n");
    test_expect(h, want);
    assert_int_equal(h->sink.ext_asks, 2);
    test_send(h, "STARTTLS\r\nEHLO client.example\r\n");
    test_take(h); /* the EHLO after STARTTLS is dropped with the plaintext */
    test_send(h, "EHLO client.example\r\n");
    snprintf(want, sizeof(want), "%s%s", base, "250 ENHANCEDSTATUSCODES\r\n");
    test_expect(h, want);
    h->sink.ext_no = false;
    test_send(h, "EHLO client.example\r\n");
    snprintf(want, sizeof(want), "%s%s", base,
             "250-SMTPUTF8\r\n250-DSN\r\n250-REQUIRETLS\r\n250 ENHANCEDSTATUSCODES\r\n");
    test_expect(h, want);
    /* HELO lists nothing, and asks nothing. */
    int asks = h->sink.ext_asks;
    test_send(h, "HELO client.example\r\n");
    test_expect(h, "250 mx.hamr.test\r\n");
    assert_int_equal(h->sink.ext_asks, asks);
}

/*
 * test_ext_not_offered - while ext_ok says no (even if it said yes at
 * EHLO) every extension parameter is unknown, and a UTF-8 path needs
 * SMTPUTF8 as before.
 */
static void test_ext_not_offered(void **state)
{
    struct harness *h = *state;
    static const struct {
        const char *cmd, *want;
    } cases[] = {
        {"MAIL FROM:<a@b.example> SMTPUTF8", "555 5.5.4 Unsupported option: SMTPUTF8\r\n"},
        {"MAIL FROM:<a@b.example> RET=FULL", "555 5.5.4 Unsupported option: RET\r\n"},
        {"MAIL FROM:<a@b.example> ENVID=x", "555 5.5.4 Unsupported option: ENVID\r\n"},
        {"MAIL FROM:<a@b.example> REQUIRETLS", "555 5.5.4 Unsupported option: REQUIRETLS\r\n"},
        {"MAIL FROM:<\xc3\xbc@b.example> SMTPUTF8",
         "553 5.6.7 Must declare SMTPUTF8 to send unicode address\r\n"},
        {"MAIL FROM:<a@b.example>", "250 2.1.0 Ok\r\n"},
        {"RCPT TO:<a@hamr.test> NOTIFY=NEVER", "555 5.5.4 Unsupported option: NOTIFY\r\n"},
        {"RCPT TO:<a@hamr.test> ORCPT=rfc822;a@hamr.test",
         "555 5.5.4 Unsupported option: ORCPT\r\n"},
    };
    char line[256];

    h->sink.ext_hook = true;
    test_ehlo(h, TEST_OUTSIDE);
    h->sink.ext_no = true;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        snprintf(line, sizeof(line), "%s\r\n", cases[i].cmd);
        test_send(h, line);
        const char *got = test_take(h);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("%s: got \"%s\" want \"%s\"", cases[i].cmd, got, cases[i].want);
    }
    assert_int_equal(h->sink.ext_asks, 1 + 6); /* EHLO, then each MAIL */
    /* The answer at MAIL holds for the transaction: no later "yes" opens DSN. */
    h->sink.ext_no = false;
    test_send(h, "RCPT TO:<a@hamr.test> NOTIFY=NEVER\r\n");
    test_expect(h, "555 5.5.4 Unsupported option: NOTIFY\r\n");
}

/*
 * test_ext_envelope - every parameter taken lands in the envelope: inside
 * TLS, a UTF-8 sender with SMTPUTF8, RET, ENVID (decoded), REQUIRETLS; per
 * recipient NOTIFY and ORCPT (decoded), parallel to the recipients;
 * Received: says UTF8SMTPS (RFC 6531 4.3).
 */
static void test_ext_envelope(void **state)
{
    struct harness *h = *state;

    test_ext_tls(h, TEST_OUTSIDE);
    test_send(h,
              "MAIL FROM:<j\xc3\xb6rg@b\xc3\xbc"
              "cher.example> smtputf8 RET=hdrs "
              "ENVID=QQ+2B1+3D REQUIRETLS BODY=8BITMIME\r\n");
    test_expect(h, "250 2.1.0 Ok\r\n");
    test_send(h, "RCPT TO:<a@hamr.test> NOTIFY=SUCCESS,delay ORCPT=RFC822;A+2Bb@hamr.test\r\n");
    test_send(h, "RCPT TO:<\xe7\x94\xa8@x.sub.hamr.test>\r\n");
    test_send(h, "RCPT TO:<Postmaster> NOTIFY=NEVER\r\n");
    test_send(h, "RCPT TO:<c@hamr.test> ORCPT=utf-8;\xc3\xa7@hamr.test\r\n");
    test_send(h, "DATA\r\n");
    assert_string_equal(test_codes(h), "250 250 250 250 354");
    test_send(h, "Subject: \xc3\xbc\r\n\r\nhi\r\n.\r\n");
    assert_int_equal(h->sink.submits, 1);
    const struct fake_msg *m = &h->sink.msgs[0];
    assert_string_equal(m->sender,
                        "j\xc3\xb6rg@b\xc3\xbc"
                        "cher.example");
    assert_true(m->smtputf8);
    assert_true(m->requiretls);
    assert_true(m->body_8bit);
    assert_int_equal(m->ret, SMTP_RET_HDRS);
    assert_string_equal(m->envid, "QQ+1=");
    assert_int_equal(m->n_rcpts, 4);
    assert_string_equal(m->rcpts[1], "\xe7\x94\xa8@x.sub.hamr.test");
    assert_string_equal(m->rcpts[2], "postmaster@mx.hamr.test");
    assert_true(m->has_dsn);
    assert_int_equal(m->notify[0], SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_DELAY);
    assert_string_equal(m->orcpt[0], "rfc822;A+b@hamr.test");
    assert_int_equal(m->notify[1], 0);
    assert_null(m->orcpt[1]);
    assert_int_equal(m->notify[2], SMTP_NOTIFY_NEVER);
    assert_null(m->orcpt[2]);
    assert_int_equal(m->notify[3], 0);
    assert_string_equal(m->orcpt[3], "utf-8;\xc3\xa7@hamr.test");
    assert_non_null(strstr((const char *)m->body, " with UTF8SMTPS id HAMRQ0001"));
    assert_string_equal(body_after_received(m), "Subject: \xc3\xbc\r\n\r\nhi\r\n");
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");

    /* The next transaction starts clean: nothing of the last one's parameters. */
    test_send(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@hamr.test>\r\nDATA\r\n");
    assert_string_equal(test_codes(h), "250 250 354");
    test_send(h, "hi\r\n.\r\n");
    m = &h->sink.msgs[1];
    assert_false(m->smtputf8);
    assert_false(m->requiretls);
    assert_int_equal(m->ret, SMTP_RET_UNSET);
    assert_null(m->envid);
    assert_false(m->has_dsn);
    assert_non_null(strstr((const char *)m->body, " with ESMTPS id HAMRQ0002"));
}

/*
 * test_ext_long_lines - the DSN parameters at their longest, on command
 * lines well over RFC 5321's 512 octets (RFC 3461 5 raises it): a MAIL
 * with a 256-octet path, SIZE, BODY and an ENVID of 100 octets sent as 300
 * ("+2B" each); an RCPT with NOTIFY and an ORCPT of exactly 500 decoded
 * octets (992 on the wire). Both land in the envelope whole; an ORCPT of
 * 501 octets is refused.
 */
static void test_ext_long_lines(void **state)
{
    struct harness *h = *state;
    enum { ADDR = SMTP_ORCPT_MAX - 7 }; /* after "rfc822;" */
    char line[SMTPD_READER_LINE_MAX], sender[SMTP_ADDR_PATH_MAX], envid[SMTP_ENVID_MAX + 1];
    char orcpt[SMTP_ORCPT_MAX + 2];
    size_t n;

    test_ehlo(h, TEST_OUTSIDE);
    /* <64 octets @ 189 octets> is the longest path: 256 octets with <>. */
    memset(sender, 'l', 64);
    sender[64] = '@';
    for (size_t i = 0; i < 189; i++)
        sender[65 + i] = (i % 10 == 9 && i + 1 < 189) ? '.' : 'd';
    sender[254] = '\0';
    memset(envid, '+', SMTP_ENVID_MAX);
    envid[SMTP_ENVID_MAX] = '\0';
    n = (size_t)snprintf(line, sizeof(line),
                         "MAIL FROM:<%s> SIZE=1000 BODY=8BITMIME ENVID=", sender);
    for (size_t i = 0; i < SMTP_ENVID_MAX; i++)
        n += (size_t)snprintf(line + n, sizeof(line) - n, "+2B");
    n += (size_t)snprintf(line + n, sizeof(line) - n, " RET=HDRS\r\n");
    assert_true(n > 600 && n < sizeof(line));
    test_send(h, line);
    test_expect(h, "250 2.1.0 Ok\r\n");

    /* "rfc822;" then 493 octets, every other one '+' or '=' (xtext "+2B", "+3D"). */
    n = (size_t)snprintf(line, sizeof(line),
                         "RCPT TO:<a@hamr.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;");
    memcpy(orcpt, "rfc822;", 7);
    for (size_t i = 0; i < ADDR; i++) {
        char c = i % 2 ? "+="[(i / 2) % 2] : 'a';
        orcpt[7 + i] = c;
        n += (size_t)snprintf(line + n, sizeof(line) - n, "%s",
                              c == '+'   ? "+2B"
                              : c == '=' ? "+3D"
                                         : "a");
    }
    orcpt[SMTP_ORCPT_MAX] = '\0';
    n += (size_t)snprintf(line + n, sizeof(line) - n, "\r\n");
    assert_true(n > 1000 && n < sizeof(line));
    test_send(h, line);
    test_expect(h, "250 2.1.5 Ok\r\n");
    /* One octet more is over RFC 3461's 500. */
    memcpy(line + n - 2, "a\r\n", 4);
    test_send(h, line);
    test_expect(h, "501 5.5.4 Bad ORCPT parameter syntax\r\n");

    test_send(h, "DATA\r\n");
    assert_string_equal(test_codes(h), "354");
    test_send(h, "hi\r\n.\r\n");
    assert_int_equal(h->sink.submits, 1);
    const struct fake_msg *m = &h->sink.msgs[0];
    assert_string_equal(m->sender, sender);
    assert_true(m->body_8bit);
    assert_int_equal(m->ret, SMTP_RET_HDRS);
    assert_string_equal(m->envid, envid);
    assert_int_equal(m->n_rcpts, 1);
    assert_true(m->has_dsn);
    assert_int_equal(m->notify[0], SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY);
    assert_int_equal(strlen(m->orcpt[0]), SMTP_ORCPT_MAX);
    assert_string_equal(m->orcpt[0], orcpt);
    fake_sink_step(&h->sink);
    test_expect(h, "250 2.0.0 Ok: queued as HAMRQ0001\r\n");
}

/* Extension parameters, one transaction each: the reply to the last command. */
static const struct {
    const char *label;
    bool tls;
    const char *mail; /* NULL: MAIL FROM:<a@b.example> */
    const char *rcpt; /* NULL: none */
    const char *want;
} test_ext_cases[] = {
    {"SMTPUTF8 value", false, "MAIL FROM:<a@b.example> SMTPUTF8=yes", NULL,
     "501 5.5.4 Bad SMTPUTF8 parameter syntax"},
    {"SMTPUTF8 twice", false, "MAIL FROM:<a@b.example> SMTPUTF8 smtputf8", NULL,
     "501 5.5.4 Duplicate SMTPUTF8 parameter"},
    {"RET other", false, "MAIL FROM:<a@b.example> RET=ALL", NULL,
     "501 5.5.4 Bad RET parameter syntax"},
    {"RET no value", false, "MAIL FROM:<a@b.example> RET", NULL,
     "501 5.5.4 Bad RET parameter syntax"},
    {"RET twice", false, "MAIL FROM:<a@b.example> RET=FULL RET=HDRS", NULL,
     "501 5.5.4 Duplicate RET parameter"},
    {"RET full", false, "MAIL FROM:<a@b.example> RET=Full", NULL, "250 2.1.0 Ok"},
    {"ENVID empty", false, "MAIL FROM:<a@b.example> ENVID=", NULL,
     "501 5.1.7 Bad sender address syntax"},
    {"ENVID cut hex", false, "MAIL FROM:<a@b.example> ENVID=a+2", NULL,
     "501 5.5.4 Bad ENVID parameter syntax"},
    {"ENVID lower-case hex", false, "MAIL FROM:<a@b.example> ENVID=a+2b", NULL,
     "501 5.5.4 Bad ENVID parameter syntax"},
    {"ENVID decodes to LF", false, "MAIL FROM:<a@b.example> ENVID=a+0Ab", NULL,
     "501 5.5.4 Bad ENVID parameter syntax"},
    {"ENVID decodes to NUL", false, "MAIL FROM:<a@b.example> ENVID=a+00", NULL,
     "501 5.5.4 Bad ENVID parameter syntax"},
    {"ENVID decodes to 8-bit", false, "MAIL FROM:<a@b.example> ENVID=a+C3+BC", NULL,
     "501 5.5.4 Bad ENVID parameter syntax"},
    {"ENVID 100", false,
     "MAIL FROM:<a@b.example> ENVID=0123456789012345678901234567890123456789012345678901234567"
     "890123456789012345678901234567890123456789",
     NULL, "250 2.1.0 Ok"},
    {"ENVID 101", false,
     "MAIL FROM:<a@b.example> ENVID=0123456789012345678901234567890123456789012345678901234567"
     "8901234567890123456789012345678901234567890",
     NULL, "501 5.5.4 Bad ENVID parameter syntax"},
    {"ENVID 100 encoded", false,
     "MAIL FROM:<a@b.example> ENVID=+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B"
     "+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B"
     "+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B"
     "+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B",
     NULL, "250 2.1.0 Ok"},
    {"ENVID twice", false, "MAIL FROM:<a@b.example> ENVID=x ENVID=x", NULL,
     "501 5.5.4 Duplicate ENVID parameter"},
    {"REQUIRETLS outside TLS", false, "MAIL FROM:<a@b.example> REQUIRETLS", NULL,
     "530 5.7.10 REQUIRETLS needs TLS: issue STARTTLS first"},
    {"REQUIRETLS value", true, "MAIL FROM:<a@b.example> REQUIRETLS=YES", NULL,
     "501 5.5.4 Bad REQUIRETLS parameter syntax"},
    {"REQUIRETLS twice", true, "MAIL FROM:<a@b.example> REQUIRETLS REQUIRETLS", NULL,
     "501 5.5.4 Duplicate REQUIRETLS parameter"},
    {"REQUIRETLS inside TLS", true, "MAIL FROM:<a@b.example> requiretls", NULL, "250 2.1.0 Ok"},
    {"unknown after the known", false, "MAIL FROM:<a@b.example> SMTPUTF8 X-Y=1", NULL,
     "555 5.5.4 Unsupported option: X-Y"},
    /* RCPT: NOTIFY and ORCPT. */
    {"NOTIFY never and more", false, NULL, "RCPT TO:<a@hamr.test> NOTIFY=NEVER,SUCCESS",
     "501 5.5.4 Bad NOTIFY parameter syntax"},
    {"NOTIFY other", false, NULL, "RCPT TO:<a@hamr.test> NOTIFY=SOMETIMES",
     "501 5.5.4 Bad NOTIFY parameter syntax"},
    {"NOTIFY repeated keyword", false, NULL, "RCPT TO:<a@hamr.test> NOTIFY=DELAY,DELAY",
     "501 5.5.4 Bad NOTIFY parameter syntax"},
    {"NOTIFY empty item", false, NULL, "RCPT TO:<a@hamr.test> NOTIFY=SUCCESS,",
     "501 5.5.4 Bad NOTIFY parameter syntax"},
    {"NOTIFY empty", false, NULL,
     "RCPT TO:<a@hamr.test> NOTIFY=", "501 5.1.3 Bad recipient address syntax"},
    {"NOTIFY twice", false, NULL, "RCPT TO:<a@hamr.test> NOTIFY=SUCCESS NOTIFY=FAILURE",
     "501 5.5.4 Duplicate NOTIFY parameter"},
    {"NOTIFY all three", false, NULL, "RCPT TO:<a@hamr.test> NOTIFY=failure,Success,DELAY",
     "250 2.1.5 Ok"},
    {"ORCPT no type", false, NULL, "RCPT TO:<a@hamr.test> ORCPT=a@hamr.test",
     "501 5.5.4 Bad ORCPT parameter syntax"},
    {"ORCPT empty type", false, NULL, "RCPT TO:<a@hamr.test> ORCPT=;a@hamr.test",
     "501 5.5.4 Bad ORCPT parameter syntax"},
    {"ORCPT empty address", false, NULL, "RCPT TO:<a@hamr.test> ORCPT=rfc822;",
     "501 5.5.4 Bad ORCPT parameter syntax"},
    {"ORCPT bad xtext", false, NULL, "RCPT TO:<a@hamr.test> ORCPT=rfc822;a+4@hamr.test",
     "501 5.5.4 Bad ORCPT parameter syntax"},
    {"ORCPT decodes to CR", false, NULL, "RCPT TO:<a@hamr.test> ORCPT=rfc822;a+0D@hamr.test",
     "501 5.5.4 Bad ORCPT parameter syntax"},
    {"ORCPT type of 33 octets", false, NULL,
     "RCPT TO:<a@hamr.test> ORCPT=x-2345678901234567890123456789012;a@hamr.test",
     "501 5.5.4 Bad ORCPT parameter syntax"},
    {"ORCPT type of 32 octets", false, NULL,
     "RCPT TO:<a@hamr.test> ORCPT=x-234567890123456789012345678901;a@hamr.test", "250 2.1.5 Ok"},
    {"ORCPT twice", false, NULL,
     "RCPT TO:<a@hamr.test> ORCPT=rfc822;a@hamr.test ORCPT=rfc822;a@hamr.test",
     "501 5.5.4 Duplicate ORCPT parameter"},
    {"ORCPT UTF-8 without SMTPUTF8", false, NULL,
     "RCPT TO:<a@hamr.test> ORCPT=utf-8;\xc3\xa7@hamr.test",
     "553 5.6.7 Must declare SMTPUTF8 to send unicode address"},
    {"ORCPT UTF-8 with SMTPUTF8", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<a@hamr.test> ORCPT=utf-8;\xc3\xa7@hamr.test", "250 2.1.5 Ok"},
    {"ORCPT 8-bit rfc822 with SMTPUTF8", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<a@hamr.test> ORCPT=rfc822;\xc3\xa7@hamr.test",
     "501 5.5.4 Bad ORCPT parameter syntax"},
    {"RCPT unknown", false, NULL, "RCPT TO:<a@hamr.test> NOTIFY=NEVER RRVS=2030-01-01",
     "555 5.5.4 Unsupported option: RRVS"},
    /* SMTPUTF8 paths (RFC 6531 3.3, 3.4). */
    {"UTF-8 sender without SMTPUTF8", false, "MAIL FROM:<\xc3\xbc@b.example> RET=FULL", NULL,
     "553 5.6.7 Must declare SMTPUTF8 to send unicode address"},
    {"U-label sender without SMTPUTF8", false, "MAIL FROM:<a@b\xc3\xbc.example>", NULL,
     "553 5.6.7 Must declare SMTPUTF8 to send unicode address"},
    {"UTF-8 sender with SMTPUTF8", false, "MAIL FROM:<\xc3\xbc@b\xc3\xbc.example> SMTPUTF8", NULL,
     "250 2.1.0 Ok"},
    {"UTF-8 sender, C1 control", false, "MAIL FROM:<a\xc2\x85@b.example> SMTPUTF8", NULL,
     "501 5.1.7 Bad sender address syntax"},
    {"UTF-8 sender, overlong", false, "MAIL FROM:<\xc0\xaf@b.example> SMTPUTF8", NULL,
     "500 5.5.2 Error: bad UTF-8 syntax"},
    {"UTF-8 sender, surrogate", false, "MAIL FROM:<\xed\xa0\x80@b.example> SMTPUTF8", NULL,
     "500 5.5.2 Error: bad UTF-8 syntax"},
    {"UTF-8 parameter value", false, "MAIL FROM:<a@b.example> SMTPUTF8 ENVID=\xc3\xbc", NULL,
     "501 5.1.7 Bad sender address syntax"},
    {"UTF-8 rcpt without SMTPUTF8", false, NULL, "RCPT TO:<\xc3\xbc@hamr.test>",
     "553 5.6.7 Must declare SMTPUTF8 to send unicode address"},
    {"UTF-8 rcpt with SMTPUTF8", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<\xc3\xbc@hamr.test>", "250 2.1.5 Ok"},
    {"UTF-8 rcpt quoted", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<\"\xc3\xbc x\"@hamr.test>", "250 2.1.5 Ok"},
    {"UTF-8 rcpt, C1 control", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<\xc2\x9b@hamr.test>", "501 5.1.3 Bad recipient address syntax"},
    /* U-labels and the relay rules: octet for octet, no IDNA. */
    {"U-label under .sub.hamr.test", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<a@b\xc3\xbc"
     "cher.sub.hamr.test>",
     "250 2.1.5 Ok"},
    {"U-label elsewhere", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<a@b\xc3\xbc"
     "cher.example>",
     "554 5.7.1 <a@b??cher.example>: Relay access denied"},
    {"U-label look-alike of hamr.test", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<a@h\xc3\xa0mr.test>", "554 5.7.1 <a@h??mr.test>: Relay access denied"},
    {"UTF-8 in a source route", false, "MAIL FROM:<a@b.example> SMTPUTF8",
     "RCPT TO:<@r\xc3\xbc.example:a@hamr.test>", "501 5.1.3 Bad recipient address syntax"},
};

/* test_ext_replies - each row of test_ext_cases in a fresh session (ext_ok NULL: offered). */
static void test_ext_replies(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_ext_cases); i++) {
        struct harness *h;
        void *p;
        char line[1024], want[600];
        test_setup(&p);
        h = p;
        if (test_ext_cases[i].tls)
            test_ext_tls(h, TEST_OUTSIDE);
        else
            test_ehlo(h, TEST_OUTSIDE);
        const char *mail = test_ext_cases[i].mail;
        snprintf(line, sizeof(line), "%s\r\n", mail != NULL ? mail : "MAIL FROM:<a@b.example>");
        test_send(h, line);
        if (test_ext_cases[i].rcpt != NULL) {
            assert_string_equal(test_take(h), "250 2.1.0 Ok\r\n");
            snprintf(line, sizeof(line), "%s\r\n", test_ext_cases[i].rcpt);
            test_send(h, line);
        }
        snprintf(want, sizeof(want), "%s\r\n", test_ext_cases[i].want);
        const char *got = test_take(h);
        if (strcmp(got, want) != 0)
            fail_msg("%s: got \"%s\" want \"%s\"", test_ext_cases[i].label, got, want);
        test_teardown(&p);
    }
}

/*
 * test_ext_rcptmap - SMTPUTF8 recipients against the relay recipient map:
 * ASCII case folded, UTF-8 octet for octet; the unknown one is shown
 * escaped in the 550.
 */
static void test_ext_rcptmap(void **state)
{
    struct harness *h = *state;
    char path[] = TEST_RCPTMAP_TEMPLATE;
    struct smtpd_rcptmap *m = test_rcptmap_new(path,
                                               "J\xc3\xb6rg@hamr.test\n@b\xc3\xbc"
                                               "cher.sub.hamr.test\n");

    h->policy.rcptmap = m;
    test_ehlo(h, TEST_OUTSIDE);
    test_send(h, "MAIL FROM:<a@b.example> SMTPUTF8\r\n");
    test_send(h, "RCPT TO:<j\xc3\xb6RG@HAMR.test>\r\n");
    test_send(h, "RCPT TO:<j\xc3\x96rg@hamr.test>\r\n"); /* capital O umlaut: another user */
    test_send(h,
              "RCPT TO:<anyone@B\xc3\xbc"
              "CHER.sub.hamr.test>\r\n");
    test_expect(
        h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" TEST_UNKNOWN("<j??rg@hamr.test>") "250 2.1.5 Ok\r\n");
    test_rcptmap_done(h, m, path);
}

/* main - run every test; only errors are logged. */
int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, test_setup, test_teardown)
        T(test_greeting_and_ehlo),
        T(test_happy_path),
        T(test_messages_in_one_session),
        T(test_pipelining),
        T(test_pipelining_quit_after_dot),
        T(test_early_talker),
        T(test_body_before_354),
        T(test_reply_table),
        T(test_length_limits),
        T(test_line_too_long),
        T(test_rset_clears),
        T(test_postmaster),
        T(test_helo_received),
        T(test_size_mid_data),
        T(test_body_rejects),
        T(test_header_limit),
        T(test_hop_count),
        T(test_too_many_recipients),
        T(test_relay_denied),
        T(test_nmap_open_relay),
        T(test_relay_networks),
        T(test_max_errors),
        T(test_junk_commands),
        T(test_junk_reset),
        T(test_junk_default),
        T(test_timeout),
        T(test_command_trickle),
        T(test_min_data_rate_timer),
        T(test_min_data_rate_late_input),
        T(test_min_data_rate_at_rate),
        T(test_min_data_rate_off),
        T(test_stress_timeouts),
        T(test_stress_off),
        T(test_http),
        T(test_check_mail),
        T(test_submit_failures),
        cmocka_unit_test(test_submit_in_doubt),
        T(test_observer),
        T(test_disconnect_while_committing),
        T(test_output_high_water),
        T(test_input_bound),
        T(test_shutdown),
        T(test_byte_by_byte),
        T(test_bdat_single),
        T(test_bdat_same_as_data),
        T(test_bdat_zero_last),
        T(test_bdat_pipelined),
        T(test_bdat_split),
        T(test_bdat_out_of_order),
        T(test_bdat_mixing),
        T(test_bdat_bad_size),
        T(test_bdat_over_limit),
        T(test_bdat_content_checks),
        T(test_bdat_data_rate),
        T(test_rcptmap_rcpt),
        T(test_rcptmap_mixed),
        cmocka_unit_test(test_rcptmap_unchecked),
        T(test_rcptmap_errors),
        T(test_rcptmap_reload),
        T(test_ext_ehlo),
        T(test_ext_not_offered),
        T(test_ext_envelope),
        T(test_ext_long_lines),
        cmocka_unit_test(test_ext_replies),
        T(test_ext_rcptmap),
#undef T
    };
    log_set_level(LOG_LEVEL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
