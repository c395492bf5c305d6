/*
 * test_smtp_addr.c - the mail address grammar of net/smtp_addr, by tables.
 *
 * Covers: reverse- and forward-paths as MAIL and RCPT give them (<>,
 * <postmaster>, quoted local parts and their escapes, dots at the edges and
 * doubled, address literals IPv4 and IPv6, source routes, routed local
 * parts, 8-bit octets, missing brackets, parameters after the path); the
 * RFC 5321 4.5.3.1 limits at and one past each bound; the three domain rule
 * sets the session, the recipient map and the configuration use; Dot-string
 * checks; and the comparison helpers (key, domain, lower case, matching).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "util/err.h"
#include "net/smtp_addr.h"

/* test_path_case - one path, the flags it is parsed with and what must come of it. */
struct test_path_case {
    const char *label;
    const char *in;
    unsigned flags;
    int want_rc;
    const char *want_text; /* on success */
    const char *want_rest; /* on success: what *pp points at */
    bool want_domain, want_literal, want_routed, want_null;
};

#define NUL_OK SMTP_ADDR_NULL_OK
#define PM_OK SMTP_ADDR_POSTMASTER_OK
#define U8 SMTP_ADDR_UTF8_OK

static const struct test_path_case test_paths[] = {
    /* label, in, flags, rc, text, rest, has_domain, literal, routed, null */
    {"plain", "<user@example.com>", 0, 0, "user@example.com", "", true, false, false, false},
    {"case kept", "<User@Example.COM>", 0, 0, "User@Example.COM", "", true, false, false, false},
    {"dots inside", "<a.b.c@x.example>", 0, 0, "a.b.c@x.example", "", true, false, false, false},
    {"atext", "<o'brien+tag=x@ex.com>", 0, 0, "o'brien+tag=x@ex.com", "", true, false, false,
     false},
    {"parameters follow", "<u@ex.com> SIZE=10", 0, 0, "u@ex.com", " SIZE=10", true, false, false,
     false},
    {"null path", "<>", NUL_OK, 0, "", "", false, false, false, true},
    {"null path, then params", "<> BODY=8BITMIME", NUL_OK, 0, "", " BODY=8BITMIME", false, false,
     false, true},
    {"null path not allowed", "<>", PM_OK, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"postmaster", "<postmaster>", PM_OK, 0, "postmaster", "", false, false, false, false},
    {"Postmaster any case", "<PostMaster>", PM_OK, 0, "PostMaster", "", false, false, false, false},
    {"postmaster not allowed", "<postmaster>", NUL_OK, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"postmaster@domain", "<postmaster@ex.com>", NUL_OK, 0, "postmaster@ex.com", "", true, false,
     false, false},
    {"other local without domain", "<postmast>", PM_OK, HAMR_EINVAL, NULL, NULL, false, false,
     false, false},
    {"quoted", "<\"john doe\"@ex.com>", 0, 0, "\"john doe\"@ex.com", "", true, false, false, false},
    {"quoted empty", "<\"\"@ex.com>", 0, 0, "\"\"@ex.com", "", true, false, false, false},
    {"quoted escape", "<\"a\\\"b\\\\c\"@ex.com>", 0, 0, "\"a\\\"b\\\\c\"@ex.com", "", true, false,
     false, false},
    {"quoted @ is routed", "<\"a@b\"@ex.com>", 0, 0, "\"a@b\"@ex.com", "", true, false, true,
     false},
    {"escaped @ is routed", "<\"a\\@b\"@ex.com>", 0, 0, "\"a\\@b\"@ex.com", "", true, false, true,
     false},
    {"quoted % is routed", "<\"a%b\"@ex.com>", 0, 0, "\"a%b\"@ex.com", "", true, false, true,
     false},
    {"percent is routed", "<a%b@ex.com>", 0, 0, "a%b@ex.com", "", true, false, true, false},
    {"bang is routed", "<b!a@ex.com>", 0, 0, "b!a@ex.com", "", true, false, true, false},
    {"quoted unterminated", "<\"ab@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"quoted control", "<\"a\tb\"@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"escaped control", "<\"a\\\tb\"@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"escape at the end", "<\"a\\", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"quote inside dot-string", "<a\"b\"@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"leading dot", "<.a@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"trailing dot", "<a.@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"double dot", "<a..b@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"space in local", "<a b@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"empty local", "<@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"no domain", "<user>", PM_OK, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"empty domain", "<a@>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"two @", "<a@b@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"no brackets", "user@ex.com", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"no closing bracket", "<user@ex.com", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"empty", "", NUL_OK, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"domain label starts with -", "<a@-ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"domain label ends with -", "<a@ex-.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"domain inner -", "<a@e-x.com>", 0, 0, "a@e-x.com", "", true, false, false, false},
    {"domain double dot", "<a@ex..com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"domain final dot", "<a@ex.com.>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"domain underscore", "<a@e_x.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"literal v4", "<a@[192.0.2.1]>", 0, 0, "a@[192.0.2.1]", "", true, true, false, false},
    {"literal v6", "<a@[IPv6:2001:db8::1]>", 0, 0, "a@[IPv6:2001:db8::1]", "", true, true, false,
     false},
    {"literal v6 tag any case", "<a@[ipv6:::1]>", 0, 0, "a@[ipv6:::1]", "", true, true, false,
     false},
    {"literal v6 without tag", "<a@[2001:db8::1]>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"literal v4 out of range", "<a@[300.0.2.1]>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"literal empty", "<a@[]>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"literal unclosed", "<a@[192.0.2.1>", 0, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"literal other tag", "<a@[x400:c=us]>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"source route dropped", "<@r1.ex,@[192.0.2.9]:u@ex.com>", 0, 0, "u@ex.com", "", true, false,
     false, false},
    {"source route bad domain", "<@r_1.ex:u@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false,
     false, false},
    {"source route no colon", "<@r1.ex;u@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"source route second without @", "<@r1.ex,r2.ex:u@ex.com>", 0, HAMR_EINVAL, NULL, NULL, false,
     false, false, false},
    {"8-bit local part", "<us\xc3\xa9r@ex.com>", 0, HAMR_EPROTO, NULL, NULL, false, false, false,
     false},
    {"8-bit domain", "<u@\xc3\xa9x.com>", 0, HAMR_EPROTO, NULL, NULL, false, false, false, false},
    {"8-bit in the parameters", "<u@ex.com> X=\xff", 0, HAMR_EPROTO, NULL, NULL, false, false,
     false, false},
    {"8-bit even when the syntax is bad", "u\xff", 0, HAMR_EPROTO, NULL, NULL, false, false, false,
     false},
    /* SMTPUTF8 (RFC 6531 3.3): UTF-8 local parts and U-labels, well-formed only. */
    {"utf8 local", "<us\xc3\xa9r@ex.com>", U8, 0, "us\xc3\xa9r@ex.com", "", true, false, false,
     false},
    {"utf8 U-label",
     "<u@b\xc3\xbc"
     "cher.example>",
     U8, 0,
     "u@b\xc3\xbc"
     "cher.example",
     "", true, false, false, false},
    {"utf8 4-octet and 3-octet", "<\xf0\x9f\x98\x80@\xe4\xbe\x8b.example>", U8, 0,
     "\xf0\x9f\x98\x80@\xe4\xbe\x8b.example", "", true, false, false, false},
    {"utf8 quoted", "<\"j\xc3\xb6 d\"@ex.com>", U8, 0, "\"j\xc3\xb6 d\"@ex.com", "", true, false,
     false, false},
    {"utf8 flag, ASCII", "<User@Example.COM>", U8, 0, "User@Example.COM", "", true, false, false,
     false},
    {"utf8 flag, 8-bit parameters are not the path's", "<u@ex.com> X=\xff", U8, 0, "u@ex.com",
     " X=\xff", true, false, false, false},
    {"utf8 routed", "<\xc3\xa9%x@ex.com>", U8, 0, "\xc3\xa9%x@ex.com", "", true, false, true,
     false},
    {"utf8 overlong", "<\xc0\xaf@ex.com>", U8, HAMR_EINVAL, NULL, NULL, false, false, false, false},
    {"utf8 C1 control", "<a\xc2\x85@ex.com>", U8, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"utf8 lone continuation", "<a\x80@ex.com>", U8, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"utf8 cut sequence", "<a\xe4\xbe@ex.com>", U8, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"utf8 surrogate in domain", "<a@\xed\xa0\x80.ex>", U8, HAMR_EINVAL, NULL, NULL, false, false,
     false, false},
    {"utf8 above U+10FFFF", "<a@\xf4\x90\x80\x80.ex>", U8, HAMR_EINVAL, NULL, NULL, false, false,
     false, false},
    {"utf8 label ends in -", "<a@\xc3\xa9-.ex>", U8, HAMR_EINVAL, NULL, NULL, false, false, false,
     false},
    {"utf8 source route stays ASCII", "<@r\xc3\xa9.ex:u@ex.com>", U8, HAMR_EINVAL, NULL, NULL,
     false, false, false, false},
    {"utf8 quoted escape is ASCII", "<\"a\\\xc3\xa9\"@ex.com>", U8, HAMR_EINVAL, NULL, NULL, false,
     false, false, false},
};

/* test_parse_path - every row of test_paths. */
static void test_parse_path(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(test_paths) / sizeof(test_paths[0]); i++) {
        const struct test_path_case *c = &test_paths[i];
        struct smtp_addr a;
        const char *p = c->in;
        int rc = smtp_addr_parse_path(&p, c->flags, &a);
        if (rc != c->want_rc)
            fail_msg("%s: rc %d, want %d", c->label, rc, c->want_rc);
        if (rc != 0) {
            assert_ptr_equal(p, c->in); /* not moved on failure */
            continue;
        }
        if (strcmp(a.text, c->want_text) != 0 || strcmp(p, c->want_rest) != 0)
            fail_msg("%s: text \"%s\" rest \"%s\"", c->label, a.text, p);
        if (a.has_domain != c->want_domain || a.literal != c->want_literal ||
            a.routed != c->want_routed || a.null_path != c->want_null)
            fail_msg("%s: domain %d literal %d routed %d null %d", c->label, a.has_domain,
                     a.literal, a.routed, a.null_path);
        if (a.has_domain) {
            assert_true(a.domain > 0 && a.text[a.domain - 1] == '@');
            assert_string_equal(a.text + a.domain, smtp_addr_domain_of(a.text));
        } else {
            assert_int_equal(a.domain, strlen(a.text));
        }
    }
}

/* test_fill - "<" + local of llen 'l's (quoted when q) + "@" + a dotted domain of dlen + ">". */
static void test_fill(char *out, size_t llen, bool q, size_t dlen)
{
    size_t n = 0;
    out[n++] = '<';
    if (q)
        out[n++] = '"';
    for (size_t i = 0; i < llen - (q ? 2 : 0); i++)
        out[n++] = 'l';
    if (q)
        out[n++] = '"';
    out[n++] = '@';
    for (size_t i = 0; i < dlen; i++)
        out[n++] = (i % 50 == 49 && i + 1 < dlen) ? '.' : 'd';
    out[n++] = '>';
    out[n] = '\0';
}

/* test_limits - RFC 5321 4.5.3.1: each limit taken at its bound, refused one past it. */
static void test_limits(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        size_t local;
        bool quoted;
        size_t domain;
        int want;
    } cases[] = {
        {"local 64", 64, false, 10, 0},
        {"local 65", 65, false, 10, HAMR_EINVAL},
        {"quoted local 64 with its quotes", 64, true, 10, 0},
        {"quoted local 65 with its quotes", 65, true, 10, HAMR_EINVAL},
        {"path 256 with <>", 64, false, 189, 0},
        {"path 257 with <>", 64, false, 190, HAMR_EINVAL},
    };
    char buf[600];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct smtp_addr a;
        test_fill(buf, cases[i].local, cases[i].quoted, cases[i].domain);
        const char *p = buf;
        int rc = smtp_addr_parse_path(&p, 0, &a);
        if (rc != cases[i].want)
            fail_msg("%s: rc %d, want %d", cases[i].label, rc, cases[i].want);
        if (rc == 0)
            assert_int_equal(strlen(a.text) + 2, strlen(buf));
    }

    /* Under SMTPUTF8 the limits count octets: 32 two-octet characters fill a local part. */
    char u[600];
    size_t k = 0;
    u[k++] = '<';
    for (size_t i = 0; i < 32; i++) {
        u[k++] = '\xc3';
        u[k++] = '\xa9';
    }
    memcpy(u + k, "@ex.com>", 9);
    struct smtp_addr ua;
    const char *up = u;
    assert_int_equal(smtp_addr_parse_path(&up, SMTP_ADDR_UTF8_OK, &ua), 0);
    memmove(u + 2, u + 1, strlen(u + 1) + 1); /* 65 octets */
    u[1] = 'x';
    up = u;
    assert_int_equal(smtp_addr_parse_path(&up, SMTP_ADDR_UTF8_OK, &ua), HAMR_EINVAL);

    /* The domain limit, in a source route where the path limit does not hide it. */
    char route[600];
    size_t n = 0;
    route[n++] = '<';
    route[n++] = '@';
    for (size_t i = 0; i < 255; i++)
        route[n++] = (i % 50 == 49) ? '.' : 'd';
    memcpy(route + n, ":u@ex.com>", 11);
    struct smtp_addr a;
    const char *p = route;
    assert_int_equal(smtp_addr_parse_path(&p, 0, &a), 0);
    assert_string_equal(a.text, "u@ex.com");
    memmove(route + 3, route + 2, strlen(route + 2) + 1); /* 256 octets of domain */
    p = route;
    assert_int_equal(smtp_addr_parse_path(&p, 0, &a), HAMR_EINVAL);
}

/* test_domains - one name under each caller's rules. */
static void test_domains(void **state)
{
    (void)state;
    char l63[64], l64[65], d255[256], d256[257], s256[258];
    memset(l63, 'a', 63);
    l63[63] = '\0';
    memset(l64, 'a', 64);
    l64[64] = '\0';
    /* Labels of 49 octets joined by dots: 255 and 256 octets; the latter after a dot. */
    for (size_t i = 0; i < 256; i++)
        d256[i] = (i % 50 == 49) ? '.' : 'b';
    d256[256] = '\0';
    memcpy(d255, d256, 255);
    d255[255] = '\0';
    s256[0] = '.';
    memcpy(s256 + 1, d255, 256);
    const struct {
        const char *label;
        const char *name;
        bool path, table, host, config;
    } cases[] = {
        {"plain", "example.com", true, true, true, true},
        {"upper case", "Example.COM", true, true, true, true},
        {"one label", "localhost", true, true, true, true},
        {"digits", "123.45", true, true, true, true},
        {"leading -", "-ex.com", false, true, true, true},
        {"trailing -", "ex-.com", false, true, true, true},
        {"underscore", "_dmarc.ex.com", false, false, true, true},
        {"final dot", "example.com.", false, false, true, true},
        {"two final dots", "example.com..", false, false, false, false},
        {"suffix", ".example.com", false, false, false, true},
        {"two leading dots", "..example.com", false, false, false, false},
        {"double dot", "ex..com", false, false, false, false},
        {"empty", "", false, false, false, false},
        {"a dot", ".", false, false, false, false},
        {"space", "ex ample.com", false, false, false, false},
        {"8-bit", "ex\xe9.com", false, false, false, false},
        {"literal", "[192.0.2.1]", true, false, false, false},
        {"literal v6", "[IPv6:::1]", true, false, false, false},
        {"label 63", l63, true, true, true, true},
        {"label 64", l64, true, true, false, false},
        {"255 octets", d255, true, true, true, true},
        {"256 octets", d256, false, false, false, false},
        {"suffix dot + 255 octets", s256, false, false, false, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *d = cases[i].name;
        size_t len = strlen(d);
        bool got[4] = {
            smtp_addr_domain_ok(d, len, SMTP_ADDR_DOM_PATH),
            smtp_addr_domain_ok(d, len, SMTP_ADDR_DOM_TABLE),
            smtp_addr_domain_ok(d, len, SMTP_ADDR_DOM_HOST),
            smtp_addr_domain_ok(d, len, SMTP_ADDR_DOM_CONFIG),
        };
        if (got[0] != cases[i].path || got[1] != cases[i].table || got[2] != cases[i].host ||
            got[3] != cases[i].config)
            fail_msg("%s: path %d table %d host %d config %d", cases[i].label, got[0], got[1],
                     got[2], got[3]);
    }

    /* A scan stops where the domain does; a length bounds it. */
    bool lit = false;
    const char *s = "ex.com>rest";
    assert_ptr_equal(smtp_addr_domain_scan(s, s + strlen(s), 0, &lit), s + 6);
    assert_false(lit);
    assert_ptr_equal(smtp_addr_domain_scan(s, s + 2, 0, NULL), s + 2);
    /* U-labels only under SMTP_ADDR_DOM_UTF8, well-formed, Ldh rules kept. */
    s = "b\xc3\xbc"
        "cher.example";
    assert_false(smtp_addr_domain_ok(s, strlen(s), SMTP_ADDR_DOM_PATH));
    assert_true(smtp_addr_domain_ok(s, strlen(s), SMTP_ADDR_DOM_PATH | SMTP_ADDR_DOM_UTF8));
    assert_true(smtp_addr_domain_ok(s, strlen(s), SMTP_ADDR_DOM_TABLE | SMTP_ADDR_DOM_UTF8));
    s = "b\xc3\xbc"
        "cher.example.";
    assert_true(smtp_addr_domain_ok(s, strlen(s), SMTP_ADDR_DOM_HOST | SMTP_ADDR_DOM_UTF8));
    s = "\xc3\xbc.\xc3\xbc";
    assert_true(smtp_addr_domain_ok(s, strlen(s), SMTP_ADDR_DOM_UTF8));
    s = "ex\xe9.com"; /* Latin-1, not UTF-8 */
    assert_false(smtp_addr_domain_ok(s, strlen(s), SMTP_ADDR_DOM_UTF8));
    s = "-\xc3\xbc.example";
    assert_false(smtp_addr_domain_ok(s, strlen(s), SMTP_ADDR_DOM_UTF8));
    s = "b\xc3\xbc"; /* a scan stops before a character cut by end */
    assert_ptr_equal(smtp_addr_domain_scan(s, s + 2, SMTP_ADDR_DOM_UTF8, NULL), s + 1);

    s = "[10.0.0.1]:25";
    assert_ptr_equal(smtp_addr_domain_scan(s, s + strlen(s), SMTP_ADDR_DOM_LITERAL, &lit), s + 10);
    assert_true(lit);
    assert_null(smtp_addr_domain_scan(s, s + 9, SMTP_ADDR_DOM_LITERAL, &lit)); /* "]" cut off */
    assert_false(lit);
}

/* test_local_parts - Dot-string checks and the scanner's routed flag. */
static void test_local_parts(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        bool dot_string;
    } cases[] = {
        {"alice", true},       {"bob.smith", true}, {"o'brien+tag", true},
        {"a%b!c", true},       {"", false},         {".a", false},
        {"a.", false},         {"a..b", false},     {"\"quoted\"", false},
        {"a b", false},        {"a@b", false},      {"\xc3\xa9", false},
        {"a(comment)", false}, {"x", true},         {"{|}~#$&*=?^_`/-", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (smtp_addr_dot_string_ok(cases[i].in, strlen(cases[i].in), 0) != cases[i].dot_string)
            fail_msg("\"%s\": want %d", cases[i].in, cases[i].dot_string);

    /* RFC 6532 3.2: UTF-8 characters are atext under SMTP_ADDR_LOCAL_UTF8 only. */
    assert_true(smtp_addr_dot_string_ok("\xc3\xa9", 2, SMTP_ADDR_LOCAL_UTF8));
    assert_true(smtp_addr_dot_string_ok("a.\xc3\xa9.b", 6, SMTP_ADDR_LOCAL_UTF8));
    assert_false(smtp_addr_dot_string_ok("\xc3", 1, SMTP_ADDR_LOCAL_UTF8));
    assert_false(smtp_addr_dot_string_ok("\xc2\x85", 2, SMTP_ADDR_LOCAL_UTF8)); /* C1 */
    assert_false(smtp_addr_dot_string_ok("\"\xc3\xa9\"", 4, SMTP_ADDR_LOCAL_UTF8));

    bool routed = true;
    const char *s = "plain@x";
    assert_ptr_equal(smtp_addr_local_scan(s, s + strlen(s), SMTP_ADDR_LOCAL_QUOTED, &routed),
                     s + 5);
    assert_false(routed);
    s = "\"q@x\"@y";
    assert_null(smtp_addr_local_scan(s, s + strlen(s), 0, &routed));
    assert_ptr_equal(smtp_addr_local_scan(s, s + strlen(s), SMTP_ADDR_LOCAL_QUOTED, &routed),
                     s + 5);
    assert_true(routed);
    s = "\"open";
    assert_null(smtp_addr_local_scan(s, s + strlen(s), SMTP_ADDR_LOCAL_QUOTED, NULL));
}

/* test_compare - lookup keys, the domain of an address, lower case, domain matching. */
static void test_compare(void **state)
{
    (void)state;
    char key[64];
    size_t len = 0, at = 0;

    assert_true(smtp_addr_key("User@Example.COM", key, sizeof(key), &len, &at));
    assert_string_equal(key, "user@example.com");
    assert_int_equal(len, 16);
    assert_int_equal(at, 4);
    assert_true(smtp_addr_key("\"John\\\"Q Doe\"@Ex.com", key, sizeof(key), &len, &at));
    assert_string_equal(key, "john\"q doe@ex.com");
    assert_int_equal(at, 10);
    assert_true(smtp_addr_key("\"a@b\"@ex.com", key, sizeof(key), &len, &at)); /* last @ */
    assert_string_equal(key, "a@b@ex.com");
    assert_int_equal(at, 3);
    assert_false(smtp_addr_key("postmaster", key, sizeof(key), &len, &at));
    assert_true(smtp_addr_key("ab@cd", key, 6, &len, &at)); /* exactly fits */
    assert_false(smtp_addr_key("ab@cde", key, 6, &len, &at));
    assert_false(smtp_addr_key("abcdef@c", key, 6, &len, &at));

    assert_string_equal(smtp_addr_domain_of("a@b.c"), "b.c");
    assert_string_equal(smtp_addr_domain_of("\"x@y\"@b.c"), "b.c");
    assert_string_equal(smtp_addr_domain_of("b.c"), "b.c");

    char s[] = "MiXeD.Example-1.COM";
    smtp_addr_lower(s, 5);
    assert_string_equal(s, "mixed.Example-1.COM");
    smtp_addr_lower(s, strlen(s));
    assert_string_equal(s, "mixed.example-1.com");
    /* ASCII only: UTF-8 octets are never touched ("\xc3\x89" is capital E acute). */
    char u[] =
        "\xc3\x89T\xc3\xa9@B\xc3\x9c"
        "CHER.Example";
    smtp_addr_lower(u, strlen(u));
    assert_string_equal(u,
                        "\xc3\x89t\xc3\xa9@b\xc3\x9c"
                        "cher.example");
    assert_true(smtp_addr_key("\xc3\x89T@X.COM", key, sizeof(key), &len, &at));
    assert_string_equal(key, "\xc3\x89t@x.com");

    static const struct {
        const char *domain, *pattern;
        int want;
    } m[] = {
        {"example.com", "example.com", SMTP_ADDR_MATCH_EXACT},
        {"EXAMPLE.com", "example.COM", SMTP_ADDR_MATCH_EXACT},
        {"sub.example.com", ".example.com", SMTP_ADDR_MATCH_SUFFIX},
        {"a.b.Example.com", ".example.com", SMTP_ADDR_MATCH_SUFFIX},
        {"example.com", ".example.com", SMTP_ADDR_MATCH_NONE},
        {"badexample.com", ".example.com", SMTP_ADDR_MATCH_NONE},
        {"sub.example.com", "example.com", SMTP_ADDR_MATCH_NONE},
        {"example.com", "", SMTP_ADDR_MATCH_NONE},
        {"example.co", "example.com", SMTP_ADDR_MATCH_NONE},
        /* U-labels: ASCII case only, octet for octet, no IDNA. */
        {"B\xc3\xbc"
         "cher.Example",
         "b\xc3\xbc"
         "cher.example",
         SMTP_ADDR_MATCH_EXACT},
        {"b\xc3\x9c"
         "cher.example",
         "b\xc3\xbc"
         "cher.example",
         SMTP_ADDR_MATCH_NONE},
        {"b\xc3\xbc"
         "cher.example",
         "xn--bcher-kva.example", SMTP_ADDR_MATCH_NONE},
        {"b\xc3\xbc"
         "cher.EXAMPLE",
         ".example", SMTP_ADDR_MATCH_SUFFIX},
    };
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
        if (smtp_addr_domain_match(m[i].domain, strlen(m[i].domain), m[i].pattern) != m[i].want)
            fail_msg("%s vs %s: want %d", m[i].domain, m[i].pattern, m[i].want);
    /* A length shorter than the string: "example.com." with its final dot left out. */
    assert_int_equal(smtp_addr_domain_match("example.com.", 11, "example.com"),
                     SMTP_ADDR_MATCH_EXACT);
}

/* main - pure functions: no setup. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_path), cmocka_unit_test(test_limits),
        cmocka_unit_test(test_domains),    cmocka_unit_test(test_local_parts),
        cmocka_unit_test(test_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
