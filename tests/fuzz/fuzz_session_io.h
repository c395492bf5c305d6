/*
 * fuzz_session_io.h - how hamr's libFuzzer targets drive an inbound SMTP
 * session (net/smtpd_session): its fake transport is the one the unit tests
 * use (tests/lib/testlib_session_io.h, which checks every call the session
 * makes and aborts on a failed check here), and struct fuzz_session_io_feed
 * cuts the client's input into reads.
 *
 * struct fuzz_session_io_feed hands the session the client's bytes in reads
 * cut one of four ways (all at once, per line, per octet, pseudo-random)
 * and ends the session one of four ways (nothing, timeout, shutdown,
 * shutdown before the last read), as a target's input bits choose.
 *
 * Header-only, like fuzz_common.h: static inline functions, nothing else
 * shared.
 */
#ifndef HAMR_TESTS_FUZZ_SESSION_IO_H
#define HAMR_TESTS_FUZZ_SESSION_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "net/smtpd_session.h"
#include "tests/lib/testlib_session_io.h"
#include "fuzz_common.h"

/*
 * fuzz_session_io_next_read - length of the next read from p[0..n): cut 0
 * all at once, 1 per line, 2 per octet, 3 pseudo-random (LCG state *lcg).
 */
static inline size_t fuzz_session_io_next_read(const uint8_t *p,
                                               size_t n,
                                               unsigned cut,
                                               uint32_t *lcg)
{
    switch (cut) {
        case 0:
            return n;
        case 1: {
            const uint8_t *lf = memchr(p, '\n', n);
            return lf ? (size_t)(lf - p) + 1 : n;
        }
        case 2:
            return 1;
        default: {
            *lcg = *lcg * 1103515245u + 12345u;
            size_t len = 1 + (*lcg >> 16) % 300;
            return len < n ? len : n;
        }
    }
}

/* fuzz_session_io_feed - the client's bytes still to send, and how. */
struct fuzz_session_io_feed {
    const uint8_t *p;
    size_t left;
    unsigned cut;    /* 0 one read, 1 per line, 2 per octet, 3 pseudo-random */
    unsigned ending; /* 0 nothing, 1 timeout, 2 shutdown, 3 shutdown before the last read */
    uint32_t lcg;    /* state of the pseudo-random cut */
};

/* fuzz_session_io_feed_read - give s its next read (f->left > 0); shut down first before the last.
 */
static inline void fuzz_session_io_feed_read(struct fuzz_session_io_feed *f,
                                             struct smtpd_session *s)
{
    size_t n = fuzz_session_io_next_read(f->p, f->left, f->cut, &f->lcg);
    if (f->ending == 3 && n == f->left)
        smtpd_session_shutdown(s);
    smtpd_session_input(s, f->p, n);
    f->p += n;
    f->left -= n;
}

/* fuzz_session_io_feed_end - after the last read: time out or shut down as f->ending says. */
static inline void fuzz_session_io_feed_end(const struct fuzz_session_io_feed *f,
                                            struct smtpd_session *s)
{
    if (f->ending == 1)
        smtpd_session_timeout(s);
    else if (f->ending == 2)
        smtpd_session_shutdown(s);
}

#endif
