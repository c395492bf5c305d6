/*
 * testlib_dns.h - a fake DNS server for tests: a UDP socket on 127.0.0.1
 * (an ephemeral port) on the test's own loop, answering from a table of
 * crafted responses, counting the queries it gets.
 *
 * Each table row names a question (name, type) and what to send back: an
 * RCODE, the AD bit, answer and authority records written as text, and
 * optionally a way to spoil the message (no answer at all, cut short, a
 * count that lies, a compression loop). A question no row names gets
 * REFUSED, so that a test asking the wrong thing sees a TEMPFAIL.
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_DNS_H
#define HAMR_TESTS_LIB_TESTLIB_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* Record types the table writes, besides those net/dns.h asks for. */
#define TESTLIB_DNS_CNAME 5
#define TESTLIB_DNS_SOA 6

/*
 * testlib_dns_rr - one record, rdata as text by type:
 *   MX "10 mx1.example" ("0 ." is the null MX), A "192.0.2.1",
 *   AAAA "2001:db8::1", TXT "v=spf1|-all" ('|' separates the strings),
 *   TLSA "3 1 1 0a0b0c" (hex data), CNAME "target.example",
 *   SOA "300" (MINIMUM; the other fields are fixed).
 * The owner is the question's name. type 0 ends a list.
 */
struct testlib_dns_rr {
    uint16_t type;
    uint32_t ttl;
    const char *data;
};

enum testlib_dns_spoil {
    TESTLIB_DNS_WHOLE = 0, /* as written */
    TESTLIB_DNS_SILENT,    /* count the query, never answer (a timeout) */
    TESTLIB_DNS_CUT,       /* the last 3 octets of the message left off */
    TESTLIB_DNS_LYING,     /* ANCOUNT two more than the records sent */
    TESTLIB_DNS_LOOP,      /* the first answer's owner a pointer to itself */
};

#define TESTLIB_DNS_RRS_MAX 8

struct testlib_dns_row {
    const char *name; /* lower case, no trailing dot */
    uint16_t type;
    unsigned rcode; /* 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, ... */
    bool ad;
    enum testlib_dns_spoil spoil;
    struct testlib_dns_rr an[TESTLIB_DNS_RRS_MAX];
    struct testlib_dns_rr ns[2];
};

#define TESTLIB_DNS_ROWS_MAX 128

struct testlib_dns {
    uv_udp_t udp;
    const struct testlib_dns_row *rows; /* borrowed: must outlive the server */
    size_t n_rows;
    unsigned counts[TESTLIB_DNS_ROWS_MAX]; /* queries per row */
    unsigned queries;                      /* every query, rows or not */
    bool last_ad;                          /* the last query had AD set */
    bool last_edns;                        /* and an EDNS0 OPT record */
    char servers[64];                      /* "127.0.0.1:port" for dns_config.servers */
    uint8_t buf[4096];
};

/*
 * testlib_dns_start - s serving rows (n_rows at most TESTLIB_DNS_ROWS_MAX)
 * on loop; fails the cmocka test if the socket cannot be made.
 */
void testlib_dns_start(struct testlib_dns *s,
                       uv_loop_t *loop,
                       const struct testlib_dns_row *rows,
                       size_t n_rows);

/* testlib_dns_count - queries the row of (name, type) got; fails the test if there is none. */
unsigned testlib_dns_count(const struct testlib_dns *s, const char *name, uint16_t type);

/* testlib_dns_close - close the socket; the loop's next run releases it. */
void testlib_dns_close(struct testlib_dns *s);

#endif
