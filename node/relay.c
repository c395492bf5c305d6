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

#include <arpa/inet.h>
#include <netinet/in.h>

#include <openssl/rand.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "consensus/consensus.h"
#include "net/dns.h"
#include "net/mx.h"
#include "net/smtpc.h"
#include "net/smtpd.h"
#include "net/smtpc_auth.h"
#include "net/smtpd_auth.h"
#include "net/smtpd_rcptmap.h"
#include "net/smtpd_server.h"
#include "node/config.h"
#include "node/clock.h"
#include "node/control.h"
#include "node/directory.h"
#include "node/disk_guard.h"
#include "node/peer.h"
#include "node/peer_policy.h"
#include "node/pki_status.h"
#include "node/proposer.h"
#include "node/body_fetch.h"
#include "node/relay.h"
#include "node/relay_internal.h"

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

/* relay_fsm_apply - one committed entry into the queue. result: status or 1 (duplicate). */
static int relay_fsm_apply(void *data, const uint8_t *buf, size_t len, void **result)
{
    struct relay *r = data;
    struct queue_apply_result res;
    int rv = queue_apply(r->queue, buf, len, &res);
    if (rv != 0) {
        /* Refuse loudly, never skip: raft stops applying at this index. */
        if (rv == HAMR_ENOSPACE || rv == HAMR_EIO) {
            /* The body store could not write the body: the entry stays in the
             * log (raft never compacts past it), the node stops as it does
             * before raft's own write can fail, and applies it on restart. */
            relay_bodies_write_failed(r, rv);
        } else {
            char why[200];
            snprintf(why, sizeof(why), "cannot apply log entry: %s (newer hamr version?)",
                     hamr_strerror(rv));
            relay_fail(r, why);
        }
        return rv;
    }
    *result = (void *)(intptr_t)(res.status != 0 ? res.status : (res.duplicate ? 1 : 0));
    if (res.flushed)
        relay_sched_resume_all(r); /* the operator wants everything tried now */
    relay_bodies_spill(r, true);   /* only past RELAY_BODY_KEEP_BYTES in memory */
    relay_sched_kick(r);           /* new mail, or a recipient done: there may be work */
    char why[200];
    if (disk_guard_applied(&r->disk, len, why, sizeof(why)) != 0)
        relay_fail(r, why);
    return 0;
}

/* relay_fsm_restore - replace the queue from a snapshot. */
static int relay_fsm_restore(void *data, const uint8_t *buf, size_t len)
{
    struct relay *r = data;
    int rv = queue_restore(r->queue, buf, len);
    if (rv != 0)
        log_error("snapshot restore failed error=\"%s\"", hamr_strerror(rv));
    else
        relay_bodies_restored(r); /* fetch what the snapshot's messages lack here */
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
    if (leader == r->cfg->node_id || r->peer_cli == NULL)
        return HAMR_ENOTFOUND;
    return directory_peer_address(r->dir, leader, addr, addrlen);
}

static int relay_prop_append(void *data, uint8_t *buf, size_t len, proposer_raft_cb cb, void *arg)
{
    struct relay *r = data;
    return consensus_propose(r->cons, buf, len, cb, arg);
}

/* relay_prop_forward - to the leader's peer port; with cluster TLS its certificate must be
 * leader's. */
static int relay_prop_forward(void *data,
                              uint64_t leader,
                              const char *addr,
                              const Hamr__PeerMsg *msg,
                              uint64_t timeout_ms,
                              proposer_reply_cb cb,
                              void *arg)
{
    struct relay *r = data;
    return peer_client_call(r->peer_cli, leader, addr, msg, timeout_ms, cb, arg);
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

/*
 * relay_prop_check - may the node `from` have this forwarded entry committed?
 * It must decode here (else every node would refuse it and stop) and be what
 * that node may ask for (peer_policy.h). Refusals are logged and counted.
 */
static int relay_prop_check(void *data, const uint8_t *entry, size_t len, uint64_t from)
{
    struct relay *r = data;
    Hamr__Entry *e = NULL;
    int rv = proto_entry_unpack(entry, len, &e);
    if (rv != 0) {
        log_warn("peer entry refused node=%" PRIu64 " reason=undecodable error=\"%s\"", from,
                 hamr_strerror(rv));
        metrics_inc_label(r->metrics, METRICS_PEER_REFUSED, PEER_POLICY_KIND);
        return rv;
    }
    struct peer_policy_limits lim = {
        .self = r->cfg->node_id,
        .message_size_limit = r->cfg->smtpd.message_size_limit,
        .recipient_limit = r->cfg->smtpd.recipient_limit,
    };
    enum peer_policy_reason why = peer_policy_check(e, from, r->queue, &lim);
    if (why != PEER_POLICY_OK) {
        log_warn("peer entry refused node=%" PRIu64 " kind=%d reason=%s", from, (int)e->cmd_case,
                 peer_policy_reason_name(why));
        metrics_inc_label(r->metrics, METRICS_PEER_REFUSED, why);
        rv = HAMR_EPERM;
    }
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

/* ---------------------------------------------------------------------------
 * Housekeeping: free space, proposal deadlines.
 * ------------------------------------------------------------------------- */

/* relay_check_disk - free space again: below two log segments the node stops (disk_guard.h). */
static void relay_check_disk(struct relay *r)
{
    char why[200];
    if (disk_guard_check(&r->disk, why, sizeof(why)) != 0)
        relay_fail(r, why);
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
    if (r->stopping || !disk_guard_low(&r->disk) || !consensus_is_ready(r->cons))
        return;
    if (consensus_transfer(r->cons, 0, relay_disk_transfer_done, r) == 0)
        log_warn("disk low free=%" PRIu64 " limit=%" PRIu64 " action=transferring leadership",
                 r->disk.free_bytes, r->disk.soft);
}

/*
 * relay_check_queue_limits - one log line when the replicated queue reaches
 * a queue limit and one when it has room again; each refused MAIL is logged
 * by the session as a reject.
 */
static void relay_check_queue_limits(struct relay *r)
{
    bool full = queue_full(r->queue, r->cfg->queue_max_messages, r->cfg->queue_max_bytes);
    if (full == r->queue_full)
        return;
    r->queue_full = full;
    size_t msgs, bytes;
    queue_size(r->queue, &msgs, &bytes);
    if (full)
        log_warn("queue full messages=%zu limit_messages=%" PRIu64 " bytes=%zu limit_bytes=%" PRIu64
                 " action=MAIL refused with 452 4.3.1",
                 msgs, r->cfg->queue_max_messages, bytes, r->cfg->queue_max_bytes);
    else
        log_info("queue below its limits messages=%zu bytes=%zu action=MAIL accepted again", msgs,
                 bytes);
}

/* relay_housekeeping - once a second. */
static void relay_housekeeping(uv_timer_t *t)
{
    struct relay *r = t->data;
    relay_check_disk(r);
    relay_disk_step_aside(r);
    relay_check_queue_limits(r);
    proposer_expire(r->prop);
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (info.failed)
        relay_fail(r, "raft became unavailable (internal error)");
}

/* ---------------------------------------------------------------------------
 * Start and stop.
 * ------------------------------------------------------------------------- */

/* relay_retry_tick - every RELAY_RETRY_MS: waiting submits, node info, deadlines. */
static void relay_retry_tick(uv_timer_t *t)
{
    struct relay *r = t->data;
    if (!r->stopping) {
        directory_tick(r->dir, r->draining);
        relay_bodies_spill(r, false); /* bodies older than RELAY_BODY_KEEP_MS to the store */
        relay_spread_poke(r);         /* the cluster time, as soon as a leader answers */
    }
    proposer_tick(r->prop);
    struct consensus_info info;
    consensus_get_info(r->cons, &info);
    if (info.leader_id != r->last_leader_id) {
        if (info.leader_id != 0)
            metrics_inc(r->metrics, METRICS_RAFT_LEADER_CHANGES);
        r->last_leader_id = info.leader_id;
    }
    if (info.leader_id != 0)
        r->accept.leader_seen = uv_now(r->loop); /* relay_sink_check_mail */
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
    relay_spread_leader(r, leader); /* the member table and the cluster clock start anew */
    if (leader && !r->stopping && r->dir != NULL)
        directory_tick(r->dir, r->draining);
    if (leader && r->draining) {
        /* Elected while draining (raft 0.15 has no way to keep a node from
         * standing): hand leadership on again. */
        log_info("draining node elected: transferring leadership");
        consensus_transfer(r->cons, 0, relay_drain_transfer_done, r);
    }
}

/* relay_now_cb - the cluster time, for the directory's entries. */
static uint64_t relay_now_cb(void *data)
{
    return relay_cluster_now(data);
}

/* relay_boot_id - a random id for this process: leases name it. */
static void relay_boot_id(char out[33])
{
    uint8_t raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        uint64_t t = clock_wall_ms() ^ ((uint64_t)getpid() << 32);
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

static void relay_close_all(struct relay *r);

/* relay_new - r with its queue, metrics and scheduler kick timer; nothing listening yet. */
static int relay_new(uv_loop_t *loop, const struct hamr_config *cfg, struct relay **out)
{
    struct relay *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return HAMR_ENOMEM;
    r->loop = loop;
    r->cfg = cfg;
    relay_boot_id(r->boot_id);
    /* Start counters from random points so ids of successive boots differ. */
    uint64_t seed;
    if (RAND_bytes((unsigned char *)&seed, sizeof(seed)) != 1)
        seed = clock_wall_ms();
    r->accept.id_counter = seed & 0xFFFFF;
    r->sched.lease_counter = seed & 0xFFFFFFFF00000000ull;
    r->queue = queue_new();
    if (r->queue == NULL || metrics_hamr_new(RELAY_VERSION, &r->metrics) != 0) {
        queue_free(r->queue);
        free(r);
        return HAMR_ENOMEM;
    }
    /* Before raft starts: replaying the log applies entries, which kick the scheduler. */
    uv_timer_init(loop, &r->sched.kick_timer);
    r->sched.kick_timer.data = r;
    uv_timer_init(loop, &r->sched.mem_timer);
    r->sched.mem_timer.data = r;
    relay_spread_init(r);
    *out = r;
    return 0;
}

/*
 * relay_start_cluster_tls - the cluster PKI every node-to-node and operator
 * channel uses; plaintext only when the config says so, with a warning.
 */
static int relay_start_cluster_tls(struct relay *r, char *err, size_t errlen)
{
    const struct hamr_config *cfg = r->cfg;
    if (cfg->cluster_ca_file[0] == '\0') {
        log_warn(
            "cluster channels in plaintext (raft, peer, control): anyone who reaches their "
            "ports is trusted; for a lab only ([cluster_tls] plaintext = yes)");
        return 0;
    }
    struct cluster_tls_files files = {
        .ca = cfg->cluster_ca_file,
        .cert = cfg->cluster_cert_file,
        .key = cfg->cluster_key_file,
        .node_id = cfg->node_id,
    };
    int rv = cluster_tls_new(&files, &r->ctls, err, errlen);
    if (rv != 0)
        return rv;
    pki_status_log(r->ctls, time(NULL), "loaded", cfg->cluster_cert_file, cfg->cluster_ca_file);
    return 0;
}

/* relay_start_raft - the disk guard, raft over the queue, and the proposer. */
static int relay_start_raft(struct relay *r, char *err, size_t errlen)
{
    const struct hamr_config *cfg = r->cfg;
    struct consensus_config cc = {
        .id = cfg->node_id,
        .voters = cfg->voters,
        .n_voters = cfg->n_voters,
        .election_timeout_ms = cfg->election_timeout_ms,
        .heartbeat_ms = cfg->heartbeat_ms,
        .snapshot_bytes = cfg->snapshot_bytes,
        .snapshot_trailing = 128,
        .segment_size = consensus_segment_size(cfg->snapshot_bytes, cfg->smtpd.message_size_limit),
        .max_entry = cfg->smtpd.message_size_limit,
        .on_leader = relay_on_leader,
        .on_leader_arg = r,
        .tls = r->ctls,
    };
    if (config_ip_address(cfg->listen_raft.host, cfg->listen_raft.port, cc.address,
                          sizeof(cc.address)) != 0) {
        snprintf(err, errlen, "[listen] raft: not an IP address");
        return HAMR_EINVAL;
    }
    snprintf(cc.dir, sizeof(cc.dir), "%s", cfg->data_dir);
    disk_guard_init(&r->disk, cfg->data_dir, cc.segment_size, cfg->min_free_bytes, NULL);
    if (r->disk.free_bytes < r->disk.floor) {
        snprintf(err, errlen,
                 "data directory: %llu MiB free, hamrd needs at least %llu MiB (two log "
                 "segments) to run; free some space first",
                 (unsigned long long)(r->disk.free_bytes >> 20),
                 (unsigned long long)(r->disk.floor >> 20));
        return HAMR_ENOSPACE;
    }
    struct consensus_fsm fsm = {
        .data = r,
        .apply = relay_fsm_apply,
        .restore = relay_fsm_restore,
        .snapshot_view = relay_snapshot_view, /* off the loop: relay_snapshot.c */
        .snapshot_write = relay_snapshot_write,
        .snapshot_release = relay_snapshot_release,
    };
    int rv = consensus_new(r->loop, &cc, &fsm, &r->cons, err, errlen);
    if (rv != 0)
        return rv;
    r->prop = relay_prop_new(r);
    if (r->prop == NULL) {
        snprintf(err, errlen, "out of memory");
        return HAMR_ENOMEM;
    }
    rv = consensus_start(r->cons, err, errlen);
    if (rv == 0)
        relay_check_disk(r); /* the data directory exists now */
    return rv;
}

/* relay_self_add - one more address of this cluster for the loop check (duplicates once). */
static void relay_self_add(struct mx_config *mc, int family, const void *addr)
{
    size_t len = family == AF_INET6 ? 16 : 4;
    for (size_t i = 0; i < mc->n_self_addrs; i++)
        if (mc->self_addrs[i].family == family && memcmp(mc->self_addrs[i].addr, addr, len) == 0)
            return;
    if (mc->n_self_addrs == HAMR_ARRAY_LEN(mc->self_addrs))
        return;
    struct dns_addr *a = &mc->self_addrs[mc->n_self_addrs++];
    memset(a, 0, sizeof(*a));
    a->family = family;
    memcpy(a->addr, addr, len);
}

/* relay_self_add_host - host, when an IP literal; the wildcard: every local address. */
static void relay_self_add_host(struct mx_config *mc, const char *host)
{
    uint8_t a[16];
    int family = inet_pton(AF_INET, host, a) == 1    ? AF_INET
                 : inet_pton(AF_INET6, host, a) == 1 ? AF_INET6
                                                     : 0;
    static const uint8_t zero[16];
    if (family == 0)
        return;
    if (memcmp(a, zero, family == AF_INET ? 4 : 16) != 0) {
        relay_self_add(mc, family, a);
        return;
    }
    /* Listening on every address (Postfix's inet_interfaces = all): each is ours. */
    uv_interface_address_t *ifs = NULL;
    int n = 0;
    if (uv_interface_addresses(&ifs, &n) != 0)
        return;
    for (int i = 0; i < n; i++) {
        if (ifs[i].address.address4.sin_family == AF_INET)
            relay_self_add(mc, AF_INET, &ifs[i].address.address4.sin_addr);
        else if (ifs[i].address.address6.sin6_family == AF_INET6)
            relay_self_add(mc, AF_INET6, &ifs[i].address.address6.sin6_addr);
    }
    uv_free_interface_addresses(ifs, n);
}

/*
 * relay_mx_config - the MX routing's config: the [delivery] keys, and who
 * "myself" is for the loop check of RFC 5321 5.1 (an MX host that is this
 * cluster): this node's hostname, the addresses it takes SMTP on, every
 * voter's address (the other nodes), and [delivery] self_addresses (a load
 * balancer in front of the cluster).
 */
static void relay_mx_config(const struct hamr_config *cfg, struct mx_config *mc)
{
    *mc = cfg->mx;
    hamr_strlcpy(mc->self_names[0], cfg->hostname, sizeof(mc->self_names[0]));
    mc->n_self_names = 1;
    relay_self_add_host(mc, cfg->listen_smtp.host);
    for (size_t i = 0; i < cfg->n_voters; i++) {
        struct config_hostport hp;
        if (config_parse_hostport(cfg->voters[i].address, &hp) == 0)
            relay_self_add_host(mc, hp.host);
    }
}

/*
 * relay_dane_check - log once, at start, when a tls_policy says dane or
 * dane-only but the resolver's AD bit is not trusted: DANE then never
 * applies (dane acts as may, dane-only defers everything).
 */
static void relay_dane_check(const struct hamr_config *cfg, const struct dns *dns)
{
    bool dane = cfg->tls_policy == SMTPC_TLS_DANE || cfg->tls_policy == SMTPC_TLS_DANE_ONLY;
    for (size_t i = 0; i < cfg->n_tls_policies && !dane; i++)
        dane = cfg->tls_policies[i].policy == SMTPC_TLS_DANE ||
               cfg->tls_policies[i].policy == SMTPC_TLS_DANE_ONLY;
    if (dane && !dns_ad_trusted(dns))
        log_warn(
            "tls_policy dane: the DNS resolver is not on this host and [dns] trust_ad is no: "
            "DNSSEC cannot be trusted, so DANE never applies (dane acts as may, dane-only "
            "defers)");
}

/* relay_start_delivery - the resolver, MX routing and the delivery pool. */
static int relay_start_delivery(struct relay *r, char *err, size_t errlen)
{
    const struct hamr_config *cfg = r->cfg;
    int rv = dns_new(r->loop, &cfg->dns, &r->dns);
    if (rv != 0) {
        snprintf(err, errlen, "DNS resolver: %s", hamr_strerror(rv));
        return rv;
    }
    struct mx_config mc;
    relay_mx_config(cfg, &mc);
    rv = mx_new(r->dns, &mc, &r->mx);
    if (rv != 0) {
        snprintf(err, errlen, "MX routing: %s", hamr_strerror(rv));
        return rv;
    }
    relay_dane_check(cfg, r->dns);
    /* Outbound AUTH: a bad line, or a file others may read, stops the start. */
    if (cfg->delivery_auth_file[0] != '\0') {
        rv = smtpc_auth_new(cfg->delivery_auth_file, &r->sauth, err, errlen);
        if (rv != 0)
            return rv;
    }
    struct smtpc_config sc = cfg->smtpc;
    sc.resolver = mx_resolver(r->mx);
    r->pool = smtpc_pool_new(r->loop, &sc);
    r->rate = relay_rate_new(cfg->rate_per_destination);
    if (r->pool == NULL || r->rate == NULL) {
        snprintf(err, errlen, "out of memory");
        return HAMR_ENOMEM;
    }
    return relay_sts_start(r, err, errlen);
}

/* relay_start_smtp - the delivery pool and the SMTP listener with its policy. */
static int relay_start_smtp(struct relay *r, char *err, size_t errlen)
{
    const struct hamr_config *cfg = r->cfg;
    int rv = relay_start_delivery(r, err, errlen);
    if (rv != 0)
        return rv;
    struct smtpd_sink sink = {
        .data = r,
        .new_id = relay_sink_new_id,
        .check_mail = relay_sink_check_mail,
        .ext_ok = relay_sink_ext_ok,
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
            return rv;
        r->policy.auth = r->auth;
    }
    if (cfg->relay_recipients[0] != '\0') {
        rv = smtpd_rcptmap_new(cfg->relay_recipients, &r->rcptmap, err, errlen);
        if (rv != 0)
            return rv;
        r->policy.rcptmap = r->rcptmap;
    }
    /* DKIM keys, read as [node] user: one that does not load stops the start. */
    if (cfg->dkim_sign && cfg->n_dkim_keys > 0) {
        rv = dkim_keys_new(cfg->dkim_keys, cfg->n_dkim_keys, &r->dkim, err, errlen);
        if (rv != 0)
            return rv;
        log_info("dkim: %zu keys loaded, mail from their domains is signed", cfg->n_dkim_keys);
    }
    rv = smtpd_server_new(r->loop, cfg->listen_smtp.host, cfg->listen_smtp.port, &r->policy, &sink,
                          cfg->max_sessions, &r->smtpd, err, errlen);
    if (rv != 0)
        return rv;
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
    return smtpd_server_set_tls(r->smtpd, cfg->tls_cert_file, cfg->tls_key_file, err, errlen);
}

/*
 * relay_start_http - the HTTP listeners: [listen] http in the clear, and
 * [listen] metrics over mutual TLS (config.c has made sure there is a PKI).
 * With the second, the first keeps only the health endpoints.
 */
static int relay_start_http(struct relay *r, char *err, size_t errlen)
{
    const struct hamr_config *cfg = r->cfg;
    bool tls_metrics = cfg->listen_metrics.host[0] != '\0';
    HAMR_ASSERT(!tls_metrics || r->ctls != NULL);
    struct http_handler hh = {
        .data = r,
        .ready = relay_http_ready,
        .metrics = r->metrics,
        .source = {.data = r, .fill = relay_metrics_fill},
    };
    if (cfg->listen_http.host[0] != '\0') {
        const struct http_config hc = {.host = cfg->listen_http.host,
                                       .port = cfg->listen_http.port,
                                       .metrics_tls_only = tls_metrics};
        int rv = http_new(r->loop, &hc, &hh, &r->http, err, errlen);
        if (rv != 0)
            return rv;
    }
    if (!tls_metrics)
        return 0;
    const struct http_config mc = {
        .host = cfg->listen_metrics.host, .port = cfg->listen_metrics.port, .tls = r->ctls};
    return http_new(r->loop, &mc, &hh, &r->metrics_http, err, errlen);
}

/* relay_start_channels - control, peer (server and client) and HTTP listeners; the directory. */
static int relay_start_channels(struct relay *r, char *err, size_t errlen)
{
    const struct hamr_config *cfg = r->cfg;
    struct directory_self self = {
        .node_id = cfg->node_id,
        .version = RELAY_VERSION,
        .proposal_timeout_ms = cfg->proposal_timeout_ms,
    };
    hamr_strlcpy(self.zone, cfg->zone, sizeof(self.zone));
    /* The socket is trusted (its mode decides who connects); TCP takes
     * operators' certificates of the cluster CA, or anyone in plaintext mode. */
    char sock[1024];
    if (config_control_socket(cfg, sock, sizeof(sock)) != 0) {
        snprintf(err, errlen, "control_socket: path too long");
        return HAMR_EINVAL;
    }
    const struct control_config ccfg = {
        .host = cfg->listen_control.host,
        .port = cfg->listen_control.port,
        .socket_path = sock,
        .tls = r->ctls,
    };
    struct control_handler handler = {.data = r, .handle = relay_ctl_handle};
    int rv = control_new(r->loop, &ccfg, &handler, &r->control, err, errlen);
    if (rv != 0)
        return rv;
    /* Published for hamrctl's redirects: "ip:port", "[v6]:port", or "" (no TCP control). */
    if (cfg->listen_control.host[0] != '\0')
        (void)config_ip_address(cfg->listen_control.host, cfg->listen_control.port,
                                self.control_address, sizeof(self.control_address));
    if (cfg->listen_peer.host[0] != '\0') {
        struct peer_handler ph = {
            .data = r, .request = relay_peer_request, .fetch = relay_bodies_serve_call};
        rv = peer_server_new(r->loop, cfg->listen_peer.host, cfg->listen_peer.port, r->ctls, &ph,
                             &r->peer_srv, err, errlen);
        if (rv != 0)
            return rv;
        (void)config_ip_address(cfg->listen_peer.host, cfg->listen_peer.port, self.peer_address,
                                sizeof(self.peer_address));
        r->peer_cli = peer_client_new(r->loop, cfg->node_id, RELAY_VERSION, r->ctls);
        if (r->peer_cli == NULL) {
            snprintf(err, errlen, "out of memory");
            return HAMR_ENOMEM;
        }
    }
    rv = relay_start_http(r, err, errlen);
    if (rv != 0)
        return rv;
    r->dir = directory_new(&self, r->cons, r->queue, r->prop);
    if (r->dir == NULL) {
        snprintf(err, errlen, "out of memory");
        return HAMR_ENOMEM;
    }
    directory_set_clock(r->dir, relay_now_cb, r);
    return 0;
}

/* relay_timer_start - init t (counted for the stop) and start it if repeat is set. */
static void relay_timer_start(struct relay *r, uv_timer_t *t, uv_timer_cb cb, uint64_t repeat)
{
    uv_timer_init(r->loop, t);
    t->data = r;
    if (repeat != 0)
        uv_timer_start(t, cb, repeat, repeat);
}

int relay_start(uv_loop_t *loop,
                const struct hamr_config *cfg,
                struct relay **out,
                char *err,
                size_t errlen)
{
    struct relay *r;
    int rv = relay_new(loop, cfg, &r);
    if (rv != 0) {
        snprintf(err, errlen, "out of memory");
        return rv;
    }
    rv = relay_start_cluster_tls(r, err, errlen);
    if (rv == 0)
        rv = relay_bodies_open(r, err, errlen);
    if (rv == 0)
        rv = relay_start_raft(r, err, errlen);
    if (rv == 0)
        rv = relay_start_smtp(r, err, errlen);
    if (rv == 0)
        rv = relay_start_channels(r, err, errlen);
    if (rv == 0)
        rv = relay_bodies_start(r, err, errlen);
    if (rv != 0) {
        /* Close what was opened; r is freed once the last handle has
         * closed (hamrd runs the loop once more). */
        relay_close_all(r);
        return rv;
    }
    relay_timer_start(r, &r->stop.timer, NULL, 0);
    relay_timer_start(r, &r->retry_timer, relay_retry_tick, RELAY_RETRY_MS);
    relay_timer_start(r, &r->sched.timer, relay_sched_tick, cfg->scan_interval_ms);
    relay_timer_start(r, &r->housekeeping_timer, relay_housekeeping, 1000);
    relay_timer_start(r, &r->spread.timer, NULL, 0);
    relay_spread_start(r);
    r->stop.timers_started = true;
    const struct directory_self *self = directory_self(r->dir);
    /* Bracketed like every address a node publishes ("[::1]:2525"). */
    const bool smtp6 = strchr(cfg->listen_smtp.host, ':') != NULL;
    char raft[CONSENSUS_ADDR_MAX] = "";
    (void)config_ip_address(cfg->listen_raft.host, cfg->listen_raft.port, raft, sizeof(raft));
    log_info("started node=%" PRIu64
             " smtp=%s%s%s:%u raft=%s peer=%s control=%s control_socket=%s control_tls=%s boot=%s",
             cfg->node_id, smtp6 ? "[" : "", cfg->listen_smtp.host, smtp6 ? "]" : "",
             (unsigned)cfg->listen_smtp.port, raft,
             self->peer_address[0] ? self->peer_address : "off",
             self->control_address[0] ? self->control_address : "off",
             cfg->listen_control_socket[0] ? cfg->listen_control_socket : "off",
             r->ctls != NULL ? "operators" : "plaintext", r->boot_id);
    *out = r;
    return 0;
}

/*
 * relay_reload_cluster_tls - the cluster CA, certificate and key anew: new
 * connections use them, open ones go on. A certificate for another node, or
 * files that do not load, leave the old ones in place. Then logs the days
 * left of what is in use (pki_status_log), with a warning when it is due.
 */
static void relay_reload_cluster_tls(struct relay *r)
{
    if (r->ctls == NULL)
        return;
    char cerr[1024];
    const char *event = "reloaded";
    if (cluster_tls_reload(r->ctls, cerr, sizeof(cerr)) != 0) {
        log_error("reload of the cluster certificate failed: %s (the old one stays in use)", cerr);
        event = "kept";
    }
    /* Either way: how long the certificate in use has left, warned if due. */
    pki_status_log(r->ctls, time(NULL), event, r->cfg->cluster_cert_file, r->cfg->cluster_ca_file);
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
    /* Deliveries started from now on use the new credentials; running ones keep their copy. */
    if (r->sauth != NULL && smtpc_auth_reload(r->sauth, aerr, sizeof(aerr)) != 0)
        log_error("reload of the delivery credentials file failed: %s (the old one stays in use)",
                  aerr);
    if (r->dkim != NULL) {
        if (dkim_keys_reload(r->dkim, aerr, sizeof(aerr)) != 0)
            log_error("reload of the DKIM keys failed: %s (the old ones stay in use)", aerr);
        else
            log_info("dkim: %zu keys reloaded", dkim_keys_count(r->dkim));
    }
    relay_reload_cluster_tls(r);
}

bool relay_failed(const struct relay *r)
{
    return r->failed;
}

/* relay_close_step - one part has closed; when the last has, free r and tell the caller. */
static void relay_close_step(void *arg)
{
    struct relay *r = arg;
    HAMR_ASSERT(r->stop.closing > 0);
    if (--r->stop.closing > 0)
        return;
    void (*done)(void *) = r->stop.done;
    void *done_arg = r->stop.arg;
    r->dir = directory_free(r->dir);
    r->prop = proposer_free(r->prop); /* after raft and the peer client answered it all */
    r->queue = queue_free(r->queue);
    free(r->sched.suspended);
    r->rate = relay_rate_free(r->rate);
    r->metrics = metrics_free(r->metrics); /* after the HTTP listener, which borrows it */
    r->auth = smtpd_auth_free(r->auth);    /* after the SMTP server, whose sessions borrow it */
    r->rcptmap = smtpd_rcptmap_free(r->rcptmap); /* likewise */
    r->sauth = smtpc_auth_free(r->sauth);        /* the pool copied what it was given */
    r->dkim = dkim_keys_free(r->dkim);
    cluster_tls_free(r->ctls); /* after every channel (connections hold their own contexts) */
    free(r);
    if (done)
        done(done_arg);
}

/* relay_close_handle_cb - a relay timer closed. */
static void relay_close_handle_cb(uv_handle_t *h)
{
    relay_close_step(h->data);
}

/* relay_close_timer - stop and close one of the relay's timers, counted. */
static void relay_close_timer(struct relay *r, uv_timer_t *t)
{
    r->stop.closing++;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, relay_close_handle_cb);
}

/* relay_close_store - after raft (whose last applies may write bodies): the body store. */
static void relay_close_store(void *arg)
{
    struct relay *r = arg;
    relay_bodies_close(r, relay_close_step, r);
}

/* relay_close_raft - close raft (which fails what it holds), counted. */
static void relay_close_raft(void *arg)
{
    struct relay *r = arg;
    if (r->cons != NULL) {
        r->stop.closing++;
        consensus_close(r->cons, relay_close_store, r);
    } else {
        r->stop.closing++;
        relay_close_store(r);
    }
    /* After the pool, which cancelled every route it was resolving. */
    mx_free(r->mx);
    r->mx = NULL;
    if (r->dns != NULL) {
        r->stop.closing++;
        dns_close(r->dns, relay_close_step, r);
        r->dns = NULL;
    }
    relay_close_step(r); /* the pool's count */
}

/*
 * relay_close_all - close every part that is open, each counted as it is
 * closed; the last to finish frees r (relay_close_step). Raft is closed
 * after the delivery pool, whose outcomes it may still have to take.
 */
static void relay_close_all(struct relay *r)
{
    r->stopping = true;  /* what still runs while closing looks at this */
    r->stop.closing = 1; /* held until every close below has been started */
    if (r->prop != NULL)
        proposer_stop(r->prop); /* submits waiting for a leader give up (421) */
    relay_close_timer(r, &r->sched.kick_timer);
    relay_close_timer(r, &r->sched.mem_timer);
    relay_close_timer(r, &r->spread.start_timer);
    relay_spread_close(r); /* leases granted but not started run out */
    relay_sts_close(r);    /* deliveries waiting for a policy end unsent (r->stopping) */
    if (r->stop.timers_started) {
        relay_close_timer(r, &r->stop.timer);
        relay_close_timer(r, &r->retry_timer);
        relay_close_timer(r, &r->sched.timer);
        relay_close_timer(r, &r->housekeeping_timer);
        relay_close_timer(r, &r->spread.timer);
    }
    if (r->http != NULL) {
        r->stop.closing++;
        http_close(r->http, relay_close_step, r);
    }
    if (r->metrics_http != NULL) {
        r->stop.closing++;
        http_close(r->metrics_http, relay_close_step, r);
    }
    if (r->smtpd != NULL) {
        r->stop.closing++;
        smtpd_server_close(r->smtpd, relay_close_step, r);
    }
    if (r->control != NULL) {
        r->stop.closing++;
        control_close(r->control, relay_close_step, r);
    }
    if (r->peer_srv != NULL) {
        r->stop.closing++;
        peer_server_close(r->peer_srv, relay_close_step, r);
    }
    if (r->fetch != NULL)
        body_fetch_close(r->fetch); /* its calls fail as the peer client closes */
    r->fetch = NULL;
    if (r->peer_cli != NULL) {
        r->stop.closing++;
        peer_client_close(r->peer_cli, relay_close_step, r);
    }
    r->stop.closing++; /* the pool's (then raft's) turn */
    if (r->pool != NULL)
        smtpc_pool_close(r->pool, relay_close_raft, r);
    else
        relay_close_raft(r);
    relay_close_step(r); /* the hold */
}

/* relay_stop_now - close everything: the second half of relay_stop. */
static void relay_stop_now(struct relay *r)
{
    if (r->stopping)
        return;
    r->stopping = true;
    log_info("stopping node=%" PRIu64 " deliveries=%zu", r->cfg->node_id, r->sched.n_deliveries);
    relay_close_all(r);
}

/* relay_stop_wait_tick - while stopping gently: go on once nothing is left in flight. */
static void relay_stop_wait_tick(uv_timer_t *t)
{
    struct relay *r = t->data;
    uint64_t waited = uv_now(r->loop) - r->stop.started;
    bool idle = r->sched.n_deliveries == 0 && !proposer_busy(r->prop) &&
                smtpd_server_sessions(r->smtpd) == 0;
    if (!r->stop.transferring && (idle || waited >= RELAY_STOP_GRACE_MS))
        relay_stop_now(r);
}

/* relay_stop_transfer_done - leadership handed on (or not): now let work finish. */
static void relay_stop_transfer_done(void *arg, int status, uint64_t leader)
{
    struct relay *r = arg;
    r->stop.transferring = false;
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
    if (r->stop.done != NULL || r->stop.started != 0) {
        relay_stop_now(r);
        return;
    }
    r->stop.done = done;
    r->stop.arg = arg;
    r->stop.started = uv_now(r->loop);
    r->draining = true;
    smtpd_server_set_draining(r->smtpd, true);
    log_info("stopping gently node=%" PRIu64 " deliveries=%zu", r->cfg->node_id,
             r->sched.n_deliveries);
    if (consensus_is_ready(r->cons) &&
        consensus_transfer(r->cons, 0, relay_stop_transfer_done, r) == 0)
        r->stop.transferring = true;
    uv_timer_start(&r->stop.timer, relay_stop_wait_tick, 50, 50);
}
