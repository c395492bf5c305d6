/*
 * operator_gate.h - who may use an operators' TLS listener (the TCP control
 * port, the metrics listener): after the TLS handshake the client's
 * certificate, of the cluster CA, must name an operator (hamr:operator:NAME).
 * Refusals are logged and counted the same way on every such listener.
 *
 * Owns: nothing (the counters are the listener's). May call: net/tls_stream
 * (the handshake's reason), net/cluster_tls (the peer's identity), util/log.
 */
#ifndef HAMR_NODE_OPERATOR_GATE_H
#define HAMR_NODE_OPERATOR_GATE_H

#include <stddef.h>
#include <stdint.h>

#include "net/cluster_tls.h"
#include "net/tls_stream.h"

/* Room for an identity's name: "operator:" and the longest name. */
#define OPERATOR_GATE_WHO_MAX (CLUSTER_TLS_NAME_MAX + 16)

/* operator_gate_stats - what a listener refused (for /metrics). */
struct operator_gate_stats {
    uint64_t refused_tls;      /* the TLS handshake failed: no certificate, another CA, no TLS */
    uint64_t refused_identity; /* a valid certificate that names no operator */
    uint64_t timed_out;        /* no TLS handshake and first request in time (control) */
};

enum operator_gate_verdict {
    OPERATOR_GATE_OK = 0,  /* an operator: serve it */
    OPERATOR_GATE_TLS,     /* the handshake failed, or the peer went away first: close */
    OPERATOR_GATE_IDENTITY /* a verified certificate naming no operator (a node's) */
};

/*
 * operator_gate_check - the handshake of a server's ts ended with status
 * (as tls_stream's handshake_cb got it): may the client go on? A TLS
 * failure (UV_EPROTO) is counted in st->refused_tls and logged at warning
 * with the peer and the reason; the peer's going away first only at debug.
 * A certificate that names no operator is counted in st->refused_identity
 * and logged. The line reads "CHANNEL connection peer=P identity=I
 * event=refused reason=R tls=N identity_refused=M". who (size wholen) gets
 * the identity's name ("operator:NAME", "node:ID", "none"; "-" when the
 * handshake failed) for the caller's answer. channel and peer are borrowed
 * for the call.
 */
enum operator_gate_verdict operator_gate_check(const char *channel,
                                               const char *peer,
                                               int status,
                                               const struct tls_stream *ts,
                                               struct operator_gate_stats *st,
                                               char *who,
                                               size_t wholen);

#endif
