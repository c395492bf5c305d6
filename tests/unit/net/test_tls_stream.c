/*
 * test_tls_stream.c - net/tls_stream over real sockets on one libuv loop:
 * the two ends of a socketpair (uv_pipe_t) or of a loopback TCP connection
 * (uv_tcp_t), TLS over cluster contexts from certificates deploy/make-pki.sh
 * makes per run (tests/lib/testlib_pki), or in the clear.
 *
 * Covers: mutual TLS both ways in many sizes (1 octet to 3 MiB, record
 * boundaries around 16 KiB), written by both sides before the handshake;
 * handshake_cb once, before any plaintext; each write's callback once, never
 * inside tls_stream_write; tls_stream_queued back to 0; the peer's identity
 * from tls_stream_tls; close_notify and EOF read as UV_EOF once; plain mode
 * the same way without an engine; a client without a certificate, one with
 * a certificate of another CA, and a client that is not TLS at all fail the
 * server's handshake with UV_EPROTO and a reason, and no plaintext gets
 * through; an owner that closes in handshake_cb sends nothing of what
 * waited; writes waiting for a handshake that never happens are cancelled
 * from tls_stream_free; reading stopped inside read_cb stays stopped until
 * started again; bad arguments.
 *
 * Callbacks only record; assertions are made in the test body. Waits are
 * bounded (testlib_loop), and every test ends with a loop that closes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "net/cluster_tls.h"
#include "net/tls_stream.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_pki.h"

#define T_GUARD_MS 20000
#define T_TURNS 1000000
#define T_WRITES 32
#define T_RBUF 5000 /* odd, so reads and records do not line up */

/* Sizes written in turn: record boundaries (16 KiB) and more than a socket buffer holds. */
static const size_t t_sizes[] = {1,     2,     100,   4096,  16383,         16384,
                                 16385, 65536, 65537, 70000, (1 << 20) + 7, 3u << 20};

struct fixture;

/* t_write - one write's record. */
struct t_write {
    struct t_end *e;
    int count;
    int status;
    bool inside;
};

/* t_end - one side of the connection. */
struct t_end {
    struct tls_stream_handle h;
    struct tls_stream *ts;
    struct fixture *f;
    bool open;
    bool closed;
    /* reading */
    char rbuf[T_RBUF];
    size_t got;     /* plaintext octets received */
    size_t bad_at;  /* first octet that differs from the pattern + 1, 0: none */
    int reads;      /* read_cb calls with data */
    int zero_reads; /* read_cb with 0 */
    int ends;       /* read_cb or handshake_cb with < 0 */
    int end_status;
    int hs; /* handshake_cb calls with 0 */
    bool data_before_hs;
    bool stop_on_read; /* tls_stream_read_stop in the first read_cb */
    bool close_on_hs;  /* uv_close in handshake_cb */
    uint8_t seed;      /* of the pattern the other side sends */
    /* writing */
    const uint8_t *src; /* the pattern this side sends */
    struct t_write w[T_WRITES];
    int n_w;
    size_t sent; /* octets handed to tls_stream_write */
    bool shut;
    int shut_status;
};

struct fixture {
    uv_loop_t loop;
    struct testlib_loop run;
    struct testlib_pki pki;   /* CA, node 1, node 2 */
    struct testlib_pki other; /* another CA: node 2 */
    struct cluster_tls *n1, *n2;
    SSL_CTX *nocert;  /* trusts the CA, presents nothing */
    SSL_CTX *foreign; /* trusts the CA, presents the other CA's node 2 */
    struct t_end cli, srv;
    uint8_t *pattern[2]; /* by seed 0, 1 */
    size_t pattern_len;
};

static bool t_in_write; /* true while tls_stream_write runs */

/* t_byte - octet i of the pattern with seed. */
static uint8_t t_byte(size_t i, uint8_t seed)
{
    return (uint8_t)(i * 131 + (i >> 9) + seed * 77);
}

static size_t t_total(void)
{
    size_t n = 0;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(t_sizes); i++)
        n += t_sizes[i];
    return n;
}

/* t_ctx - a client context that trusts ca and presents cert/key (NULL: nothing). */
static SSL_CTX *t_ctx(const char *ca, const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
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

/* t_load - the cluster contexts of node id in pki. */
static struct cluster_tls *t_load(const struct testlib_pki *pki, uint64_t id)
{
    char ca[512], cert[512], key[512], name[64], err[512];
    snprintf(name, sizeof(name), "node-%llu.pem", (unsigned long long)id);
    testlib_pki_path(pki, name, cert, sizeof(cert));
    snprintf(name, sizeof(name), "node-%llu.key", (unsigned long long)id);
    testlib_pki_path(pki, name, key, sizeof(key));
    testlib_pki_path(pki, "ca.pem", ca, sizeof(ca));
    struct cluster_tls_files files = {.ca = ca, .cert = cert, .key = key};
    struct cluster_tls *c = NULL;
    if (cluster_tls_new(&files, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "cluster_tls_new: %s\n", err);
        return NULL;
    }
    return c;
}

static int group_setup(void **state)
{
    static struct fixture f;
    char ca[512], cert[512], key[512];
    memset(&f, 0, sizeof(f));
    if (!testlib_pki_init(&f.pki) || !testlib_pki_node(&f.pki, 1, 0) ||
        !testlib_pki_node(&f.pki, 2, 0) || !testlib_pki_init(&f.other) ||
        !testlib_pki_node(&f.other, 2, 0))
        return -1;
    f.n1 = t_load(&f.pki, 1);
    f.n2 = t_load(&f.pki, 2);
    testlib_pki_path(&f.pki, "ca.pem", ca, sizeof(ca));
    f.nocert = t_ctx(ca, NULL, NULL);
    f.foreign = t_ctx(ca, testlib_pki_path(&f.other, "node-2.pem", cert, sizeof(cert)),
                      testlib_pki_path(&f.other, "node-2.key", key, sizeof(key)));
    f.pattern_len = t_total();
    for (int k = 0; k < 2; k++) {
        f.pattern[k] = malloc(f.pattern_len);
        if (f.pattern[k] == NULL)
            return -1;
        for (size_t i = 0; i < f.pattern_len; i++)
            f.pattern[k][i] = t_byte(i, (uint8_t)k);
    }
    if (f.n1 == NULL || f.n2 == NULL || f.nocert == NULL || f.foreign == NULL)
        return -1;
    *state = &f;
    return 0;
}

static int group_teardown(void **state)
{
    struct fixture *f = *state;
    cluster_tls_free(f->n1);
    cluster_tls_free(f->n2);
    SSL_CTX_free(f->nocert);
    SSL_CTX_free(f->foreign);
    free(f->pattern[0]);
    free(f->pattern[1]);
    testlib_pki_cleanup(&f->pki);
    testlib_pki_cleanup(&f->other);
    return 0;
}

/* setup - a fresh loop for each test; the ends are made by t_pair. */
static int setup(void **state)
{
    struct fixture *f = *state;
    memset(&f->cli, 0, sizeof(f->cli));
    memset(&f->srv, 0, sizeof(f->srv));
    if (uv_loop_init(&f->loop) != 0)
        return -1;
    testlib_loop_start(&f->run, &f->loop, T_GUARD_MS, T_TURNS);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The owner's callbacks: record only.                                      */
/* ------------------------------------------------------------------------ */

static void t_alloc_cb(void *data, uv_buf_t *buf)
{
    struct t_end *e = data;
    *buf = uv_buf_init(e->rbuf, sizeof(e->rbuf));
}

static void t_read_cb(void *data, ssize_t nread, const uv_buf_t *buf)
{
    struct t_end *e = data;
    if (nread == 0) {
        e->zero_reads++;
        return;
    }
    if (nread < 0) {
        e->ends++;
        e->end_status = (int)nread;
        return;
    }
    if (e->ts != NULL && tls_stream_tls(e->ts) != NULL && e->hs == 0)
        e->data_before_hs = true;
    e->reads++;
    for (ssize_t i = 0; i < nread; i++)
        if (e->bad_at == 0 && (uint8_t)buf->base[i] != t_byte(e->got + (size_t)i, e->seed))
            e->bad_at = e->got + (size_t)i + 1;
    e->got += (size_t)nread;
    if (e->stop_on_read && e->reads == 1)
        tls_stream_read_stop(e->ts);
}

static void t_closed_cb(uv_handle_t *h)
{
    struct t_end *e = hamr_container_of(h, struct t_end, h.u.stream);
    tls_stream_free(e->ts);
    e->ts = NULL;
    e->closed = true;
}

static void t_close(struct t_end *e)
{
    if (e->open && !uv_is_closing((uv_handle_t *)&e->h.u.stream))
        uv_close((uv_handle_t *)&e->h.u.stream, t_closed_cb);
}

static void t_hs_cb(void *data, int status)
{
    struct t_end *e = data;
    if (status < 0) {
        e->ends++;
        e->end_status = status;
        return;
    }
    e->hs++;
    if (e->close_on_hs)
        t_close(e);
}

static void t_write_cb(void *arg, int status)
{
    struct t_write *w = arg;
    w->count++;
    w->status = status;
    w->inside |= t_in_write;
}

static void t_shut_cb(void *arg, int status)
{
    struct t_end *e = arg;
    e->shut = true;
    e->shut_status = status;
}

/* ------------------------------------------------------------------------ */
/* Helpers.                                                                 */
/* ------------------------------------------------------------------------ */

/* t_fds - two connected sockets: a socketpair, or both ends of a loopback TCP connection. */
static void t_fds(bool tcp, int fd[2])
{
    if (!tcp) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fd), 0);
        return;
    }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(l, 1), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &len), 0);
    fd[0] = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(fd[0], (struct sockaddr *)&sa, sizeof(sa)), 0);
    fd[1] = accept(l, NULL, NULL);
    assert_true(fd[1] >= 0);
    close(l);
}

/* t_open - e over fd (a pipe or a TCP handle), on ctx (NULL: plain). */
static void t_open(struct fixture *f, struct t_end *e, bool tcp, int fd, SSL_CTX *ctx, bool server)
{
    e->f = f;
    if (tcp) {
        assert_int_equal(uv_tcp_init(&f->loop, &e->h.u.tcp), 0);
        assert_int_equal(uv_tcp_open(&e->h.u.tcp, fd), 0);
    } else {
        assert_int_equal(uv_pipe_init(&f->loop, &e->h.u.pipe, 0), 0);
        assert_int_equal(uv_pipe_open(&e->h.u.pipe, fd), 0);
    }
    e->open = true;
    e->h.u.stream.data = (void *)0x5a5a; /* the owner's: must stay as it is */
    struct tls_stream_ops ops = {
        .data = e, .alloc_cb = t_alloc_cb, .read_cb = t_read_cb, .handshake_cb = t_hs_cb};
    assert_int_equal(tls_stream_init(&e->ts, &e->h, ctx, server, &ops), 0);
    assert_ptr_equal(e->h.ts, e->ts);
}

/* t_pair - client (seed 0) and server (seed 1) over a new connection; reading started. */
static void t_pair(struct fixture *f, bool tcp, SSL_CTX *cctx, SSL_CTX *sctx)
{
    int fd[2];
    t_fds(tcp, fd);
    t_open(f, &f->cli, tcp, fd[0], cctx, false);
    t_open(f, &f->srv, tcp, fd[1], sctx, true);
    f->cli.src = f->pattern[0];
    f->srv.src = f->pattern[1];
    f->cli.seed = 1; /* it receives the server's pattern */
    f->srv.seed = 0;
}

static void t_start(struct t_end *e)
{
    assert_int_equal(tls_stream_read_start(e->ts), 0);
}

/* t_send - the next len octets of e's pattern, recorded in e->w[n_w]. */
static int t_send(struct t_end *e, size_t len)
{
    assert_true(e->n_w < T_WRITES);
    struct t_write *w = &e->w[e->n_w];
    w->e = e;
    t_in_write = true;
    int rv = tls_stream_write(e->ts, e->src + e->sent, len, t_write_cb, w);
    t_in_write = false;
    if (rv == 0) {
        e->n_w++;
        e->sent += len;
    }
    return rv;
}

/* t_send_all - every size of t_sizes, in order (reverse: largest first). */
static void t_send_all(struct t_end *e, bool reverse)
{
    size_t n = HAMR_ARRAY_LEN(t_sizes);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(t_send(e, t_sizes[reverse ? n - 1 - i : i]), 0);
}

/* t_writes_done - every write of e called back. */
static bool t_writes_done(const struct t_end *e)
{
    for (int i = 0; i < e->n_w; i++)
        if (e->w[i].count == 0)
            return false;
    return true;
}

/* t_assert_writes - each write's callback ran once, outside the call, with status. */
static void t_assert_writes(const struct t_end *e, int status)
{
    for (int i = 0; i < e->n_w; i++) {
        assert_int_equal(e->w[i].count, 1);
        assert_false(e->w[i].inside);
        assert_int_equal(e->w[i].status, status);
    }
}

#define t_wait(f, cond) TESTLIB_LOOP_UNTIL(&(f)->run, cond)

/* t_spin - a few turns without blocking: lets what would happen happen. */
static void t_spin(struct fixture *f)
{
    for (int i = 0; i < 50; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* teardown - close what is open; the loop must close with nothing left. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    t_close(&f->cli);
    t_close(&f->srv);
    testlib_loop_close(&f->run);
    for (int i = 0; i < 1000 && uv_loop_alive(&f->loop); i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    int rv = uv_loop_close(&f->loop);
    if (ERR_peek_error() != 0) {
        fprintf(stderr, "OpenSSL error queue left non-empty\n");
        ERR_clear_error();
        return -1;
    }
    return rv == 0 ? 0 : -1;
}

/* t_assert_identity - the node e's peer proved to be. */
static void t_assert_identity(const struct t_end *e, uint64_t node)
{
    struct cluster_tls_identity id;
    assert_int_equal(cluster_tls_peer(tls_stream_tls(e->ts), &id), 0);
    assert_int_equal(id.role, CLUSTER_TLS_NODE);
    assert_int_equal(id.node_id, node);
}

/* ------------------------------------------------------------------------ */
/* Tests.                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * t_both_ways - both sides write every size before the handshake is done;
 * everything arrives in order after handshake_cb; the client's close_notify
 * reads as UV_EOF once.
 */
static void t_both_ways(struct fixture *f, bool tcp, bool tls)
{
    t_pair(f, tcp, tls ? cluster_tls_client_ctx(f->n2) : NULL,
           tls ? cluster_tls_server_ctx(f->n1) : NULL);
    t_send_all(&f->cli, false);
    t_send_all(&f->srv, true);
    assert_int_equal(tls_stream_queued(f->cli.ts), f->pattern_len);
    assert_int_equal(tls_stream_handshaken(f->cli.ts), !tls);
    t_start(&f->srv);
    t_start(&f->cli);
    t_wait(f, f->srv.got == f->pattern_len && f->cli.got == f->pattern_len &&
                  t_writes_done(&f->cli) && t_writes_done(&f->srv));
    assert_int_equal(f->srv.bad_at, 0);
    assert_int_equal(f->cli.bad_at, 0);
    t_assert_writes(&f->cli, 0);
    t_assert_writes(&f->srv, 0);
    assert_int_equal(tls_stream_queued(f->cli.ts), 0);
    assert_int_equal(tls_stream_queued(f->srv.ts), 0);
    assert_true(tls_stream_handshaken(f->cli.ts) && tls_stream_handshaken(f->srv.ts));
    assert_string_equal(tls_stream_error(f->srv.ts), "");
    assert_ptr_equal(f->cli.h.u.stream.data, (void *)0x5a5a);
    if (tls) {
        assert_int_equal(f->cli.hs, 1);
        assert_int_equal(f->srv.hs, 1);
        assert_false(f->cli.data_before_hs || f->srv.data_before_hs);
        t_assert_identity(&f->srv, 2);
        t_assert_identity(&f->cli, 1);
    } else {
        assert_null(tls_stream_tls(f->cli.ts));
        assert_int_equal(f->cli.hs + f->srv.hs, 0);
    }
    assert_int_equal(f->srv.ends + f->cli.ends, 0);

    /* The client ends its side: the server reads the end once. */
    assert_int_equal(tls_stream_shutdown(f->cli.ts, t_shut_cb, &f->cli), 0);
    assert_int_equal(tls_stream_shutdown(f->cli.ts, t_shut_cb, &f->cli), UV_EBUSY);
    assert_false(f->cli.shut);
    t_wait(f, f->srv.ends > 0 && f->cli.shut);
    t_spin(f);
    assert_int_equal(f->cli.shut_status, 0);
    assert_int_equal(f->srv.ends, 1);
    assert_int_equal(f->srv.end_status, UV_EOF);
    assert_int_equal(f->srv.got, f->pattern_len);
    /* The server may still answer a half-closed client. */
    f->srv.sent = 0;
    f->cli.got = 0;
    assert_int_equal(t_send(&f->srv, 777), 0);
    t_wait(f, f->cli.got == 777);
    assert_int_equal(f->cli.bad_at, 0);
}

static void test_tls_pipe(void **state)
{
    t_both_ways(*state, false, true);
}

static void test_tls_tcp(void **state)
{
    t_both_ways(*state, true, true);
}

static void test_plain_pipe(void **state)
{
    t_both_ways(*state, false, false);
}

static void test_plain_tcp(void **state)
{
    t_both_ways(*state, true, false);
}

/*
 * t_refused - a client the server's context refuses: the server's
 * handshake_cb gets UV_EPROTO once, with reason; none of the client's
 * plaintext reaches it; the client's end is reported once too.
 */
static void t_refused(struct fixture *f, SSL_CTX *cctx, const char *reason)
{
    t_pair(f, false, cctx, cluster_tls_server_ctx(f->n1));
    assert_int_equal(t_send(&f->cli, 100), 0);
    t_start(&f->srv);
    t_start(&f->cli);
    t_wait(f, f->srv.ends > 0);
    assert_int_equal(f->srv.end_status, UV_EPROTO);
    assert_int_equal(f->srv.hs, 0);
    print_message("server: %s\n", tls_stream_error(f->srv.ts));
    assert_non_null(strstr(tls_stream_error(f->srv.ts), reason));
    assert_false(tls_stream_handshaken(f->srv.ts));
    assert_int_equal(t_send(&f->srv, 10), UV_EPROTO); /* failed: no more writes */
    t_close(&f->srv);
    t_wait(f, f->cli.ends > 0 && t_writes_done(&f->cli) && f->srv.closed);
    t_spin(f);
    print_message("client: %s (%s)\n", uv_err_name(f->cli.end_status), tls_stream_error(f->cli.ts));
    assert_int_equal(f->cli.ends, 1);
    assert_int_equal(f->srv.ends, 1);
    assert_int_equal(f->srv.got, 0);
    assert_int_equal(f->srv.reads, 0);
    assert_int_equal(f->cli.got, 0);
    for (int i = 0; i < f->cli.n_w; i++) {
        assert_int_equal(f->cli.w[i].count, 1);
        assert_false(f->cli.w[i].inside);
    }
}

static void test_client_without_cert(void **state)
{
    struct fixture *f = *state;
    t_refused(f, f->nocert, "certificate");
}

static void test_client_of_other_ca(void **state)
{
    struct fixture *f = *state;
    t_refused(f, f->foreign, "certificate verify failed");
}

/* test_server_of_other_ca - the client refuses a server its CA did not sign. */
static void test_server_of_other_ca(void **state)
{
    struct fixture *f = *state;
    struct cluster_tls *o2 = t_load(&f->other, 2);
    assert_non_null(o2);
    t_pair(f, false, cluster_tls_client_ctx(o2), cluster_tls_server_ctx(f->n1));
    cluster_tls_free(o2); /* the engine holds its own reference to the context */
    assert_int_equal(t_send(&f->cli, 100), 0);
    t_start(&f->srv);
    t_start(&f->cli);
    t_wait(f, f->cli.ends > 0 && f->srv.ends > 0);
    assert_int_equal(f->cli.end_status, UV_EPROTO);
    assert_int_equal(f->cli.hs, 0);
    assert_non_null(strstr(tls_stream_error(f->cli.ts), "certificate verify failed"));
    assert_int_equal(f->srv.got, 0);
    t_close(&f->cli);
    t_wait(f, t_writes_done(&f->cli));
    t_assert_writes(&f->cli, UV_ECANCELED);
}

/* test_not_tls - plaintext to a TLS server: UV_EPROTO with a reason, nothing delivered. */
static void test_not_tls(void **state)
{
    struct fixture *f = *state;
    t_pair(f, false, NULL, cluster_tls_server_ctx(f->n1));
    static const char junk[] = "EHLO stranger\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";
    struct t_write w = {0};
    assert_int_equal(tls_stream_write(f->cli.ts, junk, sizeof(junk) - 1, t_write_cb, &w), 0);
    t_start(&f->srv);
    t_start(&f->cli);
    t_wait(f, f->srv.ends > 0 && w.count > 0);
    assert_int_equal(f->srv.end_status, UV_EPROTO);
    assert_true(strlen(tls_stream_error(f->srv.ts)) > 0);
    print_message("server: %s\n", tls_stream_error(f->srv.ts));
    assert_int_equal(f->srv.got, 0);
}

/* test_refused_in_handshake_cb - a client closing in handshake_cb sends nothing that waited. */
static void test_refused_in_handshake_cb(void **state)
{
    struct fixture *f = *state;
    t_pair(f, false, cluster_tls_client_ctx(f->n2), cluster_tls_server_ctx(f->n1));
    f->cli.close_on_hs = true;
    assert_int_equal(t_send(&f->cli, 100), 0);
    assert_int_equal(t_send(&f->cli, 70000), 0);
    t_start(&f->srv);
    t_start(&f->cli);
    t_wait(f, f->cli.closed && f->srv.ends > 0);
    t_spin(f);
    assert_int_equal(f->cli.hs, 1);
    t_assert_writes(&f->cli, UV_ECANCELED); /* from tls_stream_free */
    assert_int_equal(f->srv.got, 0);
    assert_int_equal(f->srv.ends, 1);
}

/* test_cancelled_before_handshake - closed before any turn: the waiting writes are cancelled. */
static void test_cancelled_before_handshake(void **state)
{
    struct fixture *f = *state;
    t_pair(f, false, cluster_tls_client_ctx(f->n2), cluster_tls_server_ctx(f->n1));
    t_start(&f->cli);
    assert_int_equal(t_send(&f->cli, 10), 0);
    assert_int_equal(t_send(&f->cli, 20), 0);
    assert_int_equal(tls_stream_queued(f->cli.ts), 30);
    assert_int_equal(tls_stream_shutdown(f->cli.ts, t_shut_cb, &f->cli), UV_ENOTCONN);
    t_close(&f->cli);
    assert_int_equal(t_send(&f->cli, 5), UV_ECANCELED);
    assert_int_equal(f->cli.w[0].count, 0);
    t_wait(f, f->cli.closed);
    t_assert_writes(&f->cli, UV_ECANCELED);
    assert_int_equal(f->cli.n_w, 2);
}

/* test_read_stop - stopped inside read_cb: no more until started again. */
static void test_read_stop(void **state)
{
    struct fixture *f = *state;
    t_pair(f, false, cluster_tls_client_ctx(f->n2), cluster_tls_server_ctx(f->n1));
    f->srv.stop_on_read = true;
    t_send_all(&f->cli, false);
    t_start(&f->srv);
    t_start(&f->cli);
    t_wait(f, f->srv.reads > 0);
    t_spin(f);
    size_t got = f->srv.got;
    t_spin(f);
    assert_int_equal(f->srv.got, got);
    assert_true(got < f->pattern_len);
    assert_true(got <= 65536); /* at most one socket read's worth */
    f->srv.stop_on_read = false;
    t_start(&f->srv);
    t_wait(f, f->srv.got == f->pattern_len && t_writes_done(&f->cli));
    assert_int_equal(f->srv.bad_at, 0);
    t_assert_writes(&f->cli, 0);
}

/* test_bad_arguments - refused at once, no callback. */
static void test_bad_arguments(void **state)
{
    struct fixture *f = *state;
    t_pair(f, false, NULL, NULL);
    struct t_write w = {0};
    assert_int_equal(tls_stream_write(f->cli.ts, "x", 0, t_write_cb, &w), UV_EINVAL);
    assert_int_equal(tls_stream_write(f->cli.ts, "x", 1, NULL, NULL), UV_EINVAL);
    assert_int_equal(tls_stream_write(f->cli.ts, "x", TLS_STREAM_WRITE_MAX + 1, t_write_cb, &w),
                     UV_EINVAL);
    t_spin(f);
    assert_int_equal(w.count, 0);
    assert_int_equal(tls_stream_queued(f->cli.ts), 0);
    tls_stream_free(NULL);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as hamrd does: a vanished peer is EPIPE, not death */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tls_pipe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_tcp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plain_pipe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plain_tcp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_without_cert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_of_other_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_of_other_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_in_handshake_cb, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_before_handshake, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
