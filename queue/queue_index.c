/*
 * queue_index.c - the scheduler's indexes over the queue, derived from its
 * state, and the counts: the set of messages with a LEASED recipient, the
 * domain index and the expiry heap. queue_touch brings them up to date
 * after every change; queue_sched_pick reads them. None is replicated:
 * snapshots and the digest never see them, and an index that cannot grow
 * is given up (every message is walked instead), which costs time, never
 * correctness.
 *
 * The domain index lets a pick cost what it picks: for each recipient
 * domain, a heap of its messages on the earliest next attempt of their
 * PENDING recipients there, so queue_sched_pick skips a destination at its
 * limit without looking at its messages and stops walking one once it has
 * its free slots' worth; and a heap of messages on expires_at_ms, so
 * expiries are found without walking every due message. It is keyed by
 * domain, which a message's recipients never change, not by destination,
 * which depends on the configuration (the scheduler maps domains to
 * destinations at pick time, once per domain). Like the leased set, it is
 * given up when it cannot grow.
 */
#include <stdlib.h>
#include <string.h>

#include "util/hash.h"
#include "queue/internal.h"
#include "queue/queue.h"

/*
 * queue_wake - the earliest time at which queue_sched_pick can find work in
 * m: UINT64_MAX for a held message or one with every recipient final;
 * otherwise the smallest of each PENDING recipient's next_attempt_ms, each
 * LEASED recipient's lease_expires_ms (a lapsed lease is due again) and the
 * message's expires_at_ms (if set). *leased: some recipient is LEASED (held
 * or not).
 */
uint64_t queue_wake(const struct queue_msg *m, bool *leased)
{
    uint64_t wake = UINT64_MAX;
    bool open = false;
    *leased = false;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        uint64_t t;
        if (r->state == QUEUE_RCPT_PENDING) {
            t = r->next_attempt_ms;
        } else if (r->state == QUEUE_RCPT_LEASED) {
            t = queue_rcpt_lease(r)->expires_ms;
            *leased = true;
        } else {
            continue;
        }
        open = true;
        if (t < wake)
            wake = t;
    }
    if (open && m->expires_at_ms != 0 && m->expires_at_ms < wake)
        wake = m->expires_at_ms;
    return m->held ? UINT64_MAX : wake;
}

/* queue_leased_set - put it in or take it out of the set of leased messages. */
void queue_leased_set(struct queue *q, struct queue_item *it, bool leased)
{
    if (leased == queue_item_leased(it) || (leased && q->leased_broken))
        return;
    if (!leased) {
        struct queue_item *last = q->leased[--q->leased_len];
        q->leased[it->leased_pos] = last;
        last->leased_pos = it->leased_pos;
        it->leased_pos = QUEUE_NOT_IN_HEAP;
        return;
    }
    if (q->leased_len == q->leased_cap) {
        size_t cap = q->leased_cap ? 2 * q->leased_cap : QUEUE_HASH_MIN;
        struct queue_item **a = realloc(q->leased, cap * sizeof(*a));
        if (a == NULL) {
            /* Correctness does not depend on the set: walk everything from now on. */
            for (size_t i = 0; i < q->leased_len; i++)
                q->leased[i]->leased_pos = QUEUE_NOT_IN_HEAP;
            q->leased_len = 0;
            q->leased_broken = true;
            return;
        }
        q->leased = a;
        q->leased_cap = cap;
    }
    it->leased_pos = (uint32_t)q->leased_len;
    q->leased[q->leased_len++] = it;
}

/* queue_tally_of - what the item adds to q->counts as it is now. */
static struct queue_tally queue_tally_of(const struct queue_item *it)
{
    const struct queue_msg *m = &it->msg;
    struct queue_tally t = {.held = m->held, .missing = m->body_missing};
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        if (r->state == QUEUE_RCPT_LEASED)
            t.active++;
        else if (r->state == QUEUE_RCPT_PENDING && r->attempts > 0)
            t.deferred++;
        else if (r->state == QUEUE_RCPT_PENDING)
            t.fresh++;
    }
    return t;
}

/*
 * queue_tally_counts - t as a share of q->counts: the message at the stage
 * of its most advanced live recipient (held, then active, then deferred,
 * then pending; with no live recipient, pending), each live recipient at
 * its own (every one held when the message is).
 */
static struct queue_counts queue_tally_counts(const struct queue_tally *t, size_t bytes)
{
    struct queue_counts c = {.held = t->held,
                             .rcpts_pending = (size_t)t->fresh + t->deferred,
                             .rcpts_leased = t->active,
                             .bytes = bytes,
                             .missing = t->missing};
    size_t live = (size_t)t->fresh + t->deferred + t->active;
    if (t->held) {
        c.stage_rcpts[QUEUE_STAGE_HELD] = live;
    } else {
        c.stage_rcpts[QUEUE_STAGE_PENDING] = t->fresh;
        c.stage_rcpts[QUEUE_STAGE_DEFERRED] = t->deferred;
        c.stage_rcpts[QUEUE_STAGE_ACTIVE] = t->active;
    }
    enum queue_stage st = QUEUE_STAGE_PENDING;
    if (t->held && live > 0)
        st = QUEUE_STAGE_HELD;
    else if (t->active > 0)
        st = QUEUE_STAGE_ACTIVE;
    else if (t->deferred > 0)
        st = QUEUE_STAGE_DEFERRED;
    c.stage_msgs[st] = 1;
    return c;
}

/* queue_counts_add - sum += sign * c. */
static void queue_counts_add(struct queue_counts *sum, const struct queue_counts *c, int sign)
{
    size_t d = sign > 0 ? 1 : (size_t)-1; /* unsigned wrap-around subtracts exactly */
    sum->held += d * c->held;
    sum->rcpts_pending += d * c->rcpts_pending;
    sum->rcpts_leased += d * c->rcpts_leased;
    sum->bytes += d * c->bytes;
    sum->missing += d * c->missing;
    for (int i = 0; i < QUEUE_STAGES; i++) {
        sum->stage_msgs[i] += d * c->stage_msgs[i];
        sum->stage_rcpts[i] += d * c->stage_rcpts[i];
    }
}

/*
 * queue_count - with sign 1, add its share as it is now to q->counts; with
 * sign -1, take it away (it must not have changed since it was added: see
 * struct queue_tally). Each only once: counted says which was last.
 */
void queue_count(struct queue *q, struct queue_item *it, int sign)
{
    if ((sign > 0) == (it->counted != 0))
        return;
    struct queue_tally t = queue_tally_of(it);
    struct queue_counts c = queue_tally_counts(&t, it->msg.body_len);
    queue_counts_add(&q->counts, &c, sign);
    it->counted = sign > 0;
}

/* ------------------------------------------------------------------------
 * The domain index
 * ------------------------------------------------------------------------ */

/*
 * QUEUE_HEAP_DEFINE - the binary min-heap operations of one heap type:
 * htype (a, len, cap) of pointers to etype, ordered by less, each element
 * knowing its index in pos (QUEUE_NOT_IN_HEAP when out). Two heaps share
 * them: the domains' heaps of dnodes and the expiry heap of items.
 *   name##_fix(h, i)     restore the order after the key at i changed
 *   name##_insert(h, e)  add e; -1 on no memory (h unchanged)
 *   name##_remove(h, e)  take e out (if it is in)
 */
#define QUEUE_HEAP_DEFINE(name, htype, etype, less, pos, min_cap) \
    static void name##_set(htype *h, size_t i, etype *e)          \
    {                                                             \
        h->a[i] = e;                                              \
        e->pos = (uint32_t)i;                                     \
    }                                                             \
    static void name##_fix(htype *h, size_t i)                    \
    {                                                             \
        etype *e = h->a[i];                                       \
        while (i > 0 && less(e, h->a[(i - 1) / 2])) {             \
            name##_set(h, i, h->a[(i - 1) / 2]);                  \
            i = (i - 1) / 2;                                      \
        }                                                         \
        for (;;) {                                                \
            size_t c = 2 * i + 1;                                 \
            if (c >= h->len)                                      \
                break;                                            \
            if (c + 1 < h->len && less(h->a[c + 1], h->a[c]))     \
                c++;                                              \
            if (!less(h->a[c], e))                                \
                break;                                            \
            name##_set(h, i, h->a[c]);                            \
            i = c;                                                \
        }                                                         \
        name##_set(h, i, e);                                      \
    }                                                             \
    static int name##_insert(htype *h, etype *e)                  \
    {                                                             \
        if (h->len == h->cap) {                                   \
            size_t cap = h->cap ? 2 * h->cap : (min_cap);         \
            etype **a = realloc(h->a, cap * sizeof(*a));          \
            if (a == NULL)                                        \
                return -1;                                        \
            h->a = a;                                             \
            h->cap = cap;                                         \
        }                                                         \
        name##_set(h, h->len++, e);                               \
        name##_fix(h, e->pos);                                    \
        return 0;                                                 \
    }                                                             \
    static void name##_remove(htype *h, etype *e)                 \
    {                                                             \
        if (e->pos == QUEUE_NOT_IN_HEAP)                          \
            return;                                               \
        etype *last = h->a[--h->len];                             \
        if (last != e) {                                          \
            name##_set(h, e->pos, last);                          \
            name##_fix(h, last->pos);                             \
        }                                                         \
        e->pos = QUEUE_NOT_IN_HEAP;                               \
    }

/* queue_iheap_less - a comes before b in the expiry heap. */
static bool queue_iheap_less(const struct queue_item *a, const struct queue_item *b)
{
    uint64_t ka = queue_item_exp_key(a), kb = queue_item_exp_key(b);
    return ka != kb ? ka < kb : a->seq < b->seq;
}

QUEUE_HEAP_DEFINE(queue_dheap, struct queue_dheap, struct queue_dnode, queue_dheap_less, pos, 8)
QUEUE_HEAP_DEFINE(queue_iheap,
                  struct queue_iheap,
                  struct queue_item,
                  queue_iheap_less,
                  exp_pos,
                  QUEUE_HASH_MIN)

/* queue_dom_name - the domain of an address as the route sees it: after the last '@'. */
static const char *queue_dom_name(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : addr;
}

/*
 * queue_dom_key - dn's key (see struct queue_domain), the plain way: what
 * queue_sched_index_check holds queue_dom_rekey's answer against.
 */
static uint64_t queue_dom_key(const struct queue_item *it, const struct queue_dnode *dn)
{
    const struct queue_msg *m = &it->msg;
    if (m->held || m->body_missing)
        return UINT64_MAX;
    uint64_t key = UINT64_MAX;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        if (r->state == QUEUE_RCPT_PENDING && queue_item_dnode(it, queue_rdn(it, i)) == dn &&
            r->next_attempt_ms < key)
            key = r->next_attempt_ms;
    }
    return key;
}

/* queue_exp_key - the item's key in the expiry heap (see struct queue_item). */
static uint64_t queue_exp_key(const struct queue_msg *m)
{
    bool open = false;
    for (size_t i = 0; i < m->n_rcpts && !open; i++)
        open = m->rcpts[i].state == QUEUE_RCPT_PENDING || m->rcpts[i].state == QUEUE_RCPT_LEASED;
    return !m->held && open && m->expires_at_ms != 0 ? m->expires_at_ms : UINT64_MAX;
}

/* queue_dom_free - release an empty domain. */
static void queue_dom_free(struct queue *q, struct queue_domain *d)
{
    struct queue_domain **pp = &q->dom_tab[d->hash & (q->dom_cap - 1)];
    while (*pp != d)
        pp = &(*pp)->hnext;
    *pp = d->hnext;
    if (d->prev)
        d->prev->next = d->next;
    else
        q->domains = d->next;
    if (d->next)
        d->next->prev = d->prev;
    q->dom_count--;
    free(d->heap.a);
    free(d->name);
    free(d);
}

/* queue_dom_find - the domain called name, created if missing; NULL on no memory. */
static struct queue_domain *queue_dom_find(struct queue *q, const char *name)
{
    uint64_t h = hash_fnv1a64_str(name);
    if (q->dom_cap > 0)
        for (struct queue_domain *d = q->dom_tab[h & (q->dom_cap - 1)]; d != NULL; d = d->hnext)
            if (d->hash == h && strcmp(d->name, name) == 0)
                return d;
    if (q->dom_count >= q->dom_cap) {
        size_t cap = q->dom_cap ? 2 * q->dom_cap : QUEUE_HASH_MIN;
        struct queue_domain **t = calloc(cap, sizeof(*t));
        if (t == NULL)
            return NULL;
        for (struct queue_domain *d = q->domains; d != NULL; d = d->next) {
            d->hnext = t[d->hash & (cap - 1)];
            t[d->hash & (cap - 1)] = d;
        }
        free(q->dom_tab);
        q->dom_tab = t;
        q->dom_cap = cap;
    }
    struct queue_domain *d = calloc(1, sizeof(*d));
    if (d == NULL || (d->name = queue_strdup(name)) == NULL) {
        free(d);
        return NULL;
    }
    d->hash = h;
    d->hnext = q->dom_tab[h & (q->dom_cap - 1)];
    q->dom_tab[h & (q->dom_cap - 1)] = d;
    d->next = q->domains;
    if (q->domains)
        q->domains->prev = d;
    q->domains = d;
    q->dom_count++;
    return d;
}

/* queue_dom_unlink - out of the domain index, dnodes freed; domains left empty are freed. */
void queue_dom_unlink(struct queue *q, struct queue_item *it)
{
    for (size_t k = 0; k < it->n_dnodes; k++) {
        struct queue_dnode *dn = queue_item_dnode(it, k);
        if (dn->pos == QUEUE_NOT_IN_HEAP)
            continue;
        queue_dheap_remove(&dn->dom->heap, dn);
        if (dn->dom->heap.len == 0)
            queue_dom_free(q, dn->dom);
    }
    queue_iheap_remove(&q->expiry, it);
    if (it->many) {
        free(it->dx.many.dnodes);
        free(it->dx.many.rdn);
    }
    memset(&it->dx, 0, sizeof(it->dx));
    it->many = false;
    it->n_dnodes = 0;
}

/* queue_dom_give_up - no memory: drop the whole domain index (the scheduler walks the heap). */
static void queue_dom_give_up(struct queue *q)
{
    for (struct queue_item *it = queue_item_after(q, 0); it != NULL;
         it = queue_item_after(q, it->seq))
        queue_dom_unlink(q, it);
    queue_dom_clear(q);
    q->dom_broken = true;
}

/* queue_dom_clear - free the domain index (the items are gone or going); it starts afresh. */
void queue_dom_clear(struct queue *q)
{
    while (q->domains != NULL) {
        struct queue_domain *d = q->domains;
        q->domains = d->next;
        free(d->heap.a);
        free(d->name);
        free(d);
    }
    free(q->dom_tab);
    q->dom_tab = NULL;
    q->dom_cap = q->dom_count = 0;
    q->expiry.len = 0;
    q->dom_broken = false;
}

/*
 * queue_dom_rekey - it changed (or was just inserted): every key of its
 * dnodes from one pass over the recipients, so a message with many
 * recipients in many domains costs O(recipients + domains log n) to apply,
 * and its expiry key. The new keys are gathered in a scratch array (on the
 * stack for a few domains); without memory for one, one pass per dnode.
 */
static void queue_dom_rekey(struct queue *q, struct queue_item *it)
{
    const struct queue_msg *m = &it->msg;
    uint64_t stack[16], *keys = stack;
    if (it->n_dnodes > sizeof(stack) / sizeof(stack[0]))
        keys = malloc(it->n_dnodes * sizeof(*keys));
    if (keys != NULL) {
        for (size_t k = 0; k < it->n_dnodes; k++)
            keys[k] = UINT64_MAX;
        bool out = m->held || m->body_missing; /* not delivered from here: out of the heaps' way */
        for (size_t i = 0; it->n_dnodes > 0 && !out && i < m->n_rcpts; i++) {
            const struct queue_rcpt *r = &m->rcpts[i];
            uint32_t k = queue_rdn(it, i);
            if (r->state == QUEUE_RCPT_PENDING && r->next_attempt_ms < keys[k])
                keys[k] = r->next_attempt_ms;
        }
    }
    for (size_t k = 0; k < it->n_dnodes; k++) {
        struct queue_dnode *dn = queue_item_dnode(it, k);
        uint64_t key = keys != NULL ? keys[k] : queue_dom_key(it, dn);
        if (key != dn->key && dn->pos != QUEUE_NOT_IN_HEAP) {
            dn->key = key;
            queue_dheap_fix(&dn->dom->heap, dn->pos);
        }
    }
    if (keys != stack)
        free(keys);
    bool open = queue_exp_key(m) != UINT64_MAX;
    if (open != it->exp_open && it->exp_pos != QUEUE_NOT_IN_HEAP) {
        it->exp_open = open;
        queue_iheap_fix(&q->expiry, it->exp_pos);
    }
}

/* queue_dom_link - add a newly linked item to the index (gives the index up on no memory). */
void queue_dom_link(struct queue *q, struct queue_item *it)
{
    const struct queue_msg *m = &it->msg;
    uint64_t gen = ++q->link_gen;
    memset(&it->dx, 0, sizeof(it->dx));
    it->many = false;
    it->n_dnodes = 0;
    it->exp_pos = QUEUE_NOT_IN_HEAP;
    it->exp_open = false;
    if (q->dom_broken)
        return;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        struct queue_domain *d = queue_dom_find(q, queue_dom_name(m->rcpts[i].addr));
        if (d == NULL)
            goto fail;
        if (d->link_gen == gen) { /* a domain of an earlier recipient */
            if (it->many)
                it->dx.many.rdn[i] = (uint32_t)d->link_k;
            continue;
        }
        size_t k = it->n_dnodes;
        if (k == 1) {
            /* A second domain: the dnodes and the recipients' map get arrays. */
            struct queue_dnode_m *a = calloc(m->n_rcpts, sizeof(*a));
            uint32_t *rdn = calloc(m->n_rcpts, sizeof(*rdn));
            if (a == NULL || rdn == NULL) {
                free(a);
                free(rdn);
                goto fail;
            }
            queue_dheap_remove(&it->dx.dn1.dom->heap, &it->dx.dn1);
            a[0].dn = it->dx.dn1;
            a[0].dn.in_array = true;
            a[0].it = it;
            it->dx.many.dnodes = a;
            it->dx.many.rdn = rdn;
            it->many = true;
            if (queue_dheap_insert(&a[0].dn.dom->heap, &a[0].dn) != 0)
                goto fail; /* a heap never shrinks: there is room for what left it */
        }
        it->n_dnodes++;
        if (it->many)
            it->dx.many.rdn[i] = (uint32_t)k;
        d->link_gen = gen;
        d->link_k = k;
        struct queue_dnode *dn = queue_item_dnode(it, k);
        *dn = (struct queue_dnode){
            .dom = d, .pos = QUEUE_NOT_IN_HEAP, .first_rcpt = (uint32_t)i, .in_array = it->many};
        if (it->many)
            it->dx.many.dnodes[k].it = it;
        if (queue_dheap_insert(&d->heap, dn) != 0) {
            if (d->heap.len == 0)
                queue_dom_free(q, d);
            goto fail;
        }
    }
    if (queue_iheap_insert(&q->expiry, it) != 0)
        goto fail;
    /* Inserted with dnode keys 0 and expiry key UINT64_MAX: now the real keys. */
    queue_dom_rekey(q, it);
    return;
fail:
    /* Not on the acceptance list yet: give_up would not find it. */
    queue_dom_unlink(q, it);
    queue_dom_give_up(q);
}

/* queue_dheap_check - h is in order and every dnode knows its place. */
static int queue_dheap_check(const struct queue_dheap *h)
{
    for (size_t i = 0; i < h->len; i++) {
        if (h->a[i]->pos != i || h->a[i]->key != queue_dom_key(queue_dnode_item(h->a[i]), h->a[i]))
            return -1;
        if (i > 0 && queue_dheap_less(h->a[i], h->a[(i - 1) / 2]))
            return -1;
    }
    return 0;
}

/* queue_iheap_check - the expiry heap is in order and every item knows its place. */
static int queue_iheap_check(const struct queue_iheap *h)
{
    for (size_t i = 0; i < h->len; i++) {
        if (h->a[i]->exp_pos != i || queue_item_exp_key(h->a[i]) != queue_exp_key(&h->a[i]->msg))
            return -1;
        if (i > 0 && queue_iheap_less(h->a[i], h->a[(i - 1) / 2]))
            return -1;
    }
    return 0;
}

/* queue_dom_check - the domain index matches the items (queue_sched_index_check). */
static int queue_dom_check(const struct queue *q)
{
    size_t dnodes = 0, in_heaps = 0, exp = 0, domains = 0;
    for (const struct queue_item *it = queue_item_after(q, 0); it != NULL;
         it = queue_item_after(q, it->seq)) {
        dnodes += it->n_dnodes;
        exp += it->exp_pos != QUEUE_NOT_IN_HEAP;
        if (q->dom_broken ? it->n_dnodes != 0 : it->n_dnodes == 0 && it->msg.n_rcpts != 0)
            return -1;
        if ((it->n_dnodes > 1) != it->many)
            return -1;
        for (size_t i = 0; i < it->n_dnodes && i < it->msg.n_rcpts; i++)
            if (strcmp(queue_item_dnode(it, queue_rdn(it, i))->dom->name,
                       queue_dom_name(it->msg.rcpts[i].addr)) != 0)
                return -1;
    }
    for (const struct queue_domain *d = q->domains; d != NULL; d = d->next) {
        if (d->heap.len == 0 || queue_dheap_check(&d->heap) != 0)
            return -1;
        for (size_t i = 0; i < d->heap.len; i++)
            if (d->heap.a[i]->dom != d)
                return -1;
        in_heaps += d->heap.len;
        domains++;
    }
    if (domains != q->dom_count || in_heaps != dnodes || exp != q->expiry.len)
        return -1;
    return queue_iheap_check(&q->expiry);
}

/* queue_untouch - see internal.h. */
void queue_untouch(struct queue *q, struct queue_item *it)
{
    queue_count(q, it, -1);
}

/* queue_touch - it changed (recipients, held): bring the indexes and counts up to date. */
void queue_touch(struct queue *q, struct queue_item *it)
{
    queue_count(q, it, 1);
    queue_dom_rekey(q, it);
    bool leased;
    (void)queue_wake(&it->msg, &leased);
    queue_leased_set(q, it, leased);
}

/*
 * queue_foreach_due - without the indexes: every message due by now_ms or
 * with a lease (a lease that lapses later still counts, as it holds a slot).
 */
void queue_foreach_due(const struct queue *q,
                       uint64_t now_ms,
                       int (*fn)(void *arg, const struct queue_msg *m),
                       void *arg)
{
    for (const struct queue_item *it = queue_item_after(q, 0); it != NULL;
         it = queue_item_after(q, it->seq)) {
        bool leased;
        if ((queue_wake(&it->msg, &leased) <= now_ms || leased) && fn(arg, &it->msg) != 0)
            return;
    }
}

void queue_foreach_leased(const struct queue *q,
                          int (*fn)(void *arg, const struct queue_msg *m),
                          void *arg)
{
    if (q->index_off || q->leased_broken) {
        for (const struct queue_item *it = queue_item_after(q, 0); it != NULL;
             it = queue_item_after(q, it->seq)) {
            bool leased;
            (void)queue_wake(&it->msg, &leased);
            if (leased && fn(arg, &it->msg) != 0)
                return;
        }
        return;
    }
    for (size_t i = 0; i < q->leased_len; i++)
        if (fn(arg, &q->leased[i]->msg) != 0)
            return;
}

void queue_set_sched_index(struct queue *q, bool on)
{
    q->index_off = !on;
}

int queue_sched_index_check(const struct queue *q)
{
    size_t leased = 0;
    struct queue_counts sum = {0};
    for (const struct queue_item *it = queue_item_after(q, 0); it != NULL;
         it = queue_item_after(q, it->seq)) {
        /* Every item counted, as it is now: nothing changed it unseen. */
        struct queue_tally t = queue_tally_of(it);
        struct queue_counts c = queue_tally_counts(&t, it->msg.body_len);
        if (!it->counted)
            return -1;
        queue_counts_add(&sum, &c, 1);
        bool has_lease;
        (void)queue_wake(&it->msg, &has_lease);
        if (!q->leased_broken && queue_item_leased(it) != has_lease)
            return -1;
        if (queue_item_leased(it) &&
            (it->leased_pos >= q->leased_len || q->leased[it->leased_pos] != it))
            return -1;
        leased += queue_item_leased(it);
    }
    if (memcmp(&sum, &q->counts, sizeof(sum)) != 0)
        return -1;
    return leased == q->leased_len ? queue_dom_check(q) : -1;
}
