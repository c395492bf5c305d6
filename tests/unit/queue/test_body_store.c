/*
 * test_body_store.c - the on-disk body store (queue/body_store.c) on a real
 * directory under $TMPDIR and a fresh libuv loop per test: round trips,
 * corruption, segment rolls, reopen and claims, torn tails, removal of
 * segments, syncs, pread, ranged and streamed (chunked) reads, and close
 * with reads in flight. Waits are bounded
 * loop runs (tests/lib/testlib_loop.h), never sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

#include "util/err.h"
#include "queue/body_store.h"
#include "tests/lib/testlib_loop.h"

#define MIB (1024u * 1024)

struct fixture {
    uv_loop_t loop;
    struct testlib_loop w;
    char root[256]; /* mkdtemp'd, removed in teardown */
    char dir[300];  /* root/bodies: made by the store */
    struct body_store *s;
    bool closed;
    int close_calls;
};

/* A read's outcome, as its callback saw it. */
struct got {
    int calls;
    int status;
    uint8_t *body;
    size_t len;
};

static void sha_of(const uint8_t *p, size_t n, uint8_t out[BODY_SHA256_LEN])
{
    unsigned int len = 0;
    static const uint8_t empty[1];
    assert_int_equal(EVP_Digest(n ? p : empty, n, out, &len, EVP_sha256(), NULL), 1);
}

/* fill - n octets that differ with seed and position. */
static uint8_t *fill(size_t n, unsigned seed)
{
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + seed * 7 + (i >> 8));
    return p;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    testlib_loop_start(&f->w, &f->loop, 20000, 100000);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->root, sizeof(f->root), "%s/store-test-XXXXXX", tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->dir, sizeof(f->dir), "%s/bodies", f->root);
    *state = f;
    return 0;
}

static void close_cb(void *arg)
{
    struct fixture *f = arg;
    f->close_calls++;
    f->closed = true;
}

/* store_close - close f's store and wait for its callback (once, never inside close). */
static void store_close(struct fixture *f)
{
    f->closed = false;
    int calls = f->close_calls;
    body_store_close(f->s, close_cb, f);
    assert_int_equal(f->close_calls, calls);
    TESTLIB_LOOP_UNTIL(&f->w, f->closed);
    assert_int_equal(f->close_calls, calls + 1);
    f->s = NULL;
}

static void store_open(struct fixture *f, uint64_t segment_size)
{
    char err[256] = "";
    int rv = body_store_open(&f->loop, f->dir, segment_size, &f->s, err, sizeof(err));
    if (rv != 0)
        fail_msg("open: %s", err);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->s != NULL)
        store_close(f);
    testlib_loop_close(&f->w);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    nftw(f->root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void read_cb(void *arg, int status, uint8_t *body, size_t len)
{
    struct got *g = arg;
    g->calls++;
    g->status = status;
    g->body = body;
    g->len = len;
}

/* read_wait - read loc and wait for the callback; the result in *g (body to free). */
static void read_wait(struct fixture *f,
                      uint64_t loc,
                      const char *id,
                      size_t len,
                      const uint8_t sha[BODY_SHA256_LEN],
                      struct got *g)
{
    memset(g, 0, sizeof(*g));
    assert_int_equal(body_store_read(f->s, loc, id, len, sha, read_cb, g), 0);
    assert_int_equal(g->calls, 0); /* never inside the call */
    TESTLIB_LOOP_UNTIL(&f->w, g->calls > 0);
    assert_int_equal(g->calls, 1);
}

/* put - a body of n octets (seed) under id; its hash in sha, its location returned. */
static uint64_t put(struct fixture *f, const char *id, size_t n, unsigned seed, uint8_t *sha)
{
    uint8_t *body = fill(n, seed);
    uint8_t h[BODY_SHA256_LEN];
    sha_of(body, n, sha != NULL ? sha : h);
    uint64_t loc = BODY_LOC_NONE;
    assert_int_equal(body_store_put(f->s, id, body, n, sha != NULL ? sha : h, &loc), 0);
    assert_true(loc != BODY_LOC_NONE);
    free(body);
    return loc;
}

/* id_of - the id of a test's i-th body: prefix, then i. */
static const char *id_of(char buf[32], const char *prefix, int i)
{
    snprintf(buf, 32, "%s%d", prefix, i);
    return buf;
}

/*
 * put_many - n bodies, the i-th under id_of(prefix, i), of size + i * step
 * octets made with seed i; their locations into locs (and hashes into shas
 * unless NULL).
 */
static void put_many(struct fixture *f,
                     const char *prefix,
                     int n,
                     size_t size,
                     size_t step,
                     uint64_t *locs,
                     uint8_t (*shas)[BODY_SHA256_LEN])
{
    char id[32];
    for (int i = 0; i < n; i++)
        locs[i] = put(f, id_of(id, prefix, i), size + (size_t)i * step, (unsigned)i,
                      shas != NULL ? shas[i] : NULL);
}

/* expect_body - loc reads back as id's body of n octets made with seed. */
static void expect_body(struct fixture *f, uint64_t loc, const char *id, size_t n, unsigned seed)
{
    uint8_t *want = fill(n, seed);
    uint8_t sha[BODY_SHA256_LEN];
    sha_of(want, n, sha);
    struct got g;
    read_wait(f, loc, id, n, sha, &g);
    assert_int_equal(g.status, 0);
    assert_non_null(g.body);
    assert_int_equal(g.len, n);
    if (n > 0)
        assert_memory_equal(g.body, want, n);
    free(g.body);
    free(want);
}

/* seg_path - the file of segment num. */
static void seg_path(struct fixture *f, uint32_t num, char path[400])
{
    snprintf(path, 400, "%s/%016x.seg", f->dir, num);
}

static bool seg_exists(struct fixture *f, uint32_t num)
{
    char path[400];
    seg_path(f, num, path);
    return access(path, F_OK) == 0;
}

static off_t seg_size(struct fixture *f, uint32_t num)
{
    char path[400];
    struct stat st;
    seg_path(f, num, path);
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static struct body_store_stats stats(struct fixture *f)
{
    struct body_store_stats st;
    body_store_get_stats(f->s, &st);
    return st;
}

/* Bodies of 0 octets to 1 MiB come back as they went in; the directory is 0700. */
static void test_round_trip(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    struct stat st;
    assert_int_equal(stat(f->dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    static const size_t sizes[] = {0, 1, 4096, 65537, MIB};
    uint64_t locs[5];
    uint64_t total = 0;
    char id[32];
    for (int i = 0; i < 5; i++) {
        locs[i] = put(f, id_of(id, "msg-", i), sizes[i], (unsigned)i, NULL);
        total += sizes[i];
    }
    assert_int_equal(BODY_LOC_OFF(locs[0]), 0);
    assert_int_equal(BODY_LOC_OFF(locs[1]), 48 + 5); /* header, "msg-0", no body */
    struct body_store_stats s0 = stats(f);
    assert_int_equal(s0.puts, 5);
    assert_int_equal(s0.live, 5);
    assert_int_equal(s0.live_bytes, total);
    assert_int_equal(s0.segments, 1);
    assert_int_equal(s0.disk_bytes, total + 5 * (48 + 5));
    assert_int_equal(seg_size(f, BODY_LOC_SEG(locs[0])), s0.disk_bytes);
    for (int i = 0; i < 5; i++)
        expect_body(f, locs[i], id_of(id, "msg-", i), sizes[i], (unsigned)i);
    assert_int_equal(stats(f).read_errors, 0);
    /* what put refuses */
    uint8_t sha[BODY_SHA256_LEN] = {0};
    uint64_t loc;
    char longid[300];
    memset(longid, 'x', 256);
    longid[256] = '\0';
    assert_int_equal(body_store_put(f->s, "", (const uint8_t *)"", 0, sha, &loc), HAMR_EINVAL);
    assert_int_equal(body_store_put(f->s, longid, (const uint8_t *)"", 0, sha, &loc), HAMR_EINVAL);
    longid[255] = '\0'; /* 255 octets is the most */
    assert_int_equal(body_store_put(f->s, longid, (const uint8_t *)"", 0, sha, &loc), 0);
}

/* A read that expects another hash, length or id gets HAMR_ECORRUPT; no segment, HAMR_ENOTFOUND. */
static void test_mismatch(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    uint8_t sha[BODY_SHA256_LEN];
    uint64_t loc = put(f, "m1", 1000, 3, sha);
    uint8_t bad[BODY_SHA256_LEN];
    memcpy(bad, sha, sizeof(bad));
    bad[31] ^= 1;
    struct got g;
    read_wait(f, loc, "m1", 1000, bad, &g);
    assert_int_equal(g.status, HAMR_ECORRUPT);
    assert_null(g.body);
    read_wait(f, loc, "m1", 999, sha, &g);
    assert_int_equal(g.status, HAMR_ECORRUPT);
    read_wait(f, loc, "m2", 1000, sha, &g);
    assert_int_equal(g.status, HAMR_ECORRUPT);
    read_wait(f, BODY_LOC(BODY_LOC_SEG(loc) + 5, 0), "m1", 1000, sha, &g);
    assert_int_equal(g.status, HAMR_ENOTFOUND);
    read_wait(f, BODY_LOC(BODY_LOC_SEG(loc), 1 << 20), "m1", 1000, sha, &g);
    assert_int_equal(g.status, HAMR_ENOTFOUND);
    assert_int_equal(stats(f).read_errors, 5);
    read_wait(f, loc, "m1", 1000, sha, &g); /* and the right one still reads */
    assert_int_equal(g.status, 0);
    free(g.body);
    assert_int_equal(stats(f).read_errors, 5);
    assert_int_equal(body_store_read(f->s, BODY_LOC_NONE, "m1", 1000, sha, read_cb, &g),
                     HAMR_EINVAL);
}

/* One octet flipped in the file under the store is found by the read's SHA-256. */
static void test_flipped_byte(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    uint8_t sha[BODY_SHA256_LEN];
    put(f, "first", 100, 1, NULL);
    uint64_t loc = put(f, "victim", 5000, 2, sha);
    assert_int_equal(body_store_sync_now(f->s), 0);
    char path[400];
    seg_path(f, BODY_LOC_SEG(loc), path);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    off_t at = BODY_LOC_OFF(loc) + 48 + 6 + 4321;
    uint8_t c;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0x20;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
    close(fd);
    struct got g;
    read_wait(f, loc, "victim", 5000, sha, &g);
    assert_int_equal(g.status, HAMR_ECORRUPT);
    assert_null(g.body);
    assert_int_equal(stats(f).read_errors, 1);
    expect_body(f, BODY_LOC(BODY_LOC_SEG(loc), 0), "first", 100, 1);
}

/* Records roll to a new segment at segment_size; a larger one goes alone into a fresh one. */
static void test_roll(void **state)
{
    struct fixture *f = *state;
    store_open(f, 4096);
    uint64_t locs[10];
    put_many(f, "r", 10, 1000, 0, locs, NULL); /* 1050-octet records: 3 per segment */
    uint32_t seg0 = BODY_LOC_SEG(locs[0]);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(BODY_LOC_SEG(locs[i]), seg0 + (uint32_t)i / 3);
        assert_int_equal(BODY_LOC_OFF(locs[i]), (i % 3) * 1050);
    }
    uint64_t big = put(f, "big", 10000, 42, NULL);
    assert_int_equal(BODY_LOC_SEG(big), seg0 + 4);
    assert_int_equal(BODY_LOC_OFF(big), 0);
    uint64_t after = put(f, "after", 10, 43, NULL);
    assert_int_equal(BODY_LOC_SEG(after), seg0 + 5);
    assert_int_equal(BODY_LOC_OFF(after), 0);
    assert_int_equal(stats(f).segments, 6);
    for (uint32_t n = seg0; n < seg0 + 6; n++)
        assert_true(seg_exists(f, n));
    assert_int_equal(seg_size(f, seg0), 3 * 1050);
    assert_int_equal(seg_size(f, seg0 + 4), 48 + 3 + 10000);
    char id[32];
    for (int i = 0; i < 10; i++)
        expect_body(f, locs[i], id_of(id, "r", i), 1000, (unsigned)i);
    expect_body(f, big, "big", 10000, 42);
    TESTLIB_LOOP_UNTIL(&f->w, body_store_synced(f->s));
    assert_int_equal(stats(f).unsynced, 0);
}

/* After a reopen, claim finds every body by id, length and hash, and nothing else. */
static void test_reopen_claim(void **state)
{
    struct fixture *f = *state;
    store_open(f, 8192);
    enum { N = 40 };
    uint64_t locs[N];
    uint8_t shas[N][BODY_SHA256_LEN];
    put_many(f, "id-", N, 0, 100, locs, shas);
    uint8_t old_sha[BODY_SHA256_LEN], new_sha[BODY_SHA256_LEN];
    put(f, "dup", 300, 1, old_sha);
    uint64_t dup_new = put(f, "dup", 300, 2, new_sha); /* the newer record of one id wins */
    uint32_t first_seg = BODY_LOC_SEG(locs[0]);
    uint32_t last_seg = BODY_LOC_SEG(dup_new);
    store_close(f);

    store_open(f, 8192);
    struct body_store_stats st = stats(f);
    assert_int_equal(st.segments, last_seg - first_seg + 2); /* and a new active one */
    assert_int_equal(st.live, 0);
    uint64_t loc;
    char id[32];
    for (int i = 0; i < N; i++) {
        id_of(id, "id-", i);
        uint8_t other[BODY_SHA256_LEN];
        memcpy(other, shas[i], sizeof(other));
        other[0] ^= 0xff;
        assert_int_equal(body_store_claim(f->s, id, (size_t)(i * 100), other, &loc),
                         HAMR_ENOTFOUND);
        assert_int_equal(body_store_claim(f->s, id, (size_t)(i * 100 + 1), shas[i], &loc),
                         HAMR_ENOTFOUND);
        loc = BODY_LOC_NONE;
        assert_int_equal(body_store_claim(f->s, id, (size_t)(i * 100), shas[i], &loc), 0);
        assert_int_equal(loc, locs[i]);
    }
    assert_int_equal(body_store_claim(f->s, "dup", 300, old_sha, &loc), HAMR_ENOTFOUND);
    assert_int_equal(body_store_claim(f->s, "dup", 300, new_sha, &loc), 0);
    assert_int_equal(loc, dup_new);
    assert_int_equal(body_store_claim(f->s, "nobody", 0, new_sha, &loc), HAMR_ENOTFOUND);
    st = stats(f);
    assert_int_equal(st.live, N + 1);
    assert_int_equal(st.live_bytes, 300 + 100 * (N - 1) * N / 2);
    /* a new record goes into a new segment, after the old ones */
    uint64_t fresh = put(f, "fresh", 10, 9, NULL);
    assert_int_equal(BODY_LOC_SEG(fresh), last_seg + 1);
    for (int i = 0; i < N; i += 7)
        expect_body(f, locs[i], id_of(id, "id-", i), (size_t)(i * 100), (unsigned)i);
    body_store_claims_done(f->s);
    assert_int_equal(body_store_claim(f->s, "dup", 300, new_sha, &loc), HAMR_ENOTFOUND);
}

/* A record cut in the middle at the end of a segment is ignored; the ones before it are claimed. */
static void test_torn_tail(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    uint8_t shas[5][BODY_SHA256_LEN];
    uint64_t locs[5];
    put_many(f, "t", 5, 2000, 0, locs, shas);
    uint32_t seg = BODY_LOC_SEG(locs[0]);
    store_close(f);
    char path[400];
    seg_path(f, seg, path);
    off_t full = seg_size(f, seg);
    assert_int_equal(truncate(path, full - 700), 0); /* the last body, cut short */

    store_open(f, 0);
    uint64_t loc;
    char id[32];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(body_store_claim(f->s, id_of(id, "t", i), 2000, shas[i], &loc), 0);
        assert_int_equal(loc, locs[i]);
    }
    assert_int_equal(body_store_claim(f->s, "t4", 2000, shas[4], &loc), HAMR_ENOTFOUND);
    /* new records never follow the torn one: they go into the next segment */
    uint64_t next = put(f, "t5", 10, 5, NULL);
    assert_int_equal(BODY_LOC_SEG(next), seg + 1);
    assert_int_equal(seg_size(f, seg), full - 700);
    store_close(f);

    /* a header cut short, too, and garbage where a header should be */
    assert_int_equal(truncate(path, BODY_LOC_OFF(locs[3]) + 20), 0);
    store_open(f, 0);
    assert_int_equal(body_store_claim(f->s, "t2", 2000, shas[2], &loc), 0);
    assert_int_equal(body_store_claim(f->s, "t3", 2000, shas[3], &loc), HAMR_ENOTFOUND);
    store_close(f);
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "HMBX", 4, BODY_LOC_OFF(locs[1])), 4);
    close(fd);
    store_open(f, 0);
    assert_int_equal(body_store_claim(f->s, "t0", 2000, shas[0], &loc), 0);
    assert_int_equal(body_store_claim(f->s, "t2", 2000, shas[2], &loc), HAMR_ENOTFOUND);
}

/* claims_done removes the old segments nothing was claimed in, and keeps the rest. */
static void test_claims_done_removes(void **state)
{
    struct fixture *f = *state;
    store_open(f, 4096);
    uint8_t shas[9][BODY_SHA256_LEN];
    uint64_t locs[9];
    put_many(f, "c", 9, 1000, 0, locs, shas); /* segments s, s+1, s+2 */
    uint32_t s0 = BODY_LOC_SEG(locs[0]);
    assert_int_equal(BODY_LOC_SEG(locs[8]), s0 + 2);
    store_close(f);

    store_open(f, 4096);
    assert_int_equal(stats(f).segments, 4);
    uint64_t loc;
    assert_int_equal(body_store_claim(f->s, "c4", 1000, shas[4], &loc), 0); /* the middle one */
    assert_int_equal(BODY_LOC_SEG(loc), s0 + 1);
    /* nothing goes before claims_done, even a segment whose only claim was released */
    assert_int_equal(body_store_claim(f->s, "c1", 1000, shas[1], &loc), 0);
    body_store_release(f->s, loc);
    for (int i = 0; i < 10; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(stats(f).removed, 0);
    assert_true(seg_exists(f, s0));
    assert_int_equal(body_store_claim(f->s, "c0", 1000, shas[0], &loc), 0); /* still there */
    body_store_claims_done(f->s);
    body_store_claims_done(f->s); /* idempotent */
    TESTLIB_LOOP_UNTIL(&f->w, stats(f).removed == 1);
    assert_true(seg_exists(f, s0));
    assert_true(seg_exists(f, s0 + 1));
    assert_false(seg_exists(f, s0 + 2));
    assert_true(seg_exists(f, s0 + 3)); /* the active one, empty */
    struct body_store_stats st = stats(f);
    assert_int_equal(st.segments, 3);
    assert_int_equal(st.disk_bytes, 2 * 3 * 1050);
    assert_int_equal(st.live, 2);
    expect_body(f, locs[4], "c4", 1000, 4);
    expect_body(f, locs[0], "c0", 1000, 0);
    struct got g;
    read_wait(f, locs[8], "c8", 1000, shas[8], &g);
    assert_int_equal(g.status, HAMR_ENOTFOUND);
    /* the last live record of s0 goes: so does s0 */
    body_store_release(f->s, locs[0]);
    TESTLIB_LOOP_UNTIL(&f->w, stats(f).removed == 2);
    assert_false(seg_exists(f, s0));
}

/* Releasing every record of a closed segment unlinks it; a release twice counts once. */
static void test_release_unlinks(void **state)
{
    struct fixture *f = *state;
    store_open(f, 4096);
    body_store_claims_done(f->s); /* a fresh store: nothing to claim */
    uint64_t locs[4];
    put_many(f, "u", 4, 1000, 0, locs, NULL);
    uint32_t s0 = BODY_LOC_SEG(locs[0]);
    assert_int_equal(BODY_LOC_SEG(locs[3]), s0 + 1);
    TESTLIB_LOOP_UNTIL(&f->w, body_store_synced(f->s));
    body_store_release(f->s, locs[0]);
    body_store_release(f->s, locs[0]); /* ignored */
    body_store_release(f->s, locs[1]);
    body_store_release(f->s, BODY_LOC(s0, 7)); /* no record there: ignored */
    struct body_store_stats st = stats(f);
    assert_int_equal(st.live, 2);
    assert_int_equal(st.live_bytes, 2000);
    for (int i = 0; i < 10; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(seg_exists(f, s0)); /* locs[2] still lives there */
    assert_int_equal(stats(f).removed, 0);
    body_store_release(f->s, locs[2]);
    TESTLIB_LOOP_UNTIL(&f->w, stats(f).removed == 1);
    assert_false(seg_exists(f, s0));
    st = stats(f);
    assert_int_equal(st.segments, 1);
    assert_int_equal(st.live, 1);
    /* the active segment stays even when it holds nothing live */
    body_store_release(f->s, locs[3]);
    for (int i = 0; i < 10; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(seg_exists(f, s0 + 1));
    assert_int_equal(stats(f).removed, 1);
    assert_int_equal(stats(f).live_bytes, 0);
}

/* sync_now leaves nothing unsynced, even with a sync in the pool at the same time. */
static void test_sync_now(void **state)
{
    struct fixture *f = *state;
    store_open(f, 16384);
    uint64_t locs[50];
    put_many(f, "s", 50, 3000, 0, locs, NULL); /* rolls every 5 records */
    struct body_store_stats st = stats(f);
    assert_int_equal(st.puts, 50);
    assert_true(st.unsynced > 0); /* the loop has not run: no sync finished */
    assert_false(body_store_synced(f->s));
    assert_int_equal(body_store_sync_now(f->s), 0);
    st = stats(f);
    assert_int_equal(st.unsynced, 0);
    assert_true(body_store_synced(f->s));
    assert_true(st.syncs >= 1);
    uint64_t syncs = st.syncs;
    TESTLIB_LOOP_UNTIL(&f->w, stats(f).syncs > syncs); /* the pool's sync ends after it */
    assert_int_equal(stats(f).unsynced, 0);
    assert_int_equal(body_store_sync_now(f->s), 0); /* nothing to do */
    put(f, "late", 10, 1, NULL);
    assert_int_equal(stats(f).unsynced, 1);
    TESTLIB_LOOP_UNTIL(&f->w, body_store_synced(f->s));
    assert_int_equal(stats(f).unsynced, 0);
}

/* pread reads parts of a body by offset, from the active segment and from an old one. */
static void test_pread(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    put(f, "before", 77, 1, NULL);
    uint64_t loc = put(f, "pr", 10000, 5, NULL);
    uint8_t *want = fill(10000, 5);
    uint8_t buf[256];
    for (int round = 0; round < 2; round++) {
        assert_int_equal(body_store_pread(f->s, loc, 0, buf, 100), 100);
        assert_memory_equal(buf, want, 100);
        assert_int_equal(body_store_pread(f->s, loc, 5000, buf, 256), 256);
        assert_memory_equal(buf, want + 5000, 256);
        assert_int_equal(body_store_pread(f->s, loc, 9990, buf, 100), 10);
        assert_memory_equal(buf, want + 9990, 10);
        assert_int_equal(body_store_pread(f->s, loc, 10000, buf, 100), 0);
        assert_int_equal(body_store_pread(f->s, loc, 20000, buf, 100), 0);
        assert_int_equal(body_store_pread(f->s, BODY_LOC(BODY_LOC_SEG(loc), 60), 0, buf, 10),
                         HAMR_ECORRUPT);
        assert_int_equal(body_store_pread(f->s, BODY_LOC(BODY_LOC_SEG(loc), 1 << 20), 0, buf, 10),
                         HAMR_ENOTFOUND);
        assert_int_equal(body_store_pread(f->s, BODY_LOC(BODY_LOC_SEG(loc) + 9, 0), 0, buf, 10),
                         HAMR_ENOTFOUND);
        assert_int_equal(body_store_pread(f->s, BODY_LOC_NONE, 0, buf, 10), HAMR_ENOTFOUND);
        store_close(f); /* the second round reads a segment of an earlier open */
        store_open(f, 0);
    }
    free(want);
}

/*
 * A write that fails part way (here the file-size limit, EFBIG after a
 * short write) returns HAMR_EIO and leaves no partial record: the file is
 * cut back, the next put lands where the failed one began, and a reopen
 * finds every record that was put.
 */
static void test_write_fails(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    uint64_t a = put(f, "ok-a", 3000, 1, NULL);
    uint64_t b = put(f, "ok-b", 3000, 2, NULL);
    uint32_t seg = BODY_LOC_SEG(a);
    off_t before = seg_size(f, seg);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)before + 1000; /* the next record gets 1000 octets in */
    void (*was)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    uint8_t *body = fill(3000, 3);
    uint8_t sha[BODY_SHA256_LEN];
    sha_of(body, 3000, sha);
    uint64_t loc = BODY_LOC_NONE;
    int rv = body_store_put(f->s, "fails", body, 3000, sha, &loc);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, was);
    free(body);
    assert_int_equal(rv, HAMR_EIO);
    assert_int_equal(loc, BODY_LOC_NONE);
    assert_int_equal(seg_size(f, seg), before);
    struct body_store_stats st = stats(f);
    assert_int_equal(st.puts, 2);
    assert_int_equal(st.live, 2);
    assert_int_equal(st.disk_bytes, (uint64_t)before);
    uint64_t c = put(f, "ok-c", 3000, 4, NULL);
    assert_int_equal(c, BODY_LOC(seg, before));
    store_close(f);
    store_open(f, 0);
    uint64_t locs[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        static const char *ids[3] = {"ok-a", "ok-b", "ok-c"};
        static const unsigned seeds[3] = {1, 2, 4};
        uint8_t *want = fill(3000, seeds[i]);
        uint8_t h[BODY_SHA256_LEN];
        sha_of(want, 3000, h);
        free(want);
        uint64_t got;
        assert_int_equal(body_store_claim(f->s, ids[i], 3000, h, &got), 0);
        assert_int_equal(got, locs[i]);
        expect_body(f, got, ids[i], 3000, seeds[i]);
    }
}

/* Closing with reads in flight runs every read's callback once, then close's, once. */
static void test_close_reads_in_flight(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    enum { N = 64 };
    uint8_t sha[BODY_SHA256_LEN];
    uint64_t loc = put(f, "busy", 256 * 1024, 7, sha);
    struct got g[N];
    memset(g, 0, sizeof(g));
    for (int i = 0; i < N; i++)
        assert_int_equal(body_store_read(f->s, loc, "busy", 256 * 1024, sha, read_cb, &g[i]), 0);
    f->closed = false;
    body_store_close(f->s, close_cb, f);
    assert_int_equal(f->close_calls, 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(g[i].calls, 0);
    TESTLIB_LOOP_UNTIL(&f->w, f->closed);
    f->s = NULL;
    int done = 0, shut = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(g[i].calls, 1);
        if (g[i].status == 0) {
            assert_int_equal(g[i].len, 256 * 1024);
            done++;
        } else {
            assert_int_equal(g[i].status, HAMR_ESHUTDOWN);
            assert_null(g[i].body);
            shut++;
        }
        free(g[i].body);
    }
    assert_int_equal(done + shut, N);
    assert_true(shut > 0); /* four pool threads cannot have begun all 64 */
    assert_int_equal(f->close_calls, 1);
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->close_calls, 1);
    for (int i = 0; i < N; i++)
        assert_int_equal(g[i].calls, 1);
}

/* Closing a store with nothing in flight still calls back later, not inside close. */
static void test_close_idle(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    store_close(f);
    assert_true(seg_exists(f, 0));
    store_open(f, 0);
    assert_true(seg_exists(f, 1)); /* never appends to an earlier process's segment */
}

/* ---- ranges and streams ------------------------------------------------- */

/* A range's outcome. */
struct got_range {
    int calls;
    ssize_t got;
};

static void range_cb(void *arg, ssize_t got)
{
    struct got_range *g = arg;
    g->calls++;
    g->got = got;
}

/* A stream's chunks, appended as they come. */
struct got_stream {
    int calls;
    int status;
    bool last;
    uint8_t *body; /* the chunks so far */
    size_t len, cap;
    size_t max_chunk;
};

static void stream_cb(void *arg, int status, const uint8_t *data, size_t n, bool last)
{
    struct got_stream *g = arg;
    g->calls++;
    g->status = status;
    g->last = last;
    if (status != 0) {
        assert_null(data);
        assert_int_equal(n, 0);
        assert_false(last);
        return;
    }
    assert_true(g->len + n <= g->cap);
    if (n > 0)
        memcpy(g->body + g->len, data, n);
    g->len += n;
    if (n > g->max_chunk)
        g->max_chunk = n;
}

/*
 * stream_all - read loc as id's body (len, sha) in chunks of chunk bytes
 * until the last or a failed one; the outcome in *g (g->body to free).
 * Returns the number of reads.
 */
static int stream_all(struct fixture *f,
                      uint64_t loc,
                      const char *id,
                      size_t len,
                      const uint8_t sha[BODY_SHA256_LEN],
                      size_t chunk,
                      struct got_stream *g)
{
    memset(g, 0, sizeof(*g));
    g->cap = len + 1;
    g->body = malloc(g->cap);
    assert_non_null(g->body);
    struct body_store_stream *st = NULL;
    assert_int_equal(body_store_stream_new(f->s, loc, id, len, sha, chunk, &st), 0);
    int reads = 0;
    while (g->status == 0 && !g->last) {
        int before = g->calls;
        assert_int_equal(body_store_stream_next(st, stream_cb, g), 0);
        assert_int_equal(g->calls, before); /* never inside the call */
        /* a second read while one is in flight is refused */
        assert_int_equal(body_store_stream_next(st, stream_cb, g), HAMR_EINVAL);
        TESTLIB_LOOP_UNTIL(&f->w, g->calls > before);
        assert_int_equal(g->calls, before + 1);
        assert_true(++reads <= (int)(len / chunk) + 2);
    }
    /* ended: no more reads */
    assert_int_equal(body_store_stream_next(st, stream_cb, g), HAMR_EINVAL);
    assert_null(body_store_stream_free(st));
    return reads;
}

/* A body read in chunks of every size comes back whole, each chunk at most the size asked. */
static void test_stream_chunks(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    static const size_t lens[] = {0, 1, 4096, 65536, 65537, 200000};
    static const size_t chunks[] = {1, 7, 4096, 65536, 1 << 20};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        char id[32];
        uint8_t sha[BODY_SHA256_LEN];
        uint64_t loc = put(f, id_of(id, "s", (int)i), lens[i], (unsigned)i, sha);
        uint8_t *want = fill(lens[i], (unsigned)i);
        for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
            if (lens[i] / chunks[c] > 5000)
                continue; /* a byte at a time through the pool: enough with the small ones */
            struct got_stream g;
            int reads = stream_all(f, loc, id, lens[i], sha, chunks[c], &g);
            if (g.status != 0 || !g.last || g.len != lens[i] ||
                (lens[i] > 0 && memcmp(g.body, want, lens[i]) != 0))
                fail_msg("len %zu chunk %zu: status %d last %d len %zu", lens[i], chunks[c],
                         g.status, g.last, g.len);
            assert_true(g.max_chunk <= chunks[c]);
            size_t want_reads = lens[i] == 0 ? 1 : (lens[i] + chunks[c] - 1) / chunks[c];
            assert_int_equal(reads, want_reads);
            free(g.body);
        }
        free(want);
    }
    assert_int_equal(stats(f).read_errors, 0);
}

/*
 * One octet flipped in the body: every chunk before the last comes out
 * (nothing in them can tell), the last one fails with HAMR_ECORRUPT.
 */
static void test_stream_flipped_byte(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    uint8_t sha[BODY_SHA256_LEN];
    uint64_t loc = put(f, "victim", 50000, 3, sha);
    assert_int_equal(body_store_sync_now(f->s), 0);
    char path[400];
    seg_path(f, BODY_LOC_SEG(loc), path);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    off_t at = BODY_LOC_OFF(loc) + 48 + 6 + 123;
    uint8_t c;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0x01;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
    close(fd);
    struct got_stream g;
    int reads = stream_all(f, loc, "victim", 50000, sha, 10000, &g);
    assert_int_equal(reads, 5);
    assert_int_equal(g.status, HAMR_ECORRUPT);
    assert_false(g.last);
    assert_int_equal(g.len, 40000); /* four chunks handed out before the last failed */
    assert_int_equal(stats(f).read_errors, 1);
    free(g.body);
    /* The whole read agrees; a stream of another length or hash fails at once. */
    struct got whole;
    read_wait(f, loc, "victim", 50000, sha, &whole);
    assert_int_equal(whole.status, HAMR_ECORRUPT);
    uint8_t other[BODY_SHA256_LEN];
    memcpy(other, sha, sizeof(other));
    other[0] ^= 1;
    reads = stream_all(f, loc, "victim", 50000, other, 10000, &g);
    assert_int_equal(reads, 1);
    assert_int_equal(g.status, HAMR_ECORRUPT);
    free(g.body);
    reads = stream_all(f, loc, "victim", 49999, sha, 10000, &g);
    assert_int_equal(reads, 1);
    assert_int_equal(g.status, HAMR_ECORRUPT);
    free(g.body);
    reads = stream_all(f, BODY_LOC(BODY_LOC_SEG(loc) + 3, 0), "victim", 50000, sha, 10000, &g);
    assert_int_equal(g.status, HAMR_ENOTFOUND);
    free(g.body);
}

/* Ranges: the bytes asked for, checked against the record; past the end refused. */
static void test_read_range(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    uint8_t sha[BODY_SHA256_LEN];
    uint64_t loc = put(f, "r", 10000, 5, sha);
    uint8_t *want = fill(10000, 5);
    uint8_t buf[4096];
    static const struct {
        uint64_t off;
        size_t n;
    } ok[] = {{0, 100}, {5000, 4096}, {9990, 10}, {10000, 0}, {0, 0}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct got_range g = {0};
        memset(buf, 0xee, sizeof(buf));
        assert_int_equal(body_store_read_range(f->s, loc, "r", 10000, sha, ok[i].off, buf, ok[i].n,
                                               range_cb, &g),
                         0);
        assert_int_equal(g.calls, 0);
        TESTLIB_LOOP_UNTIL(&f->w, g.calls > 0);
        assert_int_equal(g.calls, 1);
        assert_int_equal(g.got, (ssize_t)ok[i].n);
        if (ok[i].n > 0)
            assert_memory_equal(buf, want + ok[i].off, ok[i].n);
    }
    struct got_range g = {0};
    assert_int_equal(body_store_read_range(f->s, loc, "r", 10000, sha, 9990, buf, 11, range_cb, &g),
                     HAMR_EINVAL);
    assert_int_equal(body_store_read_range(f->s, loc, "r", 10000, sha, 10001, buf, 0, range_cb, &g),
                     HAMR_EINVAL);
    assert_int_equal(
        body_store_read_range(f->s, loc, "r", 10000, sha, UINT64_MAX, buf, 1, range_cb, &g),
        HAMR_EINVAL);
    assert_int_equal(
        body_store_read_range(f->s, BODY_LOC_NONE, "r", 10000, sha, 0, buf, 1, range_cb, &g),
        HAMR_EINVAL);
    /* Another id, length or hash than the record's: HAMR_ECORRUPT. */
    uint8_t other[BODY_SHA256_LEN];
    memcpy(other, sha, sizeof(other));
    other[5] ^= 1;
    assert_int_equal(body_store_read_range(f->s, loc, "r", 10000, other, 0, buf, 10, range_cb, &g),
                     0);
    TESTLIB_LOOP_UNTIL(&f->w, g.calls > 0);
    assert_int_equal(g.got, HAMR_ECORRUPT);
    g.calls = 0;
    assert_int_equal(body_store_read_range(f->s, loc, "q", 10000, sha, 0, buf, 10, range_cb, &g),
                     0);
    TESTLIB_LOOP_UNTIL(&f->w, g.calls > 0);
    assert_int_equal(g.got, HAMR_ECORRUPT);
    assert_int_equal(g.calls, 1);
    assert_int_equal(stats(f).read_errors, 2);
    free(want);
}

/*
 * A stream freed with a read in flight never reports it (its caller has
 * gone); the read still ends, and the store then closes (ASan: nothing
 * leaks). Another stream in flight at close gets its chunk or
 * HAMR_ESHUTDOWN, once.
 */
static void test_stream_free_in_flight(void **state)
{
    struct fixture *f = *state;
    store_open(f, 0);
    uint8_t sha[BODY_SHA256_LEN];
    uint64_t loc = put(f, "busy", 300000, 9, sha);
    struct body_store_stream *st = NULL, *st2 = NULL;
    struct got_stream g = {.cap = 300001}, g2 = {.cap = 300001};
    g.body = malloc(g.cap);
    g2.body = malloc(g2.cap);
    assert_non_null(g.body);
    assert_non_null(g2.body);
    assert_int_equal(body_store_stream_new(f->s, loc, "busy", 300000, sha, 65536, &st), 0);
    assert_int_equal(body_store_stream_new(f->s, loc, "busy", 300000, sha, 65536, &st2), 0);
    assert_int_equal(body_store_stream_next(st, stream_cb, &g), 0);
    assert_null(body_store_stream_free(st));
    assert_int_equal(body_store_stream_next(st2, stream_cb, &g2), 0);
    TESTLIB_LOOP_UNTIL(&f->w, g2.calls > 0);
    assert_int_equal(g2.status, 0);
    assert_int_equal(body_store_stream_next(st2, stream_cb, &g2), 0);
    f->closed = false;
    body_store_close(f->s, close_cb, f);
    /* a stream of a closing store reads no more */
    struct body_store_stream *st3 = NULL;
    assert_int_equal(body_store_stream_new(f->s, loc, "busy", 300000, sha, 65536, &st3), 0);
    assert_int_equal(body_store_stream_next(st3, stream_cb, &g), HAMR_ESHUTDOWN);
    assert_null(body_store_stream_free(st3));
    TESTLIB_LOOP_UNTIL(&f->w, f->closed);
    f->s = NULL;
    assert_int_equal(g.calls, 0);
    assert_int_equal(g2.calls, 2);
    assert_true(g2.status == 0 || g2.status == HAMR_ESHUTDOWN);
    assert_null(body_store_stream_free(st2));
    free(g.body);
    free(g2.body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roll, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_claim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claims_done_removes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_unlinks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_now, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_reads_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_flipped_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_free_in_flight, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
