/*
 * control.c - the control listeners: framed hamr.ControlRequest in,
 * hamr.ControlResponse out, over a Unix socket and over TCP (mutual TLS on
 * the cluster PKI, or in the clear).
 *
 * Happy path: accept -> (TCP with TLS: handshake, the client's certificate
 * must name an operator) -> read until one whole frame is buffered ->
 * unpack -> handler->handle(call) -> (now or later) control_reply(call) ->
 * write -> write done -> the next buffered frame, or wait for more bytes.
 * Every connection reads and writes through a net/tls_stream, in the clear
 * for the Unix socket and for a plaintext TCP port.
 *
 * Failure modes:
 *   - a frame longer than PROTO_CONTROL_MAX, or more buffered input than one
 *     such frame: the connection is closed without an answer;
 *   - a frame that does not decode: answered with HAMR_EPROTO, no handler call;
 *   - TCP: no TLS handshake and first whole request within the first
 *     timeout (5 s) after connecting: closed, logged, counted (timed_out);
 *     so that silent strangers cannot hold the listener's 64 places;
 *   - no whole request within the idle timeout after the last answer (on
 *     the Unix socket, after connecting too): closed;
 *   - the client goes away while a call is with the handler: the call is
 *     detached (call->conn = NULL) and control_reply only frees it;
 *   - the TLS handshake fails (no certificate, another CA, not TLS at all):
 *     logged with the peer and the reason, counted (refused_tls), closed;
 *   - a verified certificate that names no operator (a node's): logged,
 *     counted (refused_identity), answered HAMR_EPERM with a sentence and
 *     closed once that is written; nothing it sent is handled;
 *   - more than CONTROL_MAX_CONNS connections on a listener: over TCP the
 *     oldest that has not asked anything is closed to make room
 *     (net/tcp_server, TCP_SERVER_CAP_EVICT), else the new one; on the Unix
 *     socket new ones are closed at once.
 *
 * Owns: the TCP listener (a net/tcp_server, whose connections' handles are
 * embedded here and freed when tcp_server has closed them all), the Unix
 * listener and its connections (closed and freed here), the socket file
 * from bind to close, and each call until it is answered. The control
 * struct lives until every part (TCP server, Unix listener, each Unix
 * connection) has closed.
 *
 * Security: parses untrusted network input. Lengths are checked before any
 * allocation and input buffering is bounded; protobuf-c checks the rest.
 * Over TCP with TLS nothing is read as a request before the client's
 * certificate has been checked. The Unix socket is trusted: its mode (0660)
 * decides who connects, and the umask is narrowed while it is bound, so the
 * file never exists with wider permissions.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto/proto_frame.h"
#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/tcp_server.h"
#include "net/tls_stream.h"

#include "node/control.h"
#include "node/operator_gate.h"

#define CONTROL_READ_CHUNK 16384
#define CONTROL_BACKLOG 16
#define CONTROL_SOCKET_MODE 0660
#define CONTROL_PEER_MAX 64

struct control_conn;

struct control {
    uv_loop_t *loop;
    struct tcp_server *tcp;  /* NULL: no TCP listener */
    struct cluster_tls *tls; /* NULL: TCP in the clear */
    uv_pipe_t unix_listener;
    bool unix_open;                                              /* unix_listener initialised */
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* as bound */
    dev_t unix_dev;                                              /* the file bound, removed at */
    ino_t unix_ino;                                              /* close if it is still there */
    struct control_conn *unix_conns;                             /* open Unix connections */
    size_t n_unix;
    size_t parts; /* open: the TCP server, the Unix listener, each Unix connection and refusal */
    struct control_handler handler;
    uint64_t idle_ms;
    uint64_t first_ms; /* TCP: TLS handshake and first request within this */
    struct operator_gate_stats stats;
    bool closing;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

/* control_conn - one client connection; freed when both handles have closed. */
struct control_conn {
    struct tcp_server_conn base; /* TCP connections only */
    struct control *ctl;
    struct tls_stream_handle h; /* h.u.tcp or h.u.pipe */
    struct tls_stream *ts;      /* NULL until started */
    uv_timer_t idle;
    bool is_unix;
    struct control_conn *prev, *next; /* Unix connections: c->unix_conns */
    unsigned open_handles;            /* Unix connections: handles not yet closed */
    struct buf in;                    /* received, not yet handled; at most one frame */
    struct control_call *call;        /* with the handler, not yet answered */
    bool writing;                     /* an answer is being written */
    bool refused;                     /* answered with a refusal: close once it is out */
    bool asked;                       /* a whole request has arrived */
    bool closing;
    char peer[CONTROL_PEER_MAX]; /* "ip:port" or "unix", for logs */
    char rbuf[CONTROL_READ_CHUNK];
};

/* control_call - one request handed to the handler. */
struct control_call {
    struct control_conn *conn; /* NULL once the connection has gone */
    Hamr__ControlRequest *req; /* NULL if the frame did not decode */
};

/* control_write - one answer in flight. */
struct control_write {
    struct control_conn *conn;
    uint8_t *data;
};

/* control_refusal - a Unix client over the cap, accepted only to be closed. */
struct control_refusal {
    uv_pipe_t pipe;
    struct control *ctl;
};

static void control_conn_close(struct control_conn *conn);
static void control_conn_process(struct control_conn *conn);

/* control_part_done - one part has closed; the last one after control_close frees c. */
static void control_part_done(struct control *c)
{
    HAMR_ASSERT(c->parts > 0);
    if (--c->parts > 0 || !c->closing)
        return;
    void (*cb)(void *arg) = c->closed_cb;
    void *arg = c->closed_arg;
    free(c);
    if (cb != NULL)
        cb(arg);
}

/* control_call_free - release a call and its request. */
static void control_call_free(struct control_call *call)
{
    if (call->req != NULL)
        hamr__control_request__free_unpacked(call->req, NULL);
    free(call);
}

/* control_conn_release - the last handle of conn has closed: its memory goes. */
static void control_conn_release(struct control_conn *conn)
{
    tls_stream_free(conn->ts); /* may run control_write_cb for writes that waited */
    buf_free(&conn->in);
    free(conn);
}

/* control_unix_conn_closed_cb - one handle of a Unix connection has closed. */
static void control_unix_conn_closed_cb(uv_handle_t *h)
{
    struct control_conn *conn = h->data;
    if (--conn->open_handles > 0)
        return;
    struct control *c = conn->ctl;
    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        c->unix_conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    c->n_unix--;
    control_conn_release(conn);
    control_part_done(c);
}

/* control_conn_close - idempotent; detaches an unanswered call. */
static void control_conn_close(struct control_conn *conn)
{
    if (conn->closing)
        return;
    conn->closing = true;
    if (conn->call != NULL) {
        conn->call->conn = NULL;
        conn->call = NULL;
    }
    if (!conn->is_unix) {
        tcp_server_conn_close(&conn->base);
        return;
    }
    uv_close((uv_handle_t *)&conn->h.u.pipe, control_unix_conn_closed_cb);
    uv_close((uv_handle_t *)&conn->idle, control_unix_conn_closed_cb);
}

/* control_first_ms - the first timeout: the shorter of first_ms and idle_ms. */
static uint64_t control_first_ms(const struct control *c)
{
    return c->first_ms < c->idle_ms ? c->first_ms : c->idle_ms;
}

/* control_idle_cb - no whole request in time: hang up (counted if it never asked anything). */
static void control_idle_cb(uv_timer_t *t)
{
    struct control_conn *conn = hamr_container_of(t, struct control_conn, idle);
    if (!conn->is_unix && !conn->asked) {
        conn->ctl->stats.timed_out++;
        log_warn(
            "control connection peer=%s event=closed reason=\"no TLS handshake and "
            "request within %" PRIu64 "ms\" timed_out=%" PRIu64,
            conn->peer, control_first_ms(conn->ctl), conn->ctl->stats.timed_out);
    } else {
        log_debug("control idle close peer=%s", conn->peer);
    }
    control_conn_close(conn);
}

/* control_idle_start - (re)arm the idle timer; before the first request, the first timeout. */
static void control_idle_start(struct control_conn *conn)
{
    uint64_t ms = !conn->is_unix && !conn->asked ? control_first_ms(conn->ctl) : conn->ctl->idle_ms;
    uv_timer_start(&conn->idle, control_idle_cb, ms, 0);
}

/* control_write_cb - an answer is out: go on with the next request (or close a refusal). */
static void control_write_cb(void *arg, int status)
{
    struct control_write *w = arg;
    struct control_conn *conn = w->conn;
    free(w->data);
    free(w);
    conn->writing = false;
    if (conn->closing)
        return;
    if (status < 0 || conn->refused) {
        if (status < 0)
            log_debug("control write failed peer=%s err=%s", conn->peer, uv_err_name(status));
        control_conn_close(conn);
        return;
    }
    control_idle_start(conn);
    control_conn_process(conn);
}

/* control_send - frame and write resp on conn. */
static int control_send(struct control_conn *conn, const Hamr__ControlResponse *resp)
{
    Hamr__ControlResponse big = HAMR__CONTROL_RESPONSE__INIT;
    size_t n = hamr__control_response__get_packed_size(resp);
    if (n > PROTO_CONTROL_MAX) {
        big.code = HAMR_ETOOBIG;
        big.error = "response too large";
        resp = &big;
        n = hamr__control_response__get_packed_size(resp);
    }
    struct control_write *w = calloc(1, sizeof(*w));
    uint8_t *data = malloc(n + 4);
    if (w == NULL || data == NULL) {
        free(w);
        free(data);
        return HAMR_ENOMEM;
    }
    proto_u32_put(data, (uint32_t)n);
    hamr__control_response__pack(resp, data + 4);
    w->conn = conn;
    w->data = data;
    int rv = tls_stream_write(conn->ts, data, n + 4, control_write_cb, w);
    if (rv != 0) {
        free(data);
        free(w);
        return HAMR_EIO;
    }
    conn->writing = true;
    /* Asynchronous processing continues in control_write_cb. */
    return 0;
}

/* control_reply - answer call and free it. */
int control_reply(struct control_call *call, const Hamr__ControlResponse *resp)
{
    struct control_conn *conn = call->conn;
    if (conn != NULL) {
        HAMR_ASSERT(conn->call == call && !conn->writing);
        conn->call = NULL;
    }
    control_call_free(call);
    if (conn == NULL)
        return 0; /* the client went away; nobody to answer */
    int rv = control_send(conn, resp);
    if (rv != 0)
        control_conn_close(conn);
    return rv;
}

/* control_reply_error - answer call with an error code and text. */
int control_reply_error(struct control_call *call, int code, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.code = code;
    resp.error = text;
    return control_reply(call, &resp);
}

/* control_frame_too_big - does the buffered frame header announce too much? */
static bool control_frame_too_big(const struct control_conn *conn)
{
    return conn->in.len >= 4 && proto_u32_get(conn->in.data) > PROTO_CONTROL_MAX;
}

/* control_conn_process - hand the next whole buffered frame to the handler. */
static void control_conn_process(struct control_conn *conn)
{
    if (conn->closing || conn->refused || conn->call != NULL || conn->writing || conn->in.len < 4)
        return;
    /* control_read_cb has refused a header announcing more than PROTO_CONTROL_MAX. */
    size_t n = proto_u32_get(conn->in.data);
    if (conn->in.len - 4 < n)
        return; /* need more */
    struct control_call *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        control_conn_close(conn);
        return;
    }
    call->req = hamr__control_request__unpack(NULL, n, conn->in.data + 4);
    memmove(conn->in.data, conn->in.data + 4 + n, conn->in.len - 4 - n);
    conn->in.len -= 4 + n;
    call->conn = conn;
    conn->call = call;
    conn->asked = true;
    if (!conn->is_unix)
        tcp_server_conn_busy(&conn->base);
    uv_timer_stop(&conn->idle);
    if (call->req == NULL) {
        control_reply_error(call, HAMR_EPROTO, "malformed control request");
        return;
    }
    struct control *c = conn->ctl;
    c->handler.handle(c->handler.data, call, call->req);
    /* The answer may come from inside handle() or later; either way the
     * next request waits for control_write_cb. */
}

/* control_alloc_cb - plaintext lands in the connection's fixed chunk. */
static void control_alloc_cb(void *data, uv_buf_t *b)
{
    struct control_conn *conn = data;
    *b = uv_buf_init(conn->rbuf, sizeof(conn->rbuf));
}

/* control_read_cb - buffer input (bounded) and process it. */
static void control_read_cb(void *data, ssize_t nread, const uv_buf_t *b)
{
    struct control_conn *conn = data;
    if (nread == 0 || conn->closing)
        return;
    if (nread < 0) {
        if (nread == UV_EPROTO)
            log_warn("control connection peer=%s event=closed reason=\"TLS: %s\"", conn->peer,
                     tls_stream_error(conn->ts));
        else if (nread != UV_EOF)
            log_debug("control read failed peer=%s err=%s", conn->peer, uv_err_name((int)nread));
        control_conn_close(conn);
        return;
    }
    if (conn->refused)
        return; /* nothing from a refused client is handled */
    if (buf_append(&conn->in, b->base, (size_t)nread) != 0) {
        log_warn("control input over limit peer=%s buffered=%zu", conn->peer, conn->in.len);
        control_conn_close(conn);
        return;
    }
    if (control_frame_too_big(conn)) {
        log_warn("control frame too large peer=%s len=%u", conn->peer,
                 (unsigned)proto_u32_get(conn->in.data));
        control_conn_close(conn);
        return;
    }
    control_conn_process(conn);
}

/* control_clear_write - a refusal written in the clear to a client that spoke no TLS. */
struct control_clear_write {
    uv_write_t req;
    struct control_conn *conn;
    uint8_t data[];
};

/* control_clear_write_cb - the plaintext refusal is out (or cancelled): hang up. */
static void control_clear_write_cb(uv_write_t *req, int status)
{
    struct control_clear_write *w = hamr_container_of(req, struct control_clear_write, req);
    struct control_conn *conn = w->conn;
    (void)status;
    free(w);
    control_conn_close(conn);
}

/*
 * control_refuse_in_clear - a plaintext hamrctl on the TLS port: answer its
 * request in its own framing (HAMR_EPERM and what to do), so that it can
 * say why instead of "closed"; close once written. The TLS engine is done.
 */
static void control_refuse_in_clear(struct control_conn *conn)
{
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.code = HAMR_EPERM;
    resp.error =
        "this control port takes TLS with an operator certificate of the cluster CA (hamrctl "
        "--cert, --key and --ca, or HAMRCTL_CERT, HAMRCTL_KEY and HAMRCTL_CA; or the control "
        "socket on the node itself)";
    size_t n = hamr__control_response__get_packed_size(&resp);
    struct control_clear_write *w = malloc(sizeof(*w) + n + 4);
    if (w == NULL) {
        control_conn_close(conn);
        return;
    }
    proto_u32_put(w->data, (uint32_t)n);
    hamr__control_response__pack(&resp, w->data + 4);
    w->conn = conn;
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)(n + 4));
    if (uv_write(&w->req, &conn->h.u.stream, &b, 1, control_clear_write_cb) != 0) {
        free(w);
        control_conn_close(conn);
    }
    /* control_clear_write_cb closes the connection. */
}

/*
 * control_handshake_cb - TLS only: the handshake is over. A failure is a
 * refusal (tls); a certificate without an operator's name is answered
 * HAMR_EPERM and closed (identity). An operator goes on to its requests.
 */
static void control_handshake_cb(void *data, int status)
{
    struct control_conn *conn = data;
    char who[OPERATOR_GATE_WHO_MAX];
    enum operator_gate_verdict v = operator_gate_check("control", conn->peer, status, conn->ts,
                                                       &conn->ctl->stats, who, sizeof(who));
    if (v == OPERATOR_GATE_OK)
        return;
    /* A control frame's length (00 00 ..) where a TLS record's version is:
     * OpenSSL's "wrong version number". Told so in the clear. */
    if (v == OPERATOR_GATE_TLS && status == UV_EPROTO &&
        strstr(tls_stream_error(conn->ts), "wrong version number") != NULL) {
        control_refuse_in_clear(conn);
        return;
    }
    if (v == OPERATOR_GATE_TLS) {
        control_conn_close(conn);
        return;
    }
    conn->refused = true;
    char text[sizeof(who) + 128];
    snprintf(text, sizeof(text),
             "control over TCP takes operator certificates only (hamr:operator:NAME); this one "
             "is %s",
             who);
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.code = HAMR_EPERM;
    resp.error = text;
    if (control_send(conn, &resp) != 0)
        control_conn_close(conn);
    /* control_write_cb closes it once the answer is out. */
}

/* control_conn_start - read (and, with ctx, shake hands) through a tls_stream over conn->h. */
static void control_conn_start(struct control_conn *conn, SSL_CTX *ctx)
{
    const struct tls_stream_ops ops = {
        .data = conn,
        .alloc_cb = control_alloc_cb,
        .read_cb = control_read_cb,
        .handshake_cb = ctx != NULL ? control_handshake_cb : NULL,
    };
    int rv = tls_stream_init(&conn->ts, &conn->h, ctx, true, &ops);
    if (rv != 0) {
        log_warn("control connection peer=%s event=closed reason=\"%s\"", conn->peer,
                 hamr_strerror(rv));
        control_conn_close(conn);
        return;
    }
    rv = tls_stream_read_start(conn->ts);
    if (rv != 0) {
        control_conn_close(conn);
        return;
    }
    control_idle_start(conn);
}

/* ------------------------------------------------------------------------ */
/* TCP: connections through net/tcp_server.                                 */
/* ------------------------------------------------------------------------ */

/* control_conn_alloc_cb - memory for one client (tcp_server initialises the socket). */
static struct tcp_server_conn *control_conn_alloc_cb(void *data, uv_tcp_t **tcp)
{
    struct control_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return NULL;
    conn->ctl = data;
    buf_init(&conn->in, 4 + (size_t)PROTO_CONTROL_MAX);
    *tcp = &conn->h.u.tcp;
    return &conn->base;
}

/* control_conn_accept_cb - a TCP client is accepted: TLS (if any) and requests. */
static void control_conn_accept_cb(void *data, struct tcp_server_conn *base)
{
    struct control_conn *conn = hamr_container_of(base, struct control_conn, base);
    struct control *c = data;
    tcp_server_conn_peer(base, conn->peer, sizeof(conn->peer));
    tcp_server_conn_timer_init(base, &conn->idle);
    control_conn_start(conn, c->tls != NULL ? cluster_tls_server_ctx(c->tls) : NULL);
}

/* control_conn_shutdown_cb - control_close: hang up on this client. */
static void control_conn_shutdown_cb(void *data, struct tcp_server_conn *base)
{
    (void)data;
    control_conn_close(hamr_container_of(base, struct control_conn, base));
}

/* control_conn_free_cb - every handle of the TCP connection has closed. */
static void control_conn_free_cb(void *data, struct tcp_server_conn *base)
{
    (void)data;
    control_conn_release(hamr_container_of(base, struct control_conn, base));
}

/* control_tcp_closed_cb - tcp_server_close is done (the server is freed). */
static void control_tcp_closed_cb(void *arg)
{
    struct control *c = arg;
    c->tcp = NULL;
    control_part_done(c);
}

/* ------------------------------------------------------------------------ */
/* The Unix socket.                                                         */
/* ------------------------------------------------------------------------ */

/* control_refusal_closed_cb - a refused Unix client is closed. */
static void control_refusal_closed_cb(uv_handle_t *h)
{
    struct control_refusal *r = hamr_container_of((uv_pipe_t *)h, struct control_refusal, pipe);
    struct control *c = r->ctl;
    free(r);
    control_part_done(c);
}

/* control_unix_refuse - over the cap (or no memory): accept and close, so libuv accepts on. */
static void control_unix_refuse(struct control *c)
{
    struct control_refusal *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        /* libuv holds the connection and stops accepting until a uv_accept. */
        log_error("control socket: out of memory refusing a client");
        return;
    }
    r->ctl = c;
    uv_pipe_init(c->loop, &r->pipe, 0);
    (void)uv_accept((uv_stream_t *)&c->unix_listener, (uv_stream_t *)&r->pipe);
    c->parts++;
    uv_close((uv_handle_t *)&r->pipe, control_refusal_closed_cb);
}

/* control_unix_connection_cb - a client on the socket: trusted, plaintext. */
static void control_unix_connection_cb(uv_stream_t *server, int status)
{
    struct control *c = server->data;
    if (status < 0) {
        log_warn("control socket: accept failed: %s", uv_strerror(status));
        return;
    }
    if (c->closing)
        return;
    struct control_conn *conn = c->n_unix < CONTROL_MAX_CONNS ? calloc(1, sizeof(*conn)) : NULL;
    if (conn == NULL) {
        log_warn("control socket: connection refused conns=%zu max=%d", c->n_unix,
                 CONTROL_MAX_CONNS);
        control_unix_refuse(c);
        return;
    }
    conn->ctl = c;
    buf_init(&conn->in, 4 + (size_t)PROTO_CONTROL_MAX);
    conn->is_unix = true;
    hamr_strlcpy(conn->peer, "unix", sizeof(conn->peer));
    uv_pipe_init(c->loop, &conn->h.u.pipe, 0);
    uv_timer_init(c->loop, &conn->idle);
    conn->h.u.pipe.data = conn;
    conn->idle.data = conn;
    conn->open_handles = 2;
    conn->next = c->unix_conns;
    if (c->unix_conns != NULL)
        c->unix_conns->prev = conn;
    c->unix_conns = conn;
    c->n_unix++;
    c->parts++;
    int rv = uv_accept(server, &conn->h.u.stream);
    if (rv != 0) {
        log_warn("control socket: accept failed: %s", uv_strerror(rv));
        control_conn_close(conn);
        return;
    }
    control_conn_start(conn, NULL);
}

/* control_unix_listener_closed_cb - the Unix listener has closed. */
static void control_unix_listener_closed_cb(uv_handle_t *h)
{
    control_part_done(h->data);
}

/* control_unix_bind_once - bind fd to sa with the file made owner-only, then 0660. */
static int control_unix_bind_once(int fd, const struct sockaddr_un *sa)
{
    /* The file appears with mode 0600 and widens to 0660, never beyond. */
    mode_t old = umask(0177);
    int rv = bind(fd, (const struct sockaddr *)sa, sizeof(*sa));
    int saved = errno;
    umask(old);
    errno = saved;
    return rv;
}

/*
 * control_unix_stale - is the socket file at sa one nobody listens on? true:
 * a connect is refused (left by a process that died). false: someone
 * accepts (errno 0), or it is not a socket or cannot be probed (errno says).
 */
static bool control_unix_stale(const struct sockaddr_un *sa)
{
    struct stat st;
    if (lstat(sa->sun_path, &st) != 0)
        return false;
    if (!S_ISSOCK(st.st_mode)) {
        errno = ENOTSOCK;
        return false;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return false;
    int rv = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    int saved = errno;
    close(fd);
    if (rv == 0 || saved == EAGAIN || saved == EINPROGRESS) {
        errno = 0; /* a live listener (EAGAIN: its backlog is full) */
        return false;
    }
    errno = saved;
    return saved == ECONNREFUSED;
}

/*
 * control_unix_bind - a listening Unix socket at path, mode 0660: *fdp. A
 * stale file is replaced; a live socket or another kind of file is an error.
 */
static int control_unix_bind(struct control *c,
                             const char *path,
                             int *fdp,
                             char *errmsg,
                             size_t errlen)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof(sa.sun_path)) {
        snprintf(errmsg, errlen, "control: socket path too long (%zu bytes, at most %zu): %s", n,
                 sizeof(sa.sun_path) - 1, path);
        return HAMR_EINVAL;
    }
    memcpy(sa.sun_path, path, n + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(errmsg, errlen, "control: socket: %s", strerror(errno));
        return HAMR_EIO;
    }
    int rv = control_unix_bind_once(fd, &sa);
    if (rv != 0 && errno == EADDRINUSE) {
        if (control_unix_stale(&sa)) {
            log_warn("control socket %s: left by a process that is gone; replacing it", path);
            if (unlink(path) == 0 || errno == ENOENT)
                rv = control_unix_bind_once(fd, &sa);
        } else if (errno == 0) {
            snprintf(errmsg, errlen,
                     "control: another process listens on %s (is another hamrd running on this "
                     "data directory?)",
                     path);
            close(fd);
            return HAMR_EEXIST;
        } else if (errno == ENOTSOCK) {
            snprintf(errmsg, errlen, "control: %s exists and is not a socket; remove it", path);
            close(fd);
            return HAMR_EEXIST;
        } else {
            errno = EADDRINUSE;
        }
    }
    struct stat st;
    if (rv != 0 || chmod(path, CONTROL_SOCKET_MODE) != 0 || stat(path, &st) != 0) {
        snprintf(errmsg, errlen, "control: cannot listen on %s: %s", path, strerror(errno));
        if (rv == 0)
            unlink(path);
        close(fd);
        return HAMR_EIO;
    }
    c->unix_dev = st.st_dev;
    c->unix_ino = st.st_ino;
    hamr_strlcpy(c->unix_path, path, sizeof(c->unix_path));
    *fdp = fd;
    return 0;
}

/* control_unix_unlink - remove the socket file if it is still the one bound. */
static void control_unix_unlink(struct control *c)
{
    struct stat st;
    if (c->unix_path[0] != '\0' && lstat(c->unix_path, &st) == 0 && st.st_dev == c->unix_dev &&
        st.st_ino == c->unix_ino)
        unlink(c->unix_path);
    c->unix_path[0] = '\0';
}

/* ------------------------------------------------------------------------ */
/* The control.                                                             */
/* ------------------------------------------------------------------------ */

/* control_new - bind the socket file, listen on TCP, then accept on the socket. */
int control_new(uv_loop_t *loop,
                const struct control_config *cfg,
                const struct control_handler *h,
                struct control **out,
                char *errmsg,
                size_t errlen)
{
    bool want_tcp = cfg->host != NULL && cfg->host[0] != '\0';
    bool want_unix = cfg->socket_path != NULL && cfg->socket_path[0] != '\0';
    if (!want_tcp && !want_unix) {
        snprintf(errmsg, errlen, "control: neither a socket nor a TCP address to listen on");
        return HAMR_EINVAL;
    }
    struct control *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(errmsg, errlen, "control: out of memory");
        return HAMR_ENOMEM;
    }
    c->loop = loop;
    c->handler = *h;
    c->idle_ms = CONTROL_IDLE_TIMEOUT_MS;
    c->first_ms = CONTROL_FIRST_TIMEOUT_MS;
    c->tls = cfg->tls;
    int fd = -1;
    int rv = want_unix ? control_unix_bind(c, cfg->socket_path, &fd, errmsg, errlen) : 0;
    if (rv != 0) {
        free(c);
        return rv;
    }
    if (want_tcp) {
        const struct tcp_server_config tcfg = {.name = "control",
                                               .host = cfg->host,
                                               .port = cfg->port,
                                               .backlog = CONTROL_BACKLOG,
                                               .max_conns = CONTROL_MAX_CONNS,
                                               .over = TCP_SERVER_CAP_EVICT};
        const struct tcp_server_ops ops = {.data = c,
                                           .alloc_cb = control_conn_alloc_cb,
                                           .accept_cb = control_conn_accept_cb,
                                           .shutdown_cb = control_conn_shutdown_cb,
                                           .free_cb = control_conn_free_cb};
        rv = tcp_server_new(loop, &tcfg, &ops, &c->tcp, errmsg, errlen);
        if (rv != 0) {
            if (fd >= 0) {
                close(fd);
                control_unix_unlink(c);
            }
            free(c);
            return rv;
        }
        c->parts++;
    }
    if (want_unix) {
        uv_pipe_init(loop, &c->unix_listener, 0);
        c->unix_listener.data = c;
        c->unix_open = true;
        c->parts++;
        rv = uv_pipe_open(&c->unix_listener, fd);
        if (rv != 0)
            close(fd); /* not libuv's: the handle closes without it */
        else
            rv = uv_listen((uv_stream_t *)&c->unix_listener, CONTROL_BACKLOG,
                           control_unix_connection_cb);
        if (rv != 0) {
            snprintf(errmsg, errlen, "control: cannot listen on %s: %s", cfg->socket_path,
                     uv_strerror(rv));
            control_close(c, NULL, NULL); /* closes what is open; c goes with the last */
            return HAMR_EIO;
        }
    }
    *out = c;
    return 0;
}

/* control_set_idle_timeout - applies to timers armed from now on. */
void control_set_idle_timeout(struct control *c, uint64_t ms)
{
    c->idle_ms = ms;
}

/* control_set_first_timeout - applies to connections accepted from now on. */
void control_set_first_timeout(struct control *c, uint64_t ms)
{
    c->first_ms = ms;
}

/* control_port - the bound TCP port, 0 without one. */
uint16_t control_port(const struct control *c)
{
    return c->tcp != NULL ? tcp_server_port(c->tcp) : 0;
}

/* control_conns - open connections on both listeners. */
size_t control_conns(const struct control *c)
{
    return (c->tcp != NULL ? tcp_server_conns(c->tcp) : 0) + c->n_unix;
}

/* control_get_stats - the refusal counters. */
void control_get_stats(const struct control *c, struct operator_gate_stats *out)
{
    *out = c->stats;
}

/* control_close - close the listeners and all connections; idempotent. */
void control_close(struct control *c, void (*closed_cb)(void *arg), void *arg)
{
    if (c->closing)
        return;
    c->closing = true;
    c->closed_cb = closed_cb;
    c->closed_arg = arg;
    c->parts++; /* held while closing starts, so that nothing frees c meanwhile */
    if (c->tcp != NULL)
        tcp_server_close(c->tcp, control_tcp_closed_cb, c);
    if (c->unix_open) {
        control_unix_unlink(c);
        uv_close((uv_handle_t *)&c->unix_listener, control_unix_listener_closed_cb);
    }
    for (struct control_conn *conn = c->unix_conns; conn != NULL; conn = conn->next)
        control_conn_close(conn);
    control_part_done(c); /* the hold; never the last here: a listener's close is pending */
}
