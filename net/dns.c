/*
 * dns.c - the resolver of net/dns.h: c-ares on the libuv loop, a cache, and
 * one DNS query shared by every caller asking the same thing at once.
 *
 * Happy path: dns_query -> cache hit: the query goes on the ready list ->
 * dns_dispatch_cb (a zero timer) calls back. Miss: an entry for (type,
 * name) is made and dns_send hands c-ares the query -> c-ares writes on a
 * socket it reports through dns_sock_state_cb (one uv_poll_t each) ->
 * dns_poll_cb -> ares_process_fd -> dns_answer_cb parses the raw answer ->
 * dns_entry_done caches it and moves every waiter to the ready list ->
 * dns_dispatch_cb. Callers are only ever called from dns_dispatch_cb (and
 * from dns_close), so never from inside dns_query, even when c-ares fails
 * at once inside ares_send.
 *
 * Failure modes: c-ares's timeouts (dns_timer_cb drives them), SERVFAIL
 * and REFUSED after every server was tried (c-ares moves on to the next
 * server on those, as libresolv does, then reports ARES_ECONNREFUSED:
 * HAMR_ECONNECT here), a network error, a malformed answer: all DNS_TEMPFAIL, never cached, so the
 * next delivery attempt asks again (c-ares has already retried tries times by then; holding a
 * failure would only delay recovery, and the queue's own retry schedule paces us).
 *
 * The query is built here, not by ares_query: ares_create_query with an
 * EDNS0 OPT record (RFC 6891; 1232 octets, the DNS flag day 2020 size), and
 * the AD bit set in its header, which asks a validating resolver to report
 * in AD whether it validated the answer (RFC 6840 section 5.7) without
 * asking for the RRSIGs that DO would bring. ares_send leaves the answer's
 * header as the server sent it, so AD reaches dns_parse. AD is only worth
 * as much as the path to the resolver: dns_ad_trusted says whether every
 * server is on this host (DANE, RFC 7672 section 1.3) or the config said
 * to trust it anyway ([dns] trust_ad).
 *
 * Owns the c-ares channel, its polls and timer, the dispatch timer, the
 * cache entries and the answers. Thread: the loop's only.
 * Errors: HAMR_EINVAL, HAMR_ENOMEM, HAMR_EIO, HAMR_ESHUTDOWN.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <ares.h>
#include <uv.h>

#include "util/common.h"
#include "util/dlist.h"
#include "util/err.h"
#include "util/hash.h"
#include "util/log.h"
#include "net/dns.h"
#include "net/dns_parse.h"

#define DNS_EDNS_SIZE 1232
#define DNS_CLASS_IN 1
#define DNS_HEADER_AD 0x20 /* octet 3 of the header */
#define DNS_BUCKETS_MIN 64
#define DNS_BUCKETS_MAX (1u << 20)

/* dns_answer - one parsed answer, shared by the cache and the callers it is due to. */
struct dns_answer {
    unsigned refs;
    struct dns_parsed p; /* p.status, p.why and p.ad hold for TEMPFAIL too */
    int err;             /* TEMPFAIL: HAMR_E* */
    uint32_t ttl;        /* seconds it is held, after the bounds */
    uint64_t born_ms;
};

/* dns_entry - a (type, name) in the table: being fetched, or cached. */
struct dns_entry {
    struct dns *r;
    struct dns_entry *hnext; /* bucket chain */
    struct dlist lru;        /* cached entries only, most recently used first */
    uint64_t hash;
    enum dns_type type;
    bool fetching;
    struct dlist waiters; /* struct dns_query, while fetching */
    struct dns_answer *answer;
    uint64_t expires_ms;
    char name[DNS_NAME_MAX + 1]; /* lower case, no trailing dot */
};

struct dns_query {
    struct dns *r;
    struct dlist link;         /* in an entry's waiters, or on r->ready / r->dispatching */
    struct dns_answer *answer; /* once ready: a reference */
    bool cached;
    enum dns_type type;
    dns_query_cb cb;
    void *arg;
};

struct dns_poll {
    uv_poll_t poll;
    struct dns *r;
    ares_socket_t fd;
    struct dns_poll *next;
};

struct dns {
    uv_loop_t *loop;
    struct dns_config cfg;
    ares_channel channel;
    uv_timer_t timer;    /* c-ares's next timeout */
    uv_timer_t dispatch; /* zero timer: the ready list is called back */
    struct dns_poll *polls;
    unsigned handles; /* open libuv handles (timers, polls, closing ones too) */
    struct dlist ready, dispatching;
    struct dns_entry **buckets;
    size_t n_buckets;
    struct dlist lru;
    size_t n_cached;
    size_t cached_bytes; /* dns_entry_bytes of the cached entries */
    uint64_t seed;
    uint64_t (*now_ms)(void *arg);
    void *now_arg;
    bool closing;
    bool ad_trusted; /* dns_ad_trusted: decided at dns_new */
    void (*closed_cb)(void *arg);
    void *closed_arg;
    struct dns_stats stats;
};

/* dns_status_name - for logs. */
const char *dns_status_name(enum dns_status status)
{
    switch (status) {
        case DNS_OK:
            return "ok";
        case DNS_NXDOMAIN:
            return "nxdomain";
        case DNS_NODATA:
            return "nodata";
        case DNS_TEMPFAIL:
            return "tempfail";
    }
    return "unknown";
}

/* dns_result_null_mx - RFC 7505 section 3: a single MX, preference 0, exchange ".". */
bool dns_result_null_mx(const struct dns_result *res)
{
    return res->status == DNS_OK && res->type == DNS_TYPE_MX && res->n == 1 &&
           res->u.mx[0].pref == 0 && res->u.mx[0].host[0] == '\0';
}

/* dns_now - the cache's clock. */
static uint64_t dns_now(struct dns *r)
{
    return r->now_ms ? r->now_ms(r->now_arg) : uv_now(r->loop);
}

/* dns_set_clock - see dns.h. */
void dns_set_clock(struct dns *r, uint64_t (*now_ms)(void *arg), void *arg)
{
    r->now_ms = now_ms;
    r->now_arg = arg;
}

/* dns_loop - see dns.h. */
uv_loop_t *dns_loop(const struct dns *r)
{
    return r->loop;
}

/* dns_cache_entries - cached answers now. */
size_t dns_cache_entries(const struct dns *r)
{
    return r->n_cached;
}

/* dns_get_stats - a copy of the counters. */
void dns_get_stats(const struct dns *r, struct dns_stats *out)
{
    *out = r->stats;
}

/* dns_name_norm - see dns.h. */
int dns_name_norm(const char *name, size_t len, char *out)
{
    size_t label = 0;
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > DNS_NAME_MAX)
        return HAMR_EINVAL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.') {
            if (label == 0)
                return HAMR_EINVAL;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
            if (++label > 63)
                return HAMR_EINVAL;
        } else if (c >= 'A' && c <= 'Z') {
            if (++label > 63)
                return HAMR_EINVAL;
            c = (unsigned char)(c - 'A' + 'a'); /* ASCII only, whatever the locale */
        } else {
            return HAMR_EINVAL;
        }
        out[i] = (char)c;
    }
    if (label == 0)
        return HAMR_EINVAL;
    out[len] = '\0';
    return 0;
}

/* dns_name_normalize - dns_name_norm of a NUL-terminated name. */
static int dns_name_normalize(const char *name, char *out)
{
    return dns_name_norm(name, strlen(name), out);
}

/* dns_hash - bucket hash of (type, name), seeded per resolver: names come from mail. */
static uint64_t dns_hash(const struct dns *r, enum dns_type type, const char *name)
{
    uint16_t t = (uint16_t)type;
    return hash_fnv1a64_add(hash_fnv1a64(&t, sizeof(t), r->seed), name, strlen(name));
}

/* dns_entry_find - the entry of (type, name) and the link pointing at it, or NULL. */
static struct dns_entry **dns_entry_find(struct dns *r,
                                         uint64_t h,
                                         enum dns_type type,
                                         const char *name)
{
    struct dns_entry **pp = &r->buckets[h & (r->n_buckets - 1)];
    for (; *pp; pp = &(*pp)->hnext)
        if ((*pp)->hash == h && (*pp)->type == type && strcmp((*pp)->name, name) == 0)
            return pp;
    return pp;
}

/* dns_answer_unref - one holder less; freed with the last. Returns NULL. */
static struct dns_answer *dns_answer_unref(struct dns_answer *a)
{
    if (a && --a->refs == 0) {
        dns_parsed_clear(&a->p);
        free(a);
    }
    return NULL;
}

/* dns_entry_bytes - what a cached entry holds in memory, as the byte bound counts it. */
static size_t dns_entry_bytes(const struct dns_entry *e)
{
    return sizeof(*e) + sizeof(*e->answer) + e->answer->p.bytes;
}

/*
 * dns_entry_free - take e out of the table (and the LRU if cached) and free
 * it. Its waiters must be gone (delivered, or moved to the ready list).
 */
static void dns_entry_free(struct dns_entry *e)
{
    struct dns *r = e->r;
    struct dns_entry **pp = dns_entry_find(r, e->hash, e->type, e->name);
    HAMR_ASSERT(*pp == e);
    *pp = e->hnext;
    if (!e->fetching) {
        dlist_remove(&e->lru);
        r->n_cached--;
        r->cached_bytes -= dns_entry_bytes(e);
    }
    HAMR_ASSERT(dlist_empty(&e->waiters));
    dns_answer_unref(e->answer);
    free(e);
}

/* dns_dispatch_cb - call back everything on the ready list (defined below). */
static void dns_dispatch_cb(uv_timer_t *t);

/* dns_ready - q's answer is a (a reference is taken): it goes on the ready list. */
static void dns_ready(struct dns_query *q, struct dns_answer *a)
{
    struct dns *r = q->r;
    a->refs++;
    q->answer = a;
    dlist_push(&r->ready, &q->link, false);
    if (!r->closing && !uv_is_active((uv_handle_t *)&r->dispatch))
        uv_timer_start(&r->dispatch, dns_dispatch_cb, 0, 0);
}

/* dns_ttl_bound - ttl within [lo, hi]. */
static uint32_t dns_ttl_bound(uint32_t ttl, uint32_t lo, uint32_t hi)
{
    return ttl < lo ? lo : ttl > hi ? hi : ttl;
}

/*
 * dns_entry_done - the fetch of e ended with a: hold a in the cache for its
 * TTL (RFC 2308 for NXDOMAIN and NODATA; no SOA: the lower bound), or drop
 * e if a is a TEMPFAIL; every waiter goes on the ready list either way.
 */
static void dns_entry_done(struct dns_entry *e, struct dns_answer *a)
{
    struct dns *r = e->r;
    const struct dns_config *c = &r->cfg;

    if (a->p.status == DNS_OK)
        a->ttl = dns_ttl_bound(a->p.ttl, c->ttl_min, c->ttl_max);
    else if (a->p.status != DNS_TEMPFAIL)
        a->ttl =
            dns_ttl_bound(a->p.has_soa ? a->p.ttl : 0, c->negative_ttl_min, c->negative_ttl_max);
    a->born_ms = dns_now(r);
    while (!dlist_empty(&e->waiters)) {
        struct dlist *l = e->waiters.next;
        dlist_remove(l);
        dns_ready(hamr_container_of(l, struct dns_query, link), a);
    }
    if (a->p.status == DNS_TEMPFAIL || c->cache_size == 0 || r->closing) {
        dns_entry_free(e);
        return;
    }
    e->fetching = false;
    a->refs++;
    e->answer = a;
    e->expires_ms = a->born_ms + (uint64_t)a->ttl * 1000;
    dlist_push(&r->lru, &e->lru, true);
    r->n_cached++;
    r->cached_bytes += dns_entry_bytes(e);
    while (r->n_cached > c->cache_size || r->cached_bytes > c->cache_max_bytes)
        dns_entry_free(hamr_container_of(r->lru.prev, struct dns_entry, lru));
}

/* dns_ares_err - a c-ares failure status as a HAMR_E* code and a reason. */
static int dns_ares_err(int status, char *why, size_t size)
{
    int err;
    switch (status) {
        case ARES_ETIMEOUT:
            err = HAMR_ETIMEDOUT;
            break;
        case ARES_ESERVFAIL:
        case ARES_EREFUSED:
        case ARES_ENOTIMP:
        case ARES_EFORMERR:
        case ARES_EBADRESP:
            err = HAMR_EPROTO;
            break;
        case ARES_ECONNREFUSED:
            /*
             * c-ares 1.18 takes a SERVFAIL, REFUSED or NOTIMP answer as a cue
             * to try the next server and, when none is left, ends the query
             * with this code rather than the server's: the RCODE is lost.
             */
            snprintf(why, size, "no server answered (SERVFAIL, REFUSED or unreachable)");
            return HAMR_ECONNECT;
        case ARES_ENOMEM:
            err = HAMR_ENOMEM;
            break;
        case ARES_EDESTRUCTION:
        case ARES_ECANCELLED:
            err = HAMR_ECANCELED;
            break;
        default:
            err = HAMR_EIO;
            break;
    }
    snprintf(why, size, "%s", ares_strerror(status));
    return err;
}

/*
 * dns_answer_cb - c-ares's end of a fetch (ares_send's callback): the raw
 * answer parsed, or the failure. May run inside ares_send, inside
 * ares_process_fd or inside ares_destroy; it only moves waiters to the
 * ready list, so none of those calls back a caller.
 */
static void dns_answer_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_entry *e = arg;
    struct dns_answer *a = calloc(1, sizeof(*a));
    if (!a) {
        /*
         * The waiters are owed an answer all the same: they share this
         * static TEMPFAIL, whose count starts above zero and so is never freed.
         */
        static struct dns_answer nomem = {
            .refs = 1, .err = HAMR_ENOMEM, .p = {.status = DNS_TEMPFAIL, .why = "out of memory"}};
        log_error("dns: out of memory for an answer name=%s", e->name);
        nomem.refs++;
        a = &nomem;
    } else {
        a->refs = 1;
        if (status == ARES_SUCCESS) {
            a->err = dns_parse(abuf, (size_t)alen, e->type, &a->p);
            if (a->err != 0)
                a->p.status = DNS_TEMPFAIL;
            else if (a->p.status == DNS_TEMPFAIL)
                a->err = HAMR_EPROTO;
        } else {
            a->p.status = DNS_TEMPFAIL;
            a->err = dns_ares_err(status, a->p.why, sizeof(a->p.why));
        }
    }
    if (a->p.status == DNS_TEMPFAIL && a->err != HAMR_ECANCELED)
        log_info("dns: tempfail name=%s type=%d why=\"%s\"", e->name, (int)e->type, a->p.why);
    dns_entry_done(e, a);
    dns_answer_unref(a);
}

/* dns_timer_update - the timer at c-ares's next timeout, or stopped if it has none. */
static void dns_timer_update(struct dns *r);

/* dns_timer_cb - a c-ares timeout is due: let it retry or fail what expired. */
static void dns_timer_cb(uv_timer_t *t)
{
    struct dns *r = t->data;
    ares_process_fd(r->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_timer_update(r);
}

/* dns_timer_update - see above. */
static void dns_timer_update(struct dns *r)
{
    struct timeval tv;
    if (r->closing || !r->channel)
        return;
    if (!ares_timeout(r->channel, NULL, &tv)) {
        uv_timer_stop(&r->timer);
        return;
    }
    uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
    uv_timer_start(&r->timer, dns_timer_cb, ms, 0);
}

/* dns_poll_cb - a c-ares socket is ready (or failed: c-ares then sees the error itself). */
static void dns_poll_cb(uv_poll_t *h, int status, int events)
{
    struct dns_poll *p = h->data;
    struct dns *r = p->r;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;
    if (status < 0 || (events & UV_READABLE))
        rfd = p->fd;
    if (status < 0 || (events & UV_WRITABLE))
        wfd = p->fd;
    ares_process_fd(r->channel, rfd, wfd);
    dns_timer_update(r);
}

/* dns_handle_closed_cb - one handle less; the last of a closing resolver frees it. */
static void dns_handle_closed_cb(uv_handle_t *h)
{
    struct dns *r = h->data;
    if (h->type == UV_POLL) {
        struct dns_poll *p = hamr_container_of((uv_poll_t *)h, struct dns_poll, poll);
        r = p->r;
        free(p);
    }
    if (--r->handles > 0 || !r->closing)
        return;
    void (*cb)(void *) = r->closed_cb;
    void *arg = r->closed_arg;
    free(r->buckets);
    free(r);
    ares_library_cleanup();
    if (cb)
        cb(arg);
}

/* dns_poll_close - stop watching p (c-ares is about to close its socket) and unlink it. */
static void dns_poll_close(struct dns_poll **pp)
{
    struct dns_poll *p = *pp;
    *pp = p->next;
    uv_poll_stop(&p->poll);
    uv_close((uv_handle_t *)&p->poll, dns_handle_closed_cb);
}

/*
 * dns_sock_state_cb - c-ares wants to hear when fd is readable or writable
 * (both false: it is closing fd). One uv_poll_t per socket, made on first
 * sight. No other c-ares call is made from here.
 */
static void dns_sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns *r = data;
    struct dns_poll **pp = &r->polls;
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    if (!readable && !writable) {
        if (*pp)
            dns_poll_close(pp);
        return;
    }
    if (!*pp) {
        struct dns_poll *p = calloc(1, sizeof(*p));
        if (!p || uv_poll_init_socket(r->loop, &p->poll, fd) != 0) {
            /* The query on this socket then ends by c-ares's timeout, as TEMPFAIL. */
            log_error("dns: cannot watch socket fd=%d", (int)fd);
            free(p);
            return;
        }
        p->r = r;
        p->fd = fd;
        p->poll.data = p;
        p->next = r->polls;
        r->polls = p;
        r->handles++;
        pp = &r->polls;
    }
    int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
    uv_poll_start(&(*pp)->poll, events, dns_poll_cb);
}

/*
 * dns_servers_local - every server of channel (configured, or what c-ares
 * read from /etc/resolv.conf) is on this host: 127.0.0.0/8 or ::1. None
 * at all, or a list c-ares cannot give, is not.
 */
static bool dns_servers_local(ares_channel channel)
{
    static const uint8_t loop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    struct ares_addr_port_node *servers = NULL;
    if (ares_get_servers_ports(channel, &servers) != ARES_SUCCESS)
        return false;
    bool local = servers != NULL;
    for (const struct ares_addr_port_node *s = servers; s != NULL && local; s = s->next) {
        if (s->family == AF_INET)
            local = (ntohl(s->addr.addr4.s_addr) >> 24) == 127;
        else
            local = s->family == AF_INET6 && memcmp(&s->addr.addr6, loop6, 16) == 0;
    }
    ares_free_data(servers);
    return local;
}

/* dns_new - the channel with its options, the servers, the timers and the table. */
int dns_new(uv_loop_t *loop, const struct dns_config *cfg, struct dns **out)
{
    *out = NULL;
    if (cfg->tries == 0 || cfg->timeout_ms == 0 || cfg->timeout_ms > INT32_MAX ||
        cfg->ttl_min > cfg->ttl_max || cfg->negative_ttl_min > cfg->negative_ttl_max)
        return HAMR_EINVAL;
    struct dns *r = calloc(1, sizeof(*r));
    if (!r)
        return HAMR_ENOMEM;
    r->loop = loop;
    r->cfg = *cfg;
    dlist_init(&r->ready);
    dlist_init(&r->dispatching);
    dlist_init(&r->lru);
    r->n_buckets = DNS_BUCKETS_MIN;
    while (r->n_buckets < cfg->cache_size && r->n_buckets < DNS_BUCKETS_MAX)
        r->n_buckets <<= 1;
    r->buckets = calloc(r->n_buckets, sizeof(*r->buckets));
    if (!r->buckets || ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) {
        free(r->buckets);
        free(r);
        return HAMR_ENOMEM;
    }
    /* Synchronous uv_random (no callback): getrandom(2), no thread pool. */
    if (uv_random(NULL, NULL, &r->seed, sizeof(r->seed), 0, NULL) != 0)
        r->seed = (uint64_t)(uintptr_t)r ^ uv_hrtime();

    struct ares_options o;
    memset(&o, 0, sizeof(o));
    o.flags = ARES_FLAG_EDNS; /* UDP answers up to ednspsz before TC is expected */
    o.ednspsz = DNS_EDNS_SIZE;
    o.timeout = (int)cfg->timeout_ms;
    o.tries = (int)cfg->tries;
    o.sock_state_cb = dns_sock_state_cb;
    o.sock_state_cb_data = r;
    int mask = ARES_OPT_FLAGS | ARES_OPT_EDNSPSZ | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
               ARES_OPT_SOCK_STATE_CB;
    int st = ares_init_options(&r->channel, &o, mask);
    if (st == ARES_SUCCESS && cfg->servers[0] != '\0')
        st = ares_set_servers_ports_csv(r->channel, cfg->servers);
    if (st != ARES_SUCCESS) {
        log_error("dns: cannot start resolver servers=\"%.100s\" why=\"%s\"", cfg->servers,
                  ares_strerror(st));
        if (r->channel)
            ares_destroy(r->channel);
        ares_library_cleanup();
        free(r->buckets);
        free(r);
        return st == ARES_ENOMEM ? HAMR_ENOMEM : st == ARES_EBADSTR ? HAMR_EINVAL : HAMR_EIO;
    }
    r->ad_trusted = cfg->trust_ad || dns_servers_local(r->channel);
    uv_timer_init(loop, &r->timer);
    uv_timer_init(loop, &r->dispatch);
    r->timer.data = r->dispatch.data = r;
    r->handles = 2;
    *out = r;
    return 0;
}

/* dns_ad_trusted - see dns.h. */
bool dns_ad_trusted(const struct dns *r)
{
    return r->ad_trusted;
}

/*
 * dns_send - hand c-ares the query of e: RD, EDNS0 and AD set (see the
 * top of this file). A failure inside ares_send comes back through
 * dns_answer_cb, which may already have freed e when this returns.
 */
static void dns_send(struct dns *r, struct dns_entry *e)
{
    unsigned char *buf = NULL;
    int len = 0;
    int st =
        ares_create_query(e->name, DNS_CLASS_IN, (int)e->type, 0, 1, &buf, &len, DNS_EDNS_SIZE);
    if (st != ARES_SUCCESS) {
        dns_answer_cb(e, st, 0, NULL, 0);
        return;
    }
    buf[3] |= DNS_HEADER_AD;
    r->stats.sent++;
    ares_send(r->channel, buf, len, dns_answer_cb, e);
    ares_free_string(buf);
    dns_timer_update(r);
}

/* dns_query - cache, shared fetch, or a new fetch; the answer always comes from the ready list. */
int dns_query(struct dns *r,
              const char *name,
              enum dns_type type,
              dns_query_cb cb,
              void *arg,
              struct dns_query **qp)
{
    char norm[DNS_NAME_MAX + 1];
    if (r->closing)
        return HAMR_ESHUTDOWN;
    if (dns_record_size(type) == 0 || dns_name_normalize(name, norm) != 0)
        return HAMR_EINVAL;
    struct dns_query *q = calloc(1, sizeof(*q));
    if (!q)
        return HAMR_ENOMEM;
    q->r = r;
    q->type = type;
    q->cb = cb;
    q->arg = arg;
    dlist_init(&q->link);

    uint64_t h = dns_hash(r, type, norm);
    struct dns_entry *e = *dns_entry_find(r, h, type, norm);
    if (e && !e->fetching && dns_now(r) >= e->expires_ms) {
        dns_entry_free(e); /* expired: fetched again below */
        e = NULL;
    }
    if (e && !e->fetching) {
        dlist_remove(&e->lru);
        dlist_push(&r->lru, &e->lru, true);
        q->cached = true;
        dns_ready(q, e->answer);
    } else if (e) {
        dlist_push(&e->waiters, &q->link, false);
    } else {
        e = calloc(1, sizeof(*e));
        if (!e) {
            free(q);
            return HAMR_ENOMEM;
        }
        e->r = r;
        e->hash = h;
        e->type = type;
        e->fetching = true;
        memcpy(e->name, norm, sizeof(norm));
        dlist_init(&e->lru);
        dlist_init(&e->waiters);
        struct dns_entry **pp = &r->buckets[h & (r->n_buckets - 1)];
        e->hnext = *pp;
        *pp = e;
        dlist_push(&e->waiters, &q->link, false);
        dns_send(r, e);
        /* e may be gone already: ares_send can fail at once. */
    }
    if (qp)
        *qp = q;
    return 0;
}

/* dns_cancel - off whatever list q is on; its answer reference dropped. */
void dns_cancel(struct dns_query *q)
{
    dlist_remove(&q->link);
    dns_answer_unref(q->answer);
    free(q);
}

/* dns_deliver - call q back with its answer (or, closing, with the cancellation) and free it. */
static void dns_deliver(struct dns_query *q)
{
    struct dns *r = q->r;
    struct dns_answer *a = q->answer;
    struct dns_result res;
    memset(&res, 0, sizeof(res));
    res.type = q->type;
    if (r->closing) {
        res.status = DNS_TEMPFAIL;
        res.err = HAMR_ECANCELED;
        snprintf(res.why, sizeof(res.why), "resolver closing");
    } else {
        uint64_t age_s = (dns_now(r) - a->born_ms) / 1000;
        res.status = a->p.status;
        res.err = a->err;
        res.ad = a->p.ad;
        res.cached = q->cached;
        res.ttl = age_s < a->ttl ? a->ttl - (uint32_t)age_s : 0;
        res.n = a->p.n;
        res.u.mx = a->p.records; /* the union's members all point to a->p.records */
        memcpy(res.why, a->p.why, sizeof(res.why));
    }
    r->stats.answers[res.status]++;
    r->stats.cache_hits += res.cached;
    dns_query_cb cb = q->cb;
    void *arg = q->arg;
    q->answer = NULL;
    free(q);
    cb(arg, &res);
    dns_answer_unref(a);
}

/*
 * dns_dispatch - call back what is ready. The list is moved aside first,
 * so that answers made ready by these callbacks wait for the next turn; a
 * callback may cancel another query on it or close the resolver (which
 * then calls back the rest of it as cancelled).
 */
static void dns_dispatch(struct dns *r)
{
    dlist_splice(&r->dispatching, &r->ready);
    while (!dlist_empty(&r->dispatching)) {
        struct dlist *l = r->dispatching.next;
        dlist_remove(l);
        dns_deliver(hamr_container_of(l, struct dns_query, link));
    }
}

/* dns_dispatch_cb - the zero timer dns_ready starts. */
static void dns_dispatch_cb(uv_timer_t *t)
{
    dns_dispatch(t->data);
}

/*
 * dns_close - ares_destroy ends every fetch (dns_answer_cb with
 * ARES_EDESTRUCTION puts the waiters on the ready list, and closes the
 * sockets through dns_sock_state_cb); then every waiting caller is called
 * back as cancelled, the cache is emptied and the handles are closed.
 */
void dns_close(struct dns *r, void (*closed_cb)(void *arg), void *arg)
{
    if (r->closing)
        return;
    r->closing = true;
    r->closed_cb = closed_cb;
    r->closed_arg = arg;
    ares_destroy(r->channel);
    r->channel = NULL;
    dns_dispatch(r); /* closing: dns_deliver reports each as cancelled */
    for (size_t i = 0; i < r->n_buckets; i++)
        while (r->buckets[i])
            dns_entry_free(r->buckets[i]);
    while (r->polls)
        dns_poll_close(&r->polls);
    uv_close((uv_handle_t *)&r->timer, dns_handle_closed_cb);
    uv_close((uv_handle_t *)&r->dispatch, dns_handle_closed_cb);
}
