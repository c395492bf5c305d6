/* listen.h - the TCP listener set-up shared by the node's control, peer and HTTP servers. */
#ifndef HAMR_NODE_LISTEN_H
#define HAMR_NODE_LISTEN_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/*
 * listen_open - listen on host:port (an IPv4 or IPv6 literal) with t, the
 * listener embedded in owner (t->data = owner), backlog and cb; *bound is
 * the port bound (useful with port 0). 0 on success. Otherwise errmsg gets
 * "WHAT: ..." and:
 *   HAMR_EINVAL - host is not an IP literal; t was never initialised, so
 *                 the caller frees owner itself;
 *   HAMR_EIO    - bind or listen failed; t has been uv_close()d with
 *                 on_fail, which is where owner is freed.
 */
int listen_open(uv_loop_t *loop,
                uv_tcp_t *t,
                void *owner,
                const char *host,
                uint16_t port,
                int backlog,
                uv_connection_cb cb,
                uv_close_cb on_fail,
                uint16_t *bound,
                const char *what,
                char *errmsg,
                size_t errlen);

#endif
