/*
 * disk_guard.h - free space on the data directory's file system, and the two
 * limits hamr keeps from it.
 *
 * Below `soft` (min_free plus the floor) MAIL gets 452 and a leader hands
 * leadership on. Below `floor` (two raft log segments) the node stops:
 * libraft 0.15 cannot recover from a log write that fails for lack of space
 * (a follower then loses entries from its log without noticing, a leader
 * crashes; consensus/RAFT.md), so it must never get that far. A start below
 * the floor is refused.
 *
 * Owns: the last reading and the applied bytes since it. May call: statvfs
 * (or the reader a test gives), the log.
 */
#ifndef HAMR_NODE_DISK_GUARD_H
#define HAMR_NODE_DISK_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* disk_guard_read_fn - free bytes on dir's file system; 0 or an error (then ignored). */
typedef int (*disk_guard_read_fn)(const char *dir, uint64_t *free_bytes);

struct disk_guard {
    const char *dir;            /* borrowed */
    uint64_t floor;             /* below it: stop */
    uint64_t soft;              /* below it: refuse mail, hand leadership on */
    uint64_t free_bytes;        /* the last reading */
    uint64_t applied_unchecked; /* log bytes applied since the last reading */
    disk_guard_read_fn read;
};

/*
 * disk_guard_init - limits for a log of segment_size-byte segments and
 * min_free on top; read NULL: statvfs. Takes a first reading.
 */
void disk_guard_init(struct disk_guard *g,
                     const char *dir,
                     uint64_t segment_size,
                     uint64_t min_free,
                     disk_guard_read_fn read);

/* disk_guard_check - read free space again; HAMR_ENOSPACE (and a sentence) below the floor. */
int disk_guard_check(struct disk_guard *g, char *why, size_t whylen);

/*
 * disk_guard_applied - len more log bytes applied; after a quarter segment
 * (an eighth of the floor) read again, as disk_guard_check. Between the
 * once-a-second checks a follower writes whatever the leader sends.
 */
int disk_guard_applied(struct disk_guard *g, size_t len, char *why, size_t whylen);

/* disk_guard_low - below the soft limit at the last reading. */
bool disk_guard_low(const struct disk_guard *g);

#endif
