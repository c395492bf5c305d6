/*
 * test_hash.c - hash_fnv1a64 gives the published FNV-1a 64 values, a hash
 * continued piece by piece equals the hash of the whole, and a seed changes
 * the start.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "util/hash.h"

/* Values from the FNV reference test suite (isthe.com/chongo/tech/comp/fnv). */
static const struct {
    const char *label;
    const char *in;
    uint64_t want;
} cases[] = {
    {.label = "empty", .in = "", .want = 0xcbf29ce484222325ull},
    {.label = "a", .in = "a", .want = 0xaf63dc4c8601ec8cull},
    {.label = "foobar", .in = "foobar", .want = 0x85944171f73967e8ull},
};

static void test_known_values(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("case %s\n", cases[i].label);
        assert_int_equal(hash_fnv1a64(cases[i].in, strlen(cases[i].in), 0), cases[i].want);
        assert_int_equal(hash_fnv1a64_str(cases[i].in), cases[i].want);
    }
}

static void test_continued(void **state)
{
    (void)state;
    uint64_t h = hash_fnv1a64("fo", 2, 0);
    assert_int_equal(hash_fnv1a64_add(h, "obar", 4), 0x85944171f73967e8ull);
}

static void test_seed(void **state)
{
    (void)state;
    assert_int_equal(hash_fnv1a64("a", 1, 0), 0xaf63dc4c8601ec8cull);
    assert_int_equal(hash_fnv1a64("a", 1, 0x1234),
                     hash_fnv1a64_add(HASH_FNV1A64_BASIS ^ 0x1234, "a", 1));
    assert_true(hash_fnv1a64("a", 1, 0x1234) != hash_fnv1a64("a", 1, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_values),
        cmocka_unit_test(test_continued),
        cmocka_unit_test(test_seed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
