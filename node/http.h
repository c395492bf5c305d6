/*
 * http.h - the node's health and metrics endpoint: a minimal HTTP/1.1 server
 * on libuv answering GET /health/live, GET /health/ready and GET /metrics
 * (Prometheus text format 0.0.4), plus the pure readiness decision.
 *
 * One request per connection: every response carries Connection: close.
 * GET only (405 otherwise), 404 for other paths, request head at most
 * HTTP_HEAD_MAX bytes (431 beyond), HTTP_READ_TIMEOUT_MS to send it (408;
 * with TLS the handshake counts against it, and a client that has not
 * finished the handshake by then is closed without an answer),
 * HTTP_WRITE_TIMEOUT_MS for the client to take the answer (closed
 * otherwise), a bounded linger for its close after that, at most
 * HTTP_MAX_CONNS connections (past it, the oldest that has not sent a whole
 * head is closed to make room, else the new one): a
 * client that sends slowly, reads slowly or not at all holds a place for
 * seconds, never longer.
 *
 * Two kinds of listener, the same endpoints:
 *   - in the clear ([listen] http): no authentication; bind it to loopback
 *     or to a network only the balancers and the monitoring system reach.
 *     With metrics_tls_only, /metrics is a 403 there (it is served on the
 *     TLS listener), and the health endpoints stay for the balancers;
 *   - mutual TLS 1.3 on the cluster PKI ([listen] metrics): the node shows
 *     its node certificate, the client must show one of the cluster CA
 *     naming an operator (hamr:operator:NAME). A failed handshake (no
 *     certificate, another CA, not TLS) is closed, a certificate naming no
 *     operator (a node's) answered 403; both are logged with the peer and
 *     counted (http_get_stats). Nothing the client sent is read as a
 *     request before its certificate has been checked.
 *
 * Owns: its listener (net/tcp_server), connections and their tls_streams.
 * May call: the metrics registry (render), net/tcp_server, net/tls_stream,
 * net/cluster_tls (the server context), node/operator_gate (the peer's
 * identity, the refusal's log line and counters), util; readiness comes
 * from the owner's callback.
 */
#ifndef HAMR_NODE_HTTP_H
#define HAMR_NODE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "net/cluster_tls.h"
#include "node/metrics.h"
#include "node/operator_gate.h"

#define HTTP_HEAD_MAX 8192          /* request line and headers, final CRLF CRLF included */
#define HTTP_READ_TIMEOUT_MS 5000   /* default: the whole head must arrive within this */
#define HTTP_WRITE_TIMEOUT_MS 10000 /* default: the whole answer must be taken within this */
#define HTTP_MAX_CONNS 64
#define HTTP_METRICS_MAX (4u << 20) /* a /metrics body larger than this is a 500 */

/*
 * Readiness. These two names break the rule that exported names start with
 * their file's name: they are the interface the node wiring is written
 * against, and the decision is kept beside its only user, the /health/ready
 * handler, rather than in a file of its own.
 */

/* health_input - what /health/ready decides on, filled by the node per request. */
struct health_input {
    bool raft_failed;                /* raft stopped or the state machine refused an entry */
    bool draining;                   /* hamrctl drain */
    bool leader_known;               /* a leader exists (this node or another) */
    bool is_leader;                  /* this node leads: in quorum by definition */
    uint64_t last_leader_contact_ms; /* follower: ms since the leader was last heard from
                                        (UINT64_MAX: never) */
    uint64_t election_timeout_ms;    /* in quorum while contact is younger than twice this;
                                        0 means 1000 */
    uint64_t disk_free_bytes;        /* on the data directory's file system */
    uint64_t min_free_bytes;         /* [storage] min_free; 0 turns the check off */
    uint64_t apply_lag;              /* commit index minus applied index */
    uint64_t bodies_missing;         /* queued messages whose body this node is fetching */
    bool queue_full;                 /* at [storage] queue_max_messages or queue_max_bytes */
    uint64_t queue_messages;         /* the replicated queue's size, for the text */
    uint64_t queue_bytes;
    uint64_t queue_max_messages; /* the limits (0: none) */
    uint64_t queue_max_bytes;
    bool clock_unknown;         /* no cluster time yet: the node takes no mail */
    bool clock_skewed;          /* wall clock more than max_clock_skew_ms off the cluster time */
    int64_t clock_skew_ms;      /* that wall clock less the cluster time */
    uint64_t max_clock_skew_ms; /* [node] max_clock_skew */
};

/* HEALTH_MAX_APPLY_LAG - more committed entries than this still to apply: "catching up". */
#define HEALTH_MAX_APPLY_LAG 1000

/*
 * health_ready - true if the node should get traffic. Otherwise false with
 * the first reason that applies, most severe first, in reason (size len,
 * truncated): "raft failed", "draining", "no leader", "no contact with the
 * leader for N ms (limit M ms)", "catching up: N entries behind", "fetching
 * bodies: N missing", "cluster time not known yet", "disk low: N MiB free,
 * M MiB required".
 * reason is "ready" when true, or, at a queue limit, "ready; queue full: N
 * messages (limit M), B bytes (limit L)": the node stays in the balancer
 * (see health_ready); with a wall clock off the cluster time, "ready; clock
 * skew: +S s from the cluster time (limit L s)". reason may be NULL when
 * len is 0.
 */
bool health_ready(const struct health_input *in, char *reason, size_t len);

struct http;

/*
 * http_handler - what the endpoints read. Copied by http_new; data and
 * metrics are borrowed for the server's lifetime.
 *   ready   - fills in for GET /health/ready (required). in is zeroed first.
 *   metrics - rendered for GET /metrics; NULL makes /metrics a 404.
 *   source  - source.fill (may be NULL) runs just before each render.
 */
struct http_handler {
    void *data;
    void (*ready)(void *data, struct health_input *in);
    struct metrics *metrics;
    struct metrics_source source;
};

/* http_config - where and how a listener serves. */
struct http_config {
    const char *host;        /* IPv4 or IPv6 literal; borrowed for http_new only */
    uint16_t port;           /* 0 picks a free one, see http_port */
    struct cluster_tls *tls; /* NULL: in the clear; else mutual TLS on its server context
                                (taken per connection, so a reload applies to new ones),
                                operators only; borrowed, must outlive the server */
    bool metrics_tls_only;   /* answer /metrics with 403: it is on the TLS listener */
};

/*
 * http_new - listen as cfg says. cfg and h are copied. 0 and *out, or
 * HAMR_EINVAL / HAMR_EIO / HAMR_ENOMEM with a sentence in errmsg (size
 * errlen).
 */
int http_new(uv_loop_t *loop,
             const struct http_config *cfg,
             const struct http_handler *h,
             struct http **out,
             char *errmsg,
             size_t errlen);

/* http_port - the port actually bound. */
uint16_t http_port(const struct http *s);

/* http_conns - connections open or closing (for tests and logs). */
size_t http_conns(const struct http *s);

/* http_get_stats - the refusal counters (zero for a listener in the clear). */
void http_get_stats(const struct http *s, struct operator_gate_stats *out);

/* http_set_read_timeout - applies to connections accepted from now on. */
void http_set_read_timeout(struct http *s, uint64_t ms);

/* http_set_write_timeout - applies to answers started from now on. */
void http_set_write_timeout(struct http *s, uint64_t ms);

/*
 * http_close - stop listening and close every connection. closed_cb(arg)
 * (may be NULL) runs once all handles are closed; then s is freed.
 * Idempotent: a second call does nothing.
 */
void http_close(struct http *s, void (*closed_cb)(void *arg), void *arg);

#endif
