/*
 * body_fetch.c - message bodies fetched from peers (client) and served to
 * them (server), over the peer channel (see body_fetch.h for why).
 *
 * Server happy path: PeerFetch -> peer_policy_fetch -> source lookup (length,
 * SHA-256) -> read of at most BODY_FETCH_CHUNK bytes from the offset (in
 * the thread pool for a stored body; the answer waits in a
 * body_fetch_serving) -> peer_reply from the read's callback. The peer
 * server keeps the call until it is answered, even if its connection goes.
 *
 * Client happy path: body_fetch_want -> the id joins the wanted set (a hash,
 * for idempotence) and the ready list (FIFO: the order wanted) -> the timer
 * kicks the pump -> a free slot (of BODY_FETCH_PARALLEL) takes the oldest
 * ready body: sink->wanted (current length and hash), sink->peers -> a job
 * asks the first peer for chunk after chunk, into a buffer of the body's
 * length -> the last chunk completes it -> SHA-256 matches -> sink->store
 * -> the body leaves the set and the slot takes the next one.
 *
 * Failure modes (client):
 *   - a peer that cannot be called, fails the call, answers an error
 *     (HAMR_ENOTFOUND: it has no such body), another length or hash, or a
 *     chunk that does not fit or makes no progress: failed_attempts, and the
 *     body starts over (from offset 0) at the next peer;
 *   - a body complete whose SHA-256 does not match: corrupt (and
 *     failed_attempts), next peer;
 *   - no peer left in the round: unavailable, logged once per body
 *     (log_warn with its queue id), and the body waits in the later list
 *     (sorted by due time) for a backoff of backoff_min doubling to
 *     backoff_max; the timer is armed for the earliest due body only, so a
 *     retry never spins;
 *   - sink->wanted says no: dropped (the only way a body leaves the set
 *     unfetched, apart from close);
 *   - sink->store fails: the fetcher stops (body_fetch_error), the body
 *     stays wanted.
 *
 * Lifetime: items belong to the hash while the fetcher lives; an item being
 * fetched is also pointed to by its job (item->job). Jobs are the calls'
 * callback arguments. body_fetch_close only marks the fetcher closing and
 * closes the timer; its close callback frees the idle items and detaches the
 * jobs (job->f = NULL), which then free themselves and their items when
 * their call's callback runs. Until that callback nothing is freed under a
 * sink function's feet, so every sink function may call body_fetch_close.
 *
 * Security (server): the request is from another node, and checked by
 * peer_policy_fetch; the offset against the body's length. (Client): every
 * answer is checked before its bytes are kept, and the whole body against
 * its SHA-256 before the sink sees it.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "proto/proto_frame.h"
#include "util/common.h"
#include "util/err.h"
#include "util/hash.h"
#include "util/log.h"
#include "queue/queue.h"

#include "node/body_fetch.h"
#include "node/peer.h"

/* A whole chunk and its envelope fit one peer frame with room to spare. */
_Static_assert(BODY_FETCH_CHUNK + 4096 <= PROTO_PEER_MAX, "a chunk must fit a peer frame");
_Static_assert(BODY_FETCH_ID_MAX == QUEUE_ID_MAX, "fetch ids are queue ids");

#define BODY_FETCH_HASH_MIN 64

/* body_fetch_id_log - a queue id from a peer or the queue, made safe for a log line. */
static const char *body_fetch_id_log(char *out, size_t outlen, const char *id)
{
    return log_printable(out, outlen, id, strlen(id));
}

/* ------------------------------------------------------------------------ */
/* Server.                                                                  */
/* ------------------------------------------------------------------------ */

/* body_fetch_serve_error - answer call with status alone. */
static void body_fetch_serve_error(struct peer_call *call, int status)
{
    Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
    res.status = status;
    peer_reply(call, &res);
}

/* body_fetch_serving - one answer waiting for its source's read. */
struct body_fetch_serving {
    struct peer_call *call;
    uint64_t from; /* the caller's node, for the log */
    uint64_t offset;
    uint64_t len;
    size_t n;
    uint8_t sha[BODY_FETCH_SHA256_LEN];
    char id[BODY_FETCH_ID_MAX];
    uint8_t buf[]; /* n bytes */
};

/* body_fetch_serve_read_done - the source has read the chunk: answer with it, or the error. */
static void body_fetch_serve_read_done(void *arg, ssize_t got)
{
    struct body_fetch_serving *sv = arg;
    char idl[BODY_FETCH_ID_MAX];
    if (got <= 0 || (size_t)got > sv->n) {
        /* Short of its length, or an error: the body here is not what the
         * queue says. The caller asks the next peer. */
        int err = got < 0 ? (int)got : HAMR_EIO;
        log_warn("body fetch read failed node=%" PRIu64 " id=%s offset=%" PRIu64 " err=%s",
                 sv->from, body_fetch_id_log(idl, sizeof(idl), sv->id), sv->offset,
                 hamr_errname(err));
        body_fetch_serve_error(sv->call, err);
        free(sv);
        return;
    }
    Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
    res.data.data = sv->buf;
    res.data.len = (size_t)got; /* a short read is fine: the caller asks from where it ends */
    res.total_len = sv->len;
    res.body_sha256.data = sv->sha;
    res.body_sha256.len = sizeof(sv->sha);
    peer_reply(sv->call, &res);
    free(sv);
}

void body_fetch_serve(const struct body_fetch_source *src,
                      struct peer_call *call,
                      const Hamr__PeerFetch *req)
{
    char idl[BODY_FETCH_ID_MAX];
    uint64_t from = peer_call_node(call);
    enum peer_policy_reason why = peer_policy_fetch(req, from);
    if (why != PEER_POLICY_OK) {
        const char *id = req->queue_id != NULL ? req->queue_id : "";
        log_warn("body fetch refused node=%" PRIu64 " id=%s max=%" PRIu32 " reason=%s", from,
                 body_fetch_id_log(idl, sizeof(idl), id), req->max, peer_policy_reason_name(why));
        if (src->refused != NULL)
            src->refused(src->data, why);
        body_fetch_serve_error(call, HAMR_EPERM);
        return;
    }
    uint64_t len = 0;
    uint8_t sha[BODY_FETCH_SHA256_LEN];
    int rv = src->lookup(src->data, req->queue_id, &len, sha);
    if (rv != 0) {
        body_fetch_serve_error(call, rv);
        return;
    }
    if (req->offset > len) {
        body_fetch_serve_error(call, HAMR_EINVAL);
        return;
    }
    uint64_t left = len - req->offset;
    size_t n = req->max < BODY_FETCH_CHUNK ? req->max : BODY_FETCH_CHUNK;
    if (left < n)
        n = (size_t)left;
    if (n == 0) { /* at the end: nothing to read */
        Hamr__PeerResult res = HAMR__PEER_RESULT__INIT;
        res.total_len = len;
        res.body_sha256.data = sha;
        res.body_sha256.len = sizeof(sha);
        peer_reply(call, &res);
        return;
    }
    struct body_fetch_serving *sv = malloc(sizeof(*sv) + n);
    if (sv == NULL) {
        body_fetch_serve_error(call, HAMR_ENOMEM);
        return;
    }
    sv->call = call;
    sv->from = from;
    sv->offset = req->offset;
    sv->len = len;
    sv->n = n;
    memcpy(sv->sha, sha, sizeof(sha));
    hamr_strlcpy(sv->id, req->queue_id, sizeof(sv->id)); /* checked by peer_policy_fetch */
    src->read(src->data, sv->id, sv->offset, sv->buf, n, body_fetch_serve_read_done, sv);
    /* Asynchronous processing (maybe done already): body_fetch_serve_read_done answers. */
}

/* ------------------------------------------------------------------------ */
/* Client.                                                                  */
/* ------------------------------------------------------------------------ */

struct body_fetch_job;

/* body_fetch_item - one body wanted; in the hash, and in the ready or later list or a job. */
struct body_fetch_item {
    struct body_fetch_item *hnext; /* hash chain */
    struct body_fetch_item *next;  /* ready or later list */
    struct body_fetch_job *job;    /* being fetched */
    uint64_t len;
    uint64_t due;        /* later list: loop time of its next round */
    uint64_t backoff_ms; /* 0 until it was unavailable */
    bool reported;       /* unavailable, logged */
    uint8_t sha[BODY_FETCH_SHA256_LEN];
    char id[BODY_FETCH_ID_MAX];
};

/* body_fetch_job - one round of peers for one body: the argument of its calls. */
struct body_fetch_job {
    struct body_fetch *f; /* NULL once the fetcher has gone: the job frees itself */
    struct body_fetch_item *item;
    size_t slot;
    struct body_fetch_peer peers[BODY_FETCH_PEERS_MAX];
    size_t n_peers;
    size_t peer; /* the one being asked */
    uint8_t *buf;
    size_t got;
};

/* body_fetch_unreachable - a peer address that could not be reached, and until when to ask it last.
 */
struct body_fetch_unreachable {
    char addr[BODY_FETCH_ADDR_MAX];
    uint64_t until; /* loop time; 0: a free entry */
};

/* body_fetch_list - a singly linked FIFO of items (through next). */
struct body_fetch_list {
    struct body_fetch_item *head, *tail;
};

struct body_fetch {
    uv_loop_t *loop;
    struct peer_client *pc;
    struct body_fetch_sink sink;
    uv_timer_t timer; /* the kick after body_fetch_want, the earliest retry */
    struct body_fetch_item **buckets;
    size_t n_buckets; /* a power of two */
    size_t n_items;
    struct body_fetch_list ready; /* in the order wanted */
    struct body_fetch_list later; /* by due time */
    struct body_fetch_job *jobs[BODY_FETCH_PARALLEL];
    struct body_fetch_unreachable unreachable[BODY_FETCH_UNREACHABLE_MAX];
    struct body_fetch_stats stats;
    uint64_t call_timeout_ms;
    uint64_t backoff_min_ms;
    uint64_t backoff_max_ms;
    int error; /* the sink's store failed: stopped */
    bool closing;
};

static void body_fetch_ask(struct body_fetch_job *job);
static void body_fetch_answer_cb(void *arg, int status, const Hamr__PeerResult *res);

/* body_fetch_bucket - the hash chain head for id. */
static struct body_fetch_item **body_fetch_bucket(struct body_fetch *f, const char *id)
{
    return &f->buckets[hash_fnv1a64_str(id) & (f->n_buckets - 1)];
}

/* body_fetch_find - the item for id, or NULL. */
static struct body_fetch_item *body_fetch_find(struct body_fetch *f, const char *id)
{
    struct body_fetch_item *it = *body_fetch_bucket(f, id);
    while (it != NULL && strcmp(it->id, id) != 0)
        it = it->hnext;
    return it;
}

/* body_fetch_link - put it in its hash chain (body_fetch_want counts it). */
static void body_fetch_link(struct body_fetch *f, struct body_fetch_item *it)
{
    struct body_fetch_item **b = body_fetch_bucket(f, it->id);
    it->hnext = *b;
    *b = it;
}

/* body_fetch_grow - double the hash table; on failure keep the longer chains. */
static void body_fetch_grow(struct body_fetch *f)
{
    size_t n = f->n_buckets * 2;
    struct body_fetch_item **nb = calloc(n, sizeof(*nb));
    if (nb == NULL)
        return;
    struct body_fetch_item **old = f->buckets;
    size_t old_n = f->n_buckets;
    f->buckets = nb;
    f->n_buckets = n;
    for (size_t i = 0; i < old_n; i++) {
        struct body_fetch_item *next;
        for (struct body_fetch_item *it = old[i]; it != NULL; it = next) {
            next = it->hnext;
            body_fetch_link(f, it);
        }
    }
    free(old);
}

/* body_fetch_forget - take it out of the hash and free it (in no list, in no job). */
static void body_fetch_forget(struct body_fetch *f, struct body_fetch_item *it)
{
    struct body_fetch_item **b = body_fetch_bucket(f, it->id);
    while (*b != it)
        b = &(*b)->hnext;
    *b = it->hnext;
    f->n_items--;
    free(it);
}

/* body_fetch_list_push - append it to l. */
static void body_fetch_list_push(struct body_fetch_list *l, struct body_fetch_item *it)
{
    it->next = NULL;
    if (l->tail != NULL)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
}

/* body_fetch_list_push_front - put it in front of the rest of l. */
static void body_fetch_list_push_front(struct body_fetch_list *l, struct body_fetch_item *it)
{
    it->next = l->head;
    l->head = it;
    if (l->tail == NULL)
        l->tail = it;
}

/* body_fetch_list_pop - take the head of l (not empty). */
static struct body_fetch_item *body_fetch_list_pop(struct body_fetch_list *l)
{
    struct body_fetch_item *it = l->head;
    l->head = it->next;
    if (l->head == NULL)
        l->tail = NULL;
    it->next = NULL;
    return it;
}

/*
 * body_fetch_later_push - into the later list by due time: mostly at its
 * tail (backoffs grow), else after the last item due no later than it.
 */
static void body_fetch_later_push(struct body_fetch *f, struct body_fetch_item *it)
{
    struct body_fetch_list *l = &f->later;
    if (l->head == NULL || l->tail->due <= it->due) {
        body_fetch_list_push(l, it);
        return;
    }
    if (it->due < l->head->due) {
        body_fetch_list_push_front(l, it);
        return;
    }
    struct body_fetch_item *after = l->head;
    while (after->next->due <= it->due)
        after = after->next;
    it->next = after->next;
    after->next = it;
}

/* body_fetch_unreachable_find - the live entry for addr, or NULL. */
static struct body_fetch_unreachable *body_fetch_unreachable_find(struct body_fetch *f,
                                                                  const char *addr)
{
    uint64_t now = uv_now(f->loop);
    for (size_t i = 0; i < BODY_FETCH_UNREACHABLE_MAX; i++)
        if (f->unreachable[i].until > now && strcmp(f->unreachable[i].addr, addr) == 0)
            return &f->unreachable[i];
    return NULL;
}

/*
 * body_fetch_unreachable_mark - addr could not be reached: ask it last for
 * a while. The entry that ends soonest makes room.
 */
static void body_fetch_unreachable_mark(struct body_fetch *f, const char *addr)
{
    struct body_fetch_unreachable *u = body_fetch_unreachable_find(f, addr);
    if (u == NULL) {
        u = &f->unreachable[0];
        for (size_t i = 1; i < BODY_FETCH_UNREACHABLE_MAX; i++)
            if (f->unreachable[i].until < u->until)
                u = &f->unreachable[i];
    }
    hamr_strlcpy(u->addr, addr, sizeof(u->addr));
    u->until = uv_now(f->loop) + BODY_FETCH_UNREACHABLE_MS;
}

/*
 * body_fetch_order_peers - the sink's order, but the peers that could not
 * be reached lately after the others (each part in the sink's order).
 */
static void body_fetch_order_peers(struct body_fetch *f, struct body_fetch_job *job)
{
    struct body_fetch_peer late[BODY_FETCH_PEERS_MAX];
    size_t n = 0, n_late = 0;
    for (size_t i = 0; i < job->n_peers; i++) {
        if (body_fetch_unreachable_find(f, job->peers[i].addr) != NULL)
            late[n_late++] = job->peers[i];
        else
            job->peers[n++] = job->peers[i];
    }
    memcpy(&job->peers[n], late, n_late * sizeof(late[0]));
}

/* body_fetch_free_slot - a slot without a job, or -1. */
static int body_fetch_free_slot(const struct body_fetch *f)
{
    for (size_t i = 0; i < BODY_FETCH_PARALLEL; i++)
        if (f->jobs[i] == NULL)
            return (int)i;
    return -1;
}

/* body_fetch_running - may the fetcher start anything? */
static bool body_fetch_running(const struct body_fetch *f)
{
    return !f->closing && f->error == 0;
}

static void body_fetch_timer_cb(uv_timer_t *t);

/*
 * body_fetch_arm - the timer for what comes next: 1 ms when a ready body
 * waits for a free slot (the kick after body_fetch_want), else the earliest
 * retry, else nothing. A ready body with every slot busy needs no timer: the
 * end of a job starts it.
 */
static void body_fetch_arm(struct body_fetch *f)
{
    if (!body_fetch_running(f))
        return;
    uint64_t now = uv_now(f->loop);
    uint64_t next = UINT64_MAX;
    if (f->ready.head != NULL && body_fetch_free_slot(f) >= 0)
        next = now;
    else if (f->later.head != NULL)
        next = f->later.head->due;
    if (next == UINT64_MAX) {
        uv_timer_stop(&f->timer);
        return;
    }
    /* At least 1 ms: libuv runs a 0 ms timer started from its own callback
     * again in the same pass. */
    uv_timer_start(&f->timer, body_fetch_timer_cb, next > now + 1 ? next - now : 1, 0);
}

/*
 * body_fetch_job_end - the job is over: its slot is free, its item idle
 * again (the caller has freed it, or put it in a list) and its buffer freed.
 */
static void body_fetch_job_end(struct body_fetch_job *job)
{
    if (job->f != NULL)
        job->f->jobs[job->slot] = NULL;
    if (job->item != NULL)
        job->item->job = NULL;
    free(job->buf);
    free(job);
}

/* body_fetch_job_orphan - the fetcher has gone: the job frees its item and itself. */
static void body_fetch_job_orphan(struct body_fetch_job *job)
{
    free(job->item);
    job->item = NULL;
    body_fetch_job_end(job);
}

/*
 * body_fetch_start - a round of peers for it, in slot: still wanted (its
 * current length and hash), then the first peer. May end synchronously (not
 * wanted, no peer to ask), and returns with the slot free then.
 */
static void body_fetch_start(struct body_fetch *f, size_t slot, struct body_fetch_item *it)
{
    char idl[BODY_FETCH_ID_MAX];
    uint64_t len = it->len;
    uint8_t sha[BODY_FETCH_SHA256_LEN];
    memcpy(sha, it->sha, sizeof(sha));
    bool wanted = f->sink.wanted(f->sink.data, it->id, &len, sha);
    if (f->closing)
        return; /* the item is still in the hash: the close callback frees it */
    if (!wanted || len > BODY_FETCH_LEN_MAX) {
        if (wanted)
            log_warn("body fetch dropped id=%s len=%" PRIu64 " reason=\"too long\"",
                     body_fetch_id_log(idl, sizeof(idl), it->id), len);
        else
            log_debug("body fetch dropped id=%s reason=\"no longer wanted\"",
                      body_fetch_id_log(idl, sizeof(idl), it->id));
        f->stats.dropped++;
        body_fetch_forget(f, it);
        return;
    }
    it->len = len;
    memcpy(it->sha, sha, sizeof(sha));
    struct body_fetch_job *job = calloc(1, sizeof(*job));
    /* Never NULL, even for an empty body: the sink gets a pointer it may pass on. */
    if (job != NULL && (job->buf = malloc(len > 0 ? (size_t)len : 1)) == NULL) {
        free(job);
        job = NULL;
    }
    if (job == NULL) {
        /* Try again later, as for a body no peer has (but not counted so). */
        log_warn("body fetch delayed id=%s len=%" PRIu64 " reason=\"out of memory\"",
                 body_fetch_id_log(idl, sizeof(idl), it->id), len);
        it->due = uv_now(f->loop) + f->backoff_min_ms;
        body_fetch_later_push(f, it);
        return;
    }
    job->f = f;
    job->item = it;
    job->slot = slot;
    it->job = job;
    f->jobs[slot] = job;
    job->n_peers = f->sink.peers(f->sink.data, job->peers, BODY_FETCH_PEERS_MAX);
    if (f->closing) {
        body_fetch_job_end(job); /* no call yet; the item stays for the close callback */
        return;
    }
    if (job->n_peers > BODY_FETCH_PEERS_MAX)
        job->n_peers = BODY_FETCH_PEERS_MAX;
    body_fetch_order_peers(f, job);
    body_fetch_ask(job);
}

/* body_fetch_pump - fill the free slots with ready bodies, oldest first. */
static void body_fetch_pump(struct body_fetch *f)
{
    int slot;
    while (body_fetch_running(f) && f->ready.head != NULL && (slot = body_fetch_free_slot(f)) >= 0)
        body_fetch_start(f, (size_t)slot, body_fetch_list_pop(&f->ready));
}

/* body_fetch_timer_cb - retries that are due join the ready list; fill the slots. */
static void body_fetch_timer_cb(uv_timer_t *t)
{
    struct body_fetch *f = t->data;
    uint64_t now = uv_now(f->loop);
    while (f->later.head != NULL && f->later.head->due <= now)
        body_fetch_list_push(&f->ready, body_fetch_list_pop(&f->later));
    body_fetch_pump(f);
    body_fetch_arm(f);
}

/*
 * body_fetch_unavailable - no peer of the round handed the body over: log
 * it the first time, retry after the backoff (doubled each time).
 */
static void body_fetch_unavailable(struct body_fetch_job *job)
{
    struct body_fetch *f = job->f;
    struct body_fetch_item *it = job->item;
    char idl[BODY_FETCH_ID_MAX];
    f->stats.unavailable++;
    it->backoff_ms = it->backoff_ms == 0 ? f->backoff_min_ms : it->backoff_ms * 2;
    if (it->backoff_ms > f->backoff_max_ms)
        it->backoff_ms = f->backoff_max_ms;
    if (!it->reported) {
        it->reported = true;
        log_warn("body fetch unavailable id=%s len=%" PRIu64 " peers=%zu retry_ms=%" PRIu64
                 " reason=\"no peer has it\"",
                 body_fetch_id_log(idl, sizeof(idl), it->id), it->len, job->n_peers,
                 it->backoff_ms);
    }
    it->due = uv_now(f->loop) + it->backoff_ms;
    body_fetch_job_end(job);
    body_fetch_later_push(f, it);
}

/* body_fetch_next_peer - this peer did not hand the body over: start again at the next. */
static void body_fetch_next_peer(struct body_fetch_job *job)
{
    job->f->stats.failed_attempts++;
    job->peer++;
    job->got = 0;
    body_fetch_ask(job);
}

/*
 * body_fetch_ask - the next chunk from the current peer; a peer that cannot
 * be called is passed over here (in a loop, not by recursion). Ends the
 * round as unavailable when no peer is left.
 */
static void body_fetch_ask(struct body_fetch_job *job)
{
    struct body_fetch *f = job->f;
    struct body_fetch_item *it = job->item;
    char idl[BODY_FETCH_ID_MAX];
    for (; job->peer < job->n_peers; job->peer++, job->got = 0) {
        const struct body_fetch_peer *p = &job->peers[job->peer];
        Hamr__PeerFetch q = HAMR__PEER_FETCH__INIT;
        q.queue_id = it->id;
        q.offset = job->got;
        q.max = BODY_FETCH_CHUNK; /* the server caps it at what is left */
        Hamr__PeerMsg m = HAMR__PEER_MSG__INIT;
        m.body_case = HAMR__PEER_MSG__BODY_FETCH;
        m.fetch = &q;
        int rv = peer_client_call(f->pc, p->node_id, p->addr, &m, f->call_timeout_ms,
                                  body_fetch_answer_cb, job);
        if (rv == 0)
            return; /* Asynchronous processing continues in body_fetch_answer_cb. */
        f->stats.failed_attempts++;
        if (rv == HAMR_EINVAL)
            body_fetch_unreachable_mark(f, p->addr); /* a bad address: no use asking first */
        log_debug("body fetch call failed id=%s node=%" PRIu64 " addr=%s err=%s",
                  body_fetch_id_log(idl, sizeof(idl), it->id), p->node_id, p->addr,
                  hamr_errname(rv));
    }
    body_fetch_unavailable(job);
}

/* body_fetch_sha_ok - does the body in the job's buffer have the item's SHA-256? */
static bool body_fetch_sha_ok(const struct body_fetch_job *job)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(job->buf, job->got, md, &mdlen, EVP_sha256(), NULL) != 1 ||
        mdlen != BODY_FETCH_SHA256_LEN)
        return false; /* libcrypto failed: nothing proves the body, so it is not taken */
    return memcmp(md, job->item->sha, BODY_FETCH_SHA256_LEN) == 0;
}

/*
 * body_fetch_chunk_why - why an answer is not the next chunk of the body
 * wanted, or NULL if it is: another body under the id (length or hash), a
 * chunk past the end, or one that brings nothing before the end.
 */
static const char *body_fetch_chunk_why(const struct body_fetch_job *job,
                                        const Hamr__PeerResult *res)
{
    const struct body_fetch_item *it = job->item;
    if (res->total_len != it->len || res->body_sha256.len != BODY_FETCH_SHA256_LEN ||
        memcmp(res->body_sha256.data, it->sha, BODY_FETCH_SHA256_LEN) != 0)
        return "another length or hash";
    if (res->data.len > it->len - job->got)
        return "chunk past the end";
    if (res->data.len == 0 && job->got < it->len)
        return "empty chunk";
    return NULL;
}

/*
 * body_fetch_store - the body is whole and its hash matches: hand it to the
 * sink. Stored: the item leaves the set. Refused: the fetcher stops and the
 * body stays wanted, first in line.
 */
static void body_fetch_store(struct body_fetch_job *job)
{
    struct body_fetch *f = job->f;
    struct body_fetch_item *it = job->item;
    char idl[BODY_FETCH_ID_MAX];
    int rv = f->sink.store(f->sink.data, it->id, job->buf, job->got);
    if (rv != 0) {
        log_error("body fetch stopped id=%s len=%" PRIu64 " reason=\"store failed\" err=%s",
                  body_fetch_id_log(idl, sizeof(idl), it->id), it->len, hamr_errname(rv));
        if (f->error == 0)
            f->error = rv;
        body_fetch_job_end(job);
        if (!f->closing)
            body_fetch_list_push_front(&f->ready, it);
        return;
    }
    f->stats.fetched++;
    f->stats.fetched_bytes += it->len;
    if (it->reported)
        log_info("body fetch recovered id=%s len=%" PRIu64 " node=%" PRIu64,
                 body_fetch_id_log(idl, sizeof(idl), it->id), it->len,
                 job->peers[job->peer].node_id);
    else
        log_debug("body fetched id=%s len=%" PRIu64 " node=%" PRIu64,
                  body_fetch_id_log(idl, sizeof(idl), it->id), it->len,
                  job->peers[job->peer].node_id);
    body_fetch_job_end(job);
    if (!f->closing)
        body_fetch_forget(f, it); /* closing: the close callback frees what the hash holds */
}

/*
 * body_fetch_answer - one answer for a live job: keep the chunk and ask for
 * the next, or store the whole body, or pass on to the next peer.
 */
static void body_fetch_answer(struct body_fetch_job *job, int status, const Hamr__PeerResult *res)
{
    struct body_fetch *f = job->f;
    struct body_fetch_item *it = job->item;
    const struct body_fetch_peer *p = &job->peers[job->peer];
    char idl[BODY_FETCH_ID_MAX];
    if (status == HAMR_ECONNECT || status == HAMR_ETIMEDOUT)
        body_fetch_unreachable_mark(f, p->addr);
    if (status == 0 && res->status != 0)
        status = res->status;
    if (status != 0) {
        /* Debug only: the peer channel logs broken connections, and a round
         * that finds nobody with the body logs once (unavailable). */
        log_debug("body fetch failed id=%s node=%" PRIu64 " addr=%s err=%s",
                  body_fetch_id_log(idl, sizeof(idl), it->id), p->node_id, p->addr,
                  hamr_errname(status));
        body_fetch_next_peer(job);
        return;
    }
    const char *why = body_fetch_chunk_why(job, res);
    if (why != NULL) {
        log_info("body fetch refused answer id=%s node=%" PRIu64 " offset=%zu reason=\"%s\"",
                 body_fetch_id_log(idl, sizeof(idl), it->id), p->node_id, job->got, why);
        body_fetch_next_peer(job);
        return;
    }
    if (res->data.len > 0)
        memcpy(job->buf + job->got, res->data.data, res->data.len);
    job->got += res->data.len;
    if (job->got < it->len) {
        body_fetch_ask(job);
        return;
    }
    if (!body_fetch_sha_ok(job)) {
        f->stats.corrupt++;
        log_warn("body fetch corrupt id=%s len=%" PRIu64 " node=%" PRIu64 " addr=%s",
                 body_fetch_id_log(idl, sizeof(idl), it->id), it->len, p->node_id, p->addr);
        body_fetch_next_peer(job);
        return;
    }
    body_fetch_store(job);
}

/* body_fetch_answer_cb - a call's outcome; then fill the free slots again. */
static void body_fetch_answer_cb(void *arg, int status, const Hamr__PeerResult *res)
{
    struct body_fetch_job *job = arg;
    struct body_fetch *f = job->f;
    if (f == NULL) {
        body_fetch_job_orphan(job); /* the fetcher has been freed */
        return;
    }
    if (f->closing) {
        body_fetch_job_end(job); /* the item stays in the hash for the close callback */
        return;
    }
    body_fetch_answer(job, status, res);
    body_fetch_pump(f);
    body_fetch_arm(f);
}

/* body_fetch_new - an idle fetcher. */
struct body_fetch *body_fetch_new(uv_loop_t *loop,
                                  struct peer_client *pc,
                                  const struct body_fetch_sink *sink)
{
    struct body_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->buckets = calloc(BODY_FETCH_HASH_MIN, sizeof(*f->buckets));
    if (f->buckets == NULL) {
        free(f);
        return NULL;
    }
    f->n_buckets = BODY_FETCH_HASH_MIN;
    f->loop = loop;
    f->pc = pc;
    f->sink = *sink;
    f->call_timeout_ms = BODY_FETCH_CALL_TIMEOUT_MS;
    f->backoff_min_ms = BODY_FETCH_BACKOFF_MIN_MS;
    f->backoff_max_ms = BODY_FETCH_BACKOFF_MAX_MS;
    uv_timer_init(loop, &f->timer);
    f->timer.data = f;
    return f;
}

/* body_fetch_set_timing - call timeout and backoff bounds; 0 keeps a value. */
void body_fetch_set_timing(struct body_fetch *f,
                           uint64_t call_timeout_ms,
                           uint64_t backoff_min_ms,
                           uint64_t backoff_max_ms)
{
    if (call_timeout_ms > 0)
        f->call_timeout_ms = call_timeout_ms;
    if (backoff_min_ms > 0)
        f->backoff_min_ms = backoff_min_ms;
    if (backoff_max_ms > 0)
        f->backoff_max_ms = backoff_max_ms;
    if (f->backoff_max_ms < f->backoff_min_ms)
        f->backoff_max_ms = f->backoff_min_ms;
}

/* body_fetch_want - add id to the set (once), behind every body already wanted. */
int body_fetch_want(struct body_fetch *f,
                    const char *id,
                    uint64_t len,
                    const uint8_t sha[BODY_FETCH_SHA256_LEN])
{
    if (f->closing)
        return HAMR_ESHUTDOWN;
    size_t idlen = strlen(id);
    if (idlen == 0 || idlen >= BODY_FETCH_ID_MAX || len > BODY_FETCH_LEN_MAX)
        return HAMR_EINVAL;
    if (body_fetch_find(f, id) != NULL)
        return 0;
    struct body_fetch_item *it = calloc(1, sizeof(*it));
    if (it == NULL)
        return HAMR_ENOMEM;
    memcpy(it->id, id, idlen + 1);
    it->len = len;
    memcpy(it->sha, sha, BODY_FETCH_SHA256_LEN);
    if (f->n_items >= 2 * f->n_buckets)
        body_fetch_grow(f);
    body_fetch_link(f, it);
    f->n_items++;
    body_fetch_list_push(&f->ready, it);
    body_fetch_arm(f);
    return 0;
}

/* body_fetch_pending - bodies in the set. */
size_t body_fetch_pending(const struct body_fetch *f)
{
    return f->n_items;
}

/* body_fetch_get_stats - the counters. */
void body_fetch_get_stats(const struct body_fetch *f, struct body_fetch_stats *st)
{
    *st = f->stats;
}

/* body_fetch_error - what stopped the fetcher, 0 if nothing did. */
int body_fetch_error(const struct body_fetch *f)
{
    return f->error;
}

/*
 * body_fetch_closed_cb - the timer has closed: detach the jobs still in
 * flight (each frees its item when its call ends), free the idle items and
 * the fetcher.
 */
static void body_fetch_closed_cb(uv_handle_t *h)
{
    struct body_fetch *f = h->data;
    for (size_t i = 0; i < BODY_FETCH_PARALLEL; i++) {
        struct body_fetch_job *job = f->jobs[i];
        if (job != NULL) {
            job->f = NULL;
            f->jobs[i] = NULL;
        }
    }
    for (size_t i = 0; i < f->n_buckets; i++) {
        struct body_fetch_item *it = f->buckets[i];
        while (it != NULL) {
            struct body_fetch_item *next = it->hnext;
            if (it->job == NULL)
                free(it);
            it = next;
        }
    }
    free(f->buckets);
    free(f);
}

/* body_fetch_close - stop; freed once the timer has closed. */
void body_fetch_close(struct body_fetch *f)
{
    if (f == NULL || f->closing)
        return;
    f->closing = true;
    if (f->n_items > 0)
        log_info("body fetch closing pending=%zu", f->n_items);
    uv_close((uv_handle_t *)&f->timer, body_fetch_closed_cb);
}
