/*
 * queue_entry.h - the encoders of the log entries queue_apply decodes: one
 * function per kind builds the Entry from plain C arguments and packs it
 * (proto_entry_pack).
 *
 * Every function takes the entry's timestamp (the proposer's clock: queue/
 * never reads one) and the allocator of the packed buffer: NULL for
 * malloc, consensus_malloc when the buffer goes straight to raft. On
 * success *out (len bytes, a multiple of PROTO_ENTRY_ALIGN) is the
 * caller's, to be freed with the matching free. Arguments are borrowed for
 * the call; a NULL string is sent as "". Errors: HAMR_ENOMEM (nothing is
 * left allocated), HAMR_ETOOBIG (an entry protobuf-c cannot frame).
 */
#ifndef HAMR_QUEUE_QUEUE_ENTRY_H
#define HAMR_QUEUE_QUEUE_ENTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/queue.h"

/* queue_entry_enqueue_args - a message to add (queue.h, Enqueue). */
struct queue_entry_enqueue_args {
    const char *queue_id;
    const char *sender;       /* "" (or NULL) for the null sender */
    const char *const *rcpts; /* n_rcpts addresses */
    size_t n_rcpts;
    const uint8_t *body; /* body_len bytes; NULL when body_len is 0 */
    size_t body_len;
    bool body_8bit;
    bool is_dsn;
    uint64_t expires_at_ms;
    const char *client_addr;
    const char *helo;
    uint64_t accepted_by; /* node id */
    /*
     * Format 5 (QUEUE_LEVEL_EXT): written only by a node that took them
     * while the cluster was at that level. notify and orcpt: NULL, or
     * n_rcpts entries each (0 and "", never NULL, where a recipient gave
     * none).
     */
    bool smtputf8;
    bool requiretls;
    bool tls_optional;
    uint8_t ret;
    const char *envid;
    const uint32_t *notify;
    const char *const *orcpt;
};

/*
 * queue_entry_enqueue - an Enqueue entry. body_sha256 is the body's SHA-256,
 * made by the helper queue_apply checks it with, so the two cannot differ.
 */
int queue_entry_enqueue(const struct queue_entry_enqueue_args *a,
                        uint64_t ts,
                        void *(*alloc)(size_t),
                        uint8_t **out,
                        size_t *len);

/* queue_entry_lease_item - one message's recipients for one destination. */
struct queue_entry_lease_item {
    const char *queue_id;
    const uint32_t *rcpt_indexes; /* n_rcpts indexes into the message's recipients */
    size_t n_rcpts;
    uint64_t lease_id; /* never 0 (apply refuses it) */
    const char *destination;
};

/* queue_entry_lease_args - recipients handed to node_id until expires_at_ms. */
struct queue_entry_lease_args {
    uint64_t node_id;
    uint64_t term;
    uint64_t expires_at_ms;
    const char *boot_id;
    const struct queue_entry_lease_item *items;
    size_t n_items;
};

/* queue_entry_lease - a Lease entry. */
int queue_entry_lease(const struct queue_entry_lease_args *a,
                      uint64_t ts,
                      void *(*alloc)(size_t),
                      uint8_t **out,
                      size_t *len);

/* queue_entry_renew_item - one lease its holder still uses. */
struct queue_entry_renew_item {
    const char *queue_id;
    uint64_t lease_id;
};

/* queue_entry_lease_renew_args - node_id's (boot_id's) leases run until expires_at_ms. */
struct queue_entry_lease_renew_args {
    uint64_t node_id;
    const char *boot_id;
    uint64_t expires_at_ms;
    uint64_t asked_mono_ms;
    const struct queue_entry_renew_item *items;
    size_t n_items;
};

/* queue_entry_lease_renew - a LeaseRenew entry (format 6: from QUEUE_LEVEL_SPREAD only). */
int queue_entry_lease_renew(const struct queue_entry_lease_renew_args *a,
                            uint64_t ts,
                            void *(*alloc)(size_t),
                            uint8_t **out,
                            size_t *len);

/* queue_entry_status - what an attempt did to one recipient (hamr.proto RcptResult.Status). */
enum queue_entry_status {
    QUEUE_ENTRY_DELIVERED = 0,
    QUEUE_ENTRY_DEFERRED = 1,
    QUEUE_ENTRY_BOUNCED = 2,
    QUEUE_ENTRY_EXPIRED = 3,
};

/* queue_entry_result - one recipient's result. */
struct queue_entry_result {
    uint32_t rcpt_index;
    enum queue_entry_status status;
    uint32_t smtp_code; /* 0 if none */
    const char *diagnostic;
    const char *tls_policy; /* format 2: NULL (or "") below QUEUE_LEVEL_TLS */
    const char *tls;        /* format 2: as tls_policy */
    bool dsn_passed;        /* format 5: the next hop took NOTIFY (false below QUEUE_LEVEL_EXT) */
};

/* queue_entry_outcome_args - the results of one attempt (lease_id 0: expiry, no route). */
struct queue_entry_outcome_args {
    const char *queue_id;
    uint64_t lease_id;
    const struct queue_entry_result *results;
    size_t n_results;
    uint64_t next_attempt_ms; /* for DEFERRED results */
    const char *reporter;     /* Reporting-MTA of a DSN */
    uint64_t dsn_expires_at_ms;
    const char *remote;        /* the next hop that answered, or NULL */
    uint64_t delay_warning_ms; /* format 5: a delay notice is owed past this age; 0 none */
    uint64_t node_id;          /* format 6: the node that ran the attempt (the lease's holder) */
};

/* queue_entry_outcome - an Outcome entry. */
int queue_entry_outcome(const struct queue_entry_outcome_args *a,
                        uint64_t ts,
                        void *(*alloc)(size_t),
                        uint8_t **out,
                        size_t *len);

/* queue_entry_admin_op - an operator command (hamr.proto Admin.Op). */
enum queue_entry_admin_op {
    QUEUE_ENTRY_ADMIN_DELETE = 0,
    QUEUE_ENTRY_ADMIN_HOLD = 1,
    QUEUE_ENTRY_ADMIN_RELEASE = 2,
    QUEUE_ENTRY_ADMIN_FLUSH = 3,
    QUEUE_ENTRY_ADMIN_BOUNCE = 4,
};

/*
 * queue_entry_admin - an Admin entry. queue_id "" with FLUSH: every message.
 * reporter and dsn_expires_at_ms matter for BOUNCE only.
 */
int queue_entry_admin(enum queue_entry_admin_op op,
                      const char *queue_id,
                      const char *reporter,
                      uint64_t dsn_expires_at_ms,
                      uint64_t ts,
                      void *(*alloc)(size_t),
                      uint8_t **out,
                      size_t *len);

/* queue_entry_node_info_args - one node's directory entry (queue.h, struct queue_node). */
struct queue_entry_node_info_args {
    uint64_t node_id;
    const char *peer_address;
    const char *control_address;
    const char *version;
    uint32_t format_version_max;
    bool draining;
    const char *zone; /* [node] zone; NULL or "" for none (format 6, NodeInfo.zone) */
};

/* queue_entry_node_info - a NodeInfo entry. */
int queue_entry_node_info(const struct queue_entry_node_info_args *a,
                          uint64_t ts,
                          void *(*alloc)(size_t),
                          uint8_t **out,
                          size_t *len);

/*
 * queue_entry_sts_args - one domain's MTA-STS policy as fetched (queue.h,
 * struct queue_sts; hamr.proto StsPolicy). Not checked here: apply refuses
 * a policy out of bounds (res->status HAMR_EINVAL).
 */
struct queue_entry_sts_args {
    const char *domain; /* the policy domain; apply keys it in lower case, without trailing dot */
    const char *id;     /* the _mta-sts TXT record's id */
    enum queue_sts_mode mode;
    const char *const *mx; /* n_mx MX patterns (a NULL one is sent as ""); NULL when n_mx is 0 */
    size_t n_mx;
    uint32_t max_age_s;     /* at most QUEUE_STS_MAX_AGE_MAX */
    uint64_t fetched_at_ms; /* when the fetch completed, by the fetcher's clock */
};

/*
 * queue_entry_sts - a StsPolicy entry (format 4). Propose it only once
 * queue_cluster_level() >= QUEUE_LEVEL_STS: a node of an older build stops
 * at it, and below the level apply refuses it.
 */
int queue_entry_sts(const struct queue_entry_sts_args *a,
                    uint64_t ts,
                    void *(*alloc)(size_t),
                    uint8_t **out,
                    size_t *len);

/* queue_entry_cluster_level - a ClusterLevel entry raising the feature level to level. */
int queue_entry_cluster_level(uint32_t level,
                              uint64_t ts,
                              void *(*alloc)(size_t),
                              uint8_t **out,
                              size_t *len);

#endif
