/*
 * queue_node.c - the replicated node directory (NodeInfo entries: where each
 * node listens, which version it runs, whether it drains, its zone from
 * cluster level 6) and the cluster
 * feature level (ClusterLevel entries), as specified in queue.h. Applying
 * the entries is in queue_apply.c; this file keeps the directory and
 * answers about it.
 *
 * Errors: queue_node_put returns HAMR_EINVAL (bad entry) or HAMR_ETOOBIG
 * (directory full).
 */
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "util/zone.h"
#include "queue/internal.h"
#include "queue/queue.h"

/* queue_node_text_ok - a directory string: fits and is printable. */
static bool queue_node_text_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n >= max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

/* queue_node_put - insert or replace the entry of ni->node_id, keeping the order. */
int queue_node_put(struct queue *q, const Hamr__NodeInfo *ni, uint32_t level, uint64_t ts)
{
    if (ni == NULL || ni->node_id == 0 || !queue_node_text_ok(ni->peer_address, QUEUE_ADDR_MAX) ||
        !queue_node_text_ok(ni->control_address, QUEUE_ADDR_MAX) ||
        !queue_node_text_ok(ni->version, sizeof(q->nodes[0].version)))
        return HAMR_EINVAL;
    /* Format 6: an older build neither keeps nor checks the field. */
    const char *zone = level >= QUEUE_LEVEL_SPREAD && ni->zone != NULL ? ni->zone : "";
    if (zone[0] != '\0' && !zone_name_ok(zone))
        return HAMR_EINVAL;
    size_t i = 0;
    while (i < q->n_nodes && q->nodes[i].node_id < ni->node_id)
        i++;
    if (i == q->n_nodes || q->nodes[i].node_id != ni->node_id) {
        if (q->n_nodes == QUEUE_NODES_MAX)
            return HAMR_ETOOBIG;
        memmove(&q->nodes[i + 1], &q->nodes[i], (q->n_nodes - i) * sizeof(q->nodes[0]));
        q->n_nodes++;
    }
    struct queue_node *n = &q->nodes[i];
    memset(n, 0, sizeof(*n));
    n->node_id = ni->node_id;
    hamr_strlcpy(n->peer_address, ni->peer_address, sizeof(n->peer_address));
    hamr_strlcpy(n->control_address, ni->control_address, sizeof(n->control_address));
    hamr_strlcpy(n->version, ni->version, sizeof(n->version));
    n->format_version_max = ni->format_version_max;
    n->draining = ni->draining;
    hamr_strlcpy(n->zone, zone, sizeof(n->zone));
    return 0;
}

const struct queue_node *queue_node_find(const struct queue *q, uint64_t node_id)
{
    for (size_t i = 0; i < q->n_nodes; i++)
        if (q->nodes[i].node_id == node_id)
            return &q->nodes[i];
    return NULL;
}

size_t queue_node_list(const struct queue *q, const struct queue_node **out)
{
    *out = q->nodes;
    return q->n_nodes;
}

/* queue_set_format_max - the highest level q applies (a test seam, see queue.h). */
void queue_set_format_max(struct queue *q, uint32_t max)
{
    q->format_max = max > 0 ? max : 1;
}

/* queue_cluster_level - the replicated feature level. */
uint32_t queue_cluster_level(const struct queue *q)
{
    return q->cluster_level;
}

/* queue_cluster_level_possible - least format_version_max of the voters; 0 if one is unknown. */
uint32_t queue_cluster_level_possible(const struct queue *q,
                                      const uint64_t *voters,
                                      size_t n_voters)
{
    if (n_voters == 0)
        return 0;
    uint32_t level = UINT32_MAX;
    for (size_t i = 0; i < n_voters; i++) {
        const struct queue_node *n = queue_node_find(q, voters[i]);
        if (n == NULL)
            return 0;
        if (n->format_version_max < level)
            level = n->format_version_max;
    }
    return level;
}
