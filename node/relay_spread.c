/*
 * relay_spread.c - every node delivers: leases to any node, renewed while
 * they are used, and one cluster time (from cluster level 6,
 * QUEUE_LEVEL_SPREAD; below it only the leader delivers, as before).
 *
 * Every node reports to the leader every RELAY_REPORT_MS over the peer
 * channel (PeerReport): its boot id, its free delivery slots, the bodies it
 * lacks, its wall and monotonic clocks, the leases it is delivering under
 * that want renewing, and the next hops it has suspended. The leader keeps
 * what it hears in a member table, handles its own report the same way
 * without the network, and
 *
 *   - gives each delivery to the node with the most free slots that can
 *     reach its next hop (relay_spread_holder): one Lease entry per holder.
 *     A node not heard from for RELAY_REPORT_FRESH_MS, a draining one, one
 *     that lacks bodies and one that is behind in the log (it had not
 *     applied what the leader had a tick earlier: it would get the Lease
 *     too late) get nothing. Per-destination limits are the
 *     queue's, so they hold for the whole cluster: the leader counts every
 *     lease whoever holds it. Connections per next hop are shared out so
 *     that every node that reaches it gets one before any gets a second,
 *     and a node whose probe is due gets one (relay_spread_room_wanted).
 *   - renews the leases a holder still uses with one LeaseRenew entry whose
 *     end is the leader's cluster time plus lease_time.
 *   - answers with its cluster time, which every node uses for the times it
 *     stamps (node/cluster_clock.h).
 *
 * A holder starts the deliveries of a Lease when the entry applies on it
 * (the queue's lease hook), whichever node it is. Its own end of a lease is
 * counted on its monotonic clock, lease_time / 5 short of the leader's end
 * for drift and for the time the entry took to reach it: from the grant's
 * apply, and after a renewal from the moment it asked for it (which was
 * before the leader stamped the new end). A delivery still running past
 * that end is stopped before its final dot (the next chunk of its body
 * fails) and no Outcome is sent: the leader leases the recipients again
 * once the lease has run out. A delivery that had passed its final dot
 * when its holder died or was cut off is the one duplicate window: the
 * Lease that takes its recipients over is logged on every node as a
 * possible duplicate with both lease ids, and counted.
 *
 * Owns: struct relay_spread_state (its timers, the member table, the
 * cluster clock, the starts waiting for the loop).
 * May call: the queue (read, the lease hook), queue_entry (packing), the
 * proposer, the peer client, the directory, consensus (state), the
 * delivery start of relay_sched.c, metrics; never relay.c.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/common.h"
#include "util/hash.h"
#include "util/peak.h"
#include "util/err.h"
#include "util/log.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "consensus/consensus.h"
#include "node/clock.h"
#include "node/cluster_clock.h"
#include "node/metrics.h"
#include "node/relay_internal.h"

/* A holder counts its end of a lease this much short of the leader's. */
#define RELAY_LEASE_MARGIN_DIV 5
/* A lease is renewed once less than this part (1/2) of it is left. */
#define RELAY_RENEW_DIV 2

bool relay_spread_on(const struct relay *r)
{
    return queue_cluster_level(r->queue) >= QUEUE_LEVEL_SPREAD;
}

uint64_t relay_lease_ms(const struct relay *r)
{
    uint64_t ms = r->cfg->lease_time_ms;
    if (!relay_spread_on(r) && ms < RELAY_LEGACY_LEASE_MS)
        ms = RELAY_LEGACY_LEASE_MS; /* nobody renews below the level */
    return ms;
}

/* relay_lease_margin - how much short of the leader's end a holder stops. */
static uint64_t relay_lease_margin(const struct relay *r)
{
    return relay_lease_ms(r) / RELAY_LEASE_MARGIN_DIV;
}

uint64_t relay_cluster_now(struct relay *r)
{
    uint64_t wall = clock_wall_ms();
    if (!relay_spread_on(r))
        return wall;
    return cluster_clock_now(&r->spread.clock, uv_now(r->loop), wall);
}

/* ---------------------------------------------------------------------------
 * The holder: leases granted, renewed, run out.
 * ------------------------------------------------------------------------- */

/* relay_spread_start_cb - start the leases granted since the last turn. */
static void relay_spread_start_cb(uv_timer_t *t)
{
    struct relay *r = t->data;
    struct relay_start *s = r->spread.starts;
    r->spread.starts = NULL;
    r->spread.starts_tail = &r->spread.starts;
    while (s != NULL) {
        struct relay_start *next = s->next;
        const struct queue_msg *m = r->stopping ? NULL : queue_find(r->queue, s->queue_id);
        if (m != NULL)
            relay_deliver_start(r, m, s->lease_id, s->dest, s->deadline);
        free(s);
        s = next;
    }
}

/*
 * relay_spread_granted - the lease hook: lease_id of queue_id is ours. Noted
 * now (this is inside apply) and started on the loop's next turn.
 */
static void relay_spread_granted(void *arg,
                                 const char *queue_id,
                                 uint64_t lease_id,
                                 const char *dest,
                                 uint64_t expires_at_ms)
{
    struct relay *r = arg;
    if (r->stopping)
        return;
    uint64_t lease = relay_lease_ms(r), margin = relay_lease_margin(r);
    uint64_t cnow = relay_cluster_now(r);
    uint64_t left = expires_at_ms > cnow ? expires_at_ms - cnow : 0;
    if (left > lease)
        left = lease;
    if (left <= margin) {
        /* Too late to be safe: leave it to run out; the leader leases it again. */
        r->spread.late++;
        log_warn("lease granted too late to use id=%s lease=%" PRIx64 " left_ms=%" PRIu64, queue_id,
                 lease_id, left);
        return;
    }
    struct relay_start *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return; /* the lease runs out and the work is picked again */
    hamr_strlcpy(s->queue_id, queue_id, sizeof(s->queue_id));
    hamr_strlcpy(s->dest, dest != NULL ? dest : "", sizeof(s->dest));
    s->lease_id = lease_id;
    s->deadline = uv_now(r->loop) + left - margin;
    *r->spread.starts_tail = s;
    r->spread.starts_tail = &s->next;
    if (!uv_is_active((uv_handle_t *)&r->spread.start_timer))
        uv_timer_start(&r->spread.start_timer, relay_spread_start_cb, 0, 0);
}

/* relay_spread_renewed - the lease hook: the leader extended one of our leases. */
static void relay_spread_renewed(void *arg,
                                 const char *queue_id,
                                 uint64_t lease_id,
                                 uint64_t expires_at_ms,
                                 uint64_t asked_mono_ms)
{
    struct relay *r = arg;
    (void)expires_at_ms;
    /* The leader stamped its end after we asked: count from the asking. */
    uint64_t deadline = asked_mono_ms + relay_lease_ms(r) - relay_lease_margin(r);
    for (struct relay_delivery *d = relay_sched_lease_first(r, lease_id); d != NULL;
         d = d->lease_next)
        if (d->lease_id == lease_id && strcmp(d->queue_id, queue_id) == 0 &&
            d->deadline < deadline && !d->lapsed)
            d->deadline = deadline;
    for (struct relay_start *s = r->spread.starts; s != NULL; s = s->next)
        if (s->lease_id == lease_id && s->deadline < deadline)
            s->deadline = deadline;
}

static struct relay_member *relay_member_find(struct relay *r, uint64_t node, bool make);

/*
 * relay_spread_ended - the lease hook: node's attempt is over. On the leader
 * its slot is free again now, not at its next report.
 */
static void relay_spread_ended(void *arg, uint64_t node)
{
    struct relay *r = arg;
    struct relay_member *mb = relay_member_find(r, node, false);
    if (mb == NULL)
        return;
    if (mb->assigned > 0)
        mb->assigned--;
    else if (mb->deliveries > 0)
        mb->deliveries--;
}

/* relay_spread_lapsed - the lease hook, on every node: a lease ran out and was taken over. */
static void relay_spread_lapsed(void *arg,
                                const char *queue_id,
                                const char *rcpt,
                                uint64_t old_lease,
                                uint64_t old_node,
                                uint64_t new_lease,
                                uint64_t new_node)
{
    struct relay *r = arg;
    r->spread.lapses++;
    if (new_lease == 0) {
        log_warn("lease ran out id=%s to=<%s> lease=%" PRIx64 " node=%" PRIu64
                 " and the recipient failed without a lease (expired or no route): possibly "
                 "delivered, if that attempt had passed its final dot",
                 queue_id, rcpt, old_lease, old_node);
        return;
    }
    log_warn("lease ran out id=%s to=<%s> lease=%" PRIx64 " node=%" PRIu64 " new_lease=%" PRIx64
             " new_node=%" PRIu64
             " possible duplicate: delivered twice if the first attempt had passed its final dot",
             queue_id, rcpt, old_lease, old_node, new_lease, new_node);
}

/*
 * relay_spread_expire - stop every delivery past its end: its next chunk
 * fails, so the client drops the connection before the final dot.
 */
static void relay_spread_expire(struct relay *r)
{
    for (struct relay_delivery *d = r->sched.deliveries; d != NULL; d = d->next)
        (void)relay_deliver_lapsed(d);
}

/* ---------------------------------------------------------------------------
 * The report: every node, every RELAY_REPORT_MS.
 * ------------------------------------------------------------------------- */

/* relay_report - a PeerReport and the storage its repeated fields point into. */
struct relay_report {
    Hamr__PeerReport rep;
    Hamr__LeaseRenewItem *items;
    Hamr__LeaseRenewItem **item_ptrs;
    char **suspended;
    char **probing;
};

static void relay_report_free(struct relay_report *rr)
{
    free(rr->items);
    free(rr->item_ptrs);
    free(rr->suspended);
    free(rr->probing);
}

/*
 * relay_report_build - this node's report: the leases with less than
 * 1/RELAY_RENEW_DIV of their time left want renewing. 0 or HAMR_ENOMEM.
 */
static int relay_report_build(struct relay *r, uint64_t now, struct relay_report *rr)
{
    memset(rr, 0, sizeof(*rr));
    hamr__peer_report__init(&rr->rep);
    size_t n = r->sched.n_deliveries;
    rr->items = calloc(n ? n : 1, sizeof(*rr->items));
    rr->item_ptrs = calloc(n ? n : 1, sizeof(*rr->item_ptrs));
    size_t ns = r->sched.n_suspended < RELAY_REPORT_DESTS_MAX ? r->sched.n_suspended
                                                              : RELAY_REPORT_DESTS_MAX;
    rr->suspended = calloc(ns ? ns : 1, sizeof(char *));
    rr->probing = calloc(ns ? ns : 1, sizeof(char *));
    if (rr->items == NULL || rr->item_ptrs == NULL || rr->suspended == NULL ||
        rr->probing == NULL) {
        relay_report_free(rr);
        return HAMR_ENOMEM;
    }
    uint64_t renew_below = relay_lease_ms(r) / RELAY_RENEW_DIV;
    size_t k = 0;
    for (struct relay_delivery *d = r->sched.deliveries; d != NULL && k < n; d = d->next) {
        if (d->lapsed || d->deadline > now + renew_below)
            continue;
        hamr__lease_renew_item__init(&rr->items[k]);
        rr->items[k].queue_id = d->queue_id;
        rr->items[k].lease_id = d->lease_id;
        rr->item_ptrs[k] = &rr->items[k];
        k++;
    }
    rr->rep.boot_id = r->boot_id;
    rr->rep.delivery_slots = (uint32_t)r->cfg->delivery_slots;
    rr->rep.deliveries = (uint32_t)r->sched.n_deliveries;
    rr->rep.bodies_missing = queue_bodies_missing(r->queue);
    rr->rep.wall_ms = clock_wall_ms();
    rr->rep.mono_ms = now;
    rr->rep.applied_index = consensus_applied_index(r->cons);
    rr->rep.n_renew = k;
    rr->rep.renew = rr->item_ptrs;
    for (size_t i = 0; i < ns; i++) {
        struct relay_suspended *s = &r->sched.suspended[i];
        if (relay_sched_dest_state(r, s->dest, now) == RELAY_DEST_PROBE)
            rr->probing[rr->rep.n_probing++] = s->dest;
        else
            rr->suspended[rr->rep.n_suspended++] = s->dest;
    }
    rr->rep.suspended = rr->suspended;
    rr->rep.probing = rr->probing;
    return 0;
}

/* relay_report_call - a report on its way to the leader. */
struct relay_report_call {
    struct relay *relay;
    uint64_t sent;
};

/* relay_spread_answered - the leader's answer: its cluster time. */
static void relay_spread_answered(void *arg, int status, const Hamr__PeerResult *res)
{
    struct relay_report_call *rc = arg;
    struct relay *r = rc->relay;
    r->spread.report_in_flight = false;
    if (status == 0 && res->status == 0 && res->cluster_ms != 0 && !r->stopping)
        cluster_clock_answer(&r->spread.clock, rc->sent, uv_now(r->loop), res->cluster_ms);
    else if (status != 0 || res->status != 0)
        log_debug("report not answered error=\"%s\"",
                  hamr_strerror(status != 0 ? status : res->status));
    free(rc);
    if (r->spread.report_again) {
        r->spread.report_again = false;
        relay_spread_tell(r);
    }
}

static void relay_spread_report_in(struct relay *r,
                                   uint64_t node,
                                   const Hamr__PeerReport *rep,
                                   uint64_t now);

/*
 * relay_spread_report - send this node's report to the leader (the leader
 * takes its own, and kicks the scheduler only when kick says so: never
 * from inside it, where a kick would start it again at once).
 */
static void relay_spread_report(struct relay *r, uint64_t now, bool kick)
{
    if (r->spread.report_in_flight)
        return;
    struct relay_report rr;
    if (relay_report_build(r, now, &rr) != 0)
        return;
    if (consensus_is_ready(r->cons)) {
        relay_spread_report_in(r, r->cfg->node_id, &rr.rep, now);
        relay_report_free(&rr);
        if (kick)
            relay_sched_kick(r);
        return;
    }
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    char addr[CONSENSUS_ADDR_MAX];
    struct relay_report_call *rc = NULL;
    if (info.leader_id != 0 && info.leader_id != r->cfg->node_id && r->peer_cli != NULL &&
        directory_peer_address(r->dir, info.leader_id, addr, sizeof(addr)) == 0 &&
        (rc = calloc(1, sizeof(*rc))) != NULL) {
        rc->relay = r;
        rc->sent = now;
        Hamr__PeerMsg msg = HAMR__PEER_MSG__INIT;
        msg.body_case = HAMR__PEER_MSG__BODY_REPORT;
        msg.report = &rr.rep;
        if (peer_client_call(r->peer_cli, info.leader_id, addr, &msg, 2 * RELAY_REPORT_MS,
                             relay_spread_answered, rc) == 0)
            r->spread.report_in_flight = true;
        else
            free(rc);
    }
    relay_report_free(&rr);
}

/* relay_spread_tick - every RELAY_REPORT_MS: stop what ran out, report, maybe schedule. */
static void relay_spread_tick(uv_timer_t *t)
{
    struct relay *r = t->data;
    if (r->stopping)
        return;
    uint64_t now = uv_now(r->loop);
    relay_spread_expire(r);
    if (!relay_spread_on(r))
        return;
    r->spread.applied_mark = r->spread.applied_now;
    r->spread.applied_now = consensus_applied_index(r->cons);
    relay_spread_report(r, now, true);
    int64_t skew = cluster_clock_skew(&r->spread.clock, now, clock_wall_ms());
    metrics_gauge_set(r->metrics, METRICS_CLOCK_SKEW, 0, (double)skew / 1000.0);
    metrics_gauge_set(r->metrics, METRICS_CLOCK_SKEWED, 0,
                      cluster_clock_skewed(&r->spread.clock, now, clock_wall_ms()) ? 1 : 0);
}

/* ---------------------------------------------------------------------------
 * The leader: members, renewals, the clock, who gets a delivery.
 * ------------------------------------------------------------------------- */

/* relay_member_find - node's entry, made if new (NULL when the table is full). */
static struct relay_member *relay_member_find(struct relay *r, uint64_t node, bool make)
{
    for (size_t i = 0; i < r->spread.n_members; i++)
        if (r->spread.members[i].id == node)
            return &r->spread.members[i];
    if (!make || r->spread.n_members == HAMR_ARRAY_LEN(r->spread.members))
        return NULL;
    struct relay_member *mb = &r->spread.members[r->spread.n_members++];
    memset(mb, 0, sizeof(*mb));
    mb->id = node;
    return mb;
}

/* relay_member_dests_free - forget a member's next hop lists. */
static void relay_member_dests_free(struct relay_member *mb)
{
    for (size_t i = 0; i < mb->n_suspended; i++)
        free(mb->suspended[i]);
    for (size_t i = 0; i < mb->n_probing; i++)
        free(mb->probing[i]);
    free(mb->suspended);
    free(mb->probing);
    mb->suspended = mb->probing = NULL;
    mb->n_suspended = mb->n_probing = 0;
}

/* relay_strv_copy - n strings copied (at most RELAY_REPORT_DESTS_MAX); NULL on no memory. */
static char **relay_strv_copy(char *const *v, size_t n, size_t *out_n)
{
    if (n > RELAY_REPORT_DESTS_MAX)
        n = RELAY_REPORT_DESTS_MAX;
    char **c = calloc(n ? n : 1, sizeof(*c));
    if (c == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] != NULL && strlen(v[i]) < QUEUE_DEST_MAX && (c[k] = strdup(v[i])) != NULL)
            k++;
    *out_n = k;
    return c;
}

/* relay_member_fresh - heard from this term, recently. */
static bool relay_member_fresh(const struct relay *r, const struct relay_member *mb, uint64_t now)
{
    return mb->heard != 0 && now - mb->heard <= RELAY_REPORT_FRESH_MS;
}

/*
 * relay_spread_sample - the wall clocks of the voters heard from recently,
 * brought to now, for the cluster clock; logs a step forward.
 */
static void relay_spread_sample(struct relay *r, uint64_t now)
{
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    uint64_t walls[CONSENSUS_MAX_MEMBERS];
    size_t n = 0, voters = 0;
    for (size_t i = 0; i < info.n_members; i++) {
        if (info.roles[i] != CONSENSUS_ROLE_VOTER)
            continue;
        voters++;
        const struct relay_member *mb = relay_member_find(r, info.members[i].id, false);
        if (mb != NULL && relay_member_fresh(r, mb, now))
            walls[n++] = mb->wall_ms + (now - mb->heard);
    }
    if (voters == 0)
        return;
    /* Led since before the log was replayed (or the level reached 6): start
     * again from the newest time in the log, never backwards. */
    uint64_t floor = queue_last_timestamp(r->queue);
    if (!cluster_clock_synced(&r->spread.clock) &&
        cluster_clock_now(&r->spread.clock, now, 0) < floor)
        cluster_clock_lead(&r->spread.clock, now, floor);
    uint64_t stepped = cluster_clock_sample(&r->spread.clock, now, walls, n, voters);
    if (stepped > 0)
        log_warn("cluster clock stepped forward by %" PRIu64 " ms to the voters' median", stepped);
}

/* relay_renew_req - a LeaseRenew in flight for one member. */
struct relay_renew_req {
    struct relay *relay;
    uint64_t node;
};

/* relay_spread_renew_done - a LeaseRenew committed (or not). */
static void relay_spread_renew_done(void *arg, int status, intptr_t result)
{
    struct relay_renew_req *rq = arg;
    struct relay *r = rq->relay;
    struct relay_member *mb = relay_member_find(r, rq->node, false);
    if (mb != NULL)
        mb->renewing = false;
    if (status != 0)
        log_warn("lease renewal not committed node=%" PRIu64 " error=\"%s\"", rq->node,
                 hamr_strerror(status));
    (void)result;
    free(rq);
}

/* relay_spread_holds - does node (boot) still hold lease_id of queue_id? */
static bool relay_spread_holds(struct relay *r,
                               const char *queue_id,
                               uint64_t lease_id,
                               uint64_t node,
                               const char *boot)
{
    const struct queue_msg *m = queue_find(r->queue, queue_id);
    for (size_t i = 0; m != NULL && i < m->n_rcpts; i++) {
        const struct queue_lease *l = queue_rcpt_lease(&m->rcpts[i]);
        if (m->rcpts[i].state == QUEUE_RCPT_LEASED && l->id == lease_id && l->node == node &&
            strcmp(l->boot_id ? l->boot_id : "", boot) == 0)
            return true;
    }
    return false;
}

/*
 * relay_spread_renew - one LeaseRenew of the leases node (boot) asked to
 * keep and still holds, until our cluster time plus lease_time.
 */
static void relay_spread_renew(struct relay *r,
                               struct relay_member *mb,
                               const Hamr__PeerReport *rep)
{
    if (mb->renewing || rep->n_renew == 0)
        return;
    struct queue_entry_renew_item *items = calloc(rep->n_renew, sizeof(*items));
    struct relay_renew_req *rq = calloc(1, sizeof(*rq));
    if (items == NULL || rq == NULL) {
        free(items);
        free(rq);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < rep->n_renew; i++) {
        const Hamr__LeaseRenewItem *it = rep->renew[i];
        if (it->lease_id == 0 ||
            !relay_spread_holds(r, it->queue_id, it->lease_id, mb->id, mb->boot_id))
            continue;
        items[k].queue_id = it->queue_id;
        items[k].lease_id = it->lease_id;
        k++;
    }
    uint64_t cnow = relay_cluster_now(r);
    struct queue_entry_lease_renew_args a = {
        .node_id = mb->id,
        .boot_id = mb->boot_id,
        .expires_at_ms = cnow + relay_lease_ms(r),
        .asked_mono_ms = rep->mono_ms,
        .items = items,
        .n_items = k,
    };
    uint8_t *entry = NULL;
    size_t len = 0;
    int rv =
        k == 0 ? HAMR_ENOTFOUND : queue_entry_lease_renew(&a, cnow, consensus_malloc, &entry, &len);
    free(items);
    if (rv == 0) {
        rq->relay = r;
        rq->node = mb->id;
        rv = proposer_append_packed(r->prop, entry, len, r->cfg->proposal_timeout_ms,
                                    relay_spread_renew_done, rq);
    }
    if (rv != 0) {
        free(rq);
        return;
    }
    mb->renewing = true;
}

/*
 * relay_member_place - leader: where mb (its report says boot and applied,
 * our own applied index is ours) stands in the log. A node catching up
 * (restarted, wiped, cut off a while) would apply a Lease only after its
 * end, so it is behind, and gets none, while it has not applied what we
 * had a tick ago (applied_mark) or, seen (re)started, nothing made since:
 * a wiped node can sit at its snapshot's index, taking no entries (RAFT.md
 * 4.5), and in an idle cluster that index is ours too. Applied 0 is a
 * build that does not report it: never behind.
 */
void relay_member_place(struct relay *r,
                        struct relay_member *mb,
                        const char *boot,
                        uint64_t applied,
                        uint64_t ours)
{
    if (strcmp(mb->boot_id, boot) != 0) {
        if (mb->boot_id[0] != '\0')
            log_info("node %" PRIu64 " restarted (new boot id)", mb->id);
        hamr_strlcpy(mb->boot_id, boot, sizeof(mb->boot_id));
        mb->rejoin_index = ours + 1;
    }
    bool behind = applied != 0 && (applied < r->spread.applied_mark || applied < mb->rejoin_index);
    if (behind != mb->behind && mb->id != r->cfg->node_id)
        log_info("node %" PRIu64 " %s (applied index %" PRIu64 ", ours a tick ago %" PRIu64
                 ", after its start %" PRIu64 ")",
                 mb->id,
                 behind ? "is behind in the log: no deliveries until it catches up"
                        : "has caught up: deliveries again",
                 applied, r->spread.applied_mark, mb->rejoin_index);
    mb->behind = behind;
}

/*
 * relay_spread_report_in - leader: what node reports (our own too), at now
 * (uv_now): the member table, the clock, renewals; then maybe schedule.
 */
static void relay_spread_report_in(struct relay *r,
                                   uint64_t node,
                                   const Hamr__PeerReport *rep,
                                   uint64_t now)
{
    struct relay_member *mb = relay_member_find(r, node, true);
    if (mb == NULL)
        return;
    const char *boot = rep->boot_id != NULL ? rep->boot_id : "";
    relay_member_place(r, mb, boot, rep->applied_index, consensus_applied_index(r->cons));
    mb->heard = now != 0 ? now : 1;
    mb->slots = rep->delivery_slots;
    mb->deliveries = rep->deliveries;
    mb->assigned = 0;
    mb->probed = false;
    mb->bodies_missing = rep->bodies_missing;
    mb->wall_ms = rep->wall_ms;
    relay_member_dests_free(mb);
    mb->suspended = relay_strv_copy(rep->suspended, rep->n_suspended, &mb->n_suspended);
    mb->probing = relay_strv_copy(rep->probing, rep->n_probing, &mb->n_probing);
    relay_spread_sample(r, now);
    mb->skew_ms = (int64_t)(rep->wall_ms - cluster_clock_now(&r->spread.clock, now, rep->wall_ms));
    relay_spread_renew(r, mb, rep);
}

void relay_spread_serve(struct relay *r, struct peer_call *call, const Hamr__PeerReport *rep)
{
    Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (r->stopping || !consensus_is_ready(r->cons) || !relay_spread_on(r)) {
        res.status = r->stopping ? HAMR_ESHUTDOWN : HAMR_ENOTLEADER;
        res.leader_id = info.leader_id;
        (void)peer_reply(call, &res);
        return;
    }
    uint64_t node = peer_call_node(call);
    if (node != 0 && node != r->cfg->node_id) {
        relay_spread_report_in(r, node, rep, uv_now(r->loop));
        relay_sched_kick(r); /* its free slots may take work */
    }
    res.leader_id = r->cfg->node_id;
    res.cluster_ms = relay_cluster_now(r);
    (void)peer_reply(call, &res);
}

static void relay_spread_dl_free(struct relay_spread_state *sp);

void relay_spread_leader(struct relay *r, bool leader)
{
    uint64_t now = uv_now(r->loop);
    relay_spread_dl_free(&r->spread); /* a new leader counts afresh, and waits (led_at) */
    r->spread.led_at = now;
    for (size_t i = 0; i < r->spread.n_members; i++) {
        relay_member_dests_free(&r->spread.members[i]);
        memset(&r->spread.members[i], 0, sizeof(r->spread.members[i]));
    }
    r->spread.n_members = 0;
    if (leader)
        cluster_clock_lead(&r->spread.clock, now, queue_last_timestamp(r->queue));
    else
        cluster_clock_unlead(&r->spread.clock);
}

/*
 * relay_clock_usable - may this node stamp times now? Below the level
 * always (its wall clock, as before). From it: a leader at once (it starts
 * from the newest time in the log and what it knew as a follower, never
 * backwards; only a cluster that restarts as a whole, where nobody knew,
 * runs on the log's time until the voters' clocks come in a second later),
 * any other node once a leader has told it the cluster time; until then it
 * takes no mail (451), so no message gets an expiry from a clock that is
 * off. relay_spread_poke asks as soon as a leader is known.
 */
bool relay_clock_usable(struct relay *r)
{
    return !relay_spread_on(r) || cluster_clock_known(&r->spread.clock);
}

void relay_spread_poke(struct relay *r)
{
    /* Not yet told the cluster time: ask now rather than at the next tick. */
    if (!cluster_clock_known(&r->spread.clock))
        relay_spread_tell(r);
}

/*
 * relay_spread_tell - report now rather than at the next tick: this node
 * has just suspended a next hop, or does not know the cluster time yet. Until the leader hears of
 * it, it goes on giving this node deliveries there, and a refused connection fails each in a
 * millisecond: a second's worth was hundreds of attempts, each an Outcome in the raft log (a
 * restarted node, which knows of no suspension, took thousands). A report in flight is followed by
 * another once answered. The leader reads its own suspensions live.
 */
void relay_spread_tell(struct relay *r)
{
    if (r->stopping || !relay_spread_on(r) || consensus_is_ready(r->cons))
        return;
    if (r->spread.report_in_flight) {
        r->spread.report_again = true;
        return;
    }
    relay_spread_report(r, uv_now(r->loop), false);
}

bool relay_spread_ready(struct relay *r)
{
    if (!relay_spread_on(r))
        return true;
    if (!cluster_clock_synced(&r->spread.clock)) {
        /* Our own report counts at once: a lone voter need not wait a tick. */
        relay_spread_report(r, uv_now(r->loop), false);
    }
    return cluster_clock_synced(&r->spread.clock);
}

/* relay_strv_has - is s one of v[0..n)? */
static bool relay_strv_has(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

/* relay_member_usable - may mb be given new deliveries? */
static bool relay_member_usable(struct relay *r, const struct relay_member *mb, uint64_t now)
{
    if (!relay_member_fresh(r, mb, now) || mb->slots == 0)
        return false;
    if (mb->id == r->cfg->node_id)
        return true; /* the pick leaves out what we lack */
    return mb->bodies_missing == 0 && !mb->behind && !directory_draining(r->dir, mb->id);
}

/*
 * relay_member_free_slots - slots mb has left: by its report and what we
 * gave it since, or by the leases the queue says it holds, whichever is
 * more. A report can miss leases granted just before it was made (their
 * deliveries not started yet), and then all nodes look equally free.
 */
static int64_t relay_member_free_slots(const struct relay_member *mb)
{
    uint32_t busy = mb->deliveries + mb->assigned;
    return (int64_t)mb->slots - (int64_t)(busy > mb->live ? busy : mb->live);
}

/*
 * relay_member_dest - what mb's attempts say of dest: this node's own from
 * its table as it is now (an attempt that just failed counts at once), the
 * others' from their last report.
 */
static int relay_member_dest(struct relay *r, const struct relay_member *mb, const char *dest)
{
    if (mb->id == r->cfg->node_id)
        return relay_sched_dest_state(r, dest, uv_now(r->loop));
    if (relay_strv_has(mb->probing, mb->n_probing, dest))
        return RELAY_DEST_PROBE;
    if (relay_strv_has(mb->suspended, mb->n_suspended, dest))
        return RELAY_DEST_SUSPENDED;
    return RELAY_DEST_OK;
}

/* ---------------------------------------------------------------------------
 * Connections to one next hop, for the whole cluster. The leader leases at
 * most RELAY_LEASES_PER_CONN * max_per_destination deliveries there at
 * once (relay_sched.c). A holder of L of them opens at most ceil(L / 4)
 * connections there (its pool's group cap), and its L is never above the
 * leader's count of its leases: it hears of a grant after the leader
 * counted it, and its delivery has ended before the Outcome that uncounts
 * it is proposed. So the leader gives a delivery only to a holder whose
 * share keeps the sum of ceil(L_node / 4) within max_per_destination (the
 * most free slots among those, as ever). The counts are the live leases of
 * the queue (each pick counts them, queue_route.leased) plus what the pick
 * gives out.
 *
 * So that connections are not closed and opened again as a holder's L
 * goes up and down by one around a multiple of 4, a holder's cap counts
 * the most deliveries it had lately (util/peak.h, RELAY_CONN_HOLD_MS: up
 * to three times that back), and keeps its connections, idle too, while
 * that allows. The leader counts each holder's share from the most leases
 * it had lately too, looking back at least three times as far
 * (RELAY_CONN_LOOK_MS), which is never less than the holder's own peak;
 * and a new leader, which has not seen those, gives no delivery that
 * needs a new connection before it has looked back that far.
 * ------------------------------------------------------------------------- */

/* relay_dl_conns - connections n leases at one next hop allow a holder. */
static uint32_t relay_dl_conns(uint32_t n)
{
    return n / RELAY_LEASES_PER_CONN + (n % RELAY_LEASES_PER_CONN != 0);
}

/* relay_dl_place - where dl's entry for dest goes in the n slots of t (a power of two). */
static struct relay_dest_leases *relay_dl_place(struct relay_dest_leases *t,
                                                size_t n,
                                                const char *dest)
{
    size_t i = hash_fnv1a64_str(dest) & (n - 1);
    while (t[i].dest != NULL && strcmp(t[i].dest, dest) != 0)
        i = (i + 1) & (n - 1);
    return &t[i];
}

/*
 * relay_dl_rehash - the entries of the table that are still of use (keep)
 * into a new one of ncap slots; the others are freed. 0 or HAMR_ENOMEM.
 */
static int relay_dl_rehash(struct relay_spread_state *sp, size_t ncap, uint64_t now, bool prune)
{
    struct relay_dest_leases *t = calloc(ncap, sizeof(*t));
    if (t == NULL)
        return HAMR_ENOMEM;
    size_t used = 0;
    for (size_t i = 0; i < sp->dl_cap; i++) {
        struct relay_dest_leases *dl = &sp->dl[i];
        if (dl->dest == NULL)
            continue;
        if (prune) {
            /* Holders with nothing now or lately leave; an entry without any goes. */
            uint32_t k = 0;
            for (uint32_t h = 0; h < dl->holders; h++) {
                if (dl->n[h] == 0 && peak_get(&dl->recent[h], now, RELAY_CONN_LOOK_MS) == 0)
                    continue;
                dl->node[k] = dl->node[h];
                dl->n[k] = dl->n[h];
                dl->recent[k] = dl->recent[h];
                k++;
            }
            dl->holders = k;
            if (k == 0 && dl->overflow == 0) {
                free(dl->dest);
                continue;
            }
        }
        *relay_dl_place(t, ncap, dl->dest) = *dl;
        used++;
    }
    free(sp->dl);
    sp->dl = t;
    sp->dl_cap = ncap;
    sp->dl_used = used;
    return 0;
}

/* relay_dl_find - the counts of dest, made when missing; NULL: no memory (nothing leased now). */
static struct relay_dest_leases *relay_dl_find(struct relay *r, const char *dest)
{
    struct relay_spread_state *sp = &r->spread;
    if (sp->dl_broken)
        return NULL;
    if ((sp->dl_used + 1) * 2 > sp->dl_cap &&
        relay_dl_rehash(sp, sp->dl_cap != 0 ? 2 * sp->dl_cap : 64, 0, false) != 0) {
        sp->dl_broken = true;
        return NULL;
    }
    struct relay_dest_leases *dl = relay_dl_place(sp->dl, sp->dl_cap, dest);
    if (dl->dest != NULL)
        return dl;
    memset(dl, 0, sizeof(*dl));
    if ((dl->dest = strdup(dest)) == NULL) {
        sp->dl_broken = true;
        return NULL;
    }
    sp->dl_used++;
    return dl;
}

/* relay_dl_at - node's place in dl; -1: not a holder. */
static int relay_dl_at(const struct relay_dest_leases *dl, uint64_t node)
{
    for (uint32_t h = 0; h < dl->holders; h++)
        if (dl->node[h] == node)
            return (int)h;
    return -1;
}

/* relay_dl_holder - node's place in dl, made when missing; -1: beyond the table. */
static int relay_dl_holder(struct relay_dest_leases *dl, uint64_t node, bool make)
{
    int at = relay_dl_at(dl, node);
    if (at >= 0)
        return at;
    uint32_t h = dl->holders;
    if (!make || h == HAMR_ARRAY_LEN(dl->node))
        return -1;
    memset(&dl->recent[h], 0, sizeof(dl->recent[h]));
    dl->node[h] = node;
    dl->n[h] = 0;
    dl->holders++;
    return (int)h;
}

/* relay_dl_held - the connections holder h of dl may have now (its share lately). */
static uint32_t relay_dl_held(const struct relay_dest_leases *dl, uint32_t h, uint64_t now)
{
    uint32_t lately = peak_get(&dl->recent[h], now, RELAY_CONN_LOOK_MS);
    return relay_dl_conns(lately > dl->n[h] ? lately : dl->n[h]);
}

/* relay_dl_used - the connections dl's holders may have now (their shares lately). */
static uint32_t relay_dl_used(const struct relay_dest_leases *dl, uint64_t now)
{
    uint32_t conns = dl->overflow;
    for (uint32_t h = 0; h < dl->holders; h++)
        conns += relay_dl_held(dl, h, now);
    return conns;
}

/* relay_dl_now - the connections dl's holders' leases allow now (not lately). */
static uint32_t relay_dl_now(const struct relay_dest_leases *dl)
{
    uint32_t conns = dl->overflow;
    for (uint32_t h = 0; h < dl->holders; h++)
        conns += relay_dl_conns(dl->n[h]);
    return conns;
}

/* relay_dl_now_with - relay_dl_now (conns) after one more lease of node at dl. */
static uint32_t relay_dl_now_with(const struct relay_dest_leases *dl, uint64_t node, uint32_t conns)
{
    int h = relay_dl_at(dl, node);
    return h < 0 ? conns + 1 : conns - relay_dl_conns(dl->n[h]) + relay_dl_conns(dl->n[h] + 1);
}

/* relay_dl_most - the most connections one holder of dl may have now. */
static uint32_t relay_dl_most(const struct relay_dest_leases *dl, uint64_t now)
{
    uint32_t most = 0;
    for (uint32_t h = 0; h < dl->holders; h++) {
        uint32_t c = relay_dl_held(dl, h, now);
        most = c > most ? c : most;
    }
    return most;
}

/* relay_dl_none - has node no connection at dl (no share now nor lately)? */
static bool relay_dl_none(const struct relay_dest_leases *dl, uint64_t node, uint64_t now)
{
    int h = relay_dl_at(dl, node);
    return h < 0 || relay_dl_held(dl, (uint32_t)h, now) == 0;
}

/* relay_dl_cost - connections one more lease of node at dl adds: 0 or 1. */
static uint32_t relay_dl_cost(const struct relay_dest_leases *dl, uint64_t node, uint64_t now)
{
    int h = relay_dl_at(dl, node);
    if (h < 0)
        return 1;
    uint32_t lately = peak_get(&dl->recent[h], now, RELAY_CONN_LOOK_MS);
    if (lately < dl->n[h])
        lately = dl->n[h];
    uint32_t more = dl->n[h] + 1 > lately ? dl->n[h] + 1 : lately;
    return relay_dl_conns(more) - relay_dl_conns(lately);
}

/* relay_dl_add - one more lease of node at dl (a holder beyond the table: a connection each). */
static void relay_dl_add(struct relay_dest_leases *dl, uint64_t node, uint64_t now)
{
    int h = relay_dl_holder(dl, node, true);
    if (h < 0) {
        dl->overflow++;
        return;
    }
    dl->n[h]++;
    peak_set(&dl->recent[h], dl->n[h], now, RELAY_CONN_LOOK_MS);
}

void relay_spread_count_reset(struct relay *r)
{
    struct relay_spread_state *sp = &r->spread;
    for (size_t i = 0; i < sp->n_members; i++)
        sp->members[i].live = 0;
    for (size_t i = 0; i < sp->dl_cap; i++) {
        struct relay_dest_leases *dl = &sp->dl[i];
        if (dl->dest == NULL)
            continue;
        memset(dl->n, 0, sizeof(dl->n));
        dl->overflow = 0;
    }
    sp->dl_broken = false;
}

void relay_spread_counted(void *data, const char *dest, uint64_t node)
{
    struct relay_member *mb = relay_member_find(data, node, false);
    if (mb != NULL)
        mb->live++;
    struct relay_dest_leases *dl = relay_dl_find(data, dest);
    if (dl == NULL)
        return;
    int h = relay_dl_holder(dl, node, true);
    if (h >= 0)
        dl->n[h]++;
    else
        dl->overflow++;
}

void relay_spread_count_done(struct relay *r)
{
    struct relay_spread_state *sp = &r->spread;
    uint64_t now = uv_now(r->loop);
    bool stale = false; /* a holder with nothing now or lately */
    for (size_t i = 0; i < sp->dl_cap; i++) {
        struct relay_dest_leases *dl = &sp->dl[i];
        stale = stale || (dl->dest != NULL && dl->holders == 0 && dl->overflow == 0);
        for (uint32_t h = 0; dl->dest != NULL && h < dl->holders; h++) {
            peak_set(&dl->recent[h], dl->n[h], now, RELAY_CONN_LOOK_MS);
            stale =
                stale || (dl->n[h] == 0 && peak_get(&dl->recent[h], now, RELAY_CONN_LOOK_MS) == 0);
        }
    }
    /* Drop what is neither leased nor of use to the look back (no memory: kept). Only
     * then is the table built again: most picks change no holder's presence. */
    if (stale)
        (void)relay_dl_rehash(sp, sp->dl_cap, now, true);
}

/* relay_spread_dl_free - forget every count (a new leader starts with none). */
static void relay_spread_dl_free(struct relay_spread_state *sp)
{
    for (size_t i = 0; i < sp->dl_cap; i++)
        free(sp->dl[i].dest);
    free(sp->dl);
    sp->dl = NULL;
    sp->dl_cap = 0;
    sp->dl_used = 0;
    sp->dl_broken = false;
}

int relay_spread_dest_max(struct relay *r, const char *dest)
{
    uint64_t now = uv_now(r->loop);
    bool probe = false;
    for (size_t i = 0; i < r->spread.n_members; i++) {
        const struct relay_member *mb = &r->spread.members[i];
        if (!relay_member_usable(r, mb, now))
            continue;
        int st = relay_member_dest(r, mb, dest);
        if (st == RELAY_DEST_OK)
            return -1; /* someone can reach it */
        if (st == RELAY_DEST_PROBE && !mb->probed)
            probe = true;
    }
    return probe ? 1 : 0;
}

/*
 * relay_spread_room_wanted - must the holders of dest give up a connection?
 * Yes when all of max_per_destination is in use and a node that has none
 * there could take a delivery: its probe is due (else its suspension of
 * dest never lifts while the others keep every connection busy), or it
 * reaches dest while some holder has two connections or more (every node
 * that reaches a next hop gets one before any gets a second). A node whose
 * connection is first made free (RELAY_CONN_LOOK_MS after the holders'
 * leases fell) then takes it: relay_spread_holder gives the holders only
 * what keeps one connection free meanwhile.
 */
static bool relay_spread_room_wanted(struct relay *r,
                                     const struct relay_dest_leases *dl,
                                     uint32_t used,
                                     uint64_t now)
{
    uint32_t max = r->cfg->smtpc.max_conns_per_dest;
    if (used < max)
        return false; /* a connection is free now */
    bool crowded = relay_dl_most(dl, now) >= 2;
    for (size_t i = 0; i < r->spread.n_members; i++) {
        struct relay_member *mb = &r->spread.members[i];
        if (!relay_member_usable(r, mb, now) || relay_member_free_slots(mb) <= 0 ||
            !relay_dl_none(dl, mb->id, now))
            continue;
        int st = relay_member_dest(r, mb, dl->dest);
        if ((st == RELAY_DEST_PROBE && !mb->probed) || (st == RELAY_DEST_OK && crowded))
            return true;
    }
    return false;
}

/*
 * relay_spread_holder - the node for one delivery to dest, among those
 * whose share of dest's connections allows one more lease there: first a
 * node whose probe of dest is due (one probe per node and report, even
 * while others reach dest, so that its suspension can lift), else the one
 * with the most free slots among those that reach dest. While a node with
 * no connection there wants one (relay_spread_room_wanted), a holder gets
 * a lease only if its leases then keep a connection free. NULL: none can
 * take it.
 */
struct relay_member *relay_spread_holder(struct relay *r, const char *dest)
{
    uint64_t now = uv_now(r->loop);
    struct relay_dest_leases *dl = relay_dl_find(r, dest);
    if (dl == NULL)
        return NULL; /* no memory to count: nothing leased this pick */
    uint32_t max = r->cfg->smtpc.max_conns_per_dest;
    uint32_t used = relay_dl_used(dl, now);
    /* A new leader has not seen what the holders had lately: no new connection yet. */
    bool settled = now >= r->spread.led_at + RELAY_CONN_LOOK_MS;
    bool room = settled && relay_spread_room_wanted(r, dl, used, now);
    uint32_t conns_now = room ? relay_dl_now(dl) : 0;
    struct relay_member *best = NULL;
    for (size_t i = 0; i < r->spread.n_members; i++) {
        struct relay_member *mb = &r->spread.members[i];
        if (!relay_member_usable(r, mb, now) || relay_member_free_slots(mb) <= 0)
            continue;
        uint32_t cost = relay_dl_cost(dl, mb->id, now);
        if (used + cost > max || (cost > 0 && !settled))
            continue; /* a connection over max_per_destination */
        if (room && relay_dl_now_with(dl, mb->id, conns_now) + 1 > max)
            continue; /* its leases would keep every connection in use */
        int st = relay_member_dest(r, mb, dest);
        if (st == RELAY_DEST_PROBE && !mb->probed) {
            mb->probed = true;
            best = mb;
            break;
        }
        if (st != RELAY_DEST_OK)
            continue;
        if (best == NULL || relay_member_free_slots(mb) > relay_member_free_slots(best))
            best = mb;
    }
    if (best != NULL) {
        best->assigned++;
        best->live++;
        best->leased++;
        relay_dl_add(dl, best->id, now);
    }
    return best;
}

void relay_spread_fill_status(struct relay *r,
                              Hamr__NodeStatus *st,
                              Hamr__DeliveryMember *dm,
                              Hamr__DeliveryMember **dmp)
{
    uint64_t now = uv_now(r->loop), wall = clock_wall_ms();
    st->clock_known = relay_spread_on(r) && cluster_clock_known(&r->spread.clock);
    st->clock_skew_ms = st->clock_known ? cluster_clock_skew(&r->spread.clock, now, wall) : 0;
    st->clock_skewed = st->clock_known && cluster_clock_skewed(&r->spread.clock, now, wall);
    st->lease_lapses = r->spread.lapses;
    st->deliveries_stopped = r->spread.stopped;
    st->deliveries_running = r->sched.n_deliveries;
    if (!consensus_is_ready(r->cons))
        return;
    for (size_t i = 0; i < r->spread.n_members; i++) {
        const struct relay_member *mb = &r->spread.members[i];
        hamr__delivery_member__init(&dm[i]);
        dm[i].id = mb->id;
        dm[i].heard_ms = mb->heard != 0 ? now - mb->heard : 0;
        dm[i].slots = mb->slots;
        dm[i].deliveries = mb->deliveries;
        dm[i].leased = mb->leased;
        dm[i].skew_ms = mb->skew_ms;
        dm[i].bodies_missing = mb->bodies_missing;
        dm[i].suspended = (uint32_t)mb->n_suspended;
        dm[i].usable = relay_member_usable(r, mb, now);
        dmp[i] = &dm[i];
    }
    st->n_delivery_members = r->spread.n_members;
    st->delivery_members = dmp;
}

/* ---------------------------------------------------------------------------
 * Start and stop.
 * ------------------------------------------------------------------------- */

void relay_spread_init(struct relay *r)
{
    r->spread.starts = NULL;
    r->spread.starts_tail = &r->spread.starts;
    cluster_clock_init(&r->spread.clock, r->cfg->max_clock_skew_ms);
    struct queue_lease_hook h = {
        .arg = r,
        .node_id = r->cfg->node_id,
        .boot_id = r->boot_id,
        .granted = relay_spread_granted,
        .renewed = relay_spread_renewed,
        .ended = relay_spread_ended,
        .lapsed = relay_spread_lapsed,
    };
    queue_set_lease_hook(r->queue, &h);
    /* Before raft starts: replaying the log applies Leases (none of this boot's). */
    uv_timer_init(r->loop, &r->spread.start_timer);
    r->spread.start_timer.data = r;
}

void relay_spread_start(struct relay *r)
{
    uv_timer_start(&r->spread.timer, relay_spread_tick, RELAY_REPORT_MS, RELAY_REPORT_MS);
}

void relay_spread_close(struct relay *r)
{
    queue_set_lease_hook(r->queue, NULL);
    struct relay_start *s = r->spread.starts;
    while (s != NULL) {
        struct relay_start *next = s->next;
        free(s);
        s = next;
    }
    r->spread.starts = NULL;
    r->spread.starts_tail = &r->spread.starts;
    for (size_t i = 0; i < r->spread.n_members; i++)
        relay_member_dests_free(&r->spread.members[i]);
    r->spread.n_members = 0;
    relay_spread_dl_free(&r->spread);
}
