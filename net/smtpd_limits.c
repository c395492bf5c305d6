/*
 * smtpd_limits.c - per-client connection counters for the SMTP listener,
 * in the manner of Postfix anvil (smtpd_client_connection_count_limit,
 * smtpd_client_connection_rate_limit and smtpd_client_auth_rate_limit).
 *
 * Owns: a hash table of entries keyed by the binary client address. Each
 * entry holds the connections open now, and the connection attempts and
 * AUTH commands counted in the current rate window (one window for both
 * counters). Exports smtpd_limits.h. No I/O, no clock: time comes
 * in as an argument, so the table is tested without sockets or sleeps.
 *
 * Rate: a fixed window per address, as anvil's time unit. It starts at the
 * first attempt and ends SMTPD_LIMITS_WINDOW_MS later; the next attempt
 * after that starts a new one. A client can therefore make up to twice the
 * rate across one window boundary; that is anvil's trade-off too, for one
 * counter and one timestamp per address.
 *
 * Memory: at most max_entries entries, fixed at creation. An entry with no
 * open connection stays only for its rate history (connections or AUTH): it goes on an idle list
 * in the order it went idle and is freed once its window has passed (or at
 * once when both rate limits are off). An AUTH command from an address with
 * no entry (connection limits off) creates an idle one. When the table is full, the oldest idle
 * entry is evicted early, losing only rate history. Live entries number at
 * most the open connections, so a table larger than the listener's session
 * cap always has room; if it has none anyway, the client is admitted
 * uncounted (fail open: the global cap still bounds it) rather than refused.
 *
 * Errors: HAMR_ENOMEM at creation; HAMR_EBUSY from admit means "over a limit".
 * Allocation failure in admit admits the client uncounted.
 *
 * Security: addresses come from the socket or a trusted balancer's PROXY
 * header; a text that is no address is keyed as one shared "unknown"
 * entry. Buckets are chosen with a per-table random seed so that a client
 * controlling many IPv6 addresses cannot aim them at one chain.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "util/common.h"
#include "util/err.h"
#include "util/hash.h"
#include "net/smtpd_limits.h"
#include "net/smtpd_proxy.h"

/* smtpd_limits_key - a client address: family (0 for unknown) and 16 octets. */
struct smtpd_limits_key {
    int family;
    uint8_t addr[16];
};

/* smtpd_limits_entry - one address. */
struct smtpd_limits_entry {
    struct smtpd_limits_entry *hnext;         /* bucket chain */
    struct smtpd_limits_entry *iprev, *inext; /* idle list: there iff conns == 0 */
    struct smtpd_limits_key key;
    unsigned conns;        /* held connections now */
    unsigned attempts;     /* attempts in the window */
    unsigned auths;        /* AUTH commands in the window */
    uint64_t window_start; /* ms */
};

struct smtpd_limits {
    struct smtpd_limits_config cfg;
    struct smtpd_limits_entry **buckets;
    size_t n_buckets; /* a power of two */
    size_t n_entries;
    size_t max_entries;
    uint64_t seed;
    struct smtpd_limits_entry *idle_head, *idle_tail; /* oldest first */
};

/* smtpd_limits_parse - addr text into a key; IPv4-mapped IPv6 becomes IPv4. */
static void smtpd_limits_parse(const char *addr, struct smtpd_limits_key *k)
{
    memset(k, 0, sizeof(*k));
    if (inet_pton(AF_INET, addr, k->addr) == 1) {
        k->family = AF_INET;
        return;
    }
    struct in6_addr a6;
    if (inet_pton(AF_INET6, addr, &a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            k->family = AF_INET;
            memcpy(k->addr, &a6.s6_addr[12], 4);
        } else {
            k->family = AF_INET6;
            memcpy(k->addr, &a6, 16);
        }
        return;
    }
    /* family 0, all zero: every unparsable text shares this entry. */
}

/* smtpd_limits_hash - FNV-1a over the seed and the key. */
static size_t smtpd_limits_hash(const struct smtpd_limits *l, const struct smtpd_limits_key *k)
{
    /* The family is 0, AF_INET or AF_INET6: one octet holds it. */
    uint8_t family = (uint8_t)k->family;
    uint64_t h = hash_fnv1a64(&family, 1, l->seed);
    h = hash_fnv1a64_add(h, k->addr, sizeof(k->addr));
    h ^= h >> 29;
    return (size_t)h & (l->n_buckets - 1);
}

/* smtpd_limits_find - the entry for k, or NULL. */
static struct smtpd_limits_entry *smtpd_limits_find(const struct smtpd_limits *l,
                                                    const struct smtpd_limits_key *k)
{
    struct smtpd_limits_entry *e = l->buckets[smtpd_limits_hash(l, k)];
    for (; e != NULL; e = e->hnext)
        if (e->key.family == k->family && memcmp(e->key.addr, k->addr, sizeof(k->addr)) == 0)
            return e;
    return NULL;
}

/* smtpd_limits_idle_unlink - take e off the idle list. */
static void smtpd_limits_idle_unlink(struct smtpd_limits *l, struct smtpd_limits_entry *e)
{
    if (e->iprev != NULL)
        e->iprev->inext = e->inext;
    else
        l->idle_head = e->inext;
    if (e->inext != NULL)
        e->inext->iprev = e->iprev;
    else
        l->idle_tail = e->iprev;
    e->iprev = e->inext = NULL;
}

/* smtpd_limits_idle_append - e has no connection now: newest on the idle list. */
static void smtpd_limits_idle_append(struct smtpd_limits *l, struct smtpd_limits_entry *e)
{
    e->inext = NULL;
    e->iprev = l->idle_tail;
    if (l->idle_tail != NULL)
        l->idle_tail->inext = e;
    else
        l->idle_head = e;
    l->idle_tail = e;
}

/* smtpd_limits_remove - unlink an idle entry from its bucket and the idle list; free it. */
static void smtpd_limits_remove(struct smtpd_limits *l, struct smtpd_limits_entry *e)
{
    HAMR_ASSERT(e->conns == 0);
    struct smtpd_limits_entry **pp = &l->buckets[smtpd_limits_hash(l, &e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    smtpd_limits_idle_unlink(l, e);
    l->n_entries--;
    free(e);
}

/* smtpd_limits_new - an empty table for at most max_entries addresses. */
int smtpd_limits_new(size_t max_entries, struct smtpd_limits **out)
{
    struct smtpd_limits *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return HAMR_ENOMEM;
    l->max_entries = max_entries > 0 ? max_entries : 1;
    l->n_buckets = 64;
    while (l->n_buckets < l->max_entries && l->n_buckets < ((size_t)1 << 20))
        l->n_buckets <<= 1;
    l->buckets = calloc(l->n_buckets, sizeof(*l->buckets));
    if (l->buckets == NULL) {
        free(l);
        return HAMR_ENOMEM;
    }
    /* A weak seed only makes chains easier to aim at; it is not an error. */
    if (getrandom(&l->seed, sizeof(l->seed), GRND_NONBLOCK) != (ssize_t)sizeof(l->seed))
        l->seed = (uint64_t)(uintptr_t)l;
    *out = l;
    return 0;
}

/* smtpd_limits_free - free every entry and the table. */
struct smtpd_limits *smtpd_limits_free(struct smtpd_limits *l)
{
    if (l == NULL)
        return NULL;
    for (size_t i = 0; i < l->n_buckets; i++) {
        struct smtpd_limits_entry *e = l->buckets[i];
        while (e != NULL) {
            struct smtpd_limits_entry *next = e->hnext;
            free(e);
            e = next;
        }
    }
    free(l->buckets);
    free(l);
    return NULL;
}

/* smtpd_limits_configure - new limits; counts already held stay. */
void smtpd_limits_configure(struct smtpd_limits *l, const struct smtpd_limits_config *cfg)
{
    l->cfg = *cfg;
}

/* smtpd_limits_expired - may an idle entry be forgotten at now? */
static bool smtpd_limits_expired(const struct smtpd_limits *l,
                                 const struct smtpd_limits_entry *e,
                                 uint64_t now_ms)
{
    return (l->cfg.conn_rate == 0 && l->cfg.auth_rate == 0) ||
           now_ms - e->window_start >= SMTPD_LIMITS_WINDOW_MS;
}

/* smtpd_limits_roll - start a new window for e once the current one has passed. */
static void smtpd_limits_roll(struct smtpd_limits_entry *e, uint64_t now_ms)
{
    if (now_ms - e->window_start >= SMTPD_LIMITS_WINDOW_MS) {
        e->window_start = now_ms;
        e->attempts = 0;
        e->auths = 0;
    }
}

/*
 * smtpd_limits_expire - free idle entries from the oldest while their
 * window has passed. The list is in idle order, not window order, so an
 * entry may outlive its window by up to one window behind an older one;
 * the bound on memory is max_entries either way.
 */
void smtpd_limits_expire(struct smtpd_limits *l, uint64_t now_ms)
{
    while (l->idle_head != NULL && smtpd_limits_expired(l, l->idle_head, now_ms))
        smtpd_limits_remove(l, l->idle_head);
}

/* smtpd_limits_insert - a fresh entry for k; evicts the oldest idle one when full. */
static struct smtpd_limits_entry *smtpd_limits_insert(struct smtpd_limits *l,
                                                      const struct smtpd_limits_key *k,
                                                      uint64_t now_ms)
{
    if (l->n_entries >= l->max_entries) {
        if (l->idle_head == NULL)
            return NULL; /* every entry is live: admit uncounted */
        smtpd_limits_remove(l, l->idle_head);
    }
    struct smtpd_limits_entry *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->key = *k;
    e->window_start = now_ms;
    size_t b = smtpd_limits_hash(l, k);
    e->hnext = l->buckets[b];
    l->buckets[b] = e;
    l->n_entries++;
    smtpd_limits_idle_append(l, e);
    return e;
}

/*
 * smtpd_limits_counted - addr's entry, found or created idle, its window
 * rolled to now_ms; NULL when addr is exempt or the table has no room
 * (then nothing is counted).
 */
static struct smtpd_limits_entry *smtpd_limits_counted(struct smtpd_limits *l,
                                                       const char *addr,
                                                       uint64_t now_ms)
{
    if (smtpd_proxy_addr_in(l->cfg.exempt, l->cfg.n_exempt, addr))
        return NULL;
    struct smtpd_limits_key k;
    smtpd_limits_parse(addr, &k);
    struct smtpd_limits_entry *e = smtpd_limits_find(l, &k);
    if (e == NULL && (e = smtpd_limits_insert(l, &k, now_ms)) == NULL)
        return NULL;
    smtpd_limits_roll(e, now_ms);
    return e;
}

/* smtpd_limits_admit - count an attempt from addr; refuse it over a limit. */
int smtpd_limits_admit(struct smtpd_limits *l,
                       const char *addr,
                       uint64_t now_ms,
                       bool *held,
                       enum smtpd_limits_why *why)
{
    *held = false;
    smtpd_limits_expire(l, now_ms);
    if (l->cfg.conn_limit == 0 && l->cfg.conn_rate == 0)
        return 0;
    struct smtpd_limits_entry *e = smtpd_limits_counted(l, addr, now_ms);
    if (e == NULL)
        return 0;
    if (e->attempts < UINT32_MAX)
        e->attempts++;
    int rc = 0;
    if (l->cfg.conn_limit > 0 && e->conns >= l->cfg.conn_limit) {
        *why = SMTPD_LIMITS_COUNT;
        rc = HAMR_EBUSY;
    } else if (l->cfg.conn_rate > 0 && e->attempts > l->cfg.conn_rate) {
        *why = SMTPD_LIMITS_RATE;
        rc = HAMR_EBUSY;
    }
    if (rc != 0)
        return rc; /* an idle entry stays idle: it keeps the attempt in its history */
    if (e->conns == 0)
        smtpd_limits_idle_unlink(l, e);
    e->conns++;
    *held = true;
    return 0;
}

/* smtpd_limits_release - one held connection from addr is gone. */
void smtpd_limits_release(struct smtpd_limits *l, const char *addr, uint64_t now_ms)
{
    struct smtpd_limits_key k;
    smtpd_limits_parse(addr, &k);
    struct smtpd_limits_entry *e = smtpd_limits_find(l, &k);
    if (e == NULL || e->conns == 0)
        return; /* the caller held nothing: a bug, but not worth a crash */
    if (--e->conns > 0)
        return;
    smtpd_limits_idle_append(l, e);
    if (smtpd_limits_expired(l, e, now_ms))
        smtpd_limits_remove(l, e);
}

/*
 * smtpd_limits_auth - count one AUTH command from addr; refuse it over the
 * rate. The entry is the connection's own when its connection is counted;
 * otherwise it is found or created idle, and ages out like any idle entry.
 */
int smtpd_limits_auth(struct smtpd_limits *l, const char *addr, uint64_t now_ms)
{
    smtpd_limits_expire(l, now_ms);
    if (l->cfg.auth_rate == 0)
        return 0;
    struct smtpd_limits_entry *e = smtpd_limits_counted(l, addr, now_ms);
    if (e == NULL)
        return 0; /* exempt, or no room: uncounted, as admit does */
    if (e->auths < UINT32_MAX)
        e->auths++;
    return e->auths > l->cfg.auth_rate ? HAMR_EBUSY : 0;
}

/* smtpd_limits_auths - AUTH commands counted for addr in its window. */
unsigned smtpd_limits_auths(const struct smtpd_limits *l, const char *addr)
{
    struct smtpd_limits_key k;
    smtpd_limits_parse(addr, &k);
    const struct smtpd_limits_entry *e = smtpd_limits_find(l, &k);
    return e != NULL ? e->auths : 0;
}

/* smtpd_limits_conns - held connections for addr. */
unsigned smtpd_limits_conns(const struct smtpd_limits *l, const char *addr)
{
    struct smtpd_limits_key k;
    smtpd_limits_parse(addr, &k);
    const struct smtpd_limits_entry *e = smtpd_limits_find(l, &k);
    return e != NULL ? e->conns : 0;
}

/* smtpd_limits_entries - addresses remembered. */
size_t smtpd_limits_entries(const struct smtpd_limits *l)
{
    return l->n_entries;
}
