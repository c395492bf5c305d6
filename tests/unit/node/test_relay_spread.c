/*
 * test_relay_spread.c - whom the leader gives a delivery (relay_spread.c),
 * from its member table alone: the node with the most free slots; none to a
 * node not heard from lately, one that lacks bodies, one that drains, or
 * one without slots; a destination only to nodes that reach it, and one
 * probe when every node has it suspended. And the ends a holder counts for
 * its leases: a grant applied too late to use is dropped, a renewal counts
 * from when the holder asked. And the index of running deliveries
 * (relay_delivery_link): a LeaseRenew applied reaches the deliveries of its
 * leases that still run and no other, and a suspended next hop's probe is
 * due once no delivery to it runs.
 *
 * The relay is relay_fixture's zeroed struct plus a loop (for uv_now), a
 * directory over its queue (for the draining flags) and a member table
 * filled by hand as reports would fill it. Reports, raft and the LeaseRenew
 * round trip are covered by the integration tests (test_cluster_spread.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "util/common.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "node/directory.h"
#include "node/relay_internal.h"
#include "queue_fixture.h"
#include "relay_fixture.h"

#define DEST "[127.0.0.1]:25"
#define OTHER "example.net:25"
#define T0 1765000000000ull
#define HOUR 3600000ull

struct spread_fx {
    struct relay_fx *fx;
    uv_loop_t loop;
    bool hooked; /* relay_spread_init ran: its start timer is to close */
};

static int spread_setup(void **state)
{
    struct spread_fx *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->fx = relay_fx_new();
    assert_int_equal(uv_loop_init(&s->loop), 0);
    uv_update_time(&s->loop);
    struct relay *r = &s->fx->r;
    r->loop = &s->loop;
    s->fx->cfg.node_id = 1;
    s->fx->cfg.lease_time_ms = 30000;
    s->fx->cfg.smtpc.max_conns_per_dest = 10;
    struct directory_self self = {.node_id = 1, .version = "test"};
    r->dir = directory_new(&self, NULL, r->queue, NULL);
    assert_non_null(r->dir);
    *state = s;
    return 0;
}

static int spread_teardown(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    relay_spread_close(r);
    if (s->hooked) {
        uv_close((uv_handle_t *)&r->spread.start_timer, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
    }
    r->dir = directory_free(r->dir);
    assert_int_equal(uv_loop_close(&s->loop), 0);
    relay_fx_free(s->fx);
    free(s);
    return 0;
}

/* member - node id heard now with slots and deliveries running. */
static struct relay_member *member(struct relay *r, uint64_t id, uint32_t slots, uint32_t running)
{
    assert_true(r->spread.n_members < HAMR_ARRAY_LEN(r->spread.members));
    struct relay_member *mb = &r->spread.members[r->spread.n_members++];
    memset(mb, 0, sizeof(*mb));
    mb->id = id;
    snprintf(mb->boot_id, sizeof(mb->boot_id), "boot%llu", (unsigned long long)id);
    mb->heard = uv_now(r->loop) != 0 ? uv_now(r->loop) : 1;
    mb->slots = slots;
    mb->deliveries = running;
    return mb;
}

/* dests - a member's list of next hops (suspended or probing), copied. */
static char **dests(const char *a, size_t *n)
{
    char **v = calloc(1, sizeof(*v));
    assert_non_null(v);
    v[0] = strdup(a);
    assert_non_null(v[0]);
    *n = 1;
    return v;
}

/* holder_id - whom relay_spread_holder gives one delivery to dest (0: nobody). */
static uint64_t holder_id(struct relay *r, const char *dest)
{
    struct relay_member *mb = relay_spread_holder(r, dest);
    return mb != NULL ? mb->id : 0;
}

/* test_most_free_slots - each delivery goes to the node with the most free slots. */
static void test_most_free_slots(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    member(r, 1, 10, 6); /* 4 free */
    member(r, 2, 10, 0); /* 10 free */
    member(r, 3, 10, 3); /* 7 free */
    uint64_t got[4] = {0};
    for (int i = 0; i < 21; i++)
        got[holder_id(r, DEST)]++;
    /* 21 deliveries fill every free slot: 4 + 10 + 7. */
    assert_int_equal(got[1], 4);
    assert_int_equal(got[2], 10);
    assert_int_equal(got[3], 7);
    assert_int_equal(holder_id(r, DEST), 0); /* no free slot left anywhere */
    assert_int_equal(r->spread.members[1].leased, 10);
    /* Reports and a pick: every one of them has ended. The emptiest node again. */
    r->spread.members[0].assigned = r->spread.members[1].assigned = 0;
    r->spread.members[2].assigned = 0;
    relay_spread_count_reset(r);
    relay_spread_count_done(r);
    assert_int_equal(holder_id(r, DEST), 2);
}

/*
 * test_live_leases - a report made before the holder started what it was
 * just leased says less than it holds: the leases the pick counts
 * (relay_spread_counted) say the rest. Node 1 reports nothing running but
 * holds 3 leases: the next delivery goes to node 2, equal by the reports;
 * then to the node with the most free slots either way.
 */
static void test_live_leases(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    member(r, 1, 10, 0);
    member(r, 2, 10, 0);
    relay_spread_count_reset(r);
    for (int i = 0; i < 3; i++)
        relay_spread_counted(r, OTHER, 1);
    relay_spread_count_done(r);
    assert_int_equal(r->spread.members[0].live, 3);
    assert_int_equal(holder_id(r, DEST), 2); /* 7 free on node 1, 10 on node 2 */
    assert_int_equal(holder_id(r, DEST), 2);
    assert_int_equal(holder_id(r, DEST), 2);
    assert_int_equal(r->spread.members[1].live, 3);
    r->spread.members[1].deliveries = 1; /* its report: 1 running besides the 3 given since */
    assert_int_equal(holder_id(r, DEST), 1);
    assert_int_equal(r->spread.members[0].live, 4);
}

/* test_unusable - not heard lately, lacking bodies, draining, no slots, behind in the log: nothing.
 */
static void test_unusable(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    uv_sleep(5); /* uv_now must be past RELAY_REPORT_FRESH_MS for the stale member */
    uv_update_time(r->loop);
    struct relay_member *stale = member(r, 2, 100, 0);
    struct relay_member *lacks = member(r, 3, 100, 0);
    struct relay_member *drains = member(r, 4, 100, 0);
    struct relay_member *none = member(r, 5, 0, 0);
    struct relay_member *behind = member(r, 6, 100, 0);
    lacks->bodies_missing = 1;
    behind->behind = true; /* had not applied what the leader had a tick before */
    stale->heard = uv_now(r->loop) > RELAY_REPORT_FRESH_MS + 1
                       ? uv_now(r->loop) - RELAY_REPORT_FRESH_MS - 1
                       : 0; /* 0: never heard */
    struct queue_entry_node_info_args ni = {.node_id = 4, .version = "test", .draining = true};
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(queue_entry_node_info(&ni, 1000, NULL, &buf, &len), 0);
    fx_apply(r->queue, buf, len);
    assert_true(directory_draining(r->dir, 4));
    (void)none;
    (void)drains;
    assert_int_equal(holder_id(r, DEST), 0);
    assert_int_equal(relay_spread_dest_max(r, DEST), 0);
    /* This node lacking bodies still delivers what it has (the pick leaves out the rest). */
    struct relay_member *self = member(r, 1, 1, 0);
    self->bodies_missing = 7;
    assert_int_equal(holder_id(r, DEST), 1);
    assert_int_equal(relay_spread_dest_max(r, DEST), -1);
}

/*
 * test_suspended_dest - a next hop only to the nodes that reach it; a node
 * whose probe is due gets one delivery to it per report, even while others
 * reach it, so that its suspension can lift.
 */
static void test_suspended_dest(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    struct relay_member *a = member(r, 2, 10, 0);
    struct relay_member *b = member(r, 3, 100, 0);
    b->suspended = dests(DEST, &b->n_suspended);
    for (int i = 0; i < 5; i++)
        assert_int_equal(holder_id(r, DEST), 2); /* node 3 has more slots, but no egress */
    assert_int_equal(holder_id(r, OTHER), 3);
    assert_int_equal(relay_spread_dest_max(r, DEST), -1);
    a->suspended = dests(DEST, &a->n_suspended);
    assert_int_equal(relay_spread_dest_max(r, DEST), 0);
    assert_int_equal(holder_id(r, DEST), 0);
    /* Node 2's probe is due: one message, to node 2, then nothing until its next report. */
    a->probing = a->suspended;
    a->n_probing = a->n_suspended;
    a->suspended = NULL;
    a->n_suspended = 0;
    assert_int_equal(relay_spread_dest_max(r, DEST), 1);
    assert_int_equal(holder_id(r, DEST), 2);
    assert_int_equal(relay_spread_dest_max(r, DEST), 0);
    assert_int_equal(holder_id(r, DEST), 0);
    /* A node that reaches it takes the rest. */
    member(r, 4, 1, 0);
    assert_int_equal(relay_spread_dest_max(r, DEST), -1);
    assert_int_equal(holder_id(r, DEST), 4);
    /* Node 2 reports again, still due: its probe comes first, even now (node 4's
     * delivery has ended by the next pick). */
    a->probed = false;
    r->spread.members[2].assigned = 0;
    relay_spread_count_reset(r);
    relay_spread_count_done(r);
    assert_int_equal(holder_id(r, DEST), 2);
    assert_int_equal(holder_id(r, DEST), 4);
}

/* test_self_live - this node's own suspensions count at once, not at its next report. */
static void test_self_live(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    member(r, 1, 10, 0); /* this node: its report listed nothing */
    member(r, 2, 5, 0);
    assert_int_equal(holder_id(r, DEST), 1);
    r->sched.suspended = calloc(RELAY_SUSPEND_MAX, sizeof(*r->sched.suspended));
    assert_non_null(r->sched.suspended);
    hamr_strlcpy(r->sched.suspended[0].dest, DEST, sizeof(r->sched.suspended[0].dest));
    r->sched.suspended[0].until = uv_now(r->loop) + 10000;
    r->sched.n_suspended = 1;
    for (int i = 0; i < 3; i++)
        assert_int_equal(holder_id(r, DEST), 2);
    /* Its probe is due: one for this node, then the others again. */
    r->sched.suspended[0].until = uv_now(r->loop);
    assert_int_equal(holder_id(r, DEST), 1);
    assert_int_equal(holder_id(r, DEST), 2);
    free(r->sched.suspended);
    r->sched.suspended = NULL;
    r->sched.n_suspended = 0;
}

/*
 * test_renew_index - more running deliveries than the index has buckets,
 * half of them unlinked again (heads, middles and tails of its chains): a
 * LeaseRenew of every lease moves the end of those still running and of no
 * other; a suspended next hop stays without its probe while a delivery to
 * it runs, and gets it once the last one is unlinked.
 */
static void test_renew_index(void **state)
{
    enum { N = RELAY_SCHED_LEASE_SLOTS + 88 };
    const uint64_t base = 0x5eed00000000ull;
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    hamr_strlcpy(r->boot_id, "B1", sizeof(r->boot_id));
    assert_int_equal(fx_level(r->queue, T0 - HOUR, QUEUE_LEVEL_SPREAD).status, 0);
    static char ids[N][16];
    struct queue_entry_renew_item *items = calloc(N, sizeof(*items));
    struct relay_delivery *d = calloc(N, sizeof(*d));
    assert_non_null(items);
    assert_non_null(d);
    for (size_t i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "M%zu", i);
        struct fx_enq e = {.id = ids[i],
                           .sender = "s@example.org",
                           .rcpts = {"a@example.net"},
                           .expires = T0 + 100 * HOUR};
        fx_enqueue(r->queue, T0, &e);
        /* Granted before the hook is set: nothing starts, the test links them itself. */
        struct fx_lease l = {.node = 1,
                             .term = 1,
                             .expires = T0 + 31000,
                             .boot = "B1",
                             .id = ids[i],
                             .idx = {0},
                             .n = 1,
                             .lease_id = base + i,
                             .dest = i % 2 == 0 ? DEST : OTHER};
        fx_lease(r->queue, T0 + 1000, &l);
        items[i] = (struct queue_entry_renew_item){.queue_id = ids[i], .lease_id = base + i};
    }
    relay_spread_init(r);
    s->hooked = true;

    /* DEST is suspended and due for its probe before any delivery to it runs. */
    r->sched.suspended = calloc(RELAY_SUSPEND_MAX, sizeof(*r->sched.suspended));
    assert_non_null(r->sched.suspended);
    hamr_strlcpy(r->sched.suspended[0].dest, DEST, sizeof(r->sched.suspended[0].dest));
    r->sched.n_suspended = 1;
    assert_int_equal(relay_sched_dest_state(r, DEST, 1), RELAY_DEST_PROBE);

    for (size_t i = 0; i < N; i++) {
        d[i].relay = r;
        hamr_strlcpy(d[i].queue_id, ids[i], sizeof(d[i].queue_id));
        hamr_strlcpy(d[i].dest, i % 2 == 0 ? DEST : OTHER, sizeof(d[i].dest));
        d[i].lease_id = base + i;
        d[i].deadline = 1;
        relay_delivery_link(r, &d[i]);
    }
    assert_int_equal(r->sched.n_deliveries, N);
    assert_int_equal(relay_sched_dest_state(r, DEST, 1), RELAY_DEST_SUSPENDED);
    assert_int_equal(relay_sched_dest_state(r, OTHER, 1), RELAY_DEST_OK);
    /* The deliveries to DEST end (the even ones), in an order unlike the links'. */
    for (size_t i = 2; i < N; i += 2)
        relay_delivery_unlink(r, &d[i]);
    assert_int_equal(relay_sched_dest_state(r, DEST, 1), RELAY_DEST_SUSPENDED);
    relay_delivery_unlink(r, &d[0]);
    assert_int_equal(relay_sched_dest_state(r, DEST, 1), RELAY_DEST_PROBE);
    assert_int_equal(r->sched.n_deliveries, N / 2);

    struct queue_entry_lease_renew_args a = {.node_id = 1,
                                             .boot_id = "B1",
                                             .expires_at_ms = T0 + HOUR,
                                             .asked_mono_ms = 5000,
                                             .items = items,
                                             .n_items = N};
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(queue_entry_lease_renew(&a, T0 + 2000, NULL, &buf, &len), 0);
    assert_int_equal(fx_apply(r->queue, buf, len).status, 0);
    /* From the asking, lease_time less its fifth: 5000 + 30000 - 6000. */
    for (size_t i = 0; i < N; i++)
        assert_int_equal(d[i].deadline, i % 2 == 0 ? 1 : 29000);

    for (size_t i = 1; i < N; i += 2)
        relay_delivery_unlink(r, &d[i]);
    assert_int_equal(r->sched.n_deliveries, 0);
    assert_null(r->sched.deliveries);
    for (size_t k = 0; k < RELAY_SCHED_LEASE_SLOTS; k++)
        assert_null(r->sched.by_lease[k]);
    free(r->sched.suspended);
    r->sched.suspended = NULL;
    r->sched.n_suspended = 0;
    free(d);
    free(items);
}

/* three_members - nodes 1, 2 and 3 with 100 free slots each; max conns a next hop. */
static void three_members(struct spread_fx *s, unsigned max_conns)
{
    s->fx->cfg.smtpc.max_conns_per_dest = max_conns;
    for (uint64_t id = 1; id <= 3; id++)
        member(&s->fx->r, id, 100, 0);
}

/* give_out - n deliveries to dest: nodes 1, 2 and 3 must get a, b and c of them. */
static void give_out(struct relay *r, const char *dest, int n, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t got[4] = {0};
    for (int i = 0; i < n; i++)
        got[holder_id(r, dest)]++;
    assert_int_equal(got[1], a);
    assert_int_equal(got[2], b);
    assert_int_equal(got[3], c);
}

/*
 * test_conn_budget - max_per_destination connections for the whole
 * cluster: a holder of L leases at a next hop may open ceil(L / 4)
 * connections there, so with 2 the deliveries fill one node's connection
 * (4), then another's, and then nobody gets one; each next hop on its own.
 */
static void test_conn_budget(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    three_members(s, 2);
    give_out(r, DEST, 8, 4, 4, 0);           /* a connection each, the third none */
    assert_int_equal(holder_id(r, DEST), 0); /* two connections' worth out */
    assert_int_not_equal(holder_id(r, OTHER), 0);
}

/* later - the loop's clock ms on (uv_now; the look back of relay_spread.c reads it). */
static void later(struct relay *r, uint64_t ms)
{
    r->loop->time += ms;
}

/* pick - a pick that counts n live leases of node at dest, and nothing else. */
static void pick(struct relay *r, const char *dest, uint64_t node, int n)
{
    relay_spread_count_reset(r);
    for (int i = 0; i < n; i++)
        relay_spread_counted(r, dest, node);
    relay_spread_count_done(r);
}

/*
 * test_conn_counted - the live leases a pick counts (relay_spread_counted)
 * count the same: at another next hop node 3 holds 3 (one connection, a
 * lease of it unused): 1 more goes to it, 4 to the node with the most free
 * slots (a second connection), none to the third, which gets no connection
 * while nobody has two.
 */
static void test_conn_counted(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    three_members(s, 2);
    pick(r, OTHER, 3, 3);
    r->spread.members[1].assigned = 1; /* node 1 has the most free slots */
    give_out(r, OTHER, 5, 4, 0, 1);
    assert_int_equal(holder_id(r, OTHER), 0);
}

/*
 * test_conn_room - every node that reaches a next hop gets a connection
 * there before any gets a second: node 3 holds 5 leases at DEST (both
 * connections of max_per_destination 2), nodes 1 and 2 none. Node 3 gets
 * no more while that keeps both in use; once its leases fit one
 * connection it gets what keeps them there; when the look back has seen
 * them there, a connection is free and node 1 (most free slots) takes it;
 * node 2 then gets none: nobody has two.
 */
static void test_conn_room(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    three_members(s, 2);
    r->spread.members[1].assigned = 1; /* node 1 has the most free slots */
    pick(r, DEST, 3, 5);
    assert_int_equal(holder_id(r, DEST), 0);
    pick(r, DEST, 3, 4); /* one ended: a fifth would need the second connection again */
    assert_int_equal(holder_id(r, DEST), 0);
    pick(r, DEST, 3, 3);
    assert_int_equal(holder_id(r, DEST), 3); /* 4: one connection's worth */
    assert_int_equal(holder_id(r, DEST), 0);
    later(r, 3 * RELAY_CONN_LOOK_MS);
    pick(r, DEST, 3, 4);
    assert_int_equal(holder_id(r, DEST), 1);
    give_out(r, DEST, 4, 3, 0, 0);
    assert_int_equal(holder_id(r, DEST), 0);
    assert_int_equal(r->spread.members[2].live, 4);
}

/*
 * test_conn_probe - a node whose probe of a next hop is due gets a
 * connection there even when the others keep all of them busy, each with
 * one (max_per_destination 2): the holders get only what leaves one free,
 * and once the look back has seen that, the probe goes out.
 */
static void test_conn_probe(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    three_members(s, 2);
    struct relay_member *c = &r->spread.members[2];
    c->probing = dests(DEST, &c->n_probing);
    relay_spread_count_reset(r);
    for (int i = 0; i < 4; i++) {
        relay_spread_counted(r, DEST, 1);
        relay_spread_counted(r, DEST, 2);
    }
    relay_spread_count_done(r);
    assert_int_equal(holder_id(r, DEST), 0);
    relay_spread_count_reset(r); /* node 2's deliveries have ended, node 1 has 3 left */
    for (int i = 0; i < 3; i++)
        relay_spread_counted(r, DEST, 1);
    relay_spread_count_done(r);
    assert_int_equal(holder_id(r, DEST), 1); /* within node 1's connection */
    assert_int_equal(holder_id(r, DEST), 0); /* node 2's would hold the other */
    later(r, 3 * RELAY_CONN_LOOK_MS);
    pick(r, DEST, 1, 4);
    assert_int_equal(holder_id(r, DEST), 3);
    assert_true(c->probed);
    assert_int_equal(holder_id(r, DEST), 0); /* one probe a report */
}

/*
 * test_conn_lately - a holder keeps the connections of its recent peak
 * (RELAY_CONN_HOLD_MS), so the leader counts its share from its leases of
 * the last RELAY_CONN_LOOK_MS: with 1 connection, node 1's four ended but
 * its connection is still its own (node 2 gets none, node 1 does); a new
 * leader, which has not seen that, opens no connection at first.
 */
static void test_conn_lately(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    s->fx->cfg.smtpc.max_conns_per_dest = 1;
    member(r, 1, 100, 0);
    member(r, 2, 100, 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(holder_id(r, DEST), 1);
    relay_spread_count_reset(r); /* a pick: node 1's four have ended */
    relay_spread_count_done(r);
    r->spread.members[0].assigned = 4; /* node 2 has the most free slots */
    assert_int_equal(holder_id(r, DEST), 1);

    relay_spread_leader(r, true); /* a new term: nothing seen yet */
    member(r, 1, 100, 0);
    member(r, 2, 100, 0);
    assert_int_equal(holder_id(r, DEST), 0);
}

/*
 * test_place - behind in the log, by reports: a node seen first (or with a
 * new boot id) is behind until it has applied an entry made after, even
 * when it had applied all we had (a wiped node stuck at its snapshot's
 * index in an idle cluster); then behind again when it falls below what
 * we had a tick ago; a build that reports no index never is.
 */
static void test_place(void **state)
{
    struct spread_fx *s = *state;
    struct relay *r = &s->fx->r;
    struct relay_member *mb = member(r, 2, 100, 0);
    mb->boot_id[0] = '\0'; /* not heard from yet */
    r->spread.applied_mark = 90;
    relay_member_place(r, mb, "boot-a", 100, 100);
    assert_true(mb->behind); /* all we have, but nothing made since it came */
    assert_string_equal(mb->boot_id, "boot-a");
    relay_member_place(r, mb, "boot-a", 100, 105);
    assert_true(mb->behind);
    relay_member_place(r, mb, "boot-a", 101, 105);
    assert_false(mb->behind);
    r->spread.applied_mark = 104;
    relay_member_place(r, mb, "boot-a", 103, 110);
    assert_true(mb->behind); /* below what we had a tick ago */
    relay_member_place(r, mb, "boot-a", 104, 110);
    assert_false(mb->behind);
    relay_member_place(r, mb, "boot-b", 110, 110); /* restarted (wiped): again */
    assert_true(mb->behind);
    relay_member_place(r, mb, "boot-b", 111, 112);
    assert_false(mb->behind);
    struct relay_member *old = member(r, 3, 100, 0);
    relay_member_place(r, old, "boot-c", 0, 200); /* reports no index */
    assert_false(old->behind);
    assert_non_null(relay_spread_holder(r, DEST));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_most_free_slots, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_live_leases, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_unusable, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_place, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_conn_budget, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_conn_counted, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_conn_room, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_conn_probe, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_conn_lately, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_suspended_dest, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_self_live, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_renew_index, spread_setup, spread_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
