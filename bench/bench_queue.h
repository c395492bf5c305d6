/*
 * bench_queue.h - what the queue benchmarks (schedbench, queuemem) share:
 * applying packed entries and leasing, the way a node's leader does.
 */
#ifndef HAMR_BENCH_QUEUE_H
#define HAMR_BENCH_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "queue/queue.h"
#include "queue/queue_entry.h"

/* How long bench leases run, and the boot id they are taken under. */
#define BENCH_QUEUE_LEASE_MS (5ull * 60 * 1000)
#define BENCH_QUEUE_BOOT "bench"

/* bench_queue_apply - apply one packed entry (malloc'd, freed here); exits on any error. */
void bench_queue_apply(struct queue *q, int rv, uint8_t *buf, size_t len);

/* bench_queue_lease - one Lease entry of n items to node 1 (term 1) until now +
 * BENCH_QUEUE_LEASE_MS. */
void bench_queue_lease(struct queue *q,
                       uint64_t now,
                       const struct queue_entry_lease_item *items,
                       size_t n);

#endif
