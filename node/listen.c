/* listen.c - parse, bind, listen and read back the port of a node listener. */
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "util/err.h"
#include "node/listen.h"

/* listen_addr - an IPv4 or IPv6 literal and a port into ss; 0 or HAMR_EINVAL. */
static int listen_addr(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return HAMR_EINVAL;
}

/* listen_start - bind and listen; HAMR_EIO with errmsg; the port bound into *port. */
static int listen_start(uv_tcp_t *t,
                        const struct sockaddr_storage *ss,
                        int backlog,
                        uv_connection_cb cb,
                        uint16_t *port,
                        const char *what,
                        char *errmsg,
                        size_t errlen)
{
    int rv = uv_tcp_bind(t, (const struct sockaddr *)ss, 0);
    if (rv == 0)
        rv = uv_listen((uv_stream_t *)t, backlog, cb);
    if (rv != 0) {
        char host[64] = "?";
        uint16_t want = 0;
        if (ss->ss_family == AF_INET6) {
            uv_ip6_name((const struct sockaddr_in6 *)ss, host, sizeof(host));
            want = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
        } else {
            uv_ip4_name((const struct sockaddr_in *)ss, host, sizeof(host));
            want = ntohs(((const struct sockaddr_in *)ss)->sin_port);
        }
        snprintf(errmsg, errlen, "%s: cannot listen on %s:%u: %s", what, host, (unsigned)want,
                 uv_strerror(rv));
        return HAMR_EIO;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(t, (struct sockaddr *)&bound, &len);
    if (bound.ss_family == AF_INET6)
        *port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    else
        *port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    return 0;
}

/* listen_open - parse, initialise, bind and listen; see listen.h. */
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
                size_t errlen)
{
    struct sockaddr_storage ss;
    if (listen_addr(host, port, &ss) != 0) {
        snprintf(errmsg, errlen, "%s: not an IP address: %s", what, host);
        return HAMR_EINVAL;
    }
    uv_tcp_init(loop, t);
    t->data = owner;
    if (listen_start(t, &ss, backlog, cb, bound, what, errmsg, errlen) != 0) {
        uv_close((uv_handle_t *)t, on_fail);
        return HAMR_EIO;
    }
    return 0;
}
