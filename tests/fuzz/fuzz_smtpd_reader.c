/*
 * fuzz_smtpd_reader.c - libFuzzer target for net/smtpd_reader, the parser
 * that turns a client's octets into command lines and DATA bodies.
 *
 * Input: byte 0 picks how the stream is cut into reads, byte 1 the DATA
 * size limit; the rest is the client's stream. A driver plays the session:
 * a LINE "DATA" switches the reader to DATA mode. The stream is parsed three
 * times (in one read, one octet per read, and cut as byte 0 says) and the
 * three traces must agree: a terminator or a line split across reads parses
 * as in one read.
 *
 * Properties checked (SECURITY.md S1-S3, S6):
 *   - a LINE is at most SMTPD_READER_LINE_MAX - 2 (2046) octets and holds
 *     no CR, LF or NUL;
 *   - DATA_END only in DATA mode, at most one per DATA phase, and the reader
 *     is in command mode after it;
 *   - the un-stuffed body is empty or ends in CRLF, holds what was counted
 *     (up to the size limit), and its flags match its content;
 *   - re-stuffing the body and appending ".\r\n" parses back (from a fresh
 *     reader, one octet per read) to the same body and flags, ending exactly
 *     at the last octet.
 *
 * Security note: the input is arbitrary bytes, as from a hostile client.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/common.h"
#include "net/smtpd_reader.h"
#include "fuzz_common.h"

/* Bodies beyond this are only counted; small limits reach the too_big path. */
static const size_t fuzz_reader_limits[] = {0, 1, 7, 64, 512, 4096, 65536, 1 << 20};

/* fuzz_reader_trace - what one parse of the stream produced, folded into a hash. */
struct fuzz_reader_trace {
    uint64_t hash;
    size_t events;
    size_t data_ends;
};

/* fuzz_reader_mix - fold n bytes into the trace hash (FNV-1a). */
static void fuzz_reader_mix(struct fuzz_reader_trace *t, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        t->hash ^= b[i];
        t->hash *= 1099511628211ull;
    }
}

/* fuzz_reader_is_data - the command that starts DATA mode in this driver. */
static bool fuzz_reader_is_data(const char *line, size_t len)
{
    return len == 4 && hamr_strncaseeq(line, "DATA", 4);
}

/* fuzz_reader_stuff - RFC 5321 4.5.2 transparency: body plus ".\r\n" as a client sends it. */
static uint8_t *fuzz_reader_stuff(const uint8_t *body, size_t len, size_t *out_len)
{
    uint8_t *out = malloc(2 * len + 3);
    FUZZ_CHECK(out != NULL);
    size_t n = 0;
    bool bol = true;
    for (size_t i = 0; i < len; i++) {
        if (bol && body[i] == '.')
            out[n++] = '.';
        out[n++] = body[i];
        bol = body[i] == '\n' && i > 0 && body[i - 1] == '\r';
    }
    memcpy(out + n, ".\r\n", 3);
    *out_len = n + 3;
    return out;
}

/* fuzz_reader_check_body - the record and body of one finished DATA phase. */
static void fuzz_reader_check_body(const struct smtpd_reader_data *d,
                                   const struct buf *body,
                                   size_t limit)
{
    FUZZ_CHECK(!d->nomem);
    if (d->too_big) {
        FUZZ_CHECK(d->size > limit);
        FUZZ_CHECK(body->len == limit);
        return;
    }
    FUZZ_CHECK(d->size <= limit);
    FUZZ_CHECK(body->len == d->size);
    /* DATA ends only at a line start, so what precedes CRLF.CRLF ends in CRLF. */
    FUZZ_CHECK(body->len == 0 || (body->len >= 2 && body->data[body->len - 2] == '\r' &&
                                  body->data[body->len - 1] == '\n'));
    FUZZ_CHECK(d->header_size <= body->len);
    bool nul = body->len > 0 && memchr(body->data, '\0', body->len) != NULL;
    FUZZ_CHECK(d->nul == nul);
    /* A bare LF or CR in the body is flagged; a clean body is not. */
    bool crlf = fuzz_crlf_only(body->data, body->len);
    FUZZ_CHECK(crlf == !(d->bare_lf || d->bare_cr));

    /* Round trip: re-stuffed and terminated, the body parses back to itself. */
    size_t wire_len;
    uint8_t *wire = fuzz_reader_stuff(body->data, body->len, &wire_len);
    struct smtpd_reader r;
    struct buf again;
    buf_init(&again, 0);
    smtpd_reader_init(&r);
    smtpd_reader_start_data(&r, &again, limit, limit);
    enum smtpd_reader_event ev = SMTPD_READER_NEED_MORE;
    size_t pos = 0;
    while (pos < wire_len) {
        size_t used = 0;
        FUZZ_CHECK(ev == SMTPD_READER_NEED_MORE);
        ev = smtpd_reader_feed(&r, wire + pos, 1, &used);
        FUZZ_CHECK(used == 1);
        pos += used;
    }
    FUZZ_CHECK(ev == SMTPD_READER_DATA_END);
    const struct smtpd_reader_data *d2 = smtpd_reader_data(&r);
    FUZZ_CHECK(again.len == body->len);
    FUZZ_CHECK(body->len == 0 || memcmp(again.data, body->data, body->len) == 0);
    FUZZ_CHECK(d2->size == d->size && d2->bare_lf == d->bare_lf && d2->bare_cr == d->bare_cr &&
               d2->nul == d->nul && d2->received == d->received &&
               d2->header_size == d->header_size);
    buf_free(&again);
    free(wire);
}

/*
 * fuzz_reader_run - parse in[0..len) cut into reads by cut(); returns the
 * trace. cut_seed 0: one read; 1: one octet per read; else a pseudo-random
 * pattern from the seed.
 */
static struct fuzz_reader_trace fuzz_reader_run(const uint8_t *in,
                                                size_t len,
                                                unsigned cut_seed,
                                                size_t limit)
{
    struct fuzz_reader_trace t = {.hash = 1469598103934665603ull};
    struct smtpd_reader r;
    struct buf body;
    bool in_data = false;
    size_t pos = 0;
    uint32_t lcg = cut_seed;

    buf_init(&body, 0);
    smtpd_reader_init(&r);
    while (pos < len) {
        size_t read_len = len - pos;
        if (cut_seed == 1) {
            read_len = 1;
        } else if (cut_seed > 1) {
            lcg = lcg * 1103515245u + 12345u;
            size_t n = 1 + (lcg >> 16) % 700;
            read_len = n < read_len ? n : read_len;
        }
        /* One read: feed it until every octet is used, one event at a time. */
        const uint8_t *p = in + pos;
        size_t left = read_len;
        while (left > 0) {
            size_t used = 0;
            enum smtpd_reader_mode mode = smtpd_reader_mode(&r);
            enum smtpd_reader_event ev = smtpd_reader_feed(&r, p, left, &used);
            FUZZ_CHECK(used <= left);
            FUZZ_CHECK(ev != SMTPD_READER_NEED_MORE || used == left);
            FUZZ_CHECK(ev == SMTPD_READER_NEED_MORE || used > 0);
            p += used;
            left -= used;
            if (ev == SMTPD_READER_NEED_MORE)
                continue;
            t.events++;
            uint8_t tag = (uint8_t)ev;
            fuzz_reader_mix(&t, &tag, 1);
            if (ev == SMTPD_READER_DATA_END) {
                FUZZ_CHECK(mode == SMTPD_READER_MODE_DATA && in_data);
                FUZZ_CHECK(smtpd_reader_mode(&r) == SMTPD_READER_MODE_COMMAND);
                in_data = false;
                t.data_ends++;
                const struct smtpd_reader_data *d = smtpd_reader_data(&r);
                fuzz_reader_check_body(d, &body, limit);
                fuzz_reader_mix(&t, body.data ? body.data : (const uint8_t *)"", body.len);
                uint8_t flags[6] = {d->bare_lf, d->bare_cr,        d->nul,
                                    d->too_big, d->header_too_big, (uint8_t)d->received};
                fuzz_reader_mix(&t, flags, sizeof(flags));
                fuzz_reader_mix(&t, &d->size, sizeof(d->size));
                fuzz_reader_mix(&t, &d->header_size, sizeof(d->header_size));
                buf_reset(&body);
                continue;
            }
            /* Every other event is a command-mode event. */
            FUZZ_CHECK(mode == SMTPD_READER_MODE_COMMAND && !in_data);
            if (ev != SMTPD_READER_LINE)
                continue;
            size_t line_len = 0;
            const char *line = smtpd_reader_line(&r, &line_len);
            FUZZ_CHECK(line_len <= SMTPD_READER_LINE_MAX - 2);
            FUZZ_CHECK(strlen(line) == line_len); /* no NUL inside */
            FUZZ_CHECK(memchr(line, '\r', line_len) == NULL);
            FUZZ_CHECK(memchr(line, '\n', line_len) == NULL);
            fuzz_reader_mix(&t, line, line_len);
            if (fuzz_reader_is_data(line, line_len)) {
                smtpd_reader_start_data(&r, &body, limit, limit / 2);
                in_data = true;
            }
        }
        pos += read_len;
    }
    /* A DATA phase left open: the body so far is still bounded. */
    if (in_data) {
        FUZZ_CHECK(smtpd_reader_mode(&r) == SMTPD_READER_MODE_DATA);
        FUZZ_CHECK(body.len <= limit);
    }
    buf_free(&body);
    return t;
}

/* LLVMFuzzerInitialize - quiet logs unless asked. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    return 0;
}

/* LLVMFuzzerTestOneInput - one stream, parsed three ways. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    unsigned cut = fuzz_u8(&in);
    size_t limit = fuzz_reader_limits[fuzz_u8(&in) % HAMR_ARRAY_LEN(fuzz_reader_limits)];

    struct fuzz_reader_trace whole = fuzz_reader_run(in.p, in.n, 0, limit);
    struct fuzz_reader_trace octets = fuzz_reader_run(in.p, in.n, 1, limit);
    FUZZ_CHECK(whole.hash == octets.hash && whole.events == octets.events &&
               whole.data_ends == octets.data_ends);
    if (cut > 1) {
        struct fuzz_reader_trace cuts = fuzz_reader_run(in.p, in.n, cut, limit);
        FUZZ_CHECK(whole.hash == cuts.hash && whole.events == cuts.events);
    }
    return 0;
}
