/*
 * queue_str.c - one shared copy of each text the queue holds many times
 * over: senders, client addresses and HELO names, last errors, TLS notes,
 * lease boot ids and destinations. A backlog of a million messages from one
 * sender, deferred with one error by one next hop, holds each of those texts
 * once instead of a million times (a malloc'd copy costs 32 to 96 bytes a
 * field; a reference costs the pointer).
 *
 * Texts are immutable and reference counted: queue_str returns a reference
 * (the same pointer for equal texts), queue_str_put gives one back, and the
 * last one frees the copy. The table is process-wide, so items move between
 * queues (a restore builds a new one) without translation; like the rest of
 * queue/ it is used from one thread (the loop's). A forked child (the
 * snapshot writer) only reads it.
 *
 * What the last attempt at a recipient left (struct queue_tried: error,
 * TLS policy, TLS) is shared the same way, as a whole: one record per
 * distinct three references, found by the pointers themselves.
 *
 * Nothing replicated depends on it: snapshots and the digest read the texts,
 * never the pointers.
 */
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "util/hash.h"
#include "queue/internal.h"

/* queue_str_rec - a shared text: what a field points at is s. */
struct queue_str_rec {
    struct queue_str_rec *next; /* hash chain */
    uint32_t hash;
    uint32_t refs;
    char s[];
};

static struct {
    struct queue_str_rec **tab;
    size_t cap, count;
} queue_strs;

/* queue_str_rec_of - the record behind a shared text. */
static struct queue_str_rec *queue_str_rec_of(const char *s)
{
    return (struct queue_str_rec *)(void *)(s - offsetof(struct queue_str_rec, s));
}

/* queue_str_grow - double the table at load 1; failure only keeps chains longer. */
static void queue_str_grow(void)
{
    if (queue_strs.count < queue_strs.cap)
        return;
    size_t cap = queue_strs.cap ? 2 * queue_strs.cap : QUEUE_HASH_MIN;
    struct queue_str_rec **t = calloc(cap, sizeof(*t));
    if (t == NULL)
        return;
    for (size_t i = 0; i < queue_strs.cap; i++) {
        struct queue_str_rec *r = queue_strs.tab[i], *next;
        for (; r != NULL; r = next) {
            next = r->next;
            r->next = t[r->hash & (cap - 1)];
            t[r->hash & (cap - 1)] = r;
        }
    }
    free(queue_strs.tab);
    queue_strs.tab = t;
    queue_strs.cap = cap;
}

/* queue_str - a reference to the shared copy of s ("" for NULL); NULL on no memory. */
const char *queue_str(const char *s)
{
    if (s == NULL)
        s = "";
    size_t n = strlen(s);
    uint32_t h = (uint32_t)hash_fnv1a64(s, n, 0);
    if (queue_strs.cap > 0)
        for (struct queue_str_rec *r = queue_strs.tab[h & (queue_strs.cap - 1)]; r != NULL;
             r = r->next)
            if (r->hash == h && strcmp(r->s, s) == 0) {
                HAMR_ASSERT(r->refs < UINT32_MAX);
                r->refs++;
                return r->s;
            }
    queue_str_grow();
    if (queue_strs.cap == 0)
        return NULL;
    struct queue_str_rec *r = malloc(sizeof(*r) + n + 1);
    if (r == NULL)
        return NULL;
    r->hash = h;
    r->refs = 1;
    memcpy(r->s, s, n + 1);
    r->next = queue_strs.tab[h & (queue_strs.cap - 1)];
    queue_strs.tab[h & (queue_strs.cap - 1)] = r;
    queue_strs.count++;
    return r->s;
}

/* queue_str_opt - a reference for s, or NULL for NULL and "" (absent optional text). */
int queue_str_opt(const char *s, const char **out)
{
    *out = NULL;
    if (s == NULL || s[0] == '\0')
        return 0;
    *out = queue_str(s);
    return *out ? 0 : HAMR_ENOMEM;
}

/* queue_str_put - give back a reference from queue_str (NULL: nothing). */
void queue_str_put(const char *s)
{
    if (s == NULL)
        return;
    struct queue_str_rec *r = queue_str_rec_of(s);
    HAMR_ASSERT(r->refs > 0);
    if (--r->refs > 0)
        return;
    struct queue_str_rec **pp = &queue_strs.tab[r->hash & (queue_strs.cap - 1)];
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
    queue_strs.count--;
    free(r);
}

/* queue_str_ref - one more reference to a shared text (NULL: nothing). */
const char *queue_str_ref(const char *s)
{
    if (s != NULL) {
        struct queue_str_rec *r = queue_str_rec_of(s);
        HAMR_ASSERT(r->refs < UINT32_MAX);
        r->refs++;
    }
    return s;
}

/* queue_str_count - shared texts alive (tests). */
size_t queue_str_count(void)
{
    return queue_strs.count;
}

/* ------------------------------------------------------------------------
 * What attempts left: shared records of three texts
 * ------------------------------------------------------------------------ */

const struct queue_tried queue_tried_none;

/* queue_tried_rec - a shared record: what a recipient points at is pub. */
struct queue_tried_rec {
    struct queue_tried pub;
    struct queue_tried_rec *next; /* hash chain */
    uint32_t hash;
    uint32_t refs;
};

static struct {
    struct queue_tried_rec **tab;
    size_t cap, count;
} queue_trieds;

/* queue_tried_hash - of the three references (equal texts are one pointer). */
static uint32_t queue_tried_hash(const char *error, const char *tls_policy, const char *tls)
{
    const char *p[3] = {error, tls_policy, tls};
    return (uint32_t)hash_fnv1a64(p, sizeof(p), 0);
}

/* queue_tried_grow - double the table at load 1; failure only keeps chains longer. */
static void queue_tried_grow(void)
{
    if (queue_trieds.count < queue_trieds.cap)
        return;
    size_t cap = queue_trieds.cap ? 2 * queue_trieds.cap : QUEUE_HASH_MIN;
    struct queue_tried_rec **t = calloc(cap, sizeof(*t));
    if (t == NULL)
        return;
    for (size_t i = 0; i < queue_trieds.cap; i++) {
        struct queue_tried_rec *r = queue_trieds.tab[i], *next;
        for (; r != NULL; r = next) {
            next = r->next;
            r->next = t[r->hash & (cap - 1)];
            t[r->hash & (cap - 1)] = r;
        }
    }
    free(queue_trieds.tab);
    queue_trieds.tab = t;
    queue_trieds.cap = cap;
}

/*
 * queue_tried_get - a reference to the shared record of these three texts
 * (each NULL or a reference from queue_str, which the caller keeps); NULL
 * in *out when all three are NULL. 0 or HAMR_ENOMEM.
 */
int queue_tried_get(const char *error,
                    const char *tls_policy,
                    const char *tls,
                    const struct queue_tried **out)
{
    *out = NULL;
    if (error == NULL && tls_policy == NULL && tls == NULL)
        return 0;
    uint32_t h = queue_tried_hash(error, tls_policy, tls);
    if (queue_trieds.cap > 0)
        for (struct queue_tried_rec *r = queue_trieds.tab[h & (queue_trieds.cap - 1)]; r != NULL;
             r = r->next)
            if (r->hash == h && r->pub.error == error && r->pub.tls_policy == tls_policy &&
                r->pub.tls == tls) {
                HAMR_ASSERT(r->refs < UINT32_MAX);
                r->refs++;
                *out = &r->pub;
                return 0;
            }
    queue_tried_grow();
    struct queue_tried_rec *r = queue_trieds.cap > 0 ? malloc(sizeof(*r)) : NULL;
    if (r == NULL)
        return HAMR_ENOMEM;
    r->pub.error = queue_str_ref(error);
    r->pub.tls_policy = queue_str_ref(tls_policy);
    r->pub.tls = queue_str_ref(tls);
    r->hash = h;
    r->refs = 1;
    r->next = queue_trieds.tab[h & (queue_trieds.cap - 1)];
    queue_trieds.tab[h & (queue_trieds.cap - 1)] = r;
    queue_trieds.count++;
    *out = &r->pub;
    return 0;
}

/* queue_tried_put - give back a reference from queue_tried_get (NULL: nothing). */
void queue_tried_put(const struct queue_tried *t)
{
    if (t == NULL)
        return;
    struct queue_tried_rec *r =
        (struct queue_tried_rec *)(void *)((const char *)t - offsetof(struct queue_tried_rec, pub));
    HAMR_ASSERT(r->refs > 0);
    if (--r->refs > 0)
        return;
    struct queue_tried_rec **pp = &queue_trieds.tab[r->hash & (queue_trieds.cap - 1)];
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
    queue_trieds.count--;
    queue_str_put(r->pub.error);
    queue_str_put(r->pub.tls_policy);
    queue_str_put(r->pub.tls);
    free(r);
}

/* queue_tried_count - shared records alive (tests). */
size_t queue_tried_count(void)
{
    return queue_trieds.count;
}
