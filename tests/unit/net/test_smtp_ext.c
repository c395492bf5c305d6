/*
 * test_smtp_ext.c - the envelope extensions' pure helpers of net/smtp_ext:
 * xtext both ways (round trips over every octet, malformed escapes, bounds),
 * NOTIFY lists, ORCPT values, ENVID and the UTF-8 check, by tables.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "net/smtp_ext.h"

/* test_xtext - decode and encode, every octet round-trips, the malformed are refused. */
static void test_xtext(void **state)
{
    (void)state;
    char out[64];
    size_t n = 0;
    assert_true(smtp_xtext_decode("a+2Bb+3Dc", 9, out, sizeof(out), &n));
    assert_string_equal(out, "a+b=c");
    assert_int_equal(n, 5);
    static const char *const bad[] = {"a=b", "a+2b", "a+2", "+", "a b", "+00", "a+G0", "\x7f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (smtp_xtext_decode(bad[i], strlen(bad[i]), out, sizeof(out), &n))
            fail_msg("xtext \"%s\" was accepted", bad[i]);
    /* Bounds: 3 octets need 4 bytes. */
    assert_true(smtp_xtext_decode("abc", 3, out, 4, &n));
    assert_false(smtp_xtext_decode("abcd", 4, out, 4, &n));

    char all[255], enc[SMTP_XTEXT_MAX(255) + 1], dec[256];
    for (int c = 1; c < 256; c++)
        all[c - 1] = (char)c;
    assert_true(smtp_xtext_encode(all, sizeof(all), enc, sizeof(enc)));
    for (const char *p = enc; *p; p++)
        assert_true(*p > 32 && *p < 127 && *p != '=');
    assert_true(smtp_xtext_decode(enc, strlen(enc), dec, sizeof(dec), &n));
    assert_int_equal(n, sizeof(all));
    assert_memory_equal(dec, all, sizeof(all));
    /* No room: false and "". */
    assert_false(smtp_xtext_encode("a b", 3, enc, 5));
    assert_string_equal(enc, "");
    assert_true(smtp_xtext_encode("a b", 3, enc, 6));
    assert_string_equal(enc, "a+20b");
}

/* test_notify - the keyword lists RFC 3461 4.1 allows, and what it does not. */
static void test_notify(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        bool ok;
        uint8_t bits;
        const char *out;
    } t[] = {
        {"NEVER", true, SMTP_NOTIFY_NEVER, "NEVER"},
        {"never", true, SMTP_NOTIFY_NEVER, "NEVER"},
        {"SUCCESS", true, SMTP_NOTIFY_SUCCESS, "SUCCESS"},
        {"DELAY,FAILURE", true, SMTP_NOTIFY_DELAY | SMTP_NOTIFY_FAILURE, "FAILURE,DELAY"},
        {"success,failure,delay", true,
         SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY, "SUCCESS,FAILURE,DELAY"},
        {"NEVER,SUCCESS", false, 0, NULL},
        {"SUCCESS,SUCCESS", false, 0, NULL},
        {"", false, 0, NULL},
        {"SUCCESS,", false, 0, NULL},
        {",SUCCESS", false, 0, NULL},
        {"SUCCES", false, 0, NULL},
        {"SUCCESSX", false, 0, NULL},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        uint8_t bits = 0xff;
        bool ok = smtp_notify_parse(t[i].in, &bits);
        if (ok != t[i].ok)
            fail_msg("NOTIFY=%s: want %d", t[i].in, t[i].ok);
        if (!ok)
            continue;
        assert_int_equal(bits, t[i].bits);
        char out[64];
        smtp_notify_format(bits, out, sizeof(out));
        assert_string_equal(out, t[i].out);
    }
}

/* test_orcpt - types, decoding, the 500-octet bound, and formatting back. */
static void test_orcpt(void **state)
{
    (void)state;
    char out[SMTP_ORCPT_MAX + 1], wire[SMTP_XTEXT_MAX(SMTP_ORCPT_MAX) + 1];
    assert_true(smtp_orcpt_parse("RFC822;a+2Bb@example.com", out));
    assert_string_equal(out, "rfc822;a+b@example.com");
    assert_true(smtp_orcpt_format(out, wire, sizeof(wire)));
    assert_string_equal(wire, "rfc822;a+2Bb@example.com");
    assert_true(smtp_orcpt_parse("utf-8;\xc3\xa9l\xc3\xa8ve@example.com", out));
    assert_string_equal(out, "utf-8;\xc3\xa9l\xc3\xa8ve@example.com");
    assert_true(smtp_orcpt_format(out, wire, sizeof(wire)));
    assert_string_equal(wire, out);

    /* RFC 6533 3: a utf-8 address may embed "\x{HEX}", and takes no '+' or '='. */
    assert_true(smtp_orcpt_parse("UTF-8;a\\x{2B}b\\x{1F600}@example.com", out));
    assert_string_equal(out, "utf-8;a\\x{2B}b\\x{1F600}@example.com");

    static const char *const bad[] = {"rfc822",           ";a@b",
                                      "rfc 822;a@b",      "rfc822;",
                                      "rfc822;a=b",       "rfc822;a+0Ab",
                                      "utf-8;\xc3",       "rfc822;\xc3\xa9",
                                      "utf-8;",           "utf-8;a+b@x",
                                      "utf-8;a+2Bb@x",    "utf-8;a=b@x",
                                      "utf-8;a b@x",      "utf-8;a\\b@x",
                                      "utf-8;a\\x{}@x",   "utf-8;a\\x{2B@x",
                                      "utf-8;a\\x{2b}@x", "utf-8;a\\x{1234567}@x",
                                      "utf-8;a\\x",       "utf-8;a\xc2\x85@x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (smtp_orcpt_parse(bad[i], out))
            fail_msg("ORCPT=%s was accepted", bad[i]);

    /* An addr-type of 32 octets is taken, of 33 not. */
    assert_true(smtp_orcpt_parse("x-234567890123456789012345678901;a@b", out));
    assert_false(smtp_orcpt_parse("x-2345678901234567890123456789012;a@b", out));

    /* 500 octets decoded fit, 501 do not. */
    char v[600];
    int k = snprintf(v, sizeof(v), "rfc822;");
    memset(v + k, 'a', 493);
    v[k + 493] = '\0';
    assert_true(smtp_orcpt_parse(v, out));
    assert_int_equal(strlen(out), 500);
    memset(v + k, 'a', 494);
    v[k + 494] = '\0';
    assert_false(smtp_orcpt_parse(v, out));
}

/* test_utf8 - RFC 3629's well-formed sequences and the forms it forbids. */
static void test_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool ok;
    } t[] = {
        {"plain@example.com", true},
        {"\xc3\xa9", true},          /* U+00E9 */
        {"\xe2\x82\xac", true},      /* U+20AC */
        {"\xf0\x9f\x98\x80", true},  /* U+1F600 */
        {"\xf4\x8f\xbf\xbf", true},  /* U+10FFFF */
        {"\xc0\xaf", false},         /* overlong '/' */
        {"\xe0\x80\xaf", false},     /* overlong */
        {"\xed\xa0\x80", false},     /* a surrogate */
        {"\xf4\x90\x80\x80", false}, /* above U+10FFFF */
        {"\xc3", false},             /* cut short */
        {"\x80", false},             /* a lone continuation */
        {"a\tb", false},             /* C0 */
        {"\xc2\x85", false},         /* C1 (NEL) */
        {"\x7f", false},             /* DEL */
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (smtp_utf8_valid(t[i].s, strlen(t[i].s)) != t[i].ok)
            fail_msg("case %zu: want %d", i, t[i].ok);
    assert_true(smtp_is_ascii("abc", 3));
    assert_false(smtp_is_ascii("a\xc3\xa9", 3));
    assert_true(smtp_envid_ok("QQ314159", 8));
    assert_false(smtp_envid_ok("", 0));
    assert_false(smtp_envid_ok("a\x01", 2));
    char big[SMTP_ENVID_MAX + 1];
    memset(big, 'x', sizeof(big));
    assert_true(smtp_envid_ok(big, SMTP_ENVID_MAX));
    assert_false(smtp_envid_ok(big, SMTP_ENVID_MAX + 1));
}

/* main - pure functions: no setup. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_notify),
        cmocka_unit_test(test_orcpt),
        cmocka_unit_test(test_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
