/* queue_dsn.h - RFC 3464 delivery status notifications, built deterministically. */
#ifndef HAMR_QUEUE_QUEUE_DSN_H
#define HAMR_QUEUE_QUEUE_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/queue.h"

/* RFC 5322 section 2.1.1: no line longer than 998 octets without its CRLF. */
#define QUEUE_DSN_LINE_MAX 998
/* The original header block returned (RET=HDRS) is cut at this size. */
#define QUEUE_DSN_HEADERS_MAX (64u * 1024)
/* Diagnostic text kept per recipient, after sanitising. */
#define QUEUE_DSN_DIAG_MAX 800
/* Status text "5.123.456" plus NUL. */
#define QUEUE_DSN_STATUS_MAX 12

/*
 * queue_dsn_rcpt - one recipient as the DSN reports it. Borrowed strings.
 * Its state says what the notice is (RFC 3464 2.3.3 Action), and every
 * recipient of one DSN has the same kind: BOUNCED or EXPIRED "failed",
 * PENDING "delayed" (deferred past the delay warning time), DELIVERED
 * "relayed" (NOTIFY=SUCCESS, to a next hop that does not offer DSN).
 */
struct queue_dsn_rcpt {
    const char *addr;
    enum queue_rcpt_state state;
    uint32_t smtp_code;     /* the reply code seen, 0 if there was no reply */
    const char *diagnostic; /* reply text or local reason; NULL or "" if none */
    const char *remote;     /* next hop that answered; NULL or "" if unknown */
    const char *orcpt;      /* ORCPT ("rfc822;addr"), NULL if none */
};

/*
 * queue_dsn_build - the whole DSN message (headers and MIME body, CRLF lines)
 * for orig and its recipients, a pure function of its arguments. orig's
 * body is what the DSN quotes: its header block, or the whole message for a
 * failure under RET=FULL when the body is there and at most
 * QUEUE_DSN_HEADERS_MAX long. orig->ext gives ENVID and RET, and the
 * recipients their ORCPT. For an SMTPUTF8 message the addresses stay UTF-8
 * and the parts are RFC 6533's message/global-delivery-status and
 * message/global-headers.
 * Borrows everything. On success *out (malloc'd, owned by the caller) holds
 * *len bytes and *body_8bit says whether the attached headers carry 8-bit
 * bytes. Errors: HAMR_EINVAL (no recipients), HAMR_ENOMEM, HAMR_ETOOBIG.
 */
int queue_dsn_build(const struct queue_msg *orig,
                    const struct queue_dsn_rcpt *rcpts,
                    size_t n_rcpts,
                    const char *reporter,
                    uint64_t timestamp_ms,
                    const char *dsn_id,
                    uint8_t **out,
                    size_t *len,
                    bool *body_8bit);

/*
 * queue_dsn_status - the RFC 3463 status of a recipient into out: 4.4.7 for
 * expiry; else the enhanced code found at the start of the diagnostic with
 * its class made 5 for a failure, 4 for a delay (else 5.0.0 and 4.0.0);
 * 2.0.0 for a relayed recipient.
 */
void queue_dsn_status(const struct queue_dsn_rcpt *r, char out[QUEUE_DSN_STATUS_MAX]);

/*
 * queue_dsn_date - an RFC 5322 date-time in UTC for ms since the epoch
 * ("Thu, 01 Jan 1970 00:00:00 +0000"). Never reads a clock.
 */
void queue_dsn_date(uint64_t ms, char *out, size_t outlen);

#endif
