/*
 * control_client.h - blocking client of the control channel (hamrctl), and a
 * JSON printer for protobuf-c messages.
 *
 * A connection is a TCP address (in the clear, or TLS once
 * control_client_start_tls has run) or a Unix socket's path.
 *
 * Owns: one blocking connection per request, and its TLS engine. May call:
 * libc sockets, proto/ framing, net/tls and net/cluster_tls (the node's
 * identity), util; used by hamrctl only (never by hamrd).
 */
#ifndef HAMR_NODE_CONTROL_CLIENT_H
#define HAMR_NODE_CONTROL_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/ssl.h>

#include "proto/hamr.pb-c.h"

#define CONTROL_CLIENT_TIMEOUT_MS 10000

struct tls;

/* control_client - one connection; plain POSIX sockets, no event loop. */
struct control_client {
    int fd;              /* -1 when closed */
    unsigned timeout_ms; /* for connecting, the TLS handshake, and each call */
    char addr[300];      /* "host:port", "[v6]:port" or the socket's path, for messages */
    struct tls *tls;     /* NULL: plaintext */
    uint64_t deadline;   /* of the step under way (monotonic ms) */
};

/*
 * control_client_open - resolve host (literal or name) and connect within
 * timeout_ms (0: CONTROL_CLIENT_TIMEOUT_MS). Errors: HAMR_ECONNECT,
 * HAMR_ETIMEDOUT, HAMR_EINVAL, each with a sentence such as
 * "cannot connect to 127.0.0.1:7100: Connection refused" in err.
 */
int control_client_open(struct control_client *cc,
                        const char *host,
                        uint16_t port,
                        unsigned timeout_ms,
                        char *err,
                        size_t errlen);

/*
 * control_client_open_unix - connect to the control socket at path within
 * timeout_ms (0: CONTROL_CLIENT_TIMEOUT_MS). Errors: HAMR_ECONNECT with a
 * sentence that names the path, the reason and what to check (no such file:
 * is hamrd running with this control_socket; permission denied: root and
 * the group of hamrd's account may use it); HAMR_EINVAL (path too long).
 */
int control_client_open_unix(struct control_client *cc,
                             const char *path,
                             unsigned timeout_ms,
                             char *err,
                             size_t errlen);

/*
 * control_client_start_tls - TLS on an open TCP connection, on ctx (a
 * cluster_tls client context: it presents the operator's certificate and
 * checks the node's against the cluster CA), within timeout_ms. The node's
 * certificate must name a node (hamr:node:ID). 0, or HAMR_EPROTO (the
 * handshake failed, or not a node's certificate), HAMR_EIO (the node closed
 * the connection), HAMR_ETIMEDOUT, HAMR_ENOMEM, each with a sentence; the
 * connection is then unusable. A node that does not take the client's
 * certificate says so after the handshake, in the first answer's place:
 * control_client_call fails with HAMR_EPROTO and the node's reason.
 */
int control_client_start_tls(struct control_client *cc, SSL_CTX *ctx, char *err, size_t errlen);

/*
 * control_client_call - send req and wait for the answer. req is borrowed for
 * the call. On 0, *resp must be freed with
 * hamr__control_response__free_unpacked(*resp, NULL). Errors: HAMR_EIO (sent
 * or read nothing, connection closed), HAMR_ETIMEDOUT, HAMR_EPROTO (bad or
 * too large answer), HAMR_ENOMEM; the connection is then unusable.
 */
int control_client_call(struct control_client *cc,
                        const Hamr__ControlRequest *req,
                        Hamr__ControlResponse **resp,
                        char *err,
                        size_t errlen);

/* control_client_close - close the connection; idempotent. */
void control_client_close(struct control_client *cc);

/* control_client_request - open, one call, close. */
int control_client_request(const char *host,
                           uint16_t port,
                           unsigned timeout_ms,
                           const Hamr__ControlRequest *req,
                           Hamr__ControlResponse **resp,
                           char *err,
                           size_t errlen);

/*
 * control_client_json - print m as indented JSON by walking its protobuf-c
 * descriptor: field names as in the .proto, enums by name, 64-bit numbers as
 * numbers, bytes as base64, every field (defaults too, unset messages as
 * null). Ends with a newline. Returns 0 or HAMR_EIO.
 */
int control_client_json(FILE *out, const ProtobufCMessage *m);

#endif
