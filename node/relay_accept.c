/*
 * relay_accept.c - the acceptance path: the SMTP sink and the leader's side
 * of the peer channel.
 *
 * Happy path (any node): relay_sink_submit packs the message into one Enqueue
 * entry and proposes it (relay_propose_bytes: raft here on the leader, the
 * peer channel on a follower); the commit callback answers the session, which
 * replies 250.
 *
 * Failure modes and what the session is told:
 *   - no leader known: wait (RELAY_RETRY_MS steps) up to three election
 *     timeouts, then HAMR_ENOQUORUM (451);
 *   - the proposal was refused before it reached the log (not leader any
 *     more, transfer in progress): try again, same rules;
 *   - the outcome is unknown (leadership lost after the append, the peer
 *     connection broke, the forward timed out): ask the leader whether the
 *     queue id is committed (relay_submit_query); present: 250; absent:
 *     propose the same entry again (an Enqueue of a known id is a no-op, so a
 *     late commit of the first copy cannot duplicate the message);
 *   - the whole wait is bounded by proposal_timeout: then HAMR_ETIMEDOUT (451).
 *     The entry may still commit: the client's retry is a duplicate at worst,
 *     never a loss.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "consensus/consensus.h"
#include "node/peer.h"
#include "node/relay_internal.h"

/* relay_submit - one entry on its way to a commit, tried again until it is. */
struct relay_submit {
    struct relay *relay;
    relay_propose_cb cb;
    void *arg;
    bool query;             /* an unknown outcome is resolved by asking for queue_id */
    char queue_id[QUEUE_ID_MAX];
    uint8_t *entry;         /* the packed Enqueue, kept for proposing again */
    size_t len;
    uint64_t deadline;      /* uv_now: give up (451) */
    uint64_t noleader_since; /* uv_now when we first found no leader; 0 if one */
    bool unknown;           /* an attempt's outcome is unknown: query first */
    bool in_doubt;          /* some attempt may still commit (not yet ruled out) */
    bool busy;              /* an attempt is in flight */
    bool waiting;           /* on r->waiting */
    unsigned attempts;
    struct relay_attempt *attempt; /* the attempt in flight, if any */
    uint64_t fwd_leader;    /* the attempt went to this leader by peer (0: raft here) */
    struct relay_submit *prev, *next;     /* r->waiting */
    struct relay_submit *fprev, *fnext;   /* r->forwarding, while fwd_leader != 0 */
};

/*
 * relay_attempt - the callback argument of one attempt. A submit can give up
 * on an attempt (its leader was replaced) before the attempt's callback comes;
 * the callback then finds s == NULL and only frees this.
 */
struct relay_attempt {
    struct relay_submit *s;
};

/* relay_attempt_new - start tracking an attempt of s. */
static struct relay_attempt *relay_attempt_new(struct relay_submit *s)
{
    struct relay_attempt *a = calloc(1, sizeof(*a));
    if (a != NULL) {
        a->s = s;
        s->attempt = a;
    }
    return a;
}

/* relay_forwarding_unlink - s no longer has a forwarded attempt in flight. */
static void relay_forwarding_unlink(struct relay_submit *s)
{
    struct relay *r = s->relay;
    if (s->fwd_leader == 0)
        return;
    if (s->fprev)
        s->fprev->fnext = s->fnext;
    else
        r->forwarding = s->fnext;
    if (s->fnext)
        s->fnext->fprev = s->fprev;
    s->fprev = s->fnext = NULL;
    s->fwd_leader = 0;
}

/* relay_attempt_end - the callback of a, or NULL if its submit gave up on it. Frees a. */
static struct relay_submit *relay_attempt_end(struct relay_attempt *a)
{
    struct relay_submit *s = a->s;
    free(a);
    if (s != NULL) {
        s->attempt = NULL;
        s->busy = false;
        relay_forwarding_unlink(s);
    }
    return s;
}

/* relay_attempt_started - a's call went out; note where, for relay_submits_retry. */
static void relay_attempt_started(struct relay_submit *s, bool local, uint64_t leader)
{
    struct relay *r = s->relay;
    s->busy = true;
    s->noleader_since = 0;
    if (local || leader == 0)
        return;
    s->fwd_leader = leader;
    s->fnext = r->forwarding;
    if (r->forwarding)
        r->forwarding->fprev = s;
    r->forwarding = s;
}

static void relay_submit_attempt(struct relay_submit *s);

/* relay_sink_new_id - a cluster-unique queue id: time, node, counter. */
int relay_sink_new_id(void *data, char *id, size_t idlen)
{
    struct relay *r = data;
    uint64_t ms = relay_now_ms();
    r->id_counter++;
    /* 11 hex of ms (good for 500+ years), 3 of node id, 5 of counter: 19 chars. */
    int n = snprintf(id, idlen, "%011" PRIX64 "%03" PRIX64 "%05" PRIX64,
                     (uint64_t)(ms & 0xFFFFFFFFFFFull), r->cfg->node_id & 0xFFF,
                     r->id_counter & 0xFFFFF);
    return (n > 0 && (size_t)n < idlen) ? 0 : HAMR_EINVAL;
}

/* relay_sink_check_mail - may this node take a transaction now? */
int relay_sink_check_mail(void *data)
{
    struct relay *r = data;
    if (r->draining || r->stopping)
        return HAMR_EDRAINING;
    if (r->free_bytes < r->disk_soft)
        return HAMR_ENOSPACE;
    /* Any known leader will do, even one still busy with its election
     * barrier or a transfer: by the end of DATA the submit waits for it. */
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (info.leader_id == 0)
        return HAMR_ENOQUORUM;
    return 0;
}

/* relay_submit_unwait - take s off the waiting list. */
static void relay_submit_unwait(struct relay_submit *s)
{
    struct relay *r = s->relay;
    if (!s->waiting)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        r->waiting = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->waiting = false;
}

/* relay_submit_finish - answer the caller and free s. */
static void relay_submit_finish(struct relay_submit *s, int status, intptr_t result)
{
    relay_submit_unwait(s);
    relay_forwarding_unlink(s);
    if (s->attempt != NULL)
        s->attempt->s = NULL; /* its callback, when it comes, only frees it */
    /* Giving up while an earlier attempt may still commit: say so, so that
     * nobody answers 4xx for a message that is then delivered. */
    if (status != 0 && s->in_doubt && s->query)
        status = HAMR_EINDOUBT;
    if (status != 0)
        log_warn("proposal failed id=%s attempts=%u error=\"%s\"", s->queue_id, s->attempts,
                 hamr_strerror(status));
    else if (s->attempts > 1)
        log_info("proposal committed id=%s attempts=%u", s->queue_id, s->attempts);
    s->cb(s->arg, status, result);
    free(s->entry);
    free(s);
}

/* relay_submit_wait - try again at the next retry tick (if time is left). */
static void relay_submit_wait(struct relay_submit *s)
{
    struct relay *r = s->relay;
    if (r->stopping) {
        relay_submit_finish(s, HAMR_ESHUTDOWN, 0);
        return;
    }
    HAMR_ASSERT(!s->waiting);
    s->waiting = true;
    s->next = r->waiting;
    if (r->waiting)
        r->waiting->prev = s;
    r->waiting = s;
}

/* relay_submit_no_leader - no leader to talk to: wait a bounded time. */
static void relay_submit_no_leader(struct relay_submit *s)
{
    struct relay *r = s->relay;
    uint64_t now = uv_now(r->loop);
    if (s->noleader_since == 0)
        s->noleader_since = now;
    /* Three election timeouts without a leader: this node is cut off. */
    if (now - s->noleader_since >= 3ull * r->cfg->election_timeout_ms) {
        relay_submit_finish(s, HAMR_ENOQUORUM, 0);
        return;
    }
    relay_submit_wait(s);
}

/* relay_submit_proposed - the leader answered (or the attempt failed). */
static void relay_submit_proposed(void *arg, int status, intptr_t result)
{
    struct relay_submit *s = relay_attempt_end(arg);
    if (s == NULL)
        return; /* given up on: a newer attempt is under way */
    struct relay *r = s->relay;
    if (status == 0) {
        relay_submit_finish(s, 0, result);
        return;
    }
    bool unknown = status == HAMR_ELEADERSHIPLOST || status == HAMR_ETIMEDOUT ||
                   status == HAMR_ESHUTDOWN;
    if (unknown)
        s->in_doubt = true;
    if (r->stopping) {
        relay_submit_finish(s, HAMR_ESHUTDOWN, 0);
        return;
    }
    switch (status) {
    case HAMR_ENOTLEADER:
    case HAMR_ENOQUORUM:
    case HAMR_EBUSY:
        /* Known not to be in the log: try again when there is a leader. */
        relay_submit_wait(s);
        return;
    case HAMR_ELEADERSHIPLOST:
    case HAMR_ETIMEDOUT:
    case HAMR_ESHUTDOWN: /* the leader was stopping: it may have appended it */
        /* Without a queue id to ask for, the entry must be one that is a
         * no-op when applied twice (an Outcome under its lease): propose again. */
        s->unknown = s->query;
        relay_submit_wait(s);
        return;
    default:
        relay_submit_finish(s, status, 0);
        return;
    }
}

/* relay_submit_send - hand the entry to raft here or to the leader; 0 or why not. */
static int relay_submit_send(struct relay_submit *s, uint64_t timeout_ms)
{
    struct relay *r = s->relay;
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    bool local = consensus_is_ready(r->cons);
    struct relay_attempt *a = relay_attempt_new(s);
    if (a == NULL)
        return HAMR_ENOMEM;
    int rv = relay_propose_bytes(r, s->entry, s->len, timeout_ms, relay_submit_proposed, a);
    if (rv != 0) {
        s->attempt = NULL;
        free(a);
        return rv;
    }
    relay_attempt_started(s, local, info.leader_id);
    return 0;
}

/* relay_submit_propose - one attempt at proposing the entry. */
static void relay_submit_propose(struct relay_submit *s)
{
    struct relay *r = s->relay;
    uint64_t now = uv_now(r->loop);
    if (now >= s->deadline) {
        relay_submit_finish(s, HAMR_ETIMEDOUT, 0);
        return;
    }
    s->attempts++;
    int rv = relay_submit_send(s, s->deadline - now);
    if (rv == 0)
        return;
    if (rv == HAMR_ENOQUORUM || rv == HAMR_ENOTLEADER)
        relay_submit_no_leader(s);
    else if (rv == HAMR_EBUSY)
        relay_submit_wait(s);
    else
        relay_submit_finish(s, rv, 0);
}

/* relay_submit_queried - the leader says whether our queue id is committed. */
static void relay_submit_queried(void *arg, int status, const Hamr__PeerResult *res)
{
    struct relay_submit *s = relay_attempt_end(arg);
    if (s == NULL)
        return;
    struct relay *r = s->relay;
    if (r->stopping) {
        relay_submit_finish(s, HAMR_ESHUTDOWN, 0);
        return;
    }
    if (status != 0 || res->status != 0) {
        relay_submit_wait(s); /* no answer: still unknown, ask again */
        return;
    }
    s->unknown = false;
    if (res->found) {
        r->resolved++;
        log_info("unknown outcome resolved id=%s committed=yes", s->queue_id);
        relay_submit_finish(s, 0, 0);
        return;
    }
    log_info("unknown outcome resolved id=%s committed=no action=propose-again", s->queue_id);
    /* The leader is past its election barrier and does not have it: no
     * earlier attempt can commit any more (it would sit before the barrier). */
    s->in_doubt = false;
    relay_submit_propose(s);
}

/* relay_submit_query - is s->queue_id committed? Ask the leader (or look, if it is us). */
static void relay_submit_query(struct relay_submit *s)
{
    struct relay *r = s->relay;
    if (consensus_is_ready(r->cons)) {
        /* Ready means the election barrier applied: every committed entry is
         * in our queue, so absence is an answer. */
        s->unknown = false;
        if (queue_contains(r->queue, s->queue_id)) {
            r->resolved++;
            log_info("unknown outcome resolved id=%s committed=yes", s->queue_id);
            relay_submit_finish(s, 0, 0);
        } else {
            log_info("unknown outcome resolved id=%s committed=no action=propose-again",
                     s->queue_id);
            s->in_doubt = false;
            relay_submit_propose(s);
        }
        return;
    }
    char addr[CONSENSUS_ADDR_MAX];
    if (relay_leader_peer(r, addr, sizeof(addr)) != 0) {
        relay_submit_no_leader(s);
        return;
    }
    Hamr__PeerQuery q = HAMR__PEER_QUERY__INIT;
    q.queue_id = s->queue_id;
    Hamr__PeerMsg msg = HAMR__PEER_MSG__INIT;
    msg.body_case = HAMR__PEER_MSG__BODY_QUERY;
    msg.query = &q;
    uint64_t now = uv_now(r->loop);
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    struct relay_attempt *a = relay_attempt_new(s);
    int rv = a == NULL ? HAMR_ENOMEM
                       : peer_client_call(r->peer_cli, addr, &msg, s->deadline - now,
                                          relay_submit_queried, a);
    if (rv != 0) {
        s->attempt = NULL;
        free(a);
        relay_submit_wait(s);
        return;
    }
    relay_attempt_started(s, false, info.leader_id);
}

/* relay_submit_attempt - the next step: query if unknown, else propose. */
static void relay_submit_attempt(struct relay_submit *s)
{
    struct relay *r = s->relay;
    if (uv_now(r->loop) >= s->deadline) {
        relay_submit_finish(s, HAMR_ETIMEDOUT, 0);
        return;
    }
    if (s->unknown)
        relay_submit_query(s);
    else
        relay_submit_propose(s);
}

/*
 * relay_submits_abandon - forwarded attempts whose leader has been replaced:
 * do not wait for their (possibly long) timeout. Their outcome is unknown, so
 * the new leader is asked for the queue id (or, for an Outcome, it is sent
 * again). The old attempt's callback, when it comes, is ignored.
 */
static void relay_submits_abandon(struct relay *r)
{
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (info.leader_id == 0)
        return;
    struct relay_submit *s = r->forwarding;
    while (s != NULL) {
        struct relay_submit *next = s->fnext;
        if (s->fwd_leader != info.leader_id && s->attempt != NULL) {
            log_info("leader changed from node=%" PRIu64 " to node=%" PRIu64
                     ": asking the new leader about id=%s",
                     s->fwd_leader, info.leader_id, s->queue_id);
            s->attempt->s = NULL;
            s->attempt = NULL;
            s->busy = false;
            relay_forwarding_unlink(s);
            s->in_doubt = true;
            s->unknown = s->query;
            relay_submit_wait(s);
        }
        s = next;
    }
}

void relay_submits_retry(struct relay *r)
{
    relay_submits_abandon(r);
    /* Detach the list first: an attempt may put a submit back on it. */
    struct relay_submit *list = r->waiting;
    r->waiting = NULL;
    while (list != NULL) {
        struct relay_submit *s = list;
        list = s->next;
        if (list)
            list->prev = NULL;
        s->prev = s->next = NULL;
        s->waiting = false;
        relay_submit_attempt(s);
    }
}

void relay_submits_abort(struct relay *r)
{
    while (r->waiting != NULL)
        relay_submit_finish(r->waiting, HAMR_ESHUTDOWN, 0);
}

int relay_propose_retry(struct relay *r, uint8_t *entry, size_t len, const char *queue_id,
                        bool query, uint64_t timeout_ms, relay_propose_cb cb, void *arg)
{
    if (r->stopping) {
        free(entry);
        return HAMR_ESHUTDOWN;
    }
    struct relay_submit *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        free(entry);
        return HAMR_ENOMEM;
    }
    s->relay = r;
    s->cb = cb;
    s->arg = arg;
    s->query = query;
    s->entry = entry;
    s->len = len;
    s->deadline = uv_now(r->loop) + timeout_ms;
    hamr_strlcpy(s->queue_id, queue_id, sizeof(s->queue_id));
    /* The first attempt runs now; the caller is answered from a callback
     * (consensus and the peer client never call back from inside a call; a
     * wait goes through the retry timer). */
    s->attempts++;
    int rv = relay_submit_send(s, timeout_ms);
    if (rv == 0)
        return 0;
    if (rv == HAMR_ENOQUORUM || rv == HAMR_ENOTLEADER || rv == HAMR_EBUSY) {
        s->noleader_since = rv == HAMR_EBUSY ? 0 : uv_now(r->loop);
        relay_submit_wait(s);
        return 0;
    }
    free(s->entry);
    free(s);
    return rv;
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

int relay_sink_submit(void *data, const struct smtpd_envelope *env, smtpd_sink_cb cb, void *arg)
{
    struct relay *r = data;
    if (r->stopping)
        return HAMR_ESHUTDOWN;
    if (r->free_bytes < r->disk_soft)
        return HAMR_ENOSPACE;

    uint8_t sha[SHA256_DIGEST_LENGTH];
    SHA256(env->body, env->body_len, sha);
    uint64_t now = relay_now_ms();

    Hamr__Enqueue enq = HAMR__ENQUEUE__INIT;
    enq.queue_id = (char *)env->queue_id;
    enq.sender = (char *)env->sender;
    enq.n_rcpts = env->n_rcpts;
    enq.rcpts = (char **)env->rcpts;
    enq.body.data = (uint8_t *)env->body;
    enq.body.len = env->body_len;
    enq.expires_at_ms = now + r->cfg->queue_lifetime_ms;
    enq.body_sha256.data = sha;
    enq.body_sha256.len = sizeof(sha);
    enq.client_addr = (char *)env->client_addr;
    enq.helo = (char *)env->helo;
    enq.accepted_by = r->cfg->node_id;
    enq.body_8bit = env->body_8bit;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.timestamp_ms = now;
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &enq;

    uint8_t *entry;
    size_t len;
    int rv = proto_entry_pack(&e, NULL, &entry, &len);
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
    rv = relay_propose_retry(r, entry, len, env->queue_id, true, r->cfg->proposal_timeout_ms,
                             relay_sink_done, q);
    if (rv != 0)
        free(q);
    return rv;
}

/* ---------------------------------------------------------------------------
 * The leader's side of the peer channel.
 * ------------------------------------------------------------------------- */

/* relay_peer_reply - answer a peer call with status, result and who leads. */
static void relay_peer_reply(struct relay *r, struct peer_call *call, int status, int64_t result,
                             bool found)
{
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
    res.status = status;
    res.result = result;
    res.leader_id = info.leader_id;
    res.found = found;
    peer_reply(call, &res);
}

struct relay_peer_prop {
    struct relay *relay;
    struct peer_call *call;
};

/* relay_peer_proposed - a forwarded proposal committed (or failed): tell the follower. */
static void relay_peer_proposed(void *arg, int status, intptr_t result)
{
    struct relay_peer_prop *pp = arg;
    relay_peer_reply(pp->relay, pp->call, status, (int64_t)result, false);
    free(pp);
}

void relay_peer_request(void *data, struct peer_call *call, const Hamr__PeerMsg *msg)
{
    struct relay *r = data;
    if (r->stopping) {
        relay_peer_reply(r, call, HAMR_ESHUTDOWN, 0, false);
        return;
    }
    if (!consensus_is_ready(r->cons)) {
        relay_peer_reply(r, call, HAMR_ENOTLEADER, 0, false);
        return;
    }
    switch (msg->body_case) {
    case HAMR__PEER_MSG__BODY_QUERY: {
        const char *id = msg->query->queue_id ? msg->query->queue_id : "";
        relay_peer_reply(r, call, 0, 0, queue_contains(r->queue, id));
        return;
    }
    case HAMR__PEER_MSG__BODY_PROPOSE: {
        /* Never let a peer put an entry in the log that every node would
         * refuse to apply (that stops them all): check it decodes first. */
        Hamr__Entry *e = NULL;
        int rv = proto_entry_unpack(msg->propose->entry.data, msg->propose->entry.len, &e);
        if (rv != 0) {
            log_warn("peer proposal refused node=%" PRIu64 " error=\"%s\"",
                     peer_call_node(call), hamr_strerror(rv));
            relay_peer_reply(r, call, rv, 0, false);
            return;
        }
        hamr__entry__free_unpacked(e, NULL);
        struct relay_peer_prop *pp = calloc(1, sizeof(*pp));
        if (pp == NULL) {
            relay_peer_reply(r, call, HAMR_ENOMEM, 0, false);
            return;
        }
        pp->relay = r;
        pp->call = call;
        rv = relay_propose_bytes(r, msg->propose->entry.data, msg->propose->entry.len,
                                 r->cfg->proposal_timeout_ms, relay_peer_proposed, pp);
        if (rv != 0) {
            free(pp);
            relay_peer_reply(r, call, rv, 0, false);
        }
        return;
    }
    default:
        relay_peer_reply(r, call, HAMR_EPROTO, 0, false);
        return;
    }
}
