/*
 * http.c - the health and metrics HTTP endpoint (see http.h) and the
 * readiness decision.
 *
 * Happy path: accept -> (TLS: handshake, the client's certificate must
 * name an operator) -> read until the head ends (CRLF CRLF) -> parse the
 * request line -> answer from the path (the ready callback, or the metrics
 * source's fill and a render) -> write head and body -> shutdown (TLS
 * close_notify, then FIN) -> read and discard until the client's EOF ->
 * close. Every connection reads and writes through a net/tls_stream, in the
 * clear on a listener without TLS. Each step that waits for the client has
 * a deadline on the connection's one timer: the handshake and the head
 * (read timeout), the answer (write timeout), the EOF (linger).
 *
 * Lingering after the answer is deliberate: closing a socket that still has
 * unread input makes the kernel send RST, and an RST can destroy a response
 * the client has not read yet (the 431 case, where input is still arriving).
 * The linger is bounded by time (HTTP_LINGER_MS) and needs no buffer.
 *
 * Failure modes:
 *   - head over HTTP_HEAD_MAX without its end: 431;
 *   - no whole head within the read timeout: 408;
 *   - the answer not taken by the client within the write timeout (it
 *     reads too slowly or not at all): closed;
 *   - a request line that is not "METHOD SP /target SP HTTP/1.x": 400;
 *   - not GET: 405 with Allow: GET; unknown path: 404; /metrics on a
 *     listener in the clear whose metrics are on the TLS listener: 403;
 *   - rendering /metrics fails (over HTTP_METRICS_MAX, no memory): 500;
 *   - EOF or a read error before the head ends: closed without an answer;
 *   - more than HTTP_MAX_CONNS connections: the oldest that has not sent a
 *     whole head is closed to make room (net/tcp_server, TCP_SERVER_CAP_EVICT),
 *     so that silent connections cannot keep a health check out; when every
 *     one has, the new one is closed at once (tcp_server also refuses a
 *     client it gets no memory for);
 *   - a failed write or shutdown: closed;
 *   - TLS: the handshake fails (no certificate, another CA, not TLS at
 *     all): logged with the peer and the reason, counted (refused_tls),
 *     closed; not done within the read timeout: closed, counted
 *     (timed_out); a verified certificate that names no operator (a
 *     node's): logged, counted (refused_identity), answered 403, nothing it
 *     sent is read.
 *
 * Owns: the listener (a net/tcp_server) and every connection (handles
 * embedded, freed when tcp_server has closed them all), each connection's
 * tls_stream, and each response until its writes complete.
 *
 * Security: parses untrusted network input. The head is bounded before it
 * is buffered; only the request line is interpreted (headers are skipped);
 * the path is logged through log_printable. With TLS nothing is read as a
 * request before the client's certificate has been checked.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/cluster_tls.h"
#include "net/tcp_server.h"
#include "net/tls_stream.h"

#include "node/http.h"
#include "node/metrics.h"
#include "node/operator_gate.h"

#define HTTP_READ_CHUNK 4096
#define HTTP_LINGER_MS 2000 /* after the answer, wait this long for the client's EOF */
#define HTTP_METHOD_MAX 16
#define HTTP_MIB (1024 * 1024)
#define HTTP_PEER_MAX 64

/* ------------------------------------------------------------------------ */
/* Readiness.                                                               */
/* ------------------------------------------------------------------------ */

/* health_ready - the readiness decision, most severe reason first. */
bool health_ready(const struct health_input *in, char *reason, size_t len)
{
    uint64_t et = in->election_timeout_ms != 0 ? in->election_timeout_ms : 1000;
    uint64_t limit = 2 * et;
    if (in->raft_failed) {
        snprintf(reason, len, "raft failed");
        return false;
    }
    if (in->draining) {
        snprintf(reason, len, "draining");
        return false;
    }
    if (!in->leader_known) {
        snprintf(reason, len, "no leader");
        return false;
    }
    /* A follower that has not heard from its leader for two election
     * timeouts is most likely on the minority side of a partition, where
     * it can only answer 451: take it out of the load balancer. */
    if (!in->is_leader && in->last_leader_contact_ms >= limit) {
        if (in->last_leader_contact_ms == UINT64_MAX)
            snprintf(reason, len, "no contact with the leader (limit %" PRIu64 " ms)", limit);
        else
            snprintf(reason, len,
                     "no contact with the leader for %" PRIu64 " ms (limit %" PRIu64 " ms)",
                     in->last_leader_contact_ms, limit);
        return false;
    }
    /* Just restarted and still applying the log: let it catch up before
     * it gets traffic (it would forward everything and lag behind). */
    if (in->apply_lag > HEALTH_MAX_APPLY_LAG) {
        snprintf(reason, len, "catching up: %" PRIu64 " entries behind", in->apply_lag);
        return false;
    }
    /* After a snapshot install this node lacks bodies: until it has them it
     * is one copy short, so a rolling upgrade must not take the next node. */
    if (in->bodies_missing > 0) {
        snprintf(reason, len, "fetching bodies: %" PRIu64 " missing", in->bodies_missing);
        return false;
    }
    /* From cluster level 6 a node stamps times in the cluster time, which it
     * learns from the leader within a report or two; it takes no mail before. */
    if (in->clock_unknown) {
        snprintf(reason, len, "cluster time not known yet");
        return false;
    }
    if (in->min_free_bytes != 0 && in->disk_free_bytes < in->min_free_bytes) {
        snprintf(reason, len, "disk low: %" PRIu64 " MiB free, %" PRIu64 " MiB required",
                 in->disk_free_bytes / HTTP_MIB, in->min_free_bytes / HTTP_MIB);
        return false;
    }
    /* A full queue leaves the node ready, on purpose. The limits are on the
     * replicated queue, so every node reaches them at the same moment: 503
     * here would take the whole cluster out of the balancer, which then
     * refuses or drops connections, where 452 4.3.1 at MAIL ("insufficient
     * system storage", RFC 5321 4.2.3; "mail system full", RFC 3463 X.3.1)
     * tells each client to keep the message and retry. The body says why,
     * and /metrics has hamr_queue_full for the alert. */
    if (in->queue_full) {
        snprintf(reason, len,
                 "ready; queue full: %" PRIu64 " messages (limit %" PRIu64 "), %" PRIu64
                 " bytes (limit %" PRIu64 ")",
                 in->queue_messages, in->queue_max_messages, in->queue_bytes, in->queue_max_bytes);
        return true;
    }
    /* A wall clock off the cluster time harms nothing hamr stamps (it uses
     * the cluster time), so the node stays ready; the text says so for the
     * operator, as /metrics (hamr_clock_skewed) and hamrctl status do. */
    if (in->clock_skewed) {
        snprintf(reason, len, "ready; clock skew: %+.1f s from the cluster time (limit %.1f s)",
                 (double)in->clock_skew_ms / 1000.0, (double)in->max_clock_skew_ms / 1000.0);
        return true;
    }
    snprintf(reason, len, "ready");
    return true;
}

/* ------------------------------------------------------------------------ */
/* Server.                                                                  */
/* ------------------------------------------------------------------------ */

struct http {
    struct tcp_server *tcp; /* the listener and the connections' handles */
    struct http_handler handler;
    struct cluster_tls *tls; /* NULL: in the clear */
    bool metrics_tls_only;   /* /metrics is a 403 here */
    const char *name;        /* "http" or "metrics", for logs */
    uint64_t read_timeout_ms;
    uint64_t write_timeout_ms;
    struct operator_gate_stats stats;
    bool closing;
};

/*
 * Connection states; they only move forward: READING -> WRITING -> LINGER,
 * and any state may end in closing (a flag, as close is idempotent).
 */
enum http_conn_state {
    HTTP_CONN_READING, /* gathering the request head */
    HTTP_CONN_WRITING, /* the answer is being written; input is discarded */
    HTTP_CONN_LINGER,  /* answered and shut down; waiting for the client's EOF */
};

/* http_conn - one client connection; freed when both handles have closed. */
struct http_conn {
    struct tcp_server_conn base;
    struct http *srv;
    struct tls_stream_handle h; /* h.u.tcp */
    struct tls_stream *ts;      /* NULL until started */
    uv_timer_t timer;           /* read timeout, then write timeout, then linger */
    enum http_conn_state state;
    bool closing;
    bool eof; /* the client has half-closed */
    size_t head_len;
    char peer[HTTP_PEER_MAX]; /* "ip:port", for logs */
    char head[HTTP_HEAD_MAX];
    char rbuf[HTTP_READ_CHUNK];
};

/* http_write - one answer in flight: head text and body, one tls_stream write each. */
struct http_write {
    struct http_conn *conn;
    unsigned pending; /* writes whose callback has not run */
    int status;       /* the first failure among them */
    struct buf body;
    char head[256];
};

/* http_conn_close - idempotent; a pending write or shutdown is cancelled by libuv. */
static void http_conn_close(struct http_conn *conn)
{
    if (conn->closing)
        return;
    conn->closing = true;
    tcp_server_conn_close(&conn->base);
}

/* http_linger_cb - the client did not close in time after its answer. */
static void http_linger_cb(uv_timer_t *t)
{
    http_conn_close(hamr_container_of(t, struct http_conn, timer));
}

/* http_write_timeout_cb - the client has not taken its answer in time. */
static void http_write_timeout_cb(uv_timer_t *t)
{
    struct http_conn *conn = hamr_container_of(t, struct http_conn, timer);
    log_debug("%s write timeout peer=%s after %" PRIu64 " ms", conn->srv->name, conn->peer,
              conn->srv->write_timeout_ms);
    http_conn_close(conn);
}

/* http_shutdown_cb - our close_notify and FIN are out; http_read_cb closes on the client's EOF. */
static void http_shutdown_cb(void *arg, int status)
{
    struct http_conn *conn = arg;
    if (status < 0 && !conn->closing)
        http_conn_close(conn);
}

/* http_write_cb - one part of the answer is written; after the last: shut down and linger. */
static void http_write_cb(void *arg, int status)
{
    struct http_write *w = arg;
    struct http_conn *conn = w->conn;
    if (status < 0 && w->status == 0)
        w->status = status;
    if (--w->pending > 0)
        return;
    status = w->status;
    buf_free(&w->body);
    free(w);
    if (conn->closing)
        return;
    if (status < 0) {
        log_debug("%s write failed peer=%s err=%s", conn->srv->name, conn->peer,
                  uv_err_name(status));
        http_conn_close(conn);
        return;
    }
    if (conn->eof) {
        /* Nothing unread is left to turn the close into an RST. */
        http_conn_close(conn);
        return;
    }
    conn->state = HTTP_CONN_LINGER;
    if (tls_stream_shutdown(conn->ts, http_shutdown_cb, conn) != 0) {
        http_conn_close(conn);
        return;
    }
    uv_timer_start(&conn->timer, http_linger_cb, HTTP_LINGER_MS, 0);
    /* Asynchronous processing continues in http_shutdown_cb and http_read_cb. */
}

/* http_reason - the reason phrase of the status codes sent here. */
static const char *http_reason(int status)
{
    switch (status) {
        case 200:
            return "OK";
        case 400:
            return "Bad Request";
        case 403:
            return "Forbidden";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 408:
            return "Request Timeout";
        case 431:
            return "Request Header Fields Too Large";
        case 500:
            return "Internal Server Error";
        case 503:
            return "Service Unavailable";
        default:
            return "Unknown";
    }
}

/*
 * http_send - write status, headers and body (taken over: body is left
 * empty) and go on to linger. On failure the connection is closed. Two
 * writes rather than one buffer: a /metrics body of megabytes is not copied.
 */
static void http_send(struct http_conn *conn, int status, const char *ctype, struct buf *body)
{
    struct http_write *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        buf_free(body);
        http_conn_close(conn);
        return;
    }
    w->conn = conn;
    w->body = *body;
    buf_init(body, body->limit);
    /* A client that does not read must not hold its place: the answer has a deadline too. */
    uv_timer_start(&conn->timer, http_write_timeout_cb, conn->srv->write_timeout_ms, 0);
    int n = snprintf(w->head, sizeof(w->head),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "Cache-Control: no-store\r\n"
                     "Connection: close\r\n"
                     "\r\n",
                     status, http_reason(status), ctype, w->body.len,
                     status == 405 ? "Allow: GET\r\n" : "");
    HAMR_ASSERT(n > 0 && (size_t)n < sizeof(w->head));
    conn->state = HTTP_CONN_WRITING;
    if (tls_stream_write(conn->ts, w->head, (size_t)n, http_write_cb, w) != 0) {
        buf_free(&w->body);
        free(w);
        http_conn_close(conn);
        return;
    }
    w->pending = 1;
    if (w->body.len == 0)
        return; /* Asynchronous processing continues in http_write_cb. */
    if (tls_stream_write(conn->ts, w->body.data, w->body.len, http_write_cb, w) != 0) {
        http_conn_close(conn); /* the head's callback (cancelled) frees w */
        return;
    }
    w->pending = 2;
    /* Asynchronous processing continues in http_write_cb. */
}

/* http_send_text - answer with a short plain-text body. */
static void http_send_text(struct http_conn *conn, int status, const char *text)
{
    struct buf body;
    buf_init(&body, 0);
    if (buf_append(&body, text, strlen(text)) != 0) {
        buf_free(&body);
        http_conn_close(conn);
        return;
    }
    http_send(conn, status, "text/plain; charset=utf-8", &body);
}

/* http_answer_ready - GET /health/ready: 200 "ready" or 503 "not ready: REASON". */
static void http_answer_ready(struct http_conn *conn)
{
    struct http *s = conn->srv;
    struct health_input in;
    memset(&in, 0, sizeof(in));
    s->handler.ready(s->handler.data, &in);
    char reason[200], text[256];
    bool ok = health_ready(&in, reason, sizeof(reason));
    if (ok)
        snprintf(text, sizeof(text), "%s\n", reason);
    else
        snprintf(text, sizeof(text), "not ready: %s\n", reason);
    http_send_text(conn, ok ? 200 : 503, text);
}

/* http_answer_metrics - GET /metrics: fill, render, send. */
static void http_answer_metrics(struct http_conn *conn)
{
    struct http *s = conn->srv;
    if (s->handler.source.fill != NULL)
        s->handler.source.fill(s->handler.source.data, s->handler.metrics);
    struct buf body;
    buf_init(&body, HTTP_METRICS_MAX);
    int rv = metrics_render(s->handler.metrics, &body);
    if (rv != 0) {
        log_warn("http metrics render failed err=%s", hamr_strerror(rv));
        buf_free(&body);
        http_send_text(conn, 500, "metrics unavailable\n");
        return;
    }
    http_send(conn, 200, "text/plain; version=0.0.4; charset=utf-8", &body);
}

/* http_is_tchar - RFC 9110 5.6.2 token characters (a method is a token). */
static bool http_is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/*
 * http_handle - the head is complete (head_len bytes, ends with an empty
 * line): parse the request line and answer. RFC 9112 3: request-line =
 * method SP request-target SP HTTP-version.
 */
static void http_handle(struct http_conn *conn)
{
    struct http *s = conn->srv;
    const char *p = conn->head, *end = conn->head + conn->head_len;
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    HAMR_ASSERT(eol != NULL);
    size_t line_len = (size_t)(eol - p);
    if (line_len > 0 && p[line_len - 1] == '\r')
        line_len--;

    /* method */
    size_t m = 0;
    while (m < line_len && http_is_tchar(p[m]))
        m++;
    /* target: origin-form only; asterisk- and absolute-form are not served here. */
    size_t t0 = m + 1, t = t0;
    while (t < line_len && p[t] > ' ' && p[t] != 0x7f)
        t++;
    /* version */
    size_t v0 = t + 1;
    bool ok = m > 0 && m <= HTTP_METHOD_MAX && m < line_len && p[m] == ' ' && t0 < line_len &&
              p[t0] == '/' && t < line_len && p[t] == ' ' && line_len - v0 == 8 &&
              memcmp(p + v0, "HTTP/1.", 7) == 0 && (p[v0 + 7] == '0' || p[v0 + 7] == '1');
    if (!ok) {
        char shown[80];
        log_debug("http bad request line=\"%s\"", log_printable(shown, sizeof(shown), p, line_len));
        http_send_text(conn, 400, "bad request\n");
        return;
    }
    size_t path_len = t - t0;
    const char *q = memchr(p + t0, '?', path_len);
    if (q != NULL)
        path_len = (size_t)(q - (p + t0));
    char path[64];
    log_printable(path, sizeof(path), p + t0, path_len);
    log_debug("http request method=%.*s path=%s", (int)m, p, path);

    if (m != 3 || memcmp(p, "GET", 3) != 0) {
        http_send_text(conn, 405, "method not allowed\n");
        return;
    }
#define HTTP_PATH_IS(lit) (path_len == sizeof(lit) - 1 && memcmp(p + t0, lit, path_len) == 0)
    if (HTTP_PATH_IS("/health/live"))
        http_send_text(conn, 200, "ok\n");
    else if (HTTP_PATH_IS("/health/ready"))
        http_answer_ready(conn);
    else if (HTTP_PATH_IS("/metrics") && s->metrics_tls_only)
        http_send_text(conn, 403, "/metrics is served over TLS on [listen] metrics\n");
    else if (HTTP_PATH_IS("/metrics") && s->handler.metrics != NULL)
        http_answer_metrics(conn);
    else
        http_send_text(conn, 404, "not found\n");
#undef HTTP_PATH_IS
}

/*
 * http_head_end - length of the head up to and including its empty line, or
 * 0 if it has not ended. RFC 9112 2.2 lets a recipient take a bare LF as a
 * line end, so "\n\n" and "\n\r\n" end a head too. from is where new bytes
 * start; the search backs up three bytes to catch a terminator split across
 * reads.
 */
static size_t http_head_end(const char *h, size_t len, size_t from)
{
    size_t i = from > 3 ? from - 3 : 0;
    for (; i < len; i++) {
        if (h[i] != '\n')
            continue;
        if (i + 1 < len && h[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && h[i + 1] == '\r' && h[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/*
 * http_timeout_cb - the head did not arrive in time: 408. A TLS client
 * still in its handshake can be sent nothing, so it is only closed.
 */
static void http_timeout_cb(uv_timer_t *t)
{
    struct http_conn *conn = hamr_container_of(t, struct http_conn, timer);
    const char *name = conn->srv->name;
    if (!tls_stream_handshaken(conn->ts)) {
        conn->srv->stats.timed_out++;
        log_debug("%s handshake timeout peer=%s", name, conn->peer);
        http_conn_close(conn);
        return;
    }
    log_debug("%s read timeout peer=%s buffered=%zu", name, conn->peer, conn->head_len);
    http_send_text(conn, 408, "request timeout\n");
}

/* http_alloc_cb - plaintext lands in the connection's fixed chunk. */
static void http_alloc_cb(void *data, uv_buf_t *b)
{
    struct http_conn *conn = data;
    *b = uv_buf_init(conn->rbuf, sizeof(conn->rbuf));
}

/* http_read_cb - gather the head (bounded); after the answer, discard until EOF. */
static void http_read_cb(void *data, ssize_t nread, const uv_buf_t *b)
{
    struct http_conn *conn = data;
    if (nread == 0 || conn->closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            log_debug("%s read failed peer=%s err=%s reason=\"%s\"", conn->srv->name, conn->peer,
                      uv_err_name((int)nread), tls_stream_error(conn->ts));
            http_conn_close(conn);
        } else if (conn->state == HTTP_CONN_WRITING) {
            /* A client may half-close after its request: let the answer
             * finish, http_write_cb closes then. */
            conn->eof = true;
        } else {
            /* Before the answer: the client gave up. Lingering: done. */
            http_conn_close(conn);
        }
        return;
    }
    if (conn->state != HTTP_CONN_READING)
        return; /* after the head: discarded */
    size_t from = conn->head_len;
    size_t room = sizeof(conn->head) - conn->head_len;
    size_t n = (size_t)nread < room ? (size_t)nread : room;
    memcpy(conn->head + conn->head_len, b->base, n);
    conn->head_len += n;
    size_t end = http_head_end(conn->head, conn->head_len, from);
    if (end != 0) {
        conn->head_len = end;
        tcp_server_conn_busy(&conn->base); /* asked: not evicted for a newcomer */
        http_handle(conn);
        return;
    }
    if (conn->head_len == sizeof(conn->head)) {
        log_warn("%s request head too large peer=%s max=%d", conn->srv->name, conn->peer,
                 HTTP_HEAD_MAX);
        http_send_text(conn, 431, "request header fields too large\n");
    }
}

/*
 * http_handshake_cb - TLS only: the handshake is over. A failure is a
 * refusal (tls), closed; a certificate without an operator's name is
 * answered 403 (identity), and what it sent is discarded. An operator goes
 * on to its request.
 */
static void http_handshake_cb(void *data, int status)
{
    struct http_conn *conn = data;
    struct http *s = conn->srv;
    char who[OPERATOR_GATE_WHO_MAX];
    switch (
        operator_gate_check(s->name, conn->peer, status, conn->ts, &s->stats, who, sizeof(who))) {
        case OPERATOR_GATE_OK:
            return;
        case OPERATOR_GATE_TLS:
            http_conn_close(conn);
            return;
        case OPERATOR_GATE_IDENTITY:
            break;
    }
    /* A node never scrapes: only operators (a scraper has its own) see /metrics. */
    char text[sizeof(who) + 96];
    snprintf(text, sizeof(text),
             "this listener takes operator certificates only (hamr:operator:NAME); this one is "
             "%s\n",
             who);
    http_send_text(conn, 403, text);
}

/* http_conn_alloc_cb - memory for one client (tcp_server initialises the socket). */
static struct tcp_server_conn *http_conn_alloc_cb(void *data, uv_tcp_t **tcp)
{
    struct http_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return NULL;
    conn->srv = data;
    *tcp = &conn->h.u.tcp;
    return &conn->base;
}

/*
 * http_conn_accept_cb - a client is accepted: through a tls_stream (TLS on
 * the server context, or the clear) read its head under the read timeout,
 * which bounds the handshake too.
 */
static void http_conn_accept_cb(void *data, struct tcp_server_conn *base)
{
    struct http *s = data;
    struct http_conn *conn = hamr_container_of(base, struct http_conn, base);
    tcp_server_conn_peer(base, conn->peer, sizeof(conn->peer));
    tcp_server_conn_timer_init(base, &conn->timer);
    SSL_CTX *ctx = s->tls != NULL ? cluster_tls_server_ctx(s->tls) : NULL;
    const struct tls_stream_ops ops = {
        .data = conn,
        .alloc_cb = http_alloc_cb,
        .read_cb = http_read_cb,
        .handshake_cb = ctx != NULL ? http_handshake_cb : NULL,
    };
    int rv = tls_stream_init(&conn->ts, &conn->h, ctx, true, &ops);
    if (rv != 0) {
        log_warn("%s connection peer=%s event=closed reason=\"%s\"", s->name, conn->peer,
                 hamr_strerror(rv));
        http_conn_close(conn);
        return;
    }
    if (tls_stream_read_start(conn->ts) != 0) {
        http_conn_close(conn);
        return;
    }
    uv_timer_start(&conn->timer, http_timeout_cb, s->read_timeout_ms, 0);
}

/* http_conn_shutdown_cb - http_close: hang up on this client. */
static void http_conn_shutdown_cb(void *data, struct tcp_server_conn *base)
{
    (void)data;
    http_conn_close(hamr_container_of(base, struct http_conn, base));
}

/* http_conn_free_cb - every handle of the connection has closed. */
static void http_conn_free_cb(void *data, struct tcp_server_conn *base)
{
    (void)data;
    struct http_conn *conn = hamr_container_of(base, struct http_conn, base);
    tls_stream_free(conn->ts); /* may run http_write_cb for writes that waited */
    free(conn);
}

/* http_new - bind and listen as cfg says. */
int http_new(uv_loop_t *loop,
             const struct http_config *cfg,
             const struct http_handler *h,
             struct http **out,
             char *errmsg,
             size_t errlen)
{
    if (h->ready == NULL) {
        snprintf(errmsg, errlen, "http: no readiness callback");
        return HAMR_EINVAL;
    }
    struct http *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(errmsg, errlen, "http: out of memory");
        return HAMR_ENOMEM;
    }
    s->handler = *h;
    s->tls = cfg->tls;
    s->metrics_tls_only = cfg->metrics_tls_only;
    s->name = cfg->tls != NULL ? "metrics" : "http";
    s->read_timeout_ms = HTTP_READ_TIMEOUT_MS;
    s->write_timeout_ms = HTTP_WRITE_TIMEOUT_MS;
    /* Connections still closing count against the cap too: they hold memory and a descriptor. */
    const struct tcp_server_config tcfg = {.name = s->name,
                                           .host = cfg->host,
                                           .port = cfg->port,
                                           .backlog = 128,
                                           .max_conns = HTTP_MAX_CONNS,
                                           .over = TCP_SERVER_CAP_EVICT};
    const struct tcp_server_ops ops = {.data = s,
                                       .alloc_cb = http_conn_alloc_cb,
                                       .accept_cb = http_conn_accept_cb,
                                       .shutdown_cb = http_conn_shutdown_cb,
                                       .free_cb = http_conn_free_cb,
                                       .done_cb = free};
    int rv = tcp_server_new(loop, &tcfg, &ops, &s->tcp, errmsg, errlen);
    if (rv != 0) {
        free(s);
        return rv;
    }
    log_info("%s listening addr=%s port=%u%s%s", s->name, cfg->host,
             (unsigned)tcp_server_port(s->tcp), s->tls != NULL ? " tls=operators" : "",
             s->metrics_tls_only ? " metrics=tls-listener" : "");
    *out = s;
    return 0;
}

/* http_port - the bound port. */
uint16_t http_port(const struct http *s)
{
    return tcp_server_port(s->tcp);
}

/* http_conns - open or closing connections. */
size_t http_conns(const struct http *s)
{
    return tcp_server_conns(s->tcp);
}

/* http_get_stats - the refusal counters. */
void http_get_stats(const struct http *s, struct operator_gate_stats *out)
{
    *out = s->stats;
}

/* http_set_read_timeout - the head deadline for new connections. */
void http_set_read_timeout(struct http *s, uint64_t ms)
{
    s->read_timeout_ms = ms;
}

/* http_set_write_timeout - the answer deadline for answers started from now on. */
void http_set_write_timeout(struct http *s, uint64_t ms)
{
    s->write_timeout_ms = ms;
}

/* http_close - close the listener and all connections; idempotent. */
void http_close(struct http *s, void (*closed_cb)(void *arg), void *arg)
{
    if (s->closing)
        return;
    s->closing = true;
    tcp_server_close(s->tcp, closed_cb, arg); /* s is freed before the callback */
}
