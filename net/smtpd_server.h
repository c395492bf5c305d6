/* smtpd_server.h - the inbound SMTP listener on libuv: one session per TCP connection. */
#ifndef HAMR_NET_SMTPD_SERVER_H
#define HAMR_NET_SMTPD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "net/smtpd.h"
#include "net/smtpd_limits.h"

struct smtpd_server;

/* smtpd_server_close_cb - the server and all its connections are gone. */
typedef void (*smtpd_server_close_cb)(void *arg);

/*
 * smtpd_server_new - bind host:port (an IPv4 or IPv6 literal; port 0 picks
 * a free port, see smtpd_server_port()) and listen on loop. policy is
 * borrowed until the close callback; sink is copied (its data borrowed
 * until every submit has called back). At most max_sessions sessions run at
 * once; further clients get 421 4.7.0 and are closed. Accepted sockets of
 * every kind are capped too (smtpd_server_set_max_connections). Per-client
 * limits are off until smtpd_server_set_limits(). On failure returns
 * HAMR_EINVAL (bad address) or HAMR_EIO (bind/listen) with a sentence in
 * errmsg; the loop must still run once to release the listener handle.
 */
int smtpd_server_new(uv_loop_t *loop,
                     const char *host,
                     uint16_t port,
                     const struct smtpd_policy *policy,
                     const struct smtpd_sink *sink,
                     size_t max_sessions,
                     struct smtpd_server **out,
                     char *errmsg,
                     size_t errlen);

/* smtpd_server_port - the bound port. */
uint16_t smtpd_server_port(const struct smtpd_server *s);

/*
 * smtpd_server_set_draining - while draining, new clients get 421 4.3.2
 * and are closed; open sessions continue.
 */
void smtpd_server_set_draining(struct smtpd_server *s, bool draining);

/*
 * smtpd_server_set_greet_delay - wait ms before the 220 greeting; a client
 * that talks first gets 554 5.5.0 (postscreen's pregreet test). Default 0.
 */
void smtpd_server_set_greet_delay(struct smtpd_server *s, uint64_t ms);

/*
 * smtpd_server_set_proxy - with on, every new connection must come from an
 * address inside networks (n_networks entries, borrowed until the close
 * callback) and start with a PROXY protocol header, v1 or v2, complete
 * within timeout_ms (0: 5 s). The client address is then the header's
 * source (the socket address only for a v2 LOCAL health check). Any other
 * peer, a bad header or a late one is closed without a greeting and logged.
 * Affects connections accepted afterwards. Default: off.
 */
void smtpd_server_set_proxy(struct smtpd_server *s,
                            bool on,
                            const struct smtpd_cidr *networks,
                            size_t n_networks,
                            uint64_t timeout_ms);

/*
 * smtpd_server_set_limits - per client address (the PROXY source behind a
 * trusted balancer): at most cfg->conn_limit sessions at once and
 * cfg->conn_rate connection attempts per minute (0: no limit); addresses in
 * cfg->exempt are not limited. Over either the client gets "421 4.7.0
 * <host> Error: too many connections from <ip>" and is closed. cfg is
 * copied, cfg->exempt borrowed until the next call or the close callback.
 * Affects connections admitted afterwards; held counts stay.
 */
void smtpd_server_set_limits(struct smtpd_server *s, const struct smtpd_limits_config *cfg);

/*
 * smtpd_server_set_max_connections - accept at most max_conns sockets
 * (sessions, header waits and clients being told 421) at once; at the cap
 * the listener stops accepting and clients wait in the kernel backlog until
 * a connection ends. 0: max_sessions + 64 (the default); never below
 * max_sessions.
 */
void smtpd_server_set_max_connections(struct smtpd_server *s, size_t max_conns);

/* smtpd_server_limits - the per-client counters (for tests and metrics); borrowed. */
const struct smtpd_limits *smtpd_server_limits(const struct smtpd_server *s);

/*
 * smtpd_server_advance_clock - for tests: move the per-client limits' clock
 * forward by ms (rate windows end, idle entries expire) without sleeping.
 */
void smtpd_server_advance_clock(struct smtpd_server *s, uint64_t ms);

/*
 * smtpd_server_set_tls - offer STARTTLS with this PEM certificate chain
 * and key (both set), or stop offering it (both NULL or ""). Affects
 * sessions started afterwards. HAMR_EINVAL with a sentence naming the file
 * in errmsg when a file cannot be read, does not parse, or the key does not
 * match; the previous setting then stays.
 */
int smtpd_server_set_tls(struct smtpd_server *s,
                         const char *cert_file,
                         const char *key_file,
                         char *errmsg,
                         size_t errlen);

/*
 * smtpd_server_reload_tls - read the files of smtpd_server_set_tls again
 * (SIGHUP). On failure logs why, keeps the old context and returns
 * HAMR_EINVAL. 0 (and nothing done) when STARTTLS is off.
 */
int smtpd_server_reload_tls(struct smtpd_server *s);

/* smtpd_server_sessions - open sessions (refused connections not counted). */
size_t smtpd_server_sessions(const struct smtpd_server *s);

/* smtpd_server_auth_checks - AUTH password checks in the thread pool or waiting for it. */
size_t smtpd_server_auth_checks(const struct smtpd_server *s);

/*
 * smtpd_server_close - stop listening, say 421 4.3.2 to every session and
 * close it (a session with a pending submit or AUTH check first answers
 * it), wait for every AUTH check handed to the thread pool, then free the
 * server and call cb(arg). Call once; s is invalid after cb.
 */
void smtpd_server_close(struct smtpd_server *s, smtpd_server_close_cb cb, void *arg);

#endif
