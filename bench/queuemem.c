/*
 * queuemem.c - what one queued message costs in memory: N messages built
 * through the real apply path (Enqueue, Lease and Outcome entries packed by
 * queue_entry and applied by queue_apply), the way a node holds them while
 * the next hop is down, with the bodies kept elsewhere (body ops, as the
 * node's body store). Not a test: it never fails because of the numbers.
 *
 *   queuemem [-n MESSAGES] [-r RCPTS] [-d DOMAINS] [-s]
 *
 * Three phases, each measured as the growth of the heap (mallinfo2: bytes
 * in use, plus those mapped on their own) and of VmRSS over an empty queue,
 * divided by N: "queued" (every message enqueued: what an acceptance burst
 * leaves), "deferred" (each leased and deferred once with a connect error
 * and TLS fields, as the leader does while the next hop refuses), "leased"
 * (every message leased again: an attempt in flight) and "done" (every
 * message delivered: what is left is the dedupe set of finished ids, kept
 * for QUEUE_DONE_TTL_MS).
 *
 * With -s each body differs (its number in its first bytes, so each has
 * its own SHA-256, as real mail has), and after "queued" the queue's raft
 * snapshot at cluster level 6 (metadata only) is packed: its bytes a
 * message and the time it took, and what LZ4 (the library's default
 * level) makes of it and how long that and the way back take.
 *
 * Owns: the queue it builds. May call: queue/, util/.
 */
#include <inttypes.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lz4.h>

#include "util/err.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "bench/bench_queue.h"

#define T0 1700000000000ull
#define BODY_LEN 4096

/* queuemem_put - a body store that keeps nothing: locations count up. */
static int queuemem_put(void *arg,
                        const char *id,
                        const uint8_t *body,
                        size_t len,
                        const uint8_t sha[QUEUE_SHA256_LEN],
                        uint64_t *loc)
{
    (void)id, (void)body, (void)len, (void)sha;
    *loc = ++*(uint64_t *)arg;
    return 0;
}

/* queuemem_heap - bytes the allocator has handed out. */
static size_t queuemem_heap(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* queuemem_rss - VmRSS in bytes, 0 if unknown. */
static size_t queuemem_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %zu kB", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb * 1024;
}

/* queuemem_id - the i-th queue id, shaped as relay_accept makes them (19 hex digits). */
static void queuemem_id(char *id, size_t len, size_t i)
{
    snprintf(id, len, "%011" PRIX64 "%03X%05zX", (uint64_t)0x18C2F5A3B00ull, 0x3A7u, i & 0xFFFFF);
    if (i > 0xFFFFF) /* more than 20 bits: longer ids, still unique */
        snprintf(id, len, "%011" PRIX64 "%03X%08zX", (uint64_t)0x18C2F5A3B00ull, 0x3A7u, i);
}

/* queuemem_lease - lease every recipient of message id under lease_id. */
static void queuemem_lease(struct queue *q,
                           const char *id,
                           unsigned nr,
                           uint64_t lease_id,
                           uint64_t now)
{
    uint32_t idx[64];
    for (unsigned k = 0; k < nr; k++)
        idx[k] = k;
    struct queue_entry_lease_item item = {.queue_id = id,
                                          .rcpt_indexes = idx,
                                          .n_rcpts = nr,
                                          .lease_id = lease_id,
                                          .destination = "[mx.example.net]:25"};
    bench_queue_lease(q, now, &item, 1);
}

/* queuemem_outcome - an outcome of status for every recipient under lease_id. */
static void queuemem_outcome(struct queue *q,
                             const char *id,
                             unsigned nr,
                             uint64_t lease_id,
                             uint64_t now,
                             enum queue_entry_status status)
{
    struct queue_entry_result r[64];
    for (unsigned k = 0; k < nr; k++)
        r[k] = (struct queue_entry_result){
            .rcpt_index = k,
            .status = status,
            .diagnostic = "connect to mx.example.net[192.0.2.25]:25: Connection refused",
            .tls_policy = "may",
            .tls = "none: connection failed"};
    struct queue_entry_outcome_args a = {.queue_id = id,
                                         .lease_id = lease_id,
                                         .results = r,
                                         .n_results = nr,
                                         .next_attempt_ms = now + 300000,
                                         .reporter = "relay1.example.net"};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rv = queue_entry_outcome(&a, now, NULL, &buf, &len);
    bench_queue_apply(q, rv, buf, len);
}

/* queuemem_line - one phase's figures. */
static void queuemem_line(const char *phase, size_t n, size_t heap0, size_t rss0)
{
    double heap = ((double)queuemem_heap() - (double)heap0) / (double)n;
    double rss = ((double)queuemem_rss() - (double)rss0) / (double)n;
    printf("| %-8s | %9zu | %10.0f | %9.0f |\n", phase, n, heap, rss);
    fflush(stdout);
}

/* queuemem_ms - a monotonic clock in ms. */
static double queuemem_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* queuemem_snapshot - pack q's snapshot, LZ4 it and back; print the figures. 0 or 1. */
static int queuemem_snapshot(struct queue *q, size_t n)
{
    uint8_t *snap = NULL;
    size_t len = 0;
    double t0 = queuemem_ms();
    if (queue_snapshot(q, NULL, &snap, &len) != 0 || len > (size_t)LZ4_MAX_INPUT_SIZE) {
        fprintf(stderr, "queuemem: no snapshot\n");
        free(snap);
        return 1;
    }
    double t1 = queuemem_ms();
    int bound = LZ4_compressBound((int)len);
    char *lz = malloc((size_t)bound);
    char *back = malloc(len);
    int zlen = lz != NULL && back != NULL
                   ? LZ4_compress_default((const char *)snap, lz, (int)len, bound)
                   : 0;
    double t2 = queuemem_ms();
    int blen = zlen > 0 ? LZ4_decompress_safe(lz, back, zlen, (int)len) : -1;
    double t3 = queuemem_ms();
    int rv = blen == (int)len && memcmp(back, snap, len) == 0 ? 0 : 1;
    if (rv == 0)
        printf(
            "\nsnapshot (level 6): %zu bytes, %.1f a message, packed in %.0f ms; LZ4: %d "
            "bytes (%.1f %%, %.1f a message) in %.0f ms, unpacked in %.0f ms\n\n",
            len, (double)len / (double)n, t1 - t0, zlen, 100.0 * zlen / (double)len,
            (double)zlen / (double)n, t2 - t1, t3 - t2);
    else
        fprintf(stderr, "queuemem: LZ4 round trip failed\n");
    free(back);
    free(lz);
    free(snap);
    return rv;
}

int main(int argc, char **argv)
{
    size_t n = 200000;
    unsigned nr = 1, nd = 1;
    bool snap = false;
    int c;
    while ((c = getopt(argc, argv, "n:r:d:s")) != -1) {
        switch (c) {
            case 'n':
                n = strtoull(optarg, NULL, 10);
                break;
            case 'r':
                nr = (unsigned)strtoul(optarg, NULL, 10);
                break;
            case 'd':
                nd = (unsigned)strtoul(optarg, NULL, 10);
                break;
            case 's':
                snap = true;
                break;
            default:
                fprintf(stderr,
                        "usage: queuemem [-n MESSAGES] [-r RCPTS 1..64] [-d DOMAINS] [-s]\n");
                return 2;
        }
    }
    if (n == 0 || nr == 0 || nr > 64 || nd == 0) {
        fprintf(stderr, "queuemem: -n and -d at least 1, -r 1..64\n");
        return 2;
    }
    static uint8_t body[BODY_LEN];
    memset(body, 'x', sizeof(body));
    uint64_t locs = 0;
    struct queue_body_ops ops = {.arg = &locs, .put = queuemem_put};
    struct queue *q = queue_new();
    if (q == NULL)
        return 1;
    queue_set_body_ops(q, &ops);
    if (snap) {
        uint8_t *lb = NULL;
        size_t ll = 0;
        int rv = queue_entry_cluster_level(QUEUE_LEVEL_SPREAD, T0 - 1, NULL, &lb, &ll);
        bench_queue_apply(q, rv, lb, ll);
    }
    size_t heap0 = queuemem_heap(), rss0 = queuemem_rss();
    printf("%zu messages of %u recipient(s) on %u domain(s), bodies of %d bytes kept elsewhere\n\n",
           n, nr, nd, BODY_LEN);
    printf("| phase    |  messages | heap B/msg | RSS B/msg |\n");
    printf("|----------|-----------|------------|-----------|\n");

    char id[40], rcpt[64][64];
    const char *rcpts[64];
    for (size_t i = 0; i < n; i++) {
        queuemem_id(id, sizeof(id), i);
        for (unsigned k = 0; k < nr; k++) {
            snprintf(rcpt[k], sizeof(rcpt[k]), "user%zu.%u@d%zu.example.org", i % 5000, k,
                     (i + k) % nd);
            rcpts[k] = rcpt[k];
        }
        if (snap)
            memcpy(body, &i, sizeof(i)); /* a SHA-256 of its own */
        struct queue_entry_enqueue_args a = {.queue_id = id,
                                             .sender = "newsletter@lists.example.com",
                                             .rcpts = rcpts,
                                             .n_rcpts = nr,
                                             .body = body,
                                             .body_len = sizeof(body),
                                             .expires_at_ms = T0 + 5ull * 86400 * 1000,
                                             .client_addr = "192.0.2.17",
                                             .helo = "mail.example.com",
                                             .accepted_by = 1};
        uint8_t *buf = NULL;
        size_t len = 0;
        int rv = queue_entry_enqueue(&a, T0 + i / 1000, NULL, &buf, &len);
        bench_queue_apply(q, rv, buf, len);
    }
    malloc_trim(0);
    queuemem_line("queued", n, heap0, rss0);
    if (snap && queuemem_snapshot(q, n) != 0)
        return 1;

    uint64_t now = T0 + 60000;
    for (size_t i = 0; i < n; i++) {
        queuemem_id(id, sizeof(id), i);
        queuemem_lease(q, id, nr, i + 1, now);
        queuemem_outcome(q, id, nr, i + 1, now, QUEUE_ENTRY_DEFERRED);
    }
    malloc_trim(0);
    queuemem_line("deferred", n, heap0, rss0);

    now += 400000;
    for (size_t i = 0; i < n; i++) {
        queuemem_id(id, sizeof(id), i);
        queuemem_lease(q, id, nr, n + i + 1, now);
    }
    malloc_trim(0);
    queuemem_line("leased", n, heap0, rss0);

    for (size_t i = 0; i < n; i++) {
        queuemem_id(id, sizeof(id), i);
        queuemem_outcome(q, id, nr, n + i + 1, now, QUEUE_ENTRY_DELIVERED);
    }
    malloc_trim(0);
    queuemem_line("done", n, heap0, rss0);
    queue_free(q);
    return 0;
}
