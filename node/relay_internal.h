/*
 * relay_internal.h - what the files of the relay (node/relay*.c) share:
 * struct relay, grouped by concern, and the callbacks relay.c registers.
 * Private to node/; included by relay*.c and by unit tests of them.
 */
#ifndef HAMR_NODE_RELAY_INTERNAL_H
#define HAMR_NODE_RELAY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct body_store;
struct body_store_stream;
struct body_fetch;

#include "proto/hamr.pb-c.h"
#include "queue/queue.h"
#include "queue/queue_sched.h"
#include "consensus/consensus.h"
#include "net/cluster_tls.h"
#include "net/dkim.h"
#include "net/smtpc.h"
#include "net/smtpd.h"
#include "net/smtpd_server.h"
#include "node/cluster_clock.h"
#include "node/config.h"
#include "node/control.h"
#include "node/directory.h"
#include "node/disk_guard.h"
#include "node/http.h"
#include "node/metrics.h"
#include "node/peer.h"
#include "node/proposer.h"
#include "node/relay_rate.h"
#include "util/peak.h"

#define RELAY_VERSION "0.1.0"
#define RELAY_DIGEST_MAX_MESSAGES 100000 /* status leaves the O(queue) digest out above this */
#define RELAY_SCHED_MAX_ITEMS 256
/* Buckets of the index of running deliveries by lease id: a power of two. */
#define RELAY_SCHED_LEASE_SLOTS 512
#define RELAY_SCHED_DUTY 5       /* a kick waits DUTY times the last pick, at most scan_interval */
#define RELAY_SUSPEND_MAX 1024   /* suspended next hops remembered at once */
#define RELAY_SUSPEND_MS 10000   /* a suspended next hop is probed this often (or retry_min) */
#define RELAY_RETRY_MS 100       /* wait before trying a proposal again (no leader yet) */
#define RELAY_STOP_GRACE_MS 5000 /* a gentle stop waits this long for work in flight */
/*
 * Leases to any node (relay_spread.c, from cluster level 6): every node
 * reports to the leader every RELAY_REPORT_MS; one not heard from for
 * RELAY_REPORT_FRESH_MS gets no new lease. Below the level only the leader
 * delivers and nobody renews, so its leases last at least
 * RELAY_LEGACY_LEASE_MS (the old default) whatever lease_time says.
 */
#define RELAY_REPORT_MS 1000
#define RELAY_REPORT_FRESH_MS 3500
#define RELAY_REPORT_DESTS_MAX 64
#define RELAY_LEGACY_LEASE_MS (15 * 60 * 1000)

/*
 * RELAY_MAX_INFLIGHT - proposals handed to raft and not yet answered. More
 * wait in a FIFO. Besides bounding memory, a pause in the stream of appends
 * lets libraft 0.15 advance its commit index, which under a continuous
 * stream it can fail to do for long stretches (RAFT.md 4.5).
 */
#define RELAY_MAX_INFLIGHT 32

/* relay_delivery - one leased (message, destination) being delivered. */
struct relay_delivery {
    struct relay *relay;
    char queue_id[QUEUE_ID_MAX];
    uint64_t lease_id;
    uint64_t expires_at_ms;
    uint32_t max_attempts;
    size_t n_rcpts;
    uint32_t *rcpt_indexes;
    char **rcpts;
    char *sender;
    uint8_t *body; /* a body still in memory, copied: the queue may drop the message */
    size_t body_len;
    bool body_8bit;
    /*
     * A stored body is not read whole: the SMTP client asks the source for
     * one chunk at a time and the stream reads it from the store (its
     * SHA-256 checked with the last). body_status: what a chunk failed with.
     */
    struct body_store_stream *stream;
    struct smtpc_source source;
    smtpc_source_cb source_cb; /* the client's, for the chunk in flight */
    void *source_arg;
    int body_status;
    /* MTA-STS (relay_sts.c): asked once; the policy applied; the fetch d waits for. */
    bool sts_checked;
    enum queue_sts_mode sts_mode;
    char **sts_mx; /* enforce: the MX patterns the next hop must match */
    size_t n_sts_mx;
    struct relay_delivery *sts_next;
    char dest[QUEUE_DEST_MAX];    /* the destination key: "[host]:port" or "domain:port" */
    char nexthop[QUEUE_DEST_MAX]; /* its host part, for the SMTP client's resolver */
    uint16_t port;
    enum smtpc_tls_policy policy;
    /*
     * The envelope extensions, copied (the queue may drop the message):
     * msg.smtputf8, msg.requiretls and msg.ret are set at the start;
     * envid and rcpt_dsn (n_rcpts entries, their orcpt copies owned) back
     * msg.envid and msg.rcpt_dsn.
     */
    char *envid;
    struct smtp_dsn_rcpt *rcpt_dsn;
    struct smtpc_msg msg;
    /*
     * The lease, by this node's monotonic clock (uv_now): past deadline the
     * leader may have given the recipients to another node, so the attempt
     * is stopped before its final dot (lapsed) unless a renewal moved the
     * deadline on (relay_spread.c).
     */
    uint64_t deadline;
    bool lapsed;
    bool mem_queued;                 /* on relay_sched_state.mem_waiting */
    struct relay_delivery *mem_next; /* on it */
    struct relay_delivery *prev, *next;
    struct relay_delivery *lease_next; /* in its bucket of relay_sched_state.by_lease */
};

/* relay_start - a lease granted to this node, started on the loop's next turn. */
struct relay_start {
    char queue_id[QUEUE_ID_MAX];
    char dest[QUEUE_DEST_MAX];
    uint64_t lease_id;
    uint64_t deadline; /* uv_now */
    struct relay_start *next;
};

/* relay_member - what the leader knows of one node from its reports (relay_spread.c). */
struct relay_member {
    uint64_t id;
    char boot_id[33];
    uint64_t heard;          /* uv_now of its last report this term; 0: none */
    uint32_t slots;          /* deliveries it runs at once at most */
    uint32_t deliveries;     /* running at its last report */
    uint32_t assigned;       /* delivery items leased to it since */
    uint32_t live;           /* delivery items it holds leases of, by the queue at the last pick */
    uint64_t bodies_missing; /* bodies it lacks */
    uint64_t wall_ms;        /* its wall clock when it reported */
    int64_t skew_ms;         /* that wall clock less our cluster time, then */
    bool renewing;           /* a LeaseRenew of its leases is in flight */
    bool probed;             /* given a probe since its last report */
    bool behind;             /* had not applied what the leader had a tick before */
    uint64_t rejoin_index;   /* seen (re)started: behind until it has applied this index */
    char **suspended;        /* next hops it gives no work now */
    size_t n_suspended;
    char **probing; /* next hops it has suspended whose probe is due */
    size_t n_probing;
    uint64_t leased; /* delivery items leased to it this term (for status) */
};

/*
 * RELAY_LEASES_PER_CONN - deliveries leased to one next hop per connection
 * it may take: the leader leases at most this times max_per_destination
 * there at once, and from QUEUE_LEVEL_SPREAD a node holding L of them opens
 * at most ceil(L / RELAY_LEASES_PER_CONN) connections to it (its pool's
 * group cap, net/smtpc.h), so that the leader, which counts every node's
 * leases, keeps the sum of those within max_per_destination.
 */
#define RELAY_LEASES_PER_CONN 4
/*
 * RELAY_CONN_HOLD_MS - a holder keeps the connections its deliveries to a
 * next hop allowed at their peak over the last HOLD to 3 * HOLD ms (the
 * pool's group_hold_ms), so that they are not closed and opened again as
 * deliveries come and go; RELAY_CONN_LOOK_MS - the leader counts each
 * holder's share from its leases over the last LOOK to 3 * LOOK ms, never
 * less than the holder keeps (LOOK >= 3 * HOLD, util/peak.h).
 */
#define RELAY_CONN_HOLD_MS 300
#define RELAY_CONN_LOOK_MS (3 * RELAY_CONN_HOLD_MS)

/*
 * relay_dest_leases - leader, during one pick and its leases: the live
 * leases at one next hop per holder, and the connections they allow.
 */
struct relay_dest_leases {
    char *dest; /* NULL: an empty slot */
    uint64_t node[CONSENSUS_MAX_MEMBERS];
    uint32_t n[CONSENSUS_MAX_MEMBERS];         /* live leases now */
    struct peak recent[CONSENSUS_MAX_MEMBERS]; /* n lately (RELAY_CONN_LOOK_MS) */
    uint32_t holders;
    uint32_t overflow; /* leases of holders beyond the table, this pick: a connection each */
};

/* relay_spread_state - leases to any node, renewals, the cluster clock (relay_spread.c). */
struct relay_spread_state {
    uv_timer_t timer;       /* every RELAY_REPORT_MS: report, renew, stop what ran out */
    uv_timer_t start_timer; /* starts the leases granted during an apply */
    struct relay_start *starts;
    struct relay_start **starts_tail;
    struct relay_member members[CONSENSUS_MAX_MEMBERS];
    size_t n_members;
    struct cluster_clock clock;
    bool report_in_flight;
    bool report_again;     /* relay_spread_tell while a report was in flight */
    uint64_t lapses;       /* leases taken over after running out: possible duplicates */
    uint64_t stopped;      /* deliveries stopped before the final dot: their lease ran out */
    uint64_t late;         /* leases granted to this node that it got too late to use */
    uint64_t applied_now;  /* leader: its applied index at the last tick */
    uint64_t applied_mark; /* leader: ... at the tick before (a report behind it is behind) */
    /* Leader: live leases per next hop and holder (open addressing, a power of two). */
    struct relay_dest_leases *dl;
    size_t dl_cap, dl_used;
    bool dl_broken;  /* no memory to count: no lease this pick */
    uint64_t led_at; /* uv_now when this node last became leader (or stopped) */
};

/*
 * relay_suspended - a next hop the leader gives no work before until
 * (uv_now), then one message as a probe (probing) until its outcome.
 */
struct relay_suspended {
    char dest[QUEUE_DEST_MAX];
    uint64_t until;
    bool probing;
    size_t running; /* deliveries to dest this node runs now: a probe is one of them */
};

/* relay_sched_state - scheduling and delivery (relay_sched.c). */
struct relay_sched_state {
    uv_timer_t timer;      /* every scan_interval: lease due work, expire */
    uv_timer_t kick_timer; /* early run (relay_sched_kick) */
    uv_timer_t mem_timer;  /* hands bodies in memory to their deliveries (relay_deliver_mem_read) */
    struct relay_delivery *mem_waiting;
    uint64_t rest_until; /* uv_now before which a kick waits (RELAY_SCHED_DUTY) */
    unsigned in_flight;  /* scheduler proposals not yet answered */
    uint64_t lease_counter;
    struct relay_delivery *deliveries;
    size_t n_deliveries;
    /*
     * The same deliveries by lease id (relay_sched_lease_first): a renewal
     * finds its delivery without walking them all, once per renewed item.
     */
    struct relay_delivery *by_lease[RELAY_SCHED_LEASE_SLOTS];
    uint64_t duplicate_windows;        /* outcomes lost after a delivery attempt */
    struct relay_suspended *suspended; /* dead next hops (relay_sched_suspend) */
    size_t n_suspended;
};

/* relay_sts_none - a domain without an MTA-STS policy (or whose fetch failed) until until. */
struct relay_sts_none {
    char domain[254];
    uint64_t until; /* wall clock ms */
};

#define RELAY_STS_NONE_SLOTS 1024 /* a power of two */

/* relay_sts_state - MTA-STS fetches and what the leader remembers of them (relay_sts.c). */
struct relay_sts_state {
    struct sts *fetcher; /* NULL with [mta_sts] enabled = no */
    struct relay_sts_fetch *fetches;
    size_t n_fetches;
    struct relay_sts_none none[RELAY_STS_NONE_SLOTS];
};

/* relay_accept_state - the acceptance path (relay_accept.c). */
struct relay_accept_state {
    uint64_t id_counter;  /* the low bits of queue ids */
    uint64_t leader_seen; /* uv_now when a leader was last known here (0: never) */
};

/* relay_stop_state - a gentle stop, then closing every part (relay.c). */
struct relay_stop_state {
    uv_timer_t timer;        /* a gentle stop waits on this for work to finish */
    uint64_t started;        /* uv_now when relay_stop began, 0 before */
    bool transferring;       /* handing leadership on */
    void (*done)(void *arg); /* told once everything has closed */
    void *arg;
    int closing;         /* parts still closing (relay_close_all) */
    bool timers_started; /* the timers other than kick_timer exist */
};

/*
 * relay - one node: what it is made of (owned here and closed by relay.c),
 * and each concern's state. The node directory, the disk guard and the
 * proposer are modules of their own.
 */
struct relay {
    uv_loop_t *loop;
    const struct hamr_config *cfg;
    struct queue *queue;
    struct consensus *cons;
    struct proposer *prop;  /* every entry this node wants in the log goes through it */
    struct directory *dir;  /* our NodeInfo, the others' addresses, the cluster level */
    struct disk_guard disk; /* free space: 452 at MAIL, stop before raft's log write fails */
    struct smtpc_pool *pool;
    struct relay_rate *rate; /* [delivery] rate_per_destination, on the leader (relay_rate.c) */
    struct dns *dns;         /* the resolver of next hops (MX, addresses), on the loop */
    struct mx *mx;           /* next hops to addresses for the pool (RFC 5321 5.1) */
    struct smtpd_server *smtpd;
    struct smtpd_policy policy;    /* cfg->smtpd plus the credentials table */
    struct smtpd_auth *auth;       /* NULL without [smtpd] auth_file */
    struct smtpd_rcptmap *rcptmap; /* NULL without [smtpd] relay_recipients */
    struct smtpc_auth *sauth;      /* NULL without [delivery] auth_file: outbound AUTH */
    struct dkim_keys *dkim;        /* NULL without [dkim] keys, or with sign = no */
    struct cluster_tls *ctls;      /* the cluster PKI; NULL with [cluster_tls] plaintext */
    struct control *control;
    struct peer_server *peer_srv; /* NULL on a node without [listen] peer */
    struct peer_client *peer_cli;
    struct metrics *metrics;
    struct body_store *store;  /* bodies on this node's disk (relay_bodies.c) */
    struct body_fetch *fetch;  /* bodies this node lacks, from peers; NULL without a peer port */
    struct http *http;         /* NULL without [listen] http */
    struct http *metrics_http; /* NULL without [listen] metrics: the TLS one */
    uv_timer_t housekeeping_timer; /* once a second: disk, deadlines, raft health */
    uv_timer_t retry_timer;        /* every RELAY_RETRY_MS: proposer, directory */
    uint64_t last_leader_id;       /* for counting leader changes */
    char boot_id[33];
    bool draining;
    bool stopping;
    bool failed;
    bool queue_full; /* at a queue limit at the last housekeeping: log the changes */
    struct relay_accept_state accept;
    struct relay_sched_state sched;
    struct relay_sts_state sts;
    struct relay_spread_state spread;
    struct relay_stop_state stop;
};

/* relay.c */
void relay_fail(struct relay *r, const char *why);

/* relay_bodies.c */
int relay_bodies_open(struct relay *r, char *err, size_t errlen);
int relay_bodies_start(struct relay *r, char *err, size_t errlen);
int relay_bodies_before_snapshot(struct relay *r);
/* Write-behind: bodies younger than KEEP_MS stay in memory, at most KEEP_BYTES of them. */
#define RELAY_BODY_KEEP_MS 1000
#define RELAY_BODY_KEEP_BYTES ((size_t)32 << 20)
#define RELAY_BODY_SPILL_BUDGET ((size_t)8 << 20) /* per call: a few ms of writes */
void relay_bodies_spill(struct relay *r, bool when_over);
void relay_bodies_write_failed(struct relay *r, int rv);
void relay_bodies_restored(struct relay *r);
void relay_bodies_want(struct relay *r, const struct queue_msg *m);
void relay_bodies_corrupt(struct relay *r, const char *id, int status);
void relay_bodies_serve_call(void *data, struct peer_call *call, const Hamr__PeerFetch *req);
void relay_bodies_close(struct relay *r, void (*cb)(void *arg), void *arg);

/* relay_snapshot.c */
int relay_snapshot_view(void *data, void **view);
int relay_snapshot_write(void *view, uint8_t **buf, size_t *len);
void relay_snapshot_release(void *view);

/* relay_accept.c */
int relay_queue_id(uint64_t ms, uint64_t node_id, uint64_t counter, char *id, size_t idlen);
int relay_sink_new_id(void *data, char *id, size_t idlen);
int relay_sink_check_mail(void *data);
/*
 * relay_leader_lately - at MAIL: is a leader known (leader_id, from raft),
 * or was one within the last election timeout (the submit at the end of
 * DATA waits for it)? Notes when one was known (accept.leader_seen, also
 * kept by the retry tick).
 */
bool relay_leader_lately(struct relay *r, uint64_t leader_id, uint64_t now);
/* relay_sink_ext_ok - may sessions take SMTPUTF8, DSN and REQUIRETLS (cluster level 5)? */
bool relay_sink_ext_ok(void *data);
int relay_sink_submit(void *data, const struct smtpd_envelope *env, smtpd_sink_cb cb, void *arg);
void relay_peer_request(void *data, struct peer_call *call, const Hamr__PeerMsg *msg);

/* relay_sched.c */
void relay_sched_tick(uv_timer_t *t);
void relay_sched_kick(struct relay *r);

/*
 * relay_sched_resume_all - forget every suspended next hop (a flush of the
 * whole queue applied: the operator wants everything tried now, as
 * Postfix's postqueue -f revives dead destinations); frees the table.
 */
void relay_sched_resume_all(struct relay *r);
int relay_route_dest(void *data, const char *rcpt, char *dest, size_t destlen);
/*
 * relay_sched_dest_state - what this node's attempts say of dest at now
 * (uv_now): RELAY_DEST_OK; RELAY_DEST_SUSPENDED (no SMTP session lately);
 * RELAY_DEST_PROBE (suspended, its probe is due and none runs).
 */
enum { RELAY_DEST_OK = 0, RELAY_DEST_SUSPENDED = 1, RELAY_DEST_PROBE = 2 };
int relay_sched_dest_state(struct relay *r, const char *dest, uint64_t now);
/*
 * relay_delivery_link, relay_delivery_unlink - d onto the running
 * deliveries (the list, the index by lease id, its next hop's count), and
 * off them. Only relay_sched.c runs deliveries; exported for unit tests.
 */
void relay_delivery_link(struct relay *r, struct relay_delivery *d);
void relay_delivery_unlink(struct relay *r, struct relay_delivery *d);

/*
 * relay_sched_lease_first - the first running delivery in lease_id's bucket
 * of the index; follow lease_next. Other lease ids share buckets, and a
 * lease id is unique only with its queue id: the caller compares both.
 */
struct relay_delivery *relay_sched_lease_first(struct relay *r, uint64_t lease_id);

/* relay_deliver_send - hand d to the SMTP client pool (after its MTA-STS policy is known). */
void relay_deliver_send(struct relay *r, struct relay_delivery *d);

/*
 * relay_deliver_start - deliver the recipients of m that lease_id gave this
 * node, stopping before the final dot once deadline (uv_now) has passed.
 */
void relay_deliver_start(struct relay *r,
                         const struct queue_msg *m,
                         uint64_t lease_id,
                         const char *dest,
                         uint64_t deadline);

/*
 * relay_deliver_lapsed - has d's lease run out by this node's clock
 * (d->deadline)? Then it is marked so and never reaches its final dot.
 */
bool relay_deliver_lapsed(struct relay_delivery *d);

/* relay_spread.c */
void relay_spread_init(struct relay *r);
void relay_spread_start(struct relay *r);
void relay_spread_close(struct relay *r);
bool relay_spread_on(const struct relay *r);
uint64_t relay_lease_ms(const struct relay *r);
uint64_t relay_cluster_now(struct relay *r);
void relay_spread_leader(struct relay *r, bool leader);
void relay_spread_serve(struct relay *r, struct peer_call *call, const Hamr__PeerReport *rep);
bool relay_spread_ready(struct relay *r);
bool relay_clock_usable(struct relay *r);
/* relay_spread_poke - a node that does not know the cluster time yet asks the leader now. */
void relay_spread_poke(struct relay *r);
/* relay_spread_tell - a follower whose next hops changed (one suspended) reports now. */
void relay_spread_tell(struct relay *r);
/*
 * relay_member_place - leader: a report of mb says boot and applied (ours:
 * the leader's applied index now); sets mb->behind (no new leases).
 */
void relay_member_place(struct relay *r,
                        struct relay_member *mb,
                        const char *boot,
                        uint64_t applied,
                        uint64_t ours);
/*
 * relay_spread_count_reset, relay_spread_counted, relay_spread_count_done
 * - leader: before a pick, the live counts to 0; during it
 * (queue_route.leased), one live lease of node at dest (and of node in
 * all); after it, the counts noted for the look back. relay_spread_holder
 * keeps within them.
 */
void relay_spread_count_reset(struct relay *r);
void relay_spread_counted(void *data, const char *dest, uint64_t node);
void relay_spread_count_done(struct relay *r);
int relay_spread_dest_max(struct relay *r, const char *dest);
struct relay_member *relay_spread_holder(struct relay *r, const char *dest);
/* relay_spread_fill_status - the clock and delivery fields of st; dm, dmp: CONSENSUS_MAX_MEMBERS
 * each. */
void relay_spread_fill_status(struct relay *r,
                              Hamr__NodeStatus *st,
                              Hamr__DeliveryMember *dm,
                              Hamr__DeliveryMember **dmp);

/* relay_sts.c */
int relay_sts_start(struct relay *r, char *err, size_t errlen);
void relay_sts_close(struct relay *r);
bool relay_sts_hold(struct relay *r, struct relay_delivery *d);
const char *relay_sts_policy_name(const struct relay_delivery *d);
void relay_sts_delivery_free(struct relay_delivery *d);

/* relay_http.c */
void relay_http_ready(void *data, struct health_input *in);
void relay_metrics_fill(void *data, struct metrics *m);

/* relay_ctl.c */
void relay_ctl_handle(void *data, struct control_call *call, const Hamr__ControlRequest *req);
void relay_ctl_digest(const struct queue *q, size_t max, char digest[65]);

#endif
