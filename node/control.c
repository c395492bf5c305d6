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
 *   - more than CONTROL_MAX_CONNS connections: new ones are closed at once
 *     (net/tcp_server, which also refuses a client it gets no memory for).
 *
 * Owns: the listener (a net/tcp_server), every connection (handles
 * embedded, freed when tcp_server has closed them all) and each call until
 * it is answered.
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
#include "net/tcp_server.h"

#include "node/control.h"

#define CONTROL_READ_CHUNK 16384

struct control {
    struct tcp_server *tcp; /* the listener and the connections' handles */
    struct control_handler handler;
    uint64_t idle_ms;
    bool closing;
};

/* control_conn - one client connection; freed when both handles have closed. */
struct control_conn {
    struct tcp_server_conn base;
    struct control *ctl;
    uv_tcp_t tcp;
    uv_timer_t idle;
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

/* control_call_free - release a call and its request. */
static void control_call_free(struct control_call *call)
{
    if (call->req != NULL)
        hamr__control_request__free_unpacked(call->req, NULL);
    free(call);
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
    tcp_server_conn_close(&conn->base);
}

/* control_idle_cb - no whole request in time: hang up. */
static void control_idle_cb(uv_timer_t *t)
{
    struct control_conn *conn = hamr_container_of(t, struct control_conn, idle);
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
    struct control_conn *conn = hamr_container_of(h, struct control_conn, tcp);
    b->base = conn->rbuf;
    b->len = sizeof(conn->rbuf);
}

/* control_read_cb - buffer input (bounded) and process it. */
static void control_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct control_conn *conn = hamr_container_of(s, struct control_conn, tcp);
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

/* control_conn_alloc_cb - memory for one client (tcp_server initialises the socket). */
static struct tcp_server_conn *control_conn_alloc_cb(void *data, uv_tcp_t **tcp)
{
    struct control_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return NULL;
    conn->ctl = data;
    buf_init(&conn->in, 4 + (size_t)PROTO_CONTROL_MAX);
    *tcp = &conn->tcp;
    return &conn->base;
}

/* control_conn_accept_cb - a client is accepted: read its requests, arm the idle timer. */
static void control_conn_accept_cb(void *data, struct tcp_server_conn *base)
{
    struct control_conn *conn = hamr_container_of(base, struct control_conn, base);
    (void)data;
    tcp_server_conn_timer_init(base, &conn->idle);
    int rv = uv_read_start((uv_stream_t *)&conn->tcp, control_alloc_cb, control_read_cb);
    if (rv != 0) {
        control_conn_close(conn);
        return;
    }
    control_idle_start(conn);
}

/* control_conn_shutdown_cb - control_close: hang up on this client. */
static void control_conn_shutdown_cb(void *data, struct tcp_server_conn *base)
{
    (void)data;
    control_conn_close(hamr_container_of(base, struct control_conn, base));
}

/* control_conn_free_cb - every handle of the connection has closed. */
static void control_conn_free_cb(void *data, struct tcp_server_conn *base)
{
    struct control_conn *conn = hamr_container_of(base, struct control_conn, base);
    (void)data;
    buf_free(&conn->in);
    free(conn);
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
    c->handler = *h;
    c->idle_ms = CONTROL_IDLE_TIMEOUT_MS;
    const struct tcp_server_config cfg = {.name = "control",
                                          .host = host,
                                          .port = port,
                                          .backlog = 16,
                                          .max_conns = CONTROL_MAX_CONNS,
                                          .over = TCP_SERVER_CAP_CLOSE};
    const struct tcp_server_ops ops = {.data = c,
                                       .alloc_cb = control_conn_alloc_cb,
                                       .accept_cb = control_conn_accept_cb,
                                       .shutdown_cb = control_conn_shutdown_cb,
                                       .free_cb = control_conn_free_cb,
                                       .done_cb = free};
    int rv = tcp_server_new(loop, &cfg, &ops, &c->tcp, errmsg, errlen);
    if (rv != 0) {
        free(c);
        return rv;
    }
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
    return tcp_server_port(c->tcp);
}

/* control_conns - open connections. */
size_t control_conns(const struct control *c)
{
    return tcp_server_conns(c->tcp);
}

/* control_close - close the listener and all connections; idempotent. */
void control_close(struct control *c, void (*closed_cb)(void *arg), void *arg)
{
    if (c->closing)
        return;
    c->closing = true;
    tcp_server_close(c->tcp, closed_cb, arg); /* c is freed before the callback */
}
