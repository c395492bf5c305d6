/*
 * test_smtpc_body.c - body to DATA wire form: dot-stuffing, CRLF only (bare
 * CR and bare LF become CRLF, SECURITY.md S2 outbound), the final dot, and
 * the same output whatever the chunk size, and whatever the places where
 * a body that comes in chunks is split. BDAT's form: the same without
 * stuffing and without the final dot.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
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

/* The BDAT form of some of the cases: no stuffing, no final dot. */
static const struct body_case bdat_cases[] = {
    {"empty", "", ""},
    {"one line", "a\r\n", "a\r\n"},
    {"no final CRLF", "a", "a\r\n"},
    {"dots as they are", ".a\r\nb.\r\n.\r\n..\r\n", ".a\r\nb.\r\n.\r\n..\r\n"},
    {"leading dot, no CRLF", ".", ".\r\n"},
    {"smuggling forms", "x\r\n.\r\ny\n.\nz\r.\r", "x\r\n.\r\ny\r\n.\r\nz\r\n.\r\n"},
};

/* body_run - the full wire form of in (BDAT's if bdat), produced cap bytes at a time. */
static char *body_run(const char *in, size_t cap, bool bdat, size_t *out_len)
{
    struct smtpc_body b;
    smtpc_body_init(&b, (const uint8_t *)in, strlen(in));
    if (bdat)
        smtpc_body_bdat(&b);
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
    for (int bdat = 0; bdat < 2; bdat++) {
        const struct body_case *cases = bdat ? bdat_cases : body_cases;
        size_t n = bdat ? sizeof(bdat_cases) / sizeof(bdat_cases[0])
                        : sizeof(body_cases) / sizeof(body_cases[0]);
        for (size_t i = 0; i < n; i++) {
            for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
                size_t len = 0;
                char *out = body_run(cases[i].in, caps[c], bdat != 0, &len);
                if (len != strlen(cases[i].want) || memcmp(out, cases[i].want, len) != 0)
                    fail_msg("%s%s (cap %zu): wrong output", bdat ? "BDAT " : "", cases[i].label,
                             caps[c]);
                free(out);
            }
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
        char *out = body_run(in, 64, false, &len);
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

/*
 * body_run_split - the full wire form of in[0..len), fed as chunks that end
 * at the offsets in cuts (rising, each below len; the last chunk runs to
 * len), each copied to its own allocation so a read past a chunk's end is
 * caught under ASan. Output room is cap bytes at a time.
 */
static char *body_run_split(const char *in,
                            size_t len,
                            const size_t *cuts,
                            size_t n_cuts,
                            size_t cap,
                            size_t *out_len)
{
    struct smtpc_body b;
    smtpc_body_begin(&b);
    size_t alloc = 2 * len + 8, olen = 0, next = 0, from = 0;
    char *out = malloc(alloc);
    uint8_t *chunk = malloc(cap);
    uint8_t *piece = NULL;
    assert_non_null(out);
    assert_non_null(chunk);
    for (int guard = 0; !b.done; guard++) {
        assert_true(guard < 100000);
        if (smtpc_body_need(&b)) {
            size_t to = next < n_cuts ? cuts[next++] : len;
            assert_true(to >= from && to <= len);
            free(piece);
            piece = malloc(to - from + 1);
            assert_non_null(piece);
            memcpy(piece, in + from, to - from);
            smtpc_body_feed(&b, piece, to - from, to == len && next >= n_cuts);
            from = to;
            continue;
        }
        size_t n = smtpc_body_fill(&b, chunk, cap);
        assert_true(n <= cap);
        assert_true(olen + n <= alloc);
        memcpy(out + olen, chunk, n);
        olen += n;
    }
    assert_false(smtpc_body_need(&b));
    free(piece);
    free(chunk);
    *out_len = olen;
    return out;
}

/* Bodies whose line ends and dots fall on chunk edges in every way. */
static const char *const split_bodies[] = {
    "a\r\nb\r\n",
    ".\r\n.\r\n..\r\n.",
    "x\r\n.\r\ny\n.\nz\r.\r",
    "a\r\r\nb\n\r\n\r\r\n.\n\r.",
    "\r",
    "\n",
    ".",
    "\r\n",
    "\r\n.\r\n",
    "line one\r\n.two\rthree\n..four\r\n\r\n.\r\nend",
};

/* test_body_every_split - one cut, then two, at every place: the same bytes as the whole body. */
static void test_body_every_split(void **state)
{
    (void)state;
    static const size_t caps[] = {SMTPC_BODY_FILL_MIN, 7, 64 * 1024};
    for (size_t i = 0; i < sizeof(split_bodies) / sizeof(split_bodies[0]); i++) {
        const char *in = split_bodies[i];
        size_t len = strlen(in), want_len = 0;
        char *want = body_run(in, 64 * 1024, false, &want_len);
        for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
            for (size_t x = 0; x <= len; x++) {
                for (size_t y = x; y <= len; y++) {
                    size_t cuts[2] = {x, y}, got_len = 0;
                    /* y == x also gives an empty chunk between the two halves */
                    char *got = body_run_split(in, len, cuts, 2, caps[c], &got_len);
                    if (got_len != want_len || memcmp(got, want, want_len) != 0)
                        fail_msg("body %zu cut at %zu and %zu (cap %zu): wrong output", i, x, y,
                                 caps[c]);
                    free(got);
                }
            }
        }
        free(want);
    }
}

/* test_body_split_random - random bodies cut into random chunks: the same bytes as whole. */
static void test_body_split_random(void **state)
{
    (void)state;
    static const char alphabet[] = "\r\n.a";
    char in[2048];
    size_t cuts[64];
    unsigned seed = 4242;
    for (int round = 0; round < 200; round++) {
        for (size_t i = 0; i < sizeof(in); i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = alphabet[(seed >> 16) % 4];
        }
        size_t n_cuts = 0, at = 0;
        while (n_cuts < 64) {
            seed = seed * 1103515245u + 12345u;
            at += (seed >> 16) % 80;
            if (at >= sizeof(in))
                break;
            cuts[n_cuts++] = at;
        }
        char whole[sizeof(in) + 1];
        memcpy(whole, in, sizeof(in));
        whole[sizeof(in)] = '\0';
        size_t want_len = 0, got_len = 0;
        char *want = body_run(whole, 64, false, &want_len);
        char *got = body_run_split(in, sizeof(in), cuts, n_cuts, 64, &got_len);
        assert_int_equal(got_len, want_len);
        assert_memory_equal(got, want, want_len);
        free(want);
        free(got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_table),
        cmocka_unit_test(test_body_never_bare),
        cmocka_unit_test(test_body_every_split),
        cmocka_unit_test(test_body_split_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
