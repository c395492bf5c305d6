/*
 * relay_rate.c - the leader's rate limit per next hop ([delivery]
 * rate_per_destination, messages a minute for the whole cluster): a token
 * bucket per destination, holding at most one second's worth of messages
 * (at least one), refilled continuously by the uv_now clock. The leader
 * takes a token for each delivery it leases there (relay_sched_assign), so
 * the limit holds whichever node delivers, as the per-destination
 * connections do (relay_spread.c): one process counts every lease.
 *
 * Buckets live only on the leader and are not replicated: a new leader
 * starts with full buckets, so a leader change may let one more second's
 * worth through. Buckets that are full are dropped once a minute (a full
 * bucket is the same as none), so the table holds only destinations with
 * deliveries in the last second or so.
 *
 * Amounts are in millitokens (1000 a message), so that a rate below one
 * message a second still refills exactly.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/hash.h"
#include "node/relay_rate.h"

#define RELAY_RATE_SLOTS 256 /* a power of two */
#define RELAY_RATE_SWEEP_MS 60000
#define RELAY_RATE_MILLI 1000

struct relay_rate_bucket {
    struct relay_rate_bucket *next;
    uint64_t milli; /* millitokens left */
    uint64_t at;    /* uv_now of the last refill */
    char dest[];
};

struct relay_rate {
    uint64_t per_minute; /* 0: no limit */
    uint64_t burst;      /* millitokens a full bucket holds */
    uint64_t swept;      /* uv_now of the last sweep */
    size_t n;
    struct relay_rate_bucket *slots[RELAY_RATE_SLOTS];
};

struct relay_rate *relay_rate_new(uint64_t per_minute)
{
    struct relay_rate *rt = calloc(1, sizeof(*rt));
    if (rt == NULL)
        return NULL;
    relay_rate_set(rt, per_minute);
    return rt;
}

void relay_rate_set(struct relay_rate *rt, uint64_t per_minute)
{
    rt->per_minute = per_minute;
    uint64_t per_second = per_minute / 60;
    rt->burst = (per_second > 1 ? per_second : 1) * RELAY_RATE_MILLI;
}

/* relay_rate_refill - b's tokens at now: per_minute * 1000 millitokens a minute, up to burst. */
static void relay_rate_refill(const struct relay_rate *rt,
                              struct relay_rate_bucket *b,
                              uint64_t now)
{
    if (now <= b->at)
        return;
    uint64_t gained = (now - b->at) * rt->per_minute * RELAY_RATE_MILLI / 60000;
    if (gained == 0)
        return; /* keep b->at: the fraction is not lost */
    b->milli = b->milli + gained < rt->burst ? b->milli + gained : rt->burst;
    b->at = now;
}

/* relay_rate_sweep - drop every bucket that is full by now. */
static void relay_rate_sweep(struct relay_rate *rt, uint64_t now)
{
    rt->swept = now;
    for (size_t i = 0; i < RELAY_RATE_SLOTS; i++) {
        struct relay_rate_bucket **pp = &rt->slots[i];
        while (*pp != NULL) {
            struct relay_rate_bucket *b = *pp;
            relay_rate_refill(rt, b, now);
            if (b->milli >= rt->burst) {
                *pp = b->next;
                free(b);
                rt->n--;
            } else {
                pp = &b->next;
            }
        }
    }
}

bool relay_rate_allow(struct relay_rate *rt, const char *dest, uint64_t now, bool take)
{
    if (rt == NULL || rt->per_minute == 0)
        return true;
    if (now - rt->swept >= RELAY_RATE_SWEEP_MS)
        relay_rate_sweep(rt, now);
    struct relay_rate_bucket **slot = &rt->slots[hash_fnv1a64_str(dest) & (RELAY_RATE_SLOTS - 1)];
    struct relay_rate_bucket *b = *slot;
    while (b != NULL && strcmp(b->dest, dest) != 0)
        b = b->next;
    if (b == NULL && !take)
        return true; /* no bucket: a full one */
    if (b == NULL) {
        size_t len = strlen(dest) + 1;
        b = malloc(sizeof(*b) + len);
        if (b == NULL)
            return false; /* no memory: no lease now, the work is picked again */
        memcpy(b->dest, dest, len);
        b->milli = rt->burst;
        b->at = now;
        b->next = *slot;
        *slot = b;
        rt->n++;
    }
    relay_rate_refill(rt, b, now);
    if (b->milli < RELAY_RATE_MILLI)
        return false;
    if (take)
        b->milli -= RELAY_RATE_MILLI;
    return true;
}

size_t relay_rate_buckets(const struct relay_rate *rt)
{
    return rt != NULL ? rt->n : 0;
}

struct relay_rate *relay_rate_free(struct relay_rate *rt)
{
    if (rt == NULL)
        return NULL;
    for (size_t i = 0; i < RELAY_RATE_SLOTS; i++) {
        struct relay_rate_bucket *b = rt->slots[i];
        while (b != NULL) {
            struct relay_rate_bucket *next = b->next;
            free(b);
            b = next;
        }
    }
    free(rt);
    return NULL;
}
