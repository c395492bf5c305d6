/*
 * control_client.h - blocking client of the control channel (hamrctl), and a
 * JSON printer for protobuf-c messages.
 *
 * Owns: one blocking connection per request. May call: libc sockets, proto/
 * framing, util; used by hamrctl only (never by hamrd).
 */
#ifndef HAMR_NODE_CONTROL_CLIENT_H
#define HAMR_NODE_CONTROL_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto/hamr.pb-c.h"

#define CONTROL_CLIENT_TIMEOUT_MS 10000

/* control_client - one connection; plain POSIX sockets, no event loop. */
struct control_client {
    int fd;              /* -1 when closed */
    unsigned timeout_ms; /* for connecting, and for each call (send + whole answer) */
    char addr[300];      /* "host:port" or "[v6]:port", for messages */
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
