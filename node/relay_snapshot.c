/*
 * relay_snapshot.c - raft snapshots of the queue taken off the loop.
 *
 * Serialising the queue costs time in proportion to it (about a second per
 * million messages), and the loop also runs raft: a follower whose leader
 * stalls that long starts an election. So the snapshot is made in a forked
 * child, as Redis saves its dataset: fork() gives the child the state at
 * this instant, copy on write, in the time it takes to copy page tables;
 * the child packs the queue and writes it into a pipe (an 8-byte length,
 * then the Snapshot record) and exits; a thread of libuv's pool reads it
 * into raft's buffer and reaps the child (consensus.h: snapshot_view,
 * snapshot_write, snapshot_release). The loop only forks.
 *
 * The child first syncs the body store (relay_bodies_before_snapshot):
 * raft compacts the log up to this snapshot once it is written, and no
 * entry may go while its body is not on disk. A child that cannot sync
 * exits non-zero and there is no snapshot.
 *
 * The child touches nothing but the queue in memory, the body store's
 * segment files (below cluster level 3 a snapshot carries the bodies, read
 * back with pread) and its end of the pipe, and leaves with _exit: no
 * atexit handlers, no stdio flushed twice, no shared state changed.
 *
 * Owns: the view (child pid, pipe). May call: queue_snapshot, the body
 * store (through the queue's body ops), consensus_malloc.
 */
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/log.h"
#include "queue/queue.h"
#include "consensus/consensus.h"
#include "node/relay_internal.h"

struct relay_snap_view {
    pid_t pid;    /* the child, 0 once reaped */
    int fd;       /* the pipe's read end */
    uint8_t *buf; /* the snapshot read from it: pages of its own */
    size_t len;
};

/* relay_snap_child - pack the queue into the pipe and leave. Never returns. */
static void relay_snap_child(struct relay *r, int fd)
{
    /*
     * The invariant: raft compacts the log up to this snapshot once it is
     * written, and no entry may go while its body is not on disk. The child
     * has the store's descriptors as they were at the fork: syncing them
     * here covers every body applied so far, and keeps the wait (a third
     * of a second when 64 KiB bodies arrive faster than the pool syncs
     * them, bench/README.md "storebench") off the loop.
     */
    if (relay_bodies_before_snapshot(r) != 0)
        _exit(3);
    uint8_t *buf = NULL;
    size_t len = 0;
    if (queue_snapshot(r->queue, NULL, &buf, &len) != 0)
        _exit(1);
    uint8_t hdr[8];
    for (int i = 0; i < 8; i++)
        hdr[i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    struct iovec iov[2] = {{.iov_base = hdr, .iov_len = sizeof(hdr)},
                           {.iov_base = buf, .iov_len = len}};
    if (fs_writev_full(fd, iov, 2, -1) != 0)
        _exit(2);
    _exit(0);
}

int relay_snapshot_view(void *data, void **out)
{
    struct relay *r = data;
    struct relay_snap_view *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return HAMR_ENOMEM;
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        log_warn("snapshot: pipe failed error=\"%s\"", strerror(errno));
        free(v);
        return HAMR_EIO;
    }
    /* Signals wait while the child resets its handlers (below). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid != 0)
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        log_warn("snapshot: fork failed error=\"%s\"", strerror(errno));
        close(p[0]);
        close(p[1]);
        free(v);
        return HAMR_EIO;
    }
    if (pid == 0) {
        /* The parent's handlers write into libuv's signal pipe, which the
         * child shares: a SIGTERM sent to the whole group (systemd does)
         * would reach the parent twice. The child just dies of it. */
        static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
        for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
            signal(sigs[i], SIG_DFL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        close(p[0]);
        relay_snap_child(r, p[1]);
    }
    close(p[1]);
    v->pid = pid;
    v->fd = p[0];
    *out = v;
    return 0;
}

/* relay_snap_reap - wait for the child; 0 if it packed and wrote everything. */
static int relay_snap_reap(struct relay_snap_view *v)
{
    int st = 0;
    pid_t w;
    do
        w = waitpid(v->pid, &st, 0);
    while (w < 0 && errno == EINTR);
    v->pid = 0;
    return w > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : HAMR_EIO;
}

int relay_snapshot_write(void *view, uint8_t **buf, size_t *len)
{
    struct relay_snap_view *v = view;
    uint8_t hdr[8];
    uint64_t n = 0;
    if (fs_read_full(v->fd, hdr, sizeof(hdr), -1) != (ssize_t)sizeof(hdr)) {
        (void)relay_snap_reap(v);
        return HAMR_EIO;
    }
    for (int i = 0; i < 8; i++)
        n = (n << 8) | hdr[i];
    /*
     * Pages of its own, not the malloc heap: the buffer is megabytes and
     * grows with the queue, and glibc would keep each freed one in this
     * pool thread's arena (RSS grew by KBs per queued message).
     */
    size_t map = n ? (size_t)n : 1;
    void *b = n > SIZE_MAX - 1
                  ? MAP_FAILED
                  : mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) {
        /* The child blocks on a full pipe until the read end closes (release). */
        return HAMR_ENOMEM;
    }
    v->buf = b;
    v->len = map;
    if (fs_read_full(v->fd, b, (size_t)n, -1) != (ssize_t)n || relay_snap_reap(v) != 0)
        return HAMR_EIO;
    *buf = b;
    *len = (size_t)n;
    return 0;
}

void relay_snapshot_release(void *view)
{
    struct relay_snap_view *v = view;
    close(v->fd); /* a child still writing gets EPIPE and leaves */
    if (v->pid > 0) {
        kill(v->pid, SIGKILL);
        (void)relay_snap_reap(v);
    }
    if (v->buf != NULL)
        munmap(v->buf, v->len);
    free(v);
}
