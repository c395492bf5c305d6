/*
 * relay_sched.c - scheduling and delivery, on the leader only.
 *
 * Every scan_interval relay_sched_tick asks queue_sched_pick for due work.
 * Expired or unroutable recipients get an Outcome straight away; the rest go
 * into one Lease entry. Only recipients the committed lease actually granted
 * to this node (and this boot) are delivered (relay_lease_done ->
 * relay_deliver_start). The SMTP client pool reports per-recipient results;
 * they become one Outcome entry carrying the lease id, so an outcome from a
 * replaced lease is ignored by the state machine (fencing). An outcome that
 * cannot be committed (leadership lost) is forwarded to the new leader when
 * there is one; if it is lost, the lease expires and the recipients are
 * delivered again: a counted duplicate window.
 *
 * A next hop that gave an attempt no SMTP session (no connection, or a
 * refusal before EHLO) is suspended, as Postfix marks a destination dead:
 * the scheduler gives it no work for RELAY_SUSPEND_MS (at most retry_min),
 * then one message as a probe; a probe that gets a session lifts the
 * suspension, one that does not renews it. So a dead next hop costs a
 * Lease and an Outcome entry per probe interval, not one of each for every
 * queued message as it comes due (with a large backlog those retries were
 * most of the raft log). Recipients still expire; a flush lifts every
 * suspension; the table is the leader's own, never replicated.
 *
 * Every result of an attempt also says which TLS policy the attempt ran
 * under and what TLS it got (or why none), so that hamrctl show can tell an
 * operator (SECURITY.md S17). Those fields are format 2: they are written
 * only once the cluster level allows them (QUEUE_LEVEL_TLS).
 *
 * Owns: struct relay_sched_state (its timers, the deliveries in flight).
 * May call: the queue (read, pick), queue_entry (packing), the proposer, the
 * SMTP client pool, config routing, metrics; never relay.c.
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
#include "util/hash.h"
#include "util/log.h"
#include "queue/body_store.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue/queue_sched.h"
#include "consensus/consensus.h"
#include "net/smtpc.h"
#include "net/smtpc_auth.h"
#include "node/config.h"
#include "node/clock.h"
#include "node/metrics.h"
#include "node/relay_internal.h"

/* ---------------------------------------------------------------------------
 * Scheduling and delivery (leader only).
 * ------------------------------------------------------------------------- */

/*
 * Bytes of a stored body read per chunk of a delivery: the SMTP client's
 * write size, so that each chunk read is about one write on the wire.
 */
#define RELAY_DELIVER_CHUNK (64 * 1024)

/*
 * relay_route_dest - destination key of a recipient: "[host]:port" for a
 * next hop taken as it is, "domain:port" for one looked up as MX. The key
 * is what the SMTP client is given as the next hop, and what the queue
 * groups by (it is in Lease entries too).
 */
int relay_route_dest(void *data, const char *rcpt, char *dest, size_t destlen)
{
    struct relay *r = data;
    struct config_hostport hp;
    if (config_route(r->cfg, rcpt, &hp) != 0)
        return HAMR_ENOTFOUND;
    int n = snprintf(dest, destlen, hp.mx ? "%s:%u" : "[%s]:%u", hp.host, (unsigned)hp.port);
    return (n > 0 && (size_t)n < destlen) ? 0 : HAMR_EINVAL;
}

/*
 * relay_dest_split - a destination key into the next hop (brackets kept:
 * they mean "no MX lookup") and the port. 0 or HAMR_EINVAL.
 */
static int relay_dest_split(const char *dest, char *nexthop, size_t len, uint16_t *port)
{
    const char *colon = strrchr(dest, ':');
    if (colon == NULL || colon == dest || (size_t)(colon - dest) >= len)
        return HAMR_EINVAL;
    char *end = NULL;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != '\0' || p == 0 || p > 65535)
        return HAMR_EINVAL;
    memcpy(nexthop, dest, (size_t)(colon - dest));
    nexthop[colon - dest] = '\0';
    if (strchr(nexthop, ':') != NULL && (nexthop[0] != '[' || colon[-1] != ']'))
        return HAMR_EINVAL; /* an IPv6 literal is always in brackets */
    *port = (uint16_t)p;
    return 0;
}

/*
 * relay_sched_policy_rank - how strict a policy is when recipients'
 * policies combine: may < dane < encrypt < verify < dane-only. dane
 * without TLSA records is may, so it ranks under encrypt (a domain that
 * demands TLS never loses that to a neighbour's dane); verify outranks
 * dane (a PKIX check the next hop may fail defers, it never downgrades);
 * dane-only, authenticated TLS or nothing, is the strictest.
 */
static int relay_sched_policy_rank(enum smtpc_tls_policy p)
{
    switch (p) {
        case SMTPC_TLS_MAY:
            return 0;
        case SMTPC_TLS_DANE:
            return 1;
        case SMTPC_TLS_ENCRYPT:
            return 2;
        case SMTPC_TLS_VERIFY:
            return 3;
        case SMTPC_TLS_DANE_ONLY:
            return 4;
    }
    return 4;
}

/*
 * relay_sched_policy - the TLS policy of one delivery: one connection
 * carries every recipient, so the strictest of their domains' policies
 * (relay_sched_policy_rank).
 */
static enum smtpc_tls_policy relay_sched_policy(const struct relay *r, char *const *rcpts, size_t n)
{
    enum smtpc_tls_policy policy = SMTPC_TLS_MAY;
    for (size_t i = 0; i < n; i++) {
        enum smtpc_tls_policy p1 = config_tls_policy(r->cfg, rcpts[i]);
        if (relay_sched_policy_rank(p1) > relay_sched_policy_rank(policy))
            policy = p1;
    }
    return policy;
}

/*
 * relay_sched_tls_text - the TLS of an attempt as hamrctl show prints it,
 * from the state the SMTP client reports: "TLSv1.3 TLS_AES_256_GCM_SHA384
 * (verified)" or "(unverified)" when TLS was up; "none (plaintext: no
 * STARTTLS)" when mail went in the clear under policy may; "none (no
 * connection)"; or "none (deferred: STARTTLS not offered)" and the like,
 * where "deferred" is the recipient's status. Under dane and dane-only:
 * "... (dane-verified)" when a TLSA record matched, "(unverified; dane: no
 * TLSA, opportunistic)" or "none (plaintext: no STARTTLS; dane: no TLSA)"
 * when the next hop had no usable TLSA records and dane went on as may,
 * "none (deferred: dane: TLSA records but ...)" and "none (deferred: dane:
 * no usable host)".
 */
static void relay_sched_tls_text(enum smtpc_tls_policy policy,
                                 const struct smtpc_result *res,
                                 const char *status,
                                 char *out,
                                 size_t outlen)
{
    bool dane = policy == SMTPC_TLS_DANE || policy == SMTPC_TLS_DANE_ONLY;
    switch (res->tls_state) {
        case SMTPC_TLS_STATE_VERIFIED:
        case SMTPC_TLS_STATE_UNVERIFIED: {
            /* smtpc: "<protocol> <cipher>", then " verified", " dane-verified" or " unverified". */
            const char *how =
                res->tls_state == SMTPC_TLS_STATE_UNVERIFIED ? "unverified" : "verified";
            char desc[sizeof(res->tls)];
            hamr_strlcpy(desc, res->tls, sizeof(desc));
            size_t n = strlen(desc);
            if (n > 14 && strcmp(desc + n - 14, " dane-verified") == 0) {
                how = "dane-verified";
                desc[n - 14] = '\0';
            }
            size_t m = strlen(how);
            if (n > m && desc[n - m - 1] == ' ' && strcmp(desc + n - m, how) == 0)
                desc[n - m - 1] = '\0';
            snprintf(out, outlen, "%s (%s%s)", desc, how,
                     dane && res->tls_state == SMTPC_TLS_STATE_UNVERIFIED
                         ? "; dane: no TLSA, opportunistic"
                         : "");
            return;
        }
        case SMTPC_TLS_STATE_NOT_OFFERED:
            snprintf(out, outlen, "none (plaintext: no STARTTLS%s)", dane ? "; dane: no TLSA" : "");
            return;
        case SMTPC_TLS_STATE_DANE_FAILED:
            snprintf(out, outlen, "none (%s: dane: TLSA records but no authenticated TLS)", status);
            return;
        case SMTPC_TLS_STATE_DANE_UNUSABLE:
            snprintf(out, outlen, "none (%s: dane: no usable host)", status);
            return;
        case SMTPC_TLS_STATE_NOT_OFFERED_REQUIRED:
            snprintf(out, outlen, "none (%s: STARTTLS not offered)", status);
            return;
        case SMTPC_TLS_STATE_NO_CLIENT_CTX:
            /* Under may the client went on in plaintext; else it deferred. */
            if (policy == SMTPC_TLS_MAY)
                snprintf(out, outlen, "none (plaintext: no TLS client context)");
            else
                snprintf(out, outlen, "none (%s: no TLS client context)", status);
            return;
        case SMTPC_TLS_STATE_HANDSHAKE_FAILED:
            snprintf(out, outlen, "none (%s: TLS handshake failed)", status);
            return;
        case SMTPC_TLS_STATE_REFUSED_BEFORE_EHLO:
            snprintf(out, outlen, "none (%s: refused before EHLO)", status);
            return;
        case SMTPC_TLS_STATE_NO_CONNECTION:
            break;
    }
    snprintf(out, outlen, "none (no connection)");
}

/* relay_sched_find_suspended - the entry of dest, or NULL. */
static struct relay_suspended *relay_sched_find_suspended(struct relay *r, const char *dest)
{
    for (size_t i = 0; i < r->sched.n_suspended; i++)
        if (strcmp(r->sched.suspended[i].dest, dest) == 0)
            return &r->sched.suspended[i];
    return NULL;
}

/* relay_sched_drop_suspended - forget entry s (swapped with the last). */
static void relay_sched_drop_suspended(struct relay *r, struct relay_suspended *s)
{
    *s = r->sched.suspended[--r->sched.n_suspended];
    metrics_gauge_set(r->metrics, METRICS_DESTS_SUSPENDED, 0, (double)r->sched.n_suspended);
}

/*
 * relay_sched_dest_max - queue_route.dest_max: 0 while suspended or out of
 * its rate's tokens (rate_per_destination), 1 for the probe, else -1.
 */
static int relay_sched_dest_max(void *data, const char *dest)
{
    struct relay *r = data;
    if (!relay_rate_allow(r->rate, dest, uv_now(r->loop), false))
        return 0; /* picked again once a token is back (scan_interval) */
    if (relay_spread_on(r))
        return relay_spread_dest_max(r, dest); /* every node's suspensions */
    struct relay_suspended *s = relay_sched_find_suspended(r, dest);
    if (s == NULL)
        return -1;
    if (uv_now(r->loop) < s->until)
        return 0;
    if (!s->probing)
        log_debug("destination %s: still suspended, one message as a probe", dest);
    s->probing = true;
    return 1;
}

/*
 * relay_sched_suspend_note - what attempt d tells of its next hop: no SMTP
 * session and no recipient answered for itself: suspended (logged once,
 * when it starts; a failed probe renews it quietly); a session: not.
 */
static void relay_sched_suspend_note(struct relay *r,
                                     const struct relay_delivery *d,
                                     const struct smtpc_result *res)
{
    const char *dest = d->dest;
    bool dead = res->tls_state == SMTPC_TLS_STATE_NO_CONNECTION ||
                res->tls_state == SMTPC_TLS_STATE_REFUSED_BEFORE_EHLO;
    for (size_t i = 0; dead && i < res->n_rcpts; i++)
        dead = res->rcpts[i].status == SMTPC_TEMP;
    struct relay_suspended *s = relay_sched_find_suspended(r, dest);
    if (!dead) {
        if (s != NULL) {
            log_info("destination %s: resumed", dest);
            relay_sched_drop_suspended(r, s);
        }
        return;
    }
    uint64_t wait =
        r->cfg->retry_min_ms < RELAY_SUSPEND_MS ? r->cfg->retry_min_ms : RELAY_SUSPEND_MS;
    if (s != NULL) {
        s->until = uv_now(r->loop) + wait;
        s->probing = false;
        return;
    }
    if (r->sched.n_suspended == RELAY_SUSPEND_MAX)
        return; /* remembered enough: the others are simply tried when due */
    if (r->sched.suspended == NULL) {
        r->sched.suspended = calloc(RELAY_SUSPEND_MAX, sizeof(*r->sched.suspended));
        if (r->sched.suspended == NULL)
            return;
    }
    s = &r->sched.suspended[r->sched.n_suspended++];
    hamr_strlcpy(s->dest, dest, sizeof(s->dest));
    s->until = uv_now(r->loop) + wait;
    s->probing = false;
    /* Counted from here on by relay_delivery_link and _unlink; once, those running now. */
    s->running = 0;
    for (const struct relay_delivery *o = r->sched.deliveries; o != NULL; o = o->next)
        if (strcmp(o->dest, dest) == 0)
            s->running++;
    metrics_inc(r->metrics, METRICS_SUSPENSIONS);
    metrics_gauge_set(r->metrics, METRICS_DESTS_SUSPENDED, 0, (double)r->sched.n_suspended);
    relay_spread_tell(r);
    log_warn("destination %s: suspended, a probe every %" PRIu64 " ms: no SMTP session (%s)", dest,
             wait, res->n_rcpts > 0 && res->rcpts[0].text[0] ? res->rcpts[0].text : "no reply");
}

int relay_sched_dest_state(struct relay *r, const char *dest, uint64_t now)
{
    struct relay_suspended *s = relay_sched_find_suspended(r, dest);
    if (s == NULL)
        return RELAY_DEST_OK;
    if (now < s->until)
        return RELAY_DEST_SUSPENDED;
    /* Due for its probe, unless one is running already. */
    return s->running > 0 ? RELAY_DEST_SUSPENDED : RELAY_DEST_PROBE;
}

void relay_sched_resume_all(struct relay *r)
{
    if (r->sched.n_suspended > 0)
        log_info("every suspended destination resumed (%zu): flush", r->sched.n_suspended);
    free(r->sched.suspended);
    r->sched.suspended = NULL;
    r->sched.n_suspended = 0;
    metrics_gauge_set(r->metrics, METRICS_DESTS_SUSPENDED, 0, 0);
}

/* relay_sched_done - a scheduler proposal (lease or outcome) finished. */
static void relay_sched_release(struct relay *r)
{
    HAMR_ASSERT(r->sched.in_flight > 0);
    r->sched.in_flight--;
    relay_sched_kick(r);
}

static void relay_deliver_mem_cancel(void *data);

/* relay_outcome_done - an Outcome committed or failed. */
static void relay_outcome_done(void *arg, int status, intptr_t result)
{
    struct relay_delivery *d = arg;
    struct relay *r = d->relay;
    if (status != 0) {
        /* The attempt happened but its result is not in the log: the lease
         * will expire and these recipients are tried again (a duplicate window). */
        r->sched.duplicate_windows++;
        log_warn("outcome not committed id=%s lease=%" PRIx64 " error=\"%s\"", d->queue_id,
                 d->lease_id, hamr_strerror(status));
    } else if (result < 0) {
        log_info("outcome ignored id=%s lease=%" PRIx64 " reason=\"%s\"", d->queue_id, d->lease_id,
                 hamr_strerror((int)result));
    }
    for (size_t i = 0; i < d->n_rcpts; i++) {
        free(d->rcpts[i]);
        if (d->rcpt_dsn != NULL)
            free((char *)d->rcpt_dsn[i].orcpt);
    }
    if (d->mem_queued)
        relay_deliver_mem_cancel(d); /* never left waiting for its body once it is gone */
    free(d->rcpt_dsn);
    free(d->envid);
    free(d->rcpts);
    free(d->rcpt_indexes);
    free(d->sender);
    free(d->body);
    body_store_stream_free(d->stream);
    relay_sts_delivery_free(d);
    free(d);
}

/* relay_sched_lease_slot - the bucket of lease_id in the index of running deliveries. */
static size_t relay_sched_lease_slot(uint64_t lease_id)
{
    /* Hashed, not masked: that the low bits of a lease id are a counter is no promise. */
    return (size_t)(hash_fnv1a64(&lease_id, sizeof(lease_id), 0) & (RELAY_SCHED_LEASE_SLOTS - 1));
}

struct relay_delivery *relay_sched_lease_first(struct relay *r, uint64_t lease_id)
{
    return r->sched.by_lease[relay_sched_lease_slot(lease_id)];
}

void relay_delivery_link(struct relay *r, struct relay_delivery *d)
{
    d->prev = NULL;
    d->next = r->sched.deliveries;
    if (r->sched.deliveries)
        r->sched.deliveries->prev = d;
    r->sched.deliveries = d;
    r->sched.n_deliveries++;
    struct relay_delivery **bucket = &r->sched.by_lease[relay_sched_lease_slot(d->lease_id)];
    d->lease_next = *bucket;
    *bucket = d;
    struct relay_suspended *s = relay_sched_find_suspended(r, d->dest);
    if (s != NULL)
        s->running++;
}

void relay_delivery_unlink(struct relay *r, struct relay_delivery *d)
{
    if (d->prev)
        d->prev->next = d->next;
    else
        r->sched.deliveries = d->next;
    if (d->next)
        d->next->prev = d->prev;
    d->prev = d->next = NULL;
    r->sched.n_deliveries--;
    struct relay_delivery **pp = &r->sched.by_lease[relay_sched_lease_slot(d->lease_id)];
    while (*pp != NULL && *pp != d)
        pp = &(*pp)->lease_next;
    if (*pp == d)
        *pp = d->lease_next;
    d->lease_next = NULL;
    struct relay_suspended *s = relay_sched_find_suspended(r, d->dest);
    if (s != NULL && s->running > 0)
        s->running--;
}

/*
 * relay_delivery_rcpt - recipient i's result of delivery d, as an Outcome
 * result: counted, logged, with its TLS text in tls (QUEUE_TLS_MAX octets;
 * carried in the Outcome only from the cluster level that knows the fields).
 */
static void relay_delivery_rcpt(struct relay *r,
                                const struct relay_delivery *d,
                                size_t i,
                                const struct smtpc_result *res,
                                bool tls_fields,
                                uint64_t now,
                                struct queue_entry_result *out,
                                char *tls)
{
    const struct smtpc_rcpt_result *rr = &res->rcpts[i];
    const char *policy_name = relay_sts_policy_name(d);
    out->rcpt_index = d->rcpt_indexes[i];
    out->smtp_code = rr->code;
    out->diagnostic = rr->text;
    out->dsn_passed = rr->status == SMTPC_OK && rr->dsn_passed &&
                      queue_cluster_level(r->queue) >= QUEUE_LEVEL_EXT;
    switch (rr->status) {
        case SMTPC_OK:
            out->status = QUEUE_ENTRY_DELIVERED;
            break;
        case SMTPC_PERM:
            out->status = QUEUE_ENTRY_BOUNCED;
            break;
        case SMTPC_TEMP:
        default:
            /* A temporary failure past the queue lifetime is final (RFC 5321 4.5.4.1). */
            out->status = now >= d->expires_at_ms ? QUEUE_ENTRY_EXPIRED : QUEUE_ENTRY_DEFERRED;
            break;
    }
    static const unsigned outcome_label[] = {
        [QUEUE_ENTRY_DELIVERED] = METRICS_OUTCOME_DELIVERED,
        [QUEUE_ENTRY_DEFERRED] = METRICS_OUTCOME_DEFERRED,
        [QUEUE_ENTRY_BOUNCED] = METRICS_OUTCOME_BOUNCED,
        [QUEUE_ENTRY_EXPIRED] = METRICS_OUTCOME_EXPIRED,
    };
    metrics_inc_label(r->metrics, METRICS_DELIVERIES, outcome_label[out->status]);
    if (out->status == QUEUE_ENTRY_DEFERRED)
        metrics_inc(r->metrics, METRICS_RETRIES);
    static const char *const status_name[] = {
        [QUEUE_ENTRY_DELIVERED] = "delivered",
        [QUEUE_ENTRY_DEFERRED] = "deferred",
        [QUEUE_ENTRY_BOUNCED] = "bounced",
        [QUEUE_ENTRY_EXPIRED] = "expired",
    };
    relay_sched_tls_text(d->policy, res, status_name[out->status], tls, QUEUE_TLS_MAX);
    if (tls_fields) {
        out->tls_policy = policy_name;
        out->tls = tls;
    }
    log_info("delivery id=%s to=<%s> relay=%s tls_policy=%s tls=\"%s\" status=%s code=%u",
             d->queue_id, d->rcpts[i], res->remote[0] ? res->remote : "none", policy_name, tls,
             rr->status == SMTPC_OK     ? "sent"
             : rr->status == SMTPC_PERM ? "bounced"
                                        : "deferred",
             rr->code);
}

/* relay_sched_tls_source - where the TLS policy of attempt d came from (for /metrics). */
static unsigned relay_sched_tls_source(const struct relay *r,
                                       const struct relay_delivery *d,
                                       const struct smtpc_result *res)
{
    if (res->tls_state == SMTPC_TLS_STATE_VERIFIED && strstr(res->tls, "dane") != NULL)
        return METRICS_TLS_SOURCE_DANE; /* DANE before MTA-STS, where the host has TLSA */
    if (d->sts_mode != QUEUE_STS_NONE)
        return METRICS_TLS_SOURCE_MTA_STS;
    if (d->n_rcpts > 0 && config_tls_policy_entry(r->cfg, d->rcpts[0]) != NULL)
        return METRICS_TLS_SOURCE_DOMAIN;
    return METRICS_TLS_SOURCE_DEFAULT;
}

/* relay_delivery_done - the SMTP client finished: propose the Outcome. */
static void relay_delivery_done(void *arg, const struct smtpc_result *res)
{
    struct relay_delivery *d = arg;
    struct relay *r = d->relay;
    relay_delivery_unlink(r, d);
    /* Freed now, not with d: an Outcome in flight may outlive the store. */
    d->stream = body_store_stream_free(d->stream);
    if (d->lapsed && d->body_status != 0) {
        /*
         * Stopped before the final dot: the lease ran out by our clock, so
         * the leader may have leased the recipients again. Nothing was
         * delivered and no Outcome is sent.
         */
        r->spread.stopped++;
        metrics_inc(r->metrics, METRICS_DELIVERIES_STOPPED);
        log_warn("delivery stopped id=%s lease=%" PRIx64 " dest=%s reason=\"lease ran out\"",
                 d->queue_id, d->lease_id, d->dest);
        relay_outcome_done(d, 0, 0);
        return;
    }
    if (d->body_status != 0) {
        /*
         * The stored body failed a read or its SHA-256 at the end, and the
         * client dropped the connection before the final dot: nothing was
         * delivered. As when a whole read found it corrupt before a
         * delivery: no Outcome (the lease expires), the body is marked
         * missing and fetched from a peer, and the message is not leased
         * again until it is here.
         */
        if (d->body_status != HAMR_ESHUTDOWN && d->body_status != HAMR_ENOMEM)
            relay_bodies_corrupt(r, d->queue_id, d->body_status);
        relay_outcome_done(d, 0, 0);
        return;
    }
    relay_sched_suspend_note(r, d, res);
    metrics_inc_label(r->metrics, METRICS_TLS_POLICY_SOURCE, relay_sched_tls_source(r, d, res));

    uint64_t now = relay_cluster_now(r);
    uint64_t backoff =
        queue_sched_backoff(d->max_attempts, r->cfg->retry_min_ms, r->cfg->retry_max_ms);
    struct queue_entry_result *results = calloc(d->n_rcpts, sizeof(*results));
    char(*tls)[QUEUE_TLS_MAX] = calloc(d->n_rcpts, sizeof(*tls));
    if (results == NULL || tls == NULL) {
        free(results);
        free(tls);
        relay_outcome_done(d, HAMR_ENOMEM, 0);
        return;
    }
    bool tls_fields = queue_cluster_level(r->queue) >= QUEUE_LEVEL_TLS;
    for (size_t i = 0; i < d->n_rcpts; i++) {
        relay_delivery_rcpt(r, d, i, res, tls_fields, now, &results[i], tls[i]);
    }
    struct queue_entry_outcome_args oc = {
        .queue_id = d->queue_id,
        .lease_id = d->lease_id,
        .results = results,
        .n_results = d->n_rcpts,
        .next_attempt_ms = now + backoff,
        .reporter = r->cfg->hostname,
        .dsn_expires_at_ms = now + r->cfg->queue_lifetime_ms,
        .remote = res->remote,
        .delay_warning_ms =
            queue_cluster_level(r->queue) >= QUEUE_LEVEL_EXT ? r->cfg->delay_warning_ms : 0,
        .node_id = r->cfg->node_id,
    };
    /* An Outcome is a no-op when applied twice (the lease no longer matches),
     * so through a leader change it is simply proposed again, for as long as
     * the lease could still be current. */
    uint8_t *entry = NULL;
    size_t len = 0;
    int rv = r->stopping ? HAMR_ESHUTDOWN : queue_entry_outcome(&oc, now, NULL, &entry, &len);
    free(results);
    free(tls);
    if (rv == 0)
        rv = proposer_submit(r->prop, entry, len, NULL, relay_lease_ms(r), relay_outcome_done, d);
    if (rv != 0)
        relay_outcome_done(d, rv, 0);
}

/*
 * relay_deliver_send - hand d (its body in memory, or its stream) to the
 * SMTP client pool, once its MTA-STS policy is known (relay_sts_hold may
 * park d on a fetch, which calls this again).
 */
void relay_deliver_send(struct relay *r, struct relay_delivery *d)
{
    if (relay_sts_hold(r, d))
        return;
    d->msg.sender = d->sender;
    d->msg.rcpts = (const char *const *)d->rcpts;
    d->msg.n_rcpts = d->n_rcpts;
    d->msg.body = d->body;
    d->msg.body_len = d->body_len;
    d->msg.source = d->source.read != NULL ? &d->source : NULL;
    d->msg.body_8bit = d->body_8bit;
    d->msg.envid = d->envid;
    d->msg.rcpt_dsn = d->rcpt_dsn;
    struct smtpc_delivery dv = {
        .host = d->nexthop,
        .port = d->port,
        .policy = d->policy,
        .mx_patterns = (const char *const *)d->sts_mx,
        .n_mx_patterns = d->n_sts_mx,
        /* Every node's connections to the next hop within max_per_destination (relay_spread.c). */
        .group = d->dest,
        .group_per_conn = relay_spread_on(r) ? RELAY_LEASES_PER_CONN : 0,
        .group_hold_ms = RELAY_CONN_HOLD_MS,
    };
    /*
     * Outbound AUTH: the credentials of the destination key as written
     * ("[host]:port" for a relayhost or transport, "domain:port" for MX
     * routing). Borrowed from the table for the call only: the pool copies
     * them, so a reload between attempts is safe.
     */
    if (r->sauth != NULL)
        (void)smtpc_auth_lookup(r->sauth, d->dest, &dv.auth_user, &dv.auth_pass);
    int rv = r->stopping ? HAMR_ESHUTDOWN
                         : smtpc_pool_deliver_to(r->pool, &dv, &d->msg, relay_delivery_done, d);
    if (rv != 0) {
        log_warn("delivery not started id=%s error=\"%s\"", d->queue_id, hamr_strerror(rv));
        /* Nothing was attempted: the lease simply expires and the work is picked again. */
        relay_outcome_done(d, 0, 0);
        return;
    }
    relay_delivery_link(r, d);
}

/*
 * relay_deliver_lapsed - has d's lease run out by this node's clock? Then
 * the leader may have leased its recipients again: it must not reach its
 * final dot (relay_spread.c).
 */
bool relay_deliver_lapsed(struct relay_delivery *d)
{
    if (!d->lapsed && uv_now(d->relay->loop) >= d->deadline) {
        d->lapsed = true;
        log_warn("lease running out id=%s lease=%" PRIx64
                 " dest=%s action=stopping before the "
                 "final dot",
                 d->queue_id, d->lease_id, d->dest);
    }
    return d->lapsed;
}

/* relay_deliver_chunk_done - a chunk of the stored body (or its failure) for the client. */
static void relay_deliver_chunk_done(void *arg,
                                     int status,
                                     const uint8_t *data,
                                     size_t n,
                                     bool last)
{
    struct relay_delivery *d = arg;
    if (status == 0 && relay_deliver_lapsed(d))
        status = HAMR_ETIMEDOUT; /* the lease ran out meanwhile: no final dot */
    if (status != 0)
        d->body_status = status;
    d->source_cb(d->source_arg, status, data, n, last);
}

/* relay_deliver_source_read - the client wants the next chunk: read it from the store. */
static int relay_deliver_source_read(void *data, smtpc_source_cb cb, void *cb_arg)
{
    struct relay_delivery *d = data;
    d->source_cb = cb;
    d->source_arg = cb_arg;
    if (relay_deliver_lapsed(d)) {
        d->body_status = HAMR_ETIMEDOUT;
        return HAMR_ETIMEDOUT;
    }
    int rv = body_store_stream_next(d->stream, relay_deliver_chunk_done, d);
    if (rv != 0)
        d->body_status = rv;
    /* Asynchronous processing continues in relay_deliver_chunk_done. */
    return rv;
}

/*
 * relay_deliver_withdrawn - smtpc_source.withdrawn: a delivery still
 * waiting in the pool for a connection when its lease ran out never takes
 * one (a cut-off holder would else open a connection per delivery, each to
 * stop at DATA, and the leader no longer counts them).
 */
static bool relay_deliver_withdrawn(void *data)
{
    struct relay_delivery *d = data;
    if (!relay_deliver_lapsed(d))
        return false;
    d->body_status = HAMR_ETIMEDOUT; /* relay_delivery_done: stopped, no Outcome */
    return true;
}

/* relay_deliver_source_cancel - the attempt ended while a chunk was read: drop the stream. */
static void relay_deliver_source_cancel(void *data)
{
    struct relay_delivery *d = data;
    d->stream = body_store_stream_free(d->stream); /* its read is never reported */
}

/*
 * A body still in memory (it arrived less than a second ago, or the node
 * keeps no store) goes to the client through a source too, as one chunk
 * handed over on the loop's next turn (a source answers later, never
 * inside read): so it is asked for only once the next hop has said 354,
 * and a delivery whose lease ran out meanwhile stops before its final dot
 * like one read from the store.
 */

/* relay_deliver_mem_cb - hand each waiting delivery its body. */
static void relay_deliver_mem_cb(uv_timer_t *t)
{
    struct relay *r = t->data;
    struct relay_delivery *d = r->sched.mem_waiting;
    r->sched.mem_waiting = NULL;
    while (d != NULL) {
        struct relay_delivery *next = d->mem_next;
        d->mem_next = NULL;
        d->mem_queued = false;
        relay_deliver_chunk_done(d, 0, d->body, d->body_len, true);
        d = next;
    }
}

/* relay_deliver_mem_read - the client wants the body: on the next turn, unless the lease ran out.
 */
static int relay_deliver_mem_read(void *data, smtpc_source_cb cb, void *cb_arg)
{
    struct relay_delivery *d = data;
    struct relay *r = d->relay;
    d->source_cb = cb;
    d->source_arg = cb_arg;
    if (relay_deliver_lapsed(d)) {
        d->body_status = HAMR_ETIMEDOUT;
        return HAMR_ETIMEDOUT;
    }
    d->mem_next = r->sched.mem_waiting;
    r->sched.mem_waiting = d;
    d->mem_queued = true;
    if (!uv_is_active((uv_handle_t *)&r->sched.mem_timer))
        uv_timer_start(&r->sched.mem_timer, relay_deliver_mem_cb, 0, 0);
    return 0;
}

/* relay_deliver_mem_cancel - the attempt ended while its body waited: take it off the list. */
static void relay_deliver_mem_cancel(void *data)
{
    struct relay_delivery *d = data;
    struct relay_delivery **pp = &d->relay->sched.mem_waiting;
    while (*pp != NULL && *pp != d)
        pp = &(*pp)->mem_next;
    if (*pp == d)
        *pp = d->mem_next;
    d->mem_next = NULL;
    d->mem_queued = false;
}

/*
 * relay_deliver_ext - the envelope extensions of m into d, for its leased
 * recipients (d->rcpt_indexes): 0 or HAMR_ENOMEM.
 */
static int relay_deliver_ext(struct relay_delivery *d, const struct queue_msg *m)
{
    d->msg.smtputf8 = m->smtputf8;
    d->msg.requiretls = m->requiretls;
    if (m->ext == NULL)
        return 0;
    d->msg.ret = m->ext->ret;
    if (m->ext->envid != NULL && (d->envid = strdup(m->ext->envid)) == NULL)
        return HAMR_ENOMEM;
    d->rcpt_dsn = calloc(d->n_rcpts, sizeof(*d->rcpt_dsn));
    if (d->rcpt_dsn == NULL)
        return HAMR_ENOMEM;
    for (size_t i = 0; i < d->n_rcpts; i++) {
        uint32_t qi = d->rcpt_indexes[i];
        d->rcpt_dsn[i].notify = m->ext->notify[qi];
        if (m->ext->orcpt[qi] != NULL && (d->rcpt_dsn[i].orcpt = strdup(m->ext->orcpt[qi])) == NULL)
            return HAMR_ENOMEM;
    }
    return 0;
}

/*
 * relay_deliver_start - deliver the recipients this node's lease got. A
 * stored body is streamed from the store to the SMTP client, a chunk at a
 * time, read in the thread pool (RELAY_DELIVER_CHUNK: one chunk of body and
 * one of wire form per delivery are in memory, whatever its size); its
 * SHA-256 is checked with the last chunk, before the final dot. A corrupt
 * one is fetched again from a peer and the lease left to expire
 * (relay_delivery_done).
 */
void relay_deliver_start(struct relay *r,
                         const struct queue_msg *m,
                         uint64_t lease_id,
                         const char *dest,
                         uint64_t deadline)
{
    struct relay_delivery *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return;
    d->relay = r;
    d->deadline = deadline;
    hamr_strlcpy(d->queue_id, m->id, sizeof(d->queue_id));
    hamr_strlcpy(d->dest, dest, sizeof(d->dest));
    if (relay_dest_split(dest, d->nexthop, sizeof(d->nexthop), &d->port) != 0) {
        log_error("bad destination id=%s dest=%s", m->id, dest);
        goto fail;
    }
    d->lease_id = lease_id;
    d->expires_at_ms = m->expires_at_ms;
    d->rcpt_indexes = calloc(m->n_rcpts, sizeof(*d->rcpt_indexes));
    d->rcpts = calloc(m->n_rcpts, sizeof(*d->rcpts));
    d->sender = strdup(m->sender);
    if (d->rcpt_indexes == NULL || d->rcpts == NULL || d->sender == NULL)
        goto fail;
    d->body_8bit = m->body_8bit;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *qr = &m->rcpts[i];
        if (qr->state != QUEUE_RCPT_LEASED || queue_rcpt_lease(qr)->id != lease_id)
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
    if (relay_deliver_ext(d, m) != 0)
        goto fail;
    /* MTA-STS may raise it (relay_sts_hold); the outcome reports what it ran under. */
    d->policy = relay_sched_policy(r, d->rcpts, d->n_rcpts);
    if (m->tls_optional) {
        /*
         * "TLS-Required: No" (RFC 8689 5): the sender asks that no TLS
         * policy stop this message. It goes as under "may": STARTTLS when
         * offered, no DANE, no MTA-STS, plaintext when there is no TLS.
         */
        d->policy = SMTPC_TLS_MAY;
        d->sts_checked = true;
    }
    if (queue_msg_body(m) != NULL || m->body_len == 0) {
        /* In memory (a queue without a store), or empty. */
        d->body = malloc(m->body_len ? m->body_len : 1);
        if (d->body == NULL)
            goto fail;
        if (m->body_len > 0)
            memcpy(d->body, queue_msg_body(m), m->body_len);
        d->body_len = m->body_len;
        d->source = (struct smtpc_source){.data = d,
                                          .read = relay_deliver_mem_read,
                                          .cancel = relay_deliver_mem_cancel,
                                          .withdrawn = relay_deliver_withdrawn};
        relay_deliver_send(r, d);
        return;
    }
    if (!m->body_stored) {
        relay_bodies_want(r, m);
        goto fail;
    }
    if (body_store_stream_new(r->store, m->body_loc, m->id, m->body_len, m->body_sha256,
                              RELAY_DELIVER_CHUNK, &d->stream) != 0)
        goto fail;
    d->body_len = m->body_len;
    d->source = (struct smtpc_source){.data = d,
                                      .read = relay_deliver_source_read,
                                      .cancel = relay_deliver_source_cancel,
                                      .withdrawn = relay_deliver_withdrawn};
    relay_deliver_send(r, d);
    return;
fail:
    /* Nothing was attempted: the lease simply expires and the work is picked again. */
    relay_outcome_done(d, 0, 0);
}

struct relay_lease_req {
    struct relay *relay;
    uint64_t node; /* the holder */
    size_t n;
    struct queue_work *work;
};

/*
 * relay_lease_done - the Lease committed (or not). Its holder, this node or
 * another, started the deliveries when the entry applied (the queue's lease
 * hook, relay_spread.c).
 */
static void relay_lease_done(void *arg, int status, intptr_t result)
{
    struct relay_lease_req *lr = arg;
    struct relay *r = lr->relay;
    (void)result;
    relay_sched_release(r);
    if (status != 0)
        log_warn("lease not committed node=%" PRIu64 " error=\"%s\"", lr->node,
                 hamr_strerror(status));
    queue_work_free(lr->work, lr->n);
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
    struct queue_entry_result *results = calloc(w->n_rcpts, sizeof(*results));
    if (results == NULL)
        return;
    bool expire = w->kind == QUEUE_WORK_EXPIRE;
    for (size_t i = 0; i < w->n_rcpts; i++) {
        results[i].rcpt_index = w->rcpt_indexes[i];
        results[i].status = expire ? QUEUE_ENTRY_EXPIRED : QUEUE_ENTRY_BOUNCED;
        results[i].diagnostic = expire ? "delivery time expired (queue_lifetime)"
                                       : "5.4.4 no route to the recipient's domain";
    }
    struct queue_entry_outcome_args oc = {
        .queue_id = w->queue_id,
        .results = results,
        .n_results = w->n_rcpts,
        .reporter = r->cfg->hostname,
        .dsn_expires_at_ms = now + r->cfg->queue_lifetime_ms,
    };
    uint8_t *entry;
    size_t len;
    int rv = queue_entry_outcome(&oc, now, consensus_malloc, &entry, &len);
    free(results);
    if (rv != 0)
        return;
    rv = proposer_append_packed(r->prop, entry, len, r->cfg->proposal_timeout_ms, relay_final_done,
                                r);
    if (rv == 0) {
        r->sched.in_flight++;
        log_info("%s id=%s rcpts=%zu", expire ? "expired" : "noroute", w->queue_id, w->n_rcpts);
    }
}

/*
 * relay_sched_kick - run the scheduler again soon (next loop iteration):
 * after new mail or an outcome commits, and after a lease round, instead of
 * waiting for the next scan_interval. Only one round runs at a time
 * (sched_in_flight), so under load rounds follow each other as fast as leases
 * commit, and the timer covers retries that fall due.
 *
 * A pick from the queue's domain index costs what it hands out (tens of
 * microseconds for a full round, bench/README.md "schedbench"), so under a
 * backlog of any size the next round starts as soon as the last lease
 * commits or an outcome applies. Without the index (it could not grow) a
 * pick walks every due message, and running one per commit would take the
 * loop from SMTP and raft. So after a pick that took D, a kick waits until
 * RELAY_SCHED_DUTY * D has passed since it began (the scheduler gets at
 * most 1/RELAY_SCHED_DUTY of the loop), but never longer than
 * scan_interval: the periodic tick picks then anyway. Lease entries are not
 * what this protects: at most one round is in flight (in_flight).
 */
void relay_sched_kick(struct relay *r)
{
    if (r->stopping || !consensus_is_ready(r->cons) ||
        uv_is_active((uv_handle_t *)&r->sched.kick_timer))
        return;
    uint64_t now = uv_now(r->loop);
    uint64_t wait = r->sched.rest_until > now ? r->sched.rest_until - now : 0;
    uv_timer_start(&r->sched.kick_timer, relay_sched_tick, wait, 0);
}

/*
 * relay_sched_lease - one Lease entry handing the n deliveries of dw (taken)
 * to node (boot); they start when it applies on that node.
 */
static void relay_sched_lease(struct relay *r,
                              struct queue_work *dw,
                              size_t n,
                              uint64_t node,
                              const char *boot,
                              uint64_t now)
{
    struct relay_lease_req *lr = calloc(1, sizeof(*lr));
    struct queue_entry_lease_item *items = calloc(n ? n : 1, sizeof(*items));
    if (lr == NULL || items == NULL) {
        free(lr);
        free(items);
        queue_work_free(dw, n);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        items[k].queue_id = dw[k].queue_id;
        items[k].rcpt_indexes = dw[k].rcpt_indexes;
        items[k].n_rcpts = dw[k].n_rcpts;
        items[k].lease_id = ++r->sched.lease_counter;
        items[k].destination = dw[k].dest;
    }
    struct queue_entry_lease_args lease = {
        .node_id = node,
        .term = consensus_term(r->cons),
        .expires_at_ms = now + relay_lease_ms(r),
        .boot_id = boot,
        .items = items,
        .n_items = n,
    };
    lr->relay = r;
    lr->node = node;
    lr->n = n;
    lr->work = dw;
    uint8_t *entry;
    size_t len;
    int rv = queue_entry_lease(&lease, now, consensus_malloc, &entry, &len);
    free(items);
    if (rv == 0)
        rv = proposer_append_packed(r->prop, entry, len, r->cfg->proposal_timeout_ms,
                                    relay_lease_done, lr);
    if (rv != 0) {
        queue_work_free(dw, n);
        free(lr);
        return;
    }
    r->sched.in_flight++;
}

/*
 * relay_sched_assign - the deliveries among work[0..n) (moved out) to
 * their holders, one Lease entry each: below QUEUE_LEVEL_SPREAD all to this
 * node, from it to the node relay_spread_holder chooses; a delivery no node
 * can take now is left for a later round.
 */
static void relay_sched_assign(struct relay *r, struct queue_work *work, int n, uint64_t now)
{
    size_t n_holders = 0;
    uint64_t holders[CONSENSUS_MAX_MEMBERS];
    const char *boots[CONSENSUS_MAX_MEMBERS];
    struct queue_work *dw[CONSENSUS_MAX_MEMBERS] = {NULL};
    size_t dn[CONSENSUS_MAX_MEMBERS] = {0};
    bool spread = relay_spread_on(r);
    for (int i = 0; i < n; i++) {
        if (work[i].kind != QUEUE_WORK_DELIVER)
            continue;
        uint64_t node = r->cfg->node_id;
        const char *boot = r->boot_id;
        if (!relay_rate_allow(r->rate, work[i].dest, uv_now(r->loop), false))
            continue; /* rate_per_destination: this second's messages are out */
        if (spread) {
            struct relay_member *mb = relay_spread_holder(r, work[i].dest);
            if (mb == NULL)
                continue;
            node = mb->id;
            boot = mb->boot_id;
        }
        (void)relay_rate_allow(r->rate, work[i].dest, uv_now(r->loop), true);
        size_t h = 0;
        while (h < n_holders && holders[h] != node)
            h++;
        if (h == n_holders) {
            dw[h] = calloc((size_t)n, sizeof(**dw));
            if (dw[h] == NULL)
                continue;
            holders[h] = node;
            boots[h] = boot;
            n_holders++;
        }
        dw[h][dn[h]++] = work[i]; /* move: the rcpt array now belongs to dw */
        work[i].rcpt_indexes = NULL;
        work[i].n_rcpts = 0;
    }
    queue_work_free(work, (size_t)n);
    for (size_t h = 0; h < n_holders; h++)
        relay_sched_lease(r, dw[h], dn[h], holders[h], boots[h], now);
}

/* relay_sched_tick - leader: lease due work, expire what is too old. */
void relay_sched_tick(uv_timer_t *t)
{
    struct relay *r = t->data;
    if (t == &r->sched.timer)
        proposer_expire(r->prop);
    if (r->stopping || r->sched.in_flight > 0 || !consensus_is_ready(r->cons))
        return;
    /* From QUEUE_LEVEL_SPREAD: not before the cluster time is the voters' (cluster_clock.h). */
    if (!relay_spread_ready(r))
        return;

    uint64_t now = relay_cluster_now(r);
    struct queue_sched_limits lim = {
        .max_per_dest = r->cfg->smtpc.max_conns_per_dest * RELAY_LEASES_PER_CONN,
        .max_items = RELAY_SCHED_MAX_ITEMS,
        .self_node = r->cfg->node_id,
        .self_boot_id = r->boot_id,
    };
    struct queue_route route = {
        .data = r, .dest = relay_route_dest, .dest_max = relay_sched_dest_max};
    if (relay_spread_on(r)) {
        /* Every holder's leases per next hop: its share of the connections. */
        relay_spread_count_reset(r);
        route.leased = relay_spread_counted;
    }
    struct queue_work *work = NULL;
    uint64_t started = uv_hrtime();
    int n = queue_sched_pick(r->queue, now, &lim, &route, &work);
    if (route.leased != NULL)
        relay_spread_count_done(r);
    uint64_t rest_ms = RELAY_SCHED_DUTY * ((uv_hrtime() - started) / 1000000);
    if (rest_ms > r->cfg->scan_interval_ms)
        rest_ms = r->cfg->scan_interval_ms;
    r->sched.rest_until = uv_now(r->loop) + rest_ms;
    if (n <= 0) {
        queue_work_free(work, 0);
        if (n < 0)
            log_warn("scheduler error=\"%s\"", hamr_strerror(n));
        return;
    }

    /* Split: final outcomes now, deliveries under a lease per holder. The
     * pick gives no delivery of a message whose body this node lacks. */
    for (int i = 0; i < n; i++)
        if (work[i].kind == QUEUE_WORK_EXPIRE || work[i].kind == QUEUE_WORK_NOROUTE)
            relay_sched_final(r, &work[i], now);
    relay_sched_assign(r, work, n, now);
}
