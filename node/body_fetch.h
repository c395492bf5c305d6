/*
 * body_fetch.h - message bodies a node lacks, fetched from its peers over
 * the peer channel (node/peer.h, PeerMsg `fetch`), and the other side:
 * serving a chunk of a body this node holds.
 *
 * Why: raft snapshots carry each body's metadata only (queue id, length,
 * SHA-256); the bodies stay in each node's own store (queue/body_store.h).
 * A node that installs a snapshot (new, wiped or far behind), or finds a
 * body corrupt on its disk, asks the other nodes for it.
 *
 * Client: a fetcher keeps the set of bodies wanted, in the order wanted,
 * and fetches BODY_FETCH_PARALLEL of them at a time, each in chunks of up
 * to BODY_FETCH_CHUNK from one peer after another (the sink's order of
 * preference) until one hands over bytes of the right length and SHA-256;
 * the body then goes to the sink's store. A peer that could not be reached
 * (connect failed or timed out, or no answer in time) is asked after the
 * others for BODY_FETCH_UNREACHABLE_MS, so that one node down costs a
 * connect timeout once, not once per body. A body that no peer has (or only
 * corrupt) is logged once and tried again after a backoff that doubles
 * from 1 s to 60 s; it leaves the set only when stored, or when the sink's
 * `wanted` says it is no longer wanted (checked before every round of
 * peers). Nothing is ever dropped silently while it is still wanted.
 *
 * Server: body_fetch_serve answers one PeerFetch from a body source (the
 * node's body store behind the queue's metadata): at most BODY_FETCH_CHUNK
 * bytes from the offset, with the body's length and SHA-256, so the caller
 * can tell a chunk of another body (a different copy under the same id)
 * from the one it wants.
 *
 * Rolling upgrades: a node built before PeerMsg `fetch` closes the
 * connection on one (an unknown body), and with it the calls that connection
 * carries to that node (proposals among them, whose outcome is then
 * resolved by id). The sink's peers therefore names only nodes known to
 * serve fetches (for instance by their NodeInfo's format_version_max or the
 * cluster level that brings body stores in).
 *
 * Wiring (node/relay.c): the peer server's handler gets
 *   .fetch = a function (data, call, req) calling body_fetch_serve with the
 *   node's source: lookup from the queue's metadata of the message (length,
 *   hash, where its body is; HAMR_ENOTFOUND when it is not queued or its
 *   body is missing here), read with body_store_read_range (in the thread
 *   pool) or from memory, refused counting
 *   metrics METRICS_PEER_REFUSED by reason;
 * the fetcher is made next to the peer client (body_fetch_new), fed by
 * body_fetch_want for each body a restored snapshot lacks or a read found
 * corrupt, and closed before the peer client (body_fetch_close). Its sink:
 * peers from the node directory (not this node), wanted from the queue and
 * the body store, store by body_store_put (an error there stops the node).
 *
 * Owns (client): the wanted set, the buffers of bodies being fetched
 * (bounded by their length, BODY_FETCH_PARALLEL of them), one timer, the
 * calls in flight until their callbacks. The set holds one item (about 150
 * bytes) per body wanted, so it is bounded by the queue: only queued
 * messages' bodies are wanted, once each. Borrows: the loop, the peer
 * client (it must outlive the fetcher: close the fetcher first, then the
 * client, whose close fails the calls still in flight, which are then
 * freed) and the sink (copied).
 *
 * Errors: HAMR_EINVAL (bad id or length), HAMR_ENOMEM, HAMR_ESHUTDOWN
 * (fetcher closing). A store the sink refuses stops the fetcher instead
 * (body_fetch_error); wanted bodies are still taken then, and kept.
 *
 * Security: answers from peers are checked (length, SHA-256, chunk bounds)
 * before anything is stored; queue ids are logged through log_printable.
 * Requests served are checked by peer_policy_fetch.
 */
#ifndef HAMR_NODE_BODY_FETCH_H
#define HAMR_NODE_BODY_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "proto/hamr.pb-c.h"
#include "node/peer_policy.h"

struct peer_call;
struct peer_client;

#define BODY_FETCH_CHUNK (1024u * 1024)           /* bytes per answer at most */
#define BODY_FETCH_SHA256_LEN 32                  /* as BODY_SHA256_LEN (queue/body_store.h) */
#define BODY_FETCH_ID_MAX 64                      /* as QUEUE_ID_MAX, NUL included */
#define BODY_FETCH_LEN_MAX ((uint64_t)UINT32_MAX) /* as body_store_put: under 4 GiB */
#define BODY_FETCH_PARALLEL 2                     /* bodies being fetched at once */
#define BODY_FETCH_PEERS_MAX 16                   /* peers asked per round */
#define BODY_FETCH_ADDR_MAX 64                    /* "[v6]:port" fits */
#define BODY_FETCH_CALL_TIMEOUT_MS 30000          /* one chunk from one peer */
#define BODY_FETCH_BACKOFF_MIN_MS 1000            /* first retry of an unavailable body */
#define BODY_FETCH_BACKOFF_MAX_MS 60000           /* the backoff doubles up to this */
#define BODY_FETCH_UNREACHABLE_MS 10000 /* a peer that could not be reached is asked last */
#define BODY_FETCH_UNREACHABLE_MAX 16   /* such peers remembered */

/* ------------------------------------------------------------------------ */
/* Server side.                                                             */
/* ------------------------------------------------------------------------ */

/*
 * body_fetch_read_cb - the outcome of a source's read: the number of bytes
 * read (0 only at the body's end), or a negative HAMR_E*.
 */
typedef void (*body_fetch_read_cb)(void *arg, ssize_t got);

/*
 * body_fetch_source - the bodies this node can serve. Every function runs
 * on the loop; lookup and read are called inside body_fetch_serve.
 *   lookup: the body of message id: 0 with its length and SHA-256, or
 *           HAMR_ENOTFOUND (not queued here, or its body missing or known
 *           corrupt on this node).
 *   read:   start reading up to n bytes of that body from off into buf
 *           (borrowed until done): done(arg, got) runs exactly once, on the
 *           loop, later (a read from disk, in the thread pool: never on the
 *           loop, where a cold body would stall raft) or inside read (a
 *           body still in memory, or an error found at once).
 *   refused (optional): a request peer_policy_fetch refused, for the
 *           node's counters (it is logged here).
 */
struct body_fetch_source {
    void *data;
    int (*lookup)(void *data, const char *id, uint64_t *len, uint8_t sha[BODY_FETCH_SHA256_LEN]);
    void (*read)(void *data,
                 const char *id,
                 uint64_t off,
                 uint8_t *buf,
                 size_t n,
                 body_fetch_read_cb done,
                 void *arg);
    void (*refused)(void *data, enum peer_policy_reason why);
};

/*
 * body_fetch_serve - answer call (peer_reply, exactly once, inside this
 * call or when the source's read is done) to req, a PeerFetch from
 * peer_call_node(call): status 0 with up to min(req->max,
 * BODY_FETCH_CHUNK) bytes from req->offset (none at the end), total_len
 * and body_sha256; or HAMR_EPERM (refused by peer_policy_fetch),
 * HAMR_ENOTFOUND, HAMR_EINVAL (offset past the end), HAMR_ENOMEM, or the
 * read's error. src and req are borrowed for this call only (what the
 * answer needs later is copied).
 */
void body_fetch_serve(const struct body_fetch_source *src,
                      struct peer_call *call,
                      const Hamr__PeerFetch *req);

/* ------------------------------------------------------------------------ */
/* Client side.                                                             */
/* ------------------------------------------------------------------------ */

struct body_fetch;

/* body_fetch_peer - a node to ask, at its peer address ("a.b.c.d:port" or "[v6]:port"). */
struct body_fetch_peer {
    uint64_t node_id;
    char addr[BODY_FETCH_ADDR_MAX];
};

/*
 * body_fetch_sink - the node's side of the fetcher; every function runs on
 * the loop, from the fetcher's callbacks (never inside body_fetch_want or
 * body_fetch_close), and may call body_fetch_want or body_fetch_close.
 *   peers:  whom to ask, in order of preference, not this node: at most max
 *           written to out, their number returned. Asked at the start of
 *           every round of a body.
 *   wanted: is id still queued here and its body still lacking? If so, its
 *           current length and SHA-256. false: it leaves the set.
 *   store:  a body whose length and SHA-256 are checked (borrowed for the
 *           call): store it. Non-zero stops the fetcher (reported by
 *           body_fetch_error and logged); the body stays wanted.
 */
struct body_fetch_sink {
    void *data;
    size_t (*peers)(void *data, struct body_fetch_peer *out, size_t max);
    bool (*wanted)(void *data, const char *id, uint64_t *len, uint8_t sha[BODY_FETCH_SHA256_LEN]);
    int (*store)(void *data, const char *id, const uint8_t *body, size_t len);
};

/* body_fetch_stats - counters since body_fetch_new. */
struct body_fetch_stats {
    uint64_t fetched;         /* bodies stored */
    uint64_t fetched_bytes;   /* their bytes */
    uint64_t failed_attempts; /* a peer that did not hand over the body (error, not found,
                               * another length or hash, a bad chunk, corrupt) */
    uint64_t corrupt;         /* bodies received whole whose SHA-256 did not match */
    uint64_t unavailable;     /* rounds in which no peer handed over a body */
    uint64_t dropped;         /* bodies no longer wanted before they were fetched */
};

/*
 * body_fetch_new - an idle fetcher on loop, calling through pc (borrowed,
 * must outlive the fetcher's calls) and sink (copied). NULL when out of
 * memory.
 */
struct body_fetch *body_fetch_new(uv_loop_t *loop,
                                  struct peer_client *pc,
                                  const struct body_fetch_sink *sink);

/*
 * body_fetch_set_timing - the timeout of one call (default
 * BODY_FETCH_CALL_TIMEOUT_MS) and the retry backoff of an unavailable body
 * (BODY_FETCH_BACKOFF_MIN_MS doubling to BODY_FETCH_BACKOFF_MAX_MS). For
 * calls and backoffs begun from now on; 0 keeps a value.
 */
void body_fetch_set_timing(struct body_fetch *f,
                           uint64_t call_timeout_ms,
                           uint64_t backoff_min_ms,
                           uint64_t backoff_max_ms);

/*
 * body_fetch_want - fetch the body of message id (copied), len bytes with
 * this SHA-256, after every body wanted before it. Idempotent per id (a
 * second call changes nothing: `wanted` gives the current length and hash
 * at every round). The fetch starts from the loop, never inside this call.
 * 0, or HAMR_EINVAL (id empty or not under BODY_FETCH_ID_MAX bytes, len over
 * BODY_FETCH_LEN_MAX), HAMR_ENOMEM, HAMR_ESHUTDOWN (closing).
 */
int body_fetch_want(struct body_fetch *f,
                    const char *id,
                    uint64_t len,
                    const uint8_t sha[BODY_FETCH_SHA256_LEN]);

/* body_fetch_pending - bodies wanted and not yet stored or dropped (being fetched included). */
size_t body_fetch_pending(const struct body_fetch *f);

/* body_fetch_get_stats - the counters. */
void body_fetch_get_stats(const struct body_fetch *f, struct body_fetch_stats *st);

/* body_fetch_error - 0, or what the sink's store returned when it stopped the fetcher. */
int body_fetch_error(const struct body_fetch *f);

/*
 * body_fetch_close - forget every wanted body and stop. Calls in flight stay
 * with the peer client; their callbacks find the fetcher closed and only
 * free what they hold, whether they are answered or failed by the client's
 * close (which may come right after this).
 * The fetcher is freed once its timer has closed (the loop's next turn).
 * Idempotent until then; NULL does nothing.
 */
void body_fetch_close(struct body_fetch *f);

#endif
