/* bench_queue.c - see bench_queue.h. */
#include <stdio.h>
#include <stdlib.h>

#include "bench/bench_queue.h"

void bench_queue_apply(struct queue *q, int rv, uint8_t *buf, size_t len)
{
    struct queue_apply_result res;
    if (rv != 0 || queue_apply(q, buf, len, &res) != 0 || res.status != 0) {
        fprintf(stderr, "bench: apply failed\n");
        exit(1);
    }
    free(buf);
}

void bench_queue_lease(struct queue *q,
                       uint64_t now,
                       const struct queue_entry_lease_item *items,
                       size_t n)
{
    struct queue_entry_lease_args a = {.node_id = 1,
                                       .term = 1,
                                       .expires_at_ms = now + BENCH_QUEUE_LEASE_MS,
                                       .boot_id = BENCH_QUEUE_BOOT,
                                       .items = items,
                                       .n_items = n};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rv = queue_entry_lease(&a, now, NULL, &buf, &len);
    bench_queue_apply(q, rv, buf, len);
}
