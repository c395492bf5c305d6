/*
 * queue_sched.c - the leader's delivery scheduling policy over the queue.
 *
 * queue_sched_pick reads the queue at a given time and returns work items;
 * it changes nothing, so it may run as often as the leader likes. It visits
 * only the messages with a lease and those due at the given time
 * (queue_foreach_due), so a large deferred backlog costs nothing until its
 * retries fall due. Steps:
 *   1. count active leases per destination (distinct messages holding an
 *      unexpired lease there; leases of this node under another boot id
 *      died with their process and are not counted);
 *   2. collect the due recipients of messages that are not held and group
 *      them per (message, kind, destination): EXPIRE for a message past its
 *      lifetime, NOROUTE when the route has none, otherwise DELIVER;
 *   3. order the groups by their earliest next attempt, then acceptance
 *      order, and take them while max_items and max_per_dest allow.
 *
 * EXPIRE and NOROUTE items are turned into an Outcome with lease_id 0, which
 * applies only to recipients nobody holds (PENDING, or LEASED under a lease
 * that has lapsed). A recipient still held under a live lease of a dead
 * boot of this node is therefore only re-leased for delivery, never
 * expired or bounced here: once its lease lapses it is.
 *
 * A message with expires_at_ms 0 never expires. max_per_dest 0 and
 * max_items 0 mean no limit.
 *
 * Errors: HAMR_EINVAL (bad arguments), HAMR_ENOMEM.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "queue/queue_sched.h"

/* queue_sched_count - leases per destination in an open-addressing table. */
struct queue_sched_count {
    char *key; /* NULL: empty slot */
    unsigned count;
    uint64_t last_msg; /* seq of the last message counted (seq starts at 1) */
};

struct queue_sched_counts {
    struct queue_sched_count *slots;
    size_t cap, used;
};

/* queue_sched_group - due recipients of one message for one destination. */
struct queue_sched_group {
    enum queue_work_kind kind;
    uint64_t seq;         /* acceptance order of the message (queue_msg.seq) */
    uint64_t first_ms;    /* earliest next attempt among the recipients */
    const char *queue_id; /* borrowed from the queue */
    char dest[QUEUE_DEST_MAX];
    uint32_t *idx;
    size_t n, cap;
};

/* queue_sched_ctx - state of one pick while walking the queue. */
struct queue_sched_ctx {
    uint64_t now_ms;
    const struct queue_sched_limits *lim;
    const struct queue_route *route;
    struct queue_sched_counts counts;
    struct queue_sched_group *groups;
    size_t n_groups, cap_groups;
    int err;
};

/* queue_sched_hash - FNV-1a of a destination key. */
static uint64_t queue_sched_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* queue_sched_counts_free - release the table and its keys. */
static void queue_sched_counts_free(struct queue_sched_counts *c)
{
    for (size_t i = 0; i < c->cap; i++)
        free(c->slots[i].key);
    free(c->slots);
    c->slots = NULL;
    c->cap = c->used = 0;
}

/* queue_sched_counts_slot - the slot of key, created (count 0) if missing; NULL on no memory. */
static struct queue_sched_count *queue_sched_counts_slot(struct queue_sched_counts *c,
                                                         const char *key)
{
    if (2 * (c->used + 1) > c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        struct queue_sched_count *s = calloc(cap, sizeof(*s));
        if (s == NULL)
            return NULL;
        for (size_t i = 0; i < c->cap; i++) {
            if (c->slots[i].key == NULL)
                continue;
            size_t j = queue_sched_hash(c->slots[i].key) & (cap - 1);
            while (s[j].key != NULL)
                j = (j + 1) & (cap - 1);
            s[j] = c->slots[i];
        }
        free(c->slots);
        c->slots = s;
        c->cap = cap;
    }
    size_t j = queue_sched_hash(key) & (c->cap - 1);
    while (c->slots[j].key != NULL) {
        if (strcmp(c->slots[j].key, key) == 0)
            return &c->slots[j];
        j = (j + 1) & (c->cap - 1);
    }
    size_t n = strlen(key);
    char *k = malloc(n + 1);
    if (k == NULL)
        return NULL;
    memcpy(k, key, n + 1);
    c->slots[j].key = k;
    c->slots[j].count = 0;
    c->slots[j].last_msg = 0;
    c->used++;
    return &c->slots[j];
}

/* queue_sched_dead_lease - a lease of this node taken under another boot id. */
static bool queue_sched_dead_lease(const struct queue_rcpt *r, const struct queue_sched_limits *lim)
{
    const char *boot = lim->self_boot_id ? lim->self_boot_id : "";
    return r->lease_node == lim->self_node &&
           strcmp(r->lease_boot_id ? r->lease_boot_id : "", boot) != 0;
}

/* queue_sched_count_cb - step 1 for one message. */
static int queue_sched_count_cb(void *arg, const struct queue_msg *m)
{
    struct queue_sched_ctx *x = arg;
    uint64_t seq = m->seq;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        if (r->state != QUEUE_RCPT_LEASED || r->lease_expires_ms <= x->now_ms ||
            queue_sched_dead_lease(r, x->lim))
            continue;
        struct queue_sched_count *c =
            queue_sched_counts_slot(&x->counts, r->lease_dest ? r->lease_dest : "");
        if (c == NULL) {
            x->err = HAMR_ENOMEM;
            return 1;
        }
        /* Distinct messages: count a message once per destination. */
        if (c->last_msg != seq) {
            c->last_msg = seq;
            c->count++;
        }
    }
    return 0;
}

/* queue_sched_group_add - put rcpt index i into the message's group for (kind, dest). */
static int queue_sched_group_add(struct queue_sched_ctx *x,
                                 size_t first_group,
                                 const struct queue_msg *m,
                                 enum queue_work_kind kind,
                                 const char *dest,
                                 uint32_t i)
{
    struct queue_sched_group *g = NULL;
    for (size_t k = first_group; k < x->n_groups; k++) {
        if (x->groups[k].kind == kind && strcmp(x->groups[k].dest, dest) == 0) {
            g = &x->groups[k];
            break;
        }
    }
    if (g == NULL) {
        if (x->n_groups == x->cap_groups) {
            size_t cap = x->cap_groups ? 2 * x->cap_groups : 16;
            struct queue_sched_group *ng = realloc(x->groups, cap * sizeof(*ng));
            if (ng == NULL)
                return HAMR_ENOMEM;
            x->groups = ng;
            x->cap_groups = cap;
        }
        g = &x->groups[x->n_groups++];
        memset(g, 0, sizeof(*g));
        g->kind = kind;
        g->seq = m->seq;
        g->first_ms = UINT64_MAX;
        g->queue_id = m->id;
        hamr_strlcpy(g->dest, dest, sizeof(g->dest));
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 4;
        uint32_t *ni = realloc(g->idx, cap * sizeof(*ni));
        if (ni == NULL)
            return HAMR_ENOMEM;
        g->idx = ni;
        g->cap = cap;
    }
    g->idx[g->n++] = i;
    if (m->rcpts[i].next_attempt_ms < g->first_ms)
        g->first_ms = m->rcpts[i].next_attempt_ms;
    return 0;
}

/* queue_sched_collect_cb - step 2 for one message. */
static int queue_sched_collect_cb(void *arg, const struct queue_msg *m)
{
    struct queue_sched_ctx *x = arg;
    if (m->held)
        return 0;
    size_t first_group = x->n_groups;
    bool expired = m->expires_at_ms != 0 && x->now_ms >= m->expires_at_ms;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        bool pending_due = r->state == QUEUE_RCPT_PENDING && r->next_attempt_ms <= x->now_ms;
        bool lapsed = r->state == QUEUE_RCPT_LEASED && r->lease_expires_ms <= x->now_ms;
        bool dead = r->state == QUEUE_RCPT_LEASED && !lapsed && queue_sched_dead_lease(r, x->lim);
        if (!pending_due && !lapsed && !dead)
            continue;
        /* Unheld recipients only (see the comment at the top). */
        bool unheld = pending_due || lapsed;
        int rv = 0;
        if (expired) {
            if (unheld)
                rv = queue_sched_group_add(x, first_group, m, QUEUE_WORK_EXPIRE, "", (uint32_t)i);
        } else {
            char dest[QUEUE_DEST_MAX] = "";
            if (x->route->dest(x->route->data, r->addr, dest, sizeof(dest)) != 0) {
                if (unheld)
                    rv = queue_sched_group_add(x, first_group, m, QUEUE_WORK_NOROUTE, "",
                                               (uint32_t)i);
            } else {
                dest[sizeof(dest) - 1] = '\0';
                rv =
                    queue_sched_group_add(x, first_group, m, QUEUE_WORK_DELIVER, dest, (uint32_t)i);
            }
        }
        if (rv != 0) {
            x->err = rv;
            return 1;
        }
    }
    return 0;
}

/* queue_sched_order - oldest due first, then acceptance order, then creation order. */
static int queue_sched_order(const void *a, const void *b)
{
    const struct queue_sched_group *const *pa = a, *const *pb = b;
    const struct queue_sched_group *x = *pa, *y = *pb;
    if (x->first_ms != y->first_ms)
        return x->first_ms < y->first_ms ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    return x < y ? -1 : (x > y ? 1 : 0);
}

/* queue_sched_ctx_free - release groups not handed out and the counts. */
static void queue_sched_ctx_free(struct queue_sched_ctx *x)
{
    for (size_t i = 0; i < x->n_groups; i++)
        free(x->groups[i].idx);
    free(x->groups);
    queue_sched_counts_free(&x->counts);
}

/* queue_sched_select - step 3: take groups in order within the limits. */
static int queue_sched_select(struct queue_sched_ctx *x, struct queue_work **out)
{
    size_t n = x->n_groups;
    struct queue_sched_group **order = calloc(n ? n : 1, sizeof(*order));
    struct queue_work *w = calloc(n ? n : 1, sizeof(*w));
    if (order == NULL || w == NULL) {
        free(order);
        free(w);
        return HAMR_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        order[i] = &x->groups[i];
    qsort(order, n, sizeof(*order), queue_sched_order);
    size_t max_items = x->lim->max_items ? x->lim->max_items : SIZE_MAX;
    if (max_items > INT_MAX)
        max_items = INT_MAX;
    size_t k = 0;
    int rv = 0;
    for (size_t i = 0; i < n && k < max_items; i++) {
        struct queue_sched_group *g = order[i];
        if (g->kind == QUEUE_WORK_DELIVER) {
            struct queue_sched_count *c = queue_sched_counts_slot(&x->counts, g->dest);
            if (c == NULL) {
                rv = HAMR_ENOMEM;
                break;
            }
            if (x->lim->max_per_dest != 0 && c->count >= x->lim->max_per_dest)
                continue;
            c->count++;
        }
        w[k].kind = g->kind;
        hamr_strlcpy(w[k].queue_id, g->queue_id, sizeof(w[k].queue_id));
        hamr_strlcpy(w[k].dest, g->dest, sizeof(w[k].dest));
        w[k].rcpt_indexes = g->idx;
        w[k].n_rcpts = g->n;
        g->idx = NULL;
        k++;
    }
    free(order);
    if (rv != 0) {
        queue_work_free(w, k);
        return rv;
    }
    *out = w;
    return (int)k;
}

/* queue_sched_pick - count, collect, then select (see the top of the file). */
int queue_sched_pick(const struct queue *q,
                     uint64_t now_ms,
                     const struct queue_sched_limits *lim,
                     const struct queue_route *route,
                     struct queue_work **out)
{
    if (q == NULL || lim == NULL || route == NULL || route->dest == NULL || out == NULL)
        return HAMR_EINVAL;
    *out = NULL;
    struct queue_sched_ctx x = {.now_ms = now_ms, .lim = lim, .route = route};
    queue_foreach_leased(q, queue_sched_count_cb, &x);
    if (x.err == 0)
        queue_foreach_due(q, now_ms, queue_sched_collect_cb, &x);
    int rv = x.err;
    if (rv == 0)
        rv = queue_sched_select(&x, out);
    queue_sched_ctx_free(&x);
    return rv;
}

/* queue_work_free - free the index arrays and the array. */
struct queue_work *queue_work_free(struct queue_work *w, size_t n)
{
    for (size_t i = 0; w != NULL && i < n; i++)
        free(w[i].rcpt_indexes);
    free(w);
    return NULL;
}

/* queue_sched_backoff - min_ms << attempts, capped at max_ms without overflow. */
uint64_t queue_sched_backoff(uint32_t attempts, uint64_t min_ms, uint64_t max_ms)
{
    if (min_ms >= max_ms)
        return max_ms;
    if (min_ms == 0)
        return 0;
    uint64_t d = min_ms;
    /* Stop doubling before it would pass max_ms (or overflow). */
    for (uint32_t i = 0; i < attempts; i++) {
        if (d > max_ms / 2)
            return max_ms;
        d *= 2;
    }
    return d;
}
