/*
 * test_cluster_clock.c - cluster time (node/cluster_clock.c): the leader's,
 * stepped only to the median of a majority's wall clocks and never back,
 * and a follower's estimate from the leader's answers. Every time is an
 * argument, so each case states exact values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "node/cluster_clock.h"

#define T0 1796601600000ull /* a cluster time (2026-12-07 00:00 UTC) */
#define SEC 1000ull
#define HOUR (3600 * SEC)
#define DAY (24 * HOUR)

/* Nothing known: the wall clock, no skew, no sample taken while not leading. */
static void test_unknown(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 5 * SEC);
    assert_false(cluster_clock_known(&c));
    assert_false(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 5, T0 + 123), T0 + 123);
    assert_int_equal(cluster_clock_skew(&c, 5, T0 + HOUR), 0);
    assert_false(cluster_clock_skewed(&c, 5, T0 + HOUR));
    const uint64_t walls[] = {T0 + DAY, T0 + DAY, T0 + DAY};
    assert_int_equal(cluster_clock_sample(&c, 5, walls, 3, 3), 0);
    assert_false(cluster_clock_synced(&c));
    assert_false(cluster_clock_known(&c));
    assert_int_equal(cluster_clock_now(&c, 5, T0), T0);
}

/* The leader's own wall clock an hour ahead, then an hour behind: cluster time goes on by mono. */
static void test_leader_wall_jumps(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 5 * SEC);
    cluster_clock_lead(&c, 1000, T0);
    assert_true(cluster_clock_known(&c));
    assert_false(cluster_clock_synced(&c));
    const uint64_t agree[] = {T0, T0, T0};
    assert_int_equal(cluster_clock_sample(&c, 1000, agree, 3, 3), 0);
    assert_true(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 1000, 0), T0);

    const uint64_t ahead[] = {T0 + 1000 + HOUR, T0 + 1000, T0 + 1000};
    assert_int_equal(cluster_clock_sample(&c, 2000, ahead, 3, 3), 0);
    assert_int_equal(cluster_clock_now(&c, 2000, T0 + 1000 + HOUR), T0 + 1000);
    assert_int_equal(cluster_clock_skew(&c, 2000, T0 + 1000 + HOUR), (int64_t)HOUR);
    assert_true(cluster_clock_skewed(&c, 2000, T0 + 1000 + HOUR));

    const uint64_t behind[] = {T0 + 2000 - HOUR, T0 + 2000, T0 + 2000};
    assert_int_equal(cluster_clock_sample(&c, 3000, behind, 3, 3), 0);
    assert_int_equal(cluster_clock_now(&c, 3000, T0 + 2000 - HOUR), T0 + 2000);
    assert_int_equal(cluster_clock_skew(&c, 3000, T0 + 2000 - HOUR), -(int64_t)HOUR);

    /* The followers a little ahead, within the step threshold: no step either. */
    const uint64_t close[] = {T0 + 3000 - HOUR, T0 + 3000 + 50, T0 + 3000 + 1000};
    assert_int_equal(cluster_clock_sample(&c, 4000, close, 3, 3), 0);
    assert_int_equal(cluster_clock_now(&c, 4000, 0), T0 + 3000);
    assert_int_equal(cluster_clock_now(&c, 4000 + HOUR, 0), T0 + 3000 + HOUR);
    assert_true(cluster_clock_synced(&c));
}

/* A follower's wall clock an hour off, of three; two of five off (either way, the leader's too). */
static void test_follower_wall_jumps(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 0, T0);
    const uint64_t three[] = {T0 + 500, T0 + 500 + HOUR, T0 + 500};
    assert_int_equal(cluster_clock_sample(&c, 500, three, 3, 3), 0);
    assert_int_equal(cluster_clock_now(&c, 500, 0), T0 + 500);

    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 0, T0);
    const uint64_t five_ahead[] = {T0 - 5, T0 + HOUR, T0, T0 + 2 * HOUR, T0 + 10};
    assert_int_equal(cluster_clock_sample(&c, 0, five_ahead, 5, 5), 0);
    const uint64_t five_mixed[] = {T0 + 100 - HOUR, T0 + 100, T0 + 100 + HOUR, T0 + 100, T0 + 100};
    assert_int_equal(cluster_clock_sample(&c, 100, five_mixed, 5, 5), 0);
    const uint64_t five_behind[] = {T0 + 200 - HOUR, T0 + 200 - 2 * HOUR, T0 + 200, T0 + 200,
                                    T0 + 200};
    assert_int_equal(cluster_clock_sample(&c, 200, five_behind, 5, 5), 0);
    assert_int_equal(cluster_clock_now(&c, 200, 0), T0 + 200);
    assert_true(cluster_clock_synced(&c));
}

/* All three restart a day after the last log entry: cluster time steps once a majority agrees. */
static void test_restart_after_a_day(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 5 * SEC);
    cluster_clock_lead(&c, 50, T0);
    assert_int_equal(cluster_clock_now(&c, 50, T0 + DAY), T0);
    assert_false(cluster_clock_synced(&c));
    const uint64_t own[] = {T0 + DAY};
    assert_int_equal(cluster_clock_sample(&c, 100, own, 1, 3), 0); /* no majority: no step */
    assert_false(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 100, T0 + DAY), T0 + 50);
    const uint64_t two[] = {T0 + DAY, T0 + DAY};
    assert_int_equal(cluster_clock_sample(&c, 100, two, 2, 3), DAY - 50);
    assert_true(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 100, 0), T0 + DAY);
    assert_int_equal(cluster_clock_now(&c, 1100, 0), T0 + DAY + 1000);
    assert_int_equal(cluster_clock_skew(&c, 1100, T0 + DAY + 1000), 0);
    /* Stepped once: the next sample that agrees does not step again. */
    const uint64_t three[] = {T0 + DAY + 2000, T0 + DAY + 2000, T0 + DAY + 2000};
    assert_int_equal(cluster_clock_sample(&c, 2100, three, 3, 3), 0);
    assert_int_equal(cluster_clock_now(&c, 2100, 0), T0 + DAY + 2000);
}

/* A new leader whose floor and wall clock are behind what it knew keeps its time. */
static void test_new_leader_never_backwards(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 0);
    cluster_clock_answer(&c, 0, 0, T0); /* a follower: T0 at mono 0 */
    cluster_clock_lead(&c, 10000, T0 - HOUR);
    assert_int_equal(cluster_clock_now(&c, 10000, T0 - HOUR), T0 + 10000);
    const uint64_t own_behind[] = {T0 + 10000 - HOUR, T0 + 10000, T0 + 10000};
    assert_int_equal(cluster_clock_sample(&c, 10000, own_behind, 3, 3), 0);
    const uint64_t all_behind[] = {T0 - HOUR, T0 - HOUR, T0 - HOUR};
    assert_int_equal(cluster_clock_sample(&c, 10000, all_behind, 3, 3), 0);
    assert_true(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 10000, 0), T0 + 10000);
    assert_int_equal(cluster_clock_now(&c, 11000, 0), T0 + 11000);

    /* Leading again after a spell as follower: what it had, carried on. */
    cluster_clock_unlead(&c);
    assert_false(cluster_clock_synced(&c));
    assert_true(cluster_clock_known(&c));
    assert_int_equal(cluster_clock_now(&c, 20000, 0), T0 + 20000);
    cluster_clock_lead(&c, 20000, T0);
    assert_false(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 20000, 0), T0 + 20000);

    /* A floor ahead of what it knew wins. */
    cluster_clock_lead(&c, 21000, T0 + HOUR);
    assert_int_equal(cluster_clock_now(&c, 21000, 0), T0 + HOUR);
    assert_int_equal(cluster_clock_now(&c, 22000, 0), T0 + HOUR + 1000);

    /* A leader that knew nothing starts at its floor. */
    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 7, T0);
    assert_int_equal(cluster_clock_now(&c, 7, T0 + HOUR), T0);
    assert_int_equal(cluster_clock_now(&c, 3, T0 + HOUR), T0); /* before the base: the base */
}

/* A follower's estimate: the leader's time plus half the round trip; never backwards. */
static void test_follower_answers(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 0);
    cluster_clock_answer(&c, 1000, 1200, T0);
    assert_true(cluster_clock_known(&c));
    assert_false(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 1200, 0), T0 + 100);
    assert_int_equal(cluster_clock_now(&c, 1500, 0), T0 + 400);
    /* A leader behind (a new one, or a slow answer): the estimate carried on. */
    cluster_clock_answer(&c, 1500, 1600, T0);
    assert_int_equal(cluster_clock_now(&c, 1600, 0), T0 + 500);
    /* A leader ahead: its time. */
    cluster_clock_answer(&c, 1600, 1700, T0 + 2000);
    assert_int_equal(cluster_clock_now(&c, 1700, 0), T0 + 2050);
    assert_int_equal(cluster_clock_now(&c, 2700, 0), T0 + 3050);
    /* Received before the base (out of order): brought to the base first. */
    cluster_clock_answer(&c, 1650, 1690, T0 + 5000);
    assert_int_equal(cluster_clock_now(&c, 1700, 0), T0 + 5030);
    cluster_clock_answer(&c, 1680, 1680, T0 + 5000); /* T0 + 5020 at 1700: behind */
    assert_int_equal(cluster_clock_now(&c, 1700, 0), T0 + 5030);
    /* Received "before" it was sent: no round trip. */
    cluster_clock_answer(&c, 3000, 2000, T0 + 9000);
    assert_int_equal(cluster_clock_now(&c, 2000, 0), T0 + 9000);
    /* While this node leads an answer changes nothing. */
    cluster_clock_lead(&c, 2000, 0);
    cluster_clock_answer(&c, 2000, 2000, T0 + DAY);
    assert_int_equal(cluster_clock_now(&c, 2000, 0), T0 + 9000);
    /* A follower again: answers count, samples do not. */
    cluster_clock_unlead(&c);
    const uint64_t walls[] = {T0 + 2 * DAY, T0 + 2 * DAY, T0 + 2 * DAY};
    assert_int_equal(cluster_clock_sample(&c, 2000, walls, 3, 3), 0);
    assert_false(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 2000, 0), T0 + 9000);
    cluster_clock_answer(&c, 2000, 2000, T0 + DAY);
    assert_int_equal(cluster_clock_now(&c, 2000, 0), T0 + DAY);
}

/* Skew is wall minus cluster time; skewed beyond max_skew_ms, never with 0. */
static void test_skew(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 500);
    cluster_clock_answer(&c, 0, 0, T0);
    assert_int_equal(cluster_clock_skew(&c, 1000, T0 + 1000 + 500), 500);
    assert_false(cluster_clock_skewed(&c, 1000, T0 + 1000 + 500));
    assert_int_equal(cluster_clock_skew(&c, 1000, T0 + 1000 + 501), 501);
    assert_true(cluster_clock_skewed(&c, 1000, T0 + 1000 + 501));
    assert_int_equal(cluster_clock_skew(&c, 1000, T0 + 1000 - 500), -500);
    assert_false(cluster_clock_skewed(&c, 1000, T0 + 1000 - 500));
    assert_int_equal(cluster_clock_skew(&c, 1000, T0 + 1000 - 501), -501);
    assert_true(cluster_clock_skewed(&c, 1000, T0 + 1000 - 501));
    assert_int_equal(cluster_clock_skew(&c, 1000, 0), -(int64_t)(T0 + 1000));

    cluster_clock_init(&c, 0);
    cluster_clock_answer(&c, 0, 0, T0);
    assert_int_equal(cluster_clock_skew(&c, 0, T0 + DAY), (int64_t)DAY);
    assert_false(cluster_clock_skewed(&c, 0, T0 + DAY));
}

/* Synced only after a majority sample: 2 of 3, 3 of 5, 3 of 4; again after each lead. */
static void test_synced_majority(void **state)
{
    (void)state;
    struct cluster_clock c;
    const uint64_t walls[] = {T0, T0, T0, T0, T0};
    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 0, T0);
    assert_int_equal(cluster_clock_sample(&c, 0, walls, 1, 3), 0);
    assert_false(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_sample(&c, 0, walls, 2, 3), 0);
    assert_true(cluster_clock_synced(&c));
    cluster_clock_unlead(&c);
    assert_false(cluster_clock_synced(&c));
    cluster_clock_lead(&c, 0, T0);
    assert_false(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_sample(&c, 0, walls, 2, 3), 0);
    assert_true(cluster_clock_synced(&c));
    cluster_clock_lead(&c, 0, T0); /* leading again (a new term): a new sample first */
    assert_false(cluster_clock_synced(&c));

    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 0, T0);
    assert_int_equal(cluster_clock_sample(&c, 0, walls, 2, 5), 0);
    assert_false(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_sample(&c, 0, walls, 3, 5), 0);
    assert_true(cluster_clock_synced(&c));

    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 0, T0);
    assert_int_equal(cluster_clock_sample(&c, 0, walls, 2, 4), 0);
    assert_false(cluster_clock_synced(&c));
    /* Four clocks: the lower of the two middle ones. */
    const uint64_t four[] = {T0 + 5000, T0 + 3000, T0 + 2000, T0 + 9000};
    assert_int_equal(cluster_clock_sample(&c, 0, four, 4, 4), 3000);
    assert_true(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 0, 0), T0 + 3000);
}

/* One voter: synced after its own sample; the step threshold is exclusive. */
static void test_single_voter(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 0, T0);
    assert_false(cluster_clock_synced(&c));
    const uint64_t w1[] = {T0 + 5000};
    assert_int_equal(cluster_clock_sample(&c, 0, w1, 1, 1), 5000);
    assert_true(cluster_clock_synced(&c));
    assert_int_equal(cluster_clock_now(&c, 0, 0), T0 + 5000);
    const uint64_t w2[] = {T0 + 6000};
    assert_int_equal(cluster_clock_sample(&c, 0, w2, 1, 1), 0); /* exactly the threshold */
    assert_int_equal(cluster_clock_now(&c, 0, 0), T0 + 5000);
    const uint64_t w3[] = {T0 + 6001};
    assert_int_equal(cluster_clock_sample(&c, 0, w3, 1, 1), 1001);
    assert_int_equal(cluster_clock_now(&c, 0, 0), T0 + 6001);
    const uint64_t w4[] = {T0};
    assert_int_equal(cluster_clock_sample(&c, 0, w4, 1, 1), 0); /* behind: never back */
    assert_int_equal(cluster_clock_now(&c, 0, 0), T0 + 6001);
}

/* Monotonic times before the base, and cluster times near the top of uint64. */
static void test_mono_edges(void **state)
{
    (void)state;
    struct cluster_clock c;
    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 10000, T0);
    /* A sample taken at mono 8000: its median carried on to the base. */
    const uint64_t walls[] = {T0 + 3000, T0 + 3000};
    assert_int_equal(cluster_clock_sample(&c, 8000, walls, 2, 3), 5000);
    assert_int_equal(cluster_clock_now(&c, 10000, 0), T0 + 5000);
    assert_int_equal(cluster_clock_now(&c, 9000, 0), T0 + 5000);
    assert_int_equal(cluster_clock_now(&c, UINT64_MAX, 0), UINT64_MAX); /* saturates */

    cluster_clock_init(&c, 0);
    cluster_clock_lead(&c, 0, UINT64_MAX - 10);
    assert_int_equal(cluster_clock_now(&c, 5, 0), UINT64_MAX - 5);
    assert_int_equal(cluster_clock_now(&c, 100, 0), UINT64_MAX);
    assert_int_equal(cluster_clock_skew(&c, 100, 0), -INT64_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_leader_wall_jumps),
        cmocka_unit_test(test_follower_wall_jumps),
        cmocka_unit_test(test_restart_after_a_day),
        cmocka_unit_test(test_new_leader_never_backwards),
        cmocka_unit_test(test_follower_answers),
        cmocka_unit_test(test_skew),
        cmocka_unit_test(test_synced_majority),
        cmocka_unit_test(test_single_voter),
        cmocka_unit_test(test_mono_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
