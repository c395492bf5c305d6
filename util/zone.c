/*
 * zone.c - zone names ([node] zone: the data centre or rack a node runs in)
 * and the arithmetic of where voters sit: which zone, if any, holds a
 * majority of them (losing it would lose quorum), and the summary line
 * hamrctl status prints. Pure: no allocation, no I/O; the callers are the
 * configuration, the queue's node directory, hamrctl add and hamrctl status.
 */
#include <stdio.h>
#include <string.h>

#include "util/common.h"
#include "util/zone.h"

/* zone_name_ok - 1 to ZONE_NAME_MAX - 1 letters, digits, '.', '_' or '-'. */
bool zone_name_ok(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        char c = s[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok || n + 1 >= ZONE_NAME_MAX)
            return false;
    }
    return n > 0;
}

/* zone_counts - distinct non-empty zones with their counts, sorted by name; see zone.h. */
size_t zone_counts(const char *const *zones, size_t n, struct zone_count *out, size_t max)
{
    size_t total = 0;
    /* Quadratic in the voters, who are few (CONSENSUS_MAX_MEMBERS). */
    for (size_t i = 0; i < n; i++) {
        const char *z = zones[i];
        if (z == NULL || z[0] == '\0')
            continue;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = zones[j] != NULL && strcmp(zones[j], z) == 0;
        if (seen)
            continue;
        size_t count = 0;
        for (size_t j = i; j < n; j++)
            if (zones[j] != NULL && strcmp(zones[j], z) == 0)
                count++;
        /* Insert in name order among the first max. */
        size_t at = 0, kept = total < max ? total : max;
        while (at < kept && strcmp(out[at].zone, z) < 0)
            at++;
        if (at < max) {
            size_t move = kept - at - (kept == max ? 1 : 0);
            memmove(&out[at + 1], &out[at], move * sizeof(out[0]));
            out[at].zone = z;
            out[at].voters = count;
        }
        total++;
    }
    return total;
}

/* zone_majority - the zone with more than half of the n voters, or NULL; see zone.h. */
const char *zone_majority(const char *const *zones, size_t n, size_t *count)
{
    for (size_t i = 0; i < n; i++) {
        const char *z = zones[i];
        if (z == NULL || z[0] == '\0')
            continue;
        size_t c = 0;
        for (size_t j = 0; j < n; j++)
            if (zones[j] != NULL && strcmp(zones[j], z) == 0)
                c++;
        if (2 * c > n) {
            if (count != NULL)
                *count = c;
            return z;
        }
    }
    if (count != NULL)
        *count = 0;
    return NULL;
}

/* zone_summary - "dc1 2, dc2 1"; see zone.h. */
size_t zone_summary(const char *const *zones, size_t n, char *out, size_t outlen)
{
    struct zone_count zc[64];
    size_t nz = zone_counts(zones, n, zc, HAMR_ARRAY_LEN(zc));
    if (nz > HAMR_ARRAY_LEN(zc))
        nz = HAMR_ARRAY_LEN(zc);
    size_t used = 0;
    if (outlen > 0)
        out[0] = '\0';
    for (size_t i = 0; i < nz; i++) {
        int w = snprintf(used < outlen ? out + used : NULL, used < outlen ? outlen - used : 0,
                         "%s%s %zu", i > 0 ? ", " : "", zc[i].zone, zc[i].voters);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    return used;
}
