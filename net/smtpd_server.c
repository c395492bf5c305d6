/*
 * smtpd_server.c - the inbound SMTP listener: libuv TCP under smtpd_session.
 *
 * Owns: the listener (a net/tcp_server) and every connection (struct
 * smtpd_conn: a uv_tcp_t, a uv_timer_t, a fixed read buffer and its
 * session; tcp_server closes the handles and counts them). Exports
 * smtpd_server.h. Converts UV_E* codes to HAMR_E* here and nowhere else.
 *
 * Happy path:
 *   accept -> session (CONNECTED) -> greet (now, or after greet_delay) ->
 *   reads go to smtpd_session_input(); replies come back through io.write
 *   (uv_write, buffer owned until the write callback) -> the session calls
 *   io.close -> uv_shutdown flushes what was written -> uv_close on both
 *   handles -> the last close callback frees the session and the connection.
 * Failure modes:
 *   a read error or reset closes at once (pending writes are cancelled);
 *   EOF closes after flushing; a peer that never drains our output is cut
 *   after SMTPD_SERVER_LINGER_MS; over max_sessions, over a per-client
 *   limit or while draining the client is accepted, told 421 and closed.
 *   A session whose client went away while a submit was pending outlives
 *   its connection (smtpd_session_free) until the sink calls back.
 *
 * PROXY protocol (smtpd_server_set_proxy): the connection must come from a
 * proxy_networks address, or it is closed at once without a word. Then the
 * header is read with smtpd_proxy before any session exists or anything is
 * written; it must be complete within proxy_timeout. A bad or late header
 * closes the connection, again without a greeting; there is no fallback to
 * the socket address (SECURITY.md S18). Each refusal is logged with its
 * reason. A good header sets the client address the session, relay control
 * and Received: see, then the session starts as for any connection, and
 * octets that followed the header in the same read are its first input.
 * Connections waiting for a header count against max_sessions.
 *
 * Per-client limits (smtpd_server_set_limits, SECURITY.md S15): concurrent
 * connections and connection attempts per minute per client address, kept
 * in smtpd_limits.c. The address is the client's: the PROXY source when a
 * trusted balancer sent a header (a v2 LOCAL health check is not limited),
 * else the socket peer. It is checked when the session would start, after
 * max_sessions and draining; over a limit the client hears "421 4.7.0
 * <host> Error: too many connections from <ip>" and is closed. A session
 * holds its count until its connection is freed. Exempt networks are
 * neither limited nor counted; loopback is not exempt unless listed. The
 * same table counts AUTH commands per client address (io.auth_rate, the
 * limits' auth_rate); the session answers 450 4.7.1 over it.
 *
 * Stress (SECURITY.md S14, Postfix's overload behaviour): while at least
 * SMTPD_SERVER_STRESS_PCT % of max_sessions are open, io.stressed says so
 * and sessions cap every new command and DATA wait at the policy's
 * stress_timeout_ms; waits already running keep their deadline. The start
 * and the end of stress are logged once each. The sessions' clock (io.now)
 * is the loop's, moved on by smtpd_server_advance_clock() in tests.
 *
 * Global cap with back-pressure: two bounds. max_sessions bounds the
 * sessions (and PROXY header waits); past it a client is still accepted
 * and told 421 4.7.0 at once, so it retries another MX or node rather than
 * wait with no word (an SMTP client's connect timeout is long, and the
 * balancer can send it elsewhere). Every refused client holds a socket
 * until its 421 is flushed, so a flood could still eat file descriptors,
 * which the raft and peer listeners of this process need too. Hence
 * max_connections (default max_sessions + SMTPD_SERVER_REFUSING_MAX)
 * bounds the accepted sockets of every kind: at it, tcp_server
 * (TCP_SERVER_CAP_PAUSE) leaves the connection unaccepted. libuv (unix
 * stream.c, uv__server_io) then keeps the one connection it took, stops
 * polling the listener, and the rest wait in the kernel backlog
 * (smtpd_policy.listen_backlog, 1024 by default; beyond it the kernel
 * drops SYNs and clients retry, which with 128 left about 140 of 600
 * simultaneous connects without a banner for a second or more). When a connection is freed,
 * tcp_server calls uv_accept, which restarts the polling. The raft and peer listeners are other
 * sockets on the same loop: pausing this one never delays them, and the fd bound keeps them able to
 * accept and connect. A client that gets no memory is accepted and closed at once (tcp_server), so
 * the listener never stalls.
 *
 * STARTTLS (smtpd_server_set_tls): the session answers 220 and calls
 * io.starttls; from then on the connection owns a TLS engine
 * (tls.c, memory BIOs). Ciphertext from uv_read is fed to it, the
 * handshake advances without blocking, and only decrypted octets reach the
 * session; session output is encrypted and the ciphertext goes out through
 * uv_write. A failed handshake is logged with OpenSSL's reason and closes
 * the connection; the session's command timeout bounds the handshake. The
 * context is replaced by smtpd_server_reload_tls(); connections keep the
 * context they started with (OpenSSL counts the references).
 *
 * AUTH password checks (io.auth_check): PBKDF2 costs tens of ms of CPU,
 * too much for the loop thread, which also runs raft. Each check copies
 * user and password into a struct smtpd_auth_work, holds a reference to
 * the credentials table current at that moment (a reload cannot free it
 * under the worker) and runs on libuv's thread pool (uv_queue_work). At
 * most SMTPD_SERVER_AUTH_RUNNING checks are queued to the pool at once, so
 * AUTH never fills the pool raft's disk I/O shares; further checks wait in
 * a FIFO. The copy of the password is wiped after the check. A check
 * outlives the connection that asked for it (the session lingers until the
 * callback), and the server is not freed before every check has ended.
 *
 * Memory: reads land in a fixed per-connection buffer, so input per read
 * is bounded; the session bounds what it holds. Handles are embedded in
 * their connection and freed only in the close callbacks.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/tcp_server.h"
#include "net/tls.h"
#include "net/smtpd.h"
#include "net/smtpd_auth.h"
#include "net/smtpd_limits.h"
#include "net/smtpd_proxy.h"
#include "net/smtpd_reply.h"
#include "net/smtpd_server.h"
#include "net/smtpd_session.h"
#include "net/smtpd_tls.h"

#define SMTPD_SERVER_READ_MAX (16 * 1024)  /* one read at most */
#define SMTPD_SERVER_LINGER_MS 10000       /* flushing output on close, at most */
#define SMTPD_SERVER_PROXY_TIMEOUT_MS 5000 /* proxy_timeout default, as Postfix's */
#define SMTPD_SERVER_REFUSING_MAX 64       /* sockets being refused, past max_sessions */
#define SMTPD_SERVER_LIMITS_IDLE 10000     /* addresses remembered for their rate only */
#define SMTPD_SERVER_AUTH_RUNNING 4        /* AUTH checks in the thread pool at once */
#define SMTPD_SERVER_STRESS_PCT 80         /* sessions in % of max_sessions: under load */

struct smtpd_server {
    uv_loop_t *loop;
    struct tcp_server *tcp; /* the listener and the connections' handles; NULL once closed */
    const struct smtpd_policy *policy;
    struct smtpd_sink sink;
    size_t max_sessions;
    size_t n_sessions;
    uint16_t port;
    uint64_t greet_delay_ms;
    bool proxy_on;                           /* a PROXY header comes first */
    const struct smtpd_cidr *proxy_networks; /* borrowed: the balancers */
    size_t n_proxy_networks;
    uint64_t proxy_timeout_ms;
    size_t n_proxy_wait;         /* connections still reading their header */
    struct smtpd_limits *limits; /* per-client counters */
    uint64_t clock_skew_ms;      /* smtpd_server_advance_clock(), tests only */
    SSL_CTX *tls_ctx;            /* NULL: STARTTLS not offered */
    char tls_cert_file[1024];    /* kept for smtpd_server_reload_tls() */
    char tls_key_file[1024];
    bool draining;
    bool stressed; /* at least SMTPD_SERVER_STRESS_PCT % of max_sessions open */
    bool closing;
    size_t auth_running;                           /* checks handed to the thread pool */
    struct smtpd_auth_work *auth_head, *auth_tail; /* checks waiting for a slot */
    smtpd_server_close_cb close_cb;
    void *close_arg;
};

/* smtpd_conn - one TCP connection. */
struct smtpd_conn {
    struct tcp_server_conn base;
    struct smtpd_server *server;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    struct smtpd_session *session; /* NULL for a refused client */
    bool reading;
    bool closing;
    bool greeted;
    bool proxy_wait;                    /* reading the PROXY header; no session yet */
    bool limits_held;                   /* counted in server->limits for client_addr */
    char client_addr[INET6_ADDRSTRLEN]; /* from the PROXY header, else peer_addr */
    char peer_addr[INET6_ADDRSTRLEN];   /* the socket's peer: the balancer if proxied */
    struct smtpd_proxy_parser proxy;
    struct tls *tls; /* after STARTTLS */
    bool tls_up;     /* handshake done */
    char rbuf[SMTPD_SERVER_READ_MAX];
};

/* smtpd_auth_work - one AUTH check for the thread pool; user and pass follow the struct. */
struct smtpd_auth_work {
    uv_work_t req;
    struct smtpd_server *server;
    struct smtpd_auth_work *next;   /* in the FIFO */
    struct smtpd_auth_table *table; /* a held reference */
    void (*done)(void *arg, int rc);
    void *arg;
    int rc;
    size_t user_len;
    size_t pass_len;
    char data[]; /* user, then pass */
};

/* smtpd_write - one uv_write request with its own copy of the octets. */
struct smtpd_write {
    uv_write_t req;
    struct smtpd_conn *conn;
    size_t len;
    char data[];
};

static void smtpd_server_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void smtpd_server_proxy_input(struct smtpd_conn *c, const char *data, size_t len);
static void smtpd_server_proxy_refuse(struct smtpd_conn *c, const char *reason);
static int smtpd_server_tls_flush(struct smtpd_conn *c);

/* smtpd_server_maybe_finish - after close: free the server once everything is gone. */
static void smtpd_server_maybe_finish(struct smtpd_server *s)
{
    if (!s->closing || s->tcp != NULL || s->auth_running > 0 || s->auth_head != NULL)
        return;
    smtpd_server_close_cb cb = s->close_cb;
    void *arg = s->close_arg;
    log_info("smtpd closed port=%u", (unsigned)s->port);
    SSL_CTX_free(s->tls_ctx);
    s->limits = smtpd_limits_free(s->limits);
    free(s);
    if (cb != NULL)
        cb(arg);
}

/* smtpd_server_now - the limits' clock: the loop's, moved on by the test hook. */
static uint64_t smtpd_server_now(const struct smtpd_server *s)
{
    return uv_now(s->loop) + s->clock_skew_ms;
}

/* smtpd_server_stress_update - after the session count changed: log entering or leaving stress. */
static void smtpd_server_stress_update(struct smtpd_server *s)
{
    bool stressed =
        s->max_sessions > 0 && s->n_sessions * 100 >= s->max_sessions * SMTPD_SERVER_STRESS_PCT;
    if (stressed == s->stressed)
        return;
    s->stressed = stressed;
    if (stressed)
        log_warn("smtpd stress begins sessions=%zu max_sessions=%zu stress_timeout_ms=%llu",
                 s->n_sessions, s->max_sessions, (unsigned long long)s->policy->stress_timeout_ms);
    else
        log_info("smtpd stress ends sessions=%zu max_sessions=%zu", s->n_sessions, s->max_sessions);
}

/* smtpd_server_conn_free_cb - every handle has closed: free the session and the connection. */
static void smtpd_server_conn_free_cb(void *data, struct tcp_server_conn *base)
{
    struct smtpd_conn *c = hamr_container_of(base, struct smtpd_conn, base);
    struct smtpd_server *s = data;

    if (c->proxy_wait) {
        c->proxy_wait = false;
        s->n_proxy_wait--;
    }
    if (c->session != NULL) {
        c->session = smtpd_session_free(c->session);
        s->n_sessions--;
        smtpd_server_stress_update(s);
    }
    if (c->limits_held) {
        c->limits_held = false;
        smtpd_limits_release(s->limits, c->client_addr, smtpd_server_now(s));
    }
    c->tls = tls_free(c->tls);
    free(c);
}

/* smtpd_server_conn_abort - close both handles now; pending writes are cancelled. */
static void smtpd_server_conn_abort(struct smtpd_conn *c)
{
    c->closing = true;
    tcp_server_conn_close(&c->base);
    /* Asynchronous processing continues in smtpd_server_conn_free_cb(). */
}

/* smtpd_server_shutdown_cb - written output is flushed (or failed): close. */
static void smtpd_server_shutdown_cb(uv_shutdown_t *req, int status)
{
    smtpd_server_conn_abort(req->data);
}

/* smtpd_server_linger_cb - the peer did not take our last output in time. */
static void smtpd_server_linger_cb(uv_timer_t *timer)
{
    struct smtpd_conn *c = hamr_container_of(timer, struct smtpd_conn, timer);
    log_info("smtpd close client=%s reason=linger-timeout", c->client_addr);
    smtpd_server_conn_abort(c);
}

/* smtpd_server_conn_close - stop reading, flush what was written, then close. Idempotent. */
static void smtpd_server_conn_close(struct smtpd_conn *c)
{
    if (c->closing)
        return;
    if (c->tls_up) {
        tls_shutdown(c->tls);
        smtpd_server_tls_flush(c);
    }
    c->closing = true;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    uv_timer_start(&c->timer, smtpd_server_linger_cb, SMTPD_SERVER_LINGER_MS, 0);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, smtpd_server_shutdown_cb) != 0)
        smtpd_server_conn_abort(c);
    /* Asynchronous processing continues in smtpd_server_shutdown_cb(). */
}

/* smtpd_server_write_cb - a write finished: release its buffer, maybe resume the session. */
static void smtpd_server_write_cb(uv_write_t *req, int status)
{
    struct smtpd_write *w = req->data;
    struct smtpd_conn *c = w->conn;

    free(w);
    if (status == UV_ECANCELED || c->closing)
        return;
    if (status < 0) {
        log_info("smtpd write failed client=%s err=%s", c->client_addr, uv_strerror(status));
        smtpd_server_conn_abort(c);
        return;
    }
    if (c->session != NULL)
        smtpd_session_write_done(c->session);
}

/* smtpd_server_write_raw - copy and queue octets for the socket. */
static int smtpd_server_write_raw(struct smtpd_conn *c, const void *buf, size_t len)
{
    if (c->closing)
        return HAMR_EIO;
    struct smtpd_write *w = malloc(sizeof(*w) + len);
    if (w == NULL)
        return HAMR_ENOMEM;
    w->conn = c;
    w->len = len;
    w->req.data = w;
    memcpy(w->data, buf, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, smtpd_server_write_cb) != 0) {
        free(w);
        return HAMR_EIO;
    }
    return 0;
}

/* smtpd_server_tls_flush - send the ciphertext the TLS engine produced. */
static int smtpd_server_tls_flush(struct smtpd_conn *c)
{
    const char *out;
    size_t n = tls_output(c->tls, &out);

    if (n == 0)
        return 0;
    int rc = smtpd_server_write_raw(c, out, n);
    tls_output_done(c->tls, n);
    return rc;
}

/* smtpd_server_io_write - session io: octets for the client, encrypted after STARTTLS. */
static int smtpd_server_io_write(void *data, const void *buf, size_t len)
{
    struct smtpd_conn *c = data;

    if (c->tls == NULL)
        return smtpd_server_write_raw(c, buf, len);
    if (c->closing || !c->tls_up)
        return HAMR_EIO; /* nothing can be said in the middle of a handshake */
    int rc = tls_write(c->tls, buf, len);
    if (rc != 0) {
        log_info("smtpd tls write failed client=%s err=\"%s\"", c->client_addr, tls_error(c->tls));
        return rc;
    }
    return smtpd_server_tls_flush(c);
}

/* smtpd_server_io_starttls - session io: the 220 is queued; TLS from the next octet. */
static int smtpd_server_io_starttls(void *data)
{
    struct smtpd_conn *c = data;

    if (c->server->tls_ctx == NULL || c->tls != NULL)
        return HAMR_EINVAL;
    return tls_new(c->server->tls_ctx, true, NULL, false, &c->tls);
}

/* smtpd_server_alloc_cb - every read goes into the connection's fixed buffer. */
static void smtpd_server_alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct smtpd_conn *c = hamr_container_of(handle, struct smtpd_conn, tcp);
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* smtpd_server_io_pause - session io: stop reading. */
static void smtpd_server_io_pause(void *data)
{
    struct smtpd_conn *c = data;
    if (c->reading && !c->closing) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* smtpd_server_io_resume - session io: read again. */
static void smtpd_server_io_resume(void *data)
{
    struct smtpd_conn *c = data;
    if (!c->reading && !c->closing) {
        if (uv_read_start((uv_stream_t *)&c->tcp, smtpd_server_alloc_cb, smtpd_server_read_cb) == 0)
            c->reading = true;
        else
            smtpd_server_conn_abort(c);
    }
}

/* smtpd_server_io_close - session io: hang up after flushing. */
static void smtpd_server_io_close(void *data)
{
    smtpd_server_conn_close(data);
}

/* smtpd_server_timer_cb - the session's deadline, or the delayed greeting. */
static void smtpd_server_timer_cb(uv_timer_t *timer)
{
    struct smtpd_conn *c = hamr_container_of(timer, struct smtpd_conn, timer);

    if (c->closing || c->session == NULL)
        return;
    if (c->tls != NULL && !c->tls_up) {
        log_info("smtpd tls handshake failed client=%s err=timeout", c->client_addr);
        smtpd_server_conn_abort(c);
        return;
    }
    if (!c->greeted) {
        c->greeted = true;
        smtpd_session_greet(c->session);
        return;
    }
    log_info("smtpd timeout client=%s", c->client_addr);
    smtpd_session_timeout(c->session);
}

/* smtpd_server_io_set_timer - session io: (re)start or stop the deadline. */
static void smtpd_server_io_set_timer(void *data, uint64_t ms)
{
    struct smtpd_conn *c = data;

    if (c->closing)
        return;
    if (ms == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, smtpd_server_timer_cb, ms, 0);
}

/* smtpd_server_io_write_queued - session io: octets not yet handed to the kernel. */
static size_t smtpd_server_io_write_queued(void *data)
{
    struct smtpd_conn *c = data;
    return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
}

/* smtpd_server_auth_work_cb - on a pool thread: the PBKDF2 check. */
static void smtpd_server_auth_work_cb(uv_work_t *req)
{
    struct smtpd_auth_work *w = req->data;
    w->rc =
        smtpd_auth_table_verify(w->table, w->data, w->user_len, w->data + w->user_len, w->pass_len);
}

/* smtpd_server_auth_work_free - wipe and release a check's copies. */
static void smtpd_server_auth_work_free(struct smtpd_auth_work *w)
{
    OPENSSL_cleanse(w->data, w->user_len + w->pass_len);
    smtpd_auth_table_put(w->table);
    free(w);
}

static void smtpd_server_auth_after_cb(uv_work_t *req, int status);

/* smtpd_server_auth_start - hand waiting checks to the pool while slots are free. */
static void smtpd_server_auth_start(struct smtpd_server *s)
{
    while (s->auth_running < SMTPD_SERVER_AUTH_RUNNING && s->auth_head != NULL) {
        struct smtpd_auth_work *w = s->auth_head;
        s->auth_head = w->next;
        if (s->auth_head == NULL)
            s->auth_tail = NULL;
        w->next = NULL;
        int rv =
            uv_queue_work(s->loop, &w->req, smtpd_server_auth_work_cb, smtpd_server_auth_after_cb);
        HAMR_ASSERT(rv == 0); /* fails only without a work callback */
        s->auth_running++;
    }
}

/* smtpd_server_auth_after_cb - on the loop: pass the answer on, start the next check. */
static void smtpd_server_auth_after_cb(uv_work_t *req, int status)
{
    struct smtpd_auth_work *w = req->data;
    struct smtpd_server *s = w->server;
    void (*done)(void *, int) = w->done;
    void *arg = w->arg;
    int rc = status == 0 ? w->rc : HAMR_EPERM;

    HAMR_ASSERT(s->auth_running > 0);
    s->auth_running--;
    smtpd_server_auth_work_free(w);
    smtpd_server_auth_start(s);
    done(arg, rc);
    smtpd_server_maybe_finish(s);
}

/* smtpd_server_io_auth_check - copy the credentials, queue the check (or wait for a slot). */
static int smtpd_server_io_auth_check(void *data,
                                      const struct smtpd_auth *auth,
                                      const char *user,
                                      size_t user_len,
                                      const char *pass,
                                      size_t pass_len,
                                      void (*done)(void *arg, int rc),
                                      void *arg)
{
    struct smtpd_conn *c = data;
    struct smtpd_server *s = c->server;

    if (user_len > SMTPD_AUTH_USER_MAX)
        return HAMR_EINVAL;
    if (pass_len > SMTPD_AUTH_PASS_MAX + 1)
        pass_len = SMTPD_AUTH_PASS_MAX + 1; /* still too long: never matches */
    struct smtpd_auth_work *w = malloc(sizeof(*w) + user_len + pass_len);
    if (w == NULL)
        return HAMR_ENOMEM;
    memset(w, 0, sizeof(*w));
    w->req.data = w;
    w->server = s;
    w->done = done;
    w->arg = arg;
    w->user_len = user_len;
    w->pass_len = pass_len;
    memcpy(w->data, user, user_len);
    memcpy(w->data + user_len, pass, pass_len);
    w->table = smtpd_auth_table_get(auth);
    if (s->auth_tail != NULL)
        s->auth_tail->next = w;
    else
        s->auth_head = w;
    s->auth_tail = w;
    smtpd_server_auth_start(s);
    return 0;
}

/* smtpd_server_io_now - session io: the loop's clock, as the limits see it. */
static uint64_t smtpd_server_io_now(void *data)
{
    struct smtpd_conn *c = data;
    return smtpd_server_now(c->server);
}

/* smtpd_server_io_auth_rate - session io: count an AUTH command of this client. */
static int smtpd_server_io_auth_rate(void *data)
{
    struct smtpd_conn *c = data;
    struct smtpd_server *s = c->server;
    return smtpd_limits_auth(s->limits, c->client_addr, smtpd_server_now(s));
}

/* smtpd_server_io_stressed - session io: is the server under load? */
static bool smtpd_server_io_stressed(void *data)
{
    struct smtpd_conn *c = data;
    return c->server->stressed;
}

static const struct smtpd_session_io smtpd_server_io = {
    .write = smtpd_server_io_write,
    .pause = smtpd_server_io_pause,
    .resume = smtpd_server_io_resume,
    .close = smtpd_server_io_close,
    .set_timer = smtpd_server_io_set_timer,
    .write_queued = smtpd_server_io_write_queued,
    .starttls = NULL, /* set per connection when a TLS context is loaded */
    .auth_check = smtpd_server_io_auth_check,
    .now = smtpd_server_io_now,
    .auth_rate = smtpd_server_io_auth_rate,
    .stressed = smtpd_server_io_stressed,
};

/*
 * smtpd_server_tls_input - ciphertext from the client: advance the
 * handshake, then hand every decrypted octet to the session.
 */
static void smtpd_server_tls_input(struct smtpd_conn *c, const char *data, size_t len)
{
    char plain[SMTPD_SERVER_READ_MAX];

    if (tls_feed(c->tls, data, len) != 0) {
        log_info("smtpd tls input over limit client=%s", c->client_addr);
        smtpd_server_conn_abort(c);
        return;
    }
    if (!c->tls_up) {
        int rc = tls_handshake(c->tls);
        if (smtpd_server_tls_flush(c) != 0 && rc >= 0)
            rc = HAMR_EIO;
        if (rc < 0) {
            log_info("smtpd tls handshake failed client=%s err=\"%s\"", c->client_addr,
                     tls_error(c->tls));
            smtpd_server_conn_abort(c);
            return;
        }
        if (rc == 0)
            return;
        c->tls_up = true;
        char desc[96];
        tls_describe(c->tls, desc, sizeof(desc));
        log_info("smtpd tls client=%s tls=\"%s\"", c->client_addr, desc);
    }
    while (!c->closing && c->session != NULL) {
        long n = tls_read(c->tls, plain, sizeof(plain));
        if (n == 0)
            break;
        if (n == HAMR_ESHUTDOWN) {
            smtpd_server_conn_close(c);
            return;
        }
        if (n < 0) {
            log_info("smtpd tls read failed client=%s err=\"%s\"", c->client_addr,
                     tls_error(c->tls));
            smtpd_server_conn_abort(c);
            return;
        }
        smtpd_session_input(c->session, plain, (size_t)n);
    }
    if (!c->closing && smtpd_server_tls_flush(c) != 0)
        smtpd_server_conn_abort(c);
}

/* smtpd_server_read_cb - input for the session; EOF or an error ends the connection. */
static void smtpd_server_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct smtpd_conn *c = hamr_container_of(stream, struct smtpd_conn, tcp);

    if (nread == 0)
        return; /* EAGAIN: not an error */
    if (nread == UV_EOF) {
        if (c->proxy_wait && !c->closing)
            smtpd_server_proxy_refuse(c, "end of input before the end of the header");
        smtpd_server_conn_close(c);
        return;
    }
    if (nread < 0) {
        log_info("smtpd read failed client=%s err=%s", c->client_addr, uv_strerror((int)nread));
        smtpd_server_conn_abort(c);
        return;
    }
    if (c->closing)
        return;
    if (c->proxy_wait) {
        smtpd_server_proxy_input(c, buf->base, (size_t)nread);
        return;
    }
    if (c->session == NULL)
        return;
    if (c->tls != NULL) {
        smtpd_server_tls_input(c, buf->base, (size_t)nread);
        return;
    }
    smtpd_session_input(c->session, buf->base, (size_t)nread);
}

/*
 * smtpd_server_peer - the socket peer's address as text (IPv4-mapped IPv6
 * shown as IPv4) into peer_addr, and into client_addr until a PROXY header
 * says otherwise.
 */
static void smtpd_server_peer(struct smtpd_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    hamr_strlcpy(c->peer_addr, "unknown", sizeof(c->peer_addr));
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &sin->sin_addr, c->peer_addr, sizeof(c->peer_addr));
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
            if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
                inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], c->peer_addr,
                          sizeof(c->peer_addr));
            else
                inet_ntop(AF_INET6, &sin6->sin6_addr, c->peer_addr, sizeof(c->peer_addr));
        }
    }
    hamr_strlcpy(c->client_addr, c->peer_addr, sizeof(c->client_addr));
}

/* smtpd_server_refuse - answer one 421 line without a session, then close. */
static void smtpd_server_refuse(struct smtpd_conn *c, enum smtpd_reply_id id)
{
    char line[SMTPD_REPLY_LINE_MAX];
    size_t n = smtpd_reply_format(id, c->server->policy->hostname, line, sizeof(line));
    log_info("smtpd refuse client=%s reply=\"%.*s\"", c->client_addr, (int)(n - 2), line);
    if (smtpd_server_write_raw(c, line, n) != 0) {
        smtpd_server_conn_abort(c);
        return;
    }
    smtpd_server_conn_close(c);
}

/*
 * smtpd_server_admit - the per-client limits: true when c may have a
 * session (its count then held until the connection is freed); otherwise
 * say "421 4.7.0 <host> Error: too many connections from <ip>" and close.
 * The text is the table's SMTPD_REPLY_TOO_MANY_CONNS row with the address
 * appended, as Postfix words it; client_addr is an address literal from
 * inet_ntop, so it is printable and short enough for the line.
 */
static bool smtpd_server_admit(struct smtpd_conn *c)
{
    struct smtpd_server *s = c->server;
    enum smtpd_limits_why why;
    bool held;

    if (smtpd_limits_admit(s->limits, c->client_addr, smtpd_server_now(s), &held, &why) == 0) {
        c->limits_held = held;
        return true;
    }
    char line[SMTPD_REPLY_LINE_MAX];
    size_t n =
        smtpd_reply_format(SMTPD_REPLY_TOO_MANY_CONNS, s->policy->hostname, line, sizeof(line));
    int m = snprintf(line + n - 2, sizeof(line) - (n - 2), " from %s\r\n", c->client_addr);
    if (m > 0 && (size_t)m < sizeof(line) - (n - 2))
        n = n - 2 + (size_t)m;
    else
        n = smtpd_reply_format(SMTPD_REPLY_TOO_MANY_CONNS, s->policy->hostname, line, sizeof(line));
    log_info("smtpd refuse client=%s reason=%s conns=%u reply=\"%.*s\"", c->client_addr,
             why == SMTPD_LIMITS_COUNT ? "client-connection-limit" : "client-connection-rate",
             smtpd_limits_conns(s->limits, c->client_addr), (int)(n - 2), line);
    if (smtpd_server_write_raw(c, line, n) != 0)
        smtpd_server_conn_abort(c);
    else
        smtpd_server_conn_close(c);
    return false;
}

/* smtpd_server_start_session - a session for an accepted connection. */
static void smtpd_server_start_session(struct smtpd_conn *c)
{
    struct smtpd_server *s = c->server;
    struct smtpd_session_io io = smtpd_server_io;

    io.data = c;
    if (s->tls_ctx != NULL)
        io.starttls = smtpd_server_io_starttls;
    if (smtpd_session_new(s->policy, &s->sink, &io, c->client_addr, &c->session) != 0) {
        c->session = NULL;
        smtpd_server_refuse(c, SMTPD_REPLY_LOCAL_ERROR);
        return;
    }
    s->n_sessions++;
    smtpd_server_stress_update(s); /* before the greeting arms the first wait */
    if (s->policy->observer.session != NULL)
        s->policy->observer.session(s->policy->observer.data);
    if (!c->reading) { /* after a PROXY header it already reads */
        if (uv_read_start((uv_stream_t *)&c->tcp, smtpd_server_alloc_cb, smtpd_server_read_cb) !=
            0) {
            smtpd_server_conn_abort(c);
            return;
        }
        c->reading = true;
    }
    if (s->greet_delay_ms > 0) {
        /* Input before the timer fires is a pregreet violation. */
        uv_timer_start(&c->timer, smtpd_server_timer_cb, s->greet_delay_ms, 0);
    } else {
        c->greeted = true;
        smtpd_session_greet(c->session);
    }
}

/* smtpd_server_proxy_end - the connection no longer waits for a header. Idempotent. */
static void smtpd_server_proxy_end(struct smtpd_conn *c)
{
    if (c->proxy_wait) {
        c->proxy_wait = false;
        c->server->n_proxy_wait--;
    }
}

/*
 * smtpd_server_proxy_refuse - no valid header from this peer: log why and
 * close without writing a byte. No greeting means a client cannot mistake
 * a broken proxy setup for a working relay.
 */
static void smtpd_server_proxy_refuse(struct smtpd_conn *c, const char *reason)
{
    log_info("smtpd proxy refuse peer=%s reason=\"%s\" octets=%zu", c->peer_addr, reason,
             c->proxy.total);
    smtpd_server_proxy_end(c);
    smtpd_server_conn_close(c);
}

/* smtpd_server_proxy_timeout_cb - proxy_timeout passed before the header was complete. */
static void smtpd_server_proxy_timeout_cb(uv_timer_t *timer)
{
    struct smtpd_conn *c = hamr_container_of(timer, struct smtpd_conn, timer);

    if (c->closing || !c->proxy_wait)
        return;
    smtpd_server_proxy_refuse(c, "timeout");
}

/* smtpd_server_proxy_start - a trusted balancer connected: read its header first. */
static void smtpd_server_proxy_start(struct smtpd_conn *c)
{
    struct smtpd_server *s = c->server;

    smtpd_proxy_parser_init(&c->proxy);
    c->proxy_wait = true;
    s->n_proxy_wait++;
    if (uv_read_start((uv_stream_t *)&c->tcp, smtpd_server_alloc_cb, smtpd_server_read_cb) != 0) {
        smtpd_server_conn_abort(c);
        return;
    }
    c->reading = true;
    uv_timer_start(&c->timer, smtpd_server_proxy_timeout_cb, s->proxy_timeout_ms, 0);
}

/*
 * smtpd_server_proxy_input - octets before the end of the header. Once it is
 * complete, the session starts as for any connection and gets what followed
 * the header in this read. The session decides what that is: input before
 * its greeting (greet_delay) is an early talker, as it would be without a
 * balancer; SMTP clients wait for the 220 (RFC 5321 3.1), so nothing is
 * pipelined ahead of it on purpose.
 */
static void smtpd_server_proxy_input(struct smtpd_conn *c, const char *data, size_t len)
{
    struct smtpd_server *s = c->server;
    size_t used;

    int rc = smtpd_proxy_parse(&c->proxy, data, len, &used);
    if (rc == 0)
        return;
    if (rc < 0) {
        smtpd_server_proxy_refuse(c, c->proxy.reason);
        return;
    }
    uv_timer_stop(&c->timer);
    smtpd_server_proxy_end(c);
    const struct smtpd_proxy_header *h = &c->proxy.hdr;
    if (!h->local)
        hamr_strlcpy(c->client_addr, h->src_text, sizeof(c->client_addr));
    log_info("smtpd proxy client=%s peer=%s version=%d command=%s", c->client_addr, c->peer_addr,
             h->version, h->local ? "local" : "proxy");
    if (s->draining) {
        smtpd_server_refuse(c, SMTPD_REPLY_DRAINING);
        return;
    }
    /* A LOCAL header is the balancer's own health check: no client to limit. */
    if (!h->local && !smtpd_server_admit(c))
        return;
    smtpd_server_start_session(c);
    if (c->closing || c->session == NULL || used == len)
        return;
    smtpd_session_input(c->session, data + used, len - used);
}

/* smtpd_server_conn_alloc_cb - memory for one client (tcp_server initialises the socket). */
static struct tcp_server_conn *smtpd_server_conn_alloc_cb(void *data, uv_tcp_t **tcp)
{
    struct smtpd_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->server = data;
    *tcp = &c->tcp;
    return &c->base;
}

/* smtpd_server_conn_accept_cb - a client is accepted: a session, or 421 and close. */
static void smtpd_server_conn_accept_cb(void *data, struct tcp_server_conn *base)
{
    struct smtpd_server *s = data;
    struct smtpd_conn *c = hamr_container_of(base, struct smtpd_conn, base);

    tcp_server_conn_timer_init(base, &c->timer);
    smtpd_server_peer(c);
    if (s->proxy_on && !smtpd_proxy_addr_in(s->proxy_networks, s->n_proxy_networks, c->peer_addr))
        smtpd_server_proxy_refuse(c, "peer not in proxy_networks");
    else if (s->closing)
        smtpd_server_refuse(c, SMTPD_REPLY_SHUTDOWN);
    else if (s->draining)
        smtpd_server_refuse(c, SMTPD_REPLY_DRAINING);
    else if (s->n_sessions + s->n_proxy_wait >= s->max_sessions)
        smtpd_server_refuse(c, SMTPD_REPLY_TOO_MANY_CONNS);
    else if (s->proxy_on)
        smtpd_server_proxy_start(c); /* per-client limits once the header names the client */
    else if (smtpd_server_admit(c))
        smtpd_server_start_session(c);
}

/* smtpd_server_conn_shutdown_cb - smtpd_server_close: 421 where a session can say it. */
static void smtpd_server_conn_shutdown_cb(void *data, struct tcp_server_conn *base)
{
    struct smtpd_conn *c = hamr_container_of(base, struct smtpd_conn, base);

    (void)data;
    if (c->tls != NULL && !c->tls_up)
        smtpd_server_conn_abort(c); /* mid-handshake: no way to say 421 */
    else if (c->session != NULL && !c->closing)
        smtpd_session_shutdown(c->session); /* 421 now, or after a pending reply */
    else if (c->session == NULL)
        smtpd_server_conn_close(c);
}

/* smtpd_server_tcp_done_cb - the listener and every connection are gone. */
static void smtpd_server_tcp_done_cb(void *data)
{
    struct smtpd_server *s = data;
    s->tcp = NULL;
    smtpd_server_maybe_finish(s);
}

/* smtpd_server_new - bind, listen. */
int smtpd_server_new(uv_loop_t *loop,
                     const char *host,
                     uint16_t port,
                     const struct smtpd_policy *policy,
                     const struct smtpd_sink *sink,
                     size_t max_sessions,
                     struct smtpd_server **out,
                     char *errmsg,
                     size_t errlen)
{
    struct smtpd_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(errmsg, errlen, "smtpd server: %s", hamr_strerror(HAMR_ENOMEM));
        return HAMR_ENOMEM;
    }
    s->loop = loop;
    s->policy = policy;
    s->sink = *sink;
    s->max_sessions = max_sessions;
    s->proxy_timeout_ms = SMTPD_SERVER_PROXY_TIMEOUT_MS;
    /* Live entries never outnumber sessions, so this many always has room. */
    if (smtpd_limits_new(max_sessions + SMTPD_SERVER_LIMITS_IDLE, &s->limits) != 0) {
        snprintf(errmsg, errlen, "smtpd server: %s", hamr_strerror(HAMR_ENOMEM));
        free(s);
        return HAMR_ENOMEM;
    }
    const struct tcp_server_config cfg = {
        .name = "smtpd",
        .host = host,
        .port = port,
        .backlog = policy->listen_backlog > 0 ? (int)policy->listen_backlog : SMTPD_LISTEN_BACKLOG,
        .max_conns = max_sessions + SMTPD_SERVER_REFUSING_MAX,
        .over = TCP_SERVER_CAP_PAUSE};
    const struct tcp_server_ops ops = {.data = s,
                                       .alloc_cb = smtpd_server_conn_alloc_cb,
                                       .accept_cb = smtpd_server_conn_accept_cb,
                                       .shutdown_cb = smtpd_server_conn_shutdown_cb,
                                       .free_cb = smtpd_server_conn_free_cb,
                                       .done_cb = smtpd_server_tcp_done_cb};
    int rv = tcp_server_new(loop, &cfg, &ops, &s->tcp, errmsg, errlen);
    if (rv != 0) {
        s->limits = smtpd_limits_free(s->limits);
        free(s);
        return rv;
    }
    s->port = tcp_server_port(s->tcp);
    log_info("smtpd listening addr=%s port=%u max_sessions=%zu", host, (unsigned)s->port,
             max_sessions);
    *out = s;
    return 0;
}

/* smtpd_server_port - the bound port. */
uint16_t smtpd_server_port(const struct smtpd_server *s)
{
    return s->port;
}

/* smtpd_server_set_draining - refuse new clients with 421 4.3.2. */
void smtpd_server_set_draining(struct smtpd_server *s, bool draining)
{
    if (s->draining != draining)
        log_info("smtpd draining=%s", draining ? "yes" : "no");
    s->draining = draining;
}

/* smtpd_server_set_greet_delay - wait before the 220 greeting. */
void smtpd_server_set_greet_delay(struct smtpd_server *s, uint64_t ms)
{
    s->greet_delay_ms = ms;
}

/* smtpd_server_set_proxy - expect a PROXY header from these networks only. */
void smtpd_server_set_proxy(struct smtpd_server *s,
                            bool on,
                            const struct smtpd_cidr *networks,
                            size_t n_networks,
                            uint64_t timeout_ms)
{
    s->proxy_on = on;
    s->proxy_networks = networks;
    s->n_proxy_networks = n_networks;
    s->proxy_timeout_ms = timeout_ms > 0 ? timeout_ms : SMTPD_SERVER_PROXY_TIMEOUT_MS;
    log_info("smtpd proxy_protocol=%s proxy_networks=%zu proxy_timeout_ms=%llu", on ? "on" : "off",
             n_networks, (unsigned long long)s->proxy_timeout_ms);
}

/* smtpd_server_set_limits - per-client connection count and rate limits. */
void smtpd_server_set_limits(struct smtpd_server *s, const struct smtpd_limits_config *cfg)
{
    smtpd_limits_configure(s->limits, cfg);
    log_info(
        "smtpd client_connection_limit=%u client_connection_rate=%u client_auth_rate=%u "
        "limit_exempt_networks=%zu",
        cfg->conn_limit, cfg->conn_rate, cfg->auth_rate, cfg->n_exempt);
}

/* smtpd_server_set_max_connections - the cap on accepted sockets. */
void smtpd_server_set_max_connections(struct smtpd_server *s, size_t max_conns)
{
    if (max_conns == 0)
        max_conns = s->max_sessions + SMTPD_SERVER_REFUSING_MAX;
    if (max_conns < s->max_sessions)
        max_conns = s->max_sessions;
    tcp_server_set_max_conns(s->tcp, max_conns);
}

/* smtpd_server_limits - the per-client counters, read-only. */
const struct smtpd_limits *smtpd_server_limits(const struct smtpd_server *s)
{
    return s->limits;
}

/* smtpd_server_advance_clock - tests: move the limits' (and sessions') clock on by ms. */
void smtpd_server_advance_clock(struct smtpd_server *s, uint64_t ms)
{
    s->clock_skew_ms += ms;
    smtpd_limits_expire(s->limits, smtpd_server_now(s));
}

/* smtpd_server_set_tls - load the certificate and key; offer STARTTLS. */
int smtpd_server_set_tls(struct smtpd_server *s,
                         const char *cert_file,
                         const char *key_file,
                         char *errmsg,
                         size_t errlen)
{
    bool have_cert = cert_file != NULL && cert_file[0] != '\0';
    bool have_key = key_file != NULL && key_file[0] != '\0';

    if (!have_cert && !have_key) {
        SSL_CTX_free(s->tls_ctx);
        s->tls_ctx = NULL;
        s->tls_cert_file[0] = s->tls_key_file[0] = '\0';
        return 0;
    }
    if (!have_cert || !have_key) {
        snprintf(errmsg, errlen, "tls_cert_file and tls_key_file must be set together");
        return HAMR_EINVAL;
    }
    if (strlen(cert_file) >= sizeof(s->tls_cert_file) ||
        strlen(key_file) >= sizeof(s->tls_key_file)) {
        snprintf(errmsg, errlen, "tls_cert_file or tls_key_file: path too long");
        return HAMR_EINVAL;
    }
    SSL_CTX *ctx = smtpd_tls_ctx_new(cert_file, key_file, errmsg, errlen);
    if (ctx == NULL)
        return HAMR_EINVAL;
    SSL_CTX_free(s->tls_ctx);
    s->tls_ctx = ctx;
    hamr_strlcpy(s->tls_cert_file, cert_file, sizeof(s->tls_cert_file));
    hamr_strlcpy(s->tls_key_file, key_file, sizeof(s->tls_key_file));
    log_info("smtpd starttls=on cert=%s", s->tls_cert_file);
    return 0;
}

/* smtpd_server_reload_tls - read the files again; keep the old context on failure. */
int smtpd_server_reload_tls(struct smtpd_server *s)
{
    char err[TLS_ERR_MAX + 128];

    if (s->tls_ctx == NULL)
        return 0;
    SSL_CTX *ctx = smtpd_tls_ctx_new(s->tls_cert_file, s->tls_key_file, err, sizeof(err));
    if (ctx == NULL) {
        log_warn("smtpd tls reload failed, keeping the old certificate err=\"%s\"", err);
        return HAMR_EINVAL;
    }
    SSL_CTX_free(s->tls_ctx); /* connections hold their own references */
    s->tls_ctx = ctx;
    log_info("smtpd tls reloaded cert=%s", s->tls_cert_file);
    return 0;
}

/* smtpd_server_sessions - open sessions. */
size_t smtpd_server_sessions(const struct smtpd_server *s)
{
    return s->n_sessions;
}

/* smtpd_server_auth_checks - running plus waiting checks. */
size_t smtpd_server_auth_checks(const struct smtpd_server *s)
{
    size_t n = s->auth_running;
    for (const struct smtpd_auth_work *w = s->auth_head; w != NULL; w = w->next)
        n++;
    return n;
}

/* smtpd_server_close - stop listening, close every session, then cb. */
void smtpd_server_close(struct smtpd_server *s, smtpd_server_close_cb cb, void *arg)
{
    HAMR_ASSERT(!s->closing);
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    tcp_server_close(s->tcp, NULL,
                     NULL); /* each connection through smtpd_server_conn_shutdown_cb */
    /* Asynchronous processing continues in smtpd_server_tcp_done_cb. */
}
