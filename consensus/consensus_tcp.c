/*
 * consensus_tcp.c - raft's TCP transport: Nagle off everywhere, and every
 * inbound byte checked before libraft reads it. See consensus_tcp.h.
 *
 * Owns: the listener, every inbound connection (its TCP handle, its
 * handshake timer, our end of its socketpair and its consensus_wire), and
 * libraft's own transport (inner), used for outbound connects only. libraft
 * sets outer.data for itself; inner.data points back here.
 *
 * Happy path of an inbound connection:
 *   listen_cb: accept, count against max_conns, TCP_NODELAY, start the
 *     handshake timer, read.
 *   read_cb: consensus_wire_feed; once the handshake is complete, a
 *     socketpair: libraft gets one end (a uv_pipe_t from raft_malloc, as
 *     libraft frees it with raft_free) through accept_cb, we keep the other
 *     and write to it every byte consensus_wire lets through.
 *   libraft closes its end when done: our end reads EOF, we close the rest.
 * Failure modes, each closing the connection: the peer hangs up; no valid
 * handshake within handshake_ms (counted, logged); consensus_wire refuses
 * (counted, logged with the peer and the reason); more than max_conns open
 * (counted, logged); a write to libraft's end fails. While more than
 * CONSENSUS_TCP_HIGH_WATER bytes wait to reach libraft, the peer is not read.
 *
 * A connection is freed in the close callback of its last handle; the
 * transport's close callback runs once libraft's transport and every handle
 * here are closed.
 *
 * Errors: RAFT_* codes towards libraft (its transport interface), with a
 * sentence in outer.errmsg.
 */
#include "consensus/consensus_tcp.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/common.h"
#include "util/log.h"

/* Stop reading a peer while this much waits for libraft; resume below the low mark. */
#define CONSENSUS_TCP_HIGH_WATER (4u << 20)
#define CONSENSUS_TCP_LOW_WATER (1u << 20)
#define CONSENSUS_TCP_READ_BUF 65536

/* consensus_tcp_connect_req - one outbound connect in flight through the wrapper. */
struct consensus_tcp_connect_req {
    struct raft_uv_connect inner_req;
    struct raft_uv_connect *req; /* the caller's */
    raft_uv_connect_cb cb;
};

/* consensus_tcp_conn - one inbound connection. */
struct consensus_tcp_conn {
    struct consensus_tcp_conn *prev;
    struct consensus_tcp_conn *next;
    struct consensus_tcp *t;
    uv_tcp_t tcp;
    uv_timer_t timer; /* handshake deadline */
    uv_pipe_t pipe;   /* our end of the socketpair; libraft reads the other */
    bool pipe_open;
    bool paused; /* not reading tcp: too much queued for libraft */
    bool closing;
    unsigned n_handles;
    size_t queued; /* bytes written to pipe, not yet completed */
    struct consensus_wire wire;
    char peer[64];
    char rbuf[CONSENSUS_TCP_READ_BUF];
};

/* consensus_tcp_write - one buffer on its way to libraft. */
struct consensus_tcp_write {
    uv_write_t req;
    struct consensus_tcp_conn *conn;
    size_t len;
    uint8_t data[];
};

/* consensus_tcp_nodelay - Nagle off; a failure only costs latency, so it is logged. */
static void consensus_tcp_nodelay(struct uv_stream_s *stream)
{
    int rv = uv_tcp_nodelay((uv_tcp_t *)stream, 1);
    if (rv != 0)
        log_warn("raft connection: TCP_NODELAY: %s", uv_strerror(rv));
}

/* consensus_tcp_errmsg - the inner transport's message, for raft's errors. */
static void consensus_tcp_errmsg(struct consensus_tcp *t)
{
    memcpy(t->outer.errmsg, t->inner.errmsg, sizeof(t->outer.errmsg));
}

/* consensus_tcp_maybe_closed - tell raft the transport is closed once everything is. */
static void consensus_tcp_maybe_closed(struct consensus_tcp *t)
{
    if (!t->closing || !t->inner_closed || t->n_handles > 0 || t->close_cb == NULL)
        return;
    raft_uv_transport_close_cb cb = t->close_cb;
    t->close_cb = NULL;
    cb(&t->outer);
}

/* consensus_tcp_conn_closed_cb - one handle of a connection closed; free it after the last. */
static void consensus_tcp_conn_closed_cb(uv_handle_t *h)
{
    struct consensus_tcp_conn *conn = h->data;
    struct consensus_tcp *t = conn->t;
    t->n_handles--;
    if (--conn->n_handles > 0)
        return;
    consensus_wire_free(&conn->wire);
    free(conn);
    consensus_tcp_maybe_closed(t);
}

/* consensus_tcp_conn_close - idempotent: unlink and close every handle. */
static void consensus_tcp_conn_close(struct consensus_tcp_conn *conn)
{
    if (conn->closing)
        return;
    conn->closing = true;
    struct consensus_tcp *t = conn->t;
    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        t->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    t->n_conns--;
    uv_close((uv_handle_t *)&conn->tcp, consensus_tcp_conn_closed_cb);
    uv_close((uv_handle_t *)&conn->timer, consensus_tcp_conn_closed_cb);
    if (conn->pipe_open)
        uv_close((uv_handle_t *)&conn->pipe, consensus_tcp_conn_closed_cb);
}

static void consensus_tcp_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void consensus_tcp_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* consensus_tcp_write_cb - a buffer reached libraft's end (or was canceled). */
static void consensus_tcp_write_cb(uv_write_t *req, int status)
{
    struct consensus_tcp_write *w = (struct consensus_tcp_write *)req;
    struct consensus_tcp_conn *conn = w->conn;
    conn->queued -= w->len;
    free(w);
    if (conn->closing)
        return;
    if (status < 0) {
        log_warn("raft connection peer=%s event=closed reason=\"write to raft: %s\"", conn->peer,
                 uv_strerror(status));
        consensus_tcp_conn_close(conn);
        return;
    }
    if (conn->paused && conn->queued < CONSENSUS_TCP_LOW_WATER) {
        conn->paused = false;
        uv_read_start((uv_stream_t *)&conn->tcp, consensus_tcp_conn_alloc_cb,
                      consensus_tcp_conn_read_cb);
    }
}

/* consensus_tcp_emit_cb - bytes consensus_wire let through: on to libraft. */
static void consensus_tcp_emit_cb(void *arg, const uint8_t *data, size_t len)
{
    struct consensus_tcp_conn *conn = arg;
    if (conn->closing || len == 0)
        return;
    /* Most of the time the socketpair takes it all at once: no copy, no request. */
    if (conn->queued == 0) {
        uv_buf_t direct = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&conn->pipe, &direct, 1);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n != UV_EAGAIN) {
            log_warn("raft connection peer=%s event=closed reason=\"write to raft: %s\"",
                     conn->peer, uv_strerror(n));
            consensus_tcp_conn_close(conn);
            return;
        }
        if (len == 0)
            return;
    }
    struct consensus_tcp_write *w = malloc(sizeof(*w) + len);
    if (w == NULL) {
        log_warn("raft connection peer=%s event=closed reason=\"out of memory\"", conn->peer);
        consensus_tcp_conn_close(conn);
        return;
    }
    w->conn = conn;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
    int rv = uv_write(&w->req, (uv_stream_t *)&conn->pipe, &b, 1, consensus_tcp_write_cb);
    if (rv != 0) {
        free(w);
        log_warn("raft connection peer=%s event=closed reason=\"write to raft: %s\"", conn->peer,
                 uv_strerror(rv));
        consensus_tcp_conn_close(conn);
        return;
    }
    /* Asynchronous processing continues in consensus_tcp_write_cb. */
    conn->queued += len;
    if (!conn->paused && conn->queued > CONSENSUS_TCP_HIGH_WATER) {
        conn->paused = true;
        uv_read_stop((uv_stream_t *)&conn->tcp);
    }
}

/* consensus_tcp_pipe_alloc_cb / _read_cb - libraft never writes here; EOF means it let go. */
static void consensus_tcp_pipe_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct consensus_tcp_conn *conn = h->data;
    (void)suggested;
    *buf = uv_buf_init(conn->rbuf, sizeof(conn->rbuf));
}

static void consensus_tcp_pipe_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct consensus_tcp_conn *conn = s->data;
    (void)buf;
    if (nread < 0)
        consensus_tcp_conn_close(conn);
}

/* consensus_tcp_conn_refuse - log who and why, count, close. */
static void consensus_tcp_conn_refuse(struct consensus_tcp_conn *conn,
                                      uint64_t *counter,
                                      const char *why)
{
    (*counter)++;
    const struct consensus_port_stats *st = &conn->t->stats;
    /* id: the one the handshake claimed, 0 before a valid handshake. */
    log_warn(
        "raft connection peer=%s id=%llu event=refused reason=\"%s\" refused=%llu "
        "timed_out=%llu over_cap=%llu",
        conn->peer, (unsigned long long)conn->wire.id, why, (unsigned long long)st->refused,
        (unsigned long long)st->timed_out, (unsigned long long)st->over_cap);
    consensus_tcp_conn_close(conn);
}

/* consensus_tcp_raft_free_cb - release a handle allocated for libraft. */
static void consensus_tcp_raft_free_cb(uv_handle_t *h)
{
    raft_free(h);
}

/* consensus_tcp_conn_handshaken - a valid handshake: give libraft its end of a socketpair. */
static int consensus_tcp_conn_handshaken(struct consensus_tcp_conn *conn)
{
    struct consensus_tcp *t = conn->t;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        log_warn("raft connection peer=%s event=closed reason=\"socketpair failed\"", conn->peer);
        return -1;
    }
    uv_pipe_t *theirs = raft_malloc(sizeof(*theirs));
    if (theirs == NULL) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    uv_pipe_init(t->loop, &conn->pipe, 0);
    conn->pipe.data = conn;
    conn->pipe_open = true;
    conn->n_handles++;
    t->n_handles++;
    if (uv_pipe_open(&conn->pipe, fds[0]) != 0) {
        close(fds[0]);
        close(fds[1]);
        raft_free(theirs);
        return -1;
    }
    uv_pipe_init(t->loop, theirs, 0);
    if (uv_pipe_open(theirs, fds[1]) != 0) {
        close(fds[1]);
        uv_close((uv_handle_t *)theirs, consensus_tcp_raft_free_cb);
        return -1;
    }
    uv_timer_stop(&conn->timer);
    uv_read_start((uv_stream_t *)&conn->pipe, consensus_tcp_pipe_alloc_cb,
                  consensus_tcp_pipe_read_cb);
    t->stats.accepted++;
    log_debug("raft connection peer=%s event=accepted id=%llu address=%s", conn->peer,
              (unsigned long long)conn->wire.id, conn->wire.address);
    t->accept_cb(&t->outer, conn->wire.id, conn->wire.address, (uv_stream_t *)theirs);
    return 0;
}

static void consensus_tcp_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct consensus_tcp_conn *conn = h->data;
    (void)suggested;
    *buf = uv_buf_init(conn->rbuf, sizeof(conn->rbuf));
}

/* consensus_tcp_conn_read_cb - the peer's bytes, through consensus_wire. */
static void consensus_tcp_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct consensus_tcp_conn *conn = s->data;
    if (nread < 0) {
        consensus_tcp_conn_close(conn);
        return;
    }
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t left = (size_t)nread;
    while (left > 0 && !conn->closing) {
        bool before = consensus_wire_handshaken(&conn->wire);
        ssize_t n = consensus_wire_feed(&conn->wire, p, left, consensus_tcp_emit_cb, conn);
        if (n < 0) {
            const char *why = conn->wire.why != NULL ? conn->wire.why : "out of memory";
            consensus_tcp_conn_refuse(conn, &conn->t->stats.refused, why);
            return;
        }
        p += n;
        left -= (size_t)n;
        if (!before && consensus_wire_handshaken(&conn->wire) &&
            consensus_tcp_conn_handshaken(conn) != 0) {
            consensus_tcp_conn_close(conn);
            return;
        }
    }
}

/* consensus_tcp_conn_timer_cb - no valid handshake in time. */
static void consensus_tcp_conn_timer_cb(uv_timer_t *timer)
{
    struct consensus_tcp_conn *conn = timer->data;
    consensus_tcp_conn_refuse(conn, &conn->t->stats.timed_out, "no handshake in time");
}

/* consensus_tcp_conn_peer - "a.b.c.d:port" of the peer, for logs. */
static void consensus_tcp_conn_peer(struct consensus_tcp_conn *conn)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[48] = "?";
    unsigned port = 0;
    if (uv_tcp_getpeername(&conn->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
            uv_ip4_name(in, host, sizeof(host));
            port = ntohs(in->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
            uv_ip6_name(in6, host, sizeof(host));
            port = ntohs(in6->sin6_port);
        }
    }
    snprintf(conn->peer, sizeof(conn->peer), "%s:%u", host, port);
}

/* consensus_tcp_listen_cb - a connection arrived: accept it, bounded. */
static void consensus_tcp_listen_cb(uv_stream_t *server, int status)
{
    struct consensus_tcp *t = server->data;
    if (status < 0) {
        log_warn("raft listener: %s", uv_strerror(status));
        return;
    }
    struct consensus_tcp_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL) {
        log_warn("raft listener: out of memory");
        return;
    }
    conn->t = t;
    consensus_wire_init(&conn->wire, &t->limits);
    uv_tcp_init(t->loop, &conn->tcp);
    uv_timer_init(t->loop, &conn->timer);
    conn->tcp.data = conn;
    conn->timer.data = conn;
    conn->n_handles = 2;
    t->n_handles += 2;
    conn->next = t->conns;
    if (t->conns != NULL)
        t->conns->prev = conn;
    t->conns = conn;
    t->n_conns++;
    int rv = uv_accept(server, (uv_stream_t *)&conn->tcp);
    if (rv != 0) {
        log_warn("raft listener: accept: %s", uv_strerror(rv));
        consensus_tcp_conn_close(conn);
        return;
    }
    consensus_tcp_conn_peer(conn);
    if (t->n_conns > t->max_conns) {
        consensus_tcp_conn_refuse(conn, &t->stats.over_cap, "too many inbound connections");
        return;
    }
    consensus_tcp_nodelay((uv_stream_t *)&conn->tcp);
    uv_timer_start(&conn->timer, consensus_tcp_conn_timer_cb, t->handshake_ms, 0);
    uv_read_start((uv_stream_t *)&conn->tcp, consensus_tcp_conn_alloc_cb,
                  consensus_tcp_conn_read_cb);
}

static int consensus_tcp_init_cb(struct raft_uv_transport *outer, raft_id id, const char *address)
{
    struct consensus_tcp *t = outer->impl;
    if (t->bind_address[0] == '\0')
        hamr_strlcpy(t->bind_address, address, sizeof(t->bind_address));
    int rv = t->inner.init(&t->inner, id, address);
    if (rv != 0)
        consensus_tcp_errmsg(t);
    return rv;
}

/* consensus_tcp_parse - "a.b.c.d:port" into addr; 0 or -1. */
static int consensus_tcp_parse(const char *address, struct sockaddr_in *addr)
{
    char host[48];
    const char *colon = strrchr(address, ':');
    if (colon == NULL || (size_t)(colon - address) >= sizeof(host))
        return -1;
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    char *end = NULL;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || port > 65535)
        return -1;
    return uv_ip4_addr(host, (int)port, addr) == 0 ? 0 : -1;
}

/* consensus_tcp_listen - bind the raft port and accept through consensus_wire. */
static int consensus_tcp_listen(struct raft_uv_transport *outer, raft_uv_accept_cb cb)
{
    struct consensus_tcp *t = outer->impl;
    struct sockaddr_in addr;
    t->accept_cb = cb;
    if (consensus_tcp_parse(t->bind_address, &addr) != 0) {
        snprintf(outer->errmsg, sizeof(outer->errmsg), "raft bind address %s: not a.b.c.d:port",
                 t->bind_address);
        return RAFT_INVALID;
    }
    uv_tcp_init(t->loop, &t->listener);
    t->listener.data = t;
    t->listener_open = true;
    t->n_handles++;
    int rv = uv_tcp_bind(&t->listener, (const struct sockaddr *)&addr, 0);
    if (rv == 0)
        rv = uv_listen((uv_stream_t *)&t->listener, CONSENSUS_TCP_BACKLOG, consensus_tcp_listen_cb);
    if (rv != 0) {
        snprintf(outer->errmsg, sizeof(outer->errmsg), "raft listen %s: %s", t->bind_address,
                 uv_strerror(rv));
        return RAFT_IOERR;
    }
    return 0;
}

/* consensus_tcp_connected - our connect finished (or was canceled): Nagle off, then raft's. */
static void consensus_tcp_connected(struct raft_uv_connect *inner_req,
                                    struct uv_stream_s *stream,
                                    int status)
{
    struct consensus_tcp_connect_req *w = inner_req->data;
    struct raft_uv_connect *req = w->req;
    raft_uv_connect_cb cb = w->cb;
    free(w);
    if (status == 0)
        consensus_tcp_nodelay(stream);
    cb(req, stream, status);
}

static int consensus_tcp_connect(struct raft_uv_transport *outer,
                                 struct raft_uv_connect *req,
                                 raft_id id,
                                 const char *address,
                                 raft_uv_connect_cb cb)
{
    struct consensus_tcp *t = outer->impl;
    struct consensus_tcp_connect_req *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return RAFT_NOMEM;
    w->inner_req.data = w;
    w->req = req;
    w->cb = cb;
    req->cb = cb;
    int rv = t->inner.connect(&t->inner, &w->inner_req, id, address, consensus_tcp_connected);
    if (rv != 0) {
        consensus_tcp_errmsg(t);
        free(w);
    }
    return rv;
}

/* consensus_tcp_listener_closed_cb - the listener's close callback. */
static void consensus_tcp_listener_closed_cb(uv_handle_t *h)
{
    struct consensus_tcp *t = h->data;
    t->n_handles--;
    consensus_tcp_maybe_closed(t);
}

/* consensus_tcp_inner_closed - libraft's transport is closed. */
static void consensus_tcp_inner_closed(struct raft_uv_transport *inner)
{
    struct consensus_tcp *t = inner->data;
    t->inner_closed = true;
    consensus_tcp_maybe_closed(t);
}

/* consensus_tcp_close_cb - raft closes the transport: listener, connections, libraft's. */
static void consensus_tcp_close_cb(struct raft_uv_transport *outer, raft_uv_transport_close_cb cb)
{
    struct consensus_tcp *t = outer->impl;
    t->closing = true;
    t->close_cb = cb;
    if (t->listener_open) {
        t->listener_open = false;
        uv_close((uv_handle_t *)&t->listener, consensus_tcp_listener_closed_cb);
    }
    while (t->conns != NULL)
        consensus_tcp_conn_close(t->conns);
    t->inner.close(&t->inner, consensus_tcp_inner_closed);
}

/* consensus_tcp_init - our listener and libraft's connects; see consensus_tcp.h. */
int consensus_tcp_init(struct consensus_tcp *t,
                       uv_loop_t *loop,
                       const struct consensus_wire_limits *limits)
{
    memset(t, 0, sizeof(*t));
    int rv = raft_uv_tcp_init(&t->inner, loop);
    if (rv != 0)
        return rv;
    t->loop = loop;
    t->limits = *limits;
    t->handshake_ms = CONSENSUS_TCP_HANDSHAKE_MS;
    t->max_conns = CONSENSUS_TCP_MAX_CONNS;
    t->inner.data = t;
    t->outer.impl = t;
    t->outer.init = consensus_tcp_init_cb;
    t->outer.listen = consensus_tcp_listen;
    t->outer.connect = consensus_tcp_connect;
    t->outer.close = consensus_tcp_close_cb;
    return 0;
}

/* consensus_tcp_set_bind_address - where the listener binds; see consensus_tcp.h. */
int consensus_tcp_set_bind_address(struct consensus_tcp *t, const char *address)
{
    struct sockaddr_in addr;
    if (consensus_tcp_parse(address, &addr) != 0)
        return RAFT_INVALID;
    hamr_strlcpy(t->bind_address, address, sizeof(t->bind_address));
    return 0;
}

/* consensus_tcp_close - release libraft's transport; see consensus_tcp.h. */
void consensus_tcp_close(struct consensus_tcp *t)
{
    raft_uv_tcp_close(&t->inner);
}
