/*
 * test_consensus_crc.c - hamr's byteCrc32 is libraft's checksum.
 *
 * hamr's copy of libraft.a keeps the library's own byteCrc32 as
 * raft_byte_crc32_reference; every case here compares the two on the same
 * bytes (every alignment, lengths around the 8-byte step, whole 64 KiB
 * bodies, running values carried across calls; the folding path and the
 * tables alone), plus the published check
 * value of this CRC (CRC-32/MPEG-2) so that the pair cannot agree on a wrong
 * function.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>

#include "consensus/consensus_crc.h"

#define BIG 70000

/* fill - deterministic bytes (xorshift32). */
static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        p[i] = (uint8_t)(seed >> 7);
    }
}

/* The catalogue value of CRC-32/MPEG-2 (init all ones, no reflection, no final xor). */
static void test_check_value(void **state)
{
    (void)state;
    const char *s = "123456789";
    assert_int_equal(byteCrc32(s, 9, 0xFFFFFFFFu), 0x0376E6E7u);
    assert_int_equal(raft_byte_crc32_reference(s, 9, 0xFFFFFFFFu), 0x0376E6E7u);
    assert_int_equal(byteCrc32(s, 0, 0xCAFEBABEu), 0xCAFEBABEu);
}

static void test_every_alignment_and_short_length(void **state)
{
    (void)state;
    uint8_t buf[128];
    fill(buf, sizeof(buf), 1);
    for (size_t off = 0; off < 16; off++)
        for (size_t len = 0; off + len <= sizeof(buf) && len <= 100; len++)
            assert_int_equal(
                byteCrc32(buf + off, len, (unsigned)(off * 7919 + len)),
                raft_byte_crc32_reference(buf + off, len, (unsigned)(off * 7919 + len)));
}

static void test_large_bodies(void **state)
{
    (void)state;
    uint8_t *buf = malloc(BIG);
    assert_non_null(buf);
    for (uint32_t seed = 1; seed <= 4; seed++) {
        fill(buf, BIG, seed);
        size_t lens[] = {4096, 65536, 65536 + 3, BIG - 1, BIG};
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
            assert_int_equal(byteCrc32(buf, lens[i], seed),
                             raft_byte_crc32_reference(buf, lens[i], seed));
    }
    free(buf);
}

/* Around the switch to folding (64 bytes) and its 16-byte steps: the
 * folding path, the tables alone and libraft agree, at every alignment. */
static void test_folding_lengths(void **state)
{
    (void)state;
    uint8_t buf[400];
    fill(buf, sizeof(buf), 7);
    for (size_t off = 0; off < 16; off++)
        for (size_t len = 0; off + len <= sizeof(buf) && len <= 384; len++) {
            unsigned init = (unsigned)(len * 2654435761u);
            unsigned want = raft_byte_crc32_reference(buf + off, len, init);
            assert_int_equal(byteCrc32(buf + off, len, init), want);
            assert_int_equal(consensus_crc_tables(buf + off, len, init), want);
        }
}

/* libraft checksums a batch's buffers one after another with the running value. */
static void test_running_value_across_calls(void **state)
{
    (void)state;
    uint8_t buf[9000];
    fill(buf, sizeof(buf), 99);
    unsigned whole = raft_byte_crc32_reference(buf, sizeof(buf), 0);
    unsigned crc = 0;
    size_t cuts[] = {0, 1, 13, 64, 4095, 4096, 8191, 9000};
    for (size_t i = 1; i < sizeof(cuts) / sizeof(cuts[0]); i++)
        crc = byteCrc32(buf + cuts[i - 1], cuts[i] - cuts[i - 1], crc);
    assert_int_equal(crc, whole);
}

/* One flipped bit anywhere changes the value (the point of the checksum). */
static void test_bit_flip_detected(void **state)
{
    (void)state;
    uint8_t buf[257];
    fill(buf, sizeof(buf), 5);
    unsigned good = byteCrc32(buf, sizeof(buf), 0);
    for (size_t i = 0; i < sizeof(buf); i += 17) {
        buf[i] ^= 0x10;
        assert_int_not_equal(byteCrc32(buf, sizeof(buf), 0), good);
        buf[i] ^= 0x10;
    }
    assert_int_equal(byteCrc32(buf, sizeof(buf), 0), good);
}

static void test_startup_check_passes(void **state)
{
    (void)state;
    assert_int_equal(consensus_crc_check(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_value),
        cmocka_unit_test(test_every_alignment_and_short_length),
        cmocka_unit_test(test_large_bodies),
        cmocka_unit_test(test_folding_lengths),
        cmocka_unit_test(test_running_value_across_calls),
        cmocka_unit_test(test_bit_flip_detected),
        cmocka_unit_test(test_startup_check_passes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
