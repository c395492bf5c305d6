/*
 * cluster_tls.c - the cluster's PKI: contexts from CA, certificate and key,
 * identities from URI subjectAltNames, reload. See cluster_tls.h.
 *
 * A load builds both contexts and checks them whole before anything is
 * replaced, so a half-written file during rotation leaves the old ones in
 * place.
 */
#include "net/cluster_tls.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "util/common.h"
#include "util/err.h"

struct cluster_tls {
    char *ca;
    char *cert;
    char *key;
    uint64_t node_id; /* expected, 0: any identity */
    SSL_CTX *server;
    SSL_CTX *client;
    struct cluster_tls_identity self;
    time_t cert_not_after;
    time_t ca_not_after; /* the earliest of the CA file's certificates */
    uint64_t reloads;
};

/* One load's result, installed only when whole. */
struct cluster_tls_load {
    SSL_CTX *server;
    SSL_CTX *client;
    struct cluster_tls_identity self;
    time_t cert_not_after;
    time_t ca_not_after;
};

/* cluster_tls_parse_id - "123" as a node id (1 .. 2^63); -1 if not. */
static int cluster_tls_parse_id(const char *s, size_t len, uint64_t *id)
{
    uint64_t v = 0;
    if (len == 0 || len > 19 || s[0] == '0')
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v == 0 || v > (UINT64_C(1) << 63))
        return -1;
    *id = v;
    return 0;
}

/* cluster_tls_parse_name - an operator name: 1-63 of [A-Za-z0-9._-]. */
static int cluster_tls_parse_name(const char *s, size_t len, char *out)
{
    if (len == 0 || len >= CLUSTER_TLS_NAME_MAX)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return -1;
    }
    memcpy(out, s, len);
    out[len] = '\0';
    return 0;
}

/* cluster_tls_identity_of - the one hamr URI name in cert; see cluster_tls.h. */
int cluster_tls_identity_of(X509 *cert, struct cluster_tls_identity *id)
{
    memset(id, 0, sizeof(*id));
    if (cert == NULL)
        return -1;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (names == NULL)
        return -1;
    int found = 0;
    struct cluster_tls_identity one = {0};
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const char *s = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        size_t len = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        if (memchr(s, '\0', len) != NULL)
            continue;
        size_t np = strlen(CLUSTER_TLS_NODE_PREFIX);
        size_t op = strlen(CLUSTER_TLS_OPERATOR_PREFIX);
        struct cluster_tls_identity cand = {0};
        if (len > np && memcmp(s, CLUSTER_TLS_NODE_PREFIX, np) == 0) {
            cand.role = CLUSTER_TLS_NODE;
            if (cluster_tls_parse_id(s + np, len - np, &cand.node_id) != 0)
                cand.role = CLUSTER_TLS_NONE;
        } else if (len > op && memcmp(s, CLUSTER_TLS_OPERATOR_PREFIX, op) == 0) {
            cand.role = CLUSTER_TLS_OPERATOR;
            if (cluster_tls_parse_name(s + op, len - op, cand.name) != 0)
                cand.role = CLUSTER_TLS_NONE;
        } else {
            continue; /* someone else's URI */
        }
        /* A malformed hamr name, or a second one, leaves no identity. */
        if (cand.role == CLUSTER_TLS_NONE) {
            found = 2;
            break;
        }
        one = cand;
        found++;
    }
    GENERAL_NAMES_free(names);
    if (found != 1)
        return -1;
    *id = one;
    return 0;
}

/* cluster_tls_peer - the identity of a verified peer; see cluster_tls.h. */
int cluster_tls_peer(const struct tls *t, struct cluster_tls_identity *id)
{
    return cluster_tls_identity_of(tls_peer_certificate(t), id);
}

/* cluster_tls_identity_name - the identity as logs write it. */
const char *cluster_tls_identity_name(const struct cluster_tls_identity *id,
                                      char *out,
                                      size_t outlen)
{
    if (id->role == CLUSTER_TLS_NODE)
        snprintf(out, outlen, "node:%" PRIu64, id->node_id);
    else if (id->role == CLUSTER_TLS_OPERATOR)
        snprintf(out, outlen, "operator:%s", id->name);
    else
        snprintf(out, outlen, "none");
    return out;
}

/* cluster_tls_time - an ASN1_TIME as time_t (0 if unreadable). */
static time_t cluster_tls_time(const ASN1_TIME *at)
{
    struct tm tm;
    if (at == NULL || ASN1_TIME_to_tm(at, &tm) != 1)
        return 0;
    return timegm(&tm);
}

/* The TLS 1.3 suites between nodes, in order of preference. */
#define CLUSTER_TLS_SUITES \
    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"

/* cluster_tls_fail - "what file: OpenSSL's reasons"; HAMR_EINVAL. */
static int cluster_tls_fail(char *errmsg, size_t errlen, const char *what, const char *file)
{
    char prefix[600];
    snprintf(prefix, sizeof(prefix), "%s %s: ", what, file);
    tls_errors(prefix, errmsg, errlen);
    return HAMR_EINVAL;
}

/* cluster_tls_ctx - one side's context: TLS 1.3, our certificate, the CA as the only trust. */
static SSL_CTX *cluster_tls_ctx(const struct cluster_tls *c,
                                bool server,
                                char *errmsg,
                                size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        tls_errors("cluster TLS context: ", errmsg, errlen);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Every raft entry and forwarded body is sealed once per hop: AES-128-GCM
     * first (about 1.5x AES-256's speed with AES-NI here), the others for
     * peers that prefer them. */
    if (SSL_CTX_set_ciphersuites(ctx, CLUSTER_TLS_SUITES) != 1) {
        tls_errors("cluster TLS suites: ", errmsg, errlen);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    if (SSL_CTX_load_verify_locations(ctx, c->ca, NULL) != 1) {
        cluster_tls_fail(errmsg, errlen, "cluster CA", c->ca);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        cluster_tls_fail(errmsg, errlen, "cluster certificate", c->cert);
        SSL_CTX_free(ctx);
        return NULL;
    }
    bool loaded = SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) == 1;
    if (!loaded && ERR_GET_REASON(ERR_peek_last_error()) != X509_R_KEY_VALUES_MISMATCH) {
        cluster_tls_fail(errmsg, errlen, "cluster key", c->key);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (!loaded || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(errmsg, errlen, "cluster key %s does not match cluster certificate %s", c->key,
                 c->cert);
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (server) {
        STACK_OF(X509_NAME) *cas = SSL_load_client_CA_file(c->ca);
        if (cas != NULL)
            SSL_CTX_set_client_CA_list(ctx, cas);
    }
    ERR_clear_error();
    return ctx;
}

/* cluster_tls_ca_expiry - the earliest notAfter among the CA file's certificates. */
static time_t cluster_tls_ca_expiry(SSL_CTX *ctx)
{
    time_t earliest = 0;
    STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
    for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
        X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
        if (x == NULL)
            continue;
        time_t t = cluster_tls_time(X509_get0_notAfter(x));
        if (t != 0 && (earliest == 0 || t < earliest))
            earliest = t;
    }
    return earliest;
}

/* cluster_tls_check - our own certificate chains to the CA and names one identity. */
static int cluster_tls_check(const struct cluster_tls *c,
                             struct cluster_tls_load *l,
                             char *errmsg,
                             size_t errlen)
{
    X509 *cert = SSL_CTX_get0_certificate(l->server);
    if (cluster_tls_identity_of(cert, &l->self) != 0) {
        snprintf(
            errmsg, errlen,
            "cluster certificate %s: needs exactly one subjectAltName URI " CLUSTER_TLS_NODE_PREFIX
            "ID or " CLUSTER_TLS_OPERATOR_PREFIX "NAME (deploy/make-pki.sh makes them)",
            c->cert);
        return HAMR_EINVAL;
    }
    if (c->node_id != 0 && (l->self.role != CLUSTER_TLS_NODE || l->self.node_id != c->node_id)) {
        if (l->self.role == CLUSTER_TLS_NODE)
            snprintf(errmsg, errlen,
                     "cluster certificate %s is node %" PRIu64 "'s, not node %" PRIu64 "'s",
                     c->cert, l->self.node_id, c->node_id);
        else
            snprintf(errmsg, errlen,
                     "cluster certificate %s is operator %s's, not node %" PRIu64 "'s", c->cert,
                     l->self.name, c->node_id);
        return HAMR_EINVAL;
    }
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    STACK_OF(X509) *chain = NULL;
    SSL_CTX_get0_chain_certs(l->server, &chain);
    if (vctx == NULL ||
        X509_STORE_CTX_init(vctx, SSL_CTX_get_cert_store(l->server), cert, chain) != 1) {
        X509_STORE_CTX_free(vctx);
        return HAMR_ENOMEM;
    }
    int ok = X509_verify_cert(vctx);
    int err = X509_STORE_CTX_get_error(vctx);
    X509_STORE_CTX_free(vctx);
    ERR_clear_error();
    if (ok != 1) {
        snprintf(errmsg, errlen, "cluster certificate %s: not valid under cluster CA %s: %s",
                 c->cert, c->ca, X509_verify_cert_error_string(err));
        return HAMR_EINVAL;
    }
    l->cert_not_after = cluster_tls_time(X509_get0_notAfter(cert));
    l->ca_not_after = cluster_tls_ca_expiry(l->server);
    return 0;
}

/* cluster_tls_load - both contexts from the files, checked; nothing installed. */
static int cluster_tls_load(const struct cluster_tls *c,
                            struct cluster_tls_load *l,
                            char *errmsg,
                            size_t errlen)
{
    memset(l, 0, sizeof(*l));
    l->server = cluster_tls_ctx(c, true, errmsg, errlen);
    if (l->server != NULL)
        l->client = cluster_tls_ctx(c, false, errmsg, errlen);
    int rv = l->client != NULL ? cluster_tls_check(c, l, errmsg, errlen) : HAMR_EINVAL;
    if (rv != 0) {
        SSL_CTX_free(l->server);
        SSL_CTX_free(l->client);
        memset(l, 0, sizeof(*l));
    }
    return rv;
}

/* cluster_tls_install - l replaces the current contexts. */
static void cluster_tls_install(struct cluster_tls *c, struct cluster_tls_load *l)
{
    SSL_CTX_free(c->server);
    SSL_CTX_free(c->client);
    c->server = l->server;
    c->client = l->client;
    c->self = l->self;
    c->cert_not_after = l->cert_not_after;
    c->ca_not_after = l->ca_not_after;
}

/* cluster_tls_new - load and check; see cluster_tls.h. */
int cluster_tls_new(const struct cluster_tls_files *files,
                    struct cluster_tls **out,
                    char *errmsg,
                    size_t errlen)
{
    if (files->ca == NULL || files->cert == NULL || files->key == NULL || files->ca[0] == '\0' ||
        files->cert[0] == '\0' || files->key[0] == '\0') {
        snprintf(errmsg, errlen, "cluster TLS needs a CA, a certificate and a key");
        return HAMR_EINVAL;
    }
    struct cluster_tls *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return HAMR_ENOMEM;
    c->ca = strdup(files->ca);
    c->cert = strdup(files->cert);
    c->key = strdup(files->key);
    c->node_id = files->node_id;
    int rv = HAMR_ENOMEM;
    struct cluster_tls_load l;
    if (c->ca != NULL && c->cert != NULL && c->key != NULL)
        rv = cluster_tls_load(c, &l, errmsg, errlen);
    if (rv != 0) {
        cluster_tls_free(c);
        return rv;
    }
    cluster_tls_install(c, &l);
    *out = c;
    return 0;
}

/* cluster_tls_free - see cluster_tls.h. */
void cluster_tls_free(struct cluster_tls *c)
{
    if (c == NULL)
        return;
    SSL_CTX_free(c->server);
    SSL_CTX_free(c->client);
    free(c->ca);
    free(c->cert);
    free(c->key);
    free(c);
}

/* cluster_tls_reload - see cluster_tls.h. */
int cluster_tls_reload(struct cluster_tls *c, char *errmsg, size_t errlen)
{
    struct cluster_tls_load l;
    int rv = cluster_tls_load(c, &l, errmsg, errlen);
    if (rv != 0)
        return rv;
    cluster_tls_install(c, &l);
    c->reloads++;
    return 0;
}

SSL_CTX *cluster_tls_server_ctx(const struct cluster_tls *c)
{
    return c->server;
}

SSL_CTX *cluster_tls_client_ctx(const struct cluster_tls *c)
{
    return c->client;
}

const struct cluster_tls_identity *cluster_tls_self(const struct cluster_tls *c)
{
    return &c->self;
}

uint64_t cluster_tls_reloads(const struct cluster_tls *c)
{
    return c->reloads;
}

/* cluster_tls_days_left - whole days, rounded down (negative once expired). */
long cluster_tls_days_left(const struct cluster_tls *c, bool ca, time_t now)
{
    time_t end = ca ? c->ca_not_after : c->cert_not_after;
    long long secs = (long long)end - (long long)now;
    long long days = secs / 86400;
    if (secs < 0 && secs % 86400 != 0)
        days--;
    return (long)days;
}
