/*
 * raftbench.c - what a commit costs through consensus/: three voters in this
 * one process (one libuv loop carries all three and both ends of every raft
 * connection), on 127.0.0.1 or [::1], plain TCP or mutual TLS 1.3 with
 * certificates made by deploy/make-pki.sh. Not a test: it never fails
 * because of the numbers.
 *
 *   raftbench [-n COMMITS] [-s BYTES] [-w "1 32"] [-m "plain tls"] [-d DIR] [-6]
 *
 * For each mode a fresh cluster in DIR (default /dev/shm: the disk's fsync
 * would hide the transport), a leader, 200 commits to warm up; then for
 * each window W, COMMITS entries of BYTES with W proposals outstanding at
 * all times. One line per case: commits per second over the case, and the
 * latency of each commit (propose to its callback) at p50 and p99.
 *
 * Owns: the clusters and the PKI directory it makes (removed at the end).
 * May call: consensus/, net/cluster_tls, util/.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"

#include "consensus/consensus.h"
#include "net/cluster_tls.h"

#ifndef HAMR_SOURCE_DIR
#error "HAMR_SOURCE_DIR: the source tree, for deploy/make-pki.sh"
#endif

#define N3 3
#define WARMUP 200
#define WATCHDOG_NS (60ull * 1000 * 1000 * 1000)

struct node {
    struct consensus *c;
    struct consensus_config cfg;
    uint64_t applied;
    bool leader;
    bool closed;
    char dir[512];
};

struct bench {
    uv_loop_t loop;
    struct node nodes[N3];
    size_t entry;
    uint64_t *lat_ns; /* per commit of the case */
    uint64_t *start_ns;
    uint64_t proposed;
    uint64_t done;
    uint64_t failed;
    uint64_t total;
    unsigned window;
    int leader;
};

static struct bench B;

static int fsm_apply(void *data, const uint8_t *buf, size_t len, void **result)
{
    struct node *n = data;
    (void)buf;
    (void)len;
    n->applied++;
    *result = NULL;
    return 0;
}

static int fsm_snapshot(void *data, uint8_t **buf, size_t *len)
{
    (void)data;
    *buf = consensus_malloc(8);
    if (*buf == NULL)
        return HAMR_ENOMEM;
    memset(*buf, 0, 8);
    *len = 8;
    return 0;
}

static int fsm_restore(void *data, const uint8_t *buf, size_t len)
{
    (void)data;
    (void)buf;
    (void)len;
    return 0;
}

static void on_leader(void *arg, bool leader)
{
    ((struct node *)arg)->leader = leader;
}

static void on_closed(void *arg)
{
    struct node *n = arg;
    n->closed = true;
    n->c = NULL;
}

/* run_until - the loop until pred holds; false after a minute. */
static bool run_until(bool (*pred)(void))
{
    uint64_t deadline = uv_hrtime() + WATCHDOG_NS;
    while (!pred()) {
        if (uv_hrtime() > deadline)
            return false;
        uv_run(&B.loop, UV_RUN_ONCE);
    }
    return true;
}

static bool pred_leader(void)
{
    for (int i = 0; i < N3; i++)
        if (B.nodes[i].c != NULL && consensus_is_ready(B.nodes[i].c) && B.nodes[i].leader) {
            B.leader = i;
            return true;
        }
    return false;
}

static bool pred_done(void)
{
    return B.done >= B.total;
}

static bool pred_closed(void)
{
    for (int i = 0; i < N3; i++)
        if (!B.nodes[i].closed)
            return false;
    return true;
}

static void propose_one(void);

static void commit_cb(void *arg, int status, void *result)
{
    uint64_t seq = (uint64_t)(uintptr_t)arg;
    (void)result;
    if (status != 0)
        B.failed++;
    if (B.lat_ns != NULL)
        B.lat_ns[seq] = uv_hrtime() - B.start_ns[seq];
    B.done++;
    if (B.proposed < B.total)
        propose_one();
}

static void propose_one(void)
{
    uint64_t seq = B.proposed++;
    uint8_t *buf = consensus_malloc(B.entry);
    if (buf == NULL) {
        fprintf(stderr, "raftbench: out of memory\n");
        exit(1);
    }
    memset(buf, (int)(seq & 0xff), B.entry);
    if (B.start_ns != NULL)
        B.start_ns[seq] = uv_hrtime();
    int rc =
        consensus_propose(B.nodes[B.leader].c, buf, B.entry, commit_cb, (void *)(uintptr_t)seq);
    if (rc != 0) {
        fprintf(stderr, "raftbench: consensus_propose: %s\n", hamr_strerror(rc));
        exit(1);
    }
}

/* run_case - total commits with window outstanding; returns seconds. */
static double run_case(uint64_t total, unsigned window, bool measure)
{
    B.total = total;
    B.proposed = B.done = B.failed = 0;
    B.window = window;
    B.lat_ns = measure ? calloc(total, sizeof(uint64_t)) : NULL;
    B.start_ns = measure ? calloc(total, sizeof(uint64_t)) : NULL;
    uint64_t t0 = uv_hrtime();
    for (unsigned k = 0; k < window && B.proposed < total; k++)
        propose_one();
    if (!run_until(pred_done)) {
        fprintf(stderr, "raftbench: no progress for a minute (%" PRIu64 "/%" PRIu64 ")\n", B.done,
                total);
        exit(1);
    }
    double s = (double)(uv_hrtime() - t0) / 1e9;
    if (B.failed > 0) {
        fprintf(stderr, "raftbench: %" PRIu64 " proposals failed\n", B.failed);
        exit(1);
    }
    return s;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int free_port(bool v6)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl;
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        sl = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof(*a);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&ss, sl) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        perror("raftbench: free port");
        exit(1);
    }
    close(fd);
    return v6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
              : ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* sh - run cmd; exit on failure. */
static void sh(const char *cmd)
{
    if (system(cmd) != 0) {
        fprintf(stderr, "raftbench: failed: %s\n", cmd);
        exit(1);
    }
}

static struct cluster_tls *load_tls(const char *pki, uint64_t id)
{
    char ca[600], cert[600], key[600], err[512] = "";
    snprintf(ca, sizeof(ca), "%s/ca.pem", pki);
    snprintf(cert, sizeof(cert), "%s/node-%" PRIu64 ".pem", pki, id);
    snprintf(key, sizeof(key), "%s/node-%" PRIu64 ".key", pki, id);
    struct cluster_tls_files f = {.ca = ca, .cert = cert, .key = key, .node_id = id};
    struct cluster_tls *c = NULL;
    if (cluster_tls_new(&f, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "raftbench: %s\n", err);
        exit(1);
    }
    return c;
}

/* cluster_run - one mode: a fresh cluster, warm-up, then every window. */
static void cluster_run(const char *base,
                        bool v6,
                        struct cluster_tls *const tls[N3],
                        const char *mode,
                        uint64_t commits,
                        const unsigned *windows,
                        size_t n_windows)
{
    struct consensus_member voters[N3];
    for (int i = 0; i < N3; i++) {
        voters[i].id = (uint64_t)i + 1;
        snprintf(voters[i].address, sizeof(voters[i].address), v6 ? "[::1]:%d" : "127.0.0.1:%d",
                 free_port(v6));
    }
    for (int i = 0; i < N3; i++) {
        struct node *n = &B.nodes[i];
        memset(n, 0, sizeof(*n));
        snprintf(n->dir, sizeof(n->dir), "%s/raftbench-XXXXXX", base);
        if (mkdtemp(n->dir) == NULL) {
            perror("raftbench: mkdtemp");
            exit(1);
        }
        n->cfg.id = (uint64_t)i + 1;
        hamr_strlcpy(n->cfg.address, voters[i].address, sizeof(n->cfg.address));
        hamr_strlcpy(n->cfg.dir, n->dir, sizeof(n->cfg.dir));
        n->cfg.voters = voters;
        n->cfg.n_voters = N3;
        n->cfg.on_leader = on_leader;
        n->cfg.on_leader_arg = n;
        n->cfg.tls = tls[i];
        struct consensus_fsm fsm = {
            .data = n, .apply = fsm_apply, .snapshot = fsm_snapshot, .restore = fsm_restore};
        char err[256] = "";
        if (consensus_new(&B.loop, &n->cfg, &fsm, &n->c, err, sizeof(err)) != 0 ||
            consensus_start(n->c, err, sizeof(err)) != 0) {
            fprintf(stderr, "raftbench: node %d: %s\n", i + 1, err);
            exit(1);
        }
    }
    if (!run_until(pred_leader)) {
        fprintf(stderr, "raftbench: no leader\n");
        exit(1);
    }
    run_case(WARMUP, 8, false);
    for (size_t w = 0; w < n_windows; w++) {
        double s = run_case(commits, windows[w], true);
        qsort(B.lat_ns, commits, sizeof(uint64_t), cmp_u64);
        printf("mode=%-5s addr=%s inflight=%-3u entry=%zu commits=%" PRIu64
               " seconds=%.3f commits_per_s=%.0f p50_us=%.1f p99_us=%.1f\n",
               mode, v6 ? "ipv6" : "ipv4", windows[w], B.entry, commits, s, (double)commits / s,
               (double)B.lat_ns[commits / 2] / 1e3, (double)B.lat_ns[commits * 99 / 100] / 1e3);
        fflush(stdout);
        free(B.lat_ns);
        free(B.start_ns);
        B.lat_ns = B.start_ns = NULL;
    }
    for (int i = 0; i < N3; i++)
        consensus_close(B.nodes[i].c, on_closed, &B.nodes[i]);
    if (!run_until(pred_closed)) {
        fprintf(stderr, "raftbench: close did not finish\n");
        exit(1);
    }
    for (int i = 0; i < N3; i++) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", B.nodes[i].dir);
        sh(cmd);
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: raftbench [-n COMMITS] [-s BYTES] [-w \"1 32\"] [-m \"plain tls\"] "
            "[-d DIR] [-6]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    uint64_t commits = 20000;
    const char *windows_arg = "1 32";
    const char *modes = "plain tls";
    const char *base = "/dev/shm";
    bool v6 = false;
    B.entry = 1024;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:w:m:d:6")) != -1) {
        switch (opt) {
            case 'n':
                commits = strtoull(optarg, NULL, 10);
                break;
            case 's':
                B.entry = (strtoull(optarg, NULL, 10) + 7) / 8 * 8;
                break;
            case 'w':
                windows_arg = optarg;
                break;
            case 'm':
                modes = optarg;
                break;
            case 'd':
                base = optarg;
                break;
            case '6':
                v6 = true;
                break;
            default:
                usage();
        }
    }
    if (commits == 0 || B.entry == 0)
        usage();
    unsigned windows[16];
    size_t n_windows = 0;
    char wbuf[256];
    hamr_strlcpy(wbuf, windows_arg, sizeof(wbuf));
    for (char *tok = strtok(wbuf, " ,"); tok != NULL && n_windows < 16; tok = strtok(NULL, " ,"))
        if ((windows[n_windows] = (unsigned)strtoul(tok, NULL, 10)) > 0)
            n_windows++;
    if (n_windows == 0)
        usage();

    log_set_level(LOG_LEVEL_WARN);
    if (uv_loop_init(&B.loop) != 0)
        return 1;
    char pki[512];
    snprintf(pki, sizeof(pki), "%s/raftbench-pki-XXXXXX", base);
    if (mkdtemp(pki) == NULL) {
        perror("raftbench: mkdtemp");
        return 1;
    }
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "%s/deploy/make-pki.sh '%s' ca >/dev/null", HAMR_SOURCE_DIR, pki);
    sh(cmd);
    for (int i = 1; i <= N3; i++) {
        snprintf(cmd, sizeof(cmd), "%s/deploy/make-pki.sh '%s' node %d >/dev/null", HAMR_SOURCE_DIR,
                 pki, i);
        sh(cmd);
    }
    struct cluster_tls *tls[N3] = {load_tls(pki, 1), load_tls(pki, 2), load_tls(pki, 3)};
    struct cluster_tls *plain[N3] = {NULL, NULL, NULL};

    char mbuf[64];
    hamr_strlcpy(mbuf, modes, sizeof(mbuf));
    for (char *m = strtok(mbuf, " ,"); m != NULL; m = strtok(NULL, " ,")) {
        bool with_tls = strcmp(m, "tls") == 0;
        if (!with_tls && strcmp(m, "plain") != 0)
            usage();
        cluster_run(base, v6, with_tls ? tls : plain, m, commits, windows, n_windows);
    }
    for (int i = 0; i < N3; i++)
        cluster_tls_free(tls[i]);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", pki);
    sh(cmd);
    uv_run(&B.loop, UV_RUN_NOWAIT);
    return uv_loop_close(&B.loop) == 0 ? 0 : 1;
}
