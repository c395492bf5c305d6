/*
 * peer_forge.c - a member of the cluster gone bad: send the leader, over the
 * real peer channel, an entry a node may not forward, and print its answer.
 * Used by the cluster tests of what a leader takes from a peer
 * (node/peer_policy.h).
 *
 *   peer_forge ADDR AS_NODE admin-delete QUEUE_ID
 *   peer_forge ADDR AS_NODE nodeinfo NODE PEER_ADDR     (NODE's directory entry)
 *   peer_forge ADDR AS_NODE outcome-delivered QUEUE_ID  (lease 0: "delivered")
 *   peer_forge ADDR AS_NODE lease QUEUE_ID
 *   peer_forge ADDR AS_NODE cluster-level LEVEL
 *   peer_forge ADDR AS_NODE enqueue-as NODE             (accepted_by NODE)
 *
 * AS_NODE is the id the hello names. Over cluster TLS, options first:
 *
 *   peer_forge --ca CA.pem --cert CERT.pem --key KEY.pem --to NODE ADDR AS_NODE ...
 *
 * presents CERT (a member's, or a stranger's: an operator's, or one of
 * another CA with that CA as CA.pem) and checks that ADDR is node NODE (the
 * leader).
 *
 * Prints "status=N name" (the leader's answer; 0 = committed; else the
 * channel's error, e.g. -14 when the connection was refused) and exits 0
 * when an answer came, 1 when none did, 2 on bad usage.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "util/err.h"
#include "proto/hamr.pb-c.h"
#include "queue/queue_entry.h"
#include "net/cluster_tls.h"
#include "node/peer.h"

struct forge {
    struct peer_client *cli;
    int status;
    bool answered;
};

static void forge_closed(void *arg)
{
    (void)arg;
}

static void forge_done(void *arg, int status, const Hamr__PeerResult *res)
{
    struct forge *f = arg;
    f->answered = status == 0;
    f->status = status == 0 ? res->status : status;
    peer_client_close(f->cli, forge_closed, NULL);
}

/* forge_entry - the entry kind argv names; 0 or HAMR_EINVAL. */
static int forge_entry(int argc, char **argv, uint8_t **buf, size_t *len)
{
    const char *kind = argv[3];
    const char *a = argc > 4 ? argv[4] : "";
    uint64_t now = 1;
    if (strcmp(kind, "admin-delete") == 0 && argc == 5)
        return queue_entry_admin(QUEUE_ENTRY_ADMIN_DELETE, a, "forge", 0, now, NULL, buf, len);
    if (strcmp(kind, "nodeinfo") == 0 && argc == 6) {
        struct queue_entry_node_info_args ni = {.node_id = strtoull(a, NULL, 10),
                                                .peer_address = argv[5],
                                                .control_address = argv[5],
                                                .version = "forge",
                                                .format_version_max = 1};
        return queue_entry_node_info(&ni, now, NULL, buf, len);
    }
    if (strcmp(kind, "outcome-delivered") == 0 && argc == 5) {
        struct queue_entry_result r = {.rcpt_index = 0,
                                       .status = QUEUE_ENTRY_DELIVERED,
                                       .smtp_code = 250,
                                       .diagnostic = "forged"};
        struct queue_entry_outcome_args oc = {
            .queue_id = a, .lease_id = 0, .results = &r, .n_results = 1, .reporter = "forge"};
        return queue_entry_outcome(&oc, now, NULL, buf, len);
    }
    if (strcmp(kind, "lease") == 0 && argc == 5) {
        uint32_t idx = 0;
        struct queue_entry_lease_item it = {.queue_id = a,
                                            .rcpt_indexes = &idx,
                                            .n_rcpts = 1,
                                            .lease_id = 424242,
                                            .destination = "forge"};
        struct queue_entry_lease_args l = {.node_id = strtoull(argv[2], NULL, 10),
                                           .term = 1,
                                           .expires_at_ms = UINT64_MAX / 2,
                                           .boot_id = "forge",
                                           .items = &it,
                                           .n_items = 1};
        return queue_entry_lease(&l, now, NULL, buf, len);
    }
    if (strcmp(kind, "cluster-level") == 0 && argc == 5)
        return queue_entry_cluster_level((uint32_t)strtoul(a, NULL, 10), now, NULL, buf, len);
    if (strcmp(kind, "enqueue-as") == 0 && argc == 5) {
        const char *rc[] = {"victim@example.com"};
        struct queue_entry_enqueue_args m = {.queue_id = "FORGED0000000000001",
                                             .sender = "forge@example.org",
                                             .rcpts = rc,
                                             .n_rcpts = 1,
                                             .body = (const uint8_t *)"forged\r\n",
                                             .body_len = 8,
                                             .expires_at_ms = UINT64_MAX / 2,
                                             .accepted_by = strtoull(a, NULL, 10)};
        return queue_entry_enqueue(&m, now, NULL, buf, len);
    }
    return HAMR_EINVAL;
}

/* forge_tls - the client's contexts from --ca/--cert/--key; NULL (told why) if they do not load. */
static struct cluster_tls *forge_tls(const char *ca, const char *cert, const char *key)
{
    char err[512] = "";
    struct cluster_tls_files files = {.ca = ca, .cert = cert, .key = key};
    struct cluster_tls *c = NULL;
    if (cluster_tls_new(&files, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "peer_forge: %s\n", err);
        return NULL;
    }
    return c;
}

int main(int argc, char **argv)
{
    uint8_t *entry = NULL;
    size_t len = 0;
    const char *ca = NULL, *cert = NULL, *key = NULL;
    uint64_t to = 0;
    while (argc > 2 && strncmp(argv[1], "--", 2) == 0) {
        if (strcmp(argv[1], "--ca") == 0)
            ca = argv[2];
        else if (strcmp(argv[1], "--cert") == 0)
            cert = argv[2];
        else if (strcmp(argv[1], "--key") == 0)
            key = argv[2];
        else if (strcmp(argv[1], "--to") == 0)
            to = strtoull(argv[2], NULL, 10);
        else
            break;
        argv += 2;
        argc -= 2;
    }
    if (argc < 4 || forge_entry(argc, argv, &entry, &len) != 0 ||
        (ca != NULL && (cert == NULL || key == NULL || to == 0))) {
        fprintf(stderr,
                "usage: peer_forge [--ca F --cert F --key F --to NODE] ADDR AS_NODE KIND "
                "ARGS... (see the source)\n");
        free(entry);
        return 2;
    }
    struct cluster_tls *ctls = NULL;
    if (ca != NULL && (ctls = forge_tls(ca, cert, key)) == NULL) {
        free(entry);
        return 2;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct forge f = {.status = HAMR_ETIMEDOUT};
    f.cli = peer_client_new(&loop, strtoull(argv[2], NULL, 10), "forge", ctls);
    Hamr__PeerPropose pp = HAMR__PEER_PROPOSE__INIT;
    pp.entry.data = entry;
    pp.entry.len = len;
    Hamr__PeerMsg msg = HAMR__PEER_MSG__INIT;
    msg.body_case = HAMR__PEER_MSG__BODY_PROPOSE;
    msg.propose = &pp;
    int rv = f.cli == NULL ? HAMR_ENOMEM
                           : peer_client_call(f.cli, to, argv[1], &msg, 10000, forge_done, &f);
    free(entry);
    if (rv != 0) {
        fprintf(stderr, "peer_forge: %s\n", hamr_strerror(rv));
        cluster_tls_free(ctls);
        return 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    cluster_tls_free(ctls);
    printf("status=%d %s\n", f.status, f.status ? hamr_strerror(f.status) : "committed");
    return f.answered ? 0 : 1;
}
