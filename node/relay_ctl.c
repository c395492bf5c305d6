/*
 * relay_ctl.c - the control verbs of hamrctl: status, queue inspection,
 * queue administration (each one committed Admin entry, so it is ordered
 * against deliveries), leadership transfer, membership, drain.
 *
 * Queue administration, transfer and membership changes run on the leader:
 * a follower answers HAMR_ENOTLEADER with the leader's control address, and
 * hamrctl asks the leader. (A follower never forwards an Admin entry: the
 * leader takes none from another node, node/peer_policy.h.)
 *
 * Owns: nothing beyond one call. May call: the queue (read), raft's view and
 * transfer and membership (consensus_*), the directory, the proposer,
 * queue_entry, the cluster PKI's expiry (pki_status), the control channel's
 * reply; never relay.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "util/zone.h"
#include "proto/hamr.pb-c.h"
#include "queue/body_store.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue/queue_sched.h"
#include "consensus/consensus.h"
#include "net/smtpc.h"
#include "node/config.h"
#include "node/ctl_queue.h"
#include "node/clock.h"
#include "node/pki_status.h"
#include "node/relay_internal.h"

/* ---------------------------------------------------------------------------
 * Control verbs.
 * ------------------------------------------------------------------------- */

static const char *relay_state_name(enum consensus_state s)
{
    switch (s) {
        case CONSENSUS_LEADER:
            return "leader";
        case CONSENSUS_FOLLOWER:
            return "follower";
        case CONSENSUS_CANDIDATE:
            return "candidate";
        case CONSENSUS_UNAVAILABLE:
            break;
    }
    return "unavailable";
}

/*
 * relay_ctl_digest - the state digest hamrctl status shows, or "" when more
 * than max messages are queued. The digest hashes the whole state: about a
 * second of the loop per million messages, which would stall raft (hamrctl
 * status timed out with a million queued); the count is O(1). Status passes
 * RELAY_DIGEST_MAX_MESSAGES ("" in JSON; hamrctl says why).
 */
void relay_ctl_digest(const struct queue *q, size_t max, char digest[65])
{
    struct queue_stats st;
    queue_get_stats(q, &st);
    digest[0] = '\0';
    if (st.messages <= max)
        queue_digest(q, digest);
}

/* relay_ctl_status - hamrctl status. */
static void relay_ctl_status(struct relay *r, struct control_call *call)
{
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    struct queue_stats st;
    queue_get_stats(r->queue, &st);
    char digest[65];
    relay_ctl_digest(r->queue, RELAY_DIGEST_MAX_MESSAGES, digest);

    Hamr__MemberStatus ms[CONSENSUS_MAX_MEMBERS];
    Hamr__MemberStatus *msp[CONSENSUS_MAX_MEMBERS];
    static const char *const roles[] = {"standby", "voter", "spare"};
    for (size_t i = 0; i < info.n_members; i++) {
        hamr__member_status__init(&ms[i]);
        ms[i].id = info.members[i].id;
        ms[i].address = info.members[i].address;
        ms[i].draining = info.members[i].id == r->cfg->node_id
                             ? r->draining
                             : directory_draining(r->dir, info.members[i].id);
        ms[i].role =
            (char *)(info.roles[i] >= 0 && info.roles[i] <= 2 ? roles[info.roles[i]] : "unknown");
        ms[i].zone = (char *)directory_zone(r->dir, info.members[i].id);
        msp[i] = &ms[i];
    }
    Hamr__NodeStatus ns = HAMR__NODE_STATUS__INIT;
    ns.id = r->cfg->node_id;
    ns.state = (char *)relay_state_name(info.state);
    ns.leader_id = info.leader_id;
    ns.leader_address = info.leader_address;
    ns.term = info.term;
    ns.commit_index = info.commit_index;
    ns.applied_index = info.applied_index;
    ns.last_index = info.last_index;
    ns.n_members = info.n_members;
    ns.members = msp;
    ns.queue_messages = st.messages;
    ns.queue_rcpts_pending = st.rcpts_pending;
    ns.queue_rcpts_leased = st.rcpts_leased;
    ns.queue_bytes = st.bytes;
    ns.queue_held = st.held;
    ns.queue_digest = digest;
    ns.free_bytes = r->disk.free_bytes;
    ns.version = RELAY_VERSION;
    ns.draining = r->draining;
    ns.duplicate_windows = r->sched.duplicate_windows;
    ns.cluster_level = queue_cluster_level(r->queue);
    struct proposer_stats ps;
    proposer_get_stats(r->prop, &ps);
    ns.forwarded = ps.forwarded;
    ns.resolved = ps.resolved;
    ns.leader_control = (char *)directory_control_address(r->dir, info.leader_id);
    Hamr__ClusterTlsStatus tls;
    char ident[PKI_STATUS_IDENT_MAX];
    pki_status_fill(r->ctls, time(NULL), &tls, ident, sizeof(ident));
    ns.cluster_tls = &tls;
    if (r->store != NULL) {
        struct body_store_stats bs;
        body_store_get_stats(r->store, &bs);
        ns.body_store = true;
        ns.bodies_missing = queue_bodies_missing(r->queue);
        ns.body_store_bytes = bs.disk_bytes;
        ns.body_store_segments = bs.segments;
    }
    ns.sts_policies = queue_sts_count(r->queue);
    ns.zone = (char *)r->cfg->zone;
    Hamr__DeliveryMember dm[CONSENSUS_MAX_MEMBERS];
    Hamr__DeliveryMember *dmp[CONSENSUS_MAX_MEMBERS];
    relay_spread_fill_status(r, &ns, dm, dmp);
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.status = &ns;
    control_reply(call, &resp);
}

/*
 * relay_ctl_queue - hamrctl queue [filters] [--limit N] [--after ID] / show ID:
 * one page (node/ctl_queue.h), built and answered at once.
 */
static void relay_ctl_queue(struct relay *r,
                            struct control_call *call,
                            const Hamr__ControlRequest *req,
                            bool show)
{
    struct ctl_queue_page pg;
    ctl_queue_page_init(&pg, relay_cluster_now(r));
    char err[256];
    int rv;
    if (show) {
        if (req->n_args != 1) {
            control_reply_error(call, HAMR_EINVAL, "usage: show ID");
            return;
        }
        rv = ctl_queue_show(r->queue, req->args[0], &pg);
        if (rv == HAMR_ENOTFOUND)
            snprintf(err, sizeof(err), "no message with id %s in the queue", req->args[0]);
        else
            snprintf(err, sizeof(err), "show: %s", hamr_strerror(rv));
    } else {
        const char *after = NULL;
        rv = ctl_queue_parse(req->args, req->n_args, &pg, &after, err, sizeof(err));
        if (rv == 0)
            rv = ctl_queue_list(r->queue, &pg, after, err, sizeof(err));
    }
    if (rv != 0) {
        ctl_queue_page_free(&pg);
        control_reply_error(call, rv, "%s", err);
        return;
    }
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.n_entries = pg.n;
    resp.entries = pg.entries;
    if (pg.next_after != NULL)
        resp.next_after = (char *)pg.next_after;
    control_reply(call, &resp);
    ctl_queue_page_free(&pg);
}

struct relay_ctl_admin {
    struct control_call *call;
    char verb[16];
    char id[QUEUE_ID_MAX];
};

/* relay_ctl_admin_done - an Admin entry committed (or not). */
static void relay_ctl_admin_done(void *arg, int status, intptr_t result)
{
    struct relay_ctl_admin *a = arg;
    if (status == 0 && result < 0)
        status = (int)result;
    if (status == HAMR_ENOTFOUND) {
        control_reply_error(a->call, status, "no message with id %s in the queue", a->id);
    } else if (status != 0) {
        control_reply_error(a->call, status, "%s %s: %s", a->verb, a->id, hamr_strerror(status));
    } else {
        char text[160];
        snprintf(text, sizeof(text), "%s: %s", a->verb, a->id[0] ? a->id : "all messages");
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = text;
        control_reply(a->call, &resp);
    }
    free(a);
}

static bool relay_ctl_leader_only(struct relay *r, struct control_call *call, const char *verb);

/* relay_ctl_admin - hold/release/delete/flush/bounce as one committed command. */
static void relay_ctl_admin(struct relay *r,
                            struct control_call *call,
                            const Hamr__ControlRequest *req,
                            enum queue_entry_admin_op op)
{
    bool optional = op == QUEUE_ENTRY_ADMIN_FLUSH;
    if (req->n_args > 1 || (!optional && req->n_args != 1)) {
        control_reply_error(call, HAMR_EINVAL, "usage: %s %s", req->verb, optional ? "[ID]" : "ID");
        return;
    }
    const char *id = req->n_args ? req->args[0] : "";
    if (strlen(id) >= QUEUE_ID_MAX) {
        control_reply_error(call, HAMR_EINVAL, "%s: queue id too long", req->verb);
        return;
    }
    if (!relay_ctl_leader_only(r, call, req->verb))
        return; /* a follower names the leader (no leader: no quorum) and hamrctl asks it */
    struct relay_ctl_admin *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        control_reply_error(call, HAMR_ENOMEM, "out of memory");
        return;
    }
    a->call = call;
    hamr_strlcpy(a->verb, req->verb, sizeof(a->verb));
    hamr_strlcpy(a->id, id, sizeof(a->id));
    uint64_t now = relay_cluster_now(r);
    uint8_t *entry;
    size_t len;
    int rv = queue_entry_admin(op, id, r->cfg->hostname, now + r->cfg->queue_lifetime_ms, now,
                               consensus_malloc, &entry, &len);
    if (rv == 0)
        rv = proposer_append_packed(r->prop, entry, len, r->cfg->proposal_timeout_ms,
                                    relay_ctl_admin_done, a);
    if (rv != 0) {
        free(a);
        control_reply_error(call, rv, "%s: %s", req->verb, hamr_strerror(rv));
    }
}

/*
 * relay_ctl_leader_only - true if this node leads (and may run the verb).
 * Otherwise answers HAMR_ENOTLEADER with the leader's control address, which
 * hamrctl follows once.
 */
static bool relay_ctl_leader_only(struct relay *r, struct control_call *call, const char *verb)
{
    if (consensus_is_ready(r->cons))
        return true;
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    const char *control = directory_control_address(r->dir, info.leader_id);
    char text[256];
    if (info.leader_id == 0)
        snprintf(text, sizeof(text), "%s: no leader: the cluster has no quorum", verb);
    else
        snprintf(text, sizeof(text), "%s: node %" PRIu64 " is the leader (control %s)", verb,
                 info.leader_id, control[0] ? control : "unknown");
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.code = info.leader_id ? HAMR_ENOTLEADER : HAMR_ENOQUORUM;
    resp.error = text;
    resp.leader_control = (char *)control;
    control_reply(call, &resp);
    return false;
}

/* relay_ctl_node_id - parse a node id argument; answers the call on error. */
static bool relay_ctl_node_id(struct control_call *call,
                              const char *verb,
                              const char *arg,
                              uint64_t *id)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0 || arg[0] == '-') {
        control_reply_error(call, HAMR_EINVAL, "%s: not a node id: \"%.40s\"", verb, arg);
        return false;
    }
    *id = v;
    return true;
}

/* relay_ctl_is_member - id is in the raft configuration (voter, standby or spare). */
static bool relay_ctl_is_member(struct relay *r, uint64_t id)
{
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    for (size_t i = 0; i < info.n_members; i++)
        if (info.members[i].id == id)
            return true;
    return false;
}

/*
 * relay_ctl_add_zones - hamrctl add: refuse (HAMR_EPERM, with the reason in
 * why) when, once node id is a voter in zone (NULL or "": not known), one
 * zone would hold a majority of the voters, so that losing that zone alone
 * would lose quorum. The other voters' zones are the directory's (known from
 * cluster level QUEUE_LEVEL_SPREAD on); a voter without one counts as a
 * voter but not for a zone. force: warn in why, do not refuse. Returns 0 or
 * HAMR_EPERM; why is "" when there is nothing to say.
 */
static int relay_ctl_add_zones(struct relay *r,
                               uint64_t id,
                               const char *zone,
                               bool force,
                               char *why,
                               size_t whylen)
{
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    const char *zones[CONSENSUS_MAX_MEMBERS + 1];
    size_t n = 0;
    for (size_t i = 0; i < info.n_members; i++)
        if (info.roles[i] == CONSENSUS_ROLE_VOTER && info.members[i].id != id)
            zones[n++] = directory_zone(r->dir, info.members[i].id);
    zones[n++] = zone != NULL ? zone : "";
    why[0] = '\0';
    size_t count;
    const char *major = zone_majority(zones, n, &count);
    if (major == NULL)
        return 0;
    char summary[256];
    zone_summary(zones, n, summary, sizeof(summary));
    int w = snprintf(why, whylen,
                     "zone %s would hold %zu of the %zu voters (zones: %s%s): losing that zone "
                     "would lose the quorum",
                     major, count, n, summary,
                     zone == NULL || zone[0] == '\0' ? "; new node: unknown" : "");
    if (w < 0 || (size_t)w >= whylen) /* a cut sentence is still the right answer */
        why[whylen - 1] = '\0';
    return force ? 0 : HAMR_EPERM;
}

/* relay_ctl_member - one membership change in progress. */
struct relay_ctl_member {
    struct relay *relay;
    struct control_call *call;
    uint64_t id;
    char address[CONSENSUS_ADDR_MAX];
    int step; /* add: 0 add, 1 standby, 2 voter */
    char verb[16];
    char warning[320]; /* add --force: the zone warning to repeat in the answer ("" none) */
};

/* relay_ctl_member_done - a step of add/promote/remove finished. */
static void relay_ctl_member_done(void *arg, int status)
{
    struct relay_ctl_member *m = arg;
    struct relay *r = m->relay;
    if (status == 0 && strcmp(m->verb, "add") == 0 && m->step < 2) {
        /* Joined as spare; now standby (it catches up), then voter (raft runs
         * catch-up rounds before the promotion takes effect). */
        m->step++;
        int role = m->step == 1 ? CONSENSUS_ROLE_STANDBY : CONSENSUS_ROLE_VOTER;
        log_info("membership node=%" PRIu64 " step=%s", m->id, m->step == 1 ? "standby" : "voter");
        status = consensus_assign(r->cons, m->id, role, relay_ctl_member_done, m);
        if (status == 0)
            return;
    }
    if (status != 0 && strcmp(m->verb, "add") == 0 && m->step > 0) {
        control_reply_error(m->call, status,
                            "add %" PRIu64
                            ": joined as %s, but the next step failed: %s; is "
                            "hamrd (join = yes) running at %s? Then: hamrctl promote %" PRIu64
                            ", or hamrctl remove %" PRIu64,
                            m->id, m->step == 1 ? "spare" : "standby", hamr_strerror(status),
                            m->address, m->id, m->id);
    } else if (status != 0) {
        control_reply_error(m->call, status, "%s %" PRIu64 ": %s", m->verb, m->id,
                            status == HAMR_ECANTCHANGE
                                ? "another membership change is in progress; try again"
                                : hamr_strerror(status));
    } else {
        char text[512];
        snprintf(text, sizeof(text), "%s %" PRIu64 ": done%s%s", m->verb, m->id,
                 m->warning[0] != '\0' ? "; warning: " : "", m->warning);
        log_info("membership node=%" PRIu64 " %s done", m->id, m->verb);
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = text;
        control_reply(m->call, &resp);
    }
    free(m);
}

/*
 * relay_ctl_add_options - add's options after ID ADDR: "--zone Z" (the new
 * node's [node] zone) and "--force". False after replying with the error.
 */
static bool relay_ctl_add_options(struct control_call *call,
                                  const Hamr__ControlRequest *req,
                                  const char **zone,
                                  bool *force)
{
    *zone = NULL;
    *force = false;
    for (size_t i = 2; i < req->n_args; i++) {
        const char *a = req->args[i];
        if (strcmp(a, "--force") == 0) {
            *force = true;
        } else if (strcmp(a, "--zone") == 0 && i + 1 < req->n_args &&
                   zone_name_ok(req->args[i + 1])) {
            *zone = req->args[++i];
        } else {
            control_reply_error(call, HAMR_EINVAL,
                                "usage: add ID ADDR [--zone ZONE] [--force] (bad \"%.64s\")", a);
            return false;
        }
    }
    return true;
}

/* relay_ctl_membership - hamrctl add ID ADDR [--zone Z] [--force] / promote ID / remove ID. */
static void relay_ctl_membership(struct relay *r,
                                 struct control_call *call,
                                 const Hamr__ControlRequest *req)
{
    const char *v = req->verb;
    bool add = strcmp(v, "add") == 0;
    if (add ? req->n_args < 2u || req->n_args > 5u : req->n_args != 1u) {
        control_reply_error(call, HAMR_EINVAL, "usage: %s ID%s", v,
                            add ? " ADDR [--zone ZONE] [--force]" : "");
        return;
    }
    const char *zone = NULL;
    bool force = false;
    if (add && !relay_ctl_add_options(call, req, &zone, &force))
        return;
    uint64_t id;
    if (!relay_ctl_node_id(call, v, req->args[0], &id))
        return;
    if (!relay_ctl_leader_only(r, call, v))
        return;
    if (!add && !relay_ctl_is_member(r, id)) {
        control_reply_error(call, HAMR_ENOTFOUND,
                            "%s %" PRIu64 ": node %" PRIu64 " is not a member of the cluster", v,
                            id, id);
        return;
    }
    struct relay_ctl_member *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        control_reply_error(call, HAMR_ENOMEM, "out of memory");
        return;
    }
    m->relay = r;
    m->call = call;
    m->id = id;
    hamr_strlcpy(m->verb, v, sizeof(m->verb));
    int rv;
    if (add) {
        /* The raft address as every node writes it ("[v6]:port" normalised), or refused. */
        struct config_hostport hp;
        if (config_parse_hostport(req->args[1], &hp) != 0 ||
            config_ip_address(hp.host, hp.port, m->address, sizeof(m->address)) != 0) {
            free(m);
            control_reply_error(call, HAMR_EINVAL, "add: not IPV4:PORT or [IPV6]:PORT: \"%.64s\"",
                                req->args[1]);
            return;
        }
        /* Zones: no single zone may hold a majority of the voters (unless forced). */
        if (relay_ctl_add_zones(r, id, zone, force, m->warning, sizeof(m->warning)) != 0) {
            control_reply_error(call, HAMR_EPERM,
                                "add %" PRIu64
                                ": refused: %s; spread the voters over more zones, "
                                "or add --force to add it anyway",
                                id, m->warning);
            free(m);
            return;
        }
        if (m->warning[0] != '\0')
            log_warn("membership node=%" PRIu64 " adding despite zones (--force): %s", id,
                     m->warning);
        rv = consensus_add(r->cons, id, m->address, relay_ctl_member_done, m);
    } else if (strcmp(v, "promote") == 0) {
        rv = consensus_assign(r->cons, id, CONSENSUS_ROLE_VOTER, relay_ctl_member_done, m);
    } else {
        if (id == r->cfg->node_id) {
            free(m);
            control_reply_error(call, HAMR_EINVAL,
                                "remove: node %" PRIu64 " leads; transfer leadership first", id);
            return;
        }
        rv = consensus_remove(r->cons, id, relay_ctl_member_done, m);
    }
    if (rv != 0) {
        free(m);
        control_reply_error(call, rv, "%s %" PRIu64 ": %s", v, id,
                            rv == HAMR_ECANTCHANGE
                                ? "another membership change is in progress; try again"
                            : rv == HAMR_EEXIST ? "already a member with that role or address"
                                                : hamr_strerror(rv));
    }
}

struct relay_ctl_transfer {
    struct control_call *call;
    bool drain; /* part of hamrctl drain: a failed transfer does not fail the drain */
};

/* relay_ctl_transfer_done - leadership moved (or did not). */
static void relay_ctl_transfer_done(void *arg, int status, uint64_t leader)
{
    struct relay_ctl_transfer *t = arg;
    if (t->drain) {
        char text[160];
        if (status == 0)
            snprintf(text, sizeof(text),
                     "draining: new SMTP sessions get 421; leadership moved to node %" PRIu64,
                     leader);
        else
            snprintf(text, sizeof(text),
                     "draining: new SMTP sessions get 421; this node still leads (%s)",
                     status == HAMR_ENOTFOUND || status == HAMR_EINVAL
                         ? "no other voter to hand leadership to"
                         : hamr_strerror(status));
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = text;
        control_reply(t->call, &resp);
        free(t);
        return;
    }
    if (status != 0) {
        control_reply_error(t->call, status, "transfer failed: %s", hamr_strerror(status));
    } else {
        char text[96];
        snprintf(text, sizeof(text), "leader is now node %" PRIu64, leader);
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = text;
        control_reply(t->call, &resp);
    }
    free(t);
}

/* relay_ctl_transfer - hamrctl transfer [ID]. */
static void relay_ctl_transfer(struct relay *r,
                               struct control_call *call,
                               const Hamr__ControlRequest *req)
{
    uint64_t id = 0;
    if (req->n_args > 1) {
        control_reply_error(call, HAMR_EINVAL, "usage: transfer [ID]");
        return;
    }
    if (req->n_args == 1 && !relay_ctl_node_id(call, "transfer", req->args[0], &id))
        return;
    if (!relay_ctl_leader_only(r, call, "transfer"))
        return;
    if (id != 0 && !relay_ctl_is_member(r, id)) {
        control_reply_error(call, HAMR_ENOTFOUND,
                            "transfer: node %" PRIu64 " is not a member of the cluster", id);
        return;
    }
    if (id == r->cfg->node_id) {
        char text[64];
        snprintf(text, sizeof(text), "node %" PRIu64 " already leads", id);
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = text;
        control_reply(call, &resp);
        return;
    }
    struct relay_ctl_transfer *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        control_reply_error(call, HAMR_ENOMEM, "out of memory");
        return;
    }
    t->call = call;
    int rv = consensus_transfer(r->cons, id, relay_ctl_transfer_done, t);
    if (rv != 0) {
        free(t);
        control_reply_error(call, rv, "transfer: %s", hamr_strerror(rv));
    }
}

/* relay_ctl_drain - drain or undrain this node, or name the control address of the node asked for.
 */
static void relay_ctl_drain(struct relay *r,
                            struct control_call *call,
                            const Hamr__ControlRequest *req,
                            const char *v)
{
    bool on = v[0] == 'd';
    uint64_t target = r->cfg->node_id;
    if (req->n_args > 1) {
        control_reply_error(call, HAMR_EINVAL, "usage: %s [ID]", v);
        return;
    }
    if (req->n_args == 1 && !relay_ctl_node_id(call, v, req->args[0], &target))
        return;
    if (target != r->cfg->node_id) {
        /* Another node drains itself: name its control address (from the
         * node directory) and hamrctl asks it. */
        const char *control = directory_control_address(r->dir, target);
        if (control[0] == '\0') {
            control_reply_error(call, HAMR_ENOTFOUND,
                                "%s: node %" PRIu64 " is unknown here (no address published)", v,
                                target);
            return;
        }
        char text[160];
        snprintf(text, sizeof(text), "%s: node %" PRIu64 " is at control %s", v, target, control);
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.code = HAMR_ENOTLEADER;
        resp.error = text;
        resp.leader_control = (char *)control;
        control_reply(call, &resp);
        return;
    }
    r->draining = on;
    smtpd_server_set_draining(r->smtpd, on);
    log_info("%s node=%" PRIu64, on ? "draining" : "undrained", r->cfg->node_id);
    if (on && consensus_is_ready(r->cons)) {
        /* A draining node must not lead: hand leadership to another voter.
         * Deliveries it runs finish; their outcomes go to the new leader. */
        struct relay_ctl_transfer *t = calloc(1, sizeof(*t));
        if (t != NULL) {
            t->call = call;
            t->drain = true;
            if (consensus_transfer(r->cons, 0, relay_ctl_transfer_done, t) == 0)
                return;
            free(t);
        }
    }
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.message = on ? "draining: new SMTP sessions get 421" : "undrained";
    control_reply(call, &resp);
}

/* relay_ctl_handle - dispatch one control request. */
void relay_ctl_handle(void *data, struct control_call *call, const Hamr__ControlRequest *req)
{
    struct relay *r = data;
    const char *v = req->verb ? req->verb : "";
    if (strcmp(v, "status") == 0) {
        relay_ctl_status(r, call);
    } else if (strcmp(v, "queue") == 0) {
        relay_ctl_queue(r, call, req, false);
    } else if (strcmp(v, "show") == 0) {
        relay_ctl_queue(r, call, req, true);
    } else if (strcmp(v, "hold") == 0) {
        relay_ctl_admin(r, call, req, QUEUE_ENTRY_ADMIN_HOLD);
    } else if (strcmp(v, "release") == 0) {
        relay_ctl_admin(r, call, req, QUEUE_ENTRY_ADMIN_RELEASE);
    } else if (strcmp(v, "delete") == 0) {
        relay_ctl_admin(r, call, req, QUEUE_ENTRY_ADMIN_DELETE);
    } else if (strcmp(v, "flush") == 0) {
        relay_ctl_admin(r, call, req, QUEUE_ENTRY_ADMIN_FLUSH);
    } else if (strcmp(v, "bounce") == 0) {
        relay_ctl_admin(r, call, req, QUEUE_ENTRY_ADMIN_BOUNCE);
    } else if (strcmp(v, "transfer") == 0) {
        relay_ctl_transfer(r, call, req);
    } else if (strcmp(v, "drain") == 0 || strcmp(v, "undrain") == 0) {
        relay_ctl_drain(r, call, req, v);
    } else if (strcmp(v, "version") == 0) {
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = "hamrd " RELAY_VERSION;
        control_reply(call, &resp);
    } else if (strcmp(v, "add") == 0 || strcmp(v, "promote") == 0 || strcmp(v, "remove") == 0) {
        relay_ctl_membership(r, call, req);
    } else {
        char safe[64];
        log_printable(safe, sizeof(safe), v, strlen(v));
        control_reply_error(call, HAMR_EINVAL, "unknown command \"%s\"", safe);
    }
}
