/*
 * fuzz_queue_restore.c - libFuzzer target for the snapshot decoder
 * (proto_snapshot_unpack through queue_restore).
 *
 * Input: byte 0 bit 0 set means the rest is a Snapshot protobuf to which
 * the "HMSN" magic is prepended here (reaches the protobuf decoder and the
 * checks of queue_restore); with bit 1 set too, the rest is made into the
 * compressed buffer instead ("HMSZ", its length, LZ4 blocks: reaches the
 * same through the decompression); bit 0 clear means the rest is the whole
 * buffer (a compressed one's own framing included).
 *
 * The queue restored into already holds a small state (two messages, a done
 * id, a node), so that "on error q is unchanged" means something.
 *
 * Properties checked:
 *   - a refused snapshot leaves the digest of the old state unchanged;
 *   - an accepted one passes the state check of fuzz_queue.h (its own
 *     snapshot restores to the same digest and re-encodes byte-identically,
 *     the scheduler's work is valid);
 *   - the restored state can be worked on: every message gets an Outcome
 *     that bounces every recipient nobody holds and an Admin BOUNCE, and
 *     the DSNs these generate have the shape and line rules of a DSN.
 *
 * Security note: a snapshot comes from the leader over the network (raft
 * InstallSnapshot) or from disk; a bad one must be refused, never crash.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <openssl/evp.h>

#include "util/common.h"
#include "util/err.h"
#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "fuzz_common.h"
#include "fuzz_queue.h"

#define FUZZ_QR_TS 1700000000000ull
#define FUZZ_QR_MSGS_MAX 16 /* messages worked on after a restore */

/* fuzz_qr_apply - apply a built entry; it must decode. */
static void fuzz_qr_apply(struct queue *q,
                          Hamr__Entry *e,
                          uint64_t ts,
                          struct queue_apply_result *res)
{
    size_t len;
    uint8_t *buf = fuzz_queue_pack(e, ts, &len);
    FUZZ_CHECK(queue_apply(q, buf, len, res) == 0);
    free(buf);
}

/* fuzz_qr_seed_state - two messages (one finished), a node: the state to restore over. */
static struct queue *fuzz_qr_seed_state(void)
{
    static const char body[] = "Subject: x\r\n\r\nhello\r\n";
    struct queue *q = queue_new();
    struct queue_apply_result res;
    FUZZ_CHECK(q != NULL);
    for (int i = 0; i < 2; i++) {
        Hamr__Entry e = HAMR__ENTRY__INIT;
        Hamr__Enqueue m = HAMR__ENQUEUE__INIT;
        char *rcpts[] = {"a@hamr.test", "b@example.org"};
        uint8_t sha[32];
        FUZZ_CHECK(EVP_Digest(body, sizeof(body) - 1, sha, NULL, EVP_sha256(), NULL) == 1);
        m.queue_id = i == 0 ? "S0" : "S1";
        m.sender = "s@example.org";
        m.n_rcpts = 2;
        m.rcpts = rcpts;
        m.body.data = (uint8_t *)body;
        m.body.len = sizeof(body) - 1;
        m.body_sha256.data = sha;
        m.body_sha256.len = sizeof(sha);
        e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
        e.enqueue = &m;
        fuzz_qr_apply(q, &e, FUZZ_QR_TS, &res);
        FUZZ_CHECK(res.status == 0);
    }
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Admin a = HAMR__ADMIN__INIT;
    a.op = HAMR__ADMIN__OP__DELETE;
    a.queue_id = "S1";
    e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    e.admin = &a;
    fuzz_qr_apply(q, &e, FUZZ_QR_TS + 1, &res);
    FUZZ_CHECK(res.status == 0);
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    ni.node_id = 1;
    ni.peer_address = "127.0.0.1:7001";
    ni.control_address = "127.0.0.1:7101";
    ni.version = "0.1.0";
    ni.format_version_max = 1;
    e.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    e.node_info = &ni;
    fuzz_qr_apply(q, &e, FUZZ_QR_TS + 2, &res);
    FUZZ_CHECK(res.status == 0);
    return q;
}

/* fuzz_qr_ids - queue_foreach callback: collect up to FUZZ_QR_MSGS_MAX ids and rcpt counts. */
struct fuzz_qr_ids {
    char id[FUZZ_QR_MSGS_MAX][QUEUE_ID_MAX];
    size_t n_rcpts[FUZZ_QR_MSGS_MAX];
    size_t n;
};

static int fuzz_qr_collect(void *arg, const struct queue_msg *m)
{
    struct fuzz_qr_ids *ids = arg;
    if (ids->n == FUZZ_QR_MSGS_MAX)
        return 1;
    hamr_strlcpy(ids->id[ids->n], m->id, QUEUE_ID_MAX);
    ids->n_rcpts[ids->n] = m->n_rcpts;
    ids->n++;
    return 0;
}

/* fuzz_qr_check_new_dsn - after an entry that made a DSN, check the newest message. */
static void fuzz_qr_check_new_dsn(struct queue *q, const struct queue_apply_result *res)
{
    FUZZ_CHECK(res->dsn_generated <= 1);
    if (res->dsn_generated == 0)
        return;
    const struct queue_msg *last = NULL;
    queue_foreach(q, fuzz_queue_last, &last);
    FUZZ_CHECK(last != NULL);
    fuzz_queue_check_dsn(last);
}

/* fuzz_qr_work - bounce what nobody holds, then admin-bounce, on every collected message. */
static void fuzz_qr_work(struct queue *q, uint64_t ts)
{
    struct fuzz_qr_ids ids = {.n = 0};
    struct queue_apply_result res;
    queue_foreach(q, fuzz_qr_collect, &ids);
    for (size_t i = 0; i < ids.n; i++) {
        Hamr__Entry e = HAMR__ENTRY__INIT;
        Hamr__Outcome o = HAMR__OUTCOME__INIT;
        Hamr__RcptResult r[4], *rp[4];
        size_t n = ids.n_rcpts[i] < 4 ? ids.n_rcpts[i] : 4;
        for (size_t j = 0; j < n; j++) {
            Hamr__RcptResult init = HAMR__RCPT_RESULT__INIT;
            r[j] = init;
            r[j].rcpt_index = (uint32_t)j;
            r[j].status =
                j % 2 ? HAMR__RCPT_RESULT__STATUS__EXPIRED : HAMR__RCPT_RESULT__STATUS__BOUNCED;
            r[j].smtp_code = 550;
            r[j].diagnostic = "5.1.1 no such user";
            rp[j] = &r[j];
        }
        o.queue_id = ids.id[i];
        o.n_results = n;
        o.results = rp;
        o.reporter = "mx.hamr.test";
        o.remote = "[127.0.0.1]:25";
        e.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
        e.outcome = &o;
        fuzz_qr_apply(q, &e, ts, &res);
        fuzz_qr_check_new_dsn(q, &res);

        Hamr__Entry e2 = HAMR__ENTRY__INIT;
        Hamr__Admin a = HAMR__ADMIN__INIT;
        a.op = HAMR__ADMIN__OP__BOUNCE;
        a.queue_id = ids.id[i];
        a.reporter = "mx.hamr.test";
        e2.cmd_case = HAMR__ENTRY__CMD_ADMIN;
        e2.admin = &a;
        fuzz_qr_apply(q, &e2, ts, &res);
        fuzz_qr_check_new_dsn(q, &res);
    }
}

/*
 * fuzz_qr_compressed - raw (a Snapshot protobuf, n bytes) as the compressed
 * snapshot buffer (proto_frame.h): "HMSZ", n, one LZ4 block per
 * PROTO_SNAPZ_BLOCK. Sets *len; the buffer is malloc'd.
 */
static uint8_t *fuzz_qr_compressed(const uint8_t *raw, size_t n, size_t *len)
{
    size_t blocks = n / PROTO_SNAPZ_BLOCK + 1;
    size_t cap = 12 + blocks * (4 + (size_t)LZ4_COMPRESSBOUND(PROTO_SNAPZ_BLOCK));
    uint8_t *buf = malloc(cap);
    FUZZ_CHECK(buf != NULL);
    memcpy(buf, "HMSZ", 4);
    proto_u32_put(buf + 4, (uint32_t)((uint64_t)n >> 32));
    proto_u32_put(buf + 8, (uint32_t)n);
    size_t used = 12;
    for (size_t off = 0; off < n; off += PROTO_SNAPZ_BLOCK) {
        size_t take = n - off < PROTO_SNAPZ_BLOCK ? n - off : PROTO_SNAPZ_BLOCK;
        int c = LZ4_compress_default((const char *)raw + off, (char *)buf + used + 4, (int)take,
                                     (int)(cap - used - 4));
        FUZZ_CHECK(c > 0);
        proto_u32_put(buf + used, (uint32_t)c);
        used += 4 + (size_t)c;
    }
    *len = used;
    return buf;
}

/* LLVMFuzzerInitialize - quiet logs unless asked. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    return 0;
}

/* LLVMFuzzerTestOneInput - restore one snapshot over a small state. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    uint8_t mode = fuzz_u8(&in);
    bool add_magic = (mode & 1) != 0, compress = (mode & 3) == 3;
    size_t len = in.n + (add_magic ? 4 : 0);
    uint8_t *buf = NULL;
    if (compress) {
        buf = fuzz_qr_compressed(in.p, in.n, &len);
    } else {
        buf = malloc(len ? len : 1);
        FUZZ_CHECK(buf != NULL);
        if (add_magic)
            memcpy(buf, "HMSN", 4);
        if (in.n > 0)
            memcpy(buf + (add_magic ? 4 : 0), in.p, in.n);
    }

    struct queue *q = fuzz_qr_seed_state();
    char before[65], after[65];
    queue_digest(q, before);
    int rv = queue_restore(q, buf, len);
    free(buf);
    queue_digest(q, after);
    if (rv != 0) {
        FUZZ_CHECK(rv == HAMR_ECORRUPT || rv == HAMR_EVERSION || rv == HAMR_ENOMEM);
        FUZZ_CHECK(strcmp(before, after) == 0);
        queue_free(q);
        return 0;
    }
    struct queue_stats st;
    queue_get_stats(q, &st);
    fuzz_queue_check_state(q, FUZZ_QR_TS);
    fuzz_qr_work(q, st.applied ? FUZZ_QR_TS + 10 : FUZZ_QR_TS);
    fuzz_queue_check_state(q, UINT64_MAX);
    queue_free(q);
    return 0;
}
