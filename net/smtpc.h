/*
 * smtpc.h - the outbound SMTP client and its per-destination connection pool.
 *
 * Knows nothing of the queue: it is given a message (envelope and body) and
 * a next hop, and reports one result per recipient. RFC 5321 client: EHLO
 * (HELO fallback), MAIL (SIZE=, BODY=8BITMIME when offered), one RCPT per
 * recipient (PIPELINING when offered), DATA with dot-stuffing and CRLF-only
 * output, RSET between messages, QUIT. Several messages share a connection.
 * STARTTLS (RFC 3207) under a per-delivery policy: may, encrypt, verify.
 */
#ifndef HAMR_NET_SMTPC_H
#define HAMR_NET_SMTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

/*
 * smtpc_tls_policy - what a delivery demands of TLS (ordered: a larger value
 * is stricter). MAY: STARTTLS when offered, plaintext when not. ENCRYPT: TLS
 * or no delivery (SMTPC_TEMP), certificate not checked. VERIFY: as ENCRYPT,
 * plus the chain must lead to a trusted CA and the certificate must name the
 * next hop (its name, or its IP for a literal).
 */
enum smtpc_tls_policy {
    SMTPC_TLS_MAY = 0,
    SMTPC_TLS_ENCRYPT = 1,
    SMTPC_TLS_VERIFY = 2,
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
};

enum smtpc_status {
    SMTPC_OK = 0,   /* 2xx: delivered */
    SMTPC_TEMP = 1, /* 4xx, connection failure, timeout, malformed reply: retry */
    SMTPC_PERM = 2, /* 5xx: bounce */
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
 * A chunk that fails, or a read that returns an error, ends the attempt
 * before the final "." is sent: the connection is dropped in the middle of
 * DATA, so the next hop discards what it got (RFC 5321 4.1.1.4: only the
 * final "." completes a message), and every recipient still open gets
 * SMTPC_TEMP. A body that fails its check is never delivered.
 */
struct smtpc_source {
    void *data;
    int (*read)(void *data, smtpc_source_cb cb, void *cb_arg);
    void (*cancel)(void *data);
};

struct smtpc_msg {
    const char *sender;       /* without <>; "" for the null sender */
    const char *const *rcpts; /* without <> */
    size_t n_rcpts;
    const uint8_t *body;               /* CRLF line ends, not dot-stuffed; unused with a source */
    size_t body_len;                   /* with a source too: for SIZE= */
    const struct smtpc_source *source; /* not NULL: the body comes from here, in chunks */
    bool body_8bit;
};

struct smtpc_rcpt_result {
    enum smtpc_status status;
    unsigned code;  /* reply code, 0 when there was none */
    char text[512]; /* reply text (printable) or local reason */
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
    /* ENCRYPT or VERIFY: no STARTTLS offered; deferred, no MAIL was sent. */
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
    /* TLS up, chain and name checked (VERIFY); tls says which. */
    SMTPC_TLS_STATE_VERIFIED = 7,
};

struct smtpc_result {
    size_t n_rcpts;
    struct smtpc_rcpt_result *rcpts; /* n_rcpts entries, valid during the callback */
    char remote[128];                /* "ip:port" of the next hop, "" if none */
    char tls[96];                    /* "none", or e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384 verified"
                                        ("... unverified" when the policy did not check) */
    enum smtpc_tls_state tls_state;  /* why tls is "none", or how TLS was up */
};

/* smtpc_done_cb - one call per smtpc_pool_deliver that returned 0. */
typedef void (*smtpc_done_cb)(void *arg, const struct smtpc_result *res);

struct smtpc_pool;

/* smtpc_pool_new - a pool on loop; cfg is copied. NULL on no memory. */
struct smtpc_pool *smtpc_pool_new(uv_loop_t *loop, const struct smtpc_config *cfg);

/*
 * smtpc_pool_deliver - deliver m to host:port (IPv4/IPv6 literal or a name,
 * resolved with uv_getaddrinfo). Borrows m and everything it points to
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
 * certificate must match under SMTPC_TLS_VERIFY; NULL or "" means host.
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

/* smtpc_tls_policy_name - "may", "encrypt" or "verify". */
const char *smtpc_tls_policy_name(enum smtpc_tls_policy policy);

/* smtpc_tls_policy_parse - "may"|"encrypt"|"verify" (any case); 0 or HAMR_EINVAL. */
int smtpc_tls_policy_parse(const char *s, enum smtpc_tls_policy *out);

/*
 * smtpc_pool_close - fail queued and running deliveries with SMTPC_TEMP
 * ("shutdown"), close every connection, then call closed_cb and free the pool.
 */
void smtpc_pool_close(struct smtpc_pool *p, void (*closed_cb)(void *arg), void *arg);

/* smtpc_pool_active - deliveries queued or running (for tests and metrics). */
size_t smtpc_pool_active(const struct smtpc_pool *p);

#endif
