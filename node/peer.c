/*
 * peer.c - the peer channel: pipelined hamr.PeerMsg RPC between nodes over
 * libuv TCP, through mutual TLS or in the clear (net/tls_stream), server
 * (the leader answers; every node serves body chunks) and client (followers
 * forward; a node lacking bodies fetches them).
 *
 * Server happy path: accept -> TLS handshake (the certificate names the
 * caller's node) -> read frames -> hello checked against the certificate
 * (plaintext: taken as the caller's node id) -> each propose/query/fetch becomes a
 * peer_call handed to the handler -> (now or later, in any order) peer_reply
 * -> the answer is queued for writing.
 *
 * Client happy path: peer_client_call -> connection to node at addr found
 * or opened (hello queued first) -> request frame queued (handed to the
 * stream once connected, where with TLS it waits for the handshake) -> TLS
 * handshake: the server's certificate names node -> the frames go out -> the
 * call waits in a req_id hash and a deadline list -> the answer is matched
 * by req_id -> cb(0, res).
 *
 * Identity failures (TLS): the server closes a connection whose handshake
 * fails (no certificate, another CA's, not a node's) or whose hello names
 * another node than its certificate, logs the address, the claim, the
 * certificate's identity and the reason, and counts it (peer_server_stats);
 * the client closes, unsent, a connection whose server is another node than
 * the one meant, and its calls fail with HAMR_ECONNECT.
 *
 * Failure modes:
 *   - a frame header announcing more than PROTO_PEER_MAX, a frame that does
 *     not decode, or a PeerMsg with an unexpected body (server: anything but
 *     hello first, propose, query, fetch; client: anything but result): the
 *     connection is closed and the reason logged;
 *   - server: the client goes away while calls are with the handler: they
 *     are orphaned (call->conn = NULL) and peer_reply only frees them; a
 *     client whose requests held by the handler pass PEER_HELD_MAX bytes or
 *     PEER_HELD_CALLS_MAX calls is not read from until answers go out (what
 *     one read already brought in is still handled);
 *   - client: connect (with TLS, connect and handshake) fails or takes
 *     longer than the connect timeout, or the connection breaks: its calls
 *     fail with HAMR_ECONNECT when its handle has closed, and the next call
 *     to that address opens a new connection;
 *   - client: no answer by the call's deadline: HAMR_ETIMEDOUT, and a late
 *     answer finds no call and is dropped. One timer per client serves every
 *     deadline (the list is kept sorted) and every connect timeout;
 *   - more than PEER_QUEUE_MAX bytes waiting to be written on a connection:
 *     new client calls fail with HAMR_EBUSY; a server whose answers pile up
 *     (the client does not read) closes the connection.
 *
 * Owns: the listener (a net/tcp_server, which also caps the server's
 * connections at PEER_MAX_CONNS and refuses a client it gets no memory
 * for), every connection (its uv_tcp_t embedded, its tls_stream, both freed
 * in the close callback), every frame until its write callback, server
 * calls until peer_reply, client calls until their callback has run.
 *
 * Security: parses untrusted network input. A frame's length is checked
 * before its body is buffered, and the body buffer grows with the bytes that
 * actually arrive, up to that length; protobuf-c checks the rest. Text from
 * the peer (its version) is logged through log_printable. With TLS no frame
 * is read before the handshake has shown a node certificate of the cluster
 * CA, and the handshake is under the same deadline as the hello.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto_frame.h"
#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/cluster_tls.h"
#include "net/tcp_server.h"
#include "net/tls_stream.h"

#include "node/peer.h"

#define PEER_READ_CHUNK 65536
#define PEER_READER_KEEP (1024 * 1024) /* a larger body buffer is freed after its frame */
#define PEER_ADDR_MAX 64               /* "[v6]:port" fits */
#define PEER_KEEPALIVE_S 30
#define PEER_HASH_MIN 64

/* ------------------------------------------------------------------------ */
/* Frames and links: what both sides share.                                 */
/* ------------------------------------------------------------------------ */

struct peer_link;

/* peer_frame - one packed frame; owned by its link from its write until the callback. */
struct peer_frame {
    struct peer_link *link;
    struct peer_frame *next; /* in a client connection's pre-connect queue */
    size_t len;              /* 4 + body */
    uint8_t data[];
};

/* peer_reader - reassembles one frame at a time from the byte stream. */
struct peer_reader {
    uint8_t hdr[4];
    size_t hdr_len; /* header bytes seen */
    size_t need;    /* body length, once hdr_len == 4 */
    struct buf body;
};

/*
 * peer_link - a TCP connection carrying frames, through TLS or in the clear
 * (net/tls_stream), embedded in a server or a client connection. on_frame
 * gets each whole frame; handshake is told the TLS handshake's outcome
 * (identity checks, TLS only); broken is told why the link must close (it
 * closes it). The link is found from its handle with hamr_container_of: the
 * handle's data belongs to the connection's owner (tcp_server on the server
 * side).
 */
struct peer_link {
    struct tls_stream_handle h; /* h.u.tcp: the socket */
    struct tls_stream *ts;      /* NULL until the socket is connected or accepted */
    struct peer_reader rd;
    size_t queued; /* bytes of frames not yet written */
    bool closing;
    void (*on_frame)(struct peer_link *l, const uint8_t *p, size_t n);
    void (*handshake)(struct peer_link *l, int status);
    /* broken - close the link; uverr is a UV_E* code, or 0 with len the offending frame length. */
    void (*broken)(struct peer_link *l, const char *why, int uverr, size_t len);
    char rbuf[PEER_READ_CHUNK];
};

/* peer_frame_new - pack m behind its length prefix. HAMR_ETOOBIG, HAMR_ENOMEM. */
static int peer_frame_new(const Hamr__PeerMsg *m, struct peer_frame **out)
{
    size_t n = hamr__peer_msg__get_packed_size(m);
    if (n > PROTO_PEER_MAX)
        return HAMR_ETOOBIG;
    struct peer_frame *f = malloc(sizeof(*f) + 4 + n);
    if (f == NULL)
        return HAMR_ENOMEM;
    memset(f, 0, sizeof(*f));
    f->len = 4 + n;
    proto_u32_put(f->data, (uint32_t)n);
    hamr__peer_msg__pack(m, f->data + 4);
    *out = f;
    return 0;
}

/* peer_reader_init - empty reader. */
static void peer_reader_init(struct peer_reader *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->body, 0);
}

/*
 * peer_reader_feed - take bytes from p (n of them) up to the end of the
 * current frame; *used tells how many. Returns 1 when a whole frame is in
 * r->body, 0 when more is needed, HAMR_ETOOBIG for a header over
 * PROTO_PEER_MAX, HAMR_ENOMEM.
 */
static int peer_reader_feed(struct peer_reader *r, const uint8_t *p, size_t n, size_t *used)
{
    size_t off = 0;
    *used = 0;
    if (r->hdr_len < 4) {
        size_t k = 4 - r->hdr_len < n ? 4 - r->hdr_len : n;
        memcpy(r->hdr + r->hdr_len, p, k);
        r->hdr_len += k;
        off = k;
        *used = off;
        if (r->hdr_len < 4)
            return 0;
        uint32_t len = proto_u32_get(r->hdr);
        if (len > PROTO_PEER_MAX)
            return HAMR_ETOOBIG;
        /* The body grows with what arrives, never past the announced length. */
        r->need = len;
        r->body.limit = len > 0 ? len : 1;
    }
    size_t k = r->need - r->body.len < n - off ? r->need - r->body.len : n - off;
    if (k > 0) {
        int rv = buf_append(&r->body, p + off, k);
        if (rv != 0)
            return rv;
        off += k;
    }
    *used = off;
    return r->body.len == r->need ? 1 : 0;
}

/* peer_reader_next - forget the frame just handled. */
static void peer_reader_next(struct peer_reader *r)
{
    r->hdr_len = 0;
    r->need = 0;
    if (r->body.cap > PEER_READER_KEEP)
        buf_free(&r->body);
    else
        buf_reset(&r->body);
}

/* peer_link_init - set up the reader in zeroed memory the caller owns; the handle is the caller's
 * to initialise. */
static void peer_link_init(
    struct peer_link *l,
    void (*on_frame)(struct peer_link *l, const uint8_t *p, size_t n),
    void (*handshake)(struct peer_link *l, int status),
    void (*broken)(struct peer_link *l, const char *why, int uverr, size_t len))
{
    peer_reader_init(&l->rd);
    l->on_frame = on_frame;
    l->handshake = handshake;
    l->broken = broken;
}

/* peer_link_write_cb - a frame is out (or cancelled): release it. */
static void peer_link_write_cb(void *arg, int status)
{
    struct peer_frame *f = arg;
    struct peer_link *l = f->link;
    l->queued -= f->len;
    free(f);
    if (status < 0 && status != UV_ECANCELED && !l->closing)
        l->broken(l, "write failed", status, 0);
}

/*
 * peer_link_write - hand f to the stream (with TLS it waits there for the
 * handshake); f is owned by the link from here on, also on failure.
 */
static int peer_link_write(struct peer_link *l, struct peer_frame *f)
{
    f->link = l;
    int rv = tls_stream_write(l->ts, f->data, f->len, peer_link_write_cb, f);
    if (rv != 0) {
        l->queued -= f->len;
        free(f);
        return rv;
    }
    /* Asynchronous processing continues in peer_link_write_cb. */
    return 0;
}

/* peer_link_alloc_cb - plaintext lands in the link's fixed chunk. */
static void peer_link_alloc_cb(void *data, uv_buf_t *b)
{
    struct peer_link *l = data;
    b->base = l->rbuf;
    b->len = sizeof(l->rbuf);
}

/* peer_link_handshake_cb - TLS is up (the context checked the chain) or failed. */
static void peer_link_handshake_cb(void *data, int status)
{
    struct peer_link *l = data;
    if (!l->closing)
        l->handshake(l, status);
}

/* peer_link_read_cb - cut the input into frames and hand each to on_frame. */
static void peer_link_read_cb(void *data, ssize_t nread, const uv_buf_t *b)
{
    struct peer_link *l = data;
    if (nread == 0 || l->closing)
        return;
    if (nread < 0) {
        const char *why = nread == UV_EOF      ? "closed by peer"
                          : nread == UV_EPROTO ? tls_stream_error(l->ts)
                                               : "read failed";
        l->broken(l, why, (int)nread, 0);
        return;
    }
    const uint8_t *p = (const uint8_t *)b->base;
    size_t n = (size_t)nread;
    while (n > 0 && !l->closing) {
        size_t used;
        int rv = peer_reader_feed(&l->rd, p, n, &used);
        p += used;
        n -= used;
        if (rv == HAMR_ETOOBIG) {
            l->broken(l, "frame too large", 0, proto_u32_get(l->rd.hdr));
            return;
        }
        if (rv < 0) {
            l->broken(l, "out of memory", UV_ENOMEM, 0);
            return;
        }
        if (rv == 1) {
            l->on_frame(l, l->rd.body.data, l->rd.body.len);
            peer_reader_next(&l->rd);
        }
    }
}

/*
 * peer_link_start - the socket is connected or accepted: the stream over it
 * (ctx NULL: plaintext), reading started (a TLS client sends its hello). 0
 * or a UV_E* code.
 */
static int peer_link_start(struct peer_link *l, SSL_CTX *ctx, bool server)
{
    const struct tls_stream_ops ops = {.data = l,
                                       .alloc_cb = peer_link_alloc_cb,
                                       .read_cb = peer_link_read_cb,
                                       .handshake_cb = peer_link_handshake_cb};
    int rv = tls_stream_init(&l->ts, &l->h, ctx, server, &ops);
    if (rv != 0)
        return rv == HAMR_ENOMEM ? UV_ENOMEM : UV_EPROTO;
    return tls_stream_read_start(l->ts);
}

/* peer_link_free - from the handle's close callback: the stream (whose waiting frames are freed
 * through their callbacks) and the reader. */
static void peer_link_free(struct peer_link *l)
{
    tls_stream_free(l->ts);
    l->ts = NULL;
    buf_free(&l->rd.body);
}

/* peer_sockaddr_name - "ip:port" or "[v6]:port" of sa into out. */
static void peer_sockaddr_name(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        uv_ip6_name(s6, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%u", ip, (unsigned)ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        uv_ip4_name(s4, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%u", ip, (unsigned)ntohs(s4->sin_port));
    }
}

/*
 * peer_parse_addr - "a.b.c.d:port" or "[v6]:port" into ss. raft 0.15 speaks
 * IPv4 only, but the channel itself does not care. HAMR_EINVAL.
 */
static int peer_parse_addr(const char *addr, struct sockaddr_storage *ss)
{
    char host[PEER_ADDR_MAX];
    const char *port;
    size_t len = strlen(addr);
    if (len == 0 || len >= sizeof(host))
        return HAMR_EINVAL;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (end == NULL || end[1] != ':')
            return HAMR_EINVAL;
        memcpy(host, addr + 1, (size_t)(end - addr - 1));
        host[end - addr - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(addr, ':');
        if (colon == NULL || memchr(addr, ':', (size_t)(colon - addr)) != NULL)
            return HAMR_EINVAL;
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        port = colon + 1;
    }
    unsigned long pn = 0;
    if (*port == '\0' || strlen(port) > 5)
        return HAMR_EINVAL;
    for (const char *q = port; *q != '\0'; q++) {
        if (*q < '0' || *q > '9')
            return HAMR_EINVAL;
        pn = pn * 10 + (unsigned long)(*q - '0');
    }
    if (pn == 0 || pn > 65535)
        return HAMR_EINVAL;
    memset(ss, 0, sizeof(*ss));
    if (addr[0] == '[')
        return uv_ip6_addr(host, (int)pn, (struct sockaddr_in6 *)ss) == 0 ? 0 : HAMR_EINVAL;
    return uv_ip4_addr(host, (int)pn, (struct sockaddr_in *)ss) == 0 ? 0 : HAMR_EINVAL;
}

/* ------------------------------------------------------------------------ */
/* Server.                                                                  */
/* ------------------------------------------------------------------------ */

struct peer_server {
    struct tcp_server *tcp;   /* the listener and the connections' handles */
    struct cluster_tls *ctls; /* NULL: plaintext */
    struct peer_server_stats stats;
    struct peer_handler handler;
    size_t held_max; /* per connection, see peer_sconn_over */
    size_t held_calls_max;
    uint64_t hello_ms; /* a connection must say hello within this */
    uint64_t idle_ms;  /* a connection with nothing pending and no frame this long is closed */
    bool closing;
};

/* peer_sconn - one accepted connection; freed in its handle's close callback. */
struct peer_sconn {
    struct peer_link link;
    struct tcp_server_conn base;
    struct peer_server *srv;
    struct peer_call *calls; /* with the handler; doubly linked */
    size_t n_calls;
    size_t held; /* request bytes of those calls */
    bool hello_seen;
    bool requests_seen;
    bool paused;         /* reading stopped for backpressure */
    uint64_t node_id;    /* the certificate's (TLS), else the hello's; 0 until known */
    uv_timer_t timer;    /* the hello deadline (TLS handshake included), then the idle check */
    uint64_t last_frame; /* uv_now of the last whole frame */
    char name[PEER_ADDR_MAX];
};

/* peer_call - one request with the handler. */
struct peer_call {
    struct peer_sconn *conn; /* NULL once the connection has gone */
    struct peer_call *prev, *next;
    Hamr__PeerMsg *msg;
    uint64_t req_id;
    uint64_t node_id;
    size_t size; /* frame body bytes, counted in conn->held */
};

static void peer_sconn_close(struct peer_sconn *conn);

/* peer_sconn_close - idempotent; orphans the calls still with the handler. */
static void peer_sconn_close(struct peer_sconn *conn)
{
    if (conn->link.closing)
        return;
    conn->link.closing = true;
    if (conn->n_calls > 0)
        log_info("peer connection closed peer=%s node=%" PRIu64 " unanswered=%zu", conn->name,
                 conn->node_id, conn->n_calls);
    for (struct peer_call *call = conn->calls; call != NULL; call = call->next)
        call->conn = NULL;
    conn->calls = NULL;
    conn->n_calls = 0;
    conn->held = 0;
    tcp_server_conn_close(&conn->base);
}

/* peer_sconn_broken - the link must go; log why. */
static void peer_sconn_broken(struct peer_link *l, const char *why, int uverr, size_t len)
{
    struct peer_sconn *conn = hamr_container_of(l, struct peer_sconn, link);
    if (uverr == UV_EOF || uverr == UV_ECONNRESET)
        log_debug("peer connection ended peer=%s node=%" PRIu64 " reason=\"%s\"", conn->name,
                  conn->node_id, why);
    else if (uverr < 0)
        log_warn("peer connection closed peer=%s node=%" PRIu64 " reason=\"%s\" err=%s", conn->name,
                 conn->node_id, why, uv_err_name(uverr));
    else
        log_warn("peer connection closed peer=%s node=%" PRIu64 " reason=\"%s\" len=%zu",
                 conn->name, conn->node_id, why, len);
    peer_sconn_close(conn);
}

/*
 * peer_sconn_handshake - TLS is up or failed. Up: the certificate chains to
 * the cluster CA (the context checked); it must name a node, and that node
 * is the caller from here on. Failed or not a node's: closed, logged with
 * the reason, counted.
 */
static void peer_sconn_handshake(struct peer_link *l, int status)
{
    struct peer_sconn *conn = hamr_container_of(l, struct peer_sconn, link);
    struct peer_server *s = conn->srv;
    if (status < 0) {
        s->stats.tls++;
        if (status == UV_EPROTO)
            log_warn("peer connection refused peer=%s reason=\"TLS handshake failed\" error=\"%s\"",
                     conn->name, tls_stream_error(l->ts));
        else
            log_info(
                "peer connection refused peer=%s reason=\"ended during the TLS handshake\" "
                "err=%s",
                conn->name, uv_err_name(status));
        peer_sconn_close(conn);
        return;
    }
    struct cluster_tls_identity id;
    if (cluster_tls_peer(tls_stream_tls(l->ts), &id) != 0 || id.role != CLUSTER_TLS_NODE) {
        char who[CLUSTER_TLS_NAME_MAX + 16];
        s->stats.tls++;
        log_warn("peer connection refused peer=%s cert=%s reason=\"certificate is not a node's\"",
                 conn->name, cluster_tls_identity_name(&id, who, sizeof(who)));
        peer_sconn_close(conn);
        return;
    }
    conn->node_id = id.node_id;
    log_debug("peer TLS up peer=%s cert=node:%" PRIu64, conn->name, id.node_id);
}

/* peer_sconn_over - is the handler holding too much of this connection's input? */
static bool peer_sconn_over(const struct peer_sconn *conn)
{
    return conn->held > conn->srv->held_max || conn->n_calls >= conn->srv->held_calls_max;
}

static void peer_sconn_timer_cb(uv_timer_t *t);

/*
 * peer_sconn_hello - record who is calling. With TLS the hello must name the
 * node the certificate names (conn->node_id since the handshake): a node
 * may not speak for another: refused, closed, logged and counted.
 */
static void peer_sconn_hello(struct peer_sconn *conn, const Hamr__PeerHello *hello)
{
    char version[PEER_VERSION_MAX];
    const char *v = hello->version != NULL ? hello->version : "";
    struct peer_server *s = conn->srv;
    if (tls_stream_tls(conn->link.ts) != NULL && hello->node_id != conn->node_id) {
        s->stats.identity++;
        log_warn("peer connection refused peer=%s node=%" PRIu64 " cert=node:%" PRIu64
                 " reason=\"hello names another node than the certificate\"",
                 conn->name, hello->node_id, conn->node_id);
        peer_sconn_close(conn);
        return;
    }
    s->stats.accepted++;
    conn->hello_seen = true;
    conn->node_id = hello->node_id;
    uv_timer_start(&conn->timer, peer_sconn_timer_cb, conn->srv->idle_ms, 0);
    log_info("peer hello peer=%s node=%" PRIu64 " version=%s format_max=%u", conn->name,
             hello->node_id, log_printable(version, sizeof(version), v, strlen(v)),
             (unsigned)hello->format_version_max);
}

/* peer_sconn_frame - one whole frame from a client: hello, or a request for the handler. */
static void peer_sconn_frame(struct peer_link *l, const uint8_t *p, size_t n)
{
    struct peer_sconn *conn = hamr_container_of(l, struct peer_sconn, link);
    conn->last_frame = uv_now(conn->link.h.u.tcp.loop);
    Hamr__PeerMsg *msg = hamr__peer_msg__unpack(NULL, n, p);
    if (msg == NULL) {
        peer_sconn_broken(l, "undecodable frame", 0, n);
        return;
    }
    switch (msg->body_case) {
        case HAMR__PEER_MSG__BODY_HELLO:
            if (conn->hello_seen || conn->requests_seen) {
                hamr__peer_msg__free_unpacked(msg, NULL);
                peer_sconn_broken(l, "unexpected hello", 0, n);
                return;
            }
            peer_sconn_hello(conn, msg->hello);
            hamr__peer_msg__free_unpacked(msg, NULL);
            return;
        case HAMR__PEER_MSG__BODY_PROPOSE:
        case HAMR__PEER_MSG__BODY_QUERY:
        case HAMR__PEER_MSG__BODY_FETCH:
        case HAMR__PEER_MSG__BODY_REPORT:
            break;
        default:
            hamr__peer_msg__free_unpacked(msg, NULL);
            peer_sconn_broken(l, "unexpected message body", 0, n);
            return;
    }
    struct peer_call *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        hamr__peer_msg__free_unpacked(msg, NULL);
        peer_sconn_broken(l, "out of memory", UV_ENOMEM, 0);
        return;
    }
    conn->requests_seen = true;
    call->conn = conn;
    call->msg = msg;
    call->req_id = msg->req_id;
    call->node_id = conn->node_id;
    call->size = n;
    call->next = conn->calls;
    if (conn->calls != NULL)
        conn->calls->prev = call;
    conn->calls = call;
    conn->n_calls++;
    conn->held += n;
    if (!conn->paused && peer_sconn_over(conn)) {
        /* Backpressure: the handler owns enough of this client's input. */
        conn->paused = true;
        tls_stream_read_stop(conn->link.ts);
        log_info("peer reading paused peer=%s held=%zu calls=%zu", conn->name, conn->held,
                 conn->n_calls);
    }
    struct peer_server *s = conn->srv;
    if (msg->body_case != HAMR__PEER_MSG__BODY_FETCH) {
        s->handler.request(s->handler.data, call, msg);
    } else if (s->handler.fetch != NULL) {
        s->handler.fetch(s->handler.data, call, msg->fetch);
    } else {
        /* A node that keeps no bodies (or a handler that does not serve them) has none. */
        Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
        res.status = HAMR_ENOTFOUND;
        peer_reply(call, &res);
    }
    /* The answer may come from inside the handler or later, in any order. */
}

/* peer_sconn_resume - answers went out: read again if reading was paused. */
static void peer_sconn_resume(struct peer_sconn *conn)
{
    if (!conn->paused || peer_sconn_over(conn))
        return;
    conn->paused = false;
    int rv = tls_stream_read_start(conn->link.ts);
    if (rv != 0)
        peer_sconn_broken(&conn->link, "read restart failed", rv, 0);
}

/* peer_call_node - the caller's node id: its certificate's (TLS), else its hello's; 0 if none. */
uint64_t peer_call_node(const struct peer_call *call)
{
    return call->node_id;
}

/* peer_call_free - release a call and its request. */
static void peer_call_free(struct peer_call *call)
{
    hamr__peer_msg__free_unpacked(call->msg, NULL);
    free(call);
}

/* peer_reply - answer call and free it. */
int peer_reply(struct peer_call *call, const Hamr__PeerResult *res)
{
    struct peer_sconn *conn = call->conn;
    uint64_t req_id = call->req_id;
    if (conn != NULL) {
        if (call->prev != NULL)
            call->prev->next = call->next;
        else
            conn->calls = call->next;
        if (call->next != NULL)
            call->next->prev = call->prev;
        conn->n_calls--;
        conn->held -= call->size;
    }
    peer_call_free(call);
    if (conn == NULL)
        return 0; /* the caller went away; nobody to answer */

    Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
    m.req_id = req_id;
    m.body_case = HAMR__PEER_MSG__BODY_RESULT;
    m.result = (Hamr__PeerResult *)res; /* only read by the packer */
    struct peer_frame *f = NULL;
    int rv = peer_frame_new(&m, &f);
    if (rv == 0 && conn->link.queued + f->len > PEER_QUEUE_MAX) {
        free(f);
        rv = HAMR_EBUSY;
    }
    if (rv == 0) {
        conn->link.queued += f->len;
        int uvrv = peer_link_write(&conn->link, f);
        if (uvrv != 0) {
            peer_sconn_broken(&conn->link, "write failed", uvrv, 0);
            return HAMR_EIO;
        }
        peer_sconn_resume(conn);
        return 0;
    }
    log_warn("peer answer not sent peer=%s req_id=%" PRIu64 " err=%s", conn->name, req_id,
             hamr_errname(rv));
    peer_sconn_close(conn);
    return rv;
}

/* peer_sconn_alloc_cb - memory for one client (tcp_server initialises the socket). */
static struct tcp_server_conn *peer_sconn_alloc_cb(void *data, uv_tcp_t **tcp)
{
    struct peer_sconn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return NULL;
    peer_link_init(&conn->link, peer_sconn_frame, peer_sconn_handshake, peer_sconn_broken);
    conn->srv = data;
    hamr_strlcpy(conn->name, "?", sizeof(conn->name));
    *tcp = &conn->link.h.u.tcp;
    return &conn->base;
}

/*
 * peer_sconn_timer_cb - no hello by the deadline, or idle (no frame for
 * idle_ms and nothing with the handler): close, so that a stranger or a
 * forgotten client cannot hold one of the PEER_MAX_CONNS places a node needs.
 */
static void peer_sconn_timer_cb(uv_timer_t *t)
{
    struct peer_sconn *conn = hamr_container_of(t, struct peer_sconn, timer);
    struct peer_server *s = conn->srv;
    if (!conn->hello_seen) {
        s->stats.timed_out++;
        log_warn("peer connection closed peer=%s reason=\"no %s within %" PRIu64 "ms\"", conn->name,
                 tls_stream_handshaken(conn->link.ts) ? "hello" : "TLS handshake", s->hello_ms);
        peer_sconn_close(conn);
        return;
    }
    uint64_t now = uv_now(t->loop);
    uint64_t quiet = now - conn->last_frame;
    if (conn->n_calls == 0 && quiet >= s->idle_ms) {
        log_info("peer connection closed peer=%s node=%" PRIu64 " reason=idle", conn->name,
                 conn->node_id);
        peer_sconn_close(conn);
        return;
    }
    uv_timer_start(t, peer_sconn_timer_cb, quiet >= s->idle_ms ? s->idle_ms : s->idle_ms - quiet,
                   0);
}

/* peer_sconn_accept_cb - a client is accepted: name it, start reading frames. */
static void peer_sconn_accept_cb(void *data, struct tcp_server_conn *base)
{
    struct peer_sconn *conn = hamr_container_of(base, struct peer_sconn, base);
    (void)data;
    struct peer_server *s = conn->srv;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&conn->link.h.u.tcp, (struct sockaddr *)&ss, &len) == 0)
        peer_sockaddr_name((struct sockaddr *)&ss, conn->name, sizeof(conn->name));
    uv_tcp_nodelay(&conn->link.h.u.tcp, 1);
    uv_tcp_keepalive(&conn->link.h.u.tcp, 1, PEER_KEEPALIVE_S);
    tcp_server_conn_timer_init(base, &conn->timer);
    conn->last_frame = uv_now(conn->link.h.u.tcp.loop);
    /* The deadline covers the TLS handshake too: a stranger that never
     * finishes it holds a place no longer than one that never says hello. */
    uv_timer_start(&conn->timer, peer_sconn_timer_cb, s->hello_ms, 0);
    int rv = peer_link_start(&conn->link, s->ctls != NULL ? cluster_tls_server_ctx(s->ctls) : NULL,
                             true);
    if (rv != 0) {
        peer_sconn_broken(&conn->link, "start failed", rv, 0);
        return;
    }
    log_debug("peer connection accepted peer=%s", conn->name);
}

/* peer_sconn_shutdown_cb - peer_server_close: close this connection. */
static void peer_sconn_shutdown_cb(void *data, struct tcp_server_conn *base)
{
    (void)data;
    peer_sconn_close(hamr_container_of(base, struct peer_sconn, base));
}

/* peer_sconn_free_cb - the handle is closed: free the connection. */
static void peer_sconn_free_cb(void *data, struct tcp_server_conn *base)
{
    struct peer_sconn *conn = hamr_container_of(base, struct peer_sconn, base);
    (void)data;
    peer_link_free(&conn->link);
    free(conn);
}

/* peer_server_new - bind and listen on host:port. */
int peer_server_new(uv_loop_t *loop,
                    const char *host,
                    uint16_t port,
                    struct cluster_tls *ctls,
                    const struct peer_handler *h,
                    struct peer_server **out,
                    char *errmsg,
                    size_t errlen)
{
    struct peer_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(errmsg, errlen, "peer: out of memory");
        return HAMR_ENOMEM;
    }
    s->ctls = ctls;
    s->handler = *h;
    s->held_max = PEER_HELD_MAX;
    s->held_calls_max = PEER_HELD_CALLS_MAX;
    s->hello_ms = PEER_HELLO_TIMEOUT_MS;
    s->idle_ms = PEER_IDLE_TIMEOUT_MS;
    const struct tcp_server_config cfg = {.name = "peer",
                                          .host = host,
                                          .port = port,
                                          .backlog = 64,
                                          .max_conns = PEER_MAX_CONNS,
                                          .over = TCP_SERVER_CAP_CLOSE};
    const struct tcp_server_ops ops = {.data = s,
                                       .alloc_cb = peer_sconn_alloc_cb,
                                       .accept_cb = peer_sconn_accept_cb,
                                       .shutdown_cb = peer_sconn_shutdown_cb,
                                       .free_cb = peer_sconn_free_cb,
                                       .done_cb = free};
    int rv = tcp_server_new(loop, &cfg, &ops, &s->tcp, errmsg, errlen);
    if (rv != 0) {
        free(s);
        return rv;
    }
    *out = s;
    return 0;
}

/* peer_server_port - the bound port. */
uint16_t peer_server_port(const struct peer_server *s)
{
    return tcp_server_port(s->tcp);
}

/* peer_server_set_held_limit - when a connection stops being read. */
void peer_server_set_held_limit(struct peer_server *s, size_t bytes, size_t calls)
{
    s->held_max = bytes;
    s->held_calls_max = calls;
}

/* peer_server_set_timeouts - the hello deadline and the idle timeout, in ms. */
void peer_server_set_timeouts(struct peer_server *s, uint64_t hello_ms, uint64_t idle_ms)
{
    s->hello_ms = hello_ms;
    s->idle_ms = idle_ms;
}

/* peer_server_conns - open connections. */
size_t peer_server_conns(const struct peer_server *s)
{
    return tcp_server_conns(s->tcp);
}

/* peer_server_stats - what became of the connections accepted. */
void peer_server_stats(const struct peer_server *s, struct peer_server_stats *out)
{
    *out = s->stats;
}

/* peer_server_close - close the listener and all connections; idempotent. */
void peer_server_close(struct peer_server *s, void (*cb)(void *arg), void *arg)
{
    if (s->closing)
        return;
    s->closing = true;
    tcp_server_close(s->tcp, cb, arg); /* s is freed before the callback */
}

/* ------------------------------------------------------------------------ */
/* Client.                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * Every outstanding call is in three places: the req_id hash (to match its
 * answer), the client's deadline list (sorted by deadline, calls without one
 * at the end; also the list of everything to fail on close), and its
 * connection's list (to fail when that connection breaks). peer_pending_take
 * removes it from all three before its callback runs, so a callback may call
 * back into the client freely.
 */
struct peer_client {
    uv_loop_t *loop;
    struct cluster_tls *ctls; /* NULL: plaintext */
    struct peer_client_stats stats;
    uint64_t self_id;
    char version[PEER_VERSION_MAX];
    uint64_t connect_timeout_ms;
    size_t queue_limit;
    uv_timer_t timer;         /* the earliest deadline or connect timeout */
    struct peer_cconn *conns; /* doubly linked; closing ones are unlinked */
    size_t n_conns;           /* including closing ones */
    struct peer_pending **buckets;
    size_t n_buckets; /* a power of two */
    size_t n_pending;
    struct peer_pending *dl_head, *dl_tail;
    uint64_t next_req_id;
    bool closing;
    bool timer_closed;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

/* peer_cconn - the connection to one destination: a node at an address. */
struct peer_cconn {
    struct peer_link link;
    struct peer_client *client;
    struct peer_cconn *prev, *next;
    uv_connect_t connect;
    bool connected; /* TCP is up: frames go to the stream (with TLS they wait there) */
    bool ready;     /* and the TLS handshake is done with the node meant (plain: connected) */
    uint64_t connect_deadline; /* until ready */
    uint64_t node;             /* the node meant; with TLS its certificate must say so */
    struct peer_frame *wait_head, *wait_tail; /* frames queued before connecting */
    struct peer_pending *calls;               /* doubly linked */
    size_t n_calls;
    char addr[PEER_ADDR_MAX];
};

/* peer_pending - one call waiting for its answer. */
struct peer_pending {
    uint64_t req_id;
    uint64_t deadline; /* loop time in ms; UINT64_MAX: none */
    struct peer_cconn *conn;
    peer_result_cb cb;
    void *arg;
    struct peer_pending *hnext;         /* hash chain */
    struct peer_pending *dprev, *dnext; /* deadline list */
    struct peer_pending *cprev, *cnext; /* connection's list */
};

static void peer_cconn_close(struct peer_cconn *conn);
static void peer_client_arm(struct peer_client *c);

/* peer_client_bucket - the hash chain head for req_id. */
static struct peer_pending **peer_client_bucket(struct peer_client *c, uint64_t req_id)
{
    /* Fibonacci hashing: req_ids are sequential, the multiply spreads them. */
    uint64_t h = req_id * UINT64_C(0x9E3779B97F4A7C15);
    return &c->buckets[h >> 32 & (c->n_buckets - 1)];
}

/* peer_client_grow - double the hash table; on failure keep the longer chains. */
static void peer_client_grow(struct peer_client *c)
{
    size_t n = c->n_buckets * 2;
    struct peer_pending **nb = calloc(n, sizeof(*nb));
    if (nb == NULL)
        return;
    struct peer_pending **old = c->buckets;
    size_t old_n = c->n_buckets;
    c->buckets = nb;
    c->n_buckets = n;
    for (size_t i = 0; i < old_n; i++) {
        struct peer_pending *p = old[i];
        while (p != NULL) {
            struct peer_pending *next = p->hnext;
            struct peer_pending **b = peer_client_bucket(c, p->req_id);
            p->hnext = *b;
            *b = p;
            p = next;
        }
    }
    free(old);
}

/* peer_pending_add - register p in the hash, the deadline list and its connection. */
static void peer_pending_add(struct peer_client *c, struct peer_pending *p)
{
    if (c->n_pending >= 2 * c->n_buckets)
        peer_client_grow(c);
    struct peer_pending **b = peer_client_bucket(c, p->req_id);
    p->hnext = *b;
    *b = p;
    c->n_pending++;

    /* Most calls share one timeout, so the place is found at the tail. */
    struct peer_pending *after = c->dl_tail;
    while (after != NULL && after->deadline > p->deadline)
        after = after->dprev;
    p->dprev = after;
    p->dnext = after != NULL ? after->dnext : c->dl_head;
    if (p->dnext != NULL)
        p->dnext->dprev = p;
    else
        c->dl_tail = p;
    if (after != NULL)
        after->dnext = p;
    else
        c->dl_head = p;

    struct peer_cconn *conn = p->conn;
    p->cprev = NULL;
    p->cnext = conn->calls;
    if (conn->calls != NULL)
        conn->calls->cprev = p;
    conn->calls = p;
    conn->n_calls++;
}

/* peer_pending_take - unlink p from everything; the caller then runs and frees it. */
static void peer_pending_take(struct peer_client *c, struct peer_pending *p)
{
    struct peer_pending **b = peer_client_bucket(c, p->req_id);
    while (*b != p)
        b = &(*b)->hnext;
    *b = p->hnext;
    c->n_pending--;

    if (p->dprev != NULL)
        p->dprev->dnext = p->dnext;
    else
        c->dl_head = p->dnext;
    if (p->dnext != NULL)
        p->dnext->dprev = p->dprev;
    else
        c->dl_tail = p->dprev;

    struct peer_cconn *conn = p->conn;
    if (p->cprev != NULL)
        p->cprev->cnext = p->cnext;
    else
        conn->calls = p->cnext;
    if (p->cnext != NULL)
        p->cnext->cprev = p->cprev;
    conn->n_calls--;
    p->conn = NULL;
}

/* peer_pending_find - the call waiting for req_id, or NULL. */
static struct peer_pending *peer_pending_find(struct peer_client *c, uint64_t req_id)
{
    struct peer_pending *p = *peer_client_bucket(c, req_id);
    while (p != NULL && p->req_id != req_id)
        p = p->hnext;
    return p;
}

/* peer_pending_finish - run p's callback once and free it; p is already taken. */
static void peer_pending_finish(struct peer_pending *p, int status, const Hamr__PeerResult *res)
{
    peer_result_cb cb = p->cb;
    void *arg = p->arg;
    free(p);
    cb(arg, status, res);
}

/* peer_client_maybe_done - after peer_client_close, free c once every handle is gone. */
static void peer_client_maybe_done(struct peer_client *c)
{
    if (!c->closing || !c->timer_closed || c->n_conns > 0)
        return;
    void (*cb)(void *) = c->closed_cb;
    void *arg = c->closed_arg;
    free(c->buckets);
    free(c);
    if (cb != NULL)
        cb(arg);
}

/* peer_cconn_closed_cb - the handle is closed: fail the calls left, free the connection. */
static void peer_cconn_closed_cb(uv_handle_t *h)
{
    struct peer_cconn *conn = hamr_container_of(h, struct peer_cconn, link.h.u.tcp);
    struct peer_client *c = conn->client;
    /* Calls fail here, not in peer_cconn_close, so that a connection that
     * breaks inside peer_client_call never runs a callback from there. */
    while (conn->calls != NULL) {
        struct peer_pending *p = conn->calls;
        peer_pending_take(c, p);
        peer_pending_finish(p, HAMR_ECONNECT, NULL);
    }
    struct peer_frame *f = conn->wait_head;
    while (f != NULL) {
        struct peer_frame *next = f->next;
        free(f);
        f = next;
    }
    peer_link_free(&conn->link);
    free(conn);
    c->n_conns--;
    if (c->closing)
        peer_client_maybe_done(c);
    else
        peer_client_arm(c);
}

/* peer_cconn_close - idempotent; the calls fail once the handle has closed. */
static void peer_cconn_close(struct peer_cconn *conn)
{
    if (conn->link.closing)
        return;
    struct peer_client *c = conn->client;
    conn->link.closing = true;
    /* Unlinked now, so the next call to this address opens a new connection. */
    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        c->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    conn->prev = conn->next = NULL;
    uv_close((uv_handle_t *)&conn->link.h.u.tcp, peer_cconn_closed_cb);
}

/* peer_cconn_broken - the link must go; log why. */
static void peer_cconn_broken(struct peer_link *l, const char *why, int uverr, size_t len)
{
    struct peer_cconn *conn = hamr_container_of(l, struct peer_cconn, link);
    if (uverr < 0)
        log_msg(conn->n_calls > 0 || uverr == UV_EPROTO ? LOG_LEVEL_WARN : LOG_LEVEL_INFO,
                "peer connection lost addr=%s node=%" PRIu64 " reason=\"%s\" err=%s calls=%zu",
                conn->addr, conn->node, why, uv_err_name(uverr), conn->n_calls);
    else
        log_warn("peer connection lost addr=%s node=%" PRIu64 " reason=\"%s\" len=%zu calls=%zu",
                 conn->addr, conn->node, why, len, conn->n_calls);
    peer_cconn_close(conn);
}

/*
 * peer_cconn_handshake - TLS is up or failed. Up: the server's certificate
 * chains to the cluster CA (the context checked); it must also be the node
 * this connection was opened to reach, or nothing is sent (the hello and the
 * requests wait in the stream until this returns) and the calls fail.
 */
static void peer_cconn_handshake(struct peer_link *l, int status)
{
    struct peer_cconn *conn = hamr_container_of(l, struct peer_cconn, link);
    if (status < 0) {
        conn->client->stats.tls++;
        peer_cconn_broken(l, status == UV_EPROTO ? tls_stream_error(l->ts) : "TLS handshake failed",
                          status, 0);
        return;
    }
    struct cluster_tls_identity id;
    if (cluster_tls_peer(tls_stream_tls(l->ts), &id) != 0 || id.role != CLUSTER_TLS_NODE ||
        id.node_id != conn->node) {
        char who[CLUSTER_TLS_NAME_MAX + 16];
        conn->client->stats.identity++;
        log_warn("peer server refused addr=%s node=%" PRIu64
                 " cert=%s reason=\"certificate is not the node's this connection is for\" "
                 "calls=%zu",
                 conn->addr, conn->node, cluster_tls_identity_name(&id, who, sizeof(who)),
                 conn->n_calls);
        peer_cconn_close(conn);
        return;
    }
    conn->ready = true;
    log_debug("peer TLS up addr=%s cert=node:%" PRIu64, conn->addr, id.node_id);
    peer_client_arm(conn->client); /* the connect deadline is met */
}

/* peer_cconn_frame - one whole frame from a server: an answer to match. */
static void peer_cconn_frame(struct peer_link *l, const uint8_t *p, size_t n)
{
    struct peer_cconn *conn = hamr_container_of(l, struct peer_cconn, link);
    struct peer_client *c = conn->client;
    Hamr__PeerMsg *msg = hamr__peer_msg__unpack(NULL, n, p);
    if (msg == NULL) {
        peer_cconn_broken(l, "undecodable frame", 0, n);
        return;
    }
    if (msg->body_case != HAMR__PEER_MSG__BODY_RESULT) {
        hamr__peer_msg__free_unpacked(msg, NULL);
        peer_cconn_broken(l, "unexpected message body", 0, n);
        return;
    }
    struct peer_pending *pp = peer_pending_find(c, msg->req_id);
    if (pp == NULL || pp->conn != conn) {
        /* Timed out already (or never asked here): the answer has nobody to go to. */
        log_debug("peer late answer dropped addr=%s req_id=%" PRIu64, conn->addr, msg->req_id);
        hamr__peer_msg__free_unpacked(msg, NULL);
        return;
    }
    bool was_head = pp == c->dl_head;
    peer_pending_take(c, pp);
    peer_pending_finish(pp, 0, msg->result);
    hamr__peer_msg__free_unpacked(msg, NULL);
    if (was_head && !c->closing)
        peer_client_arm(c);
}

/* peer_cconn_connect_cb - connected: flush the frames that waited, start reading. */
static void peer_cconn_connect_cb(uv_connect_t *req, int status)
{
    struct peer_cconn *conn = hamr_container_of(req, struct peer_cconn, connect);
    if (status == UV_ECANCELED || conn->link.closing)
        return;
    if (status < 0) {
        peer_cconn_broken(&conn->link, "connect failed", status, 0);
        return;
    }
    conn->connected = true;
    log_debug("peer connected addr=%s node=%" PRIu64, conn->addr, conn->node);
    struct peer_client *c = conn->client;
    int rv = peer_link_start(&conn->link, c->ctls != NULL ? cluster_tls_client_ctx(c->ctls) : NULL,
                             false);
    if (rv != 0) {
        peer_cconn_broken(&conn->link, "start failed", rv, 0);
        return;
    }
    conn->ready = c->ctls == NULL;
    while (conn->wait_head != NULL) {
        struct peer_frame *f = conn->wait_head;
        conn->wait_head = f->next;
        if (conn->wait_head == NULL)
            conn->wait_tail = NULL;
        rv = peer_link_write(&conn->link, f);
        if (rv != 0) {
            peer_cconn_broken(&conn->link, "write failed", rv, 0);
            return;
        }
    }
}

/* peer_cconn_send - write f now, or queue it until connected. */
static int peer_cconn_send(struct peer_cconn *conn, struct peer_frame *f)
{
    conn->link.queued += f->len;
    if (conn->connected)
        return peer_link_write(&conn->link, f);
    f->link = &conn->link;
    f->next = NULL;
    if (conn->wait_tail != NULL)
        conn->wait_tail->next = f;
    else
        conn->wait_head = f;
    conn->wait_tail = f;
    return 0;
}

/* peer_cconn_find - the open connection to node at addr, or NULL. */
static struct peer_cconn *peer_cconn_find(struct peer_client *c, uint64_t node, const char *addr)
{
    for (struct peer_cconn *conn = c->conns; conn != NULL; conn = conn->next)
        if (conn->node == node && strcmp(conn->addr, addr) == 0)
            return conn;
    return NULL;
}

/*
 * peer_cconn_open - a new connection to node at addr (already parsed into
 * ss), hello queued first. Only HAMR_ENOMEM fails here; a connect that fails
 * at once closes the connection, and its calls fail from the close callback.
 */
static int peer_cconn_open(struct peer_client *c,
                           uint64_t node,
                           const char *addr,
                           const struct sockaddr_storage *ss,
                           struct peer_cconn **out)
{
    struct peer_cconn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return HAMR_ENOMEM;
    Hamr__PeerHello hello = HAMR__PEER_HELLO__INIT;
    hello.node_id = c->self_id;
    hello.version = c->version;
    hello.format_version_max = PROTO_FORMAT_VERSION_MAX;
    Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
    m.body_case = HAMR__PEER_MSG__BODY_HELLO;
    m.hello = &hello;
    struct peer_frame *f = NULL;
    int rv = peer_frame_new(&m, &f);
    if (rv != 0) {
        free(conn);
        return rv;
    }
    uv_tcp_init(c->loop, &conn->link.h.u.tcp);
    peer_link_init(&conn->link, peer_cconn_frame, peer_cconn_handshake, peer_cconn_broken);
    conn->client = c;
    conn->node = node;
    hamr_strlcpy(conn->addr, addr, sizeof(conn->addr));
    conn->connect_deadline = uv_now(c->loop) + c->connect_timeout_ms;
    conn->next = c->conns;
    if (c->conns != NULL)
        c->conns->prev = conn;
    c->conns = conn;
    c->n_conns++;
    peer_cconn_send(conn, f);
    uv_tcp_nodelay(&conn->link.h.u.tcp, 1);
    uv_tcp_keepalive(&conn->link.h.u.tcp, 1, PEER_KEEPALIVE_S);
    rv = uv_tcp_connect(&conn->connect, &conn->link.h.u.tcp, (const struct sockaddr *)ss,
                        peer_cconn_connect_cb);
    if (rv != 0)
        peer_cconn_broken(&conn->link, "connect failed", rv, 0);
    /* Asynchronous processing continues in peer_cconn_connect_cb. */
    *out = conn;
    return 0;
}

/* peer_client_timer_cb - fail the calls past their deadline, drop slow connects. */
static void peer_client_timer_cb(uv_timer_t *t)
{
    struct peer_client *c = t->data;
    uint64_t now = uv_now(c->loop);
    while (c->dl_head != NULL && c->dl_head->deadline <= now) {
        struct peer_pending *p = c->dl_head;
        log_info("peer call timed out addr=%s req_id=%" PRIu64, p->conn->addr, p->req_id);
        peer_pending_take(c, p);
        peer_pending_finish(p, HAMR_ETIMEDOUT, NULL);
    }
    struct peer_cconn *conn = c->conns;
    while (conn != NULL) {
        struct peer_cconn *next = conn->next;
        if (!conn->ready && conn->connect_deadline <= now)
            peer_cconn_broken(&conn->link,
                              conn->connected ? "TLS handshake timed out" : "connect timed out",
                              UV_ETIMEDOUT, 0);
        conn = next;
    }
    if (!c->closing)
        peer_client_arm(c);
}

/* peer_client_arm - set the timer for the earliest deadline or connect timeout. */
static void peer_client_arm(struct peer_client *c)
{
    uint64_t next = c->dl_head != NULL ? c->dl_head->deadline : UINT64_MAX;
    for (struct peer_cconn *conn = c->conns; conn != NULL; conn = conn->next)
        if (!conn->ready && conn->connect_deadline < next)
            next = conn->connect_deadline;
    if (next == UINT64_MAX) {
        uv_timer_stop(&c->timer);
        return;
    }
    /* At least 1 ms: libuv 1.44 runs a 0 ms timer started from its own callback
     * again in the same pass, so a deadline the sweep left behind would spin. */
    uint64_t now = uv_now(c->loop);
    uv_timer_start(&c->timer, peer_client_timer_cb, next > now + 1 ? next - now : 1, 0);
}

/* peer_client_new - an idle client; connections open on demand. */
struct peer_client *peer_client_new(uv_loop_t *loop,
                                    uint64_t self_id,
                                    const char *version,
                                    struct cluster_tls *ctls)
{
    struct peer_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->buckets = calloc(PEER_HASH_MIN, sizeof(*c->buckets));
    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }
    c->n_buckets = PEER_HASH_MIN;
    c->loop = loop;
    c->ctls = ctls;
    c->self_id = self_id;
    hamr_strlcpy(c->version, version != NULL ? version : "", sizeof(c->version));
    c->connect_timeout_ms = PEER_CONNECT_TIMEOUT_MS;
    c->queue_limit = PEER_QUEUE_MAX;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    return c;
}

/* peer_client_set_connect_timeout - for connections opened from now on. */
void peer_client_set_connect_timeout(struct peer_client *c, uint64_t ms)
{
    c->connect_timeout_ms = ms;
}

/* peer_client_set_queue_limit - bytes queued per connection before HAMR_EBUSY. */
void peer_client_set_queue_limit(struct peer_client *c, size_t bytes)
{
    c->queue_limit = bytes;
}

/* peer_client_pending - calls waiting for their outcome. */
size_t peer_client_pending(const struct peer_client *c)
{
    return c->n_pending;
}

/* peer_client_stats - connections TLS ended. */
void peer_client_stats(const struct peer_client *c, struct peer_client_stats *out)
{
    *out = c->stats;
}

/* peer_client_call - queue one request to node at addr; the outcome comes through cb. */
int peer_client_call(struct peer_client *c,
                     uint64_t node,
                     const char *addr,
                     const Hamr__PeerMsg *req,
                     uint64_t timeout_ms,
                     peer_result_cb cb,
                     void *arg)
{
    if (c->closing)
        return HAMR_ESHUTDOWN;
    if ((req->body_case != HAMR__PEER_MSG__BODY_PROPOSE || req->propose == NULL) &&
        (req->body_case != HAMR__PEER_MSG__BODY_QUERY || req->query == NULL) &&
        (req->body_case != HAMR__PEER_MSG__BODY_FETCH || req->fetch == NULL) &&
        (req->body_case != HAMR__PEER_MSG__BODY_REPORT || req->report == NULL))
        return HAMR_EINVAL;
    if (c->ctls != NULL && node == 0)
        return HAMR_EINVAL; /* no certificate names node 0 */
    struct peer_cconn *conn = peer_cconn_find(c, node, addr);
    struct sockaddr_storage ss;
    if (conn == NULL && peer_parse_addr(addr, &ss) != 0)
        return HAMR_EINVAL;

    Hamr__PeerMsg m = *req;
    m.req_id = c->next_req_id + 1;
    struct peer_frame *f = NULL;
    int rv = peer_frame_new(&m, &f);
    if (rv != 0)
        return rv;
    struct peer_pending *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        free(f);
        return HAMR_ENOMEM;
    }
    if (conn == NULL && (rv = peer_cconn_open(c, node, addr, &ss, &conn)) != 0) {
        free(p);
        free(f);
        return rv;
    }
    if (conn->link.queued + f->len > c->queue_limit) {
        log_warn("peer queue full addr=%s queued=%zu", conn->addr, conn->link.queued);
        free(p);
        free(f);
        return HAMR_EBUSY;
    }
    c->next_req_id++;
    p->req_id = m.req_id;
    p->deadline = timeout_ms > 0 ? uv_now(c->loop) + timeout_ms : UINT64_MAX;
    p->conn = conn;
    p->cb = cb;
    p->arg = arg;
    peer_pending_add(c, p);
    rv = peer_cconn_send(conn, f);
    if (rv != 0)
        peer_cconn_broken(&conn->link, "write failed", rv, 0); /* p fails from the close callback */
    peer_client_arm(c);
    return 0;
}

/* peer_client_timer_closed_cb - the timer is gone. */
static void peer_client_timer_closed_cb(uv_handle_t *h)
{
    struct peer_client *c = h->data;
    c->timer_closed = true;
    peer_client_maybe_done(c);
}

/* peer_client_close - fail everything outstanding, close every handle; idempotent. */
void peer_client_close(struct peer_client *c, void (*cb)(void *arg), void *arg)
{
    if (c->closing)
        return;
    c->closing = true;
    c->closed_cb = cb;
    c->closed_arg = arg;
    if (c->n_pending > 0)
        log_info("peer client closing calls=%zu", c->n_pending);
    while (c->dl_head != NULL) {
        struct peer_pending *p = c->dl_head;
        peer_pending_take(c, p);
        peer_pending_finish(p, HAMR_ESHUTDOWN, NULL);
    }
    while (c->conns != NULL)
        peer_cconn_close(c->conns);
    uv_close((uv_handle_t *)&c->timer, peer_client_timer_closed_cb);
}
