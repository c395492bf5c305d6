/*
 * testlib_dns.h - a fake DNS server for tests: a UDP socket on 127.0.0.1
 * (an ephemeral port) and a TCP listener on the same port number, on the
 * test's own loop, answering from a table of crafted responses, counting
 * the queries it gets.
 *
 * TCP is there because a resolver retries a truncated UDP answer (TC set)
 * over TCP to the same address and port (RFC 7766 section 5, RFC 1035
 * section 4.2.2): each message on it carries a 2-octet length prefix, and a
 * connection may carry several queries.
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
    /*
     * Over UDP: TC set, the question only, no records (what a server sends
     * when the answer does not fit, RFC 2181 section 9). Over TCP:
     */
    TESTLIB_DNS_TC_UDP,       /* the whole answer */
    TESTLIB_DNS_TC_TCP_CLOSE, /* the connection closed, unanswered */
    TESTLIB_DNS_TC_TCP_CUT,   /* the whole answer's length, half of it, then silence */
};

/* Enough records per row for an answer over 512 octets and one over DNS_EDNS_SIZE (1232). */
#define TESTLIB_DNS_RRS_MAX 64

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
#define TESTLIB_DNS_CONNS_MAX 8
/* The largest message written: a TCP answer may exceed any UDP size. */
#define TESTLIB_DNS_MSG_MAX 4096

/* testlib_dns_conn - one accepted TCP connection; a slot of struct testlib_dns. */
struct testlib_dns_conn {
    uv_tcp_t tcp;
    struct testlib_dns *s;
    bool used;    /* accepted, and its close callback has not run yet */
    bool closing; /* uv_close called */
    bool cut;     /* sent a cut answer: reads nothing more (TESTLIB_DNS_TC_TCP_CUT) */
    size_t len;   /* octets in in[] not yet taken as a query */
    uint8_t in[1024];
};

struct testlib_dns {
    uv_udp_t udp;
    uv_tcp_t listener; /* the same port number as udp */
    struct testlib_dns_conn conns[TESTLIB_DNS_CONNS_MAX];
    const struct testlib_dns_row *rows; /* borrowed: must outlive the server */
    size_t n_rows;
    unsigned counts[TESTLIB_DNS_ROWS_MAX];     /* queries per row, both transports */
    unsigned tcp_counts[TESTLIB_DNS_ROWS_MAX]; /* of those, over TCP */
    unsigned queries;                          /* every query, rows or not, both transports */
    unsigned tcp_queries;                      /* of those, over TCP */
    unsigned tcp_accepted;                     /* TCP connections accepted */
    bool last_ad;                              /* the last query had AD set */
    bool last_edns;                            /* and an EDNS0 OPT record */
    bool last_tcp;                             /* the last response went over TCP */
    size_t last_len;  /* octets of the last response, without TCP's length prefix */
    char servers[64]; /* "127.0.0.1:port" for dns_config.servers */
    uint8_t buf[4096];
};

/*
 * testlib_dns_start - s serving rows (n_rows at most TESTLIB_DNS_ROWS_MAX)
 * on loop, over UDP and TCP; fails the cmocka test if the sockets cannot
 * be made. s must stay put until the loop has released its handles.
 */
void testlib_dns_start(struct testlib_dns *s,
                       uv_loop_t *loop,
                       const struct testlib_dns_row *rows,
                       size_t n_rows);

/* testlib_dns_count - queries the row of (name, type) got; fails the test if there is none. */
unsigned testlib_dns_count(const struct testlib_dns *s, const char *name, uint16_t type);

/* testlib_dns_tcp_count - of those, the queries that came over TCP. */
unsigned testlib_dns_tcp_count(const struct testlib_dns *s, const char *name, uint16_t type);

/*
 * testlib_dns_close - close the sockets: UDP, the listener and every TCP
 * connection; the loop's next run releases them. A second call does nothing.
 */
void testlib_dns_close(struct testlib_dns *s);

#endif
