/*
 * tcp_server.c - the TCP listener every hamr server stands on: the SMTP
 * server, and the node's control, peer and HTTP listeners.
 *
 * Owns: the listening handle, a spare handle for refusing clients, and the
 * list and count of connections. The connections' memory is the owner's
 * (struct tcp_server_ops: alloc_cb makes it, free_cb releases it); their
 * handles are embedded there and closed here. Exports tcp_server.h.
 * Converts UV_E* codes to HAMR_E* here.
 *
 * Happy path: a client connects -> under the cap, alloc_cb -> uv_accept ->
 * accept_cb (the owner starts reading) -> ... -> tcp_server_conn_close ->
 * uv_close on every handle the connection registered -> the last close
 * callback unlinks it and calls free_cb.
 *
 * Failure modes:
 *   - past max_conns: TCP_SERVER_CAP_CLOSE accepts and closes at once;
 *     TCP_SERVER_CAP_EVICT closes the oldest connection not marked busy
 *     (through shutdown_cb) and keeps the new one, or closes the new one
 *     when all are busy;
 *     TCP_SERVER_CAP_PAUSE leaves the connection to libuv, which stops
 *     polling the listener (unix stream.c, uv__server_io) until
 *     uv_accept, called when a connection is freed;
 *   - alloc_cb fails: the connection is accepted into the spare handle and
 *     closed, because a connection callback that returns without uv_accept
 *     stops libuv accepting on the listener. If the spare is still closing
 *     from the last refusal, libuv keeps the connection until the spare's
 *     close callback, which tries again: no memory is needed to refuse;
 *   - uv_accept fails: the connection is closed (free_cb runs; accept_cb
 *     never does).
 *
 * Closing: tcp_server_close closes the listener and hands every connection
 * to shutdown_cb. Each handle is counted when it is initialised and again
 * as its close callback runs; when the last one has run, the server is
 * freed and done_cb, then the closer's callback, run once each.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/tcp_server.h"

struct tcp_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_tcp_t spare; /* accepts a connection that got no memory, to close it */
    struct tcp_server_ops ops;
    const char *name;
    enum tcp_server_cap over;
    size_t max_conns;
    uint16_t port;
    struct tcp_server_conn *conns;
    size_t n_conns;
    size_t n_closing;    /* of n_conns, those tcp_server_conn_close has run on */
    size_t open_handles; /* the listener, the spare and every connection's, until closed */
    bool paused;         /* at the cap, libuv holds a connection for uv_accept */
    bool spare_busy;     /* the spare is closing */
    bool refuse_pending; /* no memory and the spare busy: libuv holds a connection */
    bool closing;
    void (*closed_cb)(void *arg); /* tcp_server_close's */
    void *closed_arg;
};

static void tcp_server_accept(struct tcp_server *s);

/* tcp_server_resume - paused at the cap and there is room now: take the connection libuv holds. */
static void tcp_server_resume(struct tcp_server *s)
{
    if (!s->paused || s->closing || s->n_conns >= s->max_conns)
        return;
    s->paused = false;
    log_info("%s accept resumed conns=%zu max_connections=%zu", s->name, s->n_conns, s->max_conns);
    tcp_server_accept(s); /* uv_accept restarts polling the listener */
}

/* tcp_server_maybe_done - after tcp_server_close, the last handle closed: free and tell. */
static void tcp_server_maybe_done(struct tcp_server *s)
{
    if (!s->closing || s->open_handles > 0)
        return;
    struct tcp_server_ops ops = s->ops;
    void (*cb)(void *) = s->closed_cb;
    void *arg = s->closed_arg;
    free(s);
    if (ops.done_cb != NULL)
        ops.done_cb(ops.data);
    if (cb != NULL)
        cb(arg);
}

/* tcp_server_conn_closed_cb - one handle of a connection closed; the last frees it. */
static void tcp_server_conn_closed_cb(uv_handle_t *h)
{
    struct tcp_server_conn *c = h->data;
    struct tcp_server *s = c->srv;
    HAMR_ASSERT(c->open_handles > 0 && s->open_handles > 0);
    s->open_handles--;
    if (--c->open_handles > 0)
        return;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    s->n_conns--;
    if (c->closing)
        s->n_closing--;
    s->ops.free_cb(s->ops.data, c);
    tcp_server_resume(s);
    tcp_server_maybe_done(s);
}

/* tcp_server_conn_register - count h as c's (data leads back to c). */
static void tcp_server_conn_register(struct tcp_server_conn *c, uv_handle_t *h)
{
    HAMR_ASSERT(c->n_handles < TCP_SERVER_CONN_HANDLES);
    h->data = c;
    c->handles[c->n_handles++] = h;
    c->open_handles++;
    c->srv->open_handles++;
}

/* tcp_server_conn_timer_init - a timer that closes with c. */
void tcp_server_conn_timer_init(struct tcp_server_conn *c, uv_timer_t *t)
{
    uv_timer_init(c->srv->loop, t);
    tcp_server_conn_register(c, (uv_handle_t *)t);
}

/* tcp_server_conn_close - close every handle of c; idempotent. */
void tcp_server_conn_close(struct tcp_server_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->srv->n_closing++;
    for (size_t i = 0; i < c->n_handles; i++)
        if (!uv_is_closing(c->handles[i]))
            uv_close(c->handles[i], tcp_server_conn_closed_cb);
    /* Asynchronous processing continues in tcp_server_conn_closed_cb. */
}

/* tcp_server_conn_busy - c is a client that has asked something: never evicted. */
void tcp_server_conn_busy(struct tcp_server_conn *c)
{
    c->busy = true;
}

/* tcp_server_conn_peer - "ip:port" or "[v6]:port" of c's peer, for logs. */
void tcp_server_conn_peer(const struct tcp_server_conn *c, char *out, size_t outlen)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    hamr_strlcpy(out, "?", outlen);
    if (uv_tcp_getpeername(c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
        uv_ip6_name(s6, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%u", ip, (unsigned)ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
        uv_ip4_name(s4, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%u", ip, (unsigned)ntohs(s4->sin_port));
    }
}

/* tcp_server_spare_closed_cb - the refused client is gone; take one that waited. */
static void tcp_server_spare_closed_cb(uv_handle_t *h)
{
    struct tcp_server *s = h->data;
    s->open_handles--;
    s->spare_busy = false;
    if (s->refuse_pending && !s->closing) {
        s->refuse_pending = false;
        tcp_server_accept(s);
    }
    tcp_server_maybe_done(s);
}

/* tcp_server_refuse - no memory for the connection libuv holds: accept it and close it. */
static void tcp_server_refuse(struct tcp_server *s)
{
    if (s->spare_busy) {
        s->refuse_pending = true; /* tcp_server_spare_closed_cb comes back here */
        return;
    }
    uv_tcp_init(s->loop, &s->spare);
    s->spare.data = s;
    s->spare_busy = true;
    s->open_handles++;
    if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&s->spare) != 0)
        log_warn("%s accept failed on refusal", s->name);
    uv_close((uv_handle_t *)&s->spare, tcp_server_spare_closed_cb);
}

/*
 * tcp_server_evict - TCP_SERVER_CAP_EVICT: room for newcomer c. True when
 * the connections not closing are within the cap, or once the oldest that
 * is neither busy nor c has been handed to shutdown_cb; false when all are
 * busy.
 */
static bool tcp_server_evict(struct tcp_server *s, struct tcp_server_conn *c)
{
    if (s->n_conns - s->n_closing <= s->max_conns)
        return true;
    struct tcp_server_conn *victim = NULL;
    for (struct tcp_server_conn *x = s->conns; x != NULL; x = x->next) /* newest first */
        if (x != c && !x->busy && !x->closing)
            victim = x;
    if (victim == NULL)
        return false;
    char peer[INET6_ADDRSTRLEN + 8];
    tcp_server_conn_peer(victim, peer, sizeof(peer));
    log_info(
        "%s evicted peer=%s reason=\"room for a new connection, it has asked nothing\" "
        "max=%zu",
        s->name, peer, s->max_conns);
    if (s->ops.shutdown_cb != NULL)
        s->ops.shutdown_cb(s->ops.data, victim);
    else
        tcp_server_conn_close(victim);
    return true;
}

/*
 * tcp_server_accept - take the connection libuv holds: pause at the cap,
 * else allocate, accept, and close it past the cap or start it.
 */
static void tcp_server_accept(struct tcp_server *s)
{
    if (s->over == TCP_SERVER_CAP_PAUSE && s->n_conns >= s->max_conns) {
        if (!s->paused)
            log_warn("%s accept paused conns=%zu max_connections=%zu", s->name, s->n_conns,
                     s->max_conns);
        s->paused = true;
        return;
    }
    uv_tcp_t *tcp = NULL;
    struct tcp_server_conn *c = s->ops.alloc_cb(s->ops.data, &tcp);
    if (c == NULL) {
        log_error("%s accept failed err=%s", s->name, hamr_strerror(HAMR_ENOMEM));
        tcp_server_refuse(s);
        return;
    }
    HAMR_ASSERT(tcp != NULL);
    c->srv = s;
    c->tcp = tcp;
    uv_tcp_init(s->loop, tcp);
    tcp_server_conn_register(c, (uv_handle_t *)tcp);
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)tcp) != 0) {
        tcp_server_conn_close(c);
        return;
    }
    if (s->n_conns > s->max_conns && !(s->over == TCP_SERVER_CAP_EVICT && tcp_server_evict(s, c))) {
        char peer[INET6_ADDRSTRLEN + 8];
        tcp_server_conn_peer(c, peer, sizeof(peer));
        log_warn("%s too many connections peer=%s max=%zu", s->name, peer, s->max_conns);
        tcp_server_conn_close(c);
        return;
    }
    s->ops.accept_cb(s->ops.data, c);
}

/* tcp_server_connection_cb - a client is waiting. */
static void tcp_server_connection_cb(uv_stream_t *listener, int status)
{
    struct tcp_server *s = listener->data;
    if (status < 0) {
        log_warn("%s accept failed err=%s", s->name, uv_err_name(status));
        return;
    }
    tcp_server_accept(s);
}

/*
 * tcp_server_addr - host ("a.b.c.d", "v6" or "[v6]") and port into ss;
 * 0 or HAMR_EINVAL.
 */
static int tcp_server_addr(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
    char v6[INET6_ADDRSTRLEN + 16];
    size_t len = strlen(host);
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    if (len < 2 || host[0] != '[' || host[len - 1] != ']' || len - 2 >= sizeof(v6))
        return HAMR_EINVAL;
    memcpy(v6, host + 1, len - 2);
    v6[len - 2] = '\0';
    memset(ss, 0, sizeof(*ss));
    return uv_ip6_addr(v6, port, (struct sockaddr_in6 *)ss) == 0 ? 0 : HAMR_EINVAL;
}

/* tcp_server_sockaddr_port - the port of an IPv4 or IPv6 address. */
static uint16_t tcp_server_sockaddr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

/* tcp_server_free_cb - a listener that never listened has closed. */
static void tcp_server_free_cb(uv_handle_t *h)
{
    free(h->data);
}

/* tcp_server_new - parse, bind, listen. */
int tcp_server_new(uv_loop_t *loop,
                   const struct tcp_server_config *cfg,
                   const struct tcp_server_ops *ops,
                   struct tcp_server **out,
                   char *errmsg,
                   size_t errlen)
{
    HAMR_ASSERT(ops->alloc_cb != NULL && ops->accept_cb != NULL && ops->free_cb != NULL);
    struct sockaddr_storage ss;
    if (tcp_server_addr(cfg->host, cfg->port, &ss) != 0) {
        snprintf(errmsg, errlen, "%s: not an IP address: %s", cfg->name, cfg->host);
        return HAMR_EINVAL;
    }
    struct tcp_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(errmsg, errlen, "%s: %s", cfg->name, hamr_strerror(HAMR_ENOMEM));
        return HAMR_ENOMEM;
    }
    s->loop = loop;
    s->ops = *ops;
    s->name = cfg->name;
    s->over = cfg->over;
    s->max_conns = cfg->max_conns;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    int rv = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rv == 0)
        rv = uv_listen((uv_stream_t *)&s->listener, cfg->backlog, tcp_server_connection_cb);
    if (rv != 0) {
        snprintf(errmsg, errlen, "%s: cannot listen on %s:%u: %s", cfg->name, cfg->host,
                 (unsigned)cfg->port, uv_strerror(rv));
        uv_close((uv_handle_t *)&s->listener, tcp_server_free_cb);
        return HAMR_EIO;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
    s->port = tcp_server_sockaddr_port(&bound);
    s->open_handles = 1;
    *out = s;
    return 0;
}

/* tcp_server_port - the bound port. */
uint16_t tcp_server_port(const struct tcp_server *s)
{
    return s->port;
}

/* tcp_server_conns - accepted connections not yet freed. */
size_t tcp_server_conns(const struct tcp_server *s)
{
    return s->n_conns;
}

/* tcp_server_set_max_conns - a new cap; accept what waited if it now fits. */
void tcp_server_set_max_conns(struct tcp_server *s, size_t max_conns)
{
    s->max_conns = max_conns;
    tcp_server_resume(s);
}

/* tcp_server_listener_closed_cb - the listener is gone. */
static void tcp_server_listener_closed_cb(uv_handle_t *h)
{
    struct tcp_server *s = h->data;
    s->open_handles--;
    tcp_server_maybe_done(s);
}

/* tcp_server_close - close the listener, hand every connection to shutdown_cb; idempotent. */
void tcp_server_close(struct tcp_server *s, void (*closed_cb)(void *arg), void *arg)
{
    if (s->closing)
        return;
    s->closing = true;
    s->closed_cb = closed_cb;
    s->closed_arg = arg;
    uv_close((uv_handle_t *)&s->listener, tcp_server_listener_closed_cb);
    struct tcp_server_conn *c = s->conns;
    while (c != NULL) {
        struct tcp_server_conn *next = c->next;
        if (!c->closing) {
            if (s->ops.shutdown_cb != NULL)
                s->ops.shutdown_cb(s->ops.data, c);
            else
                tcp_server_conn_close(c);
        }
        c = next;
    }
    /* Asynchronous processing continues in the close callbacks. */
}
