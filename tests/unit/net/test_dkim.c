/*
 * test_dkim.c - DKIM signing of net/dkim: relaxed canonicalisation, body
 * hashes, the From: domain, the signature header and the key table.
 *
 * Covers: header and body canonicalisation as tables (the RFC 6376 3.4.5
 * example, folds, runs of blanks, bare CR and LF, trailing empty lines),
 * the same body fed one octet at a time; body hashes of known inputs
 * (relaxed: an empty body stays empty, RFC 6376 3.4.4, unlike simple's
 * single CRLF; the RFC 8463 example body); the From: domain of every shape
 * of mailbox and the ones refused; signatures by RSA 2048 and Ed25519
 * verified here with EVP_DigestVerify over a header hash input the test
 * writes out itself, the h= list (every instance, oversigned From), the
 * folding (every line under 78 octets, continuations start with HTAB);
 * the RFC 8463 example signature checked against our reading of
 * ed25519-sha256 (Ed25519 over the SHA-256 of the input); the key table:
 * exact and ".suffix" domains, keys refused (missing file, not PEM, RSA
 * 512, EC), a reload that fails keeping the old keys, one that works.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "util/common.h"
#include "util/err.h"
#include "net/dkim.h"

#define DKIM_TAB_WIDTH_TEST 8 /* a continuation's HTAB counted as 8 columns */

/* ------------------------------------------------------------------------ */
/* Canonicalisation.                                                        */
/* ------------------------------------------------------------------------ */

static void test_canon_header(void **state)
{
    (void)state;
    static const struct {
        const char *label, *in, *want;
    } cases[] = {
        {"rfc 3.4.5 a", "A: X\r\n", "a:X\r\n"},
        {"rfc 3.4.5 b", "B : Y\t\r\n\tZ  \r\n", "b:Y Z\r\n"},
        {"runs of blanks", "Subject:   hello \t  world  \r\n", "subject:hello world\r\n"},
        {"no final CRLF", "To: a@b", "to:a@b\r\n"},
        {"empty value", "X-Empty:\r\n", "x-empty:\r\n"},
        {"only blanks", "X-Empty:  \t \r\n", "x-empty:\r\n"},
        {"fold at the start", "Cc:\r\n a@b,\r\n  c@d\r\n", "cc:a@b, c@d\r\n"},
        {"8-bit kept", "Subject: h\xc3\xa9llo\r\n", "subject:h\xc3\xa9llo\r\n"},
        {"bare LF kept", "X: a\nb\r\n", "x:a\nb\r\n"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct buf b;
        buf_init(&b, 0);
        assert_int_equal(dkim_canon_header(cases[i].in, strlen(cases[i].in), true, &b), 0);
        assert_int_equal(b.len, strlen(cases[i].want));
        if (memcmp(b.data, cases[i].want, b.len) != 0)
            fail_msg("%s: got \"%.*s\"", cases[i].label, (int)b.len, (char *)b.data);
        buf_free(&b);
    }
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(dkim_canon_header("no colon\r\n", 10, true, &b), HAMR_EINVAL);
    buf_free(&b);
}

/* test_collect - emit callback: append to a buf. */
static void test_collect(void *arg, const uint8_t *p, size_t n)
{
    assert_int_equal(buf_append(arg, p, n), 0);
}

static void test_canon_body(void **state)
{
    (void)state;
    static const struct {
        const char *label, *in, *want;
    } cases[] = {
        {"rfc 3.4.5", " C \r\nD \t E\r\n\r\n\r\n", " C\r\nD E\r\n"},
        {"empty", "", ""},
        {"one CRLF", "\r\n", ""},
        {"only empty lines", "\r\n\r\n \r\n\t\r\n", ""},
        {"no final CRLF", "a", "a\r\n"},
        {"trailing blanks", "a \t\r\n\r\n", "a\r\n"},
        {"inner empty lines kept", "a\r\n\r\n \r\nb\r\n", "a\r\n\r\n\r\nb\r\n"},
        {"leading blanks one SP", "  \tx\r\n", " x\r\n"},
        {"bare CR is content", "a\rb\r\n", "a\rb\r\n"},
        {"bare LF is content", "a\nb", "a\nb\r\n"},
        {"CR at the end", "a\r", "a\r\r\n"},
        {"blank before bare CR", "a \r", "a \r\r\n"},
        {"utf-8", "gr\xc3\xbc\xc3\x9f  dich \r\n", "gr\xc3\xbc\xc3\x9f dich\r\n"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        for (int bytewise = 0; bytewise < 2; bytewise++) {
            struct buf b;
            buf_init(&b, 0);
            struct dkim_body body;
            dkim_body_init(&body, test_collect, &b);
            size_t n = strlen(cases[i].in);
            if (bytewise)
                for (size_t k = 0; k < n; k++)
                    dkim_body_update(&body, (const uint8_t *)cases[i].in + k, 1);
            else
                dkim_body_update(&body, (const uint8_t *)cases[i].in, n);
            dkim_body_final(&body);
            if (b.len != strlen(cases[i].want) ||
                (b.len > 0 && memcmp(b.data, cases[i].want, b.len) != 0))
                fail_msg("%s (bytewise %d): got \"%.*s\"", cases[i].label, bytewise, (int)b.len,
                         (char *)b.data);
            buf_free(&b);
        }
    }
}

/* test_b64 - base64 of n octets (static buffer). */
static const char *test_b64(const uint8_t *p, size_t n)
{
    static char out[1024];
    EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    return out;
}

static const char test_rfc_body[] =
    "Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n";

static void test_body_hash(void **state)
{
    (void)state;
    static const struct {
        const char *label, *in, *want;
    } cases[] = {
        /* RFC 6376 3.4.4: an empty body is empty for relaxed (simple's is one CRLF). */
        {"empty", "", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
        {"one CRLF", "\r\n", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
        /* The bh= of the RFC 8463 Appendix A example (relaxed/relaxed). */
        {"rfc 8463", test_rfc_body, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="},
        {"rfc 6376 3.4.5", " C \r\nD \t E\r\n\r\n\r\n",
         "unak6JHq0wL+Q1HP7dW1tjBx9FLA6DffoZ0qrLwbbpo="},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        uint8_t h[32];
        assert_int_equal(dkim_body_hash((const uint8_t *)cases[i].in, strlen(cases[i].in), h), 0);
        if (strcmp(test_b64(h, 32), cases[i].want) != 0)
            fail_msg("%s: got %s", cases[i].label, test_b64(h, 32));
    }
}

static void test_from_domain(void **state)
{
    (void)state;
    static const struct {
        const char *label, *msg, *want; /* want NULL: HAMR_ENOTFOUND */
    } cases[] = {
        {"name-addr", "From: Joe <joe@Example.COM>\r\n\r\nx", "example.com"},
        {"addr-spec", "from:joe@example.org\r\nTo: a@b\r\n\r\n", "example.org"},
        {"quoted @ in name", "From: \"a@evil.com\" <x@y.org>\r\n\r\n", "y.org"},
        {"comment", "From: (joe@evil.com) joe@example.com (Joe)\r\n\r\n", "example.com"},
        {"folded", "From: Joe\r\n <joe@example.com>\r\n\r\n", "example.com"},
        {"utf-8 name", "From: J\xc3\xb6rg <j@example.de>\r\n\r\n", "example.de"},
        {"quoted local part", "From: \"j o\"@example.net\r\n\r\n", "example.net"},
        {"no body", "From: a@example.com\r\n", "example.com"},
        {"two mailboxes", "From: a@b.com, c@d.com\r\n\r\n", NULL},
        {"group", "From: undisclosed:;\r\n\r\n", NULL},
        {"two From", "From: a@b.com\r\nFrom: c@d.com\r\n\r\n", NULL},
        {"none", "To: a@b.com\r\n\r\nFrom: a@b.com\r\n", NULL},
        {"literal", "From: <joe@[192.0.2.1]>\r\n\r\n", NULL},
        {"no domain", "From: joe\r\n\r\n", NULL},
        {"two angles", "From: <a@b.com> <c@d.com>\r\n\r\n", NULL},
        {"open quote", "From: \"a <a@b.com>\r\n\r\n", NULL},
        {"utf-8 domain", "From: a@b\xc3\xa9.com\r\n\r\n", NULL},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        char d[DKIM_DOMAIN_MAX];
        int rv = dkim_from_domain((const uint8_t *)cases[i].msg, strlen(cases[i].msg), d);
        if (cases[i].want == NULL) {
            if (rv != HAMR_ENOTFOUND)
                fail_msg("%s: want not found, got %d", cases[i].label, rv);
        } else if (rv != 0 || strcmp(d, cases[i].want) != 0) {
            fail_msg("%s: got %d %s", cases[i].label, rv, rv == 0 ? d : "");
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Signatures, verified here.                                               */
/* ------------------------------------------------------------------------ */

static const char test_msg[] =
    "From: Joe SixPack <joe@football.example.com>\r\n"
    "To: Suzie Q <suzie@shopping.example.net>\r\n"
    "Subject: Is dinner ready?\r\n"
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    "\r\n"
    "Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n";

/* The relaxed form of test_msg's fields in our h= order (from subject date to message-id). */
static const char test_msg_canon[] =
    "from:Joe SixPack <joe@football.example.com>\r\n"
    "subject:Is dinner ready?\r\n"
    "date:Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    "to:Suzie Q <suzie@shopping.example.net>\r\n"
    "message-id:<20030712040037.46341.5F8J@football.example.com>\r\n";

/* test_unfold - hdr without white space (to read tags whatever the folding). */
static char *test_unfold(const uint8_t *hdr, size_t len)
{
    char *s = malloc(len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (hdr[i] != ' ' && hdr[i] != '\t' && hdr[i] != '\r' && hdr[i] != '\n')
            s[n++] = (char)hdr[i];
    s[n] = '\0';
    return s;
}

/* test_tag - the value of tag name ("h", "b") in an unfolded header (static buffer). */
static const char *test_tag(const char *unfolded, const char *name)
{
    static char v[2048];
    char pat[16];
    snprintf(pat, sizeof(pat), ";%s=", name);
    const char *p = strstr(unfolded, pat);
    assert_non_null(p);
    p += strlen(pat);
    size_t n = strcspn(p, ";");
    assert_true(n < sizeof(v));
    memcpy(v, p, n);
    v[n] = '\0';
    return v;
}

/* test_check_folding - CRLF at the end, every line under 78 octets, continuations start with HTAB.
 */
static void test_check_folding(const uint8_t *h, size_t len)
{
    assert_true(len > 2 && h[len - 2] == '\r' && h[len - 1] == '\n');
    size_t start = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (h[i] != '\r' || h[i + 1] != '\n')
            continue;
        size_t line = i - start;
        if (start > 0) {
            assert_int_equal(h[start], '\t');
            line += DKIM_TAB_WIDTH_TEST - 1;
        }
        if (line >= 78)
            fail_msg("line of %zu octets: %.*s", line, (int)(i - start), (const char *)h + start);
        start = i + 2;
    }
}

/*
 * test_verify - check sig (the header dkim_sign wrote) against msg with
 * pub: the input is canon (the signed fields, written out by the test)
 * plus sig with its b= value cut off, canonicalised without its CRLF.
 */
static void test_verify(const uint8_t *sig,
                        size_t siglen,
                        const char *canon,
                        EVP_PKEY *pub,
                        enum dkim_alg alg)
{
    /* Cut after the last "b=" (b= is the last tag). */
    size_t cut = 0;
    for (size_t i = 1; i + 1 < siglen; i++)
        if (sig[i] == 'b' && sig[i + 1] == '=' &&
            (sig[i - 1] == ' ' || sig[i - 1] == '\t' || sig[i - 1] == ';'))
            cut = i + 2;
    assert_true(cut > 0);
    struct buf in;
    buf_init(&in, 0);
    assert_int_equal(buf_append(&in, canon, strlen(canon)), 0);
    assert_int_equal(dkim_canon_header((const char *)sig, cut, false, &in), 0);

    char *u = test_unfold(sig, siglen);
    const char *b64 = test_tag(u, "b");
    uint8_t raw[1024];
    int n = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)strlen(b64));
    assert_true(n > 0);
    size_t rawlen = (size_t)n - (strstr(b64, "==") ? 2 : strchr(b64, '=') ? 1 : 0);
    free(u);

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;
    if (alg == DKIM_ALG_ED25519_SHA256) {
        uint8_t h[32];
        SHA256(in.data, in.len, h);
        ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pub) == 1 &&
             EVP_DigestVerify(ctx, raw, rawlen, h, sizeof(h)) == 1;
    } else {
        ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) == 1 &&
             EVP_DigestVerify(ctx, raw, rawlen, in.data, in.len) == 1;
    }
    EVP_MD_CTX_free(ctx);
    buf_free(&in);
    assert_true(ok);
}

/* test_ed25519 - the RFC 8032 7.1 test 1 key (as RFC 8463 Appendix A uses). */
static EVP_PKEY *test_ed25519(void)
{
    static const char seed_b64[] = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
    uint8_t seed[48];
    assert_int_equal(EVP_DecodeBlock(seed, (const unsigned char *)seed_b64, 44), 33);
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
    assert_non_null(k);
    return k;
}

static EVP_PKEY *test_rsa_key;

/* test_rsa - one RSA 2048 key for the whole run (made once: it takes a moment). */
static EVP_PKEY *test_rsa(void)
{
    if (test_rsa_key == NULL)
        test_rsa_key = EVP_RSA_gen(2048);
    assert_non_null(test_rsa_key);
    return test_rsa_key;
}

static void test_sign_verify(void **state)
{
    (void)state;
    EVP_PKEY *ed = test_ed25519();
    EVP_PKEY *keys[] = {test_rsa(), ed};
    enum dkim_alg want[] = {DKIM_ALG_RSA_SHA256, DKIM_ALG_ED25519_SHA256};
    for (size_t i = 0; i < 2; i++) {
        struct dkim_sign_params sp = {
            .domain = "football.example.com", .selector = "brisbane", .time = 1528637909};
        struct buf out;
        buf_init(&out, 0);
        enum dkim_alg alg;
        assert_int_equal(
            dkim_sign(&sp, keys[i], (const uint8_t *)test_msg, strlen(test_msg), &out, &alg), 0);
        assert_int_equal(alg, want[i]);
        assert_memory_equal(out.data, "DKIM-Signature: v=1; a=", 23);
        test_check_folding(out.data, out.len);
        char *u = test_unfold(out.data, out.len);
        assert_string_equal(test_tag(u, "a"), dkim_alg_name(want[i]));
        assert_string_equal(test_tag(u, "c"), "relaxed/relaxed");
        assert_string_equal(test_tag(u, "d"), "football.example.com");
        assert_string_equal(test_tag(u, "s"), "brisbane");
        assert_string_equal(test_tag(u, "t"), "1528637909");
        assert_string_equal(test_tag(u, "h"), "from:subject:date:to:message-id");
        assert_string_equal(test_tag(u, "bh"), "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
        free(u);
        test_verify(out.data, out.len, test_msg_canon, keys[i], alg);

        /* Oversigned From: one more "from", which adds nothing to the input. */
        buf_reset(&out);
        sp.oversign_from = true;
        assert_int_equal(
            dkim_sign(&sp, keys[i], (const uint8_t *)test_msg, strlen(test_msg), &out, &alg), 0);
        u = test_unfold(out.data, out.len);
        assert_string_equal(test_tag(u, "h"), "from:from:subject:date:to:message-id");
        free(u);
        test_verify(out.data, out.len, test_msg_canon, keys[i], alg);
        buf_free(&out);
    }
    EVP_PKEY_free(ed);
}

/* Every instance signed, bottom up (RFC 6376 5.4.2), and a long h= folded. */
static void test_sign_instances(void **state)
{
    (void)state;
    static const char msg[] =
        "Received: from a\r\n"
        "To: first@example.net\r\n"
        "From: Ann <ann@example.com>\r\n"
        "Cc: c1@example.net\r\n"
        "To: second@example.net\r\n"
        "Cc: c2@example.net\r\n"
        "Reply-To: r@example.com\r\n"
        "List-Id: <list.example.com>\r\n"
        "List-Unsubscribe: <mailto:u@example.com>\r\n"
        "List-Subscribe: <mailto:s@example.com>\r\n"
        "List-Help: <mailto:h@example.com>\r\n"
        "Content-Type: text/plain;\r\n charset=utf-8\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "X-Other: not signed\r\n"
        "\r\n"
        "gr\xc3\xbc\xc3\x9f\r\n";
    static const char canon[] =
        "from:Ann <ann@example.com>\r\n"
        "reply-to:r@example.com\r\n"
        "to:second@example.net\r\n"
        "to:first@example.net\r\n"
        "cc:c2@example.net\r\n"
        "cc:c1@example.net\r\n"
        "list-id:<list.example.com>\r\n"
        "list-help:<mailto:h@example.com>\r\n"
        "list-unsubscribe:<mailto:u@example.com>\r\n"
        "list-subscribe:<mailto:s@example.com>\r\n"
        "mime-version:1.0\r\n"
        "content-type:text/plain; charset=utf-8\r\n"
        "content-transfer-encoding:8bit\r\n";
    EVP_PKEY *ed = test_ed25519();
    struct dkim_sign_params sp = {.domain = "example.com", .selector = "sel", .time = 1};
    struct buf out;
    buf_init(&out, 0);
    enum dkim_alg alg;
    assert_int_equal(dkim_sign(&sp, ed, (const uint8_t *)msg, strlen(msg), &out, &alg), 0);
    test_check_folding(out.data, out.len);
    char *u = test_unfold(out.data, out.len);
    assert_string_equal(test_tag(u, "h"),
                        "from:reply-to:to:to:cc:cc:list-id:list-help:list-unsubscribe:"
                        "list-subscribe:mime-version:content-type:content-transfer-encoding");
    free(u);
    test_verify(out.data, out.len, canon, ed, alg);
    buf_free(&out);

    /* Twenty To: fields: the lowest DKIM_INSTANCES_MAX are signed. */
    struct buf many;
    buf_init(&many, 0);
    assert_int_equal(buf_append(&many, "From: a@example.com\r\n", 21), 0);
    for (int i = 0; i < 20; i++) {
        char line[64];
        int n = snprintf(line, sizeof(line), "To: t%02d@example.net\r\n", i);
        assert_int_equal(buf_append(&many, line, (size_t)n), 0);
    }
    assert_int_equal(buf_append(&many, "\r\nbody\r\n", 8), 0);
    char many_canon[512] = "from:a@example.com\r\n";
    size_t off = strlen(many_canon);
    for (int i = 19; i >= 20 - DKIM_INSTANCES_MAX; i--)
        off += (size_t)snprintf(many_canon + off, sizeof(many_canon) - off,
                                "to:t%02d@example.net\r\n", i);
    buf_init(&out, 0);
    assert_int_equal(dkim_sign(&sp, ed, many.data, many.len, &out, &alg), 0);
    u = test_unfold(out.data, out.len);
    assert_string_equal(test_tag(u, "h"), "from:to:to:to:to:to:to:to:to");
    free(u);
    test_verify(out.data, out.len, many_canon, ed, alg);
    buf_free(&out);
    buf_free(&many);

    /* No From: at all: "from" is still listed (RFC 6376 5.4), as a null string. */
    static const char nofrom[] = "Subject: x\r\n\r\nbody\r\n";
    buf_init(&out, 0);
    assert_int_equal(dkim_sign(&sp, ed, (const uint8_t *)nofrom, strlen(nofrom), &out, &alg), 0);
    u = test_unfold(out.data, out.len);
    assert_string_equal(test_tag(u, "h"), "from:subject");
    free(u);
    test_verify(out.data, out.len, "subject:x\r\n", ed, alg);
    buf_free(&out);
    EVP_PKEY_free(ed);
}

/*
 * The RFC 8463 example (as python3-dkim ships it, simple/simple, t=1518460054):
 * its signature verifies as Ed25519 over the SHA-256 of the header input.
 */
static void test_rfc8463_vector(void **state)
{
    (void)state;
    static const char input[] =
        "From: Joe SixPack <joe@football.example.com>\r\n"
        "To: Suzie Q <suzie@shopping.example.net>\r\n"
        "Subject: Is dinner ready?\r\n"
        "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
        "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
        "DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; \r\n"
        " d=football.example.com; i=@football.example.com; \r\n"
        " q=dns/txt; s=brisbane; t=1518460054; h=from : to : \r\n"
        " subject : date : message-id : from : subject : date; \r\n"
        " bh=4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ=; \r\n"
        " b=";
    static const char b64[] =
        "9/dsDChY0YMTtD5Eyw3wx7x22BlSJP7M5ECbJ7GWrR45nXlTCGb8l0YBo0wBLR++X5LqmsxXaOYLLJe46l10AQ==";
    EVP_PKEY *ed = test_ed25519();
    uint8_t sig[80], h[32];
    assert_int_equal(EVP_DecodeBlock(sig, (const unsigned char *)b64, (int)strlen(b64)), 66);
    SHA256((const uint8_t *)input, strlen(input), h);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, ed), 1);
    assert_int_equal(EVP_DigestVerify(ctx, sig, 64, h, sizeof(h)), 1);
    /* Over the input itself (pure Ed25519 without the hash) it does not verify. */
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, ed), 1);
    assert_int_not_equal(EVP_DigestVerify(ctx, sig, 64, (const uint8_t *)input, strlen(input)), 1);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(ed);
}

static void test_sign_refused(void **state)
{
    (void)state;
    struct dkim_sign_params sp = {.domain = "example.com", .selector = "s", .time = 1};
    struct buf out;
    buf_init(&out, 0);
    enum dkim_alg alg;
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    assert_non_null(ec);
    assert_int_equal(dkim_sign(&sp, ec, (const uint8_t *)test_msg, strlen(test_msg), &out, &alg),
                     HAMR_EINVAL);
    EVP_PKEY_free(ec);
    EVP_PKEY *small = EVP_RSA_gen(512);
    assert_non_null(small);
    assert_int_equal(dkim_sign(&sp, small, (const uint8_t *)test_msg, strlen(test_msg), &out, &alg),
                     HAMR_EINVAL);
    EVP_PKEY_free(small);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

/* ------------------------------------------------------------------------ */
/* The key table.                                                           */
/* ------------------------------------------------------------------------ */

static char test_dir[64];

/* test_write_key - key as PEM (PKCS#8) at test_dir/name; the path into path. */
static void test_write_key(EVP_PKEY *key, const char *name, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", test_dir, name);
    BIO *b = BIO_new_file(path, "w");
    assert_non_null(b);
    assert_int_equal(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL), 1);
    BIO_free(b);
}

/* test_write_text - text at path. */
static void test_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_keys(void **state)
{
    (void)state;
    hamr_strlcpy(test_dir, "/tmp/test_dkim.XXXXXX", sizeof(test_dir));
    assert_non_null(mkdtemp(test_dir));
    EVP_PKEY *ed = test_ed25519();
    struct dkim_key_spec specs[3];
    memset(specs, 0, sizeof(specs));
    hamr_strlcpy(specs[0].domain, "example.com", sizeof(specs[0].domain));
    hamr_strlcpy(specs[0].selector, "rsa1", sizeof(specs[0].selector));
    test_write_key(test_rsa(), "rsa.pem", specs[0].path, sizeof(specs[0].path));
    hamr_strlcpy(specs[1].domain, "example.org", sizeof(specs[1].domain));
    hamr_strlcpy(specs[1].selector, "ed1", sizeof(specs[1].selector));
    test_write_key(ed, "ed.pem", specs[1].path, sizeof(specs[1].path));
    hamr_strlcpy(specs[2].domain, ".example.org", sizeof(specs[2].domain));
    hamr_strlcpy(specs[2].selector, "sub", sizeof(specs[2].selector));
    hamr_strlcpy(specs[2].path, specs[0].path, sizeof(specs[2].path));

    char err[512];
    struct dkim_keys *k = NULL;
    assert_int_equal(dkim_keys_new(specs, 3, &k, err, sizeof(err)), 0);
    assert_int_equal(dkim_keys_count(k), 3);

    static const struct {
        const char *from;
        int rv;
        const char *d, *s, *a;
    } cases[] = {
        {"a@example.com", 0, "example.com", "rsa1", "rsa-sha256"},
        {"a@EXAMPLE.org", 0, "example.org", "ed1", "ed25519-sha256"},
        {"a@lists.example.org", 0, "example.org", "sub", "rsa-sha256"},
        {"a@sub.example.com", HAMR_ENOTFOUND, NULL, NULL, NULL}, /* no suffix entry */
        {"a@example.net", HAMR_ENOTFOUND, NULL, NULL, NULL},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        char msg[256];
        snprintf(msg, sizeof(msg), "From: %s\r\nSubject: s\r\n\r\nbody\r\n", cases[i].from);
        struct buf out;
        buf_init(&out, 0);
        enum dkim_alg alg;
        int rv = dkim_keys_sign(k, (const uint8_t *)msg, strlen(msg), 7, true, &out, &alg, err,
                                sizeof(err));
        if (rv != cases[i].rv)
            fail_msg("%s: got %d", cases[i].from, rv);
        if (rv == 0) {
            char *u = test_unfold(out.data, out.len);
            assert_string_equal(test_tag(u, "d"), cases[i].d);
            assert_string_equal(test_tag(u, "s"), cases[i].s);
            assert_string_equal(test_tag(u, "a"), cases[i].a);
            assert_string_equal(test_tag(u, "h"), "from:from:subject");
            free(u);
        } else {
            assert_int_equal(out.len, 0);
        }
        buf_free(&out);
    }

    /* A reload that fails (the Ed25519 file is now garbage) keeps every old key. */
    test_write_text(specs[1].path, "-----BEGIN PRIVATE KEY-----\nnot a key\n");
    assert_int_equal(dkim_keys_reload(k, err, sizeof(err)), HAMR_EINVAL);
    assert_non_null(strstr(err, specs[1].path));
    static const char msg[] = "From: a@example.org\r\n\r\nx\r\n";
    struct buf out;
    buf_init(&out, 0);
    enum dkim_alg alg;
    assert_int_equal(dkim_keys_sign(k, (const uint8_t *)msg, strlen(msg), 7, false, &out, &alg, err,
                                    sizeof(err)),
                     0);
    assert_int_equal(alg, DKIM_ALG_ED25519_SHA256);
    /* One that works: the file now holds an RSA key, and example.org signs with it. */
    test_write_key(test_rsa(), "ed.pem", specs[1].path, sizeof(specs[1].path));
    assert_int_equal(dkim_keys_reload(k, err, sizeof(err)), 0);
    buf_reset(&out);
    assert_int_equal(dkim_keys_sign(k, (const uint8_t *)msg, strlen(msg), 7, false, &out, &alg, err,
                                    sizeof(err)),
                     0);
    assert_int_equal(alg, DKIM_ALG_RSA_SHA256);
    buf_free(&out);
    k = dkim_keys_free(k);

    /* Keys refused at load, each naming its file. */
    EVP_PKEY *small = EVP_RSA_gen(512);
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    char p_small[256], p_ec[256], p_text[256], p_missing[256];
    test_write_key(small, "small.pem", p_small, sizeof(p_small));
    test_write_key(ec, "ec.pem", p_ec, sizeof(p_ec));
    snprintf(p_text, sizeof(p_text), "%s/text.pem", test_dir);
    test_write_text(p_text, "hello\n");
    snprintf(p_missing, sizeof(p_missing), "%s/missing.pem", test_dir);
    const struct {
        const char *path;
        int rv;
        const char *why;
    } bad[] = {
        {p_small, HAMR_EINVAL, "RSA key of 512 bits"},
        {p_ec, HAMR_EINVAL, "RSA or Ed25519"},
        {p_text, HAMR_EINVAL, "not a PEM private key"},
        {p_missing, HAMR_EIO, "cannot read"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad); i++) {
        struct dkim_key_spec s;
        memset(&s, 0, sizeof(s));
        hamr_strlcpy(s.domain, "example.com", sizeof(s.domain));
        hamr_strlcpy(s.selector, "s", sizeof(s.selector));
        hamr_strlcpy(s.path, bad[i].path, sizeof(s.path));
        assert_int_equal(dkim_keys_new(&s, 1, &k, err, sizeof(err)), bad[i].rv);
        if (strstr(err, bad[i].path) == NULL || strstr(err, bad[i].why) == NULL)
            fail_msg("%s: %s", bad[i].why, err);
    }
    EVP_PKEY_free(small);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(ed);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", test_dir);
    assert_int_equal(system(cmd), 0);
}

static int test_teardown_all(void **state)
{
    (void)state;
    EVP_PKEY_free(test_rsa_key);
    test_rsa_key = NULL;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_header),   cmocka_unit_test(test_canon_body),
        cmocka_unit_test(test_body_hash),      cmocka_unit_test(test_from_domain),
        cmocka_unit_test(test_sign_verify),    cmocka_unit_test(test_sign_instances),
        cmocka_unit_test(test_rfc8463_vector), cmocka_unit_test(test_sign_refused),
        cmocka_unit_test(test_keys),
    };
    return cmocka_run_group_tests(tests, NULL, test_teardown_all);
}
