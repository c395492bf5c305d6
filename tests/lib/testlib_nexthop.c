/*
 * testlib_nexthop.c - a scripted SMTP server on the test's libuv loop, the
 * next hop of net/smtpc in unit tests (see testlib_nexthop.h).
 *
 * Happy path: accept, greet, split what the client sends into lines (the
 * octets TLS decrypted, once STARTTLS is done), answer each line from the
 * overrides or the defaults, count. Failure modes: "!close" overrides and
 * a failed TLS handshake close the connection; a read error or EOF closes
 * it and counts n_eof. Owns its connections (freed in their close
 * callbacks) and rx; exports testlib_nexthop_*. A socket call that fails
 * fails the cmocka test.
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

#include "util/b64.h"
#include "util/buf.h"
#include "net/tls.h"
#include "tests/lib/testlib_nexthop.h"

/* testlib_nexthop_write_cb - free the copy of a reply. */
static void testlib_nexthop_write_cb(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

/* testlib_nexthop_send_raw - write len octets as they are (copied). */
static void testlib_nexthop_send_raw(struct testlib_nexthop_conn *sc, const char *data, size_t len)
{
    uv_write_t *req = malloc(sizeof(*req) + len);
    assert_non_null(req);
    char *copy = (char *)(req + 1);
    memcpy(copy, data, len);
    uv_buf_t b = uv_buf_init(copy, (unsigned)len);
    assert_int_equal(uv_write(req, (uv_stream_t *)&sc->tcp, &b, 1, testlib_nexthop_write_cb), 0);
}

/* testlib_nexthop_flush - send the ciphertext the TLS engine holds. */
static void testlib_nexthop_flush(struct testlib_nexthop_conn *sc)
{
    const char *out;
    size_t n = tls_output(sc->tls, &out);
    if (n > 0) {
        testlib_nexthop_send_raw(sc, out, n);
        tls_output_done(sc->tls, n);
    }
}

/* testlib_nexthop_send - len octets of reply, encrypted once TLS is up. */
static void testlib_nexthop_send(struct testlib_nexthop_conn *sc, const char *data, size_t len)
{
    if (!sc->tls_up) {
        testlib_nexthop_send_raw(sc, data, len);
        return;
    }
    assert_int_equal(tls_write(sc->tls, data, len), 0);
    testlib_nexthop_flush(sc);
}

/* testlib_nexthop_conn_close_cb - unlink and free a connection. */
static void testlib_nexthop_conn_close_cb(uv_handle_t *h)
{
    struct testlib_nexthop_conn *sc = h->data;
    for (struct testlib_nexthop_conn **pp = &sc->srv->conns; *pp; pp = &(*pp)->next) {
        if (*pp == sc) {
            *pp = sc->next;
            break;
        }
    }
    tls_free(sc->tls);
    free(sc);
}

/* testlib_nexthop_conn_close - close a connection once. */
static void testlib_nexthop_conn_close(struct testlib_nexthop_conn *sc)
{
    if (sc->closing)
        return;
    sc->closing = true;
    uv_close((uv_handle_t *)&sc->tcp, testlib_nexthop_conn_close_cb);
}

/* testlib_nexthop_reply - send the override for line, or def; false if that closed. */
static bool testlib_nexthop_reply(struct testlib_nexthop_conn *sc,
                                  const char *line,
                                  const char *def)
{
    struct testlib_nexthop *s = sc->srv;
    const char *r = def;
    size_t len = strlen(def);
    for (size_t i = 0; i < s->n_ov; i++) {
        if (strncmp(line, s->ov[i].prefix, strlen(s->ov[i].prefix)) == 0) {
            r = s->ov[i].reply;
            len = s->ov[i].len;
            break;
        }
    }
    if (strcmp(r, "!close") == 0) {
        testlib_nexthop_conn_close(sc);
        return false;
    }
    if (strcmp(r, "!none") == 0)
        return true;
    testlib_nexthop_send(sc, r, len);
    if (strncmp(line, "DATA", 4) == 0 && r[0] == '3')
        sc->data_mode = true;
    if (strncmp(line, "RCPT", 4) == 0 && r[0] == '2')
        sc->rcpts_ok++;
    if (strncmp(line, "MAIL", 4) == 0 && r[0] == '2')
        sc->mail_ok = true;
    return true;
}

/* testlib_nexthop_starttls - 503 unless offered and not yet in TLS; else the scripted reply. */
static void testlib_nexthop_starttls(struct testlib_nexthop_conn *sc, const char *line)
{
    struct testlib_nexthop *s = sc->srv;
    s->n_starttls++;
    if (sc->tls_up || !s->offer_starttls) {
        testlib_nexthop_reply(sc, line, "503 5.5.1 no\r\n");
        return;
    }
    testlib_nexthop_send_raw(sc, s->starttls_reply, strlen(s->starttls_reply));
    if (strncmp(s->starttls_reply, "220", 3) == 0)
        assert_int_equal(tls_new(s->ctx, true, NULL, false, &sc->tls), 0);
}

/* testlib_nexthop_say - send a NUL-ended reply. */
static void testlib_nexthop_say(struct testlib_nexthop_conn *sc, const char *reply)
{
    testlib_nexthop_send(sc, reply, strlen(reply));
}

/* testlib_nexthop_has_override - is there an override for line? */
static bool testlib_nexthop_has_override(const struct testlib_nexthop *s, const char *line)
{
    for (size_t i = 0; i < s->n_ov; i++)
        if (strncmp(line, s->ov[i].prefix, strlen(s->ov[i].prefix)) == 0)
            return true;
    return false;
}

/* testlib_nexthop_b64_line - decode line (base64, CRLF) into out (NUL-ended); false if malformed.
 */
static bool testlib_nexthop_b64_line(const char *line, char *out, size_t outlen, size_t *n)
{
    size_t len = strcspn(line, "\r\n");
    if (b64_decode(line, len, (uint8_t *)out, outlen - 1, n) != 0)
        return false;
    out[*n] = '\0';
    return true;
}

/* testlib_nexthop_auth_check - 235 if user and pass are the scripted ones, else 535. */
static void testlib_nexthop_auth_check(struct testlib_nexthop_conn *sc,
                                       const char *user,
                                       const char *pass)
{
    struct testlib_nexthop *s = sc->srv;
    sc->auth_step = 0;
    if (strcmp(user, s->auth_user) == 0 && strcmp(pass, s->auth_pass) == 0) {
        s->n_auth_ok++;
        testlib_nexthop_say(sc, "235 2.7.0 Authentication successful\r\n");
        return;
    }
    const char *no = "535 5.7.8 Authentication credentials invalid\r\n";
    testlib_nexthop_send(sc, no, strlen(no));
}

/* testlib_nexthop_auth_plain - RFC 4616 message (n octets): authzid NUL user NUL pass. */
static void testlib_nexthop_auth_plain(struct testlib_nexthop_conn *sc, const char *msg, size_t n)
{
    const char *user = memchr(msg, '\0', n);
    const char *pass = user != NULL ? memchr(user + 1, '\0', n - (size_t)(user + 1 - msg)) : NULL;
    if (pass == NULL) {
        sc->auth_step = 0;
        testlib_nexthop_say(sc, "501 5.5.2 bad PLAIN\r\n");
        return;
    }
    testlib_nexthop_auth_check(sc, user + 1, pass + 1);
}

/* testlib_nexthop_auth_step - a line that answers our 334. */
static void testlib_nexthop_auth_step(struct testlib_nexthop_conn *sc, const char *line)
{
    char dec[1024];
    size_t n = 0;
    if (!testlib_nexthop_b64_line(line, dec, sizeof(dec), &n)) {
        sc->auth_step = 0;
        testlib_nexthop_say(sc, "501 5.5.2 bad base64\r\n");
        return;
    }
    if (sc->auth_step == 1) {
        assert_true(n < sizeof(sc->login_user));
        memcpy(sc->login_user, dec, n + 1);
        sc->auth_step = 2;
        testlib_nexthop_say(sc, "334 UGFzc3dvcmQ6\r\n");
    } else if (sc->auth_step == 2) {
        testlib_nexthop_auth_check(sc, sc->login_user, dec);
    } else {
        testlib_nexthop_auth_plain(sc, dec, n);
    }
}

/* testlib_nexthop_auth - AUTH PLAIN [ir] or AUTH LOGIN (RFC 4954). */
static void testlib_nexthop_auth(struct testlib_nexthop_conn *sc, const char *line)
{
    struct testlib_nexthop *s = sc->srv;
    s->n_auth++;
    if (!sc->tls_up)
        s->n_auth_clear++;
    const char *mech = line + 5;
    size_t ml = strcspn(mech, " \r\n");
    snprintf(s->auth_mech, sizeof(s->auth_mech), "%.*s", (int)ml, mech);
    if (testlib_nexthop_has_override(s, line) || s->auth_user == NULL) {
        testlib_nexthop_reply(sc, line, "502 5.5.2 unknown\r\n");
        return;
    }
    if (strcmp(s->auth_mech, "PLAIN") == 0 && mech[ml] == ' ') {
        char dec[1024];
        size_t n = 0;
        if (!testlib_nexthop_b64_line(mech + ml + 1, dec, sizeof(dec), &n)) {
            testlib_nexthop_say(sc, "501 5.5.2 bad base64\r\n");
            return;
        }
        testlib_nexthop_auth_plain(sc, dec, n);
    } else if (strcmp(s->auth_mech, "PLAIN") == 0) {
        sc->auth_step = 3;
        testlib_nexthop_say(sc, "334 \r\n");
    } else if (strcmp(s->auth_mech, "LOGIN") == 0) {
        sc->auth_step = 1;
        testlib_nexthop_say(sc, "334 VXNlcm5hbWU6\r\n");
    } else {
        testlib_nexthop_say(sc, "504 5.5.4 unrecognized mechanism\r\n");
    }
}

/* testlib_nexthop_bdat_done - a BDAT chunk is read: answer it. */
static void testlib_nexthop_bdat_done(struct testlib_nexthop_conn *sc)
{
    bool ok = sc->mail_ok && sc->rcpts_ok > 0;
    if (sc->bdat_last) {
        sc->srv->n_messages += ok;
        sc->mail_ok = false;
        sc->rcpts_ok = 0;
    }
    testlib_nexthop_reply(sc, sc->bdat_cmd,
                          !ok             ? "554 5.5.1 no valid recipients\r\n"
                          : sc->bdat_last ? "250 2.0.0 queued\r\n"
                                          : "250 2.0.0 chunk ok\r\n");
}

/* testlib_nexthop_bdat - "BDAT n [LAST]": the next n octets are the chunk. */
static void testlib_nexthop_bdat(struct testlib_nexthop_conn *sc, const char *line)
{
    char *end = NULL;
    unsigned long long n = strtoull(line + 5, &end, 10);
    assert_true(end != line + 5);
    sc->srv->n_bdat++;
    sc->bdat_last = strcmp(end, " LAST\r\n") == 0;
    assert_true(sc->bdat_last || strcmp(end, "\r\n") == 0);
    assert_true(strlen(line) < sizeof(sc->bdat_cmd));
    memcpy(sc->bdat_cmd, line, strlen(line) + 1);
    sc->bdat_left = (size_t)n;
    if (n == 0)
        testlib_nexthop_bdat_done(sc);
}

/* testlib_nexthop_line - act on one complete line. */
static void testlib_nexthop_line(struct testlib_nexthop_conn *sc, const char *line)
{
    struct testlib_nexthop *s = sc->srv;
    if (sc->data_mode) {
        if (strcmp(line, ".\r\n") != 0)
            return;
        sc->data_mode = false;
        sc->mail_ok = false;
        sc->rcpts_ok = 0;
        s->n_messages++;
        testlib_nexthop_reply(sc, line, "250 2.0.0 queued\r\n");
    } else if (sc->auth_step != 0) {
        testlib_nexthop_auth_step(sc, line);
    } else if (strncmp(line, "AUTH ", 5) == 0) {
        testlib_nexthop_auth(sc, line);
    } else if (strncmp(line, "EHLO", 4) == 0) {
        testlib_nexthop_reply(sc, line, sc->tls_up ? s->ehlo_tls : s->ehlo);
    } else if (strncmp(line, "HELO", 4) == 0) {
        testlib_nexthop_reply(sc, line, "250 test.example\r\n");
    } else if (strncmp(line, "STARTTLS", 8) == 0 && s->ctx != NULL) {
        testlib_nexthop_starttls(sc, line);
    } else if (strncmp(line, "MAIL", 4) == 0 || strncmp(line, "RSET", 4) == 0) {
        if (line[0] == 'M' && sc->tls_up)
            s->n_mail_tls++;
        else if (line[0] == 'M')
            s->n_mail_plain++;
        sc->mail_ok = false;
        sc->rcpts_ok = 0;
        testlib_nexthop_reply(sc, line, "250 2.1.0 ok\r\n");
    } else if (strncmp(line, "RCPT", 4) == 0) {
        testlib_nexthop_reply(sc, line,
                              sc->mail_ok ? "250 2.1.5 ok\r\n" : "503 5.5.1 need MAIL\r\n");
    } else if (strncmp(line, "DATA", 4) == 0) {
        testlib_nexthop_reply(
            sc, line, sc->rcpts_ok > 0 ? "354 go ahead\r\n" : "554 5.5.1 no valid recipients\r\n");
    } else if (strncmp(line, "BDAT ", 5) == 0) {
        testlib_nexthop_bdat(sc, line);
    } else if (strncmp(line, "QUIT", 4) == 0) {
        testlib_nexthop_reply(sc, line, "221 bye\r\n"); /* the client closes: n_eof */
    } else {
        testlib_nexthop_reply(sc, line, "502 5.5.2 unknown\r\n");
    }
}

/* testlib_nexthop_plain - record plaintext and split it into lines; stops when TLS begins. */
static void testlib_nexthop_plain(struct testlib_nexthop_conn *sc, const char *data, size_t len)
{
    struct testlib_nexthop *s = sc->srv;
    assert_int_equal(buf_append(&s->rx, data, len), 0);
    for (size_t i = 0; i < len && !sc->closing; i++) {
        if (sc->bdat_left > 0) {
            size_t k = len - i < sc->bdat_left ? len - i : sc->bdat_left;
            assert_int_equal(buf_append(&s->bdat_body, data + i, k), 0);
            sc->bdat_left -= k;
            i += k - 1;
            if (sc->bdat_left == 0)
                testlib_nexthop_bdat_done(sc);
            continue;
        }
        assert_true(sc->line_len + 1 < sizeof(sc->line));
        sc->line[sc->line_len++] = data[i];
        if (data[i] != '\n')
            continue;
        sc->line[sc->line_len] = '\0';
        sc->line_len = 0;
        /* The octets of a chunk behind its BDAT are not pipelining. */
        if (!sc->data_mode && i + 1 < len && strncmp(sc->line, "BDAT ", 5) != 0)
            s->n_pipelined++;
        bool was_plain = sc->tls == NULL;
        testlib_nexthop_line(sc, sc->line);
        if (was_plain && sc->tls != NULL)
            return; /* the client waits for the 220: nothing follows */
    }
}

/* testlib_nexthop_tls_input - ciphertext: the handshake, then decrypted lines. */
static void testlib_nexthop_tls_input(struct testlib_nexthop_conn *sc, const char *data, size_t len)
{
    if (sc->srv->stall_handshake)
        return;
    assert_int_equal(tls_feed(sc->tls, data, len), 0);
    if (!sc->tls_up) {
        int rc = tls_handshake(sc->tls);
        testlib_nexthop_flush(sc);
        if (rc < 0) {
            testlib_nexthop_conn_close(sc);
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
        testlib_nexthop_plain(sc, plain, (size_t)n);
    if (!sc->closing && n < 0)
        testlib_nexthop_conn_close(sc);
}

/* testlib_nexthop_alloc_cb - a fresh buffer per read. */
static void testlib_nexthop_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

/* testlib_nexthop_read_cb - EOF or error ends the connection; data goes in. */
static void testlib_nexthop_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct testlib_nexthop_conn *sc = st->data;
    if (nread < 0) {
        if (!sc->closing)
            sc->srv->n_eof++;
        testlib_nexthop_conn_close(sc);
    } else if (nread > 0 && !sc->closing && sc->tls != NULL) {
        testlib_nexthop_tls_input(sc, buf->base, (size_t)nread);
    } else if (nread > 0 && !sc->closing) {
        testlib_nexthop_plain(sc, buf->base, (size_t)nread);
    }
    free(buf->base);
}

/* testlib_nexthop_connection_cb - accept and greet. */
static void testlib_nexthop_connection_cb(uv_stream_t *l, int status)
{
    struct testlib_nexthop *s = l->data;
    assert_int_equal(status, 0);
    struct testlib_nexthop_conn *sc = calloc(1, sizeof(*sc));
    assert_non_null(sc);
    sc->srv = s;
    assert_int_equal(uv_tcp_init(l->loop, &sc->tcp), 0);
    sc->tcp.data = sc;
    sc->next = s->conns;
    s->conns = sc;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&sc->tcp), 0);
    s->n_accepted++;
    assert_int_equal(
        uv_read_start((uv_stream_t *)&sc->tcp, testlib_nexthop_alloc_cb, testlib_nexthop_read_cb),
        0);
    testlib_nexthop_reply(sc, "<greeting>", "220 test.example ESMTP\r\n");
}

/* testlib_nexthop_start - listen on 127.0.0.1, port 0, with the default script. */
void testlib_nexthop_start(struct testlib_nexthop *s, uv_loop_t *loop, SSL_CTX *ctx)
{
    testlib_nexthop_start_on(s, loop, ctx, "127.0.0.1", 0);
}

/* testlib_nexthop_start_on - listen on ip:port (port 0: the OS picks), with the default script. */
void testlib_nexthop_start_on(struct testlib_nexthop *s,
                              uv_loop_t *loop,
                              SSL_CTX *ctx,
                              const char *ip,
                              uint16_t port)
{
    memset(s, 0, sizeof(*s));
    s->ehlo = TESTLIB_NEXTHOP_EHLO_FULL;
    s->ehlo_tls = TESTLIB_NEXTHOP_EHLO_FULL;
    s->ctx = ctx;
    s->offer_starttls = ctx != NULL;
    s->starttls_reply = "220 2.0.0 ready to start TLS\r\n";
    buf_init(&s->rx, 4 << 20);
    buf_init(&s->bdat_body, 4 << 20);
    assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
    s->listener.data = s;
    struct sockaddr_storage a;
    if (strchr(ip, ':') != NULL)
        assert_int_equal(uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&a), 0);
    else
        assert_int_equal(uv_ip4_addr(ip, port, (struct sockaddr_in *)&a), 0);
    assert_int_equal(uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 16, testlib_nexthop_connection_cb), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len), 0);
    if (ss.ss_family == AF_INET6)
        s->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    else
        s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* testlib_nexthop_override - one more override, checked first to last. */
void testlib_nexthop_override(struct testlib_nexthop *s,
                              const char *prefix,
                              const char *reply,
                              size_t len)
{
    assert_true(s->n_ov < TESTLIB_NEXTHOP_OVERRIDES_MAX);
    s->ov[s->n_ov++] = (struct testlib_nexthop_override){prefix, reply, len ? len : strlen(reply)};
}

/* testlib_nexthop_received - search rx for needle. */
bool testlib_nexthop_received(const struct testlib_nexthop *s, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= s->rx.len; i++)
        if (memcmp(s->rx.data + i, needle, n) == 0)
            return true;
    return false;
}

/* testlib_nexthop_listener_close_cb - the listener is closed. */
static void testlib_nexthop_listener_close_cb(uv_handle_t *h)
{
    struct testlib_nexthop *s = h->data;
    s->listener_closed = true;
}

/* testlib_nexthop_stop - close the listener and every connection. */
void testlib_nexthop_stop(struct testlib_nexthop *s)
{
    uv_close((uv_handle_t *)&s->listener, testlib_nexthop_listener_close_cb);
    for (struct testlib_nexthop_conn *sc = s->conns; sc != NULL; sc = sc->next)
        testlib_nexthop_conn_close(sc);
}

/* testlib_nexthop_free - release rx. */
void testlib_nexthop_free(struct testlib_nexthop *s)
{
    buf_free(&s->rx);
    buf_free(&s->bdat_body);
}
