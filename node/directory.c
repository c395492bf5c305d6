/*
 * directory.c - the node directory: this node's NodeInfo, the addresses of
 * the others, and the cluster feature level.
 *
 * NodeInfo is published through the proposer like any entry: after start
 * (through whichever node leads, so that followers can name us the moment we
 * win an election), by a leader again once per term, and whenever the
 * draining flag changes. Only one is in flight at a time; one that does not
 * commit is tried again at the next tick.
 *
 * The zone ([node] zone) is kept by the replicated directory only from
 * cluster level QUEUE_LEVEL_SPREAD on (queue_node.c): a NodeInfo published
 * before the cluster was upgraded carried it in vain. So once the level is
 * there and the directory does not hold our zone, we publish again, and the
 * zones of upgraded clusters appear without a restart.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "consensus/consensus.h"
#include "node/clock.h"
#include "node/directory.h"
#include "node/proposer.h"

struct directory {
    struct directory_self self;
    struct consensus *cons;
    struct queue *queue;
    struct proposer *prop;
    uint64_t info_term; /* term in which our NodeInfo committed as leader */
    uint64_t sent_term;
    bool sent_ready;
    bool boot_done; /* our NodeInfo committed since this process started */
    bool draining;  /* the draining flag of our last committed NodeInfo */
    bool sent_draining;
    bool info_in_flight;
    bool level_in_flight;        /* a ClusterLevel proposal is out */
    uint64_t (*now)(void *data); /* the time entries are stamped with; NULL: the wall clock */
    void *now_data;
};

/* directory_now - the timestamp of an entry we write now. */
static uint64_t directory_now(const struct directory *d)
{
    return d->now != NULL ? d->now(d->now_data) : clock_wall_ms();
}

/* directory_info_done - our NodeInfo committed (followers can forward to us). */
static void directory_info_done(void *arg, int status, intptr_t result)
{
    struct directory *d = arg;
    d->info_in_flight = false;
    if (status == 0 && result == 0) {
        d->boot_done = true;
        d->draining = d->sent_draining;
        if (d->sent_ready)
            d->info_term = d->sent_term;
    } else
        log_warn("node info not committed error=\"%s\"",
                 hamr_strerror(status ? status : (int)result));
}

/* directory_zone_due - our zone is set, the level keeps zones, and the directory lacks it. */
static bool directory_zone_due(const struct directory *d)
{
    if (d->self.zone[0] == '\0' || queue_cluster_level(d->queue) < QUEUE_LEVEL_SPREAD)
        return false;
    const struct queue_node *n = queue_node_find(d->queue, d->self.node_id);
    return n == NULL || strcmp(n->zone, d->self.zone) != 0;
}

/* directory_publish - write our NodeInfo if it is due. */
static void directory_publish(struct directory *d, bool draining)
{
    if (d->info_in_flight)
        return;
    bool ready = consensus_is_ready(d->cons);
    uint64_t term = consensus_term(d->cons);
    bool need = !d->boot_done || (ready && d->info_term != term) || d->draining != draining ||
                directory_zone_due(d);
    if (!need || !proposer_leader_known(d->prop))
        return;
    struct queue_entry_node_info_args ni = {
        .node_id = d->self.node_id,
        .peer_address = d->self.peer_address,
        .control_address = d->self.control_address,
        .version = d->self.version,
        .format_version_max = PROTO_FORMAT_VERSION_MAX,
        .draining = draining,
        .zone = d->self.zone,
    };
    uint8_t *buf;
    size_t len;
    if (queue_entry_node_info(&ni, directory_now(d), consensus_malloc, &buf, &len) != 0)
        return;
    d->sent_ready = ready;
    d->sent_term = term;
    d->sent_draining = draining;
    if (proposer_send_packed(d->prop, buf, len, d->self.proposal_timeout_ms, directory_info_done,
                             d) == 0)
        d->info_in_flight = true;
}

/* directory_level_done - a ClusterLevel entry committed (or not). */
static void directory_level_done(void *arg, int status, intptr_t result)
{
    struct directory *d = arg;
    d->level_in_flight = false;
    if (status != 0 || result < 0)
        log_warn("cluster level not raised error=\"%s\"",
                 hamr_strerror(status ? status : (int)result));
    else
        log_info("cluster feature level is now %u", queue_cluster_level(d->queue));
}

/*
 * directory_raise_level - leader: once every voter has published a NodeInfo
 * saying it can apply format N, commit cluster level N. Entry kinds added
 * after format 1 are written only at a level that allows them, so a node
 * that is not yet upgraded never meets one (rolling upgrades).
 */
static void directory_raise_level(struct directory *d)
{
    if (d->level_in_flight || !consensus_is_ready(d->cons) ||
        d->info_term != consensus_term(d->cons))
        return;
    struct consensus_info info;
    consensus_get_info(d->cons, &info);
    uint64_t voters[CONSENSUS_MAX_MEMBERS];
    size_t n = 0;
    for (size_t i = 0; i < info.n_members; i++)
        if (info.roles[i] == CONSENSUS_ROLE_VOTER)
            voters[n++] = info.members[i].id;
    uint32_t possible = queue_cluster_level_possible(d->queue, voters, n);
    if (possible > PROTO_FORMAT_VERSION_MAX)
        possible = PROTO_FORMAT_VERSION_MAX;
    if (possible <= queue_cluster_level(d->queue))
        return;
    uint8_t *buf;
    size_t len;
    if (queue_entry_cluster_level(possible, directory_now(d), consensus_malloc, &buf, &len) != 0)
        return;
    if (proposer_append_packed(d->prop, buf, len, d->self.proposal_timeout_ms, directory_level_done,
                               d) == 0)
        d->level_in_flight = true;
}

void directory_tick(struct directory *d, bool draining)
{
    directory_publish(d, draining);
    directory_raise_level(d);
}

int directory_peer_address(const struct directory *d, uint64_t node, char *addr, size_t addrlen)
{
    const struct queue_node *n = queue_node_find(d->queue, node);
    if (n == NULL || n->peer_address[0] == '\0')
        return HAMR_ENOTFOUND;
    hamr_strlcpy(addr, n->peer_address, addrlen);
    return 0;
}

const char *directory_control_address(const struct directory *d, uint64_t node)
{
    const struct queue_node *n = node != 0 ? queue_node_find(d->queue, node) : NULL;
    return n != NULL ? n->control_address : "";
}

bool directory_draining(const struct directory *d, uint64_t node)
{
    const struct queue_node *n = queue_node_find(d->queue, node);
    return n != NULL && n->draining;
}

const char *directory_zone(const struct directory *d, uint64_t node)
{
    const struct queue_node *n = queue_node_find(d->queue, node);
    return n != NULL ? n->zone : "";
}

const struct directory_self *directory_self(const struct directory *d)
{
    return &d->self;
}

struct directory *directory_new(const struct directory_self *self,
                                struct consensus *cons,
                                struct queue *queue,
                                struct proposer *prop)
{
    struct directory *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->self = *self;
    d->cons = cons;
    d->queue = queue;
    d->prop = prop;
    return d;
}

void directory_set_clock(struct directory *d, uint64_t (*now)(void *data), void *data)
{
    d->now = now;
    d->now_data = data;
}

struct directory *directory_free(struct directory *d)
{
    free(d);
    return NULL;
}
