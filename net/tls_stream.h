/*
 * tls_stream.h - plaintext reads and writes over a connected libuv stream,
 * through TLS (a net/tls engine) or in the clear, so that a channel's code
 * reads the same either way: the peer channel, the control channel and the
 * HTTP port between nodes and operators (net/cluster_tls gives the
 * contexts).
 *
 * The owner keeps the uv_stream_t (its uv_tcp_t or uv_pipe_t) and closes
 * it; a struct tls_stream is embedded next to it and never touches the
 * handle's data field. With TLS, reading starts the handshake (the client
 * sends its hello at once); handshake_cb runs once it is done (or failed),
 * before any plaintext reaches read_cb. Plaintext written before the
 * handshake is done waits in the engine and goes out after it.
 *
 * Owns: the TLS engine, ciphertext in flight (each write request and its
 * copy, freed in its callback), and nothing of the owner's: a write's
 * buffer is the owner's until its callback (plain mode writes it without
 * a copy).
 *
 * Failure modes: a TLS failure (handshake, or a bad record later) is
 * reported once, to handshake_cb (during the handshake) or as read_cb's
 * nread UV_EPROTO, with the reason in tls_stream_error(); the peer's close
 * (close_notify or EOF) is UV_EOF; a socket error is the libuv code. After
 * any of these the owner closes its handle; pending write callbacks then
 * run with UV_ECANCELED, as libuv's do.
 */
#ifndef HAMR_NET_TLS_STREAM_H
#define HAMR_NET_TLS_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "net/tls.h"

struct tls_stream;

/* tls_stream_ops - the owner's side; every callback gets data. */
struct tls_stream_ops {
    void *data;
    /* alloc_cb - where read_cb's plaintext goes (a buffer of the owner's). */
    void (*alloc_cb)(void *data, uv_buf_t *buf);
    /* read_cb - nread > 0 octets of plaintext in buf, or < 0: UV_EOF, UV_EPROTO, a UV_E* code. */
    void (*read_cb)(void *data, ssize_t nread, const uv_buf_t *buf);
    /* handshake_cb - TLS only, may be NULL: 0 when done (peer checked by the context), else UV_EPROTO. */
    void (*handshake_cb)(void *data, int status);
};

/* tls_stream_write_cb - a write's plaintext has gone to the socket (0) or not (< 0). */
typedef void (*tls_stream_write_cb)(void *arg, int status);

/*
 * tls_stream_init - s over stream (connected, or accepted). ctx NULL:
 * plaintext. server: the accepting side. ops copied. 0, HAMR_ENOMEM or
 * HAMR_EIO (the engine could not be made).
 */
int tls_stream_init(struct tls_stream **out,
                    uv_stream_t *stream,
                    SSL_CTX *ctx,
                    bool server,
                    const struct tls_stream_ops *ops);

/* tls_stream_read_start / _read_stop - as uv_read_start/_stop. 0 or a UV_E* code. */
int tls_stream_read_start(struct tls_stream *s);
void tls_stream_read_stop(struct tls_stream *s);

/*
 * tls_stream_write - send len octets of plaintext; cb(arg, status) exactly
 * once, never inside this call, when they are written (or cannot be).
 * 0, or a UV_E* code (cb will not run).
 */
int tls_stream_write(struct tls_stream *s,
                     const void *data,
                     size_t len,
                     tls_stream_write_cb cb,
                     void *arg);

/* tls_stream_shutdown - TLS: send close_notify (plain: nothing). The owner closes afterwards. */
void tls_stream_shutdown(struct tls_stream *s);

/* tls_stream_tls - the engine (NULL in plain mode), e.g. for cluster_tls_peer. */
struct tls *tls_stream_tls(const struct tls_stream *s);

/* tls_stream_handshaken - plain mode, or the TLS handshake has completed. */
bool tls_stream_handshaken(const struct tls_stream *s);

/* tls_stream_error - the TLS failure's reason, "" if none. */
const char *tls_stream_error(const struct tls_stream *s);

/*
 * tls_stream_free - release s once the owner's handle has closed (its
 * close callback) and every write callback has run. NULL is fine.
 */
void tls_stream_free(struct tls_stream *s);

#endif
