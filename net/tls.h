/*
 * smtpc_tls.h - a TLS connection over memory BIOs (OpenSSL 3), with no socket.
 *
 * The engine under STARTTLS on both sides: the owner feeds ciphertext it
 * read from the network in, takes ciphertext to write out, and exchanges
 * plaintext through smtpc_tls_read/_write. Used by smtpc (client) and
 * smtpd_server (server); hamr_net_server links hamr_net_client for it.
 */
#ifndef HAMR_NET_SMTPC_TLS_H
#define HAMR_NET_SMTPC_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

struct smtpc_tls;

/* Longest error sentence smtpc_tls_errors() writes. */
#define SMTPC_TLS_ERR_MAX 256

/*
 * smtpc_tls_new - a connection on ctx (up-referenced by OpenSSL, so the
 * caller may free ctx afterwards). server: accept side. host (client only,
 * may be NULL): SNI, and with verify the name the certificate must match.
 * HAMR_ENOMEM or HAMR_EIO.
 */
int smtpc_tls_new(SSL_CTX *ctx, bool server, const char *host, bool verify, struct smtpc_tls **out);

/* smtpc_tls_free - release the connection. Returns NULL. */
struct smtpc_tls *smtpc_tls_free(struct smtpc_tls *t);

/* smtpc_tls_feed - ciphertext from the peer (copied). 0 or HAMR_ENOMEM. */
int smtpc_tls_feed(struct smtpc_tls *t, const void *data, size_t len);

/*
 * smtpc_tls_handshake - advance the handshake. 1: done; 0: needs more input
 * (flush the output first); HAMR_EPROTO: failed, with the reason (drained
 * from OpenSSL's error queue) in smtpc_tls_error().
 */
int smtpc_tls_handshake(struct smtpc_tls *t);

/*
 * smtpc_tls_read - plaintext into buf. >0 octets; 0: none yet;
 * HAMR_ESHUTDOWN: the peer closed TLS; HAMR_EPROTO: failed (see smtpc_tls_error).
 */
long smtpc_tls_read(struct smtpc_tls *t, void *buf, size_t cap);

/* smtpc_tls_write - encrypt len octets for the peer. 0, HAMR_EPROTO. */
int smtpc_tls_write(struct smtpc_tls *t, const void *data, size_t len);

/* smtpc_tls_shutdown - queue a close_notify alert. */
void smtpc_tls_shutdown(struct smtpc_tls *t);

/*
 * smtpc_tls_output - ciphertext waiting to be sent: points *data at it and
 * returns its length (0: none). Call smtpc_tls_output_done(t, n) after
 * copying n octets.
 */
size_t smtpc_tls_output(struct smtpc_tls *t, const char **data);
void smtpc_tls_output_done(struct smtpc_tls *t, size_t n);

/*
 * smtpc_tls_describe - "TLSv1.3 TLS_AES_256_GCM_SHA384" after the
 * handshake, plus " verified" when the peer certificate was checked.
 */
void smtpc_tls_describe(const struct smtpc_tls *t, char *out, size_t outlen);

/* smtpc_tls_error - the last failure, "" if none. */
const char *smtpc_tls_error(const struct smtpc_tls *t);

/*
 * smtpc_tls_errors - drain OpenSSL's error queue into out as one line
 * (prefix first). Returns out.
 */
const char *smtpc_tls_errors(const char *prefix, char *out, size_t outlen);

/*
 * smtpc_tls_client_ctx_new - a client context: TLS 1.2+, no compression or
 * renegotiation. With verify, the chain is checked against ca_file (PEM) if
 * not NULL/"", else the system trust store. NULL on failure (errmsg set).
 */
SSL_CTX *smtpc_tls_client_ctx_new(const char *ca_file, char *errmsg, size_t errlen);

#endif
