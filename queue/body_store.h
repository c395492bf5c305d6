/*
 * body_store.h - each node's own store of message bodies on disk: the one
 * file of queue/ that does I/O (the state machine itself stays pure and
 * keeps only where a body is, its length and its SHA-256).
 *
 * Layout: data_dir/bodies/NNNNNNNNNNNNNNNN.seg (16 hex digits, the segment
 * number, rising), append-only. A segment holds records:
 *
 *   "HMBD" | u8 version (1) | u8 id_len | u16 0 | u64 body_len (LE)
 *   | 32-byte SHA-256 of the body | id (id_len bytes, no NUL) | body
 *
 * New records go to the active segment only; it is closed (and a new one
 * begun) when it reaches segment_size, and at every open: a store never
 * appends to a segment written by an earlier process, so a torn tail is
 * only ever at the end of an old segment, where the scan stops.
 *
 * Why segments and not a file per message (measured on this machine, ext4,
 * 20,000 x 4 KiB bodies, a sync every 100): one file each with syncfs()
 * 8,218/s (fsync per file 3,718/s), one append-only file with fdatasync()
 * 71,839/s; at 64 KiB 3,999/s against 8,196/s.
 *
 * Writing: body_store_put appends on the loop thread (one writev into the
 * page cache) and returns the record's location at once; syncs run in
 * libuv's thread pool, one at a time, each covering everything written
 * before it began (batching comes from that). body_store_sync_now syncs
 * synchronously on the loop: consensus calls it before a snapshot, so no
 * raft entry is compacted while its body is not on disk (the invariant).
 * A write that fails (ENOSPC, EIO) returns the error: the caller must stop
 * the node, as for the raft log, never go on without the body.
 *
 * Locations: a uint64_t, BODY_LOC(segment, offset of the record). Reading
 * by location checks the record's header (magic, id, length) and the
 * body's SHA-256 against what the caller expects: all at once
 * (body_store_read), by range (body_store_read_range, for a peer's fetch)
 * or chunk after chunk (streams, for delivery), each read in the pool.
 *
 * Startup: body_store_open scans every segment's record headers (not the
 * bodies) into a temporary index, id -> newest complete record.
 * body_store_claim finds a restored message's body there and counts it
 * live; body_store_claims_done frees the index and removes segments with
 * nothing live (their bodies are either in raft's log, which puts them
 * again when the entries apply, or no longer queued).
 *
 * Space: each segment counts its live records (put or claimed, not yet
 * released). A closed segment with none left is unlinked in the thread
 * pool. Records of finished messages in a segment that still has live
 * ones stay until the last one goes.
 *
 * Threading: every function runs on the loop thread; callbacks run there
 * too. Workers only touch the file descriptors and buffers handed to them.
 */
#ifndef HAMR_QUEUE_BODY_STORE_H
#define HAMR_QUEUE_BODY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#define BODY_LOC(seg, off) (((uint64_t)(seg) << 32) | (uint32_t)(off))
#define BODY_LOC_SEG(loc) ((uint32_t)((loc) >> 32))
#define BODY_LOC_OFF(loc) ((uint32_t)(loc))
#define BODY_LOC_NONE UINT64_MAX /* no body here (missing, to fetch) */
#define BODY_SHA256_LEN 32
#define BODY_STORE_SEGMENT_DEFAULT (64u * 1024 * 1024)
#define BODY_STORE_SEGMENT_MAX (1024u * 1024 * 1024) /* offsets are 32 bits */

struct body_store;

struct body_store_stats {
    uint64_t segments;     /* segment files on disk */
    uint64_t disk_bytes;   /* their total size */
    uint64_t live;         /* records put or claimed and not released */
    uint64_t live_bytes;   /* their body bytes */
    uint64_t puts;         /* since open */
    uint64_t syncs;        /* completed syncs (thread pool and sync_now) */
    uint64_t unsynced;     /* records written but not yet synced */
    uint64_t removed;      /* segments unlinked since open */
    uint64_t read_errors;  /* reads that failed or did not match (corrupt, missing) */
    uint64_t last_sync_us; /* duration of the last sync */
};

/*
 * body_store_open - open (creating) dir, scan the segments already there,
 * start a new active segment. segment_size 0 means the default; it is
 * capped at BODY_STORE_SEGMENT_MAX. 0 and *out, or HAMR_EIO / HAMR_ENOMEM /
 * HAMR_EINVAL with a sentence in err.
 */
int body_store_open(uv_loop_t *loop,
                    const char *dir,
                    uint64_t segment_size,
                    struct body_store **out,
                    char *err,
                    size_t errlen);

/*
 * body_store_put - append a body (its SHA-256 given, not checked here) and
 * set *loc. The record is in the page cache on return and on disk after the
 * next sync. HAMR_ENOSPACE / HAMR_EIO: nothing usable was written; the node
 * must stop (after a failed sync every put returns HAMR_EIO). HAMR_EINVAL:
 * id empty or over 255 bytes, or len over 4 GiB - 1. HAMR_ENOMEM, and
 * HAMR_ESHUTDOWN once body_store_close was called: nothing was written.
 */
int body_store_put(struct body_store *s,
                   const char *id,
                   const uint8_t *body,
                   size_t len,
                   const uint8_t sha[BODY_SHA256_LEN],
                   uint64_t *loc);

/*
 * body_store_claim - during startup (before body_store_claims_done): the
 * newest complete record of id with this length and hash, counted live
 * (a second claim of the same record returns it without counting it again).
 * 0 and *loc, or HAMR_ENOTFOUND (also after claims_done), HAMR_ENOMEM.
 */
int body_store_claim(struct body_store *s,
                     const char *id,
                     size_t len,
                     const uint8_t sha[BODY_SHA256_LEN],
                     uint64_t *loc);

/*
 * body_store_claims_done - free the startup index; remove segments with
 * nothing live. Idempotent.
 */
void body_store_claims_done(struct body_store *s);

/*
 * body_store_release - the record at loc is no longer needed (its message
 * left the queue). A loc that is not live (released already, never put or
 * claimed) is logged and ignored: counting it would remove a segment that
 * other records still need.
 */
void body_store_release(struct body_store *s, uint64_t loc);

/*
 * body_store_sync_now - on the loop thread: everything put so far is on
 * disk when this returns 0 (fdatasync of the segments with unsynced
 * records, fsync of the directory when segments were created). HAMR_EIO
 * otherwise, and from then on (a failed sync is never retried: Linux reports
 * a lost write once).
 */
int body_store_sync_now(struct body_store *s);

/* body_store_synced - nothing put is waiting for a sync. */
bool body_store_synced(const struct body_store *s);

/*
 * body_store_read_cb - the outcome of body_store_read. status 0: body is
 * malloc'ed, len bytes, checked against the expected hash; the callee owns
 * it. HAMR_ECORRUPT: the record or its hash does not match; HAMR_ENOTFOUND:
 * no such segment or record; HAMR_EIO; HAMR_ESHUTDOWN (store closing). body
 * NULL unless status is 0.
 */
typedef void (*body_store_read_cb)(void *arg, int status, uint8_t *body, size_t len);

/*
 * body_store_read - read the whole body at loc in the thread pool and
 * check it is id's, of len bytes, with this SHA-256. cb runs exactly once,
 * never inside this call, unless this returns non-zero (HAMR_ENOMEM,
 * HAMR_EINVAL for BODY_LOC_NONE or an id that is empty or over 255 bytes,
 * HAMR_ESHUTDOWN once body_store_close was called). id and sha are copied.
 */
int body_store_read(struct body_store *s,
                    uint64_t loc,
                    const char *id,
                    size_t len,
                    const uint8_t sha[BODY_SHA256_LEN],
                    body_store_read_cb cb,
                    void *arg);

/*
 * body_store_range_cb - the outcome of body_store_read_range: the number of
 * bytes read (all that were asked), or a negative HAMR_E*: HAMR_ECORRUPT
 * (the record is not the one expected, or the file ends inside it),
 * HAMR_ENOTFOUND, HAMR_EIO, HAMR_ESHUTDOWN (store closing).
 */
typedef void (*body_store_range_cb)(void *arg, ssize_t got);

/*
 * body_store_read_range - read n bytes of the body at loc from offset off
 * into buf (borrowed until cb) in the thread pool, the record's header
 * checked as body_store_read checks it (id, len and SHA-256 as expected);
 * the body's hash is not (a range proves nothing: see the streams below).
 * cb runs exactly once, never inside this call, unless this returns
 * non-zero: HAMR_EINVAL (a range past len, BODY_LOC_NONE, a bad id),
 * HAMR_ENOMEM, HAMR_ESHUTDOWN. id and sha are copied.
 */
int body_store_read_range(struct body_store *s,
                          uint64_t loc,
                          const char *id,
                          size_t len,
                          const uint8_t sha[BODY_SHA256_LEN],
                          uint64_t off,
                          uint8_t *buf,
                          size_t n,
                          body_store_range_cb cb,
                          void *arg);

/*
 * Streams: a body read from start to end a chunk at a time, so that only a
 * chunk of it is ever in memory (delivery: the SMTP client sends each chunk
 * before it asks for the next). The stream keeps a SHA-256 context across
 * the chunks; the read of the last one finishes it, and a digest that is not
 * the expected one fails that read with HAMR_ECORRUPT. Every chunk before
 * it is handed out unproven: a consumer must not act on the body (say the
 * final "." of DATA) before the last chunk came with status 0.
 */
struct body_store_stream;

/*
 * body_store_stream_cb - one chunk: status 0 and data (n bytes, the
 * stream's buffer, valid until the next read or free), last once the body
 * is whole and its SHA-256 matched; or an error as for body_store_read
 * (data NULL), after which the stream only reads no more.
 */
typedef void (
    *body_store_stream_cb)(void *arg, int status, const uint8_t *data, size_t n, bool last);

/*
 * body_store_stream_new - a stream over the body at loc of id (len bytes,
 * this SHA-256; both copied), chunk bytes per read. No I/O and no chunk
 * buffer until the first read. 0 and *out, or HAMR_EINVAL, HAMR_ENOMEM.
 * Free every stream before body_store_close's callback runs.
 */
int body_store_stream_new(struct body_store *s,
                          uint64_t loc,
                          const char *id,
                          size_t len,
                          const uint8_t sha[BODY_SHA256_LEN],
                          size_t chunk,
                          struct body_store_stream **out);

/*
 * body_store_stream_next - read the next chunk (up to chunk bytes; an
 * empty body gives one empty last chunk) in the thread pool. cb runs
 * exactly once, never inside this call, unless the stream is freed first,
 * or this returns non-zero: HAMR_EINVAL (a read in flight, or the stream
 * ended), HAMR_ENOMEM, HAMR_ESHUTDOWN (store closing).
 */
int body_store_stream_next(struct body_store_stream *st, body_store_stream_cb cb, void *arg);

/*
 * body_store_stream_free - drop st; returns NULL. A read in flight
 * finishes in the pool, is not reported, and frees the stream then.
 */
struct body_store_stream *body_store_stream_free(struct body_store_stream *st);

/*
 * body_store_pread - synchronously, on the loop: up to n bytes of the body
 * at loc from offset off (bodies are usually in the page cache; used for a
 * DSN's copy of the headers and legacy snapshots). Returns the number of
 * bytes read (0 at the end), or a negative HAMR_E*; the record header is
 * checked, the hash is not.
 */
ssize_t body_store_pread(struct body_store *s, uint64_t loc, uint64_t off, uint8_t *buf, size_t n);

/* body_store_get_stats - counters and sizes, O(1). */
void body_store_get_stats(const struct body_store *s, struct body_store_stats *st);

/*
 * body_store_close - wait for work in the thread pool (sync, reads, unlinks:
 * read callbacks run with HAMR_ESHUTDOWN or their result), sync, close,
 * free; cb(arg) afterwards, never inside this call. A second call does
 * nothing. A failed final sync is logged (the node is stopping anyway).
 */
void body_store_close(struct body_store *s, void (*cb)(void *arg), void *arg);

#endif
