/*
 * dns.h - the DNS resolver for routing internet mail: MX, A, AAAA, TXT and
 * TLSA lookups on the event loop, with a cache.
 *
 * c-ares (1.18) does the network part and is driven by the loop itself: one
 * uv_poll_t per socket it opens and one uv_timer_t for its timeouts. Nothing
 * runs in libuv's thread pool (raft's disk I/O needs it) and nothing blocks.
 * Answers are parsed by net/dns_parse.c from the raw message, so that each
 * lookup comes back in one of the four classes mail routing tells apart
 * (RFC 5321 section 5.1): records, NXDOMAIN (bounce), NODATA (for MX: the
 * implicit MX on A/AAAA) and TEMPFAIL (defer).
 *
 * The cache keeps records for their smallest TTL and NXDOMAIN or NODATA for
 * the SOA's (RFC 2308 section 5), both within dns_config's bounds, and
 * never a TEMPFAIL. Queries ask for the AD bit (RFC 6840 section 5.7), and
 * each result says whether the answer had it: net/dns.c says why, and how
 * far it can be trusted.
 *
 * Thread: the loop's only. Errors: HAMR_EINVAL (bad name, type or config),
 * HAMR_ENOMEM, HAMR_EIO (c-ares could not start), HAMR_ESHUTDOWN (closing).
 *
 * The MX routing of RFC 5321 section 5.1 on top of it is net/mx.c; the
 * [dns] config keys map onto struct dns_config one to one.
 */
#ifndef HAMR_NET_DNS_H
#define HAMR_NET_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* Record types asked for, with their numbers on the wire (RFC 1035, 3596, 6698). */
enum dns_type {
    DNS_TYPE_A = 1,
    DNS_TYPE_MX = 15,
    DNS_TYPE_TXT = 16,
    DNS_TYPE_AAAA = 28,
    DNS_TYPE_TLSA = 52,
};

/* The longest name as text, without the trailing dot (RFC 1035 2.3.4: 255 octets on the wire). */
#define DNS_NAME_MAX 253

struct dns_config {
    /*
     * "ip[:port], [ipv6]:port, ..." as c-ares's ares_set_servers_ports_csv
     * reads it; "" means the nameservers of /etc/resolv.conf.
     */
    char servers[512];
    uint64_t timeout_ms; /* first try per server; c-ares doubles it each round; 5 s */
    unsigned tries;      /* rounds over the servers; 2 (Postfix's resolver: RES_DFLRETRY) */
    unsigned cache_size; /* answers kept at most, oldest use out first; 10000; 0: no cache */
    /*
     * Bytes the cache may hold (parsed records and their bookkeeping); 16
     * MiB, least recently used out first. The count alone
     * would let a zone that answers with 64 KiB of TXT or 128 MX records
     * per name grow the cache by that much per name it gets us to ask.
     */
    size_t cache_max_bytes;
    uint32_t ttl_min;          /* positive answers kept at least (s); 5 */
    uint32_t ttl_max;          /* and at most (s); 3600 */
    uint32_t negative_ttl_min; /* NXDOMAIN and NODATA kept at least (s); 60 */
    uint32_t negative_ttl_max; /* and at most (s); 3600 */
    /*
     * Trust the AD bit of answers although a server is not on this host
     * ([dns] trust_ad; default false). Without it, AD is trusted only when
     * every server (the configured ones, or those of /etc/resolv.conf) is
     * a loopback address: 127.0.0.0/8 or ::1 (Postfix's rule, RFC 7672
     * section 1.3). See dns_ad_trusted.
     */
    bool trust_ad;
};

/*
 * dns_config_default - the defaults above into cfg. Inline, so that the
 * config parser (and its fuzz target) need not link the resolver.
 */
static inline void dns_config_default(struct dns_config *cfg)
{
    *cfg = (struct dns_config){
        .timeout_ms = 5000,
        .tries = 2,
        .cache_size = 10000,
        .cache_max_bytes = 16u << 20,
        .ttl_min = 5,
        .ttl_max = 3600,
        .negative_ttl_min = 60,
        .negative_ttl_max = 3600,
    };
}

enum dns_status {
    DNS_OK = 0,       /* records of the type asked for (n > 0) */
    DNS_NXDOMAIN = 1, /* the name does not exist (RCODE 3) */
    DNS_NODATA = 2,   /* the name exists but has no record of this type */
    DNS_TEMPFAIL = 3, /* SERVFAIL, REFUSED, timeout, network error, malformed answer, shutdown */
};

struct dns_mx {
    uint16_t pref;
    char host[DNS_NAME_MAX + 1]; /* no trailing dot; "" is the root (null MX, RFC 7505) */
};

struct dns_addr {
    int family;       /* AF_INET or AF_INET6 */
    uint8_t addr[16]; /* network order: 4 octets for AF_INET, 16 for AF_INET6 */
    uint32_t ttl;     /* this record's TTL as the answer gave it (s) */
};

struct dns_txt {
    const char *text; /* the record's strings joined, NUL-terminated (it may hold NULs) */
    size_t len;
};

struct dns_tlsa {
    uint8_t usage, selector, mtype; /* RFC 6698 2.1.1 to 2.1.3 */
    const uint8_t *data;            /* the certificate association data */
    size_t len;
};

/*
 * dns_result - what one lookup gave; borrowed by the callback, valid only
 * during it (copy what is kept). For DNS_OK, n records of type in the
 * member of the union that type names; n is 0 otherwise.
 */
struct dns_result {
    enum dns_status status;
    /*
     * DNS_TEMPFAIL: why, as a HAMR_E* code. ETIMEDOUT: no answer in time;
     * ECONNECT: every server answered SERVFAIL or REFUSED, or none could be
     * reached; EPROTO: a malformed answer or another RCODE; ENOMEM; EIO;
     * ECANCELED: dns_close. 0 otherwise.
     */
    int err;
    enum dns_type type;
    bool ad;     /* the answer's AD bit: the resolver validated it (DNSSEC, RFC 4035 3.2.3) */
    bool cached; /* served from the cache */
    /*
     * Seconds the answer stays cached: the smallest TTL of the records (and
     * of CNAMEs before them), or for NXDOMAIN and NODATA the SOA's (RFC 2308
     * section 5), within dns_config's bounds, less the time since it was
     * fetched. 0 for DNS_TEMPFAIL, which is never cached.
     */
    uint32_t ttl;
    size_t n;
    union {
        const struct dns_mx *mx;
        const struct dns_addr *addr; /* DNS_TYPE_A and DNS_TYPE_AAAA */
        const struct dns_txt *txt;
        const struct dns_tlsa *tlsa;
    } u;
    char why[96]; /* DNS_TEMPFAIL: a reason for the log, e.g. "malformed answer: ..." */
};

/*
 * dns_name_norm - name (len octets) checked and copied, in lower case and
 * without the one trailing dot it may have, into out (DNS_NAME_MAX + 1):
 * letters, digits, '-' and '_' (TLSA owners: "_25._tcp.mx.example") in
 * labels of 1 to 63 (RFC 1035 2.3.4). 0, or HAMR_EINVAL: a name dns_query
 * refuses.
 */
int dns_name_norm(const char *name, size_t len, char *out);

/* dns_result_null_mx - res is the null MX of RFC 7505: one MX, preference 0, host ".". */
bool dns_result_null_mx(const struct dns_result *res);

/* dns_status_name - "ok", "nxdomain", "nodata" or "tempfail". */
const char *dns_status_name(enum dns_status status);

struct dns;
struct dns_query;

/*
 * dns_query_cb - the one answer to a dns_query. Runs on the loop, never
 * inside dns_query, and not at all once dns_cancel was called. res is
 * borrowed for the call. The struct dns_query handle is gone when this runs.
 */
typedef void (*dns_query_cb)(void *arg, const struct dns_result *res);

/*
 * dns_new - a resolver on loop (borrowed; must outlive the resolver). cfg
 * is copied. 0 and *out, or HAMR_EINVAL (servers unreadable, tries 0),
 * HAMR_ENOMEM, HAMR_EIO (c-ares could not start); *out is then NULL.
 */
int dns_new(uv_loop_t *loop, const struct dns_config *cfg, struct dns **out);

/*
 * dns_query - look up name (copied; one trailing dot allowed; letters,
 * digits, '-' and '_' in labels of 1 to 63, DNS_NAME_MAX at most) for type.
 * A cached answer, or one already being fetched for the same name and type,
 * is shared. 0: cb(arg, res) runs exactly once, later, unless dns_cancel(*q)
 * comes first; q (may be NULL) gets the handle. Otherwise HAMR_EINVAL (the
 * name or the type), HAMR_ENOMEM or HAMR_ESHUTDOWN, and cb never runs.
 */
int dns_query(struct dns *r,
              const char *name,
              enum dns_type type,
              dns_query_cb cb,
              void *arg,
              struct dns_query **q);

/*
 * dns_cancel - the caller goes away: cb of q will not run. q is freed; it
 * must be a handle whose callback has not run yet.
 */
void dns_cancel(struct dns_query *q);

/*
 * dns_close - end the resolver. Every query still waiting is called back
 * first, from inside dns_close, with DNS_TEMPFAIL and err HAMR_ECANCELED
 * (the callback contract of STYLE.md: exactly once, even on shutdown);
 * dns_query on r fails with HAMR_ESHUTDOWN from then on. The handles are
 * closed; closed_cb(arg) (may be NULL) runs from the loop once they are,
 * and r is freed then. A second call does nothing.
 */
void dns_close(struct dns *r, void (*closed_cb)(void *arg), void *arg);

/*
 * dns_ad_trusted - may the AD bit of r's answers be believed (DNSSEC
 * validated by a resolver we trust)? true when the config said trust_ad,
 * or when every server c-ares uses is a loopback address; decided once,
 * at dns_new. DANE (net/mx.c) applies only then.
 */
bool dns_ad_trusted(const struct dns *r);

/* dns_loop - the loop r runs on, for a module built on r that needs a handle of its own. */
uv_loop_t *dns_loop(const struct dns *r);

/* dns_cache_entries - answers in the cache now (for tests and metrics). */
size_t dns_cache_entries(const struct dns *r);

/* dns_stats - what the resolver has answered since dns_new (for metrics). */
struct dns_stats {
    uint64_t answers[4]; /* callbacks by enum dns_status, cancellations on close too */
    uint64_t cache_hits; /* of those, answered from the cache */
    uint64_t sent;       /* queries sent to a server (lookups shared or cached are not) */
};

void dns_get_stats(const struct dns *r, struct dns_stats *out);

/*
 * dns_set_clock - the cache's clock in milliseconds (default: uv_now of the
 * loop). For tests: time that only the test advances.
 */
void dns_set_clock(struct dns *r, uint64_t (*now_ms)(void *arg), void *arg);

#endif
