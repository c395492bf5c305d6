/* smtpd_reader.h - resumable SMTP input parser: command lines and DATA bodies. */
#ifndef HAMR_NET_SMTPD_READER_H
#define HAMR_NET_SMTPD_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/*
 * The longest command line taken, CRLF included. RFC 5321 4.5.3.1.4 says
 * 512 and lets extensions raise it, and those hamr offers do (each in its
 * section 3): RFC 3461 by 500 for RCPT's NOTIFY and ORCPT and by 100 for
 * MAIL's RET and ENVID (xtext may triple their octets), RFC 1870 by 26 for
 * SIZE, RFC 4954 by 500 for AUTH=. 2048 is Postfix's line_length_limit.
 * Memory: every session holds a line buffer of SMTPD_READER_LINE_MAX + 1
 * bytes (2049; it was 513 at 512).
 */
#define SMTPD_READER_LINE_MAX 2048

/* What smtpd_reader_feed() found. */
enum smtpd_reader_event {
    SMTPD_READER_NEED_MORE,     /* all input used, nothing complete yet */
    SMTPD_READER_LINE,          /* a complete, clean command line */
    SMTPD_READER_LINE_TOO_LONG, /* over LINE_MAX octets; the rest up to CRLF is dropped */
    SMTPD_READER_LINE_BARE_LF,  /* a complete line that held a bare LF */
    SMTPD_READER_LINE_BARE_CR,  /* a complete line that held a bare CR */
    SMTPD_READER_LINE_NUL,      /* a complete line that held a NUL */
    SMTPD_READER_DATA_END,      /* CRLF.CRLF seen; the reader is in command mode again */
    SMTPD_READER_CHUNK_END,     /* a BDAT chunk's last octet; command mode again */
};

enum smtpd_reader_mode {
    SMTPD_READER_MODE_COMMAND,
    SMTPD_READER_MODE_DATA,
    SMTPD_READER_MODE_CHUNK, /* BDAT (RFC 3030): a counted run of octets */
};

/* smtpd_reader_data - what one DATA phase held; valid after DATA_END. */
struct smtpd_reader_data {
    size_t size;         /* un-stuffed octets, whether stored or not */
    size_t header_size;  /* octets of the header block */
    unsigned received;   /* "Received:" header fields (hop count) */
    bool bare_lf;        /* an LF not preceded by CR */
    bool bare_cr;        /* a CR not followed by LF */
    bool nul;            /* a NUL octet */
    bool too_big;        /* size went over size_limit; storing stopped there */
    bool header_too_big; /* header_size went over header_limit */
    bool nomem;          /* the body buffer could not grow */
};

/* Private parser state; fields are read only through the functions below. */
struct smtpd_reader {
    enum smtpd_reader_mode mode;
    /* command mode */
    char line[SMTPD_READER_LINE_MAX + 1];
    size_t line_len;    /* octets stored in line */
    size_t line_octets; /* octets of the current line so far, CRLF excluded */
    bool cr_pending;    /* last octet was CR, not yet known to be bare */
    bool line_bare_lf, line_bare_cr, line_nul;
    bool discarding;   /* dropping the tail of an over-long line */
    char long_head[8]; /* the first octets of the last over-long line, NUL-terminated */
    bool line_ready;   /* line holds the last LINE event's text */
    /* data mode */
    int dstate;
    int hstate;
    size_t hpending; /* octets of a line not yet known to be a header */
    int hmatch;      /* chars of "received" matched so far, -1: no match */
    bool in_headers;
    bool seen_header;
    struct buf *body;
    size_t size_limit;
    size_t header_limit;
    struct smtpd_reader_data data;
    uint64_t chunk_left; /* chunk mode: octets still to read */
    bool chunk_keep;     /* chunk mode: octets are message data (else dropped) */
    uint8_t out[4096];   /* staging for body octets, flushed into body */
    size_t out_len;
};

/* smtpd_reader_init - start in command mode with nothing buffered. */
void smtpd_reader_init(struct smtpd_reader *r);

/*
 * smtpd_reader_start_data - switch to DATA mode (call after the 354).
 * Un-stuffed body octets are appended to body, which is borrowed until
 * DATA_END; at most size_limit octets are stored, after that they are
 * counted and dropped. header_limit bounds the header block (only flagged).
 */
void smtpd_reader_start_data(struct smtpd_reader *r,
                             struct buf *body,
                             size_t size_limit,
                             size_t header_limit);

/*
 * smtpd_reader_start_bdat - open a BDAT message (RFC 3030) at its first
 * chunk: the same body, limits and record as smtpd_reader_start_data, but
 * the reader stays in command mode until smtpd_reader_start_chunk.
 */
void smtpd_reader_start_bdat(struct smtpd_reader *r,
                             struct buf *body,
                             size_t size_limit,
                             size_t header_limit);

/*
 * smtpd_reader_start_chunk - the next size octets are a BDAT chunk: taken
 * as they are (no dot-stuffing, no line end ends anything) and, with keep,
 * added to the message opened by smtpd_reader_start_bdat, with the same
 * checks as DATA (bare LF, bare CR, NUL flagged; size and header limits;
 * Received: counted; a CRLF split between chunks is one CRLF). Without
 * keep the octets are read and dropped. CHUNK_END comes after the last
 * one; size 0 gives no event (the caller ends the chunk itself).
 */
void smtpd_reader_start_chunk(struct smtpd_reader *r, uint64_t size, bool keep);

/*
 * smtpd_reader_end_bdat - the LAST chunk ended: a CR still waiting for its
 * LF is bare; a last line without CRLF gets one (counted in size); flush.
 * smtpd_reader_data then holds the message's record.
 */
void smtpd_reader_end_bdat(struct smtpd_reader *r);

/*
 * smtpd_reader_forget_body - the body of an open BDAT message is about to
 * be freed (RSET, an error): store nothing more into it.
 */
void smtpd_reader_forget_body(struct smtpd_reader *r);

/*
 * smtpd_reader_feed - parse in[0..len) until one event completes.
 * *used is set to the octets consumed; feed the rest again after handling
 * the event. Never keeps a pointer to in. Untrusted input of any content
 * is safe here: memory is bounded by the line buffer and the body limit.
 */
enum smtpd_reader_event smtpd_reader_feed(struct smtpd_reader *r,
                                          const uint8_t *in,
                                          size_t len,
                                          size_t *used);

/*
 * smtpd_reader_long_head - the first (up to 7) octets of the line of the
 * last LINE_TOO_LONG event, NUL-terminated: enough to tell the verb.
 */
const char *smtpd_reader_long_head(const struct smtpd_reader *r);

/* smtpd_reader_line - the NUL-terminated line of the last LINE event (no CRLF). */
const char *smtpd_reader_line(const struct smtpd_reader *r, size_t *len);

/* smtpd_reader_data - the record of the last DATA phase. */
const struct smtpd_reader_data *smtpd_reader_data(const struct smtpd_reader *r);

/* smtpd_reader_mode - the current mode. */
enum smtpd_reader_mode smtpd_reader_mode(const struct smtpd_reader *r);

#endif
