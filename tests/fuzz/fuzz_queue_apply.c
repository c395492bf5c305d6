/*
 * fuzz_queue_apply.c - libFuzzer target for the log-entry decoder
 * (proto/proto_frame) and the replicated queue's apply (queue_apply), with
 * the DSN builder and the scheduler it drives.
 *
 * Input: a program of operations run against one queue. Each starts with a
 * byte whose low 3 bits pick it:
 *   0 raw     - u16 length, then that many bytes given to queue_apply as is;
 *   1 framed  - u16 length, then a protobuf payload framed with a correct
 *               magic, length and padding (reaches the protobuf decoder);
 *   2 enqueue, 3 lease, 4 outcome, 5 admin, 6 node info - an entry built
 *               from the following bytes, with ids, recipients and lease ids
 *               drawn from small sets so that commands meet each other;
 *   7 check   - snapshot round trip and a scheduler pass (also run at the end).
 * Every entry's timestamp comes from a clock that the bytes move forward by
 * minutes, jump past the dedupe TTL, or set back.
 *
 * Properties checked:
 *   - an entry that cannot be decoded (HAMR_ECORRUPT/HAMR_EVERSION, the
 *     same verdict as proto_entry_unpack) leaves the digest unchanged;
 *   - a refused command (res.status) or a duplicate Enqueue changes nothing
 *     but the bookkeeping every applied entry changes (the applied counter,
 *     the newest timestamp and pruning of old done ids): its digest equals
 *     that of a copy of the state that applied a no-op entry (a NodeInfo for
 *     node 0) with the same timestamp. Lease is left out: its items apply
 *     one by one and it reports the first refusal;
 *   - at most one DSN per entry; a DSN is a one-recipient null-sender
 *     message with CRLF lines of at most 998 octets and no NUL;
 *   - a snapshot restores (into a fresh queue) to the same digest, and the
 *     restored queue's snapshot is byte-identical (canonical encoding);
 *   - the scheduler's work items name queued messages and valid recipients.
 *
 * Security note: log entries come from other nodes and carry untrusted SMTP
 * data; a corrupt log must be refused, never crash or skew a replica.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util/common.h"
#include "util/err.h"
#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "queue/queue_dsn.h"
#include "queue/queue_sched.h"
#include "fuzz_common.h"
#include "fuzz_queue.h"

#define FUZZ_QA_OPS_MAX 64    /* operations per input */
#define FUZZ_QA_RCPTS_MAX 5   /* recipients per built Enqueue */
#define FUZZ_QA_ITEMS_MAX 3   /* items per built Lease */
#define FUZZ_QA_RESULTS_MAX 5 /* results per built Outcome */
#define FUZZ_QA_TEXT 80       /* bytes of a built string */

static const char *const fuzz_qa_addrs[] = {
    "a@hamr.test", "b@example.org", "c@example.org", "d@[192.0.2.1]", "", "postmaster"};
static const char *const fuzz_qa_boots[] = {"", "boot-1", "boot-2"};
static const char *const fuzz_qa_dests[] = {"", "[127.0.0.1]:25", "[127.0.0.1]:2526"};
static const uint32_t fuzz_qa_codes[] = {0, 250, 421, 450, 451, 550, 552, 554, 999, UINT32_MAX};

/* fuzz_qa - the state of one run. */
struct fuzz_qa {
    struct fuzz_in in;
    struct queue *q;
    uint64_t clock;
};

/* fuzz_qa_tick - the next entry timestamp. */
static uint64_t fuzz_qa_tick(struct fuzz_qa *x)
{
    uint8_t b = fuzz_u8(&x->in);
    if (b == 0xff)
        x->clock += QUEUE_DONE_TTL_MS + 1; /* past the dedupe TTL */
    else if (b == 0xfe)
        x->clock = x->clock > 3600000 ? x->clock - 3600000 : 0; /* another leader's clock */
    else if (b == 0xfd)
        x->clock = UINT64_MAX - fuzz_u8(&x->in); /* the far future */
    else
        x->clock += (uint64_t)b * 60000;
    return x->clock;
}

/* fuzz_qa_id - a queue id: mostly Q0..Q7 or one of their DSNs, sometimes raw bytes. */
static const char *fuzz_qa_id(struct fuzz_qa *x, char *out, size_t outlen)
{
    uint8_t b = fuzz_u8(&x->in);
    if (b < 0xc0)
        snprintf(out, outlen, "Q%u", b % 8);
    else if (b < 0xf0)
        snprintf(out, outlen, "Q%u-B%u", b % 8, (b >> 3) % 3);
    else if (b < 0xf8)
        snprintf(out, outlen, "%s", "");
    else
        fuzz_str(&x->in, out, outlen);
    return out;
}

/* fuzz_qa_text - a short free text from the input. */
static char *fuzz_qa_text(struct fuzz_qa *x, char *out)
{
    return fuzz_str(&x->in, out, FUZZ_QA_TEXT);
}

/* fuzz_qa_enqueue - an Enqueue with 0..5 recipients, a body from the input and its SHA-256. */
static uint8_t *fuzz_qa_enqueue(struct fuzz_qa *x, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Enqueue q = HAMR__ENQUEUE__INIT;
    char id[QUEUE_ID_MAX + 8], sender[FUZZ_QA_TEXT], client[FUZZ_QA_TEXT], helo[FUZZ_QA_TEXT];
    char *rcpts[FUZZ_QA_RCPTS_MAX];
    char raw_rcpt[FUZZ_QA_TEXT];
    uint8_t sha[32];
    unsigned shape = fuzz_u8(&x->in);

    q.queue_id = (char *)fuzz_qa_id(x, id, sizeof(id));
    q.sender = (shape & 1) ? fuzz_qa_text(x, sender) : (char *)"sender@example.org";
    if (shape & 2)
        q.sender = (char *)"";
    q.n_rcpts = fuzz_u8(&x->in) % (FUZZ_QA_RCPTS_MAX + 1);
    for (size_t i = 0; i < q.n_rcpts; i++) {
        uint8_t r = fuzz_u8(&x->in);
        rcpts[i] = r < 0xf0 ? (char *)fuzz_qa_addrs[r % HAMR_ARRAY_LEN(fuzz_qa_addrs)]
                            : fuzz_qa_text(x, raw_rcpt);
    }
    q.rcpts = rcpts;
    size_t body_len;
    q.body.data = (uint8_t *)fuzz_take(&x->in, fuzz_u16(&x->in) % 2048, &body_len);
    q.body.len = body_len;
    FUZZ_CHECK(EVP_Digest(q.body.data ? q.body.data : (const uint8_t *)"", q.body.len, sha, NULL,
                          EVP_sha256(), NULL) == 1);
    switch ((shape >> 2) & 3) {
        case 0:
        case 1: /* the right hash */
            q.body_sha256.data = sha;
            q.body_sha256.len = sizeof(sha);
            break;
        case 2: /* a wrong hash */
            sha[0] ^= 1;
            q.body_sha256.data = sha;
            q.body_sha256.len = sizeof(sha);
            break;
        default: /* no hash, or a short one */
            q.body_sha256.data = sha;
            q.body_sha256.len = fuzz_u8(&x->in) % 33 == 32 ? 0 : 16;
            break;
    }
    q.expires_at_ms = (shape & 0x10) ? x->clock + (uint64_t)fuzz_u8(&x->in) * 60000 : 0;
    q.is_dsn = (shape & 0x20) != 0;
    q.body_8bit = (shape & 0x40) != 0;
    q.accepted_by = 1 + (shape >> 7);
    q.client_addr = fuzz_qa_text(x, client);
    q.helo = fuzz_qa_text(x, helo);
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &q;
    return fuzz_queue_pack(&e, fuzz_qa_tick(x), len);
}

/* fuzz_qa_lease - a Lease of 0..3 items over small ids, indexes and lease ids. */
static uint8_t *fuzz_qa_lease(struct fuzz_qa *x, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Lease l = HAMR__LEASE__INIT;
    Hamr__LeaseItem items[FUZZ_QA_ITEMS_MAX], *itemp[FUZZ_QA_ITEMS_MAX];
    char ids[FUZZ_QA_ITEMS_MAX][QUEUE_ID_MAX + 8];
    uint32_t idx[FUZZ_QA_ITEMS_MAX][FUZZ_QA_RCPTS_MAX + 1];

    uint64_t ts = fuzz_qa_tick(x);
    l.node_id = fuzz_u8(&x->in) % 4;
    l.term = fuzz_u8(&x->in);
    l.expires_at_ms = ts + (uint64_t)fuzz_u8(&x->in) * 60000;
    l.boot_id = (char *)fuzz_qa_boots[fuzz_u8(&x->in) % HAMR_ARRAY_LEN(fuzz_qa_boots)];
    l.n_items = fuzz_u8(&x->in) % (FUZZ_QA_ITEMS_MAX + 1);
    for (size_t i = 0; i < l.n_items; i++) {
        Hamr__LeaseItem init = HAMR__LEASE_ITEM__INIT;
        items[i] = init;
        items[i].queue_id = (char *)fuzz_qa_id(x, ids[i], sizeof(ids[i]));
        items[i].lease_id = fuzz_u8(&x->in) % 6;
        items[i].destination =
            (char *)fuzz_qa_dests[fuzz_u8(&x->in) % HAMR_ARRAY_LEN(fuzz_qa_dests)];
        items[i].n_rcpt_indexes = fuzz_u8(&x->in) % (FUZZ_QA_RCPTS_MAX + 2);
        for (size_t j = 0; j < items[i].n_rcpt_indexes; j++)
            idx[i][j] = fuzz_u8(&x->in) % (FUZZ_QA_RCPTS_MAX + 1);
        items[i].rcpt_indexes = idx[i];
        itemp[i] = &items[i];
    }
    l.items = itemp;
    e.cmd_case = HAMR__ENTRY__CMD_LEASE;
    e.lease = &l;
    return fuzz_queue_pack(&e, ts, len);
}

/* fuzz_qa_outcome - an Outcome with 0..5 results, statuses 0..4 (4 is unknown). */
static uint8_t *fuzz_qa_outcome(struct fuzz_qa *x, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Outcome o = HAMR__OUTCOME__INIT;
    Hamr__RcptResult res[FUZZ_QA_RESULTS_MAX], *resp[FUZZ_QA_RESULTS_MAX];
    char diag[FUZZ_QA_RESULTS_MAX][FUZZ_QA_TEXT];
    char id[QUEUE_ID_MAX + 8], reporter[FUZZ_QA_TEXT], remote[FUZZ_QA_TEXT];

    uint64_t ts = fuzz_qa_tick(x);
    o.queue_id = (char *)fuzz_qa_id(x, id, sizeof(id));
    o.lease_id = fuzz_u8(&x->in) % 6;
    o.next_attempt_ms = ts + (uint64_t)fuzz_u8(&x->in) * 60000;
    o.reporter = fuzz_qa_text(x, reporter);
    o.remote = fuzz_qa_text(x, remote);
    o.dsn_expires_at_ms = ts + 86400000;
    o.n_results = fuzz_u8(&x->in) % (FUZZ_QA_RESULTS_MAX + 1);
    for (size_t i = 0; i < o.n_results; i++) {
        Hamr__RcptResult init = HAMR__RCPT_RESULT__INIT;
        res[i] = init;
        uint8_t b = fuzz_u8(&x->in);
        res[i].rcpt_index = b % (FUZZ_QA_RCPTS_MAX + 1);
        res[i].status = (Hamr__RcptResult__Status)((b >> 3) % 5);
        res[i].smtp_code = fuzz_qa_codes[fuzz_u8(&x->in) % HAMR_ARRAY_LEN(fuzz_qa_codes)];
        res[i].diagnostic = fuzz_qa_text(x, diag[i]);
        resp[i] = &res[i];
    }
    o.results = resp;
    e.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
    e.outcome = &o;
    return fuzz_queue_pack(&e, ts, len);
}

/* fuzz_qa_admin - an Admin command; op 5 is unknown. */
static uint8_t *fuzz_qa_admin(struct fuzz_qa *x, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__Admin a = HAMR__ADMIN__INIT;
    char id[QUEUE_ID_MAX + 8], reporter[FUZZ_QA_TEXT];

    uint64_t ts = fuzz_qa_tick(x);
    a.op = (Hamr__Admin__Op)(fuzz_u8(&x->in) % 6);
    a.queue_id = (char *)fuzz_qa_id(x, id, sizeof(id));
    a.reporter = fuzz_qa_text(x, reporter);
    a.dsn_expires_at_ms = ts + 86400000;
    e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    e.admin = &a;
    return fuzz_queue_pack(&e, ts, len);
}

/* fuzz_qa_node_info - a NodeInfo for node 0..4 with texts from the input. */
static uint8_t *fuzz_qa_node_info(struct fuzz_qa *x, size_t *len)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    char peer[FUZZ_QA_TEXT], control[FUZZ_QA_TEXT], version[FUZZ_QA_TEXT];

    uint64_t ts = fuzz_qa_tick(x);
    ni.node_id = fuzz_u8(&x->in) % 5;
    ni.peer_address = fuzz_qa_text(x, peer);
    ni.control_address = fuzz_qa_text(x, control);
    ni.version = fuzz_qa_text(x, version);
    ni.format_version_max = fuzz_u8(&x->in);
    e.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    e.node_info = &ni;
    return fuzz_queue_pack(&e, ts, len);
}

/* fuzz_qa_bytes - raw or framed bytes from the input (op 0 and 1). */
static uint8_t *fuzz_qa_bytes(struct fuzz_qa *x, bool frame, size_t *len)
{
    size_t n;
    const uint8_t *p = fuzz_take(&x->in, fuzz_u16(&x->in) % 4096, &n);
    size_t total =
        frame ? (8 + n + PROTO_ENTRY_ALIGN - 1) / PROTO_ENTRY_ALIGN * PROTO_ENTRY_ALIGN : n;
    uint8_t *buf = calloc(1, total ? total : 1);
    FUZZ_CHECK(buf != NULL);
    if (frame) {
        memcpy(buf, "HAMR", 4);
        proto_u32_put(buf + 4, (uint32_t)n);
        memcpy(buf + 8, p, n);
    } else {
        memcpy(buf, p, n);
    }
    *len = total;
    return buf;
}

/* fuzz_qa_clone - a copy of q through its own snapshot, which must restore. */
static struct queue *fuzz_qa_clone(const struct queue *q)
{
    uint8_t *snap = NULL;
    size_t len = 0;
    FUZZ_CHECK(queue_snapshot(q, NULL, &snap, &len) == 0);
    struct queue *c = queue_new();
    FUZZ_CHECK(c != NULL);
    FUZZ_CHECK(queue_restore(c, snap, len) == 0);
    free(snap);
    return c;
}

/* fuzz_qa_noop - apply the no-op entry (NodeInfo for node 0, refused) at ts. */
static void fuzz_qa_noop(struct queue *q, uint64_t ts)
{
    Hamr__Entry e = HAMR__ENTRY__INIT;
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    struct queue_apply_result res;
    size_t len;
    e.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    e.node_info = &ni;
    uint8_t *buf = fuzz_queue_pack(&e, ts, &len);
    FUZZ_CHECK(queue_apply(q, buf, len, &res) == 0);
    FUZZ_CHECK(res.status == HAMR_EINVAL);
    free(buf);
}

/* fuzz_qa_apply - apply one framed entry and check what it did. */
static void fuzz_qa_apply(struct fuzz_qa *x, const uint8_t *buf, size_t len)
{
    char before[65], after[65], want[65];
    struct queue_apply_result res;
    Hamr__Entry *e = NULL;

    int decoded = proto_entry_unpack(buf, len, &e);
    Hamr__Entry__CmdCase kind = decoded == 0 ? e->cmd_case : HAMR__ENTRY__CMD__NOT_SET;
    uint64_t ts = decoded == 0 ? e->timestamp_ms : 0;
    if (e != NULL)
        hamr__entry__free_unpacked(e, NULL);

    struct queue *copy = fuzz_qa_clone(x->q);
    queue_digest(x->q, before);
    int rv = queue_apply(x->q, buf, len, &res);
    queue_digest(x->q, after);
    FUZZ_CHECK(rv == decoded); /* queue_apply refuses exactly what the decoder refuses */
    if (rv != 0) {
        FUZZ_CHECK(rv == HAMR_ECORRUPT || rv == HAMR_EVERSION);
        FUZZ_CHECK(strcmp(before, after) == 0);
        queue_free(copy);
        return;
    }
    FUZZ_CHECK(res.dsn_generated <= 1);
    if ((res.status != 0 && kind != HAMR__ENTRY__CMD_LEASE) || res.duplicate) {
        fuzz_qa_noop(copy, ts);
        queue_digest(copy, want);
        FUZZ_CHECK(strcmp(after, want) == 0);
        FUZZ_CHECK(res.dsn_generated == 0 && res.finished == 0);
    }
    queue_free(copy);
    if (res.dsn_generated > 0) {
        const struct queue_msg *last = NULL;
        queue_foreach(x->q, fuzz_queue_last, &last);
        FUZZ_CHECK(last != NULL);
        fuzz_queue_check_dsn(last);
    }
}

/* LLVMFuzzerInitialize - quiet logs unless asked. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    return 0;
}

/* LLVMFuzzerTestOneInput - run one program of entries against a fresh queue. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_qa x = {.in = {data, size}, .clock = 1700000000000ull};
    x.q = queue_new();
    FUZZ_CHECK(x.q != NULL);

    for (int ops = 0; ops < FUZZ_QA_OPS_MAX && x.in.n > 0; ops++) {
        uint8_t op = fuzz_u8(&x.in);
        uint8_t *buf = NULL;
        size_t len = 0;
        switch (op & 7) {
            case 0:
            case 1:
                buf = fuzz_qa_bytes(&x, (op & 7) == 1, &len);
                break;
            case 2:
                buf = fuzz_qa_enqueue(&x, &len);
                break;
            case 3:
                buf = fuzz_qa_lease(&x, &len);
                break;
            case 4:
                buf = fuzz_qa_outcome(&x, &len);
                break;
            case 5:
                buf = fuzz_qa_admin(&x, &len);
                break;
            case 6:
                buf = fuzz_qa_node_info(&x, &len);
                break;
            default:
                fuzz_queue_check_state(x.q, fuzz_qa_tick(&x));
                continue;
        }
        fuzz_qa_apply(&x, buf, len);
        free(buf);
    }
    fuzz_queue_check_state(x.q, x.clock);
    x.q = queue_free(x.q);
    return 0;
}
