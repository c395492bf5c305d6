/*
 * fuzz_dkim.c - libFuzzer target for net/dkim: the relaxed canonicalisations,
 * the From: domain and the DKIM-Signature header, on messages as a client
 * sends them.
 *
 * Input: byte 0 holds flags (bit 0: oversign From; bit 1: also feed the body
 * one octet at a time); the rest is the message (header, empty line, body),
 * any octets at all.
 *
 * Properties checked:
 *   - the relaxed body is the same fed whole or octet by octet; it is empty
 *     or ends in CRLF; it has no SP/HTAB before a CRLF, no HTAB, no two SP in
 *     a row, no empty line at the end; canonicalising it again changes
 *     nothing;
 *   - a From: domain, when found, is non-empty lower-case letters, digits,
 *     '-' and '.', shorter than DKIM_DOMAIN_MAX;
 *   - the relaxed form of the first header field (when it has a ':') ends in
 *     CRLF, its name has no upper-case letter and its value no HTAB and no
 *     two SP in a row;
 *   - signing with an Ed25519 key gives 0 (or HAMR_EINVAL for a header too
 *     big) and then a header starting "DKIM-Signature: v=1; a=ed25519-sha256;",
 *     ending in CRLF, every line under 78 octets, continuations starting
 *     with HTAB.
 *
 * Security note: the input is arbitrary bytes, as from a hostile client.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util/buf.h"
#include "util/err.h"
#include "net/dkim.h"
#include "fuzz_common.h"

/* fuzz_dkim_collect - emit callback: append to a buf. */
static void fuzz_dkim_collect(void *arg, const uint8_t *p, size_t n)
{
    FUZZ_CHECK(buf_append(arg, p, n) == 0);
}

/* fuzz_dkim_body - the relaxed body of p[0..n) into out, whole or octet by octet. */
static void fuzz_dkim_body(const uint8_t *p, size_t n, bool bytewise, struct buf *out)
{
    struct dkim_body b;
    dkim_body_init(&b, fuzz_dkim_collect, out);
    if (bytewise)
        for (size_t i = 0; i < n; i++)
            dkim_body_update(&b, p + i, 1);
    else
        dkim_body_update(&b, p, n);
    dkim_body_final(&b);
}

/* fuzz_dkim_check_body - the properties of a relaxed body. */
static void fuzz_dkim_check_body(const struct buf *c)
{
    if (c->len == 0)
        return;
    FUZZ_CHECK(c->len >= 2 && c->data[c->len - 2] == '\r' && c->data[c->len - 1] == '\n');
    FUZZ_CHECK(!(c->len >= 4 && memcmp(c->data + c->len - 4, "\r\n\r\n", 4) == 0));
    FUZZ_CHECK(!(c->len == 2));
    for (size_t i = 0; i < c->len; i++) {
        FUZZ_CHECK(c->data[i] != '\t');
        if (i + 1 < c->len && c->data[i] == ' ')
            FUZZ_CHECK(c->data[i + 1] != ' ');
        if (i + 2 < c->len && c->data[i] == ' ')
            FUZZ_CHECK(!(c->data[i + 1] == '\r' && c->data[i + 2] == '\n'));
    }
}

/* fuzz_dkim_key - one Ed25519 key for the whole run (a fixed seed). */
static EVP_PKEY *fuzz_dkim_key(void)
{
    static EVP_PKEY *key;
    if (key == NULL) {
        uint8_t seed[32];
        for (size_t i = 0; i < sizeof(seed); i++)
            seed[i] = (uint8_t)(i * 7 + 1);
        key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof(seed));
        FUZZ_CHECK(key != NULL);
    }
    return key;
}

/* fuzz_dkim_check_header - the signature header's shape. */
static void fuzz_dkim_check_header(const struct buf *h)
{
    static const char start[] = "DKIM-Signature: v=1; a=ed25519-sha256;";
    FUZZ_CHECK(h->len > sizeof(start) && memcmp(h->data, start, sizeof(start) - 1) == 0);
    FUZZ_CHECK(h->data[h->len - 2] == '\r' && h->data[h->len - 1] == '\n');
    size_t line_start = 0;
    for (size_t i = 0; i + 1 < h->len; i++) {
        if (h->data[i] != '\r')
            continue;
        FUZZ_CHECK(h->data[i + 1] == '\n'); /* no bare CR */
        FUZZ_CHECK(i - line_start < 78);
        if (line_start > 0)
            FUZZ_CHECK(h->data[line_start] == '\t');
        line_start = i + 2;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    log_set_level(LOG_LEVEL_ERROR);
    uint8_t flags = data[0];
    const uint8_t *msg = data + 1;
    size_t len = size - 1;

    /* The body. */
    size_t hdr_len, body_off;
    dkim_split(msg, len, &hdr_len, &body_off);
    FUZZ_CHECK(hdr_len <= len && body_off <= len && hdr_len <= body_off);
    struct buf c1, c2, c3;
    buf_init(&c1, 0);
    buf_init(&c2, 0);
    buf_init(&c3, 0);
    fuzz_dkim_body(msg + body_off, len - body_off, false, &c1);
    fuzz_dkim_check_body(&c1);
    if (flags & 2) {
        fuzz_dkim_body(msg + body_off, len - body_off, true, &c2);
        FUZZ_CHECK(c2.len == c1.len && (c1.len == 0 || memcmp(c1.data, c2.data, c1.len) == 0));
    }
    fuzz_dkim_body(c1.data, c1.len, false, &c3);
    FUZZ_CHECK(c3.len == c1.len && (c1.len == 0 || memcmp(c1.data, c3.data, c1.len) == 0));
    buf_free(&c1);
    buf_free(&c2);
    buf_free(&c3);

    /* The From: domain. */
    char domain[DKIM_DOMAIN_MAX];
    int rv = dkim_from_domain(msg, len, domain);
    FUZZ_CHECK(rv == 0 || rv == HAMR_ENOTFOUND || rv == HAMR_ENOMEM);
    if (rv == 0) {
        size_t dl = strlen(domain);
        FUZZ_CHECK(dl > 0 && dl < DKIM_DOMAIN_MAX);
        for (size_t i = 0; i < dl; i++)
            FUZZ_CHECK((domain[i] >= 'a' && domain[i] <= 'z') ||
                       (domain[i] >= '0' && domain[i] <= '9') || domain[i] == '-' ||
                       domain[i] == '.');
    }

    /* The first header line (up to its CRLF) as one field. */
    const uint8_t *colon = memchr(msg, ':', hdr_len);
    if (colon != NULL) {
        const uint8_t *eol = NULL;
        for (size_t i = 0; i + 1 < hdr_len; i++)
            if (msg[i] == '\r' && msg[i + 1] == '\n') {
                eol = msg + i + 2;
                break;
            }
        size_t flen = eol != NULL ? (size_t)(eol - msg) : hdr_len;
        struct buf h;
        buf_init(&h, 0);
        if (dkim_canon_header((const char *)msg, flen, true, &h) == 0) {
            FUZZ_CHECK(h.len >= 3 && h.data[h.len - 2] == '\r' && h.data[h.len - 1] == '\n');
            const uint8_t *hc = memchr(h.data, ':', h.len);
            FUZZ_CHECK(hc != NULL);
            for (const uint8_t *q = h.data; q < hc; q++)
                FUZZ_CHECK(!(*q >= 'A' && *q <= 'Z'));
            for (const uint8_t *q = hc; q + 1 < h.data + h.len - 2; q++)
                FUZZ_CHECK(*q != '\t' && !(q[0] == ' ' && q[1] == ' '));
        }
        buf_free(&h);
    }

    /* The signature. */
    struct dkim_sign_params sp = {.domain = "example.com",
                                  .selector = "fuzz",
                                  .time = 1700000000,
                                  .oversign_from = (flags & 1) != 0};
    struct buf out;
    buf_init(&out, 0);
    enum dkim_alg alg;
    rv = dkim_sign(&sp, fuzz_dkim_key(), msg, len, &out, &alg);
    FUZZ_CHECK(rv == 0 || rv == HAMR_EINVAL || rv == HAMR_ENOMEM);
    if (rv == 0) {
        FUZZ_CHECK(alg == DKIM_ALG_ED25519_SHA256);
        fuzz_dkim_check_header(&out);
    } else {
        FUZZ_CHECK(out.len == 0);
    }
    buf_free(&out);
    return 0;
}
