/*
 * consensus_guard.h - what hamr puts between libraft 0.15 and its raft_io
 * to keep clear of a libraft bug (RAFT.md 4.7, docs/correctness.md bug 2).
 *
 * The bug: a follower whose log no longer holds entry 1 (it took or
 * installed a snapshot and compacted its log) and that receives an
 * AppendEntries with prev_log_index 0 appends those entries after its own
 * last entry, at the wrong indexes, then fails with "No log entries found at
 * index 1" and turns RAFT_UNAVAILABLE (or corrupts its in-memory log). A
 * 0.15 leader sends exactly that when its own log still starts at 1 (it has
 * no snapshot yet) and its next index for the follower is 1, which any
 * failed send to a follower it has not heard from in its term causes
 * (progressToProbe: next_index = match_index + 1 = 1).
 *
 * The guard wraps io->start so that every message goes through it before
 * raft. An AppendEntries from index 1 to a follower in that state is rebased
 * on the follower's snapshot: prev_log_index = the snapshot's index S,
 * prev_log_term = the term the leader's entry S carries, entries S+1.. only.
 * The leader's message says its log is entries 1..N; the rebased message
 * says no more than a part of that, so Raft's guarantees are unchanged. The
 * follower checks S's term against its snapshot as for any AppendEntries.
 *
 * Everything runs on the loop thread that runs raft.
 */
#ifndef HAMR_CONSENSUS_GUARD_H
#define HAMR_CONSENSUS_GUARD_H

#include <stdbool.h>
#include <stdint.h>

#include <raft.h>

/* consensus_guard - one raft_io's guard; the owner keeps it alive until raft is closed. */
struct consensus_guard {
    struct raft_io *io;
    int (*start)(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv);
    raft_io_recv_cb recv; /* raft's */
    uint64_t rebased;     /* AppendEntries from index 1 rebased on the snapshot */
    uint64_t dropped;     /* the same, that did not reach our snapshot: dropped */
    struct consensus_guard *next;
};

/* consensus_guard_install - wrap io (after raft_uv_init or raft_fixture_grow, before raft_start).
 */
void consensus_guard_install(struct consensus_guard *g, struct raft_io *io);
/* consensus_guard_remove - forget g (once raft is closed: no message arrives any more). */
void consensus_guard_remove(struct consensus_guard *g);

enum consensus_guard_verdict {
    CONSENSUS_GUARD_PASS,    /* raft can take the message as it is */
    CONSENSUS_GUARD_REBASED, /* rewritten in place: prev is the snapshot's index */
    CONSENSUS_GUARD_DROP,    /* entries released; do not hand the message to raft */
};

/*
 * consensus_guard_append - the check and rewrite of one AppendEntries that r
 * is about to receive. REBASED releases the entries before the snapshot's
 * (their batches, where no kept entry shares them) and keeps args->entries'
 * allocation; with nothing left it frees the array and leaves a heartbeat
 * (entries NULL, n_entries 0). DROP has released everything (entries NULL).
 */
enum consensus_guard_verdict consensus_guard_append(const struct raft *r,
                                                    struct raft_append_entries *args);

#endif
