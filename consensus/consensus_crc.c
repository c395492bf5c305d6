/*
 * consensus_crc.c - the CRC-32 libraft 0.15 puts on every log batch and
 * snapshot, eight bytes at a time.
 *
 * libraft checksums each batch it writes (header and entry data) with
 * byteCrc32(), a table CRC that takes one byte per step: for 64 KiB messages
 * it was a third of hamrd's CPU (RAFT.md, "Throughput ceiling"). hamr links
 * libraft statically (consensus/CMakeLists.txt) and gives its own byteCrc32:
 * the same function (polynomial 0x04C11DB7, most significant bit first, no
 * reflection, no inversion: the caller passes the running value), computed
 * with eight tables so that eight bytes take one step ("slicing-by-8").
 * libraft's own byteCrc32 stays in the binary under the name
 * raft_byte_crc32_reference; consensus_crc_check() compares the two before
 * a node opens its log, so a libraft whose checksum changed cannot make
 * hamr write segments the library would reject.
 *
 * Where the CPU has carry-less multiplication (PCLMULQDQ, x86-64 since
 * 2010), runs of 64 bytes or more are folded sixteen bytes per step instead
 * (Gopal et al., "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ Instruction", Intel 2009): the running 128-bit value X = H*x^64
 * + L moves 128 bits on as H*(x^192 mod P) + L*(x^128 mod P), xored with the
 * next block. The two constants are computed, not copied. What is left (X as
 * 16 bytes, then the tail) goes through the tables.
 *
 * The tables and the choice of path are made by a constructor, before main
 * and before any thread.
 */
#include "consensus/consensus_crc.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CRC_HAVE_CLMUL_CODE 1
#endif

#define CRC_POLY 0x04C11DB7u
#define CRC_CLMUL_MIN 64 /* shorter runs go through the tables */

static uint32_t crc_table[8][256];
static bool crc_use_clmul;
static uint32_t crc_k192, crc_k128; /* x^192 mod P, x^128 mod P */

/* crc_xpow - x^n mod P, as 32 bits (the x^32 term implicit). */
static uint32_t crc_xpow(unsigned n)
{
    uint32_t r = 1;
    while (n-- > 0)
        r = (r & 0x80000000u) ? (r << 1) ^ CRC_POLY : r << 1;
    return r;
}

/* crc_tables_init - crc_table[0] is libraft's table; [k] is [k-1] one byte further. */
__attribute__((constructor)) static void crc_tables_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i << 24;
        for (int bit = 0; bit < 8; bit++)
            c = (c & 0x80000000u) ? (c << 1) ^ CRC_POLY : c << 1;
        crc_table[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t prev = crc_table[k - 1][i];
            crc_table[k][i] = (prev << 8) ^ crc_table[0][prev >> 24];
        }
    crc_k192 = crc_xpow(192);
    crc_k128 = crc_xpow(128);
#ifdef CRC_HAVE_CLMUL_CODE
    __builtin_cpu_init();
    crc_use_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("ssse3");
#endif
}

unsigned consensus_crc_tables(const void *buf, size_t size, unsigned init)
{
    const uint8_t *p = buf;
    uint32_t crc = init;

    for (; size >= 8; size -= 8, p += 8) {
        uint32_t hi = crc ^ ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                             (uint32_t)p[2] << 8 | (uint32_t)p[3]);
        crc = crc_table[7][hi >> 24] ^ crc_table[6][(hi >> 16) & 0xff] ^
              crc_table[5][(hi >> 8) & 0xff] ^ crc_table[4][hi & 0xff] ^
              crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^
              crc_table[0][p[7]];
    }
    for (; size > 0; size--, p++)
        crc = (crc << 8) ^ crc_table[0][(crc >> 24) ^ *p];
    return crc;
}

#ifdef CRC_HAVE_CLMUL_CODE
/* crc_clmul - size >= 16: fold whole blocks, finish X and the tail with the tables. */
__attribute__((target("pclmul,ssse3"))) static unsigned crc_clmul(const uint8_t *p,
                                                                  size_t size,
                                                                  unsigned init)
{
    /* Byte 0 of a block becomes the top byte of the 128-bit value (MSB first). */
    const __m128i swap = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i k = _mm_set_epi64x((long long)crc_k192, (long long)crc_k128);

    /* The running value enters as the first 32 bits of the message. */
    __m128i x = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(const void *)p), swap);
    x = _mm_xor_si128(x, _mm_set_epi32((int)init, 0, 0, 0));
    p += 16;
    size -= 16;
    for (; size >= 16; size -= 16, p += 16) {
        __m128i next = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(const void *)p), swap);
        __m128i hi = _mm_clmulepi64_si128(x, k, 0x11); /* H * (x^192 mod P) */
        __m128i lo = _mm_clmulepi64_si128(x, k, 0x00); /* L * (x^128 mod P) */
        x = _mm_xor_si128(_mm_xor_si128(hi, lo), next);
    }
    uint8_t out[16];
    _mm_storeu_si128((__m128i *)(void *)out, _mm_shuffle_epi8(x, swap));
    uint32_t crc = consensus_crc_tables(out, sizeof(out), 0);
    return consensus_crc_tables(p, size, crc);
}
#endif

/* byteCrc32 - libraft's checksum (src/byte.h of 0.15): same arguments, same value. */
unsigned byteCrc32(const void *buf, size_t size, unsigned init)
{
#ifdef CRC_HAVE_CLMUL_CODE
    if (crc_use_clmul && size >= CRC_CLMUL_MIN)
        return crc_clmul(buf, size, init);
#endif
    return consensus_crc_tables(buf, size, init);
}

/* consensus_crc_check - 0 when byteCrc32 and libraft's own agree on a probe. */
int consensus_crc_check(void)
{
    uint8_t probe[1031];
    uint32_t x = 2463534242u; /* xorshift32: fixed bytes, every value of a byte */

    for (size_t i = 0; i < sizeof(probe); i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        probe[i] = (uint8_t)x;
    }
    /* Every length and alignment up to 16, then the long runs. */
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len <= 16; len++)
            if (byteCrc32(probe + off, len, 0x12345678u) !=
                raft_byte_crc32_reference(probe + off, len, 0x12345678u))
                return -1;
    if (byteCrc32(probe, sizeof(probe), 0) != raft_byte_crc32_reference(probe, sizeof(probe), 0))
        return -1;
    return 0;
}
