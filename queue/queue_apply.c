/*
 * queue_apply.c - queue_apply: decode one committed entry and run its
 * command (Enqueue, Lease, Outcome, Admin, NodeInfo, ClusterLevel,
 * StsPolicy) as queue.h specifies, and the DSN each failure owes.
 *
 * Atomicity: each command is validated and everything it needs is
 * allocated before the first change, so a refused command (res->status) or
 * an allocation failure (HAMR_ENOMEM) leaves the state as it was.
 *
 * Errors: queue_apply returns HAMR_ECORRUPT / HAMR_EVERSION for an entry it
 * cannot decode and HAMR_ENOMEM; refused commands return 0 with res->status
 * HAMR_ENOTFOUND, HAMR_EINVAL, HAMR_ETOOBIG, HAMR_ECORRUPT or HAMR_EVERSION
 * (a ClusterLevel above this build's format, a StsPolicy below its level).
 *
 * Security: entries come from the replicated log, written by other nodes
 * from untrusted SMTP input. Ids are length-checked, indexes bounds-checked,
 * bodies checked against their SHA-256, error and TLS texts reduced to
 * printable ASCII and bounded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "util/utf8.h"
#include "proto/proto_frame.h"
#include "queue/internal.h"
#include "queue/queue.h"
#include "queue/queue_dsn.h"

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------ */

/* queue_streq - NULL and "" are the same string. */
static bool queue_streq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* queue_error_text - "<code> <text>" reduced to printable ASCII and bounded, or NULL if empty. */
static int queue_error_text(uint32_t code, const char *text, const char **out)
{
    char clean[QUEUE_ERROR_MAX];
    char line[QUEUE_ERROR_MAX + 16];
    text = text ? text : "";
    log_printable(clean, sizeof(clean), text, strlen(text));
    if (code != 0)
        snprintf(line, sizeof(line), "%u %s", code, clean);
    else
        snprintf(line, sizeof(line), "%s", clean);
    line[QUEUE_ERROR_MAX - 1] = '\0';
    return queue_str_opt(line, out);
}

/* queue_bounded_text - text reduced to printable ASCII and cut to max-1 bytes, or NULL if empty. */
static int queue_bounded_text(const char *text, size_t max, const char **out)
{
    char clean[QUEUE_TLS_MAX];
    HAMR_ASSERT(max <= sizeof(clean));
    text = text ? text : "";
    log_printable(clean, max, text, strlen(text));
    return queue_str_opt(clean, out);
}

/* queue_rcpt_final - the recipient reached a final state. */
static bool queue_rcpt_final(const struct queue_rcpt *r)
{
    return r->state == QUEUE_RCPT_DELIVERED || r->state == QUEUE_RCPT_BOUNCED ||
           r->state == QUEUE_RCPT_EXPIRED;
}

/* ------------------------------------------------------------------------
 * DSN generation, shared by Outcome and Admin BOUNCE
 * ------------------------------------------------------------------------ */

/*
 * queue_dsn_prepare - build the DSN item for the given recipients of m (of
 * one kind: see queue_dsn_rcpt), not yet linked. *dsn_count is the counter
 * to number it from, and gets the counter after it. *out is NULL when no
 * DSN is owed (null sender, a DSN itself, no recipient).
 */
static int queue_dsn_prepare(struct queue *q,
                             const struct queue_msg *m,
                             const struct queue_dsn_rcpt *failed,
                             size_t n_failed,
                             const char *reporter,
                             uint64_t dsn_expires_at_ms,
                             uint64_t now_ms,
                             struct queue_item **out,
                             uint32_t *dsn_count)
{
    uint32_t from = *dsn_count;
    *out = NULL;
    /* RFC 5321 section 6.1 and RFC 3464: never a DSN to <> or about a DSN. */
    if (n_failed == 0 || m->sender[0] == '\0' || m->is_dsn)
        return 0;
    /* "<id>-B<n>", skipping any n already taken so that ids stay unique. */
    char id[QUEUE_ID_MAX];
    uint32_t n = from;
    for (;;) {
        int w = snprintf(id, sizeof(id), "%s-B%u", m->id, n);
        HAMR_ASSERT(w > 0 && (size_t)w < sizeof(id));
        if (!queue_contains(q, id))
            break;
        if (n == UINT32_MAX)
            return HAMR_EINVAL;
        n++;
    }
    uint8_t *body = NULL;
    size_t len = 0;
    bool eight_bit = false;
    /*
     * The DSN quotes the original's header block, from memory or from the
     * store. Every node that has the body quotes the same bytes; one that
     * still lacks it (fetching after a snapshot) quotes none, so its copy
     * of this DSN (and its digest) differs from the others' until the DSN
     * leaves the queue: still a valid DSN should that node deliver it.
     */
    struct queue_msg orig = *m;
    uint8_t *head = NULL;
    const uint8_t *p = NULL;
    orig.body_len = queue_body_head(q, m, QUEUE_DSN_HEADERS_MAX + 2, &p, &head);
    orig.body = (uint8_t *)p;
    orig.body_stored = false; /* the head in memory, wherever the body is */
    int rv =
        queue_dsn_build(&orig, failed, n_failed, reporter, now_ms, id, &body, &len, &eight_bit);
    free(head);
    if (rv != 0)
        return rv;
    char *const rcpt = (char *)m->sender;
    struct queue_item *it = queue_item_new(id, "", &rcpt, 1, now_ms);
    if (it == NULL) {
        free(body);
        return HAMR_ENOMEM;
    }
    it->msg.body_8bit = eight_bit;
    /*
     * RFC 6533: its addresses stay UTF-8. It needs SMTPUTF8 itself only
     * when the address it goes to does: a next hop without it would
     * otherwise fail a notice that no other notice can report.
     */
    it->msg.smtputf8 = m->smtputf8 && !utf8_ascii(m->sender, strlen(m->sender));
    it->msg.is_dsn = true;
    it->msg.expires_at_ms = dsn_expires_at_ms;
    if (!queue_sha256(body, len, it->msg.body_sha256)) {
        free(body);
        queue_item_free(it);
        return HAMR_ENOMEM;
    }
    rv = queue_item_keep_body(q, it, &body, len, false);
    free(body);
    if (rv != 0) {
        queue_item_free(it);
        return rv;
    }
    *out = it;
    *dsn_count = n + 1;
    return 0;
}

/* ------------------------------------------------------------------------
 * Enqueue
 * ------------------------------------------------------------------------ */

/*
 * queue_apply_enqueue - add a message (see queue.h). The body is taken
 * from e (unpacked by queue_apply with the default allocator) instead of
 * copied: e->body is left empty.
 */
static int queue_apply_enqueue(struct queue *q,
                               Hamr__Enqueue *e,
                               uint64_t ts,
                               struct queue_apply_result *res)
{
    size_t id_max = e->is_dsn ? QUEUE_ID_MAX - 1 : QUEUE_ACCEPT_ID_MAX;
    if (!queue_id_ok(e->queue_id, id_max)) {
        res->status = HAMR_EINVAL;
        return 0;
    }
    if (queue_contains(q, e->queue_id)) {
        res->duplicate = true;
        return 0;
    }
    if (e->n_rcpts == 0) {
        res->status = HAMR_EINVAL;
        return 0;
    }
    if (e->body_sha256.len != 0 && e->body_sha256.len != QUEUE_SHA256_LEN) {
        res->status = HAMR_EINVAL;
        return 0;
    }
    /* queue_entry_enqueue writes body_sha256 with this same helper. */
    uint8_t sha[QUEUE_SHA256_LEN];
    if (!queue_sha256(e->body.data, e->body.len, sha))
        return HAMR_ENOMEM;
    if (e->body_sha256.len != 0 && memcmp(sha, e->body_sha256.data, QUEUE_SHA256_LEN) != 0) {
        res->status = HAMR_ECORRUPT;
        return 0;
    }
    struct queue_item *it = queue_item_new(e->queue_id, e->sender, e->rcpts, e->n_rcpts, ts);
    if (it == NULL)
        return HAMR_ENOMEM;
    if (queue_item_set_origin(it, e->client_addr, e->helo, e->accepted_by) != 0) {
        queue_item_free(it);
        return HAMR_ENOMEM;
    }
    /* Format 5: below the level a node of an older build applies this entry too. */
    if (q->cluster_level >= QUEUE_LEVEL_EXT) {
        int xrv = queue_enqueue_ext(it, e);
        if (xrv != 0) {
            queue_item_free(it);
            if (xrv != HAMR_EINVAL)
                return xrv;
            res->status = xrv;
            return 0;
        }
    }
    memcpy(it->msg.body_sha256, sha, sizeof(sha));
    /* Taken, not copied, when kept in memory: free_unpacked skips a NULL body. */
    size_t body_len = e->body.len;
    if (body_len > QUEUE_BODY_MAX) {
        queue_item_free(it);
        res->status = HAMR_EINVAL;
        return 0;
    }
    int rv = queue_item_keep_body(q, it, &e->body.data, body_len, false);
    if (e->body.data == NULL)
        e->body.len = 0;
    if (rv != 0) {
        queue_item_free(it);
        return rv;
    }
    it->msg.expires_at_ms = e->expires_at_ms;
    it->msg.is_dsn = e->is_dsn;
    it->msg.body_8bit = e->body_8bit;
    queue_link(q, it);
    return 0;
}

/* queue_enqueue_ext - e's envelope extensions into it (see internal.h). */
int queue_enqueue_ext(struct queue_item *it, const Hamr__Enqueue *e)
{
    int rv = queue_item_set_ext(it, (uint8_t)(e->ret > 255 ? 255 : e->ret), e->envid, e->notify,
                                e->n_notify, e->orcpt, e->n_orcpt);
    if (rv != 0)
        return rv;
    it->msg.smtputf8 = e->smtputf8;
    it->msg.requiretls = e->requiretls;
    it->msg.tls_optional = e->tls_optional && !e->requiretls;
    return 0;
}

/* ------------------------------------------------------------------------
 * Lease
 * ------------------------------------------------------------------------ */

/* queue_rcpt_leasable - may this recipient take a new lease at ts? */
static bool queue_rcpt_leasable(const struct queue_rcpt *r, const Hamr__Lease *l, uint64_t ts)
{
    if (r->state == QUEUE_RCPT_PENDING)
        return true;
    if (r->state != QUEUE_RCPT_LEASED)
        return false;
    const struct queue_lease *cur = queue_rcpt_lease(r);
    if (cur->expires_ms <= ts)
        return true;
    /* The same node under another boot id: that process died with its lease. */
    return cur->node == l->node_id && !queue_streq(cur->boot_id, l->boot_id);
}

/* queue_apply_lease_item - lease one message's recipients; all or nothing per item. */
static int queue_apply_lease_item(struct queue *q,
                                  const Hamr__Lease *l,
                                  const Hamr__LeaseItem *item,
                                  uint64_t ts,
                                  int *status)
{
    struct queue_item *it = queue_lookup(q, item->queue_id);
    if (it == NULL) {
        *status = HAMR_ENOTFOUND;
        return 0;
    }
    struct queue_msg *m = &it->msg;
    /* Lease id 0 means "no lease" in an Outcome, so no lease may carry it. */
    if (item->lease_id == 0) {
        *status = HAMR_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < item->n_rcpt_indexes; i++) {
        if (item->rcpt_indexes[i] >= m->n_rcpts) {
            *status = HAMR_EINVAL;
            return 0;
        }
    }
    if (m->held)
        return 0;
    /* Allocate every lease first: the item is applied whole or not at all. */
    size_t n = item->n_rcpt_indexes;
    struct queue_lease **fresh = calloc(n ? n : 1, sizeof(*fresh));
    int rv = fresh ? 0 : HAMR_ENOMEM;
    for (size_t i = 0; rv == 0 && i < n; i++) {
        if (!queue_rcpt_leasable(&m->rcpts[item->rcpt_indexes[i]], l, ts))
            continue;
        fresh[i] = calloc(1, sizeof(*fresh[i]));
        if (fresh[i] == NULL)
            rv = HAMR_ENOMEM;
        if (rv == 0)
            rv = queue_str_opt(l->boot_id, &fresh[i]->boot_id);
        if (rv == 0)
            rv = queue_str_opt(item->destination, &fresh[i]->dest);
    }
    const struct queue_lease_hook *h = &q->lease_hook;
    bool granted = false;
    if (rv == 0)
        queue_untouch(q, it);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        struct queue_rcpt *r = &m->rcpts[item->rcpt_indexes[i]];
        /* A repeated index is leased once; the copies made for it stay unused. */
        if (!queue_rcpt_leasable(r, l, ts))
            continue;
        if (r->state == QUEUE_RCPT_LEASED && h->lapsed != NULL)
            h->lapsed(h->arg, m->id, r->addr, queue_rcpt_lease(r)->id, queue_rcpt_lease(r)->node,
                      item->lease_id, l->node_id);
        granted = true;
        r->state = QUEUE_RCPT_LEASED;
        fresh[i]->id = item->lease_id;
        fresh[i]->node = l->node_id;
        fresh[i]->term = l->term;
        fresh[i]->expires_ms = l->expires_at_ms;
        queue_rcpt_set_lease(r, fresh[i]);
        fresh[i] = NULL;
    }
    if (rv == 0)
        queue_touch(q, it);
    if (rv == 0 && granted && h->granted != NULL && l->node_id == h->node_id &&
        queue_streq(l->boot_id, h->boot_id))
        h->granted(h->arg, m->id, item->lease_id, item->destination, l->expires_at_ms);
    for (size_t i = 0; fresh && i < n; i++)
        queue_lease_free(fresh[i]);
    free(fresh);
    return rv;
}

/* queue_apply_lease - every item on its own; the first refusal is reported. */
static int queue_apply_lease(struct queue *q,
                             const Hamr__Lease *l,
                             uint64_t ts,
                             struct queue_apply_result *res)
{
    for (size_t i = 0; i < l->n_items; i++) {
        int status = 0;
        int rv = queue_apply_lease_item(q, l, l->items[i], ts, &status);
        if (rv != 0)
            return rv;
        if (status != 0 && res->status == 0)
            res->status = status;
    }
    return 0;
}

/*
 * queue_apply_lease_renew - from QUEUE_LEVEL_SPREAD: each item's recipients
 * still LEASED under its lease_id by the renewal's node and boot run until
 * expires_at_ms, never earlier than before. An item whose lease has been
 * replaced or ended is left alone: the holder has lost it.
 */
static int queue_apply_lease_renew(struct queue *q,
                                   const Hamr__LeaseRenew *lr,
                                   struct queue_apply_result *res)
{
    if (q->cluster_level < QUEUE_LEVEL_SPREAD) {
        res->status = HAMR_EVERSION;
        return 0;
    }
    const struct queue_lease_hook *h = &q->lease_hook;
    bool ours =
        h->renewed != NULL && lr->node_id == h->node_id && queue_streq(lr->boot_id, h->boot_id);
    for (size_t i = 0; i < lr->n_items; i++) {
        const Hamr__LeaseRenewItem *item = lr->items[i];
        struct queue_item *it = item->lease_id != 0 ? queue_lookup(q, item->queue_id) : NULL;
        if (it == NULL)
            continue;
        struct queue_msg *m = &it->msg;
        bool held = false, moved = false;
        for (size_t k = 0; k < m->n_rcpts; k++) {
            struct queue_lease *cur = queue_rcpt_lease_mut(&m->rcpts[k]);
            if (m->rcpts[k].state != QUEUE_RCPT_LEASED || cur == NULL ||
                cur->id != item->lease_id || cur->node != lr->node_id ||
                !queue_streq(cur->boot_id, lr->boot_id))
                continue;
            held = true;
            if (lr->expires_at_ms > cur->expires_ms) {
                cur->expires_ms = lr->expires_at_ms;
                moved = true;
            }
        }
        if (moved)
            queue_touch(q, it);
        if (held && ours)
            h->renewed(h->arg, m->id, item->lease_id, lr->expires_at_ms, lr->asked_mono_ms);
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Outcome
 * ------------------------------------------------------------------------ */

/*
 * queue_outcome_applies - fencing: a result counts only for a recipient
 * leased under the outcome's lease_id (from QUEUE_LEVEL_SPREAD: and held by
 * the outcome's node_id, so only the holder reports). lease_id 0 (expiry, no route) counts
 * for a recipient nobody holds: PENDING, or LEASED under a lease that has
 * lapsed at ts, which is what the scheduler reports as due.
 */
static bool queue_outcome_applies(const struct queue *q,
                                  const struct queue_rcpt *r,
                                  const Hamr__Outcome *o,
                                  uint64_t ts)
{
    uint64_t lease_id = o->lease_id;
    const struct queue_lease *cur = queue_rcpt_lease(r);
    /* From QUEUE_LEVEL_SPREAD any node holds leases: only its holder reports. */
    if (lease_id != 0 && q->cluster_level >= QUEUE_LEVEL_SPREAD && cur->node != o->node_id)
        return false;
    if (lease_id != 0)
        return r->state == QUEUE_RCPT_LEASED && cur->id == lease_id;
    return r->state == QUEUE_RCPT_PENDING ||
           (r->state == QUEUE_RCPT_LEASED && cur->expires_ms <= ts);
}

/*
 * queue_notify_wants - does recipient i of m ask for a notice of this kind
 * (QUEUE_NOTIFY_FAILURE, _DELAY or _SUCCESS)? Without NOTIFY (RFC 3461
 * 4.1) hamr sends failures and delays, never success; NEVER sends none.
 * Below QUEUE_LEVEL_EXT m has no parameters and only failures go out.
 */
static bool queue_notify_wants(const struct queue_msg *m, size_t i, uint8_t kind)
{
    uint8_t notify = m->ext != NULL ? m->ext->notify[i] : 0;
    if (notify == 0)
        return kind != QUEUE_NOTIFY_SUCCESS;
    return (notify & kind) != 0;
}

/* queue_notice_rcpt - recipient i of m as a DSN lists it. */
static void queue_notice_rcpt(struct queue_dsn_rcpt *f,
                              const struct queue_msg *m,
                              size_t i,
                              enum queue_rcpt_state state,
                              const Hamr__RcptResult *r,
                              const char *remote)
{
    f->addr = m->rcpts[i].addr;
    f->state = state;
    f->smtp_code = r != NULL ? r->smtp_code : 0;
    f->diagnostic = r != NULL ? r->diagnostic : NULL;
    f->remote = remote;
    f->orcpt = m->ext != NULL ? m->ext->orcpt[i] : NULL;
}

/* The notices one Outcome can owe: failures, a delay warning, relayed ones. */
enum { QUEUE_NOTICE_FAILED, QUEUE_NOTICE_DELAYED, QUEUE_NOTICE_RELAYED, QUEUE_NOTICES };

/* queue_outcome_plan - what an Outcome will do, computed before any change. */
struct queue_outcome_plan {
    bool *applies;             /* per result */
    const char **errors;       /* per result: new last_error (held until used) */
    bool *set_tls;             /* per result: replace tls_policy and tls (level and policy given) */
    const char **tls_policies; /* per result: new tls_policy (held until used) */
    const char **tls;          /* per result: new tls (held until used) */
    const struct queue_tried **tried; /* per result: the three texts it leaves (held until used) */
    struct queue_dsn_rcpt *notice[QUEUE_NOTICES]; /* recipients per notice kind (one block) */
    size_t n_notice[QUEUE_NOTICES];
    struct queue_item *dsn[QUEUE_NOTICES]; /* owned until linked */
    uint32_t dsn_count;
    bool delay_warned;       /* the message's delay notice is given by this outcome */
    struct queue_done *done; /* owned until linked; NULL if the message stays */
};

/* queue_outcome_plan_free - release what the plan still owns. */
static void queue_outcome_plan_free(struct queue *q, struct queue_outcome_plan *p, size_t n)
{
    for (size_t i = 0; p->errors && i < n; i++)
        queue_str_put(p->errors[i]);
    for (size_t i = 0; p->tls_policies && i < n; i++)
        queue_str_put(p->tls_policies[i]);
    for (size_t i = 0; p->tls && i < n; i++)
        queue_str_put(p->tls[i]);
    for (size_t i = 0; p->tried && i < n; i++)
        queue_tried_put(p->tried[i]);
    free(p->tried);
    free(p->errors);
    free(p->set_tls);
    free(p->tls_policies);
    free(p->tls);
    free(p->applies);
    free(p->notice[0]); /* one allocation for every kind */
    for (size_t k = 0; k < QUEUE_NOTICES; k++)
        queue_item_drop(q, p->dsn[k]);
    free(p->done);
}

/* queue_outcome_validate - indexes in range, each once, statuses known. */
static int queue_outcome_validate(const struct queue_msg *m, const Hamr__Outcome *o)
{
    for (size_t i = 0; i < o->n_results; i++) {
        const Hamr__RcptResult *r = o->results[i];
        if (r->rcpt_index >= m->n_rcpts)
            return HAMR_EINVAL;
        if (r->status < HAMR__RCPT_RESULT__STATUS__DELIVERED ||
            r->status > HAMR__RCPT_RESULT__STATUS__EXPIRED)
            return HAMR_EINVAL;
        for (size_t j = 0; j < i; j++)
            if (o->results[j]->rcpt_index == r->rcpt_index)
                return HAMR_EINVAL;
    }
    return 0;
}

/* queue_outcome_prepare - fill the plan: which results apply, texts, DSN, done record. */
static int queue_outcome_prepare(struct queue *q,
                                 const struct queue_msg *m,
                                 const Hamr__Outcome *o,
                                 uint64_t ts,
                                 struct queue_outcome_plan *p)
{
    size_t n = o->n_results;
    p->applies = calloc(n ? n : 1, sizeof(*p->applies));
    p->errors = calloc(n ? n : 1, sizeof(*p->errors));
    /* A recipient is in one list at most: n entries per kind, in one allocation. */
    p->notice[0] = calloc(QUEUE_NOTICES * (n ? n : 1), sizeof(*p->notice[0]));
    for (size_t k = 1; p->notice[0] != NULL && k < QUEUE_NOTICES; k++)
        p->notice[k] = p->notice[0] + k * (n ? n : 1);
    p->set_tls = calloc(n ? n : 1, sizeof(*p->set_tls));
    p->tls_policies = calloc(n ? n : 1, sizeof(*p->tls_policies));
    p->tls = calloc(n ? n : 1, sizeof(*p->tls));
    p->tried = calloc(n ? n : 1, sizeof(*p->tried));
    if (p->applies == NULL || p->errors == NULL || p->notice[0] == NULL || p->set_tls == NULL ||
        p->tls_policies == NULL || p->tls == NULL || p->tried == NULL)
        return HAMR_ENOMEM;
    bool ext = q->cluster_level >= QUEUE_LEVEL_EXT;
    /*
     * One delay notice per message (as Postfix's delay_warning_time): the
     * first DEFERRED result applied once the message is older than the
     * outcome's delay_warning_ms gives it, for the recipients that want it.
     */
    bool delay_due = ext && o->delay_warning_ms > 0 && !m->delay_warned &&
                     ts >= m->received_at_ms && ts - m->received_at_ms >= o->delay_warning_ms;
    size_t final_after = 0;
    for (size_t i = 0; i < m->n_rcpts; i++)
        final_after += queue_rcpt_final(&m->rcpts[i]);
    for (size_t i = 0; i < n; i++) {
        const Hamr__RcptResult *r = o->results[i];
        const struct queue_rcpt *rc = &m->rcpts[r->rcpt_index];
        p->applies[i] = queue_outcome_applies(q, rc, o, ts);
        if (!p->applies[i])
            continue;
        if (r->status != HAMR__RCPT_RESULT__STATUS__DELIVERED) {
            int rv = queue_error_text(r->smtp_code, r->diagnostic, &p->errors[i]);
            if (rv != 0)
                return rv;
        }
        /*
         * The TLS fields are format 2: below that level a node of an older
         * build, which ignores them, applies this entry too (see queue.h).
         */
        if (q->cluster_level >= QUEUE_LEVEL_TLS && r->tls_policy != NULL &&
            r->tls_policy[0] != '\0') {
            p->set_tls[i] = true;
            int rv = queue_bounded_text(r->tls_policy, QUEUE_TLS_POLICY_MAX, &p->tls_policies[i]);
            if (rv == 0)
                rv = queue_bounded_text(r->tls, QUEUE_TLS_MAX, &p->tls[i]);
            if (rv != 0)
                return rv;
        }
        /* A delivery keeps the last error; the TLS texts change when given. */
        const struct queue_tried *was = queue_rcpt_tried(rc);
        int rv = queue_tried_get(
            r->status != HAMR__RCPT_RESULT__STATUS__DELIVERED ? p->errors[i] : was->error,
            p->set_tls[i] ? p->tls_policies[i] : was->tls_policy,
            p->set_tls[i] ? p->tls[i] : was->tls, &p->tried[i]);
        if (rv != 0)
            return rv;
        size_t ri = r->rcpt_index;
        if (r->status == HAMR__RCPT_RESULT__STATUS__DEFERRED) {
            if (delay_due) {
                p->delay_warned = true;
                if (queue_notify_wants(m, ri, QUEUE_NOTIFY_DELAY))
                    queue_notice_rcpt(
                        &p->notice[QUEUE_NOTICE_DELAYED][p->n_notice[QUEUE_NOTICE_DELAYED]++], m,
                        ri, QUEUE_RCPT_PENDING, r, o->remote);
            }
            continue;
        }
        final_after++;
        if (r->status == HAMR__RCPT_RESULT__STATUS__DELIVERED) {
            /* RFC 3461 5.2.2: relayed to a next hop that did not take NOTIFY. */
            if (ext && queue_notify_wants(m, ri, QUEUE_NOTIFY_SUCCESS) && !r->dsn_passed)
                queue_notice_rcpt(
                    &p->notice[QUEUE_NOTICE_RELAYED][p->n_notice[QUEUE_NOTICE_RELAYED]++], m, ri,
                    QUEUE_RCPT_DELIVERED, r, o->remote);
            continue;
        }
        if (!queue_notify_wants(m, ri, QUEUE_NOTIFY_FAILURE))
            continue;
        queue_notice_rcpt(&p->notice[QUEUE_NOTICE_FAILED][p->n_notice[QUEUE_NOTICE_FAILED]++], m,
                          ri,
                          r->status == HAMR__RCPT_RESULT__STATUS__EXPIRED ? QUEUE_RCPT_EXPIRED
                                                                          : QUEUE_RCPT_BOUNCED,
                          r, o->remote);
    }
    p->dsn_count = m->dsn_count;
    for (size_t k = 0; k < QUEUE_NOTICES; k++) {
        int rv = queue_dsn_prepare(q, m, p->notice[k], p->n_notice[k], o->reporter,
                                   o->dsn_expires_at_ms, ts, &p->dsn[k], &p->dsn_count);
        if (rv != 0)
            return rv;
    }
    if (final_after == m->n_rcpts) {
        p->done = queue_done_new(m->id, ts);
        if (p->done == NULL)
            return HAMR_ENOMEM;
    }
    return 0;
}

/* queue_apply_outcome - record delivery results (see queue.h). */
static int queue_apply_outcome(struct queue *q,
                               const Hamr__Outcome *o,
                               uint64_t ts,
                               struct queue_apply_result *res)
{
    struct queue_item *it = queue_lookup(q, o->queue_id);
    if (it == NULL) {
        res->status = HAMR_ENOTFOUND;
        return 0;
    }
    struct queue_msg *m = &it->msg;
    int rv = queue_outcome_validate(m, o);
    if (rv != 0) {
        res->status = rv;
        return 0;
    }
    struct queue_outcome_plan p = {0};
    rv = queue_outcome_prepare(q, m, o, ts, &p);
    if (rv != 0) {
        queue_outcome_plan_free(q, &p, o->n_results);
        return rv;
    }
    /* Nothing below can fail. */
    queue_untouch(q, it);
    uint64_t ended_node = 0; /* the holder of the lease this outcome ends */
    const struct queue_lease_hook *h = &q->lease_hook;
    for (size_t i = 0; i < o->n_results; i++) {
        if (!p.applies[i])
            continue;
        const Hamr__RcptResult *r = o->results[i];
        struct queue_rcpt *rc = &m->rcpts[r->rcpt_index];
        if (o->lease_id != 0 && rc->state == QUEUE_RCPT_LEASED)
            ended_node = queue_rcpt_lease(rc)->node;
        /* An expiry (or no route) without a lease ends a lease that ran out
         * without an Outcome: its holder may have delivered, though the
         * sender will be told of a failure. The same window as a Lease that
         * takes the recipient over, so told the same way (new lease 0). */
        if (o->lease_id == 0 && rc->state == QUEUE_RCPT_LEASED && h->lapsed != NULL)
            h->lapsed(h->arg, m->id, rc->addr, queue_rcpt_lease(rc)->id, queue_rcpt_lease(rc)->node,
                      0, 0);
        queue_rcpt_clear_lease(rc);
        queue_rcpt_set_tried(rc, p.tried[i]);
        p.tried[i] = NULL;
        switch (r->status) {
            case HAMR__RCPT_RESULT__STATUS__DELIVERED:
                rc->state = QUEUE_RCPT_DELIVERED;
                break;
            case HAMR__RCPT_RESULT__STATUS__DEFERRED:
                rc->state = QUEUE_RCPT_PENDING;
                rc->attempts++;
                rc->next_attempt_ms = o->next_attempt_ms;
                break;
            case HAMR__RCPT_RESULT__STATUS__BOUNCED:
            case HAMR__RCPT_RESULT__STATUS__EXPIRED:
            default:
                rc->state = r->status == HAMR__RCPT_RESULT__STATUS__EXPIRED ? QUEUE_RCPT_EXPIRED
                                                                            : QUEUE_RCPT_BOUNCED;
                break;
        }
    }
    m->dsn_count = p.dsn_count;
    if (p.delay_warned)
        m->delay_warned = true;
    queue_touch(q, it);
    for (size_t k = 0; k < QUEUE_NOTICES; k++) {
        if (p.dsn[k] != NULL) {
            queue_link(q, p.dsn[k]);
            p.dsn[k] = NULL;
            res->dsn_generated++;
        }
    }
    if (p.done != NULL) {
        queue_finish(q, it, p.done);
        p.done = NULL;
        res->finished++;
    }
    queue_outcome_plan_free(q, &p, o->n_results);
    if (ended_node != 0 && q->lease_hook.ended != NULL)
        q->lease_hook.ended(q->lease_hook.arg, ended_node);
    return 0;
}

/* ------------------------------------------------------------------------
 * Admin
 * ------------------------------------------------------------------------ */

/* queue_admin_bounce - fail every PENDING recipient, one DSN; LEASED ones keep their lease. */
static int queue_admin_bounce(struct queue *q,
                              struct queue_item *it,
                              const Hamr__Admin *a,
                              uint64_t ts,
                              struct queue_apply_result *res)
{
    struct queue_msg *m = &it->msg;
    size_t n_rcpts = m->n_rcpts;
    struct queue_dsn_rcpt *failed = calloc(n_rcpts, sizeof(*failed));
    const struct queue_tried **tried = calloc(n_rcpts, sizeof(*tried));
    struct queue_item *dsn = NULL;
    struct queue_done *done = NULL;
    uint32_t dsn_count = m->dsn_count;
    size_t n_failed = 0, n_bounced = 0, final_after = 0;
    int rv = (failed && tried) ? 0 : HAMR_ENOMEM;
    const char *text = rv == 0 ? queue_str(QUEUE_ADMIN_BOUNCE_TEXT) : NULL;
    if (rv == 0 && text == NULL)
        rv = HAMR_ENOMEM;
    for (size_t i = 0; rv == 0 && i < m->n_rcpts; i++) {
        struct queue_rcpt *r = &m->rcpts[i];
        if (queue_rcpt_final(r)) {
            final_after++;
            continue;
        }
        if (r->state != QUEUE_RCPT_PENDING)
            continue;
        final_after++;
        n_bounced++;
        const struct queue_tried *was = queue_rcpt_tried(r);
        rv = queue_tried_get(text, was->tls_policy, was->tls, &tried[i]);
        if (!queue_notify_wants(m, i, QUEUE_NOTIFY_FAILURE))
            continue;
        struct queue_dsn_rcpt *f = &failed[n_failed++];
        queue_notice_rcpt(f, m, i, QUEUE_RCPT_BOUNCED, NULL, NULL);
        f->diagnostic = QUEUE_ADMIN_BOUNCE_TEXT;
    }
    if (rv == 0)
        rv = queue_dsn_prepare(q, m, failed, n_failed, a->reporter, a->dsn_expires_at_ms, ts, &dsn,
                               &dsn_count);
    if (rv == 0 && n_bounced > 0 && final_after == m->n_rcpts) {
        done = queue_done_new(m->id, ts);
        if (done == NULL)
            rv = HAMR_ENOMEM;
    }
    if (rv == 0) {
        queue_untouch(q, it);
        for (size_t i = 0; i < m->n_rcpts; i++) {
            if (tried[i] == NULL)
                continue;
            m->rcpts[i].state = QUEUE_RCPT_BOUNCED;
            queue_rcpt_set_tried(&m->rcpts[i], tried[i]);
            tried[i] = NULL;
        }
        m->dsn_count = dsn_count;
        queue_touch(q, it);
        if (dsn != NULL) {
            queue_link(q, dsn);
            dsn = NULL;
            res->dsn_generated++;
        }
        if (done != NULL) {
            queue_finish(q, it, done);
            done = NULL;
            res->finished++;
        }
    }
    /* m may be gone now: use the count taken before. */
    for (size_t i = 0; tried && i < n_rcpts; i++)
        queue_tried_put(tried[i]);
    free(tried);
    queue_str_put(text);
    free(failed);
    queue_item_drop(q, dsn);
    free(done);
    return rv;
}

/* queue_admin_flush - every PENDING recipient of it due at ts. */
static void queue_admin_flush(struct queue *q, struct queue_item *it, uint64_t ts)
{
    struct queue_msg *m = &it->msg;
    queue_untouch(q, it);
    for (size_t i = 0; i < m->n_rcpts; i++)
        if (m->rcpts[i].state == QUEUE_RCPT_PENDING)
            m->rcpts[i].next_attempt_ms = ts;
    queue_touch(q, it);
}

/* queue_apply_admin - an operator command (see queue.h). */
static int queue_apply_admin(struct queue *q,
                             const Hamr__Admin *a,
                             uint64_t ts,
                             struct queue_apply_result *res)
{
    if (a->op == HAMR__ADMIN__OP__FLUSH && a->queue_id[0] == '\0') {
        for (struct queue_item *it = queue_item_after(q, 0); it != NULL;
             it = queue_item_after(q, it->seq))
            queue_admin_flush(q, it, ts);
        res->flushed = true;
        return 0;
    }
    struct queue_item *it = queue_lookup(q, a->queue_id);
    if (it == NULL) {
        res->status = HAMR_ENOTFOUND;
        return 0;
    }
    switch (a->op) {
        case HAMR__ADMIN__OP__DELETE: {
            struct queue_done *d = queue_done_new(it->msg.id, ts);
            if (d == NULL)
                return HAMR_ENOMEM;
            queue_finish(q, it, d);
            res->finished++;
            return 0;
        }
        case HAMR__ADMIN__OP__HOLD:
            queue_untouch(q, it);
            it->msg.held = true;
            queue_touch(q, it);
            return 0;
        case HAMR__ADMIN__OP__RELEASE:
            queue_untouch(q, it);
            it->msg.held = false;
            queue_touch(q, it);
            return 0;
        case HAMR__ADMIN__OP__FLUSH:
            queue_admin_flush(q, it, ts);
            res->flushed = true;
            return 0;
        case HAMR__ADMIN__OP__BOUNCE:
            return queue_admin_bounce(q, it, a, ts, res);
        default:
            res->status = HAMR_EINVAL;
            return 0;
    }
}

/* ------------------------------------------------------------------------
 * NodeInfo and ClusterLevel (the directory itself is in queue_node.c)
 * ------------------------------------------------------------------------ */

/*
 * queue_apply_node_info - a NodeInfo entry; a bad one is refused, not fatal.
 * Its zone counts only from QUEUE_LEVEL_SPREAD on (queue_node_put).
 */
static int queue_apply_node_info(struct queue *q,
                                 const Hamr__NodeInfo *ni,
                                 uint64_t ts,
                                 struct queue_apply_result *res)
{
    res->status = queue_node_put(q, ni, q->cluster_level, ts);
    return 0;
}

/*
 * queue_apply_cluster_level - raise the feature level; equal or lower is a
 * no-op. Above this build's format it is refused, not fatal (see queue.h).
 */
static int queue_apply_cluster_level(struct queue *q,
                                     const Hamr__ClusterLevel *cl,
                                     struct queue_apply_result *res)
{
    if (cl == NULL) {
        res->status = HAMR_EINVAL;
        return 0;
    }
    if (cl->level <= q->cluster_level)
        return 0;
    if (cl->level > q->format_max) {
        /* The caller logs refused commands; apply itself does no I/O. */
        res->status = HAMR_EVERSION;
        return 0;
    }
    q->cluster_level = cl->level;
    return 0;
}

/* ------------------------------------------------------------------------
 * StsPolicy (the cache itself is in queue_sts.c)
 * ------------------------------------------------------------------------ */

/*
 * queue_apply_sts - a StsPolicy entry. Below QUEUE_LEVEL_STS it is refused
 * (no leader proposes it there), so the cache stays empty until every voter
 * can apply the kind; a bad policy is refused, not fatal.
 */
static int queue_apply_sts(struct queue *q,
                           const Hamr__StsPolicy *p,
                           uint64_t ts,
                           struct queue_apply_result *res)
{
    if (q->cluster_level < QUEUE_LEVEL_STS) {
        res->status = HAMR_EVERSION;
        return 0;
    }
    return queue_sts_apply(q, p, ts, &res->status);
}

/* ------------------------------------------------------------------------
 * Apply
 * ------------------------------------------------------------------------ */

/*
 * queue_apply_kind_format - the format that introduced an entry kind. A
 * kind above q->format_max is one a build of that format does not know:
 * its proto_entry_unpack refuses it, which queue_set_format_max plays.
 */
static uint32_t queue_apply_kind_format(Hamr__Entry__CmdCase kind)
{
    switch (kind) {
        case HAMR__ENTRY__CMD_STS_POLICY:
            return QUEUE_LEVEL_STS;
        case HAMR__ENTRY__CMD_LEASE_RENEW:
            return QUEUE_LEVEL_SPREAD;
        default:
            return 1;
    }
}

/* queue_apply - decode one entry, prune the done set, run the command. */
int queue_apply(struct queue *q, const uint8_t *buf, size_t len, struct queue_apply_result *res)
{
    memset(res, 0, sizeof(*res));
    Hamr__Entry *e = NULL;
    int rv = proto_entry_unpack(buf, len, &e);
    if (rv != 0)
        return rv;
    if (queue_apply_kind_format(e->cmd_case) > q->format_max) {
        hamr__entry__free_unpacked(e, NULL);
        return HAMR_EVERSION;
    }
    uint64_t ts = e->timestamp_ms;
    /*
     * Pruning first lets an id finished more than a TTL ago be enqueued
     * again. It is idempotent, so an entry retried after HAMR_ENOMEM gives
     * the same result.
     */
    queue_done_prune(q, ts);
    /* Room for what one entry can add: a message and the notices of one. */
    rv = queue_reserve(q, 1 + QUEUE_NOTICES);
    if (rv != 0) {
        hamr__entry__free_unpacked(e, NULL);
        return rv;
    }
    switch (e->cmd_case) {
        case HAMR__ENTRY__CMD_ENQUEUE:
            rv = queue_apply_enqueue(q, e->enqueue, ts, res);
            break;
        case HAMR__ENTRY__CMD_LEASE:
            rv = queue_apply_lease(q, e->lease, ts, res);
            break;
        case HAMR__ENTRY__CMD_OUTCOME:
            rv = queue_apply_outcome(q, e->outcome, ts, res);
            break;
        case HAMR__ENTRY__CMD_ADMIN:
            rv = queue_apply_admin(q, e->admin, ts, res);
            break;
        case HAMR__ENTRY__CMD_NODE_INFO:
            rv = queue_apply_node_info(q, e->node_info, ts, res);
            break;
        case HAMR__ENTRY__CMD_CLUSTER_LEVEL:
            rv = queue_apply_cluster_level(q, e->cluster_level, res);
            break;
        case HAMR__ENTRY__CMD_STS_POLICY:
            rv = queue_apply_sts(q, e->sts_policy, ts, res);
            break;
        case HAMR__ENTRY__CMD_LEASE_RENEW:
            rv = queue_apply_lease_renew(q, e->lease_renew, res);
            break;
        default:
            /* proto_entry_unpack refuses kinds it does not know. */
            rv = HAMR_EVERSION;
            break;
    }
    hamr__entry__free_unpacked(e, NULL);
    if (rv != 0)
        return rv;
    q->applied++;
    if (ts > q->last_timestamp_ms)
        q->last_timestamp_ms = ts;
    return 0;
}
