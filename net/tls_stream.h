/*
 * tls_stream.h - plaintext reads and writes over a connected libuv stream,
 * through TLS (a net/tls engine) or in the clear, so that a channel's code
 * reads the same either way: the peer channel, the control channel and the
 * HTTP port between nodes and operators (net/cluster_tls gives the
 * contexts).
 *
 * The owner keeps the libuv handle: it sits in a struct tls_stream_handle
 * in the owner's memory, and the owner initialises it (uv_tcp_init,
 * uv_pipe_init, accept or connect), may use its data field, and closes it.
 * tls_stream finds itself from the handle through that struct and never
 * touches data (net/tcp_server, for one, keeps its own pointer there).
 *
 * With TLS, reading starts the handshake (the client sends its hello at
 * once); handshake_cb runs once it is done (or failed), before any
 * plaintext reaches read_cb and before any plaintext written so far leaves:
 * plaintext written before the handshake is done waits, uncopied, and goes
 * out after handshake_cb returns, unless the owner closed its handle there
 * (a client that does not like the server's certificate sends it nothing).
 *
 * Owns: the TLS engine, the ciphertext in flight (each write request and its
 * copy, freed in its callback), the list of writes waiting for the
 * handshake, and nothing of the owner's: a write's buffer is the owner's,
 * and must stay as it is until its callback (plain mode writes it without
 * a copy; TLS encrypts it once the handshake is done).
 *
 * Failure modes: the end of a stream is reported exactly once, and reading
 * stops with it: a TLS failure (handshake, or a bad record later) is
 * UV_EPROTO with the reason in tls_stream_error(); the peer's close
 * (close_notify or EOF) is UV_EOF; a socket error is the libuv code. Before
 * the handshake is done the report goes to handshake_cb (read_cb if there is
 * none), after it to read_cb. After any of these the owner closes its handle;
 * write callbacks then run with UV_ECANCELED, as libuv's do (those of writes
 * still waiting for the handshake from tls_stream_free).
 *
 * May call: net/tls, libuv, util. Single-threaded, on the handle's loop.
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

/*
 * tls_stream_handle - the owner's handle, with the way back to its stream.
 * Embed it where a uv_tcp_t would be; hamr_container_of on u.tcp (or u.pipe)
 * leads from a libuv callback's handle back to the owner.
 */
struct tls_stream_handle {
    union {
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } u;
    struct tls_stream *ts; /* set by tls_stream_init */
};

/* tls_stream_ops - the owner's side; every callback gets data. */
struct tls_stream_ops {
    void *data;
    /* alloc_cb - where read_cb's plaintext goes (a buffer of the owner's). */
    void (*alloc_cb)(void *data, uv_buf_t *buf);
    /*
     * read_cb - nread > 0 octets of plaintext in buf; 0: nothing this time
     * (buf unused); < 0: the end, once (UV_EOF, UV_EPROTO, a UV_E* code).
     */
    void (*read_cb)(void *data, ssize_t nread, const uv_buf_t *buf);
    /*
     * handshake_cb - TLS only, may be NULL: 0 when done (the peer's
     * certificate checked by the context: tls_stream_tls for its identity);
     * else the end, once: UV_EPROTO (refused, see tls_stream_error), UV_EOF
     * or a socket error (the peer went away first). The owner may close its
     * handle here; writes waiting for the handshake are then never sent.
     */
    void (*handshake_cb)(void *data, int status);
};

/* tls_stream_write_cb - a write's plaintext has gone to the socket (0) or not (< 0). */
typedef void (*tls_stream_write_cb)(void *arg, int status);

/*
 * tls_stream_init - s over h (initialised; connected, accepted or about to
 * be read). ctx NULL: plaintext; else a connection on ctx (up-referenced:
 * the caller may drop ctx afterwards, e.g. on a reload), which verifies the
 * peer by itself. server: the accepting side. ops copied; h->ts set. 0,
 * HAMR_ENOMEM or HAMR_EIO (the engine could not be made).
 */
int tls_stream_init(struct tls_stream **out,
                    struct tls_stream_handle *h,
                    SSL_CTX *ctx,
                    bool server,
                    const struct tls_stream_ops *ops);

/*
 * tls_stream_init_client - as tls_stream_init for a TLS client (ctx not
 * NULL) that sends host (copied) as SNI (RFC 6066 3) and accepts only a
 * certificate chain ctx trusts that names host (SSL_set1_host): the
 * handshake fails with UV_EPROTO otherwise, "certificate verify failed
 * (...)" in tls_stream_error. For a server known by its DNS name, such as
 * the MTA-STS policy host (net/mta_sts). 0, HAMR_EINVAL (no ctx or host),
 * HAMR_ENOMEM or HAMR_EIO (the engine could not be made, or host refused).
 */
int tls_stream_init_client(struct tls_stream **out,
                           struct tls_stream_handle *h,
                           SSL_CTX *ctx,
                           const char *host,
                           const struct tls_stream_ops *ops);

/*
 * tls_stream_read_start / _read_stop - as uv_read_start/_stop; start is 0
 * or a UV_E* code, and does nothing once the end was reported. Stopping
 * inside read_cb stops reading the socket, but the plaintext of the socket
 * read being delivered still comes whole (as it would in the clear: one
 * read, one buffer), so nothing is left in the engine that needs no more
 * input to come out.
 */
int tls_stream_read_start(struct tls_stream *s);
void tls_stream_read_stop(struct tls_stream *s);

/*
 * tls_stream_write - send len (1 .. TLS_STREAM_WRITE_MAX) octets of
 * plaintext; cb(arg, status) exactly once, never inside this call, when they
 * are written (or cannot be). Writes leave in the order made. 0, or a UV_E*
 * code and cb will not run: UV_EINVAL (len, or no cb), UV_EPROTO (TLS failed
 * already), UV_ECANCELED (the handle is closing), UV_ENOMEM, what uv_write
 * says.
 */
#define TLS_STREAM_WRITE_MAX ((size_t)1 << 30)
int tls_stream_write(struct tls_stream *s,
                     const void *data,
                     size_t len,
                     tls_stream_write_cb cb,
                     void *arg);

/*
 * tls_stream_queued - plaintext octets written whose callback has not run
 * (waiting for the handshake or on their way to the socket): what the owner
 * bounds to stop a peer that does not read from costing it memory.
 */
size_t tls_stream_queued(const struct tls_stream *s);

/*
 * tls_stream_shutdown - after every write made so far: TLS close_notify,
 * then end the socket's sending side (uv_shutdown). cb(arg, status) once,
 * never inside this call; then the owner closes. 0 or a UV_E* code (cb will
 * not run): UV_ENOTCONN with TLS before the handshake is done, UV_EBUSY for
 * a second shutdown.
 */
int tls_stream_shutdown(struct tls_stream *s, tls_stream_write_cb cb, void *arg);

/* tls_stream_tls - the engine (NULL in plain mode), e.g. for cluster_tls_peer. */
struct tls *tls_stream_tls(const struct tls_stream *s);

/* tls_stream_handshaken - plain mode, or the TLS handshake has completed. */
bool tls_stream_handshaken(const struct tls_stream *s);

/* tls_stream_error - the TLS failure's reason, "" if none. */
const char *tls_stream_error(const struct tls_stream *s);

/*
 * tls_stream_free - release s from the owner's close callback (libuv has run
 * every write callback with UV_ECANCELED by then); writes that were still
 * waiting for the handshake get theirs here, with UV_ECANCELED, so the owner
 * calls this before it frees what they need. NULL is fine.
 */
void tls_stream_free(struct tls_stream *s);

#endif
