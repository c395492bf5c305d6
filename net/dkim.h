/* dkim.h - DKIM signing of outbound mail (RFC 6376, RFC 8463): canonicalisation, keys, signatures.
 */
#ifndef HAMR_NET_DKIM_H
#define HAMR_NET_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "util/buf.h"

#define DKIM_DOMAIN_MAX 256  /* a domain (or ".suffix") and its NUL */
#define DKIM_SELECTOR_MAX 64 /* a selector and its NUL (RFC 6376 3.1: sub-domain labels) */
#define DKIM_PATH_MAX 4096   /* a key file's path and its NUL */
#define DKIM_KEYS_MAX 256    /* [dkim] key lines */
#define DKIM_HEADER_MAX 8192 /* the DKIM-Signature header we build, CRLF included */
#define DKIM_INSTANCES_MAX 8 /* instances of one field signed at most (the lowest ones) */
#define DKIM_RSA_MIN_BITS 1024
#define DKIM_RSA_WARN_BITS 2048

/* dkim_alg - the two signing algorithms (a= tag); also the metrics label index. */
enum dkim_alg {
    DKIM_ALG_RSA_SHA256 = 0, /* RFC 6376 3.3.1, RSASSA-PKCS1-v1_5 */
    DKIM_ALG_ED25519_SHA256, /* RFC 8463 3 */
    DKIM_ALG_COUNT
};

/* dkim_alg_name - "rsa-sha256" or "ed25519-sha256" (the a= value). */
const char *dkim_alg_name(enum dkim_alg alg);

/* ------------------------------------------------------------------------ */
/* Canonicalisation (pure: no I/O, no allocation but into the given buf).   */
/* ------------------------------------------------------------------------ */

/*
 * dkim_canon_header - the relaxed form (RFC 6376 3.4.2) of one header field,
 * field[0..len) as it stands in the message ("Name: value", folded lines,
 * with or without its final CRLF), appended to out: the name in lower
 * case, ':', the unfolded value with runs of SP/HTAB as one SP and none at
 * either end, then CRLF if crlf. 0, HAMR_EINVAL (no ':'), or buf_append's
 * error. field is borrowed for the call.
 */
int dkim_canon_header(const char *field, size_t len, bool crlf, struct buf *out);

/*
 * dkim_body - relaxed body canonicalisation (RFC 6376 3.4.4), streaming:
 * runs of SP/HTAB within a line become one SP, SP/HTAB before a CRLF go,
 * empty lines at the end go, and a body that is not empty and does not end
 * in CRLF gets one; an empty body stays empty (3.4.4: "a CRLF is not
 * added"). Only CRLF ends a line; a bare CR or LF is an ordinary octet.
 * The canonical octets go to emit in chunks (emit borrows them for the
 * call). No allocation.
 */
typedef void (*dkim_emit_cb)(void *arg, const uint8_t *p, size_t n);
struct dkim_body {
    dkim_emit_cb emit;
    void *arg;
    uint64_t crlfs;   /* line ends held back: written only if more content follows */
    bool wsp;         /* SP/HTAB seen since the last content octet of this line */
    bool cr;          /* the last octet was a CR (a line end if LF follows) */
    bool content;     /* some content octet was written */
    size_t n;         /* octets in out */
    uint8_t out[512]; /* written to emit when full and at the end */
};

/* dkim_body_init - start a body; emit gets the canonical octets. */
void dkim_body_init(struct dkim_body *b, dkim_emit_cb emit, void *arg);

/* dkim_body_update - feed p[0..n) (borrowed for the call). */
void dkim_body_update(struct dkim_body *b, const uint8_t *p, size_t n);

/* dkim_body_final - the end of the body: the last CRLF, then the held octets. */
void dkim_body_final(struct dkim_body *b);

/* dkim_body_hash - SHA-256 of the relaxed body p[0..n): bh= before base64. 0 or HAMR_ENOMEM. */
int dkim_body_hash(const uint8_t *p, size_t n, uint8_t hash[32]);

/*
 * dkim_split - where the header ends in msg[0..len): *hdr_len octets of
 * header fields (each with its CRLF), then the body from *body_off (after
 * the empty line; len when there is none). Pure.
 */
void dkim_split(const uint8_t *msg, size_t len, size_t *hdr_len, size_t *body_off);

/*
 * dkim_from_domain - the domain of the one mailbox in the message's From:
 * header, lower case, into domain (DKIM_DOMAIN_MAX). 0; HAMR_ENOTFOUND if
 * there is no From:, more than one, a From: with more than one mailbox
 * or none, or a domain that is not letters, digits, '-' and '.'. Pure;
 * safe on any input.
 */
int dkim_from_domain(const uint8_t *msg, size_t len, char domain[DKIM_DOMAIN_MAX]);

/* ------------------------------------------------------------------------ */
/* Signing (no I/O: the key is given).                                      */
/* ------------------------------------------------------------------------ */

/* dkim_sign_params - what one signature says besides the key. */
struct dkim_sign_params {
    const char *domain;   /* d= */
    const char *selector; /* s= */
    uint64_t time;        /* t=, Unix seconds (given, so tests are deterministic) */
    bool oversign_from;   /* list "from" once more than present: no From: can be added */
};

/*
 * dkim_sign - the DKIM-Signature header for msg[0..len) (header, empty line,
 * body; CRLF line ends), signed with key (RSA or Ed25519; borrowed),
 * appended to out (folded, lines under 78 octets, ending in CRLF). The
 * signed header fields are those of dkim_sign_headers present in msg,
 * every instance up to DKIM_INSTANCES_MAX from the bottom (which keeps the
 * header under DKIM_HEADER_MAX: 23 names of at most 26 octets), from
 * always. 0, HAMR_EINVAL (key of another type, an RSA
 * key under DKIM_RSA_MIN_BITS, a header longer than DKIM_HEADER_MAX), HAMR_EIO
 * (OpenSSL failed; its error queue is drained into the log) or
 * HAMR_ENOMEM. *alg is set once the key's type is known: on success, and
 * on the failures after that (for counting them by algorithm).
 */
int dkim_sign(const struct dkim_sign_params *sp,
              EVP_PKEY *key,
              const uint8_t *msg,
              size_t len,
              struct buf *out,
              enum dkim_alg *alg);

/* dkim_sign_headers - the header names signed when present, NULL-terminated, in h= order. */
extern const char *const dkim_sign_headers[];

/* ------------------------------------------------------------------------ */
/* The key table ([dkim] key lines).                                        */
/* ------------------------------------------------------------------------ */

/* dkim_key_spec - one [dkim] key line: which key signs mail from which domain. */
struct dkim_key_spec {
    char domain[DKIM_DOMAIN_MAX]; /* "example.com" exact, ".example.com" its subdomains; lower */
    char selector[DKIM_SELECTOR_MAX];
    char path[DKIM_PATH_MAX]; /* PEM private key: RSA >= 1024 bits, or Ed25519 */
};

struct dkim_keys;

/*
 * dkim_keys_new - read every key file of specs[0..n) (copied). 0, or
 * HAMR_EIO (a file cannot be read), HAMR_EINVAL (not a PEM private key, a
 * type other than RSA and Ed25519, RSA under 1024 bits) with "PATH: reason"
 * in err, or HAMR_ENOMEM. RSA keys under 2048 bits are logged as a warning.
 */
int dkim_keys_new(const struct dkim_key_spec *specs,
                  size_t n,
                  struct dkim_keys **out,
                  char *err,
                  size_t errlen);

/*
 * dkim_keys_reload - read every key file again (SIGHUP). All of them load:
 * they replace the old keys at once. One fails: the old keys all stay, and
 * the code and "PATH: reason" come back as from dkim_keys_new.
 */
int dkim_keys_reload(struct dkim_keys *k, char *err, size_t errlen);

/* dkim_keys_free - release the table and its keys. NULL is accepted. Returns NULL. */
struct dkim_keys *dkim_keys_free(struct dkim_keys *k);

/* dkim_keys_count - how many keys the table holds. */
size_t dkim_keys_count(const struct dkim_keys *k);

/*
 * dkim_keys_sign - sign msg[0..len) with the key of its From: domain: the
 * exact domain, else the longest ".suffix" entry that the domain ends with.
 * On 0, the DKIM-Signature header is appended to out and *alg says how it
 * was signed. HAMR_ENOTFOUND: nothing to sign with (no key for the domain,
 * or no single From: mailbox); out is unchanged. Otherwise dkim_sign's
 * error (and *alg as it leaves it), with a sentence in err.
 */
int dkim_keys_sign(const struct dkim_keys *k,
                   const uint8_t *msg,
                   size_t len,
                   uint64_t time,
                   bool oversign_from,
                   struct buf *out,
                   enum dkim_alg *alg,
                   char *err,
                   size_t errlen);

#endif
