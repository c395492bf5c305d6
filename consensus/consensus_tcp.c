/*
 * consensus_tcp.c - raft's transport: every connection opened here, Nagle
 * off, every inbound byte checked before libraft reads it, optionally mutual
 * TLS with identities bound to certificates. See consensus_tcp.h.
 *
 * Owns: the listener; every inbound connection (its TCP handle, its
 * handshake timer, its TLS state, our end of its socketpair and its
 * consensus_wire); every outbound connection until it is handed over (plain)
 * or for its whole life (TLS: its TCP handle, timer, TLS state and our end of
 * its socketpair). libraft sets outer.data for itself. Streams handed to
 * libraft (uv_tcp_t or uv_pipe_t from raft_malloc: libraft frees them with
 * raft_free) are libraft's from then on.
 *
 * Inbound, happy path:
 *   listen_cb: accept, count against max_conns, TCP_NODELAY, with TLS a
 *     server-side struct tls, start the handshake timer, read.
 *   conn_read_cb: plain, the bytes go to conn_feed; with TLS they are fed to
 *     the engine (conn_tls_pump): handshake (the client's certificate is
 *     verified by the context; it must carry a node identity), then the
 *     plaintext goes to conn_feed.
 *   conn_feed: consensus_wire_feed; once the raft handshake is complete (and,
 *     with TLS, claims the certificate's id), a socketpair: libraft gets one
 *     end through accept_cb, we write to the other every byte consensus_wire
 *     lets through.
 *   libraft closes its end when done: our end reads EOF, we close the rest.
 * Failure modes, each closing the connection: the peer hangs up; no TLS and
 * raft handshake within handshake_ms (timed_out); a failed TLS handshake or
 * a TLS error later (tls); a certificate without a node identity or a raft
 * handshake claiming another id (identity); consensus_wire refuses
 * (refused); more than max_conns open (over_cap); a write to libraft's end
 * fails. Each refusal is logged with the peer and reason. While more than
 * CONSENSUS_TCP_HIGH_WATER bytes wait to reach libraft, the peer is not read
 * (with TLS, neither is the engine's buffered plaintext).
 *
 * Outbound, happy path (out_*):
 *   connect: parse, uv_tcp_connect.
 *   out_connect_cb: TCP_NODELAY. Plain: write libraft's handshake; once
 *     written, hand libraft the TCP handle (the connection is no longer
 *     ours). TLS: a client-side struct tls, the timer, read; out_tls_pump
 *     runs the handshake; the server's certificate must name the node libraft
 *     asked for (out_established); the handshake record is encrypted first,
 *     then libraft gets one end of a socketpair.
 *   out_pipe_read_cb (TLS): libraft's bytes, encrypted, written to TCP; while
 *     more than CONSENSUS_TCP_HIGH_WATER bytes wait for the socket, libraft's
 *     end is not read.
 *   out_read_cb (TLS): the peer's bytes are decrypted and dropped (libraft
 *     0.15 sends nothing back on an outbound connection); EOF or a TLS error
 *     closes the connection.
 * A connect that fails reports RAFT_NOCONNECTION, one canceled by close
 * RAFT_CANCELED; either once every handle of the attempt is closed, never
 * from inside connect or close (libraft's own uv_tcp_connect.c did the same).
 *
 * Memory: a connection (either way) is freed in the close callback of its
 * last handle; the transport's close callback runs once every handle here is
 * closed and every connect request has had its callback.
 *
 * Errors: RAFT_* codes towards libraft (its transport interface), with a
 * sentence in outer.errmsg.
 *
 * Security: with tls set, nothing reaches libraft from a peer that did not
 * present a certificate of the cluster's CA naming the id it claims, and
 * nothing goes out to a server whose certificate names another node. The
 * checks of consensus_wire apply to authenticated peers too.
 */
#include "consensus/consensus_tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/cluster_tls.h"
#include "net/tls.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"

/* Stop reading a source while this much waits for its sink; resume below the low mark. */
#define CONSENSUS_TCP_HIGH_WATER (4u << 20)
#define CONSENSUS_TCP_LOW_WATER (1u << 20)
#define CONSENSUS_TCP_READ_BUF 65536
/* TLS output towards an inbound peer (handshake, tickets, alerts): beyond this, refuse. */
#define CONSENSUS_TCP_TLS_OUT_MAX (1u << 20)
/* libraft's handshake: protocol, id, address length, the address padded to 8. */
#define CONSENSUS_TCP_HS_MAX (CONSENSUS_WIRE_HANDSHAKE + CONSENSUS_WIRE_ADDR_MAX)

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
    size_t queued;     /* bytes written to pipe, not yet completed */
    struct tls *tls;   /* NULL: plain */
    bool tls_done;     /* the TLS handshake finished and the certificate names a node */
    uint64_t cert_id;  /* that node's id */
    size_t tls_queued; /* TLS output written to tcp, not yet completed */
    struct consensus_wire wire;
    char peer[64];
    char rbuf[CONSENSUS_TCP_READ_BUF];
};

enum consensus_tcp_out_state {
    CONSENSUS_TCP_OUT_CONNECTING = 0, /* TCP connect in flight */
    CONSENSUS_TCP_OUT_HANDSHAKE,      /* plain: libraft's handshake being written; TLS: TLS's */
    CONSENSUS_TCP_OUT_OPEN,           /* TLS: libraft has its end; carrying */
};

/* consensus_tcp_out - one outbound connection, ours until handed over (plain) or closed (TLS). */
struct consensus_tcp_out {
    struct consensus_tcp_out *prev;
    struct consensus_tcp_out *next;
    struct consensus_tcp *t;
    enum consensus_tcp_out_state state;
    struct raft_uv_connect *req; /* until its callback ran */
    int status;                  /* for req->cb once every handle is closed */
    raft_id id;                  /* the node libraft asked for */
    uv_tcp_t *tcp;               /* raft_malloc: plain mode hands it to libraft */
    uv_connect_t connect;
    uv_write_t hs_write; /* plain: libraft's handshake */
    uv_timer_t timer;    /* TLS: handshake deadline */
    bool timer_open;
    uv_pipe_t pipe; /* TLS: our end of the socketpair; libraft writes the other */
    bool pipe_open;
    bool paused; /* not reading pipe: too much queued for the socket */
    bool closing;
    unsigned n_handles;
    size_t queued; /* bytes written to tcp, not yet completed */
    struct tls *tls;
    size_t hs_len;
    uint8_t hs[CONSENSUS_TCP_HS_MAX];
    char address[CONSENSUS_ADDR_MAX];
    char rbuf[CONSENSUS_TCP_READ_BUF];
};

/* consensus_tcp_write - one buffer on its way (to libraft's end, or to a TCP peer). */
struct consensus_tcp_write {
    uv_write_t req;
    void *owner; /* the conn or out */
    size_t len;
    uint8_t data[];
};

/* consensus_tcp_nodelay - Nagle off; a failure only costs latency, so it is logged. */
static void consensus_tcp_nodelay(uv_tcp_t *tcp)
{
    int rv = uv_tcp_nodelay(tcp, 1);
    if (rv != 0)
        log_warn("raft connection: TCP_NODELAY: %s", uv_strerror(rv));
}

/* consensus_tcp_maybe_closed - tell raft the transport is closed once everything is. */
static void consensus_tcp_maybe_closed(struct consensus_tcp *t)
{
    if (!t->closing || t->n_handles > 0 || t->n_connects > 0 || t->close_cb == NULL)
        return;
    raft_uv_transport_close_cb cb = t->close_cb;
    t->close_cb = NULL;
    cb(&t->outer);
}

/* consensus_tcp_raft_free_cb - release a handle allocated for libraft. */
static void consensus_tcp_raft_free_cb(uv_handle_t *h)
{
    raft_free(h);
}

/*
 * consensus_tcp_send - len bytes to stream: uv_try_write first (no copy, no
 * request when the socket takes them, as it nearly always does), a copy and
 * uv_write for the rest, added to *queued until cb. 0 or a libuv error.
 */
static int consensus_tcp_send(uv_stream_t *stream,
                              const uint8_t *data,
                              size_t len,
                              void *owner,
                              size_t *queued,
                              uv_write_cb cb)
{
    if (len == 0)
        return 0;
    if (*queued == 0) {
        uv_buf_t direct = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write(stream, &direct, 1);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n != UV_EAGAIN) {
            return n;
        }
        if (len == 0)
            return 0;
    }
    struct consensus_tcp_write *w = malloc(sizeof(*w) + len);
    if (w == NULL)
        return UV_ENOMEM;
    w->owner = owner;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
    int rv = uv_write(&w->req, stream, &b, 1, cb);
    if (rv != 0) {
        free(w);
        return rv;
    }
    /* Asynchronous processing continues in cb. */
    *queued += len;
    return 0;
}

/* consensus_tcp_socketpair - our end opened on mine (data = owner), libraft's in *theirs. */
static int consensus_tcp_socketpair(struct consensus_tcp *t,
                                    uv_pipe_t *mine,
                                    void *owner,
                                    unsigned *owner_handles,
                                    bool *mine_open,
                                    uv_pipe_t **theirs_out)
{
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
        return -1;
    uv_pipe_t *theirs = raft_malloc(sizeof(*theirs));
    if (theirs == NULL) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    uv_pipe_init(t->loop, mine, 0);
    mine->data = owner;
    *mine_open = true;
    (*owner_handles)++;
    t->n_handles++;
    if (uv_pipe_open(mine, fds[0]) != 0) {
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
    *theirs_out = theirs;
    return 0;
}

/* consensus_tcp_sockname - "a.b.c.d:port" or "[v6]:port" of a peer, for logs. */
static void consensus_tcp_sockname(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        uv_ip4_name(in, host, sizeof(host));
        port = ntohs(in->sin_port);
        snprintf(out, outlen, "%s:%u", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(in6, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        snprintf(out, outlen, "[%s]:%u", host, port);
    } else {
        snprintf(out, outlen, "?:0");
    }
}

/* ------------------------------------------------------------------------ */
/* Inbound.                                                                 */

/* consensus_tcp_conn_closed_cb - one handle of a connection closed; free it after the last. */
static void consensus_tcp_conn_closed_cb(uv_handle_t *h)
{
    struct consensus_tcp_conn *conn = h->data;
    struct consensus_tcp *t = conn->t;
    t->n_handles--;
    if (--conn->n_handles > 0)
        return;
    consensus_wire_free(&conn->wire);
    tls_free(conn->tls);
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

/* consensus_tcp_conn_refuse - log who and why, count, close. */
static void consensus_tcp_conn_refuse(struct consensus_tcp_conn *conn,
                                      uint64_t *counter,
                                      const char *why)
{
    (*counter)++;
    const struct consensus_port_stats *st = &conn->t->stats;
    /* id: the one the handshake claimed, 0 before a valid handshake; cert_id: 0 without one. */
    log_warn(
        "raft connection peer=%s id=%llu cert_id=%llu event=refused reason=\"%s\" refused=%llu "
        "timed_out=%llu over_cap=%llu tls=%llu identity=%llu",
        conn->peer, (unsigned long long)conn->wire.id, (unsigned long long)conn->cert_id, why,
        (unsigned long long)st->refused, (unsigned long long)st->timed_out,
        (unsigned long long)st->over_cap, (unsigned long long)st->tls,
        (unsigned long long)st->identity);
    consensus_tcp_conn_close(conn);
}

static void consensus_tcp_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void consensus_tcp_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void consensus_tcp_conn_tls_pump(struct consensus_tcp_conn *conn);

/* consensus_tcp_write_cb - a buffer reached libraft's end (or was canceled). */
static void consensus_tcp_write_cb(uv_write_t *req, int status)
{
    struct consensus_tcp_write *w = (struct consensus_tcp_write *)req;
    struct consensus_tcp_conn *conn = w->owner;
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
        /* With TLS, plaintext the engine still holds goes first. */
        if (conn->tls != NULL)
            consensus_tcp_conn_tls_pump(conn);
        if (!conn->closing && !conn->paused)
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
    int rv = consensus_tcp_send((uv_stream_t *)&conn->pipe, data, len, conn, &conn->queued,
                                consensus_tcp_write_cb);
    if (rv != 0) {
        log_warn("raft connection peer=%s event=closed reason=\"write to raft: %s\"", conn->peer,
                 uv_strerror(rv));
        consensus_tcp_conn_close(conn);
        return;
    }
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

/* consensus_tcp_conn_handshaken - a valid handshake: give libraft its end of a socketpair. */
static int consensus_tcp_conn_handshaken(struct consensus_tcp_conn *conn)
{
    struct consensus_tcp *t = conn->t;
    uv_pipe_t *theirs = NULL;
    if (consensus_tcp_socketpair(t, &conn->pipe, conn, &conn->n_handles, &conn->pipe_open,
                                 &theirs) != 0) {
        log_warn("raft connection peer=%s event=closed reason=\"socketpair failed\"", conn->peer);
        return -1;
    }
    uv_timer_stop(&conn->timer);
    uv_read_start((uv_stream_t *)&conn->pipe, consensus_tcp_pipe_alloc_cb,
                  consensus_tcp_pipe_read_cb);
    t->stats.accepted++;
    log_debug("raft connection peer=%s event=accepted id=%llu address=%s tls=%s", conn->peer,
              (unsigned long long)conn->wire.id, conn->wire.address,
              conn->tls != NULL ? "yes" : "no");
    t->accept_cb(&t->outer, conn->wire.id, conn->wire.address, (uv_stream_t *)theirs);
    return 0;
}

static void consensus_tcp_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct consensus_tcp_conn *conn = h->data;
    (void)suggested;
    *buf = uv_buf_init(conn->rbuf, sizeof(conn->rbuf));
}

/* consensus_tcp_conn_feed - the peer's plaintext, through consensus_wire. */
static void consensus_tcp_conn_feed(struct consensus_tcp_conn *conn, const uint8_t *p, size_t left)
{
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
        if (before || !consensus_wire_handshaken(&conn->wire))
            continue;
        /* The handshake is complete: with TLS, the id it claims must be the certificate's. */
        if (conn->tls != NULL && conn->wire.id != conn->cert_id) {
            consensus_tcp_conn_refuse(conn, &conn->t->stats.identity,
                                      "the handshake claims an id the certificate does not name");
            return;
        }
        if (consensus_tcp_conn_handshaken(conn) != 0) {
            consensus_tcp_conn_close(conn);
            return;
        }
    }
}

/* consensus_tcp_conn_tls_write_cb - TLS output reached the peer's socket (or was canceled). */
static void consensus_tcp_conn_tls_write_cb(uv_write_t *req, int status)
{
    struct consensus_tcp_write *w = (struct consensus_tcp_write *)req;
    struct consensus_tcp_conn *conn = w->owner;
    conn->tls_queued -= w->len;
    free(w);
    if (status < 0 && !conn->closing)
        consensus_tcp_conn_close(conn);
}

/* consensus_tcp_conn_tls_flush - the engine's output onto the socket; 0, or -1 (closed). */
static int consensus_tcp_conn_tls_flush(struct consensus_tcp_conn *conn)
{
    const char *data;
    size_t n;
    while (!conn->closing && (n = tls_output(conn->tls, &data)) > 0) {
        int rv = consensus_tcp_send((uv_stream_t *)&conn->tcp, (const uint8_t *)data, n, conn,
                                    &conn->tls_queued, consensus_tcp_conn_tls_write_cb);
        tls_output_done(conn->tls, n);
        if (rv != 0) {
            consensus_tcp_conn_close(conn);
            return -1;
        }
        /* Only a peer that does not read lets this grow: handshakes and tickets are small. */
        if (conn->tls_queued > CONSENSUS_TCP_TLS_OUT_MAX) {
            consensus_tcp_conn_refuse(conn, &conn->t->stats.tls, "TLS output not read");
            return -1;
        }
    }
    return conn->closing ? -1 : 0;
}

/*
 * consensus_tcp_conn_tls_pump - advance the handshake, then move plaintext
 * to conn_feed until the engine has none or libraft's end is full.
 */
static void consensus_tcp_conn_tls_pump(struct consensus_tcp_conn *conn)
{
    if (!conn->tls_done) {
        int rc = tls_handshake(conn->tls);
        if (consensus_tcp_conn_tls_flush(conn) != 0)
            return;
        if (rc < 0) {
            consensus_tcp_conn_refuse(conn, &conn->t->stats.tls, tls_error(conn->tls));
            return;
        }
        if (rc == 0)
            return;
        struct cluster_tls_identity id;
        if (cluster_tls_peer(conn->tls, &id) != 0 || id.role != CLUSTER_TLS_NODE) {
            char why[128];
            if (id.role == CLUSTER_TLS_OPERATOR)
                snprintf(why, sizeof(why), "the certificate is operator %s's, not a node's",
                         id.name);
            else
                snprintf(why, sizeof(why), "the certificate names no node");
            consensus_tcp_conn_refuse(conn, &conn->t->stats.identity, why);
            return;
        }
        conn->tls_done = true;
        conn->cert_id = id.node_id;
    }
    while (!conn->closing && !conn->paused) {
        /* rbuf's ciphertext is in the engine already: the buffer is free for plaintext. */
        long n = tls_read(conn->tls, conn->rbuf, sizeof(conn->rbuf));
        if (consensus_tcp_conn_tls_flush(conn) != 0)
            return;
        if (n == 0)
            return;
        if (n == HAMR_ESHUTDOWN) {
            consensus_tcp_conn_close(conn);
            return;
        }
        if (n < 0) {
            consensus_tcp_conn_refuse(conn, &conn->t->stats.tls, tls_error(conn->tls));
            return;
        }
        consensus_tcp_conn_feed(conn, (const uint8_t *)conn->rbuf, (size_t)n);
    }
}

/* consensus_tcp_conn_read_cb - the peer's bytes: to the TLS engine, or straight to the checker. */
static void consensus_tcp_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct consensus_tcp_conn *conn = s->data;
    if (nread < 0) {
        consensus_tcp_conn_close(conn);
        return;
    }
    if (conn->tls == NULL) {
        consensus_tcp_conn_feed(conn, (const uint8_t *)buf->base, (size_t)nread);
        return;
    }
    if (tls_feed(conn->tls, buf->base, (size_t)nread) != 0) {
        consensus_tcp_conn_refuse(conn, &conn->t->stats.tls, "TLS input not consumed");
        return;
    }
    consensus_tcp_conn_tls_pump(conn);
}

/* consensus_tcp_conn_timer_cb - no valid handshake in time. */
static void consensus_tcp_conn_timer_cb(uv_timer_t *timer)
{
    struct consensus_tcp_conn *conn = timer->data;
    consensus_tcp_conn_refuse(
        conn, &conn->t->stats.timed_out,
        conn->tls != NULL && !conn->tls_done ? "no TLS handshake in time" : "no handshake in time");
}

/* consensus_tcp_conn_peer - the peer's address, for logs. */
static void consensus_tcp_conn_peer(struct consensus_tcp_conn *conn)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (uv_tcp_getpeername(&conn->tcp, (struct sockaddr *)&ss, &len) != 0)
        ss.ss_family = AF_UNSPEC;
    consensus_tcp_sockname(&ss, conn->peer, sizeof(conn->peer));
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
    /* The context of the moment: a reload reaches new connections only. */
    if (t->tls != NULL &&
        tls_new(cluster_tls_server_ctx(t->tls), true, NULL, false, &conn->tls) != 0) {
        log_warn("raft connection peer=%s event=closed reason=\"TLS: out of memory\"", conn->peer);
        consensus_tcp_conn_close(conn);
        return;
    }
    consensus_tcp_nodelay(&conn->tcp);
    uv_timer_start(&conn->timer, consensus_tcp_conn_timer_cb, t->handshake_ms, 0);
    uv_read_start((uv_stream_t *)&conn->tcp, consensus_tcp_conn_alloc_cb,
                  consensus_tcp_conn_read_cb);
}

/* ------------------------------------------------------------------------ */
/* Outbound.                                                                */

/* consensus_tcp_out_free - the last handle closed: report a pending connect, free. */
static void consensus_tcp_out_free(struct consensus_tcp_out *out)
{
    struct consensus_tcp *t = out->t;
    struct raft_uv_connect *req = out->req;
    int status = out->status;
    tls_free(out->tls);
    free(out);
    if (req != NULL) {
        t->n_connects--;
        req->cb(req, NULL, status);
    }
    consensus_tcp_maybe_closed(t);
}

/* consensus_tcp_out_closed_cb - one handle of an outbound connection closed. */
static void consensus_tcp_out_closed_cb(uv_handle_t *h)
{
    struct consensus_tcp_out *out = h->data;
    out->t->n_handles--;
    if ((uv_handle_t *)out->tcp == h) {
        raft_free(h);
        out->tcp = NULL;
    }
    if (--out->n_handles == 0)
        consensus_tcp_out_free(out);
}

/* consensus_tcp_out_unlink - off the transport's list. */
static void consensus_tcp_out_unlink(struct consensus_tcp_out *out)
{
    struct consensus_tcp *t = out->t;
    if (out->prev != NULL)
        out->prev->next = out->next;
    else
        t->outs = out->next;
    if (out->next != NULL)
        out->next->prev = out->prev;
    out->prev = out->next = NULL;
}

/* consensus_tcp_out_close - idempotent: unlink, close every handle; status: a pending connect's. */
static void consensus_tcp_out_close(struct consensus_tcp_out *out, int status)
{
    if (out->closing)
        return;
    out->closing = true;
    out->status = status;
    consensus_tcp_out_unlink(out);
    if (out->tcp != NULL)
        uv_close((uv_handle_t *)out->tcp, consensus_tcp_out_closed_cb);
    if (out->timer_open)
        uv_close((uv_handle_t *)&out->timer, consensus_tcp_out_closed_cb);
    if (out->pipe_open)
        uv_close((uv_handle_t *)&out->pipe, consensus_tcp_out_closed_cb);
}

/* consensus_tcp_out_fail - log why (id and address), count, close with RAFT_NOCONNECTION. */
static void consensus_tcp_out_fail(struct consensus_tcp_out *out,
                                   uint64_t *counter,
                                   uint64_t cert_id,
                                   const char *why)
{
    (*counter)++;
    const struct consensus_port_stats *st = &out->t->stats;
    log_warn(
        "raft connect id=%llu address=%s cert_id=%llu event=failed reason=\"%s\" out_tls=%llu "
        "out_identity=%llu",
        (unsigned long long)out->id, out->address, (unsigned long long)cert_id, why,
        (unsigned long long)st->out_tls, (unsigned long long)st->out_identity);
    consensus_tcp_out_close(out, RAFT_NOCONNECTION);
}

/* consensus_tcp_out_handshake - libraft's handshake as libraft's own transport wrote it. */
static void consensus_tcp_out_handshake(struct consensus_tcp_out *out)
{
    struct consensus_tcp *t = out->t;
    size_t alen = strlen(t->address) + 1;
    size_t padded = (alen + 7) / 8 * 8;
    uint64_t fields[3] = {CONSENSUS_WIRE_PROTOCOL, t->id, padded};
    memset(out->hs, 0, sizeof(out->hs));
    for (int f = 0; f < 3; f++)
        for (int b = 0; b < 8; b++)
            out->hs[f * 8 + b] = (uint8_t)(fields[f] >> (8 * b));
    memcpy(out->hs + CONSENSUS_WIRE_HANDSHAKE, t->address, alen);
    out->hs_len = CONSENSUS_WIRE_HANDSHAKE + padded;
}

/* consensus_tcp_out_hs_write_cb - plain: the handshake is out; the TCP handle becomes libraft's. */
static void consensus_tcp_out_hs_write_cb(uv_write_t *req, int status)
{
    struct consensus_tcp_out *out = req->data;
    if (out->closing)
        return; /* canceled: the close callback reports it */
    if (status != 0) {
        consensus_tcp_out_close(out, RAFT_NOCONNECTION);
        return;
    }
    struct consensus_tcp *t = out->t;
    struct raft_uv_connect *req_raft = out->req;
    uv_stream_t *stream = (uv_stream_t *)out->tcp;
    raft_id req_raft_id = out->id;
    consensus_tcp_out_unlink(out);
    t->n_handles--;
    t->n_connects--;
    free(out);
    stream->data = NULL;
    log_debug("raft connect id=%llu event=connected tls=no", (unsigned long long)req_raft_id);
    req_raft->cb(req_raft, stream, 0);
}

static void consensus_tcp_out_tls_pump(struct consensus_tcp_out *out);

/* consensus_tcp_out_write_cb - ciphertext reached the socket (or was canceled). */
static void consensus_tcp_out_write_cb(uv_write_t *req, int status);

/* consensus_tcp_out_alloc_cb - one buffer for both reads: the server's bytes and libraft's. */
static void consensus_tcp_out_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct consensus_tcp_out *out = h->data;
    (void)suggested;
    *buf = uv_buf_init(out->rbuf, sizeof(out->rbuf));
}

/* consensus_tcp_out_tls_flush - the engine's output onto the socket; 0, or -1 (closed). */
static int consensus_tcp_out_tls_flush(struct consensus_tcp_out *out)
{
    const char *data;
    size_t n;
    while (!out->closing && (n = tls_output(out->tls, &data)) > 0) {
        int rv = consensus_tcp_send((uv_stream_t *)out->tcp, (const uint8_t *)data, n, out,
                                    &out->queued, consensus_tcp_out_write_cb);
        tls_output_done(out->tls, n);
        if (rv != 0) {
            /* The peer went away (a restart, most often): libraft reconnects. */
            log_debug("raft connect id=%llu address=%s event=closed reason=\"write: %s\"",
                      (unsigned long long)out->id, out->address, uv_strerror(rv));
            consensus_tcp_out_close(out, RAFT_NOCONNECTION);
            return -1;
        }
    }
    if (out->closing)
        return -1;
    if (out->pipe_open && !out->paused && out->queued > CONSENSUS_TCP_HIGH_WATER) {
        out->paused = true;
        uv_read_stop((uv_stream_t *)&out->pipe);
    }
    return 0;
}

/* consensus_tcp_out_pipe_read_cb - libraft's bytes, encrypted onto TCP; EOF: it let go. */
static void consensus_tcp_out_pipe_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct consensus_tcp_out *out = s->data;
    if (nread < 0) {
        consensus_tcp_out_close(out, RAFT_NOCONNECTION);
        return;
    }
    if (nread == 0)
        return;
    if (tls_write(out->tls, buf->base, (size_t)nread) != 0) {
        log_warn("raft connect id=%llu address=%s event=closed reason=\"TLS: %s\"",
                 (unsigned long long)out->id, out->address, tls_error(out->tls));
        consensus_tcp_out_close(out, RAFT_NOCONNECTION);
        return;
    }
    consensus_tcp_out_tls_flush(out);
}

static void consensus_tcp_out_write_cb(uv_write_t *req, int status)
{
    struct consensus_tcp_write *w = (struct consensus_tcp_write *)req;
    struct consensus_tcp_out *out = w->owner;
    out->queued -= w->len;
    free(w);
    if (out->closing)
        return;
    if (status < 0) {
        log_debug("raft connect id=%llu address=%s event=closed reason=\"write: %s\"",
                  (unsigned long long)out->id, out->address, uv_strerror(status));
        consensus_tcp_out_close(out, RAFT_NOCONNECTION);
        return;
    }
    if (out->paused && out->queued < CONSENSUS_TCP_LOW_WATER) {
        out->paused = false;
        uv_read_start((uv_stream_t *)&out->pipe, consensus_tcp_out_alloc_cb,
                      consensus_tcp_out_pipe_read_cb);
    }
}

/* consensus_tcp_out_established - TLS names the right node: the raft handshake, then libraft. */
static void consensus_tcp_out_established(struct consensus_tcp_out *out)
{
    struct consensus_tcp *t = out->t;
    uv_pipe_t *theirs = NULL;
    if (tls_write(out->tls, out->hs, out->hs_len) != 0) {
        consensus_tcp_out_fail(out, &t->stats.out_tls, 0, tls_error(out->tls));
        return;
    }
    if (consensus_tcp_out_tls_flush(out) != 0)
        return;
    if (consensus_tcp_socketpair(t, &out->pipe, out, &out->n_handles, &out->pipe_open, &theirs) !=
        0) {
        log_warn("raft connect id=%llu address=%s event=failed reason=\"socketpair failed\"",
                 (unsigned long long)out->id, out->address);
        consensus_tcp_out_close(out, RAFT_NOCONNECTION);
        return;
    }
    out->state = CONSENSUS_TCP_OUT_OPEN;
    uv_timer_stop(&out->timer);
    uv_read_start((uv_stream_t *)&out->pipe, consensus_tcp_out_alloc_cb,
                  consensus_tcp_out_pipe_read_cb);
    log_debug("raft connect id=%llu address=%s event=connected tls=yes",
              (unsigned long long)out->id, out->address);
    struct raft_uv_connect *req = out->req;
    out->req = NULL;
    t->n_connects--;
    req->cb(req, (uv_stream_t *)theirs, 0);
}

/* consensus_tcp_out_tls_pump - the handshake, then whatever the server sends, dropped. */
static void consensus_tcp_out_tls_pump(struct consensus_tcp_out *out)
{
    struct consensus_tcp *t = out->t;
    if (out->state == CONSENSUS_TCP_OUT_HANDSHAKE) {
        int rc = tls_handshake(out->tls);
        if (consensus_tcp_out_tls_flush(out) != 0)
            return;
        if (rc < 0) {
            consensus_tcp_out_fail(out, &t->stats.out_tls, 0, tls_error(out->tls));
            return;
        }
        if (rc == 0)
            return;
        struct cluster_tls_identity id;
        if (cluster_tls_peer(out->tls, &id) != 0 || id.role != CLUSTER_TLS_NODE) {
            consensus_tcp_out_fail(out, &t->stats.out_identity, 0,
                                   "the server's certificate names no node");
            return;
        }
        if (id.node_id != out->id) {
            consensus_tcp_out_fail(out, &t->stats.out_identity, id.node_id,
                                   "the server's certificate names another node");
            return;
        }
        consensus_tcp_out_established(out);
        if (out->closing)
            return;
    }
    /* libraft reads nothing here: drain the engine (tickets, alerts) and drop the plaintext. */
    for (;;) {
        long n = tls_read(out->tls, out->rbuf, sizeof(out->rbuf));
        if (consensus_tcp_out_tls_flush(out) != 0)
            return;
        if (n == 0)
            return;
        if (n == HAMR_ESHUTDOWN) {
            consensus_tcp_out_close(out, RAFT_NOCONNECTION);
            return;
        }
        if (n < 0) {
            /* E.g. the server refusing our certificate, which TLS 1.3 says after our Finished. */
            consensus_tcp_out_fail(out, &t->stats.out_tls, 0, tls_error(out->tls));
            return;
        }
    }
}

/* consensus_tcp_out_read_cb - the server's bytes (TLS only). */
static void consensus_tcp_out_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct consensus_tcp_out *out = s->data;
    if (nread < 0) {
        if (out->state == CONSENSUS_TCP_OUT_HANDSHAKE)
            consensus_tcp_out_fail(out, &out->t->stats.out_tls, 0,
                                   "the server closed the connection during the TLS handshake");
        else
            consensus_tcp_out_close(out, RAFT_NOCONNECTION);
        return;
    }
    if (tls_feed(out->tls, buf->base, (size_t)nread) != 0) {
        consensus_tcp_out_fail(out, &out->t->stats.out_tls, 0, "TLS input not consumed");
        return;
    }
    consensus_tcp_out_tls_pump(out);
}

/* consensus_tcp_out_timer_cb - TLS not up within handshake_ms. */
static void consensus_tcp_out_timer_cb(uv_timer_t *timer)
{
    struct consensus_tcp_out *out = timer->data;
    consensus_tcp_out_fail(out, &out->t->stats.out_tls, 0, "no TLS handshake in time");
}

/* consensus_tcp_out_connect_cb - TCP is up (or not): Nagle off, then a handshake. */
static void consensus_tcp_out_connect_cb(uv_connect_t *req, int status)
{
    struct consensus_tcp_out *out = req->data;
    struct consensus_tcp *t = out->t;
    if (out->closing)
        return; /* canceled by close: the close callback reports it */
    if (status != 0) {
        log_debug("raft connect id=%llu address=%s event=failed reason=\"%s\"",
                  (unsigned long long)out->id, out->address, uv_strerror(status));
        snprintf(t->outer.errmsg, sizeof(t->outer.errmsg), "uv_tcp_connect(): %s",
                 uv_strerror(status));
        consensus_tcp_out_close(out, RAFT_NOCONNECTION);
        return;
    }
    consensus_tcp_nodelay(out->tcp);
    out->state = CONSENSUS_TCP_OUT_HANDSHAKE;
    consensus_tcp_out_handshake(out);
    if (t->tls == NULL) {
        uv_buf_t b = uv_buf_init((char *)out->hs, (unsigned)out->hs_len);
        out->hs_write.data = out;
        if (uv_write(&out->hs_write, (uv_stream_t *)out->tcp, &b, 1,
                     consensus_tcp_out_hs_write_cb) != 0)
            consensus_tcp_out_close(out, RAFT_NOCONNECTION);
        return;
    }
    if (tls_new(cluster_tls_client_ctx(t->tls), false, NULL, false, &out->tls) != 0) {
        consensus_tcp_out_fail(out, &t->stats.out_tls, 0, "TLS: out of memory");
        return;
    }
    uv_timer_init(t->loop, &out->timer);
    out->timer.data = out;
    out->timer_open = true;
    out->n_handles++;
    t->n_handles++;
    uv_timer_start(&out->timer, consensus_tcp_out_timer_cb, t->handshake_ms, 0);
    uv_read_start((uv_stream_t *)out->tcp, consensus_tcp_out_alloc_cb, consensus_tcp_out_read_cb);
    consensus_tcp_out_tls_pump(out);
}

/* consensus_tcp_connect - raft_uv_transport.connect: our own, IPv4 or IPv6. */
static int consensus_tcp_connect(struct raft_uv_transport *outer,
                                 struct raft_uv_connect *req,
                                 raft_id id,
                                 const char *address,
                                 raft_uv_connect_cb cb)
{
    struct consensus_tcp *t = outer->impl;
    struct sockaddr_storage addr;
    if (t->closing)
        return RAFT_CANCELED;
    if (strlen(address) >= CONSENSUS_ADDR_MAX || consensus_tcp_parse(address, &addr) != 0) {
        snprintf(outer->errmsg, sizeof(outer->errmsg),
                 "raft address %.64s: not a.b.c.d:port or [IPv6]:port", address);
        return RAFT_NOCONNECTION;
    }
    struct consensus_tcp_out *out = calloc(1, sizeof(*out));
    uv_tcp_t *tcp = raft_malloc(sizeof(*tcp));
    if (out == NULL || tcp == NULL) {
        free(out);
        raft_free(tcp);
        snprintf(outer->errmsg, sizeof(outer->errmsg), "out of memory");
        return RAFT_NOMEM;
    }
    out->t = t;
    out->id = id;
    out->req = req;
    out->tcp = tcp;
    hamr_strlcpy(out->address, address, sizeof(out->address));
    uv_tcp_init(t->loop, tcp);
    tcp->data = out;
    out->connect.data = out;
    int rv = uv_tcp_connect(&out->connect, tcp, (const struct sockaddr *)&addr,
                            consensus_tcp_out_connect_cb);
    if (rv != 0) {
        snprintf(outer->errmsg, sizeof(outer->errmsg), "uv_tcp_connect(): %s", uv_strerror(rv));
        uv_close((uv_handle_t *)tcp, consensus_tcp_raft_free_cb);
        free(out);
        return RAFT_NOCONNECTION;
    }
    req->cb = cb;
    out->n_handles = 1;
    t->n_handles++;
    t->n_connects++;
    out->next = t->outs;
    if (t->outs != NULL)
        t->outs->prev = out;
    t->outs = out;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The transport.                                                           */

static int consensus_tcp_init_cb(struct raft_uv_transport *outer, raft_id id, const char *address)
{
    struct consensus_tcp *t = outer->impl;
    if (strlen(address) >= sizeof(t->address)) {
        snprintf(outer->errmsg, sizeof(outer->errmsg), "raft address too long");
        return RAFT_INVALID;
    }
    t->id = id;
    hamr_strlcpy(t->address, address, sizeof(t->address));
    if (t->bind_address[0] == '\0')
        hamr_strlcpy(t->bind_address, address, sizeof(t->bind_address));
    return 0;
}

/* consensus_tcp_parse - see consensus_tcp.h. */
int consensus_tcp_parse(const char *address, struct sockaddr_storage *out)
{
    const char *colon = strrchr(address, ':');
    if (colon == NULL)
        return -1;
    const char *host = address;
    size_t host_len = (size_t)(colon - address);
    bool v6 = address[0] == '[';
    if (v6) {
        if (host_len < 3 || address[host_len - 1] != ']')
            return -1;
        host++;
        host_len -= 2;
    }
    char buf[INET6_ADDRSTRLEN + 32]; /* room for a zone */
    if (host_len == 0 || host_len >= sizeof(buf))
        return -1;
    memcpy(buf, host, host_len);
    buf[host_len] = '\0';
    const char *p = colon + 1;
    size_t digits = strlen(p);
    if (digits == 0 || digits > 5)
        return -1;
    unsigned long port = 0;
    for (size_t i = 0; i < digits; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        port = port * 10 + (unsigned long)(p[i] - '0');
    }
    if (port == 0 || port > 65535)
        return -1;
    memset(out, 0, sizeof(*out));
    if (v6) {
        /* uv_ip6_addr takes "addr%zone"; the address part must still be a literal. */
        char plain[INET6_ADDRSTRLEN];
        size_t alen = strcspn(buf, "%");
        struct in6_addr a6;
        if (alen == 0 || alen >= sizeof(plain))
            return -1;
        memcpy(plain, buf, alen);
        plain[alen] = '\0';
        if (inet_pton(AF_INET6, plain, &a6) != 1)
            return -1;
        return uv_ip6_addr(buf, (int)port, (struct sockaddr_in6 *)out) == 0 ? 0 : -1;
    }
    struct in_addr a4;
    if (inet_pton(AF_INET, buf, &a4) != 1)
        return -1;
    return uv_ip4_addr(buf, (int)port, (struct sockaddr_in *)out) == 0 ? 0 : -1;
}

/* consensus_tcp_listen - bind the raft port and accept through consensus_wire. */
static int consensus_tcp_listen(struct raft_uv_transport *outer, raft_uv_accept_cb cb)
{
    struct consensus_tcp *t = outer->impl;
    struct sockaddr_storage addr;
    t->accept_cb = cb;
    if (consensus_tcp_parse(t->bind_address, &addr) != 0) {
        snprintf(outer->errmsg, sizeof(outer->errmsg),
                 "raft bind address %s: not a.b.c.d:port or [IPv6]:port", t->bind_address);
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

/* consensus_tcp_listener_closed_cb - the listener's close callback. */
static void consensus_tcp_listener_closed_cb(uv_handle_t *h)
{
    struct consensus_tcp *t = h->data;
    t->n_handles--;
    consensus_tcp_maybe_closed(t);
}

/* consensus_tcp_close_cb - raft closes the transport: listener, connections, connects. */
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
    /* Pending connects report RAFT_CANCELED from their close callbacks. */
    while (t->outs != NULL)
        consensus_tcp_out_close(t->outs, RAFT_CANCELED);
    /* Nothing open (raft closed before listening): report at once, as libraft's transport did. */
    consensus_tcp_maybe_closed(t);
}

/* consensus_tcp_init - see consensus_tcp.h. */
int consensus_tcp_init(struct consensus_tcp *t,
                       uv_loop_t *loop,
                       const struct consensus_wire_limits *limits,
                       struct cluster_tls *tls)
{
    memset(t, 0, sizeof(*t));
    t->loop = loop;
    t->tls = tls;
    t->limits = *limits;
    t->handshake_ms = CONSENSUS_TCP_HANDSHAKE_MS;
    t->max_conns = CONSENSUS_TCP_MAX_CONNS;
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
    struct sockaddr_storage addr;
    if (strlen(address) >= sizeof(t->bind_address) || consensus_tcp_parse(address, &addr) != 0)
        return RAFT_INVALID;
    hamr_strlcpy(t->bind_address, address, sizeof(t->bind_address));
    return 0;
}
