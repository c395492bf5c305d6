/*
 * directory.h - the node directory: where every node of the cluster can be
 * reached, kept in the replicated state (NodeInfo entries), and the cluster
 * feature level derived from it.
 *
 * Owns: this node's own NodeInfo (its peer and control addresses, version,
 * the newest entry format it can apply, whether it is draining, its zone)
 * and when to publish it again (once after start, by a leader once per
 * term, when the draining flag changes, and once the cluster level reaches
 * QUEUE_LEVEL_SPREAD while the directory lacks its zone); the ClusterLevel entry a leader commits
 * once every voter can apply a newer format (rolling upgrades).
 *
 * May call: the proposer (to publish), raft's view (consensus_*: leader,
 * term, voters), the queue's node table (read only).
 */
#ifndef HAMR_NODE_DIRECTORY_H
#define HAMR_NODE_DIRECTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/zone.h"
#include "consensus/consensus.h"

struct queue;
struct proposer;

struct directory_self {
    uint64_t node_id;
    char peer_address[CONSENSUS_ADDR_MAX]; /* "" on a node without a peer listener */
    char control_address[CONSENSUS_ADDR_MAX];
    const char *version; /* static */
    uint64_t proposal_timeout_ms;
    char zone[ZONE_NAME_MAX]; /* [node] zone, "" for none */
};

struct directory;

/* directory_new - the directory of this node (self copied); NULL if out of memory. */
struct directory *directory_new(const struct directory_self *self,
                                struct consensus *cons,
                                struct queue *queue,
                                struct proposer *prop);

/*
 * directory_tick - publish our NodeInfo if it is due (draining: the flag it
 * must carry) and, on a leader, raise the cluster level if every voter can.
 */
void directory_tick(struct directory *d, bool draining);

/* directory_peer_address - node's peer address from its NodeInfo; 0 or HAMR_ENOTFOUND. */
int directory_peer_address(const struct directory *d, uint64_t node, char *addr, size_t addrlen);

/* directory_control_address - node's control address, "" if unknown (borrowed). */
const char *directory_control_address(const struct directory *d, uint64_t node);

/* directory_draining - node's draining flag from its last NodeInfo (false if unknown). */
bool directory_draining(const struct directory *d, uint64_t node);

/* directory_zone - node's zone from its last NodeInfo, "" if unknown or none (borrowed). */
const char *directory_zone(const struct directory *d, uint64_t node);

/* directory_self - what this node publishes about itself. */
const struct directory_self *directory_self(const struct directory *d);

/* directory_free - after the proposer has answered everything. Returns NULL. */
struct directory *directory_free(struct directory *d);

/*
 * directory_set_clock - stamp the entries we write with now(data) (the
 * cluster time, node/cluster_clock.h) instead of the wall clock.
 */
void directory_set_clock(struct directory *d, uint64_t (*now)(void *data), void *data);

#endif
