/*
 * smtp_ext.h - the envelope extensions hamr carries from the SMTP client
 * that gave a message to the next hop that takes it: DSN (RFC 3461),
 * SMTPUTF8 (RFC 6531) and REQUIRETLS (RFC 8689). Pure: no I/O.
 *
 * The server (smtpd_session) parses the parameters into these forms, the
 * queue replicates them, and the client (smtpc) writes them out again. DSN
 * texts are kept decoded (ENVID, ORCPT's address), and xtext-encoded
 * only on the wire.
 */
#ifndef HAMR_NET_SMTP_EXT_H
#define HAMR_NET_SMTP_EXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RCPT NOTIFY= (RFC 3461 4.1), as bits; 0 means not given (the server's default: failures). */
#define SMTP_NOTIFY_NEVER 0x01
#define SMTP_NOTIFY_SUCCESS 0x02
#define SMTP_NOTIFY_FAILURE 0x04
#define SMTP_NOTIFY_DELAY 0x08
#define SMTP_NOTIFY_ALL \
    (SMTP_NOTIFY_NEVER | SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY)

/* MAIL RET= (RFC 3461 4.3). */
enum smtp_ret {
    SMTP_RET_UNSET = 0, /* not given: the server's choice (hamr returns the headers) */
    SMTP_RET_FULL = 1,
    SMTP_RET_HDRS = 2,
};

/* ENVID= decoded: 1 to 100 printable ASCII octets (RFC 3461 4.4). */
#define SMTP_ENVID_MAX 100
/* ORCPT= decoded, "addr-type;address": at most 500 octets (RFC 3461 4.2). */
#define SMTP_ORCPT_MAX 500
/* An xtext value on the wire: every octet may take three. */
#define SMTP_XTEXT_MAX(n) (3 * (n))

/* smtp_dsn_rcpt - one recipient's DSN parameters. */
struct smtp_dsn_rcpt {
    uint8_t notify;    /* SMTP_NOTIFY_* bits, 0 if not given */
    const char *orcpt; /* "rfc822;user@example.com" (decoded), NULL if not given */
};

/*
 * smtp_xtext_decode - xtext (RFC 3461 4: '!' to '~' but '+' and '=', or '+'
 * and two upper-case hex digits) at in (inlen octets) decoded into out
 * (outlen bytes, NUL-terminated). *outn gets the decoded length. false if in
 * is not xtext, decodes to a NUL, or does not fit.
 */
bool smtp_xtext_decode(const char *in, size_t inlen, char *out, size_t outlen, size_t *outn);

/*
 * smtp_xtext_encode - in (inlen octets) as xtext into out (outlen bytes,
 * NUL-terminated); false if it does not fit (out is then "").
 */
bool smtp_xtext_encode(const char *in, size_t inlen, char *out, size_t outlen);

/*
 * smtp_notify_parse - "NEVER" or a comma list of SUCCESS, FAILURE and DELAY
 * (any case, each once) into *bits. false for anything else, for NEVER
 * with another keyword, and for an empty list.
 */
bool smtp_notify_parse(const char *v, uint8_t *bits);

/* smtp_notify_format - bits (not 0) as NOTIFY's value ("SUCCESS,FAILURE") into out. */
void smtp_notify_format(uint8_t bits, char *out, size_t outlen);

/*
 * smtp_orcpt_parse - an ORCPT= value (addr-type ";" xtext) into out as
 * "type;decoded" with the type in lower case. The type is an atom (letters,
 * digits, '-'); the decoded address is printable ASCII, or when the type
 * is "utf-8" well-formed UTF-8 with no control, '+' or '=' and '\' only in
 * "\x{HEX}" (RFC 6533 3, utf-8-addr-unitext, kept as given). false
 * otherwise, or when it is longer than SMTP_ORCPT_MAX.
 */
bool smtp_orcpt_parse(const char *v, char out[SMTP_ORCPT_MAX + 1]);

/*
 * smtp_orcpt_format - a decoded ORCPT ("type;address") as the parameter's
 * value (the address xtext-encoded) into out; false if it does not fit or
 * has no ';'.
 */
bool smtp_orcpt_format(const char *orcpt, char *out, size_t outlen);

/* smtp_envid_ok - s (n octets) is a decoded ENVID: 1 to SMTP_ENVID_MAX printable ASCII. */
bool smtp_envid_ok(const char *s, size_t n);

/*
 * smtp_utf8_valid - s (n octets) is well-formed UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF) with no C0 or C1
 * control character and no DEL.
 */
bool smtp_utf8_valid(const char *s, size_t n);

/* smtp_is_ascii - no octet of s (n octets) is above 0x7f. */
bool smtp_is_ascii(const char *s, size_t n);

#endif
