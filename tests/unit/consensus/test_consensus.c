/*
 * test_consensus.c - consensus/ on real raft 0.15: libuv loop, disk under /tmp,
 * TCP on 127.0.0.1.
 *
 * The state machine is a toy: it counts entries, sums their sequence numbers
 * and checks they arrive in order; its snapshot is those numbers. Every wait
 * runs the loop with UV_RUN_ONCE until a condition holds, bounded by an
 * iteration count and a watchdog of WATCHDOG_MS of loop time; a wait that
 * times out fails the test. Ports come from binding port 0 first.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"

#include "consensus/consensus.h"

#define WATCHDOG_MS 10000
#define MAX_ITERATIONS 200000
#define MAX_PROPS 128
#define TOY_SNAPSHOT_LEN 32

/* ------------------------------------------------------------------------ */
/* The toy state machine.                                                    */

struct toy {
    uint64_t count; /* entries applied */
    uint64_t sum;   /* sum of their sequence numbers */
    uint64_t bytes;
    uint64_t in_order; /* 1 while every sequence number was count + 1 */
    int n_snapshot;
    int n_restore;
};

/* toy_get64 / toy_put64 - little-endian 64-bit fields. */
static uint64_t toy_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void toy_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* toy_apply - entry = 8-byte sequence number + filler; result = new count. */
static int toy_apply(void *data, const uint8_t *buf, size_t len, void **result)
{
    struct toy *t = data;
    if (len < 8)
        return 0; /* a bad command is a no-op */
    uint64_t seq = toy_get64(buf);
    if (seq != t->count + 1)
        t->in_order = 0;
    t->count++;
    t->sum += seq;
    t->bytes += len;
    *result = (void *)(uintptr_t)t->count;
    return 0;
}

/* toy_snapshot - count, sum, bytes, in_order. */
static int toy_snapshot(void *data, uint8_t **buf, size_t *len)
{
    struct toy *t = data;
    uint8_t *p = consensus_malloc(TOY_SNAPSHOT_LEN);
    if (p == NULL)
        return HAMR_ENOMEM;
    toy_put64(p, t->count);
    toy_put64(p + 8, t->sum);
    toy_put64(p + 16, t->bytes);
    toy_put64(p + 24, t->in_order);
    *buf = p;
    *len = TOY_SNAPSHOT_LEN;
    t->n_snapshot++;
    return 0;
}

/* toy_restore - replace the whole state. */
static int toy_restore(void *data, const uint8_t *buf, size_t len)
{
    struct toy *t = data;
    if (len != TOY_SNAPSHOT_LEN)
        return HAMR_ECORRUPT;
    t->count = toy_get64(buf);
    t->sum = toy_get64(buf + 8);
    t->bytes = toy_get64(buf + 16);
    t->in_order = toy_get64(buf + 24);
    t->n_restore++;
    return 0;
}

/*
 * The same snapshot taken off the loop (consensus_fsm.snapshot_view): the
 * view is a copy of the toy made on the loop, packed in the thread pool.
 */
struct toy_view {
    struct toy copy;
    uint8_t *buf; /* what toy_snapshot_write made: the view's */
    struct toy *owner;
    pthread_t writer; /* the thread that packed it */
    bool written;
};

static pthread_t toy_loop_thread;
static int toy_views, toy_releases, toy_off_loop;

static int toy_snapshot_view(void *data, void **view)
{
    struct toy *t = data;
    struct toy_view *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return HAMR_ENOMEM;
    v->copy = *t;
    v->owner = t;
    t->n_snapshot++;
    toy_views++;
    *view = v;
    return 0;
}

static int toy_snapshot_write(void *view, uint8_t **buf, size_t *len)
{
    struct toy_view *v = view;
    v->writer = pthread_self();
    v->written = true;
    int rv = toy_snapshot(&v->copy, buf, len);
    v->buf = rv == 0 ? *buf : NULL;
    return rv;
}

static void toy_snapshot_release(void *view)
{
    struct toy_view *v = view;
    toy_releases++;
    if (v->written && !pthread_equal(v->writer, toy_loop_thread))
        toy_off_loop++;
    consensus_free(v->buf);
    free(v);
}

/* ------------------------------------------------------------------------ */
/* Nodes, proposals and the bounded loop.                                   */

struct tnode {
    struct consensus *c;
    struct toy toy;
    struct consensus_config cfg;
    int n_leader_true;
    int n_leader_false;
    bool leader;
    bool closed;
    bool outsider; /* not (yet) a member: replication checks skip it */
    bool async;    /* snapshots through snapshot_view (off the loop) */
};

struct tracker;

struct prop {
    struct tracker *t;
    int idx;
    int calls;
    int status;
    uintptr_t result;
};

struct tracker {
    struct prop p[MAX_PROPS];
    int fired;
    bool order_ok;
    struct consensus *reenter; /* if set: propose from the callback, expect ESHUTDOWN */
    int reenter_rc;
};

static uv_loop_t loop;

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

/* free_port - a TCP port on 127.0.0.1 that was free a moment ago. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t sl = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* rm_cb / rm_rf - remove a temporary tree. */
static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* make_tmpdir - a fresh directory under /tmp. */
static void make_tmpdir(char *out, size_t len)
{
    snprintf(out, len, "/tmp/hamr-consensus-XXXXXX");
    assert_non_null(mkdtemp(out));
}

static void on_leader(void *arg, bool leader)
{
    struct tnode *n = arg;
    if (leader)
        n->n_leader_true++;
    else
        n->n_leader_false++;
    n->leader = leader;
}

static void on_closed(void *arg)
{
    struct tnode *n = arg;
    n->closed = true;
    n->c = NULL;
}

/* tnode_config - fill n->cfg for a node on 127.0.0.1:port in dir. */
static void tnode_config(struct tnode *n,
                         uint64_t id,
                         int port,
                         const char *dir,
                         const struct consensus_member *voters,
                         size_t n_voters)
{
    memset(n, 0, sizeof(*n));
    n->toy.in_order = 1;
    n->cfg.id = id;
    snprintf(n->cfg.address, sizeof(n->cfg.address), "127.0.0.1:%d", port);
    snprintf(n->cfg.dir, sizeof(n->cfg.dir), "%s", dir);
    n->cfg.voters = voters;
    n->cfg.n_voters = n_voters;
    n->cfg.election_timeout_ms = 300;
    n->cfg.heartbeat_ms = 50;
    n->cfg.snapshot_bytes = 64 * 1024 * 1024;
    n->cfg.snapshot_trailing = 128;
    n->cfg.segment_size = 1024 * 1024;
    n->cfg.on_leader = on_leader;
    n->cfg.on_leader_arg = n;
}

/* tnode_open - consensus_new + consensus_start with a fresh toy state machine. */
static void tnode_open(struct tnode *n)
{
    struct consensus_fsm fsm = {
        .data = &n->toy, .apply = toy_apply, .snapshot = toy_snapshot, .restore = toy_restore};
    if (n->async) {
        fsm.snapshot = NULL;
        fsm.snapshot_view = toy_snapshot_view;
        fsm.snapshot_write = toy_snapshot_write;
        fsm.snapshot_release = toy_snapshot_release;
    }
    memset(&n->toy, 0, sizeof(n->toy));
    n->toy.in_order = 1;
    n->n_leader_true = 0;
    n->n_leader_false = 0;
    n->leader = false;
    n->closed = false;
    char err[256] = "";
    int rc = consensus_new(&loop, &n->cfg, &fsm, &n->c, err, sizeof(err));
    if (rc != 0)
        fail_msg("consensus_new: %s: %s", hamr_strerror(rc), err);
    rc = consensus_start(n->c, err, sizeof(err));
    if (rc != 0)
        fail_msg("consensus_start: %s: %s", hamr_strerror(rc), err);
}

static bool pred_closed(void *arg)
{
    return ((struct tnode *)arg)->closed;
}

/* tnode_close - consensus_close and wait for its callback. */
static void tnode_close(struct tnode *n)
{
    if (n->c == NULL)
        return;
    consensus_close(n->c, on_closed, n);
    assert_true(run_until(pred_closed, n));
}

static bool pred_ready(void *arg)
{
    struct tnode *n = arg;
    return n->c != NULL && consensus_is_ready(n->c) && n->leader;
}

/* tracker_init - no proposal called back yet. */
static void tracker_init(struct tracker *t)
{
    memset(t, 0, sizeof(*t));
    t->order_ok = true;
}

static void prop_cb(void *arg, int status, void *result)
{
    struct prop *p = arg;
    struct tracker *t = p->t;
    p->calls++;
    p->status = status;
    p->result = (uintptr_t)result;
    if (p->idx != t->fired)
        t->order_ok = false;
    t->fired++;
    if (t->reenter != NULL) {
        uint8_t *buf = consensus_malloc(16);
        assert_non_null(buf);
        t->reenter_rc = consensus_propose(t->reenter, buf, 16, prop_cb, p);
        if (t->reenter_rc != 0)
            consensus_free(buf);
    }
}

/* make_entry - a raft-allocated entry carrying seq, len bytes long. */
static uint8_t *make_entry(uint64_t seq, size_t len)
{
    uint8_t *buf = consensus_malloc(len);
    assert_non_null(buf);
    memset(buf, (int)(seq & 0xff), len);
    toy_put64(buf, seq);
    return buf;
}

/* propose_n - n entries with sequence numbers first_seq.., tracked from t->p[first_idx]. */
static void propose_n(struct consensus *c,
                      struct tracker *t,
                      int first_idx,
                      uint64_t first_seq,
                      int n,
                      size_t len)
{
    for (int i = 0; i < n; i++) {
        struct prop *p = &t->p[first_idx + i];
        p->t = t;
        p->idx = first_idx + i;
        uint8_t *buf = make_entry(first_seq + (uint64_t)i, len);
        int rc = consensus_propose(c, buf, len, prop_cb, p);
        if (rc != 0)
            fail_msg("consensus_propose %d: %s", i, hamr_strerror(rc));
    }
}

struct fired_goal {
    struct tracker *t;
    int n;
};

static bool pred_fired(void *arg)
{
    struct fired_goal *g = arg;
    return g->t->fired >= g->n;
}

/* wait_fired - until n callbacks ran. */
static void wait_fired(struct tracker *t, int n)
{
    struct fired_goal g = {t, n};
    assert_true(run_until(pred_fired, &g));
    assert_int_equal(t->fired, n);
}

/* assert_all_ok - callbacks [from, to) ran once each with status 0, in order. */
static void assert_all_ok(struct tracker *t, int from, int to, uint64_t first_count)
{
    for (int i = from; i < to; i++) {
        assert_int_equal(t->p[i].calls, 1);
        assert_int_equal(t->p[i].status, 0);
        assert_int_equal(t->p[i].result, first_count + (uint64_t)(i - from));
    }
    assert_true(t->order_ok);
}

/* assert_toy - count entries with sequence numbers 1..count applied in order. */
static void assert_toy(const struct toy *t, uint64_t count)
{
    assert_int_equal(t->count, count);
    assert_int_equal(t->sum, count * (count + 1) / 2);
    assert_int_equal(t->in_order, 1);
}

static int setup(void **state)
{
    (void)state;
    return uv_loop_init(&loop);
}

/* teardown - the loop must close with no handle left open. */
static int teardown(void **state)
{
    (void)state;
    uv_run(&loop, UV_RUN_NOWAIT);
    return uv_loop_close(&loop) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* 1 and 2: one voter; propose, info, restart recovery.                     */

/* single_voter_propose - ready once, 100 entries applied in order with the FSM's results. */
static void single_voter_propose(struct tnode *n)
{
    assert_true(run_until(pred_ready, n));
    assert_int_equal(n->n_leader_true, 1);
    assert_int_equal(n->n_leader_false, 0);

    /* libraft can only read back entries whose length is a multiple of 8. */
    uint8_t *odd = consensus_malloc(13);
    assert_non_null(odd);
    assert_int_equal(consensus_propose(n->c, odd, 13, prop_cb, NULL), HAMR_EINVAL);
    consensus_free(odd);

    static struct tracker t;
    tracker_init(&t);
    propose_n(n->c, &t, 0, 1, 100, 64);
    assert_int_equal(t.fired, 0); /* never inside consensus_propose */
    wait_fired(&t, 100);
    assert_all_ok(&t, 0, 100, 1);
    assert_toy(&n->toy, 100);
    assert_int_equal(n->toy.bytes, 100 * 64);
}

static void test_single_voter(void **state)
{
    (void)state;
    char tmp[64];
    make_tmpdir(tmp, sizeof(tmp));
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/nested/raft", tmp); /* created by consensus_new */

    int port = free_port();
    struct consensus_member voters[1] = {{.id = 1}};
    snprintf(voters[0].address, sizeof(voters[0].address), "127.0.0.1:%d", port);
    static struct tnode n;
    tnode_config(&n, 1, port, dir, voters, 1);
    tnode_open(&n);
    single_voter_propose(&n);

    struct consensus_info info;
    consensus_get_info(n.c, &info);
    assert_int_equal(info.state, CONSENSUS_LEADER);
    assert_true(info.ready);
    assert_false(info.failed);
    assert_true(info.term >= 1);
    assert_int_equal(info.term, consensus_term(n.c));
    /* bootstrap configuration + election barrier + 100 entries */
    assert_true(info.last_index >= 102);
    assert_int_equal(info.commit_index, info.last_index);
    assert_int_equal(info.applied_index, info.last_index);
    assert_int_equal(info.leader_id, 1);
    assert_string_equal(info.leader_address, voters[0].address);
    assert_int_equal(info.n_members, 1);
    assert_int_equal(info.members[0].id, 1);
    assert_string_equal(info.members[0].address, voters[0].address);
    assert_int_equal(info.roles[0], CONSENSUS_ROLE_VOTER);

    tnode_close(&n);
    assert_int_equal(n.n_leader_false, 1); /* closing gives up leadership */
    rm_rf(tmp);
}

static void test_restart_recovery(void **state)
{
    (void)state;
    char dir[64];
    make_tmpdir(dir, sizeof(dir));
    int port = free_port();
    struct consensus_member voters[1] = {{.id = 1}};
    snprintf(voters[0].address, sizeof(voters[0].address), "127.0.0.1:%d", port);
    static struct tnode n;
    tnode_config(&n, 1, port, dir, voters, 1);
    tnode_open(&n);
    single_voter_propose(&n);
    tnode_close(&n);

    /* Same directory, fresh state machine: rebuilt from the log. */
    tnode_open(&n);
    assert_true(run_until(pred_ready, &n));
    assert_int_equal(n.n_leader_true, 1);
    assert_toy(&n.toy, 100);
    assert_int_equal(n.toy.n_restore, 0); /* no snapshot was taken */

    static struct tracker t;
    tracker_init(&t);
    propose_n(n.c, &t, 0, 101, 1, 64);
    wait_fired(&t, 1);
    assert_all_ok(&t, 0, 1, 101);
    assert_toy(&n.toy, 101);
    tnode_close(&n);
    rm_rf(dir);
}

/* ------------------------------------------------------------------------ */
/* 3: snapshots triggered by applied bytes, restored on restart.            */

/* pred_snapshot_on_disk - a finished snapshot (its .meta file) exists in the dir. */
static bool pred_snapshot_on_disk(void *arg)
{
    const char *dir = arg;
    DIR *d = opendir(dir);
    if (d == NULL)
        return false;
    bool found = false;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "snapshot-", 9) == 0 && len > 5 &&
            strcmp(e->d_name + len - 5, ".meta") == 0)
            found = true;
    }
    closedir(d);
    return found;
}

/*
 * snapshot_case - one voter with a 4 KiB byte trigger takes 40 entries of
 * 1 KiB: several snapshots, not one per entry, one on disk, restored on
 * restart. async: the version-3 FSM (snapshot_view), whose every view is
 * released once and packed off the loop thread; the restart reads the same
 * format with the version-2 FSM.
 */
static void snapshot_case(bool async)
{
    char dir[64];
    make_tmpdir(dir, sizeof(dir));
    int port = free_port();
    struct consensus_member voters[1] = {{.id = 1}};
    snprintf(voters[0].address, sizeof(voters[0].address), "127.0.0.1:%d", port);
    static struct tnode n;
    tnode_config(&n, 1, port, dir, voters, 1);
    n.cfg.snapshot_bytes = 4096;
    n.cfg.snapshot_trailing = 2;
    n.async = async;
    toy_loop_thread = pthread_self();
    toy_views = toy_releases = toy_off_loop = 0;
    tnode_open(&n);
    assert_true(run_until(pred_ready, &n));

    /* Entries of 1 KiB, proposed one at a time so apply batches stay small. */
    static struct tracker t;
    tracker_init(&t);
    for (int i = 0; i < 40; i++) {
        propose_n(n.c, &t, i, (uint64_t)i + 1, 1, 1024);
        wait_fired(&t, i + 1);
    }
    assert_all_ok(&t, 0, 40, 1);
    assert_toy(&n.toy, 40);
    /* 40 KiB applied with a 4 KiB trigger: several snapshots, not one per entry. */
    assert_true(n.toy.n_snapshot >= 3);
    assert_true(n.toy.n_snapshot <= 10);
    assert_true(run_until(pred_snapshot_on_disk, dir));
    tnode_close(&n);
    if (async) {
        assert_int_equal(toy_views, n.toy.n_snapshot);
        assert_int_equal(toy_releases, toy_views);
        assert_int_equal(toy_off_loop, toy_views);
    } else {
        assert_int_equal(toy_views, 0);
    }

    n.async = false;
    tnode_open(&n);
    assert_true(run_until(pred_ready, &n));
    assert_int_equal(n.toy.n_restore, 1);
    assert_toy(&n.toy, 40);
    assert_int_equal(n.toy.bytes, 40 * 1024);
    tnode_close(&n);
    rm_rf(dir);
}

static void test_snapshot_by_bytes(void **state)
{
    (void)state;
    snapshot_case(false);
}

/* 3b: the same with the snapshot packed in the thread pool (version 3, RAFT.md 2.2). */
static void test_snapshot_off_loop(void **state)
{
    (void)state;
    snapshot_case(true);
}

/* ------------------------------------------------------------------------ */
/* 4: proposals refused synchronously when not ready; the buffer stays ours. */

static void never_cb(void *arg, int status, void *result)
{
    (void)status;
    (void)result;
    (*(int *)arg)++;
}

static void never_transfer_cb(void *arg, int status, uint64_t leader)
{
    (void)status;
    (void)leader;
    (*(int *)arg)++;
}

/* propose_refused - consensus_propose gives want and leaves the buffer alone. */
static void propose_refused(struct consensus *c, int want, int *calls)
{
    uint8_t *buf = consensus_malloc(32);
    assert_non_null(buf);
    memset(buf, 0xA5, 32);
    assert_int_equal(consensus_propose(c, buf, 32, never_cb, calls), want);
    for (int i = 0; i < 32; i++)
        assert_int_equal(buf[i], 0xA5);
    consensus_free(buf); /* still ours: ASan reports a double free otherwise */
}

static void test_propose_not_ready(void **state)
{
    (void)state;
    char dir[64];
    make_tmpdir(dir, sizeof(dir));
    int port = free_port();
    struct consensus_member voters[1] = {{.id = 1}};
    snprintf(voters[0].address, sizeof(voters[0].address), "127.0.0.1:%d", port);
    static struct tnode n;
    tnode_config(&n, 1, port, dir, voters, 1);
    struct consensus_fsm fsm = {
        .data = &n.toy, .apply = toy_apply, .snapshot = toy_snapshot, .restore = toy_restore};
    char err[256];
    assert_int_equal(consensus_new(&loop, &n.cfg, &fsm, &n.c, err, sizeof(err)), 0);

    int calls = 0;
    /* Before start. */
    propose_refused(n.c, HAMR_ENOTLEADER, &calls);
    assert_int_equal(consensus_transfer(n.c, 0, never_transfer_cb, &calls), HAMR_ENOTLEADER);
    /* After start: a lone voter is raft leader at once, but the barrier has not applied. */
    assert_int_equal(consensus_start(n.c, err, sizeof(err)), 0);
    propose_refused(n.c, HAMR_ENOTLEADER, &calls);
    assert_false(consensus_is_ready(n.c));

    assert_true(run_until(pred_ready, &n));
    /* Empty entries are refused too, and the buffer stays the caller's. */
    uint8_t *buf = consensus_malloc(1);
    assert_int_equal(consensus_propose(n.c, buf, 0, never_cb, &calls), HAMR_EINVAL);
    consensus_free(buf);
    tnode_close(&n);
    assert_int_equal(calls, 0);
    rm_rf(dir);
}

/* ------------------------------------------------------------------------ */
/* 5: three voters in one process: replication, transfer, leader loss.      */

#define N3 3

static struct tnode nodes[N3];

static bool pred_one_ready(void *arg)
{
    (void)arg;
    for (int i = 0; i < N3; i++)
        if (pred_ready(&nodes[i]))
            return true;
    return false;
}

/* ready_node - index of the one ready node (asserts there is exactly one). */
static int ready_node(void)
{
    int found = -1;
    for (int i = 0; i < N3; i++) {
        if (pred_ready(&nodes[i])) {
            assert_int_equal(found, -1);
            found = i;
        }
    }
    assert_true(found >= 0);
    return found;
}

struct count_goal {
    uint64_t count;
};

static bool pred_all_applied(void *arg)
{
    struct count_goal *g = arg;
    for (int i = 0; i < N3; i++)
        if (nodes[i].c != NULL && !nodes[i].outsider && nodes[i].toy.count < g->count)
            return false;
    return true;
}

struct xfer_result {
    int calls;
    int status;
    uint64_t leader;
};

static void xfer_cb(void *arg, int status, uint64_t leader)
{
    struct xfer_result *r = arg;
    r->calls++;
    r->status = status;
    r->leader = leader;
}

static bool pred_xfer_done(void *arg)
{
    return ((struct xfer_result *)arg)->calls > 0;
}

/* cluster_propose - n more entries on node i; all live nodes apply them. */
static void cluster_propose(int i, uint64_t *count, struct tracker *t)
{
    tracker_init(t);
    propose_n(nodes[i].c, t, 0, *count + 1, 10, 200);
    wait_fired(t, 10);
    assert_all_ok(t, 0, 10, *count + 1);
    *count += 10;
    struct count_goal g = {*count};
    assert_true(run_until(pred_all_applied, &g));
    for (int k = 0; k < N3; k++)
        if (nodes[k].c != NULL && !nodes[k].outsider)
            assert_toy(&nodes[k].toy, *count);
}

/* cluster_transfer - transfer from node i to target (0: any); returns the new leader index. */
static int cluster_transfer(int i, uint64_t target)
{
    struct xfer_result r = {0};
    int calls = 0;
    assert_int_equal(consensus_transfer(nodes[i].c, target, xfer_cb, &r), 0);
    assert_int_equal(consensus_transfer(nodes[i].c, target, xfer_cb, &r), HAMR_EBUSY);
    /* No proposals while the transfer runs. */
    assert_false(consensus_is_ready(nodes[i].c));
    propose_refused(nodes[i].c, HAMR_ENOTLEADER, &calls);
    assert_true(run_until(pred_xfer_done, &r));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    if (target != 0)
        assert_int_equal(r.leader, target);
    assert_int_not_equal(r.leader, nodes[i].cfg.id);
    int j = (int)r.leader - 1;
    assert_true(j >= 0 && j < N3);
    assert_true(run_until(pred_ready, &nodes[j]));
    assert_false(consensus_is_ready(nodes[i].c));
    assert_false(nodes[i].leader);
    assert_int_equal(calls, 0);
    return j;
}

/*
 * cluster_open3_with - three voters on fresh directories and ports, each
 * configured by tnode_config and then by adjust (NULL: none) before it
 * opens; returns the leader's index.
 */
static int cluster_open3_with(char dirs[N3][64], int ports[N3], void (*adjust)(int i))
{
    static struct consensus_member voters[N3]; /* the nodes' configurations point here */
    for (int i = 0; i < N3; i++) {
        make_tmpdir(dirs[i], sizeof(dirs[i]));
        ports[i] = free_port();
        voters[i].id = (uint64_t)i + 1;
        snprintf(voters[i].address, sizeof(voters[i].address), "127.0.0.1:%d", ports[i]);
    }
    for (int i = 0; i < N3; i++) {
        tnode_config(&nodes[i], (uint64_t)i + 1, ports[i], dirs[i], voters, N3);
        if (adjust != NULL)
            adjust(i);
        tnode_open(&nodes[i]);
    }
    assert_true(run_until(pred_one_ready, NULL));
    return ready_node();
}

/* cluster_open3 - three voters on fresh directories and ports; returns the leader's index. */
static int cluster_open3(char dirs[N3][64], int ports[N3])
{
    return cluster_open3_with(dirs, ports, NULL);
}

static void test_three_voters(void **state)
{
    (void)state;
    char dirs[N3][64];
    int ports[N3];
    int leader = cluster_open3(dirs, ports);
    assert_int_equal(nodes[leader].n_leader_true, 1);

    static struct tracker t;
    uint64_t count = 0;
    cluster_propose(leader, &count, &t);

    /* Followers refuse and know who leads. */
    int calls = 0;
    for (int i = 0; i < N3; i++) {
        if (i == leader)
            continue;
        propose_refused(nodes[i].c, HAMR_ENOTLEADER, &calls);
        struct consensus_info info;
        consensus_get_info(nodes[i].c, &info);
        assert_int_equal(info.state, CONSENSUS_FOLLOWER);
        assert_false(info.ready);
        assert_int_equal(info.leader_id, nodes[leader].cfg.id);
        assert_int_equal(info.n_members, N3);
        /* The leader's connection came through the checked hop, refused by nothing. */
        assert_true(info.port.accepted >= 1);
        assert_int_equal(info.port.refused + info.port.timed_out + info.port.over_cap, 0);
    }
    assert_int_equal(calls, 0);

    /* Transfer to self or to a non-member is refused synchronously. */
    struct xfer_result bad = {0};
    assert_int_equal(consensus_transfer(nodes[leader].c, nodes[leader].cfg.id, xfer_cb, &bad),
                     HAMR_EINVAL);
    assert_int_equal(consensus_transfer(nodes[leader].c, 42, xfer_cb, &bad), HAMR_EINVAL);
    assert_int_equal(consensus_transfer(nodes[(leader + 1) % N3].c, 0, xfer_cb, &bad),
                     HAMR_ENOTLEADER);
    assert_true(consensus_is_ready(nodes[leader].c));

    /* Transfer to a chosen follower: on_leader flips on both sides. */
    int target = (leader + 1) % N3;
    int old = leader;
    leader = cluster_transfer(old, nodes[target].cfg.id);
    assert_int_equal(leader, target);
    assert_int_equal(nodes[old].n_leader_true, 1);
    assert_int_equal(nodes[old].n_leader_false, 1);
    assert_int_equal(nodes[leader].n_leader_true, 1);
    cluster_propose(leader, &count, &t);

    /* Transfer to any voter. */
    leader = cluster_transfer(leader, 0);
    cluster_propose(leader, &count, &t);

    /* Lose the leader: the other two elect a new one that takes proposals. */
    tnode_close(&nodes[leader]);
    assert_true(run_until(pred_one_ready, NULL));
    int next = ready_node();
    assert_int_not_equal(next, leader);
    cluster_propose(next, &count, &t);

    /* Transfer to the voter that is down: retried, then given up; we lead on. */
    struct xfer_result r = {0};
    int lost_before = nodes[next].n_leader_false;
    uv_update_time(&loop);
    uint64_t started = uv_now(&loop);
    assert_int_equal(consensus_transfer(nodes[next].c, nodes[leader].cfg.id, xfer_cb, &r), 0);
    assert_true(run_until(pred_xfer_done, &r));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, HAMR_ETIMEDOUT);
    assert_int_equal(r.leader, nodes[next].cfg.id);
    assert_true(consensus_is_ready(nodes[next].c));
    assert_int_equal(nodes[next].n_leader_false, lost_before);
    /* Each of the 1 + 3 attempts waits one election timeout (300 ms) for raft's callback. */
    assert_true(uv_now(&loop) - started >= 4 * 300);
    cluster_propose(next, &count, &t);

    for (int i = 0; i < N3; i++) {
        tnode_close(&nodes[i]);
        rm_rf(dirs[i]);
    }
    assert_int_equal(bad.calls, 0);
}

/* ------------------------------------------------------------------------ */
/* Node 0 snapshots every few KiB and keeps 2 entries behind; the others
 * never snapshot here (64 MiB): their logs start at 1. */
static void restart_below_adjust(int i)
{
    if (i == 0) {
        nodes[i].cfg.snapshot_bytes = 4096;
        nodes[i].cfg.snapshot_trailing = 2;
    }
}

/* 5a: a follower restarted with a snapshot, whose log no longer holds entry
 * 1, and a new leader whose log still starts at 1 (docs/correctness.md bug 2,
 * consensus_guard.h). The leader's sends to it failed while it was down, so
 * its next index for it is 1, and it sends it entries 1..N with
 * prev_log_index 0: libraft 0.15 alone would turn the follower unavailable
 * ("No log entries found at index 1"). */

static bool pred_time_passed(void *arg)
{
    return uv_now(&loop) >= *(const uint64_t *)arg;
}

static void test_restart_below_snapshot(void **state)
{
    (void)state;
    char dirs[N3][64];
    int ports[N3];
    const int v = 0; /* restart_below_adjust's node */
    int leader = cluster_open3_with(dirs, ports, restart_below_adjust);

    static struct tracker t;
    uint64_t count = 0;
    /* 20,000 bytes of entries: several snapshots. Each rolls the open
     * segment and removes closed ones before its index less the trailing
     * entries, so from the second one on, entry 1 is on disk no more. */
    for (int k = 0; k < 10; k++)
        cluster_propose(leader, &count, &t);
    assert_true(nodes[v].toy.n_snapshot >= 2);
    assert_true(run_until(pred_snapshot_on_disk, dirs[v]));

    /* Node 0 goes down; a new term's leader, one without a snapshot. */
    tnode_close(&nodes[v]);
    if (leader == v) {
        assert_true(run_until(pred_one_ready, NULL));
        leader = ready_node();
    } else {
        int other = 3 - v - leader;
        leader = cluster_transfer(leader, nodes[other].cfg.id);
    }
    cluster_propose(leader, &count, &t);
    /* Heartbeats to it queue while it is away; past 3 queued, raft_uv fails the
     * oldest (RAFT_NOCONNECTION), and the leader sets its next index for it to
     * match + 1 = 1. One second is 20 heartbeats. */
    uv_update_time(&loop);
    uint64_t until = uv_now(&loop) + 1000;
    assert_true(run_until(pred_time_passed, &until));

    /* Back, from its snapshot: it catches up and stays a follower. */
    tnode_open(&nodes[v]);
    cluster_propose(leader, &count, &t);
    struct consensus_info info;
    consensus_get_info(nodes[v].c, &info);
    assert_false(info.failed);
    assert_int_equal(info.state, CONSENSUS_FOLLOWER);
    assert_true(nodes[v].toy.n_restore >= 1);
    assert_true(info.append_rebased >= 1);
    assert_int_equal(info.append_dropped, 0);
    cluster_propose(leader, &count, &t);

    for (int i = 0; i < N3; i++) {
        tnode_close(&nodes[i]);
        rm_rf(dirs[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* 5b: a stranger on the raft port (RAFT.md 4.5).                           */

/* attack_put64 - little-endian u64 at p; returns p + 8. */
static uint8_t *attack_put64(uint8_t *p, uint64_t v)
{
    toy_put64(p, v);
    return p + 8;
}

/* attack_handshake - protocol 1, id 99, a 16-byte address; with or without its NUL. */
static size_t attack_handshake(uint8_t *p, bool nul)
{
    uint8_t *q = attack_put64(p, 1);
    q = attack_put64(q, 99);
    q = attack_put64(q, 16);
    memset(q, 'A', 16);
    if (nul)
        memcpy(q, "127.0.0.1:1", 12);
    return 40;
}

/*
 * attack_append - a handshake, then an AppendEntries preamble and header that
 * claim n entries while carrying none: 95 bytes (a 39-byte header cut inside
 * the count) or 104 (a 48-byte header, right for no entries).
 */
static size_t attack_append(uint8_t *p, uint64_t n, bool short_header)
{
    size_t len = attack_handshake(p, true);
    uint64_t h = short_header ? 39 : 48;
    uint8_t *q = attack_put64(p + len, 1);
    q = attack_put64(q, h);
    q = attack_put64(q, 1); /* term */
    q = attack_put64(q, 0); /* prev index */
    q = attack_put64(q, 0); /* prev term */
    q = attack_put64(q, 0); /* commit */
    q = attack_put64(q, n);
    q = attack_put64(q, 0); /* unused */
    return len + 16 + (size_t)h;
}

/* attack_send - connect to port, send len bytes; the socket is non-blocking after. */
static int attack_send(int port, const uint8_t *buf, size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    if (len > 0)
        assert_int_equal(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
    return fd;
}

/* pred_dropped - the node closed the connection (EOF or reset). */
static bool pred_dropped(void *arg)
{
    int fd = *(int *)arg;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* More silent connections than the raft port takes (CONSENSUS_TCP_MAX_CONNS, 64). */
#define SILENT_CONNS 70

struct refused_goal {
    struct consensus *c;
    uint64_t refused;
};

static bool pred_refused(void *arg)
{
    struct refused_goal *g = arg;
    struct consensus_info info;
    consensus_get_info(g->c, &info);
    return info.port.refused >= g->refused;
}

static void test_port_malformed(void **state)
{
    (void)state;
    char dirs[N3][64];
    int ports[N3];
    int leader = cluster_open3(dirs, ports);
    static struct tracker t;
    uint64_t count = 0;
    cluster_propose(leader, &count, &t);

    /* Every packet at the leader and at a follower; each is dropped, counted, survived. */
    static const uint64_t claims[] = {1, 1000000, 0xFFFFFFFFu};
    int targets[2] = {leader, (leader + 1) % N3};
    for (int k = 0; k < 2; k++) {
        int i = targets[k];
        struct consensus_info info;
        consensus_get_info(nodes[i].c, &info);
        struct refused_goal g = {nodes[i].c, info.port.refused};
        for (size_t a = 0; a < 2 * HAMR_ARRAY_LEN(claims) + 1; a++) {
            uint8_t pkt[128];
            size_t len = a < 2 * HAMR_ARRAY_LEN(claims)
                             ? attack_append(pkt, claims[a / 2], a % 2 == 0)
                             : attack_handshake(pkt, false);
            if (a % 2 == 0 && a < 2 * HAMR_ARRAY_LEN(claims))
                assert_int_equal(len, 95);
            int fd = attack_send(ports[i], pkt, len);
            assert_true(run_until(pred_dropped, &fd));
            close(fd);
            g.refused++;
            assert_true(run_until(pred_refused, &g));
        }
        cluster_propose(leader, &count, &t);
    }
    assert_int_equal(ready_node(), leader);

    /*
     * Silent connections: those over the cap (64, the peers' included) are
     * closed at once, the rest once the 5 s handshake deadline passes.
     */
    struct consensus_info before;
    consensus_get_info(nodes[leader].c, &before);
    int silent[SILENT_CONNS];
    for (int k = 0; k < SILENT_CONNS; k++)
        silent[k] = attack_send(ports[leader], (const uint8_t *)"", 0);
    for (int k = 0; k < SILENT_CONNS; k++) {
        assert_true(run_until(pred_dropped, &silent[k]));
        close(silent[k]);
    }
    struct consensus_info after;
    consensus_get_info(nodes[leader].c, &after);
    uint64_t over_cap = after.port.over_cap - before.port.over_cap;
    uint64_t timed_out = after.port.timed_out - before.port.timed_out;
    assert_true(over_cap >= SILENT_CONNS - 64);
    assert_int_equal(over_cap + timed_out, SILENT_CONNS);
    assert_int_equal(after.port.refused, before.port.refused);
    cluster_propose(ready_node(), &count, &t);

    for (int i = 0; i < N3; i++) {
        tnode_close(&nodes[i]);
        rm_rf(dirs[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* 6: close with proposals in flight.                                       */

static void test_close_in_flight(void **state)
{
    (void)state;
    char dir[64];
    make_tmpdir(dir, sizeof(dir));
    int port = free_port();
    struct consensus_member voters[1] = {{.id = 1}};
    snprintf(voters[0].address, sizeof(voters[0].address), "127.0.0.1:%d", port);
    static struct tnode n;
    tnode_config(&n, 1, port, dir, voters, 1);
    tnode_open(&n);
    assert_true(run_until(pred_ready, &n));

    static struct tracker t;
    tracker_init(&t);
    propose_n(n.c, &t, 0, 1, 50, 128);
    t.reenter = n.c; /* callbacks propose again: must be refused while closing */
    t.reenter_rc = 1;
    tnode_close(&n);
    assert_int_equal(t.fired, 50);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(t.p[i].calls, 1);
        int s = t.p[i].status;
        assert_true(s == 0 || s == HAMR_ELEADERSHIPLOST || s == HAMR_ESHUTDOWN);
    }
    assert_true(t.order_ok);
    assert_int_equal(t.reenter_rc, HAMR_ESHUTDOWN);
    assert_int_equal(n.n_leader_false, 1);
    rm_rf(dir);
}

/* A leader whose followers are gone: entries are stored but cannot commit. */
static void test_close_uncommitted(void **state)
{
    (void)state;
    char dirs[N3][64];
    struct consensus_member voters[N3];
    int ports[N3];
    for (int i = 0; i < N3; i++) {
        make_tmpdir(dirs[i], sizeof(dirs[i]));
        ports[i] = free_port();
        voters[i].id = (uint64_t)i + 1;
        snprintf(voters[i].address, sizeof(voters[i].address), "127.0.0.1:%d", ports[i]);
    }
    for (int i = 0; i < N3; i++) {
        tnode_config(&nodes[i], (uint64_t)i + 1, ports[i], dirs[i], voters, N3);
        /* A long election timeout, so the lonely leader keeps leading for a while. */
        nodes[i].cfg.election_timeout_ms = 2000;
        nodes[i].cfg.heartbeat_ms = 50;
        tnode_open(&nodes[i]);
    }
    assert_true(run_until(pred_one_ready, NULL));
    int leader = ready_node();
    for (int i = 0; i < N3; i++)
        if (i != leader)
            tnode_close(&nodes[i]);

    static struct tracker t;
    tracker_init(&t);
    propose_n(nodes[leader].c, &t, 0, 1, 20, 104);
    tnode_close(&nodes[leader]);
    assert_int_equal(t.fired, 20);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(t.p[i].calls, 1);
        assert_int_equal(t.p[i].status, HAMR_ELEADERSHIPLOST);
        assert_int_equal(t.p[i].result, 0);
    }
    assert_int_equal(nodes[leader].toy.count, 0);
    assert_int_equal(nodes[leader].n_leader_true, 1);
    assert_int_equal(nodes[leader].n_leader_false, 1);
    for (int i = 0; i < N3; i++)
        rm_rf(dirs[i]);
}

/* ------------------------------------------------------------------------ */
/* 7: membership: add, promote, remove; one change at a time.               */

struct change_result {
    int calls;
    int status;
};

static void change_cb(void *arg, int status)
{
    struct change_result *r = arg;
    r->calls++;
    r->status = status;
}

static bool pred_change_done(void *arg)
{
    return ((struct change_result *)arg)->calls > 0;
}

/* change_wait - wait for a change's callback and expect status 0. */
static void change_wait(struct change_result *r)
{
    assert_true(run_until(pred_change_done, r));
    assert_int_equal(r->calls, 1);
    assert_int_equal(r->status, 0);
}

static bool pred_first_two_ready(void *arg)
{
    (void)arg;
    return pred_ready(&nodes[0]) || pred_ready(&nodes[1]);
}

static void test_membership(void **state)
{
    (void)state;
    char dirs[N3][64];
    struct consensus_member voters[2];
    int ports[N3];
    for (int i = 0; i < N3; i++) {
        make_tmpdir(dirs[i], sizeof(dirs[i]));
        ports[i] = free_port();
    }
    for (int i = 0; i < 2; i++) {
        voters[i].id = (uint64_t)i + 1;
        snprintf(voters[i].address, sizeof(voters[i].address), "127.0.0.1:%d", ports[i]);
    }
    for (int i = 0; i < N3; i++) {
        /* Node 3 joins later: it must not bootstrap. */
        tnode_config(&nodes[i], (uint64_t)i + 1, ports[i], dirs[i], voters, i < 2 ? 2 : 0);
        tnode_open(&nodes[i]);
    }
    nodes[2].outsider = true;
    assert_true(run_until(pred_first_two_ready, NULL));
    int leader = pred_ready(&nodes[0]) ? 0 : 1;
    struct consensus *lc = nodes[leader].c;

    static struct tracker t;
    uint64_t count = 0;
    cluster_propose(leader, &count, &t); /* node 3 has nothing yet */
    assert_int_equal(nodes[2].toy.count, 0);

    struct change_result r = {0}, never = {0};
    assert_int_equal(consensus_add(lc, 3, "localhost:1", change_cb, &never), HAMR_EINVAL);
    assert_int_equal(consensus_add(lc, 3, nodes[2].cfg.address, change_cb, &r), 0);
    assert_int_equal(consensus_add(lc, 4, "127.0.0.1:1", change_cb, &never), HAMR_ECANTCHANGE);
    assert_int_equal(consensus_add(nodes[1 - leader].c, 4, "127.0.0.1:1", change_cb, &never),
                     HAMR_ENOTLEADER);
    change_wait(&r);

    memset(&r, 0, sizeof(r));
    assert_int_equal(consensus_assign(lc, 3, CONSENSUS_ROLE_VOTER, change_cb, &r), 0);
    change_wait(&r);
    assert_int_equal(consensus_assign(lc, 3, CONSENSUS_ROLE_VOTER, change_cb, &never), HAMR_EEXIST);
    assert_int_equal(consensus_assign(lc, 3, 7, change_cb, &never), HAMR_EINVAL);

    struct consensus_info info;
    consensus_get_info(lc, &info);
    assert_int_equal(info.n_members, 3);
    for (size_t i = 0; i < info.n_members; i++)
        assert_int_equal(info.roles[i], CONSENSUS_ROLE_VOTER);

    nodes[2].outsider = false;
    cluster_propose(leader, &count, &t); /* now all three, node 3 caught up */

    memset(&r, 0, sizeof(r));
    assert_int_equal(consensus_remove(lc, 3, change_cb, &r), 0);
    change_wait(&r);
    consensus_get_info(lc, &info);
    assert_int_equal(info.n_members, 2);
    assert_int_equal(never.calls, 0);

    for (int i = 0; i < N3; i++) {
        tnode_close(&nodes[i]);
        rm_rf(dirs[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* 8: configuration errors come back synchronously with a sentence.         */

/* Segments: just over the snapshot interval, within 8 MiB..1 GiB, never smaller than an entry. */
static void test_segment_size(void **state)
{
    (void)state;
    const uint64_t mib = 1024 * 1024;
    assert_int_equal(consensus_segment_size(256 * mib, 10 * mib), 288 * mib);
    assert_int_equal(consensus_segment_size(16 * mib, 10 * mib), 18 * mib);
    assert_int_equal(consensus_segment_size(1 * mib, 1 * mib), 8 * mib);
    assert_int_equal(consensus_segment_size(4096 * mib, 10 * mib), 1024 * mib);
    /* Room for the largest entry wins over the snapshot interval... */
    assert_int_equal(consensus_segment_size(16 * mib, 64 * mib), 73 * mib);
    /* ...and over the 1 GiB cap: an entry never spans segments. */
    assert_int_equal(consensus_segment_size(4096 * mib, 1024 * mib), 1153 * mib);
}

static void test_bad_config(void **state)
{
    (void)state;
    char dir[64];
    make_tmpdir(dir, sizeof(dir));
    static const struct {
        const char *label;
        const char *address;
        uint64_t id;
        unsigned election, heartbeat;
        const char *want; /* in errmsg */
    } cases[] = {
        {"hostname", "localhost:9101", 1, 0, 0, "IP literal"},
        {"no port", "127.0.0.1", 1, 0, 0, "IP literal"},
        {"port 0", "127.0.0.1:0", 1, 0, 0, "IP literal"},
        {"port too big", "127.0.0.1:65536", 1, 0, 0, "IP literal"},
        {"port not a number", "127.0.0.1:9x", 1, 0, 0, "IP literal"},
        {"ipv6 without brackets", "::1:9101", 1, 0, 0, "IP literal"},
        {"ipv6 without port", "[::1]", 1, 0, 0, "IP literal"},
        {"ipv6 port 0", "[::1]:0", 1, 0, 0, "IP literal"},
        {"ipv4 in brackets", "[127.0.0.1]:9101", 1, 0, 0, "IP literal"},
        {"ipv6 not a literal", "[::g]:9101", 1, 0, 0, "IP literal"},
        {"ipv6 unclosed", "[::1:9101", 1, 0, 0, "IP literal"},
        {"short quad", "127.1:9101", 1, 0, 0, "IP literal"},
        {"empty", "", 1, 0, 0, "IP literal"},
        {"id 0", "127.0.0.1:9101", 0, 0, 0, "id"},
        {"heartbeat >= election", "127.0.0.1:9101", 1, 100, 100, "heartbeat"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct tnode n;
        tnode_config(&n, cases[i].id, 9101, dir, NULL, 0);
        snprintf(n.cfg.address, sizeof(n.cfg.address), "%s", cases[i].address);
        n.cfg.election_timeout_ms = cases[i].election;
        n.cfg.heartbeat_ms = cases[i].heartbeat;
        struct consensus_fsm fsm = {
            .data = &n.toy, .apply = toy_apply, .snapshot = toy_snapshot, .restore = toy_restore};
        char err[256] = "";
        struct consensus *c = (struct consensus *)&n; /* must be reset to NULL */
        int rc = consensus_new(&loop, &n.cfg, &fsm, &c, err, sizeof(err));
        if (rc != HAMR_EINVAL || c != NULL || strstr(err, cases[i].want) == NULL)
            fail_msg("%s: rc=%d errmsg=\"%s\"", cases[i].label, rc, err);
    }

    /* A valid one, closed without ever starting. */
    static struct tnode n;
    tnode_config(&n, 1, free_port(), dir, NULL, 0);
    struct consensus_fsm fsm = {
        .data = &n.toy, .apply = toy_apply, .snapshot = toy_snapshot, .restore = toy_restore};
    char err[256] = "";
    assert_int_equal(consensus_new(&loop, &n.cfg, &fsm, &n.c, err, sizeof(err)), 0);
    tnode_close(&n);
    assert_int_equal(n.n_leader_false, 0);

    /* The raft port is taken: consensus_start fails with a sentence; close still works. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 1), 0);
    socklen_t sl = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    struct consensus_member voter = {.id = 1};
    tnode_config(&n, 1, ntohs(sa.sin_port), dir, &voter, 1);
    snprintf(voter.address, sizeof(voter.address), "%s", n.cfg.address);
    assert_int_equal(consensus_new(&loop, &n.cfg, &fsm, &n.c, err, sizeof(err)), 0);
    err[0] = '\0';
    int rc = consensus_start(n.c, err, sizeof(err));
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(err, "raft_start"));
    tnode_close(&n);
    close(fd);
    rm_rf(dir);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_ident("test=consensus");
    /* HAMR_TEST_FILTER=test_name runs one test (debugging). */
    const char *filter = getenv("HAMR_TEST_FILTER");
    if (filter != NULL)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_segment_size),
        cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_single_voter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_by_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_off_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_propose_not_ready, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_uncommitted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_three_voters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_below_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_port_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_membership, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
