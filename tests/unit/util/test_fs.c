/*
 * test_fs.c - util/fs.c: mkdir -p and the fsync of a directory or of the
 * directory holding a path, on a real directory under $TMPDIR; whole reads
 * and writes (fs_read_full, fs_writev_full) on a file, and on a pipe whose
 * other end a timer signal drains or fills, so that calls are cut short and
 * interrupted (EINTR) on the way.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
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

/* test_tmpfile - an empty file under $TMPDIR, already unlinked. */
static int test_tmpfile(void)
{
    char path[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof(path), "%s/store-fs-XXXXXX", tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(unlink(path), 0);
    return fd;
}

/* test_pattern - octet i of the test data. */
static uint8_t test_pattern(size_t i)
{
    return (uint8_t)(i * 7 + i / 251);
}

/* At an offset: every part of the vector (an empty one among them) lands in order; a read
 * past the end returns what there is, one at the end nothing. */
static void test_read_write_file(void **state)
{
    (void)state;
    int fd = test_tmpfile();
    uint8_t a[] = "head-", b[] = "", c[] = "tail";
    struct iovec iov[3] = {{a, 5}, {b, 0}, {c, 4}};
    assert_int_equal(fs_writev_full(fd, iov, 3, 10), 0);
    uint8_t buf[32];
    memset(buf, 'x', sizeof(buf));
    assert_int_equal(fs_read_full(fd, buf, 9, 10), 9);
    assert_memory_equal(buf, "head-tail", 9);
    assert_int_equal(fs_read_full(fd, buf, sizeof(buf), 15), 4); /* the end of the file */
    assert_memory_equal(buf, "tail", 4);
    assert_int_equal(fs_read_full(fd, buf, sizeof(buf), 19), 0);
    assert_int_equal(fs_read_full(fd, buf, 3, 0), 3); /* the hole before the offset */
    assert_memory_equal(buf, "\0\0\0", 3);
    struct iovec empty[2] = {{a, 0}, {c, 0}};
    assert_int_equal(fs_writev_full(fd, empty, 2, 40), 0); /* nothing to write is no error */
    assert_int_equal(fs_writev_full(fd, empty, 0, -1), 0);
    /* At the file position (off -1): after the first write, the second follows it. */
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    struct iovec one = {a, 5}, two = {c, 4};
    assert_int_equal(fs_writev_full(fd, &one, 1, -1), 0);
    assert_int_equal(fs_writev_full(fd, &two, 1, -1), 0);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    assert_int_equal(fs_read_full(fd, buf, 9, -1), 9);
    assert_memory_equal(buf, "head-tail", 9);
    assert_int_equal(fs_read_full(-1, buf, 1, 0), -EBADF);
    assert_int_equal(fs_writev_full(-1, &one, 1, 0), -EBADF);
    close(fd);
}

/* The pipe of the signal tests, and what the handler has moved through it. */
#define TEST_PIPE_TOTAL (256 * 1024) /* four times a pipe's default capacity */
#define TEST_PIPE_STEP 4093          /* octets per signal: crosses every boundary */
static int test_pipe[2];
static uint8_t test_moved[TEST_PIPE_TOTAL];
static volatile size_t test_moved_n;
static volatile unsigned test_signals;

/* test_table_line - entries of a table file: comments, blanks, CR, indentation, a long line. */
static void test_table_line(void **state)
{
    (void)state;
    static const char text[] =
        "# comment\n\n   \t\n  indented x\t \r\nplain\n  # late comment\n"
        "0123456789012345678901234\nlast";
    FILE *f = fmemopen((void *)text, sizeof(text) - 1, "r");
    assert_non_null(f);
    char line[24], err[128];
    unsigned lineno = 0;
    char *start = NULL;
    assert_int_equal(fs_table_line(f, "T", line, sizeof(line), &lineno, &start, err, sizeof(err)),
                     1);
    assert_int_equal(lineno, 4);
    assert_string_equal(start, "indented x");
    assert_int_equal(fs_table_line(f, "T", line, sizeof(line), &lineno, &start, err, sizeof(err)),
                     1);
    assert_int_equal(lineno, 5);
    assert_true(start == line);
    assert_string_equal(start, "plain");
    /* Line 7 is 25 octets: over the 22 that a 24-octet buffer holds. */
    assert_int_equal(fs_table_line(f, "T", line, sizeof(line), &lineno, &start, err, sizeof(err)),
                     HAMR_EINVAL);
    assert_string_equal(err, "T:7: line longer than 22 octets");
    fclose(f);

    f = fmemopen((void *)"a\nlast", 6, "r");
    lineno = 0;
    assert_int_equal(fs_table_line(f, "T", line, sizeof(line), &lineno, &start, err, sizeof(err)),
                     1);
    assert_int_equal(fs_table_line(f, "T", line, sizeof(line), &lineno, &start, err, sizeof(err)),
                     1);
    assert_string_equal(start, "last"); /* no newline at the end of the file */
    assert_int_equal(fs_table_line(f, "T", line, sizeof(line), &lineno, &start, err, sizeof(err)),
                     0);
    assert_int_equal(lineno, 2);
    fclose(f);
}

/* test_drain_cb - SIGALRM while a write blocks on a full pipe: read a little of it. */
static void test_drain_cb(int sig)
{
    (void)sig;
    int e = errno;
    size_t left = TEST_PIPE_TOTAL - test_moved_n;
    ssize_t r = read(test_pipe[0], test_moved + test_moved_n,
                     left < TEST_PIPE_STEP ? left : TEST_PIPE_STEP);
    if (r > 0)
        test_moved_n += (size_t)r;
    test_signals++;
    errno = e;
}

/* test_fill_cb - SIGALRM while a read blocks on an empty pipe: write a little into it. */
static void test_fill_cb(int sig)
{
    (void)sig;
    int e = errno;
    size_t left = TEST_PIPE_TOTAL - test_moved_n;
    size_t n = left < TEST_PIPE_STEP ? left : TEST_PIPE_STEP;
    uint8_t chunk[TEST_PIPE_STEP];
    for (size_t i = 0; i < n; i++)
        chunk[i] = test_pattern(test_moved_n + i);
    ssize_t w = write(test_pipe[1], chunk, n);
    if (w > 0)
        test_moved_n += (size_t)w;
    test_signals++;
    errno = e;
}

/* test_timer - handler cb on SIGALRM every 2 ms without SA_RESTART (NULL: stop, default). */
static void test_timer(void (*cb)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = cb != NULL ? cb : SIG_DFL;
    sigemptyset(&sa.sa_mask);
    struct itimerval it = {{0, cb != NULL ? 2000 : 0}, {0, cb != NULL ? 2000 : 0}};
    if (cb == NULL)
        assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);
    assert_int_equal(sigaction(SIGALRM, &sa, NULL), 0);
    if (cb != NULL)
        assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);
}

/*
 * Into a pipe that only the signal handler drains, a little at a time: the
 * write blocks once the pipe is full, and each signal either cuts it short
 * (some octets written) or interrupts it (EINTR). Every octet must come out
 * once and in order, across the boundaries of uneven vector entries.
 */
static void test_writev_pipe_interrupted(void **state)
{
    (void)state;
    static uint8_t data[TEST_PIPE_TOTAL];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = test_pattern(i);
    struct iovec iov[5];
    size_t sizes[5] = {1, 70000, 3, 100000, TEST_PIPE_TOTAL - 170004}, off = 0;
    for (int i = 0; i < 5; i++) {
        iov[i].iov_base = data + off;
        iov[i].iov_len = sizes[i];
        off += sizes[i];
    }
    assert_int_equal(pipe(test_pipe), 0);
    assert_int_equal(fcntl(test_pipe[0], F_SETFL, O_NONBLOCK), 0); /* the handler never blocks */
    test_moved_n = 0;
    test_signals = 0;
    test_timer(test_drain_cb);
    int rv = fs_writev_full(test_pipe[1], iov, 5, -1);
    test_timer(NULL);
    assert_int_equal(rv, 0);
    for (;;) { /* what the handler had not taken yet */
        ssize_t r = read(test_pipe[0], test_moved + test_moved_n, TEST_PIPE_TOTAL - test_moved_n);
        if (r <= 0)
            break;
        test_moved_n += (size_t)r;
    }
    assert_int_equal(test_moved_n, TEST_PIPE_TOTAL);
    assert_memory_equal(test_moved, data, TEST_PIPE_TOTAL);
    assert_true(test_signals > 0); /* the write had to wait for the handler */
    close(test_pipe[0]);
    close(test_pipe[1]);
}

/* From a pipe that only the signal handler fills: reads return early or are interrupted;
 * the whole arrives; once the writer is gone, a read gets what is left and stops. */
static void test_read_pipe_interrupted(void **state)
{
    (void)state;
    static uint8_t got[TEST_PIPE_TOTAL];
    assert_int_equal(pipe(test_pipe), 0);
    assert_int_equal(fcntl(test_pipe[1], F_SETFL, O_NONBLOCK), 0);
    test_moved_n = 0;
    test_signals = 0;
    test_timer(test_fill_cb);
    ssize_t n = fs_read_full(test_pipe[0], got, 100000, -1);
    test_timer(NULL);
    assert_int_equal(n, 100000);
    for (size_t i = 0; i < 100000; i++)
        if (got[i] != test_pattern(i))
            fail_msg("octet %zu: %u, not %u", i, got[i], test_pattern(i));
    assert_true(test_signals >= 100000 / TEST_PIPE_STEP);
    close(test_pipe[1]);
    size_t left = test_moved_n - 100000;
    assert_int_equal(fs_read_full(test_pipe[0], got, sizeof(got), -1), (ssize_t)left);
    close(test_pipe[0]);
}

/* A file that may not grow past 100 octets (RLIMIT_FSIZE): the write is cut short at the
 * limit, the next one fails, and the error comes back; the first 100 octets are there. */
static void test_writev_file_limit(void **state)
{
    (void)state;
    int fd = test_tmpfile();
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_xfsz)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 100;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    uint8_t data[150];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = test_pattern(i);
    struct iovec iov[3] = {{data, 60}, {data + 60, 60}, {data + 120, 30}};
    int rv = fs_writev_full(fd, iov, 3, 0);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_xfsz);
    assert_int_equal(rv, -EFBIG);
    uint8_t back[150];
    assert_int_equal(fs_read_full(fd, back, sizeof(back), 0), 100);
    assert_memory_equal(back, data, 100);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fsync_dir),
        cmocka_unit_test(test_table_line),
        cmocka_unit_test(test_read_write_file),
        cmocka_unit_test(test_writev_pipe_interrupted),
        cmocka_unit_test(test_read_pipe_interrupted),
        cmocka_unit_test(test_writev_file_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
