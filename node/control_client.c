/*
 * control_client.c - blocking client of the control channel, for hamrctl,
 * and a generic JSON printer for protobuf-c messages.
 *
 * One call: connect (non-blocking connect + poll, bounded by timeout_ms),
 * with TLS the handshake (net/tls's engine fed from the socket, bounded the
 * same way), send the framed request, read the 4-byte length and then the
 * answer, all within timeout_ms of the start of the call. No signals: writes
 * use MSG_NOSIGNAL, waits use poll.
 *
 * Errors: HAMR_ECONNECT, HAMR_ETIMEDOUT, HAMR_EIO, HAMR_EPROTO, HAMR_ENOMEM,
 * HAMR_EINVAL, each with a sentence naming the server address and, where
 * the cause is a usual one (a certificate the node does not take, a CA that
 * does not match, a socket hamrctl may not open), what to do. (A TLS port
 * asked in the clear answers in the clear itself: node/control.c.)
 *
 * Security: the answer comes from the network. Its length is checked against
 * PROTO_CONTROL_MAX before allocating; protobuf-c decodes the rest. Over TLS
 * the node's certificate must chain to the cluster CA (the context) and name
 * a node (checked here). The JSON printer escapes every string and replaces
 * invalid UTF-8.
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto_frame.h"
#include "util/common.h"
#include "util/err.h"
#include "net/cluster_tls.h"
#include "net/tls.h"

#include "node/control_client.h"

/* control_client_now_ms - monotonic clock in milliseconds. */
static uint64_t control_client_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* control_client_wait - poll fd for events until deadline; 0, or HAMR_ETIMEDOUT / HAMR_EIO. */
static int control_client_wait(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = control_client_now_ms();
        if (now >= deadline)
            return HAMR_ETIMEDOUT;
        struct pollfd pfd = {.fd = fd, .events = events};
        uint64_t left = deadline - now;
        int n = poll(&pfd, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return HAMR_EIO;
    }
}

/* control_client_connect_one - connect one resolved address; 0 or -errno style code. */
static int control_client_connect_one(const struct addrinfo *ai,
                                      uint64_t deadline,
                                      int *fdp,
                                      int *sys_errno)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        *sys_errno = errno;
        return HAMR_ECONNECT;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) {
            *sys_errno = errno;
            close(fd);
            return HAMR_ECONNECT;
        }
        int rv = control_client_wait(fd, POLLOUT, deadline);
        if (rv != 0) {
            *sys_errno = rv == HAMR_ETIMEDOUT ? ETIMEDOUT : errno;
            close(fd);
            return rv == HAMR_ETIMEDOUT ? HAMR_ETIMEDOUT : HAMR_ECONNECT;
        }
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
            soerr = errno;
        if (soerr != 0) {
            *sys_errno = soerr;
            close(fd);
            return HAMR_ECONNECT;
        }
    }
    *fdp = fd;
    return 0;
}

/* control_client_open - resolve and connect within the timeout. */
int control_client_open(struct control_client *cc,
                        const char *host,
                        uint16_t port,
                        unsigned timeout_ms,
                        char *err,
                        size_t errlen)
{
    cc->fd = -1;
    cc->tls = NULL;
    cc->timeout_ms = timeout_ms ? timeout_ms : CONTROL_CLIENT_TIMEOUT_MS;
    if (strchr(host, ':') != NULL)
        snprintf(cc->addr, sizeof(cc->addr), "[%s]:%u", host, (unsigned)port);
    else
        snprintf(cc->addr, sizeof(cc->addr), "%s:%u", host, (unsigned)port);
    uint64_t deadline = control_client_now_ms() + cc->timeout_ms;

    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", cc->addr, gai_strerror(gai));
        return HAMR_EINVAL;
    }
    int rv = HAMR_ECONNECT, sys_errno = 0;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        rv = control_client_connect_one(ai, deadline, &cc->fd, &sys_errno);
        if (rv == 0 || rv == HAMR_ETIMEDOUT)
            break;
    }
    freeaddrinfo(res);
    if (rv == HAMR_ETIMEDOUT)
        snprintf(err, errlen, "cannot connect to %s: timed out after %u ms", cc->addr,
                 cc->timeout_ms);
    else if (rv != 0)
        snprintf(err, errlen, "cannot connect to %s: %s", cc->addr, strerror(sys_errno));
    return rv;
}

/* control_client_open_unix - connect to the control socket; see control_client.h. */
int control_client_open_unix(struct control_client *cc,
                             const char *path,
                             unsigned timeout_ms,
                             char *err,
                             size_t errlen)
{
    cc->fd = -1;
    cc->tls = NULL;
    cc->timeout_ms = timeout_ms ? timeout_ms : CONTROL_CLIENT_TIMEOUT_MS;
    hamr_strlcpy(cc->addr, path, sizeof(cc->addr));
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof(sa.sun_path)) {
        snprintf(err, errlen,
                 "control socket path too long (%zu bytes, at most %zu): %s (give a shorter one "
                 "with -s, e.g. relative to the data directory)",
                 n, sizeof(sa.sun_path) - 1, path);
        return HAMR_EINVAL;
    }
    memcpy(sa.sun_path, path, n + 1);
    struct addrinfo ai = {.ai_family = AF_UNIX,
                          .ai_socktype = SOCK_STREAM,
                          .ai_addr = (struct sockaddr *)&sa,
                          .ai_addrlen = sizeof(sa)};
    uint64_t deadline = control_client_now_ms() + cc->timeout_ms;
    int sys_errno = 0;
    int rv = control_client_connect_one(&ai, deadline, &cc->fd, &sys_errno);
    if (rv == HAMR_ETIMEDOUT) {
        snprintf(err, errlen, "cannot connect to control socket %s: timed out after %u ms", path,
                 cc->timeout_ms);
        return rv;
    }
    if (rv == 0)
        return 0;
    const char *hint = "";
    if (sys_errno == ENOENT)
        hint = " (is hamrd running, with this [listen] control_socket?)";
    else if (sys_errno == EACCES || sys_errno == EPERM)
        hint = " (root and members of the group of hamrd's account may use it)";
    else if (sys_errno == ECONNREFUSED)
        hint = " (nobody listens: hamrd is not running, or has not started yet)";
    snprintf(err, errlen, "cannot connect to control socket %s: %s%s", path, strerror(sys_errno),
             hint);
    return HAMR_ECONNECT;
}

/* control_client_close - close the socket and the TLS engine; idempotent. */
void control_client_close(struct control_client *cc)
{
    cc->tls = tls_free(cc->tls);
    if (cc->fd >= 0)
        close(cc->fd);
    cc->fd = -1;
}

/* control_client_send_all - write n bytes before deadline. */
static int control_client_send_all(int fd, const uint8_t *p, size_t n, uint64_t deadline)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return HAMR_EIO;
        int rv = control_client_wait(fd, POLLOUT, deadline);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* control_client_recv_all - read exactly n bytes before deadline; HAMR_EIO on EOF. */
static int control_client_recv_all(int fd, uint8_t *p, size_t n, uint64_t deadline)
{
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0)
            return HAMR_EIO;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return HAMR_EIO;
        int rv = control_client_wait(fd, POLLIN, deadline);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* control_client_tls_flush - the engine's output onto the socket. */
static int control_client_tls_flush(struct control_client *cc)
{
    const char *data;
    size_t n;
    while ((n = tls_output(cc->tls, &data)) > 0) {
        int rv = control_client_send_all(cc->fd, (const uint8_t *)data, n, cc->deadline);
        if (rv != 0)
            return rv;
        tls_output_done(cc->tls, n);
    }
    return 0;
}

/* control_client_tls_fill - one read of ciphertext into the engine; HAMR_EIO on EOF. */
static int control_client_tls_fill(struct control_client *cc)
{
    uint8_t buf[16384];
    for (;;) {
        ssize_t r = recv(cc->fd, buf, sizeof(buf), 0);
        if (r > 0)
            return tls_feed(cc->tls, buf, (size_t)r);
        if (r == 0)
            return HAMR_EIO;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return HAMR_EIO;
        int rv = control_client_wait(cc->fd, POLLIN, cc->deadline);
        if (rv != 0)
            return rv;
    }
}

/* control_client_send - n octets of plaintext, through TLS if it is on. */
static int control_client_send(struct control_client *cc, const uint8_t *p, size_t n)
{
    if (cc->tls == NULL)
        return control_client_send_all(cc->fd, p, n, cc->deadline);
    if (tls_write(cc->tls, p, n) != 0)
        return HAMR_EPROTO;
    return control_client_tls_flush(cc);
}

/* control_client_recv - exactly n octets of plaintext; HAMR_EPROTO: TLS failed (tls_error). */
static int control_client_recv(struct control_client *cc, uint8_t *p, size_t n)
{
    if (cc->tls == NULL)
        return control_client_recv_all(cc->fd, p, n, cc->deadline);
    while (n > 0) {
        long r = tls_read(cc->tls, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r == HAMR_ESHUTDOWN)
            return HAMR_EIO;
        if (r < 0)
            return HAMR_EPROTO;
        /* Reading may have made output (a key update's answer); then wait for more. */
        int rv = control_client_tls_flush(cc);
        if (rv == 0)
            rv = control_client_tls_fill(cc);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* control_client_start_tls - the handshake, then the node's identity; see control_client.h. */
int control_client_start_tls(struct control_client *cc, SSL_CTX *ctx, char *err, size_t errlen)
{
    int rv = tls_new(ctx, false, NULL, false, &cc->tls);
    if (rv != 0) {
        snprintf(err, errlen, "TLS with %s: cannot start: %s", cc->addr, hamr_strerror(rv));
        return rv;
    }
    cc->deadline = control_client_now_ms() + cc->timeout_ms;
    for (;;) {
        int hs = tls_handshake(cc->tls);
        rv = control_client_tls_flush(cc);
        if (hs < 0) {
            const char *why = tls_error(cc->tls);
            snprintf(err, errlen, "TLS handshake with %s failed: %s%s", cc->addr, why,
                     strstr(why, "certificate verify failed") != NULL
                         ? " (is --ca the cluster's CA, the one the node's certificate is "
                           "signed by?)"
                         : "");
            return HAMR_EPROTO;
        }
        if (rv == 0 && hs == 1)
            break;
        if (rv == 0)
            rv = control_client_tls_fill(cc);
        if (rv == HAMR_ETIMEDOUT) {
            snprintf(err, errlen, "TLS handshake with %s: no answer within %u ms", cc->addr,
                     cc->timeout_ms);
            return rv;
        }
        if (rv != 0) {
            snprintf(err, errlen,
                     "%s closed the connection during the TLS handshake (is its control port "
                     "in plaintext? then give no certificate)",
                     cc->addr);
            return rv == HAMR_ENOMEM ? rv : HAMR_EIO;
        }
    }
    struct cluster_tls_identity id;
    if (cluster_tls_peer(cc->tls, &id) != 0 || id.role != CLUSTER_TLS_NODE) {
        snprintf(err, errlen,
                 "%s presented a certificate of the cluster CA that names no node "
                 "(hamr:node:ID); not talking to it",
                 cc->addr);
        return HAMR_EPROTO;
    }
    return 0;
}

/* control_client_call - one request, one answer. */
int control_client_call(struct control_client *cc,
                        const Hamr__ControlRequest *req,
                        Hamr__ControlResponse **resp,
                        char *err,
                        size_t errlen)
{
    if (cc->fd < 0) {
        snprintf(err, errlen, "not connected to %s", cc->addr);
        return HAMR_EINVAL;
    }
    cc->deadline = control_client_now_ms() + cc->timeout_ms;
    size_t n = hamr__control_request__get_packed_size(req);
    if (n > PROTO_CONTROL_MAX) {
        snprintf(err, errlen, "request too large");
        return HAMR_ETOOBIG;
    }
    uint8_t *out = malloc(n + 4);
    if (out == NULL) {
        snprintf(err, errlen, "out of memory");
        return HAMR_ENOMEM;
    }
    proto_u32_put(out, (uint32_t)n);
    hamr__control_request__pack(req, out + 4);
    int rv = control_client_send(cc, out, n + 4);
    int saved = errno;
    free(out);
    if (rv != 0) {
        if (rv == HAMR_ETIMEDOUT)
            snprintf(err, errlen, "timed out sending to %s", cc->addr);
        else if (rv == HAMR_EPROTO)
            snprintf(err, errlen, "TLS with %s failed: %s", cc->addr, tls_error(cc->tls));
        else
            snprintf(err, errlen, "cannot send to %s: %s", cc->addr, strerror(saved));
        return rv;
    }

    uint8_t hdr[4];
    rv = control_client_recv(cc, hdr, sizeof(hdr));
    if (rv == 0) {
        n = proto_u32_get(hdr);
        if (n > PROTO_CONTROL_MAX) {
            snprintf(err, errlen, "answer from %s too large (%zu bytes)", cc->addr, n);
            return HAMR_EPROTO;
        }
        uint8_t *in = malloc(n ? n : 1);
        if (in == NULL) {
            snprintf(err, errlen, "out of memory");
            return HAMR_ENOMEM;
        }
        rv = control_client_recv(cc, in, n);
        if (rv == 0) {
            *resp = hamr__control_response__unpack(NULL, n, in);
            free(in);
            if (*resp == NULL) {
                snprintf(err, errlen, "malformed answer from %s", cc->addr);
                return HAMR_EPROTO;
            }
            return 0;
        }
        free(in);
    }
    if (rv == HAMR_ETIMEDOUT)
        snprintf(err, errlen, "no answer from %s within %u ms", cc->addr, cc->timeout_ms);
    else if (rv == HAMR_EPROTO)
        snprintf(err, errlen,
                 "%s refused the TLS connection: %s (an operator's certificate of "
                 "the cluster CA is needed)",
                 cc->addr, tls_error(cc->tls));
    else
        snprintf(err, errlen, "connection to %s closed before the answer", cc->addr);
    return rv;
}

/* control_client_request - open, call, close. */
int control_client_request(const char *host,
                           uint16_t port,
                           unsigned timeout_ms,
                           const Hamr__ControlRequest *req,
                           Hamr__ControlResponse **resp,
                           char *err,
                           size_t errlen)
{
    struct control_client cc;
    int rv = control_client_open(&cc, host, port, timeout_ms, err, errlen);
    if (rv != 0)
        return rv;
    rv = control_client_call(&cc, req, resp, err, errlen);
    control_client_close(&cc);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* JSON output, generic over protobuf-c descriptors.                        */
/* ------------------------------------------------------------------------ */

/* control_client_utf8_len - length of a valid UTF-8 sequence at p (0 if invalid). */
static size_t control_client_utf8_len(const unsigned char *p, size_t left)
{
    size_t n;
    uint32_t cp;
    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xe0) == 0xc0) {
        n = 2;
        cp = p[0] & 0x1f;
    } else if ((p[0] & 0xf0) == 0xe0) {
        n = 3;
        cp = p[0] & 0x0f;
    } else if ((p[0] & 0xf8) == 0xf0) {
        n = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (n > left)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0; /* overlong, out of range, or a surrogate */
    return n;
}

/* control_client_json_string - a JSON string literal; invalid UTF-8 becomes U+FFFD. */
static void control_client_json_string(FILE *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', out);
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        switch (c) {
            case '"':
                fputs("\\\"", out);
                break;
            case '\\':
                fputs("\\\\", out);
                break;
            case '\n':
                fputs("\\n", out);
                break;
            case '\r':
                fputs("\\r", out);
                break;
            case '\t':
                fputs("\\t", out);
                break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    fprintf(out, "\\u%04x", c);
                } else if (c >= 0x80) {
                    size_t n = control_client_utf8_len(p + i, len - i);
                    if (n == 0) {
                        fputs("\\ufffd", out);
                        i++;
                    } else {
                        fwrite(p + i, 1, n, out);
                        i += n;
                    }
                    continue;
                } else {
                    fputc(c, out);
                }
        }
        i++;
    }
    fputc('"', out);
}

/* control_client_json_base64 - bytes as a base64 JSON string. */
static void control_client_json_base64(FILE *out, const ProtobufCBinaryData *b)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    fputc('"', out);
    for (size_t i = 0; i < b->len; i += 3) {
        uint32_t v = (uint32_t)b->data[i] << 16;
        if (i + 1 < b->len)
            v |= (uint32_t)b->data[i + 1] << 8;
        if (i + 2 < b->len)
            v |= b->data[i + 2];
        fputc(tab[(v >> 18) & 63], out);
        fputc(tab[(v >> 12) & 63], out);
        fputc(i + 1 < b->len ? tab[(v >> 6) & 63] : '=', out);
        fputc(i + 2 < b->len ? tab[v & 63] : '=', out);
    }
    fputc('"', out);
}

static void control_client_json_message(FILE *out, const ProtobufCMessage *m, int depth);

/* control_client_json_value - one element of field f stored at p. */
static void control_client_json_value(FILE *out,
                                      const ProtobufCFieldDescriptor *f,
                                      const void *p,
                                      int depth)
{
    switch (f->type) {
        case PROTOBUF_C_TYPE_INT32:
        case PROTOBUF_C_TYPE_SINT32:
        case PROTOBUF_C_TYPE_SFIXED32:
            fprintf(out, "%d", *(const int32_t *)p);
            break;
        case PROTOBUF_C_TYPE_UINT32:
        case PROTOBUF_C_TYPE_FIXED32:
            fprintf(out, "%u", *(const uint32_t *)p);
            break;
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_SFIXED64:
            fprintf(out, "%lld", (long long)*(const int64_t *)p);
            break;
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
            fprintf(out, "%llu", (unsigned long long)*(const uint64_t *)p);
            break;
        case PROTOBUF_C_TYPE_FLOAT:
        case PROTOBUF_C_TYPE_DOUBLE: {
            double d = f->type == PROTOBUF_C_TYPE_FLOAT ? *(const float *)p : *(const double *)p;
            if (isfinite(d))
                fprintf(out, "%.17g", d);
            else
                fputs("null", out);
            break;
        }
        case PROTOBUF_C_TYPE_BOOL:
            fputs(*(const protobuf_c_boolean *)p ? "true" : "false", out);
            break;
        case PROTOBUF_C_TYPE_ENUM: {
            int v = *(const int *)p;
            const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
            if (ev != NULL)
                control_client_json_string(out, ev->name, strlen(ev->name));
            else
                fprintf(out, "%d", v);
            break;
        }
        case PROTOBUF_C_TYPE_STRING: {
            const char *s = *(const char *const *)p;
            if (s == NULL)
                fputs("null", out);
            else
                control_client_json_string(out, s, strlen(s));
            break;
        }
        case PROTOBUF_C_TYPE_BYTES:
            control_client_json_base64(out, (const ProtobufCBinaryData *)p);
            break;
        case PROTOBUF_C_TYPE_MESSAGE: {
            const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
            if (sub == NULL)
                fputs("null", out);
            else
                control_client_json_message(out, sub, depth);
            break;
        }
    }
}

/* control_client_type_size - bytes one element of type t occupies in a message struct. */
static size_t control_client_type_size(ProtobufCType t)
{
    switch (t) {
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_SFIXED64:
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
            return sizeof(uint64_t);
        case PROTOBUF_C_TYPE_DOUBLE:
            return sizeof(double);
        case PROTOBUF_C_TYPE_FLOAT:
            return sizeof(float);
        case PROTOBUF_C_TYPE_BOOL:
            return sizeof(protobuf_c_boolean);
        case PROTOBUF_C_TYPE_ENUM:
            return sizeof(int);
        case PROTOBUF_C_TYPE_STRING:
        case PROTOBUF_C_TYPE_MESSAGE:
            return sizeof(void *);
        case PROTOBUF_C_TYPE_BYTES:
            return sizeof(ProtobufCBinaryData);
        default:
            return sizeof(uint32_t);
    }
}

/* control_client_json_indent - two spaces per level. */
static void control_client_json_indent(FILE *out, int depth)
{
    for (int i = 0; i < depth; i++)
        fputs("  ", out);
}

/* control_client_json_message - an object with one member per present field. */
static void control_client_json_message(FILE *out, const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    bool first = true;
    fputc('{', out);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *field = base + f->offset;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)(const void *)(base + f->quantifier_offset) != f->id)
                continue;
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset != 0 &&
                   f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE) {
            if (!*(const protobuf_c_boolean *)(const void *)(base + f->quantifier_offset))
                continue;
        }
        fputs(first ? "\n" : ",\n", out);
        first = false;
        control_client_json_indent(out, depth + 1);
        control_client_json_string(out, f->name, strlen(f->name));
        fputs(": ", out);
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            control_client_json_value(out, f, field, depth + 1);
            continue;
        }
        size_t n = *(const size_t *)(const void *)(base + f->quantifier_offset);
        const char *arr = *(const char *const *)field;
        size_t sz = control_client_type_size(f->type);
        if (n == 0) {
            fputs("[]", out);
            continue;
        }
        fputc('[', out);
        for (size_t j = 0; j < n; j++) {
            fputs(j ? ",\n" : "\n", out);
            control_client_json_indent(out, depth + 2);
            control_client_json_value(out, f, arr + j * sz, depth + 2);
        }
        fputc('\n', out);
        control_client_json_indent(out, depth + 1);
        fputc(']', out);
    }
    if (!first) {
        fputc('\n', out);
        control_client_json_indent(out, depth);
    }
    fputc('}', out);
}

/* control_client_json - print m as JSON and a newline. */
int control_client_json(FILE *out, const ProtobufCMessage *m)
{
    control_client_json_message(out, m, 0);
    fputc('\n', out);
    return ferror(out) ? HAMR_EIO : 0;
}
