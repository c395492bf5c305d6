/*
 * smtpc_body.c - message body to DATA wire form, in chunks.
 *
 * RFC 5321 4.5.2: a line that starts with "." gets another "." in front.
 * RFC 5321 2.3.8: lines end in CRLF only. A bare LF and a bare CR in the
 * stored body both become CRLF, so nothing we send downstream can be read as
 * a different end of data by a lenient server (SMTP smuggling, SECURITY.md
 * S2 outbound). The body always ends with CRLF "." CRLF: a CRLF is added
 * first when the body does not end with one.
 *
 * Owns nothing: the body is borrowed and the caller gives the output room,
 * so a large body is sent through one bounded buffer instead of a second copy.
 * The body may also come in chunks (read from disk as it is sent): a CR at
 * the end of one chunk is sent as CRLF at once and an LF that starts the
 * next is then dropped, and whether the next byte starts a line is carried
 * over, so every split of a body gives the same wire form as the whole.
 *
 * BDAT (RFC 3030) counts octets instead of looking for the final dot: the
 * same form without dot-stuffing and without that dot.
 */
#include <string.h>

#include "util/common.h"
#include "util/scan.h"
#include "net/smtpc_body.h"

/* smtpc_body_init - start on data (len bytes), borrowed until done. */
void smtpc_body_init(struct smtpc_body *b, const uint8_t *data, size_t len)
{
    smtpc_body_begin(b);
    smtpc_body_feed(b, data, len, true);
}

/* smtpc_body_begin - start on a body that comes in chunks. */
void smtpc_body_begin(struct smtpc_body *b)
{
    b->data = NULL;
    b->len = 0;
    b->pos = 0;
    b->bol = true;
    b->skip_lf = false;
    b->last = false;
    b->done = false;
    b->bdat = false;
}

/* smtpc_body_bdat - no dot-stuffing and no final dot from here on. */
void smtpc_body_bdat(struct smtpc_body *b)
{
    b->bdat = true;
}

/* smtpc_body_feed - the next chunk; the previous one must be consumed. */
void smtpc_body_feed(struct smtpc_body *b, const uint8_t *data, size_t len, bool last)
{
    HAMR_ASSERT(smtpc_body_need(b));
    b->data = data;
    b->len = len;
    b->pos = 0;
    b->last = last;
}

/* smtpc_body_need - the chunk is consumed and the body goes on. */
bool smtpc_body_need(const struct smtpc_body *b)
{
    return !b->last && b->pos == b->len;
}

/* smtpc_body_fill - write the next at most cap bytes of wire form into out. */
size_t smtpc_body_fill(struct smtpc_body *b, uint8_t *out, size_t cap)
{
    HAMR_ASSERT(cap >= SMTPC_BODY_FILL_MIN);
    size_t n = 0;
    if (b->done)
        return 0;
    if (b->skip_lf && b->pos < b->len) {
        /* The CR that ended the last chunk was sent as CRLF: this LF is its own. */
        b->skip_lf = false;
        if (b->data[b->pos] == '\n')
            b->pos++;
    }
    /* Each input byte gives at most two output bytes. */
    while (b->pos < b->len && n + 2 <= cap) {
        /* Fast path: the rest of a line that needs no stuffing and no line
         * end conversion is copied as it is. */
        if (!b->bol) {
            size_t room = cap - n - 1;
            const uint8_t *p = b->data + b->pos;
            size_t avail = b->len - b->pos < room ? b->len - b->pos : room;
            size_t k = scan_line_end(p, avail, false);
            if (k > 0) {
                memcpy(out + n, p, k);
                n += k;
                b->pos += k;
                continue;
            }
        }
        uint8_t c = b->data[b->pos++];
        if (c == '\r' || c == '\n') {
            if (c == '\r' && b->pos < b->len && b->data[b->pos] == '\n')
                b->pos++;
            else if (c == '\r' && b->pos == b->len && !b->last)
                b->skip_lf = true; /* its LF, if any, starts the next chunk */
            out[n++] = '\r';
            out[n++] = '\n';
            b->bol = true;
            continue;
        }
        if (b->bol && c == '.' && !b->bdat)
            out[n++] = '.';
        out[n++] = c;
        b->bol = false;
    }
    if (b->pos < b->len || !b->last)
        return n;
    size_t tail = (b->bol ? 0 : 2) + (b->bdat ? 0 : 3);
    if (n + tail > cap)
        return n;
    if (!b->bol) {
        out[n++] = '\r';
        out[n++] = '\n';
        b->bol = true;
    }
    if (!b->bdat) {
        out[n++] = '.';
        out[n++] = '\r';
        out[n++] = '\n';
    }
    b->done = true;
    return n;
}
