/*
 * test_zone.c - zone names, and which zone holds a majority of the voters
 * (the check behind hamrctl add's refusal): zones unknown, split evenly,
 * one zone too many, and the status summary line.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "util/common.h"
#include "util/zone.h"

static void test_name_ok(void **state)
{
    (void)state;
    static const struct {
        const char *label, *name;
        bool want;
    } cases[] = {
        {"plain", "dc1", true},
        {"all classes", "eu-west_1.rack-A9", true},
        {"one char", "a", true},
        {"63 chars", "123456789012345678901234567890123456789012345678901234567890123", true},
        {"64 chars", "1234567890123456789012345678901234567890123456789012345678901234", false},
        {"empty", "", false},
        {"space", "dc 1", false},
        {"slash", "dc/1", false},
        {"colon", "dc:1", false},
        {"non-ascii", "z\xc3\xa9", false},
        {"control", "dc\t1", false},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        if (zone_name_ok(cases[i].name) != cases[i].want)
            fail_msg("%s: \"%s\" want %d", cases[i].label, cases[i].name, cases[i].want);
    }
}

static void test_majority(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *zones[6];
        size_t n;
        const char *want; /* NULL: none */
        size_t want_count;
    } cases[] = {
        {"unknown zones", {"", "", ""}, 3, NULL, 0},
        {"NULL zones", {NULL, NULL}, 2, NULL, 0},
        {"three zones", {"a", "b", "c"}, 3, NULL, 0},
        {"two of three", {"a", "b", "a"}, 3, "a", 2},
        {"half is not a majority", {"a", "a", "b", "b"}, 4, NULL, 0},
        {"three of four", {"b", "a", "b", "b"}, 4, "b", 3},
        {"unknown count against", {"a", "a", "", ""}, 4, NULL, 0},
        {"unknown do not save it", {"a", "a", "a", "", ""}, 5, "a", 3},
        {"single voter", {"a"}, 1, "a", 1},
        {"single voter, no zone", {""}, 1, NULL, 0},
        {"no voters", {NULL}, 0, NULL, 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        size_t count = 99;
        const char *got = zone_majority(cases[i].zones, cases[i].n, &count);
        if ((got == NULL) != (cases[i].want == NULL) ||
            (got != NULL && strcmp(got, cases[i].want) != 0) || count != cases[i].want_count)
            fail_msg("%s: got %s (%zu)", cases[i].label, got ? got : "none", count);
    }
}

static void test_summary(void **state)
{
    (void)state;
    const char *zones[] = {"dc2", "dc1", "", "dc1", NULL, "dc10"};
    char out[64];
    size_t n = zone_summary(zones, HAMR_ARRAY_LEN(zones), out, sizeof(out));
    assert_string_equal(out, "dc1 2, dc10 1, dc2 1");
    assert_int_equal(n, strlen(out));
    /* Truncated, still terminated, and the wanted length is reported. */
    char small[8];
    assert_int_equal(zone_summary(zones, HAMR_ARRAY_LEN(zones), small, sizeof(small)), n);
    assert_string_equal(small, "dc1 2, ");
    const char *none[] = {"", NULL};
    assert_int_equal(zone_summary(none, 2, out, sizeof(out)), 0);
    assert_string_equal(out, "");
}

static void test_counts_bounded(void **state)
{
    (void)state;
    const char *zones[] = {"e", "d", "c", "b", "a", "b"};
    struct zone_count zc[3];
    assert_int_equal(zone_counts(zones, HAMR_ARRAY_LEN(zones), zc, 3), 5);
    assert_string_equal(zc[0].zone, "a");
    assert_string_equal(zc[1].zone, "b");
    assert_int_equal(zc[1].voters, 2);
    assert_string_equal(zc[2].zone, "c");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_ok),
        cmocka_unit_test(test_majority),
        cmocka_unit_test(test_summary),
        cmocka_unit_test(test_counts_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
