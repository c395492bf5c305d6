/*
 * mta_sts.h - MTA-STS (RFC 8461): a domain's policy found in DNS, fetched
 * over HTTPS, parsed, and MX hosts matched against it.
 *
 * Two halves. The parsers (net/mta_sts_policy.c) are pure: no I/O, no
 * libuv, no OpenSSL, so the fuzz target links nothing else. The fetch
 * (net/mta_sts.c) runs on the loop of a net/dns resolver: the TXT record
 * of _mta-sts.<domain>, the addresses of mta-sts.<domain> (net/dns, never
 * the thread pool), then HTTPS GET /.well-known/mta-sts.txt with the
 * certificate checked against mta-sts.<domain>.
 *
 * What is left to the caller: the policy cache and its replication, the
 * rule that a cached policy with the TXT record's id need not be fetched
 * again (RFC 8461 5.1; sts_fetch_if_changed helps), keeping a cached
 * policy when a fetch fails (RFC 8461 5), and enforcement in delivery.
 *
 * Names: the module is net/mta_sts, but its exported names start with
 * "sts_" rather than "mta_sts_" (STYLE.md 2): they are the names the
 * delivery side was designed against, and "sts" is unambiguous in net/.
 *
 * Thread: the loop's only (the parsers: any). Errors: HAMR_EINVAL (bad
 * input, name or config), HAMR_ENOMEM, HAMR_EIO (no TLS context),
 * HAMR_ESHUTDOWN (sts_free was called), HAMR_ENOTFOUND (sts_txt_parse: not
 * an STS record).
 */
#ifndef HAMR_NET_MTA_STS_H
#define HAMR_NET_MTA_STS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The id of the TXT record: 1 to 32 letters and digits (RFC 8461 3.1). */
#define STS_ID_MAX 32
/* A host name or MX pattern as text, without trailing dot (RFC 1035 2.3.4). */
#define STS_HOST_MAX 253
/* MX patterns kept per policy at most; a policy with more is refused. */
#define STS_MX_MAX 64
/* The longest policy parsed, and the default body limit of a fetch. */
#define STS_POLICY_MAX (64 * 1024)
/* max_age at most (RFC 8461 3.2: 31557600 s, about a year). */
#define STS_MAX_AGE_MAX 31557600u

enum sts_mode {
    STS_MODE_NONE = 0,    /* "none": the domain withdraws its policy */
    STS_MODE_TESTING = 1, /* "testing": report, deliver anyway */
    STS_MODE_ENFORCE = 2, /* "enforce": only matching MX hosts with valid TLS */
};

/* sts_policy - a parsed policy file (RFC 8461 3.2). */
struct sts_policy {
    enum sts_mode mode;
    uint32_t max_age; /* seconds, 0 .. STS_MAX_AGE_MAX */
    size_t n_mx;
    /* Patterns in lower case: "mx.example.com" or "*.example.com"; none is fine for mode none. */
    char mx[STS_MX_MAX][STS_HOST_MAX + 1];
};

/* sts_mode_name - "none", "testing" or "enforce". */
const char *sts_mode_name(enum sts_mode mode);

/*
 * sts_txt_parse - one TXT record of _mta-sts.<domain> (len octets, need
 * not be NUL-terminated; the strings of the record joined): RFC 8461 3.1,
 * "v=STSv1; id=20160831085700Z;". v=STSv1 first; fields separated by ';'
 * with optional spaces or tabs around it, a trailing ';' allowed; id=
 * exactly once, 1 to 32 letters or digits; other name=value fields
 * ignored (their grammar checked). Case matters ("v=stsv1" is not it).
 * The id goes to id (idlen > STS_ID_MAX, NUL-terminated).
 *
 * 0; HAMR_ENOTFOUND: the record does not start with "v=STSv1" followed by
 * ';', a space, a tab or its end (another kind of TXT record, to be
 * discarded); HAMR_EINVAL: it does but is malformed (or idlen too small).
 *
 * Several records: RFC 8461 3.1 discards those that are not STS records
 * (HAMR_ENOTFOUND); unless exactly one is left, and it parses, the domain
 * has no policy. sts_fetch applies that rule; a caller parsing records
 * itself must do the same.
 */
int sts_txt_parse(const char *txt, size_t len, char *id, size_t idlen);

/*
 * sts_policy_parse - a policy file (len octets, at most STS_POLICY_MAX;
 * the text need not be NUL-terminated) into out: RFC 8461 3.2, "key:
 * value" lines ending in CRLF or LF (the last one may have none), spaces
 * or tabs after ':' and at the end of a line ignored, empty lines
 * ignored. version: STSv1, mode (none, testing or enforce) and max_age
 * (1 to 10 digits, at most STS_MAX_AGE_MAX) are required, each once;
 * mx: "host" or "*.host" (a wildcard as the whole left-most label only;
 * letters, digits and '-' in labels of 1 to 63, STS_HOST_MAX in all),
 * once per line, at least one unless mode is none, STS_MX_MAX at most.
 * Keys and values are case-sensitive (RFC 8461 uses %s strings); mx
 * patterns are stored lower case. Unknown keys are ignored if their
 * name and value are well formed (RFC 8461 3.2 sts-policy-ext-name and
 * -value); a NUL, a bare CR or another control octet anywhere refuses
 * the policy.
 *
 * 0, or HAMR_EINVAL with a reason for the log in why (whylen octets,
 * may be 0), e.g. "line 3: mode \"strict\" unknown"; out is then zeroed.
 */
int sts_policy_parse(const char *text,
                     size_t len,
                     struct sts_policy *out,
                     char *why,
                     size_t whylen);

/*
 * sts_mx_match - host (an MX host name, NUL-terminated; any case, one
 * trailing dot ignored) matches one of p's patterns (RFC 8461 4.1): equal
 * ignoring case, or "*.rest" with host one label (non-empty) followed by
 * ".rest": "*.example.com" matches "mx.example.com", not
 * "a.b.example.com" nor "example.com". The mode is not looked at.
 */
bool sts_mx_match(const struct sts_policy *p, const char *host);

/* sts_pattern_match - host matches the one pattern pat, as sts_mx_match says. */
bool sts_pattern_match(const char *pat, const char *host);

/* The fetch, on the loop. */

struct dns;
struct ssl_ctx_st; /* OpenSSL's SSL_CTX, so that the parsers' users need no OpenSSL header */

struct sts_config {
    uint64_t timeout_ms; /* the whole fetch, DNS to the last octet; 0: 30 s */
    uint16_t https_port; /* where the policy host listens; 0: 443 */
    size_t max_body;     /* policy octets accepted at most; 0 (or more): STS_POLICY_MAX */
    /*
     * CA certificates (PEM) the policy host's chain must lead to when
     * sts_new is given no context; "": the system trust store.
     */
    char ca_file[256];
};

enum sts_status {
    STS_OK = 0,        /* policy fetched and parsed: id and policy set */
    STS_NONE = 1,      /* no policy: no STS TXT record (NXDOMAIN, NODATA, none or several) */
    STS_TEMPFAIL = 2,  /* the TXT lookup failed for now or outlasted the timeout; sts_free */
    STS_FAILED = 3,    /* a TXT record, but no policy: address, TCP, TLS, HTTP or parse */
    STS_UNCHANGED = 4, /* sts_fetch_if_changed: the TXT id is the known one; id set, no policy */
};

/* sts_status_name - "ok", "none", "tempfail", "failed", "unchanged". */
const char *sts_status_name(enum sts_status status);

/* sts_result - one fetch's outcome; borrowed by the callback, valid during it only. */
struct sts_result {
    enum sts_status status;
    /*
     * A HAMR_E* code, 0 for OK, NONE and UNCHANGED: TIMEDOUT (the timeout),
     * SHUTDOWN (sts_free), CONNECT (no address answered), PROTO (TLS or
     * HTTP), INVAL (the policy), TOOBIG (the body), NOTFOUND (no address),
     * NOMEM, and for TEMPFAIL what the DNS lookup said.
     */
    int err;
    char domain[STS_HOST_MAX + 1];
    char id[STS_ID_MAX + 1];  /* the TXT record's id (OK, FAILED, UNCHANGED), else "" */
    struct sts_policy policy; /* OK only */
    char why[256];            /* not OK: a reason for the log (untrusted text escaped) */
};

/*
 * sts_fetch_cb - the one outcome of a fetch; runs on the loop, never inside
 * sts_fetch, and not at all after sts_cancel. res is borrowed for the call;
 * the handle is gone when this runs. The callback may call sts_fetch,
 * sts_cancel on other fetches, or sts_free.
 */
typedef void (*sts_fetch_cb)(void *arg, const struct sts_result *res);

struct sts;
struct sts_fetch;

/*
 * sts_new - fetches on dns (borrowed; must outlive s) and its loop. ctx: a
 * TLS client context (up-referenced, the caller may free its own; the
 * host name check is made per connection), or NULL for one made from
 * cfg->ca_file (tls_client_ctx_new: TLS 1.2 and later). cfg copied. 0 and
 * *out, or HAMR_EINVAL (cfg), HAMR_ENOMEM, HAMR_EIO (the context could not
 * be made; logged).
 */
int sts_new(struct dns *dns,
            struct ssl_ctx_st *ctx,
            const struct sts_config *cfg,
            struct sts **out);

/*
 * sts_fetch - the policy of domain (copied; one trailing dot allowed; a
 * name net/dns accepts, short enough for "_mta-sts." before it). 0:
 * cb(arg, res) runs exactly once, later, unless sts_cancel(*handle) comes
 * first; handle (may be NULL) gets the fetch. Otherwise HAMR_EINVAL (the
 * name), HAMR_ENOMEM or HAMR_ESHUTDOWN, and cb never runs. Every call
 * fetches: a cache is the caller's.
 */
int sts_fetch(struct sts *s,
              const char *domain,
              sts_fetch_cb cb,
              void *arg,
              struct sts_fetch **handle);

/*
 * sts_fetch_if_changed - sts_fetch, but when the TXT record's id equals
 * known_id (copied; NULL or "": always fetch), the outcome is
 * STS_UNCHANGED with no HTTPS request (RFC 8461 5.1: a cached policy
 * whose id is current need not be fetched again).
 */
int sts_fetch_if_changed(struct sts *s,
                         const char *domain,
                         const char *known_id,
                         sts_fetch_cb cb,
                         void *arg,
                         struct sts_fetch **handle);

/*
 * sts_cancel - the caller goes away: f's callback will not run. f must be
 * a fetch whose callback has not run; its lookups are cancelled and its
 * connection closed (its memory goes when the loop has closed the
 * handles).
 */
void sts_cancel(struct sts_fetch *f);

/*
 * sts_free - end s. Every fetch still pending is called back first, from
 * inside sts_free, with STS_TEMPFAIL, err HAMR_ESHUTDOWN, why "shutdown"
 * (exactly once, as mx_free does); sts_fetch fails with HAMR_ESHUTDOWN
 * from inside those callbacks. s is freed before sts_free returns; the
 * fetches' handles close on the loop's next turn (run the loop before
 * uv_loop_close). Call it before dns_close of s's resolver. NULL is fine.
 */
void sts_free(struct sts *s);

#endif
