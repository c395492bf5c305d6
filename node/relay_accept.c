/*
 * relay_accept.c - the acceptance path: the SMTP sink (queue ids, may this
 * node take MAIL now, the Enqueue of a received message) and the peer
 * handler that hands a follower's calls to the proposer.
 *
 * Happy path (any node): relay_sink_submit packs the message into one Enqueue
 * entry and submits it to the proposer with its queue id as the dedupe key
 * (raft here on the leader, the peer channel on a follower); the commit
 * callback answers the session, which replies 250. How the proposer resolves
 * no leader, refusals and unknown outcomes is in node/proposer.c; the session
 * is told HAMR_ENOQUORUM or HAMR_ETIMEDOUT (451) when the entry cannot have
 * committed, and HAMR_EINDOUBT (hang up, no reply) when it may still have.
 *
 * DKIM ([dkim], net/dkim.h): relay_sink_submit signs the message before it
 * packs it, so the signature is made once, on the node that accepted the
 * message, and travels inside the Enqueue entry: every replica holds, and
 * whichever leader delivers sends, the same signed octets. A follower
 * forwards the packed entry to the leader as it is (proposer_submit; the
 * leader's proposer_serve appends the follower's entry without coming
 * back here), so nothing is signed twice. The DKIM-Signature field goes on
 * top, above our Received: (RFC 6376 5.6: prepended; trace fields are
 * not in h=, so later hops adding theirs do not break it). A signing
 * failure is an internal error answered 451 4.3.0: the operator asked for
 * signed mail, and the client will try again. The signing runs on the loop,
 * as the body's SHA-256 below does: one RSA-2048 signature is about a
 * millisecond and the relaxed body hash runs at SHA-256 speed, so a 10 MiB
 * message costs tens of milliseconds. XXX: move both to the thread pool if
 * large messages ever show in the loop's latency.
 *
 * Owns: struct relay_accept_state. May call: the proposer, the disk guard,
 * the queue's size against [storage] queue_max_*, queue_entry (packing),
 * net/dkim, metrics; never relay.c.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>
#include <uv.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "consensus/consensus.h"
#include "net/dkim.h"
#include "net/smtp_ext.h"
#include "node/peer.h"
#include "node/clock.h"
#include "node/relay_internal.h"

/*
 * relay_queue_id - a cluster-unique queue id: 11 hex digits of ms (good for
 * 500+ years), the whole node id in at least 3 hex digits, 5 of the counter.
 * The ms and counter fields have fixed widths, so the node id between them
 * is never ambiguous (19 characters for nodes up to 4095, more above).
 */
int relay_queue_id(uint64_t ms, uint64_t node_id, uint64_t counter, char *id, size_t idlen)
{
    int n = snprintf(id, idlen, "%011" PRIX64 "%03" PRIX64 "%05" PRIX64,
                     (uint64_t)(ms & 0xFFFFFFFFFFFull), node_id, counter & 0xFFFFF);
    return (n > 0 && (size_t)n < idlen) ? 0 : HAMR_EINVAL;
}

/* relay_sink_new_id - the next queue id of this node. */
int relay_sink_new_id(void *data, char *id, size_t idlen)
{
    struct relay *r = data;
    r->accept.id_counter++;
    return relay_queue_id(clock_wall_ms(), r->cfg->node_id, r->accept.id_counter, id, idlen);
}

bool relay_leader_lately(struct relay *r, uint64_t leader_id, uint64_t now)
{
    if (leader_id != 0) {
        r->accept.leader_seen = now;
        return true;
    }
    return r->accept.leader_seen != 0 && now - r->accept.leader_seen <= r->cfg->election_timeout_ms;
}

/* relay_sink_check_mail - may this node take a transaction now? */
int relay_sink_check_mail(void *data)
{
    struct relay *r = data;
    if (r->draining || r->stopping)
        return HAMR_EDRAINING;
    if (disk_guard_low(&r->disk))
        return HAMR_ENOSPACE;
    /* The cluster's limits, on this node's applied state: a follower a few
     * entries behind may let a message or two past the limit, or refuse one
     * the leader would take; either is harmless, and asking the leader on
     * every MAIL is not worth a round trip. Checked at MAIL only, as Postfix
     * checks queue_minfree: transactions open now may still end in 250, so
     * the queue can pass the limit by the sessions in DATA. */
    if (queue_full(r->queue, r->cfg->queue_max_messages, r->cfg->queue_max_bytes))
        return HAMR_EQUEUEFULL;
    /* Any known leader will do, even one still busy with its election
     * barrier or a transfer: by the end of DATA the submit waits for it (up
     * to three election timeouts without one). So does one known within the
     * last election timeout: an election (a follower's timer fired while the
     * leader wrote a snapshot, say) usually ends well within that, and a
     * MAIL refused for it is a transaction the client must start again. A
     * node cut off refuses from an election timeout after it lost its
     * leader, its transactions in DATA when their submit gives up. */
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (!relay_leader_lately(r, info.leader_id, uv_now(r->loop)))
        return HAMR_ENOQUORUM;
    /* From cluster level 6: not before this node knows the cluster time,
     * so that no message gets its expiry from a clock that is off. */
    if (!relay_clock_usable(r))
        return HAMR_ENOQUORUM;
    return 0;
}

struct relay_sink_req {
    struct relay *relay;
    smtpd_sink_cb cb;
    void *arg;
    uint64_t started; /* uv_now at submit, for the commit latency histogram */
};

/* relay_sink_done - the Enqueue committed, or will not: tell the session. */
static void relay_sink_done(void *arg, int status, intptr_t result)
{
    struct relay_sink_req *q = arg;
    struct relay *r = q->relay;
    /* result < 0: refused by the state machine (e.g. body checksum). */
    if (status == 0 && result < 0)
        status = (int)result;
    if (status == 0) {
        metrics_inc(r->metrics, METRICS_MESSAGES_ACCEPTED);
        metrics_observe(r->metrics, METRICS_COMMIT_SECONDS,
                        (double)(uv_now(r->loop) - q->started) / 1e3);
    }
    q->cb(q->arg, status);
    free(q);
}

/*
 * relay_sink_dkim - the message signed, if its From: domain has a key: the
 * DKIM-Signature field then env's body, into *out (malloc'd, *len octets).
 * *out NULL: nothing to sign with (no [dkim] keys, no key for the domain,
 * no single From: mailbox), send env's body as it is. HAMR_EIO: signing
 * failed (logged and counted; the session answers 451 4.3.0).
 */
static int relay_sink_dkim(struct relay *r,
                           const struct smtpd_envelope *env,
                           uint8_t **out,
                           size_t *len)
{
    *out = NULL;
    if (r->dkim == NULL)
        return 0;
    struct buf b;
    buf_init(&b, 0);
    enum dkim_alg alg = DKIM_ALG_RSA_SHA256;
    char err[512] = "";
    int rv = dkim_keys_sign(r->dkim, env->body, env->body_len, clock_wall_ms() / 1000,
                            r->cfg->dkim_oversign_from, &b, &alg, err, sizeof(err));
    if (rv == HAMR_ENOTFOUND) {
        buf_free(&b);
        return 0;
    }
    if (rv == 0)
        rv = buf_reserve(&b, env->body_len);
    if (rv == 0)
        rv = buf_append(&b, env->body, env->body_len);
    if (rv != 0) {
        if (err[0] == '\0')
            snprintf(err, sizeof(err), "%s", hamr_strerror(rv));
        log_error("dkim: signing failed queue_id=%s: %s (answered 451)", env->queue_id, err);
        metrics_inc_label(r->metrics, METRICS_DKIM_FAILURES, (unsigned)alg);
        buf_free(&b);
        return HAMR_EIO;
    }
    metrics_inc_label(r->metrics, METRICS_DKIM_SIGNED, (unsigned)alg);
    *out = buf_steal(&b, len);
    return 0;
}

/* The queue keeps NOTIFY and RET with net/smtp_ext.h's values. */
_Static_assert(SMTP_NOTIFY_NEVER == QUEUE_NOTIFY_NEVER &&
                   SMTP_NOTIFY_SUCCESS == QUEUE_NOTIFY_SUCCESS &&
                   SMTP_NOTIFY_FAILURE == QUEUE_NOTIFY_FAILURE &&
                   SMTP_NOTIFY_DELAY == QUEUE_NOTIFY_DELAY && SMTP_NOTIFY_ALL == QUEUE_NOTIFY_ALL,
               "NOTIFY bits");
_Static_assert(SMTP_RET_FULL == QUEUE_RET_FULL && SMTP_RET_HDRS == QUEUE_RET_HDRS, "RET values");
_Static_assert(SMTP_ENVID_MAX == QUEUE_ENVID_MAX && SMTP_ORCPT_MAX == QUEUE_ORCPT_MAX, "bounds");

/* relay_sink_ext_ok - SMTPUTF8, DSN and REQUIRETLS: once every voter can replicate them. */
bool relay_sink_ext_ok(void *data)
{
    struct relay *r = data;
    return queue_cluster_level(r->queue) >= QUEUE_LEVEL_EXT;
}

/*
 * relay_tls_required_no - the header block of body has a "TLS-Required: No"
 * field (RFC 8689 5: the sender asks that TLS policies not stop the
 * message). Field name and value compared without regard to case, blanks
 * around the value ignored, folding too.
 */
static bool relay_tls_required_no(const uint8_t *body, size_t len)
{
    static const char name[] = "tls-required:";
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(body + i, '\n', len - i);
        size_t end = nl != NULL ? (size_t)(nl - body) : len;
        size_t n = end - i;
        if (n > 0 && body[end - 1] == '\r')
            n--;
        if (n == 0)
            return false; /* the end of the header block */
        if (n >= sizeof(name) - 1 &&
            hamr_strncaseeq((const char *)body + i, name, sizeof(name) - 1)) {
            size_t v = i + sizeof(name) - 1, ve = i + n;
            /* The value may be folded onto the next lines. */
            while (nl != NULL && end + 1 < len && (body[end + 1] == ' ' || body[end + 1] == '\t')) {
                const uint8_t *nl2 = memchr(body + end + 1, '\n', len - end - 1);
                end = nl2 != NULL ? (size_t)(nl2 - body) : len;
                ve = end > 0 && body[end - 1] == '\r' ? end - 1 : end;
                nl = nl2;
            }
            size_t k = 0;
            char word[3];
            for (size_t x = v; x < ve; x++) {
                uint8_t c = body[x];
                if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
                    continue;
                if (k == sizeof(word))
                    return false;
                word[k++] = (char)c;
            }
            return k == 2 && hamr_strncaseeq(word, "no", 2);
        }
        i = end + 1;
    }
    return false;
}

/*
 * relay_sink_enqueue_ext - env's envelope extensions into enq (format 5).
 * The session takes them only while relay_sink_ext_ok says yes, so below
 * the level every field stays unset. notify and orcpt: n_rcpts entries
 * each, for the entry's lifetime. HAMR_ENOMEM.
 */
static int relay_sink_enqueue_ext(struct relay *r,
                                  const struct smtpd_envelope *env,
                                  const uint8_t *body,
                                  size_t body_len,
                                  Hamr__Enqueue *enq,
                                  uint32_t **notify,
                                  char ***orcpt)
{
    *notify = NULL;
    *orcpt = NULL;
    if (queue_cluster_level(r->queue) < QUEUE_LEVEL_EXT)
        return 0;
    enq->smtputf8 = env->smtputf8;
    enq->requiretls = env->requiretls;
    enq->tls_optional = !env->requiretls && relay_tls_required_no(body, body_len);
    enq->ret = env->ret;
    enq->envid = (char *)(env->envid != NULL ? env->envid : "");
    if (env->rcpt_dsn == NULL)
        return 0;
    *notify = calloc(env->n_rcpts, sizeof(**notify));
    *orcpt = calloc(env->n_rcpts, sizeof(**orcpt));
    if (*notify == NULL || *orcpt == NULL)
        return HAMR_ENOMEM;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        (*notify)[i] = env->rcpt_dsn[i].notify;
        (*orcpt)[i] = (char *)(env->rcpt_dsn[i].orcpt != NULL ? env->rcpt_dsn[i].orcpt : "");
    }
    enq->n_notify = enq->n_orcpt = env->n_rcpts;
    enq->notify = *notify;
    enq->orcpt = *orcpt;
    return 0;
}

int relay_sink_submit(void *data, const struct smtpd_envelope *env, smtpd_sink_cb cb, void *arg)
{
    struct relay *r = data;
    if (r->stopping)
        return HAMR_ESHUTDOWN;
    if (disk_guard_low(&r->disk))
        return HAMR_ENOSPACE;

    /* Signed here and only here: see the DKIM paragraph at the top. */
    uint8_t *signed_body;
    size_t body_len = env->body_len;
    int rv = relay_sink_dkim(r, env, &signed_body, &body_len);
    if (rv != 0)
        return rv;
    const uint8_t *body = signed_body != NULL ? signed_body : env->body;

    uint8_t sha[SHA256_DIGEST_LENGTH];
    SHA256(body, body_len, sha);
    uint64_t now = relay_cluster_now(r);

    Hamr__Enqueue enq = HAMR__ENQUEUE__INIT;
    enq.queue_id = (char *)env->queue_id;
    enq.sender = (char *)env->sender;
    enq.n_rcpts = env->n_rcpts;
    enq.rcpts = (char **)env->rcpts;
    enq.body.data = (uint8_t *)body;
    enq.body.len = body_len;
    enq.expires_at_ms = now + r->cfg->queue_lifetime_ms;
    enq.body_sha256.data = sha;
    enq.body_sha256.len = sizeof(sha);
    enq.client_addr = (char *)env->client_addr;
    enq.helo = (char *)env->helo;
    enq.accepted_by = r->cfg->node_id;
    enq.body_8bit = env->body_8bit;
    uint32_t *notify;
    char **orcpt;
    rv = relay_sink_enqueue_ext(r, env, body, body_len, &enq, &notify, &orcpt);
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.timestamp_ms = now;
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &enq;

    uint8_t *entry;
    size_t len;
    if (rv == 0)
        rv = proto_entry_pack(&e, NULL, &entry, &len);
    free(signed_body); /* packed: the entry has its own copy */
    free(notify);
    free(orcpt);
    if (rv != 0)
        return rv;
    struct relay_sink_req *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        free(entry);
        return HAMR_ENOMEM;
    }
    q->relay = r;
    q->cb = cb;
    q->arg = arg;
    q->started = uv_now(r->loop);
    rv = proposer_submit(r->prop, entry, len, env->queue_id, r->cfg->proposal_timeout_ms,
                         relay_sink_done, q);
    if (rv != 0)
        free(q);
    return rv;
}

/* ---------------------------------------------------------------------------
 * The leader's side of the peer channel.
 * ------------------------------------------------------------------------- */

void relay_peer_request(void *data, struct peer_call *call, const Hamr__PeerMsg *msg)
{
    struct relay *r = data;
    if (msg->body_case == HAMR__PEER_MSG__BODY_REPORT) {
        relay_spread_serve(r, call, msg->report); /* a node that delivers, to the leader */
        return;
    }
    proposer_serve(r->prop, call, peer_call_node(call), msg);
}
