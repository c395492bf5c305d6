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
 * Texts that come together are shared the same way, as a whole: one record
 * per distinct three references, found by the pointers themselves (union
 * queue_trio). What the last attempt at a recipient left (struct
 * queue_tried: error, TLS policy, TLS) and where a message came from
 * (struct queue_origin: client address, HELO) are such records.
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
                HAMR_ASSERT(r->refs < (1u << 31) - 1);
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
 * Shared records of three texts: what attempts left, where messages came from
 * ------------------------------------------------------------------------ */

const struct queue_tried queue_tried_none;

/* queue_trio_rec - a shared record: what a recipient or a message points at is pub. */
struct queue_trio_rec {
    union queue_trio pub;
    struct queue_trio_rec *next; /* hash chain */
    uint32_t hash;
    uint32_t refs : 31;
    uint32_t origin : 1; /* pub.origin: its third word is a number, not a text */
};

static struct {
    struct queue_trio_rec **tab;
    size_t cap, count;
} queue_trios;

/* queue_trio_grow - double the table at load 1; failure only keeps chains longer. */
static void queue_trio_grow(void)
{
    if (queue_trios.count < queue_trios.cap)
        return;
    size_t cap = queue_trios.cap ? 2 * queue_trios.cap : QUEUE_HASH_MIN;
    struct queue_trio_rec **t = calloc(cap, sizeof(*t));
    if (t == NULL)
        return;
    for (size_t i = 0; i < queue_trios.cap; i++) {
        struct queue_trio_rec *r = queue_trios.tab[i], *next;
        for (; r != NULL; r = next) {
            next = r->next;
            r->next = t[r->hash & (cap - 1)];
            t[r->hash & (cap - 1)] = r;
        }
    }
    free(queue_trios.tab);
    queue_trios.tab = t;
    queue_trios.cap = cap;
}

/*
 * queue_trio_find - a reference to the shared record of key (two texts and
 * a third word: a text, or for an origin a number), made if there is none.
 * Texts are found by the pointers themselves, since equal texts are one
 * pointer. 0 or HAMR_ENOMEM.
 */
static int queue_trio_find(const union queue_trio *key, bool origin, const union queue_trio **out)
{
    *out = NULL;
    uint32_t h = (uint32_t)hash_fnv1a64(key, sizeof(*key), origin);
    if (queue_trios.cap > 0)
        for (struct queue_trio_rec *r = queue_trios.tab[h & (queue_trios.cap - 1)]; r != NULL;
             r = r->next)
            if (r->hash == h && r->origin == origin && memcmp(&r->pub, key, sizeof(*key)) == 0) {
                HAMR_ASSERT(r->refs < UINT32_MAX);
                r->refs++;
                *out = &r->pub;
                return 0;
            }
    queue_trio_grow();
    struct queue_trio_rec *r = queue_trios.cap > 0 ? malloc(sizeof(*r)) : NULL;
    if (r == NULL)
        return HAMR_ENOMEM;
    r->pub = *key;
    for (size_t i = 0; i < (origin ? 2 : 3); i++)
        r->pub.t[i] = queue_str_ref(key->t[i]);
    r->hash = h;
    r->refs = 1;
    r->origin = origin;
    r->next = queue_trios.tab[h & (queue_trios.cap - 1)];
    queue_trios.tab[h & (queue_trios.cap - 1)] = r;
    queue_trios.count++;
    *out = &r->pub;
    return 0;
}

/* queue_trio_get - see internal.h. */
int queue_trio_get(const char *a, const char *b, const char *c, const union queue_trio **out)
{
    *out = NULL;
    if (a == NULL && b == NULL && c == NULL)
        return 0;
    union queue_trio key = {.t = {a, b, c}};
    return queue_trio_find(&key, false, out);
}

/* queue_trio_put - give back a reference from queue_trio_get (NULL: nothing). */
void queue_trio_put(const union queue_trio *t)
{
    if (t == NULL)
        return;
    struct queue_trio_rec *r =
        (struct queue_trio_rec *)(void *)((const char *)t - offsetof(struct queue_trio_rec, pub));
    HAMR_ASSERT(r->refs > 0);
    if (--r->refs > 0)
        return;
    struct queue_trio_rec **pp = &queue_trios.tab[r->hash & (queue_trios.cap - 1)];
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
    queue_trios.count--;
    for (size_t i = 0; i < (r->origin ? 2 : 3); i++)
        queue_str_put(r->pub.t[i]);
    free(r);
}

/* queue_trio_count - shared records alive (tests). */
size_t queue_trio_count(void)
{
    return queue_trios.count;
}

/* queue_tried_get - queue_trio_get of what an attempt left (see internal.h). */
int queue_tried_get(const char *error,
                    const char *tls_policy,
                    const char *tls,
                    const struct queue_tried **out)
{
    const union queue_trio *u;
    int rv = queue_trio_get(error, tls_policy, tls, &u);
    *out = u != NULL ? &u->tried : NULL;
    return rv;
}

/* queue_tried_put - give back a reference from queue_tried_get (NULL: nothing). */
void queue_tried_put(const struct queue_tried *t)
{
    queue_trio_put((const union queue_trio *)(const void *)t);
}

/* queue_origin_get - a reference to the shared record of where a message came from (see
 * internal.h). */
int queue_origin_get(const char *client_addr,
                     const char *helo,
                     uint64_t accepted_by,
                     const struct queue_origin **out)
{
    const char *c = queue_str(client_addr), *h = queue_str(helo);
    const union queue_trio *u = NULL;
    union queue_trio key = {.origin = {.client_addr = c, .helo = h, .accepted_by = accepted_by}};
    int rv = c != NULL && h != NULL ? queue_trio_find(&key, true, &u) : HAMR_ENOMEM;
    queue_str_put(c);
    queue_str_put(h);
    *out = u != NULL ? &u->origin : NULL;
    return rv;
}

/* queue_origin_put - give back a reference from queue_origin_get (NULL: nothing). */
void queue_origin_put(const struct queue_origin *o)
{
    queue_trio_put((const union queue_trio *)(const void *)o);
}
