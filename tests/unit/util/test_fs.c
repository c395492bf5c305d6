/*
 * test_fs.c - util/fs.c: mkdir -p and the fsync of a directory or of the
 * directory holding a path, on a real directory under $TMPDIR.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/err.h"
#include "util/fs.h"

/* A made directory, its parent and the root sync; a missing one is an error naming it. */
static void test_fsync_dir(void **state)
{
    (void)state;
    char root[256], sub[300], err[400] = "";
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof(root), "%s/store-fs-XXXXXX", tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(root));
    snprintf(sub, sizeof(sub), "%s/a/b", root);
    assert_int_equal(fs_mkdirs(sub, 0700, err, sizeof(err)), 0);
    struct stat st;
    assert_int_equal(stat(sub, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(fs_fsync_dir(sub, err, sizeof(err)), 0);
    assert_int_equal(fs_fsync_parent(sub, err, sizeof(err)), 0);
    size_t n = strlen(sub);
    sub[n] = '/', sub[n + 1] = '\0'; /* a trailing slash names the same directory */
    assert_int_equal(fs_fsync_parent(sub, err, sizeof(err)), 0);
    assert_int_equal(fs_fsync_parent("/tmp", err, sizeof(err)), 0);
    assert_int_equal(fs_fsync_parent("relative", err, sizeof(err)), 0); /* "." */
    snprintf(sub, sizeof(sub), "%s/missing", root);
    assert_int_equal(fs_fsync_dir(sub, err, sizeof(err)), HAMR_EIO);
    assert_non_null(strstr(err, "missing"));
    assert_int_equal(fs_fsync_dir(sub, NULL, 0), HAMR_EIO);
    snprintf(sub, sizeof(sub), "%s/a/b", root);
    assert_int_equal(rmdir(sub), 0);
    snprintf(sub, sizeof(sub), "%s/a", root);
    assert_int_equal(rmdir(sub), 0);
    assert_int_equal(rmdir(root), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fsync_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
