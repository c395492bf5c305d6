/*
 * test_proposer.c - "250 only after the commit", as a unit test of the
 * proposer (node/proposer.c) driven by fakes of raft, the leader's address,
 * the peer client and the applied state. Time is the fake's clock.
 *
 * Each case names one behaviour: a commit; leadership lost before and after
 * the append; a forward to a leader that dies; an unknown outcome resolved
 * both ways; timeouts (with and without an earlier attempt in doubt; no
 * leader at all); the in-flight cap; a stop with proposals pending; the
 * leader's side of the peer channel. In every case the caller's callback
 * must run exactly once, never from inside the call that started it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/err.h"
#include "proto/hamr.pb-c.h"
#include "node/proposer.h"

#define FAKE_MAX 16

/* fake_append - one entry handed to the fake raft. */
struct fake_append {
    uint8_t *buf;
    size_t len;
    proposer_raft_cb cb;
    void *arg;
    bool done;
};

/* fake_forward - one call sent to the fake peer client. */
struct fake_forward {
    uint64_t node; /* the node the channel is to check addr belongs to */
    char addr[64];
    bool query;  /* a query (else a propose) */
    char id[64]; /* the query's id */
    size_t len;  /* the proposed entry's length */
    proposer_reply_cb cb;
    void *arg;
    bool done;
};

struct fake {
    uint64_t now;
    bool leader;        /* this node leads (barrier applied) */
    uint64_t leader_id; /* who leads, 0 if nobody */
    bool addr_known;    /* the leader's NodeInfo is in the directory */
    int append_rv;      /* what append returns */
    int check_rv;       /* what check returns */
    const char *committed[FAKE_MAX];
    size_t n_committed;
    struct fake_append appends[FAKE_MAX];
    size_t n_appends;
    struct fake_forward forwards[FAKE_MAX];
    size_t n_forwards;
    Hamr__PeerResult replies[FAKE_MAX];
    void *reply_calls[FAKE_MAX];
    size_t n_replies;
    int checked_from; /* node id given to check */
    bool in_call;     /* inside a proposer call: no callback may run */
};

/* rec - what a caller's callback saw. */
struct rec {
    struct fake *f;
    int calls;
    int status;
    intptr_t result;
};

static uint64_t fake_now(void *data)
{
    return ((struct fake *)data)->now;
}

static bool fake_is_leader(void *data)
{
    return ((struct fake *)data)->leader;
}

static uint64_t fake_leader_id(void *data)
{
    return ((struct fake *)data)->leader_id;
}

static int fake_leader_addr(void *data, uint64_t leader, char *addr, size_t addrlen)
{
    struct fake *f = data;
    if (!f->addr_known)
        return HAMR_ENOTFOUND;
    snprintf(addr, addrlen, "127.0.0.1:%u", (unsigned)(7200 + leader));
    return 0;
}

static int fake_append(void *data, uint8_t *buf, size_t len, proposer_raft_cb cb, void *arg)
{
    struct fake *f = data;
    if (f->append_rv != 0)
        return f->append_rv;
    assert_true(f->n_appends < FAKE_MAX);
    f->appends[f->n_appends++] = (struct fake_append){.buf = buf, .len = len, .cb = cb, .arg = arg};
    return 0;
}

static int fake_forward(void *data,
                        uint64_t node,
                        const char *addr,
                        const Hamr__PeerMsg *msg,
                        uint64_t timeout_ms,
                        proposer_reply_cb cb,
                        void *arg)
{
    struct fake *f = data;
    (void)timeout_ms;
    assert_true(f->n_forwards < FAKE_MAX);
    /* The node named is the one whose address was looked up (fake_leader_addr). */
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%u", (unsigned)(7200 + node));
    assert_true(node != 0);
    assert_string_equal(addr, want);
    struct fake_forward *w = &f->forwards[f->n_forwards++];
    memset(w, 0, sizeof(*w));
    w->node = node;
    snprintf(w->addr, sizeof(w->addr), "%s", addr);
    w->query = msg->body_case == HAMR__PEER_MSG__BODY_QUERY;
    if (w->query)
        snprintf(w->id, sizeof(w->id), "%s", msg->query->queue_id);
    else
        w->len = msg->propose->entry.len;
    w->cb = cb;
    w->arg = arg;
    return 0;
}

static void fake_reply(void *data, void *call, const Hamr__PeerResult *res)
{
    struct fake *f = data;
    assert_true(f->n_replies < FAKE_MAX);
    f->reply_calls[f->n_replies] = call;
    f->replies[f->n_replies++] = *res;
}

static bool fake_committed(void *data, const char *id)
{
    struct fake *f = data;
    for (size_t i = 0; i < f->n_committed; i++)
        if (strcmp(f->committed[i], id) == 0)
            return true;
    return false;
}

static int fake_check(void *data, const uint8_t *entry, size_t len, uint64_t from_node)
{
    struct fake *f = data;
    (void)entry;
    (void)len;
    f->checked_from = (int)from_node;
    return f->check_rv;
}

/* rec_cb - a caller's callback: once, never inside a call. */
static void rec_cb(void *arg, int status, intptr_t result)
{
    struct rec *r = arg;
    assert_false(r->f->in_call);
    r->calls++;
    r->status = status;
    r->result = result;
}

static struct proposer *fake_proposer(struct fake *f, unsigned max_inflight)
{
    struct proposer_ops ops = {
        .data = f,
        .now = fake_now,
        .is_leader = fake_is_leader,
        .leader_id = fake_leader_id,
        .leader_addr = fake_leader_addr,
        .alloc = malloc,
        .free = free,
        .append = fake_append,
        .forward = fake_forward,
        .reply = fake_reply,
        .committed = fake_committed,
        .check = fake_check,
    };
    struct proposer_config cfg = {
        .max_inflight = max_inflight,
        .no_leader_ms = 3000,
        .serve_timeout_ms = 5000,
    };
    f->now = 1000;
    struct proposer *p = proposer_new(&ops, &cfg);
    assert_non_null(p);
    return p;
}

/* entry_new - an 8-octet entry (malloc'd, as proposer_submit takes it). */
static uint8_t *entry_new(size_t *len)
{
    uint8_t *e = malloc(8);
    assert_non_null(e);
    memcpy(e, "ENTRY\0\0\0", 8);
    *len = 8;
    return e;
}

/* submit - proposer_submit of a fresh entry, checking no callback runs inside. */
static int submit(struct proposer *p,
                  struct fake *f,
                  const char *id,
                  uint64_t timeout_ms,
                  struct rec *r)
{
    size_t len;
    uint8_t *e = entry_new(&len);
    r->f = f;
    f->in_call = true;
    int rv = proposer_submit(p, e, len, id, timeout_ms, rec_cb, r);
    f->in_call = false;
    return rv;
}

/* tick - proposer_tick at now + ms. */
static void tick(struct proposer *p, struct fake *f, uint64_t ms)
{
    f->now += ms;
    proposer_tick(p);
}

/* raft_answer - the fake raft answers append i (frees its buffer as raft would). */
static void raft_answer(struct fake *f, size_t i, int status, intptr_t result)
{
    assert_true(i < f->n_appends);
    struct fake_append *a = &f->appends[i];
    assert_false(a->done);
    a->done = true;
    free(a->buf);
    a->buf = NULL;
    a->cb(a->arg, status, (void *)result);
}

/* peer_answer - the fake leader answers forward i (status: the channel's). */
static void peer_answer(struct fake *f,
                        size_t i,
                        int status,
                        int res_status,
                        int64_t result,
                        bool found)
{
    assert_true(i < f->n_forwards);
    struct fake_forward *w = &f->forwards[i];
    assert_false(w->done);
    w->done = true;
    Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
    res.status = res_status;
    res.result = result;
    res.found = found;
    w->cb(w->arg, status, status == 0 ? &res : NULL);
}

/* become_follower - this node follows leader, whose address is known. */
static void become_follower(struct fake *f, uint64_t leader)
{
    f->leader = false;
    f->leader_id = leader;
    f->addr_known = true;
}

static void become_leader(struct fake *f)
{
    f->leader = true;
    f->leader_id = 1;
}

/* fixture - a fake and a proposer over it; max_inflight from the setup used. */
struct fixture {
    struct fake f;
    struct proposer *p;
};

static int fixture_setup(void **state, unsigned max_inflight)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->p = fake_proposer(&fx->f, max_inflight);
    *state = fx;
    return 0;
}

static int setup(void **state)
{
    return fixture_setup(state, 32);
}

static int setup_cap1(void **state)
{
    return fixture_setup(state, 1);
}

static int setup_cap2(void **state)
{
    return fixture_setup(state, 2);
}

/* teardown - stop (idempotent) and free: ASan reports anything the proposer leaked. */
static int teardown(void **state)
{
    struct fixture *fx = *state;
    proposer_stop(fx->p);
    proposer_free(fx->p);
    free(fx);
    return 0;
}

static void test_commit_on_leader(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_leader(f);
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 5000, &r), 0);
    assert_int_equal(f->n_appends, 1);
    assert_int_equal(r.calls, 0); /* nothing before the commit */
    tick(p, f, 100);
    assert_int_equal(r.calls, 0);
    raft_answer(f, 0, 0, 7);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.result, 7);
    assert_false(proposer_busy(p));
}

static void test_commit_forwarded(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_follower(f, 2);
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 5000, &r), 0);
    assert_int_equal(f->n_appends, 0);
    assert_int_equal(f->n_forwards, 1);
    assert_false(f->forwards[0].query);
    assert_string_equal(f->forwards[0].addr, "127.0.0.1:7202");
    assert_int_equal(r.calls, 0);
    peer_answer(f, 0, 0, 0, 0, false);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    struct proposer_stats st;
    proposer_get_stats(p, &st);
    assert_int_equal(st.forwarded, 1);
}

/* Refused before it reached the log: proposed again, no question asked. */
static void test_leadership_lost_before_append(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_leader(f);
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 5000, &r), 0);
    raft_answer(f, 0, HAMR_ENOTLEADER, 0);
    assert_int_equal(r.calls, 0); /* not told: it will be tried again */
    become_follower(f, 2);
    tick(p, f, 100);
    assert_int_equal(f->n_forwards, 1);
    assert_false(f->forwards[0].query); /* known not in the log: no query */
    peer_answer(f, 0, 0, 0, 0, false);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
}

/*
 * lost_after_append - Q1 appended on this node, leadership lost before the
 * commit, node 2 leads now: the next tick asks node 2 whether Q1 is committed.
 */
static void lost_after_append(struct proposer *p, struct fake *f, struct rec *r)
{
    become_leader(f);
    assert_int_equal(submit(p, f, "Q1", 5000, r), 0);
    raft_answer(f, 0, HAMR_ELEADERSHIPLOST, 0);
    assert_int_equal(r->calls, 0);
    become_follower(f, 2);
    tick(p, f, 100);
    assert_int_equal(f->n_forwards, 1);
    assert_true(f->forwards[0].query);
    assert_string_equal(f->forwards[0].id, "Q1");
}

/* Appended, then leadership lost: the new leader is asked; it has it. */
static void test_leadership_lost_after_append_committed(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    struct rec r = {0};
    lost_after_append(p, f, &r);
    peer_answer(f, 0, 0, 0, 0, true);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    assert_int_equal(f->n_forwards, 1); /* not proposed again */
    struct proposer_stats st;
    proposer_get_stats(p, &st);
    assert_int_equal(st.resolved, 1);
}

/* Appended, then leadership lost: the new leader lacks it, so it is proposed again. */
static void test_leadership_lost_after_append_absent(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    struct rec r = {0};
    lost_after_append(p, f, &r);
    peer_answer(f, 0, 0, 0, 0, false);
    assert_int_equal(r.calls, 0);
    assert_int_equal(f->n_forwards, 2);
    assert_false(f->forwards[1].query);
    assert_int_equal(f->forwards[1].len, 8);
    peer_answer(f, 1, 0, 0, 0, false);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
}

/* This node leads again after losing it: it looks in its own state. */
static void test_in_doubt_resolved_here(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_leader(f);
    struct rec r1 = {0}, r2 = {0};
    assert_int_equal(submit(p, f, "Q1", 5000, &r1), 0);
    assert_int_equal(submit(p, f, "Q2", 5000, &r2), 0);
    raft_answer(f, 0, HAMR_ELEADERSHIPLOST, 0);
    raft_answer(f, 1, HAMR_ELEADERSHIPLOST, 0);
    f->committed[f->n_committed++] = "Q1";
    tick(p, f, 100);
    assert_int_equal(r1.calls, 1); /* Q1 is in the state: done */
    assert_int_equal(r1.status, 0);
    assert_int_equal(r2.calls, 0); /* Q2 is not: appended again */
    assert_int_equal(f->n_appends, 3);
    raft_answer(f, 2, 0, 0);
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r2.status, 0);
    assert_int_equal(f->n_forwards, 0);
}

/* The leader a forward went to is replaced: asked of the new one at once. */
static void test_forward_to_leader_that_dies(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_follower(f, 2);
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 60000, &r), 0);
    assert_int_equal(f->n_forwards, 1);
    become_follower(f, 3);
    tick(p, f, 100); /* abandoned at once and asked of node 3 */
    assert_int_equal(f->n_forwards, 2);
    assert_true(f->forwards[1].query);
    assert_string_equal(f->forwards[1].addr, "127.0.0.1:7203");
    /* The dead leader's connection breaks late: ignored. */
    peer_answer(f, 0, HAMR_ECONNECT, 0, 0, false);
    assert_int_equal(r.calls, 0);
    peer_answer(f, 1, 0, 0, 0, false); /* node 3 lacks it */
    assert_int_equal(f->n_forwards, 3);
    assert_false(f->forwards[2].query);
    assert_string_equal(f->forwards[2].addr, "127.0.0.1:7203");
    peer_answer(f, 2, 0, 0, 0, false);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
}

/* A broken connection is an unknown outcome, not a failure. */
static void test_broken_forward_is_unknown(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_follower(f, 2);
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 60000, &r), 0);
    peer_answer(f, 0, HAMR_ECONNECT, 0, 0, false);
    assert_int_equal(r.calls, 0);
    tick(p, f, 100);
    assert_int_equal(f->n_forwards, 2);
    assert_true(f->forwards[1].query);
    peer_answer(f, 1, 0, 0, 0, true);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
}

/* Time runs out while an attempt may still commit: in doubt, never a plain failure. */
static void test_timeout_in_doubt(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_leader(f);
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 1000, &r), 0);
    tick(p, f, 999); /* raft has not answered yet */
    assert_int_equal(r.calls, 0);
    tick(p, f, 1); /* nor by the deadline */
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, HAMR_EINDOUBT);
    raft_answer(f, 0, 0, 0); /* late: dropped */
    assert_int_equal(r.calls, 1);
}

/* Without an id there is nothing to ask: time out plainly; proposed again meanwhile. */
static void test_timeout_without_id(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_leader(f);
    struct rec r = {0};
    assert_int_equal(submit(p, f, NULL, 1000, &r), 0);
    raft_answer(f, 0, HAMR_ELEADERSHIPLOST, 0);
    tick(p, f, 100);
    assert_int_equal(f->n_appends, 2); /* harmless twice: simply again */
    assert_int_equal(f->n_forwards, 0);
    tick(p, f, 1000);
    tick(p, f, 100);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, HAMR_ETIMEDOUT);
    raft_answer(f, 1, 0, 0);
    assert_int_equal(r.calls, 1);
}

/* Never sent anywhere: a timeout is a plain timeout (the client may retry). */
static void test_timeout_never_sent(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    f->leader_id = 2; /* a leader, but its address is not known yet */
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 500, &r), 0);
    assert_int_equal(f->n_forwards, 0);
    tick(p, f, 100);
    tick(p, f, 500);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, HAMR_ETIMEDOUT);
}

/* No leader for no_leader_ms: cut off. */
static void test_no_leader(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 60000, &r), 0);
    for (int i = 0; i < 29; i++)
        tick(p, f, 100);
    assert_int_equal(r.calls, 0);
    tick(p, f, 100);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, HAMR_ENOQUORUM);
}

/* A leader appears in time: the waiting submit goes out. */
static void test_leader_appears(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    struct rec r = {0};
    assert_int_equal(submit(p, f, "Q1", 60000, &r), 0);
    tick(p, f, 100);
    become_follower(f, 2);
    tick(p, f, 100);
    assert_int_equal(f->n_forwards, 1);
    peer_answer(f, 0, 0, 0, 0, false);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
}

/* At most max_inflight in raft; the rest wait their turn, in order. */
static void test_inflight_cap(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_leader(f);
    struct rec r[4] = {{0}};
    for (int i = 0; i < 4; i++)
        assert_int_equal(submit(p, f, "Q", 5000, &r[i]), 0);
    assert_int_equal(f->n_appends, 2);
    struct proposer_stats st;
    proposer_get_stats(p, &st);
    assert_int_equal(st.inflight, 2);
    raft_answer(f, 0, 0, 1);
    assert_int_equal(f->n_appends, 3);
    assert_int_equal(r[0].calls, 1);
    raft_answer(f, 2, 0, 3); /* the third, handed over when the first ended */
    assert_int_equal(r[2].calls, 1);
    assert_int_equal(r[2].result, 3);
    assert_int_equal(f->n_appends, 4);
    raft_answer(f, 1, 0, 2);
    raft_answer(f, 3, 0, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, 0);
        assert_int_equal(r[i].result, i + 1);
    }
}

/* One waiting for a place past its deadline is never handed to raft. */
static void test_inflight_cap_deadline(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_leader(f);
    struct rec r1 = {0}, r2 = {.f = f};
    assert_int_equal(submit(p, f, NULL, 5000, &r1), 0);
    f->in_call = true;
    uint8_t e[8] = {0};
    assert_int_equal(proposer_send(p, e, sizeof(e), 100, rec_cb, &r2), 0);
    f->in_call = false;
    f->now += 200;
    proposer_expire(p);
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r2.status, HAMR_ETIMEDOUT);
    raft_answer(f, 0, 0, 0);
    assert_int_equal(r1.calls, 1);
    assert_int_equal(f->n_appends, 1); /* the expired one never reached raft */
}

/* Stop: waiting submits end at once; those in raft end when raft closes. */
static void test_stop_with_pending(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    become_leader(f);
    struct rec in_raft = {0}, waiting = {0}, after = {0};
    assert_int_equal(submit(p, f, "Q1", 5000, &in_raft), 0);
    f->leader = false;
    f->leader_id = 0;
    assert_int_equal(submit(p, f, "Q2", 5000, &waiting), 0);
    assert_true(proposer_busy(p));
    proposer_stop(p);
    assert_int_equal(waiting.calls, 1);
    assert_int_equal(waiting.status, HAMR_ESHUTDOWN);
    assert_int_equal(in_raft.calls, 0);
    assert_int_equal(submit(p, f, "Q3", 5000, &after), HAMR_ESHUTDOWN);
    assert_int_equal(after.calls, 0);
    raft_answer(f, 0, HAMR_ESHUTDOWN, 0); /* raft closing */
    assert_int_equal(in_raft.calls, 1);
    assert_int_equal(in_raft.status, HAMR_EINDOUBT); /* it may have been appended */
    assert_false(proposer_busy(p));
}

/* Packed entries: raft takes the buffer itself on the leader; a follower forwards and frees it. */
static void test_packed(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    struct rec r1 = {.f = f}, r2 = {.f = f}, r3 = {.f = f};
    become_leader(f);
    uint8_t *buf = malloc(16);
    assert_non_null(buf);
    assert_int_equal(proposer_send_packed(p, buf, 16, 1000, rec_cb, &r1), 0);
    assert_int_equal(f->n_appends, 1);
    assert_ptr_equal(f->appends[0].buf, buf); /* no copy */
    raft_answer(f, 0, 0, 0);
    assert_int_equal(r1.calls, 1);
    become_follower(f, 2);
    buf = malloc(16);
    assert_non_null(buf);
    assert_int_equal(proposer_send_packed(p, buf, 16, 1000, rec_cb, &r2), 0);
    assert_int_equal(f->n_forwards, 1);
    assert_int_equal(f->forwards[0].len, 16);
    peer_answer(f, 0, 0, 0, 0, false);
    assert_int_equal(r2.calls, 1);
    /* What only a leader writes is never forwarded. */
    buf = malloc(16);
    assert_non_null(buf);
    assert_int_equal(proposer_append_packed(p, buf, 16, 1000, rec_cb, &r3), HAMR_ENOTLEADER);
    assert_int_equal(f->n_forwards, 1);
    assert_int_equal(r3.calls, 0);
}

/* The leader's side: a follower's query and proposal; refusals. */
static void test_serve(void **state)
{
    struct fixture *fx = *state;
    struct fake *f = &fx->f;
    struct proposer *p = fx->p;
    int call1, call2, call3, call4;
    Hamr__PeerQuery q = HAMR__PEER_QUERY__INIT;
    q.queue_id = "Q1";
    Hamr__PeerMsg qm = HAMR__PEER_MSG__INIT;
    qm.body_case = HAMR__PEER_MSG__BODY_QUERY;
    qm.query = &q;
    proposer_serve(p, &call1, 2, &qm); /* not the leader */
    assert_int_equal(f->n_replies, 1);
    assert_int_equal(f->replies[0].status, HAMR_ENOTLEADER);
    become_leader(f);
    f->committed[f->n_committed++] = "Q1";
    proposer_serve(p, &call2, 2, &qm);
    assert_int_equal(f->n_replies, 2);
    assert_int_equal(f->replies[1].status, 0);
    assert_true(f->replies[1].found);
    assert_int_equal(f->replies[1].leader_id, 1);

    uint8_t e[16] = {1, 2, 3};
    Hamr__PeerPropose pp = HAMR__PEER_PROPOSE__INIT;
    pp.entry.data = e;
    pp.entry.len = sizeof(e);
    Hamr__PeerMsg pm = HAMR__PEER_MSG__INIT;
    pm.body_case = HAMR__PEER_MSG__BODY_PROPOSE;
    pm.propose = &pp;
    f->check_rv = HAMR_EPROTO;
    proposer_serve(p, &call3, 3, &pm);
    assert_int_equal(f->checked_from, 3);
    assert_int_equal(f->n_appends, 0); /* refused entries never reach raft */
    assert_int_equal(f->n_replies, 3);
    assert_int_equal(f->replies[2].status, HAMR_EPROTO);
    f->check_rv = 0;
    proposer_serve(p, &call4, 3, &pm);
    assert_int_equal(f->n_appends, 1);
    assert_int_equal(f->appends[0].len, sizeof(e));
    assert_memory_equal(f->appends[0].buf, e, sizeof(e));
    assert_int_equal(f->n_replies, 3); /* answered only after the commit */
    raft_answer(f, 0, 0, 5);
    assert_int_equal(f->n_replies, 4);
    assert_ptr_equal(f->reply_calls[3], &call4);
    assert_int_equal(f->replies[3].status, 0);
    assert_int_equal(f->replies[3].result, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit_on_leader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_forwarded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leadership_lost_before_append, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leadership_lost_after_append_committed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_leadership_lost_after_append_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_in_doubt_resolved_here, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forward_to_leader_that_dies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broken_forward_is_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_in_doubt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_without_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_never_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_leader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leader_appears, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inflight_cap, setup_cap2, teardown),
        cmocka_unit_test_setup_teardown(test_inflight_cap_deadline, setup_cap1, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_packed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_serve, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
