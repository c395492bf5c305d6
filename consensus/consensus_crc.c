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
 * The tables are built by a constructor, before main and before any thread.
 */
#include "consensus/consensus_crc.h"

#include <stdint.h>
#include <string.h>

#define CRC_POLY 0x04C11DB7u

static uint32_t crc_table[8][256];

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
}

/* byteCrc32 - libraft's checksum (src/byte.h of 0.15): same arguments, same value. */
unsigned byteCrc32(const void *buf, size_t size, unsigned init)
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
