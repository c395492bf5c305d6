/*
 * smtpc.h - the outbound SMTP client and its per-destination connection pool.
 *
 * Knows nothing of the queue: it is given a message (envelope and body) and
 * a next hop, and reports one result per recipient. RFC 5321 client: EHLO
 * (HELO fallback), MAIL (SIZE=, BODY=8BITMIME when offered), one RCPT per
 * recipient (PIPELINING when offered), DATA with dot-stuffing and CRLF-only
 * output (BDAT chunks when CHUNKING is offered, RFC 3030), RSET between
 * messages, QUIT. Several messages share a connection.
 * STARTTLS (RFC 3207) under a per-delivery policy: may, encrypt, verify,
 * dane, dane-only (RFC 7672). SMTP AUTH (RFC 4954) with PLAIN or LOGIN
 * when a delivery carries credentials, only inside TLS unless the config
 * allows plaintext.
 */
#ifndef HAMR_NET_SMTPC_H
#define HAMR_NET_SMTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "net/smtp_ext.h"

/*
 * smtpc_tls_policy - what a delivery demands of TLS (ordered: a larger value
 * is stricter). MAY: STARTTLS when offered, plaintext when not. ENCRYPT: TLS
 * or no delivery (SMTPC_TEMP), certificate not checked. VERIFY: as ENCRYPT,
 * plus the chain must lead to a trusted CA and the certificate must name the
 * next hop (its name, or its IP for a literal).
 *
 * DANE (RFC 7672, Postfix's smtp_tls_security_level dane and dane-only):
 * the resolver is asked for TLSA records (smtpc_resolve_opts.dane) and
 * marks the targets that have usable ones (smtpc_target.dane). DANE: a
 * target with TLSA records needs STARTTLS and a certificate that matches
 * one of them (DANE-TA 2 or DANE-EE 3), else SMTPC_TEMP; a target
 * without is treated as MAY. DANE_ONLY: as DANE, but targets without
 * usable TLSA records are not used at all. The numbers keep the order of
 * the first three only: DANE is not "stricter" than VERIFY (without TLSA
 * records it is MAY); callers that combine policies decide how.
 */
enum smtpc_tls_policy {
    SMTPC_TLS_MAY = 0,
    SMTPC_TLS_ENCRYPT = 1,
    SMTPC_TLS_VERIFY = 2,
    SMTPC_TLS_DANE = 3,
    SMTPC_TLS_DANE_ONLY = 4,
};

enum smtpc_status {
    SMTPC_OK = 0,   /* 2xx: delivered */
    SMTPC_TEMP = 1, /* 4xx, connection failure, timeout, malformed reply: retry */
    SMTPC_PERM = 2, /* 5xx: bounce */
};

#define SMTPC_HOST_MAX 255

/*
 * TLSA records a target carries at most, and the longest association data
 * kept: a SHA-512 digest. A full-certificate or full-key record (matching
 * type 0) is longer than that and is left out (RFC 7672 3.1.2 advises
 * digests); a target whose records are all such has no usable TLSA.
 */
#define SMTPC_TLSA_MAX 8
#define SMTPC_TLSA_DATA_MAX 64

/* smtpc_tlsa - one usable TLSA record (RFC 6698 2.1): usage 2 or 3. */
struct smtpc_tlsa {
    uint8_t usage, selector, mtype;
    uint8_t len; /* octets of data, 1 to SMTPC_TLSA_DATA_MAX */
    uint8_t data[SMTPC_TLSA_DATA_MAX];
};

/* smtpc_target - one address a delivery may connect to, and the host it belongs to. */
struct smtpc_target {
    /*
     * The MX host, or the next hop's own name or literal: logged with the
     * address, sent as SNI, and matched against the certificate under
     * SMTPC_TLS_VERIFY unless the delivery named a verify_host.
     */
    char host[SMTPC_HOST_MAX + 1];
    struct sockaddr_storage addr; /* AF_INET or AF_INET6, with the port */
    /*
     * DANE (only when the resolve asked for it): the host has DNSSEC-secure
     * TLSA records, n_tlsa > 0 of them usable. Under SMTPC_TLS_DANE and
     * DANE_ONLY the connection then needs TLS and a certificate that
     * matches one of them; under the other policies it is not looked at.
     */
    bool dane;
    size_t n_tlsa;
    struct smtpc_tlsa tlsa[SMTPC_TLSA_MAX];
};

/*
 * smtpc_route - what a next hop resolved to. SMTPC_OK: n > 0 targets, in the
 * order to try them. SMTPC_TEMP or SMTPC_PERM: no target (n 0); every
 * recipient of the delivery gets this status, code and text, e.g. 556
 * "5.1.10 ... does not accept mail (nullMX)" or 451 "4.4.3 ... try again".
 */
struct smtpc_route {
    enum smtpc_status status;
    unsigned code;
    char text[256];
    size_t n;
    const struct smtpc_target *targets; /* borrowed for the callback */
    /*
     * SMTPC_TEMP because DANE made every host unusable (its TLSA lookup
     * failed, so it cannot be told to be safe to use): the result's
     * tls_state says SMTPC_TLS_STATE_DANE_UNUSABLE, not "no connection".
     */
    bool dane_unusable;
    /*
     * SMTPC_OK: nobody could have forged the lookup that chose the hosts.
     * Either there was no MX lookup (an IP literal, "[name]", or a name
     * resolved without a resolver: the operator named the host) or the MX
     * answer (or its NODATA, for the implicit MX) was DNSSEC-validated by
     * a resolver whose AD bit is trusted (RFC 7672 2.2.1). REQUIRETLS mail
     * needs this or MTA-STS patterns (RFC 8689 4.2.1). A resolver that
     * cannot tell leaves it false.
     */
    bool mx_secure;
};

typedef void (*smtpc_route_cb)(void *arg, const struct smtpc_route *route);

/*
 * smtpc_resolve_opts - what the delivery needs of the resolve besides the
 * addresses. dane: look up TLSA records where DNSSEC allows (RFC 7672
 * section 2.2) and fill smtpc_target.dane and .tlsa; false: no TLSA query
 * at all. A struct, so that more (MTA-STS MX patterns) can follow.
 */
struct smtpc_resolve_opts {
    bool dane;
    /*
     * MTA-STS enforce (RFC 8461 4.1): only MX hosts that match one of these
     * patterns ("mx.example.com", "*.example.com") may be used, and none
     * matching is a TEMP route ("4.7.5 MTA-STS: ..."). n_mx_patterns 0: no
     * filter. For MX lookups only: "[name]" and literals ignore it.
     */
    const char *const *mx_patterns;
    size_t n_mx_patterns;
};

/*
 * smtpc_resolver - how the pool turns a next hop into addresses. nexthop is
 * what smtpc_pool_deliver was given: an IP literal, bare or in brackets
 * ("192.0.2.1", "[192.0.2.1]", "[2001:db8::1]"), is itself; "[name]" is
 * the name's own addresses (no MX lookup, as in Postfix); a bare "name" is
 * the MX lookup of RFC 5321 section 5.1. port goes into every target.
 * opts (borrowed for the call, never NULL) says what else to look up.
 *   resolve: 0 and *handle: cb(cb_arg, route) runs exactly once, later,
 *            never inside resolve, unless cancel(data, *handle) comes
 *            first; or a HAMR_E* code, and cb never runs.
 *   cancel:  the caller goes away: cb must never run after this.
 * Without a resolver the pool takes literals as they are and resolves
 * names (bracketed or not, never MX) with uv_getaddrinfo.
 */
struct smtpc_resolver {
    void *data;
    int (*resolve)(void *data,
                   const char *nexthop,
                   uint16_t port,
                   const struct smtpc_resolve_opts *opts,
                   smtpc_route_cb cb,
                   void *cb_arg,
                   void **handle);
    void (*cancel)(void *data, void *handle);
};

struct smtpc_config {
    char helo_name[256];           /* our EHLO name */
    uint64_t connect_timeout_ms;   /* TCP connect and 220 greeting; 30 s */
    uint64_t command_timeout_ms;   /* each command reply; 300 s */
    uint64_t data_done_timeout_ms; /* reply to the final "."; 600 s (RFC 5321 4.5.3.2.6) */
    uint64_t idle_timeout_ms;      /* an idle pooled connection is closed after; 10 s */
    unsigned max_conns_per_dest;   /* concurrent connections to one next hop; 10 */
    unsigned max_msgs_per_conn;    /* messages before the connection is renewed; 100 */
    /*
     * STARTTLS client context (tls_client_ctx_new). The pool takes its
     * own reference. NULL: the pool makes one from tls_ca_file; if that fails
     * (logged), MAY goes plaintext and ENCRYPT/VERIFY deliveries are deferred.
     */
    SSL_CTX *tls_ctx;
    char tls_ca_file[1024]; /* PEM CA file for VERIFY; "" = the system trust store */
    /*
     * Next hops to addresses (borrowed; must outlive the pool). NULL:
     * literals, and uv_getaddrinfo for names.
     */
    const struct smtpc_resolver *resolver;
    /*
     * Per attempt (one connection's first job), as Postfix's
     * smtp_mx_address_limit and smtp_mx_session_limit: addresses tried at
     * most (5), and SMTP sessions (a greeting was read) at most (2). A
     * failed connect, a timeout or a lost connection before EHLO is
     * answered, or a refused greeting, EHLO or HELO moves on to the next
     * address while both allow; anything after EHLO does not.
     */
    unsigned address_limit;
    unsigned session_limit;
    /*
     * AUTH without TLS ([delivery] auth_plaintext): false (the default),
     * a delivery with credentials needs TLS whatever its policy (Postfix's
     * smtp_sasl_tls_security_options = noanonymous, noplaintext): with
     * no TLS it is deferred and the password is never sent.
     */
    bool auth_plaintext;
};

/*
 * smtpc_source_cb - the next chunk of a body from its source: status 0
 * with data (len bytes, borrowed until the client asks for the next chunk
 * or the attempt ends), last once the body is complete and proven (a
 * source that checks a digest says last only when it matched); or a
 * HAMR_E* code: the body cannot be sent as it should be.
 */
typedef void (*smtpc_source_cb)(void *arg, int status, const uint8_t *data, size_t len, bool last);

/*
 * smtpc_source - a message body that comes in chunks (read from disk while
 * it is sent), so that no more than a chunk of it need be in memory.
 *   read:   ask for the next chunk. 0: cb(cb_arg, ...) runs exactly once,
 *           later, never inside read, unless cancel comes first; or a
 *           HAMR_E* code, and cb never runs.
 *   cancel: the attempt ended while a chunk was asked for (connection
 *           lost, timeout, pool closing): cb must never run after this.
 *   withdrawn (optional, NULL: never): asked before a queued delivery
 *           takes a connection; true: it is no longer wanted, and it ends
 *           at once, every recipient SMTPC_TEMP "withdrawn before it
 *           started", without a connection (a lease that ran out while the
 *           delivery waited for one).
 * A chunk that fails, or a read that returns an error, ends the attempt
 * before the final "." (or BDAT ... LAST) is sent: the connection is
 * dropped in the middle of DATA, so the next hop discards what it got (RFC
 * 5321 4.1.1.4: only the final "." completes a message; RFC 3030 2: only
 * LAST does), and every recipient still open gets SMTPC_TEMP. A body that fails its check is never
 * delivered.
 */
struct smtpc_source {
    void *data;
    int (*read)(void *data, smtpc_source_cb cb, void *cb_arg);
    void (*cancel)(void *data);
    bool (*withdrawn)(void *data);
};

struct smtpc_msg {
    const char *sender;       /* without <>; "" for the null sender */
    const char *const *rcpts; /* without <> */
    size_t n_rcpts;
    const uint8_t *body;               /* CRLF line ends, not dot-stuffed; unused with a source */
    size_t body_len;                   /* with a source too: for SIZE= */
    const struct smtpc_source *source; /* not NULL: the body comes from here, in chunks */
    bool body_8bit;
    /*
     * The envelope extensions (net/smtp_ext.h). smtputf8: the message needs
     * SMTPUTF8; a next hop that does not offer it fails every recipient
     * for good with 5.6.7 (no downgrade). requiretls: REQUIRETLS (RFC 8689):
     * an MX lookup that was protected (smtpc_route.mx_secure, or MTA-STS
     * patterns in the delivery), verified TLS and a next hop that offers
     * REQUIRETLS, else 5.7.30; an unprotected MX lookup fails the
     * recipients before any connection.
     * Under every policy the certificate is then checked (by a TLSA record
     * where DANE has usable ones, else as under VERIFY), on connections
     * that carry no other mail; the first host that fails decides (no
     * other MX is tried). Both failures carry code 0 and a text that opens
     * with the enhanced status.
     * ret, envid and rcpt_dsn (n_rcpts entries or NULL) go out as RET=,
     * ENVID=, NOTIFY= and ORCPT= to a next hop that offers DSN.
     */
    bool smtputf8;
    bool requiretls;
    uint8_t ret;
    const char *envid;
    const struct smtp_dsn_rcpt *rcpt_dsn;
};

struct smtpc_rcpt_result {
    enum smtpc_status status;
    unsigned code;  /* reply code, 0 when there was none */
    char text[512]; /* reply text (printable) or local reason */
    /*
     * The next hop offered DSN and took this recipient (a 2xx to RCPT and
     * to the message), so it sends any further notice (RFC 3461 5.2.2):
     * hamr owes no "relayed" notice.
     */
    bool dsn_passed;
};

/*
 * smtpc_tls_state - what came of TLS on the connection an attempt used, set
 * by the client where it happens, so that callers need not read the
 * recipients' texts to learn why an attempt ran without TLS.
 */
enum smtpc_tls_state {
    /*
     * No SMTP session: the host did not resolve, the connect failed, or the
     * connection was lost, timed out or sent a malformed reply before EHLO
     * (or HELO) was accepted. Also every job that never got a connection.
     */
    SMTPC_TLS_STATE_NO_CONNECTION = 0,
    /* The greeting, EHLO or HELO was answered with a refusal (e.g. 554, 421). */
    SMTPC_TLS_STATE_REFUSED_BEFORE_EHLO = 1,
    /* MAY: EHLO (or HELO) listed no STARTTLS; the mail went in plaintext. */
    SMTPC_TLS_STATE_NOT_OFFERED = 2,
    /*
     * ENCRYPT or VERIFY, or credentials without auth_plaintext (AUTH
     * would go in plaintext): no STARTTLS offered; deferred, no MAIL (and
     * no AUTH) was sent.
     */
    SMTPC_TLS_STATE_NOT_OFFERED_REQUIRED = 3,
    /*
     * STARTTLS was offered but the pool has no TLS client context: MAY went
     * on in plaintext, ENCRYPT and VERIFY were deferred before MAIL.
     */
    SMTPC_TLS_STATE_NO_CLIENT_CTX = 4,
    /*
     * STARTTLS was sent but no TLS session came of it: refused, handshake
     * failed (under VERIFY: the certificate check too), timed out or the
     * connection was lost. Deferred under every policy, nothing sent in clear.
     */
    SMTPC_TLS_STATE_HANDSHAKE_FAILED = 5,
    /* TLS up, certificate not checked (MAY, ENCRYPT); tls says which. */
    SMTPC_TLS_STATE_UNVERIFIED = 6,
    /*
     * TLS up, chain and name checked (VERIFY), or the certificate matched
     * a TLSA record (DANE, DANE_ONLY: tls ends in "dane-verified").
     */
    SMTPC_TLS_STATE_VERIFIED = 7,
    /*
     * DANE, DANE_ONLY: the target has TLSA records but TLS did not come up
     * authenticated by them (no STARTTLS, a failed handshake, or no
     * record matched). Deferred, nothing sent in clear, no MAIL.
     */
    SMTPC_TLS_STATE_DANE_FAILED = 8,
    /*
     * DANE, DANE_ONLY: no target was usable before any connection: every
     * host's TLSA lookup failed, or (DANE_ONLY) none had usable TLSA
     * records or the resolver's AD bit is not trusted. Deferred.
     */
    SMTPC_TLS_STATE_DANE_UNUSABLE = 9,
};

struct smtpc_result {
    size_t n_rcpts;
    struct smtpc_rcpt_result *rcpts; /* n_rcpts entries, valid during the callback */
    char remote[128];                /* "ip:port" of the next hop, "" if none */
    char host[SMTPC_HOST_MAX + 1];   /* the target host of remote ("" if none) */
    unsigned n_tried;                /* addresses connected to (or tried) in this attempt */
    char tls[96];                    /* "none", or e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384 verified"
                                        ("... unverified" when the policy did not check,
                                        "... dane-verified" when a TLSA record matched) */
    enum smtpc_tls_state tls_state;  /* why tls is "none", or how TLS was up */
};

/* smtpc_done_cb - one call per smtpc_pool_deliver that returned 0. */
typedef void (*smtpc_done_cb)(void *arg, const struct smtpc_result *res);

struct smtpc_pool;

/* smtpc_pool_new - a pool on loop; cfg is copied. NULL on no memory. */
struct smtpc_pool *smtpc_pool_new(uv_loop_t *loop, const struct smtpc_config *cfg);

/*
 * smtpc_pool_deliver - deliver m to host:port, host a next hop as
 * smtpc_resolver describes it (resolved by the config's resolver, or
 * uv_getaddrinfo without one), trying its addresses in order within
 * address_limit and session_limit. Borrows m and everything it points to
 * until cb. Queues when max_conns_per_dest connections are busy; reuses idle
 * connections. Returns 0 (cb will run exactly once, never from inside this
 * call) or a HAMR_E* code (cb never runs).
 */
int smtpc_pool_deliver(struct smtpc_pool *p,
                       const char *host,
                       uint16_t port,
                       const struct smtpc_msg *m,
                       smtpc_done_cb cb,
                       void *arg);

/*
 * smtpc_pool_deliver_tls - smtpc_pool_deliver under a TLS policy (the plain
 * call is SMTPC_TLS_MAY). verify_host: the name (or IP literal) the
 * certificate must match under SMTPC_TLS_VERIFY; NULL or "" means the host
 * each target belongs to (the MX host name, or the next hop's own name).
 * Connections are pooled per host, port, policy and verify_host, so a
 * connection opened under one policy never carries mail for another.
 */
int smtpc_pool_deliver_tls(struct smtpc_pool *p,
                           const char *host,
                           uint16_t port,
                           enum smtpc_tls_policy policy,
                           const char *verify_host,
                           const struct smtpc_msg *m,
                           smtpc_done_cb cb,
                           void *arg);

/*
 * smtpc_delivery - where a delivery goes and what it demands: host and port
 * as smtpc_pool_deliver, policy and verify_host as smtpc_pool_deliver_tls,
 * the MTA-STS MX patterns the route must keep to (copied; see
 * smtpc_resolve_opts), and the credentials to authenticate with.
 * Connections are pooled per everything here, credentials included, so
 * that two users never share a connection.
 *
 * auth_user and auth_pass (copied; both NULL: no AUTH): after the last
 * EHLO the client sends AUTH PLAIN (RFC 4616), or AUTH LOGIN when PLAIN is
 * not offered, before any MAIL. User and password are 1..255 octets
 * without control characters. AUTH goes only inside TLS unless
 * smtpc_config.auth_plaintext: under MAY, STARTTLS is then required (no
 * STARTTLS, or no TLS client context: SMTPC_TEMP, "4.7.0 ... AUTH would be
 * sent in plaintext"). A next hop that lists no AUTH, or neither PLAIN nor
 * LOGIN, defers (Postfix would deliver without AUTH; a smarthost that wants
 * AUTH would refuse the mail anyway). Any reply but 235 to AUTH (535 bad
 * credentials, 454, another 5xx) defers every recipient ("SASL
 * authentication failed"), as Postfix does, and no further address of the
 * next hop is tried. The password is never logged.
 */
struct smtpc_delivery {
    const char *host;
    uint16_t port;
    enum smtpc_tls_policy policy;
    const char *verify_host;
    const char *const *mx_patterns;
    size_t n_mx_patterns;
    const char *auth_user;
    const char *auth_pass;
    /*
     * group (copied; NULL: none) names the next hop as the caller counts
     * it (e.g. "[10.0.0.1]:25"), across the policies, credentials and
     * REQUIRETLS variants the pool keeps apart. With group_per_conn > 0 the
     * group's connections are at most ceil(deliveries of the group queued
     * or running / group_per_conn), as well as max_conns_per_dest per
     * variant: a connection whose delivery ends with the group above that
     * (or with nothing queued for its variant while another variant's
     * delivery waits) says QUIT at once instead of taking the next delivery
     * or idling (without group_hold_ms no connection of the group idles),
     * and a delivery the cap holds back waits for one to end. So a caller that knows how many
     * deliveries each holder runs knows a bound on its connections (every
     * node's deliveries to one next hop, counted by the raft leader:
     * node/relay_spread.c). The last delivery's group_per_conn counts for
     * its whole group.
     */
    const char *group;
    unsigned group_per_conn;
    /*
     * group_hold_ms > 0: the cap counts the most deliveries the group had
     * lately (util/peak.h with this span: over the last group_hold_ms to 3
     * times that) rather than those it has now, so that connections are
     * kept, idle too (up to idle_timeout_ms), while the deliveries come and
     * go; the caller's own count must then look back at least 3 times as
     * far.
     */
    unsigned group_hold_ms;
};

/* smtpc_pool_deliver_to - smtpc_pool_deliver_tls with every field of dv. */
int smtpc_pool_deliver_to(struct smtpc_pool *p,
                          const struct smtpc_delivery *dv,
                          const struct smtpc_msg *m,
                          smtpc_done_cb cb,
                          void *arg);

/* smtpc_tls_policy_name - "may", "encrypt", "verify", "dane" or "dane-only". */
const char *smtpc_tls_policy_name(enum smtpc_tls_policy policy);

/*
 * smtpc_tls_policy_parse - "may"|"encrypt"|"verify"|"dane"|"dane-only"
 * (any case); 0 or HAMR_EINVAL.
 */
int smtpc_tls_policy_parse(const char *s, enum smtpc_tls_policy *out);

/*
 * smtpc_pool_close - fail queued and running deliveries with SMTPC_TEMP
 * ("shutdown"), close every connection, then call closed_cb and free the pool.
 */
void smtpc_pool_close(struct smtpc_pool *p, void (*closed_cb)(void *arg), void *arg);

/* smtpc_pool_active - deliveries queued or running (for tests and metrics). */
size_t smtpc_pool_active(const struct smtpc_pool *p);

/* smtpc_pool_group_conns - the connections of group now, closing ones included (for tests). */
unsigned smtpc_pool_group_conns(const struct smtpc_pool *p, const char *group);

/* smtpc_stats - what the pool's connections made of DANE since smtpc_pool_new (for metrics). */
struct smtpc_stats {
    uint64_t dane_verified; /* TLS sessions whose certificate matched a TLSA record */
    uint64_t dane_failed;   /* DANE targets deferred: no STARTTLS, handshake or match failed */
    uint64_t dane_unusable; /* attempts deferred before connecting: no DANE-usable host */
    uint64_t connections;   /* connections opened (each address tried counts) */
};

void smtpc_pool_get_stats(const struct smtpc_pool *p, struct smtpc_stats *out);

#endif
