/*
 * queue_index.c - the scheduler's indexes over the queue, derived from its
 * state: a binary min-heap of messages on their wake time (queue_wake) and
 * the list of messages with a LEASED recipient. queue_touch brings both up
 * to date after every change; queue_foreach_due and queue_foreach_leased
 * read them. Neither is replicated: snapshots and the digest never see
 * them, and a heap that cannot grow is given up (every message is walked
 * instead), which costs time, never correctness.
 *
 * The domain index lets a pick cost what it picks: for each recipient
 * domain, a heap of its messages on the earliest next attempt of their
 * PENDING recipients there, so queue_sched_pick skips a destination at its
 * limit without looking at its messages and stops walking one once it has
 * its free slots' worth; and a heap of messages on expires_at_ms, so
 * expiries are found without walking every due message. It is keyed by
 * domain, which a message's recipients never change, not by destination,
 * which depends on the configuration (the scheduler maps domains to
 * destinations at pick time, once per domain). Like the heap, it is given
 * up when it cannot grow.
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
            t = r->lease_expires_ms;
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

/* queue_heap_set - put it at heap position i. */
static void queue_heap_set(struct queue *q, size_t i, struct queue_item *it)
{
    q->heap[i] = it;
    it->heap_pos = i;
}

/* queue_heap_up - move the item at i towards the root while it wakes earlier than its parent. */
static void queue_heap_up(struct queue *q, size_t i)
{
    struct queue_item *it = q->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (q->heap[parent]->wake_ms <= it->wake_ms)
            break;
        queue_heap_set(q, i, q->heap[parent]);
        i = parent;
    }
    queue_heap_set(q, i, it);
}

/* queue_heap_down - move the item at i towards the leaves while a child wakes earlier. */
static void queue_heap_down(struct queue *q, size_t i)
{
    struct queue_item *it = q->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->heap_len)
            break;
        if (c + 1 < q->heap_len && q->heap[c + 1]->wake_ms < q->heap[c]->wake_ms)
            c++;
        if (it->wake_ms <= q->heap[c]->wake_ms)
            break;
        queue_heap_set(q, i, q->heap[c]);
        i = c;
    }
    queue_heap_set(q, i, it);
}

/* queue_heap_insert - add it; on no memory the heap is given up (heap_broken). */
void queue_heap_insert(struct queue *q, struct queue_item *it)
{
    it->heap_pos = QUEUE_NOT_IN_HEAP;
    if (q->heap_broken)
        return;
    if (q->heap_len == q->heap_cap) {
        size_t cap = q->heap_cap ? 2 * q->heap_cap : QUEUE_HASH_MIN;
        struct queue_item **h = realloc(q->heap, cap * sizeof(*h));
        if (h == NULL) {
            /* Correctness does not depend on the heap: walk everything from now on. */
            for (size_t i = 0; i < q->heap_len; i++)
                q->heap[i]->heap_pos = QUEUE_NOT_IN_HEAP;
            q->heap_len = 0;
            q->heap_broken = true;
            return;
        }
        q->heap = h;
        q->heap_cap = cap;
    }
    queue_heap_set(q, q->heap_len++, it);
    queue_heap_up(q, it->heap_pos);
}

/* queue_heap_remove - take it out of the heap (if it is in). */
void queue_heap_remove(struct queue *q, struct queue_item *it)
{
    size_t i = it->heap_pos;
    if (i == QUEUE_NOT_IN_HEAP)
        return;
    it->heap_pos = QUEUE_NOT_IN_HEAP;
    struct queue_item *last = q->heap[--q->heap_len];
    if (last == it)
        return;
    queue_heap_set(q, i, last);
    queue_heap_up(q, i);
    queue_heap_down(q, last->heap_pos);
}

/* queue_leased_set - put it on or take it off the list of leased messages. */
void queue_leased_set(struct queue *q, struct queue_item *it, bool leased)
{
    if (leased == it->leased)
        return;
    it->leased = leased;
    if (leased) {
        it->lprev = NULL;
        it->lnext = q->leased;
        if (q->leased)
            q->leased->lprev = it;
        q->leased = it;
        return;
    }
    if (it->lprev)
        it->lprev->lnext = it->lnext;
    else
        q->leased = it->lnext;
    if (it->lnext)
        it->lnext->lprev = it->lprev;
    it->lprev = it->lnext = NULL;
}

/* queue_count_stages - its message and live recipients by queue_stage, into c. */
static void queue_count_stages(const struct queue_msg *m, struct queue_counts *c)
{
    enum queue_stage mstage = QUEUE_STAGE_PENDING;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        enum queue_stage st;
        if (r->state == QUEUE_RCPT_LEASED)
            st = QUEUE_STAGE_ACTIVE;
        else if (r->state == QUEUE_RCPT_PENDING)
            st = r->attempts > 0 ? QUEUE_STAGE_DEFERRED : QUEUE_STAGE_PENDING;
        else
            continue; /* final */
        if (m->held)
            st = QUEUE_STAGE_HELD;
        c->stage_rcpts[st]++;
        if (st > mstage) /* held, then active, then deferred, then pending */
            mstage = st;
    }
    c->stage_msgs[mstage]++;
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
 * queue_count - with sign 1, count it as it is now and add that to
 * q->counts; with sign -1, take away what was last added for it. Adding and
 * taking away the stored share (not a recount) keeps the sums exact whatever
 * changed in between.
 */
void queue_count(struct queue *q, struct queue_item *it, int sign)
{
    struct queue_counts *c = &it->counted;
    if (sign > 0) {
        *c = (struct queue_counts){
            .held = it->msg.held, .bytes = it->msg.body_len, .missing = it->msg.body_missing};
        for (size_t i = 0; i < it->msg.n_rcpts; i++) {
            c->rcpts_pending += it->msg.rcpts[i].state == QUEUE_RCPT_PENDING;
            c->rcpts_leased += it->msg.rcpts[i].state == QUEUE_RCPT_LEASED;
        }
        queue_count_stages(&it->msg, c);
        queue_counts_add(&q->counts, c, 1);
    } else {
        queue_counts_add(&q->counts, c, -1);
        *c = (struct queue_counts){0};
    }
}

/* ------------------------------------------------------------------------
 * The domain index
 * ------------------------------------------------------------------------ */

/* queue_dheap_set - put dn at position i of h. */
static void queue_dheap_set(struct queue_dheap *h, size_t i, struct queue_dnode *dn)
{
    h->a[i] = dn;
    dn->pos = i;
}

/* queue_dheap_fix - restore the order of h after the key of the dnode at i changed. */
static void queue_dheap_fix(struct queue_dheap *h, size_t i)
{
    struct queue_dnode *dn = h->a[i];
    while (i > 0 && queue_dheap_less(dn, h->a[(i - 1) / 2])) {
        queue_dheap_set(h, i, h->a[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->len)
            break;
        if (c + 1 < h->len && queue_dheap_less(h->a[c + 1], h->a[c]))
            c++;
        if (!queue_dheap_less(h->a[c], dn))
            break;
        queue_dheap_set(h, i, h->a[c]);
        i = c;
    }
    queue_dheap_set(h, i, dn);
}

/* queue_dheap_insert - add dn to h; -1 on no memory (h unchanged). */
static int queue_dheap_insert(struct queue_dheap *h, struct queue_dnode *dn)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 8;
        struct queue_dnode **a = realloc(h->a, cap * sizeof(*a));
        if (a == NULL)
            return -1;
        h->a = a;
        h->cap = cap;
    }
    queue_dheap_set(h, h->len++, dn);
    queue_dheap_fix(h, dn->pos);
    return 0;
}

/* queue_dheap_remove - take dn out of h (it is in). */
static void queue_dheap_remove(struct queue_dheap *h, struct queue_dnode *dn)
{
    struct queue_dnode *last = h->a[--h->len];
    if (last != dn) {
        queue_dheap_set(h, dn->pos, last);
        queue_dheap_fix(h, last->pos);
    }
    dn->pos = QUEUE_NOT_IN_HEAP;
}

/* queue_dom_name - the domain of an address as the route sees it: after the last '@'. */
static const char *queue_dom_name(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : addr;
}

/*
 * queue_dom_key - dn's key (see struct queue_domain and struct queue, for
 * the expiry heap), the plain way: what queue_sched_index_check holds
 * queue_dom_rekey's answer against.
 */
static uint64_t queue_dom_key(const struct queue_item *it, const struct queue_dnode *dn)
{
    const struct queue_msg *m = &it->msg;
    if (m->held)
        return UINT64_MAX;
    uint64_t key = UINT64_MAX;
    bool open = false;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        open = open || r->state == QUEUE_RCPT_PENDING || r->state == QUEUE_RCPT_LEASED;
        if (dn->dom != NULL && r->state == QUEUE_RCPT_PENDING && &it->dnodes[it->rdn[i]] == dn &&
            r->next_attempt_ms < key)
            key = r->next_attempt_ms;
    }
    if (dn->dom == NULL)
        return open && m->expires_at_ms != 0 ? m->expires_at_ms : UINT64_MAX;
    return key;
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
        struct queue_dnode *dn = &it->dnodes[k];
        if (dn->pos == QUEUE_NOT_IN_HEAP)
            continue;
        queue_dheap_remove(&dn->dom->heap, dn);
        if (dn->dom->heap.len == 0)
            queue_dom_free(q, dn->dom);
    }
    if (it->exp.pos != QUEUE_NOT_IN_HEAP)
        queue_dheap_remove(&q->expiry, &it->exp);
    free(it->dnodes);
    free(it->rdn);
    it->dnodes = NULL;
    it->rdn = NULL;
    it->n_dnodes = 0;
}

/* queue_dom_give_up - no memory: drop the whole domain index (the scheduler walks the heap). */
static void queue_dom_give_up(struct queue *q)
{
    for (struct queue_item *it = q->head; it != NULL; it = it->next)
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

/* queue_dnode_rekey - dn takes its next_key, and its place in h (if it is in one). */
static void queue_dnode_rekey(struct queue_dheap *h, struct queue_dnode *dn)
{
    if (dn->next_key != dn->key && dn->pos != QUEUE_NOT_IN_HEAP) {
        dn->key = dn->next_key;
        queue_dheap_fix(h, dn->pos);
    }
}

/*
 * queue_dom_rekey - it changed (or was just inserted): every key of its
 * dnodes from one pass over the recipients, so a message with many
 * recipients in many domains costs O(recipients + domains log n) to apply.
 */
static void queue_dom_rekey(struct queue *q, struct queue_item *it)
{
    const struct queue_msg *m = &it->msg;
    bool open = false;
    for (size_t k = 0; k < it->n_dnodes; k++)
        it->dnodes[k].next_key = UINT64_MAX;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        open = open || r->state == QUEUE_RCPT_PENDING || r->state == QUEUE_RCPT_LEASED;
        if (it->n_dnodes == 0 || m->held || r->state != QUEUE_RCPT_PENDING)
            continue;
        struct queue_dnode *dn = &it->dnodes[it->rdn[i]];
        if (r->next_attempt_ms < dn->next_key)
            dn->next_key = r->next_attempt_ms;
    }
    it->exp.next_key = !m->held && open && m->expires_at_ms != 0 ? m->expires_at_ms : UINT64_MAX;
    for (size_t k = 0; k < it->n_dnodes; k++)
        queue_dnode_rekey(&it->dnodes[k].dom->heap, &it->dnodes[k]);
    queue_dnode_rekey(&q->expiry, &it->exp);
}

/* queue_dom_link - add a newly linked item to the index (gives the index up on no memory). */
void queue_dom_link(struct queue *q, struct queue_item *it)
{
    const struct queue_msg *m = &it->msg;
    it->exp = (struct queue_dnode){.it = it, .pos = QUEUE_NOT_IN_HEAP};
    it->n_dnodes = 0;
    if (q->dom_broken)
        return;
    it->dnodes = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(*it->dnodes));
    it->rdn = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(*it->rdn));
    if (it->dnodes == NULL || it->rdn == NULL)
        goto fail;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        struct queue_domain *d = queue_dom_find(q, queue_dom_name(m->rcpts[i].addr));
        if (d == NULL)
            goto fail;
        if (d->link_seq == m->seq) { /* a domain of an earlier recipient */
            it->rdn[i] = (uint32_t)d->link_k;
            continue;
        }
        size_t k = it->n_dnodes++;
        it->rdn[i] = (uint32_t)k;
        d->link_seq = m->seq;
        d->link_k = k;
        it->dnodes[k] = (struct queue_dnode){
            .it = it, .dom = d, .pos = QUEUE_NOT_IN_HEAP, .first_rcpt = (uint32_t)i};
        if (queue_dheap_insert(&d->heap, &it->dnodes[k]) != 0) {
            if (d->heap.len == 0)
                queue_dom_free(q, d);
            goto fail;
        }
    }
    if (queue_dheap_insert(&q->expiry, &it->exp) != 0)
        goto fail;
    /* Inserted with key 0: now the real keys. */
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
        if (h->a[i]->pos != i || h->a[i]->key != queue_dom_key(h->a[i]->it, h->a[i]))
            return -1;
        if (i > 0 && queue_dheap_less(h->a[i], h->a[(i - 1) / 2]))
            return -1;
    }
    return 0;
}

/* queue_dom_check - the domain index matches the items (queue_sched_index_check). */
static int queue_dom_check(const struct queue *q)
{
    size_t dnodes = 0, in_heaps = 0, exp = 0, domains = 0;
    for (const struct queue_item *it = q->head; it != NULL; it = it->next) {
        dnodes += it->n_dnodes;
        exp += it->exp.pos != QUEUE_NOT_IN_HEAP;
        if (q->dom_broken ? it->n_dnodes != 0 : it->n_dnodes == 0 && it->msg.n_rcpts != 0)
            return -1;
        for (size_t i = 0; i < it->n_dnodes && i < it->msg.n_rcpts; i++)
            if (strcmp(it->dnodes[it->rdn[i]].dom->name, queue_dom_name(it->msg.rcpts[i].addr)) !=
                0)
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
    return queue_dheap_check(&q->expiry);
}

/* queue_touch - it changed (recipients, held): bring the indexes and counts up to date. */
void queue_touch(struct queue *q, struct queue_item *it)
{
    queue_count(q, it, -1);
    queue_count(q, it, 1);
    queue_dom_rekey(q, it);
    uint64_t old = it->wake_ms;
    bool leased;
    it->wake_ms = queue_wake(&it->msg, &leased);
    if (it->heap_pos != QUEUE_NOT_IN_HEAP && it->wake_ms != old) {
        if (it->wake_ms < old)
            queue_heap_up(q, it->heap_pos);
        else
            queue_heap_down(q, it->heap_pos);
    }
    queue_leased_set(q, it, leased);
}

/* queue_due_visit - the heap below position i, pruned where wake_ms > now_ms. */
static int queue_due_visit(const struct queue *q,
                           size_t i,
                           uint64_t now_ms,
                           int (*fn)(void *arg, const struct queue_msg *m),
                           void *arg)
{
    if (i >= q->heap_len || q->heap[i]->wake_ms > now_ms)
        return 0;
    if (fn(arg, &q->heap[i]->msg) != 0)
        return 1;
    if (queue_due_visit(q, 2 * i + 1, now_ms, fn, arg) != 0)
        return 1;
    return queue_due_visit(q, 2 * i + 2, now_ms, fn, arg);
}

void queue_foreach_due(const struct queue *q,
                       uint64_t now_ms,
                       int (*fn)(void *arg, const struct queue_msg *m),
                       void *arg)
{
    if (q->heap_broken || q->index_off) {
        for (const struct queue_item *it = q->head; it != NULL; it = it->next)
            if ((it->wake_ms <= now_ms || it->leased) && fn(arg, &it->msg) != 0)
                return;
        return;
    }
    if (queue_due_visit(q, 0, now_ms, fn, arg) != 0)
        return;
    for (const struct queue_item *it = q->leased; it != NULL; it = it->lnext)
        if (it->wake_ms > now_ms && fn(arg, &it->msg) != 0)
            return;
}

void queue_foreach_leased(const struct queue *q,
                          int (*fn)(void *arg, const struct queue_msg *m),
                          void *arg)
{
    if (q->index_off) {
        for (const struct queue_item *it = q->head; it != NULL; it = it->next)
            if (it->leased && fn(arg, &it->msg) != 0)
                return;
        return;
    }
    for (const struct queue_item *it = q->leased; it != NULL; it = it->lnext)
        if (fn(arg, &it->msg) != 0)
            return;
}

void queue_set_sched_index(struct queue *q, bool on)
{
    q->index_off = !on;
}

int queue_sched_index_check(const struct queue *q)
{
    size_t in_heap = 0, leased = 0, on_list = 0;
    for (const struct queue_item *it = q->head; it != NULL; it = it->next) {
        bool has_lease;
        if (it->wake_ms != queue_wake(&it->msg, &has_lease) || it->leased != has_lease)
            return -1;
        leased += it->leased;
        if (it->heap_pos == QUEUE_NOT_IN_HEAP) {
            if (!q->heap_broken)
                return -1;
            continue;
        }
        in_heap++;
        if (it->heap_pos >= q->heap_len || q->heap[it->heap_pos] != it)
            return -1;
    }
    if (in_heap != q->heap_len)
        return -1;
    for (size_t i = 1; i < q->heap_len; i++)
        if (q->heap[(i - 1) / 2]->wake_ms > q->heap[i]->wake_ms)
            return -1;
    for (const struct queue_item *it = q->leased; it != NULL; it = it->lnext) {
        if (!it->leased || (it->lnext != NULL && it->lnext->lprev != it))
            return -1;
        on_list++;
    }
    return on_list == leased ? queue_dom_check(q) : -1;
}
