/*
 * wan_delay.c - a TCP proxy that holds each direction's bytes for a fixed
 * one-way delay: a wide-area link between two data centres, emulated in user
 * space (for kernels without tc netem). Used by the fault campaign
 * (tests/campaign), one process per node namespace.
 *
 *   wan_delay [--mark N] [--max-buffer BYTES] LPORT=IP:PORT/DELAY_MS ...
 *
 * Each mapping listens on 0.0.0.0:LPORT; every connection accepted there is
 * joined to a new connection to IP:PORT. Bytes read from either side are
 * written to the other side DELAY_MS milliseconds after they were read, in
 * the order they were read; an end of stream (FIN) travels the same way and
 * becomes a shutdown of the other side's write direction. An error or reset
 * on either side closes both at once. The connection to IP:PORT carries the
 * socket mark N (SO_MARK, default 0x68616d72) so that the nftables rule
 * that redirects a node's traffic here can let the proxy's own connections
 * pass.
 *
 * Bounded buffering: when one direction holds --max-buffer bytes (default
 * 4 MiB) that are delayed or not yet written, the proxy stops reading from
 * that side until half of them are gone (TCP's own flow control then slows
 * the sender down).
 *
 * Not modelled: bandwidth, loss, reordering, jitter; the TCP handshake to
 * IP:PORT is not delayed (only the bytes are).
 *
 * Prints "wan_delay: ready" once every listener is bound, and one line per
 * connection that fails to reach its upstream. Exits 2 on bad usage, 1 when
 * a listener cannot be bound; runs until killed.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <uv.h>

#define DEFAULT_MARK 0x68616d72u
#define DEFAULT_MAX_BUFFER (4u * 1024u * 1024u)
#define READ_SIZE 65536u
#define MAX_MAPPINGS 64
#define MAX_DELAY_MS 60000ul

struct mapping {
    int listen_port;
    struct sockaddr_in upstream;
    uint64_t delay_ms;
    uv_tcp_t server;
};

/* One piece of a stream (or its end, eof) waiting for its release time. */
struct chunk {
    struct chunk *next;
    uint64_t due; /* uv_now() time at which it may be written */
    size_t len;
    int eof;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    struct dir *dir;
    char data[];
};

/* One direction of a joined pair: read from `from`, written to `to`. */
struct dir {
    struct pair *pair;
    uv_tcp_t *from;
    uv_tcp_t *to;
    struct chunk *head;
    struct chunk *tail;
    size_t held; /* bytes read and not yet written out */
    int reading;
    int eof_read;  /* from sent its FIN */
    int shut_done; /* to's write side is shut down */
    uv_timer_t timer;
};

struct pair {
    struct mapping *m;
    uv_tcp_t client;
    uv_tcp_t upstream;
    uv_connect_t creq;
    struct dir up;   /* client -> upstream */
    struct dir down; /* upstream -> client */
    int closing;
    int handles_open;
};

static uv_loop_t *loop;
static unsigned int sock_mark = DEFAULT_MARK;
static size_t max_buffer = DEFAULT_MAX_BUFFER;

static void pair_close(struct pair *p);
static void dir_flush(struct dir *d);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* pair_release - one of the pair's four handles is closed; free it after the last. */
static void pair_release(struct pair *p)
{
    if (--p->handles_open > 0)
        return;
    struct dir *dirs[2] = {&p->up, &p->down};
    for (int i = 0; i < 2; i++) {
        struct chunk *c = dirs[i]->head;
        while (c) {
            struct chunk *next = c->next;
            free(c);
            c = next;
        }
    }
    free(p);
}

static void on_socket_closed(uv_handle_t *h)
{
    pair_release(h->data);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct dir *d = h->data;
    pair_release(d->pair);
}

/* pair_close - close both sockets and both timers; the pair is freed once all four are. */
static void pair_close(struct pair *p)
{
    if (p->closing)
        return;
    p->closing = 1;
    uv_close((uv_handle_t *)&p->client, on_socket_closed);
    uv_close((uv_handle_t *)&p->upstream, on_socket_closed);
    uv_close((uv_handle_t *)&p->up.timer, on_timer_closed);
    uv_close((uv_handle_t *)&p->down.timer, on_timer_closed);
}

static void maybe_finish(struct pair *p)
{
    if (p->up.shut_done && p->down.shut_done)
        pair_close(p);
}

static void dir_resume(struct dir *d)
{
    if (!d->reading && !d->eof_read && !d->pair->closing && d->held <= max_buffer / 2) {
        if (uv_read_start((uv_stream_t *)d->from, on_alloc, on_read) == 0)
            d->reading = 1;
    }
}

static void on_written(uv_write_t *req, int status)
{
    struct chunk *c = req->data;
    struct dir *d = c->dir;
    d->held -= c->len;
    free(c);
    if (status < 0) {
        pair_close(d->pair);
        return;
    }
    dir_resume(d);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct chunk *c = req->data;
    struct dir *d = c->dir;
    free(c);
    if (status < 0) {
        pair_close(d->pair);
        return;
    }
    d->shut_done = 1;
    maybe_finish(d->pair);
}

static void on_timer(uv_timer_t *t)
{
    dir_flush(t->data);
}

/* dir_flush - write out every chunk whose time has come; re-arm the timer for the next. */
static void dir_flush(struct dir *d)
{
    struct pair *p = d->pair;
    if (p->closing)
        return;
    uint64_t now = uv_now(loop);
    while (d->head && d->head->due <= now) {
        struct chunk *c = d->head;
        d->head = c->next;
        if (!d->head)
            d->tail = NULL;
        c->next = NULL;
        if (c->eof) {
            c->sreq.data = c;
            if (uv_shutdown(&c->sreq, (uv_stream_t *)d->to, on_shutdown) != 0) {
                free(c);
                pair_close(p);
                return;
            }
            continue;
        }
        uv_buf_t buf = uv_buf_init(c->data, (unsigned int)c->len);
        c->wreq.data = c;
        if (uv_write(&c->wreq, (uv_stream_t *)d->to, &buf, 1, on_written) != 0) {
            d->held -= c->len;
            free(c);
            pair_close(p);
            return;
        }
    }
    if (d->head)
        uv_timer_start(&d->timer, on_timer, d->head->due - now, 0);
}

static void dir_append(struct dir *d, struct chunk *c)
{
    c->dir = d;
    c->due = uv_now(loop) + d->pair->m->delay_ms;
    if (d->tail)
        d->tail->next = c;
    else
        d->head = c;
    d->tail = c;
    if (!uv_is_active((uv_handle_t *)&d->timer))
        uv_timer_start(&d->timer, on_timer, d->pair->m->delay_ms, 0);
}

static struct dir *dir_of(uv_stream_t *s)
{
    struct pair *p = s->data;
    return (uv_tcp_t *)s == &p->client ? &p->up : &p->down;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    struct chunk *c = malloc(sizeof(*c) + READ_SIZE);
    if (!c) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init(c->data, READ_SIZE);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct dir *d = dir_of(s);
    struct chunk *c = buf->base ? (struct chunk *)(buf->base - offsetof(struct chunk, data)) : NULL;
    if (nread == 0) {
        free(c);
        return;
    }
    if (nread == UV_EOF) {
        free(c);
        uv_read_stop(s);
        d->reading = 0;
        d->eof_read = 1;
        struct chunk *e = calloc(1, sizeof(*e));
        if (!e) {
            pair_close(d->pair);
            return;
        }
        e->eof = 1;
        dir_append(d, e);
        return;
    }
    if (nread < 0 || !c) {
        free(c);
        pair_close(d->pair);
        return;
    }
    /* Give back what the read did not use (a chunk holds READ_SIZE bytes at most). */
    struct chunk *shrunk = realloc(c, sizeof(*c) + (size_t)nread);
    if (shrunk)
        c = shrunk;
    c->next = NULL;
    c->eof = 0;
    c->len = (size_t)nread;
    d->held += c->len;
    dir_append(d, c);
    if (d->held >= max_buffer) {
        uv_read_stop(s);
        d->reading = 0;
    }
}

static void on_connected(uv_connect_t *req, int status)
{
    struct pair *p = req->data;
    if (p->closing)
        return;
    if (status < 0) {
        char ip[64];
        uv_ip4_name(&p->m->upstream, ip, sizeof(ip));
        printf("wan_delay: %d -> %s:%d: %s\n", p->m->listen_port, ip,
               ntohs(p->m->upstream.sin_port), uv_strerror(status));
        fflush(stdout);
        pair_close(p);
        return;
    }
    uv_tcp_nodelay(&p->upstream, 1);
    p->up.reading = p->down.reading = 1;
    if (uv_read_start((uv_stream_t *)&p->client, on_alloc, on_read) != 0 ||
        uv_read_start((uv_stream_t *)&p->upstream, on_alloc, on_read) != 0)
        pair_close(p);
}

static void dir_init(struct pair *p, struct dir *d, uv_tcp_t *from, uv_tcp_t *to)
{
    memset(d, 0, sizeof(*d));
    d->pair = p;
    d->from = from;
    d->to = to;
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct mapping *m = server->data;
    if (status < 0)
        return;
    struct pair *p = calloc(1, sizeof(*p));
    if (!p)
        return;
    p->m = m;
    uv_tcp_init(loop, &p->client);
    p->client.data = p;
    if (uv_accept(server, (uv_stream_t *)&p->client) != 0) {
        p->handles_open = 1;
        p->closing = 1;
        uv_close((uv_handle_t *)&p->client, on_socket_closed);
        return;
    }
    uv_tcp_nodelay(&p->client, 1);
    uv_tcp_init_ex(loop, &p->upstream, AF_INET);
    p->upstream.data = p;
    dir_init(p, &p->up, &p->client, &p->upstream);
    dir_init(p, &p->down, &p->upstream, &p->client);
    p->handles_open = 4;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&p->upstream, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_MARK, &sock_mark, sizeof(sock_mark));
    p->creq.data = p;
    if (uv_tcp_connect(&p->creq, &p->upstream, (const struct sockaddr *)&m->upstream,
                       on_connected) != 0)
        pair_close(p);
}

static int parse_mapping(const char *arg, struct mapping *m)
{
    char ip[64];
    int lport, uport;
    unsigned long delay;
    if (sscanf(arg, "%d=%63[0-9.]:%d/%lu", &lport, ip, &uport, &delay) != 4)
        return -1;
    if (lport < 1 || lport > 65535 || uport < 1 || uport > 65535 || delay > MAX_DELAY_MS)
        return -1;
    if (uv_ip4_addr(ip, uport, &m->upstream) != 0)
        return -1;
    m->listen_port = lport;
    m->delay_ms = delay;
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: wan_delay [--mark N] [--max-buffer BYTES] LPORT=IP:PORT/DELAY_MS ...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static struct mapping maps[MAX_MAPPINGS];
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mark") == 0 && i + 1 < argc) {
            sock_mark = (unsigned int)strtoul(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--max-buffer") == 0 && i + 1 < argc) {
            max_buffer = strtoul(argv[++i], NULL, 0);
            if (max_buffer < READ_SIZE)
                usage();
        } else if (n < MAX_MAPPINGS && parse_mapping(argv[i], &maps[n]) == 0) {
            n++;
        } else {
            usage();
        }
    }
    if (n == 0)
        usage();
    /* A peer that closed while its bytes were on their way: a write error, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    for (int i = 0; i < n; i++) {
        struct sockaddr_in any;
        uv_ip4_addr("0.0.0.0", maps[i].listen_port, &any);
        uv_tcp_init(loop, &maps[i].server);
        maps[i].server.data = &maps[i];
        int rc = uv_tcp_bind(&maps[i].server, (const struct sockaddr *)&any, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&maps[i].server, 128, on_connection);
        if (rc != 0) {
            fprintf(stderr, "wan_delay: listen on port %d: %s\n", maps[i].listen_port,
                    uv_strerror(rc));
            return 1;
        }
    }
    printf("wan_delay: ready, %d mapping(s)\n", n);
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);
}
