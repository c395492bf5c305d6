/*
 * test_pki_status.c - node/pki_status: the cluster PKI's expiry as hamrctl
 * status, /metrics and the log tell it, on certificates made per run by
 * deploy/make-pki.sh with a known validity (HAMR_PKI_DAYS), at times chosen
 * from the files' own notBefore/notAfter (read with OpenSSL alone), so every
 * expected day count is exact.
 *
 * Covers: the ClusterTlsStatus of a 30-day node certificate and of
 * plaintext, and after a reload to a 10-day one; the status line for
 * people (a table: days, "within a day", expired, the renewal notes,
 * plaintext, an unprintable identity); the hamr_cluster_tls_* series in the
 * rendered /metrics text, and none of them in plaintext; the start/reload
 * log line and its warnings at 30 days, 29 days and an expired certificate
 * and CA.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"
#include "net/cluster_tls.h"
#include "node/metrics.h"
#include "node/pki_status.h"
#include "tests/lib/testlib_metrics.h"
#include "tests/lib/testlib_pki.h"

struct fixture {
    struct testlib_pki pki; /* a CA and node 2, valid 30 days */
    struct cluster_tls *tls;
    time_t begin;  /* node 2's notBefore: 30 whole days left */
    time_t end;    /* its notAfter */
    time_t ca_end; /* the CA's notAfter */
    char ca[512], cert[512], key[512];
};

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof(f));
    if (!testlib_pki_init(&f.pki) || !testlib_pki_node(&f.pki, 2, 30))
        return -1;
    struct cluster_tls_files files = {
        .ca = testlib_pki_path(&f.pki, "ca.pem", f.ca, sizeof(f.ca)),
        .cert = testlib_pki_path(&f.pki, "node-2.pem", f.cert, sizeof(f.cert)),
        .key = testlib_pki_path(&f.pki, "node-2.key", f.key, sizeof(f.key)),
        .node_id = 2,
    };
    char err[512];
    if (cluster_tls_new(&files, &f.tls, err, sizeof(err)) != 0) {
        fprintf(stderr, "cluster_tls_new: %s\n", err);
        return -1;
    }
    f.begin = testlib_pki_time(&f.pki, "node-2.pem", false);
    f.end = testlib_pki_time(&f.pki, "node-2.pem", true);
    f.ca_end = testlib_pki_time(&f.pki, "ca.pem", true);
    if (f.begin == 0 || f.end - f.begin != 30L * 86400 || f.ca_end == 0)
        return -1;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    cluster_tls_free(f->tls);
    testlib_pki_cleanup(&f->pki);
    return 0;
}

/* ca_days - whole days from now to the CA's notAfter, counted here. */
static long ca_days(const struct fixture *f, time_t now)
{
    long long secs = (long long)(f->ca_end - now);
    return (long)(secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400));
}

/* test_fill - what hamrctl status carries, with TLS and in plaintext. */
static void test_fill(void **state)
{
    struct fixture *f = *state;
    Hamr__ClusterTlsStatus s;
    char ident[PKI_STATUS_IDENT_MAX];
    pki_status_fill(f->tls, f->begin, &s, ident, sizeof(ident));
    assert_false(s.plaintext);
    assert_string_equal(s.identity, "node:2");
    assert_int_equal(s.cert_days_left, 30);
    assert_int_equal(s.ca_days_left, ca_days(f, f->begin));
    assert_true(s.ca_days_left >= 3649);
    assert_int_equal(s.cert_not_after, f->end);
    assert_int_equal(s.ca_not_after, f->ca_end);
    assert_int_equal(s.reloads, 0);
    pki_status_fill(f->tls, f->end + 1, &s, ident, sizeof(ident));
    assert_int_equal(s.cert_days_left, -1);

    pki_status_fill(NULL, f->begin, &s, ident, sizeof(ident));
    assert_true(s.plaintext);
    assert_int_equal(s.cert_days_left, 0);
    assert_int_equal(s.cert_not_after, 0);
}

/* test_describe - the status line, one row per case. */
static void test_describe(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        bool plaintext;
        const char *identity;
        int64_t cert, ca;
        const char *want;
    } cases[] = {
        {"fresh", false, "node:2", 364, 3649,
         "node:2, certificate expires in 364 days, CA in 3649 days"},
        {"30 days: not yet", false, "node:2", 30, 3649,
         "node:2, certificate expires in 30 days, CA in 3649 days"},
        {"29 days", false, "node:2", 29, 3649,
         "node:2, certificate expires in 29 days (renew soon), CA in 3649 days"},
        {"one day", false, "node:3", 1, 3649,
         "node:3, certificate expires in 1 day (renew soon), CA in 3649 days"},
        {"under a day", false, "node:3", 0, 3649,
         "node:3, certificate expires within a day (renew soon), CA in 3649 days"},
        {"expired", false, "node:3", -1, 3649,
         "node:3, certificate expired (renew now), CA in 3649 days"},
        {"CA due", false, "node:1", 200, 20,
         "node:1, certificate expires in 200 days, CA in 20 days (renew soon)"},
        {"CA expired", false, "node:1", -400, -2,
         "node:1, certificate expired (renew now), CA expired (renew now)"},
        {"unprintable", false, "node:1\x1b[31m", 100, 100,
         "node:1?[31m, certificate expires in 100 days, CA in 100 days"},
        {"no identity", false, "", 100, 100,
         "no identity, certificate expires in 100 days, CA in 100 days"},
        {"plaintext", true, "", 0, 0, "off (plaintext)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Hamr__ClusterTlsStatus s = HAMR__CLUSTER_TLS_STATUS__INIT;
        s.plaintext = cases[i].plaintext;
        s.identity = (char *)cases[i].identity;
        s.cert_days_left = cases[i].cert;
        s.ca_days_left = cases[i].ca;
        char line[256];
        pki_status_describe(&s, line, sizeof(line));
        if (strcmp(line, cases[i].want) != 0)
            fail_msg("%s: \"%s\", want \"%s\"", cases[i].label, line, cases[i].want);
    }
}

/* has_line - text has exactly this line. */
static void has_line(const char *text, const char *line)
{
    char want[256];
    snprintf(want, sizeof(want), "\n%s\n", line);
    if (strstr(text, want) == NULL)
        fail_msg("no line \"%s\" in /metrics", line);
}

/* test_metrics - the series in the /metrics text; absent in plaintext. */
static void test_metrics(void **state)
{
    struct fixture *f = *state;
    struct metrics *m = NULL;
    assert_int_equal(metrics_hamr_new("0.1.0", &m), 0);
    char line[160];

    pki_status_metrics(f->tls, f->begin, m);
    char *text = testlib_metrics_text(m);
    has_line(text, "hamr_cluster_tls_days_left{cert=\"node\"} 30");
    snprintf(line, sizeof(line), "hamr_cluster_tls_days_left{cert=\"ca\"} %ld",
             ca_days(f, f->begin));
    has_line(text, line);
    snprintf(line, sizeof(line), "hamr_cluster_tls_not_after_seconds{cert=\"node\"} %lld",
             (long long)f->end);
    has_line(text, line);
    snprintf(line, sizeof(line), "hamr_cluster_tls_not_after_seconds{cert=\"ca\"} %lld",
             (long long)f->ca_end);
    has_line(text, line);
    has_line(text, "hamr_cluster_tls_reloads_total 0");
    has_line(text, "# TYPE hamr_cluster_tls_days_left gauge");
    free(text);

    /* The count goes down with the clock, below zero after notAfter. */
    pki_status_metrics(f->tls, f->end - 86400 + 1, m);
    text = testlib_metrics_text(m);
    has_line(text, "hamr_cluster_tls_days_left{cert=\"node\"} 0");
    free(text);
    pki_status_metrics(f->tls, f->end + 1, m);
    text = testlib_metrics_text(m);
    has_line(text, "hamr_cluster_tls_days_left{cert=\"node\"} -1");
    free(text);

    /* Plaintext: not a zero (an alert on "days left < 30" would fire), nothing. */
    pki_status_metrics(NULL, f->begin, m);
    text = testlib_metrics_text(m);
    assert_null(strstr(text, "hamr_cluster_tls"));
    has_line(text, "hamr_build_info{version=\"0.1.0\"} 1");
    free(text);
    pki_status_metrics(f->tls, f->begin, m);
    text = testlib_metrics_text(m);
    has_line(text, "hamr_cluster_tls_days_left{cert=\"node\"} 30");
    free(text);
    metrics_free(m);
}

/* capture_log - pki_status_log(f->tls, now, event) as the text it wrote to stderr (malloc'd). */
static char *capture_log(struct fixture *f, time_t now, const char *event)
{
    char path[] = "/tmp/hamr-pki-status-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    pki_status_log(f->tls, now, event, f->cert, f->ca);
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    char *text = calloc(1, 8192);
    assert_non_null(text);
    ssize_t n = pread(fd, text, 8191, 0);
    close(fd);
    assert_true(n > 0);
    return text;
}

/* count - occurrences of needle in text. */
static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* test_log - the info line always; a warning under 30 days, for the certificate and the CA. */
static void test_log(void **state)
{
    struct fixture *f = *state;
    char want[2048];

    char *text = capture_log(f, f->begin, "loaded");
    snprintf(want, sizeof(want),
             " info cluster TLS loaded: node:2, certificate expires in 30 days, CA in %ld days "
             "(certificate %s, CA %s)\n",
             ca_days(f, f->begin), f->cert, f->ca);
    assert_non_null(strstr(text, want));
    assert_int_equal(count(text, " warn "), 0);
    free(text);

    text = capture_log(f, f->begin + 1, "reloaded");
    assert_non_null(strstr(text,
                           "info cluster TLS reloaded: node:2, certificate expires in 29 "
                           "days (renew soon), CA in "));
    snprintf(want, sizeof(want),
             " warn cluster TLS: the certificate of node:2 (%s) expires in 29 days: put a new "
             "one of the cluster CA in its place (deploy/make-pki.sh) and send hamrd SIGHUP\n",
             f->cert);
    assert_non_null(strstr(text, want));
    assert_int_equal(count(text, " warn "), 1);
    free(text);

    /* Five days before the CA ends: the certificate is long expired, the CA due. */
    text = capture_log(f, f->ca_end - 5 * 86400, "kept");
    snprintf(want, sizeof(want),
             " warn cluster TLS: the certificate of node:2 (%s) expired: ", f->cert);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof(want),
             " warn cluster TLS: the cluster CA (%s) expires in 5 days: ", f->ca);
    assert_non_null(strstr(text, want));
    assert_int_equal(count(text, " warn "), 2);
    free(text);
}

/* test_reload - a 10-day certificate in place of the 30-day one: days, notAfter, reloads. */
static void test_reload(void **state)
{
    struct fixture *f = *state;
    char err[512];
    assert_true(testlib_pki_node(&f->pki, 2, 10));
    assert_int_equal(cluster_tls_reload(f->tls, err, sizeof(err)), 0);
    time_t begin = testlib_pki_time(&f->pki, "node-2.pem", false);
    time_t end = testlib_pki_time(&f->pki, "node-2.pem", true);
    assert_int_equal(end - begin, 10L * 86400);

    Hamr__ClusterTlsStatus s;
    char ident[PKI_STATUS_IDENT_MAX];
    pki_status_fill(f->tls, begin, &s, ident, sizeof(ident));
    assert_int_equal(s.cert_days_left, 10);
    assert_int_equal(s.cert_not_after, end);
    assert_int_equal(s.reloads, 1);

    struct metrics *m = NULL;
    assert_int_equal(metrics_hamr_new("0.1.0", &m), 0);
    pki_status_metrics(f->tls, begin, m);
    char *text = testlib_metrics_text(m);
    has_line(text, "hamr_cluster_tls_days_left{cert=\"node\"} 10");
    has_line(text, "hamr_cluster_tls_reloads_total 1");
    free(text);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fill),    cmocka_unit_test(test_describe),
        cmocka_unit_test(test_metrics), cmocka_unit_test(test_log),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
