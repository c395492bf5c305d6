/*
 * dns_parse.c - a raw DNS response (RFC 1035 section 4.1) into the status
 * class and records of net/dns.h: MX, A, AAAA, TXT, and TLSA (RFC 6698
 * section 2.1), which c-ares 1.18 has no parser for. Pure: no I/O, no
 * c-ares, no libuv, so that it can be fuzzed (tests/fuzz/fuzz_dns_parse.c).
 *
 * Owns nothing beyond the struct dns_parsed it fills. Exports dns_parse,
 * dns_parsed_clear, dns_record_size. Errors: HAMR_EPROTO (malformed),
 * HAMR_ENOMEM.
 *
 * Security note: parses untrusted network input. Every read is checked
 * against the message length; names are followed through compression
 * pointers only backwards (each pointer must point before the one it came
 * from, so a loop cannot be written) and to at most 255 octets.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>

#include "util/err.h"
#include "net/dns_parse.h"

/* Header octets, and the bits and types read here (RFC 1035 4.1.1, RFC 4035 3.2.3). */
#define DNS_PARSE_HEADER 12
#define DNS_PARSE_QR 0x80     /* octet 2 */
#define DNS_PARSE_TC 0x02     /* octet 2 */
#define DNS_PARSE_AD 0x20     /* octet 3 */
#define DNS_PARSE_RR_FIXED 10 /* type, class, TTL, RDLENGTH after the owner name */
#define DNS_PARSE_RR_MIN 11   /* the smallest record: root owner and no rdata */
#define DNS_PARSE_CLASS_IN 1
#define DNS_PARSE_TYPE_CNAME 5
#define DNS_PARSE_TYPE_SOA 6

/* dns_parse_rr - one resource record's fixed part; rdata is an offset into the message. */
struct dns_parse_rr {
    uint16_t type, klass;
    uint32_t ttl;
    size_t rdata, rdlen;
};

/* dns_parse_u16 - the big-endian 16 bits at p. */
static uint16_t dns_parse_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* dns_parse_u32 - the big-endian 32 bits at p. */
static uint32_t dns_parse_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* dns_parse_fail - HAMR_EPROTO, with why. */
static int dns_parse_fail(struct dns_parsed *out, const char *why)
{
    snprintf(out->why, sizeof(out->why), "malformed answer: %s", why);
    return HAMR_EPROTO;
}

/* dns_parse_host_char - a character a host name label may carry (letters, digits, '-', '_'). */
static bool dns_parse_host_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/*
 * dns_parse_name - the name at *pos: *pos moves past it as it stands in the
 * message (a pointer ends it), and with text not NULL its text (no trailing
 * dot, "" for the root, at most DNS_NAME_MAX) goes there, which also
 * requires host name characters. 0 or HAMR_EPROTO.
 */
static int dns_parse_name(const uint8_t *msg,
                          size_t len,
                          size_t *pos,
                          char *text,
                          struct dns_parsed *out)
{
    size_t p = *pos, after = 0, wire = 1, o = 0;
    size_t limit = *pos; /* a pointer must point before this: targets only decrease */
    bool jumped = false;

    for (;;) {
        if (p >= len)
            return dns_parse_fail(out, "name runs past the end");
        uint8_t l = msg[p];
        if ((l & 0xC0) == 0xC0) {
            if (p + 1 >= len)
                return dns_parse_fail(out, "name runs past the end");
            size_t target = (size_t)(l & 0x3F) << 8 | msg[p + 1];
            if (target >= limit)
                return dns_parse_fail(out, "compression pointer not backwards");
            if (!jumped)
                after = p + 2;
            jumped = true;
            limit = target;
            p = target;
            continue;
        }
        if (l & 0xC0)
            return dns_parse_fail(out, "unknown label type");
        if (l == 0)
            break;
        if (p + 1 + l > len)
            return dns_parse_fail(out, "label runs past the end");
        wire += 1u + l;
        if (wire > 255)
            return dns_parse_fail(out, "name longer than 255 octets");
        if (text) {
            if (o > 0)
                text[o++] = '.';
            for (size_t i = 0; i < l; i++) {
                if (!dns_parse_host_char(msg[p + 1 + i]))
                    return dns_parse_fail(out, "host name with a character not allowed");
                text[o++] = (char)msg[p + 1 + i];
            }
        }
        p += 1u + l;
    }
    if (text)
        text[o] = '\0'; /* wire <= 255 keeps o <= DNS_NAME_MAX */
    *pos = jumped ? after : p + 1;
    return 0;
}

/* dns_parse_rr - the record at *pos into rr; *pos moves past its rdata. 0 or HAMR_EPROTO. */
static int dns_parse_rr(const uint8_t *msg,
                        size_t len,
                        size_t *pos,
                        struct dns_parse_rr *rr,
                        struct dns_parsed *out)
{
    int rv = dns_parse_name(msg, len, pos, NULL, out);
    if (rv != 0)
        return rv;
    if (len - *pos < DNS_PARSE_RR_FIXED)
        return dns_parse_fail(out, "record cut short");
    const uint8_t *f = msg + *pos;
    rr->type = dns_parse_u16(f);
    rr->klass = dns_parse_u16(f + 2);
    rr->ttl = dns_parse_u32(f + 4);
    if (rr->ttl > INT32_MAX)
        rr->ttl = 0; /* RFC 2181 section 8: a TTL with the top bit set is zero */
    rr->rdlen = dns_parse_u16(f + 8);
    rr->rdata = *pos + DNS_PARSE_RR_FIXED;
    if (rr->rdlen > len - rr->rdata)
        return dns_parse_fail(out, "rdata runs past the end");
    *pos = rr->rdata + rr->rdlen;
    return 0;
}

/* dns_record_size - the record struct of type. */
size_t dns_record_size(enum dns_type type)
{
    switch (type) {
        case DNS_TYPE_MX:
            return sizeof(struct dns_mx);
        case DNS_TYPE_A:
        case DNS_TYPE_AAAA:
            return sizeof(struct dns_addr);
        case DNS_TYPE_TXT:
            return sizeof(struct dns_txt);
        case DNS_TYPE_TLSA:
            return sizeof(struct dns_tlsa);
    }
    return 0;
}

/* dns_parse_mx - MX rdata (RFC 1035 3.3.9): preference, then exchange filling the rdata. */
static int dns_parse_mx(const uint8_t *msg,
                        size_t len,
                        const struct dns_parse_rr *rr,
                        struct dns_mx *mx,
                        struct dns_parsed *out)
{
    if (rr->rdlen < 3)
        return dns_parse_fail(out, "MX rdata too short");
    mx->pref = dns_parse_u16(msg + rr->rdata);
    size_t pos = rr->rdata + 2;
    /* Bounded by the rdata, so that a name cannot borrow octets of the next record. */
    int rv = dns_parse_name(msg, rr->rdata + rr->rdlen, &pos, mx->host, out);
    if (rv != 0)
        return rv;
    if (pos != rr->rdata + rr->rdlen)
        return dns_parse_fail(out, "MX rdata longer than its name");
    return 0;
}

/* dns_parse_addr - A (RFC 1035 3.4.1) or AAAA (RFC 3596 2.2) rdata: exactly 4 or 16 octets. */
static int dns_parse_addr(const uint8_t *msg,
                          const struct dns_parse_rr *rr,
                          struct dns_addr *a,
                          struct dns_parsed *out)
{
    size_t want = rr->type == DNS_TYPE_A ? 4 : 16;
    if (rr->rdlen != want)
        return dns_parse_fail(out, "address of the wrong length");
    a->family = rr->type == DNS_TYPE_A ? AF_INET : AF_INET6;
    memcpy(a->addr, msg + rr->rdata, want);
    a->ttl = rr->ttl;
    return 0;
}

/*
 * dns_parse_txt - TXT rdata (RFC 1035 3.3.14): one or more length-prefixed
 * strings, which must fill the rdata exactly; joined into the blob at *used.
 */
static int dns_parse_txt(const uint8_t *msg,
                         const struct dns_parse_rr *rr,
                         struct dns_txt *t,
                         uint8_t *blob,
                         size_t *used,
                         struct dns_parsed *out)
{
    if (rr->rdlen == 0)
        return dns_parse_fail(out, "TXT without a string");
    uint8_t *dst = blob + *used;
    size_t p = 0, n = 0;
    while (p < rr->rdlen) {
        size_t l = msg[rr->rdata + p];
        if (l > rr->rdlen - p - 1)
            return dns_parse_fail(out, "TXT string runs past its rdata");
        memcpy(dst + n, msg + rr->rdata + p + 1, l);
        n += l;
        p += 1 + l;
    }
    dst[n] = '\0';
    t->text = (const char *)dst;
    t->len = n;
    *used += n + 1;
    return 0;
}

/* dns_parse_tlsa - TLSA rdata (RFC 6698 2.1): usage, selector, matching type, then the data. */
static int dns_parse_tlsa(const uint8_t *msg,
                          const struct dns_parse_rr *rr,
                          struct dns_tlsa *t,
                          uint8_t *blob,
                          size_t *used,
                          struct dns_parsed *out)
{
    if (rr->rdlen < 3)
        return dns_parse_fail(out, "TLSA rdata too short");
    const uint8_t *p = msg + rr->rdata;
    t->usage = p[0];
    t->selector = p[1];
    t->mtype = p[2];
    t->len = rr->rdlen - 3;
    memcpy(blob + *used, p + 3, t->len);
    t->data = blob + *used;
    *used += t->len;
    return 0;
}

/* dns_parse_record - one answer record of the type asked for into records[out->n]. */
static int dns_parse_record(const uint8_t *msg,
                            size_t len,
                            const struct dns_parse_rr *rr,
                            size_t *blob_used,
                            struct dns_parsed *out)
{
    if (out->n == DNS_PARSE_RECORDS_MAX)
        return dns_parse_fail(out, "too many records");
    char *rec = (char *)out->records + out->n * dns_record_size(out->type);
    int rv = 0;
    switch (out->type) {
        case DNS_TYPE_MX:
            rv = dns_parse_mx(msg, len, rr, (struct dns_mx *)rec, out);
            break;
        case DNS_TYPE_A:
        case DNS_TYPE_AAAA:
            rv = dns_parse_addr(msg, rr, (struct dns_addr *)rec, out);
            break;
        case DNS_TYPE_TXT:
            rv = dns_parse_txt(msg, rr, (struct dns_txt *)rec, out->blob, blob_used, out);
            break;
        case DNS_TYPE_TLSA:
            rv = dns_parse_tlsa(msg, rr, (struct dns_tlsa *)rec, out->blob, blob_used, out);
            break;
    }
    if (rv == 0)
        out->n++;
    return rv;
}

/*
 * dns_parse_soa - the negative TTL from an authority SOA (RFC 2308 section
 * 5): the smaller of its TTL and its MINIMUM, the last of the five numbers
 * after MNAME and RNAME (RFC 1035 3.3.13).
 */
static int dns_parse_soa(const uint8_t *msg,
                         size_t len,
                         const struct dns_parse_rr *rr,
                         struct dns_parsed *out)
{
    size_t end = rr->rdata + rr->rdlen, pos = rr->rdata;
    int rv = dns_parse_name(msg, end, &pos, NULL, out);
    if (rv == 0)
        rv = dns_parse_name(msg, end, &pos, NULL, out);
    if (rv != 0)
        return rv;
    if (end - pos != 20)
        return dns_parse_fail(out, "SOA rdata of the wrong length");
    uint32_t minimum = dns_parse_u32(msg + pos + 16);
    if (minimum > INT32_MAX)
        minimum = 0;
    uint32_t ttl = rr->ttl < minimum ? rr->ttl : minimum;
    if (!out->has_soa || ttl < out->ttl)
        out->ttl = ttl;
    out->has_soa = true;
    return 0;
}

/* dns_parse_answers - the answer section: records of the type, CNAMEs counted for the TTL. */
static int dns_parse_answers(const uint8_t *msg,
                             size_t len,
                             size_t *pos,
                             unsigned count,
                             struct dns_parsed *out)
{
    size_t blob_used = 0;
    bool any_ttl = false;
    for (unsigned i = 0; i < count; i++) {
        struct dns_parse_rr rr;
        int rv = dns_parse_rr(msg, len, pos, &rr, out);
        if (rv != 0)
            return rv;
        if (rr.klass != DNS_PARSE_CLASS_IN)
            continue;
        /*
         * The owner names are not compared with the question: a resolver
         * that followed CNAMEs answers with records owned by the last
         * target, and c-ares already checked that the question is ours.
         */
        if (rr.type == out->type) {
            rv = dns_parse_record(msg, len, &rr, &blob_used, out);
            if (rv != 0)
                return rv;
        } else if (rr.type != DNS_PARSE_TYPE_CNAME) {
            continue; /* RRSIGs and the like */
        }
        if (!any_ttl || rr.ttl < out->ttl)
            out->ttl = rr.ttl;
        any_ttl = true;
    }
    return 0;
}

/* dns_parse_authority - the authority section, for the SOA of a negative answer. */
static int dns_parse_authority(const uint8_t *msg,
                               size_t len,
                               size_t *pos,
                               unsigned count,
                               struct dns_parsed *out)
{
    out->ttl = 0;
    for (unsigned i = 0; i < count; i++) {
        struct dns_parse_rr rr;
        int rv = dns_parse_rr(msg, len, pos, &rr, out);
        if (rv != 0)
            return rv;
        if (rr.type == DNS_PARSE_TYPE_SOA && rr.klass == DNS_PARSE_CLASS_IN) {
            rv = dns_parse_soa(msg, len, &rr, out);
            if (rv != 0)
                return rv;
        }
    }
    return 0;
}

/* dns_parse_rcode - the status class of a response code (RFC 1035 4.1.1, RFC 2308 2.1). */
static void dns_parse_rcode(unsigned rcode, struct dns_parsed *out)
{
    static const char *const names[] = {"NOERROR",  "FORMERR", "SERVFAIL",
                                        "NXDOMAIN", "NOTIMP",  "REFUSED"};
    if (rcode == 0) {
        out->status = DNS_OK; /* NODATA if no record follows */
    } else if (rcode == 3) {
        out->status = DNS_NXDOMAIN;
    } else {
        out->status = DNS_TEMPFAIL;
        if (rcode < sizeof(names) / sizeof(names[0]))
            snprintf(out->why, sizeof(out->why), "server said %s", names[rcode]);
        else
            snprintf(out->why, sizeof(out->why), "server said RCODE %u", rcode);
    }
}

/* dns_parse_body - everything after the header: question, answers, authority. */
static int dns_parse_body(const uint8_t *msg, size_t len, struct dns_parsed *out)
{
    unsigned qd = dns_parse_u16(msg + 4), an = dns_parse_u16(msg + 6), ns = dns_parse_u16(msg + 8);
    if (qd != 1)
        return dns_parse_fail(out, "question count is not 1");
    size_t pos = DNS_PARSE_HEADER;
    int rv = dns_parse_name(msg, len, &pos, NULL, out);
    if (rv != 0)
        return rv;
    if (len - pos < 4)
        return dns_parse_fail(out, "question cut short");
    if (dns_parse_u16(msg + pos) != out->type || dns_parse_u16(msg + pos + 2) != DNS_PARSE_CLASS_IN)
        return dns_parse_fail(out, "question is not the one asked");
    pos += 4;
    /* A count larger than the rest of the message could hold is a lie: stop before allocating. */
    if ((size_t)an + ns > (len - pos) / DNS_PARSE_RR_MIN)
        return dns_parse_fail(out, "record counts exceed the message");
    if (out->status == DNS_TEMPFAIL)
        return 0;

    size_t want = an < DNS_PARSE_RECORDS_MAX ? an : DNS_PARSE_RECORDS_MAX;
    if (want > 0) {
        out->records = calloc(want, dns_record_size(out->type));
        /* TXT and TLSA data are copies of rdata, plus a NUL per TXT record. */
        if (out->type == DNS_TYPE_TXT || out->type == DNS_TYPE_TLSA)
            out->blob = malloc(len + DNS_PARSE_RECORDS_MAX);
        if (!out->records ||
            (!out->blob && (out->type == DNS_TYPE_TXT || out->type == DNS_TYPE_TLSA)))
            return HAMR_ENOMEM;
        out->bytes =
            want * dns_record_size(out->type) + (out->blob ? len + DNS_PARSE_RECORDS_MAX : 0);
    }
    rv = dns_parse_answers(msg, len, &pos, an, out);
    if (rv != 0)
        return rv;
    /* An NXDOMAIN with records of the type contradicts itself (a CNAME chain may precede it). */
    if (out->status == DNS_NXDOMAIN && out->n > 0)
        return dns_parse_fail(out, "records with NXDOMAIN");
    if (out->status == DNS_OK && out->n > 0)
        return 0;
    if (out->status == DNS_OK)
        out->status = DNS_NODATA;
    return dns_parse_authority(msg, len, &pos, ns, out);
}

/* dns_parse - header checks, then the body; on failure nothing stays allocated. */
int dns_parse(const uint8_t *msg, size_t len, enum dns_type type, struct dns_parsed *out)
{
    memset(out, 0, sizeof(*out));
    out->type = type;
    if (dns_record_size(type) == 0)
        return dns_parse_fail(out, "unknown type");
    if (len < DNS_PARSE_HEADER)
        return dns_parse_fail(out, "shorter than a header");
    if (!(msg[2] & DNS_PARSE_QR))
        return dns_parse_fail(out, "not a response");
    /* c-ares retries over TCP on TC; a truncated answer that still reaches us is not whole. */
    if (msg[2] & DNS_PARSE_TC)
        return dns_parse_fail(out, "truncated (TC)");
    out->ad = (msg[3] & DNS_PARSE_AD) != 0;
    dns_parse_rcode(msg[3] & 0x0F, out);
    int rv = dns_parse_body(msg, len, out);
    if (rv != 0) {
        char why[sizeof(out->why)];
        memcpy(why, out->why, sizeof(why));
        dns_parsed_clear(out);
        memcpy(out->why, why, sizeof(why));
    }
    return rv;
}

/* dns_parsed_clear - free records and blob. */
void dns_parsed_clear(struct dns_parsed *p)
{
    free(p->records);
    free(p->blob);
    memset(p, 0, sizeof(*p));
}
