/*
 * queue_sched.c - the leader's delivery scheduling policy over the queue.
 *
 * queue_sched_pick reads the queue at a given time and returns work items;
 * it changes nothing, so it may run as often as the leader likes. From the
 * domain index (queue_index.c) it visits the messages with a lease, the
 * expired ones, and per destination with free slots only as many due
 * messages as it can hand out there (see "Step 2 from the domain index"),
 * so neither a deferred backlog nor a due one costs more than what is
 * picked. Without the index (it could not grow, or queue_set_sched_index
 * turned it off) it walks every due message (queue_foreach_due). Steps:
 *   1. count active leases per destination (distinct messages holding an
 *      unexpired lease there; leases of this node under another boot id
 *      died with their process and are not counted);
 *   2. collect the due recipients of messages that are not held and group
 *      them per (message, kind, destination): EXPIRE for a message past its
 *      lifetime, NOROUTE when the route has none, otherwise DELIVER;
 *   3. order the groups by their earliest next attempt, then acceptance
 *      order, and take them while max_items and max_per_dest allow.
 * Step 3 can take at most (free slots) groups of a destination and at most
 * max_items in all, so step 2 keeps only the best that many per
 * destination (and max_items of EXPIRE/NOROUTE) in a bounded heap and drops
 * the rest as it goes: the same answer as sorting every due group, without
 * the sort (tests/unit/queue checks it against that plain policy). Routes
 * are asked once per domain, and a destination already at max_per_dest
 * gets no groups at all.
 *
 * EXPIRE and NOROUTE items are turned into an Outcome with lease_id 0, which
 * applies only to recipients nobody holds (PENDING, or LEASED under a lease
 * that has lapsed). A recipient still held under a live lease of a dead
 * boot of this node is therefore only re-leased for delivery, never
 * expired or bounced here: once its lease lapses it is.
 *
 * A message whose body this node lacks (body_missing: a snapshot installed,
 * or a stored copy found corrupt) gets no DELIVER work until the body has
 * been fetched: a lease now would only expire unused. The domain index
 * keeps it out of its domains' heaps meanwhile (queue_index.c), so neither
 * does it cost a pick anything nor does it hold back the newer messages of
 * its destination; it still expires and still has no route.
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
#include "util/hash.h"
#include "queue/internal.h"
#include "queue/queue_sched.h"

/*
 * queue_sched_bucket - the best groups kept so far for one destination (or
 * for the final kinds), at most limit of them, as a heap with the worst on
 * top: step 3 can only take the first free-slot-many groups of a
 * destination in order, so the rest are dropped as soon as they lose.
 */
struct queue_sched_bucket {
    size_t *heap; /* group numbers */
    size_t n, cap;
    size_t limit; /* set when the bucket is first used (queue_sched_bucket_of) */
    bool limit_set;
};

/*
 * queue_sched_count - one slot of an open-addressing table keyed by string.
 * Two tables use it: counts (key: destination; leases there, and the bucket
 * of its groups) and routes (key: recipient domain; that domain's
 * destination, looked up once a pick).
 */
struct queue_sched_count {
    char *key; /* NULL: empty slot */
    unsigned count;
    uint64_t last_msg; /* seq of the last message counted (seq starts at 1) */
    bool routed;       /* routes: dest/no_route are known */
    bool no_route;
    char *dest;
    struct queue_sched_bucket keep; /* counts */
};

struct queue_sched_counts {
    struct queue_sched_count *slots;
    size_t cap, used;
};

/* queue_sched_group - due recipients of one message for one destination. */
struct queue_sched_group {
    enum queue_work_kind kind;
    uint64_t seq;         /* acceptance order of the message (its item's seq) */
    uint64_t first_ms;    /* earliest next attempt among the recipients */
    uint64_t made;        /* its first recipient's index: among the groups of one
                             message, the order a walk over its recipients makes them */
    const char *queue_id; /* borrowed from the queue */
    const char *dest;     /* borrowed from the routes table ("" for the final kinds) */
    uint32_t *idx;
    size_t n, cap;
    size_t next_free; /* free list, while unused */
};

/* queue_sched_ctx - state of one pick while walking the queue. */
struct queue_sched_ctx {
    uint64_t now_ms;
    const struct queue_sched_limits *lim;
    const struct queue_route *route;
    struct queue_sched_counts counts;
    struct queue_sched_counts routes;
    struct queue_sched_group *groups; /* kept groups and free slots */
    size_t n_groups, cap_groups;
    size_t free_head; /* first free group, or SIZE_MAX */
    size_t *cur;      /* groups of the message being collected */
    size_t n_cur, cap_cur;
    struct queue_sched_bucket finals; /* EXPIRE and NOROUTE groups */
    size_t max_items;                 /* lim->max_items, SIZE_MAX for none */
    const struct queue_dnode **front; /* queue_sched_walk's frontier, a min-heap */
    size_t n_front, cap_front;
    int err;
};

/* queue_sched_counts_free - release the table and its keys. */
static void queue_sched_counts_free(struct queue_sched_counts *c)
{
    for (size_t i = 0; i < c->cap; i++) {
        free(c->slots[i].key);
        free(c->slots[i].dest);
        free(c->slots[i].keep.heap);
    }
    free(c->slots);
    c->slots = NULL;
    c->cap = c->used = 0;
}

/* queue_sched_counts_find - the slot of key, or NULL if there is none. */
static struct queue_sched_count *queue_sched_counts_find(const struct queue_sched_counts *c,
                                                         const char *key)
{
    if (c->cap == 0)
        return NULL;
    for (size_t j = hash_fnv1a64_str(key) & (c->cap - 1); c->slots[j].key != NULL;
         j = (j + 1) & (c->cap - 1))
        if (strcmp(c->slots[j].key, key) == 0)
            return &c->slots[j];
    return NULL;
}

/* queue_sched_counts_slot - the slot of key, created (count 0) if missing; NULL on no memory. */
static struct queue_sched_count *queue_sched_counts_slot(struct queue_sched_counts *c,
                                                         const char *key)
{
    struct queue_sched_count *found = queue_sched_counts_find(c, key);
    if (found != NULL)
        return found;
    if (2 * (c->used + 1) > c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        struct queue_sched_count *s = calloc(cap, sizeof(*s));
        if (s == NULL)
            return NULL;
        for (size_t i = 0; i < c->cap; i++) {
            if (c->slots[i].key == NULL)
                continue;
            size_t j = hash_fnv1a64_str(c->slots[i].key) & (cap - 1);
            while (s[j].key != NULL)
                j = (j + 1) & (cap - 1);
            s[j] = c->slots[i];
        }
        free(c->slots);
        c->slots = s;
        c->cap = cap;
    }
    size_t j = hash_fnv1a64_str(key) & (c->cap - 1);
    while (c->slots[j].key != NULL)
        j = (j + 1) & (c->cap - 1);
    size_t n = strlen(key);
    char *k = malloc(n + 1);
    if (k == NULL)
        return NULL;
    memcpy(k, key, n + 1);
    memset(&c->slots[j], 0, sizeof(c->slots[j]));
    c->slots[j].key = k;
    c->used++;
    return &c->slots[j];
}

/*
 * queue_sched_room - make *arr (elements of size elem, *cap of them) hold at
 * least n + 1: doubles, starting at first. HAMR_ENOMEM leaves it as it was.
 */
static int queue_sched_room(void *arr, size_t *cap, size_t n, size_t elem, size_t first)
{
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? 2 * *cap : first;
    void *p = realloc(*(void **)arr, ncap * elem);
    if (p == NULL)
        return HAMR_ENOMEM;
    *(void **)arr = p;
    *cap = ncap;
    return 0;
}

/* queue_sched_dead_lease - a lease of this node taken under another boot id. */
static bool queue_sched_dead_lease(const struct queue_rcpt *r, const struct queue_sched_limits *lim)
{
    const char *boot = lim->self_boot_id ? lim->self_boot_id : "";
    const struct queue_lease *l = queue_rcpt_lease(r);
    return l->node == lim->self_node && strcmp(l->boot_id ? l->boot_id : "", boot) != 0;
}

/* queue_sched_count_cb - step 1 for one message. */
static int queue_sched_count_cb(void *arg, const struct queue_msg *m)
{
    struct queue_sched_ctx *x = arg;
    uint64_t seq = queue_msg_item(m)->seq;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        const struct queue_lease *l = queue_rcpt_lease(r);
        if (r->state != QUEUE_RCPT_LEASED || l->expires_ms <= x->now_ms ||
            queue_sched_dead_lease(r, x->lim))
            continue;
        struct queue_sched_count *c = queue_sched_counts_slot(&x->counts, l->dest ? l->dest : "");
        if (c == NULL) {
            x->err = HAMR_ENOMEM;
            return 1;
        }
        /* Distinct messages: count a message once per destination. */
        if (c->last_msg != seq) {
            c->last_msg = seq;
            c->count++;
            if (x->route->leased != NULL)
                x->route->leased(x->route->data, c->key, l->node);
        }
    }
    return 0;
}

/* queue_sched_before - group a is taken before group b: oldest due, acceptance, creation. */
static bool queue_sched_before(const struct queue_sched_group *a, const struct queue_sched_group *b)
{
    if (a->first_ms != b->first_ms)
        return a->first_ms < b->first_ms;
    if (a->seq != b->seq)
        return a->seq < b->seq;
    return a->made < b->made;
}

/* queue_sched_group_drop - free group gi's recipients and its slot. */
static void queue_sched_group_drop(struct queue_sched_ctx *x, size_t gi)
{
    struct queue_sched_group *g = &x->groups[gi];
    free(g->idx);
    g->idx = NULL;
    g->n = g->cap = 0;
    g->next_free = x->free_head;
    x->free_head = gi;
}

/* queue_sched_group_new - a zeroed group (a free slot or a new one); SIZE_MAX on no memory. */
static size_t queue_sched_group_new(struct queue_sched_ctx *x)
{
    size_t gi = x->free_head;
    if (gi != SIZE_MAX) {
        x->free_head = x->groups[gi].next_free;
    } else {
        if (queue_sched_room(&x->groups, &x->cap_groups, x->n_groups, sizeof(*x->groups), 16) != 0)
            return SIZE_MAX;
        gi = x->n_groups++;
    }
    memset(&x->groups[gi], 0, sizeof(x->groups[gi]));
    return gi;
}

/* queue_sched_group_add - put rcpt index i into the message's group for (kind, dest). */
static int queue_sched_group_add(struct queue_sched_ctx *x,
                                 const struct queue_msg *m,
                                 enum queue_work_kind kind,
                                 const char *dest,
                                 uint32_t i)
{
    struct queue_sched_group *g = NULL;
    for (size_t k = 0; k < x->n_cur; k++) {
        struct queue_sched_group *c = &x->groups[x->cur[k]];
        if (c->kind == kind && strcmp(c->dest, dest) == 0) {
            g = c;
            break;
        }
    }
    if (g == NULL) {
        if (queue_sched_room(&x->cur, &x->cap_cur, x->n_cur, sizeof(*x->cur), 8) != 0)
            return HAMR_ENOMEM;
        size_t gi = queue_sched_group_new(x);
        if (gi == SIZE_MAX)
            return HAMR_ENOMEM;
        x->cur[x->n_cur++] = gi;
        g = &x->groups[gi];
        g->kind = kind;
        g->made = i;
        g->seq = queue_msg_item(m)->seq;
        g->first_ms = UINT64_MAX;
        g->queue_id = m->id;
        g->dest = dest;
    }
    if (queue_sched_room(&g->idx, &g->cap, g->n, sizeof(*g->idx), 4) != 0)
        return HAMR_ENOMEM;
    g->idx[g->n++] = i;
    if (m->rcpts[i].next_attempt_ms < g->first_ms)
        g->first_ms = m->rcpts[i].next_attempt_ms;
    return 0;
}

/* queue_sched_heap_fix - restore the worst-on-top order of b after position i changed. */
static void queue_sched_heap_fix(struct queue_sched_ctx *x, struct queue_sched_bucket *b, size_t i)
{
    /* Up: while worse than the parent. */
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!queue_sched_before(&x->groups[b->heap[p]], &x->groups[b->heap[i]]))
            break;
        size_t t = b->heap[p];
        b->heap[p] = b->heap[i];
        b->heap[i] = t;
        i = p;
    }
    /* Down: while a child is worse. */
    for (;;) {
        size_t c = 2 * i + 1, w = i;
        if (c < b->n && queue_sched_before(&x->groups[b->heap[w]], &x->groups[b->heap[c]]))
            w = c;
        if (c + 1 < b->n && queue_sched_before(&x->groups[b->heap[w]], &x->groups[b->heap[c + 1]]))
            w = c + 1;
        if (w == i)
            break;
        size_t t = b->heap[w];
        b->heap[w] = b->heap[i];
        b->heap[i] = t;
        i = w;
    }
}

/*
 * queue_sched_keep - a finished group competes for a place in its bucket:
 * it is kept while the bucket has room, else it replaces the worst kept
 * group if it comes before it, else it is dropped.
 */
/* A destination the caller suspended (dest_max 0): no slot at all. */
#define QUEUE_SCHED_SUSPENDED UINT_MAX

/*
 * queue_sched_dest_max - dest's limit on leased messages: max_per_dest (0:
 * none), lowered by the route's dest_max; QUEUE_SCHED_SUSPENDED for 0.
 */
static unsigned queue_sched_dest_max(const struct queue_sched_ctx *x, const char *dest)
{
    unsigned per = x->lim->max_per_dest;
    int cap = x->route->dest_max != NULL ? x->route->dest_max(x->route->data, dest) : -1;
    if (cap == 0)
        return QUEUE_SCHED_SUSPENDED;
    if (cap > 0 && (per == 0 || (unsigned)cap < per))
        per = (unsigned)cap;
    return per;
}

/*
 * queue_sched_bucket_of - the bucket of dest's DELIVER groups, with its limit
 * set on first use; NULL on no memory. The pointer lasts until the counts
 * table grows (a destination not seen before).
 */
static struct queue_sched_bucket *queue_sched_bucket_of(struct queue_sched_ctx *x, const char *dest)
{
    struct queue_sched_count *c = queue_sched_counts_slot(&x->counts, dest);
    if (c == NULL)
        return NULL;
    struct queue_sched_bucket *b = &c->keep;
    if (!b->limit_set) {
        /* The destination's free slots, and never more than max_items. */
        unsigned per = queue_sched_dest_max(x, dest);
        size_t free_slots = per == 0 ? SIZE_MAX : (c->count < per ? per - c->count : 0);
        if (per == QUEUE_SCHED_SUSPENDED)
            free_slots = 0;
        b->limit = free_slots < x->max_items ? free_slots : x->max_items;
        b->limit_set = true;
    }
    return b;
}

static int queue_sched_keep(struct queue_sched_ctx *x, size_t gi)
{
    struct queue_sched_group *g = &x->groups[gi];
    struct queue_sched_bucket *b = &x->finals; /* limit set by queue_sched_pick */
    if (g->kind == QUEUE_WORK_DELIVER && (b = queue_sched_bucket_of(x, g->dest)) == NULL)
        return HAMR_ENOMEM;
    if (b->n < b->limit) {
        if (queue_sched_room(&b->heap, &b->cap, b->n, sizeof(*b->heap), 8) != 0)
            return HAMR_ENOMEM;
        b->heap[b->n++] = gi;
        queue_sched_heap_fix(x, b, b->n - 1);
        return 0;
    }
    if (b->n > 0 && queue_sched_before(g, &x->groups[b->heap[0]])) {
        queue_sched_group_drop(x, b->heap[0]);
        b->heap[0] = gi;
        queue_sched_heap_fix(x, b, 0);
        return 0;
    }
    queue_sched_group_drop(x, gi);
    return 0;
}

/*
 * queue_sched_route - the destination of rcpt (*dest, borrowed until the
 * pick ends) or NULL for no route; asked of route->dest once per domain and
 * pick (the route depends on the domain only, queue_sched.h). -1: no memory.
 */
static int queue_sched_route(struct queue_sched_ctx *x, const char *rcpt, const char **dest)
{
    const char *at = strrchr(rcpt, '@');
    struct queue_sched_count *c = queue_sched_counts_slot(&x->routes, at ? at + 1 : rcpt);
    if (c == NULL)
        return -1;
    if (!c->routed) {
        char d[QUEUE_DEST_MAX] = "";
        if (x->route->dest(x->route->data, rcpt, d, sizeof(d)) != 0) {
            c->no_route = true;
        } else {
            d[sizeof(d) - 1] = '\0';
            c->dest = strdup(d);
            if (c->dest == NULL)
                return -1;
        }
        c->routed = true;
    }
    *dest = c->no_route ? NULL : c->dest;
    return 0;
}

/*
 * queue_sched_full - dest already has as many live leases as it may
 * (max_per_dest, or the route's dest_max), or is suspended: it gets nothing
 * this pick.
 */
static bool queue_sched_full(struct queue_sched_ctx *x, const char *dest)
{
    const struct queue_sched_count *c = queue_sched_counts_find(&x->counts, dest);
    if (c != NULL && c->keep.limit_set)
        return c->keep.limit == 0;
    unsigned per = queue_sched_dest_max(x, dest);
    return per == QUEUE_SCHED_SUSPENDED || (per != 0 && c != NULL && c->count >= per);
}

/*
 * queue_sched_keep_cur - the message's groups are complete (rv 0): each
 * competes for its place; or they are dropped (rv an error, kept in x->err).
 * Returns 1 to stop a walk on error, else 0.
 */
static int queue_sched_keep_cur(struct queue_sched_ctx *x, int rv)
{
    for (size_t k = 0; k < x->n_cur; k++) {
        if (rv == 0)
            rv = queue_sched_keep(x, x->cur[k]);
        else
            queue_sched_group_drop(x, x->cur[k]);
    }
    x->n_cur = 0;
    if (rv != 0) {
        x->err = rv;
        return 1;
    }
    return 0;
}

/* queue_sched_collect_cb - step 2 for one message. */
static int queue_sched_collect_cb(void *arg, const struct queue_msg *m)
{
    struct queue_sched_ctx *x = arg;
    if (m->held)
        return 0;
    x->n_cur = 0;
    bool expired = m->expires_at_ms != 0 && x->now_ms >= m->expires_at_ms;
    int rv = 0;
    for (size_t i = 0; rv == 0 && i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        bool pending_due = r->state == QUEUE_RCPT_PENDING && r->next_attempt_ms <= x->now_ms;
        bool lapsed = r->state == QUEUE_RCPT_LEASED && queue_rcpt_lease(r)->expires_ms <= x->now_ms;
        bool dead = r->state == QUEUE_RCPT_LEASED && !lapsed && queue_sched_dead_lease(r, x->lim);
        if (!pending_due && !lapsed && !dead)
            continue;
        /* Unheld recipients only (see the comment at the top). */
        bool unheld = pending_due || lapsed;
        if (expired) {
            if (unheld)
                rv = queue_sched_group_add(x, m, QUEUE_WORK_EXPIRE, "", (uint32_t)i);
            continue;
        }
        const char *dest = NULL;
        if (queue_sched_route(x, r->addr, &dest) != 0) {
            rv = HAMR_ENOMEM;
        } else if (dest == NULL) {
            if (unheld)
                rv = queue_sched_group_add(x, m, QUEUE_WORK_NOROUTE, "", (uint32_t)i);
        } else if (!m->body_missing && !queue_sched_full(x, dest)) {
            /* A full destination gets nothing: no group to build for each
             * of its waiting messages. Nor does a message whose body this
             * node lacks: it is being fetched (see the top). */
            rv = queue_sched_group_add(x, m, QUEUE_WORK_DELIVER, dest, (uint32_t)i);
        }
    }
    return queue_sched_keep_cur(x, rv);
}

/* queue_sched_order - qsort_r on group numbers (queue_sched_before); arg is the group array. */
static int queue_sched_order(const void *a, const void *b, void *arg)
{
    const struct queue_sched_group *groups = arg;
    const struct queue_sched_group *x = &groups[*(const size_t *)a];
    const struct queue_sched_group *y = &groups[*(const size_t *)b];
    return queue_sched_before(x, y) ? -1 : (queue_sched_before(y, x) ? 1 : 0);
}

/* queue_sched_ctx_free - release groups not handed out, the tables and the buckets. */
static void queue_sched_ctx_free(struct queue_sched_ctx *x)
{
    for (size_t i = 0; i < x->n_groups; i++)
        free(x->groups[i].idx);
    free(x->groups);
    free(x->cur);
    free(x->finals.heap);
    free(x->front);
    queue_sched_counts_free(&x->counts);
    queue_sched_counts_free(&x->routes);
}

/* queue_sched_live - append the group numbers of one bucket to order. */
static size_t queue_sched_live(const struct queue_sched_bucket *b, size_t *order, size_t n)
{
    for (size_t i = 0; i < b->n; i++)
        order[n++] = b->heap[i];
    return n;
}

/* queue_sched_select - step 3: take the kept groups in order within the limits. */
static int queue_sched_select(struct queue_sched_ctx *x, struct queue_work **out)
{
    size_t n = x->finals.n;
    for (size_t i = 0; i < x->counts.cap; i++)
        n += x->counts.slots[i].keep.n;
    size_t *order = calloc(n ? n : 1, sizeof(*order));
    struct queue_work *w = calloc(n ? n : 1, sizeof(*w));
    if (order == NULL || w == NULL) {
        free(order);
        free(w);
        return HAMR_ENOMEM;
    }
    size_t m = queue_sched_live(&x->finals, order, 0);
    for (size_t i = 0; i < x->counts.cap; i++)
        m = queue_sched_live(&x->counts.slots[i].keep, order, m);
    qsort_r(order, n, sizeof(*order), queue_sched_order, x->groups);
    size_t max_items = x->max_items > INT_MAX ? INT_MAX : x->max_items;
    size_t k = 0;
    int rv = 0;
    for (size_t i = 0; i < n && k < max_items; i++) {
        struct queue_sched_group *g = &x->groups[order[i]];
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

/* ------------------------------------------------------------------------
 * Step 2 from the domain index (queue_index.c)
 *
 * The due messages fall in four parts, each collected its own way:
 *   - messages with a LEASED recipient (few: leases are bounded by
 *     max_per_dest): walked in full with queue_sched_collect_cb;
 *   - the others past their lifetime: from the expiry heap, the same way;
 *   - the others with a recipient of an unroutable domain: NOROUTE groups,
 *     walked like a destination whose bucket is the finals;
 *   - the rest, per destination: the heaps of its domains merged in
 *     (earliest next attempt, seq) order, which is the order of the groups
 *     they give (a group's first_ms is the smallest key its message has in
 *     those heaps), so the walk stops once the destination's bucket is full
 *     and the next message cannot come before the worst group in it. A
 *     destination at max_per_dest is not walked at all.
 * A pick so costs the leased messages, the expired ones, the domains, and
 * per destination what it picks (with a log factor), not the due backlog.
 * ------------------------------------------------------------------------ */

/* queue_sched_front_push - add dn to the frontier; HAMR_ENOMEM. */
static int queue_sched_front_push(struct queue_sched_ctx *x, const struct queue_dnode *dn)
{
    if (queue_sched_room(&x->front, &x->cap_front, x->n_front, sizeof(*x->front), 16) != 0)
        return HAMR_ENOMEM;
    size_t i = x->n_front++;
    for (; i > 0 && queue_dheap_less(dn, x->front[(i - 1) / 2]); i = (i - 1) / 2)
        x->front[i] = x->front[(i - 1) / 2];
    x->front[i] = dn;
    return 0;
}

/* queue_sched_front_pop - the first dnode of the frontier (which is not empty). */
static const struct queue_dnode *queue_sched_front_pop(struct queue_sched_ctx *x)
{
    const struct queue_dnode *top = x->front[0], *last = x->front[--x->n_front];
    size_t i = 0;
    for (size_t c; (c = 2 * i + 1) < x->n_front; i = c) {
        if (c + 1 < x->n_front && queue_dheap_less(x->front[c + 1], x->front[c]))
            c++;
        if (!queue_dheap_less(x->front[c], last))
            break;
        x->front[i] = x->front[c];
    }
    if (x->n_front > 0)
        x->front[i] = last;
    return top;
}

/* queue_sched_same_dest - two routes (NULL: none) lead to the same place. */
static bool queue_sched_same_dest(const char *a, const char *b)
{
    return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/*
 * queue_sched_walk_item - the group of dn's message for dest (NULL: its
 * unroutable recipients), made once: at the dnode of the message's domains
 * routed there that comes first in the merged walk. Messages collected in
 * another part (leased, expired) are skipped.
 */
static int queue_sched_walk_item(struct queue_sched_ctx *x,
                                 const struct queue_dnode *dn,
                                 const char *dest)
{
    const struct queue_item *it = queue_dnode_item(dn);
    const struct queue_msg *m = &it->msg;
    if (queue_item_leased(it) || m->held ||
        (m->expires_at_ms != 0 && x->now_ms >= m->expires_at_ms))
        return 0;
    const struct queue_dnode *first = NULL;
    const char *d = NULL;
    for (size_t k = 0; k < it->n_dnodes; k++) {
        const struct queue_dnode *o = queue_item_dnode(it, k);
        if (o->key > x->now_ms || (first != NULL && !queue_dheap_less(o, first)))
            continue;
        if (queue_sched_route(x, m->rcpts[o->first_rcpt].addr, &d) != 0)
            return queue_sched_keep_cur(x, HAMR_ENOMEM);
        if (queue_sched_same_dest(d, dest))
            first = o;
    }
    if (first != dn)
        return 0;
    x->n_cur = 0;
    int rv = 0;
    for (size_t i = 0; rv == 0 && i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        if (r->state != QUEUE_RCPT_PENDING || r->next_attempt_ms > x->now_ms)
            continue;
        if (queue_sched_route(x, r->addr, &d) != 0)
            rv = HAMR_ENOMEM;
        else if (queue_sched_same_dest(d, dest))
            rv = queue_sched_group_add(x, m, dest ? QUEUE_WORK_DELIVER : QUEUE_WORK_NOROUTE,
                                       dest ? dest : "", (uint32_t)i);
    }
    return queue_sched_keep_cur(x, rv);
}

/*
 * queue_sched_walk - collect dest's groups (NULL: NOROUTE) from the heaps
 * of its n domains, merged, until its bucket is full and no later message
 * can beat the worst kept group.
 */
static int queue_sched_walk(struct queue_sched_ctx *x,
                            const char *dest,
                            struct queue_domain *const *doms,
                            size_t n)
{
    struct queue_sched_bucket *b = &x->finals;
    if (dest != NULL && (b = queue_sched_bucket_of(x, dest)) == NULL)
        return HAMR_ENOMEM;
    if (b->limit == 0) /* at max_per_dest: its messages are not looked at */
        return 0;
    x->n_front = 0;
    for (size_t k = 0; k < n; k++)
        if (queue_sched_front_push(x, doms[k]->heap.a[0]) != 0)
            return HAMR_ENOMEM;
    while (x->n_front > 0) {
        const struct queue_dnode *dn = queue_sched_front_pop(x);
        if (b->n >= b->limit) {
            const struct queue_sched_group *w = &x->groups[b->heap[0]];
            if (dn->key > w->first_ms ||
                (dn->key == w->first_ms && queue_dnode_item(dn)->seq > w->seq))
                break;
        }
        const struct queue_dheap *h = &dn->dom->heap;
        for (size_t c = 2 * dn->pos + 1; c <= 2 * dn->pos + 2 && c < h->len; c++)
            if (h->a[c]->key <= x->now_ms && queue_sched_front_push(x, h->a[c]) != 0)
                return HAMR_ENOMEM;
        if (queue_sched_walk_item(x, dn, dest) != 0)
            return x->err;
    }
    return 0;
}

/* queue_sched_expired - the expiry heap below position i, pruned where the key is past now. */
static int queue_sched_expired(struct queue_sched_ctx *x, const struct queue *q, size_t i)
{
    if (i >= q->expiry.len || queue_item_exp_key(q->expiry.a[i]) > x->now_ms)
        return 0;
    const struct queue_item *it = q->expiry.a[i];
    if (!queue_item_leased(it) && queue_sched_collect_cb(x, &it->msg) != 0)
        return 1;
    if (queue_sched_expired(x, q, 2 * i + 1) != 0)
        return 1;
    return queue_sched_expired(x, q, 2 * i + 2);
}

/* queue_sched_dom_route - a due domain and where it goes (NULL: nowhere), to sort by. */
struct queue_sched_dom_route {
    const char *dest;
    struct queue_domain *dom;
};

/* queue_sched_dom_order - qsort: by destination, unroutable first. */
static int queue_sched_dom_order(const void *a, const void *b)
{
    const char *x = ((const struct queue_sched_dom_route *)a)->dest;
    const char *y = ((const struct queue_sched_dom_route *)b)->dest;
    if (x == NULL || y == NULL)
        return (x != NULL) - (y != NULL);
    return strcmp(x, y);
}

/* queue_sched_by_domain - step 2 from the indexes (see the banner above). */
static void queue_sched_by_domain(struct queue_sched_ctx *x, const struct queue *q)
{
    queue_foreach_leased(q, queue_sched_collect_cb, x);
    if (x->err != 0 || queue_sched_expired(x, q, 0) != 0)
        return;
    struct queue_sched_dom_route *due = calloc(q->dom_count ? q->dom_count : 1, sizeof(*due));
    if (due == NULL) {
        x->err = HAMR_ENOMEM;
        return;
    }
    size_t n = 0;
    for (struct queue_domain *d = q->domains; d != NULL; d = d->next) {
        const struct queue_dnode *top = d->heap.a[0];
        if (top->key > x->now_ms)
            continue;
        if (queue_sched_route(x, queue_dnode_item(top)->msg.rcpts[top->first_rcpt].addr,
                              &due[n].dest) != 0) {
            x->err = HAMR_ENOMEM;
            break;
        }
        due[n++].dom = d;
    }
    qsort(due, n, sizeof(*due), queue_sched_dom_order);
    struct queue_domain **doms = calloc(n ? n : 1, sizeof(*doms));
    if (doms == NULL && x->err == 0)
        x->err = HAMR_ENOMEM;
    for (size_t i = 0, j; x->err == 0 && i < n; i = j) {
        for (j = i; j < n && queue_sched_same_dest(due[j].dest, due[i].dest); j++)
            doms[j - i] = due[j].dom;
        int rv = queue_sched_walk(x, due[i].dest, doms, j - i);
        if (rv != 0)
            x->err = rv;
    }
    free(doms);
    free(due);
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
    struct queue_sched_ctx x = {.now_ms = now_ms,
                                .lim = lim,
                                .route = route,
                                .free_head = SIZE_MAX,
                                .max_items = lim->max_items ? lim->max_items : SIZE_MAX};
    x.finals.limit = x.max_items; /* only max_items bounds EXPIRE and NOROUTE */
    x.finals.limit_set = true;
    queue_foreach_leased(q, queue_sched_count_cb, &x);
    if (x.err == 0 && (q->index_off || q->dom_broken))
        queue_foreach_due(q, now_ms, queue_sched_collect_cb, &x);
    else if (x.err == 0)
        queue_sched_by_domain(&x, q);
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
