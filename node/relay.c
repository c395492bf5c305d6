/*
 * relay.c - the wiring of one hamr node: raft's state machine adapter, what
 * the proposer needs from raft, the node directory and the peer client,
 * housekeeping (free space, deadlines, NodeInfo, the cluster level), start
 * and stop. The acceptance path is in relay_accept.c, proposals in
 * proposer.c, scheduling and delivery in relay_sched.c, the control verbs in
 * relay_ctl.c.
 *
 * Accepting (any node):
 *   smtpd session -> relay_sink_submit -> Entry{Enqueue} -> proposer_submit
 *   -> leader: consensus_propose; follower: peer channel to the leader
 *   -> (majority fsync, apply) -> the session replies 250.
 *   Not leader / leadership lost / timeout / refused: see proposer.c for how
 *   each is retried or resolved by queue id, and what the session is told.
 *
 * Applying (every node): relay_fsm_apply hands each committed entry to the
 *   queue state machine. An entry the queue cannot decode or does not know is
 *   never skipped: the node logs it and stops (relay_fail).
 *
 * Scheduling (leader only, after the election barrier): relay_sched.c.
 *
 * Failure modes: proposal timeout (451, the entry may still commit: the
 *   client's retry is a duplicate at worst); low disk (452 at MAIL); the
 *   queue refusing an entry (fatal, node stops).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "consensus/consensus.h"
#include "net/smtpc.h"
#include "net/smtpd.h"
#include "net/smtpd_auth.h"
#include "net/smtpd_rcptmap.h"
#include "net/smtpd_server.h"
#include "node/config.h"
#include "node/control.h"
#include "node/peer.h"
#include "node/proposer.h"
#include "node/relay.h"
#include "node/relay_internal.h"

/* relay_now_ms - wall clock in ms: timestamps of proposed entries. */
uint64_t relay_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* relay_fail - a fatal error: log it and stop the node (systemd restarts it). */
void relay_fail(struct relay *r, const char *why)
{
    if (r->failed)
        return;
    r->failed = true;
    log_error("fatal reason=\"%s\" action=stopping", why);
    uv_stop(r->loop);
}

/* ---------------------------------------------------------------------------
 * The state machine adapter: consensus <-> queue.
 * ------------------------------------------------------------------------- */

static void relay_check_disk(struct relay *r);

/* relay_fsm_apply - one committed entry into the queue. result: status or 1 (duplicate). */
static int relay_fsm_apply(void *data, const uint8_t *buf, size_t len, void **result)
{
    struct relay *r = data;
    struct queue_apply_result res;
    int rv = queue_apply(r->queue, buf, len, &res);
    if (rv != 0) {
        /* Refuse loudly, never skip: raft stops applying at this index. */
        char why[160];
        snprintf(why, sizeof(why), "cannot apply log entry: %s (newer hamr version?)",
                 hamr_strerror(rv));
        relay_fail(r, why);
        return rv;
    }
    *result = (void *)(intptr_t)(res.status != 0 ? res.status : (res.duplicate ? 1 : 0));
    relay_sched_kick(r); /* new mail, or a recipient done: there may be work */
    /* Between the once-a-second checks, look at free space again after a
     * quarter of a log segment: a follower writes whatever the leader sends. */
    r->applied_unchecked += len;
    if (r->applied_unchecked >= r->disk_floor / 8)
        relay_check_disk(r);
    return 0;
}

/* relay_fsm_snapshot - the whole queue for raft. */
static int relay_fsm_snapshot(void *data, uint8_t **buf, size_t *len)
{
    struct relay *r = data;
    return queue_snapshot(r->queue, consensus_malloc, buf, len);
}

/* relay_fsm_restore - replace the queue from a snapshot. */
static int relay_fsm_restore(void *data, const uint8_t *buf, size_t len)
{
    struct relay *r = data;
    int rv = queue_restore(r->queue, buf, len);
    if (rv != 0)
        log_error("snapshot restore failed error=\"%s\"", hamr_strerror(rv));
    return rv;
}

/* ---------------------------------------------------------------------------
 * What the proposer (node/proposer.c) needs: raft, the leader's peer
 * address from the node directory, the peer client, the applied queue.
 * ------------------------------------------------------------------------- */

static uint64_t relay_prop_now(void *data)
{
    struct relay *r = data;
    return uv_now(r->loop);
}

static bool relay_prop_is_leader(void *data)
{
    struct relay *r = data;
    return consensus_is_ready(r->cons);
}

static uint64_t relay_prop_leader_id(void *data)
{
    struct relay *r = data;
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    return info.leader_id;
}

/* relay_prop_leader_addr - the peer address leader published in its NodeInfo. */
static int relay_prop_leader_addr(void *data, uint64_t leader, char *addr, size_t addrlen)
{
    struct relay *r = data;
    const struct queue_node *n = queue_node_find(r->queue, leader);
    if (leader == r->cfg->node_id || n == NULL || n->peer_address[0] == '\0' || r->peer_cli == NULL)
        return HAMR_ENOTFOUND;
    hamr_strlcpy(addr, n->peer_address, addrlen);
    return 0;
}

static int relay_prop_append(void *data, uint8_t *buf, size_t len, proposer_raft_cb cb, void *arg)
{
    struct relay *r = data;
    return consensus_propose(r->cons, buf, len, cb, arg);
}

static int relay_prop_forward(void *data,
                              const char *addr,
                              const Hamr__PeerMsg *msg,
                              uint64_t timeout_ms,
                              proposer_reply_cb cb,
                              void *arg)
{
    struct relay *r = data;
    return peer_client_call(r->peer_cli, addr, msg, timeout_ms, cb, arg);
}

static void relay_prop_reply(void *data, void *call, const Hamr__PeerResult *res)
{
    (void)data;
    peer_reply(call, res);
}

static bool relay_prop_committed(void *data, const char *id)
{
    struct relay *r = data;
    return queue_contains(r->queue, id);
}

/* relay_prop_check - a forwarded entry must decode here (else every node would refuse it). */
static int relay_prop_check(void *data, const uint8_t *entry, size_t len, uint64_t from_node)
{
    (void)data;
    (void)from_node;
    Hamr__Entry *e = NULL;
    int rv = proto_entry_unpack(entry, len, &e);
    if (rv == 0)
        hamr__entry__free_unpacked(e, NULL);
    return rv;
}

/* relay_prop_new - the node's proposer. */
static struct proposer *relay_prop_new(struct relay *r)
{
    struct proposer_ops ops = {
        .data = r,
        .now = relay_prop_now,
        .is_leader = relay_prop_is_leader,
        .leader_id = relay_prop_leader_id,
        .leader_addr = relay_prop_leader_addr,
        .alloc = consensus_malloc,
        .free = consensus_free,
        .append = relay_prop_append,
        .forward = relay_prop_forward,
        .reply = relay_prop_reply,
        .committed = relay_prop_committed,
        .check = relay_prop_check,
    };
    struct proposer_config pc = {
        .max_inflight = RELAY_MAX_INFLIGHT,
        .no_leader_ms = 3ull * r->cfg->election_timeout_ms, /* this node is cut off */
        .serve_timeout_ms = r->cfg->proposal_timeout_ms,
    };
    return proposer_new(&ops, &pc);
}

int relay_propose(struct relay *r, Hamr__Entry *e, uint64_t timeout_ms, proposer_cb cb, void *arg)
{
    e->timestamp_ms = e->timestamp_ms ? e->timestamp_ms : relay_now_ms();
    return proposer_send_entry(r->prop, e, timeout_ms, cb, arg);
}

/* ---------------------------------------------------------------------------
 * Housekeeping: free space, proposal deadlines.
 * ------------------------------------------------------------------------- */

/*
 * relay_check_disk - free bytes on the data directory's file system. Below
 * disk_soft MAIL is refused (and a leader hands leadership on); below
 * disk_floor the node stops: libraft 0.15 cannot recover from a log write
 * that fails for lack of space (a follower then loses entries from its log
 * without noticing, a leader crashes), so it must never get that far. A
 * restart refuses to start until there is room again.
 */
static void relay_check_disk(struct relay *r)
{
    struct statvfs sv;
    r->applied_unchecked = 0;
    if (statvfs(r->cfg->data_dir, &sv) != 0)
        return;
    uint64_t free_now = (uint64_t)sv.f_bavail * sv.f_frsize;
    if (free_now < r->disk_soft && r->free_bytes >= r->disk_soft)
        log_warn("disk low free=%" PRIu64 " limit=%" PRIu64 " action=refusing mail", free_now,
                 r->disk_soft);
    r->free_bytes = free_now;
    if (free_now < r->disk_floor) {
        char why[200];
        snprintf(why, sizeof(why),
                 "disk full: %" PRIu64 " MiB free, below two log segments (%" PRIu64
                 " MiB); stopping before a raft log write fails",
                 free_now >> 20, r->disk_floor >> 20);
        relay_fail(r, why);
    }
}

/* relay_disk_transfer_done - a leader low on disk handed leadership on (or not). */
static void relay_disk_transfer_done(void *arg, int status, uint64_t leader)
{
    (void)arg;
    if (status != 0)
        log_warn("disk low: leadership not handed on error=\"%s\"", hamr_strerror(status));
    else
        log_info("disk low: leadership handed to node=%" PRIu64, leader);
}

/* relay_disk_step_aside - a leader below min_free hands leadership on: libraft
 * 0.15 crashes when a leader's log append fails for lack of space, and the
 * leader keeps appending what followers forward even while it refuses MAIL. */
static void relay_disk_step_aside(struct relay *r)
{
    if (r->stopping || r->free_bytes >= r->disk_soft || !consensus_is_ready(r->cons))
        return;
    if (consensus_transfer(r->cons, 0, relay_disk_transfer_done, r) == 0)
        log_warn("disk low free=%" PRIu64 " limit=%" PRIu64 " action=transferring leadership",
                 r->free_bytes, r->disk_soft);
}

/* relay_housekeeping - once a second. */
static void relay_housekeeping(uv_timer_t *t)
{
    struct relay *r = t->data;
    relay_check_disk(r);
    relay_disk_step_aside(r);
    proposer_expire(r->prop);
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (info.failed)
        relay_fail(r, "raft became unavailable (internal error)");
}

/* ---------------------------------------------------------------------------
 * Start and stop.
 * ------------------------------------------------------------------------- */

/* relay_node_info_done - our NodeInfo committed (followers can forward to us). */
static void relay_node_info_done(void *arg, int status, intptr_t result)
{
    struct relay *r = arg;
    r->node_info_in_flight = false;
    if (status == 0 && result == 0) {
        r->node_info_boot_done = true;
        r->node_info_draining = r->node_info_sent_draining;
        if (r->node_info_sent_ready)
            r->node_info_term = r->node_info_sent_term;
    } else
        log_warn("node info not committed error=\"%s\"",
                 hamr_strerror(status ? status : (int)result));
}

/*
 * relay_publish_node_info - write our addresses: once after start (through
 * the leader), so that followers can name us the moment we win an election,
 * and again by a leader once per term.
 */
static void relay_publish_node_info(struct relay *r)
{
    if (r->node_info_in_flight || r->stopping)
        return;
    bool ready = consensus_is_ready(r->cons);
    uint64_t term = consensus_term(r->cons);
    bool need = !r->node_info_boot_done || (ready && r->node_info_term != term) ||
                r->node_info_draining != r->draining;
    if (!need || !proposer_leader_known(r->prop))
        return;
    r->node_info_sent_ready = ready;
    r->node_info_sent_term = term;
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    ni.node_id = r->cfg->node_id;
    ni.peer_address = r->peer_address;
    ni.control_address = r->control_address;
    ni.version = RELAY_VERSION;
    ni.format_version_max = PROTO_FORMAT_VERSION_MAX;
    ni.draining = r->draining;
    r->node_info_sent_draining = r->draining;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    e.node_info = &ni;
    if (relay_propose(r, &e, r->cfg->proposal_timeout_ms, relay_node_info_done, r) == 0)
        r->node_info_in_flight = true;
}

/* relay_level_done - a ClusterLevel entry committed (or not). */
static void relay_level_done(void *arg, int status, intptr_t result)
{
    struct relay *r = arg;
    r->level_in_flight = false;
    if (status != 0 || result < 0)
        log_warn("cluster level not raised error=\"%s\"",
                 hamr_strerror(status ? status : (int)result));
    else
        log_info("cluster feature level is now %u", queue_cluster_level(r->queue));
}

/*
 * relay_raise_level - leader: once every voter has published a NodeInfo
 * saying it can apply format N, commit cluster level N. Entry kinds added
 * after format 1 are written only at a level that allows them, so a node
 * that is not yet upgraded never meets one (rolling upgrades).
 */
static void relay_raise_level(struct relay *r)
{
    if (r->level_in_flight || r->stopping || !consensus_is_ready(r->cons) ||
        r->node_info_term != consensus_term(r->cons))
        return;
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    uint64_t voters[CONSENSUS_MAX_MEMBERS];
    size_t n = 0;
    for (size_t i = 0; i < info.n_members; i++)
        if (info.roles[i] == CONSENSUS_ROLE_VOTER)
            voters[n++] = info.members[i].id;
    uint32_t possible = queue_cluster_level_possible(r->queue, voters, n);
    if (possible > PROTO_FORMAT_VERSION_MAX)
        possible = PROTO_FORMAT_VERSION_MAX;
    if (possible <= queue_cluster_level(r->queue))
        return;
    Hamr__ClusterLevel cl = HAMR__CLUSTER_LEVEL__INIT;
    cl.level = possible;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_CLUSTER_LEVEL;
    e.cluster_level = &cl;
    if (relay_propose(r, &e, r->cfg->proposal_timeout_ms, relay_level_done, r) == 0)
        r->level_in_flight = true;
}

/* relay_retry_tick - every RELAY_RETRY_MS: waiting submits, node info, deadlines. */
static void relay_retry_tick(uv_timer_t *t)
{
    struct relay *r = t->data;
    relay_publish_node_info(r);
    relay_raise_level(r);
    proposer_tick(r->prop);
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (info.leader_id != r->last_leader_id) {
        if (info.leader_id != 0)
            metrics_inc(r->metrics, METRICS_RAFT_LEADER_CHANGES);
        r->last_leader_id = info.leader_id;
    }
}

/* relay_drain_transfer_done - a draining leader handed leadership on (or not). */
static void relay_drain_transfer_done(void *arg, int status, uint64_t leader)
{
    (void)arg;
    if (status != 0)
        log_warn("draining leader could not transfer leadership error=\"%s\"",
                 hamr_strerror(status));
    else
        log_info("draining leader handed leadership to node=%" PRIu64, leader);
}

/* relay_on_leader - leadership gained (after the barrier) or lost. */
static void relay_on_leader(void *arg, bool leader)
{
    struct relay *r = arg;
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    log_info("leadership %s term=%" PRIu64, leader ? "gained" : "lost", info.term);
    if (leader)
        relay_publish_node_info(r);
    if (leader && r->draining) {
        /* Elected while draining (raft 0.15 has no way to keep a node from
         * standing): hand leadership on again. */
        log_info("draining node elected: transferring leadership");
        consensus_transfer(r->cons, 0, relay_drain_transfer_done, r);
    }
}

/* relay_boot_id - a random id for this process: leases name it. */
static void relay_boot_id(char out[33])
{
    uint8_t raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        uint64_t t = relay_now_ms() ^ ((uint64_t)getpid() << 32);
        memcpy(raw, &t, sizeof(t));
        memcpy(raw + 8, &t, sizeof(t));
    }
    for (size_t i = 0; i < sizeof(raw); i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* relay_observe_session - an SMTP session started: count it. */
static void relay_observe_session(void *data)
{
    struct relay *r = data;
    metrics_inc(r->metrics, METRICS_SESSIONS_TOTAL);
}

/* relay_observe_reply - a 4xx/5xx SMTP reply went out: count it by code. */
static void relay_observe_reply(void *data, int code)
{
    struct relay *r = data;
    metrics_hamr_reject(r->metrics, code);
}

/* relay_start_failed_closed - the last handle of a failed start closed: free. */
static void relay_start_failed_closed(uv_handle_t *h)
{
    struct relay *r = h->data;
    r->prop = proposer_free(r->prop);
    r->queue = queue_free(r->queue);
    r->metrics = metrics_free(r->metrics);
    free(r);
}

int relay_start(uv_loop_t *loop,
                const struct hamr_config *cfg,
                struct relay **out,
                char *err,
                size_t errlen)
{
    struct relay *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return HAMR_ENOMEM;
    }
    r->loop = loop;
    r->cfg = cfg;
    relay_boot_id(r->boot_id);
    /* Start counters from random points so ids of successive boots differ. */
    uint64_t seed;
    if (RAND_bytes((unsigned char *)&seed, sizeof(seed)) != 1)
        seed = relay_now_ms();
    r->id_counter = seed & 0xFFFFF;
    r->lease_counter = seed & 0xFFFFFFFF00000000ull;
    r->queue = queue_new();
    if (r->queue == NULL) {
        snprintf(err, errlen, "out of memory");
        free(r);
        return HAMR_ENOMEM;
    }

    if (metrics_hamr_new(RELAY_VERSION, &r->metrics) != 0) {
        snprintf(err, errlen, "out of memory");
        queue_free(r->queue);
        free(r);
        return HAMR_ENOMEM;
    }

    /* Before raft starts: replaying the log applies entries, which kick the scheduler. */
    uv_timer_init(loop, &r->kick_timer);
    r->kick_timer.data = r;

    struct consensus_config cc = {0};
    cc.id = cfg->node_id;
    int an = snprintf(cc.address, sizeof(cc.address), "%.48s:%u", cfg->listen_raft.host,
                      (unsigned)cfg->listen_raft.port);
    if (an < 0 || (size_t)an >= sizeof(cc.address)) {
        snprintf(err, errlen, "raft address too long");
        uv_close((uv_handle_t *)&r->kick_timer, relay_start_failed_closed);
        return HAMR_EINVAL;
    }
    snprintf(cc.dir, sizeof(cc.dir), "%s", cfg->data_dir);
    cc.voters = cfg->voters;
    cc.n_voters = cfg->n_voters;
    cc.election_timeout_ms = cfg->election_timeout_ms;
    cc.heartbeat_ms = cfg->heartbeat_ms;
    cc.snapshot_bytes = cfg->snapshot_bytes;
    cc.snapshot_trailing = 128;
    /* A snapshot rolls the open segment anyway, and every roll stalls the
     * loop (libraft's io_destroy on the loop thread: 30-40 ms). Segments a
     * little larger than the snapshot interval roll once per snapshot and
     * never in between. At most 1 GiB; at least 8 MiB and room for the
     * largest message (one entry never spans segments). */
    const uint64_t mib = 1024 * 1024;
    uint64_t seg = cfg->snapshot_bytes + cfg->snapshot_bytes / 8;
    uint64_t least = cfg->smtpd.message_size_limit + cfg->smtpd.message_size_limit / 8 + mib;
    if (least < 8 * mib)
        least = 8 * mib;
    cc.segment_size = (size_t)(seg > 1024 * mib ? 1024 * mib : seg < least ? least : seg);
    r->disk_floor = 2 * (uint64_t)cc.segment_size;
    r->disk_soft = cfg->min_free_bytes + r->disk_floor;
    struct statvfs sv;
    if (statvfs(cfg->data_dir, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize < r->disk_floor) {
        snprintf(err, errlen,
                 "data directory: %llu MiB free, hamrd needs at least %llu MiB (two log "
                 "segments) to run; free some space first",
                 (unsigned long long)(((uint64_t)sv.f_bavail * sv.f_frsize) >> 20),
                 (unsigned long long)(r->disk_floor >> 20));
        uv_close((uv_handle_t *)&r->kick_timer, relay_start_failed_closed);
        return HAMR_ENOSPACE;
    }
    cc.on_leader = relay_on_leader;
    cc.on_leader_arg = r;
    struct consensus_fsm fsm = {
        .data = r,
        .apply = relay_fsm_apply,
        .snapshot = relay_fsm_snapshot,
        .restore = relay_fsm_restore,
    };
    int rv = consensus_new(loop, &cc, &fsm, &r->cons, err, errlen);
    if (rv != 0)
        goto fail_queue;
    r->prop = relay_prop_new(r);
    if (r->prop == NULL) {
        snprintf(err, errlen, "out of memory");
        rv = HAMR_ENOMEM;
        goto fail_cons;
    }
    rv = consensus_start(r->cons, err, errlen);
    if (rv != 0)
        goto fail_cons;
    relay_check_disk(r); /* the data directory exists now */

    r->pool = smtpc_pool_new(loop, &cfg->smtpc);
    if (r->pool == NULL) {
        snprintf(err, errlen, "out of memory");
        rv = HAMR_ENOMEM;
        goto fail_cons;
    }
    struct smtpd_sink sink = {
        .data = r,
        .new_id = relay_sink_new_id,
        .check_mail = relay_sink_check_mail,
        .submit = relay_sink_submit,
    };
    /* The sessions' policy: the config's, plus the credentials table (AUTH). */
    r->policy = cfg->smtpd;
    r->policy.observer.data = r;
    r->policy.observer.session = relay_observe_session;
    r->policy.observer.reply = relay_observe_reply;
    if (cfg->auth_file[0] != '\0') {
        rv = smtpd_auth_new(cfg->auth_file, &r->auth, err, errlen);
        if (rv != 0)
            goto fail_pool;
        r->policy.auth = r->auth;
    }
    if (cfg->relay_recipients[0] != '\0') {
        rv = smtpd_rcptmap_new(cfg->relay_recipients, &r->rcptmap, err, errlen);
        if (rv != 0)
            goto fail_pool;
        r->policy.rcptmap = r->rcptmap;
    }
    rv = smtpd_server_new(loop, cfg->listen_smtp.host, cfg->listen_smtp.port, &r->policy, &sink,
                          cfg->max_sessions, &r->smtpd, err, errlen);
    if (rv != 0)
        goto fail_pool;
    smtpd_server_set_greet_delay(r->smtpd, cfg->greet_delay_ms);
    smtpd_server_set_proxy(r->smtpd, cfg->proxy_protocol, cfg->proxy_networks,
                           cfg->n_proxy_networks, cfg->proxy_timeout_ms);
    struct smtpd_limits_config lim = {
        .conn_limit = cfg->client_connection_limit,
        .conn_rate = cfg->client_connection_rate,
        .auth_rate = cfg->client_auth_rate,
        .exempt = cfg->limit_exempt_networks, /* borrowed: cfg outlives the server */
        .n_exempt = cfg->n_limit_exempt_networks,
    };
    smtpd_server_set_limits(r->smtpd, &lim);
    rv = smtpd_server_set_tls(r->smtpd, cfg->tls_cert_file, cfg->tls_key_file, err, errlen);
    if (rv != 0)
        goto fail_smtpd;
    struct control_handler handler = {.data = r, .handle = relay_ctl_handle};
    rv = control_new(loop, cfg->listen_control.host, cfg->listen_control.port, &handler,
                     &r->control, err, errlen);
    if (rv != 0)
        goto fail_smtpd;
    snprintf(r->control_address, sizeof(r->control_address), "%.48s:%u", cfg->listen_control.host,
             (unsigned)cfg->listen_control.port);
    if (cfg->listen_peer.host[0] != '\0') {
        struct peer_handler ph = {.data = r, .request = relay_peer_request};
        rv = peer_server_new(loop, cfg->listen_peer.host, cfg->listen_peer.port, &ph, &r->peer_srv,
                             err, errlen);
        if (rv != 0)
            goto fail_control;
        snprintf(r->peer_address, sizeof(r->peer_address), "%.48s:%u", cfg->listen_peer.host,
                 (unsigned)cfg->listen_peer.port);
        r->peer_cli = peer_client_new(loop, cfg->node_id, RELAY_VERSION);
        if (r->peer_cli == NULL) {
            snprintf(err, errlen, "out of memory");
            rv = HAMR_ENOMEM;
            goto fail_peer;
        }
    }

    if (cfg->listen_http.host[0] != '\0') {
        struct http_handler hh = {
            .data = r,
            .ready = relay_http_ready,
            .metrics = r->metrics,
            .source = {.data = r, .fill = relay_metrics_fill},
        };
        rv = http_new(loop, cfg->listen_http.host, cfg->listen_http.port, &hh, &r->http, err,
                      errlen);
        if (rv != 0)
            goto fail_peer_client;
    }

    uv_timer_init(loop, &r->stop_timer);
    r->stop_timer.data = r;
    uv_timer_init(loop, &r->retry_timer);
    r->retry_timer.data = r;
    uv_timer_start(&r->retry_timer, relay_retry_tick, RELAY_RETRY_MS, RELAY_RETRY_MS);
    uv_timer_init(loop, &r->sched_timer);
    r->sched_timer.data = r;
    uv_timer_start(&r->sched_timer, relay_sched_tick, cfg->scan_interval_ms, cfg->scan_interval_ms);
    uv_timer_init(loop, &r->housekeeping_timer);
    r->housekeeping_timer.data = r;
    uv_timer_start(&r->housekeeping_timer, relay_housekeeping, 1000, 1000);
    log_info("started node=%" PRIu64 " smtp=%s:%u raft=%s peer=%s control=%s boot=%s", cfg->node_id,
             cfg->listen_smtp.host, (unsigned)cfg->listen_smtp.port, cc.address,
             r->peer_address[0] ? r->peer_address : "off", r->control_address, r->boot_id);
    *out = r;
    return 0;

    /* Failures during start: close what was opened, synchronously enough for
     * the caller to exit; the loop is run once more by the caller. */
fail_peer_client:
    if (r->peer_cli)
        peer_client_close(r->peer_cli, NULL, NULL);
fail_peer:
    if (r->peer_srv)
        peer_server_close(r->peer_srv, NULL, NULL);
fail_control:
    control_close(r->control, NULL, NULL);
fail_smtpd:
    smtpd_server_close(r->smtpd, NULL, NULL);
fail_pool:
    r->auth = smtpd_auth_free(r->auth);
    r->rcptmap = smtpd_rcptmap_free(r->rcptmap);
    smtpc_pool_close(r->pool, NULL, NULL);
fail_cons:
    consensus_close(r->cons, NULL, NULL);
    r->cons = NULL;
fail_queue:
    /* r is freed once its handle is closed (hamrd runs the loop once more). */
    uv_close((uv_handle_t *)&r->kick_timer, relay_start_failed_closed);
    return rv;
}

void relay_reload(struct relay *r)
{
    if (r->stopping)
        return;
    /* The TLS certificate and key (renewed certificates); on failure the old
     * ones stay in use and the reason is logged. */
    if (smtpd_server_reload_tls(r->smtpd) == 0)
        log_info("reload done");
    char aerr[512];
    if (r->auth != NULL && smtpd_auth_reload(r->auth, aerr, sizeof(aerr)) != 0)
        log_error("reload of the credentials file failed: %s (the old one stays in use)", aerr);
    if (r->rcptmap != NULL && smtpd_rcptmap_reload(r->rcptmap, aerr, sizeof(aerr)) != 0)
        log_error("reload of the relay recipient map failed: %s (the old one stays in use)", aerr);
}

bool relay_failed(const struct relay *r)
{
    return r->failed;
}

/* relay_stop_step - one part finished closing; free when all have. */
static void relay_stop_step(void *arg)
{
    struct relay *r = arg;
    HAMR_ASSERT(r->stop_pending > 0);
    if (--r->stop_pending > 0)
        return;
    void (*done)(void *) = r->stop_done;
    void *done_arg = r->stop_arg;
    r->prop = proposer_free(r->prop); /* after raft and the peer client answered it all */
    r->queue = queue_free(r->queue);
    r->metrics = metrics_free(r->metrics); /* after the HTTP listener, which borrows it */
    r->auth = smtpd_auth_free(r->auth);    /* after the SMTP server, whose sessions borrow it */
    r->rcptmap = smtpd_rcptmap_free(r->rcptmap); /* likewise */
    free(r);
    if (done)
        done(done_arg);
}

/* relay_stop_handle_closed - a relay timer closed. */
static void relay_stop_handle_closed(uv_handle_t *h)
{
    relay_stop_step(h->data);
}

/* relay_stop_after_pool - the pool is closed: now close raft (which fails proposals). */
static void relay_stop_after_pool(void *arg)
{
    struct relay *r = arg;
    consensus_close(r->cons, relay_stop_step, r);
    relay_stop_step(r);
}

/* relay_stop_now - close everything: the second half of relay_stop. */
static void relay_stop_now(struct relay *r)
{
    if (r->stopping)
        return;
    r->stopping = true;
    log_info("stopping node=%" PRIu64 " deliveries=%zu", r->cfg->node_id, r->n_deliveries);
    /* Count: smtpd, control, 5 timers, pool, raft (closed after the pool),
     * and the peer server and client when there are. */
    r->stop_pending = 9 + (r->peer_srv ? 1 : 0) + (r->peer_cli ? 1 : 0) + (r->http ? 1 : 0);
    uv_timer_stop(&r->stop_timer);
    uv_close((uv_handle_t *)&r->stop_timer, relay_stop_handle_closed);
    if (r->http)
        http_close(r->http, relay_stop_step, r);
    uv_timer_stop(&r->kick_timer);
    uv_close((uv_handle_t *)&r->kick_timer, relay_stop_handle_closed);
    uv_timer_stop(&r->sched_timer);
    uv_timer_stop(&r->housekeeping_timer);
    uv_timer_stop(&r->retry_timer);
    uv_close((uv_handle_t *)&r->sched_timer, relay_stop_handle_closed);
    uv_close((uv_handle_t *)&r->housekeeping_timer, relay_stop_handle_closed);
    uv_close((uv_handle_t *)&r->retry_timer, relay_stop_handle_closed);
    /* Submits waiting for a leader give up now (their sessions answer 421). */
    proposer_stop(r->prop);
    smtpd_server_close(r->smtpd, relay_stop_step, r);
    control_close(r->control, relay_stop_step, r);
    if (r->peer_srv)
        peer_server_close(r->peer_srv, relay_stop_step, r);
    if (r->peer_cli)
        peer_client_close(r->peer_cli, relay_stop_step, r);
    smtpc_pool_close(r->pool, relay_stop_after_pool, r);
}

/* relay_stop_wait_tick - while stopping gently: go on once nothing is left in flight. */
static void relay_stop_wait_tick(uv_timer_t *t)
{
    struct relay *r = t->data;
    uint64_t waited = uv_now(r->loop) - r->stop_started;
    bool idle =
        r->n_deliveries == 0 && !proposer_busy(r->prop) && smtpd_server_sessions(r->smtpd) == 0;
    if (!r->stop_transferring && (idle || waited >= RELAY_STOP_GRACE_MS))
        relay_stop_now(r);
}

/* relay_stop_transfer_done - leadership handed on (or not): now let work finish. */
static void relay_stop_transfer_done(void *arg, int status, uint64_t leader)
{
    struct relay *r = arg;
    r->stop_transferring = false;
    if (status == 0)
        log_info("stopping: leadership handed to node=%" PRIu64, leader);
    else
        log_warn("stopping: leadership not handed on error=\"%s\"", hamr_strerror(status));
}

/*
 * relay_stop - a gentle stop (SIGTERM): new SMTP sessions get 421, a leader
 * hands leadership to another voter, deliveries and submits in flight get up
 * to RELAY_STOP_GRACE_MS to finish (their outcomes reach the new leader), then
 * everything is closed (relay_stop_now). A second call stops at once.
 */
void relay_stop(struct relay *r, void (*done)(void *arg), void *arg)
{
    if (r->stopping)
        return;
    if (r->stop_done != NULL || r->stop_started != 0) {
        relay_stop_now(r);
        return;
    }
    r->stop_done = done;
    r->stop_arg = arg;
    r->stop_started = uv_now(r->loop);
    r->draining = true;
    smtpd_server_set_draining(r->smtpd, true);
    log_info("stopping gently node=%" PRIu64 " deliveries=%zu", r->cfg->node_id, r->n_deliveries);
    if (consensus_is_ready(r->cons) &&
        consensus_transfer(r->cons, 0, relay_stop_transfer_done, r) == 0)
        r->stop_transferring = true;
    uv_timer_start(&r->stop_timer, relay_stop_wait_tick, 50, 50);
}
