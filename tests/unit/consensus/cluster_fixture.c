/*
 * cluster_fixture.c - the queue on raft's in-memory cluster fixture (see
 * cluster_fixture.h).
 *
 * Notes on this libraft (0.15, Debian):
 *   - its assertions are compiled out, so the preconditions of
 *     raft_fixture_elect and raft_fixture_depose (no leader, every server a
 *     follower, default election timeout) are checked here first;
 *   - raft_fixture_disconnect(f, i, j) cuts only the direction i -> j;
 *   - a killed server gets no ticks: a killed leader stays leader, and its
 *     pending requests are called back only once it runs again.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <raft.h>
#include <raft/fixture.h>

#include "util/common.h"
#include "util/err.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "cluster_fixture.h"

/* fsm_apply_cb - apply one committed entry to this server's queue. */
static int fsm_apply_cb(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    struct cluster_server *s = fsm->data;
    int rv = queue_apply(s->q, buf->base, buf->len, &s->last);
    s->n_apply++;
    if (rv != 0) {
        /* Stops applying at this index; the test fails on the recorded error. */
        if (s->apply_error == 0)
            s->apply_error = rv;
        return RAFT_MALFORMED;
    }
    *result = &s->last;
    return 0;
}

/*
 * fsm_snapshot_cb - the whole queue in one buffer. Version-2 FSM without
 * snapshot_finalize: raft takes the array and the buffer and raft_frees both.
 */
static int fsm_snapshot_cb(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct cluster_server *s = fsm->data;
    struct raft_buffer *b = raft_malloc(sizeof(*b));
    if (b == NULL)
        return RAFT_NOMEM;
    uint8_t *out = NULL;
    size_t len = 0;
    if (queue_snapshot(s->q, raft_malloc, &out, &len) != 0) {
        raft_free(b);
        return RAFT_NOMEM;
    }
    b->base = out;
    b->len = len;
    *bufs = b;
    *n_bufs = 1;
    s->n_snapshot++;
    return 0;
}

/* fsm_restore_cb - replace the queue with a snapshot; on success the buffer is ours to free. */
static int fsm_restore_cb(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct cluster_server *s = fsm->data;
    int rv = queue_restore(s->q, buf->base, buf->len);
    if (rv != 0) {
        if (s->restore_error == 0)
            s->restore_error = rv;
        return RAFT_MALFORMED;
    }
    raft_free(buf->base);
    s->n_restore++;
    return 0;
}

/* cluster_server_init - a fresh queue and its FSM for server slot i. */
void cluster_server_init(struct cluster *c, unsigned i)
{
    struct cluster_server *s = &c->srv[i];
    memset(s, 0, sizeof(*s));
    s->q = queue_new();
    assert_non_null(s->q);
    s->fsm.version = 2;
    s->fsm.data = s;
    s->fsm.apply = fsm_apply_cb;
    s->fsm.snapshot = fsm_snapshot_cb;
    s->fsm.restore = fsm_restore_cb;
    s->fsm.snapshot_finalize = NULL;
}

/* cluster_raft - the raft instance of server i. */
struct raft *cluster_raft(struct cluster *c, unsigned i)
{
    return raft_fixture_get(&c->f, i);
}

/* cluster_now - the fixture's simulated time. */
raft_time cluster_now(struct cluster *c)
{
    return raft_fixture_time(&c->f);
}

/* cluster_new - n voters, bootstrapped and started, with pre-vote on (as hamrd runs). */
struct cluster *cluster_new(unsigned n)
{
    return cluster_new_with(n, NULL);
}

struct cluster *cluster_new_with(unsigned n, void (*before_start)(struct cluster *c, unsigned i))
{
    struct cluster *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    assert_int_equal(raft_fixture_initialize(&c->f), 0);
    for (unsigned i = 0; i < n; i++) {
        cluster_server_init(c, i);
        assert_int_equal(raft_fixture_grow(&c->f, &c->srv[i].fsm), 0);
        raft_set_pre_vote(cluster_raft(c, i), true);
    }
    c->n = n;
    struct raft_configuration conf;
    assert_int_equal(raft_fixture_configuration(&c->f, n, &conf), 0);
    assert_int_equal(raft_fixture_bootstrap(&c->f, &conf), 0);
    raft_configuration_close(&conf);
    for (unsigned i = 0; before_start != NULL && i < n; i++)
        before_start(c, i);
    assert_int_equal(raft_fixture_start(&c->f), 0);
    return c;
}

/* cluster_free - close the fixture (pending requests are called back), then the queues. */
void cluster_free(struct cluster *c)
{
    raft_fixture_close(&c->f);
    for (size_t i = 0; i < c->n_props; i++)
        assert_true(c->props[i].n_cb <= 1);
    for (unsigned i = 0; i < c->n; i++)
        c->srv[i].q = queue_free(c->srv[i].q);
    free(c);
}

int cluster_setup3(void **state)
{
    *state = cluster_new(3);
    return 0;
}

int cluster_teardown(void **state)
{
    cluster_free(*state);
    return 0;
}

/* cluster_check - no server failed to apply or restore anything. */
void cluster_check(struct cluster *c)
{
    for (unsigned i = 0; i < c->n; i++) {
        if (c->srv[i].apply_error != 0 || c->srv[i].restore_error != 0)
            fail_msg("server %u: apply %s, restore %s", i, hamr_errname(c->srv[i].apply_error),
                     hamr_errname(c->srv[i].restore_error));
    }
}

/* cluster_all_followers - every server is a follower (precondition of raft_fixture_elect). */
bool cluster_all_followers(struct cluster *c)
{
    for (unsigned i = 0; i < c->n; i++)
        if (raft_state(cluster_raft(c, i)) != RAFT_FOLLOWER)
            return false;
    return true;
}

/* cluster_elect - make server i the leader; the fixture must have none now. */
void cluster_elect(struct cluster *c, unsigned i)
{
    assert_int_equal(raft_fixture_leader_index(&c->f), c->n);
    assert_true(cluster_all_followers(c));
    raft_fixture_elect(&c->f, i);
    assert_int_equal(raft_fixture_leader_index(&c->f), i);
    assert_int_equal(raft_state(cluster_raft(c, i)), RAFT_LEADER);
}

/* cluster_leader_of - the server in leader state with the highest term, or c->n. */
unsigned cluster_leader_of(struct cluster *c, unsigned skip)
{
    unsigned best = c->n;
    raft_term term = 0;
    for (unsigned i = 0; i < c->n; i++) {
        struct raft *r = cluster_raft(c, i);
        if (i == skip || !raft_fixture_alive(&c->f, i) || raft_state(r) != RAFT_LEADER)
            continue;
        if (r->current_term > term) {
            term = r->current_term;
            best = i;
        }
    }
    return best;
}

/* cluster_step_until - step until pred holds; false if max_ms of simulated time ran out. */
bool cluster_step_until(struct cluster *c,
                        bool (*pred)(struct raft_fixture *f, void *arg),
                        void *arg,
                        unsigned max_ms)
{
    return raft_fixture_step_until(&c->f, pred, arg, max_ms);
}

/* ------------------------------------------------------------------------
 * Entries and proposals
 * ------------------------------------------------------------------------ */

/* prop_cb - record a raft_apply callback. */
static void prop_cb(struct raft_apply *req, int status, void *result)
{
    struct cluster_prop *p = req->data;
    p->n_cb++;
    p->status = status;
    p->done_at = raft_fixture_time(&p->c->f);
    if (status == 0 && result != NULL)
        p->res = *(const struct queue_apply_result *)result;
}

/*
 * cluster_propose_packed - raft_apply the packed entry buf (len bytes, from
 * raft_malloc) on server i. Returns raft_apply's code; on 0, *out is the
 * recorded request and raft owns buf. On failure buf is freed here.
 */
int cluster_propose_packed(struct cluster *c,
                           unsigned i,
                           uint8_t *buf,
                           size_t len,
                           const char *id,
                           struct cluster_prop **out)
{
    if (c->n_props >= MAX_PROPS || len % PROTO_ENTRY_ALIGN != 0) {
        raft_free(buf);
        fail_msg("proposal %zu, entry of %zu bytes (padded to %d?)", c->n_props, len,
                 PROTO_ENTRY_ALIGN);
    }
    struct cluster_prop *p = &c->props[c->n_props];
    memset(p, 0, sizeof(*p));
    p->req.data = p;
    p->c = c;
    p->server = i;
    p->status = -1;
    hamr_strlcpy(p->id, id ? id : "", sizeof(p->id));
    struct raft_buffer rb = {.base = buf, .len = len};
    int rv = raft_apply(cluster_raft(c, i), &p->req, &rb, 1, prop_cb);
    if (rv != 0) {
        raft_free(buf);
        return rv;
    }
    c->n_props++;
    if (out != NULL)
        *out = p;
    return 0;
}

/*
 * cluster_propose - pack e (timestamped with the simulated clock) and
 * propose it on server i as cluster_propose_packed does.
 */
int cluster_propose(struct cluster *c,
                    unsigned i,
                    Hamr__Entry *e,
                    const char *id,
                    struct cluster_prop **out)
{
    e->timestamp_ms = T0 + cluster_now(c);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(proto_entry_pack(e, raft_malloc, &buf, &len), 0);
    return cluster_propose_packed(c, i, buf, len, id, out);
}

/* prop_done_pred - the request has been called back. */
static bool prop_done_pred(struct raft_fixture *f, void *arg)
{
    (void)f;
    const struct cluster_prop *p = arg;
    return p->n_cb > 0;
}

/* prop_wait - step until p is called back (bounded); assert its status. */
void prop_wait(struct cluster *c, struct cluster_prop *p, int want_status, unsigned max_ms)
{
    if (!cluster_step_until(c, prop_done_pred, p, max_ms))
        fail_msg("proposal %s on server %u: no callback within %u ms", p->id, p->server, max_ms);
    assert_int_equal(p->n_cb, 1);
    if (p->status != want_status)
        fail_msg("proposal %s: status %d (%s), want %d", p->id, p->status, raft_strerror(p->status),
                 want_status);
    cluster_check(c);
}

/* committed - assert a proposal was accepted (rv 0) and wait until it commits with status 0. */
struct cluster_prop *committed(struct cluster *c, int rv)
{
    if (rv != 0)
        fail_msg("raft_apply: %d (%s)", rv, raft_strerror(rv));
    struct cluster_prop *p = &c->props[c->n_props - 1];
    prop_wait(c, p, 0, 2000);
    return p;
}

/* change_cb / barrier_cb - record a membership change or barrier callback. */
void change_cb(struct raft_change *req, int status)
{
    struct cluster_change *ch = req->data;
    ch->n_cb++;
    ch->status = status;
}

static void barrier_cb(struct raft_barrier *req, int status)
{
    struct cluster_change *ch = req->data;
    ch->n_cb++;
    ch->status = status;
}

/* change_new - a zeroed change record that lives as long as the cluster. */
struct cluster_change *change_new(struct cluster *c)
{
    assert_true(c->n_changes < MAX_CHANGES);
    struct cluster_change *ch = &c->changes[c->n_changes++];
    memset(ch, 0, sizeof(*ch));
    ch->change.data = ch;
    ch->barrier.data = ch;
    ch->status = -1;
    return ch;
}

/* change_done_pred - the change or barrier has been called back. */
static bool change_done_pred(struct raft_fixture *f, void *arg)
{
    (void)f;
    const struct cluster_change *ch = arg;
    return ch->n_cb > 0;
}

/* change_wait - step until ch is called back with status 0 (bounded). */
void change_wait(struct cluster *c, struct cluster_change *ch, unsigned max_ms)
{
    if (!cluster_step_until(c, change_done_pred, ch, max_ms))
        fail_msg("change: no callback within %u ms", max_ms);
    assert_int_equal(ch->n_cb, 1);
    if (ch->status != 0)
        fail_msg("change: status %d (%s)", ch->status, raft_strerror(ch->status));
}

/* cluster_barrier - a barrier on leader i: everything before it is applied there. */
void cluster_barrier(struct cluster *c, unsigned i)
{
    struct cluster_change *ch = change_new(c);
    assert_int_equal(raft_barrier(cluster_raft(c, i), &ch->barrier, barrier_cb), 0);
    change_wait(c, ch, 3000);
    assert_int_equal(raft_last_applied(cluster_raft(c, i)), ch->barrier.index);
}

/* cluster_wait_applied - step until server i applied index (bounded). */
void cluster_wait_applied(struct cluster *c, unsigned i, raft_index index, unsigned max_ms)
{
    if (!raft_fixture_step_until_applied(&c->f, i, index, max_ms))
        fail_msg("server %u: applied %llu, want %llu within %u ms", i,
                 (unsigned long long)raft_last_applied(cluster_raft(c, i)),
                 (unsigned long long)index, max_ms);
    cluster_check(c);
}

/* cluster_sync - servers in mask apply everything leader applied (bounded). */
void cluster_sync(struct cluster *c, unsigned leader, unsigned mask)
{
    raft_index idx = raft_last_applied(cluster_raft(c, leader));
    for (unsigned i = 0; i < c->n; i++)
        if (mask & (1u << i))
            cluster_wait_applied(c, i, idx, 3000);
}

/* cluster_assert_same - servers in mask have equal digests and queue_contains answers. */
void cluster_assert_same(struct cluster *c, unsigned mask)
{
    char want[65] = "", got[65];
    unsigned first = c->n;
    cluster_check(c);
    for (unsigned i = 0; i < c->n; i++) {
        if (!(mask & (1u << i)))
            continue;
        queue_digest(c->srv[i].q, got);
        if (first == c->n) {
            first = i;
            memcpy(want, got, sizeof(want));
            continue;
        }
        if (strcmp(want, got) != 0)
            fail_msg("digest of server %u differs from server %u", i, first);
        for (size_t k = 0; k < c->n_props; k++)
            assert_int_equal(queue_contains(c->srv[i].q, c->props[k].id),
                             queue_contains(c->srv[first].q, c->props[k].id));
    }
    assert_true(first < c->n);
}

/* cluster_of - the cluster that embeds fixture f. */
struct cluster *cluster_of(struct raft_fixture *f)
{
    return hamr_container_of(f, struct cluster, f);
}

/* other_leader_pred - some live server other than *arg is leader. */
static bool other_leader_pred(struct raft_fixture *f, void *arg)
{
    struct cluster *c = cluster_of(f);
    return cluster_leader_of(c, *(const unsigned *)arg) < c->n;
}

/* wait_other_leader - step until a server other than skip leads (bounded); its index. */
unsigned wait_other_leader(struct cluster *c, unsigned skip, unsigned max_ms)
{
    if (!cluster_step_until(c, other_leader_pred, &skip, max_ms))
        fail_msg("no leader other than server %u within %u ms", skip, max_ms);
    unsigned l = cluster_leader_of(c, skip);
    assert_true(l < c->n && l != skip);
    return l;
}

/* isolate - cut server i off from the others, by network or by killing it. */
void isolate(struct cluster *c, unsigned i, enum isolate_kind kind)
{
    if (kind == ISOLATE_KILL) {
        raft_fixture_kill(&c->f, i);
        return;
    }
    /* raft_fixture_disconnect(f, i, j) cuts one direction, i to j: cut both. */
    for (unsigned j = 0; j < c->n; j++) {
        if (j != i) {
            raft_fixture_disconnect(&c->f, i, j);
            raft_fixture_disconnect(&c->f, j, i);
        }
    }
}

/* heal - undo isolate. */
void heal(struct cluster *c, unsigned i, enum isolate_kind kind)
{
    if (kind == ISOLATE_KILL) {
        raft_fixture_revive(&c->f, i);
        return;
    }
    for (unsigned j = 0; j < c->n; j++) {
        if (j != i) {
            raft_fixture_reconnect(&c->f, i, j);
            raft_fixture_reconnect(&c->f, j, i);
        }
    }
}

/* cluster_msg_body - see cluster_fixture.h. */
void cluster_msg_body(const char *id, char *out, size_t cap)
{
    int n = snprintf(out, cap,
                     "Received: from client.test by mx.hamr.test\r\n"
                     "Subject: %s\r\n\r\nbody of %s\r\n",
                     id, id);
    assert_true(n > 0 && (size_t)n < cap);
}

/* cluster_propose_enqueue - see cluster_fixture.h. */
int cluster_propose_enqueue(struct cluster *c,
                            unsigned i,
                            const char *id,
                            unsigned n_rcpts,
                            struct cluster_prop **out)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Enqueue enq = HAMR__ENQUEUE__INIT;
    char body[256];
    char rcpt_text[MAX_RCPTS][32];
    char *rcpts[MAX_RCPTS];
    uint8_t sha[32];
    unsigned sha_len = 0;
    assert_true(n_rcpts >= 1 && n_rcpts <= MAX_RCPTS);
    for (unsigned k = 0; k < n_rcpts; k++) {
        snprintf(rcpt_text[k], sizeof(rcpt_text[k]), "r%u@dest%u.test", k, k);
        rcpts[k] = rcpt_text[k];
    }
    cluster_msg_body(id, body, sizeof(body));
    assert_int_equal(EVP_Digest(body, strlen(body), sha, &sha_len, EVP_sha256(), NULL), 1);
    enq.queue_id = (char *)id;
    enq.sender = "sender@example.org";
    enq.n_rcpts = n_rcpts;
    enq.rcpts = rcpts;
    enq.body.data = (uint8_t *)body;
    enq.body.len = strlen(body);
    enq.body_sha256.data = sha;
    enq.body_sha256.len = sha_len;
    enq.expires_at_ms = T0 + 5 * 24 * 60 * MIN_MS;
    enq.client_addr = "192.0.2.10";
    enq.helo = "client.test";
    enq.accepted_by = cluster_raft(c, i)->id;
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &enq;
    return cluster_propose(c, i, &e, id, out);
}
