/* ctl_queue.h - the pages of hamrctl queue and the entry of hamrctl show, built from the queue. */
#ifndef HAMR_NODE_CTL_QUEUE_H
#define HAMR_NODE_CTL_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/hamr.pb-c.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"

/*
 * A page: --limit defaults to CTL_QUEUE_PAGE entries and may ask for
 * CTL_QUEUE_PAGE_MAX. One page looks at no more than CTL_QUEUE_SCAN_MAX
 * messages (filters may match few of them) and holds no more than
 * CTL_QUEUE_PAGE_BYTES of packed entries (half of PROTO_CONTROL_MAX, so a
 * page of large messages still fits in one control frame); it stops early
 * at any of the three and names where to go on. They bound the time one
 * listing holds the loop that runs raft, however long the queue.
 */
#define CTL_QUEUE_PAGE 1000
#define CTL_QUEUE_PAGE_MAX 10000
#define CTL_QUEUE_SCAN_MAX 100000
#define CTL_QUEUE_PAGE_BYTES (PROTO_CONTROL_MAX / 2)
/* hamrctl show gives at most this much of the header block. */
#define CTL_QUEUE_HEADERS_MAX (64 * 1024)

/*
 * ctl_queue_page - the filters (--state S, --to DOMAIN, --older-than DUR),
 * the bounds of a page and what it holds. The entries point into the queue's
 * messages (ids, addresses, texts): answer before the next apply, then free.
 */
struct ctl_queue_page {
    const char *state; /* NULL: all */
    const char *to;    /* NULL: any */
    uint64_t older_than_ms;
    uint64_t now_ms;
    bool headers;           /* show: with the header block */
    const struct queue *q;  /* show: where the header block is read from */
    size_t limit;           /* entries (CTL_QUEUE_PAGE) */
    size_t scan_max;        /* messages looked at (CTL_QUEUE_SCAN_MAX) */
    size_t bytes_max;       /* packed entries (CTL_QUEUE_PAGE_BYTES) */
    size_t scanned;         /* messages looked at so far */
    size_t bytes;           /* packed size of the entries so far */
    const char *last;       /* the last message looked at (or --after) */
    const char *next_after; /* set when the page stopped before the end of the queue */
    Hamr__QueueEntry **entries;
    size_t n, cap;
    int err;
};

/* ctl_queue_page_init - an empty page with the default bounds, filters off, at now_ms. */
void ctl_queue_page_init(struct ctl_queue_page *pg, uint64_t now_ms);

/*
 * ctl_queue_parse - hamrctl queue's arguments (pairs: --state, --to,
 * --older-than, --limit 1..CTL_QUEUE_PAGE_MAX, --after ID) into pg and
 * *after. Borrows args for as long as pg is used. 0, or HAMR_EINVAL with a
 * sentence in err.
 */
int ctl_queue_parse(char **args,
                    size_t n_args,
                    struct ctl_queue_page *pg,
                    const char **after,
                    char *err,
                    size_t err_len);

/*
 * ctl_queue_list - one page of the messages that pass the filters, in
 * acceptance order (queue_foreach_after), after the message after (NULL:
 * from the start). pg->next_after is set when the page stopped before the
 * end; the next page starts after it and skips nothing. The cost is the
 * messages looked at, never those before after. 0, or HAMR_ENOTFOUND (after
 * is no longer queued) or HAMR_ENOMEM, with a sentence in err.
 */
int ctl_queue_list(const struct queue *q,
                   struct ctl_queue_page *pg,
                   const char *after,
                   char *err,
                   size_t err_len);

/* ctl_queue_show - the entry of message id with its headers: 0, HAMR_ENOTFOUND or HAMR_ENOMEM. */
int ctl_queue_show(const struct queue *q, const char *id, struct ctl_queue_page *pg);

/* ctl_queue_page_free - release the entries (not what they point into). */
void ctl_queue_page_free(struct ctl_queue_page *pg);

#endif
