/*
 * smtpd_reader.c - turns SMTP input octets into command lines and DATA bodies.
 *
 * Knows nothing of sockets: the session feeds it whatever arrived and it
 * returns one event at a time, saving its position between calls, so a
 * command or a terminator split across any number of reads parses the same
 * as one read (nginx ngx_mail_smtp_parse_command, Redis processInputBuffer).
 *
 * Command mode: only CRLF ends a line. A bare LF or a bare CR inside a line
 * does not end it; the line is reported as invalid when its CRLF arrives.
 * A NUL makes the line invalid too. A line longer than
 * SMTPD_READER_LINE_MAX (2048) octets, CRLF included (RFC 5321 4.5.3.1.4's
 * 512 as raised by RFC 3461, RFC 1870 and RFC 4954; see smtpd_reader.h),
 * is reported as soon as the limit is passed and the rest of it, up to the
 * next CRLF, is dropped unbuffered: its tail is never parsed as a command.
 *
 * DATA mode: RFC 5321 4.5.2 dot-unstuffing; only CRLF "." CRLF ends the
 * data, where the start of DATA counts as following a CRLF. Bare LF, bare
 * CR and NUL never end anything (SMTP smuggling: SEC Consult 2023,
 * CVE-2023-51764): they are kept as data and flagged, and the session
 * rejects such a message. Body octets go into a caller's buffer up to the
 * size limit; past it they are counted and dropped until the end. The
 * header block (until the first empty or non-header line) is measured and
 * its Received: fields counted for the hop limit.
 *
 * Owns: nothing allocated. The body buffer is borrowed during DATA.
 * Security: parses untrusted network input; memory is bounded by the line
 * buffer, the staging array and the body limit.
 */
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "util/scan.h"
#include "net/smtpd_reader.h"

/* DATA states; "line start" means after CRLF or at the start of DATA. */
enum {
    SMTPD_READER_D_BOL,    /* at a line start */
    SMTPD_READER_D_MID,    /* inside a line */
    SMTPD_READER_D_CR,     /* after a CR, waiting to see whether LF follows */
    SMTPD_READER_D_DOT,    /* "." at a line start */
    SMTPD_READER_D_DOT_CR, /* "." CR at a line start: LF here ends DATA */
};

/* Header analysis states (RFC 5322 2.2, 3.6.7). */
enum {
    SMTPD_READER_H_LINE_START, /* first octet of a header-block line */
    SMTPD_READER_H_NAME,       /* inside a field name, before ':' */
    SMTPD_READER_H_VALUE,      /* after ':' or in a folded line */
};

static const char smtpd_reader_received[] = "received";

/* smtpd_reader_reset_line - forget the current command line. */
static void smtpd_reader_reset_line(struct smtpd_reader *r)
{
    r->line_len = 0;
    r->line_octets = 0;
    r->cr_pending = false;
    r->line_bare_lf = false;
    r->line_bare_cr = false;
    r->line_nul = false;
    r->discarding = false;
}

/* smtpd_reader_init - start in command mode with nothing buffered. */
void smtpd_reader_init(struct smtpd_reader *r)
{
    memset(r, 0, sizeof(*r));
    r->mode = SMTPD_READER_MODE_COMMAND;
    smtpd_reader_reset_line(r);
}

/* smtpd_reader_open_body - a fresh message record into body (DATA or BDAT). */
static void smtpd_reader_open_body(struct smtpd_reader *r,
                                   struct buf *body,
                                   size_t size_limit,
                                   size_t header_limit)
{
    r->dstate = SMTPD_READER_D_BOL;
    r->hstate = SMTPD_READER_H_LINE_START;
    r->hpending = 0;
    r->hmatch = 0;
    r->in_headers = true;
    r->seen_header = false;
    r->body = body;
    r->size_limit = size_limit;
    r->header_limit = header_limit;
    memset(&r->data, 0, sizeof(r->data));
    r->out_len = 0;
}

/* smtpd_reader_start_data - switch to DATA mode. */
void smtpd_reader_start_data(struct smtpd_reader *r,
                             struct buf *body,
                             size_t size_limit,
                             size_t header_limit)
{
    smtpd_reader_open_body(r, body, size_limit, header_limit);
    r->mode = SMTPD_READER_MODE_DATA;
}

/* smtpd_reader_start_bdat - open a BDAT message; the mode stays command. */
void smtpd_reader_start_bdat(struct smtpd_reader *r,
                             struct buf *body,
                             size_t size_limit,
                             size_t header_limit)
{
    smtpd_reader_open_body(r, body, size_limit, header_limit);
}

/* smtpd_reader_start_chunk - read the next size octets as a chunk. */
void smtpd_reader_start_chunk(struct smtpd_reader *r, uint64_t size, bool keep)
{
    HAMR_ASSERT(r->mode == SMTPD_READER_MODE_COMMAND);
    r->chunk_left = size;
    r->chunk_keep = keep && r->body != NULL;
    if (size > 0)
        r->mode = SMTPD_READER_MODE_CHUNK;
}

/* smtpd_reader_line_octet - count one content octet of a command line; store it if it fits. */
static void smtpd_reader_line_octet(struct smtpd_reader *r, uint8_t c)
{
    if (r->line_octets < SIZE_MAX)
        r->line_octets++;
    if (!r->discarding && r->line_len < SMTPD_READER_LINE_MAX - 2)
        r->line[r->line_len++] = (char)c;
}

/* smtpd_reader_line_end - the CRLF of a line arrived: the event for it. */
static enum smtpd_reader_event smtpd_reader_line_end(struct smtpd_reader *r)
{
    enum smtpd_reader_event ev = SMTPD_READER_LINE;

    if (r->discarding)
        ev = SMTPD_READER_NEED_MORE; /* already reported as too long */
    else if (r->line_nul)
        ev = SMTPD_READER_LINE_NUL;
    else if (r->line_bare_lf)
        ev = SMTPD_READER_LINE_BARE_LF;
    else if (r->line_bare_cr)
        ev = SMTPD_READER_LINE_BARE_CR;
    if (ev != SMTPD_READER_LINE && ev != SMTPD_READER_NEED_MORE) {
        /* The session tells "BDAT ..." from the head (SECURITY.md S22). */
        size_t head =
            r->line_len < sizeof(r->long_head) - 1 ? r->line_len : sizeof(r->long_head) - 1;
        memcpy(r->long_head, r->line, head);
        r->long_head[head] = '\0';
    }
    size_t keep = ev == SMTPD_READER_LINE ? r->line_len : 0;
    smtpd_reader_reset_line(r);
    r->line_len = keep;
    r->line[keep] = '\0';
    /* A LINE is returned at once; the next feed starts a fresh line. */
    r->line_ready = ev == SMTPD_READER_LINE;
    return ev;
}

/* smtpd_reader_feed_command - command mode: consume until a line event. */
static enum smtpd_reader_event smtpd_reader_feed_command(struct smtpd_reader *r,
                                                         const uint8_t *in,
                                                         size_t len,
                                                         size_t *used)
{
    size_t i = 0;

    if (r->line_ready) {
        r->line_ready = false;
        r->line_len = 0;
        r->line[0] = '\0';
    }
    while (i < len) {
        uint8_t c = in[i++];

        if (r->cr_pending) {
            r->cr_pending = false;
            if (c == '\n') {
                enum smtpd_reader_event ev = smtpd_reader_line_end(r);
                if (ev != SMTPD_READER_NEED_MORE) {
                    *used = i;
                    return ev;
                }
                continue;
            }
            /* The CR was bare: it is content, and c is looked at below. */
            r->line_bare_cr = true;
            smtpd_reader_line_octet(r, '\r');
        }
        if (c == '\r') {
            r->cr_pending = true;
        } else {
            if (c == '\n')
                r->line_bare_lf = true; /* never a line end */
            else if (c == '\0')
                r->line_nul = true;
            smtpd_reader_line_octet(r, c);
        }
        if (!r->discarding && r->line_octets > SMTPD_READER_LINE_MAX - 2) {
            /* Report now; drop everything up to the next CRLF unbuffered. */
            r->discarding = true;
            size_t head =
                r->line_len < sizeof(r->long_head) - 1 ? r->line_len : sizeof(r->long_head) - 1;
            memcpy(r->long_head, r->line, head);
            r->long_head[head] = '\0';
            r->line_len = 0;
            *used = i;
            return SMTPD_READER_LINE_TOO_LONG;
        }
    }
    *used = i;
    return SMTPD_READER_NEED_MORE;
}

/* smtpd_reader_long_head - the head of the last over-long line; see smtpd_reader.h. */
const char *smtpd_reader_long_head(const struct smtpd_reader *r)
{
    return r->long_head;
}

/* smtpd_reader_flush - move staged body octets into the body buffer. */
static void smtpd_reader_flush(struct smtpd_reader *r)
{
    if (r->out_len == 0)
        return;
    if (!r->data.nomem && buf_append(r->body, r->out, r->out_len) != 0)
        r->data.nomem = true;
    r->out_len = 0;
}

/* smtpd_reader_header_end - the header block is over. */
static void smtpd_reader_header_end(struct smtpd_reader *r)
{
    r->in_headers = false;
    r->hpending = 0;
}

/* smtpd_reader_header_add - n more octets belong to the header block. */
static void smtpd_reader_header_add(struct smtpd_reader *r, size_t n)
{
    r->data.header_size += n;
    if (r->data.header_size > r->header_limit)
        r->data.header_too_big = true;
}

/*
 * smtpd_reader_header_octet - follow one un-stuffed octet through the
 * header block. A line is a header field if it is "name:" with a name of
 * printable non-colon octets (RFC 5322 2.2), or a folded continuation
 * (starts with WSP) of one. An empty line or any other line ends the block.
 */
static void smtpd_reader_header_octet(struct smtpd_reader *r, uint8_t c)
{
    switch (r->hstate) {
        case SMTPD_READER_H_LINE_START:
            if ((c == ' ' || c == '\t') && r->seen_header) {
                smtpd_reader_header_add(r, 1);
                r->hstate = SMTPD_READER_H_VALUE;
            } else if (c > 32 && c < 127 && c != ':') {
                r->hpending = 1;
                r->hmatch = (c | 0x20) == smtpd_reader_received[0] ? 1 : -1;
                r->hstate = SMTPD_READER_H_NAME;
            } else {
                smtpd_reader_header_end(r);
            }
            break;
        case SMTPD_READER_H_NAME:
            if (c == ':') {
                smtpd_reader_header_add(r, r->hpending + 1);
                r->hpending = 0;
                r->seen_header = true;
                if (r->hmatch == (int)(sizeof(smtpd_reader_received) - 1))
                    r->data.received++;
                r->hstate = SMTPD_READER_H_VALUE;
            } else if (c > 32 && c < 127) {
                r->hpending++;
                if (r->hmatch >= 0 && r->hmatch < (int)(sizeof(smtpd_reader_received) - 1) &&
                    (c | 0x20) == smtpd_reader_received[r->hmatch])
                    r->hmatch++;
                else
                    r->hmatch = -1;
            } else {
                smtpd_reader_header_end(r);
            }
            break;
        default: /* SMTPD_READER_H_VALUE */
            smtpd_reader_header_add(r, 1);
            if (c == '\n')
                r->hstate = SMTPD_READER_H_LINE_START;
            break;
    }
}

/* smtpd_reader_emit - one un-stuffed body octet: measure it, store it if under the limit. */
static void smtpd_reader_emit(struct smtpd_reader *r, uint8_t c)
{
    if (r->in_headers)
        smtpd_reader_header_octet(r, c);
    if (r->data.size < SIZE_MAX)
        r->data.size++;
    if (r->data.size > r->size_limit) {
        /* RFC 1870: keep reading to the end, then 552; store no more. */
        r->data.too_big = true;
        return;
    }
    r->out[r->out_len++] = c;
    if (r->out_len == sizeof(r->out))
        smtpd_reader_flush(r);
}

/*
 * smtpd_reader_emit_run - n octets with no CR, LF or NUL, past the header
 * block: the same accounting as n calls of smtpd_reader_emit, done at once
 * (the bulk of every message body takes this path).
 */
static void smtpd_reader_emit_run(struct smtpd_reader *r, const uint8_t *p, size_t n)
{
    size_t before = r->data.size;
    r->data.size = before > SIZE_MAX - n ? SIZE_MAX : before + n;
    size_t keep = n;
    if (r->data.size > r->size_limit) {
        r->data.too_big = true;
        keep = before < r->size_limit ? r->size_limit - before : 0;
    }
    if (keep == 0)
        return;
    if (r->out_len + keep <= sizeof(r->out)) {
        memcpy(r->out + r->out_len, p, keep);
        r->out_len += keep;
        if (r->out_len == sizeof(r->out))
            smtpd_reader_flush(r);
        return;
    }
    smtpd_reader_flush(r);
    if (!r->data.nomem && buf_append(r->body, p, keep) != 0)
        r->data.nomem = true;
}

/* smtpd_reader_data_mid - an octet inside a line (or after a bare CR). */
static void smtpd_reader_data_mid(struct smtpd_reader *r, uint8_t c)
{
    if (c == '\r') {
        r->dstate = SMTPD_READER_D_CR;
        return;
    }
    if (c == '\n')
        r->data.bare_lf = true; /* never a line end */
    else if (c == '\0')
        r->data.nul = true;
    smtpd_reader_emit(r, c);
    r->dstate = SMTPD_READER_D_MID;
}

/* smtpd_reader_feed_data - DATA mode: consume until CRLF.CRLF or the input ends. */
static enum smtpd_reader_event smtpd_reader_feed_data(struct smtpd_reader *r,
                                                      const uint8_t *in,
                                                      size_t len,
                                                      size_t *used)
{
    size_t i = 0;

    while (i < len) {
        if (r->dstate == SMTPD_READER_D_MID && !r->in_headers) {
            size_t j = i + scan_line_end(in + i, len - i, true);
            if (j > i) {
                smtpd_reader_emit_run(r, in + i, j - i);
                i = j;
                continue;
            }
        }
        uint8_t c = in[i++];

        switch (r->dstate) {
            case SMTPD_READER_D_BOL:
                if (c == '.')
                    r->dstate = SMTPD_READER_D_DOT;
                else
                    smtpd_reader_data_mid(r, c);
                break;
            case SMTPD_READER_D_DOT:
                /* RFC 5321 4.5.2: a leading dot followed by more is removed. */
                if (c == '\r')
                    r->dstate = SMTPD_READER_D_DOT_CR;
                else
                    smtpd_reader_data_mid(r, c);
                break;
            case SMTPD_READER_D_DOT_CR:
                if (c == '\n') {
                    smtpd_reader_flush(r);
                    r->mode = SMTPD_READER_MODE_COMMAND;
                    r->body = NULL;
                    smtpd_reader_reset_line(r);
                    *used = i;
                    return SMTPD_READER_DATA_END;
                }
                /* "." CR x: the dot was stuffing, the CR is bare. */
                r->data.bare_cr = true;
                smtpd_reader_emit(r, '\r');
                smtpd_reader_data_mid(r, c);
                break;
            case SMTPD_READER_D_CR:
                if (c == '\n') {
                    smtpd_reader_emit(r, '\r');
                    smtpd_reader_emit(r, '\n');
                    r->dstate = SMTPD_READER_D_BOL;
                } else {
                    r->data.bare_cr = true;
                    smtpd_reader_emit(r, '\r');
                    smtpd_reader_data_mid(r, c);
                }
                break;
            default: /* SMTPD_READER_D_MID */
                smtpd_reader_data_mid(r, c);
                break;
        }
    }
    smtpd_reader_flush(r);
    *used = i;
    return SMTPD_READER_NEED_MORE;
}

/*
 * smtpd_reader_chunk_octet - one octet of a kept chunk. Line ends are
 * tracked only to flag bare LF and bare CR as DATA does; a CR at a chunk's
 * end waits in D_CR for the next chunk. D_BOL means nothing here: there is
 * no dot-stuffing.
 */
static void smtpd_reader_chunk_octet(struct smtpd_reader *r, uint8_t c)
{
    if (r->dstate == SMTPD_READER_D_CR) {
        if (c == '\n') {
            smtpd_reader_emit(r, '\r');
            smtpd_reader_emit(r, '\n');
            r->dstate = SMTPD_READER_D_BOL;
            return;
        }
        r->data.bare_cr = true;
        smtpd_reader_emit(r, '\r');
    }
    smtpd_reader_data_mid(r, c);
}

/* smtpd_reader_feed_chunk - chunk mode: consume up to the chunk's end. */
static enum smtpd_reader_event smtpd_reader_feed_chunk(struct smtpd_reader *r,
                                                       const uint8_t *in,
                                                       size_t len,
                                                       size_t *used)
{
    size_t n = r->chunk_left < len ? (size_t)r->chunk_left : len;
    size_t i = 0;

    if (!r->chunk_keep) {
        i = n;
    } else {
        while (i < n) {
            if (r->dstate != SMTPD_READER_D_CR && !r->in_headers) {
                size_t j = i + scan_line_end(in + i, n - i, true);
                if (j > i) {
                    smtpd_reader_emit_run(r, in + i, j - i);
                    r->dstate = SMTPD_READER_D_MID;
                    i = j;
                    continue;
                }
            }
            smtpd_reader_chunk_octet(r, in[i++]);
        }
        smtpd_reader_flush(r);
    }
    r->chunk_left -= n;
    *used = n;
    if (r->chunk_left > 0)
        return SMTPD_READER_NEED_MORE;
    r->mode = SMTPD_READER_MODE_COMMAND;
    smtpd_reader_reset_line(r);
    return SMTPD_READER_CHUNK_END;
}

/* smtpd_reader_end_bdat - the LAST chunk ended. */
void smtpd_reader_end_bdat(struct smtpd_reader *r)
{
    if (r->body == NULL)
        return;
    if (r->dstate == SMTPD_READER_D_CR) {
        r->data.bare_cr = true;
        smtpd_reader_emit(r, '\r');
        r->dstate = SMTPD_READER_D_MID;
    }
    if (r->dstate != SMTPD_READER_D_BOL) {
        /*
         * The last line has no CRLF: end it, so the message is what the
         * same text sent with DATA would be (DATA's data always ends in
         * CRLF) and the queue holds CRLF lines only.
         */
        smtpd_reader_emit(r, '\r');
        smtpd_reader_emit(r, '\n');
        r->dstate = SMTPD_READER_D_BOL;
    }
    smtpd_reader_flush(r);
    r->body = NULL;
}

/* smtpd_reader_forget_body - the borrowed body goes away: store nothing more. */
void smtpd_reader_forget_body(struct smtpd_reader *r)
{
    HAMR_ASSERT(r->mode != SMTPD_READER_MODE_DATA);
    r->body = NULL;
    r->out_len = 0;
    r->chunk_keep = false;
}

/* smtpd_reader_feed - parse until one event completes. */
enum smtpd_reader_event smtpd_reader_feed(struct smtpd_reader *r,
                                          const uint8_t *in,
                                          size_t len,
                                          size_t *used)
{
    if (r->mode == SMTPD_READER_MODE_DATA)
        return smtpd_reader_feed_data(r, in, len, used);
    if (r->mode == SMTPD_READER_MODE_CHUNK)
        return smtpd_reader_feed_chunk(r, in, len, used);
    return smtpd_reader_feed_command(r, in, len, used);
}

/* smtpd_reader_line - the line of the last LINE event. */
const char *smtpd_reader_line(const struct smtpd_reader *r, size_t *len)
{
    if (len != NULL)
        *len = r->line_len;
    return r->line;
}

/* smtpd_reader_data - the record of the last DATA phase. */
const struct smtpd_reader_data *smtpd_reader_data(const struct smtpd_reader *r)
{
    return &r->data;
}

/* smtpd_reader_mode - the current mode. */
enum smtpd_reader_mode smtpd_reader_mode(const struct smtpd_reader *r)
{
    return r->mode;
}
