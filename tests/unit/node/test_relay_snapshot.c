/*
 * test_relay_snapshot.c - the snapshot packed by a forked child
 * (node/relay_snapshot.c): what comes through the pipe restores to the same
 * queue, and the child does not run the parent's signal handlers: a SIGTERM
 * sent to it (systemd signals the whole group) kills it at once instead of
 * reaching the parent a second time through libuv's signal pipe.
 *
 * The relay is relay_fixture's zeroed struct with a queue and no body store
 * (a queue without body ops puts every body in the snapshot). The bodies make the
 * snapshot larger than a pipe holds, so the child stays blocked in its write
 * until the test reads or signals it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/common.h"
#include "util/err.h"
#include "queue/queue.h"
#include "node/config.h"
#include "node/relay_internal.h"
#include "queue_fixture.h"
#include "relay_fixture.h"

#define T0 1765000000000ull
#define TEST_MSGS 64
#define TEST_BODY 4096 /* 64 of them: four times a pipe's default capacity */

/* test_setup - a relay whose queue holds TEST_MSGS messages of TEST_BODY octets. */
static int test_setup(void **state)
{
    struct relay_fx *c = relay_fx_new();
    static char body[TEST_BODY + 1];
    for (size_t i = 0; i < TEST_MSGS; i++) {
        char id[16];
        snprintf(id, sizeof(id), "M%zu", i);
        int n = snprintf(body, sizeof(body), "Subject: %s\r\n\r\n", id);
        while (n < TEST_BODY - 8)
            n += snprintf(body + n, sizeof(body) - (size_t)n, "%s %d\r\n", id, n);
        struct fx_enq e = {
            .id = id, .sender = "s@x.test", .rcpts = {"r@y.test"}, .body = body, .expires = T0 + 1};
        assert_int_equal(fx_enqueue(c->r.queue, T0, &e).status, 0);
    }
    *state = c;
    return 0;
}

/* What comes out of the pipe is a snapshot that restores to the same state. */
static void test_snapshot_through_pipe(void **state)
{
    struct relay_fx *c = *state;
    void *view = NULL;
    assert_int_equal(relay_snapshot_view(&c->r, &view), 0);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(relay_snapshot_write(view, &buf, &len), 0);
    assert_true(len > TEST_MSGS * TEST_BODY);
    struct queue *q2 = queue_new();
    assert_non_null(q2);
    assert_int_equal(queue_restore(q2, buf, len), 0);
    relay_snapshot_release(view);
    char a[65], b[65];
    queue_digest(c->r.queue, a);
    queue_digest(q2, b);
    assert_string_equal(a, b);
    q2 = queue_free(q2);
}

static volatile sig_atomic_t test_terms;

/* test_term_cb - the parent's SIGTERM handler, as hamrd has one (through libuv). */
static void test_term_cb(int sig)
{
    (void)sig;
    test_terms++;
}

/* test_child_pid - the one child of this thread (/proc/.../children), or 0. */
static pid_t test_child_pid(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%ld/children", (long)syscall(SYS_gettid));
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return (pid_t)pid;
}

/* With a SIGTERM handler in the parent, a SIGTERM kills the blocked child, and only it. */
static void test_child_dies_of_sigterm(void **state)
{
    struct relay_fx *c = *state;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = test_term_cb;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGTERM, &sa, &old), 0);
    test_terms = 0;
    void *view = NULL;
    assert_int_equal(relay_snapshot_view(&c->r, &view), 0);
    pid_t child = test_child_pid();
    if (child == 0) {
        relay_snapshot_release(view);
        sigaction(SIGTERM, &old, NULL);
        skip(); /* no /proc/.../children on this kernel */
    }
    assert_int_equal(kill(child, SIGTERM), 0);
    int st = 0;
    pid_t w = 0;
    for (int i = 0; i < 500 && w == 0; i++) { /* at most 5 s */
        w = waitpid(child, &st, WNOHANG);
        if (w == 0)
            nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    if (w == 0)
        kill(child, SIGKILL);     /* the handler ran in the child: it lives on, blocked */
    relay_snapshot_release(view); /* its waitpid finds the child reaped already */
    sigaction(SIGTERM, &old, NULL);
    assert_int_equal(w, child);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGTERM);
    assert_int_equal(test_terms, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_snapshot_through_pipe, test_setup, relay_fx_teardown),
        cmocka_unit_test_setup_teardown(test_child_dies_of_sigterm, test_setup, relay_fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
