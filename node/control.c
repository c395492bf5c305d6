/*
 * control.c - the control listener: framed hamr.ControlRequest in,
 * hamr.ControlResponse out, over libuv TCP.
 *
 * Happy path: accept -> read until one whole frame is buffered -> unpack ->
 * handler->handle(call) -> (now or later) control_reply(call) -> write ->
 * write done -> the next buffered frame, or wait for more bytes.
 *
 * Failure modes:
 *   - a frame longer than PROTO_CONTROL_MAX, or more buffered input than one
 *     such frame: the connection is closed without an answer;
 *   - a frame that does not decode: answered with HAMR_EPROTO, no handler call;
 *   - no whole request within the idle timeout after connecting or after the
 *     last answer: closed;
 *   - the client goes away while a call is with the handler: the call is
 *     detached (call->conn = NULL) and control_reply only frees it;
 *   - more than CONTROL_MAX_CONNS connections: new ones are closed at once.
 *
 * Owns: the listener, every connection (handles embedded, freed in the last
 * close callback) and each call until it is answered.
 *
 * Security: parses untrusted network input. Lengths are checked before any
 * allocation and input buffering is bounded; protobuf-c checks the rest.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto_frame.h"
#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"

#include "node/listen.h"
#include "node/control.h"

#define CONTROL_READ_CHUNK 16384

struct control {
    uv_loop_t *loop;
    uv_tcp_t listener; /* freed with the struct, after its close callback */
    struct control_handler handler;
    uint64_t idle_ms;
    uint16_t port;
    struct control_conn *conns; /* doubly linked */
    size_t n_conns;
    bool closing;
    bool listener_closed;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

/* control_conn - one client connection; freed when both handles have closed. */
struct control_conn {
    struct control *ctl;
    struct control_conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t idle;
    int open_handles;
    struct buf in;             /* received, not yet handled; at most one frame */
    struct control_call *call; /* with the handler, not yet answered */
    bool writing;              /* an answer is being written */
    bool closing;
    char rbuf[CONTROL_READ_CHUNK];
};

/* control_call - one request handed to the handler. */
struct control_call {
    struct control_conn *conn; /* NULL once the connection has gone */
    Hamr__ControlRequest *req; /* NULL if the frame did not decode */
};

/* control_write - one answer in flight. */
struct control_write {
    uv_write_t req;
    struct control_conn *conn;
    uint8_t *data;
};

static void control_conn_close(struct control_conn *conn);
static void control_conn_process(struct control_conn *conn);

/* control_maybe_done - after control_close, free c once every handle is gone. */
static void control_maybe_done(struct control *c)
{
    if (!c->closing || !c->listener_closed || c->conns != NULL)
        return;
    void (*cb)(void *) = c->closed_cb;
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

/* control_conn_closed_cb - one handle closed; the last one frees the connection. */
static void control_conn_closed_cb(uv_handle_t *h)
{
    struct control_conn *conn = h->data;
    if (--conn->open_handles > 0)
        return;
    struct control *c = conn->ctl;
    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        c->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    c->n_conns--;
    buf_free(&conn->in);
    free(conn);
    control_maybe_done(c);
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
    uv_close((uv_handle_t *)&conn->tcp, control_conn_closed_cb);
    uv_close((uv_handle_t *)&conn->idle, control_conn_closed_cb);
}

/* control_idle_cb - no whole request in time: hang up. */
static void control_idle_cb(uv_timer_t *t)
{
    struct control_conn *conn = t->data;
    log_debug("control idle close");
    control_conn_close(conn);
}

/* control_idle_start - (re)arm the idle timer. */
static void control_idle_start(struct control_conn *conn)
{
    uv_timer_start(&conn->idle, control_idle_cb, conn->ctl->idle_ms, 0);
}

/* control_write_cb - an answer is out: go on with the next request. */
static void control_write_cb(uv_write_t *req, int status)
{
    struct control_write *w = hamr_container_of(req, struct control_write, req);
    struct control_conn *conn = w->conn;
    free(w->data);
    free(w);
    conn->writing = false;
    if (conn->closing)
        return;
    if (status < 0) {
        log_debug("control write failed err=%s", uv_err_name(status));
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
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)(n + 4));
    int rv = uv_write(&w->req, (uv_stream_t *)&conn->tcp, &b, 1, control_write_cb);
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
    if (conn->closing || conn->call != NULL || conn->writing || conn->in.len < 4)
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

/* control_alloc_cb - reads land in the connection's fixed chunk. */
static void control_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct control_conn *conn = h->data;
    b->base = conn->rbuf;
    b->len = sizeof(conn->rbuf);
}

/* control_read_cb - buffer input (bounded) and process it. */
static void control_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct control_conn *conn = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("control read failed err=%s", uv_err_name((int)nread));
        control_conn_close(conn);
        return;
    }
    if (buf_append(&conn->in, b->base, (size_t)nread) != 0) {
        log_warn("control input over limit buffered=%zu", conn->in.len);
        control_conn_close(conn);
        return;
    }
    if (control_frame_too_big(conn)) {
        log_warn("control frame too large len=%u", (unsigned)proto_u32_get(conn->in.data));
        control_conn_close(conn);
        return;
    }
    control_conn_process(conn);
}

/* control_connection_cb - accept one client. */
static void control_connection_cb(uv_stream_t *server, int status)
{
    struct control *c = server->data;
    if (status < 0) {
        log_warn("control accept failed err=%s", uv_err_name(status));
        return;
    }
    struct control_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return; /* XXX libuv stops accepting until uv_accept: out of memory stalls the listener */
    conn->ctl = c;
    buf_init(&conn->in, 4 + (size_t)PROTO_CONTROL_MAX);
    uv_tcp_init(c->loop, &conn->tcp);
    conn->tcp.data = conn;
    uv_timer_init(c->loop, &conn->idle);
    conn->idle.data = conn;
    conn->open_handles = 2;
    conn->next = c->conns;
    if (c->conns != NULL)
        c->conns->prev = conn;
    c->conns = conn;
    c->n_conns++;
    if (uv_accept(server, (uv_stream_t *)&conn->tcp) != 0) {
        control_conn_close(conn);
        return;
    }
    if (c->n_conns > CONTROL_MAX_CONNS) {
        log_warn("control too many connections max=%d", CONTROL_MAX_CONNS);
        control_conn_close(conn);
        return;
    }
    int rv = uv_read_start((uv_stream_t *)&conn->tcp, control_alloc_cb, control_read_cb);
    if (rv != 0) {
        control_conn_close(conn);
        return;
    }
    control_idle_start(conn);
}

/* control_listener_closed_cb - the listener is gone. */
static void control_listener_closed_cb(uv_handle_t *h)
{
    struct control *c = h->data;
    c->listener_closed = true;
    control_maybe_done(c);
}

/* control_new - bind and listen on host:port. */
int control_new(uv_loop_t *loop,
                const char *host,
                uint16_t port,
                const struct control_handler *h,
                struct control **out,
                char *errmsg,
                size_t errlen)
{
    struct control *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(errmsg, errlen, "control: out of memory");
        return HAMR_ENOMEM;
    }
    c->loop = loop;
    c->handler = *h;
    c->idle_ms = CONTROL_IDLE_TIMEOUT_MS;
    int rv = listen_open(loop, &c->listener, c, host, port, 16, control_connection_cb,
                         control_listener_closed_cb, &c->port, "control", errmsg, errlen);
    if (rv == HAMR_EINVAL)
        free(c);
    else if (rv != 0)
        c->closing = true; /* freed by control_listener_closed_cb; nobody is told */
    if (rv != 0)
        return rv;
    *out = c;
    return 0;
}

/* control_set_idle_timeout - applies to timers armed from now on. */
void control_set_idle_timeout(struct control *c, uint64_t ms)
{
    c->idle_ms = ms;
}

/* control_port - the bound port. */
uint16_t control_port(const struct control *c)
{
    return c->port;
}

/* control_conns - open connections. */
size_t control_conns(const struct control *c)
{
    return c->n_conns;
}

/* control_close - close the listener and all connections; idempotent. */
void control_close(struct control *c, void (*closed_cb)(void *arg), void *arg)
{
    if (c->closing)
        return;
    c->closing = true;
    c->closed_cb = closed_cb;
    c->closed_arg = arg;
    uv_close((uv_handle_t *)&c->listener, control_listener_closed_cb);
    for (struct control_conn *conn = c->conns; conn != NULL; conn = conn->next)
        control_conn_close(conn);
}
