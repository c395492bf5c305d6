/*
 * peak.h - the most a count held lately: two buckets of span ms each,
 * rotated as time passes (lazily, on the next set or get). peak_get(now)
 * is at least the most the count held in [now - span, now] and never more
 * than the most it held in [now - 3 * span, now]. So a holder whose peak
 * (span s) must never exceed another's view of the same count, which is
 * never below it at any instant, is safe when that other uses a span of at
 * least 3 * s (node/relay_spread.c and net/smtpc.c: connections kept open
 * for a while after the deliveries that allowed them have ended).
 */
#ifndef HAMR_UTIL_PEAK_H
#define HAMR_UTIL_PEAK_H

#include <stdint.h>

struct peak {
    uint64_t at;   /* start of the current bucket (a clock in ms) */
    uint32_t held; /* the count now */
    uint32_t cur;  /* the most since at */
    uint32_t prev; /* the most in the bucket before */
};

/* peak_rotate - start a new bucket once span has passed (held throughout any skipped one). */
static inline void peak_rotate(struct peak *p, uint64_t now, uint64_t span)
{
    if (now < p->at + span)
        return;
    p->prev = now >= p->at + 2 * span ? p->held : p->cur;
    p->cur = p->held;
    p->at = now;
}

/* peak_set - the count is v from now on. */
static inline void peak_set(struct peak *p, uint32_t v, uint64_t now, uint64_t span)
{
    peak_rotate(p, now, span);
    p->held = v;
    if (v > p->cur)
        p->cur = v;
}

/* peak_get - the most the count held lately (see the top of the file). */
static inline uint32_t peak_get(const struct peak *p, uint64_t now, uint64_t span)
{
    struct peak q = *p;
    peak_rotate(&q, now, span);
    uint32_t m = q.cur > q.prev ? q.cur : q.prev;
    return m > q.held ? m : q.held;
}

#endif
