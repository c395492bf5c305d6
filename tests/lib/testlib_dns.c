/*
 * testlib_dns.c - the fake DNS server of testlib_dns.h. Owns its UDP
 * handle, its TCP listener and the connections it accepted (slots in
 * struct testlib_dns, so nothing to free but write requests). Answers each
 * UDP query at once with uv_udp_try_send (loopback, so no send request to
 * keep alive). Over TCP (RFC 1035 section 4.2.2) it gathers the 2-octet
 * length-prefixed queries across reads, answers each in order with
 * uv_write, and closes a connection at the peer's EOF, on an error, or on
 * a query it cannot frame. Builds responses by RFC 1035 section 4.1: the
 * question copied from the query, owners as a pointer to it, rdata from
 * the row's text. A row it cannot encode fails the cmocka test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "tests/lib/testlib_dns.h"

#define TESTLIB_DNS_OPT 41
#define TESTLIB_DNS_HEADER 12
#define TESTLIB_DNS_FLAG_TC 0x02 /* octet 2 of the header */

/* testlib_dns_msg - a response being written, bounded by its buffer. */
struct testlib_dns_msg {
    uint8_t b[TESTLIB_DNS_MSG_MAX];
    size_t len;
};

/* testlib_dns_out - one TCP response in flight: the length prefix and the message. */
struct testlib_dns_out {
    uv_write_t req;
    uint8_t b[2 + TESTLIB_DNS_MSG_MAX];
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

/*
 * testlib_dns_answer - the response to the query q[0..len), which came
 * over TCP if tcp, into m; *rowp the row it matched (or NULL). false: send
 * nothing. The TCP spoil modes are the caller's: m is the whole answer.
 */
static bool testlib_dns_answer(struct testlib_dns *s,
                               const uint8_t *q,
                               size_t len,
                               bool tcp,
                               struct testlib_dns_msg *m,
                               const struct testlib_dns_row **rowp)
{
    char name[256];
    uint16_t type;
    size_t qend;
    *rowp = NULL;
    if (len < TESTLIB_DNS_HEADER || !testlib_dns_question(q, len, name, &type, &qend))
        return false;
    s->queries++;
    s->tcp_queries += tcp;
    s->last_ad = (q[3] & 0x20) != 0;
    /* The OPT record, if any, follows the question: root owner, type 41. */
    s->last_edns =
        qend + 3 <= len && q[qend] == 0 && q[qend + 1] == 0 && q[qend + 2] == TESTLIB_DNS_OPT;

    const struct testlib_dns_row *row = NULL;
    for (size_t i = 0; i < s->n_rows && !row; i++) {
        if (s->rows[i].type == type && strcmp(s->rows[i].name, name) == 0) {
            row = &s->rows[i];
            s->counts[i]++;
            s->tcp_counts[i] += tcp;
        }
    }
    *rowp = row;
    if (row && row->spoil == TESTLIB_DNS_SILENT)
        return false;
    /* Over UDP a TC row is cut to its header and question, RFC 2181 section 9. */
    bool tc = !tcp && row &&
              (row->spoil == TESTLIB_DNS_TC_UDP || row->spoil == TESTLIB_DNS_TC_TCP_CLOSE ||
               row->spoil == TESTLIB_DNS_TC_TCP_CUT);

    m->len = 0;
    testlib_dns_put(m, q, 2); /* ID */
    /* QR, AA, TC for a TC row over UDP, RD as asked */
    testlib_dns_u8(m, 0x80 | 0x04 | (tc ? TESTLIB_DNS_FLAG_TC : 0) | (q[2] & 0x01));
    testlib_dns_u8(m, 0x80 | (row && row->ad ? 0x20 : 0) | (row ? row->rcode : 5));
    testlib_dns_u16(m, 1);
    size_t counts = m->len;
    testlib_dns_u32(m, 0); /* ANCOUNT, NSCOUNT: below */
    testlib_dns_u16(m, 0); /* ARCOUNT */
    testlib_dns_put(m, q + TESTLIB_DNS_HEADER, qend - TESTLIB_DNS_HEADER);
    if (!row || tc)
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
    const struct testlib_dns_row *row;
    if (nread <= 0 || !from)
        return;
    if (testlib_dns_answer(s, (const uint8_t *)buf->base, (size_t)nread, false, &m, &row)) {
        uv_buf_t out = uv_buf_init((char *)m.b, (unsigned)m.len);
        assert_int_equal(uv_udp_try_send(u, &out, 1, from), (int)m.len);
        s->last_tcp = false;
        s->last_len = m.len;
    }
}

/* testlib_dns_conn_closed_cb - the slot is free again. */
static void testlib_dns_conn_closed_cb(uv_handle_t *h)
{
    struct testlib_dns_conn *c = h->data;
    c->used = false;
    c->closing = false;
    c->len = 0;
}

/* testlib_dns_conn_close - close c once; its slot frees in the close callback. */
static void testlib_dns_conn_close(struct testlib_dns_conn *c)
{
    if (!c->used || c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, testlib_dns_conn_closed_cb);
}

/* testlib_dns_write_cb - a response written (or cancelled by the close): free it. */
static void testlib_dns_write_cb(uv_write_t *req, int status)
{
    (void)status; /* a peer that went away is the test's business, not ours */
    free(req->data);
}

/*
 * testlib_dns_conn_send - n octets of m to c after the length prefix of
 * m's whole length (n < m->len: a cut answer, the prefix still promising it all).
 */
static void testlib_dns_conn_send(struct testlib_dns_conn *c,
                                  const struct testlib_dns_msg *m,
                                  size_t n)
{
    struct testlib_dns_out *o = malloc(sizeof(*o));
    assert_non_null(o);
    o->req.data = o;
    o->b[0] = (uint8_t)(m->len >> 8);
    o->b[1] = (uint8_t)m->len;
    memcpy(o->b + 2, m->b, n);
    uv_buf_t out = uv_buf_init((char *)o->b, (unsigned)(2 + n));
    if (uv_write(&o->req, (uv_stream_t *)&c->tcp, &out, 1, testlib_dns_write_cb) != 0) {
        free(o);
        testlib_dns_conn_close(c);
        return;
    }
    c->s->last_tcp = true;
    c->s->last_len = m->len;
}

/*
 * testlib_dns_conn_query - one framed query q[0..len) off c: answered whole,
 * cut (and c read no more), closed unanswered, or not at all (SILENT).
 */
static void testlib_dns_conn_query(struct testlib_dns_conn *c, const uint8_t *q, size_t len)
{
    struct testlib_dns_msg m;
    const struct testlib_dns_row *row;
    if (!testlib_dns_answer(c->s, q, len, true, &m, &row))
        return;
    enum testlib_dns_spoil spoil = row ? row->spoil : TESTLIB_DNS_WHOLE;
    if (spoil == TESTLIB_DNS_TC_TCP_CLOSE) {
        testlib_dns_conn_close(c);
        return;
    }
    if (spoil == TESTLIB_DNS_TC_TCP_CUT) {
        /* Whatever else the peer sends on c is never read: it waits for the rest. */
        testlib_dns_conn_send(c, &m, m.len / 2);
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->cut = true;
        return;
    }
    testlib_dns_conn_send(c, &m, m.len);
}

/* testlib_dns_conn_alloc_cb - the free end of the connection's input buffer (0: full). */
static void testlib_dns_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct testlib_dns_conn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init((char *)c->in + c->len, (unsigned)(sizeof(c->in) - c->len));
}

/*
 * testlib_dns_conn_read_cb - octets in: take every whole query (a query
 * may span reads, a read may hold several), keep the rest for the next.
 * EOF, an error, or a query longer than the buffer close the connection.
 */
static void testlib_dns_conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct testlib_dns_conn *c = st->data;
    (void)buf;
    if (nread < 0) {
        testlib_dns_conn_close(c); /* UV_EOF, or UV_ENOBUFS: a query we cannot hold */
        return;
    }
    c->len += (size_t)nread;
    size_t at = 0;
    while (!c->closing && !c->cut && c->len - at >= 2) {
        size_t qlen = (size_t)c->in[at] << 8 | c->in[at + 1];
        if (c->len - at < 2 + qlen)
            break;
        testlib_dns_conn_query(c, c->in + at + 2, qlen);
        at += 2 + qlen;
    }
    memmove(c->in, c->in + at, c->len - at);
    c->len -= at;
}

/* testlib_dns_connection_cb - accept into a free slot and read. */
static void testlib_dns_connection_cb(uv_stream_t *listener, int status)
{
    struct testlib_dns *s = listener->data;
    struct testlib_dns_conn *c = NULL;
    if (status < 0)
        return;
    for (size_t i = 0; i < TESTLIB_DNS_CONNS_MAX && !c; i++)
        if (!s->conns[i].used)
            c = &s->conns[i];
    if (!c)
        fail_msg("testlib_dns: more than %d TCP connections at once", TESTLIB_DNS_CONNS_MAX);
    memset(c, 0, sizeof(*c));
    c->s = s;
    assert_int_equal(uv_tcp_init(listener->loop, &c->tcp), 0);
    c->tcp.data = c;
    c->used = true;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        testlib_dns_conn_close(c);
        return;
    }
    s->tcp_accepted++;
    assert_int_equal(
        uv_read_start((uv_stream_t *)&c->tcp, testlib_dns_conn_alloc_cb, testlib_dns_conn_read_cb),
        0);
}

/*
 * testlib_dns_bind - a UDP and a TCP socket bound to 127.0.0.1 on one port
 * number: the kernel picks it for UDP, and TCP must get the same, so a
 * port whose TCP twin is taken is given back and another one tried.
 */
static void testlib_dns_bind(int *udp_fd, int *tcp_fd, unsigned *port)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        struct sockaddr_in sin;
        socklen_t len = sizeof(sin);
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        assert_true(u >= 0);
        assert_int_equal(bind(u, (struct sockaddr *)&sin, sizeof(sin)), 0);
        assert_int_equal(getsockname(u, (struct sockaddr *)&sin, &len), 0);
        int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(t >= 0);
        if (bind(t, (struct sockaddr *)&sin, sizeof(sin)) == 0) {
            *udp_fd = u;
            *tcp_fd = t;
            *port = ntohs(sin.sin_port);
            return;
        }
        close(t);
        close(u);
    }
    fail_msg("testlib_dns: no port free for both UDP and TCP");
}

/* testlib_dns_start - bind 127.0.0.1 on one port for UDP and TCP, and serve. */
void testlib_dns_start(struct testlib_dns *s,
                       uv_loop_t *loop,
                       const struct testlib_dns_row *rows,
                       size_t n_rows)
{
    int udp_fd = -1, tcp_fd = -1; /* set by testlib_dns_bind, which fails the test otherwise */
    unsigned port = 0;

    assert_true(n_rows <= TESTLIB_DNS_ROWS_MAX);
    memset(s, 0, sizeof(*s));
    s->rows = rows;
    s->n_rows = n_rows;
    testlib_dns_bind(&udp_fd, &tcp_fd, &port);
    assert_int_equal(uv_udp_init(loop, &s->udp), 0);
    s->udp.data = s;
    assert_int_equal(uv_udp_open(&s->udp, udp_fd), 0);
    assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
    s->listener.data = s;
    assert_int_equal(uv_tcp_open(&s->listener, tcp_fd), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 8, testlib_dns_connection_cb), 0);
    snprintf(s->servers, sizeof(s->servers), "127.0.0.1:%u", port);
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

/* testlib_dns_tcp_count - the row's count of TCP queries. */
unsigned testlib_dns_tcp_count(const struct testlib_dns *s, const char *name, uint16_t type)
{
    for (size_t i = 0; i < s->n_rows; i++)
        if (s->rows[i].type == type && strcmp(s->rows[i].name, name) == 0)
            return s->tcp_counts[i];
    fail_msg("testlib_dns: no row for %s type %u", name, type);
    return 0;
}

/* testlib_dns_close - stop and close the sockets: UDP, the listener, each connection. */
void testlib_dns_close(struct testlib_dns *s)
{
    if (!uv_is_closing((uv_handle_t *)&s->udp))
        uv_close((uv_handle_t *)&s->udp, NULL);
    if (!uv_is_closing((uv_handle_t *)&s->listener))
        uv_close((uv_handle_t *)&s->listener, NULL);
    for (size_t i = 0; i < TESTLIB_DNS_CONNS_MAX; i++)
        testlib_dns_conn_close(&s->conns[i]);
}
