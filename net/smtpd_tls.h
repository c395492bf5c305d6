/* smtpd_tls.h - the server side TLS context for STARTTLS (OpenSSL 3). */
#ifndef HAMR_NET_SMTPD_TLS_H
#define HAMR_NET_SMTPD_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

/*
 * smtpd_tls_ctx_new - a server context from a PEM certificate chain and
 * key: TLS 1.2 and later, no compression, no renegotiation, server cipher
 * preference, OpenSSL's default ciphers at security level 2 or more. On
 * failure returns NULL with a sentence naming the file in errmsg.
 */
SSL_CTX *smtpd_tls_ctx_new(const char *cert_file,
                           const char *key_file,
                           char *errmsg,
                           size_t errlen);

#endif
