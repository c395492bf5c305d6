/*
 * cluster_tls.h - the cluster's own PKI under the raft, peer, control and
 * metrics channels: one CA, a certificate per node, one per operator.
 *
 * Identity travels in a URI subjectAltName (deploy/make-pki.sh makes them):
 *   hamr:node:ID        node ID (1 .. 2^63); the raft handshake and the peer
 *                       hello must claim this id, or the connection is closed;
 *   hamr:operator:NAME  an operator (hamrctl) on a TCP control port.
 * A certificate with no such name, or more than one, has no identity.
 *
 * Owns: the files' names, and the two SSL_CTX made from them (one to accept,
 * one to connect), both TLS 1.3 only, each presenting this node's
 * certificate and requiring a peer certificate that chains to the CA (and
 * only to it: the system store is never consulted). Host names are not
 * checked: the caller checks the identity (cluster_tls_identity_of).
 *
 * Rotation: cluster_tls_reload reads the three files again; on success new
 * connections get the new contexts, connections open already keep theirs
 * (an SSL holds a reference to its SSL_CTX); on failure nothing changes.
 * May call: OpenSSL only. Single-threaded, like the loop that uses it.
 */
#ifndef HAMR_NET_CLUSTER_TLS_H
#define HAMR_NET_CLUSTER_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "net/tls.h"

#define CLUSTER_TLS_NODE_PREFIX "hamr:node:"
#define CLUSTER_TLS_OPERATOR_PREFIX "hamr:operator:"
#define CLUSTER_TLS_NAME_MAX 64

struct cluster_tls;

/* The files, as configured ([cluster_tls] ca, cert, key). */
struct cluster_tls_files {
    const char *ca;   /* PEM: the cluster CA (one or more certificates) */
    const char *cert; /* PEM: this node's (or operator's) certificate, chain allowed */
    const char *key;  /* PEM: its private key */
    uint64_t node_id; /* > 0: the certificate must be this node's (checked at every load) */
};

enum cluster_tls_role {
    CLUSTER_TLS_NONE = 0, /* no hamr identity, or more than one */
    CLUSTER_TLS_NODE,
    CLUSTER_TLS_OPERATOR,
};

struct cluster_tls_identity {
    enum cluster_tls_role role;
    uint64_t node_id;                /* CLUSTER_TLS_NODE */
    char name[CLUSTER_TLS_NAME_MAX]; /* CLUSTER_TLS_OPERATOR */
};

/*
 * cluster_tls_new - load the files (copied names). The certificate must
 * match the key, chain to the CA, and carry exactly one hamr identity. 0
 * and *out; else HAMR_EINVAL (errmsg names the file and what is wrong) or
 * HAMR_ENOMEM.
 */
int cluster_tls_new(const struct cluster_tls_files *files,
                    struct cluster_tls **out,
                    char *errmsg,
                    size_t errlen);

/* cluster_tls_free - release both contexts (open connections keep theirs). NULL is fine. */
void cluster_tls_free(struct cluster_tls *c);

/*
 * cluster_tls_reload - read the same files again, checked as by
 * cluster_tls_new. 0: the new contexts are in place; else the old ones stay
 * and errmsg says why.
 */
int cluster_tls_reload(struct cluster_tls *c, char *errmsg, size_t errlen);

/*
 * cluster_tls_server_ctx / _client_ctx - the current contexts. Borrowed
 * until the next reload or free: pass them to tls_new (server true, host
 * NULL, verify false: the context verifies by itself) at once.
 */
SSL_CTX *cluster_tls_server_ctx(const struct cluster_tls *c);
SSL_CTX *cluster_tls_client_ctx(const struct cluster_tls *c);

/* cluster_tls_self - the identity in this node's own certificate. */
const struct cluster_tls_identity *cluster_tls_self(const struct cluster_tls *c);

/*
 * cluster_tls_days_left - whole days from now until this node's
 * certificate (ca false) or the CA's earliest (ca true) stops being valid;
 * negative once expired.
 */
long cluster_tls_days_left(const struct cluster_tls *c, bool ca, time_t now);

/* cluster_tls_reloads - successful reloads since cluster_tls_new. */
uint64_t cluster_tls_reloads(const struct cluster_tls *c);

/* cluster_tls_identity_of - the hamr identity a certificate carries. 0, or -1 with role NONE. */
int cluster_tls_identity_of(X509 *cert, struct cluster_tls_identity *id);

/*
 * cluster_tls_identity_name - "node:ID", "operator:NAME" or "none" into out
 * (size outlen, truncated), for logs; returns out. Operator names are
 * printable by construction (cluster_tls_identity_of checks them).
 */
const char *cluster_tls_identity_name(const struct cluster_tls_identity *id,
                                      char *out,
                                      size_t outlen);

/*
 * cluster_tls_peer - the identity of a connection's peer, once its
 * handshake is done: 0, or -1 (no verified certificate, or no single hamr
 * identity in it).
 */
int cluster_tls_peer(const struct tls *t, struct cluster_tls_identity *id);

#endif
