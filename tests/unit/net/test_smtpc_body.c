/*
 * test_smtpc_body.c - body to DATA wire form: dot-stuffing, CRLF only (bare
 * CR and bare LF become CRLF, SECURITY.md S2 outbound), the final dot, and
 * the same output whatever the chunk size.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "net/smtpc_body.h"

struct body_case {
    const char *label;
    const char *in;
    const char *want;
};

static const struct body_case body_cases[] = {
    {"empty", "", ".\r\n"},
    {"one line", "a\r\n", "a\r\n.\r\n"},
    {"no final CRLF", "a", "a\r\n.\r\n"},
    {"dot stuffing", ".a\r\nb.\r\n.\r\n..\r\n", "..a\r\nb.\r\n..\r\n...\r\n.\r\n"},
    {"leading dot, no CRLF", ".", "..\r\n.\r\n"},
    {"bare LF", "a\nb\n", "a\r\nb\r\n.\r\n"},
    {"bare CR", "a\rb\r", "a\r\nb\r\n.\r\n"},
    {"smuggling forms", "x\r\n.\r\ny\n.\nz\r.\r", "x\r\n..\r\ny\r\n..\r\nz\r\n..\r\n.\r\n"},
    {"CR CR LF", "a\r\r\nb", "a\r\n\r\nb\r\n.\r\n"},
    {"LF CR", "a\n\rb", "a\r\n\r\nb\r\n.\r\n"},
};

/* body_run - the full wire form of in, produced cap bytes at a time. */
static char *body_run(const char *in, size_t cap, size_t *out_len)
{
    struct smtpc_body b;
    smtpc_body_init(&b, (const uint8_t *)in, strlen(in));
    size_t alloc = 2 * strlen(in) + 8, len = 0;
    char *out = malloc(alloc);
    assert_non_null(out);
    uint8_t *chunk = malloc(cap);
    assert_non_null(chunk);
    for (int guard = 0; !b.done; guard++) {
        assert_true(guard < 10000);
        size_t n = smtpc_body_fill(&b, chunk, cap);
        assert_true(n <= cap);
        assert_true(len + n <= alloc);
        memcpy(out + len, chunk, n);
        len += n;
    }
    assert_int_equal(smtpc_body_fill(&b, chunk, cap), 0);
    free(chunk);
    *out_len = len;
    return out;
}

/* test_body_table - every case with chunk sizes from the minimum up. */
static void test_body_table(void **state)
{
    (void)state;
    static const size_t caps[] = {SMTPC_BODY_FILL_MIN, 6, 7, 64 * 1024};
    for (size_t i = 0; i < sizeof(body_cases) / sizeof(body_cases[0]); i++) {
        for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
            size_t len = 0;
            char *out = body_run(body_cases[i].in, caps[c], &len);
            if (len != strlen(body_cases[i].want) || memcmp(out, body_cases[i].want, len) != 0)
                fail_msg("%s (cap %zu): wrong output", body_cases[i].label, caps[c]);
            free(out);
        }
    }
}

/* test_body_never_bare - random bytes: every CR is followed by LF and every LF follows a CR. */
static void test_body_never_bare(void **state)
{
    (void)state;
    static const char alphabet[] = "\r\n.a";
    char in[4096];
    unsigned seed = 12345;
    for (int round = 0; round < 50; round++) {
        for (size_t i = 0; i + 1 < sizeof(in); i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = alphabet[(seed >> 16) % 4];
        }
        in[sizeof(in) - 1] = '\0';
        size_t len = 0;
        char *out = body_run(in, 64, &len);
        assert_true(len >= 3);
        assert_memory_equal(out + len - 3, ".\r\n", 3);
        for (size_t i = 0; i < len; i++) {
            if (out[i] == '\r')
                assert_true(i + 1 < len && out[i + 1] == '\n');
            if (out[i] == '\n')
                assert_true(i > 0 && out[i - 1] == '\r');
        }
        /* The only line that is exactly "." is the last one. */
        for (size_t i = 0; i + 5 <= len; i++)
            if (memcmp(out + i, "\r\n.\r\n", 5) == 0)
                assert_int_equal(i + 5, len);
        free(out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_table),
        cmocka_unit_test(test_body_never_bare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
