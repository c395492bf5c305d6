/*
 * hamrd.c - the hamr node daemon: read the config, start the relay on one
 * libuv loop, stop cleanly on SIGTERM/SIGINT.
 *
 * Usage: hamrd -c FILE            run in the foreground, log to stderr
 *        hamrd --check-config -c FILE
 *        hamrd --version
 * Exit codes: 0 clean stop, 1 bad config or start failure or fatal error.
 *
 * Privileges (node/privs.c): started as root, hamrd refuses to run without
 * [node] user, switches to that account before opening anything, keeps
 * only the right to bind ports below 1024 until its listeners are up and
 * then drops that too. It always runs inside its data directory.
 *
 * Owns: the loop, the signals and the process's exit status. May call:
 * config, privs and relay (relay.h) only.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtpd_rcptmap.h"
#include "node/config.h"
#include "node/privs.h"
#include "node/relay.h"

#define HAMRD_VERSION "0.1.0"

struct hamrd {
    uv_loop_t loop;
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_signal_t sig_hup;
    struct relay *relay;
    bool stopped;
};

/* hamrd_usage - print the usage line to f. */
static void hamrd_usage(FILE *f)
{
    fprintf(f,
            "usage: hamrd -c FILE              run a node\n"
            "       hamrd --check-config -c FILE\n"
            "       hamrd --version\n");
}

/* hamrd_relay_stopped - the relay closed everything: close the signal handles. */
static void hamrd_relay_stopped(void *arg)
{
    struct hamrd *h = arg;
    h->relay = NULL;
    uv_close((uv_handle_t *)&h->sig_term, NULL);
    uv_close((uv_handle_t *)&h->sig_int, NULL);
    uv_close((uv_handle_t *)&h->sig_hup, NULL);
}

/*
 * hamrd_on_signal - SIGTERM/SIGINT: stop; SIGHUP: reload TLS, credentials,
 * recipient map and the cluster PKI.
 */
static void hamrd_on_signal(uv_signal_t *s, int signum)
{
    struct hamrd *h = s->data;
    if (signum == SIGHUP) {
        log_info(
            "SIGHUP received: reloading the TLS certificate, the credentials file, the "
            "relay recipient map and the cluster CA, certificate and key");
        if (h->relay != NULL && !h->stopped)
            relay_reload(h->relay);
        return;
    }
    log_info("signal=%s action=stop", signum == SIGTERM ? "TERM" : "INT");
    if (!h->stopped && h->relay != NULL) {
        h->stopped = true;
        relay_stop(h->relay, hamrd_relay_stopped, h);
    }
}

/*
 * hamrd_check_files - --check-config also reads the files whose every line
 * is checked at start (the relay recipient map), so that a bad line is
 * found before a restart. 0, or an error with "FILE:LINE: reason" in err.
 */
static int hamrd_check_files(const struct hamr_config *cfg, char *err, size_t errlen)
{
    if (cfg->relay_recipients[0] == '\0')
        return 0;
    struct smtpd_rcptmap *map = NULL;
    int rv = smtpd_rcptmap_new(cfg->relay_recipients, &map, err, errlen);
    smtpd_rcptmap_free(map);
    return rv;
}

/* hamrd_args - parse argv: 0 to go on, else 1 + the exit status (help, version, errors). */
static int hamrd_args(int argc, char **argv, const char **path, bool *check)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            *path = argv[++i];
        } else if (strcmp(argv[i], "--check-config") == 0) {
            *check = true;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("hamrd %s\n", HAMRD_VERSION);
            return 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            hamrd_usage(stdout);
            return 1;
        } else {
            fprintf(stderr, "hamrd: unknown argument \"%s\"\n", argv[i]);
            hamrd_usage(stderr);
            return 2;
        }
    }
    if (*path == NULL) {
        hamrd_usage(stderr);
        return 2;
    }
    return 0;
}

/* hamrd_check - --check-config: the file, its user and the files it names. Exit status. */
static int hamrd_check(struct hamr_config *cfg, int prv, char *err, size_t errlen)
{
    /* Who starts hamrd is not the file's business: only a bad user is. */
    int rv = prv == HAMR_ENOTFOUND || prv == HAMR_EINVAL ? prv : 0;
    if (rv == 0)
        rv = hamrd_check_files(cfg, err, errlen);
    if (rv != 0)
        fprintf(stderr, "%s\n", err);
    else
        printf("config ok\n");
    config_free(cfg);
    return rv != 0 ? 1 : 0;
}

/* hamrd_run - start the relay on h's loop, run it until it stops. Exit status. */
static int hamrd_run(struct hamrd *h,
                     struct hamr_config *cfg,
                     struct privs *privs,
                     char *err,
                     size_t errlen)
{
    uv_loop_init(&h->loop);
    int rv = relay_start(&h->loop, cfg, &h->relay, err, errlen);
    if (rv == 0 && privs_drop_caps(privs, err, errlen) != 0) {
        log_error("start failed: %s", err);
        fprintf(stderr, "hamrd: %s\n", err);
        return 1;
    }
    if (rv != 0) {
        log_error("start failed: %s", err);
        fprintf(stderr, "hamrd: %s\n", err);
        /* Let the handles opened before the failure close. */
        uv_run(&h->loop, UV_RUN_DEFAULT);
        uv_loop_close(&h->loop);
        config_free(cfg);
        return 1;
    }
    uv_signal_t *sigs[] = {&h->sig_term, &h->sig_int, &h->sig_hup};
    int nums[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(sigs); i++) {
        uv_signal_init(&h->loop, sigs[i]);
        sigs[i]->data = h;
        uv_signal_start(sigs[i], hamrd_on_signal, nums[i]);
    }

    uv_run(&h->loop, UV_RUN_DEFAULT);
    bool failed = h->relay != NULL && relay_failed(h->relay);
    if (h->relay != NULL) {
        /* uv_stop after a fatal error: exit without a clean close. raft's
         * log is the truth; a restart rebuilds the state from it. */
        log_error("exiting after a fatal error");
        return 1;
    }
    uv_loop_close(&h->loop);
    config_free(cfg);
    log_info("stopped");
    return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    bool check = false;
    int rv = hamrd_args(argc, argv, &path, &check);
    if (rv != 0)
        return rv - 1;

    static struct hamr_config cfg;
    char err[1024];
    if (config_load(&cfg, path, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct privs privs;
    int prv = privs_resolve(&cfg, &privs, err, sizeof(err));
    if (check)
        return hamrd_check(&cfg, prv, err, sizeof(err));

    /* A closed peer socket must not kill the node (RAFT.md 4.3). */
    signal(SIGPIPE, SIG_IGN);
    /* raft's disk I/O shares libuv's thread pool with name lookups. */
    setenv("UV_THREADPOOL_SIZE", "8", 0);
    log_set_level((enum log_level)cfg.log_level);
    char ident[32];
    snprintf(ident, sizeof(ident), "node=%llu", (unsigned long long)cfg.node_id);
    log_set_ident(ident);

    /* Not root past this point; nothing is opened before it. */
    if (prv != 0 || privs_absolute(&cfg, err, sizeof(err)) != 0 ||
        privs_drop(&privs, &cfg, err, sizeof(err)) != 0) {
        log_error("start failed: %s", err);
        fprintf(stderr, "hamrd: %s\n", err);
        config_free(&cfg);
        return 1;
    }
    static struct hamrd h;
    return hamrd_run(&h, &cfg, &privs, err, sizeof(err));
}
