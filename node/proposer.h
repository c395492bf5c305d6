/*
 * proposer.h - the one way a node gets an entry into the replicated log.
 *
 * Owns: the proposals in flight on this node and the cap on them, the
 * forwarding of a follower's entries to the leader, the resolution of an
 * unknown outcome by asking the leader for the entry's id, the re-proposal
 * that follows, and the leader's side of the peer channel (what a follower
 * forwards is proposed here).
 *
 * May call: only what struct proposer_ops hands it (raft, the leader's
 * address, the peer client, "is this id committed?", a clock). It includes
 * no consensus/ or queue/ header, so a unit test drives it with fakes.
 *
 * Contract (libuv's): a function that takes a callback and returns 0 calls
 * it exactly once, never from inside that call; on an error return it never
 * calls it. Callbacks run from proposer_tick, from raft's apply callback and
 * from the peer client's reply.
 *
 * What a caller is told (status of proposer_cb):
 *   0                   committed; result is the state machine's
 *   HAMR_ETIMEDOUT      not committed within the time given, and no earlier
 *                       attempt can still commit (or none could have)
 *   HAMR_EINDOUBT       given up while an earlier attempt may still commit
 *                       (only for entries with an id: never answer 4xx for a
 *                       message that may yet be delivered)
 *   HAMR_ENOQUORUM      no leader for three election timeouts
 *   HAMR_ESHUTDOWN      the proposer is stopping
 *   other               refused (e.g. by the leader's entry checks)
 */
#ifndef HAMR_NODE_PROPOSER_H
#define HAMR_NODE_PROPOSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/hamr.pb-c.h"

struct proposer;

/* proposer_cb - the end of a proposal: status, and the state machine's result. */
typedef void (*proposer_cb)(void *arg, int status, intptr_t result);

/* proposer_raft_cb - raft's answer to one append (status, fsm result). */
typedef void (*proposer_raft_cb)(void *arg, int status, void *result);

/* proposer_reply_cb - the leader's answer to a forwarded call (res valid if status 0). */
typedef void (*proposer_reply_cb)(void *arg, int status, const Hamr__PeerResult *res);

/*
 * proposer_ops - what the proposer needs from the node. Every function gets
 * `data`. In hamrd they are raft (consensus_*), the node directory and the
 * peer client; in a unit test, fakes.
 */
struct proposer_ops {
    void *data;
    /* now - a monotonic clock in ms (uv_now). */
    uint64_t (*now)(void *data);
    /* is_leader - leader with its election barrier applied: may append. */
    bool (*is_leader)(void *data);
    /* leader_id - the leader raft knows of, 0 if none. */
    uint64_t (*leader_id)(void *data);
    /* leader_addr - the peer address of leader (another node); 0 or HAMR_ENOTFOUND. */
    int (*leader_addr)(void *data, uint64_t leader, char *addr, size_t addrlen);
    /* alloc, free - buffers handed to append (raft's allocator). */
    void *(*alloc)(size_t len);
    void (*free)(void *buf);
    /* append - buf (from alloc) into raft; on 0 it is raft's and cb runs once. */
    int (*append)(void *data, uint8_t *buf, size_t len, proposer_raft_cb cb, void *arg);
    /*
     * forward - send msg (propose or query) to leader at addr (the peer
     * channel checks, with TLS, that addr is that node); on 0 cb runs once.
     */
    int (*forward)(void *data,
                   uint64_t leader,
                   const char *addr,
                   const Hamr__PeerMsg *msg,
                   uint64_t timeout_ms,
                   proposer_reply_cb cb,
                   void *arg);
    /* reply - answer a call that proposer_serve was given (exactly once per call). */
    void (*reply)(void *data, void *call, const Hamr__PeerResult *res);
    /* committed - is an entry with this id in the applied state? (leader, after its barrier) */
    bool (*committed)(void *data, const char *id);
    /* check - may this forwarded entry be proposed? 0 or the reason (logged, answered). */
    int (*check)(void *data, const uint8_t *entry, size_t len, uint64_t from_node);
};

struct proposer_config {
    unsigned max_inflight;     /* appends raft holds at once; more wait in a FIFO */
    uint64_t no_leader_ms;     /* without a leader this long: HAMR_ENOQUORUM */
    uint64_t serve_timeout_ms; /* bound on a forwarded entry's proposal here */
};

/* proposer_stats - counters for status and /metrics. */
struct proposer_stats {
    uint64_t forwarded; /* attempts sent to the leader */
    uint64_t resolved;  /* unknown outcomes resolved as committed by id */
    unsigned inflight;  /* appends raft holds now */
};

/* proposer_new - a proposer over ops (copied); NULL if out of memory. */
struct proposer *proposer_new(const struct proposer_ops *ops, const struct proposer_config *cfg);

/*
 * proposer_submit - replicate entry (malloc'd; taken in every case) within
 * timeout_ms, through leader changes, transfers and broken forwards. With an
 * id, an attempt whose outcome is unknown is resolved by asking the leader
 * whether the id is committed (yes: done; no: proposed again); without one
 * the entry must be harmless to apply twice and is simply proposed again.
 * cb runs exactly once if this returns 0.
 */
int proposer_submit(struct proposer *p,
                    uint8_t *entry,
                    size_t len,
                    const char *id,
                    uint64_t timeout_ms,
                    proposer_cb cb,
                    void *arg);

/*
 * proposer_send - one attempt, no retry: entry (borrowed, copied) into raft
 * here if this node leads, else forwarded to the leader. HAMR_ENOQUORUM if
 * there is no leader to send it to. A lost outcome is reported as
 * HAMR_ELEADERSHIPLOST or HAMR_ETIMEDOUT.
 */
int proposer_send(struct proposer *p,
                  const uint8_t *entry,
                  size_t len,
                  uint64_t timeout_ms,
                  proposer_cb cb,
                  void *arg);

/*
 * proposer_send_packed - proposer_send of buf, which comes from ops->alloc
 * (raft's allocator) and is taken in every case: on the leader it goes to
 * raft without a copy.
 */
int proposer_send_packed(struct proposer *p,
                         uint8_t *buf,
                         size_t len,
                         uint64_t timeout_ms,
                         proposer_cb cb,
                         void *arg);

/*
 * proposer_append_packed - like proposer_send_packed, but only into raft on
 * this node: HAMR_ENOTLEADER instead of a forward. For what only a leader
 * writes (leases, the scheduler's final outcomes, the cluster level), which
 * the new leader would refuse anyway.
 */
int proposer_append_packed(struct proposer *p,
                           uint8_t *buf,
                           size_t len,
                           uint64_t timeout_ms,
                           proposer_cb cb,
                           void *arg);

/*
 * proposer_serve - the leader's side of the peer channel: a follower's
 * propose or query, from node from_node. Answered through ops->reply,
 * now or when the proposal ends.
 */
void proposer_serve(struct proposer *p, void *call, uint64_t from_node, const Hamr__PeerMsg *msg);

/* proposer_tick - answer what passed its deadline and try waiting submits again. */
void proposer_tick(struct proposer *p);

/* proposer_expire - only the deadline part of proposer_tick. */
void proposer_expire(struct proposer *p);

/* proposer_leader_known - a leader exists that this node can reach (itself, or by peer). */
bool proposer_leader_known(struct proposer *p);

/* proposer_busy - anything waiting, forwarded or in raft. */
bool proposer_busy(const struct proposer *p);

/* proposer_get_stats - the counters. */
void proposer_get_stats(const struct proposer *p, struct proposer_stats *st);

/*
 * proposer_stop - refuse new work (HAMR_ESHUTDOWN) and answer every waiting
 * submit with it. Appends in raft and forwards in flight are answered when
 * raft and the peer client close.
 */
void proposer_stop(struct proposer *p);

/*
 * proposer_free - after proposer_stop, once raft and the peer client have
 * answered everything (they are closed). Returns NULL.
 */
struct proposer *proposer_free(struct proposer *p);

#endif
