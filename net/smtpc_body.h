/* smtpc_body.h - message body to DATA wire form: CRLF only, dot-stuffed, final dot. */
#ifndef HAMR_NET_SMTPC_BODY_H
#define HAMR_NET_SMTPC_BODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTPC_BODY_FILL_MIN 5 /* smallest output room that always makes progress */

/* smtpc_body - position in a borrowed body while it is being sent. */
struct smtpc_body {
    const uint8_t *data;
    size_t len;
    size_t pos;
    bool bol;  /* the next output byte starts a line */
    bool done; /* the final ".\r\n" has been produced */
};

/* smtpc_body_init - start on data (len bytes), borrowed until done. */
void smtpc_body_init(struct smtpc_body *b, const uint8_t *data, size_t len);

/*
 * smtpc_body_fill - write the next at most cap bytes (cap >=
 * SMTPC_BODY_FILL_MIN) of wire form into out. Returns the count; b->done is
 * set once the final ".\r\n" is in out.
 */
size_t smtpc_body_fill(struct smtpc_body *b, uint8_t *out, size_t cap);

#endif
