/*
 * test_metrics.c - node/metrics: the registry, its exposition text (exact,
 * for a small registry), escaping, cumulative histogram buckets, number
 * formatting, def validation, the render limit, hidden families, and the
 * hamr metric set.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"

#include "node/metrics.h"
#include "tests/lib/testlib_metrics.h"

/* ------------------------------------------------------------------------ */
/* A small registry, rendered exactly.                                      */
/* ------------------------------------------------------------------------ */

enum { T_REQS, T_TEMP, T_LAT, T_INFO, T_COUNT };

static const char *const test_colours[] = {"red", "green", NULL};
static const double test_buckets[] = {0.01, 0.1, 1};

static const struct metrics_def test_defs[] = {
    [T_REQS] = {.name = "t_requests_total",
                .help = "Requests by colour.",
                .type = METRICS_COUNTER,
                .label = "colour",
                .values = test_colours},
    [T_TEMP] = {.name = "t_temperature",
                .help = "A path C:\\x\nsecond line",
                .type = METRICS_GAUGE},
    [T_LAT] = {.name = "t_latency_seconds",
               .help = "Latency.",
               .type = METRICS_HISTOGRAM,
               .buckets = test_buckets,
               .n_buckets = HAMR_ARRAY_LEN(test_buckets)},
    [T_INFO] = {.name = "t_info", .help = "Info.", .type = METRICS_GAUGE, .label = "version"},
};

/* render_small_exact - every line of a small registry, byte for byte. */
static void render_small_exact(void **state)
{
    (void)state;
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(test_defs, T_COUNT, &m), 0);
    metrics_inc_label(m, T_REQS, 1);
    metrics_inc_label(m, T_REQS, 1);
    metrics_counter_add(m, T_REQS, 0, 40);
    metrics_gauge_set(m, T_TEMP, 0, -3.5);
    metrics_observe(m, T_LAT, 0.01); /* on a bound: counts in that bucket */
    metrics_observe(m, T_LAT, 0.5);
    metrics_observe(m, T_LAT, 2); /* above every bound: +Inf only */
    metrics_set_label(m, T_INFO, "1.0 \"beta\"\\x\ny");
    metrics_gauge_set(m, T_INFO, 0, 1);
    char *text = testlib_metrics_text(m);
    const char *want =
        "# HELP t_requests_total Requests by colour.\n"
        "# TYPE t_requests_total counter\n"
        "t_requests_total{colour=\"red\"} 40\n"
        "t_requests_total{colour=\"green\"} 2\n"
        "# HELP t_temperature A path C:\\\\x\\nsecond line\n"
        "# TYPE t_temperature gauge\n"
        "t_temperature -3.5\n"
        "# HELP t_latency_seconds Latency.\n"
        "# TYPE t_latency_seconds histogram\n"
        "t_latency_seconds_bucket{le=\"0.01\"} 1\n"
        "t_latency_seconds_bucket{le=\"0.1\"} 1\n"
        "t_latency_seconds_bucket{le=\"1\"} 2\n"
        "t_latency_seconds_bucket{le=\"+Inf\"} 3\n"
        "t_latency_seconds_sum 2.51\n"
        "t_latency_seconds_count 3\n"
        "# HELP t_info Info.\n"
        "# TYPE t_info gauge\n"
        "t_info{version=\"1.0 \\\"beta\\\"\\\\x\\ny\"} 1\n";
    assert_string_equal(text, want);
    assert_int_equal(metrics_counter(m, T_REQS, 0), 40);
    assert_int_equal(metrics_counter(m, T_REQS, 1), 2);
    assert_int_equal(metrics_hist_count(m, T_LAT), 3);
    assert_true(metrics_gauge(m, T_TEMP, 0) == -3.5);
    free(text);
    m = metrics_free(m);
    assert_null(m);
}

/* render_fresh_zero - a new registry renders every series, at zero. */
static void render_fresh_zero(void **state)
{
    (void)state;
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(test_defs, T_COUNT, &m), 0);
    char *text = testlib_metrics_text(m);
    assert_non_null(strstr(text, "t_requests_total{colour=\"red\"} 0\n"));
    assert_non_null(strstr(text, "t_requests_total{colour=\"green\"} 0\n"));
    assert_non_null(strstr(text, "t_temperature 0\n"));
    assert_non_null(strstr(text, "t_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
    assert_non_null(strstr(text, "t_latency_seconds_sum 0\n"));
    assert_non_null(strstr(text, "t_info{version=\"\"} 0\n"));
    free(text);
    metrics_free(m);
}

/* render_hidden - a hidden family leaves no line at all; shown again, its values are back. */
static void render_hidden(void **state)
{
    (void)state;
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(test_defs, T_COUNT, &m), 0);
    metrics_hide(m, T_TEMP, true);
    metrics_hide(m, T_LAT, true);
    metrics_gauge_set(m, T_TEMP, 0, 21);
    metrics_observe(m, T_LAT, 0.5);
    char *text = testlib_metrics_text(m);
    assert_null(strstr(text, "t_temperature"));
    assert_null(strstr(text, "t_latency_seconds"));
    assert_non_null(strstr(text, "# TYPE t_requests_total counter\n"));
    assert_non_null(strstr(text, "\nt_info{version=\"\"} 0\n"));
    free(text);
    metrics_hide(m, T_TEMP, false);
    text = testlib_metrics_text(m);
    assert_non_null(strstr(text, "# TYPE t_temperature gauge\nt_temperature 21\n"));
    assert_null(strstr(text, "t_latency_seconds"));
    free(text);
    metrics_free(m);
}

/* ------------------------------------------------------------------------ */
/* Histograms.                                                              */
/* ------------------------------------------------------------------------ */

/* hist_cumulative - bucket counts never decrease and end at _count. */
static void hist_cumulative(void **state)
{
    (void)state;
    static const struct {
        double v;
        int bucket; /* 0..2 the bounds 0.01, 0.1, 1; 3 is +Inf */
    } samples[] = {
        {0, 0}, {0.005, 0}, {0.01, 0}, {0.010001, 1}, {0.1, 1}, {0.2, 2}, {1, 2}, {1.5, 3}, {-1, 0},
    };
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(test_defs, T_COUNT, &m), 0);
    unsigned want[4] = {0};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(samples); i++) {
        metrics_observe(m, T_LAT, samples[i].v);
        want[samples[i].bucket]++;
    }
    char *text = testlib_metrics_text(m);
    const char *les[] = {"0.01", "0.1", "1", "+Inf"};
    unsigned cum = 0;
    for (size_t i = 0; i < 4; i++) {
        cum += want[i];
        char line[128];
        snprintf(line, sizeof(line), "t_latency_seconds_bucket{le=\"%s\"} %u\n", les[i], cum);
        assert_non_null(strstr(text, line));
    }
    assert_int_equal(cum, HAMR_ARRAY_LEN(samples));
    char line[64];
    snprintf(line, sizeof(line), "t_latency_seconds_count %zu\n", HAMR_ARRAY_LEN(samples));
    assert_non_null(strstr(text, line));
    free(text);
    metrics_free(m);
}

/* ------------------------------------------------------------------------ */
/* Number formatting.                                                       */
/* ------------------------------------------------------------------------ */

/* gauge_formats - the shortest round-trip text, and Prometheus's special values. */
static void gauge_formats(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        double v;
        const char *want;
    } cases[] = {
        {"zero", 0, "0"},
        {"integer", 268435456, "268435456"},
        {"negative", -3, "-3"},
        {"tenth", 0.1, "0.1"},
        {"third", 1.0 / 3, "0.3333333333333333"},
        {"small", 1e-05, "1e-05"},
        {"big", 1e+21, "1e+21"},
        {"2^53", 9007199254740992.0, "9007199254740992"},
        {"inf", INFINITY, "+Inf"},
        {"-inf", -INFINITY, "-Inf"},
        {"nan", NAN, "NaN"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct metrics *m = NULL;
        assert_int_equal(metrics_new(&test_defs[T_TEMP], 1, &m), 0);
        metrics_gauge_set(m, 0, 0, cases[i].v);
        char *text = testlib_metrics_text(m);
        char want[128];
        snprintf(want, sizeof(want), "\nt_temperature %s\n", cases[i].want);
        if (strstr(text, want) == NULL)
            fail_msg("%s: got %s", cases[i].label, text);
        free(text);
        metrics_free(m);
    }
}

/* gauge_add - gauges move both ways. */
static void gauge_add(void **state)
{
    (void)state;
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(&test_defs[T_TEMP], 1, &m), 0);
    metrics_gauge_add(m, 0, 0, 5);
    metrics_gauge_add(m, 0, 0, -2);
    assert_true(metrics_gauge(m, 0, 0) == 3);
    metrics_free(m);
}

/* ------------------------------------------------------------------------ */
/* Validation and limits.                                                   */
/* ------------------------------------------------------------------------ */

/* defs_invalid - each broken def is refused with HAMR_EINVAL. */
static void defs_invalid(void **state)
{
    (void)state;
    static const double unsorted[] = {1, 0.5};
    static const double one[] = {1};
    static const char *const none[] = {NULL};
    static const struct {
        const char *label;
        struct metrics_def def;
    } cases[] = {
        {"no name", {.name = "", .help = "h", .type = METRICS_COUNTER}},
        {"digit first", {.name = "1x", .help = "h", .type = METRICS_COUNTER}},
        {"dash", {.name = "a-b", .help = "h", .type = METRICS_GAUGE}},
        {"no help", {.name = "a", .type = METRICS_GAUGE}},
        {"bad type", {.name = "a", .help = "h", .type = (enum metrics_type)7}},
        {"values without label",
         {.name = "a", .help = "h", .type = METRICS_GAUGE, .values = test_colours}},
        {"empty value set",
         {.name = "a", .help = "h", .type = METRICS_GAUGE, .label = "x", .values = none}},
        {"label le",
         {.name = "a", .help = "h", .type = METRICS_GAUGE, .label = "le", .values = test_colours}},
        {"label reserved",
         {.name = "a", .help = "h", .type = METRICS_GAUGE, .label = "__x", .values = test_colours}},
        {"label colon",
         {.name = "a", .help = "h", .type = METRICS_GAUGE, .label = "a:b", .values = test_colours}},
        {"histogram no buckets", {.name = "a", .help = "h", .type = METRICS_HISTOGRAM}},
        {"histogram unsorted",
         {.name = "a",
          .help = "h",
          .type = METRICS_HISTOGRAM,
          .buckets = unsorted,
          .n_buckets = 2}},
        {"histogram label",
         {.name = "a",
          .help = "h",
          .type = METRICS_HISTOGRAM,
          .label = "x",
          .buckets = one,
          .n_buckets = 1}},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct metrics *m = NULL;
        int rv = metrics_new(&cases[i].def, 1, &m);
        if (rv != HAMR_EINVAL)
            fail_msg("%s: got %d", cases[i].label, rv);
        assert_null(m);
    }
    /* A name with a colon is a valid metric name. */
    struct metrics_def ok = {.name = "ns:a_b1", .help = "", .type = METRICS_GAUGE};
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(&ok, 1, &m), 0);
    metrics_free(m);
}

/* render_limit - a buffer too small for the text gives HAMR_ETOOBIG. */
static void render_limit(void **state)
{
    (void)state;
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(test_defs, T_COUNT, &m), 0);
    struct buf b;
    buf_init(&b, 100);
    assert_int_equal(metrics_render(m, &b), HAMR_ETOOBIG);
    buf_free(&b);
    metrics_free(m);
}

/* label_index - lookup in a fixed label set. */
static void label_index(void **state)
{
    (void)state;
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(test_defs, T_COUNT, &m), 0);
    assert_int_equal(metrics_label_index(m, T_REQS, "red"), 0);
    assert_int_equal(metrics_label_index(m, T_REQS, "green"), 1);
    assert_int_equal(metrics_label_index(m, T_REQS, "blue"), -1);
    assert_int_equal(metrics_label_index(m, T_TEMP, "red"), -1);
    assert_int_equal(metrics_label_index(m, T_INFO, ""), -1);
    metrics_free(m);
}

/* ------------------------------------------------------------------------ */
/* The hamr metric set.                                                     */
/* ------------------------------------------------------------------------ */

/* hamr_set_renders - every family has HELP and TYPE lines; build info is 1. */
static void hamr_set_renders(void **state)
{
    (void)state;
    static const char *const types[] = {"counter", "gauge", "histogram"};
    struct metrics *m = NULL;
    assert_int_equal(metrics_hamr_new("0.1.0", &m), 0);
    char *text = testlib_metrics_text(m);
    for (unsigned i = 0; i < METRICS_HAMR_COUNT; i++) {
        const struct metrics_def *d = &metrics_hamr_defs[i];
        char line[256];
        snprintf(line, sizeof(line), "# HELP %s ", d->name);
        assert_non_null(strstr(text, line));
        snprintf(line, sizeof(line), "# TYPE %s %s\n", d->name, types[d->type]);
        assert_non_null(strstr(text, line));
        size_t n = strlen(d->name);
        if (d->type == METRICS_COUNTER)
            assert_string_equal(d->name + n - 6, "_total");
        else
            assert_null(strstr(d->name, "_total"));
    }
    assert_non_null(strstr(text, "\nhamr_build_info{version=\"0.1.0\"} 1\n"));
    assert_non_null(strstr(text, "\nhamr_commit_latency_seconds_bucket{le=\"0.001\"} 0\n"));
    assert_non_null(strstr(text, "\nhamr_commit_latency_seconds_bucket{le=\"10\"} 0\n"));
    assert_non_null(strstr(text, "\nhamr_queue_messages{state=\"held\"} 0\n"));
    assert_non_null(strstr(text, "\nhamr_deliveries_total{outcome=\"expired\"} 0\n"));
    free(text);
    metrics_free(m);
}

/* hamr_updates - the indexes of the enums reach the right series. */
static void hamr_updates(void **state)
{
    (void)state;
    struct metrics *m = NULL;
    assert_int_equal(metrics_hamr_new("v", &m), 0);
    metrics_inc(m, METRICS_SESSIONS_TOTAL);
    metrics_gauge_add(m, METRICS_SESSIONS_OPEN, 0, 1);
    metrics_inc_label(m, METRICS_DELIVERIES, METRICS_OUTCOME_BOUNCED);
    metrics_gauge_set(m, METRICS_QUEUE_RCPTS, METRICS_STATE_DEFERRED, 7);
    metrics_counter_set(m, METRICS_FORWARDED, 0, 12);
    metrics_observe(m, METRICS_COMMIT_SECONDS, 0.003);
    metrics_gauge_set(m, METRICS_PKI_DAYS_LEFT, METRICS_CERT_CA, 3649);
    metrics_gauge_set(m, METRICS_PKI_NOT_AFTER, METRICS_CERT_NODE, 1798761600);
    char *text = testlib_metrics_text(m);
    assert_non_null(strstr(text, "\nhamr_smtp_sessions_total 1\n"));
    assert_non_null(strstr(text, "\nhamr_smtp_sessions_open 1\n"));
    assert_non_null(strstr(text, "\nhamr_deliveries_total{outcome=\"bounced\"} 1\n"));
    assert_non_null(strstr(text, "\nhamr_deliveries_total{outcome=\"delivered\"} 0\n"));
    assert_non_null(strstr(text, "\nhamr_queue_recipients{state=\"deferred\"} 7\n"));
    assert_non_null(strstr(text, "\nhamr_forwarded_proposals_total 12\n"));
    assert_non_null(strstr(text, "\nhamr_commit_latency_seconds_bucket{le=\"0.0025\"} 0\n"));
    assert_non_null(strstr(text, "\nhamr_commit_latency_seconds_bucket{le=\"0.005\"} 1\n"));
    assert_non_null(strstr(text, "\nhamr_commit_latency_seconds_sum 0.003\n"));
    assert_non_null(strstr(text, "\nhamr_cluster_tls_days_left{cert=\"ca\"} 3649\n"));
    assert_non_null(strstr(text, "\nhamr_cluster_tls_days_left{cert=\"node\"} 0\n"));
    assert_non_null(
        strstr(text, "\nhamr_cluster_tls_not_after_seconds{cert=\"node\"} 1798761600\n"));
    free(text);
    metrics_free(m);
}

/* hamr_rejects - reply codes map to their label; unknown codes to "other". */
static void hamr_rejects(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *label;
    } cases[] = {
        {421, "421"}, {451, "451"}, {452, "452"}, {500, "500"},   {503, "503"}, {550, "550"},
        {552, "552"}, {554, "554"}, {555, "555"}, {299, "other"}, {0, "other"}, {599, "other"},
    };
    struct metrics *m = NULL;
    assert_int_equal(metrics_hamr_new("v", &m), 0);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        int idx = metrics_label_index(m, METRICS_SMTP_REJECTS, cases[i].label);
        assert_true(idx >= 0);
        uint64_t before = metrics_counter(m, METRICS_SMTP_REJECTS, (unsigned)idx);
        metrics_hamr_reject(m, cases[i].code);
        if (metrics_counter(m, METRICS_SMTP_REJECTS, (unsigned)idx) != before + 1)
            fail_msg("code %d did not count as %s", cases[i].code, cases[i].label);
    }
    char *text = testlib_metrics_text(m);
    assert_non_null(strstr(text, "\nhamr_smtp_rejects_total{code=\"other\"} 3\n"));
    assert_non_null(strstr(text, "\nhamr_smtp_rejects_total{code=\"451\"} 1\n"));
    assert_non_null(strstr(text, "\nhamr_smtp_rejects_total{code=\"450\"} 0\n"));
    free(text);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(render_small_exact), cmocka_unit_test(render_fresh_zero),
        cmocka_unit_test(render_hidden),      cmocka_unit_test(hist_cumulative),
        cmocka_unit_test(gauge_formats),      cmocka_unit_test(gauge_add),
        cmocka_unit_test(defs_invalid),       cmocka_unit_test(render_limit),
        cmocka_unit_test(label_index),        cmocka_unit_test(hamr_set_renders),
        cmocka_unit_test(hamr_updates),       cmocka_unit_test(hamr_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
