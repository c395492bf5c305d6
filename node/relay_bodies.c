/*
 * relay_bodies.c - where a node keeps message bodies: its body store on
 * disk (queue/body_store.h) behind the queue's body ops, and the fetch of
 * the bodies it lacks from its peers (node/body_fetch.h).
 *
 * The queue in memory keeps each message's envelope, recipients, body
 * length and SHA-256; the bytes are in data_dir/bodies. An Enqueue's body
 * stays in memory for RELAY_BODY_KEEP_MS after it applies (at most
 * RELAY_BODY_KEEP_BYTES of them), then is appended to the store
 * (relay_bodies_spill, write-behind): mail delivered within that second,
 * most of it when the next hop is up, is never written twice. Raft's log
 * keeps every body until a snapshot; a snapshot carries the bodies still
 * in memory, and relay_bodies_before_snapshot syncs the store before it is
 * taken, so no entry is compacted while its body is not on this node's
 * disk: a 250 always means "on a majority of disks".
 *
 * A node lacks bodies after it installs a snapshot (new, wiped, far
 * behind: from cluster level 3 snapshots carry no bodies), or when a record
 * is found corrupt. Those messages are marked missing in the queue
 * (queue_bodies_missing), every one is handed to the fetcher, which asks the
 * peers in the node directory (the leader first) and checks each body's
 * SHA-256 before it is stored. While any is missing /health/ready answers
 * 503 and hamrctl status says how many; the leader does not lease a
 * message whose body it lacks.
 *
 * Owns: r->store, r->fetch. May call: queue (body setters, find), the
 * store, the fetcher, the peer client, log; never relay.c.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "queue/body_store.h"
#include "queue/queue.h"
#include "node/body_fetch.h"
#include "node/clock.h"
#include "node/disk_guard.h"
#include "node/relay_internal.h"

/* The queue's body ops over the store. */

static int relay_body_put(void *arg,
                          const char *id,
                          const uint8_t *body,
                          size_t len,
                          const uint8_t sha[QUEUE_SHA256_LEN],
                          uint64_t *loc)
{
    struct relay *r = arg;
    int rv = body_store_put(r->store, id, body, len, sha, loc);
    if (rv != 0)
        log_error("body store write failed id=%s error=\"%s\"", id, hamr_strerror(rv));
    return rv;
}

static int relay_body_locate(void *arg,
                             const char *id,
                             size_t len,
                             const uint8_t sha[QUEUE_SHA256_LEN],
                             uint64_t *loc)
{
    struct relay *r = arg;
    return body_store_claim(r->store, id, len, sha, loc);
}

static void relay_body_release(void *arg, const char *id, uint64_t loc)
{
    struct relay *r = arg;
    (void)id;
    body_store_release(r->store, loc);
}

static long long relay_body_read(void *arg, uint64_t loc, uint64_t off, uint8_t *buf, size_t n)
{
    struct relay *r = arg;
    return (long long)body_store_pread(r->store, loc, off, buf, n);
}

int relay_bodies_open(struct relay *r, char *err, size_t errlen)
{
    char dir[1100];
    int n = snprintf(dir, sizeof(dir), "%s/bodies", r->cfg->data_dir);
    if (n < 0 || (size_t)n >= sizeof(dir)) {
        snprintf(err, errlen, "data_dir: path too long");
        return HAMR_EINVAL;
    }
    int rv = body_store_open(r->loop, dir, r->cfg->body_segment_bytes, &r->store, err, errlen);
    if (rv != 0)
        return rv;
    const struct queue_body_ops ops = {
        .arg = r,
        .put = relay_body_put,
        .locate = relay_body_locate,
        .release = relay_body_release,
        .read = relay_body_read,
        .write_behind = true,
    };
    queue_set_body_ops(r->queue, &ops);
    return 0;
}

void relay_bodies_spill(struct relay *r, bool when_over)
{
    if (r->store == NULL || r->failed)
        return;
    if (when_over && queue_body_memory(r->queue) <= RELAY_BODY_KEEP_BYTES)
        return;
    int rv = queue_body_spill(r->queue, relay_cluster_now(r), RELAY_BODY_KEEP_MS,
                              RELAY_BODY_KEEP_BYTES, RELAY_BODY_SPILL_BUDGET, NULL);
    if (rv != 0)
        relay_bodies_write_failed(r, rv);
}

/*
 * relay_bodies_write_failed - the store could not write a body (rv): stop the
 * node, as the disk guard stops it before raft's own write can fail, with the
 * guard's sentence when it finds the disk under its floor. Nothing is lost:
 * the body is still in the raft log or a snapshot (see above), and reaches
 * the store when the node starts again.
 */
void relay_bodies_write_failed(struct relay *r, int rv)
{
    char why[200];
    if (disk_guard_check(&r->disk, why, sizeof(why)) == 0)
        snprintf(why, sizeof(why),
                 "disk full: the body store could not write (%s); stopping before a raft log "
                 "write fails",
                 hamr_strerror(rv));
    relay_fail(r, why);
}

int relay_bodies_before_snapshot(struct relay *r)
{
    if (r->store == NULL)
        return 0;
    int rv = body_store_sync_now(r->store);
    if (rv != 0)
        log_error("body store sync before snapshot failed error=\"%s\"", hamr_strerror(rv));
    return rv;
}

/* The fetcher's sink: whom to ask, whether a body is still wanted, and storing it. */

static size_t relay_fetch_peers(void *data, struct body_fetch_peer *out, size_t max)
{
    struct relay *r = data;
    const struct queue_node *nodes;
    size_t n = queue_node_list(r->queue, &nodes), k = 0;
    struct consensus_info ci;
    consensus_get_info(r->cons, &ci);
    /* The leader first: it is the one most likely to have every body. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n && k < max; i++) {
            const struct queue_node *qn = &nodes[i];
            bool leader = qn->node_id == ci.leader_id;
            /* A node of a build before format 3 does not serve fetches. */
            if (qn->node_id == r->cfg->node_id || qn->peer_address[0] == '\0' ||
                qn->format_version_max < QUEUE_LEVEL_STORE || leader != (pass == 0))
                continue;
            out[k].node_id = qn->node_id;
            hamr_strlcpy(out[k].addr, qn->peer_address, sizeof(out[k].addr));
            k++;
        }
    }
    return k;
}

static bool relay_fetch_wanted(void *data, const char *id, uint64_t *len, uint8_t sha[32])
{
    struct relay *r = data;
    const struct queue_msg *m = queue_find(r->queue, id);
    if (m == NULL || !m->body_missing)
        return false;
    *len = m->body_len;
    memcpy(sha, m->body_sha256, QUEUE_SHA256_LEN);
    return true;
}

static int relay_fetch_store(void *data, const char *id, const uint8_t *body, size_t len)
{
    struct relay *r = data;
    const struct queue_msg *m = queue_find(r->queue, id);
    if (m == NULL || !m->body_missing)
        return 0; /* gone or found meanwhile */
    uint64_t loc;
    int rv = body_store_put(r->store, id, body, len, m->body_sha256, &loc);
    if (rv != 0) {
        char why[160];
        snprintf(why, sizeof(why), "body store write failed: %s", hamr_strerror(rv));
        relay_fail(r, why);
        return rv;
    }
    (void)queue_body_found(r->queue, id, loc);
    log_info("body fetched id=%s bytes=%zu missing=%zu", id, len, queue_bodies_missing(r->queue));
    relay_sched_kick(r);
    return 0;
}

/* relay_bodies_want_one - queue_foreach: hand a missing body to the fetcher. */
static int relay_bodies_want_one(void *arg, const struct queue_msg *m)
{
    struct relay *r = arg;
    if (m->body_missing)
        relay_bodies_want(r, m);
    return 0;
}

void relay_bodies_want(struct relay *r, const struct queue_msg *m)
{
    if (r->fetch == NULL || !m->body_missing)
        return;
    (void)body_fetch_want(r->fetch, m->id, m->body_len, m->body_sha256);
}

void relay_bodies_restored(struct relay *r)
{
    size_t missing = queue_bodies_missing(r->queue);
    if (missing == 0)
        return;
    log_warn("bodies missing after a snapshot restore count=%zu action=fetching from peers",
             missing);
    queue_foreach(r->queue, relay_bodies_want_one, r);
}

int relay_bodies_start(struct relay *r, char *err, size_t errlen)
{
    /* The log replayed what it had; what nothing claimed may go. */
    body_store_claims_done(r->store);
    if (r->peer_cli == NULL) {
        if (queue_bodies_missing(r->queue) > 0)
            log_error("bodies missing count=%zu and no [listen] peer to fetch them with",
                      queue_bodies_missing(r->queue));
        return 0;
    }
    const struct body_fetch_sink sink = {
        .data = r,
        .peers = relay_fetch_peers,
        .wanted = relay_fetch_wanted,
        .store = relay_fetch_store,
    };
    r->fetch = body_fetch_new(r->loop, r->peer_cli, &sink);
    if (r->fetch == NULL) {
        snprintf(err, errlen, "out of memory");
        return HAMR_ENOMEM;
    }
    relay_bodies_restored(r);
    return 0;
}

/* The body fetch server: what this node has, for a peer that lacks it. */

static int relay_serve_lookup(void *data, const char *id, uint64_t *len, uint8_t sha[32])
{
    struct relay *r = data;
    const struct queue_msg *m = queue_find(r->queue, id);
    if (m == NULL || m->body_missing ||
        (m->body_len > 0 && !m->body_stored && queue_msg_body(m) == NULL))
        return HAMR_ENOTFOUND;
    *len = m->body_len;
    memcpy(sha, m->body_sha256, QUEUE_SHA256_LEN);
    return 0;
}

/*
 * relay_serve_read - a chunk for a peer: from memory at once, or from the
 * store in the thread pool (a cold body read on the loop would stall raft
 * and every SMTP session for as long as the disk takes).
 */
static void relay_serve_read(void *data,
                             const char *id,
                             uint64_t off,
                             uint8_t *buf,
                             size_t n,
                             body_fetch_read_cb done,
                             void *arg)
{
    struct relay *r = data;
    const struct queue_msg *m = queue_find(r->queue, id);
    if (m == NULL || m->body_missing) {
        done(arg, HAMR_ENOTFOUND);
        return;
    }
    if (off >= m->body_len) {
        done(arg, 0);
        return;
    }
    size_t k = m->body_len - off < n ? (size_t)(m->body_len - off) : n;
    if (queue_msg_body(m) != NULL) {
        memcpy(buf, queue_msg_body(m) + off, k);
        done(arg, (ssize_t)k);
        return;
    }
    if (!m->body_stored || r->store == NULL) {
        done(arg, r->store == NULL ? HAMR_ESHUTDOWN : HAMR_ENOTFOUND);
        return;
    }
    int rv = body_store_read_range(r->store, m->body_loc, id, m->body_len, m->body_sha256, off, buf,
                                   k, done, arg);
    if (rv != 0)
        done(arg, rv);
    /* Asynchronous processing: the store calls done from the loop. */
}

/* relay_serve_refused - a fetch the peer policy refused: counted with the other refusals. */
static void relay_serve_refused(void *data, enum peer_policy_reason why)
{
    struct relay *r = data;
    metrics_inc_label(r->metrics, METRICS_PEER_REFUSED, why);
}

/* relay_bodies_serve_call - the peer server's fetch handler: any node may read. */
void relay_bodies_serve_call(void *data, struct peer_call *call, const Hamr__PeerFetch *req)
{
    const struct body_fetch_source src = {.data = data,
                                          .lookup = relay_serve_lookup,
                                          .read = relay_serve_read,
                                          .refused = relay_serve_refused};
    body_fetch_serve(&src, call, req);
}

/* Reading a body for a delivery. */

void relay_bodies_corrupt(struct relay *r, const char *id, int status)
{
    log_error("body unreadable id=%s error=\"%s\" action=fetching from a peer", id,
              hamr_strerror(status));
    if (queue_body_lost(r->queue, id) != 0)
        return;
    const struct queue_msg *m = queue_find(r->queue, id);
    if (m != NULL)
        relay_bodies_want(r, m);
}

void relay_bodies_close(struct relay *r, void (*cb)(void *arg), void *arg)
{
    if (r->store == NULL) {
        cb(arg);
        return;
    }
    struct body_store *s = r->store;
    r->store = NULL;
    body_store_close(s, cb, arg);
}
