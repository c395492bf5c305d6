/*
 * test_control.c - node/control (the libuv listeners) against
 * node/control_client (the blocking client) and raw sockets.
 *
 * The loop runs in the test's main thread with a test handler that answers
 * at once, from a timer, or holds the call for the test to answer. The
 * client side runs on one helper thread per test, which records what it saw
 * and wakes the loop through a uv_async_t when it is done; every assertion
 * is made in the main thread. The loop is run UV_RUN_ONCE a bounded number of
 * times, and a guard timer bounds the wall time.
 *
 * A silent TCP client is closed by the first timeout (counted), one that
 * has asked something only by the idle timeout.
 *
 * Three kinds of server: TCP in the clear (most cases), the Unix socket
 * (mode, a stale file replaced, a live one or a non-socket refused, removed
 * at close), and TCP with TLS on a cluster PKI made by deploy/make-pki.sh
 * once for the run (an operator served; a node's certificate, another CA's,
 * none, and plaintext refused, each logged and counted as its kind).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include <uv.h>

#include "proto/proto_frame.h"
#include "util/common.h"
#include "util/err.h"

#include "net/cluster_tls.h"
#include "net/tls.h"
#include "node/control.h"
#include "node/control_client.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_pki.h"

#define TEST_GUARD_MS 10000
#define TEST_MAX_ITER 100000

enum test_mode {
    TEST_MODE_SYNC,  /* answer inside handle() */
    TEST_MODE_LATER, /* answer from a timer */
    TEST_MODE_HOLD,  /* keep the call; the test answers */
};

struct fixture;
typedef void (*test_client_fn)(struct fixture *f);

/* What the server listens on. */
enum test_server {
    TEST_SERVER_TCP,  /* 127.0.0.1, in the clear */
    TEST_SERVER_UNIX, /* a socket in a fresh directory */
    TEST_SERVER_TLS,  /* 127.0.0.1 with TLS, node 1's certificate */
};

/* The PKI of the run (group setup): CA with node 1 and operator alice; another CA with mallory. */
static struct {
    struct testlib_pki pki, other;
    char both_ca[300]; /* both CAs in one file: mallory's client trusts node 1 */
} test_pki;

struct fixture {
    uv_loop_t loop;
    struct control *ctl;
    uint16_t port;
    char dir[64];            /* TEST_SERVER_UNIX: the directory */
    char sock[128];          /* TEST_SERVER_UNIX: the socket's path */
    struct cluster_tls *tls; /* TEST_SERVER_TLS: the server's */
    SSL_CTX *cli_ctx;        /* the TLS client's context (NULL: plaintext) */
    struct cluster_tls *cli; /* owns cli_ctx when it came from cluster_tls */
    bool closed;             /* control_close's callback ran */
    struct testlib_loop run; /* bounds every wait */
    uv_async_t wake;         /* the client thread is done */

    /* handler */
    enum test_mode mode;
    int calls;
    uv_timer_t later;
    struct control_call *pending;
    char seen[256]; /* "verb:arg,arg" of the last request */

    /* client thread */
    pthread_t thread;
    atomic_bool done;
    test_client_fn client;
    unsigned client_timeout_ms;
    int client_rc;
    char client_err[256];
    char client_msg[256]; /* message of each answer, ";" separated */
    int client_code;
    ssize_t raw_read; /* raw tests: result of the final recv */
};

/* ------------------------------------------------------------------------ */
/* Handler.                                                                 */
/* ------------------------------------------------------------------------ */

/* test_answer - reply "PREFIX:verb:args" to call. */
static void test_answer(struct control_call *call, const char *prefix, const char *seen)
{
    char msg[300];
    snprintf(msg, sizeof(msg), "%s:%s", prefix, seen);
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.message = msg;
    assert_int_equal(control_reply(call, &resp), 0);
}

/* test_later_cb - the deferred answer of TEST_MODE_LATER. */
static void test_later_cb(uv_timer_t *t)
{
    struct fixture *f = t->data;
    struct control_call *call = f->pending;
    f->pending = NULL;
    test_answer(call, "later", f->seen);
}

/* test_handle - the control handler: record the request, answer per mode. */
static void test_handle(void *data, struct control_call *call, const Hamr__ControlRequest *req)
{
    struct fixture *f = data;
    f->calls++;
    size_t n = (size_t)snprintf(f->seen, sizeof(f->seen), "%s:", req->verb);
    for (size_t i = 0; i < req->n_args && n < sizeof(f->seen); i++)
        n += (size_t)snprintf(f->seen + n, sizeof(f->seen) - n, "%s%s", i ? "," : "", req->args[i]);
    switch (f->mode) {
        case TEST_MODE_SYNC:
            test_answer(call, "sync", f->seen);
            break;
        case TEST_MODE_LATER:
            f->pending = call;
            uv_timer_start(&f->later, test_later_cb, 5, 0);
            break;
        case TEST_MODE_HOLD:
            f->pending = call;
            break;
    }
}

/* ------------------------------------------------------------------------ */
/* Fixture.                                                                 */
/* ------------------------------------------------------------------------ */

/* test_wake_cb - nothing to do: the wake-up itself ends UV_RUN_ONCE. */
static void test_wake_cb(uv_async_t *a)
{
}

/* test_closed_cb - control_close finished. */
static void test_closed_cb(void *arg)
{
    struct fixture *f = arg;
    f->closed = true;
}

/* test_pki_path - a file of the run's PKI ("ca.pem", "node-1.key", ...). */
static const char *test_pki_path(const struct testlib_pki *p, const char *name)
{
    static char bufs[4][300];
    static unsigned next;
    return testlib_pki_path(p, name, bufs[next++ % 4], sizeof(bufs[0]));
}

/* group_setup - the PKI every TLS case uses, made once. */
static int group_setup(void **state)
{
    (void)state;
    return testlib_pki_operators(&test_pki.pki, &test_pki.other, "alice", test_pki.both_ca,
                                 sizeof(test_pki.both_ca))
               ? 0
               : -1;
}

static int group_teardown(void **state)
{
    testlib_pki_cleanup(&test_pki.pki);
    testlib_pki_cleanup(&test_pki.other);
    return 0;
}

/* setup_server - a fresh loop with a control server of the kind asked for. */
static int setup_server(void **state, enum test_server kind)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (f == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    testlib_loop_start(&f->run, &f->loop, TEST_GUARD_MS, TEST_MAX_ITER);
    uv_timer_init(&f->loop, &f->later);
    f->later.data = f;
    uv_async_init(&f->loop, &f->wake, test_wake_cb);
    f->client_timeout_ms = 5000;
    *state = f;
    struct control_handler h = {.data = f, .handle = test_handle};
    struct control_config cfg = {.host = "127.0.0.1"};
    if (kind == TEST_SERVER_UNIX) {
        snprintf(f->dir, sizeof(f->dir), "/tmp/hamr-test-control-XXXXXX");
        if (mkdtemp(f->dir) == NULL)
            return -1;
        snprintf(f->sock, sizeof(f->sock), "%s/control.sock", f->dir);
        cfg = (struct control_config){.socket_path = f->sock};
    } else if (kind == TEST_SERVER_TLS) {
        f->tls = testlib_pki_load(test_pki_path(&test_pki.pki, "ca.pem"),
                                  test_pki_path(&test_pki.pki, "node-1.pem"),
                                  test_pki_path(&test_pki.pki, "node-1.key"));
        if (f->tls == NULL)
            return -1;
        cfg.tls = f->tls;
    }
    char err[256];
    if (control_new(&f->loop, &cfg, &h, &f->ctl, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    f->port = control_port(f->ctl);
    return 0;
}

static int setup(void **state)
{
    return setup_server(state, TEST_SERVER_TCP);
}

static int setup_unix(void **state)
{
    return setup_server(state, TEST_SERVER_UNIX);
}

static int setup_tls(void **state)
{
    return setup_server(state, TEST_SERVER_TLS);
}

/* test_run_until - run the loop until *flag, bounded in iterations and time. */
static void test_run_until(struct fixture *f, const bool *flag)
{
    TESTLIB_LOOP_UNTIL(&f->run, *flag);
}

/* teardown - close everything; fails if the loop still has handles. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f->closed) {
        control_close(f->ctl, test_closed_cb, f);
        control_close(f->ctl, test_closed_cb, f); /* idempotent */
        test_run_until(f, &f->closed);
    }
    if (f->pending != NULL)
        control_reply_error(f->pending, HAMR_ESHUTDOWN, "shutting down");
    testlib_loop_close(&f->run);
    uv_close((uv_handle_t *)&f->later, NULL);
    uv_close((uv_handle_t *)&f->wake, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int rv = uv_loop_close(&f->loop);
    cluster_tls_free(f->tls);
    if (f->cli != NULL)
        cluster_tls_free(f->cli);
    else if (f->cli_ctx != NULL)
        SSL_CTX_free(f->cli_ctx);
    if (f->dir[0] != '\0') {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        if (system(cmd) != 0)
            rv = -1;
    }
    free(f);
    return rv == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* Client side (helper thread; no cmocka calls here).                       */
/* ------------------------------------------------------------------------ */

/* test_thread_main - run the client function, then wake the loop. */
static void *test_thread_main(void *arg)
{
    struct fixture *f = arg;
    f->client(f);
    atomic_store(&f->done, true);
    uv_async_send(&f->wake);
    return NULL;
}

/* test_start_client - run fn on the helper thread. */
static void test_start_client(struct fixture *f, test_client_fn fn)
{
    f->client = fn;
    assert_int_equal(pthread_create(&f->thread, NULL, test_thread_main, f), 0);
}

/* test_wait_client - run the loop until the client thread is done, then join it. */
static void test_wait_client(struct fixture *f)
{
    TESTLIB_LOOP_UNTIL(&f->run, atomic_load(&f->done));
    pthread_join(f->thread, NULL);
}

/* test_call - one call on cc, message appended to client_msg. */
static int test_call(struct fixture *f,
                     struct control_client *cc,
                     const char *verb,
                     char **args,
                     size_t n_args)
{
    Hamr__ControlRequest req = HAMR__CONTROL_REQUEST__INIT;
    req.verb = (char *)verb;
    req.args = args;
    req.n_args = n_args;
    Hamr__ControlResponse *resp = NULL;
    int rc = control_client_call(cc, &req, &resp, f->client_err, sizeof(f->client_err));
    if (rc == 0) {
        size_t n = strlen(f->client_msg);
        snprintf(f->client_msg + n, sizeof(f->client_msg) - n, "%s%s", n ? ";" : "",
                 resp->message != NULL ? resp->message : "");
        f->client_code = resp->code;
        if (resp->code != 0)
            hamr_strlcpy(f->client_err, resp->error, sizeof(f->client_err));
        hamr__control_response__free_unpacked(resp, NULL);
    }
    return rc;
}

/* client_one_call - "queue --state deferred" on a fresh connection. */
static void client_one_call(struct fixture *f)
{
    struct control_client cc;
    char *args[] = {"--state", "deferred"};
    f->client_rc = control_client_open(&cc, "127.0.0.1", f->port, f->client_timeout_ms,
                                       f->client_err, sizeof(f->client_err));
    if (f->client_rc == 0)
        f->client_rc = test_call(f, &cc, "queue", args, 2);
    control_client_close(&cc);
}

/* client_two_calls - two calls on one connection (name lookup of localhost). */
static void client_two_calls(struct fixture *f)
{
    struct control_client cc;
    char *args[] = {"Q1"};
    f->client_rc = control_client_open(&cc, "localhost", f->port, f->client_timeout_ms,
                                       f->client_err, sizeof(f->client_err));
    if (f->client_rc == 0)
        f->client_rc = test_call(f, &cc, "status", NULL, 0);
    if (f->client_rc == 0)
        f->client_rc = test_call(f, &cc, "show", args, 1);
    control_client_close(&cc);
}

/* client_two_calls_apart - two calls on one connection, 100 ms between them. */
static void client_two_calls_apart(struct fixture *f)
{
    struct control_client cc;
    f->client_rc = control_client_open(&cc, "127.0.0.1", f->port, f->client_timeout_ms,
                                       f->client_err, sizeof(f->client_err));
    if (f->client_rc == 0)
        f->client_rc = test_call(f, &cc, "status", NULL, 0);
    usleep(100 * 1000);
    if (f->client_rc == 0)
        f->client_rc = test_call(f, &cc, "status", NULL, 0);
    control_client_close(&cc);
}

/* client_unix_call - "status" over the control socket. */
static void client_unix_call(struct fixture *f)
{
    struct control_client cc;
    f->client_rc = control_client_open_unix(&cc, f->sock, f->client_timeout_ms, f->client_err,
                                            sizeof(f->client_err));
    if (f->client_rc == 0)
        f->client_rc = test_call(f, &cc, "status", NULL, 0);
    control_client_close(&cc);
}

/* client_tls_call - "status" over TCP, with TLS on f->cli_ctx (plaintext without one). */
static void client_tls_call(struct fixture *f)
{
    struct control_client cc;
    f->client_rc = control_client_open(&cc, "127.0.0.1", f->port, f->client_timeout_ms,
                                       f->client_err, sizeof(f->client_err));
    if (f->client_rc == 0 && f->cli_ctx != NULL)
        f->client_rc =
            control_client_start_tls(&cc, f->cli_ctx, f->client_err, sizeof(f->client_err));
    if (f->client_rc == 0)
        f->client_rc = test_call(f, &cc, "status", NULL, 0);
    control_client_close(&cc);
}

/* test_raw_connect - a blocking socket to the server with a 5 s receive timeout. */
static int test_raw_connect(struct fixture *f)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(f->port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* client_raw_oversize - announce PROTO_CONTROL_MAX + 1 bytes, expect a close. */
static void client_raw_oversize(struct fixture *f)
{
    int fd = test_raw_connect(f);
    uint8_t hdr[8];
    proto_u32_put(hdr, PROTO_CONTROL_MAX + 1);
    memset(hdr + 4, 'x', 4);
    f->raw_read = -2;
    if (fd < 0 || send(fd, hdr, sizeof(hdr), MSG_NOSIGNAL) != (ssize_t)sizeof(hdr))
        return;
    char b[16];
    f->raw_read = recv(fd, b, sizeof(b), 0);
    if (f->raw_read < 0 && errno == ECONNRESET)
        f->raw_read = 0; /* closed with unread data pending: a reset is also a close */
    close(fd);
}

/* client_raw_malformed - a frame that is not protobuf; read the answer. */
static void client_raw_malformed(struct fixture *f)
{
    int fd = test_raw_connect(f);
    uint8_t frame[7] = {0, 0, 0, 3, 0xff, 0xff, 0xff};
    f->client_rc = -1;
    if (fd < 0 || send(fd, frame, sizeof(frame), MSG_NOSIGNAL) != (ssize_t)sizeof(frame))
        return;
    uint8_t hdr[4], body[512];
    if (recv(fd, hdr, 4, MSG_WAITALL) != 4)
        goto out;
    uint32_t n = proto_u32_get(hdr);
    if (n > sizeof(body) || recv(fd, body, n, MSG_WAITALL) != (ssize_t)n)
        goto out;
    Hamr__ControlResponse *resp = hamr__control_response__unpack(NULL, n, body);
    if (resp == NULL)
        goto out;
    f->client_rc = 0;
    f->client_code = resp->code;
    hamr_strlcpy(f->client_err, resp->error, sizeof(f->client_err));
    hamr__control_response__free_unpacked(resp, NULL);
out:
    close(fd);
}

/* client_send_and_leave - a whole request, then hang up without reading. */
static void client_send_and_leave(struct fixture *f)
{
    int fd = test_raw_connect(f);
    if (fd < 0)
        return;
    Hamr__ControlRequest req = HAMR__CONTROL_REQUEST__INIT;
    req.verb = "transfer";
    uint8_t buf[64];
    size_t n = hamr__control_request__pack(&req, buf + 4);
    proto_u32_put(buf, (uint32_t)n);
    send(fd, buf, n + 4, MSG_NOSIGNAL);
    close(fd);
}

/* client_wait_eof - connect, send nothing, wait for the idle close. */
static void client_wait_eof(struct fixture *f)
{
    int fd = test_raw_connect(f);
    char b[4];
    f->raw_read = fd < 0 ? -2 : recv(fd, b, sizeof(b), 0);
    if (fd >= 0)
        close(fd);
}

/* ------------------------------------------------------------------------ */
/* Tests.                                                                   */
/* ------------------------------------------------------------------------ */

/* test_sync_answer - answered inside handle(). */
static void test_sync_answer(void **state)
{
    struct fixture *f = *state;
    f->mode = TEST_MODE_SYNC;
    test_start_client(f, client_one_call);
    test_wait_client(f);
    if (f->client_rc != 0)
        fail_msg("%s", f->client_err);
    assert_int_equal(f->calls, 1);
    assert_string_equal(f->client_msg, "sync:queue:--state,deferred");
    assert_int_equal(f->client_code, 0);
}

/* test_later_answer - answered from a timer. */
static void test_later_answer(void **state)
{
    struct fixture *f = *state;
    f->mode = TEST_MODE_LATER;
    test_start_client(f, client_one_call);
    test_wait_client(f);
    if (f->client_rc != 0)
        fail_msg("%s", f->client_err);
    assert_int_equal(f->calls, 1);
    assert_string_equal(f->client_msg, "later:queue:--state,deferred");
}

/* test_two_calls_one_connection - one request at a time, in order. */
static void test_two_calls_one_connection(void **state)
{
    struct fixture *f = *state;
    f->mode = TEST_MODE_LATER;
    test_start_client(f, client_two_calls);
    test_wait_client(f);
    if (f->client_rc != 0)
        fail_msg("%s", f->client_err);
    assert_int_equal(f->calls, 2);
    assert_string_equal(f->client_msg, "later:status:;later:show:Q1");
}

/* test_oversized_frame_closes - too long a frame: closed, no handler call. */
static void test_oversized_frame_closes(void **state)
{
    struct fixture *f = *state;
    test_start_client(f, client_raw_oversize);
    test_wait_client(f);
    assert_int_equal(f->raw_read, 0); /* EOF: closed without an answer */
    assert_int_equal(f->calls, 0);
}

/* test_malformed_frame_answered - undecodable frame: HAMR_EPROTO answer. */
static void test_malformed_frame_answered(void **state)
{
    struct fixture *f = *state;
    test_start_client(f, client_raw_malformed);
    test_wait_client(f);
    assert_int_equal(f->client_rc, 0);
    assert_int_equal(f->client_code, HAMR_EPROTO);
    assert_string_equal(f->client_err, "malformed control request");
    assert_int_equal(f->calls, 0);
}

/* test_wait_detached - run until a call is held and its connection is gone. */
static void test_wait_detached(struct fixture *f)
{
    TESTLIB_LOOP_UNTIL(&f->run, f->pending != NULL && control_conns(f->ctl) == 0);
    assert_non_null(f->pending);
    assert_int_equal(control_conns(f->ctl), 0);
}

/* test_answer_after_client_left - control_reply on a detached call only frees it. */
static void test_answer_after_client_left(void **state)
{
    struct fixture *f = *state;
    f->mode = TEST_MODE_HOLD;
    test_start_client(f, client_send_and_leave);
    test_wait_client(f);
    test_wait_detached(f);
    assert_int_equal(f->calls, 1);
    assert_string_equal(f->seen, "transfer:");
    struct control_call *call = f->pending;
    f->pending = NULL;
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.message = "nobody listens";
    assert_int_equal(control_reply(call, &resp), 0); /* just frees; ASan watches */
}

/* test_answer_after_close - control_close with a call held; answered afterwards. */
static void test_answer_after_close(void **state)
{
    struct fixture *f = *state;
    f->mode = TEST_MODE_HOLD;
    test_start_client(f, client_one_call);
    TESTLIB_LOOP_UNTIL(&f->run, f->pending != NULL);
    assert_non_null(f->pending);
    control_close(f->ctl, test_closed_cb, f);
    test_run_until(f, &f->closed);
    test_wait_client(f);
    assert_int_equal(f->client_rc, HAMR_EIO);
    char want[128];
    snprintf(want, sizeof(want), "connection to 127.0.0.1:%u closed before the answer",
             (unsigned)f->port);
    assert_string_equal(f->client_err, want);
    /* The listener is gone; the call is still ours to answer. */
    struct control_call *call = f->pending;
    f->pending = NULL;
    assert_int_equal(control_reply_error(call, HAMR_ESHUTDOWN, "bye"), 0);
}

/* test_idle_timeout - a silent client is disconnected. */
static void test_idle_timeout(void **state)
{
    struct fixture *f = *state;
    control_set_idle_timeout(f->ctl, 20);
    test_start_client(f, client_wait_eof);
    test_wait_client(f);
    assert_int_equal(f->raw_read, 0);
    assert_int_equal(f->calls, 0);
}

/* test_first_timeout - a silent TCP client is closed by the first timeout and counted. */
static void test_first_timeout(void **state)
{
    struct fixture *f = *state;
    control_set_first_timeout(f->ctl, 20); /* the idle timeout stays at 60 s */
    test_start_client(f, client_wait_eof);
    test_wait_client(f);
    assert_int_equal(f->raw_read, 0);
    assert_int_equal(f->calls, 0);
    struct operator_gate_stats st;
    control_get_stats(f->ctl, &st);
    assert_int_equal(st.timed_out, 1);
    assert_int_equal(st.refused_tls + st.refused_identity, 0);
}

/* test_first_timeout_then_idle - after the first request, the idle timeout governs. */
static void test_first_timeout_then_idle(void **state)
{
    struct fixture *f = *state;
    control_set_first_timeout(f->ctl, 20);
    test_start_client(f, client_two_calls_apart);
    test_wait_client(f);
    if (f->client_rc != 0)
        fail_msg("%s", f->client_err);
    assert_int_equal(f->calls, 2);
    struct operator_gate_stats st;
    control_get_stats(f->ctl, &st);
    assert_int_equal(st.timed_out, 0);
}

/* test_client_timeout - no answer in time: HAMR_ETIMEDOUT and the sentence. */
static void test_client_timeout(void **state)
{
    struct fixture *f = *state;
    f->mode = TEST_MODE_HOLD;
    f->client_timeout_ms = 100;
    test_start_client(f, client_one_call);
    test_wait_client(f);
    assert_int_equal(f->client_rc, HAMR_ETIMEDOUT);
    char want[128];
    snprintf(want, sizeof(want), "no answer from 127.0.0.1:%u within 100 ms", (unsigned)f->port);
    assert_string_equal(f->client_err, want);
}

/* test_client_refused - a closed port: HAMR_ECONNECT and the sentence. */
static void test_client_refused(void **state)
{
    /* A port that was free a moment ago: bind, read it, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    unsigned port = ntohs(sa.sin_port);

    Hamr__ControlRequest req = HAMR__CONTROL_REQUEST__INIT;
    req.verb = "status";
    Hamr__ControlResponse *resp = NULL;
    char err[256], want[128];
    assert_int_equal(
        control_client_request("127.0.0.1", (uint16_t)port, 1000, &req, &resp, err, sizeof(err)),
        HAMR_ECONNECT);
    snprintf(want, sizeof(want), "cannot connect to 127.0.0.1:%u: Connection refused", port);
    assert_string_equal(err, want);
    assert_null(resp);
}

/* test_listen_error - port in use, and a name instead of an address. */
static void test_listen_error(void **state)
{
    struct fixture *f = *state;
    struct control_handler h = {.data = f, .handle = test_handle};
    struct control *c = NULL;
    char err[256], want[128];
    struct control_config cfg = {.host = "127.0.0.1", .port = f->port};
    assert_int_equal(control_new(&f->loop, &cfg, &h, &c, err, sizeof(err)), HAMR_EIO);
    snprintf(want, sizeof(want), "control: cannot listen on 127.0.0.1:%u: address already in use",
             (unsigned)f->port);
    assert_string_equal(err, want);
    assert_null(c);
    cfg = (struct control_config){.host = "localhost"};
    assert_int_equal(control_new(&f->loop, &cfg, &h, &c, err, sizeof(err)), HAMR_EINVAL);
    assert_string_equal(err, "control: not an IP address: localhost");
}

/* ------------------------------------------------------------------------ */
/* The Unix socket.                                                         */
/* ------------------------------------------------------------------------ */

/* test_unix_call - a call over the socket; the file is a socket of mode 0660; no TCP port. */
static void test_unix_call(void **state)
{
    struct fixture *f = *state;
    f->mode = TEST_MODE_SYNC;
    test_start_client(f, client_unix_call);
    test_wait_client(f);
    if (f->client_rc != 0)
        fail_msg("%s", f->client_err);
    assert_string_equal(f->client_msg, "sync:status:");
    struct stat st;
    assert_int_equal(lstat(f->sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0660);
    assert_int_equal(control_port(f->ctl), 0);
}

/* test_unix_stale_socket - a file left by a listener that is gone is replaced. */
static void test_unix_stale_socket(void **state)
{
    struct fixture *f = *state;
    /* Close the fixture's control but put a dead socket file back at its path. */
    control_close(f->ctl, test_closed_cb, f);
    test_run_until(f, &f->closed);
    assert_int_equal(access(f->sock, F_OK), -1); /* removed at close */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    hamr_strlcpy(sa.sun_path, f->sock, sizeof(sa.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 1), 0);
    close(fd); /* the file stays, nobody listens */
    struct stat before;
    assert_int_equal(lstat(f->sock, &before), 0);

    struct control_handler h = {.data = f, .handle = test_handle};
    struct control_config cfg = {.socket_path = f->sock};
    char err[256];
    f->ctl = NULL;
    if (control_new(&f->loop, &cfg, &h, &f->ctl, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    f->closed = false; /* a new one for teardown to close */
    struct stat after;
    assert_int_equal(lstat(f->sock, &after), 0);
    assert_int_equal(after.st_mode & 07777, 0660);
    f->mode = TEST_MODE_SYNC;
    test_start_client(f, client_unix_call);
    test_wait_client(f);
    if (f->client_rc != 0)
        fail_msg("%s", f->client_err);
    assert_string_equal(f->client_msg, "sync:status:");
}

/* test_unix_live_socket - a second control on a socket someone listens on is refused. */
static void test_unix_live_socket(void **state)
{
    struct fixture *f = *state;
    struct control_handler h = {.data = f, .handle = test_handle};
    struct control_config cfg = {.host = "127.0.0.1", .socket_path = f->sock};
    struct control *c = NULL;
    char err[256], want[256];
    int rv = control_new(&f->loop, &cfg, &h, &c, err, sizeof(err));
    if (c != NULL)
        control_close(c, NULL, NULL); /* so that a failure below does not hang the loop */
    assert_int_equal(rv, HAMR_EEXIST);
    assert_null(c);
    snprintf(want, sizeof(want),
             "control: another process listens on %s (is another hamrd running on this data "
             "directory?)",
             f->sock);
    assert_string_equal(err, want);
    /* The first one is untouched. */
    f->mode = TEST_MODE_SYNC;
    test_start_client(f, client_unix_call);
    test_wait_client(f);
    if (f->client_rc != 0)
        fail_msg("%s", f->client_err);
}

/* test_unix_bad_paths - not a socket, too long, nothing to listen on. */
static void test_unix_bad_paths(void **state)
{
    struct fixture *f = *state;
    struct control_handler h = {.data = f, .handle = test_handle};
    struct control *c = NULL;
    char path[300], err[512], want[512];
    snprintf(path, sizeof(path), "%s/plain", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("keep me\n", fp);
    fclose(fp);
    struct control_config cfg = {.socket_path = path};
    int rv = control_new(&f->loop, &cfg, &h, &c, err, sizeof(err));
    if (c != NULL)
        control_close(c, NULL, NULL); /* so that a failure below does not hang the loop */
    assert_int_equal(rv, HAMR_EEXIST);
    snprintf(want, sizeof(want), "control: %s exists and is not a socket; remove it", path);
    assert_string_equal(err, want);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 8);

    memset(path, 'x', 200);
    path[0] = '/';
    path[200] = '\0';
    assert_int_equal(control_new(&f->loop, &cfg, &h, &c, err, sizeof(err)), HAMR_EINVAL);
    assert_non_null(strstr(err, "control: socket path too long (200 bytes, at most 107)"));

    cfg = (struct control_config){.socket_path = ""};
    assert_int_equal(control_new(&f->loop, &cfg, &h, &c, err, sizeof(err)), HAMR_EINVAL);
    assert_null(c);
}

/* ------------------------------------------------------------------------ */
/* TCP with TLS.                                                            */
/* ------------------------------------------------------------------------ */

/* test_tls_client - f's client context from a cluster_tls on these files. */
static void test_tls_client(struct fixture *f, const char *ca, const char *cert, const char *key)
{
    f->cli = testlib_pki_load(ca, cert, key);
    assert_non_null(f->cli);
    f->cli_ctx = cluster_tls_client_ctx(f->cli);
}

/* test_tls_stats - run the loop until the server counted tls and identity refusals. */
static void test_tls_stats(struct fixture *f, uint64_t tls, uint64_t identity)
{
    struct operator_gate_stats st;
    TESTLIB_LOOP_UNTIL(&f->run, (control_get_stats(f->ctl, &st),
                                 st.refused_tls == tls && st.refused_identity == identity));
    control_get_stats(f->ctl, &st);
    assert_int_equal(st.refused_tls, tls);
    assert_int_equal(st.refused_identity, identity);
}

/* test_tls_operator - an operator's certificate is served. */
static void test_tls_operator(void **state)
{
    struct fixture *f = *state;
    f->mode = TEST_MODE_LATER;
    test_tls_client(f, test_pki_path(&test_pki.pki, "ca.pem"),
                    test_pki_path(&test_pki.pki, "operator-alice.pem"),
                    test_pki_path(&test_pki.pki, "operator-alice.key"));
    test_start_client(f, client_tls_call);
    test_wait_client(f);
    if (f->client_rc != 0)
        fail_msg("%s", f->client_err);
    assert_string_equal(f->client_msg, "later:status:");
    assert_int_equal(f->calls, 1);
    test_tls_stats(f, 0, 0);
}

/* test_tls_node_refused - a node's certificate: HAMR_EPERM, no call, counted as identity. */
static void test_tls_node_refused(void **state)
{
    struct fixture *f = *state;
    test_tls_client(f, test_pki_path(&test_pki.pki, "ca.pem"),
                    test_pki_path(&test_pki.pki, "node-1.pem"),
                    test_pki_path(&test_pki.pki, "node-1.key"));
    test_start_client(f, client_tls_call);
    test_wait_client(f);
    assert_int_equal(f->client_rc, 0);
    assert_int_equal(f->client_code, HAMR_EPERM);
    assert_string_equal(f->client_err,
                        "control over TCP takes operator certificates only "
                        "(hamr:operator:NAME); this one is node:1");
    assert_int_equal(f->calls, 0);
    test_tls_stats(f, 0, 1);
}

/* test_tls_other_ca_refused - an operator of another CA: the handshake fails, counted as tls. */
static void test_tls_other_ca_refused(void **state)
{
    struct fixture *f = *state;
    test_tls_client(f, test_pki.both_ca, test_pki_path(&test_pki.other, "operator-mallory.pem"),
                    test_pki_path(&test_pki.other, "operator-mallory.key"));
    test_start_client(f, client_tls_call);
    test_wait_client(f);
    assert_int_equal(f->client_rc, HAMR_EPROTO);
    char want[128];
    snprintf(want, sizeof(want), "127.0.0.1:%u refused the TLS connection: ", (unsigned)f->port);
    assert_non_null(strstr(f->client_err, want));
    assert_non_null(strstr(f->client_err, "unknown ca"));
    assert_int_equal(f->calls, 0);
    test_tls_stats(f, 1, 0);
}

/* test_tls_no_certificate_refused - TLS without a client certificate: counted as tls. */
static void test_tls_no_certificate_refused(void **state)
{
    struct fixture *f = *state;
    char err[512];
    f->cli_ctx = tls_client_ctx_new(test_pki_path(&test_pki.pki, "ca.pem"), err, sizeof(err));
    assert_non_null(f->cli_ctx);
    SSL_CTX_set_verify(f->cli_ctx, SSL_VERIFY_PEER, NULL); /* it checks the node, shows nothing */
    test_start_client(f, client_tls_call);
    test_wait_client(f);
    assert_int_equal(f->client_rc, HAMR_EPROTO);
    assert_non_null(strstr(f->client_err, "refused the TLS connection: "));
    assert_non_null(strstr(f->client_err, "certificate required"));
    assert_int_equal(f->calls, 0);
    test_tls_stats(f, 1, 0);
}

/* test_tls_plaintext_refused - a plaintext request on the TLS port: told so in its framing. */
static void test_tls_plaintext_refused(void **state)
{
    struct fixture *f = *state;
    test_start_client(f, client_tls_call);
    test_wait_client(f);
    assert_int_equal(f->client_rc, 0);
    assert_int_equal(f->client_code, HAMR_EPERM);
    assert_non_null(
        strstr(f->client_err, "this control port takes TLS with an operator certificate"));
    assert_int_equal(f->calls, 0);
    test_tls_stats(f, 1, 0);
}

/* test_json_of - JSON text of m (caller frees). */
static char *test_json_of(const ProtobufCMessage *m)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    assert_int_equal(control_client_json(out, m), 0);
    fclose(out);
    return text;
}

/* test_json - escaping, invalid UTF-8, nesting, enums, bytes, oneof, arrays. */
static void test_json(void **state)
{
    Hamr__MemberStatus m1 = HAMR__MEMBER_STATUS__INIT;
    m1.id = 1;
    m1.address = "127.0.0.1:7001";
    m1.role = "voter";
    Hamr__MemberStatus *members[] = {&m1};
    Hamr__NodeStatus st = HAMR__NODE_STATUS__INIT;
    st.id = 1;
    st.state = "leader";
    st.term = 18446744073709551615ull;
    st.members = members;
    st.n_members = 1;
    st.draining = 1;
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.code = -7;
    resp.error = "quote\" back\\ nl\n tab\t bel\x07 utf8 \xc3\xa9 bad \xff\xc3";
    resp.status = &st;
    char *text = test_json_of(&resp.base);
    const char *want =
        "{\n"
        "  \"code\": -7,\n"
        "  \"error\": \"quote\\\" back\\\\ nl\\n tab\\t bel\\u0007 utf8 \xc3\xa9 bad "
        "\\ufffd\\ufffd\",\n"
        "  \"status\": {\n"
        "    \"id\": 1,\n"
        "    \"state\": \"leader\",\n"
        "    \"leader_id\": 0,\n"
        "    \"leader_address\": \"\",\n"
        "    \"term\": 18446744073709551615,\n"
        "    \"commit_index\": 0,\n"
        "    \"applied_index\": 0,\n"
        "    \"last_index\": 0,\n"
        "    \"members\": [\n"
        "      {\n"
        "        \"id\": 1,\n"
        "        \"address\": \"127.0.0.1:7001\",\n"
        "        \"role\": \"voter\",\n"
        "        \"draining\": false,\n"
        "        \"zone\": \"\"\n"
        "      }\n"
        "    ],\n"
        "    \"queue_messages\": 0,\n"
        "    \"queue_rcpts_pending\": 0,\n"
        "    \"queue_rcpts_leased\": 0,\n"
        "    \"queue_bytes\": 0,\n"
        "    \"queue_digest\": \"\",\n"
        "    \"free_bytes\": 0,\n"
        "    \"version\": \"\",\n"
        "    \"draining\": true,\n"
        "    \"queue_held\": 0,\n"
        "    \"duplicate_windows\": 0,\n"
        "    \"forwarded\": 0,\n"
        "    \"resolved\": 0,\n"
        "    \"leader_control\": \"\",\n"
        "    \"cluster_level\": 0,\n"
        "    \"cluster_tls\": null,\n"
        "    \"body_store\": false,\n"
        "    \"bodies_missing\": 0,\n"
        "    \"body_store_bytes\": 0,\n"
        "    \"body_store_segments\": 0,\n"
        "    \"sts_policies\": 0,\n"
        "    \"zone\": \"\",\n"
        "    \"clock_known\": false,\n"
        "    \"clock_skew_ms\": 0,\n"
        "    \"clock_skewed\": false,\n"
        "    \"lease_lapses\": 0,\n"
        "    \"deliveries_stopped\": 0,\n"
        "    \"deliveries_running\": 0,\n"
        "    \"delivery_members\": []\n"
        "  },\n"
        "  \"entries\": [],\n"
        "  \"message\": \"\",\n"
        "  \"leader_control\": \"\",\n"
        "  \"next_after\": \"\"\n"
        "}\n";
    assert_string_equal(text, want);
    free(text);

    /* Enums by name, bytes as base64, a oneof only when set, repeated numbers. */
    Hamr__RcptResult r = HAMR__RCPT_RESULT__INIT;
    r.status = HAMR__RCPT_RESULT__STATUS__BOUNCED;
    r.rcpt_index = 2;
    text = test_json_of(&r.base);
    assert_non_null(strstr(text, "\"status\": \"BOUNCED\""));
    free(text);
    Hamr__Enqueue enq = HAMR__ENQUEUE__INIT;
    enq.body.data = (uint8_t *)"hello";
    enq.body.len = 5;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &enq;
    text = test_json_of(&e.base);
    assert_non_null(strstr(text, "\"body\": \"aGVsbG8=\""));
    assert_non_null(strstr(text, "\"enqueue\": {"));
    assert_null(strstr(text, "\"outcome\""));
    free(text);
    uint32_t idx[] = {3, 4};
    Hamr__LeaseItem li = HAMR__LEASE_ITEM__INIT;
    li.rcpt_indexes = idx;
    li.n_rcpt_indexes = 2;
    text = test_json_of(&li.base);
    assert_non_null(strstr(text, "\"rcpt_indexes\": [\n    3,\n    4\n  ]"));
    free(text);
}

/* main - every test gets its own loop and server. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sync_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_later_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_calls_one_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_frame_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_frame_answered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_after_client_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_after_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_timeout_then_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen_error, setup, teardown),
        cmocka_unit_test(test_client_refused),
        cmocka_unit_test(test_json),
        cmocka_unit_test_setup_teardown(test_unix_call, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_unix_stale_socket, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_unix_live_socket, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_unix_bad_paths, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_tls_operator, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(test_tls_node_refused, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(test_tls_other_ca_refused, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(test_tls_no_certificate_refused, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(test_tls_plaintext_refused, setup_tls, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
