/*
 * consensus_wire.h - checks the byte stream a peer sends to the raft port
 * before libraft 0.15 sees any of it (internal to consensus/).
 *
 * Pure: no libuv, no sockets, no clock. Fed a connection's bytes in any
 * pieces, it validates the handshake, then frames each message by its
 * preamble and validates its whole header before letting a byte of it
 * through; payload bytes (entry data, snapshot data) pass as they come once
 * their header has been accepted. Whole, in pieces or octet by octet, the
 * same input gives the same verdict and the same bytes out.
 *
 * The wire format (libraft 0.15: src/uv_tcp_listen.c, uv_recv.c,
 * uv_encoding.c, configuration.c; all integers little endian):
 *
 *   handshake   u64 protocol (1), u64 sender id, u64 address length L,
 *               then L bytes: the address, NUL-terminated, zero padded to 8
 *   message     u64 type, u64 header length H, H header bytes, payload
 *   header      every type starts with u64 term
 *     1 AppendEntries         term, prev index, prev term, commit, u64 n,
 *                             n x (u64 term, u8 type, 3 unused, u32 len),
 *                             8 unused: H = 48 + 16n; payload = sum of len
 *                             (each a multiple of 8: libraft pads as it reads)
 *     2 AppendEntriesResult   term, rejected, last index: H = 24
 *     3 RequestVote           term, candidate, last index, last term, flags: H = 40
 *     4 RequestVoteResult     term, granted, flags: H = 24
 *     5 InstallSnapshot       term, last index, last term, conf index, u64 C,
 *                             C bytes of configuration, u64 data length D,
 *                             8 unused: H = 56 + C; payload = D
 *     6 TimeoutNow            term, last index, last term: H = 24
 *   configuration  u8 format (1), u64 count, count x (u64 id, address with
 *                  NUL, u8 role 0..2), zero padded to 8
 *
 * Why each check: libraft 0.15 decodes a header without comparing the
 * counts in it with its length (an AppendEntries that claims more entries
 * than it carries is read past its end: segfault), and strlen()s the
 * handshake address (no NUL: heap overread). Security: this parses
 * untrusted network input; it authenticates nobody.
 */
#ifndef HAMR_CONSENSUS_WIRE_H
#define HAMR_CONSENSUS_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CONSENSUS_WIRE_PROTOCOL 1
#define CONSENSUS_WIRE_HANDSHAKE 24 /* the handshake's fixed part */
#define CONSENSUS_WIRE_PREAMBLE 16  /* type and header length */
#define CONSENSUS_WIRE_ADDR_MAX 64  /* longest padded handshake address */
/* No honest term comes near this: a term grows by one per election. */
#define CONSENSUS_WIRE_TERM_MAX (UINT64_C(1) << 48)
#define CONSENSUS_WIRE_CONF_MAX 4096 /* an encoded configuration of 16 members fits */

enum consensus_wire_type {
    CONSENSUS_WIRE_APPEND_ENTRIES = 1,
    CONSENSUS_WIRE_APPEND_ENTRIES_RESULT = 2,
    CONSENSUS_WIRE_REQUEST_VOTE = 3,
    CONSENSUS_WIRE_REQUEST_VOTE_RESULT = 4,
    CONSENSUS_WIRE_INSTALL_SNAPSHOT = 5,
    CONSENSUS_WIRE_TIMEOUT_NOW = 6,
};

/* consensus_wire_limits - what a message may claim. */
struct consensus_wire_limits {
    uint64_t max_entry;   /* bytes of one log entry */
    uint64_t max_message; /* payload bytes of one message (entries or a snapshot) */
    uint32_t max_entries; /* entries in one AppendEntries (its header is 16 bytes each) */
};

enum consensus_wire_state {
    CONSENSUS_WIRE_S_HANDSHAKE = 0, /* reading the handshake */
    CONSENSUS_WIRE_S_HEADER,        /* reading a message's preamble and header */
    CONSENSUS_WIRE_S_PAYLOAD,       /* passing an accepted message's payload */
    CONSENSUS_WIRE_S_FAILED,        /* refused: the connection must close */
};

/*
 * consensus_wire - one connection's checker. buf holds the part not yet
 * judged (the handshake, or a message's preamble and header); its size is
 * bounded by the header a message may have under the limits.
 */
struct consensus_wire {
    struct consensus_wire_limits lim;
    enum consensus_wire_state state;
    uint8_t *buf;
    size_t len;            /* bytes in buf */
    size_t cap;            /* allocated */
    size_t need;           /* bytes buf must hold before the next judgement */
    uint64_t payload_left; /* S_PAYLOAD: payload bytes still to pass */
    uint64_t id;           /* from the handshake */
    char address[CONSENSUS_WIRE_ADDR_MAX];
    const char *why;   /* S_FAILED: a constant sentence for the log */
    uint64_t messages; /* headers accepted */
};

/* consensus_wire_emit_cb - bytes judged good, in stream order; borrowed for the call. */
typedef void (*consensus_wire_emit_cb)(void *arg, const uint8_t *data, size_t len);

/* consensus_wire_init - a checker expecting a handshake; lim is copied. */
void consensus_wire_init(struct consensus_wire *w, const struct consensus_wire_limits *lim);

/*
 * consensus_wire_feed - consume data (borrowed). Calls emit for every byte
 * of it that may reach libraft. Returns the number of bytes consumed (> 0,
 * or 0 for len 0); it stops right after a complete, valid handshake (then
 * w->id and w->address are set and the caller feeds the rest). On a
 * violation it returns HAMR_EPROTO (w->why says what; every later call
 * fails too), or HAMR_ENOMEM when a header cannot be buffered.
 */
ssize_t consensus_wire_feed(struct consensus_wire *w,
                            const uint8_t *data,
                            size_t len,
                            consensus_wire_emit_cb emit,
                            void *arg);

/* consensus_wire_handshaken - the handshake has been accepted. */
bool consensus_wire_handshaken(const struct consensus_wire *w);

/* consensus_wire_free - release the buffer; w may be fed no more. */
void consensus_wire_free(struct consensus_wire *w);

#endif
