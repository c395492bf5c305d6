/*
 * consensus.c - canonical raft 0.15 (libraft) on its libuv disk back end and
 * TCP transport, behind consensus.h. Knows nothing of mail.
 *
 * Owns: one struct raft with its raft_io and transport, the raft_fsm adapter
 * over the caller's struct consensus_fsm, a poll timer, an idle handle used
 * to run deferred work on the next loop iteration, and every in-flight
 * request (proposals, membership changes, the election barrier, a transfer).
 *
 * Happy path:
 *   consensus_new: validate, mkdir -p, consensus_tcp_init, raft_uv_init,
 *     consensus_guard_install (received messages pass it first: RAFT.md 4.7),
 *     raft_init, tune, raft_bootstrap (RAFT_CANTBOOTSTRAP = restart, fine).
 *   consensus_start: raft_start (loads the whole log synchronously), then the
 *     poll timer watches raft_state(): 0.15 has no state-change callback.
 *   On becoming leader: raft_barrier; once it has applied, and we are still
 *     leader in that term, ready = true and on_leader(true).
 *   consensus_propose: one raft_apply per buffer; the raft callback only
 *     queues the outcome, which is delivered from the idle handle.
 *
 * Why callbacks are deferred: in 0.15 a failure callback runs before raft has
 * cleaned up its log, so a caller that re-proposed from inside it would
 * corrupt raft (RAFT.md 4.1). raft callbacks therefore only record what
 * happened; callers are called from consensus_dispatch, outside raft. This
 * also makes "never inside consensus_propose" and "exactly once" easy to
 * keep: a request sits on exactly one list (in flight or done) until its
 * callback has run, and consensus_close delivers whatever is left.
 *
 * Snapshots: raft's trigger counts entries; mail-sized entries need a byte
 * trigger (RAFT.md 7.3). The threshold is kept huge; when applied bytes pass
 * cfg.snapshot_bytes (the first time after a start: a random point past
 * half of it, so that the nodes do not snapshot together) it is set to 1, so raft snapshots after
 * the current apply batch, and the snapshot callback restores the huge value. The FSM is version 2
 * with snapshot_finalize (synchronous snapshot, buffers released by us); LZ4 is off so raft writes
 * the buffer as is.
 *
 * Close: raft 0.15 crashes (NULL dereference in its log reference counts)
 * when raft_close cancels log writes that are still in flight: the cleanup
 * after a failed append is broken in 0.15 (RAFT.md 4.1). consensus_close
 * therefore first refuses new work and waits, polling every millisecond and
 * for at most CONSENSUS_CLOSE_DRAIN_MS, until every entry in raft's log is
 * stored (last_stored == last_index), and only then calls raft_close.
 *
 * Errors: RAFT_* codes are converted to HAMR_E* here (consensus_err) and
 * never leave this file. Failures that need the node to exit (raft
 * UNAVAILABLE after start, an entry the FSM refuses) are logged and reported
 * in consensus_info.failed.
 *
 * Security (RAFT.md 4.5): with cfg.tls every raft connection is mutual TLS
 * 1.3 under the cluster's CA and a peer's raft id must be the one its
 * certificate names, both ways (consensus_tcp.c); without it the raft port
 * is plaintext and unauthenticated: bind it to a private address. Either
 * way every inbound byte is checked before libraft reads it
 * (consensus_wire.c): malformed or oversized messages close the connection
 * and are counted in consensus_info.port. Addresses from the configuration
 * are checked to be IP literals with a port ("a.b.c.d:port", "[v6]:port")
 * before raft sees them.
 *
 * Threading: everything runs on the loop thread. The FSM callbacks run inside
 * raft: they must not call any consensus_* function. The *result of apply
 * reaches a proposer only on the node that proposed, while it still leads;
 * raft drops it everywhere else, so it must not own memory.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/log.h"

#include "consensus/consensus.h"
#include "consensus/consensus_crc.h"
#include "consensus/consensus_guard.h"
#include "consensus/consensus_tcp.h"

#define CONSENSUS_POLL_MS 10
/* Entry-count snapshot threshold while the byte trigger is not armed. */
#define CONSENSUS_THRESHOLD_OFF (1u << 30)
/* raft_transfer is retried this many times after the first attempt (RAFT.md 7.7). */
#define CONSENSUS_TRANSFER_RETRIES 3
#define CONSENSUS_TRANSFER_BACKOFF_MS 50
/* consensus_close waits this long at most for in-flight log writes. */
#define CONSENSUS_CLOSE_DRAIN_MS 5000
#define CONSENSUS_CLOSE_POLL_MS 1

#define CONSENSUS_DEFAULT_ELECTION_MS 1000
#define CONSENSUS_DEFAULT_HEARTBEAT_MS 100
#define CONSENSUS_DEFAULT_SNAPSHOT_BYTES (64u * 1024 * 1024)
#define CONSENSUS_DEFAULT_TRAILING 128
#define CONSENSUS_DEFAULT_SEGMENT (64u * 1024 * 1024)
#define CONSENSUS_DEFAULT_MAX_ENTRY (64u * 1024 * 1024)
/* The raft port's bounds beyond the configured ones (consensus_port_limits). */
#define CONSENSUS_PORT_MESSAGE_MIN (UINT64_C(2) << 30)
#define CONSENSUS_PORT_MAX_ENTRIES (1u << 20) /* a 16 MiB AppendEntries header */

/* consensus_link - intrusive doubly linked list; a sentinel is the list. */
struct consensus_link {
    struct consensus_link *prev;
    struct consensus_link *next;
};

enum consensus_req_kind { CONSENSUS_REQ_APPLY, CONSENSUS_REQ_CHANGE };

/* One caller request to raft; heap allocated, freed after its callback ran. */
struct consensus_req {
    struct consensus_link link; /* on c->inflight, then on c->done */
    struct consensus *c;
    enum consensus_req_kind kind;
    union {
        struct raft_apply apply;
        struct raft_change change;
    } raft;
    consensus_apply_cb apply_cb;
    void (*change_cb)(void *arg, int status);
    void *arg;
    int status;   /* HAMR_E*, set when raft called back */
    void *result; /* from fsm->apply, status 0 only */
};

enum consensus_xfer_state {
    CONSENSUS_XFER_IDLE = 0,
    CONSENSUS_XFER_BARRIER, /* draining in-flight applies */
    CONSENSUS_XFER_RAFT,    /* raft_transfer issued, waiting for its callback */
    CONSENSUS_XFER_WAIT,    /* callback seen; waiting for a leader or a retry */
};

struct consensus {
    uv_loop_t *loop;
    struct consensus_config cfg; /* voters cleared: only used by consensus_new */
    struct consensus_fsm fsm;

    struct raft raft;
    struct raft_io io;
    struct consensus_guard guard;   /* AppendEntries from index 1 (consensus_guard.h) */
    struct consensus_tcp transport; /* every raft connection; TLS with cfg.tls */
    struct raft_fsm raft_fsm;

    uv_timer_t poll_timer; /* polls raft_state() */
    uv_idle_t kick;        /* runs consensus_dispatch on the next iteration */

    bool started;
    bool closing;
    uint64_t drain_deadline; /* uv_now: raft_close even if writes are still pending */
    bool failed;
    bool fsm_failed_logged;
    int closes_pending; /* raft, poll_timer, kick */
    void (*closed_cb)(void *arg);
    void *closed_arg;

    /* Leadership (RAFT.md 7.4 step 5). */
    uint64_t lead_term;       /* term we lead in; 0: not leader */
    bool ready;               /* barrier of lead_term applied */
    bool announced;           /* on_leader(true) delivered, not yet false */
    bool barrier_pending;     /* election barrier in raft */
    uint64_t barrier_term;    /* term the pending barrier was proposed in */
    uint64_t barrier_ok_term; /* term whose barrier applied */
    uint64_t barrier_retry_at;
    struct raft_barrier barrier;

    /* A snapshot taken off the loop (fsm.snapshot_view): the view from the
     * loop, what the thread pool made of it, and when, for the log. */
    struct {
        void *view;
        int status;
        size_t len;
        uint64_t index;
        uint64_t started_ns, view_ns;
    } snap;
    /* Byte-based snapshot trigger (RAFT.md 7.3): a snapshot once
     * applied_bytes passes snapshot_due (see consensus_snapshot_due). */
    size_t applied_bytes;
    size_t snapshot_due;
    bool snapshot_armed;

    /* Leadership transfer (RAFT.md 7.7). */
    struct {
        enum consensus_xfer_state state;
        uint64_t target; /* 0: any voter */
        unsigned attempts;
        void (*cb)(void *arg, int status, uint64_t leader);
        void *arg;
        bool barrier_done;
        int barrier_status; /* raw RAFT_* */
        bool raft_done;
        uint64_t deadline; /* uv_now: give up waiting for a leader */
        uint64_t retry_at; /* uv_now: next raft_transfer */
        struct raft_barrier barrier;
        struct raft_transfer req;
    } xfer;

    struct consensus_link inflight; /* consensus_req in raft */
    struct consensus_link done;     /* consensus_req waiting for delivery */
};

static void consensus_dispatch(struct consensus *c);
static void consensus_kick_cb(uv_idle_t *idle);

/* consensus_link_init - an empty list. */
static void consensus_link_init(struct consensus_link *l)
{
    l->prev = l;
    l->next = l;
}

/* consensus_link_push - append n at the tail of list. */
static void consensus_link_push(struct consensus_link *list, struct consensus_link *n)
{
    n->prev = list->prev;
    n->next = list;
    list->prev->next = n;
    list->prev = n;
}

/* consensus_link_remove - unlink n from whichever list holds it. */
static void consensus_link_remove(struct consensus_link *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n;
    n->next = n;
}

/* consensus_errmsg - write a sentence into the caller's errmsg, if any. */
__attribute__((format(printf, 3, 4))) static void consensus_errmsg(char *errmsg,
                                                                   size_t errlen,
                                                                   const char *fmt,
                                                                   ...)
{
    if (errmsg == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, errlen, fmt, ap);
    va_end(ap);
}

/* consensus_err - convert a raft status or return code into HAMR_E*. */
static int consensus_err(int rv)
{
    switch (rv) {
        case 0:
            return 0;
        case RAFT_NOMEM:
            return HAMR_ENOMEM;
        case RAFT_BADID:
        case RAFT_BADROLE:
        case RAFT_MALFORMED:
        case RAFT_NAMETOOLONG:
        case RAFT_INVALID:
            return HAMR_EINVAL;
        case RAFT_DUPLICATEID:
        case RAFT_DUPLICATEADDRESS:
        case RAFT_CANTBOOTSTRAP:
            return HAMR_EEXIST;
        case RAFT_NOTLEADER:
            return HAMR_ENOTLEADER;
        case RAFT_LEADERSHIPLOST:
            return HAMR_ELEADERSHIPLOST;
        case RAFT_SHUTDOWN:
        case RAFT_CANCELED:
            return HAMR_ESHUTDOWN;
        case RAFT_CANTCHANGE:
            return HAMR_ECANTCHANGE;
        case RAFT_CORRUPT:
            return HAMR_ECORRUPT;
        case RAFT_TOOBIG:
            return HAMR_ETOOBIG;
        case RAFT_NOCONNECTION:
            return HAMR_ECONNECT;
        case RAFT_BUSY:
        case RAFT_TOOMANY:
            return HAMR_EBUSY;
        case RAFT_NOTFOUND:
            return HAMR_ENOTFOUND;
        case RAFT_UNAUTHORIZED:
            return HAMR_EPERM;
        case RAFT_NOSPACE:
            return HAMR_ENOSPACE;
        case RAFT_IOERR:
        default:
            /* raft_init can return a bare -1 (RAFT.md 4.6). */
            return HAMR_EIO;
    }
}

/* consensus_check_address - "a.b.c.d:port" or "[IPv6]:port", literals, port 1..65535. */
static int consensus_check_address(const char *address)
{
    struct sockaddr_storage ss;
    return consensus_tcp_parse(address, &ss) == 0 ? 0 : HAMR_EINVAL;
}

/* consensus_kick - run consensus_dispatch on the next loop iteration. */
static void consensus_kick(struct consensus *c)
{
    if (c->closing)
        return; /* consensus_close_finish delivers what is left */
    uv_idle_start(&c->kick, consensus_kick_cb);
}

/* ------------------------------------------------------------------------ */
/* State machine adapter: struct consensus_fsm behind struct raft_fsm (v2).  */

/*
 * consensus_snapshot_due - the applied bytes after which a node that has
 * just started takes its first snapshot: a random point between half and
 * all of snapshot_bytes, so that the nodes of a cluster, which apply the
 * same entries, do not all snapshot at the same moment (each resets its
 * count at its own snapshot, so they stay apart). A snapshot makes a node's
 * log appends wait behind its writes; while only one node snapshots, the
 * other two still commit. Not part of any replicated state.
 */
static size_t consensus_snapshot_due(size_t snapshot_bytes)
{
    uint64_t r = uv_hrtime() ^ ((uint64_t)getpid() << 32);
    r ^= r >> 33; /* a 64-bit finaliser: any bit of the input moves every bit */
    r *= 0xff51afd7ed558ccdull;
    r ^= r >> 33;
    size_t half = snapshot_bytes / 2;
    return snapshot_bytes - (half > 0 ? (size_t)(r % half) : 0);
}

/* consensus_fsm_apply - a committed entry: pass it on, count bytes for the snapshot trigger. */
static int consensus_fsm_apply(struct raft_fsm *rf, const struct raft_buffer *buf, void **result)
{
    struct consensus *c = rf->data;
    *result = NULL;
    int rv = c->fsm.apply(c->fsm.data, buf->base, buf->len, result);
    if (rv != 0) {
        /* raft stops applying at this index and retries later; log it once. */
        if (!c->fsm_failed_logged)
            log_error("consensus event=apply_failed index=%llu err=%s",
                      (unsigned long long)c->raft.last_applied + 1, hamr_strerror(rv));
        c->fsm_failed_logged = true;
        c->failed = true;
        return RAFT_INVALID;
    }
    c->applied_bytes += buf->len;
    if (!c->snapshot_armed && c->applied_bytes > c->snapshot_due) {
        /* raft checks the threshold after this apply batch. */
        raft_set_snapshot_threshold(&c->raft, 1);
        c->snapshot_armed = true;
    }
    return 0;
}

/* consensus_fsm_snapshot - the whole state in one buffer; freed in snapshot_finalize. */
static int consensus_fsm_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct consensus *c = rf->data;
    struct raft_buffer *arr = raft_malloc(sizeof(*arr));
    if (arr == NULL)
        return RAFT_NOMEM;
    uint8_t *data = NULL;
    size_t len = 0;
    int rv = c->fsm.snapshot(c->fsm.data, &data, &len);
    if (rv != 0) {
        /* The trigger stays armed: raft tries again after the next batch. */
        raft_free(arr);
        log_warn("consensus event=snapshot_failed err=%s", hamr_strerror(rv));
        return rv == HAMR_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    }
    arr[0].base = data;
    arr[0].len = len;
    *bufs = arr;
    *n_bufs = 1;
    c->applied_bytes = 0;
    c->snapshot_due = c->cfg.snapshot_bytes;
    c->snapshot_armed = false;
    raft_set_snapshot_threshold(&c->raft, CONSENSUS_THRESHOLD_OFF);
    log_info("consensus event=snapshot index=%llu bytes=%zu",
             (unsigned long long)raft_last_applied(&c->raft), len);
    return 0;
}

/*
 * consensus_fsm_snapshot_view - version 3, on the loop: the FSM's view of
 * the state at this index; the buffers come from consensus_fsm_snapshot_async.
 */
static int consensus_fsm_snapshot_view(struct raft_fsm *rf,
                                       struct raft_buffer *bufs[],
                                       unsigned *n_bufs)
{
    struct consensus *c = rf->data;
    *bufs = NULL;
    *n_bufs = 0;
    uint64_t t0 = uv_hrtime();
    void *view = NULL;
    int rv = c->fsm.snapshot_view(c->fsm.data, &view);
    if (rv != 0) {
        log_warn("consensus event=snapshot_failed err=%s", hamr_strerror(rv));
        return rv == HAMR_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    }
    c->snap.view = view;
    c->snap.status = 0;
    c->snap.len = 0;
    c->snap.index = raft_last_applied(&c->raft);
    c->snap.started_ns = uv_hrtime();
    c->snap.view_ns = c->snap.started_ns - t0;
    c->applied_bytes = 0;
    c->snapshot_due = c->cfg.snapshot_bytes;
    c->snapshot_armed = false;
    raft_set_snapshot_threshold(&c->raft, CONSENSUS_THRESHOLD_OFF);
    return 0;
}

/*
 * consensus_fsm_snapshot_async - version 3, in the thread pool: the view
 * into one buffer. Touches only c->snap (the loop does not until
 * snapshot_finalize) and never logs: the loop reports it.
 */
static int consensus_fsm_snapshot_async(struct raft_fsm *rf,
                                        struct raft_buffer *bufs[],
                                        unsigned *n_bufs)
{
    struct consensus *c = rf->data;
    struct raft_buffer *arr = raft_malloc(sizeof(*arr));
    uint8_t *data = NULL;
    size_t len = 0;
    int rv = arr == NULL ? HAMR_ENOMEM : c->fsm.snapshot_write(c->snap.view, &data, &len);
    c->snap.status = rv;
    if (rv != 0) {
        raft_free(arr);
        return rv == HAMR_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    }
    arr[0].base = data;
    arr[0].len = len;
    *bufs = arr;
    *n_bufs = 1;
    c->snap.len = len;
    return 0;
}

/* consensus_fsm_snapshot_finalize - release the buffers (and, version 3, the view). */
static int consensus_fsm_snapshot_finalize(struct raft_fsm *rf,
                                           struct raft_buffer *bufs[],
                                           unsigned *n_bufs)
{
    struct consensus *c = rf->data;
    if (c->snap.view != NULL) {
        uint64_t ms = (uv_hrtime() - c->snap.started_ns) / 1000000;
        if (c->snap.status != 0)
            log_warn("consensus event=snapshot_failed index=%llu err=%s",
                     (unsigned long long)c->snap.index, hamr_strerror(c->snap.status));
        else
            log_info("consensus event=snapshot index=%llu bytes=%zu view_ms=%.1f write_ms=%llu",
                     (unsigned long long)c->snap.index, c->snap.len, c->snap.view_ns / 1e6,
                     (unsigned long long)ms);
        /* The buffer is the view's: only the array is ours. */
        c->fsm.snapshot_release(c->snap.view);
        c->snap.view = NULL;
        raft_free(*bufs);
        *bufs = NULL;
        *n_bufs = 0;
    }
    if (*bufs != NULL) {
        for (unsigned i = 0; i < *n_bufs; i++)
            raft_free((*bufs)[i].base);
        raft_free(*bufs);
    }
    *bufs = NULL;
    *n_bufs = 0;
    return 0;
}

/* consensus_fsm_restore - replace the state; on success the buffer is ours to free. */
static int consensus_fsm_restore(struct raft_fsm *rf, struct raft_buffer *buf)
{
    struct consensus *c = rf->data;
    int rv = c->fsm.restore(c->fsm.data, buf->base, buf->len);
    if (rv != 0) {
        /* On failure raft keeps ownership and frees the buffer. */
        log_error("consensus event=restore_failed bytes=%zu err=%s", buf->len, hamr_strerror(rv));
        return RAFT_CORRUPT;
    }
    raft_free(buf->base);
    c->applied_bytes = 0;
    log_info("consensus event=restore bytes=%zu", buf->len);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Set-up.                                                                   */

/* consensus_config_defaults - copy cfg, filling zero tunables with the defaults. */
static void consensus_config_defaults(struct consensus_config *dst,
                                      const struct consensus_config *src)
{
    *dst = *src;
    dst->voters = NULL;
    dst->n_voters = 0;
    if (dst->election_timeout_ms == 0)
        dst->election_timeout_ms = CONSENSUS_DEFAULT_ELECTION_MS;
    if (dst->heartbeat_ms == 0)
        dst->heartbeat_ms = CONSENSUS_DEFAULT_HEARTBEAT_MS;
    if (dst->snapshot_bytes == 0)
        dst->snapshot_bytes = CONSENSUS_DEFAULT_SNAPSHOT_BYTES;
    if (dst->snapshot_trailing == 0)
        dst->snapshot_trailing = CONSENSUS_DEFAULT_TRAILING;
    if (dst->segment_size == 0)
        dst->segment_size = CONSENSUS_DEFAULT_SEGMENT;
    if (dst->max_entry == 0)
        dst->max_entry = CONSENSUS_DEFAULT_MAX_ENTRY;
}

/*
 * consensus_port_limits - what a peer's message may claim (RAFT.md 4.5).
 * One entry: the largest the FSM proposes plus an eighth and 1 MiB, the
 * encoding's overhead (as consensus_segment_size allows). One message:
 * libraft 0.15 sends a lagging follower every entry it still holds in one
 * AppendEntries, up to a snapshot interval plus the trailing entries, and a
 * snapshot whole; at least CONSENSUS_PORT_MESSAGE_MIN, which no snapshot of
 * a working relay comes near.
 */
static void consensus_port_limits(const struct consensus_config *cfg,
                                  struct consensus_wire_limits *lim)
{
    uint64_t entry = cfg->max_entry + cfg->max_entry / 8 + (UINT64_C(1) << 20);
    entry = (entry + 7) / 8 * 8;
    if (entry > UINT32_MAX - 7) /* the wire's entry size is a u32 */
        entry = ((uint64_t)UINT32_MAX - 7) / 8 * 8;
    uint64_t message = 2 * (uint64_t)cfg->snapshot_bytes + (cfg->snapshot_trailing + 64) * entry;
    if (message < CONSENSUS_PORT_MESSAGE_MIN)
        message = CONSENSUS_PORT_MESSAGE_MIN;
    lim->max_entry = entry;
    lim->max_message = message;
    lim->max_entries = CONSENSUS_PORT_MAX_ENTRIES;
}

/* consensus_validate - reject a configuration raft would choke on, with a sentence. */
static int consensus_validate(const struct consensus_config *cfg,
                              const struct consensus_fsm *fsm,
                              char *errmsg,
                              size_t errlen)
{
    bool async = fsm != NULL && fsm->snapshot_view != NULL;
    if (fsm == NULL || fsm->apply == NULL || fsm->restore == NULL ||
        (!async && fsm->snapshot == NULL) ||
        (async && (fsm->snapshot_write == NULL || fsm->snapshot_release == NULL))) {
        consensus_errmsg(errmsg, errlen,
                         "state machine: apply, restore, and snapshot (or snapshot_view, "
                         "snapshot_write and snapshot_release) are required");
        return HAMR_EINVAL;
    }
    if (cfg->id == 0) {
        consensus_errmsg(errmsg, errlen, "node id must be > 0");
        return HAMR_EINVAL;
    }
    if (memchr(cfg->address, '\0', sizeof(cfg->address)) == NULL ||
        consensus_check_address(cfg->address) != 0) {
        char shown[CONSENSUS_ADDR_MAX];
        log_printable(shown, sizeof(shown), cfg->address,
                      strnlen(cfg->address, sizeof(cfg->address)));
        consensus_errmsg(
            errmsg, errlen,
            "raft address \"%s\" must be an IP literal with a port, like 10.0.0.1:9101 or "
            "[fd00::1]:9101",
            shown);
        return HAMR_EINVAL;
    }
    if (memchr(cfg->dir, '\0', sizeof(cfg->dir)) == NULL || cfg->dir[0] == '\0') {
        consensus_errmsg(errmsg, errlen, "data directory must be set");
        return HAMR_EINVAL;
    }
    unsigned election =
        cfg->election_timeout_ms ? cfg->election_timeout_ms : CONSENSUS_DEFAULT_ELECTION_MS;
    unsigned heartbeat = cfg->heartbeat_ms ? cfg->heartbeat_ms : CONSENSUS_DEFAULT_HEARTBEAT_MS;
    if (heartbeat >= election) {
        consensus_errmsg(errmsg, errlen,
                         "heartbeat (%u ms) must be below the election timeout (%u ms)", heartbeat,
                         election);
        return HAMR_EINVAL;
    }
    if (cfg->n_voters > CONSENSUS_MAX_MEMBERS || (cfg->n_voters > 0 && cfg->voters == NULL)) {
        consensus_errmsg(errmsg, errlen, "between 0 and %d bootstrap voters are allowed",
                         CONSENSUS_MAX_MEMBERS);
        return HAMR_EINVAL;
    }
    for (size_t i = 0; i < cfg->n_voters; i++) {
        const struct consensus_member *m = &cfg->voters[i];
        if (m->id == 0 || memchr(m->address, '\0', sizeof(m->address)) == NULL ||
            consensus_check_address(m->address) != 0) {
            consensus_errmsg(errmsg, errlen,
                             "voter %zu: id must be > 0 and the address an IP literal with a port",
                             i);
            return HAMR_EINVAL;
        }
    }
    return 0;
}

/* consensus_bootstrap - write cfg->voters as the first configuration of a pristine dir. */
static int consensus_bootstrap(struct consensus *c,
                               const struct consensus_config *cfg,
                               char *errmsg,
                               size_t errlen)
{
    if (cfg->n_voters == 0)
        return 0; /* a node that joins later must not bootstrap (RAFT.md 2.4) */
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    int rv = 0;
    for (size_t i = 0; i < cfg->n_voters && rv == 0; i++)
        rv = raft_configuration_add(&conf, cfg->voters[i].id, cfg->voters[i].address, RAFT_VOTER);
    if (rv != 0) {
        consensus_errmsg(errmsg, errlen, "bootstrap configuration: %s", raft_strerror(rv));
        raft_configuration_close(&conf);
        return consensus_err(rv);
    }
    rv = raft_bootstrap(&c->raft, &conf);
    raft_configuration_close(&conf);
    if (rv == RAFT_CANTBOOTSTRAP) {
        log_info("consensus event=restart dir=%s", c->cfg.dir);
        return 0;
    }
    if (rv != 0) {
        consensus_errmsg(errmsg, errlen, "raft_bootstrap: %s: %s", raft_strerror(rv),
                         raft_errmsg(&c->raft));
        return consensus_err(rv);
    }
    log_info("consensus event=bootstrap voters=%zu dir=%s", cfg->n_voters, c->cfg.dir);
    return 0;
}

/* consensus_new_abort_cb - raft closed after a failed consensus_new: free everything. */
static void consensus_new_abort_cb(struct raft *r)
{
    struct consensus *c = r->data;
    consensus_guard_remove(&c->guard);
    raft_uv_close(&c->io);
    free(c);
}

int consensus_new(uv_loop_t *loop,
                  const struct consensus_config *cfg,
                  const struct consensus_fsm *fsm,
                  struct consensus **out,
                  char *errmsg,
                  size_t errlen)
{
    *out = NULL;
    int rv = consensus_validate(cfg, fsm, errmsg, errlen);
    if (rv != 0)
        return rv;
    if (consensus_crc_check() != 0) {
        consensus_errmsg(errmsg, errlen,
                         "libraft's log checksum differs from hamr's (consensus_crc.c): "
                         "not opening %s with a libraft hamr was not built for",
                         cfg->dir);
        return HAMR_EINVAL;
    }
    rv = fs_mkdirs(cfg->dir, 0750, errmsg, errlen);
    if (rv != 0)
        return rv;

    struct consensus *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        consensus_errmsg(errmsg, errlen, "out of memory");
        return HAMR_ENOMEM;
    }
    c->loop = loop;
    consensus_config_defaults(&c->cfg, cfg);
    c->fsm = *fsm;
    consensus_link_init(&c->inflight);
    consensus_link_init(&c->done);

    struct consensus_wire_limits limits;
    consensus_port_limits(&c->cfg, &limits);
    rv = consensus_tcp_init(&c->transport, loop, &limits, c->cfg.tls);
    if (rv != 0) {
        consensus_errmsg(errmsg, errlen, "raft transport: %s", raft_strerror(rv));
        free(c);
        return consensus_err(rv);
    }
    rv = consensus_tcp_set_bind_address(&c->transport, c->cfg.address);
    if (rv != 0) {
        consensus_errmsg(errmsg, errlen, "raft bind address %s: %s", c->cfg.address,
                         raft_strerror(rv));
        free(c);
        return consensus_err(rv);
    }
    rv = raft_uv_init(&c->io, loop, c->cfg.dir, &c->transport.outer);
    if (rv != 0) {
        consensus_errmsg(errmsg, errlen, "raft_uv_init %s: %s: %s", c->cfg.dir, raft_strerror(rv),
                         c->io.errmsg);
        free(c);
        return consensus_err(rv);
    }
    raft_uv_set_segment_size(&c->io, c->cfg.segment_size);
    raft_uv_set_snapshot_compression(&c->io, false);
    /* Before raft_start, which hands io->start raft's receive callback. */
    consensus_guard_install(&c->guard, &c->io);

    c->raft_fsm.version = 2;
    c->raft_fsm.data = c;
    c->raft_fsm.apply = consensus_fsm_apply;
    c->raft_fsm.snapshot = consensus_fsm_snapshot;
    c->raft_fsm.restore = consensus_fsm_restore;
    c->raft_fsm.snapshot_finalize = consensus_fsm_snapshot_finalize;
    if (c->fsm.snapshot_view != NULL) {
        /* Version 3 (RAFT.md 2.2): 0.15's raft_uv says io version 1 although
         * it implements async_work, and raft_init refuses a version-3 FSM
         * over it; version 2 is what it is. */
        c->io.version = 2;
        c->raft_fsm.version = 3;
        c->raft_fsm.snapshot = consensus_fsm_snapshot_view;
        c->raft_fsm.snapshot_async = consensus_fsm_snapshot_async;
    }

    rv = raft_init(&c->raft, &c->io, &c->raft_fsm, c->cfg.id, c->cfg.address);
    if (rv != 0) {
        consensus_errmsg(errmsg, errlen, "raft_init: %s: %s", raft_strerror(rv),
                         raft_errmsg(&c->raft));
        consensus_guard_remove(&c->guard);
        raft_uv_close(&c->io);
        free(c);
        return consensus_err(rv);
    }
    c->raft.data = c;
    raft_set_pre_vote(&c->raft, true);
    raft_set_election_timeout(&c->raft, c->cfg.election_timeout_ms);
    raft_set_heartbeat_timeout(&c->raft, c->cfg.heartbeat_ms);
    raft_set_snapshot_trailing(&c->raft, c->cfg.snapshot_trailing);
    raft_set_snapshot_threshold(&c->raft, CONSENSUS_THRESHOLD_OFF);
    c->snapshot_due = consensus_snapshot_due(c->cfg.snapshot_bytes);

    rv = consensus_bootstrap(c, cfg, errmsg, errlen);
    if (rv != 0) {
        /* raft owns libuv handles now: c is released on the loop, by the close callback. */
        raft_close(&c->raft, consensus_new_abort_cb);
        return rv;
    }

    uv_timer_init(loop, &c->poll_timer);
    c->poll_timer.data = c;
    uv_idle_init(loop, &c->kick);
    c->kick.data = c;
    *out = c;
    return 0;
}

/* consensus_poll_cb - the periodic look at raft_state(). */
static void consensus_poll_cb(uv_timer_t *t)
{
    consensus_dispatch(t->data);
}

/* consensus_kick_cb - deferred work queued by a raft callback. */
static void consensus_kick_cb(uv_idle_t *idle)
{
    uv_idle_stop(idle);
    consensus_dispatch(idle->data);
}

int consensus_start(struct consensus *c, char *errmsg, size_t errlen)
{
    if (c->closing || c->started) {
        consensus_errmsg(errmsg, errlen, "consensus already started or closing");
        return HAMR_EINVAL;
    }
    int rv = raft_start(&c->raft);
    if (rv != 0) {
        consensus_errmsg(errmsg, errlen, "raft_start: %s: %s", raft_strerror(rv),
                         raft_errmsg(&c->raft));
        return consensus_err(rv);
    }
    c->started = true;
    uv_timer_start(&c->poll_timer, consensus_poll_cb, CONSENSUS_POLL_MS, CONSENSUS_POLL_MS);
    log_info("consensus event=start id=%llu address=%s term=%llu last_index=%llu",
             (unsigned long long)c->cfg.id, c->cfg.address,
             (unsigned long long)c->raft.current_term,
             (unsigned long long)raft_last_index(&c->raft));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Proposals and membership changes.                                        */

/* consensus_req_finish - raft is done with a request: queue its outcome. */
static void consensus_req_finish(struct consensus_req *req, int raft_status, void *result)
{
    struct consensus *c = req->c;
    consensus_link_remove(&req->link);
    req->status = consensus_err(raft_status);
    req->result = raft_status == 0 ? result : NULL;
    consensus_link_push(&c->done, &req->link);
    consensus_kick(c);
}

/* consensus_raft_apply_cb - raft's apply callback; runs inside raft. */
static void consensus_raft_apply_cb(struct raft_apply *apply, int status, void *result)
{
    consensus_req_finish(apply->data, status, result);
}

/* consensus_raft_change_cb - raft's membership change callback; runs inside raft. */
static void consensus_raft_change_cb(struct raft_change *change, int status)
{
    consensus_req_finish(change->data, status, NULL);
}

/* consensus_req_deliver - run a finished request's callback and free it. */
static void consensus_req_deliver(struct consensus_req *req)
{
    if (req->kind == CONSENSUS_REQ_APPLY)
        req->apply_cb(req->arg, req->status, req->result);
    else
        req->change_cb(req->arg, req->status);
    free(req);
}

int consensus_propose(struct consensus *c,
                      uint8_t *buf,
                      size_t len,
                      consensus_apply_cb cb,
                      void *arg)
{
    if (c->closing)
        return HAMR_ESHUTDOWN;
    if (!consensus_is_ready(c))
        return HAMR_ENOTLEADER;
    /* libraft's segment writer needs 8-byte multiples: an unaligned entry is
     * written but cannot be read back at the next start. */
    if (buf == NULL || len == 0 || len % CONSENSUS_ENTRY_ALIGN != 0 || cb == NULL)
        return HAMR_EINVAL;
    struct consensus_req *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return HAMR_ENOMEM;
    req->c = c;
    req->kind = CONSENSUS_REQ_APPLY;
    req->apply_cb = cb;
    req->arg = arg;
    req->raft.apply.data = req;
    consensus_link_init(&req->link);
    struct raft_buffer rb = {.base = buf, .len = len};
    int rv = raft_apply(&c->raft, &req->raft.apply, &rb, 1, consensus_raft_apply_cb);
    if (rv != 0) {
        /* The caller still owns buf (RAFT.md 2.5). */
        free(req);
        return consensus_err(rv);
    }
    consensus_link_push(&c->inflight, &req->link);
    return 0;
}

/* consensus_change_new - a membership request, or NULL with *err set. */
static struct consensus_req *consensus_change_new(struct consensus *c,
                                                  void (*cb)(void *arg, int status),
                                                  void *arg,
                                                  int *err)
{
    if (c->closing) {
        *err = HAMR_ESHUTDOWN;
        return NULL;
    }
    if (!consensus_is_ready(c)) {
        *err = HAMR_ENOTLEADER;
        return NULL;
    }
    if (cb == NULL) {
        *err = HAMR_EINVAL;
        return NULL;
    }
    struct consensus_req *req = calloc(1, sizeof(*req));
    if (req == NULL) {
        *err = HAMR_ENOMEM;
        return NULL;
    }
    req->c = c;
    req->kind = CONSENSUS_REQ_CHANGE;
    req->change_cb = cb;
    req->arg = arg;
    req->raft.change.data = req;
    consensus_link_init(&req->link);
    return req;
}

/* consensus_change_issued - bookkeeping after raft_add/assign/remove returned rv. */
static int consensus_change_issued(struct consensus *c,
                                   struct consensus_req *req,
                                   int rv,
                                   const char *what,
                                   uint64_t id)
{
    if (rv != 0) {
        free(req);
        /* Assigning a role a server already has is RAFT_BADROLE: report it as "exists". */
        return rv == RAFT_BADROLE ? HAMR_EEXIST : consensus_err(rv);
    }
    consensus_link_push(&c->inflight, &req->link);
    log_info("consensus event=%s id=%llu", what, (unsigned long long)id);
    return 0;
}

int consensus_add(struct consensus *c,
                  uint64_t id,
                  const char *address,
                  void (*cb)(void *arg, int status),
                  void *arg)
{
    if (id == 0 || address == NULL || strnlen(address, CONSENSUS_ADDR_MAX) >= CONSENSUS_ADDR_MAX ||
        consensus_check_address(address) != 0)
        return HAMR_EINVAL;
    int err = 0;
    struct consensus_req *req = consensus_change_new(c, cb, arg, &err);
    if (req == NULL)
        return err;
    int rv = raft_add(&c->raft, &req->raft.change, id, address, consensus_raft_change_cb);
    return consensus_change_issued(c, req, rv, "add", id);
}

int consensus_assign(struct consensus *c,
                     uint64_t id,
                     int role,
                     void (*cb)(void *arg, int status),
                     void *arg)
{
    if (id == 0 || (role != CONSENSUS_ROLE_STANDBY && role != CONSENSUS_ROLE_VOTER &&
                    role != CONSENSUS_ROLE_SPARE))
        return HAMR_EINVAL;
    int err = 0;
    struct consensus_req *req = consensus_change_new(c, cb, arg, &err);
    if (req == NULL)
        return err;
    int rv = raft_assign(&c->raft, &req->raft.change, id, role, consensus_raft_change_cb);
    return consensus_change_issued(c, req, rv, "assign", id);
}

int consensus_remove(struct consensus *c, uint64_t id, void (*cb)(void *arg, int status), void *arg)
{
    if (id == 0)
        return HAMR_EINVAL;
    int err = 0;
    struct consensus_req *req = consensus_change_new(c, cb, arg, &err);
    if (req == NULL)
        return err;
    int rv = raft_remove(&c->raft, &req->raft.change, id, consensus_raft_change_cb);
    return consensus_change_issued(c, req, rv, "remove", id);
}

/* ------------------------------------------------------------------------ */
/* Leadership: poll raft_state(), barrier on election, then announce.       */

/* consensus_barrier_cb - the election barrier finished; runs inside raft. */
static void consensus_barrier_cb(struct raft_barrier *req, int status)
{
    struct consensus *c = req->data;
    c->barrier_pending = false;
    if (status == 0)
        c->barrier_ok_term = c->barrier_term;
    else
        log_warn("consensus event=barrier_failed term=%llu err=%s",
                 (unsigned long long)c->barrier_term, raft_strerror(status));
    consensus_kick(c);
}

/* consensus_step_down - leadership is gone (or the term moved on): tell the caller once. */
static void consensus_step_down(struct consensus *c)
{
    bool was_announced = c->announced;
    log_info("consensus event=leader_lost term=%llu now_term=%llu",
             (unsigned long long)c->lead_term, (unsigned long long)c->raft.current_term);
    c->lead_term = 0;
    c->ready = false;
    c->announced = false;
    if (was_announced && c->cfg.on_leader != NULL)
        c->cfg.on_leader(c->cfg.on_leader_arg, false);
}

/* consensus_leadership - derive leader gained / ready / lost from raft's state. */
static void consensus_leadership(struct consensus *c)
{
    int state = raft_state(&c->raft);
    uint64_t term = c->raft.current_term;
    bool leading = state == RAFT_LEADER;

    if (c->lead_term != 0 && (!leading || term != c->lead_term)) {
        consensus_step_down(c);
        if (c->closing)
            return;
    }
    if (!leading)
        return;
    if (c->lead_term == 0) {
        c->lead_term = term;
        log_info("consensus event=leader term=%llu", (unsigned long long)term);
    }
    if (c->ready)
        return;
    if (c->barrier_ok_term == term) {
        c->ready = true;
        c->announced = true;
        log_info("consensus event=ready term=%llu applied=%llu", (unsigned long long)term,
                 (unsigned long long)raft_last_applied(&c->raft));
        if (c->cfg.on_leader != NULL)
            c->cfg.on_leader(c->cfg.on_leader_arg, true);
        return;
    }
    /* 0.15 appends no entry on election: a barrier makes every earlier entry applied. */
    if (c->barrier_pending || uv_now(c->loop) < c->barrier_retry_at)
        return;
    c->barrier.data = c;
    c->barrier_term = term;
    int rv = raft_barrier(&c->raft, &c->barrier, consensus_barrier_cb);
    if (rv != 0) {
        log_warn("consensus event=barrier_failed term=%llu err=%s", (unsigned long long)term,
                 raft_strerror(rv));
        c->barrier_retry_at = uv_now(c->loop) + c->cfg.heartbeat_ms;
        return;
    }
    c->barrier_pending = true;
}

/* ------------------------------------------------------------------------ */
/* Leadership transfer (RAFT.md 7.7): drain, raft_transfer, check, retry.  */

/* consensus_xfer_finish - report the transfer's outcome and accept proposals again. */
static void consensus_xfer_finish(struct consensus *c, int status, uint64_t leader)
{
    void (*cb)(void *, int, uint64_t) = c->xfer.cb;
    void *arg = c->xfer.arg;
    log_info("consensus event=transfer_done target=%llu attempts=%u status=%s leader=%llu",
             (unsigned long long)c->xfer.target, c->xfer.attempts, hamr_strerror(status),
             (unsigned long long)leader);
    c->xfer.state = CONSENSUS_XFER_IDLE;
    c->xfer.cb = NULL;
    c->xfer.arg = NULL;
    if (cb != NULL)
        cb(arg, status, leader);
}

/* consensus_xfer_raft_cb - raft's transfer ended (target leads, or timed out); inside raft. */
static void consensus_xfer_raft_cb(struct raft_transfer *req)
{
    struct consensus *c = req->data;
    c->xfer.raft_done = true;
    consensus_kick(c);
}

/* consensus_xfer_barrier_cb - in-flight applies drained (or failed); inside raft. */
static void consensus_xfer_barrier_cb(struct raft_barrier *req, int status)
{
    struct consensus *c = req->data;
    c->xfer.barrier_done = true;
    c->xfer.barrier_status = status;
    consensus_kick(c);
}

/* consensus_xfer_issue - one raft_transfer attempt. */
static void consensus_xfer_issue(struct consensus *c)
{
    memset(&c->xfer.req, 0, sizeof(c->xfer.req));
    c->xfer.req.data = c;
    c->xfer.raft_done = false;
    c->xfer.attempts++;
    int rv = raft_transfer(&c->raft, &c->xfer.req, c->xfer.target, consensus_xfer_raft_cb);
    if (rv != 0) {
        raft_id leader = 0;
        const char *address = NULL;
        raft_leader(&c->raft, &leader, &address);
        consensus_xfer_finish(c, consensus_err(rv), leader);
        return;
    }
    c->xfer.state = CONSENSUS_XFER_RAFT;
}

/* consensus_xfer_check - after raft's callback: done, retry, or keep waiting for a leader. */
static void consensus_xfer_check(struct consensus *c)
{
    raft_id leader = 0;
    const char *address = NULL;
    raft_leader(&c->raft, &leader, &address);
    uint64_t self = c->cfg.id;
    bool moved = leader != 0 && leader != self;
    if (moved && (c->xfer.target == 0 || leader == c->xfer.target)) {
        consensus_xfer_finish(c, 0, leader);
        return;
    }
    if (moved) {
        /* Another node won: we cannot retry from here. */
        consensus_xfer_finish(c, HAMR_ENOTLEADER, leader);
        return;
    }
    uint64_t now = uv_now(c->loop);
    if (raft_state(&c->raft) == RAFT_LEADER) {
        /* 0.15 never re-sends TimeoutNow: try again, with back-off. */
        if (c->xfer.attempts > CONSENSUS_TRANSFER_RETRIES) {
            consensus_xfer_finish(c, HAMR_ETIMEDOUT, self);
            return;
        }
        if (c->xfer.retry_at == 0)
            c->xfer.retry_at = now + (uint64_t)CONSENSUS_TRANSFER_BACKOFF_MS * c->xfer.attempts;
        if (now >= c->xfer.retry_at) {
            c->xfer.retry_at = 0;
            consensus_xfer_issue(c);
        }
        return;
    }
    /* An election is running: wait for its outcome, within a bound. */
    if (now >= c->xfer.deadline)
        consensus_xfer_finish(c, HAMR_ENOQUORUM, 0);
}

/* consensus_transfer_step - advance the transfer from outside raft's callbacks. */
static void consensus_transfer_step(struct consensus *c)
{
    switch (c->xfer.state) {
        case CONSENSUS_XFER_IDLE:
            return;
        case CONSENSUS_XFER_BARRIER:
            if (!c->xfer.barrier_done)
                return;
            if (c->xfer.barrier_status != 0) {
                consensus_xfer_finish(c, consensus_err(c->xfer.barrier_status), 0);
                return;
            }
            consensus_xfer_issue(c);
            return;
        case CONSENSUS_XFER_RAFT:
            if (!c->xfer.raft_done)
                return;
            c->xfer.state = CONSENSUS_XFER_WAIT;
            c->xfer.retry_at = 0;
            c->xfer.deadline = uv_now(c->loop) + 2 * (uint64_t)c->cfg.election_timeout_ms;
            consensus_xfer_check(c);
            return;
        case CONSENSUS_XFER_WAIT:
            consensus_xfer_check(c);
            return;
    }
}

/* consensus_voter - whether id is a voter in the current configuration. */
static bool consensus_voter(struct consensus *c, uint64_t id)
{
    for (unsigned i = 0; i < c->raft.configuration.n; i++)
        if (c->raft.configuration.servers[i].id == id)
            return c->raft.configuration.servers[i].role == RAFT_VOTER;
    return false;
}

int consensus_transfer(struct consensus *c,
                       uint64_t id,
                       void (*cb)(void *arg, int status, uint64_t leader),
                       void *arg)
{
    if (c->closing)
        return HAMR_ESHUTDOWN;
    if (c->xfer.state != CONSENSUS_XFER_IDLE)
        return HAMR_EBUSY;
    if (!consensus_is_ready(c))
        return HAMR_ENOTLEADER;
    if (id == c->cfg.id || (id != 0 && !consensus_voter(c, id)))
        return HAMR_EINVAL;
    /* Drain first, so that no in-flight apply ends as an ambiguous LEADERSHIPLOST. */
    c->xfer.barrier.data = c;
    c->xfer.barrier_done = false;
    c->xfer.barrier_status = 0;
    int rv = raft_barrier(&c->raft, &c->xfer.barrier, consensus_xfer_barrier_cb);
    if (rv != 0)
        return consensus_err(rv);
    c->xfer.state = CONSENSUS_XFER_BARRIER;
    c->xfer.target = id;
    c->xfer.attempts = 0;
    c->xfer.retry_at = 0;
    c->xfer.cb = cb;
    c->xfer.arg = arg;
    log_info("consensus event=transfer target=%llu", (unsigned long long)id);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Dispatch: everything that calls the caller back runs from here.          */

/* consensus_dispatch - deliver finished requests, then follow leadership and transfer. */
static void consensus_dispatch(struct consensus *c)
{
    while (!c->closing && c->done.next != &c->done) {
        struct consensus_link *l = c->done.next;
        consensus_link_remove(l);
        consensus_req_deliver(hamr_container_of(l, struct consensus_req, link));
    }
    if (c->closing || !c->started)
        return;
    if (raft_state(&c->raft) == RAFT_UNAVAILABLE && !c->failed) {
        c->failed = true;
        log_error("consensus event=unavailable id=%llu errmsg=\"%s\"",
                  (unsigned long long)c->cfg.id, raft_errmsg(&c->raft));
    }
    consensus_leadership(c);
    if (c->closing)
        return;
    consensus_transfer_step(c);
}

/* ------------------------------------------------------------------------ */
/* Queries.                                                                  */

bool consensus_is_ready(struct consensus *c)
{
    return c->ready && !c->closing && c->xfer.state == CONSENSUS_XFER_IDLE &&
           raft_state(&c->raft) == RAFT_LEADER && c->raft.current_term == c->lead_term;
}

uint64_t consensus_term(struct consensus *c)
{
    return c->raft.current_term;
}

uint64_t consensus_applied_index(struct consensus *c)
{
    return c->closing ? 0 : raft_last_applied(&c->raft);
}

void consensus_get_info(struct consensus *c, struct consensus_info *info)
{
    memset(info, 0, sizeof(*info));
    info->failed = c->failed;
    info->port = c->transport.stats;
    info->append_rebased = c->guard.rebased;
    info->append_dropped = c->guard.dropped;
    if (c->closing) {
        /* raft may have released its configuration already. */
        info->state = CONSENSUS_UNAVAILABLE;
        return;
    }
    switch (raft_state(&c->raft)) {
        case RAFT_FOLLOWER:
            info->state = CONSENSUS_FOLLOWER;
            break;
        case RAFT_CANDIDATE:
            info->state = CONSENSUS_CANDIDATE;
            break;
        case RAFT_LEADER:
            info->state = CONSENSUS_LEADER;
            break;
        default:
            info->state = CONSENSUS_UNAVAILABLE;
            break;
    }
    info->ready = consensus_is_ready(c);
    info->term = c->raft.current_term;
    info->commit_index = c->raft.commit_index;
    info->applied_index = raft_last_applied(&c->raft);
    info->last_index = raft_last_index(&c->raft);
    raft_id leader = 0;
    const char *address = NULL;
    raft_leader(&c->raft, &leader, &address);
    info->leader_id = leader;
    if (address != NULL)
        hamr_strlcpy(info->leader_address, address, sizeof(info->leader_address));
    const struct raft_configuration *conf = &c->raft.configuration;
    for (unsigned i = 0; i < conf->n && info->n_members < CONSENSUS_MAX_MEMBERS; i++) {
        struct consensus_member *m = &info->members[info->n_members];
        m->id = conf->servers[i].id;
        hamr_strlcpy(m->address, conf->servers[i].address, sizeof(m->address));
        info->roles[info->n_members] = conf->servers[i].role;
        info->n_members++;
    }
}

size_t consensus_segment_size(uint64_t snapshot_bytes, uint64_t max_entry)
{
    const uint64_t mib = 1024 * 1024;
    uint64_t seg = snapshot_bytes + snapshot_bytes / 8;
    uint64_t least = max_entry + max_entry / 8 + mib;
    if (least < 8 * mib)
        least = 8 * mib;
    if (seg > 1024 * mib)
        seg = 1024 * mib;
    return (size_t)(seg < least ? least : seg);
}

void *consensus_malloc(size_t n)
{
    return raft_malloc(n);
}

void consensus_free(void *p)
{
    raft_free(p);
}

/* ------------------------------------------------------------------------ */
/* Close: raft_close (which closes the transport), then raft_uv_close, handles, free. */

/* consensus_close_finish - last close callback: deliver what is left, then free. */
static void consensus_close_finish(struct consensus *c)
{
    /* Outcomes raft reported (LEADERSHIPLOST on close), in order. */
    while (c->done.next != &c->done) {
        struct consensus_link *l = c->done.next;
        consensus_link_remove(l);
        consensus_req_deliver(hamr_container_of(l, struct consensus_req, link));
    }
    /* Anything raft never called back: it is closed and will not. */
    while (c->inflight.next != &c->inflight) {
        struct consensus_link *l = c->inflight.next;
        consensus_link_remove(l);
        struct consensus_req *req = hamr_container_of(l, struct consensus_req, link);
        req->status = HAMR_ESHUTDOWN;
        req->result = NULL;
        consensus_req_deliver(req);
    }
    if (c->xfer.state != CONSENSUS_XFER_IDLE)
        consensus_xfer_finish(c, HAMR_ESHUTDOWN, 0);
    if (c->announced) {
        c->announced = false;
        if (c->cfg.on_leader != NULL)
            c->cfg.on_leader(c->cfg.on_leader_arg, false);
    }
    void (*closed_cb)(void *) = c->closed_cb;
    void *closed_arg = c->closed_arg;
    log_info("consensus event=closed id=%llu", (unsigned long long)c->cfg.id);
    free(c);
    if (closed_cb != NULL)
        closed_cb(closed_arg);
}

/* consensus_close_step - one of raft, poll_timer and kick has closed. */
static void consensus_close_step(struct consensus *c)
{
    HAMR_ASSERT(c->closes_pending > 0);
    if (--c->closes_pending == 0)
        consensus_close_finish(c);
}

/* consensus_raft_closed_cb - raft and its libuv handles are closed. */
static void consensus_raft_closed_cb(struct raft *r)
{
    struct consensus *c = r->data;
    consensus_guard_remove(&c->guard);
    raft_uv_close(&c->io);
    consensus_close_step(c);
}

/* consensus_handle_closed_cb - poll_timer or kick closed. */
static void consensus_handle_closed_cb(uv_handle_t *h)
{
    consensus_close_step(h->data);
}

/* consensus_close_raft - stop the handles and raft; every close ends in consensus_close_step. */
static void consensus_close_raft(struct consensus *c)
{
    c->closes_pending = 3;
    uv_close((uv_handle_t *)&c->poll_timer, consensus_handle_closed_cb);
    uv_close((uv_handle_t *)&c->kick, consensus_handle_closed_cb);
    /* Fails pending applies, barriers, changes and the transfer synchronously; their
     * callbacks only queue (consensus_kick is off while closing). */
    raft_close(&c->raft, consensus_raft_closed_cb);
}

/* consensus_drain_cb - close raft once no log write is in flight (see the file comment). */
static void consensus_drain_cb(uv_timer_t *t)
{
    struct consensus *c = t->data;
    bool drained = c->raft.last_stored >= raft_last_index(&c->raft);
    if (!drained && uv_now(c->loop) < c->drain_deadline)
        return;
    if (!drained)
        log_warn("consensus event=close_undrained last_stored=%llu last_index=%llu",
                 (unsigned long long)c->raft.last_stored,
                 (unsigned long long)raft_last_index(&c->raft));
    uv_timer_stop(t);
    consensus_close_raft(c);
}

void consensus_close(struct consensus *c, void (*closed_cb)(void *arg), void *arg)
{
    if (c->closing)
        return;
    c->closing = true;
    c->ready = false;
    c->closed_cb = closed_cb;
    c->closed_arg = arg;
    log_info("consensus event=close id=%llu in_flight=%s", (unsigned long long)c->cfg.id,
             c->inflight.next != &c->inflight ? "yes" : "no");
    uv_idle_stop(&c->kick);
    if (!c->started) {
        consensus_close_raft(c);
        return;
    }
    /* New work is refused from here on; let raft finish writing what it has. */
    c->drain_deadline = uv_now(c->loop) + CONSENSUS_CLOSE_DRAIN_MS;
    uv_timer_start(&c->poll_timer, consensus_drain_cb, 0, CONSENSUS_CLOSE_POLL_MS);
}
