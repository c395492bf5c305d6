/*
 * peer_policy.h - what a node takes from another node over the peer
 * channel. A follower forwards only what it may ask the leader to commit:
 *
 *   Enqueue   a message it accepted itself (accepted_by is the caller), with
 *             an envelope that could have come from an SMTP session: a queue
 *             id, one to recipient_limit recipients, a body within the size
 *             limit (plus room for our Received: header), never a DSN (DSNs
 *             are made inside apply);
 *   NodeInfo  its own (node_id is the caller), never the leader's;
 *   Outcome   for a lease the caller holds (every result's recipient is
 *             leased under outcome.lease_id to the caller): the results of a
 *             delivery it ran while it led, sent on after it lost leadership.
 *   StsPolicy from cluster level 6 (QUEUE_LEVEL_SPREAD), when any node
 *             delivers: the MTA-STS policy its fetch brought, for every node
 *             to enforce (node/relay_sts.c). Any node of the cluster may so
 *             set a domain's policy, as the leader may: the nodes are
 *             trusted alike. Apply refuses a malformed one.
 *
 * Never Admin, Lease, ClusterLevel, nor an Outcome without a lease (lease 0
 * marks PENDING recipients done: only the leader's own scheduler writes
 * those). Every refusal is logged with its reason and counted.
 *
 * Any node (leader or not) serves a PeerFetch, one chunk of a message body,
 * to any node of the cluster that names itself (peer_policy_fetch): it only
 * reads, and every node holds the same queue, so there is nothing one node
 * may read that another may not. Even a caller that claims to be this node
 * is served (with cluster TLS only this node holds that certificate; in
 * plaintext the claim proves nothing either way). Checked: a caller at all
 * (node 0: no certificate nor hello), a queue id of 1 to QUEUE_ID_MAX - 1
 * bytes (PEER_POLICY_ENVELOPE), max at least 1 (PEER_POLICY_SIZE; a larger
 * max than the server's chunk is capped there, not refused, so a peer with
 * a larger chunk still gets served). The offset is checked against the
 * body's length where that is known (node/body_fetch.c).
 *
 * The caller's node id is peer_call_node's: with cluster TLS the node its
 * certificate names (node/peer.c closes a connection whose hello says
 * otherwise), so a node cannot forward as another; in plaintext mode the
 * hello's, taken on trust.
 *
 * Owns: nothing. May call: the queue (read), the decoded entry; pure.
 */
#ifndef HAMR_NODE_PEER_POLICY_H
#define HAMR_NODE_PEER_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "proto/hamr.pb-c.h"

struct queue;

enum peer_policy_reason {
    PEER_POLICY_OK = 0,
    PEER_POLICY_KIND,     /* an entry kind no peer may forward */
    PEER_POLICY_IDENTITY, /* names another node than the caller */
    PEER_POLICY_ENVELOPE, /* not an envelope an SMTP session makes */
    PEER_POLICY_SIZE,     /* over the size limit */
    PEER_POLICY_LEASE,    /* not under a lease the caller holds */
    PEER_POLICY_REASONS
};

struct peer_policy_limits {
    uint64_t self;               /* this node's id: nobody forwards as us */
    uint64_t message_size_limit; /* [smtpd] message_size_limit */
    size_t recipient_limit;      /* [smtpd] recipient_limit */
};

/*
 * PEER_POLICY_HEADER_ROOM - what a node adds to a message's body: our
 * Received: header, and a DKIM-Signature: field (under DKIM_HEADER_MAX,
 * about 1 KiB in practice).
 */
#define PEER_POLICY_HEADER_ROOM (16 * 1024)

/* peer_policy_check - may node `from` have e committed? PEER_POLICY_OK or why not. */
enum peer_policy_reason peer_policy_check(const Hamr__Entry *e,
                                          uint64_t from,
                                          const struct queue *q,
                                          const struct peer_policy_limits *lim);

/* peer_policy_fetch - may node `from` read this chunk of a body? PEER_POLICY_OK or why not. */
enum peer_policy_reason peer_policy_fetch(const Hamr__PeerFetch *f, uint64_t from);

/* peer_policy_reason_name - a word for logs and the metric label. */
const char *peer_policy_reason_name(enum peer_policy_reason r);

#endif
