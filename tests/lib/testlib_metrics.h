/*
 * testlib_metrics.h - a metrics registry's exposition text as a C string,
 * for the node/ unit tests that read /metrics as Prometheus would. Header
 * only (static inline): hamr_testlib does not link node/, the tests that
 * include this do.
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_METRICS_H
#define HAMR_TESTS_LIB_TESTLIB_METRICS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "util/buf.h"
#include "node/metrics.h"

/* testlib_metrics_text - m rendered, NUL-terminated, malloc'd (free it); fails the test on error.
 */
static inline char *testlib_metrics_text(const struct metrics *m)
{
    struct buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(metrics_render(m, &b), 0);
    assert_int_equal(buf_append(&b, "", 1), 0);
    size_t len;
    return (char *)buf_steal(&b, &len);
}

#endif
