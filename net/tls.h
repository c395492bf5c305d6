/*
 * tls.h - a TLS connection over memory BIOs (OpenSSL 3), with no socket.
 *
 * The engine under STARTTLS on both sides: the owner feeds ciphertext it
 * read from the network in, takes ciphertext to write out, and exchanges
 * plaintext through tls_read/_write. Used by smtpc (client) and
 * smtpd_server (server), each linking hamr_net_tls and not the other.
 */
#ifndef HAMR_NET_TLS_H
#define HAMR_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

struct tls;

/* Longest error sentence tls_errors() writes. */
#define TLS_ERR_MAX 256

/*
 * tls_new - a connection on ctx (up-referenced by OpenSSL, so the
 * caller may free ctx afterwards). server: accept side. host (client only,
 * may be NULL): SNI, and with verify the name the certificate must match.
 * HAMR_ENOMEM or HAMR_EIO.
 */
int tls_new(SSL_CTX *ctx, bool server, const char *host, bool verify, struct tls **out);

/* tls_free - release the connection. Returns NULL. */
struct tls *tls_free(struct tls *t);

/* tls_feed - ciphertext from the peer (copied). 0 or HAMR_ENOMEM. */
int tls_feed(struct tls *t, const void *data, size_t len);

/*
 * tls_handshake - advance the handshake. 1: done; 0: needs more input
 * (flush the output first); HAMR_EPROTO: failed, with the reason (drained
 * from OpenSSL's error queue) in tls_error().
 */
int tls_handshake(struct tls *t);

/*
 * tls_read - plaintext into buf. >0 octets; 0: none yet;
 * HAMR_ESHUTDOWN: the peer closed TLS; HAMR_EPROTO: failed (see tls_error).
 */
long tls_read(struct tls *t, void *buf, size_t cap);

/* tls_write - encrypt len octets for the peer. 0, HAMR_EPROTO. */
int tls_write(struct tls *t, const void *data, size_t len);

/* tls_shutdown - queue a close_notify alert. */
void tls_shutdown(struct tls *t);

/*
 * tls_output - ciphertext waiting to be sent: points *data at it and
 * returns its length (0: none). Call tls_output_done(t, n) after
 * copying n octets.
 */
size_t tls_output(struct tls *t, const char **data);
void tls_output_done(struct tls *t, size_t n);

/* tls_output_take - move up to cap octets of waiting ciphertext into buf (one copy); how many. */
size_t tls_output_take(struct tls *t, void *buf, size_t cap);

/*
 * tls_dane - authenticate the server of client t by DANE (RFC 7672) instead
 * of its name and a CA: before the first tls_handshake, with ctx prepared by
 * tls_client_ctx_dane. host: the TLSA base domain (the MX host; also SNI
 * when tls_new set none). Then tls_dane_add each record. The peer is
 * verified (SSL_VERIFY_PEER): a certificate that matches no record fails
 * the handshake. 0, or HAMR_EIO (DANE not enabled on the context, or
 * OpenSSL refused; the reason in tls_error).
 */
int tls_dane(struct tls *t, const char *host);

/*
 * tls_dane_add - one TLSA record (RFC 6698 2.1) for tls_dane's t. 1: added;
 * 0: unusable (a usage, selector or matching type OpenSSL does not know,
 * or data of the wrong length for the digest), skipped; HAMR_EIO: failed.
 */
int tls_dane_add(struct tls *t,
                 uint8_t usage,
                 uint8_t selector,
                 uint8_t mtype,
                 const uint8_t *data,
                 size_t len);

/*
 * tls_dane_verified - the handshake of t is done, the peer's chain verified
 * and a TLSA record matched it (SSL_get0_dane_authority >= 0).
 */
bool tls_dane_verified(const struct tls *t);

/*
 * tls_describe - "TLSv1.3 TLS_AES_256_GCM_SHA384" after the
 * handshake, plus " verified" when the peer certificate was checked, or
 * " dane-verified" when it matched a TLSA record (tls_dane).
 */
void tls_describe(const struct tls *t, char *out, size_t outlen);

/*
 * tls_peer_certificate - the peer's leaf certificate once the handshake is
 * done and its chain verified; NULL otherwise. Borrowed from the connection.
 */
X509 *tls_peer_certificate(const struct tls *t);

/* tls_error - the last failure, "" if none. */
const char *tls_error(const struct tls *t);

/*
 * tls_errors - drain OpenSSL's error queue into out as one line
 * (prefix first). Returns out.
 */
const char *tls_errors(const char *prefix, char *out, size_t outlen);

/*
 * tls_client_ctx_new - a client context: TLS 1.2+, no compression or
 * renegotiation. With verify, the chain is checked against ca_file (PEM) if
 * not NULL/"", else the system trust store. NULL on failure (errmsg set).
 */
SSL_CTX *tls_client_ctx_new(const char *ca_file, char *errmsg, size_t errlen);

/*
 * tls_client_ctx_dane - enable DANE on a client context (once; again is
 * harmless), so that its connections may use tls_dane. 0, or HAMR_EIO
 * with the reason in errmsg.
 */
int tls_client_ctx_dane(SSL_CTX *ctx, char *errmsg, size_t errlen);

#endif
