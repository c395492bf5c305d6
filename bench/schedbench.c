/*
 * schedbench.c - what one queue_sched_pick costs on a large backlog: N due
 * messages (one recipient each) for D destinations, built in memory through
 * the real apply path (Enqueue, Lease and Outcome entries packed by
 * queue_entry and applied by queue_apply), drained the way the leader does
 * it. Not a test: it never fails because of the numbers.
 *
 *   schedbench [-n "10000 100000 1000000"] [-d "1 50"] [-p PER_DEST] [-r ROUNDS]
 *
 * For each N and D: N messages due at once, spread evenly over D domains
 * (one destination each). Then ROUNDS times: a pick with every destination
 * free ("free": what a pick costs while draining), a Lease of what it
 * returned, a pick with every destination at max_per_dest ("full": what a
 * pick costs while waiting for outcomes), and a DELIVERED Outcome for every
 * leased message. One line per case: the mean time of each kind of pick,
 * the items a free pick returned, and what one destination could drain at
 * if picking were the only cost: free picks per second times the items it
 * gives that destination (max_per_dest).
 *
 * Owns: the queues it builds. May call: queue/, util/.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/err.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue/queue_sched.h"
#include "bench/bench_queue.h"

#define T0 1700000000000ull
#define MAX_ITEMS 256 /* node/relay_internal.h RELAY_SCHED_MAX_ITEMS */

/* schedbench_ns - monotonic nanoseconds. */
static uint64_t schedbench_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* schedbench_route - "[domain]:25", as relay_route_dest would for an MX per domain. */
static int schedbench_route(void *data, const char *rcpt, char *dest, size_t destlen)
{
    (void)data;
    const char *at = strrchr(rcpt, '@');
    int n = snprintf(dest, destlen, "[%s]:25", at ? at + 1 : rcpt);
    return n > 0 && (size_t)n < destlen ? 0 : -1;
}

/* schedbench_fill - n messages, one recipient each, on d domains, all due at T0. */
static void schedbench_fill(struct queue *q, size_t n, unsigned d)
{
    static const uint8_t body[] = "Subject: x\r\n\r\nx\r\n";
    char id[32], rcpt[64];
    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "M%zu", i);
        snprintf(rcpt, sizeof(rcpt), "u%zu@d%u.test", i, (unsigned)(i % d));
        const char *rcpts[] = {rcpt};
        struct queue_entry_enqueue_args a = {.queue_id = id,
                                             .sender = "s@src.test",
                                             .rcpts = rcpts,
                                             .n_rcpts = 1,
                                             .body = body,
                                             .body_len = sizeof(body) - 1,
                                             .accepted_by = 1};
        uint8_t *buf = NULL;
        size_t len = 0;
        int rv = queue_entry_enqueue(&a, T0, NULL, &buf, &len);
        bench_queue_apply(q, rv, buf, len);
    }
}

/* schedbench_lease - one Lease entry for the DELIVER items of w. */
static void schedbench_lease(struct queue *q,
                             uint64_t now,
                             struct queue_work *w,
                             int n,
                             uint64_t *lease_id)
{
    struct queue_entry_lease_item *items = calloc((size_t)n, sizeof(*items));
    if (items == NULL)
        exit(1);
    for (int i = 0; i < n; i++) {
        items[i] = (struct queue_entry_lease_item){.queue_id = w[i].queue_id,
                                                   .rcpt_indexes = w[i].rcpt_indexes,
                                                   .n_rcpts = w[i].n_rcpts,
                                                   .lease_id = ++*lease_id,
                                                   .destination = w[i].dest};
    }
    bench_queue_lease(q, now, items, (size_t)n);
    free(items);
}

/* schedbench_deliver - a DELIVERED Outcome for every item of w (lease ids first_id+1...). */
static void schedbench_deliver(struct queue *q,
                               uint64_t now,
                               struct queue_work *w,
                               int n,
                               uint64_t first_id)
{
    for (int i = 0; i < n; i++) {
        struct queue_entry_result r = {
            .rcpt_index = w[i].rcpt_indexes[0], .status = QUEUE_ENTRY_DELIVERED, .smtp_code = 250};
        struct queue_entry_outcome_args a = {.queue_id = w[i].queue_id,
                                             .lease_id = first_id + 1 + (uint64_t)i,
                                             .results = &r,
                                             .n_results = 1,
                                             .reporter = "bench.test"};
        uint8_t *buf = NULL;
        size_t len = 0;
        int rv = queue_entry_outcome(&a, now, NULL, &buf, &len);
        bench_queue_apply(q, rv, buf, len);
    }
}

/* schedbench_case - one N and D; prints one line. */
static void schedbench_case(size_t n, unsigned d, unsigned per_dest, int rounds)
{
    struct queue *q = queue_new();
    if (q == NULL)
        exit(1);
    uint64_t t = schedbench_ns();
    schedbench_fill(q, n, d);
    double fill_s = (double)(schedbench_ns() - t) / 1e9;

    struct queue_route route = {.data = NULL, .dest = schedbench_route};
    struct queue_sched_limits lim = {.max_per_dest = per_dest,
                                     .max_items = MAX_ITEMS,
                                     .self_node = 1,
                                     .self_boot_id = BENCH_QUEUE_BOOT};
    uint64_t now = T0 + 1000, lease_id = 0, free_ns = 0, full_ns = 0;
    size_t items = 0;
    for (int r = 0; r < rounds; r++, now += 10) {
        struct queue_work *w = NULL;
        t = schedbench_ns();
        int k = queue_sched_pick(q, now, &lim, &route, &w);
        free_ns += schedbench_ns() - t;
        if (k < 0) {
            fprintf(stderr, "schedbench: pick: %s\n", hamr_strerror(k));
            exit(1);
        }
        items += (size_t)k;
        uint64_t first_id = lease_id;
        schedbench_lease(q, now, w, k, &lease_id);

        struct queue_work *w2 = NULL;
        t = schedbench_ns();
        int k2 = queue_sched_pick(q, now, &lim, &route, &w2);
        full_ns += schedbench_ns() - t;
        queue_work_free(w2, k2 > 0 ? (size_t)k2 : 0);

        schedbench_deliver(q, now, w, k, first_id);
        queue_work_free(w, (size_t)k);
    }
    double free_ms = (double)free_ns / 1e6 / rounds, full_ms = (double)full_ns / 1e6 / rounds;
    double per_pick = (double)items / rounds;
    double one_dest = per_pick / d * 1000.0 / free_ms;
    printf("| %8zu | %5u | %8.1f | %9.3f | %9.3f | %6.0f | %11.0f | %12.0f |\n", n, d, fill_s,
           free_ms, full_ms, per_pick, 1000.0 / free_ms, one_dest);
    fflush(stdout);
    queue_free(q);
}

int main(int argc, char **argv)
{
    const char *ns = "10000 100000 1000000", *ds = "1 50";
    unsigned per_dest = 20;
    int rounds = 20, c;
    while ((c = getopt(argc, argv, "n:d:p:r:")) != -1) {
        switch (c) {
            case 'n':
                ns = optarg;
                break;
            case 'd':
                ds = optarg;
                break;
            case 'p':
                per_dest = (unsigned)strtoul(optarg, NULL, 10);
                break;
            case 'r':
                rounds = atoi(optarg);
                break;
            default:
                fprintf(
                    stderr,
                    "usage: schedbench [-n \"N...\"] [-d \"D...\"] [-p PER_DEST] [-r ROUNDS]\n");
                return 2;
        }
    }
    if (rounds < 1)
        rounds = 1;
    printf("max_per_dest %u, max_items %d, %d rounds\n\n", per_dest, MAX_ITEMS, rounds);
    printf(
        "| messages | dests | fill s   | free ms   | full ms   | items  | free picks/s | 1 dest "
        "msg/s |\n");
    printf(
        "|---------:|------:|---------:|----------:|----------:|-------:|------------:|------------"
        "-:|\n");
    char nbuf[256];
    snprintf(nbuf, sizeof(nbuf), "%s", ns);
    for (char *sn = strtok(nbuf, " "); sn != NULL; sn = strtok(NULL, " ")) {
        char dbuf[256];
        snprintf(dbuf, sizeof(dbuf), "%s", ds);
        char *save = NULL;
        for (char *sd = strtok_r(dbuf, " ", &save); sd != NULL; sd = strtok_r(NULL, " ", &save))
            schedbench_case((size_t)strtoull(sn, NULL, 10), (unsigned)strtoul(sd, NULL, 10),
                            per_dest, rounds);
    }
    return 0;
}
