/*
 * test_append_below_snapshot.c - a follower whose log starts after its
 * snapshot, sent an AppendEntries from index 1 (docs/correctness.md bug 2,
 * consensus/consensus_guard.h, RAFT.md 4.7).
 *
 * libraft 0.15 takes such a message wrongly: "No log entries found at index
 * 1", RAFT_UNAVAILABLE (hamrd stops), or under the fixture a SIGSEGV in
 * removeSuffix. A 0.15 leader sends it when its own log still starts at 1
 * (no snapshot yet) and a send to that follower failed while it had heard
 * nothing from it in its term: progressToProbe sets next_index to
 * match_index + 1 = 1.
 *
 *   - test_follower_survives: that sequence on raft's fixture with the queue
 *     as FSM and consensus_guard on every server's io: the follower rebases
 *     the message on its snapshot, stays a follower and catches up. Without
 *     the guard the same steps crash the process.
 *   - test_follower_snapshots_between: the follower still holds entry 1 when
 *     it is back, takes the first message from index 1, snapshots, and the
 *     next one from index 1 finds its log past the snapshot (the crashes of
 *     docs/correctness.md bug 1 fit this sequence). Without the guard: a
 *     SIGSEGV in removeSuffix.
 *   - the others: consensus_guard_append on messages built here (what it
 *     passes, how it rewrites, what it frees: ASan checks the frees).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <raft.h>
#include <raft/fixture.h>

#include "consensus/consensus_guard.h"
#include "cluster_fixture.h"

/* ------------------------------------------------------------------------
 * On the fixture
 * ------------------------------------------------------------------------ */

static struct consensus_guard guards[RAFT_FIXTURE_MAX_SERVERS];

static void guard_server(struct cluster *c, unsigned i)
{
    consensus_guard_install(&guards[i], cluster_raft(c, i)->io);
}

/* propose_n - n small Enqueues on leader, each committed before the next. */
static void propose_n(struct cluster *c, unsigned leader, unsigned n, unsigned *seq)
{
    for (unsigned k = 0; k < n; k++) {
        char id[32];
        snprintf(id, sizeof(id), "Q%06u", (*seq)++);
        committed(c, cluster_propose_enqueue(c, leader, id, 1, NULL));
    }
}

static void test_follower_survives(void **state)
{
    (void)state;
    struct cluster *c = cluster_new_with(3, guard_server);
    cluster_elect(c, 0);

    /* Server 1 snapshots early and keeps 2 entries behind it: entry 1 leaves
     * its log. The others keep the defaults (threshold 1024): no snapshot,
     * their logs start at 1, as on a cluster younger than snapshot_bytes. */
    const unsigned victim = 1;
    struct raft *v = cluster_raft(c, victim);
    raft_set_snapshot_threshold(v, 8);
    raft_set_snapshot_trailing(v, 2);
    unsigned seq = 0;
    propose_n(c, 0, 12, &seq);
    cluster_sync(c, 0, 0x7);
    assert_true(v->log.snapshot.last_index >= 8);
    assert_true(v->log.offset > 0); /* entry 1 is gone from the victim's log */

    /* Cut the victim off and have a new term's leader: it has heard nothing
     * from the victim in this term (match index 0), and its sends to it fail,
     * each setting its next index for the victim to 1. */
    isolate(c, victim, ISOLATE_DISCONNECT);
    raft_fixture_depose(&c->f);
    unsigned l = wait_other_leader(c, victim, 10 * ELECTION_MS);
    assert_true(l < c->n);
    struct raft *lr = cluster_raft(c, l);
    assert_int_equal(lr->log.snapshot.last_index, 0); /* the leader's log starts at 1 */
    propose_n(c, l, 3, &seq);
    raft_fixture_step_until_elapsed(&c->f, 3 * ELECTION_MS);

    /* Back: the leader sends it entries 1..N with prev_log_index 0. */
    heal(c, victim, ISOLATE_DISCONNECT);
    raft_fixture_step_until_elapsed(&c->f, 3 * ELECTION_MS);
    assert_int_not_equal(raft_state(v), RAFT_UNAVAILABLE);
    assert_true(guards[victim].rebased >= 1);
    assert_int_equal(guards[victim].dropped, 0);

    /* It takes what follows like any follower. */
    propose_n(c, l, 2, &seq);
    cluster_sync(c, l, 0x7);
    assert_int_equal(raft_state(v), RAFT_FOLLOWER);
    assert_int_equal(raft_last_index(v), raft_last_index(lr));
    cluster_assert_same(c, 0x7);
    cluster_check(c);

    cluster_free(c);
    for (unsigned i = 0; i < 3; i++)
        consensus_guard_remove(&guards[i]);
}

/*
 * The same from a follower that still holds entry 1 when it comes back: the
 * leader's first message from index 1 is taken, the follower applies it and
 * snapshots (hamrd: its first snapshot, soon after a restart that replayed
 * its log), and the next message from index 1, sent before the first was
 * acknowledged, arrives at a log that starts after the snapshot.
 */
static void test_follower_snapshots_between(void **state)
{
    (void)state;
    struct cluster *c = cluster_new_with(3, guard_server);
    cluster_elect(c, 0);
    const unsigned victim = 1;
    struct raft *v = cluster_raft(c, victim);
    unsigned seq = 0;
    propose_n(c, 0, 12, &seq);
    cluster_sync(c, 0, 0x7);
    assert_int_equal(v->log.offset, 0);

    isolate(c, victim, ISOLATE_DISCONNECT);
    raft_fixture_depose(&c->f);
    unsigned l = wait_other_leader(c, victim, 10 * ELECTION_MS);
    assert_true(l < c->n);
    struct raft *lr = cluster_raft(c, l);
    assert_int_equal(lr->log.snapshot.last_index, 0);
    propose_n(c, l, 3, &seq);
    raft_fixture_step_until_elapsed(&c->f, 3 * ELECTION_MS);

    /* A slow link from the leader: several heartbeats from index 1 in flight
     * at once; the victim snapshots as soon as it applies. */
    raft_set_snapshot_threshold(v, 4);
    raft_set_snapshot_trailing(v, 2);
    raft_fixture_set_network_latency(&c->f, l, 350);
    heal(c, victim, ISOLATE_DISCONNECT);
    raft_fixture_step_until_elapsed(&c->f, 3 * ELECTION_MS);
    assert_int_not_equal(raft_state(v), RAFT_UNAVAILABLE);
    assert_true(v->log.offset > 0);
    assert_true(guards[victim].rebased >= 1);

    raft_fixture_set_network_latency(&c->f, l, 15);
    propose_n(c, l, 2, &seq);
    cluster_sync(c, l, 0x7);
    assert_int_equal(raft_state(v), RAFT_FOLLOWER);
    cluster_assert_same(c, 0x7);
    cluster_check(c);

    cluster_free(c);
    for (unsigned i = 0; i < 3; i++)
        consensus_guard_remove(&guards[i]);
}

/* ------------------------------------------------------------------------
 * consensus_guard_append on built messages
 * ------------------------------------------------------------------------ */

/* A follower's raft as far as the guard looks at it. */
static void follower(struct raft *r, raft_index offset, raft_index snap, raft_term snap_term)
{
    memset(r, 0, sizeof(*r));
    r->state = RAFT_FOLLOWER;
    r->current_term = 5;
    r->log.offset = offset;
    r->log.snapshot.last_index = snap;
    r->log.snapshot.last_term = snap_term;
}

/* Entries 1..n of term t(i); batches of `per` entries each (0: all in one). */
static void message(struct raft_append_entries *a, unsigned n, unsigned per)
{
    memset(a, 0, sizeof(*a));
    a->term = 5;
    a->entries = raft_calloc(n, sizeof(*a->entries));
    assert_non_null(a->entries);
    a->n_entries = n;
    void *batch = NULL;
    for (unsigned i = 0; i < n; i++) {
        if (i == 0 || (per != 0 && i % per == 0)) {
            batch = raft_malloc(64 * (per != 0 ? per : n));
            assert_non_null(batch);
        }
        unsigned slot = per != 0 ? i % per : i;
        a->entries[i].term = 1 + i / 4;
        a->entries[i].type = RAFT_COMMAND;
        a->entries[i].batch = batch;
        a->entries[i].buf.base = (char *)batch + 64 * slot;
        a->entries[i].buf.len = 8;
        memset(a->entries[i].buf.base, (int)i, 8);
    }
}

/* What raft would do with a message it is done with (entryBatchesDestroy). */
static void release(struct raft_append_entries *a)
{
    void *last = NULL;
    for (unsigned i = 0; i < a->n_entries; i++) {
        if (a->entries[i].batch != last) {
            last = a->entries[i].batch;
            raft_free(last);
        }
    }
    raft_free(a->entries);
}

static void test_pass(void **state)
{
    (void)state;
    struct raft r;
    struct raft_append_entries a;

    follower(&r, 0, 8, 2); /* entry 1 still held (trailing covers it) */
    message(&a, 10, 0);
    assert_int_equal(consensus_guard_append(&r, &a), CONSENSUS_GUARD_PASS);
    assert_int_equal(a.n_entries, 10);
    release(&a);

    follower(&r, 6, 8, 2); /* from index 4 on: not from 1 */
    message(&a, 10, 0);
    a.prev_log_index = 3;
    assert_int_equal(consensus_guard_append(&r, &a), CONSENSUS_GUARD_PASS);
    release(&a);

    message(&a, 10, 0); /* a stale term: raft refuses it before the entries */
    a.term = 4;
    assert_int_equal(consensus_guard_append(&r, &a), CONSENSUS_GUARD_PASS);
    release(&a);

    struct raft_append_entries hb = {.term = 5}; /* a heartbeat from 0 */
    assert_int_equal(consensus_guard_append(&r, &hb), CONSENSUS_GUARD_PASS);
}

static void test_rebase(void **state)
{
    (void)state;
    struct raft r;
    struct raft_append_entries a;

    /* One batch: entries 1..20, snapshot at 9 (term 3), log from 7. */
    follower(&r, 6, 9, 3);
    message(&a, 20, 0);
    void *batch = a.entries[0].batch;
    assert_int_equal(consensus_guard_append(&r, &a), CONSENSUS_GUARD_REBASED);
    assert_int_equal(a.prev_log_index, 9);
    assert_int_equal(a.prev_log_term, 3); /* entry 9's term in the message */
    assert_int_equal(a.n_entries, 11);
    for (unsigned i = 0; i < a.n_entries; i++) {
        assert_ptr_equal(a.entries[i].batch, batch);
        assert_int_equal(((unsigned char *)a.entries[i].buf.base)[0], 9 + i); /* index 10 + i */
        assert_int_equal(a.entries[i].term, 1 + (9 + i) / 4);
    }
    release(&a);

    /* Batches of 4: those wholly before the snapshot are freed here, the one
     * that straddles it stays with the kept entries (ASan: no leak, no double free). */
    follower(&r, 6, 9, 3);
    message(&a, 20, 4);
    assert_int_equal(consensus_guard_append(&r, &a), CONSENSUS_GUARD_REBASED);
    assert_int_equal(a.n_entries, 11);
    assert_int_equal(((unsigned char *)a.entries[0].buf.base)[0], 9);
    release(&a);

    /* Everything the message holds is in the snapshot: a heartbeat at its index. */
    follower(&r, 6, 12, 3);
    message(&a, 12, 0);
    assert_int_equal(consensus_guard_append(&r, &a), CONSENSUS_GUARD_REBASED);
    assert_int_equal(a.prev_log_index, 12);
    assert_int_equal(a.prev_log_term, 3);
    assert_int_equal(a.n_entries, 0);
    assert_null(a.entries);

    /* It stops before the snapshot: dropped, and freed here. */
    follower(&r, 6, 15, 4);
    message(&a, 12, 4);
    assert_int_equal(consensus_guard_append(&r, &a), CONSENSUS_GUARD_DROP);
    assert_int_equal(a.n_entries, 0);
    assert_null(a.entries);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_follower_survives),
        cmocka_unit_test(test_follower_snapshots_between),
        cmocka_unit_test(test_pass),
        cmocka_unit_test(test_rebase),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
