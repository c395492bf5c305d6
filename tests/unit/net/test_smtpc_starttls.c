/*
 * test_smtpc_starttls.c - outbound STARTTLS of the SMTP client pool against a
 * scripted SMTP server on the same libuv loop (127.0.0.1, port 0) that can
 * offer STARTTLS and speak TLS through the memory-BIO engine, with a CA and
 * a certificate for localhost/127.0.0.1 made per run (tls_testcert.h).
 *
 * Covers: may with STARTTLS offered uses TLS and the message arrives; may
 * without STARTTLS goes plaintext; encrypt without STARTTLS defers and the
 * server never sees MAIL; verify against an unknown CA, and against a wrong
 * name, defers; verify with the right CA and name (or IP literal) is OK and
 * "verified"; plaintext injected after the 220 to STARTTLS is not taken as a
 * reply; a refused STARTTLS and a handshake timeout defer; only the EHLO
 * list after TLS counts; a reused connection keeps TLS; deliveries under
 * different policies do not share a connection; without a TLS client
 * context may goes plaintext and encrypt defers. Every case also checks the
 * result's tls_state.
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

#include <openssl/ssl.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtpc.h"
#include "net/tls.h"
#include "tls_testcert.h"

#define WATCHDOG_MS 5000
#define MAX_ITERATIONS 100000

/* ------------------------------------------------------------------------ */
/* The scripted server                                                      */
/* ------------------------------------------------------------------------ */

struct srv;

struct srv_conn {
    uv_tcp_t tcp;
    struct srv *srv;
    struct srv_conn *next;
    struct tls *tls; /* after our 220 to STARTTLS */
    bool tls_up;
    char line[4096];
    size_t line_len;
    bool data_mode;
    bool closing;
};

struct srv {
    uv_tcp_t listener;
    uint16_t port;
    SSL_CTX *ctx;
    bool offer_starttls;
    const char *ehlo_plain;     /* reply to EHLO before TLS (NULL: the default) */
    const char *starttls_reply; /* may carry injected bytes after the 220 */
    bool stall_handshake;       /* say 220 to STARTTLS, then ignore everything */
    struct srv_conn *conns;
    unsigned n_accepted;
    unsigned n_starttls;
    unsigned n_tls_up;
    unsigned n_mail_plain; /* MAIL commands read in plaintext */
    unsigned n_mail_tls;   /* MAIL commands read over TLS */
    unsigned n_messages;
};

static const char ehlo_offer[] =
    "250-test.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SIZE 1000000\r\n";
static const char ehlo_no_tls[] = "250-test.example\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n";
static const char ehlo_after_tls[] = "250-test.example\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n";

static void srv_write_cb(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

/* srv_send_raw - write len octets as they are (copied). */
static void srv_send_raw(struct srv_conn *sc, const char *data, size_t len)
{
    uv_write_t *req = malloc(sizeof(*req) + len);
    assert_non_null(req);
    char *copy = (char *)(req + 1);
    memcpy(copy, data, len);
    uv_buf_t b = uv_buf_init(copy, (unsigned)len);
    assert_int_equal(uv_write(req, (uv_stream_t *)&sc->tcp, &b, 1, srv_write_cb), 0);
}

/* srv_flush - send the ciphertext the engine holds. */
static void srv_flush(struct srv_conn *sc)
{
    const char *out;
    size_t n = tls_output(sc->tls, &out);
    if (n > 0) {
        srv_send_raw(sc, out, n);
        tls_output_done(sc->tls, n);
    }
}

/* srv_send - a reply, encrypted once TLS is up. */
static void srv_send(struct srv_conn *sc, const char *text)
{
    if (!sc->tls_up) {
        srv_send_raw(sc, text, strlen(text));
        return;
    }
    assert_int_equal(tls_write(sc->tls, text, strlen(text)), 0);
    srv_flush(sc);
}

static void srv_conn_close_cb(uv_handle_t *h)
{
    struct srv_conn *sc = h->data;
    for (struct srv_conn **pp = &sc->srv->conns; *pp; pp = &(*pp)->next) {
        if (*pp == sc) {
            *pp = sc->next;
            break;
        }
    }
    tls_free(sc->tls);
    free(sc);
}

static void srv_conn_close(struct srv_conn *sc)
{
    if (sc->closing)
        return;
    sc->closing = true;
    uv_close((uv_handle_t *)&sc->tcp, srv_conn_close_cb);
}

/* srv_line - act on one command line. */
static void srv_line(struct srv_conn *sc, const char *line)
{
    struct srv *s = sc->srv;
    if (sc->data_mode) {
        if (strcmp(line, ".\r\n") == 0) {
            sc->data_mode = false;
            s->n_messages++;
            srv_send(sc, "250 2.0.0 queued\r\n");
        }
        return;
    }
    if (strncmp(line, "EHLO", 4) == 0) {
        if (sc->tls_up)
            srv_send(sc, ehlo_after_tls);
        else if (s->ehlo_plain != NULL)
            srv_send(sc, s->ehlo_plain);
        else
            srv_send(sc, s->offer_starttls ? ehlo_offer : ehlo_no_tls);
    } else if (strncmp(line, "STARTTLS", 8) == 0) {
        s->n_starttls++;
        if (sc->tls_up || !s->offer_starttls) {
            srv_send(sc, "503 5.5.1 no\r\n");
            return;
        }
        srv_send_raw(sc, s->starttls_reply, strlen(s->starttls_reply));
        if (strncmp(s->starttls_reply, "220", 3) == 0)
            assert_int_equal(tls_new(s->ctx, true, NULL, false, &sc->tls), 0);
    } else if (strncmp(line, "MAIL", 4) == 0) {
        if (sc->tls_up)
            s->n_mail_tls++;
        else
            s->n_mail_plain++;
        srv_send(sc, "250 2.1.0 ok\r\n");
    } else if (strncmp(line, "RCPT", 4) == 0 || strncmp(line, "RSET", 4) == 0) {
        srv_send(sc, "250 2.1.5 ok\r\n");
    } else if (strncmp(line, "DATA", 4) == 0) {
        sc->data_mode = true;
        srv_send(sc, "354 go ahead\r\n");
    } else if (strncmp(line, "QUIT", 4) == 0) {
        srv_send(sc, "221 bye\r\n");
    } else {
        srv_send(sc, "502 5.5.2 unknown\r\n");
    }
}

/* srv_plain - split plaintext into lines; stops when TLS begins. */
static void srv_plain(struct srv_conn *sc, const char *data, size_t len)
{
    for (size_t i = 0; i < len && !sc->closing; i++) {
        assert_true(sc->line_len + 1 < sizeof(sc->line));
        sc->line[sc->line_len++] = data[i];
        if (data[i] != '\n')
            continue;
        sc->line[sc->line_len] = '\0';
        sc->line_len = 0;
        bool was_plain = sc->tls == NULL;
        srv_line(sc, sc->line);
        if (was_plain && sc->tls != NULL)
            return; /* the client waits for the 220: nothing follows */
    }
}

/* srv_tls_input - ciphertext: handshake, then decrypted lines. */
static void srv_tls_input(struct srv_conn *sc, const char *data, size_t len)
{
    if (sc->srv->stall_handshake)
        return;
    assert_int_equal(tls_feed(sc->tls, data, len), 0);
    if (!sc->tls_up) {
        int rc = tls_handshake(sc->tls);
        srv_flush(sc);
        if (rc < 0) {
            srv_conn_close(sc);
            return;
        }
        if (rc == 0)
            return;
        sc->tls_up = true;
        sc->srv->n_tls_up++;
    }
    char plain[4096];
    long n;
    while (!sc->closing && (n = tls_read(sc->tls, plain, sizeof(plain))) > 0)
        srv_plain(sc, plain, (size_t)n);
    if (!sc->closing && n < 0)
        srv_conn_close(sc);
}

static void srv_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void srv_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct srv_conn *sc = st->data;
    if (nread < 0)
        srv_conn_close(sc);
    else if (nread > 0 && !sc->closing && sc->tls != NULL)
        srv_tls_input(sc, buf->base, (size_t)nread);
    else if (nread > 0 && !sc->closing)
        srv_plain(sc, buf->base, (size_t)nread);
    free(buf->base);
}

static void srv_connection_cb(uv_stream_t *l, int status)
{
    struct srv *s = l->data;
    assert_int_equal(status, 0);
    struct srv_conn *sc = calloc(1, sizeof(*sc));
    assert_non_null(sc);
    sc->srv = s;
    assert_int_equal(uv_tcp_init(l->loop, &sc->tcp), 0);
    sc->tcp.data = sc;
    sc->next = s->conns;
    s->conns = sc;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&sc->tcp), 0);
    s->n_accepted++;
    assert_int_equal(uv_read_start((uv_stream_t *)&sc->tcp, srv_alloc_cb, srv_read_cb), 0);
    srv_send(sc, "220 test.example ESMTP\r\n");
}

static void srv_start(struct srv *s, uv_loop_t *loop, SSL_CTX *ctx)
{
    memset(s, 0, sizeof(*s));
    s->ctx = ctx;
    s->offer_starttls = true;
    s->starttls_reply = "220 2.0.0 ready to start TLS\r\n";
    assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
    s->listener.data = s;
    struct sockaddr_in a;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
    assert_int_equal(uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 16, srv_connection_cb), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len), 0);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void srv_stop(struct srv *s)
{
    uv_close((uv_handle_t *)&s->listener, NULL);
    for (struct srv_conn *sc = s->conns; sc != NULL; sc = sc->next)
        srv_conn_close(sc);
}

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

/* The certificates and the server context, made once for the whole run. */
static struct tls_testcert certs, other_certs;
static SSL_CTX *server_ctx;

struct result {
    int calls;
    struct smtpc_rcpt_result r;
    char tls[96];
    enum smtpc_tls_state tls_state;
};

struct fixture {
    uv_loop_t loop;
    uv_timer_t watchdog;
    bool watchdog_fired;
    struct srv srv;
    struct smtpc_config cfg;
    struct smtpc_pool *pool;
    bool pool_closed;
};

static int group_setup(void **state)
{
    (void)state;
    if (!tls_testcert_init(&certs) || !tls_testcert_init(&other_certs))
        return -1;
    server_ctx = SSL_CTX_new(TLS_server_method());
    if (server_ctx == NULL ||
        SSL_CTX_use_certificate_chain_file(server_ctx, certs.cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(server_ctx, certs.key_file, SSL_FILETYPE_PEM) != 1)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    SSL_CTX_free(server_ctx);
    tls_testcert_cleanup(&certs);
    tls_testcert_cleanup(&other_certs);
    return 0;
}

static void watchdog_cb(uv_timer_t *t)
{
    struct fixture *f = t->data;
    f->watchdog_fired = true;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    log_set_level(LOG_LEVEL_WARN);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->watchdog);
    f->watchdog.data = f;
    uv_timer_start(&f->watchdog, watchdog_cb, WATCHDOG_MS, 0);
    srv_start(&f->srv, &f->loop, server_ctx);
    hamr_strlcpy(f->cfg.helo_name, "client.test", sizeof(f->cfg.helo_name));
    f->cfg.connect_timeout_ms = 2000;
    f->cfg.command_timeout_ms = 2000;
    f->cfg.data_done_timeout_ms = 2000;
    f->cfg.idle_timeout_ms = 2000;
    hamr_strlcpy(f->cfg.tls_ca_file, certs.ca_file, sizeof(f->cfg.tls_ca_file));
    *state = f;
    return 0;
}

static void pool_start(struct fixture *f)
{
    f->pool = smtpc_pool_new(&f->loop, &f->cfg);
    assert_non_null(f->pool);
}

static void pool_closed_cb(void *arg)
{
    struct fixture *f = arg;
    f->pool_closed = true;
}

#define RUN_UNTIL(f, cond)                                                                \
    do {                                                                                  \
        for (int it_ = 0; !(cond) && !(f)->watchdog_fired && it_ < MAX_ITERATIONS; it_++) \
            uv_run(&(f)->loop, UV_RUN_ONCE);                                              \
        if ((f)->watchdog_fired)                                                          \
            fail_msg("watchdog fired waiting for %s", #cond);                             \
        assert_true(cond);                                                                \
    } while (0)

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->pool != NULL && !f->pool_closed)
        smtpc_pool_close(f->pool, pool_closed_cb, f);
    srv_stop(&f->srv);
    uv_timer_stop(&f->watchdog);
    uv_close((uv_handle_t *)&f->watchdog, NULL);
    for (int i = 0; i < 1000 && uv_loop_alive(&f->loop); i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(f->pool == NULL || f->pool_closed);
    assert_null(f->srv.conns);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static void done_cb(void *arg, const struct smtpc_result *res)
{
    struct result *r = arg;
    r->calls++;
    assert_int_equal(res->n_rcpts, 1);
    r->r = res->rcpts[0];
    hamr_strlcpy(r->tls, res->tls, sizeof(r->tls));
    r->tls_state = res->tls_state;
}

static const char *const rcpt1[] = {"a@x.test"};
static const char body[] = "Subject: t\r\n\r\nhello\r\n";
static const struct smtpc_msg msg = {.sender = "s@y.test",
                                     .rcpts = rcpt1,
                                     .n_rcpts = 1,
                                     .body = (const uint8_t *)body,
                                     .body_len = sizeof(body) - 1};

/* deliver_wait - one delivery under policy, run until its callback. */
static void deliver_wait(struct fixture *f,
                         enum smtpc_tls_policy policy,
                         const char *verify_host,
                         struct result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(smtpc_pool_deliver_tls(f->pool, "127.0.0.1", f->srv.port, policy, verify_host,
                                            &msg, done_cb, r),
                     0);
    RUN_UNTIL(f, r->calls == 1);
}

/* ends_with - does s end in suffix? */
static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/*
 * assert_tls_ok - delivered over TLS; the description ends in suffix, and
 * the state says the same (" verified" or " unverified").
 */
static void assert_tls_ok(const struct fixture *f, const struct result *r, const char *suffix)
{
    assert_int_equal(r->r.status, SMTPC_OK);
    assert_int_equal(r->r.code, 250);
    assert_true(strncmp(r->tls, "TLSv1.", 6) == 0);
    assert_true(ends_with(r->tls, suffix));
    assert_int_equal(r->tls_state, strcmp(suffix, " verified") == 0 ? SMTPC_TLS_STATE_VERIFIED
                                                                    : SMTPC_TLS_STATE_UNVERIFIED);
    assert_int_equal(f->srv.n_mail_plain, 0);
    assert_true(f->srv.n_mail_tls >= 1);
}

/* assert_deferred - SMTPC_TEMP with why in the text, and no MAIL ever seen. */
static void assert_deferred(const struct fixture *f, const struct result *r, const char *why)
{
    assert_int_equal(r->r.status, SMTPC_TEMP);
    if (strstr(r->r.text, why) == NULL)
        fail_msg("text \"%s\" lacks \"%s\"", r->r.text, why);
    assert_int_equal(f->srv.n_mail_plain + f->srv.n_mail_tls, 0);
    assert_int_equal(f->srv.n_messages, 0);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

static void test_may_offered(void **state)
{
    struct fixture *f = *state;
    struct result r;
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_messages, 1);
    assert_int_equal(f->srv.n_starttls, 1);
    assert_int_equal(f->srv.n_tls_up, 1);
}

static void test_may_not_offered(void **state)
{
    struct fixture *f = *state;
    struct result r;
    f->srv.offer_starttls = false;
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED);
    assert_int_equal(f->srv.n_starttls, 0);
    assert_int_equal(f->srv.n_mail_plain, 1);
    assert_int_equal(f->srv.n_messages, 1);
}

/* Neither encrypt nor verify ever sends MAIL when STARTTLS is missing. */
static void test_required_not_offered(void **state)
{
    static const enum smtpc_tls_policy policies[] = {SMTPC_TLS_ENCRYPT, SMTPC_TLS_VERIFY};
    struct fixture *f = *state;
    f->srv.offer_starttls = false;
    pool_start(f);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(policies); i++) {
        struct result r;
        deliver_wait(f, policies[i], "localhost", &r);
        assert_deferred(f, &r, "TLS required but not offered");
        assert_string_equal(r.tls, "none");
        assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED_REQUIRED);
    }
    assert_int_equal(f->srv.n_starttls, 0);
}

static void test_encrypt_offered(void **state)
{
    struct fixture *f = *state;
    struct result r;
    /* No verification: even a CA that has nothing to do with the server will do. */
    hamr_strlcpy(f->cfg.tls_ca_file, other_certs.ca_file, sizeof(f->cfg.tls_ca_file));
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
}

static void test_verify_unknown_ca(void **state)
{
    struct fixture *f = *state;
    struct result r;
    hamr_strlcpy(f->cfg.tls_ca_file, other_certs.ca_file, sizeof(f->cfg.tls_ca_file));
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_VERIFY, "localhost", &r);
    assert_deferred(f, &r, "TLS required but failed");
    assert_non_null(strstr(r.r.text, "certificate verify failed"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
}

/* verify_case - a verify_host and whether the certificate matches it. */
struct verify_case {
    const char *verify_host;
    bool ok;
};

static void test_verify_names(void **state)
{
    static const struct verify_case cases[] = {
        {"localhost", true},      /* DNS name in the certificate */
        {NULL, true},             /* the host itself: IP literal 127.0.0.1 */
        {"127.0.0.1", true},      /* the IP, given explicitly */
        {"mx.other.test", false}, /* not in the certificate */
        {"127.0.0.2", false},     /* another IP */
    };
    struct fixture *f = *state;
    pool_start(f);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct result r;
        unsigned mails_before = f->srv.n_mail_tls;
        deliver_wait(f, SMTPC_TLS_VERIFY, cases[i].verify_host, &r);
        if (cases[i].ok) {
            assert_tls_ok(f, &r, " verified");
            assert_false(ends_with(r.tls, "unverified"));
            assert_int_equal(f->srv.n_mail_tls, mails_before + 1);
        } else {
            assert_int_equal(r.r.status, SMTPC_TEMP);
            assert_non_null(strstr(r.r.text, "certificate verify failed"));
            assert_int_equal(r.tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
            assert_int_equal(f->srv.n_mail_tls, mails_before);
        }
    }
    assert_int_equal(f->srv.n_mail_plain, 0);
}

/* A reply pushed behind the 220 to STARTTLS is thrown away, not read as the EHLO reply. */
static void test_injection_after_220(void **state)
{
    static const char *const injected[] = {
        "220 ready\r\n250 2.1.0 injected\r\n",
        "220 ready\r\n250-test.example\r\n250 PIPELINING\r\n",
        "220 ready\r\n\x16\x03\x01garbage",
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(injected); i++) {
        void *st = NULL;
        assert_int_equal(setup(&st), 0);
        struct fixture *f = st;
        struct result r;
        f->srv.starttls_reply = injected[i];
        pool_start(f);
        deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
        assert_tls_ok(f, &r, " unverified");
        assert_int_equal(f->srv.n_messages, 1);
        assert_int_equal(teardown(&st), 0);
    }
    (void)state;
}

static void test_starttls_refused(void **state)
{
    struct fixture *f = *state;
    struct result r;
    f->srv.starttls_reply = "454 4.7.0 TLS not available\r\n";
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_deferred(f, &r, "TLS handshake failed");
    assert_int_equal(r.r.code, 454);
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
}

static void test_handshake_timeout(void **state)
{
    struct fixture *f = *state;
    struct result r;
    f->srv.stall_handshake = true;
    f->cfg.command_timeout_ms = 200;
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_deferred(f, &r, "TLS required but failed");
    assert_non_null(strstr(r.r.text, "timeout"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
}

/*
 * No TLS client context (its CA file cannot be read) though STARTTLS is
 * offered: may goes on in plaintext, encrypt defers before MAIL.
 */
static void test_no_client_ctx(void **state)
{
    struct fixture *f = *state;
    struct result r;
    hamr_strlcpy(f->cfg.tls_ca_file, "/nonexistent/hamr-ca.pem", sizeof(f->cfg.tls_ca_file));
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_deferred(f, &r, "TLS required but no TLS client context");
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NO_CLIENT_CTX);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NO_CLIENT_CTX);
    assert_int_equal(f->srv.n_starttls, 0);
    assert_int_equal(f->srv.n_mail_plain, 1);
}

/* The EHLO list from before TLS is forgotten: its SIZE 10 would refuse the message. */
static void test_second_ehlo_counts(void **state)
{
    struct fixture *f = *state;
    struct result r;
    f->srv.ehlo_plain = "250-test.example\r\n250-STARTTLS\r\n250 SIZE 10\r\n";
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_messages, 1);
}

static void test_reuse_keeps_tls(void **state)
{
    struct fixture *f = *state;
    struct result r1, r2;
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_VERIFY, "localhost", &r1);
    assert_tls_ok(f, &r1, " verified");
    deliver_wait(f, SMTPC_TLS_VERIFY, "localhost", &r2);
    assert_tls_ok(f, &r2, " verified");
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(f->srv.n_starttls, 1);
    assert_int_equal(f->srv.n_mail_tls, 2);
    assert_int_equal(f->srv.n_messages, 2);
}

/* One idle connection per policy (and per verify name): never shared across them. */
static void test_policies_not_shared(void **state)
{
    struct fixture *f = *state;
    struct result r;
    pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_accepted, 1);
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_accepted, 2);
    deliver_wait(f, SMTPC_TLS_VERIFY, "localhost", &r);
    assert_tls_ok(f, &r, " verified");
    assert_int_equal(f->srv.n_accepted, 3);
    deliver_wait(f, SMTPC_TLS_VERIFY, "127.0.0.1", &r);
    assert_tls_ok(f, &r, " verified");
    assert_int_equal(f->srv.n_accepted, 4);
    /* The same policy again reuses its own connection. */
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_int_equal(f->srv.n_accepted, 4);
    assert_int_equal(f->srv.n_messages, 5);
}

static void test_policy_names(void **state)
{
    static const struct {
        const char *text;
        int rv;
        enum smtpc_tls_policy policy;
    } cases[] = {
        {"may", 0, SMTPC_TLS_MAY},
        {"encrypt", 0, SMTPC_TLS_ENCRYPT},
        {"verify", 0, SMTPC_TLS_VERIFY},
        {"VERIFY", 0, SMTPC_TLS_VERIFY},
        {"", HAMR_EINVAL, SMTPC_TLS_MAY},
        {"none", HAMR_EINVAL, SMTPC_TLS_MAY},
        {"mayx", HAMR_EINVAL, SMTPC_TLS_MAY},
        {"encryp", HAMR_EINVAL, SMTPC_TLS_MAY},
    };
    (void)state;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        enum smtpc_tls_policy p = SMTPC_TLS_MAY;
        assert_int_equal(smtpc_tls_policy_parse(cases[i].text, &p), cases[i].rv);
        assert_int_equal(p, cases[i].policy);
        if (cases[i].rv == 0)
            assert_true(hamr_strncaseeq(smtpc_tls_policy_name(p), cases[i].text,
                                        strlen(cases[i].text) + 1));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_may_offered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_may_not_offered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_required_not_offered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encrypt_offered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_unknown_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_names, setup, teardown),
        cmocka_unit_test(test_injection_after_220),
        cmocka_unit_test_setup_teardown(test_starttls_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_client_ctx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_ehlo_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reuse_keeps_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policies_not_shared, setup, teardown),
        cmocka_unit_test(test_policy_names),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
