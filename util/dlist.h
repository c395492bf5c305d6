/*
 * dlist.h - a circular doubly-linked list with a sentinel head, embedded in
 * the members (libuv's QUEUE, Linux's list_head): O(1) insert, remove and
 * splice, no allocation. hamr_container_of leads from a link back to its
 * member. A link that is on no list points to itself.
 *
 * Thread: none of its own; the caller's. Header-only.
 */
#ifndef HAMR_UTIL_DLIST_H
#define HAMR_UTIL_DLIST_H

#include <stdbool.h>

struct dlist {
    struct dlist *prev, *next;
};

/* dlist_init - an empty list, or a link on none. */
static inline void dlist_init(struct dlist *l)
{
    l->prev = l->next = l;
}

/* dlist_empty - no member (or, for a link: on no list). */
static inline bool dlist_empty(const struct dlist *l)
{
    return l->next == l;
}

/* dlist_remove - n out of its list, and alone (harmless for a link on none). */
static inline void dlist_remove(struct dlist *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    dlist_init(n);
}

/* dlist_push - n at the tail of head, or at its front with at_front. */
static inline void dlist_push(struct dlist *head, struct dlist *n, bool at_front)
{
    struct dlist *after = at_front ? head : head->prev;
    n->prev = after;
    n->next = after->next;
    after->next->prev = n;
    after->next = n;
}

/* dlist_splice - every member of from to the tail of to; from ends empty. */
static inline void dlist_splice(struct dlist *to, struct dlist *from)
{
    if (dlist_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    dlist_init(from);
}

#endif
