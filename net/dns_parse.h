/* dns_parse.h - a DNS response message into the records and status class net/dns.h reports. */
#ifndef HAMR_NET_DNS_PARSE_H
#define HAMR_NET_DNS_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "net/dns.h"

/* Records of the type asked for that one answer may carry; more is refused as malformed. */
#define DNS_PARSE_RECORDS_MAX 128

/*
 * dns_parsed - one response, parsed. Owns records (an array of n struct
 * dns_mx, dns_addr, dns_txt or dns_tlsa as type says) and blob (the bytes
 * the TXT and TLSA records point into).
 */
struct dns_parsed {
    enum dns_status status;
    enum dns_type type;
    bool ad;
    /*
     * DNS_OK: the smallest TTL of the answer section's records (those of
     * the type and the CNAMEs leading to them). NXDOMAIN and NODATA: the
     * smaller of the authority SOA's TTL and its MINIMUM (RFC 2308 section 5);
     * has_soa false when there was none.
     */
    uint32_t ttl;
    bool has_soa;
    size_t n;
    void *records;
    uint8_t *blob;
    size_t bytes; /* allocated for records and blob: what the cache counts */
    char why[96]; /* DNS_TEMPFAIL, or the reason HAMR_EPROTO was returned */
};

/*
 * dns_parse - parse msg[0..len) (borrowed), the answer to a query for type.
 * 0: out holds the status class (SERVFAIL, REFUSED and the like give
 * DNS_TEMPFAIL) and the records; free with dns_parsed_clear. HAMR_EPROTO:
 * the message is malformed (bad counts, a name that loops or overruns,
 * rdata cut short, an MX host that is no host name, the TC bit), why says
 * how, nothing is allocated. HAMR_ENOMEM likewise.
 *
 * Security note: msg comes from the network; every read is bounds-checked.
 */
int dns_parse(const uint8_t *msg, size_t len, enum dns_type type, struct dns_parsed *out);

/* dns_parsed_clear - free what p owns and zero it; safe on a zeroed p. */
void dns_parsed_clear(struct dns_parsed *p);

/* dns_record_size - sizeof the record struct of type, 0 for a type net/dns.h does not know. */
size_t dns_record_size(enum dns_type type);

#endif
