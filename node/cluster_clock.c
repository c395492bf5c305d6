/*
 * cluster_clock.c - cluster time, kept by the leader and estimated by the
 * followers (see cluster_clock.h for the rules, what they assume and what
 * they do not handle).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/cluster_clock.h"

/* cluster_clock_add - a + b, at most UINT64_MAX. */
static uint64_t cluster_clock_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* cluster_clock_carried - the base carried on to mono_ms (known only; before the base: the base).
 */
static uint64_t cluster_clock_carried(const struct cluster_clock *c, uint64_t mono_ms)
{
    if (mono_ms <= c->base_mono_ms)
        return c->base_ms;
    return cluster_clock_add(c->base_ms, mono_ms - c->base_mono_ms);
}

/*
 * cluster_clock_move - cluster time is ms at mono_ms, or what this node knew
 * carried on to there if that is later. A mono_ms before the base is first
 * brought to the base, so that the base's monotonic time never goes back.
 */
static void cluster_clock_move(struct cluster_clock *c, uint64_t mono_ms, uint64_t ms)
{
    if (c->known) {
        if (mono_ms < c->base_mono_ms) {
            ms = cluster_clock_add(ms, c->base_mono_ms - mono_ms);
            mono_ms = c->base_mono_ms;
        }
        uint64_t had = cluster_clock_carried(c, mono_ms);
        if (ms < had)
            ms = had;
    }
    c->base_ms = ms;
    c->base_mono_ms = mono_ms;
    c->known = true;
}

/* cluster_clock_median - the middle of walls[0..n) in order, the lower middle for an even n. */
static uint64_t cluster_clock_median(const uint64_t *walls, size_t n)
{
    size_t k = (n - 1) / 2; /* its index in order */
    for (size_t i = 0; i < n; i++) {
        size_t below = 0, upto = 0;
        for (size_t j = 0; j < n; j++) {
            below += walls[j] < walls[i];
            upto += walls[j] <= walls[i];
        }
        if (below <= k && k < upto)
            return walls[i];
    }
    return walls[k]; /* not reached: some value holds every index */
}

void cluster_clock_init(struct cluster_clock *c, uint64_t max_skew_ms)
{
    *c = (struct cluster_clock){.max_skew_ms = max_skew_ms};
}

void cluster_clock_lead(struct cluster_clock *c, uint64_t mono_ms, uint64_t floor_ms)
{
    cluster_clock_move(c, mono_ms, floor_ms);
    c->leading = true;
    c->synced = false;
}

void cluster_clock_unlead(struct cluster_clock *c)
{
    c->leading = false;
    c->synced = false;
}

uint64_t cluster_clock_sample(struct cluster_clock *c,
                              uint64_t mono_ms,
                              const uint64_t *walls,
                              size_t n,
                              size_t voters)
{
    if (!c->leading || n == 0 || n <= voters / 2)
        return 0;
    c->synced = true;
    uint64_t median = cluster_clock_median(walls, n);
    if (mono_ms < c->base_mono_ms) { /* an older sample: its median, carried on to the base */
        median = cluster_clock_add(median, c->base_mono_ms - mono_ms);
        mono_ms = c->base_mono_ms;
    }
    uint64_t now = cluster_clock_carried(c, mono_ms);
    if (median <= now || median - now <= CLUSTER_CLOCK_STEP_MS)
        return 0;
    c->base_ms = median;
    c->base_mono_ms = mono_ms;
    return median - now;
}

bool cluster_clock_synced(const struct cluster_clock *c)
{
    return c->leading && c->synced;
}

void cluster_clock_answer(struct cluster_clock *c,
                          uint64_t sent_mono_ms,
                          uint64_t recv_mono_ms,
                          uint64_t cluster_ms)
{
    if (c->leading)
        return; /* this node's own time is cluster time */
    uint64_t half_rtt = recv_mono_ms > sent_mono_ms ? (recv_mono_ms - sent_mono_ms) / 2 : 0;
    cluster_clock_move(c, recv_mono_ms, cluster_clock_add(cluster_ms, half_rtt));
}

uint64_t cluster_clock_now(const struct cluster_clock *c, uint64_t mono_ms, uint64_t wall_ms)
{
    return c->known ? cluster_clock_carried(c, mono_ms) : wall_ms;
}

bool cluster_clock_known(const struct cluster_clock *c)
{
    return c->known;
}

int64_t cluster_clock_skew(const struct cluster_clock *c, uint64_t mono_ms, uint64_t wall_ms)
{
    if (!c->known)
        return 0;
    uint64_t now = cluster_clock_carried(c, mono_ms);
    if (wall_ms >= now)
        return wall_ms - now > INT64_MAX ? INT64_MAX : (int64_t)(wall_ms - now);
    return now - wall_ms > INT64_MAX ? -INT64_MAX : -(int64_t)(now - wall_ms);
}

bool cluster_clock_skewed(const struct cluster_clock *c, uint64_t mono_ms, uint64_t wall_ms)
{
    if (c->max_skew_ms == 0 || !c->known)
        return false;
    uint64_t now = cluster_clock_carried(c, mono_ms);
    uint64_t off = wall_ms >= now ? wall_ms - now : now - wall_ms;
    return off > c->max_skew_ms;
}
