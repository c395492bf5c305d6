/*
 * relay_rate.h - the leader's rate limit per next hop (relay_rate.c): a
 * token bucket per destination key, one second's worth of messages deep.
 */
#ifndef HAMR_NODE_RELAY_RATE_H
#define HAMR_NODE_RELAY_RATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct relay_rate;

/* relay_rate_new - buckets for per_minute messages a minute per destination (0: no limit). */
struct relay_rate *relay_rate_new(uint64_t per_minute);

/* relay_rate_set - a new rate (a reload); the buckets keep what they hold. */
void relay_rate_set(struct relay_rate *rt, uint64_t per_minute);

/*
 * relay_rate_allow - may one more message go to dest at now (uv_now ms)?
 * With take, true takes its token. false: not before the bucket refills
 * (or no memory). Always true without a limit or without rt.
 */
bool relay_rate_allow(struct relay_rate *rt, const char *dest, uint64_t now, bool take);

/* relay_rate_buckets - buckets held (a full one is dropped within a minute; for tests). */
size_t relay_rate_buckets(const struct relay_rate *rt);

/* relay_rate_free - free rt (NULL: nothing); returns NULL. */
struct relay_rate *relay_rate_free(struct relay_rate *rt);

#endif
