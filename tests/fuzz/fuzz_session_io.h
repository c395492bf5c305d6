/*
 * fuzz_session_io.h - the fake transport of an inbound SMTP session
 * (net/smtpd_session) for hamr's libFuzzer targets, and how they cut the
 * client's input into reads.
 *
 * struct fuzz_session_io stands in for the connection without libuv: it
 * keeps flags and a byte count only, and checks every call the session
 * makes on it:
 *   - every write is whole reply lines: CRLF-terminated, "[2-5]dd" then ' '
 *     or '-', printable ASCII only, at most 512 octets a line (client text
 *     never breaks a reply);
 *   - nothing is written after close; close and STARTTLS at most once;
 *     pause and resume alternate; no call at all once the owner let go
 *     (released).
 * A target sees every well-formed reply line through its on_line hook, for
 * counters and checks of its own, and adds the callbacks only it needs to
 * the ops fuzz_session_io_ops fills in.
 *
 * struct fuzz_session_io_feed hands the session the client's bytes in reads
 * cut one of four ways (all at once, per line, per octet, pseudo-random)
 * and ends the session one of four ways (nothing, timeout, shutdown,
 * shutdown before the last read), as a target's input bits choose.
 *
 * Header-only, like fuzz_common.h: static inline functions, nothing else
 * shared. Security note: what is checked here is written by the session in
 * answer to arbitrary client bytes.
 */
#ifndef HAMR_TESTS_FUZZ_SESSION_IO_H
#define HAMR_TESTS_FUZZ_SESSION_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "net/smtpd_session.h"
#include "fuzz_common.h"

/* fuzz_session_io - the fake transport: checks every call, keeps flags and counts only. */
struct fuzz_session_io {
    bool closed, released, paused, tls;
    bool backlog; /* write_queued reports a backlog over the high-water mark */
    size_t written;
    /* on_line - each reply line l[0..n) (no CRLF), once it passed the checks; may be NULL. */
    void (*on_line)(void *owner, const char *l, size_t n);
    void *owner; /* the target's own state, for on_line and its own callbacks */
};

/* fuzz_session_io_check_reply_lines - p[0..len) holds whole, well-formed reply lines. */
static inline void fuzz_session_io_check_reply_lines(struct fuzz_session_io *io,
                                                     const char *p,
                                                     size_t len)
{
    FUZZ_CHECK(len >= 5);
    size_t start = 0;
    while (start < len) {
        const char *lf = memchr(p + start, '\n', len - start);
        FUZZ_CHECK(lf != NULL);
        size_t end = (size_t)(lf - p); /* index of the LF */
        FUZZ_CHECK(end >= start + 4 && p[end - 1] == '\r');
        const char *l = p + start;
        size_t n = end - 1 - start; /* without CRLF */
        FUZZ_CHECK(n >= 3 && l[0] >= '2' && l[0] <= '5' && l[1] >= '0' && l[1] <= '9' &&
                   l[2] >= '0' && l[2] <= '9');
        FUZZ_CHECK(n == 3 || l[3] == ' ' || l[3] == '-');
        FUZZ_CHECK(fuzz_is_printable(l, n));
        FUZZ_CHECK(n + 2 <= 512); /* RFC 5321 4.5.3.1.5: reply line at most 512 octets */
        if (io->on_line != NULL)
            io->on_line(io->owner, l, n);
        start = end + 1;
    }
}

/* fuzz_session_io_write - check and count; never after close or release. */
static inline int fuzz_session_io_write(void *data, const void *buf, size_t len)
{
    struct fuzz_session_io *io = data;
    FUZZ_CHECK(!io->released);
    FUZZ_CHECK(!io->closed);
    fuzz_session_io_check_reply_lines(io, buf, len);
    io->written += len;
    return 0;
}

/* fuzz_session_io_pause - pauses never nest. */
static inline void fuzz_session_io_pause(void *data)
{
    struct fuzz_session_io *io = data;
    FUZZ_CHECK(!io->released && !io->paused);
    io->paused = true;
}

/* fuzz_session_io_resume - only after a pause. */
static inline void fuzz_session_io_resume(void *data)
{
    struct fuzz_session_io *io = data;
    FUZZ_CHECK(!io->released && io->paused);
    io->paused = false;
}

/* fuzz_session_io_close - at most once. */
static inline void fuzz_session_io_close(void *data)
{
    struct fuzz_session_io *io = data;
    FUZZ_CHECK(!io->released && !io->closed);
    io->closed = true;
}

/* fuzz_session_io_set_timer - only while the owner holds the session. */
static inline void fuzz_session_io_set_timer(void *data, uint64_t ms)
{
    struct fuzz_session_io *io = data;
    (void)ms;
    FUZZ_CHECK(!io->released);
}

/* fuzz_session_io_write_queued - a backlog over the high-water mark when asked. */
static inline size_t fuzz_session_io_write_queued(void *data)
{
    struct fuzz_session_io *io = data;
    return io->backlog ? SMTPD_SESSION_OUT_HIGH + 1 : 0;
}

/* fuzz_session_io_starttls - the "handshake" succeeds at once; only once per session. */
static inline int fuzz_session_io_starttls(void *data)
{
    struct fuzz_session_io *io = data;
    FUZZ_CHECK(!io->released && !io->tls);
    io->tls = true;
    return 0;
}

/*
 * fuzz_session_io_ops - the session's view of io: write, pause, resume,
 * close and set_timer. A target adds write_queued, starttls, auth_rate...
 */
static inline struct smtpd_session_io fuzz_session_io_ops(struct fuzz_session_io *io)
{
    return (struct smtpd_session_io){
        .data = io,
        .write = fuzz_session_io_write,
        .pause = fuzz_session_io_pause,
        .resume = fuzz_session_io_resume,
        .close = fuzz_session_io_close,
        .set_timer = fuzz_session_io_set_timer,
    };
}

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
