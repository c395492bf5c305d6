/*
 * testlib_session_io.h - the fake transport of an inbound SMTP session
 * (net/smtpd_session) for unit tests and fuzz targets: no socket, no loop.
 *
 * struct testlib_session_io stands in for the connection. It counts every
 * call the session makes on it, optionally records what was written, and
 * checks each call:
 *   - every write is whole reply lines: CRLF-terminated, "[2-5]dd" then ' '
 *     or '-', printable ASCII only, at most 512 octets a line (client text
 *     never breaks a reply);
 *   - nothing is written after close; close and STARTTLS at most once;
 *     pause and resume alternate; no call at all once the owner let go
 *     (released, set by the test before smtpd_session_free).
 * A failed check fails the cmocka test (unit build, TESTLIB_CMOCKA) or
 * prints file and line and aborts (fuzz build, where libFuzzer keeps the
 * input). The test sees each well-formed reply line through on_line.
 *
 * testlib_session_io_ops gives the five calls every session needs; a test
 * adds the others it wants (write_queued, now, stressed, starttls) from the
 * functions below, and its own (auth_check, auth_rate) with owner as its
 * state. The owner keeps io alive as long as the session may call it.
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_SESSION_IO_H
#define HAMR_TESTS_LIB_TESTLIB_SESSION_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "net/smtpd_session.h"

/* TESTLIB_SESSION_IO_TAKE_MAX - the most output one testlib_session_io_take may return. */
#define TESTLIB_SESSION_IO_TAKE_MAX (1 << 16)

struct testlib_session_io {
    bool record;    /* keep every written octet in out (testlib_session_io_init) */
    struct buf out; /* everything written, when record */
    size_t taken;   /* what testlib_session_io_take already returned */
    char *last;     /* the take buffer, TESTLIB_SESSION_IO_TAKE_MAX octets */
    size_t written; /* octets written */
    int pauses, resumes, closes, timer_sets, starttls;
    bool paused;
    bool released;     /* the owner let go of the session: no call allowed */
    uint64_t timer_ms; /* the last deadline asked for */
    size_t queued;     /* what write_queued reports */
    uint64_t now;      /* the clock now reports, in ms; the test moves it */
    bool stressed;     /* what stressed reports */
    /* on_line - each reply line l[0..n) (no CRLF), once it passed the checks; may be NULL. */
    void (*on_line)(void *owner, const char *l, size_t n);
    void *owner; /* the test's own state, for on_line and its own callbacks */
};

/* testlib_session_io_init - a zeroed io; record keeps the output for take. Returns 0 or
 * HAMR_ENOMEM. */
int testlib_session_io_init(struct testlib_session_io *io, bool record);

/* testlib_session_io_free - release the recorded output (io itself is the caller's). */
void testlib_session_io_free(struct testlib_session_io *io);

/* testlib_session_io_ops - write, pause, resume, close and set_timer on io (borrowed). */
struct smtpd_session_io testlib_session_io_ops(struct testlib_session_io *io);

/* testlib_session_io_write_queued - io->queued. */
size_t testlib_session_io_write_queued(void *data);

/* testlib_session_io_now - io->now. */
uint64_t testlib_session_io_now(void *data);

/* testlib_session_io_stressed - io->stressed. */
bool testlib_session_io_stressed(void *data);

/* testlib_session_io_starttls - the "handshake" succeeds at once; input stays as it is. */
int testlib_session_io_starttls(void *data);

/*
 * testlib_session_io_take - the output since the last take, NUL-terminated
 * (recording io only). The string is io's, valid until the next take.
 */
const char *testlib_session_io_take(struct testlib_session_io *io);

#endif
