/*
 * test_disk_guard.c - the free-space limits (node/disk_guard.c) over a fake
 * file system whose free space the test sets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/err.h"
#include "node/disk_guard.h"

#define MIB (1024ull * 1024)

static uint64_t fake_free;
static int fake_rv;
static int fake_reads;

static int fake_read(const char *dir, uint64_t *free_bytes)
{
    assert_string_equal(dir, "/data");
    fake_reads++;
    if (fake_rv != 0)
        return fake_rv;
    *free_bytes = fake_free;
    return 0;
}

static int setup(void **state)
{
    (void)state;
    fake_free = 10000 * MIB;
    fake_rv = 0;
    fake_reads = 0;
    return 0;
}

/* Limits: the floor is two segments, the soft limit min_free above it. */
static void test_limits(void **state)
{
    (void)state;
    struct disk_guard g;
    disk_guard_init(&g, "/data", 64 * MIB, 256 * MIB, fake_read);
    assert_int_equal(g.floor, 128 * MIB);
    assert_int_equal(g.soft, 384 * MIB);
    assert_int_equal(g.free_bytes, 10000 * MIB);
    assert_false(disk_guard_low(&g));
    char why[200] = "";
    fake_free = 384 * MIB; /* exactly at the soft limit: still fine */
    assert_int_equal(disk_guard_check(&g, why, sizeof(why)), 0);
    assert_false(disk_guard_low(&g));
    fake_free = 384 * MIB - 1;
    assert_int_equal(disk_guard_check(&g, why, sizeof(why)), 0);
    assert_true(disk_guard_low(&g));
    fake_free = 128 * MIB; /* at the floor: low, not yet stopping */
    assert_int_equal(disk_guard_check(&g, why, sizeof(why)), 0);
    fake_free = 128 * MIB - 1;
    assert_int_equal(disk_guard_check(&g, why, sizeof(why)), HAMR_ENOSPACE);
    assert_non_null(strstr(why, "below two log segments (128 MiB)"));
    fake_free = 500 * MIB; /* room again */
    assert_int_equal(disk_guard_check(&g, why, sizeof(why)), 0);
    assert_false(disk_guard_low(&g));
}

/* Applied log bytes trigger a reading every eighth of the floor, not before. */
static void test_applied(void **state)
{
    (void)state;
    struct disk_guard g;
    disk_guard_init(&g, "/data", 64 * MIB, 0, fake_read);
    int reads = fake_reads;
    char why[200];
    fake_free = 100 * MIB; /* below the floor */
    assert_int_equal(disk_guard_applied(&g, 16 * MIB - 1, why, sizeof(why)), 0);
    assert_int_equal(fake_reads, reads);
    assert_int_equal(disk_guard_applied(&g, 1, why, sizeof(why)), HAMR_ENOSPACE);
    assert_int_equal(fake_reads, reads + 1);
    assert_int_equal(g.applied_unchecked, 0);
    fake_free = 1000 * MIB;
    assert_int_equal(disk_guard_applied(&g, 8 * MIB, why, sizeof(why)), 0);
    assert_int_equal(fake_reads, reads + 1);
}

/* A failed reading keeps the last one (and never stops the node). */
static void test_unreadable(void **state)
{
    (void)state;
    fake_rv = HAMR_EIO;
    struct disk_guard g;
    disk_guard_init(&g, "/data", 64 * MIB, 0, fake_read);
    assert_int_equal(g.free_bytes, UINT64_MAX); /* a start is not refused */
    fake_rv = 0;
    fake_free = 300 * MIB;
    char why[200];
    assert_int_equal(disk_guard_check(&g, why, sizeof(why)), 0);
    fake_rv = HAMR_EIO;
    fake_free = 1;
    assert_int_equal(disk_guard_check(&g, why, sizeof(why)), 0);
    assert_int_equal(g.free_bytes, 300 * MIB);
}

/* The default reader: statvfs of a real directory. */
static void test_statvfs(void **state)
{
    (void)state;
    struct disk_guard g;
    disk_guard_init(&g, "/", 1 * MIB, 0, NULL);
    assert_true(g.free_bytes > 0 && g.free_bytes != UINT64_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_limits, setup),
        cmocka_unit_test_setup(test_applied, setup),
        cmocka_unit_test_setup(test_unreadable, setup),
        cmocka_unit_test_setup(test_statvfs, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
