/*
 * cluster_clock.h - cluster time: the one clock, in ms since the epoch, that
 * the times stored in the queue are stamped in (message expiry, next retry,
 * lease end), so that they mean the same on every node. A node's wall clock
 * can be stepped (by hand, by an NTP client that finds it far off, by a VM
 * restored from a snapshot); stamped from it, one node could expire the
 * queue or re-lease leases still in use. Durations inside a node use its
 * monotonic clock (uv_now); this module never reads a clock itself.
 *
 * The raft leader keeps cluster time: it starts, when the node begins to
 * lead, at the newest time it knows (the newest timestamp in the replicated
 * log, or the cluster time it last knew as leader or from a leader's answer,
 * carried on by its monotonic clock) and then advances with the leader's
 * monotonic clock. The leader samples the wall clocks of the nodes (its own
 * and those in the followers' reports); once it has a majority of the
 * voters, it is synced, and whenever the median of a sample is ahead of
 * cluster time by more than CLUSTER_CLOCK_STEP_MS, cluster time steps
 * forward to it. Cluster time never goes backwards. A follower estimates
 * cluster time from the leader's answers to its reports (the leader's time
 * plus half the round trip) and carries the estimate on by its own
 * monotonic clock, never moving it backwards. A node that knows nothing yet
 * reads its wall clock.
 *
 * Assumes: the monotonic clocks of the nodes run at about the same rate (an
 * NTP-disciplined CLOCK_MONOTONIC is within a few ppm; a follower's
 * estimate drifts by that rate difference between answers), and a majority
 * of the voters' wall clocks is right. Then one wrong wall clock of three
 * (two of five), the leader's own included, does not move cluster time.
 * The median is of the clocks in the sample: with voters missing from it,
 * fewer wrong clocks suffice (two of the three a five-node leader hears).
 *
 * Does not handle: a majority of wall clocks ahead (cluster time steps to
 * them and stays ahead, since it never steps back; a majority behind only
 * stops the steps, time still advances); a monotonic clock that stops
 * while the machine is suspended (the leader's time falls behind until its
 * next sample steps it forward; a follower's estimate, until the next
 * answer); drift below the step threshold (cluster time may trail the
 * median by up to CLUSTER_CLOCK_STEP_MS, it is never slowed or sped up);
 * an asymmetric round trip (a follower's estimate is off by up to half the
 * round trip); a new leader that knows nothing but an old floor: its time
 * is behind until its first majority sample, so stamps wait for
 * cluster_clock_synced. A follower's estimate does not expire: cut off from
 * the leader it keeps carrying the last one on.
 *
 * Owns: the base (a cluster time and the monotonic time it was taken at) and
 * the leader's synced flag. May call: nothing; pure (all times are
 * arguments).
 */
#ifndef HAMR_NODE_CLUSTER_CLOCK_H
#define HAMR_NODE_CLUSTER_CLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* CLUSTER_CLOCK_STEP_MS - a sample's median further ahead than this steps cluster time to it. */
#define CLUSTER_CLOCK_STEP_MS 1000

struct cluster_clock {
    uint64_t max_skew_ms;  /* cluster_clock_skewed's limit; 0: never skewed */
    uint64_t base_ms;      /* the cluster time at base_mono_ms (when known) */
    uint64_t base_mono_ms; /* this node's monotonic clock then */
    bool known;            /* base set: this node leads or led, or had an answer */
    bool leading;          /* between cluster_clock_lead and cluster_clock_unlead */
    bool synced;           /* leading, and a majority sample since it began */
};

/* cluster_clock_init - nothing known yet; skewed beyond max_skew_ms (0: never). */
void cluster_clock_init(struct cluster_clock *c, uint64_t max_skew_ms);

/*
 * cluster_clock_lead - this node began to lead at monotonic mono_ms. Cluster
 * time starts at the larger of floor_ms (the newest timestamp in the
 * replicated log) and the cluster time this node knew, carried on to
 * mono_ms. Not synced until a majority sample.
 */
void cluster_clock_lead(struct cluster_clock *c, uint64_t mono_ms, uint64_t floor_ms);

/* cluster_clock_unlead - this node leads no more; it keeps carrying its last time on. */
void cluster_clock_unlead(struct cluster_clock *c);

/*
 * cluster_clock_sample - the leader saw the wall clocks walls[0..n) of n
 * distinct nodes, itself included, out of `voters` voters (n <= voters),
 * each already carried on to mono_ms by the caller. With a majority
 * (n > voters / 2) the leader is synced, and if the median (for an even n
 * the lower of the two middle ones) is ahead of cluster time by more than
 * CLUSTER_CLOCK_STEP_MS, cluster time steps forward to it. Returns the step
 * in ms (0: none; also when not leading or without a majority), for the log.
 */
uint64_t cluster_clock_sample(struct cluster_clock *c,
                              uint64_t mono_ms,
                              const uint64_t *walls,
                              size_t n,
                              size_t voters);

/* cluster_clock_synced - leading, with a majority sample since it began. */
bool cluster_clock_synced(const struct cluster_clock *c);

/*
 * cluster_clock_answer - the leader answered a report this node sent at
 * monotonic sent_mono_ms, received at recv_mono_ms, with its cluster time
 * cluster_ms: the estimate at recv_mono_ms is cluster_ms plus half the round
 * trip, or the estimate this node had, carried on, if that is later (never
 * backwards). Ignored while this node leads.
 */
void cluster_clock_answer(struct cluster_clock *c,
                          uint64_t sent_mono_ms,
                          uint64_t recv_mono_ms,
                          uint64_t cluster_ms);

/*
 * cluster_clock_now - cluster time at monotonic mono_ms: the base carried on
 * by mono_ms (a mono_ms before the base counts as the base), or wall_ms
 * while nothing is known.
 */
uint64_t cluster_clock_now(const struct cluster_clock *c, uint64_t mono_ms, uint64_t wall_ms);

/* cluster_clock_known - this node leads or led, or has had an answer from a leader. */
bool cluster_clock_known(const struct cluster_clock *c);

/* cluster_clock_skew - wall_ms minus cluster time at mono_ms (ahead: > 0); 0 while not known. */
int64_t cluster_clock_skew(const struct cluster_clock *c, uint64_t mono_ms, uint64_t wall_ms);

/* cluster_clock_skewed - |skew| beyond max_skew_ms (never with max_skew_ms 0). */
bool cluster_clock_skewed(const struct cluster_clock *c, uint64_t mono_ms, uint64_t wall_ms);

#endif
