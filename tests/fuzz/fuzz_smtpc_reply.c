/*
 * fuzz_smtpc_reply.c - libFuzzer target for net/smtpc_reply, the parser of
 * replies a next-hop server sends to hamr's SMTP client (SECURITY.md S21).
 *
 * Input: byte 0 picks how the stream is cut into reads; the rest is what a
 * hostile server sends. The stream is parsed in one read, one octet per
 * read and cut as byte 0 says; the replies (code, lines, text, EHLO
 * keywords) and the point of the first error must be the same every time.
 *
 * Properties checked:
 *   - a complete reply has a code of 200..599, 1..SMTPC_REPLY_LINES_MAX lines,
 *     and printable, NUL-terminated text of text_len < SMTPC_REPLY_TEXT_MAX;
 *   - feed consumes at most what it is given, returns 1 only with a
 *     complete reply, and an error is sticky (returned again, nothing used);
 *   - smtpc_reply_ehlo_line accepts any bytes.
 *
 * Security note: the input is arbitrary bytes, as from a hostile server.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtpc_reply.h"
#include "fuzz_common.h"

/* fuzz_reply_trace - what one parse produced, folded into a hash. */
struct fuzz_reply_trace {
    uint64_t hash;
    size_t replies;
    size_t error_at; /* 0: the stream was malformed; SIZE_MAX: no error */
};

/* fuzz_reply_mix - fold n bytes into the trace hash (FNV-1a). */
static void fuzz_reply_mix(struct fuzz_reply_trace *t, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        t->hash ^= b[i];
        t->hash *= 1099511628211ull;
    }
}

/* fuzz_reply_check - the properties of one complete reply. */
static void fuzz_reply_check(const struct smtpc_reply *r)
{
    FUZZ_CHECK(r->code >= 200 && r->code <= 599);
    FUZZ_CHECK(r->n_lines >= 1 && r->n_lines <= SMTPC_REPLY_LINES_MAX);
    FUZZ_CHECK(r->text_len < SMTPC_REPLY_TEXT_MAX);
    FUZZ_CHECK(strlen(r->text) == r->text_len);
    FUZZ_CHECK(fuzz_is_printable(r->text, r->text_len));
    FUZZ_CHECK((r->ext & ~(unsigned)(SMTPC_EXT_PIPELINING | SMTPC_EXT_SIZE | SMTPC_EXT_8BITMIME)) ==
               0);
    FUZZ_CHECK(r->size_limit == 0 || (r->ext & SMTPC_EXT_SIZE));
}

/* fuzz_reply_run - parse in[0..len) cut as cut_seed says (0 whole, 1 octets, else pattern). */
static struct fuzz_reply_trace fuzz_reply_run(const uint8_t *in, size_t len, unsigned cut_seed)
{
    struct fuzz_reply_trace t = {.hash = 1469598103934665603ull, .error_at = SIZE_MAX};
    struct smtpc_reply_parser p;
    size_t pos = 0;
    uint32_t lcg = cut_seed;

    smtpc_reply_init(&p);
    while (pos < len && t.error_at == SIZE_MAX) {
        size_t read_len = len - pos;
        if (cut_seed == 1) {
            read_len = 1;
        } else if (cut_seed > 1) {
            lcg = lcg * 1103515245u + 12345u;
            size_t n = 1 + (lcg >> 16) % 3000;
            read_len = n < read_len ? n : read_len;
        }
        size_t off = 0;
        while (off < read_len) {
            size_t used = 12345;
            int rv = smtpc_reply_feed(&p, (const char *)in + pos + off, read_len - off, &used);
            if (rv < 0) {
                FUZZ_CHECK(rv == HAMR_EPROTO && p.err == HAMR_EPROTO);
                FUZZ_CHECK(p.errmsg[0] != '\0');
                /* Sticky: the same error again, nothing consumed. */
                size_t again = 12345;
                FUZZ_CHECK(smtpc_reply_feed(&p, "250 ok\r\n", 8, &again) == HAMR_EPROTO);
                FUZZ_CHECK(again == 0);
                /* The replies before it and the reason must not depend on the reads. */
                t.error_at = 0;
                fuzz_reply_mix(&t, p.errmsg, strlen(p.errmsg));
                break;
            }
            FUZZ_CHECK(used <= read_len - off);
            /* 0: everything given was consumed and no reply is complete yet. */
            FUZZ_CHECK(rv != 0 || used == read_len - off);
            off += used;
            if (rv == 0)
                break;
            FUZZ_CHECK(rv == 1 && used > 0);
            fuzz_reply_check(&p.reply);
            t.replies++;
            fuzz_reply_mix(&t, &p.reply.code, sizeof(p.reply.code));
            fuzz_reply_mix(&t, &p.reply.n_lines, sizeof(p.reply.n_lines));
            fuzz_reply_mix(&t, p.reply.text, p.reply.text_len);
            fuzz_reply_mix(&t, &p.reply.ext, sizeof(p.reply.ext));
            fuzz_reply_mix(&t, &p.reply.size_limit, sizeof(p.reply.size_limit));
            smtpc_reply_next(&p);
        }
        pos += read_len;
    }
    return t;
}

/* LLVMFuzzerInitialize - quiet logs unless asked. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    return 0;
}

/* LLVMFuzzerTestOneInput - one server stream, parsed three ways. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    unsigned cut = fuzz_u8(&in);

    struct fuzz_reply_trace whole = fuzz_reply_run(in.p, in.n, 0);
    struct fuzz_reply_trace octets = fuzz_reply_run(in.p, in.n, 1);
    FUZZ_CHECK(whole.hash == octets.hash && whole.replies == octets.replies &&
               whole.error_at == octets.error_at);
    if (cut > 1) {
        struct fuzz_reply_trace cuts = fuzz_reply_run(in.p, in.n, cut);
        FUZZ_CHECK(whole.hash == cuts.hash && whole.replies == cuts.replies);
    }

    /* Any bytes as an EHLO keyword line. */
    struct smtpc_reply r;
    memset(&r, 0, sizeof(r));
    smtpc_reply_ehlo_line(&r, (const char *)in.p, in.n);
    FUZZ_CHECK(r.size_limit == 0 || (r.ext & SMTPC_EXT_SIZE));
    return 0;
}
