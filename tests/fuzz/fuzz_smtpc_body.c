/*
 * fuzz_smtpc_body.c - libFuzzer target for net/smtpc_body, which writes a
 * stored body in DATA wire form for the next hop (SECURITY.md S2 outbound).
 *
 * Input: byte 0 picks the output room per call (SMTPC_BODY_FILL_MIN and
 * up); the rest is the stored body, any bytes.
 *
 * Properties checked:
 *   - every call makes progress until done, and done comes exactly once;
 *   - the wire form does not depend on the room per call;
 *   - it has no bare CR and no bare LF, ends in ".\r\n" after a line end,
 *     and the only line that is "." is the last one; every other line that
 *     starts with "." starts with ".." (dot-stuffed);
 *   - hamr's own inbound reader (net/smtpd_reader) reads it as one DATA
 *     phase that ends exactly at the last octet, with no bare CR/LF, and
 *     gets back the body with every line end made CRLF (a CRLF added at the
 *     end when the body did not end with a line end).
 *
 * Security note: the body is arbitrary bytes, as accepted from a client
 * or built into a DSN.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "net/smtpc_body.h"
#include "net/smtpd_reader.h"
#include "fuzz_common.h"

/* fuzz_body_wire - the whole wire form, written cap octets at most per call. */
static uint8_t *fuzz_body_wire(const uint8_t *body, size_t len, size_t cap, size_t *wire_len)
{
    struct smtpc_body b;
    size_t max = 2 * len + 5, n = 0;
    uint8_t *wire = malloc(max);
    uint8_t *room = malloc(cap);
    FUZZ_CHECK(wire != NULL && room != NULL);

    smtpc_body_init(&b, body, len);
    /* Each call writes at least one octet until done; bound the calls by that. */
    for (size_t calls = 0; !b.done; calls++) {
        FUZZ_CHECK(calls <= max);
        size_t got = smtpc_body_fill(&b, room, cap);
        FUZZ_CHECK(got <= cap);
        FUZZ_CHECK(got > 0);
        FUZZ_CHECK(n + got <= max);
        memcpy(wire + n, room, got);
        n += got;
    }
    /* Done is final. */
    FUZZ_CHECK(smtpc_body_fill(&b, room, cap) == 0 && b.done);
    free(room);
    *wire_len = n;
    return wire;
}

/* fuzz_body_canonical - body with CRLF, lone CR and lone LF all made CRLF, ending in one. */
static uint8_t *fuzz_body_canonical(const uint8_t *body, size_t len, size_t *out_len)
{
    uint8_t *out = malloc(2 * len + 2);
    size_t n = 0;
    FUZZ_CHECK(out != NULL);
    for (size_t i = 0; i < len; i++) {
        if (body[i] == '\r' || body[i] == '\n') {
            if (body[i] == '\r' && i + 1 < len && body[i + 1] == '\n')
                i++;
            out[n++] = '\r';
            out[n++] = '\n';
        } else {
            out[n++] = body[i];
        }
    }
    if (n > 0 && !(n >= 2 && out[n - 2] == '\r' && out[n - 1] == '\n')) {
        out[n++] = '\r';
        out[n++] = '\n';
    }
    *out_len = n;
    return out;
}

/* fuzz_body_check_lines - CRLF only; "." alone only last; leading dots doubled. */
static void fuzz_body_check_lines(const uint8_t *w, size_t n)
{
    FUZZ_CHECK(fuzz_crlf_only(w, n));
    FUZZ_CHECK(n >= 3 && memcmp(w + n - 3, ".\r\n", 3) == 0);
    FUZZ_CHECK(n == 3 || (n >= 5 && w[n - 5] == '\r' && w[n - 4] == '\n'));
    size_t start = 0;
    while (start < n) {
        const uint8_t *lf = memchr(w + start, '\n', n - start);
        FUZZ_CHECK(lf != NULL);            /* every line is terminated */
        size_t end = (size_t)(lf - w) + 1; /* after the LF */
        size_t content = end - start - 2;
        bool last = end == n;
        if (last) {
            FUZZ_CHECK(content == 1 && w[start] == '.');
        } else if (content > 0 && w[start] == '.') {
            FUZZ_CHECK(content >= 2 && w[start + 1] == '.');
        }
        start = end;
    }
}

/* LLVMFuzzerInitialize - quiet logs unless asked. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    return 0;
}

/* LLVMFuzzerTestOneInput - one body, written with two output sizes, read back. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    size_t cap = SMTPC_BODY_FILL_MIN + fuzz_u8(&in) % 64;
    const uint8_t *body = in.p;
    size_t len = in.n;

    size_t wire_len, big_len;
    uint8_t *wire = fuzz_body_wire(body, len, cap, &wire_len);
    uint8_t *big = fuzz_body_wire(body, len, 65536, &big_len);
    FUZZ_CHECK(wire_len == big_len && memcmp(wire, big, wire_len) == 0);
    free(big);
    fuzz_body_check_lines(wire, wire_len);

    /* What hamr's own server would make of it. */
    struct smtpd_reader r;
    struct buf got;
    size_t used = 0;
    buf_init(&got, 0);
    smtpd_reader_init(&r);
    smtpd_reader_start_data(&r, &got, SIZE_MAX, SIZE_MAX);
    enum smtpd_reader_event ev = smtpd_reader_feed(&r, wire, wire_len, &used);
    FUZZ_CHECK(ev == SMTPD_READER_DATA_END);
    FUZZ_CHECK(used == wire_len);
    const struct smtpd_reader_data *d = smtpd_reader_data(&r);
    FUZZ_CHECK(!d->bare_lf && !d->bare_cr && !d->too_big && !d->nomem);

    size_t canon_len;
    uint8_t *canon = fuzz_body_canonical(body, len, &canon_len);
    FUZZ_CHECK(got.len == canon_len);
    FUZZ_CHECK(canon_len == 0 || memcmp(got.data, canon, canon_len) == 0);
    free(canon);
    buf_free(&got);
    free(wire);
    return 0;
}
