/*
 * peer_policy.c - what a node takes from another node over the peer
 * channel (see peer_policy.h for the rules and why).
 */
#include <stdbool.h>
#include <string.h>

#include "queue/queue.h"
#include "node/peer_policy.h"

/* peer_policy_enqueue - a message the caller accepted, shaped as a session shapes it. */
static enum peer_policy_reason peer_policy_enqueue(const Hamr__Enqueue *m,
                                                   uint64_t from,
                                                   const struct peer_policy_limits *lim)
{
    if (m->accepted_by != from)
        return PEER_POLICY_IDENTITY;
    if (m->is_dsn || m->queue_id == NULL || m->queue_id[0] == '\0' ||
        strlen(m->queue_id) >= QUEUE_ID_MAX || m->sender == NULL || m->n_rcpts == 0 ||
        m->n_rcpts > lim->recipient_limit)
        return PEER_POLICY_ENVELOPE;
    for (size_t i = 0; i < m->n_rcpts; i++)
        if (m->rcpts[i] == NULL || m->rcpts[i][0] == '\0')
            return PEER_POLICY_ENVELOPE;
    if (m->body.len > lim->message_size_limit + PEER_POLICY_HEADER_ROOM)
        return PEER_POLICY_SIZE;
    return PEER_POLICY_OK;
}

/* peer_policy_outcome - results for recipients leased to the caller under this lease. */
static enum peer_policy_reason peer_policy_outcome(const Hamr__Outcome *o,
                                                   uint64_t from,
                                                   const struct queue *q)
{
    if (o->lease_id == 0 || o->queue_id == NULL || o->n_results == 0)
        return PEER_POLICY_LEASE;
    const struct queue_msg *m = queue_find(q, o->queue_id);
    if (m == NULL)
        return PEER_POLICY_LEASE;
    for (size_t i = 0; i < o->n_results; i++) {
        uint32_t k = o->results[i]->rcpt_index;
        if (k >= m->n_rcpts || queue_rcpt_lease(&m->rcpts[k])->id != o->lease_id ||
            queue_rcpt_lease(&m->rcpts[k])->node != from)
            return PEER_POLICY_LEASE;
    }
    return PEER_POLICY_OK;
}

enum peer_policy_reason peer_policy_check(const Hamr__Entry *e,
                                          uint64_t from,
                                          const struct queue *q,
                                          const struct peer_policy_limits *lim)
{
    if (from == 0 || from == lim->self)
        return PEER_POLICY_IDENTITY;
    switch (e->cmd_case) {
        case HAMR__ENTRY__CMD_ENQUEUE:
            return peer_policy_enqueue(e->enqueue, from, lim);
        case HAMR__ENTRY__CMD_NODE_INFO:
            return e->node_info->node_id == from ? PEER_POLICY_OK : PEER_POLICY_IDENTITY;
        case HAMR__ENTRY__CMD_OUTCOME:
            return peer_policy_outcome(e->outcome, from, q);
        case HAMR__ENTRY__CMD_STS_POLICY:
            /* From cluster level 6 any node delivers, and writes the policy its fetch
             * brought; apply refuses a malformed one (a result, not a stop). */
            return q != NULL && queue_cluster_level(q) >= QUEUE_LEVEL_SPREAD ? PEER_POLICY_OK
                                                                             : PEER_POLICY_KIND;
        default:
            return PEER_POLICY_KIND;
    }
}

enum peer_policy_reason peer_policy_fetch(const Hamr__PeerFetch *f, uint64_t from)
{
    if (from == 0)
        return PEER_POLICY_IDENTITY;
    if (f->queue_id == NULL || f->queue_id[0] == '\0' || strlen(f->queue_id) >= QUEUE_ID_MAX)
        return PEER_POLICY_ENVELOPE;
    if (f->max == 0)
        return PEER_POLICY_SIZE;
    return PEER_POLICY_OK;
}

const char *peer_policy_reason_name(enum peer_policy_reason r)
{
    static const char *const names[PEER_POLICY_REASONS] = {
        [PEER_POLICY_OK] = "ok",
        [PEER_POLICY_KIND] = "kind",
        [PEER_POLICY_IDENTITY] = "identity",
        [PEER_POLICY_ENVELOPE] = "envelope",
        [PEER_POLICY_SIZE] = "size",
        [PEER_POLICY_LEASE] = "lease",
    };
    return (unsigned)r < PEER_POLICY_REASONS ? names[r] : "unknown";
}
