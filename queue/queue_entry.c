/*
 * queue_entry.c - build and pack the log entries that queue_apply.c decodes
 * (see queue_entry.h), so that the encoding of each kind sits in the folder
 * that applies it and node/ never fills protobuf structs by hand.
 *
 * The protobuf structs are built over the caller's arguments (nothing is
 * copied but the arrays of sub-messages an Outcome or a Lease needs), then
 * packed with the caller's allocator. No clock: the timestamp is an
 * argument.
 *
 * Errors: HAMR_ENOMEM, HAMR_ETOOBIG (proto_entry_pack).
 */
#include <stdlib.h>

#include "util/err.h"
#include "proto/proto_frame.h"
#include "queue/internal.h"
#include "queue/queue_entry.h"

_Static_assert((int)QUEUE_ENTRY_DELIVERED == HAMR__RCPT_RESULT__STATUS__DELIVERED &&
                   (int)QUEUE_ENTRY_DEFERRED == HAMR__RCPT_RESULT__STATUS__DEFERRED &&
                   (int)QUEUE_ENTRY_BOUNCED == HAMR__RCPT_RESULT__STATUS__BOUNCED &&
                   (int)QUEUE_ENTRY_EXPIRED == HAMR__RCPT_RESULT__STATUS__EXPIRED,
               "queue_entry_status follows RcptResult.Status");
_Static_assert((int)QUEUE_STS_NONE == HAMR__STS_POLICY__MODE__NONE &&
                   (int)QUEUE_STS_TESTING == HAMR__STS_POLICY__MODE__TESTING &&
                   (int)QUEUE_STS_ENFORCE == HAMR__STS_POLICY__MODE__ENFORCE,
               "queue_sts_mode follows StsPolicy.Mode");
_Static_assert((int)QUEUE_ENTRY_ADMIN_DELETE == HAMR__ADMIN__OP__DELETE &&
                   (int)QUEUE_ENTRY_ADMIN_HOLD == HAMR__ADMIN__OP__HOLD &&
                   (int)QUEUE_ENTRY_ADMIN_RELEASE == HAMR__ADMIN__OP__RELEASE &&
                   (int)QUEUE_ENTRY_ADMIN_FLUSH == HAMR__ADMIN__OP__FLUSH &&
                   (int)QUEUE_ENTRY_ADMIN_BOUNCE == HAMR__ADMIN__OP__BOUNCE,
               "queue_entry_admin_op follows Admin.Op");

/* queue_entry_text - a borrowed string for a protobuf field ("" for NULL). */
static char *queue_entry_text(const char *s)
{
    return (char *)(s ? s : "");
}

/* queue_entry_pack - stamp e with ts and pack it into a buffer from alloc. */
static int queue_entry_pack(Hamr__Entry *e,
                            uint64_t ts,
                            void *(*alloc)(size_t),
                            uint8_t **out,
                            size_t *len)
{
    e->timestamp_ms = ts;
    return proto_entry_pack(e, alloc, out, len);
}

/* queue_entry_enqueue - an Enqueue with the body's SHA-256 (queue_sha256, as apply checks). */
int queue_entry_enqueue(const struct queue_entry_enqueue_args *a,
                        uint64_t ts,
                        void *(*alloc)(size_t),
                        uint8_t **out,
                        size_t *len)
{
    uint8_t sha[QUEUE_SHA256_LEN];
    if (!queue_sha256(a->body, a->body_len, sha))
        return HAMR_ENOMEM;
    Hamr__Enqueue enq = HAMR__ENQUEUE__INIT;
    enq.queue_id = queue_entry_text(a->queue_id);
    enq.sender = queue_entry_text(a->sender);
    enq.n_rcpts = a->n_rcpts;
    enq.rcpts = (char **)a->rcpts;
    enq.body.data = (uint8_t *)a->body;
    enq.body.len = a->body_len;
    enq.expires_at_ms = a->expires_at_ms;
    enq.is_dsn = a->is_dsn;
    enq.body_sha256.data = sha;
    enq.body_sha256.len = sizeof(sha);
    enq.client_addr = queue_entry_text(a->client_addr);
    enq.helo = queue_entry_text(a->helo);
    enq.accepted_by = a->accepted_by;
    enq.body_8bit = a->body_8bit;
    enq.smtputf8 = a->smtputf8;
    enq.requiretls = a->requiretls;
    enq.tls_optional = a->tls_optional;
    enq.ret = a->ret;
    enq.envid = queue_entry_text(a->envid);
    if (a->notify != NULL) {
        enq.n_notify = a->n_rcpts;
        enq.notify = (uint32_t *)a->notify;
    }
    if (a->orcpt != NULL) {
        enq.n_orcpt = a->n_rcpts;
        enq.orcpt = (char **)a->orcpt;
    }
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_ENQUEUE;
    e.enqueue = &enq;
    return queue_entry_pack(&e, ts, alloc, out, len);
}

/* queue_entry_lease - a Lease; the items are built in two arrays freed before return. */
int queue_entry_lease(const struct queue_entry_lease_args *a,
                      uint64_t ts,
                      void *(*alloc)(size_t),
                      uint8_t **out,
                      size_t *len)
{
    size_t n = a->n_items;
    Hamr__LeaseItem *items = calloc(n ? n : 1, sizeof(*items));
    Hamr__LeaseItem **ip = calloc(n ? n : 1, sizeof(*ip));
    int rv = HAMR_ENOMEM;
    if (items != NULL && ip != NULL) {
        for (size_t i = 0; i < n; i++) {
            const struct queue_entry_lease_item *it = &a->items[i];
            hamr__lease_item__init(&items[i]);
            items[i].queue_id = queue_entry_text(it->queue_id);
            items[i].n_rcpt_indexes = it->n_rcpts;
            items[i].rcpt_indexes = (uint32_t *)it->rcpt_indexes;
            items[i].lease_id = it->lease_id;
            items[i].destination = queue_entry_text(it->destination);
            ip[i] = &items[i];
        }
        Hamr__Lease lease = HAMR__LEASE__INIT;
        lease.node_id = a->node_id;
        lease.term = a->term;
        lease.expires_at_ms = a->expires_at_ms;
        lease.n_items = n;
        lease.items = ip;
        lease.boot_id = queue_entry_text(a->boot_id);
        Hamr__Entry e = HAMR__ENTRY__INIT;
        e.cmd_case = HAMR__ENTRY__CMD_LEASE;
        e.lease = &lease;
        rv = queue_entry_pack(&e, ts, alloc, out, len);
    }
    free(items);
    free(ip);
    return rv;
}

int queue_entry_lease_renew(const struct queue_entry_lease_renew_args *a,
                            uint64_t ts,
                            void *(*alloc)(size_t),
                            uint8_t **out,
                            size_t *len)
{
    size_t n = a->n_items;
    Hamr__LeaseRenewItem *items = calloc(n ? n : 1, sizeof(*items));
    Hamr__LeaseRenewItem **ip = calloc(n ? n : 1, sizeof(*ip));
    int rv = HAMR_ENOMEM;
    if (items != NULL && ip != NULL) {
        for (size_t i = 0; i < n; i++) {
            hamr__lease_renew_item__init(&items[i]);
            items[i].queue_id = queue_entry_text(a->items[i].queue_id);
            items[i].lease_id = a->items[i].lease_id;
            ip[i] = &items[i];
        }
        Hamr__LeaseRenew lr = HAMR__LEASE_RENEW__INIT;
        lr.node_id = a->node_id;
        lr.boot_id = queue_entry_text(a->boot_id);
        lr.expires_at_ms = a->expires_at_ms;
        lr.asked_mono_ms = a->asked_mono_ms;
        lr.n_items = n;
        lr.items = ip;
        Hamr__Entry e = HAMR__ENTRY__INIT;
        e.cmd_case = HAMR__ENTRY__CMD_LEASE_RENEW;
        e.lease_renew = &lr;
        rv = queue_entry_pack(&e, ts, alloc, out, len);
    }
    free(items);
    free(ip);
    return rv;
}

/* queue_entry_outcome - an Outcome; the results are built in two arrays freed before return. */
int queue_entry_outcome(const struct queue_entry_outcome_args *a,
                        uint64_t ts,
                        void *(*alloc)(size_t),
                        uint8_t **out,
                        size_t *len)
{
    size_t n = a->n_results;
    Hamr__RcptResult *results = calloc(n ? n : 1, sizeof(*results));
    Hamr__RcptResult **rp = calloc(n ? n : 1, sizeof(*rp));
    int rv = HAMR_ENOMEM;
    if (results != NULL && rp != NULL) {
        for (size_t i = 0; i < n; i++) {
            const struct queue_entry_result *r = &a->results[i];
            hamr__rcpt_result__init(&results[i]);
            results[i].rcpt_index = r->rcpt_index;
            results[i].status = (Hamr__RcptResult__Status)r->status;
            results[i].smtp_code = r->smtp_code;
            results[i].diagnostic = queue_entry_text(r->diagnostic);
            /* "" is not encoded: below format 2 the entry is byte for byte the old one. */
            results[i].tls_policy = queue_entry_text(r->tls_policy);
            results[i].tls = queue_entry_text(r->tls);
            results[i].dsn_passed = r->dsn_passed;
            rp[i] = &results[i];
        }
        Hamr__Outcome oc = HAMR__OUTCOME__INIT;
        oc.queue_id = queue_entry_text(a->queue_id);
        oc.lease_id = a->lease_id;
        oc.n_results = n;
        oc.results = rp;
        oc.next_attempt_ms = a->next_attempt_ms;
        oc.reporter = queue_entry_text(a->reporter);
        oc.dsn_expires_at_ms = a->dsn_expires_at_ms;
        oc.remote = queue_entry_text(a->remote);
        oc.delay_warning_ms = a->delay_warning_ms;
        oc.node_id = a->node_id;
        Hamr__Entry e = HAMR__ENTRY__INIT;
        e.cmd_case = HAMR__ENTRY__CMD_OUTCOME;
        e.outcome = &oc;
        rv = queue_entry_pack(&e, ts, alloc, out, len);
    }
    free(results);
    free(rp);
    return rv;
}

/* queue_entry_admin - an Admin entry. */
int queue_entry_admin(enum queue_entry_admin_op op,
                      const char *queue_id,
                      const char *reporter,
                      uint64_t dsn_expires_at_ms,
                      uint64_t ts,
                      void *(*alloc)(size_t),
                      uint8_t **out,
                      size_t *len)
{
    Hamr__Admin adm = HAMR__ADMIN__INIT;
    adm.op = (Hamr__Admin__Op)op;
    adm.queue_id = queue_entry_text(queue_id);
    adm.reporter = queue_entry_text(reporter);
    adm.dsn_expires_at_ms = dsn_expires_at_ms;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_ADMIN;
    e.admin = &adm;
    return queue_entry_pack(&e, ts, alloc, out, len);
}

/* queue_entry_node_info - a NodeInfo entry. */
int queue_entry_node_info(const struct queue_entry_node_info_args *a,
                          uint64_t ts,
                          void *(*alloc)(size_t),
                          uint8_t **out,
                          size_t *len)
{
    Hamr__NodeInfo ni = HAMR__NODE_INFO__INIT;
    ni.node_id = a->node_id;
    ni.peer_address = queue_entry_text(a->peer_address);
    ni.control_address = queue_entry_text(a->control_address);
    ni.version = queue_entry_text(a->version);
    ni.format_version_max = a->format_version_max;
    ni.draining = a->draining;
    ni.zone = queue_entry_text(a->zone);
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_NODE_INFO;
    e.node_info = &ni;
    return queue_entry_pack(&e, ts, alloc, out, len);
}

/* queue_entry_sts - a StsPolicy entry; the pattern pointers are copied into an array freed before
 * return. */
int queue_entry_sts(const struct queue_entry_sts_args *a,
                    uint64_t ts,
                    void *(*alloc)(size_t),
                    uint8_t **out,
                    size_t *len)
{
    size_t n = a->n_mx;
    char **mx = calloc(n ? n : 1, sizeof(*mx));
    if (mx == NULL)
        return HAMR_ENOMEM;
    for (size_t i = 0; i < n; i++)
        mx[i] = queue_entry_text(a->mx[i]);
    Hamr__StsPolicy sp = HAMR__STS_POLICY__INIT;
    sp.domain = queue_entry_text(a->domain);
    sp.id = queue_entry_text(a->id);
    sp.mode = (Hamr__StsPolicy__Mode)a->mode;
    sp.n_mx = n;
    sp.mx = mx;
    sp.max_age = a->max_age_s;
    sp.fetched_at_ms = a->fetched_at_ms;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_STS_POLICY;
    e.sts_policy = &sp;
    int rv = queue_entry_pack(&e, ts, alloc, out, len);
    free(mx);
    return rv;
}

/* queue_entry_cluster_level - a ClusterLevel entry. */
int queue_entry_cluster_level(uint32_t level,
                              uint64_t ts,
                              void *(*alloc)(size_t),
                              uint8_t **out,
                              size_t *len)
{
    Hamr__ClusterLevel cl = HAMR__CLUSTER_LEVEL__INIT;
    cl.level = level;
    Hamr__Entry e = HAMR__ENTRY__INIT;
    e.cmd_case = HAMR__ENTRY__CMD_CLUSTER_LEVEL;
    e.cluster_level = &cl;
    return queue_entry_pack(&e, ts, alloc, out, len);
}
