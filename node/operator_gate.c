/*
 * operator_gate.c - the operator check after a TLS handshake, its log line
 * and its counters. See operator_gate.h.
 *
 * Security: the reason logged comes from OpenSSL about a stranger's bytes;
 * it goes through log_printable. Operator names are printable by
 * construction (net/cluster_tls checks them).
 */
#include <inttypes.h>
#include <string.h>

#include <uv.h>

#include "util/common.h"
#include "util/log.h"

#include "node/operator_gate.h"

/* operator_gate_refused - count one refusal and say who, what they showed, and why. */
static void operator_gate_refused(const char *channel,
                                  const char *peer,
                                  uint64_t *counter,
                                  const struct operator_gate_stats *st,
                                  const char *who,
                                  const char *why)
{
    (*counter)++;
    char safe[TLS_ERR_MAX];
    log_warn("%s connection peer=%s identity=%s event=refused reason=\"%s\" tls=%" PRIu64
             " identity_refused=%" PRIu64,
             channel, peer, who, log_printable(safe, sizeof(safe), why, strlen(why)),
             st->refused_tls, st->refused_identity);
}

/* operator_gate_check - the verdict on one handshake, logged and counted. */
enum operator_gate_verdict operator_gate_check(const char *channel,
                                               const char *peer,
                                               int status,
                                               const struct tls_stream *ts,
                                               struct operator_gate_stats *st,
                                               char *who,
                                               size_t wholen)
{
    hamr_strlcpy(who, "-", wholen);
    if (status == UV_EPROTO) {
        operator_gate_refused(channel, peer, &st->refused_tls, st, who, tls_stream_error(ts));
        return OPERATOR_GATE_TLS;
    }
    if (status != 0) {
        log_debug(
            "%s connection peer=%s event=closed reason=\"%s before the TLS handshake was "
            "done\"",
            channel, peer, status == UV_EOF ? "end of stream" : uv_strerror(status));
        return OPERATOR_GATE_TLS;
    }
    struct cluster_tls_identity id;
    if (cluster_tls_peer(tls_stream_tls(ts), &id) != 0)
        memset(&id, 0, sizeof(id));
    cluster_tls_identity_name(&id, who, wholen);
    if (id.role == CLUSTER_TLS_OPERATOR) {
        log_debug("%s connection peer=%s identity=%s event=accepted", channel, peer, who);
        return OPERATOR_GATE_OK;
    }
    operator_gate_refused(channel, peer, &st->refused_identity, st, who,
                          "the certificate names no operator");
    return OPERATOR_GATE_IDENTITY;
}
