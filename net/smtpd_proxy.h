/* smtpd_proxy.h - a resumable parser for the PROXY protocol header (v1 text, v2 binary). */
#ifndef HAMR_NET_SMTPD_PROXY_H
#define HAMR_NET_SMTPD_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/smtpd.h"

/* Longest v1 line, "PROXY TCP6 <39> <39> 65535 65535\r\n" (proxy-protocol.txt 2.1). */
#define SMTPD_PROXY_V1_MAX 107

/*
 * The v2 header (proxy-protocol.txt 2.2), byte by byte:
 *   0..11  signature 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
 *   12     version (high nibble, must be 2) | command (low: 0 LOCAL, 1 PROXY)
 *   13     family (high: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) | transport (low: 1 STREAM)
 *   14..15 length of what follows, big-endian: addresses, then TLVs
 *   INET:  src addr 4, dst addr 4, src port 2, dst port 2 (12 octets)
 *   INET6: src addr 16, dst addr 16, src port 2, dst port 2 (36 octets)
 *   TLV:   type 1, length 2 (big-endian), value
 */
#define SMTPD_PROXY_V2_HEADER 16
#define SMTPD_PROXY_V2_VERSION 2
/*
 * Most octets of addresses plus TLVs we take. The format allows 65535; a
 * balancer sends a few dozen (addresses, maybe ALPN, authority, SSL
 * details). A cap keeps a hostile peer from holding a connection open on
 * an endless header.
 */
#define SMTPD_PROXY_V2_LEN_MAX 4096

#define SMTPD_PROXY_ADDR_TEXT_MAX 46 /* INET6_ADDRSTRLEN */

/* smtpd_proxy_header - what a complete header said. */
struct smtpd_proxy_header {
    int version; /* 1 or 2 */
    bool local;  /* v2 LOCAL (a health check of the balancer): use the socket address */
    int family;  /* AF_INET or AF_INET6; 0 when local */
    uint8_t src_addr[16], dst_addr[16]; /* network byte order; IPv4 in the first 4 */
    uint16_t src_port, dst_port;
    /* Text of the addresses; an IPv4-mapped IPv6 address is shown as IPv4. */
    char src_text[SMTPD_PROXY_ADDR_TEXT_MAX];
    char dst_text[SMTPD_PROXY_ADDR_TEXT_MAX];
};

enum smtpd_proxy_phase {
    SMTPD_PROXY_PHASE_START,   /* nothing seen */
    SMTPD_PROXY_PHASE_V1,      /* in a text line */
    SMTPD_PROXY_PHASE_V2_HEAD, /* in the 16 fixed octets */
    SMTPD_PROXY_PHASE_V2_ADDR, /* in the address block */
    SMTPD_PROXY_PHASE_V2_TLV,  /* skipping TLVs */
    SMTPD_PROXY_PHASE_V2_SKIP, /* LOCAL: skipping whatever follows */
    SMTPD_PROXY_PHASE_DONE,
    SMTPD_PROXY_PHASE_FAILED,
};

/* smtpd_proxy_parser - the state of one header; embed it, smtpd_proxy_parser_init it. */
struct smtpd_proxy_parser {
    enum smtpd_proxy_phase phase;
    uint8_t buf[SMTPD_PROXY_V1_MAX + 1]; /* the v1 line, or the v2 head and addresses */
    size_t have;                         /* octets in buf */
    size_t total;                        /* octets of the header taken so far */
    size_t v2_addr_len;                  /* 12 or 36 */
    size_t v2_left;                      /* octets of the v2 header still to come */
    uint8_t tlv_head[3];                 /* the TLV being skipped */
    size_t tlv_head_have;
    size_t tlv_value_left;
    const char *reason; /* why it failed; a constant string */
    struct smtpd_proxy_header hdr;
};

/* smtpd_proxy_parser_init - ready for the first octet. */
void smtpd_proxy_parser_init(struct smtpd_proxy_parser *p);

/*
 * smtpd_proxy_parse - feed len octets of the connection's first input (borrowed for
 * the call). Octets are taken only up to the end of the header: *used says
 * how many, and the rest belongs to the protocol that follows.
 *   0           need more; all len octets were taken (*used == len).
 *   1           the header is complete: p->hdr holds it.
 *   HAMR_EPROTO not a valid header (p->reason says why); give up the connection.
 * After 1 or HAMR_EPROTO, further calls return the same and take nothing.
 *
 * Security: parses untrusted network input. Strict by design: the spec
 * tells receivers not to guess, so anything not exactly as specified fails.
 */
int smtpd_proxy_parse(struct smtpd_proxy_parser *p, const void *data, size_t len, size_t *used);

/*
 * smtpd_proxy_addr_in - is addr (an IPv4 or IPv6 literal; IPv4-mapped IPv6 counts
 * as IPv4) inside one of the n networks? A string that is no address is in
 * none.
 */
bool smtpd_proxy_addr_in(const struct smtpd_cidr *networks, size_t n, const char *addr);

#endif
