/*
 * cluster_fixture.h - the replicated queue (queue/) as the state machine of
 * a real raft 0.15 cluster on raft's in-memory fixture (raft/fixture.h),
 * shared by the consensus tests that drive it: deterministic, simulated
 * time, no sockets, no disk, no threads.
 *
 * Each fixture server gets a version-2 struct raft_fsm around its own struct
 * queue: apply -> queue_apply (a non-zero return is recorded and fails the
 * test); snapshot -> queue_snapshot into one raft_malloc'd buffer that raft
 * owns and frees; restore -> queue_restore, then raft_free of the buffer.
 * Proposals are handed to raft_apply on a chosen server; each request's
 * callback status and the queue's apply result are recorded in the
 * cluster. Every wait steps the fixture with a bound in simulated
 * milliseconds; a wait that runs out fails the test (cmocka).
 */
#ifndef HAMR_TESTS_CLUSTER_FIXTURE_H
#define HAMR_TESTS_CLUSTER_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <raft.h>
#include <raft/fixture.h>

#include "proto/proto_frame.h"
#include "queue/queue.h"

#define T0 1700000000000ull /* wall clock of simulated time 0 */
#define MIN_MS (60ull * 1000)
#define ELECTION_MS 1000 /* the fixture's default election timeout */
#define MAX_PROPS 512
#define MAX_CHANGES 8
#define MAX_RCPTS 4

/* ------------------------------------------------------------------------
 * The cluster: fixture, one queue per server, recorded requests
 * ------------------------------------------------------------------------ */

/* cluster_server - one server's state machine and what raft did with it. */
struct cluster_server {
    struct raft_fsm fsm;
    struct queue *q;
    struct queue_apply_result last; /* result of the newest apply, for raft_apply callbacks */
    unsigned n_apply;
    unsigned n_snapshot;
    unsigned n_restore;
    int apply_error;   /* first non-zero queue_apply return, 0 if none */
    int restore_error; /* first non-zero queue_restore return, 0 if none */
};

struct cluster;

/* cluster_prop - one raft_apply request and what its callback reported. */
struct cluster_prop {
    struct raft_apply req;
    struct cluster *c;
    unsigned server;               /* index of the server it was proposed on */
    char id[QUEUE_ID_MAX];         /* queue id the entry is about */
    unsigned n_cb;                 /* callback count: must end at most 1 */
    int status;                    /* callback status */
    struct queue_apply_result res; /* the queue's result when status is 0 */
    raft_time done_at;             /* simulated time of the callback */
};

/* cluster_change - a membership change or a barrier and its callback. */
struct cluster_change {
    struct raft_change change;
    struct raft_barrier barrier;
    unsigned n_cb;
    int status;
};

/* cluster_transfer - a leadership transfer and what its callback saw. */
struct cluster_transfer {
    struct raft_transfer req;
    struct cluster *c;
    unsigned from; /* server the transfer was asked of */
    unsigned n_cb;
    raft_id leader_seen; /* raft_leader() on that server in the callback */
    raft_time at;        /* simulated time of the callback */
};

struct cluster {
    struct raft_fixture f;
    struct cluster_server srv[RAFT_FIXTURE_MAX_SERVERS];
    unsigned n;
    struct cluster_prop props[MAX_PROPS];
    size_t n_props;
    struct cluster_change changes[MAX_CHANGES];
    size_t n_changes;
    struct cluster_transfer transfers[2];
};

enum isolate_kind { ISOLATE_DISCONNECT, ISOLATE_KILL };

/* The cluster: n voters (ids 1..n), bootstrapped and started, pre-vote on. */
struct cluster *cluster_new(unsigned n);
/* cluster_new_with - the same, calling before_start(c, i) for each server before raft_start. */
struct cluster *cluster_new_with(unsigned n, void (*before_start)(struct cluster *c, unsigned i));
/* cluster_free - close the fixture (pending requests are called back), then the queues. */
void cluster_free(struct cluster *c);
/* cmocka setup and teardown of a three-server cluster in *state. */
int cluster_setup3(void **state);
int cluster_teardown(void **state);
/* cluster_server_init - a fresh queue and its FSM for server slot i. */
void cluster_server_init(struct cluster *c, unsigned i);
struct raft *cluster_raft(struct cluster *c, unsigned i);
/* cluster_now - the fixture's simulated time (ms since it started). */
raft_time cluster_now(struct cluster *c);
/* cluster_of - the cluster that embeds fixture f. */
struct cluster *cluster_of(struct raft_fixture *f);
/* cluster_check - no server failed to apply or restore anything. */
void cluster_check(struct cluster *c);
bool cluster_all_followers(struct cluster *c);
/* cluster_elect - make server i the leader; the fixture must have none now. */
void cluster_elect(struct cluster *c, unsigned i);
/* cluster_leader_of - the live server in leader state with the highest term, except skip; or c->n.
 */
unsigned cluster_leader_of(struct cluster *c, unsigned skip);
/* wait_other_leader - step until a server other than skip leads (bounded); its index. */
unsigned wait_other_leader(struct cluster *c, unsigned skip, unsigned max_ms);
/* cluster_step_until - step until pred holds; false if max_ms of simulated time ran out. */
bool cluster_step_until(struct cluster *c,
                        bool (*pred)(struct raft_fixture *f, void *arg),
                        void *arg,
                        unsigned max_ms);

/* cluster_propose_packed - raft_apply buf (raft_malloc'd, owned by raft on 0) on server i. */
int cluster_propose_packed(struct cluster *c,
                           unsigned i,
                           uint8_t *buf,
                           size_t len,
                           const char *id,
                           struct cluster_prop **out);
/* cluster_msg_body - the deterministic body of message id. */
void cluster_msg_body(const char *id, char *out, size_t cap);
/*
 * cluster_propose_enqueue - an Enqueue of id with n_rcpts recipients
 * (at most MAX_RCPTS; always the same entry for an id), accepted by server
 * i, proposed on it (see cluster_propose).
 */
int cluster_propose_enqueue(struct cluster *c,
                            unsigned i,
                            const char *id,
                            unsigned n_rcpts,
                            struct cluster_prop **out);
/* cluster_propose - pack e, stamped with T0 + simulated time, and propose it on server i. */
int cluster_propose(struct cluster *c,
                    unsigned i,
                    Hamr__Entry *e,
                    const char *id,
                    struct cluster_prop **out);
/* prop_wait - step until p is called back (bounded); assert its status. */
void prop_wait(struct cluster *c, struct cluster_prop *p, int want_status, unsigned max_ms);
/* committed - assert a proposal was accepted (rv 0) and wait until it commits with status 0. */
struct cluster_prop *committed(struct cluster *c, int rv);

/* Membership changes and barriers. */
void change_cb(struct raft_change *req, int status);
struct cluster_change *change_new(struct cluster *c);
void change_wait(struct cluster *c, struct cluster_change *ch, unsigned max_ms);
/* cluster_barrier - a barrier on leader i: everything before it is applied there. */
void cluster_barrier(struct cluster *c, unsigned i);
/* cluster_wait_applied - step until server i applied index (bounded). */
void cluster_wait_applied(struct cluster *c, unsigned i, raft_index index, unsigned max_ms);
/* cluster_sync - servers in mask apply everything leader applied (bounded). */
void cluster_sync(struct cluster *c, unsigned leader, unsigned mask);
/* cluster_assert_same - servers in mask have equal digests and queue_contains answers. */
void cluster_assert_same(struct cluster *c, unsigned mask);

/* isolate - cut server i off from the others, by network (both ways) or by killing it. */
void isolate(struct cluster *c, unsigned i, enum isolate_kind kind);
/* heal - undo isolate. */
void heal(struct cluster *c, unsigned i, enum isolate_kind kind);

#endif
