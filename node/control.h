/*
 * control.h - the control listener inside hamrd: hamrctl requests over TCP.
 *
 * Frames per proto/proto_frame.h: 4-byte big-endian length, then a
 * hamr.ControlRequest (in) or hamr.ControlResponse (out). One request at a
 * time per connection: the next is read only after the previous one has been
 * answered and its reply written. A handler may answer at once or later.
 *
 * The channel has no authentication: bind it to loopback (the default) or
 * protect the port otherwise.
 *
 * Owns: its listener (net/tcp_server) and connections. May call: proto/
 * framing, net/tcp_server, util; the handler the owner gives answers.
 */
#ifndef HAMR_NODE_CONTROL_H
#define HAMR_NODE_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "proto/hamr.pb-c.h"

#define CONTROL_MAX_CONNS 64          /* more connections are accepted and closed */
#define CONTROL_IDLE_TIMEOUT_MS 60000 /* default: close a connection idle this long */

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

/*
 * control_new - listen on host:port (IPv4 or IPv6 literal; port 0 picks a free
 * one, see control_port). h is copied. 0 and *out, or a HAMR_E* code with a
 * sentence in errmsg.
 */
int control_new(uv_loop_t *loop,
                const char *host,
                uint16_t port,
                const struct control_handler *h,
                struct control **out,
                char *errmsg,
                size_t errlen);

/* control_set_idle_timeout - close connections idle for ms (default CONTROL_IDLE_TIMEOUT_MS). */
void control_set_idle_timeout(struct control *c, uint64_t ms);

/* control_port - the port actually bound. */
uint16_t control_port(const struct control *c);

/* control_conns - open connections (for tests and metrics). */
size_t control_conns(const struct control *c);

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
 * control_close - stop listening and close every connection; calls still
 * unanswered stay valid until answered. closed_cb(arg) runs once all handles
 * are closed, then c is freed. Idempotent.
 */
void control_close(struct control *c, void (*closed_cb)(void *arg), void *arg);

#endif
