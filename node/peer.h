/*
 * peer.h - the peer channel between hamr nodes: pipelined request/answer RPC
 * over TCP, mutual TLS when the cluster has a PKI (net/cluster_tls), used by
 * followers to forward proposals and queries to the leader, and by any node
 * to fetch message bodies it lacks from the others (node/body_fetch.h).
 *
 * Frames: 4-byte big-endian length (at most PROTO_PEER_MAX), then a
 * hamr.PeerMsg (proto/hamr.proto). A connection opens with a PeerMsg carrying
 * `hello` (no answer). After it, the client sends PeerMsg requests with
 * `propose`, `query`, `fetch` or `report` and a req_id of its choosing; the server answers each
 * with a PeerMsg carrying `result` and the same req_id, in any order. Many
 * requests may be outstanding on one connection.
 *
 * Identity. With cluster TLS both sides present node certificates of the
 * cluster CA (anything else fails the handshake). The server takes the
 * caller's node id from its certificate, and a hello naming another node
 * closes the connection: peer_call_node cannot be lied to. The client checks
 * that the server's certificate names the node it meant to reach (the
 * leader, found in the node directory), and sends nothing otherwise. In
 * plaintext mode ([cluster_tls] plaintext) there is no authentication: the
 * hello's id is taken on trust, and the port must be reachable by the
 * cluster only.
 *
 * Both sides run on one libuv loop and use no threads.
 *
 * Owns: the server's listener (net/tcp_server) and connections, the
 * client's connections and calls in flight. May call: proto/ framing,
 * net/tcp_server, net/tls_stream, net/cluster_tls (identities; the contexts
 * are the caller's, taken anew for each connection so a reload applies),
 * util; what a request means is the handler's business (node/proposer.c on
 * the leader, node/body_fetch.c for fetch).
 */
#ifndef HAMR_NODE_PEER_H
#define HAMR_NODE_PEER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "proto/hamr.pb-c.h"

struct cluster_tls;

#define PEER_MAX_CONNS 64                          /* server: more are accepted and closed */
#define PEER_QUEUE_MAX ((size_t)256 * 1024 * 1024) /* bytes queued for writing per connection */
#define PEER_HELD_MAX                                                             \
    ((size_t)256 * 1024 * 1024)      /* server: request bytes held by the handler \
                                      * per connection before reading pauses */
#define PEER_HELD_CALLS_MAX 65536    /* server: same, counted in calls */
#define PEER_CONNECT_TIMEOUT_MS 2000 /* client: default connect timeout */
#define PEER_HELLO_TIMEOUT_MS 5000   /* server: TLS handshake and hello within this */
#define PEER_IDLE_TIMEOUT_MS 300000  /* server: nothing pending, no frame this long: closed */
#define PEER_VERSION_MAX 64          /* client: version string kept for hello */

/* ------------------------------------------------------------------------ */
/* Server side.                                                             */
/* ------------------------------------------------------------------------ */

struct peer_server;
struct peer_call; /* one request waiting for its answer */

/*
 * peer_handler - what the node does with a request. request gets a PeerMsg
 * with `propose`, `query` or `report` set (hello is handled inside: see
 * peer_call_node); fetch gets the `fetch` body of a PeerMsg (optional: when
 * NULL the server answers a fetch itself with HAMR_ENOTFOUND, "no such body
 * here"). What they are given is borrowed until the call is answered. The
 * handler must answer every call exactly once with peer_reply(), now or
 * later, even if the connection or the whole server has gone away
 * meanwhile.
 */
struct peer_handler {
    void *data;
    void (*request)(void *data, struct peer_call *call, const Hamr__PeerMsg *msg);
    void (*fetch)(void *data, struct peer_call *call, const Hamr__PeerFetch *req);
};

/*
 * peer_server_new - listen on host:port (IPv4 or IPv6 literal; port 0 picks a
 * free one, see peer_server_port). ctls: the cluster PKI (borrowed, it must
 * outlive the server), NULL for plaintext. h is copied. 0 and *out, or
 * HAMR_EINVAL (not an IP literal), HAMR_ENOMEM, HAMR_EIO (bind or listen
 * failed) with a sentence in errmsg.
 */
int peer_server_new(uv_loop_t *loop,
                    const char *host,
                    uint16_t port,
                    struct cluster_tls *ctls,
                    const struct peer_handler *h,
                    struct peer_server **out,
                    char *errmsg,
                    size_t errlen);

/* peer_server_port - the port actually bound. */
uint16_t peer_server_port(const struct peer_server *s);

/*
 * peer_server_set_held_limit - stop reading a connection while the handler
 * holds more than bytes of its requests or calls of them (defaults
 * PEER_HELD_MAX, PEER_HELD_CALLS_MAX); reading resumes as answers go out.
 */
void peer_server_set_held_limit(struct peer_server *s, size_t bytes, size_t calls);

/*
 * peer_server_set_timeouts - a connection that has not finished its TLS
 * handshake and said hello within hello_ms, or has had nothing with the
 * handler and sent no frame for
 * idle_ms, is closed (defaults PEER_HELLO_TIMEOUT_MS, PEER_IDLE_TIMEOUT_MS).
 * For connections accepted from now on (hello) and for the next idle check.
 */
void peer_server_set_timeouts(struct peer_server *s, uint64_t hello_ms, uint64_t idle_ms);

/* peer_server_conns - open connections (for tests and metrics). */
size_t peer_server_conns(const struct peer_server *s);

/* peer_server_stats - what became of the connections accepted (counters since start). */
struct peer_server_stats {
    uint64_t accepted;  /* said hello (with TLS: as the node their certificate names) */
    uint64_t tls;       /* TLS handshake failed or ended early, or not a node's certificate */
    uint64_t identity;  /* the hello named another node than the certificate */
    uint64_t timed_out; /* no handshake and hello within the deadline */
};
void peer_server_stats(const struct peer_server *s, struct peer_server_stats *out);

/*
 * peer_call_node - the caller's node id: with TLS its certificate's (the
 * hello must agree), else its hello's; 0 if none.
 */
uint64_t peer_call_node(const struct peer_call *call);

/*
 * peer_reply - answer call with res (copied into the answer; req_id is filled
 * in here) and free the call and its request. If the connection is gone the
 * call is only freed and 0 returned. Errors: HAMR_ENOMEM, HAMR_EBUSY (the
 * caller does not read its answers), HAMR_EIO; the call is freed and the
 * connection closed all the same.
 */
int peer_reply(struct peer_call *call, const Hamr__PeerResult *res);

/*
 * peer_server_close - stop listening and close every connection. Calls not
 * yet answered stay valid until peer_reply. cb(arg) runs once every handle has
 * closed (never inside this call), then s is freed. Idempotent.
 */
void peer_server_close(struct peer_server *s, void (*cb)(void *arg), void *arg);

/* ------------------------------------------------------------------------ */
/* Client side.                                                             */
/* ------------------------------------------------------------------------ */

/*
 * One peer_client serves all destinations: it keeps one connection per
 * destination (node and address), opened on the first call to it and opened
 * again on the next call after it broke.
 */
struct peer_client;

/*
 * peer_client_new - a client that introduces itself as self_id running
 * version (copied, truncated to PEER_VERSION_MAX - 1). ctls: the cluster PKI
 * (borrowed, it must outlive the client; its certificate should be
 * self_id's), NULL for plaintext. NULL when out of memory.
 */
struct peer_client *peer_client_new(uv_loop_t *loop,
                                    uint64_t self_id,
                                    const char *version,
                                    struct cluster_tls *ctls);

/*
 * peer_client_set_connect_timeout - for connections opened from now on
 * (default 2 s): TCP connect and, with TLS, the handshake.
 */
void peer_client_set_connect_timeout(struct peer_client *c, uint64_t ms);

/* peer_client_set_queue_limit - bytes queued per connection before HAMR_EBUSY. */
void peer_client_set_queue_limit(struct peer_client *c, size_t bytes);

/*
 * peer_result_cb - the outcome of one call. status 0: res is the answer,
 * borrowed for the duration of the callback. Otherwise res is NULL and status
 * is HAMR_ECONNECT (could not connect, the TLS handshake failed or the
 * server is not the node meant, or the connection broke before the answer
 * came: for a proposal the outcome is UNKNOWN), HAMR_ETIMEDOUT (no
 * answer in time; a late answer is dropped) or HAMR_ESHUTDOWN (the client is
 * closing).
 */
typedef void (*peer_result_cb)(void *arg, int status, const Hamr__PeerResult *res);

/*
 * peer_client_call - send req (a PeerMsg with `propose`, `query`, `fetch` or `report` set; its
 * req_id is ignored and assigned here) to node at addr, "a.b.c.d:port" or
 * "[v6]:port"; with TLS the server's certificate must name node, else
 * nothing is sent and the call fails with HAMR_ECONNECT. req is packed
 * before this returns and not kept. timeout_ms 0 waits without limit (until
 * the connection breaks or the client closes). If this returns 0, cb(arg,
 * ...) runs exactly once, never inside this call. Otherwise cb never runs:
 * HAMR_EINVAL (bad address or body, node 0 with TLS), HAMR_ETOOBIG (frame
 * over PROTO_PEER_MAX), HAMR_EBUSY (too many bytes queued for addr),
 * HAMR_ESHUTDOWN (client closing), HAMR_ENOMEM.
 */
int peer_client_call(struct peer_client *c,
                     uint64_t node,
                     const char *addr,
                     const Hamr__PeerMsg *req,
                     uint64_t timeout_ms,
                     peer_result_cb cb,
                     void *arg);

/* peer_client_pending - calls waiting for their outcome (for tests and metrics). */
size_t peer_client_pending(const struct peer_client *c);

/* peer_client_stats - the client's connections that TLS ended (counters since start). */
struct peer_client_stats {
    uint64_t tls;      /* TLS handshake failed (the server's certificate not of the CA, ...) */
    uint64_t identity; /* the server's certificate named another node than the one meant */
};
void peer_client_stats(const struct peer_client *c, struct peer_client_stats *out);

/*
 * peer_client_close - fail every outstanding call with HAMR_ESHUTDOWN (from
 * inside this function), close every connection, then, once every handle has
 * closed, free c and run cb(arg) (never inside this call). Idempotent.
 */
void peer_client_close(struct peer_client *c, void (*cb)(void *arg), void *arg);

#endif
