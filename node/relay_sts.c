/*
 * relay_sts.c - MTA-STS (RFC 8461) in delivery, on the node that delivers
 * (the leader below cluster level 6, any node from it).
 *
 * A delivery to a domain routed by its MX records (no [transport], no
 * relayhost) and without a [tls_policy] entry of its own asks here first
 * (relay_sts_hold). The policy comes from the replicated queue state
 * (queue_sts_find): every fetched policy is written to the raft log as a
 * StsPolicy entry, so every node holds it and a new leader enforces what
 * the old one learned; a cache in the leader's memory would forget every
 * policy at each failover, and the first delivery after it would go out
 * unprotected (a downgrade window an attacker can provoke). A follower
 * that delivers (cluster level 6) forwards its entry to the leader
 * (proposer_submit; node/peer_policy.h lets it through).
 *
 * - A policy still valid (fetched less than max_age ago) applies at once;
 *   older than [mta_sts] refresh, its TXT id is checked in the background
 *   (sts_fetch_if_changed) and a new or refreshed policy written to the
 *   log. A failed refresh keeps it (RFC 8461 5.1).
 * - No valid policy: the delivery waits for a fetch (one per domain at a
 *   time, the others wait with it; bounded by [mta_sts] timeout). What it
 *   brings applies to every waiting delivery at once, before it commits.
 * - No policy (no TXT record), or a fetch that failed: delivered as the
 *   default TLS policy says, and the domain is not asked again for
 *   RELAY_STS_NONE_MS (RELAY_STS_FAILED_MS after a failure): the leader's
 *   own memory, a small direct-mapped table.
 *
 * Applying: enforce -> the delivery runs under verify, and only MX hosts
 * that match the policy's patterns are used (the resolver's filter);
 * testing -> delivered as usual, the policy named in the log and in
 * hamrctl show; none -> as if there were none.
 *
 * Owns: the sts fetcher, the fetches in flight and the deliveries parked
 * on them (released by the fetch's callback, or by relay_sts_close).
 * May call: net/mta_sts, the queue (read, entry packing), the proposer,
 * relay_deliver_send.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "consensus/consensus.h"
#include "net/mta_sts.h"
#include "net/smtpc.h"
#include "node/clock.h"
#include "node/config.h"
#include "node/proposer.h"
#include "node/relay_internal.h"

/* A domain without a policy (no STS TXT record) is asked again after this. */
#define RELAY_STS_NONE_MS (60 * 60 * 1000)
/* A domain whose policy could not be fetched: delivered without, asked again after this. */
#define RELAY_STS_FAILED_MS (5 * 60 * 1000)
/* Fetches at once; a delivery finding them all busy goes out without waiting. */
#define RELAY_STS_FETCHES_MAX 256

/* relay_sts_fetch - one fetch in flight and the deliveries waiting for it. */
struct relay_sts_fetch {
    struct relay_sts_fetch *next;
    struct relay *relay;
    char domain[STS_HOST_MAX + 1];
    struct sts_fetch *handle;
    struct relay_delivery *waiting; /* through d->sts_next */
};

/* relay_sts_hash - FNV-1a of a domain, for the table of domains without a policy. */
static uint64_t relay_sts_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* relay_sts_quiet - domain was found without a policy, or failed, and is not asked again yet. */
static bool relay_sts_quiet(const struct relay *r, const char *domain, uint64_t now)
{
    const struct relay_sts_none *n =
        &r->sts.none[relay_sts_hash(domain) & (RELAY_STS_NONE_SLOTS - 1)];
    return n->until > now && strcmp(n->domain, domain) == 0;
}

/* relay_sts_remember - domain is not asked again before now + ms (its slot overwritten). */
static void relay_sts_remember(struct relay *r, const char *domain, uint64_t now, uint64_t ms)
{
    struct relay_sts_none *n = &r->sts.none[relay_sts_hash(domain) & (RELAY_STS_NONE_SLOTS - 1)];
    hamr_strlcpy(n->domain, domain, sizeof(n->domain));
    n->until = now + ms;
}

/*
 * relay_sts_domain - the domain whose policy applies to d, or NULL: an MX
 * route of the recipients' own domain (the next hop is that domain, bare),
 * with no [tls_policy] entry, which takes precedence.
 */
static const char *relay_sts_domain(const struct relay *r, const struct relay_delivery *d)
{
    if (d->nexthop[0] == '[' || d->n_rcpts == 0)
        return NULL;
    const char *at = strrchr(d->rcpts[0], '@');
    if (at == NULL || strcasecmp(at + 1, d->nexthop) != 0)
        return NULL; /* a relayhost or transport looked up as MX: not the domain's policy */
    if (config_tls_policy_entry(r->cfg, d->rcpts[0]) != NULL)
        return NULL;
    return d->nexthop;
}

/* relay_sts_apply - d runs under the policy: mode, and for enforce its MX patterns and verify. */
static void relay_sts_apply(struct relay_delivery *d,
                            enum queue_sts_mode mode,
                            const char *const *mx,
                            size_t n_mx)
{
    d->sts_mode = mode;
    if (mode != QUEUE_STS_ENFORCE)
        return;
    if (d->policy < SMTPC_TLS_VERIFY)
        d->policy = SMTPC_TLS_VERIFY;
    d->sts_mx = calloc(n_mx, sizeof(*d->sts_mx));
    if (d->sts_mx == NULL) {
        /* No patterns to filter with: no MX host may be used, so the delivery defers. */
        d->n_sts_mx = 0;
        return;
    }
    for (size_t i = 0; i < n_mx; i++) {
        d->sts_mx[i] = strdup(mx[i]);
        if (d->sts_mx[i] == NULL)
            break;
        d->n_sts_mx++;
    }
}

/* relay_sts_proposed - a StsPolicy entry committed or failed: logged only. */
static void relay_sts_proposed(void *arg, int status, intptr_t result)
{
    (void)result;
    char *domain = arg;
    if (status != 0)
        log_warn("mta-sts policy not committed domain=%s error=\"%s\"", domain,
                 hamr_strerror(status));
    free(domain);
}

/* relay_sts_propose - write what a fetch brought (or refreshed) to the log, once the level allows.
 */
static void relay_sts_propose(struct relay *r,
                              const char *domain,
                              const char *id,
                              enum queue_sts_mode mode,
                              const char *const *mx,
                              size_t n_mx,
                              uint32_t max_age,
                              uint64_t now)
{
    /* Below QUEUE_LEVEL_STS an older voter could not apply it; below
     * QUEUE_LEVEL_SPREAD only the leader delivers, so only it writes one. In
     * either case the policy serves this delivery only. */
    bool leader = consensus_is_ready(r->cons);
    if (queue_cluster_level(r->queue) < QUEUE_LEVEL_STS ||
        (!leader && queue_cluster_level(r->queue) < QUEUE_LEVEL_SPREAD))
        return;
    struct queue_entry_sts_args a = {
        .domain = domain,
        .id = id,
        .mode = mode,
        .mx = mx,
        .n_mx = n_mx,
        .max_age_s = max_age,
        .fetched_at_ms = now,
    };
    uint8_t *entry = NULL;
    size_t len = 0;
    char *arg = strdup(domain);
    if (arg == NULL ||
        queue_entry_sts(&a, now, leader ? consensus_malloc : NULL, &entry, &len) != 0) {
        free(arg);
        return;
    }
    /* A follower forwards it to the leader (a policy written twice is harmless:
     * the second write refreshes the first). */
    int rv = leader ? proposer_append_packed(r->prop, entry, len, r->cfg->proposal_timeout_ms,
                                             relay_sts_proposed, arg)
                    : proposer_submit(r->prop, entry, len, NULL, r->cfg->proposal_timeout_ms,
                                      relay_sts_proposed, arg);
    if (rv != 0)
        free(arg);
}

/* relay_sts_unlink - take f off the list of fetches in flight. */
static void relay_sts_unlink(struct relay *r, struct relay_sts_fetch *f)
{
    for (struct relay_sts_fetch **pp = &r->sts.fetches; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == f) {
            *pp = f->next;
            r->sts.n_fetches--;
            return;
        }
    }
}

/* relay_sts_fetched - a fetch ended: write what it learned, then send what waited for it. */
static void relay_sts_fetched(void *arg, const struct sts_result *res)
{
    struct relay_sts_fetch *f = arg;
    struct relay *r = f->relay;
    relay_sts_unlink(r, f);
    uint64_t now = relay_cluster_now(r);
    const struct queue_sts *held = queue_sts_find(r->queue, f->domain);
    bool held_valid = held != NULL && now < held->expires_at_ms;
    const char *mx[STS_MX_MAX];
    enum queue_sts_mode mode = QUEUE_STS_NONE;
    const char *const *use_mx = NULL;
    size_t n_mx = 0;
    switch (res->status) {
        case STS_OK:
            for (size_t i = 0; i < res->policy.n_mx; i++)
                mx[i] = res->policy.mx[i];
            mode = (enum queue_sts_mode)res->policy.mode;
            use_mx = mx;
            n_mx = res->policy.n_mx;
            log_info("mta-sts policy domain=%s id=%s mode=%s mx=%zu max_age=%" PRIu32, f->domain,
                     res->id, sts_mode_name(res->policy.mode), res->policy.n_mx,
                     res->policy.max_age);
            relay_sts_propose(r, f->domain, res->id, mode, mx, n_mx, res->policy.max_age, now);
            break;
        case STS_UNCHANGED:
            if (held != NULL) {
                mode = held->mode;
                use_mx = held->mx;
                n_mx = held->n_mx;
                relay_sts_propose(r, f->domain, held->id, held->mode, held->mx, held->n_mx,
                                  held->max_age_s, now);
            }
            break;
        case STS_NONE:
            /* RFC 8461 5.1: a policy whose record went away is used until it expires. */
            if (!held_valid)
                relay_sts_remember(r, f->domain, now, RELAY_STS_NONE_MS);
            break;
        case STS_TEMPFAIL:
        case STS_FAILED:
        default:
            if (res->err != HAMR_ESHUTDOWN) {
                log_warn("mta-sts fetch failed domain=%s status=%s why=\"%s\"%s", f->domain,
                         sts_status_name(res->status), res->why,
                         held_valid ? " (the cached policy stays)" : "");
                if (!held_valid)
                    relay_sts_remember(r, f->domain, now, RELAY_STS_FAILED_MS);
            }
            break;
    }
    if (res->status != STS_OK && res->status != STS_UNCHANGED && held_valid) {
        mode = held->mode;
        use_mx = held->mx;
        n_mx = held->n_mx;
    }
    while (f->waiting != NULL) {
        struct relay_delivery *d = f->waiting;
        f->waiting = d->sts_next;
        d->sts_next = NULL;
        if (mode != QUEUE_STS_NONE)
            relay_sts_apply(d, mode, use_mx, n_mx);
        relay_deliver_send(r, d);
    }
    free(f);
}

/* relay_sts_fetch_start - a fetch for domain (known_id: only if it changed), or NULL. */
static struct relay_sts_fetch *relay_sts_fetch_start(struct relay *r,
                                                     const char *domain,
                                                     const char *known_id)
{
    for (struct relay_sts_fetch *f = r->sts.fetches; f != NULL; f = f->next)
        if (strcmp(f->domain, domain) == 0)
            return f;
    if (r->sts.n_fetches >= RELAY_STS_FETCHES_MAX)
        return NULL;
    struct relay_sts_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->relay = r;
    hamr_strlcpy(f->domain, domain, sizeof(f->domain));
    int rv =
        sts_fetch_if_changed(r->sts.fetcher, domain, known_id, relay_sts_fetched, f, &f->handle);
    if (rv != 0) {
        log_warn("mta-sts fetch not started domain=%s error=\"%s\"", domain, hamr_strerror(rv));
        free(f);
        return NULL;
    }
    f->next = r->sts.fetches;
    r->sts.fetches = f;
    r->sts.n_fetches++;
    return f;
}

/* relay_sts_hold - d's policy: applied now (false: send d), or d waits for a fetch (true). */
bool relay_sts_hold(struct relay *r, struct relay_delivery *d)
{
    if (d->sts_checked || r->sts.fetcher == NULL || r->stopping)
        return false;
    d->sts_checked = true;
    const char *domain = relay_sts_domain(r, d);
    if (domain == NULL)
        return false;
    uint64_t now = relay_cluster_now(r);
    const struct queue_sts *p = queue_sts_find(r->queue, domain);
    if (p != NULL && now < p->expires_at_ms) {
        if (p->mode != QUEUE_STS_NONE)
            relay_sts_apply(d, p->mode, p->mx, p->n_mx);
        if (now - p->fetched_at_ms >= r->cfg->sts_refresh_ms && !relay_sts_quiet(r, domain, now))
            relay_sts_fetch_start(r, domain, p->id); /* in the background: nobody waits */
        return false;
    }
    if (relay_sts_quiet(r, domain, now))
        return false;
    struct relay_sts_fetch *f = relay_sts_fetch_start(r, domain, NULL);
    if (f == NULL)
        return false;
    d->sts_next = f->waiting;
    f->waiting = d;
    return true;
}

/* relay_sts_policy_name - the policy an attempt of d ran under, as hamrctl show names it. */
const char *relay_sts_policy_name(const struct relay_delivery *d)
{
    switch (d->sts_mode) {
        case QUEUE_STS_ENFORCE:
            /* DANE where the hosts have TLSA records, MTA-STS where not (smtpc_conn_verify). */
            return d->policy == SMTPC_TLS_DANE        ? "dane+mta-sts"
                   : d->policy == SMTPC_TLS_DANE_ONLY ? "dane-only"
                                                      : "mta-sts";
        case QUEUE_STS_TESTING:
            return d->policy == SMTPC_TLS_MAY ? "may (mta-sts testing)"
                                              : smtpc_tls_policy_name(d->policy);
        case QUEUE_STS_NONE:
        default:
            return smtpc_tls_policy_name(d->policy);
    }
}

/* relay_sts_delivery_free - what relay_sts_apply gave d. */
void relay_sts_delivery_free(struct relay_delivery *d)
{
    for (size_t i = 0; i < d->n_sts_mx; i++)
        free(d->sts_mx[i]);
    free(d->sts_mx);
    d->sts_mx = NULL;
    d->n_sts_mx = 0;
}

/* relay_sts_start - the fetcher, on the resolver (after relay_start_delivery). */
int relay_sts_start(struct relay *r, char *err, size_t errlen)
{
    if (!r->cfg->sts_enabled)
        return 0;
    int rv = sts_new(r->dns, NULL, &r->cfg->sts, &r->sts.fetcher);
    if (rv != 0) {
        snprintf(err, errlen, "MTA-STS: %s", hamr_strerror(rv));
        return rv;
    }
    return 0;
}

/*
 * relay_sts_close - end the fetcher: every fetch is called back (shutdown)
 * and its parked deliveries sent, which while stopping ends them unsent.
 */
void relay_sts_close(struct relay *r)
{
    struct sts *s = r->sts.fetcher;
    r->sts.fetcher = NULL;
    sts_free(s);
}
