/*
 * test_queue_dsn.c - the DSN builder: the message parses as a
 * multipart/report with the RFC 3464 fields, lines are CRLF and at most 998
 * octets, only the original headers are returned, Status codes are derived
 * as specified, and hostile text cannot break the structure.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "queue/queue.h"
#include "queue/queue_dsn.h"
#include "queue_fixture.h"

#define T0 1700000000000ull /* Tue, 14 Nov 2023 22:13:20 +0000 */

/* ------------------------------------------------------------------------
 * A small MIME reader for the checks
 * ------------------------------------------------------------------------ */

struct dsn_parsed {
    char *all;
    char *headers; /* the top header block, unfolded lines joined by "\n" */
    char *boundary;
    size_t n_parts;
    char *part_headers[8];
    char *part_body[8];
    bool closed; /* the closing boundary was found */
};

/* check_lines - CRLF only, no line over 998 octets, no NUL. */
static void check_lines(const uint8_t *p, size_t len)
{
    size_t line = 0;
    for (size_t i = 0; i < len; i++) {
        assert_int_not_equal(p[i], 0);
        if (p[i] == '\r') {
            assert_true(i + 1 < len && p[i + 1] == '\n');
            if (line > QUEUE_DSN_LINE_MAX)
                fail_msg("line of %zu octets at %zu", line, i);
            line = 0;
            i++;
            continue;
        }
        assert_int_not_equal(p[i], '\n');
        line++;
    }
    /* The message ends with a line end. */
    assert_int_equal(line, 0);
}

/* unfold - header block lines with continuations joined, one field per "\n" line. */
static char *unfold(const char *block, size_t len)
{
    char *out = calloc(1, len + 2);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (block[i] == '\r' && i + 2 < len && block[i + 1] == '\n' &&
            (block[i + 2] == ' ' || block[i + 2] == '\t')) {
            i += 2;
            out[k++] = ' ';
            continue;
        }
        if (block[i] == '\r')
            continue;
        out[k++] = block[i];
    }
    out[k] = '\0';
    return out;
}

/* field - the value of a header field in an unfolded block (first match), or NULL. */
static const char *field(const char *block, const char *name, char *out, size_t outlen)
{
    size_t n = strlen(name);
    for (const char *p = block; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            const char *e = strchr(v, '\n');
            size_t l = e ? (size_t)(e - v) : strlen(v);
            snprintf(out, outlen, "%.*s", (int)l, v);
            return out;
        }
    }
    return NULL;
}

/* parse - split a DSN into its header block and MIME parts. */
static void parse(const uint8_t *buf, size_t len, struct dsn_parsed *d)
{
    memset(d, 0, sizeof(*d));
    check_lines(buf, len);
    d->all = strndup((const char *)buf, len);
    assert_int_equal(strlen(d->all), len);
    char *sep = strstr(d->all, "\r\n\r\n");
    assert_non_null(sep);
    d->headers = unfold(d->all, (size_t)(sep - d->all) + 2);
    char ct[1024];
    assert_non_null(field(d->headers, "Content-Type", ct, sizeof(ct)));
    assert_non_null(strstr(ct, "multipart/report"));
    assert_non_null(strstr(ct, "report-type=delivery-status"));
    char *b = strstr(ct, "boundary=\"");
    assert_non_null(b);
    b += 10;
    char *e = strchr(b, '"');
    assert_non_null(e);
    d->boundary = strndup(b, (size_t)(e - b));
    assert_true(strlen(d->boundary) >= 1 && strlen(d->boundary) <= 70);

    char delim[128];
    snprintf(delim, sizeof(delim), "\r\n--%s", d->boundary);
    char *p = strstr(sep, delim);
    assert_non_null(p);
    for (;;) {
        p += strlen(delim);
        if (strncmp(p, "--\r\n", 4) == 0) {
            d->closed = true;
            assert_string_equal(p + 4, "");
            break;
        }
        assert_memory_equal(p, "\r\n", 2);
        p += 2;
        char *next = strstr(p, delim);
        assert_non_null(next);
        assert_true(d->n_parts < 8);
        char *hsep = strstr(p, "\r\n\r\n");
        assert_true(hsep != NULL && hsep < next + 2);
        d->part_headers[d->n_parts] = unfold(p, (size_t)(hsep - p) + 2);
        /* The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1). */
        char *body = hsep + 4;
        d->part_body[d->n_parts] = strndup(body, next >= body ? (size_t)(next - body) : 0);
        if (next < body)
            d->part_body[d->n_parts][0] = '\0';
        d->n_parts++;
        p = next;
    }
}

static void parsed_free(struct dsn_parsed *d)
{
    free(d->all);
    free(d->headers);
    free(d->boundary);
    for (size_t i = 0; i < d->n_parts; i++) {
        free(d->part_headers[i]);
        free(d->part_body[i]);
    }
}

/* build - run queue_dsn_build with a message whose body is body, asserting success. */
static void build(const char *body,
                  const struct queue_dsn_rcpt *r,
                  size_t n,
                  const char *reporter,
                  uint64_t ts,
                  uint8_t **out,
                  size_t *len,
                  bool *eight)
{
    struct queue_msg m;
    memset(&m, 0, sizeof(m));
    m.id = "M";
    m.sender = "a@example.org";
    m.body = (uint8_t *)body;
    m.body_len = strlen(body);
    m.received_at_ms = T0 - 3600 * 1000;
    assert_int_equal(queue_dsn_build(&m, r, n, reporter, ts, "M-B0", out, len, eight), 0);
}

/* per_rcpt - the per-recipient group number i (0-based) of a delivery-status part. */
static char *per_rcpt(const char *report, size_t i)
{
    const char *p = report;
    for (size_t k = 0; k <= i; k++) {
        p = strstr(p, "\n\n");
        if (p == NULL)
            return NULL;
        p += 2;
    }
    const char *e = strstr(p, "\n\n");
    return strndup(p, e ? (size_t)(e - p) : strlen(p));
}

/* ------------------------------------------------------------------------ */

static void test_dsn_structure(void **state)
{
    (void)state;
    struct queue_dsn_rcpt r = {.addr = "bob@example.net",
                               .state = QUEUE_RCPT_BOUNCED,
                               .smtp_code = 550,
                               .diagnostic = "5.1.1 <bob@example.net>: no such user",
                               .remote = "mx.example.net[192.0.2.5]:25"};
    uint8_t *buf;
    size_t len;
    bool eight;
    build(fx_default_body, &r, 1, "mx.hamr.test", T0, &buf, &len, &eight);
    assert_false(eight);
    struct dsn_parsed d;
    parse(buf, len, &d);
    char v[1024];
    static const struct {
        const char *name, *want;
    } hdrs[] = {
        {"From", "Mail Delivery System <MAILER-DAEMON@mx.hamr.test>"},
        {"To", "<a@example.org>"},
        {"Subject", "Undelivered Mail Returned to Sender"},
        {"Date", "Tue, 14 Nov 2023 22:13:20 +0000"},
        {"Message-ID", "<M-B0@mx.hamr.test>"},
        {"Auto-Submitted", "auto-replied"},
        {"MIME-Version", "1.0"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(hdrs); i++) {
        if (field(d.headers, hdrs[i].name, v, sizeof(v)) == NULL)
            fail_msg("no %s", hdrs[i].name);
        assert_string_equal(v, hdrs[i].want);
    }
    assert_int_equal(d.n_parts, 3);
    assert_true(d.closed);
    static const char *const types[] = {"text/plain; charset=us-ascii", "message/delivery-status",
                                        "text/rfc822-headers"};
    for (size_t i = 0; i < 3; i++) {
        assert_non_null(field(d.part_headers[i], "Content-Type", v, sizeof(v)));
        assert_string_equal(v, types[i]);
        /* The boundary occurs in no part. */
        assert_null(strstr(d.part_body[i], d.boundary));
        assert_null(field(d.part_headers[i], "Content-Transfer-Encoding", v, sizeof(v)));
    }
    /* Part 1: the recipient and the reason in words. */
    assert_non_null(strstr(d.part_body[0],
                           "<bob@example.net>: host mx.example.net[192.0.2.5]:25 "
                           "said: 550 5.1.1 <bob@example.net>: no such user"));
    assert_non_null(strstr(d.part_body[0], "mx.hamr.test"));
    /* Part 2: per-message fields, then one per-recipient group. */
    char *report = unfold(d.part_body[1], strlen(d.part_body[1]));
    assert_non_null(field(report, "Reporting-MTA", v, sizeof(v)));
    assert_string_equal(v, "dns; mx.hamr.test");
    assert_non_null(field(report, "Arrival-Date", v, sizeof(v)));
    assert_string_equal(v, "Tue, 14 Nov 2023 21:13:20 +0000");
    assert_non_null(field(report, "X-Hamr-Queue-ID", v, sizeof(v)));
    assert_string_equal(v, "M");
    char *g = per_rcpt(report, 0);
    assert_non_null(g);
    static const struct {
        const char *name, *want;
    } rf[] = {
        {"Final-Recipient", "rfc822; bob@example.net"},
        {"Action", "failed"},
        {"Status", "5.1.1"},
        {"Remote-MTA", "dns; mx.example.net[192.0.2.5]:25"},
        {"Diagnostic-Code", "smtp; 550 5.1.1 <bob@example.net>: no such user"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(rf); i++) {
        if (field(g, rf[i].name, v, sizeof(v)) == NULL)
            fail_msg("no %s", rf[i].name);
        assert_string_equal(v, rf[i].want);
    }
    /* The per-message group ends at the first empty line. */
    char *pm = strndup(report, (size_t)(strstr(report, "\n\n") - report));
    assert_null(field(pm, "Final-Recipient", v, sizeof(v)));
    assert_non_null(field(pm, "Reporting-MTA", v, sizeof(v)));
    free(pm);
    free(g);
    assert_null(per_rcpt(report, 1));
    free(report);
    /* Part 3: exactly the original header block, not the body. */
    assert_string_equal(d.part_body[2],
                        "Received: from client.test by mx.hamr.test\r\n"
                        "From: <a@example.org>\r\n"
                        "Subject: hello\r\n");
    assert_null(strstr(d.all, "BODY-LINE-MARKER"));
    parsed_free(&d);
    free(buf);
}

/* Table: the Status of a failed recipient. */
static void test_dsn_status_table(void **state)
{
    (void)state;
    static const struct {
        enum queue_rcpt_state st;
        const char *diag;
        const char *want;
    } cases[] = {
        {QUEUE_RCPT_BOUNCED, "5.1.1 user unknown", "5.1.1"},
        {QUEUE_RCPT_BOUNCED, "  5.7.1 relay denied", "5.7.1"},
        {QUEUE_RCPT_BOUNCED, "550 5.2.2 mailbox full", "5.2.2"},
        {QUEUE_RCPT_BOUNCED, "550-5.2.2 mailbox full", "5.2.2"},
        {QUEUE_RCPT_BOUNCED, "4.2.2 over quota", "5.2.2"},
        {QUEUE_RCPT_BOUNCED, "5.123.456 long", "5.123.456"},
        {QUEUE_RCPT_BOUNCED, "5.1.1", "5.1.1"},
        {QUEUE_RCPT_BOUNCED, "5.1.1; x", "5.1.1"},
        {QUEUE_RCPT_BOUNCED, "5.1234.1 too long", "5.0.0"},
        {QUEUE_RCPT_BOUNCED, "5.1.1x", "5.0.0"},
        {QUEUE_RCPT_BOUNCED, "3.1.1 bad class", "5.0.0"},
        {QUEUE_RCPT_BOUNCED, "user unknown 5.1.1", "5.0.0"},
        {QUEUE_RCPT_BOUNCED, "5.1 short", "5.0.0"},
        {QUEUE_RCPT_BOUNCED, "", "5.0.0"},
        {QUEUE_RCPT_BOUNCED, NULL, "5.0.0"},
        {QUEUE_RCPT_EXPIRED, "5.1.1 user unknown", "4.4.7"},
        {QUEUE_RCPT_EXPIRED, NULL, "4.4.7"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue_dsn_rcpt r = {
            .addr = "x@y", .state = cases[i].st, .smtp_code = 550, .diagnostic = cases[i].diag};
        char out[QUEUE_DSN_STATUS_MAX];
        queue_dsn_status(&r, out);
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("case %zu (%s): %s, want %s", i, cases[i].diag ? cases[i].diag : "NULL", out,
                     cases[i].want);
        /* The Status field of a built DSN agrees. */
        uint8_t *buf;
        size_t len;
        bool eight;
        build(fx_default_body, &r, 1, "h", T0, &buf, &len, &eight);
        char want[64];
        snprintf(want, sizeof(want), "\r\nStatus: %s\r\n", cases[i].want);
        char *s = strndup((const char *)buf, len);
        assert_non_null(strstr(s, want));
        free(s);
        free(buf);
    }
}

static void test_dsn_multiple_rcpts(void **state)
{
    (void)state;
    struct queue_dsn_rcpt r[] = {
        {.addr = "a@x.test",
         .state = QUEUE_RCPT_BOUNCED,
         .smtp_code = 550,
         .diagnostic = "5.1.1 no"},
        {.addr = "b@x.test",
         .state = QUEUE_RCPT_EXPIRED,
         .smtp_code = 0,
         .diagnostic = "connection timed out"},
        {.addr = "c@x.test", .state = QUEUE_RCPT_BOUNCED, .smtp_code = 0, .diagnostic = "no route"},
    };
    uint8_t *buf;
    size_t len;
    bool eight;
    build(fx_default_body, r, 3, "mx.hamr.test", T0, &buf, &len, &eight);
    struct dsn_parsed d;
    parse(buf, len, &d);
    char v[1024];
    assert_non_null(field(d.headers, "Subject", v, sizeof(v)));
    assert_string_equal(v, "Undelivered Mail Returned to Sender");
    char *report = unfold(d.part_body[1], strlen(d.part_body[1]));
    static const struct {
        const char *rcpt, *status;
        bool diag;
    } want[] = {{"rfc822; a@x.test", "5.1.1", true},
                {"rfc822; b@x.test", "4.4.7", false},
                {"rfc822; c@x.test", "5.0.0", false}};
    for (size_t i = 0; i < 3; i++) {
        char *g = per_rcpt(report, i);
        assert_non_null(g);
        assert_non_null(field(g, "Final-Recipient", v, sizeof(v)));
        assert_string_equal(v, want[i].rcpt);
        assert_non_null(field(g, "Status", v, sizeof(v)));
        assert_string_equal(v, want[i].status);
        assert_int_equal(field(g, "Diagnostic-Code", v, sizeof(v)) != NULL, want[i].diag);
        assert_null(field(g, "Remote-MTA", v, sizeof(v)));
        free(g);
    }
    assert_null(per_rcpt(report, 3));
    assert_non_null(strstr(d.part_body[0],
                           "<b@x.test>: delivery time expired; last error: "
                           "connection timed out"));
    assert_non_null(strstr(d.part_body[0], "<c@x.test>: no route"));
    free(report);
    parsed_free(&d);
    free(buf);

    /* All expired: the subject says so. */
    build(fx_default_body, &r[1], 1, "mx.hamr.test", T0, &buf, &len, &eight);
    parse(buf, len, &d);
    assert_non_null(field(d.headers, "Subject", v, sizeof(v)));
    assert_string_equal(v, "Undelivered Mail Returned to Sender: delivery time expired");
    parsed_free(&d);
    free(buf);
}

/* Hostile text cannot add header lines or MIME parts, or make long lines. */
static void test_dsn_hostile_input(void **state)
{
    (void)state;
    char huge[5000];
    memset(huge, 'd', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    char long_hdr[3100];
    memcpy(long_hdr, "X-Long: ", 8);
    memset(long_hdr + 8, 'h', 3000);
    memcpy(long_hdr + 3008, "\r\n", 3);
    char body[4096];
    snprintf(body, sizeof(body),
             "Subject: hi\nX-Bare-LF: 1\rX-Bare-CR: 1\r\n%s--=_hamr_fake\r\n\r\nbody text\r\n",
             long_hdr);
    struct queue_dsn_rcpt r[] = {
        {.addr = "a@x\r\nX-Injected: addr",
         .state = QUEUE_RCPT_BOUNCED,
         .smtp_code = 550,
         .diagnostic = "5.1.1 bad\r\n\r\n--=_hamr_fake\r\nX-Injected: diag\x7f\xff"},
        {.addr = "b@x",
         .state = QUEUE_RCPT_BOUNCED,
         .smtp_code = 554,
         .diagnostic = huge,
         .remote = "evil\r\nX-Injected: remote"},
    };
    uint8_t *buf;
    size_t len;
    bool eight;
    build(body, r, 2, "bad host\r\nX-Injected: reporter", T0, &buf, &len, &eight);
    struct dsn_parsed d;
    parse(buf, len, &d); /* checks CRLF only and the line lengths */
    assert_int_equal(d.n_parts, 3);
    assert_true(d.closed);
    assert_null(strstr(d.all, "\r\nX-Injected"));
    assert_non_null(strstr(d.all, "X-Injected")); /* still visible as text */
    char v[1024];
    assert_non_null(field(d.headers, "From", v, sizeof(v)));
    assert_string_equal(v, "Mail Delivery System <MAILER-DAEMON@bad_host__X-Injected__reporter>");
    /* The attached headers got CRLF line ends; the long line was cut at 998. */
    assert_non_null(strstr(d.part_body[2], "Subject: hi\r\nX-Bare-LF: 1\r\nX-Bare-CR: 1\r\n"));
    const char *lh = strstr(d.part_body[2], "X-Long: ");
    assert_non_null(lh);
    assert_int_equal(strcspn(lh, "\r"), QUEUE_DSN_LINE_MAX);
    assert_null(strstr(d.all, "body text"));
    /* Non-ASCII in a diagnostic is replaced. */
    assert_null(strchr(d.part_body[1], 0x7f));
    assert_false(eight);
    parsed_free(&d);
    free(buf);
}

/* Table: what the header block is. */
static void test_dsn_header_block(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *body;
        const char *want;
    } cases[] = {
        {"normal", "A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n"},
        {"no body", "A: 1\r\nB: 2\r\n", "A: 1\r\nB: 2\r\n"},
        {"no final line end", "A: 1\r\nB: 2", "A: 1\r\nB: 2\r\n"},
        {"folded header", "A: 1\r\n  more\r\n\r\nx\r\n", "A: 1\r\n  more\r\n"},
        {"bare LF blank line", "A: 1\n\nbody\n", "A: 1\r\n"},
        {"starts with a blank line", "\r\nbody\r\n", ""},
        {"empty", "", ""},
    };
    struct queue_dsn_rcpt r = {.addr = "x@y", .state = QUEUE_RCPT_BOUNCED};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        uint8_t *buf;
        size_t len;
        bool eight;
        build(cases[i].body, &r, 1, "h", T0, &buf, &len, &eight);
        struct dsn_parsed d;
        parse(buf, len, &d);
        assert_int_equal(d.n_parts, 3);
        if (strcmp(d.part_body[2], cases[i].want) != 0)
            fail_msg("%s: got [%s]", cases[i].label, d.part_body[2]);
        parsed_free(&d);
        free(buf);
    }

    /* A header block over the limit is cut at a line end. */
    size_t n_lines = QUEUE_DSN_HEADERS_MAX / 100 + 50;
    char *big = malloc(n_lines * 100 + 64);
    size_t k = 0;
    for (size_t i = 0; i < n_lines; i++) {
        k += (size_t)snprintf(big + k, 100, "X-H%06zu: ", i);
        memset(big + k, 'v', 100 - 13);
        k += 100 - 13;
        big[k++] = '\r';
        big[k++] = '\n';
    }
    memcpy(big + k, "\r\nTHE-BODY\r\n", 13);
    uint8_t *buf;
    size_t len;
    bool eight;
    build(big, &r, 1, "h", T0, &buf, &len, &eight);
    struct dsn_parsed d;
    parse(buf, len, &d);
    size_t got = strlen(d.part_body[2]);
    assert_true(got <= QUEUE_DSN_HEADERS_MAX);
    assert_true(got > QUEUE_DSN_HEADERS_MAX - 100);
    assert_int_equal(got % 100, 0);
    assert_memory_equal(d.part_body[2], big, got);
    assert_null(strstr(d.all, "THE-BODY"));
    parsed_free(&d);
    free(buf);
    free(big);
}

static void test_dsn_8bit_headers(void **state)
{
    (void)state;
    struct queue_dsn_rcpt r = {.addr = "x@y", .state = QUEUE_RCPT_BOUNCED};
    uint8_t *buf;
    size_t len;
    bool eight;
    build("Subject: caf\xc3\xa9\r\n\r\n\xff body\r\n", &r, 1, "h", T0, &buf, &len, &eight);
    assert_true(eight);
    struct dsn_parsed d;
    parse(buf, len, &d);
    char v[256];
    assert_non_null(field(d.part_headers[2], "Content-Transfer-Encoding", v, sizeof(v)));
    assert_string_equal(v, "8bit");
    assert_string_equal(d.part_body[2], "Subject: caf\xc3\xa9\r\n");
    parsed_free(&d);
    free(buf);
    /* 8-bit bytes only in the body do not count: the body is not returned. */
    build("Subject: plain\r\n\r\n\xff body\r\n", &r, 1, "h", T0, &buf, &len, &eight);
    assert_false(eight);
    free(buf);
}

static void test_dsn_deterministic(void **state)
{
    (void)state;
    struct queue_dsn_rcpt r = {
        .addr = "x@y", .state = QUEUE_RCPT_BOUNCED, .smtp_code = 550, .diagnostic = "5.1.1 no"};
    uint8_t *a, *b, *c;
    size_t la, lb, lc;
    bool eight;
    build(fx_default_body, &r, 1, "h.test", T0, &a, &la, &eight);
    build(fx_default_body, &r, 1, "h.test", T0, &b, &lb, &eight);
    build(fx_default_body, &r, 1, "h.test", T0 + 1000, &c, &lc, &eight);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    assert_true(la != lc || memcmp(a, c, la) != 0);
    free(a);
    free(b);
    free(c);
}

static void test_dsn_date_table(void **state)
{
    (void)state;
    static const struct {
        uint64_t ms;
        const char *want;
    } cases[] = {
        {0, "Thu, 01 Jan 1970 00:00:00 +0000"},
        {999, "Thu, 01 Jan 1970 00:00:00 +0000"},
        {T0, "Tue, 14 Nov 2023 22:13:20 +0000"},
        {951782400000ull, "Tue, 29 Feb 2000 00:00:00 +0000"},
        {4102444799000ull, "Thu, 31 Dec 2099 23:59:59 +0000"},
        {UINT64_MAX, "Thu, 01 Jan 1970 00:00:00 +0000"}, /* out of range: the epoch */
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        char out[64];
        queue_dsn_date(cases[i].ms, out, sizeof(out));
        assert_string_equal(out, cases[i].want);
    }
}

static void test_dsn_invalid(void **state)
{
    (void)state;
    struct queue_msg m;
    memset(&m, 0, sizeof(m));
    m.sender = (char *)"a@b";
    struct queue_dsn_rcpt r = {.addr = "x@y", .state = QUEUE_RCPT_BOUNCED};
    uint8_t *out = NULL;
    size_t len;
    bool eight;
    assert_int_equal(queue_dsn_build(&m, &r, 0, "h", T0, "id", &out, &len, &eight), HAMR_EINVAL);
    assert_int_equal(queue_dsn_build(&m, NULL, 1, "h", T0, "id", &out, &len, &eight), HAMR_EINVAL);
    assert_null(out);
    /* No reporter: a placeholder host, still well formed. */
    assert_int_equal(queue_dsn_build(&m, &r, 1, NULL, T0, "id", &out, &len, &eight), 0);
    struct dsn_parsed d;
    parse(out, len, &d);
    char v[256];
    assert_non_null(field(d.headers, "Message-ID", v, sizeof(v)));
    assert_string_equal(v, "<id@localhost>");
    parsed_free(&d);
    free(out);
}

/* The DSN the queue enqueues is a parseable report about the right message. */
static void test_dsn_via_queue(void **state)
{
    (void)state;
    struct queue *q = queue_new();
    struct fx_enq e = {.id = "QID7",
                       .sender = "alice@example.org",
                       .rcpts = {"bob@example.net", "carol@example.net"}};
    fx_enqueue(q, T0, &e);
    struct fx_outcome o = {.id = "QID7",
                           .n = 2,
                           .res = {{0, HAMR__RCPT_RESULT__STATUS__BOUNCED, 550, "5.1.1 unknown"},
                                   {1, HAMR__RCPT_RESULT__STATUS__EXPIRED, 451, "4.4.1 slow"}},
                           .reporter = "relay1.hamr.test",
                           .remote = "[192.0.2.9]:25"};
    assert_int_equal(fx_outcome(q, T0 + 60000, &o).dsn_generated, 1);
    const struct queue_msg *m = queue_find(q, "QID7-B0");
    assert_non_null(m);
    struct dsn_parsed d;
    parse(queue_msg_body(m), m->body_len, &d);
    char v[256];
    assert_non_null(field(d.headers, "To", v, sizeof(v)));
    assert_string_equal(v, "<alice@example.org>");
    assert_non_null(field(d.headers, "Message-ID", v, sizeof(v)));
    assert_string_equal(v, "<QID7-B0@relay1.hamr.test>");
    assert_non_null(field(d.headers, "Date", v, sizeof(v)));
    assert_string_equal(v, "Tue, 14 Nov 2023 22:14:20 +0000");
    char *report = unfold(d.part_body[1], strlen(d.part_body[1]));
    assert_non_null(field(report, "X-Hamr-Queue-ID", v, sizeof(v)));
    assert_string_equal(v, "QID7");
    assert_non_null(field(report, "Arrival-Date", v, sizeof(v)));
    assert_string_equal(v, "Tue, 14 Nov 2023 22:13:20 +0000");
    char *g1 = per_rcpt(report, 1);
    assert_non_null(field(g1, "Status", v, sizeof(v)));
    assert_string_equal(v, "4.4.7");
    assert_non_null(field(g1, "Diagnostic-Code", v, sizeof(v)));
    assert_string_equal(v, "smtp; 451 4.4.1 slow");
    free(g1);
    free(report);
    parsed_free(&d);
    queue_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dsn_structure),      cmocka_unit_test(test_dsn_status_table),
        cmocka_unit_test(test_dsn_multiple_rcpts), cmocka_unit_test(test_dsn_hostile_input),
        cmocka_unit_test(test_dsn_header_block),   cmocka_unit_test(test_dsn_8bit_headers),
        cmocka_unit_test(test_dsn_deterministic),  cmocka_unit_test(test_dsn_date_table),
        cmocka_unit_test(test_dsn_invalid),        cmocka_unit_test(test_dsn_via_queue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
