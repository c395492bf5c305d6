/* listen.h - the TCP listener set-up shared by the node's control, peer and HTTP servers. */
#ifndef HAMR_NODE_LISTEN_H
#define HAMR_NODE_LISTEN_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* listen_addr - an IPv4 or IPv6 literal and a port into ss; 0 or HAMR_EINVAL. */
int listen_addr(const char *host, uint16_t port, struct sockaddr_storage *ss);

/*
 * listen_start - bind the initialised handle t to ss and listen with cb.
 * On success *port is the bound port (useful with port 0) and 0 is
 * returned; otherwise a sentence "WHAT: cannot listen on HOST:PORT: reason"
 * goes to errmsg and HAMR_EIO is returned: the caller closes t.
 */
int listen_start(uv_tcp_t *t, const struct sockaddr_storage *ss, int backlog,
                 uv_connection_cb cb, uint16_t *port, const char *what, char *errmsg,
                 size_t errlen);

#endif
