/*
 * control.h - the control listeners inside hamrd: hamrctl requests over a
 * Unix socket and over TCP.
 *
 * Frames per proto/proto_frame.h: 4-byte big-endian length, then a
 * hamr.ControlRequest (in) or hamr.ControlResponse (out). One request at a
 * time per connection: the next is read only after the previous one has been
 * answered and its reply written. A handler may answer at once or later.
 *
 * Who may ask:
 *   - the Unix socket: whoever can open it. It is made mode 0660, owned by
 *     the account hamrd runs as (and its group), so the file's permissions
 *     are the access control: root and that group. Its connections are
 *     trusted and carry no certificate;
 *   - TCP with a cluster PKI (control_config.tls): mutual TLS 1.3, and only
 *     a client whose certificate names an operator (hamr:operator:NAME) is
 *     served. A failed handshake (no certificate, another CA) or another
 *     identity (a node's certificate) is logged with the peer and counted
 *     (control_get_stats); the identity refusal is answered with HAMR_EPERM and
 *     a sentence before the connection is closed;
 *   - TCP without one ([cluster_tls] plaintext = yes, a lab): anyone who
 *     reaches the port. Bind it to loopback or leave it off.
 *
 * Owns: its listeners (net/tcp_server for TCP, a libuv pipe for the Unix
 * socket, and the socket file while it listens), their connections, each
 * connection's tls_stream. May call: proto/ framing, net/tcp_server,
 * net/tls_stream, net/cluster_tls (the contexts), node/operator_gate (the
 * peer's identity, the refusal's log line and counters), util; the handler
 * the owner gives answers.
 */
#ifndef HAMR_NODE_CONTROL_H
#define HAMR_NODE_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "net/cluster_tls.h"
#include "proto/hamr.pb-c.h"

#include "node/operator_gate.h"

#define CONTROL_MAX_CONNS 64          /* TCP: past it the oldest silent one is evicted */
#define CONTROL_IDLE_TIMEOUT_MS 60000 /* default: close a connection idle this long */
/*
 * Default: a TCP client's TLS handshake and first whole request within this
 * (hamrctl sends its request as soon as it is connected). Without it, 64
 * silent connections would hold every place of the TCP listener for the
 * whole idle timeout, and no operator could connect.
 */
#define CONTROL_FIRST_TIMEOUT_MS 5000

struct control;
struct control_call;

/*
 * control_handler - what the node does with a request. handle() borrows req
 * until the call is answered; it must answer every call exactly once with
 * control_reply(), now or later, even if the client has gone away meanwhile.
 */
struct control_handler {
    void *data;
    void (*handle)(void *data, struct control_call *call, const Hamr__ControlRequest *req);
};

/* control_config - where to listen; copied during control_new. */
struct control_config {
    const char *host;        /* TCP: IPv4 or IPv6 literal; NULL or "": no TCP listener */
    uint16_t port;           /* 0 picks a free one, see control_port */
    const char *socket_path; /* Unix socket; NULL or "": none */
    struct cluster_tls *tls; /* NULL: TCP in the clear; else mutual TLS on its server
                                context (taken per connection, so a reload applies to new
                                ones); borrowed, must outlive the control */
};

/*
 * control_new - listen as cfg says (at least one of TCP and the socket). h
 * is copied. The socket file is made mode 0660; one left by a process that
 * is gone is replaced, one with a listener behind it (another hamrd) is an
 * error, and so is a path that is not a socket. 0 and *out, or a HAMR_E*
 * code with a sentence in errmsg: HAMR_EINVAL (host not an IP literal, path
 * too long, nothing to listen on), HAMR_EEXIST (a live socket), HAMR_EIO,
 * HAMR_ENOMEM.
 */
int control_new(uv_loop_t *loop,
                const struct control_config *cfg,
                const struct control_handler *h,
                struct control **out,
                char *errmsg,
                size_t errlen);

/* control_set_idle_timeout - close connections idle for ms (default CONTROL_IDLE_TIMEOUT_MS). */
void control_set_idle_timeout(struct control *c, uint64_t ms);

/*
 * control_set_first_timeout - close a TCP connection with no TLS handshake
 * and first whole request within ms of connecting (default
 * CONTROL_FIRST_TIMEOUT_MS; the idle timeout if that is shorter): logged,
 * counted (operator_gate_stats.timed_out).
 */
void control_set_first_timeout(struct control *c, uint64_t ms);

/* control_port - the TCP port actually bound; 0 without a TCP listener. */
uint16_t control_port(const struct control *c);

/* control_conns - open connections, TCP and Unix (for tests and metrics). */
size_t control_conns(const struct control *c);

/* control_get_stats - the refusal counters. */
void control_get_stats(const struct control *c, struct operator_gate_stats *out);

/*
 * control_reply - answer call with resp (packed here; resp is not kept) and
 * free the call and its request. If the connection is gone the call is just
 * freed. Returns 0, or HAMR_ENOMEM (the call is freed and its connection
 * closed all the same). A response larger than PROTO_CONTROL_MAX is replaced
 * by an error response.
 */
int control_reply(struct control_call *call, const Hamr__ControlResponse *resp);

/* control_reply_error - answer call with code and a text (printf-style). */
int control_reply_error(struct control_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * control_close - stop listening (the socket file is removed if it is still
 * the one bound) and close every connection; calls still unanswered stay
 * valid until answered. closed_cb(arg) runs once all handles are closed,
 * after c is freed. Idempotent.
 */
void control_close(struct control *c, void (*closed_cb)(void *arg), void *arg);

#endif
