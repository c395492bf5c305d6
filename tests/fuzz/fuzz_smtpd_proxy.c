/*
 * fuzz_smtpd_proxy.c - libFuzzer target for the PROXY protocol header
 * parser (net/smtpd_proxy, versions 1 and 2), with a differential property:
 * the parser is resumable, so the same octets must give the same answer
 * however they are cut into calls.
 *
 * Input:
 *   byte 0  bits 0-2 how many cuts follow (0..7).
 *   then    one byte per cut: the length of the next piece (0 is an empty
 *           call); the rest after the last cut is the final piece.
 *   rest    the connection's first octets (header and whatever follows).
 *
 * The rest is parsed three ways on fresh parsers: in one call, in the
 * pieces the cut bytes say, and one octet per call.
 *
 * Properties checked:
 *   - the three ways agree: return code, octets taken, phase, failure
 *     reason and every header field;
 *   - 0 (need more) takes every octet and leaves the parser in a middle
 *     phase; 1 (done) and HAMR_EPROTO take at least one octet, set DONE or
 *     FAILED, and HAMR_EPROTO always has a reason; after either, a further
 *     call returns the same and takes nothing;
 *   - a v1 header is at most 107 octets, starts "PROXY " and ends in CRLF;
 *     a TCP4 line is exactly what its fields print back as (no second way
 *     to write an address or port); a v2 header is 16 octets plus its length
 *     field, at most 16 + 4096, and its address block encodes back to what
 *     was read; a v2 LOCAL has no family or address;
 *   - an address is AF_INET or AF_INET6 and its text reads back (inet_pton)
 *     to the octets parsed (IPv4-mapped IPv6 shown as IPv4);
 *   - a v1 or v2 header starts with its own first octet: nothing else is
 *     ever taken for a header (SECURITY.md S18: no guessing).
 *
 * Security note: the input is arbitrary bytes, as from any peer before the
 * balancer's address has been checked.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "util/err.h"
#include "net/smtpd_proxy.h"
#include "fuzz_common.h"

#define FUZZ_PROXY_CUTS_MAX 7

static const uint8_t fuzz_proxy_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                           0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* fuzz_proxy_result - what one way of feeding ended with. */
struct fuzz_proxy_result {
    int rc;
    size_t used;
    struct smtpd_proxy_parser p;
};

/* fuzz_proxy_feed - one call; checks what every call must satisfy, returns rc. */
static int fuzz_proxy_feed(struct smtpd_proxy_parser *p, const uint8_t *d, size_t n, size_t *used)
{
    size_t before = p->total;
    int rc = smtpd_proxy_parse(p, d, n, used);
    FUZZ_CHECK(rc == 0 || rc == 1 || rc == HAMR_EPROTO);
    FUZZ_CHECK(*used <= n);
    FUZZ_CHECK(p->total == before + *used);
    if (rc == 0) {
        FUZZ_CHECK(*used == n);
        FUZZ_CHECK(p->phase != SMTPD_PROXY_PHASE_DONE && p->phase != SMTPD_PROXY_PHASE_FAILED);
    } else {
        FUZZ_CHECK(p->phase == (rc == 1 ? SMTPD_PROXY_PHASE_DONE : SMTPD_PROXY_PHASE_FAILED));
        FUZZ_CHECK(rc == 1 || p->reason != NULL);
    }
    return rc;
}

/* fuzz_proxy_finish - after 1 or HAMR_EPROTO a call returns the same and takes nothing. */
static void fuzz_proxy_finish(struct fuzz_proxy_result *r, const uint8_t *d, size_t n)
{
    if (r->rc == 0)
        return;
    size_t used = 99;
    struct smtpd_proxy_parser before;
    memcpy(&before, &r->p, sizeof(before));
    FUZZ_CHECK(smtpd_proxy_parse(&r->p, d, n, &used) == r->rc);
    FUZZ_CHECK(used == 0);
    FUZZ_CHECK(memcmp(&before, &r->p, sizeof(before)) == 0);
}

/* fuzz_proxy_whole - all n octets in one call. */
static void fuzz_proxy_whole(struct fuzz_proxy_result *r, const uint8_t *d, size_t n)
{
    smtpd_proxy_parser_init(&r->p);
    r->rc = fuzz_proxy_feed(&r->p, d, n, &r->used);
    fuzz_proxy_finish(r, d, n);
}

/* fuzz_proxy_pieces - the octets in calls of the given lengths, then the rest. */
static void fuzz_proxy_pieces(struct fuzz_proxy_result *r,
                              const uint8_t *d,
                              size_t n,
                              const uint8_t *cuts,
                              size_t n_cuts)
{
    size_t off = 0;
    smtpd_proxy_parser_init(&r->p);
    r->rc = 0;
    r->used = 0;
    for (size_t i = 0; i <= n_cuts && r->rc == 0; i++) {
        size_t len = n - off;
        if (i < n_cuts && cuts[i] < len)
            len = cuts[i];
        size_t used;
        r->rc = fuzz_proxy_feed(&r->p, d + off, len, &used);
        r->used += used;
        off += used;
    }
    fuzz_proxy_finish(r, d + off, n - off);
}

/* fuzz_proxy_octets - one octet per call (and one empty call at the start). */
static void fuzz_proxy_octets(struct fuzz_proxy_result *r, const uint8_t *d, size_t n)
{
    size_t used;
    smtpd_proxy_parser_init(&r->p);
    r->rc = fuzz_proxy_feed(&r->p, d, 0, &used);
    FUZZ_CHECK(r->rc == 0 && used == 0);
    r->used = 0;
    for (size_t i = 0; i < n && r->rc == 0; i++) {
        r->rc = fuzz_proxy_feed(&r->p, d + i, 1, &used);
        FUZZ_CHECK(used == 1);
        r->used++;
    }
    fuzz_proxy_finish(r, d + r->used, n - r->used);
}

/* fuzz_proxy_same_header - every field of two headers is equal. */
static void fuzz_proxy_same_header(const struct smtpd_proxy_header *a,
                                   const struct smtpd_proxy_header *b)
{
    FUZZ_CHECK(a->version == b->version);
    FUZZ_CHECK(a->local == b->local);
    FUZZ_CHECK(a->family == b->family);
    FUZZ_CHECK(memcmp(a->src_addr, b->src_addr, sizeof(a->src_addr)) == 0);
    FUZZ_CHECK(memcmp(a->dst_addr, b->dst_addr, sizeof(a->dst_addr)) == 0);
    FUZZ_CHECK(a->src_port == b->src_port);
    FUZZ_CHECK(a->dst_port == b->dst_port);
    FUZZ_CHECK(strcmp(a->src_text, b->src_text) == 0);
    FUZZ_CHECK(strcmp(a->dst_text, b->dst_text) == 0);
}

/* fuzz_proxy_same - two ways of feeding ended alike. */
static void fuzz_proxy_same(const struct fuzz_proxy_result *a, const struct fuzz_proxy_result *b)
{
    FUZZ_CHECK(a->rc == b->rc);
    FUZZ_CHECK(a->used == b->used);
    FUZZ_CHECK(a->p.phase == b->p.phase);
    FUZZ_CHECK(a->p.total == b->p.total);
    FUZZ_CHECK((a->p.reason == NULL) == (b->p.reason == NULL));
    FUZZ_CHECK(a->p.reason == NULL || strcmp(a->p.reason, b->p.reason) == 0);
    fuzz_proxy_same_header(&a->p.hdr, &b->p.hdr);
}

/* fuzz_proxy_check_text - text is a NUL-terminated address that reads back to addr. */
static void fuzz_proxy_check_text(int family, const uint8_t *addr, const char *text)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t back[16];
    FUZZ_CHECK(memchr(text, '\0', SMTPD_PROXY_ADDR_TEXT_MAX) != NULL);
    FUZZ_CHECK(fuzz_is_printable(text, strlen(text)) && text[0] != '\0');
    if (family == AF_INET6 && memcmp(addr, v4mapped, sizeof(v4mapped)) == 0) {
        FUZZ_CHECK(inet_pton(AF_INET, text, back) == 1);
        FUZZ_CHECK(memcmp(back, addr + 12, 4) == 0);
        return;
    }
    FUZZ_CHECK(inet_pton(family, text, back) == 1);
    FUZZ_CHECK(memcmp(back, addr, family == AF_INET ? 4 : 16) == 0);
}

/* fuzz_proxy_check_v1 - a v1 header: the line d[0..n) and what it said. */
static void fuzz_proxy_check_v1(const struct smtpd_proxy_header *h, const uint8_t *d, size_t n)
{
    FUZZ_CHECK(n <= SMTPD_PROXY_V1_MAX);
    FUZZ_CHECK(n >= 8 && memcmp(d, "PROXY ", 6) == 0);
    FUZZ_CHECK(d[n - 2] == '\r' && d[n - 1] == '\n');
    FUZZ_CHECK(fuzz_is_printable((const char *)d, n - 2));
    FUZZ_CHECK(!h->local);
    FUZZ_CHECK(h->family == AF_INET || h->family == AF_INET6);
    if (h->family == AF_INET) {
        /* Strict TCP4: exactly one way to write each field. */
        char line[SMTPD_PROXY_V1_MAX + 1];
        int len = snprintf(line, sizeof(line), "PROXY TCP4 %s %s %u %u\r\n", h->src_text,
                           h->dst_text, h->src_port, h->dst_port);
        FUZZ_CHECK(len > 0 && (size_t)len == n && memcmp(line, d, n) == 0);
    } else {
        FUZZ_CHECK(memcmp(d, "PROXY TCP6 ", 11) == 0);
    }
}

/* fuzz_proxy_check_v2 - a v2 header: d[0..n) and what it said. */
static void fuzz_proxy_check_v2(const struct smtpd_proxy_header *h, const uint8_t *d, size_t n)
{
    FUZZ_CHECK(n >= SMTPD_PROXY_V2_HEADER &&
               memcmp(d, fuzz_proxy_sig, sizeof(fuzz_proxy_sig)) == 0);
    size_t len = (size_t)d[14] << 8 | d[15];
    FUZZ_CHECK(len <= SMTPD_PROXY_V2_LEN_MAX);
    FUZZ_CHECK(n == SMTPD_PROXY_V2_HEADER + len);
    FUZZ_CHECK(d[12] >> 4 == SMTPD_PROXY_V2_VERSION);
    if (h->local) {
        FUZZ_CHECK((d[12] & 0x0f) == 0);
        FUZZ_CHECK(h->family == 0 && h->src_port == 0 && h->dst_port == 0);
        FUZZ_CHECK(h->src_text[0] == '\0' && h->dst_text[0] == '\0');
        return;
    }
    FUZZ_CHECK((d[12] & 0x0f) == 1);
    FUZZ_CHECK(h->family == AF_INET || h->family == AF_INET6);
    FUZZ_CHECK(d[13] == (h->family == AF_INET ? 0x11 : 0x21));
    /* The address block encodes back to what was read. */
    size_t alen = h->family == AF_INET ? 4 : 16;
    FUZZ_CHECK(len >= 2 * alen + 4);
    uint8_t block[36];
    memcpy(block, h->src_addr, alen);
    memcpy(block + alen, h->dst_addr, alen);
    block[2 * alen] = (uint8_t)(h->src_port >> 8);
    block[2 * alen + 1] = (uint8_t)h->src_port;
    block[2 * alen + 2] = (uint8_t)(h->dst_port >> 8);
    block[2 * alen + 3] = (uint8_t)h->dst_port;
    FUZZ_CHECK(memcmp(block, d + SMTPD_PROXY_V2_HEADER, 2 * alen + 4) == 0);
    /* What follows the addresses is whole TLVs. */
    size_t off = SMTPD_PROXY_V2_HEADER + 2 * alen + 4;
    while (off < n) {
        FUZZ_CHECK(off + 3 <= n);
        off += 3 + ((size_t)d[off + 1] << 8 | d[off + 2]);
    }
    FUZZ_CHECK(off == n);
}

/* fuzz_proxy_check_done - a complete header taken from d: the fields are consistent. */
static void fuzz_proxy_check_done(const struct fuzz_proxy_result *r, const uint8_t *d)
{
    const struct smtpd_proxy_header *h = &r->p.hdr;
    FUZZ_CHECK(r->p.reason == NULL);
    if (h->version == 1) {
        FUZZ_CHECK(d[0] == 'P');
        fuzz_proxy_check_v1(h, d, r->used);
    } else {
        FUZZ_CHECK(h->version == 2 && d[0] == 0x0D);
        fuzz_proxy_check_v2(h, d, r->used);
    }
    if (!h->local) {
        fuzz_proxy_check_text(h->family, h->src_addr, h->src_text);
        fuzz_proxy_check_text(h->family, h->dst_addr, h->dst_text);
    }
}

/* LLVMFuzzerInitialize - logs at debug level unless asked to be quiet. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    return 0;
}

/* LLVMFuzzerTestOneInput - one header, fed three ways. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    size_t n_cuts = fuzz_u8(&in) % (FUZZ_PROXY_CUTS_MAX + 1), got;
    const uint8_t *cuts = fuzz_take(&in, n_cuts, &got);
    n_cuts = got;
    const uint8_t *d = in.p;
    size_t n = in.n;

    static struct fuzz_proxy_result whole, pieces, octets;
    fuzz_proxy_whole(&whole, d, n);
    fuzz_proxy_pieces(&pieces, d, n, cuts, n_cuts);
    fuzz_proxy_octets(&octets, d, n);
    fuzz_proxy_same(&whole, &pieces);
    fuzz_proxy_same(&whole, &octets);

    if (whole.rc == HAMR_EPROTO) {
        FUZZ_CHECK(whole.used >= 1);
        /* Anything not starting like a header fails on its first octet. */
        FUZZ_CHECK(d[0] == 'P' || d[0] == 0x0D || whole.used == 1);
    } else if (whole.rc == 1) {
        fuzz_proxy_check_done(&whole, d);
    } else {
        FUZZ_CHECK(whole.used == n);
        FUZZ_CHECK(n <= SMTPD_PROXY_V2_HEADER + SMTPD_PROXY_V2_LEN_MAX);
    }
    return 0;
}
