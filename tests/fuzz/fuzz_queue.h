/*
 * fuzz_queue.h - checks shared by the queue fuzz targets (queue_apply and
 * queue_restore): framing a built Entry, the shape of a generated DSN, and
 * a state check (snapshot round trip, canonical encoding, scheduler pass).
 * Header-only, static functions.
 */
#ifndef HAMR_TESTS_FUZZ_QUEUE_H
#define HAMR_TESTS_FUZZ_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "queue/queue_dsn.h"
#include "queue/queue_sched.h"
#include "fuzz_common.h"

/* fuzz_queue_pack - frame an Entry with proto_entry_pack. */
static inline uint8_t *fuzz_queue_pack(Hamr__Entry *e, uint64_t ts, size_t *len)
{
    uint8_t *buf = NULL;
    e->timestamp_ms = ts;
    FUZZ_CHECK(proto_entry_pack(e, NULL, &buf, len) == 0);
    return buf;
}

/* fuzz_queue_last - queue_foreach callback: remember the last message. */
static inline int fuzz_queue_last(void *arg, const struct queue_msg *m)
{
    *(const struct queue_msg **)arg = m;
    return 0;
}

/* fuzz_queue_check_dsn - a generated DSN: shape and RFC 5322 line rules. */
static inline void fuzz_queue_check_dsn(const struct queue_msg *m)
{
    FUZZ_CHECK(m->is_dsn && m->sender[0] == '\0' && m->n_rcpts == 1);
    FUZZ_CHECK(strstr(m->id, "-B") != NULL);
    FUZZ_CHECK(m->body_len > 0);
    FUZZ_CHECK(memchr(m->body, '\0', m->body_len) == NULL);
    FUZZ_CHECK(fuzz_crlf_only(m->body, m->body_len));
    size_t start = 0;
    while (start < m->body_len) {
        const uint8_t *lf = memchr(m->body + start, '\n', m->body_len - start);
        FUZZ_CHECK(lf != NULL);
        size_t end = (size_t)(lf - m->body);
        FUZZ_CHECK(end - 1 - start <= QUEUE_DSN_LINE_MAX);
        start = end + 1;
    }
}

/* fuzz_queue_route - every recipient's domain is its destination; "" has none. */
static inline int fuzz_queue_route(void *data, const char *rcpt, char *dest, size_t destlen)
{
    const char *at = strrchr(rcpt, '@');
    if (at == NULL || at[1] == '\0')
        return -1;
    snprintf(dest, destlen, "%s", at + 1);
    return 0;
}

/* fuzz_queue_check_state - snapshot round trip and a scheduler pass at now. */
static inline void fuzz_queue_check_state(const struct queue *q, uint64_t now)
{
    char d1[65], d2[65];
    uint8_t *s1 = NULL, *s2 = NULL;
    size_t l1 = 0, l2 = 0;

    FUZZ_CHECK(queue_snapshot(q, NULL, &s1, &l1) == 0);
    struct queue *c = queue_new();
    FUZZ_CHECK(c != NULL);
    FUZZ_CHECK(queue_restore(c, s1, l1) == 0);
    queue_digest(q, d1);
    queue_digest(c, d2);
    FUZZ_CHECK(strcmp(d1, d2) == 0);
    FUZZ_CHECK(queue_snapshot(c, NULL, &s2, &l2) == 0);
    FUZZ_CHECK(l1 == l2 && memcmp(s1, s2, l1) == 0);
    free(s1);
    free(s2);
    queue_free(c);

    struct queue_stats st;
    queue_get_stats(q, &st);
    FUZZ_CHECK(st.held <= st.messages);

    static const struct queue_route route = {.dest = fuzz_queue_route};
    struct queue_sched_limits lim = {
        .max_per_dest = 2, .max_items = 8, .self_node = 1, .self_boot_id = "boot-1"};
    struct queue_work *work = NULL;
    int n = queue_sched_pick(q, now, &lim, &route, &work);
    FUZZ_CHECK(n >= 0 && (size_t)n <= lim.max_items);
    for (int i = 0; i < n; i++) {
        const struct queue_msg *m = queue_find(q, work[i].queue_id);
        FUZZ_CHECK(m != NULL && !m->held);
        FUZZ_CHECK(work[i].kind == QUEUE_WORK_DELIVER || work[i].kind == QUEUE_WORK_EXPIRE ||
                   work[i].kind == QUEUE_WORK_NOROUTE);
        FUZZ_CHECK(work[i].n_rcpts >= 1 && work[i].n_rcpts <= m->n_rcpts);
        for (size_t j = 0; j < work[i].n_rcpts; j++)
            FUZZ_CHECK(work[i].rcpt_indexes[j] < m->n_rcpts);
    }
    work = queue_work_free(work, (size_t)(n > 0 ? n : 0));
}

#endif
