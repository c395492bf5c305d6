/*
 * test_smtpc_reply.c - the SMTP reply parser against well-formed and hostile
 * replies (SECURITY.md S21), fed whole and one byte at a time.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "net/smtpc_reply.h"

struct reply_case {
    const char *label;
    const char *in;
    size_t in_len; /* 0: strlen(in) */
    int want_rv;   /* 1 complete, 0 need more, HAMR_EPROTO */
    unsigned want_code;
    size_t want_lines;
    const char *want_text;
    unsigned want_ext;
    uint64_t want_size;
};

static const struct reply_case reply_cases[] = {
    {"single line", "250 ok\r\n", 0, 1, 250, 1, "ok", 0, 0},
    {"bare code", "250\r\n", 0, 1, 250, 1, "", 0, 0},
    {"LF only", "354 go ahead\n", 0, 1, 354, 1, "go ahead", 0, 0},
    {"multi line", "250-a\r\n250-b\r\n250 c\r\n", 0, 1, 250, 3, "a b c", 0, 0},
    {"ehlo", "250-mx.example\r\n250-PIPELINING\r\n250-size 1000\r\n250 8BITMIME\r\n", 0, 1, 250, 4,
     "mx.example PIPELINING size 1000 8BITMIME",
     SMTPC_EXT_PIPELINING | SMTPC_EXT_SIZE | SMTPC_EXT_8BITMIME, 1000},
    {"ehlo keyword prefix is not the keyword", "250-mx\r\n250-PIPELININGX\r\n250 SIZEX 5\r\n", 0, 1,
     250, 3, "mx PIPELININGX SIZEX 5", 0, 0},
    {"ehlo AUTH PLAIN LOGIN", "250-mx\r\n250-AUTH CRAM-MD5 login plain\r\n250 STARTTLS\r\n", 0, 1,
     250, 3, "mx AUTH CRAM-MD5 login plain STARTTLS",
     SMTPC_EXT_AUTH | SMTPC_EXT_AUTH_PLAIN | SMTPC_EXT_AUTH_LOGIN | SMTPC_EXT_STARTTLS, 0},
    {"ehlo old AUTH= line", "250-mx\r\n250 AUTH=LOGIN\r\n", 0, 1, 250, 2, "mx AUTH=LOGIN",
     SMTPC_EXT_AUTH | SMTPC_EXT_AUTH_LOGIN, 0},
    {"ehlo AUTH without usable mechanism", "250-mx\r\n250 AUTH CRAM-MD5 PLAINX XLOGIN\r\n", 0, 1,
     250, 2, "mx AUTH CRAM-MD5 PLAINX XLOGIN", SMTPC_EXT_AUTH, 0},
    {"ehlo AUTHX is not AUTH", "250-mx\r\n250 AUTHX PLAIN\r\n", 0, 1, 250, 2, "mx AUTHX PLAIN", 0,
     0},
    {"ehlo DSN SMTPUTF8 REQUIRETLS", "250-mx\r\n250-dsn\r\n250-SMTPUTF8\r\n250 REQUIRETLS\r\n", 0,
     1, 250, 4, "mx dsn SMTPUTF8 REQUIRETLS",
     SMTPC_EXT_DSN | SMTPC_EXT_SMTPUTF8 | SMTPC_EXT_REQUIRETLS, 0},
    {"ehlo CHUNKING", "250-mx\r\n250-CHUNKING\r\n250 PIPELINING\r\n", 0, 1, 250, 3,
     "mx CHUNKING PIPELINING", SMTPC_EXT_CHUNKING | SMTPC_EXT_PIPELINING, 0},
    {"ehlo extension prefixes are not the extensions", "250-mx\r\n250-DSNX\r\n250 REQUIRETLS2\r\n",
     0, 1, 250, 3, "mx DSNX REQUIRETLS2", 0, 0},
    {"ehlo keyword on first line ignored", "250 PIPELINING\r\n", 0, 1, 250, 1, "PIPELINING", 0, 0},
    {"control chars printable", "550 a\tb\rc\r\n", 0, 1, 550, 1, "a?b?c", 0, 0},
    {"incomplete line", "250 ok", 0, 0, 0, 0, NULL, 0, 0},
    {"incomplete reply", "250-ok\r\n", 0, 0, 0, 0, NULL, 0, 0},
    {"code 2x9", "2x9 ok\r\n", 0, HAMR_EPROTO, 0, 0, NULL, 0, 0},
    {"code 699", "699 ok\r\n", 0, HAMR_EPROTO, 0, 0, NULL, 0, 0},
    {"code 199", "199 ok\r\n", 0, HAMR_EPROTO, 0, 0, NULL, 0, 0},
    {"two digits", "25 ok\r\n", 0, HAMR_EPROTO, 0, 0, NULL, 0, 0},
    {"no separator", "250ok\r\n", 0, HAMR_EPROTO, 0, 0, NULL, 0, 0},
    {"empty line", "\r\n", 0, HAMR_EPROTO, 0, 0, NULL, 0, 0},
    {"mixed codes", "250-a\r\n251 b\r\n", 0, HAMR_EPROTO, 0, 0, NULL, 0, 0},
    {"NUL", "250 o\0k\r\n", 9, HAMR_EPROTO, 0, 0, NULL, 0, 0},
};

/* feed_all - feed in (len) in pieces of step bytes; returns the last rv. */
static int feed_all(struct smtpc_reply_parser *p,
                    const char *in,
                    size_t len,
                    size_t step,
                    size_t *consumed)
{
    size_t off = 0;
    int rv = 0;
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        size_t used = 0;
        rv = smtpc_reply_feed(p, in + off, n, &used);
        assert_true(used <= n);
        off += used;
        if (rv != 0)
            break;
    }
    *consumed = off;
    return rv;
}

/* test_reply_table - every case, whole and byte by byte. */
static void test_reply_table(void **state)
{
    (void)state;
    static const size_t steps[] = {1, 3, 1 << 20};
    for (size_t i = 0; i < sizeof(reply_cases) / sizeof(reply_cases[0]); i++) {
        const struct reply_case *tc = &reply_cases[i];
        size_t len = tc->in_len ? tc->in_len : strlen(tc->in);
        for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
            struct smtpc_reply_parser p;
            smtpc_reply_init(&p);
            size_t consumed = 0;
            int rv = feed_all(&p, tc->in, len, steps[s], &consumed);
            if (rv != tc->want_rv)
                fail_msg("%s (step %zu): rv %d, want %d", tc->label, steps[s], rv, tc->want_rv);
            if (rv != 1)
                continue;
            assert_int_equal(consumed, len);
            assert_int_equal(p.reply.code, tc->want_code);
            assert_int_equal(p.reply.n_lines, tc->want_lines);
            assert_string_equal(p.reply.text, tc->want_text);
            assert_int_equal(p.reply.ext, tc->want_ext);
            assert_int_equal(p.reply.size_limit, tc->want_size);
        }
    }
}

/* test_reply_two_in_one_buffer - the parser stops after the first reply. */
static void test_reply_two_in_one_buffer(void **state)
{
    (void)state;
    const char *in = "250 first\r\n354 second\r\n";
    struct smtpc_reply_parser p;
    smtpc_reply_init(&p);
    size_t used = 0;
    assert_int_equal(smtpc_reply_feed(&p, in, strlen(in), &used), 1);
    assert_int_equal(used, strlen("250 first\r\n"));
    assert_int_equal(p.reply.code, 250);
    smtpc_reply_next(&p);
    size_t used2 = 0;
    assert_int_equal(smtpc_reply_feed(&p, in + used, strlen(in) - used, &used2), 1);
    assert_int_equal(p.reply.code, 354);
    assert_string_equal(p.reply.text, "second");
}

/* test_reply_line_limit - 2048 bytes of line pass, 2049 do not (also without LF). */
static void test_reply_line_limit(void **state)
{
    (void)state;
    static const struct {
        size_t text_len;
        bool crlf;
        int want;
    } cases[] = {
        {SMTPC_REPLY_LINE_MAX - 4, true, 1},
        {SMTPC_REPLY_LINE_MAX - 4, false, 1},
        {SMTPC_REPLY_LINE_MAX - 3, true, HAMR_EPROTO},
        {SMTPC_REPLY_LINE_MAX - 3, false, HAMR_EPROTO},
        {5000, true, HAMR_EPROTO},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = 4 + cases[i].text_len + (cases[i].crlf ? 2 : 1);
        char *in = malloc(len);
        assert_non_null(in);
        memcpy(in, "250 ", 4);
        memset(in + 4, 'x', cases[i].text_len);
        if (cases[i].crlf)
            memcpy(in + len - 2, "\r\n", 2);
        else
            in[len - 1] = '\n';
        struct smtpc_reply_parser p;
        smtpc_reply_init(&p);
        size_t used = 0;
        int rv = feed_all(&p, in, len, 1 << 20, &used);
        assert_int_equal(rv, cases[i].want);
        if (rv == 1)
            assert_int_equal(p.reply.text_len, SMTPC_REPLY_TEXT_MAX - 1);
        free(in);
    }
}

/* test_reply_line_count_limit - 100 lines pass, 101 do not. */
static void test_reply_line_count_limit(void **state)
{
    (void)state;
    for (size_t n = SMTPC_REPLY_LINES_MAX; n <= SMTPC_REPLY_LINES_MAX + 1; n++) {
        struct smtpc_reply_parser p;
        smtpc_reply_init(&p);
        int rv = 0;
        for (size_t i = 0; i < n; i++) {
            const char *line = i + 1 < n ? "250-x\r\n" : "250 x\r\n";
            size_t used = 0;
            rv = smtpc_reply_feed(&p, line, strlen(line), &used);
            if (rv != 0)
                break;
        }
        assert_int_equal(rv, n <= SMTPC_REPLY_LINES_MAX ? 1 : HAMR_EPROTO);
    }
}

/* test_reply_error_sticky - after a malformed reply nothing parses again. */
static void test_reply_error_sticky(void **state)
{
    (void)state;
    struct smtpc_reply_parser p;
    smtpc_reply_init(&p);
    size_t used = 0;
    assert_int_equal(smtpc_reply_feed(&p, "2x9 no\r\n", 8, &used), HAMR_EPROTO);
    assert_true(strlen(p.errmsg) > 0);
    assert_int_equal(smtpc_reply_feed(&p, "250 ok\r\n", 8, &used), HAMR_EPROTO);
    assert_int_equal(used, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_table),        cmocka_unit_test(test_reply_two_in_one_buffer),
        cmocka_unit_test(test_reply_line_limit),   cmocka_unit_test(test_reply_line_count_limit),
        cmocka_unit_test(test_reply_error_sticky),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
