/*
 * config.h - one INI file per node (hamrd -c FILE), parsed with libinih.
 *
 * Every key, its default and its meaning are listed in README.md. Errors
 * name the line: "FILE:LINE: reason". Durations take a unit suffix (ms, s,
 * m, h, d; bare numbers are seconds); sizes take K, M or G (bare: bytes).
 *
 * Owns: struct hamr_config and its parsing. May call: libinih, net/'s
 * parsers of what it checks (addresses, TLS policies), util.
 */
#ifndef HAMR_NODE_CONFIG_H
#define HAMR_NODE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/zone.h"
#include "consensus/consensus.h"
#include "net/dkim.h"
#include "net/dns.h"
#include "net/mta_sts.h"
#include "net/mx.h"
#include "net/smtpc.h"
#include "net/smtpd.h"

#define CONFIG_HOST_MAX 256
#define CONFIG_MAX_TRANSPORTS 256

/* config_hostport - a listen or next-hop address. */
struct config_hostport {
    char host[CONFIG_HOST_MAX]; /* literal or name; "" if unset */
    uint16_t port;
    /*
     * Written without brackets and a name, not a literal: as a next hop,
     * looked up as MX ("host:port"); "[host]:port" is the host's own
     * addresses, as in Postfix.
     */
    bool mx;
};

/* config_transport - [transport] domain = [host]:port. */
struct config_transport {
    char domain[CONFIG_HOST_MAX]; /* "example.com" exact, ".example.com" subdomains */
    struct config_hostport next_hop;
};

/* config_tls_policy_entry - [tls_policy] domain = may|encrypt|verify. */
struct config_tls_policy_entry {
    char domain[CONFIG_HOST_MAX]; /* "example.com" exact, ".example.com" subdomains */
    enum smtpc_tls_policy policy;
};

struct hamr_config {
    char path[4096]; /* the file read */

    /* [node] */
    uint64_t node_id;               /* id (required, > 0) */
    char data_dir[4096];            /* data_dir (required) */
    char hostname[CONFIG_HOST_MAX]; /* hostname (default: gethostname()) */
    int log_level;                  /* log_level: error|warn|info|debug (info) */
    char user[64];                  /* user: drop to this user after binding ("") */
    char zone[ZONE_NAME_MAX];       /* zone: data centre or rack, [A-Za-z0-9._-]{1,63} ("") */

    /* [listen] */
    struct config_hostport listen_smtp;    /* smtp (127.0.0.1:2525) */
    struct config_hostport listen_raft;    /* raft (required: IP literal) */
    struct config_hostport listen_control; /* control (127.0.0.1:7100; "" = off): TCP,
                                              mutual TLS with operator certificates
                                              unless [cluster_tls] plaintext */
    char listen_control_socket[1024];      /* control_socket (control.sock; "" = off): the
                                              trusted Unix socket, mode 0660; a relative
                                              path is inside data_dir */
    struct config_hostport listen_http;    /* http ("" = off): health and, without
                                              metrics, /metrics, in the clear */
    struct config_hostport listen_metrics; /* metrics ("" = off): the same endpoints over
                                              mutual TLS, operators only; needs the
                                              [cluster_tls] files; IP literal */
    struct config_hostport listen_peer;    /* peer ("" = off; required with more than one
                                              voter): node-to-node forwarding, IP literal */

    /* [cluster] */
    struct consensus_member voters[CONSENSUS_MAX_MEMBERS]; /* voters = 1@ip:port, ... */
    size_t n_voters;              /* default: this node alone; 0 when join */
    bool join;                    /* join (no): start empty and wait for hamrctl add */
    unsigned election_timeout_ms; /* election_timeout (1s) */
    unsigned heartbeat_ms;        /* heartbeat (100ms) */
    size_t snapshot_bytes;        /* snapshot_bytes (64M) */
    uint64_t proposal_timeout_ms; /* proposal_timeout (30s): 451 after */

    /* [smtpd] */
    struct smtpd_policy smtpd;             /* hostname is copied in from [node]; also
                                              min_data_rate (500 bytes/s; 0 = off) and
                                              stress_timeout (10s) */
    struct smtpd_cidr relay_networks[256]; /* relay_networks (127.0.0.0/8, ::1/128) */
    size_t n_relay_networks;
    char *relay_domains[256]; /* relay_domains (none) */
    size_t n_relay_domains;
    unsigned max_sessions;                /* max_sessions (500) */
    uint64_t greet_delay_ms;              /* greet_delay (0): wait before the 220; input
                                             before it is an early talker (554) */
    bool proxy_protocol;                  /* proxy_protocol (off): every connection starts
                                             with a PROXY header, v1 or v2 */
    struct smtpd_cidr proxy_networks[64]; /* proxy_networks (none): the load balancers;
                                             required with proxy_protocol = on */
    size_t n_proxy_networks;
    uint64_t proxy_timeout_ms;        /* proxy_timeout (5s): the header must be complete */
    unsigned client_connection_limit; /* client_connection_limit (50): sessions at once per
                                         client address; 0 = no limit */
    unsigned client_connection_rate;  /* client_connection_rate (0 = off): connections per
                                         client address per minute */
    unsigned client_auth_rate;        /* client_auth_rate (30; 0 = off): AUTH commands per
                                         client address per minute */
    struct smtpd_cidr limit_exempt_networks[64]; /* limit_exempt_networks (none): clients
                                                    the three limits above do not apply to */
    size_t n_limit_exempt_networks;
    char tls_cert_file[1024];    /* tls_cert_file (""): PEM chain; with tls_key_file,
                                    STARTTLS is offered */
    char tls_key_file[1024];     /* tls_key_file (""): PEM key; set both or neither */
    char auth_file[1024];        /* auth_file (""): SMTP AUTH credentials (hamr-passwd
                                    lines); needs STARTTLS. smtpd.auth_max_failures:
                                    auth_max_failures (3) */
    char relay_recipients[1024]; /* relay_recipients (""): the relay recipient map
                                    (net/smtpd_rcptmap.h); "" = every recipient at
                                    relay_domains is accepted */

    /* [delivery] */
    struct config_hostport relayhost; /* relayhost = [host]:port ("" = none) */
    struct smtpc_config smtpc;        /* connect_timeout (30s), command_timeout (5m),
                                         data_done_timeout (10m), idle_timeout (10s),
                                         max_per_destination (10), max_msgs_per_conn (100) */
    uint64_t retry_min_ms;            /* retry_min (5m) */
    uint64_t retry_max_ms;            /* retry_max (4000s) */
    uint64_t queue_lifetime_ms;       /* queue_lifetime (5d) */
    uint64_t delay_warning_ms;        /* delay_warning_time (0: no delay notices) */
    uint64_t lease_time_ms;           /* lease_time (30s): renewed while the delivery runs */
    uint64_t delivery_slots;          /* delivery_slots (256): deliveries this node runs at once */
    uint64_t rate_per_destination;    /* rate_per_destination (0: none): messages a minute to one
                                         next hop, for the whole cluster (node/relay_rate.c) */
    uint64_t max_clock_skew_ms;       /* [node] max_clock_skew (5s): wall clock off the cluster's */
    uint64_t scan_interval_ms;        /* scan_interval (1s): scheduler tick */
    enum smtpc_tls_policy tls_policy; /* tls_policy (may): may|encrypt|verify, the default
                                         for domains not in [tls_policy]; tls_ca_file ("":
                                         system store) is smtpc.tls_ca_file */
    unsigned delivery_port;           /* port (25): of MX hosts and address literals */
    /*
     * auth_file (""): outbound SMTP AUTH credentials, one "NEXTHOP
     * USER:PASSWORD" line per next hop (net/smtpc_auth.h), read at start
     * and on SIGHUP; auth_plaintext (no) is smtpc.auth_plaintext: AUTH
     * also without TLS.
     */
    char delivery_auth_file[1024];
    /*
     * address_limit (5) and session_limit (2) are smtpc's (address_limit
     * copied into mx); mx also has inet_protocols (all|ipv4|ipv6),
     * address_preference (any|ipv6|ipv4) and self_addresses (none: the
     * addresses of this cluster besides its nodes' own, e.g. a load
     * balancer's; the relay adds the nodes' and its hostname).
     */
    struct mx_config mx;

    /* [dns]: servers ("" = /etc/resolv.conf), timeout (5s), tries (2), cache_size (10000) */
    struct dns_config dns;

    /*
     * [mta_sts]: enabled (yes): MTA-STS (RFC 8461) for domains routed by MX
     * without a [tls_policy] entry; https_port (443); timeout (30s), ca_file
     * ("": the system store) in sts; refresh (1h): a cached policy older
     * than this is checked again (its TXT id) while it is used.
     */
    bool sts_enabled;
    unsigned sts_https_port;
    struct sts_config sts;
    uint64_t sts_refresh_ms;

    /* [transport] */
    struct config_transport transports[CONFIG_MAX_TRANSPORTS];
    size_t n_transports;

    /* [tls_policy] */
    struct config_tls_policy_entry tls_policies[CONFIG_MAX_TRANSPORTS];
    size_t n_tls_policies;

    /*
     * [dkim]: DKIM signing (net/dkim.h) of mail whose From: domain has a
     * key. key = DOMAIN SELECTOR PATH, one line per key, given as often as
     * needed (DOMAIN "example.com" exact or ".example.com" its subdomains,
     * signed as d=example.com); the files are read at start and on SIGHUP.
     * sign (yes): no = sign nothing, read no key. oversign_from (yes): h=
     * lists "from" once more than present.
     */
    struct dkim_key_spec *dkim_keys; /* malloc'd, n_dkim_keys of them; freed by config_free */
    size_t n_dkim_keys;
    bool dkim_sign;
    bool dkim_oversign_from;

    /* [storage] */
    uint64_t min_free_bytes; /* min_free (256M): below it MAIL gets 452 4.3.1 */
    /* The cluster-wide queue limits, on the replicated queue every node has
     * applied: at or above either, MAIL gets 452 4.3.1. 0 turns one off. */
    uint64_t queue_max_messages; /* queue_max_messages (1000000) */
    uint64_t queue_max_bytes;    /* queue_max_bytes (0: off) */
    uint64_t body_segment_bytes; /* body_segment_size: the body store's segments */

    /* [cluster_tls]: the cluster's PKI (net/cluster_tls.h), not the SMTP certificate */
    char cluster_ca_file[1024];   /* ca_file (""): the cluster CA, PEM */
    char cluster_cert_file[1024]; /* cert_file (""): this node's certificate (hamr:node:ID) */
    char cluster_key_file[1024];  /* key_file (""): its key */
    bool cluster_plaintext;       /* plaintext (no): raft, peer and control in the clear; a lab
                                     only, warned about at every start */
};

/* config_defaults - fill every default. */
void config_defaults(struct hamr_config *cfg);

/*
 * config_load - defaults, then the file, then cross-checks. On error writes
 * "FILE:LINE: reason" (LINE 0 for a whole-file problem) into err and returns
 * HAMR_EINVAL (or HAMR_EIO if the file cannot be read).
 */
int config_load(struct hamr_config *cfg, const char *path, char *err, size_t errlen);

/* config_free - release what config_load allocated (relay_domains, dkim_keys). */
void config_free(struct hamr_config *cfg);

/*
 * config_route - next hop for a recipient address: the [transport] entry of
 * its domain (exact match first, then the longest ".suffix"), else the
 * relayhost, else the domain itself on [delivery] port, looked up as MX
 * (mx set), or an address literal's address. 0, or HAMR_ENOTFOUND when
 * the domain is neither a host name nor an address literal.
 */
int config_route(const struct hamr_config *cfg, const char *rcpt, struct config_hostport *out);

/*
 * config_tls_policy - the outbound TLS policy for a recipient domain (or an
 * address: the part after the last '@'): the [tls_policy] entry of the
 * domain (exact match first, then the longest ".suffix"), else
 * [delivery] tls_policy.
 */
enum smtpc_tls_policy config_tls_policy(const struct hamr_config *cfg, const char *rcpt_domain);

/* config_tls_policy_entry - the [tls_policy] entry config_tls_policy found, or NULL. */
const struct config_tls_policy_entry *config_tls_policy_entry(const struct hamr_config *cfg,
                                                              const char *rcpt_domain);

/*
 * config_ip_address - "a.b.c.d:port" or "[v6]:port" (the literal
 * normalised, as inet_ntop writes it) for an IP literal host: how raft,
 * peer and control addresses are written wherever a node publishes them.
 * 0, or HAMR_EINVAL when host is not an IP literal or out is too small.
 */
int config_ip_address(const char *host, uint16_t port, char *out, size_t outlen);

/*
 * config_control_socket - the path of the control socket: control_socket
 * itself when absolute, else data_dir/control_socket; "" when it is off.
 * 0, or HAMR_EINVAL when the path does not fit out.
 */
int config_control_socket(const struct hamr_config *cfg, char *out, size_t outlen);

/* config_parse_duration / _size / _hostport / _cidr - exported for tests. */
int config_parse_duration(const char *s, uint64_t *ms);
int config_parse_size(const char *s, uint64_t *bytes);
int config_parse_hostport(const char *s, struct config_hostport *hp);
int config_parse_cidr(const char *s, struct smtpd_cidr *c);

#endif
