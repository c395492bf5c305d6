/*
 * consensus.h - canonical raft (libraft 0.15) with its libuv disk back end and
 * hamr's TCP transport (optionally mutual TLS), behind a small interface that
 * knows nothing of mail.
 *
 * The state machine is a struct consensus_fsm of function pointers; entries
 * are opaque byte buffers. A proposal is called back exactly once: 0 when the
 * entry is committed (majority fsync) and applied here, HAMR_ENOTLEADER,
 * HAMR_ELEADERSHIPLOST (outcome unknown: the entry may still commit),
 * HAMR_ENOSPACE / HAMR_EIO, or HAMR_ESHUTDOWN.
 *
 * Leadership: a timer polls raft_state() (0.15 has no state callback). On
 * becoming leader a barrier is proposed (0.15 writes no no-op entry on
 * election); on_leader(arg, true) is called only once the barrier has applied,
 * so everything committed by earlier leaders is in the state machine.
 */
#ifndef HAMR_CONSENSUS_CONSENSUS_H
#define HAMR_CONSENSUS_CONSENSUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define CONSENSUS_ADDR_MAX 64
/* CONSENSUS_ENTRY_ALIGN - a proposed entry's length must be a multiple of this. */
#define CONSENSUS_ENTRY_ALIGN 8
#define CONSENSUS_MAX_MEMBERS 16

/* Member roles, as raft numbers them (RAFT_STANDBY, RAFT_VOTER, RAFT_SPARE). */
#define CONSENSUS_ROLE_STANDBY 0 /* replicates the log, does not vote */
#define CONSENSUS_ROLE_VOTER 1
#define CONSENSUS_ROLE_SPARE 2 /* neither replicates nor votes */

struct consensus_fsm {
    void *data;
    /*
     * apply - a committed entry, on every node, in log order. buf is borrowed.
     * *result (may stay NULL) reaches the proposer's callback on this node.
     * Return 0; a non-zero return means the entry can never be applied here
     * (unknown kind, newer version): raft stops applying and the node must
     * fail loudly.
     */
    int (*apply)(void *data, const uint8_t *buf, size_t len, void **result);
    /* snapshot - the whole state in one buffer from consensus_malloc; ownership passes. */
    int (*snapshot)(void *data, uint8_t **buf, size_t *len);
    /* restore - replace the whole state; buf is borrowed. */
    int (*restore)(void *data, const uint8_t *buf, size_t len);
    /*
     * Snapshots off the loop (optional; all three or none): snapshot_view
     * runs on the loop where raft would call snapshot (which is then
     * unused) and returns a consistent view of the state, cheaply (a copy
     * on write: a forked child, say); snapshot_write runs in libuv's thread
     * pool and turns the view into the whole state in one buffer, which
     * stays the view's; snapshot_release runs on the loop afterwards,
     * whatever happened, and frees the view and its buffer. Errors are
     * HAMR_E*: raft tries again after a later apply batch.
     */
    int (*snapshot_view)(void *data, void **view);
    int (*snapshot_write)(void *view, uint8_t **buf, size_t *len);
    void (*snapshot_release)(void *view);
};

struct consensus_member {
    uint64_t id;
    char address[CONSENSUS_ADDR_MAX]; /* "a.b.c.d:port" or "[IPv6]:port", literals */
};

struct cluster_tls; /* net/cluster_tls.h */

struct consensus_config {
    uint64_t id;                           /* > 0 */
    char address[CONSENSUS_ADDR_MAX];      /* where peers reach us; also the bind address */
    char dir[4096];                        /* data directory; created if missing */
    const struct consensus_member *voters; /* bootstrap configuration (copied) */
    size_t n_voters;
    unsigned election_timeout_ms; /* 1000 */
    unsigned heartbeat_ms;        /* 100 */
    size_t snapshot_bytes;        /* snapshot after this many applied bytes; 64 MiB */
    unsigned snapshot_trailing;   /* entries kept after a snapshot; 128 */
    size_t segment_size;          /* log segment size; 64 MiB */
    uint64_t max_entry;           /* largest entry the FSM proposes; 64 MiB. Bounds
                                     what the raft port accepts (RAFT.md 4.5) */
    struct cluster_tls *tls;      /* NULL: plain TCP. Else every raft connection is
                                     mutual TLS 1.3 and a peer's id must be the one
                                     its certificate names (RAFT.md 4.5). Borrowed:
                                     must outlive the consensus; reloads reach new
                                     connections */
    /* on_leader - leadership gained (after the barrier) or lost. May be NULL. */
    void (*on_leader)(void *arg, bool leader);
    void *on_leader_arg;
};

enum consensus_state {
    CONSENSUS_UNAVAILABLE = 0,
    CONSENSUS_FOLLOWER,
    CONSENSUS_CANDIDATE,
    CONSENSUS_LEADER,
};

/* consensus_port_stats - raft connections since start (RAFT.md 4.5); each refusal is logged. */
struct consensus_port_stats {
    uint64_t accepted;     /* inbound, handed to raft after a valid handshake */
    uint64_t refused;      /* inbound, closed for a malformed handshake or message */
    uint64_t timed_out;    /* inbound, closed: no valid (TLS and raft) handshake within 5 s */
    uint64_t over_cap;     /* inbound, closed at once: 64 inbound connections were open */
    uint64_t tls;          /* inbound, TLS failed: no certificate, another CA, a bad record */
    uint64_t identity;     /* inbound, the certificate names no node, or not the claimed id */
    uint64_t out_tls;      /* outbound, TLS failed (or the server refused our certificate) */
    uint64_t out_identity; /* outbound, the server's certificate names another node, or none */
};

struct consensus_info {
    enum consensus_state state;
    bool ready; /* leader and the election barrier applied */
    uint64_t term;
    uint64_t commit_index;
    uint64_t applied_index;
    uint64_t last_index;
    uint64_t leader_id; /* 0 if unknown */
    char leader_address[CONSENSUS_ADDR_MAX];
    size_t n_members;
    struct consensus_member members[CONSENSUS_MAX_MEMBERS];
    int roles[CONSENSUS_MAX_MEMBERS]; /* 0 standby, 1 voter, 2 spare (RAFT_*) */
    struct consensus_port_stats port; /* what the raft port refused */
    uint64_t append_rebased;          /* AppendEntries from index 1 rebased on our snapshot
                                         (consensus_guard.h) */
    uint64_t append_dropped;          /* the same that ended before our snapshot: dropped */
    bool failed;                      /* raft UNAVAILABLE after start, or the state machine
                                         refused an entry: the node must exit */
};

struct consensus;

/* consensus_apply_cb - result of consensus_propose. result: from fsm->apply on status 0. */
typedef void (*consensus_apply_cb)(void *arg, int status, void *result);

/*
 * consensus_segment_size - the log segment size for snapshots every
 * snapshot_bytes and entries of up to max_entry bytes. A snapshot rolls the
 * open segment anyway, and every roll stalls the loop (libraft 0.15's
 * io_destroy on the loop thread: 30-40 ms; RAFT.md 4.3). Segments a little
 * larger than the snapshot interval roll once per snapshot and never in
 * between. At most 1 GiB; at least 8 MiB and room for the largest entry plus
 * an eighth (one entry never spans segments).
 */
size_t consensus_segment_size(uint64_t snapshot_bytes, uint64_t max_entry);

/* consensus_malloc / consensus_free - the allocator for buffers handed over (raft's). */
void *consensus_malloc(size_t n);
void consensus_free(void *p);

/*
 * consensus_new - set up raft on loop (does not start it). cfg and fsm are
 * copied. Bootstraps cfg->voters if the directory is pristine. Errors carry a
 * sentence in errmsg (size errlen).
 */
int consensus_new(uv_loop_t *loop,
                  const struct consensus_config *cfg,
                  const struct consensus_fsm *fsm,
                  struct consensus **out,
                  char *errmsg,
                  size_t errlen);

/* consensus_start - load the log (synchronously) and begin ticking. */
int consensus_start(struct consensus *c, char *errmsg, size_t errlen);

/*
 * consensus_propose - append buf as one entry. buf must come from
 * consensus_malloc; on 0 its ownership passes (cb runs exactly once, never
 * inside this call); on error the caller still owns it and cb never runs.
 * Errors: HAMR_ENOTLEADER (not leader, not ready, or transferring),
 * HAMR_ESHUTDOWN (closing), HAMR_EINVAL (empty buffer), HAMR_ENOMEM.
 */
int consensus_propose(struct consensus *c,
                      uint8_t *buf,
                      size_t len,
                      consensus_apply_cb cb,
                      void *arg);

/* consensus_get_info - a consistent view of raft's state. */
void consensus_get_info(struct consensus *c, struct consensus_info *info);

/* consensus_is_ready - leader with the barrier applied: may propose and schedule. */
bool consensus_is_ready(struct consensus *c);

/* consensus_term - the current term. */
uint64_t consensus_term(struct consensus *c);
/* consensus_applied_index - the last log index applied here (0 while closing). */
uint64_t consensus_applied_index(struct consensus *c);

/*
 * consensus_transfer - hand leadership to id (0: any up-to-date voter):
 * barrier, raft_transfer, retried up to 3 times. cb(arg, status, new_leader).
 */
int consensus_transfer(struct consensus *c,
                       uint64_t id,
                       void (*cb)(void *arg, int status, uint64_t leader),
                       void *arg);

/*
 * consensus_add / consensus_assign / consensus_remove - membership changes,
 * leader only, one at a time (RAFT.md 7.8). add makes id a SPARE at address
 * ("a.b.c.d:port" or "[IPv6]:port", copied); assign gives it a CONSENSUS_ROLE_*.
 * On 0, cb(arg, status) runs exactly once, never inside the call. Errors:
 * HAMR_ENOTLEADER, HAMR_ECANTCHANGE (another change is pending), HAMR_EINVAL,
 * HAMR_EEXIST (duplicate id or address, or the role is already held),
 * HAMR_ESHUTDOWN.
 */
int consensus_add(struct consensus *c,
                  uint64_t id,
                  const char *address,
                  void (*cb)(void *arg, int status),
                  void *arg);
int consensus_assign(struct consensus *c,
                     uint64_t id,
                     int role,
                     void (*cb)(void *arg, int status),
                     void *arg);
int consensus_remove(struct consensus *c,
                     uint64_t id,
                     void (*cb)(void *arg, int status),
                     void *arg);

/*
 * consensus_close - stop raft; pending proposals get HAMR_ESHUTDOWN or
 * HAMR_ELEADERSHIPLOST. closed_cb runs once every handle is closed; then c is freed.
 * New work is refused at once; raft itself is closed only after its in-flight
 * log writes finish (at most 5 s), because raft 0.15 crashes when they are cancelled.
 */
void consensus_close(struct consensus *c, void (*closed_cb)(void *arg), void *arg);

#endif
