/* buf.h - growable byte buffer with a hard limit. */
#ifndef HAMR_UTIL_BUF_H
#define HAMR_UTIL_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t limit; /* 0: no limit */
};

/* buf_init - empty buffer that may grow to limit bytes (0: unbounded). */
void buf_init(struct buf *b, size_t limit);

/* buf_append - copy n bytes; HAMR_ETOOBIG past the limit, HAMR_ENOMEM. */
int buf_append(struct buf *b, const void *p, size_t n);

/* buf_reserve - make room for n more bytes. */
int buf_reserve(struct buf *b, size_t n);

/* buf_reset - length to zero, memory kept. */
void buf_reset(struct buf *b);

/* buf_free - release memory; the struct is left empty and reusable. */
void buf_free(struct buf *b);

/* buf_steal - hand the data to the caller (malloc'd) and leave b empty. */
uint8_t *buf_steal(struct buf *b, size_t *len);

#endif
