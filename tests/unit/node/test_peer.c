/*
 * test_peer.c - node/peer: the pipelined peer channel, server and client on
 * one libuv loop, plus raw sockets for hostile input.
 *
 * The server's test handler reads the query's queue_id, "MODE:N": "now"
 * answers inside the request callback, "later" answers from a timer in
 * reverse order of arrival, "hold" keeps the call for the test to answer.
 * The answer's result is N (for a proposal: an FNV-1a hash of the entry
 * bytes) and leader_id is peer_call_node(call), so every answer proves that
 * it was matched to its own request and that the hello was recorded.
 *
 * Callbacks only record what they saw (cmocka assertions are made in the test
 * body, never inside the loop). Every wait runs UV_RUN_ONCE a bounded number
 * of times under a guard timer, and teardown fails if the loop still has
 * handles.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <uv.h>

#include "proto/proto_frame.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"

#include "net/cluster_tls.h"
#include "net/tls_stream.h"
#include "node/peer.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_pki.h"

#define TEST_GUARD_MS 10000
#define TEST_MAX_ITER 200000
#define TEST_MAX_CALLS 256
#define TEST_MAX_HELD 16
#define TEST_SELF_ID 42  /* the client's node (and its certificate's) */
#define TEST_SERVER_ID 1 /* the server's node (and its certificate's) */
#define TEST_LATER_MS 5  /* "later" answers after this (fixture's later_ms) */

/* test_result - what one client callback saw. */
struct test_result {
    int count;   /* callbacks run for this call */
    bool inside; /* a callback ran inside peer_client_call */
    int status;
    int64_t result;
    uint64_t leader;
    bool found;
};

/*
 * test_group - plaintext, or cluster TLS: the CA's node 1 (the server), node
 * 42 (the client), node 2, operator alice; and a stranger: another CA with
 * its own node 42.
 */
struct test_group {
    bool tls;
    struct testlib_pki pki, other;
    struct cluster_tls *srv_tls; /* node 1; NULL in plaintext */
    struct cluster_tls *cli_tls; /* node 42; NULL in plaintext */
    struct cluster_tls *n2_tls;  /* node 2 */
    struct cluster_tls *op_tls;  /* operator alice */
    struct cluster_tls *far_tls; /* the other CA's node 42 */
    SSL_CTX *nocert;             /* trusts the CA, shows no certificate */
    SSL_CTX *foreign;            /* trusts the CA, shows the other CA's node 42 */
};

/* test_held - a call the handler has not answered yet, with its answer. */
struct test_held {
    struct peer_call *call;
    int64_t value;
};

struct fixture {
    struct test_group *g;
    uv_loop_t loop;
    struct testlib_loop run; /* bounds every wait */

    struct peer_server *srv;
    bool srv_closed;
    uint16_t port;
    char addr[64];

    struct peer_client *cli;
    bool cli_closed;

    /* handler */
    int requests;
    uint64_t last_node;
    size_t last_entry_len;
    uv_timer_t later_timer;
    uint64_t later_ms;
    struct test_held later[TEST_MAX_CALLS];
    size_t n_later;
    struct test_held held[TEST_MAX_HELD];
    size_t n_held;
    int bad_requests; /* a request the handler could not parse */

    /* client */
    struct test_result res[TEST_MAX_CALLS];
    int order[TEST_MAX_CALLS]; /* indexes of res in completion order */
    int n_done;

    /* raw socket */
    int raw_fd;
    uv_poll_t raw_poll;
    bool raw_polling;
    bool raw_eof;
    bool raw_data; /* the server sent something to a raw client */
};

/* test_in_call - true while peer_client_call runs. */
static bool test_in_call;

/* ------------------------------------------------------------------------ */
/* Helpers.                                                                 */
/* ------------------------------------------------------------------------ */

/* test_fnv - FNV-1a 64 of p, as a non-negative int64. */
static int64_t test_fnv(const uint8_t *p, size_t n)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return (int64_t)(h & INT64_MAX);
}

/* test_answer - reply to call with result value. */
static int test_answer(struct peer_call *call, int64_t value, bool found)
{
    Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
    res.status = 0;
    res.result = value;
    res.found = found;
    res.leader_id = peer_call_node(call);
    return peer_reply(call, &res);
}

/* test_later_cb - answer every deferred call, newest first. */
static void test_later_cb(uv_timer_t *t)
{
    struct fixture *f = t->data;
    while (f->n_later > 0) {
        struct test_held h = f->later[--f->n_later];
        test_answer(h.call, h.value, true);
    }
}

/* test_request - the peer handler. */
static void test_request(void *data, struct peer_call *call, const Hamr__PeerMsg *msg)
{
    struct fixture *f = data;
    f->requests++;
    f->last_node = peer_call_node(call);
    if (msg->body_case == HAMR__PEER_MSG__BODY_PROPOSE) {
        f->last_entry_len = msg->propose->entry.len;
        test_answer(call, test_fnv(msg->propose->entry.data, msg->propose->entry.len), false);
        return;
    }
    char mode[16] = "";
    int n = -1;
    if (msg->body_case != HAMR__PEER_MSG__BODY_QUERY ||
        sscanf(msg->query->queue_id, "%15[a-z]:%d", mode, &n) != 2) {
        f->bad_requests++;
        test_answer(call, -1, false);
        return;
    }
    if (strcmp(mode, "later") == 0 && f->n_later < TEST_MAX_CALLS) {
        f->later[f->n_later++] = (struct test_held){call, n};
        if (!uv_is_active((uv_handle_t *)&f->later_timer))
            uv_timer_start(&f->later_timer, test_later_cb, f->later_ms, 0);
    } else if (strcmp(mode, "hold") == 0 && f->n_held < TEST_MAX_HELD) {
        f->held[f->n_held++] = (struct test_held){call, n};
    } else {
        test_answer(call, n, true);
    }
}

/* test_result_cb - the client's callback: record, never assert here. */
static void test_result_cb(void *arg, int status, const Hamr__PeerResult *res)
{
    struct test_result *r = arg;
    r->count++;
    r->inside |= test_in_call;
    r->status = status;
    if (res != NULL) {
        r->result = res->result;
        r->leader = res->leader_id;
        r->found = res->found;
    }
}

/* test_result_order_cb - as test_result_cb, and note the completion order. */
static void test_result_order_cb(void *arg, int status, const Hamr__PeerResult *res);

static struct fixture *test_order_fixture;

static void test_result_order_cb(void *arg, int status, const Hamr__PeerResult *res)
{
    struct test_result *r = arg;
    struct fixture *f = test_order_fixture;
    test_result_cb(arg, status, res);
    if (f->n_done < TEST_MAX_CALLS)
        f->order[f->n_done++] = (int)(r - f->res);
}

/* test_query - call "MODE:n" to addr with res[i] as the callback's record. */
static int test_query(struct fixture *f, const char *addr, const char *mode, int i, uint64_t ms)
{
    char id[64];
    snprintf(id, sizeof(id), "%s:%d", mode, i);
    Hamr__PeerQuery q = HAMR__PEER_QUERY__INIT;
    q.queue_id = id;
    Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
    m.body_case = HAMR__PEER_MSG__BODY_QUERY;
    m.query = &q;
    test_in_call = true;
    int rv =
        peer_client_call(f->cli, TEST_SERVER_ID, addr, &m, ms, test_result_order_cb, &f->res[i]);
    test_in_call = false;
    return rv;
}

/* test_propose - call with a proposal of n bytes (pattern from seed). */
static int test_propose(struct fixture *f, int i, size_t n, int64_t *hash)
{
    uint8_t *data = malloc(n);
    assert_non_null(data);
    for (size_t k = 0; k < n; k++)
        data[k] = (uint8_t)(k * 131 + (k >> 9) + (size_t)i);
    *hash = test_fnv(data, n);
    Hamr__PeerPropose p = HAMR__PEER_PROPOSE__INIT;
    p.entry.data = data;
    p.entry.len = n;
    Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
    m.body_case = HAMR__PEER_MSG__BODY_PROPOSE;
    m.propose = &p;
    m.req_id = 12345; /* ignored: the client assigns its own */
    test_in_call = true;
    int rv = peer_client_call(f->cli, TEST_SERVER_ID, f->addr, &m, 10000, test_result_order_cb,
                              &f->res[i]);
    test_in_call = false;
    free(data); /* packed already: the client keeps nothing of req */
    return rv;
}

/* test_wait - run the loop until cond holds, bounded in iterations and time (per wait). */
#define test_wait(f, cond) TESTLIB_LOOP_WAIT(&(f)->run, cond)

/* test_spin - a few non-blocking loop turns: lets stray events (if any) arrive. */
static void test_spin(struct fixture *f)
{
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* test_server_start - a server on 127.0.0.1:port (0: any). */
static int test_server_start(struct fixture *f, uint16_t port)
{
    struct peer_handler h = {.data = f, .request = test_request};
    char err[256];
    int rv =
        peer_server_new(&f->loop, "127.0.0.1", port, f->g->srv_tls, &h, &f->srv, err, sizeof(err));
    if (rv != 0) {
        fprintf(stderr, "%s\n", err);
        f->srv = NULL;
        return rv;
    }
    f->srv_closed = false;
    f->port = peer_server_port(f->srv);
    snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%u", (unsigned)f->port);
    return 0;
}

/* test_server_stop - close the server and wait for its callback. */
static void test_server_stop(struct fixture *f)
{
    peer_server_close(f->srv, testlib_flag_cb, &f->srv_closed);
    peer_server_close(f->srv, testlib_flag_cb, &f->srv_closed); /* idempotent */
    test_wait(f, f->srv_closed);
    f->srv = NULL;
}

/* test_count_all - sum of callback counts over res[0..n). */
static int test_count_all(const struct fixture *f, int n)
{
    int sum = 0;
    for (int i = 0; i < n; i++)
        sum += f->res[i].count;
    return sum;
}

/* test_assert_once - each of res[0..n) ran exactly once, outside calls, with status. */
static void test_assert_once(const struct fixture *f, int n, int status)
{
    for (int i = 0; i < n; i++) {
        assert_int_equal(f->res[i].count, 1);
        assert_false(f->res[i].inside);
        assert_int_equal(f->res[i].status, status);
    }
}

/* setup - a fresh loop, a server on a free port and a client (group state in, fixture out). */
static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (f == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    f->g = *state;
    log_set_level(LOG_LEVEL_ERROR);
    testlib_loop_init(&f->run, &f->loop, TEST_GUARD_MS, TEST_MAX_ITER);
    uv_timer_init(&f->loop, &f->later_timer);
    f->later_timer.data = f;
    f->later_ms = TEST_LATER_MS;
    f->raw_fd = -1;
    if (test_server_start(f, 0) != 0)
        return -1;
    f->cli = peer_client_new(&f->loop, TEST_SELF_ID, "hamr-test", f->g->cli_tls);
    if (f->cli == NULL)
        return -1;
    test_order_fixture = f;
    *state = f;
    return 0;
}

/* test_raw_poll_closed_cb - the poll handle may be used again. */
static void test_raw_poll_closed_cb(uv_handle_t *h)
{
    struct fixture *f = h->data;
    f->raw_polling = false;
}

/* test_raw_close - stop polling (waiting for the handle to close) and close the socket. */
static void test_raw_close(struct fixture *f)
{
    if (f->raw_polling) {
        uv_close((uv_handle_t *)&f->raw_poll, test_raw_poll_closed_cb);
        /* Closing a poll handle stops it at once, so the fd may be closed below. */
        for (int i = 0; i < 100 && f->raw_polling; i++)
            uv_run(&f->loop, UV_RUN_NOWAIT);
    }
    if (f->raw_fd >= 0) {
        close(f->raw_fd);
        f->raw_fd = -1;
    }
}

/* teardown - answer what is held, close everything, fail if handles remain. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    for (size_t i = 0; i < f->n_held; i++)
        test_answer(f->held[i].call, f->held[i].value, true);
    f->n_held = 0;
    test_later_cb(&f->later_timer);
    if (f->cli != NULL && !f->cli_closed) {
        peer_client_close(f->cli, testlib_flag_cb, &f->cli_closed);
        for (int i = 0; i < TEST_MAX_ITER && !f->cli_closed; i++)
            uv_run(&f->loop, UV_RUN_ONCE);
    }
    if (f->srv != NULL && !f->srv_closed) {
        peer_server_close(f->srv, testlib_flag_cb, &f->srv_closed);
        for (int i = 0; i < TEST_MAX_ITER && !f->srv_closed; i++)
            uv_run(&f->loop, UV_RUN_ONCE);
    }
    test_raw_close(f);
    testlib_loop_close(&f->run);
    uv_close((uv_handle_t *)&f->later_timer, NULL);
    int rv = testlib_loop_finish(&f->loop);
    bool ok = rv == 0 && f->cli_closed;
    free(f);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* Raw sockets.                                                             */
/* ------------------------------------------------------------------------ */

/* test_raw_poll_cb - the server wrote or hung up. */
static void test_raw_poll_cb(uv_poll_t *p, int status, int events)
{
    struct fixture *f = p->data;
    (void)events;
    char b[256];
    ssize_t n = status < 0 ? -1 : recv(f->raw_fd, b, sizeof(b), MSG_DONTWAIT);
    if (n > 0) {
        f->raw_data = true;
        return;
    }
    if (n < 0 && status >= 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    f->raw_eof = true; /* 0: orderly close; ECONNRESET: closed with our bytes unread */
    uv_poll_stop(p);
}

/* test_raw_connect - a raw client socket to port, polled for the server's close. */
static void test_raw_connect(struct fixture *f, uint16_t port)
{
    test_raw_close(f);
    f->raw_eof = false;
    f->raw_data = false;
    f->raw_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->raw_fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    /* Completes in the kernel against the backlog; the loop accepts later. */
    assert_int_equal(connect(f->raw_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(uv_poll_init(&f->loop, &f->raw_poll, f->raw_fd), 0);
    f->raw_poll.data = f;
    f->raw_polling = true;
    assert_int_equal(uv_poll_start(&f->raw_poll, UV_READABLE | UV_DISCONNECT, test_raw_poll_cb), 0);
}

/* test_raw_send - all of p on the raw socket. */
static void test_raw_send(struct fixture *f, const uint8_t *p, size_t n)
{
    assert_int_equal(send(f->raw_fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* test_pack - frame m into out (cap bytes); returns the frame length. */
static size_t test_pack(const Hamr__PeerMsg *m, uint8_t *out, size_t cap)
{
    size_t n = hamr__peer_msg__get_packed_size(m);
    assert_true(n + 4 <= cap);
    proto_u32_put(out, (uint32_t)n);
    hamr__peer_msg__pack(m, out + 4);
    return n + 4;
}

/* test_pack_hello - a hello frame from node_id. */
static size_t test_pack_hello(uint64_t node_id, uint8_t *out, size_t cap)
{
    Hamr__PeerHello h = HAMR__PEER_HELLO__INIT;
    h.node_id = node_id;
    h.version = "raw\x01\xff";
    h.format_version_max = PROTO_FORMAT_VERSION_MAX;
    Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
    m.body_case = HAMR__PEER_MSG__BODY_HELLO;
    m.hello = &h;
    return test_pack(&m, out, cap);
}

/* test_pack_query - a query frame "MODE:n" with req_id. */
static size_t test_pack_query(const char *id, uint64_t req_id, uint8_t *out, size_t cap)
{
    Hamr__PeerQuery q = HAMR__PEER_QUERY__INIT;
    q.queue_id = (char *)id;
    Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
    m.req_id = req_id;
    m.body_case = HAMR__PEER_MSG__BODY_QUERY;
    m.query = &q;
    return test_pack(&m, out, cap);
}

/* ------------------------------------------------------------------------ */
/* Tests.                                                                   */
/* ------------------------------------------------------------------------ */

/* test_hello_and_answer - one call: the hello's node id reaches the handler. */
static void test_hello_and_answer(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(test_query(f, f->addr, "now", 7, 5000), 0);
    assert_int_equal(f->res[7].count, 0); /* never inside the call */
    test_wait(f, f->res[7].count > 0);
    assert_int_equal(f->res[7].count, 1);
    assert_false(f->res[7].inside);
    assert_int_equal(f->res[7].status, 0);
    assert_int_equal(f->res[7].result, 7);
    assert_true(f->res[7].found);
    assert_int_equal(f->res[7].leader, TEST_SELF_ID);
    assert_int_equal(f->last_node, TEST_SELF_ID);
    assert_int_equal(f->requests, 1);
    assert_int_equal(peer_client_pending(f->cli), 0);
    struct peer_server_stats st;
    peer_server_stats(f->srv, &st);
    assert_int_equal(st.accepted, 1);
    assert_int_equal(st.tls + st.identity + st.timed_out, 0);
}

/* test_pipelined - 200 calls on one connection, half answered later in reverse order. */
static void test_pipelined(void **state)
{
    struct fixture *f = *state;
    enum { N = 200 };
    for (int i = 0; i < N; i++)
        assert_int_equal(test_query(f, f->addr, i % 2 ? "later" : "now", i, 5000), 0);
    assert_int_equal(peer_client_pending(f->cli), N);
    assert_int_equal(test_count_all(f, N), 0);
    test_wait(f, f->n_done == N);
    test_spin(f);
    test_assert_once(f, N, 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(f->res[i].result, i);
        assert_int_equal(f->res[i].leader, TEST_SELF_ID);
    }
    assert_int_equal(f->n_done, N);
    assert_int_equal(f->requests, N);
    assert_int_equal(f->bad_requests, 0);
    assert_int_equal(peer_server_conns(f->srv), 1);
    assert_int_equal(peer_client_pending(f->cli), 0);
    /* The answers really came back out of order. */
    int inversions = 0;
    for (int k = 1; k < N; k++)
        inversions += f->order[k] < f->order[k - 1];
    assert_true(inversions > 0);
}

/* test_big_propose - a 5 MiB proposal arrives intact and is answered. */
static void test_big_propose(void **state)
{
    struct fixture *f = *state;
    const size_t n = 5u * 1024 * 1024;
    int64_t hash0, hash1;
    assert_int_equal(test_propose(f, 0, n, &hash0), 0);
    assert_int_equal(test_propose(f, 1, n + 3, &hash1), 0);
    assert_true(hash0 != hash1);
    test_wait(f, f->n_done == 2);
    test_assert_once(f, 2, 0);
    assert_int_equal(f->res[0].result, hash0);
    assert_int_equal(f->res[1].result, hash1);
    assert_false(f->res[0].found);
    assert_int_equal(f->last_entry_len, n + 3);
    assert_int_equal(peer_server_conns(f->srv), 1);
}

/* test_timeout_late_answer - no answer in time: HAMR_ETIMEDOUT; the late one is dropped. */
static void test_timeout_late_answer(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(test_query(f, f->addr, "hold", 0, 50), 0);
    test_wait(f, f->res[0].count > 0);
    assert_int_equal(f->res[0].status, HAMR_ETIMEDOUT);
    assert_int_equal(f->n_held, 1);
    assert_int_equal(peer_client_pending(f->cli), 0);

    /* The late answer goes out before the next answer on the same stream. */
    assert_int_equal(test_answer(f->held[0].call, 0, true), 0);
    f->n_held = 0;
    assert_int_equal(test_query(f, f->addr, "now", 1, 5000), 0);
    test_wait(f, f->res[1].count > 0);
    test_spin(f);
    test_assert_once(f, 1, HAMR_ETIMEDOUT);
    assert_int_equal(f->res[1].count, 1);
    assert_int_equal(f->res[1].status, 0);
    assert_int_equal(f->res[1].result, 1);
    assert_int_equal(peer_server_conns(f->srv), 1); /* the connection survived */
}

/* test_server_close_outstanding - HAMR_ECONNECT once each; then a new server, a new connection. */
static void test_server_close_outstanding(void **state)
{
    struct fixture *f = *state;
    enum { N = 5 };
    for (int i = 0; i < N; i++)
        assert_int_equal(test_query(f, f->addr, "hold", i, 5000), 0);
    test_wait(f, f->n_held == N);
    uint16_t port = f->port;
    struct peer_server *old = f->srv;
    peer_server_close(old, testlib_flag_cb, &f->srv_closed);
    f->srv = NULL;
    test_wait(f, f->srv_closed && test_count_all(f, N) == N);
    test_spin(f);
    test_assert_once(f, N, HAMR_ECONNECT);
    assert_int_equal(peer_client_pending(f->cli), 0);

    /* The handler still answers its calls: orphaned, they are only freed. */
    for (size_t i = 0; i < f->n_held; i++)
        assert_int_equal(test_answer(f->held[i].call, f->held[i].value, true), 0);
    f->n_held = 0;
    test_spin(f);
    test_assert_once(f, N, HAMR_ECONNECT);

    /* A new server on the same port: the next call connects again. */
    assert_int_equal(test_server_start(f, port), 0);
    assert_int_equal(f->port, port);
    assert_int_equal(test_query(f, f->addr, "now", N, 5000), 0);
    test_wait(f, f->res[N].count > 0);
    assert_int_equal(f->res[N].status, 0);
    assert_int_equal(f->res[N].result, N);
    assert_int_equal(f->res[N].leader, TEST_SELF_ID);
    assert_int_equal(peer_server_conns(f->srv), 1);
}

/* test_connect_refused - nobody listens: HAMR_ECONNECT, and again on the next call. */
static void test_connect_refused(void **state)
{
    struct fixture *f = *state;
    test_server_stop(f);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(test_query(f, f->addr, "now", i, 5000), 0);
        assert_int_equal(f->res[i].count, 0);
        test_wait(f, f->res[i].count > 0);
    }
    test_spin(f);
    test_assert_once(f, 2, HAMR_ECONNECT);
    assert_int_equal(peer_client_pending(f->cli), 0);
}

/* test_connect_timeout - a listener whose backlog is full never answers the SYN. */
static void test_connect_timeout(void **state)
{
    struct fixture *f = *state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    /* Fill the accept queue (never accepted), so further SYNs are dropped. */
    int fill[2];
    for (int i = 0; i < 2; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&sa, sizeof(sa));
    }
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    peer_client_set_connect_timeout(f->cli, 100);
    uint64_t t0 = uv_now(&f->loop);
    assert_int_equal(test_query(f, addr, "now", 0, 5000), 0);
    test_wait(f, f->res[0].count > 0);
    uint64_t took = uv_now(&f->loop) - t0;
    for (int i = 0; i < 2; i++)
        close(fill[i]);
    close(lfd);
    test_assert_once(f, 1, HAMR_ECONNECT);
    assert_true(took >= 90 && took < 4000);
}

/* test_hostile_input - frames that must close the connection, without a handler call. */
enum test_hostile {
    TEST_OVERSIZE,
    TEST_GARBAGE,
    TEST_RESULT_BODY,
    TEST_EMPTY_BODY,
    TEST_TWO_HELLOS,
};

static const struct {
    const char *label;
    enum test_hostile kind;
} test_hostile_cases[] = {
    {"frame over PROTO_PEER_MAX", TEST_OVERSIZE},
    {"bytes that are not protobuf", TEST_GARBAGE},
    {"an answer sent to the server", TEST_RESULT_BODY},
    {"empty frame (no body)", TEST_EMPTY_BODY},
    {"a second hello", TEST_TWO_HELLOS},
};

static void test_hostile_input(void **state)
{
    struct fixture *f = *state;
    for (size_t c = 0; c < HAMR_ARRAY_LEN(test_hostile_cases); c++) {
        uint8_t frame[256];
        size_t n = 0;
        switch (test_hostile_cases[c].kind) {
            case TEST_OVERSIZE:
                proto_u32_put(frame, PROTO_PEER_MAX + 1);
                memset(frame + 4, 'x', 4);
                n = 8;
                break;
            case TEST_GARBAGE: {
                static const uint8_t g[] = {0, 0, 0, 3, 0xff, 0xff, 0xff};
                memcpy(frame, g, sizeof(g));
                n = sizeof(g);
                break;
            }
            case TEST_RESULT_BODY: {
                Hamr__PeerResult r = HAMR__PEER_RESULT__INIT;
                Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
                m.req_id = 1;
                m.body_case = HAMR__PEER_MSG__BODY_RESULT;
                m.result = &r;
                n = test_pack(&m, frame, sizeof(frame));
                break;
            }
            case TEST_EMPTY_BODY:
                proto_u32_put(frame, 0);
                n = 4;
                break;
            case TEST_TWO_HELLOS:
                n = test_pack_hello(5, frame, sizeof(frame));
                n += test_pack_hello(5, frame + n, sizeof(frame) - n);
                break;
        }
        print_message("case: %s\n", test_hostile_cases[c].label);
        test_raw_connect(f, f->port);
        test_wait(f, peer_server_conns(f->srv) == 1);
        test_raw_send(f, frame, n);
        test_wait(f, f->raw_eof && peer_server_conns(f->srv) == 0);
        assert_false(f->raw_data);
        assert_int_equal(f->requests, 0);
    }
    /* The listener still serves well-behaved clients. */
    assert_int_equal(test_query(f, f->addr, "now", 3, 5000), 0);
    test_wait(f, f->res[3].count > 0);
    assert_int_equal(f->res[3].status, 0);
}

/* test_pause_cb - a timer that sets the bool in its data. */
static void test_pause_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/*
 * test_hello_deadline_and_idle - a connection that never says hello is
 * closed at the deadline; one that said hello and then sits idle is closed
 * after the idle timeout; one with a call still with the handler is not.
 */
static void test_hello_deadline_and_idle(void **state)
{
    struct fixture *f = *state;
    peer_server_set_timeouts(f->srv, 200, 400);
    uint64_t t0 = uv_now(&f->loop);
    test_raw_connect(f, f->port);
    test_wait(f, peer_server_conns(f->srv) == 1);
    test_wait(f, f->raw_eof && peer_server_conns(f->srv) == 0);
    uv_update_time(&f->loop);
    assert_true(uv_now(&f->loop) - t0 >= 150); /* not before the deadline */

    uint8_t frame[128];
    test_raw_connect(f, f->port);
    test_wait(f, peer_server_conns(f->srv) == 1);
    test_raw_send(f, frame, test_pack_hello(7, frame, sizeof(frame)));
    uv_update_time(&f->loop);
    t0 = uv_now(&f->loop);
    test_wait(f, f->raw_eof && peer_server_conns(f->srv) == 0);
    uv_update_time(&f->loop);
    assert_true(uv_now(&f->loop) - t0 >= 300); /* idle, after the hello: the longer timeout */

    /* A call the handler holds keeps its connection open past the idle timeout. */
    assert_int_equal(test_query(f, f->addr, "hold", 0, 5000), 0);
    test_wait(f, f->n_held == 1);
    uv_timer_t pause;
    bool paused = false;
    uv_timer_init(&f->loop, &pause);
    pause.data = &paused;
    uv_timer_start(&pause, test_pause_cb, 700, 0);
    test_wait(f, paused);
    uv_close((uv_handle_t *)&pause, NULL);
    assert_int_equal(peer_server_conns(f->srv), 1);
    test_answer(f->held[0].call, 5, true);
    f->n_held = 0;
    test_wait(f, f->res[0].count > 0);
    assert_int_equal(f->res[0].status, 0);
    assert_int_equal(f->res[0].result, 5);
}

/* test_reply_after_disconnect - the caller hung up; peer_reply only frees. */
static void test_reply_after_disconnect(void **state)
{
    struct fixture *f = *state;
    uint8_t frames[512];
    size_t n = test_pack_hello(77, frames, sizeof(frames));
    n += test_pack_query("hold:5", 900, frames + n, sizeof(frames) - n);
    n += test_pack_query("hold:6", 901, frames + n, sizeof(frames) - n);
    test_raw_connect(f, f->port);
    test_raw_send(f, frames, n);
    test_wait(f, f->n_held == 2);
    assert_int_equal(f->last_node, 77);
    test_raw_close(f);
    test_wait(f, peer_server_conns(f->srv) == 0);
    assert_int_equal(peer_call_node(f->held[0].call), 77);
    assert_int_equal(test_answer(f->held[1].call, 6, true), 0);
    assert_int_equal(test_answer(f->held[0].call, 5, true), 0);
    f->n_held = 0;
    test_spin(f);
    assert_int_equal(peer_server_conns(f->srv), 0);
}

/* test_reply_to_raw_client - answers carry the caller's req_id, in the order answered. */
static void test_reply_to_raw_client(void **state)
{
    struct fixture *f = *state;
    uint8_t frames[512];
    size_t n = test_pack_query("hold:1", 1000, frames, sizeof(frames));
    n += test_pack_query("hold:2", 2000, frames + n, sizeof(frames) - n);
    test_raw_connect(f, f->port);
    uv_poll_stop(&f->raw_poll); /* read synchronously below instead, with a timeout */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(f->raw_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    test_raw_send(f, frames, n);
    test_wait(f, f->n_held == 2);
    assert_int_equal(f->last_node, 0); /* no hello */
    assert_int_equal(test_answer(f->held[1].call, 2, true), 0);
    assert_int_equal(test_answer(f->held[0].call, 1, true), 0);
    f->n_held = 0;
    test_spin(f);
    uint64_t want[2] = {2000, 1000};
    for (int i = 0; i < 2; i++) {
        uint8_t hdr[4], body[128];
        assert_int_equal(recv(f->raw_fd, hdr, 4, MSG_WAITALL), 4);
        uint32_t len = proto_u32_get(hdr);
        assert_true(len <= sizeof(body));
        assert_int_equal(recv(f->raw_fd, body, len, MSG_WAITALL), (ssize_t)len);
        Hamr__PeerMsg *m = hamr__peer_msg__unpack(NULL, len, body);
        assert_non_null(m);
        assert_int_equal(m->body_case, HAMR__PEER_MSG__BODY_RESULT);
        assert_int_equal(m->req_id, want[i]);
        assert_int_equal(m->result->result, (int64_t)(want[i] / 1000));
        hamr__peer_msg__free_unpacked(m, NULL);
    }
}

/* test_client_close_outstanding - HAMR_ESHUTDOWN once each, then the server sees the close. */
static void test_client_close_outstanding(void **state)
{
    struct fixture *f = *state;
    enum { N = 3 };
    /* The "later" answer must come after the close, even if the calls arrive
     * in several reads (as they may with TLS on a slow machine). */
    f->later_ms = 500;
    for (int i = 0; i < N; i++)
        assert_int_equal(test_query(f, f->addr, "hold", i, 5000), 0);
    assert_int_equal(test_query(f, f->addr, "later", N, 5000), 0);
    test_wait(f, f->n_held == N && f->n_later == 1);
    peer_client_close(f->cli, testlib_flag_cb, &f->cli_closed);
    peer_client_close(f->cli, testlib_flag_cb, &f->cli_closed); /* idempotent */
    test_assert_once(f, N + 1, HAMR_ESHUTDOWN);
    assert_false(f->cli_closed); /* never inside peer_client_close */
    test_wait(f, f->cli_closed && peer_server_conns(f->srv) == 0);
    f->cli = NULL;
    /* Answers to a connection that is gone, including the timer's "later" one. */
    for (size_t i = 0; i < f->n_held; i++)
        assert_int_equal(test_answer(f->held[i].call, f->held[i].value, true), 0);
    f->n_held = 0;
    test_wait(f, f->n_later == 0);
    test_spin(f);
    test_assert_once(f, N + 1, HAMR_ESHUTDOWN);
}

/* test_backpressure - the server stops reading while its handler holds too much. */
static void test_backpressure(void **state)
{
    struct fixture *f = *state;
    enum { N = 10, PAD = 20000 };
    peer_server_set_held_limit(f->srv, PEER_HELD_MAX, 2);
    /* 10 x 20 kB: more than one read's worth, so a pause shows. */
    char *id = malloc(PAD + 32);
    assert_non_null(id);
    for (int i = 0; i < N; i++) {
        int k = snprintf(id, PAD + 32, "hold:%d:", i);
        memset(id + k, 'p', PAD);
        id[k + PAD] = '\0';
        Hamr__PeerQuery q = HAMR__PEER_QUERY__INIT;
        q.queue_id = id;
        Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
        m.body_case = HAMR__PEER_MSG__BODY_QUERY;
        m.query = &q;
        assert_int_equal(peer_client_call(f->cli, TEST_SERVER_ID, f->addr, &m, 5000,
                                          test_result_order_cb, &f->res[i]),
                         0);
    }
    free(id);
    test_wait(f, f->n_held >= 2);
    test_spin(f);
    size_t first = f->n_held;
    assert_true(first < N); /* paused: the rest waits in the socket */
    assert_int_equal(peer_client_pending(f->cli), N);
    /* Answering resumes reading; bounded rounds until every call is answered. */
    int rounds = 0;
    while (f->n_done < N && rounds++ < N) {
        for (size_t i = 0; i < f->n_held; i++)
            assert_int_equal(test_answer(f->held[i].call, f->held[i].value, true), 0);
        f->n_held = 0;
        test_wait(f, f->n_held > 0 || f->n_done == N);
    }
    test_wait(f, f->n_done == N);
    test_assert_once(f, N, 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(f->res[i].result, i);
    assert_true(rounds > 1);
    assert_int_equal(f->requests, N);
}

/* test_call_errors - refused at once: the callback never runs. */
static void test_call_errors(void **state)
{
    struct fixture *f = *state;
    static const char *bad_addrs[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "127.0.0.1:12a",
        "localhost:25",
        "[::1]",
        "[::1:25",
        "::1:25",
        "1.2.3:25",
        "127.0.0.1:25:25",
        "[::1]:999999",
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad_addrs); i++) {
        print_message("addr: \"%s\"\n", bad_addrs[i]);
        assert_int_equal(test_query(f, bad_addrs[i], "now", 0, 5000), HAMR_EINVAL);
    }
    Hamr__PeerMsg none = HAMR__PEER_MSG__INIT;
    assert_int_equal(
        peer_client_call(f->cli, TEST_SERVER_ID, f->addr, &none, 0, test_result_cb, &f->res[0]),
        HAMR_EINVAL);
    Hamr__PeerHello h = HAMR__PEER_HELLO__INIT;
    Hamr__PeerMsg hello = HAMR__PEER_MSG__INIT;
    hello.body_case = HAMR__PEER_MSG__BODY_HELLO;
    hello.hello = &h;
    assert_int_equal(
        peer_client_call(f->cli, TEST_SERVER_ID, f->addr, &hello, 0, test_result_cb, &f->res[0]),
        HAMR_EINVAL);

    /* Over the queue limit while still connecting: HAMR_EBUSY; the first goes through. */
    peer_client_set_queue_limit(f->cli, 1024 * 1024);
    int64_t hash1, hash2;
    assert_int_equal(test_propose(f, 1, 600 * 1024, &hash1), 0);
    assert_int_equal(test_propose(f, 2, 600 * 1024, &hash2), HAMR_EBUSY);
    test_wait(f, f->res[1].count > 0);
    test_spin(f);
    assert_int_equal(f->res[0].count, 0);
    assert_int_equal(f->res[1].count, 1);
    assert_int_equal(f->res[1].status, 0);
    assert_int_equal(f->res[1].result, hash1);
    assert_int_equal(f->res[2].count, 0);
    assert_int_equal(f->requests, 1);
    assert_int_equal(peer_client_pending(f->cli), 0);
}

/* test_ipv6 - "[::1]:port" works where the host has IPv6 loopback. */
static void test_ipv6(void **state)
{
    struct fixture *f = *state;
    struct peer_handler h = {.data = f, .request = test_request};
    struct peer_server *s6 = NULL;
    char err[256];
    if (peer_server_new(&f->loop, "::1", 0, f->g->srv_tls, &h, &s6, err, sizeof(err)) != 0) {
        /* The failed server closes itself: let its handle go before skipping. */
        test_spin(f);
        skip();
    }
    char addr[64];
    snprintf(addr, sizeof(addr), "[::1]:%u", (unsigned)peer_server_port(s6));
    assert_int_equal(test_query(f, addr, "now", 4, 5000), 0);
    test_wait(f, f->res[4].count > 0);
    bool closed = false;
    peer_server_close(s6, testlib_flag_cb, &closed);
    test_wait(f, closed);
    assert_int_equal(f->res[4].status, 0);
    assert_int_equal(f->res[4].result, 4);
    assert_int_equal(f->res[4].leader, TEST_SELF_ID);
}

/* ------------------------------------------------------------------------ */
/* Cluster TLS: identities.                                                 */
/* ------------------------------------------------------------------------ */

/*
 * test_other_client - one query from a client of its own (self_id, its
 * certificate ctls, NULL: plaintext) to node at the server's address; its
 * status once the client has closed again, its counters in *cst.
 */
static int test_other_client(struct fixture *f,
                             uint64_t self_id,
                             struct cluster_tls *ctls,
                             uint64_t node,
                             struct peer_client_stats *cst)
{
    struct peer_client *c = peer_client_new(&f->loop, self_id, "other", ctls);
    assert_non_null(c);
    char id[32] = "now:9";
    Hamr__PeerQuery q = HAMR__PEER_QUERY__INIT;
    q.queue_id = id;
    Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
    m.body_case = HAMR__PEER_MSG__BODY_QUERY;
    m.query = &q;
    struct test_result r = {0};
    assert_int_equal(peer_client_call(c, node, f->addr, &m, 5000, test_result_cb, &r), 0);
    test_wait(f, r.count > 0);
    peer_client_stats(c, cst);
    bool closed = false;
    peer_client_close(c, testlib_flag_cb, &closed);
    test_wait(f, closed && peer_server_conns(f->srv) == 0);
    assert_int_equal(r.count, 1);
    return r.status;
}

/* test_stats - the server's counters now. */
static struct peer_server_stats test_stats(const struct fixture *f)
{
    struct peer_server_stats st;
    peer_server_stats(f->srv, &st);
    return st;
}

/*
 * test_tls_hello_must_match_cert - node 42's certificate with a hello that
 * says node 7: refused before any request, counted as identity; the true
 * hello still passes and its calls carry the certificate's id.
 */
static void test_tls_hello_must_match_cert(void **state)
{
    struct fixture *f = *state;
    struct peer_client_stats cst;
    assert_int_equal(test_other_client(f, 7, f->g->cli_tls, TEST_SERVER_ID, &cst), HAMR_ECONNECT);
    assert_int_equal(cst.tls + cst.identity, 0); /* the server was the one meant */
    struct peer_server_stats st = test_stats(f);
    assert_int_equal(st.identity, 1);
    assert_int_equal(st.accepted, 0);
    assert_int_equal(f->requests, 0);

    assert_int_equal(test_query(f, f->addr, "now", 1, 5000), 0);
    test_wait(f, f->res[1].count > 0);
    assert_int_equal(f->res[1].status, 0);
    assert_int_equal(f->last_node, TEST_SELF_ID);
    st = test_stats(f);
    assert_int_equal(st.accepted, 1);
    assert_int_equal(st.identity, 1);
}

/*
 * test_tls_not_a_member - certificates that are not a node's of this CA:
 * another CA's node, an operator's, and no TLS at all. Each fails the call
 * (HAMR_ECONNECT), never reaches the handler, and counts as tls.
 */
static void test_tls_not_a_member(void **state)
{
    struct fixture *f = *state;
    struct peer_client_stats cst;
    /* The other CA's node does not take our server either: its own handshake fails. */
    assert_int_equal(test_other_client(f, 42, f->g->far_tls, TEST_SERVER_ID, &cst), HAMR_ECONNECT);
    assert_int_equal(cst.tls, 1);
    assert_int_equal(test_other_client(f, 42, f->g->op_tls, TEST_SERVER_ID, &cst), HAMR_ECONNECT);
    assert_int_equal(test_other_client(f, 42, NULL, TEST_SERVER_ID, &cst), HAMR_ECONNECT);
    struct peer_server_stats st = test_stats(f);
    assert_int_equal(st.tls, 3);
    assert_int_equal(st.accepted + st.identity, 0);
    assert_int_equal(f->requests, 0);
}

/* test_rawtls - a TLS client of the test's own: any context, frames written before the handshake.
 */
struct test_rawtls {
    struct tls_stream_handle h;
    struct tls_stream *ts;
    uv_connect_t connect;
    SSL_CTX *ctx;
    uint8_t out[256];
    size_t n_out;
    int hs;   /* handshake_cb with 0 */
    int ends; /* the end, reported */
    int end_status;
    int wrote; /* write callbacks */
    size_t got;
    bool closed;
    char rbuf[512];
};

static void test_rawtls_alloc_cb(void *data, uv_buf_t *b)
{
    struct test_rawtls *t = data;
    *b = uv_buf_init(t->rbuf, sizeof(t->rbuf));
}

static void test_rawtls_read_cb(void *data, ssize_t nread, const uv_buf_t *b)
{
    struct test_rawtls *t = data;
    (void)b;
    if (nread > 0)
        t->got += (size_t)nread;
    if (nread < 0) {
        t->ends++;
        t->end_status = (int)nread;
    }
}

static void test_rawtls_hs_cb(void *data, int status)
{
    struct test_rawtls *t = data;
    if (status == 0) {
        t->hs++;
        return;
    }
    t->ends++;
    t->end_status = status;
}

static void test_rawtls_write_cb(void *arg, int status)
{
    struct test_rawtls *t = arg;
    (void)status;
    t->wrote++;
}

static void test_rawtls_connect_cb(uv_connect_t *req, int status)
{
    struct test_rawtls *t = hamr_container_of(req, struct test_rawtls, connect);
    if (status < 0) {
        t->ends++;
        t->end_status = status;
        return;
    }
    const struct tls_stream_ops ops = {.data = t,
                                       .alloc_cb = test_rawtls_alloc_cb,
                                       .read_cb = test_rawtls_read_cb,
                                       .handshake_cb = test_rawtls_hs_cb};
    if (tls_stream_init(&t->ts, &t->h, t->ctx, false, &ops) != 0 ||
        tls_stream_write(t->ts, t->out, t->n_out, test_rawtls_write_cb, t) != 0 ||
        tls_stream_read_start(t->ts) != 0) {
        t->ends++;
        t->end_status = UV_EPROTO;
    }
}

static void test_rawtls_closed_cb(uv_handle_t *h)
{
    struct test_rawtls *t = hamr_container_of(h, struct test_rawtls, h.u.stream);
    tls_stream_free(t->ts);
    t->closed = true;
}

/*
 * test_tls_stranger_certs - a client that shows no certificate, and one
 * that shows another CA's (trusting ours): the server's handshake fails,
 * it counts them, and the hello and query they sent reach nobody.
 */
static void test_tls_stranger_certs(void **state)
{
    struct fixture *f = *state;
    SSL_CTX *ctxs[] = {f->g->nocert, f->g->foreign};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(ctxs); i++) {
        struct test_rawtls *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        t->ctx = ctxs[i];
        t->n_out = test_pack_hello(TEST_SELF_ID, t->out, sizeof(t->out));
        t->n_out += test_pack_query("now:3", 3, t->out + t->n_out, sizeof(t->out) - t->n_out);
        struct sockaddr_in sa;
        uv_ip4_addr("127.0.0.1", f->port, &sa);
        assert_int_equal(uv_tcp_init(&f->loop, &t->h.u.tcp), 0);
        assert_int_equal(uv_tcp_connect(&t->connect, &t->h.u.tcp, (struct sockaddr *)&sa,
                                        test_rawtls_connect_cb),
                         0);
        test_wait(f, t->ends > 0 && peer_server_conns(f->srv) == 0);
        uv_close((uv_handle_t *)&t->h.u.stream, test_rawtls_closed_cb);
        test_wait(f, t->closed);
        print_message("stranger %zu: %s\n", i, uv_err_name(t->end_status));
        assert_int_equal(t->ends, 1);
        assert_int_equal(t->got, 0);
        assert_int_equal(t->wrote, 1);
        free(t);
        struct peer_server_stats st = test_stats(f);
        assert_int_equal(st.tls, i + 1);
        assert_int_equal(st.accepted, 0);
    }
    assert_int_equal(f->requests, 0);
}

/*
 * test_tls_wrong_server - the client means node 2, the server at that
 * address is node 1: the call fails and nothing is sent (no hello, no
 * request reach the server).
 */
static void test_tls_wrong_server(void **state)
{
    struct fixture *f = *state;
    Hamr__PeerQuery q = HAMR__PEER_QUERY__INIT;
    q.queue_id = "now:5";
    Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
    m.body_case = HAMR__PEER_MSG__BODY_QUERY;
    m.query = &q;
    assert_int_equal(peer_client_call(f->cli, 2, f->addr, &m, 5000, test_result_cb, &f->res[0]), 0);
    test_wait(f, f->res[0].count > 0);
    test_wait(f, peer_server_conns(f->srv) == 0);
    test_spin(f);
    assert_int_equal(f->res[0].status, HAMR_ECONNECT);
    struct peer_client_stats cst;
    peer_client_stats(f->cli, &cst);
    assert_int_equal(cst.identity, 1);
    assert_int_equal(cst.tls, 0);
    struct peer_server_stats st = test_stats(f);
    assert_int_equal(st.accepted + st.identity + st.tls, 0);
    assert_int_equal(f->requests, 0);
    /* Node 0 names no certificate: refused at once. */
    assert_int_equal(peer_client_call(f->cli, 0, f->addr, &m, 5000, test_result_cb, &f->res[1]),
                     HAMR_EINVAL);
    /* The node meant (node 1) at the same address: a connection of its own, answered. */
    assert_int_equal(test_query(f, f->addr, "now", 2, 5000), 0);
    test_wait(f, f->res[2].count > 0);
    assert_int_equal(f->res[2].status, 0);
    assert_int_equal(f->res[2].result, 2);
}

/*
 * test_tls_handshake_deadline - a connection that never starts TLS is closed
 * at the hello deadline, counted as timed out; one that finished the
 * handshake and never says hello too.
 */
static void test_tls_handshake_deadline(void **state)
{
    struct fixture *f = *state;
    peer_server_set_timeouts(f->srv, 200, 60000);
    uint64_t t0 = uv_now(&f->loop);
    test_raw_connect(f, f->port);
    test_wait(f, peer_server_conns(f->srv) == 1);
    test_wait(f, f->raw_eof && peer_server_conns(f->srv) == 0);
    uv_update_time(&f->loop);
    assert_true(uv_now(&f->loop) - t0 >= 150);
    assert_int_equal(test_stats(f).timed_out, 1);

    struct test_rawtls *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    t->ctx = cluster_tls_client_ctx(f->g->cli_tls);
    t->n_out = test_pack_query("now:4", 4, t->out, sizeof(t->out)); /* a request, no hello */
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", f->port, &sa);
    assert_int_equal(uv_tcp_init(&f->loop, &t->h.u.tcp), 0);
    assert_int_equal(
        uv_tcp_connect(&t->connect, &t->h.u.tcp, (struct sockaddr *)&sa, test_rawtls_connect_cb),
        0);
    test_wait(f, t->ends > 0);
    assert_int_equal(t->hs, 1);
    assert_true(t->got > 0); /* the request was answered: node from the certificate */
    uv_close((uv_handle_t *)&t->h.u.stream, test_rawtls_closed_cb);
    test_wait(f, t->closed && peer_server_conns(f->srv) == 0);
    free(t);
    assert_int_equal(f->requests, 1);
    assert_int_equal(f->last_node, TEST_SELF_ID);
    assert_int_equal(test_stats(f).timed_out, 2);
}

/*
 * test_tls_handshake_timeout - a listener that takes the TCP connection
 * (kernel backlog) and never answers TLS: the connect timeout covers the
 * handshake, so the call fails then, not at its own deadline.
 */
static void test_tls_handshake_timeout(void **state)
{
    struct fixture *f = *state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 8), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    peer_client_set_connect_timeout(f->cli, 100);
    uint64_t t0 = uv_now(&f->loop);
    assert_int_equal(test_query(f, addr, "now", 0, 5000), 0);
    test_wait(f, f->res[0].count > 0);
    uv_update_time(&f->loop);
    uint64_t took = uv_now(&f->loop) - t0;
    close(lfd);
    test_assert_once(f, 1, HAMR_ECONNECT);
    assert_true(took >= 90 && took < 2000);
}

/* ------------------------------------------------------------------------ */
/* Groups.                                                                  */
/* ------------------------------------------------------------------------ */

/* test_tls_load - cluster contexts for NAME (node-ID, operator-NAME) of pki. */
static struct cluster_tls *test_tls_load(const struct testlib_pki *pki, const char *name)
{
    char ca[512], cert[512], key[512], n[96], err[512];
    testlib_pki_path(pki, "ca.pem", ca, sizeof(ca));
    snprintf(n, sizeof(n), "%s.pem", name);
    testlib_pki_path(pki, n, cert, sizeof(cert));
    snprintf(n, sizeof(n), "%s.key", name);
    testlib_pki_path(pki, n, key, sizeof(key));
    struct cluster_tls_files files = {.ca = ca, .cert = cert, .key = key};
    struct cluster_tls *c = NULL;
    if (cluster_tls_new(&files, &c, err, sizeof(err)) != 0)
        fprintf(stderr, "cluster_tls_new %s: %s\n", name, err);
    return c;
}

/* test_raw_ctx - a client context that trusts ca and shows cert (NULL: none). */
static SSL_CTX *test_raw_ctx(const char *ca, const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    bool ok = SSL_CTX_load_verify_locations(ctx, ca, NULL) == 1;
    if (ok && cert != NULL)
        ok = SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 &&
             SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1;
    if (!ok) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static struct test_group test_plain_group;
static struct test_group test_tls_group = {.tls = true};

static int group_setup_plain(void **state)
{
    *state = &test_plain_group;
    return 0;
}

static int group_setup_tls(void **state)
{
    struct test_group *g = &test_tls_group;
    char ca[512], cert[512], key[512];
    if (!testlib_pki_init(&g->pki) || !testlib_pki_node(&g->pki, TEST_SERVER_ID, 0) ||
        !testlib_pki_node(&g->pki, TEST_SELF_ID, 0) || !testlib_pki_node(&g->pki, 2, 0) ||
        !testlib_pki_operator(&g->pki, "alice") || !testlib_pki_init(&g->other) ||
        !testlib_pki_node(&g->other, TEST_SELF_ID, 0))
        return -1;
    g->srv_tls = test_tls_load(&g->pki, "node-1");
    g->cli_tls = test_tls_load(&g->pki, "node-42");
    g->n2_tls = test_tls_load(&g->pki, "node-2");
    g->op_tls = test_tls_load(&g->pki, "operator-alice");
    g->far_tls = test_tls_load(&g->other, "node-42");
    testlib_pki_path(&g->pki, "ca.pem", ca, sizeof(ca));
    g->nocert = test_raw_ctx(ca, NULL, NULL);
    g->foreign = test_raw_ctx(ca, testlib_pki_path(&g->other, "node-42.pem", cert, sizeof(cert)),
                              testlib_pki_path(&g->other, "node-42.key", key, sizeof(key)));
    if (g->srv_tls == NULL || g->cli_tls == NULL || g->n2_tls == NULL || g->op_tls == NULL ||
        g->far_tls == NULL || g->nocert == NULL || g->foreign == NULL)
        return -1;
    *state = g;
    return 0;
}

static int group_teardown_tls(void **state)
{
    struct test_group *g = *state;
    cluster_tls_free(g->srv_tls);
    cluster_tls_free(g->cli_tls);
    cluster_tls_free(g->n2_tls);
    cluster_tls_free(g->op_tls);
    cluster_tls_free(g->far_tls);
    SSL_CTX_free(g->nocert);
    SSL_CTX_free(g->foreign);
    testlib_pki_cleanup(&g->pki);
    testlib_pki_cleanup(&g->other);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as hamrd does: a vanished peer is EPIPE, not death */
    /* Plaintext: everything, raw sockets included. */
    const struct CMUnitTest plain[] = {
        cmocka_unit_test_setup_teardown(test_hello_and_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_propose, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_late_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_close_outstanding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello_deadline_and_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_after_disconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_to_raw_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_close_outstanding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
    };
    /* Cluster TLS: the same channel (raw plaintext frames cannot reach it), and identities. */
    const struct CMUnitTest tls[] = {
        cmocka_unit_test_setup_teardown(test_hello_and_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_propose, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_late_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_close_outstanding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_close_outstanding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_hello_must_match_cert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_not_a_member, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_stranger_certs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_wrong_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_handshake_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_handshake_timeout, setup, teardown),
    };
    int failed = cmocka_run_group_tests_name("plaintext", plain, group_setup_plain, NULL);
    failed += cmocka_run_group_tests_name("cluster TLS", tls, group_setup_tls, group_teardown_tls);
    return failed;
}
