/*
 * scan.h - find the next line-end octet in a run of message text.
 *
 * The SMTP server reads bodies and the SMTP client writes them a line run at
 * a time: everything up to the next CR or LF (and, on input, NUL) is copied
 * as it is. With SSE2 (every x86-64) sixteen octets are compared per step;
 * elsewhere one at a time. Both give the same answer (tests/unit/util).
 */
#ifndef HAMR_UTIL_SCAN_H
#define HAMR_UTIL_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* scan_line_end_bytes - the one-octet-at-a-time scan (and the reference). */
static inline size_t scan_line_end_bytes(const uint8_t *p, size_t n, bool nul)
{
    size_t i = 0;
    while (i < n && p[i] != '\r' && p[i] != '\n' && !(nul && p[i] == '\0'))
        i++;
    return i;
}

/*
 * scan_line_end - index of the first '\r' or '\n' (or '\0' when nul) in
 * p[0..n), or n when there is none.
 */
static inline size_t scan_line_end(const uint8_t *p, size_t n, bool nul)
{
    size_t i = 0;
#ifdef __SSE2__
    const __m128i cr = _mm_set1_epi8('\r');
    const __m128i lf = _mm_set1_epi8('\n');
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf));
        if (nul)
            hit = _mm_or_si128(hit, _mm_cmpeq_epi8(v, zero));
        unsigned mask = (unsigned)_mm_movemask_epi8(hit);
        if (mask != 0)
            return i + (size_t)__builtin_ctz(mask);
    }
#endif
    return i + scan_line_end_bytes(p + i, n - i, nul);
}

#endif
