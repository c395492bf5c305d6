/*
 * testlib_dns.c - the fake DNS server of testlib_dns.h. Owns its UDP
 * handle; answers each query at once with uv_udp_try_send (loopback, so
 * no send request to keep alive). Builds responses by RFC 1035 section 4.1:
 * the question copied from the query, owners as a pointer to it, rdata
 * from the row's text. A row it cannot encode fails the cmocka test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "tests/lib/testlib_dns.h"

#define TESTLIB_DNS_OPT 41
#define TESTLIB_DNS_HEADER 12

/* testlib_dns_msg - a response being written, bounded by its buffer. */
struct testlib_dns_msg {
    uint8_t b[1500];
    size_t len;
};

/* testlib_dns_put - n octets at the end. */
static void testlib_dns_put(struct testlib_dns_msg *m, const void *p, size_t n)
{
    assert_true(m->len + n <= sizeof(m->b));
    memcpy(m->b + m->len, p, n);
    m->len += n;
}

/* testlib_dns_u8, _u16, _u32 - big-endian numbers at the end. */
static void testlib_dns_u8(struct testlib_dns_msg *m, unsigned v)
{
    uint8_t b = (uint8_t)v;
    testlib_dns_put(m, &b, 1);
}

static void testlib_dns_u16(struct testlib_dns_msg *m, unsigned v)
{
    testlib_dns_u8(m, v >> 8);
    testlib_dns_u8(m, v);
}

static void testlib_dns_u32(struct testlib_dns_msg *m, uint32_t v)
{
    testlib_dns_u16(m, v >> 16);
    testlib_dns_u16(m, v & 0xFFFF);
}

/* testlib_dns_name - a name in text ("" or "." the root) as labels, uncompressed. */
static void testlib_dns_name(struct testlib_dns_msg *m, const char *name)
{
    while (*name && strcmp(name, ".") != 0) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        assert_true(l > 0 && l < 64);
        testlib_dns_u8(m, (unsigned)l);
        testlib_dns_put(m, name, l);
        name += l + (dot ? 1 : 0);
    }
    testlib_dns_u8(m, 0);
}

/* testlib_dns_rdata - rr's text as rdata (see testlib_dns.h for each type). */
static void testlib_dns_rdata(struct testlib_dns_msg *m, const struct testlib_dns_rr *rr)
{
    const char *d = rr->data;
    unsigned a, b, c;
    int used = 0;
    uint8_t addr[16];

    switch (rr->type) {
        case 1: /* A */
            assert_int_equal(inet_pton(AF_INET, d, addr), 1);
            testlib_dns_put(m, addr, 4);
            break;
        case 28: /* AAAA */
            assert_int_equal(inet_pton(AF_INET6, d, addr), 1);
            testlib_dns_put(m, addr, 16);
            break;
        case 15: /* MX */
            assert_int_equal(sscanf(d, "%u %n", &a, &used), 1);
            testlib_dns_u16(m, a);
            testlib_dns_name(m, d + used);
            break;
        case TESTLIB_DNS_CNAME:
            testlib_dns_name(m, d);
            break;
        case 16: /* TXT */
            for (;;) {
                const char *bar = strchr(d, '|');
                size_t l = bar ? (size_t)(bar - d) : strlen(d);
                assert_true(l < 256);
                testlib_dns_u8(m, (unsigned)l);
                testlib_dns_put(m, d, l);
                if (!bar)
                    break;
                d = bar + 1;
            }
            break;
        case 52: /* TLSA */
            assert_int_equal(sscanf(d, "%u %u %u %n", &a, &b, &c, &used), 3);
            testlib_dns_u8(m, a);
            testlib_dns_u8(m, b);
            testlib_dns_u8(m, c);
            for (d += used; isxdigit((unsigned char)d[0]) && isxdigit((unsigned char)d[1]);
                 d += 2) {
                unsigned x;
                assert_int_equal(sscanf(d, "%2x", &x), 1);
                testlib_dns_u8(m, x);
            }
            break;
        case TESTLIB_DNS_SOA:
            testlib_dns_name(m, "ns.test");
            testlib_dns_name(m, "hostmaster.test");
            testlib_dns_u32(m, 1);     /* serial */
            testlib_dns_u32(m, 3600);  /* refresh */
            testlib_dns_u32(m, 600);   /* retry */
            testlib_dns_u32(m, 86400); /* expire */
            testlib_dns_u32(m, (uint32_t)strtoul(d, NULL, 10));
            break;
        default:
            fail_msg("testlib_dns: cannot write type %u", rr->type);
    }
}

/* testlib_dns_rrs - the records of list (up to type 0), owned by the question at 12; their count.
 */
static unsigned testlib_dns_rrs(struct testlib_dns_msg *m,
                                const struct testlib_dns_rr *list,
                                size_t max)
{
    unsigned n = 0;
    for (; n < max && list[n].type != 0; n++) {
        testlib_dns_u16(m, 0xC000 | TESTLIB_DNS_HEADER);
        testlib_dns_u16(m, list[n].type);
        testlib_dns_u16(m, 1);
        testlib_dns_u32(m, list[n].ttl);
        size_t at = m->len;
        testlib_dns_u16(m, 0); /* RDLENGTH, written below */
        testlib_dns_rdata(m, &list[n]);
        size_t rdlen = m->len - at - 2;
        m->b[at] = (uint8_t)(rdlen >> 8);
        m->b[at + 1] = (uint8_t)rdlen;
    }
    return n;
}

/* testlib_dns_question - the query's name (lower case), type and end of question; false if
 * malformed. */
static bool testlib_dns_question(const uint8_t *q,
                                 size_t len,
                                 char *name,
                                 uint16_t *type,
                                 size_t *end)
{
    size_t p = TESTLIB_DNS_HEADER, o = 0;
    while (p < len && q[p] != 0) {
        size_t l = q[p];
        if (l > 63 || p + 1 + l >= len || o + l + 2 > 256)
            return false;
        if (o > 0)
            name[o++] = '.';
        for (size_t i = 0; i < l; i++)
            name[o++] = (char)tolower(q[p + 1 + i]);
        p += 1 + l;
    }
    name[o] = '\0';
    if (p + 5 > len)
        return false;
    *type = (uint16_t)(q[p + 1] << 8 | q[p + 2]);
    *end = p + 5;
    return true;
}

/* testlib_dns_answer - the response to the query q[0..len) into m; false: send nothing. */
static bool testlib_dns_answer(struct testlib_dns *s,
                               const uint8_t *q,
                               size_t len,
                               struct testlib_dns_msg *m)
{
    char name[256];
    uint16_t type;
    size_t qend;
    if (len < TESTLIB_DNS_HEADER || !testlib_dns_question(q, len, name, &type, &qend))
        return false;
    s->queries++;
    s->last_ad = (q[3] & 0x20) != 0;
    /* The OPT record, if any, follows the question: root owner, type 41. */
    s->last_edns =
        qend + 3 <= len && q[qend] == 0 && q[qend + 1] == 0 && q[qend + 2] == TESTLIB_DNS_OPT;

    const struct testlib_dns_row *row = NULL;
    for (size_t i = 0; i < s->n_rows && !row; i++) {
        if (s->rows[i].type == type && strcmp(s->rows[i].name, name) == 0) {
            row = &s->rows[i];
            s->counts[i]++;
        }
    }
    if (row && row->spoil == TESTLIB_DNS_SILENT)
        return false;

    m->len = 0;
    testlib_dns_put(m, q, 2);                       /* ID */
    testlib_dns_u8(m, 0x80 | 0x04 | (q[2] & 0x01)); /* QR, AA, RD as asked */
    testlib_dns_u8(m, 0x80 | (row && row->ad ? 0x20 : 0) | (row ? row->rcode : 5));
    testlib_dns_u16(m, 1);
    size_t counts = m->len;
    testlib_dns_u32(m, 0); /* ANCOUNT, NSCOUNT: below */
    testlib_dns_u16(m, 0); /* ARCOUNT */
    testlib_dns_put(m, q + TESTLIB_DNS_HEADER, qend - TESTLIB_DNS_HEADER);
    if (!row)
        return true;
    size_t first = m->len;
    unsigned an = testlib_dns_rrs(m, row->an, TESTLIB_DNS_RRS_MAX);
    unsigned ns = testlib_dns_rrs(m, row->ns, 2);
    if (row->spoil == TESTLIB_DNS_LYING)
        an += 2;
    m->b[counts] = (uint8_t)(an >> 8);
    m->b[counts + 1] = (uint8_t)an;
    m->b[counts + 2] = (uint8_t)(ns >> 8);
    m->b[counts + 3] = (uint8_t)ns;
    if (row->spoil == TESTLIB_DNS_CUT)
        m->len -= m->len >= first + 3 ? 3 : 0;
    if (row->spoil == TESTLIB_DNS_LOOP && an > 0) {
        m->b[first] = (uint8_t)(0xC0 | first >> 8);
        m->b[first + 1] = (uint8_t)first;
    }
    return true;
}

/* testlib_dns_alloc_cb - every datagram into the server's one buffer. */
static void testlib_dns_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct testlib_dns *s = h->data;
    *buf = uv_buf_init((char *)s->buf, sizeof(s->buf));
}

/* testlib_dns_recv_cb - one query in, its response out at once. */
static void testlib_dns_recv_cb(uv_udp_t *u,
                                ssize_t nread,
                                const uv_buf_t *buf,
                                const struct sockaddr *from,
                                unsigned flags)
{
    struct testlib_dns *s = u->data;
    struct testlib_dns_msg m;
    if (nread <= 0 || !from)
        return;
    if (testlib_dns_answer(s, (const uint8_t *)buf->base, (size_t)nread, &m)) {
        uv_buf_t out = uv_buf_init((char *)m.b, (unsigned)m.len);
        assert_int_equal(uv_udp_try_send(u, &out, 1, from), (int)m.len);
    }
}

/* testlib_dns_start - bind 127.0.0.1:0 and serve. */
void testlib_dns_start(struct testlib_dns *s,
                       uv_loop_t *loop,
                       const struct testlib_dns_row *rows,
                       size_t n_rows)
{
    struct sockaddr_in sin;
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    assert_true(n_rows <= TESTLIB_DNS_ROWS_MAX);
    memset(s, 0, sizeof(*s));
    s->rows = rows;
    s->n_rows = n_rows;
    assert_int_equal(uv_udp_init(loop, &s->udp), 0);
    s->udp.data = s;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sin), 0);
    assert_int_equal(uv_udp_bind(&s->udp, (const struct sockaddr *)&sin, 0), 0);
    assert_int_equal(uv_udp_getsockname(&s->udp, (struct sockaddr *)&ss, &len), 0);
    snprintf(s->servers, sizeof(s->servers), "127.0.0.1:%u",
             ntohs(((struct sockaddr_in *)&ss)->sin_port));
    assert_int_equal(uv_udp_recv_start(&s->udp, testlib_dns_alloc_cb, testlib_dns_recv_cb), 0);
}

/* testlib_dns_count - the row's query count. */
unsigned testlib_dns_count(const struct testlib_dns *s, const char *name, uint16_t type)
{
    for (size_t i = 0; i < s->n_rows; i++)
        if (s->rows[i].type == type && strcmp(s->rows[i].name, name) == 0)
            return s->counts[i];
    fail_msg("testlib_dns: no row for %s type %u", name, type);
    return 0;
}

/* testlib_dns_close - stop and close the socket. */
void testlib_dns_close(struct testlib_dns *s)
{
    if (!uv_is_closing((uv_handle_t *)&s->udp))
        uv_close((uv_handle_t *)&s->udp, NULL);
}
