/*
 * test_consensus_wire.c - the raft port's checker (consensus/consensus_wire.c).
 *
 * Valid messages are encoded by libraft 0.15 itself (uvEncodeMessage, an
 * internal symbol of the static archive hamr links); the handshake, which
 * libraft encodes in a static function, is built by its documented layout.
 * Every stream is fed three ways (whole, in uneven pieces, octet by octet)
 * and the three must agree on the verdict, the reason and the bytes let
 * through. Malformed streams are a table: a label, how to build the bytes,
 * and the reason the checker must give.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <raft.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"

#include "consensus/consensus_wire.h"

/* libraft 0.15, src/uv_encoding.h: not in its public headers. */
int uvEncodeMessage(const struct raft_message *message, uv_buf_t **bufs, unsigned *n_bufs);

#define STREAM_MAX 16384

static const struct consensus_wire_limits limits = {
    .max_entry = 4096,
    .max_message = 8192,
    .max_entries = 64,
};

/* stream - bytes to feed; mark: how many of them make up valid messages before the bad part. */
struct stream {
    uint8_t b[STREAM_MAX];
    size_t len;
    size_t mark; /* end of the last valid message (the handshake excluded from "out") */
    size_t hs;   /* handshake length */
};

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void add(struct stream *s, const void *p, size_t n)
{
    assert_true(s->len + n <= sizeof(s->b));
    memcpy(s->b + s->len, p, n);
    s->len += n;
}

static void add64(struct stream *s, uint64_t v)
{
    uint8_t b[8];
    put64(b, v);
    add(s, b, 8);
}

/* add_handshake - protocol, id, padded address (as uv_tcp_connect.c encodes it). */
static void add_handshake(struct stream *s, uint64_t protocol, uint64_t id, const char *addr)
{
    size_t n = strlen(addr) + 1;
    size_t padded = (n + 7) / 8 * 8;
    uint8_t a[128] = {0};
    memcpy(a, addr, n);
    add64(s, protocol);
    add64(s, id);
    add64(s, padded);
    add(s, a, padded);
    s->hs = s->len;
    s->mark = s->len;
}

/* add_message - libraft's own encoding of m, header and payload. */
static void add_message(struct stream *s, const struct raft_message *m)
{
    uv_buf_t *bufs;
    unsigned n;
    assert_int_equal(uvEncodeMessage(m, &bufs, &n), 0);
    for (unsigned i = 0; i < n; i++)
        add(s, bufs[i].base, bufs[i].len);
    raft_free(bufs[0].base);
    raft_free(bufs);
}

static uint8_t payload[4096];

/* message_append - AppendEntries with n entries of the given sizes. */
static void add_append(struct stream *s, unsigned n, const size_t *sizes, uint64_t term)
{
    struct raft_entry e[8];
    struct raft_message m;
    memset(&m, 0, sizeof(m));
    memset(e, 0, sizeof(e));
    assert_true(n <= 8);
    for (unsigned i = 0; i < n; i++) {
        e[i].term = term;
        e[i].type = i == 0 ? RAFT_BARRIER : RAFT_COMMAND;
        e[i].buf.base = payload;
        e[i].buf.len = sizes[i];
    }
    m.type = RAFT_IO_APPEND_ENTRIES;
    m.append_entries.term = term;
    m.append_entries.prev_log_index = 7;
    m.append_entries.prev_log_term = 1;
    m.append_entries.leader_commit = 6;
    m.append_entries.entries = e;
    m.append_entries.n_entries = n;
    add_message(s, &m);
}

static void add_snapshot(struct stream *s, size_t data_len)
{
    struct raft_message m;
    memset(&m, 0, sizeof(m));
    m.type = RAFT_IO_INSTALL_SNAPSHOT;
    m.install_snapshot.term = 3;
    m.install_snapshot.last_index = 100;
    m.install_snapshot.last_term = 2;
    m.install_snapshot.conf_index = 1;
    raft_configuration_init(&m.install_snapshot.conf);
    assert_int_equal(
        raft_configuration_add(&m.install_snapshot.conf, 1, "127.0.0.1:9001", RAFT_VOTER), 0);
    assert_int_equal(
        raft_configuration_add(&m.install_snapshot.conf, 2, "127.0.0.1:9002", RAFT_STANDBY), 0);
    m.install_snapshot.data.base = payload;
    m.install_snapshot.data.len = data_len;
    add_message(s, &m);
    raft_configuration_close(&m.install_snapshot.conf);
}

/* add_every_type - one valid message of each of the six types. */
static void add_every_type(struct stream *s)
{
    struct raft_message m;
    static const size_t sizes[3] = {8, 64, 1000};
    add_append(s, 3, sizes, 2);
    add_append(s, 0, NULL, 2); /* a heartbeat */
    memset(&m, 0, sizeof(m));
    m.type = RAFT_IO_APPEND_ENTRIES_RESULT;
    m.append_entries_result.term = 2;
    m.append_entries_result.last_log_index = 9;
    add_message(s, &m);
    memset(&m, 0, sizeof(m));
    m.type = RAFT_IO_REQUEST_VOTE;
    m.request_vote.term = 3;
    m.request_vote.candidate_id = 2;
    m.request_vote.pre_vote = true;
    add_message(s, &m);
    memset(&m, 0, sizeof(m));
    m.type = RAFT_IO_REQUEST_VOTE_RESULT;
    m.request_vote_result.term = 3;
    m.request_vote_result.vote_granted = true;
    add_message(s, &m);
    add_snapshot(s, 256);
    memset(&m, 0, sizeof(m));
    m.type = RAFT_IO_TIMEOUT_NOW;
    m.timeout_now.term = 3;
    add_message(s, &m);
    s->mark = s->len;
}

/* ------------------------------------------------------------------------ */
/* Feeding.                                                                 */

struct sink {
    uint8_t b[STREAM_MAX];
    size_t len;
};

static void sink_cb(void *arg, const uint8_t *data, size_t len)
{
    struct sink *k = arg;
    assert_true(k->len + len <= sizeof(k->b));
    memcpy(k->b + k->len, data, len);
    k->len += len;
}

struct verdict {
    int rv; /* 0 or the first error */
    const char *why;
    bool handshaken;
    uint64_t id;
    char address[CONSENSUS_WIRE_ADDR_MAX];
    uint64_t messages;
    struct sink out;
};

/* feed - the stream in pieces of piece bytes (0: whole), re-feeding after the handshake stop. */
static void feed(const struct stream *s, size_t piece, struct verdict *v)
{
    struct consensus_wire w;
    consensus_wire_init(&w, &limits);
    memset(v, 0, sizeof(*v));
    size_t off = 0;
    size_t step = 0;
    while (off < s->len && v->rv == 0) {
        /* Uneven pieces: piece, piece + 1, piece + 2, ... */
        size_t n = piece == 0 ? s->len - off : piece + (step++ % 3);
        if (n > s->len - off)
            n = s->len - off;
        size_t done = 0;
        while (done < n) {
            ssize_t r = consensus_wire_feed(&w, s->b + off + done, n - done, sink_cb, &v->out);
            if (r < 0) {
                v->rv = (int)r;
                break;
            }
            assert_true(r > 0);
            done += (size_t)r;
        }
        off += n;
    }
    if (v->rv != 0) {
        v->why = w.why;
        /* A refused stream stays refused. */
        assert_int_equal(consensus_wire_feed(&w, s->b, 1, sink_cb, &v->out), v->rv);
    }
    v->handshaken = consensus_wire_handshaken(&w);
    v->id = w.id;
    memcpy(v->address, w.address, sizeof(v->address));
    v->messages = w.messages;
    consensus_wire_free(&w);
}

/* feed_three_ways - whole, in pieces, octet by octet: all must agree; returns the verdict. */
static void feed_three_ways(const struct stream *s, struct verdict *whole)
{
    static struct verdict pieces, octets;
    feed(s, 0, whole);
    feed(s, 5, &pieces);
    feed(s, 1, &octets);
    const struct verdict *others[2] = {&pieces, &octets};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(others[i]->rv, whole->rv);
        assert_ptr_equal(others[i]->why, whole->why);
        assert_int_equal(others[i]->messages, whole->messages);
        assert_int_equal(others[i]->out.len, whole->out.len);
        assert_memory_equal(others[i]->out.b, whole->out.b, whole->out.len);
    }
}

/* ------------------------------------------------------------------------ */
/* Valid streams.                                                           */

static void test_valid_every_type(void **state)
{
    (void)state;
    static struct stream s;
    static struct verdict v;
    memset(&s, 0, sizeof(s));
    add_handshake(&s, 1, 7, "127.0.0.1:9007");
    add_every_type(&s);
    feed_three_ways(&s, &v);
    assert_int_equal(v.rv, 0);
    assert_true(v.handshaken);
    assert_int_equal(v.id, 7);
    assert_string_equal(v.address, "127.0.0.1:9007");
    assert_int_equal(v.messages, 7);
    /* Everything after the handshake reaches libraft, unchanged. */
    assert_int_equal(v.out.len, s.len - s.hs);
    assert_memory_equal(v.out.b, s.b + s.hs, v.out.len);
}

static void test_valid_partial(void **state)
{
    (void)state;
    static struct stream s;
    static struct verdict v;
    memset(&s, 0, sizeof(s));
    add_handshake(&s, 1, 7, "127.0.0.1:9007");
    add_every_type(&s);
    size_t full = s.len;
    static const size_t sizes[1] = {512};
    add_append(&s, 1, sizes, 2);
    /* Cut inside the last header: its bytes are held back, nothing is refused. */
    s.len = full + 30;
    feed_three_ways(&s, &v);
    assert_int_equal(v.rv, 0);
    assert_int_equal(v.out.len, full - s.hs);
    /* Cut inside its payload: the header and the payload so far pass. */
    s.len = full + 16 + 64 + 100;
    feed_three_ways(&s, &v);
    assert_int_equal(v.rv, 0);
    assert_int_equal(v.out.len, s.len - s.hs);
}

/* ------------------------------------------------------------------------ */
/* Malformed streams.                                                       */

/* Byte offsets within a message: preamble, then the header. */
#define OFF_TYPE 0
#define OFF_HLEN 8
#define OFF_TERM 16
#define OFF_AE_N (16 + 32)
#define OFF_AE_E0 (16 + 40) /* first entry: term, type at +8, size at +12 */
#define OFF_IS_CLEN (16 + 32)
#define OFF_IS_CONF (16 + 40)

struct bad_case {
    const char *label;
    void (*build)(struct stream *s);
    const char *why;
};

static void hs_ok(struct stream *s)
{
    add_handshake(s, 1, 2, "127.0.0.1:9002");
}

static void bad_protocol(struct stream *s)
{
    add_handshake(s, 2, 2, "127.0.0.1:9002");
}

static void bad_id(struct stream *s)
{
    add_handshake(s, 1, 0, "127.0.0.1:9002");
}

static void bad_addr_len(struct stream *s, uint64_t len)
{
    add64(s, 1);
    add64(s, 2);
    add64(s, len);
    uint8_t a[128] = "127.0.0.1:9002";
    add(s, a, sizeof(a));
}

static void bad_addr_zero(struct stream *s)
{
    bad_addr_len(s, 0);
}

static void bad_addr_long(struct stream *s)
{
    bad_addr_len(s, 72);
}

static void bad_addr_huge(struct stream *s)
{
    bad_addr_len(s, UINT64_MAX - 7);
}

static void bad_addr_unaligned(struct stream *s)
{
    bad_addr_len(s, 15);
}

static void bad_addr_no_nul(struct stream *s)
{
    add64(s, 1);
    add64(s, 2);
    add64(s, 16);
    add(s, "AAAAAAAAAAAAAAAA", 16);
}

static void bad_addr_empty(struct stream *s)
{
    add64(s, 1);
    add64(s, 2);
    add64(s, 8);
    add(s, "\0\0\0\0\0\0\0\0", 8);
}

/* ok_then - a handshake and one message of every type, then the bad message. */
static size_t ok_then(struct stream *s)
{
    hs_ok(s);
    add_every_type(s);
    return s->len;
}

static void bad_type(struct stream *s, uint64_t type)
{
    size_t at = ok_then(s);
    add64(s, type);
    add64(s, 24);
    add64(s, 1);
    add64(s, 0);
    add64(s, 0);
    (void)at;
}

static void bad_type_zero(struct stream *s)
{
    bad_type(s, 0);
}

static void bad_type_seven(struct stream *s)
{
    bad_type(s, 7);
}

/* bad_ae_claim - the stranger's packet: an AppendEntries header claiming n entries it lacks. */
static void bad_ae_claim(struct stream *s, uint64_t n, uint64_t hlen)
{
    hs_ok(s);
    add64(s, 1);
    add64(s, hlen);
    add64(s, 1);
    add64(s, 0);
    add64(s, 0);
    add64(s, 0);
    add64(s, n);
    add64(s, 0);
    s->len = s->hs + 16 + hlen < s->len ? s->hs + 16 + hlen : s->len;
}

static void bad_ae_short_1(struct stream *s)
{
    bad_ae_claim(s, 1, 39);
    assert_int_equal(s->len, 95);
}

static void bad_ae_claim_1(struct stream *s)
{
    bad_ae_claim(s, 1, 48);
}

static void bad_ae_claim_million(struct stream *s)
{
    bad_ae_claim(s, 1000000, 48);
}

static void bad_ae_claim_ffffffff(struct stream *s)
{
    bad_ae_claim(s, 0xFFFFFFFFu, 48);
}

static void bad_ae_too_many(struct stream *s)
{
    bad_ae_claim(s, 65, 48 + 16 * 65);
}

/* ae_one - a valid one-entry AppendEntries after the good messages; returns its offset. */
static size_t ae_one(struct stream *s, size_t size)
{
    size_t at = ok_then(s);
    size_t sizes[1] = {size};
    add_append(s, 1, sizes, 2);
    return at;
}

static void bad_ae_size_unaligned(struct stream *s)
{
    size_t at = ae_one(s, 64);
    put64(s->b + at + OFF_AE_E0 + 8, 0);
    s->b[at + OFF_AE_E0 + 8] = RAFT_COMMAND;
    s->b[at + OFF_AE_E0 + 12] = 63;
}

static void bad_ae_size_zero(struct stream *s)
{
    size_t at = ae_one(s, 64);
    s->b[at + OFF_AE_E0 + 12] = 0;
}

static void bad_ae_size_big(struct stream *s)
{
    size_t at = ae_one(s, 64);
    put64(s->b + at + OFF_AE_E0 + 8, 0);
    s->b[at + OFF_AE_E0 + 8] = RAFT_COMMAND;
    s->b[at + OFF_AE_E0 + 12 + 1] = 0x20; /* 8192 */
}

static void bad_ae_sum_big(struct stream *s)
{
    size_t at = ok_then(s);
    static const size_t sizes[3] = {4096, 4096, 8};
    add_append(s, 3, sizes, 2);
    (void)at;
}

static void bad_ae_entry_type(struct stream *s)
{
    size_t at = ae_one(s, 64);
    s->b[at + OFF_AE_E0 + 8] = 4;
}

static void bad_term(struct stream *s)
{
    size_t at = ae_one(s, 64);
    put64(s->b + at + OFF_TERM, UINT64_C(12600000000000000000));
}

static void bad_entry_term(struct stream *s)
{
    size_t at = ae_one(s, 64);
    put64(s->b + at + OFF_AE_E0, UINT64_MAX);
}

static void bad_rv_len(struct stream *s)
{
    size_t at = ok_then(s);
    struct raft_message m;
    memset(&m, 0, sizeof(m));
    m.type = RAFT_IO_REQUEST_VOTE;
    add_message(s, &m);
    put64(s->b + at + OFF_HLEN, 32); /* the legacy size libraft would read past */
}

static size_t is_one(struct stream *s)
{
    size_t at = ok_then(s);
    add_snapshot(s, 256);
    return at;
}

static void bad_is_conf_len(struct stream *s)
{
    size_t at = is_one(s);
    put64(s->b + at + OFF_IS_CLEN, 8);
}

static void bad_is_conf_no_nul(struct stream *s)
{
    size_t at = is_one(s);
    /* Overwrite both addresses and their NULs (format 1, count 2, id 1, address...). */
    memset(s->b + at + OFF_IS_CONF + 17, 'A', 40);
}

static void bad_is_conf_count(struct stream *s)
{
    size_t at = is_one(s);
    put64(s->b + at + OFF_IS_CONF + 1, 0xFFFFFFFFu);
}

/* is_data_len - an InstallSnapshot whose data length field says len. */
static void is_data_len(struct stream *s, uint64_t len)
{
    size_t at = is_one(s);
    uint64_t clen = 0;
    for (int i = 7; i >= 0; i--)
        clen = (clen << 8) | s->b[at + OFF_IS_CLEN + i];
    put64(s->b + at + OFF_IS_CONF + clen, len);
}

static void bad_is_data_zero(struct stream *s)
{
    is_data_len(s, 0);
}

static void bad_is_data_big(struct stream *s)
{
    is_data_len(s, UINT64_MAX);
}

static const struct bad_case bad_cases[] = {
    {"protocol 2", bad_protocol, "handshake: unknown protocol version"},
    {"node id 0", bad_id, "handshake: node id 0"},
    {"address length 0", bad_addr_zero, "handshake: address length out of bounds"},
    {"address length 72", bad_addr_long, "handshake: address length out of bounds"},
    {"address length 2^64-8", bad_addr_huge, "handshake: address length out of bounds"},
    {"address length 15", bad_addr_unaligned, "handshake: address length out of bounds"},
    {"address without NUL", bad_addr_no_nul, "handshake: address not NUL-terminated"},
    {"empty address", bad_addr_empty, "handshake: empty address"},
    {"type 0", bad_type_zero, "unknown message type"},
    {"type 7", bad_type_seven, "unknown message type"},
    {"95 bytes: 39-byte AppendEntries header", bad_ae_short_1,
     "header length does not fit the message type"},
    {"AppendEntries claims 1", bad_ae_claim_1,
     "AppendEntries: entry count does not match its length"},
    {"AppendEntries claims 1000000", bad_ae_claim_million,
     "AppendEntries: entry count does not match its length"},
    {"AppendEntries claims 0xFFFFFFFF", bad_ae_claim_ffffffff,
     "AppendEntries: entry count does not match its length"},
    {"AppendEntries over max_entries", bad_ae_too_many,
     "header length does not fit the message type"},
    {"entry size 63", bad_ae_size_unaligned, "AppendEntries: entry size out of bounds"},
    {"entry size 0", bad_ae_size_zero, "AppendEntries: entry size out of bounds"},
    {"entry over max_entry", bad_ae_size_big, "AppendEntries: entry size out of bounds"},
    {"entries over max_message", bad_ae_sum_big, "AppendEntries: entries exceed the message limit"},
    {"entry type 4", bad_ae_entry_type, "AppendEntries: unknown entry type"},
    {"term 1.26e19", bad_term, "term out of bounds"},
    {"entry term 2^64-1", bad_entry_term, "AppendEntries: entry term out of bounds"},
    {"RequestVote of 32 bytes", bad_rv_len, "header length does not fit the message type"},
    {"InstallSnapshot configuration size", bad_is_conf_len,
     "InstallSnapshot: configuration size does not match"},
    {"InstallSnapshot address without NUL", bad_is_conf_no_nul,
     "InstallSnapshot: malformed configuration"},
    {"InstallSnapshot member count", bad_is_conf_count, "InstallSnapshot: malformed configuration"},
    {"InstallSnapshot no data", bad_is_data_zero, "InstallSnapshot: data size out of bounds"},
    {"InstallSnapshot data 2^64-1", bad_is_data_big, "InstallSnapshot: data size out of bounds"},
};

static void test_malformed(void **state)
{
    (void)state;
    static struct stream s;
    static struct verdict v;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(bad_cases); i++) {
        const struct bad_case *c = &bad_cases[i];
        memset(&s, 0, sizeof(s));
        c->build(&s);
        print_message("case: %s\n", c->label);
        feed_three_ways(&s, &v);
        assert_int_equal(v.rv, HAMR_EPROTO);
        assert_non_null(v.why);
        assert_string_equal(v.why, c->why);
        /* Nothing of the bad message reached libraft: only the good ones before it. */
        size_t good = s.mark > s.hs ? s.mark - s.hs : 0;
        assert_int_equal(v.out.len, good);
        assert_memory_equal(v.out.b, s.b + s.hs, good);
    }
}

/* A header announced large costs what has arrived of it, not what it claims. */
static void test_buffer_follows_bytes(void **state)
{
    (void)state;
    static const struct consensus_wire_limits big = {
        .max_entry = 1u << 20,
        .max_message = 1u << 30,
        .max_entries = 1u << 20,
    };
    static struct stream s;
    static struct sink out;
    memset(&s, 0, sizeof(s));
    memset(&out, 0, sizeof(out));
    hs_ok(&s);
    add64(&s, 1);
    add64(&s, 48 + 16 * UINT64_C(1000000));
    uint8_t some[100] = {0};
    add(&s, some, sizeof(some));
    struct consensus_wire w;
    consensus_wire_init(&w, &big);
    size_t off = 0;
    while (off < s.len) {
        ssize_t r = consensus_wire_feed(&w, s.b + off, s.len - off, sink_cb, &out);
        assert_true(r > 0);
        off += (size_t)r;
    }
    assert_int_equal(w.need, 16 + 48 + 16 * 1000000);
    assert_true(w.cap <= 256);
    assert_int_equal(out.len, 0);
    consensus_wire_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_every_type),
        cmocka_unit_test(test_valid_partial),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_buffer_follows_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
