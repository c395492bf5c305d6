/*
 * disk_guard.c - free space on the data directory's file system and the
 * limits hamr keeps from it (see disk_guard.h for why they exist).
 */
#include <inttypes.h>
#include <stdio.h>
#include <sys/statvfs.h>

#include "util/err.h"
#include "util/log.h"
#include "node/disk_guard.h"

/* disk_guard_statvfs - the default reader. */
static int disk_guard_statvfs(const char *dir, uint64_t *free_bytes)
{
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0)
        return HAMR_EIO;
    *free_bytes = (uint64_t)sv.f_bavail * sv.f_frsize;
    return 0;
}

void disk_guard_init(struct disk_guard *g,
                     const char *dir,
                     uint64_t segment_size,
                     uint64_t min_free,
                     disk_guard_read_fn read)
{
    g->dir = dir;
    g->floor = 2 * segment_size;
    g->soft = min_free + g->floor;
    g->applied_unchecked = 0;
    g->read = read != NULL ? read : disk_guard_statvfs;
    g->free_bytes = UINT64_MAX; /* until the first reading says otherwise */
    uint64_t f;
    if (g->read(dir, &f) == 0)
        g->free_bytes = f;
}

int disk_guard_check(struct disk_guard *g, char *why, size_t whylen)
{
    uint64_t free_now;
    g->applied_unchecked = 0;
    if (g->read(g->dir, &free_now) != 0)
        return 0; /* no reading (directory not made yet): keep the last one */
    if (free_now < g->soft && g->free_bytes >= g->soft)
        log_warn("disk low free=%" PRIu64 " limit=%" PRIu64 " action=refusing mail", free_now,
                 g->soft);
    g->free_bytes = free_now;
    if (free_now >= g->floor)
        return 0;
    snprintf(why, whylen,
             "disk full: %" PRIu64 " MiB free, below two log segments (%" PRIu64
             " MiB); stopping before a raft log write fails",
             free_now >> 20, g->floor >> 20);
    return HAMR_ENOSPACE;
}

int disk_guard_applied(struct disk_guard *g, size_t len, char *why, size_t whylen)
{
    g->applied_unchecked += len;
    if (g->applied_unchecked < g->floor / 8)
        return 0;
    return disk_guard_check(g, why, whylen);
}

bool disk_guard_low(const struct disk_guard *g)
{
    return g->free_bytes < g->soft;
}
