/*
 * queue_index.c - the scheduler's indexes over the queue, derived from its
 * state: a binary min-heap of messages on their wake time (queue_wake) and
 * the list of messages with a LEASED recipient. queue_touch brings both up
 * to date after every change; queue_foreach_due and queue_foreach_leased
 * read them. Neither is replicated: snapshots and the digest never see
 * them, and a heap that cannot grow is given up (every message is walked
 * instead), which costs time, never correctness.
 */
#include <stdlib.h>

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

/*
 * queue_count - with sign 1, count it as it is now and add that to
 * q->counts; with sign -1, take away what was last added for it. Adding and
 * taking away the stored share (not a recount) keeps the sums exact whatever
 * changed in between.
 */
/* queue_count_stages - it's message and live recipients by queue_stage, into c. */
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
    for (int i = 0; i < QUEUE_STAGES; i++) {
        sum->stage_msgs[i] += d * c->stage_msgs[i];
        sum->stage_rcpts[i] += d * c->stage_rcpts[i];
    }
}

void queue_count(struct queue *q, struct queue_item *it, int sign)
{
    struct queue_counts *c = &it->counted;
    if (sign > 0) {
        *c = (struct queue_counts){.held = it->msg.held, .bytes = it->msg.body_len};
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

/* queue_touch - it changed (recipients, held): bring the indexes and counts up to date. */
void queue_touch(struct queue *q, struct queue_item *it)
{
    queue_count(q, it, -1);
    queue_count(q, it, 1);
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
    return on_list == leased ? 0 : -1;
}
