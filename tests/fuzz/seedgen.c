/*
 * seedgen.c - writes the binary seeds of the fuzz targets:
 * corpus/queue_apply (operation programs, see fuzz_queue_apply.c),
 * corpus/queue_restore (snapshots, see fuzz_queue_restore.c) and
 * corpus/smtpd_proxy (PROXY v1 lines and v2 headers, see fuzz_smtpd_proxy.c).
 *
 * Usage: fuzz_seedgen DIR [NAME...]   (DIR is tests/fuzz/corpus; files are
 * replaced; NAME limits it to those corpora, e.g. smtpd_proxy)
 *
 * The seeds are real entries and snapshots made with proto_entry_pack and
 * queue_snapshot, plus the corrupt forms the decoders must refuse, and
 * bodies carrying the hostile header forms a DSN must not pass on (long
 * lines, NUL, bare CR and LF, an SMTP smuggling terminator). The PROXY
 * seeds are the valid headers of each kind and the malformed vectors of
 * SECURITY.md S18 (as in tests/unit/net/test_smtpd_proxy.c).
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "util/buf.h"
#include "util/common.h"
#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"

static const char *seedgen_dir;

/* seedgen_die - report and exit. */
static void seedgen_die(const char *what)
{
    fprintf(stderr, "fuzz_seedgen: %s\n", what);
    exit(1);
}

/* seedgen_write - DIR/sub/name := p[0..n). */
static void seedgen_write(const char *sub, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", seedgen_dir, sub);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        seedgen_die(path);
    snprintf(path, sizeof(path), "%s/%s/%s", seedgen_dir, sub, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        seedgen_die(path);
}

/* seedgen_u8 / _u16 / _text / _bytes - append to an operation program. */
static void seedgen_u8(struct buf *b, unsigned v)
{
    uint8_t c = (uint8_t)v;
    if (buf_append(b, &c, 1) != 0)
        seedgen_die("no memory");
}

static void seedgen_u16(struct buf *b, size_t v)
{
    seedgen_u8(b, (unsigned)(v >> 8) & 0xff);
    seedgen_u8(b, (unsigned)v & 0xff);
}

static void seedgen_bytes(struct buf *b, const void *p, size_t n)
{
    if (n > 0 && buf_append(b, p, n) != 0)
        seedgen_die("no memory");
}

/* seedgen_text - a string as fuzz_str reads it: length byte, then the bytes (max 79). */
static void seedgen_text(struct buf *b, const char *s)
{
    size_t n = strlen(s);
    if (n > 79)
        seedgen_die("text too long for a seed");
    seedgen_u8(b, (unsigned)n);
    seedgen_bytes(b, s, n);
}

/* seedgen_sha - SHA-256 of body into out. */
static void seedgen_sha(const char *body, size_t len, uint8_t out[32])
{
    if (EVP_Digest(body, len, out, NULL, EVP_sha256(), NULL) != 1)
        seedgen_die("sha256");
}

/* seedgen_pack - a framed entry (op 0 payload) from e at ts. */
static uint8_t *seedgen_pack(Hamr__Entry *e, uint64_t ts, size_t *len)
{
    uint8_t *p = NULL;
    e->timestamp_ms = ts;
    if (proto_entry_pack(e, NULL, &p, len) != 0)
        seedgen_die("pack");
    return p;
}

/* seedgen_op_raw - op 0: u16 length, then the bytes. */
static void seedgen_op_raw(struct buf *b, const uint8_t *p, size_t n)
{
    seedgen_u8(b, 0);
    seedgen_u16(b, n);
    seedgen_bytes(b, p, n);
}

/* seedgen_op_entry - op 0 with a packed entry; frees it. */
static void seedgen_op_entry(struct buf *b, Hamr__Entry *e, uint64_t ts)
{
    size_t n;
    uint8_t *p = seedgen_pack(e, ts, &n);
    seedgen_op_raw(b, p, n);
    free(p);
}

#define SEEDGEN_TS 1700000000000ull

static const char seedgen_body[] =
    "Received: from client.example (192.0.2.1)\r\n\tby mx.hamr.test (hamr) with ESMTP id Q0\r\n"
    "From: <sender@example.org>\r\nTo: <a@hamr.test>\r\nSubject: hello\r\n\r\nHello.\r\n";

/* seedgen_enqueue - an Enqueue entry of id with rcpts and body (right hash). */
static void seedgen_enqueue(Hamr__Entry *e,
                            Hamr__Enqueue *q,
                            uint8_t sha[32],
                            const char *id,
                            const char *sender,
                            char **rcpts,
                            size_t n_rcpts,
                            const char *body,
                            size_t body_len)
{
    Hamr__Entry ei = HAMR__ENTRY__INIT;
    Hamr__Enqueue qi = HAMR__ENQUEUE__INIT;
    *e = ei;
    *q = qi;
    seedgen_sha(body, body_len, sha);
    q->queue_id = (char *)id;
    q->sender = (char *)sender;
    q->rcpts = rcpts;
    q->n_rcpts = n_rcpts;
    q->body.data = (uint8_t *)body;
    q->body.len = body_len;
    q->body_sha256.data = sha;
    q->body_sha256.len = 32;
    q->client_addr = "192.0.2.1";
    q->helo = "client.example";
    q->accepted_by = 1;
    q->expires_at_ms = SEEDGEN_TS + 5 * 86400000ull;
    e->cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e->enqueue = q;
}

/* seedgen_lifecycle - enqueue, lease, outcome (one delivered, one bounced), admin, node info. */
static void seedgen_lifecycle(struct buf *b, const char *body, size_t body_len, bool check)
{
    Hamr__Entry e;
    Hamr__Enqueue q;
    uint8_t sha[32];
    char *rcpts[] = {"a@hamr.test", "b@example.org", "c@example.org"};
    seedgen_enqueue(&e, &q, sha, "Q0", "sender@example.org", rcpts, 3, body, body_len);
    seedgen_op_entry(b, &e, SEEDGEN_TS);

    Hamr__Entry le = HAMR__ENTRY__INIT;
    Hamr__Lease l = HAMR__LEASE__INIT;
    Hamr__LeaseItem it = HAMR__LEASE_ITEM__INIT, *itp = &it;
    uint32_t idx[] = {0, 1, 2};
    it.queue_id = "Q0";
    it.rcpt_indexes = idx;
    it.n_rcpt_indexes = 3;
    it.lease_id = 3;
    it.destination = "[127.0.0.1]:25";
    l.node_id = 1;
    l.term = 2;
    l.expires_at_ms = SEEDGEN_TS + 900000;
    l.boot_id = "boot-1";
    l.items = &itp;
    l.n_items = 1;
    le.cmd_case = HAMR__ENTRY__CMD_LEASE;
    le.lease = &l;
    seedgen_op_entry(b, &le, SEEDGEN_TS + 1000);

    Hamr__Entry oe = HAMR__ENTRY__INIT;
    Hamr__Outcome o = HAMR__OUTCOME__INIT;
    Hamr__RcptResult r[3] = {HAMR__RCPT_RESULT__INIT, HAMR__RCPT_RESULT__INIT,
                             HAMR__RCPT_RESULT__INIT};
    Hamr__RcptResult *rp[3] = {&r[0], &r[1], &r[2]};
    r[0].rcpt_index = 0;
    r[0].status = HAMR__RCPT_RESULT__STATUS__DELIVERED;
    r[0].smtp_code = 250;
    r[0].diagnostic = "2.0.0 Ok";
    r[1].rcpt_index = 1;
    r[1].status = HAMR__RCPT_RESULT__STATUS__BOUNCED;
    r[1].smtp_code = 550;
    r[1].diagnostic = "5.1.1 <b@example.org>: Recipient address rejected";
    r[2].rcpt_index = 2;
    r[2].status = HAMR__RCPT_RESULT__STATUS__DEFERRED;
    r[2].smtp_code = 451;
    r[2].diagnostic = "4.3.0 try again";
    o.queue_id = "Q0";
    o.lease_id = 3;
    o.results = rp;
    o.n_results = 3;
    o.next_attempt_ms = SEEDGEN_TS + 300000;
    o.reporter = "mx.hamr.test";
    o.remote = "[127.0.0.1]:25";
    o.dsn_expires_at_ms = SEEDGEN_TS + 86400000;
    oe.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
    oe.outcome = &o;
    seedgen_op_entry(b, &oe, SEEDGEN_TS + 2000);

    Hamr__Entry ae = HAMR__ENTRY__INIT;
    Hamr__Admin a = HAMR__ADMIN__INIT;
    a.op = HAMR__ADMIN__OP__BOUNCE;
    a.queue_id = "Q0";
    a.reporter = "mx.hamr.test";
    ae.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    ae.admin = &a;
    seedgen_op_entry(b, &ae, SEEDGEN_TS + 3000);

    Hamr__Entry ne = HAMR__ENTRY__INIT;
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    ni.node_id = 2;
    ni.peer_address = "127.0.0.1:7002";
    ni.control_address = "127.0.0.1:7102";
    ni.version = "0.1.0";
    ni.format_version_max = 1;
    ne.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    ne.node_info = &ni;
    seedgen_op_entry(b, &ne, SEEDGEN_TS + 4000);
    if (check) {
        seedgen_u8(b, 7); /* check op */
        seedgen_u8(b, 1); /* clock + 1 min */
    }
}

/*
 * seedgen_built - the same life cycle as built operations (ops 2..7), in the
 * byte layout fuzz_queue_apply.c reads.
 */
static void seedgen_built(struct buf *b)
{
    /* op 2 enqueue: shape (right hash, default sender, accepted_by 1), id Q1, 2 rcpts. */
    seedgen_u8(b, 2);
    seedgen_u8(b, 0x00);
    seedgen_u8(b, 1); /* id Q1 */
    seedgen_u8(b, 2); /* 2 recipients */
    seedgen_u8(b, 0); /* a@hamr.test */
    seedgen_u8(b, 1); /* b@example.org */
    seedgen_u16(b, sizeof(seedgen_body) - 1);
    seedgen_bytes(b, seedgen_body, sizeof(seedgen_body) - 1);
    seedgen_text(b, "192.0.2.1");
    seedgen_text(b, "client.example");
    seedgen_u8(b, 1); /* tick: +1 min */
    /* op 3 lease: tick, node 1, term 2, +15 min, boot-1, one item Q1 lease 3 dest 1, rcpts 0,1. */
    seedgen_u8(b, 3);
    seedgen_u8(b, 1);
    seedgen_u8(b, 1);
    seedgen_u8(b, 2);
    seedgen_u8(b, 15);
    seedgen_u8(b, 1);
    seedgen_u8(b, 1);
    seedgen_u8(b, 1); /* id Q1 */
    seedgen_u8(b, 3); /* lease id */
    seedgen_u8(b, 1); /* destination */
    seedgen_u8(b, 2); /* two indexes */
    seedgen_u8(b, 0);
    seedgen_u8(b, 1);
    /* op 4 outcome: tick, Q1, lease 3, next +5 min, reporter, remote, 2 results. */
    seedgen_u8(b, 4);
    seedgen_u8(b, 1);
    seedgen_u8(b, 1);
    seedgen_u8(b, 3);
    seedgen_u8(b, 5);
    seedgen_text(b, "mx.hamr.test");
    seedgen_text(b, "[127.0.0.1]:25");
    seedgen_u8(b, 2);
    seedgen_u8(b, 0 | (0 << 3)); /* rcpt 0 delivered */
    seedgen_u8(b, 1);            /* code 250 */
    seedgen_text(b, "2.0.0 Ok");
    seedgen_u8(b, 1 | (2 << 3)); /* rcpt 1 bounced */
    seedgen_u8(b, 5);            /* code 550 */
    seedgen_text(b, "5.1.1 unknown user");
    /* op 5 admin: tick, FLUSH, id "" (every message), reporter. */
    seedgen_u8(b, 5);
    seedgen_u8(b, 1);
    seedgen_u8(b, 3);
    seedgen_u8(b, 0xf0);
    seedgen_text(b, "mx.hamr.test");
    /* op 6 node info: tick, node 1, addresses, version, format 1. */
    seedgen_u8(b, 6);
    seedgen_u8(b, 1);
    seedgen_u8(b, 1);
    seedgen_text(b, "127.0.0.1:7001");
    seedgen_text(b, "127.0.0.1:7101");
    seedgen_text(b, "0.1.0");
    seedgen_u8(b, 1);
    /* op 7 check, one TTL later (prunes the done set). */
    seedgen_u8(b, 7);
    seedgen_u8(b, 0xff);
}

/* seedgen_entry_version - an Entry with a format version / kind the decoder must refuse. */
static void seedgen_entry_raw(struct buf *b, unsigned version, bool with_kind)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Admin a = HAMR__ADMIN__INIT;
    a.op = HAMR__ADMIN__OP__HOLD;
    a.queue_id = "Q0";
    e.format_version = version;
    e.timestamp_ms = SEEDGEN_TS;
    if (with_kind) {
        e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
        e.admin = &a;
    }
    size_t n = hamr__entry__get_packed_size(&e);
    size_t total = (8 + n + 7) / 8 * 8;
    uint8_t *p = calloc(1, total);
    if (p == NULL)
        seedgen_die("no memory");
    memcpy(p, "HAMR", 4);
    proto_u32_put(p + 4, (uint32_t)n);
    hamr__entry__pack(&e, p + 8);
    seedgen_op_raw(b, p, total);
    free(p);
}

/* seedgen_queue_apply - every seed of corpus/queue_apply. */
static void seedgen_queue_apply(void)
{
    struct buf b;
    buf_init(&b, 0);

    seedgen_lifecycle(&b, seedgen_body, sizeof(seedgen_body) - 1, true);
    seedgen_write("queue_apply", "lifecycle", b.data, b.len);
    buf_reset(&b);

    seedgen_built(&b);
    seedgen_write("queue_apply", "built_ops", b.data, b.len);
    buf_reset(&b);

    /* A DSN made from hostile headers: 1200-octet line, NUL, bare CR and LF, smuggling. */
    static const char hostile_tail[] =
        "\r\nX-Nul: a\0b\r\nX-Bare-CR: a\rb\r\nX-Bare-LF: a\nb\r\n"
        "X-Smuggle: x\n.\nMAIL FROM:<smuggled@x>\r\n\r\nbody\r\n";
    char hostile[1300 + sizeof(hostile_tail)];
    memcpy(hostile, "Subject: ", 9);
    memset(hostile + 9, 'x', 1200);
    memcpy(hostile + 1209, hostile_tail, sizeof(hostile_tail));
    seedgen_lifecycle(&b, hostile, 1209 + sizeof(hostile_tail) - 1, true);
    seedgen_write("queue_apply", "hostile_headers_dsn", b.data, b.len);
    buf_reset(&b);

    /* Entries the decoder must refuse. */
    seedgen_entry_raw(&b, PROTO_FORMAT_VERSION_MAX + 1, true); /* newer format */
    seedgen_entry_raw(&b, 0, true);                            /* no format */
    seedgen_entry_raw(&b, 1, false);                           /* no kind */
    seedgen_write("queue_apply", "refused_versions", b.data, b.len);
    buf_reset(&b);

    size_t n;
    Hamr__Entry e;
    Hamr__Enqueue q;
    uint8_t sha[32];
    char *rcpts[] = {"a@hamr.test"};
    seedgen_enqueue(&e, &q, sha, "Q2", "", rcpts, 1, "x\r\n", 3);
    uint8_t *p = seedgen_pack(&e, SEEDGEN_TS, &n);
    p[0] = 'X'; /* bad magic */
    seedgen_op_raw(&b, p, n);
    p[0] = 'H';
    p[7] ^= 1; /* bad length */
    seedgen_op_raw(&b, p, n);
    p[7] ^= 1;
    seedgen_op_raw(&b, p, n - 8); /* truncated */
    seedgen_u8(&b, 1);            /* framed payload: the protobuf alone */
    seedgen_u16(&b, proto_u32_get(p + 4));
    seedgen_bytes(&b, p + 8, proto_u32_get(p + 4));
    sha[0] ^= 1; /* wrong body hash */
    free(p);
    p = seedgen_pack(&e, SEEDGEN_TS, &n);
    seedgen_op_raw(&b, p, n);
    free(p);
    seedgen_write("queue_apply", "corrupt_frames", b.data, b.len);
    buf_free(&b);
}

/* seedgen_snapshot_of - write a snapshot seed (flag byte 0 + framed) of the program in b. */
static void seedgen_snapshot_of(const struct buf *b, const char *name)
{
    struct queue *q = queue_new();
    if (q == NULL)
        seedgen_die("no memory");
    /* Apply the program's op-0 entries. */
    size_t i = 0;
    while (i + 3 <= b->len && b->data[i] == 0) {
        size_t n = (size_t)b->data[i + 1] << 8 | b->data[i + 2];
        struct queue_apply_result res;
        (void)queue_apply(q, b->data + i + 3, n, &res);
        i += 3 + n;
    }
    uint8_t *snap = NULL;
    size_t len = 0;
    if (queue_snapshot(q, NULL, &snap, &len) != 0)
        seedgen_die("snapshot");
    uint8_t *seed = malloc(len + 1);
    if (seed == NULL)
        seedgen_die("no memory");
    seed[0] = 0;
    memcpy(seed + 1, snap, len);
    seedgen_write("queue_restore", name, seed, len + 1);
    /* The same without magic, flag byte 1: the target adds it. */
    char name2[128];
    snprintf(name2, sizeof(name2), "%s_nomagic", name);
    seed[4] = 1;
    seedgen_write("queue_restore", name2, seed + 4, len - 3);
    free(seed);
    free(snap);
    queue_free(q);
}

/* seedgen_bad_snapshot - a Snapshot built by hand with one defect; flag byte 1. */
static void seedgen_bad_snapshot(const char *name, int defect)
{
    Hamr__Snapshot s = HAMR__SNAPSHOT__INIT;
    Hamr__QueuedMessage m = HAMR__QUEUED_MESSAGE__INIT, *mp[2] = {&m, &m};
    Hamr__Enqueue q = HAMR__ENQUEUE__INIT;
    Hamr__RcptState r = HAMR__RCPT_STATE__INIT, *rp = &r;
    Hamr__DoneId d = HAMR__DONE_ID__INIT, *dp = &d;
    uint8_t sha[32];
    char *rcpts[] = {"a@hamr.test"};
    seedgen_sha("x\r\n", 3, sha);
    q.queue_id = "Q0";
    q.sender = "s@example.org";
    q.rcpts = rcpts;
    q.n_rcpts = 1;
    q.body.data = (uint8_t *)"x\r\n";
    q.body.len = 3;
    q.body_sha256.data = sha;
    q.body_sha256.len = 32;
    r.addr = "a@hamr.test";
    r.state = HAMR__RCPT_STATE__STATE__LEASED;
    r.lease_id = 5;
    r.lease_expires_ms = SEEDGEN_TS + 1000;
    m.enqueue = &q;
    m.rcpts = &rp;
    m.n_rcpts = 1;
    d.queue_id = "Q9";
    d.done_at_ms = SEEDGEN_TS;
    s.format_version = 1;
    s.messages = mp;
    s.n_messages = 1;
    s.done = &dp;
    s.n_done = 1;
    s.last_timestamp_ms = SEEDGEN_TS;
    s.applied = 4;
    switch (defect) {
        case 1:
            sha[0] ^= 1; /* body does not match its hash */
            break;
        case 2:
            s.n_messages = 2; /* the same id twice */
            break;
        case 3:
            m.n_rcpts = 0; /* recipient count mismatch */
            break;
        case 4:
            r.state = 7; /* unknown state */
            break;
        case 5:
            s.format_version = PROTO_SNAPSHOT_VERSION + 1; /* newer format */
            break;
        case 6:
            d.queue_id = "Q0"; /* done and queued at once */
            break;
        default:
            break; /* valid */
    }
    size_t n = hamr__snapshot__get_packed_size(&s);
    uint8_t *p = malloc(n + 1);
    if (p == NULL)
        seedgen_die("no memory");
    p[0] = 1;
    hamr__snapshot__pack(&s, p + 1);
    seedgen_write("queue_restore", name, p, n + 1);
    free(p);
}

/* seedgen_queue_restore - every seed of corpus/queue_restore. */
static void seedgen_queue_restore(void)
{
    struct buf b;
    buf_init(&b, 0);
    seedgen_snapshot_of(&b, "empty");
    seedgen_lifecycle(&b, seedgen_body, sizeof(seedgen_body) - 1, false);
    seedgen_snapshot_of(&b, "after_lifecycle");
    buf_reset(&b);
    /* Stop before the outcome: recipients stay leased in the snapshot. */
    Hamr__Entry e;
    Hamr__Enqueue q;
    uint8_t sha[32];
    char *rcpts[] = {"a@hamr.test", "b@example.org"};
    seedgen_enqueue(&e, &q, sha, "Q0", "sender@example.org", rcpts, 2, seedgen_body,
                    sizeof(seedgen_body) - 1);
    seedgen_op_entry(&b, &e, SEEDGEN_TS);
    seedgen_snapshot_of(&b, "one_pending");
    buf_free(&b);
    seedgen_bad_snapshot("hand_valid", 0);
    seedgen_bad_snapshot("bad_hash", 1);
    seedgen_bad_snapshot("duplicate_id", 2);
    seedgen_bad_snapshot("rcpt_mismatch", 3);
    seedgen_bad_snapshot("bad_state", 4);
    seedgen_bad_snapshot("newer_format", 5);
    seedgen_bad_snapshot("done_and_queued", 6);
}

/* The v2 signature and the address blocks of the PROXY seeds. */
#define SEEDGEN_SIG "\r\n\r\n\0\r\nQUIT\n"
/* 1.2.3.4:5000 -> 5.6.7.8:25 */
#define SEEDGEN_INET "\x01\x02\x03\x04\x05\x06\x07\x08\x13\x88\x00\x19"
/* [2001:db8::1]:5000 -> [2001:db8::2]:25 */
#define SEEDGEN_INET6                                                  \
    "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" \
    "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02" \
    "\x13\x88\x00\x19"
#define SEEDGEN_PROXY(name, s) \
    {                          \
        name, s, sizeof(s) - 1 \
    }

/* seedgen_proxy_seeds - the headers, each followed by the SMTP that comes after it. */
static const struct {
    const char *name, *in;
    size_t len;
} seedgen_proxy_seeds[] = {
    /* Valid v1. */
    SEEDGEN_PROXY("v1_tcp4", "PROXY TCP4 1.2.3.4 5.6.7.8 5000 25\r\n"),
    SEEDGEN_PROXY("v1_tcp4_extremes", "PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"),
    SEEDGEN_PROXY("v1_tcp6", "PROXY TCP6 2001:db8::1 2001:db8::2 5000 25\r\n"),
    SEEDGEN_PROXY("v1_tcp6_v4mapped", "PROXY TCP6 ::ffff:1.2.3.4 ::ffff:4.3.2.1 123 321\r\n"),
    SEEDGEN_PROXY("v1_tcp6_107",
                  "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
                  "fff:ffff:ffff:ffff:ffff:ffff:1.2.3.4 65535 65535\r\n"),
    SEEDGEN_PROXY("v1_unknown", "PROXY UNKNOWN\r\n"),
    SEEDGEN_PROXY("v1_unknown_addresses",
                  "PROXY UNKNOWN ffff:f::ffff:ffff:ffff:ffff:ffff:ffff "
                  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
    SEEDGEN_PROXY("v1_then_ehlo", "PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\nEHLO x\r\n"),
    /* v1, malformed (S18). */
    SEEDGEN_PROXY("v1_no_protocol", "PROXY \r\n"),
    SEEDGEN_PROXY("v1_tcp4_only", "PROXY TCP4\r\n"),
    SEEDGEN_PROXY("v1_one_address", "PROXY TCP4 1.2.3.4\r\n"),
    SEEDGEN_PROXY("v1_no_ports", "PROXY TCP4 1.2.3.4 5.6.7.8\r\n"),
    SEEDGEN_PROXY("v1_one_port", "PROXY TCP4 1.2.3.4 5.6.7.8 5000\r\n"),
    SEEDGEN_PROXY("v1_extra_field", "PROXY TCP4 1.2.3.4 5.6.7.8 5000 25 x\r\n"),
    SEEDGEN_PROXY("v1_double_space", "PROXY TCP4  1.2.3.4 5.6.7.8 5000 25\r\n"),
    SEEDGEN_PROXY("v1_port_65536", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n"),
    SEEDGEN_PROXY("v1_dport_99999", "PROXY TCP4 1.2.3.4 5.6.7.8 123 99999\r\n"),
    SEEDGEN_PROXY("v1_port_leading_zero", "PROXY TCP4 1.2.3.4 5.6.7.8 0123 25\r\n"),
    SEEDGEN_PROXY("v1_octet_leading_zero", "PROXY TCP4 01.2.3.4 5.6.7.8 5000 25\r\n"),
    SEEDGEN_PROXY("v1_octet_256", "PROXY TCP4 1.2.3.256 5.6.7.8 5000 25\r\n"),
    SEEDGEN_PROXY("v1_port_sign", "PROXY TCP4 1.2.3.4 5.6.7.8 +25 25\r\n"),
    SEEDGEN_PROXY("v1_tcp4_with_ipv6", "PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 5000 25\r\n"),
    SEEDGEN_PROXY("v1_tcp6_with_ipv4", "PROXY TCP6 1.2.3.4 4.3.2.1 123 321\r\n"),
    SEEDGEN_PROXY("v1_bad_protocol", "PROXY UDP4 1.2.3.4 5.6.7.8 5000 25\r\n"),
    SEEDGEN_PROXY("v1_bare_lf", "PROXY TCP4 1.2.3.4 5.6.7.8 5000 25\n"),
    SEEDGEN_PROXY("v1_bare_cr", "PROXY TCP4\r 1.2.3.4 5.6.7.8 5000 25\r\n"),
    SEEDGEN_PROXY("v1_nul", "PROXY TCP4 1.2.3.4\0 5.6.7.8 5000 25\r\n"),
    SEEDGEN_PROXY("v1_108_octets",
                  "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
                  "ffff:ffff:ffff:ffff:ffff:ffff:1.2.3.4 65535 65535\r\n"),
    SEEDGEN_PROXY("v1_endless",
                  "PROXY xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    SEEDGEN_PROXY("v1_half", "PROXY TCP4 1.2.3"),
    SEEDGEN_PROXY("garbage_ehlo", "EHLO client.example\r\n"),
    SEEDGEN_PROXY("garbage_tls_hello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    /* Valid v2. */
    SEEDGEN_PROXY("v2_inet", SEEDGEN_SIG "\x21\x11\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_inet6", SEEDGEN_SIG "\x21\x21\x00\x24" SEEDGEN_INET6),
    SEEDGEN_PROXY("v2_inet6_v4mapped",
                  SEEDGEN_SIG "\x21\x21\x00\x24"
                              "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xc6\x33\x64\x09"
                              "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
                              "\x9c\x40\x00\x19"),
    SEEDGEN_PROXY("v2_inet_tlvs",
                  SEEDGEN_SIG "\x21\x11\x00\x14" SEEDGEN_INET "\x01\x00\x02h2\x04\x00\x00"),
    SEEDGEN_PROXY("v2_inet6_tlv", SEEDGEN_SIG "\x21\x21\x00\x2a" SEEDGEN_INET6 "\x04\x00\x03xyz"),
    SEEDGEN_PROXY("v2_inet_ssl_tlv",
                  SEEDGEN_SIG "\x21\x11\x00\x21" SEEDGEN_INET
                              "\x20\x00\x0f\x01\x00\x00\x00\x00\x21\x00\x07TLSv1.3"
                              "\x04\x00\x00"),
    SEEDGEN_PROXY("v2_local", SEEDGEN_SIG "\x20\x00\x00\x00"),
    SEEDGEN_PROXY("v2_local_addresses", SEEDGEN_SIG "\x20\x11\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_local_unix", SEEDGEN_SIG "\x20\x31\x00\x03zzz"),
    SEEDGEN_PROXY("v2_then_ehlo", SEEDGEN_SIG "\x21\x11\x00\x0c" SEEDGEN_INET "EHLO x\r\n"),
    /* v2, malformed (S18). */
    SEEDGEN_PROXY("v2_bad_signature", "\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_signature_no_nul", "\r\n\r\n\r\nQUIT\n"),
    SEEDGEN_PROXY("v2_version_1", SEEDGEN_SIG "\x11\x11\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_version_3", SEEDGEN_SIG "\x31\x11\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_command_2", SEEDGEN_SIG "\x22\x11\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_proxy_unspec", SEEDGEN_SIG "\x21\x00\x00\x00"),
    SEEDGEN_PROXY("v2_proxy_unix", SEEDGEN_SIG "\x21\x31\x00\xd8"),
    SEEDGEN_PROXY("v2_family_4", SEEDGEN_SIG "\x21\x41\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_udp", SEEDGEN_SIG "\x21\x12\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_inet_length_11", SEEDGEN_SIG "\x21\x11\x00\x0b" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_inet6_length_12", SEEDGEN_SIG "\x21\x21\x00\x0c" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_length_4097", SEEDGEN_SIG "\x21\x11\x10\x01" SEEDGEN_INET),
    SEEDGEN_PROXY("v2_local_length_65535", SEEDGEN_SIG "\x20\x00\xff\xff"),
    SEEDGEN_PROXY("v2_tlv_past_end",
                  SEEDGEN_SIG "\x21\x11\x00\x0f" SEEDGEN_INET "\x01\x00\x05hello"),
    SEEDGEN_PROXY("v2_truncated_tlv", SEEDGEN_SIG "\x21\x11\x00\x0e" SEEDGEN_INET "\x01\x00"),
    SEEDGEN_PROXY("v2_short_addresses", SEEDGEN_SIG "\x21\x11\x00\x0c\x01\x02\x03\x04"),
};

/*
 * seedgen_smtpd_proxy - every seed of corpus/smtpd_proxy, in the layout of
 * fuzz_smtpd_proxy.c: a cut count, the cut lengths, then the octets. Each
 * header once in one piece, and once cut at 1, 12 and 14 octets (inside
 * "PROXY ", at the v2 signature's end, inside the v2 length).
 */
static void seedgen_smtpd_proxy(void)
{
    static const uint8_t cuts[] = {3, 1, 11, 2};
    struct buf b;
    buf_init(&b, 0);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(seedgen_proxy_seeds); i++) {
        char name[128];
        seedgen_u8(&b, 0);
        seedgen_bytes(&b, seedgen_proxy_seeds[i].in, seedgen_proxy_seeds[i].len);
        seedgen_write("smtpd_proxy", seedgen_proxy_seeds[i].name, b.data, b.len);
        buf_reset(&b);
        seedgen_bytes(&b, cuts, sizeof(cuts));
        seedgen_bytes(&b, seedgen_proxy_seeds[i].in, seedgen_proxy_seeds[i].len);
        snprintf(name, sizeof(name), "%s_cut", seedgen_proxy_seeds[i].name);
        seedgen_write("smtpd_proxy", name, b.data, b.len);
        buf_reset(&b);
    }
    /* A v2 header at the length cap: 4096 octets of addresses and NOOP TLVs. */
    static const uint8_t head[] = SEEDGEN_SIG "\x21\x11\x10\x00" SEEDGEN_INET;
    seedgen_u8(&b, 0);
    seedgen_bytes(&b, head, sizeof(head) - 1);
    size_t left = 4096 - 12;
    while (left > 0) {
        size_t v = left - 3 < 250 ? left - 3 : 250;
        seedgen_u8(&b, 4); /* PP2_TYPE_NOOP */
        seedgen_u16(&b, v);
        for (size_t j = 0; j < v; j++)
            seedgen_u8(&b, 0);
        left -= 3 + v;
    }
    seedgen_write("smtpd_proxy", "v2_length_4096", b.data, b.len);
    buf_free(&b);
}

/* seedgen_wanted - no names were given, or name is one of them. */
static bool seedgen_wanted(int argc, char **argv, const char *name)
{
    if (argc <= 2)
        return true;
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return true;
    return false;
}

/* main - write every binary seed (or those of the named corpora) under argv[1]. */
int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fuzz_seedgen DIR [NAME...]\n");
        return 2;
    }
    seedgen_dir = argv[1];
    if (seedgen_wanted(argc, argv, "queue_apply"))
        seedgen_queue_apply();
    if (seedgen_wanted(argc, argv, "queue_restore"))
        seedgen_queue_restore();
    if (seedgen_wanted(argc, argv, "smtpd_proxy"))
        seedgen_smtpd_proxy();
    return 0;
}
