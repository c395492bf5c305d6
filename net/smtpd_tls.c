/*
 * smtpd_tls.c - the server TLS context behind STARTTLS.
 *
 * Owns nothing past the call: builds an SSL_CTX that smtpd_server keeps
 * (and swaps on reload). Connections run on the memory-BIO engine in
 * tls.c.
 *
 * Errors: a missing or bad file, or a key that does not match the
 * certificate, is reported with the file name and the drained OpenSSL
 * error queue.
 *
 * Security (SECURITY.md S17): TLS 1.2 or later only, no compression, no
 * renegotiation, the server's cipher order wins, security level 2 at least.
 */
#include <stdio.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "net/tls.h"
#include "net/smtpd_tls.h"

/* smtpd_tls_ctx_new - load cert_file and key_file into a hardened context. */
SSL_CTX *smtpd_tls_ctx_new(const char *cert_file, const char *key_file, char *errmsg, size_t errlen)
{
    char prefix[320];

    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tls_errors("TLS server context: ", errmsg, errlen);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(
        ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_get_security_level(ctx) < 2)
        SSL_CTX_set_security_level(ctx, 2);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(prefix, sizeof(prefix), "tls_cert_file %s: ", cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(prefix, sizeof(prefix), "tls_key_file %s: ", key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(prefix, sizeof(prefix),
                 "tls_key_file %s does not match tls_cert_file %s: ", key_file, cert_file);
        goto fail;
    }
    return ctx;
fail:
    tls_errors(prefix, errmsg, errlen);
    SSL_CTX_free(ctx);
    return NULL;
}
