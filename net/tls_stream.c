/*
 * tls_stream.c - plaintext over a libuv stream, through a net/tls engine or
 * in the clear. See tls_stream.h.
 *
 * Plain mode passes straight through: libuv's reads land in the owner's
 * buffers, a write is one uv_write of the owner's buffer (a small request
 * is all that is allocated).
 *
 * TLS mode: ciphertext read from the socket lands in our chunk, goes into
 * the engine, and comes out as plaintext in the owner's buffers, as much as
 * that read makes whole records of. A write is encrypted at once (or, before
 * the handshake is done, kept in a list by pointer) and the engine's output
 * taken into one request of its own, whose callback is the owner's; the
 * engine's own output (handshake, alerts, close_notify) goes out in requests
 * without an owner callback.
 *
 * Failure modes: every end (TLS failure, EOF, close_notify, socket error,
 * including one on a write of our own) goes through tls_stream_end, which
 * reports once and stops reading; later input is ignored. A write that
 * libuv refuses at once is that write's error (returned, or, for one that
 * waited for the handshake, passed to its callback from the loop).
 *
 * Security: the peer is untrusted. The engine holds at most one chunk
 * beyond a partial record (each read is drained before the next); the
 * context decides what a valid certificate is.
 */
#include "net/tls_stream.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"

#define TLS_STREAM_CHUNK 65536 /* ciphertext per socket read */

/* tls_stream_wait - a plaintext write made before the handshake was done. */
struct tls_stream_wait {
    struct tls_stream_wait *next;
    const void *data; /* the owner's, until cb */
    size_t len;
    tls_stream_write_cb cb;
    void *arg;
};

/* tls_stream_req - one uv_write of ours: the owner's plaintext (plain mode) or ciphertext. */
struct tls_stream_req {
    uv_write_t req;
    struct tls_stream *s;
    tls_stream_write_cb cb; /* NULL: the engine's own output */
    void *arg;
    size_t plain; /* the owner's octets it carries, counted in s->queued */
    char data[];  /* ciphertext (TLS mode) */
};

struct tls_stream {
    struct tls_stream_handle *h;
    struct tls *tls; /* NULL: plain */
    bool server;
    struct tls_stream_ops ops;
    bool started;    /* TLS: the handshake has been kicked off */
    bool handshaken; /* plain, or TLS done */
    bool ended;      /* the end was reported */
    int end_status;
    bool shutting; /* tls_stream_shutdown was called */
    uv_shutdown_t shutdown;
    tls_stream_write_cb shutdown_cb;
    void *shutdown_arg;
    struct tls_stream_wait *wait_head, *wait_tail;
    size_t queued;   /* plaintext octets whose callbacks have not run */
    size_t inflight; /* our uv_write requests not yet called back */
    char err[TLS_ERR_MAX];
    char *chunk; /* TLS: where ciphertext is read */
};

static const uv_buf_t tls_stream_nobuf = {.base = NULL, .len = 0};

/* tls_stream_of - the stream a libuv handle of ours leads to. */
static struct tls_stream *tls_stream_of(uv_handle_t *h)
{
    return hamr_container_of((uv_stream_t *)h, struct tls_stream_handle, u.stream)->ts;
}

/* tls_stream_closing - the owner has closed (or is closing) its handle. */
static bool tls_stream_closing(const struct tls_stream *s)
{
    return uv_is_closing((const uv_handle_t *)&s->h->u.stream) != 0;
}

/*
 * tls_stream_end - report the end of the stream once and stop reading:
 * to handshake_cb while the handshake is not done (if there is one), else
 * to read_cb, with buf (the owner's buffer from alloc_cb, if one was taken).
 */
static void tls_stream_end(struct tls_stream *s, int status, const uv_buf_t *buf)
{
    if (s->ended)
        return;
    s->ended = true;
    s->end_status = status;
    uv_read_stop(&s->h->u.stream);
    if (!s->handshaken && s->ops.handshake_cb != NULL)
        s->ops.handshake_cb(s->ops.data, status);
    else
        s->ops.read_cb(s->ops.data, status, buf != NULL ? buf : &tls_stream_nobuf);
}

/* tls_stream_fail - the engine failed: keep its reason, report UV_EPROTO. */
static void tls_stream_fail(struct tls_stream *s, const uv_buf_t *buf)
{
    hamr_strlcpy(s->err, tls_error(s->tls), sizeof(s->err));
    tls_stream_end(s, UV_EPROTO, buf);
}

/* tls_stream_req_cb - a request is written (or cancelled): the owner's callback, if any. */
static void tls_stream_req_cb(uv_write_t *req, int status)
{
    struct tls_stream_req *w = hamr_container_of(req, struct tls_stream_req, req);
    struct tls_stream *s = w->s;
    tls_stream_write_cb cb = w->cb;
    void *arg = w->arg;
    s->inflight--;
    s->queued -= w->plain;
    free(w);
    if (cb != NULL)
        cb(arg, status);
    else if (status < 0 && status != UV_ECANCELED && !tls_stream_closing(s))
        tls_stream_end(s, status, NULL); /* the engine's own bytes did not go */
}

/*
 * tls_stream_flush - the engine's output so far into one request carrying
 * cb (the owner's write of plain octets) or none. 0 or what uv_write says;
 * the output is gone from the engine either way. Nothing to send and no cb:
 * nothing happens.
 */
static int tls_stream_flush(struct tls_stream *s, tls_stream_write_cb cb, void *arg, size_t plain)
{
    const char *p;
    size_t n = tls_output(s->tls, &p);
    if (n == 0 && cb == NULL)
        return 0;
    HAMR_ASSERT(n <= UINT_MAX);
    struct tls_stream_req *w = malloc(sizeof(*w) + n);
    if (w == NULL) {
        tls_output_done(s->tls, n);
        return UV_ENOMEM;
    }
    size_t got = tls_output_take(s->tls, w->data, n);
    HAMR_ASSERT(got == n);
    memset(&w->req, 0, sizeof(w->req));
    w->s = s;
    w->cb = cb;
    w->arg = arg;
    w->plain = plain;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    int rv = uv_write(&w->req, &s->h->u.stream, &b, 1, tls_stream_req_cb);
    if (rv != 0) {
        free(w);
        return rv;
    }
    s->inflight++;
    s->queued += plain;
    /* Asynchronous processing continues in tls_stream_req_cb. */
    return 0;
}

/* tls_stream_send - encrypt one write and hand its ciphertext to libuv. 0 or a UV_E* code. */
static int tls_stream_send(struct tls_stream *s,
                           const void *data,
                           size_t len,
                           tls_stream_write_cb cb,
                           void *arg)
{
    if (tls_write(s->tls, data, len) != 0) {
        hamr_strlcpy(s->err, tls_error(s->tls), sizeof(s->err));
        return UV_EPROTO;
    }
    return tls_stream_flush(s, cb, arg, len);
}

/*
 * tls_stream_release - the writes that waited for the handshake, in order.
 * Called from the loop (read callback), so a refusal goes to the callback.
 */
static void tls_stream_release(struct tls_stream *s)
{
    while (s->wait_head != NULL && !tls_stream_closing(s)) {
        struct tls_stream_wait *q = s->wait_head;
        s->wait_head = q->next;
        if (s->wait_head == NULL)
            s->wait_tail = NULL;
        s->queued -= q->len;
        int rv = tls_stream_send(s, q->data, q->len, q->cb, q->arg);
        tls_stream_write_cb cb = q->cb;
        void *arg = q->arg;
        free(q);
        if (rv != 0)
            cb(arg, rv);
    }
}

/* tls_stream_plain_alloc_cb - plain mode: reads land in the owner's buffer. */
static void tls_stream_plain_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct tls_stream *s = tls_stream_of(h);
    (void)suggested;
    s->ops.alloc_cb(s->ops.data, buf);
}

/* tls_stream_plain_read_cb - plain mode: the owner's read, or the end. */
static void tls_stream_plain_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct tls_stream *s = tls_stream_of((uv_handle_t *)st);
    if (s->ended)
        return;
    if (nread < 0)
        tls_stream_end(s, (int)nread, buf);
    else
        s->ops.read_cb(s->ops.data, nread, buf);
}

/* tls_stream_tls_alloc_cb - TLS mode: ciphertext lands in our chunk. */
static void tls_stream_tls_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct tls_stream *s = tls_stream_of(h);
    (void)suggested;
    *buf = uv_buf_init(s->chunk, TLS_STREAM_CHUNK);
}

/* tls_stream_handshake - advance it; false when the stream ended or must wait for input. */
static bool tls_stream_handshake(struct tls_stream *s)
{
    int rc = tls_handshake(s->tls);
    int frv = tls_stream_flush(s, NULL, NULL, 0); /* our flight, or the alert that ends it */
    if (rc < 0) {
        tls_stream_fail(s, NULL);
        return false;
    }
    if (frv != 0) {
        tls_stream_end(s, frv, NULL);
        return false;
    }
    if (rc == 0)
        return false;
    s->handshaken = true;
    if (s->ops.handshake_cb != NULL)
        s->ops.handshake_cb(s->ops.data, 0);
    if (s->ended || tls_stream_closing(s))
        return false; /* refused by the owner: what waited never leaves */
    tls_stream_release(s);
    return !s->ended && !tls_stream_closing(s);
}

/* tls_stream_deliver - all the plaintext the engine can make of what it has. */
static void tls_stream_deliver(struct tls_stream *s)
{
    while (!s->ended && !tls_stream_closing(s)) {
        uv_buf_t b = tls_stream_nobuf;
        s->ops.alloc_cb(s->ops.data, &b);
        long n = tls_read(s->tls, b.base, b.len);
        if (n == HAMR_EPROTO) {
            tls_stream_flush(s, NULL, NULL, 0); /* the alert, if the engine made one */
            tls_stream_fail(s, &b);
            return;
        }
        if (n == HAMR_ESHUTDOWN) {
            tls_stream_end(s, UV_EOF, &b);
            return;
        }
        /* Reading may make output of its own (a key update's answer). */
        int frv = tls_stream_flush(s, NULL, NULL, 0);
        if (frv != 0) {
            tls_stream_end(s, frv, &b);
            return;
        }
        s->ops.read_cb(s->ops.data, n, &b);
        if (n == 0)
            return;
    }
}

/* tls_stream_tls_read_cb - TLS mode: ciphertext in; handshake, then plaintext out. */
static void tls_stream_tls_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct tls_stream *s = tls_stream_of((uv_handle_t *)st);
    (void)buf;
    if (s->ended || nread == 0)
        return;
    if (nread < 0) {
        tls_stream_end(s, (int)nread, NULL);
        return;
    }
    if (tls_feed(s->tls, s->chunk, (size_t)nread) != 0) {
        hamr_strlcpy(s->err, "too much ciphertext held", sizeof(s->err));
        tls_stream_end(s, UV_EPROTO, NULL);
        return;
    }
    if (!s->handshaken && !tls_stream_handshake(s))
        return;
    tls_stream_deliver(s);
}

/*
 * tls_stream_init_host - the engine (TLS) or nothing (plain) over h; a
 * client with host sends it as SNI and verifies the certificate against it.
 */
static int tls_stream_init_host(struct tls_stream **out,
                                struct tls_stream_handle *h,
                                SSL_CTX *ctx,
                                bool server,
                                const char *host,
                                const struct tls_stream_ops *ops)
{
    struct tls_stream *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return HAMR_ENOMEM;
    s->h = h;
    s->server = server;
    s->ops = *ops;
    if (ctx != NULL) {
        s->chunk = malloc(TLS_STREAM_CHUNK);
        if (s->chunk == NULL) {
            free(s);
            return HAMR_ENOMEM;
        }
        int rv = tls_new(ctx, server, host, host != NULL, &s->tls);
        if (rv != 0) {
            free(s->chunk);
            free(s);
            return rv;
        }
    } else {
        s->handshaken = true;
    }
    h->ts = s;
    *out = s;
    return 0;
}

/* tls_stream_init - see tls_stream.h. */
int tls_stream_init(struct tls_stream **out,
                    struct tls_stream_handle *h,
                    SSL_CTX *ctx,
                    bool server,
                    const struct tls_stream_ops *ops)
{
    return tls_stream_init_host(out, h, ctx, server, NULL, ops);
}

/* tls_stream_init_client - see tls_stream.h. */
int tls_stream_init_client(struct tls_stream **out,
                           struct tls_stream_handle *h,
                           SSL_CTX *ctx,
                           const char *host,
                           const struct tls_stream_ops *ops)
{
    if (ctx == NULL || host == NULL || host[0] == '\0')
        return HAMR_EINVAL;
    return tls_stream_init_host(out, h, ctx, false, host, ops);
}

/* tls_stream_read_start - read the socket; with TLS, a client's first call sends its hello. */
int tls_stream_read_start(struct tls_stream *s)
{
    if (s->ended)
        return 0;
    if (s->tls == NULL)
        return uv_read_start(&s->h->u.stream, tls_stream_plain_alloc_cb, tls_stream_plain_read_cb);
    int rv = uv_read_start(&s->h->u.stream, tls_stream_tls_alloc_cb, tls_stream_tls_read_cb);
    if (rv != 0 || s->started)
        return rv;
    s->started = true;
    if (!s->server) {
        /* The client hello: no input is needed for it, so this cannot finish or call back. */
        if (tls_handshake(s->tls) < 0) {
            hamr_strlcpy(s->err, tls_error(s->tls), sizeof(s->err));
            return UV_EPROTO;
        }
        return tls_stream_flush(s, NULL, NULL, 0);
    }
    return 0;
}

/* tls_stream_read_stop - stop reading the socket. */
void tls_stream_read_stop(struct tls_stream *s)
{
    uv_read_stop(&s->h->u.stream);
}

/* tls_stream_write - one write: now (plain, or TLS after the handshake) or after the handshake. */
int tls_stream_write(struct tls_stream *s,
                     const void *data,
                     size_t len,
                     tls_stream_write_cb cb,
                     void *arg)
{
    if (len == 0 || len > TLS_STREAM_WRITE_MAX || cb == NULL)
        return UV_EINVAL;
    if (tls_stream_closing(s))
        return UV_ECANCELED;
    if (s->ended && s->end_status == UV_EPROTO)
        return UV_EPROTO;
    if (s->tls == NULL) {
        struct tls_stream_req *w = malloc(sizeof(*w));
        if (w == NULL)
            return UV_ENOMEM;
        memset(&w->req, 0, sizeof(w->req));
        w->s = s;
        w->cb = cb;
        w->arg = arg;
        w->plain = len;
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len); /* libuv only reads it */
        int rv = uv_write(&w->req, &s->h->u.stream, &b, 1, tls_stream_req_cb);
        if (rv != 0) {
            free(w);
            return rv;
        }
        s->inflight++;
        s->queued += len;
        return 0;
    }
    if (s->handshaken && s->wait_head == NULL)
        return tls_stream_send(s, data, len, cb, arg);
    /* Before the handshake (or while those that waited for it are let out): in order. */
    struct tls_stream_wait *q = malloc(sizeof(*q));
    if (q == NULL)
        return UV_ENOMEM;
    *q = (struct tls_stream_wait){.data = data, .len = len, .cb = cb, .arg = arg};
    if (s->wait_tail != NULL)
        s->wait_tail->next = q;
    else
        s->wait_head = q;
    s->wait_tail = q;
    s->queued += len;
    return 0;
}

size_t tls_stream_queued(const struct tls_stream *s)
{
    return s->queued;
}

/* tls_stream_shutdown_cb - the FIN is out (or not): the owner's callback. */
static void tls_stream_shutdown_cb(uv_shutdown_t *req, int status)
{
    struct tls_stream *s = req->data;
    s->inflight--;
    s->shutdown_cb(s->shutdown_arg, status);
}

/* tls_stream_shutdown - close_notify (TLS), then FIN after every write. */
int tls_stream_shutdown(struct tls_stream *s, tls_stream_write_cb cb, void *arg)
{
    if (s->shutting)
        return UV_EBUSY;
    if (tls_stream_closing(s))
        return UV_ECANCELED;
    if (s->tls != NULL) {
        if (!s->handshaken || s->wait_head != NULL)
            return UV_ENOTCONN;
        tls_shutdown(s->tls);
        int rv = tls_stream_flush(s, NULL, NULL, 0);
        if (rv != 0)
            return rv;
    }
    s->shutdown.data = s;
    int rv = uv_shutdown(&s->shutdown, &s->h->u.stream, tls_stream_shutdown_cb);
    if (rv != 0)
        return rv;
    s->shutting = true;
    s->shutdown_cb = cb;
    s->shutdown_arg = arg;
    s->inflight++;
    return 0;
}

struct tls *tls_stream_tls(const struct tls_stream *s)
{
    return s->tls;
}

bool tls_stream_handshaken(const struct tls_stream *s)
{
    return s->handshaken;
}

const char *tls_stream_error(const struct tls_stream *s)
{
    return s->err;
}

/* tls_stream_free - from the owner's close callback; the waiting writes are cancelled here. */
void tls_stream_free(struct tls_stream *s)
{
    if (s == NULL)
        return;
    /* libuv ran every request's callback before the handle's close callback. */
    HAMR_ASSERT(s->inflight == 0);
    while (s->wait_head != NULL) {
        struct tls_stream_wait *q = s->wait_head;
        s->wait_head = q->next;
        s->queued -= q->len;
        q->cb(q->arg, UV_ECANCELED);
        free(q);
    }
    s->h->ts = NULL;
    tls_free(s->tls);
    free(s->chunk);
    free(s);
}
