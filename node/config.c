/*
 * config.c - the node's INI configuration: defaults, parsing with libinih,
 * value parsers, cross-checks and next-hop routing.
 *
 * Owns: the struct hamr_config it fills, including the relay_domains strings
 * (released by config_free). cfg->smtpd points into cfg's own arrays, so a
 * struct hamr_config must not be copied by value once loaded.
 *
 * Parsing: libinih r55 (Debian 12) gives its handler no line number and reads
 * at most 199 bytes per line, splitting longer lines silently (which also
 * throws its own line count off). So the file is fed to ini_parse_stream
 * through config_reader, which reads whole lines itself, counts them, and
 * refuses a line too long for inih instead of letting it be split. The
 * handler then knows the exact line of every key.
 *
 * inih treats an indented line that follows a key as a continuation of that
 * key (Python configparser style). List keys (voters, relay_networks,
 * proxy_networks, limit_exempt_networks, relay_domains) accept that and
 * append; a scalar key given twice, or continued, is an error. The first occurrence of a list key
 * replaces its default.
 *
 * Errors: config_load returns HAMR_EINVAL with "FILE:LINE: reason" (LINE 0 for
 * a whole-file problem) or HAMR_EIO when the file cannot be read; the parsers
 * return HAMR_EINVAL. Values quoted in messages are made printable.
 *
 * Security: the file is trusted operator input, but every value is length-
 * and range-checked and no value is ever used as a format string.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "util/zone.h"
#include "net/smtp_addr.h"

#include "node/config.h"

/* Largest message we accept: a whole message travels in one raft entry. */
#define CONFIG_MESSAGE_SIZE_MAX (64ull * 1024 * 1024)

/* config_kind - how a key's value is parsed and stored. */
enum config_kind {
    CONFIG_K_ID,           /* decimal > 0, uint64 */
    CONFIG_K_STRING,       /* char[width], non-empty */
    CONFIG_K_STRING_OPT,   /* char[width], may be empty */
    CONFIG_K_LOGLEVEL,     /* error|warn|info|debug into int */
    CONFIG_K_HOSTPORT,     /* struct config_hostport, required */
    CONFIG_K_HOSTPORT_OPT, /* struct config_hostport, empty = off */
    CONFIG_K_DURATION,     /* milliseconds into a 4- or 8-byte unsigned */
    CONFIG_K_SIZE,         /* bytes into a 4- or 8-byte unsigned */
    CONFIG_K_COUNT,        /* plain decimal into a 4- or 8-byte unsigned */
    CONFIG_K_BOOL,         /* yes|no|true|false|on|off|1|0 into a bool */
    CONFIG_K_VOTERS,       /* list of ID@IPV4:PORT or ID@[IPV6]:PORT */
    CONFIG_K_NETWORKS,     /* list of CIDRs */
    CONFIG_K_DOMAINS,      /* list of domains */
    CONFIG_K_TLS_POLICY,   /* may|encrypt|verify|dane|dane-only into enum smtpc_tls_policy */
    CONFIG_K_WORD,         /* one of the key's words into an int-sized enum: its index */
    CONFIG_K_ADDRS,        /* list of IP literals into mx.self_addrs */
    CONFIG_K_DNS_SERVERS,  /* list of IP[:PORT] or [IPV6]:PORT into dns.servers */
    CONFIG_K_ZONE,         /* a zone name (util/zone.h), or empty for none */
};

/* config_key - one known key: where it lives and which values are allowed. */
struct config_key {
    const char *section;
    const char *name;
    enum config_kind kind;
    size_t offset;
    size_t width; /* sizeof the field */
    uint64_t min, max;
    const char *const *words; /* CONFIG_K_WORD: the values allowed, NULL-terminated */
};

#define CONFIG_FIELD_SIZE(field) sizeof(((struct hamr_config *)0)->field)
#define CK(sec, nm, kind, field, min, max)                                                      \
    {                                                                                           \
        sec, nm, kind, offsetof(struct hamr_config, field), CONFIG_FIELD_SIZE(field), min, max, \
            NULL                                                                                \
    }
#define CKW(sec, nm, field, words)                                                                \
    {                                                                                             \
        sec, nm, CONFIG_K_WORD, offsetof(struct hamr_config, field), CONFIG_FIELD_SIZE(field), 0, \
            0, words                                                                              \
    }

/* The words of CONFIG_K_WORD keys, in the order of their enums. */
static const char *const config_inet_words[] = {"all", "ipv4", "ipv6", NULL};
static const char *const config_pref_words[] = {"any", "ipv6", "ipv4", NULL};

#define CONFIG_SEC 1000ull
#define CONFIG_MIN (60 * CONFIG_SEC)
#define CONFIG_HOUR (60 * CONFIG_MIN)
#define CONFIG_DAY (24 * CONFIG_HOUR)
#define CONFIG_MIB (1024ull * 1024)

/* The keys of every section but [transport] and [tls_policy], whose keys are domains. */
static const struct config_key config_keys[] = {
    CK("node", "id", CONFIG_K_ID, node_id, 1, UINT64_MAX),
    CK("node", "data_dir", CONFIG_K_STRING, data_dir, 0, 0),
    CK("node", "hostname", CONFIG_K_STRING, hostname, 0, 0),
    CK("node", "log_level", CONFIG_K_LOGLEVEL, log_level, 0, 0),
    CK("node", "user", CONFIG_K_STRING_OPT, user, 0, 0),
    CK("node", "max_clock_skew", CONFIG_K_DURATION, max_clock_skew_ms, 0, CONFIG_DAY),
    CK("node", "zone", CONFIG_K_ZONE, zone, 0, 0),

    CK("listen", "smtp", CONFIG_K_HOSTPORT, listen_smtp, 0, 0),
    CK("listen", "raft", CONFIG_K_HOSTPORT, listen_raft, 0, 0),
    CK("listen", "control", CONFIG_K_HOSTPORT_OPT, listen_control, 0, 0),
    CK("listen", "control_socket", CONFIG_K_STRING_OPT, listen_control_socket, 0, 0),
    CK("listen", "http", CONFIG_K_HOSTPORT_OPT, listen_http, 0, 0),
    CK("listen", "metrics", CONFIG_K_HOSTPORT_OPT, listen_metrics, 0, 0),
    CK("listen", "peer", CONFIG_K_HOSTPORT_OPT, listen_peer, 0, 0),

    CK("cluster", "voters", CONFIG_K_VOTERS, voters, 0, 0),
    CK("cluster", "election_timeout", CONFIG_K_DURATION, election_timeout_ms, 10, CONFIG_HOUR),
    CK("cluster", "heartbeat", CONFIG_K_DURATION, heartbeat_ms, 1, CONFIG_HOUR),
    CK("cluster", "snapshot_bytes", CONFIG_K_SIZE, snapshot_bytes, 1024, UINT64_MAX),
    CK("cluster", "join", CONFIG_K_BOOL, join, 0, 0),
    CK("cluster", "proposal_timeout", CONFIG_K_DURATION, proposal_timeout_ms, 1, CONFIG_DAY),

    CK("smtpd", "relay_networks", CONFIG_K_NETWORKS, relay_networks, 0, 0),
    CK("smtpd", "relay_domains", CONFIG_K_DOMAINS, relay_domains, 0, 0),
    CK("smtpd", "message_size_limit", CONFIG_K_SIZE, smtpd.message_size_limit, 1, UINT64_MAX),
    CK("smtpd", "recipient_limit", CONFIG_K_COUNT, smtpd.recipient_limit, 1, 1000000),
    CK("smtpd", "header_size_limit", CONFIG_K_SIZE, smtpd.header_size_limit, 1024, UINT32_MAX),
    CK("smtpd", "hopcount_limit", CONFIG_K_COUNT, smtpd.hopcount_limit, 1, 10000),
    CK("smtpd", "max_errors", CONFIG_K_COUNT, smtpd.max_errors, 1, 1000000),
    CK("smtpd", "junk_command_limit", CONFIG_K_COUNT, smtpd.junk_command_limit, 1, 1000000),
    CK("smtpd", "command_timeout", CONFIG_K_DURATION, smtpd.command_timeout_ms, 1, CONFIG_DAY),
    CK("smtpd", "data_timeout", CONFIG_K_DURATION, smtpd.data_timeout_ms, 1, CONFIG_DAY),
    CK("smtpd", "min_data_rate", CONFIG_K_SIZE, smtpd.min_data_rate, 0, 1024 * CONFIG_MIB),
    CK("smtpd", "stress_timeout", CONFIG_K_DURATION, smtpd.stress_timeout_ms, 1, CONFIG_DAY),
    CK("smtpd", "max_sessions", CONFIG_K_COUNT, max_sessions, 1, 1000000),
    CK("smtpd", "greet_delay", CONFIG_K_DURATION, greet_delay_ms, 0, 5 * CONFIG_MIN),
    CK("smtpd", "proxy_protocol", CONFIG_K_BOOL, proxy_protocol, 0, 0),
    CK("smtpd", "proxy_networks", CONFIG_K_NETWORKS, proxy_networks, 0, 0),
    CK("smtpd", "proxy_timeout", CONFIG_K_DURATION, proxy_timeout_ms, 1, 5 * CONFIG_MIN),
    CK("smtpd", "client_connection_limit", CONFIG_K_COUNT, client_connection_limit, 0, 1000000),
    CK("smtpd", "client_connection_rate", CONFIG_K_COUNT, client_connection_rate, 0, 1000000),
    CK("smtpd", "client_auth_rate", CONFIG_K_COUNT, client_auth_rate, 0, 1000000),
    CK("smtpd", "limit_exempt_networks", CONFIG_K_NETWORKS, limit_exempt_networks, 0, 0),
    CK("smtpd", "postmaster", CONFIG_K_STRING_OPT, smtpd.postmaster, 0, 0),
    CK("smtpd", "listen_backlog", CONFIG_K_COUNT, smtpd.listen_backlog, 1, 65535),
    CK("smtpd", "tls_cert_file", CONFIG_K_STRING_OPT, tls_cert_file, 0, 0),
    CK("smtpd", "tls_key_file", CONFIG_K_STRING_OPT, tls_key_file, 0, 0),
    CK("smtpd", "auth_file", CONFIG_K_STRING_OPT, auth_file, 0, 0),
    CK("smtpd", "auth_max_failures", CONFIG_K_COUNT, smtpd.auth_max_failures, 1, 1000),
    CK("smtpd", "relay_recipients", CONFIG_K_STRING_OPT, relay_recipients, 0, 0),

    CK("delivery", "relayhost", CONFIG_K_HOSTPORT_OPT, relayhost, 0, 0),
    CK("delivery", "connect_timeout", CONFIG_K_DURATION, smtpc.connect_timeout_ms, 1, CONFIG_DAY),
    CK("delivery", "command_timeout", CONFIG_K_DURATION, smtpc.command_timeout_ms, 1, CONFIG_DAY),
    CK("delivery",
       "data_done_timeout",
       CONFIG_K_DURATION,
       smtpc.data_done_timeout_ms,
       1,
       CONFIG_DAY),
    CK("delivery", "idle_timeout", CONFIG_K_DURATION, smtpc.idle_timeout_ms, 1, CONFIG_DAY),
    CK("delivery", "max_per_destination", CONFIG_K_COUNT, smtpc.max_conns_per_dest, 1, 10000),
    CK("delivery", "max_msgs_per_conn", CONFIG_K_COUNT, smtpc.max_msgs_per_conn, 1, 1000000),
    CK("delivery", "retry_min", CONFIG_K_DURATION, retry_min_ms, 1, 365 * CONFIG_DAY),
    CK("delivery", "retry_max", CONFIG_K_DURATION, retry_max_ms, 1, 365 * CONFIG_DAY),
    CK("delivery", "queue_lifetime", CONFIG_K_DURATION, queue_lifetime_ms, 1, 365 * CONFIG_DAY),
    CK("delivery", "delay_warning_time", CONFIG_K_DURATION, delay_warning_ms, 0, 365 * CONFIG_DAY),
    CK("delivery", "lease_time", CONFIG_K_DURATION, lease_time_ms, 1, CONFIG_DAY),
    CK("delivery", "delivery_slots", CONFIG_K_COUNT, delivery_slots, 0, 100000),
    CK("delivery", "rate_per_destination", CONFIG_K_COUNT, rate_per_destination, 0, 6000000),
    CK("delivery", "scan_interval", CONFIG_K_DURATION, scan_interval_ms, 1, CONFIG_HOUR),
    CK("delivery", "tls_policy", CONFIG_K_TLS_POLICY, tls_policy, 0, 0),
    CK("delivery", "tls_ca_file", CONFIG_K_STRING_OPT, smtpc.tls_ca_file, 0, 0),
    CK("delivery", "auth_file", CONFIG_K_STRING_OPT, delivery_auth_file, 0, 0),
    CK("delivery", "auth_plaintext", CONFIG_K_BOOL, smtpc.auth_plaintext, 0, 0),
    CK("delivery", "port", CONFIG_K_COUNT, delivery_port, 1, 65535),
    CK("delivery", "address_limit", CONFIG_K_COUNT, smtpc.address_limit, 1, 100),
    CK("delivery", "session_limit", CONFIG_K_COUNT, smtpc.session_limit, 1, 100),
    CKW("delivery", "inet_protocols", mx.inet_protocols, config_inet_words),
    CKW("delivery", "address_preference", mx.address_preference, config_pref_words),
    CK("delivery", "self_addresses", CONFIG_K_ADDRS, mx.self_addrs, 0, 0),

    CK("mta_sts", "enabled", CONFIG_K_BOOL, sts_enabled, 0, 0),
    CK("mta_sts", "https_port", CONFIG_K_COUNT, sts_https_port, 1, 65535),
    CK("mta_sts", "timeout", CONFIG_K_DURATION, sts.timeout_ms, 100, 5 * CONFIG_MIN),
    CK("mta_sts", "ca_file", CONFIG_K_STRING_OPT, sts.ca_file, 0, 0),
    CK("mta_sts", "refresh", CONFIG_K_DURATION, sts_refresh_ms, CONFIG_SEC, 365 * CONFIG_DAY),

    CK("dns", "servers", CONFIG_K_DNS_SERVERS, dns.servers, 0, 0),
    CK("dns", "timeout", CONFIG_K_DURATION, dns.timeout_ms, 10, 5 * CONFIG_MIN),
    CK("dns", "tries", CONFIG_K_COUNT, dns.tries, 1, 10),
    CK("dns", "cache_size", CONFIG_K_COUNT, dns.cache_size, 0, 10000000),
    CK("dns", "trust_ad", CONFIG_K_BOOL, dns.trust_ad, 0, 0),

    CK("storage", "min_free", CONFIG_K_SIZE, min_free_bytes, 0, UINT64_MAX),
    CK("storage", "queue_max_messages", CONFIG_K_COUNT, queue_max_messages, 0, UINT64_MAX),
    CK("storage", "queue_max_bytes", CONFIG_K_SIZE, queue_max_bytes, 0, UINT64_MAX),
    CK("storage",
       "body_segment_size",
       CONFIG_K_SIZE,
       body_segment_bytes,
       64 * 1024,
       1024 * CONFIG_MIB),

    /* [dkim] key lines are handled by config_set_dkim_key. */
    CK("dkim", "sign", CONFIG_K_BOOL, dkim_sign, 0, 0),
    CK("dkim", "oversign_from", CONFIG_K_BOOL, dkim_oversign_from, 0, 0),

    CK("cluster_tls", "ca_file", CONFIG_K_STRING_OPT, cluster_ca_file, 0, 0),
    CK("cluster_tls", "cert_file", CONFIG_K_STRING_OPT, cluster_cert_file, 0, 0),
    CK("cluster_tls", "key_file", CONFIG_K_STRING_OPT, cluster_key_file, 0, 0),
    CK("cluster_tls", "plaintext", CONFIG_K_BOOL, cluster_plaintext, 0, 0),
};

#define CONFIG_N_KEYS HAMR_ARRAY_LEN(config_keys)

static const char *const config_sections[] = {"node",        "listen",    "cluster", "smtpd",
                                              "delivery",    "transport", "storage", "tls_policy",
                                              "cluster_tls", "dns",       "mta_sts", "dkim"};

/* config_parse - state of one config_load, shared by the reader and the handler. */
struct config_parse {
    struct hamr_config *cfg;
    const char *path;
    FILE *f;
    char *line; /* getline buffer */
    size_t line_cap;
    int lineno;                  /* line most recently handed to inih */
    bool indented;               /* that line starts with blank space */
    int key_line[CONFIG_N_KEYS]; /* where each key was set; 0 = default */
    int transport_line[CONFIG_MAX_TRANSPORTS];
    int tls_policy_line[CONFIG_MAX_TRANSPORTS];
    int dkim_line[DKIM_KEYS_MAX];
    int error_line; /* first error; 0 = none (errors on line 0 use has_error) */
    bool has_error;
    char *err;
    size_t errlen;
};

/* config_fail - record the first error as "FILE:LINE: reason". */
__attribute__((format(printf, 3, 4))) static int config_fail(struct config_parse *p,
                                                             int line,
                                                             const char *fmt,
                                                             ...)
{
    if (p->has_error)
        return 0;
    p->has_error = true;
    p->error_line = line;
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (p->errlen > 0)
        snprintf(p->err, p->errlen, "%s:%d: %s", p->path, line, reason);
    return 0;
}

/* config_quote - a value made printable and short, for error messages. */
static const char *config_quote(char *out, size_t outlen, const char *v)
{
    return log_printable(out, outlen, v, strlen(v));
}

/* ------------------------------------------------------------------------ */
/* Value parsers.                                                           */
/* ------------------------------------------------------------------------ */

/* config_parse_digits - leading decimal digits of *s into *v; advances *s. */
static int config_parse_digits(const char **s, uint64_t *v)
{
    const char *q = *s;
    uint64_t n = 0;
    if (*q < '0' || *q > '9')
        return HAMR_EINVAL;
    for (; *q >= '0' && *q <= '9'; q++) {
        unsigned d = (unsigned)(*q - '0');
        if (n > (UINT64_MAX - d) / 10)
            return HAMR_EINVAL;
        n = n * 10 + d;
    }
    *s = q;
    *v = n;
    return 0;
}

/* config_parse_number - a whole string of decimal digits. */
static int config_parse_number(const char *s, uint64_t *v)
{
    if (config_parse_digits(&s, v) != 0 || *s != '\0')
        return HAMR_EINVAL;
    return 0;
}

/* config_parse_duration - "250ms", "30s", "5m", "2h", "5d"; bare = seconds. */
int config_parse_duration(const char *s, uint64_t *ms)
{
    static const struct {
        const char *suffix;
        uint64_t mult;
    } units[] = {{"", CONFIG_SEC},  {"ms", 1},          {"s", CONFIG_SEC},
                 {"m", CONFIG_MIN}, {"h", CONFIG_HOUR}, {"d", CONFIG_DAY}};
    uint64_t n;
    if (config_parse_digits(&s, &n) != 0)
        return HAMR_EINVAL;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(units); i++) {
        if (strcmp(s, units[i].suffix) != 0)
            continue;
        if (n > UINT64_MAX / units[i].mult)
            return HAMR_EINVAL;
        *ms = n * units[i].mult;
        return 0;
    }
    return HAMR_EINVAL;
}

/* config_parse_size - "100", "64K", "10M", "1G" (1024-based; k/m/g too). */
int config_parse_size(const char *s, uint64_t *bytes)
{
    uint64_t n, mult;
    if (config_parse_digits(&s, &n) != 0)
        return HAMR_EINVAL;
    switch (*s) {
        case '\0':
            mult = 1;
            break;
        case 'K':
        case 'k':
            mult = 1024;
            break;
        case 'M':
        case 'm':
            mult = CONFIG_MIB;
            break;
        case 'G':
        case 'g':
            mult = 1024 * CONFIG_MIB;
            break;
        default:
            return HAMR_EINVAL;
    }
    if (*s != '\0' && s[1] != '\0')
        return HAMR_EINVAL;
    if (n > UINT64_MAX / mult)
        return HAMR_EINVAL;
    *bytes = n * mult;
    return 0;
}

/* config_valid_hostname - letters, digits, '-', '.' and '_' in dot-separated labels. */
static bool config_valid_hostname(const char *h)
{
    return smtp_addr_domain_ok(h, strlen(h), SMTP_ADDR_DOM_HOST);
}

/*
 * config_parse_hostport - "127.0.0.1:2525", "[::1]:25", "[mx.example.com]:25",
 * "mx.example.com:25". The port (1..65535) is required; brackets are removed.
 */
int config_parse_hostport(const char *s, struct config_hostport *hp)
{
    char host[CONFIG_HOST_MAX];
    const char *colon;
    size_t hlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return HAMR_EINVAL;
        hlen = (size_t)(close - s - 1);
        if (hlen == 0 || hlen >= sizeof(host))
            return HAMR_EINVAL;
        memcpy(host, s + 1, hlen);
        host[hlen] = '\0';
        colon = close + 1;
        unsigned char a6[16];
        if (strchr(host, ':') != NULL) {
            if (inet_pton(AF_INET6, host, a6) != 1)
                return HAMR_EINVAL;
        } else if (!config_valid_hostname(host)) {
            return HAMR_EINVAL;
        }
    } else {
        colon = strchr(s, ':');
        if (colon == NULL || strchr(colon + 1, ':') != NULL)
            return HAMR_EINVAL; /* no port, or an IPv6 literal without brackets */
        hlen = (size_t)(colon - s);
        if (hlen == 0 || hlen >= sizeof(host))
            return HAMR_EINVAL;
        memcpy(host, s, hlen);
        host[hlen] = '\0';
        if (!config_valid_hostname(host))
            return HAMR_EINVAL;
    }
    uint64_t port;
    if (config_parse_number(colon + 1, &port) != 0 || port < 1 || port > 65535)
        return HAMR_EINVAL;
    hamr_strlcpy(hp->host, host, sizeof(hp->host));
    hp->port = (uint16_t)port;
    struct in_addr a4;
    hp->mx = s[0] != '[' && inet_pton(AF_INET, host, &a4) != 1;
    return 0;
}

/* config_parse_ip - an IPv4 or IPv6 literal (no brackets, no port). */
static int config_parse_ip(const char *s, struct dns_addr *a)
{
    memset(a, 0, sizeof(*a));
    if (inet_pton(AF_INET, s, a->addr) == 1) {
        a->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, a->addr) == 1) {
        a->family = AF_INET6;
        return 0;
    }
    return HAMR_EINVAL;
}

/*
 * config_dns_server - one [dns] servers item ("IP", "IP:PORT", "IPV6" or
 * "[IPV6]:PORT") as c-ares's server list writes it ("IP:PORT", "[IPV6]:PORT").
 */
static int config_dns_server(const char *item, char *out, size_t outlen)
{
    struct dns_addr a;
    struct config_hostport hp;
    int n;
    if (config_parse_ip(item, &a) == 0)
        n = snprintf(out, outlen, a.family == AF_INET6 ? "[%s]:53" : "%s:53", item);
    else if (config_parse_hostport(item, &hp) == 0 && config_parse_ip(hp.host, &a) == 0)
        n = snprintf(out, outlen, a.family == AF_INET6 ? "[%s]:%u" : "%s:%u", hp.host,
                     (unsigned)hp.port);
    else
        return HAMR_EINVAL;
    return n > 0 && (size_t)n < outlen ? 0 : HAMR_EINVAL;
}

/*
 * config_parse_cidr - "10.0.0.0/8", "::1/128"; a bare address is /32 or
 * /128. Host bits beyond the prefix are cleared.
 */
int config_parse_cidr(const char *s, struct smtpd_cidr *c)
{
    char addr[INET6_ADDRSTRLEN];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= sizeof(addr))
        return HAMR_EINVAL;
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    struct smtpd_cidr out;
    memset(&out, 0, sizeof(out));
    unsigned max;
    if (inet_pton(AF_INET, addr, out.addr) == 1) {
        out.family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, addr, out.addr) == 1) {
        out.family = AF_INET6;
        max = 128;
    } else {
        return HAMR_EINVAL;
    }
    uint64_t prefix = max;
    if (slash != NULL && (config_parse_number(slash + 1, &prefix) != 0 || prefix > max))
        return HAMR_EINVAL;
    out.prefix = (unsigned)prefix;
    for (unsigned bit = out.prefix; bit < max; bit++)
        out.addr[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
    *c = out;
    return 0;
}

/* config_ip_address - an IP literal and port as nodes publish it; see config.h. */
int config_ip_address(const char *host, uint16_t port, char *out, size_t outlen)
{
    unsigned char a[16];
    char norm[INET6_ADDRSTRLEN];
    int n;
    if (inet_pton(AF_INET, host, a) == 1) {
        inet_ntop(AF_INET, a, norm, sizeof(norm));
        n = snprintf(out, outlen, "%s:%u", norm, (unsigned)port);
    } else if (inet_pton(AF_INET6, host, a) == 1) {
        inet_ntop(AF_INET6, a, norm, sizeof(norm));
        n = snprintf(out, outlen, "[%s]:%u", norm, (unsigned)port);
    } else {
        return HAMR_EINVAL;
    }
    return n > 0 && (size_t)n < outlen ? 0 : HAMR_EINVAL;
}

/* config_parse_voter - "ID@a.b.c.d:port" or "ID@[v6]:port", the address normalised. */
static int config_parse_voter(const char *s, struct consensus_member *m)
{
    const char *at = strchr(s, '@');
    if (at == NULL || at == s || (size_t)(at - s) > 20)
        return HAMR_EINVAL;
    char idtext[24];
    memcpy(idtext, s, (size_t)(at - s));
    idtext[at - s] = '\0';
    uint64_t id;
    if (config_parse_number(idtext, &id) != 0 || id == 0)
        return HAMR_EINVAL;
    struct config_hostport hp;
    if (config_parse_hostport(at + 1, &hp) != 0 ||
        config_ip_address(hp.host, hp.port, m->address, sizeof(m->address)) != 0)
        return HAMR_EINVAL;
    m->id = id;
    return 0;
}

/* config_valid_domain - "example.com" or ".example.com" (a suffix). */
static bool config_valid_domain(const char *d)
{
    return smtp_addr_domain_ok(d, strlen(d), SMTP_ADDR_DOM_CONFIG);
}

/* ------------------------------------------------------------------------ */
/* Defaults.                                                                */
/* ------------------------------------------------------------------------ */

/* config_link_policy - point cfg->smtpd at cfg's own arrays; copy names in. */
static void config_link_policy(struct hamr_config *cfg)
{
    hamr_strlcpy(cfg->smtpd.hostname, cfg->hostname, sizeof(cfg->smtpd.hostname));
    hamr_strlcpy(cfg->smtpc.helo_name, cfg->hostname, sizeof(cfg->smtpc.helo_name));
    cfg->smtpd.relay_networks = cfg->relay_networks;
    cfg->smtpd.n_relay_networks = cfg->n_relay_networks;
    cfg->smtpd.relay_domains = cfg->relay_domains;
    cfg->smtpd.n_relay_domains = cfg->n_relay_domains;
    cfg->mx.address_limit = cfg->smtpc.address_limit;
    cfg->sts.https_port = (uint16_t)cfg->sts_https_port;
}

/* config_defaults - fill every default. */
void config_defaults(struct hamr_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    if (gethostname(cfg->hostname, sizeof(cfg->hostname) - 1) != 0 || cfg->hostname[0] == '\0')
        hamr_strlcpy(cfg->hostname, "localhost", sizeof(cfg->hostname));
    cfg->log_level = LOG_LEVEL_INFO;

    hamr_strlcpy(cfg->listen_smtp.host, "127.0.0.1", sizeof(cfg->listen_smtp.host));
    cfg->listen_smtp.port = 2525;
    hamr_strlcpy(cfg->listen_control.host, "127.0.0.1", sizeof(cfg->listen_control.host));
    cfg->listen_control.port = 7100;
    hamr_strlcpy(cfg->listen_control_socket, "control.sock", sizeof(cfg->listen_control_socket));

    cfg->election_timeout_ms = 1000;
    cfg->heartbeat_ms = 100;
    cfg->snapshot_bytes = 256 * CONFIG_MIB;
    cfg->proposal_timeout_ms = 30 * CONFIG_SEC;

    config_parse_cidr("127.0.0.0/8", &cfg->relay_networks[0]);
    config_parse_cidr("::1/128", &cfg->relay_networks[1]);
    cfg->n_relay_networks = 2;
    cfg->smtpd.message_size_limit = 10 * CONFIG_MIB;
    cfg->smtpd.recipient_limit = 1000;
    cfg->smtpd.header_size_limit = 100 * 1024;
    cfg->smtpd.hopcount_limit = 50;
    cfg->smtpd.max_errors = 20;
    cfg->smtpd.junk_command_limit = 100;
    cfg->smtpd.command_timeout_ms = 5 * CONFIG_MIN;
    cfg->smtpd.data_timeout_ms = 5 * CONFIG_MIN;
    cfg->smtpd.min_data_rate = 500;
    cfg->smtpd.stress_timeout_ms = 10 * CONFIG_SEC;
    cfg->smtpd.auth_max_failures = 3;
    cfg->smtpd.listen_backlog = SMTPD_LISTEN_BACKLOG;
    cfg->max_sessions = 500;
    cfg->proxy_timeout_ms = 5 * CONFIG_SEC;
    cfg->client_connection_limit = 50;
    cfg->client_auth_rate = 30;

    cfg->smtpc.connect_timeout_ms = 30 * CONFIG_SEC;
    cfg->smtpc.command_timeout_ms = 5 * CONFIG_MIN;
    cfg->smtpc.data_done_timeout_ms = 10 * CONFIG_MIN;
    cfg->smtpc.idle_timeout_ms = 10 * CONFIG_SEC;
    cfg->smtpc.max_conns_per_dest = 10;
    cfg->smtpc.max_msgs_per_conn = 100;
    cfg->retry_min_ms = 5 * CONFIG_MIN;
    cfg->retry_max_ms = 4000 * CONFIG_SEC;
    cfg->queue_lifetime_ms = 5 * CONFIG_DAY;
    cfg->lease_time_ms = 30 * CONFIG_SEC;
    cfg->delivery_slots = 256;
    cfg->max_clock_skew_ms = 5 * CONFIG_SEC;
    cfg->scan_interval_ms = 1 * CONFIG_SEC;
    cfg->delivery_port = 25;
    cfg->smtpc.address_limit = 5;
    cfg->smtpc.session_limit = 2;
    cfg->mx.address_limit = 5;
    cfg->mx.inet_protocols = MX_INET_ALL;
    cfg->mx.address_preference = MX_PREF_ANY;
    dns_config_default(&cfg->dns);
    cfg->sts_enabled = true;
    cfg->dkim_sign = true;
    cfg->dkim_oversign_from = true;
    cfg->sts_https_port = 443;
    cfg->sts.timeout_ms = 30 * CONFIG_SEC;
    cfg->sts_refresh_ms = CONFIG_HOUR;

    cfg->min_free_bytes = 256 * CONFIG_MIB;
    cfg->queue_max_messages = 1000000;
    cfg->queue_max_bytes = 0;
    cfg->body_segment_bytes = 64 * CONFIG_MIB;
    config_link_policy(cfg);
}

/* config_free - release what config_load allocated (relay_domains). */
void config_free(struct hamr_config *cfg)
{
    for (size_t i = 0; i < cfg->n_relay_domains; i++) {
        free(cfg->relay_domains[i]);
        cfg->relay_domains[i] = NULL;
    }
    cfg->n_relay_domains = 0;
    cfg->smtpd.n_relay_domains = 0;
    free(cfg->dkim_keys);
    cfg->dkim_keys = NULL;
    cfg->n_dkim_keys = 0;
}

/* ------------------------------------------------------------------------ */
/* The inih handler.                                                        */
/* ------------------------------------------------------------------------ */

/* config_store_uint - write v into a 4- or 8-byte unsigned field. */
static void config_store_uint(void *field, size_t width, uint64_t v)
{
    if (width == sizeof(uint32_t)) {
        uint32_t x = (uint32_t)v;
        memcpy(field, &x, sizeof(x));
    } else {
        HAMR_ASSERT(width == sizeof(uint64_t));
        memcpy(field, &v, sizeof(v));
    }
}

/* config_next_item - next comma- or space-separated item of a list; NULL at the end. */
static char *config_next_item(char **cursor)
{
    char *s = *cursor;
    while (*s == ',' || *s == ' ' || *s == '\t')
        s++;
    if (*s == '\0')
        return NULL;
    char *start = s;
    while (*s != '\0' && *s != ',' && *s != ' ' && *s != '\t')
        s++;
    if (*s != '\0')
        *s++ = '\0';
    *cursor = s;
    return start;
}

/* config_networks_count - the count of the network list a CONFIG_K_NETWORKS key fills. */
static size_t *config_networks_count(struct hamr_config *cfg, const struct config_key *k)
{
    if (k->offset == offsetof(struct hamr_config, proxy_networks))
        return &cfg->n_proxy_networks;
    if (k->offset == offsetof(struct hamr_config, limit_exempt_networks))
        return &cfg->n_limit_exempt_networks;
    HAMR_ASSERT(k->offset == offsetof(struct hamr_config, relay_networks));
    return &cfg->n_relay_networks;
}

/* config_set_list - append the items of one list line; the first line replaces the default. */
static int config_set_list(struct config_parse *p,
                           const struct config_key *k,
                           bool first,
                           const char *value)
{
    struct hamr_config *cfg = p->cfg;
    char copy[256];
    char q[128];
    if (hamr_strlcpy(copy, value, sizeof(copy)) >= sizeof(copy))
        return config_fail(p, p->lineno, "%s: line too long", k->name);
    if (first) {
        if (k->kind == CONFIG_K_VOTERS)
            cfg->n_voters = 0;
        else if (k->kind == CONFIG_K_NETWORKS)
            *config_networks_count(cfg, k) = 0;
        else if (k->kind == CONFIG_K_ADDRS)
            cfg->mx.n_self_addrs = 0;
        else if (k->kind == CONFIG_K_DNS_SERVERS)
            cfg->dns.servers[0] = '\0';
    }
    char *cursor = copy, *item;
    while ((item = config_next_item(&cursor)) != NULL) {
        config_quote(q, sizeof(q), item);
        switch (k->kind) {
            case CONFIG_K_VOTERS: {
                struct consensus_member m;
                if (config_parse_voter(item, &m) != 0)
                    return config_fail(
                        p, p->lineno, "%s: not ID@IPV4:PORT or ID@[IPV6]:PORT: \"%s\"", k->name, q);
                if (cfg->n_voters >= CONSENSUS_MAX_MEMBERS)
                    return config_fail(p, p->lineno, "%s: more than %d voters", k->name,
                                       CONSENSUS_MAX_MEMBERS);
                for (size_t i = 0; i < cfg->n_voters; i++) {
                    if (cfg->voters[i].id == m.id)
                        return config_fail(p, p->lineno, "%s: id %llu given twice", k->name,
                                           (unsigned long long)m.id);
                    if (strcmp(cfg->voters[i].address, m.address) == 0)
                        return config_fail(p, p->lineno, "%s: address %s given twice", k->name,
                                           m.address);
                }
                cfg->voters[cfg->n_voters++] = m;
                break;
            }
            case CONFIG_K_NETWORKS: {
                struct smtpd_cidr c, *nets = (struct smtpd_cidr *)(void *)((char *)cfg + k->offset);
                size_t *n = config_networks_count(cfg, k), cap = k->width / sizeof(c);
                if (config_parse_cidr(item, &c) != 0)
                    return config_fail(p, p->lineno, "%s: not a network: \"%s\"", k->name, q);
                if (*n >= cap)
                    return config_fail(p, p->lineno, "%s: more than %zu networks", k->name, cap);
                nets[(*n)++] = c;
                break;
            }
            case CONFIG_K_DOMAINS: {
                if (!config_valid_domain(item))
                    return config_fail(p, p->lineno, "%s: not a domain: \"%s\"", k->name, q);
                if (cfg->n_relay_domains >= HAMR_ARRAY_LEN(cfg->relay_domains))
                    return config_fail(p, p->lineno, "%s: more than %zu domains", k->name,
                                       HAMR_ARRAY_LEN(cfg->relay_domains));
                char *d = strdup(item);
                if (d == NULL)
                    return config_fail(p, p->lineno, "%s: out of memory", k->name);
                smtp_addr_lower(d, strlen(d));
                cfg->relay_domains[cfg->n_relay_domains++] = d;
                break;
            }
            case CONFIG_K_ADDRS: {
                struct dns_addr a;
                if (config_parse_ip(item, &a) != 0)
                    return config_fail(p, p->lineno, "%s: not an IP address: \"%s\"", k->name, q);
                if (cfg->mx.n_self_addrs >= HAMR_ARRAY_LEN(cfg->mx.self_addrs))
                    return config_fail(p, p->lineno, "%s: more than %zu addresses", k->name,
                                       HAMR_ARRAY_LEN(cfg->mx.self_addrs));
                cfg->mx.self_addrs[cfg->mx.n_self_addrs++] = a;
                break;
            }
            case CONFIG_K_DNS_SERVERS: {
                char norm[64];
                if (config_dns_server(item, norm, sizeof(norm)) != 0)
                    return config_fail(p, p->lineno, "%s: not IP, IP:PORT or [IPV6]:PORT: \"%s\"",
                                       k->name, q);
                char *servers = cfg->dns.servers;
                size_t used = strlen(servers);
                int n = snprintf(servers + used, sizeof(cfg->dns.servers) - used, "%s%s",
                                 used > 0 ? "," : "", norm);
                if (n < 0 || (size_t)n >= sizeof(cfg->dns.servers) - used)
                    return config_fail(p, p->lineno, "%s: too many servers", k->name);
                break;
            }
            default:
                HAMR_ASSERT(!"not a list kind");
        }
    }
    return 1;
}

/* config_parse_bool - yes/true/on/1 or no/false/off/0; HAMR_EINVAL otherwise. */
static int config_parse_bool(const char *value, bool *b)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(yes); i++) {
        if (strcmp(value, yes[i]) == 0) {
            *b = true;
            return 0;
        }
        if (strcmp(value, no[i]) == 0) {
            *b = false;
            return 0;
        }
    }
    return HAMR_EINVAL;
}

/* config_set_value - parse and store one scalar value. Returns 1, or 0 after config_fail. */
static int config_set_value(struct config_parse *p, const struct config_key *k, const char *value)
{
    char *field = (char *)p->cfg + k->offset;
    char q[128];
    uint64_t v = 0;
    config_quote(q, sizeof(q), value);
    switch (k->kind) {
        case CONFIG_K_ID:
            if (config_parse_number(value, &v) != 0 || v < k->min)
                return config_fail(p, p->lineno, "%s: not a positive number: \"%s\"", k->name, q);
            config_store_uint(field, k->width, v);
            return 1;
        case CONFIG_K_STRING:
        case CONFIG_K_STRING_OPT:
            if (k->kind == CONFIG_K_STRING && value[0] == '\0')
                return config_fail(p, p->lineno, "%s: empty value", k->name);
            if (strlen(value) >= k->width)
                return config_fail(p, p->lineno, "%s: longer than %zu characters", k->name,
                                   k->width - 1);
            hamr_strlcpy(field, value, k->width);
            return 1;
        case CONFIG_K_ZONE:
            if (value[0] != '\0' && !zone_name_ok(value))
                return config_fail(p, p->lineno,
                                   "%s: not 1 to %d letters, digits, '.', '_' or '-': \"%s\"",
                                   k->name, ZONE_NAME_MAX - 1, q);
            HAMR_ASSERT(k->width == ZONE_NAME_MAX);
            hamr_strlcpy(field, value, k->width);
            return 1;
        case CONFIG_K_WORD: {
            HAMR_ASSERT(k->width == sizeof(int));
            for (int i = 0; k->words[i] != NULL; i++) {
                if (strcmp(value, k->words[i]) == 0) {
                    memcpy(field, &i, sizeof(i));
                    return 1;
                }
            }
            char words[128] = "";
            for (int i = 0; k->words[i] != NULL; i++) {
                size_t used = strlen(words);
                snprintf(words + used, sizeof(words) - used, "%s%s",
                         i == 0                    ? ""
                         : k->words[i + 1] == NULL ? " or "
                                                   : ", ",
                         k->words[i]);
            }
            return config_fail(p, p->lineno, "%s: not %s: \"%s\"", k->name, words, q);
        }
        case CONFIG_K_TLS_POLICY: {
            enum smtpc_tls_policy pol;
            if (smtpc_tls_policy_parse(value, &pol) != 0)
                return config_fail(p, p->lineno,
                                   "%s: not one of may, encrypt, verify, dane, dane-only: \"%s\"",
                                   k->name, q);
            memcpy(field, &pol, sizeof(pol));
            return 1;
        }
        case CONFIG_K_BOOL: {
            bool b;
            if (config_parse_bool(value, &b) != 0)
                return config_fail(p, p->lineno, "%s: not yes or no: \"%s\"", k->name, q);
            memcpy(field, &b, sizeof(b));
            return 1;
        }
        case CONFIG_K_LOGLEVEL: {
            int level = log_parse_level(value);
            if (level < 0)
                return config_fail(p, p->lineno, "%s: not one of error, warn, info, debug: \"%s\"",
                                   k->name, q);
            memcpy(field, &level, sizeof(level));
            return 1;
        }
        case CONFIG_K_HOSTPORT_OPT:
            if (value[0] == '\0') {
                memset(field, 0, sizeof(struct config_hostport));
                return 1;
            }
            __attribute__((fallthrough));
        case CONFIG_K_HOSTPORT:
            if (config_parse_hostport(value, (struct config_hostport *)(void *)field) != 0)
                return config_fail(p, p->lineno, "%s: not host:port: \"%s\"", k->name, q);
            return 1;
        case CONFIG_K_DURATION:
            if (config_parse_duration(value, &v) != 0)
                return config_fail(p, p->lineno, "%s: not a duration: \"%s\"", k->name, q);
            break;
        case CONFIG_K_SIZE:
            if (config_parse_size(value, &v) != 0)
                return config_fail(p, p->lineno, "%s: not a size: \"%s\"", k->name, q);
            break;
        case CONFIG_K_COUNT:
            if (config_parse_number(value, &v) != 0)
                return config_fail(p, p->lineno, "%s: not a number: \"%s\"", k->name, q);
            break;
        default:
            HAMR_ASSERT(!"list kinds are handled by config_set_list");
    }
    uint64_t max = k->max;
    if (k->width == sizeof(uint32_t) && max > UINT32_MAX)
        max = UINT32_MAX;
    if (v < k->min || v > max)
        return config_fail(p, p->lineno, "%s: out of range: \"%s\"", k->name, q);
    config_store_uint(field, k->width, v);
    return 1;
}

_Static_assert(offsetof(struct config_transport, domain) == 0 &&
                   offsetof(struct config_tls_policy_entry, domain) == 0,
               "config_domain_entry finds each entry's domain at its start");

/*
 * config_domain_entry - the domain of a per-domain line of section: valid,
 * lower-cased into domain (CONFIG_HOST_MAX), not given before among the n
 * entries at entries (stride bytes apart, each starting with its domain;
 * lines[i] their line numbers), and room for one more. 1 or config_fail.
 */
static int config_domain_entry(struct config_parse *p,
                               const char *section,
                               const char *name,
                               char *domain,
                               const void *entries,
                               size_t stride,
                               size_t n,
                               const int *lines)
{
    char q[128];
    if (!config_valid_domain(name))
        return config_fail(p, p->lineno, "%s: not a domain: \"%s\"", section,
                           config_quote(q, sizeof(q), name));
    hamr_strlcpy(domain, name, CONFIG_HOST_MAX);
    smtp_addr_lower(domain, strlen(domain));
    for (size_t i = 0; i < n; i++)
        if (strcmp((const char *)entries + i * stride, domain) == 0)
            return config_fail(p, p->lineno, "%s: given twice (first on line %d)", domain,
                               lines[i]);
    if (n >= CONFIG_MAX_TRANSPORTS)
        return config_fail(p, p->lineno, "%s: more than %d entries", section,
                           CONFIG_MAX_TRANSPORTS);
    return 1;
}

/* config_set_transport - [transport] domain = [host]:port. */
static int config_set_transport(struct config_parse *p, const char *name, const char *value)
{
    struct hamr_config *cfg = p->cfg;
    char q[128];
    struct config_transport t;
    memset(&t, 0, sizeof(t));
    if (config_domain_entry(p, "transport", name, t.domain, cfg->transports,
                            sizeof(cfg->transports[0]), cfg->n_transports, p->transport_line) != 1)
        return 0;
    if (config_parse_hostport(value, &t.next_hop) != 0)
        return config_fail(p, p->lineno, "%s: not host:port: \"%s\"", t.domain,
                           config_quote(q, sizeof(q), value));
    p->transport_line[cfg->n_transports] = p->lineno;
    cfg->transports[cfg->n_transports++] = t;
    return 1;
}

/* config_set_tls_policy - [tls_policy] domain = may|encrypt|verify|dane|dane-only. */
static int config_set_tls_policy(struct config_parse *p, const char *name, const char *value)
{
    struct hamr_config *cfg = p->cfg;
    char q[128];
    struct config_tls_policy_entry e;
    memset(&e, 0, sizeof(e));
    if (config_domain_entry(p, "tls_policy", name, e.domain, cfg->tls_policies,
                            sizeof(cfg->tls_policies[0]), cfg->n_tls_policies,
                            p->tls_policy_line) != 1)
        return 0;
    if (smtpc_tls_policy_parse(value, &e.policy) != 0)
        return config_fail(p, p->lineno,
                           "%s: not one of may, encrypt, verify, dane, dane-only: \"%s\"", e.domain,
                           config_quote(q, sizeof(q), value));
    p->tls_policy_line[cfg->n_tls_policies] = p->lineno;
    cfg->tls_policies[cfg->n_tls_policies++] = e;
    return 1;
}

/*
 * config_dkim_name_ok - a selector (RFC 6376 3.1: sub-domain *("." sub-domain))
 * or a signing domain: labels of letters, digits and '-', shorter than max.
 * Stricter than config_valid_domain (no '_'): net/dkim matches From: domains
 * of these characters only, so anything else would never sign.
 */
static bool config_dkim_name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n >= max || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || (c == '.' && s[i + 1] != '.');
        if (!ok)
            return false;
    }
    return true;
}

/*
 * config_set_dkim_key - [dkim] key = DOMAIN SELECTOR PATH: one key per line,
 * the key given as often as there are keys (a list like relay_domains, but
 * each entry is three words, so one entry per line). The file is read when
 * the node starts (relay.c), as [node] user.
 */
static int config_set_dkim_key(struct config_parse *p, const char *value)
{
    struct hamr_config *cfg = p->cfg;
    char copy[DKIM_PATH_MAX + DKIM_DOMAIN_MAX + DKIM_SELECTOR_MAX], q[128];
    if (hamr_strlcpy(copy, value, sizeof(copy)) >= sizeof(copy))
        return config_fail(p, p->lineno, "key: line too long");
    char *save = NULL;
    char *w[4];
    size_t n = 0;
    for (char *t = strtok_r(copy, " \t", &save); t != NULL && n < 4;
         t = strtok_r(NULL, " \t", &save))
        w[n++] = t;
    if (n != 3)
        return config_fail(p, p->lineno,
                           "key: not DOMAIN SELECTOR PATH: \"%s\" (a path has no blanks)",
                           config_quote(q, sizeof(q), value));
    struct dkim_key_spec s;
    memset(&s, 0, sizeof(s));
    if (!config_valid_domain(w[0]) ||
        !config_dkim_name_ok(w[0] + (w[0][0] == '.'), sizeof(s.domain) - 1))
        return config_fail(p, p->lineno, "key: not a domain: \"%s\"",
                           config_quote(q, sizeof(q), w[0]));
    hamr_strlcpy(s.domain, w[0], sizeof(s.domain));
    smtp_addr_lower(s.domain, strlen(s.domain));
    if (!config_dkim_name_ok(w[1], DKIM_SELECTOR_MAX))
        return config_fail(p, p->lineno, "key: not a selector: \"%s\"",
                           config_quote(q, sizeof(q), w[1]));
    hamr_strlcpy(s.selector, w[1], sizeof(s.selector));
    if (hamr_strlcpy(s.path, w[2], sizeof(s.path)) >= sizeof(s.path))
        return config_fail(p, p->lineno, "key: path too long");
    for (size_t i = 0; i < cfg->n_dkim_keys; i++)
        if (strcmp(cfg->dkim_keys[i].domain, s.domain) == 0)
            return config_fail(p, p->lineno, "key: %s given twice (first on line %d)", s.domain,
                               p->dkim_line[i]);
    if (cfg->n_dkim_keys >= DKIM_KEYS_MAX)
        return config_fail(p, p->lineno, "key: more than %d keys", DKIM_KEYS_MAX);
    struct dkim_key_spec *a = realloc(cfg->dkim_keys, (cfg->n_dkim_keys + 1) * sizeof(*a));
    if (a == NULL)
        return config_fail(p, p->lineno, "key: out of memory");
    cfg->dkim_keys = a;
    p->dkim_line[cfg->n_dkim_keys] = p->lineno;
    cfg->dkim_keys[cfg->n_dkim_keys++] = s;
    return 1;
}

/* config_handler - inih callback for one name = value line. Returns 1, or 0 on error. */
static int config_handler(void *user, const char *section, const char *name, const char *value)
{
    struct config_parse *p = user;
    char q[128];
    if (p->has_error)
        return 0;
    if (section[0] == '\0')
        return config_fail(p, p->lineno, "\"%s\" outside a [section]",
                           config_quote(q, sizeof(q), name));
    if (strcmp(section, "transport") == 0)
        return config_set_transport(p, name, value);
    if (strcmp(section, "tls_policy") == 0)
        return config_set_tls_policy(p, name, value);
    if (strcmp(section, "dkim") == 0 && strcmp(name, "key") == 0)
        return config_set_dkim_key(p, value);
    for (size_t i = 0; i < CONFIG_N_KEYS; i++) {
        const struct config_key *k = &config_keys[i];
        if (strcmp(k->section, section) != 0 || strcmp(k->name, name) != 0)
            continue;
        bool is_list = k->kind == CONFIG_K_VOTERS || k->kind == CONFIG_K_NETWORKS ||
                       k->kind == CONFIG_K_DOMAINS || k->kind == CONFIG_K_ADDRS ||
                       k->kind == CONFIG_K_DNS_SERVERS;
        bool first = p->key_line[i] == 0;
        if (!first && !is_list) {
            if (p->indented)
                return config_fail(p, p->lineno,
                                   "indented line continues \"%s\" (line %d); only lists "
                                   "continue, so do not indent keys",
                                   k->name, p->key_line[i]);
            return config_fail(p, p->lineno, "%s: given twice (first on line %d)", k->name,
                               p->key_line[i]);
        }
        if (first)
            p->key_line[i] = p->lineno;
        return is_list ? config_set_list(p, k, first, value) : config_set_value(p, k, value);
    }
    char qs[128];
    return config_fail(p, p->lineno, "unknown key \"%s\" in [%s]", config_quote(q, sizeof(q), name),
                       log_printable(qs, sizeof(qs), section, strlen(section)));
}

/* config_check_section - a "[name]" header line must name a known section. */
static void config_check_section(struct config_parse *p, const char *line)
{
    const char *s = line;
    /* Skip what inih skips (isspace), so that no header escapes this check. */
    while (*s != '\0' && isspace((unsigned char)*s))
        s++;
    if (*s != '[')
        return;
    const char *end = strchr(s, ']');
    if (end == NULL)
        return; /* inih reports the syntax error */
    size_t n = (size_t)(end - s - 1);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(config_sections); i++)
        if (strlen(config_sections[i]) == n && memcmp(config_sections[i], s + 1, n) == 0)
            return;
    char q[128];
    log_printable(q, sizeof(q), s + 1, n);
    config_fail(p, p->lineno, "unknown section [%s]", q);
}

/*
 * config_reader - ini_reader that hands inih one whole line at a time, so
 * that p->lineno is the line of the pair being handled. A line that does not
 * fit inih's buffer is an error rather than silently split; returning NULL
 * ends the parse.
 */
static char *config_reader(char *str, int num, void *stream)
{
    struct config_parse *p = stream;
    if (p->has_error)
        return NULL;
    ssize_t n = getline(&p->line, &p->line_cap, p->f);
    if (n < 0)
        return NULL;
    p->lineno++;
    if ((size_t)n >= (size_t)num) {
        config_fail(p, p->lineno,
                    "line longer than %d characters (continue a list on an "
                    "indented next line)",
                    num - 2);
        return NULL;
    }
    if (memchr(p->line, '\0', (size_t)n) != NULL) {
        config_fail(p, p->lineno, "NUL byte in line");
        return NULL;
    }
    p->indented = p->line[0] == ' ' || p->line[0] == '\t';
    config_check_section(p, p->line);
    if (p->has_error)
        return NULL;
    memcpy(str, p->line, (size_t)n + 1);
    return str;
}

/* config_key_line - the line where key section.name was set, 0 if defaulted. */
static int config_key_line(const struct config_parse *p, const char *section, const char *name)
{
    for (size_t i = 0; i < CONFIG_N_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].name, name) == 0)
            return p->key_line[i];
    HAMR_ASSERT(!"unknown key");
    return 0;
}

/* config_control_socket - the socket's path, relative ones inside data_dir; see config.h. */
int config_control_socket(const struct hamr_config *cfg, char *out, size_t outlen)
{
    const char *s = cfg->listen_control_socket;
    int n;
    if (s[0] == '\0' || s[0] == '/')
        n = snprintf(out, outlen, "%s", s);
    else
        n = snprintf(out, outlen, "%s/%s", cfg->data_dir, s);
    return n >= 0 && (size_t)n < outlen ? 0 : HAMR_EINVAL;
}

/*
 * config_check_control_socket - the control channel can be reached, and
 * the socket's path fits a sockaddr_un as hamrd binds it (from inside
 * data_dir, so a relative path is short however deep data_dir is).
 */
static int config_check_control_socket(struct config_parse *p)
{
    struct hamr_config *cfg = p->cfg;
    const char *s = cfg->listen_control_socket;
    int line = config_key_line(p, "listen", "control_socket");
    if (s[0] == '\0' && cfg->listen_control.host[0] == '\0')
        return config_fail(p, line ? line : config_key_line(p, "listen", "control"),
                           "control and control_socket are both off: hamrctl could not reach "
                           "this node");
    size_t n = strlen(s) + (s[0] == '/' ? 0 : 2); /* relative: bound as "./PATH" */
    if (s[0] != '\0' && n >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return config_fail(p, line, "control_socket: longer than a Unix socket path may be (%zu)",
                           sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    return 1;
}

/* config_cross_check - checks that involve several keys, after the whole file. */
/* config_check_literal - [listen] name, if set, is an IP literal. 1, or config_fail's code. */
static int config_check_literal(struct config_parse *p,
                                const char *name,
                                const struct config_hostport *hp)
{
    unsigned char a6[16];
    if (hp->host[0] == '\0' || inet_pton(AF_INET, hp->host, a6) == 1 ||
        inet_pton(AF_INET6, hp->host, a6) == 1)
        return 1;
    return config_fail(p, config_key_line(p, "listen", name),
                       "%s: must be an IP address and port: \"%s\"", name, hp->host);
}

/* config_check_cluster - the node's identity, addresses and place among the voters. */
static int config_check_cluster(struct config_parse *p)
{
    struct hamr_config *cfg = p->cfg;
    if (cfg->node_id == 0)
        return config_fail(p, 0, "[node] id is required");
    if (cfg->data_dir[0] == '\0')
        return config_fail(p, 0, "[node] data_dir is required");

    int raft_line = config_key_line(p, "listen", "raft");
    if (cfg->listen_raft.host[0] == '\0')
        return config_fail(p, 0, "[listen] raft is required");
    char self[CONSENSUS_ADDR_MAX];
    if (config_ip_address(cfg->listen_raft.host, cfg->listen_raft.port, self, sizeof(self)) != 0)
        return config_fail(p, raft_line, "raft: must be an IP address and port: \"%s\"",
                           cfg->listen_raft.host);

    if (cfg->join) {
        /* Joins with hamrctl add: it must not bootstrap a cluster of its own. */
        if (cfg->n_voters != 0)
            return config_fail(p, config_key_line(p, "cluster", "voters"),
                               "voters: a node that joins (join = yes) lists no voters");
    } else if (cfg->n_voters == 0) {
        cfg->voters[0].id = cfg->node_id;
        hamr_strlcpy(cfg->voters[0].address, self, sizeof(cfg->voters[0].address));
        cfg->n_voters = 1;
    } else {
        int voters_line = config_key_line(p, "cluster", "voters");
        size_t i;
        for (i = 0; i < cfg->n_voters; i++)
            if (cfg->voters[i].id == cfg->node_id)
                break;
        if (i == cfg->n_voters)
            return config_fail(p, voters_line, "voters: this node (id %llu) is not listed",
                               (unsigned long long)cfg->node_id);
        if (strcmp(cfg->voters[i].address, self) != 0)
            return config_fail(p, voters_line,
                               "voters: this node is listed at %s but [listen] raft is %s",
                               cfg->voters[i].address, self);
    }

    /* Forwarding to the leader needs the peer listener in any real cluster. */
    if (cfg->listen_peer.host[0] == '\0' && (cfg->n_voters > 1 || cfg->join))
        return config_fail(p, 0, "[listen] peer is required in a cluster of more than one node");
    char peer[CONSENSUS_ADDR_MAX];
    if (cfg->listen_peer.host[0] != '\0' &&
        config_ip_address(cfg->listen_peer.host, cfg->listen_peer.port, peer, sizeof(peer)) != 0)
        return config_fail(p, config_key_line(p, "listen", "peer"),
                           "peer: must be an IP address and port: \"%s\"", cfg->listen_peer.host);

    /* The control and metrics listeners bind with uv_tcp_bind, which takes literals only. */
    int rv = config_check_literal(p, "control", &cfg->listen_control);
    if (rv == 1)
        rv = config_check_literal(p, "metrics", &cfg->listen_metrics);
    return rv == 1 ? config_check_control_socket(p) : rv;
}

/* config_check_tunables - settings that only make sense together. */
static int config_check_tunables(struct config_parse *p)
{
    struct hamr_config *cfg = p->cfg;
    if (cfg->heartbeat_ms >= cfg->election_timeout_ms) {
        int line = config_key_line(p, "cluster", "heartbeat");
        if (line == 0)
            line = config_key_line(p, "cluster", "election_timeout");
        return config_fail(p, line, "heartbeat (%ums) must be less than election_timeout (%ums)",
                           cfg->heartbeat_ms, cfg->election_timeout_ms);
    }
    if (cfg->retry_min_ms > cfg->retry_max_ms) {
        int line = config_key_line(p, "delivery", "retry_min");
        if (line == 0)
            line = config_key_line(p, "delivery", "retry_max");
        return config_fail(p, line, "retry_min must not exceed retry_max");
    }
    /* With nobody trusted, every connection would be refused. */
    if (cfg->proxy_protocol && cfg->n_proxy_networks == 0)
        return config_fail(p, config_key_line(p, "smtpd", "proxy_protocol"),
                           "proxy_protocol: on needs proxy_networks (the load balancers)");
    /* STARTTLS needs both; the files themselves are read when the listener starts. */
    if ((cfg->tls_cert_file[0] == '\0') != (cfg->tls_key_file[0] == '\0')) {
        const char *set = cfg->tls_cert_file[0] ? "tls_cert_file" : "tls_key_file";
        return config_fail(p, config_key_line(p, "smtpd", set),
                           "tls_cert_file and tls_key_file must be set together");
    }
    if (cfg->auth_file[0] != '\0' && cfg->tls_cert_file[0] == '\0')
        return config_fail(p, config_key_line(p, "smtpd", "auth_file"),
                           "auth_file needs tls_cert_file and tls_key_file (AUTH only over TLS)");
    if (cfg->smtpd.message_size_limit > CONFIG_MESSAGE_SIZE_MAX)
        return config_fail(p, config_key_line(p, "smtpd", "message_size_limit"),
                           "message_size_limit: at most 64M (a message is one raft entry)");
    if (cfg->smtpd.postmaster[0] != '\0') {
        char path[SMTPD_POSTMASTER_MAX + 3];
        snprintf(path, sizeof(path), "<%s>", cfg->smtpd.postmaster);
        const char *pp = path;
        struct smtp_addr a;
        if (smtp_addr_parse_path(&pp, 0, &a) != 0 || *pp != '\0' || !a.has_domain ||
            strcmp(a.text, cfg->smtpd.postmaster) != 0)
            return config_fail(p, config_key_line(p, "smtpd", "postmaster"),
                               "postmaster: not a mailbox with a domain: \"%s\"",
                               cfg->smtpd.postmaster);
    }
    return 1;
}

/* config_check_cluster_tls - the three files together, or plaintext said out loud. */
static int config_check_cluster_tls(struct config_parse *p)
{
    struct hamr_config *cfg = p->cfg;
    static const char *const keys[] = {"ca_file", "cert_file", "key_file"};
    const char *vals[] = {cfg->cluster_ca_file, cfg->cluster_cert_file, cfg->cluster_key_file};
    int set = 0;
    int first_set = 0;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(keys); i++)
        if (vals[i][0] != '\0') {
            set++;
            if (first_set == 0)
                first_set = config_key_line(p, "cluster_tls", keys[i]);
        }
    if (cfg->cluster_plaintext && set > 0)
        return config_fail(p, config_key_line(p, "cluster_tls", "plaintext"),
                           "plaintext: yes, but ca_file, cert_file or key_file is set too");
    if (set > 0 && set < 3)
        return config_fail(p, first_set, "ca_file, cert_file and key_file must be set together");
    /* The metrics listener is the cluster PKI's: without one it has nothing to verify. */
    if (cfg->cluster_plaintext && cfg->listen_metrics.host[0] != '\0')
        return config_fail(
            p, config_key_line(p, "listen", "metrics"),
            "metrics: serves over mutual TLS with the cluster PKI, but [cluster_tls] "
            "plaintext = yes; set ca_file, cert_file and key_file, or use http");
    /* Between nodes TLS is the default: the clear has to be asked for. */
    if (set == 0 && !cfg->cluster_plaintext)
        return config_fail(p, 0,
                           "[cluster_tls] ca_file, cert_file and key_file are required "
                           "(deploy/make-pki.sh makes them), or plaintext = yes for a lab");
    return 1;
}

static int config_cross_check(struct config_parse *p)
{
    int rv = config_check_cluster(p);
    if (rv == 1)
        rv = config_check_tunables(p);
    return rv == 1 ? config_check_cluster_tls(p) : rv;
}

/*
 * config_load - defaults, then the file, then cross-checks. On error writes
 * "FILE:LINE: reason" into err and returns HAMR_EINVAL or HAMR_EIO; cfg then
 * holds no allocations.
 */
int config_load(struct hamr_config *cfg, const char *path, char *err, size_t errlen)
{
    struct config_parse *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "%s:0: out of memory", path);
        return HAMR_ENOMEM;
    }
    p->cfg = cfg;
    p->path = path;
    p->err = err;
    p->errlen = errlen;
    if (errlen > 0)
        err[0] = '\0';
    config_defaults(cfg);
    if (hamr_strlcpy(cfg->path, path, sizeof(cfg->path)) >= sizeof(cfg->path)) {
        config_fail(p, 0, "path too long");
        free(p);
        return HAMR_EINVAL;
    }
    p->f = fopen(path, "r");
    if (p->f == NULL) {
        config_fail(p, 0, "cannot open: %s", strerror(errno));
        free(p);
        return HAMR_EIO;
    }
    int rc = ini_parse_stream(config_reader, p, config_handler, p);
    bool read_error = ferror(p->f) != 0;
    fclose(p->f);
    free(p->line);
    /* inih's count matches ours because config_reader hands it whole lines. */
    if (rc > 0 && (!p->has_error || rc < p->error_line))
        config_fail(p, rc, "syntax error (expected [section] or key = value)");
    else if (rc < 0)
        config_fail(p, 0, "out of memory");
    if (read_error)
        config_fail(p, p->lineno, "read error");
    if (!p->has_error)
        config_cross_check(p);
    config_link_policy(cfg);
    int ret = 0;
    if (p->has_error) {
        ret = read_error ? HAMR_EIO : HAMR_EINVAL;
        config_free(cfg);
    }
    free(p);
    return ret;
}

/*
 * config_route_mx - the next hop of a domain without a transport or
 * relayhost (RFC 5321 5.1): the domain itself, looked up as MX, or an
 * address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]") as it is; both on
 * [delivery] port.
 */
static int config_route_mx(const struct hamr_config *cfg,
                           const char *dom,
                           size_t n,
                           struct config_hostport *out)
{
    memset(out, 0, sizeof(*out));
    out->port = (uint16_t)cfg->delivery_port;
    if (n >= 2 && dom[0] == '[' && dom[n - 1] == ']') {
        const char *lit = dom + 1;
        size_t len = n - 2;
        if (len > 5 && hamr_strncaseeq(lit, "IPv6:", 5)) {
            lit += 5;
            len -= 5;
        }
        struct dns_addr a;
        if (len >= sizeof(out->host))
            return HAMR_ENOTFOUND;
        memcpy(out->host, lit, len);
        out->host[len] = '\0';
        if (config_parse_ip(out->host, &a) != 0)
            return HAMR_ENOTFOUND;
        return 0;
    }
    if (n == 0 || n >= sizeof(out->host))
        return HAMR_ENOTFOUND;
    memcpy(out->host, dom, n);
    out->host[n] = '\0';
    smtp_addr_lower(out->host, n);
    if (!config_valid_hostname(out->host))
        return HAMR_ENOTFOUND;
    out->mx = true;
    return 0;
}

/* config_route - next hop for rcpt: exact transport, longest ".suffix", relayhost, MX. */
int config_route(const struct hamr_config *cfg, const char *rcpt, struct config_hostport *out)
{
    const char *dom = smtp_addr_domain_of(rcpt);
    size_t n = strlen(dom);
    if (n > 0 && dom[n - 1] == '.')
        n--; /* "example.com." is "example.com" */
    if (n > 0 && n < CONFIG_HOST_MAX) {
        const struct config_transport *best = NULL;
        size_t best_len = 0;
        for (size_t i = 0; i < cfg->n_transports; i++) {
            const struct config_transport *t = &cfg->transports[i];
            /* ".example.com" matches subdomains only, not example.com itself. */
            int m = smtp_addr_domain_match(dom, n, t->domain);
            if (m == SMTP_ADDR_MATCH_EXACT) {
                *out = t->next_hop;
                return 0;
            }
            size_t tl = strlen(t->domain);
            if (m == SMTP_ADDR_MATCH_SUFFIX && tl > best_len) {
                best = t;
                best_len = tl;
            }
        }
        if (best != NULL) {
            *out = best->next_hop;
            return 0;
        }
    }
    if (cfg->relayhost.host[0] != '\0') {
        *out = cfg->relayhost;
        return 0;
    }
    return config_route_mx(cfg, dom, n, out);
}

/* config_tls_policy - [tls_policy]: exact domain, longest ".suffix", else the default. */
/* config_tls_policy_entry - the [tls_policy] entry of a domain: exact, else the longest suffix. */
const struct config_tls_policy_entry *config_tls_policy_entry(const struct hamr_config *cfg,
                                                              const char *rcpt_domain)
{
    const char *dom = smtp_addr_domain_of(rcpt_domain);
    size_t n = strlen(dom);
    if (n > 0 && dom[n - 1] == '.')
        n--; /* "example.com." is "example.com" */
    if (n == 0 || n >= CONFIG_HOST_MAX)
        return NULL;
    const struct config_tls_policy_entry *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < cfg->n_tls_policies; i++) {
        const struct config_tls_policy_entry *e = &cfg->tls_policies[i];
        /* ".example.com" matches subdomains only, not example.com itself. */
        int m = smtp_addr_domain_match(dom, n, e->domain);
        if (m == SMTP_ADDR_MATCH_EXACT)
            return e;
        size_t el = strlen(e->domain);
        if (m == SMTP_ADDR_MATCH_SUFFIX && el > best_len) {
            best = e;
            best_len = el;
        }
    }
    return best;
}

enum smtpc_tls_policy config_tls_policy(const struct hamr_config *cfg, const char *rcpt_domain)
{
    const struct config_tls_policy_entry *e = config_tls_policy_entry(cfg, rcpt_domain);
    return e != NULL ? e->policy : cfg->tls_policy;
}
