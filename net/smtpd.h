/*
 * smtpd.h - what the inbound SMTP side needs from the rest of hamr.
 *
 * net/ knows nothing of raft or the queue. node/ fills in a struct
 * smtpd_policy (limits, relay rules) and a struct smtpd_sink (where a
 * finished message goes). A session asks its sink to accept a message and
 * is called back with the result; it replies 250 only on status 0.
 */
#ifndef HAMR_NET_SMTPD_H
#define HAMR_NET_SMTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/smtp_ext.h"

#define SMTPD_QUEUE_ID_MAX 64 /* including the NUL */

struct smtpd_auth;
struct smtpd_rcptmap;

/* smtpd_cidr - an IPv4 or IPv6 network (family AF_INET or AF_INET6). */
struct smtpd_cidr {
    int family;
    uint8_t addr[16]; /* network byte order; IPv4 uses the first 4 */
    unsigned prefix;
};

/*
 * smtpd_observer - counts for the node's metrics. Both may be NULL. session:
 * a session started (its greeting goes out); reply: a 4xx or 5xx reply was
 * sent (code is the reply code). Never used to decide anything.
 */
struct smtpd_observer {
    void *data;
    void (*session)(void *data);
    void (*reply)(void *data, int code);
};

/* smtpd_policy - inbound limits and relay rules. Borrowed by sessions. */
/* The longest [smtpd] postmaster: a mailbox (SMTP_ADDR_PATH_MAX) and its NUL. */
#define SMTPD_POSTMASTER_MAX 257

struct smtpd_policy {
    char hostname[256];                      /* banner, Received: */
    const struct smtpd_cidr *relay_networks; /* clients that may relay anywhere */
    size_t n_relay_networks;
    char *const *relay_domains; /* "example.com" exact, ".example.com" subdomains */
    size_t n_relay_domains;
    size_t message_size_limit;      /* bytes, advertised as SIZE; 10 MiB */
    size_t recipient_limit;         /* 1000 */
    size_t header_size_limit;       /* bytes of the header block; 100 KiB */
    unsigned hopcount_limit;        /* Received: headers; 50 */
    unsigned max_errors;            /* hard error limit, then 421; 20 */
    uint64_t command_timeout_ms;    /* per command wait; 300 s */
    uint64_t data_timeout_ms;       /* per read during DATA; 300 s */
    struct smtpd_observer observer; /* metrics; zeroed: none */
    /*
     * SMTP AUTH (RFC 4954): NULL, AUTH is off. Otherwise PLAIN and LOGIN
     * are offered after STARTTLS only, and a client that authenticated may
     * relay anywhere. Borrowed; see net/smtpd_auth.h.
     */
    const struct smtpd_auth *auth;
    unsigned auth_max_failures; /* failed AUTH per session, then 421; 3 (0: 3) */
    /*
     * NOOP, RSET, VRFY, HELP and empty BDAT chunks without LAST per session
     * before each further one counts toward max_errors (Postfix's
     * smtpd_junk_command_limit); 100 (0: 100).
     */
    unsigned junk_command_limit;
    /*
     * Slow clients (SECURITY.md S14). min_data_rate: bytes per second; the
     * whole DATA phase must end by 354 + data_timeout + received /
     * min_data_rate, else 421 4.4.2; 500 (0: off). stress_timeout_ms: the
     * command and data timeouts of new waits while the server is under load
     * (at least 80 % of max_sessions); 10 s (0: no cap).
     */
    uint64_t min_data_rate;
    uint64_t stress_timeout_ms;
    /*
     * Relay recipient map (SECURITY.md S20): NULL, off. Otherwise a
     * recipient accepted only because its domain is in relay_domains must
     * be listed, else 550 5.1.1 User unknown; relay_networks and
     * authenticated clients are not checked. Borrowed; see
     * net/smtpd_rcptmap.h.
     */
    const struct smtpd_rcptmap *rcptmap;
    /*
     * Where mail to <postmaster> with no domain goes (RFC 5321 4.5.1: it
     * must be accepted from anyone): a mailbox with its domain, or "" for
     * postmaster@hostname. Such a recipient is exempt from the relay
     * check and the recipient map.
     */
    char postmaster[SMTPD_POSTMASTER_MAX];
    /*
     * The listen backlog (read by smtpd_server_new only): connections the
     * kernel completes and holds while the server is not accepting (busy,
     * or at max_connections); beyond it SYNs are dropped and clients wait
     * for their retransmission, without a banner. 0: SMTPD_LISTEN_BACKLOG.
     * The kernel caps it at net.core.somaxconn.
     */
    unsigned listen_backlog;
};

#define SMTPD_LISTEN_BACKLOG 1024

/* smtpd_envelope - a finished message, borrowed by the sink until its callback. */
struct smtpd_envelope {
    const char *queue_id;     /* from sink->new_id, already in Received: */
    const char *client_addr;  /* text form of the client's address */
    const char *helo;         /* EHLO/HELO argument, "" if none */
    const char *sender;       /* reverse-path without <>, "" for null sender */
    const char *const *rcpts; /* forward-paths without <> */
    size_t n_rcpts;
    const uint8_t *body; /* un-stuffed, CRLF line ends, our Received: first */
    size_t body_len;
    bool body_8bit; /* BODY=8BITMIME */
    /*
     * The envelope extensions (net/smtp_ext.h), taken only while the
     * sink's ext_ok says yes. smtputf8: MAIL SMTPUTF8. requiretls: MAIL
     * REQUIRETLS (only over TLS). ret: enum smtp_ret. envid: the decoded
     * ENVID, NULL if none. rcpt_dsn: n_rcpts entries, parallel to rcpts,
     * or NULL when no RCPT gave NOTIFY or ORCPT.
     */
    bool smtputf8;
    bool requiretls;
    uint8_t ret;
    const char *envid;
    const struct smtp_dsn_rcpt *rcpt_dsn;
};

/*
 * smtpd_sink_cb - the end of a submit. status 0: committed, reply 250.
 * HAMR_EINDOUBT: the message may or may not commit; the session hangs up
 * without a reply. Otherwise a HAMR_E* code that net/smtpd_reply maps to the
 * reply (4xx for not-leader, no quorum, timeout, no space).
 */
typedef void (*smtpd_sink_cb)(void *arg, int status);

struct smtpd_sink {
    void *data;
    /* new_id - write a fresh cluster-unique queue id (NUL-terminated) into id. */
    int (*new_id)(void *data, char *id, size_t idlen);
    /*
     * check_mail - may this node take a new transaction now? Called at MAIL.
     * 0: yes; HAMR_ENOSPACE or HAMR_EQUEUEFULL: 452 4.3.1; HAMR_NOQUORUM/HAMR_EDRAINING:
     * 451/421.
     * May be NULL (always yes).
     */
    int (*check_mail)(void *data);
    /*
     * ext_ok - may sessions offer and take SMTPUTF8, DSN and REQUIRETLS now
     * (can every voter replicate them)? Asked at EHLO and at MAIL. May be
     * NULL (always yes).
     */
    bool (*ext_ok)(void *data);
    /*
     * submit - accept env. The sink borrows env (and every pointer in it)
     * until cb runs. If submit returns 0, cb runs exactly once, later, never
     * from inside submit; if it returns an error, cb never runs.
     */
    int (*submit)(void *data, const struct smtpd_envelope *env, smtpd_sink_cb cb, void *arg);
};

#endif
