/*
 * test_smtpd_proxy.c - net/smtpd_proxy (the PROXY protocol header parser)
 * and the PROXY protocol on the real listener, net/smtpd_server.
 *
 * Parser: one table of v1 and v2 vectors (HAProxy's proxy-protocol.txt and
 * SECURITY.md S18: missing fields, ports above 65535 or with leading zeros,
 * leading zeros in IPv4 octets, lines over 107 octets, bare LF, UNKNOWN, v2
 * signature, version, command, family, transport, length and TLV errors,
 * LOCAL), each fed whole, one octet at a time, and split in two at every
 * offset, checking the result, the reason, the addresses and ports and the
 * number of octets taken (never past the header).
 *
 * Server: a libuv loop with smtpd_server on 127.0.0.1 and libuv clients in
 * the same loop. Valid v1 and v2 headers set the client address the sink
 * sees and relay control uses; v2 LOCAL keeps the socket address; a peer
 * outside proxy_networks, garbage, a header cut short by EOF and a header
 * that never completes (proxy_timeout) are closed without a greeting; a
 * header dribbled one octet per loop turn works; input after the header is
 * the session's first input (an early talker under greet_delay); a PROXY
 * line after the greeting is an ordinary unknown command; a connection
 * still owing its header counts against max_sessions.
 *
 * Every loop runs UV_RUN_ONCE a bounded number of times under a guard timer.
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

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtpd.h"
#include "net/smtpd_proxy.h"
#include "net/smtpd_server.h"
#include "tests/lib/testlib_loop.h"

/* ------------------------------------------------------------------ */
/* Parser vectors                                                      */
/* ------------------------------------------------------------------ */

#define V(s) s, sizeof(s) - 1
#define SIG "\r\n\r\n\0\r\nQUIT\n"
/* v2 PROXY TCP over IPv4, 1.2.3.4:5000 -> 5.6.7.8:25 */
#define V2_INET_ADDR   \
    "\x01\x02\x03\x04" \
    "\x05\x06\x07\x08" \
    "\x13\x88"         \
    "\x00\x19"
/* v2 PROXY TCP over IPv6, [2001:db8::1]:5000 -> [2001:db8::2]:25 */
#define V2_INET6_ADDR                                                  \
    "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" \
    "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02" \
    "\x13\x88"                                                         \
    "\x00\x19"

struct vec {
    const char *label;
    const char *in;
    size_t len;
    int rc;             /* 1 done, 0 need more, HAMR_EPROTO */
    size_t used;        /* octets taken; 0 means len */
    const char *reason; /* for HAMR_EPROTO */
    int version;
    bool local;
    int family;
    const char *src, *dst;
    uint16_t sport, dport;
};

#define OK4(lbl, s, a, b, p, q)                              \
    {                                                        \
        lbl, V(s), 1, 0, NULL, 1, false, AF_INET, a, b, p, q \
    }
#define OK6(lbl, s, a, b, p, q)                               \
    {                                                         \
        lbl, V(s), 1, 0, NULL, 1, false, AF_INET6, a, b, p, q \
    }
#define BAD(lbl, s, at, why)                                           \
    {                                                                  \
        lbl, V(s), HAMR_EPROTO, at, why, 0, false, 0, NULL, NULL, 0, 0 \
    }
#define BADEND(lbl, s, why)                                           \
    {                                                                 \
        lbl, V(s), HAMR_EPROTO, 0, why, 0, false, 0, NULL, NULL, 0, 0 \
    }
#define MORE(lbl, s)                                         \
    {                                                        \
        lbl, V(s), 0, 0, NULL, 0, false, 0, NULL, NULL, 0, 0 \
    }

static const char r_prefix[] = "v1: line does not start with \"PROXY \"";
static const char r_src[] = "v1: bad or missing source address";
static const char r_dst[] = "v1: bad or missing destination address";
static const char r_sport[] = "v1: bad or missing source port";
static const char r_dport[] = "v1: bad or missing destination port";
static const char r_long[] = "v1: line longer than 107 octets";
static const char r_garbage[] = "not a PROXY header";
static const char r_sig[] = "v2: bad signature";

static const struct vec vecs[] = {
    /* v1, valid */
    OK4("v1 tcp4", "PROXY TCP4 1.2.3.4 5.6.7.8 5000 25\r\n", "1.2.3.4", "5.6.7.8", 5000, 25),
    OK4("v1 tcp4 extremes",
        "PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
        "255.255.255.255",
        "0.0.0.0",
        65535,
        0),
    OK6("v1 tcp6",
        "PROXY TCP6 2001:db8::1 2001:db8::2 5000 25\r\n",
        "2001:db8::1",
        "2001:db8::2",
        5000,
        25),
    OK6("v1 tcp6 upper case",
        "PROXY TCP6 FC:00:00:00:1:2:3:4 FC:00:00:00:4:3:2:1 123 321\r\n",
        "fc::1:2:3:4",
        "fc::4:3:2:1",
        123,
        321),
    OK6("v1 tcp6 v4-mapped",
        "PROXY TCP6 ::ffff:1.2.3.4 ::ffff:4.3.2.1 123 321\r\n",
        "1.2.3.4",
        "4.3.2.1",
        123,
        321),
    OK6("v1 exactly 107 octets",
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
        "fff:ffff:ffff:ffff:ffff:ffff:1.2.3.4 65535 65535\r\n",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fff:ffff:ffff:ffff:ffff:ffff:102:304",
        65535,
        65535),

    /* v1, missing fields (S18: "PROXY TCP4 1.2.3.4\r\n") */
    BADEND("v1 no protocol", "PROXY \r\n", "v1: bad protocol"),
    BADEND("v1 tcp4 only", "PROXY TCP4\r\n", r_src),
    BADEND("v1 one address", "PROXY TCP4 1.2.3.4\r\n", r_dst),
    BADEND("v1 no ports", "PROXY TCP4 1.2.3.4 5.6.7.8\r\n", r_sport),
    BADEND("v1 one port", "PROXY TCP4 1.2.3.4 5.6.7.8 5000\r\n", r_dport),
    BADEND("v1 tcp6 one address", "PROXY TCP6 2001:db8::1\r\n", r_dst),
    BADEND("v1 extra field", "PROXY TCP4 1.2.3.4 5.6.7.8 5000 25 x\r\n", "v1: too many fields"),
    BADEND("v1 trailing space", "PROXY TCP4 1.2.3.4 5.6.7.8 5000 25 \r\n", "v1: too many fields"),
    BADEND("v1 double space", "PROXY TCP4  1.2.3.4 5.6.7.8 5000 25\r\n", r_src),

    /* v1, ports */
    BADEND("v1 port 65536", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n", r_sport),
    BADEND("v1 port 123456", "PROXY TCP4 1.2.3.4 5.6.7.8 123456 25\r\n", r_sport),
    BADEND("v1 port leading zero", "PROXY TCP4 1.2.3.4 5.6.7.8 0123 25\r\n", r_sport),
    BADEND("v1 dport leading zero", "PROXY TCP4 1.2.3.4 5.6.7.8 123 025\r\n", r_dport),
    BADEND("v1 dport 99999", "PROXY TCP4 1.2.3.4 5.6.7.8 123 99999\r\n", r_dport),
    BADEND("v1 port sign", "PROXY TCP4 1.2.3.4 5.6.7.8 +25 25\r\n", r_sport),
    BADEND("v1 port hex", "PROXY TCP4 1.2.3.4 5.6.7.8 0x19 25\r\n", r_sport),

    /* v1, addresses */
    BADEND("v1 octet leading zero", "PROXY TCP4 01.2.3.4 5.6.7.8 5000 25\r\n", r_src),
    BADEND("v1 dst octet leading zero", "PROXY TCP4 1.2.3.4 5.6.7.08 5000 25\r\n", r_dst),
    BADEND("v1 octet 256", "PROXY TCP4 1.2.3.256 5.6.7.8 5000 25\r\n", r_src),
    BADEND("v1 three octets", "PROXY TCP4 1.2.3 5.6.7.8 5000 25\r\n", r_src),
    BADEND("v1 five octets", "PROXY TCP4 1.2.3.4.5 5.6.7.8 5000 25\r\n", r_src),
    BADEND("v1 tcp4 with ipv6", "PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 5000 25\r\n", r_src),
    BADEND("v1 tcp4 ipv6 dst", "PROXY TCP4 1.2.3.4 ::ffff:4.3.2.1 5000 25\r\n", r_dst),
    BADEND("v1 tcp6 with ipv4", "PROXY TCP6 1.2.3.4 4.3.2.1 123 321\r\n", r_src),
    BADEND("v1 tcp6 ipv4 dst", "PROXY TCP6 fc::1 4.3.2.1 123 321\r\n", r_dst),
    BADEND("v1 host name", "PROXY TCP4 mx.example 5.6.7.8 5000 25\r\n", r_src),

    /* v1, protocol and framing */
    BADEND("v1 unknown", "PROXY UNKNOWN\r\n", "v1: UNKNOWN protocol, no client address"),
    BADEND("v1 unknown with addresses",
           "PROXY UNKNOWN ffff:f::ffff:ffff:ffff:ffff:ffff:ffff "
           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
           "v1: UNKNOWN protocol, no client address"),
    BADEND("v1 bad protocol", "PROXY UDP4 1.2.3.4 5.6.7.8 5000 25\r\n", "v1: bad protocol"),
    BADEND("v1 lower-case protocol", "PROXY tcp4 1.2.3.4 5.6.7.8 5000 25\r\n", "v1: bad protocol"),
    BADEND("v1 bare LF", "PROXY TCP4 1.2.3.4 5.6.7.8 5000 25\n", "v1: LF without CR"),
    BAD("v1 bare CR", "PROXY TCP4\r 1.2.3.4 5.6.7.8 5000 25\r\n", 12, "v1: CR without LF"),
    BAD("v1 NUL", "PROXY TCP4 1.2.3.4\0 5.6.7.8 5000 25\r\n", 19, "v1: control or non-ASCII octet"),
    BAD("v1 tab", "PROXY TCP4\t1.2.3.4 5.6.7.8 5000 25\r\n", 11, "v1: control or non-ASCII octet"),
    BAD("v1 8-bit",
        "PROXY TCP4 1.2.3.4\xc3\xa9 5.6.7.8 5000 25\r\n",
        19,
        "v1: control or non-ASCII octet"),
    BAD("v1 108 octets",
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
        "ffff:ffff:ffff:ffff:ffff:ffff:1.2.3.4 65535 65535\r\n",
        107,
        r_long),
    BAD("v1 endless line",
        "PROXY "
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        107,
        r_long),
    BAD("v1 no space after PROXY", "PROXY\r\n", 6, r_prefix),
    BAD("v1 lower-case PROXY", "Proxy TCP4 1.2.3.4 5.6.7.8 5000 25\r\n", 2, r_prefix),
    MORE("v1 without LF", "PROXY TCP4 1.2.3.4 5.6.7.8 5000 25\r"),
    MORE("v1 half", "PROXY TCP4 1.2.3"),

    /* Not a header at all (S18: garbage before SMTP) */
    BAD("EHLO", "EHLO client.example\r\n", 1, r_garbage),
    BAD("lower-case proxy", "proxy TCP4 1.2.3.4 5.6.7.8 5000 25\r\n", 1, r_garbage),
    BAD("HTTP POST", "POST / HTTP/1.1\r\n", 2, r_prefix),
    BAD("TLS ClientHello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1, r_garbage),
    BAD("blank line then HELO", "\r\nHELO x\r\n", 3, r_sig),
    BAD("NUL", "\0", 1, r_garbage),
    MORE("nothing", ""),

    /* v2, valid */
    {"v2 inet", V(SIG "\x21\x11\x00\x0c" V2_INET_ADDR), 1, 0, NULL, 2, false, AF_INET, "1.2.3.4",
     "5.6.7.8", 5000, 25},
    {"v2 inet6", V(SIG "\x21\x21\x00\x24" V2_INET6_ADDR), 1, 0, NULL, 2, false, AF_INET6,
     "2001:db8::1", "2001:db8::2", 5000, 25},
    {"v2 inet6 v4-mapped",
     V(SIG "\x21\x21\x00\x24"
           "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xc6\x33\x64\x09"
           "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
           "\x9c\x40"
           "\x00\x19"),
     1, 0, NULL, 2, false, AF_INET6, "198.51.100.9", "::1", 40000, 25},
    {"v2 inet with TLVs (ALPN, NOOP)",
     V(SIG "\x21\x11\x00\x14" V2_INET_ADDR "\x01\x00\x02"
           "h2"
           "\x04\x00\x00"),
     1, 0, NULL, 2, false, AF_INET, "1.2.3.4", "5.6.7.8", 5000, 25},
    {"v2 inet6 with TLV", V(SIG "\x21\x21\x00\x2a" V2_INET6_ADDR "\x04\x00\x03xyz"), 1, 0, NULL, 2,
     false, AF_INET6, "2001:db8::1", "2001:db8::2", 5000, 25},
    {"v2 local", V(SIG "\x20\x00\x00\x00"), 1, 0, NULL, 2, true, 0, "", "", 0, 0},
    {"v2 local with addresses", V(SIG "\x20\x11\x00\x0c" V2_INET_ADDR), 1, 0, NULL, 2, true, 0, "",
     "", 0, 0},
    {"v2 local unix", V(SIG "\x20\x31\x00\x03zzz"), 1, 0, NULL, 2, true, 0, "", "", 0, 0},

    /* v2, invalid (S18: wrong signature, version, family or length) */
    BAD("v2 bad signature", "\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c", 11, r_sig),
    BAD("v2 signature, NUL missing", "\r\n\r\n\r\nQUIT\n", 5, r_sig),
    BAD("v2 version 1", SIG "\x11\x11\x00\x0c" V2_INET_ADDR, 13, "v2: version is not 2"),
    BAD("v2 version 3", SIG "\x31\x11\x00\x0c" V2_INET_ADDR, 13, "v2: version is not 2"),
    BAD("v2 command 2", SIG "\x22\x11\x00\x0c" V2_INET_ADDR, 13, "v2: bad command"),
    BAD("v2 command f", SIG "\x2f\x11\x00\x0c" V2_INET_ADDR, 13, "v2: bad command"),
    BAD("v2 proxy unspec",
        SIG "\x21\x00\x00\x00",
        14,
        "v2: PROXY with UNSPEC or UNIX family, no client address"),
    BAD("v2 proxy unix",
        SIG "\x21\x31\x00\xd8",
        14,
        "v2: PROXY with UNSPEC or UNIX family, no client address"),
    BAD("v2 family 4", SIG "\x21\x41\x00\x0c" V2_INET_ADDR, 14, "v2: bad address family"),
    BAD("v2 udp", SIG "\x21\x12\x00\x0c" V2_INET_ADDR, 14, "v2: transport is not STREAM"),
    BAD("v2 transport unspec",
        SIG "\x21\x10\x00\x0c" V2_INET_ADDR,
        14,
        "v2: transport is not STREAM"),
    BAD("v2 inet length 11",
        SIG "\x21\x11\x00\x0b" V2_INET_ADDR,
        16,
        "v2: length shorter than the addresses"),
    BAD("v2 inet6 length 12",
        SIG "\x21\x21\x00\x0c" V2_INET_ADDR,
        16,
        "v2: length shorter than the addresses"),
    BAD("v2 length 4097", SIG "\x21\x11\x10\x01" V2_INET_ADDR, 16, "v2: length over 4096 octets"),
    BAD("v2 length 65535", SIG "\x21\x11\xff\xff" V2_INET_ADDR, 16, "v2: length over 4096 octets"),
    BAD("v2 local length 65535", SIG "\x20\x00\xff\xff", 16, "v2: length over 4096 octets"),
    BAD("v2 TLV past the end",
        SIG "\x21\x11\x00\x0f" V2_INET_ADDR "\x01\x00\x05hello",
        31,
        "v2: TLV runs past the header"),
    BAD("v2 truncated TLV",
        SIG "\x21\x11\x00\x0e" V2_INET_ADDR "\x01\x00",
        30,
        "v2: truncated TLV"),
    MORE("v2 short head", SIG "\x21\x11\x00"),
    MORE("v2 short addresses", SIG "\x21\x11\x00\x0c\x01\x02\x03\x04"),
    MORE("v2 short TLV", SIG "\x21\x11\x00\x14" V2_INET_ADDR "\x01\x00\x02h"),
};

/* The input of a completed header is followed by this, which must not be taken. */
static const char trailer[] = "EHLO client.example\r\n";

/* vec_want_used - octets the vector's header should take. */
static size_t vec_want_used(const struct vec *v)
{
    return v->used != 0 ? v->used : v->len;
}

/* vec_check_done - the state after the last call, against the vector. */
static void vec_check_done(const struct vec *v,
                           const struct smtpd_proxy_parser *p,
                           int rc,
                           size_t used,
                           const char *mode)
{
    if (rc != v->rc)
        fail_msg("%s (%s): rc %d, want %d (reason %s)", v->label, mode, rc, v->rc,
                 p->reason ? p->reason : "-");
    if (used != vec_want_used(v))
        fail_msg("%s (%s): took %zu octets, want %zu", v->label, mode, used, vec_want_used(v));
    if (rc == HAMR_EPROTO) {
        assert_non_null(p->reason);
        if (strcmp(p->reason, v->reason) != 0)
            fail_msg("%s (%s): reason \"%s\", want \"%s\"", v->label, mode, p->reason, v->reason);
        return;
    }
    assert_null(p->reason);
    if (rc != 1)
        return;
    const struct smtpd_proxy_header *h = &p->hdr;
    assert_int_equal(p->total, v->len);
    assert_int_equal(h->version, v->version);
    assert_int_equal(h->local, v->local);
    if (v->local)
        return;
    assert_int_equal(h->family, v->family);
    if (strcmp(h->src_text, v->src) != 0 || strcmp(h->dst_text, v->dst) != 0)
        fail_msg("%s (%s): %s -> %s, want %s -> %s", v->label, mode, h->src_text, h->dst_text,
                 v->src, v->dst);
    assert_int_equal(h->src_port, v->sport);
    assert_int_equal(h->dst_port, v->dport);
}

/* vec_check_sticky - after the end, more input is refused and the result repeats. */
static void vec_check_sticky(const struct vec *v, struct smtpd_proxy_parser *p)
{
    size_t used = 99;
    if (v->rc == 0)
        return;
    assert_int_equal(smtpd_proxy_parse(p, trailer, sizeof(trailer) - 1, &used), v->rc);
    assert_int_equal(used, 0);
}

/* test_vectors_whole - each vector in one call, followed by SMTP octets. */
static void test_vectors_whole(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(vecs); i++) {
        const struct vec *v = &vecs[i];
        struct smtpd_proxy_parser p;
        uint8_t in[512];
        assert_true(v->len + sizeof(trailer) <= sizeof(in));
        memcpy(in, v->in, v->len);
        size_t len = v->len;
        if (v->rc == 1) { /* what follows the header stays for SMTP */
            memcpy(in + len, trailer, sizeof(trailer) - 1);
            len += sizeof(trailer) - 1;
        }
        smtpd_proxy_parser_init(&p);
        size_t used = 12345;
        int rc = smtpd_proxy_parse(&p, in, len, &used);
        vec_check_done(v, &p, rc, used, "whole");
        vec_check_sticky(v, &p);
    }
}

/* test_vectors_bytewise - each vector one octet per call (a dribbling peer). */
static void test_vectors_bytewise(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(vecs); i++) {
        const struct vec *v = &vecs[i];
        struct smtpd_proxy_parser p;
        smtpd_proxy_parser_init(&p);
        size_t total = 0;
        int rc = 0;
        for (size_t k = 0; k < v->len; k++) {
            size_t used = 7;
            rc = smtpd_proxy_parse(&p, v->in + k, 1, &used);
            assert_int_equal(used, 1);
            total += used;
            if (rc != 0)
                break;
        }
        vec_check_done(v, &p, rc, total, "bytewise");
        vec_check_sticky(v, &p);
    }
}

/* test_vectors_split - each vector in two calls, split at every offset. */
static void test_vectors_split(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(vecs); i++) {
        const struct vec *v = &vecs[i];
        for (size_t cut = 0; cut <= v->len; cut++) {
            struct smtpd_proxy_parser p;
            char mode[32];
            snprintf(mode, sizeof(mode), "split at %zu", cut);
            smtpd_proxy_parser_init(&p);
            size_t used1 = 0, used2 = 0;
            int rc = smtpd_proxy_parse(&p, v->in, cut, &used1);
            if (rc == 0)
                rc = smtpd_proxy_parse(&p, v->in + cut, v->len - cut, &used2);
            vec_check_done(v, &p, rc, used1 + used2, mode);
        }
    }
}

/* test_v2_length_cap - 4096 octets of addresses and TLVs pass, 4097 do not. */
static void test_v2_length_cap(void **state)
{
    static const uint8_t head[] = SIG "\x21\x11";
    uint8_t in[SMTPD_PROXY_V2_HEADER + SMTPD_PROXY_V2_LEN_MAX + 1];
    for (size_t len = SMTPD_PROXY_V2_LEN_MAX - 1; len <= SMTPD_PROXY_V2_LEN_MAX + 1; len++) {
        memset(in, 'x', sizeof(in));
        memcpy(in, head, 14);
        in[14] = (uint8_t)(len >> 8);
        in[15] = (uint8_t)len;
        memcpy(in + 16, V2_INET_ADDR, 12);
        size_t vlen = len - 12 - 3; /* one TLV fills the rest */
        in[28] = 0x04;
        in[29] = (uint8_t)(vlen >> 8);
        in[30] = (uint8_t)vlen;

        struct smtpd_proxy_parser p;
        smtpd_proxy_parser_init(&p);
        size_t used = 0;
        int rc = smtpd_proxy_parse(&p, in, 16 + len, &used);
        if (len <= SMTPD_PROXY_V2_LEN_MAX) {
            assert_int_equal(rc, 1);
            assert_int_equal(used, 16 + len);
            assert_string_equal(p.hdr.src_text, "1.2.3.4");
        } else {
            assert_int_equal(rc, HAMR_EPROTO);
            assert_int_equal(used, 16);
        }
    }
}

/* test_addr_in - proxy_networks matching, IPv4-mapped IPv6 as IPv4. */
static void test_addr_in(void **state)
{
    struct smtpd_cidr nets[2] = {
        {.family = AF_INET, .addr = {10, 1}, .prefix = 16},
        {.family = AF_INET6, .addr = {0x20, 0x01, 0x0d, 0xb8}, .prefix = 32},
    };
    static const struct {
        const char *addr;
        bool in;
    } cases[] = {
        {"10.1.0.1", true},        {"10.1.255.255", true}, {"10.2.0.1", false},
        {"::ffff:10.1.2.3", true}, {"2001:db8::5", true},  {"2001:db9::5", false},
        {"127.0.0.1", false},      {"unknown", false},     {"", false},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++)
        if (smtpd_proxy_addr_in(nets, 2, cases[i].addr) != cases[i].in)
            fail_msg("%s: want %s", cases[i].addr, cases[i].in ? "in" : "out");
    assert_false(smtpd_proxy_addr_in(NULL, 0, "10.1.0.1"));
}

/* ------------------------------------------------------------------ */
/* Server harness: smtpd_server and libuv clients in one loop           */
/* ------------------------------------------------------------------ */

#define LOOP_TURNS_MAX 2000
#define GUARD_MS 10000

struct sink_state {
    int submits;
    char client_addr[64];
    char sender[64];
    smtpd_sink_cb cb;
    void *arg;
};

struct client {
    uv_tcp_t tcp;
    uv_connect_t connect;
    bool connected, eof, closed;
    int writes_pending;
    char in[8192];
    size_t in_len;
    size_t seen; /* what expect() already matched */
};

struct harness {
    uv_loop_t loop;
    struct testlib_loop run; /* the guard and the bounded waits */
    struct smtpd_policy policy;
    struct smtpd_cidr relay_nets[2];
    struct smtpd_cidr proxy_nets[1];
    char *domains[1];
    struct sink_state sink;
    struct smtpd_server *server;
    bool server_closed;
    struct client client, client2;
    struct client *cur; /* the client that client_* and expect* act on */
};

/* sink_new_id - a fixed queue id. */
static int sink_new_id(void *data, char *id, size_t idlen)
{
    hamr_strlcpy(id, "Q1", idlen);
    return 0;
}

/* sink_submit - record the envelope; the test calls back later. */
static int sink_submit(void *data, const struct smtpd_envelope *env, smtpd_sink_cb cb, void *arg)
{
    struct sink_state *k = data;
    k->submits++;
    hamr_strlcpy(k->client_addr, env->client_addr, sizeof(k->client_addr));
    hamr_strlcpy(k->sender, env->sender, sizeof(k->sender));
    k->cb = cb;
    k->arg = arg;
    return 0;
}

/* run_until - turn the loop until *flag, at most LOOP_TURNS_MAX times or the guard. */
static bool run_until(struct harness *h, const bool *flag)
{
    return testlib_loop_until_flag(&h->run, flag);
}

/*
 * harness_start - loop, guard timer and server on 127.0.0.1:0. proxy_nets
 * holds trusted (the balancers); relay_networks are 127.0.0.0/8 (so the
 * socket peer would relay) and 198.51.100.0/24; relay_domains hamr.test.
 */
static void harness_start_max(struct harness *h,
                              const char *trusted,
                              uint64_t timeout_ms,
                              uint64_t greet_delay_ms,
                              size_t max_sessions)
{
    memset(h, 0, sizeof(*h));
    h->cur = &h->client;
    assert_int_equal(uv_loop_init(&h->loop), 0);
    testlib_loop_start(&h->run, &h->loop, GUARD_MS, LOOP_TURNS_MAX);

    struct smtpd_policy *p = &h->policy;
    hamr_strlcpy(p->hostname, "mx.hamr.test", sizeof(p->hostname));
    h->relay_nets[0] = (struct smtpd_cidr){.family = AF_INET, .addr = {127}, .prefix = 8};
    h->relay_nets[1] = (struct smtpd_cidr){.family = AF_INET, .addr = {198, 51, 100}, .prefix = 24};
    h->domains[0] = "hamr.test";
    p->relay_networks = h->relay_nets;
    p->n_relay_networks = 2;
    p->relay_domains = h->domains;
    p->n_relay_domains = 1;
    p->message_size_limit = 1024 * 1024;
    p->recipient_limit = 100;
    p->header_size_limit = 64 * 1024;
    p->hopcount_limit = 50;
    p->max_errors = 20;
    p->command_timeout_ms = 30000;
    p->data_timeout_ms = 30000;

    char addr[64];
    unsigned prefix;
    assert_int_equal(sscanf(trusted, "%63[^/]/%u", addr, &prefix), 2);
    h->proxy_nets[0].family = AF_INET;
    h->proxy_nets[0].prefix = prefix;
    assert_int_equal(inet_pton(AF_INET, addr, h->proxy_nets[0].addr), 1);

    struct smtpd_sink sink = {.data = &h->sink, .new_id = sink_new_id, .submit = sink_submit};
    char err[256];
    assert_int_equal(smtpd_server_new(&h->loop, "127.0.0.1", 0, p, &sink, max_sessions, &h->server,
                                      err, sizeof(err)),
                     0);
    smtpd_server_set_proxy(h->server, true, h->proxy_nets, 1, timeout_ms);
    smtpd_server_set_greet_delay(h->server, greet_delay_ms);
}

/* harness_start - harness_start_max with 10 sessions. */
static void harness_start(struct harness *h,
                          const char *trusted,
                          uint64_t timeout_ms,
                          uint64_t greet_delay_ms)
{
    harness_start_max(h, trusted, timeout_ms, greet_delay_ms, 10);
}

/* client_close_cb - the client handle is gone. */
static void client_close_cb(uv_handle_t *handle)
{
    struct client *c = handle->data;
    c->closed = true;
}

/* client_alloc_cb - reads append to the client's buffer. */
static void client_alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct client *c = handle->data;
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof(c->in) - 1 - c->in_len));
}

/* client_read_cb - keep what the server says; EOF or a reset ends it. */
static void client_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = stream->data;
    if (nread > 0) {
        c->in_len += (size_t)nread;
        c->in[c->in_len] = '\0';
        assert_true(c->in_len < sizeof(c->in) - 1);
    } else if (nread < 0) {
        c->eof = true;
        uv_read_stop(stream);
    }
}

/* client_connect_cb - connected: start reading. */
static void client_connect_cb(uv_connect_t *req, int status)
{
    struct client *c = req->data;
    assert_int_equal(status, 0);
    c->connected = true;
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, client_alloc_cb, client_read_cb), 0);
}

/* client_connect - a client to the server, connected when this returns. */
static void client_connect(struct harness *h)
{
    struct client *c = h->cur;
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", smtpd_server_port(h->server), &sin);
    uv_tcp_init(&h->loop, &c->tcp);
    c->tcp.data = c;
    c->connect.data = c;
    assert_int_equal(
        uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&sin, client_connect_cb), 0);
    assert_true(run_until(h, &c->connected));
}

struct client_write {
    uv_write_t req;
    struct client *c;
    char data[];
};

/* client_write_cb - one write done. */
static void client_write_cb(uv_write_t *req, int status)
{
    struct client_write *w = req->data;
    w->c->writes_pending--;
    free(w);
}

/* client_send - queue len octets (copied). */
static void client_send(struct harness *h, const void *data, size_t len)
{
    struct client *c = h->cur;
    struct client_write *w = malloc(sizeof(*w) + len);
    assert_non_null(w);
    w->c = c;
    w->req.data = w;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    assert_int_equal(uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, client_write_cb), 0);
    c->writes_pending++;
}

/* client_say - send a text line. */
static void client_say(struct harness *h, const char *line)
{
    client_send(h, line, strlen(line));
}

/* expect - wait until the server has said want (after what was already matched). */
static void expect(struct harness *h, const char *want)
{
    struct client *c = h->cur;
    const char *hit = NULL;
    for (int i = 0; i < LOOP_TURNS_MAX && !h->run.expired; i++) {
        hit = strstr(c->in + c->seen, want);
        if (hit != NULL || c->eof)
            break;
        uv_run(&h->loop, UV_RUN_ONCE);
    }
    hit = strstr(c->in + c->seen, want);
    if (hit == NULL)
        fail_msg("want \"%s\", server said \"%s\"", want, c->in + c->seen);
    const char *eol = strstr(hit, "\r\n");
    c->seen = eol ? (size_t)(eol + 2 - c->in) : c->in_len;
}

/* expect_silent_close - the server hangs up having said nothing at all. */
static void expect_silent_close(struct harness *h)
{
    struct client *c = h->cur;
    assert_true(run_until(h, &c->eof));
    if (c->in_len != 0)
        fail_msg("want silence, server said \"%s\"", c->in);
    assert_int_equal(smtpd_server_sessions(h->server), 0);
}

/* server_closed_cb - smtpd_server_close finished. */
static void server_closed_cb(void *arg)
{
    struct harness *h = arg;
    h->server_closed = true;
}

/* harness_stop - close clients, server and guard; the loop must have no handle left. */
static void harness_stop(struct harness *h)
{
    struct client *clients[] = {&h->client, &h->client2};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(clients); i++)
        if (clients[i]->tcp.data != NULL)
            uv_close((uv_handle_t *)&clients[i]->tcp, client_close_cb);
    smtpd_server_close(h->server, server_closed_cb, h);
    assert_true(run_until(h, &h->server_closed));
    for (size_t i = 0; i < HAMR_ARRAY_LEN(clients); i++)
        if (clients[i]->tcp.data != NULL)
            assert_true(run_until(h, &clients[i]->closed));
    testlib_loop_close(&h->run);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    assert_false(h->run.expired);
}

/* transaction - EHLO, MAIL, RCPT rcpt (answer want_rcpt); if accepted, DATA and commit. */
static void transaction(struct harness *h, const char *rcpt, const char *want_rcpt)
{
    char line[256];
    client_say(h, "EHLO client.example\r\n");
    expect(h, "250 ");
    client_say(h, "MAIL FROM:<s@client.example>\r\n");
    expect(h, "250 ");
    snprintf(line, sizeof(line), "RCPT TO:<%s>\r\n", rcpt);
    client_say(h, line);
    expect(h, want_rcpt);
    if (strncmp(want_rcpt, "250", 3) != 0)
        return;
    client_say(h, "DATA\r\n");
    expect(h, "354 ");
    client_say(h, "Subject: t\r\n\r\nhello\r\n.\r\n");
    for (int i = 0; i < LOOP_TURNS_MAX && h->sink.cb == NULL && !h->run.expired; i++)
        uv_run(&h->loop, UV_RUN_ONCE);
    assert_non_null(h->sink.cb);
    smtpd_sink_cb cb = h->sink.cb;
    h->sink.cb = NULL;
    cb(h->sink.arg, 0); /* committed */
    expect(h, "250 ");
}

/* ------------------------------------------------------------------ */
/* Server tests                                                        */
/* ------------------------------------------------------------------ */

/* test_server_v1 - the v1 source is the client: the sink sees it, it may relay. */
static void test_server_v1(void **state)
{
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "127.0.0.1/32", 5000, 0);
    client_connect(h);
    client_say(h, "PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\n");
    expect(h, "220 mx.hamr.test");
    transaction(h, "r@elsewhere.example", "250 ");
    assert_int_equal(h->sink.submits, 1);
    assert_string_equal(h->sink.client_addr, "198.51.100.9");
    harness_stop(h);
    free(h);
}

/* test_server_v2_relay_denied - a v2 source outside relay_networks cannot relay. */
static void test_server_v2_relay_denied(void **state)
{
    static const char hdr[] = SIG
        "\x21\x11\x00\x0c"
        "\xcb\x00\x71\x05" /* 203.0.113.5 */
        "\x7f\x00\x00\x01"
        "\x9c\x40"
        "\x00\x19";
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "127.0.0.0/8", 5000, 0);
    client_connect(h);
    client_send(h, hdr, sizeof(hdr) - 1);
    expect(h, "220 ");
    /* The socket peer, 127.0.0.1, is in relay_networks; the client is not. */
    transaction(h, "r@elsewhere.example", "554 5.7.1");
    client_say(h, "RCPT TO:<r@hamr.test>\r\n");
    expect(h, "250 ");
    client_say(h, "DATA\r\n");
    expect(h, "354 ");
    client_say(h, "\r\nhi\r\n.\r\n");
    for (int i = 0; i < LOOP_TURNS_MAX && h->sink.cb == NULL && !h->run.expired; i++)
        uv_run(&h->loop, UV_RUN_ONCE);
    assert_non_null(h->sink.cb);
    assert_string_equal(h->sink.client_addr, "203.0.113.5");
    h->sink.cb(h->sink.arg, 0);
    h->sink.cb = NULL;
    expect(h, "250 ");
    harness_stop(h);
    free(h);
}

/* test_server_v2_inet6_tlv_pipelined - v2 over IPv6 with TLVs, EHLO in the same write. */
static void test_server_v2_inet6_tlv_pipelined(void **state)
{
    static const char hdr[] = SIG "\x21\x21\x00\x2a" V2_INET6_ADDR "\x04\x00\x03xyz";
    char in[256];
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "127.0.0.1/32", 5000, 0);
    client_connect(h);
    memcpy(in, hdr, sizeof(hdr) - 1);
    memcpy(in + sizeof(hdr) - 1, "EHLO a.example\r\n", 16);
    client_send(h, in, sizeof(hdr) - 1 + 16);
    /* Without greet_delay the session greets at once, then reads the EHLO. */
    expect(h, "220 ");
    expect(h, "250 ");
    client_say(h, "MAIL FROM:<>\r\n");
    expect(h, "250 ");
    client_say(h, "RCPT TO:<r@elsewhere.example>\r\n");
    expect(h, "554 5.7.1");
    harness_stop(h);
    free(h);
}

/* test_server_v2_local - a LOCAL health check keeps the socket address. */
static void test_server_v2_local(void **state)
{
    static const char hdr[] = SIG "\x20\x00\x00\x00";
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "127.0.0.1/32", 5000, 0);
    client_connect(h);
    client_send(h, hdr, sizeof(hdr) - 1);
    expect(h, "220 ");
    transaction(h, "r@elsewhere.example", "250 ");
    assert_string_equal(h->sink.client_addr, "127.0.0.1");
    harness_stop(h);
    free(h);
}

/* test_server_untrusted - a valid header from outside proxy_networks: closed, no greeting. */
static void test_server_untrusted(void **state)
{
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "10.0.0.0/8", 5000, 0);
    client_connect(h);
    client_say(h, "PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\n");
    expect_silent_close(h);
    assert_int_equal(h->sink.submits, 0);
    harness_stop(h);
    free(h);
}

/* test_server_refusals - garbage, bad headers and EOF: each closed without a greeting. */
static void test_server_refusals(void **state)
{
    static const struct {
        const char *label;
        const char *in;
        size_t len;
    } cases[] = {
        {"smtp first", V("EHLO client.example\r\n")},
        {"missing fields", V("PROXY TCP4 1.2.3.4\r\n")},
        {"port above 65535", V("PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n")},
        {"unknown", V("PROXY UNKNOWN\r\n")},
        {"v2 wrong version", V(SIG "\x11\x11\x00\x0c" V2_INET_ADDR)},
        {"v2 unspec", V(SIG "\x21\x00\x00\x00")},
        {"eof mid header", V("PROXY TCP4 1.2.")},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct harness *h = malloc(sizeof(*h));
        harness_start(h, "127.0.0.1/32", 5000, 0);
        client_connect(h);
        client_send(h, cases[i].in, cases[i].len);
        if (strcmp(cases[i].label, "eof mid header") == 0) {
            static uv_shutdown_t req;
            assert_int_equal(uv_shutdown(&req, (uv_stream_t *)&h->client.tcp, NULL), 0);
        }
        print_message("refusal: %s\n", cases[i].label);
        expect_silent_close(h);
        harness_stop(h);
        free(h);
    }
}

/* test_server_timeout - a header not complete within proxy_timeout: closed, no greeting. */
static void test_server_timeout(void **state)
{
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "127.0.0.1/32", 50, 0);
    client_connect(h);
    uint64_t start = uv_now(&h->loop);
    client_say(h, "PROXY TCP4 ");
    expect_silent_close(h);
    uv_update_time(&h->loop);
    assert_true(uv_now(&h->loop) - start >= 25); /* the timer, not the first read */
    harness_stop(h);
    free(h);
}

/* test_server_dribble - a header one octet per loop turn, within the timeout. */
static void test_server_dribble(void **state)
{
    static const char hdr[] = "PROXY TCP4 198.51.100.77 127.0.0.1 40000 25\r\n";
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "127.0.0.1/32", 5000, 0);
    client_connect(h);
    for (size_t i = 0; i < sizeof(hdr) - 1; i++) {
        assert_int_equal(h->client.in_len, 0); /* nothing before the whole header */
        assert_false(h->client.eof);
        client_send(h, hdr + i, 1);
        for (int k = 0; k < LOOP_TURNS_MAX && h->client.writes_pending > 0; k++)
            uv_run(&h->loop, UV_RUN_ONCE);
        uv_run(&h->loop, UV_RUN_NOWAIT);
    }
    expect(h, "220 ");
    transaction(h, "r@elsewhere.example", "250 ");
    assert_string_equal(h->sink.client_addr, "198.51.100.77");
    harness_stop(h);
    free(h);
}

/* test_server_early_talker - with greet_delay, input after the header is a pregreet. */
static void test_server_early_talker(void **state)
{
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "127.0.0.1/32", 5000, 5000);
    client_connect(h);
    client_say(h, "PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\nEHLO early.example\r\n");
    expect(h, "554 5.5.0");
    assert_true(strstr(h->client.in, "220") == NULL);
    harness_stop(h);
    free(h);
}

/* test_server_proxy_after_greeting - a second PROXY line is just an unknown command. */
static void test_server_proxy_after_greeting(void **state)
{
    struct harness *h = malloc(sizeof(*h));
    harness_start(h, "127.0.0.1/32", 5000, 0);
    client_connect(h);
    client_say(h, "PROXY TCP4 203.0.113.5 127.0.0.1 40000 25\r\n");
    expect(h, "220 ");
    client_say(h, "PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\n");
    expect(h, "502 5.5.2");
    /* The second header changed nothing: still no relaying. */
    transaction(h, "r@elsewhere.example", "554 5.7.1");
    harness_stop(h);
    free(h);
}

/* test_server_wait_counts - a connection still owing its header holds a session slot. */
static void test_server_wait_counts(void **state)
{
    struct harness *h = malloc(sizeof(*h));
    harness_start_max(h, "127.0.0.1/32", 5000, 0, 1);
    client_connect(h); /* says nothing: waits for its header */
    h->cur = &h->client2;
    client_connect(h);
    expect(h, "421 4.7.0");
    assert_true(run_until(h, &h->client2.eof));
    h->cur = &h->client;
    client_say(h, "PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\n");
    expect(h, "220 ");
    assert_int_equal(smtpd_server_sessions(h->server), 1);
    harness_stop(h);
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_whole),
        cmocka_unit_test(test_vectors_bytewise),
        cmocka_unit_test(test_vectors_split),
        cmocka_unit_test(test_v2_length_cap),
        cmocka_unit_test(test_addr_in),
        cmocka_unit_test(test_server_v1),
        cmocka_unit_test(test_server_v2_relay_denied),
        cmocka_unit_test(test_server_v2_inet6_tlv_pipelined),
        cmocka_unit_test(test_server_v2_local),
        cmocka_unit_test(test_server_untrusted),
        cmocka_unit_test(test_server_refusals),
        cmocka_unit_test(test_server_timeout),
        cmocka_unit_test(test_server_dribble),
        cmocka_unit_test(test_server_early_talker),
        cmocka_unit_test(test_server_proxy_after_greeting),
        cmocka_unit_test(test_server_wait_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
