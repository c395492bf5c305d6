/*
 * storebench.c - what writing message bodies to disk costs: through the
 * body store (queue/body_store.c, append-only segments) and, for
 * comparison, as one file per message, so that the choice body_store.h
 * describes stays measured. Not a test: it never fails because of the
 * numbers.
 *
 *   storebench [-n N] [-s "SIZES"] [-m "MODES"] [-b BATCH] [-d DIR]
 *
 * For each size and mode, N bodies of that size go into a fresh directory
 * under DIR (default $TMPDIR or /tmp), removed afterwards. Modes:
 *
 *   store    body_store_put for each body, with the loop turning after every
 *            put so that the store's own syncs run in the thread pool as they
 *            do in hamrd (one at a time, each covering what was put before it
 *            began); then one body_store_sync_now.
 *   store-b  the same with body_store_sync_now after every BATCH puts: a sync
 *            every BATCH bodies, as the figures in body_store.h were taken.
 *   files    open, write, close one file per body in 256 subdirectories
 *            (by the low byte of the message number), syncfs() after every
 *            BATCH files and at the end.
 *
 * One line per case: seconds until everything is on disk, bodies per second
 * put (before they are synced, store only) and on disk, the syncs done, and
 * the time of the last sync (the final sync_now, or the final syncfs).
 *
 * Owns: its directories. May call: queue/body_store, util/, libuv.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "util/err.h"
#include "queue/body_store.h"

/* What one case measured. */
struct storebench_result {
    double put_s;   /* until the last body was handed over (store: put; files: closed) */
    double total_s; /* until everything was on disk */
    uint64_t syncs; /* syncs done (store's counter, or syncfs calls) */
    double last_sync_ms;
};

/* storebench_s - monotonic seconds. */
static double storebench_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

/* storebench_die - report and exit: a benchmark has nothing to recover. */
static void storebench_die(const char *what, int err)
{
    fprintf(stderr, "storebench: %s: %s\n", what, err < 0 ? hamr_strerror(err) : strerror(err));
    exit(1);
}

static void storebench_closed_cb(void *arg)
{
    *(bool *)arg = true;
}

/* storebench_store - N puts through a body store in dir; a sync_now every batch (if not 0). */
static struct storebench_result storebench_store(const char *dir,
                                                 unsigned n,
                                                 const uint8_t *body,
                                                 size_t size,
                                                 unsigned batch)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct body_store *s;
    char err[256];
    int rv = body_store_open(&loop, dir, 0, &s, err, sizeof(err));
    if (rv != 0)
        storebench_die(err, rv);
    body_store_claims_done(s);
    uint8_t sha[BODY_SHA256_LEN] = {0}; /* put does not check it */
    struct storebench_result r = {0};
    double t0 = storebench_s();
    for (unsigned i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "bench-%08u", i);
        uint64_t loc;
        rv = body_store_put(s, id, body, size, sha, &loc);
        if (rv != 0)
            storebench_die("put", rv);
        if (batch > 0 && (i + 1) % batch == 0 && (rv = body_store_sync_now(s)) != 0)
            storebench_die("sync_now", rv);
        uv_run(&loop, UV_RUN_NOWAIT); /* the pool's syncs finish and the next begins */
    }
    r.put_s = storebench_s() - t0;
    double t1 = storebench_s();
    rv = body_store_sync_now(s);
    if (rv != 0)
        storebench_die("sync_now", rv);
    r.last_sync_ms = (storebench_s() - t1) * 1e3;
    r.total_s = storebench_s() - t0;
    struct body_store_stats st;
    body_store_get_stats(s, &st);
    r.syncs = st.syncs;
    bool closed = false;
    body_store_close(s, storebench_closed_cb, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_loop_close(&loop);
    return r;
}

/* storebench_write_file - one body in its own file. */
static void storebench_write_file(const char *path, const uint8_t *body, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        storebench_die(path, errno);
    for (size_t done = 0; done < size;) {
        ssize_t w = write(fd, body + done, size - done);
        if (w < 0 && errno != EINTR)
            storebench_die("write", errno);
        done += w > 0 ? (size_t)w : 0;
    }
    if (close(fd) != 0)
        storebench_die("close", errno);
}

/* storebench_files - N files of body in dir's 256 subdirectories, syncfs every batch. */
static struct storebench_result storebench_files(const char *dir,
                                                 unsigned n,
                                                 const uint8_t *body,
                                                 size_t size,
                                                 unsigned batch)
{
    char path[700];
    if (mkdir(dir, 0700) != 0)
        storebench_die(dir, errno);
    for (unsigned i = 0; i < 256; i++) {
        snprintf(path, sizeof(path), "%s/%02x", dir, i);
        if (mkdir(path, 0700) != 0)
            storebench_die(path, errno);
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || syncfs(dfd) != 0)
        storebench_die(dir, errno);
    struct storebench_result r = {0};
    double t0 = storebench_s();
    for (unsigned i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%02x/bench-%08u", dir, i & 0xff, i);
        storebench_write_file(path, body, size);
        if (batch > 0 && (i + 1) % batch == 0) {
            if (syncfs(dfd) != 0)
                storebench_die("syncfs", errno);
            r.syncs++;
        }
    }
    r.put_s = storebench_s() - t0;
    double t1 = storebench_s();
    if (syncfs(dfd) != 0)
        storebench_die("syncfs", errno);
    r.syncs++;
    r.last_sync_ms = (storebench_s() - t1) * 1e3;
    r.total_s = storebench_s() - t0;
    close(dfd);
    return r;
}

static int storebench_rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int main(int argc, char **argv)
{
    unsigned n = 20000, batch = 100;
    const char *sizes = "4096 65536", *modes = "store store-b files";
    const char *tmp = getenv("TMPDIR");
    const char *base = tmp != NULL ? tmp : "/tmp";
    int c;
    while ((c = getopt(argc, argv, "n:s:m:b:d:")) != -1) {
        switch (c) {
            case 'n':
                n = (unsigned)strtoul(optarg, NULL, 10);
                break;
            case 's':
                sizes = optarg;
                break;
            case 'm':
                modes = optarg;
                break;
            case 'b':
                batch = (unsigned)strtoul(optarg, NULL, 10);
                break;
            case 'd':
                base = optarg;
                break;
            default:
                fprintf(stderr,
                        "usage: storebench [-n N] [-s \"SIZES\"] [-m \"store store-b files\"] "
                        "[-b BATCH] [-d DIR]\n");
                return 2;
        }
    }
    if (batch == 0)
        batch = 1;
    char root[512];
    snprintf(root, sizeof(root), "%s/storebench-XXXXXX", base);
    if (mkdtemp(root) == NULL)
        storebench_die(root, errno);
    printf("%u bodies per case, batch %u, in %s\n\n", n, batch, root);
    printf("| mode    |  size |  seconds |   put/s | on disk/s |  syncs | last sync ms |\n");
    printf("|---------|------:|---------:|--------:|----------:|-------:|-------------:|\n");
    char sbuf[256];
    snprintf(sbuf, sizeof(sbuf), "%s", sizes);
    char *ss = NULL;
    for (char *sz = strtok_r(sbuf, " ", &ss); sz != NULL; sz = strtok_r(NULL, " ", &ss)) {
        size_t size = (size_t)strtoul(sz, NULL, 10);
        uint8_t *body = malloc(size ? size : 1);
        if (body == NULL)
            storebench_die("malloc", ENOMEM);
        for (size_t i = 0; i < size; i++)
            body[i] = (uint8_t)(i * 131 + (i >> 7));
        char mbuf[256];
        snprintf(mbuf, sizeof(mbuf), "%s", modes);
        char *ms = NULL;
        for (char *m = strtok_r(mbuf, " ", &ms); m != NULL; m = strtok_r(NULL, " ", &ms)) {
            char dir[600];
            snprintf(dir, sizeof(dir), "%s/%s-%zu", root, m, size);
            struct storebench_result r;
            if (strcmp(m, "store") == 0)
                r = storebench_store(dir, n, body, size, 0);
            else if (strcmp(m, "store-b") == 0)
                r = storebench_store(dir, n, body, size, batch);
            else if (strcmp(m, "files") == 0)
                r = storebench_files(dir, n, body, size, batch);
            else {
                fprintf(stderr, "storebench: unknown mode %s\n", m);
                return 2;
            }
            printf("| %-7s | %5zu | %8.3f | %7.0f | %9.0f | %6" PRIu64 " | %12.3f |\n", m, size,
                   r.total_s, n / r.put_s, n / r.total_s, r.syncs, r.last_sync_ms);
            fflush(stdout);
            nftw(dir, storebench_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
        }
        free(body);
    }
    rmdir(root);
    return 0;
}
