/*
 * tls_testcert.h - a throw-away CA and a server certificate for TLS tests,
 * made with OpenSSL at run time in a fresh temporary directory (no key is
 * ever committed). Header-only, for test programs.
 */
#ifndef HAMR_TESTS_TLS_TESTCERT_H
#define HAMR_TESTS_TLS_TESTCERT_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

struct tls_testcert {
    char dir[64];
    char ca_file[128];   /* CA certificate, PEM */
    char cert_file[128]; /* server chain: leaf then CA */
    char key_file[128];  /* server key */
};

/* tls_testcert_ext - add one v3 extension from its text form. */
static inline bool tls_testcert_ext(X509 *crt, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, crt, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL)
        return false;
    bool ok = X509_add_ext(crt, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

/*
 * tls_testcert_make_san - a certificate for key, signed by ca_key
 * (self-signed, a CA, when ca is NULL); a leaf names san ("DNS:a,IP:b").
 */
static inline X509 *tls_testcert_make_san(EVP_PKEY *key,
                                          const char *cn,
                                          const char *san,
                                          X509 *ca,
                                          EVP_PKEY *ca_key,
                                          long serial)
{
    X509 *crt = X509_new();
    X509_set_version(crt, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(crt), serial);
    X509_gmtime_adj(X509_getm_notBefore(crt), -3600);
    X509_gmtime_adj(X509_getm_notAfter(crt), 86400);
    X509_set_pubkey(crt, key);
    X509_NAME *name = X509_get_subject_name(crt);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(crt, ca != NULL ? X509_get_subject_name(ca) : name);
    X509 *issuer = ca != NULL ? ca : crt;
    bool ok;
    if (ca == NULL)
        ok = tls_testcert_ext(crt, issuer, NID_basic_constraints, "critical,CA:TRUE") &&
             tls_testcert_ext(crt, issuer, NID_key_usage, "critical,keyCertSign,cRLSign") &&
             tls_testcert_ext(crt, issuer, NID_subject_key_identifier, "hash");
    else
        ok = tls_testcert_ext(crt, issuer, NID_basic_constraints, "CA:FALSE") &&
             tls_testcert_ext(crt, issuer, NID_subject_alt_name, san) &&
             tls_testcert_ext(crt, issuer, NID_authority_key_identifier, "keyid");
    if (!ok || X509_sign(crt, ca_key, EVP_sha256()) == 0) {
        X509_free(crt);
        return NULL;
    }
    return crt;
}

/* tls_testcert_make - tls_testcert_make_san for localhost and 127.0.0.1. */
static inline X509 *tls_testcert_make(EVP_PKEY *key,
                                      const char *cn,
                                      X509 *ca,
                                      EVP_PKEY *ca_key,
                                      long serial)
{
    return tls_testcert_make_san(key, cn, "DNS:localhost,IP:127.0.0.1", ca, ca_key, serial);
}

/* tls_testcert_write - PEM files; false on failure. */
static inline bool tls_testcert_write(const char *path, X509 *a, X509 *b, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return false;
    bool ok = true;
    if (a != NULL)
        ok = ok && PEM_write_X509(f, a) == 1;
    if (b != NULL)
        ok = ok && PEM_write_X509(f, b) == 1;
    if (key != NULL)
        ok = ok && PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
    return fclose(f) == 0 && ok;
}

/* tls_testcert_init - a new CA "hamr test CA" and a server cert for localhost/127.0.0.1. */
static inline bool tls_testcert_init(struct tls_testcert *tc)
{
    memset(tc, 0, sizeof(*tc));
    snprintf(tc->dir, sizeof(tc->dir), "/tmp/hamr-tls-XXXXXX");
    if (mkdtemp(tc->dir) == NULL)
        return false;
    snprintf(tc->ca_file, sizeof(tc->ca_file), "%s/ca.pem", tc->dir);
    snprintf(tc->cert_file, sizeof(tc->cert_file), "%s/cert.pem", tc->dir);
    snprintf(tc->key_file, sizeof(tc->key_file), "%s/key.pem", tc->dir);
    EVP_PKEY *ca_key = EVP_EC_gen("P-256");
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *ca = ca_key ? tls_testcert_make(ca_key, "hamr test CA", NULL, ca_key, 1) : NULL;
    X509 *crt = ca && key ? tls_testcert_make(key, "localhost", ca, ca_key, 2) : NULL;
    bool ok = crt != NULL && tls_testcert_write(tc->ca_file, ca, NULL, NULL) &&
              tls_testcert_write(tc->cert_file, crt, ca, NULL) &&
              tls_testcert_write(tc->key_file, NULL, NULL, key);
    X509_free(crt);
    X509_free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(ca_key);
    return ok;
}

/*
 * tls_testcert_server_ctx - a TLS server context that presents tc's
 * certificate (the scripted next hop's); NULL on failure. The caller frees it.
 */
static inline SSL_CTX *tls_testcert_server_ctx(const struct tls_testcert *tc)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx != NULL && (SSL_CTX_use_certificate_chain_file(ctx, tc->cert_file) != 1 ||
                        SSL_CTX_use_PrivateKey_file(ctx, tc->key_file, SSL_FILETYPE_PEM) != 1)) {
        SSL_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* tls_testcert_cleanup - remove the files and the directory. */
static inline void tls_testcert_cleanup(struct tls_testcert *tc)
{
    unlink(tc->ca_file);
    unlink(tc->cert_file);
    unlink(tc->key_file);
    rmdir(tc->dir);
}

#endif
