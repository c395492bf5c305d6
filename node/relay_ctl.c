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
#include "proto/hamr.pb-c.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue/queue_sched.h"
#include "consensus/consensus.h"
#include "net/smtpc.h"
#include "node/config.h"
#include "node/clock.h"
#include "node/pki_status.h"
#include "node/relay_internal.h"

/* ---------------------------------------------------------------------------
 * Control verbs.
 * ------------------------------------------------------------------------- */

static const char *relay_rcpt_state_name(const struct queue_rcpt *qr)
{
    switch (qr->state) {
        case QUEUE_RCPT_PENDING:
            return qr->attempts > 0 ? "deferred" : "pending";
        case QUEUE_RCPT_LEASED:
            return "active";
        case QUEUE_RCPT_DELIVERED:
            return "delivered";
        case QUEUE_RCPT_BOUNCED:
            return "bounced";
        case QUEUE_RCPT_EXPIRED:
            return "expired";
    }
    return "?";
}

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

/* relay_ctl_status - hamrctl status. */
static void relay_ctl_status(struct relay *r, struct control_call *call)
{
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    struct queue_stats st;
    queue_get_stats(r->queue, &st);
    char digest[65];
    queue_digest(r->queue, digest);

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
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.status = &ns;
    control_reply(call, &resp);
}

/* relay_ctl_filter - hamrctl queue filters: --state S, --to DOMAIN, --older-than DUR. */
struct relay_ctl_filter {
    const char *state;
    const char *to;
    uint64_t older_than_ms;
    uint64_t now;
    const char *id; /* show: exactly this id */
    bool headers;
    Hamr__QueueEntry **entries;
    size_t n, cap;
    int err;
};

/* relay_ctl_headers - the header block of a body, capped. */
static char *relay_ctl_headers(const struct queue_msg *m)
{
    size_t n = m->body_len;
    const uint8_t *end = memmem(m->body, m->body_len, "\r\n\r\n", 4);
    if (end != NULL)
        n = (size_t)(end - m->body) + 2;
    if (n > RELAY_SHOW_HEADERS_MAX)
        n = RELAY_SHOW_HEADERS_MAX;
    char *h = malloc(n + 1);
    if (h == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = m->body[i];
        h[i] = (c == '\r' || c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) ? (char)c : '?';
    }
    h[n] = '\0';
    return h;
}

/* relay_ctl_collect - queue_foreach callback building QueueEntry records. */
static int relay_ctl_collect(void *arg, const struct queue_msg *m)
{
    struct relay_ctl_filter *f = arg;
    if (f->id != NULL && strcmp(f->id, m->id) != 0)
        return 0;
    if (f->older_than_ms && m->received_at_ms + f->older_than_ms > f->now)
        return 0;
    bool match_state = f->state == NULL || strcmp(f->state, "all") == 0;
    bool match_to = f->to == NULL;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *qr = &m->rcpts[i];
        if (f->state != NULL) {
            if (strcmp(f->state, "held") == 0)
                match_state = match_state || m->held;
            else if (strcmp(f->state, relay_rcpt_state_name(qr)) == 0)
                match_state = true;
        }
        if (f->to != NULL) {
            const char *at = strrchr(qr->addr, '@');
            const char *dom = at ? at + 1 : qr->addr;
            size_t dl = strlen(dom), tl = strlen(f->to);
            if (dl >= tl && hamr_strncaseeq(dom + dl - tl, f->to, tl + 1) &&
                (dl == tl || dom[dl - tl - 1] == '.'))
                match_to = true;
        }
    }
    if (!match_state || !match_to)
        return 0;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        Hamr__QueueEntry **p = realloc(f->entries, cap * sizeof(*p));
        if (p == NULL) {
            f->err = HAMR_ENOMEM;
            return 1;
        }
        f->entries = p;
        f->cap = cap;
    }
    Hamr__QueueEntry *qe = calloc(1, sizeof(*qe));
    Hamr__QueueRcpt **rs = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(*rs));
    if (qe == NULL || rs == NULL) {
        free(qe);
        free(rs);
        f->err = HAMR_ENOMEM;
        return 1;
    }
    hamr__queue_entry__init(qe);
    qe->queue_id = (char *)m->id;
    qe->sender = m->sender;
    qe->size = m->body_len;
    qe->received_at_ms = m->received_at_ms;
    qe->held = m->held;
    qe->is_dsn = m->is_dsn;
    qe->client_addr = m->client_addr ? m->client_addr : "";
    qe->helo = m->helo ? m->helo : "";
    qe->expires_at_ms = m->expires_at_ms;
    qe->rcpts = rs;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *qr = &m->rcpts[i];
        Hamr__QueueRcpt *x = calloc(1, sizeof(*x));
        if (x == NULL) {
            f->err = HAMR_ENOMEM;
            break;
        }
        hamr__queue_rcpt__init(x);
        x->addr = qr->addr;
        x->state = (char *)relay_rcpt_state_name(qr);
        x->attempts = qr->attempts;
        x->next_attempt_ms = qr->next_attempt_ms;
        x->last_error = qr->last_error ? qr->last_error : "";
        x->tls_policy = qr->tls_policy ? qr->tls_policy : "";
        x->tls = qr->tls ? qr->tls : "";
        rs[qe->n_rcpts++] = x;
    }
    if (f->headers)
        qe->headers = relay_ctl_headers(m);
    f->entries[f->n++] = qe;
    return f->err != 0;
}

/* relay_ctl_filter_free - release what relay_ctl_collect built. */
static void relay_ctl_filter_free(struct relay_ctl_filter *f)
{
    for (size_t i = 0; i < f->n; i++) {
        Hamr__QueueEntry *qe = f->entries[i];
        for (size_t j = 0; j < qe->n_rcpts; j++)
            free(qe->rcpts[j]);
        free(qe->rcpts);
        if (f->headers)
            free(qe->headers);
        free(qe);
    }
    free(f->entries);
}

/* relay_ctl_queue - hamrctl queue [filters] / show ID. */
static void relay_ctl_queue(struct relay *r,
                            struct control_call *call,
                            const Hamr__ControlRequest *req,
                            bool show)
{
    struct relay_ctl_filter f = {.now = clock_wall_ms()};
    if (show) {
        if (req->n_args != 1) {
            control_reply_error(call, HAMR_EINVAL, "usage: show ID");
            return;
        }
        f.id = req->args[0];
        f.headers = true;
    }
    for (size_t i = 0; !show && i < req->n_args; i++) {
        const char *a = req->args[i];
        const char *v = i + 1 < req->n_args ? req->args[i + 1] : NULL;
        if (v == NULL) {
            control_reply_error(call, HAMR_EINVAL, "queue: %s needs a value", a);
            return;
        }
        if (strcmp(a, "--state") == 0) {
            static const char *const ok[] = {"all", "pending", "deferred", "active", "held"};
            bool found = false;
            for (size_t k = 0; k < HAMR_ARRAY_LEN(ok); k++)
                found = found || strcmp(v, ok[k]) == 0;
            if (!found) {
                control_reply_error(call, HAMR_EINVAL,
                                    "queue: unknown state \"%s\" (all, pending, deferred, "
                                    "active, held)",
                                    v);
                return;
            }
            f.state = v;
        } else if (strcmp(a, "--to") == 0) {
            f.to = v;
        } else if (strcmp(a, "--older-than") == 0) {
            if (config_parse_duration(v, &f.older_than_ms) != 0) {
                control_reply_error(call, HAMR_EINVAL, "queue: not a duration: \"%s\"", v);
                return;
            }
        } else {
            control_reply_error(call, HAMR_EINVAL, "queue: unknown option \"%s\"", a);
            return;
        }
        i++;
    }
    queue_foreach(r->queue, relay_ctl_collect, &f);
    if (f.err != 0) {
        relay_ctl_filter_free(&f);
        control_reply_error(call, f.err, "queue: %s", hamr_strerror(f.err));
        return;
    }
    if (show && f.n == 0) {
        relay_ctl_filter_free(&f);
        control_reply_error(call, HAMR_ENOTFOUND, "no message with id %s in the queue",
                            req->args[0]);
        return;
    }
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.n_entries = f.n;
    resp.entries = f.entries;
    control_reply(call, &resp);
    relay_ctl_filter_free(&f);
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
    uint64_t now = clock_wall_ms();
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

/* relay_ctl_member - one membership change in progress. */
struct relay_ctl_member {
    struct relay *relay;
    struct control_call *call;
    uint64_t id;
    char address[CONSENSUS_ADDR_MAX];
    int step; /* add: 0 add, 1 standby, 2 voter */
    char verb[16];
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
        char text[128];
        snprintf(text, sizeof(text), "%s %" PRIu64 ": done", m->verb, m->id);
        log_info("membership node=%" PRIu64 " %s done", m->id, m->verb);
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = text;
        control_reply(m->call, &resp);
    }
    free(m);
}

/* relay_ctl_membership - hamrctl add ID ADDR / promote ID / remove ID. */
static void relay_ctl_membership(struct relay *r,
                                 struct control_call *call,
                                 const Hamr__ControlRequest *req)
{
    const char *v = req->verb;
    bool add = strcmp(v, "add") == 0;
    if (req->n_args != (add ? 2u : 1u)) {
        control_reply_error(call, HAMR_EINVAL, "usage: %s ID%s", v, add ? " ADDR" : "");
        return;
    }
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
