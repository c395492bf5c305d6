/* proto_frame.h - framing and checked decoding of hamr's protobuf records. */
#ifndef HAMR_PROTO_FRAME_H
#define HAMR_PROTO_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "proto/hamr.pb-c.h"

/*
 * Format versions. A log entry carries PROTO_FORMAT_VERSION of its writer in
 * Entry.format_version; a reader refuses (HAMR_EVERSION) a version above
 * PROTO_FORMAT_VERSION_MAX. The snapshot carries its own version.
 *
 * Entry buffer, byte by byte (version 1):
 *   0..3  "HAMR" (0x48 0x41 0x4d 0x52)
 *   4..7  N, the length of the protobuf, big-endian
 *   8..   hamr.Entry, protobuf encoded (N bytes)
 *   ..    zero bytes up to a multiple of 8: libraft's segment format requires
 *         every entry's length to be a multiple of 8 (an assert compiled out of
 *         Debian's build; an unaligned entry makes the segment unreadable on
 *         the next start).
 * Snapshot buffer:
 *   0..3  "HMSN"
 *   4..   hamr.Snapshot, protobuf encoded
 * Compressed snapshot buffer (from cluster level 7, QUEUE_LEVEL_SNAPZ):
 *   0..3  "HMSZ"
 *   4..11 N, the length of the protobuf, big-endian
 *   12..  blocks, each: a 4-byte big-endian length C, then C bytes of one
 *         LZ4 block (liblz4's block format) that gives the next
 *         PROTO_SNAPZ_BLOCK bytes of the protobuf (the last one the rest);
 *         nothing after the last.
 * Control frame (TCP):
 *   0..3  length of the protobuf message, big-endian, at most PROTO_CONTROL_MAX
 *   4..   hamr.ControlRequest or hamr.ControlResponse
 */
#define PROTO_FORMAT_VERSION 1
/*
 * Formats this build applies. Format 2 adds the outbound TLS fields of
 * RcptResult/RcptState; the state machine copies them only once the
 * replicated cluster level is 2 (queue.h, QUEUE_LEVEL_TLS), so entries stay
 * stamped with format 1 and builds of format 1 still read them. Format 3
 * (QUEUE_LEVEL_STORE) adds Enqueue.body_len: from cluster level 3 snapshots
 * carry each body's length and hash, not the body, which only nodes that
 * keep a body store and fetch from peers can install. Format 4
 * (QUEUE_LEVEL_STS) adds the entry kind StsPolicy (Entry.sts_policy) and
 * Snapshot.sts_policies, the replicated MTA-STS policy cache: a leader
 * proposes it only from cluster level 4, and a build of format 3 or older
 * refuses the kind (HAMR_EVERSION from proto_entry_unpack) and stops.
 * Format 5 (QUEUE_LEVEL_EXT) adds the envelope extensions (SMTPUTF8,
 * REQUIRETLS, DSN) as fields of Enqueue, RcptResult, Outcome and
 * QueuedMessage; nodes take them from SMTP, and apply honours them, only
 * from cluster level 5, so an older build never meets one. Format 6
 * (QUEUE_LEVEL_SPREAD) adds the entry kind LeaseRenew and NodeInfo.zone:
 * leases go to any node, which renews them while it delivers. Format 7
 * (QUEUE_LEVEL_SNAPZ) adds the compressed snapshot buffer (below): a node
 * writes one only from cluster level 7, as an older build cannot read it.
 */
#define PROTO_FORMAT_VERSION_MAX 7
#define PROTO_SNAPSHOT_VERSION 1
#define PROTO_CONTROL_MAX (64u * 1024 * 1024)
/* Peer frames: same layout as control frames; a proposal carries a whole message. */
#define PROTO_PEER_MAX (96u * 1024 * 1024)

/*
 * proto_entry_pack - encode an Entry with its magic into a buffer from
 * alloc (malloc if NULL; raft_malloc when it goes to raft_apply). Sets
 * e->format_version. On success *out is owned by the caller.
 */
int proto_entry_pack(Hamr__Entry *e, void *(*alloc)(size_t), uint8_t **out, size_t *len);

/* PROTO_ENTRY_ALIGN - every packed entry's length is a multiple of this. */
#define PROTO_ENTRY_ALIGN 8

/*
 * proto_entry_unpack - check the magic, decode, check the version and that
 * the oneof is a kind this build knows. On success *e must be freed with
 * hamr__entry__free_unpacked(*e, NULL). Errors: HAMR_ECORRUPT (magic or
 * protobuf), HAMR_EVERSION (newer format or unknown kind).
 */
int proto_entry_unpack(const uint8_t *buf, size_t len, Hamr__Entry **e);

/* PROTO_SNAPZ_BLOCK - the protobuf bytes of one LZ4 block of a compressed snapshot. */
#define PROTO_SNAPZ_BLOCK (1024u * 1024) /* LZ4 looks back 64 KiB: larger gains nothing */

/*
 * proto_snapshot_pack / _unpack - as above for the Snapshot record.
 * proto_snapshot_pack_z packs the compressed buffer instead ("HMSZ", made
 * block by block as protobuf-c writes: no whole uncompressed copy);
 * proto_snapshot_unpack reads either. A compressed buffer that does not
 * decompress to exactly its N bytes, or whose N is more than LZ4 can make
 * of its blocks, is HAMR_ECORRUPT.
 */
int proto_snapshot_pack(Hamr__Snapshot *s, void *(*alloc)(size_t), uint8_t **out, size_t *len);
int proto_snapshot_pack_z(Hamr__Snapshot *s, void *(*alloc)(size_t), uint8_t **out, size_t *len);
int proto_snapshot_unpack(const uint8_t *buf, size_t len, Hamr__Snapshot **s);

/* proto_u32_put / proto_u32_get - big-endian length prefix helpers. */
void proto_u32_put(uint8_t *p, uint32_t v);
uint32_t proto_u32_get(const uint8_t *p);

#endif
