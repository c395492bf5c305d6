/*
 * test_http.c - node/http: the readiness decision (a table with every
 * reason) and the HTTP endpoint on a real loop with real sockets on
 * 127.0.0.1.
 *
 * The clients are libuv TCP handles on the same loop as the server: each
 * connects, writes its request in one or more pieces, optionally half-closes,
 * and reads until EOF. The loop runs UV_RUN_ONCE a bounded number of times
 * and a guard timer bounds the wall time; teardown fails if handles remain.
 *
 * The TLS listener is tested on a cluster PKI made by deploy/make-pki.sh
 * once for the run, with TLS clients on the same loop (net/tls_stream as
 * the client): an operator is served; a node's certificate, another CA's,
 * none, plaintext and a stalled handshake are refused, and counted as
 * their kind. A listener in the clear whose /metrics is on the TLS one
 * answers 403 there and keeps the health endpoints.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"

#include "net/cluster_tls.h"
#include "net/tls.h"
#include "net/tls_stream.h"
#include "node/http.h"
#include "node/metrics.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_pki.h"

#define TEST_GUARD_MS 10000
#define TEST_MAX_ITER 100000
#define TEST_RESP_MAX (1 << 20)
#define TEST_MAX_CLIENTS 80
#define TEST_MIB (1024ull * 1024)

/* A listener in the clear on a free port of 127.0.0.1. */
static const struct http_config test_local = {.host = "127.0.0.1"};

/* ------------------------------------------------------------------------ */
/* Readiness decision.                                                      */
/* ------------------------------------------------------------------------ */

/* health_table - every reason, and the order in which they win. */
static void health_table(void **state)
{
    (void)state;
    /* A follower in quorum with room on disk: the base every row changes. */
    const struct health_input base = {
        .leader_known = true,
        .last_leader_contact_ms = 150,
        .election_timeout_ms = 1000,
        .disk_free_bytes = 1024 * TEST_MIB,
        .min_free_bytes = 256 * TEST_MIB,
    };
    struct {
        const char *label;
        struct health_input in;
        bool want;
        const char *want_reason;
    } cases[] = {
        {"follower ok", base, true, "ready"},
        {"raft failed", base, false, "raft failed"},
        {"draining", base, false, "draining"},
        {"no leader", base, false, "no leader"},
        {"stale contact", base, false, "no contact with the leader for 2000 ms (limit 2000 ms)"},
        {"never heard", base, false, "no contact with the leader (limit 2000 ms)"},
        {"contact just in time", base, true, "ready"},
        {"leader ignores contact", base, true, "ready"},
        {"default election timeout", base, false,
         "no contact with the leader for 2500 ms (limit 2000 ms)"},
        {"longer election timeout", base, true, "ready"},
        {"disk low", base, false, "disk low: 12 MiB free, 256 MiB required"},
        {"disk exactly at min", base, true, "ready"},
        {"disk check off", base, true, "ready"},
        {"failed beats draining", base, false, "raft failed"},
        {"draining beats no leader", base, false, "draining"},
        {"no leader beats disk", base, false, "no leader"},
        {"stale beats disk", base, false, "no contact with the leader for 5000 ms (limit 2000 ms)"},
        {"catching up", base, false, "catching up: 1001 entries behind"},
        {"lag at the limit", base, true, "ready"},
        {"catching up beats disk", base, false, "catching up: 5000 entries behind"},
        {"queue full stays ready", base, true,
         "ready; queue full: 5 messages (limit 5), 900 bytes (limit 0)"},
        {"disk low beats queue full", base, false, "disk low: 0 MiB free, 256 MiB required"},
    };
    cases[1].in.raft_failed = true;
    cases[2].in.draining = true;
    cases[3].in.leader_known = false;
    cases[4].in.last_leader_contact_ms = 2000;
    cases[5].in.last_leader_contact_ms = UINT64_MAX;
    cases[6].in.last_leader_contact_ms = 1999;
    cases[7].in.is_leader = true;
    cases[7].in.last_leader_contact_ms = UINT64_MAX;
    cases[8].in.election_timeout_ms = 0;
    cases[8].in.last_leader_contact_ms = 2500;
    cases[9].in.election_timeout_ms = 5000;
    cases[9].in.last_leader_contact_ms = 9000;
    cases[10].in.disk_free_bytes = 12 * TEST_MIB + 5;
    cases[11].in.disk_free_bytes = cases[11].in.min_free_bytes;
    cases[12].in.min_free_bytes = 0;
    cases[12].in.disk_free_bytes = 0;
    cases[13].in.raft_failed = true;
    cases[13].in.draining = true;
    cases[13].in.leader_known = false;
    cases[14].in.draining = true;
    cases[14].in.leader_known = false;
    cases[15].in.leader_known = false;
    cases[15].in.disk_free_bytes = 0;
    cases[16].in.last_leader_contact_ms = 5000;
    cases[16].in.disk_free_bytes = 0;
    cases[17].in.apply_lag = HEALTH_MAX_APPLY_LAG + 1;
    cases[18].in.apply_lag = HEALTH_MAX_APPLY_LAG;
    cases[19].in.apply_lag = 5000;
    cases[19].in.disk_free_bytes = 0;
    for (size_t i = 20; i <= 21; i++) {
        cases[i].in.queue_full = true;
        cases[i].in.queue_messages = 5;
        cases[i].in.queue_max_messages = 5;
        cases[i].in.queue_bytes = 900;
    }
    cases[21].in.disk_free_bytes = 0;

    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        char reason[128];
        memset(reason, 'x', sizeof(reason));
        bool got = health_ready(&cases[i].in, reason, sizeof(reason));
        if (got != cases[i].want || strcmp(reason, cases[i].want_reason) != 0)
            fail_msg("%s: got %d \"%s\", want %d \"%s\"", cases[i].label, got, reason,
                     cases[i].want, cases[i].want_reason);
    }
    /* The reason is truncated, never overrun; no buffer at all is allowed. */
    char small[6];
    assert_false(health_ready(&cases[2].in, small, sizeof(small)));
    assert_string_equal(small, "drain");
    assert_false(health_ready(&cases[2].in, NULL, 0));
    assert_true(health_ready(&cases[0].in, NULL, 0));
}

/* ------------------------------------------------------------------------ */
/* Fixture: a server and libuv clients on one loop.                         */
/* ------------------------------------------------------------------------ */

struct fixture;
struct test_tls_client;

/* The PKI of the run (group setup): CA with node 1 and operator prometheus; another with mallory.
 */
static struct {
    struct testlib_pki pki, other;
    char both_ca[300]; /* both CAs in one file: mallory's client trusts node 1 */
} test_pki;

/* test_client - one connection: write pieces, maybe half-close, read until EOF. */
struct test_client {
    struct fixture *f;
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    uv_shutdown_t shutdown;
    uv_timer_t delay; /* writes the second piece later */
    const char *pieces[2];
    size_t piece_len[2];
    bool half_close;
    bool connected;
    bool eof;     /* EOF or a read error: the server is done with us */
    int read_err; /* the error if not a clean EOF */
    bool closed;  /* both handles closed */
    int open_handles;
    uint64_t eof_at; /* uv_now at EOF */
    struct buf resp;
};

struct fixture {
    uv_loop_t loop;
    struct http *srv;
    uint16_t port;
    bool srv_closed;
    struct http *extra; /* a second server a test made; teardown closes it if the test did not */
    bool extra_closed;
    int extra_fd;            /* a raw client socket a test made, -1: none */
    struct testlib_loop run; /* bounds every wait */
    struct metrics *metrics;
    struct health_input health;
    int ready_calls;
    int fill_calls;
    struct test_client *clients[TEST_MAX_CLIENTS];
    size_t n_clients;
    struct cluster_tls *tls;         /* the TLS server's (setup_tls) */
    struct cluster_tls *cli;         /* the TLS clients' certificate, when from the PKI */
    SSL_CTX *cli_ctx;                /* the TLS clients' context */
    struct test_tls_client *tls_cli; /* the one TLS client a test made */
};

static void test_tls_client_close(struct test_tls_client *c);
static void test_tls_client_free(struct test_tls_client *c);

/* test_ready - the readiness callback: the fixture's input. */
static void test_ready(void *data, struct health_input *in)
{
    struct fixture *f = data;
    f->ready_calls++;
    *in = f->health;
}

/* test_fill - the metrics source: counts itself into a gauge. */
static void test_fill(void *data, struct metrics *m)
{
    struct fixture *f = data;
    f->fill_calls++;
    metrics_gauge_set(m, METRICS_RAFT_TERM, 0, f->fill_calls);
}

/* test_srv_closed_cb - http_close finished. */
static void test_srv_closed_cb(void *arg)
{
    struct fixture *f = arg;
    f->srv_closed = true;
}

/* test_flag_cb - set the bool at arg. */
static void test_flag_cb(void *arg)
{
    *(bool *)arg = true;
}

/* setup_server - a fresh loop, a hamr registry and a server as cfg says on a free port. */
static int setup_server(void **state, const struct http_config *cfg)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (f == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    testlib_loop_start(&f->run, &f->loop, TEST_GUARD_MS, TEST_MAX_ITER);
    if (metrics_hamr_new("0.1.0-test", &f->metrics) != 0)
        return -1;
    f->health = (struct health_input){.leader_known = true, .is_leader = true};
    struct http_handler h = {
        .data = f,
        .ready = test_ready,
        .metrics = f->metrics,
        .source = {.data = f, .fill = test_fill},
    };
    char err[256];
    if (http_new(&f->loop, cfg, &h, &f->srv, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    f->port = http_port(f->srv);
    f->extra_fd = -1;
    f->tls = cfg->tls;
    *state = f;
    return 0;
}

/* setup - a server in the clear. */
static int setup(void **state)
{
    return setup_server(state, &test_local);
}

/* setup_tls - a TLS server on node 1's certificate. */
static int setup_tls(void **state)
{
    char ca[320], cert[320], key[320];
    struct http_config cfg = {.host = "127.0.0.1"};
    cfg.tls = testlib_pki_load(testlib_pki_path(&test_pki.pki, "ca.pem", ca, sizeof(ca)),
                               testlib_pki_path(&test_pki.pki, "node-1.pem", cert, sizeof(cert)),
                               testlib_pki_path(&test_pki.pki, "node-1.key", key, sizeof(key)));
    return cfg.tls != NULL ? setup_server(state, &cfg) : -1;
}

/* group_setup - the PKI every TLS case uses, made once. */
static int group_setup(void **state)
{
    (void)state;
    return testlib_pki_operators(&test_pki.pki, &test_pki.other, "prometheus", test_pki.both_ca,
                                 sizeof(test_pki.both_ca))
               ? 0
               : -1;
}

/* group_teardown - remove the PKI. */
static int group_teardown(void **state)
{
    (void)state;
    testlib_pki_cleanup(&test_pki.pki);
    testlib_pki_cleanup(&test_pki.other);
    return 0;
}

/* test_run_until - run the loop until *flag, bounded in iterations and time. */
static void test_run_until(struct fixture *f, const bool *flag)
{
    TESTLIB_LOOP_UNTIL(&f->run, *flag);
}

/* test_client_closed_cb - one client handle closed. */
static void test_client_closed_cb(uv_handle_t *h)
{
    struct test_client *c = h->data;
    if (--c->open_handles == 0)
        c->closed = true;
}

/* test_client_close - close both handles (once). */
static void test_client_close(struct test_client *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    uv_close((uv_handle_t *)&c->tcp, test_client_closed_cb);
    uv_close((uv_handle_t *)&c->delay, test_client_closed_cb);
}

/* teardown - close the server and every client; fails if handles remain. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f->srv_closed) {
        http_close(f->srv, test_srv_closed_cb, f);
        http_close(f->srv, test_srv_closed_cb, f); /* idempotent */
    }
    if (f->extra != NULL && !f->extra_closed)
        http_close(f->extra, test_flag_cb, &f->extra_closed);
    if (f->extra_fd >= 0)
        close(f->extra_fd);
    for (size_t i = 0; i < f->n_clients; i++)
        test_client_close(f->clients[i]);
    test_tls_client_close(f->tls_cli);
    testlib_loop_close(&f->run);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int rv = uv_loop_close(&f->loop);
    bool ok = rv == 0 && f->srv_closed;
    for (size_t i = 0; i < f->n_clients; i++) {
        ok = ok && f->clients[i]->closed;
        buf_free(&f->clients[i]->resp);
        free(f->clients[i]);
    }
    test_tls_client_free(f->tls_cli);
    cluster_tls_free(f->tls);
    if (f->cli != NULL)
        cluster_tls_free(f->cli);
    else if (f->cli_ctx != NULL)
        SSL_CTX_free(f->cli_ctx);
    metrics_free(f->metrics);
    free(f);
    return ok ? 0 : -1;
}

/* test_alloc_cb - a fresh 64 KiB read buffer. */
static void test_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = malloc(65536);
    b->len = b->base != NULL ? 65536 : 0;
}

/* test_read_cb - collect the response until EOF. */
static void test_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct test_client *c = s->data;
    if (nread > 0)
        assert_int_equal(buf_append(&c->resp, b->base, (size_t)nread), 0);
    free(b->base);
    if (nread < 0) {
        if (nread != UV_EOF)
            c->read_err = (int)nread;
        c->eof = true;
        c->eof_at = uv_now(&c->f->loop);
        test_client_close(c); /* as a real client does: the server stops lingering */
    }
}

/* test_write_cb - ignore: a write may fail once the server has hung up. */
static void test_write_cb(uv_write_t *req, int status)
{
    (void)req;
    (void)status;
}

/* test_shutdown_cb - the half-close is out. */
static void test_shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

/* test_client_write - write piece i (if any), then half-close after the last. */
static void test_client_write(struct test_client *c, int i)
{
    if (c->pieces[i] != NULL && c->piece_len[i] > 0) {
        uv_buf_t b = uv_buf_init((char *)c->pieces[i], (unsigned)c->piece_len[i]);
        /* One uv_write_t per piece would be cleaner; the pieces are never in
         * flight together because the second waits for a timer. */
        assert_int_equal(uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, test_write_cb), 0);
    }
    bool last = i == 1 || c->pieces[1] == NULL;
    if (last && c->half_close)
        assert_int_equal(uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, test_shutdown_cb), 0);
}

/* test_delay_cb - time for the second piece. */
static void test_delay_cb(uv_timer_t *t)
{
    struct test_client *c = t->data;
    if (!c->eof)
        test_client_write(c, 1);
}

/* test_connect_cb - connected: start reading and send the first piece. */
static void test_connect_cb(uv_connect_t *req, int status)
{
    struct test_client *c = req->data;
    assert_int_equal(status, 0);
    c->connected = true;
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, test_alloc_cb, test_read_cb), 0);
    test_client_write(c, 0);
    if (c->pieces[1] != NULL)
        uv_timer_start(&c->delay, test_delay_cb, 30, 0);
}

/* test_client_new - connect a client that sends p0 (then p1 30 ms later). */
static struct test_client *test_client_new(struct fixture *f,
                                           const char *p0,
                                           size_t len0,
                                           const char *p1,
                                           bool half_close)
{
    assert_true(f->n_clients < TEST_MAX_CLIENTS);
    struct test_client *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    f->clients[f->n_clients++] = c;
    c->f = f;
    c->pieces[0] = p0;
    c->piece_len[0] = len0;
    c->pieces[1] = p1;
    c->piece_len[1] = p1 != NULL ? strlen(p1) : 0;
    c->half_close = half_close;
    buf_init(&c->resp, TEST_RESP_MAX);
    uv_tcp_init(&f->loop, &c->tcp);
    c->tcp.data = c;
    uv_timer_init(&f->loop, &c->delay);
    c->delay.data = c;
    c->open_handles = 2;
    c->connect.data = c;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", f->port, &sa);
    assert_int_equal(
        uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&sa, test_connect_cb), 0);
    return c;
}

/* test_request - send req in one piece and wait for the whole response. */
static struct test_client *test_request(struct fixture *f, const char *req)
{
    struct test_client *c = test_client_new(f, req, strlen(req), NULL, false);
    test_run_until(f, &c->eof);
    assert_int_equal(c->read_err, 0);
    assert_int_equal(buf_append(&c->resp, "", 1), 0); /* NUL-terminate for strstr */
    return c;
}

/* test_status - the status code of a response ("HTTP/1.1 NNN ..."). */
static int test_status(const struct test_client *c)
{
    const char *r = (const char *)c->resp.data;
    assert_true(c->resp.len > 13);
    assert_memory_equal(r, "HTTP/1.1 ", 9);
    return atoi(r + 9);
}

/* test_body - the body after the blank line. */
static const char *test_body(const struct test_client *c)
{
    const char *end = strstr((const char *)c->resp.data, "\r\n\r\n");
    assert_non_null(end);
    return end + 4;
}

/* test_has_header - does the head contain this exact header line? */
static bool test_has_header(const struct test_client *c, const char *line)
{
    char want[256];
    snprintf(want, sizeof(want), "\r\n%s\r\n", line);
    const char *r = (const char *)c->resp.data;
    const char *found = strstr(r, want);
    return found != NULL && found < test_body(c);
}

/* test_check_length - Content-Length matches the body. */
static void test_check_length(const struct test_client *c)
{
    char line[64];
    snprintf(line, sizeof(line), "Content-Length: %zu", strlen(test_body(c)));
    assert_true(test_has_header(c, line));
}

/* ------------------------------------------------------------------------ */
/* Endpoints.                                                               */
/* ------------------------------------------------------------------------ */

/* http_routes - every path and method, with status, body and headers. */
static void http_routes(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *label;
        const char *req;
        int want_status;
        const char *want_body; /* NULL: not compared */
    } cases[] = {
        {"live", "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n", 200, "ok\n"},
        {"live 1.0 bare LF", "GET /health/live HTTP/1.0\n\n", 200, "ok\n"},
        {"live with query", "GET /health/live?verbose=1 HTTP/1.1\r\n\r\n", 200, "ok\n"},
        {"ready", "GET /health/ready HTTP/1.1\r\n\r\n", 200, "ready\n"},
        {"unknown path", "GET /nope HTTP/1.1\r\n\r\n", 404, "not found\n"},
        {"trailing slash", "GET /health/live/ HTTP/1.1\r\n\r\n", 404, "not found\n"},
        {"prefix only", "GET /health HTTP/1.1\r\n\r\n", 404, "not found\n"},
        {"post", "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405,
         "method not allowed\n"},
        {"head", "HEAD /health/live HTTP/1.1\r\n\r\n", 405, "method not allowed\n"},
        {"lower-case get", "get /health/live HTTP/1.1\r\n\r\n", 405, "method not allowed\n"},
        {"garbage", "hello\r\n\r\n", 400, "bad request\n"},
        {"no version", "GET /health/live\r\n\r\n", 400, "bad request\n"},
        {"http 2", "GET /health/live HTTP/2.0\r\n\r\n", 400, "bad request\n"},
        {"absolute form", "GET http://x/health/live HTTP/1.1\r\n\r\n", 400, "bad request\n"},
        {"double space", "GET  /health/live HTTP/1.1\r\n\r\n", 400, "bad request\n"},
        {"control char", "GET /a\x01 HTTP/1.1\r\n\r\n", 400, "bad request\n"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct test_client *c = test_request(f, cases[i].req);
        int status = test_status(c);
        if (status != cases[i].want_status)
            fail_msg("%s: status %d, want %d", cases[i].label, status, cases[i].want_status);
        assert_string_equal(test_body(c), cases[i].want_body);
        assert_true(test_has_header(c, "Connection: close"));
        assert_true(test_has_header(c, "Content-Type: text/plain; charset=utf-8"));
        assert_int_equal(test_has_header(c, "Allow: GET"), cases[i].want_status == 405);
        test_check_length(c);
    }
    assert_int_equal(f->ready_calls, 1);
    assert_int_equal(f->fill_calls, 0);
}

/* http_ready_reasons - 503 with the reason while not ready; 200 again after. */
static void http_ready_reasons(void **state)
{
    struct fixture *f = *state;
    const char *req = "GET /health/ready HTTP/1.1\r\n\r\n";
    f->health.draining = true;
    struct test_client *c = test_request(f, req);
    assert_int_equal(test_status(c), 503);
    assert_string_equal(test_body(c), "not ready: draining\n");
    test_check_length(c);

    f->health = (struct health_input){
        .leader_known = true, .disk_free_bytes = 12 * TEST_MIB, .min_free_bytes = 256 * TEST_MIB};
    c = test_request(f, req);
    assert_int_equal(test_status(c), 503);
    assert_string_equal(test_body(c), "not ready: disk low: 12 MiB free, 256 MiB required\n");

    f->health = (struct health_input){.leader_known = true, .last_leader_contact_ms = 10};
    c = test_request(f, req);
    assert_int_equal(test_status(c), 200);
    assert_string_equal(test_body(c), "ready\n");
    assert_int_equal(f->ready_calls, 3);
}

/* http_metrics - the source fills, then the registry's exact text is served. */
static void http_metrics(void **state)
{
    struct fixture *f = *state;
    metrics_inc(f->metrics, METRICS_MESSAGES_ACCEPTED);
    struct test_client *c = test_request(f, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_int_equal(test_status(c), 200);
    assert_true(test_has_header(c, "Content-Type: text/plain; version=0.0.4; charset=utf-8"));
    assert_true(test_has_header(c, "Connection: close"));
    test_check_length(c);
    assert_int_equal(f->fill_calls, 1);
    /* What was served is what the registry renders now (fill set the term to 1). */
    struct buf want;
    buf_init(&want, 0);
    assert_int_equal(metrics_render(f->metrics, &want), 0);
    assert_int_equal(buf_append(&want, "", 1), 0);
    assert_string_equal(test_body(c), (const char *)want.data);
    buf_free(&want);
    assert_non_null(strstr(test_body(c), "\nhamr_raft_term 1\n"));
    assert_non_null(strstr(test_body(c), "\nhamr_messages_accepted_total 1\n"));
    assert_non_null(strstr(test_body(c), "\nhamr_build_info{version=\"0.1.0-test\"} 1\n"));

    c = test_request(f, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_int_equal(f->fill_calls, 2);
    assert_non_null(strstr(test_body(c), "\nhamr_raft_term 2\n"));
}

/* http_no_metrics - without a registry /metrics is a 404. */
static void http_no_metrics(void **state)
{
    struct fixture *f = *state;
    struct http_handler h = {.data = f, .ready = test_ready};
    struct http *other = NULL;
    char err[256];
    assert_int_equal(http_new(&f->loop, &test_local, &h, &other, err, sizeof(err)), 0);
    uint16_t port = f->port;
    f->port = http_port(other);
    struct test_client *c = test_request(f, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_int_equal(test_status(c), 404);
    c = test_request(f, "GET /health/live HTTP/1.1\r\n\r\n");
    assert_int_equal(test_status(c), 200);
    f->port = port;
    bool closed = false;
    http_close(other, test_flag_cb, &closed);
    test_run_until(f, &closed);
}

/* ------------------------------------------------------------------------ */
/* Hostile and slow clients.                                                */
/* ------------------------------------------------------------------------ */

/* http_head_too_large - a head over 8 KiB without its end gets 431, once. */
static void http_head_too_large(void **state)
{
    struct fixture *f = *state;
    static const size_t sizes[] = {HTTP_HEAD_MAX, HTTP_HEAD_MAX + 1, 64 * 1024};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(sizes); i++) {
        char *req = malloc(sizes[i]);
        assert_non_null(req);
        const char *line = "GET /health/live HTTP/1.1\r\nX-Pad: ";
        memcpy(req, line, strlen(line));
        memset(req + strlen(line), 'a', sizes[i] - strlen(line));
        struct test_client *c = test_client_new(f, req, sizes[i], NULL, false);
        test_run_until(f, &c->eof);
        free(req);
        assert_int_equal(c->read_err, 0);
        assert_int_equal(buf_append(&c->resp, "", 1), 0);
        assert_int_equal(test_status(c), 431);
        assert_string_equal(test_body(c), "request header fields too large\n");
        assert_non_null(strstr((const char *)c->resp.data, "Too Large\r\n"));
    }
    /* A head that ends exactly at the limit is served. */
    char *req = malloc(HTTP_HEAD_MAX + 1);
    assert_non_null(req);
    const char *line = "GET /health/live HTTP/1.1\r\nX-Pad: ";
    size_t n = strlen(line);
    memcpy(req, line, n);
    memset(req + n, 'a', HTTP_HEAD_MAX - n - 4);
    memcpy(req + HTTP_HEAD_MAX - 4, "\r\n\r\n", 5);
    struct test_client *c = test_request(f, req);
    free(req);
    assert_int_equal(test_status(c), 200);
}

/* http_split_head - a head whose end arrives in a second read. */
static void http_split_head(void **state)
{
    struct fixture *f = *state;
    static const char *const splits[][2] = {
        {"GET /health/live HTTP/1.1\r\nHost: x\r\n", "\r\n"},
        {"GET /health/live HTTP/1.1\r\nHost: x\r\n\r", "\n"},
        {"GET /health/li", "ve HTTP/1.1\r\n\r\n"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(splits); i++) {
        struct test_client *c =
            test_client_new(f, splits[i][0], strlen(splits[i][0]), splits[i][1], false);
        test_run_until(f, &c->eof);
        assert_int_equal(buf_append(&c->resp, "", 1), 0);
        assert_int_equal(test_status(c), 200);
        assert_string_equal(test_body(c), "ok\n");
    }
}

/* http_half_close - a client that shuts down its side after the request still gets it all. */
static void http_half_close(void **state)
{
    struct fixture *f = *state;
    for (int i = 0; i < 50; i++)
        metrics_inc(f->metrics, METRICS_SESSIONS_TOTAL);
    const char *req = "GET /metrics HTTP/1.1\r\n\r\n";
    struct test_client *c = test_client_new(f, req, strlen(req), NULL, true);
    test_run_until(f, &c->eof);
    assert_int_equal(c->read_err, 0);
    assert_int_equal(buf_append(&c->resp, "", 1), 0);
    assert_int_equal(test_status(c), 200);
    test_check_length(c);
    assert_non_null(strstr(test_body(c), "\nhamr_smtp_sessions_total 50\n"));
}

/* http_slow_client - no whole head within the read timeout: 408, then closed. */
static void http_slow_client(void **state)
{
    struct fixture *f = *state;
    http_set_read_timeout(f->srv, 100);
    static const char *const partial[] = {"", "GET /health/live HTTP/1.1\r\nHost: x\r\n"};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(partial); i++) {
        uint64_t start = uv_now(&f->loop);
        struct test_client *c = test_client_new(f, partial[i], strlen(partial[i]), NULL, false);
        test_run_until(f, &c->eof);
        assert_int_equal(c->read_err, 0);
        assert_int_equal(buf_append(&c->resp, "", 1), 0);
        assert_int_equal(test_status(c), 408);
        assert_string_equal(test_body(c), "request timeout\n");
        /* Not before the timeout, and not the 5 s default either. */
        assert_true(c->eof_at - start >= 90);
        assert_true(c->eof_at - start < 2000);
    }
}

/*
 * http_slow_reader - a client that asks for a large /metrics and never
 * reads: its place is freed at the write timeout, not held for as long as
 * it likes (nor only after the linger, which would mean the answer went).
 */
static void http_slow_reader(void **state)
{
    struct fixture *f = *state;
    /* A registry whose text (about 3 MiB) no socket buffers take while nobody reads. */
    enum { FAMILIES = 1500, HELP = 2000 };
    struct metrics_def *defs = calloc(FAMILIES, sizeof(*defs));
    char *names = calloc(FAMILIES, 32);
    char *help = malloc(HELP + 1);
    assert_true(defs != NULL && names != NULL && help != NULL);
    memset(help, 'h', HELP);
    help[HELP] = '\0';
    for (int i = 0; i < FAMILIES; i++) {
        snprintf(names + 32 * i, 32, "test_big_%d", i);
        defs[i] = (struct metrics_def){.name = names + 32 * i, .help = help, .type = METRICS_GAUGE};
    }
    struct metrics *big = NULL;
    assert_int_equal(metrics_new(defs, FAMILIES, &big), 0);
    struct http_handler h = {.data = f, .ready = test_ready, .metrics = big};
    char err[256];
    assert_int_equal(http_new(&f->loop, &test_local, &h, &f->extra, err, sizeof(err)), 0);
    struct http *srv = f->extra;
    http_set_write_timeout(srv, 200);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    f->extra_fd = fd;
    int small = 4096;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", http_port(srv), &sa);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    const char *req = "GET /metrics HTTP/1.1\r\n\r\n";
    assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
    TESTLIB_LOOP_UNTIL(&f->run, http_conns(srv) == 1);
    uint64_t start = uv_now(&f->loop);
    TESTLIB_LOOP_UNTIL(&f->run, http_conns(srv) == 0);
    uint64_t took = uv_now(&f->loop) - start;
    print_message("slow reader closed after %llu ms\n", (unsigned long long)took);
    assert_true(took >= 150);
    assert_true(took < 1500); /* the linger (2 s) would mean the answer was taken */
    close(fd);
    f->extra_fd = -1;

    http_close(srv, test_flag_cb, &f->extra_closed);
    test_run_until(f, &f->extra_closed);
    metrics_free(big);
    free(defs);
    free(names);
    free(help);
}

/* test_count_eof - clients from first on that have seen EOF. */
static size_t test_count_eof(struct fixture *f, size_t first)
{
    size_t n = 0;
    for (size_t i = first; i < f->n_clients; i++)
        n += f->clients[i]->eof;
    return n;
}

/* http_many_conns - at most HTTP_MAX_CONNS at once; the rest are closed at once. */
static void http_many_conns(void **state)
{
    struct fixture *f = *state;
    const size_t extra = 6;
    /* Idle clients: they send nothing, so the server holds them open. */
    for (size_t i = 0; i < HTTP_MAX_CONNS + extra; i++)
        test_client_new(f, "", 0, NULL, false);
    TESTLIB_LOOP_UNTIL(&f->run,
                       http_conns(f->srv) == HTTP_MAX_CONNS && test_count_eof(f, 0) == extra);
    /* The refused ones got no bytes, only EOF; the others are still waiting. */
    size_t refused = 0;
    for (size_t i = 0; i < f->n_clients; i++) {
        if (f->clients[i]->eof) {
            refused++;
            assert_int_equal(f->clients[i]->resp.len, 0);
        }
    }
    assert_int_equal(refused, extra);
    /* Run a little more: nothing else changes while the clients stay idle. */
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(http_conns(f->srv), HTTP_MAX_CONNS);
    assert_int_equal(test_count_eof(f, 0), extra);

    /* The idle clients go away; the server's count drops to zero. */
    size_t n = f->n_clients;
    for (size_t i = 0; i < n; i++)
        test_client_close(f->clients[i]);
    TESTLIB_LOOP_UNTIL(&f->run, http_conns(f->srv) == 0);
    /* And a new request is served. */
    struct test_client *c = test_request(f, "GET /health/live HTTP/1.1\r\n\r\n");
    assert_int_equal(test_status(c), 200);
}

/* http_close_with_clients - closing the server hangs up on open connections. */
static void http_close_with_clients(void **state)
{
    struct fixture *f = *state;
    struct test_client *a = test_client_new(f, "GET /hea", 8, NULL, false);
    struct test_client *b = test_client_new(f, "", 0, NULL, false);
    TESTLIB_LOOP_UNTIL(&f->run, http_conns(f->srv) == 2 && a->connected && b->connected);
    http_close(f->srv, test_srv_closed_cb, f);
    test_run_until(f, &f->srv_closed);
    test_run_until(f, &a->eof);
    test_run_until(f, &b->eof);
    assert_int_equal(a->resp.len, 0);
    assert_int_equal(b->resp.len, 0);
}

/* http_new_errors - a bad address, a port in use, no readiness callback. */
static void http_new_errors(void **state)
{
    struct fixture *f = *state;
    struct http_handler h = {.data = f, .ready = test_ready};
    struct http *s = NULL;
    char err[256];
    const struct http_config by_name = {.host = "localhost"};
    const struct http_config in_use = {.host = "127.0.0.1", .port = f->port};
    assert_int_equal(http_new(&f->loop, &by_name, &h, &s, err, sizeof(err)), HAMR_EINVAL);
    assert_non_null(strstr(err, "not an IP address"));
    assert_int_equal(http_new(&f->loop, &in_use, &h, &s, err, sizeof(err)), HAMR_EIO);
    assert_non_null(strstr(err, "cannot listen"));
    struct http_handler none = {.data = f};
    assert_int_equal(http_new(&f->loop, &test_local, &none, &s, err, sizeof(err)), HAMR_EINVAL);
    assert_null(s);
    /* The failed listener is closed by the loop; teardown checks nothing is left. */
}

/* ------------------------------------------------------------------------ */
/* TLS: the metrics listener.                                               */
/* ------------------------------------------------------------------------ */

/* test_tls_client - one TLS connection through net/tls_stream on the test's loop. */
struct test_tls_client {
    struct fixture *f;
    struct tls_stream_handle h;
    struct tls_stream *ts;
    uv_connect_t connect;
    const char *req;
    int end;     /* how the stream ended: UV_EOF, UV_EPROTO, ... */
    bool done;   /* the end was reported */
    bool closed; /* the handle closed */
    struct buf resp;
    char rbuf[16384];
};

/* test_tls_closed_cb - the handle is closed: the stream goes. */
static void test_tls_closed_cb(uv_handle_t *h)
{
    struct test_tls_client *c = hamr_container_of((uv_tcp_t *)h, struct test_tls_client, h.u.tcp);
    tls_stream_free(c->ts);
    c->ts = NULL;
    c->closed = true;
}

/* test_tls_client_close - close the handle (once); NULL is fine. */
static void test_tls_client_close(struct test_tls_client *c)
{
    if (c != NULL && !uv_is_closing((uv_handle_t *)&c->h.u.tcp))
        uv_close((uv_handle_t *)&c->h.u.tcp, test_tls_closed_cb);
}

/* test_tls_client_free - after the loop has run dry; NULL is fine. */
static void test_tls_client_free(struct test_tls_client *c)
{
    if (c == NULL)
        return;
    buf_free(&c->resp);
    free(c);
}

/* test_tls_alloc_cb - plaintext lands in the client's chunk. */
static void test_tls_alloc_cb(void *data, uv_buf_t *b)
{
    struct test_tls_client *c = data;
    *b = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* test_tls_read_cb - collect the answer until the end, then hang up. */
static void test_tls_read_cb(void *data, ssize_t nread, const uv_buf_t *b)
{
    struct test_tls_client *c = data;
    if (nread > 0)
        assert_int_equal(buf_append(&c->resp, b->base, (size_t)nread), 0);
    if (nread >= 0)
        return;
    c->end = (int)nread;
    c->done = true;
    test_tls_client_close(c);
}

/* test_tls_write_cb - ignore: the write fails when the server refuses us. */
static void test_tls_write_cb(void *arg, int status)
{
    (void)arg;
    (void)status;
}

/* test_tls_connect_cb - connected: TLS on f->cli_ctx (the clear without), the request. */
static void test_tls_connect_cb(uv_connect_t *req, int status)
{
    struct test_tls_client *c = req->data;
    assert_int_equal(status, 0);
    const struct tls_stream_ops ops = {
        .data = c, .alloc_cb = test_tls_alloc_cb, .read_cb = test_tls_read_cb};
    assert_int_equal(tls_stream_init(&c->ts, &c->h, c->f->cli_ctx, false, &ops), 0);
    assert_int_equal(tls_stream_read_start(c->ts), 0);
    if (c->req[0] != '\0')
        assert_int_equal(tls_stream_write(c->ts, c->req, strlen(c->req), test_tls_write_cb, NULL),
                         0);
}

/* test_tls_request - send req over TLS (f->cli_ctx) and run until the stream ends. */
static struct test_tls_client *test_tls_request(struct fixture *f, const char *req)
{
    struct test_tls_client *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    assert_null(f->tls_cli);
    f->tls_cli = c;
    c->f = f;
    c->req = req;
    buf_init(&c->resp, TEST_RESP_MAX);
    uv_tcp_init(&f->loop, &c->h.u.tcp);
    c->connect.data = c;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", f->port, &sa);
    assert_int_equal(
        uv_tcp_connect(&c->connect, &c->h.u.tcp, (const struct sockaddr *)&sa, test_tls_connect_cb),
        0);
    test_run_until(f, &c->done);
    assert_int_equal(buf_append(&c->resp, "", 1), 0); /* NUL-terminate for strstr */
    return c;
}

/* test_tls_cli - the clients' context from a cluster_tls on these files of pki. */
static void test_tls_cli(struct fixture *f,
                         const struct testlib_pki *pki,
                         const char *ca,
                         const char *cert_name)
{
    char cert[320], key[320], name[64];
    snprintf(name, sizeof(name), "%s.key", cert_name);
    testlib_pki_path(pki, name, key, sizeof(key));
    snprintf(name, sizeof(name), "%s.pem", cert_name);
    f->cli = testlib_pki_load(ca, testlib_pki_path(pki, name, cert, sizeof(cert)), key);
    assert_non_null(f->cli);
    f->cli_ctx = cluster_tls_client_ctx(f->cli);
}

/* test_run_ca - the run's CA file (static buffer). */
static const char *test_run_ca(void)
{
    static char ca[320];
    return testlib_pki_path(&test_pki.pki, "ca.pem", ca, sizeof(ca));
}

/* test_tls_stats - run the loop until the server counted tls and identity refusals. */
static void test_tls_stats(struct fixture *f, uint64_t tls, uint64_t identity)
{
    struct operator_gate_stats st;
    TESTLIB_LOOP_UNTIL(&f->run, (http_get_stats(f->srv, &st),
                                 st.refused_tls == tls && st.refused_identity == identity));
}

/* test_tls_status - the status of a TLS client's answer. */
static int test_tls_status(const struct test_tls_client *c)
{
    const char *r = (const char *)c->resp.data;
    assert_true(c->resp.len > 13);
    assert_memory_equal(r, "HTTP/1.1 ", 9);
    return atoi(r + 9);
}

/* test_tls_handshake_refused - a request over f->cli_ctx ends in a TLS failure, unanswered,
 * counted. */
static void test_tls_handshake_refused(struct fixture *f)
{
    struct test_tls_client *c = test_tls_request(f, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_int_not_equal(c->end, UV_EOF);
    assert_string_equal((const char *)c->resp.data, "");
    assert_int_equal(f->fill_calls, 0);
    test_tls_stats(f, 1, 0);
}

/* http_tls_operator - an operator's certificate gets /metrics; nothing refused. */
static void http_tls_operator(void **state)
{
    struct fixture *f = *state;
    test_tls_cli(f, &test_pki.pki, test_run_ca(), "operator-prometheus");
    struct test_tls_client *c = test_tls_request(f, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_int_equal(c->end, UV_EOF);
    assert_int_equal(test_tls_status(c), 200);
    const char *r = (const char *)c->resp.data;
    assert_non_null(strstr(r, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert_non_null(strstr(r, "\nhamr_build_info{version=\"0.1.0-test\"} 1\n"));
    assert_int_equal(f->fill_calls, 1);
    test_tls_stats(f, 0, 0);
}

/* http_tls_node_refused - a node's certificate: 403 naming it, no render, counted as identity. */
static void http_tls_node_refused(void **state)
{
    struct fixture *f = *state;
    test_tls_cli(f, &test_pki.pki, test_run_ca(), "node-1");
    struct test_tls_client *c = test_tls_request(f, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_int_equal(test_tls_status(c), 403);
    assert_non_null(strstr((const char *)c->resp.data, "this one is node:1\n"));
    assert_int_equal(f->fill_calls, 0);
    test_tls_stats(f, 0, 1);
}

/* http_tls_other_ca_refused - an operator of another CA: the handshake fails, counted as tls. */
static void http_tls_other_ca_refused(void **state)
{
    struct fixture *f = *state;
    test_tls_cli(f, &test_pki.other, test_pki.both_ca, "operator-mallory");
    test_tls_handshake_refused(f);
}

/* http_tls_no_certificate_refused - TLS without a client certificate: counted as tls. */
static void http_tls_no_certificate_refused(void **state)
{
    struct fixture *f = *state;
    char err[256];
    f->cli_ctx = tls_client_ctx_new(test_run_ca(), err, sizeof(err));
    assert_non_null(f->cli_ctx);
    SSL_CTX_set_verify(f->cli_ctx, SSL_VERIFY_PEER, NULL); /* it checks the node, shows nothing */
    test_tls_handshake_refused(f);
}

/* http_tls_plaintext_refused - a plaintext request on the TLS port: closed, counted as tls. */
static void http_tls_plaintext_refused(void **state)
{
    struct fixture *f = *state;
    struct test_client *c = test_client_new(f, "GET /metrics HTTP/1.1\r\n\r\n", 25, NULL, false);
    test_run_until(f, &c->eof);
    assert_false(c->resp.len >= 5 && memcmp(c->resp.data, "HTTP/", 5) == 0);
    assert_int_equal(f->fill_calls, 0);
    test_tls_stats(f, 1, 0);
}

/* http_tls_handshake_timeout - a client that never finishes its handshake: closed in time. */
static void http_tls_handshake_timeout(void **state)
{
    struct fixture *f = *state;
    http_set_read_timeout(f->srv, 100);
    uint64_t start = uv_now(&f->loop);
    struct test_client *c = test_client_new(f, "", 0, NULL, false);
    test_run_until(f, &c->eof);
    assert_int_equal(c->resp.len, 0); /* no 408: nothing can be said before the handshake */
    assert_true(c->eof_at - start >= 90);
    assert_true(c->eof_at - start < 2000);
    test_tls_stats(f, 0, 0);
    struct operator_gate_stats st;
    http_get_stats(f->srv, &st);
    assert_int_equal(st.timed_out,
                     1); /* counted as hamr_metrics_refused_total{reason="timed_out"} */
}

/* http_metrics_tls_only - in the clear with /metrics on the TLS listener: 403; health stays. */
static void http_metrics_tls_only(void **state)
{
    struct fixture *f = *state;
    struct http_handler h = {.data = f, .ready = test_ready, .metrics = f->metrics};
    const struct http_config cfg = {.host = "127.0.0.1", .metrics_tls_only = true};
    char err[256];
    assert_int_equal(http_new(&f->loop, &cfg, &h, &f->extra, err, sizeof(err)), 0);
    uint16_t port = f->port;
    f->port = http_port(f->extra);
    struct test_client *c = test_request(f, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_int_equal(test_status(c), 403);
    assert_string_equal(test_body(c), "/metrics is served over TLS on [listen] metrics\n");
    test_check_length(c);
    c = test_request(f, "GET /metrics?x=1 HTTP/1.1\r\n\r\n");
    assert_int_equal(test_status(c), 403);
    c = test_request(f, "GET /health/live HTTP/1.1\r\n\r\n");
    assert_int_equal(test_status(c), 200);
    c = test_request(f, "GET /health/ready HTTP/1.1\r\n\r\n");
    assert_int_equal(test_status(c), 200);
    assert_int_equal(f->fill_calls, 0);
    f->port = port;
    http_close(f->extra, test_flag_cb, &f->extra_closed);
    test_run_until(f, &f->extra_closed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(health_table),
        cmocka_unit_test_setup_teardown(http_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(http_ready_reasons, setup, teardown),
        cmocka_unit_test_setup_teardown(http_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(http_no_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(http_head_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(http_split_head, setup, teardown),
        cmocka_unit_test_setup_teardown(http_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(http_slow_client, setup, teardown),
        cmocka_unit_test_setup_teardown(http_slow_reader, setup, teardown),
        cmocka_unit_test_setup_teardown(http_many_conns, setup, teardown),
        cmocka_unit_test_setup_teardown(http_close_with_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(http_new_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(http_metrics_tls_only, setup, teardown),
        cmocka_unit_test_setup_teardown(http_tls_operator, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(http_tls_node_refused, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(http_tls_other_ca_refused, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(http_tls_no_certificate_refused, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(http_tls_plaintext_refused, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(http_tls_handshake_timeout, setup_tls, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
