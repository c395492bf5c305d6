/*
 * consensus_tcp.h - raft's TCP transport with TCP_NODELAY on every
 * connection (internal to consensus/).
 *
 * libraft 0.15's TCP transport never sets TCP_NODELAY, so Nagle's algorithm
 * holds a small AppendEntries or its result back until the previous segment
 * is acknowledged, and the peer's delayed ACK makes that up to 40 ms: every
 * commit in flight waited that long, again and again under load. This
 * wraps raft_uv_tcp: the same connections, with Nagle off.
 */
#ifndef HAMR_CONSENSUS_TCP_H
#define HAMR_CONSENSUS_TCP_H

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

/* consensus_tcp - hand &outer to raft_uv_init; inner is libraft's transport. */
struct consensus_tcp {
    struct raft_uv_transport outer;
    struct raft_uv_transport inner;
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
};

/* consensus_tcp_init - as raft_uv_tcp_init; 0 or a RAFT_* code. */
int consensus_tcp_init(struct consensus_tcp *t, uv_loop_t *loop);

/* consensus_tcp_set_bind_address - as raft_uv_tcp_set_bind_address. */
int consensus_tcp_set_bind_address(struct consensus_tcp *t, const char *address);

/* consensus_tcp_close - as raft_uv_tcp_close, once raft has closed the transport. */
void consensus_tcp_close(struct consensus_tcp *t);

#endif
