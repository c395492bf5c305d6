/*
 * consensus_tcp.h - raft's TCP transport: TCP_NODELAY on every connection,
 * and a checked hop between the raft port and libraft (internal to
 * consensus/).
 *
 * libraft 0.15's TCP transport never sets TCP_NODELAY, so Nagle's algorithm
 * holds a small AppendEntries or its result back until the previous segment
 * is acknowledged, and the peer's delayed ACK makes that up to 40 ms: every
 * commit in flight waited that long, again and again under load.
 *
 * libraft 0.15 also trusts every length a peer sends: a stranger on the raft
 * port crashed it with one AppendEntries header that claims entries it does
 * not carry (RAFT.md 4.5). So inbound connections are accepted here, not by
 * libraft: the listener (backlog CONSENSUS_TCP_BACKLOG) takes at most
 * max_conns connections, each must send a valid handshake within
 * handshake_ms, and every byte after it goes through consensus_wire before
 * libraft reads it, through one end of a socketpair whose other end libraft
 * was handed as the connection. A violation closes the connection, logs one
 * line (peer and reason) and counts. Outbound connections are libraft's own
 * (raft_uv_tcp), with Nagle off.
 */
#ifndef HAMR_CONSENSUS_TCP_H
#define HAMR_CONSENSUS_TCP_H

#include <stdbool.h>
#include <stdint.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "consensus/consensus.h"
#include "consensus/consensus_wire.h"

#define CONSENSUS_TCP_BACKLOG 128
#define CONSENSUS_TCP_HANDSHAKE_MS 5000
#define CONSENSUS_TCP_MAX_CONNS 64

struct consensus_tcp_conn;

/* consensus_tcp - hand &outer to raft_uv_init; inner is libraft's transport (connects only). */
struct consensus_tcp {
    struct raft_uv_transport outer;
    struct raft_uv_transport inner;
    uv_loop_t *loop;
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
    struct consensus_wire_limits limits;
    unsigned handshake_ms;
    unsigned max_conns;
    char bind_address[64];
    uv_tcp_t listener;
    bool listener_open;
    bool closing;
    bool inner_closed;
    struct consensus_tcp_conn *conns; /* inbound, doubly linked */
    unsigned n_conns;
    unsigned n_handles; /* our handles not yet closed (listener and connections') */
    struct consensus_port_stats stats;
};

/* consensus_tcp_init - as raft_uv_tcp_init, with limits (copied); 0 or a RAFT_* code. */
int consensus_tcp_init(struct consensus_tcp *t,
                       uv_loop_t *loop,
                       const struct consensus_wire_limits *limits);

/* consensus_tcp_set_bind_address - where the listener binds ("a.b.c.d:port"); 0 or RAFT_INVALID. */
int consensus_tcp_set_bind_address(struct consensus_tcp *t, const char *address);

/* consensus_tcp_close - release libraft's transport, once raft has closed the transport. */
void consensus_tcp_close(struct consensus_tcp *t);

#endif
