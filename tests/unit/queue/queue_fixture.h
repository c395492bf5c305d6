/* queue_fixture.h - building, packing and applying queue log entries in tests. */
#ifndef HAMR_TESTS_QUEUE_FIXTURE_H
#define HAMR_TESTS_QUEUE_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto_frame.h"
#include "queue/queue.h"

#define FX_MAX 8

/* fx_enq - an Enqueue; rcpts end at the first NULL. */
struct fx_enq {
    const char *id;
    const char *sender;
    const char *rcpts[FX_MAX];
    const char *body; /* NULL: a small default message */
    uint64_t expires;
    bool is_dsn;
    bool no_sha;    /* leave body_sha256 empty */
    bool bad_sha;   /* a SHA-256 of other bytes */
    size_t sha_len; /* 0: 32 */
    const char *client_addr;
    const char *helo;
    uint64_t accepted_by;
    bool body_8bit;
    /* Format 5: the envelope extensions (notify/orcpt: n_notify/n_orcpt entries). */
    bool smtputf8, requiretls, tls_optional;
    uint32_t ret;
    const char *envid;
    uint32_t notify[FX_MAX];
    size_t n_notify;
    const char *orcpt[FX_MAX];
    size_t n_orcpt;
};

/* fx_lease - a Lease of one item. */
struct fx_lease {
    uint64_t node;
    uint64_t term;
    uint64_t expires;
    const char *boot;
    const char *id;
    uint32_t idx[FX_MAX];
    size_t n;
    uint64_t lease_id;
    const char *dest;
};

/* fx_res - one RcptResult. */
struct fx_res {
    uint32_t idx;
    Hamr__RcptResult__Status status;
    uint32_t code;
    const char *diag;
    bool dsn_passed;
};

/* fx_outcome - an Outcome. */
struct fx_outcome {
    const char *id;
    uint64_t lease_id;
    struct fx_res res[FX_MAX];
    size_t n;
    uint64_t next_ms;
    const char *reporter;
    uint64_t dsn_expires;
    const char *remote;
    uint64_t delay_warning_ms;
    uint64_t node; /* format 6: the node that ran the attempt */
};

/* The default message body used when fx_enq.body is NULL. */
extern const char *const fx_default_body;

/* fx_pack - frame an Entry at ts; the bytes are malloc'd. */
uint8_t *fx_pack(Hamr__Entry *e, uint64_t ts, size_t *len);

/* fx_pack_* - the framed entry for a spec. */
uint8_t *fx_pack_enqueue(uint64_t ts, const struct fx_enq *s, size_t *len);
uint8_t *fx_pack_lease(uint64_t ts, const struct fx_lease *s, size_t *len);
uint8_t *fx_pack_outcome(uint64_t ts, const struct fx_outcome *s, size_t *len);
uint8_t *fx_pack_admin(uint64_t ts, Hamr__Admin__Op op, const char *id, size_t *len);
/* fx_level_pack - a ClusterLevel entry raising the level to level. */
uint8_t *fx_level_pack(uint64_t ts, uint32_t level, size_t *len);

/* fx_bytes - one framed entry (malloc'd). */
struct fx_bytes {
    uint8_t *buf;
    size_t len;
};

#define FX_RANDOM_OPS 400
#define FX_RANDOM_IDS 24

/* fx_rng_next - xorshift64*: the next number of the sequence seeded in *s. */
uint64_t fx_rng_next(uint64_t *s);

/*
 * fx_random_entries - FX_RANDOM_OPS framed entries of every kind over
 * FX_RANDOM_IDS ids, from 1700000000000 ms on: the same for the same seed.
 */
void fx_random_entries(uint64_t seed, struct fx_bytes *out);

/* fx_apply - apply framed bytes, assert queue_apply returned 0, free them. */
struct queue_apply_result fx_apply(struct queue *q, uint8_t *buf, size_t len);

/* fx_enqueue, fx_lease, fx_outcome, fx_admin - pack and apply, asserting success. */
struct queue_apply_result fx_enqueue(struct queue *q, uint64_t ts, const struct fx_enq *s);
struct queue_apply_result fx_lease(struct queue *q, uint64_t ts, const struct fx_lease *s);
struct queue_apply_result fx_outcome(struct queue *q, uint64_t ts, const struct fx_outcome *s);
struct queue_apply_result fx_admin(struct queue *q,
                                   uint64_t ts,
                                   Hamr__Admin__Op op,
                                   const char *id);

/* fx_level - pack and apply a ClusterLevel entry; queue_apply must return 0. */
struct queue_apply_result fx_level(struct queue *q, uint64_t ts, uint32_t level);

/* fx_rcpt - recipient i of a queued message (asserts it exists). */
const struct queue_rcpt *fx_rcpt(const struct queue *q, const char *id, size_t i);

/* fx_count_dsns - queued messages with is_dsn. */
size_t fx_count_dsns(const struct queue *q);

/* fx_sha256 - digest of n bytes into out[32]. */
void fx_sha256(const void *p, size_t n, uint8_t out[32]);

/* fx_snapshot_roundtrip - a new queue restored from a snapshot of q. */
struct queue *fx_snapshot_roundtrip(const struct queue *q);

/* fx_assert_same_msgs - both queues hold equal messages in the same order. */
void fx_assert_same_msgs(const struct queue *a, const struct queue *b);

/*
 * fx_fail_after - make the n-th allocation from now (0: the next) by code
 * linked into the test fail, through the linker's --wrap of malloc, calloc
 * and realloc. Allocations inside shared libraries (protobuf-c, libcrypto,
 * libc) are not affected.
 */
void fx_fail_after(long n);

/* fx_fail_off - stop failing; true if an allocation was failed since fx_fail_after. */
bool fx_fail_off(void);

#endif
