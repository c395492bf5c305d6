/* smtpc_reply.h - resumable parser for SMTP replies received from a next hop. */
#ifndef HAMR_NET_SMTPC_REPLY_H
#define HAMR_NET_SMTPC_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTPC_REPLY_LINE_MAX 2048 /* bytes of one line, without its CRLF */
#define SMTPC_REPLY_LINES_MAX 100 /* lines of one reply */
#define SMTPC_REPLY_TEXT_MAX 512  /* kept text, including the NUL */

/* EHLO keywords (RFC 5321 4.1.1.1) that the client acts on. */
enum {
    SMTPC_EXT_PIPELINING = 1 << 0, /* RFC 2920 */
    SMTPC_EXT_SIZE = 1 << 1,       /* RFC 1870 */
    SMTPC_EXT_8BITMIME = 1 << 2,   /* RFC 6152 */
    SMTPC_EXT_STARTTLS = 1 << 3,   /* RFC 3207 */
    /*
     * RFC 4954: "AUTH mech ..." (or the pre-standard "AUTH=mech ...", as
     * some servers still list it). SMTPC_EXT_AUTH for either line, plus one
     * bit per mechanism the client can use (RFC 4616 PLAIN; LOGIN, never
     * standardised but everywhere).
     */
    SMTPC_EXT_AUTH = 1 << 4,
    SMTPC_EXT_AUTH_PLAIN = 1 << 5,
    SMTPC_EXT_AUTH_LOGIN = 1 << 6,
    SMTPC_EXT_DSN = 1 << 7,        /* RFC 3461 */
    SMTPC_EXT_SMTPUTF8 = 1 << 8,   /* RFC 6531 */
    SMTPC_EXT_REQUIRETLS = 1 << 9, /* RFC 8689 */
    SMTPC_EXT_CHUNKING = 1 << 10,  /* RFC 3030 */
};

/* smtpc_reply - one complete reply. */
struct smtpc_reply {
    unsigned code; /* 200..599 */
    size_t n_lines;
    char text[SMTPC_REPLY_TEXT_MAX]; /* lines' text joined by ' ', printable, truncated */
    size_t text_len;
    unsigned ext;        /* SMTPC_EXT_* named on lines 2.. (EHLO) */
    uint64_t size_limit; /* SIZE argument; 0 when absent or 0 */
};

/* smtpc_reply_parser - fixed-size state; never allocates. */
struct smtpc_reply_parser {
    struct smtpc_reply reply;            /* reply being assembled, or complete */
    char line[SMTPC_REPLY_LINE_MAX + 1]; /* + a CR waiting for its LF */
    size_t line_len;
    int err; /* sticky: 0 or HAMR_EPROTO */
    char errmsg[128];
};

/* smtpc_reply_init - an empty parser. */
void smtpc_reply_init(struct smtpc_reply_parser *p);

/*
 * smtpc_reply_feed - consume bytes of data (len) until one reply is
 * complete. *used says how many were consumed. Returns 1 when p->reply holds
 * a complete reply (call smtpc_reply_next before feeding the rest), 0 when
 * all of data was consumed and more is needed, HAMR_EPROTO when the input is
 * malformed (p->errmsg says why; the error is sticky). Data is borrowed.
 */
int smtpc_reply_feed(struct smtpc_reply_parser *p, const char *data, size_t len, size_t *used);

/* smtpc_reply_next - forget the complete reply and start on the next one. */
void smtpc_reply_next(struct smtpc_reply_parser *p);

/* smtpc_reply_ehlo_line - note a keyword from one EHLO line (text after "250-"). */
void smtpc_reply_ehlo_line(struct smtpc_reply *r, const char *line, size_t len);

#endif
