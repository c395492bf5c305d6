/*
 * queue_sts.c - the replicated MTA-STS policy cache (RFC 8461): the
 * policies StsPolicy entries bring, keyed by domain, as queue.h specifies
 * ("The MTA-STS policy cache"). queue_apply.c checks the cluster level and
 * calls queue_sts_apply; queue_snapshot.c saves the table and restores it
 * through queue_sts_restore.
 *
 * The table is an array of records sorted by domain (byte order of the
 * lower-case text): lookups are a binary search, snapshots and the digest
 * walk it in order, so every node encodes it the same way. At most
 * QUEUE_STS_MAX records, so an insert's memmove stays small. Each record is
 * one allocation with its texts. sts_next_expiry (the earliest expiry)
 * lets an apply skip the walk for expired policies until one is due.
 *
 * Determinism: no clock; time is the entry's timestamp. Which policy a full
 * table gives up is decided by (expires_at_ms, domain) alone.
 *
 * Errors: HAMR_ENOMEM; refused entries get HAMR_EINVAL in *status; a bad
 * snapshot record HAMR_ECORRUPT.
 *
 * Security: policies come from the replicated log, written by the leader
 * from what an HTTPS server sent; every text is bounded and checked to be a
 * host name (or "*." and one) or an id of letters and digits before it is
 * kept.
 */
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/hostname.h"
#include "util/err.h"
#include "proto/proto_frame.h"
#include "queue/internal.h"
#include "queue/queue.h"

/* queue_sts_mode and StsPolicy.Mode have the same values (asserted in queue_entry.c). */

/* A normalised host name or pattern with its NUL ("*." counts in the 253). */
#define QUEUE_STS_TEXT_MAX (QUEUE_STS_HOST_MAX + 1)

/* ------------------------------------------------------------------------
 * Checks and normal form
 * ------------------------------------------------------------------------ */

/*
 * queue_sts_norm - s in lower case without one trailing dot into out
 * (QUEUE_STS_TEXT_MAX bytes): the table's key form. *n gets its length.
 * false when it is longer than QUEUE_STS_HOST_MAX (out is then unset).
 */
static bool queue_sts_norm(const char *s, char out[QUEUE_STS_TEXT_MAX], size_t *n)
{
    size_t len = strnlen(s, QUEUE_STS_HOST_MAX + 2);
    if (len > 0 && s[len - 1] == '.')
        len--;
    if (len > QUEUE_STS_HOST_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    out[len] = '\0';
    *n = len;
    return true;
}

/* queue_sts_domain - s normalised into out, if that is a host name. */
static bool queue_sts_domain(const char *s, char out[QUEUE_STS_TEXT_MAX], size_t *n)
{
    return s != NULL && queue_sts_norm(s, out, n) && hostname_ok(out, *n, QUEUE_STS_HOST_MAX);
}

/* queue_sts_pattern - s normalised into out, if that is a host name or "*." and one. */
static bool queue_sts_pattern(const char *s, char out[QUEUE_STS_TEXT_MAX], size_t *n)
{
    if (s == NULL || !queue_sts_norm(s, out, n))
        return false;
    if (*n >= 2 && out[0] == '*' && out[1] == '.')
        return hostname_ok(out + 2, *n - 2, QUEUE_STS_HOST_MAX);
    return hostname_ok(out, *n, QUEUE_STS_HOST_MAX);
}

/* queue_sts_id_ok - 1 to QUEUE_STS_ID_MAX letters and digits (RFC 8461 3.1). */
static bool queue_sts_id_ok(const char *id)
{
    if (id == NULL)
        return false;
    size_t n = strnlen(id, QUEUE_STS_ID_MAX + 1);
    if (n == 0 || n > QUEUE_STS_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!hostname_alnum((unsigned char)id[i]))
            return false;
    return true;
}

/* queue_sts_expiry - fetched_at_ms + max_age_s seconds, UINT64_MAX if that overflows. */
static uint64_t queue_sts_expiry(uint64_t fetched_at_ms, uint32_t max_age_s)
{
    uint64_t age = (uint64_t)max_age_s * 1000;
    return fetched_at_ms > UINT64_MAX - age ? UINT64_MAX : fetched_at_ms + age;
}

/* ------------------------------------------------------------------------
 * Records
 * ------------------------------------------------------------------------ */

/*
 * queue_sts_rec_new - the record of p in normal form, checked: 0 and *out,
 * HAMR_EINVAL for a policy apply refuses, HAMR_ENOMEM.
 */
static int queue_sts_rec_new(const Hamr__StsPolicy *p, struct queue_sts_rec **out)
{
    char buf[QUEUE_STS_TEXT_MAX];
    size_t n, dlen, texts;
    *out = NULL;
    if (p == NULL || !queue_sts_domain(p->domain, buf, &dlen) || !queue_sts_id_ok(p->id))
        return HAMR_EINVAL;
    if ((unsigned)p->mode > (unsigned)QUEUE_STS_ENFORCE || p->n_mx > QUEUE_STS_MX_MAX ||
        p->max_age > QUEUE_STS_MAX_AGE_MAX)
        return HAMR_EINVAL;
    texts = dlen + 1 + strlen(p->id) + 1;
    for (size_t i = 0; i < p->n_mx; i++) {
        if (!queue_sts_pattern(p->mx[i], buf, &n))
            return HAMR_EINVAL;
        texts += n + 1;
    }
    struct queue_sts_rec *r = calloc(1, sizeof(*r) + p->n_mx * sizeof(r->mx_ptrs[0]) + texts);
    if (r == NULL)
        return HAMR_ENOMEM;
    char *t = (char *)(r->mx_ptrs + p->n_mx);
    /* The checks above passed, so the same calls succeed into the record. */
    bool ok = queue_sts_domain(p->domain, t, &n);
    HAMR_ASSERT(ok);
    r->pub.domain = t;
    t += n + 1;
    n = strlen(p->id);
    memcpy(t, p->id, n + 1);
    r->pub.id = t;
    t += n + 1;
    for (size_t i = 0; i < p->n_mx; i++) {
        ok = queue_sts_pattern(p->mx[i], t, &n);
        HAMR_ASSERT(ok);
        r->mx_ptrs[i] = t;
        t += n + 1;
    }
    r->pub.mx = (const char *const *)r->mx_ptrs;
    r->pub.n_mx = p->n_mx;
    r->pub.mode = (enum queue_sts_mode)p->mode;
    r->pub.max_age_s = p->max_age;
    r->pub.fetched_at_ms = p->fetched_at_ms;
    r->pub.expires_at_ms = queue_sts_expiry(p->fetched_at_ms, p->max_age);
    *out = r;
    return 0;
}

/* queue_sts_rec_canonical - r holds p's texts unchanged (a snapshot is written in normal form). */
static bool queue_sts_rec_canonical(const struct queue_sts_rec *r, const Hamr__StsPolicy *p)
{
    if (strcmp(r->pub.domain, p->domain) != 0)
        return false;
    for (size_t i = 0; i < r->pub.n_mx; i++)
        if (strcmp(r->pub.mx[i], p->mx[i]) != 0)
            return false;
    return true;
}

/* ------------------------------------------------------------------------
 * The table
 * ------------------------------------------------------------------------ */

/* queue_sts_search - true if domain is at *pos; else *pos is where it would go. */
static bool queue_sts_search(const struct queue *q, const char *domain, size_t *pos)
{
    size_t lo = 0, hi = q->sts_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(q->sts[mid]->pub.domain, domain);
        if (c == 0) {
            *pos = mid;
            return true;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *pos = lo;
    return false;
}

/* queue_sts_reserve - room for one more record (the table never grows past QUEUE_STS_MAX). */
static int queue_sts_reserve(struct queue *q)
{
    if (q->sts_len < q->sts_cap || q->sts_cap >= QUEUE_STS_MAX)
        return 0;
    size_t cap = q->sts_cap ? q->sts_cap * 2 : 16;
    if (cap > QUEUE_STS_MAX)
        cap = QUEUE_STS_MAX;
    struct queue_sts_rec **t = realloc(q->sts, cap * sizeof(*t));
    if (t == NULL)
        return HAMR_ENOMEM;
    q->sts = t;
    q->sts_cap = cap;
    return 0;
}

/* queue_sts_next_expiry - recompute the earliest expiry after a removal. */
static void queue_sts_next_expiry(struct queue *q)
{
    q->sts_next_expiry = UINT64_MAX;
    for (size_t i = 0; i < q->sts_len; i++)
        if (q->sts[i]->pub.expires_at_ms < q->sts_next_expiry)
            q->sts_next_expiry = q->sts[i]->pub.expires_at_ms;
}

/* queue_sts_insert_at - put r at pos (room reserved). Takes r. */
static void queue_sts_insert_at(struct queue *q, size_t pos, struct queue_sts_rec *r)
{
    HAMR_ASSERT(q->sts_len < q->sts_cap && pos <= q->sts_len);
    memmove(&q->sts[pos + 1], &q->sts[pos], (q->sts_len - pos) * sizeof(q->sts[0]));
    q->sts[pos] = r;
    q->sts_len++;
    if (r->pub.expires_at_ms < q->sts_next_expiry)
        q->sts_next_expiry = r->pub.expires_at_ms;
}

/* queue_sts_remove_at - free the record at pos (sts_next_expiry is the caller's). */
static void queue_sts_remove_at(struct queue *q, size_t pos)
{
    free(q->sts[pos]);
    memmove(&q->sts[pos], &q->sts[pos + 1], (q->sts_len - pos - 1) * sizeof(q->sts[0]));
    q->sts_len--;
}

/* queue_sts_prune - drop every policy expired at ts (expires_at_ms < ts), keeping the order. */
static void queue_sts_prune(struct queue *q, uint64_t ts)
{
    if (q->sts_next_expiry >= ts)
        return;
    size_t k = 0;
    for (size_t i = 0; i < q->sts_len; i++) {
        if (q->sts[i]->pub.expires_at_ms < ts)
            free(q->sts[i]);
        else
            q->sts[k++] = q->sts[i];
    }
    q->sts_len = k;
    queue_sts_next_expiry(q);
}

/*
 * queue_sts_first_to_expire - the index of the policy that expires first,
 * the lowest domain among equals: the table is in domain order, so the
 * first one met.
 */
static size_t queue_sts_first_to_expire(const struct queue *q)
{
    size_t v = 0;
    for (size_t i = 1; i < q->sts_len; i++)
        if (q->sts[i]->pub.expires_at_ms < q->sts[v]->pub.expires_at_ms)
            v = i;
    return v;
}

/* queue_sts_apply - a StsPolicy entry at ts (see queue.h); everything is allocated first. */
int queue_sts_apply(struct queue *q, const Hamr__StsPolicy *p, uint64_t ts, int *status)
{
    struct queue_sts_rec *r = NULL;
    *status = 0;
    int rv = queue_sts_rec_new(p, &r);
    if (rv == HAMR_EINVAL) {
        *status = rv;
        return 0;
    }
    if (rv == 0)
        rv = queue_sts_reserve(q);
    if (rv != 0) {
        free(r);
        return rv;
    }
    /* Nothing below can fail. */
    queue_sts_prune(q, ts);
    bool expired = r->pub.expires_at_ms < ts;
    size_t pos;
    if (queue_sts_search(q, r->pub.domain, &pos)) {
        struct queue_sts_rec *held = q->sts[pos];
        if (r->pub.fetched_at_ms < held->pub.fetched_at_ms) {
            /* An older fetch applied late never wins. */
            free(r);
            return 0;
        }
        bool was_first = held->pub.expires_at_ms == q->sts_next_expiry;
        if (expired) {
            /* The newest fetch says the policy has run out: none is kept. */
            queue_sts_remove_at(q, pos);
            free(r);
        } else {
            free(held);
            q->sts[pos] = r;
        }
        if (was_first || expired)
            queue_sts_next_expiry(q);
        else if (r->pub.expires_at_ms < q->sts_next_expiry)
            q->sts_next_expiry = r->pub.expires_at_ms;
        return 0;
    }
    if (expired) {
        free(r);
        return 0;
    }
    if (q->sts_len == QUEUE_STS_MAX) {
        size_t v = queue_sts_first_to_expire(q);
        const struct queue_sts *first = &q->sts[v]->pub;
        if (r->pub.expires_at_ms < first->expires_at_ms ||
            (r->pub.expires_at_ms == first->expires_at_ms &&
             strcmp(r->pub.domain, first->domain) < 0)) {
            /* The new policy is the one that expires first: it goes. */
            free(r);
            return 0;
        }
        queue_sts_remove_at(q, v);
        if (v < pos)
            pos--;
        queue_sts_next_expiry(q);
    }
    queue_sts_insert_at(q, pos, r);
    return 0;
}

/* queue_sts_restore - one snapshot policy into a new queue's cache. */
int queue_sts_restore(struct queue *q, const Hamr__StsPolicy *p)
{
    struct queue_sts_rec *r = NULL;
    int rv = queue_sts_rec_new(p, &r);
    if (rv != 0)
        return rv == HAMR_EINVAL ? HAMR_ECORRUPT : rv;
    size_t pos;
    if (!queue_sts_rec_canonical(r, p) || q->sts_len == QUEUE_STS_MAX ||
        queue_sts_search(q, r->pub.domain, &pos)) {
        free(r);
        return HAMR_ECORRUPT;
    }
    rv = queue_sts_reserve(q);
    if (rv != 0) {
        free(r);
        return rv;
    }
    queue_sts_insert_at(q, pos, r);
    return 0;
}

/* queue_sts_clear - free every record and the table. */
void queue_sts_clear(struct queue *q)
{
    for (size_t i = 0; i < q->sts_len; i++)
        free(q->sts[i]);
    free(q->sts);
    q->sts = NULL;
    q->sts_len = q->sts_cap = 0;
    q->sts_next_expiry = UINT64_MAX;
}

/* ------------------------------------------------------------------------
 * Queries
 * ------------------------------------------------------------------------ */

/* queue_sts_find - the policy of domain, looked up in normal form. */
const struct queue_sts *queue_sts_find(const struct queue *q, const char *domain)
{
    char key[QUEUE_STS_TEXT_MAX];
    size_t n, pos;
    if (domain == NULL || !queue_sts_norm(domain, key, &n))
        return NULL;
    return queue_sts_search(q, key, &pos) ? &q->sts[pos]->pub : NULL;
}

/* queue_sts_count - the table's length. */
size_t queue_sts_count(const struct queue *q)
{
    return q->sts_len;
}

/* queue_sts_foreach - visit the policies in domain order. */
void queue_sts_foreach(const struct queue *q,
                       int (*fn)(void *arg, const struct queue_sts *p),
                       void *arg)
{
    for (size_t i = 0; i < q->sts_len; i++)
        if (fn(arg, &q->sts[i]->pub) != 0)
            return;
}
