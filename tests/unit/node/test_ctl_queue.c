/*
 * test_ctl_queue.c - the pages of hamrctl queue (node/ctl_queue.c) over a
 * real queue: limits, continuing after an id, the scan and byte bounds
 * (each page names where the next starts and nothing is skipped or
 * repeated), filters across pages, argument errors and show.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/common.h"
#include "util/err.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "node/ctl_queue.h"

#define T0 1765000000000ull
#define N_MSGS 25

/* enqueue - message "M<i>" to r<i>@a.test (even i) or r<i>@b.test (odd i), applied. */
static void enqueue(struct queue *q, int i)
{
    char id[16], rcpt[32];
    snprintf(id, sizeof(id), "M%02d", i);
    snprintf(rcpt, sizeof(rcpt), "r%d@%s.test", i, i % 2 ? "b" : "a");
    const char *rcpts[] = {rcpt};
    static const char body[] = "Subject: t\r\n\r\nbody\r\n";
    struct queue_entry_enqueue_args a = {.queue_id = id,
                                         .sender = "s@x.test",
                                         .rcpts = rcpts,
                                         .n_rcpts = 1,
                                         .body = (const uint8_t *)body,
                                         .body_len = sizeof(body) - 1,
                                         .expires_at_ms = T0 + 3600000};
    uint8_t *buf;
    size_t len;
    assert_int_equal(queue_entry_enqueue(&a, T0 + (uint64_t)i, NULL, &buf, &len), 0);
    struct queue_apply_result res;
    assert_int_equal(queue_apply(q, buf, len, &res), 0);
    assert_int_equal(res.status, 0);
    free(buf);
}

static int setup(void **state)
{
    struct queue *q = queue_new();
    assert_non_null(q);
    for (int i = 0; i < N_MSGS; i++)
        enqueue(q, i);
    *state = q;
    return 0;
}

static int teardown(void **state)
{
    queue_free(*state);
    return 0;
}

/*
 * list_all - page through q with args (and the given bounds; 0: default)
 * until no next_after is left; the ids, in order, into out. Returns the
 * number of pages.
 */
static int list_all(const struct queue *q,
                    char **args,
                    size_t n_args,
                    size_t scan_max,
                    size_t bytes_max,
                    char *out,
                    size_t out_len,
                    size_t *page_sizes)
{
    char after[QUEUE_ID_MAX] = "";
    int pages = 0;
    out[0] = '\0';
    for (;;) {
        struct ctl_queue_page pg;
        ctl_queue_page_init(&pg, T0 + 10000);
        if (scan_max)
            pg.scan_max = scan_max;
        if (bytes_max)
            pg.bytes_max = bytes_max;
        const char *ignored = NULL;
        char err[256];
        assert_int_equal(ctl_queue_parse(args, n_args, &pg, &ignored, err, sizeof(err)), 0);
        assert_int_equal(ctl_queue_list(q, &pg, pages ? after : NULL, err, sizeof(err)), 0);
        page_sizes[pages] = pg.n;
        for (size_t i = 0; i < pg.n; i++) {
            strncat(out, pg.entries[i]->queue_id, out_len - strlen(out) - 1);
            strncat(out, " ", out_len - strlen(out) - 1);
        }
        pages++;
        assert_true(pages < 64);
        bool more = pg.next_after != NULL;
        if (more)
            snprintf(after, sizeof(after), "%s", pg.next_after);
        ctl_queue_page_free(&pg);
        if (!more)
            return pages;
    }
}

/* ids - "M<from> M<from+step> ... " below to. */
static void ids(int from, int to, int step, char *out, size_t out_len)
{
    out[0] = '\0';
    for (int i = from; i < to; i += step) {
        size_t n = strlen(out);
        snprintf(out + n, out_len - n, "M%02d ", i);
    }
}

/* Table: paging through the 25 messages, with filters and bounds. */
static void test_pages(void **state)
{
    const struct queue *q = *state;
    static char *limit10[] = {"--limit", "10"};
    static char *limit1000[] = {"--limit", "1000"};
    static char *to_a[] = {"--to", "a.test", "--limit", "4"};
    static char *to_b[] = {"--to", "b.test"};
    static char *held[] = {"--state", "held"};
    static const struct {
        const char *label;
        char **args;
        size_t n_args;
        size_t scan_max, bytes_max;
        int want_pages;
        size_t want_sizes[8];
        int from, step; /* the ids listed: M<from>, M<from+step>, ... */
    } cases[] = {
        {"three pages of 10", limit10, 2, 0, 0, 3, {10, 10, 5}, 0, 1},
        {"one page by default", NULL, 0, 0, 0, 1, {25}, 0, 1},
        {"a limit above the queue", limit1000, 2, 0, 0, 1, {25}, 0, 1},
        {"a filter across pages", to_a, 4, 0, 0, 4, {4, 4, 4, 1}, 0, 2},
        /* The scan bound stops a page short of its limit; none is skipped. */
        {"scan bound with a filter", to_b, 2, 7, 0, 4, {3, 4, 3, 2}, 1, 2},
        {"scan bound, no filter", limit10, 2, 10, 0, 3, {10, 10, 5}, 0, 1},
        /* A page too large for the frame stops at one entry. */
        {"byte bound", limit10, 2, 0, 1, 25, {1, 1, 1, 1, 1, 1, 1, 1}, 0, 1},
        /* Nothing matches: pages end at the scan bound, empty, and go on. */
        {"scan bound, no match", held, 2, 10, 0, 3, {0, 0, 0}, 0, 0},
    };
    for (size_t c = 0; c < HAMR_ARRAY_LEN(cases); c++) {
        print_message("case: %s\n", cases[c].label);
        char got[1024], want[1024];
        size_t sizes[64];
        int pages = list_all(q, cases[c].args, cases[c].n_args, cases[c].scan_max,
                             cases[c].bytes_max, got, sizeof(got), sizes);
        assert_int_equal(pages, cases[c].want_pages);
        for (size_t i = 0; i < (size_t)pages && i < HAMR_ARRAY_LEN(cases[c].want_sizes); i++)
            assert_int_equal(sizes[i], cases[c].want_sizes[i]);
        if (cases[c].step)
            ids(cases[c].from, N_MSGS, cases[c].step, want, sizeof(want));
        else
            want[0] = '\0';
        assert_string_equal(got, want);
    }
}

/* A page names the last message it looked at; the last page names none. */
static void test_next_after(void **state)
{
    const struct queue *q = *state;
    char *args[] = {"--limit", "10"};
    char err[256];
    const char *after = NULL;
    struct ctl_queue_page pg;
    ctl_queue_page_init(&pg, T0);
    assert_int_equal(ctl_queue_parse(args, 2, &pg, &after, err, sizeof(err)), 0);
    assert_null(after);
    assert_int_equal(ctl_queue_list(q, &pg, NULL, err, sizeof(err)), 0);
    assert_int_equal(pg.n, 10);
    assert_string_equal(pg.next_after, "M09");
    ctl_queue_page_free(&pg);

    char *args2[] = {"--after", "M19", "--limit", "10"};
    ctl_queue_page_init(&pg, T0);
    assert_int_equal(ctl_queue_parse(args2, 4, &pg, &after, err, sizeof(err)), 0);
    assert_string_equal(after, "M19");
    assert_int_equal(ctl_queue_list(q, &pg, after, err, sizeof(err)), 0);
    assert_int_equal(pg.n, 5);
    assert_string_equal(pg.entries[0]->queue_id, "M20");
    assert_null(pg.next_after);
    ctl_queue_page_free(&pg);

    /* Exactly a full last page: no next page is promised. */
    char *args3[] = {"--after", "M14", "--limit", "10"};
    ctl_queue_page_init(&pg, T0);
    assert_int_equal(ctl_queue_parse(args3, 4, &pg, &after, err, sizeof(err)), 0);
    assert_int_equal(ctl_queue_list(q, &pg, after, err, sizeof(err)), 0);
    assert_int_equal(pg.n, 10);
    assert_null(pg.next_after);
    ctl_queue_page_free(&pg);
}

/* An --after id that has left the queue (or never was in it) is an error, not the start. */
static void test_after_gone(void **state)
{
    struct queue *q = *state;
    uint8_t *buf;
    size_t len;
    assert_int_equal(
        queue_entry_admin(QUEUE_ENTRY_ADMIN_DELETE, "M05", "", 0, T0 + 100, NULL, &buf, &len), 0);
    struct queue_apply_result res;
    assert_int_equal(queue_apply(q, buf, len, &res), 0);
    free(buf);
    static const char *const gone[] = {"M05", "M99"};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(gone); i++) {
        struct ctl_queue_page pg;
        ctl_queue_page_init(&pg, T0);
        char err[256];
        assert_int_equal(ctl_queue_list(q, &pg, gone[i], err, sizeof(err)), HAMR_ENOTFOUND);
        assert_non_null(strstr(err, gone[i]));
        assert_int_equal(pg.n, 0);
        ctl_queue_page_free(&pg);
    }
}

/* Table: arguments the node refuses. */
static void test_parse_errors(void **state)
{
    (void)state;
    static char *lim0[] = {"--limit", "0"};
    static char *lim_big[] = {"--limit", "10001"};
    static char *lim_x[] = {"--limit", "5x"};
    static char *lim_neg[] = {"--limit", "-1"};
    static char *no_value[] = {"--after"};
    static char *unknown[] = {"--color", "red"};
    static char *state_bad[] = {"--state", "sleeping"};
    static const struct {
        const char *label;
        char **args;
        size_t n;
        const char *want_err;
    } cases[] = {
        {"limit 0", lim0, 2, "--limit takes 1 to 10000"},
        {"limit above the cap", lim_big, 2, "--limit takes 1 to 10000"},
        {"limit with a suffix", lim_x, 2, "--limit takes 1 to 10000"},
        {"negative limit", lim_neg, 2, "--limit takes 1 to 10000"},
        {"no value", no_value, 1, "--after needs a value"},
        {"unknown", unknown, 2, "unknown option"},
        {"bad state", state_bad, 2, "unknown state"},
    };
    for (size_t c = 0; c < HAMR_ARRAY_LEN(cases); c++) {
        print_message("case: %s\n", cases[c].label);
        struct ctl_queue_page pg;
        ctl_queue_page_init(&pg, T0);
        const char *after = NULL;
        char err[256] = "";
        assert_int_equal(ctl_queue_parse(cases[c].args, cases[c].n, &pg, &after, err, sizeof(err)),
                         HAMR_EINVAL);
        assert_non_null(strstr(err, cases[c].want_err));
    }
}

/* show: one entry with its headers, found by id; an unknown id is ENOTFOUND. */
static void test_show(void **state)
{
    const struct queue *q = *state;
    struct ctl_queue_page pg;
    ctl_queue_page_init(&pg, T0);
    assert_int_equal(ctl_queue_show(q, "M24", &pg), 0);
    assert_int_equal(pg.n, 1);
    assert_string_equal(pg.entries[0]->queue_id, "M24");
    assert_string_equal(pg.entries[0]->headers, "Subject: t\r\n");
    ctl_queue_page_free(&pg);
    ctl_queue_page_init(&pg, T0);
    assert_int_equal(ctl_queue_show(q, "M99", &pg), HAMR_ENOTFOUND);
    ctl_queue_page_free(&pg);
}

/* An empty queue: one empty page, nothing more. */
static void test_empty(void **state)
{
    (void)state;
    struct queue *q = queue_new();
    struct ctl_queue_page pg;
    ctl_queue_page_init(&pg, T0);
    char err[256];
    assert_int_equal(ctl_queue_list(q, &pg, NULL, err, sizeof(err)), 0);
    assert_int_equal(pg.n, 0);
    assert_null(pg.next_after);
    ctl_queue_page_free(&pg);
    queue_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_next_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_after_gone, setup, teardown),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test_setup_teardown(test_show, setup, teardown),
        cmocka_unit_test(test_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
