/*
 * smtpc_body.h - message body to DATA wire form: CRLF only, dot-stuffed,
 * final dot; or to BDAT chunks (RFC 3030): CRLF only, as it is.
 */
#ifndef HAMR_NET_SMTPC_BODY_H
#define HAMR_NET_SMTPC_BODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTPC_BODY_FILL_MIN 5 /* smallest output room that always makes progress */

/*
 * smtpc_body - position in a body while it is being sent, given whole or in
 * chunks. What a line end or a leading dot needs is kept across chunks
 * (bol, skip_lf), so the wire form does not depend on where they split.
 */
struct smtpc_body {
    const uint8_t *data; /* the chunk being sent, borrowed until consumed */
    size_t len;
    size_t pos;
    bool bol;     /* the next output byte starts a line */
    bool skip_lf; /* the last chunk ended in CR, already sent as CRLF: drop a leading LF */
    bool last;    /* data is the end of the body */
    bool done;    /* the final ".\r\n" has been produced (BDAT: the last octet) */
    bool bdat;    /* BDAT: no dot-stuffing and no final dot */
};

/* smtpc_body_init - start on the whole body: data (len bytes), borrowed until done. */
void smtpc_body_init(struct smtpc_body *b, const uint8_t *data, size_t len);

/* smtpc_body_begin - start on a body that comes in chunks (smtpc_body_feed). */
void smtpc_body_begin(struct smtpc_body *b);

/*
 * smtpc_body_feed - the next chunk, data (len bytes, borrowed until
 * smtpc_body_need says it is consumed); last: nothing follows it. Only when
 * smtpc_body_need is true.
 */
void smtpc_body_feed(struct smtpc_body *b, const uint8_t *data, size_t len, bool last);

/*
 * smtpc_body_bdat - the body goes out in BDAT chunks (RFC 3030 2): no
 * dot-stuffing and no final dot; lines still end in CRLF only, and the
 * last one gets a CRLF when it lacks one, as under DATA. Right after
 * smtpc_body_init or smtpc_body_begin.
 */
void smtpc_body_bdat(struct smtpc_body *b);

/* smtpc_body_need - the chunk is consumed and more of the body is to come. */
bool smtpc_body_need(const struct smtpc_body *b);

/*
 * smtpc_body_fill - write the next at most cap bytes (cap >=
 * SMTPC_BODY_FILL_MIN) of wire form into out. Returns the count (0 when the
 * chunk is consumed and the next is needed); b->done is set once the final
 * ".\r\n" is in out (BDAT: the last octet, which may come with a count of
 * 0, as for an empty body).
 */
size_t smtpc_body_fill(struct smtpc_body *b, uint8_t *out, size_t cap);

#endif
