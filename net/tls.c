/*
 * tls.c - TLS over memory BIOs (OpenSSL 3): the STARTTLS engine.
 *
 * Owns: one SSL object and its two memory BIOs (rbio: ciphertext from the
 * peer, wbio: ciphertext for the peer). No socket and no libuv: the owner
 * moves octets between the BIOs and its stream, so the handshake is
 * non-blocking by construction. Exports tls.h.
 *
 * Errors: OpenSSL's error queue is drained at the point of failure into
 * the connection's err buffer (and never left behind for another caller);
 * callers get HAMR_EPROTO and log the sentence.
 *
 * Security: the peer is untrusted. Contexts made here allow TLS 1.2 and
 * later only, no compression and no renegotiation (SECURITY.md S17). A
 * client that verifies checks the chain and the host name (SSL_set1_host);
 * one with DANE (tls_dane) checks the certificate against TLSA records
 * instead. Either way a failed verification fails the handshake.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "util/common.h"
#include "util/err.h"
#include "net/tls.h"

/* Undecrypted ciphertext held from the peer, at most. */
#define TLS_RBIO_MAX (1024 * 1024)

struct tls {
    SSL *ssl;
    BIO *rbio; /* owned by ssl */
    BIO *wbio; /* owned by ssl */
    bool verify;
    bool dane; /* tls_dane: the peer is authenticated by TLSA records */
    char err[TLS_ERR_MAX];
};

/* tls_errors - drain the OpenSSL error queue into one line. */
const char *tls_errors(const char *prefix, char *out, size_t outlen)
{
    size_t n = 0;
    unsigned long e;
    char one[160];

    if (outlen == 0)
        return out;
    out[0] = '\0';
    if (prefix != NULL) {
        int w = snprintf(out, outlen, "%s", prefix);
        n = w > 0 ? ((size_t)w < outlen ? (size_t)w : outlen - 1) : 0;
    }
    bool first = true;
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, one, sizeof(one));
        if (n + 1 < outlen) {
            int w = snprintf(out + n, outlen - n, "%s%s", first ? "" : "; ", one);
            if (w > 0)
                n = (size_t)w < outlen - n ? n + (size_t)w : outlen - 1;
        }
        first = false;
    }
    if (first && n + 1 < outlen)
        snprintf(out + n, outlen - n, "no OpenSSL error");
    return out;
}

/* tls_fail - record why the connection failed; HAMR_EPROTO. */
static int tls_fail(struct tls *t, int ssl_err)
{
    char prefix[96];

    if (ssl_err == SSL_ERROR_SSL && SSL_get_verify_result(t->ssl) != X509_V_OK && t->dane) {
        snprintf(prefix, sizeof(prefix), "DANE: no TLSA record matched (%s): ",
                 X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)));
    } else if (ssl_err == SSL_ERROR_SSL && SSL_get_verify_result(t->ssl) != X509_V_OK &&
               t->verify) {
        snprintf(prefix, sizeof(prefix), "certificate verify failed (%s): ",
                 X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)));
    } else {
        snprintf(prefix, sizeof(prefix), "TLS error %d: ", ssl_err);
    }
    tls_errors(prefix, t->err, sizeof(t->err));
    return HAMR_EPROTO;
}

/* tls_new - SSL on ctx over two memory BIOs. */
int tls_new(SSL_CTX *ctx, bool server, const char *host, bool verify, struct tls **out)
{
    struct tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return HAMR_ENOMEM;
    t->ssl = SSL_new(ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return HAMR_ENOMEM;
    }
    /* An empty read BIO means "want more", not EOF. */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    t->verify = verify;
    if (server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        unsigned char ip[16];
        bool name = host != NULL && host[0] != '\0' && host[0] != '[' &&
                    inet_pton(AF_INET, host, ip) != 1 && inet_pton(AF_INET6, host, ip) != 1;
        if (name && SSL_set_tlsext_host_name(t->ssl, host) != 1)
            ERR_clear_error(); /* SNI is a courtesy; RFC 6066 3: never an IP literal */
        if (verify) {
            SSL_set_verify(t->ssl, SSL_VERIFY_PEER, NULL);
            if (host == NULL || SSL_set1_host(t->ssl, host) != 1) {
                ERR_clear_error();
                tls_free(t);
                return HAMR_EIO;
            }
        }
    }
    *out = t;
    return 0;
}

/* tls_free - release the SSL object and its BIOs. */
struct tls *tls_free(struct tls *t)
{
    if (t == NULL)
        return NULL;
    SSL_free(t->ssl);
    ERR_clear_error();
    free(t);
    return NULL;
}

/* tls_feed - ciphertext in. */
int tls_feed(struct tls *t, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    if (BIO_ctrl_pending(t->rbio) + len > TLS_RBIO_MAX)
        return HAMR_ENOMEM;
    if (BIO_write(t->rbio, data, (int)len) != (int)len) {
        ERR_clear_error();
        return HAMR_ENOMEM;
    }
    return 0;
}

/* tls_handshake - one step of the handshake. */
int tls_handshake(struct tls *t)
{
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1)
        return 1;
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    return tls_fail(t, e);
}

/* tls_read - plaintext out. */
long tls_read(struct tls *t, void *buf, size_t cap)
{
    size_t got = 0;
    int rc = SSL_read_ex(t->ssl, buf, cap, &got);
    if (rc == 1)
        return (long)got;
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return HAMR_ESHUTDOWN;
    }
    return tls_fail(t, e);
}

/* tls_write - plaintext in, ciphertext to the write BIO. */
int tls_write(struct tls *t, const void *data, size_t len)
{
    size_t done = 0;
    if (len == 0)
        return 0;
    /* Memory BIOs never block, so a write completes or fails. */
    if (SSL_write_ex(t->ssl, data, len, &done) == 1 && done == len)
        return 0;
    return tls_fail(t, SSL_get_error(t->ssl, 0));
}

/* tls_shutdown - queue close_notify. */
void tls_shutdown(struct tls *t)
{
    if (SSL_is_init_finished(t->ssl))
        (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
}

/* tls_output - ciphertext waiting. */
size_t tls_output(struct tls *t, const char **data)
{
    char *p = NULL;
    long n = BIO_get_mem_data(t->wbio, &p);
    *data = p;
    return n > 0 ? (size_t)n : 0;
}

/* tls_output_done - the first n octets were taken. */
void tls_output_done(struct tls *t, size_t n)
{
    char tmp[4096];
    while (n > 0) {
        size_t step = n < sizeof(tmp) ? n : sizeof(tmp);
        int got = BIO_read(t->wbio, tmp, (int)step);
        if (got <= 0)
            break;
        n -= (size_t)got;
    }
}

/* tls_output_take - ciphertext out into the caller's buffer. */
size_t tls_output_take(struct tls *t, void *buf, size_t cap)
{
    size_t got = 0;
    if (cap == 0 || BIO_read_ex(t->wbio, buf, cap, &got) != 1)
        return 0;
    return got;
}

/* tls_dane - DANE for client t; see tls.h. */
int tls_dane(struct tls *t, const char *host)
{
    if (host == NULL || host[0] == '\0' || SSL_dane_enable(t->ssl, host) <= 0) {
        tls_errors("DANE: ", t->err, sizeof(t->err));
        return HAMR_EIO;
    }
    /*
     * RFC 7672 3.1.3: usages 0 and 1 (PKIX-TA, PKIX-EE) are not used for
     * SMTP; the caller passes only 2 and 3. With DANE-EE the name and the
     * dates of the certificate do not matter (3.1.1): no partial wildcard
     * or name checks beyond what OpenSSL's DANE does for DANE-TA.
     */
    SSL_dane_set_flags(t->ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
    SSL_set_verify(t->ssl, SSL_VERIFY_PEER, NULL);
    t->dane = true;
    return 0;
}

/* tls_dane_add - one TLSA record; see tls.h. */
int tls_dane_add(struct tls *t,
                 uint8_t usage,
                 uint8_t selector,
                 uint8_t mtype,
                 const uint8_t *data,
                 size_t len)
{
    int rc = SSL_dane_tlsa_add(t->ssl, usage, selector, mtype, data, len);
    if (rc > 0)
        return 1;
    if (rc == 0) {
        ERR_clear_error(); /* unusable: skipped, as RFC 6698 4.1 says */
        return 0;
    }
    tls_errors("DANE TLSA: ", t->err, sizeof(t->err));
    return HAMR_EIO;
}

/* tls_dane_verified - the peer matched a TLSA record. */
bool tls_dane_verified(const struct tls *t)
{
    return t->dane && SSL_is_init_finished(t->ssl) && SSL_get_verify_result(t->ssl) == X509_V_OK &&
           SSL_get0_dane_authority(t->ssl, NULL, NULL) >= 0;
}

/* tls_describe - protocol and cipher for logs and results. */
void tls_describe(const struct tls *t, char *out, size_t outlen)
{
    const char *how = "";
    if (t->dane)
        how = tls_dane_verified(t) ? " dane-verified" : "";
    else if (t->verify && SSL_get_verify_result(t->ssl) == X509_V_OK)
        how = " verified";
    snprintf(out, outlen, "%s %s%s", SSL_get_version(t->ssl),
             SSL_CIPHER_get_name(SSL_get_current_cipher(t->ssl)), how);
}

/* tls_error - the last failure. */
const char *tls_error(const struct tls *t)
{
    return t->err;
}

/* tls_peer_certificate - the verified peer certificate; see tls.h. */
X509 *tls_peer_certificate(const struct tls *t)
{
    if (!SSL_is_init_finished(t->ssl) || SSL_get_verify_result(t->ssl) != X509_V_OK)
        return NULL;
    return SSL_get0_peer_certificate(t->ssl);
}

/* tls_client_ctx_dane - DANE on ctx; see tls.h. */
int tls_client_ctx_dane(SSL_CTX *ctx, char *errmsg, size_t errlen)
{
    if (SSL_CTX_dane_enable(ctx) <= 0) {
        tls_errors("TLS client context DANE: ", errmsg, errlen);
        return HAMR_EIO;
    }
    return 0;
}

/* tls_client_ctx_new - an outbound context. */
SSL_CTX *tls_client_ctx_new(const char *ca_file, char *errmsg, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        tls_errors("TLS client context: ", errmsg, errlen);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    int ok = ca_file != NULL && ca_file[0] != '\0'
                 ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                 : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char prefix[300];
        snprintf(prefix, sizeof(prefix),
                 "tls_ca_file %s: ", ca_file != NULL && ca_file[0] ? ca_file : "(system)");
        tls_errors(prefix, errmsg, errlen);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}
