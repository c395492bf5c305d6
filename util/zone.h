/* zone.h - zone names ([node] zone) and where the voters of a cluster sit among them. Pure. */
#ifndef HAMR_UTIL_ZONE_H
#define HAMR_UTIL_ZONE_H

#include <stdbool.h>
#include <stddef.h>

/* ZONE_NAME_MAX - room for a zone name and its NUL (names are 1 to 63 characters). */
#define ZONE_NAME_MAX 64

/* zone_name_ok - s is a zone name: 1 to 63 of [A-Za-z0-9._-]. */
bool zone_name_ok(const char *s);

/* zone_count - one zone and how many of the voters sit in it. */
struct zone_count {
    const char *zone; /* borrowed from the zones array */
    size_t voters;
};

/*
 * zone_counts - the distinct zones among the n voters' zones (an empty or
 * NULL zone is no zone and is not counted), each with its count, sorted by
 * name, at most max of them in out. Returns how many zones there are (may
 * exceed max). Borrows zones: out points into it.
 */
size_t zone_counts(const char *const *zones, size_t n, struct zone_count *out, size_t max);

/*
 * zone_majority - the zone that holds a majority (more than half) of the n
 * voters, whose zones are zones[0..n-1], or NULL if none does. A voter
 * without a zone ("" or NULL) counts towards n but not towards a zone, so a
 * cluster whose zones are unknown never has one. Losing the zone returned
 * loses the cluster's quorum. Borrows zones; the result points into it.
 */
const char *zone_majority(const char *const *zones, size_t n, size_t *count);

/*
 * zone_summary - "dc1 2, dc2 1": each zone and its voters, sorted by name,
 * into out (truncated to outlen, always terminated); "" if no voter has a
 * zone. Returns the length it wanted, as snprintf does.
 */
size_t zone_summary(const char *const *zones, size_t n, char *out, size_t outlen);

#endif
