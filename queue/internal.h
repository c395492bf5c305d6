/*
 * internal.h - what the files of queue/ share and nobody else sees: the
 * queue's own structs, the table and list operations, the scheduler
 * indexes and the node directory's insert. The public interface is queue.h.
 *
 *   queue.c          items, tables, the done set, queries
 *   queue_apply.c    queue_apply and the command handlers
 *   queue_index.c    the derived scheduler indexes (leased set, domain index,
 *                    expiry heap) and the counts
 *   queue_str.c      the shared copies of repeated texts
 *   queue_node.c     the node directory and the cluster feature level
 *   queue_sts.c      the MTA-STS policy cache
 *   queue_snapshot.c snapshot, restore and digest
 *   queue_entry.c    the encoders of the entries queue_apply decodes
 */
#ifndef HAMR_QUEUE_INTERNAL_H
#define HAMR_QUEUE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "util/hash.h"

/*
 * A DSN's id is "<id>-B<n>" and must fit in QUEUE_ID_MAX, so ids of
 * accepted (non-DSN) messages leave room for "-B" and ten digits.
 */
#define QUEUE_ACCEPT_ID_MAX (QUEUE_ID_MAX - 1 - 12)
/* last_error is cut at this many bytes. */
#define QUEUE_ERROR_MAX 512
#define QUEUE_HASH_MIN 64
/* Text of the per-recipient error after an administrative bounce. */
#define QUEUE_ADMIN_BOUNCE_TEXT "bounced by the administrator"

#define QUEUE_NOT_IN_HEAP UINT32_MAX
/* More recipients than any entry can carry; what a tally's bit field holds. */
#define QUEUE_ITEM_RCPTS_MAX ((1u << 29) - 1)

struct queue_domain;

/*
 * queue_dnode - an item's place in the heap of one of its recipient
 * domains. Heaps of dnodes are ordered by (key, the item's seq). The item
 * is found from the dnode (queue_dnode_item): a message with one domain
 * holds its dnode itself, a message with more holds an array of
 * queue_dnode_m, each of which names the item.
 */
struct queue_dnode {
    struct queue_domain *dom;
    uint64_t key;
    uint32_t pos;             /* index in its heap */
    uint32_t first_rcpt : 31; /* the item's first recipient in dom */
    uint32_t in_array : 1;    /* the dn of a queue_dnode_m, else an item's dx.dn1 */
};

struct queue_dnode_m {
    struct queue_dnode dn; /* first: a heap holds &dn */
    struct queue_item *it;
};

struct queue_dheap {
    struct queue_dnode **a;
    size_t len, cap;
};

/*
 * queue_domain - the messages with a recipient in one domain (the text
 * after the last '@', as the route sees it), in a heap on the earliest
 * next attempt of their PENDING recipients there (UINT64_MAX for none, a
 * held message, or one whose body this node lacks). A domain lives while a message has a recipient
 * there.
 */
struct queue_domain {
    char *name;
    uint64_t hash;
    struct queue_domain *hnext;       /* hash chain */
    struct queue_domain *prev, *next; /* q->domains */
    struct queue_dheap heap;
    /* queue_dom_link: its call number link_gen (q->link_gen, never reused,
     * unlike a seq or an address) gave this domain the dnode at link_k. */
    uint64_t link_gen;
    size_t link_k;
};

/*
 * queue_counts - what hamrctl status reports, kept by queue_link,
 * queue_unlink and queue_touch so that queue_get_stats costs O(1), not a walk
 * of every message. Derived like the scheduler indexes: never replicated,
 * never in a snapshot or the digest; a restore rebuilds them by linking.
 */
struct queue_counts {
    size_t held;
    size_t rcpts_pending;
    size_t rcpts_leased;
    size_t bytes;
    size_t missing; /* bodies this node lacks */
    size_t stage_msgs[QUEUE_STAGES];
    size_t stage_rcpts[QUEUE_STAGES];
};

/*
 * queue_tally - what one item adds to q->counts: its live recipients by
 * kind (with the message's held and missing flags and body_len that is
 * enough to rebuild its whole struct queue_counts share, queue_tally_counts).
 * Not kept: it is taken from the item when its share is added and again
 * when it is taken away, so whatever changes what it counts takes the
 * share away first (queue_untouch) and adds it back after (queue_touch).
 */
struct queue_tally {
    uint32_t fresh;    /* PENDING, never tried */
    uint32_t deferred; /* PENDING, tried */
    uint32_t active;   /* LEASED */
    bool held, missing;
};

/*
 * queue_item - a queued message with its links; msg is what callers see.
 *
 * One allocation holds the item, its recipients, its id and their
 * addresses (queue_item_new): a backlog of millions is mostly items, so
 * each costs what it must (queuemem in bench/ measures it). The other texts
 * are shared copies (queue_str.c).
 *
 * Besides the table and the acceptance list, an item sits in indexes for
 * the scheduler, derived from its state and kept up to date by queue_touch
 * after every change: the set of messages with a LEASED recipient, the heap
 * of each of its recipient domains (dnodes), and the expiry heap (keyed by
 * queue_item_exp_key: expires_at_ms of an unheld message with an open
 * recipient, exp_open, else UINT64_MAX). None is replicated: snapshots and
 * the digest never see them.
 */
struct queue_item {
    struct queue_msg msg;
    uint32_t seq;           /* acceptance order on this node: see struct queue */
    uint32_t leased_pos;    /* index in q->leased, or QUEUE_NOT_IN_HEAP */
    uint32_t exp_pos;       /* index in q->expiry, or QUEUE_NOT_IN_HEAP */
    uint32_t n_dnodes : 29; /* at most n_rcpts (below QUEUE_ITEM_RCPTS_MAX) */
    uint32_t exp_open : 1;  /* its expiry heap key is expires_at_ms, not UINT64_MAX */
    uint32_t many : 1;      /* the dnodes are in arrays (dx.many), not dx.dn1 */
    uint32_t counted : 1;   /* its share is in q->counts (see struct queue_tally) */
    /*
     * The domain index (queue_index.c): one dnode per distinct recipient
     * domain. Most messages have one, kept in dn1. A message with a second
     * domain gets arrays instead, in the same place: the dnodes, and rdn[i]
     * the index of recipient i's dnode. queue_item_dnode and queue_rdn read
     * either way.
     */
    union {
        struct queue_dnode dn1;
        struct {
            struct queue_dnode_m *dnodes;
            uint32_t *rdn;
        } many;
    } dx;
};

_Static_assert(offsetof(struct queue_item, msg) == 0, "an item starts with its message");

/* queue_msg_item - the item of a queued message (msg is its first member). */
static inline const struct queue_item *queue_msg_item(const struct queue_msg *m)
{
    return (const struct queue_item *)(const void *)m;
}

/* queue_item_dnode - the item's k-th dnode (k < n_dnodes). */
static inline struct queue_dnode *queue_item_dnode(const struct queue_item *it, size_t k)
{
    return it->many ? &it->dx.many.dnodes[k].dn : (struct queue_dnode *)(uintptr_t)&it->dx.dn1;
}

/* queue_dnode_item - the item a dnode belongs to. */
static inline struct queue_item *queue_dnode_item(const struct queue_dnode *dn)
{
    if (dn->in_array)
        return ((const struct queue_dnode_m *)(const void *)dn)->it;
    return (struct queue_item *)(uintptr_t)((const char *)dn - offsetof(struct queue_item, dx.dn1));
}

/* queue_rdn - the index of recipient i's dnode. */
static inline uint32_t queue_rdn(const struct queue_item *it, size_t i)
{
    return it->many ? it->dx.many.rdn[i] : 0;
}

/* queue_item_exp_key - its key in the expiry heap (see struct queue_item). */
static inline uint64_t queue_item_exp_key(const struct queue_item *it)
{
    return it->exp_open ? it->msg.expires_at_ms : UINT64_MAX;
}

/* queue_item_leased - it has a LEASED recipient (it is in q->leased). */
static inline bool queue_item_leased(const struct queue_item *it)
{
    return it->leased_pos != QUEUE_NOT_IN_HEAP;
}

/* queue_iheap - a heap of items on (exp_key, seq): the expiry heap. */
struct queue_iheap {
    struct queue_item **a;
    size_t len, cap;
};

/* queue_done - the id of a finished message, kept for dedupe (one allocation with its id). */
struct queue_done {
    struct queue_done *hnext; /* hash chain */
    struct queue_done *next;  /* insertion order */
    uint64_t done_at_ms;
    uint32_t hash;
    char id[];
};

struct queue {
    /*
     * The messages (queue.c), an insertion-ordered hash: order[] holds the
     * items in acceptance order, an item's seq being its index + 1, with
     * NULL where one has left until the next compaction (queue_reserve);
     * otab[] finds them by id (open addressing, linear probing) and holds
     * order indexes. A compaction keeps the order and renumbers seq, so
     * whatever is sorted by seq stays sorted.
     */
    struct queue_item **order;
    size_t olen, ocap, mcount; /* slots used (holes included), allocated; items */
    uint32_t *otab;
    size_t tcap, tused; /* otab's slots (a power of two), those not free */
    struct queue_done **dtab;
    size_t dcap, dcount;
    struct queue_done *dhead, *dtail;
    uint64_t last_timestamp_ms;
    uint64_t applied;
    struct queue_node nodes[QUEUE_NODES_MAX]; /* sorted by node_id */
    size_t n_nodes;
    uint32_t cluster_level; /* 1..format_max, never falls */
    uint32_t format_max;    /* highest level applied: this build's format */
    /* Scheduler indexes (see struct queue_item). leased_broken: the set
     * could not grow, so queue_foreach_leased walks every message instead. */
    struct queue_item **leased;
    size_t leased_len, leased_cap;
    bool leased_broken;
    bool index_off;             /* queue_set_sched_index(q, false): walk every message */
    struct queue_counts counts; /* sums of every counted item's share */
    /* The domain index (queue_index.c, used by queue_sched.c): domains by
     * name and in a list, and the expiry heap (key expires_at_ms of an
     * unheld message with an open recipient, else UINT64_MAX). dom_broken:
     * it could not grow and was given up; the scheduler walks the due heap. */
    struct queue_domain **dom_tab;
    size_t dom_cap, dom_count;
    struct queue_domain *domains;
    struct queue_iheap expiry;
    uint64_t link_gen; /* queue_dom_link's calls */
    bool dom_broken;
    /* Where bodies live (queue_set_body_ops); without, in memory. */
    struct queue_body_ops body_ops;
    bool has_body_ops;
    struct queue_lease_hook lease_hook; /* queue_set_lease_hook; zero: none */
    /* write_behind: the bodies in memory are those of mem_head and every
     * item after it in acceptance order (queue_body_spill goes in that
     * order, and new items come at the end); mem_bytes their sum. */
    struct queue_item *mem_head;
    size_t mem_bytes;
    /* The MTA-STS policy cache (queue_sts.c): sts_len policies sorted by
     * domain, sts_next_expiry the earliest expires_at_ms among them
     * (UINT64_MAX when empty), so most applies need not walk the table. */
    struct queue_sts_rec **sts;
    size_t sts_len, sts_cap;
    uint64_t sts_next_expiry;
};

/* queue.c: helpers */

/* queue_strdup - copy of s ("" for NULL); NULL on no memory. */
char *queue_strdup(const char *s);

/* queue_str.c: shared copies of repeated texts */

/* queue_str - a reference to the shared copy of s ("" for NULL); NULL on no memory. */
const char *queue_str(const char *s);

/* queue_str_opt - a reference for s, or NULL for NULL and "" (absent optional text). */
int queue_str_opt(const char *s, const char **out);

/* queue_str_put - give back a reference from queue_str (NULL: nothing). */
void queue_str_put(const char *s);

/* queue_str_ref - one more reference to a shared text (NULL: nothing); returns s. */
const char *queue_str_ref(const char *s);

/* queue_str_count - shared texts alive (tests). */
size_t queue_str_count(void);

/*
 * queue_trio - a shared record of three words (queue_str.c), read as what
 * it is: what an attempt left (three texts), or where a message came from
 * (two texts and the accepting node's id).
 */
union queue_trio {
    const char *t[3];
    struct queue_tried tried;
    struct queue_origin origin;
};
_Static_assert(sizeof(struct queue_origin) == sizeof(const char *[3]), "an origin is three words");
_Static_assert(sizeof(struct queue_tried) == sizeof(const char *[3]), "a tried is three texts");

/*
 * queue_trio_get - a reference to the shared record of these three texts
 * (each NULL or a reference from queue_str, which the caller keeps); NULL
 * in *out when all three are NULL. 0 or HAMR_ENOMEM.
 */
int queue_trio_get(const char *a, const char *b, const char *c, const union queue_trio **out);

/* queue_trio_put - give back a reference from queue_trio_get (NULL: nothing). */
void queue_trio_put(const union queue_trio *t);

/* queue_trio_count - shared records alive (tests). */
size_t queue_trio_count(void);

/* queue_tried_get - queue_trio_get of what an attempt left: error, TLS policy, TLS. */
int queue_tried_get(const char *error,
                    const char *tls_policy,
                    const char *tls,
                    const struct queue_tried **out);

/* queue_tried_put - give back a reference from queue_tried_get (NULL: nothing). */
void queue_tried_put(const struct queue_tried *t);

/*
 * queue_origin_get - a reference to the shared record of a client address,
 * HELO name (any texts: copied as shared texts first; NULL is "") and the
 * id of the node that accepted the message. 0, or HAMR_ENOMEM with NULL in
 * *out.
 */
int queue_origin_get(const char *client_addr,
                     const char *helo,
                     uint64_t accepted_by,
                     const struct queue_origin **out);

/* queue_origin_put - give back a reference from queue_origin_get (NULL: nothing). */
void queue_origin_put(const struct queue_origin *o);

/*
 * queue_sha256 - digest of n bytes; false only when libcrypto fails. The
 * one body hash: what an Enqueue's body_sha256 is made with (queue_entry.c)
 * and checked against (queue_apply.c), and what snapshots carry.
 */
bool queue_sha256(const uint8_t *p, size_t n, uint8_t out[QUEUE_SHA256_LEN]);

/* queue_id_ok - a queue id of acceptable length. */
bool queue_id_ok(const char *id, size_t max);

/* queue.c: items, tables and the done set */

/* queue_lease_free - release a lease and its texts (NULL: nothing); returns NULL. */
struct queue_lease *queue_lease_free(struct queue_lease *l);

/* queue_rcpt_set_lease - r holds l now (a lease it had is ended first). */
void queue_rcpt_set_lease(struct queue_rcpt *r, struct queue_lease *l);

/* queue_rcpt_clear_lease - end r's lease, if any; its tried stays with r. */
void queue_rcpt_clear_lease(struct queue_rcpt *r);

/* queue_rcpt_set_tried - replace what r's last attempt left, taking the reference t. */
void queue_rcpt_set_tried(struct queue_rcpt *r, const struct queue_tried *t);

/* queue_rcpt_lease_mut - r's lease to change, NULL when it has none. */
static inline struct queue_lease *queue_rcpt_lease_mut(struct queue_rcpt *r)
{
    return r->has_lease ? r->lt.lease : NULL;
}

/* queue_id_hash - the hash of an id that places its item in q->otab. */
static inline size_t queue_id_hash(const char *id)
{
    return (size_t)hash_fnv1a64_str(id);
}

/* queue_item_free - release a message and everything it owns; returns NULL. */
struct queue_item *queue_item_free(struct queue_item *it);

/* queue_item_new - an item with n_rcpts PENDING recipients due at received_at_ms. */
struct queue_item *queue_item_new(const char *id,
                                  const char *sender,
                                  char *const *rcpts,
                                  size_t n_rcpts,
                                  uint64_t received_at_ms);

/* queue_item_set_origin - replace where it came from (see queue_origin_get). */
int queue_item_set_origin(struct queue_item *it,
                          const char *client_addr,
                          const char *helo,
                          uint64_t accepted_by);
/*
 * queue_enqueue_ext - the envelope extensions of e (format 5) into it:
 * SMTPUTF8, REQUIRETLS, TLS-Required: No and the DSN parameters. 0,
 * HAMR_EINVAL (a text over its bound, a count that is not n_rcpts) or
 * HAMR_ENOMEM.
 */
int queue_enqueue_ext(struct queue_item *it, const Hamr__Enqueue *e);
/* queue_item_set_ext - the message's DSN parameters (see queue.c). */
int queue_item_set_ext(struct queue_item *it,
                       uint8_t ret,
                       const char *envid,
                       const uint32_t *notify,
                       size_t n_notify,
                       char *const *orcpt,
                       size_t n_orcpt);

/*
 * queue_item_keep_body - it's body (its body_sha256 already set): with body
 * ops put in the store (*body stays the caller's), else taken into memory
 * (*body becomes NULL); with write_behind ops also taken into memory unless
 * now (a restore). Non-zero: a store that failed; the apply must fail.
 */
int queue_item_keep_body(struct queue *q,
                         struct queue_item *it,
                         uint8_t **body,
                         size_t len,
                         bool now);

/* queue_item_release_body - it leaves the queue: its body's record is no longer needed. */
void queue_item_release_body(struct queue *q, struct queue_item *it);

/* queue_item_drop - an item that was never linked: its body released, then freed. NULL. */
struct queue_item *queue_item_drop(struct queue *q, struct queue_item *it);

/* queue_lookup - the item with this id, or NULL. */
struct queue_item *queue_lookup(const struct queue *q, const char *id);

/*
 * queue_reserve - room for n more queue_link calls, compacting the
 * acceptance order first when it is mostly holes; 0 or HAMR_ENOMEM. Only
 * between entries: a compaction renumbers seq (see struct queue).
 */
int queue_reserve(struct queue *q, size_t n);

/* queue_link - add an item at the end of the acceptance order (queue_reserve made room). Takes
 * ownership. */
void queue_link(struct queue *q, struct queue_item *it);

/* queue_item_after - the first item after seq in acceptance order (seq 0: the first), or NULL. */
static inline struct queue_item *queue_item_after(const struct queue *q, uint64_t seq)
{
    for (size_t i = (size_t)seq; i < q->olen; i++)
        if (q->order[i] != NULL)
            return q->order[i];
    return NULL;
}

/* QUEUE_FOREACH_ITEM - every item in acceptance order; the body must not free it. */
#define QUEUE_FOREACH_ITEM(q, it)                                    \
    for (struct queue_item *it = queue_item_after(q, 0); it != NULL; \
         it = queue_item_after(q, it->seq))

/* queue_done_new - a done record, not yet linked. */
struct queue_done *queue_done_new(const char *id, uint64_t done_at_ms);

/* queue_done_link - append a done record. Takes ownership. */
void queue_done_link(struct queue *q, struct queue_done *d);

/* queue_done_prune - drop done ids at least QUEUE_DONE_TTL_MS older than now_ms (queue.c). */
void queue_done_prune(struct queue *q, uint64_t now_ms);

/* queue_finish - a message leaves the queue; its id goes to the done set. Takes d. */
void queue_finish(struct queue *q, struct queue_item *it, struct queue_done *d);

/* queue_index.c: the scheduler indexes */

/* queue_wake - the earliest time the scheduler can find work in m (queue_index.c). */
uint64_t queue_wake(const struct queue_msg *m, bool *leased);

/* queue_leased_set - put it in or take it out of the set of leased messages. */
void queue_leased_set(struct queue *q, struct queue_item *it, bool leased);

/* queue_count - add (sign 1) or take away (sign -1) the share of it in q->counts. */
void queue_count(struct queue *q, struct queue_item *it, int sign);

/*
 * queue_untouch - before a change to what it counts (a recipient's state
 * or attempts, held, body_missing): take its share out of q->counts.
 * queue_touch puts it back.
 */
void queue_untouch(struct queue *q, struct queue_item *it);

/* queue_touch - it changed (recipients, held): bring the indexes and counts up to date. */
void queue_touch(struct queue *q, struct queue_item *it);

/* queue_dom_link - add a newly linked item to the index (gives the index up on no memory). */
void queue_dom_link(struct queue *q, struct queue_item *it);

/* queue_dom_unlink - out of the domain index, dnodes freed; domains left empty are freed. */
void queue_dom_unlink(struct queue *q, struct queue_item *it);

/* queue_dom_clear - free the domain index (the items are gone or going); it starts afresh. */
void queue_dom_clear(struct queue *q);

/* queue_dheap_less - a comes before b in a heap of the domain index. */
static inline bool queue_dheap_less(const struct queue_dnode *a, const struct queue_dnode *b)
{
    return a->key != b->key ? a->key < b->key : queue_dnode_item(a)->seq < queue_dnode_item(b)->seq;
}

/* queue_node.c: the node directory */

/*
 * queue_node_put - insert or replace the entry of ni->node_id, keeping the
 * order. level is the cluster level the entry is read at: below
 * QUEUE_LEVEL_SPREAD ni->zone is ignored (not even checked), as a build of
 * an older format does; from it on a zone that is not "" or a zone name is
 * HAMR_EINVAL.
 */
int queue_node_put(struct queue *q, const Hamr__NodeInfo *ni, uint32_t level, uint64_t ts);

/* queue_sts.c: the MTA-STS policy cache */

/*
 * queue_sts_rec - one cached policy in one allocation: the record, the
 * pattern pointers, then domain, id and patterns as NUL-terminated text.
 */
struct queue_sts_rec {
    struct queue_sts pub;
    char *mx_ptrs[]; /* pub.n_mx of them, then the texts */
};

/*
 * queue_sts_apply - a StsPolicy entry at ts (see queue.h): 0 with *status
 * 0 or HAMR_EINVAL (refused, nothing changed), or HAMR_ENOMEM with the
 * cache unchanged. The level check is the caller's.
 */
int queue_sts_apply(struct queue *q, const Hamr__StsPolicy *p, uint64_t ts, int *status);

/*
 * queue_sts_restore - add one policy of a snapshot to the cache of a new
 * queue, as checked as an entry: HAMR_ECORRUPT for a bad one, a repeated
 * domain or one too many, HAMR_ENOMEM. No pruning: the state is the
 * snapshot's.
 */
int queue_sts_restore(struct queue *q, const Hamr__StsPolicy *p);

/* queue_sts_clear - free every cached policy and the table. */
void queue_sts_clear(struct queue *q);

#endif
