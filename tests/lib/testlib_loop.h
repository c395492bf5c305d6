/*
 * testlib_loop.h - runs a test's libuv loop until a condition holds, bounded
 * by a number of UV_RUN_ONCE turns and by a guard timer on the same loop,
 * and fails the (cmocka) test when either bound is reached first.
 *
 * The guard is a uv_timer_t in struct testlib_loop: it counts as a handle
 * of the loop, so the test closes it (testlib_loop_close) before it runs
 * the loop dry and checks uv_loop_close. A test either starts the guard
 * once for all its waits (testlib_loop_start) or arms it again for each
 * wait (testlib_loop_arm).
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_LOOP_H
#define HAMR_TESTS_LIB_TESTLIB_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

struct testlib_loop {
    uv_loop_t *loop; /* borrowed: the test's loop */
    uv_timer_t guard;
    uint64_t guard_ms;
    int max_turns; /* UV_RUN_ONCE turns per wait at most */
    bool expired;  /* the guard fired: every wait stops */
};

/*
 * testlib_loop_init - w on loop (borrowed, must outlive w's guard), guard
 * not started: max_turns turns per wait, guard_ms for the guard.
 */
void testlib_loop_init(struct testlib_loop *w, uv_loop_t *loop, uint64_t guard_ms, int max_turns);

/* testlib_loop_start - testlib_loop_init, and the guard starts now for all the waits. */
void testlib_loop_start(struct testlib_loop *w, uv_loop_t *loop, uint64_t guard_ms, int max_turns);

/* testlib_loop_arm - (re)start the guard for guard_ms from now; expired is cleared. */
void testlib_loop_arm(struct testlib_loop *w);

/* testlib_loop_disarm - stop the guard (expired stays as it is). */
void testlib_loop_disarm(struct testlib_loop *w);

/* testlib_loop_close - stop and close the guard; the loop's next run releases it. */
void testlib_loop_close(struct testlib_loop *w);

/*
 * testlib_loop_turn - one UV_RUN_ONCE turn, counted in *turns; false, with
 * no turn, once the guard fired or *turns reached max_turns.
 */
bool testlib_loop_turn(struct testlib_loop *w, int *turns);

/* testlib_loop_until_flag - turn until *flag, within the bounds; returns *flag (no failure). */
bool testlib_loop_until_flag(struct testlib_loop *w, const bool *flag);

/* testlib_loop_fail_expired - fail the test, naming what was waited for, if the guard fired. */
void testlib_loop_fail_expired(const struct testlib_loop *w, const char *what);

/*
 * TESTLIB_LOOP_UNTIL - run w's loop until cond holds; the test fails if the
 * guard fired or the turns ran out first. cond is evaluated many times.
 */
#define TESTLIB_LOOP_UNTIL(w, cond)                              \
    do {                                                         \
        int testlib_turns_ = 0;                                  \
        while (!(cond) && testlib_loop_turn(w, &testlib_turns_)) \
            ;                                                    \
        testlib_loop_fail_expired(w, #cond);                     \
        assert_true(cond);                                       \
    } while (0)

/* TESTLIB_LOOP_WAIT - TESTLIB_LOOP_UNTIL with the guard armed for this wait alone. */
#define TESTLIB_LOOP_WAIT(w, cond)   \
    do {                             \
        testlib_loop_arm(w);         \
        TESTLIB_LOOP_UNTIL(w, cond); \
        testlib_loop_disarm(w);      \
    } while (0)

/* testlib_flag_cb - a done callback, cb(arg), that sets the bool arg points to. */
void testlib_flag_cb(void *arg);

/*
 * testlib_loop_finish - once the test has closed its handles (the guard's
 * with testlib_loop_close): run loop dry (a bounded number of non-blocking
 * turns), close it, and name on stderr every handle still open. Returns
 * uv_loop_close's result: 0 when nothing was left.
 */
int testlib_loop_finish(uv_loop_t *loop);

#endif
