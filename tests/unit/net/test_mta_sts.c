/*
 * test_mta_sts.c - net/mta_sts: the TXT record and policy parsers and MX
 * matching as tables (pure), and the fetch end to end on one loop per
 * test: net/dns against the fake DNS server of tests/lib/testlib_dns, and
 * a small HTTPS server of this file on 127.0.0.1 (tls_stream, server
 * side) with certificates made per run for mta-sts.example.test by a
 * throw-away CA (tls_testcert.h).
 *
 * Waits run the loop until a condition holds, bounded by testlib_loop's
 * guard; the only real-time waits are the fetch timeout under test
 * (300 ms) and the bounded idling after a cancel, where nothing must
 * happen. A 5 ms tick makes every UV_RUN_ONCE turn return (test_dns.c).
 * Teardown frees the fetcher, closes the resolver and the servers, and
 * fails if the loop still has a handle.
 *
 * Covers: policies with CRLF, LF, no final line end, extra spaces and
 * unknown keys; missing or doubled version, mode, max_age; bad mode and
 * version; max_age bounds; too many mx; bad patterns; control octets; the
 * size bound. TXT records: fields, spaces, extensions, ids, other kinds.
 * MX matching: exact, case, trailing dot, wildcard of one label only.
 * Fetch: OK (Content-Length, chunked, read to close; the request's line
 * and Host), a second address tried after a refused one, unchanged id
 * (no HTTPS), no TXT (NXDOMAIN, not STS, two STS records, malformed) ->
 * NONE, SERVFAIL -> TEMPFAIL, no address -> FAILED, a certificate for
 * another name or of another CA -> FAILED, HTTP 404 and 301 -> FAILED
 * (not followed), text/html -> FAILED, a body too large (declared and
 * read) -> FAILED, a policy that does not parse -> FAILED, a server that
 * never answers -> FAILED after the timeout, cancel (during DNS and
 * during TLS: callback never runs), sts_free with fetches pending
 * (TEMPFAIL shutdown once, from inside; sts_fetch refused in there), bad
 * domains refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "net/dns.h"
#include "net/mta_sts.h"
#include "net/tls_stream.h"
#include "tests/lib/testlib_dns.h"
#include "tests/lib/testlib_loop.h"
#include "tls_testcert.h"

#define TEST_GUARD_MS 10000
#define TEST_TURNS 100000
#define TEST_CONNS_MAX 8

/* Parsers. */

/* policy_case - one policy text and what sts_policy_parse must make of it. */
struct policy_case {
    const char *label;
    const char *text;
    int want_rc;
    const char *want_why; /* a part of why (refused), or NULL */
    enum sts_mode mode;
    uint32_t max_age;
    size_t n_mx;
    const char *mx0, *mx1;
};

static const struct policy_case policy_cases[] = {
    {"rfc example CRLF",
     "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
     "mx: backupmx.example.com\r\nmax_age: 604800\r\n",
     0, NULL, STS_MODE_ENFORCE, 604800, 3, "mail.example.com", "*.example.net"},
    {"LF only, no final line end",
     "version: STSv1\nmode: testing\nmx: MX.Example.COM\nmax_age: 86400", 0, NULL, STS_MODE_TESTING,
     86400, 1, "mx.example.com", NULL},
    {"spaces and tabs, empty lines, unknown keys",
     "version:STSv1  \r\n\r\nmode:\t enforce\t\nfoo_bar.x-1: some value here\nmx:   a.example\n"
     "max_age: 0\n\n",
     0, NULL, STS_MODE_ENFORCE, 0, 1, "a.example", NULL},
    {"mode none without mx", "version: STSv1\nmode: none\nmax_age: 31557600\n", 0, NULL,
     STS_MODE_NONE, 31557600, 0, NULL, NULL},
    {"version anywhere", "mode: enforce\nmx: a.example\nmax_age: 1\nversion: STSv1\n", 0, NULL,
     STS_MODE_ENFORCE, 1, 1, "a.example", NULL},
    {"no version", "mode: enforce\nmx: a.example\nmax_age: 1\n", HAMR_EINVAL, "no version",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"no mode", "version: STSv1\nmx: a.example\nmax_age: 1\n", HAMR_EINVAL, "no mode",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"no max_age", "version: STSv1\nmode: enforce\nmx: a.example\n", HAMR_EINVAL, "no max_age",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"enforce without mx", "version: STSv1\nmode: enforce\nmax_age: 1\n", HAMR_EINVAL, "without mx",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"bad version", "version: STSv2\nmode: none\nmax_age: 1\n", HAMR_EINVAL, "unsupported",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"version case", "version: stsv1\nmode: none\nmax_age: 1\n", HAMR_EINVAL, "unsupported",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"bad mode", "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", HAMR_EINVAL,
     "line 2: mode \"strict\" unknown", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"mode case", "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", HAMR_EINVAL,
     "unknown", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"two modes", "version: STSv1\nmode: none\nmode: enforce\nmx: a.example\nmax_age: 1\n",
     HAMR_EINVAL, "mode given twice", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"max_age over", "version: STSv1\nmode: none\nmax_age: 31557601\n", HAMR_EINVAL, "over",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"max_age 11 digits", "version: STSv1\nmode: none\nmax_age: 00000000001\n", HAMR_EINVAL,
     "1 to 10 digits", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"max_age negative", "version: STSv1\nmode: none\nmax_age: -1\n", HAMR_EINVAL, "not a number",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"max_age empty", "version: STSv1\nmode: none\nmax_age:\n", HAMR_EINVAL, "1 to 10 digits",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"wildcard twice", "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", HAMR_EINVAL,
     "mx \"*.*.example\"", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"wildcard inside a label", "version: STSv1\nmode: enforce\nmx: a*.example\nmax_age: 1\n",
     HAMR_EINVAL, "not a host name", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"wildcard alone", "version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", HAMR_EINVAL,
     "not a host name", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"wildcard not left-most", "version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n",
     HAMR_EINVAL, "not a host name", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"empty label", "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", HAMR_EINVAL,
     "not a host name", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"trailing dot", "version: STSv1\nmode: enforce\nmx: a.example.\nmax_age: 1\n", HAMR_EINVAL,
     "not a host name", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"hyphen first", "version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n", HAMR_EINVAL,
     "not a host name", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"space inside mx", "version: STSv1\nmode: enforce\nmx: a .example\nmax_age: 1\n", HAMR_EINVAL,
     "not a host name", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"no colon", "version: STSv1\nmode enforce\nmax_age: 1\n", HAMR_EINVAL,
     "line 2:", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"space before colon", "version : STSv1\nmode: none\nmax_age: 1\n", HAMR_EINVAL,
     "key \"version \" malformed", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"bare CR", "version: STSv1\rmode: none\nmax_age: 1\n", HAMR_EINVAL, "control octet 0x0d",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"unknown key without value", "version: STSv1\nmode: none\nmax_age: 1\nfoo:\n", HAMR_EINVAL,
     "no value", STS_MODE_NONE, 0, 0, NULL, NULL},
    {"leading space", " version: STSv1\nmode: none\nmax_age: 1\n", HAMR_EINVAL, "malformed",
     STS_MODE_NONE, 0, 0, NULL, NULL},
    {"html", "<html><body>hello</body></html>\n", HAMR_EINVAL, "line 1:", STS_MODE_NONE, 0, 0, NULL,
     NULL},
};

/* policy_table - every policy_case. */
static void policy_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(policy_cases); i++) {
        const struct policy_case *c = &policy_cases[i];
        struct sts_policy p;
        char why[160] = "unset";
        int rc = sts_policy_parse(c->text, strlen(c->text), &p, why, sizeof(why));
        if (rc != c->want_rc)
            fail_msg("%s: rc %d, want %d (why \"%s\")", c->label, rc, c->want_rc, why);
        if (rc != 0) {
            if (c->want_why != NULL && strstr(why, c->want_why) == NULL)
                fail_msg("%s: why \"%s\" lacks \"%s\"", c->label, why, c->want_why);
            assert_int_equal(p.n_mx, 0); /* zeroed */
            continue;
        }
        assert_string_equal(why, "");
        if (p.mode != c->mode || p.max_age != c->max_age || p.n_mx != c->n_mx)
            fail_msg("%s: mode %d max_age %u n_mx %zu", c->label, (int)p.mode, p.max_age, p.n_mx);
        if (c->mx0 != NULL)
            assert_string_equal(p.mx[0], c->mx0);
        if (c->mx1 != NULL)
            assert_string_equal(p.mx[1], c->mx1);
    }
}

/* test_policy_text - "version, mode enforce, max_age" and n mx lines (pattern "mxI.example") into
 * buf. */
static size_t test_policy_text(char *buf, size_t cap, size_t n)
{
    size_t o = (size_t)snprintf(buf, cap, "version: STSv1\nmode: enforce\nmax_age: 86400\n");
    for (size_t i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "mx: mx%zu.example\n", i);
    assert_true(o < cap);
    return o;
}

/* policy_limits - STS_MX_MAX patterns, one more, a 253-octet name, 254, a body over the limit, a
 * NUL. */
static void policy_limits(void **state)
{
    (void)state;
    static char buf[STS_POLICY_MAX + 16];
    struct sts_policy p;
    char why[160];

    size_t n = test_policy_text(buf, sizeof(buf), STS_MX_MAX);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), 0);
    assert_int_equal(p.n_mx, STS_MX_MAX);
    n = test_policy_text(buf, sizeof(buf), STS_MX_MAX + 1);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), HAMR_EINVAL);
    assert_non_null(strstr(why, "more than 64 mx"));

    /* Host names: 253 octets in labels of 63 at most; one more octet is refused. */
    char host[300];
    size_t h = 0;
    while (h < 253) {
        size_t label = 253 - h >= 64 ? 63 : 253 - h;
        memset(host + h, 'a', label);
        h += label;
        if (h < 253)
            host[h++] = '.';
    }
    host[h] = '\0';
    assert_int_equal(strlen(host), 253);
    n = (size_t)snprintf(buf, sizeof(buf), "version: STSv1\nmode: enforce\nmax_age: 1\nmx: %s\n",
                         host);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), 0);
    assert_true(sts_mx_match(&p, host));
    n = (size_t)snprintf(buf, sizeof(buf), "version: STSv1\nmode: enforce\nmax_age: 1\nmx: a%s\n",
                         host);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), HAMR_EINVAL);
    /* "*." counts in the 253: "*." and a name of 251 fits, of 252 or 253 does not. */
    n = (size_t)snprintf(buf, sizeof(buf), "version: STSv1\nmode: enforce\nmax_age: 1\nmx: *.%s\n",
                         host + 2);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), 0);
    assert_int_equal(strlen(p.mx[0]), 253);
    n = (size_t)snprintf(buf, sizeof(buf), "version: STSv1\nmode: enforce\nmax_age: 1\nmx: *.%s\n",
                         host + 1);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), HAMR_EINVAL);
    n = (size_t)snprintf(buf, sizeof(buf), "version: STSv1\nmode: enforce\nmax_age: 1\nmx: *.%s\n",
                         host);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), HAMR_EINVAL);
    /* A label of 64. */
    memset(host, 'b', 64);
    memcpy(host + 64, ".example", 9);
    n = (size_t)snprintf(buf, sizeof(buf), "version: STSv1\nmode: enforce\nmax_age: 1\nmx: %s\n",
                         host);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), HAMR_EINVAL);

    /* The size bound, whatever the text. */
    n = test_policy_text(buf, sizeof(buf), 1);
    memset(buf + n, '\n', STS_POLICY_MAX + 1 - n);
    assert_int_equal(sts_policy_parse(buf, STS_POLICY_MAX, &p, why, sizeof(why)), 0);
    assert_int_equal(sts_policy_parse(buf, STS_POLICY_MAX + 1, &p, why, sizeof(why)), HAMR_EINVAL);
    assert_non_null(strstr(why, "over 65536"));

    /* A NUL inside, and a why of no room at all. */
    static const char nul[] = "version: STSv1\nmode: none\0\nmax_age: 1\n";
    assert_int_equal(sts_policy_parse(nul, sizeof(nul) - 1, &p, why, sizeof(why)), HAMR_EINVAL);
    assert_non_null(strstr(why, "control octet 0x00"));
    assert_int_equal(sts_policy_parse(nul, sizeof(nul) - 1, &p, NULL, 0), HAMR_EINVAL);
    /* A long bad value is quoted short, and escaped. */
    n = (size_t)snprintf(buf, sizeof(buf), "version: STSv1\nmode: %0200d\xff\nmax_age: 1\n", 7);
    assert_int_equal(sts_policy_parse(buf, n, &p, why, sizeof(why)), HAMR_EINVAL);
    assert_non_null(strstr(why, "...\" unknown"));
    assert_true(strlen(why) < 100);
}

/* txt_case - one TXT record and what sts_txt_parse must make of it. */
struct txt_case {
    const char *text;
    int want_rc;
    const char *id;
};

static const struct txt_case txt_cases[] = {
    {"v=STSv1; id=20160831085700Z;", 0, "20160831085700Z"},
    {"v=STSv1; id=20160831085700Z", 0, "20160831085700Z"},
    {"v=STSv1;id=abc", 0, "abc"},
    {"v=STSv1 ;\tid=abc ; ", 0, "abc"},
    {"v=STSv1; foo=bar; id=x1; a.b-c_d=!\"#:<>~", 0, "x1"},
    {"v=STSv1; id=12345678901234567890123456789012", 0, "12345678901234567890123456789012"},
    {"v=STSv1; id=123456789012345678901234567890123", HAMR_EINVAL, NULL}, /* 33 */
    {"v=STSv1; id=", HAMR_EINVAL, NULL},
    {"v=STSv1; id=ab-c", HAMR_EINVAL, NULL},
    {"v=STSv1; id=a; id=b", HAMR_EINVAL, NULL},
    {"v=STSv1;", HAMR_EINVAL, NULL},
    {"v=STSv1", HAMR_EINVAL, NULL},
    {"v=STSv1; foo=bar", HAMR_EINVAL, NULL},
    {"v=STSv1; id=abc;; ", HAMR_EINVAL, NULL},
    {"v=STSv1; id=abc x", HAMR_EINVAL, NULL},
    {"v=STSv1; foo=a=b; id=abc", HAMR_EINVAL, NULL},
    {"v=STSv1; _x=1; id=abc", HAMR_EINVAL, NULL}, /* ext-name starts with a letter or digit */
    {"v=STSv1; id abc", HAMR_EINVAL, NULL},
    {"v=STSv1x; id=abc", HAMR_ENOTFOUND, NULL},
    {"v=stsv1; id=abc", HAMR_ENOTFOUND, NULL},
    {"id=abc; v=STSv1", HAMR_ENOTFOUND, NULL},
    {" v=STSv1; id=abc", HAMR_ENOTFOUND, NULL},
    {"v=spf1 -all", HAMR_ENOTFOUND, NULL},
    {"", HAMR_ENOTFOUND, NULL},
};

/* txt_table - every txt_case; a short id buffer; a NUL inside. */
static void txt_table(void **state)
{
    (void)state;
    char id[STS_ID_MAX + 1];
    for (size_t i = 0; i < HAMR_ARRAY_LEN(txt_cases); i++) {
        const struct txt_case *c = &txt_cases[i];
        memset(id, 'X', sizeof(id));
        int rc = sts_txt_parse(c->text, strlen(c->text), id, sizeof(id));
        if (rc != c->want_rc)
            fail_msg("\"%s\": rc %d, want %d", c->text, rc, c->want_rc);
        if (rc == 0)
            assert_string_equal(id, c->id);
    }
    char small[8];
    assert_int_equal(sts_txt_parse("v=STSv1; id=abc", 15, small, sizeof(small)), HAMR_EINVAL);
    static const char nul[] = "v=STSv1; id=a\0b";
    assert_int_equal(sts_txt_parse(nul, sizeof(nul) - 1, id, sizeof(id)), HAMR_EINVAL);
    /* The length counts, not a NUL: a prefix of a valid record. */
    assert_int_equal(sts_txt_parse("v=STSv1; id=abcdef", 15, id, sizeof(id)), 0);
    assert_string_equal(id, "abc");
}

/* mx_match_table - RFC 8461 4.1 examples and the edges around them. */
static void mx_match_table(void **state)
{
    (void)state;
    static const char text[] =
        "version: STSv1\nmode: enforce\nmax_age: 1\nmx: mail.example.com\nmx: *.example.net\n";
    static const struct {
        const char *host;
        bool want;
    } cases[] = {
        {"mail.example.com", true},
        {"MAIL.Example.COM", true},
        {"mail.example.com.", true},
        {"mx.example.net", true},
        {"MX.EXAMPLE.NET.", true},
        {"a.b.example.net", false},
        {"example.net", false},
        {".example.net", false},
        {"xexample.net", false},
        {"mail.example.com.x", false},
        {"ail.example.com", false},
        {"", false},
        {".", false},
        {"mail.example.com..", false},
        {"*.example.net", true},
    };
    struct sts_policy p;
    char why[160];
    assert_int_equal(sts_policy_parse(text, sizeof(text) - 1, &p, why, sizeof(why)), 0);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++)
        if (sts_mx_match(&p, cases[i].host) != cases[i].want)
            fail_msg("\"%s\": want %d", cases[i].host, cases[i].want);
    /* No pattern, no match. */
    static const char none[] = "version: STSv1\nmode: none\nmax_age: 1\n";
    assert_int_equal(sts_policy_parse(none, sizeof(none) - 1, &p, why, sizeof(why)), 0);
    assert_false(sts_mx_match(&p, "mail.example.com"));
    assert_string_equal(sts_mode_name(STS_MODE_TESTING), "testing");
    assert_string_equal(sts_status_name(STS_UNCHANGED), "unchanged");
}

/* The fetch: certificates, the HTTPS server, DNS. */

/* The certificates of the run: ca.pem, a leaf for the policy hosts, one for another name, another
 * CA. */
static struct {
    char dir[64];
    char ca[128], other_ca[128];
    char good_cert[128], good_key[128], wrong_cert[128], wrong_key[128];
    SSL_CTX *good, *wrong;
} certs;

/* certs_leaf - a leaf for san signed by ca into cert (leaf then CA) and key. */
static bool certs_leaf(X509 *ca,
                       EVP_PKEY *ca_key,
                       const char *san,
                       long serial,
                       const char *cert,
                       const char *key)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *crt = k != NULL ? tls_testcert_make_san(k, "mta-sts", san, ca, ca_key, serial) : NULL;
    bool ok = crt != NULL && tls_testcert_write(cert, crt, ca, NULL) &&
              tls_testcert_write(key, NULL, NULL, k);
    X509_free(crt);
    EVP_PKEY_free(k);
    return ok;
}

/* certs_server_ctx - a server context on cert and key. */
static SSL_CTX *certs_server_ctx(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM), 1);
    return ctx;
}

/* group_setup - the certificates and server contexts, once for the run. */
static int group_setup(void **state)
{
    (void)state;
    snprintf(certs.dir, sizeof(certs.dir), "/tmp/hamr-sts-XXXXXX");
    if (mkdtemp(certs.dir) == NULL)
        return -1;
    snprintf(certs.ca, sizeof(certs.ca), "%s/ca.pem", certs.dir);
    snprintf(certs.other_ca, sizeof(certs.other_ca), "%s/other-ca.pem", certs.dir);
    snprintf(certs.good_cert, sizeof(certs.good_cert), "%s/good.pem", certs.dir);
    snprintf(certs.good_key, sizeof(certs.good_key), "%s/good.key", certs.dir);
    snprintf(certs.wrong_cert, sizeof(certs.wrong_cert), "%s/wrong.pem", certs.dir);
    snprintf(certs.wrong_key, sizeof(certs.wrong_key), "%s/wrong.key", certs.dir);
    EVP_PKEY *ca_key = EVP_EC_gen("P-256"), *other_key = EVP_EC_gen("P-256");
    X509 *ca = tls_testcert_make(ca_key, "hamr sts test CA", NULL, ca_key, 1);
    X509 *other = tls_testcert_make(other_key, "hamr other CA", NULL, other_key, 1);
    bool ok = ca != NULL && other != NULL && tls_testcert_write(certs.ca, ca, NULL, NULL) &&
              tls_testcert_write(certs.other_ca, other, NULL, NULL) &&
              certs_leaf(ca, ca_key, "DNS:mta-sts.example.test,DNS:mta-sts.multi.test", 2,
                         certs.good_cert, certs.good_key) &&
              certs_leaf(ca, ca_key, "DNS:mta-sts.other.test,IP:127.0.0.1", 3, certs.wrong_cert,
                         certs.wrong_key);
    X509_free(ca);
    X509_free(other);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(other_key);
    if (!ok)
        return -1;
    certs.good = certs_server_ctx(certs.good_cert, certs.good_key);
    certs.wrong = certs_server_ctx(certs.wrong_cert, certs.wrong_key);
    return 0;
}

/* group_teardown - contexts freed, files removed. */
static int group_teardown(void **state)
{
    (void)state;
    SSL_CTX_free(certs.good);
    SSL_CTX_free(certs.wrong);
    const char *files[] = {certs.ca,       certs.other_ca,   certs.good_cert,
                           certs.good_key, certs.wrong_cert, certs.wrong_key};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(files); i++)
        unlink(files[i]);
    rmdir(certs.dir);
    return 0;
}

struct srv;

/* srv_conn - one accepted connection of the test server. */
struct srv_conn {
    struct tls_stream_handle h;
    struct tls_stream *ts;
    struct srv *srv;
    char rbuf[4096];
    bool open, answered;
};

/* srv - the HTTPS server: every request gets the one canned response, then close_notify. */
struct srv {
    uv_tcp_t listen;
    bool listening;
    uint16_t port;
    SSL_CTX *ctx;     /* which certificate it shows */
    bool silent;      /* accept, then never read or write */
    const char *resp; /* the response, borrowed */
    size_t resp_len;
    unsigned accepted; /* connections */
    unsigned handshake_failed;
    char req[2048]; /* the last request's octets */
    size_t req_len;
    struct srv_conn conns[TEST_CONNS_MAX];
};

/* srv_closed_cb - a connection is closed: its stream freed, its slot free. */
static void srv_closed_cb(uv_handle_t *h)
{
    struct srv_conn *c = hamr_container_of((uv_tcp_t *)h, struct srv_conn, h.u.tcp);
    tls_stream_free(c->ts);
    c->ts = NULL;
    c->open = false;
}

/* srv_close - close c (once). */
static void srv_close(struct srv_conn *c)
{
    if (c->open && !uv_is_closing((uv_handle_t *)&c->h.u.tcp))
        uv_close((uv_handle_t *)&c->h.u.tcp, srv_closed_cb);
}

/* srv_shutdown_cb - close_notify and FIN sent: close. */
static void srv_shutdown_cb(void *arg, int status)
{
    (void)status;
    srv_close(arg);
}

/* srv_write_cb - the response went out: close_notify, then close. */
static void srv_write_cb(void *arg, int status)
{
    struct srv_conn *c = arg;
    if (status != 0 || tls_stream_shutdown(c->ts, srv_shutdown_cb, c) != 0)
        srv_close(c);
}

/* srv_alloc_cb - reads land in the connection's buffer. */
static void srv_alloc_cb(void *data, uv_buf_t *buf)
{
    struct srv_conn *c = data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* srv_read_cb - the request, to its empty line, then the response. */
static void srv_read_cb(void *data, ssize_t nread, const uv_buf_t *buf)
{
    struct srv_conn *c = data;
    struct srv *s = c->srv;
    if (nread < 0) {
        srv_close(c);
        return;
    }
    size_t n = (size_t)nread;
    if (n > sizeof(s->req) - 1 - s->req_len)
        n = sizeof(s->req) - 1 - s->req_len;
    memcpy(s->req + s->req_len, buf->base, n);
    s->req_len += n;
    s->req[s->req_len] = '\0';
    if (!c->answered && strstr(s->req, "\r\n\r\n") != NULL) {
        c->answered = true;
        if (tls_stream_write(c->ts, s->resp, s->resp_len, srv_write_cb, c) != 0)
            srv_close(c);
    }
}

/* srv_handshake_cb - a failed handshake (the client refused the certificate) is counted. */
static void srv_handshake_cb(void *data, int status)
{
    struct srv_conn *c = data;
    if (status != 0) {
        c->srv->handshake_failed++;
        srv_close(c);
    }
}

/* srv_connection_cb - accept into a free slot; TLS unless silent. */
static void srv_connection_cb(uv_stream_t *l, int status)
{
    struct srv *s = l->data;
    struct srv_conn *c = NULL;
    assert_int_equal(status, 0);
    for (size_t i = 0; i < TEST_CONNS_MAX && c == NULL; i++)
        if (!s->conns[i].open)
            c = &s->conns[i];
    assert_non_null(c);
    memset(c, 0, sizeof(*c));
    c->srv = s;
    assert_int_equal(uv_tcp_init(l->loop, &c->h.u.tcp), 0);
    c->open = true;
    assert_int_equal(uv_accept(l, &c->h.u.stream), 0);
    s->accepted++;
    s->req_len = 0;
    s->req[0] = '\0';
    if (s->silent)
        return;
    struct tls_stream_ops ops = {.data = c,
                                 .alloc_cb = srv_alloc_cb,
                                 .read_cb = srv_read_cb,
                                 .handshake_cb = srv_handshake_cb};
    assert_int_equal(tls_stream_init(&c->ts, &c->h, s->ctx, true, &ops), 0);
    assert_int_equal(tls_stream_read_start(c->ts), 0);
}

/* srv_start - listen on 127.0.0.1, an ephemeral port, showing the good certificate. */
static void srv_start(struct srv *s, uv_loop_t *loop)
{
    struct sockaddr_in sin;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    memset(s, 0, sizeof(*s));
    s->ctx = certs.good;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sin), 0);
    assert_int_equal(uv_tcp_init(loop, &s->listen), 0);
    s->listen.data = s;
    s->listening = true;
    assert_int_equal(uv_tcp_bind(&s->listen, (const struct sockaddr *)&sin, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listen, 8, srv_connection_cb), 0);
    assert_int_equal(uv_tcp_getsockname(&s->listen, (struct sockaddr *)&ss, &len), 0);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* srv_stop - the listener and every connection closed. */
static void srv_stop(struct srv *s)
{
    for (size_t i = 0; i < TEST_CONNS_MAX; i++)
        srv_close(&s->conns[i]);
    if (s->listening)
        uv_close((uv_handle_t *)&s->listen, NULL);
    s->listening = false;
}

/* An empty answer with the zone's SOA: NODATA. */
#define TEST_NODATA .ns = {{TESTLIB_DNS_SOA, 300, "300"}}
#define TEST_TXT_OK .an = {{DNS_TYPE_TXT, 300, "v=STSv1; id=20160831085700Z;"}}
#define TEST_LOCAL(name)                                        \
    {name, DNS_TYPE_A, .an = {{DNS_TYPE_A, 300, "127.0.0.1"}}}, \
    {                                                           \
        name, DNS_TYPE_AAAA, TEST_NODATA                        \
    }

/* The fake server's zone. Every question a fetch may ask has a row: an unlisted one gets REFUSED.
 */
static const struct testlib_dns_row test_zone[] = {
    {"_mta-sts.example.test", DNS_TYPE_TXT,
     .an = {{DNS_TYPE_TXT, 300, "v=spf1 -all"},
            {DNS_TYPE_TXT, 300, "v=STSv1; id=20160831085700Z;"}}},
    TEST_LOCAL("mta-sts.example.test"),
    /* Two addresses: the first refuses connections (nothing listens on 127.0.0.2). */
    {"_mta-sts.multi.test", DNS_TYPE_TXT, TEST_TXT_OK},
    {"mta-sts.multi.test", DNS_TYPE_A,
     .an = {{DNS_TYPE_A, 300, "127.0.0.2"}, {DNS_TYPE_A, 300, "127.0.0.1"}}},
    {"mta-sts.multi.test", DNS_TYPE_AAAA, TEST_NODATA},
    /* The name the wrong certificate has, resolving to the same server. */
    {"_mta-sts.other.test", DNS_TYPE_TXT, TEST_TXT_OK},
    TEST_LOCAL("mta-sts.other.test"),
    {"_mta-sts.nx.test", DNS_TYPE_TXT, .rcode = 3, TEST_NODATA},
    {"_mta-sts.nodata.test", DNS_TYPE_TXT, TEST_NODATA},
    {"_mta-sts.spf.test", DNS_TYPE_TXT, .an = {{DNS_TYPE_TXT, 300, "v=spf1 -all"}}},
    {"_mta-sts.two.test", DNS_TYPE_TXT,
     .an = {{DNS_TYPE_TXT, 300, "v=STSv1; id=a1;"}, {DNS_TYPE_TXT, 300, "v=STSv1; id=b2;"}}},
    {"_mta-sts.bad.test", DNS_TYPE_TXT, .an = {{DNS_TYPE_TXT, 300, "v=STSv1; id=no-dash;"}}},
    {"_mta-sts.split.test", DNS_TYPE_TXT, .an = {{DNS_TYPE_TXT, 300, "v=STSv1; |id=split1;"}}},
    TEST_LOCAL("mta-sts.split.test"),
    {"_mta-sts.fail.test", DNS_TYPE_TXT, .rcode = 2},
    {"_mta-sts.noaddr.test", DNS_TYPE_TXT, TEST_TXT_OK},
    {"mta-sts.noaddr.test", DNS_TYPE_A, .rcode = 3, TEST_NODATA},
    {"mta-sts.noaddr.test", DNS_TYPE_AAAA, .rcode = 3, TEST_NODATA},
    {"_mta-sts.slow.test", DNS_TYPE_TXT, .spoil = TESTLIB_DNS_SILENT},
};

/* test_got - what one fetch callback received, copied. */
struct test_got {
    unsigned calls;
    struct sts_result res;
};

struct fixture {
    uv_loop_t loop;
    struct testlib_loop w;
    uv_timer_t tick;
    uv_timer_t wait; /* a real-time bound for "nothing happens" */
    struct testlib_dns dns_srv;
    struct dns *dns;
    struct srv srv;
    struct sts_config cfg;
    struct sts *sts;
    bool closed;
    char resp[100000]; /* the server's response, built per test */
};

/* test_got_cb - copy res into the struct test_got at arg. */
static void test_got_cb(void *arg, const struct sts_result *res)
{
    struct test_got *g = arg;
    g->calls++;
    g->res = *res;
}

/* test_tick_cb - nothing: the tick only ends each loop turn. */
static void test_tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* test_wait_cb - the bound of test_idle has passed. */
static void test_wait_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* test_idle - run the loop for ms of real time (bounded by the guard). */
static void test_idle(struct fixture *f, uint64_t ms)
{
    bool done = false;
    f->wait.data = &done;
    assert_int_equal(uv_timer_start(&f->wait, test_wait_cb, ms, 0), 0);
    TESTLIB_LOOP_WAIT(&f->w, done);
}

/* test_sts_new - a new fetcher on f->cfg (the old one freed). */
static void test_sts_new(struct fixture *f)
{
    sts_free(f->sts);
    f->sts = NULL;
    assert_int_equal(sts_new(f->dns, NULL, &f->cfg, &f->sts), 0);
}

/* test_respond - the server's response: head (with CRLFs) then body (len octets). */
static void test_respond(struct fixture *f, const char *head, const char *body, size_t len)
{
    size_t h = strlen(head);
    assert_true(h + len < sizeof(f->resp));
    memcpy(f->resp, head, h);
    memcpy(f->resp + h, body, len);
    f->srv.resp = f->resp;
    f->srv.resp_len = h + len;
}

static const char test_policy[] =
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmx: *.mx.example.test\r\n"
    "max_age: 86400\r\n";

/* test_respond_ok - 200, text/plain, Content-Length, test_policy. */
static void test_respond_ok(struct fixture *f)
{
    char head[256];
    snprintf(head, sizeof(head),
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
             "%zu\r\n\r\n",
             sizeof(test_policy) - 1);
    test_respond(f, head, test_policy, sizeof(test_policy) - 1);
}

/* setup - loop, guard, tick, fake DNS, resolver, HTTPS server (200 OK), fetcher trusting ca.pem. */
static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct dns_config dcfg;
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    testlib_loop_init(&f->w, &f->loop, TEST_GUARD_MS, TEST_TURNS);
    assert_int_equal(uv_timer_init(&f->loop, &f->tick), 0);
    assert_int_equal(uv_timer_start(&f->tick, test_tick_cb, 5, 5), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->wait), 0);
    testlib_dns_start(&f->dns_srv, &f->loop, test_zone, HAMR_ARRAY_LEN(test_zone));
    dns_config_default(&dcfg);
    snprintf(dcfg.servers, sizeof(dcfg.servers), "%s", f->dns_srv.servers);
    dcfg.timeout_ms = 200;
    dcfg.tries = 1;
    dcfg.cache_size = 0; /* every fetch asks */
    assert_int_equal(dns_new(&f->loop, &dcfg, &f->dns), 0);
    srv_start(&f->srv, &f->loop);
    test_respond_ok(f);
    f->cfg.timeout_ms = 5000;
    f->cfg.https_port = f->srv.port;
    hamr_strlcpy(f->cfg.ca_file, certs.ca, sizeof(f->cfg.ca_file));
    test_sts_new(f);
    *state = f;
    return 0;
}

/* teardown - fetcher freed, resolver and servers closed; the loop must end with no handle. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    sts_free(f->sts);
    dns_close(f->dns, testlib_flag_cb, &f->closed);
    TESTLIB_LOOP_WAIT(&f->w, f->closed);
    srv_stop(&f->srv);
    testlib_dns_close(&f->dns_srv);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_close((uv_handle_t *)&f->wait, NULL);
    testlib_loop_close(&f->w);
    assert_int_equal(testlib_loop_finish(&f->loop), 0);
    free(f);
    return 0;
}

/* test_fetch - fetch domain and wait for its one callback, into g. */
static void test_fetch(struct fixture *f, const char *domain, struct test_got *g)
{
    struct sts_fetch *h = NULL;
    memset(g, 0, sizeof(*g));
    assert_int_equal(sts_fetch(f->sts, domain, test_got_cb, g, &h), 0);
    assert_non_null(h);
    assert_int_equal(g->calls, 0); /* never from inside sts_fetch */
    TESTLIB_LOOP_WAIT(&f->w, g->calls > 0);
    test_idle(f, 20); /* and once only */
    assert_int_equal(g->calls, 1);
}

/* test_want - g is status with err, why containing why (if not NULL). */
static void test_want(const struct test_got *g, enum sts_status status, int err, const char *why)
{
    if (g->res.status != status || g->res.err != err)
        fail_msg("status %s err %d (%s), want %s err %d; why \"%s\"",
                 sts_status_name(g->res.status), g->res.err, hamr_errname(g->res.err),
                 sts_status_name(status), err, g->res.why);
    if (why != NULL && strstr(g->res.why, why) == NULL)
        fail_msg("why \"%s\" lacks \"%s\"", g->res.why, why);
}

/* fetch_ok - the policy over Content-Length; the request as RFC 8461 3.3 wants it. */
static void fetch_ok(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_fetch(f, "Example.Test.", &g);
    test_want(&g, STS_OK, 0, NULL);
    assert_string_equal(g.res.domain, "example.test");
    assert_string_equal(g.res.id, "20160831085700Z");
    assert_int_equal(g.res.policy.mode, STS_MODE_ENFORCE);
    assert_int_equal(g.res.policy.max_age, 86400);
    assert_int_equal(g.res.policy.n_mx, 2);
    assert_true(sts_mx_match(&g.res.policy, "a.mx.example.test"));
    assert_false(sts_mx_match(&g.res.policy, "other.example.test"));
    assert_int_equal(f->srv.accepted, 1);
    char host[96];
    snprintf(host, sizeof(host), "\r\nHost: mta-sts.example.test:%u\r\n", f->srv.port);
    assert_true(strncmp(f->srv.req, "GET /.well-known/mta-sts.txt HTTP/1.1\r\n", 39) == 0);
    assert_non_null(strstr(f->srv.req, host));
    assert_non_null(strstr(f->srv.req, "\r\nConnection: close\r\n"));
    assert_int_equal(testlib_dns_count(&f->dns_srv, "_mta-sts.example.test", DNS_TYPE_TXT), 1);
}

/* fetch_chunked_and_to_close - a chunked body (odd chunk sizes, an extension), and one read to
 * close. */
static void fetch_chunked_and_to_close(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    char body[1024];
    size_t o = 0, len = sizeof(test_policy) - 1;
    for (size_t i = 0; i < len;) {
        size_t n = len - i < 7 ? len - i : 7;
        o += (size_t)snprintf(body + o, sizeof(body) - o, "%zx%s\r\n", n, i == 0 ? ";ext=1" : "");
        memcpy(body + o, test_policy + i, n);
        o += n;
        memcpy(body + o, "\r\n", 2);
        o += 2;
        i += n;
    }
    o += (size_t)snprintf(body + o, sizeof(body) - o, "0\r\n\r\n");
    test_respond(
        f, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: TEXT/PLAIN\r\n\r\n",
        body, o);
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_OK, 0, NULL);
    assert_int_equal(g.res.policy.n_mx, 2);
    assert_string_equal(g.res.policy.mx[1], "*.mx.example.test");

    test_respond(f, "HTTP/1.0 200 OK\nContent-Type: text/plain\n\n", test_policy,
                 sizeof(test_policy) - 1);
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_OK, 0, NULL);
    assert_int_equal(g.res.policy.max_age, 86400);
}

/* fetch_second_address - 127.0.0.2 refuses the connection; 127.0.0.1 answers. */
static void fetch_second_address(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_fetch(f, "multi.test", &g);
    test_want(&g, STS_OK, 0, NULL);
    assert_int_equal(f->srv.accepted, 1);
}

/* fetch_unchanged - the known id: UNCHANGED, no connection; another id fetches. */
static void fetch_unchanged(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    memset(&g, 0, sizeof(g));
    assert_int_equal(
        sts_fetch_if_changed(f->sts, "example.test", "20160831085700Z", test_got_cb, &g, NULL), 0);
    TESTLIB_LOOP_WAIT(&f->w, g.calls > 0);
    test_want(&g, STS_UNCHANGED, 0, NULL);
    assert_string_equal(g.res.id, "20160831085700Z");
    assert_int_equal(f->srv.accepted, 0);
    memset(&g, 0, sizeof(g));
    assert_int_equal(
        sts_fetch_if_changed(f->sts, "example.test", "19990101", test_got_cb, &g, NULL), 0);
    TESTLIB_LOOP_WAIT(&f->w, g.calls > 0);
    test_want(&g, STS_OK, 0, NULL);
    assert_int_equal(f->srv.accepted, 1);
    assert_int_equal(
        sts_fetch_if_changed(f->sts, "example.test", "123456789012345678901234567890123",
                             test_got_cb, &g, NULL),
        HAMR_EINVAL);
}

/* fetch_no_policy - NXDOMAIN, NODATA, no STS record, two, a malformed one: NONE, no connection. */
static void fetch_no_policy(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *domain, *why;
    } cases[] = {
        {"nx.test", "nxdomain"},           {"nodata.test", "nodata"},
        {"spf.test", "no v=STSv1 record"}, {"two.test", "several v=STSv1 records"},
        {"bad.test", "malformed"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct test_got g;
        test_fetch(f, cases[i].domain, &g);
        test_want(&g, STS_NONE, 0, cases[i].why);
        assert_string_equal(g.res.id, "");
    }
    assert_int_equal(f->srv.accepted, 0);
}

/* fetch_split_txt - a record in two strings is read joined. */
static void fetch_split_txt(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    f->srv.ctx = certs.wrong; /* the id is all this test is about: TLS then fails */
    test_fetch(f, "split.test", &g);
    test_want(&g, STS_FAILED, HAMR_EPROTO, "certificate verify failed");
    assert_string_equal(g.res.id, "split1");
}

/* fetch_tempfail - SERVFAIL on the TXT: TEMPFAIL. */
static void fetch_tempfail(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_fetch(f, "fail.test", &g);
    test_want(&g, STS_TEMPFAIL, HAMR_ECONNECT, "_mta-sts.fail.test");
}

/* fetch_no_address - the policy host does not exist: FAILED. */
static void fetch_no_address(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    test_fetch(f, "noaddr.test", &g);
    test_want(&g, STS_FAILED, HAMR_ENOTFOUND, "no address for mta-sts.noaddr.test");
    assert_string_equal(g.res.id, "20160831085700Z");
}

/* fetch_bad_certificate - a certificate for another name, then one of a CA not trusted: FAILED. */
static void fetch_bad_certificate(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    f->srv.ctx = certs.wrong;
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_FAILED, HAMR_EPROTO, "certificate verify failed");
    assert_int_equal(g.res.policy.n_mx, 0);
    TESTLIB_LOOP_WAIT(&f->w, f->srv.handshake_failed == 1);
    assert_int_equal(f->srv.req_len, 0); /* the request never went out */
    /* The right name, through the wrong-name certificate's own host: the chain alone is not enough.
     */
    f->srv.ctx = certs.good;
    test_fetch(f, "other.test", &g);
    test_want(&g, STS_FAILED, HAMR_EPROTO, "certificate verify failed");
    /* A trust store without our CA. */
    hamr_strlcpy(f->cfg.ca_file, certs.other_ca, sizeof(f->cfg.ca_file));
    test_sts_new(f);
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_FAILED, HAMR_EPROTO, "certificate verify failed");
    assert_int_equal(f->srv.req_len, 0);
}

/* fetch_http_refused - 404, 301 (not followed), text/html, no Content-Type, a bad policy, a cut
 * body. */
static void fetch_http_refused(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *head, *body;
        int err;
        const char *why;
    } cases[] = {
        {"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n", "no\n",
         HAMR_EPROTO, "HTTP status 404"},
        {"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.test/\r\nContent-Length: 0\r\n\r\n", "",
         HAMR_EPROTO, "redirects are not followed"},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n", "<p>\r\n",
         HAMR_EPROTO, "is not text/plain"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "x: y\n", HAMR_EPROTO, "no Content-Type"},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nTransfer-Encoding: "
         "chunked\r\n\r\n",
         "0\r\n\r\n", HAMR_EPROTO, "both Content-Length and Transfer-Encoding"},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip\r\n\r\n", "xx",
         HAMR_EPROTO, "unsupported"},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", "version: STSv1\nmode: bogus\n",
         HAMR_EINVAL, "mode \"bogus\" unknown"},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 500\r\n\r\n",
         "version: STSv1\n", HAMR_EPROTO, "closed before the end"},
        {"SMTP/1.0 200 OK\r\n\r\n", "", HAMR_EPROTO, "not an HTTP/1.x response"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct test_got g;
        test_respond(f, cases[i].head, cases[i].body, strlen(cases[i].body));
        test_fetch(f, "example.test", &g);
        test_want(&g, STS_FAILED, cases[i].err, cases[i].why);
    }
}

/* fetch_too_big - a declared length over the limit, then a body read to close over it. */
static void fetch_too_big(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    static char body[STS_POLICY_MAX + 100];
    memset(body, '\n', sizeof(body));
    char head[256];
    snprintf(head, sizeof(head),
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
             sizeof(body));
    test_respond(f, head, body, sizeof(body));
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_FAILED, HAMR_ETOOBIG, "Content-Length 65636 over 65536");
    test_respond(f, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", body, sizeof(body));
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_FAILED, HAMR_ETOOBIG, "body over 65536 octets");
    /* A smaller limit of the config's own. */
    f->cfg.max_body = 64;
    test_sts_new(f);
    test_respond_ok(f);
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_FAILED, HAMR_ETOOBIG, "over 64");
}

/* fetch_timeout - a server that accepts and never answers: FAILED after the timeout. */
static void fetch_timeout(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    f->srv.silent = true;
    f->cfg.timeout_ms = 300;
    test_sts_new(f);
    uint64_t start = uv_now(&f->loop);
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_FAILED, HAMR_ETIMEDOUT, "timed out after 300 ms in TLS handshake");
    assert_true(uv_now(&f->loop) - start >= 300);
    assert_int_equal(f->srv.accepted, 1);
    /* A TXT lookup that outlasts the fetch's timeout is TEMPFAIL. */
    f->cfg.timeout_ms = 100;
    test_sts_new(f);
    test_fetch(f, "slow.test", &g);
    test_want(&g, STS_TEMPFAIL, HAMR_ETIMEDOUT, "in TXT lookup");
}

/* fetch_cancel - cancelled while the TXT is out, and during TLS: neither callback runs. */
static void fetch_cancel(void **state)
{
    struct fixture *f = *state;
    struct test_got g[2];
    struct sts_fetch *h[2] = {NULL, NULL};
    memset(g, 0, sizeof(g));
    f->srv.silent = true;
    assert_int_equal(sts_fetch(f->sts, "slow.test", test_got_cb, &g[0], &h[0]), 0);
    assert_int_equal(sts_fetch(f->sts, "example.test", test_got_cb, &g[1], &h[1]), 0);
    TESTLIB_LOOP_WAIT(&f->w,
                      testlib_dns_count(&f->dns_srv, "_mta-sts.slow.test", DNS_TYPE_TXT) > 0 &&
                          f->srv.accepted == 1);
    sts_cancel(h[0]);
    sts_cancel(h[1]);
    test_idle(f, 400); /* past c-ares's 200 ms timeout */
    assert_int_equal(g[0].calls, 0);
    assert_int_equal(g[1].calls, 0);
}

/* test_free_fetch_cb - a callback that tries another fetch on the closing fetcher (f at arg). */
static void test_free_fetch_cb(void *arg, const struct sts_result *res)
{
    struct fixture *f = arg;
    test_want(&(struct test_got){.calls = 1, .res = *res}, STS_TEMPFAIL, HAMR_ESHUTDOWN,
              "shutdown");
    assert_int_equal(sts_fetch(f->sts, "example.test", test_got_cb, NULL, NULL), HAMR_ESHUTDOWN);
    f->closed = true; /* borrowed as "called" */
}

/* free_pending - sts_free calls back every pending fetch once, from inside, with TEMPFAIL shutdown.
 */
static void free_pending(void **state)
{
    struct fixture *f = *state;
    struct test_got g[2];
    memset(g, 0, sizeof(g));
    f->srv.silent = true;
    assert_int_equal(sts_fetch(f->sts, "slow.test", test_got_cb, &g[0], NULL), 0);
    assert_int_equal(sts_fetch(f->sts, "example.test", test_got_cb, &g[1], NULL), 0);
    assert_int_equal(sts_fetch(f->sts, "slow.test", test_free_fetch_cb, f, NULL), 0);
    TESTLIB_LOOP_WAIT(&f->w, f->srv.accepted == 1);
    assert_false(f->closed);
    sts_free(f->sts);
    assert_true(f->closed);
    f->closed = false;
    f->sts = NULL;
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(g[i].calls, 1);
        test_want(&g[i], STS_TEMPFAIL, HAMR_ESHUTDOWN, "shutdown");
    }
    test_idle(f, 400);
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(g[i].calls, 1);
}

/* bad_domains - refused at once, the callback never run; a missing CA file fails sts_new. */
static void bad_domains(void **state)
{
    struct fixture *f = *state;
    struct test_got g;
    memset(&g, 0, sizeof(g));
    static const char *const bad[] = {"",         ".",       "a..b",    "a b.test",
                                      "a/b.test", ".x.test", "x.test.."};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad); i++)
        if (sts_fetch(f->sts, bad[i], test_got_cb, &g, NULL) != HAMR_EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
    char longname[300];
    memset(longname, 'a', sizeof(longname));
    for (size_t i = 60; i < 250; i += 61)
        longname[i] = '.';
    longname[250] = '\0'; /* 250 octets: with "_mta-sts." over 253 */
    assert_int_equal(sts_fetch(f->sts, longname, test_got_cb, &g, NULL), HAMR_EINVAL);
    assert_int_equal(sts_fetch(f->sts, "example.test", NULL, &g, NULL), HAMR_EINVAL);
    test_idle(f, 20);
    assert_int_equal(g.calls, 0);
    struct sts *s = NULL;
    struct sts_config cfg = f->cfg;
    hamr_strlcpy(cfg.ca_file, "/nonexistent/ca.pem", sizeof(cfg.ca_file));
    assert_int_equal(sts_new(f->dns, NULL, &cfg, &s), HAMR_EIO);
    assert_null(s);
    /* A context of the caller's, up-referenced: the caller's reference may go at once. */
    char err[256];
    SSL_CTX *ctx = tls_client_ctx_new(certs.ca, err, sizeof(err));
    assert_non_null(ctx);
    assert_int_equal(sts_new(f->dns, ctx, &f->cfg, &s), 0);
    SSL_CTX_free(ctx);
    sts_free(f->sts);
    f->sts = s;
    test_fetch(f, "example.test", &g);
    test_want(&g, STS_OK, 0, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(policy_table),
        cmocka_unit_test(policy_limits),
        cmocka_unit_test(txt_table),
        cmocka_unit_test(mx_match_table),
        cmocka_unit_test_setup_teardown(fetch_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_chunked_and_to_close, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_second_address, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_unchanged, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_no_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_split_txt, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_tempfail, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_no_address, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_bad_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_http_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(fetch_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(free_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_domains, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
