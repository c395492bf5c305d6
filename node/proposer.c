/*
 * proposer.c - the one way a node gets an entry into the replicated log.
 *
 * Three layers, each built on the one before:
 *
 *   appends    (proposer_append_*)  an entry handed to raft on this node,
 *              at most max_inflight at once, the rest in a FIFO; each with
 *              a deadline after which its caller is told HAMR_ETIMEDOUT
 *              (raft's own answer, when it comes, is then dropped).
 *   sends      (proposer_send)      one attempt: an append when this node
 *              leads, else the entry forwarded to the leader's peer port.
 *   submits    (proposer_submit)    attempts until the entry commits or its
 *              time is up, through leader changes, transfers and broken
 *              forwards:
 *                - no leader known: wait (proposer_tick) up to no_leader_ms,
 *                  then HAMR_ENOQUORUM;
 *                - refused before it reached a log (not leader any more,
 *                  transfer, busy): try again, same rules;
 *                - outcome unknown (leadership lost after the append, the
 *                  peer connection broke, the forward timed out, the leader
 *                  was stopping): with an id, ask the leader whether the id
 *                  is committed (present: done; absent: propose the same
 *                  entry again, since the leader is past its election barrier
 *                  and an earlier copy can no longer commit); without an id,
 *                  propose again (the entry is harmless twice);
 *                - a forwarded attempt whose leader has been replaced is
 *                  not waited for: its outcome is unknown at once.
 *
 * And the leader's side of the peer channel (proposer_serve): a follower's
 * query is answered from the applied state, its proposal checked (ops->check)
 * and sent through the same appends.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "proto/hamr.pb-c.h"
#include "node/proposer.h"

#define PROPOSER_ADDR_MAX 128

/* proposer_append - one entry handed to raft here (or waiting for a place). */
struct proposer_append {
    struct proposer *p;
    proposer_cb cb; /* NULL once answered (deadline) */
    void *arg;
    uint64_t deadline;
    uint8_t *buf; /* while in the FIFO: the entry (ops->alloc), ours */
    size_t len;
    struct proposer_append *prev, *next; /* every append not yet answered by raft */
    struct proposer_append *qnext;       /* the FIFO */
};

/* proposer_submit - one entry on its way to a commit, tried again until it is. */
struct proposer_sub {
    struct proposer *p;
    proposer_cb cb;
    void *arg;
    bool has_id; /* an unknown outcome is resolved by asking for id */
    char id[64];
    uint8_t *entry; /* malloc'd, kept for proposing again */
    size_t len;
    uint64_t deadline;
    uint64_t noleader_since; /* when we first found no leader; 0 while there is one */
    bool unknown;            /* an attempt's outcome is unknown: ask first */
    bool in_doubt;           /* some attempt may still commit */
    bool waiting;            /* on p->waiting */
    unsigned attempts;
    struct proposer_try *attempt;       /* the attempt in flight, if any */
    uint64_t fwd_leader;                /* it went to this leader by peer (0: here, or none) */
    struct proposer_sub *prev, *next;   /* p->waiting */
    struct proposer_sub *fprev, *fnext; /* p->forwarding, while fwd_leader != 0 */
};

/*
 * proposer_try - the callback argument of one attempt. A submit can give up
 * on an attempt (its leader was replaced) before the attempt's callback
 * comes; the callback then finds s == NULL and only frees this.
 */
struct proposer_try {
    struct proposer_sub *s;
};

/* proposer_fwd - a forwarded send waiting for the leader's answer. */
struct proposer_fwd {
    proposer_cb cb;
    void *arg;
};

/* proposer_served - a follower's proposal being proposed here. */
struct proposer_served {
    struct proposer *p;
    void *call;
};

struct proposer {
    struct proposer_ops ops;
    struct proposer_config cfg;
    bool stopping;
    unsigned inflight;               /* appends raft holds */
    struct proposer_append *appends; /* all not yet answered by raft */
    struct proposer_append *fifo_head, *fifo_tail;
    struct proposer_sub *waiting;    /* submits waiting for the next tick */
    struct proposer_sub *forwarding; /* submits with an attempt at another node */
    uint64_t forwarded;
    uint64_t resolved;
};

/* ---------------------------------------------------------------------------
 * Appends: raft on this node.
 * ------------------------------------------------------------------------- */

/* proposer_append_unlink - take a off the list of appends. */
static void proposer_append_unlink(struct proposer *p, struct proposer_append *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else
        p->appends = a->next;
    if (a->next)
        a->next->prev = a->prev;
    a->prev = a->next = NULL;
}

/* proposer_append_link - put a on the list of appends (for the deadline sweep). */
static void proposer_append_link(struct proposer *p, struct proposer_append *a)
{
    a->next = p->appends;
    if (p->appends)
        p->appends->prev = a;
    p->appends = a;
}

static void proposer_append_done(void *arg, int status, void *result);

/* proposer_append_drain - hand FIFO entries to raft while there is room. */
static void proposer_append_drain(struct proposer *p)
{
    while (p->fifo_head != NULL && p->inflight < p->cfg.max_inflight) {
        struct proposer_append *a = p->fifo_head;
        p->fifo_head = a->qnext;
        if (p->fifo_head == NULL)
            p->fifo_tail = NULL;
        a->qnext = NULL;
        uint8_t *buf = a->buf;
        a->buf = NULL;
        int rv = a->cb == NULL ? HAMR_ETIMEDOUT
                               : p->ops.append(p->ops.data, buf, a->len, proposer_append_done, a);
        if (rv == 0) {
            p->inflight++;
            continue;
        }
        /* Never reached raft: the outcome is known (not in the log). */
        p->ops.free(buf);
        proposer_append_unlink(p, a);
        if (a->cb != NULL)
            a->cb(a->arg, rv, 0);
        free(a);
    }
}

/* proposer_append_done - raft answered: pass it on unless the deadline already did. */
static void proposer_append_done(void *arg, int status, void *result)
{
    struct proposer_append *a = arg;
    struct proposer *p = a->p;
    HAMR_ASSERT(p->inflight > 0);
    p->inflight--;
    proposer_append_unlink(p, a);
    if (a->cb != NULL)
        a->cb(a->arg, status, status == 0 ? (intptr_t)result : 0);
    free(a);
    proposer_append_drain(p);
}

/*
 * proposer_append_start - buf (from ops->alloc) into raft, or into the FIFO
 * when max_inflight are in flight; takes buf on 0.
 */
static int proposer_append_start(struct proposer *p,
                                 uint8_t *buf,
                                 size_t len,
                                 uint64_t timeout_ms,
                                 proposer_cb cb,
                                 void *arg)
{
    struct proposer_append *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return HAMR_ENOMEM;
    a->p = p;
    a->cb = cb;
    a->arg = arg;
    a->deadline = p->ops.now(p->ops.data) + timeout_ms;
    if (p->inflight >= p->cfg.max_inflight || p->fifo_head != NULL) {
        a->buf = buf;
        a->len = len;
        if (p->fifo_tail)
            p->fifo_tail->qnext = a;
        else
            p->fifo_head = a;
        p->fifo_tail = a;
        proposer_append_link(p, a);
        return 0;
    }
    int rv = p->ops.append(p->ops.data, buf, len, proposer_append_done, a);
    if (rv != 0) {
        free(a);
        return rv;
    }
    p->inflight++;
    proposer_append_link(p, a);
    return 0;
}

void proposer_expire(struct proposer *p)
{
    uint64_t now = p->ops.now(p->ops.data);
    for (struct proposer_append *a = p->appends; a != NULL; a = a->next) {
        if (a->cb != NULL && now >= a->deadline) {
            proposer_cb cb = a->cb;
            a->cb = NULL;
            log_warn("proposal timed out in raft");
            cb(a->arg, HAMR_ETIMEDOUT, 0);
        }
    }
}

/* ---------------------------------------------------------------------------
 * Sends: one attempt, here or at the leader.
 * ------------------------------------------------------------------------- */

/* proposer_leader_addr - the current leader (*leader) and its peer address when it is another
 * node. */
static int proposer_leader_addr(struct proposer *p, uint64_t *leader, char *addr, size_t addrlen)
{
    *leader = p->ops.leader_id(p->ops.data);
    if (*leader == 0 || p->ops.is_leader(p->ops.data))
        return HAMR_ENOQUORUM;
    return p->ops.leader_addr(p->ops.data, *leader, addr, addrlen);
}

bool proposer_leader_known(struct proposer *p)
{
    char addr[PROPOSER_ADDR_MAX];
    uint64_t leader;
    return p->ops.is_leader(p->ops.data) ||
           proposer_leader_addr(p, &leader, addr, sizeof(addr)) == 0;
}

/* proposer_fwd_done - the leader answered a forwarded entry (or the channel failed). */
static void proposer_fwd_done(void *arg, int status, const Hamr__PeerResult *res)
{
    struct proposer_fwd *f = arg;
    intptr_t result = 0;
    if (status == 0) {
        status = res->status;
        result = (intptr_t)res->result;
    } else if (status == HAMR_ECONNECT) {
        /* Sent or not, we cannot tell: the caller resolves it by id. */
        status = HAMR_ELEADERSHIPLOST;
    }
    f->cb(f->arg, status, result);
    free(f);
}

/* proposer_forward - entry to the leader's peer port. */
static int proposer_forward(struct proposer *p,
                            const uint8_t *entry,
                            size_t len,
                            uint64_t timeout_ms,
                            proposer_cb cb,
                            void *arg)
{
    char addr[PROPOSER_ADDR_MAX];
    uint64_t leader;
    if (proposer_leader_addr(p, &leader, addr, sizeof(addr)) != 0)
        return HAMR_ENOQUORUM;
    struct proposer_fwd *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return HAMR_ENOMEM;
    f->cb = cb;
    f->arg = arg;
    Hamr__PeerPropose pp = HAMR__PEER_PROPOSE__INIT;
    pp.entry.data = (uint8_t *)entry;
    pp.entry.len = len;
    Hamr__PeerMsg msg = HAMR__PEER_MSG__INIT;
    msg.body_case = HAMR__PEER_MSG__BODY_PROPOSE;
    msg.propose = &pp;
    int rv = p->ops.forward(p->ops.data, leader, addr, &msg, timeout_ms, proposer_fwd_done, f);
    if (rv != 0) {
        free(f);
        return rv;
    }
    p->forwarded++;
    return 0;
}

int proposer_send(struct proposer *p,
                  const uint8_t *entry,
                  size_t len,
                  uint64_t timeout_ms,
                  proposer_cb cb,
                  void *arg)
{
    if (p->stopping)
        return HAMR_ESHUTDOWN;
    if (!p->ops.is_leader(p->ops.data))
        return proposer_forward(p, entry, len, timeout_ms, cb, arg);
    uint8_t *buf = p->ops.alloc(len);
    if (buf == NULL)
        return HAMR_ENOMEM;
    memcpy(buf, entry, len);
    int rv = proposer_append_start(p, buf, len, timeout_ms, cb, arg);
    if (rv != 0)
        p->ops.free(buf);
    return rv;
}

/*
 * proposer_packed - buf (from ops->alloc; taken in every case) into raft
 * here without a copy, or, when this node does not lead and forwarding is
 * allowed, to the leader.
 */
static int proposer_packed(struct proposer *p,
                           uint8_t *buf,
                           size_t len,
                           uint64_t timeout_ms,
                           proposer_cb cb,
                           void *arg,
                           bool may_forward)
{
    int rv;
    bool taken = false; /* by raft; a forward copies buf into its frame */
    if (p->stopping) {
        rv = HAMR_ESHUTDOWN;
    } else if (p->ops.is_leader(p->ops.data)) {
        rv = proposer_append_start(p, buf, len, timeout_ms, cb, arg);
        taken = rv == 0;
    } else if (may_forward) {
        rv = proposer_forward(p, buf, len, timeout_ms, cb, arg);
    } else {
        rv = HAMR_ENOTLEADER;
    }
    if (!taken)
        p->ops.free(buf);
    return rv;
}

int proposer_append_packed(struct proposer *p,
                           uint8_t *buf,
                           size_t len,
                           uint64_t timeout_ms,
                           proposer_cb cb,
                           void *arg)
{
    return proposer_packed(p, buf, len, timeout_ms, cb, arg, false);
}

int proposer_send_packed(struct proposer *p,
                         uint8_t *buf,
                         size_t len,
                         uint64_t timeout_ms,
                         proposer_cb cb,
                         void *arg)
{
    return proposer_packed(p, buf, len, timeout_ms, cb, arg, true);
}

/* ---------------------------------------------------------------------------
 * Submits: attempts until the entry commits.
 * ------------------------------------------------------------------------- */

/* proposer_try_new - start tracking an attempt of s. */
static struct proposer_try *proposer_try_new(struct proposer_sub *s)
{
    struct proposer_try *t = calloc(1, sizeof(*t));
    if (t != NULL) {
        t->s = s;
        s->attempt = t;
    }
    return t;
}

/* proposer_forwarding_unlink - s no longer has a forwarded attempt in flight. */
static void proposer_forwarding_unlink(struct proposer_sub *s)
{
    struct proposer *p = s->p;
    if (s->fwd_leader == 0)
        return;
    if (s->fprev)
        s->fprev->fnext = s->fnext;
    else
        p->forwarding = s->fnext;
    if (s->fnext)
        s->fnext->fprev = s->fprev;
    s->fprev = s->fnext = NULL;
    s->fwd_leader = 0;
}

/* proposer_try_end - the callback of t, or NULL if its submit gave up on it. Frees t. */
static struct proposer_sub *proposer_try_end(struct proposer_try *t)
{
    struct proposer_sub *s = t->s;
    free(t);
    if (s != NULL) {
        s->attempt = NULL;
        proposer_forwarding_unlink(s);
    }
    return s;
}

/* proposer_try_started - the attempt went out; a forward is noted (its leader may change). */
static void proposer_try_started(struct proposer_sub *s, uint64_t fwd_leader)
{
    struct proposer *p = s->p;
    s->noleader_since = 0;
    if (fwd_leader == 0)
        return;
    s->fwd_leader = fwd_leader;
    s->fnext = p->forwarding;
    if (p->forwarding)
        p->forwarding->fprev = s;
    p->forwarding = s;
}

/* proposer_sub_unwait - take s off the waiting list. */
static void proposer_sub_unwait(struct proposer_sub *s)
{
    struct proposer *p = s->p;
    if (!s->waiting)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        p->waiting = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->waiting = false;
}

/* proposer_sub_finish - answer the caller and free s. */
static void proposer_sub_finish(struct proposer_sub *s, int status, intptr_t result)
{
    proposer_sub_unwait(s);
    proposer_forwarding_unlink(s);
    if (s->attempt != NULL)
        s->attempt->s = NULL; /* its callback, when it comes, only frees it */
    /* Giving up while an earlier attempt may still commit: say so, so that
     * nobody answers 4xx for a message that is then delivered. */
    if (status != 0 && s->in_doubt && s->has_id)
        status = HAMR_EINDOUBT;
    if (status != 0)
        log_warn("proposal failed id=%s attempts=%u error=\"%s\"", s->id, s->attempts,
                 hamr_strerror(status));
    else if (s->attempts > 1)
        log_info("proposal committed id=%s attempts=%u", s->id, s->attempts);
    s->cb(s->arg, status, result);
    free(s->entry);
    free(s);
}

/* proposer_sub_wait - try again at the next tick. */
static void proposer_sub_wait(struct proposer_sub *s)
{
    struct proposer *p = s->p;
    if (p->stopping) {
        proposer_sub_finish(s, HAMR_ESHUTDOWN, 0);
        return;
    }
    HAMR_ASSERT(!s->waiting);
    s->waiting = true;
    s->next = p->waiting;
    if (p->waiting)
        p->waiting->prev = s;
    p->waiting = s;
}

/* proposer_sub_no_leader - no leader to talk to: wait a bounded time. */
static void proposer_sub_no_leader(struct proposer_sub *s)
{
    struct proposer *p = s->p;
    uint64_t now = p->ops.now(p->ops.data);
    if (s->noleader_since == 0)
        s->noleader_since = now;
    if (now - s->noleader_since >= p->cfg.no_leader_ms) {
        proposer_sub_finish(s, HAMR_ENOQUORUM, 0);
        return;
    }
    proposer_sub_wait(s);
}

/* proposer_sub_sent - an attempt ended: committed, refused, or unknown. */
static void proposer_sub_sent(void *arg, int status, intptr_t result)
{
    struct proposer_sub *s = proposer_try_end(arg);
    if (s == NULL)
        return; /* given up on: a newer attempt is under way */
    if (status == 0) {
        proposer_sub_finish(s, 0, result);
        return;
    }
    bool unknown = status == HAMR_ELEADERSHIPLOST || status == HAMR_ETIMEDOUT ||
                   status == HAMR_ESHUTDOWN; /* a stopping leader may have appended it */
    if (unknown)
        s->in_doubt = true;
    if (s->p->stopping) {
        proposer_sub_finish(s, HAMR_ESHUTDOWN, 0);
        return;
    }
    switch (status) {
        case HAMR_ENOTLEADER:
        case HAMR_ENOQUORUM:
        case HAMR_EBUSY:
            /* Known not to be in the log: try again when there is a leader. */
            proposer_sub_wait(s);
            return;
        case HAMR_ELEADERSHIPLOST:
        case HAMR_ETIMEDOUT:
        case HAMR_ESHUTDOWN:
            s->unknown = s->has_id;
            proposer_sub_wait(s);
            return;
        default:
            proposer_sub_finish(s, status, 0);
            return;
    }
}

/* proposer_sub_send - one attempt through proposer_send; 0 or why not. */
static int proposer_sub_send(struct proposer_sub *s, uint64_t timeout_ms)
{
    struct proposer *p = s->p;
    bool here = p->ops.is_leader(p->ops.data);
    uint64_t leader = p->ops.leader_id(p->ops.data);
    struct proposer_try *t = proposer_try_new(s);
    if (t == NULL)
        return HAMR_ENOMEM;
    s->attempts++;
    int rv = proposer_send(p, s->entry, s->len, timeout_ms, proposer_sub_sent, t);
    if (rv != 0) {
        s->attempt = NULL;
        free(t);
        return rv;
    }
    proposer_try_started(s, here ? 0 : leader);
    return 0;
}

/* proposer_sub_propose - propose the entry (again); a refusal decides what next. */
static void proposer_sub_propose(struct proposer_sub *s)
{
    struct proposer *p = s->p;
    uint64_t now = p->ops.now(p->ops.data);
    if (now >= s->deadline) {
        proposer_sub_finish(s, HAMR_ETIMEDOUT, 0);
        return;
    }
    int rv = proposer_sub_send(s, s->deadline - now);
    if (rv == 0)
        return;
    if (rv == HAMR_ENOQUORUM || rv == HAMR_ENOTLEADER)
        proposer_sub_no_leader(s);
    else if (rv == HAMR_EBUSY)
        proposer_sub_wait(s);
    else
        proposer_sub_finish(s, rv, 0);
}

/* proposer_sub_resolved - whether s->id is committed is now known. */
static void proposer_sub_resolved(struct proposer_sub *s, bool committed)
{
    s->unknown = false;
    if (committed) {
        s->p->resolved++;
        log_info("unknown outcome resolved id=%s committed=yes", s->id);
        proposer_sub_finish(s, 0, 0);
        return;
    }
    log_info("unknown outcome resolved id=%s committed=no action=propose-again", s->id);
    /* The leader is past its election barrier and does not have it: no
     * earlier attempt can commit any more (it would sit before the barrier). */
    s->in_doubt = false;
    proposer_sub_propose(s);
}

/* proposer_sub_queried - the leader says whether our id is committed. */
static void proposer_sub_queried(void *arg, int status, const Hamr__PeerResult *res)
{
    struct proposer_sub *s = proposer_try_end(arg);
    if (s == NULL)
        return;
    if (s->p->stopping) {
        proposer_sub_finish(s, HAMR_ESHUTDOWN, 0);
        return;
    }
    if (status != 0 || res->status != 0) {
        proposer_sub_wait(s); /* no answer: still unknown, ask again */
        return;
    }
    proposer_sub_resolved(s, res->found);
}

/* proposer_sub_query - is s->id committed? Ask the leader (or look, if it is us). */
static void proposer_sub_query(struct proposer_sub *s)
{
    struct proposer *p = s->p;
    if (p->ops.is_leader(p->ops.data)) {
        /* The election barrier is applied: every committed entry is in the
         * state, so absence is an answer. */
        proposer_sub_resolved(s, p->ops.committed(p->ops.data, s->id));
        return;
    }
    char addr[PROPOSER_ADDR_MAX];
    uint64_t leader;
    if (proposer_leader_addr(p, &leader, addr, sizeof(addr)) != 0) {
        proposer_sub_no_leader(s);
        return;
    }
    Hamr__PeerQuery q = HAMR__PEER_QUERY__INIT;
    q.queue_id = s->id;
    Hamr__PeerMsg msg = HAMR__PEER_MSG__INIT;
    msg.body_case = HAMR__PEER_MSG__BODY_QUERY;
    msg.query = &q;
    uint64_t now = p->ops.now(p->ops.data);
    struct proposer_try *t = proposer_try_new(s);
    int rv = t == NULL ? HAMR_ENOMEM
                       : p->ops.forward(p->ops.data, leader, addr, &msg, s->deadline - now,
                                        proposer_sub_queried, t);
    if (rv != 0) {
        s->attempt = NULL;
        free(t);
        proposer_sub_wait(s);
        return;
    }
    proposer_try_started(s, leader);
}

/* proposer_sub_step - the next step of a waiting submit: ask if unknown, else propose. */
static void proposer_sub_step(struct proposer_sub *s)
{
    struct proposer *p = s->p;
    if (p->ops.now(p->ops.data) >= s->deadline) {
        proposer_sub_finish(s, HAMR_ETIMEDOUT, 0);
        return;
    }
    if (s->unknown)
        proposer_sub_query(s);
    else
        proposer_sub_propose(s);
}

/*
 * proposer_abandon - forwarded attempts whose leader has been replaced: do
 * not wait for their (possibly long) timeout. Their outcome is unknown, so
 * the new leader is asked for the id (or the entry sent again). The old
 * attempt's callback, when it comes, is ignored.
 */
static void proposer_abandon(struct proposer *p)
{
    uint64_t leader = p->ops.leader_id(p->ops.data);
    if (leader == 0)
        return;
    struct proposer_sub *s = p->forwarding;
    while (s != NULL) {
        struct proposer_sub *next = s->fnext;
        if (s->fwd_leader != leader && s->attempt != NULL) {
            log_info("leader changed from node=%" PRIu64 " to node=%" PRIu64
                     ": asking the new leader about id=%s",
                     s->fwd_leader, leader, s->id);
            s->attempt->s = NULL;
            s->attempt = NULL;
            proposer_forwarding_unlink(s);
            s->in_doubt = true;
            s->unknown = s->has_id;
            proposer_sub_wait(s);
        }
        s = next;
    }
}

void proposer_tick(struct proposer *p)
{
    proposer_expire(p);
    proposer_abandon(p);
    /* Detach the list first: a step may put a submit back on it. */
    struct proposer_sub *list = p->waiting;
    p->waiting = NULL;
    while (list != NULL) {
        struct proposer_sub *s = list;
        list = s->next;
        if (list)
            list->prev = NULL;
        s->prev = s->next = NULL;
        s->waiting = false;
        proposer_sub_step(s);
    }
}

int proposer_submit(struct proposer *p,
                    uint8_t *entry,
                    size_t len,
                    const char *id,
                    uint64_t timeout_ms,
                    proposer_cb cb,
                    void *arg)
{
    if (p->stopping) {
        free(entry);
        return HAMR_ESHUTDOWN;
    }
    struct proposer_sub *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        free(entry);
        return HAMR_ENOMEM;
    }
    s->p = p;
    s->cb = cb;
    s->arg = arg;
    s->has_id = id != NULL;
    hamr_strlcpy(s->id, id != NULL ? id : "-", sizeof(s->id));
    s->entry = entry;
    s->len = len;
    s->deadline = p->ops.now(p->ops.data) + timeout_ms;
    /* The first attempt runs now; the caller is answered from a callback
     * (raft and the peer client never call back from inside a call; a wait
     * goes through proposer_tick). */
    int rv = proposer_sub_send(s, timeout_ms);
    if (rv == 0)
        return 0;
    if (rv == HAMR_ENOQUORUM || rv == HAMR_ENOTLEADER || rv == HAMR_EBUSY) {
        s->noleader_since = rv == HAMR_EBUSY ? 0 : p->ops.now(p->ops.data);
        proposer_sub_wait(s);
        return 0;
    }
    free(s->entry);
    free(s);
    return rv;
}

/* ---------------------------------------------------------------------------
 * The leader's side of the peer channel.
 * ------------------------------------------------------------------------- */

/* proposer_reply - answer a peer call with status, result and who leads. */
static void proposer_reply(struct proposer *p, void *call, int status, int64_t result, bool found)
{
    Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
    res.status = status;
    res.result = result;
    res.leader_id = p->ops.leader_id(p->ops.data);
    res.found = found;
    p->ops.reply(p->ops.data, call, &res);
}

/* proposer_served_done - a follower's proposal committed (or failed): tell it. */
static void proposer_served_done(void *arg, int status, intptr_t result)
{
    struct proposer_served *sv = arg;
    proposer_reply(sv->p, sv->call, status, (int64_t)result, false);
    free(sv);
}

/* proposer_serve_propose - check a follower's entry, then append it here. */
static void proposer_serve_propose(struct proposer *p,
                                   void *call,
                                   uint64_t from_node,
                                   const Hamr__PeerPropose *pp)
{
    /* Never let a peer put an entry in the log that every node would refuse
     * to apply (that stops them all). */
    int rv = p->ops.check(p->ops.data, pp->entry.data, pp->entry.len, from_node);
    if (rv != 0) {
        proposer_reply(p, call, rv, 0, false); /* ops->check said why, in the log */
        return;
    }
    struct proposer_served *sv = calloc(1, sizeof(*sv));
    if (sv == NULL) {
        proposer_reply(p, call, HAMR_ENOMEM, 0, false);
        return;
    }
    sv->p = p;
    sv->call = call;
    rv = proposer_send(p, pp->entry.data, pp->entry.len, p->cfg.serve_timeout_ms,
                       proposer_served_done, sv);
    if (rv != 0) {
        free(sv);
        proposer_reply(p, call, rv, 0, false);
    }
}

void proposer_serve(struct proposer *p, void *call, uint64_t from_node, const Hamr__PeerMsg *msg)
{
    if (p->stopping) {
        proposer_reply(p, call, HAMR_ESHUTDOWN, 0, false);
        return;
    }
    if (!p->ops.is_leader(p->ops.data)) {
        proposer_reply(p, call, HAMR_ENOTLEADER, 0, false);
        return;
    }
    switch (msg->body_case) {
        case HAMR__PEER_MSG__BODY_QUERY: {
            const char *id = msg->query->queue_id ? msg->query->queue_id : "";
            proposer_reply(p, call, 0, 0, p->ops.committed(p->ops.data, id));
            return;
        }
        case HAMR__PEER_MSG__BODY_PROPOSE:
            proposer_serve_propose(p, call, from_node, msg->propose);
            return;
        default:
            proposer_reply(p, call, HAMR_EPROTO, 0, false);
            return;
    }
}

/* ---------------------------------------------------------------------------
 * Life.
 * ------------------------------------------------------------------------- */

struct proposer *proposer_new(const struct proposer_ops *ops, const struct proposer_config *cfg)
{
    struct proposer *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->ops = *ops;
    p->cfg = *cfg;
    if (p->cfg.max_inflight == 0)
        p->cfg.max_inflight = 1;
    return p;
}

bool proposer_busy(const struct proposer *p)
{
    return p->waiting != NULL || p->forwarding != NULL || p->appends != NULL;
}

void proposer_get_stats(const struct proposer *p, struct proposer_stats *st)
{
    st->forwarded = p->forwarded;
    st->resolved = p->resolved;
    st->inflight = p->inflight;
}

void proposer_stop(struct proposer *p)
{
    p->stopping = true;
    while (p->waiting != NULL)
        proposer_sub_finish(p->waiting, HAMR_ESHUTDOWN, 0);
}

struct proposer *proposer_free(struct proposer *p)
{
    if (p == NULL)
        return NULL;
    /* Raft closed: what is still in the FIFO never reached it. */
    while (p->fifo_head != NULL) {
        struct proposer_append *a = p->fifo_head;
        p->fifo_head = a->qnext;
        p->ops.free(a->buf);
        proposer_append_unlink(p, a);
        if (a->cb != NULL)
            a->cb(a->arg, HAMR_ESHUTDOWN, 0);
        free(a);
    }
    HAMR_ASSERT(p->waiting == NULL);
    free(p);
    return NULL;
}
