/*
 * smtpd_proxy.c - the PROXY protocol header a load balancer puts before the
 * SMTP conversation (HAProxy's proxy-protocol.txt, versions 1 and 2).
 *
 * Owns: nothing but the struct smtpd_proxy_parser its caller embeds. No
 * sockets, no clock, no allocation: the caller feeds octets as they arrive
 * and enforces the deadline. Exports smtpd_proxy.h.
 *
 * The version is told by the first octet: 'P' starts a v1 text line
 * ("PROXY TCP4 src dst sport dport\r\n"), 0x0D the v2 binary signature.
 * Anything else is not a PROXY header. The parser is resumable: it keeps
 * what it needs (at most the 107-octet v1 line, or the 16 fixed v2 octets
 * and 36 of addresses) and skips v2 TLVs without storing them, so a header
 * dribbled one octet at a time parses the same as one read.
 *
 * Errors: HAMR_EPROTO with a constant reason string for the log.
 *
 * Security: parses untrusted network input (the balancer is trusted only
 * once the caller has checked its address; until then this could be anyone).
 * It is strict, as the spec asks ("the receiver must not try to guess"):
 * exactly one space between v1 fields, CRLF only, no leading zeros in IPv4
 * octets or ports, ports at most 65535, v2 version 2 only, PROXY only over
 * TCP with an IPv4 or IPv6 source, TLVs that fit their header exactly, and
 * a length cap (SMTPD_PROXY_V2_LEN_MAX). A header that asks us to fall back
 * to the socket address (v1 UNKNOWN, v2 PROXY with AF_UNSPEC or AF_UNIX)
 * fails: the socket address is the balancer's own, and a balancer is often
 * inside relay_networks, so taking it would make every client a relay client.
 * Only v2 LOCAL, the balancer's own health check, uses the socket address.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtpd_proxy.h"

static const uint8_t smtpd_proxy_v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                               0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char smtpd_proxy_v1_prefix[] = "PROXY ";

#define SMTPD_PROXY_V2_CMD_LOCAL 0x0
#define SMTPD_PROXY_V2_CMD_PROXY 0x1
#define SMTPD_PROXY_V2_FAM_UNSPEC 0x0
#define SMTPD_PROXY_V2_FAM_INET 0x1
#define SMTPD_PROXY_V2_FAM_INET6 0x2
#define SMTPD_PROXY_V2_FAM_UNIX 0x3
#define SMTPD_PROXY_V2_STREAM 0x1
#define SMTPD_PROXY_V2_INET_LEN 12
#define SMTPD_PROXY_V2_INET6_LEN 36

/* smtpd_proxy_parser_init - ready for the first octet. */
void smtpd_proxy_parser_init(struct smtpd_proxy_parser *p)
{
    memset(p, 0, sizeof(*p));
    p->phase = SMTPD_PROXY_PHASE_START;
}

/* smtpd_proxy_fail - the header is bad: remember why; every later call fails too. */
static int smtpd_proxy_fail(struct smtpd_proxy_parser *p, const char *reason)
{
    p->phase = SMTPD_PROXY_PHASE_FAILED;
    p->reason = reason;
    return HAMR_EPROTO;
}

/* smtpd_proxy_done - the header is complete. */
static int smtpd_proxy_done(struct smtpd_proxy_parser *p)
{
    p->phase = SMTPD_PROXY_PHASE_DONE;
    return 1;
}

/* smtpd_proxy_text - address text; IPv4-mapped IPv6 as IPv4, like the socket peer. */
static void smtpd_proxy_text(int family, const uint8_t *addr, char *out, size_t outlen)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    if (family == AF_INET6 && memcmp(addr, v4mapped, sizeof(v4mapped)) == 0)
        inet_ntop(AF_INET, addr + 12, out, (socklen_t)outlen);
    else
        inet_ntop(family, addr, out, (socklen_t)outlen);
}

/* ------------------------------------------------------------------ */
/* Version 1: one text line                                           */
/* ------------------------------------------------------------------ */

/*
 * smtpd_proxy_v1_ipv4 - dotted quad, each octet 0..255 in 1..3 digits
 * without a leading zero ("01" could be read as octal by some parsers, so
 * two readers could disagree on the client's address).
 */
static bool smtpd_proxy_v1_ipv4(const char *s, uint8_t out[4])
{
    for (int i = 0; i < 4; i++) {
        unsigned v = 0, digits = 0;
        for (; *s >= '0' && *s <= '9'; s++, digits++) {
            if (digits == 3)
                return false;
            v = v * 10 + (unsigned)(*s - '0');
        }
        if (digits == 0 || v > 255 || (digits > 1 && s[-(int)digits] == '0'))
            return false;
        out[i] = (uint8_t)v;
        if (i < 3 && *s++ != '.')
            return false;
    }
    return *s == '\0';
}

/* smtpd_proxy_v1_ipv6 - an IPv6 literal as inet_pton reads it; it must contain ':'. */
static bool smtpd_proxy_v1_ipv6(const char *s, uint8_t out[16])
{
    return strchr(s, ':') != NULL && strlen(s) < SMTPD_PROXY_ADDR_TEXT_MAX &&
           inet_pton(AF_INET6, s, out) == 1;
}

/* smtpd_proxy_v1_port - decimal 0..65535, no sign, no leading zero. */
static bool smtpd_proxy_v1_port(const char *s, uint16_t *port)
{
    unsigned v = 0;
    size_t digits = 0;

    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        if (digits == 5)
            return false;
        v = v * 10 + (unsigned)(*s - '0');
    }
    if (*s != '\0' || digits == 0 || v > 65535 || (digits > 1 && s[-(int)digits] == '0'))
        return false;
    *port = (uint16_t)v;
    return true;
}

/*
 * smtpd_proxy_v1_line - the whole line is in buf (NUL-terminated, CRLF
 * removed): "PROXY" SP proto SP src SP dst SP sport SP dport.
 */
static int smtpd_proxy_v1_line(struct smtpd_proxy_parser *p)
{
    static const char *const missing[] = {
        NULL,
        "v1: missing protocol",
        "v1: bad or missing source address",
        "v1: bad or missing destination address",
        "v1: bad or missing source port",
        "v1: bad or missing destination port",
    };
    char *field[6];
    size_t n = 0;
    bool extra = false;
    char *s = (char *)p->buf;

    /* Split at every single space; an empty field (two spaces) fails its check below. */
    for (;;) {
        if (n == HAMR_ARRAY_LEN(field)) {
            extra = true;
            break;
        }
        field[n++] = s;
        char *sp = strchr(s, ' ');
        if (sp == NULL)
            break;
        *sp = '\0';
        s = sp + 1;
    }

    struct smtpd_proxy_header *h = &p->hdr;
    if (n < 2)
        return smtpd_proxy_fail(p, missing[1]);
    if (strcmp(field[1], "TCP4") == 0) {
        h->family = AF_INET;
    } else if (strcmp(field[1], "TCP6") == 0) {
        h->family = AF_INET6;
    } else if (strcmp(field[1], "UNKNOWN") == 0) {
        /* The balancer does not know the client: see the file comment. */
        return smtpd_proxy_fail(p, "v1: UNKNOWN protocol, no client address");
    } else {
        return smtpd_proxy_fail(p, "v1: bad protocol");
    }
    bool v4 = h->family == AF_INET;
    if (n < 3 || !(v4 ? smtpd_proxy_v1_ipv4(field[2], h->src_addr)
                      : smtpd_proxy_v1_ipv6(field[2], h->src_addr)))
        return smtpd_proxy_fail(p, missing[2]);
    if (n < 4 || !(v4 ? smtpd_proxy_v1_ipv4(field[3], h->dst_addr)
                      : smtpd_proxy_v1_ipv6(field[3], h->dst_addr)))
        return smtpd_proxy_fail(p, missing[3]);
    if (n < 5 || !smtpd_proxy_v1_port(field[4], &h->src_port))
        return smtpd_proxy_fail(p, missing[4]);
    if (n < 6 || !smtpd_proxy_v1_port(field[5], &h->dst_port))
        return smtpd_proxy_fail(p, missing[5]);
    if (extra)
        return smtpd_proxy_fail(p, "v1: too many fields");
    h->version = 1;
    smtpd_proxy_text(h->family, h->src_addr, h->src_text, sizeof(h->src_text));
    smtpd_proxy_text(h->family, h->dst_addr, h->dst_text, sizeof(h->dst_text));
    return smtpd_proxy_done(p);
}

/*
 * smtpd_proxy_v1_octet - one more octet of the line. The line is at most
 * SMTPD_PROXY_V1_MAX octets with its CRLF; a CR must be followed by LF and
 * nothing but printable ASCII may come before it.
 */
static int smtpd_proxy_v1_octet(struct smtpd_proxy_parser *p, uint8_t c)
{
    if (p->have < sizeof(smtpd_proxy_v1_prefix) - 1 && c != (uint8_t)smtpd_proxy_v1_prefix[p->have])
        return smtpd_proxy_fail(p, "v1: line does not start with \"PROXY \"");
    bool after_cr = p->have > 0 && p->buf[p->have - 1] == '\r';
    if (c == '\n') {
        if (!after_cr)
            return smtpd_proxy_fail(p, "v1: LF without CR");
        p->buf[p->have - 1] = '\0';
        return smtpd_proxy_v1_line(p);
    }
    if (after_cr)
        return smtpd_proxy_fail(p, "v1: CR without LF");
    if (c != '\r' && (c < 0x20 || c > 0x7e))
        return smtpd_proxy_fail(p, "v1: control or non-ASCII octet");
    /* This octet and the LF still owed must fit in the line. */
    if (p->have + 2 > SMTPD_PROXY_V1_MAX)
        return smtpd_proxy_fail(p, "v1: line longer than 107 octets");
    p->buf[p->have++] = c;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Version 2: binary                                                  */
/* ------------------------------------------------------------------ */

/* smtpd_proxy_v2_addresses - the address block is complete: decode it. */
static void smtpd_proxy_v2_addresses(struct smtpd_proxy_parser *p)
{
    struct smtpd_proxy_header *h = &p->hdr;
    const uint8_t *a = p->buf + SMTPD_PROXY_V2_HEADER;
    size_t alen = h->family == AF_INET ? 4 : 16;

    memcpy(h->src_addr, a, alen);
    memcpy(h->dst_addr, a + alen, alen);
    h->src_port = (uint16_t)(a[2 * alen] << 8 | a[2 * alen + 1]);
    h->dst_port = (uint16_t)(a[2 * alen + 2] << 8 | a[2 * alen + 3]);
    smtpd_proxy_text(h->family, h->src_addr, h->src_text, sizeof(h->src_text));
    smtpd_proxy_text(h->family, h->dst_addr, h->dst_text, sizeof(h->dst_text));
}

/* smtpd_proxy_v2_family - octet 13 of a PROXY command: only TCP over IPv4 or IPv6. */
static int smtpd_proxy_v2_family(struct smtpd_proxy_parser *p, uint8_t c)
{
    unsigned family = c >> 4, transport = c & 0x0f;

    switch (family) {
        case SMTPD_PROXY_V2_FAM_INET:
            p->hdr.family = AF_INET;
            p->v2_addr_len = SMTPD_PROXY_V2_INET_LEN;
            break;
        case SMTPD_PROXY_V2_FAM_INET6:
            p->hdr.family = AF_INET6;
            p->v2_addr_len = SMTPD_PROXY_V2_INET6_LEN;
            break;
        case SMTPD_PROXY_V2_FAM_UNSPEC:
        case SMTPD_PROXY_V2_FAM_UNIX:
            /* The spec would have us use the socket address: see the file comment. */
            return smtpd_proxy_fail(p, "v2: PROXY with UNSPEC or UNIX family, no client address");
        default:
            return smtpd_proxy_fail(p, "v2: bad address family");
    }
    if (transport != SMTPD_PROXY_V2_STREAM)
        return smtpd_proxy_fail(p, "v2: transport is not STREAM");
    return 0;
}

/* smtpd_proxy_v2_head_octet - one of the 16 fixed octets. */
static int smtpd_proxy_v2_head_octet(struct smtpd_proxy_parser *p, uint8_t c)
{
    p->buf[p->have++] = c;
    if (p->have <= sizeof(smtpd_proxy_v2_sig)) {
        if (c != smtpd_proxy_v2_sig[p->have - 1])
            return smtpd_proxy_fail(p, "v2: bad signature");
        return 0;
    }
    if (p->have == 13) {
        if ((c >> 4) != SMTPD_PROXY_V2_VERSION)
            return smtpd_proxy_fail(p, "v2: version is not 2");
        if ((c & 0x0f) > SMTPD_PROXY_V2_CMD_PROXY)
            return smtpd_proxy_fail(p, "v2: bad command");
        p->hdr.local = (c & 0x0f) == SMTPD_PROXY_V2_CMD_LOCAL;
        return 0;
    }
    if (p->have == 14) {
        /* LOCAL: "the receiver must ignore the family" (proxy-protocol.txt 2.2). */
        return p->hdr.local ? 0 : smtpd_proxy_v2_family(p, c);
    }
    if (p->have < SMTPD_PROXY_V2_HEADER)
        return 0;

    p->v2_left = (size_t)p->buf[14] << 8 | p->buf[15];
    p->hdr.version = 2;
    if (p->v2_left > SMTPD_PROXY_V2_LEN_MAX)
        return smtpd_proxy_fail(p, "v2: length over 4096 octets");
    if (p->hdr.local) {
        p->phase = SMTPD_PROXY_PHASE_V2_SKIP;
        return p->v2_left == 0 ? smtpd_proxy_done(p) : 0;
    }
    if (p->v2_left < p->v2_addr_len)
        return smtpd_proxy_fail(p, "v2: length shorter than the addresses");
    p->phase = SMTPD_PROXY_PHASE_V2_ADDR;
    return 0;
}

/* smtpd_proxy_v2_addr_octet - one octet of the address block. */
static int smtpd_proxy_v2_addr_octet(struct smtpd_proxy_parser *p, uint8_t c)
{
    p->buf[p->have++] = c;
    p->v2_left--;
    if (p->have < SMTPD_PROXY_V2_HEADER + p->v2_addr_len)
        return 0;
    smtpd_proxy_v2_addresses(p);
    if (p->v2_left == 0)
        return smtpd_proxy_done(p);
    p->phase = SMTPD_PROXY_PHASE_V2_TLV;
    return 0;
}

/*
 * smtpd_proxy_v2_tlv_octet - one octet after the addresses: TLVs (type,
 * 16-bit length, value), skipped unread; each must end within the header.
 */
static int smtpd_proxy_v2_tlv_octet(struct smtpd_proxy_parser *p, uint8_t c)
{
    p->v2_left--;
    if (p->tlv_value_left > 0) {
        p->tlv_value_left--;
    } else {
        p->tlv_head[p->tlv_head_have++] = c;
        if (p->tlv_head_have == sizeof(p->tlv_head)) {
            size_t vlen = (size_t)p->tlv_head[1] << 8 | p->tlv_head[2];
            if (vlen > p->v2_left)
                return smtpd_proxy_fail(p, "v2: TLV runs past the header");
            p->tlv_value_left = vlen;
            p->tlv_head_have = 0;
        }
    }
    if (p->v2_left > 0)
        return 0;
    if (p->tlv_head_have != 0)
        return smtpd_proxy_fail(p, "v2: truncated TLV");
    return smtpd_proxy_done(p);
}

/* ------------------------------------------------------------------ */

/* smtpd_proxy_octet - one octet in the current phase: 0 more, 1 done, or HAMR_EPROTO. */
static int smtpd_proxy_octet(struct smtpd_proxy_parser *p, uint8_t c)
{
    switch (p->phase) {
        case SMTPD_PROXY_PHASE_START:
            if (c == (uint8_t)smtpd_proxy_v1_prefix[0]) {
                p->phase = SMTPD_PROXY_PHASE_V1;
                return smtpd_proxy_v1_octet(p, c);
            }
            if (c == smtpd_proxy_v2_sig[0]) {
                p->phase = SMTPD_PROXY_PHASE_V2_HEAD;
                return smtpd_proxy_v2_head_octet(p, c);
            }
            return smtpd_proxy_fail(p, "not a PROXY header");
        case SMTPD_PROXY_PHASE_V1:
            return smtpd_proxy_v1_octet(p, c);
        case SMTPD_PROXY_PHASE_V2_HEAD:
            return smtpd_proxy_v2_head_octet(p, c);
        case SMTPD_PROXY_PHASE_V2_ADDR:
            return smtpd_proxy_v2_addr_octet(p, c);
        case SMTPD_PROXY_PHASE_V2_TLV:
            return smtpd_proxy_v2_tlv_octet(p, c);
        case SMTPD_PROXY_PHASE_V2_SKIP:
            return --p->v2_left == 0 ? smtpd_proxy_done(p) : 0;
        case SMTPD_PROXY_PHASE_DONE:
        case SMTPD_PROXY_PHASE_FAILED:
            break;
    }
    HAMR_ASSERT(!"smtpd_proxy_octet after the end");
    return HAMR_EPROTO;
}

/* smtpd_proxy_parse - feed octets; take no more than the header. */
int smtpd_proxy_parse(struct smtpd_proxy_parser *p, const void *data, size_t len, size_t *used)
{
    const uint8_t *in = data;
    size_t i = 0;
    int rc = 0;

    *used = 0;
    if (p->phase == SMTPD_PROXY_PHASE_DONE)
        return 1;
    if (p->phase == SMTPD_PROXY_PHASE_FAILED)
        return HAMR_EPROTO;
    while (i < len && rc == 0) {
        rc = smtpd_proxy_octet(p, in[i++]);
        p->total++;
    }
    *used = i;
    return rc;
}

/* smtpd_proxy_cidr_match - is addr (family, 4 or 16 octets) inside c? */
static bool smtpd_proxy_cidr_match(const struct smtpd_cidr *c, int family, const uint8_t *addr)
{
    unsigned bits = family == AF_INET ? 32 : 128;
    if (c->family != family || c->prefix > bits)
        return false;
    unsigned full = c->prefix / 8, rest = c->prefix % 8;
    if (memcmp(c->addr, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (c->addr[full] & mask) == (addr[full] & mask);
}

/* smtpd_proxy_addr_in - is the address literal inside one of the networks? */
bool smtpd_proxy_addr_in(const struct smtpd_cidr *networks, size_t n, const char *addr)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t a[16];
    int family = AF_INET;

    if (inet_pton(AF_INET, addr, a) != 1) {
        if (inet_pton(AF_INET6, addr, a) != 1)
            return false;
        family = AF_INET6;
        if (memcmp(a, v4mapped, sizeof(v4mapped)) == 0) {
            memmove(a, a + 12, 4);
            family = AF_INET;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (smtpd_proxy_cidr_match(&networks[i], family, a))
            return true;
    return false;
}
