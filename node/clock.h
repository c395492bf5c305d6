/*
 * clock.h - the wall clock of a node, in ms since the epoch: the timestamps
 * of the entries it proposes (queue/ never reads a clock; time comes in with
 * each entry). Durations and deadlines use the loop's monotonic uv_now.
 */
#ifndef HAMR_NODE_CLOCK_H
#define HAMR_NODE_CLOCK_H

#include <stdint.h>
#include <time.h>

/* clock_wall_ms - CLOCK_REALTIME in ms. */
static inline uint64_t clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#endif
