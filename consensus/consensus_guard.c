/*
 * consensus_guard.c - AppendEntries from index 1 to a follower whose log
 * starts after its snapshot (see consensus_guard.h, RAFT.md 4.7).
 *
 * Where 0.15 goes wrong (follower, src/replication.c, replicationAppend):
 *   - checkLogMatchingProperty accepts prev_log_index 0 without a look;
 *   - deleteConflictingEntries asks logTermOf(1), which is 0 for a
 *     compacted index, reads it as "no entry here yet" and stops;
 *   - every entry of the message is then appended after the last one the
 *     follower holds, and logAcquire(1) finds none of them: "No log entries
 *     found at index 1", RAFT_SHUTDOWN, and the truncation that follows
 *     works on a log that no longer matches its indexes (a SIGSEGV in
 *     removeSuffix under the fixture).
 *
 * The entries of a received message share their buffers (entry.batch: one
 * per message from raft_uv's decoder); raft frees the batches and the array
 * once it is done with them. What the guard drops it releases itself, and
 * never a batch a kept entry still points into.
 */
#include "consensus/consensus_guard.h"

#include <stddef.h>
#include <string.h>

#include "util/common.h"
#include "util/log.h"

static struct consensus_guard *guards; /* every installed guard; loop thread only */

static struct consensus_guard *consensus_guard_of(struct raft_io *io)
{
    for (struct consensus_guard *g = guards; g != NULL; g = g->next)
        if (g->io == io)
            return g;
    return NULL;
}

/* consensus_guard_shared - whether batch is the batch of one of entries[from, to). */
static bool consensus_guard_shared(const struct raft_entry *entries,
                                   size_t from,
                                   size_t to,
                                   const void *batch)
{
    for (size_t i = from; i < to; i++)
        if (entries[i].batch == batch)
            return true;
    return false;
}

/* consensus_guard_release - free what entries[0, k) hold that entries[k, n) do not. */
static void consensus_guard_release(struct raft_entry *entries, size_t k, size_t n)
{
    for (size_t i = 0; i < k; i++) {
        void *batch = entries[i].batch;
        if (batch == NULL) {
            raft_free(entries[i].buf.base); /* an entry with a buffer of its own */
            continue;
        }
        /* Each batch once: skip one an earlier dropped entry already had. */
        if (consensus_guard_shared(entries, 0, i, batch))
            continue;
        if (!consensus_guard_shared(entries, k, n, batch))
            raft_free(batch);
    }
}

enum consensus_guard_verdict consensus_guard_append(const struct raft *r,
                                                    struct raft_append_entries *args)
{
    if (args->prev_log_index != 0 || args->n_entries == 0)
        return CONSENSUS_GUARD_PASS;
    /* Entry 1 still in the log (never compacted): 0.15 compares terms from
     * there and copes. A stale term is refused before any entry is looked
     * at, and an unavailable raft only frees the message. */
    if (r->log.offset == 0 || args->term < r->current_term || r->state == RAFT_UNAVAILABLE)
        return CONSENSUS_GUARD_PASS;

    raft_index snap = r->log.snapshot.last_index; /* >= offset > 0 */
    size_t n = args->n_entries;
    if (snap == 0 || snap > n) {
        /* The message stops before our snapshot: nothing in it we lack, and no
         * index of ours to anchor it on. A leader's log reaches past
         * everything committed, so this is a stale or odd message: drop it and
         * let the leader send again. */
        consensus_guard_release(args->entries, n, n);
        raft_free(args->entries);
        args->entries = NULL;
        args->n_entries = 0;
        return CONSENSUS_GUARD_DROP;
    }
    size_t k = (size_t)snap; /* entries[k - 1] is index snap */
    raft_term prev_term = args->entries[k - 1].term;
    consensus_guard_release(args->entries, k, n);
    if (k == n) {
        raft_free(args->entries);
        args->entries = NULL;
    } else {
        memmove(args->entries, args->entries + k, (n - k) * sizeof(*args->entries));
    }
    args->n_entries = (unsigned)(n - k);
    args->prev_log_index = snap;
    args->prev_log_term = prev_term;
    return CONSENSUS_GUARD_REBASED;
}

/* consensus_guard_recv - every message raft's io delivers, before raft. */
static void consensus_guard_recv(struct raft_io *io, struct raft_message *msg)
{
    struct consensus_guard *g = consensus_guard_of(io);
    HAMR_ASSERT(g != NULL);
    if (msg->type == RAFT_IO_APPEND_ENTRIES) {
        struct raft *r = io->data;
        unsigned n = msg->append_entries.n_entries;
        switch (consensus_guard_append(r, &msg->append_entries)) {
            case CONSENSUS_GUARD_PASS:
                break;
            case CONSENSUS_GUARD_REBASED:
                g->rebased++;
                log_info(
                    "consensus event=append_rebased id=%llu leader=%llu entries=%u "
                    "prev=%llu kept=%u first_held=%llu",
                    (unsigned long long)r->id, (unsigned long long)msg->server_id, n,
                    (unsigned long long)msg->append_entries.prev_log_index,
                    msg->append_entries.n_entries, (unsigned long long)r->log.offset + 1);
                break;
            case CONSENSUS_GUARD_DROP:
                g->dropped++;
                log_warn(
                    "consensus event=append_dropped id=%llu leader=%llu entries=%u snapshot=%llu",
                    (unsigned long long)r->id, (unsigned long long)msg->server_id, n,
                    (unsigned long long)r->log.snapshot.last_index);
                return;
        }
    }
    g->recv(io, msg);
}

/* consensus_guard_start - raft_start's io->start: hand the io our receive callback. */
static int consensus_guard_start(struct raft_io *io,
                                 unsigned msecs,
                                 raft_io_tick_cb tick,
                                 raft_io_recv_cb recv)
{
    struct consensus_guard *g = consensus_guard_of(io);
    HAMR_ASSERT(g != NULL);
    g->recv = recv;
    return g->start(io, msecs, tick, consensus_guard_recv);
}

void consensus_guard_install(struct consensus_guard *g, struct raft_io *io)
{
    memset(g, 0, sizeof(*g));
    g->io = io;
    g->start = io->start;
    io->start = consensus_guard_start;
    g->next = guards;
    guards = g;
}

void consensus_guard_remove(struct consensus_guard *g)
{
    for (struct consensus_guard **p = &guards; *p != NULL; p = &(*p)->next) {
        if (*p == g) {
            *p = g->next;
            break;
        }
    }
    g->io = NULL; /* the io itself may be gone: leave it alone */
}
