/*
 * testlib_session_io.c - the fake transport of an inbound SMTP session:
 * counts, records and checks every call net/smtpd_session makes on its
 * connection (see testlib_session_io.h for the checks).
 *
 * Owns the recorded output and the take buffer of each io; exports
 * testlib_session_io_*. Errors: init returns HAMR_ENOMEM; a failed check
 * fails the test (cmocka) or aborts (fuzz targets), it never returns.
 * Security note: what is checked here is written by the session in answer
 * to arbitrary client bytes (the fuzz targets).
 */
#ifdef TESTLIB_CMOCKA
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/err.h"
#include "net/smtpd_session.h"
#include "tests/lib/testlib_session_io.h"

/*
 * TESTLIB_SESSION_IO_CHECK - a property of the session's calls. Under cmocka
 * the test fails with file and line; in the fuzz build (no cmocka) it prints
 * them and aborts, which libFuzzer reports as a crash and keeps the input.
 */
#ifdef TESTLIB_CMOCKA
#define TESTLIB_SESSION_IO_CHECK(cond) assert_true(cond)
#else
#define TESTLIB_SESSION_IO_CHECK(cond) \
    ((cond) ? (void)0 : testlib_session_io_failed(#cond, __FILE__, __LINE__))

/* testlib_session_io_failed - report a failed check where libFuzzer keeps the input: abort. */
static void testlib_session_io_failed(const char *what, const char *file, int line)
{
    fprintf(stderr, "fuzz: property failed: %s (%s:%d)\n", what, file, line);
    abort();
}
#endif

/* testlib_session_io_init - a zeroed io; record keeps the output for take. */
int testlib_session_io_init(struct testlib_session_io *io, bool record)
{
    memset(io, 0, sizeof(*io));
    io->record = record;
    buf_init(&io->out, 0);
    if (record && (io->last = malloc(TESTLIB_SESSION_IO_TAKE_MAX)) == NULL)
        return HAMR_ENOMEM;
    return 0;
}

/* testlib_session_io_free - release the recorded output and the take buffer. */
void testlib_session_io_free(struct testlib_session_io *io)
{
    buf_free(&io->out);
    free(io->last);
    io->last = NULL;
}

/* testlib_session_io_is_printable - every byte of p[0..n) is printable ASCII (0x20..0x7e). */
static bool testlib_session_io_is_printable(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] > 0x7e)
            return false;
    return true;
}

/* testlib_session_io_check_lines - p[0..len) holds whole, well-formed reply lines. */
static void testlib_session_io_check_lines(struct testlib_session_io *io, const char *p, size_t len)
{
    TESTLIB_SESSION_IO_CHECK(len >= 5);
    size_t start = 0;
    while (start < len) {
        const char *lf = memchr(p + start, '\n', len - start);
        TESTLIB_SESSION_IO_CHECK(lf != NULL);
        size_t end = (size_t)(lf - p); /* index of the LF */
        TESTLIB_SESSION_IO_CHECK(end >= start + 4 && p[end - 1] == '\r');
        const char *l = p + start;
        size_t n = end - 1 - start; /* without CRLF */
        TESTLIB_SESSION_IO_CHECK(n >= 3 && l[0] >= '2' && l[0] <= '5' && l[1] >= '0' &&
                                 l[1] <= '9' && l[2] >= '0' && l[2] <= '9');
        TESTLIB_SESSION_IO_CHECK(n == 3 || l[3] == ' ' || l[3] == '-');
        TESTLIB_SESSION_IO_CHECK(testlib_session_io_is_printable(l, n));
        /* RFC 5321 4.5.3.1.5: a reply line is at most 512 octets. */
        TESTLIB_SESSION_IO_CHECK(n + 2 <= 512);
        if (io->on_line != NULL)
            io->on_line(io->owner, l, n);
        start = end + 1;
    }
}

/* testlib_session_io_write - check, count and record; never after close or release. */
static int testlib_session_io_write(void *data, const void *buf, size_t len)
{
    struct testlib_session_io *io = data;
    TESTLIB_SESSION_IO_CHECK(!io->released);
    TESTLIB_SESSION_IO_CHECK(io->closes == 0);
    testlib_session_io_check_lines(io, buf, len);
    io->written += len;
    return io->record ? buf_append(&io->out, buf, len) : 0;
}

/* testlib_session_io_pause - count a pause; pauses never nest. */
static void testlib_session_io_pause(void *data)
{
    struct testlib_session_io *io = data;
    TESTLIB_SESSION_IO_CHECK(!io->released);
    TESTLIB_SESSION_IO_CHECK(!io->paused);
    io->paused = true;
    io->pauses++;
}

/* testlib_session_io_resume - count a resume; only after a pause. */
static void testlib_session_io_resume(void *data)
{
    struct testlib_session_io *io = data;
    TESTLIB_SESSION_IO_CHECK(!io->released);
    TESTLIB_SESSION_IO_CHECK(io->paused);
    io->paused = false;
    io->resumes++;
}

/* testlib_session_io_close - count the hang-up; at most once. */
static void testlib_session_io_close(void *data)
{
    struct testlib_session_io *io = data;
    TESTLIB_SESSION_IO_CHECK(!io->released);
    TESTLIB_SESSION_IO_CHECK(io->closes == 0);
    io->closes++;
}

/* testlib_session_io_set_timer - remember the deadline asked for. */
static void testlib_session_io_set_timer(void *data, uint64_t ms)
{
    struct testlib_session_io *io = data;
    TESTLIB_SESSION_IO_CHECK(!io->released);
    io->timer_ms = ms;
    io->timer_sets++;
}

/* testlib_session_io_ops - the session's view of io: the five calls every session makes. */
struct smtpd_session_io testlib_session_io_ops(struct testlib_session_io *io)
{
    return (struct smtpd_session_io){
        .data = io,
        .write = testlib_session_io_write,
        .pause = testlib_session_io_pause,
        .resume = testlib_session_io_resume,
        .close = testlib_session_io_close,
        .set_timer = testlib_session_io_set_timer,
    };
}

/* testlib_session_io_write_queued - the backlog the test set. */
size_t testlib_session_io_write_queued(void *data)
{
    struct testlib_session_io *io = data;
    return io->queued;
}

/* testlib_session_io_now - the test's clock. */
uint64_t testlib_session_io_now(void *data)
{
    struct testlib_session_io *io = data;
    TESTLIB_SESSION_IO_CHECK(!io->released);
    return io->now;
}

/* testlib_session_io_stressed - the load the test set. */
bool testlib_session_io_stressed(void *data)
{
    struct testlib_session_io *io = data;
    TESTLIB_SESSION_IO_CHECK(!io->released);
    return io->stressed;
}

/* testlib_session_io_starttls - "handshake" at once, only once per session. */
int testlib_session_io_starttls(void *data)
{
    struct testlib_session_io *io = data;
    TESTLIB_SESSION_IO_CHECK(!io->released);
    TESTLIB_SESSION_IO_CHECK(io->starttls == 0);
    io->starttls++;
    return 0;
}

/* testlib_session_io_take - the recorded output since the last take, as a string. */
const char *testlib_session_io_take(struct testlib_session_io *io)
{
    TESTLIB_SESSION_IO_CHECK(io->record && io->last != NULL);
    size_t n = io->out.len - io->taken;
    TESTLIB_SESSION_IO_CHECK(n < TESTLIB_SESSION_IO_TAKE_MAX);
    if (n > 0)
        memcpy(io->last, io->out.data + io->taken, n);
    io->last[n] = '\0';
    io->taken = io->out.len;
    return io->last;
}
