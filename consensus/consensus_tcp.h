/*
 * consensus_tcp.h - raft's transport (internal to consensus/): every raft
 * connection, both ways, is opened here and not by libraft; optionally
 * mutual TLS 1.3 with each peer's node id bound to its certificate; IPv4
 * and IPv6 literals; TCP_NODELAY everywhere.
 *
 * Why Nagle is off: libraft 0.15 never sets TCP_NODELAY, so a small
 * AppendEntries or its result waited for the previous segment's ACK, and
 * the peer's delayed ACK made that up to 40 ms per commit in flight.
 *
 * Inbound: libraft 0.15 trusts every length a peer sends (one AppendEntries
 * header that claims entries it does not carry crashed it; RAFT.md 4.5). The
 * listener (backlog CONSENSUS_TCP_BACKLOG) takes at most max_conns
 * connections; each must finish its TLS handshake (with tls) and send a
 * valid raft handshake within handshake_ms; every byte after the TLS layer
 * goes through consensus_wire before libraft reads it, through one end of a
 * socketpair whose other end libraft was handed as the connection. With TLS
 * the id the raft handshake claims must be the node id in the client's
 * certificate (cluster_tls.h: URI hamr:node:ID). A violation closes the
 * connection, logs one line (peer, claimed id, certificate id, reason) and
 * counts in stats (refused, timed_out, over_cap, tls, identity).
 *
 * Outbound: connect, TCP_NODELAY, and libraft's 24-byte handshake written
 * here. Plain: libraft is handed the TCP handle itself, as its own transport
 * did. TLS: the client handshake (also within handshake_ms), the server's
 * certificate must name the node id libraft is connecting to (else the
 * connect fails, logged and counted in out_tls / out_identity), then libraft
 * is handed one end of a socketpair; what it writes there is encrypted onto
 * the TCP connection. libraft 0.15 never reads an outbound connection, so
 * what the peer sends after the handshake is decrypted and dropped; its EOF
 * or a TLS error closes our end, and libraft's next write fails and makes it
 * reconnect.
 *
 * Close (raft_uv_transport): connects still in flight get RAFT_CANCELED,
 * never from inside close; the close callback runs after every one of them
 * and every handle here is closed. Streams handed to libraft are libraft's.
 *
 * Addresses: "a.b.c.d:port" or "[IPv6]:port" (consensus_tcp_parse).
 */
#ifndef HAMR_CONSENSUS_TCP_H
#define HAMR_CONSENSUS_TCP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "consensus/consensus.h"
#include "consensus/consensus_wire.h"

#define CONSENSUS_TCP_BACKLOG 128
#define CONSENSUS_TCP_HANDSHAKE_MS 5000
#define CONSENSUS_TCP_MAX_CONNS 64

struct cluster_tls;
struct consensus_tcp_conn;
struct consensus_tcp_out;

/* consensus_tcp - hand &outer to raft_uv_init. */
struct consensus_tcp {
    struct raft_uv_transport outer;
    uv_loop_t *loop;
    struct cluster_tls *tls; /* borrowed; NULL: plain TCP */
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
    struct consensus_wire_limits limits;
    unsigned handshake_ms; /* inbound: TLS and raft handshakes; outbound: TLS handshake */
    unsigned max_conns;
    raft_id id;                       /* ours (outer.init): the handshake we send */
    char address[CONSENSUS_ADDR_MAX]; /* ours */
    char bind_address[CONSENSUS_ADDR_MAX];
    uv_tcp_t listener;
    bool listener_open;
    bool closing;
    struct consensus_tcp_conn *conns; /* inbound, doubly linked */
    unsigned n_conns;
    struct consensus_tcp_out *outs; /* outbound ours: connecting, or carrying TLS */
    unsigned n_connects;            /* connect requests whose callback has not run */
    unsigned n_handles;             /* our handles not yet closed */
    struct consensus_port_stats stats;
};

/*
 * consensus_tcp_init - a transport on loop; limits are copied, tls is
 * borrowed (NULL: plain TCP) and must outlive the transport. 0 (no RAFT_*
 * failure is possible yet; kept for the interface).
 */
int consensus_tcp_init(struct consensus_tcp *t,
                       uv_loop_t *loop,
                       const struct consensus_wire_limits *limits,
                       struct cluster_tls *tls);

/* consensus_tcp_set_bind_address - where the listener binds (see consensus_tcp_parse); 0 or
 * RAFT_INVALID. */
int consensus_tcp_set_bind_address(struct consensus_tcp *t, const char *address);

/*
 * consensus_tcp_parse - "a.b.c.d:port" or "[IPv6]:port" (a zone after %
 * allowed), port 1..65535 in decimal, nothing else: 0 and *out, or -1.
 */
int consensus_tcp_parse(const char *address, struct sockaddr_storage *out);

#endif
