/*
 * queue_snapshot.c - the whole state as one framed Snapshot record
 * (queue_snapshot), the state back from one (queue_restore), and the
 * SHA-256 of its canonical encoding that nodes compare (queue_digest).
 *
 * Errors: HAMR_ENOMEM; queue_restore also HAMR_ECORRUPT (a snapshot that
 * does not decode or is inconsistent: bad ids, duplicates, a body that does
 * not match its SHA-256, an MTA-STS policy apply would refuse or one below
 * QUEUE_LEVEL_STS) and HAMR_EVERSION (a newer format or level).
 *
 * Security: a snapshot comes from another node; it is checked as an entry
 * is, and on any error the state is left as it was.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util/common.h"
#include "util/err.h"
#include "proto/proto_frame.h"
#include "queue/internal.h"
#include "queue/queue.h"

/* ------------------------------------------------------------------------
 * Snapshot, restore and digest
 *
 * The Snapshot message is built over the queue's own memory (no copies of
 * strings or bodies) in acceptance order (the node directory by node id,
 * MTA-STS policies by domain), so its encoding is canonical: the
 * same state gives the same bytes on every node. The digest hashes that
 * encoding with the bodies left out (their SHA-256 stands in for them).
 * ------------------------------------------------------------------------ */

/* queue_snap - a Snapshot over the queue's memory, and the arrays that carry it. */
struct queue_snap {
    Hamr__Snapshot snap;
    Hamr__QueuedMessage *qm;
    Hamr__QueuedMessage **qmp;
    Hamr__Enqueue *enq;
    char **rcpt_addrs;
    Hamr__RcptState *rs;
    Hamr__RcptState **rsp;
    Hamr__DoneId *done;
    Hamr__DoneId **donep;
    Hamr__NodeInfo *ni;
    Hamr__NodeInfo **nip;
    Hamr__StsPolicy *sts;
    Hamr__StsPolicy **stsp;
    uint8_t **bodies; /* read back from the store (below QUEUE_LEVEL_STORE); owned */
    size_t n_bodies;
    uint32_t *notify; /* Enqueue.notify of the messages with DSN parameters */
    char **orcpt;     /* Enqueue.orcpt of those messages */
};

/* queue_snap_free - release the arrays (never the strings they point to). */
static void queue_snap_free(struct queue_snap *s)
{
    free(s->qm);
    free(s->qmp);
    free(s->enq);
    free(s->rcpt_addrs);
    free(s->rs);
    free(s->rsp);
    free(s->done);
    free(s->donep);
    free(s->ni);
    free(s->nip);
    free(s->sts);
    free(s->stsp);
    free(s->notify);
    free(s->orcpt);
    for (size_t i = 0; i < s->n_bodies; i++)
        free(s->bodies[i]);
    free(s->bodies);
}

/*
 * queue_snap_body - the body of m for a snapshot: from memory; or left out
 * with its length (from QUEUE_LEVEL_STORE); or read back from the store
 * (older levels, whose nodes expect every body). A body this node lacks
 * cannot go into an older-level snapshot: HAMR_ENOTFOUND, and raft tries
 * the snapshot again later.
 */
static int queue_snap_body(const struct queue *q,
                           const struct queue_msg *m,
                           Hamr__Enqueue *e,
                           struct queue_snap *s)
{
    if (queue_msg_body(m) != NULL || m->body_len == 0) {
        e->body.data = (uint8_t *)queue_msg_body(m);
        e->body.len = m->body_len;
        return 0;
    }
    if (q->cluster_level >= QUEUE_LEVEL_STORE) {
        e->body_len = m->body_len;
        return 0;
    }
    if (!m->body_stored || !q->has_body_ops || q->body_ops.read == NULL)
        return HAMR_ENOTFOUND;
    uint8_t *b = malloc(m->body_len);
    if (b == NULL)
        return HAMR_ENOMEM;
    s->bodies[s->n_bodies++] = b;
    long long got = q->body_ops.read(q->body_ops.arg, m->body_loc, 0, b, m->body_len);
    if (got < 0 || (size_t)got != m->body_len)
        return got < 0 ? (int)got : HAMR_EIO;
    e->body.data = b;
    e->body.len = m->body_len;
    return 0;
}

/* queue_snap_text - a borrowed string for a protobuf field ("" for NULL). */
static char *queue_snap_text(const char *s)
{
    return (char *)(s ? s : "");
}

/*
 * queue_restore_rcpt - a snapshot recipient's lease and attempt texts into
 * r. A lease is kept whenever a field of it is set, so that the state (and
 * its digest) is the snapshot's whatever the recipient's state. 0 or
 * HAMR_ENOMEM (r's item frees what was taken).
 */
static int queue_restore_rcpt(struct queue_rcpt *r, const Hamr__RcptState *rs)
{
    if (r->state == QUEUE_RCPT_LEASED || rs->lease_id != 0 || rs->lease_node != 0 ||
        rs->lease_term != 0 || rs->lease_expires_ms != 0 ||
        (rs->lease_boot_id != NULL && rs->lease_boot_id[0] != '\0') ||
        (rs->lease_destination != NULL && rs->lease_destination[0] != '\0')) {
        struct queue_lease *l = calloc(1, sizeof(*l));
        if (l == NULL)
            return HAMR_ENOMEM;
        queue_rcpt_set_lease(r, l);
        l->id = rs->lease_id;
        l->node = rs->lease_node;
        l->term = rs->lease_term;
        l->expires_ms = rs->lease_expires_ms;
        if (queue_str_opt(rs->lease_boot_id, &l->boot_id) != 0 ||
            queue_str_opt(rs->lease_destination, &l->dest) != 0)
            return HAMR_ENOMEM;
    }
    const char *error = NULL, *policy = NULL, *tls = NULL;
    int rv = queue_str_opt(rs->last_error, &error);
    if (rv == 0)
        rv = queue_str_opt(rs->tls_policy, &policy);
    if (rv == 0)
        rv = queue_str_opt(rs->tls, &tls);
    const struct queue_tried *t = NULL;
    if (rv == 0)
        rv = queue_tried_get(error, policy, tls, &t);
    if (rv == 0)
        queue_rcpt_set_tried(r, t);
    queue_str_put(error);
    queue_str_put(policy);
    queue_str_put(tls);
    return rv;
}

/* queue_snap_rcpt - one recipient's state. */
static void queue_snap_rcpt(Hamr__RcptState *rs, const struct queue_rcpt *r)
{
    static const Hamr__RcptState init = HAMR__RCPT_STATE__INIT;
    *rs = init;
    rs->addr = queue_snap_text(r->addr);
    rs->state = (Hamr__RcptState__State)r->state;
    rs->attempts = r->attempts;
    rs->next_attempt_ms = r->next_attempt_ms;
    const struct queue_lease *l = queue_rcpt_lease(r);
    const struct queue_tried *t = queue_rcpt_tried(r);
    rs->last_error = queue_snap_text(t->error);
    rs->lease_id = l->id;
    rs->lease_node = l->node;
    rs->lease_term = l->term;
    rs->lease_expires_ms = l->expires_ms;
    rs->lease_boot_id = queue_snap_text(l->boot_id);
    rs->lease_destination = queue_snap_text(l->dest);
    /* "" is not encoded: a state without them snapshots and hashes as before format 2. */
    rs->tls_policy = queue_snap_text(t->tls_policy);
    rs->tls = queue_snap_text(t->tls);
}

/*
 * queue_snap_sts - the MTA-STS policy cache, in the table's (domain) order.
 * Empty below QUEUE_LEVEL_STS, so it adds nothing to the encoding (or the
 * digest) of an older build's state. On failure s is freed.
 */
static int queue_snap_sts(const struct queue *q, struct queue_snap *s)
{
    if (q->sts_len == 0)
        return 0;
    s->sts = calloc(q->sts_len, sizeof(*s->sts));
    s->stsp = calloc(q->sts_len, sizeof(*s->stsp));
    if (s->sts == NULL || s->stsp == NULL) {
        queue_snap_free(s);
        return HAMR_ENOMEM;
    }
    for (size_t i = 0; i < q->sts_len; i++) {
        const struct queue_sts *p = &q->sts[i]->pub;
        Hamr__StsPolicy *sp = &s->sts[i];
        hamr__sts_policy__init(sp);
        sp->domain = (char *)p->domain;
        sp->id = (char *)p->id;
        sp->mode = (Hamr__StsPolicy__Mode)p->mode;
        sp->n_mx = p->n_mx;
        sp->mx = (char **)p->mx;
        sp->max_age = p->max_age_s;
        sp->fetched_at_ms = p->fetched_at_ms;
        s->stsp[i] = sp;
    }
    s->snap.n_sts_policies = q->sts_len;
    s->snap.sts_policies = s->stsp;
    return 0;
}

/*
 * queue_snap_ext - m's DSN parameters into e, its per-recipient arrays in
 * notify and orcpt (n_rcpts entries each); returns n_rcpts. Every field
 * is written as the Enqueue that made it had it, so the snapshot of a
 * message is the same whether it was applied or restored.
 */
static size_t queue_snap_ext(const struct queue_msg *m,
                             Hamr__Enqueue *e,
                             uint32_t *notify,
                             char **orcpt)
{
    const struct queue_ext *x = m->ext;
    bool any_notify = false, any_orcpt = false;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        notify[i] = x->notify[i];
        orcpt[i] = (char *)(x->orcpt[i] != NULL ? x->orcpt[i] : "");
        any_notify = any_notify || x->notify[i] != 0;
        any_orcpt = any_orcpt || x->orcpt[i] != NULL;
    }
    e->ret = x->ret;
    e->envid = (char *)(x->envid != NULL ? x->envid : "");
    if (any_notify) {
        e->n_notify = m->n_rcpts;
        e->notify = notify;
    }
    if (any_orcpt) {
        e->n_orcpt = m->n_rcpts;
        e->orcpt = orcpt;
    }
    return m->n_rcpts;
}

/* queue_snap_build - fill s from q; bodies are left out when with_bodies is false. */
static int queue_snap_build(const struct queue *q, bool with_bodies, struct queue_snap *s)
{
    static const Hamr__Snapshot snap_init = HAMR__SNAPSHOT__INIT;
    static const Hamr__QueuedMessage qm_init = HAMR__QUEUED_MESSAGE__INIT;
    static const Hamr__Enqueue enq_init = HAMR__ENQUEUE__INIT;
    static const Hamr__DoneId done_init = HAMR__DONE_ID__INIT;
    memset(s, 0, sizeof(*s));
    s->snap = snap_init;
    size_t nm = q->mcount, nd = q->dcount, nr = 0, nx = 0;
    for (const struct queue_item *it = queue_item_after(q, 0); it != NULL;
         it = queue_item_after(q, it->seq)) {
        nr += it->msg.n_rcpts;
        if (it->msg.ext != NULL)
            nx += it->msg.n_rcpts;
    }
    if (nx > 0) {
        s->notify = calloc(nx, sizeof(*s->notify));
        s->orcpt = calloc(nx, sizeof(*s->orcpt));
        if (s->notify == NULL || s->orcpt == NULL) {
            queue_snap_free(s);
            return HAMR_ENOMEM;
        }
    }
    s->qm = calloc(nm ? nm : 1, sizeof(*s->qm));
    s->qmp = calloc(nm ? nm : 1, sizeof(*s->qmp));
    s->enq = calloc(nm ? nm : 1, sizeof(*s->enq));
    s->rcpt_addrs = calloc(nr ? nr : 1, sizeof(*s->rcpt_addrs));
    s->rs = calloc(nr ? nr : 1, sizeof(*s->rs));
    s->rsp = calloc(nr ? nr : 1, sizeof(*s->rsp));
    s->done = calloc(nd ? nd : 1, sizeof(*s->done));
    s->donep = calloc(nd ? nd : 1, sizeof(*s->donep));
    if (with_bodies && q->has_body_ops && q->cluster_level < QUEUE_LEVEL_STORE)
        s->bodies = calloc(nm ? nm : 1, sizeof(*s->bodies));
    if (!s->qm || !s->qmp || !s->enq || !s->rcpt_addrs || !s->rs || !s->rsp || !s->done ||
        !s->donep ||
        (with_bodies && q->has_body_ops && q->cluster_level < QUEUE_LEVEL_STORE &&
         s->bodies == NULL)) {
        queue_snap_free(s);
        return HAMR_ENOMEM;
    }
    size_t mi = 0, ri = 0, xi = 0;
    for (const struct queue_item *it = queue_item_after(q, 0); it != NULL;
         it = queue_item_after(q, it->seq), mi++) {
        const struct queue_msg *m = &it->msg;
        Hamr__Enqueue *e = &s->enq[mi];
        *e = enq_init;
        e->queue_id = (char *)m->id;
        e->sender = queue_snap_text(m->sender);
        e->n_rcpts = m->n_rcpts;
        e->rcpts = &s->rcpt_addrs[ri];
        int rv = with_bodies ? queue_snap_body(q, m, e, s) : 0;
        if (rv != 0) {
            queue_snap_free(s);
            return rv;
        }
        e->expires_at_ms = m->expires_at_ms;
        e->is_dsn = m->is_dsn;
        e->body_sha256.data = (uint8_t *)it->msg.body_sha256;
        e->body_sha256.len = QUEUE_SHA256_LEN;
        e->client_addr = queue_snap_text(m->origin->client_addr);
        e->helo = queue_snap_text(m->origin->helo);
        e->accepted_by = m->origin->accepted_by;
        e->body_8bit = m->body_8bit;
        if (m->ext != NULL)
            xi += queue_snap_ext(m, e, &s->notify[xi], &s->orcpt[xi]);
        e->smtputf8 = m->smtputf8;
        e->requiretls = m->requiretls;
        e->tls_optional = m->tls_optional;
        Hamr__QueuedMessage *qm = &s->qm[mi];
        *qm = qm_init;
        qm->enqueue = e;
        qm->n_rcpts = m->n_rcpts;
        qm->rcpts = &s->rsp[ri];
        qm->held = m->held;
        qm->received_at_ms = m->received_at_ms;
        qm->dsn_count = m->dsn_count;
        qm->delay_warned = m->delay_warned;
        for (size_t i = 0; i < m->n_rcpts; i++, ri++) {
            s->rcpt_addrs[ri] = queue_snap_text(m->rcpts[i].addr);
            queue_snap_rcpt(&s->rs[ri], &m->rcpts[i]);
            s->rsp[ri] = &s->rs[ri];
        }
        s->qmp[mi] = qm;
    }
    size_t di = 0;
    for (const struct queue_done *d = q->dhead; d != NULL; d = d->next, di++) {
        s->done[di] = done_init;
        s->done[di].queue_id = (char *)d->id;
        s->done[di].done_at_ms = d->done_at_ms;
        s->donep[di] = &s->done[di];
    }
    s->snap.n_messages = nm;
    s->snap.messages = s->qmp;
    s->snap.n_done = nd;
    s->snap.done = s->donep;
    s->snap.last_timestamp_ms = q->last_timestamp_ms;
    s->snap.applied = q->applied;
    /*
     * Level 1 is written as absent, so the snapshot and digest of a level-1
     * state are byte for byte those of a build without the field: nodes of
     * both builds agree on the digest during a rolling upgrade.
     */
    s->snap.cluster_level = q->cluster_level > 1 ? q->cluster_level : 0;
    if (q->n_nodes > 0) {
        s->ni = calloc(q->n_nodes, sizeof(*s->ni));
        s->nip = calloc(q->n_nodes, sizeof(*s->nip));
        if (s->ni == NULL || s->nip == NULL) {
            queue_snap_free(s);
            return HAMR_ENOMEM;
        }
        for (size_t i = 0; i < q->n_nodes; i++) {
            const struct queue_node *n = &q->nodes[i];
            hamr__node_info__init(&s->ni[i]);
            s->ni[i].node_id = n->node_id;
            s->ni[i].peer_address = (char *)n->peer_address;
            s->ni[i].control_address = (char *)n->control_address;
            s->ni[i].version = (char *)n->version;
            s->ni[i].format_version_max = n->format_version_max;
            s->ni[i].draining = n->draining;
            s->ni[i].zone = (char *)n->zone;
            s->nip[i] = &s->ni[i];
        }
        s->snap.n_nodes = q->n_nodes;
        s->snap.nodes = s->nip;
    }
    return queue_snap_sts(q, s);
}

/* queue_snapshot - the framed Snapshot of the whole state (compressed from QUEUE_LEVEL_SNAPZ). */
int queue_snapshot(const struct queue *q, void *(*alloc)(size_t), uint8_t **out, size_t *len)
{
    struct queue_snap s;
    int rv = queue_snap_build(q, true, &s);
    if (rv != 0)
        return rv;
    rv = q->cluster_level >= QUEUE_LEVEL_SNAPZ ? proto_snapshot_pack_z(&s.snap, alloc, out, len)
                                               : proto_snapshot_pack(&s.snap, alloc, out, len);
    queue_snap_free(&s);
    return rv;
}

/*
 * queue_restore_body - the body of a restored message: from the snapshot
 * (checked against its hash, then kept as an Enqueue's is), or left out of
 * it: then the old state's record if it had the same body, else wherever
 * the store finds it, else missing (to fetch). A queue without body ops
 * cannot take a snapshot without bodies.
 */
static int queue_restore_body(struct queue *n,
                              const struct queue *old,
                              struct queue_item *it,
                              const Hamr__Enqueue *e)
{
    struct queue_msg *m = &it->msg;
    memcpy(m->body_sha256, e->body_sha256.data, QUEUE_SHA256_LEN);
    if (e->body.len > 0 || e->body_len == 0) {
        uint8_t sha[QUEUE_SHA256_LEN];
        if (!queue_sha256(e->body.data, e->body.len, sha))
            return HAMR_ENOMEM;
        /* The body must be the one that was accepted. */
        if (memcmp(sha, m->body_sha256, QUEUE_SHA256_LEN) != 0)
            return HAMR_ECORRUPT;
    } else if (!n->has_body_ops) {
        return HAMR_ECORRUPT;
    }
    size_t len = e->body.len > 0 ? e->body.len : e->body_len;
    if (len > QUEUE_BODY_MAX)
        return HAMR_ECORRUPT;
    if (len == 0)
        return 0; /* nothing to keep, share or locate: an empty body is never missing */
    const struct queue_item *was = queue_lookup(old, m->id);
    bool same = len > 0 && was != NULL && was->msg.body_len == len &&
                memcmp(was->msg.body_sha256, m->body_sha256, QUEUE_SHA256_LEN) == 0;
    if (same && was->msg.body_stored) {
        m->body_len = len;
        m->body_loc = was->msg.body_loc; /* shared until the old state goes */
        m->body_stored = true;
        return 0;
    }
    /* From the snapshot, or from the old state's memory (write_behind). */
    const uint8_t *from = e->body.len > 0 ? e->body.data : same ? queue_msg_body(&was->msg) : NULL;
    if (from != NULL) {
        uint8_t *copy = malloc(len);
        if (copy == NULL)
            return HAMR_ENOMEM;
        memcpy(copy, from, len);
        int rv = queue_item_keep_body(n, it, &copy, len, true);
        free(copy);
        return rv;
    }
    m->body_len = len;
    uint64_t loc;
    if (n->body_ops.locate != NULL &&
        n->body_ops.locate(n->body_ops.arg, m->id, len, m->body_sha256, &loc) == 0) {
        m->body_loc = loc;
        m->body_stored = true;
    } else {
        m->body_missing = true;
    }
    return 0;
}

/* queue_restore_msg - one message from a snapshot, checked, not yet linked. */
static int queue_restore_msg(struct queue *n,
                             const struct queue *old,
                             const Hamr__QueuedMessage *qm,
                             struct queue_item **out)
{
    *out = NULL;
    const Hamr__Enqueue *e = qm->enqueue;
    size_t id_max = e && e->is_dsn ? QUEUE_ID_MAX - 1 : QUEUE_ACCEPT_ID_MAX;
    if (e == NULL || !queue_id_ok(e->queue_id, id_max) || e->n_rcpts == 0 ||
        qm->n_rcpts != e->n_rcpts || e->body_sha256.len != QUEUE_SHA256_LEN)
        return HAMR_ECORRUPT;
    struct queue_item *it =
        queue_item_new(e->queue_id, e->sender, e->rcpts, e->n_rcpts, qm->received_at_ms);
    if (it == NULL)
        return HAMR_ENOMEM;
    if (queue_item_set_origin(it, e->client_addr, e->helo, e->accepted_by) != 0) {
        queue_item_free(it);
        return HAMR_ENOMEM;
    }
    struct queue_msg *m = &it->msg;
    m->expires_at_ms = e->expires_at_ms;
    m->is_dsn = e->is_dsn;
    m->body_8bit = e->body_8bit;
    m->held = qm->held;
    m->dsn_count = qm->dsn_count;
    /* Only a level-5 state has them (apply ignores them below it). */
    int xrv = queue_enqueue_ext(it, e);
    if (xrv != 0) {
        queue_item_free(it);
        return xrv == HAMR_ENOMEM ? xrv : HAMR_ECORRUPT;
    }
    m->delay_warned = qm->delay_warned;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const Hamr__RcptState *rs = qm->rcpts[i];
        struct queue_rcpt *r = &m->rcpts[i];
        if ((unsigned)rs->state > (unsigned)QUEUE_RCPT_EXPIRED ||
            strcmp(rs->addr, e->rcpts[i]) != 0) {
            queue_item_free(it);
            return HAMR_ECORRUPT;
        }
        r->state = (enum queue_rcpt_state)rs->state;
        r->attempts = rs->attempts;
        r->next_attempt_ms = rs->next_attempt_ms;
        if (queue_restore_rcpt(r, rs) != 0) {
            queue_item_free(it);
            return HAMR_ENOMEM;
        }
    }
    /*
     * A repeated id is refused before its body is looked at: the repeat
     * would share the old state's record with the first copy, and giving
     * it back would release a record the old state still holds.
     */
    if (queue_contains(n, m->id)) {
        queue_item_free(it);
        return HAMR_ECORRUPT;
    }
    /* Last: from here on a failure must give the body's record back. */
    int rv = queue_restore_body(n, old, it, e);
    if (rv != 0) {
        queue_item_drop(n, it);
        return rv;
    }
    *out = it;
    return 0;
}

/* queue_restore_into - fill the empty queue n from a decoded snapshot. */
static int queue_restore_into(struct queue *n, const struct queue *old, const Hamr__Snapshot *s)
{
    /* A level this build cannot reach; absent (older snapshot, or level 1) is 1. */
    if (s->cluster_level > n->format_max)
        return HAMR_EVERSION;
    if (queue_reserve(n, s->n_messages) != 0)
        return HAMR_ENOMEM;
    for (size_t i = 0; i < s->n_messages; i++) {
        struct queue_item *it;
        int rv = queue_restore_msg(n, old, s->messages[i], &it);
        if (rv != 0)
            return rv;
        queue_link(n, it);
    }
    for (size_t i = 0; i < s->n_done; i++) {
        const Hamr__DoneId *d = s->done[i];
        if (!queue_id_ok(d->queue_id, QUEUE_ID_MAX - 1) || queue_contains(n, d->queue_id))
            return HAMR_ECORRUPT;
        struct queue_done *rec = queue_done_new(d->queue_id, d->done_at_ms);
        if (rec == NULL)
            return HAMR_ENOMEM;
        queue_done_link(n, rec);
    }
    for (size_t i = 0; i < s->n_nodes; i++) {
        /* At the snapshot's level: a zone below QUEUE_LEVEL_SPREAD is ignored. */
        if (queue_node_put(n, s->nodes[i], s->cluster_level, s->last_timestamp_ms) != 0)
            return HAMR_ECORRUPT;
    }
    /*
     * The cache exists from QUEUE_LEVEL_STS on (apply refuses StsPolicy
     * below it); a snapshot with policies at a lower level is not one a
     * hamr build writes.
     */
    if (s->n_sts_policies > 0 && s->cluster_level < QUEUE_LEVEL_STS)
        return HAMR_ECORRUPT;
    for (size_t i = 0; i < s->n_sts_policies; i++) {
        int rv = queue_sts_restore(n, s->sts_policies[i]);
        if (rv != 0)
            return rv;
    }
    n->cluster_level = s->cluster_level > 1 ? s->cluster_level : 1;
    n->last_timestamp_ms = s->last_timestamp_ms;
    n->applied = s->applied;
    return 0;
}

/*
 * queue_release_unshared - give back the body records of from's messages
 * that keep's messages do not share (same id, same record): the state that
 * goes after a restore, or the one that was being built when it failed.
 */
static void queue_release_unshared(struct queue *from, const struct queue *keep)
{
    for (struct queue_item *it = queue_item_after(from, 0); it != NULL;
         it = queue_item_after(from, it->seq)) {
        const struct queue_item *k = queue_lookup(keep, it->msg.id);
        if (k != NULL && k->msg.body_stored && it->msg.body_stored &&
            k->msg.body_loc == it->msg.body_loc)
            continue;
        queue_item_release_body(from, it);
    }
}

/* queue_restore - build a new state from a snapshot, then swap it in. */
int queue_restore(struct queue *q, const uint8_t *buf, size_t len)
{
    Hamr__Snapshot *s = NULL;
    int rv = proto_snapshot_unpack(buf, len, &s);
    if (rv != 0)
        return rv;
    struct queue *n = queue_new();
    if (n == NULL) {
        hamr__snapshot__free_unpacked(s, NULL);
        return HAMR_ENOMEM;
    }
    n->format_max = q->format_max; /* a property of the build, not of the state */
    if (q->has_body_ops)
        queue_set_body_ops(n, &q->body_ops);
    n->lease_hook = q->lease_hook; /* the node's, like the body ops: not part of the state */
    rv = queue_restore_into(n, q, s);
    hamr__snapshot__free_unpacked(s, NULL);
    if (rv != 0) {
        queue_release_unshared(n, q);
        queue_free(n);
        return rv;
    }
    /* Swap the contents: q keeps its address, the old state goes with n. */
    struct queue tmp = *q;
    *q = *n;
    *n = tmp;
    queue_release_unshared(n, q);
    queue_free(n);
    return 0;
}

/* queue_digest_sink - a protobuf-c output buffer that feeds SHA-256. */
struct queue_digest_sink {
    ProtobufCBuffer base;
    EVP_MD_CTX *ctx;
    bool ok;
};

/* queue_digest_append_cb - hash the bytes protobuf-c writes. */
static void queue_digest_append_cb(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
    struct queue_digest_sink *s = hamr_container_of(b, struct queue_digest_sink, base);
    if (s->ok && len > 0)
        s->ok = EVP_DigestUpdate(s->ctx, data, len) == 1;
}

/* queue_digest - SHA-256 of the canonical encoding, bodies by their hash. */
void queue_digest(const struct queue *q, char hex[65])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    struct queue_snap s;
    struct queue_digest_sink sink = {.base = {.append = queue_digest_append_cb}, .ok = false};
    /*
     * On failure (no memory) the digest is all zeros, which no real state
     * hashes to; a comparison then fails loudly instead of matching.
     */
    memset(hex, '0', 64);
    hex[64] = '\0';
    if (queue_snap_build(q, false, &s) != 0)
        return;
    sink.ctx = EVP_MD_CTX_new();
    sink.ok = sink.ctx != NULL && EVP_DigestInit_ex(sink.ctx, EVP_sha256(), NULL) == 1;
    if (sink.ok) {
        /* Hashed as a snapshot record is framed, so the format is part of the digest. */
        s.snap.format_version = PROTO_SNAPSHOT_VERSION;
        protobuf_c_message_pack_to_buffer(&s.snap.base, &sink.base);
    }
    if (sink.ok && EVP_DigestFinal_ex(sink.ctx, md, &mdlen) == 1 && mdlen == QUEUE_SHA256_LEN) {
        for (unsigned i = 0; i < mdlen; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
    }
    EVP_MD_CTX_free(sink.ctx);
    queue_snap_free(&s);
}
