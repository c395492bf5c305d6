/*
 * queue_sched.h - the leader's scheduling policy: which recipients are due,
 * grouped by next hop, within per-destination limits. Pure: reads the queue,
 * takes the time as an argument, changes nothing. The leader turns the work
 * it returns into a Lease entry; only recipients whose lease commits are
 * delivered.
 */
#ifndef HAMR_QUEUE_QUEUE_SCHED_H
#define HAMR_QUEUE_QUEUE_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/queue.h"

#define QUEUE_DEST_MAX 300

/*
 * queue_route - the destination key (next hop, e.g. "[10.0.0.1]:25") of a
 * recipient. It must depend on the domain only (the text after the last
 * '@'): a pick asks once per domain and uses the answer for every recipient
 * there.
 */
struct queue_route {
    void *data;
    /* Write the key into dest (NUL-terminated). Non-zero: no route (the recipient bounces). */
    int (*dest)(void *data, const char *rcpt, char *dest, size_t destlen);
    /*
     * Optional (NULL: none): the most messages dest may hold leases for at
     * once, when the caller limits it below max_per_dest (0: suspended, a
     * dead next hop; 1: one probe), or -1 for no limit of its own. Its
     * recipients still expire. Asked at most once per destination and pick
     * on the indexed path.
     */
    int (*dest_max)(void *data, const char *dest);
    /*
     * Optional (NULL: none): told, while a pick counts the live leases
     * (step 1), of each message counted at dest, with the node holding
     * that lease there: the caller's count per holder (node/relay_spread.c
     * bounds every node's connections to one next hop with it).
     */
    void (*leased)(void *data, const char *dest, uint64_t node);
};

struct queue_sched_limits {
    unsigned max_per_dest;    /* messages leased to one destination at once */
    size_t max_items;         /* work items per call */
    uint64_t self_node;       /* this leader's node id */
    const char *self_boot_id; /* this process's boot id: leases of self_node with
                                 another boot id died with that process */
};

enum queue_work_kind {
    QUEUE_WORK_DELIVER = 0, /* lease and deliver */
    QUEUE_WORK_EXPIRE,      /* queue lifetime over: Outcome EXPIRED, lease_id 0 */
    QUEUE_WORK_NOROUTE,     /* no route: Outcome BOUNCED, lease_id 0 */
};

struct queue_work {
    enum queue_work_kind kind;
    char queue_id[QUEUE_ID_MAX];
    char dest[QUEUE_DEST_MAX];
    uint32_t *rcpt_indexes;
    size_t n_rcpts;
};

/*
 * queue_sched_pick - due work at now_ms. A recipient is due when the message
 * is not held and it is PENDING with next_attempt_ms <= now_ms, or LEASED
 * under an expired lease or a lease of self_node with another boot id. One
 * work item per (message, destination). Destinations with max_per_dest
 * active leases get nothing more. Returns the number of items in *out
 * (array owned by the caller: queue_work_free), or a HAMR_E* code.
 */
int queue_sched_pick(const struct queue *q,
                     uint64_t now_ms,
                     const struct queue_sched_limits *lim,
                     const struct queue_route *route,
                     struct queue_work **out);

/* queue_work_free - free an array from queue_sched_pick; returns NULL. */
struct queue_work *queue_work_free(struct queue_work *w, size_t n);

/*
 * queue_sched_backoff - delay before attempt number attempts+1: min_ms
 * doubled per attempt, capped at max_ms (Postfix minimal/maximal_backoff_time).
 */
uint64_t queue_sched_backoff(uint32_t attempts, uint64_t min_ms, uint64_t max_ms);

#endif
