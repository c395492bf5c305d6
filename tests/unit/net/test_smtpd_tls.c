/*
 * test_smtpd_tls.c - STARTTLS on the inbound side: net/smtpd_server with
 * net/smtpd_tls and the memory-BIO engine of net/tls.
 *
 * A libuv loop runs smtpd_server on 127.0.0.1; the client is a plain
 * non-blocking socket in the same thread, with an OpenSSL client on top
 * after STARTTLS. Each wait turns the loop (UV_RUN_NOWAIT) and polls the
 * socket for at most a few milliseconds, a bounded number of times.
 * Certificates come from a CA made for each run (tls_testcert.h).
 *
 * Covers: EHLO offers STARTTLS only before TLS; the handshake; mail over
 * TLS is committed with "with ESMTPS" in Received:; a second STARTTLS is
 * 554; STARTTLS with an argument is 501; commands pipelined behind
 * STARTTLS in plaintext never run (SECURITY.md S4) and the session starts
 * over; no STARTTLS without a certificate (502); a TLS 1.1 client, a
 * plaintext client after 220 and a silent one (command timeout) are cut off; bad certificate files
 * are errors naming the file; a failed reload keeps the old certificate.
 * AUTH inside TLS with the check on libuv's thread pool: 535 and 235 in
 * order with a pipelined command held behind AUTH, the credentials
 * reloaded while a check runs, and the server closed while a check runs
 * (its close callback waits for the check; nothing leaks). The per-client
 * AUTH rate of the listener's limits table: every AUTH counts, across
 * connections of one address; over it 450 4.7.1 naming 127.0.0.1 with no
 * check queued, the session goes on, and a new window lets AUTH through.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtpd.h"
#include "net/smtpd_auth.h"
#include "net/smtpd_limits.h"
#include "net/smtpd_server.h"
#include "tls_testcert.h"

#define TURNS_MAX 3000 /* loop turns per wait; each polls at most POLL_MS */
#define POLL_MS 2

struct harness {
    uv_loop_t loop;
    struct smtpd_policy policy;
    struct smtpd_cidr relay_nets[1];
    struct smtpd_server *server;
    bool server_closed;
    struct tls_testcert tc;
    /* the sink */
    int submits;
    char body[4096];
    uv_timer_t commit; /* answers the submit on a later loop turn */
    smtpd_sink_cb cb;
    void *cb_arg;
    /* the client */
    int fd;
    SSL_CTX *cctx;
    SSL *ssl;
    char in[8192];
    size_t in_len;
};

/* sink_new_id - a fixed queue id. */
static int sink_new_id(void *data, char *id, size_t idlen)
{
    hamr_strlcpy(id, "Q1", idlen);
    return 0;
}

/* commit_cb - the sink commits on the next loop turn. */
static void commit_cb(uv_timer_t *t)
{
    struct harness *h = t->data;
    smtpd_sink_cb cb = h->cb;
    h->cb = NULL;
    cb(h->cb_arg, 0);
}

/* sink_submit - keep the body, commit later. */
static int sink_submit(void *data, const struct smtpd_envelope *env, smtpd_sink_cb cb, void *arg)
{
    struct harness *h = data;
    h->submits++;
    size_t n = env->body_len < sizeof(h->body) - 1 ? env->body_len : sizeof(h->body) - 1;
    memcpy(h->body, env->body, n);
    h->body[n] = '\0';
    h->cb = cb;
    h->cb_arg = arg;
    uv_timer_start(&h->commit, commit_cb, 0, 0);
    return 0;
}

/* harness_start - loop and server; with_tls loads the test certificate. */
static void harness_start(struct harness *h, bool with_tls)
{
    memset(h, 0, sizeof(*h));
    h->fd = -1;
    assert_true(tls_testcert_init(&h->tc));
    assert_int_equal(uv_loop_init(&h->loop), 0);
    uv_timer_init(&h->loop, &h->commit);
    h->commit.data = h;
    struct smtpd_policy *p = &h->policy;
    hamr_strlcpy(p->hostname, "mx.hamr.test", sizeof(p->hostname));
    h->relay_nets[0] = (struct smtpd_cidr){.family = AF_INET, .addr = {127}, .prefix = 8};
    p->relay_networks = h->relay_nets;
    p->n_relay_networks = 1;
    p->message_size_limit = 1024 * 1024;
    p->recipient_limit = 100;
    p->header_size_limit = 64 * 1024;
    p->hopcount_limit = 50;
    p->max_errors = 20;
    p->command_timeout_ms = 30000;
    p->data_timeout_ms = 30000;
    struct smtpd_sink sink = {.data = h, .new_id = sink_new_id, .submit = sink_submit};
    char err[512];
    assert_int_equal(
        smtpd_server_new(&h->loop, "127.0.0.1", 0, p, &sink, 10, &h->server, err, sizeof(err)), 0);
    if (with_tls)
        assert_int_equal(
            smtpd_server_set_tls(h->server, h->tc.cert_file, h->tc.key_file, err, sizeof(err)), 0);
}

/* server_closed_cb - the server is gone. */
static void server_closed_cb(void *arg)
{
    struct harness *h = arg;
    h->server_closed = true;
}

/* client_drop - close the client side. */
static void client_drop(struct harness *h)
{
    if (h->ssl != NULL)
        SSL_free(h->ssl);
    h->ssl = NULL;
    if (h->cctx != NULL)
        SSL_CTX_free(h->cctx);
    h->cctx = NULL;
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
    ERR_clear_error();
}

/* harness_stop - close client and server; every handle released. */
static void harness_stop(struct harness *h)
{
    client_drop(h);
    smtpd_server_close(h->server, server_closed_cb, h);
    uv_close((uv_handle_t *)&h->commit, NULL);
    for (int i = 0; i < TURNS_MAX && !h->server_closed; i++)
        uv_run(&h->loop, UV_RUN_NOWAIT);
    assert_true(h->server_closed);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    tls_testcert_cleanup(&h->tc);
}

/* turn - one loop turn, then wait at most POLL_MS for the client socket. */
static void turn(struct harness *h, short events)
{
    uv_run(&h->loop, UV_RUN_NOWAIT);
    struct pollfd pfd = {.fd = h->fd, .events = events};
    (void)poll(&pfd, 1, POLL_MS);
    uv_run(&h->loop, UV_RUN_NOWAIT);
}

/* client_connect - a non-blocking socket to the server. */
static void client_connect(struct harness *h)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons(smtpd_server_port(h->server))};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    h->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(h->fd >= 0);
    int rc = connect(h->fd, (struct sockaddr *)&sin, sizeof(sin));
    assert_true(rc == 0 || errno == EINPROGRESS);
    h->in_len = 0;
}

/* client_send - all of s, through TLS when it is up. */
static void client_send(struct harness *h, const char *s)
{
    size_t len = strlen(s), off = 0;
    for (int i = 0; i < TURNS_MAX && off < len; i++) {
        if (h->ssl != NULL) {
            size_t n = 0;
            if (SSL_write_ex(h->ssl, s + off, len - off, &n) == 1)
                off += n;
        } else {
            ssize_t n = send(h->fd, s + off, len - off, MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
        }
        if (off < len)
            turn(h, POLLOUT);
    }
    assert_int_equal(off, len);
    uv_run(&h->loop, UV_RUN_NOWAIT);
}

/* client_reply_done - the buffer ends in a complete last reply line. */
static bool client_reply_done(const struct harness *h)
{
    if (h->in_len < 6 || memcmp(h->in + h->in_len - 2, "\r\n", 2) != 0)
        return false;
    size_t start = h->in_len - 2;
    while (start > 0 && h->in[start - 1] != '\n')
        start--;
    return h->in_len - start >= 6 && h->in[start + 3] == ' ';
}

/*
 * client_reply - read one whole reply (all its lines). Returns it
 * NUL-terminated, or NULL on EOF/error before that.
 */
static const char *client_reply(struct harness *h)
{
    h->in_len = 0;
    for (int i = 0; i < TURNS_MAX; i++) {
        ssize_t n;
        if (h->ssl != NULL) {
            size_t got = 0;
            int rc = SSL_read_ex(h->ssl, h->in + h->in_len, sizeof(h->in) - 1 - h->in_len, &got);
            if (rc == 1) {
                n = (ssize_t)got;
            } else {
                int e = SSL_get_error(h->ssl, rc);
                ERR_clear_error();
                if (e != SSL_ERROR_WANT_READ)
                    return NULL;
                n = -1;
            }
        } else {
            n = recv(h->fd, h->in + h->in_len, sizeof(h->in) - 1 - h->in_len, 0);
            if (n == 0 || (n < 0 && errno != EAGAIN))
                return NULL;
        }
        if (n > 0) {
            h->in_len += (size_t)n;
            h->in[h->in_len] = '\0';
            if (client_reply_done(h))
                return h->in;
            continue;
        }
        turn(h, POLLIN);
    }
    return NULL;
}

/* client_eof - the server hung up (EOF or reset) within the bound. */
static bool client_eof(struct harness *h)
{
    char b[256];
    for (int i = 0; i < TURNS_MAX; i++) {
        ssize_t n = recv(h->fd, b, sizeof(b), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            return true;
        turn(h, POLLIN);
    }
    return false;
}

/* client_tls - TLS handshake on the client socket; true when it completed. */
static bool client_tls(struct harness *h, int min_version, int max_version)
{
    h->cctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(h->cctx);
    if (max_version != 0) {
        SSL_CTX_set_security_level(h->cctx, 0);
        SSL_CTX_set_cipher_list(h->cctx, "DEFAULT:@SECLEVEL=0");
    }
    SSL_CTX_set_min_proto_version(h->cctx, min_version);
    SSL_CTX_set_max_proto_version(h->cctx, max_version);
    SSL_CTX_set_verify(h->cctx, SSL_VERIFY_PEER, NULL);
    assert_int_equal(SSL_CTX_load_verify_locations(h->cctx, h->tc.ca_file, NULL), 1);
    h->ssl = SSL_new(h->cctx);
    SSL_set_fd(h->ssl, h->fd);
    SSL_set1_host(h->ssl, "localhost");
    for (int i = 0; i < TURNS_MAX; i++) {
        int rc = SSL_connect(h->ssl);
        if (rc == 1)
            return true;
        int e = SSL_get_error(h->ssl, rc);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            ERR_clear_error();
            SSL_free(h->ssl);
            h->ssl = NULL;
            return false;
        }
        turn(h, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
    }
    return false;
}

/* expect - the next reply starts with prefix. */
static void expect(struct harness *h, const char *send, const char *prefix)
{
    if (send != NULL)
        client_send(h, send);
    const char *r = client_reply(h);
    if (r == NULL || strncmp(r, prefix, strlen(prefix)) != 0)
        fail_msg("after %s wanted \"%s\", got \"%s\"", send ? send : "(connect)", prefix,
                 r ? r : "(nothing)");
}

/* start_tls - connect, EHLO, STARTTLS, handshake. */
static void start_tls(struct harness *h)
{
    client_connect(h);
    expect(h, NULL, "220 mx.hamr.test");
    expect(h, "EHLO client.test\r\n", "250-mx.hamr.test");
    assert_non_null(strstr(h->in, "250-STARTTLS\r\n"));
    expect(h, "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
    assert_true(client_tls(h, TLS1_2_VERSION, 0));
}

/* test_mail_over_tls - handshake, mail committed with ESMTPS, second STARTTLS 554. */
static void test_mail_over_tls(void **state)
{
    struct harness h;
    harness_start(&h, true);
    start_tls(&h);
    const char *v = SSL_get_version(h.ssl);
    assert_true(strcmp(v, "TLSv1.3") == 0 || strcmp(v, "TLSv1.2") == 0);
    /* The session starts over: no EHLO yet, and STARTTLS is no longer offered. */
    expect(&h, "MAIL FROM:<a@client.test>\r\n", "503 5.5.1 Error: send HELO/EHLO first");
    expect(&h, "EHLO client.test\r\n", "250-mx.hamr.test");
    assert_null(strstr(h.in, "STARTTLS"));
    expect(&h, "STARTTLS\r\n", "554 5.5.1 Error: TLS already active\r\n");
    expect(&h, "MAIL FROM:<a@client.test>\r\n", "250 2.1.0");
    expect(&h, "RCPT TO:<b@far.test>\r\n", "250 2.1.5");
    expect(&h, "DATA\r\n", "354");
    expect(&h, "Subject: t\r\n\r\nover TLS\r\n.\r\n", "250 2.0.0 Ok: queued as Q1");
    assert_int_equal(h.submits, 1);
    assert_non_null(strstr(h.body, "with ESMTPS id Q1"));
    assert_non_null(strstr(h.body, "over TLS\r\n"));
    expect(&h, "QUIT\r\n", "221");
    harness_stop(&h);
}

/* test_plaintext_mail_says_esmtp - without STARTTLS the Received: says ESMTP. */
static void test_plaintext_mail_says_esmtp(void **state)
{
    struct harness h;
    harness_start(&h, true);
    client_connect(&h);
    expect(&h, NULL, "220");
    expect(&h, "EHLO client.test\r\n", "250-");
    expect(&h, "MAIL FROM:<a@client.test>\r\n", "250 2.1.0");
    expect(&h, "STARTTLS\r\n", "503 5.5.1 Error: MAIL transaction in progress");
    expect(&h, "RCPT TO:<b@far.test>\r\n", "250 2.1.5");
    expect(&h, "DATA\r\n", "354");
    expect(&h, "Subject: t\r\n\r\nplain\r\n.\r\n", "250 2.0.0 Ok: queued as Q1");
    assert_non_null(strstr(h.body, "with ESMTP id Q1"));
    harness_stop(&h);
}

/*
 * test_injection_discarded - plaintext pipelined behind STARTTLS in one
 * segment is thrown away: inside TLS the first reply is to our own command,
 * and the session has no EHLO and no transaction (SECURITY.md S4).
 */
static void test_injection_discarded(void **state)
{
    struct harness h;
    harness_start(&h, true);
    client_connect(&h);
    expect(&h, NULL, "220");
    expect(&h, "EHLO client.test\r\n", "250-");
    expect(&h, "STARTTLS\r\nRSET\r\nMAIL FROM:<evil@client.test>\r\n",
           "220 2.0.0 Ready to start TLS\r\n");
    /* The injected commands got no plaintext replies either. */
    assert_int_equal(h.in_len, strlen("220 2.0.0 Ready to start TLS\r\n"));
    assert_true(client_tls(&h, TLS1_2_VERSION, 0));
    expect(&h, "RCPT TO:<b@far.test>\r\n", "503 5.5.1 Error: send HELO/EHLO first");
    expect(&h, "EHLO client.test\r\n", "250-");
    expect(&h, "RCPT TO:<b@far.test>\r\n", "503 5.5.1 Error: need MAIL command");
    harness_stop(&h);
}

/* test_starttls_replies - argument, not offered, unknown before EHLO, table-driven. */
static void test_starttls_replies(void **state)
{
    static const struct {
        bool tls;
        bool ehlo;
        const char *cmd;
        const char *reply;
    } cases[] = {
        {true, true, "STARTTLS now\r\n", "501 5.5.4 Syntax: STARTTLS\r\n"},
        {true, false, "STARTTLS x\r\n", "501 5.5.4 Syntax: STARTTLS\r\n"},
        {false, true, "STARTTLS\r\n", "502 5.5.1 Error: command not implemented\r\n"},
        {false, true, "starttls\r\n", "502 5.5.1"},
        {true, true, "starttls\r\n", "220 2.0.0 Ready to start TLS\r\n"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct harness h;
        harness_start(&h, cases[i].tls);
        client_connect(&h);
        expect(&h, NULL, "220");
        if (cases[i].ehlo) {
            expect(&h, "EHLO client.test\r\n", "250-");
            assert_true((strstr(h.in, "STARTTLS") != NULL) == cases[i].tls);
        }
        expect(&h, cases[i].cmd, cases[i].reply);
        harness_stop(&h);
    }
}

/* test_old_tls_refused - a client that speaks TLS 1.1 at most gets no session. */
static void test_old_tls_refused(void **state)
{
    struct harness h;
    harness_start(&h, true);
    client_connect(&h);
    expect(&h, NULL, "220");
    expect(&h, "STARTTLS\r\n", "220 2.0.0");
    assert_false(client_tls(&h, TLS1_VERSION, TLS1_1_VERSION));
    assert_true(client_eof(&h));
    assert_int_equal(smtpd_server_sessions(h.server), 0);
    harness_stop(&h);
}

/* test_plaintext_after_220 - a client that never starts TLS is cut off at the handshake. */
static void test_plaintext_after_220(void **state)
{
    struct harness h;
    harness_start(&h, true);
    client_connect(&h);
    expect(&h, NULL, "220");
    expect(&h, "STARTTLS\r\n", "220 2.0.0");
    client_send(&h, "EHLO client.test\r\n");
    assert_true(client_eof(&h));
    harness_stop(&h);
}

/* test_handshake_timeout - a client silent after 220 is cut off at the command timeout. */
static void test_handshake_timeout(void **state)
{
    struct harness h;
    harness_start(&h, true);
    h.policy.command_timeout_ms = 50; /* borrowed by the session: takes effect at once */
    client_connect(&h);
    expect(&h, NULL, "220");
    expect(&h, "STARTTLS\r\n", "220 2.0.0");
    assert_true(client_eof(&h));
    assert_int_equal(smtpd_server_sessions(h.server), 0);
    harness_stop(&h);
}

/* test_bad_files - each bad file is an error naming it; nothing changes. */
static void test_bad_files(void **state)
{
    struct harness h;
    harness_start(&h, false);
    char err[512], junk[160];
    snprintf(junk, sizeof(junk), "%s/junk.pem", h.tc.dir);
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    struct {
        const char *cert, *key, *named;
    } cases[] = {
        {"/nonexistent/cert.pem", h.tc.key_file, "/nonexistent/cert.pem"},
        {junk, h.tc.key_file, junk},
        {h.tc.cert_file, "/nonexistent/key.pem", "/nonexistent/key.pem"},
        {h.tc.cert_file, junk, junk},
        {h.tc.cert_file, h.tc.ca_file, h.tc.ca_file}, /* no key in it */
        {h.tc.cert_file, "", "tls_key_file"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        err[0] = '\0';
        assert_int_equal(
            smtpd_server_set_tls(h.server, cases[i].cert, cases[i].key, err, sizeof(err)),
            HAMR_EINVAL);
        if (strstr(err, cases[i].named) == NULL)
            fail_msg("case %zu: \"%s\" does not name %s", i, err, cases[i].named);
    }
    assert_int_equal(ERR_peek_error(), 0); /* the error queue was drained */
    /* Still no STARTTLS. */
    client_connect(&h);
    expect(&h, NULL, "220");
    expect(&h, "EHLO client.test\r\n", "250-");
    assert_null(strstr(h.in, "STARTTLS"));
    client_drop(&h);
    /* A wrong key for the certificate. */
    struct tls_testcert other;
    assert_true(tls_testcert_init(&other));
    assert_int_equal(
        smtpd_server_set_tls(h.server, h.tc.cert_file, other.key_file, err, sizeof(err)),
        HAMR_EINVAL);
    assert_non_null(strstr(err, other.key_file));
    tls_testcert_cleanup(&other);
    unlink(junk);
    harness_stop(&h);
}

/* test_reload - a broken file on reload keeps the old context; a good one is taken. */
static void test_reload(void **state)
{
    struct harness h;
    harness_start(&h, true);
    assert_int_equal(smtpd_server_reload_tls(h.server), 0);
    FILE *f = fopen(h.tc.cert_file, "w"); /* truncate: the reload must fail */
    assert_non_null(f);
    fclose(f);
    assert_int_equal(smtpd_server_reload_tls(h.server), HAMR_EINVAL);
    assert_int_equal(ERR_peek_error(), 0);
    /* The old certificate still serves. */
    start_tls(&h);
    expect(&h, "EHLO client.test\r\n", "250-");
    client_drop(&h);
    /* A new CA and certificate in place: the reload takes it. */
    struct tls_testcert fresh;
    assert_true(tls_testcert_init(&fresh));
    assert_int_equal(rename(fresh.cert_file, h.tc.cert_file), 0);
    assert_int_equal(rename(fresh.key_file, h.tc.key_file), 0);
    assert_int_equal(rename(fresh.ca_file, h.tc.ca_file), 0);
    rmdir(fresh.dir);
    assert_int_equal(smtpd_server_reload_tls(h.server), 0);
    start_tls(&h); /* verifies against the new CA */
    client_drop(&h);
    harness_stop(&h);
}

/* auth_file - a credentials file at path (mkstemp template) for alice/secret-alice. */
static struct smtpd_auth *auth_file(char *path, const char *user, const char *pass)
{
    char line[512], err[256];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(smtpd_auth_hash_line(user, pass, strlen(pass), 1000, line, sizeof(line)), 0);
    assert_int_equal(write(fd, line, strlen(line)), (ssize_t)strlen(line));
    close(fd);
    struct smtpd_auth *a = NULL;
    assert_int_equal(smtpd_auth_new(path, &a, err, sizeof(err)), 0);
    return a;
}

/* wait_check - turn the loop until the server holds an AUTH check; true if it does. */
static bool wait_check(struct harness *h)
{
    for (int i = 0; i < TURNS_MAX; i++) {
        /* Look before each turn: the turn that queued a check never also reports it done. */
        if (smtpd_server_auth_checks(h->server) > 0)
            return true;
        uv_run(&h->loop, UV_RUN_NOWAIT);
        if (smtpd_server_auth_checks(h->server) > 0)
            return true;
        struct pollfd pfd = {.fd = h->fd, .events = POLLIN};
        (void)poll(&pfd, 1, POLL_MS);
    }
    return false;
}

/*
 * auth_session_start - a server whose auth_file (made at path) has alice,
 * and a client inside TLS that has seen AUTH offered. Returns the table.
 */
static struct smtpd_auth *auth_session_start(struct harness *h, char *path)
{
    harness_start(h, true);
    struct smtpd_auth *auth = auth_file(path, "alice", "secret-alice");
    h->policy.auth = auth;
    h->policy.auth_max_failures = 10;
    start_tls(h);
    expect(h, "EHLO client.test\r\n", "250-mx.hamr.test");
    assert_non_null(strstr(h->in, "250-AUTH PLAIN LOGIN\r\n"));
    return auth;
}

/*
 * MAIL's AUTH= parameter (RFC 4954 5) where AUTH is offered: <> and an
 * xtext mailbox are taken, before and after authentication; a value that
 * is not xtext gets 501.
 */
static void test_mail_auth_param(void **state)
{
    (void)state;
    struct harness h;
    char path[] = "/tmp/hamr-tls-authparam-XXXXXX";
    struct smtpd_auth *auth = auth_session_start(&h, path);
    static const struct {
        const char *cmd, *want;
    } cases[] = {
        {"MAIL FROM:<a@client.test> AUTH=<>\r\n", "250 2.1.0"},
        {"MAIL FROM:<a@client.test> AUTH=alice+40client.test\r\n", "250 2.1.0"},
        {"MAIL FROM:<a@client.test> auth=<> BODY=8BITMIME\r\n", "250 2.1.0"},
        {"MAIL FROM:<a@client.test> AUTH=alice+4\r\n", "501 5.5.4 Bad AUTH parameter syntax"},
        {"MAIL FROM:<a@client.test> AUTH=alice+4a\r\n", "501 5.5.4 Bad AUTH parameter syntax"},
        {"MAIL FROM:<a@client.test> AUTH=a+2Bb+\r\n", "501 5.5.4 Bad AUTH parameter syntax"},
    };
    for (int round = 0; round < 2; round++) {
        if (round == 1) /* "\0alice\0secret-alice" */
            expect(&h, "AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ==\r\n", "235 2.7.0");
        for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
            expect(&h, cases[i].cmd, cases[i].want);
            expect(&h, "RSET\r\n", "250 2.0.0");
        }
    }
    harness_stop(&h);
    smtpd_auth_free(auth);
    unlink(path);
}

/* test_auth_over_tls - AUTH on a real loop: checks on the thread pool, replies in order. */
static void test_auth_over_tls(void **state)
{
    (void)state;
    struct harness h;
    char path[] = "/tmp/hamr-tls-auth-XXXXXX";
    struct smtpd_auth *auth = auth_session_start(&h, path);
    /* "\0alice\0wrong" and "\0alice\0secret-alice" */
    expect(&h, "AUTH PLAIN AGFsaWNlAHdyb25n\r\n", "535 5.7.8 Error: authentication failed\r\n");
    client_send(&h, "AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ==\r\nNOOP\r\n");
    const char *r = client_reply(&h);
    assert_non_null(r);
    assert_int_equal(strncmp(r, "235 2.7.0 Authentication successful\r\n", 38), 0);
    if (strstr(r, "250 2.0.0 Ok\r\n") == NULL)
        expect(&h, NULL, "250 2.0.0 Ok\r\n");

    /* A reload while a check runs: the check keeps the table it started with. */
    client_drop(&h);
    start_tls(&h);
    expect(&h, "EHLO client.test\r\n", "250-mx.hamr.test");
    client_send(&h, "AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ==\r\n");
    assert_true(wait_check(&h));
    char line[512], err[256];
    assert_int_equal(smtpd_auth_hash_line("bob", "b0b", 3, 1000, line, sizeof(line)), 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(line, f);
    fclose(f);
    assert_int_equal(smtpd_auth_reload(auth, err, sizeof(err)), 0);
    expect(&h, NULL, "235 2.7.0"); /* checked against the table before the reload */
    assert_int_equal(smtpd_server_auth_checks(h.server), 0);
    client_drop(&h);
    start_tls(&h);
    expect(&h, "EHLO client.test\r\n", "250-mx.hamr.test");
    expect(&h, "AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ==\r\n", "535 ");
    expect(&h, "AUTH PLAIN AGJvYgBiMGI=\r\n", "235 2.7.0"); /* "\0bob\0b0b" */
    client_drop(&h);

    /* The server closes while a check runs: its callback comes after the check. */
    start_tls(&h);
    expect(&h, "EHLO client.test\r\n", "250-mx.hamr.test");
    client_send(&h, "AUTH PLAIN AGJvYgBiMGI=\r\n");
    assert_true(wait_check(&h));
    client_drop(&h);
    smtpd_server_close(h.server, server_closed_cb, &h);
    uv_close((uv_handle_t *)&h.commit, NULL);
    for (int i = 0; i < TURNS_MAX && !h.server_closed; i++)
        uv_run(&h.loop, UV_RUN_ONCE); /* wakes for the check's completion */
    assert_true(h.server_closed);
    assert_int_equal(uv_loop_close(&h.loop), 0);
    tls_testcert_cleanup(&h.tc);
    smtpd_auth_free(auth);
    unlink(path);
}

/*
 * test_auth_rate_over_tls - client_auth_rate 2: two AUTH commands (one
 * failing) are checked, the third gets 450 4.7.1 without a check and the
 * session goes on; a new connection from the same address is still over
 * the rate; after the window AUTH succeeds.
 */
static void test_auth_rate_over_tls(void **state)
{
    (void)state;
    struct harness h;
    char path[] = "/tmp/hamr-tls-rate-XXXXXX";
    static const char refused[] = "450 4.7.1 Error: too many AUTH commands from 127.0.0.1\r\n";
    harness_start(&h, true);
    struct smtpd_auth *auth = auth_file(path, "alice", "secret-alice");
    h.policy.auth = auth;
    h.policy.auth_max_failures = 10;
    struct smtpd_limits_config lim = {.auth_rate = 2};
    smtpd_server_set_limits(h.server, &lim);
    const struct smtpd_limits *l = smtpd_server_limits(h.server);

    start_tls(&h);
    expect(&h, "EHLO client.test\r\n", "250-mx.hamr.test");
    expect(&h, "AUTH PLAIN AGFsaWNlAHdyb25n\r\n", "535 5.7.8 Error: authentication failed\r\n");
    expect(&h, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
    expect(&h, "YWxpY2U=\r\n", "334 UGFzc3dvcmQ6\r\n");
    expect(&h, "d3Jvbmc=\r\n", "535 5.7.8"); /* "wrong" */
    assert_int_equal(smtpd_limits_auths(l, "127.0.0.1"), 2);
    expect(&h, "AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ==\r\n", refused);
    assert_int_equal(smtpd_server_auth_checks(h.server), 0);
    expect(&h, "NOOP\r\n", "250 2.0.0 Ok\r\n");
    client_drop(&h);

    start_tls(&h);
    expect(&h, "EHLO client.test\r\n", "250-mx.hamr.test");
    expect(&h, "AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ==\r\n", refused);
    assert_int_equal(smtpd_limits_auths(l, "127.0.0.1"), 4);
    smtpd_server_advance_clock(h.server, SMTPD_LIMITS_WINDOW_MS);
    expect(&h, "AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ==\r\n", "235 2.7.0");
    assert_int_equal(smtpd_limits_auths(l, "127.0.0.1"), 1);
    harness_stop(&h);
    smtpd_auth_free(auth);
    unlink(path);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as hamrd does: a vanished client is EPIPE, not death */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mail_over_tls),
        cmocka_unit_test(test_plaintext_mail_says_esmtp),
        cmocka_unit_test(test_injection_discarded),
        cmocka_unit_test(test_starttls_replies),
        cmocka_unit_test(test_old_tls_refused),
        cmocka_unit_test(test_plaintext_after_220),
        cmocka_unit_test(test_handshake_timeout),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_auth_over_tls),
        cmocka_unit_test(test_mail_auth_param),
        cmocka_unit_test(test_auth_rate_over_tls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
