/*
 * fuzz_common.h - helpers shared by hamr's libFuzzer targets.
 *
 * A fuzz_in cursor hands out bytes of the fuzzer's input and returns zeros
 * once it runs dry, so a target never reads past the input and a short
 * input still drives a whole (short) scenario. FUZZ_CHECK is the property
 * check of every target: it prints what failed and aborts, which libFuzzer
 * reports as a crash with the input saved as a reproducer.
 *
 * Header-only: each target is one .c file plus this, nothing else shared.
 */
#ifndef HAMR_TESTS_FUZZ_COMMON_H
#define HAMR_TESTS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

/* FUZZ_CHECK - a property of the code under test; abort with file and line when false. */
#define FUZZ_CHECK(cond)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz: property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* fuzz_in - a read cursor over the fuzzer's input. */
struct fuzz_in {
    const uint8_t *p;
    size_t n;
};

/* fuzz_u8 - the next byte, 0 when the input is used up. */
static inline uint8_t fuzz_u8(struct fuzz_in *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

/* fuzz_u16 - the next two bytes, big-endian. */
static inline uint16_t fuzz_u16(struct fuzz_in *in)
{
    uint16_t hi = fuzz_u8(in);
    return (uint16_t)(hi << 8 | fuzz_u8(in));
}

/* fuzz_take - up to want bytes of the input (borrowed); *got says how many. */
static inline const uint8_t *fuzz_take(struct fuzz_in *in, size_t want, size_t *got)
{
    const uint8_t *p = in->p;
    *got = want < in->n ? want : in->n;
    in->p += *got;
    in->n -= *got;
    return p;
}

/*
 * fuzz_str - a NUL-terminated string of at most max-1 input bytes, length
 * from the next byte, into out (size max). NULs inside are kept as written
 * (the string then simply ends there).
 */
static inline char *fuzz_str(struct fuzz_in *in, char *out, size_t max)
{
    size_t want = max > 1 ? fuzz_u8(in) % max : 0, got;
    if (want >= max)
        want = max - 1;
    const uint8_t *p = fuzz_take(in, want, &got);
    memcpy(out, p, got);
    out[got] = '\0';
    return out;
}

/*
 * fuzz_log_setup - hamr logs one line per event to stderr. Targets log at
 * debug level so every format string that prints client text runs; with
 * HAMR_FUZZ_QUIET set only errors are printed (faster, for long runs).
 * run.sh passes -close_fd_mask=2 instead, which keeps libFuzzer's and the
 * sanitizers' reports.
 */
static inline void fuzz_log_setup(void)
{
    log_set_level(getenv("HAMR_FUZZ_QUIET") ? LOG_LEVEL_ERROR : LOG_LEVEL_DEBUG);
}

/* fuzz_is_printable - every byte of p[0..n) is printable ASCII (0x20..0x7e). */
static inline bool fuzz_is_printable(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] > 0x7e)
            return false;
    return true;
}

/* fuzz_crlf_only - every CR in p[0..n) is followed by LF and every LF preceded by CR. */
static inline bool fuzz_crlf_only(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n'))
            return false;
        if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
            return false;
    }
    return true;
}

#endif
