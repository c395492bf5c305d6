/*
 * test_body_fetch.c - node/body_fetch: two peer servers (nodes 1 and 2)
 * serving bodies from in-memory sources through body_fetch_serve, and a
 * fetcher (node 42) on the same loop fetching from them over loopback, with
 * the cluster PKI and in plaintext.
 *
 * The test bodies are "M00".."M49" of mixed sizes (0 bytes, a byte, chunk
 * edges, 3 MiB, ...), filled from a seed. Each server's source says which
 * of them it has, may serve one with a byte flipped, and may hold its calls
 * for the test to answer. The sink records what it is asked and stores
 * copies; callbacks only record, assertions are made in the test body.
 * Every wait is bounded (testlib_loop), and teardown fails if handles
 * remain; ASan finds what is not freed.
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

#include <openssl/sha.h>
#include <uv.h>

#include "util/err.h"
#include "util/log.h"

#include "net/cluster_tls.h"
#include "node/body_fetch.h"
#include "node/peer.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_pki.h"

#define TEST_GUARD_MS 20000
#define TEST_MAX_TURNS 1000000
#define TEST_BODIES 50
#define TEST_BIG (3u * 1024 * 1024) /* chunked: three full chunks */
#define TEST_SERVERS 2
#define TEST_SELF_ID 42
#define TEST_HELD_MAX 8
#define TEST_ROUNDS_MAX 16 /* round start times kept per body */
#define TEST_BACKOFF_MIN 20
#define TEST_BACKOFF_MAX 100

/* test_body - one body of the test set. */
struct test_body {
    char id[8];
    uint8_t *data;
    size_t len;
    uint8_t sha[BODY_FETCH_SHA256_LEN];
};

/* test_server - a peer server (node index + 1) and its source. */
struct test_server {
    struct fixture *f;
    struct peer_server *srv;
    bool closed;
    char addr[64];
    bool has[TEST_BODIES];
    int flip;        /* index of the body served with a byte flipped, or -1 */
    int fail_read;   /* index of the body whose reads fail (HAMR_EIO), or -1 */
    bool async;      /* reads answer from the thread pool, not inside the call */
    int reading;     /* async reads not yet answered */
    bool hold;       /* keep fetch calls for the test to answer */
    bool serve_none; /* no fetch handler in the peer handler at all */
    struct body_fetch_source src;
    struct peer_call *held[TEST_HELD_MAX];
    Hamr__PeerFetch held_req[TEST_HELD_MAX]; /* copies: the request is the call's */
    char held_id[TEST_HELD_MAX][BODY_FETCH_ID_MAX];
    size_t n_held;
    int served; /* fetch requests answered */
    int served_of[TEST_BODIES];
};

/* test_group - cluster TLS (nodes 1, 2 and 42 of one CA); all NULL: plaintext. */
struct test_group {
    struct testlib_pki pki;
    struct cluster_tls *srv_tls[TEST_SERVERS];
    struct cluster_tls *cli_tls;
};

struct fixture {
    const struct test_group *g;
    uv_loop_t loop;
    struct testlib_loop run;
    uv_timer_t tick; /* wakes the loop: a condition set from a timer callback is seen */
    struct test_server s[TEST_SERVERS];
    struct peer_client *cli;
    bool cli_closed;
    struct body_fetch *bf;

    /* the sink */
    int order[TEST_SERVERS]; /* peers, by index into s */
    size_t n_order;
    char dead_addr[64]; /* when set, the first peer: node 3, where nothing listens */
    bool not_wanted[TEST_BODIES];
    uint8_t *stored[TEST_BODIES];
    size_t stored_len[TEST_BODIES];
    int stored_count[TEST_BODIES];
    int n_stored;
    int store_rv;                 /* what store returns */
    int first_asked[TEST_BODIES]; /* the order of the first `wanted` per body, -1: never */
    uint64_t round_at[TEST_BODIES][TEST_ROUNDS_MAX]; /* loop time of each `wanted` */
    int rounds[TEST_BODIES];
    int n_asked;
    int wanted_calls;
};

static struct test_body test_bodies[TEST_BODIES];

/* The plaintext group runs without a group setup: its tests' state starts NULL. */
static const struct test_group test_plain_group;

/* ------------------------------------------------------------------------ */
/* The bodies, the sources, the sink.                                       */
/* ------------------------------------------------------------------------ */

/* test_body_len - mixed sizes: the edges first, then a spread up to 200 KB. */
static size_t test_body_len(int i)
{
    static const size_t edges[] = {
        0, 1, 100, 4096, BODY_FETCH_CHUNK - 1, BODY_FETCH_CHUNK, BODY_FETCH_CHUNK + 1, TEST_BIG};
    if ((size_t)i < sizeof(edges) / sizeof(edges[0]))
        return edges[i];
    return ((size_t)i * 7919u * 13u) % (200u * 1024u) + 1;
}

/* test_bodies_make - the test set, once per process. */
static void test_bodies_make(void)
{
    for (int i = 0; i < TEST_BODIES; i++) {
        struct test_body *b = &test_bodies[i];
        snprintf(b->id, sizeof(b->id), "M%02d", i);
        b->len = test_body_len(i);
        b->data = malloc(b->len > 0 ? b->len : 1);
        for (size_t k = 0; k < b->len; k++)
            b->data[k] = (uint8_t)(k * 31 + (k >> 11) + (size_t)i * 7);
        SHA256(b->data, b->len, b->sha);
    }
}

/* test_bodies_free - at the end of the process. */
static void test_bodies_free(void)
{
    for (int i = 0; i < TEST_BODIES; i++)
        free(test_bodies[i].data);
}

/* test_index - "Mnn" to nn, or -1. */
static int test_index(const char *id)
{
    int i;
    char tail;
    if (sscanf(id, "M%2d%c", &i, &tail) != 1 || i < 0 || i >= TEST_BODIES)
        return -1;
    return i;
}

/* test_src_lookup - the body if this server has it. */
static int test_src_lookup(void *data, const char *id, uint64_t *len, uint8_t sha[32])
{
    struct test_server *s = data;
    int i = test_index(id);
    if (i < 0 || !s->has[i])
        return HAMR_ENOTFOUND;
    *len = test_bodies[i].len;
    memcpy(sha, test_bodies[i].sha, BODY_FETCH_SHA256_LEN);
    return 0;
}

/* test_src_copy - bytes of the body, or an error; the flipped one has its middle byte changed. */
static ssize_t test_src_copy(struct test_server *s,
                             const char *id,
                             uint64_t off,
                             uint8_t *buf,
                             size_t n)
{
    int i = test_index(id);
    if (i < 0 || !s->has[i])
        return HAMR_ENOTFOUND;
    if (i == s->fail_read)
        return HAMR_EIO;
    const struct test_body *b = &test_bodies[i];
    if (off >= b->len)
        return 0;
    if (n > b->len - off)
        n = (size_t)(b->len - off);
    memcpy(buf, b->data + off, n);
    size_t mid = b->len / 2;
    if (i == s->flip && mid >= off && mid < off + n)
        buf[mid - off] ^= 0x20;
    return (ssize_t)n;
}

/* test_src_read_req - an async read of the test source, in the thread pool as the store's are. */
struct test_src_read_req {
    uv_work_t req;
    struct test_server *s;
    char id[BODY_FETCH_ID_MAX];
    uint64_t off;
    uint8_t *buf;
    size_t n;
    ssize_t got;
    body_fetch_read_cb done;
    void *arg;
};

static void test_src_read_work(uv_work_t *req)
{
    struct test_src_read_req *q = req->data;
    q->got = test_src_copy(q->s, q->id, q->off, q->buf, q->n);
}

static void test_src_read_after(uv_work_t *req, int status)
{
    struct test_src_read_req *q = req->data;
    assert_int_equal(status, 0);
    q->s->reading--;
    int i = test_index(q->id);
    if (q->got > 0)
        q->s->served_of[i]++;
    q->done(q->arg, q->got);
    free(q);
}

/* test_src_read - the chunk at once, or (async) from the thread pool. */
static void test_src_read(void *data,
                          const char *id,
                          uint64_t off,
                          uint8_t *buf,
                          size_t n,
                          body_fetch_read_cb done,
                          void *arg)
{
    struct test_server *s = data;
    if (!s->async) {
        ssize_t got = test_src_copy(s, id, off, buf, n);
        if (got > 0)
            s->served_of[test_index(id)]++;
        done(arg, got);
        return;
    }
    struct test_src_read_req *q = calloc(1, sizeof(*q));
    assert_non_null(q);
    q->req.data = q;
    q->s = s;
    snprintf(q->id, sizeof(q->id), "%s", id);
    q->off = off;
    q->buf = buf;
    q->n = n;
    q->done = done;
    q->arg = arg;
    s->reading++;
    assert_int_equal(uv_queue_work(&s->f->loop, &q->req, test_src_read_work, test_src_read_after),
                     0);
}

/* test_fetch - the peer handler's fetch: serve now, or hold the call. */
static void test_fetch(void *data, struct peer_call *call, const Hamr__PeerFetch *req)
{
    struct test_server *s = data;
    if (s->hold && s->n_held < TEST_HELD_MAX) {
        size_t k = s->n_held++;
        s->held[k] = call;
        snprintf(s->held_id[k], sizeof(s->held_id[k]), "%s", req->queue_id ? req->queue_id : "");
        s->held_req[k] = *req;
        s->held_req[k].queue_id = s->held_id[k];
        return;
    }
    s->served++;
    body_fetch_serve(&s->src, call, req);
}

/* test_request - propose and query are not this test's business. */
static void test_request(void *data, struct peer_call *call, const Hamr__PeerMsg *msg)
{
    (void)data;
    (void)msg;
    Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
    res.status = HAMR_EPROTO;
    peer_reply(call, &res);
}

/* test_release - answer the calls a server held. */
static void test_release(struct test_server *s)
{
    for (size_t k = 0; k < s->n_held; k++) {
        s->served++;
        body_fetch_serve(&s->src, s->held[k], &s->held_req[k]);
    }
    s->n_held = 0;
}

/* test_sink_peers - the servers in the fixture's order. */
static size_t test_sink_peers(void *data, struct body_fetch_peer *out, size_t max)
{
    struct fixture *f = data;
    size_t n = 0;
    if (f->dead_addr[0] != '\0' && n < max) {
        out[n].node_id = 3;
        snprintf(out[n].addr, sizeof(out[n].addr), "%s", f->dead_addr);
        n++;
    }
    for (size_t k = 0; k < f->n_order && n < max; k++, n++) {
        out[n].node_id = (uint64_t)f->order[k] + 1;
        snprintf(out[n].addr, sizeof(out[n].addr), "%s", f->s[f->order[k]].addr);
    }
    return n;
}

/* test_sink_wanted - every body of the set unless marked not wanted or stored. */
static bool test_sink_wanted(void *data, const char *id, uint64_t *len, uint8_t sha[32])
{
    struct fixture *f = data;
    int i = test_index(id);
    f->wanted_calls++;
    if (i < 0)
        return false;
    if (f->first_asked[i] < 0)
        f->first_asked[i] = f->n_asked++;
    if (f->rounds[i] < TEST_ROUNDS_MAX)
        f->round_at[i][f->rounds[i]] = uv_now(&f->loop);
    f->rounds[i]++;
    if (f->not_wanted[i] || f->stored[i] != NULL)
        return false;
    *len = test_bodies[i].len;
    memcpy(sha, test_bodies[i].sha, BODY_FETCH_SHA256_LEN);
    return true;
}

/* test_sink_store - keep a copy (or fail as told). */
static int test_sink_store(void *data, const char *id, const uint8_t *body, size_t len)
{
    struct fixture *f = data;
    int i = test_index(id);
    if (i < 0)
        return HAMR_EINVAL;
    if (f->store_rv != 0)
        return f->store_rv;
    f->stored_count[i]++;
    if (f->stored[i] == NULL) {
        f->stored[i] = malloc(len > 0 ? len : 1);
        memcpy(f->stored[i], body, len);
        f->stored_len[i] = len;
        f->n_stored++;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Fixture.                                                                 */
/* ------------------------------------------------------------------------ */

/*
 * test_tick_cb - nothing: UV_RUN_ONCE runs the timers before it polls, so a
 * condition the fetcher's timer made true would otherwise be seen only when
 * the next event came (the guard).
 */
static void test_tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* test_wait - run the loop until cond holds, bounded (the guard is armed per wait). */
#define test_wait(f, cond) TESTLIB_LOOP_WAIT(&(f)->run, cond)

/* test_server_start - server k on 127.0.0.1, any port, with every body. */
static int test_server_start(struct fixture *f, int k)
{
    struct test_server *s = &f->s[k];
    s->f = f;
    s->flip = -1;
    s->fail_read = -1;
    for (int i = 0; i < TEST_BODIES; i++)
        s->has[i] = true;
    s->src =
        (struct body_fetch_source){.data = s, .lookup = test_src_lookup, .read = test_src_read};
    struct peer_handler h = {.data = s, .request = test_request, .fetch = test_fetch};
    if (s->serve_none)
        h.fetch = NULL;
    char err[256];
    int rv =
        peer_server_new(&f->loop, "127.0.0.1", 0, f->g->srv_tls[k], &h, &s->srv, err, sizeof(err));
    if (rv != 0) {
        fprintf(stderr, "%s\n", err);
        return rv;
    }
    snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", (unsigned)peer_server_port(s->srv));
    return 0;
}

/* test_fetcher_new - the fetcher under test, its sink the fixture. */
static struct body_fetch *test_fetcher_new(struct fixture *f)
{
    const struct body_fetch_sink sink = {
        .data = f, .peers = test_sink_peers, .wanted = test_sink_wanted, .store = test_sink_store};
    struct body_fetch *bf = body_fetch_new(&f->loop, f->cli, &sink);
    if (bf != NULL)
        body_fetch_set_timing(bf, 5000, TEST_BACKOFF_MIN, TEST_BACKOFF_MAX); /* ms, not s */
    return bf;
}

/* setup - a fresh loop, two servers with every body, a client, a fetcher asking 1 then 2. */
static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (f == NULL || uv_loop_init(&f->loop) != 0)
        return -1;
    f->g = *state != NULL ? *state : &test_plain_group;
    log_set_level(getenv("TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);
    testlib_loop_init(&f->run, &f->loop, TEST_GUARD_MS, TEST_MAX_TURNS);
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, test_tick_cb, 5, 5);
    for (int k = 0; k < TEST_SERVERS; k++) {
        if (test_server_start(f, k) != 0)
            return -1;
        f->order[k] = k;
    }
    f->n_order = TEST_SERVERS;
    for (int i = 0; i < TEST_BODIES; i++)
        f->first_asked[i] = -1;
    f->cli = peer_client_new(&f->loop, TEST_SELF_ID, "hamr-test", f->g->cli_tls);
    if (f->cli == NULL)
        return -1;
    f->bf = test_fetcher_new(f);
    if (f->bf == NULL)
        return -1;
    *state = f;
    return 0;
}

/* teardown - close the fetcher, the client, the servers; fail if handles remain. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    body_fetch_close(f->bf);
    for (int k = 0; k < TEST_SERVERS; k++)
        test_release(&f->s[k]);
    if (!f->cli_closed)
        peer_client_close(f->cli, testlib_flag_cb, &f->cli_closed);
    for (int i = 0; i < TEST_MAX_TURNS && !f->cli_closed; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    for (int k = 0; k < TEST_SERVERS; k++) {
        struct test_server *s = &f->s[k];
        if (s->srv == NULL)
            continue;
        peer_server_close(s->srv, testlib_flag_cb, &s->closed);
        for (int i = 0; i < TEST_MAX_TURNS && !s->closed; i++)
            uv_run(&f->loop, UV_RUN_ONCE);
    }
    testlib_loop_close(&f->run);
    uv_close((uv_handle_t *)&f->tick, NULL);
    int rv = testlib_loop_finish(&f->loop);
    for (int i = 0; i < TEST_BODIES; i++)
        free(f->stored[i]);
    bool ok = rv == 0 && f->cli_closed;
    free(f);
    return ok ? 0 : -1;
}

/* test_stats - the fetcher's counters. */
static struct body_fetch_stats test_stats(const struct fixture *f)
{
    struct body_fetch_stats st;
    body_fetch_get_stats(f->bf, &st);
    return st;
}

/* test_want - want body i as the test set has it. */
static int test_want(struct fixture *f, int i)
{
    return body_fetch_want(f->bf, test_bodies[i].id, test_bodies[i].len, test_bodies[i].sha);
}

/* test_assert_stored - body i was stored once, with its own bytes. */
static void test_assert_stored(const struct fixture *f, int i)
{
    assert_int_equal(f->stored_count[i], 1);
    assert_int_equal(f->stored_len[i], test_bodies[i].len);
    assert_memory_equal(f->stored[i], test_bodies[i].data, test_bodies[i].len);
}

/* ------------------------------------------------------------------------ */
/* Tests.                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * test_fetch_many - 50 bodies, 0 bytes to 3 MiB (in chunks), each stored
 * once with its bytes, begun in the order wanted; want is idempotent.
 */
static void test_fetch_many(void **state)
{
    struct fixture *f = *state;
    uint64_t bytes = 0;
    for (int i = 0; i < TEST_BODIES; i++) {
        assert_int_equal(test_want(f, i), 0);
        bytes += test_bodies[i].len;
    }
    assert_int_equal(test_want(f, 7), 0); /* again: nothing changes */
    assert_int_equal(body_fetch_pending(f->bf), TEST_BODIES);
    assert_int_equal(f->wanted_calls, 0); /* nothing runs inside body_fetch_want */

    test_wait(f, f->n_stored == TEST_BODIES);
    test_wait(f, body_fetch_pending(f->bf) == 0);
    for (int i = 0; i < TEST_BODIES; i++) {
        test_assert_stored(f, i);
        assert_int_equal(f->first_asked[i], i);
    }
    struct body_fetch_stats st = test_stats(f);
    assert_int_equal(st.fetched, TEST_BODIES);
    assert_int_equal(st.fetched_bytes, bytes);
    assert_int_equal(st.failed_attempts, 0);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(st.unavailable, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(f->s[1].served, 0); /* the first peer had everything */
    /* 3 MiB came in three full chunks and an empty end is never asked for. */
    assert_int_equal(f->s[0].served_of[7], 3);
    assert_int_equal(body_fetch_error(f->bf), 0);
}

/* test_want_invalid - ids and lengths a body cannot have. */
static void test_want_invalid(void **state)
{
    struct fixture *f = *state;
    uint8_t sha[BODY_FETCH_SHA256_LEN] = {0};
    char long_id[BODY_FETCH_ID_MAX + 1];
    memset(long_id, 'x', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    assert_int_equal(body_fetch_want(f->bf, "", 1, sha), HAMR_EINVAL);
    assert_int_equal(body_fetch_want(f->bf, long_id, 1, sha), HAMR_EINVAL);
    long_id[BODY_FETCH_ID_MAX - 1] = '\0'; /* the longest id that fits */
    assert_int_equal(body_fetch_want(f->bf, long_id, 1, sha), 0);
    assert_int_equal(body_fetch_want(f->bf, "M01", BODY_FETCH_LEN_MAX + 1, sha), HAMR_EINVAL);
    assert_int_equal(body_fetch_pending(f->bf), 1);
    /* The id is none of the sink's: dropped at its first round. */
    test_wait(f, body_fetch_pending(f->bf) == 0);
    assert_int_equal(test_stats(f).dropped, 1);
}

/*
 * test_corrupt_first_peer - node 1 serves the 3 MiB body and a small one
 * with a byte flipped: each is counted corrupt once and fetched from node 2.
 */
static void test_corrupt_first_peer(void **state)
{
    struct fixture *f = *state;
    f->s[0].flip = 7;
    assert_int_equal(test_want(f, 7), 0);
    assert_int_equal(test_want(f, 20), 0);
    test_wait(f, f->n_stored == 2);
    test_assert_stored(f, 7);
    test_assert_stored(f, 20);
    struct body_fetch_stats st = test_stats(f);
    assert_int_equal(st.corrupt, 1);
    assert_int_equal(st.failed_attempts, 1);
    assert_int_equal(st.fetched, 2);
    assert_int_equal(f->s[1].served_of[7], 3); /* all of it from node 2 */
    assert_int_equal(f->s[1].served_of[20], 0);
}

/*
 * test_peer_without_fetch - node 1 serves no bodies at all (its peer
 * handler has no fetch): it answers HAMR_ENOTFOUND and node 2 is asked.
 */
static void test_peer_without_fetch(void **state)
{
    struct fixture *f = *state;
    struct test_server *s = &f->s[0];
    peer_server_close(s->srv, testlib_flag_cb, &s->closed);
    test_wait(f, s->closed);
    s->srv = NULL;
    s->closed = false;
    s->serve_none = true;
    assert_int_equal(test_server_start(f, 0), 0);
    assert_int_equal(test_want(f, 3), 0);
    test_wait(f, f->n_stored == 1);
    test_assert_stored(f, 3);
    assert_int_equal(test_stats(f).failed_attempts, 1);
    assert_int_equal(test_stats(f).corrupt, 0);
    assert_int_equal(f->s[1].served, 1);
}

/*
 * test_unavailable_then_retry - a body no peer has: counted unavailable,
 * still pending, tried again after a backoff that grows (no spinning);
 * fetched once a peer has it.
 */
static void test_unavailable_then_retry(void **state)
{
    struct fixture *f = *state;
    for (int k = 0; k < TEST_SERVERS; k++)
        f->s[k].has[12] = false;
    uv_update_time(&f->loop);
    uint64_t t0 = uv_now(&f->loop);
    assert_int_equal(test_want(f, 12), 0);
    assert_int_equal(test_want(f, 13), 0); /* fetched meanwhile */
    test_wait(f, test_stats(f).unavailable >= 1 && f->n_stored == 1);
    assert_int_equal(body_fetch_pending(f->bf), 1);
    assert_null(f->stored[12]);
    test_assert_stored(f, 13);
    /* Rounds two and three come after 20 and 40 ms, not at once. */
    test_wait(f, test_stats(f).unavailable >= 3);
    uv_update_time(&f->loop);
    assert_true(uv_now(&f->loop) - t0 >= 60);
    struct body_fetch_stats st = test_stats(f);
    assert_int_equal(st.failed_attempts, 2 * st.unavailable); /* both peers, each round */
    assert_int_equal(body_fetch_pending(f->bf), 1);

    f->s[1].has[12] = true;
    test_wait(f, f->stored[12] != NULL);
    test_assert_stored(f, 12);
    assert_int_equal(body_fetch_pending(f->bf), 0);
    assert_int_equal(test_stats(f).fetched, 2);
}

/*
 * test_backoff_spacing - three bodies no peer has, wanted at different
 * times, so their retries interleave in the later list: each body's rounds
 * are at least its backoff apart (20, 40, 80, then 100 ms: the timer never
 * spins), and all three come once a peer has them.
 */
static void test_backoff_spacing(void **state)
{
    struct fixture *f = *state;
    const int ids[] = {15, 16, 17};
    for (int k = 0; k < TEST_SERVERS; k++)
        for (int j = 0; j < 3; j++)
            f->s[k].has[ids[j]] = false;
    assert_int_equal(test_want(f, 15), 0);
    test_wait(f, f->rounds[15] >= 3);
    assert_int_equal(test_want(f, 16), 0);
    test_wait(f, f->rounds[16] >= 2);
    assert_int_equal(test_want(f, 17), 0);
    test_wait(f, f->rounds[15] >= 7 && f->rounds[16] >= 6 && f->rounds[17] >= 5);
    for (int j = 0; j < 3; j++) {
        int i = ids[j];
        int n = f->rounds[i] < TEST_ROUNDS_MAX ? f->rounds[i] : TEST_ROUNDS_MAX;
        uint64_t backoff = TEST_BACKOFF_MIN;
        for (int r = 1; r < n; r++) {
            uint64_t gap = f->round_at[i][r] - f->round_at[i][r - 1];
            if (gap < backoff)
                fail_msg("M%02d: round %d came %llu ms after the last, backoff %llu", i, r,
                         (unsigned long long)gap, (unsigned long long)backoff);
            backoff = backoff * 2 > TEST_BACKOFF_MAX ? TEST_BACKOFF_MAX : backoff * 2;
        }
    }
    assert_int_equal(body_fetch_pending(f->bf), 3);
    for (int j = 0; j < 3; j++)
        f->s[1].has[ids[j]] = true;
    test_wait(f, f->n_stored == 3);
    for (int j = 0; j < 3; j++)
        test_assert_stored(f, ids[j]);
    assert_int_equal(body_fetch_pending(f->bf), 0);
}

/*
 * test_unreachable_asked_last - the first peer of the sink's order has
 * nothing listening: it fails the first round(s) (both slots may ask it
 * before its first failure comes back), then is asked after node 1 only,
 * so ten bodies cost no more than two failed calls.
 */
static void test_unreachable_asked_last(void **state)
{
    struct fixture *f = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd); /* bound once, so free now, and nobody listens there */
    snprintf(f->dead_addr, sizeof(f->dead_addr), "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    for (int i = 20; i < 30; i++)
        assert_int_equal(test_want(f, i), 0);
    test_wait(f, f->n_stored == 10);
    for (int i = 20; i < 30; i++)
        test_assert_stored(f, i);
    struct body_fetch_stats st = test_stats(f);
    assert_true(st.failed_attempts >= 1 && st.failed_attempts <= BODY_FETCH_PARALLEL);
    assert_int_equal(st.unavailable, 0);
}

/* test_no_peers - nobody to ask: unavailable, retried, and never dropped while wanted. */
static void test_no_peers(void **state)
{
    struct fixture *f = *state;
    f->n_order = 0;
    assert_int_equal(test_want(f, 2), 0);
    test_wait(f, test_stats(f).unavailable >= 2);
    assert_int_equal(body_fetch_pending(f->bf), 1);
    f->n_order = 1;
    test_wait(f, f->stored[2] != NULL);
    test_assert_stored(f, 2);
}

/*
 * test_not_wanted - a body the sink no longer wants is dropped at its
 * round, before and after it was unavailable; the others are fetched.
 */
static void test_not_wanted(void **state)
{
    struct fixture *f = *state;
    f->not_wanted[4] = true;
    for (int k = 0; k < TEST_SERVERS; k++)
        f->s[k].has[9] = false;
    assert_int_equal(test_want(f, 4), 0);
    assert_int_equal(test_want(f, 9), 0);
    assert_int_equal(test_want(f, 10), 0);
    test_wait(f, test_stats(f).unavailable >= 1 && f->n_stored == 1);
    assert_null(f->stored[4]);
    test_assert_stored(f, 10);
    assert_int_equal(body_fetch_pending(f->bf), 1);
    f->not_wanted[9] = true;
    test_wait(f, body_fetch_pending(f->bf) == 0);
    assert_null(f->stored[9]);
    assert_int_equal(test_stats(f).dropped, 2);
    assert_int_equal(f->s[0].served_of[4], 0);
}

/* test_store_fails - the sink cannot store: the fetcher stops, the body stays wanted. */
static void test_store_fails(void **state)
{
    struct fixture *f = *state;
    f->store_rv = HAMR_ENOSPACE;
    assert_int_equal(test_want(f, 1), 0);
    assert_int_equal(test_want(f, 2), 0);
    test_wait(f, body_fetch_error(f->bf) != 0);
    assert_int_equal(body_fetch_error(f->bf), HAMR_ENOSPACE);
    assert_int_equal(body_fetch_pending(f->bf), 2);
    assert_int_equal(test_stats(f).fetched, 0);
}

/*
 * test_close_in_flight - node 1 holds the calls: the fetcher closes with two
 * in flight; the answers that come later find it gone. Then the same with
 * the peer client closed under the calls (HAMR_ESHUTDOWN). ASan checks
 * that everything was freed.
 */
static void test_close_in_flight(void **state)
{
    struct fixture *f = *state;
    f->s[0].hold = true;
    for (int i = 0; i < 5; i++)
        assert_int_equal(test_want(f, i + 5), 0);
    test_wait(f, f->s[0].n_held == BODY_FETCH_PARALLEL);
    assert_int_equal(peer_client_pending(f->cli), BODY_FETCH_PARALLEL);
    body_fetch_close(f->bf);
    body_fetch_close(f->bf); /* idempotent */
    f->bf = NULL;
    for (int i = 0; i < 10; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT); /* the fetcher is freed */
    f->s[0].hold = false;
    test_release(&f->s[0]);
    test_wait(f, peer_client_pending(f->cli) == 0);
    assert_int_equal(f->n_stored, 0);

    /* A new fetcher; this time the client goes first, under the calls. */
    f->bf = test_fetcher_new(f);
    assert_non_null(f->bf);
    f->s[0].hold = true;
    assert_int_equal(test_want(f, 20), 0);
    assert_int_equal(test_want(f, 21), 0);
    test_wait(f, f->s[0].n_held == BODY_FETCH_PARALLEL);
    f->n_order = 0; /* the retries must not call the client once it is freed */
    peer_client_close(f->cli, testlib_flag_cb, &f->cli_closed);
    /* Every call failed (from inside the close): both bodies are still wanted. */
    assert_int_equal(test_stats(f).unavailable, 2);
    test_wait(f, f->cli_closed);
    assert_int_equal(body_fetch_pending(f->bf), 2);
    body_fetch_close(f->bf);
    f->bf = NULL;
    /* teardown answers the held calls: their connection has gone. */
}

/*
 * test_serve - body_fetch_serve's answers, asked directly through the peer
 * client: a chunk capped at BODY_FETCH_CHUNK, the end of a body, an offset
 * past it, a body not here, and a request the policy refuses.
 */
struct test_answer {
    int count;
    int status;
    int rstatus;
    size_t len;
    uint64_t total;
    bool sha_ok;
    uint8_t first;
};

static void test_answer_cb(void *arg, int status, const Hamr__PeerResult *res)
{
    struct test_answer *a = arg;
    a->count++;
    a->status = status;
    if (res == NULL)
        return;
    a->rstatus = res->status;
    a->len = res->data.len;
    a->total = res->total_len;
    a->first = res->data.len > 0 ? res->data.data[0] : 0;
    a->sha_ok = res->body_sha256.len == BODY_FETCH_SHA256_LEN &&
                memcmp(res->body_sha256.data, test_bodies[7].sha, BODY_FETCH_SHA256_LEN) == 0;
}

/*
 * test_serve_with - the server's answers, the source reading at once or
 * from the thread pool (as the body store does): the same either way.
 */
static void test_serve_with(struct fixture *f, bool async)
{
    const struct {
        const char *label;
        const char *id;
        uint64_t offset;
        uint32_t max;
        int want_status;
        size_t want_len;
    } cases[] = {
        {"capped at the chunk", "M07", 0, UINT32_MAX, 0, BODY_FETCH_CHUNK},
        {"the last bytes", "M07", TEST_BIG - 10, 100, 0, 10},
        {"the end", "M07", TEST_BIG, 100, 0, 0},
        {"small max", "M07", 5, 3, 0, 3},
        {"past the end", "M07", TEST_BIG + 1, 100, HAMR_EINVAL, 0},
        {"not here", "M99", 0, 100, HAMR_ENOTFOUND, 0},
        {"max 0 (refused)", "M07", 0, 0, HAMR_EPERM, 0},
        {"no id (refused)", "", 0, 100, HAMR_EPERM, 0},
        {"read fails", "M03", 0, 100, HAMR_EIO, 0},
    };
    f->s[0].async = async;
    f->s[0].fail_read = 3;
    struct test_answer ans[sizeof(cases) / sizeof(cases[0])];
    memset(ans, 0, sizeof(ans));
    size_t n = sizeof(cases) / sizeof(cases[0]);
    for (size_t i = 0; i < n; i++) {
        Hamr__PeerFetch q = HAMR__PEER_FETCH__INIT;
        q.queue_id = (char *)cases[i].id;
        q.offset = cases[i].offset;
        q.max = cases[i].max;
        Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
        m.body_case = HAMR__PEER_MSG__BODY_FETCH;
        m.fetch = &q;
        assert_int_equal(
            peer_client_call(f->cli, 1, f->s[0].addr, &m, 5000, test_answer_cb, &ans[i]), 0);
    }
    test_wait(f, peer_client_pending(f->cli) == 0);
    assert_int_equal(f->s[0].reading, 0);
    for (size_t i = 0; i < n; i++) {
        if (ans[i].count != 1 || ans[i].status != 0 || ans[i].rstatus != cases[i].want_status ||
            ans[i].len != cases[i].want_len)
            fail_msg("%s (%s): count %d status %d answer %d len %zu", cases[i].label,
                     async ? "async" : "at once", ans[i].count, ans[i].status, ans[i].rstatus,
                     ans[i].len);
        if (cases[i].want_status == 0 && (ans[i].total != TEST_BIG || !ans[i].sha_ok))
            fail_msg("%s: total %llu sha_ok %d", cases[i].label, (unsigned long long)ans[i].total,
                     ans[i].sha_ok);
    }
    assert_int_equal(ans[3].first, test_bodies[7].data[5]);
    assert_int_equal(ans[1].first, test_bodies[7].data[TEST_BIG - 10]);
}

static void test_serve(void **state)
{
    test_serve_with(*state, false);
}

static void test_serve_async(void **state)
{
    test_serve_with(*state, true);
}

/* test_fetch_many_async - whole bodies fetched from servers that read in the thread pool. */
static void test_fetch_many_async(void **state)
{
    struct fixture *f = *state;
    for (int k = 0; k < TEST_SERVERS; k++)
        f->s[k].async = true;
    test_fetch_many(state);
}

/* ------------------------------------------------------------------------ */
/* Groups.                                                                  */
/* ------------------------------------------------------------------------ */

/* test_load - the cluster contexts of node-ID in pki. */
static struct cluster_tls *test_load(const struct testlib_pki *pki, uint64_t id)
{
    char ca[512], cert[512], key[512], name[64];
    testlib_pki_path(pki, "ca.pem", ca, sizeof(ca));
    snprintf(name, sizeof(name), "node-%llu.pem", (unsigned long long)id);
    testlib_pki_path(pki, name, cert, sizeof(cert));
    snprintf(name, sizeof(name), "node-%llu.key", (unsigned long long)id);
    testlib_pki_path(pki, name, key, sizeof(key));
    return testlib_pki_load(ca, cert, key);
}

static struct test_group test_tls_group;

static int group_setup_tls(void **state)
{
    struct test_group *g = &test_tls_group;
    if (!testlib_pki_init(&g->pki) || !testlib_pki_node(&g->pki, 1, 0) ||
        !testlib_pki_node(&g->pki, 2, 0) || !testlib_pki_node(&g->pki, TEST_SELF_ID, 0))
        return -1;
    for (int k = 0; k < TEST_SERVERS; k++)
        if ((g->srv_tls[k] = test_load(&g->pki, (uint64_t)k + 1)) == NULL)
            return -1;
    g->cli_tls = test_load(&g->pki, TEST_SELF_ID);
    if (g->cli_tls == NULL)
        return -1;
    *state = g;
    return 0;
}

static int group_teardown_tls(void **state)
{
    struct test_group *g = *state;
    for (int k = 0; k < TEST_SERVERS; k++)
        cluster_tls_free(g->srv_tls[k]);
    cluster_tls_free(g->cli_tls);
    testlib_pki_cleanup(&g->pki);
    return 0;
}

/* TEST_CASE - a test with the fixture's setup and teardown. */
#define TEST_CASE(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_bodies_make();
    const struct CMUnitTest tests[] = {
        TEST_CASE(test_fetch_many),
        TEST_CASE(test_want_invalid),
        TEST_CASE(test_corrupt_first_peer),
        TEST_CASE(test_peer_without_fetch),
        TEST_CASE(test_unavailable_then_retry),
        TEST_CASE(test_backoff_spacing),
        TEST_CASE(test_unreachable_asked_last),
        TEST_CASE(test_no_peers),
        TEST_CASE(test_not_wanted),
        TEST_CASE(test_store_fails),
        TEST_CASE(test_close_in_flight),
        TEST_CASE(test_serve),
        TEST_CASE(test_serve_async),
        TEST_CASE(test_fetch_many_async),
    };
    int failed = cmocka_run_group_tests_name("plaintext", tests, NULL, NULL);
    failed +=
        cmocka_run_group_tests_name("cluster TLS", tests, group_setup_tls, group_teardown_tls);
    test_bodies_free();
    return failed;
}
