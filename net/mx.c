/*
 * mx.c - the smtpc_resolver of net/mx.h: next hops to ordered targets by
 * the MX routing of RFC 5321 section 5.1 (and RFC 7505's null MX), on the
 * lookups of net/dns.
 *
 * Happy path, a bare domain: mx_resolve checks the next hop and asks for
 * its MX -> mx_route_after_mx sorts the records (equal preferences in a
 * random order), drops duplicates and every host from the first self name
 * on, keeps MX_HOSTS_MAX and asks each host's A and AAAA at once ->
 * mx_route_after_addr takes each answer (and marks a host whose address
 * is ours); the last one -> mx_route_finish cuts the list at the first
 * self host, orders each host's addresses by address_preference, makes at
 * most address_limit targets and calls back. "[name]" starts at the host
 * lookups with the name as its one host; a literal is decided at once.
 *
 * What is decided inside mx_resolve (a literal, "[name]" that is one of
 * self_names) waits on the ready list for a zero timer (mx_dispatch_cb),
 * so that the callback never runs inside resolve (the contract of
 * smtpc_resolver); the rest is called back from the DNS callbacks.
 *
 * Failure modes: the MX lookup's NXDOMAIN (PERM 5.4.4), TEMPFAIL (TEMP
 * 4.4.3) or null MX (PERM 5.1.10); a loop (PERM 5.4.6); no address for
 * any host kept (TEMP 4.4.3 if a lookup of one of them failed for now,
 * else PERM 5.4.4); out of memory after resolve returned (TEMP 4.3.0);
 * mx_free (TEMP 4.4.3 "shutdown"). dns_query failing inside mx_resolve
 * makes resolve fail with its code; failing later (an MX host name that
 * net/dns refuses, a full heap) counts as that host's lookup failing.
 *
 * Loops: as Postfix (smtp_addr.c), a self host ends the MX list at its
 * preference, and a list with nothing before it is a loop. As in Postfix,
 * only MX lookups (the implicit MX too) are checked: "[name]" and a
 * literal are where the operator (or the sender) said to go, and the
 * address of this node is a common one there (a content filter on
 * [127.0.0.1]:10025, another port of this host); a real loop of that kind
 * ends at the hop count. A host whose address lookups fail for now
 * cannot be told to be self: it is skipped, as any host without address.
 *
 * Owns struct mx, its dispatch timer, the routes in flight, their DNS
 * queries and targets. Thread: the loop's only.
 * Errors: HAMR_EINVAL (next hop, config), HAMR_ENOMEM, HAMR_ESHUTDOWN,
 * and what dns_query returns.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <uv.h>

#include "util/common.h"
#include "util/dlist.h"
#include "util/err.h"
#include "util/log.h"
#include "net/dns.h"
#include "net/mta_sts.h"
#include "net/mx.h"
#include "net/smtpc.h"

/*
 * MX hosts looked up per route at most: the best ten are more than a
 * delivery attempt tries (address_limit), and a zone cannot make us send
 * more queries than that for one next hop.
 */
#define MX_HOSTS_MAX 10
/* Addresses kept per host and record type (all of them are checked against self_addrs). */
#define MX_HOST_ADDRS_MAX 16
#define MX_ADDRESS_LIMIT_DEFAULT 5
#define MX_LITERAL_MAX 64 /* "[IPv6:...]" with room to spare */

struct mx_route;
struct mx_host;

/* mx_lookup - one address query (A or AAAA), or the TLSA query, of one host. */
struct mx_lookup {
    struct mx_host *h;
    struct dns_query *q; /* while in flight */
};

/* mx_tlsa_state - what the TLSA lookup of a host found (DANE only). */
enum mx_tlsa_state {
    MX_TLSA_NONE = 0,     /* not asked (DANE off, insecure MX or address), or no secure record */
    MX_TLSA_SECURE = 1,   /* DNSSEC-validated TLSA records: the host is DANE-required */
    MX_TLSA_TEMPFAIL = 2, /* the lookup failed (SERVFAIL, bogus, timeout): host not used */
};

/* mx_host - one MX host (or the next hop's own name) and what its lookups found. */
struct mx_host {
    struct mx_route *rt;
    uint16_t pref;
    char name[DNS_NAME_MAX + 1]; /* lower case, no trailing dot */
    struct mx_lookup look[2];    /* A, AAAA */
    struct dns_addr addrs[2 * MX_HOST_ADDRS_MAX];
    size_t n_addrs;
    bool self;     /* its name is one of self_names, or one of its addresses is ours */
    bool tempfail; /* one of its lookups failed for now */
    /* DANE (rt->dane): whether its address answers were all validated, and its TLSA. */
    bool addr_insecure; /* an A or AAAA answer with records came without AD */
    struct mx_lookup tlsa_look;
    enum mx_tlsa_state tlsa;
    size_t n_tlsa;
    struct smtpc_tlsa tlsa_rr[SMTPC_TLSA_MAX]; /* usable records: usage 2 or 3, short data */
};

enum mx_kind {
    MX_KIND_LITERAL = 0, /* "192.0.2.1", "[192.0.2.1]", "[2001:db8::1]", "::1" */
    MX_KIND_HOST = 1,    /* "[name]": the name's addresses */
    MX_KIND_MX = 2,      /* "name": its MX */
};

/* mx_route - one next hop being resolved, until it is called back or cancelled. */
struct mx_route {
    struct mx *m;
    struct dlist all;   /* m->routes: every route not called back yet */
    struct dlist ready; /* m->ready or m->dispatching: decided, waiting for the timer */
    enum mx_kind kind;
    smtpc_route_cb cb;
    void *cb_arg;
    uint16_t port;
    char domain[DNS_NAME_MAX + 1]; /* the name (lower case, no dot), or the literal */
    struct dns_query *mxq;         /* the MX lookup in flight */
    unsigned pending;              /* address (then TLSA) lookups in flight */
    bool dane;                     /* TLSA wanted (opts->dane) and AD trusted (dns_ad_trusted) */
    char **patterns;               /* MTA-STS enforce: the MX hosts allowed (opts), owned */
    size_t n_patterns;
    bool sts_dropped;             /* an MX host was left out for not matching patterns */
    bool mx_secure;               /* MX (or NODATA) validated, AD trusted; no MX lookup: true */
    bool tlsa_asked;              /* the TLSA phase has started (mx_route_finish) */
    struct smtpc_route res;       /* the outcome, once decided */
    struct smtpc_target *targets; /* res's, owned */
    struct mx_host hosts[MX_HOSTS_MAX];
    size_t n_hosts;
};

struct mx {
    struct dns *dns;
    struct mx_config cfg;
    struct smtpc_resolver resolver;
    uv_timer_t dispatch; /* zero timer: the ready list is called back */
    struct dlist routes, ready, dispatching;
    uint64_t rng; /* splitmix64 state: the order of equal preferences and of addresses */
    bool closing;
};

/*
 * mx_random - the next number of splitmix64. Not for secrets: it only
 * spreads load over equal preferences and addresses (RFC 5321 5.1).
 */
static uint64_t mx_random(struct mx *m)
{
    uint64_t z = (m->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* mx_shuffle - addrs in a random order (Fisher-Yates). */
static void mx_shuffle(struct mx *m, struct dns_addr *addrs, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(mx_random(m) % i);
        struct dns_addr t = addrs[i - 1];
        addrs[i - 1] = addrs[j];
        addrs[j] = t;
    }
}

/* mx_self_name - name (lower case, no trailing dot) is one of self_names (any case, a dot or not).
 */
static bool mx_self_name(const struct mx *m, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < m->cfg.n_self_names; i++) {
        const char *s = m->cfg.self_names[i];
        size_t sl = strnlen(s, sizeof(m->cfg.self_names[i]));
        if (sl > 0 && s[sl - 1] == '.')
            sl--;
        if (sl == len && len > 0 && hamr_strncaseeq(s, name, len))
            return true;
    }
    return false;
}

/* mx_addr_len - octets of a's address: 4 or 16. */
static size_t mx_addr_len(const struct dns_addr *a)
{
    return a->family == AF_INET ? 4 : 16;
}

/* mx_addr_eq - same family and address (the TTLs do not matter). */
static bool mx_addr_eq(const struct dns_addr *a, const struct dns_addr *b)
{
    return a->family == b->family && memcmp(a->addr, b->addr, mx_addr_len(a)) == 0;
}

/* mx_self_addr - a is one of self_addrs. */
static bool mx_self_addr(const struct mx *m, const struct dns_addr *a)
{
    for (size_t i = 0; i < m->cfg.n_self_addrs; i++)
        if (mx_addr_eq(&m->cfg.self_addrs[i], a))
            return true;
    return false;
}

/* mx_family_ok - inet_protocols lets us connect to family. */
static bool mx_family_ok(const struct mx *m, int family)
{
    if (family == AF_INET)
        return m->cfg.inet_protocols != MX_INET_IPV6;
    return m->cfg.inet_protocols != MX_INET_IPV4;
}

/* mx_addr_type - "A", "AAAA": what a "no address" text names, as inet_protocols asks. */
static const char *mx_addr_type(const struct mx *m)
{
    return m->cfg.inet_protocols == MX_INET_IPV6 ? "AAAA" : "A";
}

/*
 * mx_parse_literal - text (len octets, no brackets) as an address: dotted
 * IPv4 or IPv6 text, the latter also after RFC 5321's "IPv6:" tag (4.1.3).
 * The tag only in brackets. Into a; *host_off gets where the address text
 * starts (after the tag).
 * 0, or HAMR_EINVAL.
 */
static int mx_parse_literal(const char *text,
                            size_t len,
                            bool bracketed,
                            struct dns_addr *a,
                            size_t *host_off)
{
    char buf[MX_LITERAL_MAX];
    bool v6_tag = bracketed && len > 5 && hamr_strncaseeq(text, "ipv6:", 5);
    size_t off = v6_tag ? 5 : 0;
    if (len == 0 || len - off >= sizeof(buf))
        return HAMR_EINVAL;
    memcpy(buf, text + off, len - off);
    buf[len - off] = '\0';
    memset(a, 0, sizeof(*a));
    *host_off = off;
    if (!v6_tag && inet_pton(AF_INET, buf, a->addr) == 1) {
        a->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, a->addr) == 1) {
        a->family = AF_INET6;
        return 0;
    }
    return HAMR_EINVAL;
}

/* mx_target_set - t: host (truncated to SMTPC_HOST_MAX) at a, port. */
static void mx_target_set(struct smtpc_target *t,
                          const char *host,
                          const struct dns_addr *a,
                          uint16_t port)
{
    memset(t, 0, sizeof(*t));
    hamr_strlcpy(t->host, host, sizeof(t->host));
    if (a->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&t->addr;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, a->addr, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&t->addr;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, a->addr, 16);
    }
}

/* mx_route_fail - the outcome of rt is status (TEMP or PERM), code and text; no target. */
__attribute__((format(printf, 4, 5))) static void mx_route_fail(struct mx_route *rt,
                                                                enum smtpc_status status,
                                                                unsigned code,
                                                                const char *fmt,
                                                                ...)
{
    va_list ap;
    free(rt->targets);
    rt->targets = NULL;
    memset(&rt->res, 0, sizeof(rt->res));
    rt->res.status = status;
    rt->res.code = code;
    va_start(ap, fmt);
    vsnprintf(rt->res.text, sizeof(rt->res.text), fmt, ap);
    va_end(ap);
}

/*
 * mx_route_loop - the outcome of rt is a loop (RFC 5321 5.1, Postfix's
 * text), naming the next hop as it was given: "[name]" or "[literal]"
 * in brackets, a domain bare.
 */
static void mx_route_loop(struct mx_route *rt)
{
    bool br = rt->kind != MX_KIND_MX;
    mx_route_fail(rt, SMTPC_PERM, 550, "5.4.6 mail for %s%s%s loops back to myself", br ? "[" : "",
                  rt->domain, br ? "]" : "");
}

/* mx_route_ok - the outcome of rt is its n targets (n > 0). */
static void mx_route_ok(struct mx_route *rt, size_t n)
{
    memset(&rt->res, 0, sizeof(rt->res));
    rt->res.status = SMTPC_OK;
    rt->res.code = 250;
    rt->res.n = n;
    rt->res.mx_secure = rt->mx_secure;
}

/* mx_route_cancel_queries - every DNS lookup of rt still in flight cancelled. */
static void mx_route_cancel_queries(struct mx_route *rt)
{
    if (rt->mxq) {
        dns_cancel(rt->mxq);
        rt->mxq = NULL;
    }
    for (size_t i = 0; i < rt->n_hosts; i++) {
        for (size_t j = 0; j < 2; j++) {
            if (rt->hosts[i].look[j].q) {
                dns_cancel(rt->hosts[i].look[j].q);
                rt->hosts[i].look[j].q = NULL;
            }
        }
        if (rt->hosts[i].tlsa_look.q) {
            dns_cancel(rt->hosts[i].tlsa_look.q);
            rt->hosts[i].tlsa_look.q = NULL;
        }
    }
    rt->pending = 0;
}

/* mx_route_free - rt off every list, its lookups cancelled, freed. */
/* mx_route_free_patterns - rt's copy of the MTA-STS patterns. */
static void mx_route_free_patterns(struct mx_route *rt)
{
    for (size_t i = 0; i < rt->n_patterns; i++)
        free(rt->patterns[i]);
    free(rt->patterns);
    rt->patterns = NULL;
    rt->n_patterns = 0;
}

/* mx_route_set_patterns - rt's own copy of opts's patterns; HAMR_ENOMEM. */
static int mx_route_set_patterns(struct mx_route *rt, const struct smtpc_resolve_opts *opts)
{
    if (opts == NULL || opts->n_mx_patterns == 0)
        return 0;
    rt->patterns = calloc(opts->n_mx_patterns, sizeof(*rt->patterns));
    if (rt->patterns == NULL)
        return HAMR_ENOMEM;
    for (size_t i = 0; i < opts->n_mx_patterns; i++) {
        rt->patterns[i] = strdup(opts->mx_patterns[i]);
        if (rt->patterns[i] == NULL)
            return HAMR_ENOMEM;
        rt->n_patterns++;
    }
    return 0;
}

/*
 * mx_route_sts_allows - name (an MX host, or the domain as its implicit
 * MX) may be used under rt's MTA-STS patterns (RFC 8461 4.1); one that may
 * not is remembered, so that an empty list says why.
 */
static bool mx_route_sts_allows(struct mx_route *rt, const char *name)
{
    if (rt->n_patterns == 0)
        return true;
    for (size_t i = 0; i < rt->n_patterns; i++)
        if (sts_pattern_match(rt->patterns[i], name))
            return true;
    log_info("mx: %s left out: it does not match the MTA-STS policy of %s", name, rt->domain);
    rt->sts_dropped = true;
    return false;
}

/* mx_route_sts_none - no MX host matches the MTA-STS policy: deferred (RFC 8461 5). */
static void mx_route_sts_none(struct mx_route *rt)
{
    mx_route_fail(rt, SMTPC_TEMP, 451,
                  "4.7.5 MTA-STS: no MX host of %s matches its policy (enforce)", rt->domain);
}

static void mx_route_free(struct mx_route *rt)
{
    mx_route_cancel_queries(rt);
    dlist_remove(&rt->all);
    dlist_remove(&rt->ready);
    mx_route_free_patterns(rt);
    free(rt->targets);
    free(rt);
}

/*
 * mx_route_callback - rt's outcome to its caller, once, then rt freed. rt
 * is off m's lists before the call, so that the callback may resolve,
 * cancel other routes or call mx_free.
 */
static void mx_route_callback(struct mx_route *rt)
{
    char hop[DNS_NAME_MAX + 1];
    struct smtpc_route res = rt->res;
    res.targets = res.n > 0 ? rt->targets : NULL;
    log_debug("mx: route nexthop=%s status=%d code=%u targets=%zu first=%s text=\"%s\"",
              log_printable(hop, sizeof(hop), rt->domain, strlen(rt->domain)), (int)res.status,
              res.code, res.n, res.n > 0 ? res.targets[0].host : "-", res.text);
    dlist_remove(&rt->all);
    dlist_remove(&rt->ready);
    rt->cb(rt->cb_arg, &res);
    mx_route_free_patterns(rt);
    free(rt->targets);
    free(rt);
}

static void mx_dispatch_cb(uv_timer_t *t);

/* mx_route_defer - rt, decided inside resolve, called back from the next turn of the loop. */
static void mx_route_defer(struct mx_route *rt)
{
    struct mx *m = rt->m;
    dlist_push(&m->ready, &rt->ready, false);
    uv_timer_start(&m->dispatch, mx_dispatch_cb, 0, 0);
}

/*
 * mx_dispatch_cb - call back what is ready. The list is moved aside
 * first, so that a route a callback resolves waits for the next turn; a
 * callback may cancel another route on it, or call mx_free (which calls
 * back the rest as shut down).
 */
static void mx_dispatch_cb(uv_timer_t *t)
{
    struct mx *m = t->data;
    dlist_splice(&m->dispatching, &m->ready);
    while (!m->closing && !dlist_empty(&m->dispatching))
        mx_route_callback(hamr_container_of(m->dispatching.next, struct mx_route, ready));
}

/* mx_route_literal - a literal's outcome: itself, unless its family is off. */
static void mx_route_literal(struct mx_route *rt, const struct dns_addr *a)
{
    struct mx *m = rt->m;
    if (!mx_family_ok(m, a->family)) {
        /* The address can never be reached from here: a retry would not change that. */
        mx_route_fail(rt, SMTPC_PERM, 550,
                      "5.4.4 mail for [%s] cannot be delivered: address family disabled by "
                      "inet_protocols",
                      rt->domain);
        return;
    }
    rt->targets = calloc(1, sizeof(*rt->targets));
    if (!rt->targets) {
        mx_route_fail(rt, SMTPC_TEMP, 451, "4.3.0 local resource failure: out of memory");
        return;
    }
    mx_target_set(&rt->targets[0], rt->domain, a, rt->port);
    mx_route_ok(rt, 1);
}

static void mx_route_after_addr(void *arg, const struct dns_result *res);

/*
 * mx_host_ask - h's A and AAAA (as inet_protocols allows) asked at once.
 * A lookup that cannot start marks h: a name net/dns refuses has no
 * address; anything else (no memory, closing) is a temporary failure.
 * Returns the first error of dns_query (0: all started), for mx_resolve,
 * which gives up on it.
 */
static int mx_host_ask(struct mx_host *h)
{
    static const enum dns_type types[2] = {DNS_TYPE_A, DNS_TYPE_AAAA};
    struct mx_route *rt = h->rt;
    struct mx *m = rt->m;
    int first = 0;
    for (size_t i = 0; i < 2; i++) {
        if (!mx_family_ok(m, types[i] == DNS_TYPE_A ? AF_INET : AF_INET6))
            continue;
        h->look[i].h = h;
        int rc =
            dns_query(m->dns, h->name, types[i], mx_route_after_addr, &h->look[i], &h->look[i].q);
        if (rc == 0) {
            rt->pending++;
            continue;
        }
        h->look[i].q = NULL;
        if (rc != HAMR_EINVAL)
            h->tempfail = true;
        if (first == 0)
            first = rc;
    }
    return first;
}

/* mx_route_add_host - name (normalized) at pref as rt's next host; false if rt has it already. */
static bool mx_route_add_host(struct mx_route *rt, const char *name, uint16_t pref)
{
    for (size_t i = 0; i < rt->n_hosts; i++)
        if (strcmp(rt->hosts[i].name, name) == 0)
            return false;
    struct mx_host *h = &rt->hosts[rt->n_hosts++];
    memset(h, 0, sizeof(*h));
    h->rt = rt;
    h->pref = pref;
    hamr_strlcpy(h->name, name, sizeof(h->name));
    h->self = rt->kind == MX_KIND_MX && mx_self_name(rt->m, name);
    return true;
}

/* mx_sort_entry - one MX record with its random tie-breaker. */
struct mx_sort_entry {
    uint16_t pref;
    uint64_t key;
    const char *host;
};

/* mx_sort_cmp - by preference, then by the random key (RFC 5321 5.1: equal ones in random order).
 */
static int mx_sort_cmp(const void *a, const void *b)
{
    const struct mx_sort_entry *x = a, *y = b;
    if (x->pref != y->pref)
        return x->pref < y->pref ? -1 : 1;
    return x->key < y->key ? -1 : x->key > y->key ? 1 : 0;
}

/*
 * mx_route_take_mx - rt's hosts from the MX records of res: sorted, each
 * name once (at its best preference), none from the first self name on
 * (RFC 5321 5.1: "records with preference values equal to or greater
 * than" our own are discarded), MX_HOSTS_MAX at most. A record with the
 * root as its host among others (a broken null MX) is no host. Returns
 * false when rt's outcome is decided (a loop, no host, no memory).
 */
static bool mx_route_take_mx(struct mx_route *rt, const struct dns_result *res)
{
    struct mx *m = rt->m;
    struct mx_sort_entry *v = calloc(res->n > 0 ? res->n : 1, sizeof(*v));
    size_t n = 0;
    if (!v) {
        mx_route_fail(rt, SMTPC_TEMP, 451, "4.3.0 local resource failure: out of memory");
        return false;
    }
    for (size_t i = 0; i < res->n; i++) {
        if (res->u.mx[i].host[0] == '\0')
            continue;
        v[n].pref = res->u.mx[i].pref;
        v[n].key = mx_random(m);
        v[n].host = res->u.mx[i].host;
        n++;
    }
    qsort(v, n, sizeof(*v), mx_sort_cmp);

    bool self = false;
    uint16_t self_pref = 0;
    char name[DNS_NAME_MAX + 1];
    for (size_t i = 0; i < n && !self; i++) {
        if (dns_name_norm(v[i].host, strlen(v[i].host), name) == 0 && mx_self_name(m, name)) {
            self = true;
            self_pref = v[i].pref;
        }
    }
    for (size_t i = 0; i < n && rt->n_hosts < MX_HOSTS_MAX; i++) {
        if (self && v[i].pref >= self_pref)
            break;
        if (dns_name_norm(v[i].host, strlen(v[i].host), name) != 0)
            continue; /* net/dns_parse lets no such name through; be safe */
        if (mx_route_sts_allows(rt, name))
            mx_route_add_host(rt, name, v[i].pref);
    }
    free(v);

    if (rt->n_hosts > 0)
        return true;
    if (rt->sts_dropped)
        mx_route_sts_none(rt);
    else if (self)
        mx_route_loop(rt);
    else /* only root hosts: no better than a null MX */
        mx_route_fail(rt, SMTPC_PERM, 556,
                      "5.1.10 recipient domain %s does not accept mail (null MX, RFC 7505)",
                      rt->domain);
    return false;
}

static void mx_route_finish(struct mx_route *rt);

/*
 * mx_route_after_mx - the MX answer: the hosts to look up (the records,
 * or the domain itself for NODATA, RFC 5321 5.1's implicit MX), asked at
 * once; or the outcome, called back now.
 */
static void mx_route_after_mx(void *arg, const struct dns_result *res)
{
    struct mx_route *rt = arg;
    rt->mxq = NULL;
    /*
     * RFC 7672 2.2.1: DANE only for an MX RRset (or its denial) that
     * validated; RFC 8689 4.2.1: REQUIRETLS mail likewise (the route's
     * mx_secure). The AD bit of an untrusted resolver proves nothing.
     */
    rt->mx_secure = res->ad && dns_ad_trusted(rt->m->dns);
    switch (res->status) {
        case DNS_TEMPFAIL:
            log_debug("mx: lookup failed name=%s type=MX why=\"%s\"", rt->domain, res->why);
            mx_route_fail(rt, SMTPC_TEMP, 451,
                          "4.4.3 Host or domain name not found. Name service error for name=%s "
                          "type=MX: Host not found, try again",
                          rt->domain);
            mx_route_callback(rt);
            return;
        case DNS_NXDOMAIN:
            mx_route_fail(rt, SMTPC_PERM, 550,
                          "5.4.4 Host or domain name not found. Name service error for name=%s "
                          "type=MX: Host not found",
                          rt->domain);
            mx_route_callback(rt);
            return;
        case DNS_NODATA:
            if (!mx_route_sts_allows(rt, rt->domain)) {
                mx_route_sts_none(rt);
                mx_route_callback(rt);
                return;
            }
            mx_route_add_host(rt, rt->domain, 0);
            if (rt->hosts[0].self) {
                mx_route_loop(rt);
                mx_route_callback(rt);
                return;
            }
            break;
        case DNS_OK:
            if (dns_result_null_mx(res)) {
                mx_route_fail(rt, SMTPC_PERM, 556,
                              "5.1.10 recipient domain %s does not accept mail (null MX, RFC 7505)",
                              rt->domain);
                mx_route_callback(rt);
                return;
            }
            if (!mx_route_take_mx(rt, res)) {
                mx_route_callback(rt);
                return;
            }
            break;
    }
    for (size_t i = 0; i < rt->n_hosts; i++)
        mx_host_ask(&rt->hosts[i]); /* a failure marks the host */
    if (rt->pending == 0)
        mx_route_finish(rt);
    /* Otherwise asynchronous processing goes on in mx_route_after_addr. */
}

/* mx_route_after_addr - one host's A or AAAA; the last answer of the route finishes it. */
static void mx_route_after_addr(void *arg, const struct dns_result *res)
{
    struct mx_lookup *l = arg;
    struct mx_host *h = l->h;
    struct mx_route *rt = h->rt;
    struct mx *m = rt->m;
    l->q = NULL;
    rt->pending--;
    if (res->status == DNS_OK) {
        size_t kept = 0;
        if (!res->ad)
            h->addr_insecure = true; /* RFC 7672 2.2.2: no DANE for this host */
        for (size_t i = 0; i < res->n; i++) {
            const struct dns_addr *a = &res->u.addr[i];
            if (a->family != AF_INET && a->family != AF_INET6)
                continue;
            if (rt->kind == MX_KIND_MX && mx_self_addr(m, a))
                h->self = true;
            if (kept < MX_HOST_ADDRS_MAX && h->n_addrs < HAMR_ARRAY_LEN(h->addrs)) {
                h->addrs[h->n_addrs++] = *a;
                kept++;
            }
        }
    } else if (res->status == DNS_TEMPFAIL) {
        log_debug("mx: lookup failed name=%s type=%s why=\"%s\"", h->name,
                  res->type == DNS_TYPE_A ? "A" : "AAAA", res->why);
        h->tempfail = true;
    }
    if (rt->pending == 0)
        mx_route_finish(rt);
}

/*
 * mx_host_order - h's addresses as address_preference wants them into out
 * (room for h->n_addrs): ANY all shuffled; IPV6 or IPV4 that family first,
 * each family shuffled. Returns the count.
 */
static size_t mx_host_order(struct mx *m, const struct mx_host *h, struct dns_addr *out)
{
    size_t n = 0;
    if (m->cfg.address_preference == MX_PREF_ANY) {
        memcpy(out, h->addrs, h->n_addrs * sizeof(*out));
        mx_shuffle(m, out, h->n_addrs);
        return h->n_addrs;
    }
    int first = m->cfg.address_preference == MX_PREF_IPV6 ? AF_INET6 : AF_INET;
    for (int pass = 0; pass < 2; pass++) {
        size_t start = n;
        for (size_t i = 0; i < h->n_addrs; i++)
            if ((h->addrs[i].family == first) == (pass == 0))
                out[n++] = h->addrs[i];
        mx_shuffle(m, out + start, n - start);
    }
    return n;
}

/*
 * mx_tlsa_usable - a TLSA record hamr can match (RFC 7672 3.1): usage
 * DANE-TA (2) or DANE-EE (3); PKIX-TA and PKIX-EE (0, 1) are not for SMTP
 * (3.1.3) and are ignored. Selector 0 or 1, matching type 0 to 2 with
 * data of at most SMTPC_TLSA_DATA_MAX octets: full certificates or keys
 * (type 0) are nearly always longer and are left out.
 */
static bool mx_tlsa_usable(const struct dns_tlsa *r)
{
    return (r->usage == 2 || r->usage == 3) && r->selector <= 1 && r->mtype <= 2 && r->len > 0 &&
           r->len <= SMTPC_TLSA_DATA_MAX;
}

/*
 * mx_route_after_tlsa - one host's TLSA answer: validated records make it
 * DANE-required (those hamr can use kept; none usable still means TLS,
 * RFC 7672 2.2); a validated or insecure "none" is no DANE; an insecure
 * answer with records is ignored (2.2.3); a failure (SERVFAIL, which is
 * also what a validating resolver says of a bogus answer, or a timeout)
 * leaves the host out. The last answer finishes the route.
 */
static void mx_route_after_tlsa(void *arg, const struct dns_result *res)
{
    struct mx_lookup *l = arg;
    struct mx_host *h = l->h;
    struct mx_route *rt = h->rt;
    l->q = NULL;
    rt->pending--;
    if (res->status == DNS_TEMPFAIL) {
        log_info("mx: TLSA lookup failed host=%s why=\"%s\": host not used (DANE)", h->name,
                 res->why);
        h->tlsa = MX_TLSA_TEMPFAIL;
    } else if (res->status == DNS_OK && res->ad) {
        h->tlsa = MX_TLSA_SECURE;
        for (size_t i = 0; i < res->n && h->n_tlsa < SMTPC_TLSA_MAX; i++) {
            const struct dns_tlsa *r = &res->u.tlsa[i];
            if (!mx_tlsa_usable(r))
                continue;
            struct smtpc_tlsa *t = &h->tlsa_rr[h->n_tlsa++];
            t->usage = r->usage;
            t->selector = r->selector;
            t->mtype = r->mtype;
            t->len = (uint8_t)r->len;
            memcpy(t->data, r->data, r->len);
        }
    }
    if (rt->pending == 0)
        mx_route_finish(rt);
}

/*
 * mx_route_ask_tlsa - the TLSA records of the first kept hosts that have
 * addresses, where DANE may apply: the MX answer and the host's address
 * answers validated (RFC 7672 2.2.1, 2.2.2). The base domain is the MX
 * host name as the MX record gave it: a CNAME in front of the host is
 * not followed to a TLSA name of its own (a simplification of 2.2.3).
 * A lookup that cannot start fails the host as a TEMPFAIL would, except
 * a name too long for one (no such TLSA record can exist).
 */
static void mx_route_ask_tlsa(struct mx_route *rt, size_t kept)
{
    struct mx *m = rt->m;
    rt->tlsa_asked = true;
    if (!rt->dane || !rt->mx_secure)
        return;
    for (size_t i = 0; i < kept; i++) {
        struct mx_host *h = &rt->hosts[i];
        if (h->n_addrs == 0 || h->addr_insecure)
            continue;
        char name[DNS_NAME_MAX + 16];
        int n = snprintf(name, sizeof(name), "_%u._tcp.%s", (unsigned)rt->port, h->name);
        if (n < 0 || (size_t)n > DNS_NAME_MAX)
            continue;
        h->tlsa_look.h = h;
        int rc = dns_query(m->dns, name, DNS_TYPE_TLSA, mx_route_after_tlsa, &h->tlsa_look,
                           &h->tlsa_look.q);
        if (rc == 0) {
            rt->pending++;
            continue;
        }
        h->tlsa_look.q = NULL;
        if (rc != HAMR_EINVAL)
            h->tlsa = MX_TLSA_TEMPFAIL;
    }
}

/*
 * mx_route_finish - every lookup answered: the hosts before the first
 * self one kept (none: a loop), their addresses in order, each address
 * once, address_limit at most; no address at all is TEMP if a lookup of a
 * kept host failed for now, else PERM. Calls back.
 */
static void mx_route_finish(struct mx_route *rt)
{
    struct mx *m = rt->m;
    size_t kept = rt->n_hosts, total = 0;
    bool tempfail = false;
    for (size_t i = 0; i < rt->n_hosts; i++) {
        if (rt->hosts[i].self) {
            /* Hosts are sorted: the first self host has the best self preference. */
            uint16_t self_pref = rt->hosts[i].pref;
            for (kept = 0; kept < rt->n_hosts && rt->hosts[kept].pref < self_pref; kept++)
                ;
            break;
        }
    }
    if (kept == 0) {
        mx_route_loop(rt);
        mx_route_callback(rt);
        return;
    }
    if (!rt->tlsa_asked) {
        mx_route_ask_tlsa(rt, kept);
        if (rt->pending > 0)
            return; /* Asynchronous processing goes on in mx_route_after_tlsa. */
    }
    size_t tlsa_failed = 0;
    for (size_t i = 0; i < kept; i++) {
        if (rt->hosts[i].tlsa == MX_TLSA_TEMPFAIL) {
            tlsa_failed++;
            continue;
        }
        total += rt->hosts[i].n_addrs;
        tempfail = tempfail || rt->hosts[i].tempfail;
    }
    size_t limit = m->cfg.address_limit ? m->cfg.address_limit : MX_ADDRESS_LIMIT_DEFAULT;
    size_t cap = total < limit ? total : limit, n = 0;
    if (cap > 0) {
        rt->targets = calloc(cap, sizeof(*rt->targets));
        if (!rt->targets) {
            mx_route_fail(rt, SMTPC_TEMP, 451, "4.3.0 local resource failure: out of memory");
            mx_route_callback(rt);
            return;
        }
    }
    struct dns_addr order[2 * MX_HOST_ADDRS_MAX];
    for (size_t i = 0; i < kept && n < cap; i++) {
        const struct mx_host *h = &rt->hosts[i];
        if (h->tlsa == MX_TLSA_TEMPFAIL)
            continue;
        size_t k = mx_host_order(m, h, order);
        for (size_t j = 0; j < k && n < cap; j++) {
            /* An address behind two MX names is tried once, at the better one. */
            bool seen = false;
            for (size_t t = 0; t < i && !seen; t++)
                for (size_t u = 0; u < rt->hosts[t].n_addrs && !seen; u++)
                    seen = mx_addr_eq(&rt->hosts[t].addrs[u], &order[j]);
            if (seen)
                continue;
            struct smtpc_target *t = &rt->targets[n++];
            mx_target_set(t, h->name, &order[j], rt->port);
            if (h->tlsa == MX_TLSA_SECURE) {
                t->dane = true;
                t->n_tlsa = h->n_tlsa;
                memcpy(t->tlsa, h->tlsa_rr, h->n_tlsa * sizeof(t->tlsa[0]));
            }
        }
    }
    if (n > 0) {
        mx_route_ok(rt, n);
    } else if (tlsa_failed > 0) {
        /* Postfix: "TLSA lookup error for ..."; never plaintext instead (RFC 7672 2.2). */
        mx_route_fail(rt, SMTPC_TEMP, 450,
                      "4.7.5 TLSA lookup error for _%u._tcp.%s: no MX host of %s can be used "
                      "securely (DANE), try again",
                      (unsigned)rt->port, rt->hosts[0].name, rt->domain);
        rt->res.dane_unusable = true;
    } else if (tempfail) {
        mx_route_fail(rt, SMTPC_TEMP, 451,
                      "4.4.3 Host or domain name not found. Name service error for name=%s "
                      "type=%s: Host not found, try again",
                      rt->hosts[0].name, mx_addr_type(m));
    } else {
        mx_route_fail(rt, SMTPC_PERM, 550,
                      "5.4.4 Host or domain name not found. Name service error for name=%s "
                      "type=%s: Host not found",
                      rt->hosts[0].name, mx_addr_type(m));
    }
    mx_route_callback(rt);
}

/*
 * mx_route_parse - the next hop's form into rt: kind and domain (the
 * literal without brackets or "IPv6:" tag, or the name normalized), and
 * a literal's address into *a. 0, or HAMR_EINVAL.
 */
static int mx_route_parse(struct mx_route *rt, const char *nexthop, struct dns_addr *a)
{
    size_t len = strlen(nexthop), off = 0;
    const char *inner = nexthop;
    bool bracketed = len >= 2 && nexthop[0] == '[' && nexthop[len - 1] == ']';
    if (bracketed) {
        inner++;
        len -= 2;
    } else if (memchr(nexthop, '[', len) || memchr(nexthop, ']', len)) {
        return HAMR_EINVAL;
    }
    if (len == 0)
        return HAMR_EINVAL;
    if (mx_parse_literal(inner, len, bracketed, a, &off) == 0) {
        rt->kind = MX_KIND_LITERAL;
        memcpy(rt->domain, inner + off, len - off); /* under MX_LITERAL_MAX */
        rt->domain[len - off] = '\0';
        return 0;
    }
    if (bracketed && len > 5 && hamr_strncaseeq(inner, "ipv6:", 5))
        return HAMR_EINVAL; /* a tagged literal that is no address */
    rt->kind = bracketed ? MX_KIND_HOST : MX_KIND_MX;
    return dns_name_norm(inner, len, rt->domain);
}

/*
 * mx_resolve - smtpc_resolver.resolve: see smtpc.h. A literal, or a
 * "[name]" that is ours, is decided here and called back from the
 * dispatch timer; the rest starts its lookups.
 */
static int mx_resolve(void *data,
                      const char *nexthop,
                      uint16_t port,
                      const struct smtpc_resolve_opts *opts,
                      smtpc_route_cb cb,
                      void *cb_arg,
                      void **handle)
{
    struct mx *m = data;
    struct dns_addr a;
    int rc;
    if (m->closing)
        return HAMR_ESHUTDOWN;
    struct mx_route *rt = calloc(1, sizeof(*rt));
    if (!rt)
        return HAMR_ENOMEM;
    rt->m = m;
    rt->cb = cb;
    rt->cb_arg = cb_arg;
    rt->port = port;
    /* Without a trusted AD bit nothing is "secure": no TLSA query at all (RFC 7672 1.3). */
    rt->dane = opts != NULL && opts->dane && dns_ad_trusted(m->dns);
    dlist_init(&rt->all);
    dlist_init(&rt->ready);
    rc = mx_route_parse(rt, nexthop, &a);
    if (rc == 0 && rt->kind == MX_KIND_MX)
        rc = mx_route_set_patterns(rt, opts);
    if (rc != 0) {
        mx_route_free_patterns(rt);
        free(rt);
        return rc;
    }
    switch (rt->kind) {
        case MX_KIND_LITERAL:
            rt->mx_secure = true; /* no lookup at all */
            mx_route_literal(rt, &a);
            mx_route_defer(rt);
            break;
        case MX_KIND_HOST:
            rt->mx_secure = true; /* no MX: the name's own addresses decide (as Postfix) */
            mx_route_add_host(rt, rt->domain, 0);
            rc = mx_host_ask(&rt->hosts[0]);
            break;
        case MX_KIND_MX:
            rc = dns_query(m->dns, rt->domain, DNS_TYPE_MX, mx_route_after_mx, rt, &rt->mxq);
            if (rc != 0)
                rt->mxq = NULL;
            break;
    }
    if (rc != 0) {
        mx_route_free(rt); /* cancels whichever lookup did start */
        return rc;
    }
    dlist_push(&m->routes, &rt->all, false);
    *handle = rt;
    return 0;
}

/* mx_cancel - smtpc_resolver.cancel: rt's lookups cancelled, rt freed, never called back. */
static void mx_cancel(void *data, void *handle)
{
    (void)data;
    mx_route_free(handle);
}

/* mx_new - see mx.h. */
int mx_new(struct dns *dns, const struct mx_config *cfg, struct mx **out)
{
    *out = NULL;
    if (cfg->n_self_names > MX_SELF_MAX || cfg->n_self_addrs > MX_SELF_MAX ||
        cfg->inet_protocols > MX_INET_IPV6 || cfg->address_preference > MX_PREF_IPV4)
        return HAMR_EINVAL;
    for (size_t i = 0; i < cfg->n_self_addrs; i++)
        if (cfg->self_addrs[i].family != AF_INET && cfg->self_addrs[i].family != AF_INET6)
            return HAMR_EINVAL;
    struct mx *m = calloc(1, sizeof(*m));
    if (!m)
        return HAMR_ENOMEM;
    m->dns = dns;
    m->cfg = *cfg;
    dlist_init(&m->routes);
    dlist_init(&m->ready);
    dlist_init(&m->dispatching);
    /* Synchronous uv_random (no callback): getrandom(2), no thread pool. */
    if (uv_random(NULL, NULL, &m->rng, sizeof(m->rng), 0, NULL) != 0)
        m->rng = (uint64_t)(uintptr_t)m ^ uv_hrtime();
    uv_timer_init(dns_loop(dns), &m->dispatch);
    m->dispatch.data = m;
    m->resolver.data = m;
    m->resolver.resolve = mx_resolve;
    m->resolver.cancel = mx_cancel;
    *out = m;
    return 0;
}

/* mx_resolver - see mx.h. */
const struct smtpc_resolver *mx_resolver(struct mx *m)
{
    return &m->resolver;
}

/* mx_closed_cb - the dispatch timer is closed: m goes. */
static void mx_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

/*
 * mx_free - every route left called back as shut down (its lookups
 * cancelled first; a callback may cancel another route or resolve, which
 * fails with HAMR_ESHUTDOWN), then the timer closed; m's memory goes with
 * the timer's close callback, on the loop's next turn.
 */
void mx_free(struct mx *m)
{
    if (!m || m->closing)
        return;
    m->closing = true;
    while (!dlist_empty(&m->routes)) {
        struct mx_route *rt = hamr_container_of(m->routes.next, struct mx_route, all);
        mx_route_cancel_queries(rt);
        mx_route_fail(rt, SMTPC_TEMP, 451, "4.4.3 shutdown");
        mx_route_callback(rt);
    }
    uv_timer_stop(&m->dispatch);
    uv_close((uv_handle_t *)&m->dispatch, mx_closed_cb);
}
