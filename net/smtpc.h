/*
 * smtpc.h - the outbound SMTP client and its per-destination connection pool.
 *
 * Knows nothing of the queue: it is given a message (envelope and body) and
 * a next hop, and reports one result per recipient. RFC 5321 client: EHLO
 * (HELO fallback), MAIL (SIZE=, BODY=8BITMIME when offered), one RCPT per
 * recipient (PIPELINING when offered), DATA with dot-stuffing and CRLF-only
 * output, RSET between messages, QUIT. Several messages share a connection.
 */
#ifndef HAMR_NET_SMTPC_H
#define HAMR_NET_SMTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct smtpc_config {
    char helo_name[256];           /* our EHLO name */
    uint64_t connect_timeout_ms;   /* TCP connect and 220 greeting; 30 s */
    uint64_t command_timeout_ms;   /* each command reply; 300 s */
    uint64_t data_done_timeout_ms; /* reply to the final "."; 600 s (RFC 5321 4.5.3.2.6) */
    uint64_t idle_timeout_ms;      /* an idle pooled connection is closed after; 10 s */
    unsigned max_conns_per_dest;   /* concurrent connections to one next hop; 10 */
    unsigned max_msgs_per_conn;    /* messages before the connection is renewed; 100 */
};

enum smtpc_status {
    SMTPC_OK = 0,   /* 2xx: delivered */
    SMTPC_TEMP = 1, /* 4xx, connection failure, timeout, malformed reply: retry */
    SMTPC_PERM = 2, /* 5xx: bounce */
};

struct smtpc_msg {
    const char *sender;        /* without <>; "" for the null sender */
    const char *const *rcpts;  /* without <> */
    size_t n_rcpts;
    const uint8_t *body;       /* CRLF line ends, not dot-stuffed */
    size_t body_len;
    bool body_8bit;
};

struct smtpc_rcpt_result {
    enum smtpc_status status;
    unsigned code;             /* reply code, 0 when there was none */
    char text[512];            /* reply text (printable) or local reason */
};

struct smtpc_result {
    size_t n_rcpts;
    struct smtpc_rcpt_result *rcpts; /* n_rcpts entries, valid during the callback */
    char remote[128];          /* "ip:port" of the next hop, "" if none */
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
int smtpc_pool_deliver(struct smtpc_pool *p, const char *host, uint16_t port,
                       const struct smtpc_msg *m, smtpc_done_cb cb, void *arg);

/*
 * smtpc_pool_close - fail queued and running deliveries with SMTPC_TEMP
 * ("shutdown"), close every connection, then call closed_cb and free the pool.
 */
void smtpc_pool_close(struct smtpc_pool *p, void (*closed_cb)(void *arg), void *arg);

/* smtpc_pool_active - deliveries queued or running (for tests and metrics). */
size_t smtpc_pool_active(const struct smtpc_pool *p);

#endif
