/*
 * queue.c - the replicated mail queue: a deterministic state machine fed
 * committed log entries (see the specification at the top of queue.h).
 *
 * Owns every queued message (envelope, body, per-recipient state) and the
 * dedupe ("done") set of finished ids. Messages are found by id through a
 * chained hash table and iterated in acceptance order through a list; the
 * done set is a FIFO (for pruning from the front) plus its own hash table.
 *
 * Determinism: nothing here reads a clock, a random source or the address
 * of an object in a way that can change the result. Time is the entry's
 * timestamp_ms. Iteration, snapshot and digest follow the acceptance list,
 * never the hash tables.
 *
 * Atomicity: each command is validated and everything it needs is
 * allocated before the first change, so a refused command (res->status) or
 * an allocation failure (HAMR_ENOMEM) leaves the state as it was.
 *
 * Also owns the node directory and the cluster feature level.
 *
 * Errors: queue_apply returns HAMR_ECORRUPT / HAMR_EVERSION for an entry it
 * cannot decode and HAMR_ENOMEM; refused commands return 0 with res->status
 * HAMR_ENOTFOUND, HAMR_EINVAL, HAMR_ETOOBIG, HAMR_ECORRUPT or (a
 * ClusterLevel above this build's format) HAMR_EVERSION.
 *
 * Security: entries come from the replicated log, written by other nodes
 * from untrusted SMTP input. Ids are length-checked, indexes bounds-checked,
 * bodies checked against their SHA-256, error and TLS texts reduced to
 * printable ASCII and bounded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util/common.h"
#include "util/err.h"
#include "util/hash.h"
#include "util/log.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "queue/queue_dsn.h"

/*
 * A DSN's id is "<id>-B<n>" and must fit in QUEUE_ID_MAX, so ids of
 * accepted (non-DSN) messages leave room for "-B" and ten digits.
 */
#define QUEUE_ACCEPT_ID_MAX (QUEUE_ID_MAX - 1 - 12)
/* last_error is cut at this many bytes. */
#define QUEUE_ERROR_MAX 512
#define QUEUE_SHA256_LEN 32
#define QUEUE_HASH_MIN 64
/* Text of the per-recipient error after an administrative bounce. */
#define QUEUE_ADMIN_BOUNCE_TEXT "bounced by the administrator"

#define QUEUE_NOT_IN_HEAP SIZE_MAX

/*
 * queue_item - a queued message with its links; msg is what callers see.
 *
 * Besides the table and the acceptance list, an item sits in two indexes
 * for the scheduler (queue_foreach_due), derived from its state and kept up
 * to date by queue_touch after every change: a binary min-heap on wake_ms
 * (the earliest time the scheduler can find work in it, queue_wake), and
 * the list of messages with a LEASED recipient. Neither is part of the
 * replicated state: snapshots and the digest never see them.
 */
struct queue_item {
    struct queue_msg msg;
    uint8_t sha256[QUEUE_SHA256_LEN]; /* of the body, for snapshots and the digest */
    uint64_t hash;
    struct queue_item *hnext;       /* hash chain */
    struct queue_item *prev, *next; /* acceptance order */
    uint64_t wake_ms;               /* queue_wake at the last queue_touch */
    size_t heap_pos;                /* index in q->heap, or QUEUE_NOT_IN_HEAP */
    bool leased;                    /* on q->leased */
    struct queue_item *lprev, *lnext;
};

/* queue_done - the id of a finished message, kept for dedupe. */
struct queue_done {
    char id[QUEUE_ID_MAX];
    uint64_t done_at_ms;
    uint64_t hash;
    struct queue_done *hnext; /* hash chain */
    struct queue_done *next;  /* insertion order */
};

struct queue {
    struct queue_item **mtab;
    size_t mcap, mcount;
    struct queue_item *head, *tail;
    struct queue_done **dtab;
    size_t dcap, dcount;
    struct queue_done *dhead, *dtail;
    uint64_t last_timestamp_ms;
    uint64_t applied;
    struct queue_node nodes[QUEUE_NODES_MAX]; /* sorted by node_id */
    size_t n_nodes;
    uint32_t cluster_level; /* 1..format_max, never falls */
    uint32_t format_max;    /* highest level applied: this build's format */
    uint64_t next_seq;      /* acceptance number of the next linked message */
    /* Scheduler indexes (see struct queue_item). heap_broken: the heap could
     * not grow, so queue_foreach_due walks every message instead. */
    struct queue_item **heap;
    size_t heap_len, heap_cap;
    bool heap_broken;
    bool index_off; /* queue_set_sched_index(q, false): walk every message */
    struct queue_item *leased;
};

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------ */

/* queue_strdup - copy of s ("" for NULL); NULL on no memory. */
static char *queue_strdup(const char *s)
{
    if (s == NULL)
        s = "";
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p != NULL)
        memcpy(p, s, n + 1);
    return p;
}

/* queue_strdup_opt - copy of s, or NULL for NULL and "" (absent optional text). */
static int queue_strdup_opt(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL || s[0] == '\0')
        return 0;
    *out = queue_strdup(s);
    return *out ? 0 : HAMR_ENOMEM;
}

/* queue_streq - NULL and "" are the same string. */
static bool queue_streq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* queue_sha256 - digest of n bytes; false only when libcrypto fails. */
static bool queue_sha256(const uint8_t *p, size_t n, uint8_t out[QUEUE_SHA256_LEN])
{
    unsigned len = 0;
    static const uint8_t empty[1];
    return EVP_Digest(p ? p : empty, n, out, &len, EVP_sha256(), NULL) == 1 &&
           len == QUEUE_SHA256_LEN;
}

/* queue_id_ok - a queue id of acceptable length. */
static bool queue_id_ok(const char *id, size_t max)
{
    size_t n = strnlen(id, QUEUE_ID_MAX);
    return n > 0 && n <= max;
}

/* queue_error_text - "<code> <text>" reduced to printable ASCII and bounded, or NULL if empty. */
static int queue_error_text(uint32_t code, const char *text, char **out)
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
    return queue_strdup_opt(line, out);
}

/* queue_bounded_text - text reduced to printable ASCII and cut to max-1 bytes, or NULL if empty. */
static int queue_bounded_text(const char *text, size_t max, char **out)
{
    char clean[QUEUE_TLS_MAX];
    HAMR_ASSERT(max <= sizeof(clean));
    text = text ? text : "";
    log_printable(clean, max, text, strlen(text));
    return queue_strdup_opt(clean, out);
}

/* queue_rcpt_final - the recipient reached a final state. */
static bool queue_rcpt_final(const struct queue_rcpt *r)
{
    return r->state == QUEUE_RCPT_DELIVERED || r->state == QUEUE_RCPT_BOUNCED ||
           r->state == QUEUE_RCPT_EXPIRED;
}

/* queue_rcpt_clear_lease - forget the lease fields. */
static void queue_rcpt_clear_lease(struct queue_rcpt *r)
{
    free(r->lease_boot_id);
    free(r->lease_dest);
    r->lease_boot_id = NULL;
    r->lease_dest = NULL;
    r->lease_id = 0;
    r->lease_node = 0;
    r->lease_term = 0;
    r->lease_expires_ms = 0;
}

/* queue_rcpt_set_error - replace last_error, taking ownership of text. */
static void queue_rcpt_set_error(struct queue_rcpt *r, char *text)
{
    free(r->last_error);
    r->last_error = text;
}

/* ------------------------------------------------------------------------
 * Items and tables
 * ------------------------------------------------------------------------ */

/* queue_item_free - release a message and everything it owns; returns NULL. */
static struct queue_item *queue_item_free(struct queue_item *it)
{
    if (it == NULL)
        return NULL;
    struct queue_msg *m = &it->msg;
    for (size_t i = 0; m->rcpts != NULL && i < m->n_rcpts; i++) {
        free(m->rcpts[i].addr);
        free(m->rcpts[i].last_error);
        free(m->rcpts[i].lease_boot_id);
        free(m->rcpts[i].lease_dest);
        free(m->rcpts[i].tls_policy);
        free(m->rcpts[i].tls);
    }
    free(m->rcpts);
    free(m->sender);
    free(m->body);
    free(m->client_addr);
    free(m->helo);
    free(it);
    return NULL;
}

/* queue_item_new - an item with n_rcpts PENDING recipients due at received_at_ms. */
static struct queue_item *queue_item_new(const char *id,
                                         const char *sender,
                                         char **rcpts,
                                         size_t n_rcpts,
                                         uint64_t received_at_ms)
{
    struct queue_item *it = calloc(1, sizeof(*it));
    if (it == NULL)
        return NULL;
    struct queue_msg *m = &it->msg;
    hamr_strlcpy(m->id, id, sizeof(m->id));
    it->hash = hash_fnv1a64_str(m->id);
    m->received_at_ms = received_at_ms;
    m->sender = queue_strdup(sender);
    m->client_addr = queue_strdup("");
    m->helo = queue_strdup("");
    m->rcpts = calloc(n_rcpts, sizeof(*m->rcpts));
    if (m->sender == NULL || m->client_addr == NULL || m->helo == NULL || m->rcpts == NULL)
        return queue_item_free(it);
    m->n_rcpts = n_rcpts;
    for (size_t i = 0; i < n_rcpts; i++) {
        m->rcpts[i].state = QUEUE_RCPT_PENDING;
        m->rcpts[i].next_attempt_ms = received_at_ms;
        m->rcpts[i].addr = queue_strdup(rcpts[i]);
        if (m->rcpts[i].addr == NULL)
            return queue_item_free(it);
    }
    return it;
}

/* queue_item_set_text - replace client_addr / helo (copied). */
static int queue_item_set_text(struct queue_item *it, const char *client_addr, const char *helo)
{
    char *c = queue_strdup(client_addr), *h = queue_strdup(helo);
    if (c == NULL || h == NULL) {
        free(c);
        free(h);
        return HAMR_ENOMEM;
    }
    free(it->msg.client_addr);
    free(it->msg.helo);
    it->msg.client_addr = c;
    it->msg.helo = h;
    return 0;
}

/* queue_item_set_body - copy the body in. */
static int queue_item_set_body(struct queue_item *it, const uint8_t *body, size_t len)
{
    if (len == 0)
        return 0;
    it->msg.body = malloc(len);
    if (it->msg.body == NULL)
        return HAMR_ENOMEM;
    memcpy(it->msg.body, body, len);
    it->msg.body_len = len;
    return 0;
}

/* queue_grow_msgs - double the message table when full; failure only keeps chains longer. */
static void queue_grow_msgs(struct queue *q)
{
    if (q->mcount < q->mcap)
        return;
    size_t cap = q->mcap * 2;
    struct queue_item **t = calloc(cap, sizeof(*t));
    if (t == NULL)
        return;
    for (size_t i = 0; i < q->mcap; i++) {
        struct queue_item *it = q->mtab[i], *next;
        for (; it != NULL; it = next) {
            next = it->hnext;
            it->hnext = t[it->hash & (cap - 1)];
            t[it->hash & (cap - 1)] = it;
        }
    }
    free(q->mtab);
    q->mtab = t;
    q->mcap = cap;
}

/* queue_grow_done - as queue_grow_msgs for the done set. */
static void queue_grow_done(struct queue *q)
{
    if (q->dcount < q->dcap)
        return;
    size_t cap = q->dcap * 2;
    struct queue_done **t = calloc(cap, sizeof(*t));
    if (t == NULL)
        return;
    for (size_t i = 0; i < q->dcap; i++) {
        struct queue_done *d = q->dtab[i], *next;
        for (; d != NULL; d = next) {
            next = d->hnext;
            d->hnext = t[d->hash & (cap - 1)];
            t[d->hash & (cap - 1)] = d;
        }
    }
    free(q->dtab);
    q->dtab = t;
    q->dcap = cap;
}

/* queue_lookup - the item with this id, or NULL. */
static struct queue_item *queue_lookup(const struct queue *q, const char *id)
{
    uint64_t h = hash_fnv1a64_str(id);
    for (struct queue_item *it = q->mtab[h & (q->mcap - 1)]; it != NULL; it = it->hnext)
        if (it->hash == h && strcmp(it->msg.id, id) == 0)
            return it;
    return NULL;
}

/* queue_done_lookup - the done record of this id, or NULL. */
static struct queue_done *queue_done_lookup(const struct queue *q, const char *id)
{
    uint64_t h = hash_fnv1a64_str(id);
    for (struct queue_done *d = q->dtab[h & (q->dcap - 1)]; d != NULL; d = d->hnext)
        if (d->hash == h && strcmp(d->id, id) == 0)
            return d;
    return NULL;
}

/* ------------------------------------------------------------------------
 * Scheduler indexes
 * ------------------------------------------------------------------------ */

/*
 * queue_wake - the earliest time at which queue_sched_pick can find work in
 * m: UINT64_MAX for a held message or one with every recipient final;
 * otherwise the smallest of each PENDING recipient's next_attempt_ms, each
 * LEASED recipient's lease_expires_ms (a lapsed lease is due again) and the
 * message's expires_at_ms (if set). *leased: some recipient is LEASED (held
 * or not).
 */
static uint64_t queue_wake(const struct queue_msg *m, bool *leased)
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
static void queue_heap_insert(struct queue *q, struct queue_item *it)
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
static void queue_heap_remove(struct queue *q, struct queue_item *it)
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
static void queue_leased_set(struct queue *q, struct queue_item *it, bool leased)
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

/* queue_touch - it changed (recipients, held): bring both indexes up to date. */
static void queue_touch(struct queue *q, struct queue_item *it)
{
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

/* queue_link - add an item at the end of the acceptance order. Takes ownership. */
static void queue_link(struct queue *q, struct queue_item *it)
{
    bool leased;
    it->msg.seq = ++q->next_seq;
    it->wake_ms = queue_wake(&it->msg, &leased);
    queue_heap_insert(q, it);
    it->leased = false;
    queue_leased_set(q, it, leased);
    queue_grow_msgs(q);
    size_t b = it->hash & (q->mcap - 1);
    it->hnext = q->mtab[b];
    q->mtab[b] = it;
    it->prev = q->tail;
    it->next = NULL;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->mcount++;
}

/* queue_unlink - take an item out of the table, the list and the indexes (not freed). */
static void queue_unlink(struct queue *q, struct queue_item *it)
{
    queue_heap_remove(q, it);
    queue_leased_set(q, it, false);
    struct queue_item **pp = &q->mtab[it->hash & (q->mcap - 1)];
    while (*pp != it)
        pp = &(*pp)->hnext;
    *pp = it->hnext;
    if (it->prev)
        it->prev->next = it->next;
    else
        q->head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        q->tail = it->prev;
    it->hnext = it->prev = it->next = NULL;
    q->mcount--;
}

/* queue_done_new - a done record, not yet linked. */
static struct queue_done *queue_done_new(const char *id, uint64_t done_at_ms)
{
    struct queue_done *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    hamr_strlcpy(d->id, id, sizeof(d->id));
    d->hash = hash_fnv1a64_str(d->id);
    d->done_at_ms = done_at_ms;
    return d;
}

/* queue_done_link - append a done record. Takes ownership. */
static void queue_done_link(struct queue *q, struct queue_done *d)
{
    queue_grow_done(q);
    size_t b = d->hash & (q->dcap - 1);
    d->hnext = q->dtab[b];
    q->dtab[b] = d;
    d->next = NULL;
    if (q->dtail)
        q->dtail->next = d;
    else
        q->dhead = d;
    q->dtail = d;
    q->dcount++;
}

/*
 * queue_done_prune - drop done ids at least QUEUE_DONE_TTL_MS older than
 * now_ms, from the front only. Entry timestamps come from different leaders'
 * clocks and need not rise; a younger record in front keeps older ones
 * behind it a little longer, which only delays their removal.
 */
static void queue_done_prune(struct queue *q, uint64_t now_ms)
{
    while (q->dhead != NULL) {
        struct queue_done *d = q->dhead;
        if (now_ms < d->done_at_ms || now_ms - d->done_at_ms < QUEUE_DONE_TTL_MS)
            break;
        struct queue_done **pp = &q->dtab[d->hash & (q->dcap - 1)];
        while (*pp != d)
            pp = &(*pp)->hnext;
        *pp = d->hnext;
        q->dhead = d->next;
        if (q->dhead == NULL)
            q->dtail = NULL;
        q->dcount--;
        free(d);
    }
}

/* queue_clear - free every message and done record; tables stay allocated. */
static void queue_clear(struct queue *q)
{
    struct queue_item *it = q->head, *next;
    for (; it != NULL; it = next) {
        next = it->next;
        queue_item_free(it);
    }
    struct queue_done *d = q->dhead, *dnext;
    for (; d != NULL; d = dnext) {
        dnext = d->next;
        free(d);
    }
    memset(q->mtab, 0, q->mcap * sizeof(*q->mtab));
    memset(q->dtab, 0, q->dcap * sizeof(*q->dtab));
    q->head = q->tail = NULL;
    q->dhead = q->dtail = NULL;
    q->mcount = q->dcount = 0;
    q->heap_len = 0;
    q->heap_broken = false;
    q->leased = NULL;
}

/* queue_new - an empty queue with its hash tables. */
struct queue *queue_new(void)
{
    struct queue *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->mcap = q->dcap = QUEUE_HASH_MIN;
    q->cluster_level = 1;
    q->format_max = PROTO_FORMAT_VERSION_MAX;
    q->mtab = calloc(q->mcap, sizeof(*q->mtab));
    q->dtab = calloc(q->dcap, sizeof(*q->dtab));
    if (q->mtab == NULL || q->dtab == NULL)
        return queue_free(q);
    return q;
}

/* queue_free - release every message, done record and table. */
struct queue *queue_free(struct queue *q)
{
    if (q == NULL)
        return NULL;
    if (q->mtab != NULL && q->dtab != NULL)
        queue_clear(q);
    free(q->mtab);
    free(q->dtab);
    free(q->heap);
    free(q);
    return NULL;
}

/* queue_finish - a message leaves the queue; its id goes to the done set. Takes d. */
static void queue_finish(struct queue *q, struct queue_item *it, struct queue_done *d)
{
    queue_unlink(q, it);
    queue_item_free(it);
    queue_done_link(q, d);
}

/* ------------------------------------------------------------------------
 * DSN generation, shared by Outcome and Admin BOUNCE
 * ------------------------------------------------------------------------ */

/*
 * queue_dsn_prepare - build the DSN item for the failed recipients of m, not
 * yet linked; *dsn_count gets the message's new DSN counter. *out is NULL
 * when no DSN is owed (null sender, a DSN itself, nothing failed).
 */
static int queue_dsn_prepare(const struct queue *q,
                             const struct queue_msg *m,
                             const struct queue_dsn_rcpt *failed,
                             size_t n_failed,
                             const char *reporter,
                             uint64_t dsn_expires_at_ms,
                             uint64_t now_ms,
                             struct queue_item **out,
                             uint32_t *dsn_count)
{
    *out = NULL;
    *dsn_count = m->dsn_count;
    /* RFC 5321 section 6.1 and RFC 3464: never a DSN to <> or about a DSN. */
    if (n_failed == 0 || m->sender[0] == '\0' || m->is_dsn)
        return 0;
    /* "<id>-B<n>", skipping any n already taken so that ids stay unique. */
    char id[QUEUE_ID_MAX];
    uint32_t n = m->dsn_count;
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
    int rv = queue_dsn_build(m, failed, n_failed, reporter, now_ms, id, &body, &len, &eight_bit);
    if (rv != 0)
        return rv;
    char *rcpt = m->sender;
    struct queue_item *it = queue_item_new(id, "", &rcpt, 1, now_ms);
    if (it == NULL) {
        free(body);
        return HAMR_ENOMEM;
    }
    it->msg.body = body;
    it->msg.body_len = len;
    it->msg.body_8bit = eight_bit;
    it->msg.is_dsn = true;
    it->msg.expires_at_ms = dsn_expires_at_ms;
    it->msg.accepted_by = 0;
    if (!queue_sha256(body, len, it->sha256)) {
        queue_item_free(it);
        return HAMR_ENOMEM;
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
    if (queue_item_set_text(it, e->client_addr, e->helo) != 0) {
        queue_item_free(it);
        return HAMR_ENOMEM;
    }
    if (e->body.len > 0) {
        it->msg.body = e->body.data;
        it->msg.body_len = e->body.len;
        e->body.data = NULL; /* hamr__entry__free_unpacked skips it now */
        e->body.len = 0;
    }
    memcpy(it->sha256, sha, sizeof(sha));
    it->msg.expires_at_ms = e->expires_at_ms;
    it->msg.is_dsn = e->is_dsn;
    it->msg.body_8bit = e->body_8bit;
    it->msg.accepted_by = e->accepted_by;
    queue_link(q, it);
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
    if (r->lease_expires_ms <= ts)
        return true;
    /* The same node under another boot id: that process died with its lease. */
    return r->lease_node == l->node_id && !queue_streq(r->lease_boot_id, l->boot_id);
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
    /* Allocate every copy first: the item is applied whole or not at all. */
    size_t n = item->n_rcpt_indexes;
    char **boot = calloc(n ? n : 1, sizeof(*boot));
    char **dest = calloc(n ? n : 1, sizeof(*dest));
    int rv = (boot && dest) ? 0 : HAMR_ENOMEM;
    for (size_t i = 0; rv == 0 && i < n; i++) {
        if (!queue_rcpt_leasable(&m->rcpts[item->rcpt_indexes[i]], l, ts))
            continue;
        rv = queue_strdup_opt(l->boot_id, &boot[i]);
        if (rv == 0)
            rv = queue_strdup_opt(item->destination, &dest[i]);
    }
    for (size_t i = 0; rv == 0 && i < n; i++) {
        struct queue_rcpt *r = &m->rcpts[item->rcpt_indexes[i]];
        /* A repeated index is leased once; the copies made for it stay unused. */
        if (!queue_rcpt_leasable(r, l, ts))
            continue;
        queue_rcpt_clear_lease(r);
        r->state = QUEUE_RCPT_LEASED;
        r->lease_id = item->lease_id;
        r->lease_node = l->node_id;
        r->lease_term = l->term;
        r->lease_expires_ms = l->expires_at_ms;
        r->lease_boot_id = boot[i];
        r->lease_dest = dest[i];
        boot[i] = dest[i] = NULL;
    }
    if (rv == 0)
        queue_touch(q, it);
    for (size_t i = 0; boot && dest && i < n; i++) {
        free(boot[i]);
        free(dest[i]);
    }
    free(boot);
    free(dest);
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

/* ------------------------------------------------------------------------
 * Outcome
 * ------------------------------------------------------------------------ */

/*
 * queue_outcome_applies - fencing: a result counts only for a recipient
 * leased under the outcome's lease_id. lease_id 0 (expiry, no route) counts
 * for a recipient nobody holds: PENDING, or LEASED under a lease that has
 * lapsed at ts, which is what the scheduler reports as due.
 */
static bool queue_outcome_applies(const struct queue_rcpt *r, uint64_t lease_id, uint64_t ts)
{
    if (lease_id != 0)
        return r->state == QUEUE_RCPT_LEASED && r->lease_id == lease_id;
    return r->state == QUEUE_RCPT_PENDING ||
           (r->state == QUEUE_RCPT_LEASED && r->lease_expires_ms <= ts);
}

/* queue_outcome_plan - what an Outcome will do, computed before any change. */
struct queue_outcome_plan {
    bool *applies;       /* per result */
    char **errors;       /* per result: new last_error (owned until used) */
    bool *set_tls;       /* per result: replace tls_policy and tls (level and policy given) */
    char **tls_policies; /* per result: new tls_policy (owned until used) */
    char **tls;          /* per result: new tls (owned until used) */
    struct queue_dsn_rcpt *failed;
    size_t n_failed;
    struct queue_item *dsn; /* owned until linked */
    uint32_t dsn_count;
    struct queue_done *done; /* owned until linked; NULL if the message stays */
};

/* queue_outcome_plan_free - release what the plan still owns. */
static void queue_outcome_plan_free(struct queue_outcome_plan *p, size_t n)
{
    for (size_t i = 0; p->errors && i < n; i++)
        free(p->errors[i]);
    for (size_t i = 0; p->tls_policies && i < n; i++)
        free(p->tls_policies[i]);
    for (size_t i = 0; p->tls && i < n; i++)
        free(p->tls[i]);
    free(p->errors);
    free(p->set_tls);
    free(p->tls_policies);
    free(p->tls);
    free(p->applies);
    free(p->failed);
    queue_item_free(p->dsn);
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
static int queue_outcome_prepare(const struct queue *q,
                                 const struct queue_msg *m,
                                 const Hamr__Outcome *o,
                                 uint64_t ts,
                                 struct queue_outcome_plan *p)
{
    size_t n = o->n_results;
    p->applies = calloc(n ? n : 1, sizeof(*p->applies));
    p->errors = calloc(n ? n : 1, sizeof(*p->errors));
    p->failed = calloc(n ? n : 1, sizeof(*p->failed));
    p->set_tls = calloc(n ? n : 1, sizeof(*p->set_tls));
    p->tls_policies = calloc(n ? n : 1, sizeof(*p->tls_policies));
    p->tls = calloc(n ? n : 1, sizeof(*p->tls));
    if (p->applies == NULL || p->errors == NULL || p->failed == NULL || p->set_tls == NULL ||
        p->tls_policies == NULL || p->tls == NULL)
        return HAMR_ENOMEM;
    size_t final_after = 0;
    for (size_t i = 0; i < m->n_rcpts; i++)
        final_after += queue_rcpt_final(&m->rcpts[i]);
    for (size_t i = 0; i < n; i++) {
        const Hamr__RcptResult *r = o->results[i];
        const struct queue_rcpt *rc = &m->rcpts[r->rcpt_index];
        p->applies[i] = queue_outcome_applies(rc, o->lease_id, ts);
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
        if (r->status == HAMR__RCPT_RESULT__STATUS__DEFERRED)
            continue;
        final_after++;
        if (r->status == HAMR__RCPT_RESULT__STATUS__DELIVERED)
            continue;
        struct queue_dsn_rcpt *f = &p->failed[p->n_failed++];
        f->addr = rc->addr;
        f->state = r->status == HAMR__RCPT_RESULT__STATUS__EXPIRED ? QUEUE_RCPT_EXPIRED
                                                                   : QUEUE_RCPT_BOUNCED;
        f->smtp_code = r->smtp_code;
        f->diagnostic = r->diagnostic;
        f->remote = o->remote;
    }
    int rv = queue_dsn_prepare(q, m, p->failed, p->n_failed, o->reporter, o->dsn_expires_at_ms, ts,
                               &p->dsn, &p->dsn_count);
    if (rv != 0)
        return rv;
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
        queue_outcome_plan_free(&p, o->n_results);
        return rv;
    }
    /* Nothing below can fail. */
    for (size_t i = 0; i < o->n_results; i++) {
        if (!p.applies[i])
            continue;
        const Hamr__RcptResult *r = o->results[i];
        struct queue_rcpt *rc = &m->rcpts[r->rcpt_index];
        queue_rcpt_clear_lease(rc);
        if (p.set_tls[i]) {
            free(rc->tls_policy);
            free(rc->tls);
            rc->tls_policy = p.tls_policies[i];
            rc->tls = p.tls[i];
            p.tls_policies[i] = p.tls[i] = NULL;
        }
        switch (r->status) {
            case HAMR__RCPT_RESULT__STATUS__DELIVERED:
                rc->state = QUEUE_RCPT_DELIVERED;
                break;
            case HAMR__RCPT_RESULT__STATUS__DEFERRED:
                rc->state = QUEUE_RCPT_PENDING;
                rc->attempts++;
                rc->next_attempt_ms = o->next_attempt_ms;
                queue_rcpt_set_error(rc, p.errors[i]);
                p.errors[i] = NULL;
                break;
            case HAMR__RCPT_RESULT__STATUS__BOUNCED:
            case HAMR__RCPT_RESULT__STATUS__EXPIRED:
            default:
                rc->state = r->status == HAMR__RCPT_RESULT__STATUS__EXPIRED ? QUEUE_RCPT_EXPIRED
                                                                            : QUEUE_RCPT_BOUNCED;
                queue_rcpt_set_error(rc, p.errors[i]);
                p.errors[i] = NULL;
                break;
        }
    }
    m->dsn_count = p.dsn_count;
    queue_touch(q, it);
    if (p.dsn != NULL) {
        queue_link(q, p.dsn);
        p.dsn = NULL;
        res->dsn_generated++;
    }
    if (p.done != NULL) {
        queue_finish(q, it, p.done);
        p.done = NULL;
        res->finished++;
    }
    queue_outcome_plan_free(&p, o->n_results);
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
    char **errors = calloc(m->n_rcpts, sizeof(*errors));
    struct queue_item *dsn = NULL;
    struct queue_done *done = NULL;
    uint32_t dsn_count = m->dsn_count;
    size_t n_failed = 0, final_after = 0;
    int rv = (failed && errors) ? 0 : HAMR_ENOMEM;
    for (size_t i = 0; rv == 0 && i < m->n_rcpts; i++) {
        struct queue_rcpt *r = &m->rcpts[i];
        if (queue_rcpt_final(r)) {
            final_after++;
            continue;
        }
        if (r->state != QUEUE_RCPT_PENDING)
            continue;
        final_after++;
        errors[i] = queue_strdup(QUEUE_ADMIN_BOUNCE_TEXT);
        if (errors[i] == NULL)
            rv = HAMR_ENOMEM;
        struct queue_dsn_rcpt *f = &failed[n_failed++];
        f->addr = r->addr;
        f->state = QUEUE_RCPT_BOUNCED;
        f->diagnostic = QUEUE_ADMIN_BOUNCE_TEXT;
    }
    if (rv == 0)
        rv = queue_dsn_prepare(q, m, failed, n_failed, a->reporter, a->dsn_expires_at_ms, ts, &dsn,
                               &dsn_count);
    if (rv == 0 && n_failed > 0 && final_after == m->n_rcpts) {
        done = queue_done_new(m->id, ts);
        if (done == NULL)
            rv = HAMR_ENOMEM;
    }
    if (rv == 0) {
        for (size_t i = 0; i < m->n_rcpts; i++) {
            if (errors[i] == NULL)
                continue;
            m->rcpts[i].state = QUEUE_RCPT_BOUNCED;
            queue_rcpt_set_error(&m->rcpts[i], errors[i]);
            errors[i] = NULL;
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
    for (size_t i = 0; errors && i < n_rcpts; i++)
        free(errors[i]);
    free(errors);
    free(failed);
    queue_item_free(dsn);
    free(done);
    return rv;
}

/* queue_admin_flush - every PENDING recipient of it due at ts. */
static void queue_admin_flush(struct queue *q, struct queue_item *it, uint64_t ts)
{
    struct queue_msg *m = &it->msg;
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
        for (struct queue_item *it = q->head; it != NULL; it = it->next)
            queue_admin_flush(q, it, ts);
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
            it->msg.held = true;
            queue_touch(q, it);
            return 0;
        case HAMR__ADMIN__OP__RELEASE:
            it->msg.held = false;
            queue_touch(q, it);
            return 0;
        case HAMR__ADMIN__OP__FLUSH:
            queue_admin_flush(q, it, ts);
            return 0;
        case HAMR__ADMIN__OP__BOUNCE:
            return queue_admin_bounce(q, it, a, ts, res);
        default:
            res->status = HAMR_EINVAL;
            return 0;
    }
}

/* ------------------------------------------------------------------------
 * Apply
 * ------------------------------------------------------------------------ */

/* queue_node_text_ok - a directory string: fits and is printable. */
static bool queue_node_text_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n >= max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

/* queue_node_put - insert or replace the entry of ni->node_id, keeping the order. */
static int queue_node_put(struct queue *q, const Hamr__NodeInfo *ni, uint64_t ts)
{
    if (ni == NULL || ni->node_id == 0 ||
        !queue_node_text_ok(ni->peer_address, QUEUE_ADDR_MAX) ||
        !queue_node_text_ok(ni->control_address, QUEUE_ADDR_MAX) ||
        !queue_node_text_ok(ni->version, sizeof(q->nodes[0].version)))
        return HAMR_EINVAL;
    size_t i = 0;
    while (i < q->n_nodes && q->nodes[i].node_id < ni->node_id)
        i++;
    if (i == q->n_nodes || q->nodes[i].node_id != ni->node_id) {
        if (q->n_nodes == QUEUE_NODES_MAX)
            return HAMR_ETOOBIG;
        memmove(&q->nodes[i + 1], &q->nodes[i], (q->n_nodes - i) * sizeof(q->nodes[0]));
        q->n_nodes++;
    }
    struct queue_node *n = &q->nodes[i];
    memset(n, 0, sizeof(*n));
    n->node_id = ni->node_id;
    hamr_strlcpy(n->peer_address, ni->peer_address, sizeof(n->peer_address));
    hamr_strlcpy(n->control_address, ni->control_address, sizeof(n->control_address));
    hamr_strlcpy(n->version, ni->version, sizeof(n->version));
    n->format_version_max = ni->format_version_max;
    n->draining = ni->draining;
    return 0;
}

/* queue_apply_node_info - a NodeInfo entry; a bad one is refused, not fatal. */
static int queue_apply_node_info(struct queue *q, const Hamr__NodeInfo *ni, uint64_t ts,
                                 struct queue_apply_result *res)
{
    res->status = queue_node_put(q, ni, ts);
    return 0;
}

const struct queue_node *queue_node_find(const struct queue *q, uint64_t node_id)
{
    for (size_t i = 0; i < q->n_nodes; i++)
        if (q->nodes[i].node_id == node_id)
            return &q->nodes[i];
    return NULL;
}

size_t queue_node_list(const struct queue *q, const struct queue_node **out)
{
    *out = q->nodes;
    return q->n_nodes;
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

/* queue_set_format_max - the highest level q applies (a test seam, see queue.h). */
void queue_set_format_max(struct queue *q, uint32_t max)
{
    q->format_max = max > 0 ? max : 1;
}

/* queue_cluster_level - the replicated feature level. */
uint32_t queue_cluster_level(const struct queue *q)
{
    return q->cluster_level;
}

/* queue_cluster_level_possible - least format_version_max of the voters; 0 if one is unknown. */
uint32_t queue_cluster_level_possible(const struct queue *q,
                                      const uint64_t *voters,
                                      size_t n_voters)
{
    if (n_voters == 0)
        return 0;
    uint32_t level = UINT32_MAX;
    for (size_t i = 0; i < n_voters; i++) {
        const struct queue_node *n = queue_node_find(q, voters[i]);
        if (n == NULL)
            return 0;
        if (n->format_version_max < level)
            level = n->format_version_max;
    }
    return level;
}

/* queue_apply - decode one entry, prune the done set, run the command. */
int queue_apply(struct queue *q, const uint8_t *buf, size_t len, struct queue_apply_result *res)
{
    memset(res, 0, sizeof(*res));
    Hamr__Entry *e = NULL;
    int rv = proto_entry_unpack(buf, len, &e);
    if (rv != 0)
        return rv;
    uint64_t ts = e->timestamp_ms;
    /*
     * Pruning first lets an id finished more than a TTL ago be enqueued
     * again. It is idempotent, so an entry retried after HAMR_ENOMEM gives
     * the same result.
     */
    queue_done_prune(q, ts);
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

/* ------------------------------------------------------------------------
 * Queries
 * ------------------------------------------------------------------------ */

/* queue_find - the queued message with this id. */
const struct queue_msg *queue_find(const struct queue *q, const char *id)
{
    struct queue_item *it = queue_lookup(q, id);
    return it ? &it->msg : NULL;
}

/* queue_contains - queued or in the done set. */
bool queue_contains(const struct queue *q, const char *id)
{
    return queue_lookup(q, id) != NULL || queue_done_lookup(q, id) != NULL;
}

/* queue_foreach - visit messages in acceptance order. */
void queue_foreach(const struct queue *q,
                   int (*fn)(void *arg, const struct queue_msg *m),
                   void *arg)
{
    for (const struct queue_item *it = q->head; it != NULL; it = it->next)
        if (fn(arg, &it->msg) != 0)
            return;
}

/* queue_get_stats - counts over the whole queue (a walk, for status only). */
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

void queue_get_stats(const struct queue *q, struct queue_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->messages = q->mcount;
    st->applied = q->applied;
    for (const struct queue_item *it = q->head; it != NULL; it = it->next) {
        st->held += it->msg.held;
        st->bytes += it->msg.body_len;
        for (size_t i = 0; i < it->msg.n_rcpts; i++) {
            st->rcpts_pending += it->msg.rcpts[i].state == QUEUE_RCPT_PENDING;
            st->rcpts_leased += it->msg.rcpts[i].state == QUEUE_RCPT_LEASED;
        }
    }
}

/* ------------------------------------------------------------------------
 * Snapshot, restore and digest
 *
 * The Snapshot message is built over the queue's own memory (no copies of
 * strings or bodies) in acceptance order, so its encoding is canonical: the
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
}

/* queue_snap_text - a borrowed string for a protobuf field ("" for NULL). */
static char *queue_snap_text(const char *s)
{
    return (char *)(s ? s : "");
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
    rs->last_error = queue_snap_text(r->last_error);
    rs->lease_id = r->lease_id;
    rs->lease_node = r->lease_node;
    rs->lease_term = r->lease_term;
    rs->lease_expires_ms = r->lease_expires_ms;
    rs->lease_boot_id = queue_snap_text(r->lease_boot_id);
    rs->lease_destination = queue_snap_text(r->lease_dest);
    /* "" is not encoded: a state without them snapshots and hashes as before format 2. */
    rs->tls_policy = queue_snap_text(r->tls_policy);
    rs->tls = queue_snap_text(r->tls);
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
    size_t nm = q->mcount, nd = q->dcount, nr = 0;
    for (const struct queue_item *it = q->head; it != NULL; it = it->next)
        nr += it->msg.n_rcpts;
    s->qm = calloc(nm ? nm : 1, sizeof(*s->qm));
    s->qmp = calloc(nm ? nm : 1, sizeof(*s->qmp));
    s->enq = calloc(nm ? nm : 1, sizeof(*s->enq));
    s->rcpt_addrs = calloc(nr ? nr : 1, sizeof(*s->rcpt_addrs));
    s->rs = calloc(nr ? nr : 1, sizeof(*s->rs));
    s->rsp = calloc(nr ? nr : 1, sizeof(*s->rsp));
    s->done = calloc(nd ? nd : 1, sizeof(*s->done));
    s->donep = calloc(nd ? nd : 1, sizeof(*s->donep));
    if (!s->qm || !s->qmp || !s->enq || !s->rcpt_addrs || !s->rs || !s->rsp || !s->done ||
        !s->donep) {
        queue_snap_free(s);
        return HAMR_ENOMEM;
    }
    size_t mi = 0, ri = 0;
    for (const struct queue_item *it = q->head; it != NULL; it = it->next, mi++) {
        const struct queue_msg *m = &it->msg;
        Hamr__Enqueue *e = &s->enq[mi];
        *e = enq_init;
        e->queue_id = (char *)m->id;
        e->sender = queue_snap_text(m->sender);
        e->n_rcpts = m->n_rcpts;
        e->rcpts = &s->rcpt_addrs[ri];
        if (with_bodies) {
            e->body.data = m->body;
            e->body.len = m->body_len;
        }
        e->expires_at_ms = m->expires_at_ms;
        e->is_dsn = m->is_dsn;
        e->body_sha256.data = (uint8_t *)it->sha256;
        e->body_sha256.len = QUEUE_SHA256_LEN;
        e->client_addr = queue_snap_text(m->client_addr);
        e->helo = queue_snap_text(m->helo);
        e->accepted_by = m->accepted_by;
        e->body_8bit = m->body_8bit;
        Hamr__QueuedMessage *qm = &s->qm[mi];
        *qm = qm_init;
        qm->enqueue = e;
        qm->n_rcpts = m->n_rcpts;
        qm->rcpts = &s->rsp[ri];
        qm->held = m->held;
        qm->received_at_ms = m->received_at_ms;
        qm->dsn_count = m->dsn_count;
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
            s->nip[i] = &s->ni[i];
        }
        s->snap.n_nodes = q->n_nodes;
        s->snap.nodes = s->nip;
    }
    return 0;
}

/* queue_snapshot - the framed Snapshot of the whole state. */
int queue_snapshot(const struct queue *q, void *(*alloc)(size_t), uint8_t **out, size_t *len)
{
    struct queue_snap s;
    int rv = queue_snap_build(q, true, &s);
    if (rv != 0)
        return rv;
    rv = proto_snapshot_pack(&s.snap, alloc, out, len);
    queue_snap_free(&s);
    return rv;
}

/* queue_restore_msg - one message from a snapshot, checked, not yet linked. */
static int queue_restore_msg(const Hamr__QueuedMessage *qm, struct queue_item **out)
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
    if (queue_item_set_text(it, e->client_addr, e->helo) != 0 ||
        queue_item_set_body(it, e->body.data, e->body.len) != 0 ||
        !queue_sha256(e->body.data, e->body.len, it->sha256)) {
        queue_item_free(it);
        return HAMR_ENOMEM;
    }
    /* The body must be the one that was accepted. */
    if (memcmp(it->sha256, e->body_sha256.data, QUEUE_SHA256_LEN) != 0) {
        queue_item_free(it);
        return HAMR_ECORRUPT;
    }
    struct queue_msg *m = &it->msg;
    m->expires_at_ms = e->expires_at_ms;
    m->is_dsn = e->is_dsn;
    m->body_8bit = e->body_8bit;
    m->accepted_by = e->accepted_by;
    m->held = qm->held;
    m->dsn_count = qm->dsn_count;
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
        r->lease_id = rs->lease_id;
        r->lease_node = rs->lease_node;
        r->lease_term = rs->lease_term;
        r->lease_expires_ms = rs->lease_expires_ms;
        if (queue_strdup_opt(rs->last_error, &r->last_error) != 0 ||
            queue_strdup_opt(rs->lease_boot_id, &r->lease_boot_id) != 0 ||
            queue_strdup_opt(rs->lease_destination, &r->lease_dest) != 0 ||
            queue_strdup_opt(rs->tls_policy, &r->tls_policy) != 0 ||
            queue_strdup_opt(rs->tls, &r->tls) != 0) {
            queue_item_free(it);
            return HAMR_ENOMEM;
        }
    }
    *out = it;
    return 0;
}

/* queue_restore_into - fill the empty queue n from a decoded snapshot. */
static int queue_restore_into(struct queue *n, const Hamr__Snapshot *s)
{
    /* A level this build cannot reach; absent (older snapshot, or level 1) is 1. */
    if (s->cluster_level > n->format_max)
        return HAMR_EVERSION;
    for (size_t i = 0; i < s->n_messages; i++) {
        struct queue_item *it;
        int rv = queue_restore_msg(s->messages[i], &it);
        if (rv != 0)
            return rv;
        if (queue_contains(n, it->msg.id)) {
            queue_item_free(it);
            return HAMR_ECORRUPT;
        }
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
        if (queue_node_put(n, s->nodes[i], s->last_timestamp_ms) != 0)
            return HAMR_ECORRUPT;
    }
    n->cluster_level = s->cluster_level > 1 ? s->cluster_level : 1;
    n->last_timestamp_ms = s->last_timestamp_ms;
    n->applied = s->applied;
    return 0;
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
    rv = queue_restore_into(n, s);
    hamr__snapshot__free_unpacked(s, NULL);
    if (rv != 0) {
        queue_free(n);
        return rv;
    }
    /* Swap the contents: q keeps its address, the old state goes with n. */
    struct queue tmp = *q;
    *q = *n;
    *n = tmp;
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
