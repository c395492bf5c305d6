/*
 * test_consensus_tls.c - consensus/ with the raft port on mutual TLS 1.3
 * (consensus_config.tls) and on IPv6 literals: real raft 0.15, a libuv
 * loop, disk under /tmp, TCP on 127.0.0.1 or ::1. Certificates are made per
 * run by deploy/make-pki.sh (tests/lib/testlib_pki).
 *
 * Covers: three voters over TLS commit, lose their leader, elect another
 * and commit again; a client with a valid certificate for node 2 that
 * claims id 3 is refused and counted (identity), and so is one with an
 * operator's certificate, before it claims anything, while the cluster
 * commits; a client with no certificate, with one from another CA, or
 * speaking plain TCP fails TLS (tls); the 95-byte malformed packets sent
 * over a valid TLS connection with node 2's certificate and claim are
 * refused by the checker (refused) and the node stays up; a voter whose
 * certificate names another node is never connected to (out_identity) nor
 * accepted (identity), and gets nothing; a server that never answers the
 * TLS handshake fails the connect after the deadline (out_tls); three
 * voters on [::1] commit, plain and over TLS.
 *
 * The clients that attack are OpenSSL over non-blocking sockets, driven
 * from the predicates the bounded loop runner polls between loop turns.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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
#include "util/log.h"

#include "consensus/consensus.h"
#include "net/cluster_tls.h"
#include "tests/lib/testlib_pki.h"

#define WATCHDOG_MS 15000
#define MAX_ITERATIONS 400000
#define N3 3
#define BATCH 10

/* ------------------------------------------------------------------------ */
/* The state machine: counts entries and checks their sequence numbers.     */

struct toy {
    uint64_t count;
    bool in_order;
};

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static int toy_apply(void *data, const uint8_t *buf, size_t len, void **result)
{
    struct toy *t = data;
    if (len < 8 || get64(buf) != t->count + 1)
        t->in_order = false;
    t->count++;
    *result = NULL;
    return 0;
}

static int toy_snapshot(void *data, uint8_t **buf, size_t *len)
{
    struct toy *t = data;
    *buf = consensus_malloc(8);
    if (*buf == NULL)
        return HAMR_ENOMEM;
    put64(*buf, t->count);
    *len = 8;
    return 0;
}

static int toy_restore(void *data, const uint8_t *buf, size_t len)
{
    struct toy *t = data;
    if (len != 8)
        return HAMR_EINVAL;
    t->count = get64(buf);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Nodes and the bounded loop.                                              */

struct tnode {
    struct consensus *c;
    struct consensus_config cfg;
    struct toy toy;
    bool leader;
    bool closed;
    char dir[64];
};

struct fixture {
    struct testlib_pki pki;     /* nodes 1..4, operator alice */
    struct testlib_pki other;   /* another CA: node 2 */
    struct cluster_tls *tls[5]; /* tls[i]: node i of pki (1..4) */
    struct cluster_tls *other2; /* node 2 of the other CA */
    struct cluster_tls *alice;  /* operator alice of pki */
};

static uv_loop_t loop;
static struct tnode nodes[N3];

/* run_until - run the loop until pred(arg) holds; false on watchdog. */
static bool run_until(bool (*pred)(void *), void *arg)
{
    uv_update_time(&loop);
    uint64_t deadline = uv_now(&loop) + WATCHDOG_MS;
    for (int i = 0; i < MAX_ITERATIONS; i++) {
        if (pred(arg))
            return true;
        uv_update_time(&loop);
        if (uv_now(&loop) > deadline)
            break;
        uv_run(&loop, UV_RUN_ONCE);
    }
    return pred(arg);
}

/* free_port - a TCP port on the loopback (v6: ::1) that was free a moment ago. */
static int free_port(bool v6)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl;
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        sl = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof(*a);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&ss, sl), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    close(fd);
    return v6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
              : ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void on_leader(void *arg, bool leader)
{
    ((struct tnode *)arg)->leader = leader;
}

static void on_closed(void *arg)
{
    struct tnode *n = arg;
    n->closed = true;
    n->c = NULL;
}

static bool pred_closed(void *arg)
{
    return ((struct tnode *)arg)->closed;
}

/* node_close - consensus_close, wait for it, remove the directory. */
static void node_close(struct tnode *n)
{
    if (n->c != NULL) {
        consensus_close(n->c, on_closed, n);
        assert_true(run_until(pred_closed, n));
    }
    if (n->dir[0] != '\0')
        nftw(n->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    n->dir[0] = '\0';
}

/*
 * cluster_open - three voters on the loopback (v6: [::1]); node i runs with
 * tls[i] (NULL: plain). voters[i] may name an address of the caller's
 * instead of a node (start[i] false: that node is not started).
 */
static void cluster_open(bool v6,
                         struct cluster_tls *const tls[N3],
                         const bool start[N3],
                         char addrs[N3][CONSENSUS_ADDR_MAX])
{
    struct consensus_member voters[N3];
    for (int i = 0; i < N3; i++) {
        voters[i].id = (uint64_t)i + 1;
        if (addrs[i][0] == '\0')
            snprintf(addrs[i], CONSENSUS_ADDR_MAX, v6 ? "[::1]:%d" : "127.0.0.1:%d", free_port(v6));
        hamr_strlcpy(voters[i].address, addrs[i], sizeof(voters[i].address));
    }
    for (int i = 0; i < N3; i++) {
        struct tnode *n = &nodes[i];
        memset(n, 0, sizeof(*n));
        n->toy.in_order = true;
        if (!start[i])
            continue;
        snprintf(n->dir, sizeof(n->dir), "/tmp/hamr-ctls-XXXXXX");
        assert_non_null(mkdtemp(n->dir));
        n->cfg.id = (uint64_t)i + 1;
        hamr_strlcpy(n->cfg.address, addrs[i], sizeof(n->cfg.address));
        hamr_strlcpy(n->cfg.dir, n->dir, sizeof(n->cfg.dir));
        n->cfg.voters = voters;
        n->cfg.n_voters = N3;
        n->cfg.election_timeout_ms = 300;
        n->cfg.heartbeat_ms = 50;
        n->cfg.segment_size = 1024 * 1024;
        n->cfg.on_leader = on_leader;
        n->cfg.on_leader_arg = n;
        n->cfg.tls = tls[i];
        struct consensus_fsm fsm = {
            .data = &n->toy, .apply = toy_apply, .snapshot = toy_snapshot, .restore = toy_restore};
        char err[256] = "";
        int rc = consensus_new(&loop, &n->cfg, &fsm, &n->c, err, sizeof(err));
        if (rc != 0)
            fail_msg("consensus_new %d: %s: %s", i + 1, hamr_strerror(rc), err);
        rc = consensus_start(n->c, err, sizeof(err));
        if (rc != 0)
            fail_msg("consensus_start %d: %s: %s", i + 1, hamr_strerror(rc), err);
    }
}

static bool pred_one_ready(void *arg)
{
    (void)arg;
    for (int i = 0; i < N3; i++)
        if (nodes[i].c != NULL && consensus_is_ready(nodes[i].c) && nodes[i].leader)
            return true;
    return false;
}

/* leader - index of the ready node, after waiting for one. */
static int leader(void)
{
    assert_true(run_until(pred_one_ready, NULL));
    for (int i = 0; i < N3; i++)
        if (nodes[i].c != NULL && consensus_is_ready(nodes[i].c) && nodes[i].leader)
            return i;
    fail_msg("no leader");
    return -1;
}

struct batch {
    int fired;
    int ok;
};

static void prop_cb(void *arg, int status, void *result)
{
    struct batch *b = arg;
    (void)result;
    b->fired++;
    if (status == 0)
        b->ok++;
}

static bool pred_batch(void *arg)
{
    return ((struct batch *)arg)->fired == BATCH;
}

struct applied_goal {
    uint64_t count;
    bool among[N3];
};

static bool pred_applied(void *arg)
{
    struct applied_goal *g = arg;
    for (int i = 0; i < N3; i++)
        if (g->among[i] && nodes[i].c != NULL && nodes[i].toy.count < g->count)
            return false;
    return true;
}

/* commit - BATCH entries through the leader; the nodes in among (NULL: all running) apply them. */
static void commit(uint64_t *count, const bool among[N3])
{
    int l = leader();
    struct batch b = {0};
    for (int k = 0; k < BATCH; k++) {
        uint8_t *buf = consensus_malloc(64);
        assert_non_null(buf);
        memset(buf, 0xab, 64);
        put64(buf, *count + 1 + (uint64_t)k);
        int rc = consensus_propose(nodes[l].c, buf, 64, prop_cb, &b);
        if (rc != 0)
            fail_msg("consensus_propose: %s", hamr_strerror(rc));
    }
    assert_true(run_until(pred_batch, &b));
    assert_int_equal(b.ok, BATCH);
    *count += BATCH;
    struct applied_goal g = {.count = *count};
    for (int i = 0; i < N3; i++)
        g.among[i] = among == NULL ? nodes[i].c != NULL : among[i];
    assert_true(run_until(pred_applied, &g));
    for (int i = 0; i < N3; i++)
        if (g.among[i]) {
            assert_int_equal(nodes[i].toy.count, *count);
            assert_true(nodes[i].toy.in_order);
        }
}

static struct consensus_port_stats stats_of(int i)
{
    struct consensus_info info;
    consensus_get_info(nodes[i].c, &info);
    return info.port;
}

struct stat_goal {
    int node;
    size_t field; /* offsetof in struct consensus_port_stats */
    uint64_t at_least;
};

static bool pred_stat(void *arg)
{
    struct stat_goal *g = arg;
    struct consensus_port_stats st = stats_of(g->node);
    uint64_t v;
    memcpy(&v, (const char *)&st + g->field, sizeof(v));
    return v >= g->at_least;
}

/* wait_stat - until node's counter at field reaches at_least. */
static void wait_stat(int node, size_t field, uint64_t at_least)
{
    struct stat_goal g = {node, field, at_least};
    if (!run_until(pred_stat, &g))
        fail_msg("node %d: counter at %zu stayed below %llu", node + 1, field,
                 (unsigned long long)at_least);
}

#define STAT(f) offsetof(struct consensus_port_stats, f)

/* ------------------------------------------------------------------------ */
/* A raw client: OpenSSL (or nothing) over a non-blocking socket.            */

struct rclient {
    int fd;
    SSL *ssl;  /* NULL: plain TCP */
    int state; /* 0 handshaking, 1 up, -1 failed */
};

/* rclient_open - connect to the loopback port; with ctx, TLS on top (not yet handshaken). */
static void rclient_open(struct rclient *rc, int port, SSL_CTX *ctx)
{
    memset(rc, 0, sizeof(*rc));
    rc->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(rc->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(rc->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(fcntl(rc->fd, F_SETFL, fcntl(rc->fd, F_GETFL) | O_NONBLOCK), 0);
    if (ctx == NULL) {
        rc->state = 1;
        return;
    }
    rc->ssl = SSL_new(ctx);
    assert_non_null(rc->ssl);
    SSL_set_fd(rc->ssl, rc->fd);
    SSL_set_connect_state(rc->ssl);
}

static bool pred_client_handshake(void *arg)
{
    struct rclient *rc = arg;
    if (rc->state != 0)
        return true;
    int r = SSL_do_handshake(rc->ssl);
    if (r == 1) {
        rc->state = 1;
        return true;
    }
    int e = SSL_get_error(rc->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return false;
    ERR_clear_error();
    rc->state = -1;
    return true;
}

/* rclient_handshake - drive the TLS handshake; the client's own verdict (1 up, -1 failed). */
static int rclient_handshake(struct rclient *rc)
{
    assert_true(run_until(pred_client_handshake, rc));
    return rc->state;
}

/* rclient_send - len bytes (small: the socket takes them at once); false if refused already. */
static bool rclient_send(struct rclient *rc, const uint8_t *buf, size_t len)
{
    if (rc->ssl == NULL)
        return send(rc->fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len;
    size_t done = 0;
    bool ok = SSL_write_ex(rc->ssl, buf, len, &done) == 1 && done == len;
    ERR_clear_error();
    return ok;
}

/* pred_client_dropped - the node closed the connection (EOF, reset or a TLS alert). */
static bool pred_client_dropped(void *arg)
{
    struct rclient *rc = arg;
    uint8_t c;
    if (rc->ssl == NULL) {
        ssize_t n = recv(rc->fd, &c, 1, MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    }
    size_t got = 0;
    int r = SSL_read_ex(rc->ssl, &c, 1, &got);
    if (r == 1)
        return false; /* the node sends nothing on the raft port; ignore */
    int e = SSL_get_error(rc->ssl, r);
    ERR_clear_error();
    return e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
}

static void rclient_close(struct rclient *rc)
{
    SSL_free(rc->ssl);
    close(rc->fd);
    ERR_clear_error();
    memset(rc, 0, sizeof(*rc));
}

/* raft_handshake - libraft's: protocol 1, id, a 16-byte address. 40 bytes. */
static size_t raft_handshake(uint8_t *p, uint64_t id)
{
    memset(p, 0, 40);
    put64(p, 1);
    put64(p + 8, id);
    put64(p + 16, 16);
    memcpy(p + 24, "127.0.0.1:1", 12);
    return 40;
}

/*
 * malformed_append - the 95-byte packet of test_consensus: a handshake
 * claiming id, then an AppendEntries preamble and a 39-byte header cut
 * inside an entry count of n.
 */
static size_t malformed_append(uint8_t *p, uint64_t id, uint64_t n)
{
    size_t len = raft_handshake(p, id);
    uint8_t *q = p + len;
    put64(q, 1);      /* AppendEntries */
    put64(q + 8, 39); /* header length */
    put64(q + 16, 1); /* term */
    put64(q + 24, 0); /* prev index */
    put64(q + 32, 0); /* prev term */
    put64(q + 40, 0); /* commit */
    put64(q + 48, n); /* entry count: 7 of its 8 bytes are in the header */
    return len + 16 + 39;
}

/*
 * attack - a client on ctx (NULL: plain TCP) at node i sends len bytes and
 * is dropped; the counter at field goes up by one. hs: the client's own
 * verdict on the TLS handshake, for the caller to check (0 without TLS).
 */
static int attack(int i, int port, SSL_CTX *ctx, const uint8_t *buf, size_t len, size_t field)
{
    struct consensus_port_stats before = stats_of(i);
    uint64_t was;
    memcpy(&was, (const char *)&before + field, sizeof(was));
    struct rclient rc;
    rclient_open(&rc, port, ctx);
    int hs = ctx != NULL ? rclient_handshake(&rc) : 0;
    if (len > 0 && (ctx == NULL || hs == 1))
        (void)rclient_send(&rc, buf, len);
    assert_true(run_until(pred_client_dropped, &rc));
    rclient_close(&rc);
    wait_stat(i, field, was + 1);
    struct consensus_port_stats after = stats_of(i);
    memcpy(&was, (const char *)&after + field, sizeof(was));
    /* Nothing else moved: one refusal, counted once; the checker's come after a valid handshake. */
    assert_int_equal(after.accepted, before.accepted + (field == STAT(refused) ? 1 : 0));
    assert_int_equal(
        after.refused + after.timed_out + after.over_cap + after.tls + after.identity,
        before.refused + before.timed_out + before.over_cap + before.tls + before.identity + 1);
    return hs;
}

/* port_of - the port in "127.0.0.1:P" or "[::1]:P". */
static int port_of(const char *address)
{
    return atoi(strrchr(address, ':') + 1);
}

/* ------------------------------------------------------------------------ */

static struct fixture fx;

static struct cluster_tls *load(const struct testlib_pki *pki, const char *name, uint64_t id)
{
    char ca[512], cert[512], key[512], n[96], err[512] = "";
    testlib_pki_path(pki, "ca.pem", ca, sizeof(ca));
    snprintf(n, sizeof(n), "%s.pem", name);
    testlib_pki_path(pki, n, cert, sizeof(cert));
    snprintf(n, sizeof(n), "%s.key", name);
    testlib_pki_path(pki, n, key, sizeof(key));
    struct cluster_tls_files f = {.ca = ca, .cert = cert, .key = key, .node_id = id};
    struct cluster_tls *c = NULL;
    if (cluster_tls_new(&f, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "cluster_tls_new %s: %s\n", name, err);
        return NULL;
    }
    return c;
}

static int group_setup(void **state)
{
    (void)state;
    if (!testlib_pki_init(&fx.pki) || !testlib_pki_init(&fx.other) ||
        !testlib_pki_operator(&fx.pki, "alice") || !testlib_pki_node(&fx.other, 2, 0))
        return -1;
    for (uint64_t id = 1; id <= 4; id++) {
        char name[32];
        if (!testlib_pki_node(&fx.pki, id, 0))
            return -1;
        snprintf(name, sizeof(name), "node-%llu", (unsigned long long)id);
        if ((fx.tls[id] = load(&fx.pki, name, id)) == NULL)
            return -1;
    }
    fx.other2 = load(&fx.other, "node-2", 2);
    fx.alice = load(&fx.pki, "operator-alice", 0);
    return fx.other2 != NULL && fx.alice != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++)
        cluster_tls_free(fx.tls[i]);
    cluster_tls_free(fx.other2);
    cluster_tls_free(fx.alice);
    testlib_pki_cleanup(&fx.pki);
    testlib_pki_cleanup(&fx.other);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    return uv_loop_init(&loop);
}

/* teardown - close what a failed test left, then the loop must close with no handle open. */
static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N3; i++)
        node_close(&nodes[i]);
    uv_run(&loop, UV_RUN_NOWAIT);
    return uv_loop_close(&loop) == 0 ? 0 : -1;
}

static const bool all3[N3] = {true, true, true};

/* cluster_tls3 - three TLS voters, nodes i+1 with their own certificates. */
static void cluster_tls3(bool v6, char addrs[N3][CONSENSUS_ADDR_MAX])
{
    struct cluster_tls *tls[N3] = {fx.tls[1], fx.tls[2], fx.tls[3]};
    memset(addrs, 0, N3 * CONSENSUS_ADDR_MAX);
    cluster_open(v6, tls, all3, addrs);
}

/* assert_clean - every connection of node i so far was accepted; nothing failed either way. */
static void assert_clean(int i)
{
    struct consensus_port_stats st = stats_of(i);
    assert_int_equal(st.refused + st.timed_out + st.over_cap + st.tls + st.identity, 0);
    assert_int_equal(st.out_tls + st.out_identity, 0);
}

/* three voters over TLS: commit, transfer, lose the leader, commit again. */
static void test_tls_three_voters(void **state)
{
    (void)state;
    char addrs[N3][CONSENSUS_ADDR_MAX];
    cluster_tls3(false, addrs);
    uint64_t count = 0;
    commit(&count, NULL);
    int l = leader();
    for (int i = 0; i < N3; i++) {
        assert_clean(i);
        if (i != l)
            assert_true(stats_of(i).accepted >= 1); /* the leader's, through TLS */
    }
    /* The leader goes: the other two elect one over TLS and commit. */
    node_close(&nodes[l]);
    bool rest[N3] = {true, true, true};
    rest[l] = false;
    commit(&count, rest);
    for (int i = 0; i < N3; i++)
        if (i != l)
            assert_clean(i);
}

/* node 2's certificate claiming id 3, and an operator's claiming 2: refused, counted. */
static void test_tls_identity(void **state)
{
    (void)state;
    char addrs[N3][CONSENSUS_ADDR_MAX];
    cluster_tls3(false, addrs);
    uint64_t count = 0;
    commit(&count, NULL);
    int l = leader();
    uint8_t hs[40];
    for (int k = 0; k < 2; k++) {
        int i = k == 0 ? l : (l + 1) % N3;
        /* TLS is fine (the client verifies the node too); the claim is not. */
        raft_handshake(hs, 3);
        assert_int_equal(attack(i, port_of(addrs[i]), cluster_tls_client_ctx(fx.tls[2]), hs,
                                sizeof(hs), STAT(identity)),
                         1);
        /* An operator's certificate names no node: refused at once, before any claim. */
        assert_int_equal(
            attack(i, port_of(addrs[i]), cluster_tls_client_ctx(fx.alice), hs, 0, STAT(identity)),
            1);
        commit(&count, NULL);
    }
    assert_int_equal(leader(), l);
}

/* no certificate, another CA's, plaintext: TLS fails, counted; the cluster commits. */
static void test_tls_untrusted(void **state)
{
    (void)state;
    char addrs[N3][CONSENSUS_ADDR_MAX];
    cluster_tls3(false, addrs);
    uint64_t count = 0;
    commit(&count, NULL);
    int l = leader();
    int p = port_of(addrs[l]);
    uint8_t hs[40];
    raft_handshake(hs, 2);

    /* No certificate (and no check of the server's: only the node can refuse). */
    SSL_CTX *anon = SSL_CTX_new(TLS_client_method());
    assert_non_null(anon);
    SSL_CTX_set_verify(anon, SSL_VERIFY_NONE, NULL);
    attack(l, p, anon, hs, sizeof(hs), STAT(tls));
    SSL_CTX_free(anon);

    /* Node 2's certificate from another CA (its client also refuses our server). */
    attack(l, p, cluster_tls_client_ctx(fx.other2), hs, sizeof(hs), STAT(tls));

    /* libraft's handshake in plaintext on a TLS port. */
    attack(l, p, NULL, hs, sizeof(hs), STAT(tls));
    commit(&count, NULL);
    assert_int_equal(leader(), l);
}

/* the 95-byte packets over TLS with node 2's valid certificate and claim: the checker refuses. */
static void test_tls_malformed(void **state)
{
    (void)state;
    char addrs[N3][CONSENSUS_ADDR_MAX];
    cluster_tls3(false, addrs);
    uint64_t count = 0;
    commit(&count, NULL);
    int l = leader();
    static const uint64_t claims[] = {1, 1000000, 0xFFFFFFFFu};
    for (int k = 0; k < 2; k++) {
        int i = k == 0 ? l : (l + 1) % N3;
        for (size_t a = 0; a < HAMR_ARRAY_LEN(claims); a++) {
            uint8_t pkt[128];
            size_t len = malformed_append(pkt, 2, claims[a]);
            assert_int_equal(len, 95);
            assert_int_equal(attack(i, port_of(addrs[i]), cluster_tls_client_ctx(fx.tls[2]), pkt,
                                    len, STAT(refused)),
                             1);
        }
        commit(&count, NULL);
    }
    assert_int_equal(leader(), l);
    for (int i = 0; i < N3; i++)
        assert_int_equal(stats_of(i).identity + stats_of(i).tls, 0);
}

/* voter 3 runs with node 4's certificate: nobody talks to it, it gets nothing. */
static void test_tls_wrong_server(void **state)
{
    (void)state;
    char addrs[N3][CONSENSUS_ADDR_MAX];
    memset(addrs, 0, sizeof(addrs));
    struct cluster_tls *tls[N3] = {fx.tls[1], fx.tls[2], fx.tls[4]};
    cluster_open(false, tls, all3, addrs);
    const bool two[N3] = {true, true, false};
    uint64_t count = 0;
    commit(&count, two);
    commit(&count, two);
    int l = leader();
    assert_true(l == 0 || l == 1);
    /* The leader's connects to 3 fail on the certificate, and 3's to it on its claim. */
    wait_stat(l, STAT(out_identity), 1);
    wait_stat(l, STAT(identity), 1);
    assert_int_equal(stats_of(l).out_tls, 0);
    assert_int_equal(nodes[2].toy.count, 0);
    assert_false(consensus_is_ready(nodes[2].c));
    struct consensus_info info;
    consensus_get_info(nodes[2].c, &info);
    assert_int_equal(info.commit_index, 1); /* the bootstrap configuration only */
    assert_int_equal(info.port.accepted, 0);
}

/* voter 3 is a socket that accepts and never speaks: the connect fails after the deadline. */
static void test_tls_silent_server(void **state)
{
    (void)state;
    char addrs[N3][CONSENSUS_ADDR_MAX];
    memset(addrs, 0, sizeof(addrs));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t sl = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(addrs[2], CONSENSUS_ADDR_MAX, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    struct cluster_tls *tls[N3] = {fx.tls[1], fx.tls[2], fx.tls[3]};
    const bool two[N3] = {true, true, false};
    cluster_open(false, tls, two, addrs);
    uint64_t count = 0;
    commit(&count, two);
    int l = leader();
    /* 5 s after the first connect (the watchdog allows 15). */
    wait_stat(l, STAT(out_tls), 1);
    assert_int_equal(stats_of(l).out_identity, 0);
    commit(&count, two);
    for (int i = 0; i < 2; i++)
        node_close(&nodes[i]);
    close(fd);
}

/* three voters on [::1]: plain, then TLS. */
static void test_ipv6(void **state)
{
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        char addrs[N3][CONSENSUS_ADDR_MAX];
        memset(addrs, 0, sizeof(addrs));
        struct cluster_tls *plain[N3] = {NULL, NULL, NULL};
        struct cluster_tls *tls[N3] = {fx.tls[1], fx.tls[2], fx.tls[3]};
        cluster_open(true, mode == 0 ? plain : tls, all3, addrs);
        assert_non_null(strstr(addrs[0], "[::1]:"));
        uint64_t count = 0;
        commit(&count, NULL);
        commit(&count, NULL);
        int l = leader();
        struct consensus_info info;
        consensus_get_info(nodes[(l + 1) % N3].c, &info);
        assert_string_equal(info.leader_address, addrs[l]);
        for (int i = 0; i < N3; i++) {
            assert_clean(i);
            if (i != l)
                assert_true(stats_of(i).accepted >= 1);
        }
        for (int i = 0; i < N3; i++)
            node_close(&nodes[i]);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as hamrd does */
    log_set_ident("test=consensus_tls");
    /* HAMR_TEST_FILTER=test_name runs one test (debugging). */
    const char *filter = getenv("HAMR_TEST_FILTER");
    if (filter != NULL)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tls_three_voters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_untrusted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_wrong_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_silent_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
