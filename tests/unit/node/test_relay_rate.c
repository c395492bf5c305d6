/*
 * test_relay_rate.c - the leader's rate limit per next hop (relay_rate.c):
 * a bucket one second's worth deep (at least one message), refilled by the
 * clock given, each destination on its own; asking without taking takes
 * nothing; full buckets are dropped by the sweep; no limit allows all.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "node/relay_rate.h"

#define A "[127.0.0.1]:25"
#define B "example.net:25"

/* test_per_second - 120 a minute: 2 at once, then one every 500 ms. */
static void test_per_second(void **state)
{
    (void)state;
    struct relay_rate *rt = relay_rate_new(120);
    assert_non_null(rt);
    assert_true(relay_rate_allow(rt, A, 1000, true));
    assert_true(relay_rate_allow(rt, A, 1000, false)); /* asks, takes nothing */
    assert_true(relay_rate_allow(rt, A, 1000, true));
    assert_false(relay_rate_allow(rt, A, 1000, false));
    assert_false(relay_rate_allow(rt, A, 1000, true));
    assert_true(relay_rate_allow(rt, B, 1000, true)); /* its own bucket */
    assert_false(relay_rate_allow(rt, A, 1499, true));
    assert_true(relay_rate_allow(rt, A, 1500, true));
    assert_false(relay_rate_allow(rt, A, 1500, true));
    /* A long pause fills the bucket to its depth only: 2, not 10. */
    int n = 0;
    while (n < 10 && relay_rate_allow(rt, A, 6000, true))
        n++;
    assert_int_equal(n, 2);
    rt = relay_rate_free(rt);
}

/* test_slow - 30 a minute: one at once, then one every 2 s; partial refills add up. */
static void test_slow(void **state)
{
    (void)state;
    struct relay_rate *rt = relay_rate_new(30);
    assert_true(relay_rate_allow(rt, A, 0, true));
    assert_false(relay_rate_allow(rt, A, 1, true));
    for (uint64_t t = 10; t < 2000; t += 10)
        assert_false(relay_rate_allow(rt, A, t, true));
    assert_true(relay_rate_allow(rt, A, 2000, true));
    relay_rate_free(rt);
}

/* test_no_limit - 0: always; set changes the rate. */
static void test_no_limit(void **state)
{
    (void)state;
    struct relay_rate *rt = relay_rate_new(0);
    for (int i = 0; i < 1000; i++)
        assert_true(relay_rate_allow(rt, A, 5, true));
    assert_int_equal(relay_rate_buckets(rt), 0);
    relay_rate_set(rt, 60);
    assert_true(relay_rate_allow(rt, A, 5, true));
    assert_false(relay_rate_allow(rt, A, 5, true));
    assert_true(relay_rate_allow(NULL, A, 5, true));
    relay_rate_free(rt);
}

/* test_sweep - a minute on, full buckets are gone; one still refilling stays. */
static void test_sweep(void **state)
{
    (void)state;
    struct relay_rate *rt = relay_rate_new(6); /* one every 10 s */
    assert_true(relay_rate_allow(rt, A, 0, true));
    assert_true(relay_rate_allow(rt, B, 55000, true));
    assert_int_equal(relay_rate_buckets(rt), 2);
    assert_false(relay_rate_allow(rt, B, 60000, true)); /* sweeps: A is full again */
    assert_int_equal(relay_rate_buckets(rt), 1);
    assert_true(relay_rate_allow(rt, A, 60000, true)); /* a new, full bucket */
    assert_int_equal(relay_rate_buckets(rt), 2);
    relay_rate_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_per_second),
        cmocka_unit_test(test_slow),
        cmocka_unit_test(test_no_limit),
        cmocka_unit_test(test_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
