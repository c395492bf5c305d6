/*
 * test_smtpd_reader.c - unit tests of the SMTP input parser (net/smtpd_reader).
 *
 * Covers: command line splitting across arbitrary chunk boundaries, bare
 * LF / bare CR / NUL in command lines, the 2048-octet limit and the discard
 * of an over-long line's tail, every SMTP smuggling terminator of
 * SECURITY.md S1-S3 inside DATA, dot-unstuffing, the size and header limits,
 * the Received: count, and two properties on generated input: re-stuffing a
 * parsed body parses back to the same body, and DATA ends exactly at the
 * first CRLF.CRLF whatever the chunking.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/common.h"
#include "net/smtpd_reader.h"

/* test_name - short text for an event, to compare event sequences. */
static const char *test_name(enum smtpd_reader_event ev)
{
    switch (ev) {
        case SMTPD_READER_NEED_MORE:
            return "MORE";
        case SMTPD_READER_LINE:
            return "LINE";
        case SMTPD_READER_LINE_TOO_LONG:
            return "TOOLONG";
        case SMTPD_READER_LINE_BARE_LF:
            return "BARELF";
        case SMTPD_READER_LINE_BARE_CR:
            return "BARECR";
        case SMTPD_READER_LINE_NUL:
            return "NUL";
        case SMTPD_READER_DATA_END:
            return "END";
        case SMTPD_READER_CHUNK_END:
            return "CHUNK";
    }
    return "?";
}

/*
 * test_commands - feed in[0..len) in pieces of chunk octets (0: all at
 * once) and write the events as "LINE(text)|TOOLONG|..." into out.
 */
static void test_commands(const char *in, size_t len, size_t chunk, char *out, size_t outlen)
{
    struct smtpd_reader r;
    size_t pos = 0;

    smtpd_reader_init(&r);
    out[0] = '\0';
    while (pos < len) {
        size_t n = chunk == 0 || chunk > len - pos ? len - pos : chunk;
        size_t off = 0;
        while (off < n) {
            size_t used = 0;
            enum smtpd_reader_event ev =
                smtpd_reader_feed(&r, (const uint8_t *)in + pos + off, n - off, &used);
            assert_true(used > 0);
            assert_true(used <= n - off);
            off += used;
            if (ev == SMTPD_READER_NEED_MORE) {
                assert_int_equal(off, n);
                continue;
            }
            size_t l = strlen(out);
            if (ev == SMTPD_READER_LINE)
                snprintf(out + l, outlen - l, "%sLINE(%s)", l ? "|" : "",
                         smtpd_reader_line(&r, NULL));
            else
                snprintf(out + l, outlen - l, "%s%s", l ? "|" : "", test_name(ev));
        }
        pos += n;
    }
}

/* Command-mode cases: input (with explicit length for NULs) and events. */
static const struct {
    const char *label;
    const char *in;
    size_t len;
    const char *want;
} test_command_cases[] = {
#define T(label, in, want)              \
    {                                   \
        label, in, sizeof(in) - 1, want \
    }
    T("one line", "EHLO a.example\r\n", "LINE(EHLO a.example)"),
    T("two lines",
      "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
      "LINE(MAIL FROM:<a@b>)|LINE(RCPT TO:<c@d>)"),
    T("empty line", "\r\n", "LINE()"),
    T("incomplete", "NOOP", ""),
    T("incomplete CR", "NOOP\r", ""),
    T("bare LF is no line end", "RSET\nQUIT\r\n", "BARELF"),
    T("bare LF then line", "RSET\n\r\nNOOP\r\n", "BARELF|LINE(NOOP)"),
    T("bare CR is no line end", "RSET\rQUIT\r\n", "BARECR"),
    T("CR CR LF", "NOOP\r\r\n", "BARECR"),
    T("NUL", "NO\0OP\r\n", "NUL"),
    T("NUL wins over bare LF", "A\nB\0\r\n", "NUL"),
    T("LF CR", "NOOP\n\r\nQUIT\r\n", "BARELF|LINE(QUIT)"),
    T("line after bad line", "X\rY\r\nQUIT\r\n", "BARECR|LINE(QUIT)"),
#undef T
};

/* test_command_table - each case gives the same events whole and byte by byte. */
static void test_command_table(void **state)
{
    char whole[4096], bytes[4096], threes[4096];

    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_command_cases); i++) {
        const char *in = test_command_cases[i].in;
        size_t len = test_command_cases[i].len;
        test_commands(in, len, 0, whole, sizeof(whole));
        test_commands(in, len, 1, bytes, sizeof(bytes));
        test_commands(in, len, 3, threes, sizeof(threes));
        if (strcmp(whole, test_command_cases[i].want) != 0)
            fail_msg("%s: got \"%s\" want \"%s\"", test_command_cases[i].label, whole,
                     test_command_cases[i].want);
        assert_string_equal(bytes, whole);
        assert_string_equal(threes, whole);
    }
}

/*
 * test_line_limit - SMTPD_READER_LINE_MAX (2048) octets with CRLF is a
 * line; one more is too long (RFC 5321 4.5.3.1.4 as raised by RFC 3461).
 */
static void test_line_limit(void **state)
{
    enum { MAX = SMTPD_READER_LINE_MAX };
    char in[MAX + 16], out[MAX + 64], want[MAX + 16];

    assert_int_equal(MAX, 2048);
    memset(in, 'A', MAX - 2);
    memcpy(in + MAX - 2, "\r\n", 2);
    test_commands(in, MAX, 0, out, sizeof(out));
    snprintf(want, sizeof(want), "LINE(%.*s)", MAX - 2, in);
    assert_string_equal(out, want);
    test_commands(in, MAX, 1, out, sizeof(out));
    assert_string_equal(out, want);

    memset(in, 'A', MAX - 1);
    memcpy(in + MAX - 1, "\r\nNOOP\r\n", 8);
    test_commands(in, MAX + 7, 0, out, sizeof(out));
    assert_string_equal(out, "TOOLONG|LINE(NOOP)");
    test_commands(in, MAX + 7, 1, out, sizeof(out));
    assert_string_equal(out, "TOOLONG|LINE(NOOP)");
}

/* test_long_line_tail_discarded - "...AAAA RSET\r\n" never yields RSET (SECURITY.md S6). */
static void test_long_line_tail_discarded(void **state)
{
    static const char tail[] = " RSET\r\nQUIT\r\n";
    size_t len = 10000 + sizeof(tail) - 1;
    char *in = malloc(len);
    char out[256];

    assert_non_null(in);
    memcpy(in, "MAIL FROM:<", 11);
    memset(in + 11, 'A', 10000 - 11);
    memcpy(in + 10000, tail, sizeof(tail) - 1);
    for (size_t chunk = 0; chunk <= 7; chunk++) {
        test_commands(in, len, chunk, out, sizeof(out));
        assert_string_equal(out, "TOOLONG|LINE(QUIT)");
    }
    /* A tail that holds bare CR/LF is dropped too, and the next line is clean. */
    memcpy(in + SMTPD_READER_LINE_MAX + 100, "\rRSET\n", 6);
    test_commands(in, len, 0, out, sizeof(out));
    assert_string_equal(out, "TOOLONG|LINE(QUIT)");
    free(in);
}

/* test_megabyte_without_crlf - one report, nothing buffered, no event after. */
static void test_megabyte_without_crlf(void **state)
{
    size_t len = 1024 * 1024;
    char *in = malloc(len);
    char out[256];

    assert_non_null(in);
    memset(in, 'x', len);
    test_commands(in, len, 4096, out, sizeof(out));
    assert_string_equal(out, "TOOLONG");
    free(in);
}

/* ------------------------------------------------------------------ */
/* DATA mode                                                           */
/* ------------------------------------------------------------------ */

struct test_data_result {
    bool ended;
    size_t consumed; /* octets of input up to and including the terminator */
    struct buf body;
    struct smtpd_reader_data data;
};

/*
 * test_data - run in[0..len) through DATA mode in chunk-sized pieces
 * (0: whole; SIZE_MAX: random pieces from seed). Stops at DATA_END.
 */
static void test_data(const char *in,
                      size_t len,
                      size_t chunk,
                      size_t size_limit,
                      size_t header_limit,
                      struct test_data_result *res)
{
    struct smtpd_reader r;
    size_t pos = 0;
    uint32_t rnd = (uint32_t)len * 2654435761u + 1;

    smtpd_reader_init(&r);
    buf_init(&res->body, 0);
    smtpd_reader_start_data(&r, &res->body, size_limit, header_limit);
    assert_int_equal(smtpd_reader_mode(&r), SMTPD_READER_MODE_DATA);
    res->ended = false;
    res->consumed = 0;
    while (pos < len && !res->ended) {
        size_t n = len - pos;
        if (chunk == SIZE_MAX) {
            rnd ^= rnd << 13, rnd ^= rnd >> 17, rnd ^= rnd << 5;
            n = 1 + rnd % 9;
            if (n > len - pos)
                n = len - pos;
        } else if (chunk != 0 && chunk < n) {
            n = chunk;
        }
        size_t used = 0;
        enum smtpd_reader_event ev = smtpd_reader_feed(&r, (const uint8_t *)in + pos, n, &used);
        pos += used;
        if (ev == SMTPD_READER_DATA_END) {
            res->ended = true;
            res->consumed = pos;
            assert_int_equal(smtpd_reader_mode(&r), SMTPD_READER_MODE_COMMAND);
        } else {
            assert_int_equal(ev, SMTPD_READER_NEED_MORE);
            assert_int_equal(used, n);
        }
    }
    res->data = *smtpd_reader_data(&r);
}

/* test_body_is - the body equals want[0..wantlen). */
static void test_body_is(const struct test_data_result *res, const char *want, size_t wantlen)
{
    assert_int_equal(res->body.len, wantlen);
    if (wantlen > 0)
        assert_memory_equal(res->body.data, want, wantlen);
}

#define TEST_BIG ((size_t)1 << 30)

/* Dot-unstuffing and termination (RFC 5321 4.5.2). */
static const struct {
    const char *label;
    const char *in;
    size_t len;
    const char *body;
    size_t body_len;
} test_unstuff_cases[] = {
#define T(label, in, body)                                \
    {                                                     \
        label, in, sizeof(in) - 1, body, sizeof(body) - 1 \
    }
    T("empty message", ".\r\n", ""),
    T("one line", "hello\r\n.\r\n", "hello\r\n"),
    T("stuffed dot line", "..\r\n.\r\n", ".\r\n"),
    T("stuffed dots", "...x\r\n.\r\n", "..x\r\n"),
    T("stuffed mid message", "a\r\n..b\r\n.\r\n", "a\r\n.b\r\n"),
    T("dot inside a line", "x.\r\n.\r\n", "x.\r\n"),
    T("dot line then more", "a\r\n..\r\nb\r\n.\r\n", "a\r\n.\r\nb\r\n"),
    T("empty lines", "\r\n\r\n.\r\n", "\r\n\r\n"),
#undef T
};

/* test_unstuff_table - each case whole, byte by byte and in random pieces. */
static void test_unstuff_table(void **state)
{
    static const size_t chunks[] = {0, 1, 2, SIZE_MAX};

    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_unstuff_cases); i++) {
        for (size_t c = 0; c < HAMR_ARRAY_LEN(chunks); c++) {
            struct test_data_result res;
            test_data(test_unstuff_cases[i].in, test_unstuff_cases[i].len, chunks[c], TEST_BIG,
                      TEST_BIG, &res);
            if (!res.ended)
                fail_msg("%s: no end of data", test_unstuff_cases[i].label);
            assert_int_equal(res.consumed, test_unstuff_cases[i].len);
            test_body_is(&res, test_unstuff_cases[i].body, test_unstuff_cases[i].body_len);
            assert_false(res.data.bare_lf || res.data.bare_cr || res.data.nul);
            assert_int_equal(res.data.size, test_unstuff_cases[i].body_len);
            buf_free(&res.body);
        }
    }
}

/* SMTP smuggling terminators (SECURITY.md S1, S2, S3): never an end, always flagged. */
static const struct {
    const char *label;
    const char *fake;
    size_t len;
    bool bare_lf, bare_cr, nul;
} test_smuggle_cases[] = {
#define T(fake, lf, cr, nul)                       \
    {                                              \
#fake, fake, sizeof(fake) - 1, lf, cr, nul \
    }
    T("\n.\n", true, false, false),         T("\n.\r\n", true, false, false),
    T("\r.\r", false, true, false),         T("\r.\r\n", false, true, false),
    T("\n.\r", true, true, false),          T("\r\n.\r", false, true, false),
    T("\r\n.\n", true, false, false),       T("\r\n\x00.\r\n", false, false, true),
    T("\r\n.\x00\r\n", false, false, true),
#undef T
};

/* test_smuggling - the fake end is data; DATA ends only at the real CRLF.CRLF. */
static void test_smuggling(void **state)
{
    static const char head[] = "From: a@example.org\r\nSubject: x\r\n\r\nbody";
    static const char smuggled[] = "MAIL FROM:<smuggled@x>\r\nRCPT TO:<v@x>\r\nDATA\r\nevil\r\n";
    static const char end[] = "\r\n.\r\n";
    static const char after[] = "QUIT\r\n";
    static const size_t chunks[] = {0, 1, SIZE_MAX};

    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_smuggle_cases); i++) {
        char in[512];
        size_t len = 0;
        memcpy(in + len, head, sizeof(head) - 1), len += sizeof(head) - 1;
        memcpy(in + len, test_smuggle_cases[i].fake, test_smuggle_cases[i].len);
        len += test_smuggle_cases[i].len;
        memcpy(in + len, smuggled, sizeof(smuggled) - 1), len += sizeof(smuggled) - 1;
        memcpy(in + len, end, sizeof(end) - 1), len += sizeof(end) - 1;
        size_t real_end = len;
        memcpy(in + len, after, sizeof(after) - 1), len += sizeof(after) - 1;

        for (size_t c = 0; c < HAMR_ARRAY_LEN(chunks); c++) {
            struct test_data_result res;
            test_data(in, len, chunks[c], TEST_BIG, TEST_BIG, &res);
            if (!res.ended || res.consumed != real_end)
                fail_msg("form %s: ended=%d at %zu, want %zu", test_smuggle_cases[i].label,
                         res.ended, res.consumed, real_end);
            assert_int_equal(res.data.bare_lf, test_smuggle_cases[i].bare_lf);
            assert_int_equal(res.data.bare_cr, test_smuggle_cases[i].bare_cr);
            assert_int_equal(res.data.nul, test_smuggle_cases[i].nul);
            /* The smuggled commands are in the body, where they belong. */
            assert_non_null(memmem(res.body.data, res.body.len, "MAIL FROM:<smuggled@x>", 22));
            buf_free(&res.body);
        }
    }
}

/* test_size_limit - past the limit: keep reading to the end, store no more (RFC 1870). */
static void test_size_limit(void **state)
{
    char in[2048];
    size_t len = 0;

    for (int i = 0; i < 100; i++)
        len += (size_t)snprintf(in + len, sizeof(in) - len, "line %03d\r\n", i);
    size_t body_len = len;
    len += (size_t)snprintf(in + len, sizeof(in) - len, ".\r\nNOOP\r\n");

    struct test_data_result res;
    test_data(in, len, 7, 100, TEST_BIG, &res);
    assert_true(res.ended);
    assert_int_equal(res.consumed, len - 6);
    assert_true(res.data.too_big);
    assert_int_equal(res.data.size, body_len);
    assert_true(res.body.len <= 100);
    buf_free(&res.body);

    /* Exactly at the limit is fine. */
    test_data(in, len, 0, body_len, TEST_BIG, &res);
    assert_false(res.data.too_big);
    assert_int_equal(res.body.len, body_len);
    buf_free(&res.body);
}

/* test_reader_back_to_commands - after DATA_END the same reader parses commands. */
static void test_reader_back_to_commands(void **state)
{
    static const char in[] = "x\r\n.\r\nNOOP\r\n";
    struct smtpd_reader r;
    struct buf body;
    size_t used;

    smtpd_reader_init(&r);
    buf_init(&body, 0);
    smtpd_reader_start_data(&r, &body, TEST_BIG, TEST_BIG);
    assert_int_equal(smtpd_reader_feed(&r, (const uint8_t *)in, sizeof(in) - 1, &used),
                     SMTPD_READER_DATA_END);
    assert_int_equal(used, 6);
    assert_int_equal(smtpd_reader_feed(&r, (const uint8_t *)in + 6, sizeof(in) - 7, &used),
                     SMTPD_READER_LINE);
    assert_string_equal(smtpd_reader_line(&r, NULL), "NOOP");
    buf_free(&body);
}

/* Header block: size and Received: count (RFC 5322 2.2; Postfix hopcount). */
static const struct {
    const char *label;
    const char *in;
    size_t header_size;
    unsigned received;
} test_header_cases[] = {
    {"no header", "\r\nbody\r\n.\r\n", 0, 0},
    {"one header", "Subject: a\r\n\r\nReceived: no\r\n.\r\n", 12, 0},
    {"received fields",
     "Received: from a\r\nreceived: from b\r\n\tby c\r\nRECEIVED:x\r\nReceived-SPF: pass\r\n"
     "X-Note: Received: no\r\n\r\nReceived: body\r\n.\r\n",
     18 + 18 + 7 + 12 + 20 + 22, 3},
    {"non-header line ends the block", "Subject: a\r\nnot a header\r\nReceived: x\r\n\r\n.\r\n", 12,
     0},
    {"no empty line", "Received: a\r\n.\r\n", 13, 1},
};

/* test_header_table - header sizes and hop counts. */
static void test_header_table(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_header_cases); i++) {
        struct test_data_result res;
        const char *in = test_header_cases[i].in;
        test_data(in, strlen(in), 1, TEST_BIG, TEST_BIG, &res);
        assert_true(res.ended);
        if (res.data.header_size != test_header_cases[i].header_size ||
            res.data.received != test_header_cases[i].received)
            fail_msg("%s: header_size %zu received %u", test_header_cases[i].label,
                     res.data.header_size, res.data.received);
        assert_false(res.data.header_too_big);
        buf_free(&res.body);
    }
}

/* test_header_limit - a header block over the limit is flagged, the message still ends. */
static void test_header_limit(void **state)
{
    char in[4096];
    size_t len = (size_t)snprintf(in, sizeof(in), "Subject: ");
    memset(in + len, 'x', 1000);
    len += 1000;
    len += (size_t)snprintf(in + len, sizeof(in) - len, "\r\n\r\nbody\r\n.\r\n");

    struct test_data_result res;
    test_data(in, len, 0, TEST_BIG, 500, &res);
    assert_true(res.ended);
    assert_true(res.data.header_too_big);
    buf_free(&res.body);

    test_data(in, len, 0, TEST_BIG, 2000, &res);
    assert_false(res.data.header_too_big);
    assert_int_equal(res.data.header_size, 9 + 1000 + 2);
    buf_free(&res.body);

    /* 50 Received: fields are counted one by one. */
    len = 0;
    for (int i = 0; i < 50; i++)
        len += (size_t)snprintf(in + len, sizeof(in) - len, "Received: from h%d\r\n", i);
    len += (size_t)snprintf(in + len, sizeof(in) - len, "\r\nx\r\n.\r\n");
    test_data(in, len, 5, TEST_BIG, TEST_BIG, &res);
    assert_int_equal(res.data.received, 50);
    buf_free(&res.body);
}

/* ------------------------------------------------------------------ */
/* Properties on generated input                                       */
/* ------------------------------------------------------------------ */

/* test_rand - xorshift32, deterministic. */
static uint32_t test_rand(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

/*
 * test_restuff - RFC 5321 4.5.2 transparency: double a dot at each line
 * start (start, or after CRLF), then end with CRLF.CRLF, not repeating a
 * CRLF the body already ends with. Returns the length written.
 */
static size_t test_restuff(const uint8_t *body, size_t len, char *out)
{
    size_t o = 0;
    bool bol = true;

    for (size_t i = 0; i < len; i++) {
        if (bol && body[i] == '.')
            out[o++] = '.';
        out[o++] = (char)body[i];
        bol = body[i] == '\n' && i > 0 && body[i - 1] == '\r';
    }
    if (len == 0 || bol) {
        memcpy(out + o, ".\r\n", 3);
        return o + 3;
    }
    memcpy(out + o, "\r\n.\r\n", 5);
    return o + 5;
}

/* test_roundtrip_valid_bodies - parse(restuff(B)) == B for clean generated bodies. */
static void test_roundtrip_valid_bodies(void **state)
{
    static const char alphabet[] = "..a :R\tb.";
    uint32_t seed = 12345;

    for (int iter = 0; iter < 400; iter++) {
        char body[2048], in[4200];
        size_t len = 0;
        int lines = (int)(test_rand(&seed) % 12);
        for (int l = 0; l < lines; l++) {
            int n = (int)(test_rand(&seed) % 20);
            for (int k = 0; k < n; k++)
                body[len++] = alphabet[test_rand(&seed) % (sizeof(alphabet) - 1)];
            body[len++] = '\r';
            body[len++] = '\n';
        }
        size_t inlen = test_restuff((const uint8_t *)body, len, in);
        struct test_data_result res;
        test_data(in, inlen, (iter % 3 == 0) ? 1 : SIZE_MAX, TEST_BIG, TEST_BIG, &res);
        assert_true(res.ended);
        assert_int_equal(res.consumed, inlen);
        test_body_is(&res, body, len);
        assert_false(res.data.bare_lf || res.data.bare_cr || res.data.nul);
        buf_free(&res.body);
    }
}

/* test_first_terminator - the naive answer: first CRLF.CRLF in CRLF + in. */
static size_t test_first_terminator(const char *in, size_t len)
{
    /* Data begins as if after a CRLF, so ".\r\n" at the start ends it too. */
    if (len >= 3 && memcmp(in, ".\r\n", 3) == 0)
        return 3;
    const char *p = memmem(in, len, "\r\n.\r\n", 5);
    return p == NULL ? 0 : (size_t)(p - in) + 5;
}

/*
 * test_property_random_octets - for random octets from {CR, LF, '.', 'a',
 * NUL}: DATA ends exactly at the first CRLF.CRLF, the same for every
 * chunking, and the body re-stuffed parses back to itself.
 */
static void test_property_random_octets(void **state)
{
    static const char alphabet[] = {'\r', '\n', '.', 'a', '\0', '\r', '\n', '.'};
    uint32_t seed = 987654321;

    for (int iter = 0; iter < 600; iter++) {
        char in[256];
        size_t len = 1 + test_rand(&seed) % (sizeof(in) - 1);
        for (size_t k = 0; k < len; k++)
            in[k] = alphabet[test_rand(&seed) % sizeof(alphabet)];
        size_t want_end = test_first_terminator(in, len);

        struct test_data_result whole, bytes, pieces;
        test_data(in, len, 0, TEST_BIG, TEST_BIG, &whole);
        test_data(in, len, 1, TEST_BIG, TEST_BIG, &bytes);
        test_data(in, len, SIZE_MAX, TEST_BIG, TEST_BIG, &pieces);
        assert_int_equal(whole.ended, want_end != 0);
        if (want_end != 0)
            assert_int_equal(whole.consumed, want_end);
        assert_int_equal(bytes.ended, whole.ended);
        assert_int_equal(bytes.consumed, whole.consumed);
        assert_int_equal(pieces.consumed, whole.consumed);
        test_body_is(&bytes, (const char *)whole.body.data, whole.body.len);
        test_body_is(&pieces, (const char *)whole.body.data, whole.body.len);
        assert_int_equal(bytes.data.bare_lf, whole.data.bare_lf);
        assert_int_equal(bytes.data.bare_cr, whole.data.bare_cr);
        assert_int_equal(bytes.data.nul, whole.data.nul);

        if (whole.ended) {
            char again[600];
            size_t alen = test_restuff(whole.body.data, whole.body.len, again);
            bool ends_crlf = whole.body.len == 0 ||
                             (whole.body.len >= 2 &&
                              memcmp(whole.body.data + whole.body.len - 2, "\r\n", 2) == 0);
            struct test_data_result back;
            test_data(again, alen, 0, TEST_BIG, TEST_BIG, &back);
            assert_true(back.ended);
            assert_int_equal(back.consumed, alen);
            /* A body not ending in CRLF gets one from the re-stuffing. */
            assert_int_equal(back.body.len, whole.body.len + (ends_crlf ? 0 : 2));
            if (whole.body.len > 0)
                assert_memory_equal(back.body.data, whole.body.data, whole.body.len);
            buf_free(&back.body);
        }
        buf_free(&whole.body);
        buf_free(&bytes.body);
        buf_free(&pieces.body);
    }
}

/* main - run every test. */
/*
 * test_chunk_feed - feed one BDAT chunk in pieces of step octets (0: all
 * at once); the chunk must end exactly after its size, leaving the rest.
 */
static size_t test_chunk_feed(struct smtpd_reader *r, const char *in, size_t len, size_t step)
{
    size_t pos = 0;
    for (;;) {
        size_t n = step == 0 || step > len - pos ? len - pos : step;
        size_t used = 0;
        enum smtpd_reader_event ev = smtpd_reader_feed(r, (const uint8_t *)in + pos, n, &used);
        pos += used;
        if (ev == SMTPD_READER_CHUNK_END)
            return pos;
        assert_int_equal(ev, SMTPD_READER_NEED_MORE);
        assert_true(pos < len);
    }
}

/*
 * test_bdat_chunks - BDAT (RFC 3030): octets taken as they are (no
 * unstuffing, "." lines and CRLF.CRLF are data); a chunk ends by count and
 * what follows is commands again; a CRLF split between chunks is one CRLF;
 * bare LF, bare CR (also a CR that ends the LAST chunk) and NUL are flagged
 * as in DATA; dropped chunks store nothing; the size limit holds; a last
 * line without CRLF gets one.
 */
static void test_bdat_chunks(void **state)
{
    (void)state;
    static const char c1[] = "Subject: x\r\nReceived: a\r\n\r\n.\r\n..dot\r";
    static const char c2[] = "\nend\r\n";
    for (size_t step = 0; step < 4; step++) {
        struct smtpd_reader r;
        struct buf body;
        char in[256];
        buf_init(&body, 1 << 20);
        smtpd_reader_init(&r);
        smtpd_reader_start_bdat(&r, &body, 1 << 20, 1 << 20);
        assert_int_equal(smtpd_reader_mode(&r), SMTPD_READER_MODE_COMMAND);
        int n = snprintf(in, sizeof(in), "%sRSET\r\n", c1);
        smtpd_reader_start_chunk(&r, sizeof(c1) - 1, true);
        assert_int_equal(smtpd_reader_mode(&r), SMTPD_READER_MODE_CHUNK);
        assert_int_equal(test_chunk_feed(&r, in, (size_t)n, step), sizeof(c1) - 1);
        assert_int_equal(smtpd_reader_mode(&r), SMTPD_READER_MODE_COMMAND);
        size_t used = 0;
        assert_int_equal(smtpd_reader_feed(&r, (const uint8_t *)in + sizeof(c1) - 1, 6, &used),
                         SMTPD_READER_LINE);
        assert_string_equal(smtpd_reader_line(&r, NULL), "RSET");
        smtpd_reader_start_chunk(&r, sizeof(c2) - 1, true);
        assert_int_equal(test_chunk_feed(&r, c2, sizeof(c2) - 1, step), sizeof(c2) - 1);
        smtpd_reader_end_bdat(&r);
        const struct smtpd_reader_data *d = smtpd_reader_data(&r);
        assert_false(d->bare_lf || d->bare_cr || d->nul || d->too_big);
        assert_int_equal(d->received, 1);
        assert_int_equal(d->size, sizeof(c1) - 1 + sizeof(c2) - 1);
        assert_int_equal(body.len, d->size);
        assert_memory_equal(body.data, c1, sizeof(c1) - 1);
        assert_memory_equal(body.data + sizeof(c1) - 1, c2, sizeof(c2) - 1);
        buf_free(&body);
    }
    static const struct {
        const char *in;
        bool bare_lf, bare_cr, nul;
    } flags[] = {
        {"a\nb\r\n", true, false, false},
        {"a\rb\r\n", false, true, false},
        {"a\r\nb\r", false, true, false}, /* the LAST chunk ends in CR */
        {"a\0b\r\n", false, false, true},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(flags); i++) {
        struct smtpd_reader r;
        struct buf body;
        buf_init(&body, 1 << 20);
        smtpd_reader_init(&r);
        smtpd_reader_start_bdat(&r, &body, 1 << 20, 1 << 20);
        smtpd_reader_start_chunk(&r, 5, true);
        assert_int_equal(test_chunk_feed(&r, flags[i].in, 5, 0), 5);
        smtpd_reader_end_bdat(&r);
        const struct smtpd_reader_data *d = smtpd_reader_data(&r);
        assert_int_equal(d->bare_lf, flags[i].bare_lf);
        assert_int_equal(d->bare_cr, flags[i].bare_cr);
        assert_int_equal(d->nul, flags[i].nul);
        buf_free(&body);
    }
    /* Dropped chunk: nothing stored. Size limit: counted past it, stored up to it. */
    struct smtpd_reader r;
    struct buf body;
    buf_init(&body, 1 << 20);
    smtpd_reader_init(&r);
    smtpd_reader_start_chunk(&r, 10, false);
    assert_int_equal(test_chunk_feed(&r, "0123456789MAIL", 14, 3), 10);
    smtpd_reader_start_bdat(&r, &body, 8, 1 << 20);
    smtpd_reader_start_chunk(&r, 12, true);
    assert_int_equal(test_chunk_feed(&r, "xxxxxxxxxx\r\n", 12, 5), 12);
    smtpd_reader_end_bdat(&r);
    assert_true(smtpd_reader_data(&r)->too_big);
    assert_int_equal(smtpd_reader_data(&r)->size, 12);
    assert_int_equal(body.len, 8);
    buf_free(&body);
    /* A last line without CRLF is ended with one. */
    buf_init(&body, 1 << 20);
    smtpd_reader_init(&r);
    smtpd_reader_start_bdat(&r, &body, 1 << 20, 1 << 20);
    smtpd_reader_start_chunk(&r, 3, true);
    assert_int_equal(test_chunk_feed(&r, "abc", 3, 0), 3);
    smtpd_reader_end_bdat(&r);
    assert_false(smtpd_reader_data(&r)->bare_cr);
    assert_int_equal(smtpd_reader_data(&r)->size, 5);
    assert_int_equal(body.len, 5);
    assert_memory_equal(body.data, "abc\r\n", 5);
    buf_free(&body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_table),
        cmocka_unit_test(test_line_limit),
        cmocka_unit_test(test_long_line_tail_discarded),
        cmocka_unit_test(test_megabyte_without_crlf),
        cmocka_unit_test(test_unstuff_table),
        cmocka_unit_test(test_smuggling),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_reader_back_to_commands),
        cmocka_unit_test(test_header_table),
        cmocka_unit_test(test_header_limit),
        cmocka_unit_test(test_roundtrip_valid_bodies),
        cmocka_unit_test(test_property_random_octets),
        cmocka_unit_test(test_bdat_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
