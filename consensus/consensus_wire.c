/*
 * consensus_wire.c - the raft port's byte stream, judged before libraft
 * reads it. See consensus_wire.h for the format and the reasons.
 *
 * Owns: one buffer per connection, holding the handshake or the preamble
 * and header of the message being judged (at most 16 + 48 + 16 x
 * max_entries bytes). Exports consensus_wire_init/_feed/_handshaken/_free.
 * Errors: HAMR_EPROTO with a constant sentence in w->why; HAMR_ENOMEM.
 * Calls libc only.
 *
 * Security: parses untrusted network input. Every length is compared with
 * what is present before it is used; no count is trusted to size anything
 * without a bound from struct consensus_wire_limits first.
 */
#include "consensus/consensus_wire.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

/* Header lengths of the fixed-size messages libraft 0.15 sends. */
#define CONSENSUS_WIRE_H_APPEND_BASE 48   /* plus 16 per entry */
#define CONSENSUS_WIRE_H_SNAPSHOT_BASE 56 /* plus the configuration */
#define CONSENSUS_WIRE_H_APPEND_RESULT 24
#define CONSENSUS_WIRE_H_REQUEST_VOTE 40
#define CONSENSUS_WIRE_H_REQUEST_VOTE_RESULT 24
#define CONSENSUS_WIRE_H_TIMEOUT_NOW 24
#define CONSENSUS_WIRE_CONF_MIN 16 /* format, count, padding: no member fits in less */

/* Results of a judgement, besides HAMR_E* codes. */
enum {
    CONSENSUS_WIRE_MORE = 0,     /* need grew: read on */
    CONSENSUS_WIRE_HANDSHAKE_OK, /* the handshake is complete and good */
    CONSENSUS_WIRE_MESSAGE_OK,   /* buf holds a good preamble and header */
};

/* consensus_wire_get64 - little-endian u64 at p (unaligned). */
static uint64_t consensus_wire_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* consensus_wire_get32 - little-endian u32 at p (unaligned). */
static uint32_t consensus_wire_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* consensus_wire_fail - refuse the stream for good. */
static int consensus_wire_fail(struct consensus_wire *w, const char *why)
{
    w->state = CONSENSUS_WIRE_S_FAILED;
    w->why = why;
    return HAMR_EPROTO;
}

/* consensus_wire_init - a checker expecting a handshake; see consensus_wire.h. */
void consensus_wire_init(struct consensus_wire *w, const struct consensus_wire_limits *lim)
{
    memset(w, 0, sizeof(*w));
    w->lim = *lim;
    w->state = CONSENSUS_WIRE_S_HANDSHAKE;
    w->need = CONSENSUS_WIRE_HANDSHAKE;
}

/* consensus_wire_handshake - judge the handshake: first its fixed part, then the address. */
static int consensus_wire_handshake(struct consensus_wire *w)
{
    if (w->len == CONSENSUS_WIRE_HANDSHAKE) {
        uint64_t protocol = consensus_wire_get64(w->buf);
        uint64_t id = consensus_wire_get64(w->buf + 8);
        uint64_t alen = consensus_wire_get64(w->buf + 16);
        if (protocol != CONSENSUS_WIRE_PROTOCOL)
            return consensus_wire_fail(w, "handshake: unknown protocol version");
        if (id == 0)
            return consensus_wire_fail(w, "handshake: node id 0");
        if (alen == 0 || alen > CONSENSUS_WIRE_ADDR_MAX || alen % 8 != 0)
            return consensus_wire_fail(w, "handshake: address length out of bounds");
        w->need = CONSENSUS_WIRE_HANDSHAKE + (size_t)alen;
        return CONSENSUS_WIRE_MORE;
    }
    const uint8_t *addr = w->buf + CONSENSUS_WIRE_HANDSHAKE;
    size_t alen = w->len - CONSENSUS_WIRE_HANDSHAKE;
    const uint8_t *nul = memchr(addr, 0, alen);
    if (nul == NULL)
        return consensus_wire_fail(w, "handshake: address not NUL-terminated");
    if (nul == addr)
        return consensus_wire_fail(w, "handshake: empty address");
    for (const uint8_t *p = addr; p < nul; p++) {
        if (*p <= 0x20 || *p >= 0x7f)
            return consensus_wire_fail(w, "handshake: address not printable");
    }
    w->id = consensus_wire_get64(w->buf + 8);
    memcpy(w->address, addr, (size_t)(nul - addr) + 1);
    w->state = CONSENSUS_WIRE_S_HEADER;
    w->need = CONSENSUS_WIRE_PREAMBLE;
    w->len = 0;
    return CONSENSUS_WIRE_HANDSHAKE_OK;
}

/* consensus_wire_preamble - judge type and header length; set need to the whole header. */
static int consensus_wire_preamble(struct consensus_wire *w)
{
    uint64_t type = consensus_wire_get64(w->buf);
    uint64_t h = consensus_wire_get64(w->buf + 8);
    bool ok;
    switch (type) {
        case CONSENSUS_WIRE_APPEND_ENTRIES:
            ok = h >= CONSENSUS_WIRE_H_APPEND_BASE &&
                 (h - CONSENSUS_WIRE_H_APPEND_BASE) % 16 == 0 &&
                 (h - CONSENSUS_WIRE_H_APPEND_BASE) / 16 <= w->lim.max_entries;
            break;
        case CONSENSUS_WIRE_INSTALL_SNAPSHOT:
            ok = h >= CONSENSUS_WIRE_H_SNAPSHOT_BASE + CONSENSUS_WIRE_CONF_MIN &&
                 h <= CONSENSUS_WIRE_H_SNAPSHOT_BASE + CONSENSUS_WIRE_CONF_MAX;
            break;
        case CONSENSUS_WIRE_APPEND_ENTRIES_RESULT:
            ok = h == CONSENSUS_WIRE_H_APPEND_RESULT;
            break;
        case CONSENSUS_WIRE_REQUEST_VOTE:
            ok = h == CONSENSUS_WIRE_H_REQUEST_VOTE;
            break;
        case CONSENSUS_WIRE_REQUEST_VOTE_RESULT:
            ok = h == CONSENSUS_WIRE_H_REQUEST_VOTE_RESULT;
            break;
        case CONSENSUS_WIRE_TIMEOUT_NOW:
            ok = h == CONSENSUS_WIRE_H_TIMEOUT_NOW;
            break;
        default:
            return consensus_wire_fail(w, "unknown message type");
    }
    if (!ok)
        return consensus_wire_fail(w, "header length does not fit the message type");
    w->need = CONSENSUS_WIRE_PREAMBLE + (size_t)h;
    return CONSENSUS_WIRE_MORE;
}

/* consensus_wire_append - an AppendEntries header: count, entries and payload agree. */
static int consensus_wire_append(struct consensus_wire *w, const uint8_t *hdr, size_t h)
{
    uint64_t n = consensus_wire_get64(hdr + 32);
    if (n != (h - CONSENSUS_WIRE_H_APPEND_BASE) / 16)
        return consensus_wire_fail(w, "AppendEntries: entry count does not match its length");
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *e = hdr + 40 + 16 * i;
        uint8_t type = e[8];
        uint32_t len = consensus_wire_get32(e + 12);
        if (consensus_wire_get64(e) > CONSENSUS_WIRE_TERM_MAX)
            return consensus_wire_fail(w, "AppendEntries: entry term out of bounds");
        /* RAFT_COMMAND, RAFT_BARRIER, RAFT_CHANGE */
        if (type < 1 || type > 3)
            return consensus_wire_fail(w, "AppendEntries: unknown entry type");
        if (len == 0 || len % 8 != 0 || len > w->lim.max_entry)
            return consensus_wire_fail(w, "AppendEntries: entry size out of bounds");
        total += len;
        if (total > w->lim.max_message)
            return consensus_wire_fail(w, "AppendEntries: entries exceed the message limit");
    }
    w->payload_left = total;
    return CONSENSUS_WIRE_MESSAGE_OK;
}

/* consensus_wire_conf - an encoded configuration of exactly len bytes. */
static bool consensus_wire_conf(const uint8_t *conf, size_t len)
{
    if (len < CONSENSUS_WIRE_CONF_MIN || conf[0] != 1)
        return false;
    uint64_t count = consensus_wire_get64(conf + 1);
    size_t pos = 9;
    /* Each member takes at least 8 + 2 + 1 bytes: this bounds the loop. */
    if (count == 0 || count > len / 11)
        return false;
    for (uint64_t i = 0; i < count; i++) {
        if (len - pos < 8 || consensus_wire_get64(conf + pos) == 0)
            return false;
        pos += 8;
        const uint8_t *nul = memchr(conf + pos, 0, len - pos);
        if (nul == NULL || nul == conf + pos)
            return false;
        pos = (size_t)(nul - conf) + 1;
        if (pos >= len || conf[pos] > 2) /* RAFT_STANDBY, RAFT_VOTER, RAFT_SPARE */
            return false;
        pos++;
    }
    return (pos + 7) / 8 * 8 == len;
}

/* consensus_wire_snapshot - an InstallSnapshot header: configuration and data size. */
static int consensus_wire_snapshot(struct consensus_wire *w, const uint8_t *hdr, size_t h)
{
    uint64_t clen = consensus_wire_get64(hdr + 32);
    if (clen != h - CONSENSUS_WIRE_H_SNAPSHOT_BASE)
        return consensus_wire_fail(w, "InstallSnapshot: configuration size does not match");
    if (!consensus_wire_conf(hdr + 40, (size_t)clen))
        return consensus_wire_fail(w, "InstallSnapshot: malformed configuration");
    uint64_t dlen = consensus_wire_get64(hdr + 40 + clen);
    if (dlen == 0 || dlen > w->lim.max_message)
        return consensus_wire_fail(w, "InstallSnapshot: data size out of bounds");
    w->payload_left = dlen;
    return CONSENSUS_WIRE_MESSAGE_OK;
}

/* consensus_wire_header - judge a whole header (the preamble was judged already). */
static int consensus_wire_header(struct consensus_wire *w)
{
    const uint8_t *hdr = w->buf + CONSENSUS_WIRE_PREAMBLE;
    size_t h = w->len - CONSENSUS_WIRE_PREAMBLE;
    if (consensus_wire_get64(hdr) > CONSENSUS_WIRE_TERM_MAX)
        return consensus_wire_fail(w, "term out of bounds");
    w->payload_left = 0;
    switch (consensus_wire_get64(w->buf)) {
        case CONSENSUS_WIRE_APPEND_ENTRIES:
            return consensus_wire_append(w, hdr, h);
        case CONSENSUS_WIRE_INSTALL_SNAPSHOT:
            return consensus_wire_snapshot(w, hdr, h);
        default:
            return CONSENSUS_WIRE_MESSAGE_OK;
    }
}

/* consensus_wire_judge - buf holds need bytes: what they mean. */
static int consensus_wire_judge(struct consensus_wire *w)
{
    if (w->state == CONSENSUS_WIRE_S_HANDSHAKE)
        return consensus_wire_handshake(w);
    if (w->len == CONSENSUS_WIRE_PREAMBLE)
        return consensus_wire_preamble(w);
    return consensus_wire_header(w);
}

/*
 * consensus_wire_reserve - room in buf for want bytes (at most need). The
 * buffer grows with what has arrived, not with what a header claims, so a
 * peer that announces a large header and stops costs only what it sent.
 */
static int consensus_wire_reserve(struct consensus_wire *w, size_t want)
{
    if (w->cap >= want)
        return 0;
    size_t cap = w->cap ? w->cap : 256;
    while (cap < want)
        cap *= 2;
    if (cap > w->need)
        cap = w->need;
    uint8_t *p = realloc(w->buf, cap);
    if (p == NULL)
        return HAMR_ENOMEM;
    w->buf = p;
    w->cap = cap;
    return 0;
}

/* consensus_wire_feed - consume and judge; see consensus_wire.h. */
ssize_t consensus_wire_feed(struct consensus_wire *w,
                            const uint8_t *data,
                            size_t len,
                            consensus_wire_emit_cb emit,
                            void *arg)
{
    size_t off = 0;
    while (off < len) {
        if (w->state == CONSENSUS_WIRE_S_FAILED)
            return HAMR_EPROTO;
        if (w->state == CONSENSUS_WIRE_S_PAYLOAD) {
            size_t n = len - off;
            if (n > w->payload_left)
                n = (size_t)w->payload_left;
            emit(arg, data + off, n);
            off += n;
            w->payload_left -= n;
            if (w->payload_left == 0)
                w->state = CONSENSUS_WIRE_S_HEADER;
            continue;
        }
        size_t n = w->need - w->len;
        if (n > len - off)
            n = len - off;
        if (consensus_wire_reserve(w, w->len + n) != 0)
            return HAMR_ENOMEM;
        memcpy(w->buf + w->len, data + off, n);
        w->len += n;
        off += n;
        if (w->len < w->need)
            break;
        int rv = consensus_wire_judge(w);
        if (rv < 0)
            return rv;
        if (rv == CONSENSUS_WIRE_HANDSHAKE_OK)
            return (ssize_t)off;
        if (rv == CONSENSUS_WIRE_MESSAGE_OK) {
            emit(arg, w->buf, w->len);
            w->messages++;
            w->len = 0;
            w->need = CONSENSUS_WIRE_PREAMBLE;
            if (w->payload_left > 0)
                w->state = CONSENSUS_WIRE_S_PAYLOAD;
        }
    }
    if (w->state == CONSENSUS_WIRE_S_FAILED)
        return HAMR_EPROTO;
    return (ssize_t)off;
}

/* consensus_wire_handshaken - past the handshake; see consensus_wire.h. */
bool consensus_wire_handshaken(const struct consensus_wire *w)
{
    return w->state != CONSENSUS_WIRE_S_HANDSHAKE && w->state != CONSENSUS_WIRE_S_FAILED;
}

/* consensus_wire_free - release the buffer; see consensus_wire.h. */
void consensus_wire_free(struct consensus_wire *w)
{
    free(w->buf);
    w->buf = NULL;
    w->cap = 0;
    w->len = 0;
}
