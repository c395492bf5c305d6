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
 * The queue's files, and what they share, are listed in internal.h: the
 * commands (and their atomicity, errors and input checks) are in
 * queue_apply.c, the scheduler indexes in queue_index.c, the node directory
 * and cluster feature level in queue_node.c, the MTA-STS policy cache in
 * queue_sts.c, snapshot/restore/digest in queue_snapshot.c. This file keeps
 * the messages, their tables, the done set and the read-only queries.
 *
 * Errors: HAMR_ENOMEM only (queue_new returns NULL).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util/common.h"
#include "util/err.h"
#include "util/hash.h"
#include "queue/internal.h"
#include "queue/queue.h"

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------ */

/* queue_strdup - copy of s ("" for NULL); NULL on no memory. */
char *queue_strdup(const char *s)
{
    if (s == NULL)
        s = "";
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p != NULL)
        memcpy(p, s, n + 1);
    return p;
}

/* queue_sha256 - digest of n bytes; false only when libcrypto fails. */
bool queue_sha256(const uint8_t *p, size_t n, uint8_t out[QUEUE_SHA256_LEN])
{
    unsigned len = 0;
    static const uint8_t empty[1];
    return EVP_Digest(p ? p : empty, n, out, &len, EVP_sha256(), NULL) == 1 &&
           len == QUEUE_SHA256_LEN;
}

/* queue_id_ok - a queue id of acceptable length. */
bool queue_id_ok(const char *id, size_t max)
{
    size_t n = strnlen(id, QUEUE_ID_MAX);
    return n > 0 && n <= max;
}

/* ------------------------------------------------------------------------
 * Items and tables
 * ------------------------------------------------------------------------ */

const struct queue_lease queue_lease_none;

/* queue_lease_free - release a lease and its texts (NULL: nothing); returns NULL. */
struct queue_lease *queue_lease_free(struct queue_lease *l)
{
    if (l != NULL) {
        queue_str_put(l->boot_id);
        queue_str_put(l->dest);
        queue_tried_put(l->tried);
        free(l);
    }
    return NULL;
}

/* queue_rcpt_set_lease - see internal.h. */
void queue_rcpt_set_lease(struct queue_rcpt *r, struct queue_lease *l)
{
    queue_rcpt_clear_lease(r);
    l->tried = r->lt.tried;
    r->lt.lease = l;
    r->has_lease = 1;
}

/* queue_rcpt_clear_lease - see internal.h. */
void queue_rcpt_clear_lease(struct queue_rcpt *r)
{
    if (!r->has_lease)
        return;
    struct queue_lease *l = r->lt.lease;
    r->lt.tried = l->tried;
    r->has_lease = 0;
    l->tried = NULL;
    queue_lease_free(l);
}

/* queue_rcpt_set_tried - see internal.h. */
void queue_rcpt_set_tried(struct queue_rcpt *r, const struct queue_tried *t)
{
    const struct queue_tried **slot = r->has_lease ? &r->lt.lease->tried : &r->lt.tried;
    queue_tried_put(*slot);
    *slot = t;
}

/* queue_item_free - release a message and everything it owns; returns NULL. */
struct queue_item *queue_item_free(struct queue_item *it)
{
    if (it == NULL)
        return NULL;
    struct queue_msg *m = &it->msg;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        queue_rcpt_clear_lease(&m->rcpts[i]);
        queue_tried_put(m->rcpts[i].lt.tried);
    }
    queue_str_put(m->sender);
    queue_origin_put(m->origin);
    free((void *)m->ext);
    free((void *)queue_msg_body(m));
    if (it->many) {
        free(it->dx.many.dnodes);
        free(it->dx.many.rdn);
    }
    free(it);
    return NULL;
}

/*
 * queue_item_new - an item with n_rcpts PENDING recipients due at
 * received_at_ms: one allocation for the item, the recipients, then the id
 * and the addresses (see struct queue_item).
 */
struct queue_item *queue_item_new(const char *id,
                                  const char *sender,
                                  char *const *rcpts,
                                  size_t n_rcpts,
                                  uint64_t received_at_ms)
{
    if (n_rcpts > QUEUE_ITEM_RCPTS_MAX)
        return NULL;
    size_t id_len = strnlen(id, QUEUE_ID_MAX - 1);
    size_t size = sizeof(struct queue_item) + n_rcpts * sizeof(struct queue_rcpt) + id_len + 1;
    for (size_t i = 0; i < n_rcpts; i++)
        size += strlen(rcpts[i] ? rcpts[i] : "") + 1;
    struct queue_item *it = calloc(1, size);
    if (it == NULL)
        return NULL;
    struct queue_msg *m = &it->msg;
    m->rcpts = (struct queue_rcpt *)(void *)(it + 1);
    char *text = (char *)(m->rcpts + n_rcpts);
    memcpy(text, id, id_len);
    text[id_len] = '\0';
    m->id = text;
    text += id_len + 1;
    it->leased_pos = it->exp_pos = QUEUE_NOT_IN_HEAP;
    m->received_at_ms = received_at_ms;
    m->n_rcpts = (uint32_t)n_rcpts;
    for (size_t i = 0; i < n_rcpts; i++) {
        size_t n = strlen(rcpts[i] ? rcpts[i] : "");
        memcpy(text, rcpts[i] ? rcpts[i] : "", n + 1);
        m->rcpts[i].addr = text;
        m->rcpts[i].state = QUEUE_RCPT_PENDING;
        m->rcpts[i].next_attempt_ms = received_at_ms;
        text += n + 1;
    }
    m->sender = queue_str(sender);
    if (m->sender == NULL || queue_origin_get("", "", 0, &m->origin) != 0)
        return queue_item_free(it);
    return it;
}

/* queue_item_set_origin - see internal.h. */
int queue_item_set_origin(struct queue_item *it,
                          const char *client_addr,
                          const char *helo,
                          uint64_t accepted_by)
{
    const struct queue_origin *o;
    if (queue_origin_get(client_addr, helo, accepted_by, &o) != 0)
        return HAMR_ENOMEM;
    queue_origin_put(it->msg.origin);
    it->msg.origin = o;
    return 0;
}

/*
 * queue_item_set_ext - the message's DSN parameters: ret, envid (NULL or ""
 * for none), notify and orcpt (NULL or n_rcpts entries each; NULL or ""
 * entries for none). Nothing given leaves m->ext NULL. Texts over their
 * bound, and a count that is not n_rcpts: HAMR_EINVAL.
 */
int queue_item_set_ext(struct queue_item *it,
                       uint8_t ret,
                       const char *envid,
                       const uint32_t *notify,
                       size_t n_notify,
                       char *const *orcpt,
                       size_t n_orcpt)
{
    struct queue_msg *m = &it->msg;
    size_t n = m->n_rcpts;
    if ((n_notify != 0 && n_notify != n) || (n_orcpt != 0 && n_orcpt != n) || ret > QUEUE_RET_HDRS)
        return HAMR_EINVAL;
    size_t elen = envid != NULL ? strlen(envid) : 0;
    if (elen > QUEUE_ENVID_MAX)
        return HAMR_EINVAL;
    size_t size = sizeof(struct queue_ext) + n * (sizeof(uint8_t) + sizeof(char *)) + elen + 1;
    bool any = ret != 0 || elen != 0;
    for (size_t i = 0; i < n_notify; i++) {
        if (notify[i] > QUEUE_NOTIFY_ALL)
            return HAMR_EINVAL;
        any = any || notify[i] != 0;
    }
    for (size_t i = 0; i < n_orcpt; i++) {
        size_t len = orcpt[i] != NULL ? strlen(orcpt[i]) : 0;
        if (len > QUEUE_ORCPT_MAX)
            return HAMR_EINVAL;
        size += len + 1;
        any = any || len != 0;
    }
    free((void *)m->ext);
    m->ext = NULL;
    if (!any)
        return 0;
    struct queue_ext *x = calloc(1, size);
    if (x == NULL)
        return HAMR_ENOMEM;
    x->orcpt = (const char **)(void *)(x + 1);
    x->notify = (uint8_t *)(x->orcpt + n);
    char *text = (char *)(x->notify + n);
    x->ret = ret;
    for (size_t i = 0; i < n_notify; i++)
        x->notify[i] = (uint8_t)notify[i];
    for (size_t i = 0; i < n_orcpt; i++) {
        size_t len = orcpt[i] != NULL ? strlen(orcpt[i]) : 0;
        if (len == 0)
            continue;
        memcpy(text, orcpt[i], len + 1);
        x->orcpt[i] = text;
        text += len + 1;
    }
    if (elen != 0) {
        memcpy(text, envid, elen + 1);
        x->envid = text;
    }
    m->ext = x;
    return 0;
}

/* queue_set_body_ops - bodies go through ops from now on. */
void queue_set_body_ops(struct queue *q, const struct queue_body_ops *ops)
{
    q->body_ops = *ops;
    q->has_body_ops = true;
}

uint64_t queue_last_timestamp(const struct queue *q)
{
    return q->last_timestamp_ms;
}

void queue_set_lease_hook(struct queue *q, const struct queue_lease_hook *h)
{
    if (h != NULL)
        q->lease_hook = *h;
    else
        memset(&q->lease_hook, 0, sizeof(q->lease_hook));
}

/* queue_item_keep_body - into the store, or taken into memory. */
int queue_item_keep_body(struct queue *q,
                         struct queue_item *it,
                         uint8_t **body,
                         size_t len,
                         bool now)
{
    struct queue_msg *m = &it->msg;
    m->body_len = len;
    if (len == 0)
        return 0; /* nothing to keep: an empty body is never missing */
    if (!q->has_body_ops || (q->body_ops.write_behind && !now)) {
        m->body = *body;
        *body = NULL;
        return 0;
    }
    uint64_t loc;
    int rv = q->body_ops.put(q->body_ops.arg, m->id, *body, len, m->body_sha256, &loc);
    if (rv != 0)
        return rv;
    m->body_loc = loc;
    m->body_stored = true;
    return 0;
}

/* queue_item_release_body - tell the store the record may go. */
void queue_item_release_body(struct queue *q, struct queue_item *it)
{
    if (it->msg.body_stored && q->has_body_ops && q->body_ops.release != NULL)
        q->body_ops.release(q->body_ops.arg, it->msg.id, it->msg.body_loc);
    if (it->msg.body_stored)
        it->msg.body = NULL;
    it->msg.body_stored = false;
}

/* queue_item_drop - release the body of an unlinked item and free it. */
struct queue_item *queue_item_drop(struct queue *q, struct queue_item *it)
{
    if (it != NULL)
        queue_item_release_body(q, it);
    return queue_item_free(it);
}

/* queue_body_head - the first n bytes of a body, wherever it is. */
size_t queue_body_head(const struct queue *q,
                       const struct queue_msg *m,
                       size_t n,
                       const uint8_t **out,
                       uint8_t **owned)
{
    *owned = NULL;
    *out = queue_msg_body(m);
    if (n > m->body_len)
        n = m->body_len;
    if (*out != NULL || n == 0)
        return *out != NULL ? n : 0;
    if (!m->body_stored || !q->has_body_ops || q->body_ops.read == NULL)
        return 0;
    uint8_t *buf = malloc(n);
    if (buf == NULL)
        return 0;
    long long got = q->body_ops.read(q->body_ops.arg, m->body_loc, 0, buf, n);
    if (got <= 0) {
        free(buf);
        return 0;
    }
    *out = *owned = buf;
    return (size_t)got;
}

/* queue_body_spill - put the oldest bodies in memory (see queue.h). */
int queue_body_spill(struct queue *q,
                     uint64_t now_ms,
                     uint64_t keep_ms,
                     size_t keep_bytes,
                     size_t budget,
                     size_t *spilled)
{
    size_t done = 0;
    int rv = 0;
    while (q->mem_head != NULL && done < budget) {
        struct queue_item *it = q->mem_head;
        struct queue_msg *m = &it->msg;
        if (queue_msg_body(m) != NULL) {
            if (q->mem_bytes <= keep_bytes && m->received_at_ms + keep_ms > now_ms)
                break;
            uint64_t loc;
            rv =
                q->body_ops.put(q->body_ops.arg, m->id, m->body, m->body_len, m->body_sha256, &loc);
            if (rv != 0)
                break;
            free(m->body);
            m->body_loc = loc;
            m->body_stored = true;
            q->mem_bytes -= m->body_len;
            done += m->body_len;
        }
        q->mem_head = queue_item_after(q, it->seq);
    }
    if (spilled != NULL)
        *spilled = done;
    return rv;
}

/* queue_body_memory - the sum kept by queue_link, queue_unlink and queue_body_spill. */
size_t queue_body_memory(const struct queue *q)
{
    return q->mem_bytes;
}

/* queue_body_found - a fetched body is in the store at loc now. */
int queue_body_found(struct queue *q, const char *id, uint64_t loc)
{
    struct queue_item *it = queue_lookup(q, id);
    if (it == NULL)
        return HAMR_ENOTFOUND;
    queue_untouch(q, it);
    queue_item_release_body(q, it);
    it->msg.body_loc = loc;
    it->msg.body_stored = true;
    it->msg.body_missing = false;
    queue_touch(q, it);
    return 0;
}

/* queue_body_lost - the stored copy is bad: forget it, the body is missing. */
int queue_body_lost(struct queue *q, const char *id)
{
    struct queue_item *it = queue_lookup(q, id);
    if (it == NULL)
        return HAMR_ENOTFOUND;
    if (queue_msg_body(&it->msg) == NULL && it->msg.body_len > 0) {
        queue_untouch(q, it);
        queue_item_release_body(q, it);
        it->msg.body_missing = true;
        queue_touch(q, it);
    }
    return 0;
}

/* queue_bodies_missing - kept by queue_count. */
size_t queue_bodies_missing(const struct queue *q)
{
    return q->counts.missing;
}

/*
 * The message table (see struct queue). An otab slot is QUEUE_OT_FREE,
 * QUEUE_OT_GONE (an item left: probing goes on past it), or an index into
 * order[]. At most three quarters of otab is in use, so a probe ends.
 */
#define QUEUE_OT_FREE UINT32_MAX
#define QUEUE_OT_GONE (UINT32_MAX - 1)
#define QUEUE_OT_MAX ((size_t)UINT32_MAX - 2) /* items the order can index */

/*
 * queue_otab_put - place order index i, for id, in the first free or gone
 * slot; true if the slot was free (one more in use), false if gone.
 */
static bool queue_otab_put(uint32_t *t, size_t cap, const char *id, uint32_t i)
{
    size_t mask = cap - 1;
    for (size_t k = queue_id_hash(id) & mask;; k = (k + 1) & mask) {
        if (t[k] == QUEUE_OT_FREE || t[k] == QUEUE_OT_GONE) {
            bool was_free = t[k] == QUEUE_OT_FREE;
            t[k] = i;
            return was_free;
        }
    }
}

/*
 * queue_table_rebuild - order[] without its holes, in an array of ocap
 * slots, and an otab of tcap slots for it; seq renumbered. Either both are
 * replaced or, without memory, nothing changes (HAMR_ENOMEM).
 */
static int queue_table_rebuild(struct queue *q, size_t ocap, size_t tcap)
{
    struct queue_item **order = malloc(ocap * sizeof(*order));
    uint32_t *otab = malloc(tcap * sizeof(*otab));
    if (order == NULL || otab == NULL) {
        free(order);
        free(otab);
        return HAMR_ENOMEM;
    }
    memset(otab, 0xff, tcap * sizeof(*otab)); /* QUEUE_OT_FREE */
    size_t n = 0;
    for (size_t i = 0; i < q->olen; i++) {
        struct queue_item *it = q->order[i];
        if (it == NULL)
            continue;
        it->seq = (uint32_t)n + 1;
        order[n] = it;
        (void)queue_otab_put(otab, tcap, it->msg.id, (uint32_t)n);
        n++;
    }
    free(q->order);
    free(q->otab);
    q->order = order;
    q->otab = otab;
    q->olen = n;
    q->ocap = ocap;
    q->tcap = tcap;
    q->tused = n;
    return 0;
}

/* queue_reserve - see internal.h. */
int queue_reserve(struct queue *q, size_t n)
{
    if (n > QUEUE_OT_MAX - q->mcount)
        return HAMR_ENOMEM;
    size_t want = q->mcount + n;
    bool order_ok = q->olen + n <= q->ocap && q->olen - q->mcount <= QUEUE_HASH_MIN + q->mcount;
    bool tab_ok = (q->tused + n) * 4 <= q->tcap * 3;
    if (order_ok && tab_ok)
        return 0;
    /* Room for half as many again (a growth, not one slot at a time); a
     * table at most half full; both shrink as well as grow. */
    size_t ocap = QUEUE_HASH_MIN;
    while (ocap < want + want / 2)
        ocap += ocap / 2;
    size_t tcap = QUEUE_HASH_MIN;
    while (tcap < 2 * want)
        tcap *= 2;
    if (ocap < q->ocap && order_ok)
        ocap = q->ocap; /* only the table: keep the order's room */
    return queue_table_rebuild(q, ocap, tcap);
}

/* queue_grow_done - double the done set's table when full; failure only keeps chains longer. */
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
struct queue_item *queue_lookup(const struct queue *q, const char *id)
{
    size_t mask = q->tcap - 1;
    for (size_t k = queue_id_hash(id) & mask;; k = (k + 1) & mask) {
        uint32_t i = q->otab[k];
        if (i == QUEUE_OT_FREE)
            return NULL;
        if (i != QUEUE_OT_GONE && strcmp(q->order[i]->msg.id, id) == 0)
            return q->order[i];
    }
}

/* queue_done_lookup - the done record of this id, or NULL. */
static struct queue_done *queue_done_lookup(const struct queue *q, const char *id)
{
    uint32_t h = (uint32_t)hash_fnv1a64_str(id);
    for (struct queue_done *d = q->dtab[h & (q->dcap - 1)]; d != NULL; d = d->hnext)
        if (d->hash == h && strcmp(d->id, id) == 0)
            return d;
    return NULL;
}

/* queue_link - add an item at the end of the acceptance order. Takes ownership. */
void queue_link(struct queue *q, struct queue_item *it)
{
    bool leased;
    /* queue_reserve made room: a full order or table here is a caller's bug. */
    HAMR_ASSERT(q->olen < q->ocap && (q->tused + 1) * 4 <= q->tcap * 3);
    it->seq = (uint32_t)q->olen + 1;
    (void)queue_wake(&it->msg, &leased);
    it->leased_pos = QUEUE_NOT_IN_HEAP;
    queue_leased_set(q, it, leased);
    queue_count(q, it, 1);
    queue_dom_link(q, it);
    if (q->has_body_ops && queue_msg_body(&it->msg) != NULL) {
        /* write_behind: in memory until queue_body_spill; always at the end. */
        if (q->mem_head == NULL)
            q->mem_head = it;
        q->mem_bytes += it->msg.body_len;
    }
    q->tused += queue_otab_put(q->otab, q->tcap, it->msg.id, (uint32_t)q->olen);
    q->order[q->olen++] = it;
    q->mcount++;
}

/* queue_unlink - take an item out of the table, the list and the indexes (not freed). */
static void queue_unlink(struct queue *q, struct queue_item *it)
{
    queue_leased_set(q, it, false);
    queue_count(q, it, -1);
    queue_dom_unlink(q, it);
    if (q->has_body_ops && queue_msg_body(&it->msg) != NULL)
        q->mem_bytes -= it->msg.body_len;
    if (q->mem_head == it)
        q->mem_head = queue_item_after(q, it->seq);
    uint32_t i = (uint32_t)(it->seq - 1);
    size_t mask = q->tcap - 1, k = queue_id_hash(it->msg.id) & mask;
    while (q->otab[k] != i)
        k = (k + 1) & mask;
    q->otab[k] = QUEUE_OT_GONE;
    q->order[i] = NULL;
    while (q->olen > 0 && q->order[q->olen - 1] == NULL)
        q->olen--; /* the newest left: no hole at the end */
    q->mcount--;
}

/* queue_done_new - a done record, not yet linked. */
struct queue_done *queue_done_new(const char *id, uint64_t done_at_ms)
{
    size_t n = strnlen(id, QUEUE_ID_MAX - 1);
    struct queue_done *d = calloc(1, sizeof(*d) + n + 1);
    if (d == NULL)
        return NULL;
    memcpy(d->id, id, n);
    d->id[n] = '\0';
    d->hash = (uint32_t)hash_fnv1a64_str(d->id);
    d->done_at_ms = done_at_ms;
    return d;
}

/* queue_done_link - append a done record. Takes ownership. */
void queue_done_link(struct queue *q, struct queue_done *d)
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
void queue_done_prune(struct queue *q, uint64_t now_ms)
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
    for (size_t i = 0; i < q->olen; i++)
        queue_item_free(q->order[i]);
    struct queue_done *d = q->dhead, *dnext;
    for (; d != NULL; d = dnext) {
        dnext = d->next;
        free(d);
    }
    memset(q->otab, 0xff, q->tcap * sizeof(*q->otab)); /* QUEUE_OT_FREE */
    memset(q->dtab, 0, q->dcap * sizeof(*q->dtab));
    q->olen = q->tused = 0;
    q->mem_head = NULL;
    q->dhead = q->dtail = NULL;
    q->mcount = q->dcount = 0;
    q->leased_len = 0;
    q->leased_broken = false;
    q->counts = (struct queue_counts){0};
    queue_dom_clear(q);
}

/* queue_new - an empty queue with its hash tables. */
struct queue *queue_new(void)
{
    struct queue *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->dcap = QUEUE_HASH_MIN;
    q->cluster_level = 1;
    q->format_max = PROTO_FORMAT_VERSION_MAX;
    q->sts_next_expiry = UINT64_MAX;
    q->dtab = calloc(q->dcap, sizeof(*q->dtab));
    if (q->dtab == NULL || queue_table_rebuild(q, QUEUE_HASH_MIN, QUEUE_HASH_MIN) != 0)
        return queue_free(q);
    return q;
}

/* queue_free - release every message, done record and table. */
struct queue *queue_free(struct queue *q)
{
    if (q == NULL)
        return NULL;
    if (q->otab != NULL && q->dtab != NULL)
        queue_clear(q);
    free(q->order);
    free(q->otab);
    free(q->dtab);
    free(q->leased);
    free(q->expiry.a);
    queue_sts_clear(q);
    free(q);
    return NULL;
}

/* queue_finish - a message leaves the queue; its id goes to the done set. Takes d. */
void queue_finish(struct queue *q, struct queue_item *it, struct queue_done *d)
{
    queue_item_release_body(q, it);
    queue_unlink(q, it);
    queue_item_free(it);
    queue_done_link(q, d);
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
    QUEUE_FOREACH_ITEM(q, it)
    if (fn(arg, &it->msg) != 0)
        return;
}

/* queue_foreach_after - visit messages in acceptance order after one of them. */
int queue_foreach_after(const struct queue *q,
                        const char *after,
                        int (*fn)(void *arg, const struct queue_msg *m),
                        void *arg)
{
    const struct queue_item *it = queue_item_after(q, 0);
    if (after != NULL && after[0] != '\0') {
        const struct queue_item *from = queue_lookup(q, after);
        if (from == NULL)
            return HAMR_ENOTFOUND;
        it = queue_item_after(q, from->seq);
    }
    for (; it != NULL; it = queue_item_after(q, it->seq))
        if (fn(arg, &it->msg) != 0)
            break;
    return 0;
}

/* queue_size - messages and body bytes, kept by queue_count. */
void queue_size(const struct queue *q, size_t *messages, size_t *bytes)
{
    *messages = q->mcount;
    *bytes = q->counts.bytes;
}

/* queue_full - at or above either limit (0: none). */
bool queue_full(const struct queue *q, uint64_t max_messages, uint64_t max_bytes)
{
    return (max_messages != 0 && (uint64_t)q->mcount >= max_messages) ||
           (max_bytes != 0 && (uint64_t)q->counts.bytes >= max_bytes);
}

/* queue_get_stats - the counts kept by queue_count: O(1), however long the queue. */
void queue_get_stats(const struct queue *q, struct queue_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->messages = q->mcount;
    st->applied = q->applied;
    st->held = q->counts.held;
    st->bytes = q->counts.bytes;
    st->rcpts_pending = q->counts.rcpts_pending;
    st->rcpts_leased = q->counts.rcpts_leased;
    memcpy(st->stage_msgs, q->counts.stage_msgs, sizeof(st->stage_msgs));
    memcpy(st->stage_rcpts, q->counts.stage_rcpts, sizeof(st->stage_rcpts));
}
