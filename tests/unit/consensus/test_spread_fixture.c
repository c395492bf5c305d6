/*
 * test_spread_fixture.c - "every node delivers" (cluster level 6,
 * QUEUE_LEVEL_SPREAD) on a real raft 0.15 cluster on raft's in-memory
 * fixture (cluster_fixture.h): the leader hands delivery leases to any
 * node, short leases are renewed with LeaseRenew entries, only the lease's
 * holder may report its Outcome, and every time stamped into the queue is
 * cluster time (node/cluster_clock.c, linked in: it is pure).
 *
 * How: three servers (node ids 1..3, boot ids "boot-<id>"), each with its
 * own queue as raft_fsm, its own lease hook (what hamrd's relay_spread.c
 * is told) and its own cluster clock. The fixture's simulated time is
 * every node's monotonic clock; a node's wall clock is T0 plus that, plus
 * an offset a test may set (a clock stepped an hour). The leader's steps
 * mirror node/relay_sched.c and node/relay_spread.c: queue_sched_pick at
 * cluster time, one Lease entry per holder ending lease_time later, a
 * LeaseRenew of a holder's leases ending lease_time after the renewal, an
 * Outcome carrying the reporting node's id, and a new leader's cluster
 * time starting from the log's newest timestamp. Every entry is packed by
 * queue/queue_entry.h and stamped with the proposer's cluster time.
 *
 * Every assertion about leases is made on the replicated state of every
 * server's queue (and its lease hook), not only on the proposer's result.
 * Every wait is bounded in simulated milliseconds.
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

#include "util/common.h"
#include "util/err.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue/queue_sched.h"
#include "node/cluster_clock.h"
#include "cluster_fixture.h"

#define N_SRV 3
#define ALL 0x7u
#define SEC 1000ull
#define HOUR (3600ull * SEC)
#define LEASE_MS (30 * SEC) /* [delivery] lease_time: short, renewed while in use */
#define MAX_LAPSES 16
#define MAX_WORK 64

/* spread_lapse - one "possible duplicate" the lease hook reported. */
struct spread_lapse {
    char queue_id[QUEUE_ID_MAX];
    uint64_t old_lease, old_node, new_lease, new_node;
};

/* spread_hook_log - what one server's lease hook was told. */
struct spread_hook_log {
    unsigned granted;          /* leases granted to this server's node */
    unsigned renewed;          /* renewals of this server's node */
    unsigned ended[N_SRV + 1]; /* by holder node id: Outcomes that ended its lease */
    struct spread_lapse lapses[MAX_LAPSES];
    unsigned n_lapses;
};

/* spread - the cluster, and what each server's node keeps beside its queue. */
struct spread {
    struct cluster *c;
    struct spread_hook_log log[N_SRV];
    char boot[N_SRV][16];
    struct cluster_clock clock[N_SRV];
    int64_t wall_off[N_SRV]; /* this node's wall clock minus the true time */
    uint64_t lease_counter[N_SRV];
    uint64_t last_end; /* the end of the newest Lease entry proposed */
};

/* ------------------------------------------------------------------------
 * Each node: its lease hook, its clocks
 * ------------------------------------------------------------------------ */

static void spread_granted_cb(void *arg,
                              const char *queue_id,
                              uint64_t lease_id,
                              const char *dest,
                              uint64_t expires_at_ms)
{
    (void)queue_id, (void)lease_id, (void)dest, (void)expires_at_ms;
    ((struct spread_hook_log *)arg)->granted++;
}

static void spread_renewed_cb(void *arg,
                              const char *queue_id,
                              uint64_t lease_id,
                              uint64_t expires_at_ms,
                              uint64_t asked_mono_ms)
{
    (void)queue_id, (void)lease_id, (void)expires_at_ms, (void)asked_mono_ms;
    ((struct spread_hook_log *)arg)->renewed++;
}

static void spread_ended_cb(void *arg, uint64_t node)
{
    struct spread_hook_log *l = arg;
    assert_true(node >= 1 && node <= N_SRV);
    l->ended[node]++;
}

static void spread_lapsed_cb(void *arg,
                             const char *queue_id,
                             const char *rcpt,
                             uint64_t old_lease,
                             uint64_t old_node,
                             uint64_t new_lease,
                             uint64_t new_node)
{
    struct spread_hook_log *l = arg;
    (void)rcpt;
    assert_true(l->n_lapses < MAX_LAPSES);
    struct spread_lapse *x = &l->lapses[l->n_lapses++];
    hamr_strlcpy(x->queue_id, queue_id, sizeof(x->queue_id));
    x->old_lease = old_lease;
    x->old_node = old_node;
    x->new_lease = new_lease;
    x->new_node = new_node;
}

static int spread_setup(void **state)
{
    struct spread *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->c = cluster_new(N_SRV);
    for (unsigned i = 0; i < N_SRV; i++) {
        snprintf(s->boot[i], sizeof(s->boot[i]), "boot-%u", i + 1);
        struct queue_lease_hook h = {.arg = &s->log[i],
                                     .node_id = i + 1,
                                     .boot_id = s->boot[i],
                                     .granted = spread_granted_cb,
                                     .renewed = spread_renewed_cb,
                                     .ended = spread_ended_cb,
                                     .lapsed = spread_lapsed_cb};
        queue_set_lease_hook(s->c->srv[i].q, &h);
        cluster_clock_init(&s->clock[i], 0);
        /* As relay.c seeds it: a leader's lease ids do not meet another's. */
        s->lease_counter[i] = (uint64_t)(i + 1) << 32;
    }
    *state = s;
    return 0;
}

static int spread_teardown(void **state)
{
    struct spread *s = *state;
    cluster_free(s->c);
    free(s);
    return 0;
}

/* spread_mono - every node's monotonic clock: the fixture's simulated time. */
static uint64_t spread_mono(struct spread *s)
{
    return cluster_now(s->c);
}

/* spread_wall - node i's wall clock (true time plus its offset). */
static uint64_t spread_wall(struct spread *s, unsigned i)
{
    return (uint64_t)((int64_t)(T0 + spread_mono(s)) + s->wall_off[i]);
}

/*
 * spread_sample - leader i samples the wall clocks of the live servers, as
 * it does with its members' reports; the step it made (0: none).
 */
static uint64_t spread_sample(struct spread *s, unsigned i)
{
    uint64_t walls[N_SRV];
    size_t n = 0;
    for (unsigned j = 0; j < N_SRV; j++)
        if (raft_fixture_alive(&s->c->f, j))
            walls[n++] = spread_wall(s, j);
    return cluster_clock_sample(&s->clock[i], spread_mono(s), walls, n, N_SRV);
}

/* spread_lead - server i begins to lead: cluster time from the log's newest stamp, then sampled. */
static void spread_lead(struct spread *s, unsigned i)
{
    for (unsigned j = 0; j < N_SRV; j++)
        if (j != i)
            cluster_clock_unlead(&s->clock[j]);
    cluster_clock_lead(&s->clock[i], spread_mono(s), queue_last_timestamp(s->c->srv[i].q));
    spread_sample(s, i);
    assert_true(cluster_clock_synced(&s->clock[i]));
}

/* spread_now - node i's cluster time. */
static uint64_t spread_now(struct spread *s, unsigned i)
{
    return cluster_clock_now(&s->clock[i], spread_mono(s), spread_wall(s, i));
}

/* spread_advance - let ms of simulated time pass, or a little more (raft runs: heartbeats,
 * elections). */
static void spread_advance(struct spread *s, unsigned ms)
{
    raft_fixture_step_until_elapsed(&s->c->f, ms);
    cluster_check(s->c);
}

/*
 * spread_advance_near - let time pass until node i's cluster time is just
 * before target: a step may jump up to a heartbeat, so it stops short by
 * SPREAD_NEAR_MS and checks it landed below target.
 */
#define SPREAD_NEAR_MS 150
static void spread_advance_near(struct spread *s, unsigned i, uint64_t target)
{
    uint64_t now = spread_now(s, i);
    if (now + SPREAD_NEAR_MS < target)
        spread_advance(s, (unsigned)(target - SPREAD_NEAR_MS - now));
    now = spread_now(s, i);
    if (now >= target || target - now > 2 * SPREAD_NEAR_MS)
        fail_msg("cluster time %llu, want just before %llu", (unsigned long long)now,
                 (unsigned long long)target);
}

/* spread_time_pred - node arg->i's cluster time reached arg->target. */
struct spread_time_arg {
    struct spread *s;
    unsigned i;
    uint64_t target;
};

static bool spread_time_pred(struct raft_fixture *f, void *arg)
{
    (void)f;
    struct spread_time_arg *a = arg;
    return spread_now(a->s, a->i) >= a->target;
}

/* spread_advance_past - step until node i's cluster time is at or past target (bounded). */
static void spread_advance_past(struct spread *s, unsigned i, uint64_t target)
{
    struct spread_time_arg a = {.s = s, .i = i, .target = target};
    uint64_t now = spread_now(s, i);
    unsigned max = (unsigned)(now < target ? target - now : 0) + 1000;
    if (!cluster_step_until(s->c, spread_time_pred, &a, max))
        fail_msg("cluster time did not reach %llu", (unsigned long long)target);
    cluster_check(s->c);
}

/* ------------------------------------------------------------------------
 * The leader's entries, as relay_sched.c and relay_spread.c build them
 * ------------------------------------------------------------------------ */

/* spread_commit - propose a packed entry on server i and wait until it commits. */
static struct cluster_prop *spread_commit(struct spread *s,
                                          unsigned i,
                                          int pack_rv,
                                          uint8_t *buf,
                                          size_t len,
                                          const char *id)
{
    assert_int_equal(pack_rv, 0);
    return committed(s->c, cluster_propose_packed(s->c, i, buf, len, id, NULL));
}

/* spread_start - server i leads, its cluster time synced, and the cluster is at level 6. */
static void spread_start(struct spread *s, unsigned i)
{
    cluster_elect(s->c, i);
    spread_lead(s, i);
    uint8_t *buf = NULL;
    size_t len = 0;
    int rv =
        queue_entry_cluster_level(QUEUE_LEVEL_SPREAD, spread_now(s, i), raft_malloc, &buf, &len);
    assert_int_equal(spread_commit(s, i, rv, buf, len, "")->res.status, 0);
    cluster_sync(s->c, i, ALL);
    for (unsigned j = 0; j < N_SRV; j++)
        assert_int_equal(queue_cluster_level(s->c->srv[j].q), QUEUE_LEVEL_SPREAD);
}

/* spread_enqueue - message id to n recipients at domain, expiring at expires (cluster time). */
static void spread_enqueue(struct spread *s,
                           unsigned i,
                           const char *id,
                           const char *domain,
                           unsigned n,
                           uint64_t expires)
{
    char addr[MAX_RCPTS][64];
    const char *rcpts[MAX_RCPTS];
    char body[128];
    assert_true(n >= 1 && n <= MAX_RCPTS);
    for (unsigned k = 0; k < n; k++) {
        snprintf(addr[k], sizeof(addr[k]), "u%u@%s", k, domain);
        rcpts[k] = addr[k];
    }
    int bl = snprintf(body, sizeof(body), "Subject: %s\r\n\r\nfor %s\r\n", id, domain);
    assert_true(bl > 0 && (size_t)bl < sizeof(body));
    struct queue_entry_enqueue_args a = {.queue_id = id,
                                         .sender = "sender@example.org",
                                         .rcpts = rcpts,
                                         .n_rcpts = n,
                                         .body = (const uint8_t *)body,
                                         .body_len = (size_t)bl,
                                         .expires_at_ms = expires,
                                         .client_addr = "192.0.2.10",
                                         .helo = "client.test",
                                         .accepted_by = i + 1};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rv = queue_entry_enqueue(&a, spread_now(s, i), raft_malloc, &buf, &len);
    struct cluster_prop *p = spread_commit(s, i, rv, buf, len, id);
    assert_int_equal(p->res.status, 0);
    assert_false(p->res.duplicate);
}

/* spread_route_dest - the next hop of a recipient: one per domain, "[domain]:25". */
static int spread_route_dest(void *data, const char *rcpt, char *dest, size_t destlen)
{
    (void)data;
    const char *at = strrchr(rcpt, '@');
    int n = snprintf(dest, destlen, "[%s]:25", at != NULL ? at + 1 : rcpt);
    return n > 0 && (size_t)n < destlen ? 0 : -1;
}

/* spread_pick - queue_sched_pick on server i as its node would lead, at now (cluster time). */
static int spread_pick(struct spread *s,
                       unsigned i,
                       uint64_t now,
                       unsigned max_per_dest,
                       struct queue_work **work)
{
    struct queue_sched_limits lim = {.max_per_dest = max_per_dest,
                                     .max_items = MAX_WORK,
                                     .self_node = i + 1,
                                     .self_boot_id = s->boot[i]};
    struct queue_route route = {.data = s, .dest = spread_route_dest, .dest_max = NULL};
    *work = NULL;
    int n = queue_sched_pick(s->c->srv[i].q, now, &lim, &route, work);
    assert_true(n >= 0);
    return n;
}

/* spread_find_work - the item of queue id in work[0..n), or NULL. */
static const struct queue_work *spread_find_work(const struct queue_work *work,
                                                 int n,
                                                 const char *id)
{
    for (int k = 0; k < n; k++)
        if (strcmp(work[k].queue_id, id) == 0)
            return &work[k];
    return NULL;
}

/*
 * spread_lease - leader i leases the deliveries w[0..n) to node (its boot
 * id), one Lease entry ending LEASE_MS after the leader's cluster time;
 * the first lease id is returned (the others follow it).
 */
static uint64_t spread_lease(struct spread *s,
                             unsigned i,
                             const struct queue_work *w,
                             size_t n,
                             uint64_t node)
{
    struct queue_entry_lease_item items[MAX_WORK];
    assert_true(n >= 1 && n <= MAX_WORK);
    uint64_t first = s->lease_counter[i] + 1;
    for (size_t k = 0; k < n; k++) {
        assert_int_equal(w[k].kind, QUEUE_WORK_DELIVER);
        items[k] = (struct queue_entry_lease_item){.queue_id = w[k].queue_id,
                                                   .rcpt_indexes = w[k].rcpt_indexes,
                                                   .n_rcpts = w[k].n_rcpts,
                                                   .lease_id = ++s->lease_counter[i],
                                                   .destination = w[k].dest};
    }
    uint64_t now = spread_now(s, i);
    struct queue_entry_lease_args a = {.node_id = node,
                                       .term = cluster_raft(s->c, i)->current_term,
                                       .expires_at_ms = now + LEASE_MS,
                                       .boot_id = s->boot[node - 1],
                                       .items = items,
                                       .n_items = n};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rv = queue_entry_lease(&a, now, raft_malloc, &buf, &len);
    s->last_end = a.expires_at_ms;
    assert_int_equal(spread_commit(s, i, rv, buf, len, w[0].queue_id)->res.status, 0);
    return first;
}

/*
 * spread_lease_one - on a started cluster, leader 0 takes message id
 * (n_rcpts recipients at domain) and leases it to node 3; its lease id,
 * and the lease's end in *end.
 */
static uint64_t spread_lease_one(struct spread *s,
                                 const char *id,
                                 const char *domain,
                                 size_t n_rcpts,
                                 uint64_t *end)
{
    spread_enqueue(s, 0, id, domain, n_rcpts, spread_now(s, 0) + 120 * HOUR);
    struct queue_work *w = NULL;
    int n = spread_pick(s, 0, spread_now(s, 0), 4, &w);
    assert_int_equal(n, 1);
    uint64_t lease = spread_lease(s, 0, w, 1, 3);
    *end = s->last_end;
    queue_work_free(w, (size_t)n);
    return lease;
}

/* spread_renew - leader i renews node's lease_id of queue_id until its cluster time + LEASE_MS. */
static uint64_t spread_renew(struct spread *s,
                             unsigned i,
                             uint64_t node,
                             const char *queue_id,
                             uint64_t lease_id)
{
    struct queue_entry_renew_item item = {.queue_id = queue_id, .lease_id = lease_id};
    uint64_t now = spread_now(s, i);
    struct queue_entry_lease_renew_args a = {.node_id = node,
                                             .boot_id = s->boot[node - 1],
                                             .expires_at_ms = now + LEASE_MS,
                                             .asked_mono_ms = spread_mono(s),
                                             .items = &item,
                                             .n_items = 1};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rv = queue_entry_lease_renew(&a, now, raft_malloc, &buf, &len);
    assert_int_equal(spread_commit(s, i, rv, buf, len, queue_id)->res.status, 0);
    return now + LEASE_MS;
}

/* spread_outcome - leader i proposes node's report: every one of n recipients has st. */
static struct cluster_prop *spread_outcome(struct spread *s,
                                           unsigned i,
                                           uint64_t node,
                                           const char *queue_id,
                                           uint64_t lease_id,
                                           unsigned n,
                                           enum queue_entry_status st)
{
    struct queue_entry_result res[MAX_RCPTS];
    assert_true(n <= MAX_RCPTS);
    for (unsigned k = 0; k < n; k++)
        res[k] = (struct queue_entry_result){
            .rcpt_index = k,
            .status = st,
            .smtp_code = st == QUEUE_ENTRY_DELIVERED ? 250 : 451,
            .diagnostic = st == QUEUE_ENTRY_DELIVERED ? "2.0.0 ok" : "4.3.0 later"};
    uint64_t now = spread_now(s, i);
    struct queue_entry_outcome_args a = {.queue_id = queue_id,
                                         .lease_id = lease_id,
                                         .results = res,
                                         .n_results = n,
                                         .next_attempt_ms = now + 15 * 60 * SEC,
                                         .reporter = "mx.hamr.test",
                                         .dsn_expires_at_ms = now + 120 * HOUR,
                                         .remote = "[192.0.2.25]:25",
                                         .node_id = node};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rv = queue_entry_outcome(&a, now, raft_malloc, &buf, &len);
    struct cluster_prop *p = spread_commit(s, i, rv, buf, len, queue_id);
    assert_int_equal(p->res.status, 0);
    return p;
}

/* ------------------------------------------------------------------------
 * The replicated state, on every server
 * ------------------------------------------------------------------------ */

/* spread_rcpt - recipient k of id on server i (the message must be queued there). */
static const struct queue_rcpt *spread_rcpt(struct spread *s,
                                            unsigned i,
                                            const char *id,
                                            unsigned k)
{
    const struct queue_msg *m = queue_find(s->c->srv[i].q, id);
    if (m == NULL)
        fail_msg("server %u: %s is not queued", i, id);
    assert_true(k < m->n_rcpts);
    return &m->rcpts[k];
}

/*
 * spread_assert_leased - on every server in mask, the n recipients of id
 * are LEASED under lease_id to node (its boot id) until expires.
 */
static void spread_assert_leased(struct spread *s,
                                 unsigned mask,
                                 const char *id,
                                 unsigned n,
                                 uint64_t lease_id,
                                 uint64_t node,
                                 uint64_t expires)
{
    for (unsigned i = 0; i < N_SRV; i++) {
        if (!(mask & (1u << i)))
            continue;
        for (unsigned k = 0; k < n; k++) {
            const struct queue_rcpt *r = spread_rcpt(s, i, id, k);
            if (r->state != QUEUE_RCPT_LEASED || queue_rcpt_lease(r)->id != lease_id ||
                queue_rcpt_lease(r)->node != node)
                fail_msg(
                    "server %u: %s rcpt %u state %d lease %llu node %llu, want lease %llu "
                    "node %llu",
                    i, id, k, (int)r->state, (unsigned long long)queue_rcpt_lease(r)->id,
                    (unsigned long long)queue_rcpt_lease(r)->node, (unsigned long long)lease_id,
                    (unsigned long long)node);
            assert_string_equal(queue_rcpt_lease(r)->boot_id, s->boot[node - 1]);
            assert_int_equal(queue_rcpt_lease(r)->expires_ms, expires);
            assert_int_equal(r->attempts, 0);
        }
    }
    cluster_assert_same(s->c, mask);
}

/* spread_dest_count - per destination, messages with a lease there live at now. */
struct spread_dest_count {
    const char *dest;
    uint64_t now;
    unsigned n;
    unsigned by_node[N_SRV + 1];
};

static int spread_dest_count_cb(void *arg, const struct queue_msg *m)
{
    struct spread_dest_count *d = arg;
    for (uint32_t k = 0; k < m->n_rcpts; k++) {
        const struct queue_rcpt *r = &m->rcpts[k];
        if (r->state == QUEUE_RCPT_LEASED && queue_rcpt_lease(r)->expires_ms > d->now &&
            strcmp(queue_rcpt_lease(r)->dest ? queue_rcpt_lease(r)->dest : "", d->dest) == 0) {
            d->n++;
            if (queue_rcpt_lease(r)->node <= N_SRV)
                d->by_node[queue_rcpt_lease(r)->node]++;
            break;
        }
    }
    return 0;
}

/* spread_leased_at - messages of server i with a live lease at dest at now. */
static struct spread_dest_count spread_leased_at(struct spread *s,
                                                 unsigned i,
                                                 const char *dest,
                                                 uint64_t now)
{
    struct spread_dest_count d = {.dest = dest, .now = now};
    queue_foreach(s->c->srv[i].q, spread_dest_count_cb, &d);
    return d;
}

/* ------------------------------------------------------------------------
 * 1. Leases spread over the nodes
 * ------------------------------------------------------------------------ */

static void test_leases_spread_over_nodes(void **state)
{
    struct spread *s = *state;
    spread_start(s, 0);
    const char *ids[N_SRV] = {"A1", "A2", "A3"};
    const char *domains[N_SRV] = {"one.test", "two.test", "three.test"};
    uint64_t t = spread_now(s, 0);
    for (unsigned k = 0; k < N_SRV; k++)
        spread_enqueue(s, 0, ids[k], domains[k], 2, t + 120 * HOUR);

    struct queue_work *w = NULL;
    int n = spread_pick(s, 0, spread_now(s, 0), 4, &w);
    assert_int_equal(n, N_SRV);
    uint64_t lease_of[N_SRV], ends[N_SRV];
    for (unsigned k = 0; k < N_SRV; k++) {
        const struct queue_work *x = spread_find_work(w, n, ids[k]);
        assert_non_null(x);
        assert_int_equal(x->n_rcpts, 2);
        /* Message k to node k + 1: the leader's own node, then the two others. */
        lease_of[k] = spread_lease(s, 0, x, 1, k + 1);
        ends[k] = s->last_end;
    }
    queue_work_free(w, (size_t)n);
    cluster_sync(s->c, 0, ALL);

    for (unsigned k = 0; k < N_SRV; k++) {
        spread_assert_leased(s, ALL, ids[k], 2, lease_of[k], k + 1, ends[k]);
        char dest[QUEUE_DEST_MAX];
        snprintf(dest, sizeof(dest), "[%s]:25", domains[k]);
        for (unsigned i = 0; i < N_SRV; i++)
            assert_string_equal(queue_rcpt_lease(spread_rcpt(s, i, ids[k], 1))->dest, dest);
    }
    /* Each holder's node was told of its own lease only. */
    for (unsigned i = 0; i < N_SRV; i++) {
        assert_int_equal(s->log[i].granted, 1);
        assert_int_equal(s->log[i].n_lapses, 0);
    }
    /* Nothing more for them, on the leader and on whichever server leads next. */
    for (unsigned i = 0; i < N_SRV; i++) {
        n = spread_pick(s, i, spread_now(s, 0), 4, &w);
        assert_int_equal(n, 0);
        queue_work_free(w, 0);
    }
    /* Still nothing a moment before the leases end. */
    spread_advance_near(s, 0, ends[0]);
    n = spread_pick(s, 0, spread_now(s, 0), 4, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
}

/* ------------------------------------------------------------------------
 * 2. A holder cut off: not renewed, re-leased after its end, a lapse
 * ------------------------------------------------------------------------ */

static void test_holder_cut_off(void **state)
{
    struct spread *s = *state;
    spread_start(s, 0);
    uint64_t t = spread_now(s, 0);
    spread_enqueue(s, 0, "B", "b.test", 2, t + 120 * HOUR);
    spread_enqueue(s, 0, "C", "c.test", 1, t + 120 * HOUR);
    struct queue_work *w = NULL;
    int n = spread_pick(s, 0, spread_now(s, 0), 4, &w);
    assert_int_equal(n, 2);
    uint64_t lease_b = spread_lease(s, 0, spread_find_work(w, n, "B"), 1, 3);
    uint64_t end = s->last_end;
    uint64_t lease_c = spread_lease(s, 0, spread_find_work(w, n, "C"), 1, 2);
    queue_work_free(w, (size_t)n);
    cluster_sync(s->c, 0, ALL);
    spread_assert_leased(s, ALL, "B", 2, lease_b, 3, end);

    /* Node 3 (server 2) is cut off; node 2 goes on asking for renewals. */
    isolate(s->c, 2, ISOLATE_DISCONNECT);
    spread_advance(s, (unsigned)(LEASE_MS / 2));
    uint64_t end_c = spread_renew(s, 0, 2, "C", lease_c);
    cluster_sync(s->c, 0, 0x3);
    spread_assert_leased(s, 0x3, "C", 1, lease_c, 2, end_c);
    spread_assert_leased(s, 0x3, "B", 2, lease_b, 3, end);
    assert_int_equal(s->log[1].renewed, 1);

    /* Before B's end: nothing for it (nor for C). */
    spread_advance_near(s, 0, end);
    n = spread_pick(s, 0, spread_now(s, 0), 4, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);

    /* At its end: B is due again, C (renewed) is not; B goes to node 2. */
    spread_advance_past(s, 0, end);
    n = spread_pick(s, 0, spread_now(s, 0), 4, &w);
    assert_int_equal(n, 1);
    assert_string_equal(w[0].queue_id, "B");
    assert_int_equal(w[0].n_rcpts, 2);
    uint64_t lease_b2 = spread_lease(s, 0, w, 1, 2);
    uint64_t end2 = s->last_end;
    queue_work_free(w, (size_t)n);
    cluster_sync(s->c, 0, 0x3);

    /* Node 3 comes back and catches up: every server has the same state and lapses. */
    heal(s->c, 2, ISOLATE_DISCONNECT);
    cluster_sync(s->c, 0, ALL);
    spread_assert_leased(s, ALL, "B", 2, lease_b2, 2, end2);
    spread_assert_leased(s, ALL, "C", 1, lease_c, 2, end_c);
    for (unsigned i = 0; i < N_SRV; i++) {
        const struct spread_hook_log *l = &s->log[i];
        assert_int_equal(l->n_lapses, 2); /* one per recipient of B */
        for (unsigned k = 0; k < l->n_lapses; k++) {
            assert_string_equal(l->lapses[k].queue_id, "B");
            assert_int_equal(l->lapses[k].old_lease, lease_b);
            assert_int_equal(l->lapses[k].old_node, 3);
            assert_int_equal(l->lapses[k].new_lease, lease_b2);
            assert_int_equal(l->lapses[k].new_node, 2);
        }
    }
    /* Node 2 was granted C, then B; it was renewed once; node 3 never renewed. */
    assert_int_equal(s->log[1].granted, 2);
    assert_int_equal(s->log[2].renewed, 0);

    /* Node 3's late report, under its old lease or claiming the new one: refused everywhere. */
    assert_int_equal(spread_outcome(s, 0, 3, "B", lease_b, 2, QUEUE_ENTRY_DELIVERED)->res.finished,
                     0);
    assert_int_equal(spread_outcome(s, 0, 3, "B", lease_b2, 2, QUEUE_ENTRY_DELIVERED)->res.finished,
                     0);
    cluster_sync(s->c, 0, ALL);
    spread_assert_leased(s, ALL, "B", 2, lease_b2, 2, end2);
    for (unsigned i = 0; i < N_SRV; i++)
        assert_int_equal(s->log[i].ended[3], 0);
}

/* ------------------------------------------------------------------------
 * 3. A renewal outlives the leader that committed it
 * ------------------------------------------------------------------------ */

static void test_renewal_across_leader_change(void **state)
{
    struct spread *s = *state;
    spread_start(s, 0);
    uint64_t end = 0;
    uint64_t lease = spread_lease_one(s, "D", "d.test", 1, &end);

    spread_advance(s, (unsigned)(LEASE_MS / 2));
    uint64_t renewed_end = spread_renew(s, 0, 3, "D", lease);
    assert_true(renewed_end > end + LEASE_MS / 3);
    cluster_sync(s->c, 0, ALL);
    spread_assert_leased(s, ALL, "D", 1, lease, 3, renewed_end);
    assert_int_equal(s->log[2].renewed, 1);

    /* Leader A (node 1) dies; B is elected and leads from the log's time. */
    isolate(s->c, 0, ISOLATE_KILL);
    unsigned b = wait_other_leader(s->c, 0, 10 * ELECTION_MS);
    cluster_barrier(s->c, b);
    spread_lead(s, b);
    assert_true(spread_now(s, b) >= queue_last_timestamp(s->c->srv[b].q));
    unsigned live = ALL & ~1u;
    cluster_sync(s->c, b, live);

    /* Past the original end, before the renewed one: no re-lease. */
    spread_advance_past(s, b, end + 1);
    uint64_t now = spread_now(s, b);
    assert_true(now > end && now < renewed_end);
    struct queue_work *w = NULL;
    int n = spread_pick(s, b, now, 4, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
    spread_assert_leased(s, live, "D", 1, lease, 3, renewed_end);

    /* At the renewed end: due again, and leased anew by B. */
    spread_advance_past(s, b, renewed_end);
    n = spread_pick(s, b, spread_now(s, b), 4, &w);
    assert_int_equal(n, 1);
    assert_string_equal(w[0].queue_id, "D");
    uint64_t lease2 = spread_lease(s, b, w, 1, b + 1);
    uint64_t end2 = s->last_end;
    queue_work_free(w, (size_t)n);
    assert_int_not_equal(lease2, lease);
    cluster_sync(s->c, b, live);
    spread_assert_leased(s, live, "D", 1, lease2, b + 1, end2);

    /* A comes back as a follower and applies the same: its hook reports the lapse too. */
    heal(s->c, 0, ISOLATE_KILL);
    cluster_sync(s->c, b, ALL);
    spread_assert_leased(s, ALL, "D", 1, lease2, b + 1, end2);
    for (unsigned i = 0; i < N_SRV; i++) {
        assert_int_equal(s->log[i].n_lapses, 1);
        assert_int_equal(s->log[i].lapses[0].old_lease, lease);
        assert_int_equal(s->log[i].lapses[0].old_node, 3);
        assert_int_equal(s->log[i].lapses[0].new_lease, lease2);
        assert_int_equal(s->log[i].lapses[0].new_node, b + 1);
    }
    assert_int_equal(cluster_leader_of(s->c, s->c->n), b);
}

/* ------------------------------------------------------------------------
 * 4. Per-destination limits count every node's leases
 * ------------------------------------------------------------------------ */

#define PER_DEST 3
#define BUSY_DEST "[busy.test]:25"

/* spread_assert_at_most - on every server in mask: at most PER_DEST live leases at BUSY_DEST. */
static void spread_assert_at_most(struct spread *s, unsigned mask, uint64_t now, unsigned want)
{
    for (unsigned i = 0; i < N_SRV; i++) {
        if (!(mask & (1u << i)))
            continue;
        struct spread_dest_count d = spread_leased_at(s, i, BUSY_DEST, now);
        assert_true(d.n <= PER_DEST);
        assert_int_equal(d.n, want);
    }
}

static void test_per_dest_limit_across_nodes(void **state)
{
    struct spread *s = *state;
    spread_start(s, 0);
    uint64_t t = spread_now(s, 0);
    char ids[8][8];
    for (unsigned k = 0; k < 8; k++) {
        snprintf(ids[k], sizeof(ids[k]), "P%u", k);
        spread_enqueue(s, 0, ids[k], "busy.test", 1, t + 120 * HOUR);
    }

    /* The first pick: PER_DEST of them, one to each node. */
    struct queue_work *w = NULL;
    int n = spread_pick(s, 0, spread_now(s, 0), PER_DEST, &w);
    assert_int_equal(n, PER_DEST);
    char held_by[N_SRV + 1][QUEUE_ID_MAX];
    uint64_t lease_of[N_SRV + 1];
    for (int k = 0; k < n; k++) {
        assert_string_equal(w[k].dest, BUSY_DEST);
        lease_of[k + 1] = spread_lease(s, 0, &w[k], 1, (uint64_t)k + 1);
        hamr_strlcpy(held_by[k + 1], w[k].queue_id, sizeof(held_by[k + 1]));
    }
    queue_work_free(w, (size_t)n);
    cluster_sync(s->c, 0, ALL);
    spread_assert_at_most(s, ALL, spread_now(s, 0), PER_DEST);
    for (unsigned i = 0; i < N_SRV; i++) {
        struct spread_dest_count d = spread_leased_at(s, i, BUSY_DEST, spread_now(s, 0));
        for (unsigned node = 1; node <= N_SRV; node++)
            assert_int_equal(d.by_node[node], 1);
    }
    /* Full, whoever holds them: nothing more, on any server. */
    for (unsigned i = 0; i < N_SRV; i++) {
        n = spread_pick(s, i, spread_now(s, 0), PER_DEST, &w);
        assert_int_equal(n, 0);
        queue_work_free(w, 0);
    }

    /* Node 2's delivery ends: one slot, and only one, is free. */
    assert_int_equal(
        spread_outcome(s, 0, 2, held_by[2], lease_of[2], 1, QUEUE_ENTRY_DELIVERED)->res.finished,
        1);
    n = spread_pick(s, 0, spread_now(s, 0), PER_DEST, &w);
    assert_int_equal(n, 1);
    uint64_t lease_again = spread_lease(s, 0, w, 1, 3);
    char again[QUEUE_ID_MAX];
    hamr_strlcpy(again, w[0].queue_id, sizeof(again));
    queue_work_free(w, (size_t)n);
    n = spread_pick(s, 0, spread_now(s, 0), PER_DEST, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
    cluster_sync(s->c, 0, ALL);
    spread_assert_at_most(s, ALL, spread_now(s, 0), PER_DEST);

    /* A new leader (node 2) counts the replicated leases: still full. */
    for (unsigned i = 0; i < N_SRV; i++)
        assert_int_equal(cluster_raft(s->c, i)->election_timeout, ELECTION_MS);
    raft_fixture_depose(&s->c->f);
    cluster_elect(s->c, 1);
    cluster_barrier(s->c, 1);
    spread_lead(s, 1);
    uint64_t now = spread_now(s, 1);
    n = spread_pick(s, 1, now, PER_DEST, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
    spread_assert_at_most(s, ALL, now, PER_DEST);
    /* One more allowed: exactly one more is given. */
    n = spread_pick(s, 1, now, PER_DEST + 1, &w);
    assert_int_equal(n, 1);
    queue_work_free(w, (size_t)n);

    /* Node 3 reports under the old leader's lease: the slot frees on the new leader. */
    assert_int_equal(
        spread_outcome(s, 1, 3, again, lease_again, 1, QUEUE_ENTRY_DEFERRED)->res.finished, 0);
    cluster_sync(s->c, 1, ALL);
    for (unsigned i = 0; i < N_SRV; i++)
        assert_int_equal(s->log[i].ended[3], 1);
    spread_assert_at_most(s, ALL, spread_now(s, 1), PER_DEST - 1);
    n = spread_pick(s, 1, spread_now(s, 1), PER_DEST, &w);
    assert_int_equal(n, 1);
    assert_string_equal(w[0].dest, BUSY_DEST);
    spread_lease(s, 1, w, 1, 1);
    queue_work_free(w, (size_t)n);
    cluster_sync(s->c, 1, ALL);
    spread_assert_at_most(s, ALL, spread_now(s, 1), PER_DEST);
    n = spread_pick(s, 1, spread_now(s, 1), PER_DEST, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
    cluster_assert_same(s->c, ALL);
}

/* ------------------------------------------------------------------------
 * 5. Outcomes only from the holder
 * ------------------------------------------------------------------------ */

static void test_outcome_from_non_holder_refused(void **state)
{
    struct spread *s = *state;
    spread_start(s, 0);
    uint64_t end = 0;
    uint64_t lease = spread_lease_one(s, "E", "e.test", 2, &end);

    /* The right lease id from node 2, then from node 1 (the leader itself): refused. */
    for (uint64_t node = 1; node <= 2; node++) {
        struct cluster_prop *p = spread_outcome(s, 0, node, "E", lease, 2, QUEUE_ENTRY_DELIVERED);
        assert_int_equal(p->res.finished, 0);
        p = spread_outcome(s, 0, node, "E", lease, 2, QUEUE_ENTRY_DEFERRED);
        assert_int_equal(p->res.finished, 0);
    }
    cluster_sync(s->c, 0, ALL);
    spread_assert_leased(s, ALL, "E", 2, lease, 3, end);
    for (unsigned i = 0; i < N_SRV; i++) {
        for (unsigned node = 1; node <= N_SRV; node++)
            assert_int_equal(s->log[i].ended[node], 0);
        struct queue_stats st;
        queue_get_stats(s->c->srv[i].q, &st);
        assert_int_equal(st.rcpts_leased, 2);
    }

    /* The holder's: applies on every server. */
    struct cluster_prop *p = spread_outcome(s, 0, 3, "E", lease, 2, QUEUE_ENTRY_DELIVERED);
    assert_int_equal(p->res.finished, 1);
    cluster_sync(s->c, 0, ALL);
    for (unsigned i = 0; i < N_SRV; i++) {
        assert_null(queue_find(s->c->srv[i].q, "E"));
        assert_true(queue_contains(s->c->srv[i].q, "E"));
        assert_int_equal(s->log[i].ended[3], 1);
    }
    cluster_assert_same(s->c, ALL);
}

/* ------------------------------------------------------------------------
 * 6. Wall clocks stepped an hour: cluster time does not follow
 * ------------------------------------------------------------------------ */

/* spread_count_kind - items of kind in work[0..n). */
static int spread_count_kind(const struct queue_work *w, int n, enum queue_work_kind kind)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += w[i].kind == kind;
    return k;
}

/*
 * spread_none_live - pick on server i at now: no item for X or Y (leased)
 * and nothing expired; the pending Z and V may be given.
 */
static void spread_none_live(struct spread *s, unsigned i, uint64_t now)
{
    struct queue_work *w = NULL;
    int n = spread_pick(s, i, now, 4, &w);
    assert_null(spread_find_work(w, n, "X"));
    assert_null(spread_find_work(w, n, "Y"));
    assert_int_equal(spread_count_kind(w, n, QUEUE_WORK_EXPIRE), 0);
    queue_work_free(w, (size_t)n);
}

static void test_wall_clock_jumps(void **state)
{
    struct spread *s = *state;
    spread_start(s, 0);
    uint64_t t = spread_now(s, 0);
    assert_int_equal(t, T0 + spread_mono(s));
    /* X expires in half an hour, Y in five days. */
    spread_enqueue(s, 0, "X", "x.test", 1, t + HOUR / 2);
    spread_enqueue(s, 0, "Y", "y.test", 1, t + 120 * HOUR);
    struct queue_work *w = NULL;
    int n = spread_pick(s, 0, spread_now(s, 0), 4, &w);
    assert_int_equal(n, 2);
    uint64_t lease_x = spread_lease(s, 0, spread_find_work(w, n, "X"), 1, 2);
    uint64_t end_x = s->last_end;
    uint64_t lease_y = spread_lease(s, 0, spread_find_work(w, n, "Y"), 1, 3);
    uint64_t end_y = s->last_end;
    queue_work_free(w, (size_t)n);
    cluster_sync(s->c, 0, ALL);

    /* The leader's wall clock jumps an hour forward: the voters' median does not. */
    s->wall_off[0] = (int64_t)HOUR;
    spread_advance(s, 1000);
    assert_int_equal(spread_sample(s, 0), 0);
    uint64_t now = spread_now(s, 0);
    assert_int_equal(now, T0 + spread_mono(s));
    /* What the wall clock would have done: X expired, Y re-leased while its holder delivers. */
    n = spread_pick(s, 0, spread_wall(s, 0), 4, &w);
    assert_int_equal(spread_count_kind(w, n, QUEUE_WORK_EXPIRE), 1);
    assert_int_equal(spread_count_kind(w, n, QUEUE_WORK_DELIVER), 1);
    queue_work_free(w, (size_t)n);
    /* What cluster time does: nothing. */
    n = spread_pick(s, 0, now, 4, &w);
    assert_int_equal(n, 0);
    queue_work_free(w, 0);
    /* Entries are stamped with cluster time too. */
    spread_enqueue(s, 0, "Z", "z.test", 1, now + 120 * HOUR);
    cluster_sync(s->c, 0, ALL);
    for (unsigned i = 0; i < N_SRV; i++) {
        assert_int_equal(queue_find(s->c->srv[i].q, "Z")->received_at_ms, now);
        assert_int_equal(queue_last_timestamp(s->c->srv[i].q), now);
    }
    spread_assert_leased(s, ALL, "X", 1, lease_x, 2, end_x);
    spread_assert_leased(s, ALL, "Y", 1, lease_y, 3, end_y);

    /* Now an hour back: cluster time still runs on, never back. */
    s->wall_off[0] = -(int64_t)HOUR;
    spread_advance(s, 1000);
    assert_int_equal(spread_sample(s, 0), 0);
    uint64_t now2 = spread_now(s, 0);
    assert_true(now2 >= now + 1000);
    assert_int_equal(now2, T0 + spread_mono(s));
    spread_none_live(s, 0, now2);
    /* Past the leases' end (cluster time) X and Y are due again, for delivery, not expiry. */
    spread_advance_past(s, 0, end_y);
    assert_int_equal(spread_sample(s, 0), 0);
    n = spread_pick(s, 0, spread_now(s, 0), 4, &w);
    assert_int_equal(n, 3); /* X, Y, and Z still pending */
    assert_int_equal(spread_count_kind(w, n, QUEUE_WORK_DELIVER), 3);
    struct queue_work xy[2] = {*spread_find_work(w, n, "X"), *spread_find_work(w, n, "Y")};
    uint64_t lease2 = spread_lease(s, 0, xy, 2, 1);
    uint64_t end2 = s->last_end;
    queue_work_free(w, (size_t)n);
    cluster_sync(s->c, 0, ALL);
    uint64_t last = queue_last_timestamp(s->c->srv[1].q);
    assert_int_equal(last, end2 - LEASE_MS);

    /* A new leader whose wall clock is an hour behind, hearing only itself and node 3. */
    s->wall_off[0] = 0;
    s->wall_off[1] = -(int64_t)HOUR;
    for (unsigned i = 0; i < N_SRV; i++)
        assert_int_equal(cluster_raft(s->c, i)->election_timeout, ELECTION_MS);
    raft_fixture_depose(&s->c->f);
    cluster_elect(s->c, 1);
    cluster_barrier(s->c, 1);
    isolate(s->c, 0, ISOLATE_KILL);
    spread_lead(s, 1);
    uint64_t bnow = spread_now(s, 1);
    assert_true(bnow >= last);
    assert_true(bnow > spread_wall(s, 1) + HOUR / 2);
    /* Its pick re-leases nothing live and expires nothing. */
    spread_none_live(s, 1, bnow);
    /* Its stamps do not go back. */
    spread_enqueue(s, 1, "V", "v.test", 1, bnow + 120 * HOUR);
    cluster_sync(s->c, 1, 0x6);
    for (unsigned i = 1; i < N_SRV; i++) {
        const struct queue *q = s->c->srv[i].q;
        assert_int_equal(queue_find(q, "V")->received_at_ms, bnow);
        assert_true(queue_last_timestamp(q) >= last);
        assert_true(queue_find(q, "V")->received_at_ms >= queue_find(q, "Z")->received_at_ms);
    }
    /* Nor does its time, as its wall clock stays behind. */
    uint64_t mono = spread_mono(s), before = spread_now(s, 1);
    spread_advance(s, 2000);
    assert_int_equal(spread_sample(s, 1), 0);
    assert_int_equal(spread_now(s, 1), before + (spread_mono(s) - mono));
    spread_none_live(s, 1, spread_now(s, 1));
    spread_assert_leased(s, 0x6, "X", 1, lease2, 1, end2);
    spread_assert_leased(s, 0x6, "Y", 1, lease2 + 1, 1, end2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_leases_spread_over_nodes, spread_setup,
                                        spread_teardown),
        cmocka_unit_test_setup_teardown(test_holder_cut_off, spread_setup, spread_teardown),
        cmocka_unit_test_setup_teardown(test_renewal_across_leader_change, spread_setup,
                                        spread_teardown),
        cmocka_unit_test_setup_teardown(test_per_dest_limit_across_nodes, spread_setup,
                                        spread_teardown),
        cmocka_unit_test_setup_teardown(test_outcome_from_non_holder_refused, spread_setup,
                                        spread_teardown),
        cmocka_unit_test_setup_teardown(test_wall_clock_jumps, spread_setup, spread_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
