/*
 * test_tcp_server.c - net/tcp_server, the listener under every hamr server,
 * with real sockets on 127.0.0.1 and ::1.
 *
 * The loop runs in the test's thread; clients are plain blocking sockets,
 * whose connect completes in the kernel's backlog without the loop. A 5 ms
 * tick timer makes each UV_RUN_ONCE return, so a wait is a bounded number
 * of passes (TEST_MAX_ITER) checking a condition. Every callback is
 * counted, and teardown fails if the loop still has handles.
 *
 * Covers: the cap that closes (the client past it sees EOF, the others
 * stay); the cap that evicts (the oldest connection not marked busy goes,
 * through shutdown_cb, and the newcomer stays; with every one busy the
 * newcomer goes); the cap that pauses (the client past it is not even allocated
 * until a connection is freed or the cap is raised); a failed allocation
 * (the client is accepted and closed, twice in a row through the spare
 * handle, and the listener accepts the next client); close with
 * connections open (done once, after every handle closed, and a
 * connection already closing is not handed to shutdown); IPv6 ::1 and
 * [::1]; a host that is no IP literal; a port in use.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "net/tcp_server.h"

#define TEST_MAX_ITER 2000 /* passes of 5 ms at most: 10 s */
#define TEST_CLIENTS 8

struct fixture;

/* test_conn - the owner's connection: the socket and, optionally, a timer. */
struct test_conn {
    struct tcp_server_conn base;
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct fixture *f;
};

struct fixture {
    uv_loop_t loop;
    uv_timer_t tick;
    struct tcp_server *srv;
    bool with_timer; /* accept_cb registers a timer too */
    int fail_allocs; /* alloc_cb fails this many times first */
    int allocs;      /* alloc_cb calls, failed ones included */
    int accepts;
    int shutdowns;
    int frees;
    int dones;
    int closeds;         /* tcp_server_close's callback */
    int dones_at_closed; /* dones when it ran */
    int frees_at_done;   /* frees when done_cb ran */
    int handles_at_done; /* loop handles (the tick aside) when done_cb ran */
    struct test_conn *accepted[TEST_CLIENTS];
    int clients[TEST_CLIENTS];
    int n_clients;
};

/* ------------------------------------------------------------------------ */
/* The owner's callbacks.                                                   */
/* ------------------------------------------------------------------------ */

static struct tcp_server_conn *test_alloc_cb(void *data, uv_tcp_t **tcp)
{
    struct fixture *f = data;
    f->allocs++;
    if (f->fail_allocs > 0) {
        f->fail_allocs--;
        return NULL;
    }
    struct test_conn *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->f = f;
    *tcp = &c->tcp;
    return &c->base;
}

static void test_accept_cb(void *data, struct tcp_server_conn *base)
{
    struct fixture *f = data;
    struct test_conn *c = hamr_container_of(base, struct test_conn, base);
    assert_ptr_equal(base->tcp, &c->tcp);
    if (f->with_timer)
        tcp_server_conn_timer_init(base, &c->timer);
    assert_true(f->accepts < TEST_CLIENTS);
    f->accepted[f->accepts++] = c;
}

static void test_shutdown_cb(void *data, struct tcp_server_conn *base)
{
    struct fixture *f = data;
    f->shutdowns++;
    tcp_server_conn_close(base);
}

static void test_free_cb(void *data, struct tcp_server_conn *base)
{
    struct fixture *f = data;
    struct test_conn *c = hamr_container_of(base, struct test_conn, base);
    for (int i = 0; i < f->accepts; i++)
        if (f->accepted[i] == c)
            f->accepted[i] = NULL;
    f->frees++;
    free(c);
}

static void test_count_handle(uv_handle_t *h, void *arg)
{
    struct fixture *f = arg;
    if (h != (uv_handle_t *)&f->tick)
        f->handles_at_done++;
}

static void test_done_cb(void *data)
{
    struct fixture *f = data;
    f->dones++;
    f->frees_at_done = f->frees;
    f->handles_at_done = 0;
    uv_walk(&f->loop, test_count_handle, f);
}

static void test_closed_cb(void *arg)
{
    struct fixture *f = arg;
    f->closeds++;
    f->dones_at_closed = f->dones;
}

static const struct tcp_server_ops test_ops = {
    .alloc_cb = test_alloc_cb,
    .accept_cb = test_accept_cb,
    .shutdown_cb = test_shutdown_cb,
    .free_cb = test_free_cb,
    .done_cb = test_done_cb,
};

/* ------------------------------------------------------------------------ */
/* Fixture and helpers.                                                     */
/* ------------------------------------------------------------------------ */

static void test_tick_cb(uv_timer_t *t)
{
    (void)t; /* only ends UV_RUN_ONCE */
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, test_tick_cb, 5, 5);
    *state = f;
    return 0;
}

/* test_run_until - run the loop until cond holds; fails the test after TEST_MAX_ITER passes. */
#define test_run_until(f, cond)                                         \
    do {                                                                \
        int test_iter_ = 0;                                             \
        while (!(cond) && test_iter_++ < TEST_MAX_ITER)                 \
            uv_run(&(f)->loop, UV_RUN_ONCE);                            \
        if (!(cond))                                                    \
            fail_msg("%s:%d: still not %s", __FILE__, __LINE__, #cond); \
    } while (0)

/* test_server_close - close the server (if open) and wait for done. */
static void test_server_close(struct fixture *f)
{
    if (f->srv == NULL)
        return;
    int dones = f->dones;
    tcp_server_close(f->srv, NULL, NULL);
    test_run_until(f, f->dones > dones);
    f->srv = NULL;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    test_server_close(f);
    for (int i = 0; i < f->n_clients; i++)
        if (f->clients[i] >= 0)
            close(f->clients[i]);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* test_listen - a server on host, port 0. */
static void test_listen(struct fixture *f, const char *host, size_t max, enum tcp_server_cap over)
{
    struct tcp_server_config cfg = {
        .name = "test", .host = host, .port = 0, .backlog = 16, .max_conns = max, .over = over};
    struct tcp_server_ops ops = test_ops;
    char err[256] = "";
    ops.data = f;
    assert_int_equal(tcp_server_new(&f->loop, &cfg, &ops, &f->srv, err, sizeof(err)), 0);
    assert_int_not_equal(tcp_server_port(f->srv), 0);
}

/* test_connect - a blocking client to the server (AF_INET or AF_INET6 loopback); its index. */
static int test_connect(struct fixture *f, int family)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    if (family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = in6addr_loopback;
        s6->sin6_port = htons(tcp_server_port(f->srv));
        len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        s4->sin_port = htons(tcp_server_port(f->srv));
        len = sizeof(*s4);
    }
    int fd = socket(family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&ss, len), 0);
    assert_true(f->n_clients < TEST_CLIENTS);
    f->clients[f->n_clients] = fd;
    return f->n_clients++;
}

/* test_client_closed - has the server closed client i (EOF or reset)? Never blocks. */
static bool test_client_closed(struct fixture *f, int i)
{
    char b;
    ssize_t n = recv(f->clients[i], &b, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* ------------------------------------------------------------------------ */
/* Tests.                                                                   */
/* ------------------------------------------------------------------------ */

/* cap_close - past max_conns the client is accepted and closed; the others stay. */
static void cap_close(void **state)
{
    struct fixture *f = *state;
    test_listen(f, "127.0.0.1", 2, TCP_SERVER_CAP_CLOSE);
    for (int i = 0; i < 3; i++)
        test_connect(f, AF_INET);
    test_run_until(f, f->allocs == 3 && f->frees == 1 && test_client_closed(f, 2));
    assert_int_equal(f->accepts, 2);
    assert_int_equal(tcp_server_conns(f->srv), 2);
    assert_false(test_client_closed(f, 0));
    assert_false(test_client_closed(f, 1));

    /* A freed slot takes the next client. */
    tcp_server_conn_close(&f->accepted[0]->base);
    test_run_until(f, tcp_server_conns(f->srv) == 1 && test_client_closed(f, 0));
    test_connect(f, AF_INET);
    test_run_until(f, f->accepts == 3);
    assert_int_equal(tcp_server_conns(f->srv), 2);
    assert_false(test_client_closed(f, 3));
}

/* cap_evict - past max_conns the oldest idle connection makes room; busy ones never do. */
static void cap_evict(void **state)
{
    struct fixture *f = *state;
    test_listen(f, "127.0.0.1", 3, TCP_SERVER_CAP_EVICT);
    for (int i = 0; i < 3; i++) {
        test_connect(f, AF_INET);
        test_run_until(f, f->accepts == i + 1);
    }
    tcp_server_conn_busy(&f->accepted[0]->base); /* the oldest has asked something */

    /* A fourth: the oldest idle one (client 1) is shut down, the newcomer kept. */
    test_connect(f, AF_INET);
    test_run_until(f, f->accepts == 4 && f->frees == 1 && test_client_closed(f, 1));
    assert_int_equal(f->shutdowns, 1);
    assert_int_equal(tcp_server_conns(f->srv), 3);
    assert_false(test_client_closed(f, 0));
    assert_false(test_client_closed(f, 2));
    assert_false(test_client_closed(f, 3));

    /* Every one busy: a fifth is closed at once, as with TCP_SERVER_CAP_CLOSE. */
    tcp_server_conn_busy(&f->accepted[2]->base);
    tcp_server_conn_busy(&f->accepted[3]->base);
    test_connect(f, AF_INET);
    test_run_until(f, f->allocs == 5 && f->frees == 2 && test_client_closed(f, 4));
    assert_int_equal(f->accepts, 4);
    assert_int_equal(f->shutdowns, 1);
    assert_int_equal(tcp_server_conns(f->srv), 3);
    for (int i = 0; i < 4; i++)
        if (i != 1)
            assert_false(test_client_closed(f, i));
}

/* cap_pause - at max_conns nothing more is allocated until a connection is freed. */
static void cap_pause(void **state)
{
    struct fixture *f = *state;
    test_listen(f, "127.0.0.1", 1, TCP_SERVER_CAP_PAUSE);
    test_connect(f, AF_INET);
    test_connect(f, AF_INET);
    test_connect(f, AF_INET);
    test_run_until(f, f->accepts == 1);
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_ONCE); /* time for a wrong accept to show */
    assert_int_equal(f->allocs, 1);
    assert_int_equal(tcp_server_conns(f->srv), 1);
    assert_false(test_client_closed(f, 1)); /* waiting, not refused */

    tcp_server_conn_close(&f->accepted[0]->base);
    test_run_until(f, f->accepts == 2);
    assert_int_equal(f->allocs, 2);
    assert_int_equal(tcp_server_conns(f->srv), 1);

    /* Client 2 waits again; raising the cap lets it in. */
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->allocs, 2);
    tcp_server_set_max_conns(f->srv, 2);
    test_run_until(f, f->accepts == 3);
    assert_int_equal(tcp_server_conns(f->srv), 2);
    assert_false(test_client_closed(f, 2));
}

/*
 * alloc_fail - no memory for two clients in a row: each is accepted and
 * closed (the second waits for the spare handle), and the listener goes on
 * accepting: the third client gets a connection.
 */
static void alloc_fail(void **state)
{
    struct fixture *f = *state;
    test_listen(f, "127.0.0.1", 8, TCP_SERVER_CAP_CLOSE);
    f->fail_allocs = 3; /* client 0; client 1, and client 1 again once the spare is free */
    test_connect(f, AF_INET);
    test_connect(f, AF_INET);
    test_run_until(f, test_client_closed(f, 0) && test_client_closed(f, 1));
    assert_int_equal(f->accepts, 0);
    assert_int_equal(f->fail_allocs, 0);
    assert_int_equal(tcp_server_conns(f->srv), 0);

    test_connect(f, AF_INET);
    test_run_until(f, f->accepts == 1);
    assert_int_equal(f->allocs, 4);
    assert_int_equal(tcp_server_conns(f->srv), 1);
    assert_false(test_client_closed(f, 2));
}

/*
 * close_with_conns - three connections of two handles each, one already
 * closing: done runs once, after every handle has closed; shutdown is asked
 * only for the two still open.
 */
static void close_with_conns(void **state)
{
    struct fixture *f = *state;
    f->with_timer = true;
    test_listen(f, "127.0.0.1", 8, TCP_SERVER_CAP_CLOSE);
    for (int i = 0; i < 3; i++)
        test_connect(f, AF_INET);
    test_run_until(f, f->accepts == 3);
    uv_timer_start(&f->accepted[1]->timer, test_tick_cb, 60000, 0);

    tcp_server_conn_close(&f->accepted[0]->base);
    tcp_server_close(f->srv, test_closed_cb, f);
    tcp_server_close(f->srv, test_closed_cb, f); /* idempotent */
    assert_int_equal(f->shutdowns, 2);
    assert_int_equal(f->dones, 0); /* never from inside close */
    assert_int_equal(f->closeds, 0);
    test_run_until(f, f->dones == 1);
    f->srv = NULL;
    assert_int_equal(f->closeds, 1);
    assert_int_equal(f->dones_at_closed, 1); /* done first, then the closer */
    assert_int_equal(f->frees_at_done, 3);
    assert_int_equal(f->handles_at_done, 0);
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->dones, 1);
    assert_int_equal(f->closeds, 1);
    for (int i = 0; i < 3; i++)
        test_run_until(f, test_client_closed(f, i));
}

/* close_idle - no connection at all: done still comes, once, from the loop. */
static void close_idle(void **state)
{
    struct fixture *f = *state;
    test_listen(f, "127.0.0.1", 8, TCP_SERVER_CAP_PAUSE);
    tcp_server_close(f->srv, NULL, NULL);
    assert_int_equal(f->dones, 0);
    test_run_until(f, f->dones == 1);
    f->srv = NULL;
    assert_int_equal(f->handles_at_done, 0);
}

/* ipv6 - ::1, plain and bracketed. */
static void ipv6(void **state)
{
    struct fixture *f = *state;
    static const char *const hosts[] = {"::1", "[::1]"};
    for (size_t h = 0; h < HAMR_ARRAY_LEN(hosts); h++) {
        test_listen(f, hosts[h], 8, TCP_SERVER_CAP_CLOSE);
        int i = test_connect(f, AF_INET6);
        test_run_until(f, f->accepts == (int)h + 1);
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        assert_int_equal(uv_tcp_getsockname(f->accepted[h]->base.tcp, (struct sockaddr *)&ss, &len),
                         0);
        assert_int_equal(ss.ss_family, AF_INET6);
        test_server_close(f);
        test_run_until(f, test_client_closed(f, i));
    }
}

/* bad_listen - not an IP literal: HAMR_EINVAL; a port in use: HAMR_EIO. No callback either way. */
static void bad_listen(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *label;
        const char *host;
        int want;
        const char *want_err;
    } cases[] = {
        {"name", "localhost", HAMR_EINVAL, "test: not an IP address: localhost"},
        {"empty", "", HAMR_EINVAL, "test: not an IP address: "},
        {"half bracket", "[::1", HAMR_EINVAL, "test: not an IP address: [::1"},
        {"v4 in brackets", "[127.0.0.1]", HAMR_EINVAL, "test: not an IP address: [127.0.0.1]"},
        {"port in use", "127.0.0.1", HAMR_EIO, "test: cannot listen on 127.0.0.1:"},
    };
    test_listen(f, "127.0.0.1", 8, TCP_SERVER_CAP_CLOSE);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct tcp_server_config cfg = {.name = "test",
                                        .host = cases[i].host,
                                        .port = tcp_server_port(f->srv),
                                        .backlog = 16,
                                        .max_conns = 8};
        struct tcp_server_ops ops = test_ops;
        struct tcp_server *s = NULL;
        char err[256] = "";
        ops.data = f;
        int rv = tcp_server_new(&f->loop, &cfg, &ops, &s, err, sizeof(err));
        if (rv != cases[i].want || strncmp(err, cases[i].want_err, strlen(cases[i].want_err)) != 0)
            fail_msg("%s: rv=%d err=\"%s\"", cases[i].label, rv, err);
        assert_null(s);
    }
    for (int i = 0; i < 5; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->dones, 0);
    assert_int_equal(f->allocs, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(cap_close, setup, teardown),
        cmocka_unit_test_setup_teardown(cap_evict, setup, teardown),
        cmocka_unit_test_setup_teardown(cap_pause, setup, teardown),
        cmocka_unit_test_setup_teardown(alloc_fail, setup, teardown),
        cmocka_unit_test_setup_teardown(close_with_conns, setup, teardown),
        cmocka_unit_test_setup_teardown(close_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(ipv6, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_listen, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
