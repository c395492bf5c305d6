/*
 * test_config.c - node/config: value parsers, defaults, every key, error
 * messages with their line numbers, voters and cross-checks, routing.
 *
 * Config files are written to a fresh temporary directory per test run.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"

#include "node/config.h"

static char test_dir[64];

/* Minimal valid file; tests append sections to it. */
/* BASE_TLS: the smallest valid file but for the cluster PKI; BASE: that in the clear. */
#define BASE_TLS "[node]\nid = 1\ndata_dir = /var/lib/hamr\n[listen]\nraft = 127.0.0.1:7001\n"
#define BASE                                                                                      \
    "[node]\nid = 1\ndata_dir = /var/lib/hamr\n[cluster_tls]\nplaintext = yes\n[listen]\nraft = " \
    "127.0.0.1:7001\n"

/* test_write - write content to a file in test_dir; returns its path (static buffer). */
static const char *test_write(const char *content)
{
    static char path[128];
    static unsigned n;
    snprintf(path, sizeof(path), "%s/hamr-%u.conf", test_dir, n++);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
    return path;
}

/* test_load - load content; returns config_load's code, err filled. */
static int test_load(struct hamr_config *cfg,
                     const char *content,
                     char *err,
                     size_t errlen,
                     const char **pathp)
{
    const char *path = test_write(content);
    if (pathp != NULL)
        *pathp = path;
    return config_load(cfg, path, err, errlen);
}

/* setup_dir - a temporary directory for the files. */
static int setup_dir(void **state)
{
    hamr_strlcpy(test_dir, "/tmp/hamr-test-config-XXXXXX", sizeof(test_dir));
    assert_non_null(mkdtemp(test_dir));
    return 0;
}

/* teardown_dir - remove it. */
static int teardown_dir(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", test_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------ */

/* test_parse_duration - units, bare seconds, junk and overflow. */
static void test_parse_duration(void **state)
{
    static const struct {
        const char *in;
        int want_rc;
        uint64_t want_ms;
    } cases[] = {
        {"250ms", 0, 250},
        {"30s", 0, 30000},
        {"5m", 0, 300000},
        {"2h", 0, 7200000},
        {"5d", 0, 432000000},
        {"45", 0, 45000},
        {"0", 0, 0},
        {"", HAMR_EINVAL, 0},
        {"s", HAMR_EINVAL, 0},
        {"10x", HAMR_EINVAL, 0},
        {"10 s", HAMR_EINVAL, 0},
        {"-5s", HAMR_EINVAL, 0},
        {"1.5s", HAMR_EINVAL, 0},
        {"5ms2", HAMR_EINVAL, 0},
        {"99999999999999999999", HAMR_EINVAL, 0},
        {"999999999999999999d", HAMR_EINVAL, 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        uint64_t ms = 12345;
        int rc = config_parse_duration(cases[i].in, &ms);
        if (rc != cases[i].want_rc)
            fail_msg("duration \"%s\": rc %d, want %d", cases[i].in, rc, cases[i].want_rc);
        if (rc == 0)
            assert_int_equal(ms, cases[i].want_ms);
    }
}

/* test_parse_size - K/M/G, junk and overflow. */
static void test_parse_size(void **state)
{
    static const struct {
        const char *in;
        int want_rc;
        uint64_t want;
    } cases[] = {
        {"100", 0, 100},
        {"64K", 0, 65536},
        {"64k", 0, 65536},
        {"10M", 0, 10485760},
        {"1G", 0, 1073741824},
        {"0", 0, 0},
        {"10Q", HAMR_EINVAL, 0},
        {"10MB", HAMR_EINVAL, 0},
        {"M", HAMR_EINVAL, 0},
        {"", HAMR_EINVAL, 0},
        {"1 K", HAMR_EINVAL, 0},
        {"-1", HAMR_EINVAL, 0},
        {"18446744073709551615", 0, UINT64_MAX},
        {"18446744073709551616", HAMR_EINVAL, 0},
        {"17179869184G", HAMR_EINVAL, 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        uint64_t v = 7;
        int rc = config_parse_size(cases[i].in, &v);
        if (rc != cases[i].want_rc)
            fail_msg("size \"%s\": rc %d, want %d", cases[i].in, rc, cases[i].want_rc);
        if (rc == 0)
            assert_int_equal(v, cases[i].want);
    }
}

/* test_parse_hostport - IPv4, [IPv6], [name], name; the port is required. */
static void test_parse_hostport(void **state)
{
    static const struct {
        const char *in;
        int want_rc;
        const char *host;
        uint16_t port;
    } cases[] = {
        {"127.0.0.1:2525", 0, "127.0.0.1", 2525},
        {"[::1]:25", 0, "::1", 25},
        {"[mx.example.com]:25", 0, "mx.example.com", 25},
        {"mx.example.com:25", 0, "mx.example.com", 25},
        {"[10.1.2.3]:65535", 0, "10.1.2.3", 65535},
        {"host:1", 0, "host", 1},
        {"127.0.0.1", HAMR_EINVAL, NULL, 0},
        {"127.0.0.1:", HAMR_EINVAL, NULL, 0},
        {"127.0.0.1:0", HAMR_EINVAL, NULL, 0},
        {"127.0.0.1:65536", HAMR_EINVAL, NULL, 0},
        {"127.0.0.1:25x", HAMR_EINVAL, NULL, 0},
        {"::1:25", HAMR_EINVAL, NULL, 0},
        {"[::1]", HAMR_EINVAL, NULL, 0},
        {"[::1]25", HAMR_EINVAL, NULL, 0},
        {"[::zz]:25", HAMR_EINVAL, NULL, 0},
        {"[]:25", HAMR_EINVAL, NULL, 0},
        {":25", HAMR_EINVAL, NULL, 0},
        {"bad host:25", HAMR_EINVAL, NULL, 0},
        {"a..b:25", HAMR_EINVAL, NULL, 0},
        {"", HAMR_EINVAL, NULL, 0},
        /* Host names are looser than RFC 5321 domains: '_', '-' at a label's
         * edge and a final dot pass; a label is at most 63 octets. */
        {"mx_1.example.com:25", 0, "mx_1.example.com", 25},
        {"-mx-.example.com:25", 0, "-mx-.example.com", 25},
        {"[mx.example.com.]:25", 0, "mx.example.com.", 25},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example:25", 0,
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example", 25},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example:25", HAMR_EINVAL,
         NULL, 0},
        {"mx.example.com..:25", HAMR_EINVAL, NULL, 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct config_hostport hp;
        memset(&hp, 0, sizeof(hp));
        int rc = config_parse_hostport(cases[i].in, &hp);
        if (rc != cases[i].want_rc)
            fail_msg("hostport \"%s\": rc %d, want %d", cases[i].in, rc, cases[i].want_rc);
        if (rc == 0) {
            assert_string_equal(hp.host, cases[i].host);
            assert_int_equal(hp.port, cases[i].port);
        }
    }
}

/* test_parse_cidr - prefixes, bare addresses, masking of host bits, ranges. */
static void test_parse_cidr(void **state)
{
    static const struct {
        const char *in;
        int want_rc;
        int family;
        const char *addr; /* after masking */
        unsigned prefix;
    } cases[] = {
        {"10.0.0.0/8", 0, AF_INET, "10.0.0.0", 8},
        {"10.1.2.3/8", 0, AF_INET, "10.0.0.0", 8},
        {"192.168.1.77/26", 0, AF_INET, "192.168.1.64", 26},
        {"192.168.1.77", 0, AF_INET, "192.168.1.77", 32},
        {"0.0.0.0/0", 0, AF_INET, "0.0.0.0", 0},
        {"1.2.3.4/0", 0, AF_INET, "0.0.0.0", 0},
        {"::1/128", 0, AF_INET6, "::1", 128},
        {"::1", 0, AF_INET6, "::1", 128},
        {"2001:db8:ffff::1/32", 0, AF_INET6, "2001:db8::", 32},
        {"2001:db8::ff/121", 0, AF_INET6, "2001:db8::80", 121},
        {"10.0.0.0/33", HAMR_EINVAL, 0, NULL, 0},
        {"::/129", HAMR_EINVAL, 0, NULL, 0},
        {"10.0.0.0/", HAMR_EINVAL, 0, NULL, 0},
        {"10.0.0.0/8x", HAMR_EINVAL, 0, NULL, 0},
        {"10.0.0/8", HAMR_EINVAL, 0, NULL, 0},
        {"example.com", HAMR_EINVAL, 0, NULL, 0},
        {"/8", HAMR_EINVAL, 0, NULL, 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct smtpd_cidr c;
        int rc = config_parse_cidr(cases[i].in, &c);
        if (rc != cases[i].want_rc)
            fail_msg("cidr \"%s\": rc %d, want %d", cases[i].in, rc, cases[i].want_rc);
        if (rc != 0)
            continue;
        char text[INET6_ADDRSTRLEN];
        assert_int_equal(c.family, cases[i].family);
        assert_non_null(inet_ntop(c.family, c.addr, text, sizeof(text)));
        assert_string_equal(text, cases[i].addr);
        assert_int_equal(c.prefix, cases[i].prefix);
    }
}

/* ------------------------------------------------------------------------ */

/* test_defaults - a minimal file leaves every documented default. */
static void test_defaults(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512];
    assert_int_equal(test_load(cfg, BASE, err, sizeof(err), NULL), 0);
    assert_int_equal(cfg->node_id, 1);
    assert_string_equal(cfg->data_dir, "/var/lib/hamr");
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    if (host[0] != '\0')
        assert_string_equal(cfg->hostname, host);
    assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
    assert_string_equal(cfg->user, "");
    assert_string_equal(cfg->zone, "");
    assert_string_equal(cfg->listen_smtp.host, "127.0.0.1");
    assert_int_equal(cfg->listen_smtp.port, 2525);
    assert_string_equal(cfg->listen_control.host, "127.0.0.1");
    assert_int_equal(cfg->listen_control.port, 7100);
    assert_string_equal(cfg->listen_http.host, "");
    assert_string_equal(cfg->listen_metrics.host, "");
    assert_int_equal(cfg->n_voters, 1);
    assert_int_equal(cfg->voters[0].id, 1);
    assert_string_equal(cfg->voters[0].address, "127.0.0.1:7001");
    assert_int_equal(cfg->election_timeout_ms, 1000);
    assert_int_equal(cfg->heartbeat_ms, 100);
    assert_int_equal(cfg->snapshot_bytes, 256u << 20);
    assert_int_equal(cfg->proposal_timeout_ms, 30000);
    assert_int_equal(cfg->n_relay_networks, 2);
    assert_int_equal(cfg->relay_networks[0].family, AF_INET);
    assert_int_equal(cfg->relay_networks[0].prefix, 8);
    assert_int_equal(cfg->relay_networks[1].family, AF_INET6);
    assert_int_equal(cfg->relay_networks[1].prefix, 128);
    assert_int_equal(cfg->n_relay_domains, 0);
    assert_int_equal(cfg->smtpd.message_size_limit, 10u << 20);
    assert_int_equal(cfg->smtpd.recipient_limit, 1000);
    assert_int_equal(cfg->smtpd.header_size_limit, 102400);
    assert_int_equal(cfg->smtpd.hopcount_limit, 50);
    assert_int_equal(cfg->smtpd.max_errors, 20);
    assert_int_equal(cfg->smtpd.command_timeout_ms, 300000);
    assert_int_equal(cfg->smtpd.data_timeout_ms, 300000);
    assert_int_equal(cfg->max_sessions, 500);
    assert_false(cfg->proxy_protocol);
    assert_int_equal(cfg->n_proxy_networks, 0);
    assert_int_equal(cfg->proxy_timeout_ms, 5000);
    assert_int_equal(cfg->client_connection_limit, 50);
    assert_int_equal(cfg->client_connection_rate, 0);
    assert_int_equal(cfg->client_auth_rate, 30);
    assert_int_equal(cfg->smtpd.min_data_rate, 500);
    assert_int_equal(cfg->smtpd.stress_timeout_ms, 10000);
    assert_int_equal(cfg->n_limit_exempt_networks, 0);
    assert_string_equal(cfg->tls_cert_file, "");
    assert_string_equal(cfg->tls_key_file, "");
    assert_string_equal(cfg->auth_file, "");
    assert_int_equal(cfg->smtpd.auth_max_failures, 3);
    assert_null(cfg->smtpd.auth);
    assert_string_equal(cfg->smtpd.hostname, cfg->hostname);
    assert_ptr_equal(cfg->smtpd.relay_networks, cfg->relay_networks);
    assert_int_equal(cfg->smtpd.n_relay_networks, 2);
    assert_string_equal(cfg->relayhost.host, "");
    assert_int_equal(cfg->delivery_port, 25);
    assert_int_equal(cfg->smtpd.listen_backlog, SMTPD_LISTEN_BACKLOG);
    assert_int_equal(cfg->smtpc.address_limit, 5);
    assert_int_equal(cfg->smtpc.session_limit, 2);
    assert_string_equal(cfg->delivery_auth_file, "");
    assert_false(cfg->smtpc.auth_plaintext);
    assert_int_equal(cfg->mx.inet_protocols, MX_INET_ALL);
    assert_int_equal(cfg->mx.address_preference, MX_PREF_ANY);
    assert_int_equal(cfg->mx.n_self_addrs, 0);
    assert_string_equal(cfg->dns.servers, "");
    assert_int_equal(cfg->dns.tries, 2);
    assert_false(cfg->dns.trust_ad);
    assert_string_equal(cfg->smtpc.helo_name, cfg->hostname);
    assert_int_equal(cfg->smtpc.connect_timeout_ms, 30000);
    assert_int_equal(cfg->smtpc.command_timeout_ms, 300000);
    assert_int_equal(cfg->smtpc.data_done_timeout_ms, 600000);
    assert_int_equal(cfg->smtpc.idle_timeout_ms, 10000);
    assert_int_equal(cfg->smtpc.max_conns_per_dest, 10);
    assert_int_equal(cfg->smtpc.max_msgs_per_conn, 100);
    assert_int_equal(cfg->retry_min_ms, 300000);
    assert_int_equal(cfg->retry_max_ms, 4000000);
    assert_int_equal(cfg->queue_lifetime_ms, 5ull * 86400000);
    assert_int_equal(cfg->lease_time_ms, 30000);
    assert_int_equal(cfg->delivery_slots, 256);
    assert_int_equal(cfg->rate_per_destination, 0);
    assert_int_equal(cfg->max_clock_skew_ms, 5000);
    assert_int_equal(cfg->scan_interval_ms, 1000);
    assert_int_equal(cfg->n_transports, 0);
    assert_int_equal(cfg->min_free_bytes, 256ull << 20);
    assert_int_equal(cfg->queue_max_messages, 1000000);
    assert_int_equal(cfg->queue_max_bytes, 0);
    config_free(cfg);
    free(cfg);
}

static const char test_full[] =
    "# every key, none at its default\n"
    "[node]\n"
    "id = 2\n"
    "data_dir = /srv/hamr/2\n"
    "hostname = mx2.example.net\n"
    "log_level = debug\n"
    "user = hamr\n"
    "zone = eu-west.rack_7\n"
    "\n"
    "[listen]\n"
    "smtp = [::1]:25\n"
    "raft = 10.0.0.2:7002\n"
    "control = 127.0.0.1:7102\n"
    "http = 0.0.0.0:8002\n"
    "metrics = 10.0.0.2:8443\n"
    "peer = 10.0.0.2:7202\n"
    "\n"
    "[cluster]\n"
    "voters = 1@10.0.0.1:7001, 2@10.0.0.2:7002 3@10.0.0.3:7003\n"
    "election_timeout = 3s\n"
    "heartbeat = 250ms\n"
    "snapshot_bytes = 16M\n"
    "proposal_timeout = 10s\n"
    "\n"
    "[smtpd]\n"
    "relay_networks = 10.0.0.0/8, 2001:db8::/32\n"
    "relay_domains = Example.com .example.org\n"
    "message_size_limit = 20M\n"
    "recipient_limit = 200\n"
    "header_size_limit = 64K\n"
    "hopcount_limit = 30\n"
    "max_errors = 5\n"
    "postmaster = hostmaster@ops.example.com\n"
    "command_timeout = 2m\n"
    "data_timeout = 3m\n"
    "max_sessions = 50\n"
    "proxy_protocol = on\n"
    "proxy_networks = 10.0.0.10, 2001:db8::/64\n"
    "proxy_timeout = 3s\n"
    "client_connection_limit = 10\n"
    "client_connection_rate = 120\n"
    "client_auth_rate = 12\n"
    "min_data_rate = 2K\n"
    "stress_timeout = 5s\n"
    "limit_exempt_networks = 192.0.2.0/24, 2001:db8:1::/48\n"
    "tls_cert_file = /etc/hamr/cert.pem\n"
    "tls_key_file = /etc/hamr/key.pem\n"
    "auth_file = /etc/hamr/passwd\n"
    "auth_max_failures = 5\n"
    "\n"
    "[delivery]\n"
    "relayhost = [smarthost.example.net]:587\n"
    "connect_timeout = 5s\n"
    "command_timeout = 1m\n"
    "data_done_timeout = 4m\n"
    "idle_timeout = 2s\n"
    "max_per_destination = 3\n"
    "max_msgs_per_conn = 7\n"
    "retry_min = 1m\n"
    "retry_max = 1h\n"
    "queue_lifetime = 2d\n"
    "lease_time = 5m\n"
    "scan_interval = 500ms\n"
    "port = 2525\n"
    "address_limit = 3\n"
    "session_limit = 1\n"
    "auth_file = /etc/hamr/relay_passwd\n"
    "auth_plaintext = yes\n"
    "inet_protocols = ipv6\n"
    "address_preference = ipv4\n"
    "self_addresses = 192.0.2.25, 2001:db8::25\n"
    "\n"
    "[dns]\n"
    "servers = 127.0.0.1:5353, [::1]:53\n"
    "  192.0.2.53\n"
    "timeout = 2s\n"
    "tries = 3\n"
    "cache_size = 500\n"
    "trust_ad = yes\n"
    "\n"
    "[transport]\n"
    "example.com = [mx.example.com]:25\n"
    ".Example.COM = 10.9.9.9:2525 ; inline comment\n"
    "\n"
    "[storage]\n"
    "min_free = 1G\n"
    "queue_max_messages = 5000\n"
    "queue_max_bytes = 2G\n"
    "\n"
    "[cluster_tls]\n"
    "ca_file = /etc/hamr/pki/ca.pem\n"
    "cert_file = /etc/hamr/pki/node-2.pem\n"
    "key_file = /etc/hamr/pki/node-2.key\n";

/* test_every_key - every key set to a value other than its default. */
static void test_every_key(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512];
    int rc = test_load(cfg, test_full, err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg->node_id, 2);
    assert_string_equal(cfg->data_dir, "/srv/hamr/2");
    assert_string_equal(cfg->hostname, "mx2.example.net");
    assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);
    assert_string_equal(cfg->user, "hamr");
    assert_string_equal(cfg->zone, "eu-west.rack_7");
    assert_string_equal(cfg->listen_smtp.host, "::1");
    assert_int_equal(cfg->listen_smtp.port, 25);
    assert_string_equal(cfg->listen_raft.host, "10.0.0.2");
    assert_int_equal(cfg->listen_raft.port, 7002);
    assert_int_equal(cfg->listen_control.port, 7102);
    assert_string_equal(cfg->listen_http.host, "0.0.0.0");
    assert_int_equal(cfg->listen_http.port, 8002);
    assert_string_equal(cfg->listen_metrics.host, "10.0.0.2");
    assert_int_equal(cfg->listen_metrics.port, 8443);
    assert_string_equal(cfg->listen_peer.host, "10.0.0.2");
    assert_int_equal(cfg->listen_peer.port, 7202);
    assert_int_equal(cfg->n_voters, 3);
    assert_int_equal(cfg->voters[2].id, 3);
    assert_string_equal(cfg->voters[2].address, "10.0.0.3:7003");
    assert_int_equal(cfg->election_timeout_ms, 3000);
    assert_int_equal(cfg->heartbeat_ms, 250);
    assert_int_equal(cfg->snapshot_bytes, 16u << 20);
    assert_int_equal(cfg->proposal_timeout_ms, 10000);
    assert_int_equal(cfg->n_relay_networks, 2);
    assert_int_equal(cfg->relay_networks[1].family, AF_INET6);
    assert_int_equal(cfg->relay_networks[1].prefix, 32);
    assert_int_equal(cfg->n_relay_domains, 2);
    assert_string_equal(cfg->relay_domains[0], "example.com");
    assert_string_equal(cfg->relay_domains[1], ".example.org");
    assert_int_equal(cfg->smtpd.n_relay_domains, 2);
    assert_ptr_equal(cfg->smtpd.relay_domains, cfg->relay_domains);
    assert_int_equal(cfg->smtpd.message_size_limit, 20u << 20);
    assert_int_equal(cfg->smtpd.recipient_limit, 200);
    assert_int_equal(cfg->smtpd.header_size_limit, 65536);
    assert_int_equal(cfg->smtpd.hopcount_limit, 30);
    assert_int_equal(cfg->smtpd.max_errors, 5);
    assert_string_equal(cfg->smtpd.postmaster, "hostmaster@ops.example.com");
    assert_int_equal(cfg->smtpd.command_timeout_ms, 120000);
    assert_int_equal(cfg->smtpd.data_timeout_ms, 180000);
    assert_int_equal(cfg->max_sessions, 50);
    assert_true(cfg->proxy_protocol);
    assert_int_equal(cfg->n_proxy_networks, 2);
    assert_int_equal(cfg->proxy_networks[0].family, AF_INET);
    assert_int_equal(cfg->proxy_networks[0].prefix, 32);
    assert_int_equal(cfg->proxy_networks[0].addr[3], 10);
    assert_int_equal(cfg->proxy_networks[1].family, AF_INET6);
    assert_int_equal(cfg->proxy_networks[1].prefix, 64);
    assert_int_equal(cfg->n_relay_networks, 2); /* untouched by proxy_networks */
    assert_int_equal(cfg->proxy_timeout_ms, 3000);
    assert_int_equal(cfg->client_connection_limit, 10);
    assert_int_equal(cfg->client_connection_rate, 120);
    assert_int_equal(cfg->client_auth_rate, 12);
    assert_int_equal(cfg->smtpd.min_data_rate, 2048);
    assert_int_equal(cfg->smtpd.stress_timeout_ms, 5000);
    assert_int_equal(cfg->n_limit_exempt_networks, 2);
    assert_int_equal(cfg->limit_exempt_networks[0].family, AF_INET);
    assert_int_equal(cfg->limit_exempt_networks[0].prefix, 24);
    assert_int_equal(cfg->limit_exempt_networks[1].family, AF_INET6);
    assert_int_equal(cfg->limit_exempt_networks[1].prefix, 48);
    assert_int_equal(cfg->n_proxy_networks, 2); /* untouched by limit_exempt_networks */
    assert_string_equal(cfg->tls_cert_file, "/etc/hamr/cert.pem");
    assert_string_equal(cfg->tls_key_file, "/etc/hamr/key.pem");
    assert_string_equal(cfg->auth_file, "/etc/hamr/passwd");
    assert_int_equal(cfg->smtpd.auth_max_failures, 5);
    assert_string_equal(cfg->smtpd.hostname, "mx2.example.net");
    assert_string_equal(cfg->smtpc.helo_name, "mx2.example.net");
    assert_string_equal(cfg->relayhost.host, "smarthost.example.net");
    assert_int_equal(cfg->relayhost.port, 587);
    assert_int_equal(cfg->smtpc.connect_timeout_ms, 5000);
    assert_int_equal(cfg->smtpc.command_timeout_ms, 60000);
    assert_int_equal(cfg->smtpc.data_done_timeout_ms, 240000);
    assert_int_equal(cfg->smtpc.idle_timeout_ms, 2000);
    assert_int_equal(cfg->smtpc.max_conns_per_dest, 3);
    assert_int_equal(cfg->smtpc.max_msgs_per_conn, 7);
    assert_int_equal(cfg->retry_min_ms, 60000);
    assert_int_equal(cfg->retry_max_ms, 3600000);
    assert_int_equal(cfg->queue_lifetime_ms, 2ull * 86400000);
    assert_int_equal(cfg->lease_time_ms, 300000);
    assert_int_equal(cfg->scan_interval_ms, 500);
    assert_int_equal(cfg->delivery_port, 2525);
    assert_int_equal(cfg->smtpc.address_limit, 3);
    assert_int_equal(cfg->mx.address_limit, 3);
    assert_int_equal(cfg->smtpc.session_limit, 1);
    assert_string_equal(cfg->delivery_auth_file, "/etc/hamr/relay_passwd");
    assert_true(cfg->smtpc.auth_plaintext);
    assert_int_equal(cfg->mx.inet_protocols, MX_INET_IPV6);
    assert_int_equal(cfg->mx.address_preference, MX_PREF_IPV4);
    assert_int_equal(cfg->mx.n_self_addrs, 2);
    assert_int_equal(cfg->mx.self_addrs[0].family, AF_INET);
    assert_int_equal(cfg->mx.self_addrs[1].family, AF_INET6);
    assert_string_equal(cfg->dns.servers, "127.0.0.1:5353,[::1]:53,192.0.2.53:53");
    assert_int_equal(cfg->dns.timeout_ms, 2000);
    assert_int_equal(cfg->dns.tries, 3);
    assert_int_equal(cfg->dns.cache_size, 500);
    assert_true(cfg->dns.trust_ad);
    assert_int_equal(cfg->n_transports, 2);
    assert_string_equal(cfg->transports[1].domain, ".example.com");
    assert_string_equal(cfg->transports[1].next_hop.host, "10.9.9.9");
    assert_int_equal(cfg->min_free_bytes, 1ull << 30);
    assert_int_equal(cfg->queue_max_messages, 5000);
    assert_int_equal(cfg->queue_max_bytes, 2ull << 30);
    assert_string_equal(cfg->cluster_ca_file, "/etc/hamr/pki/ca.pem");
    assert_string_equal(cfg->cluster_cert_file, "/etc/hamr/pki/node-2.pem");
    assert_string_equal(cfg->cluster_key_file, "/etc/hamr/pki/node-2.key");
    assert_false(cfg->cluster_plaintext);
    config_free(cfg);
    assert_int_equal(cfg->n_relay_domains, 0);
    config_free(cfg); /* idempotent */
    free(cfg);
}

/* test_list_continuation - list keys continue and repeat; defaults replaced. */
static void test_list_continuation(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512];
    int rc = test_load(cfg,
                       BASE
                       "[cluster]\n"
                       "voters = 1@127.0.0.1:7001,\n"
                       "         2@127.0.0.1:7002\n"
                       "voters = 3@127.0.0.1:7003\n"
                       "[smtpd]\n"
                       "relay_networks = 192.0.2.0/24\n"
                       "  198.51.100.0/24\n"
                       "proxy_networks = 10.0.0.1\n"
                       "  10.0.0.2 10.0.0.3\n"
                       "proxy_networks = 10.0.0.4\n"
                       "[listen]\n"
                       "peer = 127.0.0.1:7201\n",
                       err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg->n_voters, 3);
    assert_string_equal(cfg->voters[1].address, "127.0.0.1:7002");
    assert_string_equal(cfg->listen_peer.host, "127.0.0.1");
    assert_int_equal(cfg->listen_peer.port, 7201);
    assert_false(cfg->join);
    assert_int_equal(cfg->n_relay_networks, 2); /* the defaults were replaced */
    assert_int_equal(cfg->smtpd.n_relay_networks, 2);
    assert_int_equal(cfg->n_proxy_networks, 4);
    assert_int_equal(cfg->proxy_networks[3].addr[3], 4);
    assert_false(cfg->proxy_protocol);
    config_free(cfg);
    free(cfg);
}

/* test_ipv6_cluster - voters, raft and peer on IPv6 literals, written as inet_ntop does. */
static void test_ipv6_cluster(void **state)
{
    (void)state;
    char err[512];
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    assert_non_null(cfg);
    int rc = test_load(cfg,
                       "[node]\nid = 2\ndata_dir = /x\n"
                       "[listen]\nraft = [0:0::1]:7002\npeer = [::1]:7202\nmetrics = [::1]:8443\n"
                       "[cluster]\nvoters = 1@127.0.0.1:7001, 2@[0:0:0::0001]:7002,\n"
                       "  3@[2001:DB8::3]:7003\n"
                       "[cluster_tls]\nca_file = /pki/ca.pem\ncert_file = /pki/2.pem\n"
                       "key_file = /pki/2.key\n",
                       err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg->n_voters, 3);
    assert_string_equal(cfg->voters[0].address, "127.0.0.1:7001");
    assert_string_equal(cfg->voters[1].address, "[::1]:7002");
    assert_string_equal(cfg->voters[2].address, "[2001:db8::3]:7003");
    assert_string_equal(cfg->listen_peer.host, "::1");
    assert_string_equal(cfg->listen_metrics.host, "::1");
    assert_int_equal(cfg->listen_metrics.port, 8443);
    assert_string_equal(cfg->cluster_ca_file, "/pki/ca.pem");
    assert_string_equal(cfg->cluster_cert_file, "/pki/2.pem");
    assert_string_equal(cfg->cluster_key_file, "/pki/2.key");
    assert_false(cfg->cluster_plaintext);
    config_free(cfg);
    free(cfg);

    char out[CONSENSUS_ADDR_MAX];
    assert_int_equal(config_ip_address("::ffff:10.0.0.1", 25, out, sizeof(out)), 0);
    assert_string_equal(out, "[::ffff:10.0.0.1]:25");
    assert_int_equal(config_ip_address("10.0.0.1", 7001, out, sizeof(out)), 0);
    assert_string_equal(out, "10.0.0.1:7001");
    assert_int_equal(config_ip_address("node1", 7001, out, sizeof(out)), HAMR_EINVAL);
    assert_int_equal(config_ip_address("::1", 7001, out, 8), HAMR_EINVAL);
}

/* test_bad - one invalid file and the exact message after "PATH:". */
struct test_bad {
    const char *label;
    const char *content;
    int want_rc;
    const char *want; /* ":LINE: reason" */
};

static const struct test_bad test_bad_files[] = {
    {"bad size", BASE "[smtpd]\nmessage_size_limit = 10Q\n", HAMR_EINVAL,
     ":9: message_size_limit: not a size: \"10Q\""},
    {"bad duration", BASE "[cluster]\nelection_timeout = 3 s\n", HAMR_EINVAL,
     ":9: election_timeout: not a duration: \"3 s\""},
    {"bad count", BASE "[smtpd]\n\n\nrecipient_limit = many\n", HAMR_EINVAL,
     ":11: recipient_limit: not a number: \"many\""},
    {"queue_max_messages not a count", BASE "[storage]\nqueue_max_messages = 1M\n", HAMR_EINVAL,
     ":9: queue_max_messages: not a number: \"1M\""},
    {"queue_max_bytes not a size", BASE "[storage]\nqueue_max_bytes = lots\n", HAMR_EINVAL,
     ":9: queue_max_bytes: not a size: \"lots\""},
    {"count out of range", BASE "[smtpd]\nmax_errors = 0\n", HAMR_EINVAL,
     ":9: max_errors: out of range: \"0\""},
    {"duration out of range", BASE "[cluster]\nheartbeat = 0ms\n", HAMR_EINVAL,
     ":9: heartbeat: out of range: \"0ms\""},
    {"unsigned overflow", BASE "[cluster]\nelection_timeout = 100d\n", HAMR_EINVAL,
     ":9: election_timeout: out of range: \"100d\""},
    {"unknown key", BASE "[smtpd]\nmax_sesions = 5\n", HAMR_EINVAL,
     ":9: unknown key \"max_sesions\" in [smtpd]"},
    {"key of another section", BASE "[node]\nsmtp = 127.0.0.1:25\n", HAMR_EINVAL,
     ":9: unknown key \"smtp\" in [node]"},
    {"unknown section", BASE "\n[smptd]\nmax_sessions = 5\n", HAMR_EINVAL,
     ":9: unknown section [smptd]"},
    {"unknown empty section", BASE "[bogus]\n", HAMR_EINVAL, ":8: unknown section [bogus]"},
    {"outside a section", "id = 1\n", HAMR_EINVAL, ":1: \"id\" outside a [section]"},
    {"syntax error", BASE "[smtpd]\nmax_sessions\n", HAMR_EINVAL,
     ":9: syntax error (expected [section] or key = value)"},
    {"unclosed section", BASE "[smtpd\n", HAMR_EINVAL,
     ":8: syntax error (expected [section] or key = value)"},
    {"scalar twice", BASE "[node]\nid = 3\n", HAMR_EINVAL, ":9: id: given twice (first on line 2)"},
    {"indented scalar", "[node]\nid = 1\n  data_dir = /x\n", HAMR_EINVAL,
     ":3: indented line continues \"id\" (line 2); only lists continue, so do not indent keys"},
    {"bad log level", "[node]\nlog_level = loud\n", HAMR_EINVAL,
     ":2: log_level: not one of error, warn, info, debug: \"loud\""},
    {"zero id", "[node]\nid = 0\n", HAMR_EINVAL, ":2: id: not a positive number: \"0\""},
    {"empty data_dir", "[node]\ndata_dir =\n", HAMR_EINVAL, ":2: data_dir: empty value"},
    {"long user",
     "[node]\nuser = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
     HAMR_EINVAL, ":2: user: longer than 63 characters"},
    {"bad zone", BASE "[node]\nzone = dc 1\n", HAMR_EINVAL,
     ":9: zone: not 1 to 63 letters, digits, '.', '_' or '-': \"dc 1\""},
    {"zone with a slash", "[node]\nzone = eu/west\n", HAMR_EINVAL,
     ":2: zone: not 1 to 63 letters, digits, '.', '_' or '-': \"eu/west\""},
    {"long zone",
     "[node]\nzone = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
     HAMR_EINVAL,
     ":2: zone: not 1 to 63 letters, digits, '.', '_' or '-': "
     "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""},
    {"bad hostport", BASE "[listen]\nsmtp = 127.0.0.1\n", HAMR_EINVAL,
     ":9: smtp: not host:port: \"127.0.0.1\""},
    {"bad relayhost", BASE "[delivery]\nrelayhost = [mx]:0\n", HAMR_EINVAL,
     ":9: relayhost: not host:port: \"[mx]:0\""},
    {"bad inet_protocols", BASE "[delivery]\ninet_protocols = ipv5\n", HAMR_EINVAL,
     ":9: inet_protocols: not all, ipv4 or ipv6: \"ipv5\""},
    {"bad self address", BASE "[delivery]\nself_addresses = 192.0.2.1, lb.example\n", HAMR_EINVAL,
     ":9: self_addresses: not an IP address: \"lb.example\""},
    {"dns server by name", BASE "[dns]\nservers = ns.example:53\n", HAMR_EINVAL,
     ":9: servers: not IP, IP:PORT or [IPV6]:PORT: \"ns.example:53\""},
    {"dns tries 0", BASE "[dns]\ntries = 0\n", HAMR_EINVAL, ":9: tries: out of range: \"0\""},
    {"delivery port 0", BASE "[delivery]\nport = 0\n", HAMR_EINVAL,
     ":9: port: out of range: \"0\""},
    {"bad network", BASE "[smtpd]\nrelay_networks = 10.0.0.0/8, 10.0.0.0/40\n", HAMR_EINVAL,
     ":9: relay_networks: not a network: \"10.0.0.0/40\""},
    {"bad domain", BASE "[smtpd]\nrelay_domains = exa mple..com\n", HAMR_EINVAL,
     ":9: relay_domains: not a domain: \"mple..com\""},
    {"bad transport value", BASE "[transport]\nexample.com = mx.example.com\n", HAMR_EINVAL,
     ":9: example.com: not host:port: \"mx.example.com\""},
    {"bad transport domain", BASE "[transport]\nexa/mple.com = mx:25\n", HAMR_EINVAL,
     ":9: transport: not a domain: \"exa/mple.com\""},
    {"transport twice", BASE "[transport]\nexample.com = mx:25\nEXAMPLE.com = mx2:25\n",
     HAMR_EINVAL, ":10: example.com: given twice (first on line 9)"},
    {"bad voter", BASE "[cluster]\nvoters = 1@127.0.0.1:7001 two@127.0.0.1:7002\n", HAMR_EINVAL,
     ":9: voters: not ID@IPV4:PORT or ID@[IPV6]:PORT: \"two@127.0.0.1:7002\""},
    {"voter by name", BASE "[cluster]\nvoters = 1@localhost:7001\n", HAMR_EINVAL,
     ":9: voters: not ID@IPV4:PORT or ID@[IPV6]:PORT: \"1@localhost:7001\""},
    {"voter ipv6 unbracketed", BASE "[cluster]\nvoters = 1@::1:7001\n", HAMR_EINVAL,
     ":9: voters: not ID@IPV4:PORT or ID@[IPV6]:PORT: \"1@::1:7001\""},
    {"voter bracketed name", BASE "[cluster]\nvoters = 1@[node1]:7001\n", HAMR_EINVAL,
     ":9: voters: not ID@IPV4:PORT or ID@[IPV6]:PORT: \"1@[node1]:7001\""},
    {"voter id zero", BASE "[cluster]\nvoters = 0@127.0.0.1:7001\n", HAMR_EINVAL,
     ":9: voters: not ID@IPV4:PORT or ID@[IPV6]:PORT: \"0@127.0.0.1:7001\""},
    {"voter id twice", BASE "[cluster]\nvoters = 1@127.0.0.1:7001, 1@127.0.0.1:7002\n", HAMR_EINVAL,
     ":9: voters: id 1 given twice"},
    {"voter address twice", BASE "[cluster]\nvoters = 1@127.0.0.1:7001,\n  2@127.0.0.1:7001\n",
     HAMR_EINVAL, ":10: voters: address 127.0.0.1:7001 given twice"},
    {"self not a voter", BASE "[cluster]\nvoters = 2@127.0.0.1:7002, 3@127.0.0.1:7003\n",
     HAMR_EINVAL, ":9: voters: this node (id 1) is not listed"},
    {"self at another address", BASE "[cluster]\n\nvoters = 1@127.0.0.1:7009\n", HAMR_EINVAL,
     ":10: voters: this node is listed at 127.0.0.1:7009 but [listen] raft is 127.0.0.1:7001"},
    {"no id", "[node]\ndata_dir = /x\n[listen]\nraft = 127.0.0.1:7001\n", HAMR_EINVAL,
     ":0: [node] id is required"},
    {"no data_dir", "[node]\nid = 1\n[listen]\nraft = 127.0.0.1:7001\n", HAMR_EINVAL,
     ":0: [node] data_dir is required"},
    {"no raft", "[node]\nid = 1\ndata_dir = /x\n", HAMR_EINVAL, ":0: [listen] raft is required"},
    {"raft by name", "[node]\nid = 1\ndata_dir = /x\n[listen]\n\nraft = node1:7001\n", HAMR_EINVAL,
     ":6: raft: must be an IP address and port: \"node1\""},
    {"control by name", BASE "[listen]\ncontrol = localhost:7100\n", HAMR_EINVAL,
     ":9: control: must be an IP address and port: \"localhost\""},
    {"metrics by name", BASE "[listen]\nmetrics = prometheus.example:8443\n", HAMR_EINVAL,
     ":9: metrics: must be an IP address and port: \"prometheus.example\""},
    {"metrics without a pki", BASE "[listen]\nhttp = 127.0.0.1:8080\nmetrics = [::1]:8443\n",
     HAMR_EINVAL,
     ":10: metrics: serves over mutual TLS with the cluster PKI, but [cluster_tls] plaintext = "
     "yes; set ca_file, cert_file and key_file, or use http"},
    {"heartbeat too long", BASE "[cluster]\nheartbeat = 1s\n", HAMR_EINVAL,
     ":9: heartbeat (1000ms) must be less than election_timeout (1000ms)"},
    {"election too short", BASE "[cluster]\nelection_timeout = 100ms\n", HAMR_EINVAL,
     ":9: heartbeat (100ms) must be less than election_timeout (100ms)"},
    {"retry_min above retry_max", BASE "[delivery]\nretry_max = 1m\nretry_min = 2m\n", HAMR_EINVAL,
     ":10: retry_min must not exceed retry_max"},
    {"retry_max below default min", BASE "[delivery]\nretry_max = 1m\n", HAMR_EINVAL,
     ":9: retry_min must not exceed retry_max"},
    {"message too big", BASE "[smtpd]\nmessage_size_limit = 65M\n", HAMR_EINVAL,
     ":9: message_size_limit: at most 64M (a message is one raft entry)"},
    {"section after a vertical tab", "\v[bogus]\n" BASE, HAMR_EINVAL,
     ":1: unknown section [bogus]"},
    {"cluster without peer", BASE "[cluster]\nvoters = 1@127.0.0.1:7001, 2@127.0.0.1:7002\n",
     HAMR_EINVAL, ":0: [listen] peer is required in a cluster of more than one node"},
    {"join with voters", BASE "[cluster]\njoin = yes\nvoters = 1@127.0.0.1:7001\n", HAMR_EINVAL,
     ":10: voters: a node that joins (join = yes) lists no voters"},
    {"bad bool", BASE "[cluster]\njoin = maybe\n", HAMR_EINVAL,
     ":9: join: not yes or no: \"maybe\""},
    {"peer by name", BASE "[listen]\npeer = node1:7201\n", HAMR_EINVAL,
     ":9: peer: must be an IP address and port: \"node1\""},
    {"join without peer", BASE "[cluster]\njoin = yes\n", HAMR_EINVAL,
     ":0: [listen] peer is required in a cluster of more than one node"},
    {"proxy without networks", BASE "[smtpd]\nmax_sessions = 5\nproxy_protocol = on\n", HAMR_EINVAL,
     ":10: proxy_protocol: on needs proxy_networks (the load balancers)"},
    {"proxy bad bool", BASE "[smtpd]\nproxy_protocol = v2\n", HAMR_EINVAL,
     ":9: proxy_protocol: not yes or no: \"v2\""},
    {"proxy bad network", BASE "[smtpd]\nproxy_networks = 10.0.0.1, haproxy.example\n", HAMR_EINVAL,
     ":9: proxy_networks: not a network: \"haproxy.example\""},
    {"tls cert without key", BASE "[smtpd]\nmax_sessions = 5\ntls_cert_file = /c.pem\n",
     HAMR_EINVAL, ":10: tls_cert_file and tls_key_file must be set together"},
    {"tls key without cert", BASE "[smtpd]\ntls_key_file = /k.pem\n", HAMR_EINVAL,
     ":9: tls_cert_file and tls_key_file must be set together"},
    {"delivery auth_plaintext bad bool", BASE "[delivery]\nauth_plaintext = maybe\n", HAMR_EINVAL,
     ":9: auth_plaintext: not yes or no: \"maybe\""},
    {"delivery auth_file twice", BASE "[delivery]\nauth_file = /a\nauth_file = /b\n", HAMR_EINVAL,
     ":10: auth_file: given twice (first on line 9)"},
    {"auth without tls", BASE "[smtpd]\nmax_sessions = 5\nauth_file = /etc/hamr/passwd\n",
     HAMR_EINVAL, ":10: auth_file needs tls_cert_file and tls_key_file (AUTH only over TLS)"},
    {"postmaster without domain", BASE "[smtpd]\npostmaster = root\n", HAMR_EINVAL,
     ":9: postmaster: not a mailbox with a domain: \"root\""},
    {"postmaster with brackets", BASE "[smtpd]\nmax_sessions = 5\npostmaster = <a@b.example>\n",
     HAMR_EINVAL, ":10: postmaster: not a mailbox with a domain: \"<a@b.example>\""},
    {"postmaster two addresses", BASE "[smtpd]\npostmaster = a@b.example c@d.example\n",
     HAMR_EINVAL, ":9: postmaster: not a mailbox with a domain: \"a@b.example c@d.example\""},
    {"cluster tls cert alone", BASE_TLS "[cluster_tls]\nca_file = /ca.pem\ncert_file = /n.pem\n",
     HAMR_EINVAL, ":7: ca_file, cert_file and key_file must be set together"},
    {"cluster tls and plaintext", BASE_TLS "[cluster_tls]\nplaintext = yes\nkey_file = /n.key\n",
     HAMR_EINVAL, ":7: plaintext: yes, but ca_file, cert_file or key_file is set too"},
    {"cluster tls missing", BASE_TLS, HAMR_EINVAL,
     ":0: [cluster_tls] ca_file, cert_file and key_file are required (deploy/make-pki.sh makes "
     "them), or plaintext = yes for a lab"},
    {"cluster tls plaintext no", BASE_TLS "[cluster_tls]\nplaintext = no\n", HAMR_EINVAL,
     ":0: [cluster_tls] ca_file, cert_file and key_file are required (deploy/make-pki.sh makes "
     "them), or plaintext = yes for a lab"},
    {"cluster tls unknown key", BASE_TLS "[cluster_tls]\ncafile = /ca.pem\n", HAMR_EINVAL,
     ":7: unknown key \"cafile\" in [cluster_tls]"},
    {"auth max failures zero", BASE "[smtpd]\nauth_max_failures = 0\n", HAMR_EINVAL,
     ":9: auth_max_failures: out of range: \"0\""},
    {"proxy timeout zero", BASE "[smtpd]\nproxy_timeout = 0s\n", HAMR_EINVAL,
     ":9: proxy_timeout: out of range: \"0s\""},
    {"proxy timeout too long", BASE "[smtpd]\nproxy_timeout = 6m\n", HAMR_EINVAL,
     ":9: proxy_timeout: out of range: \"6m\""},
    {"proxy timeout junk", BASE "[smtpd]\nproxy_timeout = soon\n", HAMR_EINVAL,
     ":9: proxy_timeout: not a duration: \"soon\""},
    {"client limit junk", BASE "[smtpd]\nclient_connection_limit = many\n", HAMR_EINVAL,
     ":9: client_connection_limit: not a number: \"many\""},
    {"client rate too high", BASE "[smtpd]\nclient_connection_rate = 1000001\n", HAMR_EINVAL,
     ":9: client_connection_rate: out of range: \"1000001\""},
    {"exempt bad network", BASE "[smtpd]\nlimit_exempt_networks = 10.0.0.0/33\n", HAMR_EINVAL,
     ":9: limit_exempt_networks: not a network: \"10.0.0.0/33\""},
    {"auth rate too high", BASE "[smtpd]\nclient_auth_rate = 1000001\n", HAMR_EINVAL,
     ":9: client_auth_rate: out of range: \"1000001\""},
    {"auth rate negative", BASE "[smtpd]\n\nclient_auth_rate = -1\n", HAMR_EINVAL,
     ":10: client_auth_rate: not a number: \"-1\""},
    {"auth rate twice", BASE "[smtpd]\nclient_auth_rate = 5\nclient_auth_rate = 6\n", HAMR_EINVAL,
     ":10: client_auth_rate: given twice (first on line 9)"},
    {"min data rate junk", BASE "[smtpd]\nmin_data_rate = fast\n", HAMR_EINVAL,
     ":9: min_data_rate: not a size: \"fast\""},
    {"min data rate too high", BASE "[smtpd]\nmin_data_rate = 2G\n", HAMR_EINVAL,
     ":9: min_data_rate: out of range: \"2G\""},
    {"stress timeout zero", BASE "[smtpd]\nstress_timeout = 0s\n", HAMR_EINVAL,
     ":9: stress_timeout: out of range: \"0s\""},
    {"stress timeout too long", BASE "[smtpd]\nstress_timeout = 2d\n", HAMR_EINVAL,
     ":9: stress_timeout: out of range: \"2d\""},
    {"stress timeout junk", BASE "[smtpd]\nstress_timeout = soon\n", HAMR_EINVAL,
     ":9: stress_timeout: not a duration: \"soon\""},
};

/* test_control_keys - [listen] control_socket and control: defaults, off, paths, limits. */
static void test_control_keys(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512], path[1024];
    /* Default: control.sock inside data_dir, and TCP on loopback. */
    assert_int_equal(test_load(cfg, BASE, err, sizeof(err), NULL), 0);
    assert_string_equal(cfg->listen_control_socket, "control.sock");
    assert_int_equal(config_control_socket(cfg, path, sizeof(path)), 0);
    assert_string_equal(path, "/var/lib/hamr/control.sock");
    assert_int_equal(config_control_socket(cfg, path, 10), HAMR_EINVAL);
    config_free(cfg);
    /* An absolute path is itself; TCP off. */
    int rc = test_load(cfg, BASE "control_socket = /run/hamr/ctl.sock\ncontrol =\n", err,
                       sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(config_control_socket(cfg, path, sizeof(path)), 0);
    assert_string_equal(path, "/run/hamr/ctl.sock");
    assert_string_equal(cfg->listen_control.host, "");
    config_free(cfg);
    /* The socket off: "" as the path; TCP on an IPv6 literal. */
    rc = test_load(cfg, BASE "control_socket =\ncontrol = [::1]:7100\n", err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(config_control_socket(cfg, path, sizeof(path)), 0);
    assert_string_equal(path, "");
    assert_string_equal(cfg->listen_control.host, "::1");
    config_free(cfg);

    /* Paths of n 'a's: absolute (a '/' before them) or relative. */
    char abs108[112] = "/", rel106[112] = "", rel105[112] = "";
    memset(abs108 + 1, 'a', 108);
    abs108[109] = '\0';
    memset(rel106, 'a', 106);
    rel106[106] = '\0';
    memset(rel105, 'a', 105);
    rel105[105] = '\0';
    const struct {
        const char *name;
        const char *key, *value;
        const char *want;
    } bad[] = {
        {"both off", "control_socket =\ncontrol", "",
         ":8: control and control_socket are both off: hamrctl could not reach this node"},
        {"absolute too long", "control_socket", abs108,
         ":8: control_socket: longer than a Unix socket path may be (107)"},
        {"relative too long", "control_socket", rel106,
         ":8: control_socket: longer than a Unix socket path may be (107)"},
        {"control by name", "control", "localhost:7100",
         ":8: control: must be an IP address and port: \"localhost\""},
    };
    char content[1024];
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad); i++) {
        snprintf(content, sizeof(content), "%s%s = %s\n", BASE, bad[i].key, bad[i].value);
        assert_int_equal(test_load(cfg, content, err, sizeof(err), NULL), HAMR_EINVAL);
        if (strstr(err, bad[i].want) == NULL)
            fail_msg("%s: got \"%s\", want \"%s\"", bad[i].name, err, bad[i].want);
        config_free(cfg);
    }
    /* 105 octets relative ("./" makes 107): fits. */
    snprintf(content, sizeof(content), "%scontrol_socket = %s\n", BASE, rel105);
    rc = test_load(cfg, content, err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    config_free(cfg);
    free(cfg);
}

/* test_proxy_networks_limit - 64 balancers fit, a 65th is an error on its line. */
static void test_proxy_networks_limit(void **state)
{
    for (int extra = 0; extra <= 1; extra++) {
        char content[4096];
        size_t n = (size_t)snprintf(content, sizeof(content), "%s[smtpd]\nproxy_networks =", BASE);
        for (int i = 0; i < 64 + extra; i++)
            n += (size_t)snprintf(content + n, sizeof(content) - n, "%s10.0.%d.%d\n",
                                  i == 0 ? " " : "  ", i / 8, i % 8);
        assert_true(n < sizeof(content));
        struct hamr_config *cfg = malloc(sizeof(*cfg));
        char err[512];
        int rc = test_load(cfg, content, err, sizeof(err), NULL);
        if (extra == 0) {
            if (rc != 0)
                fail_msg("%s", err);
            assert_int_equal(cfg->n_proxy_networks, 64);
            assert_int_equal(cfg->proxy_networks[63].addr[3], 7);
            config_free(cfg);
        } else {
            assert_int_equal(rc, HAMR_EINVAL);
            assert_non_null(strstr(err, ":73: proxy_networks: more than 64 networks"));
        }
        free(cfg);
    }
}

/* test_bad_file_messages - each bad file gives exactly its "FILE:LINE: reason". */
static void test_bad_file_messages(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_bad_files); i++) {
        const struct test_bad *t = &test_bad_files[i];
        struct hamr_config *cfg = malloc(sizeof(*cfg));
        char err[512], want[700];
        const char *path;
        int rc = test_load(cfg, t->content, err, sizeof(err), &path);
        snprintf(want, sizeof(want), "%s%s", path, t->want);
        if (rc != t->want_rc || strcmp(err, want) != 0)
            fail_msg("%s: rc %d (want %d)\n  got:  %s\n  want: %s", t->label, rc, t->want_rc, err,
                     want);
        assert_int_equal(cfg->n_relay_domains, 0); /* nothing left allocated */
        free(cfg);
    }
}

/* test_slow_client_keys_off - 0 turns the AUTH rate and the minimum DATA rate off. */
static void test_slow_client_keys_off(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512];
    int rc = test_load(cfg,
                       BASE
                       "[smtpd]\nclient_auth_rate = 0\nmin_data_rate = 0\n"
                       "stress_timeout = 250ms\n",
                       err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg->client_auth_rate, 0);
    assert_int_equal(cfg->smtpd.min_data_rate, 0);
    assert_int_equal(cfg->smtpd.stress_timeout_ms, 250);
    config_free(cfg);
    free(cfg);
}

/* test_long_line - a line inih would split is refused at its own line. */
static void test_long_line(void **state)
{
    char content[1024];
    char voters[400];
    size_t n = 0;
    for (int id = 1; id <= 12; id++)
        n += (size_t)snprintf(voters + n, sizeof(voters) - n, "%s%d@127.0.0.1:%d",
                              id > 1 ? ", " : "", id, 7000 + id);
    snprintf(content, sizeof(content), BASE "[cluster]\nvoters = %s\n[smtpd]\nbogus = 1\n", voters);
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512], want[700];
    const char *path;
    assert_int_equal(test_load(cfg, content, err, sizeof(err), &path), HAMR_EINVAL);
    snprintf(want, sizeof(want),
             "%s:9: line longer than 198 characters (continue a list on an indented next line)",
             path);
    assert_string_equal(err, want);
    free(cfg);
}

/* test_missing_file - HAMR_EIO with line 0. */
static void test_missing_file(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512], want[300];
    snprintf(want, sizeof(want), "%s/nope.conf", test_dir);
    assert_int_equal(config_load(cfg, want, err, sizeof(err)), HAMR_EIO);
    strncat(want, ":0: cannot open: No such file or directory", sizeof(want) - strlen(want) - 1);
    assert_string_equal(err, want);
    free(cfg);
}

/* ------------------------------------------------------------------------ */

/* test_route - exact, longest suffix, relayhost fallback, none. */
static void test_route(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512];
    int rc = test_load(cfg,
                       BASE
                       "[transport]\n"
                       "example.com = [exact.example.com]:25\n"
                       ".example.com = [sub.example.com]:25\n"
                       ".deep.example.com = [deep.example.com]:2525\n"
                       "other.org = 192.0.2.1:25\n",
                       err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    static const struct {
        const char *rcpt;
        int want_rc;
        const char *host;
        uint16_t port;
    } cases[] = {
        {"a@example.com", 0, "exact.example.com", 25},
        {"a@EXAMPLE.Com", 0, "exact.example.com", 25},
        {"a@example.com.", 0, "exact.example.com", 25},
        {"a@mail.example.com", 0, "sub.example.com", 25},
        {"a@x.deep.example.com", 0, "deep.example.com", 2525},
        {"a@deep.example.com", 0, "sub.example.com", 25},
        {"\"odd@local\"@other.org", 0, "192.0.2.1", 25},
        /* No transport, no relayhost: the domain itself, as MX, on [delivery] port. */
        {"a@sub.other.org", 0, "sub.other.org", 25},
        {"a@NotExample.COM.", 0, "notexample.com", 25},
        {"a@[192.0.2.7]", 0, "192.0.2.7", 25},
        {"a@[IPv6:2001:db8::7]", 0, "2001:db8::7", 25},
        {"a@[not.a.literal]", HAMR_ENOTFOUND, NULL, 0},
        {"a@", HAMR_ENOTFOUND, NULL, 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct config_hostport hp;
        memset(&hp, 0, sizeof(hp));
        rc = config_route(cfg, cases[i].rcpt, &hp);
        if (rc != cases[i].want_rc)
            fail_msg("route %s: rc %d, want %d", cases[i].rcpt, rc, cases[i].want_rc);
        if (rc == 0) {
            assert_string_equal(hp.host, cases[i].host);
            assert_int_equal(hp.port, cases[i].port);
            /* MX lookups for domains only: not for a literal, not for a bracketed next hop. */
            bool want_mx = strchr(cases[i].rcpt, '[') == NULL &&
                           strcmp(cases[i].host, "192.0.2.1") != 0 &&
                           strstr(cases[i].host, ".example.com") == NULL;
            if (hp.mx != want_mx)
                fail_msg("route %s: mx %d", cases[i].rcpt, hp.mx);
        }
    }
    /* [delivery] port is the port of MX routes; a bare name as next hop is looked up as MX. */
    cfg->delivery_port = 2526;
    struct config_hostport hm;
    assert_int_equal(config_route(cfg, "a@mx.test", &hm), 0);
    assert_int_equal(hm.port, 2526);
    assert_int_equal(config_parse_hostport("mail.example.net:25", &hm), 0);
    assert_true(hm.mx);
    assert_int_equal(config_parse_hostport("[mail.example.net]:25", &hm), 0);
    assert_false(hm.mx);
    assert_int_equal(config_parse_hostport("192.0.2.1:25", &hm), 0);
    assert_false(hm.mx);
    /* With a relayhost, whatever has no transport goes there. */
    hamr_strlcpy(cfg->relayhost.host, "smart.example.net", sizeof(cfg->relayhost.host));
    cfg->relayhost.port = 587;
    struct config_hostport hp;
    assert_int_equal(config_route(cfg, "a@sub.other.org", &hp), 0);
    assert_string_equal(hp.host, "smart.example.net");
    assert_int_equal(hp.port, 587);
    assert_int_equal(config_route(cfg, "a@mail.example.com", &hp), 0);
    assert_string_equal(hp.host, "sub.example.com");
    config_free(cfg);
    free(cfg);
}

/* test_tls_policy - keys, defaults, lookups (exact, longest suffix, default), errors. */
static void test_tls_policy(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512], want[700];
    const char *path;
    config_defaults(cfg);
    assert_int_equal(cfg->tls_policy, SMTPC_TLS_MAY);
    assert_string_equal(cfg->smtpc.tls_ca_file, "");
    assert_int_equal(config_tls_policy(cfg, "a@example.com"), SMTPC_TLS_MAY);

    int rc = test_load(cfg,
                       BASE
                       "[delivery]\n"
                       "tls_policy = encrypt\n"
                       "tls_ca_file = /etc/hamr/ca.pem\n"
                       "[tls_policy]\n"
                       "bank.example = verify\n"
                       ".example.com = May\n"
                       ".secure.example.com = verify\n"
                       "dane.example = dane\n"
                       "only.example = DANE-only\n",
                       err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_string_equal(cfg->smtpc.tls_ca_file, "/etc/hamr/ca.pem");
    assert_int_equal(cfg->n_tls_policies, 5);
    static const struct {
        const char *rcpt;
        enum smtpc_tls_policy want;
    } cases[] = {
        {"a@bank.example", SMTPC_TLS_VERIFY},
        {"BANK.example.", SMTPC_TLS_VERIFY},      /* a bare domain, any case, trailing dot */
        {"a@mx.bank.example", SMTPC_TLS_ENCRYPT}, /* exact entries do not cover subdomains */
        {"a@mail.example.com", SMTPC_TLS_MAY},
        {"a@example.com", SMTPC_TLS_ENCRYPT},         /* ".example.com" is subdomains only */
        {"a@x.secure.example.com", SMTPC_TLS_VERIFY}, /* longest suffix wins */
        {"a@other.org", SMTPC_TLS_ENCRYPT},
        {"a@dane.example", SMTPC_TLS_DANE},
        {"a@only.example", SMTPC_TLS_DANE_ONLY},
        {"a@", SMTPC_TLS_ENCRYPT},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++)
        if (config_tls_policy(cfg, cases[i].rcpt) != cases[i].want)
            fail_msg("tls policy of %s: %d, want %d", cases[i].rcpt,
                     (int)config_tls_policy(cfg, cases[i].rcpt), (int)cases[i].want);
    config_free(cfg);

    static const struct {
        const char *content;
        const char *want;
    } bad[] = {
        {BASE "[delivery]\ntls_policy = required\n",
         ":9: tls_policy: not one of may, encrypt, verify, dane, dane-only: \"required\""},
        {BASE "[tls_policy]\nexample.com = may\nexample.org = tlsa\n",
         ":10: example.org: not one of may, encrypt, verify, dane, dane-only: \"tlsa\""},
        {BASE "[tls_policy]\nexample.com = may\nEXAMPLE.com = verify\n",
         ":10: example.com: given twice (first on line 9)"},
        {BASE "[tls_policy]\nbad_domain..x = verify\n",
         ":9: tls_policy: not a domain: \"bad_domain..x\""},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad); i++) {
        assert_int_equal(test_load(cfg, bad[i].content, err, sizeof(err), &path), HAMR_EINVAL);
        snprintf(want, sizeof(want), "%s%s", path, bad[i].want);
        assert_string_equal(err, want);
    }
    free(cfg);
}

/*
 * test_relay_recipients - [smtpd] relay_recipients: off ("") by default, a
 * path when set, empty turns it off again, only in [smtpd], once. The file
 * itself is read by the relay (net/smtpd_rcptmap), so the policy's map
 * stays NULL here.
 */
static void test_relay_recipients(void **state)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512], want[700];
    const char *path;

    assert_int_equal(test_load(cfg, BASE, err, sizeof(err), NULL), 0);
    assert_string_equal(cfg->relay_recipients, "");
    assert_null(cfg->smtpd.rcptmap);
    config_free(cfg);

    int rc = test_load(cfg,
                       BASE
                       "[smtpd]\nrelay_domains = example.com\n"
                       "relay_recipients = /etc/hamr/relay_recipients\n",
                       err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_string_equal(cfg->relay_recipients, "/etc/hamr/relay_recipients");
    assert_null(cfg->smtpd.rcptmap);
    config_free(cfg);

    rc = test_load(cfg, BASE "[smtpd]\nrelay_recipients =\n", err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_string_equal(cfg->relay_recipients, "");
    config_free(cfg);

    static const struct {
        const char *content;
        const char *want;
    } bad[] = {
        {BASE "[node]\nrelay_recipients = /x\n", ":9: unknown key \"relay_recipients\" in [node]"},
        {BASE "[smtpd]\nrelay_recipients = /x\nrelay_recipients = /y\n",
         ":10: relay_recipients: given twice (first on line 9)"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad); i++) {
        assert_int_equal(test_load(cfg, bad[i].content, err, sizeof(err), &path), HAMR_EINVAL);
        snprintf(want, sizeof(want), "%s%s", path, bad[i].want);
        assert_string_equal(err, want);
    }
    free(cfg);
}

/*
 * test_dkim - [dkim]: no keys by default (sign and oversign_from yes); key
 * lines, repeated and continued, in order, domains in lower case, ".suffix"
 * entries; sign = no; every bad line named with its line. The key files are
 * read by the relay (net/dkim), not here.
 */
static void test_dkim(void **state)
{
    (void)state;
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[512], want[700];
    const char *path;

    assert_int_equal(test_load(cfg, BASE, err, sizeof(err), NULL), 0);
    assert_int_equal(cfg->n_dkim_keys, 0);
    assert_null(cfg->dkim_keys);
    assert_true(cfg->dkim_sign);
    assert_true(cfg->dkim_oversign_from);
    config_free(cfg);

    int rc = test_load(cfg,
                       BASE
                       "[dkim]\n"
                       "key = Example.ORG rsa2026 /etc/hamr/dkim/example.org.pem\n"
                       "key = .example.net  ed.2026\t/etc/hamr/dkim/net.pem\n"
                       "    example.net ed-1 relative/net.pem\n"
                       "oversign_from = no\n",
                       err, sizeof(err), NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg->n_dkim_keys, 3);
    assert_string_equal(cfg->dkim_keys[0].domain, "example.org");
    assert_string_equal(cfg->dkim_keys[0].selector, "rsa2026");
    assert_string_equal(cfg->dkim_keys[0].path, "/etc/hamr/dkim/example.org.pem");
    assert_string_equal(cfg->dkim_keys[1].domain, ".example.net");
    assert_string_equal(cfg->dkim_keys[1].selector, "ed.2026");
    assert_string_equal(cfg->dkim_keys[2].domain, "example.net");
    assert_string_equal(cfg->dkim_keys[2].selector, "ed-1");
    assert_string_equal(cfg->dkim_keys[2].path, "relative/net.pem");
    assert_true(cfg->dkim_sign);
    assert_false(cfg->dkim_oversign_from);
    config_free(cfg);
    assert_null(cfg->dkim_keys);
    assert_int_equal(cfg->n_dkim_keys, 0);

    rc = test_load(cfg, BASE "[dkim]\nsign = no\nkey = example.org s /k.pem\n", err, sizeof(err),
                   NULL);
    if (rc != 0)
        fail_msg("%s", err);
    assert_false(cfg->dkim_sign);
    assert_int_equal(cfg->n_dkim_keys, 1);
    config_free(cfg);

    static const struct {
        const char *content;
        const char *want;
    } bad[] = {
        {BASE "[dkim]\nkey = example.org s\n",
         ":9: key: not DOMAIN SELECTOR PATH: \"example.org s\" (a path has no blanks)"},
        {BASE "[dkim]\nkey = example.org s /a b.pem\n",
         ":9: key: not DOMAIN SELECTOR PATH: \"example.org s /a b.pem\" (a path has no blanks)"},
        {BASE "[dkim]\nkey = exa_mple.org s /k.pem\n", ":9: key: not a domain: \"exa_mple.org\""},
        {BASE "[dkim]\nkey = example.org s_1 /k.pem\n", ":9: key: not a selector: \"s_1\""},
        {BASE "[dkim]\nkey = example.org s..1 /k.pem\n", ":9: key: not a selector: \"s..1\""},
        {BASE "[dkim]\nkey = example.org s /k.pem\nkey = EXAMPLE.org t /l.pem\n",
         ":10: key: example.org given twice (first on line 9)"},
        {BASE "[dkim]\nsign = maybe\n", ":9: sign: not yes or no: \"maybe\""},
        {BASE "[dkim]\nselector = s\n", ":9: unknown key \"selector\" in [dkim]"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad); i++) {
        if (test_load(cfg, bad[i].content, err, sizeof(err), &path) != HAMR_EINVAL)
            fail_msg("not refused: %s", bad[i].want);
        snprintf(want, sizeof(want), "%s%s", path, bad[i].want);
        assert_string_equal(err, want);
        assert_null(cfg->dkim_keys);
    }
    free(cfg);
}

/* main - the tests share one temporary directory. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_hostport),
        cmocka_unit_test(test_parse_cidr),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_key),
        cmocka_unit_test(test_list_continuation),
        cmocka_unit_test(test_ipv6_cluster),
        cmocka_unit_test(test_bad_file_messages),
        cmocka_unit_test(test_slow_client_keys_off),
        cmocka_unit_test(test_proxy_networks_limit),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_tls_policy),
        cmocka_unit_test(test_relay_recipients),
        cmocka_unit_test(test_dkim),
        cmocka_unit_test(test_control_keys),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
