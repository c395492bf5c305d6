/*
 * body_store.c - each node's append-only store of message bodies on disk
 * (format, layout and reasons in body_store.h).
 *
 * Owns: the segment files of one directory, the open descriptors of the
 * active segment, of rolled segments not yet synced and of the directory,
 * the per-segment list of live records, the startup index until
 * claims_done, and every request it hands to libuv's thread pool.
 * Exports: body_store_*. Errors: HAMR_EIO, HAMR_ENOSPACE, HAMR_ENOMEM,
 * HAMR_EINVAL, HAMR_ENOTFOUND, HAMR_ECORRUPT, HAMR_ESHUTDOWN.
 *
 * Happy path of a body: put (pwritev on the loop, into the page cache) ->
 * a sync in the pool (fdatasync of the segments written since the last
 * sync, fsync of the directory if a segment was created) -> reads by
 * location in the pool (open by name, pread, SHA-256): whole, by range, or
 * chunk after chunk with the SHA-256 carried between them -> release; when the
 * last live record of a closed segment goes, the file is unlinked.
 *
 * Failure modes: a write that fails is cut off again (ftruncate) and
 * returned; if the cut fails the next put starts a new segment, so nothing
 * is ever appended after a torn record. A sync that fails marks the store
 * failed: Linux reports a writeback error once, so a later fdatasync that
 * succeeds proves nothing, and every put and sync_now returns HAMR_EIO
 * from then on (the node stops, as for the raft log).
 *
 * Threads: the struct is touched on the loop thread only. A worker gets
 * copies (descriptors, id, expected hash) and posts its result back;
 * descriptors are closed on the loop, in after-work callbacks or when no
 * worker holds them, never by a worker.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/hash.h"
#include "util/log.h"
#include "queue/body_store.h"

/*
 * Record header, version 1, little-endian:
 *   0  "HMBD"       magic
 *   4  u8  1        version
 *   5  u8  id_len   1..255
 *   6  u16 0        reserved
 *   8  u64 body_len
 *  16  32 octets    SHA-256 of the body
 *  48  id, then the body
 */
#define BODY_STORE_MAGIC "HMBD"
#define BODY_STORE_VERSION 1
#define BODY_STORE_HDR_LEN 48
#define BODY_STORE_ID_MAX 255
#define BODY_STORE_NAME_LEN 20 /* 16 hex digits, ".seg" */
#define BODY_STORE_LEN_MAX UINT32_MAX

/*
 * A live record of a segment: where it starts and its body's length. Kept
 * per record (8 octets) rather than as a bare count so that release knows
 * the length for live_bytes without reading the disk, and so that a second
 * release of one location is caught instead of removing a segment early.
 */
struct body_store_rec {
    uint32_t off : 31; /* below BODY_STORE_SEGMENT_MAX */
    uint32_t dead : 1; /* released; dropped at the next compaction */
    uint32_t len;
};
_Static_assert(BODY_STORE_SEGMENT_MAX <= (1u << 31), "a record's offset fits in 31 bits");

/* A segment file and what the store knows of it. */
struct body_store_seg {
    uint32_t num;
    int fd;            /* writable descriptor, -1 once closed (or never opened: old segments) */
    uint64_t size;     /* bytes in the file */
    uint64_t last_seq; /* write sequence of the last record put here */
    uint64_t live;     /* live records */
    bool sync_busy;    /* a worker sync holds fd */
    bool unlinking;    /* an unlink is in flight, or failed */
    bool recs_sorted;  /* recs rise by off (puts do; claims may not) */
    size_t nrecs, ndead, cap;
    struct body_store_rec *recs;
};

/* An entry of the startup index: the newest complete record of an id. */
struct body_store_ent {
    char *id; /* NULL: empty slot */
    uint64_t loc;
    uint64_t len;
    uint8_t sha[BODY_SHA256_LEN];
    bool claimed;
};

/* The one sync in the thread pool at a time: what it must sync, and how it went. */
struct body_store_sync {
    uv_work_t req;
    struct body_store *s;
    int *fds; /* copies of the segments' descriptors (room for every open one) */
    size_t nfds, cap;
    int dirfd; /* -1: the directory needs no fsync */
    uint64_t target_seq;
    uint64_t dir_gen;
    int status;
    uint64_t us;
};

/* A record as a reader expects it: where, whose, how long, which SHA-256. */
struct body_store_ref {
    uint64_t loc;
    char id[BODY_STORE_ID_MAX + 1];
    size_t len;
    uint8_t sha[BODY_SHA256_LEN];
};

/*
 * A read in the pool: copies of everything the worker needs, and its
 * outcome. One kind of request serves the three ways to read: the whole
 * body (body_store_read: buf is malloc'ed here, md checks it), a range
 * (body_store_read_range: the caller's buf, no md) and the next chunk of a
 * stream (body_store_stream_next: the stream's buf and md).
 */
struct body_store_read {
    uv_work_t req;
    struct body_store *s;
    struct body_store_read *prev, *next; /* reads in flight, to cancel at close */
    int dirfd;
    struct body_store_ref ref;
    uint64_t from; /* the body's bytes [from, from + n) go to buf */
    size_t n;
    uint8_t *buf;
    EVP_MD_CTX *md; /* not NULL: fed the bytes; at the body's end its digest must be sha */
    struct body_store_stream *stream; /* a stream's chunk; NULL otherwise */
    body_store_read_cb cb;            /* a whole read's */
    body_store_range_cb range_cb;     /* a range's */
    void *arg;
    int status;
};

/* A body read chunk after chunk (body_store_stream_new). */
struct body_store_stream {
    struct body_store *s;
    struct body_store_ref ref;
    size_t chunk;   /* bytes per read */
    uint8_t *buf;   /* chunk bytes, allocated by the first read */
    EVP_MD_CTX *md; /* the SHA-256 of the bytes handed out so far */
    uint64_t pos;   /* body bytes handed out */
    bool busy;      /* a read is in the pool */
    bool freed;     /* body_store_stream_free came while busy: the read frees it */
    bool ended;     /* the last chunk or an error was reported: no more reads */
    body_store_stream_cb cb;
    void *arg;
};

/* The unlink of an empty segment, in the pool. */
struct body_store_unlink {
    uv_fs_t req;
    struct body_store *s;
    uint32_t num;
};

struct body_store {
    uv_loop_t *loop;
    char *dir;
    int dirfd;
    uint64_t segment_size;

    struct body_store_seg **segs; /* sorted by num; the active one is last */
    size_t nsegs, segs_cap;
    struct body_store_seg *active;
    bool roll_next; /* a failed write could not be cut off: never append after it */

    struct body_store_ent *index; /* startup index, NULL after claims_done */
    size_t index_cap, index_len;
    bool claims_done;

    uint64_t written_seq; /* records written */
    uint64_t synced_seq;  /* records known on disk */
    uint64_t dir_gen;     /* segments created */
    uint64_t dir_synced_gen;
    int failed; /* sticky HAMR_EIO after a failed sync */

    struct body_store_sync sync; /* the pool's; then the final sync at close */
    int *now_fds;                /* sync_now's list: no allocation there */
    size_t fds_cap;              /* room in now_fds, and what sync.fds must have */
    bool sync_running;
    struct body_store_read *reads;
    size_t inflight; /* sync, reads and unlinks in the pool */

    bool closing;
    bool final_started;
    uv_work_t final_req;
    void (*close_cb)(void *arg);
    void *close_arg;

    struct body_store_stats st;
};

static void body_store_sync_start(struct body_store *s);
static void body_store_maybe_unlink(struct body_store *s, struct body_store_seg *seg);
static void body_store_work_done(struct body_store *s);

/* ---- small helpers ---------------------------------------------------- */

/* body_store_errno - a write-side errno as a project code. */
static int body_store_errno(int e)
{
    return e == ENOSPC || e == EDQUOT ? HAMR_ENOSPACE : HAMR_EIO;
}

/* body_store_now_us - monotonic microseconds, for last_sync_us. */
static uint64_t body_store_now_us(void)
{
    return uv_hrtime() / 1000;
}

/* body_store_seg_name - "NNNNNNNNNNNNNNNN.seg" of segment num into out. */
static void body_store_seg_name(uint32_t num, char out[BODY_STORE_NAME_LEN + 1])
{
    snprintf(out, BODY_STORE_NAME_LEN + 1, "%016" PRIx32 ".seg", num);
}

/* body_store_parse_name - the number of a segment file name; false for any other name. */
static bool body_store_parse_name(const char *name, uint32_t *num)
{
    if (strlen(name) != BODY_STORE_NAME_LEN || strcmp(name + 16, ".seg") != 0)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0 || (v >> 60) != 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    if (v > UINT32_MAX) /* locations keep 32 bits of segment number */
        return false;
    *num = (uint32_t)v;
    return true;
}

/* body_store_le64_put - v as 8 little-endian octets. */
static void body_store_le64_put(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* body_store_le64_get - 8 little-endian octets. */
static uint64_t body_store_le64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* body_store_hdr_pack - the header of a record. */
static void body_store_hdr_pack(uint8_t hdr[BODY_STORE_HDR_LEN],
                                size_t id_len,
                                uint64_t body_len,
                                const uint8_t sha[BODY_SHA256_LEN])
{
    memcpy(hdr, BODY_STORE_MAGIC, 4);
    hdr[4] = BODY_STORE_VERSION;
    hdr[5] = (uint8_t)id_len;
    hdr[6] = hdr[7] = 0;
    body_store_le64_put(hdr + 8, body_len);
    memcpy(hdr + 16, sha, BODY_SHA256_LEN);
}

/* body_store_hdr_valid - magic, version, id length and reserved octets are a record's. */
static bool body_store_hdr_valid(const uint8_t hdr[BODY_STORE_HDR_LEN])
{
    return memcmp(hdr, BODY_STORE_MAGIC, 4) == 0 && hdr[4] == BODY_STORE_VERSION && hdr[5] != 0 &&
           hdr[6] == 0 && hdr[7] == 0;
}

/* body_store_pread_full - n octets at off, retrying short reads; octets read, or -errno. */
static ssize_t body_store_pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    return fs_read_full(fd, buf, n, (off_t)off);
}

/*
 * body_store_rec_read_hdr - read and check the header of the record at off
 * of fd; with id non-NULL, also its id. 0 and *body_len, HAMR_ENOTFOUND
 * (past the end), HAMR_ECORRUPT (not a record, or another id), HAMR_EIO.
 */
static int body_store_rec_read_hdr(int fd,
                                   uint64_t off,
                                   const char *id,
                                   uint64_t *body_len,
                                   uint8_t sha[BODY_SHA256_LEN])
{
    uint8_t hdr[BODY_STORE_HDR_LEN + BODY_STORE_ID_MAX];
    size_t want = BODY_STORE_HDR_LEN + (id != NULL ? strlen(id) : 0);
    ssize_t r = body_store_pread_full(fd, hdr, want, off);
    if (r < 0)
        return HAMR_EIO;
    if (r == 0)
        return HAMR_ENOTFOUND;
    if ((size_t)r < want || !body_store_hdr_valid(hdr))
        return HAMR_ECORRUPT;
    if (id != NULL &&
        (hdr[5] != want - BODY_STORE_HDR_LEN || memcmp(hdr + BODY_STORE_HDR_LEN, id, hdr[5]) != 0))
        return HAMR_ECORRUPT;
    *body_len = body_store_le64_get(hdr + 8);
    if (sha != NULL)
        memcpy(sha, hdr + 16, BODY_SHA256_LEN);
    return 0;
}

/* ---- segments --------------------------------------------------------- */

/* body_store_seg_find - the segment numbered num, or NULL. */
static struct body_store_seg *body_store_seg_find(const struct body_store *s, uint32_t num)
{
    size_t lo = 0, hi = s->nsegs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->segs[mid]->num == num)
            return s->segs[mid];
        if (s->segs[mid]->num < num)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* body_store_seg_add - a new segment struct numbered num, above every other; NULL on ENOMEM. */
static struct body_store_seg *body_store_seg_add(struct body_store *s, uint32_t num, uint64_t size)
{
    HAMR_ASSERT(s->nsegs == 0 || s->segs[s->nsegs - 1]->num < num);
    if (s->nsegs == s->segs_cap) {
        size_t cap = s->segs_cap ? 2 * s->segs_cap : 16;
        struct body_store_seg **segs = realloc(s->segs, cap * sizeof(*segs));
        if (segs == NULL)
            return NULL;
        s->segs = segs;
        s->segs_cap = cap;
    }
    struct body_store_seg *seg = calloc(1, sizeof(*seg));
    if (seg == NULL)
        return NULL;
    seg->num = num;
    seg->fd = -1;
    seg->size = size;
    seg->recs_sorted = true;
    s->segs[s->nsegs++] = seg;
    s->st.segments++;
    s->st.disk_bytes += size;
    return seg;
}

/* body_store_seg_drop - forget a segment (its file is gone) and free it. */
static void body_store_seg_drop(struct body_store *s, struct body_store_seg *seg)
{
    HAMR_ASSERT(seg->fd < 0 && seg != s->active);
    size_t i = 0;
    while (s->segs[i] != seg)
        i++;
    memmove(&s->segs[i], &s->segs[i + 1], (s->nsegs - i - 1) * sizeof(*s->segs));
    s->nsegs--;
    s->st.segments--;
    s->st.disk_bytes -= seg->size;
    free(seg->recs);
    free(seg);
}

/* body_store_rec_cmp - qsort order of live records: by offset. */
static int body_store_rec_cmp(const void *a, const void *b)
{
    uint32_t x = ((const struct body_store_rec *)a)->off;
    uint32_t y = ((const struct body_store_rec *)b)->off;
    return x < y ? -1 : x > y;
}

/* body_store_seg_reserve - room for one more live record in seg's list. */
static int body_store_seg_reserve(struct body_store_seg *seg)
{
    if (seg->nrecs < seg->cap)
        return 0;
    size_t cap = seg->cap ? 2 * seg->cap : 64;
    struct body_store_rec *recs = realloc(seg->recs, cap * sizeof(*recs));
    if (recs == NULL)
        return HAMR_ENOMEM;
    seg->recs = recs;
    seg->cap = cap;
    return 0;
}

/* body_store_seg_live_add - count the record at off (len body octets) live in seg. */
static int body_store_seg_live_add(struct body_store *s,
                                   struct body_store_seg *seg,
                                   uint32_t off,
                                   uint64_t len)
{
    int rv = body_store_seg_reserve(seg);
    if (rv != 0)
        return rv;
    if (seg->nrecs > 0 && seg->recs[seg->nrecs - 1].off >= off)
        seg->recs_sorted = false;
    seg->recs[seg->nrecs++] = (struct body_store_rec){.off = off, .len = (uint32_t)len};
    seg->live++;
    s->st.live++;
    s->st.live_bytes += len;
    return 0;
}

/*
 * body_store_seg_live_find - the live record at off in seg, or NULL. Sorts
 * the list first if claims left it unsorted.
 */
static struct body_store_rec *body_store_seg_live_find(struct body_store_seg *seg, uint32_t off)
{
    if (!seg->recs_sorted && seg->nrecs > 1) {
        qsort(seg->recs, seg->nrecs, sizeof(*seg->recs), body_store_rec_cmp);
        seg->recs_sorted = true;
    }
    struct body_store_rec key = {.off = off};
    struct body_store_rec *r = seg->nrecs == 0 ? NULL
                                               : bsearch(&key, seg->recs, seg->nrecs,
                                                         sizeof(*seg->recs), body_store_rec_cmp);
    return r != NULL && !r->dead ? r : NULL;
}

/*
 * body_store_seg_compact - drop released records once they are over half
 * of the list: a release stays O(log n) and the list at most twice the live.
 */
static void body_store_seg_compact(struct body_store_seg *seg)
{
    if (seg->ndead < 32 || 2 * seg->ndead < seg->nrecs)
        return;
    size_t j = 0;
    for (size_t i = 0; i < seg->nrecs; i++)
        if (!seg->recs[i].dead)
            seg->recs[j++] = seg->recs[i];
    seg->nrecs = j;
    seg->ndead = 0;
}

/* body_store_seg_close_fd - close a rolled segment's descriptor once all it holds is synced. */
static void body_store_seg_close_fd(struct body_store *s, struct body_store_seg *seg)
{
    if (seg == s->active || seg->fd < 0 || seg->sync_busy || seg->last_seq > s->synced_seq)
        return;
    close(seg->fd);
    seg->fd = -1;
    body_store_maybe_unlink(s, seg);
}

/* body_store_close_synced - close every rolled segment's descriptor that nothing needs any more. */
static void body_store_close_synced(struct body_store *s)
{
    for (size_t i = 0; i < s->nsegs; i++)
        body_store_seg_close_fd(s, s->segs[i]);
}

/*
 * body_store_seg_create - begin segment num as the active one: create its
 * file (O_EXCL: never an old one) and make room for its descriptor in the
 * sync's list. The directory entry is synced by the next sync.
 */
static int body_store_seg_create(struct body_store *s, uint32_t num, char *err, size_t errlen)
{
    size_t open_fds = 1;
    for (size_t i = 0; i < s->nsegs; i++)
        open_fds += s->segs[i]->fd >= 0;
    if (open_fds > s->fds_cap) {
        /* sync.fds grows in body_store_sync_reserve: a worker may be reading it now */
        int *now = realloc(s->now_fds, 2 * open_fds * sizeof(*now));
        if (now == NULL)
            return HAMR_ENOMEM;
        s->now_fds = now;
        s->fds_cap = 2 * open_fds;
    }
    char name[BODY_STORE_NAME_LEN + 1];
    body_store_seg_name(num, name);
    int fd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "body store: create %s/%s: %s", s->dir, name, strerror(e));
        return body_store_errno(e);
    }
    struct body_store_seg *seg = body_store_seg_add(s, num, 0);
    if (seg == NULL) {
        close(fd);
        unlinkat(s->dirfd, name, 0);
        return HAMR_ENOMEM;
    }
    seg->fd = fd;
    s->active = seg;
    s->dir_gen++;
    return 0;
}

/* body_store_roll - close the active segment to writes and begin the next one. */
static int body_store_roll(struct body_store *s)
{
    struct body_store_seg *old = s->active;
    if (old->num == UINT32_MAX) {
        log_error("body store: segment numbers exhausted dir=%s", s->dir);
        return HAMR_EIO;
    }
    char err[256];
    int rv = body_store_seg_create(s, old->num + 1, err, sizeof(err));
    if (rv != 0) {
        log_error("%s", err);
        return rv;
    }
    s->roll_next = false;
    body_store_seg_close_fd(s, old); /* may already be synced */
    body_store_maybe_unlink(s, old); /* may hold nothing live */
    return 0;
}

/* ---- startup index ---------------------------------------------------- */

/* body_store_index_slot - id's entry (len octets), or the empty slot it would take. */
static struct body_store_ent *body_store_index_slot(struct body_store_ent *tab,
                                                    size_t cap,
                                                    const char *id,
                                                    size_t len)
{
    size_t i = (size_t)hash_fnv1a64(id, len, 0) & (cap - 1);
    while (tab[i].id != NULL && (strlen(tab[i].id) != len || memcmp(tab[i].id, id, len) != 0))
        i = (i + 1) & (cap - 1);
    return &tab[i];
}

/* body_store_index_grow - double the table (linear probing, at most 3/4 full). */
static int body_store_index_grow(struct body_store *s)
{
    size_t cap = s->index_cap ? 2 * s->index_cap : 1024;
    struct body_store_ent *tab = calloc(cap, sizeof(*tab));
    if (tab == NULL)
        return HAMR_ENOMEM;
    for (size_t i = 0; i < s->index_cap; i++) {
        struct body_store_ent *e = &s->index[i];
        if (e->id != NULL)
            *body_store_index_slot(tab, cap, e->id, strlen(e->id)) = *e;
    }
    free(s->index);
    s->index = tab;
    s->index_cap = cap;
    return 0;
}

/* body_store_index_put - id's newest record is at loc (scan order is oldest first). */
static int body_store_index_put(struct body_store *s,
                                const char *id,
                                size_t id_len,
                                uint64_t loc,
                                uint64_t len,
                                const uint8_t sha[BODY_SHA256_LEN])
{
    if (4 * (s->index_len + 1) > 3 * s->index_cap) {
        int rv = body_store_index_grow(s);
        if (rv != 0)
            return rv;
    }
    struct body_store_ent *e = body_store_index_slot(s->index, s->index_cap, id, id_len);
    if (e->id == NULL) {
        e->id = strndup(id, id_len);
        if (e->id == NULL)
            return HAMR_ENOMEM;
        s->index_len++;
    }
    e->loc = loc;
    e->len = len;
    memcpy(e->sha, sha, BODY_SHA256_LEN);
    return 0;
}

/* body_store_index_free - drop the startup index. */
static void body_store_index_free(struct body_store *s)
{
    for (size_t i = 0; i < s->index_cap; i++)
        free(s->index[i].id);
    free(s->index);
    s->index = NULL;
    s->index_cap = s->index_len = 0;
}

/* ---- open: scan ------------------------------------------------------- */

/* body_store_num_cmp - qsort order of segment numbers. */
static int body_store_num_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * body_store_list - the numbers of the segment files in the directory,
 * sorted, into *nums (malloc'ed). 0, HAMR_EIO, HAMR_ENOMEM.
 */
static int body_store_list(struct body_store *s,
                           uint32_t **nums,
                           size_t *n,
                           char *err,
                           size_t errlen)
{
    DIR *d = opendir(s->dir);
    if (d == NULL) {
        snprintf(err, errlen, "body store: list %s: %s", s->dir, strerror(errno));
        return HAMR_EIO;
    }
    uint32_t *v = NULL;
    size_t len = 0, cap = 0;
    int rv = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint32_t num;
        if (!body_store_parse_name(de->d_name, &num))
            continue;
        if (len == cap) {
            cap = cap ? 2 * cap : 64;
            uint32_t *nv = realloc(v, cap * sizeof(*v));
            if (nv == NULL) {
                snprintf(err, errlen, "body store: out of memory listing %s", s->dir);
                rv = HAMR_ENOMEM;
                break;
            }
            v = nv;
        }
        v[len++] = num;
    }
    closedir(d);
    if (rv != 0) {
        free(v);
        return rv;
    }
    if (len > 1)
        qsort(v, len, sizeof(*v), body_store_num_cmp);
    *nums = v;
    *n = len;
    return 0;
}

/*
 * body_store_scan_seg - index the complete records of segment num, headers
 * and ids only; the scan stops at the first record that is torn or not a
 * record at all (the tail of a process that died while writing).
 */
static int body_store_scan_seg(struct body_store *s, uint32_t num, char *err, size_t errlen)
{
    char name[BODY_STORE_NAME_LEN + 1];
    body_store_seg_name(num, name);
    int fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "body store: open %s/%s: %s", s->dir, name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return HAMR_EIO;
    }
    uint64_t size = (uint64_t)st.st_size;
    int rv = body_store_seg_add(s, num, size) != NULL ? 0 : HAMR_ENOMEM;
    uint64_t off = 0;
    uint8_t hdr[BODY_STORE_HDR_LEN + BODY_STORE_ID_MAX];
    while (rv == 0 && off + BODY_STORE_HDR_LEN <= size && off <= UINT32_MAX) {
        ssize_t r = body_store_pread_full(fd, hdr, BODY_STORE_HDR_LEN, off);
        if (r < 0) {
            snprintf(err, errlen, "body store: read %s/%s: %s", s->dir, name, strerror((int)-r));
            rv = HAMR_EIO;
            break;
        }
        if (r < BODY_STORE_HDR_LEN || !body_store_hdr_valid(hdr))
            break;
        uint64_t len = body_store_le64_get(hdr + 8);
        size_t id_len = hdr[5];
        if (len > BODY_STORE_LEN_MAX || off + BODY_STORE_HDR_LEN + id_len + len > size)
            break; /* torn: the body was never all written */
        r = body_store_pread_full(fd, hdr + BODY_STORE_HDR_LEN, id_len, off + BODY_STORE_HDR_LEN);
        if (r != (ssize_t)id_len)
            break;
        rv = body_store_index_put(s, (const char *)hdr + BODY_STORE_HDR_LEN, id_len,
                                  BODY_LOC(num, off), len, hdr + 16);
        if (rv != 0)
            snprintf(err, errlen, "body store: out of memory indexing %s", s->dir);
        off += BODY_STORE_HDR_LEN + id_len + len;
    }
    close(fd);
    return rv;
}

/* body_store_open_dir - make dir (0700) if it is missing, durably, and open it. */
static int body_store_open_dir(struct body_store *s, char *err, size_t errlen)
{
    struct stat st;
    if (stat(s->dir, &st) != 0) {
        int rv = fs_mkdirs(s->dir, 0700, err, errlen);
        if (rv == 0)
            rv = fs_fsync_parent(s->dir, err, errlen);
        if (rv != 0)
            return rv;
    }
    s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        snprintf(err, errlen, "body store: open %s: %s", s->dir, strerror(errno));
        return HAMR_EIO;
    }
    return 0;
}

/* body_store_free - release everything (descriptors closed, nothing synced). */
static void body_store_free(struct body_store *s)
{
    for (size_t i = 0; i < s->nsegs; i++) {
        if (s->segs[i]->fd >= 0)
            close(s->segs[i]->fd);
        free(s->segs[i]->recs);
        free(s->segs[i]);
    }
    free(s->segs);
    body_store_index_free(s);
    free(s->sync.fds);
    free(s->now_fds);
    if (s->dirfd >= 0)
        close(s->dirfd);
    free(s->dir);
    free(s);
}

/* body_store_open - make or open the directory, scan it, begin a new active segment. */
int body_store_open(uv_loop_t *loop,
                    const char *dir,
                    uint64_t segment_size,
                    struct body_store **out,
                    char *err,
                    size_t errlen)
{
    if (dir == NULL || dir[0] == '\0') {
        snprintf(err, errlen, "body store: no directory");
        return HAMR_EINVAL;
    }
    struct body_store *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->dir = strdup(dir)) == NULL) {
        free(s);
        snprintf(err, errlen, "body store: out of memory");
        return HAMR_ENOMEM;
    }
    s->loop = loop;
    s->dirfd = -1;
    s->segment_size = segment_size == 0                       ? BODY_STORE_SEGMENT_DEFAULT
                      : segment_size > BODY_STORE_SEGMENT_MAX ? BODY_STORE_SEGMENT_MAX
                                                              : segment_size;
    s->sync.s = s;
    s->sync.req.data = s;
    uint32_t *nums = NULL;
    size_t n = 0;
    int rv = body_store_open_dir(s, err, errlen);
    if (rv == 0)
        rv = body_store_list(s, &nums, &n, err, errlen);
    for (size_t i = 0; rv == 0 && i < n; i++)
        rv = body_store_scan_seg(s, nums[i], err, errlen);
    free(nums);
    if (rv == 0 && n > 0 && s->segs[s->nsegs - 1]->num == UINT32_MAX) {
        snprintf(err, errlen, "body store: segment numbers exhausted in %s", dir);
        rv = HAMR_EINVAL;
    }
    if (rv == 0)
        rv = body_store_seg_create(s, n > 0 ? s->segs[s->nsegs - 1]->num + 1 : 0, err, errlen);
    if (rv != 0 && rv != HAMR_ENOMEM && rv != HAMR_EINVAL)
        rv = HAMR_EIO; /* open's codes (a full disk, a denied mkdir): the sentence says which */
    if (rv != 0) {
        body_store_free(s);
        return rv;
    }
    *out = s;
    return 0;
}

/* ---- put -------------------------------------------------------------- */

/*
 * body_store_write - write the record's parts at the end of the active
 * segment, retrying short writes and EINTR. On failure the file is cut
 * back to where the record began; if that fails too, the next put starts a
 * new segment.
 */
static int body_store_write(struct body_store *s, struct iovec *iov, int iovcnt)
{
    struct body_store_seg *seg = s->active;
    uint64_t start = seg->size, len = 0;
    for (int i = 0; i < iovcnt; i++)
        len += iov[i].iov_len;
    int rv = fs_writev_full(seg->fd, iov, iovcnt, (off_t)start);
    if (rv != 0) {
        int e = -rv; /* ENOSPC also when a write took nothing: no room */
        log_error("body store: write seg=%" PRIu32 " off=%" PRIu64 " len=%" PRIu64 ": %s", seg->num,
                  start, len, strerror(e));
        if (ftruncate(seg->fd, (off_t)start) != 0)
            s->roll_next = true;
        return body_store_errno(e);
    }
    seg->size = start + len;
    s->st.disk_bytes += len;
    return 0;
}

/* body_store_put - append one record to the active segment (rolling first if it is full). */
int body_store_put(struct body_store *s,
                   const char *id,
                   const uint8_t *body,
                   size_t len,
                   const uint8_t sha[BODY_SHA256_LEN],
                   uint64_t *loc)
{
    size_t id_len = id != NULL ? strlen(id) : 0;
    if (id_len == 0 || id_len > BODY_STORE_ID_MAX || len > BODY_STORE_LEN_MAX)
        return HAMR_EINVAL;
    if (s->closing)
        return HAMR_ESHUTDOWN;
    if (s->failed != 0)
        return s->failed;
    uint64_t rec_len = BODY_STORE_HDR_LEN + id_len + len;
    if (s->roll_next || (s->active->size > 0 && s->active->size + rec_len > s->segment_size)) {
        int rv = body_store_roll(s);
        if (rv != 0)
            return rv;
    }
    struct body_store_seg *seg = s->active;
    uint32_t off = (uint32_t)seg->size;   /* below segment_size, or 0 */
    int rv = body_store_seg_reserve(seg); /* first: a failure must leave no record behind */
    if (rv != 0)
        return rv;
    uint8_t hdr[BODY_STORE_HDR_LEN];
    body_store_hdr_pack(hdr, id_len, len, sha);
    struct iovec iov[3] = {
        {.iov_base = hdr, .iov_len = sizeof(hdr)},
        {.iov_base = (void *)id, .iov_len = id_len},
        {.iov_base = (void *)body, .iov_len = len},
    };
    rv = body_store_write(s, iov, len > 0 ? 3 : 2);
    if (rv != 0)
        return rv;
    rv = body_store_seg_live_add(s, seg, off, len); /* cannot fail: reserved */
    HAMR_ASSERT(rv == 0);
    seg->last_seq = ++s->written_seq;
    s->st.puts++;
    *loc = BODY_LOC(seg->num, off);
    body_store_sync_start(s);
    return 0;
}

/* ---- sync ------------------------------------------------------------- */

/* body_store_sync_work - in the pool: fdatasync each descriptor, then the directory. */
static void body_store_sync_work(uv_work_t *req)
{
    struct body_store_sync *y = hamr_container_of(req, struct body_store_sync, req);
    uint64_t t0 = body_store_now_us();
    y->status = 0;
    for (size_t i = 0; i < y->nfds && y->status == 0; i++)
        if (fdatasync(y->fds[i]) != 0)
            y->status = HAMR_EIO;
    if (y->status == 0 && y->dirfd >= 0 && fsync(y->dirfd) != 0)
        y->status = HAMR_EIO;
    y->us = body_store_now_us() - t0;
}

/* body_store_sync_fail - a sync failed: the store refuses every put and sync from now on. */
static void body_store_sync_fail(struct body_store *s, const char *how)
{
    if (s->failed == 0)
        log_error("body store: sync failed dir=%s how=%s: later puts refused", s->dir, how);
    s->failed = HAMR_EIO;
}

/* body_store_synced_to - a sync covering target_seq and dir_gen went well. */
static void body_store_synced_to(struct body_store *s,
                                 uint64_t target_seq,
                                 uint64_t dir_gen,
                                 uint64_t us)
{
    if (target_seq > s->synced_seq)
        s->synced_seq = target_seq;
    if (dir_gen > s->dir_synced_gen)
        s->dir_synced_gen = dir_gen;
    s->st.syncs++;
    s->st.last_sync_us = us;
}

/* body_store_sync_after - on the loop: count the sync, close what it finished, start the next. */
static void body_store_sync_after(uv_work_t *req, int status)
{
    struct body_store_sync *y = hamr_container_of(req, struct body_store_sync, req);
    struct body_store *s = y->s;
    s->sync_running = false;
    for (size_t i = 0; i < s->nsegs; i++)
        s->segs[i]->sync_busy = false;
    if (status != 0 || y->status != 0)
        body_store_sync_fail(s, "fdatasync in the pool");
    else
        body_store_synced_to(s, y->target_seq, y->dir_gen, y->us);
    body_store_close_synced(s);
    if (!s->closing && s->failed == 0 && s->written_seq > s->synced_seq)
        body_store_sync_start(s);
    body_store_work_done(s);
}

/*
 * body_store_sync_fill - the descriptors of every segment written since
 * the last sync into y->fds, marked busy when a worker will hold them.
 */
static void body_store_sync_fill(struct body_store *s, struct body_store_sync *y, bool busy)
{
    y->nfds = 0;
    for (size_t i = 0; i < s->nsegs; i++) {
        struct body_store_seg *seg = s->segs[i];
        if (seg->fd < 0 || seg->last_seq <= s->synced_seq)
            continue;
        HAMR_ASSERT(y->nfds < y->cap);
        y->fds[y->nfds++] = seg->fd;
        seg->sync_busy = seg->sync_busy || busy;
    }
    y->dirfd = s->dir_gen > s->dir_synced_gen ? s->dirfd : -1;
    y->target_seq = s->written_seq;
    y->dir_gen = s->dir_gen;
}

/* body_store_sync_reserve - room in the pool's list for every open descriptor (no sync running). */
static int body_store_sync_reserve(struct body_store *s)
{
    HAMR_ASSERT(!s->sync_running);
    if (s->sync.cap >= s->fds_cap)
        return 0;
    int *fds = realloc(s->sync.fds, s->fds_cap * sizeof(*fds));
    if (fds == NULL)
        return HAMR_ENOMEM;
    s->sync.fds = fds;
    s->sync.cap = s->fds_cap;
    return 0;
}

/*
 * body_store_sync_start - one sync in the pool unless one runs already (its
 * after-work callback starts the next if more was put meanwhile). Without
 * memory for its list it starts none: the next put tries again, and
 * sync_now needs no allocation.
 */
static void body_store_sync_start(struct body_store *s)
{
    if (s->sync_running || s->closing || s->failed != 0 || body_store_sync_reserve(s) != 0)
        return;
    body_store_sync_fill(s, &s->sync, true);
    s->sync_running = true;
    s->inflight++;
    HAMR_ASSERT(uv_queue_work(s->loop, &s->sync.req, body_store_sync_work, body_store_sync_after) ==
                0);
    /* Asynchronous processing: body_store_sync_after runs on the loop. */
}

/* body_store_sync_now - sync on the loop everything written so far. */
int body_store_sync_now(struct body_store *s)
{
    if (s->failed != 0)
        return s->failed;
    if (s->written_seq == s->synced_seq && s->dir_gen == s->dir_synced_gen)
        return 0;
    /*
     * A worker may be syncing some of the same descriptors: two fdatasync
     * calls on one file are fine, and none is closed until that worker's
     * after-work callback.
     */
    struct body_store_sync y = {.fds = s->now_fds, .cap = s->fds_cap};
    body_store_sync_fill(s, &y, false);
    body_store_sync_work(&y.req);
    if (y.status != 0) {
        body_store_sync_fail(s, "sync_now");
        return y.status;
    }
    body_store_synced_to(s, y.target_seq, y.dir_gen, y.us);
    body_store_close_synced(s);
    return 0;
}

/* body_store_synced - every record written is synced. */
bool body_store_synced(const struct body_store *s)
{
    return s->written_seq == s->synced_seq;
}

/* ---- claims, release, unlink ------------------------------------------ */

/* body_store_claim - count a restored message's record live, from the startup index. */
int body_store_claim(struct body_store *s,
                     const char *id,
                     size_t len,
                     const uint8_t sha[BODY_SHA256_LEN],
                     uint64_t *loc)
{
    if (s->index == NULL || id == NULL)
        return HAMR_ENOTFOUND; /* after claims_done, or nothing was scanned */
    struct body_store_ent *e = body_store_index_slot(s->index, s->index_cap, id, strlen(id));
    if (e->id == NULL || e->len != len || memcmp(e->sha, sha, BODY_SHA256_LEN) != 0)
        return HAMR_ENOTFOUND;
    if (!e->claimed) { /* a second claim of one record counts it once */
        struct body_store_seg *seg = body_store_seg_find(s, BODY_LOC_SEG(e->loc));
        HAMR_ASSERT(seg != NULL);
        int rv = body_store_seg_live_add(s, seg, BODY_LOC_OFF(e->loc), len);
        if (rv != 0)
            return rv;
        e->claimed = true;
    }
    *loc = e->loc;
    return 0;
}

/* body_store_claims_done - end of startup: drop the index, remove segments with nothing live. */
void body_store_claims_done(struct body_store *s)
{
    if (s->claims_done)
        return;
    body_store_index_free(s);
    s->claims_done = true;
    /* from the oldest; an unlink never moves segments before its callback */
    for (size_t i = 0; i < s->nsegs; i++)
        body_store_maybe_unlink(s, s->segs[i]);
}

/* body_store_unlink_after - on the loop: the file is gone (or could not go). */
static void body_store_unlink_after(uv_fs_t *req)
{
    struct body_store_unlink *u = hamr_container_of(req, struct body_store_unlink, req);
    struct body_store *s = u->s;
    struct body_store_seg *seg = body_store_seg_find(s, u->num);
    HAMR_ASSERT(seg != NULL);
    if (req->result < 0 && req->result != UV_ENOENT) {
        /* unlinking stays set: the file is left for the next open to find empty */
        log_warn("body store: unlink seg=%" PRIu32 " dir=%s: %s", u->num, s->dir,
                 uv_strerror((int)req->result));
    } else {
        body_store_seg_drop(s, seg);
        s->st.removed++;
    }
    uv_fs_req_cleanup(req);
    free(u);
    body_store_work_done(s);
}

/*
 * body_store_maybe_unlink - unlink seg in the pool if it is closed, holds
 * nothing live, and the startup index no longer needs it (claims done).
 */
static void body_store_maybe_unlink(struct body_store *s, struct body_store_seg *seg)
{
    if (!s->claims_done || s->closing || seg == s->active || seg->fd >= 0 || seg->live > 0 ||
        seg->unlinking)
        return;
    char path[PATH_MAX], name[BODY_STORE_NAME_LEN + 1];
    body_store_seg_name(seg->num, name);
    struct body_store_unlink *u = malloc(sizeof(*u));
    if (u == NULL || snprintf(path, sizeof(path), "%s/%s", s->dir, name) >= (int)sizeof(path)) {
        free(u); /* left on disk; the next open finds it empty and removes it */
        return;
    }
    u->s = s;
    u->num = seg->num;
    seg->unlinking = true;
    if (uv_fs_unlink(s->loop, &u->req, path, body_store_unlink_after) != 0) {
        free(u);
        return;
    }
    s->inflight++;
    /* Asynchronous processing: body_store_unlink_after runs on the loop. */
}

/* body_store_release - one live record fewer; its segment goes once it holds none. */
void body_store_release(struct body_store *s, uint64_t loc)
{
    struct body_store_seg *seg =
        loc == BODY_LOC_NONE ? NULL : body_store_seg_find(s, BODY_LOC_SEG(loc));
    struct body_store_rec *r =
        seg != NULL ? body_store_seg_live_find(seg, BODY_LOC_OFF(loc)) : NULL;
    if (r == NULL) {
        /* Twice, or never put: counting it would unlink a segment others still need. */
        log_warn("body store: release of no live record loc=%" PRIx64, loc);
        return;
    }
    r->dead = true;
    seg->ndead++;
    seg->live--;
    s->st.live--;
    s->st.live_bytes -= r->len;
    body_store_seg_compact(seg);
    body_store_maybe_unlink(s, seg);
}

/* ---- reads ------------------------------------------------------------ */

/*
 * body_store_read_work - in the pool: open the segment by name, check the
 * record's header against what the caller expects (id, length, SHA-256),
 * read the range into buf and, with md, feed it the bytes and at the
 * body's end compare its digest. Every read opens the segment anew: a
 * stream's chunks may be far apart in time, and a descriptor held between
 * them would be one more thing for a worker to close.
 */
static void body_store_read_work(uv_work_t *req)
{
    struct body_store_read *r = hamr_container_of(req, struct body_store_read, req);
    const struct body_store_ref *ref = &r->ref;
    char name[BODY_STORE_NAME_LEN + 1];
    body_store_seg_name(BODY_LOC_SEG(ref->loc), name);
    int fd = openat(r->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        r->status = errno == ENOENT ? HAMR_ENOTFOUND : HAMR_EIO;
        return;
    }
    uint64_t len;
    uint8_t sha[BODY_SHA256_LEN];
    uint32_t off = BODY_LOC_OFF(ref->loc);
    int rv = body_store_rec_read_hdr(fd, off, ref->id, &len, sha);
    if (rv == 0 && (len != ref->len || memcmp(sha, ref->sha, BODY_SHA256_LEN) != 0))
        rv = HAMR_ECORRUPT;
    if (rv == 0) {
        uint64_t at = off + BODY_STORE_HDR_LEN + strlen(ref->id) + r->from;
        ssize_t n = body_store_pread_full(fd, r->buf, r->n, at);
        if (n < 0)
            rv = HAMR_EIO;
        else if ((size_t)n < r->n)
            rv = HAMR_ECORRUPT; /* the file ends inside the body */
    }
    close(fd);
    if (rv == 0 && r->md != NULL) {
        unsigned int mdlen = 0;
        uint8_t md[EVP_MAX_MD_SIZE];
        /* libcrypto fails only for want of memory */
        if (r->n > 0 && EVP_DigestUpdate(r->md, r->buf, r->n) != 1)
            rv = HAMR_ENOMEM;
        else if (r->from + r->n < ref->len)
            ; /* not the end yet: the digest is checked with the last chunk */
        else if (EVP_DigestFinal_ex(r->md, md, &mdlen) != 1 || mdlen != BODY_SHA256_LEN)
            rv = HAMR_ENOMEM;
        else if (CRYPTO_memcmp(md, ref->sha, BODY_SHA256_LEN) != 0)
            rv = HAMR_ECORRUPT;
    }
    r->status = rv;
}

static void body_store_read_after(uv_work_t *req, int status);

/*
 * body_store_ref_set - *ref from the caller's arguments (copied): 0, or
 * HAMR_EINVAL for BODY_LOC_NONE or an id that is empty or over 255 bytes.
 */
static int body_store_ref_set(struct body_store_ref *ref,
                              uint64_t loc,
                              const char *id,
                              size_t len,
                              const uint8_t sha[BODY_SHA256_LEN])
{
    size_t id_len = id != NULL ? strlen(id) : 0;
    if (loc == BODY_LOC_NONE || id_len == 0 || id_len > BODY_STORE_ID_MAX)
        return HAMR_EINVAL;
    ref->loc = loc;
    memcpy(ref->id, id, id_len + 1);
    ref->len = len;
    memcpy(ref->sha, sha, BODY_SHA256_LEN);
    return 0;
}

/* body_store_md_new - a SHA-256 context, begun; NULL for want of memory. */
static EVP_MD_CTX *body_store_md_new(void)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return NULL;
    }
    return md;
}

/*
 * body_store_read_new - a request for the record ref names, not yet
 * queued; NULL with HAMR_ESHUTDOWN or HAMR_ENOMEM in *rv.
 */
static struct body_store_read *body_store_read_new(struct body_store *s,
                                                   const struct body_store_ref *ref,
                                                   int *rv)
{
    *rv = HAMR_ESHUTDOWN;
    if (s->closing)
        return NULL;
    *rv = HAMR_ENOMEM;
    struct body_store_read *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->s = s;
    r->dirfd = s->dirfd;
    r->ref = *ref;
    *rv = 0;
    return r;
}

/* body_store_read_queue - hand r to the pool; body_store_read_after reports it. */
static void body_store_read_queue(struct body_store *s, struct body_store_read *r)
{
    HAMR_ASSERT(uv_queue_work(s->loop, &r->req, body_store_read_work, body_store_read_after) == 0);
    r->next = s->reads;
    if (s->reads != NULL)
        s->reads->prev = r;
    s->reads = r;
    s->inflight++;
    /* Asynchronous processing: body_store_read_after runs on the loop. */
}

static void body_store_stream_after(struct body_store_read *r);

/* body_store_read_after - on the loop: hand the outcome to the caller, exactly once. */
static void body_store_read_after(uv_work_t *req, int status)
{
    struct body_store_read *r = hamr_container_of(req, struct body_store_read, req);
    struct body_store *s = r->s;
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        s->reads = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    if (status == UV_ECANCELED)
        r->status = HAMR_ESHUTDOWN;
    else if (r->status != 0)
        s->st.read_errors++;
    if (r->stream != NULL) {
        body_store_stream_after(r);
    } else if (r->range_cb != NULL) {
        r->range_cb(r->arg, r->status == 0 ? (ssize_t)r->n : r->status);
    } else {
        EVP_MD_CTX_free(r->md);
        if (r->status != 0) {
            free(r->buf);
            r->buf = NULL;
        }
        r->cb(r->arg, r->status, r->buf, r->status == 0 ? r->ref.len : 0);
    }
    free(r);
    body_store_work_done(s);
}

/* body_store_read - the whole body, read and checked in the pool. */
int body_store_read(struct body_store *s,
                    uint64_t loc,
                    const char *id,
                    size_t len,
                    const uint8_t sha[BODY_SHA256_LEN],
                    body_store_read_cb cb,
                    void *arg)
{
    struct body_store_ref ref;
    int rv = cb == NULL ? HAMR_EINVAL : body_store_ref_set(&ref, loc, id, len, sha);
    struct body_store_read *r = rv == 0 ? body_store_read_new(s, &ref, &rv) : NULL;
    if (r == NULL)
        return rv;
    r->n = len;
    r->buf = malloc(len > 0 ? len : 1);
    r->md = body_store_md_new();
    if (r->buf == NULL || r->md == NULL) {
        free(r->buf);
        EVP_MD_CTX_free(r->md);
        free(r);
        return HAMR_ENOMEM;
    }
    r->cb = cb;
    r->arg = arg;
    body_store_read_queue(s, r);
    return 0;
}

/* body_store_read_range - n bytes of the body from off into buf, in the pool. */
int body_store_read_range(struct body_store *s,
                          uint64_t loc,
                          const char *id,
                          size_t len,
                          const uint8_t sha[BODY_SHA256_LEN],
                          uint64_t off,
                          uint8_t *buf,
                          size_t n,
                          body_store_range_cb cb,
                          void *arg)
{
    struct body_store_ref ref;
    int rv = body_store_ref_set(&ref, loc, id, len, sha);
    if (cb == NULL || off > len || n > len - off || (n > 0 && buf == NULL))
        rv = HAMR_EINVAL; /* past the end of the body */
    struct body_store_read *r = rv == 0 ? body_store_read_new(s, &ref, &rv) : NULL;
    if (r == NULL)
        return rv;
    r->from = off;
    r->n = n;
    r->buf = buf;
    r->range_cb = cb;
    r->arg = arg;
    body_store_read_queue(s, r);
    return 0;
}

/* ---- streams ---------------------------------------------------------- */

/* body_store_stream_new - a reader of one record's body, chunk after chunk. */
int body_store_stream_new(struct body_store *s,
                          uint64_t loc,
                          const char *id,
                          size_t len,
                          const uint8_t sha[BODY_SHA256_LEN],
                          size_t chunk,
                          struct body_store_stream **out)
{
    struct body_store_ref ref;
    int rv = chunk == 0 ? HAMR_EINVAL : body_store_ref_set(&ref, loc, id, len, sha);
    if (rv != 0)
        return rv;
    struct body_store_stream *st = calloc(1, sizeof(*st));
    if (st == NULL || (st->md = body_store_md_new()) == NULL) {
        free(st);
        return HAMR_ENOMEM;
    }
    st->s = s;
    st->ref = ref;
    st->chunk = chunk;
    *out = st;
    return 0;
}

/* body_store_stream_release - the stream's memory. */
static void body_store_stream_release(struct body_store_stream *st)
{
    EVP_MD_CTX_free(st->md);
    free(st->buf);
    free(st);
}

/* body_store_stream_next - the next chunk, read in the pool. */
int body_store_stream_next(struct body_store_stream *st, body_store_stream_cb cb, void *arg)
{
    if (cb == NULL || st->busy || st->ended)
        return HAMR_EINVAL;
    size_t left = st->ref.len - (size_t)st->pos;
    size_t n = left < st->chunk ? left : st->chunk;
    /* Allocated here, not at new: a delivery waiting for a connection holds no chunk. */
    if (st->buf == NULL && (st->buf = malloc(st->chunk)) == NULL)
        return HAMR_ENOMEM;
    int rv;
    struct body_store_read *r = body_store_read_new(st->s, &st->ref, &rv);
    if (r == NULL)
        return rv;
    r->from = st->pos;
    r->n = n;
    r->buf = st->buf;
    r->md = st->md;
    r->stream = st;
    st->busy = true;
    st->cb = cb;
    st->arg = arg;
    body_store_read_queue(st->s, r);
    return 0;
}

/*
 * body_store_stream_after - on the loop: report a stream's chunk, unless
 * the stream was freed meanwhile (then free it now, and say nothing).
 */
static void body_store_stream_after(struct body_store_read *r)
{
    struct body_store_stream *st = r->stream;
    st->busy = false;
    if (st->freed) {
        body_store_stream_release(st);
        return;
    }
    if (r->status == 0)
        st->pos += r->n;
    bool last = r->status == 0 && st->pos == st->ref.len;
    st->ended = r->status != 0 || last;
    st->cb(st->arg, r->status, r->status == 0 ? st->buf : NULL, r->status == 0 ? r->n : 0, last);
}

/* body_store_stream_free - drop the stream; a read in flight is not reported. */
struct body_store_stream *body_store_stream_free(struct body_store_stream *st)
{
    if (st == NULL)
        return NULL;
    if (st->busy)
        st->freed = true; /* body_store_stream_after frees it */
    else
        body_store_stream_release(st);
    return NULL;
}

/* body_store_pread - part of a body, on the loop (the segment's own descriptor if open). */
ssize_t body_store_pread(struct body_store *s, uint64_t loc, uint64_t off, uint8_t *buf, size_t n)
{
    struct body_store_seg *seg =
        loc == BODY_LOC_NONE ? NULL : body_store_seg_find(s, BODY_LOC_SEG(loc));
    if (seg == NULL)
        return HAMR_ENOTFOUND;
    int fd = seg->fd;
    if (fd < 0) {
        char name[BODY_STORE_NAME_LEN + 1];
        body_store_seg_name(seg->num, name);
        fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return errno == ENOENT ? HAMR_ENOTFOUND : HAMR_EIO;
    }
    uint8_t hdr[BODY_STORE_HDR_LEN];
    ssize_t r = body_store_pread_full(fd, hdr, sizeof(hdr), BODY_LOC_OFF(loc));
    if (r == 0)
        r = HAMR_ENOTFOUND;
    else if (r > 0 && (r < BODY_STORE_HDR_LEN || !body_store_hdr_valid(hdr)))
        r = HAMR_ECORRUPT;
    else if (r < 0)
        r = HAMR_EIO;
    else {
        uint64_t len = body_store_le64_get(hdr + 8);
        size_t want = off >= len ? 0 : len - off < n ? (size_t)(len - off) : n;
        r = body_store_pread_full(fd, buf, want,
                                  BODY_LOC_OFF(loc) + BODY_STORE_HDR_LEN + hdr[5] + off);
        if (r < 0)
            r = HAMR_EIO;
    }
    if (fd != seg->fd)
        close(fd);
    return r;
}

/* body_store_get_stats - the counters, and unsynced from the write sequence. */
void body_store_get_stats(const struct body_store *s, struct body_store_stats *st)
{
    *st = s->st;
    st->unsynced = s->written_seq - s->synced_seq;
}

/* ---- close ------------------------------------------------------------ */

/* body_store_final_work - in the pool: the last sync, of every descriptor still open. */
static void body_store_final_work(uv_work_t *req)
{
    struct body_store *s = req->data;
    body_store_sync_work(&s->sync.req);
}

/* body_store_final_after - on the loop: the store is done; free it and tell the caller. */
static void body_store_final_after(uv_work_t *req, int status)
{
    struct body_store *s = req->data;
    if (status != 0 || s->sync.status != 0)
        log_error("body store: final sync failed dir=%s", s->dir);
    void (*cb)(void *) = s->close_cb;
    void *arg = s->close_arg;
    body_store_free(s);
    if (cb != NULL)
        cb(arg);
}

/*
 * body_store_work_done - one piece of work in the pool finished; when the
 * store is closing and it was the last, the final sync goes to the pool
 * (so close's callback never runs inside body_store_close).
 */
static void body_store_work_done(struct body_store *s)
{
    HAMR_ASSERT(s->inflight > 0);
    s->inflight--;
    if (!s->closing || s->inflight > 0 || s->final_started)
        return;
    s->final_started = true;
    if (s->failed == 0 && body_store_sync_reserve(s) == 0) {
        body_store_sync_fill(s, &s->sync, false);
    } else {
        /* failed: nothing a sync could still prove; no memory: said in the log */
        s->sync.nfds = 0;
        s->sync.dirfd = -1;
        s->sync.target_seq = s->synced_seq;
        if (s->failed == 0)
            log_error("body store: no memory for the final sync dir=%s", s->dir);
    }
    s->final_req.data = s;
    HAMR_ASSERT(
        uv_queue_work(s->loop, &s->final_req, body_store_final_work, body_store_final_after) == 0);
    /* Asynchronous processing: body_store_final_after frees the store. */
}

/* body_store_close - cancel reads not begun, then finish in body_store_work_done. */
void body_store_close(struct body_store *s, void (*cb)(void *arg), void *arg)
{
    if (s->closing)
        return;
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    /* Reads not begun are cancelled (their callbacks get HAMR_ESHUTDOWN); others finish. */
    for (struct body_store_read *r = s->reads; r != NULL; r = r->next)
        uv_cancel((uv_req_t *)&r->req);
    s->inflight++; /* the final step is this count dropping to zero */
    body_store_work_done(s);
}
