/*
 * relay.c - the wiring of one hamr node.
 *
 * Accepting (any node; one node is a one-voter cluster):
 *   smtpd session -> relay_sink_submit -> Entry{Enqueue} -> consensus_propose
 *   -> (majority fsync, apply) -> relay_prop_done -> session replies 250.
 *   Anything else (not leader, leadership lost, proposal timeout, refused by
 *   the state machine) reaches the session as an error and becomes a 4xx.
 *
 * Applying (every node): relay_fsm_apply hands each committed entry to the
 *   queue state machine. An entry the queue cannot decode or does not know is
 *   never skipped: the node logs it and stops (relay_fail).
 *
 * Scheduling (leader only, after the election barrier): every scan_interval
 *   relay_sched_tick asks queue_sched_pick for due work. Expired or unroutable
 *   recipients get an Outcome straight away; the rest go into one Lease entry.
 *   Only recipients the committed lease actually granted to this node (and
 *   this boot) are delivered (relay_lease_done -> relay_deliver_start).
 *
 * Delivering: the SMTP client pool reports per-recipient results; they become
 *   one Outcome entry carrying the lease id, so an outcome from a replaced
 *   lease is ignored by the state machine (fencing). If the outcome cannot be
 *   committed (leadership lost), the lease expires and the recipients are
 *   delivered again: a counted duplicate window.
 *
 * Failure modes: proposal timeout (451, the entry may still commit: the
 *   client's retry is a duplicate at worst); low disk (452 at MAIL); the
 *   queue refusing an entry (fatal, node stops).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <openssl/sha.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "queue/queue_sched.h"
#include "consensus/consensus.h"
#include "net/smtpc.h"
#include "net/smtpd.h"
#include "net/smtpd_server.h"
#include "node/config.h"
#include "node/control.h"
#include "node/relay.h"

#define RELAY_VERSION "0.1.0"
#define RELAY_SCHED_MAX_ITEMS 256
#define RELAY_SHOW_HEADERS_MAX (64 * 1024)

/* relay_prop - one proposal waiting for its commit (or its deadline). */
struct relay_prop {
    struct relay *relay;
    void (*cb)(void *arg, int status, intptr_t result); /* NULL once answered */
    void *arg;
    uint64_t deadline; /* uv_now ms */
    struct relay_prop *prev, *next;
};

/* relay_delivery - one leased (message, destination) being delivered. */
struct relay_delivery {
    struct relay *relay;
    char queue_id[QUEUE_ID_MAX];
    uint64_t lease_id;
    uint64_t expires_at_ms;
    uint32_t max_attempts;
    size_t n_rcpts;
    uint32_t *rcpt_indexes;
    char **rcpts;
    char *sender;
    uint8_t *body; /* a copy: the queue may drop the message meanwhile */
    size_t body_len;
    bool body_8bit;
    struct smtpc_msg msg;
    struct relay_delivery *prev, *next;
};

struct relay {
    uv_loop_t *loop;
    const struct hamr_config *cfg;
    struct queue *queue;
    struct consensus *cons;
    struct smtpc_pool *pool;
    struct smtpd_server *smtpd;
    struct control *control;
    uv_timer_t sched_timer;
    uv_timer_t housekeeping_timer;
    int open_handles;
    char boot_id[33];
    uint64_t id_counter;
    uint64_t lease_counter;
    uint64_t free_bytes;
    bool draining;
    bool stopping;
    bool failed;
    unsigned sched_in_flight; /* scheduler proposals not yet answered */
    struct relay_prop *props; /* pending proposals */
    struct relay_delivery *deliveries;
    size_t n_deliveries;
    uint64_t duplicate_windows; /* outcomes lost after a delivery attempt */
    void (*stop_done)(void *arg);
    void *stop_arg;
    int stop_pending;
};

/* relay_now_ms - wall clock in ms: timestamps of proposed entries. */
static uint64_t relay_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* relay_fail - a fatal error: log it and stop the node (systemd restarts it). */
static void relay_fail(struct relay *r, const char *why)
{
    if (r->failed)
        return;
    r->failed = true;
    log_error("fatal reason=\"%s\" action=stopping", why);
    uv_stop(r->loop);
}

/* ---------------------------------------------------------------------------
 * The state machine adapter: consensus <-> queue.
 * ------------------------------------------------------------------------- */

/* relay_fsm_apply - one committed entry into the queue. result: status or 1 (duplicate). */
static int relay_fsm_apply(void *data, const uint8_t *buf, size_t len, void **result)
{
    struct relay *r = data;
    struct queue_apply_result res;
    int rv = queue_apply(r->queue, buf, len, &res);
    if (rv != 0) {
        /* Refuse loudly, never skip: raft stops applying at this index. */
        char why[160];
        snprintf(why, sizeof(why), "cannot apply log entry: %s (newer hamr version?)",
                 hamr_strerror(rv));
        relay_fail(r, why);
        return rv;
    }
    *result = (void *)(intptr_t)(res.status != 0 ? res.status : (res.duplicate ? 1 : 0));
    return 0;
}

/* relay_fsm_snapshot - the whole queue for raft. */
static int relay_fsm_snapshot(void *data, uint8_t **buf, size_t *len)
{
    struct relay *r = data;
    return queue_snapshot(r->queue, consensus_malloc, buf, len);
}

/* relay_fsm_restore - replace the queue from a snapshot. */
static int relay_fsm_restore(void *data, const uint8_t *buf, size_t len)
{
    struct relay *r = data;
    int rv = queue_restore(r->queue, buf, len);
    if (rv != 0)
        log_error("snapshot restore failed error=\"%s\"", hamr_strerror(rv));
    return rv;
}

/* ---------------------------------------------------------------------------
 * Proposals with a deadline.
 * ------------------------------------------------------------------------- */

/* relay_prop_unlink - take p off the pending list. */
static void relay_prop_unlink(struct relay *r, struct relay_prop *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        r->props = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

/* relay_prop_done - consensus answered: pass it on unless the deadline already did. */
static void relay_prop_done(void *arg, int status, void *result)
{
    struct relay_prop *p = arg;
    struct relay *r = p->relay;
    relay_prop_unlink(r, p);
    if (p->cb != NULL)
        p->cb(p->arg, status, status == 0 ? (intptr_t)result : 0);
    free(p);
}

/*
 * relay_propose - pack e and propose it. cb(arg, status, result) runs exactly
 * once if this returns 0: on commit, on failure, or at the proposal deadline
 * (HAMR_ETIMEDOUT; the entry may still commit later).
 */
static int relay_propose(struct relay *r,
                         Hamr__Entry *e,
                         uint64_t timeout_ms,
                         void (*cb)(void *arg, int status, intptr_t result),
                         void *arg)
{
    uint8_t *buf;
    size_t len;
    e->timestamp_ms = e->timestamp_ms ? e->timestamp_ms : relay_now_ms();
    int rv = proto_entry_pack(e, consensus_malloc, &buf, &len);
    if (rv != 0)
        return rv;
    struct relay_prop *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        consensus_free(buf);
        return HAMR_ENOMEM;
    }
    p->relay = r;
    p->cb = cb;
    p->arg = arg;
    p->deadline = uv_now(r->loop) + timeout_ms;
    rv = consensus_propose(r->cons, buf, len, relay_prop_done, p);
    if (rv != 0) {
        consensus_free(buf);
        free(p);
        return rv;
    }
    p->next = r->props;
    if (r->props)
        r->props->prev = p;
    r->props = p;
    return 0;
}

/* relay_props_expire - answer proposals whose deadline passed. */
static void relay_props_expire(struct relay *r)
{
    uint64_t now = uv_now(r->loop);
    for (struct relay_prop *p = r->props; p != NULL; p = p->next) {
        if (p->cb != NULL && now >= p->deadline) {
            void (*cb)(void *, int, intptr_t) = p->cb;
            p->cb = NULL;
            log_warn("proposal timed out after=%" PRIu64 "ms", r->cfg->proposal_timeout_ms);
            cb(p->arg, HAMR_ETIMEDOUT, 0);
        }
    }
}

/* ---------------------------------------------------------------------------
 * The SMTP sink: sessions hand finished messages here.
 * ------------------------------------------------------------------------- */

/* relay_sink_new_id - a cluster-unique queue id: time, node, counter. */
static int relay_sink_new_id(void *data, char *id, size_t idlen)
{
    struct relay *r = data;
    uint64_t ms = relay_now_ms();
    r->id_counter++;
    /* 11 hex of ms (good for 500+ years), 3 of node id, 5 of counter: 19 chars. */
    int n = snprintf(id, idlen, "%011" PRIX64 "%03" PRIX64 "%05" PRIX64, (uint64_t)(ms & 0xFFFFFFFFFFFull),
                     r->cfg->node_id & 0xFFF, r->id_counter & 0xFFFFF);
    return (n > 0 && (size_t)n < idlen) ? 0 : HAMR_EINVAL;
}

/* relay_sink_check_mail - may this node take a transaction now? */
static int relay_sink_check_mail(void *data)
{
    struct relay *r = data;
    if (r->draining || r->stopping)
        return HAMR_EDRAINING;
    if (r->free_bytes < r->cfg->min_free_bytes)
        return HAMR_ENOSPACE;
    if (!consensus_is_ready(r->cons))
        return HAMR_ENOQUORUM;
    return 0;
}

struct relay_submit {
    smtpd_sink_cb cb;
    void *arg;
    char queue_id[QUEUE_ID_MAX];
};

/* relay_sink_submit_done - the enqueue committed, failed or timed out. */
static void relay_sink_submit_done(void *arg, int status, intptr_t result)
{
    struct relay_submit *s = arg;
    if (status == 0 && result < 0)
        status = (int)result; /* refused by the state machine (e.g. checksum) */
    if (status != 0)
        log_warn("enqueue failed id=%s error=\"%s\"", s->queue_id, hamr_strerror(status));
    s->cb(s->arg, status);
    free(s);
}

/* relay_sink_submit - propose an Enqueue for the finished message. */
static int relay_sink_submit(void *data,
                             const struct smtpd_envelope *env,
                             smtpd_sink_cb cb,
                             void *arg)
{
    struct relay *r = data;
    if (r->stopping)
        return HAMR_ESHUTDOWN;
    if (r->free_bytes < r->cfg->min_free_bytes)
        return HAMR_ENOSPACE;

    uint8_t sha[SHA256_DIGEST_LENGTH];
    SHA256(env->body, env->body_len, sha);
    uint64_t now = relay_now_ms();

    Hamr__Enqueue enq = HAMR__ENQUEUE__INIT;
    enq.queue_id = (char *)env->queue_id;
    enq.sender = (char *)env->sender;
    enq.n_rcpts = env->n_rcpts;
    enq.rcpts = (char **)env->rcpts;
    enq.body.data = (uint8_t *)env->body;
    enq.body.len = env->body_len;
    enq.expires_at_ms = now + r->cfg->queue_lifetime_ms;
    enq.body_sha256.data = sha;
    enq.body_sha256.len = sizeof(sha);
    enq.client_addr = (char *)env->client_addr;
    enq.helo = (char *)env->helo;
    enq.accepted_by = r->cfg->node_id;
    enq.body_8bit = env->body_8bit;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.timestamp_ms = now;
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &enq;

    struct relay_submit *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return HAMR_ENOMEM;
    s->cb = cb;
    s->arg = arg;
    hamr_strlcpy(s->queue_id, env->queue_id, sizeof(s->queue_id));
    int rv = relay_propose(r, &e, r->cfg->proposal_timeout_ms, relay_sink_submit_done, s);
    if (rv != 0) {
        free(s);
        return rv;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Scheduling and delivery (leader only).
 * ------------------------------------------------------------------------- */

/* relay_route_dest - destination key "[host]:port" of a recipient. */
static int relay_route_dest(void *data, const char *rcpt, char *dest, size_t destlen)
{
    struct relay *r = data;
    struct config_hostport hp;
    if (config_route(r->cfg, rcpt, &hp) != 0)
        return HAMR_ENOTFOUND;
    int n = snprintf(dest, destlen, "[%s]:%u", hp.host, (unsigned)hp.port);
    return (n > 0 && (size_t)n < destlen) ? 0 : HAMR_EINVAL;
}

/* relay_sched_done - a scheduler proposal (lease or outcome) finished. */
static void relay_sched_release(struct relay *r)
{
    HAMR_ASSERT(r->sched_in_flight > 0);
    r->sched_in_flight--;
}

/* relay_outcome_done - an Outcome committed or failed. */
static void relay_outcome_done(void *arg, int status, intptr_t result)
{
    struct relay_delivery *d = arg;
    struct relay *r = d->relay;
    if (status != 0) {
        /* The attempt happened but its result is not in the log: the lease
         * will expire and these recipients are tried again (a duplicate window). */
        r->duplicate_windows++;
        log_warn("outcome not committed id=%s lease=%" PRIx64 " error=\"%s\"", d->queue_id,
                 d->lease_id, hamr_strerror(status));
    } else if (result < 0) {
        log_info("outcome ignored id=%s lease=%" PRIx64 " reason=\"%s\"", d->queue_id, d->lease_id,
                 hamr_strerror((int)result));
    }
    for (size_t i = 0; i < d->n_rcpts; i++)
        free(d->rcpts[i]);
    free(d->rcpts);
    free(d->rcpt_indexes);
    free(d->sender);
    free(d->body);
    free(d);
}

/* relay_delivery_unlink - take d off the running list. */
static void relay_delivery_unlink(struct relay *r, struct relay_delivery *d)
{
    if (d->prev)
        d->prev->next = d->next;
    else
        r->deliveries = d->next;
    if (d->next)
        d->next->prev = d->prev;
    d->prev = d->next = NULL;
    r->n_deliveries--;
}

/* relay_delivery_done - the SMTP client finished: propose the Outcome. */
static void relay_delivery_done(void *arg, const struct smtpc_result *res)
{
    struct relay_delivery *d = arg;
    struct relay *r = d->relay;
    relay_delivery_unlink(r, d);

    uint64_t now = relay_now_ms();
    uint64_t backoff =
        queue_sched_backoff(d->max_attempts, r->cfg->retry_min_ms, r->cfg->retry_max_ms);
    Hamr__RcptResult *results = calloc(d->n_rcpts, sizeof(*results));
    Hamr__RcptResult **rp = calloc(d->n_rcpts, sizeof(*rp));
    if (results == NULL || rp == NULL) {
        free(results);
        free(rp);
        relay_outcome_done(d, HAMR_ENOMEM, 0);
        return;
    }
    for (size_t i = 0; i < d->n_rcpts; i++) {
        const struct smtpc_rcpt_result *rr = &res->rcpts[i];
        hamr__rcpt_result__init(&results[i]);
        results[i].rcpt_index = d->rcpt_indexes[i];
        results[i].smtp_code = rr->code;
        results[i].diagnostic = (char *)rr->text;
        switch (rr->status) {
            case SMTPC_OK:
                results[i].status = HAMR__RCPT_RESULT__STATUS__DELIVERED;
                break;
            case SMTPC_PERM:
                results[i].status = HAMR__RCPT_RESULT__STATUS__BOUNCED;
                break;
            case SMTPC_TEMP:
            default:
                /* A temporary failure past the queue lifetime is final (RFC 5321 4.5.4.1). */
                results[i].status = now >= d->expires_at_ms ? HAMR__RCPT_RESULT__STATUS__EXPIRED
                                                            : HAMR__RCPT_RESULT__STATUS__DEFERRED;
                break;
        }
        rp[i] = &results[i];
        log_info("delivery id=%s to=<%s> relay=%s status=%s code=%u", d->queue_id, d->rcpts[i],
                 res->remote[0] ? res->remote : "none",
                 rr->status == SMTPC_OK     ? "sent"
                 : rr->status == SMTPC_PERM ? "bounced"
                                            : "deferred",
                 rr->code);
    }
    Hamr__Outcome oc = HAMR__OUTCOME__INIT;
    oc.queue_id = d->queue_id;
    oc.lease_id = d->lease_id;
    oc.n_results = d->n_rcpts;
    oc.results = rp;
    oc.next_attempt_ms = now + backoff;
    oc.reporter = (char *)r->cfg->hostname;
    oc.dsn_expires_at_ms = now + r->cfg->queue_lifetime_ms;
    oc.remote = (char *)res->remote;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.timestamp_ms = now;
    e.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
    e.outcome = &oc;
    int rv = r->stopping ? HAMR_ESHUTDOWN
                         : relay_propose(r, &e, r->cfg->proposal_timeout_ms, relay_outcome_done, d);
    free(results);
    free(rp);
    if (rv != 0)
        relay_outcome_done(d, rv, 0);
}

/* relay_deliver_start - deliver the recipients this node's lease got. */
static void relay_deliver_start(struct relay *r,
                                const struct queue_msg *m,
                                uint64_t lease_id,
                                const char *dest)
{
    struct config_hostport hp;
    if (config_parse_hostport(dest, &hp) != 0) {
        log_error("bad destination id=%s dest=%s", m->id, dest);
        return;
    }
    struct relay_delivery *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return;
    d->relay = r;
    hamr_strlcpy(d->queue_id, m->id, sizeof(d->queue_id));
    d->lease_id = lease_id;
    d->expires_at_ms = m->expires_at_ms;
    d->rcpt_indexes = calloc(m->n_rcpts, sizeof(*d->rcpt_indexes));
    d->rcpts = calloc(m->n_rcpts, sizeof(*d->rcpts));
    d->sender = strdup(m->sender);
    d->body = malloc(m->body_len ? m->body_len : 1);
    if (d->rcpt_indexes == NULL || d->rcpts == NULL || d->sender == NULL || d->body == NULL)
        goto fail;
    memcpy(d->body, m->body, m->body_len);
    d->body_len = m->body_len;
    d->body_8bit = m->body_8bit;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *qr = &m->rcpts[i];
        if (qr->state != QUEUE_RCPT_LEASED || qr->lease_id != lease_id)
            continue;
        d->rcpts[d->n_rcpts] = strdup(qr->addr);
        if (d->rcpts[d->n_rcpts] == NULL)
            goto fail;
        d->rcpt_indexes[d->n_rcpts++] = (uint32_t)i;
        if (qr->attempts > d->max_attempts)
            d->max_attempts = qr->attempts;
    }
    if (d->n_rcpts == 0)
        goto fail;
    d->msg.sender = d->sender;
    d->msg.rcpts = (const char *const *)d->rcpts;
    d->msg.n_rcpts = d->n_rcpts;
    d->msg.body = d->body;
    d->msg.body_len = d->body_len;
    d->msg.body_8bit = d->body_8bit;
    int rv = smtpc_pool_deliver(r->pool, hp.host, hp.port, &d->msg, relay_delivery_done, d);
    if (rv != 0) {
        log_warn("delivery not started id=%s error=\"%s\"", m->id, hamr_strerror(rv));
        goto fail;
    }
    d->next = r->deliveries;
    if (r->deliveries)
        r->deliveries->prev = d;
    r->deliveries = d;
    r->n_deliveries++;
    return;
fail:
    /* Nothing was attempted: the lease simply expires and the work is picked again. */
    relay_outcome_done(d, 0, 0);
}

struct relay_lease_req {
    struct relay *relay;
    size_t n;
    struct queue_work *work;
    uint64_t *lease_ids;
};

/* relay_lease_done - the Lease committed: start what it granted to us. */
static void relay_lease_done(void *arg, int status, intptr_t result)
{
    struct relay_lease_req *lr = arg;
    struct relay *r = lr->relay;
    relay_sched_release(r);
    if (status == 0 && !r->stopping && consensus_is_ready(r->cons)) {
        for (size_t i = 0; i < lr->n; i++) {
            const struct queue_msg *m = queue_find(r->queue, lr->work[i].queue_id);
            if (m != NULL)
                relay_deliver_start(r, m, lr->lease_ids[i], lr->work[i].dest);
        }
    } else if (status != 0) {
        log_warn("lease not committed error=\"%s\"", hamr_strerror(status));
    }
    queue_work_free(lr->work, lr->n);
    free(lr->lease_ids);
    free(lr);
}

/* relay_final_done - an expiry/no-route Outcome finished. */
static void relay_final_done(void *arg, int status, intptr_t result)
{
    struct relay *r = arg;
    relay_sched_release(r);
    if (status != 0)
        log_warn("final outcome not committed error=\"%s\"", hamr_strerror(status));
}

/* relay_sched_final - Outcome EXPIRED or BOUNCED (no route) without a lease. */
static void relay_sched_final(struct relay *r, const struct queue_work *w, uint64_t now)
{
    Hamr__RcptResult *results = calloc(w->n_rcpts, sizeof(*results));
    Hamr__RcptResult **rp = calloc(w->n_rcpts, sizeof(*rp));
    if (results == NULL || rp == NULL)
        goto out;
    bool expire = w->kind == QUEUE_WORK_EXPIRE;
    for (size_t i = 0; i < w->n_rcpts; i++) {
        hamr__rcpt_result__init(&results[i]);
        results[i].rcpt_index = w->rcpt_indexes[i];
        results[i].status =
            expire ? HAMR__RCPT_RESULT__STATUS__EXPIRED : HAMR__RCPT_RESULT__STATUS__BOUNCED;
        results[i].diagnostic = expire ? "delivery time expired (queue_lifetime)"
                                       : "5.4.4 no route to the recipient's domain";
        rp[i] = &results[i];
    }
    Hamr__Outcome oc = HAMR__OUTCOME__INIT;
    oc.queue_id = (char *)w->queue_id;
    oc.n_results = w->n_rcpts;
    oc.results = rp;
    oc.reporter = (char *)r->cfg->hostname;
    oc.dsn_expires_at_ms = now + r->cfg->queue_lifetime_ms;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.timestamp_ms = now;
    e.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
    e.outcome = &oc;
    if (relay_propose(r, &e, r->cfg->proposal_timeout_ms, relay_final_done, r) == 0) {
        r->sched_in_flight++;
        log_info("%s id=%s rcpts=%zu", expire ? "expired" : "noroute", w->queue_id, w->n_rcpts);
    }
out:
    free(results);
    free(rp);
}

/* relay_sched_tick - leader: lease due work, expire what is too old. */
static void relay_sched_tick(uv_timer_t *t)
{
    struct relay *r = t->data;
    relay_props_expire(r);
    if (r->stopping || r->sched_in_flight > 0 || !consensus_is_ready(r->cons))
        return;

    uint64_t now = relay_now_ms();
    struct queue_sched_limits lim = {
        .max_per_dest = r->cfg->smtpc.max_conns_per_dest * 4,
        .max_items = RELAY_SCHED_MAX_ITEMS,
        .self_node = r->cfg->node_id,
        .self_boot_id = r->boot_id,
    };
    struct queue_route route = {.data = r, .dest = relay_route_dest};
    struct queue_work *work = NULL;
    int n = queue_sched_pick(r->queue, now, &lim, &route, &work);
    if (n <= 0) {
        queue_work_free(work, 0);
        if (n < 0)
            log_warn("scheduler error=\"%s\"", hamr_strerror(n));
        return;
    }

    /* Split: final outcomes now, deliveries under one lease. */
    size_t n_deliver = 0;
    for (int i = 0; i < n; i++) {
        if (work[i].kind == QUEUE_WORK_DELIVER)
            n_deliver++;
        else
            relay_sched_final(r, &work[i], now);
    }
    if (n_deliver == 0) {
        queue_work_free(work, (size_t)n);
        return;
    }

    struct relay_lease_req *lr = calloc(1, sizeof(*lr));
    Hamr__LeaseItem *items = calloc(n_deliver, sizeof(*items));
    Hamr__LeaseItem **ip = calloc(n_deliver, sizeof(*ip));
    struct queue_work *dw = calloc(n_deliver, sizeof(*dw));
    uint64_t *ids = calloc(n_deliver, sizeof(*ids));
    if (lr == NULL || items == NULL || ip == NULL || dw == NULL || ids == NULL) {
        free(lr);
        free(items);
        free(ip);
        free(dw);
        free(ids);
        queue_work_free(work, (size_t)n);
        return;
    }
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        if (work[i].kind != QUEUE_WORK_DELIVER)
            continue;
        dw[k] = work[i]; /* move: the rcpt array now belongs to dw */
        work[i].rcpt_indexes = NULL;
        work[i].n_rcpts = 0;
        ids[k] = ++r->lease_counter;
        hamr__lease_item__init(&items[k]);
        items[k].queue_id = dw[k].queue_id;
        items[k].n_rcpt_indexes = dw[k].n_rcpts;
        items[k].rcpt_indexes = dw[k].rcpt_indexes;
        items[k].lease_id = ids[k];
        items[k].destination = dw[k].dest;
        ip[k] = &items[k];
        k++;
    }
    queue_work_free(work, (size_t)n);

    Hamr__Lease lease = HAMR__LEASE__INIT;
    lease.node_id = r->cfg->node_id;
    lease.term = consensus_term(r->cons);
    lease.expires_at_ms = now + r->cfg->lease_time_ms;
    lease.n_items = n_deliver;
    lease.items = ip;
    lease.boot_id = r->boot_id;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.timestamp_ms = now;
    e.cmd_case = HAMR__ENTRY__CMD_LEASE;
    e.lease = &lease;
    lr->relay = r;
    lr->n = n_deliver;
    lr->work = dw;
    lr->lease_ids = ids;
    int rv = relay_propose(r, &e, r->cfg->proposal_timeout_ms, relay_lease_done, lr);
    free(items);
    free(ip);
    if (rv != 0) {
        queue_work_free(dw, n_deliver);
        free(ids);
        free(lr);
        return;
    }
    r->sched_in_flight++;
}

/* ---------------------------------------------------------------------------
 * Housekeeping: free space, proposal deadlines.
 * ------------------------------------------------------------------------- */

/* relay_check_disk - free bytes on the data directory's file system. */
static void relay_check_disk(struct relay *r)
{
    struct statvfs sv;
    if (statvfs(r->cfg->data_dir, &sv) == 0) {
        uint64_t free_now = (uint64_t)sv.f_bavail * sv.f_frsize;
        if (free_now < r->cfg->min_free_bytes && r->free_bytes >= r->cfg->min_free_bytes)
            log_warn("disk low free=%" PRIu64 " min_free=%" PRIu64 " action=refusing mail",
                     free_now, r->cfg->min_free_bytes);
        r->free_bytes = free_now;
    }
}

/* relay_housekeeping - once a second. */
static void relay_housekeeping(uv_timer_t *t)
{
    struct relay *r = t->data;
    relay_check_disk(r);
    relay_props_expire(r);
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (info.failed)
        relay_fail(r, "raft became unavailable (internal error)");
}

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
    ns.free_bytes = r->free_bytes;
    ns.version = RELAY_VERSION;
    ns.draining = r->draining;
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
    struct relay_ctl_filter f = {.now = relay_now_ms()};
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

/* relay_ctl_admin - hold/release/delete/flush/bounce as one committed command. */
static void relay_ctl_admin(struct relay *r,
                            struct control_call *call,
                            const Hamr__ControlRequest *req,
                            Hamr__Admin__Op op)
{
    bool optional = op == HAMR__ADMIN__OP__FLUSH;
    if (req->n_args > 1 || (!optional && req->n_args != 1)) {
        control_reply_error(call, HAMR_EINVAL, "usage: %s %s", req->verb,
                              optional ? "[ID]" : "ID");
        return;
    }
    const char *id = req->n_args ? req->args[0] : "";
    if (strlen(id) >= QUEUE_ID_MAX) {
        control_reply_error(call, HAMR_EINVAL, "%s: queue id too long", req->verb);
        return;
    }
    if (!consensus_is_ready(r->cons)) {
        struct consensus_info info;
        consensus_get_info(r->cons, &info);
        control_reply_error(call, HAMR_ENOTLEADER,
                              "this node is not the leader (leader: %" PRIu64 " %s)",
                              info.leader_id, info.leader_id ? info.leader_address : "unknown");
        return;
    }
    struct relay_ctl_admin *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        control_reply_error(call, HAMR_ENOMEM, "out of memory");
        return;
    }
    a->call = call;
    hamr_strlcpy(a->verb, req->verb, sizeof(a->verb));
    hamr_strlcpy(a->id, id, sizeof(a->id));
    uint64_t now = relay_now_ms();
    Hamr__Admin adm = HAMR__ADMIN__INIT;
    adm.op = op;
    adm.queue_id = (char *)id;
    adm.reporter = (char *)r->cfg->hostname;
    adm.dsn_expires_at_ms = now + r->cfg->queue_lifetime_ms;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.timestamp_ms = now;
    e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    e.admin = &adm;
    int rv = relay_propose(r, &e, r->cfg->proposal_timeout_ms, relay_ctl_admin_done, a);
    if (rv != 0) {
        free(a);
        control_reply_error(call, rv, "%s: %s", req->verb, hamr_strerror(rv));
    }
}

struct relay_ctl_transfer {
    struct control_call *call;
};

/* relay_ctl_transfer_done - leadership moved (or did not). */
static void relay_ctl_transfer_done(void *arg, int status, uint64_t leader)
{
    struct relay_ctl_transfer *t = arg;
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
    if (req->n_args == 1) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(req->args[0], &end, 10);
        if (errno != 0 || *end != '\0' || v == 0) {
            control_reply_error(call, HAMR_EINVAL, "transfer: not a node id: \"%s\"",
                                  req->args[0]);
            return;
        }
        id = v;
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

/* relay_ctl_handle - dispatch one control request. */
static void relay_ctl_handle(void *data, struct control_call *call, const Hamr__ControlRequest *req)
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
        relay_ctl_admin(r, call, req, HAMR__ADMIN__OP__HOLD);
    } else if (strcmp(v, "release") == 0) {
        relay_ctl_admin(r, call, req, HAMR__ADMIN__OP__RELEASE);
    } else if (strcmp(v, "delete") == 0) {
        relay_ctl_admin(r, call, req, HAMR__ADMIN__OP__DELETE);
    } else if (strcmp(v, "flush") == 0) {
        relay_ctl_admin(r, call, req, HAMR__ADMIN__OP__FLUSH);
    } else if (strcmp(v, "bounce") == 0) {
        relay_ctl_admin(r, call, req, HAMR__ADMIN__OP__BOUNCE);
    } else if (strcmp(v, "transfer") == 0) {
        relay_ctl_transfer(r, call, req);
    } else if (strcmp(v, "drain") == 0 || strcmp(v, "undrain") == 0) {
        bool on = v[0] == 'd';
        if (req->n_args > 1 ||
            (req->n_args == 1 && strtoull(req->args[0], NULL, 10) != r->cfg->node_id)) {
            control_reply_error(call, HAMR_EINVAL,
                                  "%s: this node is %" PRIu64 "; send it to the node itself", v,
                                  r->cfg->node_id);
            return;
        }
        r->draining = on;
        smtpd_server_set_draining(r->smtpd, on);
        log_info("%s node=%" PRIu64, on ? "draining" : "undrained", r->cfg->node_id);
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = on ? "draining: new SMTP sessions get 421" : "undrained";
        control_reply(call, &resp);
    } else if (strcmp(v, "version") == 0) {
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = "hamrd " RELAY_VERSION;
        control_reply(call, &resp);
    } else if (strcmp(v, "add") == 0 || strcmp(v, "promote") == 0 || strcmp(v, "remove") == 0) {
        control_reply_error(call, HAMR_EINVAL, "%s: membership changes are not available yet", v);
    } else {
        char safe[64];
        log_printable(safe, sizeof(safe), v, strlen(v));
        control_reply_error(call, HAMR_EINVAL, "unknown command \"%s\"", safe);
    }
}

/* ---------------------------------------------------------------------------
 * Start and stop.
 * ------------------------------------------------------------------------- */

/* relay_on_leader - leadership gained (after the barrier) or lost. */
static void relay_on_leader(void *arg, bool leader)
{
    struct relay *r = arg;
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    log_info("leadership %s term=%" PRIu64, leader ? "gained" : "lost", info.term);
}

/* relay_boot_id - a random id for this process: leases name it. */
static void relay_boot_id(char out[33])
{
    uint8_t raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        uint64_t t = relay_now_ms() ^ ((uint64_t)getpid() << 32);
        memcpy(raw, &t, sizeof(t));
        memcpy(raw + 8, &t, sizeof(t));
    }
    for (size_t i = 0; i < sizeof(raw); i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

int relay_start(uv_loop_t *loop,
                const struct hamr_config *cfg,
                struct relay **out,
                char *err,
                size_t errlen)
{
    struct relay *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return HAMR_ENOMEM;
    }
    r->loop = loop;
    r->cfg = cfg;
    relay_boot_id(r->boot_id);
    /* Start counters from random points so ids of successive boots differ. */
    uint64_t seed;
    if (RAND_bytes((unsigned char *)&seed, sizeof(seed)) != 1)
        seed = relay_now_ms();
    r->id_counter = seed & 0xFFFFF;
    r->lease_counter = seed & 0xFFFFFFFF00000000ull;
    r->queue = queue_new();
    if (r->queue == NULL) {
        snprintf(err, errlen, "out of memory");
        free(r);
        return HAMR_ENOMEM;
    }

    struct consensus_config cc = {0};
    cc.id = cfg->node_id;
    int an = snprintf(cc.address, sizeof(cc.address), "%.48s:%u", cfg->listen_raft.host,
                      (unsigned)cfg->listen_raft.port);
    if (an < 0 || (size_t)an >= sizeof(cc.address)) {
        snprintf(err, errlen, "raft address too long");
        queue_free(r->queue);
        free(r);
        return HAMR_EINVAL;
    }
    snprintf(cc.dir, sizeof(cc.dir), "%s", cfg->data_dir);
    cc.voters = cfg->voters;
    cc.n_voters = cfg->n_voters;
    cc.election_timeout_ms = cfg->election_timeout_ms;
    cc.heartbeat_ms = cfg->heartbeat_ms;
    cc.snapshot_bytes = cfg->snapshot_bytes;
    cc.snapshot_trailing = 128;
    cc.segment_size = 64u * 1024 * 1024;
    cc.on_leader = relay_on_leader;
    cc.on_leader_arg = r;
    struct consensus_fsm fsm = {
        .data = r,
        .apply = relay_fsm_apply,
        .snapshot = relay_fsm_snapshot,
        .restore = relay_fsm_restore,
    };
    int rv = consensus_new(loop, &cc, &fsm, &r->cons, err, errlen);
    if (rv != 0)
        goto fail_queue;
    rv = consensus_start(r->cons, err, errlen);
    if (rv != 0)
        goto fail_cons;
    relay_check_disk(r); /* the data directory exists now */

    r->pool = smtpc_pool_new(loop, &cfg->smtpc);
    if (r->pool == NULL) {
        snprintf(err, errlen, "out of memory");
        rv = HAMR_ENOMEM;
        goto fail_cons;
    }
    struct smtpd_sink sink = {
        .data = r,
        .new_id = relay_sink_new_id,
        .check_mail = relay_sink_check_mail,
        .submit = relay_sink_submit,
    };
    rv = smtpd_server_new(loop, cfg->listen_smtp.host, cfg->listen_smtp.port, &cfg->smtpd, &sink,
                          cfg->max_sessions, &r->smtpd, err, errlen);
    if (rv != 0)
        goto fail_pool;
    smtpd_server_set_greet_delay(r->smtpd, cfg->greet_delay_ms);
    struct control_handler handler = {.data = r, .handle = relay_ctl_handle};
    rv = control_new(loop, cfg->listen_control.host, cfg->listen_control.port, &handler,
                     &r->control, err, errlen);
    if (rv != 0)
        goto fail_smtpd;

    uv_timer_init(loop, &r->sched_timer);
    r->sched_timer.data = r;
    uv_timer_start(&r->sched_timer, relay_sched_tick, cfg->scan_interval_ms, cfg->scan_interval_ms);
    uv_timer_init(loop, &r->housekeeping_timer);
    r->housekeeping_timer.data = r;
    uv_timer_start(&r->housekeeping_timer, relay_housekeeping, 1000, 1000);
    r->open_handles = 2;
    log_info("started node=%" PRIu64 " smtp=%s:%u raft=%s control=%s:%u boot=%s", cfg->node_id,
             cfg->listen_smtp.host, (unsigned)cfg->listen_smtp.port, cc.address,
             cfg->listen_control.host, (unsigned)cfg->listen_control.port, r->boot_id);
    *out = r;
    return 0;

    /* Failures during start: close what was opened, synchronously enough for
     * the caller to exit; the loop is run once more by the caller. */
fail_smtpd:
    smtpd_server_close(r->smtpd, NULL, NULL);
fail_pool:
    smtpc_pool_close(r->pool, NULL, NULL);
fail_cons:
    consensus_close(r->cons, NULL, NULL);
    r->cons = NULL;
fail_queue:
    r->queue = queue_free(r->queue);
    free(r);
    return rv;
}

bool relay_failed(const struct relay *r)
{
    return r->failed;
}

/* relay_stop_step - one part finished closing; free when all have. */
static void relay_stop_step(void *arg)
{
    struct relay *r = arg;
    HAMR_ASSERT(r->stop_pending > 0);
    if (--r->stop_pending > 0)
        return;
    void (*done)(void *) = r->stop_done;
    void *done_arg = r->stop_arg;
    r->queue = queue_free(r->queue);
    free(r);
    if (done)
        done(done_arg);
}

/* relay_stop_handle_closed - a relay timer closed. */
static void relay_stop_handle_closed(uv_handle_t *h)
{
    relay_stop_step(h->data);
}

/* relay_stop_cons - the pool is closed: now close raft (which fails proposals). */
static void relay_stop_after_pool(void *arg)
{
    struct relay *r = arg;
    consensus_close(r->cons, relay_stop_step, r);
    relay_stop_step(r);
}

void relay_stop(struct relay *r, void (*done)(void *arg), void *arg)
{
    if (r->stopping)
        return;
    r->stopping = true;
    r->stop_done = done;
    r->stop_arg = arg;
    log_info("stopping node=%" PRIu64, r->cfg->node_id);
    /* Count: smtpd, control, 2 timers, pool (then raft, added by the pool step). */
    r->stop_pending = 6;
    uv_timer_stop(&r->sched_timer);
    uv_timer_stop(&r->housekeeping_timer);
    uv_close((uv_handle_t *)&r->sched_timer, relay_stop_handle_closed);
    uv_close((uv_handle_t *)&r->housekeeping_timer, relay_stop_handle_closed);
    smtpd_server_close(r->smtpd, relay_stop_step, r);
    control_close(r->control, relay_stop_step, r);
    smtpc_pool_close(r->pool, relay_stop_after_pool, r);
}
