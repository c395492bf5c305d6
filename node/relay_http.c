/*
 * relay_http.c - what the node's HTTP listener serves: the readiness input
 * for /health/ready and the state-derived gauges for /metrics. Counters that
 * follow events (accepted, deliveries, retries, leader changes) are counted
 * where the events happen.
 *
 * Owns: nothing. May call: reads of the queue, raft's view, the disk guard,
 * the proposer's, the peer server's, the control's and the TLS metrics
 * listener's counters, the cluster PKI's expiry (pki_status), metrics;
 * never relay.c.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "util/common.h"
#include "queue/body_store.h"
#include "queue/queue.h"
#include "consensus/consensus.h"
#include "net/dns.h"
#include "net/smtpc.h"
#include "net/smtpd_server.h"
#include "node/body_fetch.h"
#include "node/http.h"
#include "node/metrics.h"
#include "node/peer.h"
#include "node/pki_status.h"
#include "node/clock.h"
#include "node/relay_internal.h"

/*
 * relay_http_ready - /health/ready: leader known, in quorum, not draining,
 * disk headroom; a full queue only in the text (health_ready says why).
 * raft 0.15 keeps a follower's idea of the leader only until its election
 * timer fires without hearing from it, so "a leader is known" stands for
 * "heard from the leader within about an election timeout".
 */
void relay_http_ready(void *data, struct health_input *in)
{
    struct relay *r = data;
    struct consensus_info ci;
    consensus_get_info(r->cons, &ci);
    in->raft_failed = ci.failed || r->failed;
    in->draining = r->draining;
    in->leader_known = ci.leader_id != 0;
    in->is_leader = ci.state == CONSENSUS_LEADER;
    in->last_leader_contact_ms = ci.leader_id != 0 ? 0 : UINT64_MAX;
    in->election_timeout_ms = r->cfg->election_timeout_ms;
    in->disk_free_bytes = r->disk.free_bytes;
    in->min_free_bytes = r->disk.soft;
    in->apply_lag = ci.commit_index > ci.applied_index ? ci.commit_index - ci.applied_index : 0;
    size_t qmsgs, qbytes;
    queue_size(r->queue, &qmsgs, &qbytes);
    in->queue_messages = qmsgs;
    in->queue_bytes = qbytes;
    in->queue_max_messages = r->cfg->queue_max_messages;
    in->queue_max_bytes = r->cfg->queue_max_bytes;
    in->queue_full = queue_full(r->queue, r->cfg->queue_max_messages, r->cfg->queue_max_bytes);
    in->bodies_missing = queue_bodies_missing(r->queue);
    in->clock_unknown = !relay_clock_usable(r);
    uint64_t now = uv_now(r->loop), wall = clock_wall_ms();
    in->clock_skewed = relay_spread_on(r) && cluster_clock_skewed(&r->spread.clock, now, wall);
    in->clock_skew_ms = cluster_clock_skew(&r->spread.clock, now, wall);
    in->max_clock_skew_ms = r->cfg->max_clock_skew_ms;
}

_Static_assert(METRICS_STATE_PENDING == (int)QUEUE_STAGE_PENDING &&
                   METRICS_STATE_DEFERRED == (int)QUEUE_STAGE_DEFERRED &&
                   METRICS_STATE_ACTIVE == (int)QUEUE_STAGE_ACTIVE &&
                   METRICS_STATE_HELD == (int)QUEUE_STAGE_HELD && QUEUE_STAGES == 4,
               "the state label of the queue gauges follows enum queue_stage");

/* relay_http_refusals - an operators' listener's refusals into its {reason} family. */
static void relay_http_refusals(struct metrics *m,
                                enum metrics_hamr_id family,
                                const struct operator_gate_stats *st)
{
    metrics_counter_set(m, family, METRICS_CONTROL_REFUSED_TLS, st->refused_tls);
    metrics_counter_set(m, family, METRICS_CONTROL_REFUSED_IDENTITY, st->refused_identity);
    metrics_counter_set(m, family, METRICS_CONTROL_REFUSED_TIMED_OUT, st->timed_out);
}

/* relay_metrics_fill - gauges from the current state, just before a render. */
void relay_metrics_fill(void *data, struct metrics *m)
{
    struct relay *r = data;
    struct consensus_info ci;
    consensus_get_info(r->cons, &ci);
    metrics_gauge_set(m, METRICS_RAFT_TERM, 0, (double)ci.term);
    metrics_gauge_set(m, METRICS_RAFT_COMMIT_INDEX, 0, (double)ci.commit_index);
    metrics_gauge_set(m, METRICS_RAFT_APPLIED_INDEX, 0, (double)ci.applied_index);
    metrics_gauge_set(m, METRICS_RAFT_IS_LEADER, 0, ci.state == CONSENSUS_LEADER);
    if (r->dns != NULL) {
        struct dns_stats ds;
        dns_get_stats(r->dns, &ds);
        for (unsigned i = 0; i < HAMR_ARRAY_LEN(ds.answers); i++)
            metrics_counter_set(m, METRICS_DNS_ANSWERS, i, ds.answers[i]);
        metrics_counter_set(m, METRICS_DNS_CACHE_HITS, 0, ds.cache_hits);
        metrics_counter_set(m, METRICS_DNS_SENT, 0, ds.sent);
        metrics_gauge_set(m, METRICS_DNS_CACHE_ENTRIES, 0, (double)dns_cache_entries(r->dns));
    }
    if (r->pool != NULL) {
        struct smtpc_stats st;
        smtpc_pool_get_stats(r->pool, &st);
        metrics_counter_set(m, METRICS_DANE, 0, st.dane_verified);
        metrics_counter_set(m, METRICS_DANE, 1, st.dane_failed);
        metrics_counter_set(m, METRICS_DANE, 2, st.dane_unusable);
        metrics_counter_set(m, METRICS_DELIVERY_CONNS, 0, st.connections);
    }
    metrics_counter_set(m, METRICS_RAFT_PORT, METRICS_RAFT_PORT_ACCEPTED, ci.port.accepted);
    metrics_counter_set(m, METRICS_RAFT_PORT, METRICS_RAFT_PORT_REFUSED, ci.port.refused);
    metrics_counter_set(m, METRICS_RAFT_PORT, METRICS_RAFT_PORT_TIMED_OUT, ci.port.timed_out);
    metrics_counter_set(m, METRICS_RAFT_PORT, METRICS_RAFT_PORT_OVER_CAP, ci.port.over_cap);
    metrics_counter_set(m, METRICS_RAFT_PORT, METRICS_RAFT_PORT_TLS, ci.port.tls);
    metrics_counter_set(m, METRICS_RAFT_PORT, METRICS_RAFT_PORT_IDENTITY, ci.port.identity);
    metrics_counter_set(m, METRICS_RAFT_PORT, METRICS_RAFT_PORT_OUT_TLS, ci.port.out_tls);
    metrics_counter_set(m, METRICS_RAFT_PORT, METRICS_RAFT_PORT_OUT_IDENTITY, ci.port.out_identity);
    if (r->peer_srv != NULL) {
        struct peer_server_stats pst;
        peer_server_stats(r->peer_srv, &pst);
        metrics_counter_set(m, METRICS_PEER_PORT, METRICS_PEER_PORT_ACCEPTED, pst.accepted);
        metrics_counter_set(m, METRICS_PEER_PORT, METRICS_PEER_PORT_TLS, pst.tls);
        metrics_counter_set(m, METRICS_PEER_PORT, METRICS_PEER_PORT_IDENTITY, pst.identity);
        metrics_counter_set(m, METRICS_PEER_PORT, METRICS_PEER_PORT_TIMED_OUT, pst.timed_out);
    }
    if (r->peer_cli != NULL) {
        struct peer_client_stats pcs;
        peer_client_stats(r->peer_cli, &pcs);
        metrics_counter_set(m, METRICS_PEER_PORT, METRICS_PEER_PORT_OUT_TLS, pcs.tls);
        metrics_counter_set(m, METRICS_PEER_PORT, METRICS_PEER_PORT_OUT_IDENTITY, pcs.identity);
    }
    struct operator_gate_stats cs = {0}, hs = {0};
    if (r->control != NULL)
        control_get_stats(r->control, &cs);
    if (r->metrics_http != NULL)
        http_get_stats(r->metrics_http, &hs);
    relay_http_refusals(m, METRICS_CONTROL_REFUSED, &cs);
    relay_http_refusals(m, METRICS_METRICS_REFUSED, &hs);
    pki_status_metrics(r->ctls, time(NULL), m);
    metrics_gauge_set(m, METRICS_DISK_FREE_BYTES, 0, (double)r->disk.free_bytes);
    metrics_gauge_set(m, METRICS_DRAINING, 0, r->draining);
    size_t qmsgs, qbytes;
    queue_size(r->queue, &qmsgs, &qbytes);
    metrics_gauge_set(m, METRICS_QUEUE_BYTES, 0, (double)qbytes);
    metrics_gauge_set(m, METRICS_QUEUE_LIMIT_MSGS, 0, (double)r->cfg->queue_max_messages);
    metrics_gauge_set(m, METRICS_QUEUE_LIMIT_BYTES, 0, (double)r->cfg->queue_max_bytes);
    metrics_gauge_set(m, METRICS_QUEUE_FULL, 0,
                      queue_full(r->queue, r->cfg->queue_max_messages, r->cfg->queue_max_bytes));
    metrics_gauge_set(m, METRICS_BODIES_MISSING, 0, (double)queue_bodies_missing(r->queue));
    if (r->store != NULL) {
        struct body_store_stats bs;
        body_store_get_stats(r->store, &bs);
        metrics_gauge_set(m, METRICS_BODY_STORE_BYTES, 0, (double)bs.disk_bytes);
        metrics_gauge_set(m, METRICS_BODY_STORE_SEGMENTS, 0, (double)bs.segments);
        metrics_gauge_set(m, METRICS_BODY_MEMORY_BYTES, 0, (double)queue_body_memory(r->queue));
        metrics_counter_set(m, METRICS_BODY_STORE_SYNCS, 0, bs.syncs);
        metrics_counter_set(m, METRICS_BODY_READ_ERRORS, 0, bs.read_errors);
    }
    if (r->fetch != NULL) {
        struct body_fetch_stats fs;
        body_fetch_get_stats(r->fetch, &fs);
        metrics_counter_set(m, METRICS_BODIES_FETCHED, 0, fs.fetched);
        metrics_counter_set(m, METRICS_BODY_FETCH_CORRUPT, 0, fs.corrupt);
    }
    metrics_gauge_set(m, METRICS_SESSIONS_OPEN, 0, (double)smtpd_server_sessions(r->smtpd));
    metrics_counter_set(m, METRICS_DUPLICATE_WINDOWS, 0, r->sched.duplicate_windows);
    metrics_counter_set(m, METRICS_LEASE_LAPSES, 0, r->spread.lapses);
    metrics_gauge_set(m, METRICS_DELIVERIES_RUNNING, 0, (double)r->sched.n_deliveries);
    struct proposer_stats ps;
    proposer_get_stats(r->prop, &ps);
    metrics_counter_set(m, METRICS_FORWARDED, 0, ps.forwarded);
    metrics_counter_set(m, METRICS_RESOLVED, 0, ps.resolved);
    /* Kept by the queue on every change: a scrape costs the same with a million queued. */
    struct queue_stats qs;
    queue_get_stats(r->queue, &qs);
    for (unsigned st = 0; st < QUEUE_STAGES; st++) {
        metrics_gauge_set(m, METRICS_QUEUE_MESSAGES, st, (double)qs.stage_msgs[st]);
        metrics_gauge_set(m, METRICS_QUEUE_RCPTS, st, (double)qs.stage_rcpts[st]);
    }
}
