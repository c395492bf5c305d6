/*
 * queue.h - the replicated mail queue as a pure, deterministic state machine.
 *
 * Every node applies the same committed log entries (proto/hamr.proto Entry,
 * framed by proto/proto_frame.h) in the same order and reaches the same
 * state. No I/O, no clock, no random numbers: time comes only from
 * Entry.timestamp_ms (the proposer's clock) or as an argument.
 * queue_entry.h builds and packs each kind of entry below.
 *
 * Entries:
 *   Enqueue  - add a message. A known queue id (queued, or finished and still
 *              in the dedupe set) is a no-op (result.duplicate). A body whose
 *              SHA-256 does not match body_sha256 is refused (HAMR_ECORRUPT).
 *   Lease    - recipients PENDING (or LEASED under a lease that has expired at
 *              the entry's timestamp) become LEASED under item.lease_id for
 *              node_id until expires_at_ms. Others in the item are left alone.
 *   Outcome  - per recipient: applied only if the recipient is LEASED under
 *              outcome.lease_id (fencing) and, from QUEUE_LEVEL_SPREAD, by
 *              outcome.node_id (the holder); lease_id 0 applies to PENDING ones
 *              (expiry). DELIVERED/BOUNCED/EXPIRED are final; DEFERRED goes
 *              back to PENDING with attempts+1 and next_attempt_ms.
 *              BOUNCED/EXPIRED recipients of one Outcome produce exactly one
 *              RFC 3464 DSN to a non-null sender of a non-DSN message, enqueued
 *              in the same apply with queue id "<id>-B<n>".
 *              From cluster level QUEUE_LEVEL_TLS, a result that names a TLS
 *              policy sets the recipient's tls_policy and tls (the last
 *              attempt's outbound TLS, whatever its status); one without a
 *              policy (no attempt: expiry, no route) leaves them as they were.
 *   Admin    - DELETE (gone, no DSN), HOLD, RELEASE, FLUSH (pending due now),
 *              BOUNCE (pending fail, one DSN).
 *   NodeInfo - replace one node's entry in the node directory (below).
 *   ClusterLevel - raise the cluster feature level (below).
 *   StsPolicy - from cluster level QUEUE_LEVEL_STS: store a domain's MTA-STS
 *              policy in the replicated policy cache (below).
 *   LeaseRenew - from cluster level QUEUE_LEVEL_SPREAD: recipients still
 *              LEASED under an item's lease_id by node_id and boot_id run
 *              until expires_at_ms (never earlier than they did).
 * A message whose recipients are all final leaves the queue; its id stays in
 * the dedupe set for QUEUE_DONE_TTL_MS of entry time.
 */
#ifndef HAMR_QUEUE_QUEUE_H
#define HAMR_QUEUE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/zone.h"

#define QUEUE_ID_MAX 64
#define QUEUE_SHA256_LEN 32
/* The longest body an entry or a snapshot may carry: far beyond any message size limit. */
#define QUEUE_BODY_MAX UINT32_MAX
#define QUEUE_DONE_TTL_MS (24ull * 3600 * 1000)

enum queue_rcpt_state {
    QUEUE_RCPT_PENDING = 0,
    QUEUE_RCPT_LEASED,
    QUEUE_RCPT_DELIVERED,
    QUEUE_RCPT_BOUNCED,
    QUEUE_RCPT_EXPIRED,
};

/*
 * The texts of a message and its recipients are the queue's and read-only:
 * addr and id are kept with the item, the others are shared copies
 * (queue_str.c), one per distinct text however many messages hold it.
 *
 * A recipient holds only what every queued recipient needs; what a few
 * need lives elsewhere, so that a backlog of millions costs little:
 *   lease - its own allocation while the recipient is LEASED (NULL otherwise:
 *           an outcome or a new lease ends it); at most as many as
 *           deliveries in flight.
 *   tried - what the last attempt left (error, TLS), one shared record per
 *           distinct three texts (NULL: no attempt left any): a next hop
 *           that defers a million recipients with one error holds one.
 * queue_rcpt_lease and queue_rcpt_tried read them with the absent ones as
 * all zero.
 */
struct queue_lease {
    uint64_t id;
    uint64_t node;
    uint64_t term;
    uint64_t expires_ms;
    const char *boot_id;             /* NULL if none */
    const char *dest;                /* NULL if none */
    const struct queue_tried *tried; /* the recipient's, while it holds this lease */
};

struct queue_tried {
    const char *error;      /* NULL if none */
    const char *tls_policy; /* last attempt's TLS policy ("may", ...); NULL if unknown */
    const char *tls;        /* last attempt's TLS, or why none; NULL if unknown */
};

/*
 * A recipient points at one of the two: its lease while it has one (the
 * lease then holds its tried), else its tried (NULL: no attempt left a
 * text). The accessors below read either way.
 */
struct queue_rcpt {
    const char *addr;
    union {
        const struct queue_tried *tried; /* has_lease == 0 */
        struct queue_lease *lease;       /* has_lease == 1 */
    } lt;
    uint64_t next_attempt_ms;
    uint32_t attempts;
    enum queue_rcpt_state state : 8;
    unsigned has_lease : 1;
};

/* queue_origin - where a message came from: one shared record per distinct pair. */
struct queue_origin {
    const char *client_addr; /* "" if unknown */
    const char *helo;        /* "" if unknown */
    uint64_t accepted_by;    /* the node id that accepted it; 0 for a notice */
};

extern const struct queue_lease queue_lease_none;
extern const struct queue_tried queue_tried_none;

/* queue_rcpt_lease - r's lease, all zero when it has none. */
static inline const struct queue_lease *queue_rcpt_lease(const struct queue_rcpt *r)
{
    return r->has_lease ? r->lt.lease : &queue_lease_none;
}

/* queue_rcpt_tried - what r's last attempt left, all NULL when nothing. */
static inline const struct queue_tried *queue_rcpt_tried(const struct queue_rcpt *r)
{
    const struct queue_tried *t = r->has_lease ? r->lt.lease->tried : r->lt.tried;
    return t != NULL ? t : &queue_tried_none;
}

/*
 * QUEUE_LEVEL_TLS - the cluster feature level (format) from which Outcome
 * results carry the outbound TLS fields and apply copies them. Below it,
 * apply ignores them, so nodes of a build that does not know the fields
 * keep the same state (and digest) during a rolling upgrade.
 */
#define QUEUE_LEVEL_TLS 2
/* Bounds on what apply accepts from an entry (longer text is cut). */
#define QUEUE_TLS_POLICY_MAX 16
/*
 * QUEUE_LEVEL_STORE - the level from which snapshots leave bodies out
 * (Enqueue.body_len says how long each is): every node keeps bodies in its
 * own store and fetches what it lacks from a peer. Below it a snapshot
 * still carries every body, read back from the store, so that a node of an
 * older build that installs it has them.
 */
#define QUEUE_LEVEL_STORE 3
/*
 * QUEUE_LEVEL_STS - the level (format) of the StsPolicy entry kind and of
 * the policy cache in snapshots (see "The MTA-STS policy cache" below). A
 * leader proposes StsPolicy only once queue_cluster_level() >= 4: a build
 * of an older format stops at the entry (it does not know the kind), and
 * below the level this build refuses it (res->status HAMR_EVERSION), so the
 * cache is empty, and snapshots are those of an older build, until every
 * voter can apply it.
 */
#define QUEUE_LEVEL_STS 4
#define QUEUE_TLS_MAX 160
/*
 * QUEUE_LEVEL_EXT - the level (format) of the envelope extensions: SMTPUTF8,
 * REQUIRETLS, TLS-Required: No, and DSN's RET, ENVID, NOTIFY and ORCPT in
 * the Enqueue; dsn_passed in results; delay notices. Below it apply ignores
 * them all, so a message gets exactly what an older build would give it.
 */
#define QUEUE_LEVEL_EXT 5
/*
 * QUEUE_LEVEL_SPREAD - the level (format) from which any node delivers: the
 * LeaseRenew entry kind, the peer channel's PeerReport and NodeInfo.zone.
 * Below it only the leader holds leases, as an older build expects.
 */
#define QUEUE_LEVEL_SPREAD 6
/*
 * QUEUE_LEVEL_SNAPZ - the level (format) from which queue_snapshot writes
 * the compressed snapshot buffer (proto_frame.h, "HMSZ": LZ4 blocks, about
 * a quarter of the bytes with a large queue), which an older build cannot
 * read. queue_restore reads both at any level.
 */
#define QUEUE_LEVEL_SNAPZ 7
/* NOTIFY bits, as net/smtp_ext.h's SMTP_NOTIFY_* (the node checks they agree). */
#define QUEUE_NOTIFY_NEVER 0x01
#define QUEUE_NOTIFY_SUCCESS 0x02
#define QUEUE_NOTIFY_FAILURE 0x04
#define QUEUE_NOTIFY_DELAY 0x08
#define QUEUE_NOTIFY_ALL 0x0f
/* RET values, as enum smtp_ret. */
#define QUEUE_RET_FULL 1
#define QUEUE_RET_HDRS 2
/* Bounds on what apply keeps (RFC 3461 4.4 and 4.2). */
#define QUEUE_ENVID_MAX 100
#define QUEUE_ORCPT_MAX 500

/*
 * queue_ext - a message's DSN parameters, for a message that was given any
 * (one allocation with its texts; NULL in queue_msg otherwise). notify and
 * orcpt have n_rcpts entries.
 */
struct queue_ext {
    uint8_t ret;        /* 0 not given, QUEUE_RET_FULL or QUEUE_RET_HDRS */
    const char *envid;  /* decoded ENVID, NULL if none */
    uint8_t *notify;    /* QUEUE_NOTIFY_* bits per recipient, 0: not given */
    const char **orcpt; /* per recipient: "rfc822;addr" (decoded), NULL if none */
};

struct queue_msg {
    const char *id;
    const char *sender; /* "" for the null sender */
    struct queue_rcpt *rcpts;
    uint32_t n_rcpts;
    uint32_t dsn_count;
    /* One or the other (body_stored says which): read body with queue_msg_body. */
    union {
        uint8_t *body;     /* in memory (no body ops, or not yet written), else NULL */
        uint64_t body_loc; /* where the node's store has it (not replicated) */
    };
    uint8_t body_sha256[QUEUE_SHA256_LEN];
    uint32_t body_len;     /* wherever it is (at most QUEUE_BODY_MAX) */
    bool body_stored : 1;  /* body_loc is valid (body is not) */
    bool body_missing : 1; /* this node lacks the body (to fetch from a peer; not replicated) */
    bool body_8bit : 1;
    bool is_dsn : 1;
    bool held : 1;
    /* Format 5 (QUEUE_LEVEL_EXT): the envelope extensions. */
    bool smtputf8 : 1;           /* MAIL SMTPUTF8 */
    bool requiretls : 1;         /* MAIL REQUIRETLS */
    bool tls_optional : 1;       /* "TLS-Required: No" (and no REQUIRETLS) */
    bool delay_warned : 1;       /* its delay notice went out */
    const struct queue_ext *ext; /* DSN parameters, NULL if none were given */
    uint64_t received_at_ms;     /* timestamp of the Enqueue entry */
    uint64_t expires_at_ms;
    const struct queue_origin *origin; /* client address, HELO, accepting node; never NULL */
};

/* queue_msg_body - the body when it is in memory, else NULL. */
static inline const uint8_t *queue_msg_body(const struct queue_msg *m)
{
    return m->body_stored ? NULL : m->body;
}

struct queue_apply_result {
    int status;             /* 0, or a HAMR_E* code for a refused command */
    bool duplicate;         /* Enqueue of a known id */
    unsigned dsn_generated; /* DSNs enqueued by this entry */
    unsigned finished;      /* messages that left the queue */
    bool flushed;           /* an Admin FLUSH took effect (a message, or the whole queue) */
};

/*
 * queue_stage - where a recipient stands, as mailq and /metrics show it:
 * pending (never tried), deferred (tried, waiting to retry), active (leased
 * to a delivery), held (its message is on hold). A message is at the stage
 * of its most advanced live recipient (held, then active, then deferred).
 */
enum queue_stage {
    QUEUE_STAGE_PENDING = 0,
    QUEUE_STAGE_DEFERRED,
    QUEUE_STAGE_ACTIVE,
    QUEUE_STAGE_HELD,
    QUEUE_STAGES
};

struct queue_stats {
    size_t messages;
    size_t held;
    size_t rcpts_pending;
    size_t rcpts_leased;
    size_t bytes;                     /* sum of body sizes */
    uint64_t applied;                 /* entries applied */
    size_t stage_msgs[QUEUE_STAGES];  /* messages by queue_stage */
    size_t stage_rcpts[QUEUE_STAGES]; /* live recipients by queue_stage */
};

struct queue;

/* queue_new - an empty queue; NULL on no memory. */
struct queue *queue_new(void);

/*
 * queue_body_ops - where bodies live when they are not kept in memory: the
 * node's body store (queue/body_store.h). The queue stays deterministic:
 * what it replicates and digests is each body's length and SHA-256; where
 * a node keeps the bytes is its own business (body_loc, body_stored,
 * body_missing are never replicated). Without ops (tests, tools) bodies
 * are kept in memory as before.
 *
 *   put     - a body that arrived in an Enqueue, a DSN made by apply, or a
 *             snapshot below QUEUE_LEVEL_STORE: keep it, set *loc. Non-zero
 *             fails the apply: the node must stop (the body is still in raft's
 *             log, which is never compacted past a body not on disk).
 *   locate  - a message restored from a snapshot without its body: 0 and
 *             *loc if the store has it, else non-zero (the body is missing).
 *   release - the message left the queue (finished, deleted, or not in a
 *             snapshot that replaced the state).
 *   read    - up to n bytes of the body at loc from offset off, or a
 *             negative code: a DSN's copy of the original headers, and the
 *             bodies of a snapshot below QUEUE_LEVEL_STORE.
 *
 * write_behind: the bodies of Enqueues and DSNs stay in memory when they
 * apply, and queue_body_spill puts them later, oldest first: a message
 * delivered before then never touches the store. Snapshots carry the
 * bodies still in memory (whatever the level), so nothing leaves raft's
 * log without its body on disk, in the store or in the snapshot. A
 * snapshot's bodies are put at once when it is restored.
 */
struct queue_body_ops {
    void *arg;
    int (*put)(void *arg,
               const char *id,
               const uint8_t *body,
               size_t len,
               const uint8_t sha[QUEUE_SHA256_LEN],
               uint64_t *loc);
    int (*locate)(void *arg,
                  const char *id,
                  size_t len,
                  const uint8_t sha[QUEUE_SHA256_LEN],
                  uint64_t *loc);
    void (*release)(void *arg, const char *id, uint64_t loc);
    long long (*read)(void *arg, uint64_t loc, uint64_t off, uint8_t *buf, size_t n);
    bool write_behind;
};

/*
 * queue_lease_hook - what a node is told of leases while they apply (in
 * apply, so the callee must not apply or propose; it notes and acts later):
 *
 *   granted - a Lease gave recipients of queue_id under lease_id to this
 *             node (node_id) and this process (boot_id), until expires_at_ms.
 *   renewed - a LeaseRenew extended this node's lease_id of queue_id to
 *             expires_at_ms; asked_mono_ms is the holder's monotonic clock
 *             when it asked (its PeerReport), from which it counts its end.
 *   ended   - on every node: an Outcome ended a lease that node held (its
 *             attempt is over, so the leader counts a free delivery slot).
 *   lapsed  - on every node: a Lease took recipient rcpt of queue_id over
 *             from old_lease of old_node, which had run out without an
 *             Outcome. If that delivery had passed its final dot the
 *             recipient may get the message twice: the duplicate window.
 *             new_lease and new_node are 0 when an Outcome without a lease
 *             (expired, no route) ended the lapsed lease instead: then the
 *             recipient may have the message while its sender is told it
 *             failed.
 *
 * Any of them may be NULL. boot_id is borrowed and must outlive the queue.
 */
struct queue_lease_hook {
    void *arg;
    uint64_t node_id;
    const char *boot_id;
    void (*granted)(void *arg,
                    const char *queue_id,
                    uint64_t lease_id,
                    const char *dest,
                    uint64_t expires_at_ms);
    void (*renewed)(void *arg,
                    const char *queue_id,
                    uint64_t lease_id,
                    uint64_t expires_at_ms,
                    uint64_t asked_mono_ms);
    void (*ended)(void *arg, uint64_t node);
    void (*lapsed)(void *arg,
                   const char *queue_id,
                   const char *rcpt,
                   uint64_t old_lease,
                   uint64_t old_node,
                   uint64_t new_lease,
                   uint64_t new_node);
};

/* queue_set_lease_hook - tell h of leases from now on (copied); NULL: nobody. */
void queue_set_lease_hook(struct queue *q, const struct queue_lease_hook *h);

/* queue_set_body_ops - keep bodies through ops from now on (copied); before anything is applied. */
void queue_set_body_ops(struct queue *q, const struct queue_body_ops *ops);

/*
 * queue_body_found - the node has the body of id at loc now (fetched from a
 * peer): no longer missing. HAMR_ENOTFOUND if id is not queued (the caller
 * then releases loc itself).
 */
int queue_body_found(struct queue *q, const char *id, uint64_t loc);

/* queue_body_lost - the body of id in the store is unreadable or corrupt: missing now. */
int queue_body_lost(struct queue *q, const char *id);

/*
 * queue_body_head - up to n bytes from the start of m's body, from memory or
 * through the body ops' read: *out points at them, and *owned is a buffer
 * to free (NULL when *out is the queue's own memory). Returns how many; 0
 * for a body that is missing or cannot be read.
 */
size_t queue_body_head(const struct queue *q,
                       const struct queue_msg *m,
                       size_t n,
                       const uint8_t **out,
                       uint8_t **owned);

/*
 * queue_body_spill - with write_behind: put the bodies still in memory,
 * oldest first, while more than keep_bytes of them are in memory or the
 * oldest was received keep_ms or more before now_ms, and at most about
 * budget bytes in this call. *spilled (may be NULL) gets the bytes put.
 * 0, or put's error: the node must stop.
 */
int queue_body_spill(struct queue *q,
                     uint64_t now_ms,
                     uint64_t keep_ms,
                     size_t keep_bytes,
                     size_t budget,
                     size_t *spilled);

/* queue_body_memory - with write_behind: bytes of bodies in memory, not yet put (O(1)). */
size_t queue_body_memory(const struct queue *q);

/* queue_last_timestamp - the newest Entry.timestamp_ms applied (or restored): never falls. */
uint64_t queue_last_timestamp(const struct queue *q);

/* queue_bodies_missing - how many queued messages this node lacks the body of (O(1)). */
size_t queue_bodies_missing(const struct queue *q);

/* queue_free - release everything; returns NULL. */
struct queue *queue_free(struct queue *q);

/*
 * queue_apply - apply one framed Entry. Borrows buf. Returns 0 with *res
 * filled (res->status says whether the command took effect), or, for an
 * entry that cannot be decoded or is of an unknown kind or newer version,
 * HAMR_ECORRUPT / HAMR_EVERSION with the state unchanged: the caller must
 * stop (refuse loudly), never skip it. A queue playing an older build
 * (queue_set_format_max below QUEUE_LEVEL_STS) treats StsPolicy as such a
 * kind, as that build's decoder would.
 */
int queue_apply(struct queue *q, const uint8_t *buf, size_t len, struct queue_apply_result *res);

/*
 * queue_snapshot - serialise the whole state (framed Snapshot) into a buffer
 * from alloc (malloc if NULL). The caller owns *out.
 */
int queue_snapshot(const struct queue *q, void *(*alloc)(size_t), uint8_t **out, size_t *len);

/* queue_restore - replace the whole state with a snapshot. Borrows buf. On error q is unchanged. */
int queue_restore(struct queue *q, const uint8_t *buf, size_t len);

/* queue_digest - SHA-256 of the canonical state, as 64 hex chars + NUL in hex. */
void queue_digest(const struct queue *q, char hex[65]);

/* queue_find - the message with this id, or NULL. Borrowed until the next apply/restore. */
const struct queue_msg *queue_find(const struct queue *q, const char *id);

/* queue_contains - id is queued or in the dedupe set (was committed). */
bool queue_contains(const struct queue *q, const char *id);

/*
 * queue_foreach - call fn for every queued message in acceptance order;
 * stop early when fn returns non-zero. fn must not change the queue.
 */
void queue_foreach(const struct queue *q,
                   int (*fn)(void *arg, const struct queue_msg *m),
                   void *arg);

/*
 * queue_foreach_after - as queue_foreach, but starting after the message
 * with id after (from the first message when after is NULL or ""): what
 * hamrctl queue --after pages with. Finding the start is a table lookup, so
 * a page costs its own length, not the messages before it. Returns 0, or
 * HAMR_ENOTFOUND when after is no longer queued (fn is not called).
 */
int queue_foreach_after(const struct queue *q,
                        const char *after,
                        int (*fn)(void *arg, const struct queue_msg *m),
                        void *arg);

/*
 * queue_foreach_due - call fn, each once and in no particular order, for
 * every message the scheduler may find work in at now_ms: those whose
 * earliest due time (the first PENDING recipient's next attempt, the first
 * lease to lapse, the message's expiry; never for a held message) is at or
 * before now_ms, and every message with a LEASED recipient (a lease of a
 * dead process is due whatever its expiry). A min-heap kept on every change
 * makes this cost the due messages, not the whole queue: a backlog waiting
 * for its next attempt is not walked. Stops when fn returns non-zero; fn
 * must not change the queue.
 */
void queue_foreach_due(const struct queue *q,
                       uint64_t now_ms,
                       int (*fn)(void *arg, const struct queue_msg *m),
                       void *arg);

/* queue_foreach_leased - fn for every message with a LEASED recipient (as queue_foreach_due). */
void queue_foreach_leased(const struct queue *q,
                          int (*fn)(void *arg, const struct queue_msg *m),
                          void *arg);

/*
 * queue_set_sched_index - a test seam: with on false, queue_foreach_due and
 * queue_foreach_leased walk every message and filter, as they do when the
 * heap could not grow; the answers must be the same sets.
 */
void queue_set_sched_index(struct queue *q, bool on);

/*
 * queue_sched_index_check - a test seam: 0 when every message's due time and
 * lease flag match its state, the heap is ordered and complete, and the
 * leased list holds exactly the leased messages; -1 otherwise.
 */
int queue_sched_index_check(const struct queue *q);

/*
 * queue_size - how many messages are queued and the sum of their body
 * sizes, in O(1): both are kept as messages are linked and unlinked, so the
 * acceptance path may ask on every MAIL.
 */
void queue_size(const struct queue *q, size_t *messages, size_t *bytes);

/*
 * queue_full - the queue holds max_messages messages or more, or
 * max_bytes bytes of bodies or more; a limit of 0 is no limit. The limits
 * are the node's ([storage] queue_max_*), the counts the replicated state's,
 * so every node that has applied the same entries gives the same answer.
 */
bool queue_full(const struct queue *q, uint64_t max_messages, uint64_t max_bytes);

/* queue_get_stats - the counts of hamrctl status; O(1), kept up to date on every change. */
void queue_get_stats(const struct queue *q, struct queue_stats *st);

/*
 * The node directory: where each node's peer and control listeners are and
 * which version it runs, replicated by NodeInfo entries (a leader writes its
 * own after every election). An entry replaces the one of the same node.
 */
#define QUEUE_NODES_MAX 64
#define QUEUE_ADDR_MAX 64

struct queue_node {
    uint64_t node_id;
    char peer_address[QUEUE_ADDR_MAX];
    char control_address[QUEUE_ADDR_MAX];
    char version[32];
    uint32_t format_version_max;
    bool draining; /* hamrctl drain, as the node last published it */
    /*
     * [node] zone as the node published it, "" for none. Kept only from
     * QUEUE_LEVEL_SPREAD on: below it apply ignores NodeInfo.zone, as an
     * older build does, so the digest agrees across a rolling upgrade.
     */
    char zone[ZONE_NAME_MAX];
};

/* queue_node_find - the directory entry of node_id, or NULL. Borrowed until the next apply. */
const struct queue_node *queue_node_find(const struct queue *q, uint64_t node_id);

/* queue_node_list - the directory (sorted by node id); returns the count. */
size_t queue_node_list(const struct queue *q, const struct queue_node **out);

/*
 * The cluster feature level: the newest entry format every voter can apply,
 * replicated by ClusterLevel entries (proto/hamr.proto). Entry kinds added
 * after format 1 are proposed only once the level has reached their format,
 * which is what makes a rolling upgrade safe.
 *
 * A new queue, and a snapshot without the field, is at level 1, the format
 * every hamr build applies. A ClusterLevel entry above the current level
 * raises it; an equal or lower one is a no-op (res->status 0); the level
 * never falls. One above PROTO_FORMAT_VERSION_MAX of this build is refused
 * with res->status HAMR_EVERSION and the level left as it was. That is a
 * refused command, not a fatal error: the leader proposes only levels that
 * every voter reported (queue_cluster_level_possible), so only a node
 * outside the voters, or one downgraded behind the leader's back, meets it,
 * and such a node stops at the first entry of a newer kind anyway
 * (proto_entry_unpack refuses it). queue_restore refuses a snapshot whose
 * level is above this build's maximum (HAMR_EVERSION): that state may hold
 * what this build cannot follow.
 */

/*
 * queue_set_format_max - the highest level q applies and restores, in
 * place of PROTO_FORMAT_VERSION_MAX (0 counts as 1). A test seam: while
 * this build has a single format, it is the only way to show a level being
 * raised; tests also use it to play a build of an older format. hamrd never
 * calls it, since a value above the build's format would let q accept
 * levels whose entries it cannot apply. Kept across queue_restore.
 */
void queue_set_format_max(struct queue *q, uint32_t max);

/* queue_cluster_level - the current cluster feature level (1 or more). */
uint32_t queue_cluster_level(const struct queue *q);

/*
 * queue_cluster_level_possible - the highest level the leader may propose
 * for these voters: the minimum format_version_max over their NodeInfo
 * entries in the directory, or 0 when n_voters is 0 or any voter has no
 * entry yet (then nothing can be raised). Borrows voters for the call.
 * Pure: reads the directory only. The leader proposes
 * ClusterLevel{level = min(possible, PROTO_FORMAT_VERSION_MAX)} when that is
 * above queue_cluster_level().
 */
uint32_t queue_cluster_level_possible(const struct queue *q,
                                      const uint64_t *voters,
                                      size_t n_voters);

/*
 * The MTA-STS policy cache (RFC 8461): each domain's policy as the leader
 * fetched it, replicated by StsPolicy entries (from QUEUE_LEVEL_STS) and
 * kept in snapshots, so that a new leader enforces what the old one
 * learned. The table is keyed by domain (lower case, no trailing dot) and
 * holds at most QUEUE_STS_MAX policies.
 *
 * Apply (deterministic: the entry's timestamp is the only time):
 *   - Refused as a command (res->status, nothing changes): below
 *     QUEUE_LEVEL_STS (HAMR_EVERSION); a domain that is not a host name of
 *     at most QUEUE_STS_HOST_MAX octets, an id that is not 1 to
 *     QUEUE_STS_ID_MAX letters and digits, an unknown mode, more than
 *     QUEUE_STS_MX_MAX patterns or one that is not a host name or "*." and
 *     a host name (at most QUEUE_STS_HOST_MAX octets), a max_age above
 *     QUEUE_STS_MAX_AGE_MAX (all HAMR_EINVAL). Domain and patterns are
 *     taken in lower case and without one trailing dot.
 *   - Then every policy that has expired at the entry's timestamp ts
 *     (fetched_at_ms + max_age * 1000 < ts) is dropped.
 *   - The entry replaces the domain's policy only if its fetched_at_ms is
 *     not older than the one held: an older fetch applied late never wins
 *     (a no-op, res->status 0). A newer fetch that has itself expired at ts
 *     removes the domain's policy and is not kept.
 *   - A new domain in a full table: the policy that expires first goes,
 *     ties broken by domain (byte order), so every node picks the same; that
 *     may be the new policy itself (then it is not kept).
 * A policy found may have expired since the last StsPolicy entry: the
 * caller compares expires_at_ms with its own clock.
 */
#define QUEUE_STS_MAX 10000
#define QUEUE_STS_HOST_MAX 253
#define QUEUE_STS_ID_MAX 32
#define QUEUE_STS_MX_MAX 64
#define QUEUE_STS_MAX_AGE_MAX 31557600u

/* queue_sts_mode - the policy mode (hamr.proto StsPolicy.Mode, RFC 8461 3.2). */
enum queue_sts_mode {
    QUEUE_STS_NONE = 0,    /* "none": the domain withdrew its policy */
    QUEUE_STS_TESTING = 1, /* "testing": report, deliver anyway */
    QUEUE_STS_ENFORCE = 2, /* "enforce": only matching MX hosts with valid TLS */
};

/* queue_sts - one cached policy; every pointer is the queue's, read-only. */
struct queue_sts {
    const char *domain; /* lower case, no trailing dot */
    const char *id;     /* the TXT record's id */
    enum queue_sts_mode mode;
    const char *const *mx; /* n_mx patterns, lower case: "mx.example.com", "*.example.com" */
    size_t n_mx;
    uint32_t max_age_s;
    uint64_t fetched_at_ms;
    uint64_t expires_at_ms; /* fetched_at_ms + max_age_s * 1000 (UINT64_MAX if that overflows) */
};

/*
 * queue_sts_find - the cached policy of domain (any case, a trailing dot
 * ignored), or NULL. Borrowed until the next apply or restore.
 */
const struct queue_sts *queue_sts_find(const struct queue *q, const char *domain);

/* queue_sts_count - how many policies the cache holds (O(1)). */
size_t queue_sts_count(const struct queue *q);

/*
 * queue_sts_foreach - call fn for every cached policy in domain order; stop
 * early when fn returns non-zero. fn must not change the queue.
 */
void queue_sts_foreach(const struct queue *q,
                       int (*fn)(void *arg, const struct queue_sts *p),
                       void *arg);

#endif
