/*
 * test_scan.c - scan_line_end finds the first CR, LF (or NUL) wherever it
 * sits: before, inside and after each 16-octet step, at every alignment,
 * and agrees with the octet-at-a-time reference on every case.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "util/scan.h"

#define LEN 80

/* check - the fast and the reference scan agree, and both give want. */
static void check(const uint8_t *p, size_t n, bool nul, size_t want)
{
    assert_int_equal(scan_line_end(p, n, nul), want);
    assert_int_equal(scan_line_end_bytes(p, n, nul), want);
}

static void test_no_line_end(void **state)
{
    (void)state;
    uint8_t buf[LEN];
    memset(buf, 'a', sizeof(buf));
    for (size_t n = 0; n <= LEN; n++)
        check(buf, n, true, n);
}

/* Each stop octet at each position, with each start alignment. */
static void test_each_octet_each_position(void **state)
{
    (void)state;
    const uint8_t stops[] = {'\r', '\n', '\0'};
    uint8_t buf[LEN + 16];
    for (size_t s = 0; s < sizeof(stops); s++)
        for (size_t off = 0; off < 16; off++)
            for (size_t pos = 0; pos < LEN; pos++) {
                memset(buf, 'x', sizeof(buf));
                buf[off + pos] = stops[s];
                check(buf + off, LEN, true, pos);
                /* NUL is an ordinary octet unless asked for. */
                check(buf + off, LEN, false, stops[s] == '\0' ? LEN : pos);
                /* Past the end of the run it is not seen. */
                check(buf + off, pos, true, pos);
            }
}

/* The first of several wins, also when a later one is in the same step. */
static void test_first_of_several(void **state)
{
    (void)state;
    uint8_t buf[LEN];
    memset(buf, '.', sizeof(buf));
    buf[40] = '\n';
    buf[37] = '\r';
    buf[70] = '\0';
    check(buf, LEN, true, 37);
    buf[3] = '\0';
    check(buf, LEN, true, 3);
    check(buf, LEN, false, 37);
}

/* Octets that only differ from the stops in one bit (0x8D, 0x0B, 0x80) are not stops. */
static void test_near_misses(void **state)
{
    (void)state;
    uint8_t buf[LEN];
    for (size_t i = 0; i < LEN; i++)
        buf[i] = (uint8_t)"\x8d\x8a\x0b\x0c\x80\x2d\x2a\x01"[i % 8];
    check(buf, LEN, true, LEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_line_end),
        cmocka_unit_test(test_each_octet_each_position),
        cmocka_unit_test(test_first_of_several),
        cmocka_unit_test(test_near_misses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
