/* tcp_server.h - one libuv TCP listener with a connection cap, under every hamr server. */
#ifndef HAMR_NET_TCP_SERVER_H
#define HAMR_NET_TCP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct tcp_server;

/* What a connection that would pass the cap meets. */
enum tcp_server_cap {
    /* Accepted and closed at once; it counts until its handle has closed. */
    TCP_SERVER_CAP_CLOSE,
    /*
     * Left unaccepted: libuv keeps the one connection it took and stops
     * polling the listener, the rest wait in the kernel backlog, and the
     * server accepts again when a connection is freed (or the cap is raised).
     */
    TCP_SERVER_CAP_PAUSE,
    /*
     * Accepted; to make room, the oldest connection the owner has not
     * marked busy (tcp_server_conn_busy: it has asked something) is closed
     * the owner's way (shutdown_cb). If every connection is busy, as
     * TCP_SERVER_CAP_CLOSE. For listeners whose clients ask at once (a
     * health check, hamrctl, a peer's hello): silent connections can no
     * longer keep them out. Closing connections do not count against the
     * cap here; they are gone by the next loop iteration.
     */
    TCP_SERVER_CAP_EVICT,
};

/* Handles one connection may register: its socket and one more (a timer). */
#define TCP_SERVER_CONN_HANDLES 2

/*
 * tcp_server_conn - the part of an owner's connection the server keeps,
 * embedded in it (hamr_container_of leads back). Every handle registered
 * here has data pointing at this struct; the fields are the server's.
 */
struct tcp_server_conn {
    struct tcp_server *srv;
    struct tcp_server_conn *prev, *next; /* every connection of srv */
    uv_tcp_t *tcp;                       /* the socket, in the owner's memory */
    uv_handle_t *handles[TCP_SERVER_CONN_HANDLES];
    size_t n_handles;    /* registered */
    size_t open_handles; /* registered, close callback not yet run */
    bool closing;        /* tcp_server_conn_close has run */
    bool busy;           /* tcp_server_conn_busy has run: never evicted */
};

/*
 * tcp_server_ops - the owner's side. Every callback gets data. Memory of a
 * connection is the owner's: alloc_cb makes it, free_cb releases it.
 */
struct tcp_server_ops {
    void *data;
    /*
     * alloc_cb - a zeroed connection embedding a struct tcp_server_conn
     * (returned) and the uv_tcp_t to accept into (*tcp; the server
     * initialises it). NULL when out of memory: the client is accepted and
     * closed, and the listener goes on accepting.
     */
    struct tcp_server_conn *(*alloc_cb)(void *data, uv_tcp_t **tcp);
    /* accept_cb - c is accepted and under the cap: start it. Required. */
    void (*accept_cb)(void *data, struct tcp_server_conn *c);
    /*
     * shutdown_cb - tcp_server_close wants c closed, the owner's way (a
     * goodbye first, say); it ends in tcp_server_conn_close. NULL:
     * tcp_server_conn_close at once. Not called for a connection closing
     * already.
     */
    void (*shutdown_cb)(void *data, struct tcp_server_conn *c);
    /*
     * free_cb - every handle of c has closed; c is no longer counted or
     * listed. Release it (from here, c and its handles may be freed).
     */
    void (*free_cb)(void *data, struct tcp_server_conn *c);
    /*
     * done_cb - after tcp_server_close, the last handle (listener,
     * connections and all) has closed and the server is freed. Called once,
     * before tcp_server_close's closed_cb; it may free data (free itself
     * will do). NULL: nothing.
     */
    void (*done_cb)(void *data);
};

/* tcp_server_config - where and how to listen; copied (host only during tcp_server_new). */
struct tcp_server_config {
    const char *name;         /* "control", "peer", ... for logs and errmsg; kept, not copied */
    const char *host;         /* IPv4 or IPv6 literal, "[v6]" accepted too */
    uint16_t port;            /* 0: the kernel picks, see tcp_server_port */
    int backlog;              /* uv_listen's */
    size_t max_conns;         /* accepted connections at most, closing ones counted */
    enum tcp_server_cap over; /* what meets a connection past max_conns */
};

/*
 * tcp_server_new - listen on cfg->host:cfg->port. ops is copied. 0 and
 * *out; else errmsg holds "NAME: ..." and nothing is left for the caller
 * (no callback runs):
 *   HAMR_EINVAL - host is not an IP literal;
 *   HAMR_ENOMEM;
 *   HAMR_EIO    - bind or listen failed.
 */
int tcp_server_new(uv_loop_t *loop,
                   const struct tcp_server_config *cfg,
                   const struct tcp_server_ops *ops,
                   struct tcp_server **out,
                   char *errmsg,
                   size_t errlen);

/* tcp_server_port - the port bound. */
uint16_t tcp_server_port(const struct tcp_server *s);

/* tcp_server_conns - connections accepted whose handles have not all closed. */
size_t tcp_server_conns(const struct tcp_server *s);

/* tcp_server_set_max_conns - a new cap; a paused listener accepts again if it allows. */
void tcp_server_set_max_conns(struct tcp_server *s, size_t max_conns);

/*
 * tcp_server_close - close the listener and every connection (through
 * shutdown_cb); once every handle has closed, ops.done_cb(ops.data) and
 * then closed_cb(arg) (may be NULL) run, once each and never from inside
 * this call. Idempotent: a second call changes nothing.
 */
void tcp_server_close(struct tcp_server *s, void (*closed_cb)(void *arg), void *arg);

/*
 * tcp_server_conn_timer_init - uv_timer_init t (in c's owner's memory) and
 * register it with c, so that tcp_server_conn_close closes it and free_cb
 * waits for it. At most TCP_SERVER_CONN_HANDLES - 1 per connection.
 */
void tcp_server_conn_timer_init(struct tcp_server_conn *c, uv_timer_t *t);

/*
 * tcp_server_conn_close - uv_close every handle of c not closing yet
 * (pending writes and shutdowns are cancelled); free_cb follows the last
 * close callback. Idempotent.
 */
void tcp_server_conn_close(struct tcp_server_conn *c);

/*
 * tcp_server_conn_peer - "ip:port" or "[v6]:port" of c's peer into out
 * (size outlen, truncated), "?" if the socket cannot say: for logs.
 */
void tcp_server_conn_peer(const struct tcp_server_conn *c, char *out, size_t outlen);

/*
 * tcp_server_conn_busy - c has shown it is a client (a whole request, a
 * hello): TCP_SERVER_CAP_EVICT never closes it to make room.
 */
void tcp_server_conn_busy(struct tcp_server_conn *c);

#endif
