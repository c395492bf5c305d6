/*
 * consensus_tcp.c - raft's TCP transport with Nagle's algorithm off.
 *
 * Every call goes to libraft's own TCP transport (inner); only the accept
 * and connect callbacks pass through here first, to set TCP_NODELAY on the
 * new stream. Connect requests get a small wrapper allocation each, freed
 * before the caller's callback runs (also when libraft cancels them on
 * close). libraft sets outer.data for itself; inner.data points back here.
 */
#include "consensus/consensus_tcp.h"

#include <stdlib.h>
#include <string.h>

#include "util/log.h"

/* consensus_tcp_connect_req - one connect in flight through the wrapper. */
struct consensus_tcp_connect_req {
    struct raft_uv_connect inner_req;
    struct raft_uv_connect *req; /* the caller's */
    raft_uv_connect_cb cb;
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

static int consensus_tcp_init_cb(struct raft_uv_transport *outer, raft_id id, const char *address)
{
    struct consensus_tcp *t = outer->impl;
    int rv = t->inner.init(&t->inner, id, address);
    if (rv != 0)
        consensus_tcp_errmsg(t);
    return rv;
}

/* consensus_tcp_accepted - a peer connected: Nagle off, then raft's callback. */
static void consensus_tcp_accepted(struct raft_uv_transport *inner,
                                   raft_id id,
                                   const char *address,
                                   struct uv_stream_s *stream)
{
    struct consensus_tcp *t = inner->data;
    consensus_tcp_nodelay(stream);
    t->accept_cb(&t->outer, id, address, stream);
}

static int consensus_tcp_listen(struct raft_uv_transport *outer, raft_uv_accept_cb cb)
{
    struct consensus_tcp *t = outer->impl;
    t->accept_cb = cb;
    int rv = t->inner.listen(&t->inner, consensus_tcp_accepted);
    if (rv != 0)
        consensus_tcp_errmsg(t);
    return rv;
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

/* consensus_tcp_inner_closed - libraft's transport is closed: tell raft. */
static void consensus_tcp_inner_closed(struct raft_uv_transport *inner)
{
    struct consensus_tcp *t = inner->data;
    t->close_cb(&t->outer);
}

static void consensus_tcp_close_cb(struct raft_uv_transport *outer, raft_uv_transport_close_cb cb)
{
    struct consensus_tcp *t = outer->impl;
    t->close_cb = cb;
    t->inner.close(&t->inner, consensus_tcp_inner_closed);
}

/* consensus_tcp_init - libraft's TCP transport inside ours; see consensus_tcp.h. */
int consensus_tcp_init(struct consensus_tcp *t, uv_loop_t *loop)
{
    memset(t, 0, sizeof(*t));
    int rv = raft_uv_tcp_init(&t->inner, loop);
    if (rv != 0)
        return rv;
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
    return raft_uv_tcp_set_bind_address(&t->inner, address);
}

/* consensus_tcp_close - release libraft's transport; see consensus_tcp.h. */
void consensus_tcp_close(struct consensus_tcp *t)
{
    raft_uv_tcp_close(&t->inner);
}
