/*
 * metrics.h - a small metrics registry (counters, gauges, histograms with
 * fixed buckets) rendered in the Prometheus text exposition format 0.0.4.
 *
 * A registry is built once from a table of struct metrics_def (borrowed, it
 * must outlive the registry: a static table). Every series is allocated at
 * creation, so updating a metric never allocates: a metric is named by its
 * index in the table and a series by the index of its label value in the
 * def's fixed set. Passing a wrong index or type is a programming error and
 * fails HAMR_ASSERT.
 *
 * The registry is not thread-safe: it belongs to the node's one loop thread.
 *
 * Owns: the registry and its rendering. May call: util only.
 */
#ifndef HAMR_NODE_METRICS_H
#define HAMR_NODE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define METRICS_LABEL_VALUE_MAX 128 /* a label value set at run time (copied, truncated) */

enum metrics_type {
    METRICS_COUNTER = 0,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
};

/*
 * metrics_def - one metric family. With label == NULL the family has one
 * series. With a label and values (NULL-terminated) it has one series per
 * value, in that order. With a label and values == NULL it has one series
 * whose label value is set with metrics_set_label (build info). Histograms
 * have no label; buckets are the upper bounds in increasing order, without
 * +Inf, which is always added.
 */
struct metrics_def {
    const char *name; /* [a-zA-Z_:][a-zA-Z0-9_:]*; counters end in _total */
    const char *help; /* escaped on output */
    enum metrics_type type;
    const char *label;         /* label name, or NULL */
    const char *const *values; /* label values, NULL-terminated, or NULL */
    const double *buckets;     /* histograms only */
    size_t n_buckets;
};

struct metrics;

/*
 * metrics_source - fills the gauges that come from state (queue sizes, raft
 * indexes) just before a render. fill borrows m for the call only.
 */
struct metrics_source {
    void *data;
    void (*fill)(void *data, struct metrics *m);
};

/*
 * metrics_new - a registry for defs[0..n) (borrowed for the registry's
 * lifetime), every value zero. 0 and *out, HAMR_EINVAL (a def breaks the
 * rules above), or HAMR_ENOMEM.
 */
int metrics_new(const struct metrics_def *defs, size_t n, struct metrics **out);

/* metrics_free - release m; returns NULL. NULL is accepted. */
struct metrics *metrics_free(struct metrics *m);

/* metrics_inc - add 1 to the unlabelled counter id. */
void metrics_inc(struct metrics *m, unsigned id);

/* metrics_inc_label - add 1 to series label of counter id. */
void metrics_inc_label(struct metrics *m, unsigned id, unsigned label);

/* metrics_counter_add - add n to series label of counter id. */
void metrics_counter_add(struct metrics *m, unsigned id, unsigned label, uint64_t n);

/*
 * metrics_counter_set - set a counter that the caller counts elsewhere (from
 * a metrics_source fill). The caller keeps it monotonic.
 */
void metrics_counter_set(struct metrics *m, unsigned id, unsigned label, uint64_t v);

/* metrics_gauge_set - set series label of gauge id. */
void metrics_gauge_set(struct metrics *m, unsigned id, unsigned label, double v);

/* metrics_gauge_add - add d (may be negative) to series label of gauge id. */
void metrics_gauge_add(struct metrics *m, unsigned id, unsigned label, double d);

/* metrics_observe - record one sample v in histogram id. */
void metrics_observe(struct metrics *m, unsigned id, double v);

/*
 * metrics_set_label - the run-time label value of a family defined with a
 * label and no values (copied, truncated to METRICS_LABEL_VALUE_MAX - 1).
 */
void metrics_set_label(struct metrics *m, unsigned id, const char *value);

/*
 * metrics_hide - leave family id out of the render (HELP and TYPE too) while
 * hidden is true, for a metric that does not apply to this node (no cluster
 * TLS): an absent series raises no alert, a zero one would. Its values are
 * kept and may still be set. Every family starts shown.
 */
void metrics_hide(struct metrics *m, unsigned id, bool hidden);

/* metrics_label_index - index of value in id's fixed label set, or -1. Not for hot paths. */
int metrics_label_index(const struct metrics *m, unsigned id, const char *value);

/* metrics_counter / metrics_gauge / metrics_hist_count - read a value back (tests, logs). */
uint64_t metrics_counter(const struct metrics *m, unsigned id, unsigned label);
double metrics_gauge(const struct metrics *m, unsigned id, unsigned label);
uint64_t metrics_hist_count(const struct metrics *m, unsigned id);

/*
 * metrics_render - append the exposition text of every family, in table
 * order, to out (its limit applies). 0, HAMR_ETOOBIG or HAMR_ENOMEM (out
 * then holds a partial text; the caller discards it).
 */
int metrics_render(const struct metrics *m, struct buf *out);

/* ------------------------------------------------------------------------ */
/* The hamr metric set.                                                     */
/* ------------------------------------------------------------------------ */

/* Indexes into metrics_hamr_defs; the table in metrics.c is in this order. */
enum metrics_hamr_id {
    METRICS_SESSIONS_OPEN = 0,   /* gauge */
    METRICS_SESSIONS_TOTAL,      /* counter */
    METRICS_MESSAGES_ACCEPTED,   /* counter: 250 after DATA */
    METRICS_SMTP_REJECTS,        /* counter{code}: see metrics_hamr_reject */
    METRICS_COMMIT_SECONDS,      /* histogram: submit to commit, seconds */
    METRICS_QUEUE_MESSAGES,      /* gauge{state}: enum metrics_hamr_state */
    METRICS_QUEUE_RCPTS,         /* gauge{state}: enum metrics_hamr_state */
    METRICS_DELIVERIES,          /* counter{outcome}: enum metrics_hamr_outcome */
    METRICS_RETRIES,             /* counter */
    METRICS_DUPLICATE_WINDOWS,   /* counter */
    METRICS_FORWARDED,           /* counter */
    METRICS_RESOLVED,            /* counter */
    METRICS_PEER_REFUSED,        /* counter{reason}: enum peer_policy_reason (not "ok") */
    METRICS_RAFT_PORT,           /* counter{event}: enum metrics_hamr_raft_port */
    METRICS_PEER_PORT,           /* counter{event}: enum metrics_hamr_peer_port */
    METRICS_CONTROL_REFUSED,     /* counter{reason}: enum metrics_hamr_control_refusal */
    METRICS_PKI_DAYS_LEFT,       /* gauge{cert}: enum metrics_hamr_cert; hidden in plaintext */
    METRICS_PKI_NOT_AFTER,       /* gauge{cert}: Unix seconds; hidden in plaintext */
    METRICS_PKI_RELOADS,         /* counter; hidden in plaintext */
    METRICS_METRICS_REFUSED,     /* counter{reason}: the same labels, of [listen] metrics */
    METRICS_RAFT_TERM,           /* gauge */
    METRICS_RAFT_COMMIT_INDEX,   /* gauge */
    METRICS_RAFT_APPLIED_INDEX,  /* gauge */
    METRICS_RAFT_IS_LEADER,      /* gauge 0/1 */
    METRICS_RAFT_LEADER_CHANGES, /* counter */
    METRICS_DISK_FREE_BYTES,     /* gauge */
    METRICS_DRAINING,            /* gauge 0/1 */
    METRICS_QUEUE_BYTES,         /* gauge: body bytes in the replicated queue */
    METRICS_QUEUE_LIMIT_MSGS,    /* gauge: [storage] queue_max_messages (0: none) */
    METRICS_QUEUE_LIMIT_BYTES,   /* gauge: [storage] queue_max_bytes (0: none) */
    METRICS_QUEUE_FULL,          /* gauge 0/1: at a queue limit, MAIL gets 452 */
    METRICS_BODIES_MISSING,      /* gauge: queued messages whose body this node lacks */
    METRICS_BODY_STORE_BYTES,    /* gauge: size of the body store's segments */
    METRICS_BODY_MEMORY_BYTES,   /* gauge: bodies not yet written to the store */
    METRICS_BODY_STORE_SEGMENTS, /* gauge: segment files */
    METRICS_BODY_STORE_SYNCS,    /* counter: body store syncs */
    METRICS_BODY_READ_ERRORS,    /* counter: bodies found unreadable or corrupt on disk */
    METRICS_BODIES_FETCHED,      /* counter: bodies fetched from peers */
    METRICS_BODY_FETCH_CORRUPT,  /* counter: fetched bodies whose SHA-256 did not match */
    METRICS_DESTS_SUSPENDED,     /* gauge: next hops the leader does not try (dead) */
    METRICS_SUSPENSIONS,         /* counter: next hops suspended */
    METRICS_DNS_ANSWERS,         /* counter{result}: DNS lookups answered, by enum dns_status */
    METRICS_DNS_CACHE_HITS,      /* counter: of those, from the cache */
    METRICS_DNS_SENT,            /* counter: DNS queries sent to a server */
    METRICS_DNS_CACHE_ENTRIES,   /* gauge: answers in the DNS cache */
    METRICS_DANE,                /* counter{result}: DANE outcomes (smtpc_stats) */
    METRICS_DELIVERY_CONNS,      /* counter: connections opened to next hops (smtpc_stats) */
    METRICS_TLS_POLICY_SOURCE,   /* counter{source}: delivery attempts by where their TLS policy
                                    came from (enum metrics_hamr_tls_source) */
    METRICS_DKIM_SIGNED,         /* counter{alg}: messages DKIM-signed, by enum dkim_alg */
    METRICS_DKIM_FAILURES,       /* counter{alg}: signing failed (451 4.3.0), by enum dkim_alg */
    METRICS_CLOCK_SKEW,          /* gauge: this node's wall clock less the cluster time, s */
    METRICS_CLOCK_SKEWED,        /* gauge 0/1: more than [node] max_clock_skew away */
    METRICS_LEASE_LAPSES,        /* counter: leases taken over after running out */
    METRICS_DELIVERIES_STOPPED,  /* counter: deliveries stopped before the final dot */
    METRICS_DELIVERIES_RUNNING,  /* gauge: deliveries this node runs now */
    METRICS_BUILD_INFO,          /* gauge{version} = 1 */
    METRICS_HAMR_COUNT
};

/* Label indexes of METRICS_QUEUE_MESSAGES and METRICS_QUEUE_RCPTS. */
enum metrics_hamr_state {
    METRICS_STATE_PENDING = 0,
    METRICS_STATE_DEFERRED,
    METRICS_STATE_ACTIVE,
    METRICS_STATE_HELD,
};

/* Label indexes of METRICS_TLS_POLICY_SOURCE. */
enum metrics_hamr_tls_source {
    METRICS_TLS_SOURCE_DEFAULT = 0, /* [delivery] tls_policy */
    METRICS_TLS_SOURCE_DOMAIN,      /* a [tls_policy] entry */
    METRICS_TLS_SOURCE_DANE,        /* a TLSA record authenticated the session */
    METRICS_TLS_SOURCE_MTA_STS,     /* an MTA-STS policy (enforce or testing) */
};

/* Label indexes of METRICS_DELIVERIES. */
enum metrics_hamr_outcome {
    METRICS_OUTCOME_DELIVERED = 0,
    METRICS_OUTCOME_DEFERRED,
    METRICS_OUTCOME_BOUNCED,
    METRICS_OUTCOME_EXPIRED,
};

/* Label indexes of METRICS_RAFT_PORT (consensus_port_stats). */
enum metrics_hamr_raft_port {
    METRICS_RAFT_PORT_ACCEPTED = 0,
    METRICS_RAFT_PORT_REFUSED,
    METRICS_RAFT_PORT_TIMED_OUT,
    METRICS_RAFT_PORT_OVER_CAP,
    METRICS_RAFT_PORT_TLS,
    METRICS_RAFT_PORT_IDENTITY,
    METRICS_RAFT_PORT_OUT_TLS,
    METRICS_RAFT_PORT_OUT_IDENTITY,
};

/* Label indexes of METRICS_PEER_PORT (peer_server_stats, then peer_client_stats as out_*). */
enum metrics_hamr_peer_port {
    METRICS_PEER_PORT_ACCEPTED = 0,
    METRICS_PEER_PORT_TLS,
    METRICS_PEER_PORT_IDENTITY,
    METRICS_PEER_PORT_TIMED_OUT,
    METRICS_PEER_PORT_OUT_TLS,
    METRICS_PEER_PORT_OUT_IDENTITY,
};

/* Label indexes of METRICS_CONTROL_REFUSED and METRICS_METRICS_REFUSED (operator_gate_stats). */
enum metrics_hamr_control_refusal {
    METRICS_CONTROL_REFUSED_TLS = 0,   /* the TLS handshake failed */
    METRICS_CONTROL_REFUSED_IDENTITY,  /* a certificate that names no operator */
    METRICS_CONTROL_REFUSED_TIMED_OUT, /* no TLS handshake and first request in time */
};

/* Label indexes of METRICS_PKI_DAYS_LEFT and METRICS_PKI_NOT_AFTER (the cluster PKI). */
enum metrics_hamr_cert {
    METRICS_CERT_NODE = 0, /* this node's certificate */
    METRICS_CERT_CA,       /* the cluster CA (the earliest to expire of the CA file's) */
};

/* The table itself, METRICS_HAMR_COUNT entries. */
extern const struct metrics_def metrics_hamr_defs[];

/*
 * metrics_hamr_new - the hamr registry, with hamr_build_info{version=...} set
 * to 1 (version is copied).
 */
int metrics_hamr_new(const char *version, struct metrics **out);

/*
 * metrics_hamr_reject - count one 4xx/5xx SMTP reply under its code; codes
 * outside the fixed set count as code="other".
 */
void metrics_hamr_reject(struct metrics *m, int code);

#endif
